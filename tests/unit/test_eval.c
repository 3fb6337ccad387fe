/* test_eval — lib/eval's answer normalization against Python: LoraHub's exact
 * match (lorahub/algorithm.py, accuracy_score) compares
 * s.strip().lower().replace(".", "") of prediction and reference.
 *
 * The expected strings were computed once with /usr/bin/python3 (3.11.7,
 * Unicode 14.0) as s.strip().lower().replace(".", "").encode() and are
 * written as octal-escaped UTF-8. They cover Unicode white space (NBSP,
 * U+2003, U+3000, U+0085, U+2028/9, \x1c-\x1f; not U+200B, U+FEFF, U+180E),
 * U+0130's two-code-point lower case, the final-sigma rule (with ª cased and
 * ' . case-ignorable), titlecase, Roman numerals, circled letters, ẞ -> ß (no
 * case folding), full-width letters, and the '.' removal that leaves the white
 * space it uncovers.
 */
#include "check.h"
#include "eval.h"

static const struct {
	const char *in, *want;
} py[] = {
	{"  Yes. ", "yes"},
	{"Yes .", "yes "},
	{"\304\260stanbul", "i\314\207stanbul"},
	{"\316\237\316\224\316\237\316\243", "\316\277\316\264\316\277\317\202"},
	{"\316\237\316\224\316\237\316\243.", "\316\277\316\264\316\277\317\202"},
	{"\316\243\316\221", "\317\203\316\261"},
	{"\341\275\210\316\224\316\245\316\243\316\243\316\225\316\216\316\243", "\341\275\200\316\264\317\205\317\203\317\203\316\265\317\215\317\202"},
	{"\302\252\316\243", "\302\252\317\202"},
	{"'\316\243'", "'\317\203'"},
	{"A\316\243'B", "a\317\203'b"},
	{"\302\240\342\200\203True\343\200\200\012", "true"},
	{"\342\200\213no\342\200\213", "\342\200\213no\342\200\213"},
	{"\034(A)\037", "(a)"},
	{"\302\205x\302\205", "x"},
	{"\357\273\277Yes", "\357\273\277yes"},
	{"\303\200\303\211\303\216", "\303\240\303\251\303\256"},
	{"\307\205", "\307\206"},
	{"\342\205\253", "\342\205\273"},
	{"\341\272\236", "\303\237"},
	{"Stra\303\237e", "stra\303\237e"},
	{"A.B.C.", "abc"},
	{"\357\274\241", "\357\275\201"},
	{"\342\222\266\342\223\221\342\222\270", "\342\223\220\342\223\221\342\223\222"},
	{"\320\224\320\236\320\221\320\240\320\236", "\320\264\320\276\320\261\321\200\320\276"},
	{"\307\204.", "\307\206"},
	{"1. A\011", "1 a"},
	{"", ""},
	{" . ", ""},
	{"\342\200\250x\342\200\251", "x"},
	{"\341\240\216X", "\341\240\216x"},
	{"\316\206\316\243\314\201 \316\214\316\243", "\316\254\317\202\314\201 \317\214\317\202"},
};

int main(void)
{
	for (size_t i = 0; i < sizeof py / sizeof py[0]; i++) {
		char *got = lora_eval_normalize(py[i].in);
		check(got && strcmp(got, py[i].want) == 0, "normalize case %zu as Python (got '%s')", i,
		      got ? got : "(null)");
		free(got);
	}
	/* bytes that are not UTF-8 (Python's str cannot hold them) pass through */
	char *got = lora_eval_normalize("\377A.\300B ");
	check(got && strcmp(got, "\377a\300b") == 0, "invalid UTF-8 bytes pass through");
	free(got);

	check(lora_eval_match("  Yes.", "yes"), "match: ' Yes.' = 'yes'");
	check(!lora_eval_match("Yes .", "yes"), "match: 'Yes .' != 'yes' (as in LoraHub)");
	check(lora_eval_match("\304\260", "i\314\207"), "match: U+0130 = 'i' U+0307");
	check(!lora_eval_match("\304\260", "i"), "match: U+0130 != 'i'");
	check(lora_eval_match("\316\237\316\224\316\237\316\243", "\316\277\316\264\316\277\317\202"),
	      "match: capital final sigma = small final sigma");
	check(!lora_eval_match("\316\237\316\224\316\237\316\243", "\316\277\316\264\316\277\317\203"),
	      "match: capital final sigma != small sigma");
	check(lora_eval_match("\342\200\203(A)\302\240", "(a)"), "match: Unicode white space stripped");
	return check_done();
}
