#!/bin/sh
# t0400 — lora-eval against the Hugging Face goldens (golden/README.md §3):
# the base loss of every golden model from an empty stream, each adapter of a
# packed pool scored alone, a weights record merged by the LoraHub rule, the
# greedy generations, and the other example formats.
. "$(dirname "$0")/lib.sh"
PY=python3; [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
LIB="$PY $TOP/tests/t/t04-lib.py"

if ! need_shared golden stories260K-hf; then
	test_skip 'lora-eval goldens' 'LORA_SHARED not set'
	test_done
	exit
fi
G=$LORA_SHARED/golden

# model name in golden/ -> model directory
mdir() {
	case $1 in
	stories260K) echo "$LORA_SHARED/stories260K-hf" ;;
	*) echo "$G/models/$1" ;;
	esac
}

for m in stories260K llama-tiny gpt2-tiny t5-tiny t5-tiny-v1; do
	test_expect_success "$m: empty stream scores the base model (loss to 1e-4)" '
		lora-eval -m "$(mdir '$m')" -d "$G/examples/'$m'.jsonl" </dev/null >s &&
		$LIB dump <s >d && test $(wc -l <d) -eq 1 &&
		test "$($LIB field d kind)" = score &&
		test "$($LIB field d examples)" = 6 &&
		$LIB near "$($LIB field d loss)" "$($LIB golden "$G/eval/'$m'/base.json" token_mean_loss)" 1e-4
	'
done

test_expect_success 'per_example are the golden per-example losses' '
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" </dev/null | $LIB dump >d &&
	$LIB field d per_example >got &&
	$PY -c "
import json, sys
got = json.loads(open(\"got\").read())
want = [e[\"loss\"] for e in json.load(open(\"$G/eval/llama-tiny/base.json\"))[\"examples\"]]
bad = [(g, w) for g, w in zip(got, want) if abs(g - w) > 1e-4 * abs(w)]
print(len(got), bad)
sys.exit(1 if bad or len(got) != len(want) else 0)"
'

test_expect_success 'a pool without weights: each adapter scored alone, in order' '
	lora-pack "$G"/adapters/gpt2-tiny/pool_? "$G/adapters/gpt2-tiny/extra_r8_all" >pool &&
	lora-eval -m "$G/models/gpt2-tiny" -d "$G/examples/gpt2-tiny.jsonl" <pool | $LIB dump >d &&
	test $(wc -l <d) -eq 6 &&
	test "$($LIB field d name 0)" = pool_0 &&
	test "$($LIB field d name 5)" = extra_r8_all &&
	$LIB near "$($LIB field d loss 5)" "$($LIB golden "$G/eval/gpt2-tiny/extra_r8_all.json" token_mean_loss)" 1e-4
'

for m in llama-tiny t5-tiny; do
	test_expect_success "$m: weights records merge the pool by the LoraHub rule, ids echoed" '
		lora-pack "$G"/adapters/'$m'/pool_? >pool &&
		{ cat pool &&
		  $LIB weights 11 pool_0=0.4,pool_1=0.3,pool_2=0.2,pool_3=0.6,pool_4=0.5 &&
		  $LIB weights 12 pool_0=0.5,pool_1=-0.3,pool_2=1.2,pool_3=0.1,pool_4=-0.7; } >in &&
		lora-eval -m "$(mdir '$m')" -d "$G/examples/'$m'.jsonl" <in | $LIB dump >d &&
		test $(wc -l <d) -eq 2 &&
		test "$($LIB field d id 0)" = 11 && test "$($LIB field d id 1)" = 12 &&
		$LIB near "$($LIB field d loss 0)" "$($LIB golden "$G/eval/'$m'/lorahub_wA.json" token_mean_loss)" 1e-4 &&
		$LIB near "$($LIB field d loss 1)" "$($LIB golden "$G/eval/'$m'/lorahub_wB.json" token_mean_loss)" 1e-4
	'
done

for m in stories260K llama-tiny gpt2-tiny t5-tiny t5-tiny-v1; do
	test_expect_success "$m: --generate reproduces the greedy texts" '
		lora-eval -m "$(mdir '$m')" -d "$G/examples/'$m'.jsonl" -g --max-new-tokens 8 \
			--predictions p.jsonl </dev/null | $LIB dump >d &&
		$LIB golden-texts "$G/eval/'$m'/base.json" >want &&
		$PY -c "
import json
for l in open(\"p.jsonl\"):
    print(json.dumps(json.loads(l)[\"prediction\"]))" >got &&
		test_cmp want got &&
		test "$($LIB field d accuracy)" = 0.0 &&
		test "$($LIB field d predictions | $PY -c "import json,sys; print(len(json.load(sys.stdin)))")" = 6
	'
done

test_expect_success 'accuracy: exact match after strip, lower case and removing dots' '
	printf "%s\n" "{\"input\": \"True and False or ( not False ) is\", \"output\": \"True\"}" >one.jsonl &&
	lora-eval -m "$LORA_SHARED/stories260K-hf" -d one.jsonl -g --max-new-tokens 4 \
		--predictions p.jsonl </dev/null | $LIB dump >d &&
	pred=$($PY -c "import json; print(json.loads(open(\"p.jsonl\").readline())[\"prediction\"])") &&
	$PY -c "import json,sys; print(json.dumps({\"input\": \"True and False or ( not False ) is\", \"output\": \"  \" + sys.argv[1].upper().strip() + \". \"}))" "$pred" >two.jsonl &&
	lora-eval -m "$LORA_SHARED/stories260K-hf" -d two.jsonl -g --max-new-tokens 4 </dev/null | $LIB dump >d2 &&
	test "$($LIB field d2 accuracy)" = 1.0
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
	for f in "$G/examples/llama-tiny.jsonl" bbh.json ex.yaml lh.jsonl; do
		lora-eval -m "$G/models/llama-tiny" -d "$f" </dev/null | $LIB dump >d &&
		$LIB field d loss >>losses || return 1
	done &&
	test $(sort -u losses | wc -l) -eq 1
'

test_expect_success '--max-examples keeps the first N' '
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" --max-examples 2 </dev/null |
		$LIB dump >d &&
	test "$($LIB field d examples)" = 2
'

test_expect_success '--icl K prepends demonstrations (from the examples, or --demos)' '
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" </dev/null | $LIB dump >d0 &&
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" --icl 2 </dev/null | $LIB dump >d1 &&
	lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" --icl 2 \
		--demos "$G/examples/llama-tiny.jsonl" </dev/null | $LIB dump >d2 &&
	test "$($LIB field d1 examples)" = 6 &&
	test "$($LIB field d0 loss)" != "$($LIB field d1 loss)" &&
	test "$($LIB field d1 loss)" != "$($LIB field d2 loss)"
'

test_expect_success '-v prints a readable line per score on stderr' '
	lora-pack "$G"/adapters/llama-tiny/pool_0 |
		lora-eval -v -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" >s 2>err &&
	test_grep "lora-eval: pool_0: loss [0-9.]* over 90 tokens of 6 examples" err
'

test_done
