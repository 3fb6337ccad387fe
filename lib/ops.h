/*
 * ops — the numeric kernels every forward pass shares. All matrix products go
 * through lora_matmul (OpenBLAS sgemm), with lora_matmul_naive kept for tests.
 *
 * Dimension vocabulary (used in every shape comment of the model code):
 *   T   tokens in a (packed) batch        C   model width (d_model / hidden)
 *   NH  query heads   NKV  key/value heads   HS  head size
 *   F   feed-forward width                V   vocabulary size
 *   R   LoRA rank
 * Row-major everywhere; a weight W of a Linear is [out, in] (PyTorch layout).
 */
#ifndef LORA_OPS_H
#define LORA_OPS_H

#include <stdbool.h>
#include <stddef.h>

/* out[M,N] = beta*out + alpha * x[M,K] · W^T where W is [N,K] (w_trans = true,
 * the Linear layout), or x[M,K] · W where W is [K,N] (w_trans = false, the
 * GPT-2 Conv1D layout). */
void lora_matmul(float *out, const float *x, const float *w, int M, int K, int N,
		 bool w_trans, float alpha, float beta);
void lora_matmul_naive(float *out, const float *x, const float *w, int M, int K, int N,
		       bool w_trans, float alpha, float beta);

/* The one sgemm wrapper, with strides (row-major):
 * c[M,N] = beta*c + alpha * op(a) · op(b), op(a) [M,K] (a stored [K,M] when
 * ta), op(b) [K,N] (b stored [N,K] when tb); lda/ldb/ldc are row strides in
 * floats. lora_matmul and every attention product go through it. A large
 * product called outside a parallel loop is split by columns of c over the
 * worker pool (one single-threaded sgemm each); inside a loop it runs on the
 * calling worker. Either way each element of c is computed the same way. */
void lora_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *a, int lda,
	       const float *b, int ldb, float beta, float *c, int ldc);
/* Run fn(ctx, i, worker) for every i in [0, n) on the persistent worker pool
 * (lora_parallel_workers() threads, the caller being worker 0); returns when
 * every call has returned. Products inside fn run on the worker that calls
 * them (OpenBLAS is kept at one thread). fn must not touch shared outputs
 * other than its own rows/columns; worker (0 <= worker < the worker count)
 * indexes per-worker scratch. A nested call (from inside fn), or a call from
 * another thread while a loop runs, is done serially by the calling thread,
 * with fn seeing that thread's worker index (0 outside a loop).
 * lora_parallel_workers() is the worker count, fixed by its first call to
 * OpenBLAS's thread count at that moment (OPENBLAS_NUM_THREADS, or the CPUs;
 * a program that sets OpenBLAS to one thread first gets a serial pool), at
 * most 64; that first call also sets OpenBLAS to one thread for good when
 * there are several workers. The pool's threads sleep when idle, are joined
 * at exit, and a child after fork() starts its own. */
int lora_parallel_workers(void);
void lora_parallel_for(int n, void (*fn)(void *ctx, int i, int worker), void *ctx);
/* exp over n floats, in place (vectorized; within 2 ulp of expf). */
void lora_exp(float *x, size_t n);

/* A LoRA update applied unmerged: y += scale * (x · A^T) · B^T,
 * A [R, in], B [out, R], both f32 (row-major). */
struct lora_delta {
	int r;
	float scale;
	const float *a;
	const float *b;
};

/* y[T,out] = x[T,in] · W^T (+ bias) (+ each delta). W layout as lora_matmul's
 * w_trans. scratch must hold T * max R floats. deltas may be NULL/0. */
void lora_linear(float *y, const float *x, const float *w, bool w_trans, const float *bias,
		 const struct lora_delta *deltas, int n_deltas, int T, int in, int out,
		 float *scratch);

/* x[T,C] -> out: RMSNorm with weight (T5 and Llama: no mean subtraction). */
void lora_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps);
/* LayerNorm with weight and bias (GPT-2). */
void lora_layernorm(float *out, const float *x, const float *weight, const float *bias, int T,
		    int C, float eps);
/* In-place softmax over each row of x[rows, n]. */
void lora_softmax_rows(float *x, int rows, int n);
/* -log softmax(logits)[target] for one row of V logits (stable). */
float lora_nll_row(const float *logits, int V, int target);
/* Activations, in place over n floats. gelu_new is the tanh approximation. */
void lora_gelu_tanh(float *x, size_t n);
void lora_silu(float *x, size_t n);
void lora_relu(float *x, size_t n);
/* Rows per unit for T rows of row-local work on the pool: about four units
 * per worker (for balance), or all T rows in one unit when T < min_T (not
 * worth waking the workers). At least 1. */
int lora_rows_per_unit(int T, int min_T);

/* Index of the largest value (first on ties). */
int lora_argmax(const float *x, int n);

/* The element-wise kernels above (exp, norms, softmax, nll_row, gelu_tanh,
 * silu) run 16-lane AVX-512 code when the CPU has AVX-512F, 8-lane code
 * (AVX2) otherwise; the choice is made at the first kernel call, and the
 * environment variable LORA_NO_AVX512 (non-empty, not "0") forces 8 lanes.
 * lora_ops_avx512() says whether the 16-lane path is in use.
 * lora_ops_set_avx512(on) switches path (for tests and benchmarks; not while
 * kernels run on other threads) and returns whether 16 lanes are now in use
 * (false when the CPU lacks AVX-512F, whatever on is). */
bool lora_ops_avx512(void);
bool lora_ops_set_avx512(bool on);

#endif
