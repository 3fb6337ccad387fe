/*
 * test_merge — every merge method of lib/merge.c against an independent naive
 * computation: dense ΔW_i = s_i B_i A_i in double, the method's rule applied
 * elementwise, and (for truncating methods) a one-sided Jacobi SVD written
 * here, not LAPACK. Adapters are generated with mixed ranks, alphas, rsLoRA,
 * dtypes (f32/f16/bf16), negative weights and partially overlapping modules.
 * Tolerance: f32 output factors, so 1e-5 relative to the largest |ΔW| entry.
 * With $LORA_SHARED it also matches the PEFT merge goldens
 * (golden/merge/llama-tiny, see golden/README.md §4).
 */
#include "check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "merge.h"
#include "peft.h"
#include "tensor.h"

/* ---- generated adapters ---- */

static uint64_t rng_state = 12345;

static double urand(void)
{
	rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (double)(rng_state >> 11) * 0x1.0p-53;
}

static double nrand(void)
{
	double u = urand() + 1e-12, v = urand();
	return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static void fill(struct lora_tensor *t, enum lora_dtype dt, int64_t rows, int64_t cols)
{
	lora_tensor_alloc2(t, dt, rows, cols, NULL);
	size_t n = (size_t)(rows * cols);
	float *f = malloc(n * sizeof *f);
	for (size_t i = 0; i < n; i++)
		f[i] = (float)nrand();
	lora_from_f32(t->data, f, dt, n);
	free(f);
}

struct spec {
	const char *module;
	int out, in, r;
	double alpha;
	enum lora_dtype dt;
};

static void make_adapter(struct lora_adapter *a, const char *name, bool rslora,
			 const struct spec *s, size_t n)
{
	memset(a, 0, sizeof *a);
	a->name = strdup(name);
	a->base = strdup("gen-base");
	a->r = s[0].r;
	a->alpha = s[0].alpha;
	a->rslora = rslora;
	a->n_modules = n;
	a->modules = calloc(n, sizeof *a->modules);
	for (size_t k = 0; k < n; k++) {
		struct lora_module *m = &a->modules[k];
		m->module = strdup(s[k].module);
		m->r = s[k].r;
		m->alpha = s[k].alpha;
		fill(&m->a, s[k].dt, s[k].r, s[k].in);
		fill(&m->b, s[k].dt, s[k].out, s[k].r);
	}
}

static void free_adapter(struct lora_adapter *a)
{
	for (size_t k = 0; k < a->n_modules; k++) {
		free(a->modules[k].module);
		lora_tensor_free(&a->modules[k].a);
		lora_tensor_free(&a->modules[k].b);
	}
	free(a->modules);
	free(a->name);
	free(a->base);
	memset(a, 0, sizeof *a);
}

/* ---- naive dense algebra (double, row-major) ---- */

static const struct lora_module *find(const struct lora_adapter *a, const char *name)
{
	for (size_t k = 0; k < a->n_modules; k++)
		if (!strcmp(a->modules[k].module, name))
			return &a->modules[k];
	return NULL;
}

static double scale_of(const struct lora_adapter *a, const struct lora_module *m)
{
	return a->rslora ? m->alpha / sqrt(m->r) : m->alpha / m->r;
}

static double *to_f64(const struct lora_tensor *t)
{
	size_t n = (size_t)(t->shape[0] * t->shape[1]);
	float *f = malloc(n * sizeof *f);
	double *d = malloc(n * sizeof *d);
	lora_to_f32(f, t->data, t->dtype, n);
	for (size_t i = 0; i < n; i++)
		d[i] = f[i];
	free(f);
	return d;
}

/* C[m,n] = k * X[m,p] Y[p,n] */
static void matmul(double *C, const double *X, const double *Y, int m, int p, int n, double k)
{
	for (int i = 0; i < m; i++)
		for (int j = 0; j < n; j++) {
			double s = 0;
			for (int q = 0; q < p; q++)
				s += X[i * p + q] * Y[q * n + j];
			C[i * n + j] = k * s;
		}
}

/* ΔW = s B A of a module (out x in), or zeros when absent. */
static double *delta(const struct lora_adapter *a, const char *module, int out, int in)
{
	double *d = calloc((size_t)out * in, sizeof *d);
	const struct lora_module *m = find(a, module);
	if (!m)
		return d;
	double *A = to_f64(&m->a), *B = to_f64(&m->b);
	matmul(d, B, A, out, m->r, in, scale_of(a, m));
	free(A);
	free(B);
	return d;
}

/* The product B'A' of a merged module, in double. */
static double *product(const struct lora_module *m)
{
	int out = (int)m->b.shape[0], r = (int)m->a.shape[0], in = (int)m->a.shape[1];
	double *A = to_f64(&m->a), *B = to_f64(&m->b);
	double *d = calloc((size_t)out * in, sizeof *d);
	matmul(d, B, A, out, r, in, m->alpha / m->r);
	free(A);
	free(B);
	return d;
}

static int compare(const double *got, const double *want, size_t n, double rtol, const char *what)
{
	double mx = 0;
	for (size_t i = 0; i < n; i++)
		if (fabs(want[i]) > mx)
			mx = fabs(want[i]);
	float *g = malloc(n * sizeof *g), *w = malloc(n * sizeof *w);
	for (size_t i = 0; i < n; i++) {
		g[i] = (float)got[i];
		w[i] = (float)want[i];
	}
	int ok = check_close_f32(g, w, n, rtol * (mx > 0 ? mx : 1), 0, what);
	free(g);
	free(w);
	return ok;
}

/* Best rank-K approximation of D (m x n) by one-sided Jacobi SVD (Hestenes):
 * rotate column pairs of D^T-or-D until orthogonal; returns a new matrix. */
static double *truncate_naive(const double *D, int m, int n, int K)
{
	/* Work on columns of X = D (m x n); V accumulates the rotations. */
	double *X = malloc((size_t)m * n * sizeof *X), *V = calloc((size_t)n * n, sizeof *V);
	memcpy(X, D, (size_t)m * n * sizeof *X);
	for (int i = 0; i < n; i++)
		V[i * n + i] = 1;
	for (int sweep = 0; sweep < 60; sweep++) {
		double off = 0;
		for (int p = 0; p < n; p++)
			for (int q = p + 1; q < n; q++) {
				double a = 0, b = 0, c = 0;
				for (int i = 0; i < m; i++) {
					a += X[i * n + p] * X[i * n + p];
					b += X[i * n + q] * X[i * n + q];
					c += X[i * n + p] * X[i * n + q];
				}
				if (fabs(c) <= 1e-300 || fabs(c) < 1e-15 * sqrt(a * b))
					continue;
				off = fmax(off, fabs(c) / sqrt(a * b));
				double zeta = (b - a) / (2 * c);
				double t = (zeta >= 0 ? 1 : -1) / (fabs(zeta) + sqrt(1 + zeta * zeta));
				double cs = 1 / sqrt(1 + t * t), sn = cs * t;
				for (int i = 0; i < m; i++) {
					double xp = X[i * n + p], xq = X[i * n + q];
					X[i * n + p] = cs * xp - sn * xq;
					X[i * n + q] = sn * xp + cs * xq;
				}
				for (int i = 0; i < n; i++) {
					double vp = V[i * n + p], vq = V[i * n + q];
					V[i * n + p] = cs * vp - sn * vq;
					V[i * n + q] = sn * vp + cs * vq;
				}
			}
		if (off < 1e-15)
			break;
	}
	/* X = U S; singular values are column norms. Keep the K largest. */
	double *norm = malloc(n * sizeof *norm);
	int *keep = calloc(n, sizeof *keep);
	for (int p = 0; p < n; p++) {
		double s = 0;
		for (int i = 0; i < m; i++)
			s += X[i * n + p] * X[i * n + p];
		norm[p] = sqrt(s);
	}
	for (int k = 0; k < K && k < n; k++) {
		int best = -1;
		for (int p = 0; p < n; p++)
			if (!keep[p] && (best < 0 || norm[p] > norm[best]))
				best = p;
		keep[best] = 1;
	}
	/* D_K = Σ_kept X[:,p] V[:,p]^T */
	double *out = calloc((size_t)m * n, sizeof *out);
	for (int p = 0; p < n; p++) {
		if (!keep[p])
			continue;
		for (int i = 0; i < m; i++)
			for (int j = 0; j < n; j++)
				out[i * n + j] += X[i * n + p] * V[j * n + p];
	}
	free(X);
	free(V);
	free(norm);
	free(keep);
	return out;
}

/* ---- the pool ---- */

#define NA 4
static struct lora_adapter pool[NA];
static const struct lora_adapter *pp[NA];
static const char *mods[] = { "m.q", "m.v", "m.o" };
static const int outs[] = { 12, 7, 9 }, ins[] = { 10, 9, 9 };

static void make_pool(void)
{
	/* Mixed ranks/alphas/dtypes; m.o only in two adapters; rsLoRA in one. */
	struct spec s0[] = { { "m.q", 12, 10, 3, 6, LORA_F32 }, { "m.v", 7, 9, 2, 3, LORA_F32 } };
	struct spec s1[] = { { "m.v", 7, 9, 4, 2, LORA_F16 }, { "m.q", 12, 10, 2, 8, LORA_F32 },
			     { "m.o", 9, 9, 3, 1, LORA_F32 } };
	struct spec s2[] = { { "m.q", 12, 10, 5, 5, LORA_BF16 }, { "m.o", 9, 9, 1, 4, LORA_F32 } };
	struct spec s3[] = { { "m.q", 12, 10, 1, 1, LORA_F32 }, { "m.v", 7, 9, 3, 12, LORA_F32 } };
	make_adapter(&pool[0], "a0", false, s0, 2);
	make_adapter(&pool[1], "a1", true, s1, 3);
	make_adapter(&pool[2], "a2", false, s2, 2);
	make_adapter(&pool[3], "a3", true, s3, 2);
	for (int i = 0; i < NA; i++)
		pp[i] = &pool[i];
}

static const double W[NA] = { 0.7, -0.4, 1.3, -1.1 };

/* splitmix64 and the DARE mask as documented in man/lora-merge.1. */
static uint64_t sm64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t fnv(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return h;
}

static int cmp_desc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x < y) - (x > y);
}

/* Top-k magnitude pruning by a full sort (k = floor(density n)). */
static void prune_topk(double *d, size_t n, double density)
{
	size_t k = (size_t)(density * n);
	if (k >= n)
		return;
	double *m = malloc(n * sizeof *m);
	for (size_t i = 0; i < n; i++)
		m[i] = fabs(d[i]);
	qsort(m, n, sizeof *m, cmp_desc);
	double thr = k ? m[k - 1] : INFINITY;
	for (size_t i = 0; i < n; i++)
		if (fabs(d[i]) < thr)
			d[i] = 0;
	free(m);
}

/* The naive merged ΔW of module j for a dense method. */
static double *naive_dense(enum lora_merge_method meth, int j, double density, int freq,
			   uint64_t seed)
{
	size_t n = (size_t)outs[j] * ins[j];
	double *D = calloc(n, sizeof *D), *elect = calloc(n, sizeof *elect),
	       *cnt = calloc(n, sizeof *cnt);
	double *dw[NA];
	for (int i = 0; i < NA; i++) {
		dw[i] = delta(&pool[i], mods[j], outs[j], ins[j]);
		if (!find(&pool[i], mods[j]))
			continue;
		if (meth == LORA_MERGE_DARE) {
			uint64_t hm = fnv(mods[j]);
			uint64_t st = seed ^ fnv(pool[i].name) ^ ((hm << 32) | (hm >> 32));
			for (size_t e = 0; e < n; e++) {
				double u = (double)(sm64(&st) >> 11) / 9007199254740992.0;
				dw[i][e] = u < density ? dw[i][e] / density : 0;
			}
		} else {
			prune_topk(dw[i], n, density);
		}
		for (size_t e = 0; e < n; e++)
			elect[e] += freq ? (dw[i][e] > 0) - (dw[i][e] < 0) : dw[i][e];
	}
	for (int i = 0; i < NA; i++) {
		for (size_t e = 0; e < n; e++) {
			if (meth != LORA_MERGE_TIES) {
				D[e] += W[i] * dw[i][e];
			} else if (dw[i][e] != 0 && (dw[i][e] > 0) == (elect[e] >= 0)) {
				D[e] += W[i] * dw[i][e];
				cnt[e] += 1;
			}
		}
		free(dw[i]);
	}
	if (meth == LORA_MERGE_TIES)
		for (size_t e = 0; e < n; e++)
			D[e] /= cnt[e] > 1 ? cnt[e] : 1;
	free(elect);
	free(cnt);
	return D;
}

static const struct lora_module *out_find(const struct lora_adapter *a, const char *m)
{
	return find(a, m);
}

static void test_linear(void)
{
	struct lora_merge_params p = lora_merge_default_params();
	p.method = LORA_MERGE_LINEAR;
	struct lora_adapter out;
	struct lora_err err = { 0 };
	int rc = lora_merge(pp, NA, W, &p, &out, NULL, &err);
	if (!check(rc == 0, "linear merge runs (%s)", err.msg))
		return;
	check(out.n_modules == 3 && !strcmp(out.modules[0].module, "m.q") &&
		      !strcmp(out.modules[1].module, "m.v") && !strcmp(out.modules[2].module, "m.o"),
	      "linear: modules are the union in first-seen order");
	check(out_find(&out, "m.q")->r == 3 + 2 + 5 + 1 && out_find(&out, "m.o")->r == 4,
	      "linear: rank is the sum of the contributors' ranks");
	for (int j = 0; j < 3; j++) {
		size_t n = (size_t)outs[j] * ins[j];
		double *want = calloc(n, sizeof *want);
		for (int i = 0; i < NA; i++) {
			double *d = delta(&pool[i], mods[j], outs[j], ins[j]);
			for (size_t e = 0; e < n; e++)
				want[e] += W[i] * d[e];
			free(d);
		}
		double *got = product(out_find(&out, mods[j]));
		char what[64];
		snprintf(what, sizeof what, "linear %s = sum w_i s_i B_i A_i", mods[j]);
		compare(got, want, n, 1e-5, what);
		free(got);
		free(want);
	}
	free_adapter(&out);

	/* (1, -1) on the same adapter gives exactly zero. */
	struct lora_adapter twin;
	struct spec s[] = { { "x", 6, 5, 3, 7, LORA_BF16 } };
	make_adapter(&twin, "twin", true, s, 1);
	const struct lora_adapter *two[2] = { &twin, &twin };
	double w2[2] = { 1, -1 };
	rc = lora_merge(two, 2, w2, &p, &out, NULL, &err);
	if (check(rc == 0, "linear (1,-1) runs")) {
		double *got = product(&out.modules[0]);
		double mx = 0;
		for (int e = 0; e < 30; e++)
			mx = fmax(mx, fabs(got[e]));
		check(mx == 0, "linear (1,-1) on one adapter gives dW = 0 (max %g)", mx);
		free(got);
		free_adapter(&out);
	}
	free_adapter(&twin);
}

static void test_svd(void)
{
	struct lora_merge_params p = lora_merge_default_params();
	p.method = LORA_MERGE_SVD;
	p.rank = 64;	/* >= every module's total rank: no truncation */
	p.verbose = 1;
	struct lora_adapter out;
	struct lora_err err = { 0 };
	char *report = NULL;
	int rc = lora_merge(pp, NA, W, &p, &out, &report, &err);
	if (!check(rc == 0, "svd full rank runs (%s)", err.msg))
		return;
	check(report && strstr(report, "module 'm.q': rank 10 of 10, relative Frobenius error 0.000e+00"),
	      "svd -v reports per-module truncation error:\n%s", report ? report : "(null)");
	free(report);
	for (int j = 0; j < 3; j++) {
		size_t n = (size_t)outs[j] * ins[j];
		double *want = calloc(n, sizeof *want);
		for (int i = 0; i < NA; i++) {
			double *d = delta(&pool[i], mods[j], outs[j], ins[j]);
			for (size_t e = 0; e < n; e++)
				want[e] += W[i] * d[e];
			free(d);
		}
		double *got = product(out_find(&out, mods[j]));
		char what[64];
		snprintf(what, sizeof what, "svd full rank %s equals linear", mods[j]);
		compare(got, want, n, 1e-5, what);
		/* Truncated to rank 3: naive Jacobi SVD of the exact sum. */
		struct lora_merge_params p3 = p;
		p3.rank = 3;
		p3.verbose = 0;
		struct lora_adapter o3;
		if (lora_merge(pp, NA, W, &p3, &o3, NULL, &err) == 0) {
			double *g3 = product(out_find(&o3, mods[j]));
			double *w3 = truncate_naive(want, outs[j], ins[j], 3);
			snprintf(what, sizeof what, "svd rank 3 %s = best rank-3 of the sum", mods[j]);
			check(out_find(&o3, mods[j])->r == 3, "svd rank 3 %s has r 3", mods[j]);
			compare(g3, w3, n, 1e-5, what);
			free(g3);
			free(w3);
			free_adapter(&o3);
		}
		free(got);
		free(want);
	}
	free_adapter(&out);
}

static void test_lorahub(void)
{
	/* Equal ranks per module, different alphas / rsLoRA / dtypes. */
	struct lora_adapter h[3];
	struct spec s0[] = { { "q", 8, 6, 2, 4, LORA_F32 }, { "v", 5, 6, 3, 1, LORA_F32 } };
	struct spec s1[] = { { "v", 5, 6, 3, 9, LORA_BF16 } };
	struct spec s2[] = { { "q", 8, 6, 2, 0.5, LORA_F16 }, { "v", 5, 6, 3, 3, LORA_F32 } };
	make_adapter(&h[0], "h0", false, s0, 2);
	make_adapter(&h[1], "h1", true, s1, 1);
	make_adapter(&h[2], "h2", false, s2, 2);
	const struct lora_adapter *hp[3] = { &h[0], &h[1], &h[2] };
	const char *hm[2] = { "q", "v" };
	int ho[2] = { 8, 5 }, hi[2] = { 6, 6 }, hr[2] = { 2, 3 };
	double w[3] = { 0.6, -1.2, 0.9 };
	struct lora_merge_params p = lora_merge_default_params();
	struct lora_err err = { 0 };
	for (int mean = 0; mean < 2; mean++) {
		p.method = mean ? LORA_MERGE_MEAN : LORA_MERGE_LORAHUB;
		struct lora_adapter out;
		int rc = lora_merge(hp, 3, w, &p, &out, NULL, &err);
		if (!check(rc == 0, "%s merge runs (%s)", mean ? "mean" : "lorahub", err.msg))
			continue;
		for (int j = 0; j < 2; j++) {
			/* (Σ w √s B)(Σ w √s A), absent adapters contribute 0. */
			double *SA = calloc((size_t)hr[j] * hi[j], sizeof(double));
			double *SB = calloc((size_t)ho[j] * hr[j], sizeof(double));
			for (int i = 0; i < 3; i++) {
				const struct lora_module *m = find(&h[i], hm[j]);
				if (!m)
					continue;
				double wi = mean ? 1.0 / 3 : w[i], rs = sqrt(scale_of(&h[i], m));
				double *A = to_f64(&m->a), *B = to_f64(&m->b);
				for (int e = 0; e < hr[j] * hi[j]; e++)
					SA[e] += wi * rs * A[e];
				for (int e = 0; e < ho[j] * hr[j]; e++)
					SB[e] += wi * rs * B[e];
				free(A);
				free(B);
			}
			size_t n = (size_t)ho[j] * hi[j];
			double *want = malloc(n * sizeof *want);
			matmul(want, SB, SA, ho[j], hr[j], hi[j], 1);
			double *got = product(find(&out, hm[j]));
			char what[80];
			snprintf(what, sizeof what, "%s %s = (sum w sqrt(s) B)(sum w sqrt(s) A)",
				 mean ? "mean" : "lorahub", hm[j]);
			compare(got, want, n, 1e-5, what);
			check(find(&out, hm[j])->alpha == find(&out, hm[j])->r, "%s %s has scale 1",
			      mean ? "mean" : "lorahub", hm[j]);
			free(got);
			free(want);
			free(SA);
			free(SB);
		}
		free_adapter(&out);
	}
	/* One-hot weights give back each adapter's own ΔW, alphas differing. */
	p.method = LORA_MERGE_LORAHUB;
	for (int i = 0; i < 3; i++) {
		double oh[3] = { 0, 0, 0 };
		oh[i] = 1;
		struct lora_adapter out;
		if (lora_merge(hp, 3, oh, &p, &out, NULL, &err) != 0) {
			check(0, "lorahub one-hot %d: %s", i, err.msg);
			continue;
		}
		for (int j = 0; j < 2; j++) {
			double *want = delta(&h[i], hm[j], ho[j], hi[j]);
			double *got = product(find(&out, hm[j]));
			char what[64];
			snprintf(what, sizeof what, "lorahub one-hot h%d %s = s B A", i, hm[j]);
			compare(got, want, (size_t)ho[j] * hi[j], 1e-6, what);
			free(got);
			free(want);
		}
		free_adapter(&out);
	}
	for (int i = 0; i < 3; i++)
		free_adapter(&h[i]);
}

/* The lorahub merge looks a module up in each adapter at the position it has
 * in the first one (a pool usually lists modules in one order): adapters
 * listing the same modules in other orders, or lacking some, must merge to
 * bit-identical factors, in first-seen module order. */
static void test_lorahub_order(void)
{
	struct spec a0[] = { { "l0.q", 7, 5, 2, 4, LORA_F32 }, { "l0.v", 3, 5, 2, 2, LORA_F32 },
			     { "l1.q", 7, 5, 2, 4, LORA_F32 } };
	struct spec a1[] = { { "l0.q", 7, 5, 2, 8, LORA_F16 }, { "l0.v", 3, 5, 2, 2, LORA_F32 },
			     { "l1.q", 7, 5, 2, 1, LORA_F32 } };
	struct lora_adapter same[2], perm[2];
	uint64_t seed = rng_state;
	make_adapter(&same[0], "x0", false, a0, 3);
	make_adapter(&same[1], "x1", false, a1, 3);
	rng_state = seed;
	make_adapter(&perm[0], "x0", false, a0, 3);
	make_adapter(&perm[1], "x1", false, a1, 3);
	/* perm[1]: the same modules listed l1.q, l0.q, l0.v */
	struct lora_module t = perm[1].modules[2];
	perm[1].modules[2] = perm[1].modules[1];
	perm[1].modules[1] = perm[1].modules[0];
	perm[1].modules[0] = t;
	const struct lora_adapter *sp[2] = { &same[0], &same[1] }, *qp[2] = { &perm[0], &perm[1] };
	const struct lora_adapter *rp[2] = { &perm[1], &perm[0] };
	double w[2] = { 0.7, -0.4 }, wr[2] = { -0.4, 0.7 };
	struct lora_merge_params p = lora_merge_default_params();
	p.method = LORA_MERGE_LORAHUB;
	struct lora_err err = { 0 };
	struct lora_adapter o1, o2, o3;
	int rc1 = lora_merge(sp, 2, w, &p, &o1, NULL, &err);
	int rc2 = lora_merge(qp, 2, w, &p, &o2, NULL, &err);
	int rc3 = lora_merge(rp, 2, wr, &p, &o3, NULL, &err);
	if (check(rc1 == 0 && rc2 == 0 && rc3 == 0, "lorahub merges of reordered modules run (%s)",
		  err.msg)) {
		bool same_bits = o1.n_modules == 3 && o2.n_modules == 3;
		for (size_t k = 0; same_bits && k < 3; k++) {
			const struct lora_module *m1 = &o1.modules[k], *m2 = &o2.modules[k];
			same_bits = !strcmp(m1->module, m2->module) && m1->a.nbytes == m2->a.nbytes &&
				    m1->b.nbytes == m2->b.nbytes &&
				    !memcmp(m1->a.data, m2->a.data, m1->a.nbytes) &&
				    !memcmp(m1->b.data, m2->b.data, m1->b.nbytes);
		}
		check(same_bits, "lorahub: a member listing its modules in another order merges "
				 "bit-identically");
		/* led by the reordered adapter: its order, different contributor
		 * order (so only close, not bit-identical) */
		check(o3.n_modules == 3 && !strcmp(o3.modules[0].module, "l1.q") &&
			      !strcmp(o3.modules[1].module, "l0.q") &&
			      !strcmp(o3.modules[2].module, "l0.v"),
		      "lorahub: result modules in first-seen order");
		for (size_t k = 0; k < 3 && o3.n_modules == 3; k++) {
			const struct lora_module *m3 = &o3.modules[k], *m1 = find(&o1, m3->module);
			double *g = product(m3), *want = product(m1);
			char what[64];
			snprintf(what, sizeof what, "lorahub reordered pool, module %s", m3->module);
			compare(g, want, (size_t)(m3->b.shape[0] * m3->a.shape[1]), 1e-6, what);
			free(g);
			free(want);
		}
	}
	if (!rc1)
		free_adapter(&o1);
	if (!rc2)
		free_adapter(&o2);
	if (!rc3)
		free_adapter(&o3);
	for (int i = 0; i < 2; i++) {
		free_adapter(&same[i]);
		free_adapter(&perm[i]);
	}
}

static void test_dense(void)
{
	struct {
		enum lora_merge_method m;
		double density;
		int freq;
		uint64_t seed;
	} cases[] = {
		{ LORA_MERGE_TIES, 0.4, 0, 0 },	  { LORA_MERGE_TIES, 0.7, 1, 0 },
		{ LORA_MERGE_TIES, 1.0, 0, 0 },	  { LORA_MERGE_DARE, 0.5, 0, 7 },
		{ LORA_MERGE_DARE, 0.9, 0, 123 }, { LORA_MERGE_MAGNITUDE, 0.3, 0, 0 },
		{ LORA_MERGE_MAGNITUDE, 1.0, 0, 0 },
	};
	struct lora_err err = { 0 };
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		for (int K = 0; K < 2; K++) {
			struct lora_merge_params p = lora_merge_default_params();
			p.method = cases[c].m;
			p.density = cases[c].density;
			p.sign_frequency = cases[c].freq;
			p.seed = cases[c].seed;
			p.rank = K ? 2 : 64;	/* 64: no truncation */
			struct lora_adapter out;
			int rc = lora_merge(pp, NA, W, &p, &out, NULL, &err);
			if (!check(rc == 0, "%s runs (%s)", lora_merge_method_name(p.method), err.msg))
				continue;
			for (int j = 0; j < 3; j++) {
				double *want = naive_dense(p.method, j, p.density, p.sign_frequency,
							   p.seed);
				if (K) {
					double *t = truncate_naive(want, outs[j], ins[j], 2);
					free(want);
					want = t;
				}
				double *got = product(find(&out, mods[j]));
				char what[120];
				snprintf(what, sizeof what, "%s density %.1f%s seed %llu rank %s %s",
					 lora_merge_method_name(p.method), p.density,
					 p.sign_frequency ? " sign frequency" : "",
					 (unsigned long long)p.seed, K ? "2" : "full", mods[j]);
				compare(got, want, (size_t)outs[j] * ins[j], 1e-5, what);
				free(got);
				free(want);
			}
			free_adapter(&out);
		}
	}
}

/* DARE's masks depend on the seed and the names, not on pool order. */
static void test_dare_order(void)
{
	const struct lora_adapter *rev[NA];
	double wr[NA];
	for (int i = 0; i < NA; i++) {
		rev[i] = &pool[NA - 1 - i];
		wr[i] = W[NA - 1 - i];
	}
	struct lora_merge_params p = lora_merge_default_params();
	p.method = LORA_MERGE_DARE;
	p.density = 0.6;
	p.seed = 42;
	p.rank = 64;
	struct lora_adapter o1, o2;
	struct lora_err err = { 0 };
	if (lora_merge(pp, NA, W, &p, &o1, NULL, &err) || lora_merge(rev, NA, wr, &p, &o2, NULL, &err)) {
		check(0, "dare order: %s", err.msg);
		return;
	}
	double *g1 = product(find(&o1, "m.q")), *g2 = product(find(&o2, "m.q"));
	compare(g1, g2, (size_t)outs[0] * ins[0], 1e-5, "dare: the same merge whatever the pool order");
	free(g1);
	free(g2);
	free_adapter(&o1);
	free_adapter(&o2);
}

static void test_errors(void)
{
	struct lora_merge_params p = lora_merge_default_params();
	struct lora_adapter out;
	struct lora_err err = { 0 };
	int rc = lora_merge(pp, NA, W, &p, &out, NULL, &err);
	check(rc == LORA_EINVAL && strstr(err.msg, "equal ranks") && strstr(err.msg, "linear"),
	      "lorahub refuses unequal ranks and suggests linear: %s", err.msg);
	double bad[NA] = { 0.1, NAN, 0.2, 0.3 };
	p.method = LORA_MERGE_LINEAR;
	rc = lora_merge(pp, NA, bad, &p, &out, NULL, &err);
	check(rc == LORA_EINVAL && strstr(err.msg, "not finite") && strstr(err.msg, "a1"),
	      "NaN weight refused: %s", err.msg);
	bad[1] = INFINITY;
	rc = lora_merge(pp, NA, bad, &p, &out, NULL, &err);
	check(rc == LORA_EINVAL && strstr(err.msg, "not finite"), "Inf weight refused: %s", err.msg);
	rc = lora_merge(pp, 0, W, &p, &out, NULL, &err);
	check(rc == LORA_EINVAL && strstr(err.msg, "empty pool"), "empty pool refused: %s", err.msg);
	p.method = LORA_MERGE_TIES;
	p.density = 0;
	rc = lora_merge(pp, NA, W, &p, &out, NULL, &err);
	check(rc == LORA_EINVAL && strstr(err.msg, "density"), "density 0 refused: %s", err.msg);
	struct lora_adapter odd;
	struct spec s[] = { { "m.q", 11, 10, 3, 6, LORA_F32 } };
	make_adapter(&odd, "odd", false, s, 1);
	const struct lora_adapter *two[2] = { &pool[0], &odd };
	p.method = LORA_MERGE_LINEAR;
	rc = lora_merge(two, 2, W, &p, &out, NULL, &err);
	check(rc == LORA_EINVAL && strstr(err.msg, "'odd'") && strstr(err.msg, "m.q"),
	      "mismatched module shapes refused: %s", err.msg);
	free_adapter(&odd);
	enum lora_merge_method m;
	check(lora_merge_method_parse("ties", &m) == 0 && m == LORA_MERGE_TIES &&
		      lora_merge_method_parse("bogus", &m) == LORA_EINVAL &&
		      !strcmp(lora_merge_method_name(LORA_MERGE_SVD), "svd"),
	      "method names parse and print");
}

/* Golden merges from PEFT 0.10 / sail-sg lorahub (golden/README.md §4). */
static void test_goldens(void)
{
	const char *root = check_shared("golden/adapters/llama-tiny/pool_0");
	if (!root || !check_shared("golden/merge/llama-tiny/svd")) {
		check_skip("merge goldens (LORA_SHARED not set)");
		return;
	}
	static const double wB[5] = { 0.5, -0.3, 1.2, 0.1, -0.7 };
	struct lora_adapter gp[5];
	const struct lora_adapter *gpp[5];
	struct lora_err err = { 0 };
	for (int i = 0; i < 5; i++) {
		char rel[128];
		snprintf(rel, sizeof rel, "golden/adapters/llama-tiny/pool_%d", i);
		if (lora_peft_read(check_shared(rel), &gp[i], &err)) {
			check(0, "read %s: %s", rel, err.msg);
			for (int k = 0; k < i; k++)
				lora_adapter_free(&gp[k]);
			return;
		}
		gpp[i] = &gp[i];
	}
	struct {
		const char *dir;
		enum lora_merge_method m;
		int rank;
		int peft_svd;
	} cases[] = {
		{ "golden/merge/llama-tiny/lorahub", LORA_MERGE_LORAHUB, 0, 0 },
		{ "golden/merge/llama-tiny/cat", LORA_MERGE_LINEAR, 0, 0 },
		{ "golden/merge/llama-tiny/svd", LORA_MERGE_SVD, 4, 1 },
	};
	for (size_t c = 0; c < 3; c++) {
		struct lora_adapter gold, out;
		if (lora_peft_read(check_shared(cases[c].dir), &gold, &err)) {
			check(0, "read %s: %s", cases[c].dir, err.msg);
			continue;
		}
		/* PEFT's svd takes the SVD of Σ w_i s_i ΔW_i (the scale applied
		 * twice); ours does not double-scale, so feed it w_i s_i. */
		double w[5];
		for (int i = 0; i < 5; i++)
			w[i] = cases[c].peft_svd
				       ? wB[i] * lora_module_scale(&gp[i], &gp[i].modules[0])
				       : wB[i];
		struct lora_merge_params p = lora_merge_default_params();
		p.method = cases[c].m;
		p.rank = cases[c].rank;
		if (lora_merge(gpp, 5, w, &p, &out, NULL, &err)) {
			check(0, "%s: %s", cases[c].dir, err.msg);
			lora_adapter_free(&gold);
			continue;
		}
		check(out.n_modules == gold.n_modules, "%s: %zu modules (golden %zu)", cases[c].dir,
		      out.n_modules, gold.n_modules);
		for (size_t k = 0; k < gold.n_modules; k++) {
			const struct lora_module *gm = &gold.modules[k];
			const struct lora_module *om = find(&out, gm->module);
			if (!check(om != NULL, "%s: module %s present", cases[c].dir, gm->module))
				continue;
			int o = (int)gm->b.shape[0], in = (int)gm->a.shape[1];
			double *want = calloc((size_t)o * in, sizeof *want);
			double *A = to_f64(&gm->a), *B = to_f64(&gm->b);
			matmul(want, B, A, o, (int)gm->a.shape[0], in, lora_module_scale(&gold, gm));
			double *got = product(om);
			char what[200];
			snprintf(what, sizeof what, "golden %s %s: B'A' matches PEFT's", cases[c].dir,
				 gm->module);
			/* PEFT computed in f32 (and f32 SVD for svd): 1e-5 of the max. */
			compare(got, want, (size_t)o * in, 1e-5, what);
			free(want);
			free(A);
			free(B);
			free(got);
		}
		lora_adapter_free(&out);
		lora_adapter_free(&gold);
	}
	for (int i = 0; i < 5; i++)
		lora_adapter_free(&gp[i]);
}

int main(void)
{
	make_pool();
	test_linear();
	test_svd();
	test_lorahub();
	test_lorahub_order();
	test_dense();
	test_dare_order();
	test_errors();
	test_goldens();
	for (int i = 0; i < NA; i++)
		free_adapter(&pool[i]);
	return check_done();
}
