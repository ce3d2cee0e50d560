//! The model's named tensors, with Hugging Face names (q_proj, gate_proj, input_layernorm, ...),
//! whether they come from safetensors or from a GGUF file.
//!
//! Loading converts everything into the Hugging Face layout once, so the forward pass has one code
//! path for every source: GGUF names are mapped to HF names and GGUF's permuted Q/K rows are put
//! back in HF order here, never inside the math.

use crate::config::Config;
use crate::gguf::GgufFile;
use anyhow::{bail, ensure, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

/// A bias-free linear layer's weight, (out_features, in_features) like `nn.Linear.weight`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
}

impl Linear {
    /// y = x @ W.T. x: (b, t, in) -> (b, t, out)
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        super::ops::linear(x, &self.weight)
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// One decoder layer's weights. c = hidden size, h = query heads, kv = KV heads, d = head_dim,
/// f = intermediate size.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm before attention, (c)
    pub input_layernorm: Tensor,
    /// (h * d, c)
    pub q_proj: Linear,
    /// (kv * d, c)
    pub k_proj: Linear,
    /// (kv * d, c)
    pub v_proj: Linear,
    /// (c, h * d)
    pub o_proj: Linear,
    /// RMSNorm before the MLP, (c)
    pub post_attention_layernorm: Tensor,
    /// (f, c)
    pub gate_proj: Linear,
    /// (f, c)
    pub up_proj: Linear,
    /// (c, f)
    pub down_proj: Linear,
}

/// All of the model's weights.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding matrix, (vocab, c)
    pub embed_tokens: Tensor,
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm, (c)
    pub norm: Tensor,
    /// Output projection, (vocab, c); shares storage with embed_tokens when the weights are tied.
    pub lm_head: Linear,
}

/// Something that hands out tensors by their Hugging Face names.
pub trait TensorSource {
    /// The tensor called `name` in a Hugging Face checkpoint, or None if the source lacks it.
    fn tensor(&self, name: &str) -> Result<Option<Tensor>>;
}

impl Weights {
    /// Loads and checks every tensor against the config, converting to `dtype`.
    pub fn load(source: &dyn TensorSource, cfg: &Config, dtype: DType) -> Result<Self> {
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let q_out = cfg.num_attention_heads * cfg.head_dim;
        let kv_out = cfg.num_key_value_heads * cfg.head_dim;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = source
                .tensor(name)?
                .with_context(|| format!("tensor {name} is missing from the checkpoint"))?;
            ensure!(
                t.dims() == shape,
                "tensor {name} has shape {:?} but the config implies {shape:?}",
                t.dims()
            );
            Ok(t.to_dtype(dtype)?)
        };
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear {
                weight: get(name, &[out, inp])?,
            })
        };

        let embed_tokens = get("model.embed_tokens.weight", &[v, c])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(LayerWeights {
                input_layernorm: get(&format!("{p}.input_layernorm.weight"), &[c])?,
                q_proj: linear(&format!("{p}.self_attn.q_proj.weight"), q_out, c)?,
                k_proj: linear(&format!("{p}.self_attn.k_proj.weight"), kv_out, c)?,
                v_proj: linear(&format!("{p}.self_attn.v_proj.weight"), kv_out, c)?,
                o_proj: linear(&format!("{p}.self_attn.o_proj.weight"), c, q_out)?,
                post_attention_layernorm: get(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[c],
                )?,
                gate_proj: linear(&format!("{p}.mlp.gate_proj.weight"), f, c)?,
                up_proj: linear(&format!("{p}.mlp.up_proj.weight"), f, c)?,
                down_proj: linear(&format!("{p}.mlp.down_proj.weight"), c, f)?,
            });
        }
        let norm = get("model.norm.weight", &[c])?;
        let lm_head = if cfg.tie_word_embeddings {
            // Tied: the same tensor (shared storage, no copy) projects back to the vocabulary.
            Linear {
                weight: embed_tokens.clone(),
            }
        } else {
            linear("lm_head.weight", v, c)?
        };
        Ok(Weights {
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// Number of parameters, counting a tied lm_head once.
    pub fn parameter_count(&self, tied: bool) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [
                    &l.input_layernorm,
                    &l.q_proj.weight,
                    &l.k_proj.weight,
                    &l.v_proj.weight,
                    &l.o_proj.weight,
                    &l.post_attention_layernorm,
                    &l.gate_proj.weight,
                    &l.up_proj.weight,
                    &l.down_proj.weight,
                ]
                .iter()
                .map(|t| t.elem_count())
                .sum::<usize>()
            })
            .sum();
        let head = if tied {
            0
        } else {
            self.lm_head.weight.elem_count()
        };
        self.embed_tokens.elem_count() + layer + self.norm.elem_count() + head
    }
}

/// Safetensors files, memory-mapped (one file or the shards of an index).
pub struct SafetensorsSource {
    tensors: MmapedSafetensors,
    device: Device,
}

impl SafetensorsSource {
    pub fn open(paths: &[PathBuf], device: &Device) -> Result<Self> {
        // SAFETY: the files are mapped read-only and lmscope does not modify them while mapped.
        let tensors = unsafe { MmapedSafetensors::multi(paths) }.with_context(|| {
            let names: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
            format!("cannot read safetensors {}", names.join(", "))
        })?;
        Ok(SafetensorsSource {
            tensors,
            device: device.clone(),
        })
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, name: &str) -> Result<Option<Tensor>> {
        if self.tensors.get(name).is_err() {
            return Ok(None);
        }
        let t = self
            .tensors
            .load(name, &self.device)
            .with_context(|| format!("cannot load tensor {name}"))?;
        Ok(Some(t))
    }
}

/// A GGUF file's tensors, dequantized to f32 and renamed/reordered into the HF layout.
pub struct GgufSource<'a> {
    pub gguf: &'a GgufFile,
    pub cfg: &'a Config,
    pub device: Device,
}

impl TensorSource for GgufSource<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<Tensor>> {
        let Some((gguf_name, permute_heads)) = gguf_name(hf_name, self.cfg)? else {
            return Ok(None);
        };
        if !self.gguf.tensors.contains_key(&gguf_name) {
            return Ok(None);
        }
        let t = self
            .gguf
            .qtensor(&gguf_name, &self.device)?
            .dequantize(&self.device)
            .with_context(|| format!("cannot dequantize tensor {gguf_name}"))?;
        match permute_heads {
            Some(heads) => Ok(Some(unpermute_rope_rows(&t, heads)?)),
            None => Ok(Some(t)),
        }
    }
}

/// The GGUF name of a HF tensor, and for Q/K projections the head count their rows were permuted
/// with.
pub fn gguf_name(hf_name: &str, cfg: &Config) -> Result<Option<(String, Option<usize>)>> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Ok(Some((name.to_string(), None)));
    }
    let Some(rest) = hf_name.strip_prefix("model.layers.") else {
        return Ok(None);
    };
    let Some((layer, part)) = rest.split_once('.') else {
        return Ok(None);
    };
    let (suffix, permute) = match part {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(cfg.num_attention_heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(cfg.num_key_value_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        _ => return Ok(None),
    };
    Ok(Some((format!("blk.{layer}.{suffix}"), permute)))
}

/// Undoes llama.cpp's Q/K row permutation.
///
/// llama.cpp's converter reorders each head's rows from HF's half-split RoPE layout
/// (all first halves, then all second halves) to interleaved pairs:
/// `w.reshape(heads, 2, d/2, in).swapaxes(1, 2)`. The inverse is
/// `w.reshape(heads, d/2, 2, in).swapaxes(1, 2)`. w: (heads * d, in).
pub fn unpermute_rope_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || rows % heads != 0 || !(rows / heads).is_multiple_of(2) {
        bail!("cannot un-permute a ({rows}, {cols}) projection for {heads} heads");
    }
    let half = rows / heads / 2;
    Ok(
        w.reshape((heads, half, 2, cols))? // (heads, d/2, 2, in): GGUF's interleaved pairs
            .transpose(1, 2)? // (heads, 2, d/2, in): HF's halves
            .contiguous()?
            .reshape((rows, cols))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head, d = 4: HF rows [r0, r1 | r2, r3] become GGUF rows [r0, r2, r1, r3].
        let gguf = Tensor::new(&[[0f32], [2.], [1.], [3.]], &Device::Cpu).unwrap();
        let hf = unpermute_rope_rows(&gguf, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(hf.to_vec1::<f32>().unwrap(), vec![0.0, 1.0, 2.0, 3.0]);
        // Two heads permute independently.
        let gguf = Tensor::new(
            &[[0f32], [2.], [1.], [3.], [4.], [6.], [5.], [7.]],
            &Device::Cpu,
        )
        .unwrap();
        let hf = unpermute_rope_rows(&gguf, 2)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(
            hf.to_vec1::<f32>().unwrap(),
            (0..8).map(|i| i as f32).collect::<Vec<_>>()
        );
    }
}
