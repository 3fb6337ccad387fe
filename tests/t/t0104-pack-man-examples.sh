#!/bin/sh
# t0104 — the EXAMPLES of man/lora-pack.1 and man/lora-stream.5, run as
# written (every '$ ' line of their literal blocks, in order, in one
# directory whose hub/ holds the three GPT-2 adapters the pages name).
. "$(dirname "$0")/lib.sh"

# The '$ ' lines of the EXAMPLES section's literal displays, mdoc escapes undone.
examples() {
	awk '/^\.Sh /{ex = ($2 == "EXAMPLES")} ex && /^\.Bd -literal/{lit = 1; next}
	     /^\.Ed/{lit = 0} ex && lit && /^\$ /{sub(/^\$ /, ""); print}' "$1" |
	sed -e 's/\\e/\\/g' -e 's/\\-/-/g' -e 's/\\&//g'
}

if need_shared gpt2-lora-quotes gpt2-lora-tigrinya gpt2-medium-lora-shakespeare; then
	W=$TRASH_ROOT/work
	mkdir -p "$W/hub"
	for n in gpt2-lora-quotes gpt2-lora-tigrinya gpt2-medium-lora-shakespeare; do
		ln -s "$LORA_SHARED/$n" "$W/hub/$n"
	done
	for page in lora-pack.1 lora-stream.5; do
		examples "$TOP/man/$page" > "$TRASH_ROOT/$page.sh"
		test_expect_success "$page: EXAMPLES run (the page has $(wc -l < "$TRASH_ROOT/$page.sh") commands)" '
			test -s "$TRASH_ROOT/$page.sh" &&
			(cd "$W" && sh -ex "$TRASH_ROOT/$page.sh" > "$TRASH_ROOT/$page.out")
		'
	done
	test_expect_success 'the examples did what the page says' '
		cd "$W" &&
		lora-pack -t pool.lora | tail -n +2 | cut -d" " -f1 > names &&
		printf "%s\n" gpt2-lora-quotes gpt2-lora-tigrinya gpt2-medium-lora-shakespeare > want &&
		test_cmp want names &&
		lora-pack -t small.lora | tail -n +2 | tr -s " " | cut -d" " -f1,7 > names &&
		printf "%s bf16\n" gpt2-lora-quotes gpt2-lora-tigrinya > want && test_cmp want names &&
		ls out > dirs && printf "%s\n" gpt2-lora-quotes gpt2-lora-tigrinya shakespeare > want &&
		test_cmp want dirs &&
		test -f out/shakespeare/adapter_config.json
	'
else
	test_skip 'man page EXAMPLES' 'needs $LORA_SHARED/gpt2-lora-*'
fi
test_done
