#!/bin/sh
# bench_apply.sh — lora-apply on a generated ~1 GB Llama-shaped f32 model (two
# shards) with a rank-16 adapter on q_proj/v_proj of every layer, against
# `cp -r` (and `cp -r; sync`) of the same directory, interleaved in the same
# run, each after a sync (best of 3 each).
# Prints both throughputs, their ratio (target >= 0.5x of cp) and lora-apply's
# peak RSS. Needs /usr/bin/python3 with numpy (fixtures) and /usr/bin/time.
# Usage: bench/bench_apply.sh [GB]   (LORA_BUILD: the build directory)
set -eu
TOP=$(cd "$(dirname "$0")/.." && pwd)
: "${LORA_BUILD:=build}"
case "$LORA_BUILD" in /*) ;; *) LORA_BUILD="$TOP/$LORA_BUILD" ;; esac
GB=${1:-1.05}
W=${LORA_BENCH_TMP:-${TMPDIR:-/tmp}/lorapipe-bench-apply.$$}
L="/usr/bin/python3 $TOP/tests/t/lorapy.py"
if ! /usr/bin/python3 -c 'import numpy' 2>/dev/null || [ ! -x /usr/bin/time ]; then
	echo "bench_apply: skipped (needs /usr/bin/python3 with numpy and /usr/bin/time)"
	exit 0
fi
rm -rf "$W"
mkdir -p "$W"
trap 'rm -rf "$W"' EXIT INT TERM
$L batch <<EOT
gen-big $W/base --gb $GB
gen-adapter $W/ad --model $W/base --modules q_proj,v_proj --r 16 --alpha 32
EOT
"$LORA_BUILD"/bin/lora-pack "$W"/ad > "$W"/ad.lora
bytes=$(du -sb "$W"/base | cut -f1)
now() { date +%s.%N; }
best_cp=999999 best_cps=999999 best_ap=999999 rss=0
mintime() { echo "$1 $2 $3" | awk '{d = $1 - $2; print (d < $3 ? d : $3)}'; }
# Interleaved, each after a sync so no run inherits another's dirty pages.
for rep in 1 2 3; do
	rm -rf "$W"/copy "$W"/merged
	sync
	t0=$(now); cp -r "$W"/base "$W"/copy; t1=$(now); sync; t2=$(now)
	best_cp=$(mintime "$t1" "$t0" "$best_cp")
	best_cps=$(mintime "$t2" "$t0" "$best_cps")
	rm -rf "$W"/copy
	sync
	t0=$(now)
	/usr/bin/time -f %M -o "$W"/rss "$LORA_BUILD"/bin/lora-apply -m "$W"/base -o "$W"/merged < "$W"/ad.lora
	t1=$(now)
	best_ap=$(mintime "$t1" "$t0" "$best_ap")
	r=$(cat "$W"/rss)
	[ "$r" -gt "$rss" ] && rss=$r
done
awk -v b="$bytes" -v c="$best_cp" -v cs="$best_cps" -v a="$best_ap" -v rss="$rss" 'BEGIN {
	printf "bench_apply: model %.2f GB (2 shards, f32), adapter r16 on q_proj/v_proj of every layer\n", b / 1e9
	printf "bench_apply: cp -r        %.2f s  %.0f MB/s\n", c, b / c / 1e6
	printf "bench_apply: cp -r; sync  %.2f s  %.0f MB/s\n", cs, b / cs / 1e6
	printf "bench_apply: lora-apply   %.2f s  %.0f MB/s  (fsyncs its output, like cp -r; sync)\n", a, b / a / 1e6
	printf "bench_apply: ratio %.2fx of cp -r throughput (target >= 0.5x), %.2fx of cp -r; sync\n", c / a, cs / a
	printf "bench_apply: lora-apply peak RSS %.0f MB (%.1f%% of the model)\n", rss / 1024, 100 * rss * 1024 / b
}'
