/* err — error-detail buffer helpers; see err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int lora_errf(struct lora_err *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	err->code = code;
	return code;
}

int lora_err_prefix(struct lora_err *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	char prefix[LORA_ERR_MAX], old[LORA_ERR_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof old);
	old[sizeof old - 1] = '\0';
	size_t k = strlen(prefix);
	if (k >= sizeof err->msg)
		k = sizeof err->msg - 1;
	memcpy(err->msg, prefix, k);
	size_t rest = strlen(old);
	if (rest > sizeof err->msg - 1 - k)
		rest = sizeof err->msg - 1 - k;
	memcpy(err->msg + k, old, rest);
	err->msg[k + rest] = '\0';
	if (err->code == 0)
		err->code = code;
	return err->code;
}

const char *lora_err_name(int code)
{
	switch (code) {
	case LORA_OK: return "LORA_OK";
	case LORA_EIO: return "LORA_EIO";
	case LORA_EFORMAT: return "LORA_EFORMAT";
	case LORA_ENOMEM: return "LORA_ENOMEM";
	case LORA_EINVAL: return "LORA_EINVAL";
	case LORA_EUNSUPPORTED: return "LORA_EUNSUPPORTED";
	case LORA_ENOTFOUND: return "LORA_ENOTFOUND";
	case LORA_EPIPE: return "LORA_EPIPE";
	case LORA_ETIMEOUT: return "LORA_ETIMEOUT";
	}
	return "LORA_E?";
}

int lora_size_mul(size_t a, size_t b, size_t *out)
{
	if (a != 0 && b > SIZE_MAX / a)
		return LORA_ENOMEM;
	*out = a * b;
	return 0;
}

int lora_size_add(size_t a, size_t b, size_t *out)
{
	if (b > SIZE_MAX - a)
		return LORA_ENOMEM;
	*out = a + b;
	return 0;
}
