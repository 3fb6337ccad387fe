/*
 * err — error codes and the error-detail buffer every lib/ function fills.
 *
 * The library never prints and never exits. A function that can fail returns
 * 0 on success or a negative LORA_E* code, and writes a one-line, lower-case
 * message without a trailing full stop into a caller-supplied struct lora_err
 * (which may be NULL when the caller does not care).
 */
#ifndef LORA_ERR_H
#define LORA_ERR_H

#include <stddef.h>

enum {
	LORA_OK = 0,
	LORA_EIO = -1,		/* a read, write, open or mmap failed */
	LORA_EFORMAT = -2,	/* input is malformed (bad JSON, bad stream, bad header) */
	LORA_ENOMEM = -3,	/* allocation failed or a size overflowed */
	LORA_EINVAL = -4,	/* a value is out of range or inconsistent (shape, name) */
	LORA_EUNSUPPORTED = -5,	/* well formed, but a feature we refuse (DoRA, int8) */
	LORA_ENOTFOUND = -6,	/* a named file, tensor, key or module is missing */
	LORA_EPIPE = -7,	/* the peer closed its end (broken pipe) */
	LORA_ETIMEOUT = -8,	/* a coprocess did not answer in time */
};

#define LORA_ERR_MAX 1024

struct lora_err {
	int code;
	char msg[LORA_ERR_MAX];
};

/* Format a message into err (if not NULL) and return code, so callers write
 * `return lora_errf(err, LORA_EINVAL, "tensor '%s' ...", name);`. */
int lora_errf(struct lora_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefix an existing message with more context: "file.json: " + old message.
 * Returns err->code (or the code argument if err is NULL). */
int lora_err_prefix(struct lora_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A short name for a code, for tests and logs: "LORA_EFORMAT". */
const char *lora_err_name(int code);

/* Checked 64-bit size arithmetic: return 0 and store the result, or
 * LORA_ENOMEM on overflow. */
int lora_size_mul(size_t a, size_t b, size_t *out);
int lora_size_add(size_t a, size_t b, size_t *out);

#endif
