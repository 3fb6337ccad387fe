/* test_peft — PEFT adapter directories <-> lora_adapter: the golden and real
 * adapters, rank/alpha/rslora, rank_pattern/alpha_pattern as PEFT 0.10
 * resolves them, write-then-read round trips, and every refusal. */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include "check.h"
#include "fixtures.h"
#include "peft.h"
#include "st.h"

#include <glob.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static struct lora_err err;

/* Make fx_dir/name with adapter_config.json = cfg (none if NULL) and the
 * tensors (fx_write_st). Returns the directory path. */
static const char *make_fixture(const char *name, const char *cfg, const struct fx_tensor *ft,
				size_t n)
{
	char *d = fx_path(name);
	char p[4400];
	if (fx_fresh_dir(d) < 0)
		return NULL;
	snprintf(p, sizeof p, "%s/adapter_config.json", d);
	if (cfg && fx_spit(p, cfg, strlen(cfg)) < 0)
		return NULL;
	snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
	return fx_write_st(p, ft, n, &err) == 0 ? d : NULL;
}

#define CFG(extra) \
	"{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"c_attn\", \"c_fc\", \"c_proj\"]" extra "}"

static const struct lora_module *mod(const struct lora_adapter *a, const char *name)
{
	return lora_adapter_find(a, name);
}

/* Tensors and per-module r/alpha equal? */
static int same_adapter(const struct lora_adapter *x, const struct lora_adapter *y)
{
	if (x->n_modules != y->n_modules || x->r != y->r || x->alpha != y->alpha ||
	    x->rslora != y->rslora)
		return 0;
	for (size_t i = 0; i < x->n_modules; i++) {
		const struct lora_module *a = &x->modules[i], *b = mod(y, a->module);
		if (!b || a->r != b->r || a->alpha != b->alpha || a->a.dtype != b->a.dtype ||
		    a->b.dtype != b->b.dtype || a->a.nbytes != b->a.nbytes ||
		    a->b.nbytes != b->b.nbytes || memcmp(a->a.shape, b->a.shape, sizeof a->a.shape) ||
		    memcmp(a->b.shape, b->b.shape, sizeof a->b.shape) ||
		    memcmp(a->a.data, b->a.data, a->a.nbytes) || memcmp(a->b.data, b->b.data, a->b.nbytes))
			return 0;
	}
	return 1;
}

static char *json_of(const struct lora_doc *d)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	lora_doc_write_json(f, d, 0);
	fclose(f);
	return buf;
}

/* Configs equal as JSON values? */
static int same_config_file(const char *p1, const char *p2)
{
	struct lora_doc *a = NULL, *b = NULL;
	if (lora_doc_parse_file(p1, &a, &err) < 0 || lora_doc_parse_file(p2, &b, &err) < 0) {
		lora_doc_free(a);
		return 0;
	}
	char *ja = json_of(a), *jb = json_of(b);
	int same = !strcmp(ja, jb);
	free(ja);
	free(jb);
	lora_doc_free(a);
	lora_doc_free(b);
	return same;
}

/* read dir -> write out -> read out: identical, bytes identical, config equal */
static int round_trip(const char *src, const char *outname, struct lora_adapter *got)
{
	struct lora_adapter a, b;
	memset(got, 0, sizeof *got);
	if (lora_peft_read(src, &a, &err) < 0)
		return 0;
	char *out = fx_path(outname);
	char cmd[4400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
	if (system(cmd) != 0 || lora_peft_write(out, &a, &err) < 0 ||
	    lora_peft_read(out, &b, &err) < 0) {
		lora_adapter_free(&a);
		return 0;
	}
	int ok = same_adapter(&a, &b);
	char p1[4400], p2[4400];
	snprintf(p1, sizeof p1, "%s/adapter_model.safetensors", src);
	snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", out);
	ok = ok && fx_files_equal(p1, p2);
	snprintf(p1, sizeof p1, "%s/adapter_config.json", src);
	snprintf(p2, sizeof p2, "%s/adapter_config.json", out);
	ok = ok && same_config_file(p1, p2);
	lora_adapter_free(&b);
	*got = a;
	return ok;
}

static void test_golden(void)
{
	const char *g = check_shared("golden/adapters");
	if (!g) {
		check_skip("golden adapters (LORA_SHARED unset)");
		return;
	}
	char pat[4300];
	snprintf(pat, sizeof pat, "%s/*/*", g);
	glob_t gl;
	if (glob(pat, GLOB_ONLYDIR, NULL, &gl) != 0) {
		check(0, "golden adapters found");
		return;
	}
	int n = 0, ok = 0, cfg_ok = 0;
	for (size_t i = 0; i < gl.gl_pathc; i++) {
		struct lora_adapter a;
		n++;
		if (!round_trip(gl.gl_pathv[i], "golden-rt", &a)) {
			check(0, "round trip %s: %s", gl.gl_pathv[i], err.msg);
			lora_adapter_free(&a);
			continue;
		}
		ok++;
		/* r and alpha as the README lists them */
		const char *base = strrchr(gl.gl_pathv[i], '/') + 1;
		int want_r = !strncmp(base, "pool_", 5) ? 4 : strstr(base, "r8") ? 8 : 2;
		double want_alpha = !strncmp(base, "pool_", 5) ? 8
				    : strstr(base, "r8")	 ? (strstr(gl.gl_pathv[i], "gpt2") ? 8 : 16)
				    : strstr(gl.gl_pathv[i], "llama") || strstr(gl.gl_pathv[i], "stories")
					? 6
					: 4;
		bool want_rs = strstr(base, "rslora") != NULL;
		int per_module = 1;
		for (size_t k = 0; k < a.n_modules; k++)
			if (a.modules[k].r != want_r || a.modules[k].alpha != want_alpha)
				per_module = 0;
		if (a.r == want_r && a.alpha == want_alpha && a.rslora == want_rs && per_module &&
		    !strcmp(a.name, base) && lora_doc_get(a.meta, "config") &&
		    lora_doc_get(a.meta, "source"))
			cfg_ok++;
		else
			check(0, "%s: r %d alpha %g rslora %d name %s", gl.gl_pathv[i], a.r, a.alpha,
			      a.rslora, a.name);
		lora_adapter_free(&a);
	}
	globfree(&gl);
	check(n == 35 && ok == n, "%d of %d golden adapters: read, write, read back identical; bytes and config equal",
	      ok, n);
	check(cfg_ok == n, "%d of %d golden adapters have the README's r, alpha, rslora", cfg_ok, n);

	/* counts, shapes, scales */
	struct lora_adapter a;
	const char *p = check_shared("golden/adapters/gpt2-tiny/extra_r8_all");
	if (p && lora_peft_read(p, &a, &err) == 0) {
		const struct lora_module *m = mod(&a, "transformer.h.1.mlp.c_fc");
		check(a.n_modules == 8 && m && m->a.shape[0] == 8 && m->a.shape[1] == 32 &&
			      m->b.shape[0] == 128 && m->b.shape[1] == 8,
		      "gpt2-tiny extra_r8_all: 8 modules, c_fc A [8,32] B [128,8] (in 32 -> out 128)");
		check(!strcmp(a.modules[0].module, "transformer.h.0.attn.c_attn") &&
			      !strcmp(a.modules[a.n_modules - 1].module, "transformer.h.1.mlp.c_proj"),
		      "modules in natural order");
		lora_adapter_free(&a);
	}
	p = check_shared("golden/adapters/t5-tiny/extra_r2_ffn_rslora");
	if (p && lora_peft_read(p, &a, &err) == 0) {
		/* README: scaling = 4/sqrt(2) = 2.828... */
		check_near(lora_module_scale(&a, &a.modules[0]), 2.8284271247461903, 1e-12, 0,
			   "rslora scale alpha/sqrt(r)");
		check(!strcmp(a.base, "models/t5-tiny"), "base from base_model_name_or_path");
		lora_adapter_free(&a);
	}
	p = check_shared("golden/adapters/llama-tiny/pool_3");
	if (p && lora_peft_read(p, &a, &err) == 0) {
		check_near(lora_module_scale(&a, &a.modules[0]), 2.0, 0, 0, "pool scale alpha/r = 2");
		check(a.n_modules == 4 && mod(&a, "model.layers.1.self_attn.v_proj"),
		      "llama pool: 4 modules named model.layers.N.self_attn.{q,v}_proj");
		lora_adapter_free(&a);
	}
}

static void test_real(void)
{
	const char *q = check_shared("gpt2-lora-quotes");
	if (!q) {
		check_skip("real gpt2 adapters (LORA_SHARED unset)");
		return;
	}
	const char *names[] = {"gpt2-lora-quotes", "gpt2-lora-tigrinya", "gpt2-medium-lora-shakespeare"};
	for (int i = 0; i < 3; i++) {
		struct lora_adapter a;
		const char *p = check_shared(names[i]);
		int ok = p && round_trip(p, "real-rt", &a);
		check(ok, "%s: read, write, read back identical; safetensors bytes and config equal (%s)",
		      names[i], ok ? "" : err.msg);
		if (!ok)
			continue;
		bool fifo = false;
		lora_doc_get_bool(lora_doc_get(a.meta, "config"), "fan_in_fan_out", "c", &fifo, NULL);
		if (i < 2) {
			const struct lora_module *ca = mod(&a, "transformer.h.5.attn.c_attn");
			const struct lora_module *mp = mod(&a, "transformer.h.11.mlp.c_proj");
			check(a.n_modules == 36 && a.r == 8 && a.alpha == 32 && !a.rslora && fifo &&
				      !strcmp(a.base, "gpt2") && ca && ca->a.shape[1] == 768 &&
				      ca->b.shape[0] == 2304 && mp && mp->a.shape[1] == 3072 &&
				      mp->b.shape[0] == 768,
			      "%s: 36 modules, r 8, alpha 32, fan_in_fan_out kept; c_attn 768->2304, mlp.c_proj 3072->768 as [r,in]/[out,r]",
			      names[i]);
			/* no transposition: the stream's factors are the file's bytes */
			struct lora_st *st;
			char sp[4400];
			snprintf(sp, sizeof sp, "%s/adapter_model.safetensors", p);
			if (lora_st_open(sp, &st, &err) == 0) {
				const struct lora_st_tensor *t = lora_st_find(
					st, "base_model.model.transformer.h.11.mlp.c_proj.lora_B.weight");
				check(t && mp && t->nbytes == mp->b.nbytes &&
					      !memcmp(t->data, mp->b.data, t->nbytes),
				      "%s: lora_B stored as in the file (PEFT's B is already [out,r])",
				      names[i]);
				lora_st_close(st);
			}
		} else {
			check(a.n_modules == 24 && a.alpha == 16 &&
				      !strcmp(a.base, "openai-community/gpt2-medium") &&
				      a.modules[0].a.shape[1] == 1024 && a.modules[0].b.shape[0] == 3072,
			      "shakespeare: 24 modules, alpha 16, c_attn 1024->3072");
		}
		lora_adapter_free(&a);
	}
	struct lora_adapter a;
	const char *p = check_shared("gpt2-lora-emotion");
	char want[4400];
	snprintf(want, sizeof want,
		 "%s/adapter_model.safetensors: tensor 'base_model.model.score.weight' is a full weight, not a LoRA factor (modules_to_save); adapters carrying modules_to_save weights are not supported",
		 p);
	int rc = lora_peft_read(p, &a, &err);
	check(rc == LORA_EUNSUPPORTED && !strcmp(err.msg, want),
	      "gpt2-lora-emotion refused for its modules_to_save head: %s", err.msg);
}

static void test_patterns(void)
{
	/* PEFT 0.10: keys tried as ".*\.KEY$" (rank_pattern's first, then
	 * alpha_pattern's), the first match is looked up in both maps. */
	static const struct fx_tensor ft[] = {
		{"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", LORA_F32, 4, 8},
		{"base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", LORA_F32, 24, 4},
		{"base_model.model.transformer.h.1.attn.c_attn.lora_A.weight", LORA_F32, 2, 8},
		{"base_model.model.transformer.h.1.attn.c_attn.lora_B.weight", LORA_F32, 24, 2},
		{"base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight", LORA_F32, 6, 8},
		{"base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight", LORA_F32, 32, 6},
		{"base_model.model.transformer.h.2.mlp.c_fc.lora_A.weight", LORA_F32, 6, 8},
		{"base_model.model.transformer.h.2.mlp.c_fc.lora_B.weight", LORA_F32, 32, 6},
		{"base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight", LORA_F32, 4, 32},
		{"base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight", LORA_F32, 8, 4},
		{"base_model.model.transformer.h.3.attn.c_attn.lora_A.weight", LORA_F32, 3, 8},
		{"base_model.model.transformer.h.3.attn.c_attn.lora_B.weight", LORA_F32, 24, 3},
	};
	const char *d = make_fixture(
		"patterns",
		CFG(", \"rank_pattern\": {\"h.1.attn.c_attn\": 2, \"mlp.c_fc\": 6, \"h\\\\.[3-9]\\\\.attn\\\\.c_attn\": 3},"
		    " \"alpha_pattern\": {\"c_proj\": 3, \"h.2.mlp.c_fc\": 5, \"h.3.attn.c_attn\": 1.5},"
		    " \"use_rslora\": true, \"fan_in_fan_out\": true"),
		ft, sizeof ft / sizeof *ft);
	struct lora_adapter a;
	int rc = lora_peft_read(d, &a, &err);
	if (!check(rc == 0, "rank_pattern fixture reads (%s)", err.msg))
		return;
	const struct lora_module *m;
	check((m = mod(&a, "transformer.h.0.attn.c_attn")) && m->r == 4 && m->alpha == 8,
	      "no pattern: r 4 alpha 8");
	check((m = mod(&a, "transformer.h.1.attn.c_attn")) && m->r == 2 && m->alpha == 8,
	      "rank_pattern h.1.attn.c_attn: r 2, alpha default");
	check((m = mod(&a, "transformer.h.0.mlp.c_fc")) && m->r == 6 && m->alpha == 8,
	      "rank_pattern mlp.c_fc: r 6");
	check((m = mod(&a, "transformer.h.2.mlp.c_fc")) && m->r == 6 && m->alpha == 8,
	      "PEFT 0.10 quirk: rank key mlp.c_fc matches first, so alpha_pattern h.2.mlp.c_fc is not used");
	check((m = mod(&a, "transformer.h.0.mlp.c_proj")) && m->r == 4 && m->alpha == 3,
	      "alpha_pattern c_proj: alpha 3, r default");
	check((m = mod(&a, "transformer.h.3.attn.c_attn")) && m->r == 3 && m->alpha == 8,
	      "regex key h\\.[3-9]\\.attn\\.c_attn: r 3 (its alpha_pattern twin is shadowed)");
	check(a.rslora && a.r == 4 && a.alpha == 8, "defaults and rslora");
	check_near(lora_module_scale(&a, mod(&a, "transformer.h.0.mlp.c_proj")), 1.5, 1e-15, 0,
		   "scale 3/sqrt(4)");
	struct lora_adapter b;
	/* written back unchanged: the config still describes the tensors */
	char *out = fx_path("patterns-out");
	rc = lora_peft_write(out, &a, &err);
	check(rc == 0, "write pattern adapter (%s)", err.msg);
	char p1[4400], p2[4400];
	snprintf(p1, sizeof p1, "%s/adapter_config.json", d);
	snprintf(p2, sizeof p2, "%s/adapter_config.json", out);
	check(same_config_file(p1, p2), "config written back unchanged");
	check(lora_peft_read(out, &b, &err) == 0 && same_adapter(&a, &b),
	      "pattern adapter reads back identical");
	lora_adapter_free(&b);

	/* change a module's rank and alpha: patterns regenerated for PEFT 0.10 */
	struct lora_module *mm = (struct lora_module *)mod(&a, "transformer.h.0.attn.c_attn");
	mm->alpha = 7;
	a.alpha = 9;
	out = fx_path("patterns-changed");
	rc = lora_peft_write(out, &a, &err);
	check(rc == 0 && lora_peft_read(out, &b, &err) == 0 && same_adapter(&a, &b),
	      "changed alphas: regenerated patterns read back identical (%s)", err.msg);
	snprintf(p2, sizeof p2, "%s/adapter_config.json", out);
	struct lora_doc *cfg = NULL;
	lora_doc_parse_file(p2, &cfg, &err);
	const struct lora_doc *rp = lora_doc_get(cfg, "rank_pattern");
	const struct lora_doc *tm = lora_doc_get(cfg, "target_modules");
	bool fifo = false, rs = false;
	lora_doc_get_bool(cfg, "fan_in_fan_out", "c", &fifo, NULL);
	lora_doc_get_bool(cfg, "use_rslora", "c", &rs, NULL);
	check(rp && lora_doc_get(rp, "h\\.1\\.attn\\.c_attn") && lora_doc_get(rp, "h\\.0\\.attn\\.c_attn") &&
		      tm && tm->type == LORA_DOC_ARRAY && tm->u.arr.n == 6 && fifo && rs,
	      "regenerated config: escaped per-module keys, full target names, fan_in_fan_out and rslora kept");
	lora_doc_free(cfg);
	lora_adapter_free(&b);
	lora_adapter_free(&a);

	/* a config whose pattern disagrees with the tensors is refused */
	d = make_fixture("badrank", CFG(", \"rank_pattern\": {\"c_attn\": 2}"), ft, 2);
	rc = lora_peft_read(d, &a, &err);
	char want[8800];
	snprintf(want, sizeof want,
		 "%s/adapter_model.safetensors: module 'transformer.h.0.attn.c_attn': lora_A has rank 4 but %s/adapter_config.json gives r 2",
		 d, d);
	check(rc == LORA_EINVAL && !strcmp(err.msg, want), "rank_pattern/tensor mismatch: %s", err.msg);
	d = make_fixture("badre", CFG(", \"rank_pattern\": {\"c_attn(\": 2}"), ft, 2);
	rc = lora_peft_read(d, &a, &err);
	check(rc == LORA_EFORMAT && strstr(err.msg, "pattern 'c_attn(' is not a valid regex"),
	      "bad regex: %s", err.msg);
}

static void test_forms_and_dtypes(void)
{
	static const struct fx_tensor ft[] = {
		{"base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.default.weight", LORA_BF16, 2, 16},
		{"base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_B.default.weight", LORA_BF16, 16, 2},
		{"base_model.model.encoder.block.10.layer.0.SelfAttention.q.lora_A.default.weight", LORA_F16, 2, 16},
		{"base_model.model.encoder.block.10.layer.0.SelfAttention.q.lora_B.default.weight", LORA_F32, 16, 2},
		{"base_model.model.encoder.block.2.layer.0.SelfAttention.q.lora_A.default.weight", LORA_F16, 2, 16},
		{"base_model.model.encoder.block.2.layer.0.SelfAttention.q.lora_B.default.weight", LORA_F16, 16, 2},
	};
	const char *d = make_fixture("named", "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4.5, "
					      "\"target_modules\": [\"q\"], \"base_model_name_or_path\": null}",
				     ft, 6);
	struct lora_adapter a, b;
	int rc = lora_peft_read(d, &a, &err);
	if (!check(rc == 0, ".lora_A.<adapter>.weight form reads (%s)", err.msg))
		return;
	check(a.n_modules == 3 && !strcmp(a.modules[0].module, "encoder.block.0.layer.0.SelfAttention.q") &&
		      !strcmp(a.modules[1].module, "encoder.block.2.layer.0.SelfAttention.q") &&
		      !strcmp(a.modules[2].module, "encoder.block.10.layer.0.SelfAttention.q"),
	      "module names without prefix and adapter name, natural order");
	check(a.modules[0].a.dtype == LORA_BF16 && a.modules[2].a.dtype == LORA_F16 &&
		      a.modules[2].b.dtype == LORA_F32 && a.alpha == 4.5 && a.base == NULL,
	      "dtypes kept per tensor; float alpha; null base");
	char *out = fx_path("named-out");
	rc = lora_peft_write(out, &a, &err);
	check(rc == 0 && lora_peft_read(out, &b, &err) == 0 && same_adapter(&a, &b),
	      "bf16/f16/f32 adapter round trip identical (%s)", err.msg);
	char sp[4400];
	snprintf(sp, sizeof sp, "%s/adapter_model.safetensors", out);
	struct lora_st *st;
	check(lora_st_open(sp, &st, &err) == 0 &&
		      lora_st_find(st, "base_model.model.encoder.block.2.layer.0.SelfAttention.q.lora_A.weight") &&
		      lora_st_count(st) == 6,
	      "written in PEFT's save_pretrained form (no adapter name)");
	lora_st_close(st);
	lora_adapter_free(&b);

	/* the .safetensors path form: config beside it, name from the directory */
	snprintf(sp, sizeof sp, "%s/adapter_model.safetensors", d);
	rc = lora_peft_read(sp, &b, &err);
	check(rc == 0 && !strcmp(b.name, "named") && same_adapter(&a, &b),
	      "reading the .safetensors path gives the same adapter named after its directory");
	lora_adapter_free(&b);
	char cmd[8900], sp2[4400];
	snprintf(sp2, sizeof sp2, "%s/other.safetensors", d);
	snprintf(cmd, sizeof cmd, "cp '%s' '%s'", sp, sp2);
	if (system(cmd) == 0) {
		rc = lora_peft_read(sp2, &b, &err);
		check(rc == 0 && !strcmp(b.name, "other"), "a differently named file is named by its stem");
		lora_adapter_free(&b);
	}
	lora_adapter_free(&a);
}

static void test_write_fresh(void)
{
	/* an adapter built in memory, no meta: a fresh minimal config */
	struct lora_adapter a;
	memset(&a, 0, sizeof a);
	a.name = strdup("fresh");
	a.r = 4;
	a.alpha = 16;
	a.n_modules = 3;
	a.modules = calloc(3, sizeof *a.modules);
	const char *names[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
			       "lm_head"};
	int ranks[] = {4, 2, 4};
	double alphas[] = {16, 16, 3};
	for (int i = 0; i < 3; i++) {
		struct lora_module *m = &a.modules[i];
		m->module = strdup(names[i]);
		m->r = ranks[i];
		m->alpha = alphas[i];
		lora_tensor_alloc2(&m->a, LORA_F32, ranks[i], 8, NULL);
		lora_tensor_alloc2(&m->b, LORA_F32, 8, ranks[i], NULL);
		for (int k = 0; k < ranks[i] * 8; k++) {
			((float *)m->a.data)[k] = (float)k * 0.25f + (float)i;
			((float *)m->b.data)[k] = -(float)k;
		}
	}
	char *out = fx_path("fresh-out");
	int rc = lora_peft_write(out, &a, &err);
	struct lora_adapter b;
	check(rc == 0, "write an adapter with no meta (%s)", err.msg);
	check(lora_peft_read(out, &b, &err) == 0 && same_adapter(&a, &b),
	      "fresh config + tensors read back identical, mixed ranks and alphas resolved (%s)", err.msg);
	lora_adapter_free(&b);
	char p[4400];
	snprintf(p, sizeof p, "%s/adapter_config.json", out);
	struct lora_doc *cfg = NULL;
	lora_doc_parse_file(p, &cfg, &err);
	const char *pt = NULL;
	int64_t r = 0;
	double alpha = 0;
	lora_doc_get_string(cfg, "peft_type", "c", &pt, NULL);
	lora_doc_get_int(cfg, "r", "c", &r, NULL);
	lora_doc_get_double(cfg, "lora_alpha", "c", &alpha, NULL);
	const struct lora_doc *rp = lora_doc_get(cfg, "rank_pattern");
	const struct lora_doc *ap = lora_doc_get(cfg, "alpha_pattern");
	check(pt && !strcmp(pt, "LORA") && r == 4 && alpha == 16 && rp && rp->u.map.n == 2 &&
		      lora_doc_get(rp, "layers\\.0\\.self_attn\\.v_proj") && ap &&
		      lora_doc_get(ap, "lm_head") && lora_doc_get(cfg, "task_type") &&
		      lora_doc_get(cfg, "use_dora"),
	      "fresh config: LORA, r 4, alpha 16, per-module patterns");
	lora_doc_free(cfg);

	/* refusals: existing directory, unwritable place, bad adapter */
	rc = lora_peft_write(out, &a, &err);
	char want[4400];
	snprintf(want, sizeof want, "'%s' already exists", out);
	check(rc == LORA_EINVAL && !strcmp(err.msg, want), "existing directory refused: %s", err.msg);
	rc = lora_peft_write("/nonexistent-dir/sub/x", &a, &err);
	check(rc == LORA_EIO && strstr(err.msg, "cannot create a directory beside '/nonexistent-dir/sub/x'"),
	      "unwritable parent: %s", err.msg);
	a.modules[1].r = 3;
	rc = lora_peft_write(fx_path("bad-out"), &a, &err);
	check(rc == LORA_EINVAL && access(fx_path("bad-out"), F_OK) != 0,
	      "inconsistent adapter refused, nothing written: %s", err.msg);
	lora_adapter_free(&a);

	int stray = fx_dotfiles(fx_dir);
	check(stray == 0, "no temporary directories left (%d)", stray);
}

static void refused(const char *name, const char *cfg, const struct fx_tensor *ft, size_t n,
		    int code, const char *fmt_file, const char *what)
{
	const char *d = make_fixture(name, cfg, ft, n);
	struct lora_adapter a;
	int rc = lora_peft_read(d, &a, &err);
	char want[8800];
	snprintf(want, sizeof want, "%s/%s", d, fmt_file);
	check(rc == code && !strcmp(err.msg, want), "%s: %s", what, err.msg);
	if (rc == 0)
		lora_adapter_free(&a);
}

static void test_refusals(void)
{
	static const struct fx_tensor ok[] = {
		{"base_model.model.m.q.lora_A.weight", LORA_F32, 2, 4},
		{"base_model.model.m.q.lora_B.weight", LORA_F32, 4, 2},
	};
	struct fx_tensor t[4];
#define cfg "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2, \"target_modules\": [\"q\"]%s}"
	char c[512];

	snprintf(c, sizeof c, cfg, ", \"use_dora\": true");
	refused("dora", c, ok, 2, LORA_EUNSUPPORTED,
		"adapter_config.json: DoRA adapters (use_dora) are not supported", "use_dora");
	memcpy(t, ok, sizeof ok);
	t[2] = (struct fx_tensor){"base_model.model.m.q.lora_magnitude_vector", LORA_F32, 1, 4};
	snprintf(c, sizeof c, cfg, "");
	refused("dora2", c, t, 3, LORA_EUNSUPPORTED,
		"adapter_model.safetensors: tensor 'base_model.model.m.q.lora_magnitude_vector' is a DoRA magnitude vector; DoRA adapters are not supported",
		"lora_magnitude_vector tensor");
	snprintf(c, sizeof c, cfg, ", \"lora_bias\": true");
	refused("lbias", c, ok, 2, LORA_EUNSUPPORTED,
		"adapter_config.json: LoRA bias (lora_bias) is not supported", "lora_bias");
	t[2] = (struct fx_tensor){"base_model.model.m.q.lora_B.bias", LORA_F32, 1, 4};
	snprintf(c, sizeof c, cfg, "");
	refused("lbias2", c, t, 3, LORA_EUNSUPPORTED,
		"adapter_model.safetensors: tensor 'base_model.model.m.q.lora_B.bias' is a LoRA bias (lora_bias), which is not supported",
		"lora_B.bias tensor");
	t[2] = (struct fx_tensor){"base_model.model.score.weight", LORA_F32, 6, 4};
	snprintf(c, sizeof c, cfg, ", \"modules_to_save\": [\"score\"]");
	refused("mts", c, t, 3, LORA_EUNSUPPORTED,
		"adapter_model.safetensors: tensor 'base_model.model.score.weight' is a full weight, not a LoRA factor (modules_to_save); adapters carrying modules_to_save weights are not supported",
		"modules_to_save weight");
	t[2] = (struct fx_tensor){"base_model.model.m.q.bias", LORA_F32, 1, 4};
	refused("bias", c, t, 3, LORA_EUNSUPPORTED,
		"adapter_model.safetensors: tensor 'base_model.model.m.q.bias' is a trained bias (PEFT bias option), which is not supported",
		"trained bias");
	t[2] = (struct fx_tensor){"base_model.model.emb.lora_embedding_A", LORA_F32, 2, 4};
	refused("emb", c, t, 3, LORA_EUNSUPPORTED,
		"adapter_model.safetensors: tensor 'base_model.model.emb.lora_embedding_A': LoRA on embedding layers is not supported",
		"embedding LoRA");
	refused("ia3", "{\"peft_type\": \"IA3\"}", ok, 2, LORA_EUNSUPPORTED,
		"adapter_config.json: peft_type is IA3; only LORA adapters are supported", "non-LORA peft_type");
	refused("notype", "{\"r\": 2}", ok, 2, LORA_EFORMAT, "adapter_config.json: no peft_type",
		"missing peft_type");
	snprintf(c, sizeof c, cfg, ", \"r\": \"8\"");
	refused("rtype", "{\"peft_type\": \"LORA\",\n \"r\": \"8\"}", ok, 2, LORA_EFORMAT,
		"adapter_config.json:2:7: 'r' must be an integer", "r of the wrong type");
	refused("badjson", "{\"peft_type\": \"LORA\", \"r\": 2,,}", ok, 2, LORA_EFORMAT,
		"adapter_config.json:1:30: did not find expected node content while parsing a flow node",
		"malformed adapter_config.json");
	snprintf(c, sizeof c, cfg, "");
	refused("onlya", c, ok, 1, LORA_EFORMAT,
		"adapter_model.safetensors: module 'm.q' has lora_A but no lora_B", "lora_A without lora_B");
	t[0] = ok[0];
	t[1] = (struct fx_tensor){"base_model.model.m.q.lora_B.weight", LORA_F32, 4, 3};
	refused("rankmm", c, t, 2, LORA_EFORMAT,
		"adapter_model.safetensors: module 'm.q': lora_A [2,4] and lora_B [4,3] do not share a rank",
		"A/B rank mismatch");
	t[1] = (struct fx_tensor){"base_model.model.m.q.lora_A.other.weight", LORA_F32, 2, 4};
	t[0] = (struct fx_tensor){"base_model.model.m.k.lora_A.default.weight", LORA_F32, 2, 4};
	refused("twoad", c, t, 2, LORA_EUNSUPPORTED,
		"adapter_model.safetensors: holds more than one adapter ('default' and 'other'); save them separately",
		"two adapter names in one file");
	refused("empty", c, ok, 0, LORA_EFORMAT, "adapter_model.safetensors: no LoRA tensors",
		"no tensors");

#undef cfg
	/* missing files */
	const char *d = make_fixture("nocfg", NULL, ok, 2);
	struct lora_adapter a;
	int rc = lora_peft_read(d, &a, &err);
	char want[8800];
	snprintf(want, sizeof want, "%s: missing adapter_config.json (%s/adapter_config.json)", d, d);
	check(rc == LORA_ENOTFOUND && !strcmp(err.msg, want), "missing adapter_config.json: %s", err.msg);
	char cmd[4400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir '%s' && touch '%s/adapter_model.bin'", d, d, d);
	if (system(cmd) == 0) {
		rc = lora_peft_read(d, &a, &err);
		snprintf(want, sizeof want,
			 "%s: only adapter_model.safetensors is supported, not the pickle adapter_model.bin", d);
		check(rc == LORA_EUNSUPPORTED && !strcmp(err.msg, want), "pickle weights refused: %s", err.msg);
	}
	snprintf(cmd, sizeof cmd, "rm -f '%s/adapter_model.bin'", d);
	if (system(cmd) == 0) {
		rc = lora_peft_read(d, &a, &err);
		snprintf(want, sizeof want, "%s: no adapter_model.safetensors", d);
		check(rc == LORA_ENOTFOUND && !strcmp(err.msg, want), "no weights: %s", err.msg);
	}
	rc = lora_peft_read(fx_path("does-not-exist"), &a, &err);
	check(rc == LORA_ENOTFOUND && strstr(err.msg, "No such file or directory"),
	      "missing path: %s", err.msg);
	if (geteuid() != 0) {
		d = make_fixture("unreadable", "{\"peft_type\": \"LORA\"}", ok, 2);
		snprintf(cmd, sizeof cmd, "chmod 000 '%s/adapter_config.json'", d);
		if (system(cmd) == 0) {
			rc = lora_peft_read(d, &a, &err);
			check(rc == LORA_EIO && strstr(err.msg, "Permission denied"),
			      "unreadable config: %s", err.msg);
		}
	} else {
		check_skip("unreadable config (running as root)");
	}
	/* a config that is not a file at all */
	d = make_fixture("cfgdir", NULL, ok, 2);
	snprintf(cmd, sizeof cmd, "mkdir '%s/adapter_config.json'", d);
	if (system(cmd) == 0) {
		rc = lora_peft_read(d, &a, &err);
		snprintf(want, sizeof want, "cannot read '%s/adapter_config.json': not a regular file", d);
		check(rc == LORA_EIO && !strcmp(err.msg, want), "config that is a directory: %s", err.msg);
	}
}

int main(void)
{
	if (!fx_init("test_peft"))
		return 1;
	test_golden();
	test_real();
	test_patterns();
	test_forms_and_dtypes();
	test_write_fresh();
	test_refusals();
	return check_done();
}
