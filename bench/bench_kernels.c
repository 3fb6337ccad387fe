/*
 * bench_kernels — the element-wise kernels of lib/ops.c, 16-lane AVX-512
 * path against the 8-lane AVX2 one (lora_ops_set_avx512), on the shapes of
 * one LoraHub step, on one thread (the forwards call them per worker):
 *   Flan-T5-small (5 examples of ~219 tokens, 1094 in all): softmax of the
 *   encoder's attention rows, 219 x 219 per head and example (6 x 5 such
 *   blocks, each copied in untimed just before, so it is in cache as the
 *   QK^T product leaves it), gelu_new on 1094 x 1024, RMSNorm 1094 x 512, nll_row over
 *   the 32128-word vocabulary (64 label rows);
 *   SmolLM-135M (1000 tokens): silu on 1000 x 1536, RMSNorm 1000 x 576,
 *   nll_row over 49152 (64 rows);  GPT-2: LayerNorm 1000 x 768;  and exp on
 *   1094 x 1024.
 * Each round times both paths, in alternating order, on the same input
 * (copied in before each timing, untimed); the best of ROUNDS rounds per
 * path is reported in ns per element with the ratio (AVX2 / AVX-512: above
 * 1 means the 16-lane path is faster), measured in the same run.
 * Prints "skip" (exit 0) on a CPU without AVX-512F.
 *
 * On the shared 2-core Zen 5 host (three runs under the bench lock, best
 * of 9 rounds each; ns/element 16-lane vs 8-lane, ratio): softmax 0.35 vs
 * 1.18-1.21 (3.4x), gelu_new 0.21 vs 0.89 (4.2x), silu 0.16 vs 0.72
 * (4.3-4.4x), exp 0.12 vs 0.62 (5.3x), nll_row 0.18-0.22 vs 0.83-0.86
 * (3.9-4.7x), rmsnorm 0.09-0.11 vs 0.13-0.15 (1.3-1.5x: memory-bound, and
 * the 8-lane path's output loop was vectorized at the same time, 0.39 ->
 * 0.14), layernorm 0.17-0.19 vs 0.23 (1.3x); all shapes once 2.4 vs 9.2 ms.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ops.h"

enum { ROUNDS = 9 };

enum kind { K_SOFTMAX, K_GELU, K_SILU, K_EXP, K_RMSNORM, K_LAYERNORM, K_NLL };

struct kcase {
	const char *name;
	enum kind kind;
	int rows, n;
	float scale;	/* inputs uniform in [-scale, scale) */
	int blocks;	/* timed calls per round, each on a fresh copy */
};

static const struct kcase cases[] = {
	{"softmax 30 x 219 x 219 (T5 attention)", K_SOFTMAX, 219, 219, 8, 30},
	{"gelu_new 1094 x 1024 (T5 gated-gelu)", K_GELU, 1094, 1024, 4, 1},
	{"rmsnorm 1094 x 512 (T5)", K_RMSNORM, 1094, 512, 3, 1},
	{"nll_row 64 x 32128 (T5 vocab)", K_NLL, 64, 32128, 10, 1},
	{"silu 1000 x 1536 (SmolLM SwiGLU)", K_SILU, 1000, 1536, 4, 1},
	{"rmsnorm 1000 x 576 (SmolLM)", K_RMSNORM, 1000, 576, 3, 1},
	{"nll_row 64 x 49152 (SmolLM vocab)", K_NLL, 64, 49152, 10, 1},
	{"layernorm 1000 x 768 (GPT-2)", K_LAYERNORM, 1000, 768, 3, 1},
	{"exp 1094 x 1024", K_EXP, 1094, 1024, 20, 1},
};

static volatile float sink;

/* One timed run of the kernel over buf (already holding the input). */
static double run(const struct kcase *k, float *buf, float *out, const float *w, const float *b)
{
	size_t total = (size_t)k->rows * k->n;
	double t0 = bench_now();
	switch (k->kind) {
	case K_SOFTMAX: lora_softmax_rows(buf, k->rows, k->n); break;
	case K_GELU: lora_gelu_tanh(buf, total); break;
	case K_SILU: lora_silu(buf, total); break;
	case K_EXP: lora_exp(buf, total); break;
	case K_RMSNORM: lora_rmsnorm(out, buf, w, k->rows, k->n, 1e-6f); break;
	case K_LAYERNORM: lora_layernorm(out, buf, w, b, k->rows, k->n, 1e-5f); break;
	case K_NLL: {
		float s = 0;
		for (int r = 0; r < k->rows; r++)
			s += lora_nll_row(buf + (size_t)r * k->n, k->n, (r * 7919) % k->n);
		sink = s;
		break;
	}
	}
	return bench_now() - t0;
}

int main(void)
{
	if (!lora_ops_set_avx512(true)) {
		printf("bench_kernels: skip (no AVX-512F on this CPU)\n");
		return 0;
	}
	printf("bench_kernels: element-wise kernels on one thread, best of %d alternating rounds\n",
	       ROUNDS);
	double sum16 = 0, sum8 = 0;
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		const struct kcase *k = &cases[c];
		size_t total = (size_t)k->rows * k->n;
		float *in = bench_rand_tensor(total, k->scale);
		float *buf = bench_rand_tensor(total, 1), *out = bench_rand_tensor(total, 1);
		float *w = bench_rand_tensor((size_t)k->n, 1), *b = bench_rand_tensor((size_t)k->n, 1);
		double best[2] = {INFINITY, INFINITY};	/* [0] 8 lanes, [1] 16 lanes */
		for (int r = 0; r < ROUNDS; r++)
			for (int j = 0; j < 2; j++) {
				int p = (r + j) % 2;
				lora_ops_set_avx512(p);
				double t = 0;
				for (int blk = 0; blk < k->blocks; blk++) {
					memcpy(buf, in, total * sizeof *buf);
					t += run(k, buf, out, w, b);
				}
				best[p] = t < best[p] ? t : best[p];
			}
		sum8 += best[0], sum16 += best[1];
		double elems = (double)total * k->blocks;
		printf("bench_kernels: %-38s avx512 %6.3f ns/elem  avx2 %6.3f ns/elem  ratio %.2fx\n",
		       k->name, best[1] * 1e9 / elems, best[0] * 1e9 / elems, best[0] / best[1]);
		free(in), free(buf), free(out), free(w), free(b);
	}
	printf("bench_kernels: all shapes once: avx512 %.1f ms, avx2 %.1f ms, ratio %.2fx\n",
	       sum16 * 1e3, sum8 * 1e3, sum8 / sum16);
	return 0;
}
