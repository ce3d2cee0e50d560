//! Attention for f32 written out: per query head, blocks of [`portable::QUERY_BLOCK`] queries in parallel,
//! each query's scores against the keys of its KV head, softmax, and the weighted sum of the
//! values, reading the keys and values where the KV cache holds them. The model's formula
//! (`src/model/ops.rs`, with `repeat_kv`) is the reference it is tested against.

use super::half_precision::Half;
use super::portable::{self, QUERY_BLOCK as ATTENTION_ROWS};
use super::rows::{rows_f32, with_f32, with_heads_f32};
use super::{team, uses, Backend};
use candle_core::{DType, Result, Tensor};

/// Scaled dot-product attention with grouped-query heads, softmax(q k^T / sqrt(d) + mask) v, for
/// f32 tensors on the CPU, written out: for each query head and position, the scores against
/// every key of its KV head, scaled and masked, softmax, then the probability-weighted sum of the
/// values; blocks of queries in parallel. The tensor version's arithmetic in f32 (dot products
/// of head_dim terms, here with fused multiply-adds; the softmax's sum in f32), without its
/// reshapes and copies, and skipping the keys the mask hides.
///
/// q: (b, h, t, d); k, v: (b, kv, s, d) with h a multiple of kv (query head i uses KV head
/// i / (h / kv), as transformers' `repeat_kv` arranges it); mask: (t, s). Returns the output
/// (b, h, t, d) (a transposed view of (b, t, h, d), the layout o_proj reads) and, if asked, the
/// probabilities (b, h, t, s); `Ok(None)` where it does not apply (another dtype, mismatched
/// shapes, the `reference` backend).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    keep_probs: bool,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kv, s, _) = k.dims4()?;
    let mask_fits = mask.is_none_or(|m| m.dims() == [t, s]);
    let shapes_fit = kv > 0 && h % kv == 0 && b * t * s * d > 0 && k.dims4()? == v.dims4()?;
    let same = |dtype: DType| [q, k, v].iter().all(|x| x.dtype() == dtype);
    if !uses(Backend::Portable) || !shapes_fit || !mask_fits {
        return Ok(None);
    }
    if same(DType::F32) {
        return attention_f32(q, k, v, mask, keep_probs, None).map(Some);
    }
    match Half::of(q.dtype()) {
        // 16-bit values as f32 (exact), each step rounded as eager attention rounds it in the
        // dtype, the output and probabilities back in the dtype.
        Some(half) if same(half.dtype()) => {
            let f32 = |t: &Tensor| match super::half_precision::heads_f32(t) {
                Some(t) => Ok(t),
                None => t.to_dtype(DType::F32),
            };
            let mask = mask.map(f32).transpose()?;
            let (out, probs) =
                attention_f32(&f32(q)?, &f32(k)?, &f32(v)?, mask.as_ref(), keep_probs, Some(half))?;
            let probs = probs.map(|p| p.to_dtype(half.dtype())).transpose()?;
            // (the output stays a transposed view of (b, t, h, d), the layout o_proj reads)
            let out = out.transpose(1, 2)?.to_dtype(half.dtype())?.transpose(1, 2)?;
            Ok(Some((out, probs)))
        }
        _ => Ok(None),
    }
}

/// The written-out attention on f32 tensors; with `round`, on 16-bit values held as f32, each
/// step rounded to that dtype (`avx512::attention_rows_rounded`,
/// `avx2::attention_rows_rounded`, `neon::attention_rows_rounded`, else
/// `portable::attention_row_rounded`).
fn attention_f32(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    keep_probs: bool,
    round: Option<Half>,
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
    // The row kernel, chosen here on the calling thread (see `with_backend`).
    let backend = super::backend();
    let rounded_simd = round.and_then(|half| rounded_rows(backend, half.is_bf16()));
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
            match backend {
                _ if rounded_simd.is_some() => {
                    let kernel = rounded_simd.expect("checked by the guard");
                    kernel(rows, queries, keys_t, values, masks, scale, p, o)
                }
                _ if round.is_some() => {
                    let row = match round {
                        Some(Half::Bf16) => portable::attention_row_rounded::<true>,
                        _ => portable::attention_row_rounded::<false>,
                    };
                    for r in 0..rows {
                        let (p, o) = (&mut p[r * s..(r + 1) * s], &mut o[r * d..(r + 1) * d]);
                        let query = &queries[r * d..(r + 1) * d];
                        let mask = masks.map(|m| &m[r * s..(r + 1) * s]);
                        row(query, keys_t, values, mask, scale, p, o);
                    }
                }
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512 | Backend::Amx => {
                    super::avx512::attention_rows(rows, queries, keys_t, values, masks, scale, p, o)
                }
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2 => {
                    super::avx2::attention_rows(rows, queries, keys_t, values, masks, scale, p, o)
                }
                #[cfg(target_arch = "aarch64")]
                Backend::Neon => {
                    super::neon::attention_rows(rows, queries, keys_t, values, masks, scale, p, o)
                }
                _ => {
                    for r in 0..rows {
                        let (p, o) = (&mut p[r * s..(r + 1) * s], &mut o[r * d..(r + 1) * d]);
                        let query = &queries[r * d..(r + 1) * d];
                        let mask = masks.map(|m| &m[r * s..(r + 1) * s]);
                        portable::attention_row(query, keys_t, values, mask, scale, p, o);
                    }
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

/// The backend's SIMD attention rows in the 16-bit mode (bf16 or f16), if it has them.
fn rounded_rows(backend: Backend, bf16: bool) -> Option<portable::AttentionRows> {
    macro_rules! pick {
        ($arch:ident) => {
            Some(if bf16 {
                super::$arch::attention_rows_rounded::<true>
            } else {
                super::$arch::attention_rows_rounded::<false>
            })
        };
    }
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 | Backend::Amx => pick!(avx512),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => pick!(avx2),
        #[cfg(target_arch = "aarch64")]
        Backend::Neon => pick!(neon),
        _ => None,
    }
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
