/*
 * tok_bpe — the BPE model of tokenizer.json: vocab (token -> id), merges
 * ("a b" strings or [a, b] pairs, rank = position), unk_token, fuse_unk,
 * byte_fallback (<0xNN> pieces), ignore_merges, continuing_subword_prefix and
 * end_of_word_suffix.
 *
 * A word starts as one symbol per char (or its <0xNN> bytes, or unk), then
 * the adjacent pair with the lowest merge rank is merged, leftmost first on
 * ties, until no pair has a merge. A binary heap of candidate merges with
 * lazy invalidation keeps this O(n log n) per word, which matters for
 * SentencePiece-style files without a pre-tokenizer, where a whole text is
 * one word. dropout is ignored (encoding is deterministic).
 */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

static int set_piece(struct lora_tok *t, int64_t id, const char *s, size_t len)
{
	if ((size_t)id >= t->n_pieces) {
		size_t n = (size_t)id + 1;
		char **p = realloc(t->pieces, n * sizeof *p);
		if (!p)
			return LORA_ENOMEM;
		memset(p + t->n_pieces, 0, (n - t->n_pieces) * sizeof *p);
		t->pieces = p;
		t->n_pieces = n;
	}
	char *c = malloc(len + 1);
	if (!c)
		return LORA_ENOMEM;
	memcpy(c, s, len);
	c[len] = 0;
	free(t->pieces[id]);
	t->pieces[id] = c;
	return 0;
}

static char *opt_str(const struct lora_doc *m, const char *key)
{
	const char *s = tk_get_str(m, key);
	return s ? strdup(s) : NULL;
}

int tk_bpe_load(struct lora_tok *t, const struct lora_doc *m, struct lora_err *err)
{
	const struct lora_doc *v = lora_doc_get(m, "vocab");
	const struct lora_doc *mg = lora_doc_get(m, "merges");
	int rc;
	if (!v || v->type != LORA_DOC_MAP)
		return lora_errf(err, LORA_EFORMAT, "%s: BPE model needs a 'vocab' object",
				 t->name);
	int64_t maxid = -1;
	for (size_t i = 0; i < v->u.map.n; i++) {
		const struct lora_doc *id = &v->u.map.vals[i];
		if (id->type != LORA_DOC_INT || id->u.i < 0 || id->u.i >= INT32_MAX)
			return lora_errf(err, LORA_EFORMAT, "%s: vocab entry '%s' has a bad id",
					 t->name, v->u.map.keys[i]);
		if (id->u.i > maxid)
			maxid = id->u.i;
	}
	if (maxid >= 0 && (rc = set_piece(t, maxid, "", 0))) /* size the table once */
		return rc;
	for (size_t i = 0; i < v->u.map.n; i++)
		if ((rc = set_piece(t, v->u.map.vals[i].u.i, v->u.map.keys[i],
				    strlen(v->u.map.keys[i]))))
			return rc;
	for (size_t i = 0; i < t->n_pieces; i++)
		if (t->pieces[i] &&
		    (rc = tk_map_put(&t->vocab, t->pieces[i], strlen(t->pieces[i]), (int32_t)i)))
			return rc;
	lora_doc_get_bool(m, "fuse_unk", t->name, &t->fuse_unk, NULL);
	lora_doc_get_bool(m, "byte_fallback", t->name, &t->byte_fallback, NULL);
	lora_doc_get_bool(m, "ignore_merges", t->name, &t->ignore_merges, NULL);
	t->cont_prefix = opt_str(m, "continuing_subword_prefix");
	t->eow_suffix = opt_str(m, "end_of_word_suffix");
	const char *unk = tk_get_str(m, "unk_token");
	if (unk)
		t->unk_id = tk_map_get(&t->vocab, unk, strlen(unk));

	if (!mg || mg->type == LORA_DOC_NULL)
		return 0;
	if (mg->type != LORA_DOC_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "%s: 'merges' must be an array", t->name);
	size_t plen = t->cont_prefix ? strlen(t->cont_prefix) : 0;
	char *buf = NULL;
	size_t bcap = 0;
	rc = 0;
	for (size_t i = 0; i < mg->u.arr.n && !rc; i++) {
		const struct lora_doc *e = &mg->u.arr.items[i];
		const char *a, *b;
		size_t al, bl;
		if (e->type == LORA_DOC_STRING) {
			const char *sp = memchr(e->u.str.s, ' ', e->u.str.len);
			if (!sp ||
			    memchr(sp + 1, ' ', e->u.str.len - (size_t)(sp + 1 - e->u.str.s))) {
				rc = lora_errf(err, LORA_EFORMAT,
					       "%s: merge %zu '%s' is not two tokens", t->name, i,
					       e->u.str.s);
				break;
			}
			a = e->u.str.s;
			al = (size_t)(sp - a);
			b = sp + 1;
			bl = e->u.str.len - al - 1;
		} else if (e->type == LORA_DOC_ARRAY && e->u.arr.n == 2 &&
			   e->u.arr.items[0].type == LORA_DOC_STRING &&
			   e->u.arr.items[1].type == LORA_DOC_STRING) {
			a = e->u.arr.items[0].u.str.s;
			al = e->u.arr.items[0].u.str.len;
			b = e->u.arr.items[1].u.str.s;
			bl = e->u.arr.items[1].u.str.len;
		} else {
			rc = lora_errf(err, LORA_EFORMAT, "%s: merge %zu is not a pair of tokens",
				       t->name, i);
			break;
		}
		int32_t ia = tk_map_get(&t->vocab, a, al), ib = tk_map_get(&t->vocab, b, bl);
		size_t skip = plen && bl >= plen && !memcmp(b, t->cont_prefix, plen) ? plen : 0;
		if (al + bl + 1 > bcap) {
			bcap = (al + bl + 1) * 2;
			char *nb = realloc(buf, bcap);
			if (!nb) {
				rc = LORA_ENOMEM;
				break;
			}
			buf = nb;
		}
		memcpy(buf, a, al);
		memcpy(buf + al, b + skip, bl - skip);
		int32_t im = tk_map_get(&t->vocab, buf, al + bl - skip);
		if (ia < 0 || ib < 0 || im < 0) {
			rc = lora_errf(err, LORA_EFORMAT,
				       "%s: merge %zu ('%.*s' + '%.*s') uses a token not in the "
				       "vocabulary",
				       t->name, i, (int)al, a, (int)bl, b);
			break;
		}
		rc = tk_umap_put(&t->merges, (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib,
				 (uint32_t)i, im);
	}
	free(buf);
	return rc;
}

struct sym {
	int32_t id;
	int32_t prev, next;
	uint32_t len; /* bytes; 0 = merged away */
};

struct cand {
	uint32_t rank, pos;
	int32_t id;
};

static bool cand_less(const struct cand *x, const struct cand *y)
{
	return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

struct heap {
	struct cand *v;
	size_t n, cap;
};

static int heap_push(struct heap *h, struct cand c)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct cand *v = realloc(h->v, cap * sizeof *v);
		if (!v)
			return LORA_ENOMEM;
		h->v = v;
		h->cap = cap;
	}
	size_t i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!cand_less(&c, &h->v[p]))
			break;
		h->v[i] = h->v[p];
		i = p;
	}
	h->v[i] = c;
	return 0;
}

static struct cand heap_pop(struct heap *h)
{
	struct cand top = h->v[0], last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && cand_less(&h->v[c + 1], &h->v[c]))
			c++;
		if (!cand_less(&h->v[c], &last))
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

struct word {
	struct sym *v;
	size_t n, cap;
};

static int word_add(struct word *w, int32_t id, size_t len)
{
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 32;
		struct sym *v = realloc(w->v, cap * sizeof *v);
		if (!v)
			return LORA_ENOMEM;
		w->v = v;
		w->cap = cap;
	}
	int32_t i = (int32_t)w->n;
	w->v[w->n++] = (struct sym){id, i - 1, i + 1, (uint32_t)len};
	return 0;
}

static bool pair_merge(const struct lora_tok *t, int32_t a, int32_t b, uint32_t *rank, int32_t *id)
{
	return tk_umap_get(&t->merges, (uint64_t)(uint32_t)a << 32 | (uint32_t)b, rank, id);
}

/* Initial symbols of a word, as the library's merge_word builds them. */
static int initial_symbols(const struct lora_tok *t, const char *s, size_t len, struct word *w)
{
	size_t plen = t->cont_prefix ? strlen(t->cont_prefix) : 0;
	size_t slen = t->eow_suffix ? strlen(t->eow_suffix) : 0;
	char tmp[64];
	int32_t unk = -1;
	size_t unk_len = 0;
	bool have_unk = false;
	int rc = 0;
	for (size_t i = 0, l; i < len && !rc; i += l) {
		l = tk_u8len((unsigned char)s[i]);
		const char *c = s + i;
		size_t cl = l;
		bool first = i == 0, last = i + l >= len;
		if ((!first && plen) || (last && slen)) {
			size_t p = !first ? plen : 0, q = last ? slen : 0;
			if (p + l + q > sizeof tmp)
				return LORA_EINVAL;
			if (p)
				memcpy(tmp, t->cont_prefix, p);
			memcpy(tmp + p, c, l);
			if (q)
				memcpy(tmp + p + l, t->eow_suffix, q);
			c = tmp;
			cl = p + l + q;
		}
		int32_t id = tk_map_get(&t->vocab, c, cl);
		if (id >= 0) {
			if (have_unk) {
				rc = word_add(w, unk, unk_len);
				have_unk = false;
			}
			if (!rc)
				rc = word_add(w, id, l);
			continue;
		}
		if (t->byte_fallback) {
			bool all = true;
			for (size_t k = 0; k < cl; k++)
				if (t->byte_id[(unsigned char)c[k]] < 0)
					all = false;
			if (all) {
				for (size_t k = 0; k < cl && !rc; k++)
					rc = word_add(w, t->byte_id[(unsigned char)c[k]], 1);
				continue;
			}
		}
		if (t->unk_id >= 0) {
			if (have_unk && t->fuse_unk) {
				unk_len += l;
			} else {
				if (have_unk)
					rc = word_add(w, unk, unk_len);
				unk = t->unk_id;
				unk_len = l;
				have_unk = true;
			}
		}
	}
	if (!rc && have_unk)
		rc = word_add(w, unk, unk_len);
	return rc;
}

int tk_bpe_encode(const struct lora_tok *t, const char *s, size_t len, struct tk_ids *out,
		  struct lora_err *err)
{
	struct word w = {0};
	struct heap h = {0};
	int rc;
	if (!len)
		return 0;
	if (t->ignore_merges) {
		int32_t id = tk_map_get(&t->vocab, s, len);
		if (id >= 0)
			return tk_ids_push(out, id);
	}
	rc = initial_symbols(t, s, len, &w);
	if (rc == LORA_EINVAL)
		rc = lora_errf(err, LORA_EINVAL,
			       "%s: continuing_subword_prefix or end_of_word_suffix too long",
			       t->name);
	for (size_t i = 0; i + 1 < w.n && !rc; i++) {
		uint32_t rank;
		int32_t id;
		if (pair_merge(t, w.v[i].id, w.v[i + 1].id, &rank, &id))
			rc = heap_push(&h, (struct cand){rank, (uint32_t)i, id});
	}
	while (!rc && h.n) {
		struct cand top = heap_pop(&h);
		struct sym *cur = &w.v[top.pos];
		if (!cur->len || cur->next < 0 || (size_t)cur->next >= w.n)
			continue;
		size_t np = (size_t)cur->next;
		struct sym right = w.v[np];
		uint32_t rank;
		int32_t id;
		if (!pair_merge(t, cur->id, right.id, &rank, &id) || id != top.id)
			continue;
		cur->id = top.id;
		cur->len += right.len;
		cur->next = right.next;
		w.v[np].len = 0;
		if (right.next >= 0 && (size_t)right.next < w.n)
			w.v[right.next].prev = (int32_t)top.pos;
		if (cur->prev >= 0 && pair_merge(t, w.v[cur->prev].id, cur->id, &rank, &id))
			rc = heap_push(&h, (struct cand){rank, (uint32_t)cur->prev, id});
		if (!rc && cur->next >= 0 && (size_t)cur->next < w.n &&
		    pair_merge(t, cur->id, w.v[cur->next].id, &rank, &id))
			rc = heap_push(&h, (struct cand){rank, top.pos, id});
	}
	for (size_t i = 0; i < w.n && !rc; i++)
		if (w.v[i].len)
			rc = tk_ids_push(out, w.v[i].id);
	free(w.v);
	free(h.v);
	return rc;
}
