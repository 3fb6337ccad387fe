/*
 * test_engine — the inference engine against the Hugging Face goldens in
 * $LORA_SHARED/golden (see golden/README.md §3): for llama-tiny, gpt2-tiny,
 * stories260K (and the tiny T5 models, through lib/t5): per-token NLL and
 * per-example loss (1e-4 relative, from one batched pass over all examples),
 * token-mean loss, greedy generation ids (exact), and logits first8 /
 * target_rows (1e-4 absolute), for the base model, the two extra adapters and
 * the LoraHub-merged pool with weights wA and wB. Then generated tiny models
 * (tests/unit/mkmodel.py, seeded numpy) cover what the goldens do not:
 * llama3 rope_scaling, qwen2 biases, shards, bf16 weights (checked against a
 * float64 numpy reference written by the same script), and the error cases.
 */
#include "arch.h"
#include "check.h"
#include "merge.h"
#include "model.h"
#include "peft.h"
#include "st.h"

#include <stdlib.h>
#include <string.h>

#include <unistd.h>

static const char *const pool_names[5] = {"pool_0", "pool_1", "pool_2", "pool_3", "pool_4"};
static const double wA[5] = {0.4, 0.3, 0.2, 0.6, 0.5};
static const double wB[5] = {0.5, -0.3, 1.2, 0.1, -0.7};

static int32_t *ids_of(const struct lora_doc *arr, size_t *n)
{
	*n = arr ? arr->u.arr.n : 0;
	int32_t *ids = malloc((*n + 1) * sizeof *ids);
	for (size_t i = 0; i < *n; i++)
		ids[i] = (int32_t)arr->u.arr.items[i].u.i;
	return ids;
}

static double num(const struct lora_doc *d)
{
	return d->type == LORA_DOC_INT ? (double)d->u.i : d->u.f;
}

/* Attach the adapter a golden run used: none, an extra adapter, or the pool
 * merged by the LoraHub rule. */
static int attach(struct lora_model *m, const char *model, const char *run, struct lora_err *err)
{
	char rel[512];
	if (strcmp(run, "base") == 0)
		return lora_model_set_adapter(m, NULL, err);
	if (strncmp(run, "lorahub_", 8) == 0) {
		struct lora_adapter pool[5], merged;
		const struct lora_adapter *pp[5];
		memset(pool, 0, sizeof pool);
		int rc = 0;
		for (int i = 0; i < 5 && rc == 0; i++) {
			snprintf(rel, sizeof rel, "golden/adapters/%s/%s", model, pool_names[i]);
			rc = lora_peft_read(check_shared(rel), &pool[i], err);
			pp[i] = &pool[i];
		}
		struct lora_merge_params mp = lora_merge_default_params();
		mp.method = LORA_MERGE_LORAHUB;
		if (rc == 0)
			rc = lora_merge(pp, 5, strcmp(run, "lorahub_wA") == 0 ? wA : wB, &mp, &merged, NULL, err);
		if (rc == 0) {
			rc = lora_model_set_adapter(m, &merged, err);
			lora_adapter_free(&merged);
		}
		for (int i = 0; i < 5; i++)
			lora_adapter_free(&pool[i]);
		return rc;
	}
	snprintf(rel, sizeof rel, "golden/adapters/%s/%s", model, run);
	struct lora_adapter a;
	int rc = lora_peft_read(check_shared(rel), &a, err);
	if (rc == 0) {
		rc = lora_model_set_adapter(m, &a, err);
		lora_adapter_free(&a);
	}
	return rc;
}

/* Parse a golden JSON file. Python's json writes U+007F (DEL) raw inside
 * strings, which JSON allows but libyaml (YAML 1.1) refuses, so escape it
 * first. */
static int parse_golden(const char *path, struct lora_doc **out, struct lora_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return lora_errf(err, LORA_EIO, "cannot open '%s'", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *raw = malloc((size_t)n + 1), *buf = malloc(6 * (size_t)n + 1);
	size_t got = fread(raw, 1, (size_t)n, f), k = 0;
	fclose(f);
	for (size_t i = 0; i < got; i++) {
		if (raw[i] == 0x7f) {
			memcpy(buf + k, "\\u007f", 6);
			k += 6;
		} else {
			buf[k++] = raw[i];
		}
	}
	int rc = lora_doc_parse_buffer(buf, k, path, 1, out, err);
	free(raw);
	free(buf);
	return rc;
}

static void check_run(struct lora_model *m, const char *model, const char *run)
{
	char rel[512];
	struct lora_err err = {0};
	snprintf(rel, sizeof rel, "golden/eval/%s/%s.json", model, run);
	const char *path = check_shared(rel);
	if (!path) {
		check_skip("%s %s: no golden", model, run);
		return;
	}
	struct lora_doc *g = NULL;
	if (!check(parse_golden(path, &g, &err) == 0, "%s %s: parse golden (%s)", model, run, err.msg))
		return;
	if (!check(attach(m, model, run, &err) == 0, "%s %s: attach adapter (%s)", model, run, err.msg)) {
		lora_doc_free(g);
		return;
	}
	const struct lora_doc *ex = lora_doc_get(g, "examples");
	size_t n = ex->u.arr.n, total = 0;
	struct lora_seq *seqs = calloc(n, sizeof *seqs);
	int32_t **in = calloc(n, sizeof *in), **tg = calloc(n, sizeof *tg);
	for (size_t k = 0; k < n; k++) {
		const struct lora_doc *e = &ex->u.arr.items[k];
		in[k] = ids_of(lora_doc_get(e, "input_ids"), &seqs[k].n_input);
		tg[k] = ids_of(lora_doc_get(e, "target_ids"), &seqs[k].n_target);
		seqs[k].input = in[k];
		seqs[k].target = tg[k];
		total += seqs[k].n_target;
	}
	float *nll = calloc(total, sizeof *nll);
	int rc = lora_model_nll(m, seqs, n, nll, &err);
	if (check(rc == 0, "%s %s: batched nll (%s)", model, run, err.msg)) {
		float *want = calloc(total, sizeof *want);
		size_t off = 0;
		double sum = 0, worst_loss = 0;
		int loss_ok = 1;
		for (size_t k = 0; k < n; k++) {
			const struct lora_doc *e = &ex->u.arr.items[k];
			const struct lora_doc *tn = lora_doc_get(e, "token_nll");
			double s = 0;
			for (size_t j = 0; j < seqs[k].n_target; j++) {
				want[off + j] = (float)num(&tn->u.arr.items[j]);
				s += nll[off + j];
			}
			double loss = s / (double)seqs[k].n_target, wl = num(lora_doc_get(e, "loss"));
			double d = fabs(loss - wl) / fabs(wl);
			worst_loss = d > worst_loss ? d : worst_loss;
			loss_ok &= d <= 1e-4;
			sum += s;
			off += seqs[k].n_target;
		}
		char what[256];
		snprintf(what, sizeof what, "%s %s: token_nll", model, run);
		check_close_f32(nll, want, total, 1e-4, 1e-4, what);
		check(loss_ok, "%s %s: per-example loss, max rel diff %.3g (tol 1e-4)", model, run, worst_loss);
		snprintf(what, sizeof what, "%s %s: token_mean_loss", model, run);
		check_near(sum / (double)total, num(lora_doc_get(g, "token_mean_loss")), 0, 1e-4, what);
		free(want);
	}
	/* greedy generation, 8 new tokens, exact ids */
	int gen_ok = 1;
	size_t bad = 0;
	for (size_t k = 0; k < n; k++) {
		const struct lora_doc *gen = lora_doc_get(&ex->u.arr.items[k], "generation");
		size_t nw;
		int32_t *want = ids_of(lora_doc_get(gen, "ids"), &nw);
		int32_t out[8];
		size_t nout = 0;
		if (lora_model_generate(m, in[k], seqs[k].n_input, 8, out, &nout, &err) < 0 ||
		    nout != nw || memcmp(out, want, nw * sizeof *out) != 0) {
			if (gen_ok)
				bad = k;
			gen_ok = 0;
		}
		free(want);
	}
	check(gen_ok, "%s %s: greedy generation ids of %zu examples%s%s", model, run, n,
	      gen_ok ? "" : ", first mismatch at example ", gen_ok ? "" : (bad < 10 ? "0123456789" + bad : "?"));
	/* logits of example 0 */
	snprintf(rel, sizeof rel, "golden/logits/%s/%s.safetensors", model, run);
	const char *lp = check_shared(rel);
	if (lp) {
		struct lora_st *st = NULL;
		float *lg = NULL;
		size_t rows = 0;
		if (check(lora_st_open(lp, &st, &err) == 0, "%s %s: open logits", model, run) &&
		    check(lora_model_logits(m, &seqs[0], &lg, &rows, &err) == 0, "%s %s: logits (%s)", model, run,
			  err.msg)) {
			const struct lora_st_tensor *f8 = lora_st_find(st, "first8");
			const struct lora_st_tensor *tr = lora_st_find(st, "target_rows");
			int V = lora_model_info(m)->vocab;
			bool t5 = lora_model_info(m)->encoder_decoder;
			char what[256];
			snprintf(what, sizeof what, "%s %s: logits first8", model, run);
			size_t r8 = (size_t)f8->shape[0];
			/* 2e-4 absolute, not 1e-4: on stories260K with extra_r8_all
			 * the golden's own float32 logits differ from a float64
			 * evaluation of the same model by up to 1.4e-4 (ours by
			 * 1.1e-4; measured with numpy), so a 1e-4 bound between two
			 * float32 evaluations would test rounding noise. Every other
			 * model/adapter stays below 2e-5 (see the printed diffs). */
			check_close_f32(lg, f8->data, r8 * V, 2e-4, 0, what);
			size_t first = t5 ? 0 : seqs[0].n_input - 1;
			snprintf(what, sizeof what, "%s %s: logits target_rows", model, run);
			check_close_f32(lg + first * V, tr->data, (size_t)tr->shape[0] * V, 2e-4, 0, what);
		}
		free(lg);
		lora_st_close(st);
	}
	for (size_t k = 0; k < n; k++) {
		free(in[k]);
		free(tg[k]);
	}
	free(in);
	free(tg);
	free(seqs);
	free(nll);
	lora_doc_free(g);
}

static void golden_model(const char *model, const char *dir_rel, const char *const *runs)
{
	const char *dir = check_shared(dir_rel);
	if (!dir) {
		check_skip("%s: LORA_SHARED not set or model missing", model);
		return;
	}
	struct lora_model *m = NULL;
	struct lora_err err = {0};
	if (!check(lora_model_open(dir, &m, &err) == 0, "%s: open (%s)", model, err.msg))
		return;
	for (int i = 0; runs[i]; i++)
		check_run(m, model, runs[i]);
	lora_model_close(m);
}

/* ---- generated models (tests/unit/mkmodel.py) ---- */

static char *top_dir(void)
{
	static char buf[4096];
	ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
	if (n <= 0)
		return NULL;
	buf[n] = '\0';
	for (int i = 0; i < 3; i++) {	/* <top>/<build>/tests/test_engine */
		char *s = strrchr(buf, '/');
		if (!s)
			return NULL;
		*s = '\0';
	}
	return buf;
}

static void check_generated(const char *gen, const char *name)
{
	char dir[4200], ref[4300];
	snprintf(dir, sizeof dir, "%s/%s", gen, name);
	snprintf(ref, sizeof ref, "%s/ref.json", dir);
	struct lora_err err = {0};
	struct lora_model *m = NULL;
	struct lora_doc *g = NULL;
	if (!check(lora_model_open(dir, &m, &err) == 0, "%s: open (%s)", name, err.msg))
		return;
	if (!check(lora_doc_parse_file(ref, &g, &err) == 0, "%s: reference (%s)", name, err.msg)) {
		lora_model_close(m);
		return;
	}
	const struct lora_doc *sq = lora_doc_get(g, "seqs");
	size_t n = sq->u.arr.n, total = 0;
	struct lora_seq seqs[8];
	int32_t *in[8], *tg[8];
	for (size_t k = 0; k < n && k < 8; k++) {
		in[k] = ids_of(lora_doc_get(&sq->u.arr.items[k], "input"), &seqs[k].n_input);
		tg[k] = ids_of(lora_doc_get(&sq->u.arr.items[k], "target"), &seqs[k].n_target);
		seqs[k].input = in[k];
		seqs[k].target = tg[k];
		total += seqs[k].n_target;
	}
	float *nll = calloc(total, sizeof *nll), *want = calloc(total, sizeof *want);
	size_t off = 0;
	for (size_t k = 0; k < n; k++) {
		const struct lora_doc *tn = lora_doc_get(&sq->u.arr.items[k], "token_nll");
		for (size_t j = 0; j < tn->u.arr.n; j++)
			want[off++] = (float)num(&tn->u.arr.items[j]);
	}
	char what[256];
	if (check(lora_model_nll(m, seqs, n, nll, &err) == 0, "%s: batched nll (%s)", name, err.msg)) {
		snprintf(what, sizeof what, "%s: token_nll vs float64 numpy", name);
		check_close_f32(nll, want, total, 1e-4, 1e-4, what);
	}
	float *lg = NULL;
	size_t rows = 0;
	if (check(lora_model_logits(m, &seqs[0], &lg, &rows, &err) == 0, "%s: logits (%s)", name, err.msg)) {
		const struct lora_doc *l0 = lora_doc_get(g, "logits0");
		float *w0 = malloc(l0->u.arr.n * sizeof *w0);
		for (size_t i = 0; i < l0->u.arr.n; i++)
			w0[i] = (float)num(&l0->u.arr.items[i]);
		check(rows * (size_t)lora_model_info(m)->vocab == l0->u.arr.n, "%s: logits rows %zu", name, rows);
		snprintf(what, sizeof what, "%s: logits vs float64 numpy", name);
		check_close_f32(lg, w0, l0->u.arr.n, 1e-4, 1e-5, what);
		free(w0);
	}
	size_t nw, nout = 0;
	int32_t *gw = ids_of(lora_doc_get(g, "gen"), &nw), out[6];
	int rc = lora_model_generate(m, seqs[0].input, seqs[0].n_input, 6, out, &nout, &err);
	check(rc == 0 && nout == nw && memcmp(out, gw, nw * sizeof *out) == 0,
	      "%s: greedy generation (KV cache) equals the full-forward reference", name);
	/* the activation buffers are kept per model and reused by calls of
	 * other shapes (logits of one sequence, generation): the batch again
	 * must give the same numbers bit for bit */
	float *again = calloc(total, sizeof *again);
	check(lora_model_nll(m, seqs, n, again, &err) == 0 && memcmp(again, nll, total * sizeof *nll) == 0,
	      "%s: batched nll after logits and generation equals the first call bit for bit", name);
	free(again);
	if (strcmp(name, "qwen2") == 0 || strcmp(name, "mistral") == 0 || strcmp(name, "gpt2") == 0)
		check(lora_model_info(m)->converted_bytes > 0, "%s: f16/bf16 weights converted (%zu bytes)",
		      name, lora_model_info(m)->converted_bytes);
	free(gw);
	free(lg);
	free(nll);
	free(want);
	for (size_t k = 0; k < n; k++) {
		free(in[k]);
		free(tg[k]);
	}
	lora_doc_free(g);
	lora_model_close(m);
}

/* Error cases on copies of a generated model. */
static void check_errors(const char *gen)
{
	char cmd[8192], dir[1100];
	struct lora_err err = {0};
	struct lora_model *m = NULL;
	snprintf(dir, sizeof dir, "%.1000s/bad", gen);
	snprintf(cmd, sizeof cmd,
		 "rm -rf '%s' && cp -r '%s/llama3' '%s' && sed -i 's/\"model_type\": \"llama\"/\"model_type\": \"bert\"/' '%s/config.json'",
		 dir, gen, dir, dir);
	if (system(cmd) == 0) {
		int rc = lora_model_open(dir, &m, &err);
		check(rc == LORA_EUNSUPPORTED && strstr(err.msg, "'bert'"), "unknown model_type refused: %s", err.msg);
	}
	snprintf(cmd, sizeof cmd,
		 "rm -rf '%s' && cp -r '%s/llama3' '%s' && sed -i 's/\"intermediate_size\": 96/\"intermediate_size\": 97/' '%s/config.json'",
		 dir, gen, dir, dir);
	if (system(cmd) == 0) {
		int rc = lora_model_open(dir, &m, &err);
		check(rc < 0 && strstr(err.msg, "mlp.gate_proj.weight") && strstr(err.msg, "[96,64]") &&
		      strstr(err.msg, "[97,64]"), "config/weights shape mismatch named: %s", err.msg);
	}
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s/llama3' '%s' && rm '%s/tokenizer.json'", dir, gen, dir, dir);
	if (system(cmd) == 0) {
		int rc = lora_model_open(dir, &m, &err);
		check(rc < 0 && strstr(err.msg, "tokenizer"), "missing tokenizer refused: %s", err.msg);
	}
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s/mistral' '%s' && rm '%s/model-00002-of-00002.safetensors'",
		 dir, gen, dir, dir);
	if (system(cmd) == 0) {
		int rc = lora_model_open(dir, &m, &err);
		check(rc < 0 && strstr(err.msg, "model-00002-of-00002"), "missing shard named: %s", err.msg);
	}
	lora_model_close(m);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		check(0, "cleanup");
}

/* Adapters: a module the model lacks, and another base's shapes. */
static void check_adapter_errors(void)
{
	const char *llama = check_shared("golden/models/llama-tiny");
	const char *t5a = check_shared("golden/adapters/t5-tiny/pool_0");
	const char *sa = check_shared("golden/adapters/stories260K/extra_r8_all");
	if (!llama || !t5a || !sa) {
		check_skip("adapter errors: LORA_SHARED not set");
		return;
	}
	struct lora_err err = {0};
	struct lora_model *m = NULL;
	struct lora_adapter a;
	if (!check(lora_model_open(llama, &m, &err) == 0, "open llama-tiny (%s)", err.msg))
		return;
	if (lora_peft_read(t5a, &a, &err) == 0) {
		int rc = lora_model_set_adapter(m, &a, &err);
		check(rc == LORA_ENOTFOUND && strstr(err.msg, "SelfAttention.q"),
		      "T5 adapter on a llama: module not in the model: %s", err.msg);
		lora_adapter_free(&a);
	}
	if (lora_peft_read(sa, &a, &err) == 0) {
		int rc = lora_model_set_adapter(m, &a, &err);
		check(rc == LORA_EINVAL && strstr(err.msg, "172") && strstr(err.msg, "176"),
		      "stories260K adapter on llama-tiny: shapes refused: %s", err.msg);
		int n = 1;
		lora_model_deltas(m, "model.layers.0.self_attn.q_proj.weight", &n);
		check(n == 0, "a refused adapter leaves the model detached");
		lora_adapter_free(&a);
	}
	lora_model_close(m);
}

int main(void)
{
	static const char *const dec_runs[] = {"base", "extra_r8_all", "extra_r2_rslora", "lorahub_wA",
					       "lorahub_wB", NULL};
	static const char *const t5_runs[] = {"base", "extra_r8_qkvo", "extra_r2_ffn_rslora", "lorahub_wA",
					      "lorahub_wB", NULL};
	golden_model("llama-tiny", "golden/models/llama-tiny", dec_runs);
	golden_model("stories260K", "stories260K-hf", dec_runs);
	golden_model("gpt2-tiny", "golden/models/gpt2-tiny", dec_runs);
	golden_model("t5-tiny", "golden/models/t5-tiny", t5_runs);
	golden_model("t5-tiny-v1", "golden/models/t5-tiny-v1", t5_runs);
	check_adapter_errors();

	const char *tokjson = check_shared("stories260K-hf/tokenizer.json");
	const char *top = top_dir(), *tmp = getenv("LORA_TMP");
	char cmd[12000];
	const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
	if (!tokjson || !top || !tmp) {
		check_skip("generated models: LORA_SHARED not set (needs a tokenizer.json)");
	} else {
		char gen[1100];
		snprintf(gen, sizeof gen, "%.900s/test_engine.%ld", tmp && *tmp ? tmp : "/tmp", (long)getpid());
		snprintf(cmd, sizeof cmd, "rm -rf '%s' && %s '%s/tests/unit/mkmodel.py' '%s' '%s'", gen, py, top,
			 gen, tokjson);
		if (system(cmd) != 0) {
			check_skip("generated models: python3 with numpy is not available");
		} else {
			check_generated(gen, "llama3");
			check_generated(gen, "qwen2");
			check_generated(gen, "mistral");
			check_generated(gen, "gpt2");
			check_errors(gen);
		}
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", gen);
		if (system(cmd) != 0)
			check(0, "remove %s", gen);
	}
	return check_done();
}
