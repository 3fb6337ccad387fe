/*
 * merge — combining a pool of adapters with weights into one adapter.
 *
 * Notation: s_i = scale of adapter i's module (alpha/r or alpha/sqrt r), w_i
 * its weight, ΔW_i = s_i B_i A_i.
 *   LORAHUB  A = Σ w_i √s_i A_i, B = Σ w_i √s_i B_i, result scale 1 (the
 *            LoraHub rule; cross terms included; equal ranks required)
 *   LINEAR   exact Σ w_i ΔW_i by concatenation (rank Σ r_i)
 *   SVD      exact sum truncated to rank k via QR + small SVD
 *   TIES, DARE, MAGNITUDE  on dense ΔW_i per module, refactorized by SVD
 *   MEAN     w_i = 1/N with the LORAHUB rule (AdapterSoup)
 * The merged adapter's modules are the union of the pool's, in first-seen
 * order; every output tensor is f32.
 */
#ifndef LORA_MERGE_H
#define LORA_MERGE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "stream.h"

enum lora_merge_method {
	LORA_MERGE_LORAHUB,
	LORA_MERGE_LINEAR,
	LORA_MERGE_SVD,
	LORA_MERGE_TIES,
	LORA_MERGE_DARE,
	LORA_MERGE_MAGNITUDE,
	LORA_MERGE_MEAN,
};

struct lora_merge_params {
	enum lora_merge_method method;
	int rank;		/* svd/ties/dare/magnitude target rank; 0 = max r_i */
	double density;		/* ties/dare/magnitude, in (0, 1] */
	int sign_frequency;	/* ties: 0 = total (sum) sign election, 1 = frequency */
	uint64_t seed;		/* dare */
	int verbose;		/* fill report with per-module truncation errors */
};

struct lora_merge_params lora_merge_default_params(void);
/* "lorahub" etc. -> method; 0 or LORA_EINVAL. */
int lora_merge_method_parse(const char *s, enum lora_merge_method *out);
const char *lora_merge_method_name(enum lora_merge_method m);

/* Merge pool[0..n) with weights w[0..n) into *out (name and base copied from
 * pool[0]; the caller renames and adds meta). Returns 0 or a LORA_E* code;
 * weights must be finite. report (may be NULL) receives one line per module
 * with the relative Frobenius error of a truncation, when verbose. */
int lora_merge(const struct lora_adapter *const *pool, size_t n, const double *w,
	       const struct lora_merge_params *p, struct lora_adapter *out,
	       char **report, struct lora_err *err);

#endif
