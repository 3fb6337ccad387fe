/*
 * test_t5 — the T5 forward passes (lib/t5.c) through lora_model_open:
 *
 * 1. Goldens from Hugging Face transformers 4.36.2 (float32, see
 *    $LORA_SHARED/golden/README.md) for models/t5-tiny (v1.1 style: gated-gelu,
 *    untied head) and models/t5-tiny-v1 (v1.0 style: relu, tied head with the
 *    d_model**-0.5 rescale), for each eval/<model>/<run>.json: base, the two
 *    extra adapters (unmerged), and lorahub_wA/wB (pool_0..4 merged with
 *    lora_merge's LoraHub rule):
 *      per-example loss (1e-4 relative; one unpadded forward per example, as
 *      HF computed it), token_nll, hf_batch_loss from one batched nll over
 *      all six examples (1e-4 relative), logits first8 / target_rows from
 *      logits/<model>/<run>.safetensors (1e-4 absolute), greedy generation
 *      ids (max_new_tokens 8) exactly.
 *    The golden input_ids / target_ids are used directly (the tokenizer is
 *    tested on its own).
 * 2. A generated tiny T5 (tests/unit/t5_gen.py, python3 + numpy): tied head,
 *    explicit encoder.embed_tokens, bf16 weights vs their exact f32 upcast
 *    (same loss to 1e-6) and vs the unrounded f32 originals (bf16
 *    tolerance); config errors (unknown feed_forward_proj, a missing
 *    lm_head when untied, a mis-shaped weight) refused with the name.
 * Everything skips when $LORA_SHARED is unset (the generated model borrows
 * the real T5 tokenizer.json, which lora_model_open requires).
 */
#include "check.h"
#include "doc.h"
#include "merge.h"
#include "model.h"
#include "peft.h"
#include "st.h"

#include <stdint.h>

struct example {
	int32_t *in, *tg, *gen;
	size_t n_in, n_tg, n_gen;
	double loss;
	double *token_nll;
};

static int32_t *ids_of(const struct lora_doc *arr, size_t *n)
{
	*n = arr && arr->type == LORA_DOC_ARRAY ? arr->u.arr.n : 0;
	int32_t *v = calloc(*n + 1, sizeof *v);
	for (size_t i = 0; i < *n; i++)
		v[i] = (int32_t)arr->u.arr.items[i].u.i;
	return v;
}

static double num(const struct lora_doc *d)
{
	return d->type == LORA_DOC_INT ? (double)d->u.i : d->u.f;
}

/* Attach the adapter a run needs: none, one PEFT directory, or the pool
 * merged with the run's weights by the LoraHub rule. */
static int attach(struct lora_model *m, const struct lora_doc *run, struct lora_adapter *keep,
		  struct lora_err *err)
{
	char path[4096];
	const struct lora_doc *ad = lora_doc_get(run, "adapter");
	const struct lora_doc *pool = lora_doc_get(run, "pool");
	const struct lora_doc *w = lora_doc_get(run, "weights");
	memset(keep, 0, sizeof *keep);
	if (ad && ad->type == LORA_DOC_STRING) {
		snprintf(path, sizeof path, "%s/%s", check_shared("golden"), ad->u.str.s);
		int rc = lora_peft_read(path, keep, err);
		return rc < 0 ? rc : lora_model_set_adapter(m, keep, err);
	}
	if (pool && pool->type == LORA_DOC_ARRAY && w && w->type == LORA_DOC_ARRAY) {
		size_t n = pool->u.arr.n;
		struct lora_adapter *ps = calloc(n, sizeof *ps);
		const struct lora_adapter **pp = calloc(n, sizeof *pp);
		double *wv = calloc(n, sizeof *wv);
		int rc = 0;
		for (size_t i = 0; i < n && rc == 0; i++) {
			snprintf(path, sizeof path, "%s/%s", check_shared("golden"),
				 pool->u.arr.items[i].u.str.s);
			rc = lora_peft_read(path, &ps[i], err);
			pp[i] = &ps[i];
			wv[i] = num(&w->u.arr.items[i]);
		}
		struct lora_merge_params p = lora_merge_default_params();
		p.method = LORA_MERGE_LORAHUB;
		if (rc == 0)
			rc = lora_merge(pp, n, wv, &p, keep, NULL, err);
		for (size_t i = 0; i < n; i++)
			lora_adapter_free(&ps[i]);
		free(ps);
		free(pp);
		free(wv);
		return rc < 0 ? rc : lora_model_set_adapter(m, keep, err);
	}
	return lora_model_set_adapter(m, NULL, err);
}

static void check_logits(struct lora_model *m, const struct example *ex, const char *lpath,
			 const char *what)
{
	struct lora_err err = { 0 };
	struct lora_st *st = NULL;
	if (lora_st_open(lpath, &st, &err) < 0) {
		check(0, "%s: open logits golden (%s)", what, err.msg);
		return;
	}
	struct lora_seq seq = { ex->in, ex->n_in, ex->tg, ex->n_tg };
	float *lg = NULL;
	size_t rows = 0;
	int rc = lora_model_logits(m, &seq, &lg, &rows, &err);
	int V = lora_model_info(m)->vocab;
	if (!check(rc == 0 && rows == ex->n_tg, "%s: logits of example 0 (%zu rows) %s", what, rows,
		   rc ? err.msg : "")) {
		lora_st_close(st);
		return;
	}
	const char *names[] = { "first8", "target_rows" };
	for (int k = 0; k < 2; k++) {
		const struct lora_st_tensor *t = lora_st_find(st, names[k]);
		char w[512];
		snprintf(w, sizeof w, "%s: logits %s", what, names[k]);
		if (!check(t && t->ndim == 2 && t->shape[1] == V && (size_t)t->shape[0] <= rows,
			   "%s has shape [<=%zu, %d]", w, rows, V))
			continue;
		float *want = malloc(t->nbytes);
		memcpy(want, t->data, t->nbytes);
		check_close_f32(lg, want, (size_t)t->shape[0] * V, 1e-4, 0, w);
		free(want);
	}
	free(lg);
	lora_st_close(st);
}

/* One eval/<model>/<run>.json against the model. */
static void check_run(struct lora_model *m, const char *model, const char *run)
{
	char rel[512], what[256];
	snprintf(rel, sizeof rel, "golden/eval/%s/%s.json", model, run);
	snprintf(what, sizeof what, "%s/%s", model, run);
	const char *path = check_shared(rel);
	if (!path) {
		check_skip("%s (no %s)", what, rel);
		return;
	}
	struct lora_err err = { 0 };
	struct lora_doc *d = NULL;
	if (!check(lora_doc_parse_file(path, &d, &err) == 0, "%s: parse golden %s", what, err.msg))
		return;
	struct lora_adapter ad;
	if (!check(attach(m, d, &ad, &err) == 0, "%s: attach adapter %s", what, err.msg)) {
		lora_adapter_free(&ad);
		lora_doc_free(d);
		return;
	}
	const struct lora_doc *exs = lora_doc_get(d, "examples");
	size_t n = exs->u.arr.n, total = 0;
	struct example *ex = calloc(n, sizeof *ex);
	struct lora_seq *seqs = calloc(n, sizeof *seqs);
	for (size_t i = 0; i < n; i++) {
		const struct lora_doc *e = &exs->u.arr.items[i];
		ex[i].in = ids_of(lora_doc_get(e, "input_ids"), &ex[i].n_in);
		ex[i].tg = ids_of(lora_doc_get(e, "target_ids"), &ex[i].n_tg);
		ex[i].gen = ids_of(lora_doc_get(lora_doc_get(e, "generation"), "ids"), &ex[i].n_gen);
		ex[i].loss = num(lora_doc_get(e, "loss"));
		const struct lora_doc *tn = lora_doc_get(e, "token_nll");
		ex[i].token_nll = calloc(ex[i].n_tg + 1, sizeof(double));
		for (size_t k = 0; k < ex[i].n_tg; k++)
			ex[i].token_nll[k] = num(&tn->u.arr.items[k]);
		seqs[i] = (struct lora_seq){ ex[i].in, ex[i].n_in, ex[i].tg, ex[i].n_tg };
		total += ex[i].n_tg;
	}

	/* one batched pass over all examples: token NLLs and HF's batch loss */
	float *nll = calloc(total, sizeof *nll);
	float *want = calloc(total, sizeof *want);
	int rc = lora_model_nll(m, seqs, n, nll, &err);
	check(rc == 0, "%s: batched nll over %zu examples, %zu tokens %s", what, n, total,
	      rc ? err.msg : "");
	double sum = 0;
	for (size_t i = 0, o = 0; i < n; i++)
		for (size_t k = 0; k < ex[i].n_tg; k++, o++) {
			want[o] = (float)ex[i].token_nll[k];
			sum += nll[o];
		}
	snprintf(rel, sizeof rel, "%s: token_nll (batched)", what);
	check_close_f32(nll, want, total, 0, 1e-4, rel);
	snprintf(rel, sizeof rel, "%s: hf_batch_loss", what);
	check_near(sum / (double)total, num(lora_doc_get(d, "hf_batch_loss")), 0, 1e-4, rel);

	/* per-example forwards (HF's loss: one unpadded forward each) */
	double worst = 0;
	int bad = 0;
	for (size_t i = 0; i < n; i++) {
		rc = lora_model_nll(m, &seqs[i], 1, nll, &err);
		double s = 0;
		for (size_t k = 0; k < ex[i].n_tg; k++)
			s += nll[k];
		double rd = fabs(s / (double)ex[i].n_tg - ex[i].loss) / fabs(ex[i].loss);
		if (rc < 0 || !(rd <= 1e-4))
			bad++;
		if (!(rd <= worst))
			worst = rd;
	}
	check(bad == 0, "%s: per-example loss of %zu examples, max relative diff %.3g (tol 1e-4)",
	      what, n, worst);

	/* greedy generation, ids exactly */
	bad = 0;
	for (size_t i = 0; i < n; i++) {
		int32_t out[8];
		size_t n_out = 0;
		rc = lora_model_generate(m, ex[i].in, ex[i].n_in, 8, out, &n_out, &err);
		if (rc < 0 || n_out != ex[i].n_gen || memcmp(out, ex[i].gen, n_out * sizeof *out)) {
			bad++;
			printf("# %s example %zu: generated", what, i);
			for (size_t k = 0; k < n_out; k++)
				printf(" %d", out[k]);
			printf(", want");
			for (size_t k = 0; k < ex[i].n_gen; k++)
				printf(" %d", ex[i].gen[k]);
			printf("%s%s\n", rc ? " error: " : "", rc ? err.msg : "");
		}
	}
	check(bad == 0, "%s: greedy generation ids of %zu examples (%d differ)", what, n, bad);

	snprintf(rel, sizeof rel, "golden/logits/%s/%s.safetensors", model, run);
	const char *lpath = check_shared(rel);
	if (lpath)
		check_logits(m, &ex[0], lpath, what);

	for (size_t i = 0; i < n; i++) {
		free(ex[i].in);
		free(ex[i].tg);
		free(ex[i].gen);
		free(ex[i].token_nll);
	}
	free(ex);
	free(seqs);
	free(nll);
	free(want);
	lora_model_set_adapter(m, NULL, NULL);
	lora_adapter_free(&ad);
	lora_doc_free(d);
}

/* lib/t5.c runs a packed encoder call of at least 128 rows per worker in
 * row phases (each worker takes a slice of the token rows through norm,
 * products and activation) and shorter calls step by step (products split
 * by weight rows): with the run's adapter attached, a 100-token input scored
 * alone (step path) and packed after a 300-token one (row phases) must agree
 * to float rounding. */
static void check_row_phases(struct lora_model *m, const char *model, const char *run)
{
	char rel[512];
	snprintf(rel, sizeof rel, "golden/eval/%s/%s.json", model, run);
	const char *path = check_shared(rel);
	if (!path) {
		check_skip("%s/%s row phases (no %s)", model, run, rel);
		return;
	}
	struct lora_err err = { 0 };
	struct lora_doc *d = NULL;
	if (!check(lora_doc_parse_file(path, &d, &err) == 0, "%s/%s: parse %s", model, run, err.msg))
		return;
	struct lora_adapter ad;
	int V = lora_model_info(m)->vocab;
	static int32_t in[400];
	int32_t tg[5] = { 5, 9, 3, 12, 1 };
	for (int i = 0; i < 400; i++)
		in[i] = 2 + (i * 7 + i / 11) % (V - 2);
	in[299] = in[399] = 1;
	struct lora_seq both[2] = { { in, 300, tg, 5 }, { in + 300, 100, tg, 5 } };
	float packed[10], alone[5];
	if (check(attach(m, d, &ad, &err) == 0 && V > 13, "%s/%s: attach adapter %s", model, run,
		  err.msg) &&
	    check(lora_model_nll(m, both, 2, packed, &err) == 0 &&
		  lora_model_nll(m, &both[1], 1, alone, &err) == 0, "%s/%s: nll %s", model, run,
		  err.msg)) {
		char what[256];
		snprintf(what, sizeof what, "%s/%s: encoder row phases == step-by-step path", model,
			 run);
		check_close_f32(packed + 5, alone, 5, 0, 1e-5, what);
	}
	lora_model_set_adapter(m, NULL, NULL);
	lora_adapter_free(&ad);
	lora_doc_free(d);
}

static void check_model(const char *model)
{
	char rel[256];
	snprintf(rel, sizeof rel, "golden/models/%s", model);
	const char *dir = check_shared(rel);
	if (!dir) {
		check_skip("%s goldens (LORA_SHARED unset or no %s)", model, rel);
		return;
	}
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };
	if (!check(lora_model_open(dir, &m, &err) == 0, "open %s %s", model, err.msg))
		return;
	const struct lora_model_info *info = lora_model_info(m);
	check(info->encoder_decoder && info->decoder_start == 0 && info->eos == 1,
	      "%s: info says encoder-decoder, decoder_start 0, eos 1", model);
	const char *runs[] = { "base", "extra_r8_qkvo", "extra_r2_ffn_rslora", "lorahub_wA",
			       "lorahub_wB" };
	for (size_t i = 0; i < sizeof runs / sizeof *runs; i++)
		check_run(m, model, runs[i]);
	check_row_phases(m, model, "extra_r8_qkvo");
	check_row_phases(m, model, "extra_r2_ffn_rslora");
	lora_model_close(m);
}

/* ---- generated models ---- */

static const char *python_with_numpy(void)
{
	static const char *cands[] = { "/usr/bin/python3", "python3" };
	for (size_t i = 0; i < 2; i++) {
		char cmd[256];
		snprintf(cmd, sizeof cmd, "%s -c 'import numpy' >/dev/null 2>&1", cands[i]);
		if (system(cmd) == 0)
			return cands[i];
	}
	return NULL;
}

/* Mean NLL of two fixed sequences, or NAN (with the error printed). */
static double gen_loss(const char *dir, int32_t *gen_out, size_t *n_gen)
{
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };
	if (lora_model_open(dir, &m, &err) < 0) {
		printf("# open %s: %s\n", dir, err.msg);
		return NAN;
	}
	int32_t in0[] = { 5, 9, 17, 3, 22, 1 }, tg0[] = { 7, 8, 1 };
	int32_t in1[] = { 30, 2, 11, 40, 41, 42, 43, 44, 45, 12, 1 }, tg1[] = { 4, 6, 19, 21, 1 };
	struct lora_seq seqs[] = { { in0, 6, tg0, 3 }, { in1, 11, tg1, 5 } };
	float nll[8];
	double s = NAN;
	if (lora_model_nll(m, seqs, 2, nll, &err) == 0) {
		s = 0;
		for (int i = 0; i < 8; i++)
			s += nll[i];
		s /= 8;
	} else {
		printf("# nll %s: %s\n", dir, err.msg);
	}
	if (gen_out && lora_model_generate(m, in1, 11, 6, gen_out, n_gen, &err) < 0)
		*n_gen = 0;
	lora_model_close(m);
	return s;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	return system(cmd);
}

static void expect_refusal(const char *dir, const char *needle, const char *what)
{
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };
	int rc = lora_model_open(dir, &m, &err);
	check(rc < 0 && strstr(err.msg, needle) != NULL, "%s is refused naming '%s' (%s)", what,
	      needle, rc < 0 ? err.msg : "opened");
	lora_model_close(m);
}

/* Attention over more rows than one query block of lib/t5.c (its blocks
 * hold 256 KB of scores: 218 rows of 300 keys): the decoder is causal across
 * blocks (changing targets 250.. leaves the NLL of positions 0..249 as it
 * was), and greedy decoding (one query row at a time, KV cache) agrees with
 * the batched teacher-forced forward on its own output (each generated id
 * is the argmax of its logits row). longin holds at least 310 ids in range. */
static void check_long_attention(struct lora_model *m, const int32_t *longin)
{
	enum { NT = 300, CUT = 250 };
	struct lora_err err = { 0 };
	static int32_t tg[2][NT];
	static float na[NT], nb[NT];
	for (int i = 0; i < NT; i++)
		tg[0][i] = tg[1][i] = 2 + (i * 5 + 3) % 60;
	for (int i = CUT; i < NT; i++)
		tg[1][i] = 2 + (i * 11 + 7) % 60;
	struct lora_seq a = { longin, NT, tg[0], NT }, b = { longin, NT, tg[1], NT };
	if (!check(lora_model_nll(m, &a, 1, na, &err) == 0 && lora_model_nll(m, &b, 1, nb, &err) == 0,
		   "nll of %d + %d tokens %s", NT, NT, err.msg))
		return;
	check_close_f32(nb, na, CUT, 0, 1e-6, "causal across query blocks: later targets change "
			"nothing before them");
	int diff = 0;
	for (int i = CUT; i < NT; i++)
		diff += na[i] != nb[i];
	check(diff > 0, "and the changed targets do change their own NLLs (%d of %d)", diff, NT - CUT);

	static int32_t gen[NT];
	size_t ng = 0;
	if (!check(lora_model_generate(m, longin + 7, NT, NT, gen, &ng, &err) == 0 && ng > 0,
		   "generate up to %d tokens %s", NT, err.msg))
		return;
	struct lora_seq g = { longin + 7, NT, gen, ng };
	float *lg = NULL;
	size_t rows = 0;
	int V = lora_model_info(m)->vocab, agree = 0;
	if (!check(lora_model_logits(m, &g, &lg, &rows, &err) == 0 && rows == ng,
		   "logits of the generated sequence %s", err.msg))
		return;
	for (size_t i = 0; i < ng; i++) {
		int best = 0;
		for (int j = 1; j < V; j++)
			best = lg[i * V + j] > lg[i * V + best] ? j : best;
		agree += best == gen[i];
	}
	free(lg);
	check(agree == (int)ng, "greedy ids are the argmax of the batched forward's logits (%d of %zu)",
	      agree, ng);
}

/* API edge cases on a generated model: an empty target inside a batch, a
 * zero-length generation, ids out of range, logits consistent with nll. */
static void check_edges(const char *dir)
{
	struct lora_model *m = NULL;
	struct lora_err err = { 0 };
	if (!check(lora_model_open(dir, &m, &err) == 0, "open %s %s", dir, err.msg))
		return;
	int32_t in0[] = { 5, 9, 17, 3, 22, 1 }, tg0[] = { 7, 8, 1 };
	int32_t in1[] = { 30, 2, 11, 40, 1 }, tg1[] = { 4, 6, 1 };
	struct lora_seq two[] = { { in0, 6, tg0, 3 }, { in1, 5, tg1, 3 } };
	struct lora_seq three[] = { two[0], { in1, 5, tg1, 0 }, two[1] };
	float a[6], b[6];
	int rc1 = lora_model_nll(m, two, 2, a, &err);
	int rc2 = lora_model_nll(m, three, 3, b, &err);
	check(rc1 == 0 && rc2 == 0, "nll with and without an empty target in the batch");
	/* (the packed encoder batch differs, so sgemm may round differently) */
	check_close_f32(b, a, 6, 0, 1e-5, "a sequence with no target tokens changes nothing else");
	float *lg = NULL;
	size_t rows = 0;
	int V = lora_model_info(m)->vocab;
	if (check(lora_model_logits(m, &two[1], &lg, &rows, &err) == 0 && rows == 3,
		  "logits of one sequence: 3 rows")) {
		float want[3];
		for (int i = 0; i < 3; i++) {
			double mx = -INFINITY, z = 0;
			for (int j = 0; j < V; j++)
				mx = lg[i * V + j] > mx ? lg[i * V + j] : mx;
			for (int j = 0; j < V; j++)
				z += exp(lg[i * V + j] - mx);
			want[i] = (float)(mx + log(z) - lg[i * V + tg1[i]]);
		}
		check_close_f32(a + 3, want, 3, 1e-5, 1e-5, "nll rows == -log_softmax(logits)[target]");
	}
	free(lg);
	int32_t out[4] = { -7, -7, -7, -7 };
	size_t n_out = 99;
	check(lora_model_generate(m, in0, 6, 0, out, &n_out, &err) == 0 && n_out == 0 && out[0] == -7,
	      "generate with max_new 0 writes nothing");
	int32_t bad[] = { 5, 64, 1 };
	struct lora_seq bs = { bad, 3, tg0, 3 };
	int rc = lora_model_nll(m, &bs, 1, a, &err);
	check(rc < 0 && strstr(err.msg, "64"), "an input id outside the vocabulary is refused (%s)",
	      rc < 0 ? err.msg : "accepted");
	struct lora_seq empty = { in0, 0, tg0, 3 };
	rc = lora_model_nll(m, &empty, 1, a, &err);
	check(rc < 0, "an empty input is refused (%s)", rc < 0 ? err.msg : "accepted");
	/* 2002 + 1003 + 2002 tokens: t5_nll packs at most 4096 per forward, so
	 * this runs as two groups; each sequence must score as it does alone */
	int32_t *longin = malloc(2000 * sizeof *longin);
	for (int i = 0; i < 2000; i++)
		longin[i] = 2 + (i * 7 + i / 13) % 60;
	longin[1999] = 1;
	struct lora_seq big[3] = { { longin, 2000, tg0, 2 }, { longin + 1000, 1000, tg1, 3 },
				   { longin, 2000, tg1, 2 } };
	float g[7], one[3];
	rc = lora_model_nll(m, big, 3, g, &err);
	int ok = rc == 0;
	size_t o = 0;
	double worst = 0;
	for (int k = 0; k < 3 && ok; k++) {
		ok = lora_model_nll(m, &big[k], 1, one, &err) == 0;
		for (size_t i = 0; i < big[k].n_target; i++, o++) {
			double d = fabs(g[o] - one[i]) / fabs(one[i]);
			worst = d > worst ? d : worst;
		}
	}
	check(ok && worst <= 1e-5, "long sequences split into groups score as alone (max rel diff %.3g)",
	      worst);
	check_long_attention(m, longin);
	free(longin);
	lora_model_close(m);
}

/* The reference numbers t5_gen.py wrote (float64 numpy forward). */
static int expected(const char *dir, double *loss, int32_t *gen, size_t *n_gen)
{
	char p[4200];
	snprintf(p, sizeof p, "%s/expected.json", dir);
	struct lora_doc *d = NULL;
	if (lora_doc_parse_file(p, &d, NULL) < 0)
		return -1;
	*loss = num(lora_doc_get(d, "loss"));
	const struct lora_doc *g = lora_doc_get(d, "generation");
	*n_gen = g->u.arr.n < 8 ? g->u.arr.n : 8;
	for (size_t i = 0; i < *n_gen; i++)
		gen[i] = (int32_t)g->u.arr.items[i].u.i;
	lora_doc_free(d);
	return 0;
}

static void check_reference(const char *dir, double loss, const int32_t *gen, size_t n_gen,
			    const char *what)
{
	double want;
	int32_t wg[8];
	size_t nw = 0;
	if (!check(expected(dir, &want, wg, &nw) == 0, "%s: read expected.json", what))
		return;
	char w[256];
	snprintf(w, sizeof w, "%s: loss against the float64 numpy reference", what);
	check_near(loss, want, 0, 1e-5, w);
	check(n_gen == nw && memcmp(gen, wg, nw * sizeof *gen) == 0,
	      "%s: greedy ids equal the reference's (%zu ids)", what, nw);
}

static void check_generated(const char *gen)
{
	const char *tokjson = check_shared("t5-tokenizer/tokenizer.json");
	const char *py = python_with_numpy();
	if (!tokjson || !py || !gen) {
		check_skip("generated tiny T5 (%s)", !tokjson ? "LORA_SHARED unset" :
			   !py ? "no python3 with numpy" : "t5_gen.py not found");
		return;
	}
	/* (check_tmpdir trips -Wformat-truncation when inlined here at -O2) */
	char tmp[2048];
	const char *root = getenv("LORA_TMP");
	snprintf(tmp, sizeof tmp, "%s/test_t5", root && *root ? root : "/tmp");
	if (!check(sh("rm -rf '%s' && mkdir -p '%s'", tmp, tmp) == 0, "make %s", tmp))
		return;
	const char *variants[] = { "f32", "bf16", "f32r", "untied" };
	char d[4][4200];
	for (int i = 0; i < 4; i++) {
		snprintf(d[i], sizeof d[i], "%s/%s", tmp, variants[i]);
		if (!check(sh("%s '%s' '%s' %s %s && cp '%s' '%s/'", py, gen, d[i],
			      i == 3 ? "f32" : variants[i], i == 3 ? "untied" : "tied", tokjson,
			      d[i]) == 0, "generate tiny T5 (%s)", variants[i]))
			return;
	}
	int32_t g[4][8];
	size_t ng[4] = { 0 };
	double l[4];
	for (int i = 0; i < 4; i++)
		l[i] = gen_loss(d[i], g[i], &ng[i]);
	printf("# generated model losses: f32 %.9g, bf16 %.9g, f32 upcast of bf16 %.9g, untied %.9g\n",
	       l[0], l[1], l[2], l[3]);
	check_reference(d[0], l[0], g[0], ng[0], "tied gated-gelu f32 (explicit embed_tokens)");
	check_reference(d[3], l[3], g[3], ng[3], "untied relu f32");
	check_reference(d[1], l[1], g[1], ng[1], "tied gated-gelu bf16");
	check_near(l[2], l[1], 0, 1e-6, "bf16 weights == their exact f32 upcast (loss)");
	check_near(l[1], l[0], 0, 5e-3, "bf16 weights within bf16 tolerance of the f32 originals");
	check_edges(d[3]);

	/* without lm_head.weight an untied config must be refused naming it */
	sh("%s -c \"import json,sys;p=sys.argv[1];c=json.load(open(p));"
	   "c['tie_word_embeddings']=False;json.dump(c,open(p,'w'))\" '%s/config.json'", py, d[0]);
	expect_refusal(d[0], "lm_head.weight", "an untied config without lm_head.weight");
	/* an unknown feed_forward_proj */
	sh("%s -c \"import json,sys;p=sys.argv[1];c=json.load(open(p));"
	   "c['feed_forward_proj']='gated-swishy';json.dump(c,open(p,'w'))\" '%s/config.json'", py, d[1]);
	expect_refusal(d[1], "gated-swishy", "feed_forward_proj 'gated-swishy'");
	/* a d_ff that disagrees with the weights */
	sh("%s -c \"import json,sys;p=sys.argv[1];c=json.load(open(p));"
	   "c['d_ff']=c['d_ff']+1;json.dump(c,open(p,'w'))\" '%s/config.json'", py, d[2]);
	expect_refusal(d[2], "DenseReluDense.wi", "a d_ff that disagrees with the weights");
}

/* tests/unit/t5_gen.py in the source tree: next to $LORA_BUILD or $LORA_TMP
 * (tests/run.sh sets both under the top directory), or under the cwd. */
static const char *find_gen(void)
{
	static char p[4200];
	const char *roots[] = { getenv("LORA_BUILD"), getenv("LORA_TMP") };
	const char *up[] = { "/..", "/../.." };
	for (int i = 0; i < 2; i++) {
		if (!roots[i])
			continue;
		snprintf(p, sizeof p, "%s%s/tests/unit/t5_gen.py", roots[i], up[i]);
		if (access(p, R_OK) == 0)
			return p;
	}
	snprintf(p, sizeof p, "tests/unit/t5_gen.py");
	return access(p, R_OK) == 0 ? p : NULL;
}

int main(void)
{
	check_model("t5-tiny");
	check_model("t5-tiny-v1");
	check_generated(find_gen());
	return check_done();
}
