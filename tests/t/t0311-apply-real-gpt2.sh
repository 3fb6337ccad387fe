#!/bin/sh
# t0311 — lora-apply with the real GPT-2 LoRA adapters of ../shared/data
# (gpt2-lora-quotes, gpt2-lora-tigrinya: r 8, alpha 32, fan_in_fan_out, on
# c_attn, attn.c_proj and mlp.c_proj of all 12 layers) on a generated base
# with GPT-2 small's Conv1D shapes ([in, out]) in f16, holding just the
# targeted weights; the result must equal a float64 naive fold (one f16 ulp).
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
if ! $PY -c 'import numpy' 2>/dev/null; then
	test_skip 'real GPT-2 adapters' 'python3 with numpy not found'
elif ! need_shared gpt2-lora-quotes gpt2-lora-tigrinya; then
	test_skip 'real GPT-2 adapters' 'LORA_SHARED gpt2-lora-* not found'
else
	L="$PY $TOP/tests/t/lorapy.py"
	$L gen-model "$TRASH_ROOT"/base --arch gpt2-small-lora --dtype f16 || exit 1
	test_expect_success 'real GPT-2 adapters folded into a GPT-2-small-shaped Conv1D base' '
		Q=$LORA_SHARED/gpt2-lora-quotes T=$LORA_SHARED/gpt2-lora-tigrinya &&
		lora-pack $Q $T | lora-merge -w 0.8,-0.5 --method linear |
			lora-apply -m "$TRASH_ROOT"/base -o out -v 2> err &&
		test $(grep -c "(Conv1D)" err) = 36 &&
		$L check-fold "$TRASH_ROOT"/base out $Q:0.8 $T:-0.5
	'
fi
test_done
