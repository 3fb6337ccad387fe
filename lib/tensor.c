/*
 * tensor — dtype conversions (IEEE 754 binary16, bfloat16) and owned tensors.
 * f32 -> f16/bf16 rounds to nearest even by integer arithmetic on the bits, so
 * the result does not depend on the compiler's or the CPU's rounding mode.
 */
#include "tensor.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t lora_dtype_size(enum lora_dtype dt)
{
	return dt == LORA_F32 ? 4 : 2;
}

const char *lora_dtype_name(enum lora_dtype dt)
{
	switch (dt) {
	case LORA_F32: return "f32";
	case LORA_F16: return "f16";
	case LORA_BF16: return "bf16";
	}
	return "?";
}

int lora_dtype_parse(const char *s, enum lora_dtype *out)
{
	if (!strcmp(s, "f32") || !strcmp(s, "F32"))
		*out = LORA_F32;
	else if (!strcmp(s, "f16") || !strcmp(s, "F16"))
		*out = LORA_F16;
	else if (!strcmp(s, "bf16") || !strcmp(s, "BF16"))
		*out = LORA_BF16;
	else
		return LORA_EUNSUPPORTED;
	return 0;
}

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

float lora_bf16_to_f32(uint16_t b)
{
	return bits_f32((uint32_t)b << 16);
}

uint16_t lora_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)	/* NaN: keep sign, force quiet */
		return (uint16_t)((u >> 16) | 0x0040u);
	uint32_t lsb = (u >> 16) & 1u;
	u += 0x7fffu + lsb;			/* round to nearest, ties to even */
	return (uint16_t)(u >> 16);
}

float lora_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;
	uint32_t u;
	if (exp == 0x1f) {			/* Inf or NaN */
		u = sign | 0x7f800000u | (man << 13);
	} else if (exp == 0) {
		if (man == 0) {
			u = sign;
		} else {			/* subnormal: normalise */
			int e = -1;
			do {
				man <<= 1;
				e++;
			} while (!(man & 0x400u));
			man &= 0x3ffu;
			u = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
		}
	} else {
		u = sign | ((exp + 127 - 15) << 23) | (man << 13);
	}
	return bits_f32(u);
}

uint16_t lora_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t absu = u & 0x7fffffffu;
	if (absu > 0x7f800000u)			/* NaN: keep payload top bits, quiet */
		return sign | 0x7e00u | (uint16_t)((absu >> 13) & 0x3ffu);
	if (absu >= 0x47800000u)		/* >= 65536 or Inf */
		return sign | 0x7c00u;
	if (absu < 0x38800000u) {		/* below the smallest normal f16 */
		/* value = absu as float; f16 subnormal unit is 2^-24 */
		if (absu < 0x33000000u)		/* < 2^-25: rounds to zero */
			return sign;
		uint32_t e = absu >> 23;
		uint32_t m = (absu & 0x7fffffu) | 0x800000u;
		/* value = m * 2^(e-150); in units of 2^-24 that is m >> (126 - e) */
		uint32_t shift = 126 - e;
		uint32_t q = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1u);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (q & 1u)))
			q++;
		return sign | (uint16_t)q;
	}
	/* normal: rebias exponent, round mantissa from 23 to 10 bits */
	uint32_t r = absu - 0x38000000u;	/* (127-15) << 23 */
	uint32_t lsb = (r >> 13) & 1u;
	r += 0x0fffu + lsb;
	r >>= 13;
	if (r >= 0x7c00u)
		return sign | 0x7c00u;
	return sign | (uint16_t)r;
}

void lora_to_f32(float *dst, const void *src, enum lora_dtype dt, size_t n)
{
	const uint16_t *h = src;
	switch (dt) {
	case LORA_F32:
		memcpy(dst, src, n * 4);
		break;
	case LORA_F16:
		for (size_t i = 0; i < n; i++)
			dst[i] = lora_f16_to_f32(h[i]);
		break;
	case LORA_BF16:
		for (size_t i = 0; i < n; i++)
			dst[i] = lora_bf16_to_f32(h[i]);
		break;
	}
}

void lora_from_f32(void *dst, const float *src, enum lora_dtype dt, size_t n)
{
	uint16_t *h = dst;
	switch (dt) {
	case LORA_F32:
		memcpy(dst, src, n * 4);
		break;
	case LORA_F16:
		for (size_t i = 0; i < n; i++)
			h[i] = lora_f32_to_f16(src[i]);
		break;
	case LORA_BF16:
		for (size_t i = 0; i < n; i++)
			h[i] = lora_f32_to_bf16(src[i]);
		break;
	}
}

int lora_shape_numel(const int64_t *shape, int ndim, size_t *out)
{
	size_t n = 1;
	for (int i = 0; i < ndim; i++) {
		if (shape[i] < 0 || lora_size_mul(n, (size_t)shape[i], &n))
			return LORA_ENOMEM;
	}
	*out = n;
	return 0;
}

static int tensor_alloc2(struct lora_tensor *t, enum lora_dtype dt, int64_t rows, int64_t cols,
			 bool zero, struct lora_err *err)
{
	memset(t, 0, sizeof *t);
	int64_t shape[2] = { rows, cols };
	size_t n, bytes;
	if (rows < 0 || cols < 0 || lora_shape_numel(shape, 2, &n) ||
	    lora_size_mul(n, lora_dtype_size(dt), &bytes))
		return lora_errf(err, LORA_ENOMEM, "tensor of shape [%lld,%lld] is too large",
				 (long long)rows, (long long)cols);
	t->data = zero ? calloc(bytes ? bytes : 1, 1) : malloc(bytes ? bytes : 1);
	if (!t->data)
		return lora_errf(err, LORA_ENOMEM, "out of memory allocating %zu bytes", bytes);
	t->dtype = dt;
	t->ndim = 2;
	t->shape[0] = rows;
	t->shape[1] = cols;
	t->nbytes = bytes;
	t->owned = 1;
	return 0;
}

int lora_tensor_alloc2(struct lora_tensor *t, enum lora_dtype dt,
		       int64_t rows, int64_t cols, struct lora_err *err)
{
	return tensor_alloc2(t, dt, rows, cols, true, err);
}

int lora_tensor_alloc2_uninit(struct lora_tensor *t, enum lora_dtype dt, int64_t rows,
			      int64_t cols, struct lora_err *err)
{
	return tensor_alloc2(t, dt, rows, cols, false, err);
}

int lora_tensor_copy(struct lora_tensor *dst, const struct lora_tensor *src,
		     struct lora_err *err)
{
	struct lora_tensor t = *src;
	t.data = malloc(src->nbytes ? src->nbytes : 1);
	if (!t.data)
		return lora_errf(err, LORA_ENOMEM, "out of memory allocating %zu bytes",
				 src->nbytes);
	if (src->nbytes)
		memcpy(t.data, src->data, src->nbytes);
	t.owned = 1;
	*dst = t;
	return 0;
}

int lora_tensor_convert(struct lora_tensor *t, enum lora_dtype dt, struct lora_err *err)
{
	if (t->dtype == dt && t->owned)
		return 0;
	size_t n, bytes;
	if (lora_shape_numel(t->shape, t->ndim, &n) ||
	    lora_size_mul(n, lora_dtype_size(dt), &bytes))
		return lora_errf(err, LORA_ENOMEM, "tensor too large to convert");
	float *tmp = malloc(n * sizeof(float) + 1);
	void *out = malloc(bytes + 1);
	if (!tmp || !out) {
		free(tmp);
		free(out);
		return lora_errf(err, LORA_ENOMEM, "out of memory converting a tensor");
	}
	lora_to_f32(tmp, t->data, t->dtype, n);
	lora_from_f32(out, tmp, dt, n);
	free(tmp);
	if (t->owned)
		free(t->data);
	t->data = out;
	t->dtype = dt;
	t->nbytes = bytes;
	t->owned = 1;
	return 0;
}

float *lora_tensor_f32(const struct lora_tensor *t)
{
	size_t n;
	if (lora_shape_numel(t->shape, t->ndim, &n) || n > SIZE_MAX / sizeof(float))
		return NULL;
	float *f = malloc(n * sizeof(float) + 1);
	if (f)
		lora_to_f32(f, t->data, t->dtype, n);
	return f;
}

void lora_tensor_free(struct lora_tensor *t)
{
	if (!t)
		return;
	if (t->owned)
		free(t->data);
	memset(t, 0, sizeof *t);
}

const char *lora_shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
	size_t k = 0;
	if (len == 0)
		return buf;
	buf[0] = '\0';
	k += (size_t)snprintf(buf + k, len - k, "[");
	for (int i = 0; i < ndim && k < len; i++)
		k += (size_t)snprintf(buf + k, len - k, i ? ",%lld" : "%lld", (long long)shape[i]);
	if (k < len)
		snprintf(buf + k, len - k, "]");
	return buf;
}
