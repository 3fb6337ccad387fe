#!/usr/bin/env python3
"""gen.py — writes the demo's task family (deterministic: same bytes on every run).

Every example is a tiny story opening (input) and the sentence that follows it
(output):  "<Name> took the <object> to the <place>."  The object is the one the
input mentions (it must be copied); the name and the place are what a task fixes.

  pool/name-<N>.jsonl   the name is N, the place varies      (train, 64 lines)
  pool/place-<P>.jsonl  the place is P, the name varies      (train, 64 lines)
  pool/mood-<M>.jsonl   distractors: "<Name> was <M> about the <object>."
  heldout/<N>-<P>/five.jsonl  5 examples of a name AND a place no pool task
  heldout/<N>-<P>/test.jsonl  20 further examples of it     fixes together

A pool module knows one of the two slots; a held-out task needs both, so a
merge of the right name module and the right place module should beat any
single module. Usage: gen.py OUTDIR
"""
import json
import os
import sys

NAMES = ["Tom", "Sue", "Ben", "Mia", "Sam", "Lucy"]
PLACES = ["beach", "forest", "zoo", "farm", "park", "lake"]
MOODS = ["happy", "sad"]
POOL_NAMES = NAMES[:4]     # Sam, Lucy, park and lake only fill the free slot
POOL_PLACES = PLACES[:4]
OBJECTS = ["ball", "kite", "car", "doll", "book", "hat", "cake", "boat", "box", "drum"]
ADJS = ["red", "big", "new", "little", "blue", "shiny", "soft"]
OPENINGS = [
    "One day, a kid found a {adj} {obj}.",
    "Once upon a time, there was a {adj} {obj}.",
    "Mom gave the child a {adj} {obj}.",
    "There was a {adj} {obj} in the house.",
    "A friend had a {adj} {obj} to share.",
    "Dad made a {adj} {obj} for the kids.",
]
HELDOUT = [("Tom", "beach"), ("Sue", "zoo"), ("Ben", "farm"), ("Mia", "forest")]


class Rng:
    """64-bit LCG (Knuth's MMIX constants); python's own generator is not used
    so that the bytes do not depend on the interpreter version."""

    def __init__(self, seed):
        self.s = (seed * 2654435761 + 12345) % 2**64

    def below(self, n):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % 2**64
        return (self.s >> 33) % n

    def pick(self, xs):
        return xs[self.below(len(xs))]


def example(rng, name=None, place=None, mood=None):
    obj, adj = rng.pick(OBJECTS), rng.pick(ADJS)
    inp = rng.pick(OPENINGS).format(adj=adj, obj=obj)
    name = name or rng.pick(NAMES)
    if mood:
        out = f"{name} was {mood} about the {obj}."
    else:
        out = f"{name} took the {obj} to the {place or rng.pick(PLACES)}."
    return {"input": inp, "output": out}


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "data"
    seed = 1
    for n in POOL_NAMES:
        rng = Rng(seed)
        seed += 1
        write(f"{out}/pool/name-{n}.jsonl", [example(rng, name=n) for _ in range(64)])
    for p in POOL_PLACES:
        rng = Rng(seed)
        seed += 1
        write(f"{out}/pool/place-{p}.jsonl", [example(rng, place=p) for _ in range(64)])
    for m in MOODS:
        rng = Rng(seed)
        seed += 1
        write(f"{out}/pool/mood-{m}.jsonl", [example(rng, mood=m) for _ in range(64)])
    for n, p in HELDOUT:
        rng = Rng(seed)
        seed += 1
        rows = [example(rng, name=n, place=p) for _ in range(25)]
        write(f"{out}/heldout/{n}-{p}/five.jsonl", rows[:5])
        write(f"{out}/heldout/{n}-{p}/test.jsonl", rows[5:])


if __name__ == "__main__":
    main()
