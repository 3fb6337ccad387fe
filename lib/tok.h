/*
 * tok — tokenizers from a Hugging Face tokenizer.json: Unigram (T5,
 * SentencePiece normalization via the precompiled charsmap) and BPE (byte-level
 * GPT-2/Llama-3/Qwen; SentencePiece-style with byte fallback, Llama-2/Mistral).
 * Ids equal the `tokenizers` library's on the same file.
 * A loaded tokenizer is read-only: several threads may encode and decode with
 * it at once. Supported components are listed in lib/tok.c.
 */
#ifndef LORA_TOK_H
#define LORA_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct lora_tok;

/* Load dir/tokenizer.json (path may also be the file itself). A directory
 * without tokenizer.json but with a SentencePiece spiece.model or
 * tokenizer.model (or path naming such a .model file) is loaded as
 * transformers' converters would turn it into tokenizer.json (lib/tok_spm.c;
 * dir/tokenizer_config.json is read for add_bos_token, add_eos_token,
 * extra_ids and added_tokens_decoder). */
int lora_tok_open(const char *path, struct lora_tok **out, struct lora_err *err);
void lora_tok_close(struct lora_tok *t);

/* Encode UTF-8 text. add_special applies the post-processor (T5's trailing
 * </s>, Llama's leading <s>). *ids is malloc'd (caller frees). Invalid UTF-8
 * is an error (LORA_EFORMAT). */
int lora_tok_encode(const struct lora_tok *t, const char *text, size_t len, bool add_special,
		    int32_t **ids, size_t *n, struct lora_err *err);
/* Decode ids to UTF-8 (malloc'd, NUL-terminated). skip_special drops special
 * tokens. */
int lora_tok_decode(const struct lora_tok *t, const int32_t *ids, size_t n, bool skip_special,
		    char **text, struct lora_err *err);
/* Flags for lora_tok_decode_ex. The last three reproduce transformers' slow
 * (Python/sentencepiece) tokenizers, whose decode differs from tokenizer.json's
 * decoder. The golden `decoded`/generation texts (slow tokenizers) all match
 * with: GPT-2 none; T5 STRIP | CLEANUP; Llama/stories260K SLOW_BYTES. */
enum {
	LORA_TOK_SKIP_SPECIAL = 1,	/* drop special tokens */
	LORA_TOK_SLOW_BYTES = 2,	/* a run of <0xNN> pieces that is not valid UTF-8
					 * keeps its valid chars, each bad byte -> U+FFFD
					 * (the fast ByteFallback replaces every byte) */
	LORA_TOK_CLEANUP = 4,		/* " ." -> ".", " ," -> ",", " n't" -> "n't", ... */
	LORA_TOK_STRIP = 8,		/* strip white space at both ends (T5Tokenizer) */
};
/* lora_tok_decode with flags, also giving the length: the text may contain
 * NUL bytes (a byte piece <0x00>), which lora_tok_decode's result cannot
 * show. len may be NULL. */
int lora_tok_decode_ex(const struct lora_tok *t, const int32_t *ids, size_t n, unsigned flags,
		       char **text, size_t *len, struct lora_err *err);

size_t lora_tok_vocab_size(const struct lora_tok *t);
/* Id of a token string, or -1. */
int32_t lora_tok_id(const struct lora_tok *t, const char *token);
/* Token string of an id, or NULL. */
const char *lora_tok_piece(const struct lora_tok *t, int32_t id);

#endif
