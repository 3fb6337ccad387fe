/*
 * train — LoRA training for Llama-family decoders: forward with kept
 * activations, backward into the LoRA factors, AdamW. See train.h.
 *
 * Layout of one step (T = Σ rows of the packed sequences; a sequence of
 * n_input + n_target ids is fed as its first n_input + n_target - 1 ids):
 *
 *   x0 = embed[tokens]                                       [T,C]
 *   per layer l:  a = rmsnorm(x_l)                           [T,C]
 *                 q,k,v = a·Wq^T.., + LoRA, RoPE on q and k  [T,NH*HS] [T,NKV*HS]
 *                 y = attention(q,k,v) per sequence          [T,NH*HS]
 *                 r = x_l + y·Wo^T                           [T,C]
 *                 m = rmsnorm(r); g,u = m·Wg^T, m·Wu^T       [T,F]
 *                 x_{l+1} = r + (silu(g)⊙u)·Wd^T             [T,C]
 *   logits of the rows that score a target = rmsnorm(x_L)·head^T   [NT,V]
 *
 * Every activation above is kept (one slab per layer, grown as needed); the
 * backward walks the same list in reverse. Base weights are never written.
 * The only matrix products not expressible with lora_matmul (transposed left
 * operand, strided head views) go through gemm() below, one cblas_sgemm call.
 */
#include "train.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "ops.h"

/* ---- small helpers ---- */

static const char *const target_names[LORA_T_COUNT] = {
	"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *lora_train_target_name(int t)
{
	return t >= 0 && t < LORA_T_COUNT ? target_names[t] : "?";
}

int lora_train_targets_parse(const char *s, unsigned *mask, struct lora_err *err)
{
	unsigned m = 0;
	const char *p = s;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		int found = 0;
		if (len == 3 && strncmp(p, "all", 3) == 0) {
			m |= (1u << LORA_T_COUNT) - 1;
			found = 1;
		}
		for (int t = 0; t < LORA_T_COUNT && !found; t++) {
			size_t n = strlen(target_names[t]);
			/* accept "q_proj" and the short "q" */
			if ((len == n && strncmp(p, target_names[t], n) == 0) ||
			    (len + 5 == n && strncmp(p, target_names[t], len) == 0 &&
			     strcmp(target_names[t] + len, "_proj") == 0)) {
				m |= 1u << t;
				found = 1;
			}
		}
		if (!found)
			return lora_errf(err, LORA_EINVAL,
					 "unknown target module '%.*s' (expected q_proj, k_proj, "
					 "v_proj, o_proj, gate_proj, up_proj, down_proj or all)",
					 (int)len, p);
		p += len;
		if (*p == ',')
			p++;
	}
	if (!m)
		return lora_errf(err, LORA_EINVAL, "no target modules given");
	*mask = m;
	return 0;
}

struct lora_train_params lora_train_default_params(void)
{
	struct lora_train_params p = {
		.rank = 8, .alpha = 0, .targets = (1u << LORA_T_Q) | (1u << LORA_T_V),
		.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .adam_eps = 1e-8,
		.weight_decay = 0, .seed = 0,
	};
	return p;
}

/* splitmix64 (Steele, Lea, Flood 2014): the documented generator. */
static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* The one strided/transposed product: C[M,N] = beta*C + alpha*op(A)·op(B). */
static void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
		 const float *B, int ldb, float beta, float *Cm, int ldc)
{
	if (M <= 0 || N <= 0)
		return;
	if (K <= 0) {
		for (int i = 0; i < M; i++)
			for (int j = 0; j < N; j++)
				Cm[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * Cm[(size_t)i * ldc + j];
		return;
	}
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
		    M, N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
}

/* ---- kernels ---- */

void lora_train_rmsnorm_backward(float *dx, const float *dy, const float *x, const float *w,
				 int T, int C, float eps)
{
	/* y_j = w_j x_j r, r = (Σx²/C + eps)^-1/2:
	 * dx_i = r w_i dy_i - (r³/C) x_i Σ_j w_j dy_j x_j */
	for (int t = 0; t < T; t++) {
		const float *xt = x + (size_t)t * C, *dyt = dy + (size_t)t * C;
		float *dxt = dx + (size_t)t * C;
		double ss = 0, dot = 0;
		for (int i = 0; i < C; i++) {
			ss += (double)xt[i] * xt[i];
			dot += (double)w[i] * dyt[i] * xt[i];
		}
		double r = 1.0 / sqrt(ss / C + eps);
		double c = r * r * r * dot / C;
		for (int i = 0; i < C; i++)
			dxt[i] += (float)(r * w[i] * dyt[i] - c * xt[i]);
	}
}

void lora_train_rope_forward(float *x, const int *pos, const float *cos_t, const float *sin_t,
			     int T, int nh, int HS)
{
	/* Hugging Face: x*cos + rotate_half(x)*sin, rotate_half = cat(-x2, x1) */
	int h2 = HS / 2;
	for (int t = 0; t < T; t++) {
		const float *c = cos_t + (size_t)pos[t] * h2, *s = sin_t + (size_t)pos[t] * h2;
		for (int h = 0; h < nh; h++) {
			float *v = x + ((size_t)t * nh + h) * HS;
			for (int i = 0; i < h2; i++) {
				float a = v[i], b = v[i + h2];
				v[i] = a * c[i] - b * s[i];
				v[i + h2] = b * c[i] + a * s[i];
			}
		}
	}
}

void lora_train_rope_backward(float *dx, const int *pos, const float *cos_t,
			      const float *sin_t, int T, int nh, int HS)
{
	/* the transpose of the rotation above */
	int h2 = HS / 2;
	for (int t = 0; t < T; t++) {
		const float *c = cos_t + (size_t)pos[t] * h2, *s = sin_t + (size_t)pos[t] * h2;
		for (int h = 0; h < nh; h++) {
			float *v = dx + ((size_t)t * nh + h) * HS;
			for (int i = 0; i < h2; i++) {
				float a = v[i], b = v[i + h2];
				v[i] = a * c[i] + b * s[i];
				v[i + h2] = b * c[i] - a * s[i];
			}
		}
	}
}

void lora_train_attention_forward(float *out, float *att, const float *q, const float *k,
				  const float *v, int n, int NH, int NKV, int HS)
{
	int QD = NH * HS, KD = NKV * HS, grp = NH / NKV;
	float scale = 1.0f / sqrtf((float)HS);
	for (int h = 0; h < NH; h++) {
		int kh = h / grp;
		float *P = att + (size_t)h * n * n;
		/* scores [n,n] = q_h · k_h^T / √HS; causal rows softmaxed over 0..i */
		gemm(false, true, n, n, HS, scale, q + (size_t)h * HS, QD, k + (size_t)kh * HS, KD,
		     0.0f, P, n);
		for (int i = 0; i < n; i++) {
			float *row = P + (size_t)i * n;
			lora_softmax_rows(row, 1, i + 1);
			for (int j = i + 1; j < n; j++)
				row[j] = 0;
		}
		gemm(false, false, n, HS, n, 1.0f, P, n, v + (size_t)kh * HS, KD, 0.0f,
		     out + (size_t)h * HS, QD);
	}
}

void lora_train_attention_backward(float *dq, float *dk, float *dv, const float *dout,
				   const float *att, const float *q, const float *k,
				   const float *v, int n, int NH, int NKV, int HS, float *scratch)
{
	int QD = NH * HS, KD = NKV * HS, grp = NH / NKV;
	float scale = 1.0f / sqrtf((float)HS);
	float *dS = scratch;	/* [n,n] */
	for (int h = 0; h < NH; h++) {
		int kh = h / grp;
		const float *P = att + (size_t)h * n * n;
		const float *douth = dout + (size_t)h * HS;
		/* dv_h += P^T · dout_h */
		gemm(true, false, n, HS, n, 1.0f, P, n, douth, QD, 1.0f, dv + (size_t)kh * HS, KD);
		/* dP = dout_h · v_h^T, then dS = P ⊙ (dP - rowsum(P ⊙ dP)) */
		gemm(false, true, n, n, HS, 1.0f, douth, QD, v + (size_t)kh * HS, KD, 0.0f, dS, n);
		for (int i = 0; i < n; i++) {
			const float *pr = P + (size_t)i * n;
			float *dr = dS + (size_t)i * n;
			double dot = 0;
			for (int j = 0; j <= i; j++)
				dot += (double)pr[j] * dr[j];
			for (int j = 0; j <= i; j++)
				dr[j] = pr[j] * (dr[j] - (float)dot);
			for (int j = i + 1; j < n; j++)
				dr[j] = 0;
		}
		/* dq_h += scale · dS · k_h ; dk_h += scale · dS^T · q_h */
		gemm(false, false, n, HS, n, scale, dS, n, k + (size_t)kh * HS, KD, 1.0f,
		     dq + (size_t)h * HS, QD);
		gemm(true, false, n, HS, n, scale, dS, n, q + (size_t)h * HS, QD, 1.0f,
		     dk + (size_t)kh * HS, KD);
	}
}

void lora_train_swiglu_forward(float *h, const float *g, const float *u, size_t n)
{
	/* in PyTorch: act_fn(gate_proj(x)) * up_proj(x), act_fn = silu */
	memcpy(h, g, n * sizeof *h);
	lora_silu(h, n);
	for (size_t i = 0; i < n; i++)
		h[i] *= u[i];
}

void lora_train_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
				const float *u, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float sg = 1.0f / (1.0f + expf(-g[i]));
		float silu = g[i] * sg;
		du[i] += dh[i] * silu;
		dg[i] += dh[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
	}
}

void lora_train_linear_forward(float *y, float *xa, const float *x, const float *w,
			       const float *bias, const float *a, const float *b, float s,
			       int T, int in, int out, int R)
{
	lora_matmul(y, x, w, T, in, out, true, 1.0f, 0.0f);
	if (bias)
		for (int t = 0; t < T; t++)
			for (int o = 0; o < out; o++)
				y[(size_t)t * out + o] += bias[o];
	if (a && b && R > 0) {
		lora_matmul(xa, x, a, T, in, R, true, 1.0f, 0.0f);
		lora_matmul(y, xa, b, T, R, out, true, s, 1.0f);
	}
}

void lora_train_linear_backward(float *dx, float *da, float *db, const float *dy,
				const float *x, const float *xa, const float *w, const float *a,
				const float *b, float s, int T, int in, int out, int R,
				float *scratch)
{
	if (a && R > 0) {
		/* dB += s · dy^T · xa ; du = s · dy · B ; dA += du^T · x ; dx += du · A */
		gemm(true, false, out, R, T, s, dy, out, xa, R, 1.0f, db, R);
		float *du = scratch;
		lora_matmul(du, dy, b, T, out, R, false, s, 0.0f);
		gemm(true, false, R, in, T, 1.0f, du, R, x, in, 1.0f, da, in);
		if (dx)
			lora_matmul(dx, du, a, T, R, in, false, 1.0f, 1.0f);
	}
	if (dx)
		lora_matmul(dx, dy, w, T, out, in, false, 1.0f, 1.0f);
}

double lora_train_crossentropy_backward(float *logits, const int32_t *targets, int N, int V,
					double denom, float *nll)
{
	double sum = 0;
	for (int r = 0; r < N; r++) {
		float *row = logits + (size_t)r * V;
		float l = lora_nll_row(row, V, targets[r]);
		if (nll)
			nll[r] = l;
		sum += l;
		float mx = row[0];
		for (int j = 1; j < V; j++)
			if (row[j] > mx)
				mx = row[j];
		double z = 0;
		for (int j = 0; j < V; j++)
			z += exp((double)row[j] - mx);
		for (int j = 0; j < V; j++)
			row[j] = (float)(exp((double)row[j] - mx) / z / denom);
		row[targets[r]] -= (float)(1.0 / denom);
	}
	return sum;
}

/* ---- the trainer ---- */

/* Activations of one layer: views into the slab, each [T, width]. */
struct layer_acts {
	float *x;		/* [T,C] layer input (residual stream) */
	float *a;		/* [T,C] rmsnorm(x) */
	float *q, *k, *v;	/* [T,QD] [T,KD] [T,KD], q and k after RoPE */
	float *y;		/* [T,QD] attention output */
	float *r;		/* [T,C] x + o_proj(y) */
	float *m;		/* [T,C] rmsnorm(r) */
	float *g, *u, *h;	/* [T,F] gate, up, silu(g)⊙u */
	float *xa[LORA_T_COUNT];	/* [T,R] x·A^T of each adapted Linear */
	float *att;		/* Σ NH·n_i² attention probabilities */
};

struct lora_train {
	struct lora_train_base base;	/* layers points at own copy */
	struct lora_train_params p;
	float s;			/* alpha / r */
	int R;
	size_t np;			/* LoRA parameter count */
	size_t *off_a, *off_b;		/* [L*LORA_T_COUNT] offsets, SIZE_MAX if not adapted */
	float *param, *grad, *m1, *m2;	/* [np] each */
	long step;
	/* RoPE tables [P, HS/2] */
	int rope_P;
	float *cos_t, *sin_t;
	/* activations, sized for cap_T rows and cap_att attention floats */
	size_t cap_T, cap_att, cap_NT;
	float *slab;
	struct layer_acts *acts;	/* [L] */
	float *xL, *lnf;		/* [T,C] */
	float *logits;			/* [NT,V] */
	float *xt;			/* [NT,C] gathered rows of lnf */
	int32_t *tok, *tgt;		/* [T], [NT] */
	int *pos;			/* [T] */
	size_t *trow;			/* [NT] row of each target in the packed batch */
	/* backward buffers */
	float *bwd;
	float *dx, *dr, *dln, *dq, *dk, *dv, *dy, *dg, *du, *dh, *scratch;
	size_t cap_scratch;
};

static void dims(const struct lora_train_config *c, int t, int *in, int *out)
{
	int QD = c->NH * c->HS, KD = c->NKV * c->HS;
	switch (t) {
	case LORA_T_Q: *in = c->C; *out = QD; break;
	case LORA_T_K: *in = c->C; *out = KD; break;
	case LORA_T_V: *in = c->C; *out = KD; break;
	case LORA_T_O: *in = QD; *out = c->C; break;
	case LORA_T_GATE: *in = c->C; *out = c->F; break;
	case LORA_T_UP: *in = c->C; *out = c->F; break;
	default: *in = c->F; *out = c->C; break;
	}
}

static const float *layer_w(const struct lora_train_layer *ly, int t)
{
	const float *w[LORA_T_COUNT] = { ly->wq, ly->wk, ly->wv, ly->wo, ly->wg, ly->wu, ly->wd };
	return w[t];
}

static int rope_build(struct lora_train *t, int P, struct lora_err *err)
{
	const struct lora_train_config *c = &t->base.cfg;
	if (P <= t->rope_P)
		return 0;
	int h2 = c->HS / 2;
	float *ct = malloc((size_t)P * h2 * sizeof *ct), *st = malloc((size_t)P * h2 * sizeof *st);
	float *inv = malloc((size_t)h2 * sizeof *inv);
	if (!ct || !st || !inv) {
		free(ct);
		free(st);
		free(inv);
		return lora_errf(err, LORA_ENOMEM, "out of memory for rope tables (%d positions)", P);
	}
	/* Hugging Face, in float32: inv_freq = 1 / theta^(2i/HS) */
	for (int i = 0; i < h2; i++) {
		float e = (float)(2 * i) / (float)c->HS;
		inv[i] = 1.0f / powf(c->rope_theta, e);
		if (c->rope_kind == 1) {
			inv[i] /= c->rope_factor;
		} else if (c->rope_kind == 2) {
			/* Llama 3: _compute_llama3_parameters */
			double lo_wl = (double)c->rope_orig_max / c->rope_low;
			double hi_wl = (double)c->rope_orig_max / c->rope_high;
			double wl = 2 * M_PI / inv[i];
			float f = inv[i];
			if (wl > lo_wl) {
				f = inv[i] / c->rope_factor;
			} else if (!(wl < hi_wl)) {
				double sm = ((double)c->rope_orig_max / wl - c->rope_low) /
					    (c->rope_high - c->rope_low);
				f = (float)((1 - sm) * inv[i] / c->rope_factor + sm * inv[i]);
			}
			inv[i] = f;
		}
	}
	for (int p = 0; p < P; p++)
		for (int i = 0; i < h2; i++) {
			float fr = (float)p * inv[i];
			ct[(size_t)p * h2 + i] = (float)cos((double)fr);
			st[(size_t)p * h2 + i] = (float)sin((double)fr);
		}
	free(inv);
	free(t->cos_t);
	free(t->sin_t);
	t->cos_t = ct;
	t->sin_t = st;
	t->rope_P = P;
	return 0;
}

int lora_train_new(const struct lora_train_base *base, const struct lora_train_params *p,
		   struct lora_train **out, struct lora_err *err)
{
	const struct lora_train_config *c = &base->cfg;
	*out = NULL;
	if (c->L <= 0 || c->C <= 0 || c->F <= 0 || c->NH <= 0 || c->NKV <= 0 || c->HS <= 0 ||
	    c->V <= 0 || c->HS % 2 || c->NH % c->NKV)
		return lora_errf(err, LORA_EINVAL,
				 "bad model shape: layers %d, hidden %d, intermediate %d, heads %d, "
				 "kv heads %d, head size %d, vocab %d",
				 c->L, c->C, c->F, c->NH, c->NKV, c->HS, c->V);
	if (!base->embed || !base->norm || !base->head || !base->layers)
		return lora_errf(err, LORA_EINVAL, "missing base weights");
	if (p->rank <= 0 || p->rank > 65536)
		return lora_errf(err, LORA_EINVAL, "rank %d is out of range", p->rank);
	if (!(p->targets & ((1u << LORA_T_COUNT) - 1)))
		return lora_errf(err, LORA_EINVAL, "no target modules");
	if (!(p->lr > 0) || !isfinite(p->lr) || !(p->weight_decay >= 0))
		return lora_errf(err, LORA_EINVAL, "learning rate and weight decay must be "
				 "positive and finite");
	struct lora_train *t = calloc(1, sizeof *t);
	if (!t)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	t->base = *base;
	t->p = *p;
	if (!(t->p.alpha > 0))
		t->p.alpha = 2.0 * p->rank;
	t->R = p->rank;
	t->s = (float)(t->p.alpha / p->rank);
	size_t nl = (size_t)c->L * LORA_T_COUNT;
	t->base.layers = malloc((size_t)c->L * sizeof *t->base.layers);
	t->off_a = malloc(nl * sizeof *t->off_a);
	t->off_b = malloc(nl * sizeof *t->off_b);
	t->acts = calloc((size_t)c->L, sizeof *t->acts);
	if (!t->base.layers || !t->off_a || !t->off_b || !t->acts)
		goto nomem;
	memcpy(t->base.layers, base->layers, (size_t)c->L * sizeof *t->base.layers);
	size_t np = 0;
	for (int l = 0; l < c->L; l++)
		for (int k = 0; k < LORA_T_COUNT; k++) {
			size_t i = (size_t)l * LORA_T_COUNT + k;
			if (!(p->targets & (1u << k))) {
				t->off_a[i] = t->off_b[i] = SIZE_MAX;
				continue;
			}
			int in, o;
			dims(c, k, &in, &o);
			t->off_a[i] = np;
			np += (size_t)t->R * in;
			t->off_b[i] = np;
			np += (size_t)o * t->R;
		}
	t->np = np;
	t->param = calloc(np, sizeof(float));
	t->grad = calloc(np, sizeof(float));
	t->m1 = calloc(np, sizeof(float));
	t->m2 = calloc(np, sizeof(float));
	if (!t->param || !t->grad || !t->m1 || !t->m2)
		goto nomem;
	/* PEFT: nn.init.kaiming_uniform_(A, a=√5) -> U(-1/√in, 1/√in); B = 0 */
	uint64_t rng = p->seed;
	for (int l = 0; l < c->L; l++)
		for (int k = 0; k < LORA_T_COUNT; k++) {
			size_t i = (size_t)l * LORA_T_COUNT + k;
			if (t->off_a[i] == SIZE_MAX)
				continue;
			int in, o;
			dims(c, k, &in, &o);
			float bound = 1.0f / sqrtf((float)in);
			float *A = t->param + t->off_a[i];
			for (size_t j = 0; j < (size_t)t->R * in; j++) {
				double u = (double)(splitmix64(&rng) >> 11) * 0x1.0p-53;
				A[j] = (float)((2 * u - 1) * bound);
			}
		}
	int r = rope_build(t, 64, err);
	if (r) {
		lora_train_free(t);
		return r;
	}
	*out = t;
	return 0;
nomem:
	lora_train_free(t);
	return lora_errf(err, LORA_ENOMEM, "out of memory for the trainer");
}

void lora_train_free(struct lora_train *t)
{
	if (!t)
		return;
	free(t->base.layers);
	free(t->off_a);
	free(t->off_b);
	free(t->param);
	free(t->grad);
	free(t->m1);
	free(t->m2);
	free(t->cos_t);
	free(t->sin_t);
	free(t->slab);
	free(t->acts);
	free(t->bwd);
	free(t->scratch);
	free(t->tok);
	free(t->tgt);
	free(t->pos);
	free(t->trow);
	free(t);
}

size_t lora_train_n_params(const struct lora_train *t) { return t->np; }
float *lora_train_params_data(struct lora_train *t) { return t->param; }
float *lora_train_grads(struct lora_train *t) { return t->grad; }

void lora_train_zero_grad(struct lora_train *t)
{
	memset(t->grad, 0, t->np * sizeof *t->grad);
}

/* Carve the activation slab for T rows, att attention floats, NT target rows. */
static int acts_reserve(struct lora_train *t, size_t T, size_t att, size_t NT,
			size_t maxn, struct lora_err *err)
{
	const struct lora_train_config *c = &t->base.cfg;
	size_t C = c->C, F = c->F, QD = (size_t)c->NH * c->HS, KD = (size_t)c->NKV * c->HS;
	size_t R = t->R, V = c->V;
	int nt = 0;
	for (int k = 0; k < LORA_T_COUNT; k++)
		nt += !!(t->p.targets & (1u << k));
	if (T > t->cap_T || att > t->cap_att || NT > t->cap_NT) {
		T = T > t->cap_T ? T : t->cap_T;
		att = att > t->cap_att ? att : t->cap_att;
		NT = NT > t->cap_NT ? NT : t->cap_NT;
		size_t per = T * (4 * C + 2 * QD + 2 * KD + 3 * F + nt * R) + att;
		size_t total = per * c->L + 2 * T * C + NT * (V + C);
		if (per / T < 4 * C || total / c->L < per)
			return lora_errf(err, LORA_ENOMEM, "activations overflow");
		float *s = malloc(total * sizeof(float));
		size_t nb = T * (3 * C + 2 * QD + 2 * KD + 3 * F);
		float *b = malloc(nb * sizeof(float));
		int32_t *tok = malloc(T * sizeof *tok), *tgt = malloc(NT * sizeof *tgt);
		int *pos = malloc(T * sizeof *pos);
		size_t *trow = malloc(NT * sizeof *trow);
		if (!s || !b || !tok || !tgt || !pos || !trow) {
			free(s);
			free(b);
			free(tok);
			free(tgt);
			free(pos);
			free(trow);
			return lora_errf(err, LORA_ENOMEM,
					 "out of memory for activations (%zu rows)", T);
		}
		free(t->slab);
		free(t->bwd);
		free(t->tok);
		free(t->tgt);
		free(t->pos);
		free(t->trow);
		t->slab = s;
		t->bwd = b;
		t->tok = tok;
		t->tgt = tgt;
		t->pos = pos;
		t->trow = trow;
		t->cap_T = T;
		t->cap_att = att;
		t->cap_NT = NT;
		for (int l = 0; l < c->L; l++) {
			struct layer_acts *a = &t->acts[l];
			a->x = s, s += T * C;
			a->a = s, s += T * C;
			a->q = s, s += T * QD;
			a->k = s, s += T * KD;
			a->v = s, s += T * KD;
			a->y = s, s += T * QD;
			a->r = s, s += T * C;
			a->m = s, s += T * C;
			a->g = s, s += T * F;
			a->u = s, s += T * F;
			a->h = s, s += T * F;
			for (int k = 0; k < LORA_T_COUNT; k++) {
				a->xa[k] = NULL;
				if (t->p.targets & (1u << k))
					a->xa[k] = s, s += T * R;
			}
			a->att = s, s += att;
		}
		t->xL = s, s += T * C;
		t->lnf = s, s += T * C;
		t->logits = s, s += NT * V;
		t->xt = s;
		t->dx = b, b += T * C;
		t->dr = b, b += T * C;
		t->dln = b, b += T * C;
		t->dq = b, b += T * QD;
		t->dy = b, b += T * QD;
		t->dk = b, b += T * KD;
		t->dv = b, b += T * KD;
		t->dg = b, b += T * F;
		t->du = b, b += T * F;
		t->dh = b;
	}
	/* backward scratch: T*R (linear) and maxn² (attention) */
	size_t need = T * R > maxn * maxn ? T * R : maxn * maxn;
	if (need > t->cap_scratch) {
		float *sc = realloc(t->scratch, need * sizeof(float));
		if (!sc)
			return lora_errf(err, LORA_ENOMEM, "out of memory for scratch");
		t->scratch = sc;
		t->cap_scratch = need;
	}
	return 0;
}

static const float *lora_a(const struct lora_train *t, int l, int k)
{
	size_t o = t->off_a[(size_t)l * LORA_T_COUNT + k];
	return o == SIZE_MAX ? NULL : t->param + o;
}

static const float *lora_b(const struct lora_train *t, int l, int k)
{
	size_t o = t->off_b[(size_t)l * LORA_T_COUNT + k];
	return o == SIZE_MAX ? NULL : t->param + o;
}

static void linear_fwd(struct lora_train *t, int l, int k, float *y, const float *x, int T)
{
	const struct lora_train_layer *ly = &t->base.layers[l];
	const float *bias[LORA_T_COUNT] = { ly->bq, ly->bk, ly->bv, ly->bo, NULL, NULL, NULL };
	int in, out;
	dims(&t->base.cfg, k, &in, &out);
	lora_train_linear_forward(y, t->acts[l].xa[k], x, layer_w(ly, k), bias[k], lora_a(t, l, k),
				  lora_b(t, l, k), t->s, T, in, out, t->R);
}

static void linear_bwd(struct lora_train *t, int l, int k, float *dx, const float *dy,
		       const float *x, int T)
{
	const struct lora_train_layer *ly = &t->base.layers[l];
	int in, out;
	dims(&t->base.cfg, k, &in, &out);
	size_t i = (size_t)l * LORA_T_COUNT + k;
	float *da = t->off_a[i] == SIZE_MAX ? NULL : t->grad + t->off_a[i];
	float *db = t->off_b[i] == SIZE_MAX ? NULL : t->grad + t->off_b[i];
	lora_train_linear_backward(dx, da, db, dy, x, t->acts[l].xa[k], layer_w(ly, k),
				   lora_a(t, l, k), lora_b(t, l, k), t->s, T, in, out, t->R,
				   t->scratch);
}

int lora_train_forward(struct lora_train *t, const struct lora_seq *seqs, size_t n,
		       bool backward, double *loss, size_t *tokens, float *nll,
		       struct lora_err *err)
{
	const struct lora_train_config *c = &t->base.cfg;
	size_t T = 0, NT = 0, att = 0, maxn = 0;
	for (size_t i = 0; i < n; i++) {
		if (seqs[i].n_input == 0 || seqs[i].n_target == 0)
			return lora_errf(err, LORA_EINVAL,
					 "example %zu has an empty input or target", i + 1);
		size_t rows = seqs[i].n_input + seqs[i].n_target - 1;
		if (c->max_positions > 0 && rows + 1 > (size_t)c->max_positions)
			return lora_errf(err, LORA_EINVAL,
					 "example %zu has %zu tokens, more than the model's %d "
					 "positions", i + 1, rows + 1, c->max_positions);
		if (rows > 1000000)
			return lora_errf(err, LORA_EINVAL, "example %zu is too long", i + 1);
		T += rows;
		NT += seqs[i].n_target;
		att += (size_t)c->NH * rows * rows;
		maxn = rows > maxn ? rows : maxn;
	}
	if (T == 0)
		return lora_errf(err, LORA_EINVAL, "no examples");
	if (T > (size_t)1 << 30)
		return lora_errf(err, LORA_EINVAL, "batch of %zu tokens is too large", T);
	int r = acts_reserve(t, T, att, NT, maxn, err);
	if (r)
		return r;
	r = rope_build(t, (int)maxn, err);
	if (r)
		return r;
	/* pack tokens, positions and target rows */
	size_t row = 0, tr = 0;
	for (size_t i = 0; i < n; i++) {
		const struct lora_seq *s = &seqs[i];
		size_t rows = s->n_input + s->n_target - 1;
		for (size_t j = 0; j < rows; j++) {
			int32_t id = j < s->n_input ? s->input[j] : s->target[j - s->n_input];
			if (id < 0 || id >= c->V)
				return lora_errf(err, LORA_EINVAL,
						 "example %zu: token id %d is outside the vocabulary "
						 "(%d)", i + 1, (int)id, c->V);
			t->tok[row + j] = id;
			t->pos[row + j] = (int)j;
		}
		for (size_t j = 0; j < s->n_target; j++) {
			int32_t id = s->target[j];
			if (id < 0 || id >= c->V)
				return lora_errf(err, LORA_EINVAL,
						 "example %zu: token id %d is outside the vocabulary "
						 "(%d)", i + 1, (int)id, c->V);
			t->tgt[tr] = id;
			t->trow[tr] = row + s->n_input - 1 + j;
			tr++;
		}
		row += rows;
	}
	int iT = (int)T;
	int C = c->C, F = c->F, QD = c->NH * c->HS, KD = c->NKV * c->HS;
	/* embedding lookup (frozen: no backward) */
	for (size_t j = 0; j < T; j++)
		memcpy(t->acts[0].x + j * C, t->base.embed + (size_t)t->tok[j] * C,
		       (size_t)C * sizeof(float));
	for (int l = 0; l < c->L; l++) {
		struct layer_acts *a = &t->acts[l];
		const struct lora_train_layer *ly = &t->base.layers[l];
		lora_rmsnorm(a->a, a->x, ly->ln1, iT, C, c->eps);
		linear_fwd(t, l, LORA_T_Q, a->q, a->a, iT);
		linear_fwd(t, l, LORA_T_K, a->k, a->a, iT);
		linear_fwd(t, l, LORA_T_V, a->v, a->a, iT);
		lora_train_rope_forward(a->q, t->pos, t->cos_t, t->sin_t, iT, c->NH, c->HS);
		lora_train_rope_forward(a->k, t->pos, t->cos_t, t->sin_t, iT, c->NKV, c->HS);
		size_t r0 = 0, a0 = 0;
		for (size_t i = 0; i < n; i++) {
			int rows = (int)(seqs[i].n_input + seqs[i].n_target - 1);
			lora_train_attention_forward(a->y + r0 * QD, a->att + a0, a->q + r0 * QD,
						     a->k + r0 * KD, a->v + r0 * KD, rows, c->NH,
						     c->NKV, c->HS);
			r0 += rows;
			a0 += (size_t)c->NH * rows * rows;
		}
		linear_fwd(t, l, LORA_T_O, a->r, a->y, iT);
		for (size_t j = 0; j < T * C; j++)
			a->r[j] += a->x[j];
		lora_rmsnorm(a->m, a->r, ly->ln2, iT, C, c->eps);
		linear_fwd(t, l, LORA_T_GATE, a->g, a->m, iT);
		linear_fwd(t, l, LORA_T_UP, a->u, a->m, iT);
		lora_train_swiglu_forward(a->h, a->g, a->u, T * F);
		float *next = l + 1 < c->L ? t->acts[l + 1].x : t->xL;
		linear_fwd(t, l, LORA_T_DOWN, next, a->h, iT);
		for (size_t j = 0; j < T * C; j++)
			next[j] += a->r[j];
	}
	lora_rmsnorm(t->lnf, t->xL, t->base.norm, iT, C, c->eps);
	for (size_t j = 0; j < NT; j++)
		memcpy(t->xt + j * C, t->lnf + t->trow[j] * C, (size_t)C * sizeof(float));
	lora_matmul(t->logits, t->xt, t->base.head, (int)NT, C, c->V, true, 1.0f, 0.0f);
	double sum = lora_train_crossentropy_backward(t->logits, t->tgt, (int)NT, c->V,
						      (double)NT, nll);
	if (loss)
		*loss = sum / (double)NT;
	if (tokens)
		*tokens = NT;
	if (!isfinite(sum))
		return lora_errf(err, LORA_EINVAL, "the loss is not finite");
	if (!backward)
		return 0;

	/* ---- backward ---- */
	/* head: dxt = dlogits · head ; scatter into dln (rows of lnf) */
	lora_matmul(t->xt, t->logits, t->base.head, (int)NT, c->V, C, false, 1.0f, 0.0f);
	memset(t->dln, 0, T * C * sizeof(float));
	for (size_t j = 0; j < NT; j++) {
		float *d = t->dln + t->trow[j] * C;
		const float *s = t->xt + j * C;
		for (int i = 0; i < C; i++)
			d[i] += s[i];
	}
	/* dx = d(residual stream at the top) */
	memset(t->dx, 0, T * C * sizeof(float));
	lora_train_rmsnorm_backward(t->dx, t->dln, t->xL, t->base.norm, iT, C, c->eps);
	for (int l = c->L - 1; l >= 0; l--) {
		struct layer_acts *a = &t->acts[l];
		const struct lora_train_layer *ly = &t->base.layers[l];
		/* x_{l+1} = r + down(h): dr = dx (+ through the MLP below) */
		memcpy(t->dr, t->dx, T * C * sizeof(float));
		memset(t->dh, 0, T * F * sizeof(float));
		linear_bwd(t, l, LORA_T_DOWN, t->dh, t->dx, a->h, iT);
		memset(t->dg, 0, T * F * sizeof(float));
		memset(t->du, 0, T * F * sizeof(float));
		lora_train_swiglu_backward(t->dg, t->du, t->dh, a->g, a->u, T * F);
		memset(t->dln, 0, T * C * sizeof(float));
		linear_bwd(t, l, LORA_T_GATE, t->dln, t->dg, a->m, iT);
		linear_bwd(t, l, LORA_T_UP, t->dln, t->du, a->m, iT);
		lora_train_rmsnorm_backward(t->dr, t->dln, a->r, ly->ln2, iT, C, c->eps);
		/* r = x + o(y): dx = dr (+ through attention below) */
		memcpy(t->dx, t->dr, T * C * sizeof(float));
		memset(t->dy, 0, T * QD * sizeof(float));
		linear_bwd(t, l, LORA_T_O, t->dy, t->dr, a->y, iT);
		memset(t->dq, 0, T * QD * sizeof(float));
		memset(t->dk, 0, T * KD * sizeof(float));
		memset(t->dv, 0, T * KD * sizeof(float));
		size_t r0 = 0, a0 = 0;
		for (size_t i = 0; i < n; i++) {
			int rows = (int)(seqs[i].n_input + seqs[i].n_target - 1);
			lora_train_attention_backward(t->dq + r0 * QD, t->dk + r0 * KD,
						      t->dv + r0 * KD, t->dy + r0 * QD,
						      a->att + a0, a->q + r0 * QD, a->k + r0 * KD,
						      a->v + r0 * KD, rows, c->NH, c->NKV, c->HS,
						      t->scratch);
			r0 += rows;
			a0 += (size_t)c->NH * rows * rows;
		}
		lora_train_rope_backward(t->dq, t->pos, t->cos_t, t->sin_t, iT, c->NH, c->HS);
		lora_train_rope_backward(t->dk, t->pos, t->cos_t, t->sin_t, iT, c->NKV, c->HS);
		/* the layer's input gradient is only needed if a layer below learns */
		memset(t->dln, 0, T * C * sizeof(float));
		linear_bwd(t, l, LORA_T_Q, t->dln, t->dq, a->a, iT);
		linear_bwd(t, l, LORA_T_K, t->dln, t->dk, a->a, iT);
		linear_bwd(t, l, LORA_T_V, t->dln, t->dv, a->a, iT);
		if (l > 0)
			lora_train_rmsnorm_backward(t->dx, t->dln, a->x, ly->ln1, iT, C, c->eps);
	}
	return 0;
}

void lora_train_adamw(struct lora_train *t)
{
	const struct lora_train_params *p = &t->p;
	t->step++;
	double bc1 = 1 - pow(p->beta1, (double)t->step), bc2 = 1 - pow(p->beta2, (double)t->step);
	float lr = (float)p->lr, wd = (float)p->weight_decay;
	float b1 = (float)p->beta1, b2 = (float)p->beta2;
	for (size_t i = 0; i < t->np; i++) {
		float g = t->grad[i];
		t->param[i] -= lr * wd * t->param[i];
		t->m1[i] = b1 * t->m1[i] + (1 - b1) * g;
		t->m2[i] = b2 * t->m2[i] + (1 - b2) * g * g;
		double mh = t->m1[i] / bc1, vh = t->m2[i] / bc2;
		t->param[i] -= (float)(p->lr * mh / (sqrt(vh) + p->adam_eps));
	}
}

int lora_train_step(struct lora_train *t, const struct lora_seq *seqs, size_t n, double *loss,
		    size_t *tokens, struct lora_err *err)
{
	lora_train_zero_grad(t);
	int r = lora_train_forward(t, seqs, n, true, loss, tokens, NULL, err);
	if (r)
		return r;
	lora_train_adamw(t);
	return 0;
}

int lora_train_adapter(const struct lora_train *t, const char *name, const char *base,
		       struct lora_adapter *out, struct lora_err *err)
{
	const struct lora_train_config *c = &t->base.cfg;
	memset(out, 0, sizeof *out);
	size_t nm = 0;
	for (int k = 0; k < LORA_T_COUNT; k++)
		nm += !!(t->p.targets & (1u << k));
	nm *= (size_t)c->L;
	out->name = strdup(name ? name : "lora-train");
	out->base = base ? strdup(base) : NULL;
	out->r = t->R;
	out->alpha = t->p.alpha;
	out->modules = calloc(nm, sizeof *out->modules);
	if (!out->name || (base && !out->base) || !out->modules)
		goto nomem;
	for (int l = 0; l < c->L; l++)
		for (int k = 0; k < LORA_T_COUNT; k++) {
			if (!(t->p.targets & (1u << k)))
				continue;
			struct lora_module *m = &out->modules[out->n_modules];
			int in, o;
			dims(c, k, &in, &o);
			char buf[128];
			snprintf(buf, sizeof buf, "model.layers.%d.%s.%s", l,
				 k <= LORA_T_O ? "self_attn" : "mlp", target_names[k]);
			m->module = strdup(buf);
			if (!m->module)
				goto nomem;
			out->n_modules++;
			m->r = t->R;
			m->alpha = t->p.alpha;
			if (lora_tensor_alloc2(&m->a, LORA_F32, t->R, in, err) ||
			    lora_tensor_alloc2(&m->b, LORA_F32, o, t->R, err)) {
				lora_adapter_free(out);
				return err ? err->code : LORA_ENOMEM;
			}
			memcpy(m->a.data, lora_a(t, l, k), (size_t)t->R * in * sizeof(float));
			memcpy(m->b.data, lora_b(t, l, k), (size_t)o * t->R * sizeof(float));
		}
	return 0;
nomem:
	lora_adapter_free(out);
	return lora_errf(err, LORA_ENOMEM, "out of memory for the adapter");
}

/* ---- from an open model ---- */

static int cfg_int(const struct lora_doc *cfg, const char *key, int def, bool required,
		   int *out, struct lora_err *err)
{
	int64_t v = def;
	int r = lora_doc_get_int(cfg, key, "config.json", &v, err);
	if (r == LORA_ENOTFOUND && !required) {
		*out = def;
		return 0;
	}
	if (r == LORA_ENOTFOUND)
		return lora_errf(err, LORA_ENOTFOUND, "config.json: '%s' is missing", key);
	if (r)
		return r;
	if (v < 0 || v > (1 << 30))
		return lora_errf(err, LORA_EINVAL, "config.json: '%s' = %lld is out of range", key,
				 (long long)v);
	*out = (int)v;
	return 0;
}

static int cfg_double(const struct lora_doc *cfg, const char *key, double def, double *out,
		      struct lora_err *err)
{
	double v = def;
	int r = lora_doc_get_double(cfg, key, "config.json", &v, err);
	if (r && r != LORA_ENOTFOUND)
		return r;
	*out = v;
	return 0;
}

int lora_train_new_from_model(struct lora_model *m, const struct lora_train_params *p,
			      struct lora_train **out, struct lora_err *err)
{
	struct lora_model_core *core = lora_model_core(m);
	const char *mt = core->info.model_type ? core->info.model_type : "?";
	*out = NULL;
	if (strcmp(mt, "t5") == 0)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "training model_type 't5' is not implemented: it needs backward "
				 "passes for the encoder-decoder (cross-attention, relative "
				 "position bias, gated-GELU/ReLU feed-forward); lora-train supports "
				 "the Llama family (llama, mistral, qwen2)");
	if (strcmp(mt, "gpt2") == 0)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "training model_type 'gpt2' is not implemented: it needs backward "
				 "passes for LayerNorm, GELU, learned positions and Conv1D "
				 "weights; lora-train supports the Llama family (llama, mistral, "
				 "qwen2)");
	if (strcmp(mt, "llama") && strcmp(mt, "mistral") && strcmp(mt, "qwen2"))
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "training model_type '%s' is not supported (llama, mistral, qwen2)",
				 mt);
	const struct lora_doc *cfgd = core->config;
	struct lora_train_base b;
	memset(&b, 0, sizeof b);
	struct lora_train_config *c = &b.cfg;
	int r;
	if ((r = cfg_int(cfgd, "hidden_size", 0, true, &c->C, err)) ||
	    (r = cfg_int(cfgd, "intermediate_size", 0, true, &c->F, err)) ||
	    (r = cfg_int(cfgd, "num_hidden_layers", 0, true, &c->L, err)) ||
	    (r = cfg_int(cfgd, "num_attention_heads", 0, true, &c->NH, err)) ||
	    (r = cfg_int(cfgd, "num_key_value_heads", c->NH, false, &c->NKV, err)) ||
	    (r = cfg_int(cfgd, "vocab_size", 0, true, &c->V, err)) ||
	    (r = cfg_int(cfgd, "max_position_embeddings", 0, false, &c->max_positions, err)))
		return r;
	if (c->NH <= 0)
		return lora_errf(err, LORA_EINVAL, "config.json: num_attention_heads is 0");
	const struct lora_doc *hd = lora_doc_get(cfgd, "head_dim");
	c->HS = c->C / c->NH;
	if (hd && hd->type != LORA_DOC_NULL &&
	    (r = cfg_int(cfgd, "head_dim", c->C / c->NH, false, &c->HS, err)))
		return r;
	double eps, theta;
	if ((r = cfg_double(cfgd, "rms_norm_eps", 1e-6, &eps, err)) ||
	    (r = cfg_double(cfgd, "rope_theta", 10000.0, &theta, err)))
		return r;
	c->eps = (float)eps;
	c->rope_theta = (float)theta;
	const struct lora_doc *rs = lora_doc_get(cfgd, "rope_scaling");
	if (rs && rs->type == LORA_DOC_MAP) {
		const char *kind = NULL;
		if (lora_doc_get_string(rs, "rope_type", "config.json", &kind, NULL))
			lora_doc_get_string(rs, "type", "config.json", &kind, NULL);
		double f = 1, lo = 1, hi = 4;
		int om = 8192;
		cfg_double(rs, "factor", 1.0, &f, NULL);
		c->rope_factor = (float)f;
		if (kind && strcmp(kind, "linear") == 0) {
			c->rope_kind = 1;
		} else if (kind && strcmp(kind, "llama3") == 0) {
			c->rope_kind = 2;
			cfg_double(rs, "low_freq_factor", 1.0, &lo, NULL);
			cfg_double(rs, "high_freq_factor", 4.0, &hi, NULL);
			cfg_int(rs, "original_max_position_embeddings", 8192, false, &om, NULL);
			c->rope_low = (float)lo;
			c->rope_high = (float)hi;
			c->rope_orig_max = om;
		} else if (kind && strcmp(kind, "default") != 0) {
			return lora_errf(err, LORA_EUNSUPPORTED,
					 "config.json: rope_scaling type '%s' is not supported "
					 "(linear, llama3)", kind);
		}
	}
	bool tied = false;
	const struct lora_doc *tw = lora_doc_get(cfgd, "tie_word_embeddings");
	if (tw && tw->type == LORA_DOC_BOOL)
		tied = tw->u.b;
	int C = c->C, F = c->F, QD = c->NH * c->HS, KD = c->NKV * c->HS;
	struct lora_train_layer *ly = calloc((size_t)(c->L > 0 ? c->L : 1), sizeof *ly);
	if (!ly)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	char nm[256];
#define W(dst, name, rows, cols)                                                            \
	do {                                                                                \
		(dst) = lora_model_weight(m, (name), (rows), (cols), err);                  \
		if (!(dst)) {                                                               \
			free(ly);                                                           \
			return err ? err->code : LORA_ENOTFOUND;                            \
		}                                                                           \
	} while (0)
#define WOPT(dst, name, rows)                                                               \
	do {                                                                                \
		(dst) = NULL;                                                               \
		if (lora_model_has_weight(m, (name)))                                       \
			W(dst, name, rows, 0);                                              \
	} while (0)
	W(b.embed, "model.embed_tokens.weight", c->V, C);
	W(b.norm, "model.norm.weight", C, 0);
	if (!tied && lora_model_has_weight(m, "lm_head.weight"))
		W(b.head, "lm_head.weight", c->V, C);
	else
		b.head = b.embed;
	for (int l = 0; l < c->L; l++) {
		struct lora_train_layer *y = &ly[l];
#define NAME(suffix) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), nm)
		W(y->ln1, NAME("input_layernorm.weight"), C, 0);
		W(y->ln2, NAME("post_attention_layernorm.weight"), C, 0);
		W(y->wq, NAME("self_attn.q_proj.weight"), QD, C);
		W(y->wk, NAME("self_attn.k_proj.weight"), KD, C);
		W(y->wv, NAME("self_attn.v_proj.weight"), KD, C);
		W(y->wo, NAME("self_attn.o_proj.weight"), C, QD);
		WOPT(y->bq, NAME("self_attn.q_proj.bias"), QD);
		WOPT(y->bk, NAME("self_attn.k_proj.bias"), KD);
		WOPT(y->bv, NAME("self_attn.v_proj.bias"), KD);
		WOPT(y->bo, NAME("self_attn.o_proj.bias"), C);
		W(y->wg, NAME("mlp.gate_proj.weight"), F, C);
		W(y->wu, NAME("mlp.up_proj.weight"), F, C);
		W(y->wd, NAME("mlp.down_proj.weight"), C, F);
#undef NAME
	}
#undef W
#undef WOPT
	b.layers = ly;
	r = lora_train_new(&b, p, out, err);
	free(ly);	/* lora_train_new copied the layer table */
	return r;
}
