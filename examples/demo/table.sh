#!/bin/sh
# table.sh OUT TASK... — the demo's results table (Markdown) from the score
# streams under OUT/<task>/: test loss (mean token cross-entropy, lower is
# better) and exact-match accuracy of greedy decoding, per held-out task and
# averaged over them. Needs lora-pack on PATH (it lists score records).
set -eu
out=$1
shift
TASKS="$*"
# "loss acc" of every score record in a stream, one line each
scores() { lora-pack -t "$1" | awk 'NR > 1 {
	l = ""; a = "0"
	for (i = 1; i <= NF; i++) {
		if ($i ~ /^loss=/) l = substr($i, 6)
		if ($i ~ /^accuracy=/) a = substr($i, 10)
	}
	if (l != "") print l, a }'; }
# one row: a label and the function giving "loss acc" for a task directory
row() {
	line="| $1 |" sl=0 sa=0 n=0
	for t in $TASKS; do
		r=$($2 "$out/$t")
		l=${r% *} a=${r#* }
		line="$line $(awk "BEGIN{printf \"%.3f / %.0f%%\", $l, 100 * $a}") |"
		sl=$(awk "BEGIN{print $sl + $l}") sa=$(awk "BEGIN{print $sa + $a}") n=$((n + 1))
	done
	echo "$line $(awk "BEGIN{printf \"**%.3f / %.0f%%**\", $sl / $n, 100 * $sa / $n}") |"
}
one() { scores "$1" | head -n 1; }
base() { one "$1/base.score"; }
icl() { one "$1/icl.score"; }
single() { scores "$1/single.score" | sort -g | head -n 1; }
mean() { one "$1/mean.score"; }
hubs() { for f in "$1"/hub-*.score; do one "$f"; done; }
hub_mean() { hubs "$1" | awk '{l += $1; a += $2; n++} END {print l / n, a / n}'; }
hub_best() { hubs "$1" | sort -g | head -n 1; }
lora5() { one "$1/lora5.score"; }

printf '| method |'
for t in "$@"; do printf ' %s |' "$t"; done
printf ' average |\n|---|'
for t in "$@"; do printf -- '---|'; done
printf -- '---|\n'
row "base model, zero-shot" base
row "in-context, 5 examples in the prompt" icl
row "best single module (chosen on the test set)" single
row "uniform average of the pool (AdapterSoup)" mean
row "LoraHub, mean over 5 seeds" hub_mean
row "LoraHub, best of 5 seeds" hub_best
row "LoRA trained on the 5 examples" lora5
