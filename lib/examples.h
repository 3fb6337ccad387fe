/*
 * examples — task examples (input/output text pairs) from a file, for
 * lora-eval.
 *
 * Formats, told apart by content:
 *   JSONL   one JSON object per line: {"input": .., "output": ..} or LoraHub's
 *           {"context": .., "completion": ..} (or {"input", "target"}); blank
 *           lines are skipped; other keys (e.g. "task") are ignored.
 *   YAML    a list of such maps (a JSON array of them is also YAML).
 *   BBH     BIG-Bench Hard's own task file: {"examples": [{"input", "target"}]}.
 * A file whose first non-blank line is a complete JSON object is JSONL;
 * anything else is parsed as one JSON/YAML document. Values must be strings
 * (YAML integers are taken as their decimal text). Errors read
 * "file:line: message".
 */
#ifndef LORA_EXAMPLES_H
#define LORA_EXAMPLES_H

#include <stddef.h>

#include "err.h"

struct lora_example {
	char *input;
	char *output;
	int line;	/* 1-based line where the example starts */
};

struct lora_examples {
	size_t n;
	struct lora_example *items;
};

/* Load every example of path into *out (caller frees with
 * lora_examples_free). An empty file or list is an error (LORA_EFORMAT),
 * as is a missing or non-string input/output, naming file:line. */
int lora_examples_load(const char *path, struct lora_examples *out, struct lora_err *err);
void lora_examples_free(struct lora_examples *ex);

#endif
