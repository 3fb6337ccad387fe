#!/bin/sh
# t0400 — lora-eval against the Hugging Face goldens (golden/README.md §3):
# the base loss of every golden model from an empty stream, each adapter of a
# packed pool scored alone, a weights record merged by the LoraHub rule, the
# greedy generations, and the other example formats. Each check runs
# lora-eval, then one lorapy.py check-scores for all its comparisons; the
# largest relative difference is printed under the check's line.
. "$(dirname "$0")/lib.sh"
LIB=$LORAPY

if ! need_shared golden stories260K-hf; then
	test_skip 'lora-eval goldens' 'LORA_SHARED not set'
	test_done
	exit
fi
G=$LORA_SHARED/golden


# test_expect_success, then the "# max rel diff" line check-scores printed
expect_golden() {
	test_expect_success "$@"
	grep '^# max rel diff' "$TRASH_ROOT/$test_count.out" || :
}

for m in stories260K llama-tiny gpt2-tiny t5-tiny t5-tiny-v1; do
	expect_golden "$m: empty stream scores the base model (loss to 1e-4)" '
		lora-eval -m "$(golden_model_dir '$m')" -d "$G/examples/'$m'.jsonl" </dev/null >s &&
		$LIB check-scores s count=1 0:kind=score 0:examples=6 0:loss~"$G/eval/'$m'/base.json"
	'
done

expect_golden 'per_example are the golden per-example losses' '
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" </dev/null >s &&
	$LIB check-scores s 0:per_example~"$G/eval/llama-tiny/base.json"
'

expect_golden 'a pool without weights: each adapter scored alone, in order' '
	lora-pack "$G"/adapters/gpt2-tiny/pool_? "$G/adapters/gpt2-tiny/extra_r8_all" >pool &&
	lora-eval -m "$G/models/gpt2-tiny" -d "$G/examples/gpt2-tiny.jsonl" <pool >s &&
	$LIB check-scores s count=6 0:name=pool_0 5:name=extra_r8_all \
		5:loss~"$G/eval/gpt2-tiny/extra_r8_all.json"
'

for m in llama-tiny t5-tiny; do
	expect_golden "$m: weights records merge the pool by the LoraHub rule, ids echoed" '
		lora-pack "$G"/adapters/'$m'/pool_? >pool &&
		{ cat pool &&
		  $LIB weights pool_0=0.4,pool_1=0.3,pool_2=0.2,pool_3=0.6,pool_4=0.5 --id 11 &&
		  $LIB weights pool_0=0.5,pool_1=-0.3,pool_2=1.2,pool_3=0.1,pool_4=-0.7 --id 12; } >in &&
		lora-eval -m "$(golden_model_dir '$m')" -d "$G/examples/'$m'.jsonl" <in >s &&
		$LIB check-scores s count=2 0:id=11 1:id=12 \
			0:loss~"$G/eval/'$m'/lorahub_wA.json" 1:loss~"$G/eval/'$m'/lorahub_wB.json"
	'
done

for m in stories260K llama-tiny gpt2-tiny t5-tiny t5-tiny-v1; do
	test_expect_success "$m: --generate reproduces the greedy texts" '
		lora-eval -m "$(golden_model_dir '$m')" -d "$G/examples/'$m'.jsonl" -g --max-new-tokens 8 \
			--predictions p.jsonl </dev/null >s &&
		$LIB check-scores s gen:p.jsonl~"$G/eval/'$m'/base.json" 0:accuracy=0.0 0:predictions#=6
	'
done

test_expect_success 'accuracy: exact match after strip, lower case and removing dots' '
	printf "%s\n" "{\"input\": \"True and False or ( not False ) is\", \"output\": \"True\"}" >one.jsonl &&
	lora-eval -m "$LORA_SHARED/stories260K-hf" -d one.jsonl -g --max-new-tokens 4 \
		--predictions p.jsonl </dev/null >s &&
	$PY -c "
import json
pred = json.loads(open(\"p.jsonl\").readline())[\"prediction\"]
print(json.dumps({\"input\": \"True and False or ( not False ) is\", \"output\": \"  \" + pred.upper().strip() + \". \"}))" >two.jsonl &&
	lora-eval -m "$LORA_SHARED/stories260K-hf" -d two.jsonl -g --max-new-tokens 4 </dev/null >s2 &&
	$LIB check-scores s2 0:accuracy=1.0
'

test_expect_success 'BBH task JSON, YAML list and context/completion JSONL give the same loss' '
	$PY -c "
import json
ex = [json.loads(l) for l in open(\"$G/examples/llama-tiny.jsonl\")]
json.dump({\"canary\": \"x\", \"examples\": [{\"input\": e[\"input\"], \"target\": e[\"output\"]} for e in ex]}, open(\"bbh.json\", \"w\"), indent=2)
with open(\"ex.yaml\", \"w\") as f:
    for e in ex:
        f.write(\"- input: %s\n  output: %s\n\" % (json.dumps(e[\"input\"]), json.dumps(e[\"output\"])))
with open(\"lh.jsonl\", \"w\") as f:
    for e in ex:
        f.write(json.dumps({\"context\": e[\"input\"], \"completion\": e[\"output\"]}) + \"\n\")
" &&
	k=0 &&
	for f in "$G/examples/llama-tiny.jsonl" bbh.json ex.yaml lh.jsonl; do
		k=$((k + 1)) &&
		lora-eval -m "$G/models/llama-tiny" -d "$f" </dev/null >s$k || return 1
	done &&
	$LIB check-scores s1 0:loss==@s2 0:loss==@s3 0:loss==@s4
'

test_expect_success '--max-examples keeps the first N' '
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" --max-examples 2 </dev/null >s &&
	$LIB check-scores s 0:examples=2
'

test_expect_success '--icl K prepends demonstrations (from the examples, or --demos)' '
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" </dev/null >s0 &&
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" --icl 2 </dev/null >s1 &&
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" --icl 2 \
		--demos "$G/examples/llama-tiny.jsonl" </dev/null >s2 &&
	$LIB check-scores s1 0:examples=6 0:loss!=@s0 0:loss!=@s2
'

test_expect_success '-v prints a readable line per score on stderr' '
	lora-pack "$G"/adapters/llama-tiny/pool_0 |
		lora-eval -v -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" >s 2>err &&
	test_grep "lora-eval: pool_0: loss [0-9.]* over 90 tokens of 6 examples" err
'

test_done
