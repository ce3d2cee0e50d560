//! Where a model comes from and how it is read: config, tokenizer and weights from resolved
//! files (safetensors or GGUF) into a [`LoadedModel`].

pub mod weights;

pub use weights::MatrixForm;

use crate::config::Config;
use crate::gguf::GgufFile;
use crate::model::weights::Weights;
use crate::model::Llama;
use crate::source::{ModelFiles, Resolved};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Result};
use candle_core::{DType, Device};
use weights::{GgufSource, SafetensorsSource};

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
