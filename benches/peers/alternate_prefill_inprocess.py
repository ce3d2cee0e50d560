"""The 128-token prefill of transformers in bfloat16 against lmscope's in-process bench binary
(benches/inprocess.rs) on one or more backends, alternated round by round in one script
(docs/performance.md, "AMD EPYC").

Each round: 15 prefills in transformers (the model loaded once, bfloat16, 2 threads, the
paragraph of bench_peers.py cut to 128 tokens, next-token logits only), the median of the last 13;
then the bench binary's `prefill_long_exact_s` median of 7 for each backend, on the same text.

    cargo bench --bench inprocess --no-run      # prints the binary's path
    /tmp/lmscope-peers-venv/bin/python benches/peers/alternate_prefill_inprocess.py \\
        --bench target/release/deps/inprocess-HASH [--rounds 4] [--backends avx512,avx2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers  # noqa: E402  (PARAGRAPH, long_ids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", required=True, help="the inprocess bench binary")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--backends", default="avx512,avx2", help="LMSCOPE_KERNELS values, comma-separated")
    p.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    gguf = Path(args.model)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    ).eval()
    ids = bench_peers.long_ids(tok(bench_peers.PARAGRAPH, add_special_tokens=False).input_ids)
    assert len(ids) == 128, len(ids)
    # The text of those 128 tokens, for lmscope (which tokenizes it to the same ids).
    text = tok.decode(ids)
    batch = torch.tensor([ids])
    for r in range(args.rounds):
        times = []
        with torch.inference_mode():
            for _ in range(15):
                t = time.perf_counter()
                model(batch, logits_to_keep=1)
                times.append(time.perf_counter() - t)
        tf = 1000 * statistics.median(times[2:])
        line = f"round {r + 1}: transformers bf16 {tf:.1f} ms"
        for backend in args.backends.split(","):
            out = subprocess.run(
                [args.bench, "--bench", "--threads", "2", "--reps", "7", "--decode-reps", "1",
                 "--new-tokens", "4", "--prompt", "The capital of Finland is",
                 "--long-text", text, "--forms", "exact"],
                env={**os.environ, "LMSCOPE_KERNELS": backend},
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            report = json.loads(out.stdout)
            assert report["long_tokens_exact"] == 128, report["long_tokens_exact"]
            ms = 1000 * report["prefill_long_exact_s"]["median"]
            line += f", lmscope {backend} {ms:.1f} ms ({ms / tf:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
