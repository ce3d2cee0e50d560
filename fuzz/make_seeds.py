#!/usr/bin/env python3
"""Writes the small hand-made seed inputs of the fuzz corpora (pure Python, no dependencies).

    python3 fuzz/make_seeds.py

corpus/gguf/seed-small-{f32,q8_0,q4}.gguf   complete 1-layer Llama GGUFs (vocab 8, hidden 32) with a
                                            gpt2 tokenizer: every path of the gguf target succeeds
                                            on them, and they are ~50x smaller than the fixtures.
corpus/safetensors/seed-small-config+model  a complete 1-layer config.json + separator + safetensors
                                            (F32, F16 and BF16 tensors).
corpus/tokenizer/seed-case-NN.txt           the texts of fixtures/smollm2/tokenizer_corpus.json.
corpus/chat_template/seed-NAME.jinja        the chat templates of fixtures/chat/reference.json (SmolLM2's
                                            and four in the style of other models), each followed by a
                                            NUL byte and a user message.
corpus/gguf/seed-tiny-llama-{f32,q8_0}.gguf and corpus/safetensors/seed-tiny-llama.safetensors
                                            copies of the tiny fixtures.
"""
import json
import shutil
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
SEPARATOR = b"\n--lmscope-fuzz-safetensors--\n"


def f16_bits(x: float) -> int:
    return struct.unpack("<H", struct.pack("<e", x))[0]


def val(i: int, n: int) -> float:
    """A deterministic small weight."""
    return ((i * 37 + n * 11) % 17 - 8) / 16.0


# ---------------------------------------------------------------- GGUF
def gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gvalue(v) -> bytes:
    if isinstance(v, bool):
        return struct.pack("<I?", 7, v)
    if isinstance(v, int):
        return struct.pack("<II", 4, v)
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if isinstance(v, str):
        return struct.pack("<I", 8) + gstr(v)
    if isinstance(v, list):
        if not v or isinstance(v[0], str):
            return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(gstr(s) for s in v)
        return struct.pack("<IIQ", 9, 5, len(v)) + b"".join(struct.pack("<i", x) for x in v)
    raise TypeError(v)


def encode_tensor(kind: str, values: list) -> bytes:
    if kind == "F32":
        return b"".join(struct.pack("<f", x) for x in values)
    if kind == "F16":
        return b"".join(struct.pack("<e", x) for x in values)
    out = b""
    for b in range(0, len(values), 32):
        blk = values[b : b + 32]
        amax = max(abs(x) for x in blk) or 1.0
        if kind == "Q8_0":
            d = amax / 127
            out += struct.pack("<H", f16_bits(d)) + bytes((round(x / d) & 0xFF) for x in blk)
        elif kind == "Q4_0":
            d = amax / 8
            q = [max(0, min(15, round(x / d) + 8)) for x in blk]
            out += struct.pack("<H", f16_bits(d)) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
        elif kind == "Q4_1":
            lo, hi = min(blk), max(blk)
            d = (hi - lo) / 15 or 1.0
            q = [max(0, min(15, round((x - lo) / d))) for x in blk]
            out += struct.pack("<HH", f16_bits(d), f16_bits(lo))
            out += bytes(q[j] | (q[j + 16] << 4) for j in range(16))
        else:
            raise ValueError(kind)
    return out


GGML_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8}


def small_gguf(matrix_kinds: dict, shape_overrides=None, meta_overrides=None) -> bytes:
    vocab, hidden, heads, kv_heads, inter = 8, 32, 2, 1, 32
    head_dim = hidden // heads
    tokens = ["<|endoftext|>", "<|im_start|>", "a", "b", "Ġ", "ab", "Ġa", "c"]
    meta = [
        ("general.architecture", "llama"),
        ("llama.embedding_length", hidden),
        ("llama.attention.head_count", heads),
        ("llama.attention.head_count_kv", kv_heads),
        ("llama.feed_forward_length", inter),
        ("llama.block_count", 1),
        ("llama.context_length", 16),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5),
        ("llama.rope.freq_base", 10000.0),
        ("llama.rope.dimension_count", head_dim),
        ("llama.vocab_size", vocab),
        ("tokenizer.ggml.model", "gpt2"),
        ("tokenizer.ggml.pre", "smollm"),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.token_type", [3, 3, 1, 1, 1, 1, 1, 1]),
        ("tokenizer.ggml.merges", ["a b", "Ġ a"]),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 0),
        ("tokenizer.ggml.add_bos_token", True),
    ]
    meta = [(k, (meta_overrides or {}).get(k, v)) for k, v in meta]
    shapes = {  # row-major (outermost first), as lmscope reports them
        "token_embd.weight": [vocab, hidden],
        "blk.0.attn_norm.weight": [hidden],
        "blk.0.attn_q.weight": [heads * head_dim, hidden],
        "blk.0.attn_k.weight": [kv_heads * head_dim, hidden],
        "blk.0.attn_v.weight": [kv_heads * head_dim, hidden],
        "blk.0.attn_output.weight": [hidden, heads * head_dim],
        "blk.0.ffn_norm.weight": [hidden],
        "blk.0.ffn_gate.weight": [inter, hidden],
        "blk.0.ffn_up.weight": [inter, hidden],
        "blk.0.ffn_down.weight": [hidden, inter],
        "output_norm.weight": [hidden],
    }
    shapes.update(shape_overrides or {})
    infos, data = b"", b""
    for n, (name, shape) in enumerate(shapes.items()):
        kind = "F32" if len(shape) == 1 else matrix_kinds.get(name.split(".")[-2], matrix_kinds["*"])
        count = 1
        for d in shape:
            count *= d
        blob = encode_tensor(kind, [val(i, n) for i in range(count)])
        infos += gstr(name) + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in reversed(shape))
        infos += struct.pack("<IQ", GGML_TYPE[kind], len(data))
        data += blob + b"\0" * (-len(blob) % 32)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(meta))
    head += b"".join(gstr(k) + gvalue(v) for k, v in meta) + infos
    head += b"\0" * (-len(head) % 32)
    return head + data


# ---------------------------------------------------------------- safetensors
def small_safetensors() -> bytes:
    vocab, hidden, heads, head_dim, kv_heads, inter = 8, 4, 2, 2, 1, 4
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": 1,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": [0, 1],
        "hidden_act": "silu", "torch_dtype": "float32", "rope_scaling": None,
    }
    shapes = {
        "model.embed_tokens.weight": ([vocab, hidden], "F32"),
        "model.layers.0.input_layernorm.weight": ([hidden], "F32"),
        "model.layers.0.self_attn.q_proj.weight": ([heads * head_dim, hidden], "F16"),
        "model.layers.0.self_attn.k_proj.weight": ([kv_heads * head_dim, hidden], "BF16"),
        "model.layers.0.self_attn.v_proj.weight": ([kv_heads * head_dim, hidden], "F32"),
        "model.layers.0.self_attn.o_proj.weight": ([hidden, heads * head_dim], "F32"),
        "model.layers.0.post_attention_layernorm.weight": ([hidden], "F32"),
        "model.layers.0.mlp.gate_proj.weight": ([inter, hidden], "F32"),
        "model.layers.0.mlp.up_proj.weight": ([inter, hidden], "F32"),
        "model.layers.0.mlp.down_proj.weight": ([hidden, inter], "F32"),
        "model.norm.weight": ([hidden], "F32"),
        "lm_head.weight": ([vocab, hidden], "F32"),
    }
    header, data = {}, b""
    for n, (name, (shape, dtype)) in enumerate(shapes.items()):
        count = 1
        for d in shape:
            count *= d
        vals = [val(i, n) for i in range(count)]
        if dtype == "F32":
            blob = b"".join(struct.pack("<f", x) for x in vals)
        elif dtype == "F16":
            blob = b"".join(struct.pack("<e", x) for x in vals)
        else:  # BF16: the top half of the f32
            blob = b"".join(struct.pack("<f", x)[2:] for x in vals)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    st = struct.pack("<Q", len(h)) + h + data
    return json.dumps(cfg).encode() + SEPARATOR + st


def main():
    gguf_dir = HERE / "corpus" / "gguf"
    st_dir = HERE / "corpus" / "safetensors"
    tok_dir = HERE / "corpus" / "tokenizer"
    chat_dir = HERE / "corpus" / "chat_template"
    for d in (gguf_dir, st_dir, tok_dir, chat_dir):
        d.mkdir(parents=True, exist_ok=True)
    (gguf_dir / "seed-small-f32.gguf").write_bytes(small_gguf({"*": "F32", "token_embd": "F16"}))
    (gguf_dir / "seed-small-q8_0.gguf").write_bytes(small_gguf({"*": "Q8_0"}))
    (gguf_dir / "seed-small-q4.gguf").write_bytes(
        small_gguf({"*": "Q4_0", "ffn_gate": "Q4_1", "ffn_up": "Q4_1", "ffn_down": "Q4_1"})
    )
    (st_dir / "seed-small-config+model").write_bytes(small_safetensors())
    for kind in ("f32", "q8_0"):
        shutil.copyfile(FIXTURES / f"tiny-llama-{kind}.gguf", gguf_dir / f"seed-tiny-llama-{kind}.gguf")
    shutil.copyfile(FIXTURES / "tiny-llama" / "model.safetensors", st_dir / "seed-tiny-llama.safetensors")
    cases = json.loads((FIXTURES / "smollm2" / "tokenizer_corpus.json").read_text())["cases"]
    for i, case in enumerate(cases):
        (tok_dir / f"seed-case-{i:02}.txt").write_bytes(case["text"].encode())
    chat = json.loads((FIXTURES / "chat" / "reference.json").read_text(encoding="utf-8"))
    templates = [("smollm2", chat["chat_template"])]
    templates += [(t["name"], t["template"]) for t in chat["templates"]]
    for name, source in templates:
        user = "Hyvää päivää! What is the capital of Finland?"
        (chat_dir / f"seed-{name}.jinja").write_bytes(source.encode() + b"\0" + user.encode())


if __name__ == "__main__":
    main()
