/*
 * fuzz_stream — libFuzzer harness for the lora stream reader (lib/stream.c).
 *
 * Reads the input as a stream record by record; every record that reads is
 * written back out, and the written stream must read again into as many
 * records (the reader must accept whatever the writer writes). Adapters are
 * also cloned and checked. Any crash, sanitizer report, leak or abort() is a
 * finding. Build with `make fuzz`; run e.g.
 *   build-fuzz/fuzz/fuzz_stream -max_total_time=180 -rss_limit_mb=2048 CORPUS/
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static size_t read_all(FILE *f, struct lora_writer *w)
{
	struct lora_reader *r;
	struct lora_err err = { 0 };
	if (lora_reader_open(f, "fuzz", &r, &err))
		abort();
	struct lora_record rec;
	size_t n = 0;
	int rc;
	while ((rc = lora_reader_next(r, &rec, &err)) != 0) {
		if (rc < 0) {
			if (!err.msg[0])
				abort();	/* every error has a message */
			if (rc == LORA_EFORMAT || rc == LORA_EIO)
				break;		/* framing errors end the stream */
			continue;		/* an invalid record: go on */
		}
		n++;
		if (rec.kind == LORA_REC_ADAPTER) {
			struct lora_adapter c;
			if (lora_adapter_check(&rec.u.adapter, &err))
				abort();	/* the reader returned an invalid adapter */
			if (lora_adapter_clone(&c, &rec.u.adapter, &err) == 0)
				lora_adapter_free(&c);
		}
		if (w && lora_writer_put(w, &rec, &err))
			abort();		/* the writer refused what the reader accepted */
		lora_record_free(&rec);
	}
	lora_reader_close(r);
	return n;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size == 0)
		return 0;
	FILE *f = fmemopen((void *)data, size, "r");
	if (!f)
		return 0;
	char *out = NULL;
	size_t out_len = 0;
	FILE *o = open_memstream(&out, &out_len);
	struct lora_writer *w;
	struct lora_err err = { 0 };
	if (!o || lora_writer_open(o, "out", &w, &err))
		abort();
	size_t n = read_all(f, w);
	fclose(f);
	lora_writer_close(w);
	fclose(o);
	if (out_len) {
		FILE *g = fmemopen(out, out_len, "r");
		if (read_all(g, NULL) != n)
			abort();	/* what we wrote must read back whole */
		fclose(g);
	} else if (n) {
		abort();
	}
	free(out);
	return 0;
}
