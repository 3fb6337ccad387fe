/*
 * lora-merge — turn a pool of adapters plus weights into merged adapters.
 *
 * Reads a stream on stdin (see lora-stream(5)). Adapter records accumulate
 * into the pool; each weights record yields one merged adapter record on
 * stdout, merged by lib/merge (see lora-merge(1) for every rule's math).
 * Without any weights record, one merge is made at the end of the stream
 * from -w (pool order), the --config file's weights, or --method mean.
 * Score and unknown records are dropped. The method is, in order of
 * precedence: --method, the weights record's `method`, the config's
 * `method`, lorahub.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "doc.h"
#include "merge.h"
#include "stream.h"

static const char usage_text[] =
	"usage: lora-merge [-v] [--method METHOD] [-w W1,W2,...] [--config FILE.yaml]\n"
	"                  [--rank K] [--density D] [--sign total|frequency] [--seed S]\n"
	"                  [--name NAME] < stream > stream\n"
	"\n"
	"Merge the pool of adapters in the input stream, once per weights record\n"
	"(or once with -w, --config or --method mean), into new adapter records.\n"
	"\n"
	"      --method METHOD    lorahub (default), linear, svd, ties, dare, magnitude, mean\n"
	"  -w, --weights LIST     comma-separated weights, one per pool adapter in order\n"
	"      --config FILE      mergekit-like YAML: method, weights {name: w},\n"
	"                         parameters {density, rank, seed, sign}\n"
	"      --rank K           target rank for svd/ties/dare/magnitude (default: max r)\n"
	"      --density D        fraction kept by ties/dare/magnitude, in (0, 1] (default 0.5)\n"
	"      --sign RULE        ties sign election: total (default) or frequency\n"
	"      --seed S           dare's random seed (default 0)\n"
	"      --name NAME        name of the merged adapter (default merge-METHOD[-ID])\n"
	"  -v, --verbose          report per-module truncation errors on stderr\n"
	"  -h, --help             show this help\n"
	"      --version          show the version\n";

/* Long-only options get codes above any character. */
enum { OPT_METHOD = 256, OPT_CONFIG, OPT_RANK, OPT_DENSITY, OPT_SIGN, OPT_SEED, OPT_NAME,
       OPT_VERSION, OPT_MAX };

static const struct option long_options[] = {
	{ "method", required_argument, NULL, OPT_METHOD },
	{ "weights", required_argument, NULL, 'w' },
	{ "config", required_argument, NULL, OPT_CONFIG },
	{ "rank", required_argument, NULL, OPT_RANK },
	{ "density", required_argument, NULL, OPT_DENSITY },
	{ "sign", required_argument, NULL, OPT_SIGN },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "name", required_argument, NULL, OPT_NAME },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

/* Everything the options and the config decide. */
struct opts {
	struct lora_merge_params p;
	int have_method;	/* from --method (beats the record's method) */
	int cfg_method;		/* from the config (loses to the record's) */
	double *w;		/* -w list */
	size_t nw;
	const char *config;
	struct lora_doc *cfg;	/* parsed config, or NULL */
	const struct lora_doc *cfg_weights;	/* its weights map, or NULL */
	const char *name;
};

struct pool {
	struct lora_adapter *a;
	size_t n, cap;
};

static int parse_sign(const char *s, int *out)
{
	if (!strcmp(s, "total") || !strcmp(s, "sum"))
		*out = 0;
	else if (!strcmp(s, "frequency") || !strcmp(s, "count"))
		*out = 1;
	else
		return -1;
	return 0;
}

static void parse_weights(struct opts *o, const char *s)
{
	const char *p = s;
	o->nw = 0;
	free(o->w);
	o->w = NULL;
	for (;;) {
		double *nw = realloc(o->w, (o->nw + 1) * sizeof *nw);
		if (!nw)
			lora_cli_die(LORA_EXIT_FAIL, "out of memory");
		o->w = nw;
		char *end;
		errno = 0;
		double v = strtod(p, &end);
		if (end == p || (*end != ',' && *end != '\0') || errno == ERANGE)
			lora_cli_usage_error("--weights: '%s' is not a comma-separated list of numbers",
					     s);
		if (!isfinite(v))
			lora_cli_usage_error("--weights: weight %zu is not finite (%s)", o->nw + 1, s);
		o->w[o->nw++] = v;
		if (*end == '\0')
			break;
		p = end + 1;
	}
}

/* Read the YAML config: values land in o->p unless the command line set
 * them (given[] flags). */
static void load_config(struct opts *o, const int *given)
{
	struct lora_err err = { 0 };
	if (lora_doc_parse_file(o->config, &o->cfg, &err))
		lora_cli_die(LORA_EXIT_USAGE, "%s", err.msg);
	const struct lora_doc *c = o->cfg;
	const char *f = o->config;
	if (c->type != LORA_DOC_MAP)
		lora_cli_die(LORA_EXIT_USAGE, "%s: the config must be a map", f);
	for (size_t i = 0; i < c->u.map.n; i++) {
		const char *k = c->u.map.keys[i];
		if (strcmp(k, "method") && strcmp(k, "merge_method") && strcmp(k, "weights") &&
		    strcmp(k, "parameters") && strcmp(k, "name"))
			lora_cli_warn("%s:%d:%d: ignoring unknown key '%s'", f, c->u.map.vals[i].line,
				      c->u.map.vals[i].col, k);
	}
	const char *m = NULL;
	if (lora_doc_get_string(c, "method", f, &m, &err) == LORA_EFORMAT ||
	    (!m && lora_doc_get_string(c, "merge_method", f, &m, &err) == LORA_EFORMAT))
		lora_cli_die(LORA_EXIT_USAGE, "%s", err.msg);
	if (m && !given[OPT_METHOD]) {
		if (lora_merge_method_parse(m, &o->p.method))
			lora_cli_die(LORA_EXIT_USAGE, "%s: unknown method '%s'", f, m);
		o->cfg_method = 1;
	}
	const char *nm = NULL;
	if (lora_doc_get_string(c, "name", f, &nm, &err) == LORA_EFORMAT)
		lora_cli_die(LORA_EXIT_USAGE, "%s", err.msg);
	if (nm && !o->name)
		o->name = nm;
	const struct lora_doc *w = lora_doc_get(c, "weights");
	if (w && w->type != LORA_DOC_NULL) {
		if (w->type != LORA_DOC_MAP)
			lora_cli_die(LORA_EXIT_USAGE, "%s:%d:%d: 'weights' must be a map of name: weight",
				     f, w->line, w->col);
		for (size_t i = 0; i < w->u.map.n; i++) {
			const struct lora_doc *v = &w->u.map.vals[i];
			double x = v->type == LORA_DOC_INT ? (double)v->u.i : v->u.f;
			if ((v->type != LORA_DOC_INT && v->type != LORA_DOC_FLOAT) || !isfinite(x))
				lora_cli_die(LORA_EXIT_USAGE,
					     "%s:%d:%d: weight of '%s' must be a finite number", f,
					     v->line, v->col, w->u.map.keys[i]);
		}
		o->cfg_weights = w;
	}
	const struct lora_doc *ps = lora_doc_get(c, "parameters");
	if (!ps || ps->type == LORA_DOC_NULL)
		return;
	if (ps->type != LORA_DOC_MAP)
		lora_cli_die(LORA_EXIT_USAGE, "%s:%d:%d: 'parameters' must be a map", f, ps->line,
			     ps->col);
	for (size_t i = 0; i < ps->u.map.n; i++) {
		const char *k = ps->u.map.keys[i];
		if (strcmp(k, "density") && strcmp(k, "rank") && strcmp(k, "seed") && strcmp(k, "sign"))
			lora_cli_die(LORA_EXIT_USAGE, "%s:%d:%d: unknown parameter '%s'", f,
				     ps->u.map.vals[i].line, ps->u.map.vals[i].col, k);
	}
	double d;
	int64_t iv;
	const char *s;
	int rc = lora_doc_get_double(ps, "density", f, &d, &err);
	if (rc == LORA_EFORMAT)
		lora_cli_die(LORA_EXIT_USAGE, "%s", err.msg);
	if (!rc && !given[OPT_DENSITY])
		o->p.density = d;
	rc = lora_doc_get_int(ps, "rank", f, &iv, &err);
	if (rc == LORA_EFORMAT || (!rc && (iv < 0 || iv > 1 << 20)))
		lora_cli_die(LORA_EXIT_USAGE, "%s", rc ? err.msg : "config: rank out of range");
	if (!rc && !given[OPT_RANK])
		o->p.rank = (int)iv;
	rc = lora_doc_get_int(ps, "seed", f, &iv, &err);
	if (rc == LORA_EFORMAT)
		lora_cli_die(LORA_EXIT_USAGE, "%s", err.msg);
	if (!rc && !given[OPT_SEED])
		o->p.seed = (uint64_t)iv;
	rc = lora_doc_get_string(ps, "sign", f, &s, &err);
	if (rc == LORA_EFORMAT)
		lora_cli_die(LORA_EXIT_USAGE, "%s", err.msg);
	if (!rc && !given[OPT_SIGN] && parse_sign(s, &o->p.sign_frequency))
		lora_cli_die(LORA_EXIT_USAGE, "%s: sign must be total or frequency, not '%s'", f, s);
}

/* meta.merge = {method, weights {name: w}, sources [names], params {...}}. */
static int build_meta(struct lora_adapter *out, const struct pool *pool, const double *w,
		      const struct lora_merge_params *p, const struct lora_weights *rec)
{
	struct lora_doc *meta = malloc(sizeof *meta);
	if (!meta)
		return LORA_ENOMEM;
	lora_doc_init_map(meta);
	struct lora_doc merge, weights, sources, params, v;
	lora_doc_init_map(&merge);
	lora_doc_init_map(&weights);
	lora_doc_init_array(&sources);
	lora_doc_init_map(&params);
	int rc = lora_doc_map_put_string(&merge, "method", lora_merge_method_name(p->method));
	for (size_t i = 0; i < pool->n && !rc; i++) {
		rc = lora_doc_map_put_double(&weights, pool->a[i].name, w[i]);
		if (!rc)
			rc = lora_doc_set_string(&v, pool->a[i].name, strlen(pool->a[i].name));
		if (!rc)
			rc = lora_doc_array_push(&sources, &v);
	}
	if (!rc && p->method != LORA_MERGE_LORAHUB && p->method != LORA_MERGE_LINEAR &&
	    p->method != LORA_MERGE_MEAN)
		rc = lora_doc_map_put_int(&params, "rank", p->rank);
	if (!rc && (p->method == LORA_MERGE_TIES || p->method == LORA_MERGE_DARE ||
		    p->method == LORA_MERGE_MAGNITUDE))
		rc = lora_doc_map_put_double(&params, "density", p->density);
	if (!rc && p->method == LORA_MERGE_TIES)
		rc = lora_doc_map_put_string(&params, "sign",
					     p->sign_frequency ? "frequency" : "total");
	if (!rc && p->method == LORA_MERGE_DARE)
		rc = lora_doc_map_put_int(&params, "seed", (int64_t)p->seed);
	if (!rc)
		rc = lora_doc_map_put(&merge, "weights", &weights);
	else
		lora_doc_clear(&weights);
	if (!rc)
		rc = lora_doc_map_put(&merge, "sources", &sources);
	else
		lora_doc_clear(&sources);
	if (!rc)
		rc = lora_doc_map_put(&merge, "params", &params);
	else
		lora_doc_clear(&params);
	if (!rc && rec && rec->has_id)
		rc = lora_doc_map_put_int(&merge, "id", rec->id);
	if (!rc && rec && !isnan(rec->loss))
		rc = lora_doc_map_put_double(&merge, "loss", rec->loss);
	if (!rc && rec && !isnan(rec->objective))
		rc = lora_doc_map_put_double(&merge, "objective", rec->objective);
	if (!rc)
		rc = lora_doc_map_put(meta, "merge", &merge);
	else
		lora_doc_clear(&merge);
	if (rc) {
		lora_doc_free(meta);
		return rc;
	}
	out->meta = meta;
	return 0;
}

static char *derive_name(const struct opts *o, enum lora_merge_method m,
			 const struct lora_weights *rec, size_t k)
{
	char buf[512];
	if (o->name && k == 1)
		snprintf(buf, sizeof buf, "%s", o->name);
	else if (o->name)
		snprintf(buf, sizeof buf, "%s-%zu", o->name, k);
	else if (rec && rec->has_id)
		snprintf(buf, sizeof buf, "merge-%s-%lld", lora_merge_method_name(m),
			 (long long)rec->id);
	else if (k > 1)
		snprintf(buf, sizeof buf, "merge-%s-%zu", lora_merge_method_name(m), k);
	else
		snprintf(buf, sizeof buf, "merge-%s", lora_merge_method_name(m));
	return strdup(buf);
}

/* Merge the pool with w[0..pool->n) and write the result. Returns 0, or 1
 * after printing an error. */
static int merge_one(struct opts *o, const struct pool *pool, const double *w,
		     const struct lora_weights *rec, const char *where, size_t k,
		     struct lora_writer *wr)
{
	struct lora_merge_params p = o->p;
	if (rec && rec->method && !o->have_method) {
		if (lora_merge_method_parse(rec->method, &p.method)) {
			lora_cli_warn("%s: unknown method '%s'", where, rec->method);
			return 1;
		}
	}
	const struct lora_adapter **pp = malloc((pool->n ? pool->n : 1) * sizeof *pp);
	if (!pp) {
		lora_cli_warn("out of memory");
		return 1;
	}
	for (size_t i = 0; i < pool->n; i++)
		pp[i] = &pool->a[i];
	struct lora_adapter out;
	struct lora_err err = { 0 };
	char *report = NULL;
	int rc = lora_merge(pp, pool->n, w, &p, &out, &report, &err);
	free(pp);
	if (rc) {
		if (rec)
			lora_cli_warn("%s: %s", where, err.msg);
		else
			lora_cli_warn("%s", err.msg);
		return 1;
	}
	/* Record the rank actually used (0 means each module's largest). */
	if (p.rank == 0 && (p.method == LORA_MERGE_SVD || p.method == LORA_MERGE_TIES ||
			    p.method == LORA_MERGE_DARE || p.method == LORA_MERGE_MAGNITUDE))
		p.rank = out.r;
	/* mean ignores w: record the weights it used. */
	double *used = malloc((pool->n ? pool->n : 1) * sizeof *used);
	for (size_t i = 0; used && i < pool->n; i++)
		used[i] = p.method == LORA_MERGE_MEAN ? 1.0 / (double)pool->n : w[i];
	char *name = derive_name(o, p.method, rec, k);
	if (!name || !used || build_meta(&out, pool, used, &p, rec)) {
		free(used);
		free(name);
		free(report);
		lora_adapter_free(&out);
		lora_cli_warn("out of memory");
		return 1;
	}
	free(used);
	free(out.name);
	out.name = name;
	if (report) {
		char *line = report, *nl;
		while ((nl = strchr(line, '\n'))) {
			*nl = '\0';
			lora_cli_warn("%s: %s", name, line);
			line = nl + 1;
		}
		free(report);
	}
	rc = lora_writer_put_adapter(wr, &out, &err);
	lora_adapter_free(&out);
	if (rc) {
		lora_cli_warn("%s", err.msg);
		return 1;
	}
	return 0;
}

/* Resolve a weights record (or the config's map) against the pool: unknown
 * names are errors, unnamed pool adapters get 0 and a warning. */
static double *resolve_named(const struct pool *pool, size_t n, char **names, const double *vals,
			     const char *where)
{
	double *w = calloc(pool->n ? pool->n : 1, sizeof *w);
	char *seen = calloc(pool->n ? pool->n : 1, 1);
	if (!w || !seen) {
		free(w);
		free(seen);
		lora_cli_warn("out of memory");
		return NULL;
	}
	for (size_t j = 0; j < n; j++) {
		size_t i;
		for (i = 0; i < pool->n; i++)
			if (!strcmp(pool->a[i].name, names[j]))
				break;
		if (i == pool->n) {
			lora_cli_warn("%s: adapter '%s' is not in the pool (%zu adapter%s read)",
				      where, names[j], pool->n, pool->n == 1 ? "" : "s");
			goto fail;
		}
		if (seen[i]) {
			lora_cli_warn("%s: adapter '%s' is named twice", where, names[j]);
			goto fail;
		}
		if (!isfinite(vals[j])) {
			lora_cli_warn("%s: weight of '%s' is not finite (%g)", where, names[j],
				      vals[j]);
			goto fail;
		}
		seen[i] = 1;
		w[i] = vals[j];
	}
	for (size_t i = 0; i < pool->n; i++)
		if (!seen[i])
			lora_cli_warn("%s: adapter '%s' is not named; its weight is 0", where,
				      pool->a[i].name);
	free(seen);
	return w;
fail:
	free(w);
	free(seen);
	return NULL;
}

int main(int argc, char **argv)
{
	lora_cli_init(argc, argv, true);
	struct opts o = { .p = lora_merge_default_params() };
	int given[OPT_MAX] = { 0 };
	int c;
	while ((c = getopt_long(argc, argv, "hvw:", long_options, NULL)) != -1) {
		switch (c) {
		case OPT_CONFIG:
			o.config = optarg;
			break;
		case OPT_DENSITY:
			o.p.density = lora_cli_double(optarg, "--density");
			if (!(o.p.density > 0 && o.p.density <= 1))
				lora_cli_usage_error("--density: %s is not in (0, 1]", optarg);
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case OPT_METHOD:
			if (lora_merge_method_parse(optarg, &o.p.method))
				lora_cli_usage_error("--method: unknown method '%s' (lorahub, linear, "
						     "svd, ties, dare, magnitude, mean)",
						     optarg);
			o.have_method = 1;
			break;
		case OPT_NAME:
			o.name = optarg;
			break;
		case OPT_RANK:
			o.p.rank = (int)lora_cli_int(optarg, "--rank", 1, 1 << 20);
			break;
		case OPT_SIGN:
			if (parse_sign(optarg, &o.p.sign_frequency))
				lora_cli_usage_error("--sign: '%s' is not total or frequency", optarg);
			break;
		case 'v':
			o.p.verbose = 1;
			break;
		case 'w':
			parse_weights(&o, optarg);
			break;
		case OPT_SEED:
			o.p.seed = (uint64_t)lora_cli_int(optarg, "--seed", 0, INT64_MAX);
			break;
		case OPT_VERSION:
			lora_cli_version();
		default:
			fputs("Try 'lora-merge --help'.\n", stderr);
			return LORA_EXIT_USAGE;
		}
		if (c >= 0 && c < OPT_MAX)
			given[c] = 1;
	}
	if (optind < argc)
		lora_cli_usage_error("unexpected argument '%s' (the stream comes on stdin)",
				     argv[optind]);
	if (o.config)
		load_config(&o, given);
	lora_cli_refuse_tty_stdout();

	struct lora_err err = { 0 };
	struct lora_reader *rd = NULL;
	struct lora_writer *wr = NULL;
	if (lora_reader_open(stdin, "-", &rd, &err) || lora_writer_open(stdout, "-", &wr, &err))
		lora_cli_die_err(&err);
	struct pool pool = { 0 };
	size_t merged = 0, n_weights = 0;
	int status = 0;
	for (;;) {
		struct lora_record rec;
		int rc = lora_reader_next(rd, &rec, &err);
		if (rc == 0)
			break;
		if (rc < 0) {
			lora_cli_warn("%s", err.msg);
			status = 1;
			break;
		}
		if (rec.kind == LORA_REC_ADAPTER) {
			if (pool.n == pool.cap) {
				size_t nc = pool.cap ? 2 * pool.cap : 16;
				struct lora_adapter *na = realloc(pool.a, nc * sizeof *na);
				if (!na) {
					lora_cli_warn("out of memory");
					lora_record_free(&rec);
					status = 1;
					break;
				}
				pool.a = na;
				pool.cap = nc;
			}
			pool.a[pool.n++] = rec.u.adapter;
			memset(&rec.u.adapter, 0, sizeof rec.u.adapter);
		} else if (rec.kind == LORA_REC_WEIGHTS) {
			n_weights++;
			char where[64];
			snprintf(where, sizeof where, "weights record %zu", rec.index);
			struct lora_weights *ws = &rec.u.weights;
			double *w = pool.n ? resolve_named(&pool, ws->n, ws->names, ws->w, where) : NULL;
			if (!pool.n)
				lora_cli_warn("%s: empty pool: no adapter record before it", where);
			if (!w || merge_one(&o, &pool, w, ws, where, ++merged, wr))
				status = 1;
			free(w);
		}
		lora_record_free(&rec);
		if (status)
			break;
	}
	if (!status && n_weights == 0) {
		/* No weights record: one merge from the options. */
		double *w = NULL;
		if (pool.n == 0) {
			lora_cli_warn("empty pool: the input has no adapter records");
			status = 1;
		} else if (o.w) {
			if (o.nw != pool.n) {
				lora_cli_warn("-w gives %zu weight%s but the pool has %zu adapter%s", o.nw,
					      o.nw == 1 ? "" : "s", pool.n, pool.n == 1 ? "" : "s");
				status = 1;
			} else {
				w = malloc(pool.n * sizeof *w);
				if (w)
					memcpy(w, o.w, pool.n * sizeof *w);
			}
		} else if (o.cfg_weights) {
			const struct lora_doc *cw = o.cfg_weights;
			double *vals = malloc((cw->u.map.n ? cw->u.map.n : 1) * sizeof *vals);
			for (size_t i = 0; vals && i < cw->u.map.n; i++)
				vals[i] = cw->u.map.vals[i].type == LORA_DOC_INT
						  ? (double)cw->u.map.vals[i].u.i
						  : cw->u.map.vals[i].u.f;
			if (vals)
				w = resolve_named(&pool, cw->u.map.n, cw->u.map.keys, vals, o.config);
			free(vals);
		} else if (o.p.method == LORA_MERGE_MEAN) {
			w = calloc(pool.n, sizeof *w);
		} else {
			lora_cli_warn("no weights: the stream has no weights record; give -w, "
				      "--config or --method mean");
			status = 1;
		}
		if (!status && !w)
			status = 1;
		if (!status && merge_one(&o, &pool, w, NULL, "-", ++merged, wr))
			status = 1;
		free(w);
	} else if (!status && (o.w || o.cfg_weights)) {
		lora_cli_warn("the stream has weights records; ignoring the weights of %s",
			      o.w ? "-w" : o.config);
	}
	lora_writer_close(wr);
	lora_reader_close(rd);
	for (size_t i = 0; i < pool.n; i++)
		lora_adapter_free(&pool.a[i]);
	free(pool.a);
	free(o.w);
	lora_doc_free(o.cfg);
	if (lora_cli_close_stdout())
		status = 1;
	return status;
}
