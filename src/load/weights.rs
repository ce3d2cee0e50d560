//! Reading the weights: safetensors (memory-mapped) or GGUF (renamed to Hugging Face names, Q/K
//! rows un-permuted, blocks kept memory-mapped where the engine room multiplies them directly),
//! every shape checked against the config before anything is allocated.
//!
//! Loading converts everything into the Hugging Face layout once, so the forward pass has one code
//! path for every source: GGUF names are mapped to HF names and GGUF's permuted Q/K rows are put
//! back in HF order here, never inside the math.

use crate::config::Config;
use crate::gguf::GgufFile;
use crate::kernels::blocks::{BlockBytes, BlockMatrix, BlockType};
use crate::kernels::{self, Backend, Matrix};
use crate::model::weights::{LayerWeights, Weights};
use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::QMatMul;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

/// How matrices are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixForm {
    /// Numbers equal to dequantizing to `dtype` (f32, bf16, f16: GGUF blocks kept and
    /// dequantized inside the product where lmscope has a kernel for the type).
    Exact(DType),
    /// GGUF blocks in ggml's quantized arithmetic (activations rounded to 8 bits): lmscope's
    /// kernel for Q4_0/Q4_1/Q8_0 on CPUs with AVX512-VNNI, candle's quantized matmul otherwise.
    Quantized,
}

/// Something that hands out tensors by their Hugging Face names.
pub trait TensorSource {
    /// The shape the file declares for `name` (read from its header, nothing loaded), or None
    /// if the source lacks it. Checked against the config before anything is allocated.
    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>>;

    /// The tensor called `name` in a Hugging Face checkpoint, or None if the source lacks it.
    fn tensor(&self, name: &str) -> Result<Option<Tensor>>;

    /// The matrix called `name`, in the requested form where the source can provide it.
    fn matrix(&self, name: &str, form: MatrixForm) -> Result<Option<Matrix>> {
        let dtype = match form {
            MatrixForm::Exact(dtype) => dtype,
            MatrixForm::Quantized => DType::F32,
        };
        self.tensor(name)?.map(|t| Matrix::dense(t.to_dtype(dtype)?)).transpose()
    }
}

impl Weights {
    /// Loads and checks every tensor against the config.
    pub fn load(source: &dyn TensorSource, cfg: &Config, form: MatrixForm) -> Result<Self> {
        let dtype = match form {
            MatrixForm::Exact(dtype) => dtype,
            MatrixForm::Quantized => DType::F32,
        };
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let q_out = cfg.num_attention_heads * cfg.head_dim;
        let kv_out = cfg.num_key_value_heads * cfg.head_dim;
        // The declared shape must be the config's before a byte is loaded.
        let check = |name: &str, expected: &[usize]| -> Result<()> {
            let shape = source
                .shape(name)?
                .with_context(|| format!("tensor {name} is missing from the checkpoint"))?;
            ensure!(
                shape == expected,
                "tensor {name} has shape {shape:?} but the config implies {expected:?}"
            );
            Ok(())
        };
        let vector = |name: &str| -> Result<Tensor> {
            check(name, &[c])?;
            let t = source
                .tensor(name)?
                .with_context(|| format!("tensor {name} is missing from the checkpoint"))?;
            ensure!(t.dims() == [c], "tensor {name} loaded with shape {:?}", t.dims());
            Ok(t.to_dtype(dtype)?)
        };
        let matrix = |name: &str, out: usize, inp: usize, form: MatrixForm| -> Result<Matrix> {
            check(name, &[out, inp])?;
            let m = source
                .matrix(name, form)?
                .with_context(|| format!("tensor {name} is missing from the checkpoint"))?;
            ensure!(m.dims() == (out, inp), "tensor {name} loaded with shape {:?}", m.dims());
            Ok(m)
        };

        // The embedding is looked up row by row: never candle's quantized form.
        let embed_form = match form {
            MatrixForm::Quantized => MatrixForm::Exact(DType::F32),
            exact => exact,
        };
        let embed_tokens = matrix("model.embed_tokens.weight", v, c, embed_form)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(LayerWeights {
                input_layernorm: vector(&format!("{p}.input_layernorm.weight"))?,
                q_proj: matrix(&format!("{p}.self_attn.q_proj.weight"), q_out, c, form)?,
                k_proj: matrix(&format!("{p}.self_attn.k_proj.weight"), kv_out, c, form)?,
                v_proj: matrix(&format!("{p}.self_attn.v_proj.weight"), kv_out, c, form)?,
                o_proj: matrix(&format!("{p}.self_attn.o_proj.weight"), c, q_out, form)?,
                post_attention_layernorm: vector(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_proj: matrix(&format!("{p}.mlp.gate_proj.weight"), f, c, form)?,
                up_proj: matrix(&format!("{p}.mlp.up_proj.weight"), f, c, form)?,
                down_proj: matrix(&format!("{p}.mlp.down_proj.weight"), c, f, form)?,
            });
        }
        let norm = vector("model.norm.weight")?;
        let lm_head = if !cfg.tie_word_embeddings {
            matrix("lm_head.weight", v, c, form)?
        } else if form == MatrixForm::Quantized {
            // The tied matrix once more, in candle's quantized form.
            matrix("model.embed_tokens.weight", v, c, form)?
        } else {
            // Tied: the same storage (no copy) projects back to the vocabulary.
            embed_tokens.clone()
        };
        Ok(Weights { embed_tokens, layers, norm, lm_head })
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
        Ok(SafetensorsSource { tensors, device: device.clone() })
    }
}

impl TensorSource for SafetensorsSource {
    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>> {
        Ok(self.tensors.get(name).ok().map(|view| view.shape().to_vec()))
    }

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

/// A GGUF file's tensors, renamed and reordered into the HF layout.
pub struct GgufSource<'a> {
    pub gguf: &'a GgufFile,
    pub cfg: &'a Config,
    pub device: Device,
}

impl TensorSource for GgufSource<'_> {
    fn shape(&self, hf_name: &str) -> Result<Option<Vec<usize>>> {
        let Some((gguf_name, _)) = gguf_name(hf_name, self.cfg)? else {
            return Ok(None);
        };
        Ok(self.gguf.tensors.get(&gguf_name).map(|info| info.dims.clone()))
    }

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

    fn matrix(&self, hf_name: &str, form: MatrixForm) -> Result<Option<Matrix>> {
        let Some((gguf_name, permute_heads)) = gguf_name(hf_name, self.cfg)? else {
            return Ok(None);
        };
        let Some(info) = self.gguf.tensors.get(&gguf_name) else {
            return Ok(None);
        };
        let dense = |dtype: DType| -> Result<Option<Matrix>> {
            self.tensor(hf_name)?.map(|t| Matrix::dense(t.to_dtype(dtype)?)).transpose()
        };
        // The tensor's blocks, memory-mapped (Q/K rows put back in HF order), where lmscope has
        // kernels for its type.
        let blocks = || -> Result<Option<BlockMatrix>> {
            let Some(kind) = BlockType::from_ggml(info.dtype) else {
                return Ok(None);
            };
            let [rows, cols] = info.dims[..] else {
                bail!("tensor {gguf_name} has {} dimensions, not 2", info.dims.len());
            };
            let bytes = BlockBytes::Mapped {
                map: self.gguf.map().clone(),
                start: info.offset,
                len: info.size,
            };
            let mut m = BlockMatrix::new(kind, rows, cols, bytes)
                .with_context(|| format!("tensor {gguf_name}"))?;
            if let Some(heads) = permute_heads {
                m = m.with_row_order(&unpermuted_row_order(rows, heads)?);
            }
            Ok(Some(m))
        };
        match form {
            // The reference backend runs the plain formulas: dense matrices only.
            MatrixForm::Exact(dtype) if kernels::backend() == Backend::Reference => dense(dtype),
            // f32, bf16 and f16 multiply the blocks directly (in bf16 and f16 each weight is
            // rounded to the dtype inside the product, as transformers' cast of the dequantized
            // matrix rounds it).
            MatrixForm::Exact(dtype @ (DType::F32 | DType::BF16 | DType::F16)) => match blocks()? {
                Some(m) => Ok(Some(Matrix::Blocks(Arc::new(m)))),
                None => dense(dtype),
            },
            MatrixForm::Exact(dtype) => dense(dtype),
            MatrixForm::Quantized if int8_available() && blocks()?.is_some() => {
                Ok(blocks()?.map(|m| Matrix::Int8Blocks(Arc::new(m))))
            }
            MatrixForm::Quantized => {
                let mut q = self.gguf.qtensor(&gguf_name, &self.device)?;
                let dims = (info.dims[0], *info.dims.get(1).unwrap_or(&1));
                if let Some(heads) = permute_heads {
                    // Reorder whole rows of blocks, as for the exact path.
                    let kind = q.dtype();
                    let data = q.data()?.to_vec();
                    ensure!(dims.0 > 0, "tensor {gguf_name} has no rows");
                    let row_bytes = data.len() / dims.0;
                    let order = unpermuted_row_order(dims.0, heads)?;
                    let mut out = Vec::with_capacity(data.len());
                    for r in order {
                        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
                    }
                    q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                        kind,
                        &out,
                        vec![dims.0, dims.1],
                        &self.device,
                    )?;
                }
                Ok(Some(Matrix::Quantized(Arc::new(QMatMul::from_qtensor(q)?), dims)))
            }
        }
    }
}

/// Whether `--quantized` can use lmscope's 8-bit kernel on this CPU.
fn int8_available() -> bool {
    kernels::has_int8_kernel()
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
    check_heads(rows, heads)?;
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))? // (heads, d/2, 2, in): GGUF's interleaved pairs
        .transpose(1, 2)? // (heads, 2, d/2, in): HF's halves
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The same permutation as a row order: HF row `h*d + s*d/2 + j` is GGUF row `h*d + 2*j + s`.
pub fn unpermuted_row_order(rows: usize, heads: usize) -> Result<Vec<usize>> {
    check_heads(rows, heads)?;
    let d = rows / heads;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..d / 2 {
                order.push(h * d + 2 * j + s);
            }
        }
    }
    Ok(order)
}

fn check_heads(rows: usize, heads: usize) -> Result<()> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        bail!("cannot un-permute {rows} projection rows for {heads} heads");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head, d = 4: HF rows [r0, r1 | r2, r3] become GGUF rows [r0, r2, r1, r3].
        let gguf = Tensor::new(&[[0f32], [2.], [1.], [3.]], &Device::Cpu).unwrap();
        let hf = unpermute_rope_rows(&gguf, 1).unwrap().flatten_all().unwrap();
        assert_eq!(hf.to_vec1::<f32>().unwrap(), vec![0.0, 1.0, 2.0, 3.0]);
        // Two heads permute independently.
        let gguf =
            Tensor::new(&[[0f32], [2.], [1.], [3.], [4.], [6.], [5.], [7.]], &Device::Cpu).unwrap();
        let hf = unpermute_rope_rows(&gguf, 2).unwrap().flatten_all().unwrap();
        assert_eq!(hf.to_vec1::<f32>().unwrap(), (0..8).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn row_order_equals_the_tensor_permutation() {
        // Row r of the GGUF matrix holds the value r; un-permuting gives the order itself.
        let rows: Vec<f32> = (0..24).map(|r| r as f32).collect();
        let gguf = Tensor::from_vec(rows, (24, 1), &Device::Cpu).unwrap();
        let hf = unpermute_rope_rows(&gguf, 3).unwrap().flatten_all().unwrap();
        let order: Vec<f32> =
            unpermuted_row_order(24, 3).unwrap().into_iter().map(|r| r as f32).collect();
        assert_eq!(hf.to_vec1::<f32>().unwrap(), order);
    }
}
