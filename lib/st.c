/*
 * st — safetensors files: read-only mmap reader and a writer whose output is
 * byte-identical to the safetensors library's (Rust crate / Python binding,
 * format 0.4); see st.h.
 *
 * Format: u64 little-endian header length N, N bytes of UTF-8 JSON, then the
 * data region (file size - 8 - N bytes). The header maps tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
 * data region) plus an optional "__metadata__" map of strings.
 *
 * Reader checks (every one names the file, and the tensor where there is
 * one): file at least 8 bytes; N <= 100,000,000 (the library's limit) and
 * 8 + N <= file size; the header parses as a JSON object; each entry has a
 * string dtype (F32, F16 or BF16 only), a shape of at most LORA_MAX_DIMS
 * non-negative integers and two non-negative integer offsets with
 * begin <= end <= data size; shape x dtype size == end - begin (64-bit,
 * overflow-checked); sorted by offset, the tensors tile the data region
 * exactly (no overlap, no hole, nothing left over). When the data region is
 * not 8-byte aligned in the file (N % 8 != 0, which the library never
 * writes), the region is copied to an aligned buffer so callers may read
 * floats through the pointers.
 *
 * Writer layout (the library's `prepare`): tensors sorted by dtype alignment
 * descending (F32, then BF16, then F16, the library's enum order), then by
 * name (bytewise); data packed back to back from offset 0; the header is
 * compact JSON (serde_json style: no spaces, "__metadata__" first when given,
 * then each tensor as {"dtype","shape","data_offsets"}), padded with spaces
 * to a multiple of 8 bytes. Strings are escaped as serde_json does (", \ and
 * control characters only).
 */
#include "st.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000ull

struct lora_st {
	char *path;
	void *map;		/* the whole file, read-only */
	size_t size;
	void *aligned;		/* copy of the data region when the file's is misaligned */
	size_t n;
	struct lora_st_tensor *t;	/* in offset order */
	char **names;		/* owned names, t[i].name == names[i] */
	size_t *by_name;	/* indices into t sorted by name */
	struct lora_doc *meta;	/* or NULL */
};

/* ----------------------------------------------------------------- reader */

static int dtype_from_st(const char *s, enum lora_dtype *dt)
{
	if (strcmp(s, "F32") == 0)
		*dt = LORA_F32;
	else if (strcmp(s, "F16") == 0)
		*dt = LORA_F16;
	else if (strcmp(s, "BF16") == 0)
		*dt = LORA_BF16;
	else
		return LORA_EUNSUPPORTED;
	return 0;
}

static const char *dtype_to_st(enum lora_dtype dt)
{
	switch (dt) {
	case LORA_F32: return "F32";
	case LORA_F16: return "F16";
	case LORA_BF16: return "BF16";
	}
	return "?";
}

/* The library's Dtype enum order (larger = written first). */
static int dtype_rank(enum lora_dtype dt)
{
	switch (dt) {
	case LORA_F32: return 11;
	case LORA_BF16: return 8;
	case LORA_F16: return 7;
	}
	return 0;
}

struct entry {
	uint64_t begin, end;
	size_t idx;
};

static int cmp_entry(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int cmp_name_idx(const void *a, const void *b, void *ctx)
{
	const struct lora_st *st = ctx;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	return strcmp(st->t[i].name, st->t[j].name);
}

void lora_st_close(struct lora_st *st)
{
	if (!st)
		return;
	if (st->map)
		munmap(st->map, st->size);
	free(st->aligned);
	if (st->names)
		for (size_t i = 0; i < st->n; i++)
			free(st->names[i]);
	free(st->names);
	free(st->t);
	free(st->by_name);
	lora_doc_free(st->meta);
	free(st->path);
	free(st);
}

/* A non-negative JSON integer as uint64. */
static bool get_u64(const struct lora_doc *d, uint64_t *out)
{
	if (!d || d->type != LORA_DOC_INT || d->u.i < 0)
		return false;
	*out = (uint64_t)d->u.i;
	return true;
}

static int check_entry(struct lora_st *st, const char *name, const struct lora_doc *v,
		       struct lora_st_tensor *t, struct entry *e, uint64_t data_len,
		       struct lora_err *err)
{
	const char *p = st->path;
	if (v->type != LORA_DOC_MAP)
		return lora_errf(err, LORA_EFORMAT, "%s: tensor '%s': entry is not an object", p,
				 name);
	const struct lora_doc *dt = lora_doc_get(v, "dtype");
	const struct lora_doc *sh = lora_doc_get(v, "shape");
	const struct lora_doc *of = lora_doc_get(v, "data_offsets");
	if (!dt || dt->type != LORA_DOC_STRING)
		return lora_errf(err, LORA_EFORMAT, "%s: tensor '%s': missing or non-string dtype",
				 p, name);
	if (dtype_from_st(dt->u.str.s, &t->dtype) < 0)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: tensor '%s' has dtype %s; only F32, F16 and BF16 are supported",
				 p, name, dt->u.str.s);
	if (!sh || sh->type != LORA_DOC_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "%s: tensor '%s': missing or non-array shape",
				 p, name);
	if (sh->u.arr.n > LORA_MAX_DIMS)
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "%s: tensor '%s' has %zu dimensions (at most %d supported)", p, name,
				 sh->u.arr.n, LORA_MAX_DIMS);
	t->ndim = (int)sh->u.arr.n;
	for (int k = 0; k < t->ndim; k++) {
		uint64_t d;
		if (!get_u64(&sh->u.arr.items[k], &d))
			return lora_errf(err, LORA_EFORMAT,
					 "%s: tensor '%s': shape must be non-negative integers", p,
					 name);
		t->shape[k] = (int64_t)d;
	}
	if (!of || of->type != LORA_DOC_ARRAY || of->u.arr.n != 2 ||
	    !get_u64(&of->u.arr.items[0], &e->begin) || !get_u64(&of->u.arr.items[1], &e->end))
		return lora_errf(err, LORA_EFORMAT,
				 "%s: tensor '%s': data_offsets must be two non-negative integers", p,
				 name);
	if (e->end < e->begin || e->end > data_len)
		return lora_errf(err, LORA_EFORMAT,
				 "%s: tensor '%s': data_offsets [%llu,%llu] out of bounds of the %llu-byte data region",
				 p, name, (unsigned long long)e->begin, (unsigned long long)e->end,
				 (unsigned long long)data_len);
	size_t numel, nbytes;
	char sbuf[160], need[32] = "too many";
	bool ok = lora_shape_numel(t->shape, t->ndim, &numel) == 0 &&
		  lora_size_mul(numel, lora_dtype_size(t->dtype), &nbytes) == 0;
	if (ok)
		snprintf(need, sizeof need, "%zu", nbytes);
	if (!ok || nbytes != e->end - e->begin)
		return lora_errf(err, LORA_EFORMAT,
				 "%s: tensor '%s': shape %s of %s needs %s bytes but data_offsets span %llu",
				 p, name, lora_shape_str(t->shape, t->ndim, sbuf, sizeof sbuf),
				 dt->u.str.s, need, (unsigned long long)(e->end - e->begin));
	t->nbytes = nbytes;
	return 0;
}

static int parse_header(struct lora_st *st, const char *hdr, size_t hlen, uint64_t data_len,
			struct lora_err *err)
{
	struct lora_doc *doc = NULL;
	struct entry *ents = NULL;
	int rc = lora_doc_parse_buffer(hdr, hlen, "header", 1, &doc, err);
	if (rc < 0) {
		if (rc == LORA_EFORMAT)
			return lora_err_prefix(err, rc, "%s: bad JSON in ", st->path);
		return lora_err_prefix(err, rc, "%s: ", st->path);
	}
	if (doc->type != LORA_DOC_MAP) {
		rc = lora_errf(err, LORA_EFORMAT, "%s: header is not a JSON object", st->path);
		goto out;
	}
	size_t n = 0;
	for (size_t i = 0; i < doc->u.map.n; i++)
		if (strcmp(doc->u.map.keys[i], "__metadata__") != 0)
			n++;
	st->t = calloc(n ? n : 1, sizeof *st->t);
	st->names = calloc(n ? n : 1, sizeof *st->names);
	st->by_name = calloc(n ? n : 1, sizeof *st->by_name);
	ents = calloc(n ? n : 1, sizeof *ents);
	if (!st->t || !st->names || !st->by_name || !ents) {
		rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", st->path);
		goto out;
	}
	struct lora_st_tensor *tmp = calloc(n ? n : 1, sizeof *tmp);
	char **tnames = calloc(n ? n : 1, sizeof *tnames);
	if (!tmp || !tnames) {
		free(tmp);
		free(tnames);
		rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", st->path);
		goto out;
	}
	size_t k = 0;
	for (size_t i = 0; i < doc->u.map.n; i++) {
		const char *key = doc->u.map.keys[i];
		const struct lora_doc *v = &doc->u.map.vals[i];
		if (strcmp(key, "__metadata__") == 0) {
			if (v->type == LORA_DOC_NULL)
				continue;
			if (v->type != LORA_DOC_MAP) {
				rc = lora_errf(err, LORA_EFORMAT,
					       "%s: __metadata__ is not an object", st->path);
				break;
			}
			for (size_t j = 0; j < v->u.map.n; j++) {
				if (v->u.map.vals[j].type != LORA_DOC_STRING) {
					rc = lora_errf(err, LORA_EFORMAT,
						       "%s: __metadata__ value '%s' is not a string",
						       st->path, v->u.map.keys[j]);
					break;
				}
			}
			if (rc < 0)
				break;
			st->meta = lora_doc_clone(v);
			if (!st->meta) {
				rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", st->path);
				break;
			}
			continue;
		}
		ents[k].idx = k;
		rc = check_entry(st, key, v, &tmp[k], &ents[k], data_len, err);
		if (rc < 0)
			break;
		tnames[k] = strdup(key);
		if (!tnames[k]) {
			rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", st->path);
			break;
		}
		k++;
	}
	if (rc == 0) {
		qsort(ents, n, sizeof *ents, cmp_entry);
		uint64_t pos = 0;
		for (size_t i = 0; i < n && rc == 0; i++) {
			const char *nm = tnames[ents[i].idx];
			if (ents[i].begin < pos)
				rc = lora_errf(err, LORA_EFORMAT,
					       "%s: tensors '%s' and '%s' overlap in the data region",
					       st->path, tnames[ents[i - 1].idx], nm);
			else if (ents[i].begin > pos)
				rc = lora_errf(err, LORA_EFORMAT,
					       "%s: hole in the data region: bytes %llu..%llu before tensor '%s' belong to no tensor",
					       st->path, (unsigned long long)pos,
					       (unsigned long long)ents[i].begin, nm);
			pos = ents[i].end;
		}
		if (rc == 0 && pos != data_len)
			rc = lora_errf(err, LORA_EFORMAT,
				       "%s: data region is %llu bytes but the tensors cover %llu",
				       st->path, (unsigned long long)data_len,
				       (unsigned long long)pos);
	}
	if (rc == 0) {
		for (size_t i = 0; i < n; i++) {
			size_t j = ents[i].idx;
			st->t[i] = tmp[j];
			st->names[i] = tnames[j];
			tnames[j] = NULL;
			st->t[i].name = st->names[i];
			st->t[i].nbytes = (size_t)(ents[i].end - ents[i].begin);
			/* data filled by the caller from the offsets */
			st->by_name[i] = (size_t)ents[i].begin;	/* temporarily: the offset */
		}
		st->n = n;
	}
	for (size_t i = 0; i < n; i++)
		free(tnames[i]);
	free(tnames);
	free(tmp);
out:
	free(ents);
	lora_doc_free(doc);
	return rc;
}

int lora_st_open(const char *path, struct lora_st **out, struct lora_err *err)
{
	*out = NULL;
	struct lora_st *st = calloc(1, sizeof *st);
	if (!st || !(st->path = strdup(path))) {
		free(st);
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		lora_st_close(st);
		return lora_errf(err, e == ENOENT ? LORA_ENOTFOUND : LORA_EIO,
				 "cannot open '%s': %s", path, strerror(e));
	}
	struct stat sb;
	if (fstat(fd, &sb) < 0) {
		int e = errno;
		close(fd);
		lora_st_close(st);
		return lora_errf(err, LORA_EIO, "cannot stat '%s': %s", path, strerror(e));
	}
	if (!S_ISREG(sb.st_mode)) {
		close(fd);
		lora_st_close(st);
		return lora_errf(err, LORA_EIO, "cannot read '%s': not a regular file", path);
	}
	if (sb.st_size < 8) {
		close(fd);
		lora_st_close(st);
		return lora_errf(err, LORA_EFORMAT,
				 "%s: file is %lld bytes, too short for a safetensors header", path,
				 (long long)sb.st_size);
	}
	st->size = (size_t)sb.st_size;
	st->map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (st->map == MAP_FAILED) {
		int e = errno;
		st->map = NULL;
		lora_st_close(st);
		return lora_errf(err, LORA_EIO, "cannot map '%s': %s", path, strerror(e));
	}
	const unsigned char *b = st->map;
	uint64_t hn = 0;
	for (int i = 7; i >= 0; i--)
		hn = hn << 8 | b[i];
	int rc;
	if (hn > ST_MAX_HEADER) {
		rc = lora_errf(err, LORA_EFORMAT,
			       "%s: header length %llu exceeds the 100 MB limit", path,
			       (unsigned long long)hn);
		goto fail;
	}
	if (hn > st->size - 8) {
		rc = lora_errf(err, LORA_EFORMAT,
			       "%s: header length %llu runs past the end of the file (%zu bytes)",
			       path, (unsigned long long)hn, st->size);
		goto fail;
	}
	uint64_t data_len = st->size - 8 - hn;
	rc = parse_header(st, (const char *)b + 8, (size_t)hn, data_len, err);
	if (rc < 0)
		goto fail;
	const char *base = (const char *)b + 8 + hn;
	if ((8 + hn) % 8 != 0 && data_len > 0) {
		st->aligned = malloc((size_t)data_len);
		if (!st->aligned) {
			rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
			goto fail;
		}
		memcpy(st->aligned, base, (size_t)data_len);
		base = st->aligned;
	}
	for (size_t i = 0; i < st->n; i++) {
		st->t[i].data = base + st->by_name[i];
		st->by_name[i] = i;
	}
	qsort_r(st->by_name, st->n, sizeof *st->by_name, cmp_name_idx, st);
	*out = st;
	return 0;
fail:
	lora_st_close(st);
	return rc;
}

size_t lora_st_count(const struct lora_st *st)
{
	return st ? st->n : 0;
}

const struct lora_st_tensor *lora_st_get(const struct lora_st *st, size_t i)
{
	return st && i < st->n ? &st->t[i] : NULL;
}

const struct lora_st_tensor *lora_st_find(const struct lora_st *st, const char *name)
{
	if (!st || !name)
		return NULL;
	size_t lo = 0, hi = st->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct lora_st_tensor *t = &st->t[st->by_name[mid]];
		int c = strcmp(t->name, name);
		if (c == 0)
			return t;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const struct lora_doc *lora_st_metadata(const struct lora_st *st)
{
	return st ? st->meta : NULL;
}

const char *lora_st_path(const struct lora_st *st)
{
	return st ? st->path : NULL;
}

/* ----------------------------------------------------------------- writer */

struct lora_st_writer {
	char *path, *tmp;
	int fd;
	size_t n;
	size_t *order;		/* file order -> decl index */
	size_t *nbytes;		/* per file position */
	size_t cur;		/* file position of the tensor being written */
	size_t done;		/* bytes written of tensor cur */
	char *wbuf;		/* small-write buffer */
	size_t wlen;
};

#define WBUF_SIZE (1u << 20)

/* A growable string for the header. */
struct sbuf {
	char *s;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : 256;
		while (nc < b->len + n + 1)
			nc *= 2;
		char *p = realloc(b->s, nc);
		if (!p) {
			b->oom = true;
			return;
		}
		b->s = p;
		b->cap = nc;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* A JSON string escaped as serde_json does. */
static void sb_json_string(struct sbuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	sb_add(b, "\"", 1);
	size_t i = 0;
	while (i < n) {
		size_t j = i;
		while (j < n && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\')
			j++;
		sb_add(b, s + i, j - i);
		if (j >= n)
			break;
		unsigned char c = (unsigned char)s[j];
		char esc[7] = {'\\', 0, 0, 0, 0, 0, 0};
		size_t el = 2;
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\b': esc[1] = 'b'; break;
		case '\f': esc[1] = 'f'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		default:
			esc[1] = 'u';
			esc[2] = '0';
			esc[3] = '0';
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			el = 6;
		}
		sb_add(b, esc, el);
		i = j + 1;
	}
	sb_add(b, "\"", 1);
}

static int cmp_write_order(const void *a, const void *b, void *ctx)
{
	const struct lora_st_tensor *decl = ctx;
	const struct lora_st_tensor *x = &decl[*(const size_t *)a];
	const struct lora_st_tensor *y = &decl[*(const size_t *)b];
	int rx = dtype_rank(x->dtype), ry = dtype_rank(y->dtype);
	if (rx != ry)
		return ry - rx;
	return strcmp(x->name, y->name);
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t k = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

static int wflush(struct lora_st_writer *w, struct lora_err *err)
{
	if (w->wlen && write_all(w->fd, w->wbuf, w->wlen) < 0)
		return lora_errf(err, LORA_EIO, "cannot write '%s': %s", w->path, strerror(errno));
	w->wlen = 0;
	return 0;
}

static int wput(struct lora_st_writer *w, const void *p, size_t n, struct lora_err *err)
{
	if (n >= WBUF_SIZE) {
		int rc = wflush(w, err);
		if (rc < 0)
			return rc;
		if (write_all(w->fd, p, n) < 0)
			return lora_errf(err, LORA_EIO, "cannot write '%s': %s", w->path,
					 strerror(errno));
		return 0;
	}
	if (w->wlen + n > WBUF_SIZE) {
		int rc = wflush(w, err);
		if (rc < 0)
			return rc;
	}
	memcpy(w->wbuf + w->wlen, p, n);
	w->wlen += n;
	return 0;
}

void lora_st_writer_abort(struct lora_st_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0) {
		close(w->fd);
		unlink(w->tmp);
	}
	free(w->path);
	free(w->tmp);
	free(w->order);
	free(w->nbytes);
	free(w->wbuf);
	free(w);
}

/* Build the header for decl in file order. */
static int build_header(const struct lora_st_tensor *decl, const size_t *order, size_t n,
			const struct lora_doc *metadata, struct sbuf *h, const char *path,
			struct lora_err *err)
{
	char num[64];
	sb_add(h, "{", 1);
	bool first = true;
	if (metadata) {
		if (metadata->type != LORA_DOC_MAP)
			return lora_errf(err, LORA_EINVAL, "%s: metadata must be a map", path);
		sb_json_string(h, "__metadata__", 12);
		sb_add(h, ":{", 2);
		for (size_t i = 0; i < metadata->u.map.n; i++) {
			const struct lora_doc *v = &metadata->u.map.vals[i];
			if (v->type != LORA_DOC_STRING)
				return lora_errf(err, LORA_EINVAL,
						 "%s: metadata value '%s' is not a string", path,
						 metadata->u.map.keys[i]);
			if (i)
				sb_add(h, ",", 1);
			sb_json_string(h, metadata->u.map.keys[i], strlen(metadata->u.map.keys[i]));
			sb_add(h, ":", 1);
			sb_json_string(h, v->u.str.s, v->u.str.len);
		}
		sb_add(h, "}", 1);
		first = false;
	}
	uint64_t off = 0;
	for (size_t k = 0; k < n; k++) {
		const struct lora_st_tensor *t = &decl[order[k]];
		if (!first)
			sb_add(h, ",", 1);
		first = false;
		sb_json_string(h, t->name, strlen(t->name));
		sb_str(h, ":{\"dtype\":\"");
		sb_str(h, dtype_to_st(t->dtype));
		sb_str(h, "\",\"shape\":[");
		for (int d = 0; d < t->ndim; d++) {
			snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)t->shape[d]);
			sb_str(h, num);
		}
		snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}",
			 (unsigned long long)off, (unsigned long long)(off + t->nbytes));
		sb_str(h, num);
		off += t->nbytes;
	}
	sb_add(h, "}", 1);
	while (h->len % 8)
		sb_add(h, " ", 1);
	if (h->oom)
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
	return 0;
}

int lora_st_writer_open(const char *path, const struct lora_st_tensor *decl, size_t n,
			const struct lora_doc *metadata, struct lora_st_writer **out,
			struct lora_err *err)
{
	*out = NULL;
	struct sbuf h = {0};
	int rc = 0;
	struct lora_st_writer *w = calloc(1, sizeof *w);
	if (!w)
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
	w->fd = -1;
	w->n = n;
	w->path = strdup(path);
	w->order = calloc(n ? n : 1, sizeof *w->order);
	w->nbytes = calloc(n ? n : 1, sizeof *w->nbytes);
	w->wbuf = malloc(WBUF_SIZE);
	if (!w->path || !w->order || !w->nbytes || !w->wbuf) {
		lora_st_writer_abort(w);
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
	}
	/* validate the declarations */
	for (size_t i = 0; i < n; i++) {
		const struct lora_st_tensor *t = &decl[i];
		size_t numel, nb;
		char sb[160];
		if (!t->name || strcmp(t->name, "__metadata__") == 0) {
			rc = lora_errf(err, LORA_EINVAL, "%s: invalid tensor name '%s'", path,
				       t->name ? t->name : "(null)");
			goto fail;
		}
		if ((unsigned)t->dtype > LORA_BF16 || t->ndim < 0 || t->ndim > LORA_MAX_DIMS) {
			rc = lora_errf(err, LORA_EINVAL, "%s: tensor '%s': bad dtype or rank", path,
				       t->name);
			goto fail;
		}
		for (int d = 0; d < t->ndim; d++)
			if (t->shape[d] < 0) {
				rc = lora_errf(err, LORA_EINVAL, "%s: tensor '%s': negative dimension",
					       path, t->name);
				goto fail;
			}
		if (lora_shape_numel(t->shape, t->ndim, &numel) < 0 ||
		    lora_size_mul(numel, lora_dtype_size(t->dtype), &nb) < 0 || nb != t->nbytes) {
			rc = lora_errf(err, LORA_EINVAL,
				       "%s: tensor '%s': shape %s of %s does not match %zu bytes",
				       path, t->name, lora_shape_str(t->shape, t->ndim, sb, sizeof sb),
				       dtype_to_st(t->dtype), t->nbytes);
			goto fail;
		}
		w->order[i] = i;
	}
	qsort_r(w->order, n, sizeof *w->order, cmp_write_order, (void *)decl);
	/* names must be unique (across dtypes too): sort a copy of the names */
	{
		const char **names = malloc((n ? n : 1) * sizeof *names);
		if (!names) {
			rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
			goto fail;
		}
		for (size_t i = 0; i < n; i++)
			names[i] = decl[i].name;
		qsort(names, n, sizeof *names, cmp_strp);
		for (size_t k = 1; k < n; k++)
			if (strcmp(names[k], names[k - 1]) == 0) {
				rc = lora_errf(err, LORA_EINVAL, "%s: duplicate tensor name '%s'",
					       path, names[k]);
				break;
			}
		free(names);
		if (rc < 0)
			goto fail;
	}
	for (size_t k = 0; k < n; k++)
		w->nbytes[k] = decl[w->order[k]].nbytes;
	rc = build_header(decl, w->order, n, metadata, &h, path, err);
	if (rc < 0)
		goto fail;
	/* temporary file beside the target: dir/.base.XXXXXX */
	{
		const char *slash = strrchr(path, '/');
		size_t dl = slash ? (size_t)(slash - path + 1) : 0;
		size_t tl = strlen(path) + 16;
		w->tmp = malloc(tl);
		if (!w->tmp) {
			rc = lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
			goto fail;
		}
		snprintf(w->tmp, tl, "%.*s.%s.XXXXXX", (int)dl, path, path + dl);
		w->fd = mkostemp(w->tmp, O_CLOEXEC);
		if (w->fd < 0) {
			rc = lora_errf(err, LORA_EIO, "cannot create a temporary file for '%s': %s",
				       path, strerror(errno));
			goto fail;
		}
		fchmod(w->fd, 0644);
	}
	unsigned char len8[8];
	uint64_t hl = h.len;
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)(hl >> (8 * i));
	if ((rc = wput(w, len8, 8, err)) < 0 || (rc = wput(w, h.s, h.len, err)) < 0)
		goto fail;
	free(h.s);
	/* skip leading empty tensors */
	while (w->cur < w->n && w->nbytes[w->cur] == 0)
		w->cur++;
	*out = w;
	return 0;
fail:
	free(h.s);
	lora_st_writer_abort(w);
	return rc;
}

size_t lora_st_writer_order(const struct lora_st_writer *w, size_t k)
{
	return k < w->n ? w->order[k] : (size_t)-1;
}

int lora_st_writer_write(struct lora_st_writer *w, const void *data, size_t nbytes,
			 struct lora_err *err)
{
	const char *p = data;
	while (nbytes > 0) {
		if (w->cur >= w->n)
			return lora_errf(err, LORA_EINVAL,
					 "%s: more tensor data written than declared", w->path);
		size_t room = w->nbytes[w->cur] - w->done;
		size_t k = nbytes < room ? nbytes : room;
		int rc = wput(w, p, k, err);
		if (rc < 0)
			return rc;
		p += k;
		nbytes -= k;
		w->done += k;
		if (w->done == w->nbytes[w->cur]) {
			w->cur++;
			w->done = 0;
			while (w->cur < w->n && w->nbytes[w->cur] == 0)
				w->cur++;
		}
	}
	return 0;
}

int lora_st_writer_commit(struct lora_st_writer *w, struct lora_err *err)
{
	int rc;
	if (w->cur < w->n) {
		rc = lora_errf(err, LORA_EINVAL, "%s: %zu of %zu tensors not fully written",
			       w->path, w->n - w->cur, w->n);
		goto fail;
	}
	if ((rc = wflush(w, err)) < 0)
		goto fail;
	if (fsync(w->fd) < 0) {
		rc = lora_errf(err, LORA_EIO, "cannot write '%s': %s", w->path, strerror(errno));
		goto fail;
	}
	if (close(w->fd) < 0) {
		w->fd = -1;
		unlink(w->tmp);
		rc = lora_errf(err, LORA_EIO, "cannot write '%s': %s", w->path, strerror(errno));
		goto fail;
	}
	w->fd = -1;
	if (rename(w->tmp, w->path) < 0) {
		rc = lora_errf(err, LORA_EIO, "cannot rename to '%s': %s", w->path,
			       strerror(errno));
		unlink(w->tmp);
		goto fail;
	}
	lora_st_writer_abort(w);
	return 0;
fail:
	lora_st_writer_abort(w);
	return rc;
}

int lora_st_write(const char *path, const struct lora_st_tensor *tensors, size_t n,
		  const struct lora_doc *metadata, struct lora_err *err)
{
	struct lora_st_writer *w;
	int rc = lora_st_writer_open(path, tensors, n, metadata, &w, err);
	if (rc < 0)
		return rc;
	for (size_t k = 0; k < n; k++) {
		const struct lora_st_tensor *t = &tensors[lora_st_writer_order(w, k)];
		if (t->nbytes && !t->data) {
			lora_st_writer_abort(w);
			return lora_errf(err, LORA_EINVAL, "%s: tensor '%s' has no data", path,
					 t->name);
		}
		rc = lora_st_writer_write(w, t->data, t->nbytes, err);
		if (rc < 0) {
			lora_st_writer_abort(w);
			return rc;
		}
	}
	return lora_st_writer_commit(w, err);
}
