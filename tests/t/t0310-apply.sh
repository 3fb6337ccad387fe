#!/bin/sh
# t0310 — lora-apply folds adapters into generated Llama-, T5- and GPT-2-shaped
# bases (f32, bf16, f16; single file and shards) exactly as a float64 naive
# fold says (tests/t/lorapy.py check-fold: f32 rounding, or one ulp for
# bf16/f16; untouched tensors and non-weight files byte-identical), matches
# PEFT's merge_and_unload goldens (golden/fold/, README §5), and reports
# module errors before writing anything.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
if ! $PY -c 'import numpy' 2>/dev/null; then
	test_skip 'lora-apply pipelines' 'python3 with numpy not found'
	test_done
	exit
fi
L="$PY $TOP/tests/t/lorapy.py"
FX=$TRASH_ROOT/fx
$L batch <<EOT || exit 1
gen-model $FX/llama --arch llama
gen-model $FX/llama-bf16 --arch llama --dtype bf16 --shards 3
gen-model $FX/llama-wide --arch llama --hidden 64
gen-model $FX/t5 --arch t5
gen-model $FX/t5-bf16 --arch t5 --dtype bf16 --shards 2
gen-model $FX/t5-f16 --arch t5 --dtype f16
gen-model $FX/gpt2 --arch gpt2
gen-adapter $FX/la --model $FX/llama --modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --r 4 --alpha 8 --seed 3
gen-adapter $FX/lb --model $FX/llama --modules q_proj,down_proj --r 2 --alpha 3 --rslora --seed 4
gen-adapter $FX/ta --model $FX/t5 --modules q,k,v,o,wi_0,wi_1,wo --r 4 --alpha 16 --seed 5
gen-adapter $FX/ga --model $FX/gpt2 --modules c_attn,c_proj,c_fc --r 3 --alpha 5 --seed 6
EOT

test_expect_success 'Llama f32: two adapters folded in order' '
	lora-pack "$FX"/la "$FX"/lb | lora-apply -m "$FX"/llama -o out &&
	$L check-fold "$FX"/llama out "$FX"/la "$FX"/lb
'

test_expect_success 'Llama bf16, three shards: shards and index mirrored, RNE to bf16' '
	lora-pack "$FX"/la "$FX"/lb | lora-apply -m "$FX"/llama-bf16 -o out &&
	ls out > files &&
	printf "%s\n" config.json generation_config.json model-00001-of-00003.safetensors \
		model-00002-of-00003.safetensors model-00003-of-00003.safetensors \
		model.safetensors.index.json tokenizer.json tokenizer_config.json > want &&
	test_cmp want files &&
	$L check-fold "$FX"/llama-bf16 out "$FX"/la "$FX"/lb
'

test_expect_success 'T5 f32 with --scale, T5 bf16 sharded, T5 f16' '
	lora-pack "$FX"/ta > t.lora &&
	lora-apply -m "$FX"/t5 -o o1 --scale 0.5 < t.lora &&
	$L check-fold "$FX"/t5 o1 --scale 0.5 "$FX"/ta &&
	lora-apply -m "$FX"/t5-bf16 -o o2 < t.lora &&
	$L check-fold "$FX"/t5-bf16 o2 "$FX"/ta &&
	lora-apply -m "$FX"/t5-f16 -o o3 < t.lora &&
	$L check-fold "$FX"/t5-f16 o3 "$FX"/ta
'

test_expect_success 'GPT-2 Conv1D weights ([in, out]) get the transposed update' '
	lora-pack "$FX"/ga | lora-apply -m "$FX"/gpt2 -o out -v 2> err &&
	test_grep "folded 1 update into .transformer.h.0.attn.c_attn.weight. f32 (Conv1D)" err &&
	$L check-fold "$FX"/gpt2 out "$FX"/ga
'

if need_shared golden/fold/gpt2-tiny-extra_r8_all golden/models/gpt2-tiny; then
test_expect_success 'golden: GPT-2 tiny + extra_r8_all equals PEFT merge_and_unload' '
	G=$LORA_SHARED/golden &&
	lora-pack $G/adapters/gpt2-tiny/extra_r8_all | lora-apply -m $G/models/gpt2-tiny -o out &&
	$L cmp-golden out $G/fold/gpt2-tiny-extra_r8_all/folded_tensors.safetensors &&
	$L check-fold $G/models/gpt2-tiny out $G/adapters/gpt2-tiny/extra_r8_all
'
test_expect_success 'golden: Llama tiny + extra_r8_all equals PEFT merge_and_unload' '
	G=$LORA_SHARED/golden &&
	lora-pack $G/adapters/llama-tiny/extra_r8_all | lora-apply -m $G/models/llama-tiny -o out &&
	$L cmp-golden out $G/fold/llama-tiny-extra_r8_all/folded_tensors.safetensors
'
else
	test_skip 'fold goldens' 'LORA_SHARED golden/fold not found'
fi

test_expect_success '--dry-run reports modules, parameters and largest |dW|; writes nothing' '
	lora-pack "$FX"/la "$FX"/lb | lora-apply -m "$FX"/llama --dry-run > rep &&
	test ! -e out &&
	test_grep "^model.layers.0.self_attn.q_proj.weight  *\[48,48\]  *f32  *2  *2304  " rep &&
	test_grep "^14 tensors, 36864 parameters would change" rep
'

test_expect_success 'unknown module: error names it, nothing written' '
	lora-pack "$FX"/ta > t.lora &&
	test_exit 1 lora-apply -m "$FX"/llama -o out < t.lora 2> err &&
	test_grep "lora-apply: adapter .ta.: module .decoder.block.0.layer.0.SelfAttention.k. is not in .*llama (no tensor .decoder.block.0.layer.0.SelfAttention.k.weight.)" err &&
	test ! -e out && test -z "$(ls -A | grep -v -e "^t.lora$" -e "^err$")"
'

test_expect_success 'shape mismatch: error gives both shapes, nothing written' '
	lora-pack "$FX"/la > a.lora &&
	test_exit 1 lora-apply -m "$FX"/llama-wide -o out < a.lora 2> err &&
	test_grep "adapter .la.: module .model.layers.0.mlp.down_proj.: base tensor .model.layers.0.mlp.down_proj.weight. has shape \[64,80\], but the adapter.s update is \[48,80\]" err &&
	test ! -e out
'

test_expect_success 'a base without safetensors, or without config.json, is refused' '
	mkdir nost && cp "$FX"/llama/config.json nost/ &&
	lora-pack "$FX"/la > a.lora &&
	test_exit 1 lora-apply -m nost -o out < a.lora 2> err &&
	test_grep "nost: no model.safetensors or model.safetensors.index.json" err &&
	mkdir nocfg && cp "$FX"/llama/model.safetensors nocfg/ &&
	test_exit 1 lora-apply -m nocfg -o out < a.lora 2> err &&
	test_grep "nocfg: no config.json" err &&
	test_exit 1 lora-apply -m missing -o out < a.lora 2> err &&
	test ! -e out
'

test_expect_success 'an empty stream is refused; weights records are skipped with a warning' '
	test_exit 1 lora-apply -m "$FX"/llama -o out < /dev/null 2> err &&
	test_grep "no adapter records on stdin" err && test ! -e out &&
	{ lora-pack "$FX"/la; $L weights la=1; } | lora-apply -m "$FX"/llama -o out 2> err &&
	test_grep "record 2 is not an adapter; skipping it" err &&
	$L check-fold "$FX"/llama out "$FX"/la
'

test_expect_success 'bad usage exits 2' '
	test_exit 2 lora-apply -o out < /dev/null 2> err && test_grep "MODEL is required" err &&
	test_exit 2 lora-apply -m "$FX"/llama < /dev/null 2> err &&
	test_exit 2 lora-apply -m "$FX"/llama -o out --scale nan < /dev/null 2> err &&
	test_exit 2 lora-apply -m "$FX"/llama -o out --bogus < /dev/null 2> err &&
	lora-apply --help | grep -q "^usage: lora-apply" &&
	lora-apply --version | grep -q "^lora-apply (lorapipe) "
'

test_done
