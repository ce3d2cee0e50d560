#!/usr/bin/env bash
# The test suite on aarch64 (the NEON kernels, `LMSCOPE_KERNELS=neon`, the default there), on an
# x86-64 machine: cross-compiled for aarch64-unknown-linux-gnu and run under qemu-aarch64, an
# emulator (it checks the numbers, not the speed: see docs/performance.md, "On ARM").
#
# Installs what it needs when missing: the rustup target, and the distribution's qemu-user,
# gcc-aarch64-linux-gnu (the linker) and libc6-dev-arm64-cross (with sudo unless root). Fetches
# the real model (scripts/fetch-model.sh). Extra arguments go to every `cargo test`;
# `scripts/test-aarch64.sh --setup` only installs (then `cargo clippy --target $target` works, as
# .ci/run runs it).
#
# Which tests: under qemu everything runs many times slower, so not the whole suite. It runs
# every test on the tiny fixture and the real-GGUF references: the library's unit tests (every
# NEON kernel against its portable twin, the ops against their formulas on every backend), the
# transformers references (tests/reference*.rs: top-10 and 1e-3 logits on the real GGUF, the
# tiny fixture at every position; not the --quantized path, see below), the neon backend against
# the reference backend (tests/backends.rs: within 1e-4 on the tiny fixture and the real GGUF),
# `--dtype bf16|f16` against transformers in those dtypes on the real GGUF (tests/bf16.rs: the
# NEON 16-bit kernels; 207 s under qemu), and the command-line tests (cli, friction, hub). Left out: the benches (speed under an emulator means
# nothing), the browser test (tests/trace.rs needs a browser for aarch64), and tests/docs.rs,
# tests/help.rs, tests/properties.rs and tests/robustness.rs, which run the same code paths as
# the ones kept many times over (every documented example, hundreds of generated inputs); they
# run natively on x86 in the rest of CI, where the kernels are the portable and x86 ones.
#
# Measured on a quiet 2-core AMD EPYC (2026-12-02, the whole of .ci/run from a clone: 51 min, with
# the x86 dependencies already built): the cross build from nothing 474 s; under qemu the unit
# tests 7 s, tests/backends.rs 494 s (then with the portable backend too), tests/reference_inspect.rs
# 547 s, tests/reference_smollm2.rs 556 s (367 s of it the --quantized test, now left out),
# cli 13 s, friction 9 s, hub 4 s: 1631 s. Again on 2026-12-04, the whole of .ci/run from a clean clone with nothing built:
# 42 min 15 s; the cross build 311 s, under qemu 1015 s (unit tests 5 s, backends 195 s, bf16
# 188 s, reference_inspect 370 s, reference_smollm2 237 s, cli/friction/hub 18 s). Left out, and
# run natively in the rest of CI: tests/commands.rs (965 s under qemu; the commands' output forms on the tiny
# fixture, no kernel-specific numbers), tests/inspect.rs (382 s), tests/probs.rs (golden tables
# and properties on the tiny fixture: the numbers the kernels make are checked here by
# tests/backends.rs and the references) and tests/repl.rs (a terminal session with timeouts; no
# kernel code of its own). If the list does not fit CI's time, keep --lib,
# tests/reference*.rs and tests/backends.rs (the neon backend against the reference within 1e-4).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
missing=()
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[[ -e "$sysroot/lib/libc.so.6" ]] || missing+=(libc6-dev-arm64-cross)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [[ "${1:-}" == --setup ]]; then
  exit 0
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot"
# The tests that start the lmscope binary start it through the emulator too (tests/common).
export LMSCOPE_TEST_RUNNER="$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"

scripts/fetch-model.sh >/dev/null

tests=(
  --lib
  --test reference_tiny
  --test reference_smollm2
  --test reference_inspect
  --test bf16
  --test backends
  --test architecture
  --test cli
  --test friction
  --test hub
)
start=$SECONDS
cargo test --target "$target" "${tests[@]}" --no-run "$@"
echo "== built for $target in $((SECONDS - start)) s" >&2
start=$SECONDS
# Left out by name: the --quantized path against the exact one (367 s under qemu, a third of the
# run): on aarch64 --quantized runs candle's own quantized matmul, not lmscope's kernels.
cargo test --target "$target" "${tests[@]}" "$@" -- --skip quantized_path_stays_close_to_the_exact_path
echo "== tests under qemu-aarch64 in $((SECONDS - start)) s" >&2
