/*
 * peft — Hugging Face PEFT LoRA adapters on disk <-> struct lora_adapter;
 * see peft.h.
 *
 * On disk (PEFT 0.10 `save_pretrained`): adapter_config.json (sorted keys,
 * indent 2) and adapter_model.safetensors with keys
 * "base_model.model.<module>.lora_A.weight" / ".lora_B.weight" (older files
 * may carry the adapter name: ".lora_A.<name>.weight"). lora_A is [r, in] and
 * lora_B is [out, r] for every layer type we accept, GPT-2's Conv1D included:
 * PEFT builds its LoRA factors for Conv1D from (in, out) = weight.shape and
 * only transposes the product B·A when it folds it into the [in, out] Conv1D
 * weight. So the factors already mean ΔW = s·B·A in the [out, in] orientation
 * the stream uses, and neither reading nor writing transposes anything;
 * fan_in_fan_out stays in meta.config and tells a model loader that the base
 * weight is stored [in, out] (fold ΔWᵀ there).
 *
 * rank_pattern / alpha_pattern are resolved as PEFT 0.10's
 * LoraModel._create_and_replace does: the pattern keys (rank_pattern's first,
 * then alpha_pattern's, in file order) are tried as the regular expression
 * ".*\." + key + "$" anchored at the start of the module name (PCRE2 here,
 * Python `re.match` there); the first key that matches is then looked up in
 * both maps, falling back to r / lora_alpha. One extension: when nothing
 * matches, a key equal to the whole module name is used (0.10 can never
 * match a top-level module such as "lm_head"; newer PEFT can, and our writer
 * needs it). The rank a module really has is the row count of its lora_A; a
 * config that disagrees is refused.
 *
 * Refused, naming the feature and the file: peft_type other than LORA,
 * use_dora / lora_magnitude_vector tensors (DoRA), lora_bias / lora_B.bias
 * tensors, embedding and convolution LoRA, and any tensor that is not a LoRA
 * factor (modules_to_save heads such as "base_model.model.score.weight",
 * trained biases).
 */
#include "peft.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "st.h"

#define KEY_PREFIX "base_model.model."

/* ------------------------------------------------------------- path utils */

static char *path_join(const char *dir, const char *name)
{
	size_t dl = strlen(dir);
	while (dl > 1 && dir[dl - 1] == '/')
		dl--;
	size_t n = dl + 1 + strlen(name) + 1;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%.*s/%s", (int)dl, dir, name);
	return p;
}

/* Base name of a path without trailing slashes (malloc'd). */
static char *base_name(const char *path)
{
	size_t n = strlen(path);
	while (n > 1 && path[n - 1] == '/')
		n--;
	size_t s = n;
	while (s > 0 && path[s - 1] != '/')
		s--;
	if (n - s == 0 || (n - s == 1 && path[s] == '.') ||
	    (n - s == 2 && path[s] == '.' && path[s + 1] == '.')) {
		/* ".", ".." or "/": use the real directory's name */
		char *rp = realpath(path, NULL);
		if (rp) {
			char *b = strrchr(rp, '/');
			char *r = strdup(b && b[1] ? b + 1 : "adapter");
			free(rp);
			return r;
		}
		return strdup("adapter");
	}
	char *r = malloc(n - s + 1);
	if (r) {
		memcpy(r, path + s, n - s);
		r[n - s] = '\0';
	}
	return r;
}

static bool ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && memcmp(s + a - b, suf, b) == 0;
}

/* ----------------------------------------------------------- key parsing */

enum factor { F_A, F_B };

/* Split "base_model.model.<module>.lora_A[.<adapter>].weight" into module
 * and factor. Returns 1 if it is a LoRA factor key, 0 if not. */
static int parse_key(const char *key, char **module, enum factor *f, char **adapter)
{
	*module = NULL;
	*adapter = NULL;
	const char *k = key;
	if (strncmp(k, KEY_PREFIX, strlen(KEY_PREFIX)) == 0)
		k += strlen(KEY_PREFIX);
	if (!ends_with(k, ".weight"))
		return 0;
	size_t kl = strlen(k) - strlen(".weight");
	/* find the last ".lora_A" / ".lora_B" component before ".weight" */
	for (size_t i = kl; i-- > 0;) {
		if (k[i] != '.')
			continue;
		if (strncmp(k + i, ".lora_A", 7) != 0 && strncmp(k + i, ".lora_B", 7) != 0)
			continue;
		size_t after = i + 7;
		if (after != kl && k[after] != '.')
			continue;
		if (i == 0)
			return 0;
		*f = k[i + 6] == 'A' ? F_A : F_B;
		*module = strndup(k, i);
		if (after < kl)
			*adapter = strndup(k + after + 1, kl - after - 1);
		return 1;
	}
	return 0;
}

/* ------------------------------------------------------- pattern matching */

/* PEFT 0.10: re.match(".*\\." + key + "$", name). 1 match, 0 no, <0 error. */
static int pattern_match(const char *key, const char *name, const char *cfgpath,
			 struct lora_err *err)
{
	size_t pl = strlen(key) + 8;
	char *pat = malloc(pl);
	if (!pat)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	snprintf(pat, pl, ".*\\.%s$", key);
	int ecode;
	PCRE2_SIZE eoff;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
				       PCRE2_ANCHORED | PCRE2_UTF, &ecode, &eoff, NULL);
	free(pat);
	if (!re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ecode, msg, sizeof msg);
		return lora_errf(err, LORA_EFORMAT, "%s: pattern '%s' is not a valid regex: %s",
				 cfgpath, key, (const char *)msg);
	}
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
	if (!md) {
		pcre2_code_free(re);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	int rc = pcre2_match(re, (PCRE2_SPTR)name, strlen(name), 0, 0, md, NULL);
	pcre2_match_data_free(md);
	pcre2_code_free(re);
	if (rc >= 0)
		return 1;
	if (rc == PCRE2_ERROR_NOMATCH)
		return 0;
	return lora_errf(err, LORA_EFORMAT, "%s: pattern '%s': regex match failed (%d)",
			 cfgpath, key, rc);
}

/* Resolve r and alpha for module as PEFT 0.10 does. */
static int resolve_pattern(const struct lora_doc *cfg, const char *module, const char *cfgpath,
			   int64_t r0, double alpha0, int64_t *r, double *alpha,
			   struct lora_err *err)
{
	const struct lora_doc *rp = lora_doc_get(cfg, "rank_pattern");
	const struct lora_doc *ap = lora_doc_get(cfg, "alpha_pattern");
	const struct lora_doc *maps[2] = {rp, ap};
	const char *hit = NULL;
	*r = r0;
	*alpha = alpha0;
	for (int m = 0; m < 2 && !hit; m++) {
		const struct lora_doc *p = maps[m];
		if (!p || p->type != LORA_DOC_MAP)
			continue;
		for (size_t i = 0; i < p->u.map.n && !hit; i++) {
			int rc = pattern_match(p->u.map.keys[i], module, cfgpath, err);
			if (rc < 0)
				return rc;
			if (rc)
				hit = p->u.map.keys[i];
		}
	}
	/* Not PEFT 0.10: a key equal to the whole module name (which 0.10 can
	 * never match, since it wants a '.' before the key; newer PEFT does
	 * match it). lora_peft_write needs this for top-level modules such as
	 * lm_head. */
	for (int m = 0; m < 2 && !hit; m++) {
		const struct lora_doc *p = maps[m];
		if (p && p->type == LORA_DOC_MAP && lora_doc_get(p, module))
			for (size_t i = 0; i < p->u.map.n && !hit; i++)
				if (strcmp(p->u.map.keys[i], module) == 0)
					hit = p->u.map.keys[i];
	}
	if (!hit)
		return 0;
	const struct lora_doc *v = lora_doc_get(rp, hit);
	if (v) {
		if (v->type != LORA_DOC_INT)
			return lora_errf(err, LORA_EFORMAT, "%s: rank_pattern '%s' must be an integer",
					 cfgpath, hit);
		*r = v->u.i;
	}
	v = lora_doc_get(ap, hit);
	if (v) {
		if (v->type == LORA_DOC_INT)
			*alpha = (double)v->u.i;
		else if (v->type == LORA_DOC_FLOAT)
			*alpha = v->u.f;
		else
			return lora_errf(err, LORA_EFORMAT,
					 "%s: alpha_pattern '%s' must be a number", cfgpath, hit);
	}
	return 0;
}

/* ---------------------------------------------------------------- reading */

/* Natural order: digit runs compare as numbers, so h.2 < h.10. */
static int natcmp(const char *a, const char *b)
{
	while (*a && *b) {
		if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
			const char *x = a, *y = b;
			while (*x == '0')
				x++;
			while (*y == '0')
				y++;
			size_t lx = 0, ly = 0;
			while (x[lx] >= '0' && x[lx] <= '9')
				lx++;
			while (y[ly] >= '0' && y[ly] <= '9')
				ly++;
			if (lx != ly)
				return lx < ly ? -1 : 1;
			int c = memcmp(x, y, lx);
			if (c)
				return c;
			a = x + lx;
			b = y + ly;
			continue;
		}
		if (*a != *b)
			return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
		a++;
		b++;
	}
	return *a ? 1 : *b ? -1 : strcmp(a, b);
}

static int cmp_module(const void *x, const void *y)
{
	const struct lora_module *a = x, *b = y;
	int c = natcmp(a->module, b->module);
	return c ? c : strcmp(a->module, b->module);
}

static int copy_tensor(struct lora_tensor *dst, const struct lora_st_tensor *src)
{
	memset(dst, 0, sizeof *dst);
	dst->dtype = src->dtype;
	dst->ndim = src->ndim;
	memcpy(dst->shape, src->shape, sizeof dst->shape);
	dst->nbytes = src->nbytes;
	dst->data = malloc(src->nbytes ? src->nbytes : 1);
	if (!dst->data)
		return LORA_ENOMEM;
	if (src->nbytes)
		memcpy(dst->data, src->data, src->nbytes);
	dst->owned = 1;
	return 0;
}

static int get_bool_opt(const struct lora_doc *cfg, const char *key, const char *cfgpath,
			bool *out, struct lora_err *err)
{
	const struct lora_doc *v = lora_doc_get(cfg, key);
	if (!v || v->type == LORA_DOC_NULL)
		return 0;
	int rc = lora_doc_get_bool(cfg, key, cfgpath, out, err);
	return rc == LORA_ENOTFOUND ? 0 : rc;
}

/* Where are the config and the weights? */
static int locate(const char *path, char **cfgpath, char **stpath, char **name,
		  struct lora_err *err)
{
	struct stat sb;
	*cfgpath = *stpath = *name = NULL;
	if (stat(path, &sb) < 0)
		return lora_errf(err, errno == ENOENT ? LORA_ENOTFOUND : LORA_EIO,
				 "cannot open '%s': %s", path, strerror(errno));
	if (S_ISDIR(sb.st_mode)) {
		*cfgpath = path_join(path, "adapter_config.json");
		*stpath = path_join(path, "adapter_model.safetensors");
		*name = base_name(path);
	} else {
		char *tmp = strdup(path);
		if (!tmp)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		char *dir = dirname(tmp);
		*cfgpath = path_join(dir, "adapter_config.json");
		*stpath = strdup(path);
		char *b = base_name(path);
		if (b && ends_with(b, ".safetensors"))
			b[strlen(b) - strlen(".safetensors")] = '\0';
		if (b && strcmp(b, "adapter_model") == 0) {
			free(b);
			b = base_name(dir);
		}
		*name = b;
		free(tmp);
	}
	if (!*cfgpath || !*stpath || !*name)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	if (S_ISDIR(sb.st_mode) && access(*stpath, F_OK) < 0) {
		char *bin = path_join(path, "adapter_model.bin");
		bool has_bin = bin && access(bin, F_OK) == 0;
		free(bin);
		if (has_bin)
			return lora_errf(err, LORA_EUNSUPPORTED,
					 "%s: only adapter_model.safetensors is supported, not the pickle adapter_model.bin",
					 path);
		return lora_errf(err, LORA_ENOTFOUND, "%s: no adapter_model.safetensors", path);
	}
	if (access(*cfgpath, F_OK) < 0)
		return lora_errf(err, LORA_ENOTFOUND, "%s: missing adapter_config.json (%s)",
				 path, *cfgpath);
	return 0;
}

/* Check the config's fields; fill r, alpha, rslora, base. */
static int read_config(const struct lora_doc *cfg, const char *cfgpath, struct lora_adapter *a,
		       struct lora_err *err)
{
	if (cfg->type != LORA_DOC_MAP)
		return lora_errf(err, LORA_EFORMAT, "%s: not a JSON object", cfgpath);
	const char *pt = NULL;
	int rc = lora_doc_get_string(cfg, "peft_type", cfgpath, &pt, err);
	if (rc == LORA_ENOTFOUND)
		return lora_errf(err, LORA_EFORMAT, "%s: no peft_type", cfgpath);
	if (rc < 0)
		return rc;
	if (strcmp(pt, "LORA") != 0)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: peft_type is %s; only LORA adapters are supported", cfgpath, pt);
	bool b = false;
	if ((rc = get_bool_opt(cfg, "use_dora", cfgpath, &b, err)) < 0)
		return rc;
	if (b)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: DoRA adapters (use_dora) are not supported", cfgpath);
	b = false;
	if ((rc = get_bool_opt(cfg, "lora_bias", cfgpath, &b, err)) < 0)
		return rc;
	if (b)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: LoRA bias (lora_bias) is not supported", cfgpath);
	int64_t r = 8;	/* PEFT's defaults */
	double alpha = 8;
	rc = lora_doc_get_int(cfg, "r", cfgpath, &r, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	if (r < 1 || r > INT_MAX)
		return lora_errf(err, LORA_EINVAL, "%s: r is %lld, must be at least 1", cfgpath,
				 (long long)r);
	rc = lora_doc_get_double(cfg, "lora_alpha", cfgpath, &alpha, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	if (!isfinite(alpha))
		return lora_errf(err, LORA_EINVAL, "%s: lora_alpha is not finite", cfgpath);
	bool rs = false;
	if ((rc = get_bool_opt(cfg, "use_rslora", cfgpath, &rs, err)) < 0)
		return rc;
	bool fifo = false;	/* checked for type only: nothing to transpose */
	if ((rc = get_bool_opt(cfg, "fan_in_fan_out", cfgpath, &fifo, err)) < 0)
		return rc;
	const struct lora_doc *pat;
	if ((pat = lora_doc_get(cfg, "rank_pattern")) && pat->type != LORA_DOC_MAP &&
	    pat->type != LORA_DOC_NULL)
		return lora_errf(err, LORA_EFORMAT, "%s: rank_pattern must be an object", cfgpath);
	if ((pat = lora_doc_get(cfg, "alpha_pattern")) && pat->type != LORA_DOC_MAP &&
	    pat->type != LORA_DOC_NULL)
		return lora_errf(err, LORA_EFORMAT, "%s: alpha_pattern must be an object", cfgpath);
	const char *base = NULL;
	rc = lora_doc_get_string(cfg, "base_model_name_or_path", cfgpath, &base, err);
	if (rc < 0 && rc != LORA_ENOTFOUND) {
		const struct lora_doc *v = lora_doc_get(cfg, "base_model_name_or_path");
		if (!v || v->type != LORA_DOC_NULL)
			return rc;
		base = NULL;
	}
	a->r = (int)r;
	a->alpha = alpha;
	a->rslora = rs;
	if (base && !(a->base = strdup(base)))
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	return 0;
}

/* Explain a tensor that is not a LoRA factor. */
static int refuse_tensor(const char *key, const char *stpath, struct lora_err *err)
{
	if (strstr(key, "lora_magnitude_vector"))
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: tensor '%s' is a DoRA magnitude vector; DoRA adapters are not supported",
				 stpath, key);
	if (strstr(key, ".lora_B.") && ends_with(key, ".bias"))
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: tensor '%s' is a LoRA bias (lora_bias), which is not supported",
				 stpath, key);
	if (strstr(key, "lora_embedding_"))
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: tensor '%s': LoRA on embedding layers is not supported", stpath,
				 key);
	if (ends_with(key, ".bias"))
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: tensor '%s' is a trained bias (PEFT bias option), which is not supported",
				 stpath, key);
	return lora_errf(err, LORA_EUNSUPPORTED,
			 "%s: tensor '%s' is a full weight, not a LoRA factor (modules_to_save); adapters carrying modules_to_save weights are not supported",
			 stpath, key);
}

/* Find or add module name in a (modules grow in place). */
static struct lora_module *module_slot(struct lora_adapter *a, size_t *cap, const char *name)
{
	for (size_t i = 0; i < a->n_modules; i++)
		if (strcmp(a->modules[i].module, name) == 0)
			return &a->modules[i];
	if (a->n_modules == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		struct lora_module *p = realloc(a->modules, nc * sizeof *p);
		if (!p)
			return NULL;
		a->modules = p;
		*cap = nc;
	}
	struct lora_module *m = &a->modules[a->n_modules];
	memset(m, 0, sizeof *m);
	m->module = strdup(name);
	if (!m->module)
		return NULL;
	a->n_modules++;
	return m;
}

int lora_peft_read(const char *path, struct lora_adapter *out, struct lora_err *err)
{
	struct lora_adapter a;
	struct lora_doc *cfg = NULL;
	struct lora_st *st = NULL;
	char *cfgpath = NULL, *stpath = NULL, *name = NULL, *adapter_name = NULL;
	size_t cap = 0;
	int rc;

	memset(&a, 0, sizeof a);
	memset(out, 0, sizeof *out);
	rc = locate(path, &cfgpath, &stpath, &name, err);
	if (rc < 0)
		goto fail;
	rc = lora_doc_parse_file(cfgpath, &cfg, err);
	if (rc < 0)
		goto fail;
	rc = read_config(cfg, cfgpath, &a, err);
	if (rc < 0)
		goto fail;
	rc = lora_st_open(stpath, &st, err);
	if (rc < 0)
		goto fail;

	/* pass 1: classify every tensor, build the module list */
	size_t n = lora_st_count(st);
	for (size_t i = 0; i < n; i++) {
		const struct lora_st_tensor *t = lora_st_get(st, i);
		char *mod, *an;
		enum factor f;
		if (!parse_key(t->name, &mod, &f, &an)) {
			rc = refuse_tensor(t->name, stpath, err);
			goto fail;
		}
		if (!mod) {
			free(an);
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto fail;
		}
		if (an) {
			if (!adapter_name) {
				adapter_name = an;
				an = NULL;
			} else if (strcmp(an, adapter_name) != 0) {
				rc = lora_errf(err, LORA_EUNSUPPORTED,
					       "%s: holds more than one adapter ('%s' and '%s'); save them separately",
					       stpath, adapter_name, an);
				free(an);
				free(mod);
				goto fail;
			}
			free(an);
		}
		char sb[128];
		if (t->ndim != 2) {
			rc = lora_errf(err, LORA_EUNSUPPORTED,
				       "%s: tensor '%s' has shape %s; only 2-D (Linear/Conv1D) LoRA is supported",
				       stpath, t->name, lora_shape_str(t->shape, t->ndim, sb, sizeof sb));
			free(mod);
			goto fail;
		}
		struct lora_module *m = module_slot(&a, &cap, mod);
		free(mod);
		if (!m) {
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto fail;
		}
		struct lora_tensor *dst = f == F_A ? &m->a : &m->b;
		if (dst->data) {
			rc = lora_errf(err, LORA_EFORMAT, "%s: module '%s' has two lora_%c tensors",
				       stpath, m->module, f == F_A ? 'A' : 'B');
			goto fail;
		}
		if (copy_tensor(dst, t) < 0) {
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto fail;
		}
	}
	if (a.n_modules == 0) {
		rc = lora_errf(err, LORA_EFORMAT, "%s: no LoRA tensors", stpath);
		goto fail;
	}

	/* pass 2: pair check and per-module r / alpha */
	for (size_t i = 0; i < a.n_modules; i++) {
		struct lora_module *m = &a.modules[i];
		char sa[96], sb2[96];
		if (!m->a.data || !m->b.data) {
			rc = lora_errf(err, LORA_EFORMAT, "%s: module '%s' has lora_%c but no lora_%c",
				       stpath, m->module, m->a.data ? 'A' : 'B', m->a.data ? 'B' : 'A');
			goto fail;
		}
		if (m->a.shape[0] != m->b.shape[1] || m->a.shape[0] < 1) {
			rc = lora_errf(err, LORA_EFORMAT,
				       "%s: module '%s': lora_A %s and lora_B %s do not share a rank",
				       stpath, m->module, lora_shape_str(m->a.shape, 2, sa, sizeof sa),
				       lora_shape_str(m->b.shape, 2, sb2, sizeof sb2));
			goto fail;
		}
		int64_t r;
		double alpha;
		rc = resolve_pattern(cfg, m->module, cfgpath, a.r, a.alpha, &r, &alpha, err);
		if (rc < 0)
			goto fail;
		if (r != m->a.shape[0]) {
			rc = lora_errf(err, LORA_EINVAL,
				       "%s: module '%s': lora_A has rank %lld but %s gives r %lld",
				       stpath, m->module, (long long)m->a.shape[0], cfgpath,
				       (long long)r);
			goto fail;
		}
		m->r = (int)r;
		m->alpha = alpha;
	}
	qsort(a.modules, a.n_modules, sizeof *a.modules, cmp_module);

	/* name, meta */
	a.name = name;
	name = NULL;
	a.meta = calloc(1, sizeof *a.meta);
	if (!a.meta) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto fail;
	}
	lora_doc_init_map(a.meta);
	struct lora_doc cv = *cfg;
	free(cfg);	/* moved into meta */
	cfg = NULL;
	if (lora_doc_map_put(a.meta, "config", &cv) < 0 ||
	    lora_doc_map_put_string(a.meta, "source", path) < 0) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto fail;
	}
	rc = lora_adapter_check(&a, err);
	if (rc < 0) {
		lora_err_prefix(err, rc, "%s: ", path);
		goto fail;
	}
	lora_st_close(st);
	free(cfgpath);
	free(stpath);
	free(adapter_name);
	*out = a;
	return 0;
fail:
	lora_adapter_free(&a);
	lora_doc_free(cfg);
	lora_st_close(st);
	free(cfgpath);
	free(stpath);
	free(name);
	free(adapter_name);
	return rc;
}

/* ---------------------------------------------------------------- writing */

static int put_number(struct lora_doc *map, const char *key, double v)
{
	if (v == floor(v) && fabs(v) < 9e15)
		return lora_doc_map_put_int(map, key, (int64_t)v);
	return lora_doc_map_put_double(map, key, v);
}

/* PEFT 0.10's target_modules test for one module name: a string is a
 * full-match regex; a list matches a name equal to an entry or ending in
 * "." + entry. */
static int target_matches(const struct lora_doc *tm, const char *module)
{
	if (!tm)
		return 0;
	if (tm->type == LORA_DOC_STRING) {
		int ecode;
		PCRE2_SIZE eoff;
		pcre2_code *re = pcre2_compile((PCRE2_SPTR)tm->u.str.s, PCRE2_ZERO_TERMINATED,
					       PCRE2_UTF, &ecode, &eoff, NULL);
		if (!re)
			return 0;
		pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
		int rc = md ? pcre2_match(re, (PCRE2_SPTR)module, strlen(module), 0,
					  PCRE2_ANCHORED | PCRE2_ENDANCHORED, md, NULL)
			    : -1;
		pcre2_match_data_free(md);
		pcre2_code_free(re);
		return rc >= 0;
	}
	if (tm->type != LORA_DOC_ARRAY)
		return 0;
	size_t ml = strlen(module);
	for (size_t i = 0; i < tm->u.arr.n; i++) {
		const struct lora_doc *e = &tm->u.arr.items[i];
		if (e->type != LORA_DOC_STRING)
			continue;
		size_t el = e->u.str.len;
		if (strcmp(module, e->u.str.s) == 0)
			return 1;
		if (ml > el && module[ml - el - 1] == '.' && strcmp(module + ml - el, e->u.str.s) == 0)
			return 1;
	}
	return 0;
}

/* Does the config (as it stands) give every module of a its r and alpha,
 * and target every module? Then it can be written unchanged. */
static int config_fits(const struct lora_doc *cfg, const struct lora_adapter *a, bool *fits,
		       struct lora_err *err)
{
	int64_t r0 = 8;
	double alpha0 = 8;
	bool rs = false;
	*fits = false;
	if (lora_doc_get_int(cfg, "r", "config", &r0, NULL) == LORA_EFORMAT ||
	    lora_doc_get_double(cfg, "lora_alpha", "config", &alpha0, NULL) == LORA_EFORMAT)
		return 0;
	lora_doc_get_bool(cfg, "use_rslora", "config", &rs, NULL);
	if (r0 != a->r || alpha0 != a->alpha || rs != a->rslora)
		return 0;
	const struct lora_doc *tm = lora_doc_get(cfg, "target_modules");
	for (size_t i = 0; i < a->n_modules; i++) {
		const struct lora_module *m = &a->modules[i];
		int64_t r;
		double alpha;
		struct lora_err e2;
		if (resolve_pattern(cfg, m->module, "config", r0, alpha0, &r, &alpha, &e2) < 0)
			return 0;
		if (r != m->r || alpha != m->alpha)
			return 0;
		if (!target_matches(tm, m->module))
			return 0;
	}
	(void)err;
	*fits = true;
	return 0;
}

/* A pattern key that PEFT 0.10 matches against exactly this module name:
 * the name without its first component (0.10 needs a '.' before the key),
 * with regex metacharacters escaped. A top-level name ("lm_head") is used as
 * is: newer PEFT matches it, 0.10 cannot express it at all. */
static char *pattern_key(const char *module)
{
	const char *s = strchr(module, '.');
	s = s ? s + 1 : module;
	size_t n = strlen(s);
	char *k = malloc(2 * n + 1);
	if (!k)
		return NULL;
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		if (strchr("\\.^$|?*+()[]{}", s[i]))
			k[j++] = '\\';
		k[j++] = s[i];
	}
	k[j] = '\0';
	return k;
}

/* Build the adapter_config.json document for a. */
static int build_config(const struct lora_adapter *a, struct lora_doc **out,
			struct lora_err *err)
{
	const struct lora_doc *orig = a->meta ? lora_doc_get(a->meta, "config") : NULL;
	struct lora_doc *cfg;
	struct lora_doc v;
	int rc = 0;
	bool fits = false;

	*out = NULL;
	if (orig && orig->type == LORA_DOC_MAP) {
		cfg = lora_doc_clone(orig);
		if (!cfg)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		config_fits(cfg, a, &fits, err);
	} else {
		cfg = calloc(1, sizeof *cfg);
		if (!cfg)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		lora_doc_init_map(cfg);
		/* a minimal config PEFT accepts, keys sorted as PEFT writes them */
		memset(&v, 0, sizeof v);
		v.type = LORA_DOC_MAP;
		rc |= lora_doc_map_put(cfg, "alpha_pattern", &v);
		memset(&v, 0, sizeof v);
		rc |= lora_doc_map_put(cfg, "base_model_name_or_path", &v);
		rc |= lora_doc_map_put_string(cfg, "bias", "none");
		rc |= lora_doc_map_put_bool(cfg, "fan_in_fan_out", false);
		rc |= lora_doc_map_put_bool(cfg, "inference_mode", true);
		rc |= lora_doc_map_put_bool(cfg, "init_lora_weights", true);
		rc |= lora_doc_map_put_int(cfg, "lora_alpha", 8);
		rc |= lora_doc_map_put_double(cfg, "lora_dropout", 0.0);
		memset(&v, 0, sizeof v);
		rc |= lora_doc_map_put(cfg, "modules_to_save", &v);
		rc |= lora_doc_map_put_string(cfg, "peft_type", "LORA");
		rc |= lora_doc_map_put_int(cfg, "r", 8);
		memset(&v, 0, sizeof v);
		v.type = LORA_DOC_MAP;
		rc |= lora_doc_map_put(cfg, "rank_pattern", &v);
		memset(&v, 0, sizeof v);
		rc |= lora_doc_map_put(cfg, "target_modules", &v);
		memset(&v, 0, sizeof v);
		rc |= lora_doc_map_put(cfg, "task_type", &v);
		rc |= lora_doc_map_put_bool(cfg, "use_dora", false);
		rc |= lora_doc_map_put_bool(cfg, "use_rslora", false);
		if (rc)
			goto nomem;
	}
	if (a->base) {
		if (lora_doc_map_put_string(cfg, "base_model_name_or_path", a->base) < 0)
			goto nomem;
	}
	rc |= lora_doc_map_put_string(cfg, "peft_type", "LORA");
	if (rc)
		goto nomem;
	if (!fits) {
		/* r, alpha, rslora, patterns and targets from the tensors */
		struct lora_doc rp, ap, tm;
		lora_doc_init_map(&rp);
		lora_doc_init_map(&ap);
		lora_doc_init_array(&tm);
		rc |= lora_doc_map_put_int(cfg, "r", a->r);
		rc |= put_number(cfg, "lora_alpha", a->alpha);
		rc |= lora_doc_map_put_bool(cfg, "use_rslora", a->rslora);
		for (size_t i = 0; i < a->n_modules && !rc; i++) {
			const struct lora_module *m = &a->modules[i];
			struct lora_doc s;
			rc |= lora_doc_set_string(&s, m->module, strlen(m->module));
			if (!rc)
				rc |= lora_doc_array_push(&tm, &s);
			if (m->r == a->r && m->alpha == a->alpha)
				continue;
			char *k = pattern_key(m->module);
			if (!k) {
				rc = LORA_ENOMEM;
				break;
			}
			/* PEFT 0.10 uses the first matching key for both maps, so a
			 * module that differs in either gets both entries */
			rc |= lora_doc_map_put_int(&rp, k, m->r);
			rc |= put_number(&ap, k, m->alpha);
			free(k);
		}
		if (rc) {
			lora_doc_clear(&rp);
			lora_doc_clear(&ap);
			lora_doc_clear(&tm);
			goto nomem;
		}
		rc |= lora_doc_map_put(cfg, "rank_pattern", &rp);
		rc |= lora_doc_map_put(cfg, "alpha_pattern", &ap);
		rc |= lora_doc_map_put(cfg, "target_modules", &tm);
		if (rc)
			goto nomem;
	}
	*out = cfg;
	return 0;
nomem:
	lora_doc_free(cfg);
	return lora_errf(err, LORA_ENOMEM, "out of memory");
}

static int remove_tree(const char *dir)
{
	/* only our own two files and the directory itself */
	char *p = path_join(dir, "adapter_config.json");
	if (p)
		unlink(p);
	free(p);
	p = path_join(dir, "adapter_model.safetensors");
	if (p)
		unlink(p);
	free(p);
	return rmdir(dir);
}

int lora_peft_write(const char *dir, const struct lora_adapter *a, struct lora_err *err)
{
	struct stat sb;
	struct lora_doc *cfg = NULL;
	struct lora_st_tensor *ts = NULL;
	char **names = NULL;
	char *tmpdir = NULL, *p = NULL;
	FILE *f = NULL;
	int rc;

	if (lstat(dir, &sb) == 0)
		return lora_errf(err, LORA_EINVAL, "'%s' already exists", dir);
	rc = lora_adapter_check(a, err);
	if (rc < 0)
		return rc;
	rc = build_config(a, &cfg, err);
	if (rc < 0)
		return rc;

	/* temporary directory beside the target */
	{
		char *b = base_name(dir);
		char *cp = strdup(dir);
		if (!b || !cp) {
			free(b);
			free(cp);
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto out;
		}
		size_t l = strlen(cp);
		while (l > 1 && cp[l - 1] == '/')
			cp[--l] = '\0';
		char *parent = dirname(cp);
		size_t n = strlen(parent) + strlen(b) + 16;
		tmpdir = malloc(n);
		if (tmpdir)
			snprintf(tmpdir, n, "%s/.%s.XXXXXX", parent, b);
		free(b);
		free(cp);
		if (!tmpdir) {
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto out;
		}
		if (!mkdtemp(tmpdir)) {
			rc = lora_errf(err, LORA_EIO, "cannot create a directory beside '%s': %s", dir,
				       strerror(errno));
			free(tmpdir);
			tmpdir = NULL;
			goto out;
		}
		chmod(tmpdir, 0755);
	}

	/* adapter_config.json */
	p = path_join(tmpdir, "adapter_config.json");
	if (!p || !(f = fopen(p, "w"))) {
		rc = lora_errf(err, LORA_EIO, "cannot create '%s': %s", p ? p : dir,
			       strerror(errno));
		goto out;
	}
	rc = lora_doc_write_json(f, cfg, 2);
	if (rc == 0 && fflush(f) != 0)
		rc = LORA_EIO;
	if (rc == 0 && fsync(fileno(f)) != 0)
		rc = LORA_EIO;
	if (fclose(f) != 0)
		rc = LORA_EIO;
	f = NULL;
	if (rc < 0) {
		rc = lora_errf(err, LORA_EIO, "cannot write '%s': %s", p, strerror(errno));
		goto out;
	}
	free(p);
	p = NULL;

	/* adapter_model.safetensors */
	ts = calloc(2 * a->n_modules + 1, sizeof *ts);
	names = calloc(2 * a->n_modules + 1, sizeof *names);
	if (!ts || !names) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < a->n_modules; i++) {
		const struct lora_module *m = &a->modules[i];
		for (int k = 0; k < 2; k++) {
			const struct lora_tensor *t = k ? &m->b : &m->a;
			size_t j = 2 * i + (size_t)k;
			size_t n = strlen(KEY_PREFIX) + strlen(m->module) + 32;
			names[j] = malloc(n);
			if (!names[j]) {
				rc = lora_errf(err, LORA_ENOMEM, "out of memory");
				goto out;
			}
			snprintf(names[j], n, KEY_PREFIX "%s.lora_%c.weight", m->module, k ? 'B' : 'A');
			ts[j].name = names[j];
			ts[j].dtype = t->dtype;
			ts[j].ndim = t->ndim;
			memcpy(ts[j].shape, t->shape, sizeof ts[j].shape);
			ts[j].data = t->data;
			ts[j].nbytes = t->nbytes;
		}
	}
	{
		struct lora_doc md;
		lora_doc_init_map(&md);
		if (lora_doc_map_put_string(&md, "format", "pt") < 0) {
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto out;
		}
		p = path_join(tmpdir, "adapter_model.safetensors");
		rc = p ? lora_st_write(p, ts, 2 * a->n_modules, &md, err)
		       : lora_errf(err, LORA_ENOMEM, "out of memory");
		lora_doc_clear(&md);
		if (rc < 0)
			goto out;
	}

	/* publish: rename the finished directory into place, never over one */
	if (renameat2(AT_FDCWD, tmpdir, AT_FDCWD, dir, RENAME_NOREPLACE) < 0) {
		int e = errno;
		if (e == EINVAL || e == ENOSYS) {
			if (lstat(dir, &sb) == 0)
				e = EEXIST;
			else if (rename(tmpdir, dir) == 0)
				e = 0;
			else
				e = errno;
		}
		if (e) {
			rc = lora_errf(err, e == EEXIST ? LORA_EINVAL : LORA_EIO,
				       "cannot rename to '%s': %s", dir, strerror(e));
			goto out;
		}
	}
	free(tmpdir);
	tmpdir = NULL;
	rc = 0;
out:
	if (f)
		fclose(f);
	if (tmpdir) {
		remove_tree(tmpdir);
		free(tmpdir);
	}
	free(p);
	if (names)
		for (size_t i = 0; i < 2 * a->n_modules; i++)
			free(names[i]);
	free(names);
	free(ts);
	lora_doc_free(cfg);
	return rc;
}
