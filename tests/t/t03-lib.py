#!/usr/bin/python3
"""t03-lib.py — fixtures and naive references for the lora-merge / lora-apply
shell tests (t03*.sh). Needs numpy (Debian python3-numpy); the tests skip
when it is missing.

  gen-model DIR --arch llama|t5|gpt2|gpt2-small-lora [--dtype f32|bf16|f16] [--shards N] [--seed S]
            [--hidden H]
      a Hugging Face-shaped model directory (config.json, tokenizer files,
      model.safetensors or shards + model.safetensors.index.json), random weights
  gen-big DIR --gb G
      a Llama-shaped model of about G gigabytes (f32; benchmark)
  gen-adapter DIR --model MODELDIR --modules a,b --r R --alpha A [--rslora] [--seed S]
      a PEFT LoRA directory for MODELDIR (fan_in_fan_out for gpt2)
  check-fold MODEL OUT [--scale S] ADAPTER[:WEIGHT]...
      OUT must equal MODEL with every adapter folded, computed naively in
      float64: changed tensors within f32 rounding (f32) or one ulp (bf16/f16),
      every other tensor and every non-weight file byte-identical
  cmp-golden OUT GOLDEN.safetensors
      the tensors of GOLDEN (PEFT merge_and_unload) equal OUT's to 1e-6
  weights NAME=W,... [--method M] [--id N]
      write one `kind: weights` stream record on stdout (msgpack)
  dump < stream
      print each record as one line of JSON (binary data as its length)
  check-delta STREAM ADAPTER[:WEIGHT]...
      the first adapter record of STREAM has ΔW = Σ w ΔW_i per module (1e-5)
  batch < commands
      run one command per line (fixtures without numpy's start-up each time)
"""
import json
import os
import struct
import sys

np = None  # numpy, imported on first use: weights/dump must start fast


def need_numpy():
    global np
    if np is None:
        import numpy
        np = numpy


def read_header(path):
    """The JSON header of a safetensors file (without reading the data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return hdr


def read_st(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    hdr = json.loads(buf[8 : 8 + n])
    meta = hdr.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, t in hdr.items():
        b, e = t["data_offsets"]
        out[name] = (t["dtype"], tuple(t["shape"]), buf[base + b : base + e])
    return out, meta


def to_f64(dtype, shape, raw):
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        a = u.view(np.float32)
    else:
        a = np.frombuffer(raw, dtype={"F32": np.float32, "F16": np.float16}[dtype])
    return a.astype(np.float64).reshape(shape)


def from_f32(dtype, a):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.tobytes()
    if dtype == "F16":
        return a.astype(np.float16).tobytes()
    u = a.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return u.tobytes()


def write_st(path, tensors, meta=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    hdr = {}
    if meta is not None:
        hdr["__metadata__"] = meta
    off = 0
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for t in tensors:
            f.write(t[3])


def arch_shapes(arch, hidden=48):
    """(config, [(name, shape)]) of a tiny model of each family."""
    s = []
    if arch == "llama":
        H, F, V, KV = hidden, 80, 64, hidden // 2
        cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H,
               "intermediate_size": F, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": V, "rms_norm_eps": 1e-5}
        s.append(("model.embed_tokens.weight", (V, H)))
        for i in range(2):
            p = "model.layers.%d." % i
            s += [(p + "self_attn.q_proj.weight", (H, H)), (p + "self_attn.k_proj.weight", (KV, H)),
                  (p + "self_attn.v_proj.weight", (KV, H)), (p + "self_attn.o_proj.weight", (H, H)),
                  (p + "mlp.gate_proj.weight", (F, H)), (p + "mlp.up_proj.weight", (F, H)),
                  (p + "mlp.down_proj.weight", (H, F)), (p + "input_layernorm.weight", (H,)),
                  (p + "post_attention_layernorm.weight", (H,))]
        s += [("model.norm.weight", (H,)), ("lm_head.weight", (V, H))]
    elif arch == "t5":
        D, F, V = 32, 64, 64
        cfg = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": D,
               "d_ff": F, "num_layers": 1, "num_decoder_layers": 1, "vocab_size": V,
               "feed_forward_proj": "gated-gelu"}
        s.append(("shared.weight", (V, D)))
        for stack, atts in (("encoder", ["SelfAttention"]), ("decoder", ["SelfAttention", "EncDecAttention"])):
            p = stack + ".block.0.layer."
            for li, att in enumerate(atts):
                for w in "qkvo":
                    s.append((p + "%d.%s.%s.weight" % (li, att, w), (D, D)))
                s.append((p + "%d.layer_norm.weight" % li, (D,)))
            li = len(atts)
            s += [(p + "%d.DenseReluDense.wi_0.weight" % li, (F, D)),
                  (p + "%d.DenseReluDense.wi_1.weight" % li, (F, D)),
                  (p + "%d.DenseReluDense.wo.weight" % li, (D, F)),
                  (p + "%d.layer_norm.weight" % li, (D,)),
                  (stack + ".final_layer_norm.weight", (D,))]
        s.append(("lm_head.weight", (V, D)))
    elif arch == "gpt2-small-lora":
        # GPT-2 small's shapes, only the weights the real LoRA adapters in
        # ../shared/data target (c_attn, attn.c_proj, mlp.c_proj), plus ln_f
        C = 768
        cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": C,
               "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}
        for i in range(12):
            p = "transformer.h.%d." % i
            s += [(p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_proj.weight", (C, C)),
                  (p + "mlp.c_proj.weight", (4 * C, C))]
        s += [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]
    elif arch == "gpt2":
        C, V = 32, 64
        cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": C,
               "n_layer": 2, "n_head": 4, "vocab_size": V, "n_positions": 16}
        s += [("transformer.wte.weight", (V, C)), ("transformer.wpe.weight", (16, C))]
        for i in range(2):
            p = "transformer.h.%d." % i
            s += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                  (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
                  (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                  (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                  (p + "mlp.c_fc.weight", (C, 4 * C)), (p + "mlp.c_fc.bias", (4 * C,)),
                  (p + "mlp.c_proj.weight", (4 * C, C)), (p + "mlp.c_proj.bias", (C,))]
        s += [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]
    else:
        sys.exit("unknown arch " + arch)
    return cfg, s


def save_model(d, cfg, tensors, shards):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True}, f)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}, f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 512}, f)
    if shards <= 1:
        write_st(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})
        return
    per = (len(tensors) + shards - 1) // shards
    wm, total = {}, 0
    for k in range(shards):
        name = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
        part = tensors[k * per : (k + 1) * per]
        write_st(os.path.join(d, name), part, {"format": "pt"})
        for t in part:
            wm[t[0]] = name
            total += len(t[3])
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


def gen_model(args):
    d = args[0]
    opt = dict(zip(args[1::2], args[2::2]))
    arch, dtype = opt.get("--arch", "llama"), opt.get("--dtype", "f32").upper()
    rng = np.random.default_rng(int(opt.get("--seed", "1")))
    cfg, shapes = arch_shapes(arch, int(opt.get("--hidden", "48")))
    cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    tensors = []
    for name, shape in shapes:
        a = rng.standard_normal(shape, dtype=np.float32) * 0.5
        tensors.append((name, dtype, shape, from_f32(dtype, a)))
    save_model(d, cfg, tensors, int(opt.get("--shards", "1")))


def gen_big(args):
    d = args[0]
    opt = dict(zip(args[1::2], args[2::2]))
    gb = float(opt.get("--gb", "1"))
    H, F = 1024, 2816
    per_layer = (4 * H * H + 3 * H * F) * 4
    layers = max(1, int(gb * 1e9 / per_layer))
    cfg = {"model_type": "llama", "hidden_size": H, "intermediate_size": F,
           "num_hidden_layers": layers, "num_attention_heads": 16, "vocab_size": 256}
    rng = np.random.default_rng(0)
    block = rng.standard_normal(H * F).astype(np.float32)
    tensors = []
    for i in range(layers):
        p = "model.layers.%d." % i
        for n, shape in (("self_attn.q_proj", (H, H)), ("self_attn.k_proj", (H, H)),
                         ("self_attn.v_proj", (H, H)), ("self_attn.o_proj", (H, H)),
                         ("mlp.gate_proj", (F, H)), ("mlp.up_proj", (F, H)), ("mlp.down_proj", (H, F))):
            k = shape[0] * shape[1]
            tensors.append((p + n + ".weight", "F32", shape, block[:k].tobytes()))
    save_model(d, cfg, tensors, max(1, layers // 8))


def gen_adapter(args):
    d = args[0]
    opt = {}
    flags = set()
    i = 1
    while i < len(args):
        if args[i] == "--rslora":
            flags.add("rslora")
            i += 1
        else:
            opt[args[i]] = args[i + 1]
            i += 2
    model = opt["--model"]
    r, alpha = int(opt["--r"]), float(opt["--alpha"])
    rng = np.random.default_rng(int(opt.get("--seed", "2")))
    with open(os.path.join(model, "config.json")) as f:
        mt = json.load(f).get("model_type")
    shapes = {}
    for fn in sorted(os.listdir(model)):
        if fn.endswith(".safetensors"):
            for n, t in read_header(os.path.join(model, fn)).items():
                shapes[n] = tuple(t["shape"])
    want = opt["--modules"].split(",")
    mods = [n[: -len(".weight")] for n in shapes if n.endswith(".weight") and len(shapes[n]) == 2
            and n.split(".")[-2] in want]
    tensors = []
    for m in mods:
        shp = shapes[m + ".weight"]
        out, inn = (shp[1], shp[0]) if mt == "gpt2" else shp
        a = rng.standard_normal((r, inn)).astype(np.float32) / np.sqrt(inn)
        b = rng.standard_normal((out, r)).astype(np.float32) * 0.3
        tensors.append(("base_model.model.%s.lora_A.weight" % m, "F32", (r, inn), a.tobytes()))
        tensors.append(("base_model.model.%s.lora_B.weight" % m, "F32", (out, r), b.tobytes()))
    os.makedirs(d, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": want,
           "use_rslora": "rslora" in flags, "fan_in_fan_out": mt == "gpt2", "bias": "none",
           "base_model_name_or_path": model, "rank_pattern": {}, "alpha_pattern": {},
           "task_type": "CAUSAL_LM", "use_dora": False, "modules_to_save": None}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_st(os.path.join(d, "adapter_model.safetensors"), tensors, {"format": "pt"})


def model_tensors(d):
    out = {}
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    for fn in files:
        ts, meta = read_st(os.path.join(d, fn))
        for n, t in ts.items():
            out[n] = (fn,) + t
    return out


def check_fold(args):
    model, outd = args[0], args[1]
    rest = args[2:]
    scale = 1.0
    if rest and rest[0] == "--scale":
        scale = float(rest[1])
        rest = rest[2:]
    with open(os.path.join(model, "config.json")) as f:
        gpt2 = json.load(f).get("model_type") == "gpt2"
    base, got = model_tensors(model), model_tensors(outd)
    bad = 0
    if sorted(base) != sorted(got):
        print("tensor names differ")
        return 1
    delta = {}
    for spec in rest:
        path, _, w = spec.partition(":")
        w = float(w) if w else 1.0
        with open(os.path.join(path, "adapter_config.json")) as f:
            cfg = json.load(f)
        ts, _ = read_st(os.path.join(path, "adapter_model.safetensors"))
        for n, t in ts.items():
            if not n.endswith(".lora_A.weight"):
                continue
            m = n[len("base_model.model.") : -len(".lora_A.weight")]
            A = to_f64(*t)
            B = to_f64(*ts[n.replace("lora_A", "lora_B")])
            r = A.shape[0]
            s = cfg["lora_alpha"] / (np.sqrt(r) if cfg.get("use_rslora") else r)
            delta.setdefault(m + ".weight", []).append((scale * w * s, A, B))
    for n, (fn, dt, shape, raw) in base.items():
        gfn, gdt, gshape, graw = got[n]
        if (fn, dt, shape) != (gfn, gdt, gshape):
            print("%s: file/dtype/shape %s vs %s" % (n, (fn, dt, shape), (gfn, gdt, gshape)))
            bad += 1
            continue
        if n not in delta:
            if raw != graw:
                print("%s: untouched tensor changed" % n)
                bad += 1
            continue
        dw = sum(k * (B @ A) for k, A, B in delta[n])
        if gpt2:
            dw = dw.T
        want = to_f64(dt, shape, raw) + dw
        g = to_f64(gdt, gshape, graw)
        if dt == "F32":
            tol = 4e-7 * np.abs(want) + 1e-6 * np.abs(want).max()
        else:
            ulp = 2.0 ** -7 if dt == "BF16" else 2.0 ** -10
            tol = ulp * np.abs(want) + 1e-6 * np.abs(want).max()
        d = np.abs(g - want)
        if not (d <= tol).all():
            print("%s: max diff %g (tol %g)" % (n, d.max(), tol.max()))
            bad += 1
        else:
            print("ok %s: max diff %.3g, max |dW| %.3g" % (n, d.max(), np.abs(dw).max()))
    for fn in sorted(os.listdir(model)):
        p = os.path.join(model, fn)
        if fn.endswith(".safetensors") or fn.startswith(".") or not os.path.isfile(p):
            continue
        q = os.path.join(outd, fn)
        if not os.path.isfile(q) or open(p, "rb").read() != open(q, "rb").read():
            print("%s: not copied byte for byte" % fn)
            bad += 1
    for t in delta:
        if t not in base:
            print("%s: not in the model" % t)
            bad += 1
    print("%d bad" % bad)
    return 1 if bad else 0


def cmp_golden(args):
    got = model_tensors(args[0])
    gold, _ = read_st(args[1])
    bad = 0
    for n, t in gold.items():
        g = to_f64(*got[n][1:])
        w = to_f64(*t)
        d = np.abs(g - w).max()
        tol = 1e-6 * np.abs(w).max()
        print("%s %s: max diff %.3g (tol %.3g)" % ("ok" if d <= tol else "BAD", n, d, tol))
        bad += d > tol
    return 1 if bad else 0


def mp_pack(v):
    """A minimal msgpack encoder for the record subset of lora-stream(5)."""
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        return b"\xc6" + struct.pack(">I", len(v)) + bytes(v)
    if isinstance(v, list):
        return b"\xdd" + struct.pack(">I", len(v)) + b"".join(mp_pack(x) for x in v)
    if isinstance(v, dict):
        return b"\xdf" + struct.pack(">I", len(v)) + b"".join(mp_pack(k) + mp_pack(x) for k, x in v.items())
    raise TypeError(type(v))


KEEP_BIN = False


class BinData(bytes):
    pass


def mp_unpack(buf, i):
    c = buf[i]
    i += 1
    if c <= 0x7F:
        return c, i
    if 0x80 <= c <= 0x8F or c in (0xDE, 0xDF):
        n, i = (c & 0x0F, i) if c <= 0x8F else ((struct.unpack(">H", buf[i:i+2])[0], i + 2) if c == 0xDE else (struct.unpack(">I", buf[i:i+4])[0], i + 4))
        d = {}
        for _ in range(n):
            k, i = mp_unpack(buf, i)
            v, i = mp_unpack(buf, i)
            d[k] = v
        return d, i
    if 0x90 <= c <= 0x9F or c in (0xDC, 0xDD):
        n, i = (c & 0x0F, i) if c <= 0x9F else ((struct.unpack(">H", buf[i:i+2])[0], i + 2) if c == 0xDC else (struct.unpack(">I", buf[i:i+4])[0], i + 4))
        a = []
        for _ in range(n):
            v, i = mp_unpack(buf, i)
            a.append(v)
        return a, i
    if 0xA0 <= c <= 0xBF or c in (0xD9, 0xDA, 0xDB):
        if c <= 0xBF:
            n = c & 0x1F
        else:
            w = {0xD9: 1, 0xDA: 2, 0xDB: 4}[c]
            n = int.from_bytes(buf[i:i+w], "big")
            i += w
        return buf[i:i+n].decode(), i + n
    if c in (0xC4, 0xC5, 0xC6):
        w = {0xC4: 1, 0xC5: 2, 0xC6: 4}[c]
        n = int.from_bytes(buf[i:i+w], "big")
        i += w
        return (BinData(buf[i:i+n]) if KEEP_BIN else "<bin %d>" % n), i + n
    if c == 0xC0:
        return None, i
    if c in (0xC2, 0xC3):
        return c == 0xC3, i
    if c == 0xCA:
        return struct.unpack(">f", buf[i:i+4])[0], i + 4
    if c == 0xCB:
        return struct.unpack(">d", buf[i:i+8])[0], i + 8
    if c in (0xCC, 0xCD, 0xCE, 0xCF):
        w = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[c]
        return int.from_bytes(buf[i:i+w], "big"), i + w
    if c in (0xD0, 0xD1, 0xD2, 0xD3):
        w = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}[c]
        return int.from_bytes(buf[i:i+w], "big", signed=True), i + w
    if c >= 0xE0:
        return c - 256, i
    raise ValueError("msgpack byte 0x%02x" % c)


def weights(args):
    names, w = [], []
    for kv in args[0].split(","):
        k, _, v = kv.partition("=")
        names.append(k)
        w.append(float(v))
    rec = {"kind": "weights", "names": names, "w": w}
    opt = dict(zip(args[1::2], args[2::2]))
    if "--method" in opt:
        rec["method"] = opt["--method"]
    if "--id" in opt:
        rec["id"] = int(opt["--id"])
    sys.stdout.buffer.write(mp_pack(rec))


def dump(args):
    buf = sys.stdin.buffer.read()
    i = 0
    while i < len(buf):
        v, i = mp_unpack(buf, i)
        print(json.dumps(v, sort_keys=True))


def batch(args):
    """One command per line on stdin (saves numpy's start-up per command)."""
    for line in sys.stdin:
        words = line.split()
        if words:
            rc = run(words[0], words[1:])
            if rc:
                return rc
    return 0


def run(cmd, args):
    if cmd not in ("weights", "dump"):
        need_numpy()
    fn = {"batch": batch, "gen-model": gen_model, "gen-big": gen_big, "gen-adapter": gen_adapter,
          "check-fold": check_fold, "cmp-golden": cmp_golden, "weights": weights, "check-delta": check_delta,
          "dump": dump}[cmd]
    return fn(args) or 0


def check_delta(args):
    """The first adapter record of STREAM has, per module, ΔW = Σ w_i ΔW_i of
    the PEFT adapters given (f32 rounding: 1e-5 of the largest entry)."""
    global KEEP_BIN
    KEEP_BIN = True
    with open(args[0], "rb") as f:
        rec, _ = mp_unpack(f.read(), 0)
    want = {}
    for spec in args[1:]:
        path, _, w = spec.partition(":")
        w = float(w) if w else 1.0
        with open(os.path.join(path, "adapter_config.json")) as f:
            cfg = json.load(f)
        ts, _ = read_st(os.path.join(path, "adapter_model.safetensors"))
        for n, t in ts.items():
            if n.endswith(".lora_A.weight"):
                m = n[len("base_model.model.") : -len(".lora_A.weight")]
                A, B = to_f64(*t), to_f64(*ts[n.replace("lora_A", "lora_B")])
                r = A.shape[0]
                sc = cfg["lora_alpha"] / (np.sqrt(r) if cfg.get("use_rslora") else r)
                want[m] = want.get(m, 0) + w * sc * (B @ A)
    bad = 0
    got = {}
    for t in rec["tensors"]:
        def arr(x):
            return to_f64(x["dtype"].upper(), tuple(x["shape"]), bytes(x["data"]))
        r = t.get("r", rec["r"])
        alpha = t.get("alpha", rec["alpha"])
        sc = alpha / (np.sqrt(r) if rec.get("rslora") else r)
        got[t["module"]] = sc * (arr(t["b"]) @ arr(t["a"]))
    for m in sorted(set(want) | set(got)):
        if m not in got:
            print("%s: not in the merge" % m)
            bad += 1
            continue
        if m not in want:  # only zero-weight adapters have it: ΔW must be 0
            want[m] = np.zeros_like(got[m])
        d = np.abs(got[m] - want[m]).max()
        tol = 1e-5 * np.abs(want[m]).max()
        print("%s %s: max diff %.3g (tol %.3g)" % ("ok" if d <= tol else "BAD", m, d, tol))
        bad += d > tol
    return 1 if bad else 0


def main():
    sys.exit(run(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
