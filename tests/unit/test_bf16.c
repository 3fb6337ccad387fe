/*
 * test_bf16 — lib/bf16: the AVX512-BF16 product against a float64 reference
 * computed from the bf16-rounded inputs (so only f32 accumulation error
 * remains: tolerance 5e-7 of Σ|x·w| per element), on odd and tail shapes
 * (M, N, K below and across the 12 x 32 tile and the 384-input K block,
 * serial and both threaded splits),
 * both weight layouts, row strides, beta 0, 1 and 0.5; packing from bf16
 * data equals packing from f32; the error against the plain f32 product is
 * reported (and bounded loosely: bf16 inputs carry 8 significant bits);
 * the registry. The kernel checks skip (not pass) without AVX512-BF16.
 * With $LORA_SHARED: every golden model and stories260K opened once, their
 * golden examples' logits and NLLs with lora_model_set_bf16 off (exact f32)
 * and on, in the same process: the differences are printed (they are the
 * numbers lora-eval(1) quotes) and bounded loosely: mean NLL within 2e-2,
 * argmax agreement >= 90%.
 */
#include "check.h"
#include "fixtures.h"
#include "bf16.h"
#include "doc.h"
#include "model.h"
#include "ops.h"
#include "tensor.h"

#include <stdint.h>

/* One product: y[M, ldy] = beta*y + x[M, ldx] · W^T, checked against float64
 * over the bf16-rounded x and W. Returns the relative error of the bf16
 * result against the exact-input f32 product via *rel (max |d| / max |y|). */
static void one(int M, int K, int N, bool wt, int ldx, int ldy, float beta, double *rel)
{
	float *x = fx_rand_vec((size_t)M * ldx, 1);
	float *w = fx_rand_vec((size_t)N * K, 1);	/* [N,K] when wt, else [K,N] */
	float *y0 = fx_rand_vec((size_t)M * ldy, 1);
	float *y = malloc((size_t)M * ldy * sizeof *y);
	memcpy(y, y0, (size_t)M * ldy * sizeof *y);
	struct lora_bf16_mat *pw;
	struct lora_err err = {0};
	char what[160];
	snprintf(what, sizeof what, "bf16 gemm M=%d K=%d N=%d %s ldx=%d ldy=%d beta=%g", M, K, N,
		 wt ? "[N,K]" : "[K,N]", ldx, ldy, beta);
	if (lora_bf16_pack_f32(w, N, K, wt, &pw, &err) < 0) {
		check(0, "%s: pack: %s", what, err.msg);
		return;
	}
	int rc = lora_bf16_gemm(y, ldy, x, ldx, pw, M, beta);
	double worst = 0, worst_rel = 0, dmax = 0, ymax = 0;
	bool pad_ok = true;
	for (int i = 0; i < M; i++) {
		for (int n = 0; n < N; n++) {
			double s = 0, sabs = 0, sf = 0;
			for (int k = 0; k < K; k++) {
				float wv = wt ? w[(size_t)n * K + k] : w[(size_t)k * N + n];
				float xv = x[(size_t)i * ldx + k];
				double p = (double)lora_bf16_round(xv) * lora_bf16_round(wv);
				s += p;
				sabs += fabs(p);
				sf += (double)xv * wv;
			}
			double y_old = y0[(size_t)i * ldy + n];
			double want = beta == 0 ? s : beta * y_old + s;
			double wantf = beta == 0 ? sf : beta * y_old + sf;
			double got = y[(size_t)i * ldy + n];
			double d = fabs(got - want);
			double tol = 5e-7 * (sabs + fabs(beta * y_old)) + 1e-30;
			if (!(d / tol <= worst_rel))
				worst_rel = d / tol;
			worst = d > worst ? d : worst;
			dmax = fabs(got - wantf) > dmax ? fabs(got - wantf) : dmax;
			ymax = fabs(wantf) > ymax ? fabs(wantf) : ymax;
		}
		for (int n = N; n < ldy; n++)	/* the stride gap is never written */
			if (y[(size_t)i * ldy + n] != y0[(size_t)i * ldy + n])
				pad_ok = false;
	}
	check(rc == 0 && worst_rel <= 1 && pad_ok,
	      "%s: vs float64 of bf16 inputs max diff %.3g (%.2f of tol), gap untouched %d", what,
	      worst, worst_rel, pad_ok);
	*rel = dmax / ymax;
	lora_bf16_free(pw);
	free(x);
	free(w);
	free(y0);
	free(y);
}

static void test_shapes(void)
{
	static const int sh[][3] = {
		{1, 1, 1}, {1, 2, 3}, {5, 3, 7}, {12, 32, 32}, {13, 33, 17}, {11, 64, 31},
		{25, 255, 33}, {37, 256, 64}, {24, 257, 48}, {50, 611, 97}, {7, 1024, 65},
		{100, 96, 200},
		/* big enough for the threaded paths: split over M (weights to 4 MB)
		 * and over N (the last: 4.2 MB), with M, N and K tails */
		{130, 400, 40}, {37, 600, 701}, {13, 1001, 2100},
	};
	double worst_rel = 0;
	for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
		int M = sh[i][0], K = sh[i][1], N = sh[i][2];
		double rel;
		one(M, K, N, true, K, N, 0.0f, &rel);
		worst_rel = rel > worst_rel ? rel : worst_rel;
		one(M, K, N, i % 2 == 0, K + 3, N + 5, 1.0f, &rel);
		if (i % 3 == 0)
			one(M, K, N, false, K, N, 0.5f, &rel);
	}
	/* bf16 inputs carry 8 significant bits: relative error ~2^-9 per
	 * product; measured about 2e-3 of max |y| on random data (bench_bf16
	 * sees the same on the forward's shapes) */
	check(worst_rel < 1e-2, "bf16 gemm vs exact-input f32: relative error %.2e (max |d| / max |y|)",
	      worst_rel);
}

/* Packing raw bf16 data (as from a safetensors file) equals packing its
 * f32 values, in both layouts. */
static void test_pack_bf16(void)
{
	const int M = 9, K = 41, N = 35;
	float *x = fx_rand_vec((size_t)M * K, 1), *w = fx_rand_vec((size_t)N * K, 1);
	uint16_t *h = malloc((size_t)N * K * sizeof *h);
	for (size_t i = 0; i < (size_t)N * K; i++) {
		h[i] = lora_f32_to_bf16(w[i]);
		w[i] = lora_bf16_to_f32(h[i]);
	}
	for (int t = 0; t < 2; t++) {
		struct lora_bf16_mat *a, *b;
		struct lora_err err;
		lora_bf16_pack_f32(w, N, K, t == 0, &a, &err);
		lora_bf16_pack_bf16(h, N, K, t == 0, &b, &err);
		float *ya = calloc((size_t)M * N, sizeof *ya), *yb = calloc((size_t)M * N, sizeof *yb);
		lora_bf16_gemm(ya, N, x, K, a, M, 0.0f);
		lora_bf16_gemm(yb, N, x, K, b, M, 0.0f);
		check(memcmp(ya, yb, (size_t)M * N * sizeof *ya) == 0 &&
		      lora_bf16_rows(b) == N && lora_bf16_cols(b) == K &&
		      lora_bf16_bytes(a) >= (size_t)N * K * 2,
		      "bf16 pack from bf16 data (%s) equals pack from f32", t ? "[K,N]" : "[N,K]");
		lora_bf16_free(a);
		lora_bf16_free(b);
		free(ya);
		free(yb);
	}
	free(x);
	free(w);
	free(h);
}

static void test_round(void)
{
	/* nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1;
	 * 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6 -> 1 + 2^-6 */
	check(lora_bf16_round(1.0f + 0x1p-8f) == 1.0f &&
	      lora_bf16_round(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f &&
	      lora_bf16_round(1.0f + 0x1.2p-8f) == 1.0f + 0x1p-7f && lora_bf16_round(-2.5f) == -2.5f,
	      "bf16 round to nearest even");
}

static void test_registry(void)
{
	struct lora_bf16_mat *a, *b;
	struct lora_err err;
	float w[6] = {1, 2, 3, 4, 5, 6}, w2[6];
	lora_bf16_pack_f32(w, 2, 3, true, &a, &err);
	lora_bf16_pack_f32(w, 3, 2, true, &b, &err);
	check(lora_bf16_lookup(w) == NULL, "bf16 registry: empty lookup");
	int r1 = lora_bf16_register(w, a, &err), r2 = lora_bf16_register(w2, b, &err);
	int r3 = lora_bf16_register(w, b, &err);
	check(r1 == 0 && r2 == 0 && r3 == LORA_EINVAL && lora_bf16_lookup(w) == a &&
	      lora_bf16_lookup(w2) == b && lora_bf16_lookup(w + 1) == NULL,
	      "bf16 registry: register, duplicate refused (%s), lookup", err.msg);
	/* many keys: growth and tombstones */
	static float many[2000];
	bool ok = true;
	for (int i = 0; i < 2000; i++)
		ok &= lora_bf16_register(&many[i], a, &err) == 0;
	for (int i = 0; i < 2000; i += 2)
		lora_bf16_unregister(&many[i]);
	for (int i = 0; i < 2000; i++)
		ok &= lora_bf16_lookup(&many[i]) == (i % 2 ? a : NULL);
	for (int i = 1; i < 2000; i += 2)
		lora_bf16_unregister(&many[i]);
	lora_bf16_unregister(w);
	ok &= lora_bf16_lookup(w) == NULL && lora_bf16_lookup(w2) == b;
	lora_bf16_unregister(w2);
	ok &= lora_bf16_lookup(w2) == NULL;
	check(ok, "bf16 registry: 2000 keys, unregister half, then all");
	lora_bf16_free(a);
	lora_bf16_free(b);
}

static const int *int_array(const struct lora_doc *a, size_t *n, int32_t *buf, size_t cap)
{
	*n = 0;
	if (!a || a->type != LORA_DOC_ARRAY || a->u.arr.n > cap)
		return NULL;
	for (size_t i = 0; i < a->u.arr.n; i++)
		buf[i] = (int32_t)a->u.arr.items[i].u.i;
	*n = a->u.arr.n;
	return (const int *)buf;
}

/* One model: logits and NLLs of the golden examples, f32 vs bf16. */
static void model_diff(const char *name, const char *dir, const char *golden)
{
	struct lora_err err = {0};
	struct lora_model *m = NULL;
	struct lora_doc *g = NULL;
	if (lora_model_open(dir, &m, &err) < 0 || lora_doc_parse_file(golden, &g, &err) < 0) {
		check(0, "%s: open: %s", name, err.msg);
		lora_model_close(m);
		lora_doc_free(g);
		return;
	}
	const struct lora_doc *ex = lora_doc_get(g, "examples");
	size_t n_ex = ex && ex->type == LORA_DOC_ARRAY ? ex->u.arr.n : 0;
	enum { CAP = 4096 };
	static int32_t in[CAP], tg[CAP];
	double nll_sum[2] = {0, 0}, max_logit = 0, max_nll = 0;
	size_t rows_all = 0, agree = 0, n_tok = 0;
	bool ok = n_ex > 0;
	for (size_t e = 0; ok && e < n_ex; e++) {
		struct lora_seq sq = {0};
		int_array(lora_doc_get(&ex->u.arr.items[e], "input_ids"), &sq.n_input, in, CAP);
		int_array(lora_doc_get(&ex->u.arr.items[e], "target_ids"), &sq.n_target, tg, CAP);
		sq.input = in;
		sq.target = tg;
		float *lg[2] = {NULL, NULL}, *nll[2] = {NULL, NULL};
		size_t rows[2] = {0, 0};
		for (int b = 0; b < 2 && ok; b++) {
			nll[b] = calloc(sq.n_target + 1, sizeof(float));
			ok = lora_model_set_bf16(m, b == 1, &err) == 0 &&
			     lora_model_logits(m, &sq, &lg[b], &rows[b], &err) == 0 &&
			     lora_model_nll(m, &sq, 1, nll[b], &err) == 0;
		}
		int V = lora_model_info(m)->vocab;
		if (ok && rows[0] == rows[1]) {
			for (size_t r = 0; r < rows[0]; r++) {
				const float *a = lg[0] + r * V, *b = lg[1] + r * V;
				for (int v = 0; v < V; v++)
					if (fabs(a[v] - b[v]) > max_logit)
						max_logit = fabs(a[v] - b[v]);
				agree += lora_argmax(a, V) == lora_argmax(b, V);
			}
			rows_all += rows[0];
			for (size_t t = 0; t < sq.n_target; t++) {
				nll_sum[0] += nll[0][t];
				nll_sum[1] += nll[1][t];
				if (fabs(nll[0][t] - nll[1][t]) > max_nll)
					max_nll = fabs(nll[0][t] - nll[1][t]);
			}
			n_tok += sq.n_target;
		}
		for (int b = 0; b < 2; b++) {
			free(lg[b]);
			free(nll[b]);
		}
	}
	double dmean = n_tok ? fabs(nll_sum[1] - nll_sum[0]) / n_tok : 0;
	double agr = rows_all ? (double)agree / rows_all : 0;
	check(ok && n_tok > 0 && dmean < 2e-2 && agr >= 0.9,
	      "%s bf16 vs f32: mean NLL diff %.2e (f32 %.6f), max token NLL diff %.2e, "
	      "max logit diff %.2e, argmax agreement %zu/%zu%s%s",
	      name, dmean, n_tok ? nll_sum[0] / n_tok : 0, max_nll, max_logit, agree, rows_all,
	      ok ? "" : ": ", ok ? "" : err.msg);
	lora_model_close(m);
	lora_doc_free(g);
}

static void test_models(void)
{
	const char *gold = check_shared("golden");
	const char *sto = check_shared("stories260K-hf");
	if (!gold || !sto) {
		check_skip("bf16 model accuracy (LORA_SHARED golden/ and stories260K-hf/ needed)");
		return;
	}
	static const char *names[] = {"stories260K", "llama-tiny", "gpt2-tiny", "t5-tiny", "t5-tiny-v1"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		char dir[4096], golden[4096];
		if (i == 0)
			snprintf(dir, sizeof dir, "%s", sto);
		else
			snprintf(dir, sizeof dir, "%s/models/%s", gold, names[i]);
		snprintf(golden, sizeof golden, "%s/eval/%s/base.json", gold, names[i]);
		model_diff(names[i], dir, golden);
	}
}

int main(void)
{
	fx_srand(0x2545F4914F6CDD1Dull);
	test_round();
	test_registry();
	struct lora_err err;
	struct lora_bf16_mat *w;
	check(lora_bf16_pack_f32((float[1]){0}, 0, 1, true, &w, &err) == LORA_EINVAL && !w,
	      "bf16 pack refuses an empty shape: %s", err.msg);
	if (!lora_bf16_supported()) {
		check_skip("bf16 kernel checks (no AVX512-BF16 on this CPU, or LORA_BF16_UNSUPPORTED set)");
		return check_done();
	}
	test_shapes();
	test_pack_bf16();
	test_models();
	return check_done();
}
