#!/bin/sh
# t0506 — unknown keys inside a tensor's {dtype, shape, data} map pass through
# the tools (lora-stream(5)): lora-pack and lora-cmaes write them back after
# data, byte-identical once the stream is in msgpack's shortest encoding
# (the Python helper writes long headers on purpose, so the first pass
# canonicalises and the second must change nothing).
. "$(dirname "$0")/lib.sh"
MK="$LORAPY mkstream" DUMP="$LORAPY dump"

# has_extras DTYPE: the dumped adapter (d.json) kept every tensor-map key
has_extras() {
	$PY - "$1" <<-'EOF'
	import json, sys
	r = json.loads(open("d.json").readline())
	t = r["tensors"][0]
	a, b = t["a"], t["b"]
	assert a["dtype"] == sys.argv[1] and a["shape"] == [2, 3], a
	assert a["sha256"] == "ab12" and a["scale"] == 0.5 and a["tags"] == ["x", 1, None, True], a
	assert list(a)[:3] == ["dtype", "shape", "data"] or sorted(a) == list(a), a
	assert set(b) == {"dtype", "shape", "data", "note"} and set(b["note"]) == {"k"}, b
	assert r["mine"] == -3, r
	EOF
}

mk() {
	$MK in.lora '[{"kind": "adapter", "name": "x", "r": 2, "alpha": 4.0, "rslora": False,
	  "tensors": [{"module": "m.q", "r": 2, "alpha": 4.0,
	    "a": {"dtype": "f32", "shape": [2, 3], "data": z(24), "sha256": "ab12", "scale": 0.5,
	          "tags": ["x", 1, None, True]},
	    "b": {"dtype": "f32", "shape": [4, 2], "data": z(32), "note": {"k": z(2)}}}],
	  "mine": -3}]'
}

test_expect_success 'lora-pack keeps tensor-map keys, and a second pass is byte-identical' '
	mk && lora-pack in.lora >one.lora && lora-pack - <one.lora >two.lora &&
	cmp one.lora two.lora &&
	$DUMP <one.lora >d.json && has_extras f32
'

test_expect_success 'lora-pack --dtype keeps them on the converted tensors' '
	mk && lora-pack --dtype bf16 in.lora >h.lora && $DUMP <h.lora >d.json && has_extras bf16
'

test_expect_success 'lora-cmaes writes the pool through byte-identical' '
	mk && lora-pack in.lora >pool.lora &&
	lora-cmaes -q --budget 3 -- "$LORA_BUILD/tests/test_fakeobj" obj <pool.lora >out.lora &&
	head -c $(wc -c <pool.lora) out.lora >head.lora && cmp pool.lora head.lora
'

test_done
