/*
 * proc — the coprocess pipe pair; see proc.h.
 *
 * Three pipes (O_CLOEXEC): child stdin (we write), child stdout (we read),
 * child stderr (a thread reads, copies to `passthrough`, keeps a 4 KiB
 * tail). A fourth, close-on-exec pipe reports an exec failure's errno to
 * the parent so "cannot run 'x'" is an error here, not a mystery exit 127.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TAIL_MAX 4096

struct lora_proc {
	pid_t pid;
	int in_fd, out_fd, err_fd;
	FILE *in;
	/* child stdout bytes drained while we were writing */
	char *ob;
	size_t ob_len, ob_off, ob_cap;
	int out_eof;
	/* stderr thread */
	pthread_t thr;
	int thr_started;
	volatile int thr_stop, thr_done;
	pthread_mutex_t mu;
	char tail[TAIL_MAX];
	size_t tail_len;
	FILE *pass;
	/* exit */
	int reaped, status;
	char *name;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- stderr thread ---- */

static void tail_add(struct lora_proc *p, const char *b, size_t n)
{
	pthread_mutex_lock(&p->mu);
	if (n >= TAIL_MAX) {
		b += n - (TAIL_MAX - 1);
		n = TAIL_MAX - 1;
	}
	if (p->tail_len + n >= TAIL_MAX) {
		size_t drop = p->tail_len + n - (TAIL_MAX - 1);
		memmove(p->tail, p->tail + drop, p->tail_len - drop);
		p->tail_len -= drop;
	}
	memcpy(p->tail + p->tail_len, b, n);
	p->tail_len += n;
	pthread_mutex_unlock(&p->mu);
}

static void *stderr_thread(void *arg)
{
	struct lora_proc *p = arg;
	char buf[4096];
	for (;;) {
		struct pollfd pf = {.fd = p->err_fd, .events = POLLIN};
		int r = poll(&pf, 1, 100);
		if (r < 0 && errno != EINTR)
			break;
		if (r <= 0) {
			if (p->thr_stop)
				break;
			continue;
		}
		ssize_t n = read(p->err_fd, buf, sizeof buf);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			break;
		if (p->pass) {
			fwrite(buf, 1, (size_t)n, p->pass);
			fflush(p->pass);
		}
		tail_add(p, buf, (size_t)n);
	}
	p->thr_done = 1;
	return NULL;
}

/* ---- writing: a cookie FILE that drains stdout while it waits ---- */

static int drain_out(struct lora_proc *p)
{
	if (p->out_eof)
		return 0;
	if (p->ob_off > 0 && p->ob_off == p->ob_len)
		p->ob_off = p->ob_len = 0;
	if (p->ob_cap - p->ob_len < 65536) {
		size_t cap = p->ob_cap ? 2 * p->ob_cap : 131072;
		char *nb = realloc(p->ob, cap);
		if (!nb)
			return -1;
		p->ob = nb;
		p->ob_cap = cap;
	}
	ssize_t n = read(p->out_fd, p->ob + p->ob_len, p->ob_cap - p->ob_len);
	if (n > 0)
		p->ob_len += (size_t)n;
	else if (n == 0)
		p->out_eof = 1;
	else if (errno != EINTR && errno != EAGAIN)
		p->out_eof = 1;
	return 0;
}

static ssize_t cookie_write(void *c, const char *buf, size_t size)
{
	struct lora_proc *p = c;
	size_t done = 0;
	while (done < size) {
		struct pollfd pf[2] = {{.fd = p->in_fd, .events = POLLOUT},
				       {.fd = p->out_eof ? -1 : p->out_fd, .events = POLLIN}};
		int r = poll(pf, 2, -1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return done ? (ssize_t)done : -1;
		}
		if (pf[1].revents & (POLLIN | POLLHUP | POLLERR))
			if (drain_out(p) < 0) {
				errno = ENOMEM;
				return done ? (ssize_t)done : -1;
			}
		if (pf[0].revents & (POLLERR | POLLHUP) && !(pf[0].revents & POLLOUT)) {
			errno = EPIPE;
			return done ? (ssize_t)done : -1;
		}
		if (pf[0].revents & POLLOUT) {
			ssize_t n = write(p->in_fd, buf + done, size - done);
			if (n < 0) {
				if (errno == EINTR || errno == EAGAIN)
					continue;
				return done ? (ssize_t)done : -1;
			}
			done += (size_t)n;
		}
	}
	return (ssize_t)done;
}

static int cookie_close(void *c)
{
	struct lora_proc *p = c;
	int fd = p->in_fd;
	p->in_fd = -1;
	return fd >= 0 ? close(fd) : 0;
}

/* ---- start ---- */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

int lora_proc_start(char *const argv[], FILE *passthrough, struct lora_proc **out,
		    struct lora_err *err)
{
	*out = NULL;
	if (!argv || !argv[0])
		return lora_errf(err, LORA_EINVAL, "no command to run");
	int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, pexec[2] = {-1, -1};
	if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC) ||
	    pipe2(pexec, O_CLOEXEC)) {
		int e = errno;
		close_fd(&pin[0]), close_fd(&pin[1]), close_fd(&pout[0]), close_fd(&pout[1]);
		close_fd(&perr[0]), close_fd(&perr[1]), close_fd(&pexec[0]), close_fd(&pexec[1]);
		return lora_errf(err, LORA_EIO, "cannot create pipes for '%s': %s", argv[0], strerror(e));
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close_fd(&pin[0]), close_fd(&pin[1]), close_fd(&pout[0]), close_fd(&pout[1]);
		close_fd(&perr[0]), close_fd(&perr[1]), close_fd(&pexec[0]), close_fd(&pexec[1]);
		return lora_errf(err, LORA_EIO, "cannot start '%s': %s", argv[0], strerror(e));
	}
	if (pid == 0) {
		/* child: only async-signal-safe calls from here on */
		signal(SIGPIPE, SIG_DFL);
		if (dup2(pin[0], 0) < 0 || dup2(pout[1], 1) < 0 || dup2(perr[1], 2) < 0)
			_exit(127);
		execvp(argv[0], argv);
		int e = errno;
		ssize_t wr = write(pexec[1], &e, sizeof e);
		(void)wr;
		_exit(127);
	}
	close_fd(&pin[0]);
	close_fd(&pout[1]);
	close_fd(&perr[1]);
	close_fd(&pexec[1]);
	int e = 0;
	ssize_t n;
	do
		n = read(pexec[0], &e, sizeof e);
	while (n < 0 && errno == EINTR);
	close_fd(&pexec[0]);
	if (n == (ssize_t)sizeof e) {
		int st;
		waitpid(pid, &st, 0);
		close_fd(&pin[1]), close_fd(&pout[0]), close_fd(&perr[0]);
		return lora_errf(err, LORA_EIO, "cannot run '%s': %s", argv[0], strerror(e));
	}
	struct lora_proc *p = calloc(1, sizeof *p);
	cookie_io_functions_t io = {.write = cookie_write, .close = cookie_close};
	if (p)
		p->name = strdup(argv[0]);
	if (p)
		p->in = fopencookie(p, "w", io);
	if (!p || !p->name || !p->in) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close_fd(&pin[1]), close_fd(&pout[0]), close_fd(&perr[0]);
		if (p)
			free(p->name);
		free(p);
		return lora_errf(err, LORA_ENOMEM, "out of memory starting '%s'", argv[0]);
	}
	p->pid = pid;
	p->in_fd = pin[1];
	p->out_fd = pout[0];
	p->err_fd = perr[0];
	p->pass = passthrough;
	fcntl(p->in_fd, F_SETFL, fcntl(p->in_fd, F_GETFL) | O_NONBLOCK);
	fcntl(p->out_fd, F_SETFL, fcntl(p->out_fd, F_GETFL) | O_NONBLOCK);
	pthread_mutex_init(&p->mu, NULL);
	if (pthread_create(&p->thr, NULL, stderr_thread, p) == 0)
		p->thr_started = 1;
	*out = p;
	return 0;
}

FILE *lora_proc_in(struct lora_proc *p)
{
	return p->in;
}

int lora_proc_close_in(struct lora_proc *p)
{
	if (!p->in)
		return 0;
	int rc = fclose(p->in);
	p->in = NULL;
	return rc ? LORA_EIO : 0;
}

int lora_proc_read(struct lora_proc *p, void *buf, size_t cap, double timeout, size_t *got,
		   struct lora_err *err)
{
	*got = 0;
	if (cap == 0)
		return 0;
	if (p->ob_off < p->ob_len) {
		size_t k = p->ob_len - p->ob_off;
		if (k > cap)
			k = cap;
		memcpy(buf, p->ob + p->ob_off, k);
		p->ob_off += k;
		*got = k;
		return 0;
	}
	if (p->out_eof)
		return 0;
	double deadline = timeout > 0 ? now_s() + timeout : 0;
	for (;;) {
		int ms = -1;
		if (timeout > 0) {
			double left = deadline - now_s();
			if (left <= 0)
				return lora_errf(err, LORA_ETIMEOUT, "'%s' did not answer within %g s",
						 p->name, timeout);
			ms = (int)(left * 1000) + 1;
		}
		struct pollfd pf = {.fd = p->out_fd, .events = POLLIN};
		int r = poll(&pf, 1, ms);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return lora_errf(err, LORA_EIO, "poll on '%s' output: %s", p->name,
					 strerror(errno));
		}
		if (r == 0)
			continue;
		ssize_t n = read(p->out_fd, buf, cap);
		if (n > 0) {
			*got = (size_t)n;
			return 0;
		}
		if (n == 0) {
			p->out_eof = 1;
			return 0;
		}
		if (errno == EINTR || errno == EAGAIN)
			continue;
		p->out_eof = 1;
		return lora_errf(err, LORA_EIO, "reading the output of '%s': %s", p->name,
				 strerror(errno));
	}
}

int lora_proc_exited(struct lora_proc *p, int *status)
{
	if (!p->reaped) {
		int st;
		pid_t r = waitpid(p->pid, &st, WNOHANG);
		if (r == p->pid) {
			p->reaped = 1;
			p->status = st;
		}
	}
	if (p->reaped && status)
		*status = p->status;
	return p->reaped;
}

static int wait_until(struct lora_proc *p, double seconds)
{
	double end = now_s() + seconds;
	while (!lora_proc_exited(p, NULL)) {
		if (now_s() >= end)
			return 0;
		struct timespec ts = {0, 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 1;
}

int lora_proc_finish(struct lora_proc *p, double grace, int *status)
{
	int rc = lora_proc_close_in(p);
	if (!wait_until(p, grace)) {
		kill(p->pid, SIGTERM);
		if (!wait_until(p, 1.0)) {
			kill(p->pid, SIGKILL);
			int st;
			if (waitpid(p->pid, &st, 0) == p->pid) {
				p->reaped = 1;
				p->status = st;
			}
		}
	}
	if (p->thr_started) {
		/* the thread ends at the end of the child's stderr; a grandchild
		 * may keep it open, so wait at most a second, then stop it */
		for (int i = 0; i < 1000 && !p->thr_done; i++) {
			struct timespec ts = {0, 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		p->thr_stop = 1;
		pthread_join(p->thr, NULL);
		p->thr_started = 0;
	}
	if (status)
		*status = p->status;
	return rc;
}

void lora_proc_status_str(int status, char *buf, size_t cap)
{
	if (WIFEXITED(status))
		snprintf(buf, cap, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, cap, "ended with wait status %d", status);
}

void lora_proc_stderr_tail(struct lora_proc *p, char *buf, size_t cap, int max_lines)
{
	if (cap == 0)
		return;
	pthread_mutex_lock(&p->mu);
	size_t len = p->tail_len;
	while (len > 0 && (p->tail[len - 1] == '\n' || p->tail[len - 1] == '\r'))
		len--;
	size_t start = len;
	int lines = 0;
	while (start > 0) {
		if (p->tail[start - 1] == '\n' && ++lines >= max_lines)
			break;
		start--;
	}
	size_t k = len - start;
	if (k > cap - 1) {
		start += k - (cap - 1);
		k = cap - 1;
	}
	memcpy(buf, p->tail + start, k);
	buf[k] = '\0';
	pthread_mutex_unlock(&p->mu);
}

long lora_proc_pid(const struct lora_proc *p)
{
	return (long)p->pid;
}

void lora_proc_free(struct lora_proc *p)
{
	if (!p)
		return;
	if (!p->reaped || p->thr_started)
		lora_proc_finish(p, 0, NULL);
	if (p->in)
		fclose(p->in);
	if (p->out_fd >= 0)
		close(p->out_fd);
	if (p->err_fd >= 0)
		close(p->err_fd);
	pthread_mutex_destroy(&p->mu);
	free(p->ob);
	free(p->name);
	free(p);
}
