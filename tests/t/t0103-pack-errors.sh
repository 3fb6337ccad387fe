#!/bin/sh
# t0103 — lora-pack on bad input and bad usage: each message and exit code.
. "$(dirname "$0")/lib.sh"
ST=$LORAPY
FX=$TRASH_ROOT/fx
$ST fixture "$FX/tiny1" tiny1 && $ST fixture "$FX/big" big || exit 1
lora-pack "$FX/tiny1" > "$FX/one.lora" || exit 1
# a one-module adapter record; A_BYTES / B_R / NAME vary below
rec() { # NAME R A_ROWS A_BYTES B_COLS
	echo "{\"kind\": \"adapter\", \"name\": \"$1\", \"r\": $2, \"alpha\": 8.0, \"tensors\": [
	  {\"module\": \"m.q\", \"a\": {\"dtype\": \"f32\", \"shape\": [$3, 3], \"data\": z($4)},
	   \"b\": {\"dtype\": \"f32\", \"shape\": [5, $5], \"data\": z($((20 * $5)))}}]}"
}

test_expect_success 'truncated stream: a clean error at every sampled offset, exact message' '
	size=$(wc -c < "$FX/one.lora") &&
	for cut in 1 2 5 9 17 33 65 100 200 400 $((size / 2)) $((size - 1)); do
		head -c $cut "$FX/one.lora" > t.lora &&
		test_exit 1 lora-pack t.lora > /dev/null 2> err &&
		echo "lora-pack: t.lora: record 1 at byte 0: truncated record: the stream ends at byte $cut" > want &&
		test_cmp want err || return 1
	done &&
	cat "$FX/one.lora" "$FX/one.lora" | head -c $((size + 7)) | lora-pack --name x > /dev/null 2> err;
	echo "lora-pack: stdin: record 2 at byte $size: truncated record: the stream ends at byte $((size + 7))" > want &&
	test_cmp want err
'

test_expect_success 'an empty stream is a valid stream' '
	lora-pack < /dev/null > out && test ! -s out &&
	lora-pack -t < /dev/null > out && echo "NAME  KIND  BASE  MODULES  R  ALPHA  DTYPE  PARAMS  BYTES" > want &&
	test_cmp want out
'

test_expect_success 'garbage bytes' '
	printf "hello" | test_exit 1 lora-pack > /dev/null 2> err &&
	echo "lora-pack: stdin: record 1 at byte 0: expected a record (a msgpack map), found byte 0x68" > want &&
	test_cmp want err &&
	size=$(wc -c < "$FX/one.lora") &&
	{ cat "$FX/one.lora"; printf "\301\001"; } > g.lora &&
	test_exit 1 lora-pack g.lora > /dev/null 2> err &&
	echo "lora-pack: g.lora: record 2 at byte $size: expected a record (a msgpack map), found byte 0xc1" > want &&
	test_cmp want err
'

test_expect_success 'a record without kind' '
	$ST mkstream in.lora "[{\"name\": \"x\"}]" &&
	test_exit 1 lora-pack in.lora > /dev/null 2> err &&
	echo "lora-pack: in.lora: record 1 at byte 0: record has no '"'"'kind'"'"'" > want && test_cmp want err
'

test_expect_success 'shape / data length mismatch' '
	$ST mkstream in.lora "[$(rec x 4 4 47 4)]" &&
	test_exit 1 lora-pack in.lora > /dev/null 2> err &&
	test_grep "^lora-pack: in.lora: record 1 at byte 0: adapter .x.: module .m.q.: a has shape \[4,3\] f32, which needs 48 bytes of data, but has 47$" err
'

test_expect_success 'a/b rank mismatch, and rank against r' '
	$ST mkstream in.lora "[$(rec x 4 4 48 2)]" &&
	test_exit 1 lora-pack in.lora > /dev/null 2> err &&
	test_grep "module .m.q.: a is \[4,3\] and b is \[5,2\]: their ranks differ$" err &&
	$ST mkstream in.lora "[$(rec x 8 4 48 4)]" &&
	test_exit 1 lora-pack in.lora > /dev/null 2> err &&
	test_grep "module .m.q.: a and b have rank 4 but r is 8$" err
'

test_expect_success 'duplicate names within a stream' '
	$ST mkstream in.lora "[$(rec x 4 4 48 4), $(rec y 4 4 48 4), $(rec x 4 4 48 4)]" &&
	test_exit 1 lora-pack in.lora > /dev/null 2> err &&
	test_grep "^lora-pack: in.lora: record 3 at byte [0-9]*: duplicate adapter name .x.$" err
'

test_expect_success 'NaN or infinite weights are refused, NaN loss in a score is not' '
	$ST mkstream in.lora "[{\"kind\": \"weights\", \"names\": [\"a\", \"b\"], \"w\": [0.5, nan]}]" &&
	test_exit 1 lora-pack in.lora > /dev/null 2> err &&
	echo "lora-pack: in.lora: record 1 at byte 0: w[1] is NaN: weights must be finite" > want &&
	test_cmp want err &&
	$ST mkstream in.lora "[{\"kind\": \"weights\", \"names\": [\"a\"], \"w\": [-inf]}]" &&
	test_exit 1 lora-pack in.lora > /dev/null 2> err && test_grep "w\[0\] is infinite" err &&
	$ST mkstream in.lora "[{\"kind\": \"score\", \"loss\": nan, \"tokens\": 0, \"examples\": 0}]" &&
	lora-pack in.lora > a.lora && lora-pack a.lora | cmp - a.lora &&
	$ST dump a.lora | grep -q "\"loss\": NaN"
'

test_expect_success 'missing adapter_config.json' '
	mkdir d && cp "$FX/tiny1/adapter_model.safetensors" d/ &&
	test_exit 1 lora-pack d > /dev/null 2> err &&
	test_grep "^lora-pack: .*adapter_config.json" err &&
	test_exit 1 lora-pack d/adapter_model.safetensors > /dev/null 2> err &&
	test_grep "adapter_config.json" err
'

test_expect_success 'a peft_type other than LORA' '
	cp -r "$FX/tiny1" ia3 &&
	sed "s/\"LORA\"/\"IA3\"/" "$FX/tiny1/adapter_config.json" > ia3/adapter_config.json &&
	test_exit 1 lora-pack ia3 > /dev/null 2> err &&
	test_grep "^lora-pack: .*IA3" err && test_grep "adapter_config.json" err
'

test_expect_success 'bad safetensors: header past the end, unknown dtype, malformed JSON' '
	cp -r "$FX/tiny1" s1 && cp "$FX/tiny1/adapter_config.json" s1/ &&
	$PY -c "import struct; open(\"s1/adapter_model.safetensors\", \"wb\").write(struct.pack(\"<Q\", 4096) + b\"{}\")" &&
	test_exit 1 lora-pack s1 > /dev/null 2> err && test_grep "^lora-pack: .*s1/adapter_model.safetensors" err &&
	$PY -c "import struct; h = b\"{\\\"t\\\": {\\\"dtype\\\": \\\"I64\\\", \\\"shape\\\": [1], \\\"data_offsets\\\": [0, 8]}}\"; open(\"s1/adapter_model.safetensors\", \"wb\").write(struct.pack(\"<Q\", len(h)) + h + bytes(8))" &&
	test_exit 1 lora-pack s1 > /dev/null 2> err && test_grep "I64" err &&
	$PY -c "import struct; h = b\"{\\\"t\\\": \"; open(\"s1/adapter_model.safetensors\", \"wb\").write(struct.pack(\"<Q\", len(h)) + h)" &&
	test_exit 1 lora-pack s1 > /dev/null 2> err && test_grep "^lora-pack: .*s1/adapter_model.safetensors" err
'

test_expect_success 'a file that does not exist, or cannot be read' '
	test_exit 1 lora-pack nope > /dev/null 2> err &&
	echo "lora-pack: cannot open '"'"'nope'"'"': No such file or directory" > want && test_cmp want err
'
if [ "$(id -u)" != 0 ]; then
	test_expect_success 'an unreadable stream file' '
		cp "$FX/one.lora" locked.lora && chmod 000 locked.lora &&
		test_exit 1 lora-pack locked.lora > /dev/null 2> err &&
		echo "lora-pack: cannot open '"'"'locked.lora'"'"': Permission denied" > want && test_cmp want err
	'
elif command -v setpriv > /dev/null && setpriv --reuid=65534 --regid=65534 --clear-groups true 2>/dev/null; then
	test_expect_success 'an unreadable stream file (as nobody)' '
		cp "$FX/one.lora" locked.lora && chmod 000 locked.lora && chmod 755 . &&
		test_exit 1 setpriv --reuid=65534 --regid=65534 --clear-groups "$(command -v lora-pack)" locked.lora > /dev/null 2> err &&
		echo "lora-pack: cannot open '"'"'locked.lora'"'"': Permission denied" > want && test_cmp want err
	'
else
	test_skip 'an unreadable stream file' 'running as root without setpriv'
fi

test_expect_success 'closed stdout: exit 1 and a write error' '
	{ lora-pack "$FX/big" 2> err; echo $? > rc; } | head -c 10 > /dev/null &&
	test "$(cat rc)" = 1 && test_grep "^lora-pack: stdout: write error: Broken pipe$" err
'

test_expect_success 'full disk: exit 1 and a write error' '
	test ! -w /dev/full || {
		test_exit 1 lora-pack "$FX/tiny1" > /dev/full 2> err &&
		test_grep "^lora-pack: stdout: write error: No space left on device$" err
	}
'

if command -v script > /dev/null && script -qec true /dev/null > /dev/null 2>&1; then
	test_expect_success 'refuses to write a stream to a terminal; -t is fine' '
		script -qec "lora-pack $FX/tiny1" /dev/null > out 2>&1; rc=$?;
		test $rc -eq 2 && grep -q "refusing to write a binary stream to a terminal" out &&
		script -qec "lora-pack -t $FX/tiny1" /dev/null > out 2>&1 && grep -q "tiny1" out
	'
else
	test_skip 'terminal refusal' 'no usable script(1)'
fi

test_expect_success 'usage errors exit 2 with a hint' '
	test_exit 2 lora-pack --bogus < /dev/null > /dev/null 2> err && test_grep "Try .lora-pack --help." err &&
	test_exit 2 lora-pack --dtype f64 < /dev/null > /dev/null 2> err &&
	test_grep "^lora-pack: --dtype: .f64. is not f32, f16 or bf16$" err &&
	test_exit 2 lora-pack --sample -1 < /dev/null > /dev/null 2> err &&
	test_exit 2 lora-pack --sample x < /dev/null > /dev/null 2> err &&
	test_grep "^lora-pack: --sample: .x. is not an integer$" err &&
	test_exit 2 lora-pack -t --unpack d < /dev/null > /dev/null 2> err &&
	test_exit 2 lora-pack --force < /dev/null > /dev/null 2> err
'

test_expect_success '-h and --version go to stdout, exit 0' '
	lora-pack -h > out && test_grep "^Usage: lora-pack" out &&
	lora-pack --help > out2 && test_cmp out out2 &&
	lora-pack --version > out && test_grep "^lora-pack (lorapipe) " out
'

test_expect_success '--unpack refuses an existing directory unless --force; replaces atomically' '
	lora-pack --unpack out "$FX/tiny1" &&
	test_exit 1 lora-pack --unpack out "$FX/tiny1" 2> err &&
	test_grep "^lora-pack: .out/tiny1. already exists; use --force to replace it$" err &&
	lora-pack --dtype bf16 "$FX/tiny1" | lora-pack --unpack out --force &&
	$ST dtype out/tiny1 | grep -q BF16 && test "$(ls -A out)" = tiny1 &&
	ls -A out/tiny1 > files && printf "adapter_config.json\nadapter_model.safetensors\n" > want &&
	test_cmp want files
'

test_expect_success '--unpack refuses a name that is not a directory name' '
	lora-pack --name ../evil "$FX/tiny1" > e.lora &&
	test_exit 1 lora-pack --unpack out e.lora 2> err &&
	test_grep "adapter name .../evil. cannot be a directory name" err && test ! -e evil
'

test_expect_success 'a bad input after good ones: exit 1, nothing partial in --unpack DIR' '
	test_exit 1 lora-pack --unpack out "$FX/tiny1" nope 2> err &&
	test "$(ls -A out)" = tiny1
'
test_done
