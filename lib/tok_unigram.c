/*
 * tok_unigram — the Unigram model of tokenizer.json (T5 and other
 * SentencePiece unigram models): vocab = [[piece, score], ...] in id order,
 * unk_id, byte_fallback.
 *
 * Encoding is the library's Viterbi: at every char boundary, every piece
 * that starts there (found with a byte trie, shortest first) extends the best
 * path ending at its end if it scores strictly higher; a char with no
 * single-char piece gets an unknown node scored min_score - 10. Consecutive
 * unknown nodes are fused into one token (fuse_unk is always on for Unigram),
 * which then becomes <0xNN> byte pieces when byte_fallback is on and they all
 * exist, else unk_id.
 */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define UNK_PENALTY 10.0

static int trie_child(struct lora_tok *t, uint32_t node, unsigned char c, uint32_t *child)
{
	uint64_t k = (uint64_t)node << 8 | c;
	uint32_t a;
	if (tk_umap_get(&t->trie, k, &a, NULL)) {
		*child = a;
		return 0;
	}
	if (t->trie_nodes % 1024 == 0) {
		int32_t *v = realloc(t->trie_val, (t->trie_nodes + 1024) * sizeof *v);
		if (!v)
			return LORA_ENOMEM;
		t->trie_val = v;
	}
	*child = (uint32_t)t->trie_nodes;
	t->trie_val[t->trie_nodes++] = -1;
	return tk_umap_put(&t->trie, k, *child, 0);
}

int tk_unigram_load(struct lora_tok *t, const struct lora_doc *m, struct lora_err *err)
{
	const struct lora_doc *v = lora_doc_get(m, "vocab");
	const struct lora_doc *u = lora_doc_get(m, "unk_id");
	int rc;
	if (!v || v->type != LORA_DOC_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "%s: Unigram model needs a 'vocab' array",
				 t->name);
	size_t n = v->u.arr.n;
	t->pieces = calloc(n + 1, sizeof *t->pieces);
	t->scores = malloc((n + 1) * sizeof *t->scores);
	if (!t->pieces || !t->scores)
		return LORA_ENOMEM;
	t->fuse_unk = true;
	lora_doc_get_bool(m, "byte_fallback", t->name, &t->byte_fallback, NULL);
	if (u && u->type == LORA_DOC_INT) {
		if (u->u.i < 0 || (size_t)u->u.i >= n)
			return lora_errf(err, LORA_EFORMAT, "%s: unk_id %lld out of range", t->name,
					 (long long)u->u.i);
		t->unk_id = (int32_t)u->u.i;
	}
	t->min_score = DBL_MAX;
	uint32_t root;
	if ((rc = trie_child(t, UINT32_MAX >> 8, 0, &root))) /* node 0 = root */
		return rc;
	for (size_t i = 0; i < n; i++) {
		const struct lora_doc *e = &v->u.arr.items[i];
		if (e->type != LORA_DOC_ARRAY || e->u.arr.n != 2 ||
		    e->u.arr.items[0].type != LORA_DOC_STRING ||
		    (e->u.arr.items[1].type != LORA_DOC_FLOAT &&
		     e->u.arr.items[1].type != LORA_DOC_INT))
			return lora_errf(err, LORA_EFORMAT,
					 "%s: vocab entry %zu is not [piece, score]", t->name, i);
		const struct lora_doc *p = &e->u.arr.items[0];
		t->pieces[i] = malloc(p->u.str.len + 1);
		if (!t->pieces[i])
			return LORA_ENOMEM;
		memcpy(t->pieces[i], p->u.str.s, p->u.str.len + 1);
		t->n_pieces = i + 1;
		t->scores[i] = e->u.arr.items[1].type == LORA_DOC_FLOAT
				       ? e->u.arr.items[1].u.f
				       : (double)e->u.arr.items[1].u.i;
		if (t->scores[i] < t->min_score)
			t->min_score = t->scores[i];
		if ((rc = tk_map_put(&t->vocab, t->pieces[i], p->u.str.len, (int32_t)i)))
			return rc;
		uint32_t node = root;
		for (size_t k = 0; k < p->u.str.len; k++)
			if ((rc = trie_child(t, node, (unsigned char)p->u.str.s[k], &node)))
				return rc;
		t->trie_val[node] = (int32_t)i;
	}
	/* a duplicated piece maps to its last id, as in the library */
	for (size_t i = 0; i < t->trie_nodes; i++)
		if (t->trie_val[i] >= 0)
			t->trie_val[i] = tk_map_get(&t->vocab, t->pieces[t->trie_val[i]],
						    strlen(t->pieces[t->trie_val[i]]));
	return 0;
}

struct node {
	double score;
	int64_t start; /* -1: unreached */
	int32_t id;
};

/* Append the ids of the token s[0..n) (a Viterbi piece, possibly fused unks). */
static int emit(const struct lora_tok *t, const char *s, size_t n, struct tk_ids *out,
		struct lora_err *err)
{
	int32_t id = tk_map_get(&t->vocab, s, n);
	if (id >= 0)
		return tk_ids_push(out, id);
	if (t->byte_fallback) {
		bool all = true;
		for (size_t k = 0; k < n; k++)
			if (t->byte_id[(unsigned char)s[k]] < 0)
				all = false;
		if (all) {
			for (size_t k = 0; k < n; k++) {
				int rc = tk_ids_push(out, t->byte_id[(unsigned char)s[k]]);
				if (rc)
					return rc;
			}
			return 0;
		}
	}
	if (t->unk_id < 0)
		return lora_errf(err, LORA_EINVAL,
				 "%s: text needs the unknown token but the model has no unk_id",
				 t->name);
	return tk_ids_push(out, t->unk_id);
}

int tk_unigram_encode(const struct lora_tok *t, const char *s, size_t len, struct tk_ids *out,
		      struct lora_err *err)
{
	if (!len)
		return 0;
	struct node *best = malloc((len + 1) * sizeof *best);
	size_t *seg = malloc((len + 1) * 2 * sizeof *seg);
	int rc = 0;
	if (!best || !seg) {
		free(best);
		free(seg);
		return LORA_ENOMEM;
	}
	for (size_t i = 0; i <= len; i++)
		best[i] = (struct node){0, -1, -1};
	best[0].start = 0;
	double unk_score = t->min_score - UNK_PENALTY;
	for (size_t i = 0; i < len;) {
		double here = best[i].score;
		size_t mblen = tk_u8len((unsigned char)s[i]);
		bool single = false;
		uint32_t node = 0;
		for (size_t k = i; k < len; k++) {
			uint32_t child;
			if (!tk_umap_get(&t->trie, (uint64_t)node << 8 | (unsigned char)s[k],
					 &child, NULL))
				break;
			node = child;
			int32_t id = t->trie_val[node];
			if (id < 0)
				continue;
			size_t end = k + 1;
			double sc = t->scores[id] + here;
			if (best[end].start < 0 || sc > best[end].score) {
				best[end] = (struct node){sc, (int64_t)i, id};
			}
			if (end - i == mblen)
				single = true;
		}
		if (!single) {
			double sc = unk_score + here;
			size_t end = i + mblen;
			if (best[end].start < 0 || sc > best[end].score)
				best[end] = (struct node){sc, (int64_t)i, t->unk_id};
		}
		i += mblen;
	}
	/* backtrack into segments, fusing unknowns */
	size_t nseg = 0, end = len;
	size_t fuse_end = SIZE_MAX;
	while (end > 0) {
		size_t st = (size_t)best[end].start;
		bool unk = t->unk_id >= 0 && best[end].id == t->unk_id;
		if (unk) {
			if (fuse_end == SIZE_MAX)
				fuse_end = end;
		} else {
			if (fuse_end != SIZE_MAX) {
				seg[2 * nseg] = end;
				seg[2 * nseg + 1] = fuse_end;
				nseg++;
				fuse_end = SIZE_MAX;
			}
			seg[2 * nseg] = st;
			seg[2 * nseg + 1] = end;
			nseg++;
		}
		end = st;
	}
	if (fuse_end != SIZE_MAX) {
		seg[2 * nseg] = 0;
		seg[2 * nseg + 1] = fuse_end;
		nseg++;
	}
	for (size_t k = nseg; k-- > 0 && !rc;)
		rc = emit(t, s + seg[2 * k], seg[2 * k + 1] - seg[2 * k], out, err);
	free(best);
	free(seg);
	return rc;
}
