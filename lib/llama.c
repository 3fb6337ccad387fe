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
 * Batching, the head and generation are decoder.c's; attention runs per
 * sequence and kv head.
 * Dimension vocabulary: T tokens, C hidden, NH/NKV heads, HS head size,
 * F intermediate, V vocabulary (ops.h).
 */
#include "decoder.h"

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
	struct lora_decoder dec;	/* first: the driver's view (decoder.h) */
	int C, NH, NKV, HS, F, L, V, maxpos, window;
	float eps;
	const float *embed;	/* [V, C] */
	const float *norm;	/* [C] */
	const float *head;	/* [V, C] */
	float *inv_freq;	/* [HS/2] */
	struct layer *layers;
};

static const struct lora_decoder_ops llama_ops;

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
	lora_decoder_release(&p->dec);
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
	p->dec = (struct lora_decoder){.ops = &llama_ops, .L = p->L, .C = p->C, .V = p->V,
				       .n_lin = p->L * NLIN, .kv_dim = p->NKV * p->HS};

	if (!(p->embed = lora_model_weight(m, "model.embed_tokens.weight", V, C, err)) ||
	    !(p->norm = lora_model_weight(m, "model.norm.weight", C, 0, err)))
		return err ? err->code : LORA_EINVAL;
	if (tie && !lora_model_has_weight(m, "lm_head.weight"))
		p->head = p->embed;
	else if (!(p->head = lora_model_weight(m, "lm_head.weight", V, C, err)))
		return err ? err->code : LORA_EINVAL;
	p->dec.head = p->head;
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
	float *cs;	/* [maxlen, HS] RoPE cos/sin of the positions spanned */
};

static const char *lin_name(const struct lora_decoder *d, int i)
{
	return ((const struct llama *)d)->layers[i / NLIN].name[i % NLIN];
}

static void *acts_new(const struct lora_decoder *d, int R, int T, int maxlen, int maxkeys,
		      struct lora_decoder_buf *buf, struct lora_err *err)
{
	const struct llama *p = (const struct llama *)d;
	size_t QD = (size_t)p->NH * p->HS, KD = (size_t)p->NKV * p->HS;
	size_t per_t = 2 * (size_t)p->C + 2 * QD + 2 * KD + 2 * (size_t)p->F + (size_t)R;
	size_t n, sn, per_w, rows = (size_t)(p->NH / p->NKV) * (size_t)maxlen;
	size_t nw = (size_t)lora_parallel_workers();
	if (lora_size_mul(per_t, (size_t)T, &n) < 0 || lora_size_mul(rows, (size_t)maxkeys, &sn) < 0 ||
	    lora_size_add(sn, rows * (size_t)p->HS, &per_w) < 0 ||
	    lora_size_mul(per_w, nw, &sn) < 0 || lora_size_add(n, sn, &n) < 0 ||
	    lora_size_add(n, (size_t)maxlen * p->HS, &n) < 0)
		n = SIZE_MAX;
	float *f;
	struct acts *A = lora_decoder_acts(sizeof *A, n, &f, T, buf, err);
	if (!A)
		return NULL;
	A->s_stride = rows * (size_t)maxkeys;
	A->qg_stride = rows * (size_t)p->HS;
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
	A->cs = f, f += (size_t)maxlen * p->HS;
	A->s = f;
	return A;
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

typedef float v8 __attribute__((vector_size(32)));

/* In-place RoPE (rotate_half) on head h of segment sg's rows of x [T, nh*HS]. */
static void rope_head(const struct llama *p, float *x, int nh, int h, const struct lora_decoder_seg *sg,
		      const float *tab, int pmin)
{
	int half = p->HS / 2, D = nh * p->HS;
	for (int i = 0; i < sg->len; i++) {
		const float *c = tab + (size_t)(sg->pos0 + i - pmin) * p->HS, *sn = c + half;
		float *r1 = x + (size_t)(sg->off + i) * D + h * p->HS, *r2 = r1 + half;
		int j = 0;
		for (; j + 8 <= half; j += 8) {	/* the same arithmetic, 8 lanes at a time */
			v8 x1, x2, vc, vs;
			memcpy(&x1, r1 + j, sizeof x1);
			memcpy(&x2, r2 + j, sizeof x2);
			memcpy(&vc, c + j, sizeof vc);
			memcpy(&vs, sn + j, sizeof vs);
			v8 y1 = x1 * vc - x2 * vs, y2 = x2 * vc + x1 * vs;
			memcpy(r1 + j, &y1, sizeof y1);
			memcpy(r2 + j, &y2, sizeof y2);
		}
		for (; j < half; j++) {
			float x1 = r1[j], x2 = r2[j];
			r1[j] = x1 * c[j] - x2 * sn[j];
			r2[j] = x2 * c[j] + x1 * sn[j];
		}
	}
}

/* The O(T*C) steps between the matrix products, in parallel over row
 * chunks (or (segment, head) units for RoPE) when T is large enough to pay
 * for the threads; each unit computes exactly what the serial loop would. */
enum { EW_ADDNORM, EW_ADD, EW_SWIGLU, EW_ROPE };
enum { EW_MIN_T = 32 };	/* below this, one unit on the calling thread */

struct ew_job {
	const struct llama *p;
	struct acts *A;
	int kind, T, rows;	/* rows per unit */
	bool add;		/* EW_ADDNORM: x += h first */
	const float *w;		/* EW_ADDNORM: norm weight */
	const struct lora_decoder_seg *segs;
	const float *tab;
	int pmin;
};

static void ew_unit(void *ctx, int u, int worker)
{
	(void)worker;
	struct ew_job *j = ctx;
	const struct llama *p = j->p;
	struct acts *A = j->A;
	if (j->kind == EW_ROPE) {
		int nh = p->NH + p->NKV, h = u % nh;
		const struct lora_decoder_seg *sg = &j->segs[u / nh];
		if (h < p->NH)
			rope_head(p, A->q, p->NH, h, sg, j->tab, j->pmin);
		else
			rope_head(p, A->k, p->NKV, h - p->NH, sg, j->tab, j->pmin);
		return;
	}
	int t0 = u * j->rows, n = j->T - t0 < j->rows ? j->T - t0 : j->rows;
	if (j->kind == EW_SWIGLU) {
		/* g = silu(g) * u in pieces that stay in L1 (one pass over memory) */
		size_t o = (size_t)t0 * p->F, cnt = (size_t)n * p->F;
		float *g = A->g + o;
		const float *up = A->u + o;
		for (size_t i0 = 0; i0 < cnt; i0 += 1024) {
			size_t k = cnt - i0 < 1024 ? cnt - i0 : 1024;
			lora_silu(g + i0, k);
			for (size_t i = i0; i < i0 + k; i++)
				g[i] *= up[i];
		}
		return;
	}
	for (int t = t0; t < t0 + n; t++) {
		float *x = A->x + (size_t)t * p->C, *h = A->h + (size_t)t * p->C;
		if (j->kind == EW_ADD || j->add)
			for (int i = 0; i < p->C; i++)
				x[i] += h[i];
		if (j->kind == EW_ADDNORM)
			lora_rmsnorm(h, x, j->w, 1, p->C, p->eps);
	}
}

/* Run one row-chunked step over T rows. */
static void ew_rows(struct ew_job *j)
{
	j->rows = lora_rows_per_unit(j->T, EW_MIN_T);
	lora_parallel_for((j->T + j->rows - 1) / j->rows, ew_unit, j);
}

/* Causal attention of one segment for one kv head kh: queries q rows
 * [len, QD]; keys/values in kb/vb rows 0..pos0+len (stride KD); output into
 * the kv head's query-head columns of a rows [len, QD]. The grp query heads
 * that share kv head kh are stacked query-major into qg [len*grp, HS] (row
 * i*grp + g: query i, head kh*grp + g), then processed in blocks of QB
 * queries, each block's two sgemms reaching only the keys it can see (the
 * causal upper triangle, and keys before a sliding window, are skipped).
 * S holds one block's [QB*grp, keys] scores. The output overwrites qg. */
enum { QB = 64 };

static void attend(const struct llama *p, const float *q, const float *kb, const float *vb,
		   float *a, int len, int pos0, int kh, float *S, float *qg)
{
	int QD = p->NH * p->HS, KD = p->NKV * p->HS, HS = p->HS;
	int grp = p->NH / p->NKV, GH = grp * HS;
	float div = sqrtf((float)HS);	/* HF divides the product by sqrt(HS) */
	int ex;
	/* when div is a power of two, scaling by 1/div inside the sgemm is exact */
	bool pow2 = frexpf(div, &ex) == 0.5f;
	for (int i = 0; i < len; i++)
		memcpy(qg + (size_t)i * GH, q + (size_t)i * QD + kh * GH, (size_t)GH * sizeof(float));
	for (int i0 = 0; i0 < len; i0 += QB) {
		int i1 = len - i0 < QB ? len : i0 + QB, M = (i1 - i0) * grp;
		int k0 = p->window && pos0 + i0 - p->window + 1 > 0 ? pos0 + i0 - p->window + 1 : 0;
		int nk = pos0 + i1 - k0;	/* keys k0 .. pos0+i1-1 */
		float *qb = qg + (size_t)i0 * GH;
		lora_gemm(false, true, M, nk, HS, pow2 ? 1.0f / div : 1.0f, qb, HS,
			  kb + (size_t)k0 * KD + kh * HS, KD, 0.0f, S, nk);
		for (int r = 0; r < M; r++) {
			float *row = S + (size_t)r * nk;
			int last = pos0 + i0 + r / grp;	/* keys 0..last are visible */
			int first = p->window && last - p->window + 1 > 0 ? last - p->window + 1 : 0;
			int f = first - k0, l = last - k0;
			if (!pow2)
				for (int j = f; j <= l; j++)
					row[j] /= div;
			lora_softmax_rows(row + f, 1, l + 1 - f);
			memset(row, 0, (size_t)f * sizeof *row);
			memset(row + l + 1, 0, (size_t)(nk - l - 1) * sizeof *row);
		}
		lora_gemm(false, false, M, HS, nk, 1.0f, S, nk, vb + (size_t)k0 * KD + kh * HS, KD, 0.0f,
			  qb, HS);
	}
	for (int i = 0; i < len; i++)
		memcpy(a + (size_t)i * QD + kh * GH, qg + (size_t)i * GH, (size_t)GH * sizeof(float));
}

/* One layer's attention work, split into (segment, kv head) units that run
 * in parallel (lora_parallel_for), each worker with its own scratch. */
struct attn_job {
	const struct llama *p;
	const struct lora_decoder_seg *segs;
	struct acts *A;
	struct lora_decoder_cache *cache;
	int l;
};

static void attn_unit(void *ctx, int u, int worker)
{
	struct attn_job *j = ctx;
	const struct llama *p = j->p;
	const struct lora_decoder_seg *sg = &j->segs[u / p->NKV];
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
	lora_model_linear(m, ly->name[j], y, x, ly->w[j], true, ly->b[j], T, in, out, 0.0f, scratch);
}

/* The blocks over T packed tokens (decoder.h); the cache holds per layer
 * K and V [cap, NKV*HS]. */
static const float *forward(struct lora_model *m, const struct lora_decoder *d, const int32_t *ids,
			    int T, const struct lora_decoder_seg *segs, int nseg,
			    struct lora_decoder_cache *cache, void *acts)
{
	const struct llama *p = (const struct llama *)d;
	struct acts *A = acts;
	float *cs = A->cs;
	int C = p->C, QD = p->NH * p->HS, KD = p->NKV * p->HS;
	int pmin = segs[0].pos0, pmax = 0;
	for (int s = 0; s < nseg; s++) {
		pmin = segs[s].pos0 < pmin ? segs[s].pos0 : pmin;
		pmax = segs[s].pos0 + segs[s].len - 1 > pmax ? segs[s].pos0 + segs[s].len - 1 : pmax;
	}
	rope_table(p, cs, pmin, pmax);
	for (int t = 0; t < T; t++)
		memcpy(A->x + (size_t)t * C, p->embed + (size_t)ids[t] * C, (size_t)C * sizeof(float));
	struct ew_job ew = {.p = p, .A = A, .T = T, .segs = segs, .tab = cs, .pmin = pmin};
	for (int l = 0; l < p->L; l++) {
		const struct layer *ly = &p->layers[l];
		/* x += h (the previous layer's MLP output), then h = rmsnorm(x) */
		ew.kind = EW_ADDNORM, ew.add = l > 0, ew.w = ly->attn_norm;
		ew_rows(&ew);
		lin(m, ly, WQ, A->q, A->h, T, C, QD, A->lr);
		lin(m, ly, WK, A->k, A->h, T, C, KD, A->lr);
		lin(m, ly, WV, A->v, A->h, T, C, KD, A->lr);
		ew.kind = EW_ROPE;
		if (T >= EW_MIN_T)
			lora_parallel_for(nseg * (p->NH + p->NKV), ew_unit, &ew);
		else
			for (int u = 0; u < nseg * (p->NH + p->NKV); u++)
				ew_unit(&ew, u, 0);
		if (cache)
			for (int s = 0; s < nseg; s++) {
				const struct lora_decoder_seg *sg = &segs[s];
				memcpy(cache->k[l] + (size_t)sg->pos0 * KD, A->k + (size_t)sg->off * KD,
				       (size_t)sg->len * KD * sizeof(float));
				memcpy(cache->v[l] + (size_t)sg->pos0 * KD, A->v + (size_t)sg->off * KD,
				       (size_t)sg->len * KD * sizeof(float));
			}
		struct attn_job job = {p, segs, A, cache, l};
		lora_parallel_for(nseg * p->NKV, attn_unit, &job);
		lin(m, ly, WO, A->h, A->a, T, QD, C, A->lr);
		ew.kind = EW_ADDNORM, ew.add = true, ew.w = ly->ffn_norm;
		ew_rows(&ew);
		lin(m, ly, WG, A->g, A->h, T, C, p->F, A->lr);
		lin(m, ly, WU, A->u, A->h, T, C, p->F, A->lr);
		ew.kind = EW_SWIGLU;
		ew_rows(&ew);
		lin(m, ly, WD, A->h, A->g, T, p->F, C, A->lr);
	}
	ew.kind = EW_ADD;
	ew_rows(&ew);
	return A->x;
}

static void final_norm(const struct lora_decoder *d, float *y, const float *x)
{
	const struct llama *p = (const struct llama *)d;
	lora_rmsnorm(y, x, p->norm, 1, p->C, p->eps);
}

static int check_len(const struct lora_decoder *d, size_t len, size_t k, struct lora_err *err)
{
	if (len > (size_t)(1 << 24))
		return lora_errf(err, LORA_EINVAL, "sequence %zu is too long (%zu tokens)", k + 1, len);
	return 0;
}

static const struct lora_decoder_ops llama_ops = {
	.check_len = check_len,
	.lin_name = lin_name,
	.acts_new = acts_new,
	.forward = forward,
	.final_norm = final_norm,
};

const struct lora_arch lora_arch_llama = {
	.name = "llama",
	.load = llama_load,
	.free = llama_free,
	.nll = lora_decoder_nll,
	.logits = lora_decoder_logits,
	.generate = lora_decoder_generate,
};
