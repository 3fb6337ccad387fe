/*
 * lora-train — train one LoRA module on a set of examples and write it as an
 * adapter record (see lora-train(1), lora-stream(5)).
 *
 * The loss is lora-eval's: for each example, the model reads the input
 * (with the tokenizer's BOS) followed by the output (no special tokens) and
 * EOS, and the mean cross-entropy over the output and EOS tokens of a batch is
 * minimised with AdamW. Only Llama-family models (llama, mistral, qwen2).
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "doc.h"
#include "examples.h"
#include "model.h"
#include "stream.h"
#include "tok.h"
#include "train.h"

static const char usage_text[] =
	"usage: lora-train -m MODEL -d EXAMPLES [options] > adapter.lora\n"
	"Train one LoRA module on EXAMPLES and write it as an adapter record.\n"
	"\n"
	"  -m, --model DIR         Hugging Face model directory (Llama family)\n"
	"  -d, --data FILE         examples: JSONL {input, output} (or {context,\n"
	"                          completion}), a YAML list, or BBH's JSON\n"
	"  -r, --rank N            LoRA rank (default 8)\n"
	"  -a, --alpha X           LoRA alpha (default 2 x rank)\n"
	"  -t, --targets LIST      modules to adapt, comma-separated: q_proj, k_proj,\n"
	"                          v_proj, o_proj, gate_proj, up_proj, down_proj, all\n"
	"                          (default q_proj,v_proj)\n"
	"      --lr X              AdamW learning rate (default 1e-3)\n"
	"      --steps N           optimizer steps (default: from --epochs)\n"
	"      --epochs N          passes over the examples (default 3)\n"
	"  -b, --batch N           examples per step (default 8)\n"
	"      --weight-decay X    AdamW decoupled weight decay (default 0)\n"
	"  -s, --seed N            seed of the initialisation and the shuffling (default 0)\n"
	"  -n, --name NAME         adapter name (default: the examples file's base name)\n"
	"  -q, --quiet             no progress on stderr\n"
	"  -h, --help              show this help and exit\n"
	"      --version           show the version and exit\n";

enum { OPT_LR = 256, OPT_STEPS, OPT_EPOCHS, OPT_WD, OPT_VERSION };

static const struct option long_opts[] = {
	{ "alpha", required_argument, NULL, 'a' },
	{ "batch", required_argument, NULL, 'b' },
	{ "data", required_argument, NULL, 'd' },
	{ "epochs", required_argument, NULL, OPT_EPOCHS },
	{ "help", no_argument, NULL, 'h' },
	{ "lr", required_argument, NULL, OPT_LR },
	{ "model", required_argument, NULL, 'm' },
	{ "name", required_argument, NULL, 'n' },
	{ "quiet", no_argument, NULL, 'q' },
	{ "rank", required_argument, NULL, 'r' },
	{ "seed", required_argument, NULL, 's' },
	{ "steps", required_argument, NULL, OPT_STEPS },
	{ "targets", required_argument, NULL, 't' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ "weight-decay", required_argument, NULL, OPT_WD },
	{ NULL, 0, NULL, 0 },
};

/* lora-eval's decoder-only convention: tok(input) with BOS, tok(output)
 * without special tokens, then EOS. */
static int tokenize(struct lora_model *m, const struct lora_examples *ex, const char *path,
		    struct lora_seq *seqs, int32_t **bufs, struct lora_err *err)
{
	const struct lora_tok *tok = lora_model_tok(m);
	const struct lora_model_info *info = lora_model_info(m);
	for (size_t i = 0; i < ex->n; i++) {
		int32_t *a = NULL, *b = NULL;
		size_t na = 0, nb = 0;
		const struct lora_example *e = &ex->items[i];
		int r = lora_tok_encode(tok, e->input, strlen(e->input), true, &a, &na, err);
		if (!r)
			r = lora_tok_encode(tok, e->output, strlen(e->output), false, &b, &nb, err);
		if (r) {
			free(a);
			free(b);
			return lora_err_prefix(err, r, "%s:%d: ", path, e->line);
		}
		int32_t *all = malloc((na + nb + 1) * sizeof *all);
		if (!all) {
			free(a);
			free(b);
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		}
		if (na)
			memcpy(all, a, na * sizeof *all);
		if (nb)
			memcpy(all + na, b, nb * sizeof *all);
		size_t nt = nb;
		if (info->eos >= 0)
			all[na + nt++] = info->eos;
		free(a);
		free(b);
		bufs[i] = all;
		if (na == 0 || nt == 0) {
			return lora_errf(err, LORA_EFORMAT, "%s:%d: empty %s", path, e->line,
					 na == 0 ? "input" : "output");
		}
		seqs[i] = (struct lora_seq){ all, na, all + na, nt };
	}
	return 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static char *default_name(const char *path)
{
	const char *b = strrchr(path, '/');
	b = b ? b + 1 : path;
	char *s = strdup(*b && strcmp(b, "-") ? b : "lora-train");
	if (!s)
		return NULL;
	char *dot = strrchr(s, '.');
	if (dot && dot != s)
		*dot = '\0';
	return s;
}

/* meta: the PEFT adapter_config.json that unpacking should write, and the
 * training run's settings. */
static int build_meta(struct lora_adapter *a, const struct lora_train_params *p,
		      const char *model, const char *data, long steps, int batch,
		      double loss0, double loss)
{
	struct lora_doc *meta = calloc(1, sizeof *meta);
	if (!meta)
		return LORA_ENOMEM;
	lora_doc_init_map(meta);
	struct lora_doc cfg, tm, v, tr;
	int rc = 0;
	lora_doc_init_map(&cfg);
	lora_doc_init_array(&tm);
	for (int k = 0; k < LORA_T_COUNT; k++) {
		if (!(p->targets & (1u << k)))
			continue;
		const char *n = lora_train_target_name(k);
		rc |= lora_doc_set_string(&v, n, strlen(n));
		rc |= lora_doc_array_push(&tm, &v);
	}
	lora_doc_init_map(&v);
	rc |= lora_doc_map_put(&cfg, "alpha_pattern", &v);
	rc |= lora_doc_map_put_string(&cfg, "base_model_name_or_path", model);
	rc |= lora_doc_map_put_string(&cfg, "bias", "none");
	rc |= lora_doc_map_put_bool(&cfg, "fan_in_fan_out", false);
	rc |= lora_doc_map_put_bool(&cfg, "inference_mode", true);
	rc |= lora_doc_map_put_bool(&cfg, "init_lora_weights", true);
	rc |= lora_doc_map_put_double(&cfg, "lora_alpha", a->alpha);
	rc |= lora_doc_map_put_double(&cfg, "lora_dropout", 0.0);
	memset(&v, 0, sizeof v);
	rc |= lora_doc_map_put(&cfg, "modules_to_save", &v);
	rc |= lora_doc_map_put_string(&cfg, "peft_type", "LORA");
	rc |= lora_doc_map_put_int(&cfg, "r", a->r);
	lora_doc_init_map(&v);
	rc |= lora_doc_map_put(&cfg, "rank_pattern", &v);
	rc |= lora_doc_map_put(&cfg, "target_modules", &tm);
	rc |= lora_doc_map_put_string(&cfg, "task_type", "CAUSAL_LM");
	rc |= lora_doc_map_put_bool(&cfg, "use_dora", false);
	rc |= lora_doc_map_put_bool(&cfg, "use_rslora", false);
	rc |= lora_doc_map_put(meta, "config", &cfg);
	lora_doc_init_map(&tr);
	rc |= lora_doc_map_put_string(&tr, "model", model);
	rc |= lora_doc_map_put_string(&tr, "data", data);
	rc |= lora_doc_map_put_double(&tr, "lr", p->lr);
	rc |= lora_doc_map_put_double(&tr, "weight_decay", p->weight_decay);
	rc |= lora_doc_map_put_int(&tr, "steps", steps);
	rc |= lora_doc_map_put_int(&tr, "batch", batch);
	rc |= lora_doc_map_put_int(&tr, "seed", (int64_t)p->seed);
	rc |= lora_doc_map_put_double(&tr, "loss_start", loss0);
	rc |= lora_doc_map_put_double(&tr, "loss_end", loss);
	rc |= lora_doc_map_put_string(&tr, "version", LORA_VERSION);
	rc |= lora_doc_map_put(meta, "lora_train", &tr);
	a->meta = meta;
	return rc ? LORA_ENOMEM : 0;
}

int main(int argc, char **argv)
{
	lora_cli_init(argc, argv, true);
	const char *model = NULL, *data = NULL, *name = NULL;
	struct lora_train_params p = lora_train_default_params();
	long steps = 0, epochs = 3;
	int batch = 8, quiet = 0;
	bool have_steps = false, have_epochs = false;
	struct lora_err err = { 0 };
	int c;
	while ((c = getopt_long(argc, argv, "a:b:d:hm:n:qr:s:t:", long_opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			p.alpha = lora_cli_double(optarg, "--alpha");
			if (!(p.alpha > 0) || !isfinite(p.alpha))
				lora_cli_usage_error("--alpha: must be positive");
			break;
		case 'b':
			batch = (int)lora_cli_int(optarg, "--batch", 1, 1 << 20);
			break;
		case 'd':
			data = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case 'm':
			model = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'q':
			quiet = 1;
			break;
		case 'r':
			p.rank = (int)lora_cli_int(optarg, "--rank", 1, 65536);
			break;
		case 's':
			p.seed = (uint64_t)lora_cli_int(optarg, "--seed", 0, INT64_MAX);
			break;
		case 't':
			if (lora_train_targets_parse(optarg, &p.targets, &err))
				lora_cli_usage_error("--targets: %s", err.msg);
			break;
		case OPT_LR:
			p.lr = lora_cli_double(optarg, "--lr");
			if (!(p.lr > 0) || !isfinite(p.lr))
				lora_cli_usage_error("--lr: must be positive");
			break;
		case OPT_STEPS:
			steps = (long)lora_cli_int(optarg, "--steps", 0, 1L << 40);
			have_steps = true;
			break;
		case OPT_EPOCHS:
			epochs = (long)lora_cli_int(optarg, "--epochs", 0, 1L << 30);
			have_epochs = true;
			break;
		case OPT_WD:
			p.weight_decay = lora_cli_double(optarg, "--weight-decay");
			if (!(p.weight_decay >= 0) || !isfinite(p.weight_decay))
				lora_cli_usage_error("--weight-decay: must be >= 0");
			break;
		case OPT_VERSION:
			lora_cli_version();
		default:
			lora_cli_usage_error("unknown option");
		}
	}
	if (optind < argc)
		lora_cli_usage_error("unexpected argument '%s'", argv[optind]);
	if (!model)
		lora_cli_usage_error("no model given (-m MODEL)");
	if (!data)
		lora_cli_usage_error("no examples given (-d EXAMPLES)");
	if (have_steps && have_epochs)
		lora_cli_usage_error("give --steps or --epochs, not both");
	if (!(p.alpha > 0))
		p.alpha = 2.0 * p.rank;
	lora_cli_refuse_tty_stdout();

	struct lora_examples ex = { 0 };
	if (lora_examples_load(data, &ex, &err))
		lora_cli_die_err(&err);
	struct lora_model *m = NULL;
	if (lora_model_open(model, &m, &err))
		lora_cli_die_err(&err);
	struct lora_train *tr = NULL;
	if (lora_train_new_from_model(m, &p, &tr, &err))
		lora_cli_die(LORA_EXIT_FAIL, "%s: %s", model, err.msg);
	size_t n = ex.n;
	struct lora_seq *seqs = calloc(n, sizeof *seqs), *bseq = calloc(n, sizeof *bseq);
	int32_t **bufs = calloc(n, sizeof *bufs);
	size_t *order = calloc(n, sizeof *order);
	if (!seqs || !bseq || !bufs || !order)
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	if (tokenize(m, &ex, data, seqs, bufs, &err))
		lora_cli_die_err(&err);
	if ((size_t)batch > n)
		batch = (int)n;
	long per_epoch = (long)((n + batch - 1) / batch);
	if (!have_steps)
		steps = epochs * per_epoch;

	/* the starting loss over every example (B = 0: the base model's) */
	double loss0, loss;
	size_t ntok;
	if (lora_train_forward(tr, seqs, n, false, &loss0, &ntok, NULL, &err))
		lora_cli_die_err(&err);
	if (!quiet)
		fprintf(stderr, "%s: %zu examples, %zu target tokens, %zu parameters, %ld steps "
			"of %d; loss %.4f\n", lora_prog, n, ntok, lora_train_n_params(tr), steps,
			batch, loss0);
	/* shuffle each epoch with its own stream (the init used p.seed) */
	uint64_t rng = p.seed ^ 0x5851f42d4c957f2dULL;
	size_t pos = n;
	double t0 = now(), tlast = t0, rows = 0, run = 0;
	long every = steps > 20 ? steps / 20 : 1, since = 0;
	for (long s = 1; s <= steps; s++) {
		int nb = 0;
		for (; nb < batch; nb++) {
			if (pos == n) {
				if (nb > 0)
					break;	/* the epoch's last batch may be short */
				for (size_t i = 0; i < n; i++)
					order[i] = i;
				for (size_t i = n - 1; i > 0; i--) {
					size_t j = (size_t)(splitmix(&rng) % (i + 1));
					size_t tmp = order[i];
					order[i] = order[j];
					order[j] = tmp;
				}
				pos = 0;
			}
			bseq[nb] = seqs[order[pos++]];
		}
		size_t tk;
		if (lora_train_step(tr, bseq, (size_t)nb, &loss, &tk, &err))
			lora_cli_die_err(&err);
		for (int i = 0; i < nb; i++)
			rows += (double)(bseq[i].n_input + bseq[i].n_target - 1);
		run += loss;
		since++;
		if (!quiet && (s % every == 0 || s == steps)) {
			double t = now();
			fprintf(stderr, "step %6ld/%ld  loss %.4f  %.0f tok/s\n", s, steps,
				run / since, rows / (t - tlast > 1e-9 ? t - tlast : 1e-9));
			tlast = t;
			rows = 0;
			run = 0;
			since = 0;
		}
	}
	if (lora_train_forward(tr, seqs, n, false, &loss, &ntok, NULL, &err))
		lora_cli_die_err(&err);
	if (!quiet)
		fprintf(stderr, "%s: loss %.4f -> %.4f on the %zu examples (%.2f s)\n", lora_prog,
			loss0, loss, n, now() - t0);

	char *nm = name ? strdup(name) : default_name(data);
	struct lora_adapter ad;
	if (!nm || lora_train_adapter(tr, nm, model, &ad, &err))
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	if (build_meta(&ad, &p, model, data, steps, batch, loss0, loss))
		lora_cli_die(LORA_EXIT_FAIL, "out of memory");
	struct lora_writer *w = NULL;
	if (lora_writer_open(stdout, "-", &w, &err) || lora_writer_put_adapter(w, &ad, &err))
		lora_cli_die_err(&err);
	lora_writer_close(w);
	int rc = lora_cli_close_stdout();
	lora_adapter_free(&ad);
	free(nm);
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
	free(bufs);
	free(seqs);
	free(bseq);
	free(order);
	lora_train_free(tr);
	lora_model_close(m);
	lora_examples_free(&ex);
	return rc ? LORA_EXIT_FAIL : 0;
}
