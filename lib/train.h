/*
 * train — LoRA training for the Llama family (llama, mistral, qwen2): a
 * forward pass that keeps its activations, a backward pass into the LoRA
 * factors only (the base weights are frozen), and AdamW.
 *
 * The loss is the one lora-eval reports for a decoder-only model: every
 * sequence is input ++ target, the row before target[k] scores target[k], and
 * the loss is the mean token cross-entropy over all target tokens of all the
 * sequences of a step (Hugging Face's padded-batch convention). The forward
 * math uses the kernels of lib/ops.h (lora_matmul, lora_rmsnorm, lora_silu,
 * lora_softmax_rows, lora_nll_row); the backward kernels live here, next to
 * the forwards they invert, in the style of llm.c's <layer>_backward. They
 * are public so that tests can check each one against finite differences.
 *
 * LoRA as in Hu et al. and PEFT: for an adapted Linear y = x·W^T,
 * y' = y + s·(x·A^T)·B^T with s = alpha/r, A [R, in] drawn Kaiming-uniform
 * with a = √5 (PEFT's init: bound = 1/√in), B [out, R] = 0. Everything is
 * deterministic for a seed (the generator is splitmix64, documented in
 * lora-train(1)), given the same OpenBLAS thread count.
 *
 * Limits: Llama-family decoders only (T5 and GPT-2 are refused by
 * lora_train_new_from_model with a message naming what is missing); f32
 * activations and optimizer state; attention probabilities are kept for every
 * layer and sequence (memory Σ NH·n_i² floats per layer), so very long
 * sequences cost memory. Packed sequences: positions restart at 0 in each.
 *
 * Dimension vocabulary (lib/ops.h): T tokens of a packed batch, C width,
 * NH query heads, NKV key/value heads, HS head size, F feed-forward width,
 * V vocabulary, R LoRA rank, L layers.
 */
#ifndef LORA_TRAIN_H
#define LORA_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"
#include "stream.h"

/* The seven Linear weights of a Llama layer LoRA may target, in PEFT's
 * module-name spelling (q_proj ... down_proj). */
enum lora_train_target {
	LORA_T_Q, LORA_T_K, LORA_T_V, LORA_T_O, LORA_T_GATE, LORA_T_UP, LORA_T_DOWN,
	LORA_T_COUNT
};
/* "q_proj" etc. for a target. */
const char *lora_train_target_name(int t);
/* Parse "q_proj,v_proj" (also "all") into a bit mask (1 << LORA_T_*).
 * LORA_EINVAL naming the unknown module otherwise. */
int lora_train_targets_parse(const char *s, unsigned *mask, struct lora_err *err);

/* Hyper-parameters of a Llama-family decoder. */
struct lora_train_config {
	int L, C, F, NH, NKV, HS, V;
	float eps;		/* rms_norm_eps */
	float rope_theta;
	/* rope_scaling: 0 none, 1 linear (positions / factor), 2 llama3 */
	int rope_kind;
	float rope_factor, rope_low, rope_high;
	int rope_orig_max;
	int max_positions;	/* 0 = unchecked */
};

/* Base weights, f32, row-major, Linear layout [out, in]. Biases may be NULL.
 * The trainer only reads them; they must outlive it. */
struct lora_train_layer {
	const float *ln1;			/* [C] input_layernorm */
	const float *wq, *wk, *wv, *wo;		/* [NH*HS,C] [NKV*HS,C] [NKV*HS,C] [C,NH*HS] */
	const float *bq, *bk, *bv, *bo;		/* [NH*HS] [NKV*HS] [NKV*HS] [C], or NULL */
	const float *ln2;			/* [C] post_attention_layernorm */
	const float *wg, *wu, *wd;		/* [F,C] [F,C] [C,F] */
};
struct lora_train_base {
	struct lora_train_config cfg;
	const float *embed;		/* [V, C] */
	struct lora_train_layer *layers;	/* [L], owned by the caller */
	const float *norm;		/* [C] */
	const float *head;		/* [V, C] (the embedding when tied) */
};

struct lora_train_params {
	int rank;		/* R, default 8 */
	double alpha;		/* default 2·rank when <= 0 */
	unsigned targets;	/* mask of LORA_T_*, default q_proj | v_proj */
	double lr;		/* default 1e-3 */
	double beta1, beta2, adam_eps;	/* 0.9, 0.999, 1e-8 (PyTorch's AdamW) */
	double weight_decay;	/* decoupled, on A and B; default 0 */
	uint64_t seed;		/* default 0 */
};
struct lora_train_params lora_train_default_params(void);

struct lora_train;	/* opaque: base view, LoRA parameters, grads, optimizer state */

/* A trainer over base weights given directly (tests build tiny models in
 * memory). Returns 0, LORA_EINVAL (bad shapes/params) or LORA_ENOMEM. */
int lora_train_new(const struct lora_train_base *base, const struct lora_train_params *p,
		   struct lora_train **out, struct lora_err *err);
/* A trainer over an open model: reads the config and weights through
 * lib/arch.h. Refuses non-Llama architectures (LORA_EUNSUPPORTED, naming the
 * model_type and what is missing). The model must outlive the trainer. */
int lora_train_new_from_model(struct lora_model *m, const struct lora_train_params *p,
			      struct lora_train **out, struct lora_err *err);
void lora_train_free(struct lora_train *t);

/* Forward over n packed sequences; *loss = mean target-token NLL, *tokens =
 * number of target tokens. With backward, the gradients of that loss are
 * ADDED into the gradient buffer (call lora_train_zero_grad first). nll, when
 * not NULL, receives each target token's NLL (Σ n_target floats). */
int lora_train_forward(struct lora_train *t, const struct lora_seq *seqs, size_t n,
		       bool backward, double *loss, size_t *tokens, float *nll,
		       struct lora_err *err);
void lora_train_zero_grad(struct lora_train *t);
/* One AdamW step from the current gradients (PyTorch AdamW: decoupled weight
 * decay p -= lr·wd·p, bias-corrected moments). */
void lora_train_adamw(struct lora_train *t);
/* zero_grad + forward(backward) + adamw: one optimizer step on a batch. */
int lora_train_step(struct lora_train *t, const struct lora_seq *seqs, size_t n, double *loss,
		    size_t *tokens, struct lora_err *err);

/* All LoRA parameters as one flat array (for each layer, for each target in
 * LORA_T order: A [R,in] then B [out,R]) and its gradient, same layout. */
size_t lora_train_n_params(const struct lora_train *t);
float *lora_train_params_data(struct lora_train *t);
float *lora_train_grads(struct lora_train *t);

/* The current factors as an adapter record: modules
 * "model.layers.<l>.self_attn.q_proj" ..., f32, r = rank, alpha as given;
 * name and base are copied (base may be NULL). Caller frees with
 * lora_adapter_free. */
int lora_train_adapter(const struct lora_train *t, const char *name, const char *base,
		       struct lora_adapter *out, struct lora_err *err);

/* ---- kernels (forward in lib/ops.h or here; backward here) ----
 * Each *_backward ADDS into its input gradients (llm.c convention), so the
 * caller zeroes them. */

/* RMSNorm backward: y = w ⊙ x / sqrt(mean(x²) + eps), x [T,C], dy [T,C] ->
 * dx [T,C] (+=). The weight is frozen: no dw. */
void lora_train_rmsnorm_backward(float *dx, const float *dy, const float *x, const float *w,
				 int T, int C, float eps);
/* RoPE (Hugging Face rotate_half: dimension j pairs with j + HS/2) in place
 * over x [T, nh*HS] with per-row positions pos [T]; cos/sin tables [P, HS/2].
 * The backward is the inverse rotation applied to the gradient. */
void lora_train_rope_forward(float *x, const int *pos, const float *cos_t, const float *sin_t,
			     int T, int nh, int HS);
void lora_train_rope_backward(float *dx, const int *pos, const float *cos_t,
			      const float *sin_t, int T, int nh, int HS);
/* Causal grouped-query attention of one sequence of n rows:
 * q [n, NH*HS], k, v [n, NKV*HS] -> out [n, NH*HS], keeping the probabilities
 * att [NH, n, n] (row i valid up to column i, zero after). Scale 1/√HS. */
void lora_train_attention_forward(float *out, float *att, const float *q, const float *k,
				  const float *v, int n, int NH, int NKV, int HS);
/* dout [n, NH*HS] -> dq [n,NH*HS], dk, dv [n,NKV*HS] (+=). scratch holds n
 * floats. */
void lora_train_attention_backward(float *dq, float *dk, float *dv, const float *dout,
				   const float *att, const float *q, const float *k,
				   const float *v, int n, int NH, int NKV, int HS, float *scratch);
/* SwiGLU: h = silu(g) ⊙ u over n floats; backward gives dg, du (+=). */
void lora_train_swiglu_forward(float *h, const float *g, const float *u, size_t n);
void lora_train_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
				const float *u, size_t n);
/* Linear with LoRA: y [T,out] = x [T,in]·W^T (+ bias) + s·(x·A^T)·B^T, saving
 * xa = x·A^T [T,R] for the backward (A/B/xa may be NULL: no LoRA). */
void lora_train_linear_forward(float *y, float *xa, const float *x, const float *w,
			       const float *bias, const float *a, const float *b, float s,
			       int T, int in, int out, int R);
/* dy [T,out] -> dx [T,in] (+=, skipped when dx is NULL), dA [R,in] and
 * dB [out,R] (+=, when a is not NULL). scratch holds T*R floats. */
void lora_train_linear_backward(float *dx, float *da, float *db, const float *dy,
				const float *x, const float *xa, const float *w, const float *a,
				const float *b, float s, int T, int in, int out, int R,
				float *scratch);
/* Cross-entropy of rows of logits [N, V] against targets [N]: replaces each
 * row by d(mean over `denom` tokens)/dlogits = (softmax - onehot) / denom and
 * returns Σ NLL (double). nll (may be NULL) gets each row's NLL. */
double lora_train_crossentropy_backward(float *logits, const int32_t *targets, int N, int V,
					double denom, float *nll);

#endif
