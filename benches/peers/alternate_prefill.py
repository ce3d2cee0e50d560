"""The 128-token prefill of transformers in bfloat16 and of lmscope's exact path, alternated
round by round in one script, for a quick ratio that a phase change of the machine cannot skew
much (docs/performance.md).

Each round: 15 prefills in transformers (the model loaded once, bfloat16, 2 threads, the
paragraph of bench_peers.py cut to 128 tokens, next-token logits only as generate() does), their
median; then criterion's `prefill 128 tokens, next-token logits (exact)` of benches/stages.rs
(its own 128-token text; `cargo bench`, 2 threads), its median; and their ratio.

    /tmp/lmscope-peers-venv/bin/python benches/peers/alternate_prefill.py [--rounds 4]

(the virtualenv of benches/peers/run.sh; LMSCOPE_PEERS_SETUP_ONLY=1 benches/peers/run.sh makes
it). `--bench PATH` times a prebuilt criterion binary of benches/stages.rs instead of `cargo
bench` (several: each in turn, to compare builds). `--inprocess PATH [--backends avx512,avx2]`
times the bench binary of benches/inprocess.rs instead (`cargo bench --bench inprocess --no-run`
prints its path), on each backend in turn, on the text of transformers' 128 ids: its
`prefill_long_exact_s` median of 7 (docs/performance.md, "AMD EPYC").
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers  # noqa: E402  (PARAGRAPH, LONG_TOKENS, the model's path)

FILTER = r"stages/prefill 128 tokens, next-token logits \(exact\)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--bench", action="append", default=[], help="a criterion binary of stages.rs")
    ap.add_argument("--inprocess", metavar="PATH",
                    help="time the bench binary of benches/inprocess.rs on the same 128 tokens instead")
    ap.add_argument("--backends", default="avx512,avx2",
                    help="with --inprocess: the LMSCOPE_KERNELS values to time, comma-separated")
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    gguf = Path(args.model)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model = model.eval().to(torch.bfloat16)
    paragraph = tok(bench_peers.PARAGRAPH, add_special_tokens=False).input_ids
    ids = torch.tensor([bench_peers.long_ids(paragraph)])

    def transformers_ms(reps: int) -> float:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            with torch.inference_mode():
                model(ids, use_cache=False, logits_to_keep=1)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    env = dict(os.environ, RAYON_NUM_THREADS="2")

    def criterion_ms(cmd: list[str]) -> float:
        cmd = [*cmd, FILTER, "--warm-up-time", "1", "--measurement-time", "3"]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", out.stdout)
        if not m:
            sys.exit(f"error: no criterion time in: {out.stdout[-500:]}")
        return float(m.group(1)) * {"ms": 1, "s": 1000, "µs": 0.001}[m.group(2)]

    def inprocess_ms(backend: str) -> float:
        # The text of the same 128 ids (lmscope tokenizes it back to them: checked below).
        text = tok.decode(bench_peers.long_ids(paragraph))
        cmd = [args.inprocess, "--bench", "--threads", "2", "--reps", "7", "--decode-reps", "1",
               "--new-tokens", "4", "--long-text", text, "--forms", "exact"]  # fmt: skip
        run_env = dict(env, LMSCOPE_KERNELS=backend)
        out = subprocess.run(cmd, env=run_env, capture_output=True, text=True, check=True)
        report = json.loads(out.stdout)
        assert report["long_tokens_exact"] == 128, report["long_tokens_exact"]
        return report["prefill_long_exact_s"]["median"] * 1000

    if args.inprocess:
        runs = [(f"lmscope {b}", lambda b=b: inprocess_ms(b)) for b in args.backends.split(",")]
    else:
        cmds = [(Path(b).name, [b, "--bench"]) for b in args.bench] or [
            ("lmscope", ["cargo", "bench", "--quiet", "--bench", "stages", "--"])
        ]
        runs = [(name, lambda cmd=cmd: criterion_ms(cmd)) for name, cmd in cmds]

    transformers_ms(3)  # warm-up
    for r in range(args.rounds):
        t = transformers_ms(15)
        line = [f"round {r + 1}: transformers bf16 {t:.1f} ms"]
        for name, measure in runs:
            ms = measure()
            line.append(f"{name} {ms:.1f} ms ({ms / t:.3f}x)")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
