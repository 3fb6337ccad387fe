/*
 * linear — a Linear layer with its LoRA deltas (ops.h, linear.h):
 *   y[T,out] = beta·y + x[T,in]·W^T + bias + Σ_d s_d·(x·A_d^T)·B_d^T
 * with W [out, in] (w_trans, the PyTorch Linear) or [in, out] (GPT-2's
 * Conv1D), A [R, in], B [out, R]. The base weight W is never written.
 *
 * Two ways to apply the deltas, chosen per call by lora_linear_fold_pays when
 * the caller passes a fold buffer (lib/model.c passes one only under
 * LORA_LINEAR_FOLD=1: the default is the unmerged form lora-eval(1) promises,
 * which bench_forward measured within 1% of the fold on a quiet machine):
 *   - unmerged: the base sgemm, then, row-blocked over the tokens on the
 *     worker pool (one OpenBLAS thread per worker), u = x_blk·A^T [blk, R]
 *     and y_blk += s·u·B^T while the block is in cache. Costs 2·T·R·(in+out)
 *     FLOPs in thin products; nothing depends on the previous call.
 *   - folded: W' = W + Σ s·B·A into the caller's fold buffer (one copy of W
 *     and one rank-R sgemm, 2·out·in·R FLOPs, independent of T), then one
 *     sgemm with W'. Cheaper when T·(in+out) > in·out: prompt-sized batches.
 *     The buffer is scratch, refolded at every call, so a new adapter can
 *     never see a stale fold. The result equals the unmerged product up to
 *     f32 rounding (the delta is rounded into W' before the product).
 * A weight with a bf16 packed copy (a model opened with bf16, lib/bf16.h)
 * runs its base product through that copy and never folds.
 * Extra memory: the fold buffer, one in·out weight (the largest adapted
 * Linear), owned by the caller (lib/model.c keeps one per model).
 * Limits: sizes are int, as in BLAS; callers check them.
 */
#include "linear.h"
#include "bf16.h"

#include <stddef.h>
#include <string.h>

/* Rows of x per unit of the unmerged delta: small enough that y's block and
 * u stay in L2 between the two thin products, large enough that each product
 * is still a real sgemm and OpenBLAS's per-call cost stays small (on the
 * SmolLM-135M q/v shapes at T = 995, 128 rows ran the delta ~10% faster
 * than 64 and 32 rows ~50% slower). */
enum { DELTA_BLK = 128, FOLD_BLK = 64 };

bool lora_linear_fold_pays(int T, int in, int out)
{
	return (double)T * ((double)in + out) > (double)in * out;
}

static void add_bias(float *y, const float *bias, int T, int out)
{
	for (int t = 0; t < T; t++) {
		float *row = y + (size_t)t * out;
		for (int j = 0; j < out; j++)
			row[j] += bias[j];
	}
}

/* ---- folded ---- */

struct fold_job {
	float *wf;
	const float *w;
	bool w_trans;
	const struct lora_delta *d;
	int nd, in, out, rows, cols;
};

/* Rows [o, o+m) of wf: copy W's rows, then add each s·B·A (or its transpose
 * for the [in, out] layout) restricted to those rows. */
static void fold_unit(void *ctx, int u, int worker)
{
	(void)worker;
	const struct fold_job *j = ctx;
	int o = u * FOLD_BLK, m = j->rows - o < FOLD_BLK ? j->rows - o : FOLD_BLK;
	float *dst = j->wf + (size_t)o * j->cols;
	memcpy(dst, j->w + (size_t)o * j->cols, (size_t)m * j->cols * sizeof *dst);
	for (int k = 0; k < j->nd; k++) {
		const struct lora_delta *d = &j->d[k];
		if (j->w_trans)	/* [out, in] rows o..: B[o.., R] · A[R, in] */
			lora_gemm(false, false, m, j->in, d->r, d->scale, d->b + (size_t)o * d->r, d->r,
				  d->a, j->in, 1.0f, dst, j->cols);
		else		/* [in, out] rows o..: A^T[o.., R] · B^T[R, out] */
			lora_gemm(true, true, m, j->out, d->r, d->scale, d->a + o, j->in, d->b, d->r,
				  1.0f, dst, j->cols);
	}
}

void lora_linear_fold(float *wf, const float *w, bool w_trans, const struct lora_delta *deltas,
		      int n_deltas, int in, int out)
{
	struct fold_job j = {wf, w, w_trans, deltas, n_deltas, in, out,
			     w_trans ? out : in, w_trans ? in : out};
	lora_parallel_for((j.rows + FOLD_BLK - 1) / FOLD_BLK, fold_unit, &j);
}

/* ---- unmerged ---- */

struct delta_job {
	float *y;
	const float *x;
	const struct lora_delta *d;
	int nd, T, in, out, rmax;
	float *scratch;
};

/* Tokens [t, t+m): u = x·A^T into the block's own rows of scratch, rows of
 * the largest rank (so blocks working on deltas of different ranks never
 * share any), then y += s·u·B^T. */
static void delta_unit(void *ctx, int u, int worker)
{
	(void)worker;
	const struct delta_job *j = ctx;
	int t = u * DELTA_BLK, m = j->T - t < DELTA_BLK ? j->T - t : DELTA_BLK;
	const float *x = j->x + (size_t)t * j->in;
	float *y = j->y + (size_t)t * j->out;
	for (int k = 0; k < j->nd; k++) {
		const struct lora_delta *d = &j->d[k];
		float *ub = j->scratch + (size_t)t * j->rmax;
		lora_gemm(false, true, m, d->r, j->in, 1.0f, x, j->in, d->a, j->in, 0.0f, ub, d->r);
		lora_gemm(false, true, m, j->out, d->r, d->scale, ub, d->r, d->b, d->r, 1.0f, y,
			  j->out);
	}
}

void lora_linear_ex(float *y, const float *x, const float *w, bool w_trans, const float *bias,
		    const struct lora_delta *deltas, int n_deltas, int T, int in, int out,
		    float beta, float *scratch, float *fold_buf)
{
	if (T <= 0)
		return;
	/* a model opened with bf16 has a packed copy of w (lib/bf16.h), which
	 * a fold cannot change: its deltas stay unmerged (and f32) */
	bool packed = lora_bf16_lookup(w) != NULL;
	if (n_deltas > 0 && fold_buf && !packed && lora_linear_fold_pays(T, in, out)) {
		lora_linear_fold(fold_buf, w, w_trans, deltas, n_deltas, in, out);
		w = fold_buf;
		n_deltas = 0;
	}
	if (!packed || !lora_bf16_linear(y, x, w, T, in, out, beta))
		lora_matmul(y, x, w, T, in, out, w_trans, 1.0f, beta);
	if (bias)
		add_bias(y, bias, T, out);
	if (n_deltas <= 0)
		return;
	int rmax = 0;
	for (int k = 0; k < n_deltas; k++)
		rmax = deltas[k].r > rmax ? deltas[k].r : rmax;
	struct delta_job j = {y, x, deltas, n_deltas, T, in, out, rmax, scratch};
	lora_parallel_for((T + DELTA_BLK - 1) / DELTA_BLK, delta_unit, &j);
}

void lora_linear(float *y, const float *x, const float *w, bool w_trans, const float *bias,
		 const struct lora_delta *deltas, int n_deltas, int T, int in, int out,
		 float *scratch)
{
	lora_linear_ex(y, x, w, w_trans, bias, deltas, n_deltas, T, in, out, 0.0f, scratch, NULL);
}
