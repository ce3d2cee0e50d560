//! Row-wise ops on f32 tensors (and bf16 or f16 ones, [`half_rows`]), each in one parallel pass over the rows (tasks of whole rows on
//! [`team`]): the fast versions of the model's RMSNorm, residual add, SwiGLU gate, head split and
//! RoPE. Each returns `Ok(None)` where it does not apply (another dtype or layout, or the
//! `reference` backend), and the model then computes its formula. The arithmetic is the
//! formula's, so the values agree with it (to the last bit where the order of additions is the
//! same; the tests in `src/model/ops.rs` compare them).

use super::half_precision::{self, round_as, Half};
use super::{portable, team, uses, Backend};
use candle_core::{DType, Result, Tensor, D};

/// Whether the fast row ops run (every backend but `reference`).
fn enabled() -> bool {
    uses(Backend::Portable)
}

/// Rows per task of a row-wise loop: about four tasks per thread, at least 16 rows each.
fn row_chunk(rows: usize) -> usize {
    rows.div_ceil(4 * team::threads()).max(16)
}

/// A new f32 buffer of `rows` rows of `width` values, `row(i, out)` writing row i, rows in
/// parallel (tasks of `row_chunk` rows).
pub fn rows_f32(rows: usize, width: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let per_task = row_chunk(rows);
    team::chunks_f32(rows * width, (per_task * width).max(1), |c, out| {
        for (i, out) in out.chunks_exact_mut(width.max(1)).enumerate() {
            row(c * per_task + i, out);
        }
    })
}

/// RMSNorm of each row of x (.., c) with weight (c): [`portable::rms_norm_row`] per row (its
/// AVX2 twin on the avx2 backend).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if let Some(half) = Half::of(x.dtype()) {
        return half_rows::rms_norm(half, x, weight, eps);
    }
    let c = x.dim(D::Minus1)?;
    if !enabled() || weight.dtype() != DType::F32 || c == 0 || weight.elem_count() != c {
        return Ok(None);
    }
    let norm_row = rms_norm_kernel();
    let normed = with_f32(x, |x| {
        with_f32(weight, |w| {
            rows_f32(x.len() / c, c, |i, out| norm_row(&x[i * c..][..c], w, eps as f32, out))
        })
    });
    normed.flatten().map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()
}

/// The RMSNorm row kernel of this thread's backend: NEON's or AVX2's, else
/// [`portable::rms_norm_row`] (the AVX2 row equals the portable one bit for bit; the AVX-512
/// backends keep the portable row, as they were measured).
fn rms_norm_kernel() -> fn(&[f32], &[f32], f32, &mut [f32]) {
    #[cfg(target_arch = "aarch64")]
    if uses(Backend::Neon) {
        return super::neon::rms_norm_row;
    }
    #[cfg(target_arch = "x86_64")]
    if super::backend() == Backend::Avx2 {
        return super::avx2::rms_norm_row;
    }
    portable::rms_norm_row
}

/// The SwiGLU gate kernel of this thread's backend: AVX-512's or NEON's vectorised exp, else
/// [`portable::silu_mul`].
fn silu_mul_kernel() -> fn(&[f32], &[f32], &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if uses(Backend::Avx512) {
        return super::avx512::silu_mul;
    }
    #[cfg(target_arch = "x86_64")]
    if uses(Backend::Avx2) {
        return super::avx2::silu_mul;
    }
    #[cfg(target_arch = "aarch64")]
    if uses(Backend::Neon) {
        return super::neon::silu_mul;
    }
    portable::silu_mul
}

/// x + y for tensors of the same shape (a residual add).
pub fn add(x: &Tensor, y: &Tensor) -> Result<Option<Tensor>> {
    if let Some(half) = Half::of(x.dtype()) {
        return half_rows::add(half, x, y);
    }
    if !enabled() || x.shape() != y.shape() || x.elem_count() == 0 {
        return Ok(None);
    }
    let chunk = 1 << 14;
    let sum = with_f32(x, |x| {
        with_f32(y, |y| {
            team::chunks_f32(x.len(), chunk, |c, out| {
                let (x, y) = (&x[c * chunk..][..out.len()], &y[c * chunk..][..out.len()]);
                for ((o, &a), &b) in out.iter_mut().zip(x).zip(y) {
                    *o = a + b;
                }
            })
        })
    });
    sum.flatten().map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()
}

/// silu(gate) * up for tensors of the same shape: AVX-512's, AVX2's or NEON's vectorised exp where the
/// backend has it, else [`portable::silu_mul`].
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if let Some(half) = Half::of(gate.dtype()) {
        return half_rows::silu_mul(half, gate, up);
    }
    if !enabled() || gate.shape() != up.shape() {
        return Ok(None);
    }
    let chunk = 1 << 14;
    let kernel = silu_mul_kernel();
    let out = with_f32(gate, |gate| {
        with_f32(up, |up| {
            team::chunks_f32(gate.len(), chunk, |c, out| {
                let (g, u) = (&gate[c * chunk..][..out.len()], &up[c * chunk..][..out.len()]);
                kernel(g, u, out)
            })
        })
    });
    out.flatten().map(|v| Tensor::from_vec(v, gate.shape(), gate.device())).transpose()
}

/// (b, t, heads * d) -> (b, heads, t, d) contiguous, `view(b, t, heads, d).transpose(1, 2)`,
/// in one parallel copy (tasks of rows) instead of candle's element-by-element one.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Option<Tensor>> {
    if let Some(half) = Half::of(x.dtype()) {
        return half_rows::split_heads(half, x, heads);
    }
    let (b, t, hd) = x.dims3()?;
    if !enabled() || heads == 0 || hd % heads != 0 || x.elem_count() == 0 {
        return Ok(None);
    }
    let d = hd / heads;
    let split = with_f32(x, |x| {
        rows_f32(b * heads * t, d, |row, out| {
            let (bh, i) = (row / t, row % t);
            let (bi, head) = (bh / heads, bh % heads);
            out.copy_from_slice(&x[(bi * t + i) * hd + head * d..][..d]);
        })
    });
    split.map(|v| Tensor::from_vec(v, (b, heads, t, d), x.device())).transpose()
}

/// Rotary embeddings in the half-split layout on x (b, heads, t, d) with cos, sin (t, d/2):
/// `x[e] cos - x[e + d/2] sin` and `x[e] sin + x[e + d/2] cos` for each pair, rows in parallel.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if let Some(half) = Half::of(x.dtype()) {
        return half_rows::rope(half, x, cos, sin);
    }
    let (b, heads, t, d) = x.dims4()?;
    if !enabled() || d % 2 == 1 || x.elem_count() == 0 {
        return Ok(None);
    }
    let half = d / 2;
    let rotated = with_f32(x, |x| {
        with_f32(cos, |cos| {
            with_f32(sin, |sin| {
                if cos.len() != t * half || sin.len() != cos.len() {
                    return None;
                }
                Some(rows_f32(b * heads * t, d, |row, out| {
                    let i = row % t;
                    let src = &x[row * d..][..d];
                    let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                    let (first, second) = out.split_at_mut(half);
                    for e in 0..half {
                        first[e] = src[e] * cos[e] - src[e + half] * sin[e];
                        second[e] = src[e] * sin[e] + src[e + half] * cos[e];
                    }
                }))
            })
        })
    });
    let rotated = rotated.flatten().flatten().flatten();
    rotated.map(|v| Tensor::from_vec(v, (b, heads, t, d), x.device())).transpose()
}

/// Runs `f(values, head_stride)` on an f32 CPU tensor (b, heads, s, d) whose heads each hold
/// their s x d values contiguously, head i (of the b * heads) at `values[i * head_stride..]`, as
/// in a contiguous tensor or a KV cache's buffer cut to its first s positions (no copy); None
/// for any other tensor.
pub fn with_heads_f32<R>(t: &Tensor, f: impl FnOnce((&[f32], usize)) -> R) -> Option<R> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let HeadsLayout { start, head_stride, end, .. } = HeadsLayout::of(t)?;
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) if end <= v.len() => {
            Some(f((&v[start..end], head_stride)))
        }
        _ => None,
    }
}

/// Where the heads of a (b, heads, s, d) tensor lie in its storage, when each head holds its
/// s x d values contiguously and the heads are one stride apart (a contiguous tensor, or a KV
/// cache's buffers cut to their first s positions): head i at `start + i * head_stride`, all of
/// them before `end`. None for any other layout, or no values.
pub struct HeadsLayout {
    pub heads: usize,
    pub start: usize,
    pub head_stride: usize,
    pub end: usize,
}

impl HeadsLayout {
    pub fn of(t: &Tensor) -> Option<HeadsLayout> {
        let (b, heads, s, d) = t.dims4().ok()?;
        let layout = t.layout();
        let stride = layout.stride();
        let rows_contiguous = (s <= 1 || stride[2] == d) && (d <= 1 || stride[3] == 1);
        let heads_even = b <= 1 || stride[0] == heads * stride[1];
        if !rows_contiguous || !heads_even || t.elem_count() == 0 {
            return None;
        }
        let start = layout.start_offset();
        let head_stride = if b * heads > 1 { stride[1] } else { s * d };
        let end = start + (b * heads - 1) * head_stride + s * d;
        Some(HeadsLayout { heads: b * heads, start, head_stride, end })
    }
}

/// Runs `f` on the values of an f32 tensor held contiguously on the CPU (no copy); None for any
/// other tensor.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
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

/// The row ops in bfloat16 and float16, as PyTorch computes them on the CPU: the 16-bit values
/// read as f32, f32 arithmetic, and each op of the model's formula rounded to the dtype where
/// PyTorch rounds it (one op of transformers' modeling_llama, one rounding). The values are
/// exactly the formula's on candle's 16-bit tensors, but for the order of a sum of squares.
pub mod half_rows {
    use super::*;

    /// The values of a 16-bit CPU tensor of dtype `half` as f32, or None (another dtype, or
    /// not on the CPU).
    fn values(half: Half, t: &Tensor) -> Result<Option<Vec<f32>>> {
        if t.dtype() != half.dtype() {
            return Ok(None);
        }
        Ok(half_precision::values_f32(&t.contiguous()?))
    }

    /// `f::<true>` for bfloat16, `f::<false>` for float16 (each kernel compiled once per dtype).
    macro_rules! per_dtype {
        ($half:expr, $f:ident($($arg:expr),*)) => {
            if $half.is_bf16() { $f::<true>($($arg),*) } else { $f::<false>($($arg),*) }
        };
    }

    /// LlamaRMSNorm: `weight * (x / sqrt(mean(x^2) + eps)).to(dtype)`, the norm in f32 and
    /// rounded, then the product with the 16-bit weight rounded.
    pub fn rms_norm(half: Half, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
        let c = x.dim(D::Minus1)?;
        if !enabled() || c == 0 || weight.elem_count() != c {
            return Ok(None);
        }
        let (Some(xv), Some(w)) = (values(half, x)?, values(half, weight)?) else {
            return Ok(None);
        };
        fn norm<const BF16: bool>(xv: &[f32], w: &[f32], c: usize, eps: f32) -> Vec<f32> {
            rows_f32(xv.len() / c, c, |i, out| {
                let x = &xv[i * c..][..c];
                let mut sums = [0f32; 16];
                let chunks = x.chunks_exact(16);
                let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
                for chunk in chunks {
                    for (s, v) in sums.iter_mut().zip(chunk) {
                        *s += v * v;
                    }
                }
                let m = ((sums.iter().sum::<f32>() + tail) / c as f32 + eps).sqrt();
                for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
                    *o = round_as::<BF16>(round_as::<BF16>(v / m) * w);
                }
            })
        }
        let out = per_dtype!(half, norm(&xv, &w, c, eps as f32));
        Ok(Some(half_precision::tensor(half, out, x.shape(), x.device())?))
    }

    /// x + y, rounded.
    pub fn add(half: Half, x: &Tensor, y: &Tensor) -> Result<Option<Tensor>> {
        if !enabled() || x.shape() != y.shape() || x.elem_count() == 0 {
            return Ok(None);
        }
        let (Some(a), Some(b)) = (values(half, x)?, values(half, y)?) else {
            return Ok(None);
        };
        fn sum<const BF16: bool>(a: &[f32], b: &[f32]) -> Vec<f32> {
            a.iter().zip(b).map(|(a, b)| round_as::<BF16>(a + b)).collect()
        }
        let out = per_dtype!(half, sum(&a, &b));
        Ok(Some(half_precision::tensor(half, out, x.shape(), x.device())?))
    }

    /// `act_fn(gate) * up`: SiLU in f32 rounded (PyTorch's nn.SiLU), then the product rounded.
    pub fn silu_mul(half: Half, gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        if !enabled() || gate.shape() != up.shape() || gate.elem_count() == 0 {
            return Ok(None);
        }
        let (Some(g), Some(u)) = (values(half, gate)?, values(half, up)?) else {
            return Ok(None);
        };
        fn gated<const BF16: bool>(g: &[f32], u: &[f32]) -> Vec<f32> {
            let chunk = 1 << 12;
            team::chunks_f32(g.len(), chunk, |c, out| {
                let (g, u) = (&g[c * chunk..][..out.len()], &u[c * chunk..][..out.len()]);
                for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                    *o = round_as::<BF16>(round_as::<BF16>(g / (1.0 + (-g).exp())) * u);
                }
            })
        }
        let out = per_dtype!(half, gated(&g, &u));
        Ok(Some(half_precision::tensor(half, out, gate.shape(), gate.device())?))
    }

    /// (b, t, heads * d) -> (b, heads, t, d), a copy.
    pub fn split_heads(half: Half, x: &Tensor, heads: usize) -> Result<Option<Tensor>> {
        let (b, t, hd) = x.dims3()?;
        if !enabled() || heads == 0 || hd % heads != 0 || x.elem_count() == 0 {
            return Ok(None);
        }
        let Some(xv) = values(half, x)? else {
            return Ok(None);
        };
        let d = hd / heads;
        let out = rows_f32(b * heads * t, d, |row, out| {
            let (bh, i) = (row / t, row % t);
            let (bi, head) = (bh / heads, bh % heads);
            out.copy_from_slice(&xv[(bi * t + i) * hd + head * d..][..d]);
        });
        Ok(Some(half_precision::tensor(half, out, (b, heads, t, d), x.device())?))
    }

    /// `q * cos + rotate_half(q) * sin` with cos, sin in the dtype: each product rounded, then
    /// their sum.
    pub fn rope(half: Half, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
        let (b, heads, t, d) = x.dims4()?;
        let half_d = d / 2;
        if !enabled() || d % 2 == 1 || x.elem_count() == 0 || cos.elem_count() != t * half_d {
            return Ok(None);
        }
        let (Some(xv), Some(cos), Some(sin)) =
            (values(half, x)?, values(half, cos)?, values(half, sin)?)
        else {
            return Ok(None);
        };
        if sin.len() != cos.len() {
            return Ok(None);
        }
        fn rotate<const BF16: bool>(
            x: &[f32],
            cos: &[f32],
            sin: &[f32],
            t: usize,
            d: usize,
        ) -> Vec<f32> {
            let half = d / 2;
            let r = round_as::<BF16>;
            rows_f32(x.len() / d, d, |row, out| {
                let i = row % t;
                let src = &x[row * d..][..d];
                let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                let (first, second) = out.split_at_mut(half);
                for e in 0..half {
                    first[e] = r(r(src[e] * cos[e]) + r(-src[e + half] * sin[e]));
                    second[e] = r(r(src[e + half] * cos[e]) + r(src[e] * sin[e]));
                }
            })
        }
        let out = per_dtype!(half, rotate(&xv, &cos, &sin, t, d));
        Ok(Some(half_precision::tensor(half, out, (b, heads, t, d), x.device())?))
    }
}
