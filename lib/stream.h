/*
 * stream — lora records in and out: a concatenation of msgpack maps, one per
 * record, each with a string key "kind" (see man/lora-stream.5).
 *
 * The reader pulls one record at a time from a FILE (never the whole stream),
 * validates it fully (types, shapes against data length, a/b ranks, names
 * unique within the stream) and returns it decoded. Keys a kind does not
 * define are kept in `extra` and written back by the writer, so tools that
 * pass records through keep them. Records of an unknown kind are returned
 * with kind LORA_REC_OTHER and their whole map in `extra`.
 */
#ifndef LORA_STREAM_H
#define LORA_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "doc.h"
#include "err.h"
#include "tensor.h"

/* One adapted base weight: ΔW = scale · B · A, A [r, in], B [out, r]. */
struct lora_module {
	char *module;		/* base weight name without ".weight" */
	int r;
	double alpha;
	struct lora_tensor a;	/* [r, in] */
	struct lora_tensor b;	/* [out, r] */
	struct lora_doc *extra;	/* unknown keys of this tensor map, or NULL */
	/* Unknown keys of the a / b tensor maps ({dtype, shape, data, ...}), or
	 * NULL: a map from each key to its value's msgpack encoding (bin), which
	 * the writer appends after data byte for byte (any msgpack value). */
	struct lora_doc *a_extra, *b_extra;
};

/* kind: adapter. Owns everything it points to. */
struct lora_adapter {
	char *name;
	char *base;		/* may be NULL */
	int r;			/* default rank */
	double alpha;		/* default alpha */
	bool rslora;		/* scale = alpha / sqrt(r) instead of alpha / r */
	size_t n_modules;
	struct lora_module *modules;
	struct lora_doc *meta;	/* map, or NULL */
	struct lora_doc *extra;	/* unknown top-level keys (map), or NULL */
};

/* kind: weights. Optional numeric fields are NaN / has_* false when absent. */
struct lora_weights {
	size_t n;
	char **names;
	double *w;
	bool has_id;
	int64_t id;
	char *method;		/* or NULL */
	double loss, objective;	/* NaN when absent */
	bool has_evals, has_seed;
	int64_t evals, seed;
	struct lora_doc *meta;
	struct lora_doc *extra;
};

/* kind: score. */
struct lora_score {
	bool has_id;
	int64_t id;
	char *name;		/* or NULL */
	double loss;
	int64_t tokens, examples;
	size_t n_per_example;
	double *per_example;
	bool has_accuracy;
	double accuracy;
	size_t n_predictions;
	char **predictions;
	struct lora_doc *meta;
	struct lora_doc *extra;
};

enum lora_rec_kind { LORA_REC_ADAPTER, LORA_REC_WEIGHTS, LORA_REC_SCORE, LORA_REC_OTHER };

struct lora_record {
	enum lora_rec_kind kind;
	size_t index;		/* 1-based record number in its stream */
	uint64_t offset;	/* byte offset where the record starts */
	union {
		struct lora_adapter adapter;
		struct lora_weights weights;
		struct lora_score score;
	} u;
	struct lora_doc *extra;	/* LORA_REC_OTHER: the whole map (kind included) */
};

/* Scale of a module: alpha/r, or alpha/sqrt(r) with rslora. */
double lora_module_scale(const struct lora_adapter *a, const struct lora_module *m);

/* Free the contents of a record / adapter / weights / score (accept NULL). */
void lora_record_free(struct lora_record *rec);
void lora_adapter_free(struct lora_adapter *a);	/* contents only */
void lora_weights_free(struct lora_weights *w);
void lora_score_free(struct lora_score *s);

/* Validate an adapter built in memory (the same checks the reader makes:
 * names, ranks, shapes, data lengths, finite alpha). 0 or LORA_EINVAL. */
int lora_adapter_check(const struct lora_adapter *a, struct lora_err *err);
/* Deep copy. */
int lora_adapter_clone(struct lora_adapter *dst, const struct lora_adapter *src,
		       struct lora_err *err);
/* Convert every a and b tensor of a to dtype dt in place (f32 -> f16/bf16
 * rounds to nearest even; NaN/Inf kept). 0 or LORA_ENOMEM. */
int lora_adapter_convert(struct lora_adapter *a, enum lora_dtype dt, struct lora_err *err);
/* Parameters (elements of every a and b) and their bytes. */
void lora_adapter_size(const struct lora_adapter *a, uint64_t *params, uint64_t *bytes);
/* Find a module by name (linear scan; NULL if absent). */
const struct lora_module *lora_adapter_find(const struct lora_adapter *a, const char *module);

/* ---- reading ---- */

struct lora_reader;

/* Wrap f (not closed by the reader). `name` is used in messages: the file
 * name, or "-" (shown as "stdin"). Messages read
 * "<name>: record N at byte B: what was wrong". After a framing error
 * (garbage, truncation) every later call fails; after an invalid but
 * well-framed record (bad shape, duplicate name) the next call goes on with
 * the following record. */
int lora_reader_open(FILE *f, const char *name, struct lora_reader **out, struct lora_err *err);
/* Read the next record into *rec (which the caller frees with
 * lora_record_free). Returns 1 for a record, 0 at a clean end of stream, or a
 * negative code (truncated record, garbage, invalid record, duplicate name). */
int lora_reader_next(struct lora_reader *r, struct lora_record *rec, struct lora_err *err);
/* Records read so far, and the byte offset of the next one. */
size_t lora_reader_count(const struct lora_reader *r);
uint64_t lora_reader_offset(const struct lora_reader *r);
void lora_reader_close(struct lora_reader *r);

/* ---- writing ---- */

struct lora_writer;

/* Wrap f (not closed). Each put writes one record and flushes f; a failed
 * write or flush (EPIPE, ENOSPC) returns LORA_EIO/LORA_EPIPE with the message
 * "<name>: write error: <strerror>" ("-" is shown as "stdout"), and every
 * later put fails the same way. put_adapter refuses (LORA_EINVAL) an adapter
 * that lora_adapter_check refuses; put_weights one with a non-finite w. */
int lora_writer_open(FILE *f, const char *name, struct lora_writer **out, struct lora_err *err);
int lora_writer_put(struct lora_writer *w, const struct lora_record *rec, struct lora_err *err);
int lora_writer_put_adapter(struct lora_writer *w, const struct lora_adapter *a, struct lora_err *err);
int lora_writer_put_weights(struct lora_writer *w, const struct lora_weights *ws, struct lora_err *err);
int lora_writer_put_score(struct lora_writer *w, const struct lora_score *s, struct lora_err *err);
void lora_writer_close(struct lora_writer *w);

#endif
