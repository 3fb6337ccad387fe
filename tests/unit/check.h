/*
 * check — the unit-test harness: each check prints one line,
 *   "ok - what"  /  "not ok - what (detail)"  /  "skip - what (why)",
 * and check_done() prints "N passed, N failed, N skipped" and returns the exit
 * code. tests/run.sh adds these lines up across every test program.
 *
 * Paths: check_shared(rel) gives "$LORA_SHARED/rel" (default
 * "<top>/../shared/data") or NULL when that folder is absent, so tests that
 * need the real data skip instead of passing. check_tmpdir() is a fresh
 * directory for this test program.
 */
#ifndef LORA_CHECK_H
#define LORA_CHECK_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int check_passed, check_failed, check_skipped;

__attribute__((format(printf, 2, 3), unused))
static int check(int cond, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf(cond ? "ok - " : "not ok - ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	if (cond)
		check_passed++;
	else
		check_failed++;
	fflush(stdout);
	return cond;
}

/* |got - want| <= atol + rtol * |want|; prints the difference either way. */
__attribute__((unused))
static int check_near(double got, double want, double atol, double rtol, const char *what)
{
	double d = fabs(got - want);
	int ok = d <= atol + rtol * fabs(want) && !isnan(got);
	printf("%s - %s: got %.9g want %.9g (diff %.3g, tol %.3g)\n", ok ? "ok" : "not ok",
	       what, got, want, d, atol + rtol * fabs(want));
	ok ? check_passed++ : check_failed++;
	fflush(stdout);
	return ok;
}

/* Max |a-b| over n floats, printed with the tolerance. */
__attribute__((unused))
static int check_close_f32(const float *got, const float *want, size_t n, double atol,
			   double rtol, const char *what)
{
	double worst = 0, worst_tol = atol;
	size_t at = 0;
	int ok = 1;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)got[i] - (double)want[i]);
		double tol = atol + rtol * fabs((double)want[i]);
		if (!(d <= tol))
			ok = 0;
		if (d > worst || isnan(d)) {
			worst = d;
			worst_tol = tol;
			at = i;
		}
	}
	printf("%s - %s: max diff %.3g at %zu (tol %.3g), n=%zu\n", ok ? "ok" : "not ok", what,
	       worst, at, worst_tol, n);
	ok ? check_passed++ : check_failed++;
	fflush(stdout);
	return ok;
}

__attribute__((format(printf, 1, 2), unused))
static void check_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("skip - ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	check_skipped++;
	fflush(stdout);
}

/* "$LORA_SHARED/rel" if it exists, else NULL. Static buffer rotation (4). */
__attribute__((unused))
static const char *check_shared(const char *rel)
{
	static char bufs[4][4096];
	static int k;
	const char *root = getenv("LORA_SHARED");
	if (!root || !*root)
		return NULL;
	char *b = bufs[k++ & 3];
	snprintf(b, sizeof bufs[0], "%s/%s", root, rel);
	struct stat st;
	return stat(b, &st) == 0 ? b : NULL;
}

/* A fresh directory under $LORA_TMP (made by tests/run.sh) for this program. */
__attribute__((unused))
static const char *check_tmpdir(const char *name)
{
	static char buf[4096];
	const char *root = getenv("LORA_TMP");
	snprintf(buf, sizeof buf, "%s/%s", root && *root ? root : "/tmp", name);
	char cmd[8400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", buf, buf);
	if (system(cmd) != 0)
		return NULL;
	return buf;
}

__attribute__((unused))
static int check_done(void)
{
	printf("%d passed, %d failed, %d skipped\n", check_passed, check_failed, check_skipped);
	return check_failed ? 1 : 0;
}

#endif
