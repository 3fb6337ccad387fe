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
 * The element-wise kernels (exp, softmax, RMSNorm, LayerNorm, nll_row,
 * gelu_new, silu) are O(T*C), or O(T^2) per head, and have two paths, the
 * same algorithms in each:
 *   - 16 lanes, AVX-512F intrinsics in functions compiled for that target
 *     (the library itself is -march=x86-64-v3), with FMA, masked loads and
 *     stores for the tails, and vscalefps for 2^n;
 *   - 8 lanes, GCC/Clang vector extensions (AVX2 under -march=x86-64-v3;
 *     SSE in builds without -mavx, such as the fuzz build), no FMA (C11 mode
 *     does not contract), tails through a padded buffer.
 * The path is chosen once, at the first kernel call: 16 lanes when the CPU
 * and OS support AVX-512F, unless the environment has LORA_NO_AVX512 set
 * (non-empty, not "0"), which forces 8 lanes (a hook to compare the two on
 * one machine; lora_ops_set_avx512 switches in-process for tests and
 * benchmarks). Numerics, identical in kind on both paths: exp is a
 * Cephes-style polynomial (within 2 ulp of the correctly rounded value;
 * subnormal results and overflow come out right; NaN stays NaN);
 * reductions keep 8 or 16 partial sums in f32 (two sets of 16 for RMSNorm
 * and LayerNorm), as PyTorch's vectorized reductions do; divisions by a row
 * sum or norm are one reciprocal per row and a multiply; silu is
 * x / (1 + exp(-x)) and gelu_new x / (1 + exp(-2u)) = 0.5 x (1 + tanh u),
 * one exp and one division per element either way. The two paths agree to
 * a few ulp (tests/unit/test_ops.c states the bounds it checks).
 * On Zen 5 (bench/bench_kernels, one thread, data in cache as the products
 * leave it), 16 lanes against 8: exp 5.3x, silu and gelu_new 4.2-4.4x,
 * softmax rows of 219 3.4x, nll_row 4x, RMSNorm/LayerNorm 1.3-1.5x (they
 * are mostly loads and stores). In a Flan-T5-small step the kernels went
 * from 6% of the profile to 2.3%.
 * Limits: sizes are int, as in BLAS; callers check them.
 */
#include "ops.h"
#include "cpu.h"

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

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

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

/* ---- which path: 16 lanes (AVX-512F) or 8 ---- */

#if defined(__x86_64__) && defined(__GNUC__)
#define OPS_X86 1
#else
#define OPS_X86 0
#endif

/* -1 before the first kernel call, then 1 (16 lanes) or 0 (8 lanes). A
 * race between two first calls stores the same value twice. */
static int ops_path = -1;

/* lib/cpu.c's test (F, BW, VL, DQ: what OpenBLAS's SkylakeX kernels need;
 * the 16-lane path needs only F, and every CPU with F has the others). */
static bool cpu_avx512f(void)
{
	return lora_cpu_has_avx512();
}

static int ops_path_init(void)
{
	const char *e = getenv("LORA_NO_AVX512");
	int p = cpu_avx512f() && !(e && *e && strcmp(e, "0") != 0);
	__atomic_store_n(&ops_path, p, __ATOMIC_RELAXED);
	return p;
}

static inline bool use_z16(void)
{
	int p = __atomic_load_n(&ops_path, __ATOMIC_RELAXED);
	return (p < 0 ? ops_path_init() : p) > 0;
}

bool lora_ops_avx512(void)
{
	return use_z16();
}

bool lora_ops_set_avx512(bool on)
{
	int p = on && cpu_avx512f();
	__atomic_store_n(&ops_path, p, __ATOMIC_RELAXED);
	return p;
}

#if OPS_X86
/* ---- the 16-lane path ---- */

#define Z16 __attribute__((target("avx512f")))

Z16 static inline __m512 z_set(float f)
{
	return _mm512_set1_ps(f);
}

/* The first k lanes (0 < k < 16). */
Z16 static inline __mmask16 z_first(int k)
{
	return (__mmask16)((1u << k) - 1);
}

/* v_exp in 16 lanes, with FMA; 2^n by vscalefps, which rounds subnormal
 * results once and overflows to +Inf. max/min take x second so that a NaN
 * passes through the clamp (and on to the result). */
Z16 static inline __m512 z_exp(__m512 x)
{
	x = _mm512_min_ps(z_set(89.0f), _mm512_max_ps(z_set(-104.0f), x));
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, z_set(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, z_set(0.693359375f), x);
	r = _mm512_fnmadd_ps(n, z_set(-2.12194440e-4f), r);
	__m512 y = z_set(1.9875691500e-4f);
	y = _mm512_fmadd_ps(y, r, z_set(1.3981999507e-3f));
	y = _mm512_fmadd_ps(y, r, z_set(8.3334519073e-3f));
	y = _mm512_fmadd_ps(y, r, z_set(4.1665795894e-2f));
	y = _mm512_fmadd_ps(y, r, z_set(1.6666665459e-1f));
	y = _mm512_fmadd_ps(y, r, z_set(5.0000001201e-1f));
	y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
	y = _mm512_add_ps(y, z_set(1.0f));
	return _mm512_scalef_ps(y, n);
}

/* x / (1 + exp(a)): silu with a = -x, gelu_new with a = -2u. */
Z16 static inline __m512 z_over_1pexp(__m512 x, __m512 a)
{
	return _mm512_div_ps(x, _mm512_add_ps(z_set(1.0f), z_exp(a)));
}

Z16 static inline __m512 z_silu(__m512 x)
{
	return z_over_1pexp(x, _mm512_sub_ps(_mm512_setzero_ps(), x));
}

/* -2u = x * (-2 sqrt(2/pi) - 2 sqrt(2/pi) 0.044715 x^2) */
Z16 static inline __m512 z_gelu(__m512 x)
{
	__m512 a = _mm512_fmadd_ps(_mm512_mul_ps(x, x), z_set(-0.071354816272600249f),
				   z_set(-1.5957691216057308f));
	return z_over_1pexp(x, _mm512_mul_ps(x, a));
}

/* Apply a lane function to n floats in place; the tail masked. */
#define Z_MAP(x, n, expr_of_v)                                              \
	do {                                                                \
		size_t i_ = 0;                                              \
		for (; i_ + 16 <= (n); i_ += 16) {                          \
			__m512 v = _mm512_loadu_ps((x) + i_);               \
			_mm512_storeu_ps((x) + i_, (expr_of_v));            \
		}                                                           \
		if (i_ < (n)) {                                             \
			__mmask16 m_ = z_first((int)((n) - i_));            \
			__m512 v = _mm512_maskz_loadu_ps(m_, (x) + i_);     \
			_mm512_mask_storeu_ps((x) + i_, m_, (expr_of_v));   \
		}                                                           \
	} while (0)

Z16 static void exp_z16(float *x, size_t n)
{
	Z_MAP(x, n, z_exp(v));
}

Z16 static void gelu_z16(float *x, size_t n)
{
	Z_MAP(x, n, z_gelu(v));
}

Z16 static void silu_z16(float *x, size_t n)
{
	Z_MAP(x, n, z_silu(v));
}

/* Sum of x over n floats (sq: of x^2), in 32 f32 partial sums. */
Z16 static inline float z_sum(const float *x, int n, float shift, bool sq)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, vs = z_set(shift);
	int i = 0;
	for (; i + 32 <= n; i += 32) {
		__m512 v0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), vs);
		__m512 v1 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vs);
		a0 = sq ? _mm512_fmadd_ps(v0, v0, a0) : _mm512_add_ps(a0, v0);
		a1 = sq ? _mm512_fmadd_ps(v1, v1, a1) : _mm512_add_ps(a1, v1);
	}
	for (; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? (__mmask16)0xffff : z_first(n - i);
		__m512 v = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), vs);
		a0 = sq ? _mm512_fmadd_ps(v, v, a0) : _mm512_add_ps(a0, v);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

Z16 static void rmsnorm_z16(float *out, const float *x, const float *weight, int T, int C, float eps)
{
	for (int t = 0; t < T; t++) {
		const float *xr = x + (size_t)t * C;
		float *o = out + (size_t)t * C;
		__m512 vi = z_set(1.0f / sqrtf(z_sum(xr, C, 0.0f, true) / (float)C + eps));
		int i = 0;
		for (; i + 16 <= C; i += 16)
			_mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(weight + i),
							      _mm512_mul_ps(_mm512_loadu_ps(xr + i), vi)));
		if (i < C) {
			__mmask16 m = z_first(C - i);
			_mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, weight + i),
					      _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), vi)));
		}
	}
}

Z16 static void layernorm_z16(float *out, const float *x, const float *weight, const float *bias,
			      int T, int C, float eps)
{
	for (int t = 0; t < T; t++) {
		const float *xr = x + (size_t)t * C;
		float *o = out + (size_t)t * C;
		float mean = z_sum(xr, C, 0.0f, false) / (float)C;
		float inv = 1.0f / sqrtf(z_sum(xr, C, mean, true) / (float)C + eps);
		__m512 vm = z_set(mean), vi = z_set(inv);
		for (int i = 0; i < C; i += 16) {
			__mmask16 m = C - i >= 16 ? (__mmask16)0xffff : z_first(C - i);
			__m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + i), vm), vi);
			__m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + i) : _mm512_setzero_ps();
			_mm512_mask_storeu_ps(o + i, m,
					      _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, weight + i), b));
		}
	}
}

Z16 static float row_max_z16(const float *x, int n)
{
	__m512 ninf = z_set(-INFINITY), m0 = ninf, m1 = ninf;
	int i = 0;
	for (; i + 32 <= n; i += 32) {
		m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
		m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
	}
	for (; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? (__mmask16)0xffff : z_first(n - i);
		m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(ninf, m, x + i));
	}
	return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

/* Σ exp(x - m) over n floats; with store, x[i] = exp(x[i] - m) too. */
Z16 static inline float exp_shift_sum_z16(float *x, int n, float m, bool store)
{
	__m512 vm = z_set(m), acc = _mm512_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512 e = z_exp(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
		if (store)
			_mm512_storeu_ps(x + i, e);
		acc = _mm512_add_ps(acc, e);
	}
	if (i < n) {
		__mmask16 k = z_first(n - i);
		__m512 e = z_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
		if (store)
			_mm512_mask_storeu_ps(x + i, k, e);
		acc = _mm512_mask_add_ps(acc, k, acc, e);
	}
	return _mm512_reduce_add_ps(acc);
}

static void masked_row(float *row, int n);

Z16 static void softmax_z16(float *x, int rows, int n)
{
	for (int r = 0; r < rows; r++) {
		float *row = x + (size_t)r * n;
		float m = row_max_z16(row, n);
		if (m == -INFINITY) {
			masked_row(row, n);
			continue;
		}
		__m512 vi = z_set(1.0f / exp_shift_sum_z16(row, n, m, true));
		Z_MAP(row, (size_t)n, _mm512_mul_ps(v, vi));
	}
}

Z16 static float nll_z16(const float *logits, int V, int target)
{
	float m = row_max_z16(logits, V);
	double s = exp_shift_sum_z16((float *)logits, V, m, false);
	return (float)((double)m + log(s) - (double)logits[target]);
}
#endif

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

int lora_rows_per_unit(int T, int min_T)
{
	int nu = 1;
	if (T >= min_T) {
		nu = 4 * lora_parallel_workers();
		nu = nu > T ? T : nu;
	}
	int rows = (T + nu - 1) / nu;
	return rows > 0 ? rows : 1;
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


/* ---- element-wise kernels: the 8-lane path ---- */

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

static void rmsnorm_v8(float *out, const float *x, const float *weight, int T, int C, float eps)
{
	for (int t = 0; t < T; t++) {
		const float *xr = x + (size_t)t * C;
		float *o = out + (size_t)t * C;
		float inv = 1.0f / sqrtf(sum_squares(xr, C) / (float)C + eps);
		v8f vi = v_set(inv);
		int i = 0;
		for (; i + 8 <= C; i += 8)
			v_store(o + i, v_load(weight + i) * (v_load(xr + i) * vi));
		for (; i < C; i++)
			o[i] = weight[i] * (xr[i] * inv);
	}
}

static void layernorm_v8(float *out, const float *x, const float *weight, const float *bias, int T,
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
		v8f vi = v_set(inv);
		for (i = 0; i + 8 <= C; i += 8) {
			v8f d = (v_load(xr + i) - vm) * vi * v_load(weight + i);
			v_store(o + i, bias ? d + v_load(bias + i) : d);
		}
		for (; i < C; i++)
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

/* A row whose max is -inf: fully masked, all zero (not NaN), unless it
 * holds a NaN (which the max may skip): then all NaN, as PyTorch gives. */
static void masked_row(float *row, int n)
{
	bool nan = false;
	for (int i = 0; i < n; i++)
		nan |= row[i] != row[i];
	for (int i = 0; i < n; i++)
		row[i] = nan ? NAN : 0.0f;
}

static void softmax_v8(float *x, int rows, int n)
{
	for (int r = 0; r < rows; r++) {
		float *row = x + (size_t)r * n;
		float m = row_max(row, n);
		if (m == -INFINITY) {
			masked_row(row, n);
			continue;
		}
		float inv = 1.0f / exp_shift_sum(row, n, m);
		v8f vi = v_set(inv);
		V_MAP(row, (size_t)n, v * vi);
	}
}

static float nll_v8(const float *logits, int V, int target)
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

/* gelu_new: 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3), as
 * x / (1 + exp(-2u)) (the same function: 1 + tanh u = 2 / (1 + exp(-2u))):
 * one division, and no cancellation in 1 + tanh u for negative x. Exact at
 * both ends (exp gives +Inf or 0), NaN at -Inf as PyTorch's. */
static inline v8f v_gelu(v8f x)
{
	v8f a = x * (x * x * v_set(-0.071354816272600249f) + v_set(-1.5957691216057308f));
	return x / (v_set(1.0f) + v_exp(a));
}

/* ---- the kernels: each runs the path chosen once (see the header) ---- */

void lora_exp(float *x, size_t n)
{
#if OPS_X86
	if (use_z16()) {
		exp_z16(x, n);
		return;
	}
#endif
	V_MAP(x, n, v_exp(v));
}

/* HF LlamaRMSNorm / T5LayerNorm: x * rsqrt(mean(x^2) + eps) * weight, in f32. */
void lora_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps)
{
#if OPS_X86
	if (use_z16()) {
		rmsnorm_z16(out, x, weight, T, C, eps);
		return;
	}
#endif
	rmsnorm_v8(out, x, weight, T, C, eps);
}

/* torch.nn.LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias, biased var. */
void lora_layernorm(float *out, const float *x, const float *weight, const float *bias, int T,
		    int C, float eps)
{
#if OPS_X86
	if (use_z16()) {
		layernorm_z16(out, x, weight, bias, T, C, eps);
		return;
	}
#endif
	layernorm_v8(out, x, weight, bias, T, C, eps);
}

void lora_softmax_rows(float *x, int rows, int n)
{
#if OPS_X86
	if (use_z16()) {
		softmax_z16(x, rows, n);
		return;
	}
#endif
	softmax_v8(x, rows, n);
}

float lora_nll_row(const float *logits, int V, int target)
{
#if OPS_X86
	if (use_z16())
		return nll_z16(logits, V, target);
#endif
	return nll_v8(logits, V, target);
}

void lora_gelu_tanh(float *x, size_t n)
{
#if OPS_X86
	if (use_z16()) {
		gelu_z16(x, n);
		return;
	}
#endif
	V_MAP(x, n, v_gelu(v));
}

/* silu(x) = x / (1 + exp(-x)) */
void lora_silu(float *x, size_t n)
{
#if OPS_X86
	if (use_z16()) {
		silu_z16(x, n);
		return;
	}
#endif
	V_MAP(x, n, v / (v_set(1.0f) + v_exp(-v)));
}

/* x > 0 ? x : 0 (so NaN gives 0), 8 lanes on either path: it is all loads
 * and stores (GCC -O2 left the scalar loop scalar). */
void lora_relu(float *x, size_t n)
{
	V_MAP(x, n, v_select(v > v_set(0.0f), v, v_set(0.0f)));
}

int lora_argmax(const float *x, int n)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}
