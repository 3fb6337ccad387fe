#!/bin/sh
# t0602 — examples/lorahub: the paper's protocol end to end on the demo model
# with a tiny budget, for the three task layouts (the demo's fixed shots,
# LoraHub's data_bbh <task>/example.jsonl + zero_shot.jsonl, BIG-Bench Hard's
# own JSON), and prep.py's seeded draw of the shots.
. "$(dirname "$0")/lib.sh"

E=$TOP/examples/lorahub
SMALL="SEEDS=1\ 2 BUDGET=4 MAXTEST=3 NMOD=4 MAXNEW=4"
run() { eval make -s -C "$E" BIN="$LORA_BUILD/bin" OUT="$TRASH/out" $SMALL "$@" > results 2> err ||
	{ cat err; return 1; }; cat results; }
rows() { test $(grep -c "^| " results) -eq $(($1 + 2)) && test_grep "^| \*\*average\*\*" results; }

if ! command -v python3 > /dev/null; then
	test_skip 'lorahub protocol on the demo tasks' 'no python3 (prep.py)'
else
	test_expect_success 'lorahub protocol on the demo tasks (fixed shots)' '
		run TASKS=Tom-beach && rows 1 &&
		test_grep "^| Tom-beach | " results &&
		test -f out/Tom-beach/s2/hub.lora && test -f out/Tom-beach/s1/icl.score &&
		test $(lora-pack -t out/Tom-beach/s1/pool.lora | grep -c " adapter ") -eq 4 &&
		make -s -C "$E" OUT="$TRASH/out" TASKS="Tom-beach" SEEDS="1 2" list > l &&
		test $(wc -l < l) -eq 2
	'
	test_expect_success 'prep.py: a seed fixes the shots, another seed draws others' '
		python3 $E/prep.py "$LORA_SHARED" lorahub-bbh-sample 1 5 0 a 2> /dev/null ||
		python3 $E/prep.py $TOP/examples/demo/data/heldout Tom-beach 1 5 0 a &&
		python3 $E/prep.py $TOP/examples/demo/data/heldout Tom-beach 1 5 2 b &&
		test $(wc -l < b/five.jsonl) -eq 5 && test $(wc -l < b/test.jsonl) -eq 2
	'
	if need_shared lorahub-bbh-sample/example.jsonl bbh/boolean_expressions.json; then
		test_expect_success 'LoraHub data_bbh layout and BBH JSON layout' '
			run DATA="$LORA_SHARED" TASKS=lorahub-bbh-sample && rows 1 &&
			test $(wc -l < out/lorahub-bbh-sample/s1/five.jsonl) -eq 5 &&
			test $(wc -l < out/lorahub-bbh-sample/s1/test.jsonl) -eq 3 &&
			! cmp -s out/lorahub-bbh-sample/s1/five.jsonl out/lorahub-bbh-sample/s2/five.jsonl &&
			rm -rf out &&
			run DATA="$LORA_SHARED/bbh" TASKS=boolean_expressions SEEDS=1 && rows 1 &&
			test_grep "\"output\": \"True\"\|\"output\": \"False\"" out/boolean_expressions/s1/five.jsonl
		'
	else
		test_skip 'LoraHub data_bbh layout and BBH JSON layout' 'no shared data'
	fi
fi

test_done
