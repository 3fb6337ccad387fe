/*
 * test_fakeobj — a fake objective for the lora-cmaes tests (t05xx), in C so
 * that a test does not pay a Python start-up per run. Run with no argument
 * (as tests/run.sh does) it checks itself; otherwise:
 *
 *   test_fakeobj pool N        N tiny adapter records a0..aN-1 on stdout
 *   test_fakeobj obj [OPTIONS] a coprocess objective: skips adapters and
 *                              answers each weights record with a score,
 *                              loss = mean((w - w*)^2)
 *     --wstar a,b,...  optimum, cycled over the weights (default 0.3,-0.2,0.5)
 *     --die-after K    after K scores: two lines on stderr, exit 3
 *     --close-after K  after K scores: close stdout, keep reading, exit 0
 *     --bad-id ID      answer ID with id ID+1000
 *     --dup ID         answer ID twice
 *     --no-id ID       answer ID without an id
 *     --nan-at ID      loss NaN for ID          --inf-at ID   loss +Inf
 *     --hang-at ID     sleep (a long time) before answering ID
 *     --slow MS        sleep MS milliseconds before each answer
 *     --const X        loss X for every candidate (a flat objective)
 *     --log FILE       append "id w..." for every weights record
 *
 * Input is read with read(2) into a msgpack unpacker (never a blocking
 * fread of a whole buffer), so it answers each record as soon as it has it.
 */
#include "check.h"
#include "stream.h"

#include <msgpack.h>
#include <time.h>
#include <unistd.h>

static void pool(int n)
{
	struct lora_writer *w;
	if (lora_writer_open(stdout, "-", &w, NULL))
		exit(1);
	for (int i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof name, "a%d", i);
		float av[4], bv[4];
		for (int j = 0; j < 4; j++) {
			av[j] = 0.01f * (float)(i + 1 + j);
			bv[j] = 0.02f * (float)(i + 1 - j);
		}
		struct lora_module m = {
			.module = "layer.0.q", .r = 1, .alpha = 1,
			.a = {.dtype = LORA_F32, .ndim = 2, .shape = {1, 4}, .data = av, .nbytes = 16},
			.b = {.dtype = LORA_F32, .ndim = 2, .shape = {4, 1}, .data = bv, .nbytes = 16},
		};
		struct lora_adapter a = {.name = name, .r = 1, .alpha = 1, .n_modules = 1,
					 .modules = &m};
		struct lora_err err;
		if (lora_writer_put_adapter(w, &a, &err)) {
			fprintf(stderr, "test_fakeobj: %s\n", err.msg);
			exit(1);
		}
	}
	lora_writer_close(w);
	fflush(stdout);
}

struct opts {
	double wstar[64];
	int nwstar;
	double konst;
	int has_const;
	long die_after, close_after, bad, dup, noid, nan_at, inf_at, hang_at, slow_ms;
	FILE *log;
};

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Find key in a msgpack map. */
static const msgpack_object *get(const msgpack_object *o, const char *key)
{
	if (o->type != MSGPACK_OBJECT_MAP)
		return NULL;
	size_t kl = strlen(key);
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
		    !memcmp(k->via.str.ptr, key, kl))
			return &o->via.map.ptr[i].val;
	}
	return NULL;
}

static double num(const msgpack_object *v)
{
	switch (v->type) {
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return v->via.f64;
	case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)v->via.u64;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)v->via.i64;
	default: return NAN;
	}
}

static int obj(const struct opts *o)
{
	msgpack_unpacker up;
	msgpack_unpacker_init(&up, 65536);
	struct lora_writer *w;
	lora_writer_open(stdout, "-", &w, NULL);
	long sent = 0;
	int closed = 0;
	for (;;) {
		msgpack_unpacked res;
		msgpack_unpacked_init(&res);
		int ur = msgpack_unpacker_next(&up, &res);
		if (ur == MSGPACK_UNPACK_PARSE_ERROR) {
			fprintf(stderr, "fake: bad input\n");
			return 1;
		}
		if (ur != MSGPACK_UNPACK_SUCCESS) {
			msgpack_unpacked_destroy(&res);
			msgpack_unpacker_reserve_buffer(&up, 65536);
			ssize_t n = read(0, msgpack_unpacker_buffer(&up), msgpack_unpacker_buffer_capacity(&up));
			if (n <= 0)
				break;
			msgpack_unpacker_buffer_consumed(&up, (size_t)n);
			continue;
		}
		const msgpack_object *kind = get(&res.data, "kind");
		if (!kind || kind->type != MSGPACK_OBJECT_STR || kind->via.str.size != 7 ||
		    memcmp(kind->via.str.ptr, "weights", 7)) {
			msgpack_unpacked_destroy(&res);
			continue;
		}
		const msgpack_object *wv = get(&res.data, "w"), *idv = get(&res.data, "id");
		long id = idv ? (long)num(idv) : -1;
		uint32_t n = wv && wv->type == MSGPACK_OBJECT_ARRAY ? wv->via.array.size : 0;
		double loss = 0;
		if (o->log)
			fprintf(o->log, "%ld", id);
		for (uint32_t i = 0; i < n; i++) {
			double x = num(&wv->via.array.ptr[i]), s = o->wstar[i % (uint32_t)o->nwstar];
			loss += (x - s) * (x - s);
			if (o->log)
				fprintf(o->log, " %.17g", x);
		}
		if (o->log) {
			fputc('\n', o->log);
			fflush(o->log);
		}
		msgpack_unpacked_destroy(&res);
		loss = n ? loss / n : 0;
		if (o->has_const)
			loss = o->konst;
		if (id == o->nan_at)
			loss = NAN;
		if (id == o->inf_at)
			loss = INFINITY;
		if (o->slow_ms)
			sleep_ms(o->slow_ms);
		if (id == o->hang_at) {
			fprintf(stderr, "fake: hanging at id %ld\n", id);
			sleep(300);
		}
		if (closed)
			continue;
		struct lora_score s;
		memset(&s, 0, sizeof s);
		s.has_id = id != o->noid;
		s.id = id == o->bad ? id + 1000 : id;
		s.name = "cand";
		s.loss = loss;
		s.tokens = 10;
		s.examples = 2;
		struct lora_err err;
		if (lora_writer_put_score(w, &s, &err) ||
		    (id == o->dup && lora_writer_put_score(w, &s, &err))) {
			fprintf(stderr, "fake: %s\n", err.msg);
			return 1;
		}
		sent++;
		if (o->die_after && sent >= o->die_after) {
			fprintf(stderr, "fake: line one\nfake: simulated crash after %ld scores\n", sent);
			exit(3);
		}
		if (o->close_after && sent >= o->close_after) {
			fclose(stdout);
			closed = 1;
		}
	}
	lora_writer_close(w);
	msgpack_unpacker_destroy(&up);
	return 0;
}

static int self_test(void)
{
	/* the score writer accepts a NaN loss and the msgpack view reads it back */
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	struct lora_writer *w;
	lora_writer_open(m, "mem", &w, NULL);
	struct lora_score s;
	memset(&s, 0, sizeof s);
	s.has_id = 1;
	s.id = 42;
	s.loss = 0.25;
	int rc = lora_writer_put_score(w, &s, NULL);
	lora_writer_close(w);
	fclose(m);
	msgpack_unpacked res;
	msgpack_unpacked_init(&res);
	size_t off = 0;
	int ok = rc == 0 && msgpack_unpack_next(&res, buf, len, &off) == MSGPACK_UNPACK_SUCCESS;
	const msgpack_object *id = ok ? get(&res.data, "id") : NULL, *l = ok ? get(&res.data, "loss") : NULL;
	check(ok && id && num(id) == 42 && l && num(l) == 0.25, "score record round trip (id 42, loss 0.25)");
	msgpack_unpacked_destroy(&res);
	free(buf);
	return check_done();
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return self_test();
	if (!strcmp(argv[1], "pool") && argc == 3) {
		pool(atoi(argv[2]));
		return 0;
	}
	if (strcmp(argv[1], "obj")) {
		fprintf(stderr, "usage: test_fakeobj [pool N | obj [OPTIONS]]\n");
		return 2;
	}
	struct opts o = {.wstar = {0.3, -0.2, 0.5}, .nwstar = 3, .die_after = 0, .bad = -9,
			 .dup = -9, .noid = -9, .nan_at = -9, .inf_at = -9, .hang_at = -9};
	for (int i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "--wstar")) {
			o.nwstar = 0;
			for (char *s = (char *)v, *e; *s && o.nwstar < 64; s = *e ? e + 1 : e) {
				o.wstar[o.nwstar++] = strtod(s, &e);
				if (e == s)
					break;
			}
		} else if (!strcmp(k, "--const")) {
			o.konst = atof(v);
			o.has_const = 1;
		} else if (!strcmp(k, "--log")) {
			o.log = fopen(v, "a");
		} else {
			long x = atol(v);
			if (!strcmp(k, "--die-after")) o.die_after = x;
			else if (!strcmp(k, "--close-after")) o.close_after = x;
			else if (!strcmp(k, "--bad-id")) o.bad = x;
			else if (!strcmp(k, "--dup")) o.dup = x;
			else if (!strcmp(k, "--no-id")) o.noid = x;
			else if (!strcmp(k, "--nan-at")) o.nan_at = x;
			else if (!strcmp(k, "--inf-at")) o.inf_at = x;
			else if (!strcmp(k, "--hang-at")) o.hang_at = x;
			else if (!strcmp(k, "--slow")) o.slow_ms = x;
			else {
				fprintf(stderr, "fake: unknown option %s\n", k);
				return 2;
			}
		}
	}
	int rc = obj(&o);
	if (o.log)
		fclose(o.log);
	return rc;
}
