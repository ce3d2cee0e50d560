#!/usr/bin/env bash
# Ten commands in one `lmscope repl` session against the same ten commands as ten fresh
# processes, on the real GGUF (docs/performance.md, "A session against fresh processes").
#
#   scripts/bench-repl.sh [ROUNDS]    # default 10 rounds, the two ways alternating
#
# Uses target/release/lmscope (cargo build --release first) and
# models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model.sh); LMSCOPE_BIN and LMSCOPE_MODEL
# override them. Checks first that both ways print the same bytes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-10}
lmscope=${LMSCOPE_BIN:-target/release/lmscope}
model=${LMSCOPE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
commands=(
  'tokenize "The capital of Finland is"'
  'logits -k 5 "The capital of Finland is"'
  'argmax "The capital of Finland is"'
  'argmax "The capital of Finland is" --steps 5'
  '--json logits -k 3 "Once upon a time"'
  'embed king queen --dims 5'
  'similarity king queen apple'
  'model'
  'generate "The capital of Finland is" --max-new-tokens 10'
  'tokenize --ids 504,3575,282'
)
lesson=$(mktemp)
trap 'rm -f "$lesson" "$lesson".*' EXIT
printf '%s\n' "${commands[@]}" >"$lesson"

fresh() {
  local c
  for c in "${commands[@]}"; do
    eval "\"\$lmscope\" --model \"\$model\" $c"
  done
}
session() {
  "$lmscope" --model "$model" repl <"$lesson"
}

fresh >"$lesson.fresh"
session >"$lesson.session"
cmp -s "$lesson.fresh" "$lesson.session" || {
  echo "the session's output differs from the fresh processes'" >&2
  exit 1
}

now() { date +%s%N; }
: >"$lesson.tf"
: >"$lesson.ts"
for ((r = 0; r < rounds; r++)); do
  t0=$(now); fresh >/dev/null; t1=$(now)
  session >/dev/null; t2=$(now)
  echo $(((t1 - t0) / 1000)) >>"$lesson.tf"
  echo $(((t2 - t1) / 1000)) >>"$lesson.ts"
done

stats() { # median min max in seconds, of microsecond samples
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.3f s (%.3f-%.3f)", m / 1e6, v[1] / 1e6, v[NR] / 1e6 }'
}
echo "ten commands, $rounds rounds, median (min-max):"
echo "  ten fresh processes:  $(stats "$lesson.tf")"
echo "  one repl session:     $(stats "$lesson.ts")"
grep -m1 'model name' /proc/cpuinfo
echo "$(nproc) cores, $("$lmscope" --version) at $(git rev-parse --short HEAD), load average $(cut -d" " -f1-3 /proc/loadavg)"
