//! The small operations a Llama layer is made of, each a few readable lines.
//!
//! Shapes use b = batch, t = tokens in this call, s = all tokens seen (cache + this call),
//! h = query heads, kv = key/value heads, d = head_dim, c = hidden size.

use super::team;
use candle_core::{DType, Device, Result, Tensor, D};

/// `x @ w.T`, PyTorch's `nn.Linear` without bias. x: (b, t, in), w: (out, in) -> (b, t, out).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, t, c_in) = x.dims3()?;
    let c_out = w.dim(0)?;
    let x = x.reshape((b * t, c_in))?; // (b*t, in)
    matmul(&x, &w.t()?)?.reshape((b, t, c_out)) // (b, t, out)
}

/// Matrix product. candle has no bf16 matmul on the CPU, so bf16 operands are multiplied the way
/// PyTorch's CPU kernel does it: products summed in f32, the result rounded to bf16.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == DType::BF16 {
        let product = a.to_dtype(DType::F32)?.matmul(&b.to_dtype(DType::F32)?)?;
        return product.to_dtype(DType::BF16);
    }
    a.matmul(b)
}

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight`. x: (.., c), weight: (c).
/// In f32 this is candle's one-pass kernel; [`rms_norm_slow`] is the same formula step by step.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        let c = x.dim(D::Minus1)?;
        if c > 0 && weight.elem_count() == c {
            let fast = with_f32(x, |x| with_f32(weight, |w| rms_norm_rows(x, w, c, eps as f32)));
            if let Some(Some(out)) = fast {
                return Tensor::from_vec(out, x.shape(), x.device());
            }
        }
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    rms_norm_slow(x, weight, eps)
}

/// Rows per task of a row-wise loop: about four tasks per thread, at least 16 rows each.
fn row_chunk(rows: usize) -> usize {
    rows.div_ceil(4 * team::threads()).max(16)
}

/// A new f32 buffer of `rows` rows of `width` values, `row(i, out)` writing row i, rows in
/// parallel (tasks of [`row_chunk`] rows).
fn rows_f32(rows: usize, width: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let per_task = row_chunk(rows);
    team::chunks_f32(rows * width, (per_task * width).max(1), |c, out| {
        for (i, out) in out.chunks_exact_mut(width.max(1)).enumerate() {
            row(c * per_task + i, out);
        }
    })
}

/// RMSNorm of each row of c values (the arithmetic of candle's f32 rms_norm, `x / sqrt(mean(x^2)
/// + eps) * w`, with the squares summed in 16 running sums instead of one), rows in parallel.
fn rms_norm_rows(x: &[f32], weight: &[f32], c: usize, eps: f32) -> Vec<f32> {
    let rows = row_chunk(x.len() / c.max(1));
    team::chunks_f32(x.len(), rows * c, |i, out| {
        let x = &x[i * rows * c..][..out.len()];
        for (x, out) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            norm_row(x, weight, c, eps, out);
        }
    })
}

/// One row of [`rms_norm_rows`].
#[inline(always)]
fn norm_row(x: &[f32], weight: &[f32], c: usize, eps: f32, out: &mut [f32]) {
    let mut sums = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (s, v) in sums.iter_mut().zip(chunk) {
            *s += v * v;
        }
    }
    let m = ((sums.iter().sum::<f32>() + tail) / c as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v / m * w;
    }
}

/// `x + y` (a residual add) and the RMSNorm of it, the two tensors the next step needs. For f32
/// in one pass over the rows, in parallel: the same values as the add and [`rms_norm`] one after
/// the other, without the add's separate, single-threaded pass.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let c = x.dim(D::Minus1)?;
    let fits = x.shape() == y.shape() && weight.dtype() == DType::F32 && weight.elem_count() == c;
    if fits && c > 0 {
        let fast = with_f32(x, |x| {
            with_f32(y, |y| with_f32(weight, |w| add_rms_norm_rows(x, y, w, c, eps as f32)))
        });
        if let Some(Some(Some((sum, normed)))) = fast {
            let sum = Tensor::from_vec(sum, x.shape(), x.device())?;
            return Ok((sum, Tensor::from_vec(normed, x.shape(), x.device())?));
        }
    }
    let sum = (x + y)?;
    let normed = rms_norm(&sum, weight, eps)?;
    Ok((sum, normed))
}

/// Rows of `x + y`, and [`rms_norm_rows`] of them.
fn add_rms_norm_rows(
    x: &[f32],
    y: &[f32],
    weight: &[f32],
    c: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut sum = team::Fresh::new(x.len());
    let rows = row_chunk(x.len() / c.max(1));
    let sums = sum.parts();
    let out = team::chunks_f32(x.len(), rows * c, |i, out| {
        let at = i * rows * c..i * rows * c + out.len();
        // SAFETY: each task takes the rows of its own chunk.
        let sum = unsafe { sums.zeroed(at.clone()) };
        let rows = x[at.clone()].chunks_exact(c).zip(y[at].chunks_exact(c));
        for ((x, y), (sum, out)) in rows.zip(sum.chunks_exact_mut(c).zip(out.chunks_exact_mut(c))) {
            for ((s, &a), &b) in sum.iter_mut().zip(x).zip(y) {
                *s = a + b;
            }
            norm_row(sum, weight, c, eps, out);
        }
    });
    // SAFETY: the chunks cover every row.
    (unsafe { sum.finish() }, out)
}

/// RMSNorm as transformers' LlamaRMSNorm writes it, computed in f32 whatever the input dtype.
pub fn rms_norm_slow(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let variance = x.sqr()?.mean_keepdim(D::Minus1)?; // (.., 1)
    let normed = x.broadcast_div(&(variance + eps)?.sqrt()?)?; // (.., c)
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// SiLU (swish): `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(x)
}

/// silu(gate) * up, SwiGLU's gating: `act_fn(gate_proj(x)) * up_proj(x)`. In one pass for f32
/// (on all threads, with a vectorised exp where the CPU has AVX-512), else as two tensor ops.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() == up.shape() {
        let fused = with_f32(gate, |g| with_f32(up, |u| silu_mul_values(g, u))).flatten();
        if let Some(out) = fused {
            return Tensor::from_vec(out, gate.shape(), gate.device());
        }
    }
    silu(gate)? * up
}

fn silu_mul_values(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let chunk = 1 << 14;
    team::chunks_f32(gate.len(), chunk, |c, out| {
        let (g, u) = (&gate[c * chunk..][..out.len()], &up[c * chunk..][..out.len()]);
        #[cfg(target_arch = "x86_64")]
        if super::simd::available() {
            return super::simd::silu_mul(g, u, out);
        }
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    })
}

/// Runs `f(values, head_stride)` on an f32 CPU tensor (b, heads, s, d) whose heads each hold
/// their s x d values contiguously, head i (of the b * heads) at `values[i * head_stride..]`, as
/// in a contiguous tensor or a KV cache's buffer cut to its first s positions (no copy); None
/// for any other tensor.
fn with_heads_f32<R>(t: &Tensor, f: impl FnOnce((&[f32], usize)) -> R) -> Option<R> {
    let (b, heads, s, d) = t.dims4().ok()?;
    let (storage, layout) = t.storage_and_layout();
    let stride = layout.stride();
    let rows_contiguous = (s <= 1 || stride[2] == d) && (d <= 1 || stride[3] == 1);
    let heads_even = b <= 1 || stride[0] == heads * stride[1];
    if t.dtype() != DType::F32 || !rows_contiguous || !heads_even || t.elem_count() == 0 {
        return None;
    }
    let start = layout.start_offset();
    let head_stride = if b * heads > 1 { stride[1] } else { s * d };
    let end = start + (b * heads - 1) * head_stride + s * d;
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) if end <= v.len() => {
            Some(f((&v[start..end], head_stride)))
        }
        _ => None,
    }
}

/// Runs `f` on the values of an f32 tensor held contiguously on the CPU (no copy); None for any
/// other tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => Some(f(&v[start..end])),
        _ => None,
    }
}

/// Softmax over the last dimension, in f32 like transformers' attention.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// Rotary position embedding tables, computed once per model.
///
/// For position p and frequency index i < d/2: angle = p * theta^(-2i/d). transformers'
/// LlamaRotaryEmbedding computes `inv_freq` and the angles in f32; we do the same so cos and sin
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

/// Applies rotary embeddings in transformers' "half-split" layout: dimension j is paired with
/// j + d/2. x: (b, heads, t, d); cos, sin: (t, d/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)
}

/// A projection's output split into heads: (b, t, heads * d) -> (b, heads, t, d) contiguous,
/// `view(b, t, heads, d).transpose(1, 2)`; for f32 in one parallel pass (tasks of rows)
/// instead of a copy element by element.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    let view = |x: &Tensor| x.reshape((b, t, heads, hd / heads.max(1)))?.transpose(1, 2);
    if heads == 0 || hd % heads != 0 || x.elem_count() == 0 {
        return view(x)?.contiguous(); // the tensor ops give the error (or the empty result)
    }
    let d = hd / heads;
    let split = with_f32(x, |x| {
        rows_f32(b * heads * t, d, |row, out| {
            let (bh, i) = (row / t, row % t);
            let (bi, head) = (bh / heads, bh % heads);
            out.copy_from_slice(&x[(bi * t + i) * hd + head * d..][..d]);
        })
    });
    match split {
        Some(out) => Tensor::from_vec(out, (b, heads, t, d), x.device()),
        None => view(x)?.contiguous(),
    }
}

/// A projection's output split into heads and rotated: (b, t, heads * d) -> (b, heads, t, d),
/// `view(b, t, heads, d).transpose(1, 2)` then [`rope`], in one pass for f32 (the same
/// arithmetic as candle's rope, so the same values), cos and sin (t, d/2).
pub fn rope_heads(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    if heads == 0 || hd % heads != 0 || x.elem_count() == 0 {
        // The tensor ops below give the error (or the empty result).
        return rope(&x.reshape((b, t, heads, hd / heads.max(1)))?.transpose(1, 2)?, cos, sin);
    }
    let d = hd / heads;
    let rotated = with_f32(x, |x| {
        with_f32(cos, |cos| {
            with_f32(sin, |sin| {
                if cos.len() != t * d / 2 || sin.len() != cos.len() || d % 2 == 1 {
                    return None;
                }
                let half = d / 2;
                Some(rows_f32(b * heads * t, d, |row, out| {
                    let (bh, i) = (row / t, row % t);
                    let (bi, head) = (bh / heads, bh % heads);
                    let src = &x[(bi * t + i) * hd + head * d..][..d];
                    let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                    let (first, second) = out.split_at_mut(half);
                    for e in 0..half {
                        first[e] = src[e] * cos[e] - src[e + half] * sin[e];
                        second[e] = src[e] * sin[e] + src[e + half] * cos[e];
                    }
                }))
            })
        })
    })
    .flatten()
    .flatten()
    .flatten();
    match rotated {
        Some(out) => Tensor::from_vec(out, (b, heads, t, d), x.device()),
        None => rope(&x.reshape((b, t, heads, d))?.transpose(1, 2)?, cos, sin),
    }
}

/// The same as [`rope`], written as transformers writes it:
/// `x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)` with `rotate_half(x) = cat(-x2, x1)`.
pub fn rope_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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

/// Scaled dot-product attention with grouped-query heads: softmax(q k^T / sqrt(d) + mask) v.
/// q: (b, h, t, d); k, v: (b, kv, s, d) with h a multiple of kv; mask: (t, s).
/// Returns the output (b, h, t, d) and the probabilities (b, h, t, s).
///
/// transformers first repeats each key/value head h / kv times ([`repeat_kv`]) and then does one
/// product per query head. Stacking the h / kv query heads that share a key/value head instead
/// (query head i uses key/value head i / (h / kv) either way) gives the same numbers without
/// copying the keys and values, which grow with every token.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (out, probs) = attention_with(q, k, v, mask, true)?;
    Ok((out, probs.expect("the probabilities were asked for")))
}

/// [`attention`]'s output alone, (b, h, t, d): the probabilities are not kept (for f32, each
/// block of queries has them in a scratch buffer of its thread instead of in a (b, h, t, s)
/// tensor that nobody reads).
pub fn attention_output(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    Ok(attention_with(q, k, v, mask, false)?.0)
}

fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let groups = h / kv;
    let mask_fits = mask.is_none_or(|m| m.dims() == [t, s]);
    let fast = kv > 0 && h % kv == 0 && b * t * s * d > 0 && k.dims4()? == v.dims4()? && mask_fits;
    if q.dtype() == DType::F32 && fast {
        return attention_f32(q, k, v, mask, keep_probs);
    }
    let q = q.contiguous()?.reshape((b, kv, groups * t, d))?; // (b, kv, groups*t, d)

    // attn_weights = q @ k^T * scaling + causal_mask
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (matmul(&q, &k.t()?)? * scale)?.reshape((b, h, t, s))?; // (b, h, t, s)
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    // attn_weights = softmax(attn_weights, dim=-1, dtype=float32)
    let probs = softmax_last_dim(&scores)?; // (b, h, t, s)

    // attn_output = attn_weights @ v
    let out = matmul(&probs.reshape((b, kv, groups * t, s))?, v)?; // (b, kv, groups*t, d)
    Ok((out.reshape((b, h, t, d))?, Some(probs)))
}

/// Queries of one head that `attention_f32` hands to the row kernels together.
pub(super) const ATTENTION_ROWS: usize = 4;

/// [`attention`] for f32, written out: for each query head and position, the scores against
/// every key of its KV head, scaled and masked, softmax, then the probability-weighted sum of the
/// values; blocks of queries in parallel. The tensor version's arithmetic in f32 (dot products
/// of head_dim terms, here with fused multiply-adds; the softmax's sum in f32), without its
/// reshapes and copies, and skipping the keys the mask hides.
fn attention_f32(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let groups = h / kv;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let q = q.contiguous()?;
    // Keys and values are read where they are when each head's values are contiguous (copied
    // otherwise).
    let in_place = |t: &Tensor| match with_heads_f32(t, |_| ()) {
        Some(()) => Ok(t.clone()),
        None => t.contiguous(),
    };
    let (k, v) = (in_place(k)?, in_place(v)?);
    let mask = mask.map(|m| m.to_dtype(DType::F32)?.contiguous()).transpose()?;
    let mut probs = keep_probs.then(|| team::Fresh::new(b * h * t * s));
    let mut out = team::Fresh::new(b * t * h * d);
    // Per batch and head, blocks of consecutive queries (they share the keys and values they
    // read), the blocks in parallel. The output is written as (b, t, h, d), the layout o_proj
    // reads (attn_output.transpose(1, 2)), so that transposing it back costs no copy.
    let (probs_parts, out_parts) = (probs.as_mut().map(|p| p.parts()), out.parts());
    let blocks_per_head = t.div_ceil(ATTENTION_ROWS);
    // k and v as they are (a cache's buffers hold each head's s positions contiguously, with a
    // stride between heads); each KV head's keys transposed, (d, s): a query's scores are then
    // sums of whole rows of keys scaled by its values, s at a time, instead of s short dot
    // products.
    let compute = |q: &[f32],
                   (k, k_stride): (&[f32], usize),
                   (v, v_stride): (&[f32], usize),
                   mask: Option<&[f32]>| {
        let keys_t = rows_f32(b * kv * d, s, |row, out| {
            let (head, e) = (row / d, row % d);
            let keys = &k[head * k_stride..][..s * d];
            for (o, key) in out.iter_mut().zip(keys.chunks_exact(d)) {
                *o = key[e];
            }
        }); // (b, kv, d, s)
        team::for_each(b * h * blocks_per_head, |task| {
            let (bh, block) = (task / blocks_per_head, task % blocks_per_head);
            let (bi, head) = (bh / h, bh % h);
            let kv_head = bi * kv + head / groups;
            let keys_t = &keys_t[kv_head * d * s..][..d * s];
            let values = &v[kv_head * v_stride..][..s * d];
            let first = block * ATTENTION_ROWS;
            let rows = ATTENTION_ROWS.min(t - first);
            let (at, end) = (bh * t + first, bh * t + first + rows);
            let mut scratch = None;
            let p = match &probs_parts {
                // SAFETY: each task takes the rows of its own block of queries.
                Some(parts) => unsafe { parts.zeroed(at * s..end * s) },
                None => {
                    let buffer = SCRATCH.take();
                    scratch.insert(ScratchGuard(buffer)).for_rows(rows * s)
                }
            };
            let mut block_out = [0f32; ATTENTION_ROWS * 256];
            let mut heap = None;
            let o = match block_out.get_mut(..rows * d) {
                Some(o) => o,
                None => heap.insert(vec![0f32; rows * d]).as_mut_slice(), // head_dim > 256
            };
            let queries = &q[at * d..end * d];
            let masks = mask.map(|m| &m[first * s..(first + rows) * s]);
            #[cfg(target_arch = "x86_64")]
            let simd = super::simd::available();
            #[cfg(not(target_arch = "x86_64"))]
            let simd = false;
            if simd {
                #[cfg(target_arch = "x86_64")]
                super::simd::attention_rows(rows, queries, keys_t, values, masks, scale, p, o);
            } else {
                for r in 0..rows {
                    let (p, o) = (&mut p[r * s..(r + 1) * s], &mut o[r * d..(r + 1) * d]);
                    let query = &queries[r * d..(r + 1) * d];
                    let mask = masks.map(|m| &m[r * s..(r + 1) * s]);
                    attention_row(query, keys_t, values, mask, scale, p, o);
                }
            }
            for (r, o) in o.chunks_exact(d).enumerate() {
                // Row (batch, position, head) of the (b, t, h, d) output: one task writes it.
                let row = ((bi * t + first + r) * h + head) * d;
                // SAFETY: rows of different tasks do not overlap (above).
                unsafe { out_parts.zeroed(row..row + d) }.copy_from_slice(o);
            }
        });
    };
    let done = with_f32(&q, |q| {
        with_heads_f32(&k, |k| {
            with_heads_f32(&v, |v| match &mask {
                Some(m) => with_f32(m, |m| compute(q, k, v, Some(m))),
                None => {
                    compute(q, k, v, None);
                    Some(())
                }
            })
        })
    });
    if done.flatten().flatten().flatten().is_none() {
        candle_core::bail!("attention needs f32 tensors on the CPU");
    }
    // SAFETY: the tasks covered every (batch, head, query), so every value of both.
    let (out, probs) = unsafe { (out.finish(), probs.map(|p| p.finish())) };
    let device = q.device();
    Ok((
        Tensor::from_vec(out, (b, t, h, d), device)?.transpose(1, 2)?, // (b, h, t, d)
        probs.map(|p| Tensor::from_vec(p, (b, h, t, s), device)).transpose()?,
    ))
}

thread_local! {
    /// A thread's buffer for the probabilities of a block of queries that are not kept.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The scratch buffer, handed back to its thread when the block is done.
struct ScratchGuard(Vec<f32>);

impl ScratchGuard {
    /// The first `len` values, zeroed.
    fn for_rows(&mut self, len: usize) -> &mut [f32] {
        self.0.clear();
        self.0.resize(len, 0.0);
        &mut self.0
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        SCRATCH.set(std::mem::take(&mut self.0));
    }
}

/// One query's attention (the portable version of `simd::attention_rows`): its scores against
/// every key (keys_t is (d, s)), scaled and masked, softmax into `probs` (s), and the weighted
/// sum of the values (s, d) into `out` (d, zeros on entry).
fn attention_row(
    query: &[f32],
    keys_t: &[f32],
    values: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let (s, d) = (probs.len(), out.len());
    // q k^T: p[j] = sum over e of q[e] k[j][e], in order of e
    for (e, &qe) in query.iter().enumerate() {
        for (pj, &kj) in probs.iter_mut().zip(&keys_t[e * s..(e + 1) * s]) {
            *pj += qe * kj;
        }
    }
    // * scaling + causal_mask
    match mask {
        Some(m) => probs.iter_mut().zip(m).for_each(|(pj, &mj)| *pj = *pj * scale + mj),
        None => probs.iter_mut().for_each(|pj| *pj *= scale),
    }
    softmax_in_place(probs);
    // probs @ v
    for (j, &pj) in probs.iter().enumerate() {
        if pj != 0.0 {
            for (oe, &ve) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                *oe += pj * ve;
            }
        }
    }
}

/// row = softmax(row), -inf entries giving 0 (with AVX-512 where the CPU has it, also when
/// called from the portable `attention_row`).
fn softmax_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::available() {
        return super::simd::softmax(row);
    }
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(diff <= tol, "max difference {diff} > {tol}");
    }

    #[test]
    fn rms_norm_by_hand() {
        // x = [3, 4]: mean(x^2) = 12.5, rms = sqrt(12.5 + 0) = 3.5355; weight [1, 2].
        let x = Tensor::new(&[[3f32, 4.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        for norm in [rms_norm, rms_norm_slow] {
            let y = norm(&x, &w, 0.0).unwrap().to_vec2::<f32>().unwrap();
            assert!((y[0][0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
            assert!((y[0][1] - 2.0 * 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
        }
    }

    #[test]
    fn rms_norm_fast_equals_slow() {
        let x = Tensor::randn(0f32, 3., (2, 5, 64), &Device::Cpu).unwrap();
        let w = Tensor::randn(1f32, 0.1, 64, &Device::Cpu).unwrap();
        close(&rms_norm(&x, &w, 1e-5).unwrap(), &rms_norm_slow(&x, &w, 1e-5).unwrap(), 1e-5);
    }

    #[test]
    fn silu_by_hand() {
        // silu(0) = 0, silu(1) = 1 / (1 + e^-1) = 0.7310586
        let x = Tensor::new(&[0f32, 1.], &Device::Cpu).unwrap();
        let y = silu(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn rope_fast_equals_slow() {
        let dev = Device::Cpu;
        let tables = RopeTables::new(8, 10000.0, 16, &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let (cos, sin) = tables.at(4, 5, DType::F32).unwrap();
        close(&rope(&x, &cos, &sin).unwrap(), &rope_slow(&x, &cos, &sin).unwrap(), 1e-6);
    }

    #[test]
    fn rope_heads_equals_transpose_then_rope() {
        let dev = Device::Cpu;
        let tables = RopeTables::new(8, 10000.0, 16, &dev).unwrap();
        let (b, t, heads, d) = (2, 5, 3, 8);
        let x = Tensor::randn(0f32, 1., (b, t, heads * d), &dev).unwrap();
        let (cos, sin) = tables.at(4, t, DType::F32).unwrap();
        let expected =
            rope(&x.reshape((b, t, heads, d)).unwrap().transpose(1, 2).unwrap(), &cos, &sin);
        close(&rope_heads(&x, heads, &cos, &sin).unwrap(), &expected.unwrap(), 0.0);
    }

    #[test]
    fn attention_on_an_empty_batch_is_empty() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((0, 4, 3, 8), DType::F32, &dev).unwrap();
        let kv = Tensor::zeros((0, 2, 3, 8), DType::F32, &dev).unwrap();
        let (out, probs) = attention(&q, &kv, &kv, None).unwrap();
        assert_eq!((out.dims(), probs.dims()), ([0, 4, 3, 8].as_slice(), [0, 4, 3, 3].as_slice()));
        assert_eq!(attention_output(&q, &kv, &kv, None).unwrap().dims(), [0, 4, 3, 8]);
    }

    #[test]
    fn split_heads_equals_view_then_transpose() {
        let dev = Device::Cpu;
        let (b, t, heads, d) = (2, 5, 3, 8);
        for dtype in [DType::F32, DType::BF16] {
            let x = Tensor::randn(0f32, 1., (b, t, heads * d), &dev).unwrap().to_dtype(dtype);
            let x = x.unwrap();
            let split = split_heads(&x, heads).unwrap();
            let view = x.reshape((b, t, heads, d)).unwrap().transpose(1, 2).unwrap();
            assert!(split.is_contiguous() && split.dims() == [b, heads, t, d]);
            let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            close(&f32s(&split), &f32s(&view), 0.0);
        }
        assert!(split_heads(&Tensor::zeros((1, 2, 10), DType::F32, &dev).unwrap(), 3).is_err());
    }

    /// The fused residual add and norm give exactly what the add and the norm give one after the
    /// other (f32, rows of 16k + 4 values, more rows than one thread takes); other dtypes and
    /// shapes go the separate way and agree too.
    #[test]
    fn add_rms_norm_equals_add_then_rms_norm() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3., (2, 37, 100), &dev).unwrap();
        let y = Tensor::randn(0f32, 1., (2, 37, 100), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 100, &dev).unwrap();
        let (sum, normed) = add_rms_norm(&x, &y, &w, 1e-5).unwrap();
        let expected_sum = (&x + &y).unwrap();
        close(&sum, &expected_sum, 0.0);
        close(&normed, &rms_norm(&expected_sum, &w, 1e-5).unwrap(), 0.0);
        // bf16 (no fast path); mismatched shapes are an error, as for the add alone.
        let (xb, yb, wb) = [&x, &y, &w].map(|t| t.to_dtype(DType::BF16).unwrap()).into();
        let (sum, normed) = add_rms_norm(&xb, &yb, &wb, 1e-5).unwrap();
        let expected_sum = (&xb + &yb).unwrap();
        close(&sum.to_dtype(DType::F32).unwrap(), &expected_sum.to_dtype(DType::F32).unwrap(), 0.0);
        let expected = rms_norm(&expected_sum, &wb, 1e-5).unwrap().to_dtype(DType::F32).unwrap();
        close(&normed.to_dtype(DType::F32).unwrap(), &expected, 0.0);
        assert!(add_rms_norm(&x, &y.narrow(1, 0, 1).unwrap(), &w, 1e-5).is_err());
    }

    #[test]
    fn rms_norm_of_long_rows_equals_slow() {
        let x = Tensor::randn(0f32, 3., (3, 37, 100), &Device::Cpu).unwrap(); // 100 = 6 x 16 + 4
        let w = Tensor::randn(1f32, 0.1, 100, &Device::Cpu).unwrap();
        close(&rms_norm(&x, &w, 1e-5).unwrap(), &rms_norm_slow(&x, &w, 1e-5).unwrap(), 1e-5);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_rotates_pairs() {
        let dev = Device::Cpu;
        let tables = RopeTables::new(4, 10000.0, 4, &dev).unwrap();
        // Position 1, frequency 0 turns the pair (x0, x2) by 1 radian.
        let x = Tensor::new(&[1f32, 0., 0., 0.], &dev).unwrap().reshape((1, 1, 1, 4)).unwrap();
        let (cos, sin) = tables.at(0, 1, DType::F32).unwrap();
        close(&rope_slow(&x, &cos, &sin).unwrap(), &x, 0.0);
        let (cos, sin) = tables.at(1, 1, DType::F32).unwrap();
        let y = rope_slow(&x, &cos, &sin).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn causal_mask_hides_the_future() {
        let m = causal_mask(2, 1, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        // Query 0 is position 1: sees keys 0, 1. Query 1 is position 2: sees all three.
        assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0, 0.0, 0.0]);
    }

    /// The grouped product equals transformers' formulation: repeat_kv, then one product per
    /// query head.
    #[test]
    fn grouped_attention_equals_repeat_kv() {
        let dev = Device::Cpu;
        // Shapes with partial registers (d = 8, 72), query blocks of 4 and a remainder (t = 7),
        // more keys than one block of 64 (s = 70), a cached prefix (s > t), one query (decode).
        for (b, h, kv, t, s, d, masked) in [
            (1, 6, 2, 3, 5, 8, true),
            (2, 4, 2, 7, 70, 72, true),
            (1, 3, 1, 1, 9, 64, false),
            (1, 2, 2, 5, 5, 16, false),
        ] {
            let q = Tensor::randn(0f32, 1., (b, h, t, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1., (b, kv, s, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (b, kv, s, d), &dev).unwrap();
            let mask = masked.then(|| causal_mask(t, s - t, &dev).unwrap());
            let (out, probs) = attention(&q, &k, &v, mask.as_ref()).unwrap();
            // Keys and values at the start of longer buffers, as a KV cache holds them (read
            // in place), and transposed views of (s, d) (copied first): the same numbers.
            let spare = Tensor::randn(0f32, 1., (b, kv, 6, d), &dev).unwrap();
            let in_buffer = |x: &Tensor| Tensor::cat(&[x, &spare], 2).unwrap().narrow(2, 0, s);
            let (kb, vb) = (in_buffer(&k).unwrap(), in_buffer(&v).unwrap());
            let transposed = |x: &Tensor| x.transpose(2, 3).unwrap().contiguous().unwrap();
            let (kt, vt) = (transposed(&k).transpose(2, 3).unwrap(), transposed(&v));
            let vt = vt.transpose(2, 3).unwrap();
            for (k, v) in [(&kb, &vb), (&kt, &vt)] {
                let (o, p) = attention(&q, k, v, mask.as_ref()).unwrap();
                close(&o, &out, 0.0);
                close(&p, &probs, 0.0);
            }
            // Without keeping the probabilities (a scratch buffer per thread, reused).
            for _ in 0..2 {
                close(&attention_output(&q, &k, &v, mask.as_ref()).unwrap(), &out, 0.0);
            }

            let k = repeat_kv(&k, h / kv).unwrap().contiguous().unwrap();
            let v = repeat_kv(&v, h / kv).unwrap().contiguous().unwrap();
            let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let scores = match &mask {
                Some(mask) => scores.broadcast_add(mask).unwrap(),
                None => scores,
            };
            let expected_probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let expected = expected_probs.matmul(&v).unwrap();
            close(&probs, &expected_probs, 1e-6);
            close(&out, &expected, 1e-5);
            if masked {
                // The future is hidden exactly: probability 0, not merely tiny.
                let p = probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (n, &pn) in p.iter().enumerate() {
                    let (i, j) = ((n / s) % t, n % s);
                    assert!(j <= s - t + i || pn == 0.0, "query {i} sees key {j}: {pn}");
                }
            }
        }
    }

    #[test]
    fn portable_attention_row_equals_the_tensor_formula() {
        // The row kernel used where AVX-512 is missing, called directly.
        let dev = Device::Cpu;
        let (s, d) = (6, 8);
        let q = Tensor::randn(0f32, 1., (1, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (s, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (s, d), &dev).unwrap();
        let hidden = f32::NEG_INFINITY;
        let mask = Tensor::new(&[[0f32, 0., 0., 0., hidden, hidden]], &dev).unwrap(); // (1, s)
        let scale = 1.0 / (d as f32).sqrt();
        let (mut probs, mut out) = (vec![0f32; s], vec![0f32; d]);
        let vec = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (qv, kt, vv, mv) =
            (vec(&q), vec(&k.t().unwrap().contiguous().unwrap()), vec(&v), vec(&mask));
        attention_row(&qv, &kt, &vv, Some(&mv), scale, &mut probs, &mut out);
        let scores =
            ((q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap() + &mask).unwrap();
        let expected_probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let expected = expected_probs.matmul(&v).unwrap();
        close(
            &Tensor::new(probs.as_slice(), &dev).unwrap(),
            &expected_probs.flatten_all().unwrap(),
            1e-6,
        );
        close(&Tensor::new(out.as_slice(), &dev).unwrap(), &expected.flatten_all().unwrap(), 1e-5);
        assert_eq!(&probs[4..], &[0.0, 0.0]);
    }

    #[test]
    fn repeat_kv_repeats_each_head_in_place() {
        let x = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap().reshape((1, 2, 1, 1)).unwrap();
        let y = repeat_kv(&x, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![1.0, 1.0, 2.0, 2.0]); // head 0 serves queries 0-1, head 1 queries 2-3
    }
}
