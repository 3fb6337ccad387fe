#!/bin/sh
# t0402 — lora-eval as lora-cmaes's coprocess: after the pool, each weights
# record must be answered by its score while stdin is still open (no reading
# ahead), and the scores must equal those of the same stream from a file.
. "$(dirname "$0")/lib.sh"
LIB=$LORAPY

if ! need_shared golden; then
	test_skip 'lora-eval coprocess' 'LORA_SHARED not set'
	test_done
	exit
fi
G=$LORA_SHARED/golden

test_expect_success 'each weights record is scored before the next one is sent' '
	lora-pack "$G"/adapters/llama-tiny/pool_? >pool &&
	$LIB coproc pool lora-eval -m "$G/models/llama-tiny" -d "$G/examples/llama-tiny.jsonl" >out &&
	test_grep "^\[1, 2, 3\]$" out
'

test_done
