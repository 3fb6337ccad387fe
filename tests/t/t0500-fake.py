#!/usr/bin/env python3
"""t0500-fake.py — helpers for the lora-cmaes tests (t05xx), no dependencies:
a minimal msgpack encoder/decoder, a tiny pool writer and fake objectives.

  t0500-fake.py pool N             N tiny adapter records on stdout (a0..aN-1)
  t0500-fake.py dump               decode a stream on stdin, one JSON line per record
                                   (tensor data replaced by its length)
  t0500-fake.py obj [OPTIONS]      a coprocess objective: skips adapters, answers
                                   each weights record with a score record
      --wstar a,b,...   optimum (cycled over the weights; default 0.3,-0.2,0.5)
      --die-after K     after K scores: print to stderr and exit 3
      --close-after K   after K scores: close stdout, keep reading, exit 0
      --bad-id ID       answer ID with id ID+1000
      --dup ID          answer ID twice
      --no-id ID        answer ID without an id
      --nan-at ID       loss NaN for ID
      --inf-at ID       loss +Inf for ID
      --hang-at ID      sleep forever before answering ID
      --reverse         answer each batch of pending weights in reverse order
      --log FILE        append "id w..." lines for every weights record
      --slow SECONDS    sleep before each answer
"""
import json
import math
import struct
import sys
import time


def enc(o, out):
    if o is None:
        out.append(b"\xc0")
    elif o is True:
        out.append(b"\xc3")
    elif o is False:
        out.append(b"\xc2")
    elif isinstance(o, int):
        if 0 <= o < 128:
            out.append(bytes([o]))
        elif -32 <= o < 0:
            out.append(struct.pack("b", o))
        elif o >= 0:
            out.append(b"\xcf" + struct.pack(">Q", o))
        else:
            out.append(b"\xd3" + struct.pack(">q", o))
    elif isinstance(o, float):
        out.append(b"\xcb" + struct.pack(">d", o))
    elif isinstance(o, str):
        b = o.encode()
        out.append(b"\xdb" + struct.pack(">I", len(b)) + b)
    elif isinstance(o, (bytes, bytearray)):
        out.append(b"\xc6" + struct.pack(">I", len(o)) + bytes(o))
    elif isinstance(o, (list, tuple)):
        out.append(b"\xdd" + struct.pack(">I", len(o)))
        for x in o:
            enc(x, out)
    elif isinstance(o, dict):
        out.append(b"\xdf" + struct.pack(">I", len(o)))
        for k, v in o.items():
            enc(k, out)
            enc(v, out)
    else:
        raise TypeError(type(o))


def pack(o):
    out = []
    enc(o, out)
    return b"".join(out)


class Reader:
    def __init__(self, f):
        self.f = f

    def take(self, n):
        b = self.f.read(n)
        if len(b) != n:
            raise EOFError
        return b

    def obj(self):
        c = self.f.read(1)
        if not c:
            return EOFError  # clean end
        return self.val(c[0])

    def val(self, t):
        if t <= 0x7F:
            return t
        if t >= 0xE0:
            return t - 256
        if 0x80 <= t <= 0x8F:
            return self.map(t & 15)
        if 0x90 <= t <= 0x9F:
            return [self.any() for _ in range(t & 15)]
        if 0xA0 <= t <= 0xBF:
            return self.take(t & 31).decode()
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if t in simple:
            return simple[t]
        if t in (0xC4, 0xC5, 0xC6):
            n = struct.unpack({0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}[t],
                              self.take({0xC4: 1, 0xC5: 2, 0xC6: 4}[t]))[0]
            return self.take(n)
        if t == 0xCA:
            return struct.unpack(">f", self.take(4))[0]
        if t == 0xCB:
            return struct.unpack(">d", self.take(8))[0]
        ints = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if t in ints:
            fmt = ints[t]
            return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        if t in (0xD9, 0xDA, 0xDB):
            fmt = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}[t]
            n = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
            return self.take(n).decode()
        if t in (0xDC, 0xDD):
            fmt = ">H" if t == 0xDC else ">I"
            n = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
            return [self.any() for _ in range(n)]
        if t in (0xDE, 0xDF):
            fmt = ">H" if t == 0xDE else ">I"
            n = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
            return self.map(n)
        raise ValueError("unsupported msgpack type 0x%02x" % t)

    def any(self):
        return self.val(self.take(1)[0])

    def map(self, n):
        d = {}
        for _ in range(n):
            k = self.any()
            d[k] = self.any()
        return d


def pool(n):
    out = sys.stdout.buffer
    for i in range(n):
        a = struct.pack("<4f", *[0.01 * (i + 1 + j) for j in range(4)])  # A [1, 4]
        b = struct.pack("<4f", *[0.02 * (i + 1 - j) for j in range(4)])  # B [4, 1]
        rec = {"kind": "adapter", "name": "a%d" % i, "r": 1, "alpha": 1.0,
               "tensors": [{"module": "layer.0.q", "r": 1, "alpha": 1.0,
                            "a": {"dtype": "f32", "shape": [1, 4], "data": a},
                            "b": {"dtype": "f32", "shape": [4, 1], "data": b}}]}
        out.write(pack(rec))
    out.flush()


def scrub(o):
    if isinstance(o, dict):
        return {k: scrub(v) for k, v in o.items()}
    if isinstance(o, list):
        return [scrub(v) for v in o]
    if isinstance(o, bytes):
        return "<%d bytes>" % len(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


def dump():
    r = Reader(sys.stdin.buffer)
    while True:
        o = r.obj()
        if o is EOFError:
            break
        print(json.dumps(scrub(o), sort_keys=True))


def obj(argv):
    opt = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--reverse":
            opt["reverse"] = True
            i += 1
        else:
            opt[a[2:]] = argv[i + 1]
            i += 2
    wstar = [float(x) for x in opt.get("wstar", "0.3,-0.2,0.5").split(",")]
    num = lambda k: int(opt[k]) if k in opt else None
    die_after, close_after = num("die-after"), num("close-after")
    bad, dup, noid = num("bad-id"), num("dup"), num("no-id")
    nan_at, inf_at, hang_at = num("nan-at"), num("inf-at"), num("hang-at")
    log = open(opt["log"], "a") if "log" in opt else None
    slow = float(opt.get("slow", "0"))
    r = Reader(sys.stdin.buffer)
    out = sys.stdout.buffer
    sent = 0
    closed = False
    pending = []

    def answer(rec):
        nonlocal sent, closed
        i = rec.get("id")
        w = rec["w"]
        loss = sum((x - wstar[k % len(wstar)]) ** 2 for k, x in enumerate(w)) / len(w)
        if i == nan_at:
            loss = float("nan")
        if i == inf_at:
            loss = float("inf")
        if slow:
            time.sleep(slow)
        if i == hang_at:
            sys.stderr.write("fake: hanging at id %d\n" % i)
            sys.stderr.flush()
            time.sleep(3600)
        s = {"kind": "score", "id": i, "name": "cand", "loss": loss, "tokens": 10, "examples": 2}
        if i == bad:
            s["id"] = i + 1000
        if i == noid:
            del s["id"]
        if closed:
            return
        out.write(pack(s))
        if i == dup:
            out.write(pack(s))
        out.flush()
        sent += 1
        if die_after is not None and sent >= die_after:
            sys.stderr.write("fake: line one\nfake: simulated crash after %d scores\n" % sent)
            sys.stderr.flush()
            sys.exit(3)
        if close_after is not None and sent >= close_after:
            out.close()
            closed = True

    while True:
        try:
            rec = r.obj()
        except EOFError:
            break
        if rec is EOFError:
            break
        if not isinstance(rec, dict) or rec.get("kind") != "weights":
            continue
        if log:
            log.write("%s %s\n" % (rec.get("id"), " ".join("%.17g" % x for x in rec["w"])))
            log.flush()
        if opt.get("reverse"):
            pending.append(rec)
            # answer in reverse once no more input is immediately expected:
            # the generation is complete when 2 or more are pending and the
            # next read would block; approximate with a batch of the pool size
            if len(pending) >= int(opt.get("batch", "1")):
                for p in reversed(pending):
                    answer(p)
                pending = []
        else:
            answer(rec)
    for p in reversed(pending):
        answer(p)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "pool":
        pool(int(sys.argv[2]))
    elif cmd == "dump":
        dump()
    elif cmd == "obj":
        obj(sys.argv[2:])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
