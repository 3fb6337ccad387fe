/*
 * doc — JSON and YAML documents (both parsed with libyaml) as one small value
 * tree, plus a JSON writer. Also the value type of free-form stream fields
 * (meta, unknown keys), which lib/stream converts to and from msgpack.
 *
 * Scalars: a quoted scalar is always a string; a plain scalar is resolved as
 * null (null, ~, empty), bool (true/false), int (decimal, optional sign, fits
 * int64), float (JSON number syntax, .inf, .nan) or else a string. Every node
 * records the 1-based line and column where it starts in its source (0 for
 * nodes built in memory), so errors can say file:line:column.
 * Limits: anchors/aliases are refused; duplicate map keys are refused;
 * nesting is limited to 256 levels.
 */
#ifndef LORA_DOC_H
#define LORA_DOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

enum lora_doc_type {
	LORA_DOC_NULL,
	LORA_DOC_BOOL,
	LORA_DOC_INT,
	LORA_DOC_FLOAT,
	LORA_DOC_STRING,
	LORA_DOC_ARRAY,
	LORA_DOC_MAP,
	LORA_DOC_BIN,	/* only from msgpack streams; written as base64 in JSON */
};

/* A node. Plain struct: read its fields directly. A map keeps its keys in
 * source order. Strings are NUL-terminated and may also contain NULs (len). */
struct lora_doc {
	enum lora_doc_type type;
	int line, col;
	union {
		bool b;
		int64_t i;
		double f;
		struct { char *s; size_t len; } str;	/* STRING and BIN */
		struct { struct lora_doc *items; size_t n; } arr;
		struct { char **keys; struct lora_doc *vals; size_t n; } map;
	} u;
};

/* Parse a whole file (JSON or YAML; one document). On success *out is a
 * malloc'd tree the caller frees with lora_doc_free. Errors read
 * "path:line:col: message". */
int lora_doc_parse_file(const char *path, struct lora_doc **out, struct lora_err *err);

/* Parse a buffer; name and first_line are used only in error messages and
 * node positions (JSONL: name = file, first_line = the line number). */
int lora_doc_parse_buffer(const char *buf, size_t len, const char *name, int first_line,
			  struct lora_doc **out, struct lora_err *err);

/* Free a tree allocated by this module (accepts NULL). */
void lora_doc_free(struct lora_doc *d);
/* Free the contents of a node but not the node itself (for embedded nodes). */
void lora_doc_clear(struct lora_doc *d);

/* Deep copy. Returns NULL on ENOMEM. */
struct lora_doc *lora_doc_clone(const struct lora_doc *d);
int lora_doc_copy_into(struct lora_doc *dst, const struct lora_doc *src);

/* Map lookup; NULL if d is not a map or has no such key. */
const struct lora_doc *lora_doc_get(const struct lora_doc *d, const char *key);

/* Typed getters for map members. Each returns 0 and stores the value; returns
 * LORA_ENOTFOUND if the key is absent (leaving *out untouched, so the caller
 * can preset a default), or LORA_EFORMAT with "name:line:col: 'key' must be a
 * <type>" in err if present with the wrong type. `name` is the file name used
 * in the message. An int is accepted where a double is asked for. */
int lora_doc_get_string(const struct lora_doc *map, const char *key, const char *name,
			const char **out, struct lora_err *err);
int lora_doc_get_int(const struct lora_doc *map, const char *key, const char *name,
		     int64_t *out, struct lora_err *err);
int lora_doc_get_double(const struct lora_doc *map, const char *key, const char *name,
			double *out, struct lora_err *err);
int lora_doc_get_bool(const struct lora_doc *map, const char *key, const char *name,
		      bool *out, struct lora_err *err);

/* Builders for in-memory trees (positions 0). All return 0 or LORA_ENOMEM. */
void lora_doc_init_map(struct lora_doc *d);
void lora_doc_init_array(struct lora_doc *d);
int lora_doc_set_string(struct lora_doc *d, const char *s, size_t len);
/* Append to a map (replacing an existing key) / an array. The value is moved
 * into the container (shallow copy; do not free it afterwards). On failure
 * the value's contents are freed, so the caller never has to clean up. */
int lora_doc_map_put(struct lora_doc *map, const char *key, struct lora_doc *val);
int lora_doc_array_push(struct lora_doc *arr, struct lora_doc *val);
/* Remove a key from a map (no-op if absent). */
void lora_doc_map_del(struct lora_doc *map, const char *key);
/* Convenience: put a scalar. */
int lora_doc_map_put_string(struct lora_doc *map, const char *key, const char *s);
int lora_doc_map_put_int(struct lora_doc *map, const char *key, int64_t v);
int lora_doc_map_put_double(struct lora_doc *map, const char *key, double v);
int lora_doc_map_put_bool(struct lora_doc *map, const char *key, bool v);

/* Write as JSON (UTF-8, escapes per RFC 8259; floats with %.17g, NaN/Inf as
 * null; indent > 0 pretty-prints with that many spaces). Returns 0 or
 * LORA_EIO. */
int lora_doc_write_json(FILE *f, const struct lora_doc *d, int indent);
/* Write a JSON string literal (with quotes) for s[0..len). */
int lora_json_write_string(FILE *f, const char *s, size_t len);

#endif
