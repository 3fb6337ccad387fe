/*
 * bench_forward — the Llama forward on SmolLM-135M shapes (576 wide, 30
 * layers, 9 query / 3 kv heads of 64, 1536 FFN, vocabulary 49152, tied),
 * generated with random f32 weights into a temporary model directory:
 *   1. GFLOP/s of one batched NLL pass over 5 x 200 tokens (what one LoraHub
 *      step costs), against OpenBLAS's own sgemm rate on the same matrix
 *      shapes (M = 1000) measured in the same run;
 *   2. the cost of one new candidate in a served pool of 20 adapters
 *      (r 16 on q_proj and v_proj: LoraHub merge + attach + forward) against
 *      the forward alone, with the deltas unmerged (the default) and folded
 *      into a scratch weight (LORA_LINEAR_FOLD=1), in wall and CPU time: the
 *      median and quartiles of 15 candidates each sandwiched between two
 *      plain forwards (steadier on a shared host than best-of, also printed),
 *      with the merge and attach times apart;
 *   3. peak RSS against the size of the weights on disk.
 * FLOPs: 2 x non-embedding parameters x tokens + the causal attention
 * products + the head on the scored rows (PERF-NOTES.md's convention).
 * Needs a tokenizer.json: $LORA_SHARED/stories260K-hf's (or the path in
 * $LORA_BENCH_TOKENIZER); prints "skip" otherwise.
 */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cpu.h"
#include "merge.h"
#include "model.h"
#include "ops.h"
#include "st.h"

enum { C = 576, NH = 9, NKV = 3, HS = 64, F = 1536, L = 30, V = 49152, R = 16, POOL = 20 };
enum { NSEQ = 5, NIN = 190, NTG = 10 };

/* Order statistics of n values (sorted in place): the median, the lower
 * and upper quartiles (linear interpolation between order statistics) and
 * the extremes. */
struct q3 {
	double min, lo, med, hi, max;
};

static double at(const double *v, int n, double q)
{
	double pos = q * (n - 1);
	int i = (int)pos;
	return i + 1 < n ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[n - 1];
}

static struct q3 quartiles(double *v, int n)
{
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
			double t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	return (struct q3){v[0], at(v, n, 0.25), at(v, n, 0.5), at(v, n, 0.75), v[n - 1]};
}

struct tspec {
	char name[96];
	int64_t rows, cols;
};

static int write_model(const char *dir, const char *tokjson)
{
	char path[700], cmd[4000];
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp '%.2000s' '%s/tokenizer.json'", dir, dir,
		 tokjson, dir);
	if (system(cmd) != 0)
		return -1;
	snprintf(path, sizeof path, "%s/config.json", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	fprintf(f, "{\"model_type\": \"llama\", \"hidden_size\": %d, \"intermediate_size\": %d, "
		   "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
		   "\"vocab_size\": %d, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, "
		   "\"max_position_embeddings\": 2048, \"tie_word_embeddings\": true, "
		   "\"bos_token_id\": 1, \"eos_token_id\": 2}\n", C, F, L, NH, NKV, V);
	fclose(f);
	size_t n = 2 + (size_t)L * 9, k = 0;
	struct tspec *sp = calloc(n, sizeof *sp);
	struct lora_st_tensor *t = calloc(n, sizeof *t);
	snprintf(sp[k].name, sizeof sp[k].name, "model.embed_tokens.weight");
	sp[k].rows = V, sp[k++].cols = C;
	snprintf(sp[k].name, sizeof sp[k].name, "model.norm.weight");
	sp[k].rows = C, sp[k++].cols = 0;
	static const char *const lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
					   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
	const int64_t shp[7][2] = {{NH * HS, C}, {NKV * HS, C}, {NKV * HS, C}, {C, NH * HS}, {F, C}, {F, C}, {C, F}};
	for (int l = 0; l < L; l++) {
		snprintf(sp[k].name, sizeof sp[k].name, "model.layers.%d.input_layernorm.weight", l);
		sp[k].rows = C, sp[k++].cols = 0;
		snprintf(sp[k].name, sizeof sp[k].name, "model.layers.%d.post_attention_layernorm.weight", l);
		sp[k].rows = C, sp[k++].cols = 0;
		for (int j = 0; j < 7; j++) {
			snprintf(sp[k].name, sizeof sp[k].name, "model.layers.%d.%s.weight", l, lin[j]);
			sp[k].rows = shp[j][0], sp[k++].cols = shp[j][1];
		}
	}
	for (size_t i = 0; i < n; i++) {
		size_t numel = (size_t)sp[i].rows * (size_t)(sp[i].cols ? sp[i].cols : 1);
		float scale = sp[i].cols ? 1.7f / sqrtf((float)sp[i].cols) : 0.0f;
		float *d = bench_rand_tensor(numel, scale);
		if (!sp[i].cols)
			for (size_t q = 0; q < numel; q++)
				d[q] = 1.0f + 0.1f * bench_frand();
		t[i].name = sp[i].name;
		t[i].dtype = LORA_F32;
		t[i].ndim = sp[i].cols ? 2 : 1;
		t[i].shape[0] = sp[i].rows;
		t[i].shape[1] = sp[i].cols;
		t[i].data = d;
		t[i].nbytes = numel * sizeof(float);
	}
	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	struct lora_err err = {0};
	int rc = lora_st_write(path, t, n, NULL, &err);
	if (rc < 0)
		fprintf(stderr, "bench_forward: %s\n", err.msg);
	for (size_t i = 0; i < n; i++)
		free((void *)t[i].data);
	free(t);
	free(sp);
	return rc;
}

/* OpenBLAS's rate on one layer's products at M tokens, repeated for L layers:
 * cblas_sgemm itself with OpenBLAS's own threads (as many as lorapipe's
 * workers; lib/ops.c otherwise keeps OpenBLAS at one thread). */
static double sgemm_rate(int M)
{
	int saved = openblas_get_num_threads();
	openblas_set_num_threads(lora_parallel_workers());
	const int shp[7][2] = {{NH * HS, C}, {NKV * HS, C}, {NKV * HS, C}, {C, NH * HS}, {F, C}, {F, C}, {C, F}};
	float *x = bench_rand_tensor((size_t)M * F, 1), *y = bench_rand_tensor((size_t)M * F, 1);
	float *w[7];
	double flop = 0;
	for (int j = 0; j < 7; j++) {
		w[j] = bench_rand_tensor((size_t)shp[j][0] * shp[j][1], 0.05f);
		flop += 2.0 * M * shp[j][0] * shp[j][1];
	}
	double best = 0;
	for (int rep = 0; rep < 1; rep++) {
		double t0 = bench_now();
		for (int l = 0; l < L; l++)
			for (int j = 0; j < 7; j++)
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, shp[j][0], shp[j][1],
					    1.0f, x, shp[j][1], w[j], shp[j][1], 0.0f, y, shp[j][0]);
		double r = flop * L / (bench_now() - t0) / 1e9;
		best = r > best ? r : best;
	}
	openblas_set_num_threads(saved);
	for (int j = 0; j < 7; j++)
		free(w[j]);
	free(x);
	free(y);
	return best;
}

static void make_adapter(struct lora_adapter *a, int idx)
{
	memset(a, 0, sizeof *a);
	char nm[32];
	snprintf(nm, sizeof nm, "a%02d", idx);
	a->name = strdup(nm);
	a->r = R;
	a->alpha = 2 * R;
	a->n_modules = 2 * L;
	a->modules = calloc(a->n_modules, sizeof *a->modules);
	for (int l = 0; l < L; l++)
		for (int j = 0; j < 2; j++) {
			struct lora_module *m = &a->modules[2 * l + j];
			char mn[96];
			snprintf(mn, sizeof mn, "model.layers.%d.self_attn.%s", l, j ? "v_proj" : "q_proj");
			m->module = strdup(mn);
			m->r = R;
			m->alpha = 2 * R;
			int out = j ? NKV * HS : NH * HS;
			struct lora_err err;
			lora_tensor_alloc2(&m->a, LORA_F32, R, C, &err);
			lora_tensor_alloc2(&m->b, LORA_F32, out, R, &err);
			float *pa = m->a.data, *pb = m->b.data;
			for (int i = 0; i < R * C; i++)
				pa[i] = bench_frand() / sqrtf((float)C);
			for (int i = 0; i < out * R; i++)
				pb[i] = bench_frand() * 0.01f;
		}
}

int main(int argc, char **argv)
{
	(void)argc;
	/* the same OpenBLAS kernels the tools get (lib/cpu.h) */
	lora_cpu_fast_blas_reexec(argv);
	printf("%s: OpenBLAS core %s\n", "bench_forward", openblas_get_corename());
	const char *tok = getenv("LORA_BENCH_TOKENIZER");
	char tokbuf[1024];
	if (!tok) {
		const char *sh = getenv("LORA_SHARED");
		snprintf(tokbuf, sizeof tokbuf, "%s/stories260K-hf/tokenizer.json", sh ? sh : "../shared/data");
		tok = tokbuf;
	}
	if (access(tok, R_OK) != 0) {
		printf("bench_forward: skip (no tokenizer.json at %s)\n", tok);
		return 0;
	}
	char dir[400];
	snprintf(dir, sizeof dir, "%.300s/lora-bench-smollm.%ld", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
		 (long)getpid());
	if (write_model(dir, tok) < 0) {
		fprintf(stderr, "bench_forward: cannot write the model into %s\n", dir);
		return 1;
	}
	struct lora_err err = {0};
	struct lora_model *m = NULL;
	if (lora_model_open(dir, &m, &err) < 0) {
		fprintf(stderr, "bench_forward: %s\n", err.msg);
		return 1;
	}
	int32_t in[NSEQ][NIN], tg[NSEQ][NTG];
	struct lora_seq seqs[NSEQ];
	for (int s = 0; s < NSEQ; s++) {
		in[s][0] = 1;
		for (int i = 1; i < NIN; i++)
			in[s][i] = (int32_t)((bench_frand() + 1.0f) * 0.5f * (V - 1));
		for (int i = 0; i < NTG; i++)
			tg[s][i] = (int32_t)((bench_frand() + 1.0f) * 0.5f * (V - 1));
		seqs[s] = (struct lora_seq){in[s], NIN, tg[s], NTG};
	}
	float nll[NSEQ * NTG];
	int T = NSEQ * (NIN + NTG - 1);
	double nonemb = (double)L * (2.0 * C * NH * HS + 2.0 * C * NKV * HS + 3.0 * C * F);
	int len = NIN + NTG - 1;
	double attn = (double)NSEQ * L * NH * 2.0 * 2.0 * HS * (len * (len + 1) / 2.0);
	double flop = 2.0 * nonemb * T + attn + 2.0 * NSEQ * NTG * (double)C * V;
	lora_model_nll(m, seqs, NSEQ, nll, &err);	/* warm up */
	/* forward and plain sgemm interleaved, best of each: the hosts are
	 * shared and noisy, and both sides should see the same conditions */
	double fwd = 1e30, blas = 0;
	for (int rep = 0; rep < 3; rep++) {
		double t0 = bench_now();
		if (lora_model_nll(m, seqs, NSEQ, nll, &err) < 0) {
			fprintf(stderr, "bench_forward: %s\n", err.msg);
			return 1;
		}
		double dt = bench_now() - t0, b = sgemm_rate(T);
		fwd = dt < fwd ? dt : fwd;
		blas = b > blas ? b : blas;
	}
	double rate = flop / fwd / 1e9;
	printf("bench_forward: smollm-135m f32 nll 5x200 tokens: %.3f s, %.0f tok/s, %.1f GFLOP/s; "
	       "sgemm on the same shapes: %.1f GFLOP/s; ratio %.0f%% (target >= 70%%)\n",
	       fwd, T / fwd, rate, blas, 100 * rate / blas);

	/* a new candidate in a pool of 20: merge + attach + forward */
	struct lora_adapter pool[POOL];
	const struct lora_adapter *pp[POOL];
	double w[POOL];
	for (int i = 0; i < POOL; i++) {
		make_adapter(&pool[i], i);
		pp[i] = &pool[i];
		w[i] = 0.05 * (i % 7) - 0.1;
	}
	struct lora_merge_params mp = lora_merge_default_params();
	mp.method = LORA_MERGE_LORAHUB;
	/* Paired runs, sandwiched: base, candidate, base, candidate, ..., base.
	 * Each candidate is compared with the mean of the plain forwards just
	 * before and after it, which cancels a load that drifts linearly over
	 * the ~2 s of the three; the median and the quartiles of NCAND such
	 * pairs are reported (a noisy 2-core host gives a few wild pairs, which
	 * the median ignores). Two in three candidates run the default path
	 * (deltas unmerged), one in three the folded one (LORA_LINEAR_FOLD=1:
	 * deltas folded into a scratch copy of the weight for this prompt-sized
	 * batch; read at attach time). Wall time and process CPU time (both
	 * threads) are recorded; the forward part excludes merge + attach. */
	enum { NCAND = 15, NU = NCAND - NCAND / 3, NF = NCAND / 3 };
	double bw[NCAND + 1], bc[NCAND + 1];	/* the plain forwards: wall, CPU */
	double cw[NCAND], cc[NCAND], cf[NCAND], cm[NCAND], ca[NCAND];
	bool folded[NCAND];
	double best_base = 1e30, best_u = 1e30, best_f = 1e30;
	for (int k = 0; k <= 2 * NCAND; k++) {
		int i = k / 2;
		bool cand = k % 2;
		struct lora_adapter merged = {0};
		if (cand)
			folded[i] = i % 3 == 2;
		setenv("LORA_LINEAR_FOLD", cand && folded[i] ? "1" : "0", 1);
		double t0 = bench_now(), c0 = bench_cpu_now(), t1 = t0, ta = t0;
		if (!cand) {
			lora_model_set_adapter(m, NULL, NULL);
		} else {
			if (lora_merge(pp, POOL, w, &mp, &merged, NULL, &err) < 0) {
				fprintf(stderr, "bench_forward: %s\n", err.msg);
				return 1;
			}
			ta = bench_now();
			if (lora_model_set_adapter(m, &merged, &err) < 0) {
				fprintf(stderr, "bench_forward: %s\n", err.msg);
				return 1;
			}
			t1 = bench_now();
		}
		if (lora_model_nll(m, seqs, NSEQ, nll, &err) < 0) {
			fprintf(stderr, "bench_forward: %s\n", err.msg);
			return 1;
		}
		double t2 = bench_now(), c2 = bench_cpu_now();
		lora_adapter_free(&merged);
		if (!cand) {
			bw[i] = t2 - t0;
			bc[i] = c2 - c0;
			best_base = bw[i] < best_base ? bw[i] : best_base;
		} else {
			cw[i] = t2 - t0;
			cc[i] = c2 - c0;
			cf[i] = t2 - t1;
			cm[i] = ta - t0;
			ca[i] = t1 - ta;
			double *b = folded[i] ? &best_f : &best_u;
			*b = cw[i] < *b ? cw[i] : *b;
		}
	}
	unsetenv("LORA_LINEAR_FOLD");
	lora_model_set_adapter(m, NULL, NULL);
	/* per pair: (candidate - mean of its two plain forwards) / that mean */
	double ow[2][NCAND], oc[2][NCAND], of[2][NCAND], mm[NCAND], ma[NCAND];
	int no[2] = {0, 0};
	for (int i = 0; i < NCAND; i++) {
		int g = folded[i];
		double b = 0.5 * (bw[i] + bw[i + 1]), c = 0.5 * (bc[i] + bc[i + 1]);
		ow[g][no[g]] = 100 * (cw[i] - b) / b;
		oc[g][no[g]] = 100 * (cc[i] - c) / c;
		of[g][no[g]++] = 100 * (cf[i] - b) / b;
		mm[i] = cm[i] * 1e3;
		ma[i] = ca[i] * 1e3;
	}
	fwd = best_base < fwd ? best_base : fwd;
	struct q3 uw = quartiles(ow[0], NU), uf = quartiles(of[0], NU), uc = quartiles(oc[0], NU);
	struct q3 fw = quartiles(ow[1], NF), ff = quartiles(of[1], NF), fc = quartiles(oc[1], NF);
	struct q3 qm = quartiles(mm, NCAND), qa = quartiles(ma, NCAND);
	printf("bench_forward: new candidate in a pool of %d (r %d, q/v), unmerged (the default): "
	       "median of %d sandwiched pairs %.1f%% wall (quartiles %.1f..%.1f%%, range %.1f..%.1f%%), "
	       "forward part %.1f%% (%.1f..%.1f%%), %.1f%% CPU (%.1f..%.1f%%) (target <= 2%%)\n",
	       POOL, R, NU, uw.med, uw.lo, uw.hi, uw.min, uw.max, uf.med, uf.lo, uf.hi, uc.med, uc.lo,
	       uc.hi);
	printf("bench_forward: same, folded (LORA_LINEAR_FOLD=1): median of %d pairs %.1f%% wall "
	       "(quartiles %.1f..%.1f%%), forward part %.1f%% (%.1f..%.1f%%), %.1f%% CPU "
	       "(%.1f..%.1f%%)\n",
	       NF, fw.med, fw.lo, fw.hi, ff.med, ff.lo, ff.hi, fc.med, fc.lo, fc.hi);
	printf("bench_forward: merge %.2f ms (quartiles %.2f..%.2f) + attach %.2f ms (%.2f..%.2f) "
	       "of a %.3f s forward (%.2f%%); best-of: forward %.3f s, candidate unmerged %.3f s "
	       "(%.1f%%), folded %.3f s (%.1f%%)\n",
	       qm.med, qm.lo, qm.hi, qa.med, qa.lo, qa.hi, fwd, 100 * (qm.med + qa.med) * 1e-3 / fwd,
	       best_base, best_u, 100 * (best_u - best_base) / best_base, best_f,
	       100 * (best_f - best_base) / best_base);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double wb = (double)lora_model_info(m)->weight_bytes;
	printf("bench_forward: peak RSS %.0f MB for %.0f MB of weights on disk (%.2fx; includes the "
	       "sgemm check's and the pool's buffers)\n",
	       ru.ru_maxrss / 1024.0, wb / 1048576.0, ru.ru_maxrss * 1024.0 / wb);
	for (int i = 0; i < POOL; i++)
		lora_adapter_free(&pool[i]);
	lora_model_close(m);
	char cmd[700];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd) != 0;
}
