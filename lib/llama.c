/*
 * llama — the Llama-family decoder (model_type llama, mistral, qwen2) on
 * lib/ops, matching Hugging Face transformers 4.36's LlamaForCausalLM.
 *
 *   x = embed[ids]
 *   per layer:  h = rmsnorm(x)·w_in;  q,k,v = h·Wq^T(+bq), h·Wk^T(+bk), h·Wv^T(+bv)
 *               RoPE on q and k ("rotate_half": dim i pairs with i + HS/2)
 *               a = softmax(q·k^T / sqrt(HS) + causal mask)·v   (GQA: query
 *               head h reads kv head h / (NH/NKV)); x += a·Wo^T
 *               h = rmsnorm(x)·w_post;  x += (silu(h·Wg^T) * (h·Wu^T))·Wd^T
 *   logits = rmsnorm(x)·w_final · head^T   (head = lm_head, or the embedding
 *            when tie_word_embeddings)
 * Any "<linear>.bias" tensor present is added (qwen2's q/k/v biases, Llama's
 * attention_bias / mlp_bias). RoPE: rope_theta, rope_scaling types "linear"
 * and "llama3" (others refused, naming the type). Mistral's sliding_window
 * (and qwen2's when use_sliding_window) limits each query to the last W keys.
 *
 * Batching: the nll pass packs every sequence into one [T, C] activation
 * (T = Σ tokens), so each Linear is one sgemm with M = T; attention runs per
 * sequence and head; the head is applied only to the rows that score a
 * target. Generation keeps an f32 KV cache per layer.
 * Dimension vocabulary: T tokens, C hidden, NH/NKV heads, HS head size,
 * F intermediate, V vocabulary (ops.h).
 */
#include "arch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { WQ, WK, WV, WO, WG, WU, WD, NLIN };
static const char *const lin_names[NLIN] = {
	"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
};

struct layer {
	const float *attn_norm, *ffn_norm;	/* [C] */
	const float *w[NLIN];			/* [out, in] */
	const float *b[NLIN];			/* [out] or NULL */
	char *name[NLIN];			/* "model.layers.l.self_attn.q_proj.weight" */
};

struct llama {
	int C, NH, NKV, HS, F, L, V, maxpos, window;
	float eps;
	const float *embed;	/* [V, C] */
	const float *norm;	/* [C] */
	const float *head;	/* [V, C] */
	float *inv_freq;	/* [HS/2] */
	struct layer *layers;
};

/* One run of consecutive rows of the packed batch: rows off..off+len, at
 * positions pos0..pos0+len of their own sequence. */
struct seg {
	int off, len, pos0;
};

/* KV cache for one sequence: per layer K and V [cap, NKV*HS]. */
struct cache {
	int cap;
	float **k, **v;
};

static int cfg_int(const struct lora_doc *cfg, const char *key, int64_t def, int64_t *out,
		   struct lora_err *err)
{
	*out = def;
	int rc = lora_doc_get_int(cfg, key, "config.json", out, err);
	return rc == LORA_ENOTFOUND ? 0 : rc;
}

static int cfg_double(const struct lora_doc *cfg, const char *key, double def, double *out,
		      struct lora_err *err)
{
	*out = def;
	int rc = lora_doc_get_double(cfg, key, "config.json", out, err);
	return rc == LORA_ENOTFOUND ? 0 : rc;
}

static int need_pos(const char *key, int64_t v, struct lora_err *err)
{
	if (v <= 0 || v > (1 << 24))
		return lora_errf(err, LORA_EINVAL, "config.json: '%s' must be a positive size, not %lld",
				 key, (long long)v);
	return 0;
}

/* inv_freq[i] = 1 / theta^(2i/HS), then rope_scaling. */
static int rope_init(struct llama *p, const struct lora_doc *cfg, struct lora_err *err)
{
	double theta;
	int rc = cfg_double(cfg, "rope_theta", 10000.0, &theta, err);
	if (rc < 0)
		return rc;
	int half = p->HS / 2;
	if (!(p->inv_freq = malloc((size_t)half * sizeof *p->inv_freq)))
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	for (int i = 0; i < half; i++)
		p->inv_freq[i] = (float)(1.0 / pow(theta, (double)(2 * i) / p->HS));
	const struct lora_doc *rs = lora_doc_get(cfg, "rope_scaling");
	if (!rs || rs->type == LORA_DOC_NULL)
		return 0;
	if (rs->type != LORA_DOC_MAP)
		return lora_errf(err, LORA_EFORMAT, "config.json: 'rope_scaling' must be a map or null");
	const char *type = NULL;
	if (lora_doc_get_string(rs, "rope_type", "config.json", &type, NULL) < 0 &&
	    lora_doc_get_string(rs, "type", "config.json", &type, NULL) < 0)
		return lora_errf(err, LORA_EFORMAT, "config.json: 'rope_scaling' has no 'rope_type'");
	double factor = 1;
	if ((rc = cfg_double(rs, "factor", 1.0, &factor, err)) < 0)
		return rc;
	if (!(factor > 0))
		return lora_errf(err, LORA_EINVAL, "config.json: rope_scaling 'factor' must be > 0");
	if (strcmp(type, "default") == 0)
		return 0;
	if (strcmp(type, "linear") == 0) {
		for (int i = 0; i < half; i++)
			p->inv_freq[i] = (float)(p->inv_freq[i] / factor);
		return 0;
	}
	if (strcmp(type, "llama3") != 0)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "config.json: rope_scaling type '%s' is not supported "
				 "(supported: linear, llama3)", type);
	/* transformers' _compute_llama3_parameters */
	double lo, hi;
	int64_t old;
	if ((rc = cfg_double(rs, "low_freq_factor", 1.0, &lo, err)) < 0 ||
	    (rc = cfg_double(rs, "high_freq_factor", 4.0, &hi, err)) < 0 ||
	    (rc = cfg_int(rs, "original_max_position_embeddings", 8192, &old, err)) < 0)
		return rc;
	if (!(hi > lo) || old <= 0)
		return lora_errf(err, LORA_EINVAL, "config.json: rope_scaling llama3 parameters are inconsistent");
	double lo_wl = (double)old / lo, hi_wl = (double)old / hi;
	for (int i = 0; i < half; i++) {
		float f = p->inv_freq[i];
		double wl = 2 * M_PI / f;
		float g = wl > lo_wl ? (float)(f / factor) : f;
		if (!(wl < hi_wl) && !(wl > lo_wl)) {
			double s = ((double)old / wl - lo) / (hi - lo);
			g = (float)((1 - s) * g / factor + s * g);
		}
		p->inv_freq[i] = g;
	}
	return 0;
}

static void llama_free(struct lora_model *m)
{
	struct lora_model_core *core = lora_model_core(m);
	struct llama *p = core->arch_state;
	if (!p)
		return;
	if (p->layers)
		for (int l = 0; l < p->L; l++)
			for (int j = 0; j < NLIN; j++)
				free(p->layers[l].name[j]);
	free(p->layers);
	free(p->inv_freq);
	free(p);
	core->arch_state = NULL;
}

static int llama_load(struct lora_model *m, struct lora_err *err)
{
	struct lora_model_core *core = lora_model_core(m);
	const struct lora_doc *cfg = core->config;
	struct llama *p = calloc(1, sizeof *p);
	if (!p)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	core->arch_state = p;
	int64_t C, NH, NKV, HS, F, L, V, maxpos, window = 0;
	double eps;
	bool tie = false, sliding = true;
	const char *type = core->info.model_type;
	int rc;
	if ((rc = cfg_int(cfg, "hidden_size", 0, &C, err)) < 0 || (rc = need_pos("hidden_size", C, err)) < 0 ||
	    (rc = cfg_int(cfg, "num_attention_heads", 0, &NH, err)) < 0 ||
	    (rc = need_pos("num_attention_heads", NH, err)) < 0 ||
	    (rc = cfg_int(cfg, "num_key_value_heads", NH, &NKV, err)) < 0 ||
	    (rc = need_pos("num_key_value_heads", NKV, err)) < 0 ||
	    (rc = cfg_int(cfg, "head_dim", C / NH, &HS, err)) < 0 || (rc = need_pos("head_dim", HS, err)) < 0 ||
	    (rc = cfg_int(cfg, "intermediate_size", 0, &F, err)) < 0 ||
	    (rc = need_pos("intermediate_size", F, err)) < 0 ||
	    (rc = cfg_int(cfg, "num_hidden_layers", 0, &L, err)) < 0 ||
	    (rc = need_pos("num_hidden_layers", L, err)) < 0 ||
	    (rc = cfg_int(cfg, "vocab_size", 0, &V, err)) < 0 || (rc = need_pos("vocab_size", V, err)) < 0 ||
	    (rc = cfg_int(cfg, "max_position_embeddings", 0, &maxpos, err)) < 0 ||
	    (rc = cfg_double(cfg, "rms_norm_eps", 1e-6, &eps, err)) < 0)
		return rc;
	rc = lora_doc_get_bool(cfg, "tie_word_embeddings", "config.json", &tie, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	if (strcmp(type, "mistral") == 0 || strcmp(type, "qwen2") == 0) {
		const struct lora_doc *sw = lora_doc_get(cfg, "sliding_window");
		if (strcmp(type, "qwen2") == 0) {
			sliding = false;
			lora_doc_get_bool(cfg, "use_sliding_window", "config.json", &sliding, NULL);
		}
		if (sliding && sw && sw->type == LORA_DOC_INT && sw->u.i > 0)
			window = sw->u.i;
	}
	if (NH % NKV != 0)
		return lora_errf(err, LORA_EINVAL,
				 "config.json: num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
				 (long long)NH, (long long)NKV);
	if (HS % 2)
		return lora_errf(err, LORA_EINVAL, "config.json: head size %lld is odd", (long long)HS);
	p->C = (int)C, p->NH = (int)NH, p->NKV = (int)NKV, p->HS = (int)HS, p->F = (int)F;
	p->L = (int)L, p->V = (int)V, p->maxpos = maxpos > 0 ? (int)maxpos : 0, p->eps = (float)eps;
	p->window = window > 0 && window < INT32_MAX ? (int)window : 0;
	if ((rc = rope_init(p, cfg, err)) < 0)
		return rc;
	core->info.encoder_decoder = false;
	core->info.vocab = p->V;
	core->info.max_positions = p->maxpos;
	core->info.decoder_start = -1;

	if (!(p->embed = lora_model_weight(m, "model.embed_tokens.weight", V, C, err)) ||
	    !(p->norm = lora_model_weight(m, "model.norm.weight", C, 0, err)))
		return err ? err->code : LORA_EINVAL;
	if (tie && !lora_model_has_weight(m, "lm_head.weight"))
		p->head = p->embed;
	else if (!(p->head = lora_model_weight(m, "lm_head.weight", V, C, err)))
		return err ? err->code : LORA_EINVAL;
	if (!(p->layers = calloc((size_t)L, sizeof *p->layers)))
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	const int64_t shape[NLIN][2] = {
		{NH * HS, C}, {NKV * HS, C}, {NKV * HS, C}, {C, NH * HS}, {F, C}, {F, C}, {C, F},
	};
	char name[256];
	for (int l = 0; l < p->L; l++) {
		struct layer *ly = &p->layers[l];
		snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
		if (!(ly->attn_norm = lora_model_weight(m, name, C, 0, err)))
			return err ? err->code : LORA_EINVAL;
		snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
		if (!(ly->ffn_norm = lora_model_weight(m, name, C, 0, err)))
			return err ? err->code : LORA_EINVAL;
		for (int j = 0; j < NLIN; j++) {
			snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, lin_names[j]);
			if (!(ly->name[j] = strdup(name)))
				return lora_errf(err, LORA_ENOMEM, "out of memory");
			if (!(ly->w[j] = lora_model_weight(m, name, shape[j][0], shape[j][1], err)))
				return err ? err->code : LORA_EINVAL;
			if ((rc = lora_model_declare_linear(m, name, shape[j][0], shape[j][1], false, err)) < 0)
				return rc;
			snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, lin_names[j]);
			if (lora_model_has_weight(m, name) &&
			    !(ly->b[j] = lora_model_weight(m, name, shape[j][0], 0, err)))
				return err ? err->code : LORA_EINVAL;
		}
	}
	return 0;
}

/* Activations of one forward: one allocation carved into named views. */
struct acts {
	float *x;	/* [T, C] residual stream */
	float *h;	/* [T, C] normed input of a block */
	float *q;	/* [T, NH*HS] */
	float *k, *v;	/* [T, NKV*HS] */
	float *a;	/* [T, NH*HS] attention output */
	float *g, *u;	/* [T, F] */
	float *s;	/* per worker: [grp*maxlen, maxkeys] scores of one kv head's query heads */
	float *qg;	/* per worker: [grp*maxlen, HS] those query heads stacked, then output */
	size_t s_stride, qg_stride;	/* floats per worker */
	float *lr;	/* [T, maxR] LoRA scratch */
	float *mem;
};

static int max_rank(const struct lora_model *m, const struct llama *p)
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

static int acts_alloc(struct acts *A, const struct llama *p, int R, int T, int maxlen, int maxkeys,
		      struct lora_err *err)
{
	size_t QD = (size_t)p->NH * p->HS, KD = (size_t)p->NKV * p->HS;
	size_t per_t = 2 * (size_t)p->C + 2 * QD + 2 * KD + 2 * (size_t)p->F + (size_t)R;
	size_t n, sn, rows = (size_t)(p->NH / p->NKV) * (size_t)maxlen, nw = (size_t)lora_parallel_workers();
	if (lora_size_mul(per_t, (size_t)T, &n) < 0 || lora_size_mul(rows, (size_t)maxkeys, &sn) < 0 ||
	    lora_size_add(sn, rows * (size_t)p->HS, &A->s_stride) < 0 ||
	    lora_size_mul(A->s_stride, nw, &sn) < 0 || lora_size_add(n, sn, &n) < 0 ||
	    lora_size_mul(n, sizeof(float), &n) < 0 || !(A->mem = malloc(n)))
		return lora_errf(err, LORA_ENOMEM, "out of memory for activations of %d tokens", T);
	A->s_stride = rows * (size_t)maxkeys;
	A->qg_stride = rows * (size_t)p->HS;
	float *f = A->mem;
	A->x = f, f += (size_t)T * p->C;
	A->h = f, f += (size_t)T * p->C;
	A->q = f, f += (size_t)T * QD;
	A->a = f, f += (size_t)T * QD;
	A->k = f, f += (size_t)T * KD;
	A->v = f, f += (size_t)T * KD;
	A->g = f, f += (size_t)T * p->F;
	A->u = f, f += (size_t)T * p->F;
	A->lr = f, f += (size_t)T * R;
	A->qg = f, f += nw * A->qg_stride;
	A->s = f;
	return 0;
}

/* cos/sin table for positions pmin..pmax: tab[(pos - pmin) * HS + j] = cos,
 * + half + j = sin. HF builds them from the f32 product pos * inv_freq. */
static void rope_table(const struct llama *p, float *tab, int pmin, int pmax)
{
	int half = p->HS / 2;
	for (int pos = pmin; pos <= pmax; pos++) {
		float *cs = tab + (size_t)(pos - pmin) * p->HS;
		for (int j = 0; j < half; j++) {
			float ang = (float)pos * p->inv_freq[j];
			cs[j] = (float)cos(ang);
			cs[half + j] = (float)sin(ang);
		}
	}
}

/* In-place RoPE (rotate_half) on rows [T, nh*HS], positions per segment. */
static void rope(const struct llama *p, float *x, int nh, const struct seg *segs, int nseg,
		 const float *tab, int pmin)
{
	int half = p->HS / 2, D = nh * p->HS;
	for (int s = 0; s < nseg; s++)
		for (int i = 0; i < segs[s].len; i++) {
			const float *cs = tab + (size_t)(segs[s].pos0 + i - pmin) * p->HS;
			float *row = x + (size_t)(segs[s].off + i) * D;
			for (int h = 0; h < nh; h++) {
				float *r = row + h * p->HS;
				for (int j = 0; j < half; j++) {
					float x1 = r[j], x2 = r[j + half];
					r[j] = x1 * cs[j] - x2 * cs[half + j];
					r[j + half] = x2 * cs[j] + x1 * cs[half + j];
				}
			}
		}
}

/* Causal attention of one segment for one kv head kh: queries q rows
 * [len, QD]; keys/values in kb/vb rows 0..pos0+len (stride KD); output into
 * the kv head's query-head columns of a rows [len, QD]. The grp query heads
 * that share kv head kh are stacked into one [grp*len, HS] matrix (qg), so
 * they cost two sgemms with M = grp*len. S holds [grp*len, nk] scores. */
static void attend(const struct llama *p, const float *q, const float *kb, const float *vb,
		   float *a, int len, int pos0, int kh, float *S, float *qg)
{
	int QD = p->NH * p->HS, KD = p->NKV * p->HS, HS = p->HS, nk = pos0 + len;
	int grp = p->NH / p->NKV, M = grp * len;
	float div = sqrtf((float)HS);	/* HF divides the product by sqrt(HS) */
	for (int g = 0; g < grp; g++)
		for (int i = 0; i < len; i++)
			memcpy(qg + ((size_t)g * len + i) * HS, q + (size_t)i * QD + (kh * grp + g) * HS,
			       (size_t)HS * sizeof(float));
	lora_gemm(false, true, M, nk, HS, 1.0f, qg, HS, kb + kh * HS, KD, 0.0f, S, nk);
	for (int r = 0; r < M; r++) {
		float *row = S + (size_t)r * nk;
		int last = pos0 + r % len;	/* keys 0..last are visible */
		int first = p->window && last - p->window + 1 > 0 ? last - p->window + 1 : 0;
		for (int j = first; j <= last; j++)
			row[j] /= div;
		lora_softmax_rows(row + first, 1, last + 1 - first);
		memset(row, 0, (size_t)first * sizeof *row);
		memset(row + last + 1, 0, (size_t)(nk - last - 1) * sizeof *row);
	}
	lora_gemm(false, false, M, HS, nk, 1.0f, S, nk, vb + kh * HS, KD, 0.0f, qg, HS);
	for (int g = 0; g < grp; g++)
		for (int i = 0; i < len; i++)
			memcpy(a + (size_t)i * QD + (kh * grp + g) * HS, qg + ((size_t)g * len + i) * HS,
			       (size_t)HS * sizeof(float));
}

/* One layer's attention work, split into (segment, kv head) units that run
 * in parallel (lora_parallel_for), each worker with its own scratch. */
struct attn_job {
	const struct llama *p;
	const struct seg *segs;
	struct acts *A;
	struct cache *cache;
	int l;
};

static void attn_unit(void *ctx, int u, int worker)
{
	struct attn_job *j = ctx;
	const struct llama *p = j->p;
	const struct seg *sg = &j->segs[u / p->NKV];
	int QD = p->NH * p->HS, KD = p->NKV * p->HS;
	const float *kb = j->A->k + (size_t)sg->off * KD, *vb = j->A->v + (size_t)sg->off * KD;
	if (j->cache) {
		kb = j->cache->k[j->l];
		vb = j->cache->v[j->l];
	}
	attend(p, j->A->q + (size_t)sg->off * QD, kb, vb, j->A->a + (size_t)sg->off * QD, sg->len,
	       j->cache ? sg->pos0 : 0, u % p->NKV, j->A->s + (size_t)worker * j->A->s_stride,
	       j->A->qg + (size_t)worker * j->A->qg_stride);
}

static void lin(struct lora_model *m, const struct layer *ly, int j, float *y, const float *x,
		int T, int in, int out, float *scratch)
{
	int nd;
	const struct lora_delta *d = lora_model_deltas(m, ly->name[j], &nd);
	lora_linear(y, x, ly->w[j], true, ly->b[j], d, nd, T, in, out, scratch);
}

/* The decoder over T packed tokens (ids) in nseg segments; leaves the final
 * residual stream (before the last norm) in A->x. With a cache (one
 * segment), K/V rows go to cache rows pos0.. and attention reads the cache. */
static void forward(struct lora_model *m, const struct llama *p, const int32_t *ids, int T,
		    const struct seg *segs, int nseg, struct cache *cache, struct acts *A,
		    float *cs /* [positions spanned, HS] */)
{
	int C = p->C, QD = p->NH * p->HS, KD = p->NKV * p->HS;
	int pmin = segs[0].pos0, pmax = 0;
	for (int s = 0; s < nseg; s++) {
		pmin = segs[s].pos0 < pmin ? segs[s].pos0 : pmin;
		pmax = segs[s].pos0 + segs[s].len - 1 > pmax ? segs[s].pos0 + segs[s].len - 1 : pmax;
	}
	rope_table(p, cs, pmin, pmax);
	for (int t = 0; t < T; t++)
		memcpy(A->x + (size_t)t * C, p->embed + (size_t)ids[t] * C, (size_t)C * sizeof(float));
	for (int l = 0; l < p->L; l++) {
		const struct layer *ly = &p->layers[l];
		lora_rmsnorm(A->h, A->x, ly->attn_norm, T, C, p->eps);
		lin(m, ly, WQ, A->q, A->h, T, C, QD, A->lr);
		lin(m, ly, WK, A->k, A->h, T, C, KD, A->lr);
		lin(m, ly, WV, A->v, A->h, T, C, KD, A->lr);
		rope(p, A->q, p->NH, segs, nseg, cs, pmin);
		rope(p, A->k, p->NKV, segs, nseg, cs, pmin);
		if (cache)
			for (int s = 0; s < nseg; s++) {
				const struct seg *sg = &segs[s];
				memcpy(cache->k[l] + (size_t)sg->pos0 * KD, A->k + (size_t)sg->off * KD,
				       (size_t)sg->len * KD * sizeof(float));
				memcpy(cache->v[l] + (size_t)sg->pos0 * KD, A->v + (size_t)sg->off * KD,
				       (size_t)sg->len * KD * sizeof(float));
			}
		struct attn_job job = {p, segs, A, cache, l};
		lora_parallel_for(nseg * p->NKV, attn_unit, &job);
		lin(m, ly, WO, A->h, A->a, T, QD, C, A->lr);
		for (size_t i = 0; i < (size_t)T * C; i++)
			A->x[i] += A->h[i];
		lora_rmsnorm(A->h, A->x, ly->ffn_norm, T, C, p->eps);
		lin(m, ly, WG, A->g, A->h, T, C, p->F, A->lr);
		lin(m, ly, WU, A->u, A->h, T, C, p->F, A->lr);
		lora_silu(A->g, (size_t)T * p->F);
		for (size_t i = 0; i < (size_t)T * p->F; i++)
			A->g[i] *= A->u[i];
		lin(m, ly, WD, A->h, A->g, T, p->F, C, A->lr);
		for (size_t i = 0; i < (size_t)T * C; i++)
			A->x[i] += A->h[i];
	}
}

/* Final norm of the listed rows of x, then head rows -> logits [n, V], in
 * chunks of rows so that a large vocabulary needs no [T, V] buffer when the
 * caller only wants NLL (nll != NULL: one value per row; logits unused). */
static int head_rows(const struct llama *p, const float *x, const int *rows, int n,
		     const int32_t *targets, float *nll, float *logits, struct lora_err *err)
{
	int C = p->C, V = p->V;
	int chunk = n;
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
			lora_rmsnorm(h + (size_t)i * C, x + (size_t)rows[r0 + i] * C, p->norm, 1, C, p->eps);
		float *out = nll ? lg : logits + (size_t)r0 * V;
		lora_matmul(out, h, p->head, c, C, V, true, 1.0f, 0.0f);
		if (nll)
			for (int i = 0; i < c; i++)
				nll[r0 + i] = lora_nll_row(lg + (size_t)i * V, V, targets[r0 + i]);
	}
	free(h);
	free(lg);
	return 0;
}

static int check_len(const struct llama *p, size_t len, size_t k, struct lora_err *err)
{
	if (len > (size_t)(1 << 24))
		return lora_errf(err, LORA_EINVAL, "sequence %zu is too long (%zu tokens)", k + 1, len);
	return 0;
}

static int llama_nll(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		     struct lora_err *err)
{
	const struct llama *p = lora_model_core(m)->arch_state;
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
	float *cs = malloc((size_t)maxlen * p->HS * sizeof *cs);
	struct acts A = {0};
	int rc = 0;
	if (!ids || !tg || !rows || !segs || !cs) {
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
	forward(m, p, ids, (int)T, segs, (int)n, NULL, &A, cs);
	rc = head_rows(p, A.x, rows, (int)NT, tg, nll, NULL, err);
out:
	free(A.mem);
	free(ids);
	free(tg);
	free(rows);
	free(segs);
	free(cs);
	return rc;
}

static int llama_logits(struct lora_model *m, const struct lora_seq *seq, float **logits,
			size_t *nrows, struct lora_err *err)
{
	const struct llama *p = lora_model_core(m)->arch_state;
	*logits = NULL;
	*nrows = 0;
	size_t T = seq->n_input + seq->n_target;
	int rc = check_len(p, T, 0, err);
	if (rc < 0 || T == 0)
		return rc;
	int32_t *ids = malloc(T * sizeof *ids);
	int *rows = malloc(T * sizeof *rows);
	float *cs = malloc(T * p->HS * sizeof *cs);
	float *out = malloc(T * (size_t)p->V * sizeof *out);
	struct acts A = {0};
	if (!ids || !rows || !cs || !out) {
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
	forward(m, p, ids, (int)T, &sg, 1, NULL, &A, cs);
	if ((rc = head_rows(p, A.x, rows, (int)T, NULL, NULL, out, err)) < 0)
		goto out;
	*logits = out;
	*nrows = T;
	out = NULL;
out:
	free(A.mem);
	free(ids);
	free(rows);
	free(cs);
	free(out);
	return rc;
}

static void cache_free(struct cache *c, int L)
{
	for (int l = 0; l < L && c->k; l++) {
		free(c->k[l]);
		free(c->v[l]);
	}
	free(c->k);
	free(c->v);
}

static int llama_generate(struct lora_model *m, const int32_t *input, size_t n_input,
			  size_t max_new, int32_t *out, size_t *n_out, struct lora_err *err)
{
	const struct llama *p = lora_model_core(m)->arch_state;
	int eos = lora_model_core(m)->info.eos;
	*n_out = 0;
	if (n_input == 0)
		return lora_errf(err, LORA_EINVAL, "generation needs at least one input token");
	size_t cap = n_input + max_new;
	int rc = check_len(p, cap, 0, err);
	if (rc < 0)
		return rc;
	int KD = p->NKV * p->HS, R = max_rank(m, p);
	struct cache c = {(int)cap, calloc((size_t)p->L, sizeof(float *)), calloc((size_t)p->L, sizeof(float *))};
	float *cs = malloc(n_input * p->HS * sizeof *cs), *lg = malloc((size_t)p->V * sizeof *lg);
	struct acts A = {0}, A1 = {0};
	rc = (!c.k || !c.v || !cs || !lg) ? LORA_ENOMEM : 0;
	for (int l = 0; rc == 0 && l < p->L; l++)
		if (!(c.k[l] = malloc(cap * KD * sizeof(float))) || !(c.v[l] = malloc(cap * KD * sizeof(float))))
			rc = LORA_ENOMEM;
	if (rc < 0) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory for a KV cache of %zu tokens", cap);
		goto out;
	}
	if ((rc = acts_alloc(&A, p, R, (int)n_input, (int)n_input, (int)n_input, err)) < 0 ||
	    (rc = acts_alloc(&A1, p, R, 1, 1, (int)cap, err)) < 0)
		goto out;
	struct seg sg = {0, (int)n_input, 0};
	forward(m, p, input, (int)n_input, &sg, 1, &c, &A, cs);
	int last = (int)n_input - 1;
	if ((rc = head_rows(p, A.x, &last, 1, NULL, NULL, lg, err)) < 0)
		goto out;
	for (size_t k = 0; k < max_new; k++) {
		int32_t tok = lora_argmax(lg, p->V);
		out[(*n_out)++] = tok;
		if (tok == eos || k + 1 == max_new)
			break;
		struct seg s1 = {0, 1, (int)(n_input + k)};
		forward(m, p, &tok, 1, &s1, 1, &c, &A1, cs);
		int zero = 0;
		if ((rc = head_rows(p, A1.x, &zero, 1, NULL, NULL, lg, err)) < 0)
			goto out;
	}
out:
	free(A.mem);
	free(A1.mem);
	cache_free(&c, p->L);
	free(cs);
	free(lg);
	return rc;
}

const struct lora_arch lora_arch_llama = {
	.name = "llama",
	.load = llama_load,
	.free = llama_free,
	.nll = llama_nll,
	.logits = llama_logits,
	.generate = llama_generate,
};
