/*
 * tensor — dtypes, f16/bf16 <-> f32 conversion, and a small owned tensor.
 *
 * Conversions to f32 are exact. f32 -> f16 and f32 -> bf16 round to nearest,
 * ties to even; NaN stays NaN (quiet), +-Inf stays Inf, f16 overflow gives Inf
 * and f16 underflow gives subnormals or signed zero, as IEEE 754 says.
 * Data is little-endian in memory and on disk (the only hosts we build for).
 */
#ifndef LORA_TENSOR_H
#define LORA_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

enum lora_dtype { LORA_F32 = 0, LORA_F16 = 1, LORA_BF16 = 2 };

#define LORA_MAX_DIMS 8

/* Bytes per element: 4 or 2. */
size_t lora_dtype_size(enum lora_dtype dt);
/* Stream spelling: "f32", "f16", "bf16". */
const char *lora_dtype_name(enum lora_dtype dt);
/* Parse "f32"/"f16"/"bf16" (stream) or "F32"/"F16"/"BF16" (safetensors).
 * Returns 0, or LORA_EUNSUPPORTED for anything else. */
int lora_dtype_parse(const char *s, enum lora_dtype *out);

float lora_f16_to_f32(uint16_t h);
float lora_bf16_to_f32(uint16_t b);
uint16_t lora_f32_to_f16(float f);
uint16_t lora_f32_to_bf16(float f);

/* Convert n elements of src (in dtype dt) to f32 into dst, and back.
 * src and dst must not overlap. */
void lora_to_f32(float *dst, const void *src, enum lora_dtype dt, size_t n);
void lora_from_f32(void *dst, const float *src, enum lora_dtype dt, size_t n);

/* A dense row-major tensor that owns its data (malloc'd), or views someone
 * else's when owned == 0. */
struct lora_tensor {
	enum lora_dtype dtype;
	int ndim;
	int64_t shape[LORA_MAX_DIMS];
	void *data;
	size_t nbytes;
	int owned;
};

/* Number of elements (product of the shape), or 0 when ndim == 0 -> 1.
 * Returns LORA_ENOMEM on overflow. */
int lora_shape_numel(const int64_t *shape, int ndim, size_t *out);

/* Allocate an owned, zeroed 2-D tensor [rows, cols] of dtype dt. */
int lora_tensor_alloc2(struct lora_tensor *t, enum lora_dtype dt,
		       int64_t rows, int64_t cols, struct lora_err *err);
/* The same, contents left undefined: for a caller that writes every element
 * (zeroing fresh pages is a pass of its own on large tensors). */
int lora_tensor_alloc2_uninit(struct lora_tensor *t, enum lora_dtype dt, int64_t rows,
			      int64_t cols, struct lora_err *err);
/* Deep copy src into dst (dst becomes owned). */
int lora_tensor_copy(struct lora_tensor *dst, const struct lora_tensor *src,
		     struct lora_err *err);
/* Convert t in place to dtype dt (reallocating; t becomes owned). */
int lora_tensor_convert(struct lora_tensor *t, enum lora_dtype dt,
			struct lora_err *err);
/* A freshly malloc'd f32 copy of t's data (caller frees), or NULL on ENOMEM. */
float *lora_tensor_f32(const struct lora_tensor *t);
/* Free owned data; resets t. Accepts a zeroed or NULL tensor. */
void lora_tensor_free(struct lora_tensor *t);
/* "[4096,11008]" into buf. Returns buf. */
const char *lora_shape_str(const int64_t *shape, int ndim, char *buf, size_t len);

#endif
