/*
 * model — a Hugging Face model directory loaded for inference (see model.h
 * and arch.h).
 *
 * Layout read: DIR/config.json (model_type dispatches to an architecture),
 * DIR/model.safetensors or the shards named by
 * DIR/model.safetensors.index.json ("weight_map": tensor -> file), and the
 * tokenizer through lib/tok (DIR/tokenizer.json, else DIR/spiece.model or
 * DIR/tokenizer.model). Weights stay in the
 * read-only mmap when they are f32 and 4-byte aligned; f16/bf16 (or
 * misaligned) tensors are converted once to f32 memory the model owns
 * (info.converted_bytes says how much).
 *
 * Adapters: every Linear an architecture declares gets a slot in a hash table
 * keyed by its weight name; set_adapter resolves each adapter module to one
 * of those slots ("<module>.weight", or the unique declared weight whose
 * dotted name ends with it, or that it ends with: "transformer.h.0.attn.c_attn"
 * finds "h.0.attn.c_attn.weight" in a checkpoint saved without the prefix),
 * checks [out, in], and keeps f32 copies of A and B with the scale (in one
 * slab reused by the next adapter). The forward passes call
 * lora_model_linear, which applies them through lib/linear.c: folded into a
 * scratch copy of the weight for prompt-sized batches, unmerged otherwise;
 * the mmapped base weights are never written.
 */
#include "arch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "bf16.h"
#include "linear.h"

struct linear {
	char *name;		/* weight name, "....weight" */
	int64_t out, in;
	bool conv1d;
	struct lora_delta *deltas;
	int n_deltas, cap_deltas;	/* deltas is kept between adapters */
};

struct converted {
	char *name;
	float *data;
};

struct lora_model {
	struct lora_model_core core;
	const struct lora_arch *arch;
	struct lora_doc *config;
	char *dir;
	struct lora_st **shards;
	size_t n_shards;
	struct lora_tok *tok;
	unsigned decode_flags;
	struct converted *conv;
	size_t n_conv, cap_conv;
	struct linear *lins;
	size_t n_lins, cap_lins;
	size_t *slots;		/* hash: index + 1 into lins, 0 = empty */
	size_t n_slots;
	/* The current adapter: f32 copies of every A and B in one slab, and
	 * the fold buffer of lora_model_linear (the largest adapted weight);
	 * both are kept and reused by the next adapter, so a new candidate
	 * allocates nothing once the first has been attached. */
	float *fslab;
	size_t fslab_cap, fold_cap;
	float *fold;
	bool no_fold;		/* unless LORA_LINEAR_FOLD=1: deltas always unmerged */
	int32_t *eos_ids;	/* info.eos_ids: the ids that stop generation */
	struct lora_bf16_mat **bf16;	/* lora_model_set_bf16: packed lins[i], registered */
	const float **bf16_key;		/* under the f32 weight's address */
	size_t n_bf16;
};

struct lora_model_core *lora_model_core(struct lora_model *m)
{
	return &m->core;
}

unsigned lora_model_decode_flags(const struct lora_model *m)
{
	return m->decode_flags;
}

/* Hugging Face's decode(skip_special_tokens=True) on top of tokenizer.json:
 * transformers applies clean_up_tokenization_spaces from tokenizer_config.json
 * (default true), the SentencePiece tokenizers turn each invalid byte into
 * U+FFFD, and T5's strips the ends. A missing or unreadable config keeps
 * transformers' default. */
static unsigned decode_flags_of(const char *dir, const char *model_type)
{
	unsigned flags = LORA_TOK_SKIP_SPECIAL | LORA_TOK_SLOW_BYTES;
	bool cleanup = true;
	char path[4096];
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	struct lora_doc *cfg = NULL;
	if (access(path, R_OK) == 0 && lora_doc_parse_file(path, &cfg, NULL) == 0)
		lora_doc_get_bool(cfg, "clean_up_tokenization_spaces", path, &cleanup, NULL);
	lora_doc_free(cfg);
	if (cleanup)
		flags |= LORA_TOK_CLEANUP;
	if (!strcmp(model_type, "t5"))
		flags |= LORA_TOK_STRIP;
	return flags;
}

const struct lora_model_info *lora_model_info(const struct lora_model *m)
{
	return &m->core.info;
}

const struct lora_tok *lora_model_tok(const struct lora_model *m)
{
	return m->tok;
}

static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static bool file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static uint64_t hash_name(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static const struct lora_st_tensor *find_tensor(const struct lora_model *m, const char *name)
{
	for (size_t i = 0; i < m->n_shards; i++) {
		const struct lora_st_tensor *t = lora_st_find(m->shards[i], name);
		if (t)
			return t;
	}
	return NULL;
}

bool lora_model_has_weight(const struct lora_model *m, const char *name)
{
	return find_tensor(m, name) != NULL;
}

const float *lora_model_weight(struct lora_model *m, const char *name, int64_t rows,
			       int64_t cols, struct lora_err *err)
{
	const struct lora_st_tensor *t = find_tensor(m, name);
	if (!t) {
		lora_errf(err, LORA_ENOTFOUND, "%s: tensor '%s' not found in the model's weights",
			  m->dir, name);
		return NULL;
	}
	int64_t want[2] = {rows, cols};
	int wnd = cols ? 2 : 1;
	bool ok = t->ndim == wnd && t->shape[0] == rows && (wnd == 1 || t->shape[1] == cols);
	if (!ok) {
		char a[96], b[96];
		lora_errf(err, LORA_EINVAL, "%s: tensor '%s' has shape %s, config.json implies %s",
			  m->dir, name, lora_shape_str(t->shape, t->ndim, a, sizeof a),
			  lora_shape_str(want, wnd, b, sizeof b));
		return NULL;
	}
	size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
	if (t->dtype == LORA_F32 && ((uintptr_t)t->data & 3) == 0)
		return t->data;
	for (size_t i = 0; i < m->n_conv; i++)
		if (strcmp(m->conv[i].name, name) == 0)
			return m->conv[i].data;
	if (m->n_conv == m->cap_conv) {
		size_t cap = m->cap_conv ? 2 * m->cap_conv : 64;
		struct converted *c = realloc(m->conv, cap * sizeof *c);
		if (!c) {
			lora_errf(err, LORA_ENOMEM, "out of memory converting '%s'", name);
			return NULL;
		}
		m->conv = c;
		m->cap_conv = cap;
	}
	size_t bytes;
	float *data = NULL;
	char *nm = strdup(name);
	if (lora_size_mul(n, sizeof(float), &bytes) == 0)
		data = malloc(bytes);
	if (!data || !nm) {
		free(data);
		free(nm);
		lora_errf(err, LORA_ENOMEM, "out of memory converting '%s' to f32", name);
		return NULL;
	}
	if (t->dtype == LORA_F32)
		memcpy(data, t->data, bytes);
	else
		lora_to_f32(data, t->data, t->dtype, n);
	m->conv[m->n_conv].name = nm;
	m->conv[m->n_conv].data = data;
	m->n_conv++;
	m->core.info.converted_bytes += bytes;
	return data;
}

static int slots_rebuild(struct lora_model *m, size_t n_slots)
{
	size_t *s = calloc(n_slots, sizeof *s);
	if (!s)
		return LORA_ENOMEM;
	for (size_t i = 0; i < m->n_lins; i++) {
		size_t k = hash_name(m->lins[i].name) & (n_slots - 1);
		while (s[k])
			k = (k + 1) & (n_slots - 1);
		s[k] = i + 1;
	}
	free(m->slots);
	m->slots = s;
	m->n_slots = n_slots;
	return 0;
}

static struct linear *find_linear(const struct lora_model *m, const char *name)
{
	if (!m->n_slots)
		return NULL;
	size_t k = hash_name(name) & (m->n_slots - 1);
	while (m->slots[k]) {
		struct linear *l = &m->lins[m->slots[k] - 1];
		if (strcmp(l->name, name) == 0)
			return l;
		k = (k + 1) & (m->n_slots - 1);
	}
	return NULL;
}

int lora_model_declare_linear(struct lora_model *m, const char *name, int64_t out, int64_t in,
			      bool conv1d, struct lora_err *err)
{
	if (find_linear(m, name))
		return lora_errf(err, LORA_EINVAL, "linear '%s' declared twice", name);
	if (m->n_lins == m->cap_lins) {
		size_t cap = m->cap_lins ? 2 * m->cap_lins : 64;
		struct linear *l = realloc(m->lins, cap * sizeof *l);
		if (!l)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		m->lins = l;
		m->cap_lins = cap;
	}
	struct linear *l = &m->lins[m->n_lins];
	memset(l, 0, sizeof *l);
	if (!(l->name = strdup(name)))
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	l->out = out;
	l->in = in;
	l->conv1d = conv1d;
	m->n_lins++;
	if (2 * m->n_lins > m->n_slots || !m->slots) {
		size_t ns = m->n_slots ? m->n_slots : 64;
		while (2 * m->n_lins > ns)
			ns *= 2;
		if (slots_rebuild(m, ns) < 0)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
	} else {
		size_t k = hash_name(name) & (m->n_slots - 1);
		while (m->slots[k])
			k = (k + 1) & (m->n_slots - 1);
		m->slots[k] = m->n_lins;
	}
	return 0;
}

const struct lora_delta *lora_model_deltas(const struct lora_model *m, const char *name,
					   int *n_deltas)
{
	const struct linear *l = find_linear(m, name);
	*n_deltas = l ? l->n_deltas : 0;
	return l && l->n_deltas ? l->deltas : NULL;
}

void lora_model_linear(struct lora_model *m, const char *name, float *y, const float *x,
		       const float *w, bool w_trans, const float *bias, int T, int in, int out,
		       float beta, float *scratch)
{
	const struct linear *l = name && name[0] ? find_linear(m, name) : NULL;
	int nd = l ? l->n_deltas : 0;
	lora_linear_ex(y, x, w, w_trans, bias, nd ? l->deltas : NULL, nd, T, in, out, beta, scratch,
		       m->no_fold || (size_t)in * (size_t)out > m->fold_cap ? NULL : m->fold);
}

/* Detach the adapter, keeping the buffers for the next one. */
static void clear_adapter(struct lora_model *m)
{
	for (size_t i = 0; i < m->n_lins; i++)
		m->lins[i].n_deltas = 0;
}

/* Detach and free the adapter's buffers (lora_model_close). */
static void release_adapter(struct lora_model *m)
{
	for (size_t i = 0; i < m->n_lins; i++) {
		free(m->lins[i].deltas);
		m->lins[i].deltas = NULL;
		m->lins[i].n_deltas = m->lins[i].cap_deltas = 0;
	}
	free(m->fslab);
	free(m->fold);
	m->fslab = m->fold = NULL;
	m->fslab_cap = m->fold_cap = 0;
}

/* Grow *buf to hold n floats (contents not kept); 0 or LORA_ENOMEM. */
static int grow_floats(float **buf, size_t *cap, size_t n)
{
	if (n <= *cap)
		return 0;
	size_t bytes;
	if (lora_size_mul(n, sizeof(float), &bytes) < 0)
		return LORA_ENOMEM;
	float *p = malloc(bytes);
	if (!p)
		return LORA_ENOMEM;
	free(*buf);
	*buf = p;
	*cap = n;
	return 0;
}

/* Whether `longer` ends with "." + `shorter` (a dotted-suffix match). */
static bool dotted_suffix(const char *longer, const char *shorter)
{
	size_t a = strlen(longer), b = strlen(shorter);
	return a > b && longer[a - b - 1] == '.' && strcmp(longer + a - b, shorter) == 0;
}

/* The declared Linear a module means: exact "<module>.weight", else the
 * unique dotted-suffix match either way. */
static struct linear *resolve_module(const struct lora_model *m, const char *module)
{
	size_t n = strlen(module);
	char *w = malloc(n + 8);
	if (!w)
		return NULL;
	memcpy(w, module, n);
	memcpy(w + n, ".weight", 8);
	struct linear *l = find_linear(m, w);
	if (!l) {
		struct linear *hit = NULL;
		int hits = 0;
		for (size_t i = 0; i < m->n_lins; i++)
			if (dotted_suffix(m->lins[i].name, w) || dotted_suffix(w, m->lins[i].name)) {
				hit = &m->lins[i];
				hits++;
			}
		if (hits == 1)
			l = hit;
	}
	free(w);
	return l;
}

int lora_model_set_adapter(struct lora_model *m, const struct lora_adapter *a,
			   struct lora_err *err)
{
	clear_adapter(m);
	if (!a)
		return 0;
	const char *an = a->name ? a->name : "(unnamed)";
	/* resolve and check every module before attaching any */
	struct linear **to = calloc(a->n_modules + 1, sizeof *to);
	if (!to)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	size_t total = 0, fold = 0;
	int rc = 0;
	for (size_t i = 0; i < a->n_modules && !rc; i++) {
		const struct lora_module *mod = &a->modules[i];
		struct linear *l = to[i] = resolve_module(m, mod->module);
		if (!l) {
			rc = lora_errf(err, LORA_ENOTFOUND,
				       "adapter '%s': module '%s' is not a linear layer of this %s model",
				       an, mod->module, m->core.info.model_type);
			break;
		}
		int64_t r = mod->a.shape[0], in = mod->a.shape[1], out = mod->b.shape[0];
		if (mod->a.ndim != 2 || mod->b.ndim != 2 || mod->b.shape[1] != r || in != l->in ||
		    out != l->out) {
			rc = lora_errf(err, LORA_EINVAL,
				       "adapter '%s': module '%s' maps [in %lld] -> [out %lld], "
				       "but the model's '%s' is %lld -> %lld (an adapter for "
				       "another base model?)",
				       an, mod->module, (long long)in, (long long)out, l->name,
				       (long long)l->in, (long long)l->out);
			break;
		}
		if (r < 1 || r > INT32_MAX ||
		    mod->a.nbytes != (size_t)(r * in) * lora_dtype_size(mod->a.dtype) ||
		    mod->b.nbytes != (size_t)(out * r) * lora_dtype_size(mod->b.dtype)) {
			rc = lora_errf(err, LORA_EINVAL,
				       "adapter '%s': module '%s' has rank %lld or factor data that "
				       "does not match its shapes",
				       an, mod->module, (long long)r);
			break;
		}
		total += (size_t)(r * (in + out));
		fold = (size_t)(in * out) > fold ? (size_t)(in * out) : fold;
	}
	if (!rc && grow_floats(&m->fslab, &m->fslab_cap, total) < 0)
		rc = lora_errf(err, LORA_ENOMEM, "out of memory attaching adapter '%s'", an);
	const char *nf = getenv("LORA_LINEAR_FOLD");
	m->no_fold = !(nf && !strcmp(nf, "1"));
	/* without a fold buffer the deltas are applied unmerged: slower, same
	 * numbers up to rounding, so a failed allocation is not an error */
	if (!rc && !m->no_fold && grow_floats(&m->fold, &m->fold_cap, fold) < 0) {
		free(m->fold);
		m->fold = NULL;
		m->fold_cap = 0;
	}
	float *f = m->fslab;
	for (size_t i = 0; i < a->n_modules && !rc; i++) {
		const struct lora_module *mod = &a->modules[i];
		struct linear *l = to[i];
		int r = (int)mod->a.shape[0];
		size_t na = (size_t)r * (size_t)l->in, nb = (size_t)l->out * (size_t)r;
		if (l->n_deltas == l->cap_deltas) {
			int cap = l->cap_deltas ? 2 * l->cap_deltas : 2;
			struct lora_delta *d = realloc(l->deltas, (size_t)cap * sizeof *d);
			if (!d) {
				rc = lora_errf(err, LORA_ENOMEM, "out of memory attaching adapter '%s'",
					       an);
				break;
			}
			l->deltas = d;
			l->cap_deltas = cap;
		}
		lora_to_f32(f, mod->a.data, mod->a.dtype, na);
		lora_to_f32(f + na, mod->b.data, mod->b.dtype, nb);
		l->deltas[l->n_deltas++] = (struct lora_delta){
			.r = r, .scale = (float)lora_module_scale(a, mod), .a = f, .b = f + na};
		f += na + nb;
	}
	free(to);
	if (rc)
		clear_adapter(m);
	return rc;
}

/* Open DIR/model.safetensors, or every shard DIR/model.safetensors.index.json
 * names (each once, in first-seen order), checking that each indexed tensor
 * is in its shard. */
static int open_weights(struct lora_model *m, struct lora_err *err)
{
	char *single = path_join(m->dir, "model.safetensors");
	char *index = path_join(m->dir, "model.safetensors.index.json");
	int rc = 0;
	struct lora_doc *idx = NULL;
	if (!single || !index) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto out;
	}
	if (file_exists(single)) {
		if (!(m->shards = calloc(1, sizeof *m->shards))) {
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto out;
		}
		if ((rc = lora_st_open(single, &m->shards[0], err)) < 0)
			goto out;
		m->n_shards = 1;
		goto out;
	}
	if (!file_exists(index)) {
		rc = lora_errf(err, LORA_ENOTFOUND,
			       "%s: no model.safetensors or model.safetensors.index.json", m->dir);
		goto out;
	}
	if ((rc = lora_doc_parse_file(index, &idx, err)) < 0)
		goto out;
	const struct lora_doc *wm = lora_doc_get(idx, "weight_map");
	if (!wm || wm->type != LORA_DOC_MAP || wm->u.map.n == 0) {
		rc = lora_errf(err, LORA_EFORMAT, "%s: no 'weight_map' map", index);
		goto out;
	}
	if (!(m->shards = calloc(wm->u.map.n, sizeof *m->shards))) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto out;
	}
	const char **names = calloc(wm->u.map.n, sizeof *names);
	if (!names) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < wm->u.map.n && rc == 0; i++) {
		const struct lora_doc *v = &wm->u.map.vals[i];
		if (v->type != LORA_DOC_STRING || strchr(v->u.str.s, '/') || v->u.str.s[0] == '.') {
			rc = lora_errf(err, LORA_EFORMAT, "%s:%d: weight_map['%s'] must be a file name",
				       index, v->line, wm->u.map.keys[i]);
			break;
		}
		size_t k = 0;
		while (k < m->n_shards && strcmp(names[k], v->u.str.s) != 0)
			k++;
		if (k == m->n_shards) {
			char *p = path_join(m->dir, v->u.str.s);
			if (!p) {
				rc = lora_errf(err, LORA_ENOMEM, "out of memory");
				break;
			}
			rc = lora_st_open(p, &m->shards[k], err);
			free(p);
			if (rc < 0)
				break;
			names[k] = v->u.str.s;
			m->n_shards++;
		}
		if (!lora_st_find(m->shards[k], wm->u.map.keys[i]))
			rc = lora_errf(err, LORA_ENOTFOUND, "%s: weight_map puts '%s' in '%s', which lacks it",
				       index, wm->u.map.keys[i], v->u.str.s);
	}
	free(names);
out:
	lora_doc_free(idx);
	free(single);
	free(index);
	return rc;
}

/* bos/eos/pad/decoder_start from config.json (eos may be a list: first). */
static int config_token(const struct lora_doc *cfg, const char *key)
{
	const struct lora_doc *v = lora_doc_get(cfg, key);
	if (v && v->type == LORA_DOC_ARRAY && v->u.arr.n > 0)
		v = &v->u.arr.items[0];
	if (v && v->type == LORA_DOC_INT && v->u.i >= 0 && v->u.i <= INT32_MAX)
		return (int)v->u.i;
	return -1;
}

/* A config file of the model directory, parsed, or NULL when it is absent or
 * unreadable (transformers then uses its defaults too). */
static struct lora_doc *optional_config(const char *dir, const char *name)
{
	char *path = path_join(dir, name);
	struct lora_doc *d = NULL;
	if (path && file_exists(path) && lora_doc_parse_file(path, &d, NULL) == 0 &&
	    d->type != LORA_DOC_MAP) {
		lora_doc_free(d);
		d = NULL;
	}
	free(path);
	return d;
}

/* The id of tokenizer_config.json's eos_token ("</s>", or an AddedToken map
 * {"content": "</s>", ...}), which is what Hugging Face's tokenizer.eos_token_id
 * and so every label-building script appends; -1 when there is none or the
 * tokenizer lacks it. */
static int tokenizer_eos(const char *dir, const struct lora_tok *tok)
{
	struct lora_doc *tc = optional_config(dir, "tokenizer_config.json");
	const struct lora_doc *v = tc ? lora_doc_get(tc, "eos_token") : NULL;
	if (v && v->type == LORA_DOC_MAP)
		v = lora_doc_get(v, "content");
	int id = v && v->type == LORA_DOC_STRING ? lora_tok_id(tok, v->u.str.s) : -1;
	lora_doc_free(tc);
	return id;
}

/* info.eos_ids, the ids that end greedy generation, as transformers' generate
 * finds them: from_pretrained replaces the model config's generation settings
 * by generation_config.json when the directory has one, so its eos_token_id
 * (an int or a list) wins over config.json's. When neither names any, the
 * loss eos (info.eos, which T5 defaults to 1) stops generation alone. */
static int load_eos_ids(struct lora_model *m, struct lora_err *err)
{
	struct lora_model_info *info = &m->core.info;
	if (info->vocab > 0 && info->eos >= info->vocab)	/* a tokenizer token the model lacks */
		info->eos = config_token(m->config, "eos_token_id");
	struct lora_doc *gc = optional_config(m->dir, "generation_config.json");
	const struct lora_doc *v = gc ? lora_doc_get(gc, "eos_token_id") : NULL;
	if (!v || v->type == LORA_DOC_NULL)
		v = lora_doc_get(m->config, "eos_token_id");
	size_t n = v && v->type == LORA_DOC_ARRAY ? v->u.arr.n : 1;
	m->eos_ids = malloc((n + 1) * sizeof *m->eos_ids);
	if (!m->eos_ids) {
		lora_doc_free(gc);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	size_t k = 0;
	for (size_t i = 0; v && i < n; i++) {
		const struct lora_doc *x = v->type == LORA_DOC_ARRAY ? &v->u.arr.items[i] : v;
		if (x->type == LORA_DOC_INT && x->u.i >= 0 && x->u.i <= INT32_MAX)
			m->eos_ids[k++] = (int32_t)x->u.i;
	}
	if (k == 0 && info->eos >= 0)
		m->eos_ids[k++] = info->eos;
	lora_doc_free(gc);
	info->eos_ids = m->eos_ids;
	info->n_eos_ids = k;
	return 0;
}

bool lora_model_is_eos(const struct lora_model *m, int32_t tok)
{
	const struct lora_model_info *info = &m->core.info;
	for (size_t i = 0; i < info->n_eos_ids; i++)
		if (info->eos_ids[i] == tok)
			return true;
	return false;
}

int lora_model_open(const char *dir, struct lora_model **out, struct lora_err *err)
{
	*out = NULL;
	struct lora_model *m = calloc(1, sizeof *m);
	if (!m || !(m->dir = strdup(dir))) {
		free(m);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	m->core.dir = m->dir;
	int rc;
	char *cfgpath = path_join(dir, "config.json");
	if (!cfgpath) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto fail;
	}
	if (!file_exists(cfgpath)) {
		rc = lora_errf(err, LORA_ENOTFOUND, "%s: no config.json (not a model directory?)", dir);
		free(cfgpath);
		goto fail;
	}
	rc = lora_doc_parse_file(cfgpath, &m->config, err);
	if (rc == 0 && m->config->type != LORA_DOC_MAP)
		rc = lora_errf(err, LORA_EFORMAT, "%s: not a JSON object", cfgpath);
	const char *type = NULL;
	if (rc == 0) {
		rc = lora_doc_get_string(m->config, "model_type", cfgpath, &type, err);
		if (rc == LORA_ENOTFOUND)
			rc = lora_errf(err, LORA_EFORMAT, "%s: no 'model_type'", cfgpath);
	}
	if (rc == 0) {
		if (strcmp(type, "t5") == 0)
			m->arch = &lora_arch_t5;
		else if (strcmp(type, "llama") == 0 || strcmp(type, "mistral") == 0 ||
			 strcmp(type, "qwen2") == 0)
			m->arch = &lora_arch_llama;
		else if (strcmp(type, "gpt2") == 0)
			m->arch = &lora_arch_gpt2;
		else
			rc = lora_errf(err, LORA_EUNSUPPORTED,
				       "%s: model_type '%s' is not supported "
				       "(supported: t5, llama, mistral, qwen2, gpt2)",
				       cfgpath, type);
	}
	free(cfgpath);
	if (rc < 0)
		goto fail;
	m->core.config = m->config;
	struct lora_model_info *info = &m->core.info;
	info->model_type = type;
	info->bos = config_token(m->config, "bos_token_id");
	info->eos = config_token(m->config, "eos_token_id");
	info->pad = config_token(m->config, "pad_token_id");
	info->decoder_start = config_token(m->config, "decoder_start_token_id");

	if ((rc = lora_tok_open(dir, &m->tok, err)) < 0) {
		lora_err_prefix(err, rc, "%s: tokenizer: ", dir);
		goto fail;
	}
	m->decode_flags = decode_flags_of(dir, info->model_type);
	int tok_eos = tokenizer_eos(dir, m->tok);
	if (tok_eos >= 0)
		info->eos = tok_eos;
	if ((rc = open_weights(m, err)) < 0)
		goto fail;
	for (size_t s = 0; s < m->n_shards; s++)
		for (size_t i = 0; i < lora_st_count(m->shards[s]); i++) {
			const struct lora_st_tensor *t = lora_st_get(m->shards[s], i);
			size_t n = 1;
			for (int d = 0; d < t->ndim; d++)
				n *= (size_t)t->shape[d];
			info->n_params += n;
			info->weight_bytes += t->nbytes;
		}
	if ((rc = m->arch->load(m, err)) < 0 || (rc = load_eos_ids(m, err)) < 0)
		goto fail;
	*out = m;
	return 0;
fail:
	lora_model_close(m);
	return rc;
}

int lora_model_set_bf16(struct lora_model *m, bool on, struct lora_err *err)
{
	for (size_t i = 0; i < m->n_bf16; i++) {
		lora_bf16_unregister(m->bf16_key[i]);
		lora_bf16_free(m->bf16[i]);
	}
	free(m->bf16);
	free(m->bf16_key);
	m->bf16 = NULL;
	m->bf16_key = NULL;
	m->n_bf16 = m->core.info.bf16_bytes = 0;
	if (!on)
		return 0;
	if (!lora_bf16_supported())
		return lora_errf(err, LORA_EUNSUPPORTED, "bf16: this CPU lacks AVX512-BF16");
	m->bf16 = calloc(m->n_lins + 1, sizeof *m->bf16);
	m->bf16_key = calloc(m->n_lins + 1, sizeof *m->bf16_key);
	if (!m->bf16 || !m->bf16_key) {
		lora_model_set_bf16(m, false, NULL);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	long page = sysconf(_SC_PAGESIZE);
	for (size_t i = 0; i < m->n_lins; i++) {
		const struct linear *l = &m->lins[i];
		int64_t rows = l->conv1d ? l->in : l->out, cols = l->conv1d ? l->out : l->in;
		const float *w = lora_model_weight(m, l->name, rows, cols, err);
		struct lora_bf16_mat *pw = NULL;
		int rc = w ? lora_bf16_pack_f32(w, (int)l->out, (int)l->in, !l->conv1d, &pw, err)
			   : (err ? err->code : LORA_EINVAL);
		if (rc >= 0 && (rc = lora_bf16_register(w, pw, err)) < 0)
			lora_bf16_free(pw);
		if (rc < 0) {
			lora_model_set_bf16(m, false, NULL);
			return lora_err_prefix(err, rc, "bf16: '%s'", l->name);
		}
		m->bf16[m->n_bf16] = pw;
		m->bf16_key[m->n_bf16++] = w;
		m->core.info.bf16_bytes += lora_bf16_bytes(pw);
		/* the f32 pages straight from the file are not read any more:
		 * give them back. MADV_PAGEOUT keeps the contents (a reader that
		 * still comes faults them in again), also where st.c copied a
		 * misaligned file to the heap, which MADV_DONTNEED would zero. */
		const struct lora_st_tensor *t = find_tensor(m, l->name);
		if (t && (const void *)w == t->data && page > 0) {
			uintptr_t a = ((uintptr_t)w + page - 1) / page * page;
			uintptr_t b = ((uintptr_t)w + (size_t)rows * cols * sizeof *w) / page * page;
#ifdef MADV_PAGEOUT
			if (b > a)
				madvise((void *)a, b - a, MADV_PAGEOUT);
#endif
		}
	}
	return 0;
}

void lora_model_close(struct lora_model *m)
{
	if (!m)
		return;
	lora_model_set_bf16(m, false, NULL);
	release_adapter(m);
	if (m->arch && m->core.arch_state)
		m->arch->free(m);
	for (size_t i = 0; i < m->n_lins; i++)
		free(m->lins[i].name);
	free(m->lins);
	free(m->slots);
	for (size_t i = 0; i < m->n_conv; i++) {
		free(m->conv[i].name);
		free(m->conv[i].data);
	}
	free(m->conv);
	for (size_t i = 0; i < m->n_shards; i++)
		lora_st_close(m->shards[i]);
	free(m->shards);
	lora_tok_close(m->tok);
	free(m->eos_ids);
	lora_doc_free(m->config);
	free(m->dir);
	free(m);
}

static int check_ids(const struct lora_model *m, const int32_t *ids, size_t n, const char *what,
		     size_t k, struct lora_err *err)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= m->core.info.vocab)
			return lora_errf(err, LORA_EINVAL,
					 "sequence %zu: %s id %d at %zu is outside the vocabulary [0, %d)",
					 k + 1, what, (int)ids[i], i, m->core.info.vocab);
	return 0;
}

int lora_model_nll(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		   struct lora_err *err)
{
	for (size_t k = 0; k < n; k++) {
		int rc = check_ids(m, seqs[k].input, seqs[k].n_input, "input", k, err);
		if (rc == 0)
			rc = check_ids(m, seqs[k].target, seqs[k].n_target, "target", k, err);
		if (rc < 0)
			return rc;
	}
	return m->arch->nll(m, seqs, n, nll, err);
}

int lora_model_logits(struct lora_model *m, const struct lora_seq *seq, float **logits,
		      size_t *rows, struct lora_err *err)
{
	int rc = check_ids(m, seq->input, seq->n_input, "input", 0, err);
	if (rc == 0)
		rc = check_ids(m, seq->target, seq->n_target, "target", 0, err);
	if (rc < 0)
		return rc;
	return m->arch->logits(m, seq, logits, rows, err);
}

int lora_model_generate(struct lora_model *m, const int32_t *input, size_t n_input,
			size_t max_new, int32_t *out, size_t *n_out, struct lora_err *err)
{
	*n_out = 0;
	int rc = check_ids(m, input, n_input, "input", 0, err);
	if (rc < 0)
		return rc;
	if (max_new == 0)
		return 0;
	return m->arch->generate(m, input, n_input, max_new, out, n_out, err);
}
