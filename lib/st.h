/*
 * st — safetensors files: read through a read-only mmap, write in the layout
 * the safetensors library writes (so PEFT/transformers load our files).
 *
 * Format: u64 little-endian header length N, N bytes of JSON header
 * {"__metadata__": {str: str}, "<name>": {"dtype", "shape", "data_offsets":
 * [begin, end]}, ...}, then the data region. The reader refuses N > 100 MB or
 * past EOF, dtypes other than F32/F16/BF16 (naming tensor and dtype), offsets
 * out of bounds, overlapping, or leaving holes in the data region, and
 * shape x dtype size != byte length. The writer pads the header with spaces
 * to a multiple of 8 bytes and orders tensors as the safetensors library
 * does.
 */
#ifndef LORA_ST_H
#define LORA_ST_H

#include <stddef.h>
#include <stdint.h>

#include "doc.h"
#include "err.h"
#include "tensor.h"

struct lora_st_tensor {
	const char *name;
	enum lora_dtype dtype;
	int ndim;
	int64_t shape[LORA_MAX_DIMS];
	const void *data;	/* reader: points into the mmap; writer: caller's data */
	size_t nbytes;
};

struct lora_st;	/* an open, mmap'd file */

/* Open and validate. Messages start with the path. */
int lora_st_open(const char *path, struct lora_st **out, struct lora_err *err);
/* Tensors in file (data offset) order; pointers valid until lora_st_close. */
size_t lora_st_count(const struct lora_st *st);
const struct lora_st_tensor *lora_st_get(const struct lora_st *st, size_t i);
const struct lora_st_tensor *lora_st_find(const struct lora_st *st, const char *name);
/* The __metadata__ map (string -> string), or NULL. */
const struct lora_doc *lora_st_metadata(const struct lora_st *st);
const char *lora_st_path(const struct lora_st *st);
void lora_st_close(struct lora_st *st);

/* Write n tensors (any order in the array; the file gets the library's order)
 * to path atomically: a temporary file in the same directory, fsync'd and
 * renamed. metadata may be NULL (a map of string values otherwise). */
int lora_st_write(const char *path, const struct lora_st_tensor *tensors, size_t n,
		  const struct lora_doc *metadata, struct lora_err *err);

/* Streaming writer for files too large to hold: declare every tensor first
 * (data pointers ignored), then feed each tensor's bytes in the order
 * lora_st_writer_order gives. Writes to a temporary file; commit renames it to
 * path, abort (or close without commit) removes it. */
struct lora_st_writer;
int lora_st_writer_open(const char *path, const struct lora_st_tensor *decl, size_t n,
			const struct lora_doc *metadata, struct lora_st_writer **out,
			struct lora_err *err);
/* The index into decl of the k-th tensor the file expects. */
size_t lora_st_writer_order(const struct lora_st_writer *w, size_t k);
/* Append the next tensor's bytes (may be called several times per tensor with
 * consecutive chunks). */
int lora_st_writer_write(struct lora_st_writer *w, const void *data, size_t nbytes,
			 struct lora_err *err);
int lora_st_writer_commit(struct lora_st_writer *w, struct lora_err *err);
void lora_st_writer_abort(struct lora_st_writer *w);

#endif
