/*
 * lora-eval — score a base model with adapters from a stream on examples.
 *
 * Reads a stream on stdin (lora-stream(5)); adapter records accumulate into
 * a pool. Each weights record is merged with the pool (its `method`, default
 * the LoraHub rule, via lib/merge), attached unmerged and scored at once: one
 * score record (echoing the id) is written and flushed before the next record
 * is read, so lora-cmaes can drive lora-eval as a coprocess. With no weights
 * record, each adapter is scored alone at the end of the stream; an empty
 * stream (or stdin on a terminal) scores the base model. The model and the
 * tokenized examples are loaded once. See lora-eval(1) for the loss, the
 * scoring rules and the metric.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bf16.h"
#include "cli.h"
#include "eval.h"
#include "examples.h"
#include "merge.h"
#include "model.h"
#include "stream.h"

static const char usage_text[] =
	"usage: lora-eval -m MODEL -d EXAMPLES [-g] [--max-new-tokens N] [--predictions FILE]\n"
	"                 [--icl K] [--demos FILE] [--max-examples N] [--bf16] [-v] [-q]\n"
	"                 < stream > scores\n"
	"\n"
	"Score the base model MODEL with each candidate in the input stream on EXAMPLES:\n"
	"one score record per weights record (the pool merged with those weights), or\n"
	"per adapter when there is no weights record, or the base model alone when the\n"
	"stream is empty. loss = mean token cross-entropy of the outputs.\n"
	"\n"
	"  -m, --model DIR          Hugging Face model directory (t5, llama, mistral, qwen2, gpt2)\n"
	"  -d, --data FILE          examples: JSONL {input,output}, YAML list, or BBH JSON\n"
	"  -g, --generate           also decode greedily and report exact-match accuracy\n"
	"      --max-new-tokens N   generation length limit (default 32)\n"
	"      --predictions FILE   write every prediction as a JSONL line to FILE\n"
	"      --icl K              put K demonstrations before each input\n"
	"      --demos FILE         take the demonstrations from FILE (default: EXAMPLES)\n"
	"      --max-examples N     use only the first N examples\n"
	"      --bf16               Linear products in bf16 (faster, less exact; AVX512-BF16)\n"
	"  -v, --verbose            a readable line per score on stderr\n"
	"  -q, --quiet              no progress display\n"
	"  -h, --help               show this help\n"
	"      --version            show the version\n";

enum { OPT_MAX_NEW = 256, OPT_PREDICTIONS, OPT_ICL, OPT_DEMOS, OPT_MAX_EXAMPLES, OPT_VERSION,
       OPT_BF16 };

static const struct option long_options[] = {
	{ "model", required_argument, NULL, 'm' },
	{ "data", required_argument, NULL, 'd' },
	{ "generate", no_argument, NULL, 'g' },
	{ "max-new-tokens", required_argument, NULL, OPT_MAX_NEW },
	{ "predictions", required_argument, NULL, OPT_PREDICTIONS },
	{ "icl", required_argument, NULL, OPT_ICL },
	{ "demos", required_argument, NULL, OPT_DEMOS },
	{ "max-examples", required_argument, NULL, OPT_MAX_EXAMPLES },
	{ "bf16", no_argument, NULL, OPT_BF16 },
	{ "verbose", no_argument, NULL, 'v' },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

struct ctx {
	struct lora_model *m;
	struct lora_examples ex;
	struct lora_eval *ev;
	struct lora_writer *w;
	const char *data;
	int verbose, quiet;
	bool generate;
	FILE *pred;		/* --predictions temporary file, or NULL */
	char *pred_tmp;
	const char *pred_path;
	size_t n_scores;
};

static void progress(void *vctx, size_t done, size_t total)
{
	(void)vctx;
	fprintf(stderr, "\r%s: generating %zu/%zu", lora_prog, done, total);
	if (done == total)
		fputs("\r\033[K", stderr);
	fflush(stderr);
}

static void write_predictions(struct ctx *c, const struct lora_score *s)
{
	for (size_t k = 0; k < s->n_predictions; k++) {
		const struct lora_example *x = &c->ex.items[k];
		fputc('{', c->pred);
		if (s->has_id)
			fprintf(c->pred, "\"id\": %lld, ", (long long)s->id);
		if (s->name) {
			fputs("\"name\": ", c->pred);
			lora_json_write_string(c->pred, s->name, strlen(s->name));
			fputs(", ", c->pred);
		}
		fprintf(c->pred, "\"index\": %zu, \"input\": ", k);
		lora_json_write_string(c->pred, x->input, strlen(x->input));
		fputs(", \"output\": ", c->pred);
		lora_json_write_string(c->pred, x->output, strlen(x->output));
		fputs(", \"prediction\": ", c->pred);
		lora_json_write_string(c->pred, s->predictions[k], strlen(s->predictions[k]));
		fprintf(c->pred, ", \"correct\": %s}\n",
			lora_eval_match(s->predictions[k], x->output) ? "true" : "false");
	}
}

/* Score the model as it stands now and write one score record. */
static void score(struct ctx *c, bool has_id, int64_t id, const char *name)
{
	struct lora_err err = {0};
	struct lora_score s;
	if (lora_eval_run(c->ev, &s, &err) < 0)
		lora_cli_die_err(&err);
	s.has_id = has_id;
	s.id = id;
	s.name = name ? strdup(name) : NULL;
	if (c->pred)
		write_predictions(c, &s);
	if (lora_writer_put_score(c->w, &s, &err) < 0)
		lora_cli_die_err(&err);
	if (c->verbose) {
		fprintf(stderr, "%s: ", lora_prog);
		if (has_id)
			fprintf(stderr, "id %lld ", (long long)id);
		fprintf(stderr, "%s: loss %.6f over %lld tokens of %lld examples", name ? name : "base",
			s.loss, (long long)s.tokens, (long long)s.examples);
		if (s.has_accuracy)
			fprintf(stderr, ", accuracy %.4f", s.accuracy);
		fputc('\n', stderr);
	}
	c->n_scores++;
	lora_score_free(&s);
}

struct pool {
	struct lora_adapter *a;
	size_t n, cap;
};

static void pool_free(struct pool *p)
{
	for (size_t i = 0; i < p->n; i++)
		lora_adapter_free(&p->a[i]);
	free(p->a);
}

/* A weights record: merge the pool with its weights, attach, score. */
static void score_weights(struct ctx *c, struct pool *pool, const struct lora_record *rec)
{
	const struct lora_weights *ws = &rec->u.weights;
	struct lora_err err = {0};
	const struct lora_adapter **pp = calloc(ws->n ? ws->n : 1, sizeof *pp);
	if (!pp)
		lora_cli_die(1, "out of memory");
	for (size_t i = 0; i < ws->n; i++) {
		for (size_t j = 0; j < pool->n && !pp[i]; j++)
			if (strcmp(pool->a[j].name, ws->names[i]) == 0)
				pp[i] = &pool->a[j];
		if (!pp[i])
			lora_cli_die(1, "record %zu: weights name '%s' is not an adapter of the pool",
				     rec->index, ws->names[i]);
	}
	struct lora_merge_params mp = lora_merge_default_params();
	mp.method = LORA_MERGE_LORAHUB;
	if (ws->method && lora_merge_method_parse(ws->method, &mp.method) < 0)
		lora_cli_die(1, "record %zu: unknown merge method '%s'", rec->index, ws->method);
	struct lora_adapter merged;
	memset(&merged, 0, sizeof merged);
	if (ws->n == 0) {
		if (lora_model_set_adapter(c->m, NULL, &err) < 0)
			lora_cli_die_err(&err);
	} else {
		if (lora_merge(pp, ws->n, ws->w, &mp, &merged, NULL, &err) < 0) {
			lora_err_prefix(&err, err.code, "record %zu: ", rec->index);
			lora_cli_die_err(&err);
		}
		if (lora_model_set_adapter(c->m, &merged, &err) < 0)
			lora_cli_die_err(&err);
	}
	score(c, ws->has_id, ws->id, NULL);
	lora_model_set_adapter(c->m, NULL, NULL);
	lora_adapter_free(&merged);
	free(pp);
}

static void open_predictions(struct ctx *c, const char *path)
{
	size_t n = strlen(path) + 32;
	c->pred_tmp = malloc(n);
	if (!c->pred_tmp)
		lora_cli_die(1, "out of memory");
	snprintf(c->pred_tmp, n, "%s.tmp%ld", path, (long)getpid());
	if (!(c->pred = fopen(c->pred_tmp, "w")))
		lora_cli_die(1, "cannot create '%s': %s", c->pred_tmp, strerror(errno));
	c->pred_path = path;
}

static struct ctx *cleanup_ctx;

static void remove_tmp(void)
{
	if (cleanup_ctx && cleanup_ctx->pred) {
		fclose(cleanup_ctx->pred);
		cleanup_ctx->pred = NULL;
		unlink(cleanup_ctx->pred_tmp);
	}
}

int main(int argc, char **argv)
{
	lora_cli_init(argc, argv, true);
	struct ctx c = {0};
	struct lora_eval_params ep = lora_eval_default_params();
	const char *model = NULL, *demos_path = NULL, *pred_path = NULL;
	long long max_examples = 0;
	bool bf16 = false;
	int opt;
	while ((opt = getopt_long(argc, argv, "d:ghm:qv", long_options, NULL)) != -1) {
		switch (opt) {
		case OPT_BF16:
			bf16 = true;
			break;
		case 'd':
			c.data = optarg;
			break;
		case OPT_DEMOS:
			demos_path = optarg;
			break;
		case 'g':
			ep.generate = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case OPT_ICL:
			ep.icl = (int)lora_cli_int(optarg, "--icl", 0, 1000000);
			break;
		case 'm':
			model = optarg;
			break;
		case OPT_MAX_EXAMPLES:
			max_examples = lora_cli_int(optarg, "--max-examples", 1, 1LL << 40);
			break;
		case OPT_MAX_NEW:
			ep.max_new_tokens = (size_t)lora_cli_int(optarg, "--max-new-tokens", 1, 1 << 20);
			break;
		case OPT_PREDICTIONS:
			pred_path = optarg;
			break;
		case 'q':
			c.quiet = 1;
			break;
		case 'v':
			c.verbose = 1;
			break;
		case OPT_VERSION:
			lora_cli_version();
		default:
			fprintf(stderr, "Try '%s --help'.\n", lora_prog);
			return LORA_EXIT_USAGE;
		}
	}
	if (optind < argc)
		lora_cli_usage_error("unexpected argument '%s'", argv[optind]);
	if (!model)
		lora_cli_usage_error("no model: give -m MODEL");
	if (!c.data)
		lora_cli_usage_error("no examples: give -d EXAMPLES");
	if (pred_path && !ep.generate)
		lora_cli_usage_error("--predictions needs --generate");
	if (demos_path && ep.icl == 0)
		lora_cli_usage_error("--demos needs --icl K");
	lora_cli_refuse_tty_stdout();
	if (bf16 && !lora_bf16_supported())
		lora_cli_die(1, "--bf16 needs a CPU with AVX512-BF16, which this one lacks");

	struct lora_err err = {0};
	struct lora_examples demos = {0};
	if (lora_examples_load(c.data, &c.ex, &err) < 0)
		lora_cli_die_err(&err);
	if (max_examples > 0 && (size_t)max_examples < c.ex.n) {
		for (size_t i = (size_t)max_examples; i < c.ex.n; i++) {
			free(c.ex.items[i].input);
			free(c.ex.items[i].output);
		}
		c.ex.n = (size_t)max_examples;
	}
	if (demos_path) {
		if (lora_examples_load(demos_path, &demos, &err) < 0)
			lora_cli_die_err(&err);
		ep.demos = &demos;
	}
	if (lora_model_open(model, &c.m, &err) < 0)
		lora_cli_die_err(&err);
	if (bf16 && lora_model_set_bf16(c.m, true, &err) < 0)
		lora_cli_die_err(&err);
	c.generate = ep.generate;
	if (ep.generate && !c.quiet && isatty(STDERR_FILENO))
		ep.progress = progress;
	if (lora_eval_new(c.m, &c.ex, c.data, &ep, &c.ev, &err) < 0)
		lora_cli_die_err(&err);
	if (pred_path) {
		open_predictions(&c, pred_path);
		cleanup_ctx = &c;
		atexit(remove_tmp);
	}
	if (lora_writer_open(stdout, "-", &c.w, &err) < 0)
		lora_cli_die_err(&err);

	struct pool pool = {0};
	size_t n_weights = 0;
	struct lora_reader *r = NULL;
	if (!isatty(STDIN_FILENO)) {
		/* lib/stream reads a pipe with read(2), never ahead of what
		 * has arrived, so each weights record is scored as it comes */
		if (lora_reader_open(stdin, "-", &r, &err) < 0)
			lora_cli_die_err(&err);
		for (;;) {
			struct lora_record rec;
			int rc = lora_reader_next(r, &rec, &err);
			if (rc < 0)
				lora_cli_die_err(&err);
			if (rc == 0)
				break;
			if (rec.kind == LORA_REC_ADAPTER) {
				/* check it fits the model now, not at its first use */
				if (lora_model_set_adapter(c.m, &rec.u.adapter, &err) < 0) {
					lora_err_prefix(&err, err.code, "record %zu: ", rec.index);
					lora_cli_die_err(&err);
				}
				lora_model_set_adapter(c.m, NULL, NULL);
				if (pool.n == pool.cap) {
					pool.cap = pool.cap ? 2 * pool.cap : 16;
					pool.a = realloc(pool.a, pool.cap * sizeof *pool.a);
					if (!pool.a)
						lora_cli_die(1, "out of memory");
				}
				pool.a[pool.n++] = rec.u.adapter;	/* moved into the pool */
				memset(&rec.u.adapter, 0, sizeof rec.u.adapter);
			} else if (rec.kind == LORA_REC_WEIGHTS) {
				n_weights++;
				score_weights(&c, &pool, &rec);
			}
			lora_record_free(&rec);
		}
	}
	if (n_weights == 0) {
		if (pool.n == 0) {
			score(&c, false, 0, NULL);
		} else {
			for (size_t i = 0; i < pool.n; i++) {
				if (lora_model_set_adapter(c.m, &pool.a[i], &err) < 0)
					lora_cli_die_err(&err);
				score(&c, false, 0, pool.a[i].name);
			}
			lora_model_set_adapter(c.m, NULL, NULL);
		}
	}
	int status = 0;
	if (c.pred) {
		int bad = ferror(c.pred);
		bad |= fclose(c.pred) != 0;
		c.pred = NULL;
		if (bad || rename(c.pred_tmp, c.pred_path) != 0) {
			lora_cli_warn("cannot write '%s': %s", c.pred_path, strerror(errno));
			unlink(c.pred_tmp);
			status = 1;
		}
	}
	cleanup_ctx = NULL;	/* c dies with main's frame, before atexit runs */
	lora_reader_close(r);
	lora_writer_close(c.w);
	pool_free(&pool);
	lora_eval_free(c.ev);
	lora_model_close(c.m);
	lora_examples_free(&c.ex);
	lora_examples_free(&demos);
	free(c.pred_tmp);
	if (lora_cli_close_stdout())
		status = 1;
	return status;
}
