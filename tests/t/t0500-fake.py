#!/usr/bin/env python3
"""t0500-fake.py — decode a lora stream for the lora-cmaes tests (t05xx)
without any Python package: a minimal msgpack decoder.

  t0500-fake.py dump    decode a stream on stdin, one JSON line per record
                        (binary data replaced by its length, NaN/Inf as strings)

The fake objective itself is tests/unit/test_fakeobj.c (a C program, so a
test does not pay a Python start-up per lora-cmaes run).
"""
import json
import math
import struct
import sys


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


if __name__ == "__main__":
    if sys.argv[1:] == ["dump"]:
        dump()
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
