/*
 * test_tok — tokenizers against the Hugging Face goldens, plus tiny
 * self-made tokenizer.json files (BPE and Unigram) and error cases.
 *
 * Goldens: $LORA_SHARED/golden/tokenizer/ids_fast.jsonl holds, per corpus
 * line, the ids that HF `tokenizers` (Rust, 0.23.2) gives for the
 * tokenizer.json files of gpt2-tokenizer, t5-tokenizer and stories260K-hf,
 * with and without special tokens, and decode(ids, skip_special=true). Every
 * line must match. ids.jsonl holds the slow (Python/sentencepiece) tokenizers'
 * ids; the documented fast/slow divergences make some lines differ there, so
 * that count is printed, not checked.
 */
#include "check.h"
#include "doc.h"
#include "fixtures.h"
#include "tok.h"

#include <stdint.h>

/* Lines of a golden file whose `decoded` equals decode_ex(ids, flags). */
static int count_slow_decoded(const struct lora_tok *t, const char *file, const char *key,
			      unsigned flags)
{
	struct fx_jsonl j;
	struct lora_doc *d;
	int good = 0;
	if (fx_jsonl_open(&j, file) < 0)
		return -1;
	while (fx_jsonl_next(&j, &d)) {
		const struct lora_doc *rec = lora_doc_get(d, key);
		const struct lora_doc *ids = rec ? lora_doc_get(rec, "ids") : NULL;
		const char *want = NULL;
		lora_doc_get_string(rec, "decoded", file, &want, NULL);
		if (ids && ids->type == LORA_DOC_ARRAY && want) {
			int32_t *v = malloc((ids->u.arr.n + 1) * sizeof *v);
			char *s = NULL;
			for (size_t i = 0; v && i < ids->u.arr.n; i++)
				v[i] = (int32_t)ids->u.arr.items[i].u.i;
			if (v &&
			    lora_tok_decode_ex(t, v, ids->u.arr.n, flags | LORA_TOK_SKIP_SPECIAL,
					       &s, NULL, NULL) == 0 &&
			    strcmp(s, want) == 0)
				good++;
			free(s);
			free(v);
		}
		lora_doc_free(d);
	}
	fx_jsonl_close(&j);
	return good;
}

static void golden_tests(void)
{
	static const struct {
		const char *dir, *key;
	} toks[] = {
		{"gpt2-tokenizer", "gpt2"},
		{"t5-tokenizer", "t5"},
		{"stories260K-hf", "stories260K"},
	};
	const char *fast = check_shared("golden/tokenizer/ids_fast.jsonl");
	const char *slow = check_shared("golden/tokenizer/ids.jsonl");
	char fastp[4096], slowp[4096];
	if (!fast || !slow) {
		check_skip("tokenizer goldens (LORA_SHARED unset or golden/tokenizer missing)");
		return;
	}
	snprintf(fastp, sizeof fastp, "%s", fast);
	snprintf(slowp, sizeof slowp, "%s", slow);
	for (size_t k = 0; k < 3; k++) {
		const char *dir = check_shared(toks[k].dir);
		struct lora_tok *t = NULL;
		struct lora_err err = {0};
		if (!dir) {
			check_skip("%s tokenizer (missing)", toks[k].dir);
			continue;
		}
		double t0 = fx_now();
		int rc = lora_tok_open(dir, &t, &err);
		double t1 = fx_now();
		if (!check(rc == 0, "open %s/tokenizer.json (%.3f s)", toks[k].dir, t1 - t0)) {
			printf("# %s\n", err.msg);
			continue;
		}
		int lines = 0, lines2 = 0;
		int good = fx_tok_golden(t, fastp, toks[k].key, true, true, &lines);
		check(good == lines && lines > 0,
		      "%s: %d/%d lines of ids_fast.jsonl match (ids, ids_no_special, decoded)",
		      toks[k].key, good, lines);
		int sgood = fx_tok_golden(t, slowp, toks[k].key, false, false, &lines2);
		/* Not checked: the public set's fast/slow divergences are GPT-2 0,
		 * T5 8, stories260K 2 lines (golden/README.md section 1). */
		printf("# %s: %d/%d lines of the slow-tokenizer ids.jsonl match (ids and "
		       "ids_no_special)\n",
		       toks[k].key, sgood, lines2);
		/* the slow tokenizers' decode conventions (lib/tok.h flags) */
		static const unsigned slow_flags[] = {0, LORA_TOK_STRIP | LORA_TOK_CLEANUP,
						      LORA_TOK_SLOW_BYTES};
		int dgood = count_slow_decoded(t, slowp, toks[k].key, slow_flags[k]);
		printf("# %s: %d/%d decoded texts of ids.jsonl match with the slow-decode flags\n",
		       toks[k].key, dgood, lines2);
		lora_tok_close(t);
	}
}

/* fx_dir/name holding text; its path (fx_path), or NULL. */
static const char *write_file(const char *name, const char *text)
{
	char *path = fx_path(name);
	return fx_spit(path, text, strlen(text)) == 0 ? path : NULL;
}

static bool enc_is(const struct lora_tok *t, const char *text, bool special, const int32_t *want,
		   size_t nwant)
{
	int32_t *ids = NULL;
	size_t n = 0;
	struct lora_err err = {0};
	if (lora_tok_encode(t, text, strlen(text), special, &ids, &n, &err)) {
		printf("# encode '%s': %s\n", text, err.msg);
		return false;
	}
	bool ok = n == nwant && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
	if (!ok)
		fx_print_ids(text, ids, n);
	free(ids);
	return ok;
}

static bool dec_is(const struct lora_tok *t, const int32_t *ids, size_t n, bool skip,
		   const char *want)
{
	char *s = NULL;
	struct lora_err err = {0};
	if (lora_tok_decode(t, ids, n, skip, &s, &err))
		return false;
	bool ok = strcmp(s, want) == 0;
	if (!ok)
		printf("# decoded '%s', want '%s'\n", s, want);
	free(s);
	return ok;
}

/* A byte-level BPE like GPT-2's, with a template adding <s>. */
static const char *TINY_BPE =
	"{\"version\":\"1.0\",\"added_tokens\":["
	"{\"id\":0,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
	"\"normalized\":false,\"special\":true}],"
	"\"normalizer\":null,"
	"\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
	"\"post_processor\":{\"type\":\"TemplateProcessing\","
	"\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
	"\"type_id\":0}}],"
	"\"pair\":[],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[0],\"tokens\":[\"<s>\"]}}"
	"},"
	"\"decoder\":{\"type\":\"ByteLevel\"},"
	"\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,"
	"\"byte_fallback\":false,"
	"\"vocab\":{\"<s>\":0,\"a\":1,\"b\":2,\"c\":3,\"\\u0120\":4,\"ab\":5,\"abc\":6,"
	"\"\\u0120a\":7,"
	"\"\\u0120ab\":8,\"!\":9},"
	"\"merges\":[\"\\u0120 a\",\"a b\",\"ab c\",[\"\\u0120a\",\"b\"]]}}";

/* A unigram with a Metaspace pre-tokenizer and </s> appended, like T5. */
static const char *TINY_UNIGRAM =
	"{\"version\":\"1.0\",\"added_tokens\":["
	"{\"id\":1,\"content\":\"</s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
	"\"normalized\":false,\"special\":true}],"
	"\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},"
	"{\"type\":\"Replace\",\"pattern\":{\"Regex\":\" {2,}\"},\"content\":\" \"}]},"
	"\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":"
	"\"always\"},"
	"\"post_processor\":{\"type\":\"TemplateProcessing\","
	"\"single\":[{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"</"
	"s>\",\"type_id\":0}}],"
	"\"pair\":[],\"special_tokens\":{\"</s>\":{\"id\":\"</s>\",\"ids\":[1],\"tokens\":[\"</"
	"s>\"]}}},"
	"\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":"
	"\"always\"},"
	"\"model\":{\"type\":\"Unigram\",\"unk_id\":2,\"byte_fallback\":false,\"vocab\":["
	"[\"<pad>\",0.0],[\"</"
	"s>\",0.0],[\"<unk>\",0.0],[\"\\u2581\",-2.0],[\"a\",-3.0],[\"b\",-3.0],"
	"[\"\\u2581ab\",-4.0],[\"\\u2581a\",-3.5],[\"ab\",-3.0],[\"fi\",-5.0]]}}";

/* SentencePiece-style BPE (Llama-2/stories260K): dummy prefix, byte fallback. */
static const char *TINY_SPBPE =
	"{\"version\":\"1.0\",\"added_tokens\":["
	"{\"id\":0,\"content\":\"<unk>\",\"normalized\":false,\"special\":true},"
	"{\"id\":1,\"content\":\"<s>\",\"normalized\":false,\"special\":true}],"
	"\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":"
	"\"\\u2581\"},"
	"{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
	"\"pre_tokenizer\":null,"
	"\"post_processor\":{\"type\":\"TemplateProcessing\","
	"\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
	"\"type_id\":0}}],"
	"\"pair\":[],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}"
	"},"
	"\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{"
	"\"String\":\"\\u2581\"},"
	"\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
	"{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
	"\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":"
	"true,"
	"\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2,\"<0xC3>\":3,\"<0xA9>\":4,\"<0x00>\":5,"
	"\"\\u2581\":6,\"a\":7,\"b\":8,\"\\u2581a\":9,\"ab\":10,\"\\u2581ab\":11},"
	"\"merges\":[\"\\u2581 a\",\"a b\",\"\\u2581a b\"]}}";

/* A BPE with continuing_subword_prefix "##" and end_of_word_suffix "</w>",
 * Lowercase + WhitespaceSplit, no decoder (tokens joined with spaces), and
 * added tokens with lstrip/rstrip (<m>), single_word (bob) and normalized
 * (DAB) flags; the ids in the file (99) are not the ones the library uses. */
static const char *TINY_PREFIX =
	"{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[{\"id\":0,"
	"\"content\":\"<unk>"
	"\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,"
	"\"special\":true},{\"i"
	"d\":99,\"content\":\"<m>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":true,"
	"\"normalized\":false,\""
	"special\":true},{\"id\":99,\"content\":\"bob\",\"single_word\":true,\"lstrip\":false,"
	"\"rstrip\":false,\""
	"normalized\":true,\"special\":false},{\"id\":99,\"content\":\"DAB\",\"single_word\":false,"
	"\"lstrip\":fa"
	"lse,\"rstrip\":false,\"normalized\":true,\"special\":false}],\"normalizer\":{\"type\":"
	"\"Lowercase\"},\""
	"pre_tokenizer\":{\"type\":\"WhitespaceSplit\"},\"post_processor\":null,\"decoder\":null,"
	"\"model\":{\"t"
	"ype\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\",\"continuing_subword_prefix\":\"##"
	"\",\"end_of_wor"
	"d_suffix\":\"</"
	"w>\",\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,\"vocab\":{\"<u"
	"nk>\":0,\"a\":1,\"##a\":2,\"a</w>\":3,\"##a</w>\":4,\"b\":5,\"##b\":6,\"b</w>\":7,\"##b</"
	"w>\":8,\"d\":9,\"##d\""
	":10,\"d</w>\":11,\"##d</w>\":12,\"e\":13,\"##e\":14,\"e</w>\":15,\"##e</"
	"w>\":16,\"h\":17,\"##h\":18,\"h</w>"
	"\":19,\"##h</w>\":20,\"l\":21,\"##l\":22,\"l</w>\":23,\"##l</"
	"w>\":24,\"o\":25,\"##o\":26,\"o</w>\":27,\"##o<"
	"/w>\":28,\"r\":29,\"##r\":30,\"r</w>\":31,\"##r</w>\":32,\"w\":33,\"##w\":34,\"w</"
	"w>\":35,\"##w</w>\":36,\"h"
	"e\":37,\"hel\":38,\"hell\":39,\"hello</w>\":40,\"wo\":41,\"wor\":42,\"##rl\":43,\"##rld</"
	"w>\":44,\"world</"
	"w>\":45},\"merges\":[\"h ##e\",\"he ##l\",\"hel ##l\",\"hell ##o</w>\",\"w ##o\",\"wo "
	"##r\",\"##r ##l\",\"##"
	"rl ##d</w>\",\"wo ##rld</w>\"]}}";

static void tiny_tests(void)
{
	const char *dir = fx_init("test_tok");
	struct lora_tok *t = NULL;
	struct lora_err err = {0};
	char path[8400];
	if (!check(dir != NULL, "temporary directory"))
		return;
	snprintf(path, sizeof path, "%s", write_file("bpe.json", TINY_BPE));
	if (check(lora_tok_open(path, &t, &err) == 0, "open tiny BPE tokenizer.json")) {
		/* "abc ab!": words "abc", " ab", "!"; " ab" = Ġ a b -> Ġa b -> Ġab (rank 3) */
		check(enc_is(t, "abc ab!", false, (int32_t[]){6, 8, 9}, 3), "BPE merges by rank");
		check(enc_is(t, "abc ab!", true, (int32_t[]){0, 6, 8, 9}, 4),
		      "BPE template adds <s>");
		check(enc_is(t, "a<s>b", false, (int32_t[]){1, 0, 2}, 3),
		      "special token matched inside text");
		check(enc_is(t, "", true, (int32_t[]){0}, 1), "empty text gives only <s>");
		check(dec_is(t, (int32_t[]){0, 6, 8, 9}, 4, true, "abc ab!"),
		      "BPE decode skips <s>");
		check(dec_is(t, (int32_t[]){0, 6}, 2, false, "<s>abc"), "BPE decode keeps <s>");
		check(lora_tok_vocab_size(t) == 10, "vocab size 10");
		check(lora_tok_id(t, "ab") == 5 && lora_tok_id(t, "zz") == -1, "lora_tok_id");
		check(lora_tok_piece(t, 7) &&
			      strcmp(lora_tok_piece(t, 7), "\xc4\xa0"
							   "a") == 0 &&
			      lora_tok_piece(t, 99) == NULL,
		      "lora_tok_piece");
		int32_t *ids = NULL;
		size_t n = 0;
		int rc = lora_tok_encode(t, "ab\xff", 3, false, &ids, &n, &err);
		check(rc == LORA_EFORMAT && strstr(err.msg, "UTF-8"), "invalid UTF-8 refused: %s",
		      err.msg);
		free(ids);
		rc = lora_tok_encode(t, "a\xe2\x82", 3, false, &ids, &n, &err);
		check(rc == LORA_EFORMAT, "truncated UTF-8 refused");
		free(ids);
		lora_tok_close(t);
	} else {
		printf("# %s\n", err.msg);
	}

	snprintf(path, sizeof path, "%s", write_file("uni.json", TINY_UNIGRAM));
	t = NULL;
	if (check(lora_tok_open(path, &t, &err) == 0, "open tiny Unigram tokenizer.json")) {
		/* "ab  ab": NFKC, spaces collapsed, "▁ab▁ab" -> ▁ab (-4) beats ▁a+b (-6.5) */
		check(enc_is(t, "ab  ab", true, (int32_t[]){6, 6, 1}, 3), "Unigram Viterbi + </s>");
		/* "ﬁ" NFKC -> "fi" (one piece); "x" unknown -> <unk>, "xx" fused */
		check(enc_is(t, "\xef\xac\x81", false, (int32_t[]){3, 9}, 2), "NFKC then pieces");
		check(enc_is(t, "axxb", false, (int32_t[]){7, 2, 5}, 3),
		      "unknown chars fused to one <unk>");
		check(enc_is(t, "ab</s>", false, (int32_t[]){6, 1}, 2),
		      "</s> split before the model");
		check(dec_is(t, (int32_t[]){6, 7, 1}, 3, true, "ab a"), "Metaspace decode");
		char *s = NULL;
		int rc = lora_tok_decode_ex(t, (int32_t[]){3, 6, 3, 1}, 4,
					    LORA_TOK_SKIP_SPECIAL | LORA_TOK_STRIP, &s, NULL, &err);
		check(rc == 0 && strcmp(s, "ab") == 0, "LORA_TOK_STRIP");
		free(s);
		lora_tok_close(t);
	} else {
		printf("# %s\n", err.msg);
	}

	snprintf(path, sizeof path, "%s", write_file("spbpe.json", TINY_SPBPE));
	t = NULL;
	if (check(lora_tok_open(path, &t, &err) == 0, "open tiny SentencePiece-style BPE")) {
		/* "▁ab▁é": ▁a (rank 0) then ▁a+b (rank 2); é has no piece -> bytes */
		check(enc_is(t, "ab \xc3\xa9", true, (int32_t[]){1, 11, 6, 3, 4}, 5),
		      "byte fallback for a char without a piece");
		check(enc_is(t, "xx", false, (int32_t[]){6, 0}, 2),
		      "unknown chars fused into one <unk>");
		check(dec_is(t, (int32_t[]){1, 11, 6, 3, 4}, 5, true, "ab \xc3\xa9"),
		      "decode: byte pieces back to UTF-8, dummy prefix stripped");
		char *s = NULL;
		size_t n = 0;
		int rc = lora_tok_decode_ex(t, (int32_t[]){7, 5, 8}, 3, LORA_TOK_SKIP_SPECIAL, &s,
					    &n, &err);
		check(rc == 0 && n == 3 && memcmp(s, "a\0b", 3) == 0, "decode_ex keeps a NUL byte");
		free(s);
		/* <0x00><0xC3> is not UTF-8: the fast decoder replaces both bytes,
		 * sentencepiece only the bad one */
		s = NULL;
		rc = lora_tok_decode_ex(t, (int32_t[]){5, 3}, 2, 0, &s, &n, &err);
		check(rc == 0 && n == 6 && !memcmp(s, "\xef\xbf\xbd\xef\xbf\xbd", 6),
		      "ByteFallback: an invalid run becomes U+FFFD per byte");
		free(s);
		s = NULL;
		rc = lora_tok_decode_ex(t, (int32_t[]){5, 3}, 2, LORA_TOK_SLOW_BYTES, &s, &n, &err);
		check(rc == 0 && n == 4 && !memcmp(s, "\0\xef\xbf\xbd", 4),
		      "LORA_TOK_SLOW_BYTES keeps the valid byte");
		free(s);
		lora_tok_close(t);
	} else {
		printf("# %s\n", err.msg);
	}

	snprintf(path, sizeof path, "%s", write_file("prefix.json", TINY_PREFIX));
	t = NULL;
	if (check(lora_tok_open(path, &t, &err) == 0,
		  "open tiny BPE with ## prefix and </w> suffix")) {
		/* Expected ids: HF tokenizers 0.23.2 (Node binding) on this exact file. */
		check(enc_is(t, "Hello World", true, (int32_t[]){40, 42, 22, 12}, 4),
		      "prefix/suffix merges after Lowercase + WhitespaceSplit");
		check(enc_is(t, "hello  <m>  world", true, (int32_t[]){40, 46, 42, 22, 12}, 5),
		      "lstrip/rstrip added token takes the spaces around it");
		check(enc_is(t, "bob bobby Bob,bob", true,
			     (int32_t[]){47, 5, 26, 6, 6, 0, 47, 0, 47}, 9),
		      "single_word added token only as a whole word");
		check(enc_is(t, "xdab DAB hello", true, (int32_t[]){0, 48, 48, 40}, 4),
		      "normalized added token matched after normalization");
		check(dec_is(t, (int32_t[]){40, 42, 22, 12, 46}, 5, true,
			     "hello</w> wor ##l ##d</w>"),
		      "no decoder: tokens joined by spaces, special dropped");
		check(lora_tok_id(t, "<m>") == 46 && lora_tok_id(t, "bob") == 47,
		      "added tokens numbered after the vocabulary");
		lora_tok_close(t);
	} else {
		printf("# %s\n", err.msg);
	}

	/* errors */
	snprintf(path, sizeof path, "%s/does-not-exist", dir);
	t = NULL;
	int rc = lora_tok_open(path, &t, &err);
	check(rc == LORA_ENOTFOUND && t == NULL && strstr(err.msg, "does-not-exist"),
	      "missing file: %s", err.msg);
	snprintf(path, sizeof path, "%s",
		 write_file("bad.json", "{\"model\": {\"type\": \"BPE\", "));
	rc = lora_tok_open(path, &t, &err);
	check(rc == LORA_EFORMAT && t == NULL, "malformed JSON: %s", err.msg);
	snprintf(path, sizeof path, "%s",
		 write_file("wp.json",
			    "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}"));
	rc = lora_tok_open(path, &t, &err);
	check(rc == LORA_EUNSUPPORTED && strstr(err.msg, "WordPiece"),
	      "unsupported model type named: %s", err.msg);
	snprintf(path, sizeof path, "%s",
		 write_file("m.json",
			    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": "
			    "[\"a b\"]}}"));
	rc = lora_tok_open(path, &t, &err);
	check(rc == LORA_EFORMAT && strstr(err.msg, "merge 0"), "merge with unknown token: %s",
	      err.msg);
}

int main(void)
{
	tiny_tests();
	golden_tests();
	return check_done();
}
