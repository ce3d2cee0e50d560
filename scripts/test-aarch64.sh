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
# tiny fixture at every position), every backend against the reference backend
# (tests/backends.rs: neon and portable within 1e-4 on the tiny fixture and the real GGUF), and
# the command-line tests (cli, friction, hub). Left out: the benches (speed under an emulator means
# nothing), the browser test (tests/trace.rs needs a browser for aarch64), and tests/docs.rs,
# tests/help.rs, tests/properties.rs and tests/robustness.rs, which run the same code paths as
# the ones kept many times over (every documented example, hundreds of generated inputs); they
# run natively on x86 in the rest of CI, where the kernels are the portable and x86 ones.
#
# Measured on this project's 2-core machine while other builds kept it at load 14-17: the
# dependencies cross-built from nothing about 30 min at that load, these tests after them 150 s;
# under qemu the unit tests 12 s, tests/backends.rs 1610 s (12 processes on the real model, the
# reference backend among them), tests/cli.rs 62 s, tests/commands.rs 965 s, tests/friction.rs
# 36 s: 47.5 min of wall time for 10.9 min of CPU time (user, qemu included), so an idle 2-core
# CI machine should take about 8-12 min. tests/commands.rs (965 s of that, the commands' output
# forms on the tiny fixture, no kernel-specific numbers) is left out to keep CI under an hour: it
# runs natively in the rest of CI, and so do tests/inspect.rs (382 s under qemu on a quiet
# machine; passes), tests/probs.rs (its golden tables on the tiny fixture are byte for byte, and
# NEON's fused multiply-adds move a last printed digit: the numbers themselves are checked by
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
cargo test --target "$target" "${tests[@]}" "$@"
echo "== tests under qemu-aarch64 in $((SECONDS - start)) s" >&2
