#!/bin/sh
# t0320 — lora-apply never leaves a partial OUT and never writes MODEL: an
# existing OUT is refused unless --force (then replaced whole), a kill in the
# middle of writing (SIGKILL or SIGTERM) leaves no OUT, and OUT may not be
# MODEL or lie inside it. LORA_TEST_APPLY_DELAY_MS slows the writer down
# (a sleep after each tensor) so the kill lands mid-write.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
if ! $PY -c 'import numpy' 2>/dev/null; then
	test_skip 'lora-apply atomicity' 'python3 with numpy not found'
	test_done
	exit
fi
L="$PY $TOP/tests/t/lorapy.py"
FX=$TRASH_ROOT/fx
$L batch <<EOT || exit 1
gen-model $FX/llama --arch llama --shards 2
gen-adapter $FX/la --model $FX/llama --modules q_proj,v_proj --r 4 --alpha 8 --seed 3
gen-adapter $FX/lb --model $FX/llama --modules down_proj --r 2 --alpha 2 --seed 4
EOT
(cd "$FX"/llama && md5sum * > ../llama.md5)
lora-pack "$FX"/la > "$FX"/a.lora && lora-pack "$FX"/lb > "$FX"/b.lora || exit 1

# wait_for GLOB: until a file matching GLOB exists (at most ~10 s).
wait_for() {
	i=0
	while [ $i -lt 200 ]; do
		for f in $1; do [ -e "$f" ] && return 0; done
		sleep 0.05
		i=$((i + 1))
	done
	return 1
}

test_expect_success 'an existing OUT is refused without --force' '
	mkdir out && echo keep > out/file &&
	test_exit 1 lora-apply -m "$FX"/llama -o out < "$FX"/a.lora 2> err &&
	test_grep "lora-apply: .out. exists; use --force to replace it" err &&
	test "$(cat out/file)" = keep
'

test_expect_success '--force replaces OUT as a whole' '
	lora-apply -m "$FX"/llama -o out < "$FX"/a.lora &&
	lora-apply -m "$FX"/llama -o out --force < "$FX"/b.lora &&
	$L check-fold "$FX"/llama out "$FX"/lb &&
	test -z "$(ls -A | grep "^\.out\.tmp")"
'

test_expect_success 'SIGKILL in the middle of writing leaves no OUT' '
	LORA_TEST_APPLY_DELAY_MS=300 lora-apply -m "$FX"/llama -o out < "$FX"/a.lora &
	pid=$! &&
	wait_for ".out.tmp-*/model-00001-of-00002.safetensors" &&
	kill -KILL $pid && { wait $pid; true; } &&
	test ! -e out
'

test_expect_success 'SIGTERM in the middle of writing leaves no OUT and no temporary directory' '
	LORA_TEST_APPLY_DELAY_MS=300 lora-apply -m "$FX"/llama -o out < "$FX"/a.lora &
	pid=$! &&
	wait_for ".out.tmp-*/config.json" && sleep 0.2 &&
	kill -TERM $pid && { wait $pid; test $? -gt 128; } &&
	test ! -e out && test -z "$(ls -A)"
'

test_expect_success 'a killed --force run keeps the old OUT intact' '
	lora-apply -m "$FX"/llama -o out < "$FX"/b.lora &&
	(cd out && md5sum * > ../before.md5) || exit 1
	LORA_TEST_APPLY_DELAY_MS=300 lora-apply -m "$FX"/llama -o out --force < "$FX"/a.lora &
	pid=$! &&
	wait_for ".out.tmp-*/model-00001-of-00002.safetensors" &&
	kill -KILL $pid && { wait $pid; true; } &&
	(cd out && md5sum -c --quiet ../before.md5)
'

test_expect_success 'OUT may not be MODEL or inside it' '
	test_exit 2 lora-apply -m "$FX"/llama -o "$FX"/llama --force < "$FX"/a.lora 2> err &&
	test_grep "refusing to write" err &&
	test_exit 2 lora-apply -m "$FX"/llama -o "$FX"/llama/sub < "$FX"/a.lora 2> err &&
	test ! -e "$FX"/llama/sub
'

test_expect_success 'MODEL was never written' '
	(cd "$FX"/llama && md5sum -c --quiet ../llama.md5) &&
	test -z "$(ls -A "$FX"/llama | grep -v -e safetensors -e json)"
'

test_done
