/*
 * fuzz_st — libFuzzer harness for the safetensors reader (lib/st.c).
 *
 * Each input is written to an in-memory file (memfd) and opened by path
 * through /proc/self/fd, so the real mmap path is exercised. When the file is
 * accepted, every tensor is looked up by name and all its bytes are read, so
 * an offset the validator let through that points outside the mapping is
 * caught by ASan. Accepted files are also written back with lora_st_write
 * (to /dev/shm, where fsync is free) and re-read: the copy must open and hold
 * the same tensors, in the writer's order. Build with `make fuzz`; run as
 *   build-fuzz/fuzz/fuzz_st -max_total_time=180 corpus/
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "st.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz_st", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	size_t off = 0;
	while (off < size) {
		ssize_t k = write(fd, data + off, size - off);
		if (k <= 0)
			break;
		off += (size_t)k;
	}
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	struct lora_st *st = NULL;
	struct lora_err err;
	if (lora_st_open(path, &st, &err) == 0) {
		unsigned sum = 0;
		uint64_t end = 0;
		for (size_t i = 0; i < lora_st_count(st); i++) {
			const struct lora_st_tensor *t = lora_st_get(st, i);
			const struct lora_st_tensor *u = lora_st_find(st, t->name);
			if (u != t)
				abort();	/* names are unique: find must return the same tensor */
			const unsigned char *p = t->data;
			for (size_t j = 0; j < t->nbytes; j++)
				sum += p[j];
			end += t->nbytes;
		}
		/* the tensors tile the data region exactly */
		if (end > size)
			abort();
		(void)sum;
		const struct lora_doc *md = lora_st_metadata(st);
		if (md && md->type != LORA_DOC_MAP)
			abort();
		size_t n = lora_st_count(st);
		struct lora_st_tensor *t = malloc((n ? n : 1) * sizeof *t);
		for (size_t i = 0; i < n; i++)
			t[i] = *lora_st_get(st, i);
		char out[64];
		snprintf(out, sizeof out, "/dev/shm/fuzz_st.%d", (int)getpid());
		if (lora_st_write(out, t, n, md, &err) != 0) {
			fprintf(stderr, "rewrite failed: %s\n", err.msg);
			abort();
		}
		struct lora_st *st2 = NULL;
		if (lora_st_open(out, &st2, &err) != 0) {
			fprintf(stderr, "rewritten file refused: %s\n", err.msg);
			abort();
		}
		if (lora_st_count(st2) != n)
			abort();
		for (size_t i = 0; i < n; i++) {
			const struct lora_st_tensor *a = lora_st_get(st, i);
			const struct lora_st_tensor *b = lora_st_find(st2, a->name);
			if (!b || b->dtype != a->dtype || b->ndim != a->ndim ||
			    b->nbytes != a->nbytes ||
			    memcmp(a->shape, b->shape, sizeof a->shape) != 0 ||
			    (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0))
				abort();
		}
		lora_st_close(st2);
		unlink(out);
		free(t);
		lora_st_close(st);
	} else if (err.msg[0] == '\0') {
		abort();	/* every refusal carries a message */
	}
	close(fd);
	return 0;
}
