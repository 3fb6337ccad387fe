/*
 * test_cmaes — lib/cmaes against pycma 4.4.0's reference evaluation counts
 * (issue 5: medians over 11 seeds of the evaluations until f < 1e-8 with
 * x0 ~ U[-3,3]^n, σ0 = 1; Rosenbrock x0 = 0, σ0 = 0.5), the bounded shifted
 * sphere, bounds, determinism, the bound transform and restarts.
 * Target: our median within 1.2× of pycma's and 11/11 successes.
 * Also lib/optim in the LoraHub regime (n = 20, budget 40, x0 = 0, box ±1.5,
 * f = ‖w − w*‖²/n + 0.05 mean|w|, w* half zeros and half U[−1, 1], medians
 * over 21 w*; pycma σ0 = 0.3: 0.103, nevergrad's COBYLA: 0.045).
 * OpenBLAS runs single-threaded here, as in lora-cmaes: its threaded dsyev
 * is slower on these small matrices and rounds differently, which changes
 * the sampled candidates (runs are reproducible for a fixed thread count).
 */
#include "check.h"
#include "cmaes.h"
#include "optim.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>

static double f_sphere(const double *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += x[i] * x[i];
	return s;
}

/* pycma's ff.elli: condition 1e6, axis scales 1e6^(i/(n-1)) */
static double f_elli(const double *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += pow(1e6, n > 1 ? (double)i / (double)(n - 1) : 0) * x[i] * x[i];
	return s;
}

static double f_rosen(const double *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i + 1 < n; i++) {
		double a = x[i + 1] - x[i] * x[i], b = 1 - x[i];
		s += 100 * a * a + b * b;
	}
	return s;
}

/* optimum 1.4 in every coordinate, inside the box ±1.5 */
static double f_shifted(const double *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (x[i] - 1.4) * (x[i] - 1.4);
	return s;
}

typedef double (*fn_t)(const double *, size_t);

static int restarts_used;

/* Evaluations until f < 1e-8 (counting every candidate), or -1 on failure
 * within maxevals. bounds_ok is cleared if a candidate leaves [lo, hi]. A
 * run that terminates without success (Rosenbrock's local minimum f ≈ 3.99
 * catches a few percent of runs, pycma's too) gets up to two IPOP restarts,
 * as lora-cmaes --restarts does; their evaluations count. */
static long run(fn_t f, size_t n, const double *x0, double sigma0, double lo, double hi,
		uint64_t seed, int active, long maxevals, int *bounds_ok)
{
	int restarts = 0;
	struct lora_cmaes_params p = lora_cmaes_default_params(n);
	p.x0 = x0;
	p.sigma0 = sigma0;
	p.seed = seed;
	p.lower = lo;
	p.upper = hi;
	p.active = active;
	struct lora_cmaes *es;
	struct lora_err err;
	if (lora_cmaes_new(&p, &es, &err))
		return -2;
	size_t lam = lora_cmaes_popsize(es);
	double *X = malloc(4 * lam * n * sizeof *X), *F = malloc(4 * lam * sizeof *F);
	long evals = 0, hit = -1;
	while (evals < maxevals && hit < 0) {
		lam = lora_cmaes_popsize(es);
		if (lora_cmaes_ask(es, X))
			break;
		for (size_t k = 0; k < lam; k++) {
			for (size_t i = 0; i < n; i++)
				if (!(X[k * n + i] >= lo && X[k * n + i] <= hi))
					*bounds_ok = 0;
			F[k] = f(X + k * n, n);
			evals++;
			if (hit < 0 && F[k] < 1e-8)
				hit = evals;
		}
		lora_cmaes_tell(es, F);
		if (lora_cmaes_stop(es) && hit < 0) {
			if (restarts == 2 || lora_cmaes_restart(es, 2))
				break;
			restarts++;
			restarts_used++;
		}
	}
	free(X);
	free(F);
	lora_cmaes_free(es);
	return hit;
}

static int cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	return x < y ? -1 : x > y;
}

/* Median over 11 seeds, asserting 11/11 and median ≤ 1.2 × reference. */
static void table_cell(const char *name, fn_t f, size_t n, int rosen, long ref)
{
	long counts[11];
	int ok = 0, bounds = 1;
	restarts_used = 0;
	for (int s = 0; s < 11; s++) {
		double x0[64];
		struct lora_cmaes_rng r;
		lora_cmaes_rng_seed(&r, 1000 + (uint64_t)s);
		for (size_t i = 0; i < n; i++)
			x0[i] = rosen ? 0 : 6 * lora_cmaes_rng_uniform(&r) - 3;
		counts[s] = run(f, n, x0, rosen ? 0.5 : 1, -INFINITY, INFINITY, 1 + (uint64_t)s, 1,
				40 * ref, &bounds);
		if (counts[s] > 0)
			ok++;
		else
			counts[s] = 1000000000;
	}
	qsort(counts, 11, sizeof counts[0], cmp_long);
	check(ok == 11, "%s n=%zu: %d/11 runs reach f < 1e-8 (%d restarts)", name, n, ok,
	      restarts_used);
	check(counts[5] <= 1.2 * (double)ref,
	      "%s n=%zu: median %ld evaluations, pycma %ld (ratio %.2f, limit 1.2)", name, n,
	      counts[5], ref, (double)counts[5] / (double)ref);
}

/* ---- the LoraHub regime through lib/optim ---- */

static double regime_wstar[20];
static int regime_out_of_box;

static int regime_f(void *ctx, const struct lora_optim_batch *b, double *f)
{
	(void)ctx;
	for (size_t k = 0; k < b->k; k++) {
		const double *x = b->x + k * 20;
		double s = 0, a = 0;
		for (int i = 0; i < 20; i++) {
			s += (x[i] - regime_wstar[i]) * (x[i] - regime_wstar[i]);
			a += fabs(x[i]);
			if (!(x[i] >= -1.5 && x[i] <= 1.5))
				regime_out_of_box = 1;
		}
		f[k] = s / 20 + 0.05 * a / 20;
	}
	return 0;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median best f over 101 w* (seeds 300..400; the issue used 21, whose
 * median moves by ±0.01 with the draw) after 40 evaluations. */
static double regime_median(enum lora_optim_method m, double sigma0, double *f0_median)
{
	double best[101], f0[101];
	for (int t = 0; t < 101; t++) {
		struct lora_cmaes_rng r;
		lora_cmaes_rng_seed(&r, 300 + (uint64_t)t);
		for (int i = 0; i < 20; i++)
			regime_wstar[i] = i < 10 ? 0 : 2 * lora_cmaes_rng_uniform(&r) - 1;
		struct lora_optim_params p = lora_optim_default_params(20);
		p.method = m;
		p.sigma0 = sigma0;
		p.seed = 1 + (uint64_t)t;
		double bx[20], zero[20] = {0};
		struct lora_optim_result res;
		if (lora_optim_run(&p, regime_f, NULL, bx, &res, NULL) < 0 || res.evals != 40)
			return NAN;
		best[t] = res.f_best;
		struct lora_optim_batch b = {.k = 1, .x = zero};
		regime_f(NULL, &b, &f0[t]);
	}
	qsort(best, 101, sizeof best[0], cmp_dbl);
	qsort(f0, 101, sizeof f0[0], cmp_dbl);
	if (f0_median)
		*f0_median = f0[50];
	return best[50];
}

/* A callback that fails on its third batch. */
static int failing_f(void *ctx, const struct lora_optim_batch *b, double *f)
{
	int *calls = ctx;
	if (++*calls == 3)
		return LORA_EPIPE;
	for (size_t k = 0; k < b->k; k++)
		f[k] = b->first_eval + (long)k == 5 ? NAN : (double)(b->first_eval + (long)k);
	return 0;
}

static void optim_checks(void)
{
	double f0;
	double cob = regime_median(LORA_OPTIM_COBYLA, 0.3, &f0);
	check(cob <= 0.05, "regime: default method cobyla (step 0.3) median %.4f <= 0.05 "
	      "(f(0) median %.4f; nevergrad COBYLA 0.045)", cob, f0);
	double cm = regime_median(LORA_OPTIM_CMAES, 0.3, NULL);
	check(cm <= 0.103, "regime: cmaes sigma0 0.3 median %.4f <= pycma's 0.103", cm);
	double cm5 = regime_median(LORA_OPTIM_CMAES, 0.5, NULL);
	check(cm5 <= 0.184, "regime: cmaes sigma0 0.5 median %.4f <= pycma's 0.184", cm5);
	double nm = regime_median(LORA_OPTIM_NELDERMEAD, 0.5, NULL);
	check(nm <= 0.076 * 1.2, "regime: neldermead (step 0.5) median %.4f (nevergrad 0.076)", nm);
	double bq = regime_median(LORA_OPTIM_BOBYQA, 0.5, NULL);
	check(isfinite(bq) && bq < f0, "regime: bobyqa median %.4f below f(0) %.4f", bq, f0);
	check(!regime_out_of_box, "regime: no method left the box [-1.5, 1.5]");

	/* determinism of the whole driver */
	double a1 = regime_median(LORA_OPTIM_CMAES, 0.3, NULL);
	check(a1 == cm, "regime: cmaes is deterministic (%.17g = %.17g)", a1, cm);

	/* a failing callback aborts with its code; NaN counted */
	int calls = 0;
	struct lora_optim_params p = lora_optim_default_params(3);
	p.method = LORA_OPTIM_CMAES;
	double bx[3];
	struct lora_optim_result res;
	int rc = lora_optim_run(&p, failing_f, &calls, bx, &res, NULL);
	check(rc == LORA_EPIPE, "callback error aborts the run (%s)", lora_err_name(rc));
	calls = -100;
	p.budget = 12;
	rc = lora_optim_run(&p, failing_f, &calls, bx, &res, NULL);
	check(rc == 0 && res.nonfinite == 1 && res.evals == 12 && res.f_best == 0 &&
		      res.best_eval == 0,
	      "budget 12: %ld evals, 1 NaN counted, best is x0", res.evals);
	enum lora_optim_method m;
	check(lora_optim_method_parse("bobyqa", &m) == 0 && m == LORA_OPTIM_BOBYQA &&
		      lora_optim_method_parse("nope", &m) == LORA_EINVAL,
	      "method names parse");
}

int main(int argc, char **argv)
{
	/* the whole table takes about 2 s in a release build; LORA_QUICK=1
	 * skips n = 20 of ellipsoid and Rosenbrock */
	const char *quick = getenv("LORA_QUICK");
	(void)argc;
	(void)argv;
	openblas_set_num_threads(1);

	/* ---- parameters for n = 20 as pycma prints them (CMAParameters doc) */
	{
		struct lora_cmaes_params p = lora_cmaes_default_params(20);
		struct lora_cmaes *es;
		check(lora_cmaes_new(&p, &es, NULL) == 0 && lora_cmaes_popsize(es) == 12,
		      "n=20: λ = 12 (4 + ⌊3 ln 20⌋)");
		lora_cmaes_free(es);
		p = lora_cmaes_default_params(2);
		lora_cmaes_new(&p, &es, NULL);
		check(lora_cmaes_popsize(es) == 6, "n=2: λ = 6");
		lora_cmaes_free(es);
		p.sigma0 = -1;
		struct lora_err err;
		check(lora_cmaes_new(&p, &es, &err) == LORA_EINVAL && strstr(err.msg, "sigma0"),
		      "negative sigma0 refused: %s", err.msg);
	}

	/* ---- bound transform (pycma doctest values) */
	check(fabs(lora_cmaes_bound_transform(0, 0, INFINITY) - 0.0125) < 1e-12,
	      "transform(0) in [0, inf) = 0.0125");
	check(fabs(lora_cmaes_bound_transform(-1, 0, INFINITY) - 0.9) < 1e-12,
	      "transform(-1) in [0, inf) = 0.9 (reflected)");
	check(lora_cmaes_bound_transform(0.7, -1.5, 1.5) == 0.7, "identity inside the box");
	{
		struct lora_cmaes_rng r;
		lora_cmaes_rng_seed(&r, 7);
		int inside = 1;
		for (int i = 0; i < 100000; i++) {
			double x = (lora_cmaes_rng_uniform(&r) - 0.5) * 1e3;
			double y = lora_cmaes_bound_transform(x, -1.5, 1.5);
			if (!(y >= -1.5 && y <= 1.5))
				inside = 0;
		}
		check(inside, "transform maps 1e5 values in [-500, 500] into [-1.5, 1.5]");
		/* continuity at the edges of the linear part and periodicity */
		double a = 1.5 - 0.125;
		check(fabs(lora_cmaes_bound_transform(a + 1e-9, -1.5, 1.5) - a) < 1e-8,
		      "transform is continuous where the quadratic part starts");
	}

	/* ---- determinism */
	{
		double x0[5] = {1, 2, -1, 0.5, 0};
		int b = 1;
		long a1 = run(f_elli, 5, x0, 1, -INFINITY, INFINITY, 42, 1, 100000, &b);
		long a2 = run(f_elli, 5, x0, 1, -INFINITY, INFINITY, 42, 1, 100000, &b);
		long a3 = run(f_elli, 5, x0, 1, -INFINITY, INFINITY, 43, 1, 100000, &b);
		check(a1 == a2 && a1 > 0, "same seed, same run (%ld = %ld evaluations)", a1, a2);
		check(a1 != a3, "another seed, another run (%ld vs %ld)", a1, a3);
	}

	/* ---- the reference table (pycma 4.4.0 medians, issue 5) */
	static const struct {
		const char *name;
		fn_t f;
		int rosen;
		long ref[4];
	} rows[] = {
		{"sphere", f_sphere, 0, {219, 682, 1443, 2632}},
		{"ellipsoid", f_elli, 0, {484, 1499, 3991, 12631}},
		{"rosenbrock", f_rosen, 1, {451, 1605, 5048, 16059}},
	};
	static const size_t dims[4] = {2, 5, 10, 20};
	for (size_t r = 0; r < 3; r++)
		for (size_t d = 0; d < 4; d++) {
			if (quick && d == 3 && r > 0) {
				check_skip("%s n=20 (LORA_QUICK set)", rows[r].name);
				continue;
			}
			table_cell(rows[r].name, rows[r].f, dims[d], rows[r].rosen, rows[r].ref[d]);
		}

	/* ---- the active update matters: without it the ellipsoid n = 20
	 * takes about 17500 evaluations with pycma (issue 5), 12631 with it */
	if (!quick) {
		long counts[5];
		int bounds = 1;
		for (int s = 0; s < 5; s++) {
			double x0[20];
			struct lora_cmaes_rng r;
			lora_cmaes_rng_seed(&r, 1000 + (uint64_t)s);
			for (size_t i = 0; i < 20; i++)
				x0[i] = 6 * lora_cmaes_rng_uniform(&r) - 3;
			counts[s] = run(f_elli, 20, x0, 1, -INFINITY, INFINITY, 1 + (uint64_t)s, 0,
					200000, &bounds);
			if (counts[s] < 0)
				counts[s] = 1000000000;
		}
		qsort(counts, 5, sizeof counts[0], cmp_long);
		check(counts[2] > 12631 * 1.2 && counts[2] <= 17500 * 1.2,
		      "ellipsoid n=20 without active CMA: median %ld over 5 seeds (pycma about 17500)",
		      counts[2]);
	}

	/* ---- bounded shifted sphere, n = 20, box ±1.5 (pycma 2826) */
	{
		long counts[11];
		int ok = 0, bounds = 1;
		for (int s = 0; s < 11; s++) {
			double x0[20];
			struct lora_cmaes_rng r;
			lora_cmaes_rng_seed(&r, 2000 + (uint64_t)s);
			for (size_t i = 0; i < 20; i++)
				x0[i] = 3 * lora_cmaes_rng_uniform(&r) - 1.5;
			counts[s] = run(f_shifted, 20, x0, 1, -1.5, 1.5, 1 + (uint64_t)s, 1, 100000,
					&bounds);
			if (counts[s] > 0)
				ok++;
			else
				counts[s] = 1000000000;
		}
		qsort(counts, 11, sizeof counts[0], cmp_long);
		check(ok == 11, "bounded shifted sphere n=20: %d/11 reach 1e-8", ok);
		check(counts[5] <= 1.2 * 2826, "bounded shifted sphere n=20: median %ld, pycma 2826",
		      counts[5]);
		check(bounds, "every candidate stayed inside [-1.5, 1.5]");
	}

	optim_checks();

	/* ---- restart doubles λ */
	{
		struct lora_cmaes_params p = lora_cmaes_default_params(10);
		struct lora_cmaes *es;
		lora_cmaes_new(&p, &es, NULL);
		size_t l0 = lora_cmaes_popsize(es);
		int rc = lora_cmaes_restart(es, 2);
		size_t l1 = lora_cmaes_popsize(es);
		check(rc == 0 && l1 == 2 * l0 && lora_cmaes_sigma(es) == 1 &&
			      lora_cmaes_generation(es) == 0,
		      "IPOP restart: λ %zu -> %zu, σ and generation reset", l0, l1);
		lora_cmaes_free(es);
	}

	/* ---- termination on a flat and on a solved problem */
	{
		struct lora_cmaes_params p = lora_cmaes_default_params(4);
		struct lora_cmaes *es;
		lora_cmaes_new(&p, &es, NULL);
		double X[8 * 4], F[8];
		int gens = 0;
		while (!lora_cmaes_stop(es) && gens < 100000) {
			lora_cmaes_ask(es, X);
			for (size_t k = 0; k < lora_cmaes_popsize(es); k++)
				F[k] = f_sphere(X + k * 4, 4);
			lora_cmaes_tell(es, F);
			gens++;
		}
		const char *why = lora_cmaes_stop(es);
		check(why && (!strcmp(why, "tolfun") || !strcmp(why, "tolx")),
		      "sphere stops by tolfun/tolx (%s after %d generations)", why ? why : "none", gens);
		lora_cmaes_free(es);
		lora_cmaes_new(&p, &es, NULL);
		gens = 0;
		while (!lora_cmaes_stop(es) && gens < 1000) {
			lora_cmaes_ask(es, X);
			for (size_t k = 0; k < lora_cmaes_popsize(es); k++)
				F[k] = 1;
			lora_cmaes_tell(es, F);
			gens++;
		}
		why = lora_cmaes_stop(es);
		check(why && !strcmp(why, "tolflatfitness"), "flat function stops (%s after %d)",
		      why ? why : "none", gens);
		lora_cmaes_free(es);
	}
	return check_done();
}
