/*
 * bench_gemm — which threading model the forward's matrix products should
 * use, measured on the Linear shapes of the two benchmark models:
 *   SmolLM-135M at M = 1000 tokens: 576->576, 576->192, 576->1536, 1536->576
 *   T5-small at M = 1094 tokens:    512->512, 512->1024, 1024->512
 * Each product y[M,N] = x[M,K]·W^T (W [N,K], the Linear layout) runs as
 *   (a) one cblas_sgemm with OpenBLAS's own threads (2 here);
 *   (b) lora_gemm: OpenBLAS single-threaded, lorapipe's worker pool
 *       splitting N (weight rows) over the workers (what the library does);
 *   (b') the same pool splitting M (token rows) instead;
 *   (c) (a) in a child started with OPENBLAS_THREAD_TIMEOUT=4 (OpenBLAS's
 *       workers sleep right after each call instead of spinning; the variable
 *       is read when the library loads, hence the child).
 * Rates in GFLOP/s, best of 5 interleaved rounds (a shared noisy host), and
 * each against (a) of the same run. A pure product loop flatters (a) and
 * (c) (their workers stay hot between calls); the whole forward
 * (bench_forward) is the judge.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cpu.h"
#include "ops.h"

struct shape {
	const char *model;
	int M, K, N;
};

static const struct shape shapes[] = {
	{"smollm", 1000, 576, 576}, {"smollm", 1000, 576, 192}, {"smollm", 1000, 576, 1536},
	{"smollm", 1000, 1536, 576}, {"t5-small", 1094, 512, 512}, {"t5-small", 1094, 512, 1024},
	{"t5-small", 1094, 1024, 512},
};
enum { NS = sizeof shapes / sizeof shapes[0], ROUNDS = 5 };

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *rand_buf(size_t n)
{
	float *p = malloc(n * sizeof *p);
	if (!p) {
		fprintf(stderr, "bench_gemm: out of memory\n");
		exit(1);
	}
	uint64_t s = 0x9E3779B97F4A7C15ull ^ n;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		p[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
	}
	return p;
}

/* (b'): token rows split over the pool, one single-threaded product each
 * (lora_gemm inside a pool job stays on its worker). */
struct mjob {
	const struct shape *s;
	const float *x, *w;
	float *y;
	int rows;
};

static void m_unit(void *ctx, int u, int worker)
{
	(void)worker;
	const struct mjob *j = ctx;
	int m0 = u * j->rows, m = j->s->M - m0 < j->rows ? j->s->M - m0 : j->rows;
	lora_gemm(false, true, m, j->s->N, j->s->K, 1.0f, j->x + (size_t)m0 * j->s->K, j->s->K, j->w,
		  j->s->K, 0.0f, j->y + (size_t)m0 * j->s->N, j->s->N);
}

/* GFLOP/s of reps products of one shape; how: 'a' OpenBLAS threads,
 * 'b' lora_gemm, 'm' split by token rows. */
static double rate(const struct shape *s, char how, float *x, float *w, float *y)
{
	int nw = lora_parallel_workers();
	struct mjob mj = {s, x, w, y, (s->M + nw - 1) / nw};
	int reps = 30;
	double t0 = now();
	for (int r = 0; r < reps; r++) {
		if (how == 'a')
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->M, s->N, s->K, 1.0f, x, s->K,
				    w, s->K, 0.0f, y, s->N);
		else if (how == 'm')
			lora_parallel_for(nw, m_unit, &mj);
		else
			lora_gemm(false, true, s->M, s->N, s->K, 1.0f, x, s->K, w, s->K, 0.0f, y, s->N);
	}
	return 2.0 * s->M * s->N * s->K * reps / (now() - t0) / 1e9;
}

/* (a) with OpenBLAS's threads: the pool holds OpenBLAS at one thread
 * outside its workers, so give them back for the call. */
static double rate_a(const struct shape *s, int nt, float *x, float *w, float *y)
{
	int saved = openblas_get_num_threads();
	openblas_set_num_threads(nt);
	double r = rate(s, 'a', x, w, y);
	openblas_set_num_threads(saved);
	return r;
}

int main(int argc, char **argv)
{
	lora_cpu_fast_blas_reexec(argv);
	bool child = argc > 1 && !strcmp(argv[1], "--child");
	int nt = openblas_get_num_threads();
	int nw = lora_parallel_workers();	/* fixes the pool (and OpenBLAS's count) */
	float *x = rand_buf((size_t)1094 * 1536), *w = rand_buf((size_t)1536 * 1536);
	float *y = rand_buf((size_t)1094 * 1536);
	if (child) {	/* one round of (c): best rate per shape on stdout */
		for (int i = 0; i < NS; i++)
			printf("%.3f\n", rate_a(&shapes[i], nt, x, w, y));
		free(x), free(w), free(y);
		return 0;
	}
	printf("bench_gemm: OpenBLAS core %s, %d threads; pool of %d workers\n", openblas_get_corename(), nt,
	       nw);
	char cmd[64];
	snprintf(cmd, sizeof cmd, "OPENBLAS_THREAD_TIMEOUT=4 /proc/%ld/exe --child", (long)getpid());
	double best[NS][4] = {{0}};
	for (int round = 0; round < ROUNDS; round++) {
		for (int i = 0; i < NS; i++) {
			double r[3];
			r[0] = rate_a(&shapes[i], nt, x, w, y);
			r[1] = rate(&shapes[i], 'b', x, w, y);
			r[2] = rate(&shapes[i], 'm', x, w, y);
			for (int k = 0; k < 3; k++)
				best[i][k] = r[k] > best[i][k] ? r[k] : best[i][k];
		}
		FILE *f = popen(cmd, "r");
		for (int i = 0; f && i < NS; i++) {
			double r;
			if (fscanf(f, "%lf", &r) == 1 && r > best[i][3])
				best[i][3] = r;
		}
		if (f)
			pclose(f);
	}
	printf("bench_gemm: %-9s %-16s %9s %14s %14s %14s\n", "model", "M x K -> N", "(a) blas",
	       "(b) pool/N", "(b') pool/M", "(c) timeout");
	double sum[4] = {0};
	for (int i = 0; i < NS; i++) {
		char dims[32];
		snprintf(dims, sizeof dims, "%dx%d->%d", shapes[i].M, shapes[i].K, shapes[i].N);
		printf("bench_gemm: %-9s %-16s %9.1f %8.1f %4.0f%% %8.1f %4.0f%% %8.1f %4.0f%%\n",
		       shapes[i].model, dims, best[i][0], best[i][1], 100 * best[i][1] / best[i][0],
		       best[i][2], 100 * best[i][2] / best[i][0], best[i][3],
		       100 * best[i][3] / best[i][0]);
		for (int k = 0; k < 4; k++)
			sum[k] += best[i][k];
	}
	printf("bench_gemm: mean of the ratios to (a): (b) %.0f%%, (b') %.0f%%, (c) %.0f%% (GFLOP/s, best of %d)\n",
	       100 * sum[1] / sum[0], 100 * sum[2] / sum[0], 100 * sum[3] / sum[0], ROUNDS);
	free(x), free(w), free(y);
	return 0;
}
