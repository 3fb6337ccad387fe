/*
 * optim — one interface over the derivative-free minimizers lora-cmaes
 * offers: CMA-ES (lib/cmaes, with IPOP restarts) and NLopt's COBYLA, BOBYQA
 * and Nelder–Mead, all within a box, from a start point, for a budget of
 * evaluations.
 *
 * The caller supplies the objective as a batch callback: CMA-ES asks for a
 * whole generation at once (so a coprocess can score λ candidates in one
 * round trip); NLopt's methods ask for one point at a time, synchronously
 * from inside nlopt_optimize. Non-finite f values are counted and treated
 * as the worst value (CMA-ES ranks them last; NLopt methods see the worst
 * finite value seen so far, or 1e10 before any).
 *
 * CMA-ES evaluates x0 first (free information at tiny budgets) and, when the
 * budget ends inside a generation, spends that generation's first remaining
 * evaluation on the distribution's mean (pycma's eval_final_mean idea);
 * NLopt's methods evaluate x0 first by themselves.
 *
 * Determinism: the sequence of candidates is a function of the parameters
 * and the f values returned, so replaying recorded f values reproduces a
 * run exactly (lora-cmaes --resume).
 */
#ifndef LORA_OPTIM_H
#define LORA_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

enum lora_optim_method {
	LORA_OPTIM_CMAES,
	LORA_OPTIM_COBYLA,
	LORA_OPTIM_BOBYQA,
	LORA_OPTIM_NELDERMEAD,
};

/* "cmaes", "cobyla", "bobyqa", "neldermead" -> method; 0 or LORA_EINVAL. */
int lora_optim_method_parse(const char *s, enum lora_optim_method *out);
const char *lora_optim_method_name(enum lora_optim_method m);

struct lora_optim_params {
	enum lora_optim_method method;
	size_t n;		/* dimension ≥ 1 */
	const double *x0;	/* start (n values) or NULL for zeros; clipped into the box */
	double lower, upper;	/* box for every coordinate (finite for bobyqa) */
	double sigma0;		/* CMA-ES initial σ / NLopt initial step */
	int popsize;		/* CMA-ES λ, 0 = default */
	int restarts;		/* CMA-ES IPOP restarts (λ doubles each time) */
	long budget;		/* evaluations, x0's included, ≥ 1 */
	uint64_t seed;
};

struct lora_optim_params lora_optim_default_params(size_t n);

/* One batch of candidates to evaluate: k points, row by row (k × n), all in
 * the box. generation is 0 for x0, then counts CMA-ES generations (across
 * restarts) or NLopt evaluations; first_eval is the 0-based index of the
 * batch's first evaluation; sigma is CMA-ES's step size (NaN for NLopt);
 * popsize and restarts are CMA-ES's current λ and restarts so far (with
 * stop_reason the criterion that ended the previous run), 1 and 0 for NLopt. */
struct lora_optim_batch {
	long generation;
	long first_eval;
	size_t k;
	const double *x;
	double sigma;
	size_t popsize;
	int restarts;
	const char *stop_reason;	/* NULL before the first restart */
};

/* Fill f[0..k) with the objective values. Return 0, or a negative code to
 * abort the run (lora_optim_run returns that code). */
typedef int (*lora_optim_eval_fn)(void *ctx, const struct lora_optim_batch *b, double *f);

struct lora_optim_result {
	double f_best;		/* +inf if no finite value was seen */
	long evals;
	long best_eval;		/* index of the best evaluation */
	long generations;
	int restarts;		/* CMA-ES restarts done */
	long nonfinite;		/* NaN/Inf values returned */
	const char *stop;	/* "budget", CMA-ES termination, or NLopt's reason */
};

/* Minimize. best_x (n values) receives the best point evaluated (x0 if
 * nothing was better or nothing was finite). Returns 0, a negative code
 * from the callback (with err left as the callback filled it), or
 * LORA_EINVAL for bad parameters. */
int lora_optim_run(const struct lora_optim_params *p, lora_optim_eval_fn fn, void *ctx,
		   double *best_x, struct lora_optim_result *res, struct lora_err *err);

#endif
