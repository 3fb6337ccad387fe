/*
 * test_ops — lib/ops kernels against naive double-precision references:
 * sgemm wrapper (both weight layouts, strides, alpha/beta) vs the naive
 * product, lora_linear with bias and two deltas vs the dense W + s·B·A, the
 * vectorized exp over the whole f32 range, softmax (with -inf masks), RMSNorm,
 * LayerNorm, nll_row, gelu_tanh, silu, relu and argmax, and the worker pool:
 * every item once, thousands of back-to-back and sleep-separated loops (lost
 * wake-ups would hang), nested and concurrent calls, products split over the
 * pool (every transpose, strides, beta) vs the naive product, and a child
 * after fork() using its own pool.
 */
#include "check.h"
#include "ops.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *rand_vec(size_t n, float scale)
{
	float *v = malloc(n * sizeof *v);
	for (size_t i = 0; i < n; i++)
		v[i] = frand() * scale;
	return v;
}

static void test_matmul(void)
{
	const int M = 37, K = 53, N = 29;
	float *x = rand_vec((size_t)M * K, 1), *w = rand_vec((size_t)N * K, 1);
	for (int t = 0; t < 2; t++) {
		bool wt = t == 0;
		float *a = rand_vec((size_t)M * N, 1), *b = malloc((size_t)M * N * sizeof *b);
		memcpy(b, a, (size_t)M * N * sizeof *b);
		lora_matmul(a, x, w, M, K, N, wt, 0.5f, 0.25f);
		lora_matmul_naive(b, x, w, M, K, N, wt, 0.5f, 0.25f);
		check_close_f32(a, b, (size_t)M * N, 1e-5, 1e-5,
				wt ? "matmul w_trans vs naive" : "matmul [K,N] vs naive");
		free(a);
		free(b);
	}
	/* strided: a [5,3] block inside a [7,11] matrix times a block's transpose */
	float c[5 * 4] = {0}, ref[5 * 4];
	lora_gemm(false, true, 5, 4, 3, 1.0f, x + 2, 11, w + 1, 9, 0.0f, c, 4);
	for (int i = 0; i < 5; i++)
		for (int j = 0; j < 4; j++) {
			double s = 0;
			for (int k = 0; k < 3; k++)
				s += (double)x[2 + i * 11 + k] * w[1 + j * 9 + k];
			ref[i * 4 + j] = (float)s;
		}
	check_close_f32(c, ref, 20, 1e-6, 1e-6, "gemm with strides");
	free(x);
	free(w);
}

static void test_linear(void)
{
	const int T = 9, in = 24, out = 17, r1 = 3, r2 = 5;
	float *x = rand_vec((size_t)T * in, 1), *w = rand_vec((size_t)out * in, 1);
	float *bias = rand_vec(out, 1);
	float *a1 = rand_vec((size_t)r1 * in, 1), *b1 = rand_vec((size_t)out * r1, 1);
	float *a2 = rand_vec((size_t)r2 * in, 1), *b2 = rand_vec((size_t)out * r2, 1);
	struct lora_delta d[2] = {{r1, 2.0f, a1, b1}, {r2, -0.5f, a2, b2}};
	float *y = malloc((size_t)T * out * sizeof *y), *ref = malloc((size_t)T * out * sizeof *ref);
	float *scratch = malloc((size_t)T * r2 * sizeof *scratch);
	/* dense W' = W + Σ s·B·A, then y = x·W'^T + bias */
	float *wd = malloc((size_t)out * in * sizeof *wd);
	for (int o = 0; o < out; o++)
		for (int i = 0; i < in; i++) {
			double s = w[o * in + i];
			for (int k = 0; k < r1; k++)
				s += 2.0 * b1[o * r1 + k] * a1[k * in + i];
			for (int k = 0; k < r2; k++)
				s += -0.5 * b2[o * r2 + k] * a2[k * in + i];
			wd[o * in + i] = (float)s;
		}
	lora_matmul_naive(ref, x, wd, T, in, out, true, 1.0f, 0.0f);
	for (int t = 0; t < T; t++)
		for (int o = 0; o < out; o++)
			ref[t * out + o] += bias[o];
	lora_linear(y, x, w, true, bias, d, 2, T, in, out, scratch);
	check_close_f32(y, ref, (size_t)T * out, 1e-4, 1e-5, "lora_linear == x·(W + s·B·A)^T + b");
	free(x), free(w), free(bias), free(a1), free(b1), free(a2), free(b2);
	free(y), free(ref), free(scratch), free(wd);
}

static void test_exp(void)
{
	/* a grid over [-110, 95] with step 0.00731, plus the edges */
	size_t n = 0, cap = 1 << 22;
	float *x = malloc(cap * sizeof *x);
	for (float v = -110.0f; v < 95.0f && n < cap; v += 0.00731f)
		x[n++] = v;
	x[n++] = -INFINITY;
	x[n++] = INFINITY;
	x[n++] = 0.0f;
	float *y = malloc(n * sizeof *y);
	memcpy(y, x, n * sizeof *y);
	lora_exp(y, n);
	double worst = 0;
	int ok = 1;
	for (size_t i = 0; i < n; i++) {
		double want = exp((double)x[i]);
		if (want > 3.4028234e38) {
			ok &= isinf(y[i]) && y[i] > 0;
			continue;
		}
		if (want < 1.17549435e-38) {	/* subnormal range: absolute */
			ok &= fabs(y[i] - want) < 1e-44 + 1e-6 * want;
			continue;
		}
		double rel = fabs(y[i] - want) / want;
		worst = rel > worst ? rel : worst;
	}
	ok &= worst < 4e-7;
	check(ok, "lora_exp over %zu values: max rel err %.3g (tol 4e-7), 0/Inf ends", n, worst);
	float nanv[1] = {NAN};
	lora_exp(nanv, 1);
	check(isnan(nanv[0]), "lora_exp(NaN) is NaN");
	free(x);
	free(y);
}

static void test_softmax_nll(void)
{
	const int rows = 3, n = 1003;
	float *x = rand_vec((size_t)rows * n, 20), *y = malloc((size_t)rows * n * sizeof *y);
	x[5] = -INFINITY;
	memcpy(y, x, (size_t)rows * n * sizeof *y);
	lora_softmax_rows(y, rows, n);
	float *ref = malloc((size_t)rows * n * sizeof *ref);
	for (int r = 0; r < rows; r++) {
		double m = -INFINITY, s = 0;
		for (int i = 0; i < n; i++)
			m = fmax(m, x[r * n + i]);
		for (int i = 0; i < n; i++)
			s += exp(x[r * n + i] - m);
		for (int i = 0; i < n; i++)
			ref[r * n + i] = (float)(exp(x[r * n + i] - m) / s);
		if (r == 1) {
			double lse = m + log(s);
			check_near(lora_nll_row(x + r * n, n, 17), lse - x[r * n + 17], 1e-5, 1e-6,
				   "nll_row vs double log-sum-exp");
		}
	}
	check_close_f32(y, ref, (size_t)rows * n, 1e-7, 1e-5, "softmax rows vs double");
	check(y[5] == 0.0f, "softmax: -inf gives exactly 0");
	float masked[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
	lora_softmax_rows(masked, 1, 4);
	check(masked[0] == 0 && masked[3] == 0, "softmax of a fully masked row is 0, not NaN");
	free(x), free(y), free(ref);
}

static void test_norms_acts(void)
{
	const int T = 4, C = 67;
	float *x = rand_vec((size_t)T * C, 3), *w = rand_vec(C, 1), *b = rand_vec(C, 1);
	float *y = malloc((size_t)T * C * sizeof *y), *ref = malloc((size_t)T * C * sizeof *ref);
	lora_rmsnorm(y, x, w, T, C, 1e-6f);
	for (int t = 0; t < T; t++) {
		double ss = 0, mean = 0, var = 0;
		for (int i = 0; i < C; i++)
			ss += (double)x[t * C + i] * x[t * C + i];
		for (int i = 0; i < C; i++)
			ref[t * C + i] = (float)(w[i] * x[t * C + i] / sqrt(ss / C + 1e-6));
		(void)mean, (void)var;
	}
	check_close_f32(y, ref, (size_t)T * C, 1e-5, 1e-5, "rmsnorm vs double");
	lora_layernorm(y, x, w, b, T, C, 1e-5f);
	for (int t = 0; t < T; t++) {
		double mean = 0, var = 0;
		for (int i = 0; i < C; i++)
			mean += x[t * C + i];
		mean /= C;
		for (int i = 0; i < C; i++)
			var += (x[t * C + i] - mean) * (x[t * C + i] - mean);
		var /= C;
		for (int i = 0; i < C; i++)
			ref[t * C + i] = (float)((x[t * C + i] - mean) / sqrt(var + 1e-5) * w[i] + b[i]);
	}
	check_close_f32(y, ref, (size_t)T * C, 1e-5, 1e-5, "layernorm vs double");
	size_t n = (size_t)T * C;
	memcpy(y, x, n * sizeof *y);
	lora_gelu_tanh(y, n);
	for (size_t i = 0; i < n; i++) {
		double v = x[i];
		ref[i] = (float)(0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))));
	}
	check_close_f32(y, ref, n, 1e-6, 1e-5, "gelu_new vs double tanh formula");
	memcpy(y, x, n * sizeof *y);
	lora_silu(y, n);
	for (size_t i = 0; i < n; i++)
		ref[i] = (float)(x[i] / (1 + exp(-(double)x[i])));
	check_close_f32(y, ref, n, 1e-6, 1e-5, "silu vs double");
	memcpy(y, x, n * sizeof *y);
	lora_relu(y, n);
	int ok = 1;
	for (size_t i = 0; i < n; i++)
		ok &= y[i] == (x[i] > 0 ? x[i] : 0);
	check(ok, "relu");
	float big[4] = {-50, 50, -200, 200};
	lora_gelu_tanh(big, 4);
	check(big[0] == 0 && big[1] == 50 && big[2] == 0 && big[3] == 200,
	      "gelu_new saturates exactly at large |x|");
	float am[5] = {1, 3, 2, 3, -1};
	check(lora_argmax(am, 5) == 1, "argmax takes the first of ties");
	free(x), free(w), free(b), free(y), free(ref);
}

struct par_ctx {
	int hits[1000];
	int bad_worker, workers;
	const float *x, *w;
	float *out;	/* [1000, 4] */
};

static void par_fn(void *vctx, int i, int worker)
{
	struct par_ctx *c = vctx;
	c->hits[i]++;	/* each i belongs to one call: no race */
	if (worker < 0 || worker >= c->workers)
		c->bad_worker = 1;
	lora_matmul(c->out + (size_t)i * 4, c->x + (size_t)i * 8, c->w, 1, 8, 4, true, 1.0f, 0.0f);
}

static void test_parallel(void)
{
	static struct par_ctx c;
	float *x = rand_vec(1000 * 8, 1), *w = rand_vec(4 * 8, 1);
	float *ref = malloc(1000 * 4 * sizeof *ref);
	c.x = x, c.w = w, c.out = malloc(1000 * 4 * sizeof *c.out);
	int before = lora_parallel_workers();
	c.workers = before;
	lora_parallel_for(1000, par_fn, &c);
	int once = 1;
	for (int i = 0; i < 1000; i++)
		once &= c.hits[i] == 1;
	check(once && !c.bad_worker, "parallel_for: each of 1000 items once, %d workers", before);
	check(lora_parallel_workers() == before, "the worker count stays fixed");
	check(before == 1 || openblas_get_num_threads() == 1,
	      "OpenBLAS at one thread beside a pool of %d", before);
	lora_matmul_naive(ref, x, w, 1000, 8, 4, true, 1.0f, 0.0f);
	check_close_f32(c.out, ref, 4000, 1e-5, 1e-5, "products inside parallel_for");
	free(x), free(w), free(ref), free(c.out);
}

/* ---- the pool under stress ---- */

struct cnt_ctx {
	atomic_int sum;
	int n_inner;	/* nest_fn: items of each nested loop */
	int want;	/* cnt_fn: the worker every item must see, or 0 for any */
	atomic_int bad;
};

static void cnt_fn(void *vctx, int i, int worker)
{
	struct cnt_ctx *c = vctx;
	atomic_fetch_add(&c->sum, i + 1);
	if (worker < 0 || worker >= lora_parallel_workers() || (c->want && worker != c->want - 1))
		atomic_store(&c->bad, 1);
}

/* An item that runs a whole loop itself: serial, on its own worker id. */
static void nest_fn(void *vctx, int i, int worker)
{
	struct cnt_ctx *c = vctx;
	struct cnt_ctx inner = {0};
	inner.want = worker + 1;	/* nested items see the outer item's worker */
	lora_parallel_for(c->n_inner, cnt_fn, &inner);
	if (atomic_load(&inner.sum) != c->n_inner * (c->n_inner + 1) / 2 || atomic_load(&inner.bad))
		atomic_store(&c->bad, 1);
	atomic_fetch_add(&c->sum, 1);
	(void)i;
}

static void *other_thread(void *arg)
{
	int *ok = arg;
	*ok = 1;
	for (int r = 0; r < 2000; r++) {
		struct cnt_ctx c = {0};
		lora_parallel_for(7, cnt_fn, &c);
		if (atomic_load(&c.sum) != 28)
			*ok = 0;
	}
	return NULL;
}

/* c[M,N] (stride ldc) = beta*c + alpha*op(a)·op(b), in double. */
static void gemm_ref(bool ta, bool tb, int M, int N, int K, float alpha, const float *a, int lda,
		     const float *b, int ldb, float beta, float *c, int ldc)
{
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double s = 0;
			for (int k = 0; k < K; k++)
				s += (double)(ta ? a[(size_t)k * lda + i] : a[(size_t)i * lda + k]) *
				     (tb ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j]);
			c[(size_t)i * ldc + j] = (float)(alpha * s + beta * c[(size_t)i * ldc + j]);
		}
}

static int split_gemm_ok(bool ta, bool tb, int M, int N, int K)
{
	int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 7;
	float *a = rand_vec((size_t)(ta ? K : M) * lda, 1), *b = rand_vec((size_t)(tb ? N : K) * ldb, 1);
	float *c = rand_vec((size_t)M * ldc, 1), *ref = malloc((size_t)M * ldc * sizeof *ref);
	memcpy(ref, c, (size_t)M * ldc * sizeof *ref);
	lora_gemm(ta, tb, M, N, K, 0.5f, a, lda, b, ldb, 0.25f, c, ldc);
	gemm_ref(ta, tb, M, N, K, 0.5f, a, lda, b, ldb, 0.25f, ref, ldc);
	double md = 0;
	for (size_t i = 0; i < (size_t)M * ldc; i++) {
		double d = fabs((double)c[i] - ref[i]);
		md = d > md ? d : md;
	}
	free(a), free(b), free(c), free(ref);
	check(md < 1e-3, "split lora_gemm ta=%d tb=%d %dx%dx%d with strides and beta: max diff %.2g", ta, tb,
	      M, N, K, md);
	return md < 1e-3;
}

static void test_pool(void)
{
	int bad = 0;
	for (int r = 0; r < 20000 && !bad; r++) {
		struct cnt_ctx c = {0};
		int n = 1 + r % 9;
		lora_parallel_for(n, cnt_fn, &c);
		bad = atomic_load(&c.sum) != n * (n + 1) / 2 || atomic_load(&c.bad);
	}
	check(!bad, "20000 back-to-back loops, each item once");
	bad = 0;
	for (int r = 0; r < 30 && !bad; r++) {
		struct timespec ts = {0, (r % 3) * 1000000L};	/* 0-2 ms: workers asleep */
		nanosleep(&ts, NULL);
		struct cnt_ctx c = {0};
		lora_parallel_for(64, cnt_fn, &c);
		bad = atomic_load(&c.sum) != 64 * 65 / 2;
	}
	check(!bad, "loops after the workers went to sleep");
	struct cnt_ctx c = {0};
	c.n_inner = 10;
	lora_parallel_for(50, nest_fn, &c);
	check(atomic_load(&c.sum) == 50 && !atomic_load(&c.bad), "nested loops run serially, whole");
	pthread_t th;
	int ok = 0;
	if (pthread_create(&th, NULL, other_thread, &ok) == 0) {
		bad = 0;
		for (int r = 0; r < 2000; r++) {
			struct cnt_ctx d = {0};
			lora_parallel_for(9, cnt_fn, &d);
			bad |= atomic_load(&d.sum) != 45;
		}
		pthread_join(th, NULL);
		check(ok && !bad, "loops from two threads at once");
	}
	for (int ta = 0; ta < 2; ta++)
		for (int tb = 0; tb < 2; tb++)
			split_gemm_ok(ta, tb, 67, 301, 61);
	split_gemm_ok(false, true, 3, 2000, 200);	/* a few rows of a wide product (the head) */
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {	/* the parent's workers do not exist here */
		struct cnt_ctx e = {0};
		lora_parallel_for(100, cnt_fn, &e);
		float *a = rand_vec(64 * 128, 1), *b = rand_vec(512 * 128, 1);
		float *y = malloc(64 * 512 * sizeof *y), *yr = malloc(64 * 512 * sizeof *yr);
		lora_matmul(y, a, b, 64, 128, 512, true, 1.0f, 0.0f);
		lora_matmul_naive(yr, a, b, 64, 128, 512, true, 1.0f, 0.0f);
		int good = atomic_load(&e.sum) == 5050;
		for (int i = 0; i < 64 * 512; i++)
			good &= fabsf(y[i] - yr[i]) < 1e-3f;
		_exit(good ? 0 : 1);
	}
	int st = -1;
	if (pid > 0)
		waitpid(pid, &st, 0);
	check(pid > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "a child after fork() runs loops and split products");
}

int main(void)
{
	test_parallel();
	test_pool();
	test_matmul();
	test_linear();
	test_exp();
	test_softmax_nll();
	test_norms_acts();
	return check_done();
}
