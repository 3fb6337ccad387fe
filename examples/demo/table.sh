#!/bin/sh
# table.sh OUT TASK... — the demo's results table (Markdown) from the score
# streams (X.score) and prediction files (X.pred.jsonl) under OUT/<task>/.
#
# Cells: test loss (lora-eval's mean token cross-entropy, lower is better) /
# accuracy. stories260K never learned an end-of-text token (its EOS embedding
# is the vector shared by ~200 byte tokens it never saw), so no model built on
# it can stop, and lora-eval's exact match is 0 for every method; accuracy here
# is the share of test examples whose greedy generation BEGINS with the
# expected sentence (case-insensitive). Needs lora-pack on PATH.
set -eu
out=$1
shift
TASKS="$*"

# "name loss" for every score record of a stream
scores() { lora-pack -t "$1" | awk 'NR > 1 {
	for (i = 2; i <= NF; i++) if ($i ~ /^loss=/) print $1, substr($i, 6) }'; }
# prefix accuracy of the predictions of candidate NAME ("-": every line)
acc() { awk -v want="$2" '
	{
		name = "-"
		if (match($0, /^\{"name": "[^"]*"/)) name = substr($0, 11, RLENGTH - 11)
		if (want != "-" && name != want) next
		if (!match($0, /"output": "[^"]*"/)) next
		o = tolower(substr($0, RSTART + 11, RLENGTH - 12))
		p = index($0, "\"prediction\": \"")
		pred = tolower(substr($0, p + 15, length(o)))
		n++
		if (p > 0 && pred == o) k++
	}
	END { printf "%.4f\n", n ? k / n : 0 }' "$1"; }
# "loss acc" of the only (or the lowest-loss) candidate of OUT/<task>/<stem>
best_of() {
	set -- $(scores "$1.score" | sort -k2,2g | head -n 1) "$1"
	echo "$2 $(acc "$3.pred.jsonl" "$1")"
}
# the same over several stems: mean of loss and accuracy, or the best by loss
mean_of() { for f in "$@"; do best_of "${f%.score}"; done |
	awk '{l += $1; a += $2; n++} END {printf "%.6f %.4f\n", l / n, a / n}'; }
min_of() { for f in "$@"; do best_of "${f%.score}"; done | sort -g | head -n 1; }

base() { best_of "$1/base"; }
icl() { best_of "$1/icl"; }
single() { best_of "$1/single"; }
soup() { best_of "$1/mean"; }
cobyla() { best_of "$1/hub-cobyla"; }
cmaes_mean() { mean_of "$1"/hub-cmaes-*.score; }
cmaes_best() { min_of "$1"/hub-cmaes-*.score; }
lora5() { best_of "$1/lora5"; }

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

printf '| test loss / accuracy |'
for t in $TASKS; do printf ' %s |' "$t"; done
printf ' average |\n|---|'
for t in $TASKS; do printf -- '---|'; done
printf -- '---|\n'
row "base model, zero-shot" base
row "in-context: the 5 examples in the prompt" icl
row "best single module (chosen on the test set)" single
row "uniform average of the pool (AdapterSoup)" soup
row "LoraHub, COBYLA (lora-cmaes default)" cobyla
row "LoraHub, CMA-ES, mean over seeds" cmaes_mean
row "LoraHub, CMA-ES, best over seeds" cmaes_best
row "LoRA trained on the 5 examples" lora5
