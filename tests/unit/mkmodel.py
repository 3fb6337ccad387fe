#!/usr/bin/env python3
"""mkmodel.py OUTDIR TOKENIZER_JSON — tiny random models (numpy, fixed seeds)
for tests/unit/test_engine.c, covering what the Hugging Face goldens do not:

  llama3   llama, Llama-3 rope_scaling (factor 8, original context 16),
           rope_theta 5e5, GQA, untied head, f32
  qwen2    qwen2, q/k/v biases, tied head, bf16 weights
  mistral  mistral, sliding_window 4, f16 weights, two shards + index
  gpt2     gpt2 checkpoint without the "transformer." prefix, n_inner 48, f16

Each OUTDIR/<name>/ is a model directory (config.json, weights, a copy of
TOKENIZER_JSON) plus ref.json: a float64 numpy forward of the Hugging Face
equations (transformers 4.36) giving per-token NLLs of three sequences, the
logits of the first, and 6 greedy tokens from its input. Weights stored in
bf16/f16 are rounded first, so the reference sees the same numbers.
"""
import json, os, shutil, struct, sys
import numpy as np

V = 512

def to_bf16(a):
    b = a.astype(np.float32).view(np.uint32)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return b

def bf16_to_f32(u):
    return (u.astype(np.uint32) << 16).view(np.float32)

def write_st(path, tensors):
    """tensors: name -> (dtype string, np array of storage type)"""
    header, off, blobs = {}, 0, []
    for name in sorted(tensors):
        dt, arr = tensors[name]
        raw = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

def store(weights, dtype):
    """Round weights to dtype; return (stored tensors, f64 values seen)."""
    out, seen = {}, {}
    for k, v in weights.items():
        v = v.astype(np.float32)
        if dtype == "BF16":
            u = to_bf16(v); out[k] = ("BF16", u); seen[k] = bf16_to_f32(u).astype(np.float64)
        elif dtype == "F16":
            h = v.astype(np.float16); out[k] = ("F16", h); seen[k] = h.astype(np.float64)
        else:
            out[k] = ("F32", v); seen[k] = v.astype(np.float64)
    return out, seen

def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

def softmax(s):
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(-1, keepdims=True)

def llama_inv_freq(cfg):
    HS = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, HS, 2) / HS))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":
        f, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        wl = 2 * np.pi / inv
        new = np.where(wl > old / lo, inv / f, inv)
        s = (old / wl - lo) / (hi - lo)
        sm = (1 - s) * new / f + s * new
        med = ~(wl < old / hi) & ~(wl > old / lo)
        inv = np.where(med, sm, new)
    return inv

def llama_forward(W, cfg, ids):
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV, HS, eps = cfg["num_key_value_heads"], C // NH, cfg["rms_norm_eps"]
    win = cfg.get("sliding_window") or 0
    T = len(ids)
    x = W["model.embed_tokens.weight"][ids]
    ang = np.outer(np.arange(T), llama_inv_freq(cfg))
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))
    def rot(q):  # q [T, n, HS]
        h = HS // 2
        rh = np.concatenate([-q[..., h:], q[..., :h]], -1)
        return q * cos[:, None, :] + rh * sin[:, None, :]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    bad = (j > i) | ((i - j >= win) if win else False)
    def lin(h, name):
        y = h @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        q = rot(lin(h, p + "self_attn.q_proj").reshape(T, NH, HS))
        k = rot(lin(h, p + "self_attn.k_proj").reshape(T, NKV, HS))
        v = lin(h, p + "self_attn.v_proj").reshape(T, NKV, HS)
        a = np.zeros((T, NH, HS))
        for hh in range(NH):
            kv = hh // (NH // NKV)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(HS)
            s[bad] = -np.inf
            a[:, hh] = softmax(s) @ v[:, kv]
        x = x + lin(a.reshape(T, NH * HS), p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return rms(x, W["model.norm.weight"], eps) @ head.T

def ln(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b

def gpt2_forward(W, cfg, ids):
    C, NH, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    HS, T = C // NH, len(ids)
    x = W["wte.weight"][ids] + W["wpe.weight"][:T]
    bad = np.arange(T)[None, :] > np.arange(T)[:, None]
    for l in range(cfg["n_layer"]):
        p = "h.%d." % l
        qkv = ln(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps) @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
        a = np.zeros((T, C))
        for hh in range(NH):
            q, k, v = (qkv[:, o * C + hh * HS: o * C + (hh + 1) * HS] for o in range(3))
            s = q @ k.T / np.sqrt(HS)
            s[bad] = -np.inf
            a[:, hh * HS:(hh + 1) * HS] = softmax(s) @ v
        x = x + a @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        f = ln(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps) @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"]
        f = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f ** 3)))
        x = x + f @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    return ln(x, W["ln_f.weight"], W["ln_f.bias"], eps) @ W["wte.weight"].T

def llama_weights(rng, cfg, bias, tied):
    C, NH, NKV, F = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    HS = C // NH
    W = {"model.embed_tokens.weight": rng.normal(0, 0.3 if tied else 1, (V, C)),
         "model.norm.weight": 1 + 0.1 * rng.normal(0, 1, C)}
    if not tied:
        W["lm_head.weight"] = rng.normal(0, 0.3, (V, C))
    shapes = {"self_attn.q_proj": (NH * HS, C), "self_attn.k_proj": (NKV * HS, C), "self_attn.v_proj": (NKV * HS, C),
              "self_attn.o_proj": (C, NH * HS), "mlp.gate_proj": (F, C), "mlp.up_proj": (F, C), "mlp.down_proj": (C, F)}
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        W[p + "input_layernorm.weight"] = 1 + 0.1 * rng.normal(0, 1, C)
        W[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(0, 1, C)
        for n, s in shapes.items():
            W[p + n + ".weight"] = rng.normal(0, 1.5 / np.sqrt(s[1]), s)
            if bias and n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                W[p + n + ".bias"] = rng.normal(0, 0.5, s[0])
    return W

def gpt2_weights(rng, cfg):
    C, F, NP = cfg["n_embd"], cfg["n_inner"], cfg["n_positions"]
    W = {"wte.weight": rng.normal(0, 0.5, (V, C)), "wpe.weight": rng.normal(0, 0.1, (NP, C)),
         "ln_f.weight": 1 + 0.1 * rng.normal(0, 1, C), "ln_f.bias": 0.1 * rng.normal(0, 1, C)}
    shapes = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, F), "mlp.c_proj": (F, C)}
    for l in range(cfg["n_layer"]):
        p = "h.%d." % l
        for n in ("ln_1", "ln_2"):
            W[p + n + ".weight"] = 1 + 0.1 * rng.normal(0, 1, C)
            W[p + n + ".bias"] = 0.1 * rng.normal(0, 1, C)
        for n, s in shapes.items():
            W[p + n + ".weight"] = rng.normal(0, 1.5 / np.sqrt(s[0]), s)
            W[p + n + ".bias"] = 0.1 * rng.normal(0, 1, s[1])
    return W

def nll_rows(logits, rows, targets):
    out = []
    for r, t in zip(rows, targets):
        z = logits[r]
        m = z.max()
        out.append(float(m + np.log(np.exp(z - m).sum()) - z[t]))
    return out

def make(outdir, tokjson, name, cfg, W, dtype, fwd, shards=1, eos=2):
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(tokjson, os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    stored, seen = store(W, dtype)
    names = sorted(stored)
    if shards == 1:
        write_st(os.path.join(d, "model.safetensors"), stored)
    else:
        wm, parts = {}, [names[i::shards] for i in range(shards)]
        for i, part in enumerate(parts):
            fn = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
            write_st(os.path.join(d, fn), {k: stored[k] for k in part})
            wm.update({k: fn for k in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f, indent=2)
    rng = np.random.default_rng(7)
    seqs = []
    for n_in, n_tg in ((9, 4), (23, 6), (14, 3)):
        inp = [1] + list(rng.integers(3, V, n_in - 1))
        tg = list(rng.integers(3, V, n_tg - 1)) + [eos]
        ids = inp + tg
        lg = fwd(seen, cfg, np.array(ids))
        rows = list(range(len(inp) - 1, len(ids) - 1))
        seqs.append({"input": [int(i) for i in inp], "target": [int(t) for t in tg],
                     "token_nll": nll_rows(lg, rows, tg)})
    s0 = seqs[0]
    logits0 = fwd(seen, cfg, np.array(s0["input"] + s0["target"]))
    gen, ids = [], list(s0["input"])
    for _ in range(6):
        t = int(np.argmax(fwd(seen, cfg, np.array(ids))[-1]))
        gen.append(t)
        ids.append(t)
        if t == eos:
            break
    with open(os.path.join(d, "ref.json"), "w") as f:
        json.dump({"seqs": seqs, "logits0": [float(v) for v in logits0.ravel()], "gen": gen}, f)

def main():
    outdir, tokjson = sys.argv[1], sys.argv[2]
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 96, "num_hidden_layers": 2, "vocab_size": V, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2}
    cfg = dict(base, rope_theta=500000.0, tie_word_embeddings=False,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    make(outdir, tokjson, "llama3", cfg, llama_weights(np.random.default_rng(1), cfg, False, False), "F32", llama_forward)
    cfg = dict(base, model_type="qwen2", tie_word_embeddings=True, rope_theta=1000000.0, eos_token_id=[2, 0])
    make(outdir, tokjson, "qwen2", cfg, llama_weights(np.random.default_rng(2), cfg, True, True), "BF16", llama_forward)
    cfg = dict(base, model_type="mistral", tie_word_embeddings=False, sliding_window=4, num_key_value_heads=1)
    make(outdir, tokjson, "mistral", cfg, llama_weights(np.random.default_rng(3), cfg, False, False), "F16",
         llama_forward, shards=2)
    cfg = {"model_type": "gpt2", "n_embd": 32, "n_head": 4, "n_layer": 2, "n_inner": 48, "n_positions": 64,
           "vocab_size": V, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
           "bos_token_id": 1, "eos_token_id": 2}
    make(outdir, tokjson, "gpt2", cfg, gpt2_weights(np.random.default_rng(4), cfg), "F16", gpt2_forward)

main()
