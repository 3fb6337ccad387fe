/*
 * arch — the private interface between model.c and each architecture
 * (t5.c, llama.c, gpt2.c). Not installed, not for tools.
 *
 * model.c opens the directory, parses config.json, maps the safetensors
 * shards, loads the tokenizer, then calls arch->load, which reads its
 * hyper-parameters from m->config and fetches its weights with
 * lora_model_weight(). Adapters: model.c resolves each adapter module to a
 * weight name ("<module>.weight") and keeps the deltas; an architecture asks
 * for a weight's deltas with lora_model_deltas() at forward time, so a new
 * adapter needs no reload.
 */
#ifndef LORA_ARCH_H
#define LORA_ARCH_H

#include "doc.h"
#include "model.h"
#include "ops.h"
#include "st.h"

struct lora_arch {
	const char *name;
	int (*load)(struct lora_model *m, struct lora_err *err);
	void (*free)(struct lora_model *m);
	int (*nll)(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		   struct lora_err *err);
	int (*logits)(struct lora_model *m, const struct lora_seq *seq, float **logits,
		      size_t *rows, struct lora_err *err);
	int (*generate)(struct lora_model *m, const int32_t *input, size_t n_input,
			size_t max_new, int32_t *out, size_t *n_out, struct lora_err *err);
};

extern const struct lora_arch lora_arch_t5, lora_arch_llama, lora_arch_gpt2;

/* Fields an architecture may read and set. */
struct lora_model_core {
	struct lora_model_info info;	/* arch->load fills vocab, tokens, n_params */
	const struct lora_doc *config;	/* parsed config.json */
	const char *dir;
	void *arch_state;		/* owned by the architecture */
};
struct lora_model_core *lora_model_core(struct lora_model *m);

/* An f32 view of a base weight with exactly the given shape (ndim 1 or 2; pass
 * cols = 0 for 1-D). f32 tensors are returned straight from the mmap; f16/bf16
 * are converted once into memory the model owns. NULL with a message naming
 * the tensor and both shapes when missing or mis-shaped. */
const float *lora_model_weight(struct lora_model *m, const char *name, int64_t rows,
			       int64_t cols, struct lora_err *err);
/* Whether a tensor exists (for optional weights: lm_head, biases). */
bool lora_model_has_weight(const struct lora_model *m, const char *name);
/* Declare that weight `name` is a Linear with [out, in] (or Conv1D stored
 * [in, out] when conv1d) that adapters may target; arch->load calls this for
 * every adaptable weight so set_adapter can check shapes. */
int lora_model_declare_linear(struct lora_model *m, const char *name, int64_t out, int64_t in,
			      bool conv1d, struct lora_err *err);
/* The current adapter's deltas on weight `name` (NULL/0 when none). */
const struct lora_delta *lora_model_deltas(const struct lora_model *m, const char *name,
					   int *n_deltas);
/* A Linear with the current adapter's deltas on weight `name` (NULL or "" for
 * none): y[T,out] = beta·y + x[T,in]·W^T (+ bias) + Σ s·(x·A^T)·B^T, beta 0
 * or 1, W as lora_matmul's w_trans. Deltas are folded into the model's fold
 * buffer when that pays (lora_linear_fold_pays: prompt-sized T), else applied
 * unmerged; scratch holds T·max R floats (linear.h). Uses a buffer of the
 * model: one call at a time per model (as the forward passes are). */
void lora_model_linear(struct lora_model *m, const char *name, float *y, const float *x,
		       const float *w, bool w_trans, const float *bias, int T, int in, int out,
		       float beta, float *scratch);

#endif
