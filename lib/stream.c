/*
 * stream — the lora record stream (DESIGN.md §2, man/lora-stream.5): a
 * concatenation of msgpack maps, one per record, each with a string "kind".
 *
 * Reading. Bytes are fed to a msgpack_unpacker a chunk at a time, and a small
 * byte-level scanner walks them first to find where each record ends: it only
 * counts the items and payload bytes that headers announce, so it needs no
 * stack. The unpacker is asked to parse a record only once the scanner has
 * seen all of its bytes. That way a garbage header that announces a 4-billion
 * element array can never make msgpack-c allocate for it (the record would
 * have to be that long first), a truncated record is told apart from a clean
 * end of stream at any byte offset, and the buffer only ever holds the
 * current record and the start of the next (msgpack-c grows it by doubling).
 * Each record is then decoded and validated into struct lora_record (its
 * tensor data copied out); keys a kind does not define are kept as lora_doc
 * trees, except those inside a tensor's {dtype, shape, data} map, which are
 * kept as their msgpack bytes (lora_module.a_extra/b_extra) and written back
 * after data unchanged.
 *
 * Writing. Records are packed straight into the FILE through a msgpack_packer
 * callback (tensor data is written from the caller's buffer, never copied),
 * then the FILE is flushed; the first failed write or flush is reported.
 *
 * Limits: nesting depth 32 (msgpack-c's), ext types refused (except inside
 * a tensor map's own extra keys, kept as bytes), map keys in free-form fields
 * must be strings, integers must fit int64.
 */
#include "stream.h"

#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <sys/stat.h>

#define READ_INIT ((size_t)1 << 13)	/* unpacker buffer to start with */
#define READ_MIN ((size_t)1 << 12)	/* free space to ask for before each read */
#define PENDING_MAX ((uint64_t)1 << 40)	/* more announced items than this: garbage */

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

static char *dup_n(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p) {
		if (n)
			memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

/* msgpack-c may give a NULL pointer for an empty string: never pass it on. */
static bool has_nul(const char *p, size_t n)
{
	return n && memchr(p, '\0', n) != NULL;
}

static bool obj_is_str(const msgpack_object *o, const char *s)
{
	size_t n = strlen(s);
	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
	       (n == 0 || memcmp(o->via.str.ptr, s, n) == 0);
}

static const char *obj_type_name(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "a bool";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "a float";
	case MSGPACK_OBJECT_STR: return "a string";
	case MSGPACK_OBJECT_ARRAY: return "an array";
	case MSGPACK_OBJECT_MAP: return "a map";
	case MSGPACK_OBJECT_BIN: return "bin";
	case MSGPACK_OBJECT_EXT: return "an ext value";
	}
	return "?";
}

/* Quote a msgpack string key for messages (truncated, NULs shown as '?'). */
static const char *key_str(const msgpack_object *k, char *buf, size_t len)
{
	size_t n = k->via.str.size < len - 1 ? k->via.str.size : len - 1;
	for (size_t i = 0; i < n; i++)
		buf[i] = k->via.str.ptr[i] ? k->via.str.ptr[i] : '?';
	buf[n] = '\0';
	return buf;
}

static int get_string(const msgpack_object *o, const char *what, char **out,
		      struct lora_err *err)
{
	if (o->type != MSGPACK_OBJECT_STR)
		return lora_errf(err, LORA_EFORMAT, "'%s' must be a string, not %s", what,
				 obj_type_name(o));
	if (has_nul(o->via.str.ptr, o->via.str.size))
		return lora_errf(err, LORA_EFORMAT, "'%s' contains a NUL byte", what);
	*out = dup_n(o->via.str.ptr, o->via.str.size);
	if (!*out)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	return 0;
}

static int get_int(const msgpack_object *o, const char *what, int64_t *out,
		   struct lora_err *err)
{
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		if (o->via.u64 > (uint64_t)INT64_MAX)
			return lora_errf(err, LORA_EFORMAT, "'%s' is out of range", what);
		*out = (int64_t)o->via.u64;
		return 0;
	}
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		*out = o->via.i64;
		return 0;
	}
	return lora_errf(err, LORA_EFORMAT, "'%s' must be an integer, not %s", what,
			 obj_type_name(o));
}

/* A number (int or float). nil_nan: accept nil as NaN. */
static int get_num(const msgpack_object *o, const char *what, bool nil_nan, double *out,
		   struct lora_err *err)
{
	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return 0;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return 0;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return 0;
	case MSGPACK_OBJECT_NIL:
		if (nil_nan) {
			*out = NAN;
			return 0;
		}
		break;
	default:
		break;
	}
	return lora_errf(err, LORA_EFORMAT, "'%s' must be a number, not %s", what,
			 obj_type_name(o));
}

static int cmp_key(const void *x, const void *y)
{
	const msgpack_object *a = *(const msgpack_object *const *)x;
	const msgpack_object *b = *(const msgpack_object *const *)y;
	size_t n = a->via.str.size < b->via.str.size ? a->via.str.size : b->via.str.size;
	int c = n ? memcmp(a->via.str.ptr, b->via.str.ptr, n) : 0;
	if (c)
		return c;
	return (a->via.str.size > b->via.str.size) - (a->via.str.size < b->via.str.size);
}

/* Every key a string without NULs, no key twice. `what` names the map. */
static int check_keys(const msgpack_object_map *m, const char *what, struct lora_err *err)
{
	char kb[64];
	for (uint32_t i = 0; i < m->size; i++) {
		const msgpack_object *k = &m->ptr[i].key;
		if (k->type != MSGPACK_OBJECT_STR)
			return lora_errf(err, LORA_EFORMAT, "%s has a key that is %s, not a string",
					 what, obj_type_name(k));
		if (has_nul(k->via.str.ptr, k->via.str.size))
			return lora_errf(err, LORA_EFORMAT, "%s has a key with a NUL byte", what);
	}
	if (m->size <= 16) {
		for (uint32_t i = 0; i < m->size; i++)
			for (uint32_t j = i + 1; j < m->size; j++)
				if (!cmp_key(&(const msgpack_object *){ &m->ptr[i].key },
					     &(const msgpack_object *){ &m->ptr[j].key }))
					return lora_errf(err, LORA_EFORMAT, "%s has key '%s' twice",
							 what, key_str(&m->ptr[i].key, kb, sizeof kb));
		return 0;
	}
	const msgpack_object **keys = malloc(m->size * sizeof *keys);
	if (!keys)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	for (uint32_t i = 0; i < m->size; i++)
		keys[i] = &m->ptr[i].key;
	qsort(keys, m->size, sizeof *keys, cmp_key);
	int rc = 0;
	for (uint32_t i = 1; i < m->size && !rc; i++)
		if (!cmp_key(&keys[i - 1], &keys[i]))
			rc = lora_errf(err, LORA_EFORMAT, "%s has key '%s' twice", what,
				       key_str(keys[i], kb, sizeof kb));
	free(keys);
	return rc;
}

/* ------------------------------------------------------------------ */
/* msgpack <-> doc                                                      */

static int obj_to_doc(const msgpack_object *o, struct lora_doc *d, const char *what,
		      struct lora_err *err)
{
	memset(d, 0, sizeof *d);
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		d->type = LORA_DOC_NULL;
		return 0;
	case MSGPACK_OBJECT_BOOLEAN:
		d->type = LORA_DOC_BOOL;
		d->u.b = o->via.boolean;
		return 0;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > (uint64_t)INT64_MAX) {	/* keep the value, as a float */
			d->type = LORA_DOC_FLOAT;
			d->u.f = (double)o->via.u64;
			return 0;
		}
		d->type = LORA_DOC_INT;
		d->u.i = (int64_t)o->via.u64;
		return 0;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		d->type = LORA_DOC_INT;
		d->u.i = o->via.i64;
		return 0;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		d->type = LORA_DOC_FLOAT;
		d->u.f = o->via.f64;
		return 0;
	case MSGPACK_OBJECT_STR:
	case MSGPACK_OBJECT_BIN: {
		const char *p = o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : o->via.bin.ptr;
		size_t n = o->type == MSGPACK_OBJECT_STR ? o->via.str.size : o->via.bin.size;
		d->u.str.s = dup_n(p, n);
		if (!d->u.str.s)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		d->u.str.len = n;
		d->type = o->type == MSGPACK_OBJECT_STR ? LORA_DOC_STRING : LORA_DOC_BIN;
		return 0;
	}
	case MSGPACK_OBJECT_ARRAY: {
		d->type = LORA_DOC_ARRAY;
		uint32_t n = o->via.array.size;
		if (!n)
			return 0;
		d->u.arr.items = calloc(n, sizeof *d->u.arr.items);
		if (!d->u.arr.items)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		for (uint32_t i = 0; i < n; i++) {
			d->u.arr.n = i + 1;
			int rc = obj_to_doc(&o->via.array.ptr[i], &d->u.arr.items[i], what, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	case MSGPACK_OBJECT_MAP: {
		d->type = LORA_DOC_MAP;
		const msgpack_object_map *m = &o->via.map;
		int rc = check_keys(m, what, err);
		if (rc)
			return rc;
		if (!m->size)
			return 0;
		d->u.map.keys = calloc(m->size, sizeof *d->u.map.keys);
		d->u.map.vals = calloc(m->size, sizeof *d->u.map.vals);
		if (!d->u.map.keys || !d->u.map.vals) {
			free(d->u.map.keys);
			free(d->u.map.vals);
			d->u.map.keys = NULL;
			d->u.map.vals = NULL;
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		}
		for (uint32_t i = 0; i < m->size; i++) {
			d->u.map.n = i + 1;
			const msgpack_object *k = &m->ptr[i].key;
			d->u.map.keys[i] = dup_n(k->via.str.ptr, k->via.str.size);
			if (!d->u.map.keys[i])
				return lora_errf(err, LORA_ENOMEM, "out of memory");
			rc = obj_to_doc(&m->ptr[i].val, &d->u.map.vals[i], what, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	case MSGPACK_OBJECT_EXT:
		break;
	}
	return lora_errf(err, LORA_EUNSUPPORTED, "%s holds %s, which lora streams do not use",
			 what, obj_type_name(o));
}

/* A new heap doc from o, or NULL with err set. */
static struct lora_doc *obj_to_new_doc(const msgpack_object *o, const char *what,
				       struct lora_err *err, int *rc)
{
	struct lora_doc *d = calloc(1, sizeof *d);
	if (!d) {
		*rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		return NULL;
	}
	*rc = obj_to_doc(o, d, what, err);
	if (*rc) {
		lora_doc_free(d);
		return NULL;
	}
	return d;
}

/* Add key/val (converted) to *extra, creating the map on first use. */
static int extra_put(struct lora_doc **extra, const msgpack_object *key,
		     const msgpack_object *val, struct lora_err *err)
{
	char kb[64];
	char what[96];
	snprintf(what, sizeof what, "key '%s'", key_str(key, kb, sizeof kb));
	if (!*extra) {
		*extra = calloc(1, sizeof **extra);
		if (!*extra)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		lora_doc_init_map(*extra);
	}
	struct lora_doc v;
	int rc = obj_to_doc(val, &v, what, err);
	if (rc) {
		lora_doc_clear(&v);
		return rc;
	}
	char *k = dup_n(key->via.str.ptr, key->via.str.size);
	if (!k) {
		lora_doc_clear(&v);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	rc = lora_doc_map_put(*extra, k, &v);	/* moves v in, or clears it */
	free(k);
	return rc ? lora_errf(err, LORA_ENOMEM, "out of memory") : 0;
}

/* ------------------------------------------------------------------ */
/* records: free, check, clone                                          */

double lora_module_scale(const struct lora_adapter *a, const struct lora_module *m)
{
	double r = m->r > 0 ? m->r : 1;
	return a->rslora ? m->alpha / sqrt(r) : m->alpha / r;
}

static void module_free(struct lora_module *m)
{
	free(m->module);
	lora_tensor_free(&m->a);
	lora_tensor_free(&m->b);
	lora_doc_free(m->extra);
	lora_doc_free(m->a_extra);
	lora_doc_free(m->b_extra);
	memset(m, 0, sizeof *m);
}

void lora_adapter_free(struct lora_adapter *a)
{
	if (!a)
		return;
	free(a->name);
	free(a->base);
	for (size_t i = 0; i < a->n_modules; i++)
		module_free(&a->modules[i]);
	free(a->modules);
	lora_doc_free(a->meta);
	lora_doc_free(a->extra);
	memset(a, 0, sizeof *a);
}

void lora_weights_free(struct lora_weights *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n; i++)
		free(w->names ? w->names[i] : NULL);
	free(w->names);
	free(w->w);
	free(w->method);
	lora_doc_free(w->meta);
	lora_doc_free(w->extra);
	memset(w, 0, sizeof *w);
}

void lora_score_free(struct lora_score *s)
{
	if (!s)
		return;
	free(s->name);
	free(s->per_example);
	for (size_t i = 0; i < s->n_predictions; i++)
		free(s->predictions ? s->predictions[i] : NULL);
	free(s->predictions);
	lora_doc_free(s->meta);
	lora_doc_free(s->extra);
	memset(s, 0, sizeof *s);
}

void lora_record_free(struct lora_record *rec)
{
	if (!rec)
		return;
	switch (rec->kind) {
	case LORA_REC_ADAPTER: lora_adapter_free(&rec->u.adapter); break;
	case LORA_REC_WEIGHTS: lora_weights_free(&rec->u.weights); break;
	case LORA_REC_SCORE: lora_score_free(&rec->u.score); break;
	case LORA_REC_OTHER: break;
	}
	lora_doc_free(rec->extra);
	memset(rec, 0, sizeof *rec);
}

/* One factor's shape and byte length. which: "a" or "b". */
static int check_factor(const struct lora_tensor *t, const char *mod, const char *which,
			struct lora_err *err)
{
	char sb[96];
	if (t->dtype != LORA_F32 && t->dtype != LORA_F16 && t->dtype != LORA_BF16)
		return lora_errf(err, LORA_EINVAL, "module '%s': %s has an unknown dtype", mod,
				 which);
	if (t->ndim != 2)
		return lora_errf(err, LORA_EINVAL, "module '%s': %s has shape %s, expected 2 dimensions",
				 mod, which, lora_shape_str(t->shape, t->ndim, sb, sizeof sb));
	if (t->shape[0] < 1 || t->shape[1] < 1)
		return lora_errf(err, LORA_EINVAL, "module '%s': %s has shape %s, dimensions must be positive",
				 mod, which, lora_shape_str(t->shape, t->ndim, sb, sizeof sb));
	size_t n, bytes;
	if (lora_shape_numel(t->shape, 2, &n) || lora_size_mul(n, lora_dtype_size(t->dtype), &bytes))
		return lora_errf(err, LORA_EINVAL, "module '%s': %s has shape %s, which is too large",
				 mod, which, lora_shape_str(t->shape, t->ndim, sb, sizeof sb));
	if (bytes != t->nbytes)
		return lora_errf(err, LORA_EINVAL,
				 "module '%s': %s has shape %s %s, which needs %zu bytes of data, but has %zu",
				 mod, which, lora_shape_str(t->shape, 2, sb, sizeof sb),
				 lora_dtype_name(t->dtype), bytes, t->nbytes);
	if (bytes && !t->data)
		return lora_errf(err, LORA_EINVAL, "module '%s': %s has no data", mod, which);
	return 0;
}

static int cmp_modname(const void *x, const void *y)
{
	return strcmp((*(const struct lora_module *const *)x)->module,
		      (*(const struct lora_module *const *)y)->module);
}

int lora_adapter_check(const struct lora_adapter *a, struct lora_err *err)
{
	if (!a->name || !a->name[0])
		return lora_errf(err, LORA_EINVAL, "adapter has no name");
	if (a->r < 1)
		return lora_errf(err, LORA_EINVAL, "adapter '%s': r is %d, must be at least 1",
				 a->name, a->r);
	if (!isfinite(a->alpha))
		return lora_errf(err, LORA_EINVAL, "adapter '%s': alpha is not finite", a->name);
	if (a->n_modules && !a->modules)
		return lora_errf(err, LORA_EINVAL, "adapter '%s': no modules", a->name);
	for (size_t i = 0; i < a->n_modules; i++) {
		const struct lora_module *m = &a->modules[i];
		char sa[96], sb[96];
		if (!m->module || !m->module[0])
			return lora_errf(err, LORA_EINVAL, "adapter '%s': module %zu has no name",
					 a->name, i + 1);
		if (m->r < 1)
			return lora_errf(err, LORA_EINVAL, "adapter '%s': module '%s': r is %d, must be at least 1",
					 a->name, m->module, m->r);
		if (!isfinite(m->alpha))
			return lora_errf(err, LORA_EINVAL, "adapter '%s': module '%s': alpha is not finite",
					 a->name, m->module);
		int rc = check_factor(&m->a, m->module, "a", err);
		if (!rc)
			rc = check_factor(&m->b, m->module, "b", err);
		if (rc)
			return lora_err_prefix(err, rc, "adapter '%s': ", a->name);
		if (m->a.shape[0] != m->b.shape[1])
			return lora_errf(err, LORA_EINVAL,
					 "adapter '%s': module '%s': a is %s and b is %s: their ranks differ",
					 a->name, m->module, lora_shape_str(m->a.shape, 2, sa, sizeof sa),
					 lora_shape_str(m->b.shape, 2, sb, sizeof sb));
		if (m->a.shape[0] != m->r)
			return lora_errf(err, LORA_EINVAL,
					 "adapter '%s': module '%s': a and b have rank %lld but r is %d",
					 a->name, m->module, (long long)m->a.shape[0], m->r);
	}
	if (a->n_modules > 1) {
		const struct lora_module **v = malloc(a->n_modules * sizeof *v);
		if (!v)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		for (size_t i = 0; i < a->n_modules; i++)
			v[i] = &a->modules[i];
		qsort(v, a->n_modules, sizeof *v, cmp_modname);
		int rc = 0;
		for (size_t i = 1; i < a->n_modules && !rc; i++)
			if (!strcmp(v[i - 1]->module, v[i]->module))
				rc = lora_errf(err, LORA_EINVAL, "adapter '%s': module '%s' appears twice",
					       a->name, v[i]->module);
		free(v);
		if (rc)
			return rc;
	}
	return 0;
}

static int clone_doc(struct lora_doc **dst, const struct lora_doc *src, struct lora_err *err)
{
	*dst = NULL;
	if (!src)
		return 0;
	*dst = lora_doc_clone(src);
	return *dst ? 0 : lora_errf(err, LORA_ENOMEM, "out of memory");
}

static int clone_str(char **dst, const char *src, struct lora_err *err)
{
	*dst = NULL;
	if (!src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : lora_errf(err, LORA_ENOMEM, "out of memory");
}

int lora_adapter_clone(struct lora_adapter *dst, const struct lora_adapter *src,
		       struct lora_err *err)
{
	struct lora_adapter a = *src;
	a.name = a.base = NULL;
	a.modules = NULL;
	a.n_modules = 0;
	a.meta = a.extra = NULL;
	int rc = clone_str(&a.name, src->name, err);
	if (!rc)
		rc = clone_str(&a.base, src->base, err);
	if (!rc)
		rc = clone_doc(&a.meta, src->meta, err);
	if (!rc)
		rc = clone_doc(&a.extra, src->extra, err);
	if (!rc && src->n_modules) {
		a.modules = calloc(src->n_modules, sizeof *a.modules);
		if (!a.modules)
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	for (size_t i = 0; !rc && i < src->n_modules; i++) {
		const struct lora_module *s = &src->modules[i];
		struct lora_module *m = &a.modules[i];
		a.n_modules = i + 1;
		m->r = s->r;
		m->alpha = s->alpha;
		rc = clone_str(&m->module, s->module, err);
		if (!rc)
			rc = lora_tensor_copy(&m->a, &s->a, err);
		if (!rc)
			rc = lora_tensor_copy(&m->b, &s->b, err);
		if (!rc)
			rc = clone_doc(&m->extra, s->extra, err);
		if (!rc)
			rc = clone_doc(&m->a_extra, s->a_extra, err);
		if (!rc)
			rc = clone_doc(&m->b_extra, s->b_extra, err);
	}
	if (rc) {
		lora_adapter_free(&a);
		return rc;
	}
	*dst = a;
	return 0;
}

int lora_adapter_convert(struct lora_adapter *a, enum lora_dtype dt, struct lora_err *err)
{
	for (size_t i = 0; i < a->n_modules; i++) {
		struct lora_module *m = &a->modules[i];
		int rc = m->a.dtype == dt ? 0 : lora_tensor_convert(&m->a, dt, err);
		if (!rc && m->b.dtype != dt)
			rc = lora_tensor_convert(&m->b, dt, err);
		if (rc)
			return lora_err_prefix(err, rc, "adapter '%s': module '%s': ", a->name,
					       m->module);
	}
	return 0;
}

void lora_adapter_size(const struct lora_adapter *a, uint64_t *params, uint64_t *bytes)
{
	uint64_t p = 0, b = 0;
	for (size_t i = 0; i < a->n_modules; i++) {
		const struct lora_module *m = &a->modules[i];
		p += (uint64_t)(m->a.shape[0] * m->a.shape[1] + m->b.shape[0] * m->b.shape[1]);
		b += m->a.nbytes + m->b.nbytes;
	}
	*params = p;
	*bytes = b;
}

const struct lora_module *lora_adapter_find(const struct lora_adapter *a, const char *module)
{
	for (size_t i = 0; i < a->n_modules; i++)
		if (a->modules[i].module && !strcmp(a->modules[i].module, module))
			return &a->modules[i];
	return NULL;
}

/* ------------------------------------------------------------------ */
/* decoding one record                                                  */

/* Add key -> the msgpack encoding of val (bin) to *extra, creating the map on
 * first use. msgpack-c re-encodes the value in msgpack's shortest form and
 * keeps float32 as float32, so a value as any msgpack library writes it comes
 * out byte for byte. */
static int raw_extra_put(struct lora_doc **extra, const msgpack_object *key,
			 const msgpack_object *val, struct lora_err *err)
{
	if (!*extra) {
		if (!(*extra = calloc(1, sizeof **extra)))
			return lora_errf(err, LORA_ENOMEM, "out of memory");
		lora_doc_init_map(*extra);
	}
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	struct lora_doc v = { .type = LORA_DOC_BIN };
	char *k = NULL;
	int rc = LORA_ENOMEM;
	if (msgpack_pack_object(&pk, *val) == 0 && sb.size &&
	    (k = dup_n(key->via.str.ptr, key->via.str.size)) &&
	    (v.u.str.s = dup_n(sb.data, sb.size))) {
		v.u.str.len = sb.size;
		/* lora_doc_map_put moves v in, or clears it */
		rc = lora_doc_map_put(*extra, k, &v) ? LORA_ENOMEM : 0;
	} else {
		free(v.u.str.s);
	}
	free(k);
	msgpack_sbuffer_destroy(&sb);
	return rc ? lora_errf(err, LORA_ENOMEM, "out of memory") : 0;
}

/* {dtype, shape, data, ...} -> owned tensor; other keys go to *extra. */
static int dec_tensor(const msgpack_object *o, const char *mod, const char *which,
		      struct lora_tensor *t, struct lora_doc **extra, struct lora_err *err)
{
	char what[64];
	memset(t, 0, sizeof *t);
	snprintf(what, sizeof what, "tensor %s", which);
	if (o->type != MSGPACK_OBJECT_MAP)
		return lora_errf(err, LORA_EFORMAT, "module '%s': '%s' must be a map, not %s", mod,
				 which, obj_type_name(o));
	int rc = check_keys(&o->via.map, what, err);
	if (rc)
		return lora_err_prefix(err, rc, "module '%s': ", mod);
	const msgpack_object *dt = NULL, *shape = NULL, *data = NULL;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];
		if (obj_is_str(&kv->key, "dtype"))
			dt = &kv->val;
		else if (obj_is_str(&kv->key, "shape"))
			shape = &kv->val;
		else if (obj_is_str(&kv->key, "data"))
			data = &kv->val;
		else if ((rc = raw_extra_put(extra, &kv->key, &kv->val, err)))
			return rc;
	}
	if (!dt || !shape || !data)
		return lora_errf(err, LORA_EFORMAT, "module '%s': %s has no '%s'", mod, which,
				 !dt ? "dtype" : !shape ? "shape" : "data");
	char dname[16];
	if (dt->type != MSGPACK_OBJECT_STR || dt->via.str.size >= sizeof dname)
		return lora_errf(err, LORA_EFORMAT, "module '%s': %s: 'dtype' must be \"f32\", \"f16\" or \"bf16\"",
				 mod, which);
	if (dt->via.str.size)
		memcpy(dname, dt->via.str.ptr, dt->via.str.size);
	dname[dt->via.str.size] = '\0';
	if (strcmp(dname, "f32") && strcmp(dname, "f16") && strcmp(dname, "bf16"))
		return lora_errf(err, LORA_EUNSUPPORTED,
				 "module '%s': %s has dtype '%s', expected f32, f16 or bf16", mod,
				 which, dname);
	lora_dtype_parse(dname, &t->dtype);
	if (shape->type != MSGPACK_OBJECT_ARRAY || shape->via.array.size != 2)
		return lora_errf(err, LORA_EFORMAT,
				 "module '%s': %s: 'shape' must be an array of 2 integers", mod, which);
	t->ndim = 2;
	for (int i = 0; i < 2; i++) {
		int64_t v;
		if (get_int(&shape->via.array.ptr[i], "shape", &v, NULL) || v < 0)
			return lora_errf(err, LORA_EFORMAT,
					 "module '%s': %s: 'shape' must hold non-negative integers", mod,
					 which);
		t->shape[i] = v;
	}
	if (data->type != MSGPACK_OBJECT_BIN)
		return lora_errf(err, LORA_EFORMAT, "module '%s': %s: 'data' must be bin, not %s", mod,
				 which, obj_type_name(data));
	t->nbytes = data->via.bin.size;
	t->data = malloc(t->nbytes ? t->nbytes : 1);
	if (!t->data)
		return lora_errf(err, LORA_ENOMEM, "out of memory (%zu bytes)", t->nbytes);
	if (t->nbytes)
		memcpy(t->data, data->via.bin.ptr, t->nbytes);
	t->owned = 1;
	return 0;
}

static int dec_module(const msgpack_object *o, size_t idx, const struct lora_adapter *ad,
		      struct lora_module *m, struct lora_err *err)
{
	char what[64];
	snprintf(what, sizeof what, "tensors[%zu]", idx);
	if (o->type != MSGPACK_OBJECT_MAP)
		return lora_errf(err, LORA_EFORMAT, "%s must be a map, not %s", what,
				 obj_type_name(o));
	const msgpack_object_map *mp = &o->via.map;
	int rc = check_keys(mp, what, err);
	if (rc)
		return rc;
	const msgpack_object *a = NULL, *b = NULL, *r = NULL, *alpha = NULL;
	for (uint32_t i = 0; i < mp->size; i++) {
		const msgpack_object_kv *kv = &mp->ptr[i];
		if (obj_is_str(&kv->key, "module"))
			rc = get_string(&kv->val, "module", &m->module, err);
		else if (obj_is_str(&kv->key, "a"))
			a = &kv->val;
		else if (obj_is_str(&kv->key, "b"))
			b = &kv->val;
		else if (obj_is_str(&kv->key, "r"))
			r = kv->val.type == MSGPACK_OBJECT_NIL ? NULL : &kv->val;
		else if (obj_is_str(&kv->key, "alpha"))
			alpha = kv->val.type == MSGPACK_OBJECT_NIL ? NULL : &kv->val;
		else
			rc = extra_put(&m->extra, &kv->key, &kv->val, err);
		if (rc)
			return lora_err_prefix(err, rc, "%s: ", what);
	}
	if (!m->module)
		return lora_errf(err, LORA_EFORMAT, "%s has no 'module'", what);
	if (!m->module[0])
		return lora_errf(err, LORA_EFORMAT, "%s: 'module' is empty", what);
	m->r = ad->r;
	m->alpha = ad->alpha;
	if (r) {
		int64_t v;
		if ((rc = get_int(r, "r", &v, err)))
			return lora_err_prefix(err, rc, "module '%s': ", m->module);
		if (v < 1 || v > INT32_MAX)
			return lora_errf(err, LORA_EINVAL, "module '%s': r is %lld, must be at least 1",
					 m->module, (long long)v);
		m->r = (int)v;
	}
	if (alpha && (rc = get_num(alpha, "alpha", false, &m->alpha, err)))
		return lora_err_prefix(err, rc, "module '%s': ", m->module);
	if (!a || !b)
		return lora_errf(err, LORA_EFORMAT, "module '%s' has no '%s'", m->module, !a ? "a" : "b");
	if ((rc = dec_tensor(a, m->module, "a", &m->a, &m->a_extra, err)))
		return rc;
	return dec_tensor(b, m->module, "b", &m->b, &m->b_extra, err);
}

static int dec_adapter(const msgpack_object_map *mp, struct lora_adapter *a, struct lora_err *err)
{
	const msgpack_object *tensors = NULL, *r = NULL, *alpha = NULL;
	int rc = 0;
	for (uint32_t i = 0; i < mp->size && !rc; i++) {
		const msgpack_object_kv *kv = &mp->ptr[i];
		if (obj_is_str(&kv->key, "kind"))
			continue;
		if (obj_is_str(&kv->key, "name"))
			rc = get_string(&kv->val, "name", &a->name, err);
		else if (obj_is_str(&kv->key, "base")) {
			if (kv->val.type != MSGPACK_OBJECT_NIL)
				rc = get_string(&kv->val, "base", &a->base, err);
		} else if (obj_is_str(&kv->key, "r"))
			r = &kv->val;
		else if (obj_is_str(&kv->key, "alpha"))
			alpha = &kv->val;
		else if (obj_is_str(&kv->key, "rslora")) {
			if (kv->val.type == MSGPACK_OBJECT_NIL)
				continue;
			if (kv->val.type != MSGPACK_OBJECT_BOOLEAN)
				rc = lora_errf(err, LORA_EFORMAT, "'rslora' must be a bool, not %s",
					       obj_type_name(&kv->val));
			else
				a->rslora = kv->val.via.boolean;
		} else if (obj_is_str(&kv->key, "tensors"))
			tensors = &kv->val;
		else if (obj_is_str(&kv->key, "meta")) {
			if (kv->val.type == MSGPACK_OBJECT_NIL)
				continue;
			if (kv->val.type != MSGPACK_OBJECT_MAP)
				rc = lora_errf(err, LORA_EFORMAT, "'meta' must be a map, not %s",
					       obj_type_name(&kv->val));
			else
				a->meta = obj_to_new_doc(&kv->val, "meta", err, &rc);
		} else
			rc = extra_put(&a->extra, &kv->key, &kv->val, err);
	}
	if (rc)
		return rc;
	if (!a->name)
		return lora_errf(err, LORA_EFORMAT, "adapter has no 'name'");
	if (!a->name[0])
		return lora_errf(err, LORA_EFORMAT, "adapter 'name' is empty");
	if (!r)
		return lora_errf(err, LORA_EFORMAT, "adapter '%s' has no 'r'", a->name);
	int64_t rv;
	if ((rc = get_int(r, "r", &rv, err)))
		return lora_err_prefix(err, rc, "adapter '%s': ", a->name);
	if (rv < 1 || rv > INT32_MAX)
		return lora_errf(err, LORA_EINVAL, "adapter '%s': r is %lld, must be at least 1",
				 a->name, (long long)rv);
	a->r = (int)rv;
	if (!alpha)
		return lora_errf(err, LORA_EFORMAT, "adapter '%s' has no 'alpha'", a->name);
	if ((rc = get_num(alpha, "alpha", false, &a->alpha, err)))
		return lora_err_prefix(err, rc, "adapter '%s': ", a->name);
	if (!tensors)
		return lora_errf(err, LORA_EFORMAT, "adapter '%s' has no 'tensors'", a->name);
	if (tensors->type != MSGPACK_OBJECT_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "adapter '%s': 'tensors' must be an array, not %s",
				 a->name, obj_type_name(tensors));
	uint32_t n = tensors->via.array.size;
	if (n) {
		a->modules = calloc(n, sizeof *a->modules);
		if (!a->modules)
			return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < n; i++) {
		a->n_modules = i + 1;
		if ((rc = dec_module(&tensors->via.array.ptr[i], i, a, &a->modules[i], err)))
			return lora_err_prefix(err, rc, "adapter '%s': ", a->name);
	}
	return lora_adapter_check(a, err);
}

static int dec_num_array(const msgpack_object *o, const char *what, bool finite,
			 double **out, size_t *n, struct lora_err *err)
{
	if (o->type != MSGPACK_OBJECT_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "'%s' must be an array, not %s", what,
				 obj_type_name(o));
	size_t k = o->via.array.size;
	*out = calloc(k ? k : 1, sizeof **out);
	if (!*out)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	*n = k;
	for (size_t i = 0; i < k; i++) {
		char w[64];
		snprintf(w, sizeof w, "%s[%zu]", what, i);
		int rc = get_num(&o->via.array.ptr[i], w, !finite, &(*out)[i], err);
		if (rc)
			return rc;
		if (finite && !isfinite((*out)[i]))
			return lora_errf(err, LORA_EINVAL, "%s is %s: weights must be finite", w,
					 isnan((*out)[i]) ? "NaN" : "infinite");
	}
	return 0;
}

static int dec_str_array(const msgpack_object *o, const char *what, char ***out, size_t *n,
			 struct lora_err *err)
{
	if (o->type != MSGPACK_OBJECT_ARRAY)
		return lora_errf(err, LORA_EFORMAT, "'%s' must be an array, not %s", what,
				 obj_type_name(o));
	size_t k = o->via.array.size;
	*out = calloc(k ? k : 1, sizeof **out);
	if (!*out)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	*n = k;
	for (size_t i = 0; i < k; i++) {
		char w[64];
		snprintf(w, sizeof w, "%s[%zu]", what, i);
		int rc = get_string(&o->via.array.ptr[i], w, &(*out)[i], err);
		if (rc)
			return rc;
	}
	return 0;
}

static int dec_meta(const msgpack_object *v, struct lora_doc **meta, struct lora_err *err)
{
	int rc = 0;
	if (v->type == MSGPACK_OBJECT_NIL)
		return 0;
	if (v->type != MSGPACK_OBJECT_MAP)
		return lora_errf(err, LORA_EFORMAT, "'meta' must be a map, not %s", obj_type_name(v));
	*meta = obj_to_new_doc(v, "meta", err, &rc);
	return rc;
}

static int dec_weights(const msgpack_object_map *mp, struct lora_weights *w, struct lora_err *err)
{
	const msgpack_object *names = NULL, *wv = NULL;
	int rc = 0;
	w->loss = w->objective = NAN;
	for (uint32_t i = 0; i < mp->size && !rc; i++) {
		const msgpack_object_kv *kv = &mp->ptr[i];
		const msgpack_object *v = &kv->val;
		if (obj_is_str(&kv->key, "kind"))
			continue;
		if (obj_is_str(&kv->key, "names"))
			names = v;
		else if (obj_is_str(&kv->key, "w"))
			wv = v;
		else if (obj_is_str(&kv->key, "id")) {
			if (v->type != MSGPACK_OBJECT_NIL) {
				rc = get_int(v, "id", &w->id, err);
				w->has_id = true;
			}
		} else if (obj_is_str(&kv->key, "method")) {
			if (v->type != MSGPACK_OBJECT_NIL)
				rc = get_string(v, "method", &w->method, err);
		} else if (obj_is_str(&kv->key, "loss"))
			rc = get_num(v, "loss", true, &w->loss, err);
		else if (obj_is_str(&kv->key, "objective"))
			rc = get_num(v, "objective", true, &w->objective, err);
		else if (obj_is_str(&kv->key, "evals")) {
			if (v->type != MSGPACK_OBJECT_NIL) {
				rc = get_int(v, "evals", &w->evals, err);
				w->has_evals = true;
			}
		} else if (obj_is_str(&kv->key, "seed")) {
			if (v->type != MSGPACK_OBJECT_NIL) {
				rc = get_int(v, "seed", &w->seed, err);
				w->has_seed = true;
			}
		} else if (obj_is_str(&kv->key, "meta"))
			rc = dec_meta(v, &w->meta, err);
		else
			rc = extra_put(&w->extra, &kv->key, &kv->val, err);
	}
	if (rc)
		return rc;
	if (!names || !wv)
		return lora_errf(err, LORA_EFORMAT, "weights record has no '%s'", !names ? "names" : "w");
	size_t nn = 0, nw = 0;
	if ((rc = dec_str_array(names, "names", &w->names, &nn, err))) {
		w->n = nn;
		return rc;
	}
	w->n = nn;
	if ((rc = dec_num_array(wv, "w", true, &w->w, &nw, err)))
		return rc;
	if (nn != nw)
		return lora_errf(err, LORA_EINVAL, "weights record has %zu names but %zu weights", nn, nw);
	for (size_t i = 0; i < nn; i++) {
		if (!w->names[i][0])
			return lora_errf(err, LORA_EINVAL, "weights record: names[%zu] is empty", i);
		for (size_t j = 0; j < i; j++)
			if (!strcmp(w->names[i], w->names[j]))
				return lora_errf(err, LORA_EINVAL, "weights record names '%s' twice",
						 w->names[i]);
	}
	return 0;
}

static int dec_score(const msgpack_object_map *mp, struct lora_score *s, struct lora_err *err)
{
	int rc = 0;
	bool has_loss = false;
	s->loss = NAN;
	s->accuracy = NAN;
	for (uint32_t i = 0; i < mp->size && !rc; i++) {
		const msgpack_object_kv *kv = &mp->ptr[i];
		const msgpack_object *v = &kv->val;
		if (obj_is_str(&kv->key, "kind"))
			continue;
		if (v->type == MSGPACK_OBJECT_NIL &&
		    (obj_is_str(&kv->key, "tokens") || obj_is_str(&kv->key, "examples") ||
		     obj_is_str(&kv->key, "per_example") || obj_is_str(&kv->key, "predictions")))
			continue;
		if (obj_is_str(&kv->key, "id")) {
			if (v->type != MSGPACK_OBJECT_NIL) {
				rc = get_int(v, "id", &s->id, err);
				s->has_id = true;
			}
		} else if (obj_is_str(&kv->key, "name")) {
			if (v->type != MSGPACK_OBJECT_NIL)
				rc = get_string(v, "name", &s->name, err);
		} else if (obj_is_str(&kv->key, "loss")) {
			rc = get_num(v, "loss", true, &s->loss, err);
			has_loss = true;
		} else if (obj_is_str(&kv->key, "tokens")) {
			rc = get_int(v, "tokens", &s->tokens, err);
			if (!rc && s->tokens < 0)
				rc = lora_errf(err, LORA_EINVAL, "'tokens' is negative");
		} else if (obj_is_str(&kv->key, "examples")) {
			rc = get_int(v, "examples", &s->examples, err);
			if (!rc && s->examples < 0)
				rc = lora_errf(err, LORA_EINVAL, "'examples' is negative");
		} else if (obj_is_str(&kv->key, "per_example")) {
			rc = dec_num_array(v, "per_example", false, &s->per_example,
					   &s->n_per_example, err);
		} else if (obj_is_str(&kv->key, "accuracy")) {
			if (v->type != MSGPACK_OBJECT_NIL) {
				rc = get_num(v, "accuracy", true, &s->accuracy, err);
				s->has_accuracy = true;
			}
		} else if (obj_is_str(&kv->key, "predictions")) {
			rc = dec_str_array(v, "predictions", &s->predictions, &s->n_predictions, err);
		} else if (obj_is_str(&kv->key, "meta"))
			rc = dec_meta(v, &s->meta, err);
		else
			rc = extra_put(&s->extra, &kv->key, &kv->val, err);
	}
	if (rc)
		return rc;
	if (!has_loss)
		return lora_errf(err, LORA_EFORMAT, "score record has no 'loss'");
	return 0;
}

/* Decode a whole record map. */
static int dec_record(const msgpack_object *o, struct lora_record *rec, struct lora_err *err)
{
	if (o->type != MSGPACK_OBJECT_MAP)
		return lora_errf(err, LORA_EFORMAT, "expected a map, found %s", obj_type_name(o));
	const msgpack_object_map *mp = &o->via.map;
	int rc = check_keys(mp, "record", err);
	if (rc)
		return rc;
	const msgpack_object *kind = NULL;
	for (uint32_t i = 0; i < mp->size; i++)
		if (obj_is_str(&mp->ptr[i].key, "kind"))
			kind = &mp->ptr[i].val;
	if (!kind)
		return lora_errf(err, LORA_EFORMAT, "record has no 'kind'");
	if (kind->type != MSGPACK_OBJECT_STR)
		return lora_errf(err, LORA_EFORMAT, "'kind' must be a string, not %s",
				 obj_type_name(kind));
	if (obj_is_str(kind, "adapter")) {
		rec->kind = LORA_REC_ADAPTER;
		return dec_adapter(mp, &rec->u.adapter, err);
	}
	if (obj_is_str(kind, "weights")) {
		rec->kind = LORA_REC_WEIGHTS;
		return dec_weights(mp, &rec->u.weights, err);
	}
	if (obj_is_str(kind, "score")) {
		rec->kind = LORA_REC_SCORE;
		return dec_score(mp, &rec->u.score, err);
	}
	rec->kind = LORA_REC_OTHER;
	rec->extra = obj_to_new_doc(o, "record", err, &rc);
	return rc;
}

/* ------------------------------------------------------------------ */
/* reader                                                               */

struct lora_reader {
	FILE *f;
	char *name;		/* for messages */
	msgpack_unpacker up;
	uint64_t rec_start;	/* absolute offset of up.buffer[up.off]: the next record */
	/* the scanner, over bytes [rec_start, scan_abs) of the current record */
	uint64_t scan_abs;
	uint64_t pending;	/* items announced by headers and not yet seen */
	uint64_t skip;		/* payload bytes still to pass over */
	bool in_rec;
	bool eof;
	bool failed;		/* a previous error: the stream cannot be resynchronised */
	size_t count;		/* records returned so far */
	/* adapter names seen: open-addressing hash set */
	char **names;
	size_t names_cap, names_n;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

/* 1 if inserted, 0 if already present, <0 on ENOMEM. */
static int names_add(struct lora_reader *r, const char *name)
{
	if ((r->names_n + 1) * 2 > r->names_cap) {
		size_t cap = r->names_cap ? r->names_cap * 2 : 64;
		char **t = calloc(cap, sizeof *t);
		if (!t)
			return LORA_ENOMEM;
		for (size_t i = 0; i < r->names_cap; i++) {
			if (!r->names[i])
				continue;
			size_t j = hash_str(r->names[i]) & (cap - 1);
			while (t[j])
				j = (j + 1) & (cap - 1);
			t[j] = r->names[i];
		}
		free(r->names);
		r->names = t;
		r->names_cap = cap;
	}
	size_t j = hash_str(name) & (r->names_cap - 1);
	while (r->names[j]) {
		if (!strcmp(r->names[j], name))
			return 0;
		j = (j + 1) & (r->names_cap - 1);
	}
	r->names[j] = strdup(name);
	if (!r->names[j])
		return LORA_ENOMEM;
	r->names_n++;
	return 1;
}

int lora_reader_open(FILE *f, const char *name, struct lora_reader **out, struct lora_err *err)
{
	*out = NULL;
	struct lora_reader *r = calloc(1, sizeof *r);
	if (!r)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	r->f = f;
	r->name = strdup(!name || !strcmp(name, "-") ? "stdin" : name);
	if (!r->name || !msgpack_unpacker_init(&r->up, READ_INIT)) {
		free(r->name);
		free(r);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	*out = r;
	return 0;
}

void lora_reader_close(struct lora_reader *r)
{
	if (!r)
		return;
	msgpack_unpacker_destroy(&r->up);
	for (size_t i = 0; i < r->names_cap; i++)
		free(r->names[i]);
	free(r->names);
	free(r->name);
	free(r);
}

size_t lora_reader_count(const struct lora_reader *r)
{
	return r->count;
}

uint64_t lora_reader_offset(const struct lora_reader *r)
{
	return r->rec_start;
}

/* Length of the header of the msgpack item whose first byte is b (type byte
 * and length fields; for fixext also the ext type byte), or 0 for 0xc1, the
 * one byte msgpack never uses. */
static size_t hdr_len(unsigned b)
{
	if (b <= 0x7f || b >= 0xe0)
		return 1;			/* fixint */
	if (b <= 0xbf)
		return 1;			/* fixmap, fixarray, fixstr */
	switch (b) {
	case 0xc0: case 0xc2: case 0xc3: return 1;
	case 0xc1: return 0;
	case 0xc4: case 0xd9: return 2;			/* bin8, str8 */
	case 0xc5: case 0xda: return 3;			/* bin16, str16 */
	case 0xc6: case 0xdb: return 5;			/* bin32, str32 */
	case 0xc7: return 3;				/* ext8: len, type */
	case 0xc8: return 4;
	case 0xc9: return 6;
	case 0xca: return 5;				/* float32 */
	case 0xcb: return 9;
	case 0xcc: case 0xd0: return 2;
	case 0xcd: case 0xd1: return 3;
	case 0xce: case 0xd2: return 5;
	case 0xcf: case 0xd3: return 9;
	case 0xd4: return 3;				/* fixext1: type + 1 */
	case 0xd5: return 4;
	case 0xd6: return 6;
	case 0xd7: return 10;
	case 0xd8: return 18;
	case 0xdc: case 0xde: return 3;			/* array16, map16 */
	case 0xdd: case 0xdf: return 5;			/* array32, map32 */
	}
	return 0;
}

static uint64_t be(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/* Items (children) and payload bytes that the header at p announces. */
static void hdr_counts(const unsigned char *p, uint64_t *items, uint64_t *payload)
{
	unsigned b = p[0];
	*items = 0;
	*payload = 0;
	if (b >= 0x80 && b <= 0x8f)
		*items = 2u * (b & 0x0f);
	else if (b >= 0x90 && b <= 0x9f)
		*items = b & 0x0f;
	else if (b >= 0xa0 && b <= 0xbf)
		*payload = b & 0x1f;
	else switch (b) {
	case 0xc4: case 0xd9: *payload = p[1]; break;
	case 0xc5: case 0xda: *payload = be(p + 1, 2); break;
	case 0xc6: case 0xdb: *payload = be(p + 1, 4); break;
	case 0xc7: *payload = p[1]; break;
	case 0xc8: *payload = be(p + 1, 2); break;
	case 0xc9: *payload = be(p + 1, 4); break;
	case 0xdc: *items = be(p + 1, 2); break;
	case 0xdd: *items = be(p + 1, 4); break;
	case 0xde: *items = 2 * be(p + 1, 2); break;
	case 0xdf: *items = 2 * be(p + 1, 4); break;
	}
}

static bool is_map_byte(unsigned b)
{
	return (b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf;
}

/* Walk the bytes p[0..n) (which start at absolute offset r->scan_abs).
 * Returns 1 when the current record ends inside them (scan_abs then points
 * just past it), 0 when more bytes are needed, or a negative code. */
static int scan(struct lora_reader *r, const unsigned char *p, size_t n, struct lora_err *err)
{
	size_t i = 0;
	while (i < n) {
		if (r->skip) {
			uint64_t k = r->skip < n - i ? r->skip : n - i;
			i += k;
			r->skip -= k;
			r->scan_abs += k;
			if (!r->skip && !r->pending) {
				r->in_rec = false;
				return 1;
			}
			continue;
		}
		unsigned b = p[i];
		if (!r->in_rec) {
			if (!is_map_byte(b))
				return lora_errf(err, LORA_EFORMAT,
						 "expected a record (a msgpack map), found byte 0x%02x", b);
			r->in_rec = true;
			r->pending = 1;
		}
		size_t h = hdr_len(b);
		if (!h)
			return lora_errf(err, LORA_EFORMAT, "invalid msgpack byte 0x%02x at byte %llu",
					 b, (unsigned long long)r->scan_abs);
		if (h > n - i)
			return 0;	/* the header continues in the next chunk */
		uint64_t items, payload;
		hdr_counts(p + i, &items, &payload);
		i += h;
		r->scan_abs += h;
		r->pending = r->pending - 1 + items;
		r->skip = payload;
		if (r->pending > PENDING_MAX)
			return lora_errf(err, LORA_EFORMAT,
					 "malformed msgpack: a container announces more items than a stream can hold");
		if (!r->pending && !r->skip) {
			r->in_rec = false;
			return 1;
		}
	}
	return 0;
}

static int reader_fail(struct lora_reader *r, uint64_t at, int rc, struct lora_err *err)
{
	r->failed = true;
	return lora_err_prefix(err, rc, "%s: record %zu at byte %llu: ", r->name, r->count + 1,
			       (unsigned long long)at);
}

/* Read what is available now, up to cap bytes; 0 at end of input, -1 on a
 * read error (errno set). fread on a pipe waits until cap bytes arrive, which
 * deadlocks a coprocess answering record by record (lora-cmaes drives
 * lora-eval so); pipes therefore get one read(2). Bytes stdio has already
 * buffered (a caller may have peeked) are handed out first. */
static ssize_t read_some(FILE *f, void *buf, size_t cap)
{
	size_t buffered = (size_t)(f->_IO_read_end - f->_IO_read_ptr);
	struct stat st;
	int fd = fileno(f);
	if (buffered == 0 && fd >= 0 && fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
		for (;;) {
			ssize_t n = read(fd, buf, cap);
			if (n >= 0 || (errno != EINTR && errno != EAGAIN))
				return n;
			if (errno == EAGAIN) {	/* a non-blocking fd was handed to us: wait */
				struct pollfd p = { .fd = fd, .events = POLLIN };
				poll(&p, 1, -1);
			}
		}
	}
	size_t want = buffered && buffered < cap ? buffered : cap;
	size_t got = fread(buf, 1, want, f);
	if (got == 0 && ferror(f))
		return -1;
	return (ssize_t)got;
}

int lora_reader_next(struct lora_reader *r, struct lora_record *rec, struct lora_err *err)
{
	memset(rec, 0, sizeof *rec);
	if (r->failed)
		return lora_errf(err, LORA_EFORMAT, "%s: record %zu at byte %llu: stream is unreadable after an earlier error",
				 r->name, r->count + 1, (unsigned long long)r->rec_start);
	if (err) {
		err->code = 0;
		err->msg[0] = '\0';
	}
	/* 1. find the end of the next record */
	for (;;) {
		size_t at = r->up.off + (size_t)(r->scan_abs - r->rec_start);
		int rc = scan(r, (const unsigned char *)r->up.buffer + at, r->up.used - at, err);
		if (rc < 0)
			return reader_fail(r, r->rec_start, rc, err);
		if (rc == 1)
			break;
		if (r->eof) {
			if (!r->in_rec && r->scan_abs == r->rec_start)
				return 0;
			lora_errf(err, LORA_EFORMAT, "truncated record: the stream ends at byte %llu",
				  (unsigned long long)r->scan_abs + (r->up.used - at));
			return reader_fail(r, r->rec_start, LORA_EFORMAT, err);
		}
		if (!msgpack_unpacker_reserve_buffer(&r->up, READ_MIN))
			return reader_fail(r, r->rec_start,
					   lora_errf(err, LORA_ENOMEM, "out of memory buffering a record"),
					   err);
		ssize_t got = read_some(r->f, msgpack_unpacker_buffer(&r->up),
					msgpack_unpacker_buffer_capacity(&r->up));
		if (got < 0)
			return reader_fail(r, r->scan_abs,
					   lora_errf(err, LORA_EIO, "read error: %s",
						     strerror(errno)), err);
		msgpack_unpacker_buffer_consumed(&r->up, (size_t)got);
		if (got == 0)
			r->eof = true;
	}
	/* 2. let msgpack-c parse exactly those bytes */
	uint64_t start = r->rec_start, end = r->scan_abs;
	msgpack_unpacked res;
	msgpack_unpacked_init(&res);
	size_t off0 = r->up.off;
	msgpack_unpack_return ur = msgpack_unpacker_next(&r->up, &res);
	/* The unpacker must end exactly where the scanner did. */
	if (ur != MSGPACK_UNPACK_SUCCESS || r->up.off - off0 != end - start) {
		msgpack_unpacked_destroy(&res);
		/* msgpack-c says NOMEM both when its 32-level stack overflows and
		 * when malloc fails; the scanner has bounded every allocation by
		 * the record's real length, so the first is far more likely. */
		if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
			lora_errf(err, LORA_EFORMAT, "malformed msgpack: nested more than 32 deep "
				  "(or out of memory for a record of %llu bytes)",
				  (unsigned long long)(end - start));
		else
			lora_errf(err, LORA_EFORMAT, "malformed msgpack");
		return reader_fail(r, start, LORA_EFORMAT, err);
	}
	r->rec_start = end;
	int rc = dec_record(&res.data, rec, err);
	msgpack_unpacked_destroy(&res);
	rec->index = r->count + 1;
	rec->offset = start;
	if (!rc && rec->kind == LORA_REC_ADAPTER) {
		int k = names_add(r, rec->u.adapter.name);
		if (k < 0)
			rc = lora_errf(err, LORA_ENOMEM, "out of memory");
		else if (k == 0)
			rc = lora_errf(err, LORA_EINVAL, "duplicate adapter name '%s'",
				       rec->u.adapter.name);
	}
	if (rc) {
		lora_record_free(rec);
		/* The bytes were a well-formed record, so the stream could go on;
		 * but a tool should not silently skip an invalid record. */
		rc = lora_err_prefix(err, rc, "%s: record %zu at byte %llu: ", r->name,
				     r->count + 1, (unsigned long long)start);
		r->count++;
		return rc;
	}
	r->count++;
	return 1;
}

/* ------------------------------------------------------------------ */
/* writer                                                               */

struct lora_writer {
	FILE *f;
	char *name;
	msgpack_packer pk;
	int werrno;		/* errno of the first failed write, or 0 */
	bool failed;
};

static int write_cb(void *data, const char *buf, size_t len)
{
	struct lora_writer *w = data;
	if (w->failed)
		return -1;
	if (len && fwrite(buf, 1, len, w->f) != len) {
		w->failed = true;
		w->werrno = errno ? errno : EIO;
		return -1;
	}
	return 0;
}

int lora_writer_open(FILE *f, const char *name, struct lora_writer **out, struct lora_err *err)
{
	*out = NULL;
	struct lora_writer *w = calloc(1, sizeof *w);
	if (!w)
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	w->f = f;
	w->name = strdup(!name || !strcmp(name, "-") ? "stdout" : name);
	if (!w->name) {
		free(w);
		return lora_errf(err, LORA_ENOMEM, "out of memory");
	}
	msgpack_packer_init(&w->pk, w, write_cb);
	*out = w;
	return 0;
}

void lora_writer_close(struct lora_writer *w)
{
	if (!w)
		return;
	free(w->name);
	free(w);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void pack_doc(msgpack_packer *pk, const struct lora_doc *d)
{
	switch (d->type) {
	case LORA_DOC_NULL: msgpack_pack_nil(pk); break;
	case LORA_DOC_BOOL: d->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
	case LORA_DOC_INT: msgpack_pack_int64(pk, d->u.i); break;
	case LORA_DOC_FLOAT: msgpack_pack_double(pk, d->u.f); break;
	case LORA_DOC_STRING:
		msgpack_pack_str(pk, d->u.str.len);
		msgpack_pack_str_body(pk, d->u.str.s, d->u.str.len);
		break;
	case LORA_DOC_BIN:
		msgpack_pack_bin(pk, d->u.str.len);
		msgpack_pack_bin_body(pk, d->u.str.s, d->u.str.len);
		break;
	case LORA_DOC_ARRAY:
		msgpack_pack_array(pk, d->u.arr.n);
		for (size_t i = 0; i < d->u.arr.n; i++)
			pack_doc(pk, &d->u.arr.items[i]);
		break;
	case LORA_DOC_MAP:
		msgpack_pack_map(pk, d->u.map.n);
		for (size_t i = 0; i < d->u.map.n; i++) {
			pack_str(pk, d->u.map.keys[i]);
			pack_doc(pk, &d->u.map.vals[i]);
		}
		break;
	}
}

static bool in_list(const char *k, const char *const *defined)
{
	for (; *defined; defined++)
		if (!strcmp(k, *defined))
			return true;
	return false;
}

/* Extra keys that do not collide with the kind's own keys. */
static size_t extra_count(const struct lora_doc *x, const char *const *defined)
{
	size_t n = 0;
	if (x && x->type == LORA_DOC_MAP)
		for (size_t i = 0; i < x->u.map.n; i++)
			n += !in_list(x->u.map.keys[i], defined);
	return n;
}

static void pack_extra(msgpack_packer *pk, const struct lora_doc *x, const char *const *defined)
{
	if (!x || x->type != LORA_DOC_MAP)
		return;
	for (size_t i = 0; i < x->u.map.n; i++) {
		if (in_list(x->u.map.keys[i], defined))
			continue;
		pack_str(pk, x->u.map.keys[i]);
		pack_doc(pk, &x->u.map.vals[i]);
	}
}

static bool is_map(const struct lora_doc *d)
{
	return d && d->type == LORA_DOC_MAP;
}

/* A tensor map: dtype, shape, data, then the unknown keys read with it (see
 * raw_extra_put), each value written as the bytes it was read as. */
static void pack_tensor(msgpack_packer *pk, const struct lora_tensor *t,
			const struct lora_doc *extra)
{
	static const char *const tensor_keys[] = { "dtype", "shape", "data", NULL };
	size_t nx = 0;
	if (is_map(extra))
		for (size_t i = 0; i < extra->u.map.n; i++)
			nx += extra->u.map.vals[i].type == LORA_DOC_BIN &&
			      !in_list(extra->u.map.keys[i], tensor_keys);
	msgpack_pack_map(pk, 3 + nx);
	pack_str(pk, "dtype");
	pack_str(pk, lora_dtype_name(t->dtype));
	pack_str(pk, "shape");
	msgpack_pack_array(pk, (size_t)t->ndim);
	for (int i = 0; i < t->ndim; i++)
		msgpack_pack_int64(pk, t->shape[i]);
	pack_str(pk, "data");
	msgpack_pack_bin(pk, t->nbytes);
	msgpack_pack_bin_body(pk, t->data, t->nbytes);
	for (size_t i = 0; nx && i < extra->u.map.n; i++) {
		const struct lora_doc *v = &extra->u.map.vals[i];
		if (v->type != LORA_DOC_BIN || in_list(extra->u.map.keys[i], tensor_keys))
			continue;
		pack_str(pk, extra->u.map.keys[i]);
		pk->callback(pk->data, v->u.str.s, v->u.str.len);
	}
}

static const char *const adapter_keys[] = { "kind", "name", "base", "r", "alpha", "rslora",
					    "tensors", "meta", NULL };
static const char *const module_keys[] = { "module", "r", "alpha", "a", "b", NULL };
static const char *const weights_keys[] = { "kind", "names", "w", "id", "method", "loss",
					    "objective", "evals", "seed", "meta", NULL };
static const char *const score_keys[] = { "kind", "id", "name", "loss", "tokens", "examples",
					  "per_example", "accuracy", "predictions", "meta", NULL };

static void pack_adapter(msgpack_packer *pk, const struct lora_adapter *a)
{
	size_t n = 6 + (a->base != NULL) + is_map(a->meta) + extra_count(a->extra, adapter_keys);
	msgpack_pack_map(pk, n);
	pack_str(pk, "kind");
	pack_str(pk, "adapter");
	pack_str(pk, "name");
	pack_str(pk, a->name);
	if (a->base) {
		pack_str(pk, "base");
		pack_str(pk, a->base);
	}
	pack_str(pk, "r");
	msgpack_pack_int64(pk, a->r);
	pack_str(pk, "alpha");
	msgpack_pack_double(pk, a->alpha);
	pack_str(pk, "rslora");
	a->rslora ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
	pack_str(pk, "tensors");
	msgpack_pack_array(pk, a->n_modules);
	for (size_t i = 0; i < a->n_modules; i++) {
		const struct lora_module *m = &a->modules[i];
		msgpack_pack_map(pk, 5 + extra_count(m->extra, module_keys));
		pack_str(pk, "module");
		pack_str(pk, m->module);
		pack_str(pk, "r");
		msgpack_pack_int64(pk, m->r);
		pack_str(pk, "alpha");
		msgpack_pack_double(pk, m->alpha);
		pack_str(pk, "a");
		pack_tensor(pk, &m->a, m->a_extra);
		pack_str(pk, "b");
		pack_tensor(pk, &m->b, m->b_extra);
		pack_extra(pk, m->extra, module_keys);
	}
	if (is_map(a->meta)) {
		pack_str(pk, "meta");
		pack_doc(pk, a->meta);
	}
	pack_extra(pk, a->extra, adapter_keys);
}

static void pack_weights(msgpack_packer *pk, const struct lora_weights *w)
{
	size_t n = 3 + w->has_id + (w->method != NULL) + !isnan(w->loss) + !isnan(w->objective) +
		   w->has_evals + w->has_seed + is_map(w->meta) + extra_count(w->extra, weights_keys);
	msgpack_pack_map(pk, n);
	pack_str(pk, "kind");
	pack_str(pk, "weights");
	pack_str(pk, "names");
	msgpack_pack_array(pk, w->n);
	for (size_t i = 0; i < w->n; i++)
		pack_str(pk, w->names[i]);
	pack_str(pk, "w");
	msgpack_pack_array(pk, w->n);
	for (size_t i = 0; i < w->n; i++)
		msgpack_pack_double(pk, w->w[i]);
	if (w->has_id) {
		pack_str(pk, "id");
		msgpack_pack_int64(pk, w->id);
	}
	if (w->method) {
		pack_str(pk, "method");
		pack_str(pk, w->method);
	}
	if (!isnan(w->loss)) {
		pack_str(pk, "loss");
		msgpack_pack_double(pk, w->loss);
	}
	if (!isnan(w->objective)) {
		pack_str(pk, "objective");
		msgpack_pack_double(pk, w->objective);
	}
	if (w->has_evals) {
		pack_str(pk, "evals");
		msgpack_pack_int64(pk, w->evals);
	}
	if (w->has_seed) {
		pack_str(pk, "seed");
		msgpack_pack_int64(pk, w->seed);
	}
	if (is_map(w->meta)) {
		pack_str(pk, "meta");
		pack_doc(pk, w->meta);
	}
	pack_extra(pk, w->extra, weights_keys);
}

static void pack_score(msgpack_packer *pk, const struct lora_score *s)
{
	size_t n = 4 + s->has_id + (s->name != NULL) + (s->n_per_example > 0) + s->has_accuracy +
		   (s->n_predictions > 0) + is_map(s->meta) + extra_count(s->extra, score_keys);
	msgpack_pack_map(pk, n);
	pack_str(pk, "kind");
	pack_str(pk, "score");
	if (s->has_id) {
		pack_str(pk, "id");
		msgpack_pack_int64(pk, s->id);
	}
	if (s->name) {
		pack_str(pk, "name");
		pack_str(pk, s->name);
	}
	pack_str(pk, "loss");
	msgpack_pack_double(pk, s->loss);
	pack_str(pk, "tokens");
	msgpack_pack_int64(pk, s->tokens);
	pack_str(pk, "examples");
	msgpack_pack_int64(pk, s->examples);
	if (s->n_per_example > 0) {
		pack_str(pk, "per_example");
		msgpack_pack_array(pk, s->n_per_example);
		for (size_t i = 0; i < s->n_per_example; i++)
			msgpack_pack_double(pk, s->per_example[i]);
	}
	if (s->has_accuracy) {
		pack_str(pk, "accuracy");
		msgpack_pack_double(pk, s->accuracy);
	}
	if (s->n_predictions > 0) {
		pack_str(pk, "predictions");
		msgpack_pack_array(pk, s->n_predictions);
		for (size_t i = 0; i < s->n_predictions; i++)
			pack_str(pk, s->predictions[i]);
	}
	if (is_map(s->meta)) {
		pack_str(pk, "meta");
		pack_doc(pk, s->meta);
	}
	pack_extra(pk, s->extra, score_keys);
}

/* Flush and turn a failed write into LORA_EPIPE / LORA_EIO. */
static int finish(struct lora_writer *w, struct lora_err *err)
{
	if (!w->failed && fflush(w->f) != 0) {
		w->failed = true;
		w->werrno = errno ? errno : EIO;
	}
	if (!w->failed)
		return 0;
	int code = w->werrno == EPIPE ? LORA_EPIPE : LORA_EIO;
	return lora_errf(err, code, "%s: write error: %s", w->name, strerror(w->werrno));
}

static int writer_begin(struct lora_writer *w, struct lora_err *err)
{
	if (w->failed)
		return lora_errf(err, w->werrno == EPIPE ? LORA_EPIPE : LORA_EIO,
				 "%s: write error: %s", w->name, strerror(w->werrno));
	errno = 0;
	return 0;
}

int lora_writer_put_adapter(struct lora_writer *w, const struct lora_adapter *a,
			    struct lora_err *err)
{
	int rc = lora_adapter_check(a, err);
	if (rc)
		return rc;
	if ((rc = writer_begin(w, err)))
		return rc;
	pack_adapter(&w->pk, a);
	return finish(w, err);
}

int lora_writer_put_weights(struct lora_writer *w, const struct lora_weights *ws,
			    struct lora_err *err)
{
	if (ws->n && (!ws->names || !ws->w))
		return lora_errf(err, LORA_EINVAL, "weights record without names or weights");
	for (size_t i = 0; i < ws->n; i++)
		if (!ws->names[i] || !isfinite(ws->w[i]))
			return lora_errf(err, LORA_EINVAL, "weights record: entry %zu has no name or a non-finite weight", i);
	int rc = writer_begin(w, err);
	if (rc)
		return rc;
	pack_weights(&w->pk, ws);
	return finish(w, err);
}

int lora_writer_put_score(struct lora_writer *w, const struct lora_score *s, struct lora_err *err)
{
	int rc = writer_begin(w, err);
	if (rc)
		return rc;
	pack_score(&w->pk, s);
	return finish(w, err);
}

int lora_writer_put(struct lora_writer *w, const struct lora_record *rec, struct lora_err *err)
{
	switch (rec->kind) {
	case LORA_REC_ADAPTER: return lora_writer_put_adapter(w, &rec->u.adapter, err);
	case LORA_REC_WEIGHTS: return lora_writer_put_weights(w, &rec->u.weights, err);
	case LORA_REC_SCORE: return lora_writer_put_score(w, &rec->u.score, err);
	case LORA_REC_OTHER: break;
	}
	if (!is_map(rec->extra) || !lora_doc_get(rec->extra, "kind"))
		return lora_errf(err, LORA_EINVAL, "record of unknown kind has no map with a 'kind'");
	int rc = writer_begin(w, err);
	if (rc)
		return rc;
	pack_doc(&w->pk, rec->extra);
	return finish(w, err);
}
