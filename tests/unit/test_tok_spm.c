/*
 * test_tok_spm — tokenizers loaded from a SentencePiece model only
 * (spiece.model / tokenizer.model, no tokenizer.json), against the Hugging
 * Face goldens, plus malformed-protobuf errors and a short mutation fuzz.
 *
 * Goldens: $LORA_SHARED/golden/tokenizer/ids_fast.jsonl holds the ids the
 * `tokenizers` library gives for the tokenizer.json files that transformers'
 * converters made from these same .model files (t5-tokenizer,
 * stories260K-hf), and decode(ids, skip_special=true). Every line must match.
 */
#include "check.h"
#include "doc.h"
#include "err.h"
#include "fixtures.h"
#include "tok.h"

#include <stdint.h>

/* Open dir; return the error code and copy the message. */
static int open_msg(const char *dir, char *msg, size_t cap)
{
	struct lora_tok *t = NULL;
	struct lora_err err = {0};
	int rc = lora_tok_open(dir, &t, &err);
	snprintf(msg, cap, "%s", err.msg);
	lora_tok_close(t);
	return rc;
}

/* A tiny hand-made ModelProto: pieces then a trainer_spec. */
static size_t put_varint(unsigned char *p, uint64_t v)
{
	size_t n = 0;
	do {
		p[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return n;
}

static size_t put_piece(unsigned char *p, const char *s, float score, int type, bool with_str)
{
	unsigned char body[256];
	size_t n = 0, l = strlen(s);
	if (with_str) {
		body[n++] = 0x0a;
		n += put_varint(body + n, l);
		memcpy(body + n, s, l);
		n += l;
	}
	body[n++] = 0x15;
	memcpy(body + n, &score, 4);
	n += 4;
	body[n++] = 0x18;
	body[n++] = (unsigned char)type;
	size_t w = 0;
	p[w++] = 0x0a;
	w += put_varint(p + w, n);
	memcpy(p + w, body, n);
	return w + n;
}

static size_t tiny_model(unsigned char *p, bool bad_piece)
{
	size_t n = 0;
	n += put_piece(p + n, "<unk>", 0, 2, true);
	n += put_piece(p + n, "<s>", 0, 3, true);
	n += put_piece(p + n, "</s>", 0, 3, true);
	n += put_piece(p + n, "\xe2\x96\x81", -1, 1, true);
	n += put_piece(p + n, "a", -2, 1, !bad_piece);
	n += put_piece(p + n, "b", -3, 1, true);
	n += put_piece(p + n, "\xe2\x96\x81" "a", -4, 1, true);
	/* trainer_spec { model_type: BPE } */
	p[n++] = 0x12;
	p[n++] = 2;
	p[n++] = 0x18;
	p[n++] = 2;
	return n;
}

static void test_errors(const char *tmp)
{
	char dir[4200], path[4300], msg[1024];
	unsigned char buf[2048];
	snprintf(dir, sizeof dir, "%s/bad", tmp);
	mkdir(dir, 0777);
	snprintf(path, sizeof path, "%s/tokenizer.model", dir);

	size_t n = tiny_model(buf, false);
	struct lora_tok *t = NULL;
	struct lora_err err = {0};
	fx_spit(path, buf, n);
	int rc = lora_tok_open(dir, &t, &err);
	check(rc == 0, "hand-made BPE ModelProto loads (%s)", rc ? err.msg : "ok");
	if (!rc) {
		int32_t *ids = NULL;
		size_t ni = 0;
		rc = lora_tok_encode(t, "a ab", 4, true, &ids, &ni, &err);
		/* "▁a▁ab": the one merge (from the score of "▁a") gives <s> ▁a ▁a b */
		bool good = !rc && ni == 4 && ids[0] == 1 && ids[1] == 6 && ids[2] == 6 &&
			    ids[3] == 5;
		check(good, "hand-made model encodes 'a ab' as <s> ▁a ▁a b (%zu ids)", ni);
		free(ids);
		lora_tok_close(t);
	}

	fx_spit(path, buf, n - 3);
	rc = open_msg(dir, msg, sizeof msg);
	check(rc == LORA_EFORMAT && strstr(msg, path) && strstr(msg, "truncated"),
	      "truncated file: %s", msg);

	unsigned char bw[2048];
	memcpy(bw, buf, n);
	bw[0] = 0x0b; /* field 1, wire type 3 (group start) */
	fx_spit(path, bw, n);
	rc = open_msg(dir, msg, sizeof msg);
	check(rc == LORA_EFORMAT && strstr(msg, path) && strstr(msg, "wire type"),
	      "bad wire type: %s", msg);

	bw[0] = 0x0d; /* field 1 (pieces) as a fixed32 */
	fx_spit(path, bw, n);
	rc = open_msg(dir, msg, sizeof msg);
	check(rc == LORA_EFORMAT && strstr(msg, path) && strstr(msg, "wire type"),
	      "pieces with the wrong wire type: %s", msg);

	n = tiny_model(buf, true);
	fx_spit(path, buf, n);
	rc = open_msg(dir, msg, sizeof msg);
	check(rc == LORA_EFORMAT && strstr(msg, path) && strstr(msg, "piece 4 has no string"),
	      "a piece without a string: %s", msg);

	fx_spit(path, "", 0);
	rc = open_msg(dir, msg, sizeof msg);
	check(rc == LORA_EFORMAT && strstr(msg, path), "empty file: %s", msg);

	snprintf(path, sizeof path, "%s/empty", tmp);
	mkdir(path, 0777);
	rc = open_msg(path, msg, sizeof msg);
	check(rc == LORA_ENOTFOUND && strstr(msg, "tokenizer"), "no tokenizer at all: %s", msg);
}

/* Random mutations of a real model file: must never crash (ASan catches
 * what a plain build would not). Bounded to about a second. */
static void fuzz(const char *tmp, const char *src)
{
	size_t len;
	unsigned char *orig = (unsigned char *)fx_slurp(src, &len), *b;
	char dir[4200], path[4300];
	if (!orig || !(b = malloc(len))) {
		free(orig);
		check(0, "fuzz: cannot read %s", src);
		return;
	}
	snprintf(dir, sizeof dir, "%s/fuzz", tmp);
	mkdir(dir, 0777);
	snprintf(path, sizeof path, "%s/tokenizer.model", dir);
	uint64_t s = 0x9e3779b97f4a7c15ULL;
	int tries = 0, loaded = 0;
	double t0 = fx_now();
	while (fx_now() - t0 < 1.0 && tries < 2000) {
		memcpy(b, orig, len);
		size_t n = len;
		int k = 1 + (int)((s >> 7) % 8);
		for (int j = 0; j < k; j++) {
			s = s * 6364136223846793005ULL + 1442695040888963407ULL;
			size_t at = (size_t)(s >> 20) % n;
			switch ((s >> 60) % 4) {
			case 0:
				b[at] = (unsigned char)(s >> 8);
				break;
			case 1:
				b[at] ^= (unsigned char)(1u << ((s >> 12) & 7));
				break;
			case 2:
				n = at + 1; /* truncate */
				break;
			default:
				b[at] = 0xff;
				break;
			}
		}
		fx_spit(path, b, n);
		struct lora_tok *t = NULL;
		struct lora_err err = {0};
		if (lora_tok_open(dir, &t, &err) == 0) {
			int32_t *ids = NULL;
			size_t ni = 0;
			char *txt = NULL;
			const char *in = "Once upon a time, 12 <s> caf\xc3\xa9 \xe2\x96\x81x";
			if (lora_tok_encode(t, in, strlen(in), true, &ids, &ni, &err) == 0)
				lora_tok_decode(t, ids, ni, false, &txt, &err);
			free(ids);
			free(txt);
			lora_tok_close(t);
			loaded++;
		} else if (!err.msg[0]) {
			check(0, "fuzz: error without a message (try %d)", tries);
			break;
		}
		tries++;
	}
	check(tries > 0, "fuzz: %d mutated models, %d loaded, no crash", tries, loaded);
	free(b);
	free(orig);
}

int main(void)
{
	const char *tmp = fx_init("test_tok_spm");
	const char *fast = check_shared("golden/tokenizer/ids_fast.jsonl");
	if (!tmp) {
		check(0, "tmpdir");
		return check_done();
	}
	test_errors(tmp);
	if (!fast) {
		check_skip("SentencePiece goldens (LORA_SHARED unset or golden/tokenizer missing)");
		return check_done();
	}
	char fastp[4096];
	snprintf(fastp, sizeof fastp, "%s", fast);
	static const struct {
		const char *dir, *model, *key;
	} toks[] = {
		{"t5-tokenizer", "spiece.model", "t5"},
		{"stories260K-hf", "tokenizer.model", "stories260K"},
	};
	for (size_t k = 0; k < 2; k++) {
		char rel[256], src[4200], dst[4300], dir[4200];
		snprintf(rel, sizeof rel, "%s/%s", toks[k].dir, toks[k].model);
		const char *s = check_shared(rel);
		if (!s) {
			check_skip("%s (missing)", rel);
			continue;
		}
		snprintf(src, sizeof src, "%s", s);
		snprintf(dir, sizeof dir, "%s/%s", tmp, toks[k].key);
		mkdir(dir, 0777);
		snprintf(dst, sizeof dst, "%s/%s", dir, toks[k].model);
		int crc = fx_copy(src, dst);
		check(crc == 0, "%s: copied %s alone into a temp dir", toks[k].key, toks[k].model);
		struct lora_tok *t = NULL;
		struct lora_err err = {0};
		for (int pass = 0; pass < 2; pass++) {
			/* pass 1: with the configs too (add_bos_token, extra ids), as on
			 * the hub; pass 0: the model file alone (the defaults) */
			const char *cfgs[] = {"tokenizer_config.json", "special_tokens_map.json"};
			for (int c = 0; pass && c < 2; c++) {
				snprintf(rel, sizeof rel, "%s/%s", toks[k].dir, cfgs[c]);
				const char *cs = check_shared(rel);
				if (cs) {
					snprintf(src, sizeof src, "%s", cs);
					snprintf(dst, sizeof dst, "%s/%s", dir, cfgs[c]);
					crc |= fx_copy(src, dst);
				}
			}
			const char *how = pass ? "with its configs" : "alone";
			double t0 = fx_now();
			int rc = crc ? -1 : lora_tok_open(dir, &t, &err);
			if (!check(rc == 0, "%s: open %s %s (%.3f s) %s", toks[k].key,
				   toks[k].model, how, fx_now() - t0, rc ? err.msg : ""))
				continue;
			int lines = 0, good = fx_tok_golden(t, fastp, toks[k].key, true, true, &lines);
			check(lines > 0 && good == lines,
			      "%s from %s %s: %d/%d golden lines match (ids, ids_no_special, "
			      "decoded)",
			      toks[k].key, toks[k].model, how, good, lines);
			if (pass == 0) {
				lora_tok_close(t);
				t = NULL;
			}
		}
		if (!t)
			continue;
		if (k == 0) {
			check(lora_tok_vocab_size(t) == 32100 &&
				      lora_tok_id(t, "<extra_id_0>") == 32099 &&
				      lora_tok_id(t, "<extra_id_99>") == 32000,
			      "t5: extra ids 32000..32099 in reverse order (vocab %zu)",
			      lora_tok_vocab_size(t));
		}
		lora_tok_close(t);
		/* the .model file named directly works too */
		snprintf(dst, sizeof dst, "%s/%s", dir, toks[k].model);
		int rc = lora_tok_open(dst, &t, &err);
		check(rc == 0, "%s: open the .model file by path %s", toks[k].key,
		      rc ? err.msg : "");
		lora_tok_close(t);
		if (k == 1)
			fuzz(tmp, dst);
	}
	return check_done();
}
