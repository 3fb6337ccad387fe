/*
 * bf16 — a speed option for the Linear products: y[M,N] = x[M,K] · W^T with
 * W packed once into bf16 panels, x rounded to bf16 (nearest even, as
 * vcvtne2ps2bf16) while it is packed, products summed in f32 by AVX512-BF16's
 * vdpbf16ps. About twice sgemm's rate on the forward's shapes, at the cost of
 * bf16 inputs (8 significant bits): not the default anywhere, since LoraHub's
 * objective wants the exact f32 path.
 *
 * Only CPUs with AVX512-BF16 run it (lora_bf16_supported); the kernel
 * functions are compiled for that target alone, the rest of the build stays
 * x86-64-v3. Sizes are int, as in BLAS.
 *
 * A model opened with bf16 registers each packed Linear under the address of
 * its f32 weight (lora_bf16_register), so lora_linear finds it with one
 * lookup and the architectures need no change; the registry is the one piece
 * of process-wide state, guarded by a lock for writers, and it holds only
 * what models registered until they unregister it.
 */
#ifndef LORA_BF16_H
#define LORA_BF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* A weight [N, K] (the Linear's [out, in]) packed for the kernel. Opaque. */
struct lora_bf16_mat;

/* True when the CPU has AVX512-BF16 (and AVX512F/BW/VL) and the test hook
 * LORA_BF16_UNSUPPORTED is unset or empty in the environment (set it to
 * exercise the refusal path on a machine that has the instructions). */
bool lora_bf16_supported(void);

/* Pack an f32 weight. w_trans true: w is [N,K] row-major (the Linear layout);
 * false: w is [K,N] (GPT-2's Conv1D layout). Each value is rounded to bf16
 * (nearest even). *out is owned by the caller (lora_bf16_free). Works on any
 * CPU (packing is plain C); LORA_EINVAL for non-positive sizes, LORA_ENOMEM. */
int lora_bf16_pack_f32(const float *w, int N, int K, bool w_trans, struct lora_bf16_mat **out,
		       struct lora_err *err);
/* The same from bf16 data (raw little-endian bf16 bits, e.g. straight from a
 * safetensors mmap): exact, no rounding. */
int lora_bf16_pack_bf16(const uint16_t *w, int N, int K, bool w_trans, struct lora_bf16_mat **out,
			struct lora_err *err);
void lora_bf16_free(struct lora_bf16_mat *w);	/* NULL is fine */
/* Bytes the packed copy holds (about N*K*2). */
size_t lora_bf16_bytes(const struct lora_bf16_mat *w);
int lora_bf16_rows(const struct lora_bf16_mat *w);	/* N */
int lora_bf16_cols(const struct lora_bf16_mat *w);	/* K */

/* y[M,N] = beta*y + bf16(x[M,K]) · bf16(W)^T, f32 accumulation, threaded
 * over N on lora_parallel_for's workers. ldx/ldy are row strides in floats
 * (>= K, >= N). beta 0 never reads y. Must only be called when
 * lora_bf16_supported(); returns LORA_ENOMEM (y untouched: it is
 * checked before anything is written) if its scratch cannot be allocated, else 0. */
int lora_bf16_gemm(float *y, int ldy, const float *x, int ldx, const struct lora_bf16_mat *w,
		   int M, float beta);

/* The hook the Linear products call: y[M,N] = beta*y + x[M,K] · W^T through
 * the packed copy registered for the f32 weight w (either layout: the copy
 * knows its own). Returns true when it did the product; false, touching
 * nothing, when w has no copy of shape [N,K] or the scratch allocation
 * failed: the caller then runs its f32 product. */
bool lora_bf16_linear(float *y, const float *x, const float *w, int M, int K, int N, float beta);

/* Round an f32 to the nearest bf16 (ties to even), returned as f32: what the
 * kernel does to each input; for reference computations in tests. */
float lora_bf16_round(float f);

/* The registry: packed copies keyed by the f32 weight they replace.
 * register: LORA_EINVAL if key is already registered, LORA_ENOMEM. The
 * registry does not own w; unregister it before freeing. lookup returns NULL
 * when key is not registered (the common case: one relaxed load when the
 * registry is empty). */
int lora_bf16_register(const void *key, const struct lora_bf16_mat *w, struct lora_err *err);
void lora_bf16_unregister(const void *key);
const struct lora_bf16_mat *lora_bf16_lookup(const void *key);

#endif
