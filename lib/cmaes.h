/*
 * cmaes — ask/tell CMA-ES (Hansen, "The CMA Evolution Strategy: A
 * Tutorial", arXiv:1604.00772) with pycma 4.x default parameters:
 *   λ = 4 + ⌊3 ln n⌋, μ = ⌊λ/2⌋, log-linear positive weights, active
 *   (negative) weights for the covariance update, CSA step size with the h_σ
 *   stall, c_c, c_1, c_μ, c_σ, d_σ by the standard formulas, lazy
 *   eigendecomposition (LAPACKE dsyev), and pycma's BoundTransform: a
 *   coordinate-wise map that is the identity inside the box (away from a
 *   margin of about 5% of 1+|bound|), quadratic near the edges and reflective
 *   beyond; the distribution is updated from the untransformed samples.
 * Termination: tolfun, tolx, condition number, stagnation, flat fitness
 * (pycma's defaults). IPOP restarts are lora_cmaes_restart().
 *
 * Determinism: the state is a function of (params, the sequence of f values
 * told); the random numbers come from an internal xoshiro256** generator
 * seeded with params.seed, so replaying recorded f values reproduces a run
 * bit for bit (lora-cmaes --resume relies on it).
 * Limits: n ≤ 100000 (the covariance is dense, n² doubles); λ ≤ 1e6.
 */
#ifndef LORA_CMAES_H
#define LORA_CMAES_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct lora_cmaes_params {
	size_t n;		/* dimension, ≥ 1 */
	const double *x0;	/* start (n values, copied), or NULL for zeros */
	double sigma0;		/* initial step size, > 0 */
	int popsize;		/* λ; 0 = 4 + ⌊3 ln n⌋ */
	double lower, upper;	/* box for every coordinate; ±INFINITY = none */
	uint64_t seed;
	int active;		/* 1 (default): active covariance update */
	double tolfun;		/* 1e-11 */
	double tolx;		/* 1e-11 */
	double tolcondition;	/* 1e14 */
	int tolstagnation;	/* generations; 0 = ⌊100 + 100 n^1.5 / λ⌋ */
};

/* Defaults for dimension n: σ0 = 1, no bounds, seed 1. */
struct lora_cmaes_params lora_cmaes_default_params(size_t n);

struct lora_cmaes;

/* Create a search state (copies everything it needs from p). Returns 0, or
 * LORA_EINVAL (n = 0, σ0 ≤ 0, lower ≥ upper, x0 not finite, λ < 2) or
 * LORA_ENOMEM, with a message. Free with lora_cmaes_free. */
int lora_cmaes_new(const struct lora_cmaes_params *p, struct lora_cmaes **out,
		   struct lora_err *err);
void lora_cmaes_free(struct lora_cmaes *es);

/* Sample one generation: x receives λ candidates, row by row (λ × n), inside
 * the box. Calling ask twice without tell resamples (and advances the
 * random generator). Returns 0 or LORA_EINVAL (numerical breakdown of the
 * covariance matrix, with a message). */
int lora_cmaes_ask(struct lora_cmaes *es, double *x);

/* Update the distribution from the f values of the last asked generation
 * (λ values, in the order of ask; NaN counts as +∞, i.e. worst). Returns 0,
 * or LORA_EINVAL if there was no ask. */
int lora_cmaes_tell(struct lora_cmaes *es, const double *f);

/* The reason to stop ("tolfun", "tolx", "condition", "stagnation",
 * "tolflatfitness"), or NULL to go on. Checked after each tell. */
const char *lora_cmaes_stop(const struct lora_cmaes *es);

/* IPOP restart: start again from x0 with σ0, C = I and λ multiplied by
 * factor (2 for IPOP); the random generator continues. 0 or LORA_ENOMEM. */
int lora_cmaes_restart(struct lora_cmaes *es, double factor);

size_t lora_cmaes_popsize(const struct lora_cmaes *es);
size_t lora_cmaes_dim(const struct lora_cmaes *es);
double lora_cmaes_sigma(const struct lora_cmaes *es);
long lora_cmaes_generation(const struct lora_cmaes *es);	/* tells since (re)start */
/* The mean mapped into the box (n values). */
void lora_cmaes_mean(const struct lora_cmaes *es, double *x);
/* Axis ratio sqrt(max eigenvalue / min eigenvalue) of C. */
double lora_cmaes_axis_ratio(const struct lora_cmaes *es);

/* pycma's BoundTransform for one coordinate (exposed for tests): maps any
 * real x into [lb, ub], identity on [lb + al, ub - au]. */
double lora_cmaes_bound_transform(double x, double lb, double ub);

/* A small deterministic generator (xoshiro256**), also used by tests and
 * by lib/optim for random restarts. */
struct lora_cmaes_rng { uint64_t s[4]; int has_spare; double spare; };
void lora_cmaes_rng_seed(struct lora_cmaes_rng *r, uint64_t seed);
uint64_t lora_cmaes_rng_next(struct lora_cmaes_rng *r);
double lora_cmaes_rng_uniform(struct lora_cmaes_rng *r);	/* [0, 1) */
double lora_cmaes_rng_normal(struct lora_cmaes_rng *r);	/* N(0, 1) */

#endif
