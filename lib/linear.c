/*
 * linear — a Linear layer with its LoRA deltas applied unmerged (see ops.h).
 */
#include "ops.h"

#include <stddef.h>

void lora_linear(float *y, const float *x, const float *w, bool w_trans, const float *bias,
		 const struct lora_delta *deltas, int n_deltas, int T, int in, int out,
		 float *scratch)
{
	lora_matmul(y, x, w, T, in, out, w_trans, 1.0f, 0.0f);
	if (bias)
		for (int t = 0; t < T; t++) {
			float *row = y + (size_t)t * out;
			for (int j = 0; j < out; j++)
				row[j] += bias[j];
		}
	for (int d = 0; d < n_deltas; d++) {
		const struct lora_delta *dl = &deltas[d];
		/* scratch[T,R] = x · A^T;  y += s · scratch · B^T */
		lora_matmul(scratch, x, dl->a, T, in, dl->r, true, 1.0f, 0.0f);
		lora_matmul(y, scratch, dl->b, T, dl->r, out, true, dl->scale, 1.0f);
	}
}
