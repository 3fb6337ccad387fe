/*
 * cli — what every lora-* main shares: program name, error messages in the
 * "lora-x: message" form, number parsing with end-pointer checks, refusing a
 * terminal for binary output, checking stdout at exit, and arranging for
 * OpenBLAS's AVX-512 kernels. Linked into each tool, not into liblora.a.
 */
#ifndef LORA_CLI_H
#define LORA_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

/* Exit codes shared by every tool (documented in each man page). */
enum { LORA_EXIT_OK = 0, LORA_EXIT_FAIL = 1, LORA_EXIT_USAGE = 2 };

extern const char *lora_prog;

/* Set the program name, ignore SIGPIPE (a closed pipe becomes a reported
 * write error, not a silent death). When want_fast_blas is true, re-execute
 * with OpenBLAS's AVX-512 kernels where the CPU has them (lib/cpu.h says
 * when; LORA_BLAS_CORETYPE forces a core type, LORA_NO_REEXEC=1 disables). */
void lora_cli_init(int argc, char **argv, bool want_fast_blas);

/* "prog: message\n" on stderr. */
void lora_cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print and exit with the given code. */
_Noreturn void lora_cli_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print a lib error (err->msg) and exit 1. */
_Noreturn void lora_cli_die_err(const struct lora_err *err);
/* "prog: message\nTry 'prog --help'.\n", exit 2. */
_Noreturn void lora_cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parse a whole string as a number; on failure exit 2 naming the option. */
double lora_cli_double(const char *s, const char *option);
long long lora_cli_int(const char *s, const char *option, long long min, long long max);

/* Exit 2 with a hint when stdout is a terminal (binary stream output). */
void lora_cli_refuse_tty_stdout(void);
/* Flush and close stdout; on failure (full disk, broken pipe) print and
 * return 1, else return 0. Call once at the end of main. */
int lora_cli_close_stdout(void);

/* "prog (lorapipe) VERSION" on stdout, exit 0. */
_Noreturn void lora_cli_version(void);

#endif
