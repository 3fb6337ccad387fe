#!/bin/sh
# t0495 — lora-eval on model directories whose tokenizer is only a
# SentencePiece model (tokenizer.json removed): the base losses must equal the
# Hugging Face goldens (golden/README.md §3) and the greedy generations the
# ones lora-eval gives with tokenizer.json.
. "$(dirname "$0")/lib.sh"
LIB=$LORAPY

if ! need_shared golden stories260K-hf golden/models/t5-tiny; then
	test_skip 'lora-eval with SentencePiece-only tokenizers' 'LORA_SHARED not set'
	test_done
	exit
fi
G=$LORA_SHARED/golden

for m in stories260K:$LORA_SHARED/stories260K-hf llama-tiny:$G/models/llama-tiny t5-tiny:$G/models/t5-tiny t5-tiny-v1:$G/models/t5-tiny-v1; do
	name=${m%%:*} src=${m#*:}
	test_expect_success "$name: loss and generations without tokenizer.json" '
		cp -r "'$src'" m && rm m/tokenizer.json && ls m | grep -q "\.model\$" &&
		lora-eval -m m -d "$G/examples/'$name'.jsonl" </dev/null >s &&
		$LIB check-scores s 0:loss~"$G/eval/'$name'/base.json" &&
		lora-eval -m m -d "$G/examples/'$name'.jsonl" -g --max-new-tokens 6 </dev/null >g1 &&
		lora-eval -m "'$src'" -d "$G/examples/'$name'.jsonl" -g --max-new-tokens 6 </dev/null >g2 &&
		cmp g1 g2
	'
done

test_done
