/*
 * bench_train — LoRA training throughput (lib/train.c) against OpenBLAS's own
 * sgemm rate on the same shapes, measured in the same run.
 *
 * Model: a generated Llama with SmolLM-135M's layer shape (576 wide, 9 heads /
 * 3 kv heads of 64, SwiGLU 1536) but 4 layers and an 8192 vocabulary so it fits
 * anywhere; batch: 5 sequences of 200 tokens (150 input + 50 target), LoRA
 * r 8 on q and v. FLOPs of a step = forward 2·P·T (+ causal attention) and a
 * backward that computes every activation gradient (≈ the same again) —
 * weight gradients are only the LoRA ones, so a step is ≈ 2× a forward, not
 * 3×. "of sgemm" = (step FLOPs / the sgemm rate on the layer's matmuls at
 * M = T) / step time: the share of the step's time sgemm would need alone.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"
#include "train.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *rnd(size_t n, float scale, uint64_t *s)
{
	float *x = malloc(n * sizeof *x);
	for (size_t i = 0; i < n; i++) {
		*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
		x[i] = scale * (float)((double)(*s >> 11) * 0x1.0p-53 * 2 - 1);
	}
	return x;
}

int main(int argc, char **argv)
{
	(void)argc;
	/* the same OpenBLAS kernels the tools get (lib/cpu.h) */
	lora_cpu_fast_blas_reexec(argv);
	printf("%s: OpenBLAS core %s\n", "bench_train", openblas_get_corename());
	enum { L = 4, C = 576, NH = 9, NKV = 3, HS = 64, F = 1536, V = 8192 };
	enum { NSEQ = 5, NIN = 150, NTG = 50 };
	uint64_t s = 1;
	struct lora_train_layer ly[4];
	struct lora_train_base b = { 0 };
	b.cfg = (struct lora_train_config){ .L = L, .C = C, .F = F, .NH = NH, .NKV = NKV, .HS = HS,
					    .V = V, .eps = 1e-5f, .rope_theta = 10000.0f };
	float *emb = rnd((size_t)V * C, 0.05f, &s), *norm = rnd(C, 1.0f, &s);
	b.embed = emb;
	b.head = emb;
	b.norm = norm;
	for (int l = 0; l < L; l++) {
		memset(&ly[l], 0, sizeof ly[l]);
		ly[l].ln1 = rnd(C, 1, &s);
		ly[l].ln2 = rnd(C, 1, &s);
		ly[l].wq = rnd((size_t)C * C, 0.04f, &s);
		ly[l].wk = rnd((size_t)NKV * HS * C, 0.04f, &s);
		ly[l].wv = rnd((size_t)NKV * HS * C, 0.04f, &s);
		ly[l].wo = rnd((size_t)C * C, 0.04f, &s);
		ly[l].wg = rnd((size_t)F * C, 0.04f, &s);
		ly[l].wu = rnd((size_t)F * C, 0.04f, &s);
		ly[l].wd = rnd((size_t)C * F, 0.025f, &s);
	}
	b.layers = ly;
	struct lora_train_params p = lora_train_default_params();
	struct lora_train *t;
	struct lora_err err;
	if (lora_train_new(&b, &p, &t, &err)) {
		fprintf(stderr, "bench_train: %s\n", err.msg);
		return 1;
	}
	int32_t ids[NSEQ][NIN + NTG];
	struct lora_seq seqs[NSEQ];
	for (int i = 0; i < NSEQ; i++) {
		for (int j = 0; j < NIN + NTG; j++)
			ids[i][j] = (int32_t)((i * 7919 + j * 104729) % V);
		seqs[i] = (struct lora_seq){ ids[i], NIN, ids[i] + NIN, NTG };
	}
	double loss;
	size_t tok;
	lora_train_step(t, seqs, NSEQ, &loss, &tok, &err);	/* warm up, allocate */
	int reps = 5;
	double t0 = now();
	for (int r = 0; r < reps; r++)
		if (lora_train_step(t, seqs, NSEQ, &loss, &tok, &err)) {
			fprintf(stderr, "bench_train: %s\n", err.msg);
			return 1;
		}
	double step = (now() - t0) / reps;
	int T = NSEQ * (NIN + NTG - 1);
	double P = (double)L * ((double)C * C * 2 + 2.0 * NKV * HS * C + 3.0 * F * C);
	double attn = (double)L * NSEQ * 2.0 * 2.0 * NH * HS * (NIN + NTG) * (NIN + NTG) / 2;
	double fwd = 2 * P * T + attn + 2.0 * NSEQ * NTG * V * C;
	double flops = 2 * fwd;
	/* sgemm alone on the layer's matmul shapes at M = T, same FLOP count per layer */
	float *x = rnd((size_t)T * F, 1, &s), *y = malloc((size_t)T * F * sizeof(float));
	double g0 = now(), gf = 0;
	for (int r = 0; r < 3; r++)
		for (int l = 0; l < L; l++) {
			int shapes[5][2] = { { C, C }, { C, NKV * HS }, { C, C }, { C, 2 * F }, { F, C } };
			const float *w[5] = { ly[l].wq, ly[l].wk, ly[l].wo, ly[l].wg, ly[l].wd };
			for (int k = 0; k < 5; k++) {
				int K = shapes[k][0], N = shapes[k][1];
				if (k == 3)
					N = F;
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K,
					    w[k], K, 0.0f, y, N);
				gf += 2.0 * T * N * K * (k == 3 ? 2 : 1) * (k == 1 ? 2 : 1);
				if (k == 3)
					cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f,
						    x, K, ly[l].wu, K, 0.0f, y, N);
				if (k == 1)
					cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f,
						    x, K, ly[l].wv, K, 0.0f, y, N);
			}
		}
	double rate = gf / (now() - g0);
	printf("bench_train: %d layers of SmolLM-135M shape, %d x %d tokens, LoRA r %d on q,v\n", L,
	       NSEQ, NIN + NTG, p.rank);
	printf("  step %.3f s  %.0f tokens/s  %.1f GFLOP/s  sgemm on these shapes %.1f GFLOP/s  "
	       "of sgemm %.0f%%  (loss %.3f)\n",
	       step, T / step, flops / step * 1e-9, rate * 1e-9, 100 * (flops / rate) / step, loss);
	free(x);
	free(y);
	lora_train_free(t);
	for (int l = 0; l < L; l++) {
		free((void *)ly[l].ln1), free((void *)ly[l].ln2), free((void *)ly[l].wq);
		free((void *)ly[l].wk), free((void *)ly[l].wv), free((void *)ly[l].wo);
		free((void *)ly[l].wg), free((void *)ly[l].wu), free((void *)ly[l].wd);
	}
	free(emb);
	free(norm);
	return 0;
}
