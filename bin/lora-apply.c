/*
 * lora-apply — fold every adapter of a stream into a Hugging Face model's
 * weights and write a complete model directory.
 *
 * Input: a stream on stdin (adapter records; anything else is skipped with a
 * warning) and MODEL, a directory with config.json and model.safetensors, or
 * shards listed by model.safetensors.index.json. For each adapted tensor
 * W ← W + scale·s·B·A is computed in f32 and stored in W's own dtype
 * (round to nearest even for f16/bf16). GPT-2's Conv1D weights are stored
 * [in, out] and get the transposed update. Every other tensor is copied byte
 * for byte, every non-weight file (config, tokenizer, generation config,
 * index) is copied, and the shards mirror the input's.
 *
 * Order of work: read the stream; open MODEL (mmap, read-only); check every
 * module (tensor exists, 2-D, shape) before anything is written; then write
 * into a temporary directory beside OUT (.OUT.tmp-XXXXXX), one tensor at a
 * time in row chunks (memory: a few tens of MB whatever the model size; the
 * input pages already copied are dropped from the mapping with madvise), and
 * rename it to OUT at the end (with --force, exchanged atomically with the old
 * OUT, which is then removed). SIGINT/SIGTERM/SIGHUP remove the temporary
 * directory; a SIGKILL can leave it behind, never a partial OUT.
 * Limits: safetensors weights only (F32, F16, BF16 tensors).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "cli.h"
#include "doc.h"
#include "st.h"
#include "stream.h"
#include "tensor.h"

static const char usage_text[] =
	"usage: lora-apply -m MODEL -o OUT [--scale S] [--force] [--dry-run] [-v] < stream\n"
	"\n"
	"Fold every adapter in the stream into MODEL's weights (W += scale*s*B*A) and\n"
	"write a complete model directory OUT (atomically).\n"
	"\n"
	"  -m, --model DIR     the base model directory (config.json + safetensors)\n"
	"  -o, --output DIR    the merged model directory to create\n"
	"      --scale S       multiply every update by S (default 1)\n"
	"  -f, --force         replace OUT if it exists\n"
	"  -n, --dry-run       report what would change; write nothing\n"
	"  -v, --verbose       report each folded tensor on stderr\n"
	"  -h, --help          show this help\n"
	"      --version       show the version\n";

enum { OPT_SCALE = 256, OPT_VERSION };

static const struct option long_options[] = {
	{ "model", required_argument, NULL, 'm' },
	{ "output", required_argument, NULL, 'o' },
	{ "scale", required_argument, NULL, OPT_SCALE },
	{ "force", no_argument, NULL, 'f' },
	{ "dry-run", no_argument, NULL, 'n' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

/* Rows of f32 work per chunk: about 8 MB. */
#define CHUNK_BYTES ((size_t)8 << 20)

/* One adapter module folded into one base tensor. */
struct fold {
	const struct lora_adapter *ad;
	const struct lora_module *m;
	float k;		/* scale * s */
	float *a, *b;		/* f32 copies: A [r, in], B [out, r] */
};

/* A base tensor that changes. */
struct target {
	size_t shard, index;	/* where it lives */
	const struct lora_st_tensor *t;
	int conv1d;		/* stored [in, out] */
	int64_t out, in;
	struct fold *f;
	size_t nf;
};

struct model {
	const char *dir;
	char *model_type;		/* from config.json, or NULL */
	struct lora_doc *index;		/* model.safetensors.index.json, or NULL */
	char **shard_names;		/* file names within dir */
	struct lora_st **shards;
	size_t n_shards;
};

static volatile sig_atomic_t got_signal;
static void on_signal(int sig)
{
	got_signal = sig;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	return p;
}

static char *path_join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 2;
	char *p = xmalloc(n);
	snprintf(p, n, "%s/%s", a, b);
	return p;
}

static int file_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- reading the model ---- */

static int add_shard(struct model *m, const char *name, struct lora_err *err)
{
	for (size_t i = 0; i < m->n_shards; i++)
		if (!strcmp(m->shard_names[i], name))
			return 0;
	if (strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return lora_errf(err, LORA_EFORMAT, "%s/model.safetensors.index.json: shard "
				 "'%s' is not a plain file name", m->dir, name);
	m->shard_names = realloc(m->shard_names, (m->n_shards + 1) * sizeof *m->shard_names);
	m->shards = realloc(m->shards, (m->n_shards + 1) * sizeof *m->shards);
	if (!m->shard_names || !m->shards)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	m->shard_names[m->n_shards] = strdup(name);
	m->shards[m->n_shards] = NULL;
	char *p = path_join(m->dir, name);
	int rc = lora_st_open(p, &m->shards[m->n_shards], err);
	free(p);
	m->n_shards++;
	return rc;
}

static int model_open(struct model *m, const char *dir, struct lora_err *err)
{
	memset(m, 0, sizeof *m);
	m->dir = dir;
	struct stat st;
	if (stat(dir, &st) != 0)
		return lora_errf(err, LORA_ENOTFOUND, "%s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return lora_errf(err, LORA_EINVAL, "%s: not a model directory", dir);
	char *cfg = path_join(dir, "config.json");
	struct lora_doc *c = NULL;
	int rc = 0;
	if (!file_exists(cfg)) {
		rc = lora_errf(err, LORA_ENOTFOUND, "%s: no config.json (not a Hugging Face model "
			       "directory)", dir);
	} else if (!(rc = lora_doc_parse_file(cfg, &c, err))) {
		const char *mt = NULL;
		lora_doc_get_string(c, "model_type", cfg, &mt, NULL);
		m->model_type = mt ? strdup(mt) : NULL;
		lora_doc_free(c);
	}
	free(cfg);
	if (rc)
		return rc;
	char *idx = path_join(dir, "model.safetensors.index.json");
	char *one = path_join(dir, "model.safetensors");
	if (file_exists(idx)) {
		rc = lora_doc_parse_file(idx, &m->index, err);
		const struct lora_doc *wm = rc ? NULL : lora_doc_get(m->index, "weight_map");
		if (!rc && (!wm || wm->type != LORA_DOC_MAP))
			rc = lora_errf(err, LORA_EFORMAT, "%s: no 'weight_map' map", idx);
		for (size_t i = 0; !rc && i < wm->u.map.n; i++) {
			const struct lora_doc *v = &wm->u.map.vals[i];
			if (v->type != LORA_DOC_STRING)
				rc = lora_errf(err, LORA_EFORMAT, "%s: weight_map['%s'] is not a "
					       "string", idx, wm->u.map.keys[i]);
			else
				rc = add_shard(m, v->u.str.s, err);
		}
	} else if (file_exists(one)) {
		rc = add_shard(m, "model.safetensors", err);
	} else {
		rc = lora_errf(err, LORA_ENOTFOUND,
			       "%s: no model.safetensors or model.safetensors.index.json (only "
			       "safetensors weights are supported)", dir);
	}
	free(idx);
	free(one);
	return rc;
}

static void model_close(struct model *m)
{
	for (size_t i = 0; i < m->n_shards; i++) {
		lora_st_close(m->shards[i]);
		free(m->shard_names[i]);
	}
	free(m->shards);
	free(m->shard_names);
	free(m->model_type);
	lora_doc_free(m->index);
}

/* Find tensor `name` in the model: 0 with its shard and index, or -1. */
static int model_find(const struct model *m, const char *name, size_t *shard, size_t *index)
{
	for (size_t s = 0; s < m->n_shards; s++) {
		const struct lora_st_tensor *t = lora_st_find(m->shards[s], name);
		if (!t)
			continue;
		size_t n = lora_st_count(m->shards[s]);
		for (size_t i = 0; i < n; i++)
			if (lora_st_get(m->shards[s], i) == t) {
				*shard = s;
				*index = i;
				return 0;
			}
	}
	return -1;
}

/* ---- planning: every check before anything is written ---- */

static float *f32_copy(const struct lora_tensor *t)
{
	float *f = lora_tensor_f32(t);
	if (!f)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	return f;
}

static int leaf_is_conv1d_name(const char *module)
{
	const char *dot = strrchr(module, '.');
	const char *leaf = dot ? dot + 1 : module;
	return !strncmp(leaf, "c_", 2);
}

static int plan(const struct model *m, struct lora_adapter *ads, size_t n_ads, double scale,
		struct target **targets_out, size_t *nt_out, struct lora_err *err)
{
	struct target *tg = NULL;
	size_t nt = 0;
	int gpt2 = m->model_type && !strcmp(m->model_type, "gpt2");
	int rc = 0;
	for (size_t i = 0; i < n_ads && !rc; i++) {
		const struct lora_adapter *ad = &ads[i];
		for (size_t k = 0; k < ad->n_modules && !rc; k++) {
			const struct lora_module *mod = &ad->modules[k];
			size_t nl = strlen(mod->module) + 8;
			char *name = xmalloc(nl);
			snprintf(name, nl, "%s.weight", mod->module);
			size_t shard, index;
			int found = model_find(m, name, &shard, &index) == 0;
			if (!found) {
				/* GPT-2 checkpoints saved without the "transformer." prefix. */
				const char *dot = strchr(name, '.');
				found = dot && model_find(m, dot + 1, &shard, &index) == 0;
			}
			if (!found) {
				rc = lora_errf(err, LORA_ENOTFOUND,
					       "adapter '%s': module '%s' is not in %s (no tensor '%s')",
					       ad->name, mod->module, m->dir, name);
				free(name);
				break;
			}
			free(name);
			const struct lora_st_tensor *t = lora_st_get(m->shards[shard], index);
			int64_t out = mod->b.shape[0], in = mod->a.shape[1];
			char have[160], want[64];
			lora_shape_str(t->shape, t->ndim, have, sizeof have);
			int conv1d = 0;
			if (t->ndim == 2 && leaf_is_conv1d_name(mod->module) &&
			    t->shape[0] == in && t->shape[1] == out &&
			    (gpt2 || t->shape[0] != t->shape[1]))
				conv1d = 1;
			if (t->ndim != 2 || (!conv1d && (t->shape[0] != out || t->shape[1] != in))) {
				snprintf(want, sizeof want, "[%lld,%lld]", (long long)out, (long long)in);
				rc = lora_errf(err, LORA_EINVAL,
					       "adapter '%s': module '%s': base tensor '%s' has shape "
					       "%s, but the adapter's update is %s",
					       ad->name, mod->module, t->name, have, want);
				break;
			}
			size_t j;
			for (j = 0; j < nt; j++)
				if (tg[j].t == t)
					break;
			if (j == nt) {
				tg = realloc(tg, (nt + 1) * sizeof *tg);
				if (!tg)
					lora_cli_die(LORA_EXIT_FAIL, "out of memory");
				memset(&tg[nt], 0, sizeof tg[nt]);
				tg[nt].shard = shard;
				tg[nt].index = index;
				tg[nt].t = t;
				tg[nt].conv1d = conv1d;
				tg[nt].out = out;
				tg[nt].in = in;
				nt++;
			}
			struct target *x = &tg[j];
			x->f = realloc(x->f, (x->nf + 1) * sizeof *x->f);
			if (!x->f)
				lora_cli_die(LORA_EXIT_FAIL, "out of memory");
			struct fold *f = &x->f[x->nf++];
			f->ad = ad;
			f->m = mod;
			f->k = (float)(scale * lora_module_scale(ad, mod));
			f->a = f32_copy(&mod->a);
			f->b = f32_copy(&mod->b);
		}
	}
	*targets_out = tg;
	*nt_out = nt;
	return rc;
}

static void targets_free(struct target *tg, size_t nt)
{
	for (size_t j = 0; j < nt; j++) {
		for (size_t i = 0; i < tg[j].nf; i++) {
			free(tg[j].f[i].a);
			free(tg[j].f[i].b);
		}
		free(tg[j].f);
	}
	free(tg);
}

/* ---- folding one chunk ---- */

/* w[rows, cols] holds stored rows r0..r0+rows of the target in f32; add every
 * fold's update to it. Linear layout: stored rows are output rows, so
 * w += k · B[r0:r0+rows, :] · A. Conv1D (stored [in, out]): stored rows are
 * input columns, so w += k · A[:, r0:r0+rows]^T · B^T. */
static void fold_chunk(const struct target *x, float *w, int64_t r0, int rows)
{
	int in = (int)x->in, out = (int)x->out;
	for (size_t i = 0; i < x->nf; i++) {
		const struct fold *f = &x->f[i];
		int r = (int)f->m->a.shape[0];
		if (!x->conv1d)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, in, r, f->k,
				    f->b + (size_t)r0 * (size_t)r, r, f->a, in, 1.0f, w, in);
		else
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, rows, out, r, f->k,
				    f->a + r0, in, f->b, r, 1.0f, w, out);
	}
}

static int64_t target_rows(const struct target *x)
{
	return x->t->shape[0];
}

static int64_t target_cols(const struct target *x)
{
	return x->t->shape[1];
}

/* Drop the input pages of [p, p+n) from our mapping: they were read once and
 * will not be read again, so the resident set stays small. */
static void drop_pages(const void *p, size_t n)
{
	if (!n)
		return;
	long ps = sysconf(_SC_PAGESIZE);
	uintptr_t a = (uintptr_t)p & ~(uintptr_t)(ps - 1);
	uintptr_t e = ((uintptr_t)p + n + (uintptr_t)ps - 1) & ~(uintptr_t)(ps - 1);
	madvise((void *)a, e - a, MADV_DONTNEED);
}

/* ---- dry run ---- */

static int dry_run(const struct target *tg, size_t nt)
{
	printf("%-56s %-14s %-5s %8s %12s %12s\n", "tensor", "shape", "dtype", "adapters",
	       "params", "max|dW|");
	size_t total = 0;
	for (size_t j = 0; j < nt; j++) {
		const struct target *x = &tg[j];
		int64_t rows = target_rows(x), cols = target_cols(x);
		size_t per = CHUNK_BYTES / ((size_t)cols * 4);
		if (per < 1)
			per = 1;
		float *w = xmalloc(per * (size_t)cols * sizeof *w);
		double mx = 0;
		for (int64_t r0 = 0; r0 < rows; r0 += (int64_t)per) {
			int n = (int)((rows - r0) < (int64_t)per ? rows - r0 : (int64_t)per);
			memset(w, 0, (size_t)n * (size_t)cols * sizeof *w);
			fold_chunk(x, w, r0, n);
			for (size_t e = 0; e < (size_t)n * (size_t)cols; e++)
				if (fabs(w[e]) > mx)
					mx = fabs(w[e]);
		}
		free(w);
		char shape[64];
		lora_shape_str(x->t->shape, 2, shape, sizeof shape);
		size_t params = (size_t)rows * (size_t)cols;
		total += params;
		printf("%-56s %-14s %-5s %8zu %12zu %12.6g%s\n", x->t->name, shape,
		       lora_dtype_name(x->t->dtype), x->nf, params, mx, x->conv1d ? " (Conv1D)" : "");
	}
	printf("%zu tensor%s, %zu parameters would change\n", nt, nt == 1 ? "" : "s", total);
	return 0;
}

/* ---- writing ---- */

static int copy_file(const char *src, const char *dst, struct lora_err *err)
{
	int in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return lora_errf(err, LORA_EIO, "cannot open '%s': %s", src, strerror(errno));
	struct stat st;
	fstat(in, &st);
	int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (st.st_mode & 0777) | 0200);
	if (out < 0) {
		close(in);
		return lora_errf(err, LORA_EIO, "cannot create '%s': %s", dst, strerror(errno));
	}
	static char buf[1 << 16];
	int rc = 0;
	for (;;) {
		ssize_t k = read(in, buf, sizeof buf);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			rc = lora_errf(err, LORA_EIO, "cannot read '%s': %s", src, strerror(errno));
			break;
		}
		if (k == 0)
			break;
		for (ssize_t off = 0; off < k;) {
			ssize_t w = write(out, buf + off, (size_t)(k - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				rc = lora_errf(err, LORA_EIO, "cannot write '%s': %s", dst,
					       strerror(errno));
				break;
			}
			off += w;
		}
		if (rc)
			break;
	}
	if (!rc && fsync(out) != 0)
		rc = lora_errf(err, LORA_EIO, "cannot write '%s': %s", dst, strerror(errno));
	if (close(out) != 0 && !rc)
		rc = lora_errf(err, LORA_EIO, "cannot write '%s': %s", dst, strerror(errno));
	close(in);
	return rc;
}

static const char *const weight_suffixes[] = { ".safetensors", ".bin", ".pt", ".pth", ".ckpt",
					       ".h5", ".msgpack", ".gguf", ".onnx", ".ot" };

static int is_weight_file(const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < sizeof weight_suffixes / sizeof weight_suffixes[0]; i++) {
		size_t k = strlen(weight_suffixes[i]);
		if (n >= k && !strcmp(name + n - k, weight_suffixes[i]))
			return 1;
	}
	return 0;
}

/* Copy every non-weight file of src into dst (recursively; hidden entries
 * and other weight files skipped, the latter with a warning). */
static int copy_tree(const char *src, const char *dst, const struct model *m, int top,
		     struct lora_err *err)
{
	DIR *d = opendir(src);
	if (!d)
		return lora_errf(err, LORA_EIO, "cannot read directory '%s': %s", src,
				 strerror(errno));
	int rc = 0;
	struct dirent *e;
	while (!rc && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char *s = path_join(src, e->d_name), *t = path_join(dst, e->d_name);
		struct stat st;
		int shard = 0;
		for (size_t i = 0; top && i < m->n_shards; i++)
			if (!strcmp(m->shard_names[i], e->d_name))
				shard = 1;
		if (shard || stat(s, &st) != 0) {
			/* written separately / a dangling link */
		} else if (S_ISDIR(st.st_mode)) {
			if (mkdir(t, 0755) != 0)
				rc = lora_errf(err, LORA_EIO, "cannot create '%s': %s", t,
					       strerror(errno));
			else
				rc = copy_tree(s, t, m, 0, err);
		} else if (S_ISREG(st.st_mode)) {
			if (is_weight_file(e->d_name))
				lora_cli_warn("not copying '%s': a weight file that is not part of "
					      "the safetensors model", s);
			else
				rc = copy_file(s, t, err);
		}
		free(s);
		free(t);
	}
	closedir(d);
	return rc;
}

static int write_shard(const struct model *m, size_t s, const struct target *tg, size_t nt,
		       const char *dir, int verbose, struct lora_err *err)
{
	struct lora_st *st = m->shards[s];
	size_t n = lora_st_count(st);
	struct lora_st_tensor *decl = xmalloc(n * sizeof *decl);
	for (size_t i = 0; i < n; i++)
		decl[i] = *lora_st_get(st, i);
	char *path = path_join(dir, m->shard_names[s]);
	struct lora_st_writer *w = NULL;
	int rc = lora_st_writer_open(path, decl, n, lora_st_metadata(st), &w, err);
	const char *slow = getenv("LORA_TEST_APPLY_DELAY_MS");
	long delay_ms = slow ? atol(slow) : 0;
	void *buf = NULL, *obuf = NULL;
	for (size_t k = 0; !rc && k < n; k++) {
		const struct lora_st_tensor *t = lora_st_get(st, lora_st_writer_order(w, k));
		const struct target *x = NULL;
		for (size_t j = 0; j < nt; j++)
			if (tg[j].shard == s && tg[j].t == t)
				x = &tg[j];
		if (!x) {
			/* Untouched: copy the bytes, a chunk at a time. */
			const char *p = t->data;
			for (size_t off = 0; !rc && off < t->nbytes; off += CHUNK_BYTES) {
				size_t len = t->nbytes - off < CHUNK_BYTES ? t->nbytes - off
									   : CHUNK_BYTES;
				rc = lora_st_writer_write(w, p + off, len, err);
				drop_pages(p + off, len);
				if (got_signal)
					rc = LORA_EIO;
			}
		} else {
			int64_t rows = target_rows(x), cols = target_cols(x);
			size_t es = lora_dtype_size(t->dtype);
			size_t per = CHUNK_BYTES / ((size_t)cols * 4);
			if (per < 1)
				per = 1;
			buf = realloc(buf, per * (size_t)cols * 4);
			obuf = realloc(obuf, per * (size_t)cols * 4);
			if (!buf || !obuf)
				lora_cli_die(LORA_EXIT_FAIL, "out of memory");
			const char *p = t->data;
			for (int64_t r0 = 0; !rc && r0 < rows; r0 += (int64_t)per) {
				int nr = (int)((rows - r0) < (int64_t)per ? rows - r0 : (int64_t)per);
				size_t ne = (size_t)nr * (size_t)cols;
				const char *src = p + (size_t)r0 * (size_t)cols * es;
				lora_to_f32(buf, src, t->dtype, ne);
				fold_chunk(x, buf, r0, nr);
				if (t->dtype == LORA_F32) {
					rc = lora_st_writer_write(w, buf, ne * 4, err);
				} else {
					lora_from_f32(obuf, buf, t->dtype, ne);
					rc = lora_st_writer_write(w, obuf, ne * es, err);
				}
				drop_pages(src, ne * es);
				if (got_signal)
					rc = LORA_EIO;
			}
			if (verbose && !rc)
				lora_cli_warn("folded %zu update%s into '%s' %s%s", x->nf,
					      x->nf == 1 ? "" : "s", t->name, lora_dtype_name(t->dtype),
					      x->conv1d ? " (Conv1D)" : "");
		}
		if (delay_ms > 0 && !rc) {
			struct timespec ts = { delay_ms / 1000, (delay_ms % 1000) * 1000000L };
			nanosleep(&ts, NULL);
		}
		if (got_signal)
			rc = LORA_EIO;
	}
	free(buf);
	free(obuf);
	if (!rc)
		rc = lora_st_writer_commit(w, err);
	else
		lora_st_writer_abort(w);
	free(path);
	free(decl);
	return rc;
}

/* rm -rf path (our own temporary directory only). */
static void remove_tree(const char *path)
{
	DIR *d = opendir(path);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			char *p = path_join(path, e->d_name);
			struct stat st;
			if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
				remove_tree(p);
			else
				unlink(p);
			free(p);
		}
		closedir(d);
	}
	rmdir(path);
}

static void fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

/* Fallback when the file system cannot exchange names: move the old OUT
 * aside, move the new one in, and leave the old one at tmp for removal. */
static int replace_dir(const char *tmp, const char *out, struct lora_err *err)
{
	size_t n = strlen(tmp) + 8;
	char *old = xmalloc(n);
	snprintf(old, n, "%s.old", tmp);
	int rc = 0;
	if (rename(out, old) != 0) {
		rc = lora_errf(err, LORA_EIO, "cannot replace '%s': %s", out, strerror(errno));
	} else if (rename(tmp, out) != 0) {
		rc = lora_errf(err, LORA_EIO, "cannot replace '%s': %s", out, strerror(errno));
		rename(old, out);
	} else if (rename(old, tmp) != 0) {
		remove_tree(old);
	}
	free(old);
	return rc;
}

/* dirname and basename of OUT, without trailing slashes. */
static void split_out(const char *out, char **dir, char **base)
{
	char *o = strdup(out);
	if (!o)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	size_t n = strlen(o);
	while (n > 1 && o[n - 1] == '/')
		o[--n] = '\0';
	char *slash = strrchr(o, '/');
	if (!slash) {
		*dir = strdup(".");
		*base = strdup(o);
	} else {
		*base = strdup(slash + 1);
		*slash = '\0';
		*dir = strdup(slash == o ? "/" : o);
	}
	free(o);
	if (!*dir || !*base)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
}

/* Refuse OUT equal to, inside, or containing MODEL. */
static void check_not_model(const char *model, const char *outdir, const char *base)
{
	char rm[PATH_MAX], rd[PATH_MAX];
	if (!realpath(model, rm))
		return;
	if (!realpath(outdir, rd))
		lora_cli_die(LORA_EXIT_FAIL, "cannot create '%s/%s': %s", outdir, base,
			     strerror(errno));
	char full[PATH_MAX + 256];
	snprintf(full, sizeof full, "%s/%s", strcmp(rd, "/") ? rd : "", base);
	size_t lm = strlen(rm), lf = strlen(full);
	if (!strcmp(full, rm) || (lf > lm && !strncmp(full, rm, lm) && full[lm] == '/') ||
	    (lm > lf && !strncmp(rm, full, lf) && rm[lf] == '/'))
		lora_cli_die(LORA_EXIT_USAGE, "refusing to write '%s': it is, contains or is "
			     "inside MODEL '%s'", full, model);
}

int main(int argc, char **argv)
{
	lora_cli_init(argc, argv, true);
	const char *model_dir = NULL, *out = NULL;
	double scale = 1.0;
	int force = 0, dry = 0, verbose = 0, c;
	while ((c = getopt_long(argc, argv, "fhm:no:v", long_options, NULL)) != -1) {
		switch (c) {
		case 'f':
			force = 1;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case 'm':
			model_dir = optarg;
			break;
		case 'n':
			dry = 1;
			break;
		case 'o':
			out = optarg;
			break;
		case 'v':
			verbose = 1;
			break;
		case OPT_SCALE:
			scale = lora_cli_double(optarg, "--scale");
			if (!isfinite(scale))
				lora_cli_usage_error("--scale: '%s' is not finite", optarg);
			break;
		case OPT_VERSION:
			lora_cli_version();
		default:
			fputs("Try 'lora-apply --help'.\n", stderr);
			return LORA_EXIT_USAGE;
		}
	}
	if (optind < argc)
		lora_cli_usage_error("unexpected argument '%s' (the stream comes on stdin)",
				     argv[optind]);
	if (!model_dir)
		lora_cli_usage_error("-m MODEL is required");
	if (!out && !dry)
		lora_cli_usage_error("-o OUT is required (or --dry-run)");
	char *outdir = NULL, *outbase = NULL;
	if (out && !dry) {
		split_out(out, &outdir, &outbase);
		if (!strcmp(outbase, ".") || !strcmp(outbase, "..") || !strcmp(outbase, "/"))
			lora_cli_usage_error("-o: '%s' is not a directory name", out);
		struct stat st;
		if (lstat(out, &st) == 0 && !force)
			lora_cli_die(LORA_EXIT_FAIL, "'%s' exists; use --force to replace it", out);
		if (lstat(out, &st) == 0 && !S_ISDIR(st.st_mode))
			lora_cli_die(LORA_EXIT_FAIL, "'%s' exists and is not a directory", out);
		check_not_model(model_dir, outdir, outbase);
	}

	/* 1. the stream */
	struct lora_err err = { 0 };
	struct lora_reader *rd = NULL;
	if (lora_reader_open(stdin, "-", &rd, &err))
		lora_cli_die_err(&err);
	struct lora_adapter *ads = NULL;
	size_t n_ads = 0;
	for (;;) {
		struct lora_record rec;
		int rc = lora_reader_next(rd, &rec, &err);
		if (rc == 0)
			break;
		if (rc < 0)
			lora_cli_die_err(&err);
		if (rec.kind == LORA_REC_ADAPTER) {
			ads = realloc(ads, (n_ads + 1) * sizeof *ads);
			if (!ads)
				lora_cli_die(LORA_EXIT_FAIL, "out of memory");
			ads[n_ads++] = rec.u.adapter;
			memset(&rec.u.adapter, 0, sizeof rec.u.adapter);
		} else {
			lora_cli_warn("record %zu is not an adapter; skipping it (pipe weights "
				      "through lora-merge first)", rec.index);
		}
		lora_record_free(&rec);
	}
	lora_reader_close(rd);
	if (n_ads == 0)
		lora_cli_die(LORA_EXIT_FAIL, "no adapter records on stdin: nothing to fold");

	/* 2. the model, and every check */
	struct model m;
	if (model_open(&m, model_dir, &err))
		lora_cli_die_err(&err);
	struct target *tg = NULL;
	size_t nt = 0;
	if (plan(&m, ads, n_ads, scale, &tg, &nt, &err))
		lora_cli_die_err(&err);

	int status = 0;
	if (dry) {
		dry_run(tg, nt);
		if (lora_cli_close_stdout())
			status = 1;
	} else {
		/* 3. write into a temporary directory beside OUT */
		size_t tl = strlen(outdir) + strlen(outbase) + 32;
		char *tmp = xmalloc(tl);
		snprintf(tmp, tl, "%s/.%s.tmp-XXXXXX", outdir, outbase);
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_signal;
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGHUP, &sa, NULL);
		if (!mkdtemp(tmp))
			lora_cli_die(LORA_EXIT_FAIL, "cannot create a temporary directory in '%s': %s",
				     outdir, strerror(errno));
		chmod(tmp, 0755);
		int rc = copy_tree(model_dir, tmp, &m, 1, &err);
		for (size_t s = 0; !rc && s < m.n_shards; s++)
			rc = write_shard(&m, s, tg, nt, tmp, verbose, &err);
		if (!rc && got_signal)
			rc = LORA_EIO;
		if (!rc) {
			fsync_dir(tmp);
			struct stat st;
			if (lstat(out, &st) == 0) {
				/* --force: swap atomically, then remove the old tree. */
				if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_EXCHANGE) != 0)
					rc = replace_dir(tmp, out, &err);
			} else if (rename(tmp, out) != 0) {
				rc = lora_errf(&err, LORA_EIO, "cannot rename '%s' to '%s': %s", tmp,
					       out, strerror(errno));
			}
			if (!rc)
				fsync_dir(outdir);
		}
		/* On success tmp now holds the old OUT (--force) or nothing. */
		remove_tree(tmp);
		free(tmp);
		/* Interrupted before the rename: die by the signal (OUT untouched).
		 * A signal after the rename only cut the clean-up short. */
		if (rc && got_signal) {
			int sig = got_signal;
			signal(sig, SIG_DFL);
			raise(sig);
		}
		if (rc) {
			lora_cli_warn("%s", err.msg[0] ? err.msg : "failed");
			status = 1;
		}
	}
	targets_free(tg, nt);
	model_close(&m);
	for (size_t i = 0; i < n_ads; i++)
		lora_adapter_free(&ads[i]);
	free(ads);
	free(outdir);
	free(outbase);
	return status;
}
