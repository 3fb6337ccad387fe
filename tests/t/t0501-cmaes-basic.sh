#!/bin/sh
# t0501 — lora-cmaes: options, output records, methods, bounds, determinism.
# The objective is tests/unit/test_fakeobj.c (obj): loss = mean((w - w*)^2)
# with w* = (0.3, -0.2, 0.5, ...), speaking the score protocol over msgpack;
# tests/t/t0500-fake.py dump decodes streams for the checks.
. "$(dirname "$0")/lib.sh"
FAKE="$LORA_BUILD/tests/test_fakeobj"
DUMP="python3 $TOP/tests/t/t0500-fake.py dump"

test_expect_success '--help lists the options, exits 0' '
	lora-cmaes --help >out &&
	test_grep "usage: lora-cmaes" out &&
	test_grep "--eval-timeout" out &&
	test_grep "--resume" out
'

test_expect_success '--version' '
	lora-cmaes --version >out && test_grep "lora-cmaes (lorapipe)" out
'

test_expect_success 'usage errors exit 2' '
	test_exit 2 lora-cmaes </dev/null >/dev/null 2>err &&
	test_grep "no objective command" err &&
	test_exit 2 lora-cmaes --method foo -- true </dev/null >/dev/null 2>err &&
	test_grep "unknown method" err &&
	test_exit 2 lora-cmaes --budget 0 -- true </dev/null >/dev/null 2>err &&
	test_exit 2 lora-cmaes --lower 1 --upper 0 -- true </dev/null >/dev/null 2>err &&
	test_exit 2 lora-cmaes --sigma0 -1 -- true </dev/null >/dev/null 2>err &&
	test_exit 2 lora-cmaes --bogus -- true </dev/null >/dev/null 2>err
'

test_expect_success 'an empty pool is an error' '
	test_exit 1 lora-cmaes -- true </dev/null >out 2>err &&
	test_grep "no adapter records" err && test ! -s out
'

test_expect_success 'a missing command is reported' '
	$FAKE pool 2 >pool.lora &&
	test_exit 1 lora-cmaes -- ./no-such-objective <pool.lora >out 2>err &&
	test_grep "cannot run .\./no-such-objective.: No such file" err && test ! -s out
'

test_expect_success 'default run: pool passed through, then one weights record' '
	$FAKE pool 3 >pool.lora &&
	lora-cmaes --trace tr.csv -- $FAKE obj <pool.lora >out.lora 2>err &&
	cat pool.lora out.lora | $DUMP >both.json &&
	head -n 3 both.json >pool.json && sed -n 4,6p both.json >head.json &&
	test_cmp pool.json head.json &&
	test $(wc -l <both.json) -eq 7 &&
	tail -n 1 both.json >w.json &&
	python3 - <<-EOF
	import json
	r = json.load(open("w.json"))
	assert r["kind"] == "weights" and r["names"] == ["a0", "a1", "a2"], r
	assert r["evals"] == 40 and r["seed"] == 1, r
	assert r["meta"]["search"]["method"] == "cobyla", r
	# method is the merge rule the objective scored (lora-stream(5)), not the search
	assert r["method"] == "lorahub", r
	w = r["w"]
	loss = sum((x - s) ** 2 for x, s in zip(w, [0.3, -0.2, 0.5])) / 3
	assert abs(loss - r["loss"]) < 1e-12, (loss, r["loss"])
	pen = 0.05 * sum(abs(x) for x in w) / 3
	assert abs(r["objective"] - (loss + pen)) < 1e-12
	# the optimum of loss + 0.05 mean|w| is w* shrunk by 0.025 per coordinate
	for x, s in zip(w, [0.275, -0.175, 0.475]):
	    assert abs(x - s) < 0.02, w
	EOF
	test $(wc -l <tr.csv) -eq 41 &&
	head -n 1 tr.csv >h && echo "generation,id,w_a0,w_a1,w_a2,loss,penalty,objective,sigma" >h.want &&
	test_cmp h.want h &&
	sed -n 2p tr.csv | grep -q "^0,1,0,0,0," &&
	test_grep "best objective" err
'

test_expect_success 'the trace: ids 1..N in order, objective = loss + penalty' '
	$FAKE pool 3 >pool.lora &&
	lora-cmaes -q --method cmaes --budget 30 --trace tr.csv -- $FAKE obj <pool.lora >out.lora &&
	awk -F, "NR > 1 {
		if (\$2 != NR - 1) { print \"bad id \" \$2; exit 1 }
		pen = 0.05 * ((\$3 < 0 ? -\$3 : \$3) + (\$4 < 0 ? -\$4 : \$4) + (\$5 < 0 ? -\$5 : \$5)) / 3
		d = \$7 - pen; if (d < 0) d = -d; if (d > 1e-12) { print \"bad penalty \" NR; exit 1 }
		d = \$8 - \$6 - \$7; if (d < 0) d = -d; if (d > 1e-12) { print \"bad objective \" NR; exit 1 }
	} END { if (NR != 31) { print \"rows \" NR; exit 1 } }" tr.csv &&
	sed -n 2p tr.csv | grep -q "^0,1," && sed -n 3p tr.csv | grep -q "^1,2,.*,0.3$"
'

for m in cmaes cobyla bobyqa neldermead; do
	test_expect_success "method $m stays in the box and improves on x0" "
		\$FAKE pool 4 >pool.lora &&
		lora-cmaes -q --method $m --budget 30 --lower -0.25 --upper 0.4 --trace tr.csv \
			-- \$FAKE obj --wstar 0.3,-0.2,0.5,-1 <pool.lora >out.lora &&
		awk -F, 'NR == 2 { f0 = \$9; best = \$9 }
			NR > 1 { for (i = 3; i <= 6; i++) if (\$i < -0.25 || \$i > 0.4) { print \"out of box: \" \$0; exit 1 }
				 if (\$9 < best) best = \$9 }
			END { if (NR != 31 || !(best < 0.8 * f0)) { print NR, f0, best; exit 1 } }' tr.csv
	"
done

test_expect_success 'the same seed gives the same output and trace' '
	$FAKE pool 5 >pool.lora &&
	lora-cmaes -q --method cmaes --seed 7 --trace t1.csv -- $FAKE obj <pool.lora >o1.lora &&
	lora-cmaes -q --method cmaes --seed 7 --trace t2.csv -- $FAKE obj <pool.lora >o2.lora &&
	cmp o1.lora o2.lora && cmp t1.csv t2.csv &&
	lora-cmaes -q --method cmaes --seed 8 --trace t3.csv -- $FAKE obj <pool.lora >o3.lora &&
	! cmp -s t1.csv t3.csv
'

test_expect_success 'IPOP restarts double the population' '
	$FAKE pool 2 >pool.lora &&
	lora-cmaes --method cmaes --budget 200 --restarts 2 --l1 0 --trace tr.csv \
		-- $FAKE obj --const 1 <pool.lora >out.lora 2>err &&
	test_grep "stop: tolflatfitness, 2 restarts" err &&
	test_grep "restart 2 after tolflatfitness: population 24" err &&
	awk -F, "NR > 1 { g[\$1]++ } END { for (k in g) c[g[k]]++; if (c[1] != 1 || c[6] != 2 || c[12] != 2 || c[24] != 2) exit 1 }" tr.csv
'

test_expect_success '--l1 changes the objective; -v prints every evaluation' '
	$FAKE pool 2 >pool.lora &&
	lora-cmaes -v --l1 0.25 --budget 5 --trace tr.csv -- $FAKE obj <pool.lora >out.lora 2>err &&
	test $(grep -c "lora-cmaes: id " err) -eq 5 &&
	awk -F, "NR > 1 { pen = 0.25 * ((\$3 < 0 ? -\$3 : \$3) + (\$4 < 0 ? -\$4 : \$4)) / 2
		d = \$6 - pen; if (d < 0) d = -d; if (d > 1e-12) exit 1 }" tr.csv
'

test_expect_success 'a closed stdout is an error' '
	$FAKE pool 2 >pool.lora &&
	test_must_fail sh -c "lora-cmaes -q --budget 3 -- $FAKE obj <pool.lora >&-" 2>err
'

test_expect_success 'every candidate asks for the lorahub merge rule' '
	$FAKE pool 3 >pool.lora &&
	lora-cmaes -q --budget 6 -- sh -c "tee asked.lora | $FAKE obj" <pool.lora >out.lora &&
	$DUMP <asked.lora >asked.json &&
	python3 - <<-EOF
	import json
	recs = [json.loads(l) for l in open("asked.json")]
	ws = [r for r in recs if r["kind"] == "weights"]
	assert len(ws) == 6 and len(recs) == 9, recs
	assert all(r["method"] == "lorahub" for r in ws), ws
	EOF
'

test_done
