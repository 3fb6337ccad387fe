/*
 * doc — JSON and YAML documents as one small value tree; see doc.h.
 *
 * Both formats go through libyaml's event parser (JSON is read as YAML flow
 * style), so one code path builds the tree and one resolver types the plain
 * scalars. Events are folded into the tree with an explicit stack of open
 * containers, so deep input cannot overflow the C stack; nesting is capped
 * at LORA_DOC_MAX_DEPTH. Maps check for duplicate keys with a small hash
 * table built while the map is open, so 50k-key vocabularies stay linear.
 *
 * JSON quirks handled before libyaml sees the text (only for documents that
 * start with '{' or '['), in one extra pass that copies the text only when it
 * must: libyaml refuses UTF-16 surrogate escapes, so a "\uD83D\uDE00" pair is
 * rewritten as the equivalent "\U0001F600" and a lone surrogate as "\uFFFD";
 * YAML folds a raw U+0085, U+2028 or U+2029 inside a string as a line break
 * where JSON keeps the character, so those become YAML's "\N", "\L", "\P";
 * and libyaml takes an object key only if it is under 1024 characters and on
 * the same line as its ':', so other keys get YAML's explicit "? " indicator.
 * Those rewrites move later columns on the same line by a character or two,
 * so an error position after them can be off by that much.
 *
 * Limits: one document per input; no anchors, aliases or complex (non-scalar)
 * map keys; YAML (not JSON) implicit keys longer than 1024 characters are a
 * libyaml limit.
 *
 * The JSON writer emits UTF-8; invalid UTF-8 in a string is written as
 * \ufffd so the output is always valid JSON, and U+0085, U+2028 and U+2029
 * are escaped (YAML readers and JavaScript take them as line breaks). BIN
 * nodes are written as base64 strings. Floats use the shortest
 * %.{15,16,17}g that reads back exactly, with ".0" added when that would
 * otherwise look like an integer.
 */
#include "doc.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#define LORA_DOC_MAX_DEPTH 256

/* ---------------------------------------------------------------- helpers */

static char *dup_mem(const char *s, size_t len)
{
	char *p = malloc(len + 1);
	if (!p)
		return NULL;
	if (len)
		memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

static uint64_t hash_str(const char *s)
{
	/* FNV-1a */
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ull;
	}
	return h;
}

/* ------------------------------------------------------- scalar resolving */

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* [-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)? or [-+]?\.[0-9]+(...)? ; sets
 * *is_int when there is neither a fraction nor an exponent. */
static bool number_syntax(const char *s, size_t n, bool *is_int)
{
	size_t i = 0;
	bool digits = false;
	*is_int = true;
	if (i < n && (s[i] == '-' || s[i] == '+'))
		i++;
	while (i < n && is_digit(s[i])) {
		i++;
		digits = true;
	}
	if (i < n && s[i] == '.') {
		*is_int = false;
		i++;
		while (i < n && is_digit(s[i])) {
			i++;
			digits = true;
		}
	}
	if (!digits)
		return false;
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		*is_int = false;
		i++;
		if (i < n && (s[i] == '-' || s[i] == '+'))
			i++;
		if (i >= n || !is_digit(s[i]))
			return false;
		while (i < n && is_digit(s[i]))
			i++;
	}
	return i == n;
}

static bool str_in(const char *s, size_t n, const char *const *list)
{
	for (; *list; list++)
		if (strlen(*list) == n && memcmp(*list, s, n) == 0)
			return true;
	return false;
}

/* Type a plain scalar. Strings are copied. Returns 0 or LORA_ENOMEM. */
static int resolve_plain(struct lora_doc *d, const char *s, size_t n)
{
	static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
	static const char *const trues[] = {"true", "True", "TRUE", NULL};
	static const char *const falses[] = {"false", "False", "FALSE", NULL};
	static const char *const infs[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", NULL};
	static const char *const ninfs[] = {"-.inf", "-.Inf", "-.INF", NULL};
	static const char *const nans[] = {".nan", ".NaN", ".NAN", NULL};
	bool is_int;

	if (str_in(s, n, nulls)) {
		d->type = LORA_DOC_NULL;
		return 0;
	}
	if (str_in(s, n, trues) || str_in(s, n, falses)) {
		d->type = LORA_DOC_BOOL;
		d->u.b = s[0] == 't' || s[0] == 'T';
		return 0;
	}
	if (str_in(s, n, infs) || str_in(s, n, ninfs)) {
		d->type = LORA_DOC_FLOAT;
		d->u.f = s[0] == '-' ? -INFINITY : INFINITY;
		return 0;
	}
	if (str_in(s, n, nans)) {
		d->type = LORA_DOC_FLOAT;
		d->u.f = NAN;
		return 0;
	}
	if (n < 400 && number_syntax(s, n, &is_int)) {
		char buf[400];
		memcpy(buf, s, n);
		buf[n] = '\0';
		if (is_int) {
			errno = 0;
			char *end;
			long long v = strtoll(buf, &end, 10);
			if (errno == 0 && *end == '\0') {
				d->type = LORA_DOC_INT;
				d->u.i = v;
				return 0;
			}
		}
		d->type = LORA_DOC_FLOAT;
		d->u.f = strtod(buf, NULL);
		return 0;
	}
	d->type = LORA_DOC_STRING;
	d->u.str.s = dup_mem(s, n);
	d->u.str.len = n;
	return d->u.str.s ? 0 : LORA_ENOMEM;
}

/* ------------------------------------------------------------ tree basics */

void lora_doc_clear(struct lora_doc *d)
{
	if (!d)
		return;
	switch (d->type) {
	case LORA_DOC_STRING:
	case LORA_DOC_BIN:
		free(d->u.str.s);
		break;
	case LORA_DOC_ARRAY:
		for (size_t i = 0; i < d->u.arr.n; i++)
			lora_doc_clear(&d->u.arr.items[i]);
		free(d->u.arr.items);
		break;
	case LORA_DOC_MAP:
		for (size_t i = 0; i < d->u.map.n; i++) {
			free(d->u.map.keys[i]);
			lora_doc_clear(&d->u.map.vals[i]);
		}
		free(d->u.map.keys);
		free(d->u.map.vals);
		break;
	default:
		break;
	}
	memset(d, 0, sizeof *d);
	d->type = LORA_DOC_NULL;
}

void lora_doc_free(struct lora_doc *d)
{
	if (!d)
		return;
	lora_doc_clear(d);
	free(d);
}

int lora_doc_copy_into(struct lora_doc *dst, const struct lora_doc *src)
{
	memset(dst, 0, sizeof *dst);
	dst->type = src->type;
	dst->line = src->line;
	dst->col = src->col;
	switch (src->type) {
	case LORA_DOC_STRING:
	case LORA_DOC_BIN:
		dst->u.str.s = dup_mem(src->u.str.s ? src->u.str.s : "", src->u.str.len);
		dst->u.str.len = src->u.str.len;
		if (!dst->u.str.s)
			goto nomem;
		return 0;
	case LORA_DOC_ARRAY: {
		size_t n = src->u.arr.n;
		if (n) {
			dst->u.arr.items = calloc(n, sizeof *dst->u.arr.items);
			if (!dst->u.arr.items)
				goto nomem;
		}
		for (size_t i = 0; i < n; i++) {
			if (lora_doc_copy_into(&dst->u.arr.items[i], &src->u.arr.items[i]) < 0)
				goto nomem;
			dst->u.arr.n = i + 1;
		}
		return 0;
	}
	case LORA_DOC_MAP: {
		size_t n = src->u.map.n;
		if (n) {
			dst->u.map.keys = calloc(n, sizeof *dst->u.map.keys);
			dst->u.map.vals = calloc(n, sizeof *dst->u.map.vals);
			if (!dst->u.map.keys || !dst->u.map.vals)
				goto nomem;
		}
		for (size_t i = 0; i < n; i++) {
			dst->u.map.keys[i] = strdup(src->u.map.keys[i]);
			if (!dst->u.map.keys[i])
				goto nomem;
			dst->u.map.n = i + 1;
			if (lora_doc_copy_into(&dst->u.map.vals[i], &src->u.map.vals[i]) < 0)
				goto nomem;
		}
		return 0;
	}
	default:
		dst->u = src->u;
		return 0;
	}
nomem:
	lora_doc_clear(dst);
	return LORA_ENOMEM;
}

struct lora_doc *lora_doc_clone(const struct lora_doc *d)
{
	if (!d)
		return NULL;
	struct lora_doc *c = malloc(sizeof *c);
	if (!c)
		return NULL;
	if (lora_doc_copy_into(c, d) < 0) {
		free(c);
		return NULL;
	}
	return c;
}

const struct lora_doc *lora_doc_get(const struct lora_doc *d, const char *key)
{
	if (!d || d->type != LORA_DOC_MAP || !key)
		return NULL;
	for (size_t i = 0; i < d->u.map.n; i++)
		if (strcmp(d->u.map.keys[i], key) == 0)
			return &d->u.map.vals[i];
	return NULL;
}

/* ------------------------------------------------------------- the parser */

/* An open container while parsing. */
struct frame {
	struct lora_doc node;	/* ARRAY or MAP being filled */
	size_t cap;
	char *pending_key;	/* MAP: the key waiting for its value */
	int key_line, key_col;
	uint32_t *hash;		/* MAP: open-addressing table of index+1, or NULL */
	size_t hcap;
};

struct pstate {
	const char *name;
	int first_line;
	struct frame *stack;
	size_t depth, scap;
	struct lora_doc *root;
	bool have_root;
	struct lora_err *err;
};

static void frame_clear(struct frame *f)
{
	lora_doc_clear(&f->node);
	free(f->pending_key);
	free(f->hash);
	memset(f, 0, sizeof *f);
}

static int hash_rebuild(struct frame *f, size_t hcap)
{
	uint32_t *h = calloc(hcap, sizeof *h);
	if (!h)
		return LORA_ENOMEM;
	for (size_t i = 0; i < f->node.u.map.n; i++) {
		size_t j = hash_str(f->node.u.map.keys[i]) & (hcap - 1);
		while (h[j])
			j = (j + 1) & (hcap - 1);
		h[j] = (uint32_t)(i + 1);
	}
	free(f->hash);
	f->hash = h;
	f->hcap = hcap;
	return 0;
}

/* Is key already in the map of frame f? Uses the hash once the map grows. */
static bool map_has(struct frame *f, const char *key)
{
	struct lora_doc *m = &f->node;
	if (!f->hash) {
		for (size_t i = 0; i < m->u.map.n; i++)
			if (strcmp(m->u.map.keys[i], key) == 0)
				return true;
		return false;
	}
	size_t j = hash_str(key) & (f->hcap - 1);
	while (f->hash[j]) {
		if (strcmp(m->u.map.keys[f->hash[j] - 1], key) == 0)
			return true;
		j = (j + 1) & (f->hcap - 1);
	}
	return false;
}

/* Record the last key of the map in the hash (building it when the map
 * reaches 16 keys, doubling to keep the load under one half). */
static int map_index_last(struct frame *f)
{
	size_t n = f->node.u.map.n;
	if (n < 16)
		return 0;
	if (n > UINT32_MAX - 1)
		return LORA_ENOMEM;
	if (!f->hash || n * 2 > f->hcap)
		return hash_rebuild(f, f->hcap ? f->hcap * 2 : 64);
	size_t j = hash_str(f->node.u.map.keys[n - 1]) & (f->hcap - 1);
	while (f->hash[j])
		j = (j + 1) & (f->hcap - 1);
	f->hash[j] = (uint32_t)n;
	return 0;
}

static int perr(struct pstate *ps, int code, int line, int col, const char *msg, const char *arg)
{
	if (arg)
		return lora_errf(ps->err, code, "%s:%d:%d: %s '%s'", ps->name, line, col, msg, arg);
	return lora_errf(ps->err, code, "%s:%d:%d: %s", ps->name, line, col, msg);
}

/* Add a finished node (moved) to the innermost container, or make it the
 * root. On failure the node is cleared. */
static int add_node(struct pstate *ps, struct lora_doc *n)
{
	if (ps->depth == 0) {
		*ps->root = *n;
		ps->have_root = true;
		return 0;
	}
	struct frame *f = &ps->stack[ps->depth - 1];
	struct lora_doc *c = &f->node;
	if (c->type == LORA_DOC_ARRAY) {
		if (c->u.arr.n == f->cap) {
			size_t nc = f->cap ? f->cap * 2 : 4;
			void *p = realloc(c->u.arr.items, nc * sizeof *c->u.arr.items);
			if (!p)
				goto nomem;
			c->u.arr.items = p;
			f->cap = nc;
		}
		c->u.arr.items[c->u.arr.n++] = *n;
		return 0;
	}
	if (!f->pending_key) {
		/* n is a key */
		if (n->type == LORA_DOC_ARRAY || n->type == LORA_DOC_MAP) {
			int line = n->line, col = n->col;
			lora_doc_clear(n);
			return perr(ps, LORA_EFORMAT, line, col, "map keys must be scalars", NULL);
		}
		char *k;
		switch (n->type) {
		case LORA_DOC_STRING:
			k = n->u.str.s;
			n->u.str.s = NULL;
			break;
		default:
			/* a plain scalar typed as a number etc.: the key is its text,
			 * which the caller passed in the scratch string */
			k = NULL;
			break;
		}
		if (!k) {
			lora_doc_clear(n);
			return perr(ps, LORA_EFORMAT, n->line, n->col, "internal: untyped key", NULL);
		}
		if (strlen(k) != n->u.str.len) {
			int line = n->line, col = n->col;
			free(k);
			return perr(ps, LORA_EFORMAT, line, col, "map key contains a NUL character", NULL);
		}
		if (map_has(f, k)) {
			int r = perr(ps, LORA_EFORMAT, n->line, n->col, "duplicate key", k);
			free(k);
			return r;
		}
		f->pending_key = k;
		f->key_line = n->line;
		f->key_col = n->col;
		return 0;
	}
	if (c->u.map.n == f->cap) {
		size_t nc = f->cap ? f->cap * 2 : 4;
		char **pk = realloc(c->u.map.keys, nc * sizeof *pk);
		if (!pk)
			goto nomem;
		c->u.map.keys = pk;
		struct lora_doc *pv = realloc(c->u.map.vals, nc * sizeof *pv);
		if (!pv)
			goto nomem;
		c->u.map.vals = pv;
		f->cap = nc;
	}
	c->u.map.keys[c->u.map.n] = f->pending_key;
	c->u.map.vals[c->u.map.n] = *n;
	c->u.map.n++;
	f->pending_key = NULL;
	if (map_index_last(f) < 0)
		return lora_errf(ps->err, LORA_ENOMEM, "%s: out of memory", ps->name);
	return 0;
nomem:
	lora_doc_clear(n);
	return lora_errf(ps->err, LORA_ENOMEM, "%s: out of memory", ps->name);
}

static bool is_map_key_slot(struct pstate *ps)
{
	if (ps->depth == 0)
		return false;
	struct frame *f = &ps->stack[ps->depth - 1];
	return f->node.type == LORA_DOC_MAP && !f->pending_key;
}

static int on_scalar(struct pstate *ps, yaml_event_t *ev, int line, int col)
{
	struct lora_doc n;
	memset(&n, 0, sizeof n);
	n.line = line;
	n.col = col;
	const char *v = (const char *)ev->data.scalar.value;
	size_t len = ev->data.scalar.length;
	const char *tag = (const char *)ev->data.scalar.tag;
	bool as_string = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || is_map_key_slot(ps) ||
			 (tag && strcmp(tag, YAML_STR_TAG) == 0);
	if (as_string) {
		/* take libyaml's buffer (malloc'd by yaml_malloc, i.e. malloc, and
		 * NUL-terminated) instead of copying it: half the allocations */
		n.type = LORA_DOC_STRING;
		n.u.str.s = (char *)ev->data.scalar.value;
		n.u.str.len = len;
		ev->data.scalar.value = NULL;
	} else if (resolve_plain(&n, v, len) < 0) {
		return lora_errf(ps->err, LORA_ENOMEM, "%s: out of memory", ps->name);
	}
	return add_node(ps, &n);
}

static int on_start(struct pstate *ps, enum lora_doc_type type, int line, int col)
{
	if (ps->depth >= LORA_DOC_MAX_DEPTH)
		return perr(ps, LORA_EFORMAT, line, col, "nesting deeper than 256 levels", NULL);
	if (is_map_key_slot(ps))
		return perr(ps, LORA_EFORMAT, line, col, "map keys must be scalars", NULL);
	if (ps->depth == ps->scap) {
		size_t nc = ps->scap ? ps->scap * 2 : 16;
		void *p = realloc(ps->stack, nc * sizeof *ps->stack);
		if (!p)
			return lora_errf(ps->err, LORA_ENOMEM, "%s: out of memory", ps->name);
		ps->stack = p;
		ps->scap = nc;
	}
	struct frame *f = &ps->stack[ps->depth++];
	memset(f, 0, sizeof *f);
	f->node.type = type;
	f->node.line = line;
	f->node.col = col;
	return 0;
}

static int on_end(struct pstate *ps)
{
	struct frame *f = &ps->stack[--ps->depth];
	struct lora_doc n = f->node;
	/* shrink-to-fit is not worth a realloc per container */
	f->node.type = LORA_DOC_NULL;
	free(f->pending_key);
	free(f->hash);
	memset(f, 0, sizeof *f);
	return add_node(ps, &n);
}

/* 1-based line/col of byte offset off in buf (for reader errors). */
static void offset_pos(const char *buf, size_t len, size_t off, int *line, int *col)
{
	int l = 1, c = 1;
	for (size_t i = 0; i < off && i < len; i++) {
		if (buf[i] == '\n') {
			l++;
			c = 1;
		} else if (((unsigned char)buf[i] & 0xC0) != 0x80) {
			c++;
		}
	}
	*line = l;
	*col = c;
}

static int parser_error(struct pstate *ps, yaml_parser_t *p, const char *buf, size_t len)
{
	int line, col;
	if (p->error == YAML_MEMORY_ERROR)
		return lora_errf(ps->err, LORA_ENOMEM, "%s: out of memory", ps->name);
	if (p->error == YAML_READER_ERROR) {
		offset_pos(buf, len, p->problem_offset, &line, &col);
		line += ps->first_line - 1;
		return lora_errf(ps->err, LORA_EFORMAT, "%s:%d:%d: %s", ps->name, line, col,
				 p->problem ? p->problem : "invalid input");
	}
	line = (int)p->problem_mark.line + ps->first_line;
	col = (int)p->problem_mark.column + 1;
	if (p->context)
		return lora_errf(ps->err, LORA_EFORMAT, "%s:%d:%d: %s %s", ps->name, line, col,
				 p->problem ? p->problem : "syntax error", p->context);
	return lora_errf(ps->err, LORA_EFORMAT, "%s:%d:%d: %s", ps->name, line, col,
			 p->problem ? p->problem : "syntax error");
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Read 4 hex digits at s (n bytes available); -1 if not. */
static long hex4(const char *s, size_t n)
{
	if (n < 4)
		return -1;
	long v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hexval(s[i]);
		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

/* One pass over a JSON text that rewrites what libyaml refuses but JSON
 * allows: UTF-16 surrogate escapes (a pair becomes the equivalent
 * "\\UXXXXXXXX", a lone surrogate "\\uFFFD") and object keys libyaml cannot
 * take as implicit keys (longer than 1000 bytes, or with a line break before
 * their ':'), which get YAML's explicit-key indicator "? " in front. With
 * o == NULL nothing is written and the return value says whether a rewrite is
 * needed (1) or not (0); otherwise the rewritten length is returned. o must
 * have room for 2 * len + 16 bytes. */
static size_t json_rewrite(const char *buf, size_t len, char *o)
{
	enum { MAXNEST = 1024 };
	char nest[MAXNEST];	/* '{' or '[' per open bracket */
	size_t depth = 0, k = 0;
	size_t i = 0;
#define EMIT(c) do { if (o) o[k] = (c); k++; } while (0)
	while (i < len) {
		char c = buf[i];
		if (c == '{' || c == '[') {
			if (depth < MAXNEST)
				nest[depth] = c;
			depth++;
			EMIT(c);
			i++;
			continue;
		}
		if (c == '}' || c == ']') {
			if (depth)
				depth--;
			EMIT(c);
			i++;
			continue;
		}
		if (c != '"') {
			EMIT(c);
			i++;
			continue;
		}
		/* a string: copy it, rewriting surrogate escapes */
		size_t start_in = i, start_out = k;
		EMIT(c);
		i++;
		while (i < len && buf[i] != '"') {
			/* raw U+0085, U+2028, U+2029: YAML folds them as line
			 * breaks, JSON keeps them; use YAML's \\N \\L \\P */
			unsigned char u0 = (unsigned char)buf[i];
			if ((u0 == 0xC2 && i + 1 < len && (unsigned char)buf[i + 1] == 0x85) ||
			    (u0 == 0xE2 && i + 2 < len && (unsigned char)buf[i + 1] == 0x80 &&
			     ((unsigned char)buf[i + 2] == 0xA8 || (unsigned char)buf[i + 2] == 0xA9))) {
				if (!o)
					return 1;
				EMIT('\\');
				EMIT(u0 == 0xC2 ? 'N' : (unsigned char)buf[i + 2] == 0xA8 ? 'L' : 'P');
				i += u0 == 0xC2 ? 2 : 3;
				continue;
			}
			/* raw characters JSON allows in strings but YAML calls
			 * non-printable (DEL, C1 controls, U+FFFE/U+FFFF): escape */
			if (u0 == 0x7F || (u0 == 0xC2 && i + 1 < len &&
					   (unsigned char)buf[i + 1] >= 0x80 &&
					   (unsigned char)buf[i + 1] <= 0x9F)) {
				if (!o)
					return 1;
				unsigned cp = u0 == 0x7F ? 0x7F : (unsigned char)buf[i + 1];
				k += (size_t)sprintf(o + k, "\\x%02X", cp);
				i += u0 == 0x7F ? 1 : 2;
				continue;
			}
			if (u0 == 0xEF && i + 2 < len && (unsigned char)buf[i + 1] == 0xBF &&
			    ((unsigned char)buf[i + 2] == 0xBE || (unsigned char)buf[i + 2] == 0xBF)) {
				if (!o)
					return 1;
				k += (size_t)sprintf(o + k, "\\u%s",
						     (unsigned char)buf[i + 2] == 0xBE ? "FFFE" : "FFFF");
				i += 3;
				continue;
			}
			if (buf[i] != '\\' || i + 1 >= len) {
				EMIT(buf[i]);
				i++;
				continue;
			}
			if (buf[i + 1] != 'u') {
				EMIT(buf[i]);
				EMIT(buf[i + 1]);
				i += 2;
				continue;
			}
			long v = hex4(buf + i + 2, len - i - 2);
			if (v < 0xD800 || v > 0xDFFF) {
				EMIT('\\');
				EMIT('u');
				i += 2;
				continue;
			}
			if (!o)
				return 1;
			long lo = -1;
			if (v <= 0xDBFF && i + 11 < len && buf[i + 6] == '\\' && buf[i + 7] == 'u')
				lo = hex4(buf + i + 8, len - i - 8);
			if (lo >= 0xDC00 && lo <= 0xDFFF) {
				unsigned long cp = 0x10000 + (((unsigned long)v - 0xD800) << 10) +
						   ((unsigned long)lo - 0xDC00);
				k += (size_t)sprintf(o + k, "\\U%08lX", cp);
				i += 12;
			} else {
				memcpy(o + k, "\\uFFFD", 6);
				k += 6;
				i += 6;
			}
		}
		if (i < len) {
			EMIT('"');
			i++;
		}
		/* is it a key that needs "? "? */
		if (depth == 0 || depth > MAXNEST || nest[depth - 1] != '{')
			continue;
		size_t j = i;
		bool nl = false;
		while (j < len && (buf[j] == ' ' || buf[j] == '\t' || buf[j] == '\n' || buf[j] == '\r')) {
			nl |= buf[j] == '\n' || buf[j] == '\r';
			j++;
		}
		if (j >= len || buf[j] != ':' || (!nl && i - start_in <= 1000))
			continue;
		if (!o)
			return 1;
		memmove(o + start_out + 2, o + start_out, k - start_out);
		o[start_out] = '?';
		o[start_out + 1] = ' ';
		k += 2;
	}
#undef EMIT
	return o ? k : 0;
}

/* For JSON input (first non-blank byte '{' or '['), rewrite what libyaml
 * would refuse (see json_rewrite). *out is a malloc'd copy when something
 * was rewritten, NULL when the buffer can be used as is. */
static int json_fixup(const char *buf, size_t len, char **out, size_t *outlen)
{
	*out = NULL;
	size_t i = 0;
	while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r'))
		i++;
	if (i >= len || (buf[i] != '{' && buf[i] != '['))
		return 0;
	if (!json_rewrite(buf, len, NULL))
		return 0;
	/* worst growth: a raw DEL (1 byte) becomes "\x7F" (4 bytes) */
	if (len > (SIZE_MAX - 16) / 4)
		return LORA_ENOMEM;
	char *o = malloc(4 * len + 16);
	if (!o)
		return LORA_ENOMEM;
	*outlen = json_rewrite(buf, len, o);
	o[*outlen] = '\0';
	*out = o;
	return 0;
}

int lora_doc_parse_buffer(const char *buf, size_t len, const char *name, int first_line,
			  struct lora_doc **out, struct lora_err *err)
{
	struct pstate ps;
	yaml_parser_t parser;
	yaml_event_t ev;
	char *fixed = NULL;
	size_t fixed_len = 0;
	int rc = 0;
	bool done = false, in_doc = false, had_doc = false;

	*out = NULL;
	if (!name)
		name = "<input>";
	if (first_line < 1)
		first_line = 1;
	memset(&ps, 0, sizeof ps);
	ps.name = name;
	ps.first_line = first_line;
	ps.err = err;
	ps.root = calloc(1, sizeof *ps.root);
	if (!ps.root)
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", name);
	if (json_fixup(buf, len, &fixed, &fixed_len) < 0) {
		free(ps.root);
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", name);
	}
	if (fixed) {
		buf = fixed;
		len = fixed_len;
	}
	if (!yaml_parser_initialize(&parser)) {
		free(fixed);
		free(ps.root);
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", name);
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);

	while (!done) {
		if (!yaml_parser_parse(&parser, &ev)) {
			rc = parser_error(&ps, &parser, buf, len);
			break;
		}
		int line = (int)ev.start_mark.line + first_line;
		int col = (int)ev.start_mark.column + 1;
		switch (ev.type) {
		case YAML_STREAM_END_EVENT:
			done = true;
			break;
		case YAML_DOCUMENT_START_EVENT:
			if (had_doc)
				rc = perr(&ps, LORA_EFORMAT, line, col,
					  "more than one document", NULL);
			in_doc = had_doc = true;
			break;
		case YAML_DOCUMENT_END_EVENT:
			in_doc = false;
			break;
		case YAML_ALIAS_EVENT:
			rc = perr(&ps, LORA_EFORMAT, line, col, "aliases are not supported", NULL);
			break;
		case YAML_SCALAR_EVENT:
			if (ev.data.scalar.anchor)
				rc = perr(&ps, LORA_EFORMAT, line, col, "anchors are not supported",
					  NULL);
			else
				rc = on_scalar(&ps, &ev, line, col);
			break;
		case YAML_SEQUENCE_START_EVENT:
			if (ev.data.sequence_start.anchor)
				rc = perr(&ps, LORA_EFORMAT, line, col, "anchors are not supported",
					  NULL);
			else
				rc = on_start(&ps, LORA_DOC_ARRAY, line, col);
			break;
		case YAML_MAPPING_START_EVENT:
			if (ev.data.mapping_start.anchor)
				rc = perr(&ps, LORA_EFORMAT, line, col, "anchors are not supported",
					  NULL);
			else
				rc = on_start(&ps, LORA_DOC_MAP, line, col);
			break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT:
			rc = on_end(&ps);
			break;
		default:
			break;
		}
		yaml_event_delete(&ev);
		if (rc < 0)
			break;
	}
	(void)in_doc;
	yaml_parser_delete(&parser);
	free(fixed);
	while (ps.depth > 0)
		frame_clear(&ps.stack[--ps.depth]);
	free(ps.stack);
	if (rc == 0 && !ps.have_root)
		rc = lora_errf(err, LORA_EFORMAT, "%s:%d:1: empty document", name, first_line);
	if (rc < 0) {
		lora_doc_free(ps.root);
		return rc;
	}
	*out = ps.root;
	return 0;
}

int lora_doc_parse_file(const char *path, struct lora_doc **out, struct lora_err *err)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lora_errf(err, errno == ENOENT ? LORA_ENOTFOUND : LORA_EIO,
				 "cannot open '%s': %s", path, strerror(errno));
	struct stat sb;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		int e = errno;
		close(fd);
		if (!S_ISREG(sb.st_mode))
			return lora_errf(err, LORA_EIO, "cannot read '%s': not a regular file", path);
		return lora_errf(err, LORA_EIO, "cannot read '%s': %s", path, strerror(e));
	}
	size_t cap = (size_t)sb.st_size + 1, n = 0;
	char *buf = malloc(cap);
	if (!buf) {
		close(fd);
		return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
	}
	for (;;) {
		if (n == cap) {
			char *p = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
			if (!p) {
				free(buf);
				close(fd);
				return lora_errf(err, LORA_ENOMEM, "%s: out of memory", path);
			}
			buf = p;
			cap *= 2;
		}
		ssize_t k = read(fd, buf + n, cap - n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			free(buf);
			close(fd);
			return lora_errf(err, LORA_EIO, "cannot read '%s': %s", path, strerror(e));
		}
		if (k == 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	int rc = lora_doc_parse_buffer(buf, n, path, 1, out, err);
	free(buf);
	return rc;
}

/* --------------------------------------------------------- typed getters */

static int wrong_type(const struct lora_doc *v, const char *key, const char *name,
		      const char *want, struct lora_err *err)
{
	if (!name)
		name = "<document>";
	if (v->line > 0)
		return lora_errf(err, LORA_EFORMAT, "%s:%d:%d: '%s' must be %s", name, v->line,
				 v->col, key, want);
	return lora_errf(err, LORA_EFORMAT, "%s: '%s' must be %s", name, key, want);
}

int lora_doc_get_string(const struct lora_doc *map, const char *key, const char *name,
			const char **out, struct lora_err *err)
{
	const struct lora_doc *v = lora_doc_get(map, key);
	if (!v)
		return LORA_ENOTFOUND;
	if (v->type != LORA_DOC_STRING)
		return wrong_type(v, key, name, "a string", err);
	*out = v->u.str.s;
	return 0;
}

int lora_doc_get_int(const struct lora_doc *map, const char *key, const char *name,
		     int64_t *out, struct lora_err *err)
{
	const struct lora_doc *v = lora_doc_get(map, key);
	if (!v)
		return LORA_ENOTFOUND;
	if (v->type != LORA_DOC_INT)
		return wrong_type(v, key, name, "an integer", err);
	*out = v->u.i;
	return 0;
}

int lora_doc_get_double(const struct lora_doc *map, const char *key, const char *name,
			double *out, struct lora_err *err)
{
	const struct lora_doc *v = lora_doc_get(map, key);
	if (!v)
		return LORA_ENOTFOUND;
	if (v->type == LORA_DOC_INT)
		*out = (double)v->u.i;
	else if (v->type == LORA_DOC_FLOAT)
		*out = v->u.f;
	else
		return wrong_type(v, key, name, "a number", err);
	return 0;
}

int lora_doc_get_bool(const struct lora_doc *map, const char *key, const char *name,
		      bool *out, struct lora_err *err)
{
	const struct lora_doc *v = lora_doc_get(map, key);
	if (!v)
		return LORA_ENOTFOUND;
	if (v->type != LORA_DOC_BOOL)
		return wrong_type(v, key, name, "a boolean", err);
	*out = v->u.b;
	return 0;
}

/* --------------------------------------------------------------- builders */

void lora_doc_init_map(struct lora_doc *d)
{
	memset(d, 0, sizeof *d);
	d->type = LORA_DOC_MAP;
}

void lora_doc_init_array(struct lora_doc *d)
{
	memset(d, 0, sizeof *d);
	d->type = LORA_DOC_ARRAY;
}

int lora_doc_set_string(struct lora_doc *d, const char *s, size_t len)
{
	memset(d, 0, sizeof *d);
	d->type = LORA_DOC_STRING;
	d->u.str.s = dup_mem(s ? s : "", s ? len : 0);
	d->u.str.len = s ? len : 0;
	if (!d->u.str.s) {
		d->type = LORA_DOC_NULL;
		return LORA_ENOMEM;
	}
	return 0;
}

int lora_doc_map_put(struct lora_doc *map, const char *key, struct lora_doc *val)
{
	if (map->type != LORA_DOC_MAP) {
		lora_doc_clear(val);
		return LORA_EINVAL;
	}
	for (size_t i = 0; i < map->u.map.n; i++) {
		if (strcmp(map->u.map.keys[i], key) == 0) {
			lora_doc_clear(&map->u.map.vals[i]);
			map->u.map.vals[i] = *val;
			return 0;
		}
	}
	size_t n = map->u.map.n;
	char *k = strdup(key);
	char **pk = k ? realloc(map->u.map.keys, (n + 1) * sizeof *pk) : NULL;
	if (pk)
		map->u.map.keys = pk;
	struct lora_doc *pv = pk ? realloc(map->u.map.vals, (n + 1) * sizeof *pv) : NULL;
	if (pv)
		map->u.map.vals = pv;
	if (!k || !pk || !pv) {
		free(k);
		lora_doc_clear(val);
		return LORA_ENOMEM;
	}
	map->u.map.keys[n] = k;
	map->u.map.vals[n] = *val;
	map->u.map.n = n + 1;
	return 0;
}

int lora_doc_array_push(struct lora_doc *arr, struct lora_doc *val)
{
	if (arr->type != LORA_DOC_ARRAY) {
		lora_doc_clear(val);
		return LORA_EINVAL;
	}
	size_t n = arr->u.arr.n;
	struct lora_doc *p = realloc(arr->u.arr.items, (n + 1) * sizeof *p);
	if (!p) {
		lora_doc_clear(val);
		return LORA_ENOMEM;
	}
	arr->u.arr.items = p;
	p[n] = *val;
	arr->u.arr.n = n + 1;
	return 0;
}

void lora_doc_map_del(struct lora_doc *map, const char *key)
{
	if (!map || map->type != LORA_DOC_MAP)
		return;
	for (size_t i = 0; i < map->u.map.n; i++) {
		if (strcmp(map->u.map.keys[i], key) == 0) {
			free(map->u.map.keys[i]);
			lora_doc_clear(&map->u.map.vals[i]);
			size_t rest = map->u.map.n - i - 1;
			memmove(&map->u.map.keys[i], &map->u.map.keys[i + 1],
				rest * sizeof *map->u.map.keys);
			memmove(&map->u.map.vals[i], &map->u.map.vals[i + 1],
				rest * sizeof *map->u.map.vals);
			map->u.map.n--;
			return;
		}
	}
}

int lora_doc_map_put_string(struct lora_doc *map, const char *key, const char *s)
{
	struct lora_doc v;
	if (lora_doc_set_string(&v, s, s ? strlen(s) : 0) < 0)
		return LORA_ENOMEM;
	return lora_doc_map_put(map, key, &v);
}

int lora_doc_map_put_int(struct lora_doc *map, const char *key, int64_t i)
{
	struct lora_doc v;
	memset(&v, 0, sizeof v);
	v.type = LORA_DOC_INT;
	v.u.i = i;
	return lora_doc_map_put(map, key, &v);
}

int lora_doc_map_put_double(struct lora_doc *map, const char *key, double f)
{
	struct lora_doc v;
	memset(&v, 0, sizeof v);
	v.type = LORA_DOC_FLOAT;
	v.u.f = f;
	return lora_doc_map_put(map, key, &v);
}

int lora_doc_map_put_bool(struct lora_doc *map, const char *key, bool b)
{
	struct lora_doc v;
	memset(&v, 0, sizeof v);
	v.type = LORA_DOC_BOOL;
	v.u.b = b;
	return lora_doc_map_put(map, key, &v);
}

/* ------------------------------------------------------------ JSON writer */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if invalid
 * (overlong forms, surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_len(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t k;
	uint32_t v, min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if ((c & 0xE0) == 0xC0) {
		k = 2;
		v = c & 0x1F;
		min = 0x80;
	} else if ((c & 0xF0) == 0xE0) {
		k = 3;
		v = c & 0x0F;
		min = 0x800;
	} else if ((c & 0xF8) == 0xF0) {
		k = 4;
		v = c & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	if (n < k)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		v = (v << 6) | (s[i] & 0x3F);
	}
	if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
		return 0;
	*cp = v;
	return k;
}

int lora_json_write_string(FILE *f, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	if (!s)
		len = 0;
	putc('"', f);
	size_t i = 0;
	while (i < len) {
		/* copy the longest run that needs no escaping in one go */
		size_t j = i;
		while (j < len && p[j] >= 0x20 && p[j] < 0x7F && p[j] != '"' && p[j] != '\\')
			j++;
		if (j > i) {
			fwrite(p + i, 1, j - i, f);
			i = j;
			continue;
		}
		unsigned char c = p[i];
		if (c == '"' || c == '\\') {
			putc('\\', f);
			putc(c, f);
			i++;
		} else if (c < 0x20 || c == 0x7F) {
			switch (c) {
			case '\b': fputs("\\b", f); break;
			case '\f': fputs("\\f", f); break;
			case '\n': fputs("\\n", f); break;
			case '\r': fputs("\\r", f); break;
			case '\t': fputs("\\t", f); break;
			default: fprintf(f, "\\u%04x", c); break;
			}
			i++;
		} else {
			uint32_t cp;
			size_t k = utf8_len(p + i, len - i, &cp);
			if (k == 0) {
				fputs("\\ufffd", f);
				i++;
			} else if (cp == 0x85 || cp == 0x2028 || cp == 0x2029) {
				fprintf(f, "\\u%04x", (unsigned)cp);
				i += k;
			} else {
				fwrite(p + i, 1, k, f);
				i += k;
			}
		}
	}
	putc('"', f);
	return ferror(f) ? LORA_EIO : 0;
}

static void write_double(FILE *f, double v)
{
	if (!isfinite(v)) {
		fputs("null", f);
		return;
	}
	char buf[64];
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, sizeof buf, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	fputs(buf, f);
	if (!strpbrk(buf, ".eEn"))
		fputs(".0", f);
}

static void write_base64(FILE *f, const unsigned char *s, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	putc('"', f);
	size_t i = 0;
	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
		putc(tab[v >> 18], f);
		putc(tab[(v >> 12) & 63], f);
		putc(tab[(v >> 6) & 63], f);
		putc(tab[v & 63], f);
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)s[i] << 16;
		putc(tab[v >> 18], f);
		putc(tab[(v >> 12) & 63], f);
		fputs("==", f);
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
		putc(tab[v >> 18], f);
		putc(tab[(v >> 12) & 63], f);
		putc(tab[(v >> 6) & 63], f);
		putc('=', f);
	}
	putc('"', f);
}

static void newline_indent(FILE *f, int indent, int level)
{
	putc('\n', f);
	for (int i = 0; i < indent * level; i++)
		putc(' ', f);
}

/* Iterative would be nicer, but depth is bounded by what the parser accepts
 * (256) or what code builds, so recursion is fine here. */
static void write_node(FILE *f, const struct lora_doc *d, int indent, int level)
{
	switch (d->type) {
	case LORA_DOC_NULL:
		fputs("null", f);
		break;
	case LORA_DOC_BOOL:
		fputs(d->u.b ? "true" : "false", f);
		break;
	case LORA_DOC_INT:
		fprintf(f, "%lld", (long long)d->u.i);
		break;
	case LORA_DOC_FLOAT:
		write_double(f, d->u.f);
		break;
	case LORA_DOC_STRING:
		lora_json_write_string(f, d->u.str.s, d->u.str.len);
		break;
	case LORA_DOC_BIN:
		write_base64(f, (const unsigned char *)d->u.str.s, d->u.str.len);
		break;
	case LORA_DOC_ARRAY:
		putc('[', f);
		for (size_t i = 0; i < d->u.arr.n; i++) {
			if (i)
				putc(',', f);
			if (indent > 0)
				newline_indent(f, indent, level + 1);
			write_node(f, &d->u.arr.items[i], indent, level + 1);
		}
		if (indent > 0 && d->u.arr.n)
			newline_indent(f, indent, level);
		putc(']', f);
		break;
	case LORA_DOC_MAP:
		putc('{', f);
		for (size_t i = 0; i < d->u.map.n; i++) {
			if (i)
				putc(',', f);
			if (indent > 0)
				newline_indent(f, indent, level + 1);
			lora_json_write_string(f, d->u.map.keys[i], strlen(d->u.map.keys[i]));
			fputs(indent > 0 ? ": " : ":", f);
			write_node(f, &d->u.map.vals[i], indent, level + 1);
		}
		if (indent > 0 && d->u.map.n)
			newline_indent(f, indent, level);
		putc('}', f);
		break;
	}
}

int lora_doc_write_json(FILE *f, const struct lora_doc *d, int indent)
{
	if (!d)
		fputs("null", f);
	else
		write_node(f, d, indent, 0);
	return ferror(f) ? LORA_EIO : 0;
}
