#!/usr/bin/python3
"""t04-lib.py — helpers for the lora-eval shell tests (t04*.sh); stdlib only.

  dump < stream
      print each record as one line of JSON (binary data as its length)
  weights ID NAME=W,... [--method M]
      write one `kind: weights` record (msgpack) on stdout
  near GOT WANT RTOL
      exit 0 when |GOT - WANT| <= RTOL * |WANT| (prints both)
  field FILE KEY [INDEX]
      print field KEY of record INDEX (default 0) of a dumped stream (JSONL)
  golden FILE KEY
      print a top-level number of a golden eval JSON file (e.g. token_mean_loss)
  golden-texts FILE
      print each example's generation text, one JSON string per line
  coproc POOL CMD...
      start CMD with pipes, send POOL then one weights record at a time and
      wait (30 s at most) for its score before sending the next, with stdin
      still open: a scorer that reads ahead would hang here
"""
import json
import os
import select
import struct
import subprocess
import sys


def unpack(buf, i):
    b = buf[i]
    i += 1
    if b <= 0x7F:
        return b, i
    if b >= 0xE0:
        return b - 256, i
    if 0x80 <= b <= 0x8F:
        return unpack_map(buf, i, b & 15)
    if 0x90 <= b <= 0x9F:
        return unpack_arr(buf, i, b & 15)
    if 0xA0 <= b <= 0xBF:
        n = b & 31
        return buf[i:i + n].decode(), i + n
    fixed = {0xC0: None, 0xC2: False, 0xC3: True}
    if b in fixed:
        return fixed[b], i
    if b in (0xC4, 0xC5, 0xC6):
        w = {0xC4: 1, 0xC5: 2, 0xC6: 4}[b]
        n = int.from_bytes(buf[i:i + w], "big")
        return "<bin %d>" % n, i + w + n
    if b == 0xCA:
        return struct.unpack(">f", buf[i:i + 4])[0], i + 4
    if b == 0xCB:
        return struct.unpack(">d", buf[i:i + 8])[0], i + 8
    ints = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
    if b in ints:
        f = ints[b]
        n = struct.calcsize(f)
        return struct.unpack(f, buf[i:i + n])[0], i + n
    if b in (0xD9, 0xDA, 0xDB):
        w = {0xD9: 1, 0xDA: 2, 0xDB: 4}[b]
        n = int.from_bytes(buf[i:i + w], "big")
        return buf[i + w:i + w + n].decode(), i + w + n
    if b in (0xDC, 0xDD):
        w = 2 if b == 0xDC else 4
        return unpack_arr(buf, i + w, int.from_bytes(buf[i:i + w], "big"))
    if b in (0xDE, 0xDF):
        w = 2 if b == 0xDE else 4
        return unpack_map(buf, i + w, int.from_bytes(buf[i:i + w], "big"))
    raise ValueError("unsupported msgpack byte 0x%02x" % b)


def unpack_arr(buf, i, n):
    out = []
    for _ in range(n):
        v, i = unpack(buf, i)
        out.append(v)
    return out, i


def unpack_map(buf, i, n):
    out = {}
    for _ in range(n):
        k, i = unpack(buf, i)
        v, i = unpack(buf, i)
        out[k] = v
    return out, i


def pack(v):
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        e = v.encode()
        return b"\xdb" + struct.pack(">I", len(e)) + e
    if isinstance(v, list):
        return b"\xdd" + struct.pack(">I", len(v)) + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        return b"\xdf" + struct.pack(">I", len(v)) + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(type(v))


def weights_record(wid, spec, method=None):
    names, w = [], []
    for item in spec.split(","):
        n, x = item.split("=")
        names.append(n)
        w.append(float(x))
    rec = {"kind": "weights", "names": names, "w": w, "id": int(wid)}
    if method:
        rec["method"] = method
    return pack(rec)


def main():
    cmd = sys.argv[1]
    a = sys.argv[2:]
    if cmd == "dump":
        buf = sys.stdin.buffer.read()
        i = 0
        while i < len(buf):
            v, i = unpack(buf, i)
            print(json.dumps(v))
    elif cmd == "weights":
        method = a[a.index("--method") + 1] if "--method" in a else None
        sys.stdout.buffer.write(weights_record(a[0], a[1], method))
    elif cmd == "near":
        got, want, rtol = float(a[0]), float(a[1]), float(a[2])
        print("got %.9g want %.9g rel diff %.3g" % (got, want, abs(got - want) / abs(want)))
        sys.exit(0 if abs(got - want) <= rtol * abs(want) else 1)
    elif cmd == "field":
        lines = open(a[0]).read().splitlines()
        rec = json.loads(lines[int(a[2]) if len(a) > 2 else 0])
        v = rec[a[1]]
        print(json.dumps(v) if isinstance(v, (list, dict)) else v)
    elif cmd == "golden":
        print(json.load(open(a[0]))[a[1]])
    elif cmd == "golden-texts":
        for e in json.load(open(a[0]))["examples"]:
            print(json.dumps(e["generation"]["text"]))
    elif cmd == "coproc":
        pool = open(a[0], "rb").read()
        names = [r["name"] for r in iter_records(pool) if r.get("kind") == "adapter"]
        p = subprocess.Popen(a[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        p.stdin.write(pool)
        p.stdin.flush()
        got = b""
        for wid in (1, 2, 3):
            spec = ",".join("%s=%g" % (n, 0.1 * (wid + k)) for k, n in enumerate(names))
            p.stdin.write(weights_record(wid, spec))
            p.stdin.flush()
            r, _, _ = select.select([p.stdout], [], [], 30)
            if not r:
                print("no score for id %d within 30 s with stdin open" % wid)
                p.kill()
                sys.exit(1)
            got += os.read(p.stdout.fileno(), 1 << 20)
            recs = list(iter_records(got))
            print("id %d answered: %d score(s) so far" % (wid, len(recs)))
        p.stdin.close()
        got += p.stdout.read()
        rc = p.wait()
        recs = list(iter_records(got))
        print(json.dumps([r.get("id") for r in recs]))
        sys.exit(rc or (0 if [r.get("id") for r in recs] == [1, 2, 3] else 1))
    else:
        sys.exit("unknown command " + cmd)


def iter_records(buf):
    i = 0
    while i < len(buf):
        try:
            v, j = unpack(buf, i)
        except (IndexError, struct.error):
            return
        i = j
        yield v


main()
