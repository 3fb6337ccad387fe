# lib.sh — the shell test harness for tests/t/tNNNN-*.sh (in the spirit of git's t/).
#
#   test_expect_success 'what' 'commands'   ok if the commands exit 0
#   test_must_fail CMD...                   succeeds if CMD exits 1..125 (not a crash/signal)
#   test_exit CODE CMD...                   succeeds if CMD exits exactly CODE
#   test_cmp EXPECTED ACTUAL                diff -u
#   test_grep PATTERN FILE                  grep -q with the file shown on failure
#   test_skip 'what' 'why'                  counted as skipped, never as passed
#   need_shared DIR...                      true if $LORA_SHARED/DIR... exist
#   test_done                               "N passed, N failed, N skipped"; exit 1 on failure
#
# Each test runs in its own fresh $TRASH directory as the current directory.
# $LORA_SHARED is ../shared/data (or unset if absent); the tools are on PATH.

set -u
TEST_NAME=$(basename "$0" .sh)
: "${LORA_TMP:=/tmp/lorapipe-tests}"
TRASH_ROOT="$LORA_TMP/$TEST_NAME"
rm -rf "$TRASH_ROOT"
mkdir -p "$TRASH_ROOT"
TOP=$(cd "$(dirname "$0")/../.." && pwd)
: "${LORA_BUILD:=build}"
case "$LORA_BUILD" in /*) ;; *) LORA_BUILD="$TOP/$LORA_BUILD" ;; esac
PATH="$LORA_BUILD/bin:$PATH"
export PATH
# The Python with numpy (Debian's, when PATH has another first) and the
# tests' Python helper (safetensors writer, score checks) run with it.
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
LORAPY="$PY $TOP/tests/t/lorapy.py"
test_count=0 test_passed=0 test_failed=0 test_skipped=0

test_expect_success() {
	test_count=$((test_count + 1))
	TRASH="$TRASH_ROOT/$test_count"
	mkdir -p "$TRASH"
	if (cd "$TRASH" && eval "$2") >"$TRASH_ROOT/$test_count.out" 2>&1; then
		test_passed=$((test_passed + 1))
		echo "ok - $TEST_NAME $test_count: $1"
	else
		test_failed=$((test_failed + 1))
		echo "not ok - $TEST_NAME $test_count: $1"
		sed 's/^/#   /' "$TRASH_ROOT/$test_count.out" | tail -n 40
	fi
}

test_skip() {
	test_count=$((test_count + 1))
	test_skipped=$((test_skipped + 1))
	echo "skip - $TEST_NAME $test_count: $1 ($2)"
}

test_must_fail() {
	"$@"
	rc=$?
	if [ $rc -eq 0 ]; then
		echo "test_must_fail: '$*' succeeded" >&2
		return 1
	elif [ $rc -gt 125 ]; then
		echo "test_must_fail: '$*' died with status $rc" >&2
		return 1
	fi
	return 0
}

test_exit() {
	want=$1
	shift
	"$@"
	rc=$?
	if [ $rc -ne "$want" ]; then
		echo "test_exit: '$*' exited $rc, wanted $want" >&2
		return 1
	fi
	return 0
}

test_cmp() {
	diff -u "$1" "$2"
}

test_grep() {
	if ! grep -q -- "$1" "$2"; then
		echo "test_grep: '$1' not found in $2:" >&2
		cat "$2" >&2
		return 1
	fi
}

# A golden model's directory by its name in golden/ (stories260K is the real
# model beside it).
golden_model_dir() {
	case $1 in
	stories260K) echo "$LORA_SHARED/stories260K-hf" ;;
	*) echo "$LORA_SHARED/golden/models/$1" ;;
	esac
}

need_shared() {
	[ -n "${LORA_SHARED:-}" ] || return 1
	for d in "$@"; do
		[ -e "$LORA_SHARED/$d" ] || return 1
	done
	return 0
}

test_done() {
	echo "$test_passed passed, $test_failed failed, $test_skipped skipped"
	[ "$test_failed" -eq 0 ]
}
