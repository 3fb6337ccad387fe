/*
 * bench_doc — cost of lora_doc_parse_buffer on the real GPT-2 tokenizer.json
 * (3.5 MB, 50k vocab map, 50k merges) against libyaml's bare event scan of
 * the same bytes (the floor: every byte must go through libyaml), and the
 * CPU time of one lora_st_open + full read of a model file against reading
 * the same file with read(). Prints one line: medians of 5 runs (CPU time of
 * this process) and the ratios, measured in the same run.
 * Needs $LORA_SHARED (or ../shared/data); says "skipped" without it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <yaml.h>

#include "doc.h"
#include "st.h"

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median5(double *v)
{
	qsort(v, 5, sizeof *v, cmp_d);
	return v[2];
}

static char *slurp(const char *p, size_t *len)
{
	FILE *f = fopen(p, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	*len = fread(b, 1, (size_t)n, f);
	fclose(f);
	return b;
}

/* libyaml's event parser over buf, events discarded. */
static size_t yaml_scan(const char *buf, size_t len)
{
	yaml_parser_t p;
	yaml_event_t ev;
	size_t n = 0;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
	for (;;) {
		if (!yaml_parser_parse(&p, &ev))
			break;
		int end = ev.type == YAML_STREAM_END_EVENT;
		yaml_event_delete(&ev);
		n++;
		if (end)
			break;
	}
	yaml_parser_delete(&p);
	return n;
}

int main(void)
{
	const char *root = getenv("LORA_SHARED");
	char path[4096], stpath[4096];
	snprintf(path, sizeof path, "%s/gpt2-tokenizer/tokenizer.json",
		 root && *root ? root : "../shared/data");
	snprintf(stpath, sizeof stpath, "%s/gpt2-lora-quotes/adapter_model.safetensors",
		 root && *root ? root : "../shared/data");
	size_t len;
	char *buf = slurp(path, &len);
	if (!buf) {
		printf("bench_doc: skipped (no %s)\n", path);
		return 0;
	}
	double tp[5], ty[5], ts[5], tr[5];
	struct lora_err err;
	for (int k = 0; k < 5; k++) {
		double t0 = cpu_now();
		struct lora_doc *d = NULL;
		if (lora_doc_parse_buffer(buf, len, path, 1, &d, &err) < 0) {
			printf("bench_doc: %s\n", err.msg);
			return 1;
		}
		lora_doc_free(d);
		double t1 = cpu_now();
		yaml_scan(buf, len);
		double t2 = cpu_now();
		tp[k] = t1 - t0;
		ty[k] = t2 - t1;

		struct lora_st *st;
		t0 = cpu_now();
		unsigned sum = 0;
		if (lora_st_open(stpath, &st, &err) == 0) {
			for (size_t i = 0; i < lora_st_count(st); i++) {
				const struct lora_st_tensor *t = lora_st_get(st, i);
				for (size_t j = 0; j < t->nbytes; j += 64)
					sum += ((const unsigned char *)t->data)[j];
			}
			lora_st_close(st);
		}
		t1 = cpu_now();
		size_t sl;
		char *sb = slurp(stpath, &sl);
		for (size_t j = 0; sb && j < sl; j += 64)
			sum += (unsigned char)sb[j];
		free(sb);
		t2 = cpu_now();
		ts[k] = t1 - t0;
		tr[k] = t2 - t1;
		if (sum == 1)
			putchar(' ');
	}
	double p = median5(tp), y = median5(ty), s = median5(ts), r = median5(tr);
	printf("bench_doc: tokenizer.json %.1f MB parsed to a tree in %.0f ms CPU (%.0f MB/s), "
	       "libyaml bare scan %.0f ms: ratio %.2f; st_open+read %.2f ms vs read() %.2f ms: ratio %.2f\n",
	       (double)len / 1e6, p * 1e3, (double)len / 1e6 / p, y * 1e3, p / y, s * 1e3, r * 1e3,
	       s / r);
	free(buf);
	return 0;
}
