/*
 * eval — loss, greedy generation and exact match over examples (see eval.h).
 */
#include "eval.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
		return lora_errf(err, LORA_EINVAL, "the model has no eos_token_id in config.json");
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

char *lora_eval_normalize(const char *s)
{
	size_t n = strlen(s);
	char *o = malloc(n + 1);
	if (!o)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] != '.')
			o[k++] = (char)tolower((unsigned char)s[i]);
	o[k] = '\0';
	size_t a = 0;
	while (a < k && isspace((unsigned char)o[a]))
		a++;
	while (k > a && isspace((unsigned char)o[k - 1]))
		k--;
	memmove(o, o + a, k - a);
	o[k - a] = '\0';
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
