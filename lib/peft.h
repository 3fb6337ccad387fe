/*
 * peft — Hugging Face PEFT LoRA adapters on disk <-> struct lora_adapter.
 *
 * Reads adapter_config.json + adapter_model.safetensors (a directory, or the
 * .safetensors path with the config beside it). Resolves rank_pattern and
 * alpha_pattern per module (as PEFT 0.10 does), rslora, fan_in_fan_out.
 * fan_in_fan_out needs no transposing: PEFT stores lora_A [r, in] and
 * lora_B [out, r] for GPT-2's Conv1D too (it transposes only the product
 * when folding into the [in, out] Conv1D weight), so every adapter read
 * already means W' = W + s*B*A in the [out, in] orientation; a model loader
 * folds (s*B*A)^T into a Conv1D weight. meta.config keeps the original
 * config (fan_in_fan_out included) and unpack writes it back. Refuses DoRA,
 * lora_bias and modules_to_save weights, naming the feature and the file.
 */
#ifndef LORA_PEFT_H
#define LORA_PEFT_H

#include "err.h"
#include "stream.h"

/* Read a PEFT adapter. name: the directory's base name unless the caller
 * renames it. meta gets "config" (the adapter_config.json map) and "source"
 * (the path). Fills *out (caller frees with lora_adapter_free). */
int lora_peft_read(const char *path, struct lora_adapter *out, struct lora_err *err);

/* Write dir/adapter_config.json and dir/adapter_model.safetensors so PEFT
 * loads them. dir must not exist; it is created under a temporary name and
 * renamed at the end, so no half-written directory is ever visible. */
int lora_peft_write(const char *dir, const struct lora_adapter *a, struct lora_err *err);

#endif
