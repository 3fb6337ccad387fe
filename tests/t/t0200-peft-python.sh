#!/bin/sh
# t0200 — the PEFT directories lora-pack --unpack writes, checked by an
# independent numpy reader (not the C code under test): the safetensors
# layout is exactly what the safetensors library's serializer produces
# (tensors by dtype alignment then name, compact JSON header padded with
# spaces to 8 bytes, data packed from offset 0), the values equal the
# original adapter's (or round correctly after --dtype), and
# adapter_config.json gives every module the rank its tensors have.
. "$(dirname "$0")/lib.sh"

cat > "$TRASH_ROOT/npst.py" <<'EOF'
import json, struct, sys, re
import numpy as np

ORDER = {"F32": 11, "BF16": 8, "F16": 7}   # the library's Dtype enum ranks

def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    assert n % 8 == 0, "header length %d not a multiple of 8" % n
    raw = b[8:8 + n]
    hdr = json.loads(raw)
    meta = hdr.pop("__metadata__", None)
    data = b[8 + n:]
    out = {}
    for k, v in hdr.items():
        s, e = v["data_offsets"]
        buf = data[s:e]
        if v["dtype"] == "F32":
            a = np.frombuffer(buf, "<f4").astype(np.float64)
        elif v["dtype"] == "F16":
            a = np.frombuffer(buf, "<f2").astype(np.float64)
        elif v["dtype"] == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            raise SystemExit("unexpected dtype " + v["dtype"])
        out[k] = (v["dtype"], tuple(v["shape"]), a.reshape(v["shape"]))
    return b, n, raw, hdr, meta, data, out

def serialize(hdr, meta):
    # the safetensors library's prepare(): sort by dtype rank desc, then name
    names = sorted(hdr, key=lambda k: (-ORDER[hdr[k]["dtype"]], k))
    parts = []
    if meta is not None:
        parts.append('"__metadata__":' + json.dumps(meta, separators=(",", ":"), ensure_ascii=False))
    off = 0
    for k in names:
        v = hdr[k]
        size = int(np.prod(v["shape"], dtype=np.int64)) * (4 if v["dtype"] == "F32" else 2)
        parts.append(json.dumps(k, ensure_ascii=False) + ":" + json.dumps(
            {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [off, off + size]},
            separators=(",", ":")))
        off += size
    s = ("{" + ",".join(parts) + "}").encode()
    return s + b" " * ((8 - len(s) % 8) % 8), names

def layout(path):
    b, n, raw, hdr, meta, data, out = read(path)
    want, names = serialize(hdr, meta)
    assert raw == want, "header differs from the library's:\n%r\n%r" % (raw, want)
    assert meta == {"format": "pt"}, meta
    offs = [hdr[k]["data_offsets"] for k in names]
    assert offs[0][0] == 0 and offs[-1][1] == len(data), "data region not tiled"
    return out

def key(k):
    return re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", k)

def rounded(a, mode):
    # what an exact f32 -> f16 / bf16 round-to-nearest-even conversion gives
    f = a.astype(np.float32)
    if mode == "f16":
        return f.astype(np.float16).astype(np.float64)
    if mode == "bf16":
        u = f.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a

def values(orig, new, mode):
    a = {key(k): v for k, v in read(orig)[-1].items()}
    b = layout(new)
    assert sorted(a) == sorted(b), (sorted(a)[:3], sorted(b)[:3])
    n = 0
    for k in a:
        assert a[k][1] == b[k][1], (k, a[k][1], b[k][1])
        want = rounded(a[k][2], mode)
        bad = int(np.sum(want != b[k][2]))
        assert bad == 0, "%s: %d values differ from exact %s rounding" % (k, bad, mode)
        if mode != "same":
            assert b[k][0] == mode.upper(), (k, b[k][0])
        n += want.size
    print("%d values equal to the %s reference" % (n, mode))

def ranks(d):
    # PEFT 0.10: re.match(".*\." + key + "$", module), rank keys then alpha keys
    cfg = json.load(open(d + "/adapter_config.json"))
    assert cfg["peft_type"] == "LORA"
    t = read(d + "/adapter_model.safetensors")[-1]
    pats = list(cfg.get("rank_pattern") or {}) + list(cfg.get("alpha_pattern") or {})
    for k, (dt, shape, a) in t.items():
        if ".lora_A." not in k:
            continue
        mod = k[len("base_model.model."):].split(".lora_A.")[0]
        hit = next((p for p in pats if re.match(r".*\." + p + "$", mod)), mod)
        r = (cfg.get("rank_pattern") or {}).get(hit, cfg["r"])
        assert r == shape[0], (mod, r, shape)
        tm = cfg["target_modules"]
        assert any(mod == x or mod.endswith("." + x) for x in tm) if isinstance(tm, list) \
            else re.fullmatch(tm, mod), (mod, tm)

cmd = sys.argv[1]
if cmd == "values":
    values(sys.argv[2], sys.argv[3], sys.argv[4])
elif cmd == "ranks":
    ranks(sys.argv[2])
EOF
NPST="$TRASH_ROOT/npst.py"

# the first python3 that has numpy (a pyenv shim may hide Debian's)
PY=
for p in python3 /usr/bin/python3; do
	if "$p" -c 'import numpy' 2>/dev/null; then
		PY=$p
		break
	fi
done
if [ -z "$PY" ]; then
	test_skip 'numpy reader checks' 'no python3 with numpy'
	test_done
	exit $?
fi
if ! command -v lora-pack >/dev/null 2>&1; then
	test_skip 'numpy reader checks' 'lora-pack is not built'
	test_done
	exit $?
fi

if need_shared gpt2-lora-quotes golden/adapters/t5-tiny/extra_r8_qkvo golden/adapters/llama-tiny/extra_r2_rslora; then
	for a in gpt2-lora-quotes golden/adapters/t5-tiny/extra_r8_qkvo \
		golden/adapters/llama-tiny/extra_r2_rslora golden/adapters/gpt2-tiny/extra_r8_all; do
		n=$(basename "$a")
		test_expect_success "unpacked $n: library layout and identical values (numpy reader)" '
			lora-pack "$LORA_SHARED/'"$a"'" > s.lora &&
			lora-pack --unpack out < s.lora &&
			"$PY" "$NPST" values "$LORA_SHARED/'"$a"'/adapter_model.safetensors" out/'"$n"'/adapter_model.safetensors same &&
			"$PY" "$NPST" ranks out/'"$n"'
		'
	done
	# --dtype: every value must equal numpy's own round-to-nearest-even
	# conversion of the f32 original (numpy astype for f16, the bit-level
	# RNE formula for bf16)
	test_expect_success 'bf16 unpack: library layout, values = exact RNE bf16' '
		lora-pack --dtype bf16 "$LORA_SHARED/gpt2-lora-quotes" > s.lora &&
		lora-pack --unpack out < s.lora &&
		"$PY" "$NPST" values "$LORA_SHARED/gpt2-lora-quotes/adapter_model.safetensors" out/gpt2-lora-quotes/adapter_model.safetensors bf16
	'
	test_expect_success 'f16 unpack: library layout, values = exact RNE f16 (subnormals included)' '
		lora-pack --dtype f16 "$LORA_SHARED/golden/adapters/llama-tiny/extra_r2_rslora" > s.lora &&
		lora-pack --unpack out < s.lora &&
		"$PY" "$NPST" values "$LORA_SHARED/golden/adapters/llama-tiny/extra_r2_rslora/adapter_model.safetensors" out/extra_r2_rslora/adapter_model.safetensors f16
	'
	test_expect_success 'several adapters unpack side by side, each valid' '
		lora-pack "$LORA_SHARED"/golden/adapters/t5-tiny/pool_0 "$LORA_SHARED"/golden/adapters/t5-tiny/pool_1 > s.lora &&
		lora-pack --unpack out < s.lora &&
		for n in pool_0 pool_1; do
			"$PY" "$NPST" values "$LORA_SHARED/golden/adapters/t5-tiny/$n/adapter_model.safetensors" out/$n/adapter_model.safetensors same &&
			"$PY" "$NPST" ranks out/$n || return 1
		done
	'
else
	test_skip 'numpy reader checks on real adapters' 'LORA_SHARED unset'
fi
test_done
