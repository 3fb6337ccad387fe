/*
 * bf16 — the AVX512-BF16 Linear product (see bf16.h).
 *
 * Layouts. A packed weight is ceil(N/NR) panels of NR columns; panel j holds,
 * for every pair of inputs p (K padded with a zero to even), NR dwords
 * [p][c] = bf16(W[j*NR+c][2p]) | bf16(W[j*NR+c][2p+1]) << 16: exactly the
 * operand vdpbf16ps wants, so the micro-kernel loads it straight. Columns past
 * N are zero. x is converted per call into bf16 rows in K blocks of at most
 * KC = 384 inputs, split evenly ([block][Mp rows][kc] with Mp = M rounded up
 * to MR, padding rows zero), so that one block of x (Mp*kc*2 bytes, 0.75 MB
 * at M = 1000) stays in each core's L2 (1 MB on the Zen 5 these run on)
 * while the kernel sweeps the panels; the kernel broadcasts one dword (two
 * inputs) of each of its MR rows per step. (KC 256 and 512 measured no
 * better within the shared host's noise.)
 *
 * Loops (GotoBLAS/BLIS order, with the weight already packed). Weights up
 * to 4 MB (every SmolLM-135M and T5-small/base Linear) split the work over M:
 * each item packs its own rows of x, then loops K blocks, panels and its
 * MR-row tiles; the weight stays in L2/L3 and there is one pass over the
 * workers. Bigger weights split over N: x is packed first (one pass), then
 * items of a few panels loop K blocks, their panels, and all of M, so the
 * weight's kc x NR micro-panel (24 KB) is reused from L1 across the M sweep.
 * (Over M measured 1.1-1.4x faster than over N on the 1.7 MB SmolLM FFN
 * weights, and more on the small ones, on a shared 2-core host.)
 * Products under 4 MFLOP (M*N*K < 2e6: a generation step's single row) run
 * on the calling thread: starting workers would cost more than they save.
 * The MR x NR = 12 x 32 tile keeps 24 accumulators in zmm registers.
 *
 * Packing is plain C (any CPU), split over the workers for big matrices;
 * for a whole model it is dominated by page faults on the source and the
 * new copy (about 2 s for SmolLM-135M's 106M Linear weights on a 2-core VM).
 *
 * Numerics: each product of two bf16 values is exact in f32; vdpbf16ps adds
 * the pair and the accumulator in f32 (its rounding of the three-term sum is
 * not IEEE: it may flush denormals), so against a float64 product of the
 * bf16-rounded inputs the error is f32 accumulation error only.
 */
#include "bf16.h"
#include "cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "tensor.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define BF16_X86 1
#include <immintrin.h>
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define BF16_X86 0
#endif

#ifndef BF16_KC
#define BF16_KC 384
#endif
#ifndef M_SPLIT_BYTES
#define M_SPLIT_BYTES (4 << 20)
#endif
enum { MR = 12, NR = 32, KC = BF16_KC, ROWS_PER_PACK = 96 };

struct lora_bf16_mat {
	int n, k;	/* logical shape [N, K] */
	int kp;		/* input pairs: ceil(K / 2) */
	int np;		/* panels: ceil(N / NR) */
	size_t bytes;
	uint32_t *data;	/* [np][kp][NR], 64-byte aligned */
};

bool lora_bf16_supported(void)
{
#if BF16_X86
	const char *hook = getenv("LORA_BF16_UNSUPPORTED");
	if (hook && *hook)
		return false;
	return lora_cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
	return false;
#endif
}

float lora_bf16_round(float f)
{
	return lora_bf16_to_f32(lora_f32_to_bf16(f));
}

/* ---- packing the weight (plain C, once per model) ---- */

static int mat_new(int N, int K, struct lora_bf16_mat **out, struct lora_err *err)
{
	*out = NULL;	/* on failure too */
	if (N <= 0 || K <= 0)
		return lora_errf(err, LORA_EINVAL, "bf16 pack: bad shape [%d,%d]", N, K);
	struct lora_bf16_mat *w = calloc(1, sizeof *w);
	if (!w)
		return lora_errf(err, LORA_ENOMEM, "out of memory packing a [%d,%d] bf16 weight", N, K);
	w->n = N;
	w->k = K;
	w->kp = (K + 1) / 2;
	w->np = (N + NR - 1) / NR;
	w->bytes = (size_t)w->np * (size_t)w->kp * NR * sizeof(uint32_t);
	if (posix_memalign((void **)&w->data, 64, w->bytes) != 0) {
		free(w);
		return lora_errf(err, LORA_ENOMEM, "out of memory packing a [%d,%d] bf16 weight", N, K);
	}
	*out = w;
	return 0;
}

/* f32 -> bf16 bits, nearest even, NaN kept quiet: lora_f32_to_bf16, inline
 * here because packing a 100M-parameter model calls it for every weight. */
static inline uint32_t rne(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (u >> 16) | 0x0040u;
	return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

/* Pack from a source whose element (n, k) is GET(n, k) (bf16 bits), panels
 * [j0, j1). Column by column for the [N,K] layouts (each weight row read
 * once, in order), row pair by row pair for [K,N] (source rows in order). */
#define PACK_NK(GET)                                                                         \
	for (int j = j0; j < j1; j++) {                                                        \
		uint32_t *dst = w->data + (size_t)j * w->kp * NR;                              \
		for (int c = 0; c < NR; c++) {                                                 \
			int n = j * NR + c, p = 0;                                             \
			if (n < N)                                                             \
				for (; p < K / 2; p++)                                         \
					dst[(size_t)p * NR + c] =                              \
						GET(n, 2 * p) | GET(n, 2 * p + 1) << 16;       \
			if (n < N && p < w->kp)	/* K odd */                           \
				dst[(size_t)p++ * NR + c] = GET(n, K - 1);                     \
			for (; p < w->kp; p++)                                                 \
				dst[(size_t)p * NR + c] = 0;                                   \
		}                                                                              \
	}
#define PACK_KN(GET)                                                                         \
	for (int j = j0; j < j1; j++) {                                                        \
		uint32_t *dst = w->data + (size_t)j * w->kp * NR;                              \
		for (int p = 0; p < w->kp; p++)                                                \
			for (int c = 0; c < NR; c++) {                                         \
				int n = j * NR + c, k0 = 2 * p, k1 = 2 * p + 1;                \
				uint32_t lo = 0, hi = 0;                                       \
				if (n < N) {                                                   \
					lo = GET(n, k0);                                       \
					hi = k1 < K ? GET(n, k1) : 0;                          \
				}                                                              \
				dst[(size_t)p * NR + c] = lo | hi << 16;                       \
			}                                                                      \
	}

struct pack_job {
	struct lora_bf16_mat *w;
	const float *f32;	/* one of these two is the source */
	const uint16_t *bf16;
	bool trans;
	int per_item;		/* panels per item */
};

static void pack_item(void *ctx, int item, int worker)
{
	const struct pack_job *pj = ctx;
	struct lora_bf16_mat *w = pj->w;
	int N = w->n, K = w->k, j0 = item * pj->per_item, j1 = j0 + pj->per_item;
	if (j1 > w->np)
		j1 = w->np;
	const float *f = pj->f32;
	const uint16_t *h = pj->bf16;
#define F_T(n, k) rne(f[(size_t)(n) * K + (k)])
#define F_N(n, k) rne(f[(size_t)(k) * N + (n)])
#define H_T(n, k) (uint32_t)h[(size_t)(n) * K + (k)]
#define H_N(n, k) (uint32_t)h[(size_t)(k) * N + (n)]
	if (f && pj->trans)
		PACK_NK(F_T)
	else if (f)
		PACK_KN(F_N)
	else if (pj->trans)
		PACK_NK(H_T)
	else
		PACK_KN(H_N)
#undef F_T
#undef F_N
#undef H_T
#undef H_N
}

/* Packing a model's weights is mostly page faults on the source and the new
 * copy; big matrices are split over the workers (items of 4 panels). */
static int pack(const float *f32, const uint16_t *bf16, int N, int K, bool trans,
		struct lora_bf16_mat **out, struct lora_err *err)
{
	struct lora_bf16_mat *w;
	int rc = mat_new(N, K, &w, err);
	*out = w;
	if (rc < 0)
		return rc;
	struct pack_job pj = {w, f32, bf16, trans, 4};
	int items = (w->np + pj.per_item - 1) / pj.per_item;
	if ((double)N * K < (1 << 18))
		for (int i = 0; i < items; i++)
			pack_item(&pj, i, 0);
	else
		lora_parallel_for(items, pack_item, &pj);
	return 0;
}

int lora_bf16_pack_f32(const float *src, int N, int K, bool w_trans, struct lora_bf16_mat **out,
		       struct lora_err *err)
{
	return pack(src, NULL, N, K, w_trans, out, err);
}

int lora_bf16_pack_bf16(const uint16_t *src, int N, int K, bool w_trans, struct lora_bf16_mat **out,
			struct lora_err *err)
{
	return pack(NULL, src, N, K, w_trans, out, err);
}

void lora_bf16_free(struct lora_bf16_mat *w)
{
	if (!w)
		return;
	free(w->data);
	free(w);
}

size_t lora_bf16_bytes(const struct lora_bf16_mat *w)
{
	return w ? w->bytes + sizeof *w : 0;
}

int lora_bf16_rows(const struct lora_bf16_mat *w)
{
	return w->n;
}

int lora_bf16_cols(const struct lora_bf16_mat *w)
{
	return w->k;
}

/* ---- the product ---- */

struct job {
	const struct lora_bf16_mat *w;
	const float *x;
	int ldx;
	float *y;
	int ldy;
	int M, Mp, K2;		/* K2 = 2 * kp: K padded to even */
	int nkb, kc;		/* K blocks of kc inputs (the last may be shorter) */
	int per_item;		/* panels per compute item */
	bool zero;		/* beta == 0: the first K block overwrites y */
	uint16_t *a;		/* packed x: [nkb][Mp][kc] */
};

static inline int kb_width(const struct job *jb, int kb)
{
	int w = jb->K2 - kb * jb->kc;
	return w < jb->kc ? w : jb->kc;
}

#if BF16_X86

/* Rows [r0, r1) of x -> bf16 (nearest even) into every K block of jb->a. */
TARGET static void pack_range(struct job *jb, int r0, int r1)
{
	int K = jb->w->k;
	for (int kb = 0; kb < jb->nkb; kb++) {
		int wk = kb_width(jb, kb), k0 = kb * jb->kc;
		uint16_t *blk = jb->a + (size_t)jb->Mp * k0;
		for (int r = r0; r < r1; r++) {
			uint16_t *dst = blk + (size_t)r * wk;
			if (r >= jb->M) {
				memset(dst, 0, (size_t)wk * sizeof *dst);
				continue;
			}
			const float *src = jb->x + (size_t)r * jb->ldx + k0;
			int avail = K - k0 < wk ? K - k0 : wk;	/* real inputs in this block */
			for (int k = 0; k < wk; k += 32) {
				int n = avail - k;
				__mmask16 m0 = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
				int n1 = n - 16;
				__mmask16 m1 = n1 >= 16 ? 0xFFFF : n1 <= 0 ? 0 : (__mmask16)((1u << n1) - 1);
				__m512 lo = _mm512_maskz_loadu_ps(m0, src + k);
				__m512 hi = _mm512_maskz_loadu_ps(m1, src + k + 16);
				__m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
				int left = wk - k;	/* even; 32 or fewer bf16 to store */
				__mmask32 sm = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
				_mm512_mask_storeu_epi16(dst + k, sm, v);
			}
		}
	}
}

TARGET static void pack_rows(void *ctx, int item, int worker)
{
	struct job *jb = ctx;
	int r0 = item * ROWS_PER_PACK, r1 = r0 + ROWS_PER_PACK;
	pack_range(jb, r0, r1 < jb->Mp ? r1 : jb->Mp);
}

/* c[MR, NR] (+)= a[MR rows, 2*kp inputs, row stride lda] · panel b[kp][NR],
 * columns masked by m0/m1 (the N tail). zero: start from 0, else from c. */
TARGET static void kernel(const uint16_t *a, int lda, const uint32_t *b, int kp, float *c,
			  int ldc, bool zero, __mmask16 m0, __mmask16 m1)
{
	__m512 c0[MR], c1[MR];
#pragma GCC unroll 12
	for (int r = 0; r < MR; r++) {
		if (zero) {
			c0[r] = _mm512_setzero_ps();
			c1[r] = _mm512_setzero_ps();
		} else {
			c0[r] = _mm512_maskz_loadu_ps(m0, c + (size_t)r * ldc);
			c1[r] = _mm512_maskz_loadu_ps(m1, c + (size_t)r * ldc + 16);
		}
	}
	const uint16_t *a0 = a, *a4 = a + 4 * (size_t)lda, *a8 = a + 8 * (size_t)lda;
	size_t s = (size_t)lda;
	for (int p = 0; p < kp; p++) {
		__m512bh b0 = (__m512bh)_mm512_load_si512(b);
		__m512bh b1 = (__m512bh)_mm512_load_si512(b + 16);
		b += NR;
#define STEP(base, off, r)                                                                     \
	do {                                                                                    \
		int32_t v;                                                                      \
		memcpy(&v, (base) + (off), sizeof v);                                           \
		__m512bh av = (__m512bh)_mm512_set1_epi32(v);                                   \
		c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);                                        \
		c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);                                        \
	} while (0)
		STEP(a0, 0, 0);
		STEP(a0, s, 1);
		STEP(a0, 2 * s, 2);
		STEP(a0, 3 * s, 3);
		STEP(a4, 0, 4);
		STEP(a4, s, 5);
		STEP(a4, 2 * s, 6);
		STEP(a4, 3 * s, 7);
		STEP(a8, 0, 8);
		STEP(a8, s, 9);
		STEP(a8, 2 * s, 10);
		STEP(a8, 3 * s, 11);
#undef STEP
		a0 += 2;
		a4 += 2;
		a8 += 2;
	}
#pragma GCC unroll 12
	for (int r = 0; r < MR; r++) {
		_mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, c0[r]);
		_mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, c1[r]);
	}
}

/* Rows [i0, i1) of y (i0 a multiple of MR, i1 <= M) for panel j and K block
 * kb; the last rows past a whole tile go through a full tile in `tile`. */
TARGET static void sweep(const struct job *jb, int kb, int j, int i0, int i1, float *tile)
{
	const struct lora_bf16_mat *w = jb->w;
	int wk = kb_width(jb, kb), k0 = kb * jb->kc;
	const uint16_t *blk = jb->a + (size_t)jb->Mp * k0;
	bool zero = jb->zero && kb == 0;
	const uint32_t *b = w->data + ((size_t)j * w->kp + k0 / 2) * NR;
	int cols = w->n - j * NR < NR ? w->n - j * NR : NR;
	__mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
	__mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
	float *ycol = jb->y + (size_t)j * NR;
	int i;
	for (i = i0; i + MR <= i1; i += MR)
		kernel(blk + (size_t)i * wk, wk, b, wk / 2, ycol + (size_t)i * jb->ldy, jb->ldy, zero,
		       m0, m1);
	if (i < i1) {
		int rows = i1 - i;
		if (!zero)
			for (int r = 0; r < rows; r++)
				memcpy(tile + r * NR, ycol + (size_t)(i + r) * jb->ldy,
				       (size_t)cols * sizeof(float));
		kernel(blk + (size_t)i * wk, wk, b, wk / 2, tile, NR, zero, m0, m1);
		for (int r = 0; r < rows; r++)
			memcpy(ycol + (size_t)(i + r) * jb->ldy, tile + r * NR,
			       (size_t)cols * sizeof(float));
	}
}

/* Split over N: panels [item * per_item, ...) against all of x (packed). */
TARGET static void compute_item(void *ctx, int item, int worker)
{
	struct job *jb = ctx;
	int j0 = item * jb->per_item, j1 = j0 + jb->per_item;
	if (j1 > jb->w->np)
		j1 = jb->w->np;
	float tile[MR * NR];
	for (int kb = 0; kb < jb->nkb; kb++)
		for (int j = j0; j < j1; j++)
			sweep(jb, kb, j, 0, jb->M, tile);
}

/* Split over M, for weights small enough to stay in every core's L2: the
 * item packs its own rows of x, then multiplies them by every panel. One
 * pass over the workers instead of two, and no packing on the critical path. */
TARGET static void rows_item(void *ctx, int item, int worker)
{
	struct job *jb = ctx;
	int r0 = item * jb->per_item, r1 = r0 + jb->per_item;
	if (r1 > jb->Mp)
		r1 = jb->Mp;
	pack_range(jb, r0, r1);
	float tile[MR * NR];
	for (int kb = 0; kb < jb->nkb; kb++)
		for (int j = 0; j < jb->w->np; j++)
			sweep(jb, kb, j, r0, r1 < jb->M ? r1 : jb->M, tile);
}

static bool m_split(const struct lora_bf16_mat *w)
{
	return w->bytes <= (size_t)M_SPLIT_BYTES;
}

int lora_bf16_gemm(float *y, int ldy, const float *x, int ldx, const struct lora_bf16_mat *w,
		   int M, float beta)
{
	if (M <= 0)
		return 0;
	struct job jb = {.w = w, .x = x, .ldx = ldx, .y = y, .ldy = ldy, .M = M};
	jb.Mp = (M + MR - 1) / MR * MR;
	jb.K2 = 2 * w->kp;
	/* equal blocks of at most KC (even) inputs: no short tail block */
	jb.nkb = (jb.K2 + KC - 1) / KC;
	jb.kc = (jb.K2 / 2 + jb.nkb - 1) / jb.nkb * 2;
	size_t abytes = (size_t)jb.Mp * (size_t)jb.K2 * sizeof(uint16_t);
	if (posix_memalign((void **)&jb.a, 64, abytes) != 0)
		return LORA_ENOMEM;
	if (beta != 0 && beta != 1)
		for (int i = 0; i < M; i++)
			for (int n = 0; n < w->n; n++)
				y[(size_t)i * ldy + n] *= beta;
	jb.zero = beta == 0;
	int n_pack = (jb.Mp + ROWS_PER_PACK - 1) / ROWS_PER_PACK;
	if ((double)M * w->n * w->k < 2e6) {
		jb.per_item = w->np;
		for (int i = 0; i < n_pack; i++)
			pack_rows(&jb, i, 0);
		compute_item(&jb, 0, 0);
	} else if (m_split(w)) {
		/* items of whole tiles, about 4 per worker */
		int tiles = jb.Mp / MR, items = 4 * lora_parallel_workers();
		jb.per_item = (tiles + items - 1) / items * MR;
		lora_parallel_for((jb.Mp + jb.per_item - 1) / jb.per_item, rows_item, &jb);
	} else {
		lora_parallel_for(n_pack, pack_rows, &jb);
		/* about 4 items per worker, for balance on a shared machine */
		int items = 4 * lora_parallel_workers();
		jb.per_item = (w->np + items - 1) / items;
		lora_parallel_for((w->np + jb.per_item - 1) / jb.per_item, compute_item, &jb);
	}
	free(jb.a);
	return 0;
}

bool lora_bf16_linear(float *y, const float *x, const float *w, int M, int K, int N, float beta)
{
	const struct lora_bf16_mat *pw = lora_bf16_lookup(w);
	if (!pw || pw->n != N || pw->k != K)
		return false;
	return lora_bf16_gemm(y, N, x, K, pw, M, beta) == 0;
}

#else

bool lora_bf16_linear(float *y, const float *x, const float *w, int M, int K, int N, float beta)
{
	return false;
}

int lora_bf16_gemm(float *y, int ldy, const float *x, int ldx, const struct lora_bf16_mat *w,
		   int M, float beta)
{
	return LORA_EINVAL;
}

#endif

/* ---- registry: f32 weight address -> packed copy ---- */

struct slot {
	const void *key;
	const struct lora_bf16_mat *w;
};

static pthread_rwlock_t reg_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct slot *reg_slots;	/* open addressing, power-of-two capacity */
static size_t reg_cap, reg_used;
static atomic_size_t reg_count;	/* live entries; 0 lets lookup skip the lock */

static size_t hash_ptr(const void *p, size_t cap)
{
	uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
	return (size_t)(h >> 20) & (cap - 1);
}

/* Tombstones keep key = the sentinel below with w = NULL. */
static const char tomb_mark;
#define TOMB ((const void *)&tomb_mark)

static int reg_grow(void)
{
	size_t cap = reg_cap ? reg_cap * 2 : 256;
	struct slot *s = calloc(cap, sizeof *s);
	if (!s)
		return LORA_ENOMEM;
	for (size_t i = 0; i < reg_cap; i++)
		if (reg_slots[i].key && reg_slots[i].key != TOMB) {
			size_t k = hash_ptr(reg_slots[i].key, cap);
			while (s[k].key)
				k = (k + 1) & (cap - 1);
			s[k] = reg_slots[i];
		}
	free(reg_slots);
	reg_slots = s;
	reg_cap = cap;
	reg_used = atomic_load(&reg_count);
	return 0;
}

int lora_bf16_register(const void *key, const struct lora_bf16_mat *w, struct lora_err *err)
{
	int rc = 0;
	pthread_rwlock_wrlock(&reg_lock);
	if ((reg_used + 1) * 2 > reg_cap && reg_grow() < 0) {
		rc = lora_errf(err, LORA_ENOMEM, "out of memory registering a bf16 weight");
		goto out;
	}
	size_t k = hash_ptr(key, reg_cap);
	while (reg_slots[k].key) {
		if (reg_slots[k].key == key) {
			rc = lora_errf(err, LORA_EINVAL, "bf16 weight registered twice");
			goto out;
		}
		k = (k + 1) & (reg_cap - 1);
	}
	reg_slots[k] = (struct slot){key, w};
	reg_used++;
	atomic_fetch_add(&reg_count, 1);
out:
	pthread_rwlock_unlock(&reg_lock);
	return rc;
}

static struct slot *reg_find(const void *key)
{
	if (!reg_cap)
		return NULL;
	size_t k = hash_ptr(key, reg_cap);
	while (reg_slots[k].key) {
		if (reg_slots[k].key == key)
			return &reg_slots[k];
		k = (k + 1) & (reg_cap - 1);
	}
	return NULL;
}

void lora_bf16_unregister(const void *key)
{
	pthread_rwlock_wrlock(&reg_lock);
	struct slot *s = reg_find(key);
	if (s) {
		s->key = TOMB;
		s->w = NULL;
		if (atomic_fetch_sub(&reg_count, 1) == 1) {	/* empty: forget the table */
			free(reg_slots);
			reg_slots = NULL;
			reg_cap = reg_used = 0;
		}
	}
	pthread_rwlock_unlock(&reg_lock);
}

const struct lora_bf16_mat *lora_bf16_lookup(const void *key)
{
	if (atomic_load_explicit(&reg_count, memory_order_relaxed) == 0)
		return NULL;
	pthread_rwlock_rdlock(&reg_lock);
	struct slot *s = reg_find(key);
	const struct lora_bf16_mat *w = s ? s->w : NULL;
	pthread_rwlock_unlock(&reg_lock);
	return w;
}
