//! The operations a Llama layer is made of, each written as its formula on candle tensors: the
//! reference, what `LMSCOPE_KERNELS=reference` runs and what every fast kernel is tested
//! against. Where the engine room (`src/kernels/`) has a kernel for the op, the first line hands
//! the tensors to it; it computes the same formula in one parallel pass, or says it does not
//! apply (another dtype or layout, the reference backend) and the formula below runs.
//!
//! Shapes use b = batch, t = tokens in this call, s = all tokens seen (cache + this call),
//! h = query heads, kv = key/value heads, d = head_dim, c = hidden size.

use super::weights::Matrix;
use crate::kernels;
use candle_core::{DType, Device, Result, Tensor, D};

/// `x @ W.T`, PyTorch's `nn.Linear` without bias. x: (b, t, in), W: (out, in) -> (b, t, out).
/// On GGUF blocks the engine room multiplies the blocks directly, with the numbers of the
/// dequantized matrix.
pub fn linear(x: &Tensor, w: &Matrix) -> Result<Tensor> {
    w.forward(x)
}

/// `x @ W_i.T` for several matrices of the same input (q, k and v; gate and up), computed
/// together: one parallel loop instead of one per matrix.
pub fn linears<const N: usize>(x: &Tensor, ws: [&Matrix; N]) -> Result<[Tensor; N]> {
    let ys = Matrix::forward_many(&ws, x)?;
    ys.try_into().map_err(|_| candle_core::Error::Msg(format!("expected {N} products")))
}

/// RMSNorm, transformers' LlamaRMSNorm: `x / sqrt(mean(x^2) + eps) * weight`, computed in f32
/// whatever the input dtype. x: (.., c), weight: (c).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(fast) = kernels::rows::rms_norm(x, weight, eps)? {
        return Ok(fast);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let variance = x.sqr()?.mean_keepdim(D::Minus1)?; // (.., 1)
    let normed = x.broadcast_div(&(variance + eps)?.sqrt()?)?; // (.., c)
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// `x + y`, a residual connection.
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if let Some(fast) = kernels::rows::add(x, y)? {
        return Ok(fast);
    }
    x + y
}

/// SiLU (swish): `x * sigmoid(x)`, computed in f32 and rounded once, as PyTorch's `nn.SiLU`
/// (candle's own bf16 and f16 silu would round its exp, sum and quotient each).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    candle_nn::ops::silu(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// SwiGLU's gating, `act_fn(gate_proj(x)) * up_proj(x)` = silu(gate) * up.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if let Some(fast) = kernels::rows::silu_mul(gate, up)? {
        return Ok(fast);
    }
    silu(gate)? * up
}

/// A projection's output split into heads: (b, t, heads * d) -> (b, heads, t, d),
/// `view(b, t, heads, d).transpose(1, 2)`, contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    if let Some(fast) = kernels::rows::split_heads(x, heads)? {
        return Ok(fast);
    }
    let (b, t, hd) = x.dims3()?;
    if heads == 0 || hd % heads != 0 {
        candle_core::bail!("cannot split {hd} values into {heads} heads");
    }
    x.reshape((b, t, heads, hd / heads))?.transpose(1, 2)?.contiguous()
}

/// Rotary position embedding tables, computed once per model.
///
/// For position p and frequency index i < d/2: angle = p * theta^(-2i/d). transformers'
/// LlamaRotaryEmbedding computes `inv_freq` and the angles in f32; so does this, so cos and sin
/// agree to the last bit.
pub struct RopeTables {
    /// cos(angle), (max_positions, d/2)
    pub cos: Tensor,
    /// sin(angle), (max_positions, d/2)
    pub sin: Tensor,
}

impl RopeTables {
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, device: &Device) -> Result<Self> {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::new(inv_freq, device)?.unsqueeze(0)?; // (1, d/2)
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?; // (max_positions, 1)
        let angles = positions.broadcast_mul(&inv_freq)?; // (max_positions, d/2)
        Ok(RopeTables { cos: angles.cos()?, sin: angles.sin()? })
    }

    /// The rows for positions `offset..offset + t`, in the given dtype: ((t, d/2), (t, d/2)).
    pub fn at(&self, offset: usize, t: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.narrow(0, offset, t)?.to_dtype(dtype)?,
            self.sin.narrow(0, offset, t)?.to_dtype(dtype)?,
        ))
    }
}

/// Rotary embeddings as transformers' `apply_rotary_pos_emb` writes them (the "half-split"
/// layout: dimension j is paired with j + d/2):
/// `x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)` with `rotate_half(x) = cat(-x2, x1)`.
/// x: (b, heads, t, d); cos, sin: (t, d/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(fast) = kernels::rows::rope(x, cos, sin)? {
        return Ok(fast);
    }
    let half = x.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?; // (t, d)
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?; // (t, d)
    let x1 = x.narrow(D::Minus1, 0, half)?; // (b, heads, t, d/2)
    let x2 = x.narrow(D::Minus1, half, half)?; // (b, heads, t, d/2)
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // (b, heads, t, d)
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Additive causal mask for t new queries after `offset` cached tokens: (t, offset + t), 0 where
/// query i may look at key j (j <= offset + i) and -inf where it would see the future.
pub fn causal_mask(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let s = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, s), device)
}

/// Repeats each key/value head `groups` times so grouped-query attention can use one matmul per
/// query head (transformers' `repeat_kv`). x: (b, kv, s, d) -> (b, kv * groups, s, d).
pub fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)? // (b, kv, 1, s, d)
        .expand((b, kv, groups, s, d))? // (b, kv, groups, s, d)
        .reshape((b, kv * groups, s, d))
}

/// Softmax over the last dimension, in f32 like transformers' attention.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// Scaled dot-product attention with grouped-query heads, transformers'
/// `eager_attention_forward`: softmax(q k^T / sqrt(d) + mask) v, each key/value head serving
/// h / kv query heads. q: (b, h, t, d); k, v: (b, kv, s, d); mask: (t, s). Returns the output
/// (b, h, t, d) and, if `keep_probs`, the probabilities (b, h, t, s).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    if let Some(fast) = kernels::attention::attention(q, k, v, mask, keep_probs)? {
        return Ok(fast);
    }
    let (_, h, _, d) = q.dims4()?;
    let kv = k.dim(1)?;
    if kv == 0 || h % kv != 0 {
        candle_core::bail!("{h} query heads cannot share {kv} key/value heads");
    }
    // key_states = repeat_kv(key, self.num_key_value_groups), likewise the values
    let k = repeat_kv(k, h / kv)?.contiguous()?; // (b, h, s, d)
    let v = repeat_kv(v, h / kv)?.contiguous()?; // (b, h, s, d)

    // attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling + causal_mask
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (matmul(&q.contiguous()?, &k.t()?)? * scale)?; // (b, h, t, s)
    let scores = match mask {
        Some(mask) => scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    // attn_weights = softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    let probs = softmax_last_dim(&scores)?; // (b, h, t, s)

    // attn_output = torch.matmul(attn_weights, value_states)
    let out = matmul(&probs, &v)?; // (b, h, t, d)
    Ok((out, keep_probs.then_some(probs)))
}

/// Batched matrix product. candle has no bf16 matmul on the CPU, so bf16 (and f16) operands are
/// multiplied the way PyTorch's CPU kernel does it: products summed in f32, the result rounded
/// to the dtype once.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if matches!(a.dtype(), DType::BF16 | DType::F16) {
        let product = a.to_dtype(DType::F32)?.matmul(&b.to_dtype(DType::F32)?)?;
        return product.to_dtype(a.dtype());
    }
    a.matmul(b)
}

#[cfg(test)]
mod tests;
