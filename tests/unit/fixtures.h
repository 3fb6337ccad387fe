/*
 * fixtures — helpers the unit tests share (header only, everything static
 * inline; include after check.h):
 *
 *   fx_init, fx_path     a fresh directory for the program under $LORA_TMP
 *                        (check_tmpdir) and paths inside it
 *   fx_slurp, fx_spit, fx_copy, fx_files_equal, fx_fresh_dir, fx_dotfiles
 *                        whole files and directories
 *   fx_write_st_raw      a safetensors file with any header text (for the
 *                        reader's refusals): 8-byte length, header, data
 *   fx_write_st          a safetensors file of 2-D tensors with a fill
 *                        pattern, through lora_st_write, metadata format=pt
 *   fx_jsonl_*           the lines of a JSONL golden file, parsed
 *   fx_tok_golden        a tokenizer against golden/tokenizer/ids*.jsonl
 *   fx_now               monotonic seconds
 *   fx_srand, fx_frand, fx_rand_vec
 *                        a seedable xorshift64 source of test data
 *
 * Paths are at most 4 KiB; fx_path rotates four static buffers. Nothing
 * here is thread-safe. The golden file format is golden/README.md section 1:
 * one JSON object per line with "text" and, per tokenizer key, "ids",
 * "ids_no_special" and "decoded".
 */
#ifndef LORA_FIXTURES_H
#define LORA_FIXTURES_H

#include "check.h"
#include "doc.h"
#include "err.h"
#include "st.h"
#include "tok.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The program's temporary directory (fx_init). */
static char fx_dir[4096] __attribute__((unused));

/* Make $LORA_TMP/name afresh and remember it as fx_dir; NULL on failure. */
static inline const char *fx_init(const char *name)
{
	const char *d = check_tmpdir(name);
	if (!d)
		return NULL;
	snprintf(fx_dir, sizeof fx_dir, "%s", d);
	return fx_dir;
}

/* fx_dir/name in one of four rotating static buffers. */
static inline char *fx_path(const char *name)
{
	static char buf[4][4200];
	static int k;
	char *b = buf[k++ & 3];
	snprintf(b, sizeof buf[0], "%s/%s", fx_dir, name);
	return b;
}

/* The whole file, NUL-terminated (malloc'd; *len excludes the NUL), or
 * NULL if it cannot be read. */
static inline char *fx_slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *b = NULL;
	*len = 0;
	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0) {
		long n = ftell(f);
		if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)n + 1))) {
			*len = fread(b, 1, (size_t)n, f);
			b[*len] = '\0';
		}
	}
	fclose(f);
	return b;
}

/* Write n bytes as the whole file; 0 or -1. */
static inline int fx_spit(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t w = n ? fwrite(p, 1, n, f) : 0;
	return fclose(f) || w != n ? -1 : 0;
}

/* Copy a file; 0 or -1. */
static inline int fx_copy(const char *from, const char *to)
{
	size_t n;
	char *b = fx_slurp(from, &n);
	int rc = b ? fx_spit(to, b, n) : -1;
	free(b);
	return rc;
}

/* Both files readable and byte-identical? */
static inline int fx_files_equal(const char *p1, const char *p2)
{
	size_t l1, l2;
	char *a = fx_slurp(p1, &l1), *b = fx_slurp(p2, &l2);
	int same = a && b && l1 == l2 && !memcmp(a, b, l1);
	free(a);
	free(b);
	return same;
}

/* rm -rf path && mkdir -p path; 0 or -1. */
static inline int fx_fresh_dir(const char *path)
{
	char cmd[8400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", path, path);
	return system(cmd) == 0 ? 0 : -1;
}

/* Entries of dir whose names start with '.' (other than . and ..): the
 * temporary files a writer left behind. -1 if dir cannot be read. */
static inline int fx_dotfiles(const char *dir)
{
	DIR *dd = opendir(dir);
	struct dirent *de;
	int n = 0;
	if (!dd)
		return -1;
	while ((de = readdir(dd)))
		if (de->d_name[0] == '.' && strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(dd);
	return n;
}

/* A safetensors file: the 8-byte little-endian header length (hlen, or
 * strlen(header) when hlen is UINT64_MAX), the header text, then ndata
 * bytes: data, or 0,1,2,... when data is NULL. Returns path. */
static inline const char *fx_write_st_raw(const char *path, const char *header, uint64_t hlen,
					  const void *data, size_t ndata)
{
	FILE *f = fopen(path, "wb");
	uint64_t n = hlen != UINT64_MAX ? hlen : strlen(header);
	unsigned char len8[8];
	if (!f)
		return path;
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)(n >> (8 * i));
	fwrite(len8, 1, 8, f);
	fwrite(header, 1, strlen(header), f);
	if (data)
		fwrite(data, 1, ndata, f);
	else
		for (size_t i = 0; i < ndata; i++)
			fputc((int)(i & 0xff), f);
	fclose(f);
	return path;
}

/* One 2-D tensor of fx_write_st. */
struct fx_tensor {
	const char *key;
	enum lora_dtype dt;
	int64_t rows, cols;
};

/* Write the tensors to path with lora_st_write and metadata {format: pt}.
 * Data: byte j of tensor i is j*31 + 7*strlen(key) + i; f32 tensors hold
 * (i+1)*0.01*j - 0.5 instead, so they stay finite. 0 or a LORA_E* code
 * (err set). */
static inline int fx_write_st(const char *path, const struct fx_tensor *ft, size_t n,
			      struct lora_err *err)
{
	struct lora_st_tensor *t = calloc(n + 1, sizeof *t);
	if (!t)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		size_t es = lora_dtype_size(ft[i].dt), ne = (size_t)(ft[i].rows * ft[i].cols);
		unsigned char *data = malloc(ne * es + 1);
		for (size_t j = 0; data && j < ne * es; j++)
			data[j] = (unsigned char)(j * 31 + strlen(ft[i].key) * 7 + i);
		if (data && ft[i].dt == LORA_F32)
			for (size_t j = 0; j < ne; j++)
				((float *)data)[j] = (float)(i + 1) * 0.01f * (float)j - 0.5f;
		t[i] = (struct lora_st_tensor){.name = ft[i].key, .dtype = ft[i].dt, .ndim = 2,
					       .shape = {ft[i].rows, ft[i].cols}, .data = data,
					       .nbytes = ne * es};
	}
	struct lora_doc md;
	lora_doc_init_map(&md);
	lora_doc_map_put_string(&md, "format", "pt");
	int rc = lora_st_write(path, t, n, &md, err);
	lora_doc_clear(&md);
	for (size_t i = 0; i < n; i++)
		free((void *)t[i].data);
	free(t);
	return rc;
}

/* Monotonic seconds. */
static inline double fx_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- JSONL goldens ---- */

struct fx_jsonl {
	const char *file;
	FILE *f;
	char *line;
	size_t cap;
	int ln;		/* line number of the last line read */
};

/* 0, or -1 if the file cannot be opened. */
static inline int fx_jsonl_open(struct fx_jsonl *j, const char *file)
{
	memset(j, 0, sizeof *j);
	j->file = file;
	j->f = fopen(file, "r");
	return j->f ? 0 : -1;
}

/* The next line that parses, as a document the caller frees (1), or 0 at
 * the end. A line that does not parse is reported as a "# " comment with
 * its line number and skipped. */
static inline int fx_jsonl_next(struct fx_jsonl *j, struct lora_doc **d)
{
	ssize_t len;
	while ((len = getline(&j->line, &j->cap, j->f)) > 0) {
		struct lora_err err = {0};
		j->ln++;
		*d = NULL;
		if (lora_doc_parse_buffer(j->line, (size_t)len, j->file, j->ln, d, &err) == 0)
			return 1;
		printf("# %s\n", err.msg);
	}
	return 0;
}

static inline void fx_jsonl_close(struct fx_jsonl *j)
{
	free(j->line);
	if (j->f)
		fclose(j->f);
	memset(j, 0, sizeof *j);
}

/* Is arr a document array of exactly these n ints? */
static inline bool fx_ids_equal(const struct lora_doc *arr, const int32_t *ids, size_t n)
{
	if (!arr || arr->type != LORA_DOC_ARRAY || arr->u.arr.n != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (arr->u.arr.items[i].type != LORA_DOC_INT || arr->u.arr.items[i].u.i != ids[i])
			return false;
	return true;
}

/* "#   what: id id ..." (the first 40). */
static inline void fx_print_ids(const char *what, const int32_t *ids, size_t n)
{
	printf("#   %s:", what);
	for (size_t i = 0; i < n && i < 40; i++)
		printf(" %d", ids[i]);
	printf("%s\n", n > 40 ? " ..." : "");
}

/* Encode every golden line's text with and without special tokens and
 * decode (skipping specials) with t; count the lines whose ids and
 * ids_no_special under key match (and decoded, with cmp_decoded). *lines:
 * lines read. With verbose, the first five mismatches are printed as "# "
 * comments. Returns the matching lines, or -1 if file cannot be opened. */
static inline int fx_tok_golden(const struct lora_tok *t, const char *file, const char *key,
				bool verbose, bool cmp_decoded, int *lines)
{
	struct fx_jsonl j;
	struct lora_doc *d;
	int good = 0, shown = 0;
	*lines = 0;
	if (fx_jsonl_open(&j, file) < 0)
		return -1;
	while (fx_jsonl_next(&j, &d)) {
		struct lora_err err = {0};
		(*lines)++;
		const struct lora_doc *rec = lora_doc_get(d, key);
		const struct lora_doc *tv = lora_doc_get(d, "text");
		const char *text = tv && tv->type == LORA_DOC_STRING ? tv->u.str.s : NULL;
		const char *want_dec = NULL;
		lora_doc_get_string(rec, "decoded", file, &want_dec, NULL);
		int32_t *a = NULL, *b = NULL;
		size_t na = 0, nb = 0;
		char *dec = NULL;
		bool ok = text && rec;
		if (ok && lora_tok_encode(t, text, tv->u.str.len, true, &a, &na, &err)) {
			printf("# line %d: %s\n", j.ln, err.msg);
			ok = false;
		}
		if (ok && lora_tok_encode(t, text, tv->u.str.len, false, &b, &nb, &err))
			ok = false;
		if (ok && lora_tok_decode(t, a, na, true, &dec, &err))
			ok = false;
		bool ia = ok && fx_ids_equal(lora_doc_get(rec, "ids"), a, na);
		bool ib = ok && fx_ids_equal(lora_doc_get(rec, "ids_no_special"), b, nb);
		bool id = !cmp_decoded || (ok && want_dec && strcmp(want_dec, dec) == 0);
		if (ia && ib && id)
			good++;
		else if (verbose && shown++ < 5) {
			printf("# %s line %d mismatch (ids %d, no_special %d, decoded %d): %s\n", key,
			       j.ln, ia, ib, id, text ? text : "?");
			if (a)
				fx_print_ids("got", a, na);
			if (dec)
				printf("#   decoded: %s\n#   want:    %s\n", dec,
				       want_dec ? want_dec : "?");
		}
		free(a);
		free(b);
		free(dec);
		lora_doc_free(d);
	}
	fx_jsonl_close(&j);
	return good;
}

/* The state of fx_frand: one xorshift64 stream per test program. */
static uint64_t fx_rng __attribute__((unused)) = 88172645463325252ull;

/* Restart fx_frand's stream from seed (non-zero). */
static inline void fx_srand(uint64_t seed)
{
	fx_rng = seed ? seed : 88172645463325252ull;
}

/* Uniform in [-1, 1) (xorshift64, 53 bits rounded to float). */
static inline float fx_frand(void)
{
	fx_rng ^= fx_rng << 13;
	fx_rng ^= fx_rng >> 7;
	fx_rng ^= fx_rng << 17;
	return (float)((fx_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* n floats uniform in [-scale, scale), malloc'd (the caller frees); NULL
 * when out of memory. */
static inline float *fx_rand_vec(size_t n, float scale)
{
	float *v = malloc((n ? n : 1) * sizeof *v);
	for (size_t i = 0; v && i < n; i++)
		v[i] = fx_frand() * scale;
	return v;
}

#endif
