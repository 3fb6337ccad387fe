#!/bin/sh
# t0102 — lora-pack --select/--exclude/--sample/--seed/--name on six small
# generated adapters: which records survive, determinism, input order, and
# agreement with an independent implementation of the documented generator.
. "$(dirname "$0")/lib.sh"
ST=$LORAPY
FX=$TRASH_ROOT/fx
for i in 1 2 3 4 5 6; do $ST fixture "$FX/t$i" tiny$i || exit 1; done
lora-pack "$FX"/t1 "$FX"/t2 "$FX"/t3 "$FX"/t4 "$FX"/t5 "$FX"/t6 > "$FX/six.lora" || exit 1
SIX=$FX/six.lora
names() { lora-pack -t "$@" | tail -n +2 | cut -d" " -f1 | tr "\n" " "; }

test_expect_success '--select and --exclude (repeatable, fnmatch globs)' '
	test "$(names --select "t[1-3]" "$SIX")" = "t1 t2 t3 " &&
	test "$(names --select t1 --select "t[56]" "$SIX")" = "t1 t5 t6 " &&
	test "$(names --exclude "t[24]" --exclude t6 "$SIX")" = "t1 t3 t5 " &&
	test "$(names --select "t*" --exclude t1 "$SIX")" = "t2 t3 t4 t5 t6 " &&
	test "$(names --select nothing "$SIX")" = ""
'

test_expect_success 'records without a name pass --select; a score is selected by its name' '
	$ST mkstream w.lora "[{\"kind\": \"weights\", \"names\": [\"t1\"], \"w\": [1.0]},
		{\"kind\": \"score\", \"name\": \"t2\", \"loss\": 1.0, \"tokens\": 1, \"examples\": 1},
		{\"kind\": \"score\", \"name\": \"t9\", \"loss\": 1.0, \"tokens\": 1, \"examples\": 1}]" &&
	cat "$SIX" w.lora | lora-pack --select "t[12]" -t | tr -s " " | cut -d" " -f1-3 > out &&
	printf "NAME KIND BASE\nt1 adapter tiny-llama\nt2 adapter tiny-llama\n- weights -\nt2 score -\n" > want &&
	test_cmp want out
'

test_expect_success '--sample N --seed S: the same output twice' '
	lora-pack --sample 3 --seed 7 "$SIX" > a.lora && lora-pack --sample 3 --seed 7 "$SIX" | cmp - a.lora
'

test_expect_success '--sample N --seed S keeps input order and follows the documented generator' '
	for seed in 0 1 42 123456789; do
		a=$(names --sample 3 --seed $seed "$SIX") &&
		wantn=$(for i in $($ST sample 3 $seed 6); do printf "t%d " $((i + 1)); done) &&
		test "$a" = "$wantn" || { echo "seed $seed: got $a want $wantn"; return 1; }
	done
'

test_expect_success 'the generator is uniform: each of 6 kept 3/6 of the time over 3000 seeds' '
	$ST sample 3 1 6 3000 > hits &&
	for n in $(cat hits); do
		test $n -gt 1380 && test $n -lt 1620 || { echo "kept $n times of 3000"; return 1; }
	done
'

test_expect_success '--sample after --select; N larger than the pool keeps all; N = 0 keeps none' '
	test "$(names --select "t[1-4]" --sample 4 --seed 9 "$SIX")" = "t1 t2 t3 t4 " &&
	test "$(names --sample 10 "$SIX")" = "t1 t2 t3 t4 t5 t6 " &&
	test "$(names --sample 0 "$SIX")" = ""
'

test_expect_success '--sample keeps non-adapter records in place' '
	$ST mkstream w.lora "[{\"kind\": \"weights\", \"names\": [\"t1\"], \"w\": [1.0]}]" &&
	cat w.lora "$SIX" w.lora > in.lora &&
	lora-pack -t --sample 2 --seed 5 in.lora | cut -d" " -f1 > out &&
	test "$(head -n 2 out | tail -n 1)" = "-" && test "$(tail -n 1 out)" = "-" &&
	test $(wc -l < out) -eq 5
'

test_expect_success '--name renames the one adapter; refuses two' '
	lora-pack --name renamed "$FX"/t1 | lora-pack -t | tail -n 1 | cut -d" " -f1 > out &&
	echo renamed > want && test_cmp want out &&
	test_exit 2 lora-pack --name x "$SIX" > /dev/null 2> err &&
	test_grep "lora-pack: --name needs exactly one adapter, but there are 6" err
'

test_expect_success 'two inputs with the same adapter name are refused' '
	test_exit 1 lora-pack "$FX"/t1 "$SIX" > /dev/null 2> err &&
	test_grep "two adapters are named .t1." err
'
test_done
