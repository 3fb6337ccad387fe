#!/bin/sh
# t0502 — lora-cmaes against objectives that break the protocol: one that
# dies, closes its output, lies about ids, repeats one, omits one, returns
# NaN/Inf, hangs (--eval-timeout). Every failure exits 1 with a message
# naming the problem, writes nothing on stdout and leaves the trace intact
# up to the last completed evaluation. Fake objective: tests/unit/test_fakeobj.c.
. "$(dirname "$0")/lib.sh"
FAKE="$LORA_BUILD/tests/test_fakeobj"

test_expect_success 'an objective that dies: exit status and its last stderr lines' '
	$FAKE pool 3 >pool.lora &&
	test_exit 1 lora-cmaes -q --trace tr.csv -- $FAKE obj --die-after 5 <pool.lora >out 2>err &&
	test ! -s out &&
	# it may be gone before candidate 6 is sent, or after
	grep -E "closed its output after 0 of 1 scores \(no score for id 6\)|cannot send candidate 6 to" err &&
	test_grep "exited with status 3" err &&
	test_grep "| fake: simulated crash after 5 scores" err &&
	test_grep "| fake: line one" err &&
	test $(wc -l <tr.csv) -eq 6 &&
	tail -n 1 tr.csv | grep -q "^4,5,"
'

test_expect_success 'cmaes: a death mid-generation keeps the completed rows' '
	$FAKE pool 3 >pool.lora &&
	test_exit 1 lora-cmaes -q --method cmaes --trace tr.csv -- $FAKE obj --die-after 4 <pool.lora >out 2>err &&
	test_grep "closed its output after 3 of 7 scores (no score for id 5)" err &&
	test $(wc -l <tr.csv) -eq 5
'

test_expect_success 'an objective that closes its stdout early' '
	$FAKE pool 2 >pool.lora &&
	test_exit 1 lora-cmaes -q -- $FAKE obj --close-after 2 <pool.lora >out 2>err &&
	grep -E "closed its output after 0 of 1 scores \(no score for id 3\)|cannot send candidate 3 to" err &&
	test ! -s out
'

test_expect_success 'an unknown id is an error naming it' '
	$FAKE pool 2 >pool.lora &&
	test_exit 1 lora-cmaes -q -- $FAKE obj --bad-id 3 <pool.lora >out 2>err &&
	test_grep "sent a score for unknown id 1003 (waiting for ids 3..3)" err
'

test_expect_success 'a duplicated id is an error naming it' '
	$FAKE pool 3 >pool.lora &&
	test_exit 1 lora-cmaes -q --method cmaes -- $FAKE obj --dup 4 <pool.lora >out 2>err &&
	test_grep "sent two scores for id 4" err
'

test_expect_success 'a score without an id is an error' '
	$FAKE pool 2 >pool.lora &&
	test_exit 1 lora-cmaes -q -- $FAKE obj --no-id 2 <pool.lora >out 2>err &&
	test_grep "score record without an id (waiting for ids 2..2)" err
'

test_expect_success 'NaN and Inf losses count as the worst, are reported, the run goes on' '
	$FAKE pool 3 >pool.lora &&
	lora-cmaes --method cmaes --trace tr.csv -- $FAKE obj --nan-at 3 --inf-at 5 <pool.lora >out.lora 2>err &&
	test_grep "id 3: loss is nan; counted as the worst value" err &&
	test_grep "id 5: loss is inf" err &&
	test_grep "2 NaN/Inf losses" err &&
	sed -n 4p tr.csv | grep -q ",nan,.*,nan,0.3$" &&
	test -s out.lora &&
	for m in cobyla neldermead bobyqa; do
		lora-cmaes -q --method $m -- $FAKE obj --nan-at 2 --inf-at 3 <pool.lora >o.lora || return 1
	done
'

test_expect_success '--eval-timeout stops a hanging objective' '
	$FAKE pool 2 >pool.lora &&
	test_exit 1 lora-cmaes -q --eval-timeout 1 --trace tr.csv -- $FAKE obj --hang-at 4 <pool.lora >out 2>err &&
	test_grep "did not answer within 1 s (--eval-timeout 1) waiting for the scores of ids 4..4" err &&
	test_grep "killed by signal 15" err &&
	test_grep "| fake: hanging at id 4" err &&
	test $(wc -l <tr.csv) -eq 4 && test ! -s out
'

test_expect_success 'COMMAND runs without a shell: its arguments arrive verbatim' '
	$FAKE pool 2 >pool.lora &&
	lora-cmaes -q --budget 3 -- $FAKE obj --log "log file.txt" <pool.lora >out.lora &&
	test $(wc -l <"log file.txt") -eq 3
'

test_expect_success 'input weights and score records are ignored with a warning' '
	$FAKE pool 2 >pool.lora &&
	lora-cmaes -q --budget 3 -- $FAKE obj <pool.lora >first.lora &&
	lora-cmaes --budget 3 -- $FAKE obj <first.lora >second.lora 2>err &&
	test_grep "ignoring weights record 3" err
'

test_expect_success 'garbage input is refused before COMMAND starts' '
	printf "not a stream" >bad &&
	test_exit 1 lora-cmaes -q -- $FAKE obj --log started <bad >out 2>err &&
	test ! -e started && test ! -s out
'

test_done
