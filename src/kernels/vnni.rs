//! `--quantized`: the arithmetic of ggml's quantized matrix product (which candle's `QMatMul`
//! implements too) on GGUF Q4_0, Q4_1 and Q8_0 blocks, with AVX512-VNNI.
//!
//! Each input row is rounded to 8 bits per block of 32 values (ggml's `quantize_row_q8_1` and
//! `quantize_row_q8_0` as candle implements them: scale d = max|x| / 127 stored as f16,
//! q = round(x / d)), and each block's dot product is computed in integers: `sum(q_w * q_x)`,
//! then scaled by `d_w * d_x` (plus `m_w * s_x` for Q4_1, where `s_x = d_x * sum(q_x)`). This is
//! candle's arithmetic, summed in another order, and differs from the exact path by the rounding
//! of the activations. (Where ggml rounds s_x once, `f16(d * sum)` with the f32 d, candle rounds
//! the sum to f16 and multiplies in f16; lmscope follows candle, which its tests compare with.) candle has no SIMD kernel for Q4_1 (its `vec_dot` is the scalar reference), which
//! is why lmscope carries this one, and its AVX2 twin (`avx2::int8_dot_rows`, the same integer
//! sums from `vpmaddubsw` and `vpmaddwd`) for CPUs without AVX512-VNNI; other CPUs use candle's
//! `QMatMul`.

use super::avx512::{RowScales, Q4_0, Q4_1, Q8_0};
use super::blocks::{BlockMatrix, BlockType, BLOCK};
use half::f16;
use std::arch::x86_64::*;

/// Whether this CPU runs the kernel of this module.
pub fn available() -> bool {
    super::avx512::available()
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
}

/// Input rows rounded to 8 bits per block of 32 values.
pub struct Q8Rows {
    pub(super) m: usize,
    pub(super) k: usize,
    /// q, row-major (m, k)
    pub(super) q: Vec<i8>,
    /// Per row and block: d (an f16 value), at `i * stride + b`.
    pub(super) d: Vec<f32>,
    /// Per row and block: s = d * sum(q) as candle's Q8_1 stores it (`f16(sum) * d` in f16), at
    /// `i * stride + b`.
    pub(super) s: Vec<f32>,
    /// Blocks per row, rounded up to 16 (the padding is zero).
    pub(super) stride: usize,
}

impl Q8Rows {
    /// Quantizes m rows of k values (k a multiple of 32), exactly as candle's Q8_1 quantization
    /// (and, leaving out s, its Q8_0 one).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        assert!(x.len() == m * k && k.is_multiple_of(BLOCK));
        let blocks = k / BLOCK;
        let stride = blocks.next_multiple_of(16);
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * stride];
        let mut s = vec![0f32; m * stride];
        for (n, (xb, qb)) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (qv, &v) in qb.iter_mut().zip(xb) {
                *qv = (v * inverse).round() as i8;
                sum += *qv as i32;
            }
            let scale = f16::from_f32(scale);
            let at = n / blocks * stride + n % blocks;
            d[at] = scale.to_f32();
            s[at] = (f16::from_f32(sum as f32) * scale).to_f32();
        }
        Q8Rows { m, k, q, d, s, stride }
    }

    pub fn rows(&self) -> usize {
        self.m
    }
}

/// `out[(j - first) * m + i] = W[j] . x[i]` in ggml's quantized arithmetic, for the rows j that
/// `out` covers and the m rows of x.
pub fn dot_rows(w: &BlockMatrix, x: &Q8Rows, first: usize, out: &mut [f32]) {
    assert!(available(), "the 8-bit kernel needs AVX512-VNNI");
    // SAFETY: the CPU has the features the kernel is compiled for (checked above).
    unsafe {
        match w.kind {
            BlockType::Q4_0 => dot_rows_k::<Q4_0>(w, x, first, out),
            BlockType::Q4_1 => dot_rows_k::<Q4_1>(w, x, first, out),
            BlockType::Q8_0 => dot_rows_k::<Q8_0>(w, x, first, out),
        }
    }
}

/// A block's 32 weights as bytes in one register, in the order of the Q8 activations: unsigned
/// nibbles for Q4_1, signed values for Q4_0 (q - 8) and Q8_0.
///
/// # Safety
/// `block` points at one whole block of type K; the caller is compiled with AVX2.
#[inline(always)]
pub(super) unsafe fn weights<const K: u8>(block: *const u8) -> __m256i {
    if K == Q8_0 {
        return _mm256_loadu_si256(block.add(2) as *const __m256i);
    }
    let qs = _mm_loadu_si128(block.add(if K == Q4_1 { 4 } else { 2 }) as *const __m128i);
    // low nibbles (values 0..16) in the low half, high nibbles (16..32) in the high half
    let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs), _mm256_set1_epi8(0x0F));
    if K == Q4_0 {
        _mm256_sub_epi8(q, _mm256_set1_epi8(8))
    } else {
        q
    }
}

/// The sum of the 8 lanes.
#[inline(always)]
unsafe fn sum8(v: __m256) -> f32 {
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_rows_k<const K: u8>(w: &BlockMatrix, x: &Q8Rows, first: usize, out: &mut [f32]) {
    let (k, m) = (w.cols, x.m);
    assert!(x.k == k && m > 0);
    let blocks = k / BLOCK;
    let bb = w.kind.block_bytes();
    let rb = blocks * bb;
    let data = w.bytes.as_slice();
    let rows = out.len() / m;
    // Every pointer below stays inside these bounds.
    assert!(out.len() == rows * m && (first + rows) * rb <= data.len());
    assert!(x.q.len() == m * k && x.d.len() == m * x.stride && x.s.len() == m * x.stride);
    let mut scales = RowScales::new(blocks);
    let mut dd = vec![0f32; x.stride]; // d_w * d_x per block
    let zero = _mm256_setzero_si256();
    for (local, outs) in out.chunks_exact_mut(m).enumerate() {
        let row = data.as_ptr().add((first + local) * rb);
        super::blocks::prefetch(data, (first + local + super::blocks::PREFETCH_ROWS) * rb, rb);
        scales.read::<K>(row, blocks, bb);
        for (i, o) in outs.iter_mut().enumerate() {
            let xq = x.q.as_ptr().add(i * k);
            let xd = x.d.as_ptr().add(i * x.stride);
            for g in (0..blocks).step_by(16) {
                let d = _mm512_mul_ps(
                    _mm512_loadu_ps(scales.d.as_ptr().add(g)),
                    _mm512_loadu_ps(xd.add(g)),
                );
                _mm512_storeu_ps(dd.as_mut_ptr().add(g), d);
            }
            // The block's scaled integer dot product, as 8 lanes of partial sums: u8 x i8
            // multiplies (for signed weights, |w| times x with w's sign).
            let block = |b: usize| {
                let wq = weights::<K>(row.add(b * bb));
                let xv = _mm256_loadu_si256(xq.add(b * BLOCK) as *const __m256i);
                let p = if K == Q4_1 {
                    _mm256_dpbusd_epi32(zero, wq, xv)
                } else {
                    _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq))
                };
                (_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&*dd.as_ptr().add(b)))
            };
            // Two accumulators (even and odd blocks): two short dependency chains.
            let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for b in (0..blocks).step_by(2) {
                let (p, scale) = block(b);
                even = _mm256_fmadd_ps(p, scale, even);
                if b + 1 < blocks {
                    let (p, scale) = block(b + 1);
                    odd = _mm256_fmadd_ps(p, scale, odd);
                }
            }
            let mut total = sum8(_mm256_add_ps(even, odd));
            if K == Q4_1 {
                // plus the sum over blocks of m_w * s_x, 16 blocks at a time
                let xs = x.s.as_ptr().add(i * x.stride);
                let mut t = _mm512_setzero_ps();
                for g in (0..blocks).step_by(16) {
                    let mw = _mm512_loadu_ps(scales.m.as_ptr().add(g));
                    t = _mm512_fmadd_ps(mw, _mm512_loadu_ps(xs.add(g)), t);
                }
                total += _mm512_reduce_add_ps(t);
            }
            *o = total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::quantized;
    use crate::kernels::{with_backend, Backend};
    use candle_core::quantized::{GgmlDType, QMatMul};
    use candle_core::{Device, Module, Tensor};

    /// The backends whose 8-bit kernel this CPU runs: avx2's, and avx512's VNNI one.
    fn int8_backends() -> Vec<Backend> {
        let mut backends = Vec::new();
        if crate::kernels::avx2::available() {
            backends.push(Backend::Avx2);
        }
        if available() {
            backends.push(Backend::Avx512);
        }
        if backends.is_empty() {
            eprintln!("no AVX2 on this CPU: --quantized uses candle's QMatMul here");
        }
        backends
    }

    /// Same numbers as candle's QMatMul (the same integers, scales and f16 roundings; only the
    /// order of the float additions differs), on both 8-bit kernels.
    #[test]
    fn equals_candles_quantized_matmul() {
        for backend in int8_backends() {
            with_backend(backend, equals_candles_quantized_matmul_on_this_backend);
        }
    }

    /// The AVX2 kernel's integer sums are VNNI's: the products equal bit for bit but for Q4_1's
    /// offsets, which are summed 8 blocks at a time instead of 16.
    #[test]
    fn the_avx2_kernel_equals_the_vnni_one() {
        if !available() {
            return;
        }
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols) in [(300, 128), (37, 608), (5, 1536)] {
                let (_, w) = quantized(kind, rows, cols);
                for inputs in [1, 4, 9] {
                    let x: Vec<f32> = (0..inputs * cols)
                        .map(|i| ((i * 7919) % 251) as f32 / 40.0 - 3.1)
                        .collect();
                    let x = Tensor::from_vec(x, (inputs, cols), &Device::Cpu).unwrap();
                    let run = |b| {
                        with_backend(b, || {
                            let y = crate::kernels::products::matmul_t_int8_many(&[&w], &x);
                            y.unwrap().pop().unwrap().flatten_all().unwrap().to_vec1::<f32>()
                        })
                        .unwrap()
                    };
                    let (avx2, vnni) = (run(Backend::Avx2), run(Backend::Avx512));
                    for (a, v) in avx2.iter().zip(&vnni) {
                        if kind == GgmlDType::Q4_1 {
                            assert!(
                                (a - v).abs() <= 1e-5 * v.abs().max(1.0),
                                "{kind:?}: {a} vs {v}"
                            );
                        } else {
                            assert_eq!(
                                a.to_bits(),
                                v.to_bits(),
                                "{kind:?} {rows}x{cols}: {a} vs {v}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn equals_candles_quantized_matmul_on_this_backend() {
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // candle's Q4_1 reference needs an even number of blocks per row (debug-asserted).
            for (rows, cols) in [(300, 128), (37, 640)] {
                let (q, w) = quantized(kind, rows, cols);
                let candle = QMatMul::from_qtensor(q).unwrap();
                for inputs in [1, 3, 9] {
                    // A wide range of magnitudes, and an all-zero block (scale 0).
                    let x = Tensor::randn(0f32, 3.0, (inputs, cols), &Device::Cpu).unwrap();
                    let x = x
                        .slice_assign(
                            &[0..1, 0..32],
                            &Tensor::zeros((1, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
                        )
                        .unwrap();
                    let ours = crate::kernels::products::matmul_t_int8_many(&[&w], &x)
                        .unwrap()
                        .pop()
                        .unwrap();
                    let theirs = candle.forward(&x).unwrap();
                    let scale =
                        theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
                    let diff = diff.to_scalar::<f32>().unwrap();
                    assert!(
                        diff <= 1e-5 * scale.max(1.0),
                        "{kind:?} {rows}x{cols}, {inputs} inputs: {diff}"
                    );
                }
            }
        }
    }

    /// Odd block counts (candle's kernels refuse them) against ggml's formula written out:
    /// sum over blocks of sumi * d_w * d_x (+ m_w * s_x for Q4_1).
    #[test]
    fn odd_block_counts_follow_ggmls_formula() {
        for backend in int8_backends() {
            with_backend(backend, odd_block_counts_follow_ggmls_formula_on_this_backend);
        }
    }

    fn odd_block_counts_follow_ggmls_formula_on_this_backend() {
        let (rows, cols) = (5, 608); // 19 blocks
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (_, w) = quantized(kind, rows, cols);
            let block_kind = w.kind;
            let x: Vec<f32> =
                Tensor::randn(0f32, 2.0, cols, &Device::Cpu).unwrap().to_vec1().unwrap();
            let q = Q8Rows::quantize(&x, 1, cols);
            let ours = crate::kernels::products::matmul_t_int8_many(
                &[&w],
                &Tensor::from_vec(x.clone(), (1, cols), &Device::Cpu).unwrap(),
            )
            .unwrap()
            .pop()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            let data = w.bytes.as_slice();
            let bb = block_kind.block_bytes();
            let half = |at: usize| f16::from_le_bytes([data[at], data[at + 1]]).to_f32();
            for (r, &got) in ours.iter().enumerate() {
                let (mut expected, mut magnitude) = (0f32, 0f32);
                for b in 0..cols / BLOCK {
                    let at = (r * cols / BLOCK + b) * bb;
                    let weight = |j: usize| -> i32 {
                        match block_kind {
                            BlockType::Q8_0 => data[at + 2 + j] as i8 as i32,
                            BlockType::Q4_0 | BlockType::Q4_1 => {
                                let qs = at + if block_kind == BlockType::Q4_1 { 4 } else { 2 };
                                let nibble = if j < 16 {
                                    data[qs + j] & 0x0F
                                } else {
                                    data[qs + j - 16] >> 4
                                };
                                nibble as i32 - if block_kind == BlockType::Q4_0 { 8 } else { 0 }
                            }
                        }
                    };
                    let sumi: i32 = (0..BLOCK).map(|j| weight(j) * q.q[b * BLOCK + j] as i32).sum();
                    let mut terms = vec![sumi as f32 * half(at) * q.d[b]];
                    if block_kind == BlockType::Q4_1 {
                        terms.push(half(at + 2) * q.s[b]);
                    }
                    for t in terms {
                        expected += t;
                        magnitude += t.abs();
                    }
                }
                // Another summation order: f32 rounding of the terms' sizes, not of the result
                // (which can cancel to almost nothing).
                let tolerance = 1e-6 * magnitude.max(1.0);
                assert!(
                    (got - expected).abs() <= tolerance,
                    "{kind:?} row {r}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn activations_round_like_ggml() {
        // One block: max |x| = 127 * 0.5, so d = 0.5 and q = round(x / 0.5).
        let mut x = vec![0f32; 32];
        x[0] = 63.5;
        x[1] = -0.74; // -1.48 -> -1
        x[2] = 0.75; // 1.5 -> 2 (half away from zero)
        let q = Q8Rows::quantize(&x, 1, 32);
        assert_eq!(&q.q[..3], &[127, -1, 2]);
        assert_eq!(q.d[0], 0.5);
        assert_eq!(q.s[0], 0.5 * 128.0);
    }
}
