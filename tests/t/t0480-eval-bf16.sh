#!/bin/sh
# t0480 — lora-eval --bf16 (the AVX512-BF16 Linear products, lib/bf16.c):
# on every golden model and stories260K the loss stays within 2e-3 relative
# of Hugging Face's float32 golden (measured: 5.6e-4 on stories260K, 1e-5 to
# 1.4e-4 on the tiny models; tests/unit/test_bf16.c prints the details) and
# differs from the exact path's (so the option took effect); adapters and
# weights records still apply (their deltas stay f32); greedy generation runs;
# the refusal on a CPU without AVX512-BF16, through the documented test hook
# LORA_BF16_UNSUPPORTED. The value checks skip on such a CPU.
. "$(dirname "$0")/lib.sh"
LIB=$LORAPY

if ! need_shared golden stories260K-hf; then
	test_skip 'lora-eval --bf16' 'LORA_SHARED not set'
	test_done
	exit
fi
G=$LORA_SHARED/golden


test_expect_success 'refused with a clear message on a CPU without AVX512-BF16 (test hook)' '
	LORA_BF16_UNSUPPORTED=1 test_exit 1 lora-eval --bf16 -m "$G/models/llama-tiny" \
		-d "$G/examples/llama-tiny.jsonl" </dev/null >out 2>err &&
	test_grep "lora-eval: --bf16 needs a CPU with AVX512-BF16" err &&
	test ! -s out
'

if LORA_BF16_UNSUPPORTED= lora-eval --bf16 -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" \
	</dev/null 2>&1 >/dev/null | grep -q 'AVX512-BF16'; then
	test_skip 'lora-eval --bf16 losses' 'this CPU lacks AVX512-BF16'
	test_done
	exit
fi
unset LORA_BF16_UNSUPPORTED

for m in stories260K llama-tiny gpt2-tiny t5-tiny t5-tiny-v1; do
	test_expect_success "$m: --bf16 loss within 2e-3 of the f32 golden, and not the f32 value" '
		lora-eval -m "$(golden_model_dir '$m')" -d "$G/examples/'$m'.jsonl" </dev/null >f32 &&
		lora-eval --bf16 -m "$(golden_model_dir '$m')" -d "$G/examples/'$m'.jsonl" </dev/null >s &&
		$LIB check-scores s --rtol 2e-3 count=1 0:examples=6 0:loss~"$G/eval/'$m'/base.json" \
			0:loss!=@f32
	'
	grep '^# max rel diff' "$TRASH_ROOT/$test_count.out" || :
done

test_expect_success 'llama-tiny --bf16: LoraHub weights records within 2e-3 of the goldens' '
	lora-pack "$G"/adapters/llama-tiny/pool_? >pool &&
	{ cat pool &&
	  $LIB weights pool_0=0.4,pool_1=0.3,pool_2=0.2,pool_3=0.6,pool_4=0.5 --id 11 &&
	  $LIB weights pool_0=0.5,pool_1=-0.3,pool_2=1.2,pool_3=0.1,pool_4=-0.7 --id 12; } >in &&
	lora-eval --bf16 -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" <in >s &&
	$LIB check-scores s --rtol 2e-3 count=2 0:id=11 1:id=12 \
		0:loss~"$G/eval/llama-tiny/lorahub_wA.json" 1:loss~"$G/eval/llama-tiny/lorahub_wB.json"
'
grep '^# max rel diff' "$TRASH_ROOT/$test_count.out" || :

test_expect_success 'gpt2-tiny --bf16 (Conv1D weights): an adapter on every Linear, within 2e-3' '
	lora-pack "$G/adapters/gpt2-tiny/extra_r8_all" >pool &&
	lora-eval --bf16 -m "$G/models/gpt2-tiny" -d "$G/examples/gpt2-tiny.jsonl" <pool >s &&
	$LIB check-scores s --rtol 2e-3 count=1 0:loss~"$G/eval/gpt2-tiny/extra_r8_all.json"
'
grep '^# max rel diff' "$TRASH_ROOT/$test_count.out" || :

test_expect_success 't5-tiny --bf16 --generate: greedy decoding with the packed weights' '
	lora-eval --bf16 -g -m "$G/models/t5-tiny" -d "$G/examples/t5-tiny.jsonl" </dev/null >s &&
	$LIB check-scores s count=1 0:predictions#=6
'

test_done
