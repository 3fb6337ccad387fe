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
 * that length. Batching, the head and generation are decoder.c's.
 * Dimension vocabulary: T tokens, C n_embd, NH heads, HS head size, F inner
 * width, V vocabulary (ops.h).
 */
#include "decoder.h"

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
	struct lora_decoder dec;	/* first: the driver's view (decoder.h) */
	int C, NH, HS, F, L, V, NP;
	float eps;
	bool relu, scale_w, scale_inv;
	const float *wte;	/* [V, C] */
	const float *wpe;	/* [NP, C] */
	const float *lnf_w, *lnf_b;
	struct layer *layers;
};

static const struct lora_decoder_ops gpt2_ops;

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
	lora_decoder_release(&p->dec);
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
	p->dec = (struct lora_decoder){.ops = &gpt2_ops, .L = p->L, .C = p->C, .V = p->V,
				       .n_lin = p->L * NLIN, .kv_dim = p->C, .max_pos = p->NP};

	const char *pre = lora_model_has_weight(m, "transformer.wte.weight") ? "transformer." : "";
	if (!(p->wte = wt(m, pre, "wte.weight", V, C, err)) || !(p->wpe = wt(m, pre, "wpe.weight", NP, C, err)) ||
	    !(p->lnf_w = wt(m, pre, "ln_f.weight", C, 0, err)) || !(p->lnf_b = wt(m, pre, "ln_f.bias", C, 0, err)))
		return err ? err->code : LORA_EINVAL;
	p->dec.head = p->wte;	/* tied */
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
};

static const char *lin_name(const struct lora_decoder *d, int i)
{
	return ((const struct gpt2 *)d)->layers[i / NLIN].name[i % NLIN];
}

static void *acts_new(const struct lora_decoder *d, int R, int T, int maxlen, int maxkeys,
		      struct lora_decoder_buf *buf, struct lora_err *err)
{
	const struct gpt2 *p = (const struct gpt2 *)d;
	size_t per_t = 6 * (size_t)p->C + (size_t)p->F + (size_t)R, n, sn, s_stride;
	if (lora_size_mul(per_t, (size_t)T, &n) < 0 ||
	    lora_size_mul((size_t)maxlen, (size_t)maxkeys, &s_stride) < 0 ||
	    lora_size_mul(s_stride, (size_t)lora_parallel_workers(), &sn) < 0 ||
	    lora_size_add(n, sn, &n) < 0)
		n = SIZE_MAX;
	float *f;
	struct acts *A = lora_decoder_acts(sizeof *A, n, &f, T, buf, err);
	if (!A)
		return NULL;
	A->s_stride = s_stride;
	A->x = f, f += (size_t)T * p->C;
	A->h = f, f += (size_t)T * p->C;
	A->qkv = f, f += (size_t)T * 3 * p->C;
	A->a = f, f += (size_t)T * p->C;
	A->f = f, f += (size_t)T * p->F;
	A->lr = f, f += (size_t)T * R;
	A->s = f;
	return A;
}

/* One layer's attention, split into (segment, head) units run in parallel
 * (lora_parallel_for), each worker with its own score scratch. */
struct attn_job {
	const struct gpt2 *p;
	const struct lora_decoder_seg *segs;
	struct acts *A;
	float *kc, *vc;		/* this layer's KV cache, or NULL */
	int l;
};

static void attn_unit(void *ctx, int u, int worker)
{
	struct attn_job *j = ctx;
	const struct gpt2 *p = j->p;
	const struct lora_decoder_seg *sg = &j->segs[u / p->NH];
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
	lora_model_linear(m, ly->name[j], y, x, ly->w[j], false, ly->b[j], T, in, out, 0.0f, scratch);
}

/* The blocks over T packed tokens (decoder.h); the cache holds per layer
 * K and V [cap, C]. */
static const float *forward(struct lora_model *m, const struct lora_decoder *d, const int32_t *ids,
			    int T, const struct lora_decoder_seg *segs, int nseg,
			    struct lora_decoder_cache *cache, void *acts)
{
	const struct gpt2 *p = (const struct gpt2 *)d;
	struct acts *A = acts;
	float **kc = cache ? cache->k : NULL, **vc = cache ? cache->v : NULL;
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
				const struct lora_decoder_seg *sg = &segs[s];
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
	return A->x;
}

static void final_norm(const struct lora_decoder *d, float *y, const float *x)
{
	const struct gpt2 *p = (const struct gpt2 *)d;
	lora_layernorm(y, x, p->lnf_w, p->lnf_b, 1, p->C, p->eps);
}

static int check_len(const struct lora_decoder *d, size_t len, size_t k, struct lora_err *err)
{
	const struct gpt2 *p = (const struct gpt2 *)d;
	if (len > (size_t)p->NP)
		return lora_errf(err, LORA_EINVAL,
				 "sequence %zu has %zu tokens, more than the model's n_positions %d",
				 k + 1, len, p->NP);
	return 0;
}

static const struct lora_decoder_ops gpt2_ops = {
	.check_len = check_len,
	.lin_name = lin_name,
	.acts_new = acts_new,
	.forward = forward,
	.final_norm = final_norm,
};

const struct lora_arch lora_arch_gpt2 = {
	.name = "gpt2",
	.load = gpt2_load,
	.free = gpt2_free,
	.nll = lora_decoder_nll,
	.logits = lora_decoder_logits,
	.generate = lora_decoder_generate,
};
