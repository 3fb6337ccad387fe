#!/bin/sh
# t0505 — examples/plot turns a lora-cmaes trace into PNG and SVG pictures.
. "$(dirname "$0")/lib.sh"
FAKE="$LORA_BUILD/tests/test_fakeobj"

if ! command -v gnuplot >/dev/null 2>&1; then
	test_skip 'convergence and weights plots' 'gnuplot not installed'
else
	test_expect_success 'convergence and weights plots, PNG and SVG' '
		$FAKE pool 4 >pool.lora &&
		lora-cmaes -q --method cmaes --budget 50 --trace tr.csv -- $FAKE obj --nan-at 3 <pool.lora >out.lora &&
		make -s -C "$TOP/examples/plot" TRACE="$PWD/tr.csv" OUT="$PWD/png" >log 2>&1 &&
		make -s -C "$TOP/examples/plot" TRACE="$PWD/tr.csv" OUT="$PWD/svg" FORMAT=svg >>log 2>&1 &&
		test $(wc -l <png/convergence.dat) -eq 49 &&
		test $(wc -l <png/weights.dat) -eq 4 &&
		head -c 8 png/convergence.png | od -c | grep -q "P   N   G" &&
		head -c 8 png/weights.png | od -c | grep -q "P   N   G" &&
		grep -q "<svg" svg/convergence.svg && grep -q "<svg" svg/weights.svg
	'
fi

test_done
