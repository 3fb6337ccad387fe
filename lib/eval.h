/*
 * eval — scoring a model (with whatever adapter is attached) on examples:
 * the loss LoraHub optimizes, greedy generation and exact-match accuracy.
 *
 * Tokenization (golden/README.md §3, Hugging Face's conventions):
 *   encoder-decoder (T5): encoder ids = tok(input) with the post-processor
 *     (trailing </s>); labels = tok(output) with </s>; the decoder reads
 *     [decoder_start] + labels[:-1] and every label is scored.
 *   decoder-only: ids = tok(input) (with BOS when the tokenizer adds one) ++
 *     tok(output, no special tokens) ++ [eos]; only the output tokens and the
 *     eos are scored, each by the row before it. eos is info.eos: the
 *     tokenizer's eos_token, else config.json's (first) eos_token_id.
 * loss = mean token cross-entropy over all scored tokens of all examples
 * (Hugging Face's loss of one padded batch); per_example = each example's own
 * mean. Examples are tokenized once, in lora_eval_new; every score reuses
 * them, and the NLL pass packs them into as few batches as the token budget
 * allows.
 * Generation: greedy, up to max_new_tokens, stopping after any of
 * info.eos_ids (generation_config.json's or config.json's eos_token_id); the
 * prediction is decode(ids, skip special). Exact match compares
 * lora_eval_normalize() of prediction and reference.
 * ICL (icl = K > 0): each input becomes K demonstrations then the input:
 *   "<demo input>\n<demo output>\n\n" x K, then "<input>"
 * with demonstrations taken in order from `demos`, or, when demos is NULL,
 * from the examples themselves (the first K other than the one scored).
 */
#ifndef LORA_EVAL_H
#define LORA_EVAL_H

#include <stdbool.h>
#include <stddef.h>

#include "examples.h"
#include "model.h"
#include "stream.h"

struct lora_eval_params {
	bool generate;			/* also generate and report accuracy */
	size_t max_new_tokens;		/* default 32 */
	int icl;			/* K demonstrations in each prompt; 0 = none */
	const struct lora_examples *demos;	/* NULL: from the examples */
	size_t batch_tokens;		/* tokens per NLL batch; default 8192 */
	/* called after each generated example (may be NULL) */
	void (*progress)(void *ctx, size_t done, size_t total);
	void *progress_ctx;
};

struct lora_eval_params lora_eval_default_params(void);

struct lora_eval;

/* Tokenize every example of ex (name: the file, for messages) for model m.
 * m and ex must outlive the eval. Errors name file:line: an example whose
 * tokens exceed the model's context (max_position_embeddings / n_positions)
 * is refused, never truncated; so are empty outputs. */
int lora_eval_new(struct lora_model *m, const struct lora_examples *ex, const char *name,
		  const struct lora_eval_params *p, struct lora_eval **out, struct lora_err *err);
void lora_eval_free(struct lora_eval *e);

/* Score the model as it is now (its current adapter). Fills loss, tokens,
 * examples, per_example and, with generate, accuracy and predictions; the
 * caller sets id/name and frees with lora_score_free. */
int lora_eval_run(struct lora_eval *e, struct lora_score *s, struct lora_err *err);

/* LoraHub's answer normalization, Python's s.strip().lower().replace(".", "")
 * (lorahub/algorithm.py, accuracy_score) on UTF-8: strip Unicode white space
 * (str.isspace) at both ends, lower-case with Python's full mapping (U+0130 ->
 * "i" U+0307, final sigma), then drop every '.' (white space it uncovers
 * stays). Bytes that are not valid UTF-8 pass through. Returns a malloc'd
 * string or NULL. */
char *lora_eval_normalize(const char *s);
/* Exact match after normalization. */
bool lora_eval_match(const char *prediction, const char *reference);

#endif
