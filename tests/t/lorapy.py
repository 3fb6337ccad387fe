#!/usr/bin/python3
"""lorapy.py -- the one Python helper of the shell tests (tests/t/*.sh) and
bench/bench_apply.sh: lora streams (msgpack) and safetensors files read and
written independently of the C code under test, fixtures, and the naive
references the tests compare the tools against.

Debian's /usr/bin/python3; numpy (python3-numpy) is imported only by the
commands that do arithmetic on tensor values, so the stream commands start
fast. Usage: lorapy.py COMMAND ARGS...; exit 0 when a check holds, 1 when it
does not (with the reason on stdout), 2 on bad usage.

Streams (lora-stream(5): one msgpack map per record)
  dump [--sort-keys] [FILE]
                  each record of FILE (default stdin) as one line of JSON, keys
                  in record order (or sorted), binary data shown as "<bin N>"
  mkstream OUT EXPR
                  write EXPR (a Python expression: a list of dicts; the names
                  nan, inf and z(n) = n zero bytes are defined) as a stream;
                  bytes -> bin, float -> float64, 0..127 -> fixint
  weights NAME=W,... [--id N] [--method M]
                  write one `kind: weights` record on stdout
  coproc POOL CMD...
                  start CMD with pipes, send POOL then one weights record at a
                  time and wait (30 s at most) for its score before sending the
                  next, with stdin still open: a scorer that reads ahead hangs
  check-scores STREAM [--rtol R] CLAUSE...
                  every clause about the score records of STREAM, in one
                  process; prints one line per clause and a "# max rel diff"
                  line. R (default 1e-4) is relative to the golden value.
                    count=N                 STREAM has N records
                    I:KEY=VALUE             field KEY of record I, printed as
                                            Python prints it (lists as JSON),
                                            is VALUE
                    I:KEY#=N                field KEY of record I has N items
                    I:KEY==@FILE, I:KEY!=@FILE
                                            field KEY of record I equals (does
                                            not equal) the same field of
                                            record I of stream FILE, exactly
                    I:loss~GOLDEN           loss within R of GOLDEN's (an eval
                                            JSON of golden/) token_mean_loss
                    I:per_example~GOLDEN    each per-example loss within R of
                                            GOLDEN's examples[k].loss
                    gen:P.jsonl~GOLDEN      the "prediction" of each line of
                                            P.jsonl is GOLDEN's generation text

Safetensors and PEFT directories
  cmp A B [TOL]   A, B: PEFT directories or .safetensors files. Same tensor
                  names (".lora_A.<adapter>.weight" read as ".lora_A.weight"),
                  shapes, and values: identical bytes when TOL is absent, else
                  |a-b| <= TOL*(1+|a|) elementwise (dtypes may then differ)
  dtype A         "NAME DTYPE" per tensor of A
  cfg A B         adapter_config.json equivalence: peft_type, r, lora_alpha,
                  use_rslora, fan_in_fan_out, base_model_name_or_path,
                  target_modules (as sets), and the (r, alpha) that
                  rank_pattern / alpha_pattern give every module of A
  values ORIG NEW same|f16|bf16
                  NEW has exactly the safetensors library's layout and its
                  values equal ORIG's (or their exact RNE f16 / bf16 rounding)
  ranks DIR       every lora_A of DIR has the rank adapter_config.json gives
                  its module, and the module is a target
  fixture DIR KIND
                  a small PEFT adapter: mixed (f32, rank_pattern +
                  alpha_pattern), rslora (f16), bf16 (fan_in_fan_out, GPT-2
                  names), oldkeys (".lora_A.default.weight"), big (512 KB),
                  tiny<N> (f32, seed N)
  sample N SEED M [COUNT]
                  the 0-based indices of the N of M adapters that lora-pack
                  --sample N --seed SEED keeps (splitmix64 -> xoshiro256**,
                  Algorithm R, as its man page documents); with COUNT, how
                  often each index is kept over seeds SEED..SEED+COUNT-1

Models (numpy)
  gen-model DIR [--arch llama|t5|gpt2|gpt2-small-lora] [--dtype f32|bf16|f16]
            [--shards N] [--seed S] [--hidden H]
                  a Hugging Face-shaped model directory, random weights
  gen-big DIR --gb G
                  a Llama-shaped f32 model of about G gigabytes (benchmark)
  gen-adapter DIR --model MODELDIR --modules a,b --r R --alpha A [--rslora]
            [--seed S]
                  a PEFT LoRA directory for MODELDIR (fan_in_fan_out for gpt2)
  check-fold MODEL OUT [--scale S] ADAPTER[:WEIGHT]...
                  OUT is MODEL with every adapter folded, computed in float64:
                  changed tensors within f32 rounding (one ulp for bf16/f16),
                  every other tensor and non-weight file byte-identical
  cmp-golden OUT GOLDEN.safetensors
                  GOLDEN's tensors (PEFT merge_and_unload) equal OUT's to 1e-6
  check-delta STREAM ADAPTER[:WEIGHT]...
                  the first adapter record of STREAM has, per module,
                  dW = sum w_i dW_i of the PEFT adapters (1e-5)
  batch           one command per line of stdin, in this one process
"""
import json
import math
import os
import re
import struct
import sys

np = None  # numpy, imported on first use (the stream commands start fast)


def need_numpy():
    global np
    if np is None:
        import numpy
        np = numpy


class Usage(Exception):
    pass


# ---------------------------------------------------------------- msgpack

def pack(v):
    """Encode v (None, bool, int, float, str, bytes, list, dict) as msgpack:
    small non-negative ints as fixints, other ints as int64, floats as
    float64, everything with a length in its 32-bit form."""
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return bytes([v]) if 0 <= v < 128 else b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        return b"\xc6" + struct.pack(">I", len(v)) + bytes(v)
    if isinstance(v, list):
        return b"\xdd" + struct.pack(">I", len(v)) + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        return b"\xdf" + struct.pack(">I", len(v)) + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(type(v))


INTS = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i",
        0xD3: ">q", 0xCA: ">f", 0xCB: ">d"}
LENS = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}


def unpack(buf, i, keep_bin=False):
    """Decode the msgpack value at buf[i]: (value, next index). Binary data
    is bytes with keep_bin, else the text "<bin N>"."""
    c = buf[i]
    i += 1
    if c <= 0x7F:
        return c, i
    if c >= 0xE0:
        return c - 256, i
    if c <= 0x9F or 0xDC <= c <= 0xDF:  # fixmap, fixarray, array 16/32, map 16/32
        is_map = c <= 0x8F or c >= 0xDE
        if c <= 0x9F:
            n = c & 15
        else:
            w = 2 if c in (0xDC, 0xDE) else 4
            n, i = int.from_bytes(buf[i:i + w], "big"), i + w
        items = []
        for _ in range(2 * n if is_map else n):
            v, i = unpack(buf, i, keep_bin)
            items.append(v)
        return (dict(zip(items[::2], items[1::2])) if is_map else items), i
    if c <= 0xBF:
        n = c & 31
        return buf[i:i + n].decode(), i + n
    if c in (0xC0, 0xC2, 0xC3):
        return {0xC0: None, 0xC2: False, 0xC3: True}[c], i
    if c in INTS:
        s = struct.calcsize(INTS[c])
        if len(buf) < i + s:
            raise IndexError("truncated")
        return struct.unpack(INTS[c], buf[i:i + s])[0], i + s
    if c in LENS:
        w = LENS[c]
        n = int.from_bytes(buf[i:i + w], "big")
        i += w
        if len(buf) < i + n:
            raise IndexError("truncated")
        raw = buf[i:i + n]
        if c in (0xC4, 0xC5, 0xC6):
            return (bytes(raw) if keep_bin else "<bin %d>" % n), i + n
        return raw.decode(), i + n
    raise ValueError("msgpack byte 0x%02x at %d" % (c, i - 1))


def records(buf, keep_bin=False):
    """The records of a stream buffer; stops quietly at a truncated tail."""
    i = 0
    while i < len(buf):
        try:
            v, i = unpack(buf, i, keep_bin)
        except (IndexError, struct.error):
            return
        yield v


def read_stream(path, keep_bin=False):
    with open(path, "rb") as f:
        return list(records(f.read(), keep_bin))


def weights_record(spec, wid=None, method=None):
    names, w = [], []
    for kv in spec.split(","):
        k, _, v = kv.partition("=")
        names.append(k)
        w.append(float(v))
    rec = {"kind": "weights", "names": names, "w": w}
    if wid is not None:
        rec["id"] = int(wid)
    if method:
        rec["method"] = method
    return pack(rec)


# ------------------------------------------------------------ safetensors

# the safetensors library's Dtype order: its writer sorts by it (descending)
# then by name
DTYPE_RANK = {"F32": 11, "BF16": 8, "F16": 7}
DTYPE_SIZE = {"F32": 4, "BF16": 2, "F16": 2}


class StFile:
    """A parsed safetensors file: tensors {name: (dtype, shape, raw bytes)}
    in header order, meta (the __metadata__ map or None), header (the raw
    header bytes), data (a memoryview of the data region)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            buf = f.read()
        (n,) = struct.unpack("<Q", buf[:8])
        self.header = buf[8:8 + n]
        hdr = json.loads(self.header)
        self.meta = hdr.pop("__metadata__", None)
        self.hdr = hdr
        self.data = memoryview(buf)[8 + n:]  # no copy of the whole region
        self.tensors = {}
        for name, t in hdr.items():
            b, e = t["data_offsets"]
            self.tensors[name] = (t["dtype"], tuple(t["shape"]), bytes(self.data[b:e]))


def st_path(p):
    """A PEFT directory's adapter_model.safetensors, or p itself."""
    return os.path.join(p, "adapter_model.safetensors") if os.path.isdir(p) else p


def st_read(p):
    """(tensors, meta) of a .safetensors file or PEFT directory."""
    s = StFile(st_path(p))
    return s.tensors, s.meta


def st_header(entries, meta=None):
    """The header the safetensors library writes for entries [(name, dtype,
    shape, nbytes)] in file order: compact JSON, __metadata__ first, padded
    with spaces to a multiple of 8."""
    hdr, off = {}, 0
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dtype, shape, nbytes in entries:
        hdr[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    h = json.dumps(hdr, separators=(",", ":"), ensure_ascii=False).encode()
    return h + b" " * (-len(h) % 8)


def library_order(names, dtype_of):
    return sorted(names, key=lambda k: (-DTYPE_RANK[dtype_of(k)], k))


def st_write(path, tensors, meta=None, sort=False):
    """tensors: [(name, dtype, shape, raw bytes)], written in that order, or
    in the safetensors library's order with sort."""
    if sort:
        by = {t[0]: t for t in tensors}
        tensors = [by[k] for k in library_order(by, lambda k: by[k][1])]
    h = st_header([(n, d, s, len(r)) for n, d, s, r in tensors], meta)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for t in tensors:
            f.write(t[3])


def to_f64(dtype, shape, raw):
    """numpy float64 array of a tensor's raw little-endian bytes."""
    need_numpy()
    if dtype == "BF16":
        a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        a = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2"}[dtype])
    return a.astype(np.float64).reshape(shape)


def round_bf16(a):
    """f32 array -> its bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_f32(dtype, a):
    """Bytes of a float array stored as dtype (round to nearest even)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.tobytes()
    if dtype == "F16":
        return a.astype(np.float16).tobytes()
    return round_bf16(a).tobytes()


# ------------------------------------------------------------------- PEFT

def peft_key(name):
    """".lora_A.<adapter>.weight" (older PEFT) read as ".lora_A.weight"."""
    return re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", name)


def read_config(p):
    d = p if os.path.isdir(p) else os.path.dirname(p) or "."
    with open(os.path.join(d, "adapter_config.json")) as f:
        return json.load(f)


def resolve(cfg, module):
    """(r, alpha) of a module as PEFT 0.10 resolves rank_pattern and
    alpha_pattern: the first key (rank keys, then alpha keys) with
    re.match(".*\\." + key + "$", module)."""
    rp, ap = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    r, alpha = cfg["r"], cfg["lora_alpha"]
    for k in list(rp) + list(ap):
        if re.match(r".*\." + k + "$", module):
            return rp.get(k, r), ap.get(k, alpha)
    return r, alpha


def lora_scale(cfg, r):
    return cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)


def adapter_factors(spec, out, scale=1.0):
    """Append (scale * w * s, A, B) (float64) of each module of the PEFT
    adapter "DIR[:W]" to out[module] (no base_model.model. prefix); s is
    alpha/r or alpha/sqrt(r). The factors, not B @ A: a full-size model's
    dense deltas would not fit in memory all at once."""
    path, _, w = spec.partition(":")
    w = float(w) if w else 1.0
    cfg = read_config(path)
    ts, _ = st_read(path)
    for n, t in ts.items():
        if n.endswith(".lora_A.weight"):
            m = n[len("base_model.model."):-len(".lora_A.weight")]
            A, B = to_f64(*t), to_f64(*ts[n.replace("lora_A", "lora_B")])
            out.setdefault(m, []).append((scale * w * lora_scale(cfg, A.shape[0]), A, B))
    return out


def delta(factors):
    """sum k * B @ A over a module's factors (float64)."""
    return sum(k * (B @ A) for k, A, B in factors)


# ------------------------------------------------------- stream commands

def cmd_dump(args):
    pos, _, flags = options(args, ("--sort-keys",))
    buf = open(pos[0], "rb").read() if pos and pos[0] != "-" else sys.stdin.buffer.read()
    i = 0
    while i < len(buf):
        v, i = unpack(buf, i)
        print(json.dumps(v, sort_keys="--sort-keys" in flags))


def cmd_mkstream(args):
    recs = eval(args[1], {"__builtins__": {}},
                {"nan": math.nan, "inf": math.inf, "z": lambda n: bytes(n)})
    with open(args[0], "wb") as f:
        for r in recs:
            f.write(pack(r))


def options(args, flags=()):
    """(positional, {--opt: value}, {flag}) of an argument list."""
    pos, opt, got = [], {}, set()
    i = 0
    while i < len(args):
        a = args[i]
        if a in flags:
            got.add(a)
            i += 1
        elif a.startswith("--") and i + 1 < len(args):
            opt[a] = args[i + 1]
            i += 2
        else:
            pos.append(a)
            i += 1
    return pos, opt, got


def cmd_weights(args):
    pos, opt, _ = options(args)
    sys.stdout.buffer.write(weights_record(pos[0], opt.get("--id"), opt.get("--method")))
    sys.stdout.buffer.flush()


def cmd_coproc(args):
    import select
    import subprocess
    pool = open(args[0], "rb").read()
    names = [r["name"] for r in records(pool) if r.get("kind") == "adapter"]
    p = subprocess.Popen(args[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    p.stdin.write(pool)
    p.stdin.flush()
    got = b""
    for wid in (1, 2, 3):
        spec = ",".join("%s=%g" % (n, 0.1 * (wid + k)) for k, n in enumerate(names))
        p.stdin.write(weights_record(spec, wid))
        p.stdin.flush()
        r, _, _ = select.select([p.stdout], [], [], 30)
        if not r:
            print("no score for id %d within 30 s with stdin open" % wid)
            p.kill()
            return 1
        got += os.read(p.stdout.fileno(), 1 << 20)
        print("id %d answered: %d score(s) so far" % (wid, len(list(records(got)))))
    p.stdin.close()
    got += p.stdout.read()
    rc = p.wait()
    ids = [r.get("id") for r in records(got)]
    print(json.dumps(ids))
    return rc or (0 if ids == [1, 2, 3] else 1)


def shown(v):
    """A field as the shell tests compare it: JSON for lists and maps."""
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def cmd_check_scores(args):
    pos, opt, _ = options(args)
    rtol = float(opt.get("--rtol", "1e-4"))
    recs = read_stream(pos[0])
    bad, worst = 0, 0.0
    golden = {}

    def gold(path):
        if path not in golden:
            with open(path) as f:
                golden[path] = json.load(f)
        return golden[path]

    def field(rs, i, key):
        if i >= len(rs):
            raise KeyError("record %d of %d" % (i, len(rs)))
        return rs[i][key]

    def near(what, got, want):
        nonlocal worst
        d = abs(got - want) / abs(want)
        worst = max(worst, d)
        ok = d <= rtol
        print("%s %s: got %.9g want %.9g rel diff %.3g (tol %g)" %
              ("ok" if ok else "BAD", what, got, want, d, rtol))
        return ok

    for c in pos[1:]:
        try:
            if c.startswith("count="):
                ok = len(recs) == int(c[6:])
                print("%s count: %d records, want %s" % ("ok" if ok else "BAD", len(recs), c[6:]))
            elif c.startswith("gen:"):
                path, _, g = c[4:].partition("~")
                got = [json.loads(l)["prediction"] for l in open(path)]
                want = [e["generation"]["text"] for e in gold(g)["examples"]]
                diff = [k for k in range(max(len(got), len(want)))
                        if k >= len(got) or k >= len(want) or got[k] != want[k]]
                ok = not diff
                print("%s %s: %d predictions, %d golden texts, differing: %s" %
                      ("ok" if ok else "BAD", path, len(got), len(want), diff))
                for k in diff[:3]:
                    print("   %d: got %r want %r" % (k, got[k] if k < len(got) else None,
                                                    want[k] if k < len(want) else None))
            else:
                m = re.match(r"(\d+):(\w+)(#=|==@|!=@|=|~)(.*)$", c)
                if not m:
                    raise Usage("bad clause " + c)
                i, key, op, rhs = int(m.group(1)), m.group(2), m.group(3), m.group(4)
                v = field(recs, i, key)
                what = "%d:%s" % (i, key)
                if op == "=":
                    ok = shown(v) == rhs
                    print("%s %s = %s (want %s)" % ("ok" if ok else "BAD", what, shown(v), rhs))
                elif op == "#=":
                    ok = len(v) == int(rhs)
                    print("%s %s has %d items (want %s)" % ("ok" if ok else "BAD", what, len(v), rhs))
                elif op in ("==@", "!=@"):
                    o = field(read_stream(rhs), i, key)
                    ok = (v == o) == (op == "==@")
                    print("%s %s = %s, in %s %s" % ("ok" if ok else "BAD", what, shown(v), rhs, shown(o)))
                elif key == "per_example":
                    want = [e["loss"] for e in gold(rhs)["examples"]]
                    ok = len(v) == len(want)
                    print("%s %s: %d values, %d golden" % ("ok" if ok else "BAD", what, len(v), len(want)))
                    for k, (g, w) in enumerate(zip(v, want)):
                        ok = near("%s[%d]" % (what, k), g, w) and ok
                else:
                    ok = near(what, float(v), float(gold(rhs)["token_mean_loss"]))
        except Usage:
            raise
        except Exception as e:  # a missing field or file fails the clause
            print("BAD %s: %s: %s" % (c, type(e).__name__, e))
            ok = False
        bad += not ok
    print("# max rel diff %.3g (tol %g), %d of %d clauses failed" % (worst, rtol, bad, len(pos) - 1))
    return 1 if bad else 0


# ------------------------------------------------ safetensors commands

def cmd_cmp(args):
    a, b = args[0], args[1]
    tol = float(args[2]) if len(args) > 2 else None
    ta = {peft_key(k): v for k, v in st_read(a)[0].items()}
    tb = {peft_key(k): v for k, v in st_read(b)[0].items()}
    if set(ta) != set(tb):
        print("tensor names differ: only in A %s, only in B %s" %
              (sorted(set(ta) - set(tb))[:5], sorted(set(tb) - set(ta))[:5]))
        return 1
    bad, worst = 0, 0.0
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
            u, v = to_f64(da, sa, xa), to_f64(db, sb, xb)
            d = np.abs(u - v)
            over = ~(d <= tol * (1 + np.abs(u)))
            if over.any():
                j = int(np.argmax(over.ravel()))
                print("%s: %r vs %r" % (k, u.ravel()[j], v.ravel()[j]))
                bad += 1
            elif d.size:
                worst = max(worst, float(d.max()))
    print("%d tensors compared, %d differ%s" %
          (len(ta), bad, "" if tol is None else ", max abs diff %.3g" % worst))
    return 1 if bad else 0


def cmd_dtype(args):
    for k, (dt, _, _) in sorted((peft_key(k), v) for k, v in st_read(args[0])[0].items()):
        print(k, dt)


def cmd_cfg(args):
    ca, cb = read_config(args[0]), read_config(args[1])
    bad = 0
    keys = ("peft_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out", "base_model_name_or_path")
    for k in keys:
        if ca.get(k) != cb.get(k):
            print("%s: %r vs %r" % (k, ca.get(k), cb.get(k)))
            bad += 1
    if set(ca.get("target_modules") or []) != set(cb.get("target_modules") or []):
        print("target_modules: %r vs %r" % (ca.get("target_modules"), cb.get("target_modules")))
        bad += 1
    mods = sorted({re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", peft_key(k))
                   for k in st_read(args[0])[0]})
    for m in mods:
        if resolve(ca, m) != resolve(cb, m):
            print("module %s: (r, alpha) %r vs %r" % (m, resolve(ca, m), resolve(cb, m)))
            bad += 1
    print("config: %d keys and %d modules compared, %d differ" % (len(keys) + 1, len(mods), bad))
    return 1 if bad else 0


def check_layout(path):
    """NEW's header and data region are exactly what the safetensors
    library's serializer writes for its tensors; returns the StFile."""
    s = StFile(path)
    assert len(s.header) % 8 == 0, "header length %d not a multiple of 8" % len(s.header)
    names = library_order(s.hdr, lambda k: s.hdr[k]["dtype"])
    sizes = [(k, s.hdr[k]["dtype"], s.hdr[k]["shape"],
              math.prod(s.hdr[k]["shape"]) * DTYPE_SIZE[s.hdr[k]["dtype"]]) for k in names]
    want = st_header(sizes, s.meta)
    assert s.header == want, "header differs from the library's:\n%r\n%r" % (s.header, want)
    assert s.meta == {"format": "pt"}, s.meta
    offs = [s.hdr[k]["data_offsets"] for k in names]
    assert offs[0][0] == 0 and offs[-1][1] == len(s.data), "data region not tiled"
    return s


def cmd_values(args):
    orig, new, mode = args
    need_numpy()
    a = {peft_key(k): v for k, v in st_read(orig)[0].items()}
    b = check_layout(new).tensors
    assert sorted(a) == sorted(b), (sorted(a)[:3], sorted(b)[:3])
    n = 0
    for k in a:
        assert a[k][1] == b[k][1], (k, a[k][1], b[k][1])
        want = to_f64(*a[k])
        if mode == "f16":
            want = want.astype(np.float32).astype(np.float16).astype(np.float64)
        elif mode == "bf16":
            want = to_f64("BF16", want.shape, round_bf16(want).tobytes())
        bad = int(np.sum(want != to_f64(*b[k])))
        assert bad == 0, "%s: %d values differ from exact %s rounding" % (k, bad, mode)
        if mode != "same":
            assert b[k][0] == mode.upper(), (k, b[k][0])
        n += want.size
    print("%d values equal to the %s reference" % (n, mode))


def cmd_ranks(args):
    d = args[0]
    cfg = read_config(d)
    assert cfg["peft_type"] == "LORA"
    tm = cfg["target_modules"]
    for k, (dt, shape, _) in st_read(d)[0].items():
        if ".lora_A." not in k:
            continue
        mod = k[len("base_model.model."):].split(".lora_A.")[0]
        r, _ = resolve(cfg, mod)
        assert r == shape[0], (mod, r, shape)
        assert (any(mod == x or mod.endswith("." + x) for x in tm) if isinstance(tm, list)
                else re.fullmatch(tm, mod)), (mod, tm)
    print("ranks and targets agree with adapter_config.json")


def cmd_fixture(args):
    d, kind = args
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
        raise Usage("unknown fixture kind " + kind)
    state = [seed * 2654435761 % 2**32]

    def rnd():  # a 32-bit LCG: fixtures need no numpy
        state[0] = (state[0] * 1664525 + 1013904223) % 2**32
        return (state[0] / 2**32 - 0.5) * 0.25

    def encode(vals):
        if dtype == "BF16":
            return b"".join(struct.pack("<f", v)[2:] for v in vals)
        return struct.pack("<%d%s" % (len(vals), "f" if dtype == "F32" else "e"), *vals)

    tensors = []
    for layer in range(layers):
        for m, (out, inp) in shapes.items():
            name = prefix % (layer, m)
            r, _ = resolve(cfg, name[len("base_model.model."):])
            for which, shape in (("A", (r, inp)), ("B", (out, r))):
                vals = [rnd() for _ in range(shape[0] * shape[1])]
                tensors.append((name + ".lora_" + which + suffix, dtype, shape, encode(vals)))
    os.makedirs(d, exist_ok=True)
    st_write(os.path.join(d, "adapter_model.safetensors"), tensors, {"format": "pt"}, sort=True)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


M64 = 2**64 - 1


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


def sample(n, seed, m):
    """lora-pack --sample: splitmix64 seeds xoshiro256**; Algorithm R."""
    st, s = seed & M64, []
    for _ in range(4):
        st = (st + 0x9E3779B97F4A7C15) & M64
        z = st
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        s.append(z ^ (z >> 31))

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


def cmd_sample(args):
    n, seed, m = int(args[0]), int(args[1]), int(args[2])
    if len(args) > 3:
        hits = [0] * m
        for sd in range(seed, seed + int(args[3])):
            for i in sample(n, sd, m):
                hits[i] += 1
        print(" ".join(str(h) for h in hits))
    else:
        print(" ".join(str(i) for i in sample(n, seed, m)))


# ------------------------------------------------------ model commands

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
        raise Usage("unknown arch " + arch)
    return cfg, s


def save_model(d, cfg, tensors, shards):
    os.makedirs(d, exist_ok=True)
    files = {"config.json": cfg, "generation_config.json": {"_from_model_config": True},
             "tokenizer.json": {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}},
             "tokenizer_config.json": {"model_max_length": 512}}
    for name, obj in files.items():
        with open(os.path.join(d, name), "w") as f:
            json.dump(obj, f, indent=2 if name == "config.json" else None)
    if shards <= 1:
        st_write(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})
        return
    per = (len(tensors) + shards - 1) // shards
    wm, total = {}, 0
    for k in range(shards):
        name = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
        part = tensors[k * per:(k + 1) * per]
        st_write(os.path.join(d, name), part, {"format": "pt"})
        for t in part:
            wm[t[0]] = name
            total += len(t[3])
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


def cmd_gen_model(args):
    need_numpy()
    pos, opt, _ = options(args)
    dtype = opt.get("--dtype", "f32").upper()
    rng = np.random.default_rng(int(opt.get("--seed", "1")))
    cfg, shapes = arch_shapes(opt.get("--arch", "llama"), int(opt.get("--hidden", "48")))
    cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    tensors = [(name, dtype, shape, from_f32(dtype, rng.standard_normal(shape, dtype=np.float32) * 0.5))
               for name, shape in shapes]
    save_model(pos[0], cfg, tensors, int(opt.get("--shards", "1")))


def cmd_gen_big(args):
    need_numpy()
    pos, opt, _ = options(args)
    H, F = 1024, 2816
    per_layer = (4 * H * H + 3 * H * F) * 4
    layers = max(1, int(float(opt.get("--gb", "1")) * 1e9 / per_layer))
    cfg = {"model_type": "llama", "hidden_size": H, "intermediate_size": F,
           "num_hidden_layers": layers, "num_attention_heads": 16, "vocab_size": 256}
    block = np.random.default_rng(0).standard_normal(H * F).astype(np.float32)
    tensors = []
    for i in range(layers):
        p = "model.layers.%d." % i
        for n, shape in (("self_attn.q_proj", (H, H)), ("self_attn.k_proj", (H, H)),
                         ("self_attn.v_proj", (H, H)), ("self_attn.o_proj", (H, H)),
                         ("mlp.gate_proj", (F, H)), ("mlp.up_proj", (F, H)), ("mlp.down_proj", (H, F))):
            tensors.append((p + n + ".weight", "F32", shape, block[:shape[0] * shape[1]].tobytes()))
    save_model(pos[0], cfg, tensors, max(1, layers // 8))


def cmd_gen_adapter(args):
    need_numpy()
    pos, opt, flags = options(args, ("--rslora",))
    d, model = pos[0], opt["--model"]
    r, alpha = int(opt["--r"]), float(opt["--alpha"])
    rng = np.random.default_rng(int(opt.get("--seed", "2")))
    with open(os.path.join(model, "config.json")) as f:
        mt = json.load(f).get("model_type")
    shapes = {}
    for fn in sorted(os.listdir(model)):
        if fn.endswith(".safetensors"):
            for n, t in st_read(os.path.join(model, fn))[0].items():
                shapes[n] = t[1]
    want = opt["--modules"].split(",")
    mods = [n[:-len(".weight")] for n in shapes if n.endswith(".weight") and len(shapes[n]) == 2
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
           "use_rslora": "--rslora" in flags, "fan_in_fan_out": mt == "gpt2", "bias": "none",
           "base_model_name_or_path": model, "rank_pattern": {}, "alpha_pattern": {},
           "task_type": "CAUSAL_LM", "use_dora": False, "modules_to_save": None}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_write(os.path.join(d, "adapter_model.safetensors"), tensors, {"format": "pt"})


def model_tensors(d):
    """{name: (file, dtype, shape, raw)} over every .safetensors of d."""
    out = {}
    for fn in sorted(f for f in os.listdir(d) if f.endswith(".safetensors")):
        for n, t in st_read(os.path.join(d, fn))[0].items():
            out[n] = (fn,) + t
    return out


def cmd_check_fold(args):
    need_numpy()
    pos, opt, _ = options(args)
    model, outd, specs = pos[0], pos[1], pos[2:]
    scale = float(opt.get("--scale", "1"))
    with open(os.path.join(model, "config.json")) as f:
        gpt2 = json.load(f).get("model_type") == "gpt2"
    base, got = model_tensors(model), model_tensors(outd)
    if sorted(base) != sorted(got):
        print("tensor names differ")
        return 1
    factors = {}
    for spec in specs:
        adapter_factors(spec, factors, scale)
    factors = {m + ".weight": f for m, f in factors.items()}
    bad = 0
    for n, (fn, dt, shape, raw) in base.items():
        gfn, gdt, gshape, graw = got[n]
        if (fn, dt, shape) != (gfn, gdt, gshape):
            print("%s: file/dtype/shape %s vs %s" % (n, (fn, dt, shape), (gfn, gdt, gshape)))
            bad += 1
            continue
        if n not in factors:
            if raw != graw:
                print("%s: untouched tensor changed" % n)
                bad += 1
            continue
        dw = delta(factors[n])
        if gpt2:
            dw = dw.T
        want = to_f64(dt, shape, raw) + dw
        g = to_f64(gdt, gshape, graw)
        rel = 4e-7 if dt == "F32" else 2.0 ** -7 if dt == "BF16" else 2.0 ** -10
        tol = rel * np.abs(want) + 1e-6 * np.abs(want).max()
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
    for t in factors:
        if t not in base:
            print("%s: not in the model" % t)
            bad += 1
    print("%d bad" % bad)
    return 1 if bad else 0


def close(what, got, want, rel):
    """max |got - want| <= rel * max |want|? Prints the difference."""
    d = np.abs(got - want).max()
    tol = rel * np.abs(want).max()
    print("%s %s: max diff %.3g (tol %.3g)" % ("ok" if d <= tol else "BAD", what, d, tol))
    return d <= tol


def cmd_cmp_golden(args):
    got = model_tensors(args[0])
    gold, _ = st_read(args[1])
    bad = 0
    for n, t in gold.items():
        bad += not close(n, to_f64(*got[n][1:]), to_f64(*t), 1e-6)
    return 1 if bad else 0


def cmd_check_delta(args):
    need_numpy()
    rec = read_stream(args[0], keep_bin=True)[0]
    want = {}
    for spec in args[1:]:
        adapter_factors(spec, want)
    want = {m: delta(f) for m, f in want.items()}
    got = {}
    for t in rec["tensors"]:
        def arr(x):
            return to_f64(x["dtype"].upper(), tuple(x["shape"]), x["data"])
        r = t.get("r", rec["r"])
        alpha = t.get("alpha", rec["alpha"])
        sc = alpha / (np.sqrt(r) if rec.get("rslora") else r)
        got[t["module"]] = sc * (arr(t["b"]) @ arr(t["a"]))
    bad = 0
    for m in sorted(set(want) | set(got)):
        if m not in got:
            print("%s: not in the merge" % m)
            bad += 1
            continue
        if m not in want:  # only zero-weight adapters have it: dW must be 0
            want[m] = np.zeros_like(got[m])
        bad += not close(m, got[m], want[m], 1e-5)
    return 1 if bad else 0


def cmd_batch(args):
    for line in sys.stdin:
        words = line.split()
        if words:
            rc = run(words[0], words[1:])
            if rc:
                return rc
    return 0


COMMANDS = {
    "dump": cmd_dump, "mkstream": cmd_mkstream, "weights": cmd_weights, "coproc": cmd_coproc,
    "check-scores": cmd_check_scores, "cmp": cmd_cmp, "dtype": cmd_dtype, "cfg": cmd_cfg,
    "values": cmd_values, "ranks": cmd_ranks, "fixture": cmd_fixture, "sample": cmd_sample,
    "gen-model": cmd_gen_model, "gen-big": cmd_gen_big, "gen-adapter": cmd_gen_adapter,
    "check-fold": cmd_check_fold, "cmp-golden": cmd_cmp_golden, "check-delta": cmd_check_delta,
    "batch": cmd_batch,
}


def run(cmd, args):
    if cmd not in COMMANDS:
        raise Usage("unknown command " + cmd)
    if cmd in ("cmp-golden",):
        need_numpy()
    return COMMANDS[cmd](args) or 0


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2 if len(argv) < 2 else 0
    try:
        return run(argv[1], argv[2:])
    except Usage as e:
        print("lorapy.py: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
