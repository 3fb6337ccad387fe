/*
 * t5 — the T5 encoder-decoder (T5 v1.0 and v1.1 / Flan-T5) forward passes:
 * batched loss, logits of one sequence, and greedy decoding with a KV cache.
 *
 * It must match Hugging Face transformers' T5ForConditionalGeneration
 * (modeling_t5.py, 4.36) in float32:
 *   - pre-norm blocks, T5LayerNorm = RMS norm without mean subtraction,
 *     variance in f32, eps = layer_norm_epsilon;
 *   - attention without the 1/sqrt(d) scaling; a relative position bias
 *     (relative_attention_num_buckets, relative_attention_max_distance) that
 *     lives in block 0's self-attention of each stack and is added in every
 *     layer; bidirectional buckets in the encoder, causal in the decoder; the
 *     cross-attention has no position bias;
 *   - feed_forward_proj "relu" (wi, wo) or "gated-gelu" (wi_0, wi_1, wo with
 *     gelu_new = the tanh approximation); also the other forms HF accepts:
 *     "[gated-]ACT" with ACT relu, gelu (erf), gelu_new, silu;
 *   - one embedding shared.weight for both stacks (encoder/decoder
 *     embed_tokens copies are used only when shared.weight is missing);
 *   - tie_word_embeddings (default true, T5 v1.0): the decoder output is
 *     multiplied by d_model**-0.5 and projected with shared.weight; untied
 *     (v1.1/Flan): lm_head.weight, no rescale.
 * No size is assumed: every dimension comes from config.json and is checked
 * against the weights' shapes by lora_model_weight.
 *
 * Batching: the sequences of one call are packed (no padding) into one
 * [T, C] matrix per stack, so every Linear is one sgemm over all tokens of
 * all examples; attention runs per sequence and head. Packing gives the same
 * numbers as Hugging Face's right-padded batch (its padding gets exactly zero
 * attention weight). Calls with more than 4096 tokens are split into groups
 * of whole sequences to bound the activation slab.
 *
 * Memory and threads: activations live in one slab per model, kept between
 * calls (a LoraHub step repeats the same shapes) and freed with the model; it
 * is about (3 C + 4 D + 2 F) floats per packed token plus, per worker, one
 * block of attention scores (256 KB, or 64 rows of the longest sequence). So
 * one model must not run two forwards at once. Threads: every product goes
 * through lora_gemm, and everything runs on the worker pool
 * (lora_parallel_for). An encoder of at least 128 packed rows per worker
 * runs each layer as three pool jobs: a row phase (each worker takes one
 * slice of the token rows through norm, q, k, v: one single-threaded sgemm
 * per product over its rows), attention as one unit per (sequence, head)
 * (scores, bias, mask, softmax and the product with V stay in that worker's
 * cache), and a row phase through o, the residual, norm, wi, activation, wo;
 * the decoder's cross-attention keys and values of such an encoder are a
 * row phase too (see row_phases for when). Other calls (the decoder's few
 * target rows, greedy decoding, wide models) go step by step: lora_gemm splits each product by weight rows,
 * layer norms and the activation run in row chunks. On the Flan-T5-small
 * LoraHub step (bench_t5), the row phases (with the chunked head, see
 * head_rows) made the step ~15% faster than the step-by-step path: fewer
 * pool jobs, rows kept in a worker's cache, and for products with fewer
 * outputs than tokens less packing. The relative position bias tables are
 * built once per forward.
 * -DLORA_T5_PROFILE builds print the time of each phase at exit (stderr).
 *
 * Adapters: every q, k, v, o (SelfAttention, EncDecAttention), wi / wi_0 /
 * wi_1 / wo and an untied lm_head is declared adaptable; their deltas are
 * fetched from the model at each forward and applied unmerged by lora_linear.
 *
 * Dimension vocabulary (ops.h): T tokens, C d_model, NH heads, HS d_kv,
 * D = NH*HS (attention inner width), F d_ff, V vocab, NB buckets.
 */
#include "arch.h"
#include "bf16.h"
#include "linear.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum t5_actfn { ACT_RELU, ACT_GELU, ACT_GELU_NEW, ACT_SILU };

/* An adaptable Linear: weight [out, in] and its name for adapter lookups. */
struct t5_lin {
	const float *w;
	int out, in;
	char name[112];	/* "<module>.weight" */
};

/* One block. Encoder blocks leave the cross-attention fields empty. */
struct t5_block {
	const float *ln_sa, *ln_ca, *ln_ff;	/* [C] */
	struct t5_lin q, k, v, o;		/* self-attention: [D,C] x3, [C,D] */
	struct t5_lin cq, ck, cv, co;		/* cross-attention (decoder) */
	struct t5_lin wi, wi1, wo;		/* wi or wi_0 [F,C]; wi_1 [F,C] (gated); wo [C,F] */
};

struct t5 {
	int C, NH, HS, D, F, V, NB, maxd, n_enc, n_dec;
	float eps;
	enum t5_actfn act;
	bool gated, tied;
	int eos, start;
	const float *embed;		/* [V, C] shared.weight */
	struct t5_lin head;		/* [V, C]: lm_head or shared.weight when tied */
	const float *rel_enc, *rel_dec;	/* [NB, NH] relative_attention_bias */
	const float *ln_enc, *ln_dec;	/* [C] final layer norms */
	struct t5_block *enc, *dec;
	float *slab;			/* activations, kept between calls (see get_slab) */
	size_t slab_floats;
};

/* ------------------------------------------------------------------ */
/* config and weights */

/* Config readers; cfg_name is "DIR/config.json", for messages. */

/* An int member with a default; JSON null counts as absent. */
static int cfg_int(const struct lora_doc *cfg, const char *cfg_name, const char *key, int64_t def,
		   int64_t lo, int64_t hi, int *out, struct lora_err *err)
{
	int64_t v = def;
	const struct lora_doc *n = lora_doc_get(cfg, key);
	if (n && n->type != LORA_DOC_NULL) {
		int rc = lora_doc_get_int(cfg, key, cfg_name, &v, err);
		if (rc < 0)
			return rc;
	}
	if (v < lo || v > hi)
		return lora_errf(err, LORA_EINVAL, "%s: '%s' is %lld, expected %lld..%lld",
				 cfg_name, key, (long long)v, (long long)lo, (long long)hi);
	*out = (int)v;
	return 0;
}

/* A token id that may also be written as a list (first element) or null. */
static int cfg_token(const struct lora_doc *cfg, const char *cfg_name, const char *key, int def,
		     int V, int *out, struct lora_err *err)
{
	const struct lora_doc *n = lora_doc_get(cfg, key);
	int64_t v = def;
	if (n && n->type == LORA_DOC_ARRAY && n->u.arr.n > 0)
		n = &n->u.arr.items[0];
	if (n && n->type == LORA_DOC_INT)
		v = n->u.i;
	else if (n && n->type != LORA_DOC_NULL && n->type != LORA_DOC_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "%s:%d:%d: '%s' must be an int", cfg_name,
				 n->line, n->col, key);
	if (v < -1 || v >= V)
		return lora_errf(err, LORA_EINVAL, "%s: '%s' is %lld, outside the vocabulary of %d",
				 cfg_name, key, (long long)v, V);
	*out = (int)v;
	return 0;
}

/* feed_forward_proj as HF's T5Config parses it: "[gated-]ACT"; "gated-gelu"
 * means gelu_new. */
static int parse_ffn(struct t5 *t, const char *cfg_name, const char *s, struct lora_err *err)
{
	const char *act = s;
	t->gated = false;
	if (strncmp(s, "gated-", 6) == 0) {
		t->gated = true;
		act = s + 6;
	}
	if (strcmp(act, "relu") == 0)
		t->act = ACT_RELU;
	else if (strcmp(act, "gelu") == 0)
		t->act = t->gated ? ACT_GELU_NEW : ACT_GELU;
	else if (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0)
		t->act = ACT_GELU_NEW;
	else if (strcmp(act, "silu") == 0 || strcmp(act, "swish") == 0)
		t->act = ACT_SILU;
	else
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: unsupported feed_forward_proj '%s' (expected relu, gated-gelu "
				 "or [gated-]relu/gelu/gelu_new/silu)", cfg_name, s);
	return 0;
}

static int read_config(struct t5 *t, const struct lora_doc *cfg, const char *cfg_name,
		       struct lora_err *err)
{
	const int big = 1 << 20;
	int rc, nd = -1;
	if ((rc = cfg_int(cfg, cfg_name, "vocab_size", 32128, 1, 1 << 24, &t->V, err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "d_model", 512, 1, big, &t->C, err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "d_kv", 64, 1, big, &t->HS, err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "num_heads", 8, 1, 4096, &t->NH, err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "d_ff", 2048, 1, big, &t->F, err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "num_layers", 6, 1, 4096, &t->n_enc, err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "num_decoder_layers", -1, -1, 4096, &nd, err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "relative_attention_num_buckets", 32, 4, 1 << 16, &t->NB,
			  err)) < 0 ||
	    (rc = cfg_int(cfg, cfg_name, "relative_attention_max_distance", 128, 1, 1 << 30,
			  &t->maxd, err)) < 0)
		return rc;
	t->n_dec = nd < 0 ? t->n_enc : nd;
	if (t->n_dec < 1)
		return lora_errf(err, LORA_EINVAL, "%s: 'num_decoder_layers' must be at least 1",
				 cfg_name);
	if ((int64_t)t->NH * t->HS > big)
		return lora_errf(err, LORA_EINVAL, "%s: num_heads * d_kv is too large", cfg_name);
	t->D = t->NH * t->HS;
	/* The causal buckets divide by log(max_distance / (num_buckets / 2)). */
	if (t->maxd <= t->NB / 2)
		return lora_errf(err, LORA_EINVAL,
				 "%s: 'relative_attention_max_distance' (%d) must exceed half of "
				 "'relative_attention_num_buckets' (%d)", cfg_name, t->maxd, t->NB);
	double eps = 1e-6;
	rc = lora_doc_get_double(cfg, "layer_norm_epsilon", cfg_name, &eps, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	if (!(eps >= 0 && eps < 1))
		return lora_errf(err, LORA_EINVAL, "%s: 'layer_norm_epsilon' is %g", cfg_name, eps);
	t->eps = (float)eps;
	const char *ffp = "relu";
	rc = lora_doc_get_string(cfg, "feed_forward_proj", cfg_name, &ffp, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	if ((rc = parse_ffn(t, cfg_name, ffp, err)) < 0)
		return rc;
	t->tied = true;
	rc = lora_doc_get_bool(cfg, "tie_word_embeddings", cfg_name, &t->tied, err);
	if (rc < 0 && rc != LORA_ENOTFOUND)
		return rc;
	int pad;
	if ((rc = cfg_token(cfg, cfg_name, "eos_token_id", 1, t->V, &t->eos, err)) < 0 ||
	    (rc = cfg_token(cfg, cfg_name, "pad_token_id", 0, t->V, &pad, err)) < 0 ||
	    (rc = cfg_token(cfg, cfg_name, "decoder_start_token_id", pad, t->V, &t->start, err)) < 0)
		return rc;
	if (t->start < 0)
		return lora_errf(err, LORA_EINVAL, "%s: no decoder_start_token_id or pad_token_id",
				 cfg_name);
	return 0;
}

/* The loader's bookkeeping: the model and a running parameter count. */
struct t5_loader {
	struct lora_model *m;
	size_t n_params;
	struct lora_err *err;
};

__attribute__((format(printf, 5, 6)))
static int get_w(struct t5_loader *L, const float **out, int64_t rows, int64_t cols,
		 const char *fmt, ...)
{
	char name[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof name, fmt, ap);
	va_end(ap);
	*out = lora_model_weight(L->m, name, rows, cols, L->err);
	if (!*out)
		return L->err && L->err->code < 0 ? L->err->code : LORA_ENOTFOUND;
	L->n_params += (size_t)rows * (size_t)(cols ? cols : 1);
	return 0;
}

__attribute__((format(printf, 5, 6)))
static int get_lin(struct t5_loader *L, struct t5_lin *l, int out, int in, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(l->name, sizeof l->name - 7, fmt, ap);
	va_end(ap);
	strcat(l->name, ".weight");
	l->out = out;
	l->in = in;
	int rc = get_w(L, &l->w, out, in, "%s", l->name);
	if (rc < 0)
		return rc;
	return lora_model_declare_linear(L->m, l->name, out, in, false, L->err);
}

static int load_block(struct t5_loader *L, const struct t5 *t, struct t5_block *b,
		      const char *stack, int i, bool dec)
{
	int rc, C = t->C, D = t->D, F = t->F;
	int ff = dec ? 2 : 1;
	if ((rc = get_w(L, &b->ln_sa, C, 0, "%s.block.%d.layer.0.layer_norm.weight", stack, i)) < 0 ||
	    (rc = get_lin(L, &b->q, D, C, "%s.block.%d.layer.0.SelfAttention.q", stack, i)) < 0 ||
	    (rc = get_lin(L, &b->k, D, C, "%s.block.%d.layer.0.SelfAttention.k", stack, i)) < 0 ||
	    (rc = get_lin(L, &b->v, D, C, "%s.block.%d.layer.0.SelfAttention.v", stack, i)) < 0 ||
	    (rc = get_lin(L, &b->o, C, D, "%s.block.%d.layer.0.SelfAttention.o", stack, i)) < 0)
		return rc;
	if (dec &&
	    ((rc = get_w(L, &b->ln_ca, C, 0, "%s.block.%d.layer.1.layer_norm.weight", stack, i)) < 0 ||
	     (rc = get_lin(L, &b->cq, D, C, "%s.block.%d.layer.1.EncDecAttention.q", stack, i)) < 0 ||
	     (rc = get_lin(L, &b->ck, D, C, "%s.block.%d.layer.1.EncDecAttention.k", stack, i)) < 0 ||
	     (rc = get_lin(L, &b->cv, D, C, "%s.block.%d.layer.1.EncDecAttention.v", stack, i)) < 0 ||
	     (rc = get_lin(L, &b->co, C, D, "%s.block.%d.layer.1.EncDecAttention.o", stack, i)) < 0))
		return rc;
#define FF "%s.block.%d.layer.%d."
	if ((rc = get_w(L, &b->ln_ff, C, 0, FF "layer_norm.weight", stack, i, ff)) < 0)
		return rc;
	if (t->gated) {
		if ((rc = get_lin(L, &b->wi, F, C, FF "DenseReluDense.wi_0", stack, i, ff)) < 0 ||
		    (rc = get_lin(L, &b->wi1, F, C, FF "DenseReluDense.wi_1", stack, i, ff)) < 0)
			return rc;
	} else if ((rc = get_lin(L, &b->wi, F, C, FF "DenseReluDense.wi", stack, i, ff)) < 0) {
		return rc;
	}
	rc = get_lin(L, &b->wo, C, F, FF "DenseReluDense.wo", stack, i, ff);
#undef FF
	return rc;
}

static void t5_state_free(struct t5 *t)
{
	if (!t)
		return;
	free(t->enc);
	free(t->dec);
	free(t->slab);
	free(t);
}

static int t5_load(struct lora_model *m, struct lora_err *err)
{
	struct lora_model_core *core = lora_model_core(m);
	struct t5 *t = calloc(1, sizeof *t);
	if (!t)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	char cfg_name[4096];
	snprintf(cfg_name, sizeof cfg_name, "%s/config.json", core->dir ? core->dir : ".");
	int rc = read_config(t, core->config, cfg_name, err);
	if (rc < 0)
		goto fail;
	t->enc = calloc((size_t)t->n_enc, sizeof *t->enc);
	t->dec = calloc((size_t)t->n_dec, sizeof *t->dec);
	if (!t->enc || !t->dec) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		goto fail;
	}
	struct t5_loader L = { m, 0, err };
	/* save_pretrained keeps shared.weight and drops the tied copies; older
	 * checkpoints may hold only a stack's embed_tokens. */
	const char *emb = "shared.weight";
	if (!lora_model_has_weight(m, emb)) {
		if (lora_model_has_weight(m, "encoder.embed_tokens.weight"))
			emb = "encoder.embed_tokens.weight";
		else if (lora_model_has_weight(m, "decoder.embed_tokens.weight"))
			emb = "decoder.embed_tokens.weight";
	}
	if ((rc = get_w(&L, &t->embed, t->V, t->C, "%s", emb)) < 0)
		goto fail;
	if (t->tied) {
		t->head.w = t->embed;
		t->head.out = t->V;
		t->head.in = t->C;
		t->head.name[0] = '\0';	/* an embedding is not an adaptable Linear */
	} else if ((rc = get_lin(&L, &t->head, t->V, t->C, "lm_head")) < 0) {
		goto fail;
	}
#define RB "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
	if ((rc = get_w(&L, &t->rel_enc, t->NB, t->NH, RB, "encoder")) < 0 ||
	    (rc = get_w(&L, &t->rel_dec, t->NB, t->NH, RB, "decoder")) < 0 ||
	    (rc = get_w(&L, &t->ln_enc, t->C, 0, "encoder.final_layer_norm.weight")) < 0 ||
	    (rc = get_w(&L, &t->ln_dec, t->C, 0, "decoder.final_layer_norm.weight")) < 0)
		goto fail;
#undef RB
	for (int i = 0; i < t->n_enc; i++)
		if ((rc = load_block(&L, t, &t->enc[i], "encoder", i, false)) < 0)
			goto fail;
	for (int i = 0; i < t->n_dec; i++)
		if ((rc = load_block(&L, t, &t->dec[i], "decoder", i, true)) < 0)
			goto fail;
	core->info.model_type = "t5";
	core->info.encoder_decoder = true;
	core->info.vocab = t->V;
	core->info.bos = -1;
	core->info.eos = t->eos;
	core->info.decoder_start = t->start;
	core->info.max_positions = 0;
	core->info.n_params = L.n_params;
	int pad = 0;
	if (cfg_token(core->config, cfg_name, "pad_token_id", 0, t->V, &pad, NULL) == 0)
		core->info.pad = pad;
	core->arch_state = t;
	return 0;
fail:
	t5_state_free(t);
	return rc;
}

static void t5_free(struct lora_model *m)
{
	struct lora_model_core *core = lora_model_core(m);
	t5_state_free(core->arch_state);
	core->arch_state = NULL;
}

/* Phase timers for profiling builds only (-DLORA_T5_PROFILE): totals are
 * printed to stderr at exit. Compiled out otherwise. */
#ifdef LORA_T5_PROFILE
#include <time.h>
enum { P_EMB, P_NORM, P_QKV, P_ATT, P_O, P_WI, P_ACT, P_WO, P_SYNC, P_DNORM, P_DQKV, P_DATT,
       P_CKV, P_CATT, P_DLIN, P_DFF, P_DACT, P_DWO, P_HEAD, P_NLL, P_N };
static const char *prof_names[P_N] = { "embed", "enc norm", "enc qkv", "enc attn", "enc o",
	"enc wi", "enc act", "enc wo", "enc wait", "dec norm", "dec qkv", "dec attn", "cross kv",
	"cross attn", "dec lin", "dec wi", "dec act", "dec wo", "head", "nll" };
/* prof_in: time worker 0 spent inside the row phases (already in prof_t),
 * taken off the phase's wall time by PROF_PAR; the rest is waiting. */
static double prof_t[P_N], prof_last, prof_in, prof_wlast;
static int prof_calls;
static double prof_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static void prof_dump(void)
{
	double tot = 0;
	for (int i = 0; i < P_N; i++)
		tot += prof_t[i];
	for (int i = 0; i < P_N; i++)
		fprintf(stderr, "t5 prof %-10s %8.2f ms/call %5.1f%%\n", prof_names[i],
			1e3 * prof_t[i] / prof_calls, 100 * prof_t[i] / tot);
	fprintf(stderr, "t5 prof total      %8.2f ms/call\n", 1e3 * tot / prof_calls);
}
#define PROF_START() (prof_last = prof_now())
#define PROF(p) do { double n_ = prof_now(); prof_t[p] += n_ - prof_last; prof_last = n_; } while (0)
#define PROF_CALL() do { if (!prof_calls++) atexit(prof_dump); } while (0)
/* inside a row phase, on worker 0 only: W_START at the unit's start, W(p)
 * after each step; PROF_PAR(p) after the phase books the rest to p */
#define PROF_W_START(w) do { if ((w) == 0) prof_wlast = prof_now(); } while (0)
#define PROF_W(w, p) do { if ((w) == 0) { double n_ = prof_now(); prof_t[p] += n_ - prof_wlast; \
	prof_in += n_ - prof_wlast; prof_wlast = n_; } } while (0)
#define PROF_PAR(p) do { double n_ = prof_now(); prof_t[p] += n_ - prof_last - prof_in; \
	prof_in = 0; prof_last = n_; } while (0)
#else
#define PROF_START() ((void)0)
#define PROF(p) ((void)0)
#define PROF_CALL() ((void)0)
#define PROF_W_START(w) ((void)0)
#define PROF_W(w, p) ((void)0)
#define PROF_PAR(p) ((void)0)
#endif

/* ------------------------------------------------------------------ */
/* kernels */

/* HF T5Attention._relative_position_bucket for one relative position
 * (memory - query), computed in float32 as PyTorch does so that the
 * truncation at bucket edges agrees. */
static int rel_bucket(int rel, bool bidirectional, int nb, int maxd)
{
	int b = 0;
	if (bidirectional) {
		nb /= 2;
		if (rel > 0)
			b += nb;
		rel = rel < 0 ? -rel : rel;
	} else {
		rel = rel < 0 ? -rel : 0;
	}
	int max_exact = nb / 2;
	if (rel < max_exact)
		return b + rel;
	float v = logf((float)rel / (float)max_exact) / (float)log((double)maxd / max_exact) *
		  (float)(nb - max_exact);
	long large = max_exact + (long)v;
	if (large > nb - 1)
		large = nb - 1;
	return b + (int)large;
}

/* pb[NH, nq + nk - 1]: the bias of head h for relative distance
 * d = key - query in [-(nq-1), nk-1] is pb[h * (nq+nk-1) + (nq-1) + d].
 * rel [NB, NH] is the relative_attention_bias weight. The bucket of a
 * distance does not depend on the sequence, so one table for the longest
 * sequence of a call serves every sequence and every layer. */
static void position_bias(float *pb, const struct t5 *t, const float *rel, bool bidirectional,
			  int nq, int nk)
{
	int W = nq + nk - 1;
	for (int d = -(nq - 1); d < nk; d++) {
		int bucket = rel_bucket(d, bidirectional, t->NB, t->maxd);
		for (int h = 0; h < t->NH; h++)
			pb[(size_t)h * W + (nq - 1) + d] = rel[(size_t)bucket * t->NH + h];
	}
}

/* One head's attention runs in blocks of query rows whose scores [rows, nk]
 * fit in SBLK floats (256 KB, well inside L2) but are never fewer than QB
 * rows, so that short sequences (LoraHub's few hundred tokens) make one
 * block and one pair of larger, faster products per head. */
enum { QB = 64, SBLK = 1 << 16 };

/* Query rows per block for nk keys. */
static int block_rows(int nk)
{
	return nk > 0 && SBLK / nk > QB ? SBLK / nk : QB;
}

/* Floats of score scratch one worker needs for sequences of up to L keys. */
static size_t block_scratch(size_t L)
{
	return (size_t)QB * L > SBLK ? (size_t)QB * L : SBLK;
}

/* One head of T5Attention for one sequence (no 1/sqrt(d) scaling):
 *   out[i, :] = softmax_j(q_i · k_j + bias(j - (q0 + i))) · v_j
 * q [nq, HS], k and v [nk, HS], out [nq, HS], rows of stride D (the head's
 * columns of the [*, D] projections). q0 is the absolute position of query
 * 0 (keys start at 0). pb: the head's row of a position_bias table, pz the
 * index of distance 0 in it; NULL for no bias (cross-attention). causal:
 * query i sees keys j <= q0 + i only (HF adds finfo.min to the others:
 * weight exactly 0, so the keys no query of a block sees are skipped).
 * S [block_scratch(nk)] is scratch. Softmax in f32 as HF does
 * (scores.float()). */
static void attend_head(float *out, const float *q, const float *k, const float *v, int D,
			int nq, int nk, int q0, const float *pb, int pz, bool causal, int HS,
			float *S)
{
	int qb = block_rows(nk);
	for (int i0 = 0; i0 < nq; i0 += qb) {
		int m = nq - i0 < qb ? nq - i0 : qb;
		int kn = causal && q0 + i0 + m < nk ? q0 + i0 + m : nk;	/* keys any row sees */
		/* the bias rows go into S first and the product adds to them
		 * (beta = 1): q·k + bias as HF sums it, with no separate pass */
		if (pb)
			for (int i = 0; i < m; i++)
				memcpy(S + (size_t)i * kn, pb + pz - (q0 + i0 + i), (size_t)kn * sizeof *S);
		lora_gemm(false, true, m, kn, HS, 1.0f, q + (size_t)i0 * D, D, k, D, pb ? 1.0f : 0.0f,
			  S, kn);
		for (int i = 0; i < m; i++) {
			float *s = S + (size_t)i * kn;
			int qi = q0 + i0 + i;
			int lim = causal && qi + 1 < kn ? qi + 1 : kn;
			lora_softmax_rows(s, 1, lim);
			for (int j = lim; j < kn; j++)
				s[j] = 0.0f;
		}
		lora_gemm(false, false, m, HS, kn, 1.0f, S, kn, v, D, 0.0f, out + (size_t)i0 * D, D);
	}
}

/* Every head of one sequence, in turn (greedy decoding's one-row steps):
 * q [nq, D], k and v [nk, D], out [nq, D], head h in columns h*HS..; pb
 * [NH, pw] (or NULL); the rest as attend_head. */
static void attend(float *out, const float *q, const float *k, const float *v, int D, int nq,
		   int nk, int q0, const float *pb, int pw, int pz, bool causal, int NH, int HS,
		   float *S)
{
	for (int h = 0; h < NH; h++) {
		size_t c = (size_t)h * HS;
		attend_head(out + c, q + c, k + c, v + c, D, nq, nk, q0,
			    pb ? pb + (size_t)h * pw : NULL, pz, causal, HS, S);
	}
}

/* The exact (erf) GELU, HF's "gelu". */
static void gelu_erf(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

static void activate(enum t5_actfn act, float *x, size_t n)
{
	switch (act) {
	case ACT_RELU: lora_relu(x, n); break;
	case ACT_GELU: gelu_erf(x, n); break;
	case ACT_GELU_NEW: lora_gelu_tanh(x, n); break;
	case ACT_SILU: lora_silu(x, n); break;
	}
}

/* ------------------------------------------------------------------ */
/* activations */

/* Sizes of one batched forward: Te/Td packed encoder/decoder rows, Le/Ld the
 * longest input/target, R the largest adapter rank, HC head rows per chunk,
 * W the worker threads (each has its own attention scratch). */
struct t5_shape {
	int Te, Td, Le, Ld, R, HC, W;
};

/* The activation slab of one call, carved into named views. Tx = max(Te, Td). */
struct t5_act {
	float *x;	/* [Tx, C]  residual stream */
	float *xn;	/* [Tx, C]  layer-normed input of a sub-layer */
	float *enc;	/* [Te, C]  encoder output (after the final norm) */
	float *q, *k, *v;	/* [Tx, D]  projections (heads side by side) */
	float *att;	/* [Tx, D]  attention output before o */
	float *f0, *f1;	/* [Tx, F]  feed-forward hidden (wi / wi_0, wi_1) */
	float *pbe;	/* [NH, 2*Le-1]  encoder relative position bias by distance */
	float *pbd;	/* [NH, 2*Ld-1]  decoder relative position bias by distance */
	float *S;	/* [W][block_scratch(max(Le,Ld))]  attention scores of a block */
	float *lr;	/* [Tx, R]  LoRA scratch (x · A^T) */
	float *logits;	/* [HC, V]  a chunk of head rows */
};

static size_t round16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* Lay the views out from base (NULL: only measure); returns floats needed. */
static size_t act_layout(struct t5_act *a, float *base, const struct t5 *t,
			 const struct t5_shape *s)
{
	size_t off = 0;
	size_t Tx = (size_t)(s->Te > s->Td ? s->Te : s->Td);
	size_t L = (size_t)(s->Le > s->Ld ? s->Le : s->Ld);
	size_t C = (size_t)t->C, D = (size_t)t->D, F = (size_t)t->F;
#define VIEW(field, n) (a->field = base ? base + off : NULL, off += round16(n))
	VIEW(x, Tx * C);
	VIEW(xn, Tx * C);
	VIEW(enc, (size_t)s->Te * C);
	VIEW(q, Tx * D);
	VIEW(k, Tx * D);
	VIEW(v, Tx * D);
	VIEW(att, Tx * D);
	VIEW(f0, Tx * F);
	VIEW(f1, t->gated ? Tx * F : 0);
	VIEW(pbe, (size_t)t->NH * (2 * (size_t)s->Le - 1));
	VIEW(pbd, s->Ld > 0 ? (size_t)t->NH * (2 * (size_t)s->Ld - 1) : 0);
	VIEW(S, (size_t)(s->W > 0 ? s->W : 1) * block_scratch(L));
	VIEW(lr, Tx * (size_t)(s->R > 0 ? s->R : 1));
	VIEW(logits, (size_t)s->HC * (size_t)t->V);
#undef VIEW
	return off;
}

/* The activation slab of a call: the model keeps the largest one so far, so
 * that a LoraHub step (the same shapes again and again) does not map fresh
 * pages, which the kernel would fault in and zero on every call. This is also
 * why one model must not run two forwards at once. */
static float *get_slab(struct t5 *t, size_t floats)
{
	if (floats <= t->slab_floats)
		return t->slab;
	free(t->slab);
	t->slab_floats = 0;
	size_t bytes = (floats * sizeof(float) + 63) & ~(size_t)63;
	if (!(t->slab = aligned_alloc(64, bytes)))
		return NULL;
	t->slab_floats = floats;
	return t->slab;
}

/* A forward in progress: the model, its state and the views. */
struct t5_run {
	struct lora_model *m;
	const struct t5 *t;
	struct t5_act a;
	int R;		/* row stride of a.lr (the largest rank, at least 1) */
};

/* y[T, out] = x[T, in] · W^T + the adapter's deltas on this weight. */
static void lin(struct t5_run *r, const struct t5_lin *l, float *y, const float *x, int T)
{
	lora_model_linear(r->m, l->name, y, x, l->w, true, NULL, T, l->in, l->out, 0.0f, r->a.lr);
}

/* resid[T, out] += x[T, in] · W^T + the deltas: a sub-layer's output added
 * to the residual stream by the sgemm itself (beta = 1), which saves zeroing
 * an output and a separate pass for the add. HF adds base + LoRA first, then
 * the residual; the difference is float32 rounding. */
static void lin_acc(struct t5_run *r, const struct t5_lin *l, float *resid, const float *x, int T)
{
	lora_model_linear(r->m, l->name, resid, x, l->w, true, NULL, T, l->in, l->out, 1.0f, r->a.lr);
}

/* Rows [t0, t0+n) of a Linear, on the calling worker (row phases):
 * y[t, out] = beta*y + x[t, in]·W^T + the deltas, unmerged (the rows' own
 * slice of the LoRA scratch, so workers never share it; the model's fold
 * buffer is one per model and is not used here). */
static void lin_rows(struct t5_run *r, const struct t5_lin *l, float *y, const float *x, int t0,
		     int n, float beta)
{
	int nd = 0;
	const struct lora_delta *d = l->name[0] ? lora_model_deltas(r->m, l->name, &nd) : NULL;
	lora_linear_ex(y + (size_t)t0 * l->out, x + (size_t)t0 * l->in, l->w, true, NULL, d, nd, n,
		       l->in, l->out, beta, r->a.lr + (size_t)t0 * r->R, NULL);
}

static int lin_rank(const struct lora_model *m, const struct t5_lin *l)
{
	int n = 0, R = 0;
	const struct lora_delta *d = l->name[0] ? lora_model_deltas(m, l->name, &n) : NULL;
	for (int i = 0; i < n; i++)
		if (d[i].r > R)
			R = d[i].r;
	return R;
}

/* The largest adapter rank on any weight (sizes the LoRA scratch). */
static int max_rank(const struct lora_model *m, const struct t5 *t)
{
	int R = lin_rank(m, &t->head);
	for (int i = 0; i < t->n_enc + t->n_dec; i++) {
		const struct t5_block *b = i < t->n_enc ? &t->enc[i] : &t->dec[i - t->n_enc];
		const struct t5_lin *l[] = { &b->q, &b->k, &b->v, &b->o, &b->cq, &b->ck,
					     &b->cv, &b->co, &b->wi, &b->wi1, &b->wo };
		for (int k = 0; k < 11; k++) {
			int rk = l[k]->w ? lin_rank(m, l[k]) : 0;
			if (rk > R)
				R = rk;
		}
	}
	return R;
}

/* ---- the O(T*C) steps between the products, on the worker pool ---- */

/* Below this many rows a row-chunked step runs on the calling thread. */
enum { ROWS_MIN_T = 32 };

enum { RW_NORM, RW_ACT };

/* One row-chunked step: RW_NORM out[T, C] = rmsnorm(x) * weight (times
 * scale when scale != 1); RW_ACT f0[T, F] = act(f0) (* f1 when gated). */
struct rows_job {
	const struct t5 *t;
	int kind, T, rows;	/* rows per unit */
	float *out;
	const float *x, *w;
	float scale;
	float *f0;
	const float *f1;
};

static void rows_unit(void *ctx, int u, int worker)
{
	(void)worker;
	struct rows_job *j = ctx;
	const struct t5 *t = j->t;
	int t0 = u * j->rows, n = j->T - t0 < j->rows ? j->T - t0 : j->rows;
	if (j->kind == RW_NORM) {
		size_t o = (size_t)t0 * t->C;
		lora_rmsnorm(j->out + o, j->x + o, j->w, n, t->C, t->eps);
		if (j->scale != 1.0f)
			for (size_t i = o; i < o + (size_t)n * t->C; i++)
				j->out[i] *= j->scale;
		return;
	}
	/* act(f0) * f1 in pieces that stay in L1 (one pass over memory) */
	size_t o = (size_t)t0 * t->F, cnt = (size_t)n * t->F;
	float *f0 = j->f0 + o;
	const float *f1 = j->f1 ? j->f1 + o : NULL;
	for (size_t i0 = 0; i0 < cnt; i0 += 1024) {
		size_t k = cnt - i0 < 1024 ? cnt - i0 : 1024;
		activate(t->act, f0 + i0, k);
		if (f1)
			for (size_t i = i0; i < i0 + k; i++)
				f0[i] *= f1[i];
	}
}

/* Run one row-chunked step over j->T rows (a few units per worker). */
static void rows_run(struct rows_job *j)
{
	j->rows = lora_rows_per_unit(j->T, ROWS_MIN_T);
	int nu = (j->T + j->rows - 1) / j->rows;
	if (nu <= 1) {
		rows_unit(j, 0, 0);
		return;
	}
	lora_parallel_for(nu, rows_unit, j);
}

/* out[T, C] = T5LayerNorm(x) with weight w (times scale). */
static void norm_rows(const struct t5 *t, float *out, const float *x, const float *w, int T,
		      float scale)
{
	struct rows_job j = { .t = t, .kind = RW_NORM, .T = T, .out = out, .x = x, .w = w,
			      .scale = scale };
	rows_run(&j);
}

/* x[T, C] += the feed-forward sub-layer (T5DenseActDense /
 * T5DenseGatedActDense) of xn[T, C]:  wo(act(wi(xn)))  or
 * wo(act(wi_0(xn)) * wi_1(xn)). */
static void ffn(struct t5_run *r, const struct t5_block *b, float *x, const float *xn, int T,
		bool dec)
{
	const struct t5 *t = r->t;
	lin(r, &b->wi, r->a.f0, xn, T);
	if (t->gated)
		lin(r, &b->wi1, r->a.f1, xn, T);
	PROF(dec ? P_DFF : P_WI);
	struct rows_job j = { .t = t, .kind = RW_ACT, .T = T, .f0 = r->a.f0,
			      .f1 = t->gated ? r->a.f1 : NULL };
	rows_run(&j);
	PROF(dec ? P_DACT : P_ACT);
	lin_acc(r, &b->wo, x, r->a.f0, T);
	PROF(dec ? P_DWO : P_WO);
}

/* A batch of sequences packed row after row. */
struct t5_batch {
	const struct lora_seq *seqs;
	int n;
	int *eo, *dof;	/* [n] first encoder / decoder row of each sequence */
};

/* ---- attention of a whole batch, one (sequence, head) per unit ---- */

enum { ATT_ENC, ATT_DEC, ATT_CROSS };

struct att_job {
	const struct t5 *t;
	const struct t5_batch *bt;
	struct t5_act *a;
	int kind;
	const float *k, *v;	/* keys/values: a->k, a->v (packed like q or like enc) */
	int Le, Ld;		/* the bias tables' longest sequences */
	size_t S_stride;	/* floats of scratch per worker */
};

static void att_unit(void *ctx, int u, int worker)
{
	struct att_job *j = ctx;
	const struct t5 *t = j->t;
	int e = u / t->NH, h = u % t->NH, D = t->D, HS = t->HS;
	const struct lora_seq *sq = &j->bt->seqs[e];
	size_t c = (size_t)h * HS;
	int nq, nk, pz = 0;
	size_t qo, ko;
	const float *pb = NULL;
	if (j->kind == ATT_ENC) {
		nq = nk = (int)sq->n_input;
		qo = ko = (size_t)j->bt->eo[e] * D;
		pb = j->a->pbe + (size_t)h * (2 * j->Le - 1);
		pz = j->Le - 1;
	} else {
		nq = (int)sq->n_target;
		qo = (size_t)j->bt->dof[e] * D;
		if (j->kind == ATT_DEC) {
			nk = nq;
			ko = qo;
			pb = j->a->pbd + (size_t)h * (2 * j->Ld - 1);
			pz = j->Ld - 1;
		} else {
			nk = (int)sq->n_input;
			ko = (size_t)j->bt->eo[e] * D;
		}
	}
	if (nq == 0)
		return;
	attend_head(j->a->att + qo + c, j->a->q + qo + c, j->k + ko + c, j->v + ko + c, D, nq, nk,
		    0, pb, pz, j->kind == ATT_DEC, HS, j->a->S + (size_t)worker * j->S_stride);
}

/* a->att = attention of every sequence of the batch: kind ATT_ENC (self,
 * bidirectional, encoder bias), ATT_DEC (self, causal, decoder bias) or
 * ATT_CROSS (decoder queries over the encoder's keys/values, no bias). */
static void attend_all(struct t5_run *r, const struct t5_batch *bt, const struct t5_shape *s,
		       int kind)
{
	size_t L = (size_t)(s->Le > s->Ld ? s->Le : s->Ld);
	struct att_job j = { r->t, bt, &r->a, kind, r->a.k, r->a.v, s->Le, s->Ld,
			     block_scratch(L) };
	lora_parallel_for(bt->n * r->t->NH, att_unit, &j);
}

/* ---- the encoder's row-local steps, one slice of token rows per worker ---- */

/* An encoder call with at least this many rows per worker runs the steps
 * between two attentions as row phases: each worker takes one slice of the
 * token rows through every step of the phase (norm, products, activation),
 * so a layer costs three pool jobs (rows in, attention, rows out) instead of
 * ten, and a worker's rows stay in its cache from one step to the next. The
 * products of a phase are each one single-threaded sgemm over the slice.
 * Shorter calls (greedy decoding's prompt, the decoder's few rows) take the
 * step-by-step path, whose products lora_gemm splits by weight rows. */
enum { ENC_ROWS_MIN = 128 };

/* Whether T encoder rows run in row phases: enough rows per worker, and no
 * product with more outputs (weight rows) than there are token rows. Each
 * worker packs (and reads) every weight whole in a row phase, where the
 * split by weight rows packs the activations once per worker instead: the
 * cheaper copy wins. bench_t5: Flan-T5-small (F = 1024 <= 1094 tokens) ran
 * ~15% faster in row phases, Flan-T5-large (F = 2816) no faster. */
static bool row_phases(const struct t5 *t, int T)
{
	int nw = lora_parallel_workers();
	return T >= ENC_ROWS_MIN * nw && t->F <= T && t->D <= T && t->C <= T;
}

enum { EP_IN, EP_OUT, EP_CROSS };

/* One row phase of encoder layer b: EP_IN xn = norm_sa(x) and q, k, v of it
 * (the embedding gathered into x first when embed); EP_OUT x += o(att),
 * then x += ffn(norm_ff(x)) (and enc = final_norm(x) when last). EP_CROSS,
 * for decoder layer b: k, v = the cross-attention keys and values of the
 * encoder output enc. */
struct enc_job {
	struct t5_run *r;
	const struct t5_batch *bt;
	const struct t5_block *b;
	int kind, T, rows;	/* rows per unit */
	bool embed, last;
};

/* x rows [t0, t0+n) = the embeddings of the packed input tokens. */
static void embed_rows(const struct t5 *t, const struct t5_batch *bt, float *x, int t0, int n)
{
	int e = 0, C = t->C;
	for (int row = t0; row < t0 + n; row++) {
		while (row >= bt->eo[e] + (int)bt->seqs[e].n_input)
			e++;
		memcpy(x + (size_t)row * C, t->embed + (size_t)bt->seqs[e].input[row - bt->eo[e]] * C,
		       (size_t)C * sizeof(float));
	}
}

static void enc_unit(void *ctx, int u, int worker)
{
	const struct enc_job *j = ctx;
	struct t5_run *r = j->r;
	const struct t5 *t = r->t;
	const struct t5_block *b = j->b;
	struct t5_act *a = &r->a;
	int t0 = u * j->rows, n = j->T - t0 < j->rows ? j->T - t0 : j->rows, C = t->C;
	size_t o = (size_t)t0 * C;
	PROF_W_START(worker);
	if (j->kind == EP_CROSS) {
		lin_rows(r, &b->ck, a->k, a->enc, t0, n, 0.0f);
		lin_rows(r, &b->cv, a->v, a->enc, t0, n, 0.0f);
		PROF_W(worker, P_CKV);
		return;
	}
	if (j->kind == EP_IN) {
		if (j->embed) {
			embed_rows(t, j->bt, a->x, t0, n);
			PROF_W(worker, P_EMB);
		}
		lora_rmsnorm(a->xn + o, a->x + o, b->ln_sa, n, C, t->eps);
		PROF_W(worker, P_NORM);
		lin_rows(r, &b->q, a->q, a->xn, t0, n, 0.0f);
		lin_rows(r, &b->k, a->k, a->xn, t0, n, 0.0f);
		lin_rows(r, &b->v, a->v, a->xn, t0, n, 0.0f);
		PROF_W(worker, P_QKV);
		return;
	}
	lin_rows(r, &b->o, a->x, a->att, t0, n, 1.0f);
	PROF_W(worker, P_O);
	lora_rmsnorm(a->xn + o, a->x + o, b->ln_ff, n, C, t->eps);
	PROF_W(worker, P_NORM);
	lin_rows(r, &b->wi, a->f0, a->xn, t0, n, 0.0f);
	if (t->gated)
		lin_rows(r, &b->wi1, a->f1, a->xn, t0, n, 0.0f);
	PROF_W(worker, P_WI);
	size_t of = (size_t)t0 * t->F;
	struct rows_job rj = { .t = t, .kind = RW_ACT, .T = n, .rows = n, .f0 = a->f0 + of,
			       .f1 = t->gated ? a->f1 + of : NULL };
	rows_unit(&rj, 0, worker);
	PROF_W(worker, P_ACT);
	lin_rows(r, &b->wo, a->x, a->f0, t0, n, 1.0f);
	PROF_W(worker, P_WO);
	if (j->last) {
		lora_rmsnorm(a->enc + o, a->x + o, t->ln_enc, n, C, t->eps);
		PROF_W(worker, P_NORM);
	}
}

/* Run one row phase over the T encoder rows, one slice per worker. */
static void enc_phase(struct t5_run *r, const struct t5_batch *bt, const struct t5_block *b,
		      int kind, int T, bool embed, bool last)
{
	int nw = lora_parallel_workers();
	struct enc_job j = { r, bt, b, kind, T, (T + nw - 1) / nw, embed, last };
	lora_parallel_for((T + j.rows - 1) / j.rows, enc_unit, &j);
}

/* The encoder over the packed inputs: a.enc[Te, C] = final_norm(blocks(embed)). */
static void encode(struct t5_run *r, const struct t5_batch *bt, const struct t5_shape *s)
{
	const struct t5 *t = r->t;
	struct t5_act *a = &r->a;
	int T = s->Te, C = t->C;
	if (row_phases(t, T)) {
		position_bias(a->pbe, t, t->rel_enc, true, s->Le, s->Le);
		PROF(P_EMB);
		for (int l = 0; l < t->n_enc; l++) {
			enc_phase(r, bt, &t->enc[l], EP_IN, T, l == 0, false);
			PROF_PAR(P_SYNC);
			attend_all(r, bt, s, ATT_ENC);
			PROF(P_ATT);
			enc_phase(r, bt, &t->enc[l], EP_OUT, T, false, l == t->n_enc - 1);
			PROF_PAR(P_SYNC);
		}
		return;
	}
	for (int e = 0; e < bt->n; e++)
		for (size_t i = 0; i < bt->seqs[e].n_input; i++)
			memcpy(a->x + (size_t)(bt->eo[e] + (int)i) * C,
			       t->embed + (size_t)bt->seqs[e].input[i] * C, (size_t)C * sizeof(float));
	position_bias(a->pbe, t, t->rel_enc, true, s->Le, s->Le);
	PROF(P_EMB);
	for (int l = 0; l < t->n_enc; l++) {
		const struct t5_block *b = &t->enc[l];
		norm_rows(t, a->xn, a->x, b->ln_sa, T, 1.0f);
		PROF(P_NORM);
		lin(r, &b->q, a->q, a->xn, T);
		lin(r, &b->k, a->k, a->xn, T);
		lin(r, &b->v, a->v, a->xn, T);
		PROF(P_QKV);
		attend_all(r, bt, s, ATT_ENC);
		PROF(P_ATT);
		lin_acc(r, &b->o, a->x, a->att, T);
		PROF(P_O);
		norm_rows(t, a->xn, a->x, b->ln_ff, T, 1.0f);
		PROF(P_NORM);
		ffn(r, b, a->x, a->xn, T, false);
	}
	norm_rows(t, a->enc, a->x, t->ln_enc, T, 1.0f);
	PROF(P_NORM);
}

/* The decoder over the packed, shifted targets ([start] + target[:-1] per
 * sequence), ending in a.xn[Td, C] = final_norm(...) (rescaled when tied). */
static void decode(struct t5_run *r, const struct t5_batch *bt, const struct t5_shape *s)
{
	const struct t5 *t = r->t;
	struct t5_act *a = &r->a;
	int T = s->Td, Te = s->Te, C = t->C;
	for (int e = 0; e < bt->n; e++) {
		const struct lora_seq *q = &bt->seqs[e];
		for (size_t i = 0; i < q->n_target; i++) {
			int id = i == 0 ? t->start : q->target[i - 1];
			memcpy(a->x + (size_t)(bt->dof[e] + (int)i) * C, t->embed + (size_t)id * C,
			       (size_t)C * sizeof(float));
		}
	}
	position_bias(a->pbd, t, t->rel_dec, false, s->Ld, s->Ld);
	PROF(P_EMB);
	for (int l = 0; l < t->n_dec; l++) {
		const struct t5_block *b = &t->dec[l];
		/* causal self-attention with the decoder's relative bias */
		norm_rows(t, a->xn, a->x, b->ln_sa, T, 1.0f);
		PROF(P_DNORM);
		lin(r, &b->q, a->q, a->xn, T);
		lin(r, &b->k, a->k, a->xn, T);
		lin(r, &b->v, a->v, a->xn, T);
		PROF(P_DQKV);
		attend_all(r, bt, s, ATT_DEC);
		PROF(P_DATT);
		lin_acc(r, &b->o, a->x, a->att, T);
		/* cross-attention over the encoder output, no position bias */
		norm_rows(t, a->xn, a->x, b->ln_ca, T, 1.0f);
		lin(r, &b->cq, a->q, a->xn, T);
		PROF(P_DLIN);
		if (row_phases(t, Te)) {
			enc_phase(r, bt, b, EP_CROSS, Te, false, false);
			PROF_PAR(P_CKV);
		} else {
			lin(r, &b->ck, a->k, a->enc, Te);
			lin(r, &b->cv, a->v, a->enc, Te);
			PROF(P_CKV);
		}
		attend_all(r, bt, s, ATT_CROSS);
		PROF(P_CATT);
		lin_acc(r, &b->co, a->x, a->att, T);
		norm_rows(t, a->xn, a->x, b->ln_ff, T, 1.0f);
		PROF(P_DLIN);
		ffn(r, b, a->x, a->xn, T, true);
		PROF(P_DFF);
	}
	/* HF: sequence_output * (model_dim ** -0.5) before the tied head */
	norm_rows(t, a->xn, a->x, t->ln_dec, T, t->tied ? (float)(1.0 / sqrt((double)C)) : 1.0f);
}

/* Check the sequences of a call (non-empty input, ids in range). */
static int check_seqs(const struct t5 *t, const struct lora_seq *seqs, size_t n, bool need_target,
		      struct lora_err *err)
{
	for (size_t e = 0; e < n; e++) {
		const struct lora_seq *q = &seqs[e];
		if (q->n_input == 0)
			return lora_errf(err, LORA_EINVAL, "t5: sequence %zu has no input tokens", e);
		if (need_target && q->n_target == 0)
			return lora_errf(err, LORA_EINVAL, "t5: sequence %zu has no target tokens", e);
		if (q->n_input > (1u << 24) || q->n_target > (1u << 24))
			return lora_errf(err, LORA_EINVAL, "t5: sequence %zu is too long", e);
		for (int k = 0; k < 2; k++) {
			const int32_t *ids = k ? q->target : q->input;
			size_t m = k ? q->n_target : q->n_input;
			for (size_t i = 0; i < m; i++)
				if (ids[i] < 0 || ids[i] >= t->V)
					return lora_errf(err, LORA_EINVAL,
							 "t5: sequence %zu: %s token id %d outside "
							 "the vocabulary of %d", e, k ? "target" : "input",
							 (int)ids[i], t->V);
		}
	}
	return 0;
}

/* The vocabulary head of a few rows (x [M, C], M <= 64) is memory-bound:
 * it streams the [V, C] weight once. lora_gemm would split it in one piece
 * per worker; pieces of HEAD_CHUNK_BYTES of weight rows, taken by the
 * workers in turn, streamed faster (bench_t5, Flan-T5-small: 6.5 ms a step
 * instead of 7.8, the two forms alternated call by call in one process). */
#define HEAD_CHUNK_BYTES ((size_t)2 << 20)

struct head_job {
	const float *x, *w;
	float *y;
	int M, V, C, rows;	/* weight rows per unit */
};

static void head_unit(void *ctx, int u, int worker)
{
	(void)worker;
	const struct head_job *j = ctx;
	int o = u * j->rows, n = j->V - o < j->rows ? j->V - o : j->rows;
	lora_gemm(false, true, j->M, n, j->C, 1.0f, j->x, j->C, j->w + (size_t)o * j->C, j->C, 0.0f,
		  j->y + o, j->V);
}

/* y[M, V] = x[M, C] · head^T (+ an untied head's deltas). */
static void head_rows(struct t5_run *r, float *y, const float *x, int M)
{
	const struct t5 *t = r->t;
	int nd = 0;
	if (t->head.name[0])
		lora_model_deltas(r->m, t->head.name, &nd);
	if (nd > 0 || lora_bf16_lookup(t->head.w) || lora_parallel_workers() < 2) {
		lin(r, &t->head, y, x, M);
		return;
	}
	size_t rows = HEAD_CHUNK_BYTES / ((size_t)t->C * sizeof(float));
	rows = rows < 16 ? 16 : rows / 16 * 16;
	struct head_job j = { x, t->head.w, y, M, t->V, t->C, rows > (size_t)t->V ? t->V : (int)rows };
	lora_parallel_for((t->V + j.rows - 1) / j.rows, head_unit, &j);
}

/* One packed forward over seqs[0..n): per-token NLLs into nll (Σ n_target)
 * when nll != NULL, and/or full logits rows into logits ([Σ n_target, V]). */
static int forward(struct lora_model *m, const struct lora_seq *seqs, int n, float *nll,
		   float *logits, struct lora_err *err)
{
	struct t5 *t = lora_model_core(m)->arch_state;
	struct t5_shape s = { 0 };
	int *offs = malloc(2 * (size_t)n * sizeof *offs);
	if (!offs)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	struct t5_batch bt = { seqs, n, offs, offs + n };
	for (int e = 0; e < n; e++) {
		bt.eo[e] = s.Te;
		bt.dof[e] = s.Td;
		s.Te += (int)seqs[e].n_input;
		s.Td += (int)seqs[e].n_target;
		if ((int)seqs[e].n_input > s.Le)
			s.Le = (int)seqs[e].n_input;
		if ((int)seqs[e].n_target > s.Ld)
			s.Ld = (int)seqs[e].n_target;
	}
	s.R = max_rank(m, t);
	s.W = lora_parallel_workers();
	s.HC = s.Td < 64 ? s.Td : 64;
	if (s.HC < 1)
		s.HC = 1;
	struct t5_run r = { m, t, { 0 }, s.R > 0 ? s.R : 1 };
	float *slab = get_slab(t, act_layout(&r.a, NULL, t, &s));
	if (!slab) {
		free(offs);
		return lora_errf(err, LORA_ENOMEM, "t5: out of memory for activations of %d + %d tokens",
				 s.Te, s.Td);
	}
	act_layout(&r.a, slab, t, &s);
	PROF_CALL();
	PROF_START();
	encode(&r, &bt, &s);
	if (s.Td > 0)
		decode(&r, &bt, &s);
	PROF(P_DLIN);
	/* the head, HC rows at a time: logits = xn · W^T (+ lm_head deltas) */
	int e = 0;
	for (int row = 0; row < s.Td; row += s.HC) {
		int rows = s.Td - row < s.HC ? s.Td - row : s.HC;
		float *lg = logits ? logits + (size_t)row * t->V : r.a.logits;
		head_rows(&r, lg, r.a.xn + (size_t)row * t->C, rows);
		PROF(P_HEAD);
		if (!nll)
			continue;
		for (int i = 0; i < rows; i++) {
			int g = row + i;
			while (g >= bt.dof[e] + (int)seqs[e].n_target)
				e++;
			nll[g] = lora_nll_row(lg + (size_t)i * t->V, t->V, seqs[e].target[g - bt.dof[e]]);
		}
		PROF(P_NLL);
	}
	free(offs);
	return 0;
}

/* Packed tokens (input + target) per forward in t5_nll. */
#define GROUP_TOKENS 4096

/* Floats of activations per packed token (to bound a group's slab). */
static size_t per_token(const struct t5 *t)
{
	return 4 * (size_t)t->C + 5 * (size_t)t->D + 2 * (size_t)t->F + 64;
}

/* arch->nll: token NLLs of every sequence (see model.h), in groups. */
static int t5_nll(struct lora_model *m, const struct lora_seq *seqs, size_t n, float *nll,
		  struct lora_err *err)
{
	const struct t5 *t = lora_model_core(m)->arch_state;
	int rc = check_seqs(t, seqs, n, false, err);
	if (rc < 0)
		return rc;
	/* groups of sequences of at most GROUP_TOKENS packed tokens and ~256 MB
	 * of activations (at least one sequence each): large enough for sgemm
	 * to run at full speed, small enough to bound the slab */
	size_t budget = ((size_t)256 << 20) / (per_token(t) * sizeof(float));
	if (budget > GROUP_TOKENS)
		budget = GROUP_TOKENS;
	size_t i = 0, out = 0;
	while (i < n) {
		size_t j = i, tok = 0;
		while (j < n && (j == i || tok + seqs[j].n_input + seqs[j].n_target <= budget) &&
		       j - i < (1u << 20)) {
			tok += seqs[j].n_input + seqs[j].n_target;
			j++;
		}
		if ((rc = forward(m, seqs + i, (int)(j - i), nll + out, NULL, err)) < 0)
			return rc;
		for (size_t k = i; k < j; k++)
			out += seqs[k].n_target;
		i = j;
	}
	return 0;
}

/* arch->logits: decoder rows 0..n_target-1 of one sequence, [n_target, V]. */
static int t5_logits(struct lora_model *m, const struct lora_seq *seq, float **logits,
		     size_t *rows, struct lora_err *err)
{
	const struct t5 *t = lora_model_core(m)->arch_state;
	int rc = check_seqs(t, seq, 1, true, err);
	if (rc < 0)
		return rc;
	float *lg = malloc(seq->n_target * (size_t)t->V * sizeof *lg);
	if (!lg)
		return lora_errf(err, LORA_ENOMEM, "out of memory for %zu x %d logits", seq->n_target,
				 t->V);
	if ((rc = forward(m, seq, 1, NULL, lg, err)) < 0) {
		free(lg);
		return rc;
	}
	*logits = lg;
	*rows = seq->n_target;
	return 0;
}

/* ------------------------------------------------------------------ */
/* greedy decoding */

/* Caches of one generation, beyond the encoder's activations. */
struct t5_gen {
	float *ck, *cv;	/* [n_dec][Te, D]  cross-attention keys/values, computed once */
	float *sk, *sv;	/* [n_dec][max_new, D]  self-attention KV cache */
	float *pb;	/* [NH, max_new]  decoder bias for distances -(max_new-1)..0 */
	float *x, *xn, *q, *att;	/* one token: [C] or [D] (the feed-forward uses the
					 * encoder's f0/f1, which hold at least one row) */
	float *logits;	/* [V] */
};

/* arch->generate: greedy decoding from decoder_start. The encoder runs once,
 * the cross-attention keys/values of every layer are computed once, and the
 * self-attention keys/values of past positions are cached; each step runs
 * the decoder on one token. Stops after EOS (included) or max_new tokens. */
static int t5_generate(struct lora_model *m, const int32_t *input, size_t n_input, size_t max_new,
		       int32_t *out, size_t *n_out, struct lora_err *err)
{
	struct t5 *t = lora_model_core(m)->arch_state;
	struct lora_seq seq = { input, n_input, NULL, 0 };
	*n_out = 0;
	int rc = check_seqs(t, &seq, 1, false, err);
	if (rc < 0)
		return rc;
	if (max_new == 0)
		return 0;
	if (max_new > (1u << 20))
		return lora_errf(err, LORA_EINVAL, "t5: max_new_tokens %zu is too large", max_new);
	int Te = (int)n_input, Tn = (int)max_new, C = t->C, D = t->D, HS = t->HS, NH = t->NH;
	struct t5_shape s = { .Te = Te, .Td = 0, .Le = Te, .Ld = Tn, .R = max_rank(m, t), .HC = 1,
			      .W = lora_parallel_workers() };
	int zero = 0;
	struct t5_batch bt = { &seq, 1, &zero, &zero };
	struct t5_run r = { m, t, { 0 }, s.R > 0 ? s.R : 1 };
	size_t enc_floats = act_layout(&r.a, NULL, t, &s);
	size_t cross = (size_t)t->n_dec * Te * D, self = (size_t)t->n_dec * Tn * D;
	size_t wide = (size_t)(C > D ? C : D);	/* one token's vector: [C] or [D] */
	size_t gen_floats = 2 * round16(cross) + 2 * round16(self) + round16((size_t)NH * Tn) +
			    4 * round16(wide);
	float *slab = get_slab(t, enc_floats + gen_floats);
	if (!slab)
		return lora_errf(err, LORA_ENOMEM, "t5: out of memory for generation");
	act_layout(&r.a, slab, t, &s);
	struct t5_gen g;
	float *p = slab + enc_floats;
#define GVIEW(field, n) (g.field = p, p += round16(n))
	GVIEW(ck, cross);
	GVIEW(cv, cross);
	GVIEW(sk, self);
	GVIEW(sv, self);
	GVIEW(pb, (size_t)NH * Tn);
	GVIEW(x, wide);
	GVIEW(xn, wide);
	GVIEW(q, wide);
	GVIEW(att, wide);
#undef GVIEW
	g.logits = r.a.logits;	/* [1, V]; the LoRA scratch r.a.lr is at least [1, R] */

	encode(&r, &bt, &s);
	/* cross-attention keys and values of every decoder layer, once */
	for (int l = 0; l < t->n_dec; l++) {
		lin(&r, &t->dec[l].ck, g.ck + (size_t)l * Te * D, r.a.enc, Te);
		lin(&r, &t->dec[l].cv, g.cv + (size_t)l * Te * D, r.a.enc, Te);
	}
	/* bias for distances d = key - query in [-(Tn-1), 0]: pb[h*Tn + Tn-1 + d] */
	for (int d = -(Tn - 1); d <= 0; d++) {
		int bucket = rel_bucket(d, false, t->NB, t->maxd);
		for (int h = 0; h < NH; h++)
			g.pb[(size_t)h * Tn + (Tn - 1) + d] = t->rel_dec[(size_t)bucket * NH + h];
	}
	/* one token at a time */
	int tok = t->start;
	size_t n = 0;
	for (int pos = 0; pos < Tn; pos++) {
		memcpy(g.x, t->embed + (size_t)tok * C, (size_t)C * sizeof(float));
		for (int l = 0; l < t->n_dec; l++) {
			const struct t5_block *b = &t->dec[l];
			float *sk = g.sk + (size_t)l * Tn * D, *sv = g.sv + (size_t)l * Tn * D;
			lora_rmsnorm(g.xn, g.x, b->ln_sa, 1, C, t->eps);
			lin(&r, &b->q, g.q, g.xn, 1);
			lin(&r, &b->k, sk + (size_t)pos * D, g.xn, 1);
			lin(&r, &b->v, sv + (size_t)pos * D, g.xn, 1);
			attend(g.att, g.q, sk, sv, D, 1, pos + 1, pos, g.pb, Tn, Tn - 1, true, NH, HS,
			       r.a.S);
			lin_acc(&r, &b->o, g.x, g.att, 1);
			lora_rmsnorm(g.xn, g.x, b->ln_ca, 1, C, t->eps);
			lin(&r, &b->cq, g.q, g.xn, 1);
			attend(g.att, g.q, g.ck + (size_t)l * Te * D, g.cv + (size_t)l * Te * D, D, 1, Te,
			       0, NULL, 0, 0, false, NH, HS, r.a.S);
			lin_acc(&r, &b->co, g.x, g.att, 1);
			lora_rmsnorm(g.xn, g.x, b->ln_ff, 1, C, t->eps);
			ffn(&r, b, g.x, g.xn, 1, true);
		}
		lora_rmsnorm(g.xn, g.x, t->ln_dec, 1, C, t->eps);
		if (t->tied) {
			float sc = (float)(1.0 / sqrt((double)C));
			for (int i = 0; i < C; i++)
				g.xn[i] *= sc;
		}
		head_rows(&r, g.logits, g.xn, 1);
		tok = lora_argmax(g.logits, t->V);
		out[n++] = tok;
		if (lora_model_is_eos(m, tok))
			break;
	}
	*n_out = n;
	return 0;
}

/* The architecture model.c dispatches to for model_type "t5". */
const struct lora_arch lora_arch_t5 = {
	.name = "t5",
	.load = t5_load,
	.free = t5_free,
	.nll = t5_nll,
	.logits = t5_logits,
	.generate = t5_generate,
};
