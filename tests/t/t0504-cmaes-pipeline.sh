#!/bin/sh
# t0504 — the LoraHub pipeline of DESIGN.md §1 on the tiny T5 of the golden
# set: lora-pack | lora-cmaes -- lora-eval | lora-merge | lora-eval, and the
# man page's examples. Skipped when the shared data or the other tools are
# missing. lora-eval must answer each weights record before reading the next
# (a coprocess); --eval-timeout turns a stall into an error instead of a hang.
. "$(dirname "$0")/lib.sh"

have_tools() {
	for t in lora-pack lora-eval lora-merge; do
		[ -x "$LORA_BUILD/bin/$t" ] || return 1
	done
}

if ! need_shared golden/models/t5-tiny golden/adapters/t5-tiny/pool_0 golden/examples/t5-tiny.jsonl; then
	test_skip 'pipeline on t5-tiny' 'no shared data'
	test_skip 'merged result scores as lora-cmaes said' 'no shared data'
	test_skip 'the man page examples run' 'no shared data'
elif ! have_tools; then
	test_skip 'pipeline on t5-tiny' 'lora-pack, lora-eval or lora-merge not built'
	test_skip 'merged result scores as lora-cmaes said' 'lora-pack, lora-eval or lora-merge not built'
	test_skip 'the man page examples run' 'lora-pack, lora-eval or lora-merge not built'
else
	G=$LORA_SHARED/golden
	M=$G/models/t5-tiny

	W=$TRASH_ROOT/work
	mkdir -p "$W"
	test_expect_success 'pipeline on t5-tiny' '
		cd "$W" &&
		head -n 3 $G/examples/t5-tiny.jsonl >five.jsonl &&
		lora-pack $G/adapters/t5-tiny/pool_* >pool.lora &&
		if ! lora-cmaes --budget 12 --eval-timeout 15 --trace tr.csv \
			-- lora-eval -q -m $M -d five.jsonl <pool.lora >best.lora 2>err; then
			cat err
			echo "hint: lora-eval must answer each weights record before reading the next;"
			echo "a reader that fread()s a whole buffer from a pipe waits forever here"
			false
		fi &&
		test $(wc -l <tr.csv) -eq 13 &&
		lora-merge <best.lora >merged.lora &&
		lora-eval -q -m $M -d five.jsonl <merged.lora >score.lora &&
		touch pipeline.ok
	'

	if [ -f "$W/pipeline.ok" ]; then
		test_expect_success 'merged result scores as lora-cmaes said' '
			cd "$W" &&
			python3 $TOP/tests/t/t0500-fake.py dump <best.lora | tail -n 1 >w.json &&
			python3 $TOP/tests/t/t0500-fake.py dump <score.lora >s.json &&
			python3 - <<-EOF
			import csv, json
			w = json.load(open("w.json"))
			s = json.load(open("s.json"))
			rows = list(csv.DictReader(open("tr.csv")))
			best = min(float(r["objective"]) for r in rows)
			assert abs(w["objective"] - best) < 1e-12, (w["objective"], best)
			assert w["method"] == "lorahub", w
			# the best objective is no worse than the base pool at w = 0
			assert w["objective"] <= float(rows[0]["objective"])
			# lora-merge + lora-eval reproduce the loss lora-cmaes recorded
			assert abs(s["loss"] - w["loss"]) <= 1e-4 * abs(w["loss"]), (s["loss"], w["loss"])
			EOF
		'

		test_expect_success 'the man page examples run' '
			head -n 3 $G/examples/t5-tiny.jsonl >five.jsonl &&
			lora-pack $G/adapters/t5-tiny/pool_* >pool.lora &&
			lora-cmaes -q --budget 8 --eval-timeout 30 -- lora-eval -q -m $M -d five.jsonl \
				<pool.lora | lora-merge | lora-eval -q -m $M -d five.jsonl >score.lora &&
			test -s score.lora &&
			lora-cmaes -q --method cmaes --budget 8 --trace t.csv --eval-timeout 30 \
				-- lora-eval -q -m $M -d five.jsonl <pool.lora >best.lora &&
			lora-cmaes -q --method cmaes --budget 16 --resume t.csv --eval-timeout 30 \
				-- lora-eval -q -m $M -d five.jsonl <pool.lora >best2.lora &&
			test $(wc -l <t.csv) -eq 17
		'
	else
		test_skip 'merged result scores as lora-cmaes said' 'the pipeline failed above'
		test_skip 'the man page examples run' 'the pipeline failed above'
	fi
fi

test_done
