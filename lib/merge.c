/*
 * merge — combining a pool of LoRA adapters with weights into one adapter
 * (see merge.h for the rules and man/lora-merge.1 for the math in words).
 *
 * Every method works module by module over the union of the pool's modules
 * (first-seen order); a module an adapter lacks gets no contribution from it.
 * Factors are read in any stream dtype and the arithmetic is done in double
 * (factors are small; the dense methods hold a few out x in double matrices,
 * one module at a time). Products go straight to CBLAS/LAPACKE in double
 * rather than through ops.h's f32 lora_gemm: the merge must be exact to f32
 * precision after cancellation (weights of opposite sign), and the QR/SVD
 * calls are double anyway. Every output tensor is f32 and every output module
 * has alpha = r, i.e. scale 1: the merged factors carry the scales.
 *
 * Limits: lorahub/mean need equal ranks per module; the dense methods (ties,
 * dare, magnitude) cost about 5 x out x in x 8 bytes of memory per module and
 * one dense SVD per module (LAPACK dgesvdx for the leading K triplets).
 */
#include "merge.h"
#include "ops.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lora_merge_params lora_merge_default_params(void)
{
	struct lora_merge_params p = {
		.method = LORA_MERGE_LORAHUB,
		.rank = 0,
		.density = 0.5,
		.sign_frequency = 0,
		.seed = 0,
		.verbose = 0,
	};
	return p;
}

static const char *const method_names[] = {
	[LORA_MERGE_LORAHUB] = "lorahub",
	[LORA_MERGE_LINEAR] = "linear",
	[LORA_MERGE_SVD] = "svd",
	[LORA_MERGE_TIES] = "ties",
	[LORA_MERGE_DARE] = "dare",
	[LORA_MERGE_MAGNITUDE] = "magnitude",
	[LORA_MERGE_MEAN] = "mean",
};

int lora_merge_method_parse(const char *s, enum lora_merge_method *out)
{
	for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++) {
		if (s && !strcmp(s, method_names[i])) {
			*out = (enum lora_merge_method)i;
			return 0;
		}
	}
	/* PEFT's spelling of the concatenation rule. */
	if (s && !strcmp(s, "cat")) {
		*out = LORA_MERGE_LINEAR;
		return 0;
	}
	return LORA_EINVAL;
}

const char *lora_merge_method_name(enum lora_merge_method m)
{
	if ((size_t)m < sizeof method_names / sizeof method_names[0])
		return method_names[m];
	return "?";
}

/* One adapter's contribution to one module. */
struct contrib {
	const struct lora_adapter *ad;
	const struct lora_module *m;
	double w;	/* merge weight */
	double s;	/* the module's scale alpha/r (or alpha/sqrt r) */
	int r;		/* rows of A = columns of B */
};

/* What a module of the result is built from. */
struct job {
	const char *name;
	int64_t out, in;
	struct contrib *c;
	size_t nc;
};

static double module_scale(const struct lora_adapter *ad, const struct lora_module *m)
{
	double r = m->r > 0 ? m->r : (double)m->a.shape[0];
	return ad->rslora ? m->alpha / sqrt(r) : m->alpha / r;
}

/* The module called name, trying index hint first: the adapters of a pool
 * usually list the same modules in the same order, and the plain scan made
 * the lookups quadratic (about 5% of a 20-adapter, 60-module merge went into
 * comparing names). An adapter that named one module twice (no reader makes
 * one) could contribute its later copy instead of its first. */
static const struct lora_module *find_module(const struct lora_adapter *ad, const char *name,
					     size_t hint)
{
	if (hint < ad->n_modules && !strcmp(ad->modules[hint].module, name))
		return &ad->modules[hint];
	for (size_t k = 0; k < ad->n_modules; k++)
		if (!strcmp(ad->modules[k].module, name))
			return &ad->modules[k];
	return NULL;
}

/* A freshly malloc'd double copy of t (any stream dtype), or NULL. */
static double *load_f64(const struct lora_tensor *t)
{
	size_t n = t->nbytes / lora_dtype_size(t->dtype);
	double *d = malloc((n ? n : 1) * sizeof *d);
	if (!d)
		return NULL;
	const unsigned char *p = t->data;
	for (size_t i = 0; i < n; i++) {
		if (t->dtype == LORA_F32) {
			float f;
			memcpy(&f, p + 4 * i, 4);
			d[i] = f;
		} else {
			uint16_t h;
			memcpy(&h, p + 2 * i, 2);
			d[i] = t->dtype == LORA_F16 ? lora_f16_to_f32(h) : lora_bf16_to_f32(h);
		}
	}
	return d;
}

static void *xcalloc(size_t n, size_t size)
{
	size_t bytes;
	if (lora_size_mul(n, size, &bytes))
		return NULL;
	return calloc(bytes ? bytes : 1, 1);
}

/* Free what merge put into *out (out->meta/extra are never set here). */
static void out_free(struct lora_adapter *out)
{
	for (size_t k = 0; k < out->n_modules; k++) {
		free(out->modules[k].module);
		lora_tensor_free(&out->modules[k].a);
		lora_tensor_free(&out->modules[k].b);
	}
	free(out->modules);
	free(out->name);
	free(out->base);
	memset(out, 0, sizeof *out);
}

/* Allocate the result module's factors, f32 A [r, in] and B [out, r]: zeroed,
 * or left undefined (zero false) for a caller that writes every element (the
 * lorahub merge: on a served pool the zeroing was a third of its time). */
static int module_alloc(struct lora_module *om, const struct job *j, int r, bool zero,
			struct lora_err *err)
{
	memset(om, 0, sizeof *om);
	om->module = strdup(j->name);
	if (!om->module)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	om->r = r;
	om->alpha = r;
	int (*alloc)(struct lora_tensor *, enum lora_dtype, int64_t, int64_t, struct lora_err *) =
		zero ? lora_tensor_alloc2 : lora_tensor_alloc2_uninit;
	int rc = alloc(&om->a, LORA_F32, r, j->in, err);
	if (!rc)
		rc = alloc(&om->b, LORA_F32, j->out, r, err);
	return rc;
}

/* ---- lorahub / mean: A = Σ w_i √s_i A_i, B = Σ w_i √s_i B_i ---- */

/* Elements of a factor summed per pass: the double accumulator (4 KB) stays
 * in L1 while every contributor's slice streams through it, so a merge reads
 * each pool factor once and allocates nothing per contributor (the merge of
 * a served pool is memory-bound: about 3.7 MB per adapter of a 135M model's
 * q/v at r 16). */
enum { LH_CHUNK = 512 };

/* acc[0..n) += c * t[off..off+n), t in any stream dtype, read unaligned. */
static void lh_axpy(double *acc, double c, const struct lora_tensor *t, size_t off, size_t n)
{
	const unsigned char *p = t->data;
	if (t->dtype == LORA_F32) {
		/* 4 lanes at a time (vector extensions: GCC -O2 leaves the
		 * plain loop scalar); the same operations, in the same order
		 * per element, as the scalar tail */
		typedef float v4f __attribute__((vector_size(16)));
		typedef double v4d __attribute__((vector_size(32)));
		p += 4 * off;
		size_t k = 0;
		for (; k + 4 <= n; k += 4) {
			v4f f;
			v4d a;
			memcpy(&f, p + 4 * k, sizeof f);
			memcpy(&a, acc + k, sizeof a);
			a += c * __builtin_convertvector(f, v4d);
			memcpy(acc + k, &a, sizeof a);
		}
		for (; k < n; k++) {
			float f;
			memcpy(&f, p + 4 * k, 4);
			acc[k] += c * (double)f;
		}
		return;
	}
	p += 2 * off;
	bool f16 = t->dtype == LORA_F16;
	for (size_t k = 0; k < n; k++) {
		uint16_t h;
		memcpy(&h, p + 2 * k, 2);
		acc[k] += c * (double)(f16 ? lora_f16_to_f32(h) : lora_bf16_to_f32(h));
	}
}

/* One factor of the result: out[k] = (float) Σ_i coef_i * factor_i[k], the
 * sum in double in contributor order (as a whole-array sum would be). */
static void lh_factor(const struct job *j, const double *coef, bool is_b, float *out, size_t n)
{
	double acc[LH_CHUNK];
	for (size_t off = 0; off < n; off += LH_CHUNK) {
		size_t m = n - off < LH_CHUNK ? n - off : LH_CHUNK;
		memset(acc, 0, m * sizeof *acc);
		for (size_t i = 0; i < j->nc; i++)
			if (j->c[i].w != 0)
				lh_axpy(acc, coef[i], is_b ? &j->c[i].m->b : &j->c[i].m->a, off, m);
		for (size_t k = 0; k < m; k++)
			out[off + k] = (float)acc[k];
	}
}

/* The factors of one result module, filled in by lh_unit. */
struct lh_task {
	const struct job *j;
	struct lora_module *om;
	double *ca, *cb;	/* per contributor: w_i √s_i (sign of s on A) */
};

struct lh_all {
	struct lh_task *t;
};

/* Unit 2k is module k's A, 2k+1 its B: independent outputs, so the modules
 * are summed on the worker pool (the sum reads the whole pool once). */
static void lh_unit(void *ctx, int u, int worker)
{
	(void)worker;
	const struct lh_task *t = &((const struct lh_all *)ctx)->t[u / 2];
	size_t r = (size_t)t->om->r;
	if (u % 2 == 0)
		lh_factor(t->j, t->ca, false, t->om->a.data, r * (size_t)t->j->in);
	else
		lh_factor(t->j, t->cb, true, t->om->b.data, (size_t)t->j->out * r);
}

/* Every module of the result by the lorahub rule: ranks checked and factors
 * allocated in order (out->n_modules counts what to free on failure), then
 * the sums on the worker pool. */
static int merge_lorahub_all(struct job *jobs, size_t nj, struct lora_adapter *out,
			     struct lora_err *err)
{
	size_t ncoef = 0;
	for (size_t k = 0; k < nj; k++)
		ncoef += 2 * jobs[k].nc;
	struct lh_task *t = xcalloc(nj, sizeof *t);
	double *coef = xcalloc(ncoef, sizeof *coef);
	int rc = 0;
	if (!t || !coef || nj > INT32_MAX / 2)
		rc = lora_errf(err, LORA_ENOMEM, "out of memory");
	double *cp = coef;
	for (size_t k = 0; k < nj && !rc; k++) {
		const struct job *j = &jobs[k];
		int r = j->c[0].r;
		for (size_t i = 1; i < j->nc && !rc; i++)
			if (j->c[i].r != r)
				rc = lora_errf(err, LORA_EINVAL,
					       "module '%s': adapter '%s' has rank %d but adapter '%s' "
					       "has rank %d; the lorahub rule needs equal ranks (use "
					       "--method linear or svd)",
					       j->name, j->c[0].ad->name, r, j->c[i].ad->name, j->c[i].r);
		if (rc)
			break;
		out->n_modules = k + 1;
		if ((rc = module_alloc(&out->modules[k], j, r, false, err)))
			break;
		t[k] = (struct lh_task){j, &out->modules[k], cp, cp + j->nc};
		for (size_t i = 0; i < j->nc; i++) {
			/* Split the scale evenly between the factors; a negative
			 * alpha keeps its sign on A so that one-hot w gives
			 * s_i B_i A_i back. */
			const struct contrib *c = &j->c[i];
			double root = sqrt(fabs(c->s));
			t[k].ca[i] = c->w * (c->s < 0 ? -root : root);
			t[k].cb[i] = c->w * root;
		}
		cp += 2 * j->nc;
	}
	if (!rc) {
		struct lh_all all = {t};
		lora_parallel_for((int)(2 * nj), lh_unit, &all);
	}
	free(coef);
	free(t);
	return rc;
}

/* ---- linear: A' = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B' = [B_1 B_2 ...] ---- */

static int merge_linear(const struct job *j, struct lora_module *om, struct lora_err *err)
{
	int R = 0;
	for (size_t i = 0; i < j->nc; i++)
		R += j->c[i].r;
	int rc = module_alloc(om, j, R, true, err);
	if (rc)
		return rc;
	float *fa = om->a.data, *fb = om->b.data;
	int col = 0;
	for (size_t i = 0; i < j->nc; i++) {
		const struct contrib *c = &j->c[i];
		double *a = load_f64(&c->m->a), *b = load_f64(&c->m->b);
		if (!a || !b) {
			free(a);
			free(b);
			return lora_errf(err, LORA_ENOMEM, "module '%s': out of memory", j->name);
		}
		double k = c->w * c->s;
		size_t na = (size_t)c->r * (size_t)j->in;
		float *dst = fa + (size_t)col * (size_t)j->in;
		for (size_t e = 0; e < na; e++)
			dst[e] = (float)(k * a[e]);
		for (int64_t o = 0; o < j->out; o++)
			for (int q = 0; q < c->r; q++)
				fb[(size_t)o * (size_t)R + (size_t)(col + q)] =
					(float)b[(size_t)o * (size_t)c->r + (size_t)q];
		col += c->r;
		free(a);
		free(b);
	}
	return 0;
}

/* ---- shared by svd and the dense methods ---- */

/* Relative Frobenius error of keeping the first K of t singular values. */
static double trunc_error(const double *S, int t, int K)
{
	double all = 0, drop = 0;
	for (int k = 0; k < t; k++) {
		all += S[k] * S[k];
		if (k >= K)
			drop += S[k] * S[k];
	}
	return all > 0 ? sqrt(drop / all) : 0.0;
}

static int report_add(char **report, const char *module, int K, int t, double e)
{
	if (!report)
		return 0;
	size_t old = *report ? strlen(*report) : 0;
	char line[1200];
	int len = snprintf(line, sizeof line,
			   "module '%s': rank %d of %d, relative Frobenius error %.3e\n", module,
			   K, t, e);
	if (len < 0)
		return LORA_EIO;
	if ((size_t)len >= sizeof line)
		len = (int)sizeof line - 1;
	char *p = realloc(*report, old + (size_t)len + 1);
	if (!p)
		return LORA_ENOMEM;
	memcpy(p + old, line, (size_t)len + 1);
	*report = p;
	return 0;
}

/* ---- svd: exact Σ c_i B_i A_i truncated to rank K from the factors ----
 *
 * With Bc = [B_1 .. B_n] (out x R), Ac = [A_1; ..; A_n] (R x in) and
 * C = diag(w_i s_i repeated r_i times):  ΔW = Bc C Ac. QR: Bc = Q_B R_B,
 * Ac^T = Q_A R_A, so ΔW = Q_B (R_B C R_A^T) Q_A^T; the core M = R_B C R_A^T is
 * at most R x R. With M = U S V^T, ΔW = (Q_B U) S (Q_A V)^T exactly, and
 * keeping K singular triplets is the best rank-K approximation. We give each
 * factor √S: B' = Q_B U_K √S_K, A' = √S_K V_K^T Q_A^T. Cost: two QRs,
 * O((out + in) R^2), the K leading triplets of the R x R core (dgesvdx), and
 * Q applied to K columns (dormqr); never an out x in matrix. The truncation
 * error follows from ||M||_F^2 = Σ S_j^2. All matrices below are column-major. */

/* QR of X (m x R, column-major): X is overwritten by LAPACK's Householder
 * form of Q (m x p, p = min(m, R)), tau (p) receives its scalars, and the
 * upper-triangular factor goes to Rm (p x R, column-major). Q is never formed:
 * applying it to the K kept columns (dormqr) costs O(m R K), forming it
 * O(m R^2). */
static int qr(double *X, int m, int R, double *Rm, double *tau)
{
	int p = m < R ? m : R;
	if (LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, R, X, m, tau))
		return LORA_EINVAL;
	for (int c = 0; c < R; c++)
		for (int rr = 0; rr < p; rr++)
			Rm[(size_t)c * (size_t)p + (size_t)rr] =
				rr <= c ? X[(size_t)c * (size_t)m + (size_t)rr] : 0.0;
	return 0;
}

/* Y (m x K, column-major; its first p rows set, the rest zero) := Q Y. */
static int apply_q(const double *X, int m, int p, const double *tau, double *Y, int K)
{
	if (p == 0 || K == 0)
		return 0;
	return LAPACKE_dormqr(LAPACK_COL_MAJOR, 'L', 'N', m, K, p, X, m, tau, Y, m) ? LORA_EINVAL
										       : 0;
}

static int merge_svd(const struct job *j, int K, struct lora_module *om, double *err_out,
		     int *t_out, struct lora_err *err)
{
	int R = 0, rmax = 0;
	for (size_t i = 0; i < j->nc; i++) {
		R += j->c[i].r;
		if (j->c[i].r > rmax)
			rmax = j->c[i].r;
	}
	if (K <= 0)
		K = rmax;
	int out = (int)j->out, in = (int)j->in;
	int p = out < R ? out : R, q = in < R ? in : R, t = p < q ? p : q;
	double *Bc = xcalloc((size_t)out * (size_t)R, sizeof(double));
	double *At = xcalloc((size_t)in * (size_t)R, sizeof(double));
	double *RB = xcalloc((size_t)p * (size_t)R, sizeof(double));
	double *RA = xcalloc((size_t)q * (size_t)R, sizeof(double));
	double *tauB = xcalloc((size_t)(p ? p : 1), sizeof(double));
	double *tauA = xcalloc((size_t)(q ? q : 1), sizeof(double));
	double *M = xcalloc((size_t)p * (size_t)q, sizeof(double));
	double *U = xcalloc((size_t)p * (size_t)t, sizeof(double));
	double *VT = xcalloc((size_t)t * (size_t)q, sizeof(double));
	double *S = xcalloc((size_t)(t ? t : 1), sizeof(double));
	double *cvec = xcalloc((size_t)R, sizeof(double));
	double *Bo = NULL, *Ao = NULL;
	int rc = 0;
	if (!Bc || !At || !RB || !RA || !tauB || !tauA || !M || !U || !VT || !S || !cvec) {
		rc = lora_errf(err, LORA_ENOMEM, "module '%s': out of memory", j->name);
		goto done;
	}
	/* Bc columns are B_i's columns; At columns are A_i's rows. */
	int col = 0;
	for (size_t i = 0; i < j->nc; i++) {
		const struct contrib *c = &j->c[i];
		double *a = load_f64(&c->m->a), *b = load_f64(&c->m->b);
		if (!a || !b) {
			free(a);
			free(b);
			rc = lora_errf(err, LORA_ENOMEM, "module '%s': out of memory", j->name);
			goto done;
		}
		for (int qq = 0; qq < c->r; qq++) {
			cvec[col + qq] = c->w * c->s;
			for (int o = 0; o < out; o++)
				Bc[(size_t)(col + qq) * (size_t)out + (size_t)o] =
					b[(size_t)o * (size_t)c->r + (size_t)qq];
			memcpy(At + (size_t)(col + qq) * (size_t)in, a + (size_t)qq * (size_t)in,
			       (size_t)in * sizeof(double));
		}
		col += c->r;
		free(a);
		free(b);
	}
	if (qr(Bc, out, R, RB, tauB) || qr(At, in, R, RA, tauA)) {
		rc = lora_errf(err, LORA_EINVAL, "module '%s': QR factorization failed", j->name);
		goto done;
	}
	/* M = RB diag(c) RA^T: scale RB's columns, then one gemm. */
	for (int c = 0; c < R; c++)
		for (int rr = 0; rr < p; rr++)
			RB[(size_t)c * (size_t)p + (size_t)rr] *= cvec[c];
	cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, p, q, R, 1.0, RB, p, RA, q, 0.0, M,
		    p);
	int Ke = K < t ? K : t;
	if (Ke < 1)
		Ke = 1;	/* a rank-0 module is not representable: keep one zero row */
	if (t > 0 && Ke < t) {
		/* Only the K leading triplets are needed (dgesvdx: bidiagonalize,
		 * then bisection for K values), and the truncation error follows
		 * from ||M||_F^2 = Σ S_j^2 without the other values. */
		double fro = 0;
		for (size_t e = 0; e < (size_t)p * (size_t)q; e++)
			fro += M[e] * M[e];
		lapack_int ns = 0;
		lapack_int *superb = malloc(12 * (size_t)t * sizeof *superb);
		int bad = !superb || LAPACKE_dgesvdx(LAPACK_COL_MAJOR, 'V', 'V', 'I', p, q, M, p, 0, 0,
						    1, Ke, &ns, S, U, p, VT, t, superb) ||
			  ns != Ke;
		free(superb);
		if (bad) {
			rc = lora_errf(err, LORA_EINVAL, "module '%s': SVD did not converge", j->name);
			goto done;
		}
		double kept = 0;
		for (int k = 0; k < Ke; k++)
			kept += S[k] * S[k];
		*err_out = fro > 0 && fro > kept ? sqrt((fro - kept) / fro) : 0.0;
	} else {
		if (t > 0 && LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', p, q, M, p, S, U, p, VT, t)) {
			rc = lora_errf(err, LORA_EINVAL, "module '%s': SVD did not converge", j->name);
			goto done;
		}
		*err_out = trunc_error(S, t, Ke);
	}
	*t_out = t;
	/* Bo = Q_B [U_K √S; 0] (out x Ke), Ao = Q_A [V_K √S; 0] (in x Ke). */
	Bo = xcalloc((size_t)out * (size_t)Ke, sizeof(double));
	Ao = xcalloc((size_t)in * (size_t)Ke, sizeof(double));
	if (!Bo || !Ao) {
		rc = lora_errf(err, LORA_ENOMEM, "module '%s': out of memory", j->name);
		goto done;
	}
	for (int k = 0; k < Ke && k < t; k++) {
		double rs = sqrt(S[k]);
		for (int rr = 0; rr < p; rr++)
			Bo[(size_t)k * (size_t)out + (size_t)rr] =
				U[(size_t)k * (size_t)p + (size_t)rr] * rs;
		for (int rr = 0; rr < q; rr++)
			Ao[(size_t)k * (size_t)in + (size_t)rr] =
				VT[(size_t)rr * (size_t)t + (size_t)k] * rs;
	}
	if (apply_q(Bc, out, p, tauB, Bo, Ke) || apply_q(At, in, q, tauA, Ao, Ke)) {
		rc = lora_errf(err, LORA_EINVAL, "module '%s': applying Q failed", j->name);
		goto done;
	}
	rc = module_alloc(om, j, Ke, true, err);
	if (!rc) {
		float *fa = om->a.data, *fb = om->b.data;
		/* Ao column-major in x Ke is A' row-major [Ke, in]. */
		for (size_t e = 0; e < (size_t)in * (size_t)Ke; e++)
			fa[e] = (float)Ao[e];
		for (int o = 0; o < out; o++)
			for (int k = 0; k < Ke; k++)
				fb[(size_t)o * (size_t)Ke + (size_t)k] =
					(float)Bo[(size_t)k * (size_t)out + (size_t)o];
	}
done:
	free(Bc);
	free(At);
	free(RB);
	free(RA);
	free(tauB);
	free(tauA);
	free(M);
	free(U);
	free(VT);
	free(S);
	free(cvec);
	free(Bo);
	free(Ao);
	return rc;
}

/* ---- dense methods: ties, dare, magnitude ---- */

/* splitmix64 (Steele, Lea, Flood 2014): the generator DARE's masks use. */
static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* The DARE mask of (adapter, module) depends only on the seed and the two
 * names, not on pool order: state = seed ^ fnv1a64(adapter) ^
 * rotl(fnv1a64(module), 32); one splitmix64 draw per element in row-major
 * order, u = top 53 bits / 2^53, kept iff u < density. */
static uint64_t dare_state(uint64_t seed, const char *adapter, const char *module)
{
	uint64_t hm = fnv1a64(module);
	return seed ^ fnv1a64(adapter) ^ ((hm << 32) | (hm >> 32));
}

/* The k-th largest of x[0..n) (k in 1..n), by quickselect with a three-way
 * partition (many equal entries, e.g. zeros, stay linear); x is reordered. */
static double kth_largest(double *x, size_t n, size_t k)
{
	ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, want = (ptrdiff_t)k - 1;
	while (lo < hi) {
		double pivot = x[lo + (hi - lo) / 2], tmp;
		ptrdiff_t lt = lo, i = lo, gt = hi;
		/* [lo,lt) > pivot, [lt,i) == pivot, (gt,hi] < pivot */
		while (i <= gt) {
			if (x[i] > pivot) {
				tmp = x[lt], x[lt] = x[i], x[i] = tmp;
				lt++, i++;
			} else if (x[i] < pivot) {
				tmp = x[gt], x[gt] = x[i], x[i] = tmp;
				gt--;
			} else {
				i++;
			}
		}
		if (want < lt)
			hi = lt - 1;
		else if (want > gt)
			lo = gt + 1;
		else
			return pivot;
	}
	return x[want];
}

/* dw = s B A (out x in, row-major). */
static int dense_delta(const struct contrib *c, const struct job *j, double *dw)
{
	double *a = load_f64(&c->m->a), *b = load_f64(&c->m->b);
	if (!a || !b) {
		free(a);
		free(b);
		return LORA_ENOMEM;
	}
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)j->out, (int)j->in, c->r, c->s,
		    b, c->r, a, (int)j->in, 0.0, dw, (int)j->in);
	free(a);
	free(b);
	return 0;
}

/* Keep the k = floor(density * n) largest magnitudes of dw (entries equal to
 * the k-th largest magnitude are all kept); zero the rest. */
static int prune_magnitude(double *dw, size_t n, double density, double *scratch)
{
	size_t k = (size_t)(density * (double)n);
	if (k >= n)
		return 0;
	if (k == 0) {
		memset(dw, 0, n * sizeof *dw);
		return 0;
	}
	for (size_t e = 0; e < n; e++)
		scratch[e] = fabs(dw[e]);
	double thr = kth_largest(scratch, n, k);
	for (size_t e = 0; e < n; e++)
		if (fabs(dw[e]) < thr)
			dw[e] = 0;
	return 0;
}

static void prune_random(double *dw, size_t n, double density, uint64_t state)
{
	for (size_t e = 0; e < n; e++) {
		double u = (double)(splitmix64(&state) >> 11) * 0x1.0p-53;
		dw[e] = u < density ? dw[e] / density : 0.0;
	}
}

/* Refactor the dense D (out x in, row-major; destroyed) to rank K. */
static int refactor(double *D, const struct job *j, int K, struct lora_module *om, double *e_out,
		    int *t_out, struct lora_err *err)
{
	int out = (int)j->out, in = (int)j->in, t = out < in ? out : in;
	int Ke = K < t ? K : t;
	/* Row-major D is column-major D^T (in x out) = U1 S VT1, so
	 * D = VT1^T S U1^T: B'[o,k] = VT1[k,o] √S_k, A'[k,c] = √S_k U1[c,k].
	 * When truncating, only the Ke leading triplets are computed (dgesvdx)
	 * and the error comes from ||D||_F^2 = Σ S_j^2. */
	int ldvt = Ke < t ? Ke : t;
	double *S = xcalloc((size_t)t, sizeof(double));
	double *U1 = xcalloc((size_t)in * (size_t)ldvt, sizeof(double));
	double *VT1 = xcalloc((size_t)ldvt * (size_t)out, sizeof(double));
	lapack_int *superb = Ke < t ? xcalloc(12 * (size_t)t, sizeof *superb) : NULL;
	int rc = 0;
	if (!S || !U1 || !VT1 || (Ke < t && !superb)) {
		rc = lora_errf(err, LORA_ENOMEM, "module '%s': out of memory", j->name);
		goto done;
	}
	if (Ke < t) {
		double fro = 0, kept = 0;
		for (size_t e = 0; e < (size_t)in * (size_t)out; e++)
			fro += D[e] * D[e];
		lapack_int ns = 0;
		if (LAPACKE_dgesvdx(LAPACK_COL_MAJOR, 'V', 'V', 'I', in, out, D, in, 0, 0, 1, Ke, &ns,
				    S, U1, in, VT1, ldvt, superb) ||
		    ns != Ke) {
			rc = lora_errf(err, LORA_EINVAL, "module '%s': SVD did not converge", j->name);
			goto done;
		}
		for (int k = 0; k < Ke; k++)
			kept += S[k] * S[k];
		*e_out = fro > 0 && fro > kept ? sqrt((fro - kept) / fro) : 0.0;
	} else {
		if (LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', in, out, D, in, S, U1, in, VT1, ldvt)) {
			rc = lora_errf(err, LORA_EINVAL, "module '%s': SVD did not converge", j->name);
			goto done;
		}
		*e_out = trunc_error(S, t, Ke);
	}
	*t_out = t;
	rc = module_alloc(om, j, Ke, true, err);
	if (rc)
		goto done;
	float *fa = om->a.data, *fb = om->b.data;
	for (int k = 0; k < Ke; k++) {
		double rs = sqrt(S[k]);
		for (int c = 0; c < in; c++)
			fa[(size_t)k * (size_t)in + (size_t)c] =
				(float)(rs * U1[(size_t)k * (size_t)in + (size_t)c]);
		for (int o = 0; o < out; o++)
			fb[(size_t)o * (size_t)Ke + (size_t)k] =
				(float)(rs * VT1[(size_t)o * (size_t)ldvt + (size_t)k]);
	}
done:
	free(S);
	free(U1);
	free(VT1);
	free(superb);
	return rc;
}

static int merge_dense(const struct job *j, const struct lora_merge_params *p, int K,
		       struct lora_module *om, double *e_out, int *t_out, struct lora_err *err)
{
	size_t n = (size_t)j->out * (size_t)j->in;
	int ties = p->method == LORA_MERGE_TIES;
	double *D = xcalloc(n, sizeof(double)), *dw = xcalloc(n, sizeof(double));
	double *scratch = p->method == LORA_MERGE_DARE ? NULL : xcalloc(n, sizeof(double));
	double *elect = ties ? xcalloc(n, sizeof(double)) : NULL;
	double *count = ties ? xcalloc(n, sizeof(double)) : NULL;
	int rc = 0;
	if (!D || !dw || (p->method != LORA_MERGE_DARE && !scratch) || (ties && (!elect || !count))) {
		rc = lora_errf(err, LORA_ENOMEM, "module '%s': out of memory for a dense %lldx%lld merge",
			       j->name, (long long)j->out, (long long)j->in);
		goto done;
	}
	/* TIES pass 1: elect a sign per entry from the pruned, unweighted ΔW_i. */
	for (size_t i = 0; ties && i < j->nc; i++) {
		if (dense_delta(&j->c[i], j, dw)) {
			rc = lora_errf(err, LORA_ENOMEM, "module '%s': out of memory", j->name);
			goto done;
		}
		prune_magnitude(dw, n, p->density, scratch);
		for (size_t e = 0; e < n; e++)
			elect[e] += p->sign_frequency ? (double)((dw[e] > 0) - (dw[e] < 0)) : dw[e];
	}
	for (size_t i = 0; i < j->nc; i++) {
		const struct contrib *c = &j->c[i];
		if (dense_delta(c, j, dw)) {
			rc = lora_errf(err, LORA_ENOMEM, "module '%s': out of memory", j->name);
			goto done;
		}
		if (p->method == LORA_MERGE_DARE) {
			prune_random(dw, n, p->density, dare_state(p->seed, c->ad->name, j->name));
		} else {
			prune_magnitude(dw, n, p->density, scratch);
		}
		if (!ties) {
			for (size_t e = 0; e < n; e++)
				D[e] += c->w * dw[e];
			continue;
		}
		/* TIES pass 2: disjoint mean over the entries agreeing with the
		 * elected sign (a zero entry agrees with nothing). */
		for (size_t e = 0; e < n; e++) {
			int sg = (dw[e] > 0) - (dw[e] < 0);
			int maj = elect[e] >= 0 ? 1 : -1;
			if (sg == maj) {
				D[e] += c->w * dw[e];
				count[e] += 1;
			}
		}
	}
	if (ties)
		for (size_t e = 0; e < n; e++)
			D[e] /= count[e] > 1 ? count[e] : 1;
	/* The dense buffers are no longer needed; free before the SVD. */
	free(dw);
	dw = NULL;
	free(scratch);
	scratch = NULL;
	free(elect);
	elect = NULL;
	free(count);
	count = NULL;
	rc = refactor(D, j, K, om, e_out, t_out, err);
done:
	free(D);
	free(dw);
	free(scratch);
	free(elect);
	free(count);
	return rc;
}

/* ---- the driver ---- */

static int build_jobs(const struct lora_adapter *const *pool, size_t n, const double *w,
		      struct job **jobs_out, size_t *nj_out, struct lora_err *err)
{
	size_t cap = 0, nj = 0;
	struct job *jobs = NULL;
	int rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		for (size_t k = 0; k < pool[i]->n_modules; k++) {
			const struct lora_module *m = &pool[i]->modules[k];
			size_t f = nj;
			if (k < nj && !strcmp(jobs[k].name, m->module))
				f = k;	/* the common case: the same order as before */
			for (size_t g = 0; f == nj && g < nj; g++)
				if (!strcmp(jobs[g].name, m->module))
					f = g;
			if (f < nj)
				continue;
			if (nj == cap) {
				size_t nc = cap ? 2 * cap : 16;
				struct job *p = realloc(jobs, nc * sizeof *p);
				if (!p) {
					rc = lora_errf(err, LORA_ENOMEM, "out of memory");
					break;
				}
				jobs = p;
				cap = nc;
			}
			struct job *jb = &jobs[nj++];
			memset(jb, 0, sizeof *jb);
			jb->name = m->module;
			jb->out = m->b.shape[0];
			jb->in = m->a.shape[1];
			jb->c = calloc(n, sizeof *jb->c);
			if (!jb->c) {
				rc = lora_errf(err, LORA_ENOMEM, "out of memory");
				break;
			}
			for (size_t ii = i; ii < n; ii++) {
				const struct lora_module *mm = find_module(pool[ii], m->module, k);
				if (!mm)
					continue;
				if (mm->a.ndim != 2 || mm->b.ndim != 2 ||
				    mm->a.shape[0] != mm->b.shape[1] || mm->a.shape[1] != jb->in ||
				    mm->b.shape[0] != jb->out) {
					rc = lora_errf(err, LORA_EINVAL,
						       "module '%s': adapter '%s' has A [%lld,%lld] B "
						       "[%lld,%lld], but adapter '%s' updates a "
						       "[%lld,%lld] weight",
						       m->module, pool[ii]->name,
						       (long long)mm->a.shape[0], (long long)mm->a.shape[1],
						       (long long)mm->b.shape[0], (long long)mm->b.shape[1],
						       pool[i]->name, (long long)jb->out, (long long)jb->in);
					break;
				}
				if (jb->out > INT32_MAX || jb->in > INT32_MAX || mm->a.shape[0] < 1 ||
				    mm->a.shape[0] > 1 << 20) {
					rc = lora_errf(err, LORA_EINVAL,
						       "module '%s': adapter '%s': unsupported size",
						       m->module, pool[ii]->name);
					break;
				}
				struct contrib *c = &jb->c[jb->nc++];
				c->ad = pool[ii];
				c->m = mm;
				c->w = w[ii];
				c->s = module_scale(pool[ii], mm);
				c->r = (int)mm->a.shape[0];
				if (!isfinite(c->s)) {
					rc = lora_errf(err, LORA_EINVAL,
						       "module '%s': adapter '%s' has a non-finite "
						       "scale (alpha %g, r %d)",
						       m->module, pool[ii]->name, mm->alpha, mm->r);
					break;
				}
			}
			if (rc)
				break;
		}
	}
	*jobs_out = jobs;
	*nj_out = nj;
	return rc;
}

int lora_merge(const struct lora_adapter *const *pool, size_t n, const double *w,
	       const struct lora_merge_params *p, struct lora_adapter *out, char **report,
	       struct lora_err *err)
{
	memset(out, 0, sizeof *out);
	if (report)
		*report = NULL;
	if (n == 0)
		return lora_errf(err, LORA_EINVAL, "empty pool: no adapters to merge");
	enum lora_merge_method method = p->method;
	if ((unsigned)method > LORA_MERGE_MEAN)
		return lora_errf(err, LORA_EINVAL, "unknown merge method %d", (int)method);
	int dense = method == LORA_MERGE_TIES || method == LORA_MERGE_DARE ||
		    method == LORA_MERGE_MAGNITUDE;
	if (dense && !(p->density > 0 && p->density <= 1))
		return lora_errf(err, LORA_EINVAL, "density %g is not in (0, 1]", p->density);
	if (p->rank < 0)
		return lora_errf(err, LORA_EINVAL, "rank %d is negative", p->rank);
	double *wv = malloc(n * sizeof *wv);
	if (!wv)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		wv[i] = method == LORA_MERGE_MEAN ? 1.0 / (double)n : w[i];
		if (!isfinite(wv[i])) {
			int rc = lora_errf(err, LORA_EINVAL,
					   "weight %zu (adapter '%s') is not finite (%g)", i + 1,
					   pool[i]->name ? pool[i]->name : "?", wv[i]);
			free(wv);
			return rc;
		}
	}
	struct job *jobs = NULL;
	size_t nj = 0, nj_done = 0;
	int rc = build_jobs(pool, n, wv, &jobs, &nj, err);
	if (!rc && nj == 0)
		rc = lora_errf(err, LORA_EINVAL, "the pool's adapters have no modules");
	if (!rc) {
		out->name = strdup(pool[0]->name ? pool[0]->name : "merged");
		out->base = pool[0]->base ? strdup(pool[0]->base) : NULL;
		out->modules = calloc(nj, sizeof *out->modules);
		if (!out->name || (pool[0]->base && !out->base) || !out->modules)
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	if (!rc && (method == LORA_MERGE_LORAHUB || method == LORA_MERGE_MEAN)) {
		rc = merge_lorahub_all(jobs, nj, out, err);
		nj_done = nj;
	}
	for (size_t k = nj_done; k < nj && !rc; k++) {
		struct job *jb = &jobs[k];
		struct lora_module *om = &out->modules[k];
		double e = 0;
		int t = 0;
		/* The dense methods skip zero weights: a pool member the weights
		 * do not name must not vote in TIES's sign election. */
		int rmax = 0;
		for (size_t i = 0; i < jb->nc; i++)
			if (jb->c[i].r > rmax)
				rmax = jb->c[i].r;
		if (dense) {
			size_t keep = 0;
			for (size_t i = 0; i < jb->nc; i++)
				if (jb->c[i].w != 0)
					jb->c[keep++] = jb->c[i];
			jb->nc = keep;
		}
		switch (method) {
		case LORA_MERGE_LINEAR:
			rc = merge_linear(jb, om, err);
			break;
		case LORA_MERGE_SVD:
			rc = merge_svd(jb, p->rank, om, &e, &t, err);
			break;
		default:
			rc = merge_dense(jb, p, p->rank > 0 ? p->rank : rmax, om, &e, &t, err);
			break;
		}
		out->n_modules = k + 1;
		if (!rc && p->verbose && report && (method == LORA_MERGE_SVD || dense) &&
		    report_add(report, jb->name, om->r, t, e))
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	for (size_t k = 0; k < nj; k++)
		free(jobs[k].c);
	free(jobs);
	free(wv);
	if (rc) {
		out_free(out);
		if (report) {
			free(*report);
			*report = NULL;
		}
		return rc;
	}
	int rmax = 0;
	for (size_t k = 0; k < out->n_modules; k++)
		if (out->modules[k].r > rmax)
			rmax = out->modules[k].r;
	out->r = rmax;
	out->alpha = rmax;
	out->rslora = false;
	return 0;
}
