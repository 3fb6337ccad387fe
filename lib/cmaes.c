/*
 * cmaes — ask/tell CMA-ES with pycma 4.x defaults; see cmaes.h.
 *
 * Notation (Hansen's tutorial): m mean, σ step size, C = B D² Bᵀ covariance,
 * p_σ / p_c evolution paths, y_i = (x_i − m)/σ the untransformed samples,
 * w_i recombination weights (positive for the μ best, negative for the rest,
 * used only in the covariance update). Everything is double; C, B are
 * row-major n × n, B's columns are the eigenvectors.
 */
#include "cmaes.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct lora_cmaes {
	size_t n, lambda, mu;
	double *w;			/* [λ] recombination weights */
	double mueff, cc, cs, c1, cmu, damps, chin;
	double *x0;			/* [n] */
	double sigma0, sigma;
	double *lb, *ub, *maxstd;	/* [n] each; maxstd 0 = none */
	int bounded, active;
	double *mean, *mean_old;	/* [n] */
	double *C, *B, *D;		/* [n*n], [n*n], [n] */
	double *pc, *ps;		/* [n] */
	double *xg;			/* [λ*n] genotypes of the last ask */
	double *tmp, *tmp2, *tmp3, *tmp4, *work;	/* [n] ×4, [n*n] */
	double *scratch;		/* [max(λ, tolstag)] */
	size_t scratch_len;
	size_t *idx;			/* [λ] */
	double *fs;			/* [λ] f sorted */
	long g, g_eigen;
	int asked;
	struct lora_cmaes_rng rng;
	/* termination */
	double tolfun, tolx, tolcond;
	long tolstag, tolstag_user;
	double *hbest, *hmed;		/* per-generation best / median */
	size_t hlen, hcap;
	long flat;
	const char *stop;
};

/* ---- random numbers: xoshiro256** seeded through splitmix64 ---- */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

void lora_cmaes_rng_seed(struct lora_cmaes_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
	r->has_spare = 0;
	r->spare = 0;
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t lora_cmaes_rng_next(struct lora_cmaes_rng *r)
{
	uint64_t *s = r->s;
	uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

double lora_cmaes_rng_uniform(struct lora_cmaes_rng *r)
{
	return (double)(lora_cmaes_rng_next(r) >> 11) * 0x1.0p-53;
}

/* Marsaglia's polar method: exact normals, two per rejection loop. */
double lora_cmaes_rng_normal(struct lora_cmaes_rng *r)
{
	if (r->has_spare) {
		r->has_spare = 0;
		return r->spare;
	}
	double u, v, s;
	do {
		u = 2 * lora_cmaes_rng_uniform(r) - 1;
		v = 2 * lora_cmaes_rng_uniform(r) - 1;
		s = u * u + v * v;
	} while (s >= 1 || s == 0);
	double m = sqrt(-2 * log(s) / s);
	r->spare = v * m;
	r->has_spare = 1;
	return u * m;
}

/* ---- bounds: pycma's BoxConstraintsLinQuadTransformation ---- */

static double margin(double lb, double ub, double b)
{
	double a = (1 + fabs(b)) / 20, h = (ub - lb) / 2;
	return a < h ? a : h;
}

double lora_cmaes_bound_transform(double y, double lb, double ub)
{
	if (!isfinite(lb) && !isfinite(ub))
		return y;
	double al = isfinite(lb) ? margin(lb, ub, lb) : 1;
	double au = isfinite(ub) ? margin(lb, ub, ub) : 1;
	if (isfinite(lb) && isfinite(ub)) {
		/* fold far-away values by the period 2(ub − lb + al + au) */
		double half = (ub - lb) / 2;
		if (y < lb - 2 * al - half || y > ub + 2 * au + half) {
			double r = 2 * (ub - lb + al + au);
			double s = lb - 2 * al - half;
			y -= r * floor((y - s) / r);
		}
	}
	if (isfinite(ub) && y > ub + au)
		y -= 2 * (y - ub - au);
	if (isfinite(lb) && y < lb - al)
		y += 2 * (lb - al - y);
	if (isfinite(lb) && y < lb + al)
		y = lb + (y - (lb - al)) * (y - (lb - al)) / 4 / al;
	if (isfinite(ub) && y > ub - au)
		y = ub - (y - (ub + au)) * (y - (ub + au)) / 4 / au;
	/* guard against rounding just outside the box */
	if (isfinite(lb) && y < lb)
		y = lb;
	if (isfinite(ub) && y > ub)
		y = ub;
	return y;
}

/* ---- parameters ---- */

/* Weights and learning rates for the current λ (pycma's CMAParameters,
 * RecombinationWeights.finalize_negative_weights, CMAAdaptSigmaCSA and the
 * sampler's c1/cmu). */
static void set_params(struct lora_cmaes *es)
{
	size_t n = es->n, lam = es->lambda;
	double N = (double)n;
	for (size_t i = 0; i < lam; i++)
		es->w[i] = log((lam + 1) / 2.0) - log((double)(i + 1));
	size_t mu = 0;
	double spos = 0, spos2 = 0, sneg = 0, sneg2 = 0;
	for (size_t i = 0; i < lam; i++) {
		if (es->w[i] > 0) {
			mu++;
			spos += es->w[i];
		}
	}
	for (size_t i = 0; i < lam; i++)
		es->w[i] /= spos;	/* positive weights sum to 1 */
	for (size_t i = 0; i < mu; i++)
		spos2 += es->w[i] * es->w[i];
	es->mu = mu;
	es->mueff = 1 / spos2;
	double mueff = es->mueff;

	es->cc = (4 + mueff / N) / (N + 4 + 2 * mueff / N);
	es->cs = (mueff + 2) / (N + mueff + 3);
	es->c1 = (lam / 6.0 < 1 ? lam / 6.0 : 1) * 2 / ((N + 1.3) * (N + 1.3) + mueff);
	double cmu = 2 * (mueff - 2 + 1 / mueff) / ((N + 2) * (N + 2) + mueff);
	es->cmu = cmu < 1 - es->c1 ? cmu : 1 - es->c1;
	double dm = sqrt((mueff - 1) / (N + 1)) - 1;
	es->damps = 1 + 2 * (dm > 0 ? dm : 0) + es->cs;
	es->chin = sqrt(N) * (1 - 1 / (4 * N) + 1 / (21 * N * N));

	/* negative weights: raw shape scaled so that c1 + cmu Σw = 0, then
	 * limited by 1 + 2 μeff⁻/(μeff + 2) and the positive-definiteness
	 * bound (1 − c1 − cmu)/(n cmu) */
	for (size_t i = mu; i < lam; i++)
		sneg += es->w[i];
	if (!es->active || sneg == 0) {
		for (size_t i = mu; i < lam; i++)
			es->w[i] = 0;
		return;
	}
	for (size_t i = mu; i < lam; i++)
		sneg2 += es->w[i] * es->w[i];
	double mueffminus = sneg * sneg / sneg2;
	double target = 1 + es->c1 / es->cmu;
	double lim1 = (1 - es->c1 - es->cmu) / es->cmu / N;
	double lim2 = 1 + 2 * mueffminus / (mueff + 2);
	if (lim1 < target)
		target = lim1;
	if (lim2 < target)
		target = lim2;
	for (size_t i = mu; i < lam; i++)
		es->w[i] *= target / -sneg;
}

struct lora_cmaes_params lora_cmaes_default_params(size_t n)
{
	struct lora_cmaes_params p = {
		.n = n, .x0 = NULL, .sigma0 = 1, .popsize = 0,
		.lower = -INFINITY, .upper = INFINITY, .seed = 1, .active = 1,
		.tolfun = 1e-11, .tolx = 1e-11, .tolcondition = 1e14, .tolstagnation = 0,
	};
	return p;
}

static int alloc_lambda(struct lora_cmaes *es)
{
	size_t lam = es->lambda, n = es->n;
	free(es->w);
	free(es->xg);
	free(es->idx);
	free(es->fs);
	es->w = malloc(lam * sizeof *es->w);
	es->xg = malloc(lam * n * sizeof *es->xg);
	es->idx = malloc(lam * sizeof *es->idx);
	es->fs = malloc(lam * sizeof *es->fs);
	return es->w && es->xg && es->idx && es->fs ? 0 : LORA_ENOMEM;
}

/* Scratch for sorting f values and stagnation medians. */
static int alloc_scratch(struct lora_cmaes *es)
{
	size_t need = es->lambda > (size_t)es->tolstag ? es->lambda : (size_t)es->tolstag;
	if (need <= es->scratch_len)
		return 0;
	free(es->scratch);
	es->scratch = malloc(need * sizeof *es->scratch);
	es->scratch_len = es->scratch ? need : 0;
	return es->scratch ? 0 : LORA_ENOMEM;
}

/* Reset the distribution to its start (used by new and restart). */
static int reset_state(struct lora_cmaes *es)
{
	size_t n = es->n;
	memcpy(es->mean, es->x0, n * sizeof *es->mean);
	es->sigma = es->sigma0;
	memset(es->C, 0, n * n * sizeof *es->C);
	memset(es->B, 0, n * n * sizeof *es->B);
	for (size_t i = 0; i < n; i++) {
		es->C[i * n + i] = 1;
		es->B[i * n + i] = 1;
		es->D[i] = 1;
	}
	memset(es->pc, 0, n * sizeof *es->pc);
	memset(es->ps, 0, n * sizeof *es->ps);
	es->g = es->g_eigen = 0;
	es->asked = 0;
	es->hlen = 0;
	es->flat = 0;
	es->stop = NULL;
	set_params(es);
	double N = (double)n;
	es->tolstag = es->tolstag_user > 0 ? es->tolstag_user
					   : (long)(100 + 100 * pow(N, 1.5) / (double)es->lambda);
	return alloc_scratch(es);
}

int lora_cmaes_new(const struct lora_cmaes_params *p, struct lora_cmaes **out,
		   struct lora_err *err)
{
	*out = NULL;
	size_t n = p->n;
	if (n == 0 || n > 100000)
		return lora_errf(err, LORA_EINVAL, "cmaes: dimension %zu out of range [1, 100000]", n);
	if (!(p->sigma0 > 0) || !isfinite(p->sigma0))
		return lora_errf(err, LORA_EINVAL, "cmaes: sigma0 must be positive, got %g", p->sigma0);
	if (isnan(p->lower) || isnan(p->upper) || !(p->lower < p->upper))
		return lora_errf(err, LORA_EINVAL, "cmaes: lower bound %g is not below upper bound %g",
				 p->lower, p->upper);
	size_t lam = p->popsize > 0 ? (size_t)p->popsize : 4 + (size_t)floor(3 * log((double)n));
	if (lam < 2 || lam > 1000000)
		return lora_errf(err, LORA_EINVAL, "cmaes: population size %zu out of range [2, 1000000]",
				 lam);
	struct lora_cmaes *es = calloc(1, sizeof *es);
	if (!es)
		return lora_errf(err, LORA_ENOMEM, "cmaes: out of memory");
	es->n = n;
	es->lambda = lam;
	es->sigma0 = p->sigma0;
	es->active = p->active;
	es->tolfun = p->tolfun;
	es->tolx = p->tolx;
	es->tolcond = p->tolcondition;
	es->tolstag_user = p->tolstagnation;
	es->bounded = isfinite(p->lower) || isfinite(p->upper);
	lora_cmaes_rng_seed(&es->rng, p->seed);
	size_t nn = n * n;
	es->x0 = calloc(n, sizeof(double));
	es->lb = malloc(n * sizeof(double));
	es->ub = malloc(n * sizeof(double));
	es->maxstd = calloc(n, sizeof(double));
	es->mean = malloc(n * sizeof(double));
	es->mean_old = malloc(n * sizeof(double));
	es->C = malloc(nn * sizeof(double));
	es->B = malloc(nn * sizeof(double));
	es->work = malloc(nn * sizeof(double));
	es->D = malloc(n * sizeof(double));
	es->pc = malloc(n * sizeof(double));
	es->ps = malloc(n * sizeof(double));
	es->tmp = malloc(n * sizeof(double));
	es->tmp2 = malloc(n * sizeof(double));
	es->tmp3 = malloc(n * sizeof(double));
	es->tmp4 = malloc(n * sizeof(double));
	if (!es->tmp3 || !es->tmp4 || !es->x0 || !es->lb || !es->ub || !es->maxstd || !es->mean || !es->mean_old || !es->C ||
	    !es->B || !es->work || !es->D || !es->pc || !es->ps || !es->tmp || !es->tmp2 ||
	    alloc_lambda(es)) {
		lora_cmaes_free(es);
		return lora_errf(err, LORA_ENOMEM, "cmaes: out of memory (n = %zu)", n);
	}
	for (size_t i = 0; i < n; i++) {
		double x = p->x0 ? p->x0[i] : 0;
		if (!isfinite(x)) {
			lora_cmaes_free(es);
			return lora_errf(err, LORA_EINVAL, "cmaes: x0[%zu] is not finite", i);
		}
		es->lb[i] = p->lower;
		es->ub[i] = p->upper;
		/* pycma's maxstd_boundrange = 1/3 */
		if (isfinite(p->lower) && isfinite(p->upper))
			es->maxstd[i] = (p->upper - p->lower) / 3;
		/* start inside the box: the transform is the identity there */
		es->x0[i] = es->bounded ? lora_cmaes_bound_transform(x, p->lower, p->upper) : x;
	}
	if (reset_state(es)) {
		lora_cmaes_free(es);
		return lora_errf(err, LORA_ENOMEM, "cmaes: out of memory (n = %zu)", n);
	}
	*out = es;
	return 0;
}

void lora_cmaes_free(struct lora_cmaes *es)
{
	if (!es)
		return;
	free(es->w);
	free(es->x0);
	free(es->lb);
	free(es->ub);
	free(es->maxstd);
	free(es->mean);
	free(es->mean_old);
	free(es->C);
	free(es->B);
	free(es->D);
	free(es->pc);
	free(es->ps);
	free(es->xg);
	free(es->tmp);
	free(es->tmp2);
	free(es->tmp3);
	free(es->tmp4);
	free(es->scratch);
	free(es->work);
	free(es->idx);
	free(es->fs);
	free(es->hbest);
	free(es->hmed);
	free(es);
}

/* ---- eigendecomposition ---- */

/* C = B diag(D²) Bᵀ with LAPACK's dsyev on a symmetrized copy. If C lost
 * positive definiteness (rounding), add the previous smallest eigenvalue to
 * its diagonal and try again, as pycma does. */
static int decompose(struct lora_cmaes *es)
{
	size_t n = es->n;
	double *a = es->work, *ev = es->tmp;
	for (int attempt = 0; attempt < 4; attempt++) {
		for (size_t i = 0; i < n; i++)
			for (size_t j = 0; j < n; j++)
				a[i * n + j] = (es->C[i * n + j] + es->C[j * n + i]) / 2;
		lapack_int info = LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)n, a,
						(lapack_int)n, ev);
		if (info == 0 && ev[0] > 0 && isfinite(ev[n - 1])) {
			memcpy(es->B, a, n * n * sizeof *a);
			for (size_t i = 0; i < n; i++)
				es->D[i] = sqrt(ev[i]);
			es->g_eigen = es->g;
			return 0;
		}
		double add = es->D[0] * es->D[0];
		if (!(add > 0))
			add = 1e-20;
		for (size_t i = 0; i < n; i++)
			es->C[i * n + i] += add;
	}
	return LORA_EINVAL;
}

/* C^{-1/2} v into out (B diag(1/D) Bᵀ v). */
static void invsqrt_mul(const struct lora_cmaes *es, const double *v, double *out, double *t)
{
	size_t n = es->n;
	for (size_t j = 0; j < n; j++) {
		double s = 0;
		for (size_t i = 0; i < n; i++)
			s += es->B[i * n + j] * v[i];
		t[j] = s / es->D[j];
	}
	for (size_t i = 0; i < n; i++) {
		double s = 0;
		for (size_t j = 0; j < n; j++)
			s += es->B[i * n + j] * t[j];
		out[i] = s;
	}
}

int lora_cmaes_ask(struct lora_cmaes *es, double *x)
{
	size_t n = es->n, lam = es->lambda;
	/* lazy update: decompose every 1/((c1 + cmu) n 10) generations */
	if (es->g > es->g_eigen &&
	    (double)(es->g - es->g_eigen) * (es->c1 + es->cmu) * (double)n * 10 >= 1) {
		if (decompose(es) < 0) {
			es->stop = "numerics";
			return LORA_EINVAL;
		}
	}
	double *z = es->tmp;
	for (size_t k = 0; k < lam; k++) {
		for (size_t j = 0; j < n; j++)
			z[j] = es->D[j] * lora_cmaes_rng_normal(&es->rng);
		double *xg = es->xg + k * n;
		for (size_t i = 0; i < n; i++) {
			double s = 0;
			for (size_t j = 0; j < n; j++)
				s += es->B[i * n + j] * z[j];
			xg[i] = es->mean[i] + es->sigma * s;
			x[k * n + i] = es->bounded ? lora_cmaes_bound_transform(xg[i], es->lb[i], es->ub[i])
						   : xg[i];
		}
	}
	es->asked = 1;
	return 0;
}

static int cmp_idx(const void *a, const void *b, void *ctx)
{
	const double *f = ctx;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	double fi = f[i], fj = f[j];
	if (fi < fj)
		return -1;
	if (fi > fj)
		return 1;
	return i < j ? -1 : i > j;	/* stable: ties by index */
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median_of(const double *v, size_t k, double *scratch)
{
	memcpy(scratch, v, k * sizeof *v);
	qsort(scratch, k, sizeof *scratch, cmp_double);
	return k % 2 ? scratch[k / 2] : (scratch[k / 2 - 1] + scratch[k / 2]) / 2;
}

static void check_stop(struct lora_cmaes *es)
{
	size_t n = es->n, lam = es->lambda;
	double N = (double)n;
	/* tolfun: this generation's range and the recent best values' range */
	size_t hwin = 10 + (size_t)ceil(30 * N / (double)lam);
	if (es->hlen >= hwin) {
		double lo = INFINITY, hi = -INFINITY;
		for (size_t i = es->hlen - hwin; i < es->hlen; i++) {
			lo = fmin(lo, es->hbest[i]);
			hi = fmax(hi, es->hbest[i]);
		}
		if (hi - lo < es->tolfun && es->fs[lam - 1] - es->fs[0] < es->tolfun) {
			es->stop = "tolfun";
			return;
		}
	}
	/* tolx: every coordinate's std and p_c component */
	int small = 1;
	for (size_t i = 0; i < n && small; i++) {
		double s = sqrt(es->C[i * n + i]);
		if (fabs(es->pc[i]) > s)
			s = fabs(es->pc[i]);
		if (es->sigma * s >= es->tolx)
			small = 0;
	}
	if (small) {
		es->stop = "tolx";
		return;
	}
	double cond = es->D[n - 1] * es->D[n - 1] / (es->D[0] * es->D[0]);
	if (cond > es->tolcond) {
		es->stop = "condition";
		return;
	}
	if (es->flat > 1) {
		es->stop = "tolflatfitness";
		return;
	}
	/* stagnation: over the last tolstag generations, the median of the most
	 * recent 20% of the best and of the median f values is no better than
	 * the median of the oldest 20% */
	size_t win = (size_t)es->tolstag;
	if (es->hlen > win && win >= 10) {
		size_t k = win / 5;
		double *scr = es->scratch;
		const double *bo = es->hbest + es->hlen - win, *mo = es->hmed + es->hlen - win;
		const double *bn = es->hbest + es->hlen - k, *mn = es->hmed + es->hlen - k;
		int stag = median_of(bn, k, scr) >= median_of(bo, k, scr) &&
			   median_of(mn, k, scr) >= median_of(mo, k, scr);
		if (stag)
			es->stop = "stagnation";
	}
}

int lora_cmaes_tell(struct lora_cmaes *es, const double *f)
{
	if (!es->asked)
		return LORA_EINVAL;
	es->asked = 0;
	size_t n = es->n, lam = es->lambda, mu = es->mu;
	double N = (double)n;
	es->g++;

	/* rank: NaN is the worst value */
	double *fv = es->fs;
	for (size_t k = 0; k < lam; k++) {
		fv[k] = isnan(f[k]) ? INFINITY : f[k];
		es->idx[k] = k;
	}
	qsort_r(es->idx, lam, sizeof *es->idx, cmp_idx, fv);
	double *sorted = es->scratch;
	for (size_t k = 0; k < lam; k++)
		sorted[k] = fv[es->idx[k]];
	memcpy(fv, sorted, lam * sizeof *fv);

	/* history for termination */
	if (es->hlen == es->hcap) {
		size_t cap = es->hcap ? 2 * es->hcap : 256;
		double *hb = realloc(es->hbest, cap * sizeof *hb);
		if (!hb)
			return LORA_ENOMEM;
		es->hbest = hb;
		double *hm = realloc(es->hmed, cap * sizeof *hm);
		if (!hm)
			return LORA_ENOMEM;
		es->hmed = hm;
		es->hcap = cap;
	}
	es->hbest[es->hlen] = fv[0];
	es->hmed[es->hlen] = fv[lam / 2];
	es->hlen++;
	size_t iflat = (size_t)ceil(0.1 + lam / 4.0);
	if (iflat >= lam)
		iflat = lam - 1;
	es->flat = fv[0] == fv[iflat] ? es->flat + 1 : 0;

	/* mean */
	memcpy(es->mean_old, es->mean, n * sizeof *es->mean);
	for (size_t i = 0; i < n; i++) {
		double s = 0;
		for (size_t k = 0; k < mu; k++)
			s += es->w[k] * (es->xg[es->idx[k] * n + i] - es->mean_old[i]);
		es->mean[i] = es->mean_old[i] + s;
	}

	/* p_σ with C^{-1/2} of the sampling distribution */
	double *dm = es->tmp2, *z = es->tmp;
	double *t = es->tmp3, *zz = es->tmp4;
	for (size_t i = 0; i < n; i++)
		dm[i] = (es->mean[i] - es->mean_old[i]) / es->sigma;
	invsqrt_mul(es, dm, z, t);
	double csn = sqrt(es->cs * (2 - es->cs) * es->mueff), psn2 = 0;
	for (size_t i = 0; i < n; i++) {
		es->ps[i] = (1 - es->cs) * es->ps[i] + csn * z[i];
		psn2 += es->ps[i] * es->ps[i];
	}
	/* h_σ: stall the rank-one update while p_σ is long (pycma's form) */
	double corr = 1 - pow(1 - es->cs, 2.0 * (double)es->g);
	int hsig = psn2 / corr / N - 1 < 1 + 4 / (N + 1);
	double ccn = sqrt(es->cc * (2 - es->cc) * es->mueff);
	for (size_t i = 0; i < n; i++)
		es->pc[i] = (1 - es->cc) * es->pc[i] + (hsig ? ccn * dm[i] : 0);

	/* covariance: C ← (1 + c1 δ(h_σ) − c1 − cmu Σw) C + c1 p_c p_cᵀ
	 *                 + cmu Σ w°_k y_k y_kᵀ,
	 * with w°_k = w_k · n / ‖C^{-1/2} y_k‖² for negative weights */
	double c1 = es->c1, cmu = es->cmu, sumw = 0;
	for (size_t k = 0; k < lam; k++)
		sumw += es->w[k];
	double delta = hsig ? 0 : es->cc * (2 - es->cc);
	double decay = 1 + c1 * delta - c1 - cmu * sumw;
	for (size_t i = 0; i < n * n; i++)
		es->C[i] *= decay;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j <= i; j++)
			es->C[i * n + j] += c1 * es->pc[i] * es->pc[j];
	for (size_t k = 0; k < lam; k++) {
		double wk = es->w[k];
		if (wk == 0)
			continue;
		const double *xk = es->xg + es->idx[k] * n;
		for (size_t i = 0; i < n; i++)
			z[i] = (xk[i] - es->mean_old[i]) / es->sigma;
		if (wk < 0) {
			invsqrt_mul(es, z, zz, t);
			double m2 = 0;
			for (size_t i = 0; i < n; i++)
				m2 += zz[i] * zz[i];
			double nm = sqrt(m2) + 1e-9;
			wk *= N / (nm * nm);
		}
		double a = cmu * wk;
		for (size_t i = 0; i < n; i++)
			for (size_t j = 0; j <= i; j++)
				es->C[i * n + j] += a * z[i] * z[j];
	}
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < i; j++)
			es->C[j * n + i] = es->C[i * n + j];

	/* CSA, the change of log σ clipped to ±1 as in pycma */
	double s = es->cs / es->damps * (sqrt(psn2) / es->chin - 1);
	if (s > 1)
		s = 1;
	if (s < -1)
		s = -1;
	es->sigma *= exp(s);
	/* pycma's maxstd_boundrange: no coordinate std above a third of the box */
	if (es->bounded) {
		for (size_t i = 0; i < n; i++) {
			double sd = es->sigma * sqrt(es->C[i * n + i]);
			if (es->maxstd[i] > 0 && sd > es->maxstd[i])
				es->sigma = es->maxstd[i] / sqrt(es->C[i * n + i]);
		}
	}
	check_stop(es);
	return 0;
}

const char *lora_cmaes_stop(const struct lora_cmaes *es)
{
	return es->stop;
}

int lora_cmaes_restart(struct lora_cmaes *es, double factor)
{
	double lam = floor((double)es->lambda * factor + 0.5);
	if (lam < 2)
		lam = 2;
	if (lam > 1000000)
		lam = 1000000;
	es->lambda = (size_t)lam;
	if (alloc_lambda(es))
		return LORA_ENOMEM;
	return reset_state(es);
}

size_t lora_cmaes_popsize(const struct lora_cmaes *es)
{
	return es->lambda;
}

size_t lora_cmaes_dim(const struct lora_cmaes *es)
{
	return es->n;
}

double lora_cmaes_sigma(const struct lora_cmaes *es)
{
	return es->sigma;
}

long lora_cmaes_generation(const struct lora_cmaes *es)
{
	return es->g;
}

void lora_cmaes_mean(const struct lora_cmaes *es, double *x)
{
	for (size_t i = 0; i < es->n; i++)
		x[i] = es->bounded ? lora_cmaes_bound_transform(es->mean[i], es->lb[i], es->ub[i])
				   : es->mean[i];
}

double lora_cmaes_axis_ratio(const struct lora_cmaes *es)
{
	return es->D[es->n - 1] / es->D[0];
}
