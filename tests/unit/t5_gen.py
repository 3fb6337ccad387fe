#!/usr/bin/env python3
"""t5_gen.py OUTDIR DTYPE HEAD -- write a tiny random T5 model directory for test_t5.

DTYPE: f32 (random float32 weights), bf16 (the same weights rounded to bfloat16,
stored as BF16), f32r (the bf16-rounded values stored as F32).
HEAD:  tied   (tie_word_embeddings true, gated-gelu, encoder.embed_tokens.weight
              written explicitly next to shared.weight)
       untied (lm_head.weight, relu, no embed_tokens copies).
Shapes are deliberately odd (d_model 16, 3 heads of 4 so the attention width 12
differs from d_model, d_ff 24, 2 encoder + 3 decoder layers, 8 buckets, max
distance 20, vocab 64) so that no dimension can be confused with another.

Also writes OUTDIR/expected.json: a float64 numpy reference forward (following
transformers' modeling_t5.py) for the two sequences test_t5 scores: the mean
token NLL and greedy ids (6 new tokens) for the second input. Only numpy.
"""
import json
import math
import struct
import sys

import numpy as np

out, dtype, head = sys.argv[1], sys.argv[2], sys.argv[3]
tied = head == "tied"
C, HS, NH, F, NE, ND, V, NB, MAXD = 16, 4, 3, 24, 2, 3, 64, 8, 20
D = NH * HS
EPS = 1e-6
gated = tied
rng = np.random.default_rng(1234)


def rnd(*shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


W = {}
W["shared.weight"] = rnd(V, C, scale=1.0)
if not tied:
    W["lm_head.weight"] = rnd(V, C, scale=0.3)
for stack, nl in (("encoder", NE), ("decoder", ND)):
    W[f"{stack}.final_layer_norm.weight"] = 1 + rnd(C, scale=0.1)
    W[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = rnd(NB, NH)
    for i in range(nl):
        p = f"{stack}.block.{i}.layer"
        W[f"{p}.0.layer_norm.weight"] = 1 + rnd(C, scale=0.1)
        for n in "qkv":
            W[f"{p}.0.SelfAttention.{n}.weight"] = rnd(D, C, scale=C ** -0.5)
        W[f"{p}.0.SelfAttention.o.weight"] = rnd(C, D, scale=D ** -0.5)
        ff = 1
        if stack == "decoder":
            ff = 2
            W[f"{p}.1.layer_norm.weight"] = 1 + rnd(C, scale=0.1)
            for n in "qkv":
                W[f"{p}.1.EncDecAttention.{n}.weight"] = rnd(D, C, scale=C ** -0.5)
            W[f"{p}.1.EncDecAttention.o.weight"] = rnd(C, D, scale=D ** -0.5)
        W[f"{p}.{ff}.layer_norm.weight"] = 1 + rnd(C, scale=0.1)
        for n in (("wi_0", "wi_1") if gated else ("wi",)):
            W[f"{p}.{ff}.DenseReluDense.{n}.weight"] = rnd(F, C, scale=C ** -0.5)
        W[f"{p}.{ff}.DenseReluDense.wo.weight"] = rnd(C, F, scale=F ** -0.5)


def bf16_bits(a):
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


if dtype in ("bf16", "f32r"):
    for k in W:
        W[k] = (bf16_bits(W[k]).astype(np.uint32) << 16).view(np.float32).reshape(W[k].shape)

stored = dict(W)
if tied:
    stored["encoder.embed_tokens.weight"] = W["shared.weight"]

header, blobs, off = {}, [], 0
for k in sorted(stored):
    a = stored[k]
    b = bf16_bits(a).tobytes() if dtype == "bf16" else a.astype("<f4").tobytes()
    header[k] = {"dtype": "BF16" if dtype == "bf16" else "F32", "shape": list(a.shape),
                 "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
import os
os.makedirs(out, exist_ok=True)
with open(f"{out}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
config = {
    "model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": V,
    "d_model": C, "d_kv": HS, "num_heads": NH, "d_ff": F, "num_layers": NE,
    "num_decoder_layers": ND, "relative_attention_num_buckets": NB,
    "relative_attention_max_distance": MAXD, "layer_norm_epsilon": EPS,
    "feed_forward_proj": "gated-gelu" if gated else "relu", "is_encoder_decoder": True,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
    "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
}
if not tied:
    config["tie_word_embeddings"] = False
with open(f"{out}/config.json", "w") as f:
    json.dump(config, f, indent=2)

# ---- float64 reference forward (modeling_t5.py) ----
w = {k: v.astype(np.float64) for k, v in W.items()}


def rms(x, g):
    return g * (x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS))


def bucket(rel, bidirectional):
    nb, b = NB, 0
    if bidirectional:
        nb //= 2
        b += nb if rel > 0 else 0
        rel = abs(rel)
    else:
        rel = -min(rel, 0)
    me = nb // 2
    if rel < me:
        return b + rel
    v = np.float32(np.log(np.float32(rel) / np.float32(me)) / np.float32(math.log(MAXD / me))
                   * np.float32(nb - me))
    return b + min(me + int(v), nb - 1)


def bias(stack, nq, nk, bidirectional):
    tab = w[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    out_ = np.zeros((NH, nq, nk))
    for i in range(nq):
        for j in range(nk):
            out_[:, i, j] = tab[bucket(j - i, bidirectional)]
    return out_


def attention(x, kv, p, pb, causal):
    q, k, v = x @ w[p + ".q.weight"].T, kv @ w[p + ".k.weight"].T, kv @ w[p + ".v.weight"].T
    o = np.zeros((x.shape[0], D))
    for hh in range(NH):
        sl = slice(hh * HS, hh * HS + HS)
        s = q[:, sl] @ k[:, sl].T
        if pb is not None:
            s = s + pb[hh]
        if causal:
            s = s + np.triu(np.full(s.shape, -np.inf), 1)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o[:, sl] = s @ v[:, sl]
    return o @ w[p + ".o.weight"].T


def ffn(x, p):
    if gated:
        a = x @ w[p + ".wi_0.weight"].T
        a = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
        h_ = a * (x @ w[p + ".wi_1.weight"].T)
    else:
        h_ = np.maximum(x @ w[p + ".wi.weight"].T, 0)
    return h_ @ w[p + ".wo.weight"].T


def encode(ids):
    x = w["shared.weight"][ids]
    pb = bias("encoder", len(ids), len(ids), True)
    for i in range(NE):
        p = f"encoder.block.{i}.layer"
        x = x + attention(rms(x, w[p + ".0.layer_norm.weight"]), rms(x, w[p + ".0.layer_norm.weight"]),
                          p + ".0.SelfAttention", pb, False)
        x = x + ffn(rms(x, w[p + ".1.layer_norm.weight"]), p + ".1.DenseReluDense")
    return rms(x, w["encoder.final_layer_norm.weight"])


def decode(enc, dec_ids):
    x = w["shared.weight"][dec_ids]
    pb = bias("decoder", len(dec_ids), len(dec_ids), False)
    for i in range(ND):
        p = f"decoder.block.{i}.layer"
        n0 = rms(x, w[p + ".0.layer_norm.weight"])
        x = x + attention(n0, n0, p + ".0.SelfAttention", pb, True)
        x = x + attention(rms(x, w[p + ".1.layer_norm.weight"]), enc, p + ".1.EncDecAttention", None, False)
        x = x + ffn(rms(x, w[p + ".2.layer_norm.weight"]), p + ".2.DenseReluDense")
    x = rms(x, w["decoder.final_layer_norm.weight"])
    if tied:
        return (x * C ** -0.5) @ w["shared.weight"].T
    return x @ w["lm_head.weight"].T


seqs = [([5, 9, 17, 3, 22, 1], [7, 8, 1]),
        ([30, 2, 11, 40, 41, 42, 43, 44, 45, 12, 1], [4, 6, 19, 21, 1])]
nll = []
for inp, tgt in seqs:
    lg = decode(encode(inp), [0] + tgt[:-1])
    m = lg.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[:, 0]
    nll += list(lse - lg[np.arange(len(tgt)), tgt])
enc = encode(seqs[1][0])
gen = [0]
while len(gen) <= 6:
    nxt = int(np.argmax(decode(enc, gen)[-1]))
    gen.append(nxt)
    if nxt == 1:
        break
with open(f"{out}/expected.json", "w") as f:
    json.dump({"loss": float(np.mean(nll)), "generation": gen[1:]}, f)
