#!/bin/sh
# t0403 — the EXAMPLES of man/lora-eval.1 run as written, in a directory where
# stories260K-hf, examples.jsonl, five.jsonl, test.jsonl and hub/ are the
# golden stories260K model, its examples and its pool adapters.
. "$(dirname "$0")/lib.sh"

test_expect_success 'the man page renders without warnings' '
	groff -mdoc -Tutf8 -ww -z "$TOP/man/lora-eval.1" 2>err && ! test -s err
'

if ! need_shared golden stories260K-hf; then
	test_skip 'man page examples' 'LORA_SHARED not set'
	test_done
	exit
fi

# the literal blocks of the EXAMPLES section, one command (with continuations) each
sed -n '/^\.Sh EXAMPLES/,/^\.Sh SEE ALSO/p' "$TOP/man/lora-eval.1" |
	awk '/^\.Bd -literal/ {on = 1; cmd = ""; next}
	     /^\.Ed/ {on = 0; print cmd "\n"; next}
	     on {cmd = cmd (cmd == "" ? "" : "\n") $0}' >"$TRASH_ROOT/examples.txt"
n=$(grep -c "^lora-" "$TRASH_ROOT/examples.txt")

test_expect_success 'the page has three examples' 'test '"$n"' -eq 3'

k=0
while [ $k -lt "$n" ]; do
	k=$((k + 1))
	test_expect_success "EXAMPLES command $k runs" '
		ln -s "$LORA_SHARED/stories260K-hf" stories260K-hf &&
		cp "$LORA_SHARED/golden/examples/stories260K.jsonl" examples.jsonl &&
		head -n 3 examples.jsonl >five.jsonl && tail -n 3 examples.jsonl >test.jsonl &&
		mkdir hub && for a in "$LORA_SHARED"/golden/adapters/stories260K/pool_?; do
			ln -s "$a" hub/; done &&
		awk -v k='"$k"' "BEGIN {RS = \"\"} NR == k" "$TRASH_ROOT/examples.txt" >cmd.sh &&
		cat cmd.sh && sh -e cmd.sh >out 2>err && cat out err &&
		{ test_grep score out || test -s scores.lora; }
	'
done

test_done
