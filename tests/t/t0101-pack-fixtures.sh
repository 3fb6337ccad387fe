#!/bin/sh
# t0101 — lora-pack round trips on generated PEFT fixtures: mixed ranks via
# rank_pattern/alpha_pattern, rslora, f16, bf16 with fan_in_fan_out, the
# ".lora_A.<adapter>.weight" key form; dtype conversion; unknown keys.
. "$(dirname "$0")/lib.sh"
ST=$LORAPY
FX=$TRASH_ROOT/fx
KINDS="mixed rslora bf16 oldkeys"
for k in $KINDS; do $ST fixture "$FX/$k" $k || exit 1; done

test_expect_success 'fixtures: PEFT -> stream -> PEFT gives identical tensors and config' '
	lora-pack "$FX"/mixed "$FX"/rslora "$FX"/bf16 "$FX"/oldkeys > all.lora &&
	lora-pack --unpack out < all.lora &&
	for k in $KINDS; do $ST cmp "$FX/$k" out/$k && $ST cfg "$FX/$k" out/$k || return 1; done
'

test_expect_success 'fixtures: -t shows mixed ranks and alphas, dtypes, rslora' '
	lora-pack "$FX"/mixed "$FX"/rslora "$FX"/bf16 "$FX"/oldkeys | lora-pack -t > out &&
	cat > want <<-\EOT &&
	NAME     KIND     BASE        MODULES    R  ALPHA  DTYPE  PARAMS  BYTES  INFO
	mixed    adapter  tiny-llama        4  2-4    3-8  f32       384   1536
	rslora   adapter  tiny-llama        4    6     12  f16       672   1344  rslora
	bf16     adapter  tiny-gpt2         2    4      8  bf16      256    512
	oldkeys  adapter  tiny-llama        4    4      8  f32       448   1792
	EOT
	test_cmp want out
'

test_expect_success '--dtype: bf16 -> f32 is exact, and back to bf16 is the original bytes' '
	lora-pack --dtype f32 "$FX"/bf16 > f.lora &&
	lora-pack -t f.lora | grep -q " f32 " &&
	lora-pack --dtype bf16 --unpack out f.lora &&
	$ST cmp "$FX"/bf16 out/bf16
'

test_expect_success '--dtype: f32 -> f16 -> f32 within f16 rounding; -> bf16 within bf16 rounding' '
	lora-pack --dtype f16 "$FX"/mixed | lora-pack --dtype f32 --unpack h &&
	$ST dtype h/mixed | grep -c " F32$" | grep -qx 8 &&
	$ST cmp "$FX"/mixed h/mixed 0.0005 &&
	lora-pack --dtype bf16 --unpack b "$FX"/mixed &&
	$ST dtype b/mixed | grep -c " BF16$" | grep -qx 8 &&
	$ST cmp "$FX"/mixed b/mixed 0.004 &&
	! $ST cmp "$FX"/mixed b/mixed 0.0001 >/dev/null
'

test_expect_success 'unknown keys survive a pass-through (record, module, weights, unknown kind)' '
	$ST mkstream in.lora "[
	  {\"kind\": \"adapter\", \"name\": \"x\", \"r\": 2, \"alpha\": 4.0, \"zz_top\": [1, \"two\"],
	   \"tensors\": [{\"module\": \"m\", \"a\": {\"dtype\": \"f32\", \"shape\": [2, 3], \"data\": z(24)},
	                  \"b\": {\"dtype\": \"f32\", \"shape\": [4, 2], \"data\": z(32)}, \"mod_note\": \"kept\"}]},
	  {\"kind\": \"weights\", \"names\": [\"x\"], \"w\": [0.5], \"trace\": {\"gen\": 3}},
	  {\"kind\": \"score\", \"loss\": nan, \"tokens\": 3, \"examples\": 1, \"scorer\": \"py\"},
	  {\"kind\": \"note\", \"text\": \"hi\", \"n\": -5}]" &&
	lora-pack in.lora > out.lora && $ST dump out.lora > dump &&
	grep -q "\"zz_top\": \[1, \"two\"\]" dump &&
	grep -q "\"mod_note\": \"kept\"" dump &&
	grep -q "\"trace\": {\"gen\": 3}" dump &&
	grep -q "\"scorer\": \"py\"" dump &&
	grep -q "\"kind\": \"note\", \"text\": \"hi\", \"n\": -5" dump &&
	lora-pack out.lora | cmp - out.lora
'

test_expect_success 'a pipe (FIFO) path is read as a stream' '
	lora-pack "$FX"/mixed > m.lora && mkfifo p &&
	{ cat m.lora > p & } && lora-pack p > out.lora && cmp m.lora out.lora
'

test_expect_success '-t summarises weights, score and unknown records' '
	$ST mkstream in.lora "[
	  {\"kind\": \"weights\", \"id\": 7, \"names\": [\"a\", \"b\"], \"w\": [0.25, -1.0], \"method\": \"lorahub\", \"loss\": 1.5},
	  {\"kind\": \"score\", \"id\": 7, \"loss\": nan, \"tokens\": 30, \"examples\": 5, \"accuracy\": 0.6},
	  {\"kind\": \"note\"}]" &&
	lora-pack -t in.lora > out &&
	cat > want <<-\EOT &&
	NAME  KIND     BASE  MODULES  R  ALPHA  DTYPE  PARAMS  BYTES  INFO
	#7    weights  -           2  -      -  -           -      -  method=lorahub loss=1.5 w=a:0.25,b:-1
	-     score    -           -  -      -  -           -      -  id=7 loss=nan tokens=30 examples=5 accuracy=0.6
	-     note     -           -  -      -  -           -      -
	EOT
	test_cmp want out
'
test_done
