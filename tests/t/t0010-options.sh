#!/bin/sh
# t0010 — for every bin/lora-*.c tool: the long options listed by --help, by
# man/<tool>.1 and by both completion files are the same set; every man page
# renders without a groff warning.
#
# Where the options are read from:
#   --help   option lines (lines starting with blanks and '-'): every --word
#   man      '.It' lines that carry 'Fl', and the SYNOPSIS: every argument
#            '-word' of an 'Fl' macro
#   bash     completions/<tool>.bash: every --word
#   zsh      completions/_<tool>: every --word
. "$(dirname "$0")/lib.sh"

help_opts() { "$1" --help 2>/dev/null | grep -E '^[[:space:]]*-' |
	grep -oE -- '--[a-zA-Z][a-zA-Z0-9-]*' | sort -u; }
# In mdoc every argument of Fl up to the next macro is a flag: "Fl m , -method"
# is "-m, --method".
man_opts() { awk '/^\.Sh /{syn = ($2 == "SYNOPSIS")} syn || /^\.It .*Fl / {
		infl = 0
		for (i = 1; i <= NF; i++) {
			if ($i == "Fl" || $i == ".Fl") infl = 1
			else if ($i ~ /^\.?[A-Z][a-z][a-z]?$/) infl = 0
			else if (infl && $i ~ /^-[a-zA-Z][a-zA-Z0-9-]*$/) print "-" $i
		}
	}' "$1" | sort -u; }
file_opts() { grep -oE -- '--[a-zA-Z][a-zA-Z0-9-]*' "$1" | sort -u; }

for src in "$TOP"/bin/lora-*.c; do
	[ -f "$src" ] || continue
	tool=$(basename "$src" .c)
	man=$TOP/man/$tool.1
	bash_c=$TOP/completions/$tool.bash
	zsh_c=$TOP/completions/_$tool
	if ! command -v "$tool" > /dev/null; then
		test_skip "$tool: options agree" "not built"
		continue
	fi
	if [ ! -f "$man" ] || [ ! -f "$bash_c" ] || [ ! -f "$zsh_c" ]; then
		test_skip "$tool: options agree" "man page or completion files missing"
		continue
	fi
	test_expect_success "$tool: --help, man page, bash and zsh completions list the same long options" '
		help_opts "$tool" > help &&
		man_opts "$man" > man &&
		file_opts "$bash_c" > bash &&
		file_opts "$zsh_c" > zsh &&
		grep -qx -- --help help && grep -qx -- --version help &&
		test_cmp help man && test_cmp help bash && test_cmp help zsh
	'
	test_expect_success "$tool: bash completion registers a function" '
		grep -q "^complete .*-F [_a-zA-Z0-9]* $tool\$" "$bash_c" &&
		bash -n "$bash_c" &&
		head -n 1 "$zsh_c" | grep -qx "#compdef $tool"
	'
done

for man in "$TOP"/man/*.[1-9]; do
	[ -f "$man" ] || continue
	test_expect_success "$(basename "$man"): groff -mdoc -ww prints nothing" '
		groff -mdoc -Tutf8 -ww -z "$man" > out 2>&1 && test ! -s out
	'
	test_expect_success "$(basename "$man"): has NAME, SYNOPSIS or DESCRIPTION, EXIT STATUS or DESCRIPTION, EXAMPLES, SEE ALSO" '
		for s in NAME DESCRIPTION EXAMPLES "SEE ALSO"; do
			grep -q "^\.Sh $s\$" "$man" || { echo "no section $s"; return 1; }
		done &&
		case "$man" in *.1) grep -q "^\.Sh SYNOPSIS$" "$man" && grep -q "^\.Sh EXIT STATUS$" "$man" ;; esac
	'
done
test_done
