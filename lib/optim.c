/*
 * optim — CMA-ES and NLopt minimizers behind one batch-callback interface;
 * see optim.h.
 */
#include "optim.h"

#include <math.h>
#include <nlopt.h>
#include <stdlib.h>
#include <string.h>

#include "cmaes.h"

static const char *const names[] = {"cmaes", "cobyla", "bobyqa", "neldermead"};

int lora_optim_method_parse(const char *s, enum lora_optim_method *out)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, names[i])) {
			*out = (enum lora_optim_method)i;
			return 0;
		}
	if (!strcmp(s, "nelder-mead") || !strcmp(s, "nm")) {
		*out = LORA_OPTIM_NELDERMEAD;
		return 0;
	}
	return LORA_EINVAL;
}

const char *lora_optim_method_name(enum lora_optim_method m)
{
	return (unsigned)m < 4 ? names[m] : "?";
}

struct lora_optim_params lora_optim_default_params(size_t n)
{
	struct lora_optim_params p = {
		.method = LORA_OPTIM_COBYLA, .n = n, .x0 = NULL, .lower = -1.5, .upper = 1.5,
		.sigma0 = 0.3, .popsize = 0, .restarts = 0, .budget = 40, .seed = 1,
	};
	return p;
}

struct run {
	const struct lora_optim_params *p;
	lora_optim_eval_fn fn;
	void *ctx;
	double *best_x;
	struct lora_optim_result *res;
	int rc;			/* callback failure */
	size_t popsize;
	const char *last_stop;
	double worst;		/* worst finite value so far */
	long generation;
};

/* Evaluate a batch through the callback and keep the books: best point,
 * evaluation count, non-finite values (mapped to the given replacement). */
static int eval_batch(struct run *r, const double *x, size_t k, double sigma, double *f,
		      double nonfinite_as)
{
	size_t n = r->p->n;
	struct lora_optim_batch b = {.generation = r->generation, .first_eval = r->res->evals,
				     .k = k, .x = x, .sigma = sigma, .popsize = r->popsize ? r->popsize : 1,
				     .restarts = r->res->restarts, .stop_reason = r->last_stop};
	int rc = r->fn(r->ctx, &b, f);
	if (rc < 0) {
		r->rc = rc;
		return rc;
	}
	for (size_t i = 0; i < k; i++) {
		if (!isfinite(f[i])) {
			r->res->nonfinite++;
			f[i] = nonfinite_as;
		} else {
			if (f[i] > r->worst || isnan(r->worst))
				r->worst = f[i];
			if (f[i] < r->res->f_best) {
				r->res->f_best = f[i];
				r->res->best_eval = r->res->evals;
				memcpy(r->best_x, x + i * n, n * sizeof *x);
			}
		}
		r->res->evals++;
	}
	return 0;
}

static int run_cmaes(struct run *r, const double *x0, struct lora_err *err)
{
	const struct lora_optim_params *p = r->p;
	size_t n = p->n;
	double f0;
	int rc = eval_batch(r, x0, 1, p->sigma0, &f0, INFINITY);
	if (rc < 0)
		return rc;
	r->generation++;
	struct lora_cmaes_params cp = lora_cmaes_default_params(n);
	cp.x0 = x0;
	cp.sigma0 = p->sigma0;
	cp.popsize = p->popsize;
	cp.lower = p->lower;
	cp.upper = p->upper;
	cp.seed = p->seed;
	struct lora_cmaes *es;
	rc = lora_cmaes_new(&cp, &es, err);
	if (rc < 0)
		return rc;
	double *X = NULL, *F = NULL;
	size_t cap = 0;
	r->res->stop = "budget";
	while (r->res->evals < p->budget) {
		size_t lam = lora_cmaes_popsize(es);
		if (lam > cap) {
			free(X);
			free(F);
			X = malloc(lam * n * sizeof *X);
			F = malloc(lam * sizeof *F);
			cap = lam;
			if (!X || !F) {
				rc = lora_errf(err, LORA_ENOMEM, "out of memory (population %zu)", lam);
				break;
			}
		}
		rc = lora_cmaes_ask(es, X);
		if (rc < 0) {
			lora_errf(err, rc, "cmaes: the covariance matrix broke down numerically");
			break;
		}
		long left = p->budget - r->res->evals;
		size_t k = (long)lam < left ? lam : (size_t)left;
		/* the budget ends inside this generation: spend its first
		 * evaluation on the distribution's mean, the recombination of the
		 * best so far (pycma's eval_final_mean) */
		if (k < lam && r->generation > 1)
			lora_cmaes_mean(es, X);
		double sigma = lora_cmaes_sigma(es);
		r->popsize = lam;
		rc = eval_batch(r, X, k, sigma, F, INFINITY);
		if (rc < 0)
			break;
		r->generation++;
		if (k < lam)
			break;	/* budget spent mid-generation */
		lora_cmaes_tell(es, F);
		const char *why = lora_cmaes_stop(es);
		if (why) {
			if (r->res->restarts >= p->restarts) {
				r->res->stop = why;
				break;
			}
			r->last_stop = why;
			if (lora_cmaes_restart(es, 2) < 0) {
				rc = lora_errf(err, LORA_ENOMEM, "out of memory restarting CMA-ES");
				break;
			}
			r->res->restarts++;
		}
	}
	free(X);
	free(F);
	lora_cmaes_free(es);
	return rc < 0 ? rc : 0;
}

/* ---- NLopt ---- */

struct nl {
	struct run *r;
	nlopt_opt opt;
};

static double nl_objective(unsigned n, const double *x, double *grad, void *data)
{
	struct nl *s = data;
	struct run *r = s->r;
	(void)n;
	(void)grad;
	if (r->rc < 0 || r->res->evals >= r->p->budget) {
		nlopt_force_stop(s->opt);
		return HUGE_VAL;
	}
	/* NLopt may probe exactly on the bounds; keep candidates in the box */
	double *xc = malloc(r->p->n * sizeof *xc);
	if (!xc) {
		r->rc = LORA_ENOMEM;
		nlopt_force_stop(s->opt);
		return HUGE_VAL;
	}
	for (size_t i = 0; i < r->p->n; i++)
		xc[i] = fmin(fmax(x[i], r->p->lower), r->p->upper);
	double worst = isfinite(r->worst) ? r->worst : 1e10;
	double f;
	int rc = eval_batch(r, xc, 1, NAN, &f, worst);
	free(xc);
	r->generation++;
	if (rc < 0) {
		nlopt_force_stop(s->opt);
		return HUGE_VAL;
	}
	if (r->res->evals >= r->p->budget)
		nlopt_force_stop(s->opt);
	return f;
}

static const char *nl_reason(nlopt_result res)
{
	switch (res) {
	case NLOPT_SUCCESS: return "success";
	case NLOPT_STOPVAL_REACHED: return "stopval";
	case NLOPT_FTOL_REACHED: return "ftol";
	case NLOPT_XTOL_REACHED: return "xtol";
	case NLOPT_MAXEVAL_REACHED: return "budget";
	case NLOPT_MAXTIME_REACHED: return "maxtime";
	case NLOPT_ROUNDOFF_LIMITED: return "roundoff";
	case NLOPT_FORCED_STOP: return "budget";
	default: return "failure";
	}
}

static int run_nlopt(struct run *r, const double *x0, struct lora_err *err)
{
	const struct lora_optim_params *p = r->p;
	nlopt_algorithm alg = p->method == LORA_OPTIM_COBYLA ? NLOPT_LN_COBYLA
			      : p->method == LORA_OPTIM_BOBYQA ? NLOPT_LN_BOBYQA
							       : NLOPT_LN_NELDERMEAD;
	nlopt_srand(p->seed);
	nlopt_opt opt = nlopt_create(alg, (unsigned)p->n);
	if (!opt)
		return lora_errf(err, LORA_ENOMEM, "cannot create the NLopt %s optimizer",
				 lora_optim_method_name(p->method));
	struct nl s = {.r = r, .opt = opt};
	if (isfinite(p->lower))
		nlopt_set_lower_bounds1(opt, p->lower);
	if (isfinite(p->upper))
		nlopt_set_upper_bounds1(opt, p->upper);
	nlopt_set_min_objective(opt, nl_objective, &s);
	nlopt_set_maxeval(opt, (int)(p->budget > 2000000000 ? 2000000000 : p->budget));
	nlopt_set_initial_step1(opt, p->sigma0);
	nlopt_set_xtol_abs1(opt, 1e-12);
	double *x = malloc(p->n * sizeof *x);
	if (!x) {
		nlopt_destroy(opt);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	memcpy(x, x0, p->n * sizeof *x);
	double fmin_;
	nlopt_result res = nlopt_optimize(opt, x, &fmin_);
	free(x);
	nlopt_destroy(opt);
	if (r->rc < 0)
		return r->rc;
	if (res == NLOPT_INVALID_ARGS)
		return lora_errf(err, LORA_EINVAL, "NLopt %s refused its arguments (bounds, start, step)",
				 lora_optim_method_name(p->method));
	if (res == NLOPT_OUT_OF_MEMORY)
		return lora_errf(err, LORA_ENOMEM, "NLopt ran out of memory");
	r->res->stop = r->res->evals >= p->budget ? "budget" : nl_reason(res);
	return 0;
}

int lora_optim_run(const struct lora_optim_params *p, lora_optim_eval_fn fn, void *ctx,
		   double *best_x, struct lora_optim_result *res, struct lora_err *err)
{
	memset(res, 0, sizeof *res);
	res->f_best = INFINITY;
	res->best_eval = -1;
	res->stop = "budget";
	if (p->n == 0)
		return lora_errf(err, LORA_EINVAL, "nothing to optimize: the pool is empty");
	if (p->budget < 1)
		return lora_errf(err, LORA_EINVAL, "the budget must be at least 1 evaluation");
	if (!(p->lower < p->upper))
		return lora_errf(err, LORA_EINVAL, "lower bound %g is not below upper bound %g",
				 p->lower, p->upper);
	if (!(p->sigma0 > 0) || !isfinite(p->sigma0))
		return lora_errf(err, LORA_EINVAL, "sigma0 must be positive, got %g", p->sigma0);
	if (p->method == LORA_OPTIM_BOBYQA && (!isfinite(p->lower) || !isfinite(p->upper)))
		return lora_errf(err, LORA_EINVAL, "bobyqa needs finite bounds");
	double *x0 = malloc(p->n * sizeof *x0);
	if (!x0)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	for (size_t i = 0; i < p->n; i++) {
		double v = p->x0 ? p->x0[i] : 0;
		x0[i] = fmin(fmax(v, p->lower), p->upper);
	}
	memcpy(best_x, x0, p->n * sizeof *x0);
	struct run r = {.p = p, .fn = fn, .ctx = ctx, .best_x = best_x, .res = res, .worst = NAN};
	int rc = p->method == LORA_OPTIM_CMAES ? run_cmaes(&r, x0, err) : run_nlopt(&r, x0, err);
	res->generations = r.generation;
	free(x0);
	return rc;
}
