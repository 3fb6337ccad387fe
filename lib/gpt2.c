/*
 * gpt2 — the GPT-2 decoder (model_type gpt2) on lib/ops, matching Hugging
 * Face transformers 4.36's GPT2LMHeadModel.
 *
 *   x = wte[ids] + wpe[pos]
 *   per layer:  qkv = ln_1(x)·c_attn + b  (Conv1D: weight stored [in, out])
 *               a = softmax(q·k^T / sqrt(HS) + causal mask)·v per head
 *               x += a·c_proj + b
 *               x += act(ln_2(x)·c_fc + b)·c_proj + b   (act: gelu_new)
 *   logits = ln_f(x)·wte^T   (tied head)
 * Options honoured: activation_function (gelu_new, gelu_pytorch_tanh, relu),
 * scale_attn_weights, scale_attn_by_inverse_layer_idx, n_inner. Checkpoints
 * with or without the "transformer." prefix load alike. Sequences longer than
 * n_positions are refused (learned positions end there); generation stops at
 * that length.
 * Dimension vocabulary: T tokens, C n_embd, NH heads, HS head size, F inner
 * width, V vocabulary (ops.h).
 */
#include "arch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ATTN, APROJ, FC, MPROJ, NLIN };
static const char *const lin_names[NLIN] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

struct layer {
	const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;	/* [C] */
	const float *w[NLIN];				/* [in, out] */
	const float *b[NLIN];				/* [out] */
	char *name[NLIN];
};

struct gpt2 {
	int C, NH, HS, F, L, V, NP;
	float eps;
	bool relu, scale_w, scale_inv;
	const float *wte;	/* [V, C] */
	const float *wpe;	/* [NP, C] */
	const float *lnf_w, *lnf_b;
	struct layer *layers;
};

struct seg {
	int off, len, pos0;
};

static int cfg_int(const struct lora_doc *cfg, const char *key, int64_t def, int64_t *out,
		   struct lora_err *err)
{
	*out = def;
	int rc = lora_doc_get_int(cfg, key, "config.json", out, err);
	if (rc == 0 && (*out <= 0 || *out > (1 << 24)))
		return lora_errf(err, LORA_EINVAL, "config.json: '%s' must be a positive size, not %lld",
				 key, (long long)*out);
	return rc == LORA_ENOTFOUND ? 0 : rc;
}

static void gpt2_free(struct lora_model *m)
{
	struct lora_model_core *core = lora_model_core(m);
	struct gpt2 *p = core->arch_state;
	if (!p)
		return;
	if (p->layers)
		for (int l = 0; l < p->L; l++)
			for (int j = 0; j < NLIN; j++)
				free(p->layers[l].name[j]);
	free(p->layers);
	free(p);
	core->arch_state = NULL;
}

static const float *wt(struct lora_model *m, const char *pre, const char *name, int64_t rows,
		       int64_t cols, struct lora_err *err)
{
	char buf[320];
	snprintf(buf, sizeof buf, "%s%s", pre, name);
	return lora_model_weight(m, buf, rows, cols, err);
}

static int gpt2_load(struct lora_model *m, struct lora_err *err)
{
	struct lora_model_core *core = lora_model_core(m);
	const struct lora_doc *cfg = core->config;
	struct gpt2 *p = calloc(1, sizeof *p);
	if (!p)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	core->arch_state = p;
	int64_t C, NH, L, V, NP, F;
	double eps = 1e-5;
	int rc;
	if ((rc = cfg_int(cfg, "n_embd", 768, &C, err)) < 0 || (rc = cfg_int(cfg, "n_head", 12, &NH, err)) < 0 ||
	    (rc = cfg_int(cfg, "n_layer", 12, &L, err)) < 0 ||
	    (rc = cfg_int(cfg, "vocab_size", 50257, &V, err)) < 0 ||
	    (rc = cfg_int(cfg, "n_positions", 1024, &NP, err)) < 0)
		return rc;
	const struct lora_doc *ni = lora_doc_get(cfg, "n_inner");
	F = 4 * C;
	if (ni && ni->type != LORA_DOC_NULL && (rc = cfg_int(cfg, "n_inner", 4 * C, &F, err)) < 0)
		return rc;
	rc = lora_doc_get_double(cfg, "layer_norm_epsilon", "config.json", &eps, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	const char *act = "gelu_new";
	rc = lora_doc_get_string(cfg, "activation_function", "config.json", &act, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	if (strcmp(act, "relu") == 0)
		p->relu = true;
	else if (strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "config.json: activation_function '%s' is not supported "
				 "(supported: gelu_new, gelu_pytorch_tanh, relu)", act);
	p->scale_w = true;
	lora_doc_get_bool(cfg, "scale_attn_weights", "config.json", &p->scale_w, NULL);
	lora_doc_get_bool(cfg, "scale_attn_by_inverse_layer_idx", "config.json", &p->scale_inv, NULL);
	if (C % NH)
		return lora_errf(err, LORA_EINVAL, "config.json: n_embd %lld is not a multiple of n_head %lld",
				 (long long)C, (long long)NH);
	p->C = (int)C, p->NH = (int)NH, p->HS = (int)(C / NH), p->F = (int)F, p->L = (int)L;
	p->V = (int)V, p->NP = (int)NP, p->eps = (float)eps;
	core->info.encoder_decoder = false;
	core->info.vocab = p->V;
	core->info.max_positions = p->NP;
	core->info.decoder_start = -1;

	const char *pre = lora_model_has_weight(m, "transformer.wte.weight") ? "transformer." : "";
	if (!(p->wte = wt(m, pre, "wte.weight", V, C, err)) || !(p->wpe = wt(m, pre, "wpe.weight", NP, C, err)) ||
	    !(p->lnf_w = wt(m, pre, "ln_f.weight", C, 0, err)) || !(p->lnf_b = wt(m, pre, "ln_f.bias", C, 0, err)))
		return err ? err->code : LORA_EINVAL;
	if (!(p->layers = calloc((size_t)L, sizeof *p->layers)))
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	const int64_t shape[NLIN][2] = {{C, 3 * C}, {C, C}, {C, F}, {F, C}};	/* [in, out] */
	char name[256];
	for (int l = 0; l < p->L; l++) {
		struct layer *ly = &p->layers[l];
		snprintf(name, sizeof name, "h.%d.ln_1.weight", l);
		if (!(ly->ln1_w = wt(m, pre, name, C, 0, err)))
			return err ? err->code : LORA_EINVAL;
		snprintf(name, sizeof name, "h.%d.ln_1.bias", l);
		if (!(ly->ln1_b = wt(m, pre, name, C, 0, err)))
			return err ? err->code : LORA_EINVAL;
		snprintf(name, sizeof name, "h.%d.ln_2.weight", l);
		if (!(ly->ln2_w = wt(m, pre, name, C, 0, err)))
			return err ? err->code : LORA_EINVAL;
		snprintf(name, sizeof name, "h.%d.ln_2.bias", l);
		if (!(ly->ln2_b = wt(m, pre, name, C, 0, err)))
			return err ? err->code : LORA_EINVAL;
		for (int j = 0; j < NLIN; j++) {
			snprintf(name, sizeof name, "%sh.%d.%s.weight", pre, l, lin_names[j]);
			if (!(ly->name[j] = strdup(name)))
				return lora_errf(err, LORA_ENOMEM, "out of memory");
			if (!(ly->w[j] = lora_model_weight(m, name, shape[j][0], shape[j][1], err)))
				return err ? err->code : LORA_EINVAL;
			if ((rc = lora_model_declare_linear(m, name, shape[j][1], shape[j][0], true, err)) < 0)
				return rc;
			snprintf(name, sizeof name, "%sh.%d.%s.bias", pre, l, lin_names[j]);
			if (!(ly->b[j] = lora_model_weight(m, name, shape[j][1], 0, err)))
				return err ? err->code : LORA_EINVAL;
		}
	}
	return 0;
}

struct acts {
	float *x;	/* [T, C] */
	float *h;	/* [T, C] */
	float *qkv;	/* [T, 3C] */
	float *a;	/* [T, C] */
	float *f;	/* [T, F] */
	float *s;	/* per worker: [maxlen, maxkeys] scores */
	size_t s_stride;
	float *lr;	/* [T, maxR] */
	float *mem;
};

static int max_rank(const struct lora_model *m, const struct gpt2 *p)
{
	int r = 1;
	for (int l = 0; l < p->L; l++)
		for (int j = 0; j < NLIN; j++) {
			int n;
			const struct lora_delta *d = lora_model_deltas(m, p->layers[l].name[j], &n);
			for (int i = 0; i < n; i++)
				r = d[i].r > r ? d[i].r : r;
		}
	return r;
}

static int acts_alloc(struct acts *A, const struct gpt2 *p, int R, int T, int maxlen, int maxkeys,
		      struct lora_err *err)
{
	size_t per_t = 6 * (size_t)p->C + (size_t)p->F + (size_t)R, n, sn;
	if (lora_size_mul(per_t, (size_t)T, &n) < 0 ||
	    lora_size_mul((size_t)maxlen, (size_t)maxkeys, &A->s_stride) < 0 ||
	    lora_size_mul(A->s_stride, (size_t)lora_parallel_workers(), &sn) < 0 ||
	    lora_size_add(n, sn, &n) < 0 ||
	    lora_size_mul(n, sizeof(float), &n) < 0 || !(A->mem = malloc(n)))
		return lora_errf(err, LORA_ENOMEM, "out of memory for activations of %d tokens", T);
	float *f = A->mem;
	A->x = f, f += (size_t)T * p->C;
	A->h = f, f += (size_t)T * p->C;
	A->qkv = f, f += (size_t)T * 3 * p->C;
	A->a = f, f += (size_t)T * p->C;
	A->f = f, f += (size_t)T * p->F;
	A->lr = f, f += (size_t)T * R;
	A->s = f;
	return 0;
}

/* One layer's attention, split into (segment, head) units run in parallel
 * (lora_parallel_for), each worker with its own score scratch. */
struct attn_job {
	const struct gpt2 *p;
	const struct seg *segs;
	struct acts *A;
	float *kc, *vc;		/* this layer's KV cache, or NULL */
	int l;
};

static void attn_unit(void *ctx, int u, int worker)
{
	struct attn_job *j = ctx;
	const struct gpt2 *p = j->p;
	const struct seg *sg = &j->segs[u / p->NH];
	int h = u % p->NH, C = p->C, HS = p->HS;
	/* HF: attn_weights / sqrt(HS), then / (layer + 1) */
	float d1 = p->scale_w ? sqrtf((float)HS) : 1.0f, d2 = p->scale_inv ? (float)(j->l + 1) : 1.0f;
	const float *q = j->A->qkv + (size_t)sg->off * 3 * C;
	const float *kb = q + C, *vb = q + 2 * C;
	int ld = 3 * C, pos0 = 0;
	if (j->kc)
		kb = j->kc, vb = j->vc, ld = C, pos0 = sg->pos0;
	int nk = pos0 + sg->len;
	float *S = j->A->s + (size_t)worker * j->A->s_stride;
	lora_gemm(false, true, sg->len, nk, HS, 1.0f, q + h * HS, 3 * C, kb + h * HS, ld, 0.0f, S, nk);
	for (int i = 0; i < sg->len; i++) {
		float *row = S + (size_t)i * nk;
		int last = pos0 + i;
		for (int k = 0; k <= last; k++)
			row[k] = row[k] / d1 / d2;
		lora_softmax_rows(row, 1, last + 1);
		memset(row + last + 1, 0, (size_t)(nk - last - 1) * sizeof *row);
	}
	lora_gemm(false, false, sg->len, HS, nk, 1.0f, S, nk, vb + h * HS, ld, 0.0f,
		  j->A->a + (size_t)sg->off * C + h * HS, C);
}

static void lin(struct lora_model *m, const struct layer *ly, int j, float *y, const float *x,
		int T, int in, int out, float *scratch)
{
	int nd;
	const struct lora_delta *d = lora_model_deltas(m, ly->name[j], &nd);
	lora_linear(y, x, ly->w[j], false, ly->b[j], d, nd, T, in, out, scratch);
}

/* kc/vc: the KV cache of layer l ([cap, C] each) or NULL. */
static void forward(struct lora_model *m, const struct gpt2 *p, const int32_t *ids, int T,
		    const struct seg *segs, int nseg, float **kc, float **vc, struct acts *A)
{
	int C = p->C;
	for (int s = 0; s < nseg; s++)
		for (int i = 0; i < segs[s].len; i++) {
			size_t t = (size_t)segs[s].off + i;
			const float *e = p->wte + (size_t)ids[t] * C;
			const float *q = p->wpe + (size_t)(segs[s].pos0 + i) * C;
			for (int c = 0; c < C; c++)
				A->x[t * C + c] = e[c] + q[c];
		}
	for (int l = 0; l < p->L; l++) {
		const struct layer *ly = &p->layers[l];
		lora_layernorm(A->h, A->x, ly->ln1_w, ly->ln1_b, T, C, p->eps);
		lin(m, ly, ATTN, A->qkv, A->h, T, C, 3 * C, A->lr);
		if (kc)
			for (int s = 0; s < nseg; s++) {
				const struct seg *sg = &segs[s];
				const float *q = A->qkv + (size_t)sg->off * 3 * C;
				for (int i = 0; i < sg->len; i++) {
					memcpy(kc[l] + (size_t)(sg->pos0 + i) * C, q + (size_t)i * 3 * C + C,
					       (size_t)C * sizeof(float));
					memcpy(vc[l] + (size_t)(sg->pos0 + i) * C, q + (size_t)i * 3 * C + 2 * C,
					       (size_t)C * sizeof(float));
				}
			}
		struct attn_job job = {p, segs, A, kc ? kc[l] : NULL, vc ? vc[l] : NULL, l};
		lora_parallel_for(nseg * p->NH, attn_unit, &job);
		lin(m, ly, APROJ, A->h, A->a, T, C, C, A->lr);
		for (size_t i = 0; i < (size_t)T * C; i++)
			A->x[i] += A->h[i];
		lora_layernorm(A->h, A->x, ly->ln2_w, ly->ln2_b, T, C, p->eps);
		lin(m, ly, FC, A->f, A->h, T, C, p->F, A->lr);
		if (p->relu)
			lora_relu(A->f, (size_t)T * p->F);
		else
			lora_gelu_tanh(A->f, (size_t)T * p->F);
		lin(m, ly, MPROJ, A->h, A->f, T, p->F, C, A->lr);
		for (size_t i = 0; i < (size_t)T * C; i++)
			A->x[i] += A->h[i];
	}
}

/* ln_f of the listed rows, then the tied head; NLL per row when nll != NULL
 * (chunked so that no [T, V] buffer is needed), else logits [n, V]. */
static int head_rows(const struct gpt2 *p, const float *x, const int *rows, int n,
		     const int32_t *targets, float *nll, float *logits, struct lora_err *err)
{
	int C = p->C, V = p->V, chunk = n;
	if (nll) {
		chunk = (int)((size_t)(8u << 20) / (size_t)V);
		chunk = chunk < 16 ? 16 : chunk;
		chunk = chunk > n ? n : chunk;
	}
	float *h = malloc((size_t)chunk * C * sizeof *h);
	float *lg = nll ? malloc((size_t)chunk * V * sizeof *lg) : NULL;
	if (!h || (nll && !lg)) {
		free(h);
		free(lg);
		return lora_errf(err, LORA_ENOMEM, "out of memory for logits");
	}
	for (int r0 = 0; r0 < n; r0 += chunk) {
		int c = n - r0 < chunk ? n - r0 : chunk;
		for (int i = 0; i < c; i++)
			lora_layernorm(h + (size_t)i * C, x + (size_t)rows[r0 + i] * C, p->lnf_w, p->lnf_b,
				       1, C, p->eps);
		float *out = nll ? lg : logits + (size_t)r0 * V;
		lora_matmul(out, h, p->wte, c, C, V, true, 1.0f, 0.0f);
		if (nll)
			for (int i = 0; i < c; i++)
				nll[r0 + i] = lora_nll_row(lg + (size_t)i * V, V, targets[r0 + i]);
	}
	free(h);
	free(lg);
	return 0;
}

static int check_len(const struct gpt2 *p, size_t len, size_t k, struct lora_err *err)
{
	if (len > (size_t)p->NP)
		return lora_errf(err, LORA_EINVAL,
				 "sequence %zu has %zu tokens, more than the model's n_positions %d",
				 k + 1, len, p->NP);
	return 0;
}

static int gpt2_nll(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		    struct lora_err *err)
{
	const struct gpt2 *p = lora_model_core(m)->arch_state;
	size_t T = 0, NT = 0;
	int maxlen = 1;
	for (size_t k = 0; k < n; k++) {
		if (seqs[k].n_input == 0 || seqs[k].n_target == 0)
			return lora_errf(err, LORA_EINVAL,
					 "sequence %zu: a decoder-only model needs at least one input "
					 "and one target token", k + 1);
		size_t len = seqs[k].n_input + seqs[k].n_target - 1;
		int rc = check_len(p, len, k, err);
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
	struct seg *segs = malloc(n * sizeof *segs);
	struct acts A = {0};
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
		segs[k] = (struct seg){(int)off, (int)len, 0};
		for (size_t j = 0; j < s->n_target; j++) {
			rows[r] = (int)(off + s->n_input - 1 + j);
			tg[r++] = s->target[j];
		}
		off += len;
	}
	if ((rc = acts_alloc(&A, p, max_rank(m, p), (int)T, maxlen, maxlen, err)) < 0)
		goto out;
	forward(m, p, ids, (int)T, segs, (int)n, NULL, NULL, &A);
	rc = head_rows(p, A.x, rows, (int)NT, tg, nll, NULL, err);
out:
	free(A.mem);
	free(ids);
	free(tg);
	free(rows);
	free(segs);
	return rc;
}

static int gpt2_logits(struct lora_model *m, const struct lora_seq *seq, float **logits,
		       size_t *nrows, struct lora_err *err)
{
	const struct gpt2 *p = lora_model_core(m)->arch_state;
	*logits = NULL;
	*nrows = 0;
	size_t T = seq->n_input + seq->n_target;
	int rc = check_len(p, T, 0, err);
	if (rc < 0 || T == 0)
		return rc;
	int32_t *ids = malloc(T * sizeof *ids);
	int *rows = malloc(T * sizeof *rows);
	float *out = malloc(T * (size_t)p->V * sizeof *out);
	struct acts A = {0};
	if (!ids || !rows || !out) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto out;
	}
	memcpy(ids, seq->input, seq->n_input * sizeof *ids);
	memcpy(ids + seq->n_input, seq->target, seq->n_target * sizeof *ids);
	for (size_t i = 0; i < T; i++)
		rows[i] = (int)i;
	struct seg sg = {0, (int)T, 0};
	if ((rc = acts_alloc(&A, p, max_rank(m, p), (int)T, (int)T, (int)T, err)) < 0)
		goto out;
	forward(m, p, ids, (int)T, &sg, 1, NULL, NULL, &A);
	if ((rc = head_rows(p, A.x, rows, (int)T, NULL, NULL, out, err)) < 0)
		goto out;
	*logits = out;
	*nrows = T;
	out = NULL;
out:
	free(A.mem);
	free(ids);
	free(rows);
	free(out);
	return rc;
}

static int gpt2_generate(struct lora_model *m, const int32_t *input, size_t n_input,
			 size_t max_new, int32_t *out, size_t *n_out, struct lora_err *err)
{
	const struct gpt2 *p = lora_model_core(m)->arch_state;
	int eos = lora_model_core(m)->info.eos;
	*n_out = 0;
	if (n_input == 0)
		return lora_errf(err, LORA_EINVAL, "generation needs at least one input token");
	int rc = check_len(p, n_input, 0, err);
	if (rc < 0)
		return rc;
	size_t cap = n_input + max_new;
	if (cap > (size_t)p->NP)
		cap = (size_t)p->NP;
	int R = max_rank(m, p);
	float **kc = calloc((size_t)p->L, sizeof *kc), **vc = calloc((size_t)p->L, sizeof *vc);
	float *lg = malloc((size_t)p->V * sizeof *lg);
	struct acts A = {0}, A1 = {0};
	rc = (!kc || !vc || !lg) ? LORA_ENOMEM : 0;
	for (int l = 0; rc == 0 && l < p->L; l++)
		if (!(kc[l] = malloc(cap * p->C * sizeof(float))) || !(vc[l] = malloc(cap * p->C * sizeof(float))))
			rc = LORA_ENOMEM;
	if (rc < 0) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory for a KV cache of %zu tokens", cap);
		goto out;
	}
	if ((rc = acts_alloc(&A, p, R, (int)n_input, (int)n_input, (int)n_input, err)) < 0 ||
	    (rc = acts_alloc(&A1, p, R, 1, 1, (int)cap, err)) < 0)
		goto out;
	struct seg sg = {0, (int)n_input, 0};
	forward(m, p, input, (int)n_input, &sg, 1, kc, vc, &A);
	int last = (int)n_input - 1;
	if ((rc = head_rows(p, A.x, &last, 1, NULL, NULL, lg, err)) < 0)
		goto out;
	for (size_t k = 0; k < max_new; k++) {
		int32_t tok = lora_argmax(lg, p->V);
		out[(*n_out)++] = tok;
		size_t pos = n_input + k;
		if (tok == eos || k + 1 == max_new || pos >= cap)
			break;
		struct seg s1 = {0, 1, (int)pos};
		forward(m, p, &tok, 1, &s1, 1, kc, vc, &A1);
		int zero = 0;
		if ((rc = head_rows(p, A1.x, &zero, 1, NULL, NULL, lg, err)) < 0)
			goto out;
	}
out:
	free(A.mem);
	free(A1.mem);
	for (int l = 0; l < p->L && kc && vc; l++) {
		free(kc[l]);
		free(vc[l]);
	}
	free(kc);
	free(vc);
	free(lg);
	return rc;
}

const struct lora_arch lora_arch_gpt2 = {
	.name = "gpt2",
	.load = gpt2_load,
	.free = gpt2_free,
	.nll = gpt2_nll,
	.logits = gpt2_logits,
	.generate = gpt2_generate,
};
