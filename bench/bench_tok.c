/*
 * bench_tok — tokenizer speed: time to load each real tokenizer.json
 * (GPT-2, T5, stories260K) and to encode 1000 BBH inputs with each, against
 * the project's targets (load < 0.5 s, 1000 inputs well under 1 s). One line
 * per tokenizer. Needs $LORA_SHARED (or ../shared/data); skips without it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "doc.h"
#include "tok.h"

#define N_TEXTS 1000

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time too: on a busy machine wall time overstates the cost. */
static double cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Collect up to N_TEXTS "input" strings from the BBH task files. */
static size_t load_inputs(const char *root, struct lora_doc **docs, size_t nd,
			  const struct lora_doc **texts)
{
	static const char *tasks[] = {
		"boolean_expressions", "date_understanding",   "navigate",
		"object_counting",     "sports_understanding", "word_sorting",
		"causal_judgement",    "disambiguation_qa",    "formal_fallacies",
		"geometric_shapes",    "hyperbaton",           "logical_deduction_five_objects",
	};
	size_t n = 0;
	for (size_t k = 0; k < sizeof tasks / sizeof tasks[0] && k < nd && n < N_TEXTS; k++) {
		char path[4096];
		struct lora_err err;
		snprintf(path, sizeof path, "%s/bbh/%s.json", root, tasks[k]);
		if (lora_doc_parse_file(path, &docs[k], &err))
			continue;
		const struct lora_doc *ex = lora_doc_get(docs[k], "examples");
		for (size_t i = 0;
		     ex && ex->type == LORA_DOC_ARRAY && i < ex->u.arr.n && n < N_TEXTS; i++) {
			const struct lora_doc *in = lora_doc_get(&ex->u.arr.items[i], "input");
			if (in && in->type == LORA_DOC_STRING)
				texts[n++] = in;
		}
	}
	return n;
}

int main(void)
{
	const char *root = getenv("LORA_SHARED");
	struct stat st;
	if (!root || !*root)
		root = "../shared/data";
	char probe[4096];
	snprintf(probe, sizeof probe, "%s/bbh", root);
	if (stat(probe, &st) != 0) {
		printf("bench_tok: skipped (no shared data at %s)\n", root);
		return 0;
	}
	struct lora_doc *docs[16] = {0};
	static const struct lora_doc *texts[N_TEXTS];
	size_t n = load_inputs(root, docs, 16, texts);
	static const char *dirs[] = {"gpt2-tokenizer", "t5-tokenizer", "stories260K-hf"};
	int status = 0;
	for (size_t k = 0; k < 3; k++) {
		char path[4096];
		struct lora_tok *t = NULL;
		struct lora_err err;
		snprintf(path, sizeof path, "%s/%s", root, dirs[k]);
		double c0 = cpu(), t0 = now();
		if (lora_tok_open(path, &t, &err)) {
			printf("bench_tok: %s\n", err.msg);
			status = 1;
			continue;
		}
		double t1 = now(), c1 = cpu();
		size_t ntok = 0;
		for (size_t i = 0; i < n; i++) {
			int32_t *ids;
			size_t m;
			if (lora_tok_encode(t, texts[i]->u.str.s, texts[i]->u.str.len, true, &ids,
					    &m, &err) == 0) {
				ntok += m;
				free(ids);
			}
		}
		double t2 = now(), c2 = cpu();
		printf("bench_tok %-15s load %.3f s wall %.3f s cpu (%.2fx the 0.5 s target), "
		       "encode %zu BBH inputs %.3f s wall %.3f s cpu = %.0f tokens/s (%.2fx the 1 "
		       "s "
		       "target)\n",
		       dirs[k], t1 - t0, c1 - c0, (t1 - t0) / 0.5, n, t2 - t1, c2 - c1,
		       (double)ntok / (t2 - t1), (t2 - t1) / 1.0);
		lora_tok_close(t);
	}
	for (size_t k = 0; k < 16; k++)
		lora_doc_free(docs[k]);
	return status;
}
