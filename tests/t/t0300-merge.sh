#!/bin/sh
# t0300 — lora-merge from the shell: -w, weights records, --config, every
# method end to end, meta.merge, and the error cases with their messages. The
# math of each method is checked against naive dense references in
# tests/unit/test_merge.c; here the merged adapter is folded by lora-apply and
# compared with a float64 fold of the source adapters (tests/t/lorapy.py).
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
if ! $PY -c 'import numpy' 2>/dev/null; then
	test_skip 'lora-merge pipelines' 'python3 with numpy not found'
	test_done
	exit
fi
L="$PY $TOP/tests/t/lorapy.py"
FX=$TRASH_ROOT/fx
# a1 and a3 have equal ranks per module (lorahub works); a2 does not.
# a3 covers only q_proj/v_proj: the modules overlap partially.
$L batch <<EOT || exit 1
gen-model $FX/base --arch llama
gen-adapter $FX/a1 --model $FX/base --modules q_proj,v_proj,down_proj --r 4 --alpha 8 --seed 3
gen-adapter $FX/a2 --model $FX/base --modules q_proj,k_proj --r 2 --alpha 3 --rslora --seed 4
gen-adapter $FX/a3 --model $FX/base --modules q_proj,v_proj --r 4 --alpha 2 --seed 5
EOT

test_expect_success 'lora-pack a/ b/ | lora-merge -w 0.7,0.3 --method linear | lora-apply gives the naive fold' '
	lora-pack "$FX"/a1 "$FX"/a2 | lora-merge -w 0.7,0.3 --method linear |
		lora-apply -m "$FX"/base -o merged &&
	$L check-fold "$FX"/base merged "$FX"/a1:0.7 "$FX"/a2:0.3
'

test_expect_success 'linear with negative weights and mixed ranks/rslora' '
	lora-pack "$FX"/a1 "$FX"/a2 "$FX"/a3 | lora-merge -w -1.2,0.4,-0.5 --method linear > m.lora &&
	$L check-delta m.lora "$FX"/a1:-1.2 "$FX"/a2:0.4 "$FX"/a3:-0.5
'

test_expect_success 'lorahub one-hot gives back the adapter (different alphas)' '
	lora-pack "$FX"/a1 "$FX"/a3 | lora-merge -w 0,1 > m.lora &&
	$L check-delta m.lora "$FX"/a3
'

test_expect_success 'svd at full rank equals linear' '
	lora-pack "$FX"/a1 "$FX"/a2 | lora-merge -w 0.6,-0.9 --method svd --rank 8 -v > m.lora 2> err &&
	test_grep "relative Frobenius error 0.000e+00" err &&
	$L check-delta m.lora "$FX"/a1:0.6 "$FX"/a2:-0.9
'

test_expect_success 'svd truncation reports its error with -v' '
	lora-pack "$FX"/a1 "$FX"/a2 | lora-merge -w 0.6,-0.9 --method svd --rank 2 -v > m.lora 2> err &&
	test_grep "q_proj.: rank 2 of 6, relative Frobenius error" err &&
	$L dump --sort-keys < m.lora > d &&
	test_grep "\"shape\": \[2, 48\]" d
'

test_expect_success 'weights records: one merged adapter each, names, meta.merge, warning' '
	{ lora-pack "$FX"/a1 "$FX"/a3; $L weights a1=0.5,a3=-1 --id 7; $L weights a3=1; } |
		lora-merge > m.lora 2> err &&
	$L dump --sort-keys < m.lora > d &&
	test $(wc -l < d) = 2 &&
	test_grep "\"name\": \"merge-lorahub-7\"" d &&
	test_grep "\"name\": \"merge-lorahub-2\"" d &&
	test_grep "\"merge\": {\"id\": 7, \"method\": \"lorahub\", \"params\": {}, \"sources\": \[\"a1\", \"a3\"\], \"weights\": {\"a1\": 0.5, \"a3\": -1.0}}" d &&
	test_grep "\"base\": \"$FX/base\"" d &&
	test_grep "weights record 4: adapter .a1. is not named; its weight is 0" err
'

test_expect_success 'the weights record method is used; --method overrides it; --name' '
	{ lora-pack "$FX"/a1 "$FX"/a2; $L weights a1=1,a2=1 --method linear; } | lora-merge > m.lora &&
	$L dump --sort-keys < m.lora | grep -q "\"method\": \"linear\"" &&
	{ lora-pack "$FX"/a1 "$FX"/a2; $L weights a1=1,a2=1 --method lorahub; } |
		lora-merge --method svd --name mine > m.lora &&
	$L dump --sort-keys < m.lora > d && test_grep "\"method\": \"svd\"" d && test_grep "\"name\": \"mine\"" d
'

test_expect_success '--config: method, weights by name, parameters; the command line overrides' '
	cat > cfg.yaml <<-\EOT &&
	method: svd
	weights:
	  a1: 0.5
	  a2: -0.25
	parameters:
	  rank: 2
	EOT
	lora-pack "$FX"/a1 "$FX"/a2 | lora-merge --config cfg.yaml > m.lora &&
	$L dump --sort-keys < m.lora > d &&
	test_grep "\"params\": {\"rank\": 2}" d && test_grep "\"a2\": -0.25" d &&
	test_grep "\"shape\": \[2, 48\]" d &&
	lora-pack "$FX"/a1 "$FX"/a2 | lora-merge --config cfg.yaml --rank 3 --method linear > m.lora &&
	$L dump --sort-keys < m.lora > d && test_grep "\"method\": \"linear\"" d
'

test_expect_success '--method mean needs no weights (AdapterSoup)' '
	lora-pack "$FX"/a1 "$FX"/a3 | lora-merge --method mean > m.lora &&
	$L dump --sort-keys < m.lora > d && test_grep "\"weights\": {\"a1\": 0.5, \"a3\": 0.5}" d
'

test_expect_success 'ties, dare and magnitude run and refactor to --rank' '
	for m in ties dare magnitude; do
		lora-pack "$FX"/a1 "$FX"/a2 "$FX"/a3 |
			lora-merge -w 0.5,0.8,-0.3 --method $m --density 0.4 --rank 3 --seed 5 --sign frequency > m.lora &&
		$L dump --sort-keys < m.lora > d && test_grep "\"shape\": \[3, 48\]" d &&
		test_grep "\"method\": \"$m\"" d || return 1
	done &&
	$L dump --sort-keys < m.lora | grep -q "\"params\": {\"density\": 0.4, \"rank\": 3}"
'

test_expect_success 'lorahub refuses unequal ranks and suggests linear' '
	lora-pack "$FX"/a1 "$FX"/a2 > p.lora &&
	test_exit 1 lora-merge -w 1,1 < p.lora > out 2> err &&
	test_grep "lora-merge: module .model.layers.0.self_attn.q_proj.: adapter .a1. has rank 4 but adapter .a2. has rank 2; the lorahub rule needs equal ranks (use --method linear or svd)" err
'

test_expect_success 'a weights record naming an adapter not in the pool is an error' '
	{ lora-pack "$FX"/a1; $L weights a1=1,zz=2; } > s.lora &&
	test_exit 1 lora-merge < s.lora > out 2> err &&
	test_grep "weights record 2: adapter .zz. is not in the pool (1 adapter read)" err
'

test_expect_success 'NaN weights are refused' '
	test_exit 2 lora-merge -w 1,nan < /dev/null > out 2> err &&
	test_grep "weight 2 is not finite" err &&
	{ lora-pack "$FX"/a1; $L weights a1=nan; } > s.lora &&
	test_exit 1 lora-merge < s.lora > out 2> err &&
	test_grep "lora-merge: stdin: record 2 at byte [0-9]*: w\[0\] is NaN: weights must be finite" err
'

test_expect_success 'empty pool, no weights, wrong -w count' '
	test_exit 1 lora-merge -w 1 < /dev/null > out 2> err &&
	test_grep "lora-merge: empty pool: the input has no adapter records" err &&
	lora-pack "$FX"/a1 "$FX"/a3 > p.lora &&
	test_exit 1 lora-merge < p.lora > out 2> err &&
	test_grep "no weights: the stream has no weights record; give -w, --config or --method mean" err &&
	test_exit 1 lora-merge -w 1,2,3 < p.lora > out 2> err &&
	test_grep "gives 3 weights but the pool has 2 adapters" err
'

test_expect_success 'bad usage exits 2' '
	test_exit 2 lora-merge --method bogus < /dev/null 2> err && test_grep "unknown method .bogus." err &&
	test_exit 2 lora-merge --density 1.5 < /dev/null 2> err && test_grep "not in (0, 1\]" err &&
	test_exit 2 lora-merge --sign maybe < /dev/null 2> err &&
	test_exit 2 lora-merge --rank x < /dev/null 2> err &&
	test_exit 2 lora-merge --bogus < /dev/null 2> err &&
	test_exit 2 lora-merge extra < /dev/null 2> err &&
	printf "method: [1\n" > bad.yaml && test_exit 2 lora-merge --config bad.yaml < /dev/null 2> err &&
	test_grep "bad.yaml" err
'

test_expect_success 'a truncated stream is an error and writes no record' '
	lora-pack "$FX"/a1 "$FX"/a3 > p.lora &&
	head -c 3000 p.lora > t.lora &&
	test_exit 1 lora-merge -w 1,1 < t.lora > out 2> err &&
	test ! -s out
'

test_expect_success 'the EXAMPLES of lora-merge(1) run' '
	cp -r "$FX"/a1 a && cp -r "$FX"/a2 b && cp -r "$FX"/a3 c && cp -r "$FX"/base base &&
	lora-pack a/ b/ | lora-merge -w 0.7,0.3 --method linear \
	  | lora-apply -m base/ -o merged/ &&
	{ lora-pack a/ b/ c/ | lora-merge -w 0.5,0.3,0.2 --method svd --rank 8 -v \
	  | lora-pack --unpack out/; } 2> err &&
	test -f out/merge-svd/adapter_model.safetensors && test_grep "relative Frobenius error" err &&
	printf "method: ties\nweights: {a: 0.6, b: -0.2}\nparameters: {density: 0.5, rank: 8, seed: 1, sign: total}\n" > ties.yaml &&
	lora-pack a/ b/ | lora-merge --config ties.yaml > ties.lora &&
	$L dump --sort-keys < ties.lora | grep -q "\"params\": {\"density\": 0.5, \"rank\": 8, \"sign\": \"total\"}"
'

if command -v script > /dev/null; then
test_expect_success 'a terminal on stdout is refused (exit 2)' '
	script -qc "lora-merge -w 1 < /dev/null; echo rc=\$?" /dev/null > out &&
	test_grep "refusing to write a binary stream to a terminal" out &&
	test_grep "rc=2" out
'
else
	test_skip 'a terminal on stdout is refused' 'script(1) not found'
fi

test_expect_success '--help and --version' '
	lora-merge --help > h && test_grep "^usage: lora-merge" h && test_grep "[-]-density" h &&
	lora-merge --version | grep -q "^lora-merge (lorapipe) "
'

test_done
