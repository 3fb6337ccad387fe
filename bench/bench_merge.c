/*
 * bench_merge — the svd merge of 20 adapters of rank 16 on one 4096 x 4096
 * module (QR of the stacked factors + SVD of the 320 x 320 core, lib/merge.c)
 * against what it replaces: forming the dense ΔW and running LAPACK's dense
 * SVD (sgesdd, f32) on it, in the same run. Prints both times, the ratio
 * (target >= 100x) and the relative Frobenius difference of the two rank-16
 * results. Usage: bench_merge [N_ADAPTERS [RANK [DIM]]].
 */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"
#include "merge.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ULL;

static float nrand(void)
{
	/* xorshift64 + Box-Muller, good enough for test matrices */
	double u[2];
	for (int i = 0; i < 2; i++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		u[i] = ((double)(rng >> 11) + 0.5) * 0x1.0p-53;
	}
	return (float)(sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

int main(int argc, char **argv)
{
	(void)argc;
	/* the same OpenBLAS kernels the tools get (lib/cpu.h) */
	lora_cpu_fast_blas_reexec(argv);
	printf("%s: OpenBLAS core %s\n", "bench_merge", openblas_get_corename());
	int n = argc > 1 ? atoi(argv[1]) : 20;
	int r = argc > 2 ? atoi(argv[2]) : 16;
	int dim = argc > 3 ? atoi(argv[3]) : 4096;
	struct lora_adapter *ads = calloc((size_t)n, sizeof *ads);
	const struct lora_adapter **pp = calloc((size_t)n, sizeof *pp);
	double *w = calloc((size_t)n, sizeof *w);
	for (int i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof name, "a%d", i);
		ads[i].name = strdup(name);
		ads[i].r = r;
		ads[i].alpha = 2.0 * r;
		ads[i].n_modules = 1;
		ads[i].modules = calloc(1, sizeof *ads[i].modules);
		struct lora_module *m = &ads[i].modules[0];
		m->module = strdup("model.layers.0.self_attn.q_proj");
		m->r = r;
		m->alpha = 2.0 * r;
		lora_tensor_alloc2(&m->a, LORA_F32, r, dim, NULL);
		lora_tensor_alloc2(&m->b, LORA_F32, dim, r, NULL);
		float *a = m->a.data, *b = m->b.data;
		for (size_t e = 0; e < (size_t)r * (size_t)dim; e++) {
			a[e] = nrand() / sqrtf((float)dim);
			b[e] = nrand() * 0.01f;
		}
		w[i] = (i % 3 == 0 ? -1.0 : 1.0) * (0.1 + 0.05 * i);
		pp[i] = &ads[i];
	}
	struct lora_merge_params p = lora_merge_default_params();
	p.method = LORA_MERGE_SVD;
	p.rank = r;
	struct lora_adapter out;
	struct lora_err err = { 0 };
	/* Best of 3 (the first call also pays OpenBLAS's buffer set-up). */
	double t_svd = 1e30, t0;
	for (int rep = 0; rep < 3; rep++) {
		if (rep)
			lora_adapter_free(&out);
		t0 = now();
		if (lora_merge(pp, (size_t)n, w, &p, &out, NULL, &err)) {
			fprintf(stderr, "bench_merge: %s\n", err.msg);
			return 1;
		}
		if (now() - t0 < t_svd)
			t_svd = now() - t0;
	}

	/* The dense way: ΔW = Σ w_i s_i B_i A_i (one sgemm over the stacked
	 * factors), then sgesdd on the full dim x dim matrix. */
	size_t dd = (size_t)dim * (size_t)dim, R = (size_t)n * (size_t)r;
	float *Bc = malloc((size_t)dim * R * sizeof *Bc), *Ac = malloc(R * (size_t)dim * sizeof *Ac);
	float *D = malloc(dd * sizeof *D), *U = malloc(dd * sizeof *U), *VT = malloc(dd * sizeof *VT);
	float *S = malloc((size_t)dim * sizeof *S);
	t0 = now();
	for (int i = 0; i < n; i++) {
		const struct lora_module *m = &ads[i].modules[0];
		float k = (float)(w[i] * m->alpha / m->r);
		const float *a = m->a.data, *b = m->b.data;
		for (int o = 0; o < dim; o++)
			for (int q = 0; q < r; q++)
				Bc[(size_t)o * R + (size_t)(i * r + q)] = b[(size_t)o * (size_t)r + (size_t)q];
		for (size_t e = 0; e < (size_t)r * (size_t)dim; e++)
			Ac[(size_t)i * (size_t)r * (size_t)dim + e] = k * a[e];
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, dim, (int)R, 1.0f, Bc, (int)R, Ac,
		    dim, 0.0f, D, dim);
	float *D0 = malloc(dd * sizeof *D0);
	memcpy(D0, D, dd * sizeof *D0);
	if (LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', dim, dim, D, dim, S, U, dim, VT, dim)) {
		fprintf(stderr, "bench_merge: sgesdd failed\n");
		return 1;
	}
	double t_dense = now() - t0;

	/* Accuracy: ||B'A' - dense rank-r||_F / ||dense rank-r||_F. */
	const struct lora_module *om = &out.modules[0];
	float *X = D0;	/* reuse: X = B'A' */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, dim, om->r, 1.0f, om->b.data,
		    om->r, om->a.data, dim, 0.0f, X, dim);
	for (int k = 0; k < r; k++)
		for (int o = 0; o < dim; o++)
			U[(size_t)o * (size_t)dim + (size_t)k] *= S[k];
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, dim, r, -1.0f, U, dim, VT, dim,
		    1.0f, X, dim);
	double num = 0, den = 0;
	for (int k = 0; k < r; k++)
		den += (double)S[k] * S[k];
	for (size_t e = 0; e < dd; e++)
		num += (double)X[e] * X[e];
	printf("bench_merge: svd merge of %d adapters r%d on a %dx%d module: %.1f ms\n", n, r, dim,
	       dim, 1e3 * t_svd);
	printf("bench_merge: dense dW + LAPACK sgesdd of the same module:      %.1f ms\n",
	       1e3 * t_dense);
	printf("bench_merge: ratio %.0fx (target >= 100x); rank-%d results differ by %.2e "
	       "(relative Frobenius)\n",
	       t_dense / t_svd, r, sqrt(num / den));
	lora_adapter_free(&out);
	for (int i = 0; i < n; i++)
		lora_adapter_free(&ads[i]);
	free(ads);
	free(pp);
	free(w);
	free(Bc);
	free(Ac);
	free(D);
	free(D0);
	free(U);
	free(VT);
	free(S);
	return 0;
}
