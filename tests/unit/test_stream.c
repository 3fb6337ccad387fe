/* test_stream — lib/stream: round trips, pass-through of unknown keys, every
 * truncation offset, garbage, each validation message, writer errors. */
#include "check.h"
#include "stream.h"

#include <errno.h>
#include <msgpack.h>
#include <signal.h>
#include <stdint.h>

/* ---- building records ---- */

static void fill_tensor(struct lora_tensor *t, enum lora_dtype dt, int64_t rows, int64_t cols,
			float seed)
{
	lora_tensor_alloc2(t, dt, rows, cols, NULL);
	size_t n = (size_t)(rows * cols);
	float *f = malloc(n * sizeof *f);
	for (size_t i = 0; i < n; i++)
		f[i] = seed + 0.25f * (float)i - 0.5f * (float)(i % 3);
	lora_from_f32(t->data, f, dt, n);
	free(f);
}

static void make_adapter(struct lora_adapter *a, const char *name, int64_t in, int64_t out)
{
	memset(a, 0, sizeof *a);
	a->name = strdup(name);
	a->base = strdup("tiny-base");
	a->r = 4;
	a->alpha = 8;
	a->rslora = false;
	a->n_modules = 2;
	a->modules = calloc(2, sizeof *a->modules);
	struct lora_module *m = &a->modules[0];
	m->module = strdup("layer.0.q");
	m->r = 4;
	m->alpha = 8;
	fill_tensor(&m->a, LORA_F32, 4, in, 1);
	fill_tensor(&m->b, LORA_F32, out, 4, 2);
	m = &a->modules[1];
	m->module = strdup("layer.0.v");
	m->r = 2;
	m->alpha = 3.5;
	fill_tensor(&m->a, LORA_BF16, 2, in, 3);
	fill_tensor(&m->b, LORA_F16, out, 2, 4);
	m->extra = calloc(1, sizeof *m->extra);
	lora_doc_init_map(m->extra);
	lora_doc_map_put_string(m->extra, "note", "module-level unknown key");
	a->meta = calloc(1, sizeof *a->meta);
	lora_doc_init_map(a->meta);
	lora_doc_map_put_string(a->meta, "source", "/x/y");
	lora_doc_map_put_double(a->meta, "pi", 3.25);
	a->extra = calloc(1, sizeof *a->extra);
	lora_doc_init_map(a->extra);
	lora_doc_map_put_int(a->extra, "future_key", -7);
	lora_doc_map_put_bool(a->extra, "flag", true);
}

static int tensor_eq(const struct lora_tensor *x, const struct lora_tensor *y)
{
	return x->dtype == y->dtype && x->ndim == y->ndim && x->shape[0] == y->shape[0] &&
	       x->shape[1] == y->shape[1] && x->nbytes == y->nbytes &&
	       !memcmp(x->data, y->data, x->nbytes);
}

static int adapter_eq(const struct lora_adapter *x, const struct lora_adapter *y)
{
	if (strcmp(x->name, y->name) || (!x->base) != (!y->base) ||
	    (x->base && strcmp(x->base, y->base)) || x->r != y->r || x->alpha != y->alpha ||
	    x->rslora != y->rslora || x->n_modules != y->n_modules)
		return 0;
	for (size_t i = 0; i < x->n_modules; i++) {
		const struct lora_module *a = &x->modules[i], *b = &y->modules[i];
		if (strcmp(a->module, b->module) || a->r != b->r || a->alpha != b->alpha ||
		    !tensor_eq(&a->a, &b->a) || !tensor_eq(&a->b, &b->b))
			return 0;
	}
	return 1;
}

/* A stream in memory: adapter, weights, score (NaN loss), an unknown kind. */
static char *small_stream(size_t *len, int64_t in, int64_t out)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	struct lora_writer *w;
	struct lora_err err = { 0 };
	lora_writer_open(f, "mem", &w, &err);
	struct lora_adapter a;
	make_adapter(&a, "alpha", in, out);
	int rc = lora_writer_put_adapter(w, &a, &err);
	if (rc)
		printf("# put_adapter: %s\n", err.msg);
	lora_adapter_free(&a);

	struct lora_weights ws = { 0 };
	const char *names[] = { "alpha", "beta" };
	double wv[] = { 0.25, -1.5 };
	ws.n = 2;
	ws.names = (char **)names;
	ws.w = wv;
	ws.has_id = true;
	ws.id = 42;
	ws.method = (char *)"lorahub";
	ws.loss = 1.5;
	ws.objective = NAN;
	lora_writer_put_weights(w, &ws, &err);

	struct lora_score s = { 0 };
	double pe[] = { 1, NAN, 3 };
	char *preds[] = { (char *)"yes", (char *)"no" };
	s.has_id = true;
	s.id = 42;
	s.name = (char *)"alpha";
	s.loss = NAN;
	s.tokens = 12;
	s.examples = 3;
	s.n_per_example = 3;
	s.per_example = pe;
	s.has_accuracy = true;
	s.accuracy = 0.5;
	s.n_predictions = 2;
	s.predictions = preds;
	lora_writer_put_score(w, &s, &err);

	struct lora_record other = { 0 };
	other.kind = LORA_REC_OTHER;
	other.extra = calloc(1, sizeof *other.extra);
	lora_doc_init_map(other.extra);
	lora_doc_map_put_string(other.extra, "kind", "comment");
	lora_doc_map_put_string(other.extra, "text", "hello");
	lora_writer_put(w, &other, &err);
	lora_record_free(&other);
	lora_writer_close(w);
	fclose(f);
	return buf;
}

/* Read every record of buf; returns the count, or a negative code with err. */
static int read_all(const void *buf, size_t len, struct lora_err *err, uint64_t *bad_at)
{
	FILE *f = len ? fmemopen((void *)buf, len, "r") : fopen("/dev/null", "r");
	struct lora_reader *r;
	lora_reader_open(f, "t.lora", &r, err);
	int n = 0, rc;
	struct lora_record rec;
	while ((rc = lora_reader_next(r, &rec, err)) == 1) {
		n++;
		lora_record_free(&rec);
	}
	if (bad_at)
		*bad_at = lora_reader_offset(r);
	lora_reader_close(r);
	fclose(f);
	return rc < 0 ? rc : n;
}

/* ---- raw msgpack for bad records ---- */

static msgpack_sbuffer sb;
static msgpack_packer pk;

static void raw_begin(void)
{
	msgpack_sbuffer_destroy(&sb);
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
}

static void s(const char *x)
{
	msgpack_pack_str(&pk, strlen(x));
	msgpack_pack_str_body(&pk, x, strlen(x));
}

static void raw_tensor(const char *dt, int64_t r0, int64_t r1, size_t nbytes)
{
	msgpack_pack_map(&pk, 3);
	s("dtype");
	s(dt);
	s("shape");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_int64(&pk, r0);
	msgpack_pack_int64(&pk, r1);
	s("data");
	char *z = calloc(1, nbytes + 1);
	msgpack_pack_bin(&pk, nbytes);
	msgpack_pack_bin_body(&pk, z, nbytes);
	free(z);
}

/* An adapter record with one module: a [ra, in], b [out, rb], r given. */
static void raw_adapter(const char *name, int r, int ra, int rb, size_t a_bytes)
{
	msgpack_pack_map(&pk, 5);
	s("kind");
	s("adapter");
	s("name");
	s(name);
	s("r");
	msgpack_pack_int(&pk, r);
	s("alpha");
	msgpack_pack_double(&pk, 16);
	s("tensors");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_map(&pk, 3);
	s("module");
	s("m.q");
	s("a");
	raw_tensor("f32", ra, 3, a_bytes);
	s("b");
	raw_tensor("f32", 5, rb, (size_t)5 * rb * 4);
}

static void expect_error(const char *what, const char *needle)
{
	struct lora_err err = { 0 };
	int rc = read_all(sb.data, sb.size, &err, NULL);
	check(rc < 0 && strstr(err.msg, needle) != NULL, "%s -> \"%s\"", what, err.msg);
}

int main(void)
{
	struct lora_err err = { 0 };
	msgpack_sbuffer_init(&sb);

	/* --- round trip through a memory stream --- */
	size_t len;
	char *buf = small_stream(&len, 3, 5);
	FILE *f = fmemopen(buf, len, "r");
	struct lora_reader *r;
	lora_reader_open(f, "mem", &r, &err);
	struct lora_record rec[4];
	int got = 0;
	while (got < 4 && lora_reader_next(r, &rec[got], &err) == 1)
		got++;
	struct lora_record end;
	check(got == 4 && lora_reader_next(r, &end, &err) == 0, "read 4 records and a clean end (%s)",
	      err.msg);
	check(lora_reader_count(r) == 4 && lora_reader_offset(r) == len,
	      "count 4, offset at end (%llu of %zu)", (unsigned long long)lora_reader_offset(r), len);
	lora_reader_close(r);
	fclose(f);
	if (got == 4) {
		struct lora_adapter want;
		make_adapter(&want, "alpha", 3, 5);
		struct lora_adapter *a = &rec[0].u.adapter;
		check(rec[0].kind == LORA_REC_ADAPTER && adapter_eq(a, &want),
		      "adapter round trip: names, r, alpha, tensors bit-identical");
		check(rec[0].index == 1 && rec[0].offset == 0 && rec[1].index == 2 && rec[1].offset > 0,
		      "record index and offset");
		const struct lora_doc *fk = lora_doc_get(a->extra, "future_key");
		check(fk && fk->type == LORA_DOC_INT && fk->u.i == -7 && lora_doc_get(a->extra, "flag"),
		      "unknown adapter keys kept");
		const struct lora_doc *note = lora_doc_get(a->modules[1].extra, "note");
		check(note && note->type == LORA_DOC_STRING && !a->modules[0].extra,
		      "unknown module-level keys kept");
		const struct lora_doc *pi = lora_doc_get(a->meta, "pi");
		check(pi && pi->type == LORA_DOC_FLOAT && pi->u.f == 3.25, "meta kept");
		check_near(lora_module_scale(a, &a->modules[1]), 3.5 / 2, 0, 0, "scale alpha/r");
		a->rslora = true;
		check_near(lora_module_scale(a, &a->modules[1]), 3.5 / sqrt(2), 1e-15, 0,
			   "scale alpha/sqrt(r) with rslora");
		a->rslora = false;
		struct lora_adapter c;
		check(lora_adapter_clone(&c, a, &err) == 0 && adapter_eq(&c, a) &&
		      c.modules[0].a.data != a->modules[0].a.data && lora_doc_get(c.extra, "flag"),
		      "clone is deep and equal");
		check(lora_adapter_find(&c, "layer.0.v") == &c.modules[1] &&
		      !lora_adapter_find(&c, "nope"), "find");
		lora_adapter_free(&c);
		lora_adapter_free(&want);

		struct lora_weights *w = &rec[1].u.weights;
		check(rec[1].kind == LORA_REC_WEIGHTS && w->n == 2 && !strcmp(w->names[1], "beta") &&
		      w->w[1] == -1.5 && w->has_id && w->id == 42 && !strcmp(w->method, "lorahub") &&
		      w->loss == 1.5 && isnan(w->objective) && !w->has_seed, "weights fields");
		struct lora_score *sc = &rec[2].u.score;
		check(rec[2].kind == LORA_REC_SCORE && isnan(sc->loss) && sc->tokens == 12 &&
		      sc->n_per_example == 3 && isnan(sc->per_example[1]) && sc->accuracy == 0.5 &&
		      sc->n_predictions == 2 && !strcmp(sc->predictions[1], "no") &&
		      !strcmp(sc->name, "alpha"), "score fields (NaN loss allowed)");
		const struct lora_doc *k = lora_doc_get(rec[3].extra, "text");
		check(rec[3].kind == LORA_REC_OTHER && k && !strcmp(k->u.str.s, "hello"),
		      "unknown kind kept whole");

		/* pass-through: re-writing what was read gives the same bytes */
		char *buf2 = NULL;
		size_t len2;
		FILE *f2 = open_memstream(&buf2, &len2);
		struct lora_writer *w2;
		lora_writer_open(f2, "mem", &w2, &err);
		for (int i = 0; i < 4; i++)
			lora_writer_put(w2, &rec[i], &err);
		lora_writer_close(w2);
		fclose(f2);
		check(len2 == len && !memcmp(buf, buf2, len), "pass-through is byte-identical (%zu bytes)",
		      len);
		free(buf2);
	}
	for (int i = 0; i < got; i++)
		lora_record_free(&rec[i]);

	/* --- unknown keys inside a tensor map pass through byte for byte --- */
	{
		raw_begin();
		msgpack_pack_map(&pk, 6);
		s("kind");
		s("adapter");
		s("name");
		s("x");
		s("r");
		msgpack_pack_int64(&pk, 2);
		s("alpha");
		msgpack_pack_double(&pk, 4);
		s("rslora");
		msgpack_pack_false(&pk);
		s("tensors");
		msgpack_pack_array(&pk, 1);
		msgpack_pack_map(&pk, 5);
		s("module");
		s("m.q");
		s("r");
		msgpack_pack_int64(&pk, 2);
		s("alpha");
		msgpack_pack_double(&pk, 4);
		s("a");
		/* in the writer's order: dtype, shape, data, then the extras */
		msgpack_pack_map(&pk, 7);
		s("dtype");
		s("f32");
		s("shape");
		msgpack_pack_array(&pk, 2);
		msgpack_pack_int64(&pk, 2);
		msgpack_pack_int64(&pk, 3);
		s("data");
		float za[6] = { 1, 2, 3, 4, 5, 6 };
		msgpack_pack_bin(&pk, sizeof za);
		msgpack_pack_bin_body(&pk, za, sizeof za);
		s("sha");
		s("abc");
		s("scale32");
		msgpack_pack_float(&pk, 1.5f);	/* float32 stays float32 */
		s("nested");
		msgpack_pack_map(&pk, 1);
		s("k");
		msgpack_pack_array(&pk, 5);
		msgpack_pack_int64(&pk, 1);
		msgpack_pack_int64(&pk, -200);
		msgpack_pack_nil(&pk);
		msgpack_pack_true(&pk);
		msgpack_pack_bin(&pk, 2);
		msgpack_pack_bin_body(&pk, "\0\1", 2);
		s("ext");
		msgpack_pack_ext(&pk, 3, 5);
		msgpack_pack_ext_body(&pk, "xyz", 3);
		s("b");
		msgpack_pack_map(&pk, 4);
		s("dtype");
		s("bf16");
		s("shape");
		msgpack_pack_array(&pk, 2);
		msgpack_pack_int64(&pk, 4);
		msgpack_pack_int64(&pk, 2);
		s("data");
		char zb[16] = { 0 };
		msgpack_pack_bin(&pk, sizeof zb);
		msgpack_pack_bin_body(&pk, zb, sizeof zb);
		s("note");
		msgpack_pack_double(&pk, 0.1);

		FILE *g = fmemopen(sb.data, sb.size, "r");
		struct lora_reader *rr;
		struct lora_record x;
		lora_reader_open(g, "mem", &rr, &err);
		int n = lora_reader_next(rr, &x, &err);
		lora_reader_close(rr);
		fclose(g);
		check(n == 1, "a record with unknown keys in its tensor maps reads (%s)", err.msg);
		if (n == 1) {
			const struct lora_module *m = &x.u.adapter.modules[0];
			const struct lora_doc *sha = lora_doc_get(m->a_extra, "sha");
			check(m->a_extra && m->a_extra->u.map.n == 4 && m->b_extra &&
			      m->b_extra->u.map.n == 1 && sha && sha->type == LORA_DOC_BIN &&
			      sha->u.str.len == 4 && !memcmp(sha->u.str.s, "\xa3" "abc", 4) &&
			      !m->extra, "tensor-map keys kept as their msgpack bytes");
			struct lora_adapter c;
			int crc = lora_adapter_clone(&c, &x.u.adapter, &err);
			check(crc == 0 && lora_doc_get(c.modules[0].a_extra, "ext") &&
			      lora_doc_get(c.modules[0].b_extra, "note"), "clone keeps them");
			char *b2 = NULL, *b3 = NULL;
			size_t l2 = 0, l3 = 0;
			FILE *o = open_memstream(&b2, &l2);
			struct lora_writer *ww;
			lora_writer_open(o, "mem", &ww, &err);
			lora_writer_put(ww, &x, &err);
			lora_writer_close(ww);
			fclose(o);
			check(l2 == sb.size && !memcmp(b2, sb.data, l2),
			      "tensor-map keys pass through byte-identical (%zu of %zu bytes)", l2,
			      sb.size);
			o = open_memstream(&b3, &l3);
			lora_writer_open(o, "mem", &ww, &err);
			if (crc == 0)
				lora_writer_put_adapter(ww, &c, &err);
			lora_writer_close(ww);
			fclose(o);
			check(l3 == sb.size && !memcmp(b3, sb.data, l3), "and so does a clone");
			free(b2);
			free(b3);
			if (crc == 0)
				lora_adapter_free(&c);
			lora_record_free(&x);
		}
	}

	/* --- truncation at every byte offset --- */
	{
		/* record boundaries: offsets where a prefix is a whole stream */
		uint64_t bounds[5] = { 0 };
		f = fmemopen(buf, len, "r");
		lora_reader_open(f, "mem", &r, &err);
		struct lora_record x;
		for (int i = 0; i < 4 && lora_reader_next(r, &x, &err) == 1; i++) {
			bounds[i + 1] = lora_reader_offset(r);
			lora_record_free(&x);
		}
		lora_reader_close(r);
		fclose(f);
		int bad = 0, tested = 0;
		char first_bad[LORA_ERR_MAX + 64] = "";
		for (size_t cut = 0; cut < len; cut++) {
			int whole = -1;
			for (int i = 0; i < 5; i++)
				if (bounds[i] == cut)
					whole = i;
			struct lora_err e = { 0 };
			int n = read_all(buf, cut, &e, NULL);
			int ok;
			if (whole >= 0) {
				ok = n == whole;
			} else {
				char want[128];
				int rec_no = 1;
				while (rec_no < 4 && bounds[rec_no] <= cut)
					rec_no++;
				snprintf(want, sizeof want,
					 "t.lora: record %d at byte %llu: truncated record: the stream ends at byte %zu",
					 rec_no, (unsigned long long)bounds[rec_no - 1], cut);
				ok = n == LORA_EFORMAT && !strcmp(e.msg, want);
			}
			tested++;
			if (!ok && !bad++)
				snprintf(first_bad, sizeof first_bad, "cut %zu: rc %d \"%s\"", cut, n, e.msg);
		}
		check(bad == 0, "every one of %d truncations gives a clean end or the exact truncation message %s",
		      tested, first_bad);
	}

	/* --- garbage --- */
	{
		struct lora_err e = { 0 };
		int n = read_all("hello, world", 12, &e, NULL);
		check(n == LORA_EFORMAT &&
		      !strcmp(e.msg, "t.lora: record 1 at byte 0: expected a record (a msgpack map), found byte 0x68"),
		      "garbage text: \"%s\"", e.msg);
		/* a valid stream followed by garbage: the error names record 5 */
		char *g = malloc(len + 4);
		memcpy(g, buf, len);
		memcpy(g + len, "\xc1\x01\x02\x03", 4);
		n = read_all(g, len + 4, &e, NULL);
		char want[128];
		snprintf(want, sizeof want, "t.lora: record 5 at byte %zu: expected a record", len);
		check(n == LORA_EFORMAT && !strncmp(e.msg, want, strlen(want)), "garbage after 4 records: \"%s\"",
		      e.msg);
		/* 0xc1 inside a map */
		n = read_all("\x81\xa4kind\xc1", 7, &e, NULL);
		check(n == LORA_EFORMAT && strstr(e.msg, "invalid msgpack byte 0xc1 at byte 6"),
		      "invalid byte inside a record: \"%s\"", e.msg);
		/* a header announcing 4 billion items must not be allocated */
		n = read_all("\x81\xa4kind\xdd\xff\xff\xff\xff", 11, &e, NULL);
		check(n == LORA_EFORMAT && strstr(e.msg, "truncated record"),
		      "huge array header, truncated: \"%s\"", e.msg);
		n = read_all("\xdf\xff\xff\xff\xff", 5, &e, NULL);
		check(n == LORA_EFORMAT && strstr(e.msg, "truncated record"), "huge map header: \"%s\"", e.msg);
		/* too deep */
		char deep[80];
		deep[0] = (char)0x81;
		deep[1] = (char)0xa1;
		deep[2] = 'k';
		for (int i = 3; i < 79; i++)
			deep[i] = (char)0x91;
		deep[79] = (char)0xc0;
		n = read_all(deep, sizeof deep, &e, NULL);
		check(n == LORA_EFORMAT && strstr(e.msg, "nested more than 32 deep"), "nesting 77 deep: \"%s\"", e.msg);
		/* random bytes never crash and never succeed silently with garbage */
		uint64_t st = 12345;
		for (int t = 0; t < 2000; t++) {
			unsigned char rb[64];
			size_t rl = 1 + (size_t)(t % 64);
			for (size_t i = 0; i < rl; i++) {
				st = st * 6364136223846793005ull + 1442695040888963407ull;
				rb[i] = (unsigned char)(st >> 56);
			}
			if (t & 1)
				rb[0] = 0x81;
			read_all(rb, rl, &e, NULL);
		}
		check(1, "2000 random byte strings read without a crash");
		free(g);
	}

	/* --- each validation message --- */
	raw_begin();
	msgpack_pack_map(&pk, 1);
	s("name");
	s("x");
	expect_error("record without kind", "t.lora: record 1 at byte 0: record has no 'kind'");

	raw_begin();
	msgpack_pack_map(&pk, 1);
	s("kind");
	msgpack_pack_int(&pk, 3);
	expect_error("kind not a string", "'kind' must be a string, not an integer");

	raw_begin();
	msgpack_pack_array(&pk, 0);
	expect_error("an array, not a map", "expected a record (a msgpack map), found byte 0x90");

	raw_begin();
	raw_adapter("x", 4, 4, 4, 4 * 3 * 4 - 1);
	expect_error("shape/data mismatch",
		     "adapter 'x': module 'm.q': a has shape [4,3] f32, which needs 48 bytes of data, but has 47");

	raw_begin();
	raw_adapter("x", 4, 4, 2, 48);
	expect_error("a/b rank mismatch", "adapter 'x': module 'm.q': a is [4,3] and b is [5,2]: their ranks differ");

	raw_begin();
	raw_adapter("x", 8, 4, 4, 48);
	expect_error("rank vs r", "adapter 'x': module 'm.q': a and b have rank 4 but r is 8");

	raw_begin();
	raw_adapter("x", 4, 4, 4, 48);
	raw_adapter("y", 4, 4, 4, 48);
	raw_adapter("x", 4, 4, 4, 48);
	{
		struct lora_err e = { 0 };
		uint64_t at;
		int n = read_all(sb.data, sb.size, &e, &at);
		char want[128];
		snprintf(want, sizeof want, "t.lora: record 3 at byte %llu: duplicate adapter name 'x'",
			 (unsigned long long)(sb.size / 3 * 2));
		check(n < 0 && !strcmp(e.msg, want), "duplicate names -> \"%s\"", e.msg);
	}

	raw_begin();
	msgpack_pack_map(&pk, 3);
	s("kind");
	s("weights");
	s("names");
	msgpack_pack_array(&pk, 2);
	s("a");
	s("b");
	s("w");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_double(&pk, 0.5);
	msgpack_pack_double(&pk, NAN);
	expect_error("NaN weight", "t.lora: record 1 at byte 0: w[1] is NaN: weights must be finite");

	raw_begin();
	msgpack_pack_map(&pk, 3);
	s("kind");
	s("weights");
	s("names");
	msgpack_pack_array(&pk, 2);
	s("a");
	s("b");
	s("w");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_double(&pk, INFINITY);
	expect_error("infinite weight", "w[0] is infinite");

	raw_begin();
	msgpack_pack_map(&pk, 3);
	s("kind");
	s("weights");
	s("names");
	msgpack_pack_array(&pk, 2);
	s("a");
	s("b");
	s("w");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_double(&pk, 1);
	expect_error("names/w length", "weights record has 2 names but 1 weights");

	raw_begin();
	msgpack_pack_map(&pk, 2);
	s("kind");
	s("score");
	s("kind");
	s("x");
	expect_error("duplicate key", "record has key 'kind' twice");

	raw_begin();
	msgpack_pack_map(&pk, 1);
	s("kind");
	s("score");
	expect_error("score without loss", "score record has no 'loss'");

	raw_begin();
	msgpack_pack_map(&pk, 5);
	s("kind");
	s("adapter");
	s("name");
	s("x");
	s("r");
	msgpack_pack_int(&pk, 4);
	s("alpha");
	msgpack_pack_int(&pk, 4);
	s("tensors");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_map(&pk, 3);
	s("module");
	s("m");
	s("a");
	raw_tensor("f64", 4, 3, 96);
	s("b");
	raw_tensor("f32", 3, 4, 48);
	expect_error("unknown dtype", "module 'm': a has dtype 'f64', expected f32, f16 or bf16");

	raw_begin();
	msgpack_pack_map(&pk, 3);
	s("kind");
	s("adapter");
	s("name");
	s("x");
	s("r");
	msgpack_pack_int(&pk, 4);
	expect_error("adapter without alpha", "adapter 'x' has no 'alpha'");

	/* module r/alpha default to the adapter's */
	raw_begin();
	raw_adapter("x", 4, 4, 4, 48);
	{
		FILE *g = fmemopen(sb.data, sb.size, "r");
		struct lora_reader *rr;
		struct lora_record x;
		lora_reader_open(g, "-", &rr, &err);
		int n = lora_reader_next(rr, &x, &err);
		check(n == 1 && x.u.adapter.modules[0].r == 4 && x.u.adapter.modules[0].alpha == 16,
		      "module r and alpha default to the adapter's");
		lora_record_free(&x);
		lora_reader_close(rr);
		fclose(g);
		struct lora_err e = { 0 };
		g = fmemopen("xx", 2, "r");
		lora_reader_open(g, "-", &rr, &err);
		lora_reader_next(rr, &x, &e);
		check(!strncmp(e.msg, "stdin: record 1 at byte 0:", 26), "'-' is called stdin: \"%s\"",
		      e.msg);
		lora_reader_close(rr);
		fclose(g);
	}

	/* --- big records and many records cross read-chunk boundaries --- */
	{
		char *bb = NULL;
		size_t bl;
		FILE *g = open_memstream(&bb, &bl);
		struct lora_writer *w;
		lora_writer_open(g, "mem", &w, &err);
		struct lora_adapter a;
		for (int i = 0; i < 300; i++) {
			char nm[32];
			snprintf(nm, sizeof nm, "a%03d", i);
			make_adapter(&a, nm, i == 7 ? 20000 : 3, 5);	/* one of ~500 KB */
			lora_writer_put_adapter(w, &a, &err);
			lora_adapter_free(&a);
		}
		lora_writer_close(w);
		fclose(g);
		struct lora_err e = { 0 };
		int n = read_all(bb, bl, &e, NULL);
		check(n == 300, "300 adapters, one of 500 KB, in a %zu-byte stream (%s)", bl, e.msg);
		free(bb);
	}

	/* --- dtype conversion and sizes --- */
	{
		struct lora_adapter a, b;
		make_adapter(&a, "conv", 3, 5);
		uint64_t params, bytes;
		lora_adapter_size(&a, &params, &bytes);
		check(params == 4 * 3 + 5 * 4 + 2 * 3 + 5 * 2 && bytes == 4 * (12 + 20) + 2 * (6 + 10),
		      "adapter_size: %llu params, %llu bytes", (unsigned long long)params,
		      (unsigned long long)bytes);
		lora_adapter_clone(&b, &a, &err);
		int rc = lora_adapter_convert(&b, LORA_F32, &err);
		check(!rc && b.modules[1].a.dtype == LORA_F32 && b.modules[1].b.nbytes == 40,
		      "convert to f32");
		float *x = lora_tensor_f32(&a.modules[1].a), *y = lora_tensor_f32(&b.modules[1].a);
		check(x && y && !memcmp(x, y, 6 * sizeof(float)), "bf16 -> f32 is exact");
		free(x);
		free(y);
		rc = lora_adapter_convert(&b, LORA_BF16, &err);
		check(!rc && !memcmp(b.modules[1].a.data, a.modules[1].a.data, 12) &&
		      lora_adapter_check(&b, &err) == 0, "and back to bf16 gives the same bits");
		lora_adapter_free(&a);
		lora_adapter_free(&b);
	}

	/* --- in-memory check and writer refusal --- */
	{
		struct lora_adapter a;
		make_adapter(&a, "bad", 3, 5);
		a.modules[1].r = 3;
		check(lora_adapter_check(&a, &err) == LORA_EINVAL &&
		      strstr(err.msg, "a and b have rank 2 but r is 3"), "adapter_check: \"%s\"", err.msg);
		FILE *g = fopen("/dev/null", "w");
		struct lora_writer *w;
		lora_writer_open(g, "null", &w, &err);
		check(lora_writer_put_adapter(w, &a, &err) == LORA_EINVAL, "writer refuses an invalid adapter");
		lora_writer_close(w);
		fclose(g);
		lora_adapter_free(&a);
	}

	/* --- writer: full disk and closed pipe --- */
	{
		struct lora_adapter a;
		make_adapter(&a, "big", 20000, 5);
		FILE *g = fopen("/dev/full", "w");
		if (g) {
			struct lora_writer *w;
			lora_writer_open(g, "/dev/full", &w, &err);
			int rc = lora_writer_put_adapter(w, &a, &err);
			check(rc == LORA_EIO && !strcmp(err.msg, "/dev/full: write error: No space left on device"),
			      "full disk: \"%s\"", err.msg);
			lora_writer_close(w);
			fclose(g);
		} else {
			check_skip("full disk (no /dev/full)");
		}
		signal(SIGPIPE, SIG_IGN);
		int p[2];
		if (pipe(p) == 0) {
			close(p[0]);
			g = fdopen(p[1], "w");
			struct lora_writer *w;
			lora_writer_open(g, "-", &w, &err);
			int rc = lora_writer_put_adapter(w, &a, &err);
			check(rc == LORA_EPIPE && !strcmp(err.msg, "stdout: write error: Broken pipe"),
			      "closed pipe: \"%s\"", err.msg);
			rc = lora_writer_put_adapter(w, &a, &err);
			check(rc == LORA_EPIPE, "later writes fail too");
			lora_writer_close(w);
			fclose(g);
		}
		lora_adapter_free(&a);
	}
	free(buf);
	msgpack_sbuffer_destroy(&sb);
	return check_done();
}
