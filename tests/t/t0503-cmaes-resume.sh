#!/bin/sh
# t0503 — --trace/--resume: a killed search resumes to exactly the result of
# an uninterrupted run with the same seed (the optimizers are deterministic
# functions of the losses, which the trace keeps with 17 digits).
. "$(dirname "$0")/lib.sh"
FAKE="$LORA_BUILD/tests/test_fakeobj"

# run_killed METHOD: start a slow search, kill -9 it once its trace has 15
# evaluations, leave the trace in tr.csv
run_killed() {
	lora-cmaes -q --method "$1" --budget 40 --seed 3 --trace tr.csv \
		-- $FAKE obj --slow 40 <pool.lora >killed.lora 2>/dev/null &
	pid=$!
	i=0
	while [ $i -lt 600 ]; do
		[ -f tr.csv ] && [ "$(wc -l <tr.csv)" -ge 16 ] && break
		sleep 0.05
		i=$((i + 1))
	done
	kill -9 $pid
	wait $pid 2>/dev/null
	n=$(wc -l <tr.csv)
	echo "killed with $n trace lines"
	echo $((n - 1)) >replayed.n
	[ "$n" -ge 16 ] && [ "$n" -lt 41 ]
}

for m in cmaes cobyla; do
	test_expect_success "$m: a killed run resumes to the uninterrupted result" "
		\$FAKE pool 5 >pool.lora &&
		lora-cmaes -q --method $m --budget 40 --seed 3 --trace full.csv \
			-- \$FAKE obj <pool.lora >full.lora &&
		run_killed $m &&
		test ! -s killed.lora &&
		lora-cmaes --method $m --budget 40 --seed 3 --resume tr.csv \
			-- \$FAKE obj --log asked <pool.lora >resumed.lora 2>err &&
		test_grep '(replayed)' err &&
		cmp full.lora resumed.lora &&
		test_cmp full.csv tr.csv &&
		test \$(wc -l <asked) -eq \$((40 - \$(cat replayed.n)))
	"
done

test_expect_success 'only the missing evaluations are sent again' '
	$FAKE pool 4 >pool.lora &&
	lora-cmaes -q --method cmaes --trace full.csv -- $FAKE obj <pool.lora >full.lora &&
	head -n 18 full.csv >part.csv &&
	lora-cmaes -q --method cmaes --resume part.csv -- $FAKE obj --log asked <pool.lora >resumed.lora &&
	test $(wc -l <asked) -eq 23 && head -n 1 asked | grep -q "^18 " &&
	cmp full.lora resumed.lora && test_cmp full.csv part.csv
'

test_expect_success 'a partial last line (killed while writing) is dropped' '
	$FAKE pool 4 >pool.lora &&
	lora-cmaes -q --trace full.csv -- $FAKE obj <pool.lora >full.lora &&
	head -n 11 full.csv >part.csv && printf "10,11,0.1" >>part.csv &&
	lora-cmaes -q --resume part.csv -- $FAKE obj <pool.lora >resumed.lora &&
	cmp full.lora resumed.lora && test_cmp full.csv part.csv
'

test_expect_success '--resume with another --trace writes the whole trace there' '
	$FAKE pool 4 >pool.lora &&
	lora-cmaes -q --method cmaes --trace full.csv -- $FAKE obj <pool.lora >full.lora &&
	head -n 20 full.csv >part.csv &&
	lora-cmaes -q --method cmaes --resume part.csv --trace new.csv -- $FAKE obj <pool.lora >r.lora &&
	test_cmp full.csv new.csv && test $(wc -l <part.csv) -eq 20
'

test_expect_success 'a complete trace replays without new evaluations' '
	$FAKE pool 3 >pool.lora &&
	lora-cmaes -q --trace full.csv -- $FAKE obj <pool.lora >full.lora &&
	cp full.csv again.csv &&
	lora-cmaes -q --resume again.csv -- $FAKE obj --log asked <pool.lora >r.lora &&
	cmp full.lora r.lora && test ! -s asked
'

test_expect_success 'a trace from another run is refused' '
	$FAKE pool 3 >pool.lora &&
	lora-cmaes -q --method cmaes --seed 1 --trace full.csv -- $FAKE obj <pool.lora >full.lora &&
	test_exit 1 lora-cmaes -q --method cmaes --seed 2 --resume full.csv -- $FAKE obj <pool.lora >out 2>err &&
	test_grep "does not match this run" err && test ! -s out &&
	$FAKE pool 4 >pool4.lora &&
	test_exit 1 lora-cmaes -q --resume full.csv -- $FAKE obj <pool4.lora >out 2>err &&
	test_grep "the header does not match this pool" err &&
	test_exit 1 lora-cmaes -q --resume nonexistent.csv -- $FAKE obj <pool4.lora >out 2>err &&
	test_grep "cannot open .nonexistent.csv." err
'

test_expect_success 'a trace with a NaN loss resumes identically' '
	$FAKE pool 3 >pool.lora &&
	lora-cmaes -q --method cmaes --trace full.csv -- $FAKE obj --nan-at 4 <pool.lora >full.lora &&
	head -n 9 full.csv >part.csv &&
	lora-cmaes -q --method cmaes --resume part.csv -- $FAKE obj --nan-at 4 <pool.lora >r.lora &&
	cmp full.lora r.lora && test_cmp full.csv part.csv
'

test_done
