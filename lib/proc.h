/*
 * proc — a coprocess: COMMAND started with fork/exec (no shell), its stdin
 * and stdout connected to us by two pipes, its stderr piped through a
 * thread that copies it to ours and keeps the last lines for error messages.
 *
 * Deadlock freedom: writing to the child (through the FILE from
 * lora_proc_in) also drains whatever the child writes to its stdout into a
 * buffer, and the stderr thread always drains stderr, so a child that
 * answers while we are still writing never blocks us both. Reads wait with
 * poll(2) and an optional timeout.
 * Limits: POSIX only; one reader thread per coprocess; the kept stderr tail
 * is the last 4 KiB.
 */
#ifndef LORA_PROC_H
#define LORA_PROC_H

#include <stddef.h>
#include <stdio.h>

#include "err.h"

struct lora_proc;

/* Start argv[0] (looked up in PATH) with argv. passthrough (may be NULL)
 * receives a copy of the child's stderr as it arrives. Returns 0, or
 * LORA_EIO ("cannot run 'x': No such file or directory", fork/pipe
 * failures). The child gets SIGPIPE restored to its default. */
int lora_proc_start(char *const argv[], FILE *passthrough, struct lora_proc **out,
		    struct lora_err *err);

/* A FILE writing to the child's stdin (owned by p; do not fclose it, use
 * lora_proc_close_in). Write errors (the child closed its stdin or died)
 * set the FILE's error flag with errno EPIPE. */
FILE *lora_proc_in(struct lora_proc *p);

/* Close the child's stdin (it sees end of input). Returns 0 or LORA_EIO
 * if buffered data could not be written. */
int lora_proc_close_in(struct lora_proc *p);

/* Read up to cap bytes of the child's stdout into buf. Waits until at least
 * one byte is available, the child closes its stdout (*got = 0, returns 0),
 * or timeout seconds pass (timeout ≤ 0: no limit; returns LORA_ETIMEOUT).
 * Returns 0 or LORA_EIO/LORA_ETIMEOUT with a message. */
int lora_proc_read(struct lora_proc *p, void *buf, size_t cap, double timeout, size_t *got,
		   struct lora_err *err);

/* Close stdin, wait up to grace seconds for the child to exit, then send
 * SIGTERM (and SIGKILL a second later). Stores the waitpid status in
 * *status (may be NULL). Idempotent. Returns 0 or LORA_EIO. */
int lora_proc_finish(struct lora_proc *p, double grace, int *status);

/* Has the child exited? If so, store its status (non-blocking). */
int lora_proc_exited(struct lora_proc *p, int *status);

/* "exited with status 3", "was killed by signal 9 (Killed)". */
void lora_proc_status_str(int status, char *buf, size_t cap);

/* The last max_lines lines the child wrote to stderr (at most cap−1
 * bytes, NUL-terminated, "" if none), lines joined by "\n". */
void lora_proc_stderr_tail(struct lora_proc *p, char *buf, size_t cap, int max_lines);

/* The child's pid (for messages and tests). */
long lora_proc_pid(const struct lora_proc *p);

/* Kill the child if it still runs, reap it, join the stderr thread, free
 * everything. Accepts NULL. */
void lora_proc_free(struct lora_proc *p);

#endif
