//! The plain-Rust kernels: what lmscope computes where no SIMD kernel runs (the `portable`
//! backend), and the twins every SIMD kernel is tested against. No `std::arch` here.

use super::blocks::{prefetch, BlockMatrix, BLOCK, PREFETCH_ROWS};
use super::half_precision::round_as;

/// Queries of one head that the attention kernels take together (they share each load of keys
/// and values).
pub const QUERY_BLOCK: usize = 4;

/// Computes `out[(j - first) * m + i] = W[j] · x[i]` for the rows j this slice covers (x is
/// (m, cols), xs its [`lane_sums`]).
pub fn dot_rows(w: &BlockMatrix, x: &[f32], xs: &[f32], m: usize, first: usize, out: &mut [f32]) {
    dot_rows_generic::<false>(w, x, xs, m, first, out);
}

/// The kernel. A block's weights are `d * q + m`, so its dot product with x is
/// `d * (q . x) + m * sum(x)`: per block, the 32 small integers q are turned into floats and
/// multiplied with x in 8 lanes (one SIMD register), then scaled by d, and the precomputed lane
/// sums of x are scaled by m. This is the dot product with the dequantized weights, rounded in
/// another order (as any other matrix library would).
#[inline(always)]
pub fn dot_rows_generic<const FMA: bool>(
    w: &BlockMatrix,
    x: &[f32],
    xs: &[f32],
    m: usize,
    first: usize,
    out: &mut [f32],
) {
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let k = w.cols;
    let blocks = k / BLOCK;
    let bb = w.kind.block_bytes();
    let rb = w.row_bytes();
    let data = w.bytes.as_slice();
    let mut q = [0f32; BLOCK];
    let mut acc = vec![[0f32; 8]; m];
    for (local, outs) in out.chunks_exact_mut(m).enumerate() {
        let row = &data[(first + local) * rb..(first + local + 1) * rb];
        prefetch(data, (first + local + PREFETCH_ROWS) * rb, rb);
        acc.iter_mut().for_each(|a| *a = [0.0; 8]);
        for b in 0..blocks {
            let block = &row[b * bb..(b + 1) * bb];
            let (d, offset) = w.kind.integers(block, &mut q);
            for (i, a) in acc.iter_mut().enumerate() {
                let xb: &[f32; BLOCK] =
                    x[i * k + b * BLOCK..i * k + (b + 1) * BLOCK].try_into().expect("a block");
                let mut p = [0f32; 8];
                for g in 0..4 {
                    for e in 0..8 {
                        p[e] = fma(q[g * 8 + e], xb[g * 8 + e], p[e]);
                    }
                }
                let sums = &xs[(i * blocks + b) * 8..(i * blocks + b + 1) * 8];
                for e in 0..8 {
                    a[e] = fma(d, p[e], a[e]);
                    if let Some(offset) = offset {
                        a[e] = fma(offset, sums[e], a[e]);
                    }
                }
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = a.iter().sum();
        }
    }
}

/// The 16-bit mode of [`dot_rows`] (`--dtype bf16|f16`): each block dequantized bit for bit
/// (`d * q + m`), each weight rounded to bfloat16 (`BF16`) or float16, then multiplied with x
/// (16-bit values, as f32) and summed in f32, 8 lanes per input row. The output is f32, for the
/// caller to round once. Same layout as [`dot_rows`].
pub fn dot_rows_rounded<const BF16: bool>(
    w: &BlockMatrix,
    x: &[f32],
    m: usize,
    first: usize,
    out: &mut [f32],
) {
    let k = w.cols;
    let blocks = k / BLOCK;
    let bb = w.kind.block_bytes();
    let rb = w.row_bytes();
    let data = w.bytes.as_slice();
    let mut wq = [0f32; BLOCK];
    let mut acc = vec![[0f32; 8]; m];
    for (local, outs) in out.chunks_exact_mut(m).enumerate() {
        let row = &data[(first + local) * rb..(first + local + 1) * rb];
        prefetch(data, (first + local + PREFETCH_ROWS) * rb, rb);
        acc.iter_mut().for_each(|a| *a = [0.0; 8]);
        for b in 0..blocks {
            w.kind.dequantize(&row[b * bb..(b + 1) * bb], &mut wq);
            wq.iter_mut().for_each(|v| *v = round_as::<BF16>(*v));
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = &x[i * k + b * BLOCK..i * k + (b + 1) * BLOCK];
                for g in 0..4 {
                    for e in 0..8 {
                        a[e] += wq[g * 8 + e] * xb[g * 8 + e];
                    }
                }
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = a.iter().sum();
        }
    }
}

/// `out[i * len + c] = W[first + c] . x[i]` for the `len` weight rows from `first` and the m
/// input rows of x (m, cols): each row dequantized bit for bit, each value summed over k in
/// order with fused multiply-adds (the twin of `neon::panel_rows`).
pub fn panel_rows(w: &BlockMatrix, x: &[f32], m: usize, first: usize, len: usize, out: &mut [f32]) {
    let k = w.cols;
    let mut row = vec![0f32; k];
    for c in 0..len {
        w.dequantize_row(first + c, &mut row);
        for (i, x) in x.chunks_exact(k).take(m).enumerate() {
            out[i * len + c] = row.iter().zip(x).fold(0.0, |s, (&a, &b)| a.mul_add(b, s));
        }
    }
}

/// Per input row and block, the 8 lane sums of x: `xs[(i * blocks + b) * 8 + e]` =
/// sum over g of `x[i][32b + 8g + e]`. Q4_1's offset m multiplies these.
pub fn lane_sums(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let blocks = k / BLOCK;
    let mut sums = vec![0f32; m * blocks * 8];
    for (xb, s) in x.chunks_exact(BLOCK).zip(sums.chunks_exact_mut(8)) {
        for e in 0..8 {
            s[e] = (xb[e] + xb[8 + e]) + (xb[16 + e] + xb[24 + e]);
        }
    }
    sums
}

/// silu(gate) * up, element by element (the twin of `avx512::silu_mul` and `neon::silu_mul`).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// RMSNorm of one row of c values (the twin of `neon::rms_norm_row`): `x / sqrt(mean(x^2) + eps) * w` (the arithmetic of candle's
/// f32 rms_norm, with the squares summed in 16 running sums instead of one).
#[inline(always)]
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let c = x.len();
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

/// One query's attention (the twin of `avx512::attention_rows` and
/// `neon::attention_rows`): its scores against
/// every key (keys_t is (d, s)), scaled and masked, softmax into `probs` (s), and the weighted
/// sum of the values (s, d) into `out` (d, zeros on entry).
pub fn attention_row(
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
    softmax(probs);
    // probs @ v
    for (j, &pj) in probs.iter().enumerate() {
        if pj != 0.0 {
            for (oe, &ve) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                *oe += pj * ve;
            }
        }
    }
}

/// The 16-bit mode of [`attention_row`] (`--dtype bf16|f16`), rounding where transformers'
/// eager attention does in that dtype: the scores `q k^T` summed in f32 and rounded, times the
/// scale rounded, plus the mask rounded; the softmax in f32 and its probabilities rounded; their
/// weighted sum of the values in f32, rounded. The inputs are 16-bit values as f32.
pub fn attention_row_rounded<const BF16: bool>(
    query: &[f32],
    keys_t: &[f32],
    values: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let r = round_as::<BF16>;
    let (s, d) = (probs.len(), out.len());
    for (e, &qe) in query.iter().enumerate() {
        for (pj, &kj) in probs.iter_mut().zip(&keys_t[e * s..(e + 1) * s]) {
            *pj += qe * kj;
        }
    }
    match mask {
        Some(m) => probs.iter_mut().zip(m).for_each(|(pj, &mj)| *pj = r(r(r(*pj) * scale) + mj)),
        None => probs.iter_mut().for_each(|pj| *pj = r(r(*pj) * scale)),
    }
    softmax(probs);
    probs.iter_mut().for_each(|pj| *pj = r(*pj));
    for (j, &pj) in probs.iter().enumerate() {
        if pj != 0.0 {
            for (oe, &ve) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                *oe += pj * ve;
            }
        }
    }
    out.iter_mut().for_each(|oe| *oe = r(*oe));
}

/// row = softmax(row), -inf entries giving 0 (the twin of `avx512::softmax`).
/// row = softmax(row), -inf entries giving 0 (the twin of `avx512::softmax` and `neon::softmax`).
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// The keys' and the head's sizes (s, d) of a SIMD kernel's attention-rows call (1 to
/// [`QUERY_BLOCK`] queries), once its slices are checked against each other: queries (rows, d),
/// keys_t (d, s), values (s, d), masks (rows, s), probs (rows, s), out (rows, d). The SIMD kernels
/// read through raw pointers within these sizes.
pub fn attention_sizes(
    rows: usize,
    queries: &[f32],
    keys_t: &[f32],
    values: &[f32],
    masks: Option<&[f32]>,
    probs: &[f32],
    out: &[f32],
) -> (usize, usize) {
    assert!((1..=QUERY_BLOCK).contains(&rows));
    let (s, d) = (probs.len() / rows, out.len() / rows);
    assert!(probs.len() == rows * s && out.len() == rows * d && queries.len() == rows * d);
    assert!(keys_t.len() == d * s && values.len() == s * d);
    assert!(masks.is_none_or(|m| m.len() == rows * s));
    (s, d)
}

/// A SIMD kernel's attention rows: (rows, queries, keys_t, values, masks, scale, probs, out).
pub type AttentionRows =
    fn(usize, &[f32], &[f32], &[f32], Option<&[f32]>, f32, &mut [f32], &mut [f32]);

/// Checks a SIMD kernel's 16-bit attention rows (`bf16` and `f16`, each rounding to its dtype)
/// against [`attention_row_rounded`]: every probability and output on the dtype's grid (a
/// rounding missed or to the other dtype shows there), and each within a few of the grid's steps
/// of the twin's (the two add in different orders, and a sum that lands on the other side of a
/// rounding boundary moves by a step, which the softmax and the weighted sum carry on).
#[cfg(test)]
pub fn check_rounded_attention_rows(bf16: AttentionRows, f16: AttentionRows) {
    use super::half_precision::{round_bf16, round_f16};
    let scale = 0.125;
    for (is_bf16, kernel) in [(true, bf16), (false, f16)] {
        let round = if is_bf16 { round_bf16 } else { round_f16 };
        let eps = if is_bf16 { 2f32.powi(-7) } else { 2f32.powi(-10) };
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| round((((i + seed) * 7919) % 113) as f32 / 40.0 - 1.4)).collect()
        };
        for (s, d) in [(1, 64), (7, 16), (16, 64), (37, 20), (70, 64)] {
            for rows in 1..=QUERY_BLOCK {
                let (queries, keys_t, values_) =
                    (values(rows * d, s), values(d * s, 7), values(s * d, 11));
                let causal: Vec<f32> = (0..rows * s)
                    .map(|i| if i % s > i / s + 2 { f32::NEG_INFINITY } else { 0.0 })
                    .collect();
                for masks in [None, Some(causal.as_slice())] {
                    let what =
                        format!("bf16={is_bf16} s={s} d={d} rows={rows} mask={}", masks.is_some());
                    let (mut probs, mut out) = (vec![0f32; rows * s], vec![0f32; rows * d]);
                    kernel(rows, &queries, &keys_t, &values_, masks, scale, &mut probs, &mut out);
                    for v in probs.iter().chain(&out) {
                        assert_eq!(round(*v).to_bits(), v.to_bits(), "{what}: {v} is off the grid");
                    }
                    for r in 0..rows {
                        let (mut p, mut o) = (vec![0f32; s], vec![0f32; d]);
                        let mask = masks.map(|m| &m[r * s..(r + 1) * s]);
                        let query = &queries[r * d..(r + 1) * d];
                        let twin = if is_bf16 {
                            attention_row_rounded::<true>
                        } else {
                            attention_row_rounded::<false>
                        };
                        twin(query, &keys_t, &values_, mask, scale, &mut p, &mut o);
                        let size = o.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                        for (a, b) in probs[r * s..(r + 1) * s].iter().zip(&p) {
                            assert!((a - b).abs() <= 6.0 * eps, "{what}: probs {a} vs {b}");
                        }
                        for (a, b) in out[r * d..(r + 1) * d].iter().zip(&o) {
                            assert!((a - b).abs() <= 8.0 * eps * size, "{what}: out {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}
