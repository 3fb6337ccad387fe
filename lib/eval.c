/*
 * eval — loss, greedy generation and exact match over examples (see eval.h).
 */
#include "eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

struct lora_eval {
	struct lora_model *m;
	const struct lora_examples *ex;
	struct lora_eval_params p;
	size_t n;
	struct lora_seq *seqs;
	int32_t **in, **tg;
	size_t total;		/* Σ n_target */
};

struct lora_eval_params lora_eval_default_params(void)
{
	struct lora_eval_params p = {0};
	p.max_new_tokens = 32;
	p.batch_tokens = 8192;
	return p;
}

void lora_eval_free(struct lora_eval *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->n; i++) {
		free(e->in ? e->in[i] : NULL);
		free(e->tg ? e->tg[i] : NULL);
	}
	free(e->in);
	free(e->tg);
	free(e->seqs);
	free(e);
}

/* Grow-by-append string buffer. */
struct sbuf {
	char *s;
	size_t n, cap;
};

static int sb_add(struct sbuf *b, const char *s)
{
	size_t k = strlen(s);
	if (b->n + k + 1 > b->cap) {
		size_t cap = (b->n + k + 1) * 2;
		char *ns = realloc(b->s, cap);
		if (!ns)
			return LORA_ENOMEM;
		b->s = ns;
		b->cap = cap;
	}
	memcpy(b->s + b->n, s, k + 1);
	b->n += k;
	return 0;
}

/* The prompt of example k: the input, after K demonstrations with --icl. */
static char *prompt_of(const struct lora_eval *e, size_t k)
{
	const struct lora_example *x = &e->ex->items[k];
	if (e->p.icl <= 0)
		return strdup(x->input);
	const struct lora_examples *d = e->p.demos ? e->p.demos : e->ex;
	struct sbuf b = {0};
	int used = 0, rc = 0;
	for (size_t i = 0; i < d->n && used < e->p.icl && rc == 0; i++) {
		if (!e->p.demos && i == k)
			continue;
		rc |= sb_add(&b, d->items[i].input);
		rc |= sb_add(&b, "\n");
		rc |= sb_add(&b, d->items[i].output);
		rc |= sb_add(&b, "\n\n");
		used++;
	}
	rc |= sb_add(&b, x->input);
	if (rc) {
		free(b.s);
		return NULL;
	}
	return b.s;
}

int lora_eval_new(struct lora_model *m, const struct lora_examples *ex, const char *name,
		  const struct lora_eval_params *p, struct lora_eval **out, struct lora_err *err)
{
	*out = NULL;
	const struct lora_model_info *info = lora_model_info(m);
	const struct lora_tok *tok = lora_model_tok(m);
	if (!ex || ex->n == 0)
		return lora_errf(err, LORA_EINVAL, "%s: no examples", name);
	if (!info->encoder_decoder && info->eos < 0)
		return lora_errf(err, LORA_EINVAL,
				 "the model has no eos token (neither eos_token in "
				 "tokenizer_config.json nor eos_token_id in config.json)");
	struct lora_eval *e = calloc(1, sizeof *e);
	if (!e)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	e->m = m;
	e->ex = ex;
	e->p = p ? *p : lora_eval_default_params();
	if (!e->p.batch_tokens)
		e->p.batch_tokens = 8192;
	e->n = ex->n;
	e->seqs = calloc(e->n, sizeof *e->seqs);
	e->in = calloc(e->n, sizeof *e->in);
	e->tg = calloc(e->n, sizeof *e->tg);
	int rc = 0;
	if (!e->seqs || !e->in || !e->tg) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t k = 0; k < e->n; k++) {
		const struct lora_example *x = &ex->items[k];
		char *prompt = prompt_of(e, k);
		if (!prompt) {
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
			goto fail;
		}
		size_t ni = 0, nt = 0;
		rc = lora_tok_encode(tok, prompt, strlen(prompt), true, &e->in[k], &ni, err);
		free(prompt);
		if (rc == 0)
			rc = lora_tok_encode(tok, x->output, strlen(x->output), info->encoder_decoder,
					     &e->tg[k], &nt, err);
		if (rc < 0) {
			lora_err_prefix(err, rc, "%s:%d: ", name, x->line);
			goto fail;
		}
		if (!info->encoder_decoder) {
			int32_t *t = realloc(e->tg[k], (nt + 1) * sizeof *t);
			if (!t) {
				rc = lora_errf(err, LORA_ENOMEM, "out of memory");
				goto fail;
			}
			t[nt++] = info->eos;
			e->tg[k] = t;
		}
		if (ni == 0 || nt == 0) {
			rc = lora_errf(err, LORA_EINVAL, "%s:%d: the %s tokenizes to nothing", name, x->line,
				       ni == 0 ? "input" : "output");
			goto fail;
		}
		size_t len = info->encoder_decoder ? (ni > nt ? ni : nt) : ni + nt - 1;
		if (info->max_positions > 0 && len > (size_t)info->max_positions) {
			rc = lora_errf(err, LORA_EINVAL,
				       "%s:%d: the example is %zu tokens long, more than the model's "
				       "context of %d (shorten it; lora-eval does not truncate)",
				       name, x->line, len, info->max_positions);
			goto fail;
		}
		e->seqs[k] = (struct lora_seq){e->in[k], ni, e->tg[k], nt};
		e->total += nt;
	}
	*out = e;
	return 0;
fail:
	lora_eval_free(e);
	return rc;
}

/* ---- LoraHub's answer normalisation ---- */

/* The text is handled as code points; a byte that is not valid UTF-8 is kept
 * as -1 - byte (no property, passed through). Checked against Python 3.11
 * (Unicode 14) on every assigned code point alone and around a capital sigma;
 * utf8proc knows Unicode 15, so code points new in 15 may differ. */

/* Python's str.isspace(): bidirectional class WS, B or S, or category Zs. */
static bool u_space(int32_t c)
{
	if (c < 0)
		return false;
	const utf8proc_property_t *p = utf8proc_get_property(c);
	return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
	       p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

/* Unicode's Case_Ignorable: categories Mn, Me, Cf, Lm, Sk, and Word_Break
 * MidLetter, MidNumLet or Single_Quote (UAX #29), which utf8proc does not
 * carry: those are the code points listed. */
static bool u_case_ignorable(int32_t c)
{
	static const int32_t wb[] = {
		0x27, 0x2E, 0x3A, 0xB7, 0x387, 0x55F, 0x5F4, 0x2018, 0x2019, 0x2024,
		0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A,
	};
	if (c < 0)
		return false;
	switch (utf8proc_get_property(c)->category) {
	case UTF8PROC_CATEGORY_MN:
	case UTF8PROC_CATEGORY_ME:
	case UTF8PROC_CATEGORY_CF:
	case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_SK:
		return true;
	default:
		break;
	}
	for (size_t i = 0; i < sizeof wb / sizeof wb[0]; i++)
		if (wb[i] == c)
			return true;
	return false;
}

/* Unicode's Cased (Lu, Ll, Lt, Other_Lowercase, Other_Uppercase): a letter
 * category, a case mapping, or a modifier letter/symbol whose compatibility
 * decomposition is one cased letter (ª, ʰ, ᴬ, ₐ, ...). */
static bool u_cased(int32_t c)
{
	if (c < 0)
		return false;
	const utf8proc_property_t *p = utf8proc_get_property(c);
	if (p->category == UTF8PROC_CATEGORY_LU || p->category == UTF8PROC_CATEGORY_LL ||
	    p->category == UTF8PROC_CATEGORY_LT || utf8proc_tolower(c) != c ||
	    utf8proc_toupper(c) != c)
		return true;
	if (p->decomp_type == 0)
		return false;
	utf8proc_int32_t d[4];
	int bound = 0;
	utf8proc_ssize_t n = utf8proc_decompose_char(c, d, 4, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT,
						      &bound);
	if (n != 1)
		return false;
	utf8proc_propval_t cat = utf8proc_get_property(d[0])->category;
	return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
	       cat == UTF8PROC_CATEGORY_LT;
}

/* Python's Final_Sigma rule for U+03A3 at u[i] of u[a..b): final (ς) when a
 * cased letter precedes it and none follows, case-ignorable code points
 * skipped on both sides. */
static bool final_sigma(const int32_t *u, size_t a, size_t b, size_t i)
{
	size_t j = i;
	while (j > a && u_case_ignorable(u[j - 1]))
		j--;
	if (j == a || !u_cased(u[j - 1]))
		return false;
	j = i + 1;
	while (j < b && u_case_ignorable(u[j]))
		j++;
	return j == b || !u_cased(u[j]);
}

char *lora_eval_normalize(const char *s)
{
	size_t n = strlen(s), nu = 0;
	int32_t *u = malloc((n + 1) * sizeof *u);
	char *o = malloc(4 * n + 1);
	if (!u || !o) {
		free(u);
		free(o);
		return NULL;
	}
	for (size_t i = 0; i < n;) {
		utf8proc_int32_t c;
		utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
						      (utf8proc_ssize_t)(n - i), &c);
		if (k <= 0) {
			c = -1 - (unsigned char)s[i];
			k = 1;
		}
		u[nu++] = c;
		i += (size_t)k;
	}
	/* s.strip() */
	size_t a = 0, b = nu;
	while (a < b && u_space(u[a]))
		a++;
	while (b > a && u_space(u[b - 1]))
		b--;
	/* .lower(), then .replace(".", "") */
	size_t k = 0;
	for (size_t i = a; i < b; i++) {
		int32_t c = u[i];
		if (c < 0) {
			o[k++] = (char)(-1 - c);
			continue;
		}
		if (c == 0x130) {	/* the one unconditional multi-code-point lower case */
			o[k++] = 'i';
			c = 0x307;
		} else if (c == 0x3A3) {
			c = final_sigma(u, a, b, i) ? 0x3C2 : 0x3C3;
		} else {
			c = utf8proc_tolower(c);
		}
		if (c != '.')
			k += (size_t)utf8proc_encode_char(c, (utf8proc_uint8_t *)o + k);
	}
	o[k] = '\0';
	free(u);
	return o;
}

bool lora_eval_match(const char *prediction, const char *reference)
{
	char *a = lora_eval_normalize(prediction), *b = lora_eval_normalize(reference);
	bool eq = a && b && strcmp(a, b) == 0;
	free(a);
	free(b);
	return eq;
}

static int run_nll(struct lora_eval *e, float *nll, struct lora_err *err)
{
	size_t k0 = 0, off = 0;
	while (k0 < e->n) {
		size_t k1 = k0, toks = 0, nt = 0;
		do {
			toks += e->seqs[k1].n_input + e->seqs[k1].n_target;
			nt += e->seqs[k1].n_target;
			k1++;
		} while (k1 < e->n &&
			 toks + e->seqs[k1].n_input + e->seqs[k1].n_target <= e->p.batch_tokens);
		int rc = lora_model_nll(e->m, e->seqs + k0, k1 - k0, nll + off, err);
		if (rc < 0)
			return rc;
		off += nt;
		k0 = k1;
	}
	return 0;
}

static int run_generate(struct lora_eval *e, struct lora_score *s, struct lora_err *err)
{
	const struct lora_tok *tok = lora_model_tok(e->m);
	size_t max_new = e->p.max_new_tokens;
	int32_t *ids = malloc((max_new ? max_new : 1) * sizeof *ids);
	if (!ids || !(s->predictions = calloc(e->n, sizeof *s->predictions))) {
		free(ids);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	size_t hits = 0;
	int rc = 0;
	for (size_t k = 0; k < e->n && rc == 0; k++) {
		size_t n = 0;
		rc = lora_model_generate(e->m, e->seqs[k].input, e->seqs[k].n_input, max_new, ids, &n, err);
		if (rc == 0)
			rc = lora_tok_decode_ex(tok, ids, n, lora_model_decode_flags(e->m),
						&s->predictions[k], NULL, err);
		if (rc < 0) {
			lora_err_prefix(err, rc, "example %zu: ", k + 1);
			break;
		}
		s->n_predictions = k + 1;
		hits += lora_eval_match(s->predictions[k], e->ex->items[k].output);
		if (e->p.progress)
			e->p.progress(e->p.progress_ctx, k + 1, e->n);
	}
	free(ids);
	if (rc == 0) {
		s->has_accuracy = true;
		s->accuracy = (double)hits / (double)e->n;
	}
	return rc;
}

int lora_eval_run(struct lora_eval *e, struct lora_score *s, struct lora_err *err)
{
	memset(s, 0, sizeof *s);
	float *nll = malloc(e->total * sizeof *nll);
	if (!nll || !(s->per_example = calloc(e->n, sizeof *s->per_example))) {
		free(nll);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	s->n_per_example = e->n;
	int rc = run_nll(e, nll, err);
	if (rc == 0) {
		double sum = 0;
		size_t off = 0;
		for (size_t k = 0; k < e->n; k++) {
			double se = 0;
			for (size_t j = 0; j < e->seqs[k].n_target; j++)
				se += nll[off + j];
			off += e->seqs[k].n_target;
			s->per_example[k] = se / (double)e->seqs[k].n_target;
			sum += se;
		}
		s->loss = sum / (double)e->total;
		s->tokens = (int64_t)e->total;
		s->examples = (int64_t)e->n;
		if (e->p.generate)
			rc = run_generate(e, s, err);
	}
	free(nll);
	if (rc < 0)
		lora_score_free(s);
	return rc;
}
