/* test_stream_pipe — the reader hands out a record as soon as its bytes are on
 * a pipe, without waiting for more input or end of file: a coprocess served
 * record by record (lora-cmaes -> lora-eval) would deadlock otherwise. */
#include "check.h"
#include "stream.h"

#include <fcntl.h>
#include <signal.h>

static void on_alarm(int sig)
{
	(void)sig;
	static const char msg[] = "not ok - reader blocked on a pipe holding a whole record\n"
				   "0 passed, 1 failed, 0 skipped\n";
	if (write(1, msg, sizeof msg - 1) < 0)
		_exit(2);
	_exit(1);
}

int main(void)
{
	int fds[2];
	if (pipe(fds) != 0)
		return 1;
	/* a non-blocking read end, as a parent may hand its child: still one
	 * record at a time, waiting when nothing has arrived yet */
	fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
	FILE *in = fdopen(fds[0], "rb"), *out = fdopen(fds[1], "wb");
	struct lora_err err = { 0 };
	struct lora_writer *w = NULL;
	struct lora_reader *r = NULL;
	check(lora_writer_open(out, "pipe", &w, &err) == 0, "writer on a pipe");
	check(lora_reader_open(in, "pipe", &r, &err) == 0, "reader on a pipe");
	signal(SIGALRM, on_alarm);
	for (int k = 0; k < 3; k++) {
		char *name = "a";
		double wt = 0.5 + k;
		struct lora_weights ws = { .n = 1, .names = &name, .w = &wt, .has_id = true,
					   .id = k, .loss = NAN, .objective = NAN };
		check(lora_writer_put_weights(w, &ws, &err) == 0, "write weights record %d", k);
		alarm(5);
		struct lora_record rec;
		int rc = lora_reader_next(r, &rec, &err);
		alarm(0);
		check(rc == 1 && rec.kind == LORA_REC_WEIGHTS && rec.u.weights.id == k &&
		      rec.u.weights.w[0] == wt, "record %d read while the pipe stays open", k);
		lora_record_free(&rec);
	}
	lora_writer_close(w);
	fclose(out);
	struct lora_record rec;
	check(lora_reader_next(r, &rec, &err) == 0, "clean end once the writer closes");
	lora_reader_close(r);
	fclose(in);
	return check_done();
}
