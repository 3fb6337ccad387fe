/*
 * test_ops — lib/ops kernels against naive double-precision references:
 * sgemm wrapper (both weight layouts, strides, alpha/beta) vs the naive
 * product, lora_linear with bias and two deltas vs the dense W + s·B·A, and
 * the worker pool: every item once, thousands of back-to-back and
 * sleep-separated loops (lost wake-ups would hang), nested and concurrent
 * calls, products split over the pool (every transpose, strides, beta) vs
 * the naive product, and a child after fork() using its own pool.
 *
 * The element-wise kernels run twice, on the 16-lane AVX-512 path (skipped
 * without AVX-512F) and the 8-lane one (lora_ops_set_avx512), each against
 * double precision, with the bounds the checks print:
 *   exp       <= 2 ulp over [-110, 95] and the edge values (±0, subnormals,
 *             ±FLT_MAX, ±Inf, NaN; 0 and Inf exactly at the ends),
 *             subnormal results within 2^-149;
 *   silu      <= 4 ulp over [-100, 100] and the edges, where |silu| >= 1e-36
 *             (below x = -88.7 exp(-x) overflows and gives -0, as PyTorch's);
 *   gelu_new  <= 2 + 4|a| ulp, a = -2u the f32 argument of exp (its rounding
 *             is amplified by |a|, in PyTorch's f32 formula too), where
 *             |gelu| >= 1e-36, and within 2e-6 relative of 0.5x(1+tanh u)
 *             on (-3, 30);
 *   softmax   <= 4 ulp against double from the same f32 shift x - max, rows
 *             of 1..1003, -inf giving 0, masked rows 0, NaN rows NaN;
 *   nll_row   within 1e-6 of (1 + |nll| + |max|), V up to 49152;
 *   rmsnorm   <= 6 ulp; layernorm within 1e-6 of |w|(1 + |x|/sd) + |b|;
 * at lengths that are not multiples of 16 or 8, from unaligned pointers,
 * writing nothing past the end. Then the two paths against each other on
 * the same data (bounds in ulps of the 8-lane result), and the path a fresh
 * process picks with and without LORA_NO_AVX512. relu (NaN gives 0) and
 * argmax (first of ties) once.
 */
#include "check.h"
#include "fixtures.h"
#include "ops.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void test_matmul(void)
{
	const int M = 37, K = 53, N = 29;
	float *x = fx_rand_vec((size_t)M * K, 1), *w = fx_rand_vec((size_t)N * K, 1);
	for (int t = 0; t < 2; t++) {
		bool wt = t == 0;
		float *a = fx_rand_vec((size_t)M * N, 1), *b = malloc((size_t)M * N * sizeof *b);
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
	float *x = fx_rand_vec((size_t)T * in, 1), *w = fx_rand_vec((size_t)out * in, 1);
	float *bias = fx_rand_vec(out, 1);
	float *a1 = fx_rand_vec((size_t)r1 * in, 1), *b1 = fx_rand_vec((size_t)out * r1, 1);
	float *a2 = fx_rand_vec((size_t)r2 * in, 1), *b2 = fx_rand_vec((size_t)out * r2, 1);
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

/* ---- the element-wise kernels, run once per path ---- */

static const char *path = "";	/* "16-lane: " or "8-lane: ", in every check line */

/* |got - want| in units of the float spacing at want (2^-149 in the
 * subnormal range); 0 when both are the same NaN/Inf, Inf when only one is
 * or when want rounds to an Inf that got is not. */
static double ulps(float got, double want)
{
	float wf = (float)want;
	if (isnan(want) || isinf(wf))
		return (isnan(want) ? isnan(got) : got == wf) ? 0 : INFINITY;
	if (isnan(got) || isinf(got))
		return INFINITY;
	int e = -200;
	if (want != 0)
		frexp(want, &e);
	double ulp = ldexp(1.0, e - 24 < -149 ? -149 : e - 24);
	return fabs((double)got - want) / ulp;
}

/* Edge values for the maps: signed zeros, subnormals, the normal range's
 * ends, huge and tiny arguments, Inf and NaN. */
static const float edges[] = {
	0.0f, -0.0f, 1e-45f, -1e-45f, 1e-40f, -1e-40f, 1.17549435e-38f, -1.17549435e-38f,
	1e-30f, -1e-30f, 1e-7f, -1e-7f, 0.5f, -0.5f, 1.0f, -1.0f, 88.7f, 88.73f, -87.33f,
	-103.9f, -104.5f, 1e10f, -1e10f, 1e20f, -1e20f, 1e30f, -1e30f, 3.4028235e38f,
	-3.4028235e38f, INFINITY, -INFINITY, NAN,
};
enum { N_EDGES = sizeof edges / sizeof edges[0] };

/* n values: a grid over [lo, hi) of step (lo + k*step, computed in double),
 * then the edge values; malloc'd, *n set. */
static float *grid(double lo, double hi, double step, size_t *n)
{
	size_t g = (size_t)((hi - lo) / step);
	float *x = malloc((g + N_EDGES) * sizeof *x);
	for (size_t i = 0; i < g; i++)
		x[i] = (float)(lo + (double)i * step);
	memcpy(x + g, edges, sizeof edges);
	*n = g + N_EDGES;
	return x;
}

/* Apply f to a copy of x[0..n) starting one float past a 64-byte boundary
 * (unaligned, and a tail that is not a multiple of 16 or 8 unless n is). */
static float *map_unaligned(void (*f)(float *, size_t), const float *x, size_t n, float **base)
{
	*base = aligned_alloc(64, (n + 17) * sizeof(float) / 64 * 64 + 64);
	float *y = *base + 1;
	memcpy(y, x, n * sizeof *y);
	f(y, n);
	return y;
}

/* The worst ulp error of f over x against ref(x) in double (divided by
 * allow(x) when given), for results of magnitude at least tiny; the worst
 * absolute error below that. */
struct errs {
	double ulp, sub;	/* worst ulps (normal results), worst abs error (subnormal) */
	double at;		/* the argument of the worst ulp error */
	int bad;		/* NaN or Inf results wrong */
};

static struct errs map_errs(void (*f)(float *, size_t), double (*ref)(double), const float *x,
			    size_t n, double (*allow)(double x, double want), double tiny)
{
	struct errs e = {0, 0, 0, 0};
	float *base;
	float *y = map_unaligned(f, x, n, &base);
	for (size_t i = 0; i < n; i++) {
		double want = ref(x[i]);
		if (isnan(want) || isinf((float)want)) {
			e.bad += ulps(y[i], want) != 0;
			continue;
		}
		if (fabs(want) < tiny) {
			double d = isnan(y[i]) ? INFINITY : fabs((double)y[i] - want);
			e.sub = d > e.sub ? d : e.sub;
			continue;
		}
		double u = ulps(y[i], want) / (allow ? allow(x[i], want) : 1.0);
		if (u > e.ulp)
			e.ulp = u, e.at = x[i];
	}
	free(base);
	return e;
}

static double ref_exp(double x)
{
	return exp(x);
}

/* silu and gelu_new in double, in the cancellation-free forms (equal to
 * x * sigmoid(x) and 0.5 x (1 + tanh u) as real functions). */
static double ref_silu(double x)
{
	return x / (1 + exp(-x));
}

static double gelu_arg(double x)
{
	return -2 * sqrt(2 / M_PI) * (x + 0.044715 * x * x * x);
}

static double ref_gelu(double x)
{
	return x / (1 + exp(gelu_arg(x)));
}

/* gelu_new is computed from a = -2u rounded to f32 (as PyTorch rounds u),
 * after 3 (FMA) or 4 roundings: exp's condition number |a| turns each half
 * ulp of a into up to |a| ulp of the result (|a|/2 relative, an ulp being
 * 2^-24 to 2^-23 relative). Allow 2 + 4|a| ulp. */
static double gelu_allow(double x, double want)
{
	(void)want;
	double a = fabs(gelu_arg(x));
	return 2 + 4 * (isinf(a) ? 0 : a);
}

static void test_maps(void)
{
	size_t n;
	/* exp: [-110, 95) by 0.00731 (28k values) and the edges */
	float *x = grid(-110, 95, 0.00731, &n);
	struct errs e = map_errs(lora_exp, ref_exp, x, n, NULL, 1.17549435e-38);
	check(e.ulp <= 2 && e.sub <= 1.4013e-45 && !e.bad,
	      "%sexp over %zu values: %.2f ulp max (at %g; bound 2), subnormal results within %.2g "
	      "(bound 2^-149), 0/Inf/NaN ends exact", path, n, e.ulp, e.at, e.sub);
	float nanv[1] = {NAN};
	lora_exp(nanv, 1);
	check(isnan(nanv[0]), "%sexp(NaN) is NaN", path);
	free(x);

	/* silu: [-100, 100) by 0.00317 (63k values) and the edges. Below
	 * x = -88.7 exp(-x) overflows and the result is -0 (as in PyTorch's
	 * x / (1 + exp(-x))) where the true value is above -1e-36. */
	x = grid(-100, 100, 0.00317, &n);
	e = map_errs(lora_silu, ref_silu, x, n, NULL, 1e-36);
	check(e.ulp <= 4 && e.sub <= 1e-36 && !e.bad,
	      "%ssilu over %zu values: %.2f ulp max (at %g; bound 4) where |silu| >= 1e-36, within "
	      "%.2g below, silu(-Inf) NaN, silu(Inf) Inf", path, n, e.ulp, e.at, e.sub);
	free(x);

	/* gelu_new: [-30, 30) by 0.00113 (53k values) and the edges (below
	 * x = -10.07, exp(a) overflows as for silu: -0 for true values above
	 * -1e-36; PyTorch's f32 formula gives 0 from x = -4.5 or so) */
	x = grid(-30, 30, 0.00113, &n);
	e = map_errs(lora_gelu_tanh, ref_gelu, x, n, gelu_allow, 1e-36);
	check(e.ulp <= 1 && e.sub <= 1e-36 && !e.bad,
	      "%sgelu_new over %zu values: %.2f of the allowed 2+4|a| ulp (at %g) where |gelu| >= "
	      "1e-36, within %.2g below, gelu(-Inf) NaN, gelu(Inf) Inf", path, n, e.ulp, e.at, e.sub);
	/* and against PyTorch's own formula where it has no cancellation */
	size_t m = 0;
	double worst = 0;
	float *y = malloc(n * sizeof *y);
	memcpy(y, x, n * sizeof *y);
	lora_gelu_tanh(y, n);
	for (size_t i = 0; i < n; i++) {
		double v = x[i];
		if (!(v > -3 && v < 30))
			continue;
		double want = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
		double d = fabs(y[i] - want) / (1e-6 + fabs(want));
		worst = d > worst ? d : worst;
		m++;
	}
	check(worst < 2e-6, "%sgelu_new vs 0.5x(1+tanh u) on %zu values in (-3, 30): rel err %.2g "
	      "(tol 2e-6 + 1e-6 abs)", path, m, worst);
	float big[4] = {-50, 50, -200, 200};
	lora_gelu_tanh(big, 4);
	check(big[0] == 0 && big[1] == 50 && big[2] == 0 && big[3] == 200,
	      "%sgelu_new saturates exactly at large |x|", path);
	free(x), free(y);

	/* every length 0..40 at an unaligned start: the tails */
	int ok = 1;
	float src[41], buf[42];
	for (int i = 0; i < 41; i++)
		src[i] = fx_frand() * 8;
	for (int len = 0; len <= 40; len++) {
		memcpy(buf + 1, src, (size_t)len * sizeof *buf);
		buf[1 + len] = 12345.0f;
		lora_silu(buf + 1, (size_t)len);
		for (int i = 0; i < len; i++)
			ok &= ulps(buf[1 + i], ref_silu(src[i])) <= 4;
		ok &= buf[1 + len] == 12345.0f;
	}
	check(ok, "%ssilu at every length 0..40, unaligned, within 4 ulp, nothing past the end", path);
}

/* softmax rows of every length: against double with the same f32 shift
 * x - max that PyTorch takes (exp's condition number would otherwise turn
 * that rounding into up to |x - max| / 2 ulp). */
static void test_softmax(void)
{
	static const int lens[] = {1, 7, 8, 15, 16, 17, 31, 33, 219, 1003};
	double worst = 0;
	int ok = 1;
	for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
		int n = lens[li], rows = 3;
		float *x = fx_rand_vec((size_t)rows * n, 20);
		float *base = malloc(((size_t)rows * n + 1) * sizeof *base), *y = base + 1;
		if (n > 5)
			x[5] = -INFINITY;
		memcpy(y, x, (size_t)rows * n * sizeof *y);
		lora_softmax_rows(y, rows, n);
		for (int r = 0; r < rows; r++) {
			const float *xr = x + (size_t)r * n;
			float m = -INFINITY;
			double s = 0;
			for (int i = 0; i < n; i++)
				m = xr[i] > m ? xr[i] : m;
			for (int i = 0; i < n; i++)
				s += exp((double)(xr[i] - m));
			for (int i = 0; i < n; i++) {
				double u = ulps(y[(size_t)r * n + i], exp((double)(xr[i] - m)) / s);
				worst = u > worst ? u : worst;
			}
		}
		ok &= n <= 5 || y[5] == 0.0f;
		free(x), free(base);
	}
	check(worst <= 4 && ok, "%ssoftmax rows of 1..1003 (unaligned): %.2f ulp max (bound 4), -inf "
	      "gives exactly 0", path, worst);
	float masked[19];
	for (int i = 0; i < 19; i++)
		masked[i] = -INFINITY;
	lora_softmax_rows(masked, 1, 19);
	ok = 1;
	for (int i = 0; i < 19; i++)
		ok &= masked[i] == 0;
	check(ok, "%ssoftmax of a fully masked row is 0, not NaN", path);
	float nanrow[2][19];
	for (int r = 0; r < 2; r++)
		for (int i = 0; i < 19; i++)
			nanrow[r][i] = r ? -INFINITY : (float)i;
	nanrow[0][17] = NAN, nanrow[1][3] = NAN;
	lora_softmax_rows(nanrow[0], 2, 19);
	ok = 1;
	for (int r = 0; r < 2; r++)
		for (int i = 0; i < 19; i++)
			ok &= isnan(nanrow[r][i]);
	check(ok, "%ssoftmax of a row with a NaN is all NaN (also among -inf)", path);
}

static void test_nll(void)
{
	static const int lens[] = {1, 15, 17, 1003, 32128, 49152};
	double worst = 0;
	for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
		int V = lens[li];
		float *x = fx_rand_vec((size_t)V + 1, 15);
		const float *row = x + 1;	/* unaligned */
		float m = -INFINITY;
		double s = 0;
		for (int i = 0; i < V; i++)
			m = row[i] > m ? row[i] : m;
		for (int i = 0; i < V; i++)
			s += exp((double)(row[i] - m));
		for (int t = 0; t < V; t += V / 3 + 1) {
			double want = m + log(s) - row[t];
			double d = fabs(lora_nll_row(row, V, t) - want) / (1 + fabs(want) + fabs(m));
			worst = d > worst ? d : worst;
		}
		free(x);
	}
	check(worst < 1e-6, "%snll_row over V = 1..49152 (unaligned) vs double log-sum-exp: err %.2g of "
	      "(1 + |nll| + |max|) (tol 1e-6)", path, worst);
}

/* RMSNorm / LayerNorm over widths around the lane counts and the models'
 * (512 T5-small, 576 SmolLM), unaligned rows and weights, a zero row and a
 * row of subnormals. Reference in double from the same f32 inputs. */
static void test_norms(void)
{
	static const int widths[] = {1, 7, 15, 16, 17, 31, 33, 67, 512, 576};
	double rms_worst = 0, ln_worst = 0;
	int ok = 1;
	for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
		int C = widths[wi], T = 4;
		float *xb = fx_rand_vec((size_t)T * C + 1, 3), *x = xb + 1;
		float *wb = fx_rand_vec((size_t)C + 1, 1), *w = wb + 1;
		float *bb = fx_rand_vec((size_t)C + 1, 1), *b = bb + 1;
		float *yb = malloc(((size_t)T * C + 2) * sizeof *yb), *y = yb + 1;
		for (int i = 0; i < C; i++) {
			x[2 * C + i] = 0.0f;	/* row 2: zeros */
			x[3 * C + i] = (i % 2 ? 1e-40f : -3e-41f);	/* row 3: subnormals */
		}
		y[T * C] = 777.0f;
		lora_rmsnorm(y, x, w, T, C, 1e-6f);
		ok &= y[T * C] == 777.0f;
		for (int t = 0; t < T; t++) {
			double ss = 0;
			for (int i = 0; i < C; i++)
				ss += (double)x[t * C + i] * x[t * C + i];
			double inv = 1 / sqrt(ss / C + 1e-6);
			for (int i = 0; i < C; i++) {
				double want = (double)w[i] * x[t * C + i] * inv;
				double u = ulps(y[t * C + i], want);
				if (fabs(want) < 1.17549435e-38)
					u = fabs(y[t * C + i] - want) / 1.4013e-45 / 4;
				rms_worst = u > rms_worst ? u : rms_worst;
			}
		}
		lora_layernorm(y, x, w, b, T, C, 1e-5f);
		ok &= y[T * C] == 777.0f;
		for (int t = 0; t < T; t++) {
			double mean = 0, var = 0;
			for (int i = 0; i < C; i++)
				mean += x[t * C + i];
			mean /= C;
			for (int i = 0; i < C; i++)
				var += (x[t * C + i] - mean) * (x[t * C + i] - mean);
			var /= C;
			double inv = 1 / sqrt(var + 1e-5);
			for (int i = 0; i < C; i++) {
				/* relative to the row's scale: x - mean cancels */
				double want = (x[t * C + i] - mean) * inv * w[i] + b[i];
				double d = fabs(y[t * C + i] - want) / (fabs(w[i]) * (1 + fabs(x[t * C + i]) * inv) + fabs(b[i]));
				ln_worst = d > ln_worst ? d : ln_worst;
			}
		}
		lora_layernorm(y, x, w, NULL, 1, C, 1e-5f);	/* no bias */
		double mean = 0, var = 0;
		for (int i = 0; i < C; i++)
			mean += x[i];
		mean /= C;
		for (int i = 0; i < C; i++)
			var += (x[i] - mean) * (x[i] - mean);
		for (int i = 0; i < C; i++) {
			double want = (x[i] - mean) / sqrt(var / C + 1e-5) * w[i];
			double d = fabs(y[i] - want) / (fabs(w[i]) * (1 + fabs(x[i]) / sqrt(var / C + 1e-5)));
			ln_worst = d > ln_worst ? d : ln_worst;
		}
		free(xb), free(wb), free(bb), free(yb);
	}
	check(rms_worst <= 6 && ok, "%srmsnorm over widths 1..576 (unaligned; zero and subnormal rows): "
	      "%.2f ulp max (bound 6; subnormal results within 4 x 2^-149)", path, rms_worst);
	check(ln_worst < 1e-6 && ok, "%slayernorm over widths 1..576 (unaligned, with and without bias): "
	      "err %.2g of |w|(1 + |x|/sd) + |b| (tol 1e-6)", path, ln_worst);
}

static void test_relu_argmax(void)
{
	float x[37], yb[39], *y = yb + 1;	/* unaligned, 37 = 4 x 8 + 5 */
	for (int i = 0; i < 37; i++)
		x[i] = fx_frand();
	x[3] = NAN, x[8] = -0.0f, x[20] = INFINITY, x[36] = -INFINITY;
	memcpy(y, x, sizeof x);
	y[37] = 5.0f;
	lora_relu(y, 37);
	int ok = y[37] == 5.0f;
	for (int i = 0; i < 37; i++)
		ok &= y[i] == (x[i] > 0 ? x[i] : 0) && !signbit(y[i]);
	check(ok, "relu over 37 values with NaN (gives 0), -0, ±Inf, nothing past the end");
	float am[5] = {1, 3, 2, 3, -1};
	check(lora_argmax(am, 5) == 1, "argmax takes the first of ties");
}

/* The two paths on the same data: the worst disagreement in ulps (of the
 * 8-lane result), and NaN where the other has NaN. */
struct cmp {
	double ulp;
	int nan_mismatch;
};

/* x: the inputs of gelu (whose differences are allowed 2 + 4|a| ulp as
 * against double), else NULL */
static void cmp_acc(struct cmp *c, const float *a, const float *b, size_t n, const float *x)
{
	for (size_t i = 0; i < n; i++) {
		if (isnan(a[i]) || isnan(b[i])) {
			c->nan_mismatch += isnan(a[i]) != isnan(b[i]);
			continue;
		}
		double u = ulps(b[i], a[i]) / (x ? gelu_allow(x[i], 0) : 1);
		c->ulp = u > c->ulp ? u : c->ulp;
	}
}

static void test_paths_agree(void)
{
	if (!lora_ops_set_avx512(true)) {
		check_skip("16-lane and 8-lane paths agree (no AVX-512F here)");
		return;
	}
	const size_t n = 20011;	/* not a multiple of 8 */
	float *x = fx_rand_vec(n + N_EDGES, 12);
	memcpy(x + n, edges, sizeof edges);
	float *a = malloc((n + N_EDGES) * sizeof *a), *b = malloc((n + N_EDGES) * sizeof *b);
	static const struct {
		const char *name;
		void (*f)(float *, size_t);
		double bound;
	} maps[] = {{"exp", lora_exp, 2}, {"silu", lora_silu, 4},
		    {"gelu_new (in units of 2 + 4|a| ulp)", lora_gelu_tanh, 2}};
	for (size_t k = 0; k < 3; k++) {
		struct cmp c = {0, 0};
		memcpy(a, x, (n + N_EDGES) * sizeof *a);
		memcpy(b, x, (n + N_EDGES) * sizeof *b);
		lora_ops_set_avx512(false);
		maps[k].f(a, n + N_EDGES);
		lora_ops_set_avx512(true);
		maps[k].f(b, n + N_EDGES);
		cmp_acc(&c, a, b, n + N_EDGES, maps[k].f == lora_gelu_tanh ? x : NULL);
		check(c.ulp <= maps[k].bound && !c.nan_mismatch,
		      "16-lane vs 8-lane %s on %zu values (|x| < 12 and the edges): %.2f ulp max (bound %g), "
		      "NaN alike", maps[k].name, n + N_EDGES, c.ulp, maps[k].bound);
	}
	/* softmax: the attention shape (219-long rows) */
	struct cmp c = {0, 0};
	memcpy(a, x, 219 * 91 * sizeof *a);
	memcpy(b, x, 219 * 91 * sizeof *b);
	lora_ops_set_avx512(false);
	lora_softmax_rows(a, 91, 219);
	lora_ops_set_avx512(true);
	lora_softmax_rows(b, 91, 219);
	cmp_acc(&c, a, b, 219 * 91, NULL);
	check(c.ulp <= 6 && !c.nan_mismatch, "16-lane vs 8-lane softmax, 91 rows of 219: %.2f ulp max (bound 6)",
	      c.ulp);
	/* norms at T5-small's width */
	float *w = fx_rand_vec(512, 1), *bias = fx_rand_vec(512, 1);
	struct cmp cr = {0, 0}, cl = {0, 0};
	for (int pass = 0; pass < 2; pass++) {
		lora_ops_set_avx512(pass);
		lora_rmsnorm(pass ? b : a, x, w, 39, 512, 1e-6f);
	}
	cmp_acc(&cr, a, b, 39 * 512, NULL);
	check(cr.ulp <= 8, "16-lane vs 8-lane rmsnorm, 39 x 512: %.2f ulp max (bound 8)", cr.ulp);
	for (int pass = 0; pass < 2; pass++) {
		lora_ops_set_avx512(pass);
		lora_layernorm(pass ? b : a, x, w, bias, 39, 512, 1e-5f);
	}
	double worst = 0;
	for (int i = 0; i < 39 * 512; i++) {
		double d = fabs(a[i] - b[i]);
		worst = d > worst ? d : worst;
	}
	(void)cl;
	check(worst < 2e-6 * 12, "16-lane vs 8-lane layernorm, 39 x 512: max diff %.2g (tol 2.4e-5: "
	      "values up to about 12)", worst);
	/* nll over the T5 vocabulary */
	double dn = 0;
	for (int r = 0; r < 3; r++) {
		lora_ops_set_avx512(false);
		float l8 = lora_nll_row(x + r * 17, 32128 / 2, r * 1000);
		lora_ops_set_avx512(true);
		float l16 = lora_nll_row(x + r * 17, 32128 / 2, r * 1000);
		double d = fabs(l8 - l16) / (1 + fabs(l8));
		dn = d > dn ? d : dn;
	}
	check(dn < 1e-6, "16-lane vs 8-lane nll_row over 16064 logits: rel diff %.2g (tol 1e-6)", dn);
	free(x), free(a), free(b), free(w), free(bias);
}

/* The path a fresh process picks with LORA_NO_AVX512=value (NULL: unset):
 * 1 for 16 lanes, 0 for 8, -1 when the child failed. */
static int child_path(const char *value)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		if (value)
			setenv("LORA_NO_AVX512", value, 1);
		else
			unsetenv("LORA_NO_AVX512");
		execl("/proc/self/exe", "test_ops", "--print-path", (char *)NULL);
		_exit(99);
	}
	int st = -1;
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) > 1)
		return -1;
	return WEXITSTATUS(st);
}

static void test_path_env(void)
{
	int cpu = lora_ops_set_avx512(true);
	check(child_path("1") == 0, "LORA_NO_AVX512=1 gives the 8-lane path");
	check(child_path("0") == cpu && child_path(NULL) == cpu && child_path("") == cpu,
	      "LORA_NO_AVX512 unset, empty or 0 gives the %d-lane path on this CPU", cpu ? 16 : 8);
}

static void test_elementwise(void)
{
	bool had = lora_ops_avx512();
	for (int p = 1; p >= 0; p--) {
		if (lora_ops_set_avx512(p) != (bool)p) {
			check_skip("the 16-lane kernels (no AVX-512F here)");
			continue;
		}
		path = p ? "16-lane: " : "8-lane: ";
		test_maps();
		test_softmax();
		test_nll();
		test_norms();
	}
	path = "";
	test_paths_agree();
	test_relu_argmax();
	lora_ops_set_avx512(had);
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
	float *x = fx_rand_vec(1000 * 8, 1), *w = fx_rand_vec(4 * 8, 1);
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
	float *a = fx_rand_vec((size_t)(ta ? K : M) * lda, 1), *b = fx_rand_vec((size_t)(tb ? N : K) * ldb, 1);
	float *c = fx_rand_vec((size_t)M * ldc, 1), *ref = malloc((size_t)M * ldc * sizeof *ref);
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
		float *a = fx_rand_vec(64 * 128, 1), *b = fx_rand_vec(512 * 128, 1);
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

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--print-path"))	/* child of test_path_env */
		return lora_ops_avx512() ? 1 : 0;
	fx_srand(88172645463325252ull);
	test_parallel();
	test_pool();
	test_matmul();
	test_linear();
	test_elementwise();
	test_path_env();
	return check_done();
}
