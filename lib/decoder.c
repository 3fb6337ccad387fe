/*
 * decoder — the driver of the decoder-only architectures (see decoder.h).
 *
 * Batching: the nll pass packs every sequence into one [T, C] activation
 * (T = Σ tokens, a sequence contributing its input and all but its last
 * target), so each Linear is one sgemm with M = T; the architecture runs
 * attention per segment; the head is applied only to the rows that score a
 * target. Generation keeps an f32 KV cache per layer and is greedy.
 * Dimension vocabulary: T tokens, C hidden, V vocabulary (ops.h).
 */
#include "decoder.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static struct lora_decoder *state(struct lora_model *m)
{
	return lora_model_core(m)->arch_state;
}

/* Blocks at least this large are 2 MB-aligned and advised as transparent
 * huge pages (THP is often "madvise" only): the activations of a
 * prompt-sized batch are tens of MB, streamed through by every layer, and 2 MB
 * pages spare the TLB misses (and, on first use, the faults) of 4 KB ones. */
enum { HUGE_MIN = 4 << 20, HUGE_ALIGN = 2 << 20 };

/* Make buf hold at least bytes (contents not kept); 0 or LORA_ENOMEM. */
static int buf_grow(struct lora_decoder_buf *buf, size_t bytes)
{
	if (bytes <= buf->cap && buf->p)
		return 0;
	free(buf->p);
	buf->p = NULL;
	buf->cap = 0;
	void *p = NULL;
	if (bytes >= HUGE_MIN) {
		size_t n = (bytes + HUGE_ALIGN - 1) / HUGE_ALIGN * HUGE_ALIGN;
		if (n < bytes || posix_memalign(&p, HUGE_ALIGN, n) != 0)
			return LORA_ENOMEM;
		bytes = n;
#ifdef MADV_HUGEPAGE
		(void)madvise(p, n, MADV_HUGEPAGE);	/* advice only: 4 KB pages work too */
#endif
	} else if (!(p = malloc(bytes ? bytes : 1))) {
		return LORA_ENOMEM;
	}
	buf->p = p;
	buf->cap = bytes;
	return 0;
}

void lora_decoder_release(struct lora_decoder *d)
{
	for (size_t i = 0; i < sizeof d->keep / sizeof d->keep[0]; i++) {
		free(d->keep[i].p);
		d->keep[i].p = NULL;
		d->keep[i].cap = 0;
	}
}

void *lora_decoder_acts(size_t head, size_t n, float **slab, int T, struct lora_decoder_buf *buf,
			struct lora_err *err)
{
	size_t off = (head + 63) / 64 * 64, bytes;
	if (n == SIZE_MAX || lora_size_mul(n, sizeof(float), &bytes) < 0 ||
	    lora_size_add(bytes, off, &bytes) < 0 || buf_grow(buf, bytes) < 0) {
		lora_errf(err, LORA_ENOMEM, "out of memory for activations of %d tokens", T);
		return NULL;
	}
	*slab = (float *)((char *)buf->p + off);
	return buf->p;
}

/* The largest rank of the current adapter's deltas (at least 1). */
static int max_rank(const struct lora_model *m, const struct lora_decoder *d)
{
	int r = 1;
	for (int i = 0; i < d->n_lin; i++) {
		int n;
		const struct lora_delta *dl = lora_model_deltas(m, d->ops->lin_name(d, i), &n);
		for (int k = 0; k < n; k++)
			r = dl[k].r > r ? dl[k].r : r;
	}
	return r;
}

/* Final norm of the listed rows of x, then head rows -> logits [n, V], in
 * chunks of rows so that a large vocabulary needs no [T, V] buffer when the
 * caller only wants NLL (nll != NULL: one value per row; logits unused). */
static int head_rows(struct lora_decoder *d, const float *x, const int *rows, int n,
		     const int32_t *targets, float *nll, float *logits, struct lora_err *err)
{
	int C = d->C, V = d->V, chunk = n;
	if (nll) {
		chunk = (int)((size_t)(8u << 20) / (size_t)V);
		chunk = chunk < 16 ? 16 : chunk;
		chunk = chunk > n ? n : chunk;
	}
	/* h [chunk, C] then, for nll, lg [chunk, V], in the kept block */
	size_t nh = (size_t)chunk * C, nl = nll ? (size_t)chunk * V : 0;
	if (buf_grow(&d->keep[2], (nh + nl) * sizeof(float)) < 0)
		return lora_errf(err, LORA_ENOMEM, "out of memory for logits");
	float *h = d->keep[2].p, *lg = nll ? h + nh : NULL;
	for (int r0 = 0; r0 < n; r0 += chunk) {
		int c = n - r0 < chunk ? n - r0 : chunk;
		for (int i = 0; i < c; i++)
			d->ops->final_norm(d, h + (size_t)i * C, x + (size_t)rows[r0 + i] * C);
		float *out = nll ? lg : logits + (size_t)r0 * V;
		lora_matmul(out, h, d->head, c, C, V, true, 1.0f, 0.0f);
		if (nll)
			for (int i = 0; i < c; i++)
				nll[r0 + i] = lora_nll_row(lg + (size_t)i * V, V, targets[r0 + i]);
	}
	return 0;
}

int lora_decoder_nll(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		     struct lora_err *err)
{
	struct lora_decoder *d = state(m);
	size_t T = 0, NT = 0;
	int maxlen = 1;
	for (size_t k = 0; k < n; k++) {
		if (seqs[k].n_input == 0 || seqs[k].n_target == 0)
			return lora_errf(err, LORA_EINVAL,
					 "sequence %zu: a decoder-only model needs at least one input "
					 "and one target token", k + 1);
		size_t len = seqs[k].n_input + seqs[k].n_target - 1;
		int rc = d->ops->check_len(d, len, k, err);
		if (rc < 0)
			return rc;
		T += len;
		NT += seqs[k].n_target;
		maxlen = (int)len > maxlen ? (int)len : maxlen;
	}
	if (T == 0)
		return 0;
	if (T > INT32_MAX / 8)
		return lora_errf(err, LORA_EINVAL, "batch of %zu tokens is too large", T);
	int32_t *ids = malloc(T * sizeof *ids), *tg = malloc(NT * sizeof *tg);
	int *rows = malloc(NT * sizeof *rows);
	struct lora_decoder_seg *segs = malloc(n * sizeof *segs);
	void *A = NULL;
	int rc = 0;
	if (!ids || !tg || !rows || !segs) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto out;
	}
	size_t off = 0, r = 0;
	for (size_t k = 0; k < n; k++) {
		const struct lora_seq *s = &seqs[k];
		size_t len = s->n_input + s->n_target - 1;
		memcpy(ids + off, s->input, s->n_input * sizeof *ids);
		memcpy(ids + off + s->n_input, s->target, (s->n_target - 1) * sizeof *ids);
		segs[k] = (struct lora_decoder_seg){(int)off, (int)len, 0};
		for (size_t j = 0; j < s->n_target; j++) {
			rows[r] = (int)(off + s->n_input - 1 + j);
			tg[r++] = s->target[j];
		}
		off += len;
	}
	if (!(A = d->ops->acts_new(d, max_rank(m, d), (int)T, maxlen, maxlen, &d->keep[0], err))) {
		rc = LORA_ENOMEM;
		goto out;
	}
	const float *x = d->ops->forward(m, d, ids, (int)T, segs, (int)n, NULL, A);
	rc = head_rows(d, x, rows, (int)NT, tg, nll, NULL, err);
out:
	free(ids);
	free(tg);
	free(rows);
	free(segs);
	return rc;
}

int lora_decoder_logits(struct lora_model *m, const struct lora_seq *seq, float **logits,
			size_t *nrows, struct lora_err *err)
{
	struct lora_decoder *d = state(m);
	*logits = NULL;
	*nrows = 0;
	size_t T = seq->n_input + seq->n_target;
	int rc = d->ops->check_len(d, T, 0, err);
	if (rc < 0 || T == 0)
		return rc;
	int32_t *ids = malloc(T * sizeof *ids);
	int *rows = malloc(T * sizeof *rows);
	float *out = malloc(T * (size_t)d->V * sizeof *out);
	void *A = NULL;
	if (!ids || !rows || !out) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto out;
	}
	memcpy(ids, seq->input, seq->n_input * sizeof *ids);
	memcpy(ids + seq->n_input, seq->target, seq->n_target * sizeof *ids);
	for (size_t i = 0; i < T; i++)
		rows[i] = (int)i;
	struct lora_decoder_seg sg = {0, (int)T, 0};
	if (!(A = d->ops->acts_new(d, max_rank(m, d), (int)T, (int)T, (int)T, &d->keep[0], err))) {
		rc = LORA_ENOMEM;
		goto out;
	}
	const float *x = d->ops->forward(m, d, ids, (int)T, &sg, 1, NULL, A);
	if ((rc = head_rows(d, x, rows, (int)T, NULL, NULL, out, err)) < 0)
		goto out;
	*logits = out;
	*nrows = T;
	out = NULL;
out:
	free(ids);
	free(rows);
	free(out);
	return rc;
}

static void cache_free(struct lora_decoder_cache *c, int L)
{
	for (int l = 0; l < L && c->k && c->v; l++) {
		free(c->k[l]);
		free(c->v[l]);
	}
	free(c->k);
	free(c->v);
}

int lora_decoder_generate(struct lora_model *m, const int32_t *input, size_t n_input,
			  size_t max_new, int32_t *out, size_t *n_out, struct lora_err *err)
{
	struct lora_decoder *d = state(m);
	*n_out = 0;
	if (n_input == 0)
		return lora_errf(err, LORA_EINVAL, "generation needs at least one input token");
	/* With learned positions (max_pos) only the input must fit: generation
	 * stops where the positions end. Otherwise the whole cache must. */
	size_t cap = n_input + max_new;
	int rc = d->ops->check_len(d, d->max_pos ? n_input : cap, 0, err);
	if (rc < 0)
		return rc;
	if (d->max_pos && cap > (size_t)d->max_pos)
		cap = (size_t)d->max_pos;
	int R = max_rank(m, d);
	struct lora_decoder_cache c = {(int)cap, calloc((size_t)d->L, sizeof(float *)),
				       calloc((size_t)d->L, sizeof(float *))};
	float *lg = malloc((size_t)d->V * sizeof *lg);
	void *A = NULL, *A1 = NULL;
	rc = (!c.k || !c.v || !lg) ? LORA_ENOMEM : 0;
	for (int l = 0; rc == 0 && l < d->L; l++)
		if (!(c.k[l] = malloc(cap * d->kv_dim * sizeof(float))) ||
		    !(c.v[l] = malloc(cap * d->kv_dim * sizeof(float))))
			rc = LORA_ENOMEM;
	if (rc < 0) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory for a KV cache of %zu tokens", cap);
		goto out;
	}
	if (!(A = d->ops->acts_new(d, R, (int)n_input, (int)n_input, (int)n_input, &d->keep[0], err)) ||
	    !(A1 = d->ops->acts_new(d, R, 1, 1, (int)cap, &d->keep[1], err))) {
		rc = LORA_ENOMEM;
		goto out;
	}
	struct lora_decoder_seg sg = {0, (int)n_input, 0};
	const float *x = d->ops->forward(m, d, input, (int)n_input, &sg, 1, &c, A);
	int last = (int)n_input - 1;
	if ((rc = head_rows(d, x, &last, 1, NULL, NULL, lg, err)) < 0)
		goto out;
	for (size_t k = 0; k < max_new; k++) {
		int32_t tok = lora_argmax(lg, d->V);
		out[(*n_out)++] = tok;
		size_t pos = n_input + k;
		if (lora_model_is_eos(m, tok) || k + 1 == max_new || pos >= cap)
			break;
		struct lora_decoder_seg s1 = {0, 1, (int)pos};
		x = d->ops->forward(m, d, &tok, 1, &s1, 1, &c, A1);
		int zero = 0;
		if ((rc = head_rows(d, x, &zero, 1, NULL, NULL, lg, err)) < 0)
			goto out;
	}
out:
	cache_free(&c, d->L);
	free(lg);
	return rc;
}
