/*
 * test_train — finite-difference checks of every backward kernel in
 * lib/train.c and of the whole LoRA gradient on tiny Llama models built in
 * memory (random weights, fixed seeds: GQA, tied and untied heads, q/k/v
 * biases), then training behaviour: the loss falls on a memorizable set,
 * a seed determines the result, PEFT's initialisation, the adapter export.
 *
 * Gradient error measure: rel = |g - fd|₂ / max(|g|₂, |fd|₂) over every
 * checked component, with central differences in f32 forwards. The
 * tolerances (printed) are float32 rounding divided by the step, not slack.
 */
#include "check.h"
#include "ops.h"
#include "train.h"

#include <stdint.h>

static uint64_t rs = 42;
static double urand(void)
{
	rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
	return (double)(rs >> 11) * 0x1.0p-53;
}
static void fill(float *x, size_t n, double lo, double hi)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(lo + (hi - lo) * urand());
}
static float *rnd(size_t n, double lo, double hi)
{
	float *x = malloc(n * sizeof *x);
	fill(x, n, lo, hi);
	return x;
}
static double dotd(const float *a, const float *b, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}

/* rel error of analytic g against fd, printed and checked */
static void report(const char *what, const double *g, const double *fd, size_t n, double tol)
{
	double e = 0, ng = 0, nf = 0;
	for (size_t i = 0; i < n; i++) {
		e += (g[i] - fd[i]) * (g[i] - fd[i]);
		ng += g[i] * g[i];
		nf += fd[i] * fd[i];
	}
	double den = sqrt(ng > nf ? ng : nf);
	double rel = den > 0 ? sqrt(e) / den : sqrt(e);
	check(rel <= tol && den > 0, "%s: relative error %.3g (tol %.3g, |g| %.3g, n %zu)", what,
	      rel, tol, sqrt(ng), n);
}

/* ---- kernel checks: J = Σ wout ⊙ f(x), dJ/dx by the backward vs FD ---- */

#define H 1e-2f

static void test_rmsnorm(void)
{
	int T = 3, C = 16;
	float *x = rnd(T * C, -1, 1), *w = rnd(C, 0.5, 1.5), *wo = rnd(T * C, -1, 1);
	float *y = malloc(T * C * 4), *dx = calloc(T * C, 4);
	lora_train_rmsnorm_backward(dx, wo, x, w, T, C, 1e-5f);
	double g[48], fd[48];
	for (int i = 0; i < T * C; i++) {
		float s = x[i];
		x[i] = s + H;
		lora_rmsnorm(y, x, w, T, C, 1e-5f);
		double jp = dotd(y, wo, T * C);
		x[i] = s - H;
		lora_rmsnorm(y, x, w, T, C, 1e-5f);
		double jm = dotd(y, wo, T * C);
		x[i] = s;
		fd[i] = (jp - jm) / (2 * H);
		g[i] = dx[i];
	}
	report("rmsnorm_backward", g, fd, T * C, 1e-3);
	free(x), free(w), free(wo), free(y), free(dx);
}

static void test_rope(void)
{
	int T = 5, nh = 2, HS = 8, P = 8;
	int pos[5] = { 0, 1, 2, 0, 4 };
	float *ct = malloc(P * HS / 2 * 4), *st = malloc(P * HS / 2 * 4);
	for (int p = 0; p < P; p++)
		for (int i = 0; i < HS / 2; i++) {
			double f = p * pow(10000.0, -2.0 * i / HS);
			ct[p * HS / 2 + i] = (float)cos(f);
			st[p * HS / 2 + i] = (float)sin(f);
		}
	int n = T * nh * HS;
	float *x = rnd(n, -1, 1), *y = malloc(n * 4), *wo = rnd(n, -1, 1), *d = malloc(n * 4);
	memcpy(d, wo, n * 4);
	lora_train_rope_backward(d, pos, ct, st, T, nh, HS);
	double g[80], fd[80];
	for (int i = 0; i < n; i++) {
		float s = x[i];
		x[i] = s + H;
		memcpy(y, x, n * 4);
		lora_train_rope_forward(y, pos, ct, st, T, nh, HS);
		double jp = dotd(y, wo, n);
		x[i] = s - H;
		memcpy(y, x, n * 4);
		lora_train_rope_forward(y, pos, ct, st, T, nh, HS);
		double jm = dotd(y, wo, n);
		x[i] = s;
		fd[i] = (jp - jm) / (2 * H);
		g[i] = d[i];
	}
	report("rope_backward", g, fd, n, 1e-4);
	/* position 0 is the identity */
	memcpy(y, x, n * 4);
	lora_train_rope_forward(y, pos, ct, st, T, nh, HS);
	check(memcmp(y, x, nh * HS * 4) == 0, "rope at position 0 is the identity");
	free(ct), free(st), free(x), free(y), free(wo), free(d);
}

static void test_attention(void)
{
	int n = 6, NH = 4, NKV = 2, HS = 4, QD = NH * HS, KD = NKV * HS;
	float *q = rnd(n * QD, -1, 1), *k = rnd(n * KD, -1, 1), *v = rnd(n * KD, -1, 1);
	float *wo = rnd(n * QD, -1, 1), *out = malloc(n * QD * 4), *att = malloc(NH * n * n * 4);
	float *dq = calloc(n * QD, 4), *dk = calloc(n * KD, 4), *dv = calloc(n * KD, 4);
	float *scr = malloc(n * n * 4);
	lora_train_attention_forward(out, att, q, k, v, n, NH, NKV, HS);
	/* a causal row sums to one and never looks ahead */
	double worst = 0;
	int ahead = 0;
	for (int h = 0; h < NH; h++)
		for (int i = 0; i < n; i++) {
			double s = 0;
			for (int j = 0; j < n; j++) {
				s += att[(h * n + i) * n + j];
				if (j > i && att[(h * n + i) * n + j] != 0)
					ahead++;
			}
			worst = fmax(worst, fabs(s - 1));
		}
	check(worst < 1e-6 && ahead == 0, "attention rows sum to 1 (max err %.2g), causal", worst);
	lora_train_attention_backward(dq, dk, dv, wo, att, q, k, v, n, NH, NKV, HS, scr);
	float *bufs[3] = { q, k, v }, *grads[3] = { dq, dk, dv };
	int sizes[3] = { n * QD, n * KD, n * KD };
	const char *names[3] = { "attention_backward dq", "attention_backward dk (GQA)",
				 "attention_backward dv (GQA)" };
	for (int b = 0; b < 3; b++) {
		double *g = malloc(sizes[b] * sizeof *g), *fd = malloc(sizes[b] * sizeof *fd);
		for (int i = 0; i < sizes[b]; i++) {
			float s = bufs[b][i];
			bufs[b][i] = s + H;
			lora_train_attention_forward(out, att, q, k, v, n, NH, NKV, HS);
			double jp = dotd(out, wo, n * QD);
			bufs[b][i] = s - H;
			lora_train_attention_forward(out, att, q, k, v, n, NH, NKV, HS);
			double jm = dotd(out, wo, n * QD);
			bufs[b][i] = s;
			fd[i] = (jp - jm) / (2 * H);
			g[i] = grads[b][i];
		}
		report(names[b], g, fd, sizes[b], 2e-3);
		free(g), free(fd);
	}
	free(q), free(k), free(v), free(wo), free(out), free(att), free(dq), free(dk), free(dv);
	free(scr);
}

static void test_swiglu(void)
{
	int n = 40;
	float *g = rnd(n, -4, 4), *u = rnd(n, -2, 2), *wo = rnd(n, -1, 1), *h = malloc(n * 4);
	float *dg = calloc(n, 4), *du = calloc(n, 4);
	lora_train_swiglu_backward(dg, du, wo, g, u, n);
	double ga[80], fd[80];
	for (int i = 0; i < 2 * n; i++) {
		float *p = i < n ? &g[i] : &u[i - n];
		float s = *p;
		*p = s + H;
		lora_train_swiglu_forward(h, g, u, n);
		double jp = dotd(h, wo, n);
		*p = s - H;
		lora_train_swiglu_forward(h, g, u, n);
		double jm = dotd(h, wo, n);
		*p = s;
		fd[i] = (jp - jm) / (2 * H);
		ga[i] = i < n ? dg[i] : du[i - n];
	}
	report("swiglu_backward dg, du", ga, fd, 2 * n, 1e-3);
	free(g), free(u), free(wo), free(h), free(dg), free(du);
}

static void test_linear(void)
{
	int T = 5, in = 12, out = 10, R = 3;
	float s = 1.7f;
	float *x = rnd(T * in, -1, 1), *w = rnd(out * in, -0.5, 0.5), *bias = rnd(out, -1, 1);
	float *a = rnd(R * in, -0.5, 0.5), *b = rnd(out * R, -0.5, 0.5), *wo = rnd(T * out, -1, 1);
	float *y = malloc(T * out * 4), *xa = malloc(T * R * 4), *scr = malloc(T * R * 4);
	float *dx = calloc(T * in, 4), *da = calloc(R * in, 4), *db = calloc(out * R, 4);
	lora_train_linear_forward(y, xa, x, w, bias, a, b, s, T, in, out, R);
	lora_train_linear_backward(dx, da, db, wo, x, xa, w, a, b, s, T, in, out, R, scr);
	float *bufs[3] = { x, a, b }, *grads[3] = { dx, da, db };
	int sizes[3] = { T * in, R * in, out * R };
	const char *names[3] = { "linear_backward dx", "linear_backward dA", "linear_backward dB" };
	for (int k = 0; k < 3; k++) {
		double *g = malloc(sizes[k] * sizeof *g), *fd = malloc(sizes[k] * sizeof *fd);
		for (int i = 0; i < sizes[k]; i++) {
			float sv = bufs[k][i];
			bufs[k][i] = sv + H;
			lora_train_linear_forward(y, xa, x, w, bias, a, b, s, T, in, out, R);
			double jp = dotd(y, wo, T * out);
			bufs[k][i] = sv - H;
			lora_train_linear_forward(y, xa, x, w, bias, a, b, s, T, in, out, R);
			double jm = dotd(y, wo, T * out);
			bufs[k][i] = sv;
			fd[i] = (jp - jm) / (2 * H);
			g[i] = grads[k][i];
		}
		report(names[k], g, fd, sizes[k], 1e-4);
		free(g), free(fd);
	}
	free(x), free(w), free(bias), free(a), free(b), free(wo), free(y), free(xa), free(scr);
	free(dx), free(da), free(db);
}

static void test_crossentropy(void)
{
	int N = 4, V = 30;
	int32_t tg[4] = { 3, 0, 29, 7 };
	float *l = rnd(N * V, -3, 3), *c = malloc(N * V * 4);
	memcpy(c, l, N * V * 4);
	double sum = lora_train_crossentropy_backward(c, tg, N, V, N, NULL);
	double want = 0;
	for (int r = 0; r < N; r++)
		want += lora_nll_row(l + r * V, V, tg[r]);
	check_near(sum, want, 1e-6, 1e-6, "crossentropy sum equals Σ lora_nll_row");
	double g[120], fd[120];
	for (int i = 0; i < N * V; i++) {
		float sv = l[i];
		double jp = 0, jm = 0;
		l[i] = sv + H;
		for (int r = 0; r < N; r++)
			jp += lora_nll_row(l + r * V, V, tg[r]) / N;
		l[i] = sv - H;
		for (int r = 0; r < N; r++)
			jm += lora_nll_row(l + r * V, V, tg[r]) / N;
		l[i] = sv;
		fd[i] = (jp - jm) / (2 * H);
		g[i] = c[i];
	}
	report("crossentropy_backward dlogits", g, fd, N * V, 2e-3);
	free(l), free(c);
}

/* ---- a tiny Llama in memory ---- */

struct tiny {
	struct lora_train_base b;
	struct lora_train_layer ly[2];
	float *all[64];
	int n;
};

static const float *tw(struct tiny *m, size_t n, double lo, double hi)
{
	float *p = rnd(n, lo, hi);
	m->all[m->n++] = p;
	return p;
}

static void tiny_build(struct tiny *m, bool tied, bool bias)
{
	memset(m, 0, sizeof *m);
	struct lora_train_config *c = &m->b.cfg;
	c->L = 2, c->C = 16, c->F = 24, c->NH = 4, c->NKV = 2, c->HS = 4, c->V = 40;
	c->eps = 1e-5f, c->rope_theta = 10000.0f, c->max_positions = 64;
	int C = c->C, F = c->F, QD = 16, KD = 8;
	double ws = 0.35;
	m->b.embed = tw(m, (size_t)c->V * C, -1, 1);
	m->b.norm = tw(m, C, 0.7, 1.3);
	m->b.head = tied ? m->b.embed : tw(m, (size_t)c->V * C, -ws, ws);
	for (int l = 0; l < c->L; l++) {
		struct lora_train_layer *y = &m->ly[l];
		y->ln1 = tw(m, C, 0.7, 1.3);
		y->ln2 = tw(m, C, 0.7, 1.3);
		y->wq = tw(m, (size_t)QD * C, -ws, ws);
		y->wk = tw(m, (size_t)KD * C, -ws, ws);
		y->wv = tw(m, (size_t)KD * C, -ws, ws);
		y->wo = tw(m, (size_t)C * QD, -ws, ws);
		y->wg = tw(m, (size_t)F * C, -ws, ws);
		y->wu = tw(m, (size_t)F * C, -ws, ws);
		y->wd = tw(m, (size_t)C * F, -ws, ws);
		if (bias) {
			y->bq = tw(m, QD, -0.3, 0.3);
			y->bk = tw(m, KD, -0.3, 0.3);
			y->bv = tw(m, KD, -0.3, 0.3);
		}
	}
	m->b.layers = m->ly;
}

static void tiny_free(struct tiny *m)
{
	for (int i = 0; i < m->n; i++)
		free(m->all[i]);
}

static int32_t seq_ids[3][12] = {
	{ 1, 5, 9, 13, 7, 22, 31, 2 },
	{ 1, 17, 3, 8, 39, 2 },
	{ 1, 11, 12, 4, 4, 30, 6, 19, 25, 2 },
};
static struct lora_seq seqs3[3] = {
	{ seq_ids[0], 4, seq_ids[0] + 4, 4 },
	{ seq_ids[1], 2, seq_ids[1] + 2, 4 },
	{ seq_ids[2], 5, seq_ids[2] + 5, 5 },
};

static void test_whole(bool tied, bool bias, const char *what)
{
	struct tiny m;
	tiny_build(&m, tied, bias);
	struct lora_train_params p = lora_train_default_params();
	p.rank = 2;
	p.alpha = 3;
	p.targets = (1u << LORA_T_COUNT) - 1;
	p.seed = 7;
	struct lora_train *t;
	struct lora_err err = { 0 };
	if (!check(lora_train_new(&m.b, &p, &t, &err) == 0, "%s: trainer (%s)", what, err.msg)) {
		tiny_free(&m);
		return;
	}
	size_t np = lora_train_n_params(t);
	float *P = lora_train_params_data(t);
	/* B = 0 at init makes dA vanish: give B random values first */
	fill(P, np, -0.3, 0.3);
	double loss;
	size_t tok;
	lora_train_zero_grad(t);
	int r = lora_train_forward(t, seqs3, 3, true, &loss, &tok, NULL, &err);
	check(r == 0 && tok == 13, "%s: forward+backward over 3 packed sequences, %zu target "
	      "tokens, loss %.6f", what, tok, loss);
	float *G = lora_train_grads(t);
	double *g = malloc(np * sizeof *g), *fd = malloc(np * sizeof *fd);
	for (size_t i = 0; i < np; i++) {
		float s = P[i];
		double lp, lm;
		P[i] = s + H;
		lora_train_forward(t, seqs3, 3, false, &lp, NULL, NULL, &err);
		P[i] = s - H;
		lora_train_forward(t, seqs3, 3, false, &lm, NULL, NULL, &err);
		P[i] = s;
		fd[i] = (lp - lm) / (2 * H);
		g[i] = G[i];
	}
	char buf[200];
	snprintf(buf, sizeof buf, "%s: whole-model LoRA gradient (7 targets, r 2)", what);
	report(buf, g, fd, np, 2e-3);
	free(g), free(fd);
	lora_train_free(t);
	tiny_free(&m);
}

/* Packing must not leak between sequences: loss of the pack = token-weighted
 * mean of each sequence alone. */
static void test_packing(void)
{
	struct tiny m;
	tiny_build(&m, false, false);
	struct lora_train_params p = lora_train_default_params();
	p.rank = 2;
	struct lora_train *t;
	struct lora_err err;
	lora_train_new(&m.b, &p, &t, &err);
	fill(lora_train_params_data(t), lora_train_n_params(t), -0.2, 0.2);
	double all, sum = 0;
	size_t tok, tt = 0;
	float nll[13], one[5];
	lora_train_forward(t, seqs3, 3, false, &all, &tok, nll, &err);
	double worst = 0;
	for (int i = 0, off = 0; i < 3; i++) {
		double l;
		size_t k;
		lora_train_forward(t, &seqs3[i], 1, false, &l, &k, one, &err);
		for (size_t j = 0; j < k; j++)
			worst = fmax(worst, fabs(one[j] - nll[off + j]));
		off += (int)k;
		sum += l * k;
		tt += k;
	}
	check_near(all, sum / tt, 1e-6, 1e-6, "packed loss = token-weighted mean of single ones");
	check(worst < 1e-5, "per-token nll packed vs alone: max diff %.3g", worst);
	lora_train_free(t);
	tiny_free(&m);
}

static void test_training(void)
{
	struct tiny m;
	tiny_build(&m, true, false);
	struct lora_train_params p = lora_train_default_params();
	p.rank = 4;
	p.lr = 1e-2;
	p.seed = 3;
	struct lora_train *t, *t2, *t3;
	struct lora_err err;
	lora_train_new(&m.b, &p, &t, &err);
	lora_train_new(&m.b, &p, &t2, &err);
	p.seed = 4;
	lora_train_new(&m.b, &p, &t3, &err);
	/* initialisation: B = 0, A ~ U(-1/√in, 1/√in) (PEFT's kaiming_uniform_(a=√5)) */
	struct lora_adapter ad;
	lora_train_adapter(t, "x", "tiny", &ad, &err);
	float amax = 0, bmax = 0;
	int shapes = ad.n_modules == 4;	/* 2 layers × q, v */
	for (size_t i = 0; i < ad.n_modules; i++) {
		const struct lora_module *mo = &ad.modules[i];
		const float *a = mo->a.data, *b = mo->b.data;
		for (int64_t j = 0; j < mo->a.shape[0] * mo->a.shape[1]; j++)
			amax = fmaxf(amax, fabsf(a[j]));
		for (int64_t j = 0; j < mo->b.shape[0] * mo->b.shape[1]; j++)
			bmax = fmaxf(bmax, fabsf(b[j]));
		shapes &= mo->a.shape[0] == 4 && mo->a.shape[1] == 16 && mo->b.shape[1] == 4 &&
			   mo->b.shape[0] == (i % 2 ? 8 : 16);
	}
	check(bmax == 0 && amax <= 0.25f && amax > 0.2f,
	      "init: B = 0, max|A| = %.4f within 1/sqrt(16) = 0.25", amax);
	check(shapes && strcmp(ad.modules[1].module, "model.layers.0.self_attn.v_proj") == 0 &&
	      ad.r == 4 && ad.alpha == 8, "adapter export: %zu modules, names, shapes, alpha 2r",
	      ad.n_modules);
	lora_adapter_free(&ad);
	double l0 = 0, l = 0, l2 = 0, l3 = 0;
	size_t tok;
	for (int s = 0; s < 150; s++) {
		lora_train_step(t, seqs3, 3, &l, &tok, &err);
		lora_train_step(t2, seqs3, 3, &l2, &tok, &err);
		lora_train_step(t3, seqs3, 3, &l3, &tok, &err);
		if (s == 0)
			l0 = l;
	}
	lora_train_forward(t, seqs3, 3, false, &l, &tok, NULL, &err);
	check(l < 0.3 * l0, "loss falls on a memorizable set: %.4f -> %.4f after 150 steps", l0, l);
	size_t np = lora_train_n_params(t);
	check(memcmp(lora_train_params_data(t), lora_train_params_data(t2), np * 4) == 0,
	      "same seed, same parameters after 150 steps");
	check(memcmp(lora_train_params_data(t), lora_train_params_data(t3), np * 4) != 0,
	      "another seed, other parameters");
	lora_train_free(t);
	lora_train_free(t2);
	lora_train_free(t3);
	tiny_free(&m);
}

static void test_errors(void)
{
	unsigned mask = 0;
	struct lora_err err = { 0 };
	check(lora_train_targets_parse("q_proj,v_proj", &mask, &err) == 0 &&
	      mask == ((1u << LORA_T_Q) | (1u << LORA_T_V)), "targets q_proj,v_proj");
	check(lora_train_targets_parse("q,k,down_proj", &mask, &err) == 0 &&
	      mask == ((1u << LORA_T_Q) | (1u << LORA_T_K) | (1u << LORA_T_DOWN)),
	      "targets short names");
	check(lora_train_targets_parse("all", &mask, &err) == 0 && mask == 127, "targets all");
	int r = lora_train_targets_parse("q_proj,c_attn", &mask, &err);
	check(r == LORA_EINVAL && strstr(err.msg, "'c_attn'"), "unknown target named: %s",
	      err.msg);
	struct tiny m;
	tiny_build(&m, true, false);
	struct lora_train_params p = lora_train_default_params();
	struct lora_train *t;
	lora_train_new(&m.b, &p, &t, &err);
	int32_t bad[3] = { 1, 40, 2 };
	struct lora_seq s = { bad, 2, bad + 2, 1 };
	double l;
	r = lora_train_forward(t, &s, 1, true, &l, NULL, NULL, &err);
	check(r == LORA_EINVAL && strstr(err.msg, "token id 40"), "id outside vocab: %s", err.msg);
	int32_t big[70] = { 0 };
	struct lora_seq s2 = { big, 60, big + 60, 10 };
	r = lora_train_forward(t, &s2, 1, true, &l, NULL, NULL, &err);
	check(r == LORA_EINVAL && strstr(err.msg, "positions"), "too long: %s", err.msg);
	lora_train_free(t);
	p.rank = 0;
	r = lora_train_new(&m.b, &p, &t, &err);
	check(r == LORA_EINVAL, "rank 0 refused: %s", err.msg);
	tiny_free(&m);
}

int main(void)
{
	test_rmsnorm();
	test_rope();
	test_attention();
	test_swiglu();
	test_linear();
	test_crossentropy();
	test_whole(false, false, "untied head");
	test_whole(true, true, "tied head, q/k/v biases");
	test_packing();
	test_training();
	test_errors();
	return check_done();
}
