/*
 * bench.h — the small helpers every benchmark uses: wall and process-CPU
 * clocks, and a deterministic xorshift source of test data (the values do
 * not matter to a timing, only that every run uses the same ones).
 */
#ifndef LORA_BENCH_H
#define LORA_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Monotonic wall-clock seconds. */
static inline double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process (every thread). */
static inline double bench_cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Uniform in [-1, 1), from one xorshift64 stream per program. */
static inline float bench_frand(void)
{
	static uint64_t rng = 0x9E3779B97F4A7C15ull;
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* n floats uniform in [-scale, scale); exits with a message when out of
 * memory (a benchmark has nothing to clean up). */
static inline float *bench_rand_tensor(size_t n, float scale)
{
	float *p = malloc(n * sizeof *p);
	if (!p) {
		fprintf(stderr, "bench: out of memory for %zu floats\n", n);
		exit(1);
	}
	for (size_t i = 0; i < n; i++)
		p[i] = bench_frand() * scale;
	return p;
}

#endif
