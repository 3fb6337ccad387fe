/*
 * bench_bf16 — the AVX512-BF16 Linear product (lib/bf16.c) against OpenBLAS
 * sgemm (with the kernels the tools get: SkylakeX on AVX-512 CPUs, see
 * lib/cpu.h) on the forward's shapes, y[M,N] = x[M,K] · W^T:
 *   SmolLM-135M at M = 1000 (5 x 200 tokens): 576->576, 576->192, 576->1536,
 *   1536->576;  Flan-T5-small at M = 1094: 512->512, 512->1024, 1024->512.
 * For each shape, sgemm and bf16 are timed alternately (REPS rounds, each
 * enough calls for ~50 ms) and the best of each is reported with the ratio,
 * plus the relative error of bf16 against sgemm (max |diff| / max |y|).
 * Then the whole set of shapes weighted as in one forward (SmolLM: 30
 * layers of q,k,v,o,gate,up,down; T5-small encoder+decoder Linears for a
 * LoraHub step) as a "step": total time sgemm vs bf16.
 * Prints "skip" (exit 0) when the CPU lacks AVX512-BF16.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bf16.h"
#include "bench.h"
#include "cpu.h"
#include "ops.h"

char *openblas_get_corename(void);

enum { REPS = 5 };

struct shape {
	const char *model;
	int M, K, N;
	int count;	/* how many of these one forward step does */
};

/* counts: SmolLM 30 layers (q, o: 576->576; k, v: 576->192; gate, up:
 * 576->1536; down: 1536->576). T5-small (6+6 layers, d_model 512, 8 heads of
 * 64, d_ff 2048 relu in v1.0 / 1024 gated in v1.1 — the brief's shapes are
 * v1.1/Flan's: wi_0, wi_1 512->1024, wo 1024->512): encoder 6 x (q,k,v,o +
 * wi_0, wi_1 + wo), decoder 6 x (self q,k,v,o + cross q,o + wi_0, wi_1, wo;
 * cross k,v run on the encoder rows). All at M = 1094 here, an upper bound
 * on the decoder side, which runs on the (shorter) targets in a real step. */
static const struct shape shapes[] = {
	{"smollm", 1000, 576, 576, 60},
	{"smollm", 1000, 576, 192, 60},
	{"smollm", 1000, 576, 1536, 60},
	{"smollm", 1000, 1536, 576, 30},
	{"t5-small", 1094, 512, 512, 48},
	{"t5-small", 1094, 512, 1024, 24},
	{"t5-small", 1094, 1024, 512, 12},
};

int main(int argc, char **argv)
{
	(void)argc;
	lora_cpu_fast_blas_reexec(argv);
	printf("bench_bf16: OpenBLAS core %s, %d workers\n", openblas_get_corename(),
	       lora_parallel_workers());
	if (!lora_bf16_supported()) {
		printf("bench_bf16: skip (no AVX512-BF16 on this CPU)\n");
		return 0;
	}
	size_t ns = sizeof shapes / sizeof shapes[0];
	double step_sg[2] = {0, 0}, step_bf[2] = {0, 0}, worst_ratio = 1e9;
	for (size_t s = 0; s < ns; s++) {
		const struct shape *sh = &shapes[s];
		int M = sh->M, K = sh->K, N = sh->N;
		float *x = bench_rand_tensor((size_t)M * K, 1);
		float *w = bench_rand_tensor((size_t)N * K, 1 / sqrtf((float)K));
		float *y1 = bench_rand_tensor((size_t)M * N, 1), *y2 = bench_rand_tensor((size_t)M * N, 1);
		struct lora_bf16_mat *pw;
		struct lora_err err;
		if (lora_bf16_pack_f32(w, N, K, true, &pw, &err) < 0) {
			fprintf(stderr, "bench_bf16: %s\n", err.msg);
			return 1;
		}
		double flop = 2.0 * M * K * N;
		int calls = (int)(0.05 * 300e9 / flop) + 1;
		double best_sg = 1e30, best_bf = 1e30;
		for (int rep = 0; rep < REPS; rep++) {
			double t0 = bench_now();
			for (int c = 0; c < calls; c++)
				lora_matmul(y1, x, w, M, K, N, true, 1.0f, 0.0f);
			double t1 = bench_now();
			for (int c = 0; c < calls; c++)
				if (lora_bf16_gemm(y2, N, x, K, pw, M, 0.0f) < 0) {
					fprintf(stderr, "bench_bf16: out of memory\n");
					return 1;
				}
			double t2 = bench_now();
			best_sg = (t1 - t0) / calls < best_sg ? (t1 - t0) / calls : best_sg;
			best_bf = (t2 - t1) / calls < best_bf ? (t2 - t1) / calls : best_bf;
		}
		double dmax = 0, ymax = 0;
		for (size_t i = 0; i < (size_t)M * N; i++) {
			double d = fabs((double)y1[i] - y2[i]);
			dmax = d > dmax ? d : dmax;
			ymax = fabs(y1[i]) > ymax ? fabs(y1[i]) : ymax;
		}
		double ratio = best_sg / best_bf;
		worst_ratio = ratio < worst_ratio ? ratio : worst_ratio;
		int t5 = strcmp(sh->model, "t5-small") == 0;
		step_sg[t5] += sh->count * best_sg;
		step_bf[t5] += sh->count * best_bf;
		printf("bench_bf16: %-8s M=%d %4d->%-4d sgemm %6.1f GFLOP/s  bf16 %6.1f GFLOP/s  "
		       "ratio %.2fx  (rel. err vs f32 %.1e)\n",
		       sh->model, M, K, N, flop / best_sg / 1e9, flop / best_bf / 1e9, ratio, dmax / ymax);
		lora_bf16_free(pw);
		free(x);
		free(w);
		free(y1);
		free(y2);
	}
	for (int t5 = 0; t5 < 2; t5++)
		printf("bench_bf16: %s Linear products of one step: sgemm %.1f ms, bf16 %.1f ms, "
		       "ratio %.2fx\n",
		       t5 ? "t5-small" : "smollm-135m", 1e3 * step_sg[t5], 1e3 * step_bf[t5],
		       step_sg[t5] / step_bf[t5]);
	printf("bench_bf16: worst shape ratio %.2fx (target >= 1.5x)\n", worst_ratio);
	return 0;
}
