/* cli — shared main() helpers for the lora-* tools; see cli.h. */
#include "cli.h"
#include "cpu.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *lora_prog = "lora";

void lora_cli_init(int argc, char **argv, bool want_fast_blas)
{
	(void)argc;
	const char *slash = strrchr(argv[0], '/');
	lora_prog = slash ? slash + 1 : argv[0];
	signal(SIGPIPE, SIG_IGN);
	if (want_fast_blas)
		lora_cpu_fast_blas_reexec(argv);
}

static void vmsg(const char *fmt, va_list ap)
{
	fprintf(stderr, "%s: ", lora_prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void lora_cli_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
}

void lora_cli_die(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
	exit(code);
}

void lora_cli_die_err(const struct lora_err *err)
{
	fprintf(stderr, "%s: %s\n", lora_prog, err->msg[0] ? err->msg : "failed");
	exit(LORA_EXIT_FAIL);
}

void lora_cli_usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try '%s --help'.\n", lora_prog);
	exit(LORA_EXIT_USAGE);
}

double lora_cli_double(const char *s, const char *option)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end != '\0' || errno == ERANGE)
		lora_cli_usage_error("%s: '%s' is not a number", option, s);
	return v;
}

long long lora_cli_int(const char *s, const char *option, long long min, long long max)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (end == s || *end != '\0' || errno == ERANGE)
		lora_cli_usage_error("%s: '%s' is not an integer", option, s);
	if (v < min || v > max)
		lora_cli_usage_error("%s: %lld is out of range [%lld, %lld]", option, v, min, max);
	return v;
}

void lora_cli_refuse_tty_stdout(void)
{
	if (isatty(STDOUT_FILENO))
		lora_cli_die(LORA_EXIT_USAGE,
			     "refusing to write a binary stream to a terminal; "
			     "redirect it to a file or pipe it (e.g. '| lora-pack -t')");
}

int lora_cli_close_stdout(void)
{
	int bad = ferror(stdout);
	if (fflush(stdout) != 0)
		bad = 1;
	int saved = errno;
	if (fclose(stdout) != 0 && !bad) {
		bad = 1;
		saved = errno;
	}
	if (bad) {
		fprintf(stderr, "%s: write error on standard output: %s\n", lora_prog,
			strerror(saved ? saved : EIO));
		return 1;
	}
	return 0;
}

void lora_cli_version(void)
{
	printf("%s (lorapipe) %s\n", lora_prog, LORA_VERSION);
	exit(0);
}
