#!/bin/sh
# t0401 — lora-eval: usage errors (exit 2), bad models, examples, adapters and
# streams (exit 1, message naming the culprit), no partial --predictions file.
. "$(dirname "$0")/lib.sh"
LIB=$LORAPY

test_expect_success '--help lists every option, --version' '
	lora-eval --help >out &&
	for o in model data generate max-new-tokens predictions icl demos max-examples verbose quiet help version; do
		test_grep "--$o" out || return 1
	done &&
	lora-eval --version >out && test_grep "lora-eval (lorapipe)" out
'

test_expect_success 'usage errors exit 2' '
	test_exit 2 lora-eval -d x </dev/null >/dev/null 2>err && test_grep "no model" err &&
	test_exit 2 lora-eval -m x </dev/null >/dev/null 2>err && test_grep "no examples" err &&
	test_exit 2 lora-eval -m x -d y --bogus </dev/null >/dev/null 2>err &&
	test_exit 2 lora-eval -m x -d y --icl -1 </dev/null >/dev/null 2>err &&
	test_exit 2 lora-eval -m x -d y --max-new-tokens abc </dev/null >/dev/null 2>err &&
	test_grep "max-new-tokens" err &&
	test_exit 2 lora-eval -m x -d y --predictions p </dev/null >/dev/null 2>err &&
	test_grep "needs --generate" err &&
	test_exit 2 lora-eval -m x -d y extra </dev/null >/dev/null 2>err
'

if ! need_shared golden stories260K-hf; then
	test_skip 'lora-eval data errors' 'LORA_SHARED not set'
	test_done
	exit
fi
G=$LORA_SHARED/golden
M=$G/models/llama-tiny
EX=$G/examples/llama-tiny.jsonl

test_expect_success 'a missing model directory' '
	test_exit 1 lora-eval -m nowhere -d "$EX" </dev/null >/dev/null 2>err &&
	test_grep "^lora-eval: nowhere: no config.json" err
'

test_expect_success 'an unknown model_type is refused by name' '
	cp -r "$M" m && sed -i "s/\"model_type\": \"llama\"/\"model_type\": \"bert\"/" m/config.json &&
	test_exit 1 lora-eval -m m -d "$EX" </dev/null >/dev/null 2>err &&
	test_grep "model_type .bert. is not supported" err
'

test_expect_success 'a missing tokenizer' '
	cp -r "$M" m && rm m/tokenizer.json m/tokenizer.model &&
	test_exit 1 lora-eval -m m -d "$EX" </dev/null >/dev/null 2>err &&
	test_grep "tokenizer" err
'

test_expect_success 'config and weights disagree: the tensor is named' '
	cp -r "$M" m && sed -i "s/\"intermediate_size\": 176/\"intermediate_size\": 177/" m/config.json &&
	test_exit 1 lora-eval -m m -d "$EX" </dev/null >/dev/null 2>err &&
	test_grep "mlp.gate_proj.weight. has shape \[176,64\], config.json implies \[177,64\]" err
'

test_expect_success 'examples: missing file, empty file, malformed line, missing key' '
	test_exit 1 lora-eval -m "$M" -d none.jsonl </dev/null >/dev/null 2>err &&
	test_grep "cannot open .none.jsonl." err &&
	: >empty.jsonl &&
	test_exit 1 lora-eval -m "$M" -d empty.jsonl </dev/null >/dev/null 2>err &&
	test_grep "empty.jsonl: no examples" err &&
	{ head -n 2 "$EX" && echo "{\"input\": \"x\", \"output\": " && tail -n 1 "$EX"; } >bad.jsonl &&
	test_exit 1 lora-eval -m "$M" -d bad.jsonl </dev/null >/dev/null 2>err &&
	test_grep "bad.jsonl:3" err &&
	{ head -n 1 "$EX" && echo "{\"input\": \"x\"}"; } >nokey.jsonl &&
	test_exit 1 lora-eval -m "$M" -d nokey.jsonl </dev/null >/dev/null 2>err &&
	test_grep "nokey.jsonl:2: example has no .output." err &&
	echo "[]" >empty.json &&
	test_exit 1 lora-eval -m "$M" -d empty.json </dev/null >/dev/null 2>err &&
	test_grep "no examples" err
'

test_expect_success 'an example longer than the context is refused, not truncated' '
	$PY -c "import json; print(json.dumps({\"input\": \" word\" * 600, \"output\": \"x\"}))" >long.jsonl &&
	test_exit 1 lora-eval -m "$LORA_SHARED/stories260K-hf" -d long.jsonl </dev/null >/dev/null 2>err &&
	test_grep "long.jsonl:1: the example is [0-9]* tokens long, more than the model.s context of 512" err
'

test_expect_success 'an adapter for another model: module missing, or shapes' '
	lora-pack "$G/adapters/t5-tiny/pool_0" >t5.lora &&
	test_exit 1 lora-eval -m "$M" -d "$EX" <t5.lora >/dev/null 2>err &&
	test_grep "record 1: adapter .pool_0.: module .* is not a linear layer of this llama model" err &&
	lora-pack "$G/adapters/stories260K/extra_r8_all" >s.lora &&
	test_exit 1 lora-eval -m "$M" -d "$EX" <s.lora >/dev/null 2>err &&
	test_grep "another base model" err
'

test_expect_success 'a weights record naming an adapter not in the pool' '
	lora-pack "$G/adapters/llama-tiny/pool_0" >pool &&
	{ cat pool && $LIB weights pool_0=1,pool_9=1 --id 1; } >in &&
	test_exit 1 lora-eval -m "$M" -d "$EX" <in >/dev/null 2>err &&
	test_grep "weights name .pool_9. is not an adapter of the pool" err
'

test_expect_success 'truncated and garbage streams' '
	lora-pack "$G/adapters/llama-tiny/pool_0" >pool &&
	head -c 100 pool >trunc &&
	test_exit 1 lora-eval -m "$M" -d "$EX" <trunc >/dev/null 2>err &&
	test_grep "truncated" err &&
	echo "hello world" >garbage &&
	test_exit 1 lora-eval -m "$M" -d "$EX" <garbage >/dev/null 2>err &&
	test_grep "record 1" err
'

test_expect_success 'a failed run leaves no --predictions file behind' '
	lora-pack "$G/adapters/llama-tiny/pool_0" >pool &&
	{ cat pool && $LIB weights nope=1 --id 1; } >in &&
	test_exit 1 lora-eval -m "$M" -d "$EX" -g --max-new-tokens 2 --predictions p.jsonl <in >/dev/null 2>err &&
	! test -e p.jsonl && test -z "$(ls | grep "^p.jsonl")"
'

test_expect_success 'a write error on stdout is reported' '
	test_exit 1 lora-eval -m "$M" -d "$EX" </dev/null >/dev/full 2>err &&
	test_grep "lora-eval: " err
'

test_done
