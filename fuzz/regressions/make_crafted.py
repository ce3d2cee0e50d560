#!/usr/bin/env python3
"""Writes the hand-crafted reproducers in fuzz/regressions/ (pure Python, no dependencies).

    python3 fuzz/regressions/make_crafted.py

Each is a minimal input for one bug that fuzzing (or reading the code the fuzzer pointed at)
found; docs/fuzzing.md explains each. Replay one with

    RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/regressions/<target>/<file>
"""
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import make_seeds as m  # noqa: E402


def gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write(target: str, name: str, data: bytes) -> None:
    (HERE / target).mkdir(exist_ok=True)
    (HERE / target / name).write_bytes(data)


def patch_safetensors(edit) -> bytes:
    """The small safetensors seed with its header edited by `edit(header)`."""
    cfg, st = m.small_safetensors().split(m.SEPARATOR)
    n = struct.unpack("<Q", st[:8])[0]
    header, body = json.loads(st[8 : 8 + n]), st[8 + n :]
    edit(header)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return cfg + m.SEPARATOR + struct.pack("<Q", len(h)) + h + body


# 1. gguf.rs: tensor byte size `elems / block * type_size` overflows u64.
#    One F32 tensor of 2^62 x 1 elements: 2^62 * 4 bytes.
b = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
b += gstr("w") + struct.pack("<I", 2) + struct.pack("<QQ", 1 << 62, 1) + struct.pack("<IQ", 0, 0)
write("gguf", "size-mul-overflow.gguf", b + b"\0" * (-len(b) % 32))

# 2. weights.rs Matrix::dims: a dense "matrix" with fewer than 2 dimensions (GGUF: 1-D F32
#    token_embd.weight of the right element count).
write("gguf", "embed-1d.gguf", m.small_gguf({"*": "F32"}, {"token_embd.weight": [8 * 32]}))

# 3. weights.rs unpermuted_row_order: a Q8_0 attn_q.weight of 2^40 x 0 (zero bytes) makes
#    lmscope allocate a 2^40-entry row order before checking the shape against the config.
write("gguf", "rows-2p40-cols-0.gguf", m.small_gguf({"*": "Q8_0"}, {"blk.0.attn_q.weight": [1 << 40, 0]}))

# 4. weights.rs GgufSource::matrix (MatrixForm::Quantized): `data.len() / dims.0` with a
#    0 x 32 attn_q.weight: division by zero.
write("gguf", "quantized-zero-rows.gguf", m.small_gguf({"*": "Q8_0"}, {"blk.0.attn_q.weight": [0, 32]}))

# 5. tokenizer.rs check_id: `self.vocab_size() - 1` underflows for an empty vocabulary.
write("gguf", "empty-vocab.gguf", m.small_gguf(
    {"*": "F32"}, meta_overrides={"tokenizer.ggml.tokens": [], "tokenizer.ggml.token_type": [],
                                  "tokenizer.ggml.merges": []}))

# 6. weights.rs Matrix::dims via safetensors: 1-D model.embed_tokens.weight.
def embed_1d(h):
    h["model.embed_tokens.weight"]["shape"] = [32]
write("safetensors", "embed-1d", patch_safetensors(embed_1d))
