/*
 * tok_norm — tokenizer.json normalizers and pre-tokenizers.
 *
 * Normalizers: Sequence, Precompiled (SentencePiece's precompiled charsmap),
 * NFC, NFD, NFKC, NFKD (utf8proc), Replace, Prepend, Strip, Lowercase,
 * StripAccents. Pre-tokenizers: Sequence, ByteLevel, Metaspace, Split,
 * WhitespaceSplit, Whitespace, Digits, Punctuation, BertPreTokenizer.
 *
 * The precompiled charsmap (base64 in the file) is a little-endian u32 byte
 * size of a darts-clone double-array trie, the trie's u32 units, then a blob
 * of NUL-terminated replacement strings; a trie value is the offset of the
 * replacement in that blob. As in the `tokenizers` library, each extended
 * grapheme cluster shorter than 6 bytes is looked up whole (the first,
 * shortest key that is a prefix of it wins and replaces the whole cluster);
 * otherwise each of its chars is looked up alone and kept when absent.
 *
 * Splitting follows the library's "find matches, then apply a delimiter
 * behavior" model (Removed, Isolated, MergedWithPrevious, MergedWithNext,
 * Contiguous; invert swaps matches and gaps). Regexes are PCRE2 with UTF and
 * Unicode properties; the library uses Oniguruma, which agrees on the
 * patterns real files carry (GPT-2, Llama-3, Qwen).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

/* ------------------------------------------------------------------ */
/* byte-level mapping (GPT-2's bytes_to_unicode)                        */

uint16_t tk_byte_char[256];
static int16_t char_byte[512];
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;

static void bl_init(void)
{
	int n = 0;
	for (int i = 0; i < 512; i++)
		char_byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		bool keep =
			(b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
		tk_byte_char[b] = (uint16_t)(keep ? b : 256 + n++);
		char_byte[tk_byte_char[b]] = (int16_t)b;
	}
}

void tk_bytelevel_init(void)
{
	pthread_once(&bl_once, bl_init);
}

int tk_char_byte(uint32_t cp)
{
	return cp < 512 ? char_byte[cp] : -1;
}

/* ------------------------------------------------------------------ */
/* normalizers                                                          */

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

static int load_precompiled(struct tk_norm *n, const char *b64, size_t len, const char *what,
			    struct lora_err *err)
{
	unsigned char *out = malloc(len / 4 * 3 + 4);
	size_t o = 0;
	uint32_t acc = 0;
	int bits = 0;
	if (!out)
		return LORA_ENOMEM;
	for (size_t i = 0; i < len; i++) {
		int v = b64val((unsigned char)b64[i]);
		if (b64[i] == '=')
			break;
		if (v < 0) {
			free(out);
			return lora_errf(err, LORA_EFORMAT,
					 "%s: precompiled_charsmap is not base64", what);
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits);
		}
	}
	n->blob = out;
	if (o < 4)
		return lora_errf(err, LORA_EFORMAT, "%s: precompiled_charsmap too short", what);
	uint32_t tsize = (uint32_t)out[0] | (uint32_t)out[1] << 8 | (uint32_t)out[2] << 16 |
			 (uint32_t)out[3] << 24;
	if (tsize % 4 || tsize > o - 4)
		return lora_errf(err, LORA_EFORMAT, "%s: precompiled_charsmap trie size %u is bad",
				 what, tsize);
	uint32_t *units = malloc(tsize + 4);
	if (!units)
		return LORA_ENOMEM;
	for (size_t i = 0; i < tsize / 4; i++) {
		const unsigned char *u = out + 4 + 4 * i;
		units[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 |
			   (uint32_t)u[3] << 24;
	}
	n->trie = units;
	n->ntrie = tsize / 4;
	n->nstr = (const char *)out + 4 + tsize;
	n->nnstr = o - 4 - tsize;
	return 0;
}

int tk_norm_load(struct tk_norm *n, const struct lora_doc *d, const char *name,
		 struct lora_err *err)
{
	const char *type = tk_get_str(d, "type");
	char what[600];
	memset(n, 0, sizeof *n);
	if (!type)
		return lora_errf(err, LORA_EFORMAT, "%s: normalizer without a type", name);
	snprintf(what, sizeof what, "%s: normalizer %s", name, type);
	if (!strcmp(type, "Sequence")) {
		const struct lora_doc *a = lora_doc_get(d, "normalizers");
		n->type = TK_N_SEQ;
		if (!a || a->type != LORA_DOC_ARRAY)
			return lora_errf(err, LORA_EFORMAT, "%s without normalizers", what);
		n->sub = calloc(a->u.arr.n + 1, sizeof *n->sub);
		if (!n->sub)
			return LORA_ENOMEM;
		for (size_t i = 0; i < a->u.arr.n; i++) {
			n->nsub++;
			int rc = tk_norm_load(&n->sub[i], &a->u.arr.items[i], name, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (!strcmp(type, "Precompiled")) {
		const struct lora_doc *c = lora_doc_get(d, "precompiled_charsmap");
		n->type = TK_N_PRECOMPILED;
		if (!c || c->type == LORA_DOC_NULL)
			return 0; /* identity */
		if (c->type != LORA_DOC_STRING)
			return lora_errf(err, LORA_EFORMAT,
					 "%s: precompiled_charsmap must be a string", what);
		return load_precompiled(n, c->u.str.s, c->u.str.len, what, err);
	}
	static const struct {
		const char *name;
		enum tk_norm_type t;
	} simple[] = {
		{"NFC", TK_N_NFC},
		{"NFD", TK_N_NFD},
		{"NFKC", TK_N_NFKC},
		{"NFKD", TK_N_NFKD},
		{"Lowercase", TK_N_LOWERCASE},
		{"StripAccents", TK_N_STRIPACCENTS},
	};
	for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
		if (!strcmp(type, simple[i].name)) {
			n->type = simple[i].t;
			return 0;
		}
	if (!strcmp(type, "Strip")) {
		n->type = TK_N_STRIP;
		n->left = n->right = true;
		lora_doc_get_bool(d, "strip_left", name, &n->left, NULL);
		lora_doc_get_bool(d, "strip_right", name, &n->right, NULL);
		return 0;
	}
	if (!strcmp(type, "Prepend") || !strcmp(type, "Replace")) {
		const char *s = tk_get_str(d, type[0] == 'P' ? "prepend" : "content");
		n->type = type[0] == 'P' ? TK_N_PREPEND : TK_N_REPLACE;
		if (!s)
			return lora_errf(err, LORA_EFORMAT, "%s: missing '%s'", what,
					 type[0] == 'P' ? "prepend" : "content");
		n->str = strdup(s);
		n->slen = strlen(s);
		if (!n->str)
			return LORA_ENOMEM;
		if (n->type == TK_N_PREPEND)
			return 0;
		const struct lora_doc *pat = lora_doc_get(d, "pattern");
		const char *ps = pat ? tk_get_str(pat, "String") : NULL;
		const char *pr = pat ? tk_get_str(pat, "Regex") : NULL;
		if (ps)
			return tk_re_compile(&n->re, ps, strlen(ps), true, what, err);
		if (pr)
			return tk_re_compile(&n->re, pr, strlen(pr), false, what, err);
		return lora_errf(err, LORA_EFORMAT, "%s: missing pattern", what);
	}
	return lora_errf(err, LORA_EUNSUPPORTED, "%s: normalizer type '%s' is not supported", name,
			 type);
}

void tk_norm_free(struct tk_norm *n)
{
	if (!n)
		return;
	for (size_t i = 0; i < n->nsub; i++)
		tk_norm_free(&n->sub[i]);
	free(n->sub);
	free(n->str);
	tk_re_free(&n->re);
	free((void *)n->trie);
	free(n->blob);
	memset(n, 0, sizeof *n);
}

/* darts-clone unit fields */
static inline bool du_has_leaf(uint32_t u)
{
	return (u >> 8) & 1;
}
static inline uint32_t du_value(uint32_t u)
{
	return u & ((1u << 31) - 1);
}
static inline uint32_t du_label(uint32_t u)
{
	return u & ((1u << 31) | 0xff);
}
static inline uint32_t du_offset(uint32_t u)
{
	return (u >> 10) << ((u & (1u << 9)) >> 6);
}

/* Replacement for the shortest trie key that is a prefix of s[0..n), or NULL. */
static const char *pc_transform(const struct tk_norm *nm, const char *s, size_t n, size_t *rlen)
{
	const uint32_t *a = nm->trie;
	if (!nm->ntrie)
		return NULL;
	size_t pos = 0;
	uint32_t unit = a[0];
	pos ^= du_offset(unit);
	for (size_t i = 0; i < n; i++) {
		unsigned c = (unsigned char)s[i];
		if (!c)
			break;
		pos ^= c;
		if (pos >= nm->ntrie)
			return NULL;
		unit = a[pos];
		if (du_label(unit) != c)
			return NULL;
		pos ^= du_offset(unit);
		if (pos >= nm->ntrie)
			return NULL;
		if (du_has_leaf(unit)) {
			size_t v = du_value(a[pos]);
			if (v >= nm->nnstr)
				return NULL;
			const char *r = nm->nstr + v;
			const char *e = memchr(r, 0, nm->nnstr - v);
			*rlen = e ? (size_t)(e - r) : nm->nnstr - v;
			return r;
		}
	}
	return NULL;
}

static int norm_precompiled(const struct tk_norm *nm, const char *s, size_t n, struct tk_buf *out)
{
	size_t i = 0;
	while (i < n) {
		/* one extended grapheme cluster s[i..j) */
		utf8proc_int32_t state = 0;
		size_t l, j = i;
		uint32_t prev = tk_u8get(s + j, &l);
		j += l;
		while (j < n) {
			uint32_t cp = tk_u8get(s + j, &l);
			if (utf8proc_grapheme_break_stateful((utf8proc_int32_t)prev,
							     (utf8proc_int32_t)cp, &state))
				break;
			prev = cp;
			j += l;
		}
		size_t rl;
		const char *r;
		if (j - i < 6 && (r = pc_transform(nm, s + i, j - i, &rl))) {
			if (tk_buf_put(out, r, rl))
				return LORA_ENOMEM;
		} else {
			for (size_t k = i; k < j; k += l) {
				tk_u8get(s + k, &l);
				r = pc_transform(nm, s + k, l, &rl);
				if (r ? tk_buf_put(out, r, rl) : tk_buf_put(out, s + k, l))
					return LORA_ENOMEM;
			}
		}
		i = j;
	}
	return 0;
}

struct repl_ctx {
	struct tk_buf *out;
	const char *s;
	size_t last;
	const char *with;
	size_t wlen;
};

static int repl_cb(size_t a, size_t b, void *vc)
{
	struct repl_ctx *c = vc;
	if (tk_buf_put(c->out, c->s + c->last, a - c->last) || tk_buf_put(c->out, c->with, c->wlen))
		return LORA_ENOMEM;
	c->last = b;
	return 0;
}

int tk_norm_apply(const struct tk_norm *nm, const char *s, size_t n, struct tk_buf *out,
		  pcre2_match_data *md, struct lora_err *err)
{
	int rc = 0;
	switch (nm->type) {
	case TK_N_SEQ: {
		struct tk_buf a = {0}, b = {0};
		rc = tk_buf_put(&a, s, n);
		for (size_t i = 0; i < nm->nsub && !rc; i++) {
			b.len = 0;
			rc = tk_buf_put(&b, "", 0);
			if (!rc)
				rc = tk_norm_apply(&nm->sub[i], a.p, a.len, &b, md, err);
			struct tk_buf t = a;
			a = b;
			b = t;
		}
		if (!rc)
			rc = tk_buf_put(out, a.p, a.len);
		tk_buf_free(&a);
		tk_buf_free(&b);
		return rc;
	}
	case TK_N_PRECOMPILED:
		if (!nm->ntrie)
			return tk_buf_put(out, s, n);
		return norm_precompiled(nm, s, n, out);
	case TK_N_NFC:
	case TK_N_NFD:
	case TK_N_NFKC:
	case TK_N_NFKD: {
		int opt = UTF8PROC_STABLE;
		opt |= nm->type == TK_N_NFC || nm->type == TK_N_NFKC ? UTF8PROC_COMPOSE
								     : UTF8PROC_DECOMPOSE;
		if (nm->type == TK_N_NFKC || nm->type == TK_N_NFKD)
			opt |= UTF8PROC_COMPAT;
		if (!n)
			return tk_buf_put(out, "", 0);
		utf8proc_uint8_t *dst = NULL;
		utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n,
						  &dst, (utf8proc_option_t)opt);
		if (r < 0)
			return lora_errf(err, LORA_EINVAL, "unicode normalization failed: %s",
					 utf8proc_errmsg(r));
		rc = tk_buf_put(out, dst, (size_t)r);
		free(dst);
		return rc;
	}
	case TK_N_LOWERCASE:
		for (size_t i = 0, l; i < n && !rc; i += l) {
			uint32_t cp = tk_u8get(s + i, &l);
			if (cp == 0x130)
				rc = tk_buf_put(out, "i\xcc\x87", 3);
			else
				rc = tk_buf_putcp(out,
						  (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
		}
		return rc;
	case TK_N_STRIPACCENTS:
		for (size_t i = 0, l; i < n && !rc; i += l) {
			uint32_t cp = tk_u8get(s + i, &l);
			if (utf8proc_category((utf8proc_int32_t)cp) != UTF8PROC_CATEGORY_MN)
				rc = tk_buf_put(out, s + i, l);
		}
		return rc;
	case TK_N_STRIP: {
		size_t a = 0, b = n, l;
		while (nm->left && a < n && tk_is_space(tk_u8get(s + a, &l)))
			a += l;
		while (nm->right && b > a) {
			size_t p = b - 1;
			while (p > a && ((unsigned char)s[p] & 0xc0) == 0x80)
				p--;
			if (!tk_is_space(tk_u8get(s + p, &l)))
				break;
			b = p;
		}
		return tk_buf_put(out, s + a, b - a);
	}
	case TK_N_PREPEND:
		if (n && tk_buf_put(out, nm->str, nm->slen))
			return LORA_ENOMEM;
		return tk_buf_put(out, s, n);
	case TK_N_REPLACE: {
		struct repl_ctx c = {out, s, 0, nm->str, nm->slen};
		rc = tk_re_each(&nm->re, s, n, md, repl_cb, &c, err);
		if (!rc)
			rc = tk_buf_put(out, s + c.last, n - c.last);
		return rc;
	}
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* pre-tokenizers                                                       */

static const char *GPT2_RE =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_behavior(const char *b, enum tk_split_behavior *out)
{
	static const struct {
		const char *n;
		enum tk_split_behavior b;
	} t[] = {
		{"Removed", TK_B_REMOVED},
		{"Isolated", TK_B_ISOLATED},
		{"MergedWithPrevious", TK_B_MERGED_PREV},
		{"MergedWithNext", TK_B_MERGED_NEXT},
		{"Contiguous", TK_B_CONTIGUOUS},
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (!strcmp(b, t[i].n)) {
			*out = t[i].b;
			return 0;
		}
	return -1;
}

int tk_pre_load(struct tk_pre *p, const struct lora_doc *d, const char *name, struct lora_err *err)
{
	const char *type = tk_get_str(d, "type");
	char what[600];
	memset(p, 0, sizeof *p);
	if (!type)
		return lora_errf(err, LORA_EFORMAT, "%s: pre_tokenizer without a type", name);
	snprintf(what, sizeof what, "%s: pre_tokenizer %s", name, type);
	if (!strcmp(type, "Sequence")) {
		const struct lora_doc *a = lora_doc_get(d, "pretokenizers");
		p->type = TK_P_SEQ;
		if (!a || a->type != LORA_DOC_ARRAY)
			return lora_errf(err, LORA_EFORMAT, "%s without pretokenizers", what);
		p->sub = calloc(a->u.arr.n + 1, sizeof *p->sub);
		if (!p->sub)
			return LORA_ENOMEM;
		for (size_t i = 0; i < a->u.arr.n; i++) {
			p->nsub++;
			int rc = tk_pre_load(&p->sub[i], &a->u.arr.items[i], name, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (!strcmp(type, "ByteLevel")) {
		p->type = TK_P_BYTELEVEL;
		p->add_prefix_space = true;
		p->use_regex = true;
		lora_doc_get_bool(d, "add_prefix_space", name, &p->add_prefix_space, NULL);
		lora_doc_get_bool(d, "use_regex", name, &p->use_regex, NULL);
		if (p->use_regex)
			return tk_re_compile(&p->re, GPT2_RE, strlen(GPT2_RE), false, what, err);
		return 0;
	}
	if (!strcmp(type, "Metaspace")) {
		const char *r = tk_get_str(d, "replacement");
		const char *ps = tk_get_str(d, "prepend_scheme");
		bool aps = true;
		size_t l;
		p->type = TK_P_METASPACE;
		if (!r)
			r = "\xe2\x96\x81";
		if (!*r || strlen(r) > 4)
			return lora_errf(err, LORA_EFORMAT, "%s: bad replacement", what);
		p->repl_cp = tk_u8get(r, &l);
		memcpy(p->repl, r, l);
		p->repl_len = l;
		lora_doc_get_bool(d, "add_prefix_space", name, &aps, NULL);
		p->prepend = aps ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
		if (ps) {
			if (!strcmp(ps, "always"))
				p->prepend = TK_PREPEND_ALWAYS;
			else if (!strcmp(ps, "first"))
				p->prepend = TK_PREPEND_FIRST;
			else if (!strcmp(ps, "never"))
				p->prepend = TK_PREPEND_NEVER;
			else
				return lora_errf(err, LORA_EFORMAT, "%s: bad prepend_scheme '%s'",
						 what, ps);
		}
		p->split = true;
		lora_doc_get_bool(d, "split", name, &p->split, NULL);
		return 0;
	}
	if (!strcmp(type, "Split")) {
		const struct lora_doc *pat = lora_doc_get(d, "pattern");
		const char *ps = pat ? tk_get_str(pat, "String") : NULL;
		const char *pr = pat ? tk_get_str(pat, "Regex") : NULL;
		const char *b = tk_get_str(d, "behavior");
		p->type = TK_P_SPLIT;
		lora_doc_get_bool(d, "invert", name, &p->invert, NULL);
		if (!b || parse_behavior(b, &p->behavior))
			return lora_errf(err, LORA_EFORMAT, "%s: bad behavior '%s'", what,
					 b ? b : "");
		if (ps)
			return tk_re_compile(&p->re, ps, strlen(ps), true, what, err);
		if (pr)
			return tk_re_compile(&p->re, pr, strlen(pr), false, what, err);
		return lora_errf(err, LORA_EFORMAT, "%s: missing pattern", what);
	}
	if (!strcmp(type, "WhitespaceSplit")) {
		p->type = TK_P_WSSPLIT;
		return 0;
	}
	if (!strcmp(type, "Whitespace")) {
		/* \\w as Oniguruma reads it in Unicode mode (PCRE2 10.42's \\w
		 * leaves out marks): Alphabetic, marks, Nd, Pc, joiners */
		static const char *ws =
			"[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}]+|"
			"[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}\\s]+";
		p->type = TK_P_WHITESPACE;
		return tk_re_compile(&p->re, ws, strlen(ws), false, what, err);
	}
	if (!strcmp(type, "Digits")) {
		p->type = TK_P_DIGITS;
		lora_doc_get_bool(d, "individual_digits", name, &p->individual, NULL);
		return 0;
	}
	if (!strcmp(type, "Punctuation")) {
		const char *b = tk_get_str(d, "behavior");
		p->type = TK_P_PUNCT;
		p->behavior = TK_B_ISOLATED;
		if (b && parse_behavior(b, &p->behavior))
			return lora_errf(err, LORA_EFORMAT, "%s: bad behavior '%s'", what, b);
		return 0;
	}
	if (!strcmp(type, "BertPreTokenizer")) {
		p->type = TK_P_SEQ;
		p->sub = calloc(2, sizeof *p->sub);
		if (!p->sub)
			return LORA_ENOMEM;
		p->nsub = 2;
		p->sub[0].type = TK_P_WSSPLIT;
		p->sub[1].type = TK_P_PUNCT;
		p->sub[1].behavior = TK_B_ISOLATED;
		return 0;
	}
	return lora_errf(err, LORA_EUNSUPPORTED, "%s: pre_tokenizer type '%s' is not supported",
			 name, type);
}

void tk_pre_free(struct tk_pre *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nsub; i++)
		tk_pre_free(&p->sub[i]);
	free(p->sub);
	tk_re_free(&p->re);
	memset(p, 0, sizeof *p);
}

/* A list of (start, end, is_match) covering a string, as the library's
 * Pattern::find_matches returns it. */
struct mlist {
	struct mseg {
		size_t a, b;
		bool m;
	} * v;
	size_t n, cap;
	size_t prev; /* end of the last match (regex collection) */
};

static int ml_push(struct mlist *l, size_t a, size_t b, bool m)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 32;
		struct mseg *v = realloc(l->v, cap * sizeof *v);
		if (!v)
			return LORA_ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = (struct mseg){a, b, m};
	return 0;
}

static int re_cb(size_t a, size_t b, void *vl)
{
	struct mlist *l = vl;
	if (l->prev != a && ml_push(l, l->prev, a, false))
		return LORA_ENOMEM;
	if (ml_push(l, a, b, true))
		return LORA_ENOMEM;
	l->prev = b;
	return 0;
}

static int matches_re(const struct tk_re *re, const char *s, size_t n, pcre2_match_data *md,
		      struct mlist *l, struct lora_err *err)
{
	l->n = 0;
	l->prev = 0;
	if (!n)
		return ml_push(l, 0, 0, false);
	int rc = tk_re_each(re, s, n, md, re_cb, l, err);
	if (!rc && l->prev != n)
		rc = ml_push(l, l->prev, n, false);
	return rc;
}

static int matches_pred(bool (*pred)(uint32_t), const char *s, size_t n, struct mlist *l)
{
	size_t last = 0, i = 0, len;
	l->n = 0;
	if (!n)
		return ml_push(l, 0, 0, false);
	while (i < n) {
		uint32_t cp = tk_u8get(s + i, &len);
		if (pred(cp)) {
			if (last < i && ml_push(l, last, i, false))
				return LORA_ENOMEM;
			if (ml_push(l, i, i + len, true))
				return LORA_ENOMEM;
			last = i + len;
		}
		i += len;
	}
	if (n > last)
		return ml_push(l, last, n, false);
	return 0;
}

/* Apply a delimiter behavior to l; push the kept parts of piece pc. */
static int split_apply(struct mlist *l, enum tk_split_behavior bh, bool invert,
		       const struct tk_piece *pc, struct tk_pieces *out)
{
	size_t k = 0;
	if (invert)
		for (size_t i = 0; i < l->n; i++)
			l->v[i].m = !l->v[i].m;
	/* rewrite l->v in place into (range, remove) entries, m = remove */
	switch (bh) {
	case TK_B_REMOVED:
		k = l->n;
		break;
	case TK_B_ISOLATED:
		for (size_t i = 0; i < l->n; i++)
			l->v[i].m = false;
		k = l->n;
		break;
	case TK_B_CONTIGUOUS: {
		bool prev = false;
		for (size_t i = 0; i < l->n; i++) {
			bool m = l->v[i].m;
			if (m == prev && k > 0)
				l->v[k - 1].b = l->v[i].b;
			else
				l->v[k++] = (struct mseg){l->v[i].a, l->v[i].b, false};
			prev = m;
		}
		break;
	}
	case TK_B_MERGED_PREV: {
		bool prev = false;
		for (size_t i = 0; i < l->n; i++) {
			bool m = l->v[i].m;
			if (m && !prev && k > 0)
				l->v[k - 1].b = l->v[i].b;
			else
				l->v[k++] = (struct mseg){l->v[i].a, l->v[i].b, false};
			prev = m;
		}
		break;
	}
	case TK_B_MERGED_NEXT: {
		/* walk backwards, building from the end of the array */
		bool prev = false;
		size_t w = l->n; /* entries w..n-1 are the output, reversed order kept */
		for (size_t i = l->n; i-- > 0;) {
			bool m = l->v[i].m;
			struct mseg s = l->v[i];
			if (m && !prev && w < l->n)
				l->v[w].a = s.a;
			else
				l->v[--w] = (struct mseg){s.a, s.b, false};
			prev = m;
		}
		memmove(l->v, l->v + w, (l->n - w) * sizeof *l->v);
		k = l->n - w;
		break;
	}
	}
	for (size_t i = 0; i < k; i++) {
		if (l->v[i].m || l->v[i].b == l->v[i].a)
			continue;
		int rc = tk_pieces_push(out, pc->off + l->v[i].a, l->v[i].b - l->v[i].a, -1,
					pc->first && l->v[i].a == 0);
		if (rc)
			return rc;
	}
	return 0;
}

static int pre_one(const struct tk_pre *p, struct tk_buf *arena, const struct tk_piece *in,
		   struct tk_pieces *out, struct mlist *ml, pcre2_match_data *md,
		   struct lora_err *err)
{
	struct tk_piece pc = *in;
	int rc = 0;
	switch (p->type) {
	case TK_P_SEQ:
		return 0; /* handled by the caller */
	case TK_P_BYTELEVEL: {
		struct tk_pieces tmp = {0};
		if (p->add_prefix_space && arena->p[pc.off] != ' ') {
			size_t off = arena->len;
			if (tk_buf_reserve(arena, pc.len + 2))
				return LORA_ENOMEM;
			tk_buf_put(arena, " ", 1);
			tk_buf_put(arena, arena->p + pc.off, pc.len);
			pc.off = off;
			pc.len++;
		}
		if (p->use_regex) {
			rc = matches_re(&p->re, arena->p + pc.off, pc.len, md, ml, err);
			if (!rc)
				rc = split_apply(ml, TK_B_ISOLATED, false, &pc, &tmp);
		} else {
			rc = tk_pieces_push(&tmp, pc.off, pc.len, -1, pc.first);
		}
		for (size_t i = 0; i < tmp.n && !rc; i++) {
			size_t off = arena->len;
			const struct tk_piece *q = &tmp.v[i];
			if (tk_buf_reserve(arena, q->len * 2 + 1)) {
				rc = LORA_ENOMEM;
				break;
			}
			for (size_t j = 0; j < q->len; j++) {
				uint16_t c = tk_byte_char[(unsigned char)arena->p[q->off + j]];
				if (c < 0x80) {
					arena->p[arena->len++] = (char)c;
				} else {
					arena->p[arena->len++] = (char)(0xc0 | (c >> 6));
					arena->p[arena->len++] = (char)(0x80 | (c & 0x3f));
				}
			}
			arena->p[arena->len] = 0;
			rc = tk_pieces_push(out, off, arena->len - off, -1, q->first);
		}
		tk_pieces_free(&tmp);
		return rc;
	}
	case TK_P_METASPACE: {
		size_t off = arena->len, l;
		bool starts = false;
		if (tk_buf_reserve(arena, pc.len * 3 + p->repl_len + 1))
			return LORA_ENOMEM;
		/* replace ' ' by the replacement */
		for (size_t i = 0; i < pc.len; i++) {
			char c = arena->p[pc.off + i];
			if (c == ' ')
				rc = tk_buf_put(arena, p->repl, p->repl_len);
			else
				rc = tk_buf_put(arena, &c, 1);
			if (rc)
				return rc;
		}
		size_t n = arena->len - off;
		starts = n >= p->repl_len && !memcmp(arena->p + off, p->repl, p->repl_len);
		bool pre = !starts && (p->prepend == TK_PREPEND_ALWAYS ||
				       (p->prepend == TK_PREPEND_FIRST && pc.first));
		if (pre) {
			size_t off2 = arena->len;
			if (tk_buf_reserve(arena, n + p->repl_len + 1))
				return LORA_ENOMEM;
			tk_buf_put(arena, p->repl, p->repl_len);
			tk_buf_put(arena, arena->p + off, n);
			off = off2;
			n += p->repl_len;
		}
		struct tk_piece np = {off, n, -1, pc.first};
		if (!p->split)
			return tk_pieces_push(out, off, n, -1, pc.first);
		/* split on the replacement char, MergedWithNext */
		ml->n = 0;
		size_t last = 0, i = 0;
		const char *s = arena->p + off;
		while (i < n && !rc) {
			uint32_t cp = tk_u8get(s + i, &l);
			if (cp == p->repl_cp) {
				if (last < i)
					rc = ml_push(ml, last, i, false);
				if (!rc)
					rc = ml_push(ml, i, i + l, true);
				last = i + l;
			}
			i += l;
		}
		if (!rc && n > last)
			rc = ml_push(ml, last, n, false);
		if (!rc)
			rc = split_apply(ml, TK_B_MERGED_NEXT, false, &np, out);
		return rc;
	}
	case TK_P_SPLIT:
		rc = matches_re(&p->re, arena->p + pc.off, pc.len, md, ml, err);
		return rc ? rc : split_apply(ml, p->behavior, p->invert, &pc, out);
	case TK_P_WHITESPACE:
		rc = matches_re(&p->re, arena->p + pc.off, pc.len, md, ml, err);
		return rc ? rc : split_apply(ml, TK_B_REMOVED, true, &pc, out);
	case TK_P_WSSPLIT:
		rc = matches_pred(tk_is_space, arena->p + pc.off, pc.len, ml);
		return rc ? rc : split_apply(ml, TK_B_REMOVED, false, &pc, out);
	case TK_P_DIGITS:
		rc = matches_pred(tk_is_numeric, arena->p + pc.off, pc.len, ml);
		return rc ? rc
			  : split_apply(ml, p->individual ? TK_B_ISOLATED : TK_B_CONTIGUOUS, false,
					&pc, out);
	case TK_P_PUNCT:
		rc = matches_pred(tk_is_punct, arena->p + pc.off, pc.len, ml);
		return rc ? rc : split_apply(ml, p->behavior, false, &pc, out);
	}
	return 0;
}

int tk_pre_apply(const struct tk_pre *p, struct tk_buf *arena, struct tk_pieces *pcs,
		 pcre2_match_data *md, struct lora_err *err)
{
	if (p->type == TK_P_SEQ) {
		for (size_t i = 0; i < p->nsub; i++) {
			int rc = tk_pre_apply(&p->sub[i], arena, pcs, md, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	struct tk_pieces out = {0};
	struct mlist ml = {0};
	int rc = 0;
	for (size_t i = 0; i < pcs->n && !rc; i++) {
		struct tk_piece pc = pcs->v[i];
		if (pc.tok >= 0)
			rc = tk_pieces_push(&out, pc.off, pc.len, pc.tok, false);
		else if (pc.len)
			rc = pre_one(p, arena, &pc, &out, &ml, md, err);
	}
	free(ml.v);
	if (rc) {
		tk_pieces_free(&out);
		return rc;
	}
	tk_pieces_free(pcs);
	*pcs = out;
	return 0;
}
