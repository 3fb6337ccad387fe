#!/usr/bin/env python3
"""prep.py DATA TASK SEED K MAXTEST OUTDIR — one task's few-shot and test files.

Writes OUTDIR/five.jsonl (K examples drawn with SEED) and OUTDIR/test.jsonl
({"input", "output"} per line) from whichever layout DATA has for TASK:

  DATA/TASK/example.jsonl + zero_shot.jsonl   LoraHub's data_bbh: the K shots are
        drawn from example.jsonl, the test set is zero_shot.jsonl
        ({"context", "completion"} lines; an "instruction" key is ignored)
  DATA/TASK.json                              BIG-Bench Hard's own file
        {"examples": [{"input", "target"}]}: K drawn, the rest is the test set
  DATA/TASK/five.jsonl + test.jsonl           fixed shots (the demo): copied; SEED unused

MAXTEST > 0 keeps only the first MAXTEST test examples (smoke runs). The draw is
a partial Fisher-Yates shuffle driven by a 64-bit LCG, so it is the same on
every machine and Python version. Standard library only.
"""
import json
import os
import sys


def lcg(seed):
    s = (seed * 2654435761 + 12345) % 2**64
    while True:
        s = (s * 6364136223846793005 + 1442695040888963407) % 2**64
        yield s >> 33


def draw(rows, k, seed):
    rows = list(rows)
    g = lcg(seed)
    k = min(k, len(rows))
    for i in range(k):
        j = i + next(g) % (len(rows) - i)
        rows[i], rows[j] = rows[j], rows[i]
    return rows[:k], rows[k:]


def norm(d, where):
    inp = d.get("input", d.get("context"))
    out = d.get("output", d.get("completion", d.get("target")))
    if not isinstance(inp, str) or not isinstance(out, str):
        sys.exit(f"prep.py: {where}: an example needs input/output, context/completion or input/target")
    return {"input": inp, "output": out}


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [norm(json.loads(l), f"{path}:{i + 1}") for i, l in enumerate(f) if l.strip()]


def write(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__.strip().splitlines()[0])
    data, task, seed, k, maxtest, outdir = sys.argv[1:]
    seed, k, maxtest = int(seed), int(k), int(maxtest)
    d = os.path.join(data, task)
    if os.path.isfile(os.path.join(d, "example.jsonl")):
        five, _ = draw(jsonl(os.path.join(d, "example.jsonl")), k, seed)
        test = jsonl(os.path.join(d, "zero_shot.jsonl"))
    elif os.path.isfile(d + ".json"):
        with open(d + ".json", encoding="utf-8") as f:
            doc = json.load(f)
        rows = [norm(e, f"{d}.json: example {i + 1}") for i, e in enumerate(doc["examples"])]
        five, test = draw(rows, k, seed)
    elif os.path.isfile(os.path.join(d, "five.jsonl")):
        five = jsonl(os.path.join(d, "five.jsonl"))
        test = jsonl(os.path.join(d, "test.jsonl"))
    else:
        sys.exit(f"prep.py: no task '{task}' in {data} (want {task}/example.jsonl, {task}.json or {task}/five.jsonl)")
    if maxtest > 0:
        test = test[:maxtest]
    os.makedirs(outdir, exist_ok=True)
    write(os.path.join(outdir, "five.jsonl"), five)
    write(os.path.join(outdir, "test.jsonl"), test)


if __name__ == "__main__":
    main()
