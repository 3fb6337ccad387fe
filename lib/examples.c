/*
 * examples — JSONL / YAML / BBH example files (see examples.h).
 */
#include "examples.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc.h"

void lora_examples_free(struct lora_examples *ex)
{
	if (!ex)
		return;
	for (size_t i = 0; i < ex->n; i++) {
		free(ex->items[i].input);
		free(ex->items[i].output);
	}
	free(ex->items);
	ex->items = NULL;
	ex->n = 0;
}

static int read_file(const char *path, char **buf, size_t *len, struct lora_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return lora_errf(err, LORA_EIO, "cannot open '%s': %s", path, strerror(errno));
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap + 1);
	while (b) {
		size_t got = fread(b + n, 1, cap - n, f);
		n += got;
		if (n < cap)
			break;
		char *nb = realloc(b, 2 * cap + 1);
		if (!nb) {
			free(b);
			b = NULL;
			break;
		}
		b = nb;
		cap *= 2;
	}
	int bad = ferror(f);
	fclose(f);
	if (!b)
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
	if (bad) {
		free(b);
		return lora_errf(err, LORA_EIO, "%s: read error", path);
	}
	b[n] = '\0';
	*buf = b;
	*len = n;
	return 0;
}

/* The text of a string (or integer) value, malloc'd. */
static int text_of(const struct lora_doc *v, const char *key, const char *path, int line,
		   char **out, struct lora_err *err)
{
	char num[32];
	if (v->type == LORA_DOC_STRING) {
		if (memchr(v->u.str.s, '\0', v->u.str.len))
			return lora_errf(err, LORA_EFORMAT, "%s:%d: '%s' contains a NUL character", path,
					 line, key);
		*out = strdup(v->u.str.s);
	} else if (v->type == LORA_DOC_INT) {
		snprintf(num, sizeof num, "%" PRId64, v->u.i);
		*out = strdup(num);
	} else {
		return lora_errf(err, LORA_EFORMAT, "%s:%d: '%s' must be a string", path,
				 v->line ? v->line : line, key);
	}
	return *out ? 0 : lora_errf(err, LORA_ENOMEM, "out of memory");
}

static int add_example(struct lora_examples *ex, size_t *cap, const struct lora_doc *map,
		       const char *path, int line, struct lora_err *err)
{
	if (!map || map->type != LORA_DOC_MAP)
		return lora_errf(err, LORA_EFORMAT, "%s:%d: an example must be a map with 'input' and 'output'",
				 path, line);
	static const char *const pairs[][2] = {
		{"input", "output"}, {"context", "completion"}, {"input", "target"},
	};
	const struct lora_doc *in = NULL, *out = NULL;
	const char *ink = "input", *outk = "output";
	for (size_t i = 0; i < sizeof pairs / sizeof pairs[0] && !(in && out); i++) {
		in = lora_doc_get(map, pairs[i][0]);
		out = lora_doc_get(map, pairs[i][1]);
		ink = pairs[i][0];
		outk = pairs[i][1];
	}
	if (!in || !out) {
		bool has_in = lora_doc_get(map, "input") || lora_doc_get(map, "context");
		return lora_errf(err, LORA_EFORMAT,
				 "%s:%d: example has no '%s' (expected input/output, context/completion "
				 "or input/target)", path, line, has_in ? "output" : "input");
	}
	if (ex->n == *cap) {
		size_t nc = *cap ? 2 * *cap : 16;
		struct lora_example *it = realloc(ex->items, nc * sizeof *it);
		if (!it)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		ex->items = it;
		*cap = nc;
	}
	struct lora_example *e = &ex->items[ex->n];
	memset(e, 0, sizeof *e);
	e->line = line;
	int rc = text_of(in, ink, path, line, &e->input, err);
	if (rc == 0)
		rc = text_of(out, outk, path, line, &e->output, err);
	if (rc < 0) {
		free(e->input);
		free(e->output);
		return rc;
	}
	ex->n++;
	return 0;
}

/* A parse error of one JSONL line can point past its end (the parser saw
 * only that line): report it as "path:line: malformed JSON line: what". */
static int relocate(struct lora_err *err, const char *path, int line)
{
	char what[LORA_ERR_MAX];
	const char *m = err->msg;
	size_t pl = strlen(path);
	if (strncmp(m, path, pl) == 0 && m[pl] == ':') {
		m += pl + 1;
		while ((*m >= '0' && *m <= '9') || *m == ':')
			m++;
		while (*m == ' ')
			m++;
	}
	snprintf(what, sizeof what, "%s", m);
	return lora_errf(err, LORA_EFORMAT, "%s:%d: malformed JSON line: %s", path, line, what);
}

static int load_jsonl(const char *path, const char *buf, size_t len, struct lora_examples *ex,
		      size_t *cap, struct lora_err *err)
{
	int line = 0;
	for (size_t pos = 0; pos < len;) {
		const char *s = buf + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - s) : len - pos;
		pos += n + (nl ? 1 : 0);
		line++;
		size_t k = 0;
		while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'))
			k++;
		if (k == n)
			continue;
		if (s[k] != '{')
			return lora_errf(err, LORA_EFORMAT, "%s:%d: expected a JSON object on this line",
					 path, line);
		struct lora_doc *d = NULL;
		int rc = lora_doc_parse_buffer(s, n, path, line, &d, err);
		if (rc < 0 && err)
			return relocate(err, path, line);
		if (rc == 0)
			rc = add_example(ex, cap, d, path, line, err);
		lora_doc_free(d);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Whether the first non-blank line is a whole JSON object on its own. */
static bool looks_jsonl(const char *path, const char *buf, size_t len)
{
	size_t k = 0;
	while (k < len && (buf[k] == ' ' || buf[k] == '\t' || buf[k] == '\r' || buf[k] == '\n'))
		k++;
	if (k == len || buf[k] != '{')
		return false;
	const char *nl = memchr(buf + k, '\n', len - k);
	size_t n = nl ? (size_t)(nl - (buf + k)) : len - k;
	struct lora_doc *d = NULL;
	bool ok = lora_doc_parse_buffer(buf + k, n, path, 1, &d, NULL) == 0 && d->type == LORA_DOC_MAP &&
		  !lora_doc_get(d, "examples");
	lora_doc_free(d);
	return ok;
}

int lora_examples_load(const char *path, struct lora_examples *out, struct lora_err *err)
{
	memset(out, 0, sizeof *out);
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = read_file(path, &buf, &len, err);
	if (rc < 0)
		return rc;
	if (looks_jsonl(path, buf, len)) {
		rc = load_jsonl(path, buf, len, out, &cap, err);
	} else {
		struct lora_doc *d = NULL;
		size_t k = 0;
		while (k < len && (buf[k] == ' ' || buf[k] == '\t' || buf[k] == '\r' || buf[k] == '\n'))
			k++;
		if (k < len)
			rc = lora_doc_parse_buffer(buf, len, path, 1, &d, err);
		const struct lora_doc *list = d;
		if (rc == 0 && d && d->type == LORA_DOC_MAP) {
			list = lora_doc_get(d, "examples");
			if (!list)
				rc = lora_errf(err, LORA_EFORMAT,
					       "%s:%d: expected JSONL lines, a list of examples, or a map with "
					       "'examples'", path, d->line);
		}
		if (rc == 0 && list && list->type != LORA_DOC_ARRAY)
			rc = lora_errf(err, LORA_EFORMAT, "%s:%d: expected a list of examples", path,
				       list->line);
		for (size_t i = 0; rc == 0 && list && i < list->u.arr.n; i++) {
			const struct lora_doc *e = &list->u.arr.items[i];
			rc = add_example(out, &cap, e, path, e->line, err);
		}
		lora_doc_free(d);
	}
	free(buf);
	if (rc == 0 && out->n == 0)
		rc = lora_errf(err, LORA_EFORMAT, "%s: no examples", path);
	if (rc < 0)
		lora_examples_free(out);
	return rc;
}
