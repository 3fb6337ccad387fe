#!/bin/sh
# run.sh — the benchmarks (make bench). Builds nothing: runs every compiled
# $LORA_BUILD/bench/bench_* program and every bench/bench_*.sh script; each
# prints its own measurements and the ratio against its reference, measured
# in the same run. Exit status 1 if any of them failed.
TOP=$(cd "$(dirname "$0")/.." && pwd)
: "${LORA_BUILD:=build}"
case "$LORA_BUILD" in /*) ;; *) LORA_BUILD="$TOP/$LORA_BUILD" ;; esac
export LORA_BUILD
if [ -z "${LORA_SHARED:-}" ] && [ -d "$TOP/../shared/data" ]; then
	LORA_SHARED=$(cd "$TOP/../shared/data" && pwd)
fi
export LORA_SHARED="${LORA_SHARED:-}"
status=0
for b in "$LORA_BUILD"/bench/bench_* "$TOP"/bench/bench_*.sh; do
	[ -x "$b" ] || [ "${b%.sh}" != "$b" ] || continue
	[ -e "$b" ] || continue
	case $b in
	*.sh) sh "$b" || status=1 ;;
	*) "$b" || status=1 ;;
	esac
done
exit $status
