/*
 * bench_cmaes — the optimizer's own cost per evaluation (ask + tell, with the
 * lazy eigendecomposition) at pool sizes n = 20, 100, 500, against the time
 * budget of one LoraHub step (0.20 s on the Flan-T5-small shape, PERF-NOTES):
 * the search must be noise next to the objective: under 1% of a step up to
 * n = 100 (LoraHub samples 20 adapters); n = 500 is shown for scale. One
 * line per size.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cmaes.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(void)
{
	openblas_set_num_threads(1);	/* as lora-cmaes does */
	static const size_t dims[] = {20, 100, 500};
	int status = 0;
	for (size_t d = 0; d < 3; d++) {
		size_t n = dims[d];
		struct lora_cmaes_params p = lora_cmaes_default_params(n);
		p.lower = -1.5;
		p.upper = 1.5;
		p.sigma0 = 0.3;
		struct lora_cmaes *es;
		if (lora_cmaes_new(&p, &es, NULL))
			return 1;
		size_t lam = lora_cmaes_popsize(es);
		double *X = malloc(lam * n * sizeof *X), *F = malloc(lam * sizeof *F);
		long evals = 0;
		double t0 = now_s();
		for (int g = 0; g < (n > 100 ? 20 : 200); g++) {
			lora_cmaes_ask(es, X);
			for (size_t k = 0; k < lam; k++) {
				double s = 0;
				for (size_t i = 0; i < n; i++)
					s += (X[k * n + i] - 0.1) * (X[k * n + i] - 0.1);
				F[k] = s;
			}
			lora_cmaes_tell(es, F);
			evals += (long)lam;
		}
		double per = (now_s() - t0) / (double)evals;
		printf("bench_cmaes: n=%zu lambda=%zu: %.1f us per evaluation = %.2g of a 0.20 s LoraHub step\n",
		       n, lam, per * 1e6, per / 0.20);
		if (n <= 100 && per > 0.01 * 0.20)
			status = 1;	/* more than 1% of a step: too slow */
		free(X);
		free(F);
		lora_cmaes_free(es);
	}
	return status;
}
