/*
 * fuzz_doc — libFuzzer harness for the JSON/YAML parser and the JSON writer
 * (lib/doc.c).
 *
 * Properties checked beyond "no crash, no leak, every refusal has a
 * message": whatever parses is written as JSON (pretty or compact, chosen
 * from the input size), that JSON must parse again, a clone writes the same
 * bytes, and writing the re-parsed tree compactly, parsing that and writing
 * it again gives the same bytes (write∘parse is idempotent after one round).
 * Build with `make fuzz`; run as
 *   build-fuzz/fuzz/fuzz_doc -max_total_time=180 corpus/
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *to_json(const struct lora_doc *d, int indent, size_t *len)
{
	char *buf = NULL;
	*len = 0;
	FILE *f = open_memstream(&buf, len);
	if (!f)
		abort();
	lora_doc_write_json(f, d, indent);
	fclose(f);
	return buf;
}

static struct lora_doc *must_parse(const char *s, size_t n, const char *what)
{
	struct lora_doc *d = NULL;
	struct lora_err err;
	if (lora_doc_parse_buffer(s, n, what, 1, &d, &err) < 0) {
		fprintf(stderr, "%s does not parse: %s\n%.*s\n", what, err.msg, (int)n, s);
		abort();
	}
	return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lora_doc *d = NULL;
	struct lora_err err;
	err.msg[0] = '\0';
	if (lora_doc_parse_buffer((const char *)data, size, "fuzz", 1, &d, &err) < 0) {
		if (err.msg[0] == '\0')
			abort();	/* every refusal carries a message */
		return 0;
	}
	size_t l1, l2, l3, l4;
	char *j1 = to_json(d, (int)(size % 3), &l1);
	struct lora_doc *e = must_parse(j1, l1, "written JSON");
	struct lora_doc *c = lora_doc_clone(e);
	char *j2 = to_json(e, 0, &l2), *j3 = to_json(c, 0, &l3);
	if (l2 != l3 || memcmp(j2, j3, l2) != 0)
		abort();	/* a clone writes the same */
	struct lora_doc *g = must_parse(j2, l2, "compact JSON");
	char *j4 = to_json(g, 0, &l4);
	if (l2 != l4 || memcmp(j2, j4, l2) != 0) {
		fprintf(stderr, "not idempotent:\n%s\n%s\n", j2, j4);
		abort();
	}
	free(j1);
	free(j2);
	free(j3);
	free(j4);
	lora_doc_free(g);
	lora_doc_free(c);
	lora_doc_free(e);
	lora_doc_free(d);
	return 0;
}
