/*
 * lora-cmaes — search merge weights for a pool of adapters, with any program
 * that speaks the score protocol as the objective (LoraHub's Adapt stage).
 *
 * Reads a pool (adapter records, see lora-stream(5)) on stdin, starts
 * COMMAND once as a coprocess (lib/proc), forwards the pool to it, then
 * drives a minimizer (lib/optim: CMA-ES or NLopt's COBYLA/BOBYQA/Nelder–Mead)
 * whose candidates go to COMMAND as `weights` records with increasing ids;
 * COMMAND answers with one `score` record per candidate, matched by id.
 *   objective(w) = loss(w) + l1 · mean|w|
 * Every candidate and the result carry `method: lorahub` (MERGE_RULE), the
 * merge rule the objective is asked to score, so the pool written through
 * unchanged followed by the best weights record makes `| lora-merge` build
 * exactly the adapter that was scored. --trace keeps every
 * evaluation as CSV; --resume replays a trace's losses through the
 * (deterministic) optimizer and continues where it stopped.
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "doc.h"
#include "optim.h"
#include "proc.h"
#include "stream.h"

/* The merge rule of every weights record sent and written (lora-stream(5)'s
 * `method`): LoraHub's, ΣwA and ΣwB. */
#define MERGE_RULE "lorahub"

static const char usage_text[] =
	"usage: lora-cmaes [-qv] [--method METHOD] [--budget N] [--sigma0 S] [--popsize N]\n"
	"                  [--restarts N] [--lower X] [--upper X] [--l1 X] [--seed N]\n"
	"                  [--trace FILE] [--resume FILE] [--eval-timeout SECONDS]\n"
	"                  -- COMMAND [ARG...] < pool > pool+weights\n"
	"\n"
	"Search weights w for the pool of adapters on stdin, minimizing\n"
	"loss(w) + l1 * mean|w| in the box [lower, upper]^N, where COMMAND (started\n"
	"once; usually lora-eval) scores each candidate weights record. Writes the\n"
	"pool and then the best weights record, ready for lora-merge.\n"
	"\n"
	"  -m, --method METHOD    cobyla (default), cmaes, bobyqa, neldermead\n"
	"  -b, --budget N         evaluations, the start point's included (default 40)\n"
	"      --sigma0 S         CMA-ES initial step size / NLopt initial step (default 0.3)\n"
	"      --popsize N        CMA-ES population size (default 4 + 3 ln N)\n"
	"      --restarts N       CMA-ES IPOP restarts, doubling the population (default 0)\n"
	"      --lower X          lower bound of every weight (default -1.5)\n"
	"      --upper X          upper bound of every weight (default 1.5)\n"
	"      --l1 X             weight of the mean |w| penalty (default 0.05)\n"
	"      --seed N           random seed (default 1)\n"
	"      --trace FILE       write every evaluation as CSV, flushed per line\n"
	"      --resume FILE      replay the evaluations of trace FILE, then continue\n"
	"      --eval-timeout S   fail if COMMAND takes longer than S seconds for a score\n"
	"  -q, --quiet            no progress on stderr\n"
	"  -v, --verbose          one stderr line per evaluation\n"
	"  -h, --help             show this help\n"
	"      --version          show the version\n";

enum { OPT_SIGMA0 = 256, OPT_POPSIZE, OPT_RESTARTS, OPT_LOWER, OPT_UPPER, OPT_L1, OPT_SEED,
       OPT_TRACE, OPT_RESUME, OPT_TIMEOUT, OPT_VERSION };

static const struct option long_options[] = {
	{ "method", required_argument, NULL, 'm' },
	{ "budget", required_argument, NULL, 'b' },
	{ "sigma0", required_argument, NULL, OPT_SIGMA0 },
	{ "popsize", required_argument, NULL, OPT_POPSIZE },
	{ "restarts", required_argument, NULL, OPT_RESTARTS },
	{ "lower", required_argument, NULL, OPT_LOWER },
	{ "upper", required_argument, NULL, OPT_UPPER },
	{ "l1", required_argument, NULL, OPT_L1 },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "trace", required_argument, NULL, OPT_TRACE },
	{ "resume", required_argument, NULL, OPT_RESUME },
	{ "eval-timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "quiet", no_argument, NULL, 'q' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

/* ---- the whole run's state ---- */

struct app {
	struct lora_optim_params op;
	double l1, timeout;
	int quiet, verbose, tty;
	const char *trace_path, *resume_path;
	char **cmd;
	/* pool */
	struct lora_record *recs;
	size_t nrecs, caprecs;
	char **names;
	size_t n;
	/* coprocess */
	struct lora_proc *proc;
	struct lora_writer *to_child;
	msgpack_unpacker up;
	int up_init;
	/* trace */
	FILE *trace;
	double *rep_loss, *rep_w;	/* replay: losses and candidates from --resume */
	long nrep;
	int trace_is_resume;		/* appending to the resumed file */
	/* book-keeping */
	double *loss_of;		/* loss of every evaluation (for the best's loss) */
	size_t loss_cap;
	long evals;
	double best_obj, start;
	int restarts_seen;
	long nonfinite;
	struct lora_err err;
	int child_failed;		/* the error is about COMMAND: add its status */
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- reading the pool ---- */

static void read_pool(struct app *a)
{
	struct lora_reader *r;
	struct lora_err err;
	if (lora_reader_open(stdin, "-", &r, &err))
		lora_cli_die_err(&err);
	for (;;) {
		if (a->nrecs == a->caprecs) {
			a->caprecs = a->caprecs ? 2 * a->caprecs : 16;
			a->recs = realloc(a->recs, a->caprecs * sizeof *a->recs);
			if (!a->recs)
				lora_cli_die(LORA_EXIT_FAIL, "out of memory reading the pool");
		}
		struct lora_record *rec = &a->recs[a->nrecs];
		int rc = lora_reader_next(r, rec, &err);
		if (rc < 0)
			lora_cli_die_err(&err);
		if (rc == 0)
			break;
		if (rec->kind == LORA_REC_WEIGHTS || rec->kind == LORA_REC_SCORE) {
			if (!a->quiet)
				lora_cli_warn("ignoring %s record %zu of the input (only the pool is searched)",
					      rec->kind == LORA_REC_WEIGHTS ? "weights" : "score",
					      rec->index);
			lora_record_free(rec);
			continue;
		}
		a->nrecs++;
		if (rec->kind == LORA_REC_ADAPTER) {
			a->names = realloc(a->names, (a->n + 1) * sizeof *a->names);
			if (!a->names)
				lora_cli_die(LORA_EXIT_FAIL, "out of memory reading the pool");
			a->names[a->n++] = rec->u.adapter.name;
		}
	}
	lora_reader_close(r);
	if (a->n == 0)
		lora_cli_die(LORA_EXIT_FAIL, "the input has no adapter records: nothing to search");
}

/* ---- trace CSV ---- */

static void csv_name(FILE *f, const char *name)
{
	fputs("w_", f);
	for (const char *s = name; *s; s++)
		fputc((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
			      *s == '_' || *s == '-' || *s == '.'
		      ? *s : '_', f);
}

static void trace_header(struct app *a, FILE *f)
{
	fputs("generation,id", f);
	for (size_t i = 0; i < a->n; i++) {
		fputc(',', f);
		csv_name(f, a->names[i]);
	}
	fputs(",loss,penalty,objective,sigma\n", f);
}

static double penalty_of(const struct app *a, const double *w)
{
	double s = 0;
	for (size_t i = 0; i < a->n; i++)
		s += fabs(w[i]);
	return a->l1 * s / (double)a->n;
}

static int trace_row(struct app *a, long gen, long id, const double *w, double loss, double sigma)
{
	if (!a->trace)
		return 0;
	FILE *f = a->trace;
	double pen = penalty_of(a, w);
	fprintf(f, "%ld,%ld", gen, id);
	for (size_t i = 0; i < a->n; i++)
		fprintf(f, ",%.17g", w[i]);
	fprintf(f, ",%.17g,%.17g,%.17g,%.9g\n", loss, pen, loss + pen, sigma);
	if (fflush(f) != 0 || ferror(f))
		return lora_errf(&a->err, LORA_EIO, "%s: write error: %s", a->trace_path,
				 strerror(errno));
	return 0;
}

/* Parse --resume FILE: header must name this pool's weights; every complete
 * row gives one replayed evaluation. Returns the byte length of the header
 * plus the rows used (to truncate a partial last line). */
static long load_resume(struct app *a)
{
	const char *path = a->resume_path;
	FILE *f = fopen(path, "r");
	if (!f)
		lora_cli_die(LORA_EXIT_FAIL, "cannot open '%s': %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	long used = 0, lineno = 0;
	char *want = NULL;
	size_t wantlen = 0;
	FILE *m = open_memstream(&want, &wantlen);
	if (!m)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	trace_header(a, m);
	fclose(m);
	size_t ncol = a->n + 6;
	while ((len = getline(&line, &cap, f)) > 0) {
		lineno++;
		if (line[len - 1] != '\n')
			break;	/* a partial last line: the run was killed while writing it */
		if (lineno == 1) {
			if (strcmp(line, want) != 0)
				lora_cli_die(LORA_EXIT_FAIL,
					     "%s: the header does not match this pool (%zu adapters, "
					     "expected '%.*s')", path, a->n, (int)strlen(want) - 1, want);
			used += len;
			continue;
		}
		if (a->nrep >= a->op.budget)
			break;
		a->rep_loss = realloc(a->rep_loss, (size_t)(a->nrep + 1) * sizeof *a->rep_loss);
		a->rep_w = realloc(a->rep_w, (size_t)(a->nrep + 1) * a->n * sizeof *a->rep_w);
		if (!a->rep_loss || !a->rep_w)
			lora_cli_die(LORA_EXIT_FAIL, "out of memory reading '%s'", path);
		char *s = line, *end;
		size_t col = 0;
		long id = -1;
		double loss = NAN;
		for (; col < ncol; col++) {
			errno = 0;
			double v = strtod(s, &end);
			if (end == s || (*end != ',' && *end != '\n'))
				lora_cli_die(LORA_EXIT_FAIL, "%s:%ld: column %zu is not a number", path,
					     lineno, col + 1);
			if (col == 1)
				id = (long)v;
			else if (col >= 2 && col < 2 + a->n)
				a->rep_w[a->nrep * (long)a->n + (long)(col - 2)] = v;
			else if (col == 2 + a->n)
				loss = v;
			s = end + 1;
			if (*end == '\n')
				break;
		}
		if (col + 1 != ncol)
			lora_cli_die(LORA_EXIT_FAIL, "%s:%ld: %zu columns, expected %zu", path, lineno,
				     col + 1, ncol);
		if (id != a->nrep + 1)
			lora_cli_die(LORA_EXIT_FAIL, "%s:%ld: id %ld out of sequence (expected %ld)", path,
				     lineno, id, a->nrep + 1);
		a->rep_loss[a->nrep++] = loss;
		used += len;
	}
	free(line);
	free(want);
	fclose(f);
	if (lineno == 0)
		lora_cli_die(LORA_EXIT_FAIL, "%s: empty trace", path);
	return used;
}

static void open_trace(struct app *a, long resume_bytes)
{
	if (a->resume_path && (!a->trace_path || !strcmp(a->trace_path, a->resume_path))) {
		/* continue the same file: drop a partial last line and rows
		 * beyond the budget, then append */
		a->trace_path = a->resume_path;
		if (truncate(a->resume_path, resume_bytes) != 0)
			lora_cli_die(LORA_EXIT_FAIL, "cannot truncate '%s': %s", a->resume_path,
				     strerror(errno));
		a->trace = fopen(a->resume_path, "a");
		a->trace_is_resume = 1;
	} else if (a->trace_path) {
		a->trace = fopen(a->trace_path, "w");
	} else {
		return;
	}
	if (!a->trace)
		lora_cli_die(LORA_EXIT_FAIL, "cannot open '%s': %s", a->trace_path, strerror(errno));
	if (!a->trace_is_resume) {
		trace_header(a, a->trace);
		fflush(a->trace);
	}
}

/* ---- the protocol ---- */

/* The next score record from COMMAND: 1 with the id and loss, 0 at end of its
 * output, or a negative code with a message in a->err. Records of other
 * kinds are skipped. */
static int next_score(struct app *a, long want_from, long want_to, int64_t *id, double *loss)
{
	const char *cmd = a->cmd[0];
	for (;;) {
		msgpack_unpacked res;
		msgpack_unpacked_init(&res);
		msgpack_unpack_return ur = msgpack_unpacker_next(&a->up, &res);
		if (ur == MSGPACK_UNPACK_PARSE_ERROR) {
			msgpack_unpacked_destroy(&res);
			a->child_failed = 1;
			return lora_errf(&a->err, LORA_EFORMAT,
					 "'%s' wrote something that is not a msgpack record", cmd);
		}
		if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
			msgpack_unpacked_destroy(&res);
			return lora_errf(&a->err, LORA_ENOMEM, "out of memory reading scores");
		}
		if (ur == MSGPACK_UNPACK_SUCCESS) {
			msgpack_object o = res.data;
			if (o.type != MSGPACK_OBJECT_MAP) {
				msgpack_unpacked_destroy(&res);
				a->child_failed = 1;
				return lora_errf(&a->err, LORA_EFORMAT,
						 "'%s' wrote a msgpack value that is not a map", cmd);
			}
			int is_score = 0, has_id = 0, has_loss = 0;
			for (uint32_t i = 0; i < o.via.map.size; i++) {
				msgpack_object k = o.via.map.ptr[i].key, v = o.via.map.ptr[i].val;
				if (k.type != MSGPACK_OBJECT_STR)
					continue;
				const char *ks = k.via.str.ptr;
				uint32_t kl = k.via.str.size;
				if (kl == 4 && !memcmp(ks, "kind", 4) && v.type == MSGPACK_OBJECT_STR &&
				    v.via.str.size == 5 && !memcmp(v.via.str.ptr, "score", 5))
					is_score = 1;
				else if (kl == 2 && !memcmp(ks, "id", 2)) {
					if (v.type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
						*id = v.via.u64 > INT64_MAX ? -1 : (int64_t)v.via.u64;
						has_id = 1;
					} else if (v.type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
						*id = v.via.i64;
						has_id = 1;
					}
				} else if (kl == 4 && !memcmp(ks, "loss", 4)) {
					if (v.type == MSGPACK_OBJECT_FLOAT32 || v.type == MSGPACK_OBJECT_FLOAT64)
						*loss = v.via.f64, has_loss = 1;
					else if (v.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
						*loss = (double)v.via.u64, has_loss = 1;
					else if (v.type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
						*loss = (double)v.via.i64, has_loss = 1;
				}
			}
			msgpack_unpacked_destroy(&res);
			if (!is_score)
				continue;
			a->child_failed = 1;
			if (!has_id)
				return lora_errf(&a->err, LORA_EFORMAT,
						 "'%s' sent a score record without an id (waiting for ids %ld..%ld)",
						 cmd, want_from, want_to);
			if (!has_loss)
				return lora_errf(&a->err, LORA_EFORMAT,
						 "'%s' sent a score record for id %lld without a numeric loss",
						 cmd, (long long)*id);
			a->child_failed = 0;
			return 1;
		}
		msgpack_unpacked_destroy(&res);
		/* need more bytes */
		if (!msgpack_unpacker_reserve_buffer(&a->up, 65536))
			return lora_errf(&a->err, LORA_ENOMEM, "out of memory reading scores");
		size_t got;
		struct lora_err e2;
		int rc = lora_proc_read(a->proc, msgpack_unpacker_buffer(&a->up),
					msgpack_unpacker_buffer_capacity(&a->up), a->timeout, &got, &e2);
		if (rc < 0) {
			a->child_failed = 1;
			if (rc == LORA_ETIMEOUT)
				return lora_errf(&a->err, rc, "%s (--eval-timeout %g) waiting for the scores "
						 "of ids %ld..%ld", e2.msg, a->timeout, want_from, want_to);
			return lora_errf(&a->err, rc, "%s", e2.msg);
		}
		if (got == 0) {
			if (msgpack_unpacker_message_size(&a->up) > 0)
				return lora_errf(&a->err, LORA_EFORMAT, "'%s' ended its output in the middle "
						 "of a record", cmd);
			return 0;
		}
		msgpack_unpacker_buffer_consumed(&a->up, got);
	}
}

/* Send the candidates [from, from+k) (ids from+1...) and collect their
 * losses into loss[]. Trace rows are written in id order as soon as every
 * earlier evaluation has its score. */
static int evaluate_remote(struct app *a, const struct lora_optim_batch *b, size_t skip,
			   double *loss)
{
	size_t n = a->n, k = b->k;
	long id0 = b->first_eval + 1;
	for (size_t i = skip; i < k; i++) {
		struct lora_weights ws;
		memset(&ws, 0, sizeof ws);
		ws.n = n;
		ws.names = a->names;
		ws.w = (double *)(b->x + i * n);
		ws.method = (char *)MERGE_RULE;
		ws.has_id = true;
		ws.id = id0 + (long)i;
		ws.loss = ws.objective = NAN;
		struct lora_err e2;
		if (lora_writer_put_weights(a->to_child, &ws, &e2) < 0) {
			a->child_failed = 1;
			return lora_errf(&a->err, LORA_EPIPE, "cannot send candidate %lld to '%s': %s",
					 (long long)ws.id, a->cmd[0], e2.msg);
		}
	}
	char *have = calloc(k, 1);
	if (!have)
		return lora_errf(&a->err, LORA_ENOMEM, "out of memory");
	size_t got = skip, written = skip;
	long from = id0 + (long)skip, to = id0 + (long)k - 1;
	int rc = 0;
	while (got < k) {
		int64_t id = 0;
		double l = NAN;
		rc = next_score(a, from, to, &id, &l);
		if (rc < 0)
			break;
		if (rc == 0) {
			long missing = from;
			for (size_t i = skip; i < k; i++)
				if (!have[i]) {
					missing = id0 + (long)i;
					break;
				}
			a->child_failed = 1;
			rc = lora_errf(&a->err, LORA_EPIPE, "'%s' closed its output after %zu of %zu scores "
				       "(no score for id %ld)", a->cmd[0], got - skip, k - skip, missing);
			break;
		}
		if (id < from || id > to) {
			a->child_failed = 1;
			rc = lora_errf(&a->err, LORA_EFORMAT, "'%s' sent a score for unknown id %lld "
				       "(waiting for ids %ld..%ld)", a->cmd[0], (long long)id, from, to);
			break;
		}
		size_t i = (size_t)(id - id0);
		if (have[i]) {
			a->child_failed = 1;
			rc = lora_errf(&a->err, LORA_EFORMAT, "'%s' sent two scores for id %lld",
				       a->cmd[0], (long long)id);
			break;
		}
		have[i] = 1;
		loss[i] = l;
		got++;
		while (written < k && have[written]) {
			rc = trace_row(a, b->generation, id0 + (long)written, b->x + written * n,
				       loss[written], b->sigma);
			if (rc < 0)
				break;
			written++;
		}
		if (rc < 0)
			break;
	}
	free(have);
	return rc < 0 ? rc : 0;
}

static void progress(struct app *a, long gen, double sigma, int replayed)
{
	if (a->quiet)
		return;
	double el = now_s() - a->start;
	if (a->tty)
		fputs("\r\033[K", stderr);
	char sg[48] = "";
	if (!isnan(sigma))
		snprintf(sg, sizeof sg, "  sigma %.3g", sigma);
	fprintf(stderr, "%s: gen %ld  evals %ld/%ld  best %.6g%s  %.1fs%s\n", lora_prog, gen,
		a->evals, a->op.budget, a->best_obj, sg, el, replayed ? "  (replayed)" : "");
	if (a->tty) {
		int width = 30, fill = (int)(width * a->evals / (a->op.budget ? a->op.budget : 1));
		fputc('[', stderr);
		for (int i = 0; i < width; i++)
			fputc(i < fill ? '#' : ' ', stderr);
		fprintf(stderr, "] %ld/%ld", a->evals, a->op.budget);
	}
	fflush(stderr);
}

/* lib/optim's callback: replay what the trace has, ask COMMAND the rest. */
static int evaluate(void *ctx, const struct lora_optim_batch *b, double *f)
{
	struct app *a = ctx;
	size_t n = a->n, k = b->k, skip = 0;
	double *loss = malloc(k * sizeof *loss);
	if (!loss)
		return lora_errf(&a->err, LORA_ENOMEM, "out of memory");
	for (size_t i = 0; i < k; i++) {
		long e = b->first_eval + (long)i;
		if (e >= a->nrep)
			break;
		for (size_t j = 0; j < n; j++) {
			double t = a->rep_w[e * (long)n + (long)j], x = b->x[i * n + j];
			if (!(fabs(t - x) <= 1e-12 * (1 + fabs(x)))) {
				free(loss);
				return lora_errf(&a->err, LORA_EINVAL,
						 "%s: evaluation %ld does not match this run (w[%zu] = %.17g "
						 "in the trace, %.17g now): resume with the same pool, "
						 "method, seed and options", a->resume_path, e + 1, j, t, x);
			}
		}
		loss[i] = a->rep_loss[e];
		if (!a->trace_is_resume) {
			int rc = trace_row(a, b->generation, e + 1, b->x + i * n, loss[i], b->sigma);
			if (rc < 0) {
				free(loss);
				return rc;
			}
		}
		skip++;
	}
	if (skip < k) {
		int rc = evaluate_remote(a, b, skip, loss);
		if (rc < 0) {
			free(loss);
			return rc;
		}
	}
	for (size_t i = 0; i < k; i++) {
		double pen = penalty_of(a, b->x + i * n);
		f[i] = loss[i] + pen;
		long e = b->first_eval + (long)i;
		if ((size_t)e >= a->loss_cap) {
			size_t cap = a->loss_cap ? 2 * a->loss_cap : 64;
			while (cap <= (size_t)e)
				cap *= 2;
			double *nl = realloc(a->loss_of, cap * sizeof *nl);
			if (!nl) {
				free(loss);
				return lora_errf(&a->err, LORA_ENOMEM, "out of memory");
			}
			a->loss_of = nl;
			a->loss_cap = cap;
		}
		a->loss_of[e] = loss[i];
		if (!isfinite(loss[i])) {
			a->nonfinite++;
			if (!a->quiet)
				lora_cli_warn("id %ld: loss is %g; counted as the worst value", e + 1,
					      loss[i]);
		}
		if (isfinite(f[i]) && f[i] < a->best_obj)
			a->best_obj = f[i];
		a->evals++;
		if (a->verbose && !a->quiet) {
			if (a->tty)
				fputs("\r\033[K", stderr);
			fprintf(stderr, "%s: id %ld  loss %.6g  penalty %.6g  objective %.6g%s\n",
				lora_prog, e + 1, loss[i], pen, f[i], i < skip ? "  (replayed)" : "");
		}
	}
	free(loss);
	if (b->restarts > a->restarts_seen) {
		a->restarts_seen = b->restarts;
		if (!a->quiet) {
			if (a->tty)
				fputs("\r\033[K", stderr);
			fprintf(stderr, "%s: restart %d after %s: population %zu\n", lora_prog,
				b->restarts, b->stop_reason ? b->stop_reason : "?", b->popsize);
		}
	}
	progress(a, b->generation, b->sigma, skip == k);
	return 0;
}

/* ---- failure reporting ---- */

_Noreturn static void die_run(struct app *a)
{
	if (a->tty && !a->quiet)
		fputs("\r\033[K", stderr);
	fprintf(stderr, "%s: %s\n", lora_prog, a->err.msg[0] ? a->err.msg : "failed");
	if (a->proc && a->child_failed) {
		int st = 0;
		/* give a dying child a moment, then stop it */
		lora_proc_finish(a->proc, 2.0, &st);
		char sbuf[128], tail[2048];
		lora_proc_status_str(st, sbuf, sizeof sbuf);
		fprintf(stderr, "%s: '%s' %s\n", lora_prog, a->cmd[0], sbuf);
		lora_proc_stderr_tail(a->proc, tail, sizeof tail, 5);
		if (tail[0]) {
			fprintf(stderr, "%s: last lines of its stderr:\n", lora_prog);
			for (char *s = tail, *nl; s && *s; s = nl ? nl + 1 : NULL) {
				nl = strchr(s, '\n');
				fprintf(stderr, "  | %.*s\n", nl ? (int)(nl - s) : (int)strlen(s), s);
			}
		}
	}
	if (a->trace)
		fclose(a->trace);
	lora_proc_free(a->proc);
	exit(LORA_EXIT_FAIL);
}

int main(int argc, char **argv)
{
	lora_cli_init(argc, argv, false);
	/* CMA-ES decomposes n × n matrices with n = pool size: OpenBLAS's
	 * threads only cost time there, and a fixed thread count keeps runs
	 * (and --resume) reproducible whatever OPENBLAS_NUM_THREADS says */
	openblas_set_num_threads(1);
	struct app a;
	memset(&a, 0, sizeof a);
	a.op = lora_optim_default_params(0);
	a.l1 = 0.05;
	int c;
	while ((c = getopt_long(argc, argv, "+m:b:qvh", long_options, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (lora_optim_method_parse(optarg, &a.op.method))
				lora_cli_usage_error("--method: unknown method '%s' (cobyla, cmaes, bobyqa, "
						     "neldermead)", optarg);
			break;
		case 'b':
			a.op.budget = lora_cli_int(optarg, "--budget", 1, 100000000);
			break;
		case OPT_SIGMA0:
			a.op.sigma0 = lora_cli_double(optarg, "--sigma0");
			if (!(a.op.sigma0 > 0) || !isfinite(a.op.sigma0))
				lora_cli_usage_error("--sigma0: must be positive");
			break;
		case OPT_POPSIZE:
			a.op.popsize = (int)lora_cli_int(optarg, "--popsize", 2, 1000000);
			break;
		case OPT_RESTARTS:
			a.op.restarts = (int)lora_cli_int(optarg, "--restarts", 0, 100);
			break;
		case OPT_LOWER:
			a.op.lower = lora_cli_double(optarg, "--lower");
			break;
		case OPT_UPPER:
			a.op.upper = lora_cli_double(optarg, "--upper");
			break;
		case OPT_L1:
			a.l1 = lora_cli_double(optarg, "--l1");
			if (!isfinite(a.l1))
				lora_cli_usage_error("--l1: must be finite");
			break;
		case OPT_SEED:
			a.op.seed = (uint64_t)lora_cli_int(optarg, "--seed", 0, INT64_MAX);
			break;
		case OPT_TRACE:
			a.trace_path = optarg;
			break;
		case OPT_RESUME:
			a.resume_path = optarg;
			break;
		case OPT_TIMEOUT:
			a.timeout = lora_cli_double(optarg, "--eval-timeout");
			if (!(a.timeout > 0) || !isfinite(a.timeout))
				lora_cli_usage_error("--eval-timeout: must be a positive number of seconds");
			break;
		case 'q':
			a.quiet = 1;
			break;
		case 'v':
			a.verbose = 1;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case OPT_VERSION:
			lora_cli_version();
		default:
			fprintf(stderr, "Try '%s --help'.\n", lora_prog);
			return LORA_EXIT_USAGE;
		}
	}
	if (optind >= argc)
		lora_cli_usage_error("no objective command (usage: lora-cmaes [OPTIONS] -- COMMAND [ARG...])");
	if (!(a.op.lower < a.op.upper) || !isfinite(a.op.lower) || !isfinite(a.op.upper))
		lora_cli_usage_error("--lower %g must be below --upper %g, both finite", a.op.lower,
				     a.op.upper);
	a.cmd = argv + optind;
	a.tty = isatty(STDERR_FILENO);
	lora_cli_refuse_tty_stdout();

	read_pool(&a);
	a.op.n = a.n;
	long resume_bytes = a.resume_path ? load_resume(&a) : 0;
	open_trace(&a, resume_bytes);
	a.best_obj = INFINITY;
	a.start = now_s();

	/* start COMMAND and give it the pool */
	if (lora_proc_start(a.cmd, stderr, &a.proc, &a.err) < 0) {
		if (a.trace)
			fclose(a.trace);
		lora_cli_die_err(&a.err);
	}
	if (!msgpack_unpacker_init(&a.up, 65536))
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	a.up_init = 1;
	if (lora_writer_open(lora_proc_in(a.proc), a.cmd[0], &a.to_child, &a.err) < 0)
		die_run(&a);
	for (size_t i = 0; i < a.nrecs; i++) {
		struct lora_err e2;
		if (lora_writer_put(a.to_child, &a.recs[i], &e2) < 0) {
			a.child_failed = 1;
			lora_errf(&a.err, LORA_EPIPE, "cannot send the pool to '%s': %s", a.cmd[0], e2.msg);
			die_run(&a);
		}
	}

	double *best = malloc(a.n * sizeof *best);
	if (!best)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	struct lora_optim_result res;
	if (lora_optim_run(&a.op, evaluate, &a, best, &res, &a.err) < 0)
		die_run(&a);

	/* done: let COMMAND see the end of its input and exit */
	lora_writer_close(a.to_child);
	a.to_child = NULL;
	int st = 0;
	lora_proc_finish(a.proc, 30.0, &st);
	if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) && !a.quiet) {
		char sbuf[128];
		lora_proc_status_str(st, sbuf, sizeof sbuf);
		lora_cli_warn("warning: '%s' %s after the search", a.cmd[0], sbuf);
	}
	if (a.trace && fclose(a.trace) != 0)
		lora_cli_die(LORA_EXIT_FAIL, "%s: write error: %s", a.trace_path, strerror(errno));
	a.trace = NULL;

	double best_loss = res.best_eval >= 0 ? a.loss_of[res.best_eval] : NAN;
	if (a.tty && !a.quiet)
		fputs("\r\033[K", stderr);
	if (!a.quiet) {
		fprintf(stderr, "%s: best objective %.6g (loss %.6g, id %ld) after %ld evaluations "
			"(%s, stop: %s", lora_prog, res.f_best, best_loss, res.best_eval + 1, res.evals,
			lora_optim_method_name(a.op.method), res.stop);
		if (res.restarts)
			fprintf(stderr, ", %d restarts", res.restarts);
		if (a.nonfinite)
			fprintf(stderr, ", %ld NaN/Inf losses", a.nonfinite);
		fprintf(stderr, ")\n");
	}
	if (res.best_eval < 0)
		lora_cli_die(LORA_EXIT_FAIL, "no evaluation returned a finite loss");

	/* the output: the pool, then the best weights */
	struct lora_writer *out;
	struct lora_err err;
	if (lora_writer_open(stdout, "-", &out, &err) < 0)
		lora_cli_die_err(&err);
	for (size_t i = 0; i < a.nrecs; i++)
		if (lora_writer_put(out, &a.recs[i], &err) < 0)
			lora_cli_die_err(&err);
	struct lora_doc meta, search;
	lora_doc_init_map(&meta);
	lora_doc_init_map(&search);
	int rc = lora_doc_map_put_string(&search, "method", lora_optim_method_name(a.op.method));
	rc = rc ? rc : lora_doc_map_put_int(&search, "budget", a.op.budget);
	rc = rc ? rc : lora_doc_map_put_double(&search, "sigma0", a.op.sigma0);
	rc = rc ? rc : lora_doc_map_put_double(&search, "l1", a.l1);
	rc = rc ? rc : lora_doc_map_put_double(&search, "lower", a.op.lower);
	rc = rc ? rc : lora_doc_map_put_double(&search, "upper", a.op.upper);
	rc = rc ? rc : lora_doc_map_put_int(&search, "best_id", res.best_eval + 1);
	rc = rc ? rc : lora_doc_map_put_int(&search, "nonfinite", a.nonfinite);
	rc = rc ? rc : lora_doc_map_put_int(&search, "restarts", res.restarts);
	rc = rc ? rc : lora_doc_map_put_string(&search, "stop", res.stop);
	rc = rc ? rc : lora_doc_map_put(&meta, "search", &search);
	if (rc)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	struct lora_weights ws;
	memset(&ws, 0, sizeof ws);
	ws.n = a.n;
	ws.names = a.names;
	ws.w = best;
	ws.method = (char *)MERGE_RULE;
	ws.loss = best_loss;
	ws.objective = res.f_best;
	ws.has_evals = true;
	ws.evals = res.evals;
	ws.has_seed = true;
	ws.seed = (int64_t)a.op.seed;
	ws.meta = &meta;
	if (lora_writer_put_weights(out, &ws, &err) < 0)
		lora_cli_die_err(&err);
	lora_writer_close(out);
	lora_doc_clear(&meta);
	int bad = lora_cli_close_stdout();

	lora_proc_free(a.proc);
	msgpack_unpacker_destroy(&a.up);
	for (size_t i = 0; i < a.nrecs; i++)
		lora_record_free(&a.recs[i]);
	free(a.recs);
	free(a.names);
	free(a.rep_loss);
	free(a.rep_w);
	free(a.loss_of);
	free(best);
	return bad ? LORA_EXIT_FAIL : 0;
}
