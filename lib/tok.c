/*
 * tok — a Hugging Face tokenizer.json pipeline: added tokens, normalizer,
 * pre-tokenizer, model (BPE or Unigram), post-processor, decoder.
 *
 * Encoding follows the `tokenizers` library step by step, so ids equal its
 * ids on the same file:
 *   1. added tokens that are not `normalized` are cut out of the raw text
 *      (leftmost-longest match; single_word/lstrip/rstrip honoured);
 *   2. each remaining piece is normalized, then the `normalized` added tokens
 *      are cut out of it;
 *   3. the pre-tokenizer splits the rest into words, the model maps each word
 *      to ids;
 *   4. with add_special, the post-processor adds its special tokens.
 * Empty pieces are dropped at every step, as the library does.
 * Decoding maps ids to token strings (added tokens first), drops special
 * tokens when asked, then runs the decoder chain and joins the result (with
 * no decoder, tokens are joined with spaces).
 *
 * Added tokens get the ids the library gives them, not the ones written in
 * the file: a token the model knows keeps the model's id, others are numbered
 * after the model vocabulary in file order (the same ids for any file the
 * library wrote). A `normalized` added token decodes to its normalized form.
 * Decoding does not apply transformers' clean_up_tokenization_spaces.
 *
 * Supported: models BPE (tok_bpe.c) and Unigram (tok_unigram.c);
 * normalizers and pre-tokenizers as listed in tok_norm.c; post-processors
 * TemplateProcessing (single), ByteLevel (no effect on ids), Bert/Roberta
 * processing, Sequence; decoders ByteLevel, Metaspace, ByteFallback, Fuse,
 * Strip, Replace, Sequence.
 * Limits: one sequence (no pairs), no truncation or padding (the file's
 * settings for those are ignored), no offsets. A directory with only a
 * SentencePiece model (spiece.model, tokenizer.model) is loaded through
 * tok_spm.c, which builds the tree transformers' converters would write.
 * Anything else is refused with a message naming the type (WordPiece and
 * WordLevel models, BertNormalizer, CTC/WordPiece decoders, ...).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "tok_internal.h"

/* ------------------------------------------------------------------ */
/* buffers, UTF-8, character classes                                   */

int tk_buf_reserve(struct tk_buf *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1) {
		if (cap > SIZE_MAX / 2)
			return LORA_ENOMEM;
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (!p)
		return LORA_ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

int tk_buf_put(struct tk_buf *b, const void *s, size_t n)
{
	if (tk_buf_reserve(b, n + 1))
		return LORA_ENOMEM;
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
	return 0;
}

int tk_buf_putcp(struct tk_buf *b, uint32_t cp)
{
	unsigned char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (unsigned char)(0xc0 | (cp >> 6));
		u[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (unsigned char)(0xe0 | (cp >> 12));
		u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (unsigned char)(0xf0 | (cp >> 18));
		u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	return tk_buf_put(b, u, n);
}

void tk_buf_free(struct tk_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

size_t tk_utf8_dec(const char *s, size_t n, uint32_t *cp, size_t *bad)
{
	const unsigned char *u = (const unsigned char *)s;
	unsigned c = u[0];
	size_t need;
	unsigned lo = 0x80, hi = 0xbf;
	uint32_t v;
	*bad = 1;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if (c >= 0xc2 && c <= 0xdf) {
		need = 1;
		v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 2;
		v = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 3;
		v = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	for (size_t i = 1; i <= need; i++) {
		if (i >= n)
			return 0;
		unsigned d = u[i];
		if (d < lo || d > hi)
			return 0;
		lo = 0x80;
		hi = 0xbf;
		v = (v << 6) | (d & 0x3f);
		*bad = i + 1;
	}
	*cp = v;
	return need + 1;
}

uint32_t tk_u8get(const char *s, size_t *len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t n = tk_u8len(u[0]);
	uint32_t v = n == 1 ? u[0] : n == 2 ? u[0] & 0x1fu : n == 3 ? u[0] & 0x0fu : u[0] & 0x07u;
	for (size_t i = 1; i < n; i++)
		v = (v << 6) | (u[i] & 0x3fu);
	*len = n;
	return v;
}

bool tk_is_space(uint32_t cp)
{
	if ((cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85)
		return true;
	if (cp < 0x80)
		return false;
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

bool tk_is_alnum(uint32_t cp)
{
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
	       (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

bool tk_is_numeric(uint32_t cp)
{
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
}

bool tk_is_punct(uint32_t cp)
{
	if (cp < 0x80)
		return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
		       (cp >= 123 && cp <= 126);
	utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
	return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

/* ------------------------------------------------------------------ */
/* hash maps                                                           */

static uint32_t hash_bytes(const char *s, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 16777619u;
	}
	return h;
}

static int map_grow(struct tk_map *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	struct tk_map nm = {0};
	nm.keys = calloc(cap, sizeof *nm.keys);
	nm.lens = malloc(cap * sizeof *nm.lens);
	nm.vals = malloc(cap * sizeof *nm.vals);
	nm.hash = malloc(cap * sizeof *nm.hash);
	if (!nm.keys || !nm.lens || !nm.vals || !nm.hash) {
		tk_map_free(&nm);
		return LORA_ENOMEM;
	}
	nm.cap = cap;
	for (size_t i = 0; i < m->cap; i++) {
		if (!m->keys[i])
			continue;
		size_t j = m->hash[i] & (cap - 1);
		while (nm.keys[j])
			j = (j + 1) & (cap - 1);
		nm.keys[j] = m->keys[i];
		nm.lens[j] = m->lens[i];
		nm.vals[j] = m->vals[i];
		nm.hash[j] = m->hash[i];
	}
	nm.n = m->n;
	tk_map_free(m);
	*m = nm;
	return 0;
}

int tk_map_put(struct tk_map *m, const char *k, size_t len, int32_t v)
{
	if ((m->n + 1) * 2 > m->cap && map_grow(m))
		return LORA_ENOMEM;
	uint32_t h = hash_bytes(k, len);
	size_t j = h & (m->cap - 1);
	while (m->keys[j]) {
		if (m->hash[j] == h && m->lens[j] == len && memcmp(m->keys[j], k, len) == 0) {
			m->vals[j] = v;
			return 0;
		}
		j = (j + 1) & (m->cap - 1);
	}
	m->keys[j] = k;
	m->lens[j] = (uint32_t)len;
	m->vals[j] = v;
	m->hash[j] = h;
	m->n++;
	return 0;
}

int32_t tk_map_get(const struct tk_map *m, const char *k, size_t len)
{
	if (!m->cap)
		return -1;
	uint32_t h = hash_bytes(k, len);
	size_t j = h & (m->cap - 1);
	while (m->keys[j]) {
		if (m->hash[j] == h && m->lens[j] == len && memcmp(m->keys[j], k, len) == 0)
			return m->vals[j];
		j = (j + 1) & (m->cap - 1);
	}
	return -1;
}

void tk_map_free(struct tk_map *m)
{
	free(m->keys);
	free(m->lens);
	free(m->vals);
	free(m->hash);
	memset(m, 0, sizeof *m);
}

static uint64_t hash_u64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	k *= 0xc4ceb9fe1a85ec53ULL;
	k ^= k >> 33;
	return k;
}

static int umap_grow(struct tk_umap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	struct tk_umap nm = {0};
	nm.keys = malloc(cap * sizeof *nm.keys);
	nm.a = malloc(cap * sizeof *nm.a);
	nm.b = malloc(cap * sizeof *nm.b);
	if (!nm.keys || !nm.a || !nm.b) {
		tk_umap_free(&nm);
		return LORA_ENOMEM;
	}
	memset(nm.keys, 0xff, cap * sizeof *nm.keys);
	nm.cap = cap;
	for (size_t i = 0; i < m->cap; i++) {
		if (m->keys[i] == UINT64_MAX)
			continue;
		size_t j = hash_u64(m->keys[i]) & (cap - 1);
		while (nm.keys[j] != UINT64_MAX)
			j = (j + 1) & (cap - 1);
		nm.keys[j] = m->keys[i];
		nm.a[j] = m->a[i];
		nm.b[j] = m->b[i];
	}
	nm.n = m->n;
	tk_umap_free(m);
	*m = nm;
	return 0;
}

int tk_umap_put(struct tk_umap *m, uint64_t k, uint32_t a, int32_t b)
{
	if ((m->n + 1) * 2 > m->cap && umap_grow(m))
		return LORA_ENOMEM;
	size_t j = hash_u64(k) & (m->cap - 1);
	while (m->keys[j] != UINT64_MAX) {
		if (m->keys[j] == k) {
			m->a[j] = a;
			m->b[j] = b;
			return 0;
		}
		j = (j + 1) & (m->cap - 1);
	}
	m->keys[j] = k;
	m->a[j] = a;
	m->b[j] = b;
	m->n++;
	return 0;
}

bool tk_umap_get(const struct tk_umap *m, uint64_t k, uint32_t *a, int32_t *b)
{
	if (!m->cap)
		return false;
	size_t j = hash_u64(k) & (m->cap - 1);
	while (m->keys[j] != UINT64_MAX) {
		if (m->keys[j] == k) {
			if (a)
				*a = m->a[j];
			if (b)
				*b = m->b[j];
			return true;
		}
		j = (j + 1) & (m->cap - 1);
	}
	return false;
}

void tk_umap_free(struct tk_umap *m)
{
	free(m->keys);
	free(m->a);
	free(m->b);
	memset(m, 0, sizeof *m);
}

int tk_pieces_push(struct tk_pieces *p, size_t off, size_t len, int32_t tok, bool first)
{
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;
		struct tk_piece *v = realloc(p->v, cap * sizeof *v);
		if (!v)
			return LORA_ENOMEM;
		p->v = v;
		p->cap = cap;
	}
	p->v[p->n++] = (struct tk_piece){off, len, tok, first};
	return 0;
}

void tk_pieces_free(struct tk_pieces *p)
{
	free(p->v);
	memset(p, 0, sizeof *p);
}

int tk_ids_push(struct tk_ids *ids, int32_t id)
{
	if (ids->n == ids->cap) {
		size_t cap = ids->cap ? ids->cap * 2 : 64;
		int32_t *v = realloc(ids->v, cap * sizeof *v);
		if (!v)
			return LORA_ENOMEM;
		ids->v = v;
		ids->cap = cap;
	}
	ids->v[ids->n++] = id;
	return 0;
}

const char *tk_get_str(const struct lora_doc *d, const char *key)
{
	const struct lora_doc *v = lora_doc_get(d, key);
	return v && v->type == LORA_DOC_STRING ? v->u.str.s : NULL;
}

/* ------------------------------------------------------------------ */
/* regex                                                               */

int tk_re_compile(struct tk_re *re, const char *pat, size_t len, bool literal, const char *what,
		  struct lora_err *err)
{
	int ec;
	PCRE2_SIZE eo;
	/* PCRE2_LITERAL allows UTF but not UCP */
	uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
	re->code = pcre2_compile((PCRE2_SPTR)pat, len, opt, &ec, &eo, NULL);
	if (!re->code) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ec, msg, sizeof msg);
		return lora_errf(err, LORA_EFORMAT, "%s: bad regex at offset %zu: %s", what,
				 (size_t)eo, (char *)msg);
	}
	re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
	return 0;
}

void tk_re_free(struct tk_re *re)
{
	pcre2_code_free(re->code);
	re->code = NULL;
}

int tk_re_each(const struct tk_re *re, const char *s, size_t n, pcre2_match_data *md,
	       int (*fn)(size_t, size_t, void *), void *ctx, struct lora_err *err)
{
	size_t pos = 0;
	while (pos <= n) {
		int rc = re->jit ? pcre2_jit_match(re->code, (PCRE2_SPTR)s, n, pos, 0, md, NULL)
				 : pcre2_match(re->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK,
					       md, NULL);
		if (rc == PCRE2_ERROR_NOMATCH)
			break;
		if (rc < 0) {
			PCRE2_UCHAR msg[256];
			pcre2_get_error_message(rc, msg, sizeof msg);
			return lora_errf(err, LORA_EINVAL, "regex match failed: %s", (char *)msg);
		}
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
		size_t a = ov[0], b = ov[1];
		int r = fn(a, b, ctx);
		if (r)
			return r;
		if (b > a)
			pos = b;
		else if (b < n)
			pos = b + tk_u8len((unsigned char)s[b]);
		else
			break;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* post-processors                                                      */

static void post_free(struct tk_post *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nsub; i++)
		post_free(&p->sub[i]);
	free(p->sub);
	free(p->pre);
	free(p->suf);
}

static int add_special_ids(const struct lora_doc *specials, const char *name, const char *file,
			   int32_t **v, size_t *n, struct lora_err *err)
{
	const struct lora_doc *sp = lora_doc_get(specials, name);
	const struct lora_doc *ids = sp ? lora_doc_get(sp, "ids") : NULL;
	if (!ids || ids->type != LORA_DOC_ARRAY)
		return lora_errf(err, LORA_EFORMAT,
				 "%s: post_processor: special token '%s' has no ids", file, name);
	int32_t *nv = realloc(*v, (*n + ids->u.arr.n + 1) * sizeof *nv);
	if (!nv)
		return LORA_ENOMEM;
	*v = nv;
	for (size_t i = 0; i < ids->u.arr.n; i++) {
		if (ids->u.arr.items[i].type != LORA_DOC_INT)
			return lora_errf(err, LORA_EFORMAT, "%s: post_processor: bad id", file);
		nv[(*n)++] = (int32_t)ids->u.arr.items[i].u.i;
	}
	return 0;
}

/* [id, token] pair of Bert/Roberta processors. */
static int pair_id(const struct lora_doc *d, const char *key, const char *file, int32_t **v,
		   size_t *n, struct lora_err *err)
{
	const struct lora_doc *p = lora_doc_get(d, key);
	if (!p || p->type != LORA_DOC_ARRAY || p->u.arr.n != 2 ||
	    p->u.arr.items[1].type != LORA_DOC_INT)
		return lora_errf(err, LORA_EFORMAT, "%s: post_processor: bad '%s'", file, key);
	*v = malloc(sizeof **v);
	if (!*v)
		return LORA_ENOMEM;
	**v = (int32_t)p->u.arr.items[1].u.i;
	*n = 1;
	return 0;
}

static int post_load(struct tk_post *p, const struct lora_doc *d, const char *file,
		     struct lora_err *err)
{
	const char *type = tk_get_str(d, "type");
	memset(p, 0, sizeof *p);
	if (!type)
		return lora_errf(err, LORA_EFORMAT, "%s: post_processor without a type", file);
	if (!strcmp(type, "Sequence")) {
		const struct lora_doc *a = lora_doc_get(d, "processors");
		p->type = TK_PP_SEQ;
		if (!a || a->type != LORA_DOC_ARRAY)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: post_processor Sequence without processors", file);
		p->sub = calloc(a->u.arr.n + 1, sizeof *p->sub);
		if (!p->sub)
			return LORA_ENOMEM;
		for (size_t i = 0; i < a->u.arr.n; i++) {
			p->nsub++;
			int rc = post_load(&p->sub[i], &a->u.arr.items[i], file, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (!strcmp(type, "ByteLevel")) {
		p->type = TK_PP_NOOP; /* only trims offsets */
		return 0;
	}
	if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
		p->type = TK_PP_BERT;
		int rc = pair_id(d, "cls", file, &p->pre, &p->npre, err);
		return rc ? rc : pair_id(d, "sep", file, &p->suf, &p->nsuf, err);
	}
	if (!strcmp(type, "TemplateProcessing")) {
		p->type = TK_PP_TEMPLATE;
		const struct lora_doc *single = lora_doc_get(d, "single");
		const struct lora_doc *specials = lora_doc_get(d, "special_tokens");
		if (!single || single->type != LORA_DOC_ARRAY)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: TemplateProcessing without 'single'", file);
		bool seen_seq = false;
		for (size_t i = 0; i < single->u.arr.n; i++) {
			const struct lora_doc *it = &single->u.arr.items[i];
			const struct lora_doc *st = lora_doc_get(it, "SpecialToken");
			if (lora_doc_get(it, "Sequence")) {
				seen_seq = true;
				continue;
			}
			const char *id = st ? tk_get_str(st, "id") : NULL;
			if (!id)
				return lora_errf(err, LORA_EFORMAT,
						 "%s: TemplateProcessing: bad item", file);
			int rc = seen_seq ? add_special_ids(specials, id, file, &p->suf, &p->nsuf,
							    err)
					  : add_special_ids(specials, id, file, &p->pre, &p->npre,
							    err);
			if (rc)
				return rc;
		}
		return 0;
	}
	return lora_errf(err, LORA_EUNSUPPORTED, "%s: post_processor type '%s' is not supported",
			 file, type);
}

static int post_apply(const struct tk_post *p, struct tk_ids *ids)
{
	switch (p->type) {
	case TK_PP_SEQ:
		for (size_t i = 0; i < p->nsub; i++) {
			int rc = post_apply(&p->sub[i], ids);
			if (rc)
				return rc;
		}
		return 0;
	case TK_PP_NOOP:
		return 0;
	case TK_PP_TEMPLATE:
	case TK_PP_BERT: {
		size_t n = ids->n;
		for (size_t i = 0; i < p->npre + p->nsuf; i++)
			if (tk_ids_push(ids, 0))
				return LORA_ENOMEM;
		memmove(ids->v + p->npre, ids->v, n * sizeof *ids->v);
		if (p->npre)
			memcpy(ids->v, p->pre, p->npre * sizeof *ids->v);
		if (p->nsuf)
			memcpy(ids->v + p->npre + n, p->suf, p->nsuf * sizeof *ids->v);
		return 0;
	}
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* decoders                                                             */

static void dec_free(struct tk_dec *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->nsub; i++)
		dec_free(&d->sub[i]);
	free(d->sub);
	tk_re_free(&d->re);
	free(d->str);
}

static uint32_t first_cp(const char *s)
{
	size_t l;
	return s && *s ? tk_u8get(s, &l) : 0;
}

/* Replace-style pattern {"String": s} or {"Regex": r}. */
static int load_pattern(struct tk_re *re, const struct lora_doc *d, const char *what,
			struct lora_err *err)
{
	const struct lora_doc *pat = lora_doc_get(d, "pattern");
	const char *s = pat ? tk_get_str(pat, "String") : NULL;
	const char *r = pat ? tk_get_str(pat, "Regex") : NULL;
	if (s)
		return tk_re_compile(re, s, strlen(s), true, what, err);
	if (r)
		return tk_re_compile(re, r, strlen(r), false, what, err);
	return lora_errf(err, LORA_EFORMAT, "%s: missing pattern", what);
}

static int dec_load(struct tk_dec *p, const struct lora_doc *d, const char *file,
		    struct lora_err *err)
{
	const char *type = tk_get_str(d, "type");
	char what[600];
	memset(p, 0, sizeof *p);
	if (!type)
		return lora_errf(err, LORA_EFORMAT, "%s: decoder without a type", file);
	snprintf(what, sizeof what, "%s: decoder %s", file, type);
	if (!strcmp(type, "Sequence")) {
		const struct lora_doc *a = lora_doc_get(d, "decoders");
		p->type = TK_D_SEQ;
		if (!a || a->type != LORA_DOC_ARRAY)
			return lora_errf(err, LORA_EFORMAT, "%s without decoders", what);
		p->sub = calloc(a->u.arr.n + 1, sizeof *p->sub);
		if (!p->sub)
			return LORA_ENOMEM;
		for (size_t i = 0; i < a->u.arr.n; i++) {
			p->nsub++;
			int rc = dec_load(&p->sub[i], &a->u.arr.items[i], file, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (!strcmp(type, "ByteLevel")) {
		p->type = TK_D_BYTELEVEL;
		return 0;
	}
	if (!strcmp(type, "ByteFallback")) {
		p->type = TK_D_BYTEFALLBACK;
		return 0;
	}
	if (!strcmp(type, "Fuse")) {
		p->type = TK_D_FUSE;
		return 0;
	}
	if (!strcmp(type, "Metaspace")) {
		p->type = TK_D_METASPACE;
		const char *r = tk_get_str(d, "replacement");
		const char *ps = tk_get_str(d, "prepend_scheme");
		bool aps = true;
		p->cp = r ? first_cp(r) : 0x2581;
		lora_doc_get_bool(d, "add_prefix_space", file, &aps, NULL);
		p->prepend = ps ? strcmp(ps, "never") != 0 : aps;
		return 0;
	}
	if (!strcmp(type, "Strip")) {
		int64_t a = 0, b = 0;
		p->type = TK_D_STRIP;
		p->cp = first_cp(tk_get_str(d, "content"));
		lora_doc_get_int(d, "start", file, &a, NULL);
		lora_doc_get_int(d, "stop", file, &b, NULL);
		p->start = a > 0 ? (size_t)a : 0;
		p->stop = b > 0 ? (size_t)b : 0;
		return 0;
	}
	if (!strcmp(type, "Replace")) {
		const char *c = tk_get_str(d, "content");
		p->type = TK_D_REPLACE;
		if (!c)
			return lora_errf(err, LORA_EFORMAT, "%s without content", what);
		p->str = strdup(c);
		p->slen = strlen(c);
		if (!p->str)
			return LORA_ENOMEM;
		return load_pattern(&p->re, d, what, err);
	}
	return lora_errf(err, LORA_EUNSUPPORTED, "%s: decoder type '%s' is not supported", file,
			 type);
}

/* Append bytes as Rust's String::from_utf8_lossy does: each maximal
 * ill-formed subpart becomes one U+FFFD. */
static int put_lossy(struct tk_buf *out, const char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint32_t cp;
		size_t bad, l = tk_utf8_dec(s + i, n - i, &cp, &bad);
		if (l) {
			if (tk_buf_put(out, s + i, l))
				return LORA_ENOMEM;
			i += l;
		} else {
			if (tk_buf_putcp(out, 0xfffd))
				return LORA_ENOMEM;
			i += bad;
		}
	}
	return 0;
}

static bool utf8_valid(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint32_t cp;
		size_t bad, l = tk_utf8_dec(s + i, n - i, &cp, &bad);
		if (!l)
			return false;
		i += l;
	}
	return true;
}

/* Decoders work on a list of token strings (pieces into arena). */
struct dec_ctx {
	struct tk_buf *arena;
	pcre2_match_data *md;
	struct tk_buf *tmp;
	const struct tk_dec *d;
	const char *base;
	size_t last;
};

static int replace_cb(size_t a, size_t b, void *vctx)
{
	struct dec_ctx *c = vctx;
	if (tk_buf_put(c->tmp, c->base + c->last, a - c->last) ||
	    tk_buf_put(c->tmp, c->d->str, c->d->slen))
		return LORA_ENOMEM;
	c->last = b;
	return 0;
}

static int dec_apply(const struct tk_dec *d, unsigned flags, struct tk_buf *arena,
		     struct tk_pieces *t, pcre2_match_data *md, struct lora_err *err)
{
	int rc = 0;
	struct tk_pieces out = {0};
	struct tk_buf tmp = {0};
	switch (d->type) {
	case TK_D_SEQ:
		for (size_t i = 0; i < d->nsub && !rc; i++)
			rc = dec_apply(&d->sub[i], flags, arena, t, md, err);
		return rc;
	case TK_D_FUSE: {
		size_t off = arena->len;
		for (size_t i = 0; i < t->n && !rc; i++) {
			if (tk_buf_reserve(arena, t->v[i].len + 1))
				rc = LORA_ENOMEM;
			else
				rc = tk_buf_put(arena, arena->p + t->v[i].off, t->v[i].len);
		}
		if (!rc)
			rc = tk_pieces_push(&out, off, arena->len - off, -1, false);
		break;
	}
	case TK_D_BYTELEVEL: {
		/* every token's chars map back to bytes (or the token is kept as
		 * is), then the whole byte string is read lossily */
		for (size_t i = 0; i < t->n && !rc; i++) {
			const char *s = arena->p + t->v[i].off;
			size_t n = t->v[i].len, j = 0, start = tmp.len;
			bool ok = true;
			while (j < n && !rc) {
				size_t l;
				uint32_t cp = tk_u8get(s + j, &l);
				int b = tk_char_byte(cp);
				if (b < 0) {
					ok = false;
					break;
				}
				char c = (char)b;
				rc = tk_buf_put(&tmp, &c, 1);
				j += l;
			}
			if (!ok && !rc) {
				tmp.len = start;
				rc = tk_buf_put(&tmp, arena->p + t->v[i].off, n);
			}
		}
		size_t off = arena->len;
		if (!rc)
			rc = put_lossy(arena, tmp.p ? tmp.p : "", tmp.len);
		if (!rc)
			rc = tk_pieces_push(&out, off, arena->len - off, -1, false);
		break;
	}
	case TK_D_METASPACE:
		for (size_t i = 0; i < t->n && !rc; i++) {
			size_t off = arena->len, j = 0, n = t->v[i].len;
			size_t src = t->v[i].off;
			while (j < n && !rc) {
				size_t l;
				uint32_t cp = tk_u8get(arena->p + src + j, &l);
				if (cp == d->cp) {
					if (!(i == 0 && d->prepend))
						rc = tk_buf_put(arena, " ", 1);
				} else {
					char c[4];
					memcpy(c, arena->p + src + j, l);
					rc = tk_buf_put(arena, c, l);
				}
				j += l;
			}
			if (!rc)
				rc = tk_pieces_push(&out, off, arena->len - off, -1, false);
		}
		break;
	case TK_D_BYTEFALLBACK: {
		size_t i = 0;
		while (i < t->n && !rc) {
			/* a run of <0xNN> tokens */
			size_t j = i;
			tmp.len = 0;
			while (j < t->n) {
				const char *s = arena->p + t->v[j].off;
				unsigned v;
				char tail;
				if (t->v[j].len != 6 || memcmp(s, "<0x", 3) || s[5] != '>' ||
				    !strchr("0123456789abcdefABCDEF", s[3]) || !s[3] ||
				    !strchr("0123456789abcdefABCDEF", s[4]) || !s[4])
					break;
				if (sscanf(s + 3, "%2x%c", &v, &tail) != 2)
					break;
				char c = (char)v;
				if ((rc = tk_buf_put(&tmp, &c, 1)))
					break;
				j++;
			}
			if (rc)
				break;
			if (j > i) {
				if (utf8_valid(tmp.p, tmp.len)) {
					size_t off = arena->len;
					rc = tk_buf_put(arena, tmp.p, tmp.len);
					if (!rc)
						rc = tk_pieces_push(&out, off, tmp.len, -1, false);
				} else if (flags & LORA_TOK_SLOW_BYTES) {
					/* sentencepiece: each bad byte alone becomes U+FFFD */
					size_t off = arena->len;
					for (size_t k = 0; k < tmp.len && !rc;) {
						uint32_t cp;
						size_t bad, l = tk_utf8_dec(tmp.p + k, tmp.len - k,
									    &cp, &bad);
						rc = l ? tk_buf_put(arena, tmp.p + k, l)
						       : tk_buf_put(arena, "\xef\xbf\xbd", 3);
						k += l ? l : 1;
					}
					if (!rc)
						rc = tk_pieces_push(&out, off, arena->len - off, -1,
								    false);
				} else {
					for (size_t k = 0; k < tmp.len && !rc; k++) {
						size_t off = arena->len;
						rc = tk_buf_put(arena, "\xef\xbf\xbd", 3);
						if (!rc)
							rc = tk_pieces_push(&out, off, 3, -1,
									    false);
					}
				}
				i = j;
			} else {
				rc = tk_pieces_push(&out, t->v[i].off, t->v[i].len, -1, false);
				i++;
			}
		}
		break;
	}
	case TK_D_STRIP:
		for (size_t i = 0; i < t->n && !rc; i++) {
			const char *s = arena->p + t->v[i].off;
			size_t n = t->v[i].len, a = 0, b = n;
			for (size_t k = 0; k < d->start && a < n; k++) {
				size_t l;
				if (tk_u8get(s + a, &l) != d->cp)
					break;
				a += l;
			}
			for (size_t k = 0; k < d->stop && b > a; k++) {
				size_t p = b - 1, l;
				while (p > a && ((unsigned char)s[p] & 0xc0) == 0x80)
					p--;
				if (tk_u8get(s + p, &l) != d->cp)
					break;
				b = p;
			}
			rc = tk_pieces_push(&out, t->v[i].off + a, b - a, -1, false);
		}
		break;
	case TK_D_REPLACE:
		for (size_t i = 0; i < t->n && !rc; i++) {
			struct dec_ctx c = {arena, md, &tmp, d, NULL, 0};
			tmp.len = 0;
			c.base = arena->p + t->v[i].off;
			/* arena does not move during matching: only tmp grows */
			rc = tk_re_each(&d->re, c.base, t->v[i].len, md, replace_cb, &c, err);
			if (!rc)
				rc = tk_buf_put(&tmp, c.base + c.last, t->v[i].len - c.last);
			size_t off = arena->len;
			if (!rc)
				rc = tk_buf_put(arena, tmp.p, tmp.len);
			if (!rc)
				rc = tk_pieces_push(&out, off, tmp.len, -1, false);
		}
		break;
	}
	tk_buf_free(&tmp);
	if (rc) {
		tk_pieces_free(&out);
		return rc;
	}
	tk_pieces_free(t);
	*t = out;
	return 0;
}

/* ------------------------------------------------------------------ */
/* loading                                                              */

static void norm_destroy(struct tk_norm *n)
{
	if (n) {
		tk_norm_free(n);
		free(n);
	}
}

void lora_tok_close(struct lora_tok *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_pieces; i++)
		free(t->pieces[i]);
	free(t->pieces);
	tk_map_free(&t->vocab);
	tk_umap_free(&t->merges);
	free(t->cont_prefix);
	free(t->eow_suffix);
	free(t->scores);
	tk_umap_free(&t->trie);
	free(t->trie_val);
	norm_destroy(t->norm);
	if (t->pre) {
		tk_pre_free(t->pre);
		free(t->pre);
	}
	post_free(t->post);
	free(t->post);
	dec_free(t->dec);
	free(t->dec);
	for (size_t i = 0; i < t->n_added; i++) {
		free(t->added[i].content);
		free(t->added[i].norm);
	}
	free(t->added);
	free(t->added_of_id);
	free(t->name);
	free(t);
}

static int load_added(struct lora_tok *t, const struct lora_doc *a, struct lora_err *err)
{
	if (!a || a->type == LORA_DOC_NULL)
		return 0;
	if (a->type != LORA_DOC_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "%s: 'added_tokens' must be an array", t->name);
	size_t model_size = t->model == TK_M_UNIGRAM ? t->n_pieces : t->vocab.n;
	t->added = calloc(a->u.arr.n + 1, sizeof *t->added);
	if (!t->added)
		return LORA_ENOMEM;
	for (size_t i = 0; i < a->u.arr.n; i++) {
		const struct lora_doc *e = &a->u.arr.items[i];
		const struct lora_doc *c = lora_doc_get(e, "content");
		int64_t id = -1;
		struct tk_added *at = &t->added[t->n_added];
		if (!c || c->type != LORA_DOC_STRING ||
		    lora_doc_get_int(e, "id", t->name, &id, err) || id < 0 || id > INT32_MAX)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: added token %zu needs 'id' and 'content'", t->name,
					 i);
		if (!c->u.str.len)
			continue;
		bool dup = false;
		for (size_t k = 0; k < t->n_added; k++)
			if (t->added[k].len == c->u.str.len &&
			    !memcmp(t->added[k].content, c->u.str.s, c->u.str.len))
				dup = true;
		if (dup)
			continue;
		/* The library ignores the id written in the file: a token the
		 * model knows keeps the model's id, any other one gets the next id
		 * after the model vocabulary and the added tokens so far. */
		int32_t mid = tk_map_get(&t->vocab, c->u.str.s, c->u.str.len);
		if (mid >= 0) {
			id = mid;
		} else {
			int64_t mx = -1;
			for (size_t k = 0; k < t->n_added; k++)
				if (t->added[k].id > mx)
					mx = t->added[k].id;
			if (mx < 0)
				id = (int64_t)model_size;
			else
				id = mx >= (int64_t)model_size || !model_size ? mx + 1
									      : (int64_t)model_size;
		}
		at->content = malloc(c->u.str.len + 1);
		if (!at->content)
			return LORA_ENOMEM;
		memcpy(at->content, c->u.str.s, c->u.str.len + 1);
		at->len = c->u.str.len;
		at->id = (int32_t)id;
		at->normalized = true;
		lora_doc_get_bool(e, "special", t->name, &at->special, NULL);
		lora_doc_get_bool(e, "single_word", t->name, &at->single_word, NULL);
		lora_doc_get_bool(e, "lstrip", t->name, &at->lstrip, NULL);
		lora_doc_get_bool(e, "rstrip", t->name, &at->rstrip, NULL);
		if (lora_doc_get_bool(e, "normalized", t->name, &at->normalized, NULL))
			at->normalized = !at->special;
		t->n_added++;
	}
	return 0;
}

/* Normalized form of the normalized added tokens (needs the normalizer). */
static int normalize_added(struct lora_tok *t, struct lora_err *err)
{
	pcre2_match_data *md = pcre2_match_data_create(4, NULL);
	int rc = md ? 0 : LORA_ENOMEM;
	for (size_t i = 0; i < t->n_added && !rc; i++) {
		struct tk_added *a = &t->added[i];
		struct tk_buf b = {0};
		if (!a->normalized || !t->norm) {
			rc = tk_buf_put(&b, a->content, a->len);
		} else {
			rc = tk_norm_apply(t->norm, a->content, a->len, &b, md, err);
			if (!rc && !b.p)
				rc = tk_buf_put(&b, "", 0);
		}
		a->norm = b.p;
		a->nlen = b.len;
	}
	pcre2_match_data_free(md);
	return rc;
}

static char *read_path(const char *path)
{
	struct stat st;
	size_t n = strlen(path);
	char *p = malloc(n + 20);
	if (!p)
		return NULL;
	memcpy(p, path, n + 1);
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		snprintf(p + n, 20, "%stokenizer.json", n && path[n - 1] == '/' ? "" : "/");
	return p;
}

int tk_build(struct lora_tok *t, const struct lora_doc *root, struct lora_err *err)
{
	int rc;
	const char *name = t->name;
	if (root->type != LORA_DOC_MAP)
		return lora_errf(err, LORA_EFORMAT, "%s: not a JSON object", name);
	const struct lora_doc *m = lora_doc_get(root, "model");
	if (!m || m->type != LORA_DOC_MAP)
		return lora_errf(err, LORA_EFORMAT, "%s: no 'model' object", name);
	const char *type = tk_get_str(m, "type");
	const struct lora_doc *vocab = lora_doc_get(m, "vocab");
	if (!type) {
		if (lora_doc_get(m, "merges"))
			type = "BPE";
		else if (vocab && vocab->type == LORA_DOC_ARRAY)
			type = "Unigram";
		else
			type = "(untyped)";
	}
	t->unk_id = -1;
	for (int i = 0; i < 256; i++)
		t->byte_id[i] = -1;
	if (!strcmp(type, "BPE")) {
		t->model = TK_M_BPE;
		rc = tk_bpe_load(t, m, err);
	} else if (!strcmp(type, "Unigram")) {
		t->model = TK_M_UNIGRAM;
		rc = tk_unigram_load(t, m, err);
	} else {
		return lora_errf(err, LORA_EUNSUPPORTED, "%s: model type '%s' is not supported",
				 name, type);
	}
	if (rc)
		return rc;
	/* <0xNN> byte pieces */
	for (int b = 0; b < 256; b++) {
		char s[8];
		snprintf(s, sizeof s, "<0x%02X>", b);
		t->byte_id[b] = tk_map_get(&t->vocab, s, 6);
	}

	const struct lora_doc *d = lora_doc_get(root, "normalizer");
	if (d && d->type != LORA_DOC_NULL) {
		t->norm = calloc(1, sizeof *t->norm);
		if (!t->norm)
			return LORA_ENOMEM;
		if ((rc = tk_norm_load(t->norm, d, name, err)))
			return rc;
	}
	d = lora_doc_get(root, "pre_tokenizer");
	if (d && d->type != LORA_DOC_NULL) {
		t->pre = calloc(1, sizeof *t->pre);
		if (!t->pre)
			return LORA_ENOMEM;
		if ((rc = tk_pre_load(t->pre, d, name, err)))
			return rc;
	}
	d = lora_doc_get(root, "post_processor");
	if (d && d->type != LORA_DOC_NULL) {
		t->post = calloc(1, sizeof *t->post);
		if (!t->post)
			return LORA_ENOMEM;
		if ((rc = post_load(t->post, d, name, err)))
			return rc;
	}
	d = lora_doc_get(root, "decoder");
	if (d && d->type != LORA_DOC_NULL) {
		t->dec = calloc(1, sizeof *t->dec);
		if (!t->dec)
			return LORA_ENOMEM;
		if ((rc = dec_load(t->dec, d, name, err)))
			return rc;
	}
	if ((rc = load_added(t, lora_doc_get(root, "added_tokens"), err)))
		return rc;
	if ((rc = normalize_added(t, err)))
		return rc;
	for (size_t i = 0; i < t->n_added; i++) {
		const struct tk_added *a = &t->added[i];
		if (a->normalized ? a->nlen : a->len) {
			t->added_first[a->normalized]
				      [(unsigned char)(a->normalized ? a->norm : a->content)[0]] =
				true;
			t->n_added_set[a->normalized]++;
		}
	}
	t->vocab_size = t->n_pieces;
	for (size_t i = 0; i < t->n_added; i++)
		if ((size_t)t->added[i].id + 1 > t->vocab_size)
			t->vocab_size = (size_t)t->added[i].id + 1;
	t->added_of_id = malloc((t->vocab_size + 1) * sizeof *t->added_of_id);
	if (!t->added_of_id)
		return LORA_ENOMEM;
	for (size_t i = 0; i < t->vocab_size; i++)
		t->added_of_id[i] = -1;
	for (size_t i = t->n_added; i-- > 0;)
		t->added_of_id[t->added[i].id] = (int32_t)i;
	return 0;
}

int lora_tok_open(const char *path, struct lora_tok **out, struct lora_err *err)
{
	struct lora_doc *root = NULL;
	struct lora_tok *t = calloc(1, sizeof *t);
	int rc;
	*out = NULL;
	tk_bytelevel_init();
	if (!t)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	t->name = read_path(path);
	if (!t->name) {
		free(t);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	struct stat st;
	size_t plen = strlen(path);
	bool is_model = plen > 6 && !strcmp(path + plen - 6, ".model") && stat(path, &st) == 0 &&
			S_ISREG(st.st_mode);
	if (is_model || stat(t->name, &st) != 0) {
		/* a SentencePiece model: the file itself, or a directory without
		 * tokenizer.json (which wins when both exist, as in transformers) */
		char *sp = malloc(plen + 20), *dir = NULL;
		bool has_sp = false, spiece = false;
		if (!sp) {
			lora_tok_close(t);
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		}
		if (is_model) {
			memcpy(sp, path, plen + 1);
			const char *slash = strrchr(sp, '/');
			spiece = !strcmp(slash ? slash + 1 : sp, "spiece.model");
			dir = slash ? strndup(sp, (size_t)(slash - sp)) : strdup(".");
			has_sp = dir != NULL;
		} else if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			for (int k = 0; k < 2 && !has_sp; k++) {
				snprintf(sp, plen + 20, "%s%s%s", path,
					 plen && path[plen - 1] == '/' ? "" : "/",
					 k ? "tokenizer.model" : "spiece.model");
				has_sp = stat(sp, &st) == 0;
				spiece = !k;
			}
			dir = has_sp ? strdup(path) : NULL;
			has_sp = has_sp && dir;
		}
		if (has_sp) {
			free(t->name);
			t->name = sp;
			rc = tk_spm_load(t, dir, spiece, err);
			if (rc == LORA_ENOMEM && (!err || !err->msg[0] || err->code != LORA_ENOMEM))
				rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", t->name);
		} else {
			free(sp);
			rc = lora_errf(err, LORA_ENOTFOUND,
				       "cannot open '%s': no such tokenizer file (nor a "
				       "SentencePiece spiece.model or tokenizer.model)",
				       t->name);
		}
		free(dir);
		if (rc) {
			lora_tok_close(t);
			return rc;
		}
		*out = t;
		return 0;
	}
	rc = lora_doc_parse_file(t->name, &root, err);
	if (!rc) {
		rc = tk_build(t, root, err);
		if (rc == LORA_ENOMEM && (!err || !err->msg[0] || err->code != LORA_ENOMEM))
			rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", t->name);
	}
	lora_doc_free(root);
	if (rc) {
		lora_tok_close(t);
		return rc;
	}
	*out = t;
	return 0;
}

/* ------------------------------------------------------------------ */
/* encoding                                                             */

/* Is the char ending just before s[0..end) a word char / starting at s? */
static bool ends_with_word(const char *s, size_t end)
{
	if (!end)
		return false;
	size_t p = end - 1, l;
	while (p > 0 && ((unsigned char)s[p] & 0xc0) == 0x80)
		p--;
	uint32_t cp = tk_u8get(s + p, &l);
	return cp == '_' || tk_is_alnum(cp);
}

static bool starts_with_word(const char *s, size_t n)
{
	size_t l;
	if (!n)
		return false;
	uint32_t cp = tk_u8get(s, &l);
	return cp == '_' || tk_is_alnum(cp);
}

/* Split piece pc (non-token) by the added tokens whose `normalized` flag is
 * `normed`, leftmost-longest; append the results to out. */
static int split_added(const struct lora_tok *t, bool normed, const struct tk_buf *arena,
		       const struct tk_piece *pc, struct tk_pieces *out)
{
	const char *s = arena->p + pc->off;
	size_t n = pc->len, start_off = 0, pos = 0;
	int rc;
	const bool *first = t->added_first[normed];
	while (t->n_added_set[normed] && pos < n) {
		if (!first[(unsigned char)s[pos]]) {
			pos++;
			continue;
		}
		/* longest added token matching at pos */
		size_t best = SIZE_MAX, blen = 0;
		for (size_t i = 0; i < t->n_added; i++) {
			const struct tk_added *a = &t->added[i];
			const char *c = normed ? a->norm : a->content;
			size_t cl = normed ? a->nlen : a->len;
			if (a->normalized != normed || !cl || cl > n - pos || cl <= blen)
				continue;
			if (memcmp(s + pos, c, cl) == 0) {
				best = i;
				blen = cl;
			}
		}
		if (best == SIZE_MAX) {
			pos++;
			continue;
		}
		const struct tk_added *a = &t->added[best];
		size_t start = pos, stop = pos + blen;
		pos = stop;
		if (a->single_word && ((start > 0 && ends_with_word(s, start)) ||
				       (stop < n && starts_with_word(s + stop, n - stop))))
			continue;
		if (a->lstrip) {
			size_t ns = start;
			while (ns > 0) {
				size_t p = ns - 1, l;
				while (p > 0 && ((unsigned char)s[p] & 0xc0) == 0x80)
					p--;
				if (!tk_is_space(tk_u8get(s + p, &l)))
					break;
				ns = p;
			}
			start = ns > start_off ? ns : start_off;
		}
		if (a->rstrip) {
			while (stop < n) {
				size_t l;
				if (!tk_is_space(tk_u8get(s + stop, &l)))
					break;
				stop += l;
			}
			pos = stop;
		}
		if (start_off < start &&
		    (rc = tk_pieces_push(out, pc->off + start_off, start - start_off, -1,
					 pc->first && start_off == 0)))
			return rc;
		if ((rc = tk_pieces_push(out, pc->off + start, stop - start, a->id, false)))
			return rc;
		start_off = stop;
	}
	if (start_off < n && (rc = tk_pieces_push(out, pc->off + start_off, n - start_off, -1,
						  pc->first && start_off == 0)))
		return rc;
	return 0;
}

static int encode_text(const struct lora_tok *t, const char *text, size_t len, bool add_special,
		       struct tk_ids *ids, struct lora_err *err)
{
	struct tk_buf arena = {0};
	struct tk_pieces p0 = {0}, p1 = {0}, p2 = {0};
	pcre2_match_data *md = pcre2_match_data_create(4, NULL);
	int rc = md ? 0 : LORA_ENOMEM;
	if (!rc)
		rc = tk_buf_put(&arena, text, len);
	if (!rc)
		rc = tk_pieces_push(&p0, 0, len, -1, true);
	/* 1. non-normalized added tokens on the raw text */
	for (size_t i = 0; i < p0.n && !rc; i++)
		if (p0.v[i].len)
			rc = split_added(t, false, &arena, &p0.v[i], &p1);
	/* 2. normalize, then the normalized added tokens */
	for (size_t i = 0; i < p1.n && !rc; i++) {
		struct tk_piece pc = p1.v[i];
		if (pc.tok >= 0) {
			rc = tk_pieces_push(&p2, pc.off, pc.len, pc.tok, false);
			continue;
		}
		if (t->norm) {
			size_t off = arena.len;
			struct tk_buf nb = {0};
			rc = tk_norm_apply(t->norm, arena.p + pc.off, pc.len, &nb, md, err);
			if (!rc)
				rc = tk_buf_put(&arena, nb.p ? nb.p : "", nb.len);
			pc.off = off;
			pc.len = nb.len;
			tk_buf_free(&nb);
		}
		if (!rc && pc.len)
			rc = split_added(t, true, &arena, &pc, &p2);
	}
	/* 3. pre-tokenize */
	if (!rc && t->pre)
		rc = tk_pre_apply(t->pre, &arena, &p2, md, err);
	/* 4. model */
	for (size_t i = 0; i < p2.n && !rc; i++) {
		const struct tk_piece *pc = &p2.v[i];
		if (pc->tok >= 0)
			rc = tk_ids_push(ids, pc->tok);
		else if (!pc->len)
			continue;
		else if (t->model == TK_M_BPE)
			rc = tk_bpe_encode(t, arena.p + pc->off, pc->len, ids, err);
		else
			rc = tk_unigram_encode(t, arena.p + pc->off, pc->len, ids, err);
	}
	if (!rc && add_special && t->post)
		rc = post_apply(t->post, ids);
	pcre2_match_data_free(md);
	tk_buf_free(&arena);
	tk_pieces_free(&p0);
	tk_pieces_free(&p1);
	tk_pieces_free(&p2);
	return rc;
}

int lora_tok_encode(const struct lora_tok *t, const char *text, size_t len, bool add_special,
		    int32_t **ids, size_t *n, struct lora_err *err)
{
	struct tk_ids v = {0};
	*ids = NULL;
	*n = 0;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t bad, l = tk_utf8_dec(text + i, len - i, &cp, &bad);
		if (!l)
			return lora_errf(err, LORA_EFORMAT,
					 "input text is not valid UTF-8 (byte offset %zu)", i);
		i += l;
	}
	int rc = encode_text(t, text, len, add_special, &v, err);
	if (rc) {
		free(v.v);
		if (rc == LORA_ENOMEM)
			return lora_errf(err, LORA_ENOMEM, "out of memory while encoding");
		return rc;
	}
	if (!v.v) {
		v.v = malloc(sizeof *v.v);
		if (!v.v)
			return lora_errf(err, LORA_ENOMEM, "out of memory while encoding");
	}
	*ids = v.v;
	*n = v.n;
	return 0;
}

/* ------------------------------------------------------------------ */
/* decoding and lookups                                                 */

const char *lora_tok_piece(const struct lora_tok *t, int32_t id)
{
	if (id < 0 || (size_t)id >= t->vocab_size)
		return NULL;
	if (t->added_of_id[id] >= 0) /* the library keeps a normalized token's normalized form */
		return t->added[t->added_of_id[id]].norm;
	return (size_t)id < t->n_pieces ? t->pieces[id] : NULL;
}

int32_t lora_tok_id(const struct lora_tok *t, const char *token)
{
	size_t n = strlen(token);
	for (size_t i = 0; i < t->n_added; i++)
		if ((t->added[i].len == n && !memcmp(t->added[i].content, token, n)) ||
		    (t->added[i].nlen == n && !memcmp(t->added[i].norm, token, n)))
			return t->added[i].id;
	return tk_map_get(&t->vocab, token, n);
}

size_t lora_tok_vocab_size(const struct lora_tok *t)
{
	return t->vocab_size;
}

int lora_tok_decode(const struct lora_tok *t, const int32_t *ids, size_t n, bool skip_special,
		    char **text, struct lora_err *err)
{
	return lora_tok_decode_ex(t, ids, n, skip_special ? LORA_TOK_SKIP_SPECIAL : 0, text, NULL,
				  err);
}

/* transformers' clean_up_tokenization, in its order, on out[0..len). */
static void cleanup_spaces(struct tk_buf *out)
{
	static const char *rep[][2] = {
		{" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
		{" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
	};
	for (size_t r = 0; r < sizeof rep / sizeof rep[0]; r++) {
		size_t fl = strlen(rep[r][0]), tl = strlen(rep[r][1]), w = 0, i = 0;
		while (i < out->len) {
			if (i + fl <= out->len && !memcmp(out->p + i, rep[r][0], fl)) {
				memmove(out->p + w, rep[r][1], tl); /* tl < fl: never overtakes i */
				w += tl;
				i += fl;
			} else {
				out->p[w++] = out->p[i++];
			}
		}
		out->len = w;
		out->p[w] = 0;
	}
}

int lora_tok_decode_ex(const struct lora_tok *t, const int32_t *ids, size_t n, unsigned flags,
		       char **text, size_t *len, struct lora_err *err)
{
	bool skip_special = flags & LORA_TOK_SKIP_SPECIAL;
	struct tk_buf arena = {0}, out = {0};
	struct tk_pieces toks = {0};
	pcre2_match_data *md = NULL;
	int rc = tk_buf_put(&arena, "", 0);
	*text = NULL;
	for (size_t i = 0; i < n && !rc; i++) {
		const char *p = lora_tok_piece(t, ids[i]);
		if (!p)
			continue;
		if (skip_special && t->added_of_id[ids[i]] >= 0 &&
		    t->added[t->added_of_id[ids[i]]].special)
			continue;
		size_t off = arena.len, l = strlen(p);
		rc = tk_buf_put(&arena, p, l);
		if (!rc)
			rc = tk_pieces_push(&toks, off, l, -1, false);
	}
	if (!rc && t->dec) {
		md = pcre2_match_data_create(4, NULL);
		rc = md ? dec_apply(t->dec, flags, &arena, &toks, md, err) : LORA_ENOMEM;
	}
	rc = rc ? rc : tk_buf_put(&out, "", 0);
	for (size_t i = 0; i < toks.n && !rc; i++) {
		if (!t->dec && i > 0)
			rc = tk_buf_put(&out, " ", 1);
		if (!rc)
			rc = tk_buf_put(&out, arena.p + toks.v[i].off, toks.v[i].len);
	}
	pcre2_match_data_free(md);
	tk_buf_free(&arena);
	tk_pieces_free(&toks);
	if (rc) {
		tk_buf_free(&out);
		if (rc == LORA_ENOMEM)
			return lora_errf(err, LORA_ENOMEM, "out of memory while decoding");
		return rc;
	}
	if (flags & LORA_TOK_STRIP) {
		size_t a = 0, b = out.len, l;
		while (a < b && tk_is_space(tk_u8get(out.p + a, &l)))
			a += l;
		while (b > a) {
			size_t p = b - 1;
			while (p > a && ((unsigned char)out.p[p] & 0xc0) == 0x80)
				p--;
			if (!tk_is_space(tk_u8get(out.p + p, &l)))
				break;
			b = p;
		}
		memmove(out.p, out.p + a, b - a);
		out.len = b - a;
		out.p[out.len] = 0;
	}
	if (flags & LORA_TOK_CLEANUP)
		cleanup_spaces(&out);
	*text = out.p;
	if (len)
		*len = out.len;
	return 0;
}
