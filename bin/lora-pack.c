/*
 * lora-pack — PEFT adapters and lora streams in, one lora stream out; or a
 * table of the records (-t), or every adapter back out as a PEFT directory
 * (--unpack). See man/lora-pack.1.
 *
 * Records flow one at a time from the inputs through the name filters to the
 * sink (stream writer, table, or unpacker), so memory holds one record —
 * except with --sample (the reservoir of N adapters plus every non-adapter
 * record) and --name (everything, to check there is exactly one adapter).
 * A path is a PEFT directory, a .safetensors file (told by its first 9
 * bytes) or a stream; a pipe is always read as a stream.
 */
#include "cli.h"
#include "peft.h"
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage_text[] =
	"Usage: lora-pack [OPTIONS] [PATH...]\n"
	"Read PEFT adapter directories, adapter .safetensors files (with adapter_config.json\n"
	"beside them) and lora streams ('-' or no PATH: standard input), and write one lora\n"
	"stream on standard output.\n"
	"\n"
	"      --select GLOB   keep only named records matching GLOB (repeatable)\n"
	"      --exclude GLOB  drop named records matching GLOB (repeatable)\n"
	"      --sample N      keep N adapters drawn uniformly without replacement\n"
	"      --seed S        seed for --sample (default 0)\n"
	"      --dtype TYPE    convert adapter tensors to f32, f16 or bf16\n"
	"      --name NAME     rename the adapter (the input must hold exactly one)\n"
	"  -t, --table         list the records as a table instead of writing a stream\n"
	"      --unpack DIR    write each adapter as the PEFT directory DIR/NAME\n"
	"  -f, --force         with --unpack, replace an existing DIR/NAME\n"
	"  -h, --help          show this help and exit\n"
	"      --version       show the version and exit\n"
	"\n"
	"Exit status: 0 on success, 1 on bad data or a failed write, 2 on bad usage.\n";

enum { OPT_SELECT = 256, OPT_EXCLUDE, OPT_SAMPLE, OPT_SEED, OPT_DTYPE, OPT_NAME, OPT_UNPACK,
       OPT_VERSION };

static const struct option long_opts[] = {
	{ "select", required_argument, NULL, OPT_SELECT },
	{ "exclude", required_argument, NULL, OPT_EXCLUDE },
	{ "sample", required_argument, NULL, OPT_SAMPLE },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "dtype", required_argument, NULL, OPT_DTYPE },
	{ "name", required_argument, NULL, OPT_NAME },
	{ "table", no_argument, NULL, 't' },
	{ "unpack", required_argument, NULL, OPT_UNPACK },
	{ "force", no_argument, NULL, 'f' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

/* ---- state (bin/ may have globals; this is the whole program's) ---- */

struct opts {
	const char **select, **exclude;
	size_t n_select, n_exclude;
	long long sample;		/* -1: no sampling */
	uint64_t seed;
	bool has_dtype;
	enum lora_dtype dtype;
	const char *name;
	bool table;
	const char *unpack;
	bool force;
};

struct held {
	struct lora_record rec;
	size_t seq;			/* input order */
};

struct row {
	char *col[9];
	char *info;
};

static struct opts opt = { .sample = -1 };
static struct lora_writer *writer;
static struct held *held;		/* buffered non-adapter records (and all, with --name) */
static size_t n_held, cap_held;
static struct held *reservoir;		/* --sample: at most N adapters */
static size_t n_reservoir, cap_reservoir;
static uint64_t n_eligible;		/* adapters offered to the sampler */
static size_t seq;
static char **out_names;		/* adapter names already emitted */
static size_t n_out_names;
static struct row *rows;
static size_t n_rows;
static uint64_t rng[4];

/* ---- the sampler's generator ----
 * xoshiro256** (Blackman & Vigna), its state filled by four splitmix64 steps
 * from the seed; bounded draws by rejection, so every value is equally
 * likely. Written out here because the man page promises exactly this. */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(void)
{
	uint64_t result = rotl(rng[1] * 5, 7) * 9;
	uint64_t t = rng[1] << 17;
	rng[2] ^= rng[0];
	rng[3] ^= rng[1];
	rng[1] ^= rng[2];
	rng[0] ^= rng[3];
	rng[2] ^= t;
	rng[3] = rotl(rng[3], 45);
	return result;
}

/* Uniform in [0, n), n >= 1. */
static uint64_t uniform_below(uint64_t n)
{
	uint64_t threshold = (0 - n) % n;	/* 2^64 mod n */
	for (;;) {
		uint64_t x = xoshiro_next();
		if (x >= threshold)
			return x % n;
	}
}

/* ---- helpers ---- */

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	return q;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	return p;
}

static char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s;
	if (vasprintf(&s, fmt, ap) < 0)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	va_end(ap);
	return s;
}

/* The record's name, for --select/--exclude, or NULL if it has none. */
static const char *record_name(const struct lora_record *rec)
{
	if (rec->kind == LORA_REC_ADAPTER)
		return rec->u.adapter.name;
	if (rec->kind == LORA_REC_SCORE)
		return rec->u.score.name;
	return NULL;
}

static bool wanted(const struct lora_record *rec)
{
	const char *name = record_name(rec);
	if (!name)
		return true;
	if (opt.n_select) {
		bool hit = false;
		for (size_t i = 0; i < opt.n_select && !hit; i++)
			hit = fnmatch(opt.select[i], name, 0) == 0;
		if (!hit)
			return false;
	}
	for (size_t i = 0; i < opt.n_exclude; i++)
		if (fnmatch(opt.exclude[i], name, 0) == 0)
			return false;
	return true;
}

/* ---- the table ---- */

static const char *const headers[9] = { "NAME", "KIND", "BASE", "MODULES", "R", "ALPHA", "DTYPE",
					"PARAMS", "BYTES" };
static const bool right_align[9] = { false, false, false, true, true, true, false, true, true };

static char *range_int(int lo, int hi)
{
	return lo == hi ? xprintf("%d", lo) : xprintf("%d-%d", lo, hi);
}

static char *range_dbl(double lo, double hi)
{
	return lo == hi ? xprintf("%g", lo) : xprintf("%g-%g", lo, hi);
}

static void add_row(const struct lora_record *rec)
{
	rows = xrealloc(rows, (n_rows + 1) * sizeof *rows);
	struct row *w = &rows[n_rows++];
	memset(w, 0, sizeof *w);
	for (int i = 0; i < 9; i++)
		w->col[i] = NULL;
	switch (rec->kind) {
	case LORA_REC_ADAPTER: {
		const struct lora_adapter *a = &rec->u.adapter;
		int rlo = a->r, rhi = a->r;
		double alo = a->alpha, ahi = a->alpha;
		const char *dt = a->n_modules ? lora_dtype_name(a->modules[0].a.dtype) : "-";
		for (size_t i = 0; i < a->n_modules; i++) {
			const struct lora_module *m = &a->modules[i];
			if (i == 0) {
				rlo = rhi = m->r;
				alo = ahi = m->alpha;
			}
			rlo = m->r < rlo ? m->r : rlo;
			rhi = m->r > rhi ? m->r : rhi;
			alo = m->alpha < alo ? m->alpha : alo;
			ahi = m->alpha > ahi ? m->alpha : ahi;
			if (m->a.dtype != a->modules[0].a.dtype || m->b.dtype != a->modules[0].a.dtype)
				dt = "mixed";
		}
		uint64_t params, bytes;
		lora_adapter_size(a, &params, &bytes);
		w->col[0] = xstrdup(a->name);
		w->col[1] = xstrdup("adapter");
		w->col[2] = xstrdup(a->base ? a->base : "-");
		w->col[3] = xprintf("%zu", a->n_modules);
		w->col[4] = range_int(rlo, rhi);
		w->col[5] = range_dbl(alo, ahi);
		w->col[6] = xstrdup(dt);
		w->col[7] = xprintf("%" PRIu64, params);
		w->col[8] = xprintf("%" PRIu64, bytes);
		if (a->rslora)
			w->info = xstrdup("rslora");
		break;
	}
	case LORA_REC_WEIGHTS: {
		const struct lora_weights *ws = &rec->u.weights;
		w->col[0] = ws->has_id ? xprintf("#%" PRId64, ws->id) : xstrdup("-");
		w->col[1] = xstrdup("weights");
		w->col[3] = xprintf("%zu", ws->n);
		size_t cap = 256, k = 0;
		char *s = xrealloc(NULL, cap);
		s[0] = '\0';
		if (ws->method)
			k += (size_t)snprintf(s + k, cap - k, "method=%s ", ws->method);
		if (!isnan(ws->loss))
			k += (size_t)snprintf(s + k, cap - k, "loss=%.6g ", ws->loss);
		if (!isnan(ws->objective) && k < cap)
			k += (size_t)snprintf(s + k, cap - k, "objective=%.6g ", ws->objective);
		if (ws->has_evals && k < cap)
			k += (size_t)snprintf(s + k, cap - k, "evals=%" PRId64 " ", ws->evals);
		if (k < cap)
			k += (size_t)snprintf(s + k, cap - k, "w=");
		for (size_t i = 0; i < ws->n && k + 24 < cap; i++) {
			if (i == 6 && ws->n > 7) {
				k += (size_t)snprintf(s + k, cap - k, "%s...(%zu)", i ? "," : "", ws->n);
				break;
			}
			k += (size_t)snprintf(s + k, cap - k, "%s%s:%.4g", i ? "," : "", ws->names[i],
					      ws->w[i]);
		}
		w->info = s;
		break;
	}
	case LORA_REC_SCORE: {
		const struct lora_score *sc = &rec->u.score;
		w->col[0] = xstrdup(sc->name ? sc->name : "-");
		w->col[1] = xstrdup("score");
		char acc[48] = "";
		if (sc->has_accuracy)
			snprintf(acc, sizeof acc, " accuracy=%.4g", sc->accuracy);
		char id[32] = "";
		if (sc->has_id)
			snprintf(id, sizeof id, "id=%" PRId64 " ", sc->id);
		w->info = xprintf("%sloss=%.6g tokens=%" PRId64 " examples=%" PRId64 "%s", id, sc->loss,
				  sc->tokens, sc->examples, acc);
		break;
	}
	case LORA_REC_OTHER: {
		const struct lora_doc *k = lora_doc_get(rec->extra, "kind");
		w->col[0] = xstrdup("-");
		w->col[1] = xstrdup(k && k->type == LORA_DOC_STRING ? k->u.str.s : "?");
		break;
	}
	}
	for (int i = 0; i < 9; i++)
		if (!w->col[i])
			w->col[i] = xstrdup("-");
}

static void print_table(void)
{
	size_t width[9];
	bool any_info = false;
	for (int c = 0; c < 9; c++)
		width[c] = strlen(headers[c]);
	for (size_t i = 0; i < n_rows; i++) {
		for (int c = 0; c < 9; c++)
			if (strlen(rows[i].col[c]) > width[c])
				width[c] = strlen(rows[i].col[c]);
		any_info |= rows[i].info != NULL;
	}
	for (size_t i = 0; i <= n_rows; i++) {
		const char *const *col = i ? (const char *const *)rows[i - 1].col : headers;
		const char *info = i ? rows[i - 1].info : "INFO";
		for (int c = 0; c < 9; c++) {
			bool last = c == 8 && !(any_info && info);
			if (right_align[c])
				printf("%*s", (int)width[c], col[c]);
			else if (last)
				printf("%s", col[c]);
			else
				printf("%-*s", (int)width[c], col[c]);
			if (!last)
				printf("  ");
		}
		if (any_info && info)
			printf("%s", info);
		printf("\n");
	}
	for (size_t i = 0; i < n_rows; i++) {
		for (int c = 0; c < 9; c++)
			free(rows[i].col[c]);
		free(rows[i].info);
	}
	free(rows);
	rows = NULL;
}

/* ---- unpacking ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void rm_rf(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static bool safe_dir_name(const char *s)
{
	return s[0] && s[0] != '.' && !strchr(s, '/');
}

static void unpack_adapter(const struct lora_adapter *a)
{
	struct lora_err err = { 0 };
	if (!safe_dir_name(a->name))
		lora_cli_die(LORA_EXIT_FAIL,
			     "adapter name '%s' cannot be a directory name (empty, starts with '.' or has '/'); "
			     "rename it with --name", a->name);
	char *final = xprintf("%s/%s", opt.unpack, a->name);
	struct stat st;
	if (lstat(final, &st) != 0) {
		if (lora_peft_write(final, a, &err))
			lora_cli_die_err(&err);
		free(final);
		return;
	}
	if (!opt.force)
		lora_cli_die(LORA_EXIT_FAIL, "'%s' already exists; use --force to replace it", final);
	/* Write beside it, then swap the two in one step, so DIR/NAME is always
	 * either the whole old adapter or the whole new one. */
	char *tmp = xprintf("%s/.%s.lora-pack-%ld", opt.unpack, a->name, (long)getpid());
	rm_rf(tmp);
	if (lora_peft_write(tmp, a, &err)) {
		free(tmp);
		lora_cli_die_err(&err);
	}
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) != 0) {
		/* filesystems without RENAME_EXCHANGE: move the old one aside first */
		char *old = xprintf("%s/.%s.lora-pack-old-%ld", opt.unpack, a->name, (long)getpid());
		if (rename(final, old) != 0 || rename(tmp, final) != 0) {
			int e = errno;
			rm_rf(tmp);
			lora_cli_die(LORA_EXIT_FAIL, "cannot replace '%s': %s", final, strerror(e));
		}
		rm_rf(old);
		free(old);
	} else {
		rm_rf(tmp);	/* now the old adapter */
	}
	free(tmp);
	free(final);
}

/* ---- the sink: every record that survives filtering and sampling ---- */

static void sink(struct lora_record *rec)
{
	struct lora_err err = { 0 };
	if (rec->kind == LORA_REC_ADAPTER) {
		struct lora_adapter *a = &rec->u.adapter;
		for (size_t i = 0; i < n_out_names; i++)
			if (!strcmp(out_names[i], a->name))
				lora_cli_die(LORA_EXIT_FAIL,
					     "two adapters are named '%s'; the output stream needs unique names",
					     a->name);
		out_names = xrealloc(out_names, (n_out_names + 1) * sizeof *out_names);
		out_names[n_out_names++] = xstrdup(a->name);
		if (opt.has_dtype && lora_adapter_convert(a, opt.dtype, &err))
			lora_cli_die_err(&err);
	}
	if (opt.table)
		add_row(rec);
	else if (opt.unpack) {
		if (rec->kind == LORA_REC_ADAPTER)
			unpack_adapter(&rec->u.adapter);
	} else if (lora_writer_put(writer, rec, &err)) {
		lora_cli_die_err(&err);
	}
	lora_record_free(rec);
}

static void hold(struct held **v, size_t *n, size_t *cap, struct lora_record *rec)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 16;
		*v = xrealloc(*v, *cap * sizeof **v);
	}
	(*v)[*n].rec = *rec;
	(*v)[*n].seq = seq;
	(*n)++;
	memset(rec, 0, sizeof *rec);
}

/* One record from an input: filter, then sample / hold / pass on. Takes
 * ownership of *rec. */
static void emit(struct lora_record *rec)
{
	seq++;
	if (!wanted(rec)) {
		lora_record_free(rec);
		return;
	}
	if (opt.sample >= 0 && rec->kind == LORA_REC_ADAPTER) {
		/* Algorithm R: the k-th adapter (0-based) fills slot k while
		 * k < N; after that it replaces slot j = uniform(0..k) when j < N. */
		uint64_t k = n_eligible++;
		if (k < (uint64_t)opt.sample) {
			hold(&reservoir, &n_reservoir, &cap_reservoir, rec);
		} else {
			uint64_t j = uniform_below(k + 1);
			if (j < (uint64_t)opt.sample) {
				lora_record_free(&reservoir[j].rec);
				reservoir[j].rec = *rec;
				reservoir[j].seq = seq;
			} else {
				lora_record_free(rec);
			}
		}
		memset(rec, 0, sizeof *rec);	/* it was moved or freed */
		return;
	}
	if (opt.sample >= 0 || opt.name) {
		hold(&held, &n_held, &cap_held, rec);
		return;
	}
	sink(rec);
}

static int cmp_seq(const void *x, const void *y)
{
	const struct held *a = x, *b = y;
	return (a->seq > b->seq) - (a->seq < b->seq);
}

/* End of input in buffered mode: merge, rename, send on in input order. */
static void flush_held(void)
{
	if (n_reservoir) {
		held = xrealloc(held, (n_held + n_reservoir) * sizeof *held);
		memcpy(held + n_held, reservoir, n_reservoir * sizeof *held);
		n_held += n_reservoir;
		free(reservoir);
		reservoir = NULL;
		n_reservoir = 0;
	}
	qsort(held, n_held, sizeof *held, cmp_seq);
	if (opt.name) {
		size_t n = 0, at = 0;
		for (size_t i = 0; i < n_held; i++)
			if (held[i].rec.kind == LORA_REC_ADAPTER) {
				n++;
				at = i;
			}
		if (n != 1)
			lora_cli_die(LORA_EXIT_USAGE, "--name needs exactly one adapter, but there are %zu", n);
		free(held[at].rec.u.adapter.name);
		held[at].rec.u.adapter.name = xstrdup(opt.name);
	}
	for (size_t i = 0; i < n_held; i++)
		sink(&held[i].rec);
	free(held);
	held = NULL;
	n_held = 0;
}

/* ---- inputs ---- */

static void read_stream(FILE *f, const char *name)
{
	struct lora_reader *r;
	struct lora_err err = { 0 };
	if (lora_reader_open(f, name, &r, &err))
		lora_cli_die_err(&err);
	struct lora_record rec;
	int rc;
	while ((rc = lora_reader_next(r, &rec, &err)) == 1)
		emit(&rec);
	if (rc < 0)
		lora_cli_die_err(&err);
	lora_reader_close(r);
}

static void read_peft(const char *path)
{
	struct lora_record rec = { 0 };
	struct lora_err err = { 0 };
	rec.kind = LORA_REC_ADAPTER;
	if (lora_peft_read(path, &rec.u.adapter, &err))
		lora_cli_die_err(&err);
	emit(&rec);
}

/* A safetensors file starts with its header length (u64 little-endian, so
 * with a sane length the high bytes are zero) and then '{'; a stream starts
 * with a msgpack map. */
static bool looks_like_safetensors(const unsigned char *p, size_t n)
{
	return n >= 9 && p[8] == '{' && p[5] == 0 && p[6] == 0 && p[7] == 0;
}

static void read_input(const char *path)
{
	if (!strcmp(path, "-")) {
		read_stream(stdin, "-");
		return;
	}
	struct stat st;
	if (stat(path, &st) != 0)
		lora_cli_die(LORA_EXIT_FAIL, "cannot open '%s': %s", path, strerror(errno));
	if (S_ISDIR(st.st_mode)) {
		read_peft(path);
		return;
	}
	FILE *f = fopen(path, "rb");
	if (!f)
		lora_cli_die(LORA_EXIT_FAIL, "cannot open '%s': %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode)) {
		/* a pipe such as <(cmd) cannot be sniffed and rewound: a stream */
		read_stream(f, path);
		fclose(f);
		return;
	}
	unsigned char head[9];
	size_t n = fread(head, 1, sizeof head, f);
	if (ferror(f))
		lora_cli_die(LORA_EXIT_FAIL, "cannot read '%s': %s", path, strerror(errno));
	if (looks_like_safetensors(head, n)) {
		fclose(f);
		read_peft(path);
		return;
	}
	rewind(f);
	read_stream(f, path);
	fclose(f);
}

int main(int argc, char **argv)
{
	lora_cli_init(argc, argv, false);
	int c;
	while ((c = getopt_long(argc, argv, "fht", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_SELECT:
			opt.select = xrealloc(opt.select, (opt.n_select + 1) * sizeof *opt.select);
			opt.select[opt.n_select++] = optarg;
			break;
		case OPT_EXCLUDE:
			opt.exclude = xrealloc(opt.exclude, (opt.n_exclude + 1) * sizeof *opt.exclude);
			opt.exclude[opt.n_exclude++] = optarg;
			break;
		case OPT_SAMPLE:
			opt.sample = lora_cli_int(optarg, "--sample", 0, 1LL << 30);
			break;
		case OPT_SEED:
			opt.seed = (uint64_t)lora_cli_int(optarg, "--seed", 0, INT64_MAX);
			break;
		case OPT_DTYPE:
			if (lora_dtype_parse(optarg, &opt.dtype) || !strcmp(optarg, "F32") ||
			    !strcmp(optarg, "F16") || !strcmp(optarg, "BF16"))
				lora_cli_usage_error("--dtype: '%s' is not f32, f16 or bf16", optarg);
			opt.has_dtype = true;
			break;
		case OPT_NAME:
			if (!optarg[0])
				lora_cli_usage_error("--name: the name is empty");
			opt.name = optarg;
			break;
		case 't':
			opt.table = true;
			break;
		case OPT_UNPACK:
			opt.unpack = optarg;
			break;
		case 'f':
			opt.force = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return lora_cli_close_stdout() ? LORA_EXIT_FAIL : LORA_EXIT_OK;
		case OPT_VERSION:
			lora_cli_version();
		default:
			fprintf(stderr, "Try '%s --help'.\n", lora_prog);
			return LORA_EXIT_USAGE;
		}
	}
	if (opt.table && opt.unpack)
		lora_cli_usage_error("-t and --unpack do not go together");
	if (opt.force && !opt.unpack)
		lora_cli_usage_error("--force only applies to --unpack");
	if (!opt.table && !opt.unpack)
		lora_cli_refuse_tty_stdout();
	if (opt.unpack) {
		if (mkdir(opt.unpack, 0777) != 0 && errno != EEXIST)
			lora_cli_die(LORA_EXIT_FAIL, "cannot create '%s': %s", opt.unpack, strerror(errno));
		struct stat st;
		if (stat(opt.unpack, &st) != 0 || !S_ISDIR(st.st_mode))
			lora_cli_die(LORA_EXIT_FAIL, "'%s' is not a directory", opt.unpack);
	}
	uint64_t sm = opt.seed;
	for (int i = 0; i < 4; i++)
		rng[i] = splitmix64(&sm);

	struct lora_err err = { 0 };
	if (!opt.table && !opt.unpack && lora_writer_open(stdout, "-", &writer, &err))
		lora_cli_die_err(&err);
	if (optind == argc)
		read_input("-");
	for (int i = optind; i < argc; i++)
		read_input(argv[i]);
	if (opt.sample >= 0 || opt.name)
		flush_held();
	if (opt.table)
		print_table();
	lora_writer_close(writer);
	for (size_t i = 0; i < n_out_names; i++)
		free(out_names[i]);
	free(out_names);
	free(opt.select);
	free(opt.exclude);
	return lora_cli_close_stdout() ? LORA_EXIT_FAIL : LORA_EXIT_OK;
}
