/* test_st — safetensors reader validation (every malformed-header case),
 * the writer's byte layout against the safetensors library, the streaming
 * writer, and byte-identical rewrites of real files. */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include "check.h"
#include "fixtures.h"
#include "st.h"

#include <glob.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static struct lora_err err;

/* Open must fail with code and exactly "<path>: " + msg. */
static void open_fails(const char *p, int code, const char *msg, const char *what)
{
	struct lora_st *st = NULL;
	char want[8400];
	snprintf(want, sizeof want, "%s: %s", p, msg);
	int rc = lora_st_open(p, &st, &err);
	check(rc == code && !st && !strcmp(err.msg, want), "%s: %s (%s)", what, err.msg,
	      lora_err_name(rc));
	lora_st_close(st);
}

static void test_malformed(void)
{
	const char *p;
#define T2 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}," \
	   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%d,%d]}}"
	char h[512];

	p = fx_path("short.safetensors");
	fx_spit(p, "abc", 3);
	open_fails(p, LORA_EFORMAT, "file is 3 bytes, too short for a safetensors header",
		   "file shorter than 8 bytes");

	p = fx_write_st_raw(fx_path("long.safetensors"), "{}", 1000, NULL, 40);
	open_fails(p, LORA_EFORMAT, "header length 1000 runs past the end of the file (50 bytes)",
		   "header longer than the file");
	p = fx_write_st_raw(fx_path("huge.safetensors"), "{}", 100000001, NULL, 0);
	open_fails(p, LORA_EFORMAT, "header length 100000001 exceeds the 100 MB limit",
		   "header length over 100 MB");
	p = fx_write_st_raw(fx_path("hugest.safetensors"), "{}", UINT64_MAX - 3, NULL, 0);
	open_fails(p, LORA_EFORMAT, "header length 18446744073709551612 exceeds the 100 MB limit",
		   "header length near 2^64");

	p = fx_write_st_raw(fx_path("badjson.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[2] \"data_offsets\":[0,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT,
		   "bad JSON in header:1:33: did not find expected ',' or '}' while parsing a flow mapping",
		   "malformed JSON header");
	p = fx_write_st_raw(fx_path("notobj.safetensors"), "[1,2]   ", UINT64_MAX, NULL, 0);
	open_fails(p, LORA_EFORMAT, "header is not a JSON object", "header is an array");
	p = fx_path("nul.safetensors");
	fx_spit(p, "\x08\0\0\0\0\0\0\0{}\0\0\0\0\0\0", 16);
	open_fails(p, LORA_EFORMAT, "bad JSON in header:1:3: control characters are not allowed",
		   "NUL padding refused like the library does");

	p = fx_write_st_raw(fx_path("i8.safetensors"), "{\"q\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[0,2]}}", UINT64_MAX, NULL, 2);
	open_fails(p, LORA_EUNSUPPORTED,
		   "tensor 'q' has dtype I8; only F32, F16 and BF16 are supported", "dtype I8");
	p = fx_write_st_raw(fx_path("f64.safetensors"), "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EUNSUPPORTED,
		   "tensor 'w' has dtype F64; only F32, F16 and BF16 are supported", "dtype F64");

	snprintf(h, sizeof h, T2, 4, 12);
	p = fx_write_st_raw(fx_path("overlap.safetensors"), h, UINT64_MAX, NULL, 12);
	open_fails(p, LORA_EFORMAT, "tensors 'a' and 'b' overlap in the data region",
		   "overlapping offsets");
	snprintf(h, sizeof h, T2, 0, 8);
	p = fx_write_st_raw(fx_path("same.safetensors"), h, UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT, "tensors 'a' and 'b' overlap in the data region",
		   "identical offsets");
	snprintf(h, sizeof h, T2, 12, 20);
	p = fx_write_st_raw(fx_path("hole.safetensors"), h, UINT64_MAX, NULL, 20);
	open_fails(p, LORA_EFORMAT,
		   "hole in the data region: bytes 8..12 before tensor 'b' belong to no tensor",
		   "hole between tensors");
	snprintf(h, sizeof h, T2, 8, 16);
	p = fx_write_st_raw(fx_path("tail.safetensors"), h, UINT64_MAX, NULL, 24);
	open_fails(p, LORA_EFORMAT, "data region is 24 bytes but the tensors cover 16",
		   "bytes left over after the last tensor");
	p = fx_write_st_raw(fx_path("trunc.safetensors"), h, UINT64_MAX, NULL, 12);
	open_fails(p, LORA_EFORMAT,
		   "tensor 'b': data_offsets [8,16] out of bounds of the 12-byte data region",
		   "truncated data region");
	p = fx_write_st_raw(fx_path("start.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT,
		   "hole in the data region: bytes 0..4 before tensor 'a' belong to no tensor",
		   "data region not starting at 0");
	p = fx_write_st_raw(fx_path("shape.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT, "tensor 'a': shape [3] of F32 needs 12 bytes but data_offsets span 8",
		   "shape x dtype != byte length");
	p = fx_write_st_raw(fx_path("ovf.safetensors"), "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT,
		   "tensor 'a': shape [4294967296,4294967296] of BF16 needs too many bytes but data_offsets span 8",
		   "shape product overflow");
	p = fx_write_st_raw(fx_path("rev.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT,
		   "tensor 'a': data_offsets [8,0] out of bounds of the 8-byte data region",
		   "end before begin");
	p = fx_write_st_raw(fx_path("neg.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT, "tensor 'a': shape must be non-negative integers",
		   "negative dimension");
	p = fx_write_st_raw(fx_path("offs.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT, "tensor 'a': data_offsets must be two non-negative integers",
		   "one offset");
	p = fx_write_st_raw(fx_path("nodt.safetensors"), "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT, "tensor 'a': missing or non-string dtype", "no dtype");
	p = fx_write_st_raw(fx_path("ent.safetensors"), "{\"a\":[1]}", UINT64_MAX, NULL, 0);
	open_fails(p, LORA_EFORMAT, "tensor 'a': entry is not an object", "entry not an object");
	p = fx_write_st_raw(fx_path("dims.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", UINT64_MAX, NULL, 4);
	open_fails(p, LORA_EUNSUPPORTED, "tensor 'a' has 9 dimensions (at most 8 supported)",
		   "too many dimensions");
	p = fx_write_st_raw(fx_path("meta.safetensors"), "{\"__metadata__\":{\"format\":1}}", UINT64_MAX, NULL, 0);
	open_fails(p, LORA_EFORMAT, "__metadata__ value 'format' is not a string",
		   "non-string metadata");
	p = fx_write_st_raw(fx_path("dup.safetensors"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", UINT64_MAX, NULL, 8);
	open_fails(p, LORA_EFORMAT, "bad JSON in header:1:55: duplicate key 'a'", "duplicate tensor name");

	struct lora_st *st = NULL;
	int rc = lora_st_open(fx_path("absent.safetensors"), &st, &err);
	check(rc == LORA_ENOTFOUND && strstr(err.msg, "cannot open '") &&
		      strstr(err.msg, "No such file or directory"),
	      "missing file: %s", err.msg);
	rc = lora_st_open(fx_dir, &st, &err);
	check(rc == LORA_EIO && strstr(err.msg, "not a regular file"), "directory refused: %s",
	      err.msg);
}

/* Every prefix of a valid file is refused cleanly. */
static void test_truncations(void)
{
	struct lora_st_tensor t[2] = {
		{.name = "x", .dtype = LORA_F32, .ndim = 2, .shape = {2, 3}, .nbytes = 24},
		{.name = "y", .dtype = LORA_BF16, .ndim = 1, .shape = {5}, .nbytes = 10},
	};
	unsigned char d0[24], d1[10];
	for (int i = 0; i < 24; i++)
		d0[i] = (unsigned char)(i * 7);
	for (int i = 0; i < 10; i++)
		d1[i] = (unsigned char)(200 - i);
	t[0].data = d0;
	t[1].data = d1;
	const char *full = fx_path("full.safetensors");
	check(lora_st_write(full, t, 2, NULL, &err) == 0, "write a small file (%s)", err.msg);
	size_t len;
	char *b = fx_slurp(full, &len);
	int bad = 0, crashed_never = 1;
	for (size_t cut = 0; cut < len; cut++) {
		const char *p = fx_path("cut.safetensors");
		fx_spit(p, b, cut);
		struct lora_st *st = NULL;
		int rc = lora_st_open(p, &st, &err);
		if (rc != LORA_EFORMAT || st)
			bad++;
		lora_st_close(st);
	}
	check(bad == 0 && crashed_never, "every one of %zu truncations refused with LORA_EFORMAT (%d not)",
	      len, bad);
	free(b);
}

static void test_reader_ok(void)
{
	/* odd header length: data region misaligned in the file, pointers still
	 * aligned for floats */
	const char *hdr = "{\"__metadata__\":{\"k\":\"v\",\"format\":\"pt\"},"
			  "\"z\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]},"
			  "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[12,12]},"
			  "\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
	float w[3] = {1.5f, -2.0f, 3.25f};
	uint16_t z[2] = {0x3c00, 0xc000};
	unsigned char data[16];
	memcpy(data, w, 12);
	memcpy(data + 12, z, 4);
	const char *p = fx_write_st_raw(fx_path("odd.safetensors"), hdr, UINT64_MAX, data, 16);
	uint64_t n = strlen(hdr);
	struct lora_st *st = NULL;
	int rc = lora_st_open(p, &st, &err);
	if (!check(rc == 0, "misaligned header length %zu opens (%s)", (size_t)n, err.msg))
		return;
	check(lora_st_count(st) == 3, "three tensors");
	check(!strcmp(lora_st_get(st, 0)->name, "w") && !strcmp(lora_st_get(st, 2)->name, "z"),
	      "tensors in offset order");
	const struct lora_st_tensor *tw = lora_st_find(st, "w");
	check(tw && ((uintptr_t)tw->data & 3) == 0 && ((const float *)tw->data)[2] == 3.25f,
	      "aligned float data reads back");
	const struct lora_st_tensor *tz = lora_st_find(st, "z");
	check(tz && tz->dtype == LORA_F16 && tz->nbytes == 4 &&
		      lora_f16_to_f32(((const uint16_t *)tz->data)[1]) == -2.0f,
	      "f16 tensor");
	const struct lora_st_tensor *te = lora_st_find(st, "e");
	check(te && te->nbytes == 0 && te->ndim == 2 && te->shape[0] == 0, "empty tensor kept");
	check(lora_st_find(st, "nope") == NULL, "find of a missing name is NULL");
	const struct lora_doc *md = lora_st_metadata(st);
	check(md && md->u.map.n == 2 && !strcmp(lora_doc_get(md, "k")->u.str.s, "v"),
	      "__metadata__ kept");
	check(!strcmp(lora_st_path(st), p), "path kept");
	lora_st_close(st);
	lora_st_close(NULL);

	p = fx_write_st_raw(fx_path("empty.safetensors"), "{}      ", UINT64_MAX, NULL, 0);
	rc = lora_st_open(p, &st, &err);
	check(rc == 0 && lora_st_count(st) == 0 && lora_st_metadata(st) == NULL,
	      "empty file with no tensors");
	lora_st_close(st);
}

static void test_writer(void)
{
	/* The safetensors library's own test vector (safetensors/src/tensor.rs,
	 * test_serialization): "attn.0" F32 [1,2,3] = 0..5. */
	static const unsigned char want[] = {
		64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
		116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
		58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
		101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
		0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
	float v[6] = {0, 1, 2, 3, 4, 5};
	struct lora_st_tensor t = {.name = "attn.0", .dtype = LORA_F32, .ndim = 3,
				   .shape = {1, 2, 3}, .data = v, .nbytes = 24};
	const char *p = fx_path("vec.safetensors");
	size_t len;
	check(lora_st_write(p, &t, 1, NULL, &err) == 0, "write the library's test vector");
	char *b = fx_slurp(p, &len);
	check(b && len == sizeof want && !memcmp(b, want, len), "bytes equal the library's (%zu)", len);
	free(b);

	/* the library's test_empty: no tensors, then metadata {framework: pt} */
	check(lora_st_write(p, NULL, 0, NULL, &err) == 0, "write an empty file");
	b = fx_slurp(p, &len);
	check(b && len == 16 && !memcmp(b, "\x08\0\0\0\0\0\0\0{}      ", 16), "empty file bytes");
	free(b);
	struct lora_doc md;
	lora_doc_init_map(&md);
	lora_doc_map_put_string(&md, "framework", "pt");
	check(lora_st_write(p, NULL, 0, &md, &err) == 0, "write metadata only");
	b = fx_slurp(p, &len);
	check(b && len == 48 && b[0] == 40 &&
		      !memcmp(b + 8, "{\"__metadata__\":{\"framework\":\"pt\"}}     ", 40),
	      "metadata-only bytes match the library");
	free(b);

	/* order: dtype alignment descending (F32, BF16, F16), then name */
	uint16_t h[2] = {1, 2};
	float f1[1] = {1};
	struct lora_st_tensor ts[5] = {
		{.name = "b", .dtype = LORA_F16, .ndim = 1, .shape = {1}, .data = h, .nbytes = 2},
		{.name = "a", .dtype = LORA_F16, .ndim = 1, .shape = {1}, .data = h + 1, .nbytes = 2},
		{.name = "c", .dtype = LORA_BF16, .ndim = 1, .shape = {1}, .data = h, .nbytes = 2},
		{.name = "z", .dtype = LORA_F32, .ndim = 0, .data = f1, .nbytes = 4},
		{.name = "y\"\n", .dtype = LORA_F32, .ndim = 2, .shape = {0, 3}, .data = NULL, .nbytes = 0},
	};
	check(lora_st_write(p, ts, 5, NULL, &err) == 0, "write mixed dtypes (%s)", err.msg);
	b = fx_slurp(p, &len);
	const char *hw = "{\"y\\\"\\n\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
			 "\"z\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
			 "\"c\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[4,6]},"
			 "\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[6,8]},"
			 "\"b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[8,10]}}";
	size_t hl = strlen(hw), padded = (hl + 7) / 8 * 8;
	check(b && len == 8 + padded + 10 &&
		      (size_t)((unsigned char)b[0] | (unsigned char)b[1] << 8) == padded &&
		      !memcmp(b + 8, hw, hl) && b[8 + padded - 1] == ' ',
	      "F32 by name, then BF16, then F16 by name; names escaped; padded with spaces");
	check(b && !memcmp(b + 8 + padded, f1, 4) && !memcmp(b + 8 + padded + 6, h + 1, 2),
	      "data follows the header order");
	free(b);
	struct lora_st *st;
	check(lora_st_open(p, &st, &err) == 0 && lora_st_count(st) == 5 &&
		      lora_st_find(st, "y\"\n") != NULL,
	      "our mixed file reads back (%s)", err.msg);
	lora_st_close(st);

	/* refusals */
	struct lora_st_tensor dup[2] = {ts[3], ts[3]};
	dup[1].dtype = LORA_F32;
	check(lora_st_write(p, dup, 2, NULL, &err) == LORA_EINVAL &&
		      strstr(err.msg, "duplicate tensor name 'z'"),
	      "duplicate names refused: %s", err.msg);
	struct lora_st_tensor bad = ts[3];
	bad.nbytes = 8;
	check(lora_st_write(p, &bad, 1, NULL, &err) == LORA_EINVAL &&
		      strstr(err.msg, "tensor 'z': shape [] of F32 does not match 8 bytes"),
	      "size mismatch refused: %s", err.msg);
	lora_doc_map_put_int(&md, "n", 1);
	check(lora_st_write(p, NULL, 0, &md, &err) == LORA_EINVAL &&
		      strstr(err.msg, "metadata value 'n' is not a string"),
	      "non-string metadata refused: %s", err.msg);
	lora_doc_clear(&md);
	check(lora_st_write("/nonexistent-dir/x.safetensors", &t, 1, NULL, &err) == LORA_EIO &&
		      strstr(err.msg, "cannot create a temporary file for '/nonexistent-dir/x.safetensors'"),
	      "unwritable directory: %s", err.msg);

	/* streaming writer: same bytes as the one-shot writer, fed in chunks */
	float big[1000];
	for (int i = 0; i < 1000; i++)
		big[i] = (float)i * 0.5f;
	struct lora_st_tensor decl[3] = {
		{.name = "m.b", .dtype = LORA_F32, .ndim = 2, .shape = {10, 100}, .data = big, .nbytes = 4000},
		{.name = "m.a", .dtype = LORA_BF16, .ndim = 1, .shape = {3}, .data = h, .nbytes = 6},
		{.name = "m.c", .dtype = LORA_F32, .ndim = 1, .shape = {7}, .data = big + 3, .nbytes = 28},
	};
	uint16_t h3[3] = {1, 2, 3};
	decl[1].data = h3;
	const char *p1 = fx_path("one.safetensors"), *p2 = fx_path("stream.safetensors");
	check(lora_st_write(p1, decl, 3, NULL, &err) == 0, "one-shot write");
	struct lora_st_writer *w;
	check(lora_st_writer_open(p2, decl, 3, NULL, &w, &err) == 0, "streaming writer opens");
	check(lora_st_writer_order(w, 0) == 0 && lora_st_writer_order(w, 1) == 2 &&
		      lora_st_writer_order(w, 2) == 1,
	      "order: m.b, m.c (F32 by name), then m.a (BF16)");
	access(p2, F_OK) == 0 ? check(0, "target absent before commit")
			      : check(1, "target absent before commit");
	int rc = 0;
	for (size_t k = 0; k < 3 && !rc; k++) {
		const struct lora_st_tensor *d = &decl[lora_st_writer_order(w, k)];
		for (size_t off = 0; off < d->nbytes && !rc; off += 3) {
			size_t c = d->nbytes - off < 3 ? d->nbytes - off : 3;
			rc = lora_st_writer_write(w, (const char *)d->data + off, c, &err);
		}
	}
	check(rc == 0 && lora_st_writer_commit(w, &err) == 0, "chunked writes and commit");
	size_t l1, l2;
	char *b1 = fx_slurp(p1, &l1), *b2 = fx_slurp(p2, &l2);
	check(b1 && b2 && l1 == l2 && !memcmp(b1, b2, l1), "streamed file equals the one-shot file");
	free(b1);
	free(b2);

	const char *p3 = fx_path("aborted.safetensors");
	check(lora_st_writer_open(p3, decl, 3, NULL, &w, &err) == 0, "open another");
	lora_st_writer_write(w, big, 100, &err);
	check(lora_st_writer_commit(w, &err) == LORA_EINVAL &&
		      strstr(err.msg, "3 of 3 tensors not fully written"),
	      "commit of a partial file refused: %s", err.msg);
	check(access(p3, F_OK) != 0, "no file after a refused commit");
	check(lora_st_writer_open(p3, decl, 1, NULL, &w, &err) == 0, "open a third");
	rc = lora_st_writer_write(w, big, 4004, &err);
	check(rc == LORA_EINVAL && strstr(err.msg, "more tensor data written than declared"),
	      "too much data refused: %s", err.msg);
	lora_st_writer_abort(w);
	check(access(p3, F_OK) != 0, "no file after abort");

	/* no temporary files left behind */
	int stray = fx_dotfiles(fx_dir);
	check(stray == 0, "no temporary files left (%d)", stray);
}

/* Rewriting a file the safetensors library wrote gives the same bytes. */
static void test_real_files(void)
{
	const char *root = check_shared("golden");
	if (!root) {
		check_skip("real safetensors files (LORA_SHARED unset)");
		return;
	}
	const char *pats[] = {"golden/adapters/*/*/adapter_model.safetensors",
			      "gpt2-lora-*/adapter_model.safetensors",
			      "gpt2-medium-lora-*/adapter_model.safetensors",
			      "golden/models/*/model.safetensors", "stories260K-hf/model.safetensors",
			      "golden/logits/*/*.safetensors", "golden/fold/*/*.safetensors"};
	int files = 0, same = 0, pt = 0;
	char pat[4300];
	for (size_t i = 0; i < sizeof pats / sizeof *pats; i++) {
		snprintf(pat, sizeof pat, "%s/%s", getenv("LORA_SHARED"), pats[i]);
		glob_t g;
		if (glob(pat, 0, NULL, &g) != 0)
			continue;
		for (size_t j = 0; j < g.gl_pathc; j++) {
			struct lora_st *st;
			files++;
			if (lora_st_open(g.gl_pathv[j], &st, &err) < 0) {
				check(0, "open %s: %s", g.gl_pathv[j], err.msg);
				continue;
			}
			const struct lora_doc *md = lora_st_metadata(st);
			const struct lora_doc *fmt = lora_doc_get(md, "format");
			if (fmt && fmt->type == LORA_DOC_STRING && !strcmp(fmt->u.str.s, "pt"))
				pt++;
			size_t n = lora_st_count(st);
			struct lora_st_tensor *t = malloc((n ? n : 1) * sizeof *t);
			for (size_t k = 0; k < n; k++)	/* reversed: the writer must sort */
				t[k] = *lora_st_get(st, n - 1 - k);
			const char *out = fx_path("rewrite.safetensors");
			int rc = lora_st_write(out, t, n, md, &err);
			size_t l1, l2;
			char *b1 = fx_slurp(g.gl_pathv[j], &l1), *b2 = rc == 0 ? fx_slurp(out, &l2) : NULL;
			if (b1 && b2 && l1 == l2 && !memcmp(b1, b2, l1))
				same++;
			else
				check(0, "rewrite of %s differs (%s)", g.gl_pathv[j], rc ? err.msg : "bytes");
			free(b1);
			free(b2);
			free(t);
			lora_st_close(st);
		}
		globfree(&g);
	}
	check(files >= 45 && same == files, "%d of %d real files rewritten byte-identical", same, files);
	check(pt == files, "every real file has __metadata__ format pt (%d of %d)", pt, files);

	/* a few facts about the real adapters */
	struct lora_st *st;
	const char *p = check_shared("gpt2-lora-tigrinya/adapter_model.safetensors");
	if (p && lora_st_open(p, &st, &err) == 0) {
		const struct lora_st_tensor *a = lora_st_find(
			st, "base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight");
		const struct lora_st_tensor *b = lora_st_find(
			st, "base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight");
		check(lora_st_count(st) == 72 && a && a->shape[0] == 8 && a->shape[1] == 3072 && b &&
			      b->shape[0] == 768 && b->shape[1] == 8,
		      "tigrinya: 72 tensors, mlp.c_proj lora_A [8,3072], lora_B [768,8]");
		lora_st_close(st);
	}
}

int main(void)
{
	if (!fx_init("test_st"))
		return 1;
	test_malformed();
	test_truncations();
	test_reader_ok();
	test_writer();
	test_real_files();
	return check_done();
}
