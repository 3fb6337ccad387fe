/*
 * ops — numeric kernels shared by the forward passes (see ops.h).
 *
 * Threading: one model, lorapipe's own. A persistent pool (started on the
 * first parallel call; its size is OpenBLAS's thread count at that moment,
 * i.e. OPENBLAS_NUM_THREADS or the CPUs) runs lora_parallel_for, and
 * OpenBLAS is set to one thread for good when the pool is sized. lora_gemm
 * is the only caller of cblas_sgemm; a large product (>= 2^20 multiply-adds)
 * is split over the pool by columns of the output (rows of a Linear's
 * weight), one single-threaded sgemm per worker, and products issued from
 * inside a pool job (attention heads) run on the worker that issues them.
 * Why: on SmolLM-135M shapes (5 x 200 tokens, two cores shared with other
 * jobs; forwards of each mode interleaved in one process), the whole forward
 * ran at 86% of OpenBLAS's own two-thread sgemm rate with this split, 77%
 * splitting token rows instead and 68% leaving the products to OpenBLAS's
 * threads, in the quietest run (under heavy load all three were within
 * noise). OpenBLAS's workers spin for OPENBLAS_THREAD_TIMEOUT after each
 * call and fight ours for the two cores during the norms, RoPE and attention
 * in between; setting the timeout low (at load time, by re-execution) got
 * that mode to 71-74%, no better than the split, with two thread models
 * left. bench/bench_gemm compares the
 * modes product by product. A side effect: direct CBLAS/LAPACK calls elsewhere
 * (merge.c) are single-threaded once the pool is sized.
 * Workers wait for a job by spinning briefly (bridging the serial steps
 * between a layer's products), then sleep on a futex: an idle process uses
 * no CPU. The pool is stopped and joined at exit; a child after fork()
 * forgets the parent's workers and starts its own if it needs them.
 *
 * The remaining kernels
 * are O(T*C), or O(T^2) per head, and are written with GCC/Clang vector
 * extensions (8 floats: AVX2 under -march=x86-64-v3) so that they vectorize
 * at -O2 without -ffast-math: exp is a Cephes-style polynomial (about 2 ulp),
 * reductions keep 8 partial sums in f32 as PyTorch's vectorized reductions do.
 * Limits: sizes are int, as in BLAS; callers check them.
 */
#include "ops.h"

#include <cblas.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Builds without -mavx (the fuzz build) pass these vectors in memory between
 * the static helpers below, which is fine: nothing crosses a library ABI. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

static inline v8f v_load(const float *p)
{
	v8f v;
	memcpy(&v, p, sizeof v);
	return v;
}

static inline void v_store(float *p, v8f v)
{
	memcpy(p, &v, sizeof v);
}

static inline v8f v_set(float f)
{
	return (v8f){f, f, f, f, f, f, f, f};
}

static inline float v_hsum(v8f v)
{
	return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static inline v8f v_select(v8i mask, v8f a, v8f b)
{
	v8i ai, bi, r;
	memcpy(&ai, &a, sizeof ai);
	memcpy(&bi, &b, sizeof bi);
	r = (ai & mask) | (bi & ~mask);
	v8f out;
	memcpy(&out, &r, sizeof out);
	return out;
}

static inline v8f v_max(v8f a, v8f b)
{
	return v_select(a > b, a, b);
}

static inline v8f v_min(v8f a, v8f b)
{
	return v_select(a < b, a, b);
}

static inline float v_hmax(v8f v)
{
	float m = v[0];
	for (int i = 1; i < 8; i++)
		m = v[i] > m ? v[i] : m;
	return m;
}

/* exp(x) in 8 lanes: x = n·ln2 + r with |r| <= ln2/2, exp(r) by Cephes'
 * degree-6 polynomial, 2^n applied as two exponent-field scalings so that the
 * subnormal range and overflow come out right. Inputs are clamped to
 * [-104, 89] first (exp is 0 / +Inf beyond); NaN stays NaN. */
static inline v8f v_exp(v8f x)
{
	v8i nan = x != x;
	v8f xc = v_min(v_max(x, v_set(-104.0f)), v_set(89.0f));
	v8f t = xc * v_set(1.44269504088896341f) + v_set(12582912.0f);
	v8f n = t - v_set(12582912.0f);
	v8f r = xc - n * v_set(0.693359375f);
	r = r - n * v_set(-2.12194440e-4f);
	v8f y = v_set(1.9875691500e-4f);
	y = y * r + v_set(1.3981999507e-3f);
	y = y * r + v_set(8.3334519073e-3f);
	y = y * r + v_set(4.1665795894e-2f);
	y = y * r + v_set(1.6666665459e-1f);
	y = y * r + v_set(5.0000001201e-1f);
	y = y * r * r + r + v_set(1.0f);
	v8i ni = __builtin_convertvector(n, v8i);
	v8i n1 = ni >> 1, n2 = ni - n1;
	v8i b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
	v8f s1, s2;
	memcpy(&s1, &b1, sizeof s1);
	memcpy(&s2, &b2, sizeof s2);
	y = y * s1 * s2;
	return v_select(nan, x, y);
}

/* Apply a lane function to n floats in place, with a padded tail. */
#define V_MAP(x, n, expr_of_v)                                    \
	do {                                                      \
		size_t i_ = 0;                                    \
		for (; i_ + 8 <= (n); i_ += 8) {                  \
			v8f v = v_load((x) + i_);                 \
			v_store((x) + i_, (expr_of_v));           \
		}                                                 \
		if (i_ < (n)) {                                   \
			float tmp_[8] = {0};                      \
			memcpy(tmp_, (x) + i_, ((n) - i_) * sizeof(float)); \
			v8f v = v_load(tmp_);                     \
			v_store(tmp_, (expr_of_v));               \
			memcpy((x) + i_, tmp_, ((n) - i_) * sizeof(float)); \
		}                                                 \
	} while (0)

void lora_exp(float *x, size_t n)
{
	V_MAP(x, n, v_exp(v));
}

/* ---- the worker pool (see ops.h and the header comment) ---- */

#define PAR_MAX 64
/* Bounded spins (pause instructions) before sleeping on the futex: about
 * 50-100 us, long enough to bridge the serial bits between two products of
 * a layer, short enough that an idle worker leaves its core within a blink. */
enum { SPIN_WORKER = 1 << 12, SPIN_CALLER = 1 << 14 };

struct par {
	void (*fn)(void *ctx, int i, int worker);
	void *ctx;
	int n, nw;	/* items; workers taking part (ids 0..nw-1, 0 the caller) */
	atomic_int next;
};

static struct {
	pthread_mutex_t lock;	/* creation and teardown */
	atomic_int nw;		/* workers including the caller; 0 before the first use */
	int started;		/* threads running (ids 1..started) */
	pthread_t th[PAR_MAX];
	unsigned start_gen;	/* gen when the threads were created */
	atomic_uint gen;	/* bumped once per job (a futex word) */
	atomic_int pending;	/* threads that have not finished the job (a futex word) */
	atomic_int sleepers;	/* threads asleep (or about to be) on gen */
	atomic_int caller_sleeps;
	atomic_int stop;
	atomic_flag busy;	/* a job is running: nested and concurrent calls go serial */
	struct par *job;
	bool split_gemm;	/* large lora_gemm calls are split over the pool */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .busy = ATOMIC_FLAG_INIT};

/* The worker id of the calling thread inside a job, -1 outside. */
static _Thread_local int cur_worker = -1;

static void futex_wait(atomic_uint *addr, unsigned val)
{
	syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(void *addr, int n)
{
	syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void par_run(struct par *p, int id)
{
	int i;
	cur_worker = id;
	while ((i = atomic_fetch_add(&p->next, 1)) < p->n)
		p->fn(p->ctx, i, id);
	cur_worker = -1;
}

static void *pool_thread(void *arg)
{
	int id = (int)(intptr_t)arg;
	unsigned seen = pool.start_gen;
	for (;;) {
		unsigned g;
		int spins = 0;
		while ((g = atomic_load(&pool.gen)) == seen) {
			if (spins++ < SPIN_WORKER) {
				cpu_relax();
				continue;
			}
			/* Dekker with the poster: either it sees us counted here,
			 * or we see its new gen (futex re-checks it atomically) */
			atomic_fetch_add(&pool.sleepers, 1);
			futex_wait(&pool.gen, seen);
			atomic_fetch_sub(&pool.sleepers, 1);
		}
		seen = g;
		if (atomic_load(&pool.stop))
			return NULL;
		struct par *p = pool.job;
		if (id < p->nw)
			par_run(p, id);
		if (atomic_fetch_sub(&pool.pending, 1) == 1 && atomic_load(&pool.caller_sleeps))
			futex_wake(&pool.pending, 1);
	}
}

static void pool_stop(void)
{
	pthread_mutex_lock(&pool.lock);
	if (pool.started) {
		atomic_store(&pool.stop, 1);
		atomic_fetch_add(&pool.gen, 1);
		futex_wake(&pool.gen, INT32_MAX);
		for (int k = 1; k <= pool.started; k++)
			pthread_join(pool.th[k], NULL);
		pool.started = 0;
		atomic_store(&pool.stop, 0);
	}
	pthread_mutex_unlock(&pool.lock);
}

/* In a child after fork() only the forking thread exists: forget the
 * workers (they are the parent's), a later call starts new ones. */
static void pool_atfork_child(void)
{
	pool.started = 0;
	pool.lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	atomic_store(&pool.pending, 0);
	atomic_store(&pool.sleepers, 0);
	atomic_store(&pool.caller_sleeps, 0);
	atomic_flag_clear(&pool.busy);
}

/* The worker count, fixed at the first call: OpenBLAS's thread count then
 * (OPENBLAS_NUM_THREADS, or the CPUs it found). */
static void pool_init(void)
{
	pthread_mutex_lock(&pool.lock);
	if (!pool.nw) {
		int n = openblas_get_num_threads();
		n = n < 1 ? 1 : n > PAR_MAX ? PAR_MAX : n;
		pool.split_gemm = n > 1;
		if (pool.split_gemm)
			openblas_set_num_threads(1);
		static bool hooked;
		if (!hooked) {
			hooked = true;
			pthread_atfork(NULL, NULL, pool_atfork_child);
			atexit(pool_stop);
		}
		atomic_store(&pool.nw, n);
	}
	pthread_mutex_unlock(&pool.lock);
}

static void pool_start(void)
{
	pthread_mutex_lock(&pool.lock);
	if (!pool.started) {
		pool.start_gen = atomic_load(&pool.gen);
		for (int k = 1; k < pool.nw; k++) {
			if (pthread_create(&pool.th[k], NULL, pool_thread, (void *)(intptr_t)k) != 0)
				break;	/* fewer workers: the loop still covers every i */
			pool.started = k;
		}
	}
	pthread_mutex_unlock(&pool.lock);
}

int lora_parallel_workers(void)
{
	int n = atomic_load_explicit(&pool.nw, memory_order_acquire);
	if (!n) {
		pool_init();
		n = atomic_load(&pool.nw);
	}
	return n;
}

void lora_parallel_for(int n, void (*fn)(void *ctx, int i, int worker), void *ctx)
{
	int nw = lora_parallel_workers();
	if (nw > n)
		nw = n;
	if (nw <= 1 || cur_worker >= 0 || atomic_flag_test_and_set(&pool.busy)) {
		/* serial: one worker, a nested call from inside a job (keeping
		 * the caller's worker id, so per-worker scratch stays apart), or
		 * another thread's call while a job runs */
		int id = cur_worker >= 0 ? cur_worker : 0;
		for (int i = 0; i < n; i++)
			fn(ctx, i, id);
		return;
	}
	if (!pool.started)
		pool_start();
	if (nw > pool.started + 1)
		nw = pool.started + 1;
	/* without the split, OpenBLAS has its threads: keep the products
	 * inside fn on the worker that calls them */
	int saved = openblas_get_num_threads();
	if (saved != 1)
		openblas_set_num_threads(1);
	struct par p = {fn, ctx, n, nw, 0};
	pool.job = &p;
	atomic_store(&pool.pending, pool.started);
	atomic_fetch_add(&pool.gen, 1);
	if (atomic_load(&pool.sleepers))
		futex_wake(&pool.gen, INT32_MAX);
	par_run(&p, 0);
	int spins = 0, left;
	while ((left = atomic_load(&pool.pending)) != 0) {
		if (spins++ < SPIN_CALLER) {
			cpu_relax();
			continue;
		}
		atomic_store(&pool.caller_sleeps, 1);
		if ((left = atomic_load(&pool.pending)) != 0)
			futex_wait((atomic_uint *)&pool.pending, (unsigned)left);
		atomic_store(&pool.caller_sleeps, 0);
	}
	if (saved != 1)
		openblas_set_num_threads(saved);
	atomic_flag_clear(&pool.busy);
}

/* ---- the sgemm wrapper ---- */

/* A large product split over the pool: columns of c (rows of a [N,K]
 * weight) in chunks whose width is a multiple of 16 (OpenBLAS's kernel
 * width), each one single-threaded sgemm on its worker. */
struct gemm_job {
	bool ta, tb;
	int M, N, K, lda, ldb, ldc, w;
	float alpha, beta;
	const float *a, *b;
	float *c;
};

static void gemm_unit(void *ctx, int u, int worker)
{
	(void)worker;
	const struct gemm_job *j = ctx;
	int o = u * j->w, n = j->N - o < j->w ? j->N - o : j->w;
	cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans, j->tb ? CblasTrans : CblasNoTrans,
		    j->M, n, j->K, j->alpha, j->a, j->lda, j->tb ? j->b + (size_t)o * j->ldb : j->b + o,
		    j->ldb, j->beta, j->c + o, j->ldc);
}

/* Below this many multiply-adds a product stays on the calling thread. */
#define GEMM_SPLIT_MIN 1048576.0

void lora_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *a, int lda,
	       const float *b, int ldb, float beta, float *c, int ldc)
{
	if (M <= 0 || N <= 0)
		return;
	if (K <= 0) {
		for (int i = 0; i < M; i++)
			for (int j = 0; j < N; j++)
				c[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * c[(size_t)i * ldc + j];
		return;
	}
	int nw = lora_parallel_workers();
	if (pool.split_gemm && cur_worker < 0 && (double)M * N * K >= GEMM_SPLIT_MIN && N >= 32) {
		/* one chunk per worker: every chunk packs all of op(a) again,
		 * more chunks only cost packing */
		struct gemm_job j = {ta, tb, M, N, K, lda, ldb, ldc, 0, alpha, beta, a, b, c};
		j.w = ((N + nw - 1) / nw + 15) / 16 * 16;
		int units = (N + j.w - 1) / j.w;
		if (units > 1) {
			lora_parallel_for(units, gemm_unit, &j);
			return;
		}
	}
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
		    M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

void lora_matmul(float *out, const float *x, const float *w, int M, int K, int N,
		 bool w_trans, float alpha, float beta)
{
	lora_gemm(false, w_trans, M, N, K, alpha, x, K, w, w_trans ? K : N, beta, out, N);
}

void lora_matmul_naive(float *out, const float *x, const float *w, int M, int K, int N,
		       bool w_trans, float alpha, float beta)
{
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double s = 0;
			for (int k = 0; k < K; k++) {
				float wv = w_trans ? w[(size_t)j * K + k] : w[(size_t)k * N + j];
				s += (double)x[(size_t)i * K + k] * wv;
			}
			float *o = &out[(size_t)i * N + j];
			*o = (float)(alpha * s + (beta == 0 ? 0 : beta * *o));
		}
}

static float sum_squares(const float *x, int C)
{
	v8f acc = v_set(0);
	int i = 0;
	for (; i + 8 <= C; i += 8) {
		v8f v = v_load(x + i);
		acc += v * v;
	}
	float s = v_hsum(acc);
	for (; i < C; i++)
		s += x[i] * x[i];
	return s;
}

/* HF LlamaRMSNorm / T5LayerNorm: x * rsqrt(mean(x^2) + eps) * weight, in f32. */
void lora_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps)
{
	for (int t = 0; t < T; t++) {
		const float *xr = x + (size_t)t * C;
		float *o = out + (size_t)t * C;
		float inv = 1.0f / sqrtf(sum_squares(xr, C) / (float)C + eps);
		for (int i = 0; i < C; i++)
			o[i] = weight[i] * (xr[i] * inv);
	}
}

/* torch.nn.LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias, biased var. */
void lora_layernorm(float *out, const float *x, const float *weight, const float *bias, int T,
		    int C, float eps)
{
	for (int t = 0; t < T; t++) {
		const float *xr = x + (size_t)t * C;
		float *o = out + (size_t)t * C;
		v8f acc = v_set(0);
		int i = 0;
		for (; i + 8 <= C; i += 8)
			acc += v_load(xr + i);
		float s = v_hsum(acc);
		for (; i < C; i++)
			s += xr[i];
		float mean = s / (float)C;
		acc = v_set(0);
		v8f vm = v_set(mean);
		for (i = 0; i + 8 <= C; i += 8) {
			v8f d = v_load(xr + i) - vm;
			acc += d * d;
		}
		float q = v_hsum(acc);
		for (; i < C; i++)
			q += (xr[i] - mean) * (xr[i] - mean);
		float inv = 1.0f / sqrtf(q / (float)C + eps);
		for (i = 0; i < C; i++)
			o[i] = (xr[i] - mean) * inv * weight[i] + (bias ? bias[i] : 0.0f);
	}
}

static float row_max(const float *x, int n)
{
	int i = 0;
	float m = -INFINITY;
	if (n >= 8) {
		v8f vm = v_load(x);
		for (i = 8; i + 8 <= n; i += 8)
			vm = v_max(vm, v_load(x + i));
		m = v_hmax(vm);
	}
	for (; i < n; i++)
		m = x[i] > m ? x[i] : m;
	return m;
}

/* exp(x - m) in place, returning the sum. */
static float exp_shift_sum(float *x, int n, float m)
{
	v8f vm = v_set(m), acc = v_set(0);
	int i = 0;
	for (; i + 8 <= n; i += 8) {
		v8f e = v_exp(v_load(x + i) - vm);
		v_store(x + i, e);
		acc += e;
	}
	float s = v_hsum(acc);
	if (i < n) {
		float tmp[8];
		for (int k = 0; k < 8; k++)
			tmp[k] = i + k < n ? x[i + k] - m : -INFINITY;
		v8f e = v_exp(v_load(tmp));
		v_store(tmp, e);
		for (int k = 0; i + k < n; k++) {
			x[i + k] = tmp[k];
			s += tmp[k];
		}
	}
	return s;
}

void lora_softmax_rows(float *x, int rows, int n)
{
	for (int r = 0; r < rows; r++) {
		float *row = x + (size_t)r * n;
		float m = row_max(row, n);
		if (m == -INFINITY) {	/* fully masked row: all zero */
			memset(row, 0, (size_t)n * sizeof *row);
			continue;
		}
		float inv = 1.0f / exp_shift_sum(row, n, m);
		v8f vi = v_set(inv);
		V_MAP(row, (size_t)n, v * vi);
	}
}

float lora_nll_row(const float *logits, int V, int target)
{
	float m = row_max(logits, V);
	v8f vm = v_set(m), acc = v_set(0);
	int i = 0;
	for (; i + 8 <= V; i += 8)
		acc += v_exp(v_load(logits + i) - vm);
	double s = v_hsum(acc);
	for (; i < V; i++)
		s += expf(logits[i] - m);
	return (float)((double)m + log(s) - (double)logits[target]);
}

/* gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with
 * tanh(u) = 1 - 2 / (exp(2u) + 1) (exact at both ends: exp gives 0 or Inf). */
static inline v8f v_gelu(v8f x)
{
	v8f u = v_set(0.7978845608028654f) * (x + v_set(0.044715f) * x * x * x);
	v8f th = v_set(1.0f) - v_set(2.0f) / (v_exp(u + u) + v_set(1.0f));
	return v_set(0.5f) * x * (v_set(1.0f) + th);
}

void lora_gelu_tanh(float *x, size_t n)
{
	V_MAP(x, n, v_gelu(v));
}

/* silu(x) = x / (1 + exp(-x)) */
void lora_silu(float *x, size_t n)
{
	V_MAP(x, n, v / (v_set(1.0f) + v_exp(-v)));
}

void lora_relu(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] = x[i] > 0 ? x[i] : 0.0f;
}

int lora_argmax(const float *x, int n)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}
