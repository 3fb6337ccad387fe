#!/bin/sh
# run.sh — run every test layer and add up the results.
#   unit tests: $LORA_BUILD/tests/test_*   (C, tests/unit/)
#   pipelines:  tests/t/t*.sh              (shell, real binaries)
# Every program prints "ok - ", "not ok - ", "skip - " lines; a program that
# exits non-zero or prints no result line counts as one failure. The last line
# is "N passed, N failed, N skipped"; the exit status is 1 if anything failed.
# Usage: tests/run.sh [PATTERN]   (only programs whose name contains PATTERN)
TOP=$(cd "$(dirname "$0")/.." && pwd)
: "${LORA_BUILD:=build}"
case "$LORA_BUILD" in /*) ;; *) LORA_BUILD="$TOP/$LORA_BUILD" ;; esac
export LORA_BUILD
if [ -z "${LORA_SHARED:-}" ] && [ -d "$TOP/../shared/data" ]; then
	LORA_SHARED=$(cd "$TOP/../shared/data" && pwd)
fi
export LORA_SHARED="${LORA_SHARED:-}"
export LORA_TMP="${LORA_TMP:-$TOP/tests/tmp/$(basename "$LORA_BUILD")}"
export LORA_NO_REEXEC=1 OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2}
export LC_ALL=C
rm -rf "$LORA_TMP"
mkdir -p "$LORA_TMP"
[ -n "$LORA_SHARED" ] || echo "note: ../shared/data not found; tests that need it are skipped"

pass=0 fail=0 skip=0
log="$LORA_TMP/run.log"
: > "$log"
run_one() {
	name=$1
	shift
	out="$LORA_TMP/$name.log"
	start=$(date +%s)
	"$@" > "$out" 2>&1
	rc=$?
	p=$(grep -c '^ok - ' "$out")
	f=$(grep -c '^not ok - ' "$out")
	s=$(grep -c '^skip - ' "$out")
	if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1
		echo "not ok - $name exited with status $rc" >> "$out"
	fi
	if [ $((p + f + s)) -eq 0 ]; then
		f=1
		echo "not ok - $name printed no results" >> "$out"
	fi
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
	printf '%-40s %4d passed %3d failed %3d skipped  %3ds\n' "$name" "$p" "$f" "$s" $(( $(date +%s) - start ))
	if [ "$f" -gt 0 ]; then
		grep -A 40 '^not ok' "$out" | head -n 80 | sed 's/^/    /'
		tail -n 15 "$out" | sed 's/^/    | /'
	fi
}
pattern=${1:-}
for t in "$LORA_BUILD"/tests/test_*; do
	[ -x "$t" ] || continue
	n=$(basename "$t")
	case "$n" in *"$pattern"*) ;; *) continue ;; esac
	(cd "$LORA_TMP" && run_one "$n" "$t")
	# run_one ran in a subshell above only for cd; redo counting in this shell
done 2>/dev/null | tee -a "$log"
for t in "$TOP"/tests/t/t[0-9]*.sh; do
	[ -f "$t" ] || continue
	n=$(basename "$t" .sh)
	case "$n" in *"$pattern"*) ;; *) continue ;; esac
	run_one "$n" sh "$t"
done | tee -a "$log"
# totals from the per-program lines (the loops ran in pipelines/subshells)
pass=$(awk '$2 ~ /^[0-9]+$/ && $3 == "passed" {s += $2} END {print s+0}' "$log")
fail=$(awk '$2 ~ /^[0-9]+$/ && $3 == "passed" {s += $4} END {print s+0}' "$log")
skip=$(awk '$2 ~ /^[0-9]+$/ && $3 == "passed" {s += $6} END {print s+0}' "$log")
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
