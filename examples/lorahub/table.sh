#!/bin/sh
# table.sh OUT "SEEDS" TASK... — results.md of the LoraHub protocol: per task and
# on average, exact-match accuracy (lora-eval --generate) and test loss of the
# zero-shot and in-context baselines (mean over seeds) and of LoraHub (mean and
# best over seeds; best = the seed with the highest accuracy, then lowest loss).
# Reads OUT/<task>/s<seed>/{zero,icl,hub}.score with lora-pack -t.
set -eu
out=$1 seeds=$2
shift 2
# "acc loss" of the single score record of a stream
one() { lora-pack -t "$1" | awk 'NR == 2 {
	l = 0; a = 0
	for (i = 2; i <= NF; i++) {
		if ($i ~ /^loss=/) l = substr($i, 6)
		if ($i ~ /^accuracy=/) a = substr($i, 10)
	}
	print a, l }'; }
# over the seeds of a task: mean "acc loss", or the best
over() {
	for s in $seeds; do one "$out/$1/s$s/$2.score"; done |
	awk -v mode="$3" '{
		n++; a += $1; l += $2
		if (n == 1 || $1 > ba || ($1 == ba && $2 < bl)) { ba = $1; bl = $2 }
	}
	END { if (mode == "best") print ba, bl; else print a / n, l / n }'; }
cell() { awk -v a="$1" -v l="$2" 'BEGIN { printf "%.1f%% (%.3f)", 100 * a, l }'; }

echo "| task | zero-shot | in-context | LoraHub mean | LoraHub best |"
echo "|---|---|---|---|---|"
sums=$(mktemp)
trap 'rm -f "$sums"' EXIT
for t in "$@"; do
	set -- $(over "$t" zero mean) $(over "$t" icl mean) $(over "$t" hub mean) $(over "$t" hub best)
	echo "$*" >> "$sums"
	echo "| $t | $(cell $1 $2) | $(cell $3 $4) | $(cell $5 $6) | $(cell $7 $8) |"
done
awk '{ for (i = 1; i <= 8; i++) s[i] += $i; n++ }
END { printf "| **average** |"
	for (i = 1; i <= 8; i += 2) printf " **%.1f%% (%.3f)** |", 100 * s[i] / n, s[i + 1] / n
	print "" }' "$sums"
echo
echo "Accuracy: exact match of the greedy generation (lora-eval --generate); in"
echo "parentheses the test loss (mean token cross-entropy). Seeds: $seeds."
