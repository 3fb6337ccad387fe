/*
 * linear — a Linear layer with LoRA deltas: y = x·W^T (+ bias) + Σ s·(x·A^T)·B^T.
 * lora_linear and struct lora_delta are declared in ops.h; this header adds
 * the two ways of applying the deltas and the rule that picks one (see
 * linear.c's header comment).
 */
#ifndef LORA_LINEAR_H
#define LORA_LINEAR_H

#include <stdbool.h>

#include "ops.h"

/* Whether folding the deltas into a copy of W is cheaper than applying them
 * unmerged for a call over T tokens: T·(in + out) > in·out, i.e. the two thin
 * products over the batch cost more than one rank-R update of the weight
 * (prompt-sized batches fold; short batches and generation steps do not). */
bool lora_linear_fold_pays(int T, int in, int out);

/* wf = W + Σ_d s_d·B_d·A_d in W's own layout: [out, in] when w_trans, else
 * [in, out] (GPT-2 Conv1D). wf holds in·out floats and must not alias w.
 * Runs on the worker pool. */
void lora_linear_fold(float *wf, const float *w, bool w_trans, const struct lora_delta *deltas,
		      int n_deltas, int in, int out);

/* y[T,out] = beta·y + x[T,in]·W^T (+ bias) (+ each delta), beta 0 or 1.
 * With fold_buf (in·out floats) and when lora_linear_fold_pays, the deltas are
 * folded into fold_buf first and the product uses it (one sgemm; the result
 * equals the unmerged one up to f32 rounding); otherwise they are applied
 * unmerged, row-blocked on the worker pool, and scratch must hold T·max R
 * floats. fold_buf is scratch too: nothing is kept between calls. */
void lora_linear_ex(float *y, const float *x, const float *w, bool w_trans, const float *bias,
		    const struct lora_delta *deltas, int n_deltas, int T, int in, int out,
		    float beta, float *scratch, float *fold_buf);

#endif
