//! Structured fuzzing of `Weights::load`'s shape and dtype checks.
//!
//! The byte-level `gguf` and `safetensors` targets rarely manage to edit a tensor's shape while
//! keeping the file consistent (safetensors checks shape x dtype against the data offsets; GGUF
//! checks the data fits). This target starts from a complete, valid 1-layer checkpoint for a small
//! fixed config, in either format, and applies arbitrary edits: drop a tensor, give it other
//! dimensions (any rank 0..=5, zero-sized included), another dtype, or truncate the file. Every
//! load must then end in `Ok` or `Err`, never a panic, abort or huge allocation.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use lmscope::config::Config;
use lmscope::gguf::GgufFile;
use lmscope::load::weights::{GgufSource, SafetensorsSource};
use lmscope::model::Weights;
use lmscope::load::MatrixForm;
use std::io::Write;

const VOCAB: u64 = 8;
const HIDDEN: u64 = 32;
const HEADS: u64 = 2;
const KV_HEADS: u64 = 1;
const HEAD_DIM: u64 = 16;
const INTER: u64 = 32;
/// Edited tensors are capped at this many elements, so that every input stays small.
const MAX_ELEMS: u64 = 1 << 16;

#[derive(Arbitrary, Debug)]
enum Format {
    Gguf,
    Safetensors,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Remove,
    /// Dimensions, outermost first; more than 5 are cut off.
    Reshape(Vec<u32>),
    /// Index into the format's dtype table.
    Retype(u8),
    /// Swap the two dimensions of a matrix.
    Transpose,
}

#[derive(Arbitrary, Debug)]
struct Input {
    format: Format,
    tied: bool,
    /// (tensor index, edit)
    edits: Vec<(u8, Edit)>,
    /// Bytes to cut off the end of the file.
    truncate: u16,
    form: u8,
}

struct Spec {
    name: &'static str,
    shape: Vec<u64>,
    dtype: usize,
}

/// HF name, GGUF name, shape of the valid checkpoint.
fn tensors(tied: bool) -> Vec<(&'static str, &'static str, Vec<u64>)> {
    let mut t = vec![
        ("model.embed_tokens.weight", "token_embd.weight", vec![VOCAB, HIDDEN]),
        ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", vec![HIDDEN]),
        ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", vec![HEADS * HEAD_DIM, HIDDEN]),
        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
        ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
        ("model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight", vec![HIDDEN, HEADS * HEAD_DIM]),
        ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight", vec![HIDDEN]),
        ("model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight", vec![INTER, HIDDEN]),
        ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight", vec![INTER, HIDDEN]),
        ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", vec![HIDDEN, INTER]),
        ("model.norm.weight", "output_norm.weight", vec![HIDDEN]),
    ];
    if !tied {
        t.push(("lm_head.weight", "output.weight", vec![VOCAB, HIDDEN]));
    }
    t
}

/// (safetensors name, bytes per element)
const ST_DTYPES: &[(&str, u64)] =
    &[("F32", 4), ("F16", 2), ("BF16", 2), ("F64", 8), ("I64", 8), ("U32", 4), ("U8", 1), ("I32", 4)];
/// (ggml type id, block size, bytes per block)
const GGML_DTYPES: &[(u32, u64, u64)] = &[
    (0, 1, 4),      // F32
    (1, 1, 2),      // F16
    (30, 1, 2),     // BF16
    (2, 32, 18),    // Q4_0
    (3, 32, 20),    // Q4_1
    (8, 32, 34),    // Q8_0
    (12, 256, 144), // Q4K
    (14, 256, 210), // Q6K
];

fn apply(specs: &mut Vec<Spec>, edits: &[(u8, Edit)], n_dtypes: usize) {
    for (i, edit) in edits.iter().take(16) {
        if specs.is_empty() {
            return;
        }
        let i = *i as usize % specs.len();
        match edit {
            Edit::Remove => {
                specs.remove(i);
            }
            Edit::Reshape(dims) => {
                let dims: Vec<u64> = dims.iter().take(5).map(|&d| d as u64).collect();
                // Zero-sized tensors may have huge dimensions; others are capped.
                let fits = dims.contains(&0)
                    || dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_some_and(|e| e <= MAX_ELEMS);
                if fits {
                    specs[i].shape = dims;
                }
            }
            Edit::Retype(t) => specs[i].dtype = *t as usize % n_dtypes,
            Edit::Transpose => specs[i].shape.reverse(),
        }
    }
}

/// Element count of a shape (0 if any dimension is 0, whatever the others are).
fn elems(shape: &[u64]) -> u64 {
    if shape.contains(&0) {
        0
    } else {
        shape.iter().product()
    }
}

fn fill(out: &mut Vec<u8>, n: u64) {
    // Small, finite values in every encoding: 0x3c00 is 1.0 as f16; bytes 0x3c/0x00 alternate.
    out.extend((0..n).map(|i| if i % 2 == 1 { 0x3c } else { 0x00 }));
}

fn gguf_bytes(specs: &[Spec]) -> Vec<u8> {
    fn s(b: &mut Vec<u8>, v: &str) {
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    let meta: &[(&str, u64)] = &[
        ("llama.embedding_length", HIDDEN),
        ("llama.attention.head_count", HEADS),
        ("llama.attention.head_count_kv", KV_HEADS),
        ("llama.feed_forward_length", INTER),
        ("llama.block_count", 1),
        ("llama.context_length", 16),
        ("llama.vocab_size", VOCAB),
    ];
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(specs.len() as u64).to_le_bytes());
    b.extend_from_slice(&(meta.len() as u64 + 2).to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "llama.attention.layer_norm_rms_epsilon");
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(&1e-5f32.to_le_bytes());
    for (k, v) in meta {
        s(&mut b, k);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&(*v as u32).to_le_bytes());
    }
    let mut data = Vec::new();
    for spec in specs {
        let (ty, block, bytes) = GGML_DTYPES[spec.dtype];
        s(&mut b, spec.name);
        b.extend_from_slice(&(spec.shape.len() as u32).to_le_bytes());
        for d in spec.shape.iter().rev() {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&(data.len() as u64).to_le_bytes());
        fill(&mut data, elems(&spec.shape).div_ceil(block) * bytes);
        data.resize(data.len().next_multiple_of(32), 0);
    }
    b.resize(b.len().next_multiple_of(32), 0);
    b.extend_from_slice(&data);
    b
}

fn safetensors_bytes(specs: &[Spec]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let (dtype, size) = ST_DTYPES[spec.dtype];
        let start = data.len();
        fill(&mut data, elems(&spec.shape) * size);
        let shape: Vec<String> = spec.shape.iter().map(u64::to_string).collect();
        header += &format!(
            "{}\"{}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{start},{}]}}",
            if i > 0 { "," } else { "" },
            spec.name,
            shape.join(","),
            data.len()
        );
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&data);
    b
}

fuzz_target!(|input: Input| {
    let gguf = matches!(input.format, Format::Gguf);
    let mut specs: Vec<Spec> = tensors(input.tied)
        .into_iter()
        .map(|(hf, gg, shape)| Spec { name: if gguf { gg } else { hf }, shape, dtype: 0 })
        .collect();
    let n_dtypes = if gguf { GGML_DTYPES.len() } else { ST_DTYPES.len() };
    apply(&mut specs, &input.edits, n_dtypes);
    let mut bytes = if gguf { gguf_bytes(&specs) } else { safetensors_bytes(&specs) };
    bytes.truncate(bytes.len().saturating_sub(input.truncate as usize));

    if gguf {
        let Ok(file) = GgufFile::from_bytes("fuzz.gguf", bytes) else { return };
        let Ok(cfg) = Config::from_gguf(&file) else { return };
        let form = match input.form % 3 {
            0 => MatrixForm::Exact(DType::F32),
            1 => MatrixForm::Exact(DType::F16),
            _ => MatrixForm::Quantized,
        };
        let source = GgufSource { gguf: &file, cfg: &cfg, device: Device::Cpu };
        let _ = Weights::load(&source, &cfg, form);
    } else {
        let cfg = Config::from_json_str(&format!(
            r#"{{"model_type": "llama", "vocab_size": {VOCAB}, "hidden_size": {HIDDEN},
                "intermediate_size": {INTER}, "num_hidden_layers": 1,
                "num_attention_heads": {HEADS}, "num_key_value_heads": {KV_HEADS},
                "tie_word_embeddings": {}}}"#,
            input.tied
        ))
        .expect("fixed config");
        let path = std::env::temp_dir()
            .join(format!("lmscope-fuzz-shapes-{}.safetensors", std::process::id()));
        std::fs::File::create(&path).and_then(|mut f| f.write_all(&bytes)).expect("scratch file");
        if let Ok(source) = SafetensorsSource::open(std::slice::from_ref(&path), &Device::Cpu) {
            let dtype = if input.form % 2 == 0 { DType::F32 } else { DType::BF16 };
            let _ = Weights::load(&source, &cfg, MatrixForm::Exact(dtype));
        }
    }
});
