/*
 * test_linear — lib/linear.c's two ways of applying LoRA deltas (unmerged,
 * row-blocked on the worker pool; folded into a scratch copy of the weight)
 * against a naive float64 reference y = beta·y0 + x·W^T + bias + Σ s·x·A^T·B^T,
 * for both weight layouts, with and without bias, zero to three deltas of
 * different ranks, odd sizes, beta 0 and 1, and T on both sides of the fold
 * crossover; the two paths against each other; and that a new adapter is
 * never answered from an earlier one's fold (at the kernel and, with
 * $LORA_SHARED, through a real model: golden/models/llama-tiny).
 * Tolerances: f32 products over K <= 300 terms of size <= 1, so 5e-6 of
 * max(1, |ref|) (a float32 sum's rounding, about 10x what was seen; the
 * float64 reference is exact).
 */
#include "check.h"

#include <stdint.h>

#include "linear.h"
#include "model.h"
#include "peft.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rnd(size_t n, float scale)
{
	float *p = malloc((n ? n : 1) * sizeof *p);
	for (size_t i = 0; i < n; i++)
		p[i] = frand() * scale;
	return p;
}

/* The reference, in double: W [out,in] when w_trans, else [in,out]. */
static void naive(double *y, const float *y0, float beta, const float *x, const float *w,
		  bool w_trans, const float *bias, const struct lora_delta *d, int nd, int T,
		  int in, int out)
{
	for (int t = 0; t < T; t++)
		for (int o = 0; o < out; o++) {
			double s = beta ? (double)y0[(size_t)t * out + o] : 0;
			for (int i = 0; i < in; i++)
				s += (double)x[(size_t)t * in + i] *
				     (w_trans ? w[(size_t)o * in + i] : w[(size_t)i * out + o]);
			if (bias)
				s += bias[o];
			for (int k = 0; k < nd; k++) {
				double acc = 0;
				for (int r = 0; r < d[k].r; r++) {
					double u = 0;
					for (int i = 0; i < in; i++)
						u += (double)x[(size_t)t * in + i] * d[k].a[(size_t)r * in + i];
					acc += u * d[k].b[(size_t)o * d[k].r + r];
				}
				s += d[k].scale * acc;
			}
			y[(size_t)t * out + o] = s;
		}
}

/* Max |got - want| / max(1, max |want|) over n values. */
static double rel_err(const float *got, const double *want, size_t n)
{
	double worst = 0, big = 1;
	for (size_t i = 0; i < n; i++)
		big = fabs(want[i]) > big ? fabs(want[i]) : big;
	for (size_t i = 0; i < n; i++) {
		double e = fabs(got[i] - want[i]);
		worst = e > worst || isnan(e) ? e : worst;
	}
	return worst / big;
}

#define TOL 5e-6

static int close_to(const float *got, const double *want, size_t n, const char *what)
{
	double e = rel_err(got, want, n);
	return check(e <= TOL, "%s: max diff %.3g of max(1, |ref|) (tol %.3g)", what, e, TOL);
}

struct deltas {
	struct lora_delta d[3];
	float *mem[6];
};

static void make_deltas(struct deltas *ds, int nd, int in, int out)
{
	static const int ranks[3] = {4, 1, 7};
	for (int k = 0; k < nd; k++) {
		int r = ranks[k];
		ds->mem[2 * k] = rnd((size_t)r * in, 0.3f);
		ds->mem[2 * k + 1] = rnd((size_t)out * r, 0.3f);
		ds->d[k] = (struct lora_delta){r, 0.5f + 0.75f * k, ds->mem[2 * k], ds->mem[2 * k + 1]};
	}
}

static void free_deltas(struct deltas *ds, int nd)
{
	for (int k = 0; k < 2 * nd; k++)
		free(ds->mem[k]);
}

/* One shape: every path at T on both sides of the crossover and beta 0/1
 * against the reference, reported as one check with each path's worst. */
static void check_shape(int in, int out, bool w_trans, bool with_bias, int nd)
{
	float *w = rnd((size_t)in * out, 0.2f), *bias = with_bias ? rnd((size_t)out, 1) : NULL;
	struct deltas ds;
	make_deltas(&ds, nd, in, out);
	int cross = (int)((double)in * out / (in + out));
	/* the last: three row blocks of the unmerged delta (linear.c's
	 * DELTA_BLK, 128), the third ragged */
	int Ts[5] = {1, cross > 1 ? cross : 2, cross + 1, 3 * cross + 5, 2 * 128 + 37};
	double e_lin = 0, e_unm = 0, e_fold = 0, e_w = 0;
	int folded = 0, untouched = 1;
	for (int ti = 0; ti < 5; ti++) {
		int T = Ts[ti];
		size_t n = (size_t)T * out;
		float *x = rnd((size_t)T * in, 1), *y0 = rnd(n, 1);
		float *y = malloc(n * sizeof *y), *fold = rnd((size_t)in * out, 1);
		float *scratch = malloc((size_t)T * 8 * sizeof *scratch);
		double *ref = malloc(n * sizeof *ref), e;
		bool pays = lora_linear_fold_pays(T, in, out) && nd;
		for (int beta = 0; beta <= 1; beta++) {
			naive(ref, y0, (float)beta, x, w, w_trans, bias, ds.d, nd, T, in, out);
			if (!beta) {
				lora_linear(y, x, w, w_trans, bias, ds.d, nd, T, in, out, scratch);
				e = rel_err(y, ref, n);
				e_lin = e > e_lin || isnan(e) ? e : e_lin;
			}
			memcpy(y, y0, n * sizeof *y);
			lora_linear_ex(y, x, w, w_trans, bias, ds.d, nd, T, in, out, (float)beta, scratch,
				       NULL);
			e = rel_err(y, ref, n);
			e_unm = e > e_unm || isnan(e) ? e : e_unm;
			memcpy(y, y0, n * sizeof *y);
			fold[0] = 12345.0f;
			lora_linear_ex(y, x, w, w_trans, bias, ds.d, nd, T, in, out, (float)beta, scratch,
				       fold);
			e = rel_err(y, ref, n);
			e_fold = e > e_fold || isnan(e) ? e : e_fold;
			folded += pays;
			if (!pays && fold[0] != 12345.0f)
				untouched = 0;
		}
		free(x);
		free(y0);
		free(y);
		free(fold);
		free(scratch);
		free(ref);
	}
	/* the fold itself: W + Σ s·B·A in W's layout */
	if (nd) {
		float *wf = malloc((size_t)in * out * sizeof *wf);
		double *ref = malloc((size_t)in * out * sizeof *ref);
		lora_linear_fold(wf, w, w_trans, ds.d, nd, in, out);
		for (int o = 0; o < out; o++)
			for (int i = 0; i < in; i++) {
				double s = w_trans ? w[(size_t)o * in + i] : w[(size_t)i * out + o];
				for (int k = 0; k < nd; k++)
					for (int r = 0; r < ds.d[k].r; r++)
						s += (double)ds.d[k].scale * ds.d[k].b[(size_t)o * ds.d[k].r + r] *
						     ds.d[k].a[(size_t)r * in + i];
				ref[w_trans ? (size_t)o * in + i : (size_t)i * out + o] = s;
			}
		e_w = rel_err(wf, ref, (size_t)in * out);
		free(wf);
		free(ref);
	}
	check(e_lin <= TOL && e_unm <= TOL && e_fold <= TOL && e_w <= TOL && untouched &&
		      (folded > 0) == (nd > 0),
	      "in %d out %d %s%s, %d deltas, T %d..%d, beta 0/1: max diff of max(1, |ref|): "
	      "lora_linear %.2g, unmerged %.2g, with fold buffer %.2g (%d calls folded), "
	      "W + sBA %.2g (tol %.2g)%s",
	      in, out, w_trans ? "[out,in]" : "[in,out]", bias ? " +bias" : "", nd, Ts[0], Ts[3] > Ts[4] ? Ts[3] : Ts[4],
	      e_lin, e_unm, e_fold, folded, e_w, TOL,
	      untouched ? "" : "; the fold buffer was written when folding does not pay");
	free_deltas(&ds, nd);
	free(w);
	free(bias);
}

/* Two adapters in turn through one fold buffer: each answer is its own. */
static void check_switch(void)
{
	int in = 45, out = 70, T = 120;
	float *w = rnd((size_t)in * out, 0.2f), *x = rnd((size_t)T * in, 1);
	float *y = malloc((size_t)T * out * sizeof *y), *fold = malloc((size_t)in * out * sizeof *fold);
	float *scratch = malloc((size_t)T * 8 * sizeof *scratch);
	double *ref = malloc((size_t)T * out * sizeof *ref);
	struct deltas d1, d2;
	make_deltas(&d1, 1, in, out);
	make_deltas(&d2, 2, in, out);
	check(lora_linear_fold_pays(T, in, out), "T %d folds for in %d out %d", T, in, out);
	lora_linear_ex(y, x, w, true, NULL, d1.d, 1, T, in, out, 0, scratch, fold);
	naive(ref, NULL, 0, x, w, true, NULL, d1.d, 1, T, in, out);
	close_to(y, ref, (size_t)T * out, "first adapter through the fold buffer");
	lora_linear_ex(y, x, w, true, NULL, d2.d, 2, T, in, out, 0, scratch, fold);
	naive(ref, NULL, 0, x, w, true, NULL, d2.d, 2, T, in, out);
	close_to(y, ref, (size_t)T * out, "second adapter through the same buffer gives its own answer");
	lora_linear_ex(y, x, w, true, NULL, NULL, 0, T, in, out, 0, scratch, fold);
	naive(ref, NULL, 0, x, w, true, NULL, NULL, 0, T, in, out);
	close_to(y, ref, (size_t)T * out, "no adapter after both gives the base product");
	free_deltas(&d1, 1);
	free_deltas(&d2, 2);
	free(w);
	free(x);
	free(y);
	free(fold);
	free(scratch);
	free(ref);
}

static void check_rule(void)
{
	check(!lora_linear_fold_pays(1, 576, 576) && !lora_linear_fold_pays(288, 576, 576) &&
		      lora_linear_fold_pays(289, 576, 576) && lora_linear_fold_pays(995, 576, 192) &&
		      !lora_linear_fold_pays(144, 576, 192),
	      "fold rule T·(in+out) > in·out (576x576 folds from T 289, 576->192 from T 145)");
}

/* Through a model: adapter 1, adapter 2, adapter 1 again, each against a
 * fresh attach with folding disabled (LORA_LINEAR_FOLD=0, read at attach). */
static int nll_with(struct lora_model *m, const struct lora_adapter *a, bool fold,
		    const struct lora_seq *seqs, size_t n, float *nll, struct lora_err *err)
{
	setenv("LORA_LINEAR_FOLD", fold ? "1" : "0", 1);
	int rc = lora_model_set_adapter(m, a, err);
	unsetenv("LORA_LINEAR_FOLD");
	return rc < 0 ? rc : lora_model_nll(m, seqs, n, nll, err);
}

static void check_model(void)
{
	const char *dir = check_shared("golden/models/llama-tiny");
	const char *p1 = check_shared("golden/adapters/llama-tiny/extra_r8_all");
	const char *p2 = check_shared("golden/adapters/llama-tiny/pool_0");
	if (!dir || !p1 || !p2) {
		check_skip("adapter switch through a model (no $LORA_SHARED golden llama-tiny)");
		return;
	}
	struct lora_err err = {0};
	struct lora_model *m = NULL;
	struct lora_adapter a1 = {0}, a2 = {0};
	if (!check(lora_model_open(dir, &m, &err) == 0 && lora_peft_read(p1, &a1, &err) == 0 &&
		   lora_peft_read(p2, &a2, &err) == 0,
		   "open llama-tiny and two adapters (%s)", err.msg))
		goto out;
	/* 4 sequences of 30 + 10 tokens: T = 4 x 39 packed rows, above the fold
	 * crossover of every Linear of this model (32 for q, 47 for the MLP) */
	enum { NS = 4, NI = 30, NT = 10 };
	int32_t in[NS][NI], tg[NS][NT];
	struct lora_seq seqs[NS];
	for (int s = 0; s < NS; s++) {
		for (int i = 0; i < NI; i++)
			in[s][i] = 3 + (int32_t)((s * 131 + i * 17) % 500);
		for (int i = 0; i < NT; i++)
			tg[s][i] = 3 + (int32_t)((s * 71 + i * 29) % 500);
		seqs[s] = (struct lora_seq){in[s], NI, tg[s], NT};
	}
	float f1[NS * NT], f2[NS * NT], f1b[NS * NT], u1[NS * NT], u2[NS * NT], base[NS * NT];
	float base0[NS * NT];
	int rc = nll_with(m, NULL, true, seqs, NS, base0, &err);
	rc = rc ? rc : nll_with(m, &a1, true, seqs, NS, f1, &err);
	rc = rc ? rc : nll_with(m, &a2, true, seqs, NS, f2, &err);
	rc = rc ? rc : nll_with(m, &a1, true, seqs, NS, f1b, &err);
	rc = rc ? rc : nll_with(m, &a1, false, seqs, NS, u1, &err);
	rc = rc ? rc : nll_with(m, &a2, false, seqs, NS, u2, &err);
	rc = rc ? rc : nll_with(m, NULL, true, seqs, NS, base, &err);
	if (!check(rc == 0, "model passes run (%s)", err.msg))
		goto out;
	check_close_f32(f1, u1, NS * NT, 1e-5, 1e-5, "adapter 1: folded nll = unmerged nll");
	check_close_f32(f2, u2, NS * NT, 1e-5, 1e-5, "adapter 2 after adapter 1: folded = unmerged");
	check_close_f32(f1b, f1, NS * NT, 0, 0, "adapter 1 again: the same numbers as the first time");
	double d = 0;
	for (int i = 0; i < NS * NT; i++)
		d = fabs(f2[i] - f1[i]) > d ? fabs(f2[i] - f1[i]) : d;
	check(d > 1e-4, "the two adapters give different nll (max diff %.3g)", d);
	check_close_f32(base, base0, NS * NT, 0, 0, "detaching gives the base model's nll back");
out:
	lora_adapter_free(&a1);
	lora_adapter_free(&a2);
	lora_model_close(m);
}

int main(void)
{
	check_rule();
	static const int shapes[][2] = {{37, 23}, {64, 64}, {19, 130}, {300, 7}};
	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
		for (int wt = 0; wt <= 1; wt++)
			for (int nd = 0; nd <= 3; nd += (s % 2 ? 3 : 1))
				check_shape(shapes[s][0], shapes[s][1], wt, (nd + wt) % 2 == 0, nd);
	check_switch();
	check_model();
	return check_done();
}
