#!/bin/sh
# t0600 — lora-train end to end on the demo's stories260K (committed in
# examples/demo/model): usage errors, refusals (T5, GPT-2), the starting loss
# equals lora-eval's base loss, training lowers lora-eval's loss on the
# training examples, a seed fixes the bytes, the PEFT round trip through
# lora-pack --unpack, the man page's examples, and a tiny random Llama of the
# golden set (untied head, GQA) with every target module.
. "$(dirname "$0")/lib.sh"

M=$TOP/examples/demo/model
D=$TOP/examples/demo/data/pool/name-Tom.jsonl
# loss=... of the first score record of a stream file
loss_of() { lora-pack -t "$1" | awk 'NR == 2 { for (i = 2; i <= NF; i++)
	if ($i ~ /^loss=/) print substr($i, 6) }'; }

test_expect_success 'usage: no model, no data, both --steps and --epochs, bad target' '
	test_exit 2 lora-train -d x.jsonl 2>err && test_grep "no model" err &&
	test_exit 2 lora-train -m "$M" 2>err && test_grep "no examples" err &&
	test_exit 2 lora-train -m "$M" -d "$D" --steps 3 --epochs 2 2>err &&
	test_grep "not both" err &&
	test_exit 2 lora-train -m "$M" -d "$D" --targets q_proj,c_attn 2>err &&
	test_grep "c_attn" err &&
	test_exit 2 lora-train -m "$M" -d "$D" --rank 0 2>err &&
	test_exit 2 lora-train -m "$M" -d "$D" --lr -1 2>err &&
	lora-train --help > help && test_grep "^usage: lora-train" help &&
	lora-train --version > v && test_grep "lora-train (lorapipe)" v
'

test_expect_success 'a missing or malformed examples file is an error naming it' '
	test_exit 1 lora-train -m "$M" -d nope.jsonl > out 2>err && test_grep "nope.jsonl" err &&
	printf "{\"input\": \"a\"}\n" > bad.jsonl &&
	test_exit 1 lora-train -m "$M" -d bad.jsonl > out 2>err && test_grep "bad.jsonl" err
'

if command -v script > /dev/null; then
	test_expect_success 'refuses to write to a terminal' '
		script -qec "lora-train -m $M -d $D --steps 1" /dev/null > out 2>&1;
		test_grep "terminal" out
	'
fi

test_expect_success 'the first loss is lora-eval base loss; training lowers it' '
	lora-train -m "$M" -d "$D" -r 4 --lr 1e-2 --steps 12 --seed 3 > tom.lora 2> log &&
	lora-pack -t tom.lora > t && test_grep "name-Tom .*adapter .* 10 *4 *8 *f32" t &&
	lora-eval -q -m "$M" -d "$D" < /dev/null > base.score &&
	lora-eval -q -m "$M" -d "$D" < tom.lora > tom.score &&
	b=$(loss_of base.score) && a=$(loss_of tom.score) &&
	first=$(sed -n "1s/.*loss \([0-9.]*\)$/\1/p" log) &&
	last=$(sed -n "s/.*loss [0-9.]* -> \([0-9.]*\) .*/\1/p" log) &&
	echo "base $b first $first trained $a last $last" &&
	awk -v b="$b" -v f="$first" -v a="$a" -v l="$last" "BEGIN {
		exit !((f - b) ^ 2 < 1e-8 && (a - l) ^ 2 < 1e-8 && a < 0.7 * b) }"
'

test_expect_success 'the same seed gives the same bytes, another seed others' '
	lora-train -q -m "$M" -d "$D" -r 4 --steps 6 --seed 5 > a.lora &&
	lora-train -q -m "$M" -d "$D" -r 4 --steps 6 --seed 5 > b.lora &&
	lora-train -q -m "$M" -d "$D" -r 4 --steps 6 --seed 6 > c.lora &&
	cmp a.lora b.lora && ! cmp -s a.lora c.lora
'

test_expect_success 'PEFT round trip: lora-pack --unpack, then back, scores the same' '
	lora-train -q -m "$M" -d "$D" -r 4 --steps 8 --name tom > tom.lora &&
	lora-pack --unpack peft tom.lora &&
	test -f peft/tom/adapter_config.json && test -f peft/tom/adapter_model.safetensors &&
	test_grep "\"task_type\": *\"CAUSAL_LM\"" peft/tom/adapter_config.json &&
	test_grep "\"peft_type\": *\"LORA\"" peft/tom/adapter_config.json &&
	test_grep "q_proj" peft/tom/adapter_config.json &&
	test_grep "\"r\": *4" peft/tom/adapter_config.json &&
	head -c 4000 peft/tom/adapter_model.safetensors > hdr &&
	grep -a -q "base_model.model.model.layers.4.self_attn.v_proj.lora_B.weight" hdr &&
	lora-pack peft/tom > back.lora &&
	lora-eval -q -m "$M" -d "$D" < tom.lora > s1 &&
	lora-eval -q -m "$M" -d "$D" < back.lora > s2 &&
	test "$(loss_of s1)" = "$(loss_of s2)"
'

test_expect_success 'lora-train output pipes into lora-eval (man page example)' '
	head -n 5 "$D" > five.jsonl &&
	lora-train -q -m "$M" -d five.jsonl -r 4 --steps 10 --lr 5e-3 |
		lora-eval -q -m "$M" -d "$D" > s && test "$(loss_of s)" != ""
'

if need_shared golden/models/t5-tiny golden/models/gpt2-tiny; then
	test_expect_success 'T5 and GPT-2 are refused, naming what is missing' '
		test_exit 1 lora-train -m "$LORA_SHARED/golden/models/t5-tiny" -d "$D" > o 2>err &&
		test_grep "t5.*not implemented.*cross-attention" err &&
		test_exit 1 lora-train -m "$LORA_SHARED/golden/models/gpt2-tiny" -d "$D" > o 2>err &&
		test_grep "gpt2.*not implemented.*LayerNorm" err
	'
else
	test_skip 'T5 and GPT-2 are refused, naming what is missing' 'no shared data'
fi

if need_shared golden/models/llama-tiny; then
	test_expect_success 'llama-tiny (untied head, GQA): every target, loss falls' '
		L=$LORA_SHARED/golden/models/llama-tiny &&
		lora-train -m "$L" -d "$D" -t all -r 2 --lr 1e-2 --steps 8 -b 16 > l.lora 2> log &&
		lora-pack -t l.lora > t && test_grep " 14 *2 *4 " t &&
		lora-eval -q -m "$L" -d "$D" < /dev/null > b.score &&
		lora-eval -q -m "$L" -d "$D" < l.lora > a.score &&
		awk -v b="$(loss_of b.score)" -v a="$(loss_of a.score)" "BEGIN { exit !(a < b) }"
	'
else
	test_skip 'llama-tiny (untied head, GQA): every target, loss falls' 'no shared data'
fi

test_done
