/*
 * bench_t5 — one LoraHub step on generated T5 models with Flan-T5-small and
 * Flan-T5-large shapes, against OpenBLAS's own sgemm on the same shapes.
 *
 * A step is what lora-cmaes asks of lora-eval per candidate: the loss of 5
 * examples of ~220 input tokens and ~5 target tokens (lora_model_nll over
 * all five in one call) with a rank-4 q/v adapter attached (unmerged), as in
 * LoraHub. The models are random (fixed seed), written as f32 safetensors into
 * a temporary directory (removed at exit) and opened with lora_model_open.
 *
 * FLOPs per step are counted exactly: 2 x every Linear's M*K*N (encoder,
 * decoder, cross-attention K/V over the encoder rows, the vocabulary head,
 * the LoRA factors) + 2 x 2 x the attention products (QK^T and PV, per
 * head). The sgemm reference runs every Linear product of the step (same
 * M, K, N, same count) straight through cblas_sgemm, with OpenBLAS's own threads, in the same
 * process; "of sgemm" = model GFLOP/s / that rate. Each timed model step
 * after the first follows an untimed one (see the loop).
 *
 * Usage: bench_t5 [small|large|all] [steps]   (default: all; 10 / 3 steps)
 * The step is reported as the best and the median of the timed steps.
 * BENCH_T5_NO_SGEMM=1 skips the sgemm reference (to profile the step alone;
 * it prints "sgemm reference skipped" instead of the ratios);
 * BENCH_T5_NO_ADAPTER=1 runs the base model without the adapter.
 * OPENBLAS_CORETYPE=SkylakeX is arranged by re-executing when the CPU has
 * AVX-512 and the variable is unset (LORA_NO_REEXEC=1 disables), as the
 * tools do.
 */
#include <cblas.h>

#include "bf16.h"
#include "cpu.h"
#include "model.h"
#include "ops.h"
#include "st.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The median of n values (sorts v). */
static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

char *openblas_get_corename(void);

struct shape {
	const char *name;
	int C, HS, NH, F, NE, ND, V, steps;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

/* Uniform in [-a, a]. */
static void fill(float *p, size_t n, float a)
{
	for (size_t i = 0; i < n; i++)
		p[i] = a * (2.0f * (float)(rng_next() >> 40) / (float)(1 << 24) - 1.0f);
}

struct tensor_decl {
	char name[128];
	int64_t rows, cols;
	float scale;	/* uniform half-width; 0 = ones (norm weights) */
};

static int add(struct tensor_decl *d, int n, int64_t rows, int64_t cols, float scale,
	       const char *name)
{
	snprintf(d[n].name, sizeof d[n].name, "%s", name);
	d[n].rows = rows;
	d[n].cols = cols;
	d[n].scale = scale;
	return n + 1;
}

/* Write DIR/{config.json,tokenizer.json,model.safetensors} for shape s. */
static int write_model(const char *dir, const struct shape *s)
{
	char p[4096], nm[128];
	snprintf(p, sizeof p, "%s/config.json", dir);
	FILE *f = fopen(p, "w");
	if (!f)
		return -1;
	fprintf(f, "{\"model_type\": \"t5\", \"vocab_size\": %d, \"d_model\": %d, \"d_kv\": %d, "
		"\"num_heads\": %d, \"d_ff\": %d, \"num_layers\": %d, \"num_decoder_layers\": %d, "
		"\"relative_attention_num_buckets\": 32, \"relative_attention_max_distance\": 128, "
		"\"feed_forward_proj\": \"gated-gelu\", \"tie_word_embeddings\": false, "
		"\"layer_norm_epsilon\": 1e-6, \"pad_token_id\": 0, \"eos_token_id\": 1, "
		"\"decoder_start_token_id\": 0}\n", s->V, s->C, s->HS, s->NH, s->F, s->NE, s->ND);
	fclose(f);
	snprintf(p, sizeof p, "%s/tokenizer.json", dir);
	if (!(f = fopen(p, "w")))
		return -1;
	fputs("{\"version\": \"1.0\", \"added_tokens\": [], \"normalizer\": null, "
	      "\"pre_tokenizer\": null, \"post_processor\": null, \"decoder\": null, \"model\": "
	      "{\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\", 0.0], [\"a\", -1.0]]}}\n", f);
	fclose(f);

	int D = s->NH * s->HS, n = 0;
	size_t cap = 16 + 32 * (size_t)(s->NE + s->ND);
	struct tensor_decl *d = calloc(cap, sizeof *d);
	float wc = 1.0f / sqrtf((float)s->C), wd = 1.0f / sqrtf((float)D), wf = 1.0f / sqrtf((float)s->F);
	n = add(d, n, s->V, s->C, 1.0f, "shared.weight");
	n = add(d, n, s->V, s->C, wc, "lm_head.weight");
	for (int k = 0; k < 2; k++) {
		const char *st = k ? "decoder" : "encoder";
		int nl = k ? s->ND : s->NE;
		snprintf(nm, sizeof nm, "%s.final_layer_norm.weight", st);
		n = add(d, n, s->C, 0, 0, nm);
		snprintf(nm, sizeof nm, "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight", st);
		n = add(d, n, 32, s->NH, 1.0f, nm);
		for (int i = 0; i < nl; i++) {
			const char *sub[] = { "q", "k", "v" };
			snprintf(nm, sizeof nm, "%s.block.%d.layer.0.layer_norm.weight", st, i);
			n = add(d, n, s->C, 0, 0, nm);
			for (int j = 0; j < 3; j++) {
				snprintf(nm, sizeof nm, "%s.block.%d.layer.0.SelfAttention.%s.weight", st, i, sub[j]);
				n = add(d, n, D, s->C, wc, nm);
			}
			snprintf(nm, sizeof nm, "%s.block.%d.layer.0.SelfAttention.o.weight", st, i);
			n = add(d, n, s->C, D, wd, nm);
			int ff = k ? 2 : 1;
			if (k) {
				snprintf(nm, sizeof nm, "%s.block.%d.layer.1.layer_norm.weight", st, i);
				n = add(d, n, s->C, 0, 0, nm);
				for (int j = 0; j < 3; j++) {
					snprintf(nm, sizeof nm, "%s.block.%d.layer.1.EncDecAttention.%s.weight",
						 st, i, sub[j]);
					n = add(d, n, D, s->C, wc, nm);
				}
				snprintf(nm, sizeof nm, "%s.block.%d.layer.1.EncDecAttention.o.weight", st, i);
				n = add(d, n, s->C, D, wd, nm);
			}
			snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.layer_norm.weight", st, i, ff);
			n = add(d, n, s->C, 0, 0, nm);
			snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi_0.weight", st, i, ff);
			n = add(d, n, s->F, s->C, wc, nm);
			snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wi_1.weight", st, i, ff);
			n = add(d, n, s->F, s->C, wc, nm);
			snprintf(nm, sizeof nm, "%s.block.%d.layer.%d.DenseReluDense.wo.weight", st, i, ff);
			n = add(d, n, s->C, s->F, wf, nm);
		}
	}
	struct lora_st_tensor *decl = calloc((size_t)n, sizeof *decl);
	size_t maxn = 0;
	for (int i = 0; i < n; i++) {
		decl[i].name = d[i].name;
		decl[i].dtype = LORA_F32;
		decl[i].ndim = d[i].cols ? 2 : 1;
		decl[i].shape[0] = d[i].rows;
		decl[i].shape[1] = d[i].cols;
		size_t e = (size_t)d[i].rows * (size_t)(d[i].cols ? d[i].cols : 1);
		decl[i].nbytes = e * sizeof(float);
		if (e > maxn)
			maxn = e;
	}
	snprintf(p, sizeof p, "%s/model.safetensors", dir);
	struct lora_st_writer *w = NULL;
	struct lora_err err = { 0 };
	float *buf = malloc(maxn * sizeof *buf);
	int rc = buf ? lora_st_writer_open(p, decl, (size_t)n, NULL, &w, &err) : -1;
	for (int k = 0; k < n && rc == 0; k++) {
		size_t i = lora_st_writer_order(w, (size_t)k);
		size_t e = decl[i].nbytes / sizeof(float);
		if (d[i].scale == 0)
			for (size_t j = 0; j < e; j++)
				buf[j] = 1.0f;
		else
			fill(buf, e, d[i].scale);
		rc = lora_st_writer_write(w, buf, decl[i].nbytes, &err);
	}
	if (rc == 0)
		rc = lora_st_writer_commit(w, &err);
	else if (w)
		lora_st_writer_abort(w);
	if (rc)
		fprintf(stderr, "bench_t5: writing %s: %s\n", p, err.msg);
	free(buf);
	free(decl);
	free(d);
	return rc;
}

/* A rank-4 adapter on every q and v (LoraHub's pool targets). */
static int make_adapter(const struct shape *s, struct lora_adapter *a)
{
	int D = s->NH * s->HS, R = 4, nl = s->NE + s->ND;
	memset(a, 0, sizeof *a);
	a->name = strdup("bench");
	a->r = R;
	a->alpha = 8;
	a->n_modules = 2 * (size_t)nl;
	a->modules = calloc(a->n_modules, sizeof *a->modules);
	struct lora_err err = { 0 };
	for (int i = 0; i < nl; i++)
		for (int j = 0; j < 2; j++) {
			struct lora_module *m = &a->modules[2 * i + j];
			char nm[128];
			snprintf(nm, sizeof nm, "%s.block.%d.layer.0.SelfAttention.%s",
				 i < s->NE ? "encoder" : "decoder", i < s->NE ? i : i - s->NE, j ? "v" : "q");
			m->module = strdup(nm);
			m->r = R;
			m->alpha = 8;
			if (lora_tensor_alloc2(&m->a, LORA_F32, R, s->C, &err) < 0 ||
			    lora_tensor_alloc2(&m->b, LORA_F32, D, R, &err) < 0)
				return -1;
			fill(m->a.data, (size_t)R * s->C, 0.05f);
			fill(m->b.data, (size_t)D * R, 0.05f);
		}
	return 0;
}

/* One Linear product of the step: M rows, K in, N out, times count. */
struct mm {
	int M, K, N, count;
};

static int add_mm(struct mm *v, int n, int M, int K, int N, int count)
{
	if (M > 0)
		v[n++] = (struct mm){ M, K, N, count };
	return n;
}

static char tmpdir[4096];

/* Remove the generated model (also on exit(1)). */
static void cleanup(void)
{
	if (!tmpdir[0])
		return;
	char cmd[4200];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "bench_t5: could not remove %s\n", tmpdir);
	tmpdir[0] = '\0';
}

static void bench(const struct shape *s, int steps)
{
	const char *td = getenv("TMPDIR");
	snprintf(tmpdir, sizeof tmpdir, "%s/bench_t5.XXXXXX", td && *td ? td : "/tmp");
	char *dir = mkdtemp(tmpdir);
	if (!dir) {
		perror("bench_t5: mkdtemp");
		exit(1);
	}
	double t0 = now();
	if (write_model(dir, s) < 0)
		exit(1);
	double t1 = now();
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };
	if (lora_model_open(dir, &m, &err) < 0) {
		fprintf(stderr, "bench_t5: %s\n", err.msg);
		exit(1);
	}
	double t2 = now();
	struct lora_adapter ad;
	memset(&ad, 0, sizeof ad);
	if (!getenv("BENCH_T5_NO_ADAPTER") && (make_adapter(s, &ad) < 0 || lora_model_set_adapter(m, &ad, &err) < 0)) {
		fprintf(stderr, "bench_t5: adapter: %s\n", err.msg);
		exit(1);
	}

	/* 5 examples, ~220 input and ~5 target tokens */
	const int nin[5] = { 212, 231, 219, 224, 208 }, ntg[5] = { 4, 6, 5, 5, 3 };
	struct lora_seq seqs[5];
	int32_t *ids[5][2];
	int Te = 0, Td = 0;
	for (int e = 0; e < 5; e++) {
		for (int k = 0; k < 2; k++) {
			int n = k ? ntg[e] : nin[e];
			ids[e][k] = malloc((size_t)n * sizeof(int32_t));
			for (int i = 0; i < n; i++)
				ids[e][k][i] = 2 + (int32_t)(rng_next() % (uint64_t)(s->V - 2));
			ids[e][k][n - 1] = 1;
		}
		seqs[e] = (struct lora_seq){ ids[e][0], (size_t)nin[e], ids[e][1], (size_t)ntg[e] };
		Te += nin[e];
		Td += ntg[e];
	}

	/* FLOPs of one step and the Linear products it makes */
	int C = s->C, D = s->NH * s->HS, F = s->F, R = 4;
	struct mm mms[32];
	int nm = 0;
	nm = add_mm(mms, nm, Te, C, D, 3 * s->NE);	/* encoder q k v */
	nm = add_mm(mms, nm, Te, D, C, s->NE);		/* encoder o */
	nm = add_mm(mms, nm, Te, C, F, 2 * s->NE);	/* encoder wi_0 wi_1 */
	nm = add_mm(mms, nm, Te, F, C, s->NE);		/* encoder wo */
	nm = add_mm(mms, nm, Td, C, D, 4 * s->ND);	/* decoder q k v, cross q */
	nm = add_mm(mms, nm, Td, D, C, 2 * s->ND);	/* decoder o, cross o */
	nm = add_mm(mms, nm, Te, C, D, 2 * s->ND);	/* cross k v over the encoder rows */
	nm = add_mm(mms, nm, Td, C, F, 2 * s->ND);
	nm = add_mm(mms, nm, Td, F, C, s->ND);
	nm = add_mm(mms, nm, Td, C, s->V, 1);		/* head */
	double lin_flops = 0;
	for (int i = 0; i < nm; i++)
		lin_flops += 2.0 * mms[i].M * (double)mms[i].K * mms[i].N * mms[i].count;
	/* q and v of every self-attention: x·A^T (R x C) then ·B^T (D x R) */
	double lora_flops = 2.0 * 2 * ((double)Te * s->NE + (double)Td * s->ND) * R * (double)(C + D);
	double att_flops = 0;
	for (int e = 0; e < 5; e++)
		att_flops += 4.0 * D * ((double)nin[e] * nin[e] * s->NE +
					(double)ntg[e] * ntg[e] * s->ND + (double)ntg[e] * nin[e] * s->ND);
	double flops = lin_flops + lora_flops + att_flops;

	float nll[32];
	if (lora_model_nll(m, seqs, 5, nll, &err) < 0) {	/* warm-up */
		fprintf(stderr, "bench_t5: %s\n", err.msg);
		exit(1);
	}
	/* OpenBLAS's own rate on the step's Linear products, timed in
	 * alternation with the model steps so that all see the same load on a
	 * shared host. "hot": one weight buffer reused by every product (it
	 * stays in cache: the best case); "streamed": each product reads the
	 * next weights from a pool bigger than any cache, as the model reads
	 * its own weights once per step. */
	size_t maxa = 0, maxb = 0, maxc = 0, pool = 0;
	for (int i = 0; i < nm; i++) {
		size_t a = (size_t)mms[i].M * mms[i].K, b = (size_t)mms[i].K * mms[i].N,
		       c = (size_t)mms[i].M * mms[i].N;
		maxa = a > maxa ? a : maxa;
		maxb = b > maxb ? b : maxb;
		maxc = c > maxc ? c : maxc;
	}
	pool = (size_t)256 << 20 >> 2;	/* 256 MB of floats */
	if (pool < 2 * maxb)
		pool = 2 * maxb;
	float *A = malloc(maxa * sizeof *A), *B = malloc(pool * sizeof *B);
	float *Cc = malloc(maxc * sizeof *Cc);
	if (!A || !B || !Cc) {
		fprintf(stderr, "bench_t5: out of memory\n");
		exit(1);
	}
	fill(A, maxa, 1.0f);
	fill(B, pool, 0.05f);
	fill(Cc, maxc, 0.0f);
	/* the same model opened again with --bf16's packed weights, timed
	 * interleaved with the f32 one (CPUs with AVX512-BF16 only) */
	struct lora_model *m2 = NULL;
	if (lora_bf16_supported() &&
	    (lora_model_open(dir, &m2, &err) < 0 || lora_model_set_bf16(m2, true, &err) < 0 ||
	     (!getenv("BENCH_T5_NO_ADAPTER") && lora_model_set_adapter(m2, &ad, &err) < 0))) {
		fprintf(stderr, "bench_t5: bf16: %s\n", err.msg);
		exit(1);
	}
	float nll2[32];
	if (m2)
		lora_model_nll(m2, seqs, 5, nll2, &err);
	double best2 = 1e30, dl = 0;
	double best = 1e30, cpu_best = 1e30;
	double *times = malloc((size_t)(steps > 0 ? steps : 1) * sizeof *times);
	if (!times) {
		fprintf(stderr, "bench_t5: out of memory\n");
		exit(1);
	}
	double sg_best[2] = { 1e30, 1e30 }, sg_cpu[2] = { 1e30, 1e30 };
	size_t at = 0;
	int no_sgemm = getenv("BENCH_T5_NO_SGEMM") != NULL;
	for (int k = 0; k < steps; k++) {
		/* the first model step right after the threaded reference pays a
		 * transient (0.22-0.24 s instead of 0.16 s on the small shape,
		 * with ~0.1 s more CPU: OpenBLAS's own threads, which LoraHub's
		 * back-to-back steps never meet): an untimed step absorbs it */
		if (k > 0 && !no_sgemm)
			lora_model_nll(m, seqs, 5, nll, &err);
		double a = now(), ac = cpu();
		lora_model_nll(m, seqs, 5, nll, &err);
		double b = now() - a, bc = cpu() - ac;
		if (m2) {
			double a2 = now();
			lora_model_nll(m2, seqs, 5, nll2, &err);
			a2 = now() - a2;
			best2 = a2 < best2 ? a2 : best2;
			double s1 = 0, s2 = 0;
			for (int q = 0; q < Td; q++)
				s1 += nll[q], s2 += nll2[q];
			dl = fabs(s1 - s2) / Td;
		}
		times[k] = b;
		best = b < best ? b : best;
		cpu_best = bc < cpu_best ? bc : cpu_best;
		/* the reference is OpenBLAS's own threading, as in bench_forward
		 * (the library's pool keeps OpenBLAS at one thread otherwise) */
		int saved_threads = openblas_get_num_threads();
		openblas_set_num_threads(lora_parallel_workers());
		for (int hot = 0; hot < 2 && !no_sgemm; hot++) {
			a = now();
			ac = cpu();
			for (int i = 0; i < nm; i++)
				for (int c = 0; c < mms[i].count; c++) {
					size_t wn = (size_t)mms[i].K * mms[i].N;
					if (at + wn > pool)
						at = 0;
					cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mms[i].M,
						    mms[i].N, mms[i].K, 1.0f, A, mms[i].K,
						    hot ? B : B + at, mms[i].K, 0.0f, Cc, mms[i].N);
					at += (wn + 15) & ~(size_t)15;
				}
			b = now() - a;
			bc = cpu() - ac;
			sg_best[hot] = b < sg_best[hot] ? b : sg_best[hot];
			sg_cpu[hot] = bc < sg_cpu[hot] ? bc : sg_cpu[hot];
		}
		openblas_set_num_threads(saved_threads);
	}
	double med = median(times, steps);
	free(times);
	double loss = 0;
	for (int i = 0; i < Td; i++)
		loss += nll[i];
	loss /= Td;

	double rate = flops / best / 1e9;
	const struct lora_model_info *info = lora_model_info(m);
	printf("t5 %-5s C=%d H=%dx%d F=%d L=%d+%d V=%d: %zu params, %.2f GB on disk\n", s->name, C,
	       s->NH, s->HS, F, s->NE, s->ND, s->V, info->n_params, info->weight_bytes / 1e9);
	printf("  step (5 ex, %d input + %d target tokens, r4 q/v adapter): best %.4f s, median %.4f s"
	       " over %d; %.1f GFLOP/step -> %.1f GFLOP/s (best), %.1f (median)\n", Te, Td, best, med,
	       steps, flops / 1e9, rate, flops / med / 1e9);
	if (no_sgemm)
		printf("  sgemm reference skipped (BENCH_T5_NO_SGEMM)\n");
	for (int hot = 0; hot < 2 && !no_sgemm; hot++) {
		double sr = lin_flops / sg_best[hot] / 1e9;
		printf("  sgemm, same Linear products, %-8s weights: %.4f s for %.1f GFLOP -> %.1f GFLOP/s;"
		       " model = %.0f%% of it\n", hot ? "hot" : "streamed", sg_best[hot], lin_flops / 1e9,
		       sr, 100 * rate / sr);
	}
	if (no_sgemm)
		printf("  CPU seconds (all threads): step %.4f\n", cpu_best);
	else
		printf("  CPU seconds (all threads): step %.4f, sgemm streamed %.4f, hot %.4f -> model ="
		       " %.0f%% / %.0f%% of sgemm per CPU second\n", cpu_best, sg_cpu[0], sg_cpu[1],
		       100 * (flops / cpu_best) / (lin_flops / sg_cpu[0]),
		       100 * (flops / cpu_best) / (lin_flops / sg_cpu[1]));
	printf("  (write %.1f s, open %.2f s, loss %.4f, attention %.1f%% of FLOPs)\n", t1 - t0,
	       t2 - t1, loss, 100 * att_flops / flops);
	fflush(stdout);
	free(A);
	free(B);
	free(Cc);
	for (int e = 0; e < 5; e++) {
		free(ids[e][0]);
		free(ids[e][1]);
	}
	lora_model_set_adapter(m, NULL, NULL);
	if (m2)
		lora_model_set_adapter(m2, NULL, NULL);
	lora_adapter_free(&ad);
	lora_model_close(m);
	if (m2) {
		lora_model_close(m2);
		printf("  --bf16 (interleaved with the f32 steps): best %.4f s, %.2fx the f32 step;"
		       " mean NLL moves %.2e\n", best2, best / best2, dl);
	} else {
		printf("  --bf16: skipped, this CPU has no AVX512-BF16\n");
	}
	cleanup();
}

int main(int argc, char **argv)
{
	lora_cpu_fast_blas_reexec(argv);
	atexit(cleanup);
	const char *which = argc > 1 ? argv[1] : "all";
	int steps = argc > 2 ? atoi(argv[2]) : 0;
	static const struct shape shapes[] = {
		{ "small", 512, 64, 6, 1024, 8, 8, 32128, 10 },
		{ "large", 1024, 64, 16, 2816, 24, 24, 32128, 3 },
	};
	printf("bench_t5: OpenBLAS core %s, OPENBLAS_NUM_THREADS=%s\n", openblas_get_corename(),
	       getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS") : "(unset)");
	for (int i = 0; i < 2; i++)
		if (strcmp(which, "all") == 0 || strcmp(which, shapes[i].name) == 0)
			bench(&shapes[i], steps > 0 ? steps : shapes[i].steps);
	return 0;
}
