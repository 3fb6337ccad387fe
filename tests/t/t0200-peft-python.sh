#!/bin/sh
# t0200 — the PEFT directories lora-pack --unpack writes, checked by an
# independent numpy reader (not the C code under test): the safetensors
# layout is exactly what the safetensors library's serializer produces
# (tensors by dtype alignment then name, compact JSON header padded with
# spaces to 8 bytes, data packed from offset 0), the values equal the
# original adapter's (or round correctly after --dtype), and
# adapter_config.json gives every module the rank its tensors have.
. "$(dirname "$0")/lib.sh"

# the independent reader: lorapy.py values / ranks
NPST="$TOP/tests/t/lorapy.py"

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
