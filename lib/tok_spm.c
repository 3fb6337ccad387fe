/*
 * tok_spm — a tokenizer from a SentencePiece model file (`spiece.model`,
 * `tokenizer.model`): the ModelProto is read (protobuf wire format, the few
 * fields below) and turned into the pipeline transformers' converters
 * (convert_slow_tokenizer.py, 4.36) write to tokenizer.json, which is then
 * built by the ordinary tokenizer.json loader (tk_build in tok.c):
 *
 *   UNIGRAM (T5Converter / SpmConverter)
 *     model Unigram: the pieces with their scores, then `<extra_id_N>` for
 *       N = extra_ids-1 .. 0 with score 0; unk_id and byte_fallback from the
 *       trainer spec;
 *     normalizer: Sequence[Precompiled(charsmap) if any, Replace / {2,}/ -> " "];
 *     pre-tokenizer and decoder: Metaspace "▁", prepend always (never when
 *       add_dummy_prefix is false);
 *     post-processor: "$A </s>" when the model has an eos piece.
 *   BPE (LlamaConverter, legacy layout)
 *     model BPE: every piece -> its id, unk, fuse_unk, byte_fallback; merges
 *       as SentencePieceExtractor makes them from the scores: for each piece
 *       in id order, each split into two vocabulary pieces (sorted by the
 *       ids of left, then right part), all stably sorted by the merged
 *       piece's score, descending;
 *     normalizer: Sequence[Prepend "▁" (if add_dummy_prefix), Replace " " -> "▁"];
 *     no pre-tokenizer;
 *     decoder: Sequence[Replace "▁" -> " ", ByteFallback, Fuse, Strip(" ", 1, 0)];
 *     post-processor: "<s> $A" (add_bos_token, default true), "$A </s>"
 *       (add_eos_token, default false).
 *   Added tokens (special, not normalized): the UNKNOWN and CONTROL pieces;
 *   USER_DEFINED pieces (not special); the T5 extra ids; then the entries of
 *   tokenizer_config.json's added_tokens_decoder not yet present.
 *
 * extra_ids: tokenizer_config.json's "extra_ids"; else 100 when its
 * tokenizer_class is a T5 one, or when there is no config and the file is
 * named spiece.model (the T5 convention); else the number of "<extra_id_N>"
 * in its additional_special_tokens. Only for Unigram models.
 *
 * Fields read: ModelProto pieces(1){piece(1), score(2), type(3)},
 * trainer_spec(2){model_type(3), byte_fallback(35), unk_id(40), bos_id(41),
 * eos_id(42), pad_id(43)}, normalizer_spec(3){name(1),
 * precompiled_charsmap(2), add_dummy_prefix(3), remove_extra_whitespaces(4),
 * escape_whitespaces(5)}; other fields are skipped. Limits: model types WORD
 * and CHAR are refused; remove_extra_whitespaces and escape_whitespaces are
 * ignored, as the converters ignore them; the user_defined_symbols matching
 * and denormalizer of SentencePiece itself are not reproduced beyond that.
 */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

enum { SP_NORMAL = 1, SP_UNKNOWN = 2, SP_CONTROL = 3, SP_USER = 4, SP_UNUSED = 5, SP_BYTE = 6 };

struct sp_piece {
	const char *s; /* into the file buffer, not NUL-terminated */
	size_t len;
	float score;
	int type;
};

struct sp_model {
	struct sp_piece *p;
	size_t n, cap;
	int model_type;
	bool byte_fallback;
	int64_t unk_id, bos_id, eos_id, pad_id;
	const char *charsmap;
	size_t ncharsmap;
	bool add_dummy_prefix, remove_extra_ws, escape_ws;
};

/* ---- protobuf wire format ---- */

struct pb {
	const unsigned char *p;
	size_t n, pos;
	size_t base; /* offset of p within the file, for messages */
	const char *file;
	const char *what; /* message being read */
};

static int pb_varint(struct pb *b, uint64_t *v, struct lora_err *err)
{
	uint64_t x = 0;
	for (int sh = 0; sh < 70; sh += 7) {
		if (b->pos >= b->n)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: truncated protobuf (varint in %s at byte %zu)", b->file,
					 b->what, b->base + b->pos);
		unsigned c = b->p[b->pos++];
		if (sh == 63 && c > 1)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: bad protobuf varint in %s at byte %zu", b->file,
					 b->what, b->base + b->pos - 1);
		x |= (uint64_t)(c & 0x7f) << sh;
		if (!(c & 0x80)) {
			*v = x;
			return 0;
		}
	}
	return lora_errf(err, LORA_EFORMAT, "%s: bad protobuf varint in %s at byte %zu", b->file,
			 b->what, b->base + b->pos);
}

/* One field: number, wire type, and its value (varint / fixed in *v, bytes
 * in *s,*len). */
static int pb_field(struct pb *b, uint32_t *num, int *wt, uint64_t *v, const unsigned char **s,
		    size_t *len, struct lora_err *err)
{
	uint64_t key;
	size_t at = b->base + b->pos;
	int rc = pb_varint(b, &key, err);
	if (rc)
		return rc;
	*wt = (int)(key & 7);
	if (key >> 3 == 0 || key >> 3 > 0x1fffffff)
		return lora_errf(err, LORA_EFORMAT, "%s: bad protobuf field number in %s at byte %zu",
				 b->file, b->what, at);
	*num = (uint32_t)(key >> 3);
	switch (*wt) {
	case 0:
		return pb_varint(b, v, err);
	case 1:
	case 5: {
		size_t k = *wt == 1 ? 8 : 4;
		if (b->n - b->pos < k)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: truncated protobuf (field %u in %s at byte %zu)",
					 b->file, *num, b->what, at);
		uint64_t x = 0;
		for (size_t i = 0; i < k; i++)
			x |= (uint64_t)b->p[b->pos + i] << (8 * i);
		b->pos += k;
		*v = x;
		return 0;
	}
	case 2: {
		uint64_t l;
		if ((rc = pb_varint(b, &l, err)))
			return rc;
		if (l > b->n - b->pos)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: truncated protobuf (field %u in %s at byte %zu says "
					 "%llu bytes, %zu left)",
					 b->file, *num, b->what, at, (unsigned long long)l,
					 b->n - b->pos);
		*s = b->p + b->pos;
		*len = (size_t)l;
		b->pos += (size_t)l;
		return 0;
	}
	default:
		return lora_errf(err, LORA_EFORMAT,
				 "%s: bad protobuf wire type %d (field %u in %s at byte %zu)", b->file,
				 *wt, *num, b->what, at);
	}
}

static int pb_want(const struct pb *b, uint32_t num, int wt, int want, size_t at,
		   struct lora_err *err)
{
	if (wt == want)
		return 0;
	return lora_errf(err, LORA_EFORMAT,
			 "%s: bad protobuf wire type %d for field %u of %s at byte %zu (expected %d)",
			 b->file, wt, num, b->what, at, want);
}

static int parse_piece(struct sp_model *m, const unsigned char *s, size_t len, size_t base,
		       const char *file, struct lora_err *err)
{
	char what[64];
	snprintf(what, sizeof what, "piece %zu", m->n);
	struct pb b = {s, len, 0, base, file, what};
	struct sp_piece pc = {NULL, 0, 0.0f, SP_NORMAL};
	bool has_s = false;
	while (b.pos < b.n) {
		uint32_t num;
		int wt, rc;
		uint64_t v = 0;
		const unsigned char *bs = NULL;
		size_t bl = 0, at = base + b.pos;
		if ((rc = pb_field(&b, &num, &wt, &v, &bs, &bl, err)))
			return rc;
		if (num == 1) {
			if ((rc = pb_want(&b, num, wt, 2, at, err)))
				return rc;
			pc.s = (const char *)bs;
			pc.len = bl;
			has_s = true;
		} else if (num == 2) {
			if ((rc = pb_want(&b, num, wt, 5, at, err)))
				return rc;
			uint32_t u = (uint32_t)v;
			memcpy(&pc.score, &u, sizeof pc.score);
		} else if (num == 3) {
			if ((rc = pb_want(&b, num, wt, 0, at, err)))
				return rc;
			pc.type = (int)(int32_t)v;
			if (pc.type < SP_NORMAL || pc.type > SP_BYTE)
				return lora_errf(err, LORA_EFORMAT, "%s: piece %zu has bad type %d",
						 file, m->n, pc.type);
		}
	}
	if (!has_s || !pc.len)
		return lora_errf(err, LORA_EFORMAT, "%s: piece %zu has no string", file, m->n);
	for (size_t i = 0; i < pc.len;) {
		uint32_t cp;
		size_t bad, l = tk_utf8_dec(pc.s + i, pc.len - i, &cp, &bad);
		if (!l || !cp)
			return lora_errf(err, LORA_EFORMAT, "%s: piece %zu is not valid UTF-8",
					 file, m->n);
		i += l;
	}
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 1024;
		struct sp_piece *np = realloc(m->p, cap * sizeof *np);
		if (!np)
			return LORA_ENOMEM;
		m->p = np;
		m->cap = cap;
	}
	m->p[m->n++] = pc;
	return 0;
}

static int parse_sub(struct sp_model *m, bool trainer, const unsigned char *s, size_t len,
		     size_t base, const char *file, struct lora_err *err)
{
	struct pb b = {s, len, 0, base, file, trainer ? "trainer_spec" : "normalizer_spec"};
	while (b.pos < b.n) {
		uint32_t num;
		int wt, rc;
		uint64_t v = 0;
		const unsigned char *bs = NULL;
		size_t bl = 0, at = base + b.pos;
		if ((rc = pb_field(&b, &num, &wt, &v, &bs, &bl, err)))
			return rc;
		int want = -1;
		if (trainer) {
			if (num == 3 || num == 35 || (num >= 40 && num <= 43))
				want = 0;
		} else {
			if (num == 1 || num == 2)
				want = 2;
			else if (num >= 3 && num <= 5)
				want = 0;
		}
		if (want < 0)
			continue;
		if ((rc = pb_want(&b, num, wt, want, at, err)))
			return rc;
		if (trainer) {
			int64_t iv = (int64_t)(int32_t)v; /* int32 fields: negatives sign-extended */
			switch (num) {
			case 3:
				m->model_type = (int)iv;
				break;
			case 35:
				m->byte_fallback = v != 0;
				break;
			case 40:
				m->unk_id = iv;
				break;
			case 41:
				m->bos_id = iv;
				break;
			case 42:
				m->eos_id = iv;
				break;
			case 43:
				m->pad_id = iv;
				break;
			}
		} else {
			switch (num) {
			case 2:
				m->charsmap = (const char *)bs;
				m->ncharsmap = bl;
				break;
			case 3:
				m->add_dummy_prefix = v != 0;
				break;
			case 4:
				m->remove_extra_ws = v != 0;
				break;
			case 5:
				m->escape_ws = v != 0;
				break;
			}
		}
	}
	return 0;
}

static int parse_model(struct sp_model *m, const unsigned char *s, size_t len, const char *file,
		       struct lora_err *err)
{
	struct pb b = {s, len, 0, 0, file, "ModelProto"};
	m->model_type = 1;
	m->unk_id = 0;
	m->bos_id = 1;
	m->eos_id = 2;
	m->pad_id = -1;
	m->add_dummy_prefix = m->remove_extra_ws = m->escape_ws = true;
	while (b.pos < b.n) {
		uint32_t num;
		int wt, rc;
		uint64_t v = 0;
		const unsigned char *bs = NULL;
		size_t bl = 0, at = b.pos;
		if ((rc = pb_field(&b, &num, &wt, &v, &bs, &bl, err)))
			return rc;
		if (num < 1 || num > 3)
			continue;
		if ((rc = pb_want(&b, num, wt, 2, at, err)))
			return rc;
		size_t off = (size_t)(bs - s);
		if (num == 1)
			rc = parse_piece(m, bs, bl, off, file, err);
		else
			rc = parse_sub(m, num == 2, bs, bl, off, file, err);
		if (rc)
			return rc;
	}
	if (!m->n)
		return lora_errf(err, LORA_EFORMAT, "%s: SentencePiece model has no pieces", file);
	if (m->model_type != 1 && m->model_type != 2)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: SentencePiece model_type %d is not supported (only UNIGRAM "
				 "and BPE)",
				 file, m->model_type);
	if (m->unk_id < 0 || (size_t)m->unk_id >= m->n)
		return lora_errf(err, LORA_EFORMAT, "%s: unk_id %lld out of range", file,
				 (long long)m->unk_id);
	return 0;
}

/* ---- building the tokenizer.json tree ---- */

static int str_node(struct lora_doc *d, const char *s, size_t len)
{
	memset(d, 0, sizeof *d);
	d->type = LORA_DOC_NULL;
	return lora_doc_set_string(d, s, len);
}

static int put_str(struct lora_doc *m, const char *k, const char *s)
{
	return lora_doc_map_put_string(m, k, s);
}

/* {"type": type} */
static void typed(struct lora_doc *d, const char *type, int *rc)
{
	lora_doc_init_map(d);
	if (!*rc)
		*rc = put_str(d, "type", type);
}

static int push(struct lora_doc *arr, struct lora_doc *v, int rc)
{
	if (rc) {
		lora_doc_clear(v);
		return rc;
	}
	return lora_doc_array_push(arr, v);
}

static int put(struct lora_doc *map, const char *k, struct lora_doc *v, int rc)
{
	if (rc) {
		lora_doc_clear(v);
		return rc;
	}
	return lora_doc_map_put(map, k, v);
}

/* {"String": s} or {"Regex": s} under "pattern" */
static int put_pattern(struct lora_doc *d, const char *kind, const char *s)
{
	struct lora_doc p;
	lora_doc_init_map(&p);
	return put(d, "pattern", &p, put_str(&p, kind, s));
}

static char *base64(const char *s, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *o = malloc((n + 2) / 3 * 4 + 1), *w = o;
	const unsigned char *u = (const unsigned char *)s;
	if (!o)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t x = (uint32_t)u[i] << 16;
		if (i + 1 < n)
			x |= (uint32_t)u[i + 1] << 8;
		if (i + 2 < n)
			x |= u[i + 2];
		*w++ = tab[x >> 18];
		*w++ = tab[(x >> 12) & 63];
		*w++ = i + 1 < n ? tab[(x >> 6) & 63] : '=';
		*w++ = i + 2 < n ? tab[x & 63] : '=';
	}
	*w = 0;
	return o;
}

struct merge {
	int32_t l, r, id; /* ids of the parts; id of the merged piece (score order) */
	float score;
	size_t seq; /* position before sorting (stability) */
};

static int merge_cmp(const void *a, const void *b)
{
	const struct merge *x = a, *y = b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int split_cmp(const void *a, const void *b)
{
	const struct merge *x = a, *y = b;
	if (x->l != y->l)
		return x->l < y->l ? -1 : 1;
	return x->r < y->r ? -1 : x->r > y->r;
}

/* BPE vocab {piece: id} and merges [[l, r], ...] into model map mo. */
static int bpe_model(const struct sp_model *m, char **ps, struct lora_doc *mo)
{
	struct tk_map vocab = {0};
	struct merge *mg = NULL;
	size_t nmg = 0, cmg = 0;
	int rc = 0;
	for (size_t i = 0; i < m->n && !rc; i++)
		rc = tk_map_put(&vocab, ps[i], m->p[i].len, (int32_t)i);
	/* the python dict: later duplicates replace the id */
	for (size_t i = 0; i < m->n && !rc; i++) {
		if (tk_map_get(&vocab, ps[i], m->p[i].len) != (int32_t)i)
			continue; /* a duplicate piece: its first position is kept by the dict */
		size_t start = nmg;
		for (size_t k = 1; k < m->p[i].len && !rc; k++) {
			if (((unsigned char)ps[i][k] & 0xc0) == 0x80)
				continue;
			int32_t l = tk_map_get(&vocab, ps[i], k);
			int32_t r = tk_map_get(&vocab, ps[i] + k, m->p[i].len - k);
			if (l < 0 || r < 0)
				continue;
			if (nmg == cmg) {
				size_t c = cmg ? cmg * 2 : 1024;
				struct merge *n = realloc(mg, c * sizeof *n);
				if (!n) {
					rc = LORA_ENOMEM;
					break;
				}
				mg = n;
				cmg = c;
			}
			mg[nmg++] = (struct merge){l, r, (int32_t)i, m->p[i].score, 0};
		}
		if (nmg - start > 1)
			qsort(mg + start, nmg - start, sizeof *mg, split_cmp);
	}
	for (size_t i = 0; i < nmg; i++)
		mg[i].seq = i;
	if (nmg)
		qsort(mg, nmg, sizeof *mg, merge_cmp);
	/* vocab map, built directly (map_put is linear per key) */
	struct lora_doc v = {0};
	lora_doc_init_map(&v);
	if (!rc) {
		v.u.map.keys = calloc(m->n + 1, sizeof *v.u.map.keys);
		v.u.map.vals = calloc(m->n + 1, sizeof *v.u.map.vals);
		if (!v.u.map.keys || !v.u.map.vals)
			rc = LORA_ENOMEM;
	}
	for (size_t i = 0; i < m->n && !rc; i++) {
		if (tk_map_get(&vocab, ps[i], m->p[i].len) != (int32_t)i)
			continue;
		size_t j = v.u.map.n;
		v.u.map.keys[j] = strdup(ps[i]);
		if (!v.u.map.keys[j]) {
			rc = LORA_ENOMEM;
			break;
		}
		v.u.map.vals[j].type = LORA_DOC_INT;
		v.u.map.vals[j].u.i = (int64_t)i;
		v.u.map.n++;
	}
	rc = put(mo, "vocab", &v, rc);
	struct lora_doc a = {0};
	lora_doc_init_array(&a);
	if (!rc && nmg) {
		a.u.arr.items = calloc(nmg, sizeof *a.u.arr.items);
		if (!a.u.arr.items)
			rc = LORA_ENOMEM;
	}
	for (size_t i = 0; i < nmg && !rc; i++) {
		struct lora_doc *e = &a.u.arr.items[i];
		lora_doc_init_array(e);
		a.u.arr.n++;
		e->u.arr.items = calloc(2, sizeof *e->u.arr.items);
		if (!e->u.arr.items) {
			rc = LORA_ENOMEM;
			break;
		}
		const char *s = ps[mg[i].id];
		size_t ll = strlen(ps[mg[i].l]);
		if ((rc = str_node(&e->u.arr.items[0], s, ll)))
			break;
		e->u.arr.n = 1;
		if ((rc = str_node(&e->u.arr.items[1], s + ll, strlen(s) - ll)))
			break;
		e->u.arr.n = 2;
	}
	rc = put(mo, "merges", &a, rc);
	free(mg);
	tk_map_free(&vocab);
	return rc;
}

static int unigram_model(const struct sp_model *m, char **ps, int extra, struct lora_doc *mo)
{
	struct lora_doc v = {0};
	size_t n = m->n + (size_t)extra;
	int rc = 0;
	lora_doc_init_array(&v);
	v.u.arr.items = calloc(n + 1, sizeof *v.u.arr.items);
	if (!v.u.arr.items)
		rc = LORA_ENOMEM;
	for (size_t i = 0; i < n && !rc; i++) {
		struct lora_doc *e = &v.u.arr.items[i];
		char buf[32];
		const char *s = buf;
		double score = 0.0;
		if (i < m->n) {
			s = ps[i];
			score = m->p[i].score;
		} else {
			snprintf(buf, sizeof buf, "<extra_id_%d>", extra - 1 - (int)(i - m->n));
		}
		lora_doc_init_array(e);
		v.u.arr.n++;
		e->u.arr.items = calloc(2, sizeof *e->u.arr.items);
		if (!e->u.arr.items) {
			rc = LORA_ENOMEM;
			break;
		}
		if ((rc = str_node(&e->u.arr.items[0], s, strlen(s))))
			break;
		e->u.arr.items[1].type = LORA_DOC_FLOAT;
		e->u.arr.items[1].u.f = score;
		e->u.arr.n = 2;
	}
	rc = put(mo, "vocab", &v, rc);
	if (!rc)
		rc = lora_doc_map_put_int(mo, "unk_id", m->unk_id);
	return rc;
}

static int add_token(struct lora_doc *arr, int64_t id, const char *content, bool special,
		     bool normalized, bool lstrip, bool rstrip, bool single_word)
{
	struct lora_doc e;
	int rc = 0;
	for (size_t i = 0; i < arr->u.arr.n; i++) {
		const char *c = tk_get_str(&arr->u.arr.items[i], "content");
		if (c && !strcmp(c, content))
			return 0;
	}
	lora_doc_init_map(&e);
	rc = lora_doc_map_put_int(&e, "id", id);
	rc = rc ? rc : put_str(&e, "content", content);
	rc = rc ? rc : lora_doc_map_put_bool(&e, "single_word", single_word);
	rc = rc ? rc : lora_doc_map_put_bool(&e, "lstrip", lstrip);
	rc = rc ? rc : lora_doc_map_put_bool(&e, "rstrip", rstrip);
	rc = rc ? rc : lora_doc_map_put_bool(&e, "normalized", normalized);
	rc = rc ? rc : lora_doc_map_put_bool(&e, "special", special);
	return push(arr, &e, rc);
}

/* extra_ids as described in the header. */
static int count_extra(const struct lora_doc *cfg, bool spiece, const char *cfgname,
		       struct lora_err *err)
{
	int64_t n = -1;
	if (!cfg)
		return spiece ? 100 : 0;
	if (lora_doc_get_int(cfg, "extra_ids", cfgname, &n, err) == LORA_EFORMAT)
		return -1;
	if (n >= 0)
		return n > 100000 ? -1 : (int)n;
	const char *cls = tk_get_str(cfg, "tokenizer_class");
	if (cls && !strncmp(cls, "T5", 2))
		return 100;
	const struct lora_doc *a = lora_doc_get(cfg, "additional_special_tokens");
	int k = 0;
	for (size_t i = 0; a && a->type == LORA_DOC_ARRAY && i < a->u.arr.n; i++) {
		const struct lora_doc *e = &a->u.arr.items[i];
		const char *s = e->type == LORA_DOC_STRING ? e->u.str.s : tk_get_str(e, "content");
		if (s && !strncmp(s, "<extra_id_", 10))
			k++;
	}
	return k;
}

static bool cfg_bool(const struct lora_doc *cfg, const char *key, bool def)
{
	const struct lora_doc *v = lora_doc_get(cfg, key);
	return v && v->type == LORA_DOC_BOOL ? v->u.b : def;
}

static int build_root(const struct sp_model *m, char **ps, const struct lora_doc *cfg,
		      int extra, struct lora_doc *root)
{
	const char *sp = "\xe2\x96\x81";
	bool bpe = m->model_type == 2;
	int rc = 0;
	struct lora_doc mo, nm, pre, dec, post, added;
	lora_doc_init_map(root);

	/* model */
	typed(&mo, bpe ? "BPE" : "Unigram", &rc);
	if (bpe) {
		rc = rc ? rc : put_str(&mo, "unk_token", ps[m->unk_id]);
		rc = rc ? rc : lora_doc_map_put_bool(&mo, "fuse_unk", true);
		rc = rc ? rc : lora_doc_map_put_bool(&mo, "byte_fallback", true);
		rc = rc ? rc : bpe_model(m, ps, &mo);
	} else {
		rc = rc ? rc : lora_doc_map_put_bool(&mo, "byte_fallback", m->byte_fallback);
		rc = rc ? rc : unigram_model(m, ps, extra, &mo);
	}
	rc = put(root, "model", &mo, rc);

	/* normalizer */
	struct lora_doc list, e;
	typed(&nm, "Sequence", &rc);
	lora_doc_init_array(&list);
	if (bpe) {
		if (m->add_dummy_prefix) {
			typed(&e, "Prepend", &rc);
			rc = rc ? rc : put_str(&e, "prepend", sp);
			rc = push(&list, &e, rc);
		}
		typed(&e, "Replace", &rc);
		rc = rc ? rc : put_pattern(&e, "String", " ");
		rc = rc ? rc : put_str(&e, "content", sp);
		rc = push(&list, &e, rc);
	} else {
		if (m->ncharsmap) {
			char *b64 = base64(m->charsmap, m->ncharsmap);
			typed(&e, "Precompiled", &rc);
			rc = rc ? rc : b64 ? put_str(&e, "precompiled_charsmap", b64) : LORA_ENOMEM;
			free(b64);
			rc = push(&list, &e, rc);
		}
		typed(&e, "Replace", &rc);
		rc = rc ? rc : put_pattern(&e, "Regex", " {2,}");
		rc = rc ? rc : put_str(&e, "content", " ");
		rc = push(&list, &e, rc);
	}
	rc = put(&nm, "normalizers", &list, rc);
	rc = put(root, "normalizer", &nm, rc);

	/* pre-tokenizer, decoder */
	const char *scheme = m->add_dummy_prefix ? "always" : "never";
	if (!bpe) {
		typed(&pre, "Metaspace", &rc);
		rc = rc ? rc : put_str(&pre, "replacement", sp);
		rc = rc ? rc : put_str(&pre, "prepend_scheme", scheme);
		rc = put(root, "pre_tokenizer", &pre, rc);
		typed(&dec, "Metaspace", &rc);
		rc = rc ? rc : put_str(&dec, "replacement", sp);
		rc = rc ? rc : put_str(&dec, "prepend_scheme", scheme);
		rc = put(root, "decoder", &dec, rc);
	} else {
		typed(&dec, "Sequence", &rc);
		lora_doc_init_array(&list);
		typed(&e, "Replace", &rc);
		rc = rc ? rc : put_pattern(&e, "String", sp);
		rc = rc ? rc : put_str(&e, "content", " ");
		rc = push(&list, &e, rc);
		typed(&e, "ByteFallback", &rc);
		rc = push(&list, &e, rc);
		typed(&e, "Fuse", &rc);
		rc = push(&list, &e, rc);
		if (m->add_dummy_prefix) {
			typed(&e, "Strip", &rc);
			rc = rc ? rc : put_str(&e, "content", " ");
			rc = rc ? rc : lora_doc_map_put_int(&e, "start", 1);
			rc = rc ? rc : lora_doc_map_put_int(&e, "stop", 0);
			rc = push(&list, &e, rc);
		}
		rc = put(&dec, "decoders", &list, rc);
		rc = put(root, "decoder", &dec, rc);
	}

	/* post-processor: TemplateProcessing single */
	bool bos = bpe && cfg_bool(cfg, "add_bos_token", true) && m->bos_id >= 0 &&
		   (size_t)m->bos_id < m->n;
	bool eos = (bpe ? cfg_bool(cfg, "add_eos_token", false) : true) && m->eos_id >= 0 &&
		   (size_t)m->eos_id < m->n;
	if (bos || eos) {
		struct lora_doc single, specials, item, inner, ids;
		typed(&post, "TemplateProcessing", &rc);
		lora_doc_init_array(&single);
		lora_doc_init_map(&specials);
		for (int k = 0; k < 3; k++) {
			const char *tok = NULL;
			if (k == 0 && bos)
				tok = ps[m->bos_id];
			else if (k == 2 && eos)
				tok = ps[m->eos_id];
			else if (k != 1)
				continue;
			lora_doc_init_map(&item);
			lora_doc_init_map(&inner);
			rc = rc ? rc : put_str(&inner, "id", tok ? tok : "A");
			rc = rc ? rc : lora_doc_map_put_int(&inner, "type_id", 0);
			rc = put(&item, tok ? "SpecialToken" : "Sequence", &inner, rc);
			rc = push(&single, &item, rc);
			if (tok) {
				lora_doc_init_map(&inner);
				lora_doc_init_array(&ids);
				rc = rc ? rc : put_str(&inner, "id", tok);
				struct lora_doc iv = {.type = LORA_DOC_INT};
				iv.u.i = k == 0 ? m->bos_id : m->eos_id;
				rc = push(&ids, &iv, rc);
				rc = put(&inner, "ids", &ids, rc);
				rc = put(&specials, tok, &inner, rc);
			}
		}
		rc = put(&post, "single", &single, rc);
		rc = put(&post, "special_tokens", &specials, rc);
		rc = put(root, "post_processor", &post, rc);
	}

	/* added tokens */
	lora_doc_init_array(&added);
	for (size_t i = 0; i < m->n && !rc; i++) {
		int ty = m->p[i].type;
		if (ty == SP_UNKNOWN || ty == SP_CONTROL)
			rc = add_token(&added, (int64_t)i, ps[i], true, false, false, false, false);
		else if (ty == SP_USER)
			rc = add_token(&added, (int64_t)i, ps[i], false, false, false, false, false);
	}
	for (int k = 0; k < extra && !rc; k++) {
		char buf[32];
		snprintf(buf, sizeof buf, "<extra_id_%d>", extra - 1 - k);
		rc = add_token(&added, (int64_t)m->n + k, buf, true, false, false, false, false);
	}
	const struct lora_doc *atd = lora_doc_get(cfg, "added_tokens_decoder");
	for (size_t i = 0; atd && atd->type == LORA_DOC_MAP && i < atd->u.map.n && !rc; i++) {
		const struct lora_doc *ad = &atd->u.map.vals[i];
		const char *c = tk_get_str(ad, "content");
		char *end;
		long long id = strtoll(atd->u.map.keys[i], &end, 10);
		if (!c || !*c || *end || id < 0 || id > INT32_MAX)
			continue;
		rc = add_token(&added, id, c, cfg_bool(ad, "special", true),
			       cfg_bool(ad, "normalized", false), cfg_bool(ad, "lstrip", false),
			       cfg_bool(ad, "rstrip", false), cfg_bool(ad, "single_word", false));
	}
	rc = put(root, "added_tokens", &added, rc);
	return rc;
}

static int read_file(const char *path, unsigned char **buf, size_t *len, struct lora_err *err)
{
	FILE *f = fopen(path, "rb");
	*buf = NULL;
	*len = 0;
	if (!f)
		return lora_errf(err, LORA_ENOTFOUND, "cannot open '%s'", path);
	size_t cap = 1 << 16, n = 0;
	unsigned char *b = malloc(cap);
	while (b) {
		size_t r = fread(b + n, 1, cap - n, f);
		n += r;
		if (n < cap)
			break;
		unsigned char *nb = cap < SIZE_MAX / 2 ? realloc(b, cap * 2) : NULL;
		if (!nb) {
			free(b);
			b = NULL;
			break;
		}
		b = nb;
		cap *= 2;
	}
	int bad = ferror(f);
	fclose(f);
	if (!b)
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
	if (bad) {
		free(b);
		return lora_errf(err, LORA_EIO, "%s: read error", path);
	}
	*buf = b;
	*len = n;
	return 0;
}

int tk_spm_load(struct lora_tok *t, const char *dir, bool spiece, struct lora_err *err)
{
	struct sp_model m = {0};
	unsigned char *buf = NULL;
	size_t len;
	char **ps = NULL;
	struct lora_doc *cfg = NULL, root = {0};
	char cfgname[4200];
	int rc = read_file(t->name, &buf, &len, err);
	if (rc)
		return rc;
	rc = parse_model(&m, buf, len, t->name, err);
	if (!rc) {
		ps = calloc(m.n + 1, sizeof *ps);
		rc = ps ? 0 : LORA_ENOMEM;
	}
	for (size_t i = 0; i < m.n && !rc; i++) {
		ps[i] = malloc(m.p[i].len + 1);
		if (!ps[i]) {
			rc = LORA_ENOMEM;
			break;
		}
		memcpy(ps[i], m.p[i].s, m.p[i].len);
		ps[i][m.p[i].len] = 0;
	}
	if (!rc && dir) {
		FILE *f;
		snprintf(cfgname, sizeof cfgname, "%s/tokenizer_config.json", dir);
		if ((f = fopen(cfgname, "r"))) {
			fclose(f);
			rc = lora_doc_parse_file(cfgname, &cfg, err);
			if (!rc && cfg->type != LORA_DOC_MAP)
				rc = lora_errf(err, LORA_EFORMAT, "%s: not a JSON object", cfgname);
		}
	}
	int extra = 0;
	if (!rc && m.model_type == 1) {
		extra = count_extra(cfg, spiece, cfgname, err);
		if (extra < 0)
			rc = lora_errf(err, LORA_EFORMAT, "%s: bad 'extra_ids'", cfgname);
	}
	if (!rc)
		rc = build_root(&m, ps, cfg, extra, &root);
	if (!rc)
		rc = tk_build(t, &root, err);
	lora_doc_clear(&root);
	lora_doc_free(cfg);
	for (size_t i = 0; ps && i < m.n; i++)
		free(ps[i]);
	free(ps);
	free(m.p);
	free(buf);
	return rc;
}
