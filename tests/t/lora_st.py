#!/usr/bin/env python3
"""lora_st.py -- test helper for the lora-pack tests (tests/t/t01*.sh).

Python standard library only (no numpy, no msgpack module), so it runs on any
python3. Subcommands:

  cmp A B [TOL]   A, B: PEFT directories or .safetensors files. Same tensor
                  names (the ".lora_A.<adapter>.weight" form is read as
                  ".lora_A.weight"), shapes, and values: bit-identical bytes
                  when TOL is absent, else |a-b| <= TOL*(1+|a|) elementwise
                  after widening to float (dtypes may then differ).
  dtype A         print "NAME DTYPE" per tensor of A.
  cfg A B         adapter_config.json equivalence: peft_type, r, lora_alpha,
                  use_rslora, fan_in_fan_out, base_model_name_or_path,
                  target_modules (as sets), and the per-module (r, alpha)
                  that rank_pattern / alpha_pattern resolve to (PEFT's rule:
                  re.match(".*\\." + key + "$", module)), for every module in
                  A's safetensors.
  fixture DIR KIND
                  write a small PEFT adapter: KIND is one of mixed (f32,
                  rank_pattern + alpha_pattern), rslora (f16, use_rslora),
                  bf16 (bf16, fan_in_fan_out, GPT-2 style names), oldkeys
                  (".lora_A.default.weight" keys), big (512 KB of
                  tensors), tiny<N> (f32, seed N).
  mkstream OUT EXPR
                  write EXPR (a Python expression: a list of dicts; the
                  names nan, inf and z(n) = n zero bytes are defined) as a
                  lora stream: each dict one msgpack map; bytes -> bin,
                  float -> float64.
  sample N SEED M [COUNT]
                  print the 0-based indices (in input order) of the N of M
                  adapters that lora-pack --sample N --seed SEED keeps: an
                  independent implementation of the generator its man page
                  documents (splitmix64 -> xoshiro256**, Algorithm R). With
                  COUNT: for seeds SEED..SEED+COUNT-1, how often each index
                  is kept.
  dump FILE       print each record of a stream as a Python literal, with
                  bin data shown as <bin N bytes>.
"""
import json
import math
import os
import re
import struct
import sys

DT = {"F32": ("f", 4), "F16": ("e", 2), "BF16": (None, 2)}


def st_path(p):
    return os.path.join(p, "adapter_model.safetensors") if os.path.isdir(p) else p


def st_read(p):
    with open(st_path(p), "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    hdr.pop("__metadata__", None)
    out = {}
    for name, t in hdr.items():
        b, e = t["data_offsets"]
        key = re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", name)
        out[key] = (t["dtype"], tuple(t["shape"]), raw[8 + n + b:8 + n + e])
    return out


def values(dtype, data):
    if dtype == "BF16":
        k = len(data) // 2
        u = struct.unpack("<%dH" % k, data)
        return [struct.unpack("<f", struct.pack("<I", x << 16))[0] for x in u]
    fmt, size = DT[dtype]
    return list(struct.unpack("<%d%s" % (len(data) // size, fmt), data))


def cmd_cmp(a, b, tol=None):
    ta, tb = st_read(a), st_read(b)
    bad = 0
    if set(ta) != set(tb):
        print("tensor names differ: only in A %s, only in B %s" %
              (sorted(set(ta) - set(tb))[:5], sorted(set(tb) - set(ta))[:5]))
        return 1
    worst = 0.0
    for k in sorted(ta):
        (da, sa, xa), (db, sb, xb) = ta[k], tb[k]
        if sa != sb:
            print("%s: shape %s vs %s" % (k, sa, sb))
            bad += 1
        elif tol is None:
            if da != db or xa != xb:
                print("%s: %s vs %s, bytes differ" % (k, da, db))
                bad += 1
        else:
            for u, v in zip(values(da, xa), values(db, xb)):
                d = abs(u - v)
                if not d <= float(tol) * (1 + abs(u)):
                    print("%s: %r vs %r" % (k, u, v))
                    bad += 1
                    break
                worst = max(worst, d)
    print("%d tensors compared, %d differ%s" %
          (len(ta), bad, "" if tol is None else ", max abs diff %.3g" % worst))
    return 1 if bad else 0


def cfg_read(p):
    d = p if os.path.isdir(p) else os.path.dirname(p) or "."
    with open(os.path.join(d, "adapter_config.json")) as f:
        return json.load(f)


def resolve(cfg, module):
    keys = list((cfg.get("rank_pattern") or {}).keys()) + list((cfg.get("alpha_pattern") or {}).keys())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    for k in keys:
        if re.match(r"(.*\.)?" + k + "$", module):
            r = (cfg.get("rank_pattern") or {}).get(k, r)
            alpha = (cfg.get("alpha_pattern") or {}).get(k, alpha)
            break
    return r, alpha


def cmd_cfg(a, b):
    ca, cb = cfg_read(a), cfg_read(b)
    bad = 0
    for k in ("peft_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out",
              "base_model_name_or_path"):
        if ca.get(k) != cb.get(k):
            print("%s: %r vs %r" % (k, ca.get(k), cb.get(k)))
            bad += 1
    if set(ca.get("target_modules") or []) != set(cb.get("target_modules") or []):
        print("target_modules: %r vs %r" % (ca.get("target_modules"), cb.get("target_modules")))
        bad += 1
    mods = sorted({re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", k) for k in st_read(a)})
    for m in mods:
        if resolve(ca, m) != resolve(cb, m):
            print("module %s: (r, alpha) %r vs %r" % (m, resolve(ca, m), resolve(cb, m)))
            bad += 1
    print("config: %d keys and %d modules compared, %d differ" % (7, len(mods), bad))
    return 1 if bad else 0


def encode_vals(dtype, vals):
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in vals)
    fmt, _ = DT[dtype]
    return struct.pack("<%d%s" % (len(vals), fmt), *vals)


def st_write(path, tensors, meta=None):
    # tensors: {name: (dtype, shape, bytes)}; order as the safetensors library
    # does: by dtype size descending, then name.
    names = sorted(tensors, key=lambda k: (-DT[tensors[k][0]][1], k))
    hdr, off, body = {}, 0, b""
    if meta:
        hdr["__metadata__"] = meta
    for k in names:
        dt, shape, data = tensors[k]
        hdr[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
        body += data
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + body)


def cmd_fixture(d, kind):
    seed = 1
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
           "base_model_name_or_path": "tiny-llama", "fan_in_fan_out": False,
           "use_rslora": False, "use_dora": False, "lora_bias": False,
           "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
           "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    dtype, layers, suffix = "F32", 2, ".weight"
    shapes = {"q_proj": (16, 16), "v_proj": (8, 16)}   # (out, in)
    prefix = "base_model.model.model.layers.%d.self_attn.%s"
    if kind == "mixed":
        cfg["rank_pattern"] = {"layers.1.self_attn.q_proj": 2}
        cfg["alpha_pattern"] = {"v_proj": 3}
    elif kind == "rslora":
        dtype, cfg["use_rslora"], cfg["r"], cfg["lora_alpha"] = "F16", True, 6, 12
        seed = 2
    elif kind == "bf16":
        dtype, cfg["fan_in_fan_out"] = "BF16", True
        cfg["target_modules"], cfg["base_model_name_or_path"] = ["c_attn"], "tiny-gpt2"
        shapes, prefix = {"c_attn": (24, 8)}, "base_model.model.transformer.h.%d.attn.%s"
        seed = 3
    elif kind == "oldkeys":
        suffix = ".default.weight"
        seed = 4
    elif kind == "big":
        shapes, layers, cfg["r"], cfg["target_modules"] = {"q_proj": (512, 512)}, 1, 64, ["q_proj"]
        seed = 5
    elif kind.startswith("tiny"):
        seed = 10 + int(kind[4:])
        layers = 1
    else:
        raise SystemExit("unknown fixture kind " + kind)
    state = [seed * 2654435761 % 2**32]

    def rnd():
        state[0] = (state[0] * 1664525 + 1013904223) % 2**32
        return (state[0] / 2**32 - 0.5) * 0.25

    tensors = {}
    for layer in range(layers):
        for m, (out, inp) in shapes.items():
            name = prefix % (layer, m)
            r, _ = resolve(cfg, name[len("base_model.model."):])
            for which, shape in (("A", (r, inp)), ("B", (out, r))):
                vals = [rnd() for _ in range(shape[0] * shape[1])]
                tensors[name + ".lora_" + which + suffix] = (dtype, shape, encode_vals(dtype, vals))
    os.makedirs(d, exist_ok=True)
    st_write(os.path.join(d, "adapter_model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    return 0


def mp_enc(o):
    if o is None:
        return b"\xc0"
    if o is True:
        return b"\xc3"
    if o is False:
        return b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 128:
            return bytes([o])
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        b = o.encode()
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(o, (bytes, bytearray)):
        return b"\xc6" + struct.pack(">I", len(o)) + bytes(o)
    if isinstance(o, list):
        return b"\xdd" + struct.pack(">I", len(o)) + b"".join(mp_enc(x) for x in o)
    if isinstance(o, dict):
        return b"\xdf" + struct.pack(">I", len(o)) + b"".join(mp_enc(k) + mp_enc(v) for k, v in o.items())
    raise TypeError(type(o))


def mp_dec(b, i):
    t = b[i]
    if t <= 0x7f:
        return t, i + 1
    if t >= 0xe0:
        return t - 256, i + 1
    if 0x80 <= t <= 0x8f:
        return mp_map(b, i + 1, t & 15)
    if 0x90 <= t <= 0x9f:
        return mp_arr(b, i + 1, t & 15)
    if 0xa0 <= t <= 0xbf:
        n = t & 31
        return b[i + 1:i + 1 + n].decode(), i + 1 + n
    simple = {0xc0: None, 0xc2: False, 0xc3: True}
    if t in simple:
        return simple[t], i + 1
    ints = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h", 0xd2: ">i",
            0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
    if t in ints:
        s = struct.calcsize(ints[t])
        return struct.unpack(ints[t], b[i + 1:i + 1 + s])[0], i + 1 + s
    lens = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}
    if t in lens:
        s = lens[t]
        n = int.from_bytes(b[i + 1:i + 1 + s], "big")
        raw = b[i + 1 + s:i + 1 + s + n]
        return (("<bin %d bytes>" % n) if t in (0xc4, 0xc5, 0xc6) else raw.decode()), i + 1 + s + n
    if t in (0xdc, 0xdd, 0xde, 0xdf):
        s = 2 if t in (0xdc, 0xde) else 4
        n = int.from_bytes(b[i + 1:i + 1 + s], "big")
        return (mp_arr if t in (0xdc, 0xdd) else mp_map)(b, i + 1 + s, n)
    raise ValueError("byte 0x%02x at %d" % (t, i))


def mp_arr(b, i, n):
    out = []
    for _ in range(n):
        v, i = mp_dec(b, i)
        out.append(v)
    return out, i


def mp_map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = mp_dec(b, i)
        v, i = mp_dec(b, i)
        out[k] = v
    return out, i


M64 = 2**64 - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


def cmd_sample(n, seed, m, count=None):
    if count is not None:
        hits = [0] * int(m)
        for sd in range(int(seed), int(seed) + int(count)):
            for i in sample(int(n), sd, int(m)):
                hits[i] += 1
        print(" ".join(str(h) for h in hits))
        return 0
    print(" ".join(str(i) for i in sample(int(n), int(seed), int(m))))
    return 0


def sample(n, seed, m):
    st, s = seed & M64, []
    for _ in range(4):
        st, z = splitmix64(st)
        s.append(z)

    def nxt():
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def below(k):
        threshold = (2**64 - k) % k
        while True:
            x = nxt()
            if x >= threshold:
                return x % k

    slots = []
    for k in range(m):
        if k < n:
            slots.append(k)
        else:
            j = below(k + 1)
            if j < n:
                slots[j] = k
    return sorted(slots)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "cmp":
        return cmd_cmp(*args)
    if cmd == "dtype":
        for k, (dt, _, _) in sorted(st_read(args[0]).items()):
            print(k, dt)
        return 0
    if cmd == "cfg":
        return cmd_cfg(*args)
    if cmd == "fixture":
        return cmd_fixture(*args)
    if cmd == "sample":
        return cmd_sample(*args)
    if cmd == "mkstream":
        recs = eval(args[1], {"__builtins__": {}},
                    {"nan": math.nan, "inf": math.inf, "z": lambda n: bytes(n)})
        with open(args[0], "wb") as f:
            for r in recs:
                f.write(mp_enc(r))
        return 0
    if cmd == "dump":
        b = open(args[0], "rb").read()
        i = 0
        while i < len(b):
            v, i = mp_dec(b, i)
            print(repr(v))
        return 0
    print("unknown command " + cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
