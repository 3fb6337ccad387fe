/*
 * decoder — the driver shared by the decoder-only architectures (gpt2.c,
 * llama.c). Private to lib/, like arch.h.
 *
 * The driver does what does not depend on the architecture: checking and
 * packing several sequences into one batch for nll (ids, segment boundaries,
 * the rows that score a target), the head applied only to those rows in
 * chunks, logits of one sequence, and the greedy generation loop with its
 * per-layer f32 KV cache. The architecture supplies its math through
 * struct lora_decoder_ops: activations, the blocks over a packed batch and
 * the final norm.
 *
 * Memory: the activations and the head's rows live in blocks the decoder
 * keeps between calls (struct lora_decoder_buf, the largest size asked for
 * so far, 2 MB-aligned and advised as huge pages when large), so a served
 * model's repeated nll calls allocate and page-fault nothing;
 * lora_decoder_release frees them (the architecture's free calls it).
 *
 * An architecture's state (core->arch_state) must begin with a
 * struct lora_decoder, filled by its load; lora_decoder_nll, _logits and
 * _generate then serve directly as its lora_arch entries.
 */
#ifndef LORA_DECODER_H
#define LORA_DECODER_H

#include "arch.h"

/* One run of consecutive rows of the packed batch: rows off..off+len, at
 * positions pos0..pos0+len of their own sequence. */
struct lora_decoder_seg {
	int off, len, pos0;
};

/* KV cache for one sequence: per layer K and V [cap, kv_dim]. */
struct lora_decoder_cache {
	int cap;
	float **k, **v;
};

struct lora_decoder;

/* A block kept between calls: grown by lora_decoder_acts / the driver (its
 * contents are not kept across a growth), freed by lora_decoder_release. */
struct lora_decoder_buf {
	void *p;
	size_t cap;	/* bytes */
};

struct lora_decoder_ops {
	/* 0, or an error naming sequence k + 1 when len tokens do not fit. */
	int (*check_len)(const struct lora_decoder *d, size_t len, size_t k, struct lora_err *err);
	/* The name of adaptable weight i, 0 <= i < n_lin (for the largest rank). */
	const char *(*lin_name)(const struct lora_decoder *d, int i);
	/* Activations for T packed tokens (LoRA rank up to R), segments of at most
	 * maxlen tokens attending to at most maxkeys keys: laid out by
	 * lora_decoder_acts in buf (owned by the driver, never freed by the
	 * caller); NULL with a LORA_ENOMEM message. */
	void *(*acts_new)(const struct lora_decoder *d, int R, int T, int maxlen, int maxkeys,
			  struct lora_decoder_buf *buf, struct lora_err *err);
	/* The blocks over T packed tokens ids in nseg segments; returns the final
	 * residual stream [T, C] (before the last norm), a view into acts. With a
	 * cache (one segment), K/V rows go to cache rows pos0.. and attention
	 * reads the cache. */
	const float *(*forward)(struct lora_model *m, const struct lora_decoder *d, const int32_t *ids,
				int T, const struct lora_decoder_seg *segs, int nseg,
				struct lora_decoder_cache *cache, void *acts);
	/* The final norm of one row: y[C] from x[C]. */
	void (*final_norm)(const struct lora_decoder *d, float *y, const float *x);
};

struct lora_decoder {
	const struct lora_decoder_ops *ops;
	int L, C, V;
	int n_lin;		/* adaptable weights (see lin_name) */
	int kv_dim;		/* floats per token and layer in the KV cache */
	int max_pos;		/* learned positions end here: generation stops (0: no limit) */
	const float *head;	/* [V, C] lm_head, or the tied embedding */
	/* kept between calls (zeroed by the architecture's load, freed by
	 * lora_decoder_release): activations of a batch or prompt, of a
	 * generation step, and the head's normed rows and logits */
	struct lora_decoder_buf keep[3];
};

/* The block for an architecture's activations: a header of head bytes (its
 * struct of views), then n floats at *slab (a multiple of 64 bytes into the
 * block), in buf, grown when too small (contents not kept). Pass n =
 * SIZE_MAX when computing it overflowed. Returns the block, owned by buf, or
 * NULL with a message naming the T tokens. */
void *lora_decoder_acts(size_t head, size_t n, float **slab, int T, struct lora_decoder_buf *buf,
			struct lora_err *err);

/* Free the blocks the decoder keeps (d->keep); d stays usable. */
void lora_decoder_release(struct lora_decoder *d);

/* The lora_arch entries of a decoder-only model (see arch.h). */
int lora_decoder_nll(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		     struct lora_err *err);
int lora_decoder_logits(struct lora_model *m, const struct lora_seq *seq, float **logits,
			size_t *rows, struct lora_err *err);
int lora_decoder_generate(struct lora_model *m, const int32_t *input, size_t n_input,
			  size_t max_new, int32_t *out, size_t *n_out, struct lora_err *err);

#endif
