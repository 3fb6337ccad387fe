#!/bin/sh
# t0100 — lora-pack on the real GPT-2 PEFT adapters: pack, list, sample,
# unpack, and get identical tensors and an equivalent config back.
. "$(dirname "$0")/lib.sh"
ST=$LORAPY
REAL="gpt2-lora-quotes gpt2-lora-tigrinya gpt2-medium-lora-shakespeare"

if need_shared gpt2-lora-quotes gpt2-lora-tigrinya gpt2-medium-lora-shakespeare gpt2-lora-emotion; then
	D=$LORA_SHARED
	# one packed stream shared by the checks below
	mkdir -p "$TRASH_ROOT/common"
	lora-pack $D/gpt2-lora-quotes $D/gpt2-lora-tigrinya $D/gpt2-medium-lora-shakespeare \
		> "$TRASH_ROOT/common/three.lora"
	S=$TRASH_ROOT/common/three.lora

	test_expect_success 'pack three PEFT dirs, list them with -t' '
		lora-pack -t "$S" > out &&
		cat > want <<-\EOT &&
		NAME                          KIND     BASE                          MODULES  R  ALPHA  DTYPE  PARAMS    BYTES
		gpt2-lora-quotes              adapter  gpt2                               36  8     32  f32    811008  3244032
		gpt2-lora-tigrinya            adapter  gpt2                               36  8     32  f32    811008  3244032
		gpt2-medium-lora-shakespeare  adapter  openai-community/gpt2-medium       24  8     16  f32    786432  3145728
		EOT
		test_cmp want out
	'

	test_expect_success 'unpack gives identical tensors and config; safetensors files byte-identical' '
		lora-pack --unpack out < "$S" &&
		for n in $REAL; do
			$ST cmp $D/$n out/$n && $ST cfg $D/$n out/$n &&
			cmp $D/$n/adapter_model.safetensors out/$n/adapter_model.safetensors || return 1
		done &&
		ls -A out > dirs && printf "%s\n" $REAL > want && test_cmp want dirs
	'

	test_expect_success 'a .safetensors path packs like its directory' '
		lora-pack $D/gpt2-lora-quotes/adapter_model.safetensors > a.lora &&
		lora-pack $D/gpt2-lora-quotes > b.lora &&
		lora-pack -t a.lora | cut -c1-40 > ta && lora-pack -t b.lora | cut -c1-40 > tb &&
		test_cmp tb ta
	'

	test_expect_success 'stream to stream is byte-identical; cat of two streams is a stream' '
		lora-pack < "$S" > again.lora && cmp "$S" again.lora &&
		lora-pack $D/gpt2-lora-quotes > q.lora && lora-pack $D/gpt2-lora-tigrinya > t.lora &&
		cat q.lora t.lora | lora-pack -t | cut -d" " -f1 > names &&
		printf "NAME\ngpt2-lora-quotes\ngpt2-lora-tigrinya\n" > want && test_cmp want names &&
		lora-pack q.lora - < t.lora > qt.lora && cat q.lora t.lora | cmp - qt.lora
	'

	test_expect_success 'sample 2 of 3 with a seed, unpack, identical tensors' '
		lora-pack --sample 2 --seed 1 "$S" > s.lora &&
		lora-pack --sample 2 --seed 1 "$S" | cmp - s.lora &&
		lora-pack --unpack u < s.lora && test $(ls u | wc -l) -eq 2 &&
		for n in $(ls u); do $ST cmp $D/$n u/$n || return 1; done
	'

	test_expect_success 'the classifier-head adapter is refused: modules_to_save' '
		test_exit 1 lora-pack $D/gpt2-lora-emotion > out 2> err &&
		test_grep "modules_to_save" err && test_grep "gpt2-lora-emotion" err &&
		test_grep "^lora-pack: " err && test ! -s out
	'

	test_expect_success 'dtype bf16 then f32: values within bf16 rounding' '
		lora-pack --dtype bf16 $D/gpt2-lora-quotes > b.lora &&
		lora-pack -t b.lora | grep -q " bf16 " &&
		lora-pack --dtype f32 --unpack u < b.lora &&
		$ST dtype u/gpt2-lora-quotes | grep -v -q " BF16" &&
		$ST cmp $D/gpt2-lora-quotes u/gpt2-lora-quotes 0.004
	'
else
	test_skip 'real GPT-2 adapters' 'needs $LORA_SHARED/gpt2-lora-*'
fi
test_done
