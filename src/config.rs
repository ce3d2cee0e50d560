//! One resolved model configuration, from a Hugging Face `config.json` or from GGUF metadata.
//!
//! `HfConfig` mirrors `config.json` field by field (serde); `Config` is what the forward pass reads:
//! defaults filled in, derived sizes (head_dim) computed once, and every value checked so that a
//! hostile or broken file is refused with a clear error before any tensor is allocated.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The largest sizes lmscope accepts from a file. They are far above any Llama that fits on a
/// laptop, and low enough that `vocab * hidden` cannot overflow or ask for absurd allocations.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1 << 10;

/// The resolved configuration of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    /// The architecture name as the checkpoint states it (e.g. `LlamaForCausalLM`, `llama`).
    pub architecture: String,
    /// Number of rows of the embedding matrix (and of lm_head).
    pub vocab_size: usize,
    /// Width of the residual stream (576 for SmolLM-135M).
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's inner layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than the query heads).
    pub num_key_value_heads: usize,
    /// Size of one attention head; hidden_size / num_attention_heads unless the checkpoint says.
    pub head_dim: usize,
    /// The longest sequence the model was trained for; lmscope refuses longer inputs.
    pub max_position_embeddings: usize,
    /// Epsilon inside RMSNorm's square root.
    pub rms_norm_eps: f64,
    /// Base of the rotary position embedding frequencies.
    pub rope_theta: f64,
    /// Whether lm_head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id, if the checkpoint names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint's weights are stored in, as it says (`bfloat16`, `Q4_1`, ...).
    pub stored_dtype: Option<String>,
}

/// `config.json` as Hugging Face writes it for Llama-family models (only the fields lmscope uses).
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    /// Absent in older checkpoints, which then use one KV head per query head.
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    /// transformers' LlamaConfig default.
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    /// transformers' LlamaConfig default.
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    /// transformers' LlamaConfig default.
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

/// `eos_token_id` may be one id or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

fn default_max_position_embeddings() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}

impl Config {
    /// Reads and resolves a Hugging Face `config.json`.
    pub fn from_config_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json_str(&text)
            .with_context(|| format!("invalid model config {}", path.display()))
    }

    /// Resolves the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)?;
        let architecture = hf
            .architectures
            .first()
            .cloned()
            .or(hf.model_type.clone())
            .unwrap_or_else(|| "unknown".to_string());
        let is_llama = hf.model_type.as_deref().is_none_or(|t| t == "llama");
        ensure!(
            is_llama,
            "unsupported architecture {architecture:?} (model_type {:?}): lmscope runs Llama-family models",
            hf.model_type.as_deref().unwrap_or("none")
        );
        if let Some(act) = &hf.hidden_act {
            ensure!(act == "silu", "unsupported hidden_act {act:?}: Llama uses silu");
        }
        ensure!(!hf.attention_bias, "attention_bias = true is not supported");
        ensure!(!hf.mlp_bias, "mlp_bias = true is not supported");
        if let Some(scaling) = &hf.rope_scaling {
            let kind =
                scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|v| v.as_str());
            if !(scaling.is_null() || kind == Some("default")) {
                bail!("rope_scaling {scaling} is not supported (only plain RoPE is)");
            }
        }
        ensure!(hf.num_attention_heads > 0, "num_attention_heads is 0");
        ensure!(
            hf.head_dim.is_some() || hf.hidden_size.is_multiple_of(hf.num_attention_heads),
            "hidden_size ({}) is not divisible by num_attention_heads ({})",
            hf.hidden_size,
            hf.num_attention_heads
        );
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads);
        let config = Config {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            max_position_embeddings: hf.max_position_embeddings,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            tie_word_embeddings: hf.tie_word_embeddings,
            bos_token_id: hf.bos_token_id.and_then(|ids| ids.into_vec().first().copied()),
            eos_token_ids: hf.eos_token_id.map(TokenIds::into_vec).unwrap_or_default(),
            stored_dtype: hf.torch_dtype.or(hf.dtype),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every size against the others, so that loading can trust them.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in sizes {
            ensure!(value > 0, "{name} is 0");
            ensure!(value <= MAX_DIM, "{name} = {value} is larger than {MAX_DIM}");
        }
        ensure!(self.num_hidden_layers > 0, "num_hidden_layers is 0");
        ensure!(
            self.num_hidden_layers <= MAX_LAYERS,
            "num_hidden_layers = {} is larger than {MAX_LAYERS}",
            self.num_hidden_layers
        );
        ensure!(
            self.num_attention_heads * self.head_dim <= MAX_DIM,
            "num_attention_heads * head_dim is too large"
        );
        ensure!(
            self.num_attention_heads.is_multiple_of(self.num_key_value_heads),
            "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        ensure!(
            self.head_dim.is_multiple_of(2),
            "head_dim ({}) must be even for rotary embeddings",
            self.head_dim
        );
        ensure!(
            self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0,
            "rms_norm_eps = {} must be a positive number",
            self.rms_norm_eps
        );
        ensure!(
            self.rope_theta.is_finite() && self.rope_theta > 1.0,
            "rope_theta = {} must be a number above 1",
            self.rope_theta
        );
        Ok(())
    }

    /// Query heads that share one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

impl Config {
    /// Resolves the `llama.*` metadata of a GGUF file (llama.cpp's names for the same values).
    pub fn from_gguf(gguf: &crate::gguf::GgufFile) -> Result<Self> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        ensure!(
            arch == "llama",
            "GGUF architecture {arch:?} is not supported (lmscope runs \"llama\" models)"
        );
        let need = |key: &str| -> Result<usize> {
            gguf.get_usize(&format!("llama.{key}"))?
                .with_context(|| format!("metadata key llama.{key} is missing"))
        };
        let hidden_size = need("embedding_length")?;
        let num_attention_heads = need("attention.head_count")?;
        ensure!(num_attention_heads > 0, "llama.attention.head_count is 0");
        let tokens = gguf.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len());
        let vocab_size = match gguf.get_usize("llama.vocab_size")? {
            Some(v) => v,
            None => {
                tokens.context("neither llama.vocab_size nor tokenizer.ggml.tokens is present")?
            }
        };
        let head_dim = match gguf.get_usize("llama.attention.key_length")? {
            Some(d) => d,
            None => {
                ensure!(
                    hidden_size.is_multiple_of(num_attention_heads),
                    "llama.embedding_length ({hidden_size}) is not divisible by llama.attention.head_count ({num_attention_heads})"
                );
                hidden_size / num_attention_heads
            }
        };
        if let Some(rope_dims) = gguf.get_usize("llama.rope.dimension_count")? {
            ensure!(
                rope_dims == head_dim,
                "llama.rope.dimension_count = {rope_dims} differs from head_dim {head_dim}: partial rotary embeddings are not supported"
            );
        }
        let stored = gguf.tensors.get("blk.0.attn_q.weight").map(|t| format!("{:?}", t.dtype));
        let config = Config {
            architecture: arch,
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_hidden_layers: need("block_count")?,
            num_attention_heads,
            num_key_value_heads: gguf
                .get_usize("llama.attention.head_count_kv")?
                .unwrap_or(num_attention_heads),
            head_dim,
            max_position_embeddings: need("context_length")?,
            rms_norm_eps: gguf
                .get_f64("llama.attention.layer_norm_rms_epsilon")?
                .context("metadata key llama.attention.layer_norm_rms_epsilon is missing")?,
            rope_theta: gguf.get_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
            // llama.cpp omits output.weight when lm_head is the embedding matrix.
            tie_word_embeddings: !gguf.tensors.contains_key("output.weight"),
            bos_token_id: token_id(gguf, "tokenizer.ggml.bos_token_id")?,
            eos_token_ids: token_id(gguf, "tokenizer.ggml.eos_token_id")?.into_iter().collect(),
            stored_dtype: stored,
        };
        config.validate()?;
        if let Some(n) = tokens {
            ensure!(
                n == config.vocab_size,
                "the tokenizer has {n} tokens but llama.vocab_size is {}",
                config.vocab_size
            );
        }
        Ok(config)
    }
}

/// A token id from GGUF metadata; ids must fit in u32.
pub fn token_id(gguf: &crate::gguf::GgufFile, key: &str) -> Result<Option<u32>> {
    gguf.get_usize(key)?
        .map(|v| u32::try_from(v).with_context(|| format!("{key} = {v} is not a valid token id")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM_135M: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
      "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
      "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
      "rope_scaling": null, "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0,
      "hidden_act": "silu", "torch_dtype": "bfloat16"
    }"#;

    #[test]
    fn resolves_smollm_config() {
        let c = Config::from_json_str(SMOLLM_135M).unwrap();
        assert_eq!(c.head_dim, 64); // 576 / 9
        assert_eq!(c.kv_groups(), 3); // 9 query heads share 3 KV heads
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![0]);
        assert_eq!(c.stored_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn refuses_inconsistent_sizes() {
        let zero_heads =
            SMOLLM_135M.replace("\"num_attention_heads\": 9", "\"num_attention_heads\": 0");
        let err = Config::from_json_str(&zero_heads).unwrap_err();
        assert!(format!("{err:#}").contains("num_attention_heads is 0"), "{err:#}");

        let bad_groups =
            SMOLLM_135M.replace("\"num_key_value_heads\": 3", "\"num_key_value_heads\": 4");
        let err = Config::from_json_str(&bad_groups).unwrap_err();
        assert!(format!("{err:#}").contains("not a multiple"), "{err:#}");

        let huge = SMOLLM_135M.replace("\"vocab_size\": 49152", "\"vocab_size\": 99999999999");
        assert!(Config::from_json_str(&huge).is_err());
    }

    #[test]
    fn refuses_other_architectures() {
        let gpt2 = SMOLLM_135M
            .replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"")
            .replace("LlamaForCausalLM", "GPT2LMHeadModel");
        let err = Config::from_json_str(&gpt2).unwrap_err();
        assert!(format!("{err:#}").contains("unsupported architecture"), "{err:#}");
    }

    #[test]
    fn gguf_token_ids_must_fit_in_u32() {
        // A GGUF v3 header with one metadata entry: tokenizer.ggml.bos_token_id = 2^40 (u64).
        let key = b"tokenizer.ggml.bos_token_id";
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&10u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let g = crate::gguf::GgufFile::from_bytes("t.gguf", b).unwrap();
        let err = token_id(&g, "tokenizer.ggml.bos_token_id").unwrap_err();
        assert!(err.to_string().contains("is not a valid token id"), "{err}");
        assert_eq!(token_id(&g, "tokenizer.ggml.eos_token_id").unwrap(), None);
    }
}
