#!/bin/sh
# t0470 — lora-eval: an eos_token_id list (Llama-3 style, [128001, 128008,
# 128009]) stops greedy generation at any of its ids, generation_config.json's
# list wins over config.json's (as in transformers' from_pretrained), and the
# decoder-only loss appends the tokenizer's eos_token, not the list's first id.
#
# The models are copies of golden/models/llama-tiny and t5-tiny with edited
# configs. Their reference greedy ids (golden/eval/*/base.json, transformers
# 4.36) are llama-tiny example 1: 80 174 185 484 ...; t5-tiny example 2:
# 8446 26015 ...; the tests make 185 and 8446 extra eos ids.
. "$(dirname "$0")/lib.sh"
DUMP="$LORAPY dump"	# a stream as JSON lines

if ! need_shared golden; then
	test_skip 'eos lists' 'LORA_SHARED not set'
	test_done
	exit
fi
G=$LORA_SHARED/golden

# mkcopy SRC DST CONFIG_EOS GENERATION_EOS [drop-tokenizer-eos]: a model
# directory of symlinks to SRC with eos_token_id set in config.json and
# generation_config.json (JSON values; "-" removes the key).
mkcopy() {
	mkdir -p "$2" && for f in "$1"/*; do ln -s "$f" "$2/"; done &&
	rm -f "$2/config.json" "$2/generation_config.json" "$2/tokenizer_config.json" &&
	$PY - "$1" "$2" "$3" "$4" "${5:-}" <<-'EOF'
	import json, sys
	src, dst, ce, ge, drop = sys.argv[1:]
	for name, v in (("config.json", ce), ("generation_config.json", ge)):
	    d = json.load(open(src + "/" + name))
	    d.pop("eos_token_id")
	    if v != "-":
	        d["eos_token_id"] = json.loads(v)
	    json.dump(d, open(dst + "/" + name, "w"))
	t = json.load(open(src + "/tokenizer_config.json"))
	if drop:
	    t.pop("eos_token")
	json.dump(t, open(dst + "/tokenizer_config.json", "w"))
	EOF
}

# pred MODEL EXAMPLES N: the first prediction of the score record with
# --max-new-tokens N
pred() {
	lora-eval -m "$1" -d "$2" -g --max-new-tokens "$3" </dev/null >s.lora &&
	$DUMP <s.lora >s.json &&
	$PY -c 'import json; print(json.loads(open("s.json").readline())["predictions"][0])'
}

# loss MODEL EXAMPLES: the loss as lora-eval -v prints it
loss() {
	lora-eval -v -m "$1" -d "$2" </dev/null 2>&1 >/dev/null | sed -n 's/.*: loss \([^ ]*\) .*/\1/p'
}

L=$G/models/llama-tiny
E1=$TRASH_ROOT/llama1.jsonl E2=$TRASH_ROOT/t5-2.jsonl
head -n 1 "$G/examples/llama-tiny.jsonl" >"$E1"
sed -n 2p "$G/examples/t5-tiny.jsonl" >"$E2"

test_expect_success 'llama: a second id of the eos list stops generation' '
	mkcopy "$L" m "[2, 185]" "[2, 185]" &&
	pred "$L" "$E1" 3 >want && pred "$L" "$E1" 8 >full &&
	! test_cmp want full >/dev/null &&
	pred m "$E1" 8 >got && test_cmp want got
'

test_expect_success 'llama: generation_config.json eos_token_id wins over config.json' '
	mkcopy "$L" a "2" "[2, 185]" && mkcopy "$L" b "[2, 185]" "2" &&
	pred "$L" "$E1" 3 >want && pred "$L" "$E1" 8 >full &&
	pred a "$E1" 8 >got && test_cmp want got &&
	pred b "$E1" 8 >got && test_cmp full got
'

test_expect_success 'llama: without generation_config eos, config.json list is used' '
	mkcopy "$L" m "[185, 2]" "-" &&
	pred "$L" "$E1" 3 >want && pred m "$E1" 8 >got && test_cmp want got
'

test_expect_success 'llama: the loss appends the tokenizer eos_token, not the first listed id' '
	mkcopy "$L" m "[185, 2]" "[185, 2]" &&
	loss "$L" "$E1" >want && loss m "$E1" >got &&
	test -s want && test_cmp want got
'

test_expect_success 'llama: no tokenizer eos_token -> the first listed id is appended' '
	mkcopy "$L" m "[185, 2]" "[185, 2]" drop &&
	loss "$L" "$E1" >base && loss m "$E1" >got &&
	test -s got && ! test_cmp base got >/dev/null &&
	mkcopy "$L" k "[2, 185]" "[2, 185]" drop &&
	loss k "$E1" >got && test_cmp base got
'

test_expect_success 't5: a second id of the eos list stops generation' '
	T=$G/models/t5-tiny &&
	mkcopy "$T" m "[1, 8446]" "[1, 8446]" &&
	pred "$T" "$E2" 1 >want && pred "$T" "$E2" 8 >full &&
	! test_cmp want full >/dev/null &&
	pred m "$E2" 8 >got && test_cmp want got
'

test_done
