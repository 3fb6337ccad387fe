#!/bin/sh
# t0601 — examples/demo: the Makefile runs from the committed assets (one
# held-out task, a small budget, one CMA-ES seed) and prints the table with
# every row; the committed pool matches its data (ten modules, q/v, rank 4).
# The full demo (`make -C examples/demo`) and `make assets` (which retrains the
# pool bit for bit) are too slow for the suite; see the README.
. "$(dirname "$0")/lib.sh"

E=$TOP/examples/demo
test_expect_success 'the committed pool: ten q/v rank-4 modules, one per pool task' '
	lora-pack -t $E/pool/*.lora > t &&
	test $(grep -c " adapter .* 10 *4 *8 *f32" t) -eq 10 &&
	for f in $E/data/pool/*.jsonl; do
		n=$(basename $f .jsonl) && test_grep "^$n " t || return 1
	done
'

test_expect_success 'make -C examples/demo runs one task and prints every row' '
	make -s -C $E BIN="$LORA_BUILD/bin" OUT="$TRASH/out" TASKS=Tom-beach BUDGET=8 SEEDS=1 MAXNEW=6 \
		> table 2> err || { cat err; false; } &&
	cat table &&
	test $(grep -c "^| " table) -eq 9 &&
	for r in "base model" "in-context" "best single" "uniform average" "LoraHub, COBYLA" \
		"LoraHub, CMA-ES, mean" "LoraHub, CMA-ES, best" "LoRA trained"; do
		test_grep "^| $r" table || return 1
	done &&
	test -f "$TRASH/out/Tom-beach/hub-cobyla.lora" &&
	test -f "$TRASH/out/Tom-beach/single.pred.jsonl"
'

test_expect_success 'a rerun redoes nothing' '
	make -C $E BIN="$LORA_BUILD/bin" OUT="$TRASH_ROOT/2/out" TASKS=Tom-beach BUDGET=8 SEEDS=1 MAXNEW=6 \
		> again 2>&1 &&
	! grep -q "^lora-\|^sh table" again
'

test_done
