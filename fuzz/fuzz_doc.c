/*
 * fuzz_doc — libFuzzer harness for the JSON/YAML parser and the JSON writer
 * (lib/doc.c).
 *
 * Property checked beyond "no crash, no leak": whatever parses is written as
 * JSON, that JSON must parse again, and writing it a second time must give
 * the same bytes (write∘parse is idempotent after one round). Build with
 * `make fuzz`; run as build-fuzz/fuzz/fuzz_doc -max_total_time=180 corpus/
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *to_json(const struct lora_doc *d, size_t *len)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	if (!f)
		abort();
	lora_doc_write_json(f, d, (int)(*len % 3));
	fclose(f);
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lora_doc *d = NULL, *e = NULL;
	struct lora_err err;
	err.msg[0] = '\0';
	if (lora_doc_parse_buffer((const char *)data, size, "fuzz", 1, &d, &err) < 0) {
		if (err.msg[0] == '\0')
			abort();
		return 0;
	}
	size_t l1 = 0, l2 = 0;
	char *j1 = to_json(d, &l1);
	if (lora_doc_parse_buffer(j1, l1, "json", 1, &e, &err) < 0) {
		fprintf(stderr, "written JSON does not parse: %s\n%s\n", err.msg, j1);
		abort();
	}
	struct lora_doc *c = lora_doc_clone(e);
	l2 = 0;
	char *j2 = to_json(c, &l2);
	size_t l3 = 0;
	char *j3 = to_json(e, &l3);
	if (l2 != l3 || memcmp(j2, j3, l2) != 0)
		abort();	/* clone writes the same */
	free(j3);
	l3 = 0;
	j3 = to_json(d, &l3);
	/* compare compact forms of d and e */
	lora_doc_free(d);
	d = NULL;
	{
		char *a = NULL, *b = NULL;
		size_t la = 0, lb = 0;
		FILE *f = open_memstream(&a, &la);
		lora_doc_write_json(f, e, 0);
		fclose(f);
		struct lora_doc *g = NULL;
		if (lora_doc_parse_buffer(a, la, "json2", 1, &g, &err) < 0)
			abort();
		f = open_memstream(&b, &lb);
		lora_doc_write_json(f, g, 0);
		fclose(f);
		if (la != lb || memcmp(a, b, la) != 0) {
			fprintf(stderr, "not idempotent:\n%s\n%s\n", a, b);
			abort();
		}
		lora_doc_free(g);
		free(a);
		free(b);
	}
	free(j1);
	free(j2);
	free(j3);
	lora_doc_free(c);
	lora_doc_free(e);
	return 0;
}
