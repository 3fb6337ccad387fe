/*
 * tok_internal — private pieces shared by lib/tok*.c: byte buffers, UTF-8
 * helpers, hash maps, and the component structs of a tokenizer.json pipeline
 * (normalizer, pre-tokenizer, model, post-processor, decoder).
 *
 * During encoding the text lives in one growing arena (struct tk_buf) and is
 * handled as a list of pieces (offset + length into the arena, plus the id
 * of an added token when the piece is one). Offsets, not pointers, because
 * the arena moves when it grows.
 */
#ifndef LORA_TOK_INTERNAL_H
#define LORA_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "doc.h"
#include "err.h"
#include "tok.h"

/* ---- byte buffer ---- */
struct tk_buf {
	char *p;
	size_t len, cap;
};
int tk_buf_reserve(struct tk_buf *b, size_t extra);
int tk_buf_put(struct tk_buf *b, const void *s, size_t n);
int tk_buf_putcp(struct tk_buf *b, uint32_t cp); /* append one code point as UTF-8 */
void tk_buf_free(struct tk_buf *b);

/* ---- UTF-8 and character classes ---- */
/* Decode the code point at s[0..n) (n > 0). Returns its byte length, or 0 if
 * the sequence is ill-formed (then *bad gets the length of the maximal
 * ill-formed subpart, at least 1, as Rust's from_utf8_lossy counts it). */
size_t tk_utf8_dec(const char *s, size_t n, uint32_t *cp, size_t *bad);
/* Length of a well-formed UTF-8 char from its lead byte (text already valid). */
static inline size_t tk_u8len(unsigned char c)
{
	return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}
/* Decode a char of already validated text. */
uint32_t tk_u8get(const char *s, size_t *len);
bool tk_is_space(uint32_t cp);   /* Rust char::is_whitespace */
bool tk_is_alnum(uint32_t cp);   /* letters and numbers (L*, N*) */
bool tk_is_numeric(uint32_t cp); /* Rust char::is_numeric: N* */
bool tk_is_punct(uint32_t cp);   /* ASCII punctuation or P* */

/* ---- string -> int32 map (keys are borrowed: they must outlive the map) ---- */
struct tk_map {
	const char **keys;
	uint32_t *lens;
	int32_t *vals;
	uint32_t *hash;
	size_t n, cap; /* cap is a power of two; empty slot has keys[i] == NULL */
};
int tk_map_put(struct tk_map *m, const char *k, size_t len, int32_t v);
int32_t tk_map_get(const struct tk_map *m, const char *k, size_t len); /* -1 if absent */
void tk_map_free(struct tk_map *m);

/* ---- uint64 -> (uint32, int32) map ---- */
struct tk_umap {
	uint64_t *keys; /* UINT64_MAX = empty */
	uint32_t *a;
	int32_t *b;
	size_t n, cap;
};
int tk_umap_put(struct tk_umap *m, uint64_t k, uint32_t a, int32_t b);
bool tk_umap_get(const struct tk_umap *m, uint64_t k, uint32_t *a, int32_t *b);
void tk_umap_free(struct tk_umap *m);

/* ---- pieces of text during encoding/decoding ---- */
struct tk_piece {
	size_t off, len; /* into the arena */
	int32_t tok;     /* id of an added token, or -1 */
	bool first;      /* starts at offset 0 of the original text */
};
struct tk_pieces {
	struct tk_piece *v;
	size_t n, cap;
};
int tk_pieces_push(struct tk_pieces *p, size_t off, size_t len, int32_t tok, bool first);
void tk_pieces_free(struct tk_pieces *p);

/* ---- regex (PCRE2, UTF + UCP) ---- */
struct tk_re {
	pcre2_code *code;
	bool jit;
};
/* Compile pattern (literal when literal is true). */
int tk_re_compile(struct tk_re *re, const char *pat, size_t len, bool literal, const char *what,
		  struct lora_err *err);
void tk_re_free(struct tk_re *re);
/* Find every non-overlapping match in s[0..n); calls fn(start, end, ctx) for
 * each (empty matches advance by one char). md is caller-owned match data. */
int tk_re_each(const struct tk_re *re, const char *s, size_t n, pcre2_match_data *md,
	       int (*fn)(size_t, size_t, void *), void *ctx, struct lora_err *err);

/* ---- normalizers ---- */
enum tk_norm_type {
	TK_N_SEQ,
	TK_N_PRECOMPILED,
	TK_N_NFC,
	TK_N_NFD,
	TK_N_NFKC,
	TK_N_NFKD,
	TK_N_REPLACE,
	TK_N_PREPEND,
	TK_N_STRIP,
	TK_N_LOWERCASE,
	TK_N_STRIPACCENTS,
};
struct tk_norm {
	enum tk_norm_type type;
	struct tk_norm *sub;
	size_t nsub;
	char *str; /* Prepend text / Replace content */
	size_t slen;
	struct tk_re re;      /* Replace pattern */
	bool left, right;     /* Strip */
	const uint32_t *trie; /* Precompiled: darts-clone units (points into blob) */
	size_t ntrie;
	const char *nstr; /* Precompiled: NUL-separated replacement strings */
	size_t nnstr;
	unsigned char *blob; /* Precompiled: decoded base64 (owned) */
};
int tk_norm_load(struct tk_norm *n, const struct lora_doc *d, const char *name,
		 struct lora_err *err);
void tk_norm_free(struct tk_norm *n);
/* Normalize s[0..len) into out (appended). md: match data for regexes. */
int tk_norm_apply(const struct tk_norm *n, const char *s, size_t len, struct tk_buf *out,
		  pcre2_match_data *md, struct lora_err *err);

/* ---- pre-tokenizers ---- */
enum tk_pre_type {
	TK_P_SEQ,
	TK_P_BYTELEVEL,
	TK_P_METASPACE,
	TK_P_SPLIT,
	TK_P_WSSPLIT,
	TK_P_WHITESPACE,
	TK_P_DIGITS,
	TK_P_PUNCT,
};
enum tk_split_behavior {
	TK_B_REMOVED,
	TK_B_ISOLATED,
	TK_B_MERGED_PREV,
	TK_B_MERGED_NEXT,
	TK_B_CONTIGUOUS,
};
enum tk_prepend { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };
struct tk_pre {
	enum tk_pre_type type;
	struct tk_pre *sub;
	size_t nsub;
	bool add_prefix_space, use_regex; /* ByteLevel */
	char repl[8];                     /* Metaspace replacement (UTF-8) */
	size_t repl_len;
	uint32_t repl_cp;
	enum tk_prepend prepend;         /* Metaspace */
	bool split;                      /* Metaspace */
	struct tk_re re;                 /* Split, ByteLevel, Whitespace */
	enum tk_split_behavior behavior; /* Split, Punctuation */
	bool invert;                     /* Split */
	bool individual;                 /* Digits */
};
int tk_pre_load(struct tk_pre *p, const struct lora_doc *d, const char *name, struct lora_err *err);
void tk_pre_free(struct tk_pre *p);
/* Pre-tokenize every non-token piece of *pcs (text in arena); replaces *pcs. */
int tk_pre_apply(const struct tk_pre *p, struct tk_buf *arena, struct tk_pieces *pcs,
		 pcre2_match_data *md, struct lora_err *err);

/* GPT-2's byte <-> printable-char mapping. */
extern uint16_t tk_byte_char[256];
int tk_char_byte(uint32_t cp); /* -1 if cp is not one of the 256 chars */
void tk_bytelevel_init(void);

/* ---- the model ---- */
enum tk_model_type { TK_M_BPE, TK_M_UNIGRAM };

struct tk_ids {
	int32_t *v;
	size_t n, cap;
};
int tk_ids_push(struct tk_ids *ids, int32_t id);

struct tk_added {
	char *content;
	size_t len;
	char *norm; /* normalized content (for normalized tokens) */
	size_t nlen;
	int32_t id;
	bool special, single_word, lstrip, rstrip, normalized;
};

enum tk_dec_type {
	TK_D_SEQ,
	TK_D_BYTELEVEL,
	TK_D_METASPACE,
	TK_D_BYTEFALLBACK,
	TK_D_FUSE,
	TK_D_STRIP,
	TK_D_REPLACE,
};
struct tk_dec {
	enum tk_dec_type type;
	struct tk_dec *sub;
	size_t nsub;
	uint32_t cp;        /* Metaspace replacement / Strip content */
	bool prepend;       /* Metaspace: prepend_scheme != never */
	size_t start, stop; /* Strip */
	struct tk_re re;    /* Replace */
	char *str;          /* Replace content */
	size_t slen;
};

enum tk_post_type { TK_PP_SEQ, TK_PP_TEMPLATE, TK_PP_NOOP, TK_PP_BERT };
struct tk_post {
	enum tk_post_type type;
	struct tk_post *sub;
	size_t nsub;
	/* TEMPLATE: items; id list per item, or seq = -1 for "$A". BERT/Roberta:
	 * pre = cls ids, suf = sep ids */
	int32_t *pre, *suf;
	size_t npre, nsuf;
};

struct lora_tok {
	char *name; /* file path, for messages */
	enum tk_model_type model;
	char **pieces; /* id -> model token (NULL for gaps) */
	size_t n_pieces;
	struct tk_map vocab;
	int32_t unk_id; /* -1 if none */
	bool byte_fallback, fuse_unk, ignore_merges;
	int32_t byte_id[256]; /* "<0xNN>" ids, -1 if absent */
	/* BPE */
	struct tk_umap merges; /* (left id << 32 | right id) -> (rank, merged id) */
	char *cont_prefix, *eow_suffix;
	/* Unigram */
	double *scores;
	double min_score;
	struct tk_umap trie; /* (node << 8 | byte) -> (child, -) */
	int32_t *trie_val;   /* node -> piece id or -1 */
	size_t trie_nodes;
	/* pipeline */
	struct tk_norm *norm;
	struct tk_pre *pre;
	struct tk_post *post;
	struct tk_dec *dec;
	struct tk_added *added;
	size_t n_added;
	bool added_first[2][256]; /* [normalized][first byte] of some added token */
	size_t n_added_set[2];    /* added tokens per `normalized` value */
	int32_t *added_of_id;     /* id -> index into added, or -1 (vocab_size entries) */
	size_t vocab_size;
	bool need_md;
};

/* Model loaders and encoders (tok_bpe.c, tok_unigram.c). encode appends the
 * ids of one pre-tokenized word. */
int tk_bpe_load(struct lora_tok *t, const struct lora_doc *m, struct lora_err *err);
int tk_bpe_encode(const struct lora_tok *t, const char *s, size_t len, struct tk_ids *out,
		  struct lora_err *err);
int tk_unigram_load(struct lora_tok *t, const struct lora_doc *m, struct lora_err *err);
int tk_unigram_encode(const struct lora_tok *t, const char *s, size_t len, struct tk_ids *out,
		      struct lora_err *err);

/* Build t (t->name set) from a tokenizer.json tree (tok.c). */
int tk_build(struct lora_tok *t, const struct lora_doc *root, struct lora_err *err);
/* Load the SentencePiece model file t->name, with dir's tokenizer_config.json
 * if any (dir may be NULL); spiece: the file is named spiece.model (tok_spm.c). */
int tk_spm_load(struct lora_tok *t, const char *dir, bool spiece, struct lora_err *err);

/* Helpers for loaders: string member or NULL; error message with the file. */
const char *tk_get_str(const struct lora_doc *d, const char *key);

#endif
