//! The model: its weights, the operations it is made of, and the forward pass.

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
pub mod amx;
pub mod blocks;
pub mod forward;
#[cfg(target_arch = "x86_64")]
pub mod int8;
pub mod ops;
#[cfg(target_arch = "x86_64")]
pub mod simd;
pub mod team;
pub mod weights;

pub use forward::{softmax_f64, Capture, KvCache, Llama};
pub use weights::MatrixForm;

use crate::config::Config;
use crate::gguf::GgufFile;
use crate::source::{ModelFiles, Resolved};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Result};
use candle_core::{DType, Device};
use weights::{GgufSource, SafetensorsSource, Weights};

/// A model ready to run: the network, its tokenizer and where they came from.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// Where the weights came from, in words ("GGUF file models/...").
    pub origin: String,
    /// How the matrices are held: exact in a dtype, or quantized (8-bit activations).
    pub form: MatrixForm,
}

/// Loads config, tokenizer and weights from resolved files, computing in `dtype`, with numbers
/// equal to dequantizing the weights (the exact path).
pub fn load(resolved: &Resolved, dtype: DType) -> Result<LoadedModel> {
    load_as(resolved, MatrixForm::Exact(dtype))
}

/// Loads a model with its matrices in the given form.
pub fn load_as(resolved: &Resolved, form: MatrixForm) -> Result<LoadedModel> {
    let device = Device::Cpu;
    let dtype = match form {
        MatrixForm::Exact(dtype) => dtype,
        MatrixForm::Quantized => DType::F32,
    };
    let (cfg, tokenizer, weights) = match &resolved.files {
        ModelFiles::Safetensors { config, tokenizer, weights } => {
            ensure!(
                form != MatrixForm::Quantized,
                "--quantized needs a GGUF model (its weights are already quantized)"
            );
            let cfg = Config::from_config_json(config)?;
            let tokenizer = Tokenizer::from_file(tokenizer)?;
            let source = SafetensorsSource::open(weights, &device)?;
            let weights = Weights::load(&source, &cfg, form)?;
            (cfg, tokenizer, weights)
        }
        ModelFiles::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            let cfg = Config::from_gguf(&gguf)?;
            let tokenizer = Tokenizer::from_gguf(&gguf)?;
            let source = GgufSource { gguf: &gguf, cfg: &cfg, device: device.clone() };
            let weights = Weights::load(&source, &cfg, form)
                .map_err(|e| e.context(format!("invalid GGUF file {}", path.display())))?;
            (cfg, tokenizer, weights)
        }
    };
    ensure!(
        tokenizer.vocab_size() <= cfg.vocab_size,
        "the tokenizer has {} ids but the model's embedding matrix only {} rows",
        tokenizer.vocab_size(),
        cfg.vocab_size
    );
    let model = Llama::new(cfg, weights, dtype, device)?;
    Ok(LoadedModel { model, tokenizer, origin: resolved.origin.clone(), form })
}

/// The kernels the exact path's block-matrix products use on this CPU: "AMX" (long inputs on
/// AMX tiles, short ones on AVX-512), "AVX-512", or "portable" (8-lane AVX2 or plain Rust, with
/// candle's GEMM for long inputs). Their results differ only in the order of f32 additions.
pub fn matrix_kernels() -> &'static str {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    if amx::available() {
        return "AMX";
    }
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        return "AVX-512";
    }
    "portable"
}
