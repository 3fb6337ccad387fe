#!/bin/sh
# run.sh — the benchmarks (make bench). Each prints its own measurements and
# the ratio against its reference, measured in the same run. One line each.
TOP=$(cd "$(dirname "$0")/.." && pwd)
: "${LORA_BUILD:=build}"
case "$LORA_BUILD" in /*) ;; *) LORA_BUILD="$TOP/$LORA_BUILD" ;; esac
export LORA_BUILD
status=0
"$LORA_BUILD"/bench/bench_merge || status=1	# svd merge vs dense LAPACK SVD (h6)
"$TOP"/bench/bench_apply.sh || status=1	# lora-apply vs cp -r on a 1 GB model (h6)
"$LORA_BUILD"/bench/bench_t5 || status=1	# T5 LoraHub step (Flan-T5 small/large shapes) vs OpenBLAS sgemm (h5)
"$LORA_BUILD"/bench/bench_tok || status=1	# tokenizer load + encode 1000 BBH inputs vs targets (h3)
exit $status
