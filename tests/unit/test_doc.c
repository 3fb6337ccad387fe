/* test_doc — JSON/YAML parsing into lora_doc trees, positions, error
 * messages, limits, builders and the JSON writer. */
/* check_tmpdir's snprintf into a fixed buffer trips -Wformat-truncation when
 * inlined here; the paths are short. */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include "check.h"
#include "doc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static struct lora_err err;

static struct lora_doc *parse(const char *s)
{
	struct lora_doc *d = NULL;
	memset(&err, 0, sizeof err);
	if (lora_doc_parse_buffer(s, strlen(s), "t", 1, &d, &err) < 0)
		return NULL;
	return d;
}

/* Parse s expecting failure; check the message equals want. */
static void parse_fails(const char *s, const char *want, const char *what)
{
	struct lora_doc *d = parse(s);
	check(!d && strcmp(err.msg, want) == 0, "%s: message '%s' (want '%s')", what, err.msg, want);
	lora_doc_free(d);
}

/* JSON of d (malloc'd string). */
static char *to_json(const struct lora_doc *d, int indent)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	lora_doc_write_json(f, d, indent);
	fclose(f);
	return buf;
}

static void json_is(const struct lora_doc *d, int indent, const char *want, const char *what)
{
	char *got = to_json(d, indent);
	int ok = got && strcmp(got, want) == 0;
	check(ok, "%s", what);
	if (!ok)
		printf("# got: %s\n", got ? got : "(null)");
	free(got);
}

static void test_json_types(void)
{
	struct lora_doc *d = parse("{\"a\": 1, \"b\": \"1\", \"c\": 1.5, \"d\": true, \"e\": null,\n"
				   " \"f\": [1, \"x\", false], \"g\": {\"h\": -2}, \"i\": 1e3,\n"
				   " \"big\": 123456789012345678901234, \"neg\": -0.25, \"s\": \"a\\/b\"}");
	if (!check(d != NULL, "json parses (%s)", err.msg))
		return;
	const struct lora_doc *v;
	check(d->type == LORA_DOC_MAP && d->u.map.n == 11, "top is a map of 11");
	check((v = lora_doc_get(d, "a")) && v->type == LORA_DOC_INT && v->u.i == 1, "1 is int");
	check((v = lora_doc_get(d, "b")) && v->type == LORA_DOC_STRING && !strcmp(v->u.str.s, "1"),
	      "\"1\" is a string");
	check((v = lora_doc_get(d, "c")) && v->type == LORA_DOC_FLOAT && v->u.f == 1.5, "1.5 is float");
	check((v = lora_doc_get(d, "d")) && v->type == LORA_DOC_BOOL && v->u.b, "true is bool");
	check((v = lora_doc_get(d, "e")) && v->type == LORA_DOC_NULL, "null is null");
	v = lora_doc_get(d, "f");
	check(v && v->type == LORA_DOC_ARRAY && v->u.arr.n == 3 &&
		      v->u.arr.items[0].type == LORA_DOC_INT &&
		      v->u.arr.items[1].type == LORA_DOC_STRING &&
		      v->u.arr.items[2].type == LORA_DOC_BOOL && !v->u.arr.items[2].u.b,
	      "array of int, string, bool");
	v = lora_doc_get(lora_doc_get(d, "g"), "h");
	check(v && v->type == LORA_DOC_INT && v->u.i == -2, "nested map, negative int");
	check((v = lora_doc_get(d, "i")) && v->type == LORA_DOC_FLOAT && v->u.f == 1000.0,
	      "1e3 is float");
	check((v = lora_doc_get(d, "big")) && v->type == LORA_DOC_FLOAT && v->u.f > 1.2e23,
	      "int past int64 becomes float");
	check((v = lora_doc_get(d, "neg")) && v->type == LORA_DOC_FLOAT && v->u.f == -0.25,
	      "-0.25");
	check((v = lora_doc_get(d, "s")) && v->type == LORA_DOC_STRING && !strcmp(v->u.str.s, "a/b"),
	      "\\/ escape");
	/* positions: "f" value starts at line 2 col 7 */
	v = lora_doc_get(d, "f");
	check(v && v->line == 2 && v->col == 7, "position of f is 2:7 (got %d:%d)", v ? v->line : 0,
	      v ? v->col : 0);
	v = lora_doc_get(d, "i");
	check(v && v->line == 2 && v->col == 45, "position of i is 2:45 (got %d:%d)",
	      v ? v->line : 0, v ? v->col : 0);
	check(d->line == 1 && d->col == 1, "root at 1:1");
	check(lora_doc_get(d, "zz") == NULL && lora_doc_get(v, "a") == NULL,
	      "get on missing key / non-map is NULL");
	lora_doc_free(d);
}

static void test_yaml_types(void)
{
	struct lora_doc *d = parse("# a comment\n"
				   "a: 1\n"
				   "b: '1'\n"
				   "c: \"true\"\n"
				   "d: true\n"
				   "e: ~\n"
				   "f:\n"
				   "g: .inf\n"
				   "h: -.inf\n"
				   "i: .nan\n"
				   "j: hello world\n"
				   "k: 0x10\n"
				   "l: 1.0\n"
				   "m: 007\n"
				   "n: [1, two]\n"
				   "o:\n"
				   "  - x: 1\n"
				   "    y: [a, b]\n"
				   "p: False\n"
				   "q: Null\n"
				   "r: 1.5e-3\n"
				   "s: |\n"
				   "  line one\n"
				   "  line two\n"
				   "t: +5\n"
				   "u: 1_000\n");
	if (!check(d != NULL, "yaml parses (%s)", err.msg))
		return;
	const struct lora_doc *v;
	check((v = lora_doc_get(d, "a")) && v->type == LORA_DOC_INT && v->u.i == 1, "a: 1 is int");
	check((v = lora_doc_get(d, "b")) && v->type == LORA_DOC_STRING, "'1' is a string");
	check((v = lora_doc_get(d, "c")) && v->type == LORA_DOC_STRING, "\"true\" is a string");
	check((v = lora_doc_get(d, "d")) && v->type == LORA_DOC_BOOL && v->u.b, "true is bool");
	check((v = lora_doc_get(d, "e")) && v->type == LORA_DOC_NULL, "~ is null");
	check((v = lora_doc_get(d, "f")) && v->type == LORA_DOC_NULL, "empty is null");
	check((v = lora_doc_get(d, "g")) && v->type == LORA_DOC_FLOAT && isinf(v->u.f) && v->u.f > 0,
	      ".inf");
	check((v = lora_doc_get(d, "h")) && v->type == LORA_DOC_FLOAT && isinf(v->u.f) && v->u.f < 0,
	      "-.inf");
	check((v = lora_doc_get(d, "i")) && v->type == LORA_DOC_FLOAT && isnan(v->u.f), ".nan");
	check((v = lora_doc_get(d, "j")) && v->type == LORA_DOC_STRING &&
		      !strcmp(v->u.str.s, "hello world"),
	      "plain words are a string");
	check((v = lora_doc_get(d, "k")) && v->type == LORA_DOC_STRING, "0x10 stays a string");
	check((v = lora_doc_get(d, "l")) && v->type == LORA_DOC_FLOAT && v->u.f == 1.0, "1.0 float");
	check((v = lora_doc_get(d, "m")) && v->type == LORA_DOC_INT && v->u.i == 7, "007 is int 7");
	v = lora_doc_get(d, "n");
	check(v && v->type == LORA_DOC_ARRAY && v->u.arr.n == 2 &&
		      v->u.arr.items[1].type == LORA_DOC_STRING,
	      "flow sequence");
	v = lora_doc_get(d, "o");
	check(v && v->type == LORA_DOC_ARRAY && v->u.arr.n == 1 &&
		      lora_doc_get(&v->u.arr.items[0], "y") &&
		      lora_doc_get(&v->u.arr.items[0], "y")->u.arr.n == 2,
	      "block sequence of maps");
	check(v && v->u.arr.items[0].line == 17 && v->u.arr.items[0].col == 5,
	      "block item position 17:5 (got %d:%d)", v ? v->u.arr.items[0].line : 0,
	      v ? v->u.arr.items[0].col : 0);
	check((v = lora_doc_get(d, "p")) && v->type == LORA_DOC_BOOL && !v->u.b, "False is bool");
	check((v = lora_doc_get(d, "q")) && v->type == LORA_DOC_NULL, "Null is null");
	check((v = lora_doc_get(d, "r")) && v->type == LORA_DOC_FLOAT && v->u.f == 1.5e-3, "1.5e-3");
	check((v = lora_doc_get(d, "s")) && v->type == LORA_DOC_STRING &&
		      !strcmp(v->u.str.s, "line one\nline two\n"),
	      "literal block scalar");
	check((v = lora_doc_get(d, "t")) && v->type == LORA_DOC_INT && v->u.i == 5, "+5 is int");
	check((v = lora_doc_get(d, "u")) && v->type == LORA_DOC_STRING, "1_000 stays a string");
	v = lora_doc_get(d, "j");
	check(v && v->line == 11 && v->col == 4, "j at 11:4 (got %d:%d)", v ? v->line : 0,
	      v ? v->col : 0);
	lora_doc_free(d);

	/* a top-level scalar and a quoted key that looks like a number */
	d = parse("\"1\": x\n2: y\n");
	check(d && d->u.map.n == 2 && !strcmp(d->u.map.keys[0], "1") && !strcmp(d->u.map.keys[1], "2"),
	      "keys are strings");
	lora_doc_free(d);
	d = parse("42");
	check(d && d->type == LORA_DOC_INT && d->u.i == 42, "top-level scalar");
	lora_doc_free(d);
}

static void test_errors(void)
{
	parse_fails("{\"a\": 1,\n \"b\": [}", "t:2:8: did not find expected node content while parsing a flow node",
		    "malformed JSON");
	parse_fails("{\"a\": 1, \"a\": 2}", "t:1:10: duplicate key 'a'", "duplicate key");
	parse_fails("a: 1\nb: 2\na: 3\n", "t:3:1: duplicate key 'a'", "duplicate key in YAML");
	parse_fails("{\"a\": }x", "t:1:8: did not find expected <document start>",
		    "trailing garbage");
	parse_fails("x: &a 1\ny: *a\n", "t:1:4: anchors are not supported", "anchor");
	parse_fails("x: *a\n", "t:1:4: aliases are not supported",
		    "alias");
	parse_fails("- a\n---\n- b\n", "t:2:1: more than one document", "two documents");
	parse_fails("", "t:1:1: empty document", "empty input");
	parse_fails("? [a]\n: 1\n", "t:1:3: map keys must be scalars", "complex key");
	parse_fails("{\"a\": [1, 2}", "t:1:12: did not find expected ',' or ']' while parsing a flow sequence",
		    "unclosed array");
	parse_fails("{\"a\": \"b\xff\"}", "t:1:9: invalid leading UTF-8 octet", "invalid UTF-8");
	parse_fails("{\"a\": \"\\q\"}", "t:1:8: found unknown escape character while parsing a quoted scalar",
		    "bad escape");

	/* first_line shifts every position (JSONL) */
	struct lora_doc *d = NULL;
	int rc = lora_doc_parse_buffer("{\"a\" 1}", 7, "f.jsonl", 7, &d, &err);
	check(rc == LORA_EFORMAT && !strncmp(err.msg, "f.jsonl:7:6: ", 13),
	      "first_line 7 gives f.jsonl:7:... (%s)", err.msg);
	d = NULL;
	rc = lora_doc_parse_buffer("[1,\n 2]", 7, "f.jsonl", 7, &d, &err);
	check(rc == 0 && d->u.arr.items[1].line == 8, "node line offset by first_line");
	lora_doc_free(d);

	/* depth: 256 levels fine, 257 refused */
	char buf[700];
	memset(buf, '[', 256);
	memset(buf + 256, ']', 256);
	buf[512] = '\0';
	d = parse(buf);
	check(d != NULL, "256 levels of nesting parse");
	lora_doc_free(d);
	memset(buf, '[', 257);
	memset(buf + 257, ']', 257);
	buf[514] = '\0';
	parse_fails(buf, "t:1:257: nesting deeper than 256 levels", "257 levels refused");

	/* files */
	rc = lora_doc_parse_file("/nonexistent/x.json", &d, &err);
	check(rc == LORA_ENOTFOUND &&
		      !strcmp(err.msg, "cannot open '/nonexistent/x.json': No such file or directory"),
	      "missing file: %s", err.msg);
	const char *tmp = check_tmpdir("test_doc");
	char path[4200];
	snprintf(path, sizeof path, "%s/bad.json", tmp);
	FILE *f = fopen(path, "w");
	fputs("{\n  \"r\": 8,\n  \"lora_alpha\": 16,\n  \"target_modules\": [\"q\" \"v\"]\n}\n", f);
	fclose(f);
	rc = lora_doc_parse_file(path, &d, &err);
	char want[4400];
	snprintf(want, sizeof want, "%s:4:26: did not find expected ',' or ']' while parsing a flow sequence", path);
	check(rc == LORA_EFORMAT && !strcmp(err.msg, want), "file error has path:line:col (%s)",
	      err.msg);
	rc = lora_doc_parse_file(tmp, &d, &err);
	check(rc == LORA_EIO, "a directory is refused (%s)", err.msg);
}

static void test_unicode(void)
{
	struct lora_doc *d = parse("[\"\\u00e9\", \"\\ud83d\\ude00\", \"\\ud800x\", \"a\\u0000b\", "
				   "\"\\uDBFF\\uDFFF\", \"\\\\ud83d\", \"\\t\\n\\\"\"]");
	if (!check(d != NULL, "unicode escapes parse (%s)", err.msg))
		return;
	const struct lora_doc *it = d->u.arr.items;
	check(!strcmp(it[0].u.str.s, "\xc3\xa9"), "\\u00e9 is U+00E9");
	check(!strcmp(it[1].u.str.s, "\xf0\x9f\x98\x80"), "surrogate pair is U+1F600");
	check(!strcmp(it[2].u.str.s, "\xef\xbf\xbdx"), "lone surrogate becomes U+FFFD");
	check(it[3].u.str.len == 3 && !memcmp(it[3].u.str.s, "a\0b", 3), "\\u0000 keeps its NUL (len 3)");
	check(!strcmp(it[4].u.str.s, "\xf4\x8f\xbf\xbf"), "U+10FFFF from surrogates");
	check(!strcmp(it[5].u.str.s, "\\ud83d"), "escaped backslash is not an escape");
	check(!strcmp(it[6].u.str.s, "\t\n\""), "\\t \\n \\\"");
	lora_doc_free(d);

	/* JSON keys libyaml cannot take as implicit keys: longer than 1024
	 * characters, or split from their ':' by a line break */
	char *big = malloc(5000);
	memset(big, 0, 5000);
	strcpy(big, "{\"");
	memset(big + 2, 'k', 2000);
	strcpy(big + 2002, "\": 1, \"b\"\n : [\"\\ud83d\\ude00\", {\"c\"\r\n:2}], \"");
	memset(big + strlen(big), 'v', 1500);
	strcat(big, "\": 3}");
	d = parse(big);
	check(d && d->u.map.n == 3 && strlen(d->u.map.keys[0]) == 2000 &&
		      lora_doc_get(d, "b") && lora_doc_get(d, "b")->u.arr.n == 2 &&
		      strlen(d->u.map.keys[2]) == 1500 && d->u.map.vals[2].u.i == 3,
	      "JSON keys over 1024 chars and keys before a line break (%s)", d ? "" : err.msg);
	lora_doc_free(d);
	free(big);
	/* raw U+0085 / U+2028 / U+2029 are characters in JSON, line breaks in
	 * YAML: JSON keeps them (in keys too), YAML folds them */
	d = parse("{\"k\xc2\x85\": \"a\xe2\x80\xa8" "b\xe2\x80\xa9\\n\"}");
	check(d && !strcmp(d->u.map.keys[0], "k\xc2\x85") &&
		      !strcmp(d->u.map.vals[0].u.str.s, "a\xe2\x80\xa8" "b\xe2\x80\xa9\n"),
	      "JSON keeps raw NEL, LS, PS in strings and keys (%s)", d ? "" : err.msg);
	json_is(d, 0, "{\"k\\u0085\":\"a\\u2028b\\u2029\\n\"}", "writer escapes NEL, LS, PS");
	lora_doc_free(d);
	d = parse("[\"a\"\n, \"b\"]");
	check(d && d->type == LORA_DOC_ARRAY && d->u.arr.n == 2, "strings in arrays are not keys");
	lora_doc_free(d);
	d = parse("a: \"\\U0001F600 \\u00e9\"\nb: caf\xc3\xa9\n");
	check(d && !strcmp(lora_doc_get(d, "a")->u.str.s, "\xf0\x9f\x98\x80 \xc3\xa9") &&
		      !strcmp(lora_doc_get(d, "b")->u.str.s, "caf\xc3\xa9"),
	      "YAML escapes and raw UTF-8");
	lora_doc_free(d);
}

static void test_writer(void)
{
	struct lora_doc m, v;
	lora_doc_init_map(&m);
	check(lora_doc_map_put_string(&m, "s", "q\"b\\s\x01\x1f\x7f\t\n\r\b\f/\xc3\xa9\xe2\x80\xa8") == 0,
	      "put string");
	lora_doc_map_put_int(&m, "i", INT64_MIN);
	lora_doc_map_put_double(&m, "f", 0.1);
	lora_doc_map_put_double(&m, "two", 2.0);
	lora_doc_map_put_double(&m, "nan", NAN);
	lora_doc_map_put_double(&m, "inf", -INFINITY);
	lora_doc_map_put_double(&m, "tiny", 5e-324);
	lora_doc_map_put_bool(&m, "b", false);
	memset(&v, 0, sizeof v);
	v.type = LORA_DOC_BIN;
	v.u.str.s = malloc(5);
	memcpy(v.u.str.s, "hi!?\xff", 5);
	v.u.str.len = 5;
	lora_doc_map_put(&m, "bin", &v);
	memset(&v, 0, sizeof v);
	lora_doc_map_put(&m, "null", &v);
	json_is(&m, 0,
		"{\"s\":\"q\\\"b\\\\s\\u0001\\u001f\\u007f\\t\\n\\r\\b\\f/\xc3\xa9\\u2028\","
		"\"i\":-9223372036854775808,\"f\":0.1,\"two\":2.0,\"nan\":null,\"inf\":null,"
		"\"tiny\":4.94065645841247e-324,\"b\":false,\"bin\":\"aGkhP/8=\",\"null\":null}",
		"compact JSON with escapes");

	/* invalid UTF-8 is written as U+FFFD escapes */
	char *s = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&s, &len);
	lora_json_write_string(f, "a\xff\xc3(\xed\xa0\x80z\xf0\x9f\x98\x80", 12);
	fclose(f);
	check(!strcmp(s, "\"a\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffdz\xf0\x9f\x98\x80\""),
	      "invalid UTF-8 escaped, valid kept: %s", s);
	free(s);

	/* builders: replace, delete, arrays, pretty printing */
	lora_doc_map_put_int(&m, "i", 3);
	lora_doc_map_del(&m, "s");
	lora_doc_map_del(&m, "nan");
	lora_doc_map_del(&m, "inf");
	lora_doc_map_del(&m, "tiny");
	lora_doc_map_del(&m, "bin");
	lora_doc_map_del(&m, "absent");
	struct lora_doc arr, e, inner;
	lora_doc_init_array(&arr);
	lora_doc_set_string(&e, "x", 1);
	lora_doc_array_push(&arr, &e);
	lora_doc_init_map(&inner);
	lora_doc_array_push(&arr, &inner);
	lora_doc_init_array(&inner);
	lora_doc_array_push(&arr, &inner);
	lora_doc_map_put(&m, "arr", &arr);
	json_is(&m, 2,
		"{\n  \"i\": 3,\n  \"f\": 0.1,\n  \"two\": 2.0,\n  \"b\": false,\n  \"null\": null,\n"
		"  \"arr\": [\n    \"x\",\n    {},\n    []\n  ]\n}",
		"pretty JSON, replaced and deleted keys");

	/* clone, and write -> parse -> write is stable */
	struct lora_doc *c = lora_doc_clone(&m);
	char *a1 = to_json(&m, 0), *a2 = to_json(c, 0);
	check(c && !strcmp(a1, a2), "clone writes the same JSON");
	struct lora_doc *back = parse(a1);
	char *a3 = back ? to_json(back, 0) : NULL;
	check(a3 && !strcmp(a1, a3), "write/parse/write is stable: %s", a3 ? a3 : err.msg);
	free(a1);
	free(a2);
	free(a3);
	lora_doc_free(back);
	lora_doc_free(c);

	/* typed getters */
	const char *str = "preset";
	int64_t iv = -1;
	double dv = -1;
	bool bv = true;
	check(lora_doc_get_string(&m, "missing", "cfg", &str, &err) == LORA_ENOTFOUND &&
		      !strcmp(str, "preset"),
	      "missing key leaves the default");
	check(lora_doc_get_int(&m, "i", "cfg", &iv, &err) == 0 && iv == 3, "get_int");
	check(lora_doc_get_double(&m, "i", "cfg", &dv, &err) == 0 && dv == 3.0, "int accepted as double");
	check(lora_doc_get_bool(&m, "b", "cfg", &bv, &err) == 0 && !bv, "get_bool");
	check(lora_doc_get_string(&m, "i", "cfg", &str, &err) == LORA_EFORMAT &&
		      !strcmp(err.msg, "cfg: 'i' must be a string"),
	      "wrong type, built node: %s", err.msg);
	lora_doc_clear(&m);

	struct lora_doc *d = parse("{\n  \"r\": \"8\",\n  \"a\": 1.5\n}");
	check(lora_doc_get_int(d, "r", "adapter_config.json", &iv, &err) == LORA_EFORMAT &&
		      !strcmp(err.msg, "adapter_config.json:2:8: 'r' must be an integer"),
	      "wrong type message carries file:line:col: %s", err.msg);
	check(lora_doc_get_int(d, "a", "x", &iv, &err) == LORA_EFORMAT, "float is not an int");
	check(lora_doc_get_bool(d, "a", "x", &bv, &err) == LORA_EFORMAT, "float is not a bool");
	lora_doc_free(d);
}

static void test_big(void)
{
	/* 100k keys: duplicate detection must stay linear, and a late duplicate
	 * is still found */
	size_t n = 100000, cap = n * 24 + 64, k = 0;
	char *buf = malloc(cap);
	k += (size_t)sprintf(buf + k, "{");
	for (size_t i = 0; i < n; i++)
		k += (size_t)sprintf(buf + k, "%s\"key%zu\": %zu", i ? "," : "", i, i);
	size_t end = k;
	k += (size_t)sprintf(buf + k, "}");
	struct lora_doc *d = parse(buf);
	check(d && d->u.map.n == n && lora_doc_get(d, "key99999")->u.i == 99999,
	      "100000-key map parses");
	lora_doc_free(d);
	sprintf(buf + end, ",\"key5\": 1}");
	d = parse(buf);
	check(!d && strstr(err.msg, "duplicate key 'key5'"), "late duplicate found: %s", err.msg);
	lora_doc_free(d);
	free(buf);

	const char *tj = check_shared("gpt2-tokenizer/tokenizer.json");
	if (!tj) {
		check_skip("gpt2 tokenizer.json (LORA_SHARED unset)");
		return;
	}
	int rc = lora_doc_parse_file(tj, &d, &err);
	const struct lora_doc *model = lora_doc_get(d, "model");
	const struct lora_doc *vocab = lora_doc_get(model, "vocab");
	const struct lora_doc *merges = lora_doc_get(model, "merges");
	check(rc == 0 && vocab && vocab->u.map.n == 50257 && merges && merges->u.arr.n == 50000,
	      "gpt2 tokenizer.json: 50257 vocab, 50000 merges");
	const struct lora_doc *eot = lora_doc_get(vocab, "<|endoftext|>");
	check(eot && eot->type == LORA_DOC_INT && eot->u.i == 50256, "<|endoftext|> = 50256");
	lora_doc_free(d);
}

/* JSON allows any character but '"', '\\' and C0 controls raw inside a
 * string; YAML calls DEL, C1 controls and U+FFFE/U+FFFF non-printable. Real
 * files have them (golden/eval/llama-tiny/base.json holds a raw DEL). */
static void test_raw_nonprintable(void)
{
	static const char json[] = "{\"a\": \"x\x7fy\", \"b\": \"\xc2\x80\xc2\x9f\", "
				   "\"c\": \"\xef\xbf\xbf\", \"d\": \"\x7f\x7f\x7f\x7f\"}";
	struct lora_doc *d = NULL;
	struct lora_err perr = { 0 };
	int rc = lora_doc_parse_buffer(json, sizeof json - 1, "raw.json", 1, &d, &perr);
	check(rc == 0, "raw DEL, C1 controls and U+FFFF in JSON strings parse (%s)",
	      rc ? perr.msg : "ok");
	const struct lora_doc *a = lora_doc_get(d, "a"), *b = lora_doc_get(d, "b"),
			      *c = lora_doc_get(d, "c"), *e = lora_doc_get(d, "d");
	check(a && a->u.str.len == 3 && !memcmp(a->u.str.s, "x\x7fy", 3), "raw DEL kept as is");
	check(b && b->u.str.len == 4 && !memcmp(b->u.str.s, "\xc2\x80\xc2\x9f", 4),
	      "raw C1 controls kept as is");
	check(c && c->u.str.len == 3 && !memcmp(c->u.str.s, "\xef\xbf\xbf", 3), "raw U+FFFF kept");
	check(e && e->u.str.len == 4, "a run of DELs (the worst growth of the rewrite)");
	lora_doc_free(d);
}

int main(void)
{
	test_raw_nonprintable();
	test_json_types();
	test_yaml_types();
	test_errors();
	test_unicode();
	test_writer();
	test_big();
	return check_done();
}
