/*
 * model — a Hugging Face model directory (config.json, model.safetensors or
 * shards + model.safetensors.index.json, tokenizer.json) loaded for inference,
 * dispatched on config.model_type to an architecture (t5, llama/mistral/qwen2,
 * gpt2). Weights are mmap'd; an adapter is applied unmerged.
 *
 * Sequences follow the Hugging Face loss conventions (see man/lora-eval.1):
 * for T5, input = encoder ids (with </s>), target = labels (with </s>), the
 * decoder is fed [decoder_start] + target[:-1]; for decoder-only models the
 * model reads input ++ target and target[k] is scored by the row before it.
 */
#ifndef LORA_MODEL_H
#define LORA_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "stream.h"
#include "tok.h"

struct lora_model;

struct lora_model_info {
	const char *model_type;	/* config.model_type */
	bool encoder_decoder;
	int vocab;
	int bos, eos, pad, decoder_start;	/* -1 when the model has none */
	/* eos is the id appended to a decoder-only loss target: the tokenizer's
	 * eos_token (tokenizer_config.json) when it names a token of the
	 * vocabulary, else config.json's eos_token_id (the first of a list).
	 * eos_ids are the ids that stop greedy generation, as Hugging Face's
	 * generate reads them: generation_config.json's eos_token_id when it has
	 * one, else config.json's (an int or a list); when neither has any, eos
	 * alone (none when eos is -1). Valid until lora_model_close. */
	const int32_t *eos_ids;
	size_t n_eos_ids;
	int max_positions;	/* 0 = unlimited (T5's relative positions) */
	size_t n_params;	/* base parameters */
	size_t weight_bytes;	/* bytes of weights on disk */
	size_t converted_bytes;	/* bytes allocated to hold f32 copies of f16/bf16 weights */
	size_t bf16_bytes;	/* bytes of packed bf16 Linear weights (lora_model_set_bf16) */
};

int lora_model_open(const char *dir, struct lora_model **out, struct lora_err *err);
void lora_model_close(struct lora_model *m);
const struct lora_model_info *lora_model_info(const struct lora_model *m);
/* The model's tokenizer; valid until lora_model_close. */
const struct lora_tok *lora_model_tok(const struct lora_model *m);

/* Flags for lora_tok_decode_ex that make it decode as Hugging Face's
 * tokenizer.decode(ids, skip_special_tokens=True) does for this directory
 * (tokenizer_config.json's clean_up_tokenization_spaces, SentencePiece byte
 * handling, T5's stripping). */
unsigned lora_model_decode_flags(const struct lora_model *m);

/* Attach an adapter (NULL detaches). Every module must name a Linear weight
 * of this model with the adapter's [out, in]; the first mismatch is reported
 * with both shapes. The model keeps its own f32 copy of the factors. */
int lora_model_set_adapter(struct lora_model *m, const struct lora_adapter *a,
			   struct lora_err *err);

struct lora_seq {
	const int32_t *input;
	size_t n_input;
	const int32_t *target;
	size_t n_target;
};

/* Negative log-likelihood of every target token of every sequence, written
 * contiguously into nll (Σ n_target floats), computed in one batched pass. */
int lora_model_nll(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		   struct lora_err *err);

/* Full logits of one sequence: T5 -> decoder rows 0..n_target-1;
 * decoder-only -> every row of input ++ target. *logits is malloc'd
 * [*rows, vocab]. */
int lora_model_logits(struct lora_model *m, const struct lora_seq *seq, float **logits,
		      size_t *rows, struct lora_err *err);

/* bf16 speed option: on packs every declared Linear weight into bf16 panels
 * (lib/bf16.h; info.bf16_bytes says how much, about half the f32 size) that
 * every Linear product then uses, with x rounded to bf16 and f32
 * accumulation; norms, attention, the LM head and adapter deltas stay f32.
 * The f32 pages of mmap'd weights are dropped from memory once packed.
 * LORA_EUNSUPPORTED when the CPU lacks AVX512-BF16 (lora_bf16_supported).
 * off drops the packed copies (exact f32 again). */
int lora_model_set_bf16(struct lora_model *m, bool on, struct lora_err *err);

/* Whether tok is one of info.eos_ids (an id that ends generation). */
bool lora_model_is_eos(const struct lora_model *m, int32_t tok);

/* Greedy decoding with a KV cache: up to max_new ids into out (which holds
 * max_new); stops after any of info.eos_ids (that id included, as Hugging
 * Face's generate). */
int lora_model_generate(struct lora_model *m, const int32_t *input, size_t n_input,
			size_t max_new, int32_t *out, size_t *n_out, struct lora_err *err);

#endif
