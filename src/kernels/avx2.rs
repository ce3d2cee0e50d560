//! x86-64 kernels for CPUs with AVX2, FMA and F16C (Intel since Haswell, AMD since Zen: most
//! laptops of the last ten years): the design of `avx512.rs` at 8 lanes, for every hot op of the
//! exact path. Every kernel has its twin in `portable.rs` and a test against it below.
//!
//! * [`dot_rows`], for a few input rows (decoding, short prompts): each weight block is turned
//!   into 32 floats in four registers once and multiplied with every input row, as
//!   `d * (q . x) + m * sum(x)`; a row's f16 scales are converted 8 at a time with one gather.
//! * [`panel_rows`], for many input rows (long prompts): a panel of [`NR`] = 6 weight rows is
//!   dequantized bit for bit into a small buffer, then multiplied with [`MR`] = 16 input rows at
//!   a time (two registers, from the inputs transposed once per product into [`Packed`]) by a
//!   register-blocked kernel holding 6 x 16 results in 12 of the 16 registers.
//! * [`attention_rows`], [`softmax`], [`silu_mul`]: the written-out attention of up to four
//!   queries, and SwiGLU's gate, on a vectorised exp (`exp8`, the same polynomial as AVX-512's).
//! * [`rms_norm_row`]: RMSNorm with the portable kernel's 16 running sums, bit for bit.
//!
//! AVX2 has no per-lane masks on ordinary loads: tails are read and written with
//! `vmaskmovps` (`_mm256_maskload_ps` / `_mm256_maskstore_ps`), which touches no memory in the
//! lanes its mask leaves clear, so no kernel reads or writes past its buffers.

use super::avx512::Columns;
use super::blocks::{BlockMatrix, BlockType, BLOCK};
use super::half_precision::Half;
use std::arch::x86_64::*;

/// Weight rows per panel of [`panel_rows`].
pub const NR: usize = 6;
/// Input rows per step of [`panel_rows`]: two 8-lane registers (NR x 2 = 12 accumulators).
pub const MR: usize = 16;

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

// The block types as const generic parameters, so that each kernel is compiled once per type.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

fn kind_id(kind: BlockType) -> u8 {
    match kind {
        BlockType::Q4_0 => Q4_0,
        BlockType::Q4_1 => Q4_1,
        BlockType::Q8_0 => Q8_0,
    }
}

/// A mask of the first `n` (at most 8) lanes, for `_mm256_maskload_ps` / `_mm256_maskstore_ps`.
#[inline(always)]
unsafe fn first_lanes(n: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes)
}

/// The sum of a register's 8 lanes.
#[inline(always)]
unsafe fn sum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The largest of a register's 8 lanes.
#[inline(always)]
unsafe fn max8(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
}

/// 8 f16 bit patterns, one in the low half of each 32-bit lane (the high halves zero), as f32.
#[inline(always)]
unsafe fn halves(v: __m256i) -> __m256 {
    // 0..=0xFFFF in each lane: packing to u16 does not saturate.
    _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)))
}

/// Scratch space for one row's scales d and (Q4_1) offsets m as f32, 8 blocks at a time.
struct RowScales {
    d: Vec<f32>,
    m: Vec<f32>,
}

impl RowScales {
    fn new(blocks: usize) -> Self {
        let len = blocks.next_multiple_of(8);
        RowScales { d: vec![0.0; len], m: vec![0.0; len] }
    }

    /// Reads the d (and, for Q4_1, m) of each of the `blocks` blocks of the row at `row`: a
    /// block starts with its scale d (f16), then (Q4_1) its offset m (f16). One 32-bit gather per
    /// 8 blocks fetches both (converting one f16 per block on its own costs more than the
    /// block's arithmetic); lanes past the last block are masked off, read nothing and give 0.
    ///
    /// # Safety
    /// `row` points at `blocks` blocks of `bb` (at least 18) bytes; the CPU has AVX2 and F16C.
    #[inline(always)]
    unsafe fn read<const K: u8>(&mut self, row: *const u8, blocks: usize, bb: usize) {
        assert!(self.d.len() >= blocks && bb >= 4);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let offsets = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(bb as i32));
        let low16 = _mm256_set1_epi32(0xFFFF);
        for g in (0..blocks).step_by(8) {
            let mask = first_lanes(blocks - g);
            // SAFETY: the live lanes read 4 bytes at the start of blocks g..blocks, inside the
            // row (a block is at least 18 bytes long); masked-off lanes touch no memory.
            let words = _mm256_mask_i32gather_epi32::<1>(
                _mm256_setzero_si256(),
                row.add(g * bb) as *const i32,
                offsets,
                mask,
            );
            _mm256_storeu_ps(self.d.as_mut_ptr().add(g), halves(_mm256_and_si256(words, low16)));
            if K == Q4_1 {
                let m = halves(_mm256_srli_epi32::<16>(words));
                _mm256_storeu_ps(self.m.as_mut_ptr().add(g), m);
            }
        }
    }
}

/// The low 8 bytes of v as 8 floats, signed.
#[inline(always)]
unsafe fn i8s(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

/// A block's 32 integers as floats in four registers (values 0..8, 8..16, 16..24, 24..32): the
/// weights are `d * q + m` (m = 0 for Q4_0 and Q8_0; Q4_0's q already has its 8 taken off).
///
/// # Safety
/// `block` points at one whole block of type K; the CPU has AVX2.
#[inline(always)]
unsafe fn integers<const K: u8>(block: *const u8) -> [__m256; 4] {
    if K == Q8_0 {
        // {f16 d, i8 qs[32]}
        let q = |c: usize| _mm_loadl_epi64(block.add(2 + 8 * c) as *const __m128i);
        return [i8s(q(0)), i8s(q(1)), i8s(q(2)), i8s(q(3))];
    }
    // Q4_x: byte j holds value j in its low nibble and value j + 16 in its high nibble. Bytes
    // 0..8 and 8..16 widened to 32 bits (a load and one shuffle each), then split in place.
    let qs = block.add(if K == Q4_1 { 4 } else { 2 });
    let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs as *const __m128i));
    let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8) as *const __m128i));
    let nibble = _mm256_set1_epi32(0x0F);
    let q = [
        _mm256_and_si256(a, nibble),
        _mm256_and_si256(b, nibble),
        _mm256_srli_epi32::<4>(a),
        _mm256_srli_epi32::<4>(b),
    ];
    let eight = _mm256_set1_epi32(if K == Q4_0 { 8 } else { 0 });
    [
        _mm256_cvtepi32_ps(_mm256_sub_epi32(q[0], eight)),
        _mm256_cvtepi32_ps(_mm256_sub_epi32(q[1], eight)),
        _mm256_cvtepi32_ps(_mm256_sub_epi32(q[2], eight)),
        _mm256_cvtepi32_ps(_mm256_sub_epi32(q[3], eight)),
    ]
}

/// A 4-bit block's 32 nibbles as they are (0..=15), as 32-bit integers in four registers
/// (values 0..8, 8..16, 16..24, 24..32, as [`integers`]): indexes into the block's 16 weights
/// (see [`nibble_values`]).
#[inline(always)]
unsafe fn nibbles<const K: u8>(block: *const u8) -> [__m256i; 4] {
    let qs = block.add(if K == Q4_1 { 4 } else { 2 });
    let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs as *const __m128i));
    let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8) as *const __m128i));
    let nibble = _mm256_set1_epi32(0x0F);
    [
        _mm256_and_si256(a, nibble),
        _mm256_and_si256(b, nibble),
        _mm256_srli_epi32::<4>(a),
        _mm256_srli_epi32::<4>(b),
    ]
}

/// The integer each nibble value stands for, as floats, 0..8 and 8..16: itself for Q4_1, itself
/// minus 8 for Q4_0 (what [`integers`] gives for that nibble).
#[inline(always)]
unsafe fn nibble_values<const K: u8>() -> [__m256; 2] {
    let off = _mm256_set1_epi32(if K == Q4_0 { 8 } else { 0 });
    let low = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let high = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
    [low, high].map(|v| _mm256_cvtepi32_ps(_mm256_sub_epi32(v, off)))
}

/// Dequantizes row `row` of `w` into `out` (cols values) exactly as the scalar code does: a
/// multiply, then an add (never fused), so the values are bit-identical.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[inline(always)]
unsafe fn dequantize_row<const K: u8>(
    w: &BlockMatrix,
    row: usize,
    scales: &mut RowScales,
    out: &mut [f32],
) {
    let bb = w.kind.block_bytes();
    let blocks = w.cols / BLOCK;
    let data = w.bytes.as_slice();
    assert!(out.len() == w.cols && (row + 1) * blocks * bb <= data.len());
    let src = data.as_ptr().add(row * blocks * bb);
    scales.read::<K>(src, blocks, bb);
    let dst = out.as_mut_ptr();
    for b in 0..blocks {
        let q = integers::<K>(src.add(b * bb));
        let d = _mm256_set1_ps(scales.d[b]);
        let m = _mm256_set1_ps(scales.m[b]);
        for (c, q) in q.into_iter().enumerate() {
            let v = _mm256_mul_ps(q, d);
            let v = if K == Q4_1 { _mm256_add_ps(v, m) } else { v };
            _mm256_storeu_ps(dst.add(b * BLOCK + 8 * c), v);
        }
    }
}

/// Per input row, the sum of x over each block, which Q4_1's offset m multiplies:
/// `sums[i * stride + b]` = sum of x[i][32b..32b + 32], zero-padded to stride = blocks rounded up
/// to 8.
pub fn block_sums(x: &[f32], k: usize) -> Vec<f32> {
    let blocks = k / BLOCK;
    let stride = blocks.next_multiple_of(8);
    let mut sums = vec![0f32; x.len() / k * stride];
    for (row, s) in x.chunks_exact(k).zip(sums.chunks_exact_mut(stride)) {
        for (block, sb) in row.chunks_exact(BLOCK).zip(s.iter_mut()) {
            *sb = block.iter().sum();
        }
    }
    sums
}

/// `out[(j - first) * m + i] = W[j] . x[i]` for the rows j that `out` covers (out.len() / m of
/// them) and the m input rows of x (m * cols values; m <= 8). `sums` is [`block_sums`] of x.
/// The twin of `portable::dot_rows`.
pub fn dot_rows(w: &BlockMatrix, x: &[f32], sums: &[f32], m: usize, first: usize, out: &mut [f32]) {
    assert!(available(), "the avx2 kernels need a CPU with AVX2, FMA and F16C");
    macro_rules! run {
        ($k:expr, $($m:literal)*) => {
            match m {
                // SAFETY: the CPU has the features the kernel is compiled for (checked above).
                $($m => unsafe { dot_rows_k::<$k, $m>(w, x, sums, first, out) },)*
                _ => panic!("dot_rows takes 1 to 8 input rows, not {m}"),
            }
        };
    }
    match kind_id(w.kind) {
        Q4_0 => run!(Q4_0, 1 2 3 4 5 6 7 8),
        Q4_1 => run!(Q4_1, 1 2 3 4 5 6 7 8),
        _ => run!(Q8_0, 1 2 3 4 5 6 7 8),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_k<const K: u8, const M: usize>(
    w: &BlockMatrix,
    x: &[f32],
    sums: &[f32],
    first: usize,
    out: &mut [f32],
) {
    let k = w.cols;
    let blocks = k / BLOCK;
    let stride = blocks.next_multiple_of(8);
    let bb = w.kind.block_bytes();
    let rb = blocks * bb;
    let data = w.bytes.as_slice();
    let rows = out.len() / M;
    // Every pointer below stays inside these bounds.
    assert!(x.len() >= M * k && (first + rows) * rb <= data.len());
    assert!(K != Q4_1 || sums.len() >= M * stride);
    let (xp, sp) = (x.as_ptr(), sums.as_ptr());
    let mut scales = RowScales::new(blocks);
    for (local, outs) in out.chunks_exact_mut(M).enumerate() {
        let row = data.as_ptr().add((first + local) * rb);
        super::blocks::prefetch(data, (first + local + super::blocks::PREFETCH_ROWS) * rb, rb);
        scales.read::<K>(row, blocks, bb);
        // sum over blocks of d * (q . x): 8 lanes per input row
        let mut acc = [_mm256_setzero_ps(); M];
        for b in 0..blocks {
            let q = integers::<K>(row.add(b * bb));
            let d = _mm256_set1_ps(scales.d[b]);
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = xp.add(i * k + b * BLOCK);
                let p = _mm256_mul_ps(q[0], _mm256_loadu_ps(xb));
                let p = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb.add(8)), p);
                let p = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb.add(16)), p);
                let p = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb.add(24)), p);
                *a = _mm256_fmadd_ps(d, p, *a);
            }
        }
        // Q4_1: plus sum over blocks of m * sum(x), 8 blocks at a time (both zero-padded)
        if K == Q4_1 {
            for (i, a) in acc.iter_mut().enumerate() {
                for g in (0..blocks).step_by(8) {
                    let m = _mm256_loadu_ps(scales.m.as_ptr().add(g));
                    *a = _mm256_fmadd_ps(m, _mm256_loadu_ps(sp.add(i * stride + g)), *a);
                }
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = sum8(*a);
        }
    }
}

/// The 16-bit mode of [`dot_rows`] (`--dtype bf16|f16`, the twin of
/// `portable::dot_rows_rounded` and the 8-lane `avx512::dot_rows_rounded`): each block
/// dequantized bit for bit (`d * q`, plus `m` for Q4_1), its 32 weights rounded to bfloat16
/// (`bf16`) or float16, then multiplied with every input row (16-bit values, as f32) and summed
/// in f32. Same layout as [`dot_rows`]; the output is f32, for the caller to round once.
pub fn dot_rows_rounded(
    w: &BlockMatrix,
    x: &[f32],
    m: usize,
    first: usize,
    out: &mut [f32],
    bf16: bool,
) {
    assert!(available(), "the avx2 kernels need a CPU with AVX2, FMA and F16C");
    macro_rules! run {
        ($k:expr, $($m:literal)*) => {
            match (m, bf16) {
                // SAFETY: the CPU has the features the kernel is compiled for (checked above).
                $(($m, true) => unsafe { dot_rows_rounded_k::<$k, $m, BFLOAT16>(w, x, first, out) },
                ($m, false) => unsafe { dot_rows_rounded_k::<$k, $m, FLOAT16>(w, x, first, out) },)*
                _ => panic!("dot_rows_rounded takes 1 to 8 input rows, not {m}"),
            }
        };
    }
    match kind_id(w.kind) {
        Q4_0 => run!(Q4_0, 1 2 3 4 5 6 7 8),
        Q4_1 => run!(Q4_1, 1 2 3 4 5 6 7 8),
        _ => run!(Q8_0, 1 2 3 4 5 6 7 8),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_rounded_k<const K: u8, const M: usize, const H: u8>(
    w: &BlockMatrix,
    x: &[f32],
    first: usize,
    out: &mut [f32],
) {
    let k = w.cols;
    let blocks = k / BLOCK;
    let bb = w.kind.block_bytes();
    let rb = blocks * bb;
    let data = w.bytes.as_slice();
    let rows = out.len() / M;
    // Every pointer below stays inside these bounds.
    assert!(x.len() >= M * k && (first + rows) * rb <= data.len());
    let xp = x.as_ptr();
    let mut scales = RowScales::new(blocks);
    for (local, outs) in out.chunks_exact_mut(M).enumerate() {
        let row = data.as_ptr().add((first + local) * rb);
        super::blocks::prefetch(data, (first + local + super::blocks::PREFETCH_ROWS) * rb, rb);
        scales.read::<K>(row, blocks, bb);
        let mut acc = [_mm256_setzero_ps(); M];
        for b in 0..blocks {
            let d = _mm256_set1_ps(scales.d[b]);
            let wv = if K == Q8_0 {
                // d * q, rounded
                let q = integers::<K>(row.add(b * bb));
                q.map(|q| round_as::<H>(_mm256_mul_ps(q, d)))
            } else {
                // A 4-bit block's weights take 16 values: d * q (+ m) for q = 0..16 (minus 8 for
                // Q4_0), a multiply then an add as in dequantize_row, rounded in two registers,
                // and each weight looked up by its nibble (the low 3 bits pick in both halves of
                // the table, bit 3 the half): the same bits as rounding each of the 32 weights.
                let mut table = nibble_values::<K>().map(|v| _mm256_mul_ps(v, d));
                if K == Q4_1 {
                    let m = _mm256_set1_ps(scales.m[b]);
                    table = table.map(|v| _mm256_add_ps(v, m));
                }
                let [low, high] = table.map(|v| round_as::<H>(v));
                nibbles::<K>(row.add(b * bb)).map(|i| {
                    let upper = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(i));
                    _mm256_blendv_ps(
                        _mm256_permutevar8x32_ps(low, i),
                        _mm256_permutevar8x32_ps(high, i),
                        upper,
                    )
                })
            };
            // The block's products summed apart from the running sum, which then takes one
            // add per block: four fused multiply-adds in a row on the running sum made each
            // block wait for the last block's.
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = xp.add(i * k + b * BLOCK);
                let p = _mm256_mul_ps(wv[0], _mm256_loadu_ps(xb));
                let p = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(xb.add(8)), p);
                let p = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(xb.add(16)), p);
                let p = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(xb.add(24)), p);
                *a = _mm256_add_ps(*a, p);
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = sum8(*a);
        }
    }
}

/// `--quantized` on AVX2: `out[(j - first) * m + i] = W[j] . x[i]` in ggml's quantized
/// arithmetic (the activations rounded to 8 bits per block, `vnni::Q8Rows`), for the rows j
/// that `out` covers. The twin of `vnni::dot_rows` at AVX2: each block's integer dot product
/// `sum(q_w * q_x)` from `vpmaddubsw` (pairs of u8 x i8 products, summed to 16 bits: at most
/// 2 x 128 x 127, so never saturated) and `vpmaddwd` (pairs of those, to 32 bits): the same
/// 8 lanes of 4-byte sums as VNNI's `vpdpbusd`, scaled by `d_w * d_x` in the same order, so
/// equal to it bit for bit but for Q4_1's offsets (`m_w * s_x`, summed 8 blocks at a time).
pub fn int8_dot_rows(w: &BlockMatrix, x: &super::vnni::Q8Rows, first: usize, out: &mut [f32]) {
    assert!(available(), "the avx2 kernels need a CPU with AVX2, FMA and F16C");
    // SAFETY: the CPU has the features the kernel is compiled for (checked above).
    unsafe {
        match kind_id(w.kind) {
            Q4_0 => int8_dot_rows_k::<Q4_0>(w, x, first, out),
            Q4_1 => int8_dot_rows_k::<Q4_1>(w, x, first, out),
            _ => int8_dot_rows_k::<Q8_0>(w, x, first, out),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn int8_dot_rows_k<const K: u8>(
    w: &BlockMatrix,
    x: &super::vnni::Q8Rows,
    first: usize,
    out: &mut [f32],
) {
    let (k, m) = (w.cols, x.m);
    assert!(x.k == k && m > 0);
    let blocks = k / BLOCK;
    let bb = w.kind.block_bytes();
    let rb = blocks * bb;
    let data = w.bytes.as_slice();
    let rows = out.len() / m;
    // Every pointer below stays inside these bounds (x's scales are padded to 16 blocks, the
    // row's to 8, both with zeros).
    assert!(out.len() == rows * m && (first + rows) * rb <= data.len());
    assert!(x.q.len() == m * k && x.d.len() == m * x.stride && x.s.len() == m * x.stride);
    let mut scales = RowScales::new(blocks);
    assert!(scales.d.len() <= x.stride);
    let mut dd = vec![0f32; x.stride]; // d_w * d_x per block
    let ones = _mm256_set1_epi16(1);
    for (local, outs) in out.chunks_exact_mut(m).enumerate() {
        let row = data.as_ptr().add((first + local) * rb);
        super::blocks::prefetch(data, (first + local + super::blocks::PREFETCH_ROWS) * rb, rb);
        scales.read::<K>(row, blocks, bb);
        for (i, o) in outs.iter_mut().enumerate() {
            let xq = x.q.as_ptr().add(i * k);
            let xd = x.d.as_ptr().add(i * x.stride);
            for g in (0..blocks).step_by(8) {
                let d = _mm256_mul_ps(
                    _mm256_loadu_ps(scales.d.as_ptr().add(g)),
                    _mm256_loadu_ps(xd.add(g)),
                );
                _mm256_storeu_ps(dd.as_mut_ptr().add(g), d);
            }
            // The block's scaled integer dot product, as 8 lanes of partial sums: u8 x i8
            // multiplies (for signed weights, |w| times x with w's sign).
            let block = |b: usize| {
                let wq = super::vnni::weights::<K>(row.add(b * bb));
                let xv = _mm256_loadu_si256(xq.add(b * BLOCK) as *const __m256i);
                let pairs = if K == Q4_1 {
                    _mm256_maddubs_epi16(wq, xv)
                } else {
                    _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq))
                };
                let p = _mm256_madd_epi16(pairs, ones);
                (_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&*dd.as_ptr().add(b)))
            };
            // Two accumulators (even and odd blocks), as the VNNI kernel.
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
                // plus the sum over blocks of m_w * s_x, 8 blocks at a time
                let xs = x.s.as_ptr().add(i * x.stride);
                let mut t = _mm256_setzero_ps();
                for g in (0..blocks).step_by(8) {
                    let mw = _mm256_loadu_ps(scales.m.as_ptr().add(g));
                    t = _mm256_fmadd_ps(mw, _mm256_loadu_ps(xs.add(g)), t);
                }
                total += sum8(t);
            }
            *o = total;
        }
    }
}

/// 8 floats on a 32-byte boundary: one register, loaded without splitting a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Line([f32; 8]);

/// The inputs transposed for [`panel_rows`], in groups of MR rows, 32-byte aligned: value
/// `(g * k + kk) * MR + i` of the buffer is `x[g * MR + i][kk]` (zeros past row m).
pub struct Packed {
    lines: Vec<Line>,
    m: usize,
    k: usize,
}

impl Packed {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert!(x.len() == m * k);
        let groups = m.div_ceil(MR);
        let mut lines = vec![Line([0.0; 8]); groups * k * MR / 8];
        if !lines.is_empty() {
            super::team::for_each_chunk(&mut lines, k * MR / 8, |g, group| {
                let rows = MR.min(m - g * MR);
                let x = &x[g * MR * k..(g * MR + rows) * k];
                // kk outside, rows inside: reads walk 16 rows in step and writes are sequential.
                for kk in 0..k {
                    for i in 0..rows {
                        group[(kk * MR + i) / 8].0[i % 8] = x[i * k + kk];
                    }
                }
            });
        }
        Packed { lines, m, k }
    }

    fn as_ptr(&self) -> *const f32 {
        self.lines.as_ptr() as *const f32
    }
}

/// `out[i][j] = W[j] . x[i]` for the columns j of the window and every input row i < m
/// (`packed` holds x); every value of the window is written. The twin of dequantizing W and
/// multiplying (`products::dequantized_products`). With `round` (`--dtype bf16|f16`), each
/// dequantized weight is rounded to that dtype first (the output stays f32, for the caller to
/// round once), as `avx512::panel_rows` does.
pub fn panel_rows(w: &BlockMatrix, packed: &Packed, out: &mut Columns, round: Option<Half>) {
    assert!(available(), "the avx2 kernels need a CPU with AVX2, FMA and F16C");
    macro_rules! run {
        ($k:expr) => {
            match round {
                None => panel_rows_k::<$k, F32>(w, packed, out),
                Some(Half::Bf16) => panel_rows_k::<$k, BFLOAT16>(w, packed, out),
                Some(Half::F16) => panel_rows_k::<$k, FLOAT16>(w, packed, out),
            }
        };
    }
    // SAFETY: the CPU has the features the kernel is compiled for (checked above).
    unsafe {
        match kind_id(w.kind) {
            Q4_0 => run!(Q4_0),
            Q4_1 => run!(Q4_1),
            _ => run!(Q8_0),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_rows_k<const K: u8, const H: u8>(
    w: &BlockMatrix,
    packed: &Packed,
    out: &mut Columns,
) {
    let k = w.cols;
    let (m, n) = (out.rows(), out.matrix_columns());
    let (first, len) = out.window();
    let groups = m.div_ceil(MR);
    assert!(packed.k == k && packed.m == m && packed.lines.len() * 8 == groups * k * MR);
    assert!(first + len <= w.rows && n == w.rows);
    let data = w.bytes.as_slice();
    let rb = k / BLOCK * w.kind.block_bytes();
    let mut panel = vec![0f32; NR * k]; // NR dequantized rows, row-major
    let mut scales = RowScales::new(k / BLOCK);
    for p0 in (0..len).step_by(NR) {
        let nr = NR.min(len - p0);
        let j0 = first + p0;
        // The next panel's bytes are fetched while this one is multiplied.
        super::blocks::prefetch(data, (j0 + NR) * rb, NR * rb);
        for (r, row) in panel.chunks_exact_mut(k).enumerate() {
            if r < nr {
                dequantize_row::<K>(w, j0 + r, &mut scales, row);
                if H != F32 {
                    // k is a whole number of 32-value blocks.
                    for chunk in row.chunks_exact_mut(8) {
                        let v = round_as::<H>(_mm256_loadu_ps(chunk.as_ptr()));
                        _mm256_storeu_ps(chunk.as_mut_ptr(), v);
                    }
                }
            } else {
                row.fill(0.0);
            }
        }
        // Opaque to the optimiser, so that the tile holds six base registers and one index
        // instead of working out the rows' addresses from one base at every step.
        let wp: [*const f32; NR] =
            std::hint::black_box(std::array::from_fn(|r| panel.as_ptr().add(r * k)));
        for g in 0..groups {
            let xp = packed.as_ptr().add(g * k * MR);
            let rows = MR.min(m - g * MR);
            // acc[r] holds W[j0 + r] . x[16g..16g + 16]: a piece of a column of the output.
            let acc = if rows > 8 { tile::<2>(wp, xp, k) } else { tile::<1>(wp, xp, k) };
            let mut columns = [[0f32; MR]; NR];
            for (column, a) in columns.iter_mut().zip(&acc) {
                _mm256_storeu_ps(column.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(column.as_mut_ptr().add(8), a[1]);
            }
            // Written row by row: each input's nr results are neighbours in the output.
            #[allow(clippy::needless_range_loop)] // i indexes the second dimension of columns
            for i in 0..rows {
                out.set_each::<NR>(g * MR + i, p0, nr, |r| columns[r][i]);
            }
        }
    }
}

/// The NR x 16 products of the panel rows `wp` with a group of packed inputs `xp`; with V = 1
/// only the first 8 inputs are computed (the last group of a product, when it has 8 or fewer).
///
/// # Safety
/// `wp` point at NR rows of k values, `xp` at k x MR packed values (32-byte aligned); AVX2, FMA.
#[inline(always)]
unsafe fn tile<const V: usize>(
    wp: [*const f32; NR],
    xp: *const f32,
    k: usize,
) -> [[__m256; 2]; NR] {
    let mut acc = [[_mm256_setzero_ps(); 2]; NR];
    // Plain index loops with constant bounds: fully unrolled, so acc lives in registers.
    #[allow(clippy::needless_range_loop)]
    for kk in 0..k {
        let mut x = [_mm256_setzero_ps(); V];
        for v in 0..V {
            x[v] = _mm256_load_ps(xp.add(kk * MR + 8 * v));
        }
        for r in 0..NR {
            let wv = _mm256_set1_ps(*wp[r].add(kk));
            for v in 0..V {
                acc[r][v] = _mm256_fmadd_ps(wv, x[v], acc[r][v]);
            }
        }
    }
    acc
}

/// 2^e for integers -126 <= e <= 127 in each lane (the exponent bits of an f32).
#[inline(always)]
unsafe fn power_of_two(e: __m256i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(e, _mm256_set1_epi32(127))))
}

/// e^x for 8 values: the polynomial of `avx512::exp16` (Cephes' single-precision exp, within
/// 2 ulp), lane for lane the same values. AVX2 has no `vscalefps`: 2^n is made from its exponent
/// bits in two halves, so that n = 128 (x up to 88.72) and n = -126 stay representable. Below
/// -87.33 the result is 0 (e^-inf = 0, as a causal mask needs); above 88.72, infinity; NaN gives
/// NaN.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn exp8(input: __m256) -> __m256 {
    let (low, high) = (_mm256_set1_ps(-87.33), _mm256_set1_ps(88.72));
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(input, low);
    let overflow = _mm256_cmp_ps::<_CMP_GT_OQ>(input, high);
    // min and max return their second operand when one is NaN: NaN stays NaN.
    let x = _mm256_max_ps(low, _mm256_min_ps(high, input));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // r = x - n ln 2, with ln 2 in two parts so that n * 0.693359375 is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    // y * 2^n as y * 2^(n/2) * 2^(n - n/2): both factors normal, both products exact.
    let n = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32::<1>(n);
    let e = _mm256_mul_ps(
        _mm256_mul_ps(y, power_of_two(half)),
        power_of_two(_mm256_sub_epi32(n, half)),
    );
    let e = _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), overflow);
    _mm256_andnot_ps(underflow, e)
}

/// `out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i]` (SwiGLU's gating; the
/// twin of `portable::silu_mul`).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(available() && gate.len() == up.len() && up.len() == out.len());
    // SAFETY: the CPU has AVX2 and FMA (checked above); lanes past the end are masked off.
    unsafe { silu_mul_k(gate, up, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn silu_mul_k(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let one = _mm256_set1_ps(1.0);
    let n = gate.len();
    for at in (0..n).step_by(8) {
        let mask = first_lanes(n - at);
        let g = _mm256_maskload_ps(gate.as_ptr().add(at), mask);
        let u = _mm256_maskload_ps(up.as_ptr().add(at), mask);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_maskstore_ps(out.as_mut_ptr().add(at), mask, _mm256_mul_ps(silu, u));
    }
}

/// RMSNorm of one row: `x / sqrt(mean(x^2) + eps) * w`, bit for bit `portable::rms_norm_row`
/// (the same 16 running sums, 8 in each of two registers, and the same unfused arithmetic).
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(available() && weight.len() == x.len() && out.len() == x.len());
    // SAFETY: the CPU has AVX2 (checked above); the loops stay inside the three slices.
    unsafe { rms_norm_row_k(x, weight, eps, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rms_norm_row_k(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let c = x.len();
    let whole = c / 16 * 16;
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for at in (0..whole).step_by(16) {
        let v0 = _mm256_loadu_ps(x.as_ptr().add(at));
        let v1 = _mm256_loadu_ps(x.as_ptr().add(at + 8));
        s0 = _mm256_add_ps(s0, _mm256_mul_ps(v0, v0));
        s1 = _mm256_add_ps(s1, _mm256_mul_ps(v1, v1));
    }
    let mut sums = [0f32; 16];
    _mm256_storeu_ps(sums.as_mut_ptr(), s0);
    _mm256_storeu_ps(sums.as_mut_ptr().add(8), s1);
    let tail: f32 = x[whole..].iter().map(|v| v * v).sum();
    let m = ((sums.iter().sum::<f32>() + tail) / c as f32 + eps).sqrt();
    let mv = _mm256_set1_ps(m);
    let vectors = c / 8 * 8;
    for at in (0..vectors).step_by(8) {
        let v = _mm256_div_ps(_mm256_loadu_ps(x.as_ptr().add(at)), mv);
        let v = _mm256_mul_ps(v, _mm256_loadu_ps(weight.as_ptr().add(at)));
        _mm256_storeu_ps(out.as_mut_ptr().add(at), v);
    }
    for ((o, &v), &w) in out[vectors..].iter_mut().zip(&x[vectors..]).zip(&weight[vectors..]) {
        *o = v / m * w;
    }
}

#[cfg(test)]
use super::portable::QUERY_BLOCK as ATTENTION_ROWS;

/// Keys (for the scores) and values (for the outputs) per step of [`attention_rows`]: two
/// registers, so that four queries' accumulators (8), the loads (2) and a broadcast fit in
/// AVX2's 16 registers.
const STEP: usize = 16;

/// Attention for `rows` (at most `portable::QUERY_BLOCK` = 4) queries of one head (see
/// `attention.rs`; the twin of `portable::attention_row`, and the 8-lane `avx512::attention_rows`):
/// `probs[r][j] = softmax_j(q_r . k_j * scale + mask[r][j])` and
/// `out[r] = sum over j of probs[r][j] v_j`. queries (rows, d), keys_t (d, s) the keys
/// transposed, values (s, d), masks (rows, s), probs (rows, s, zeros on entry), out (rows, d).
/// Scores are summed over d in order with fused multiply-adds, 16 keys at a time; the outputs 16
/// values at a time over the keys in order. The queries share each load of keys and values.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    rows: usize,
    queries: &[f32],
    keys_t: &[f32],
    values: &[f32],
    masks: Option<&[f32]>,
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) {
    assert!(available());
    let (s, d) = super::portable::attention_sizes(rows, queries, keys_t, values, masks, probs, out);
    let args = (queries, keys_t, values, masks, scale);
    // SAFETY: the CPU has AVX2 and FMA (checked above) and the lengths match (asserted above).
    unsafe {
        match rows {
            1 => attention_rows_k::<1, F32>(args, s, d, probs, out),
            2 => attention_rows_k::<2, F32>(args, s, d, probs, out),
            3 => attention_rows_k::<3, F32>(args, s, d, probs, out),
            _ => attention_rows_k::<4, F32>(args, s, d, probs, out),
        }
    }
}

/// The 16-bit mode of [`attention_rows`] (`--dtype bf16` with `BF16`, else f16; the twin of
/// `portable::attention_row_rounded` and of `avx512::attention_rows_rounded`): the inputs are
/// 16-bit values held as f32, and each step is rounded where transformers' eager attention
/// rounds in that dtype: the summed scores, their scaling, the mask added, the softmax's
/// probabilities and the weighted sum of the values.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows_rounded<const BF16: bool>(
    rows: usize,
    queries: &[f32],
    keys_t: &[f32],
    values: &[f32],
    masks: Option<&[f32]>,
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
) {
    assert!(available());
    let (s, d) = super::portable::attention_sizes(rows, queries, keys_t, values, masks, probs, out);
    let args = (queries, keys_t, values, masks, scale);
    // SAFETY: as in `attention_rows`.
    unsafe {
        match (rows, BF16) {
            (1, true) => attention_rows_k::<1, BFLOAT16>(args, s, d, probs, out),
            (2, true) => attention_rows_k::<2, BFLOAT16>(args, s, d, probs, out),
            (3, true) => attention_rows_k::<3, BFLOAT16>(args, s, d, probs, out),
            (_, true) => attention_rows_k::<4, BFLOAT16>(args, s, d, probs, out),
            (1, false) => attention_rows_k::<1, FLOAT16>(args, s, d, probs, out),
            (2, false) => attention_rows_k::<2, FLOAT16>(args, s, d, probs, out),
            (3, false) => attention_rows_k::<3, FLOAT16>(args, s, d, probs, out),
            (_, false) => attention_rows_k::<4, FLOAT16>(args, s, d, probs, out),
        }
    }
}

/// What [`attention_rows_k`] rounds its steps to: nothing (f32), bfloat16 or float16.
const F32: u8 = 0;
const BFLOAT16: u8 = 1;
const FLOAT16: u8 = 2;

/// 8 values rounded as `H` says (see [`F32`]): to bfloat16 (to nearest, ties to even, NaN kept)
/// or float16, as f32; `half_precision::round_as` for a register.
#[inline(always)]
unsafe fn round_as<const H: u8>(v: __m256) -> __m256 {
    match H {
        F32 => v,
        BFLOAT16 => {
            let x = _mm256_castps_si256(v);
            let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(1));
            let rounded = _mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
            let quiet = _mm256_or_si256(x, _mm256_set1_epi32(0x0040_0000));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            let rounded = _mm256_blendv_epi8(rounded, quiet, nan);
            let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
            _mm256_castsi256_ps(_mm256_and_si256(rounded, high))
        }
        _ => _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)),
    }
}

/// The two registers of a step from `at` on in a row of `n` values: how many lanes of each are
/// inside the row (0..=8), and their masks.
#[derive(Clone, Copy)]
struct Step {
    live: [usize; 2],
    masks: [__m256i; 2],
}

impl Step {
    #[inline(always)]
    unsafe fn new(n: usize, at: usize) -> Self {
        let live = [n.saturating_sub(at).min(8), n.saturating_sub(at + 8).min(8)];
        Step { live, masks: [first_lanes(live[0]), first_lanes(live[1])] }
    }

    fn full(&self) -> bool {
        self.live == [8, 8]
    }

    /// The step's two registers from `row` on: whole loads when the step is full, else each
    /// loaded where its mask says (zeros elsewhere; no memory touched in a clear lane).
    #[inline(always)]
    unsafe fn load<const FULL: bool>(&self, row: *const f32) -> [__m256; 2] {
        if FULL {
            return [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
        }
        std::array::from_fn(|c| match self.live[c] {
            0 => _mm256_setzero_ps(),
            _ => _mm256_maskload_ps(row.wrapping_add(8 * c), self.masks[c]),
        })
    }

    /// Writes register c's live lanes to `row + 8c` on.
    #[inline(always)]
    unsafe fn store(&self, c: usize, row: *mut f32, v: __m256) {
        match self.live[c] {
            0 => {}
            8 => _mm256_storeu_ps(row.add(8 * c), v),
            _ => _mm256_maskstore_ps(row.add(8 * c), self.masks[c], v),
        }
    }
}

type AttentionArgs<'a> = (&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>, f32);

/// The scores of R queries against the keys j0..j0 + 16 of the step, summed over d in order.
///
/// # Safety
/// The step's live keys lie inside keys_t's rows of s values; AVX2 and FMA.
#[inline(always)]
unsafe fn scores<const R: usize, const FULL: bool>(
    queries: &[f32],
    keys_t: &[f32],
    (s, d, j0): (usize, usize, usize),
    step: &Step,
) -> [[__m256; 2]; R] {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for e in 0..d {
        let k = step.load::<FULL>(keys_t.as_ptr().add(e * s + j0));
        for (r, acc) in acc.iter_mut().enumerate() {
            let q = _mm256_set1_ps(*queries.get_unchecked(r * d + e));
            acc[0] = _mm256_fmadd_ps(q, k[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(q, k[1], acc[1]);
        }
    }
    acc
}

/// The outputs of R queries, values e0..e0 + 16, over the keys some query sees.
///
/// # Safety
/// The step's live values lie inside values' rows of d values; AVX2 and FMA.
#[inline(always)]
unsafe fn outputs<const R: usize, const FULL: bool>(
    probs: &[f32],
    values: &[f32],
    (s, d, e0): (usize, usize, usize),
    step: &Step,
) -> [[__m256; 2]; R] {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for j in 0..s {
        let p: [f32; R] = std::array::from_fn(|r| *probs.get_unchecked(r * s + j));
        if p.iter().all(|&p| p == 0.0) {
            continue;
        }
        let v = step.load::<FULL>(values.as_ptr().add(j * d + e0));
        for (acc, &p) in acc.iter_mut().zip(&p) {
            let p = _mm256_set1_ps(p);
            acc[0] = _mm256_fmadd_ps(p, v[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(p, v[1], acc[1]);
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attention_rows_k<const R: usize, const H: u8>(
    (queries, keys_t, values, masks, scale): AttentionArgs,
    s: usize,
    d: usize,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let hidden_key = _mm256_set1_ps(f32::NEG_INFINITY);
    // Scores, 16 keys at a time.
    for j0 in (0..s).step_by(STEP) {
        let mut step = Step::new(s, j0);
        // Keys the masks hide from every query (the future, under a causal mask) are not
        // multiplied: their scores are -inf, their probabilities 0.
        if let Some(m) = masks {
            for c in 0..2 {
                let at = j0 + 8 * c;
                let lanes = (1i32 << step.live[c]) - 1; // bits of the live lanes
                let hidden_from_all = (0..R).all(|r| {
                    let v =
                        _mm256_maskload_ps(m.as_ptr().add(r * s).wrapping_add(at), step.masks[c]);
                    let hidden = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, hidden_key));
                    hidden & lanes == lanes
                });
                if step.live[c] != 0 && hidden_from_all {
                    for r in 0..R {
                        step.store(c, probs.as_mut_ptr().add(r * s + j0), hidden_key);
                    }
                    step.live[c] = 0;
                    step.masks[c] = _mm256_setzero_si256();
                }
            }
        }
        if step.live == [0, 0] {
            continue;
        }
        let acc = if step.full() {
            scores::<R, true>(queries, keys_t, (s, d, j0), &step)
        } else {
            scores::<R, false>(queries, keys_t, (s, d, j0), &step)
        };
        for (r, acc) in acc.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate() {
                if step.live[c] == 0 {
                    continue;
                }
                let a = round_as::<H>(a);
                let mut score = round_as::<H>(_mm256_mul_ps(a, _mm256_set1_ps(scale)));
                if let Some(m) = masks {
                    let m = _mm256_maskload_ps(m.as_ptr().add(r * s + j0 + 8 * c), step.masks[c]);
                    score = round_as::<H>(_mm256_add_ps(score, m));
                }
                step.store(c, probs.as_mut_ptr().add(r * s + j0), score);
            }
        }
    }
    for r in 0..R {
        softmax_k(&mut probs[r * s..(r + 1) * s]);
        if H != F32 {
            let row = probs.as_mut_ptr().add(r * s);
            for at in (0..s).step_by(8) {
                let mask = first_lanes(s - at);
                let p = _mm256_maskload_ps(row.add(at), mask);
                _mm256_maskstore_ps(row.add(at), mask, round_as::<H>(p));
            }
        }
    }
    // Outputs, 16 values at a time, over the keys some query sees.
    for e0 in (0..d).step_by(STEP) {
        let step = Step::new(d, e0);
        let acc = if step.full() {
            outputs::<R, true>(probs, values, (s, d, e0), &step)
        } else {
            outputs::<R, false>(probs, values, (s, d, e0), &step)
        };
        for (r, acc) in acc.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate() {
                step.store(c, out.as_mut_ptr().add(r * d + e0), round_as::<H>(a));
            }
        }
    }
}

/// row = softmax(row): e^(v - max) / sum, the sum added in f32 (as PyTorch does); -inf entries
/// give 0 (the twin of `portable::softmax`).
pub fn softmax(row: &mut [f32]) {
    assert!(available());
    // SAFETY: the CPU has AVX2 and FMA (checked above); lanes past the end are masked off.
    unsafe { softmax_k(row) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_k(row: &mut [f32]) {
    let n = row.len();
    let ptr = row.as_mut_ptr();
    let minus_inf = _mm256_set1_ps(f32::NEG_INFINITY);
    // Lanes past the end read as -inf for the max, and give e = 0 for the sum.
    let mut max = minus_inf;
    for at in (0..n).step_by(8) {
        let mask = first_lanes(n - at);
        let v = _mm256_maskload_ps(ptr.add(at), mask);
        let v = _mm256_blendv_ps(minus_inf, v, _mm256_castsi256_ps(mask));
        max = _mm256_max_ps(max, v);
    }
    let max = _mm256_set1_ps(max8(max));
    let mut sum = _mm256_setzero_ps();
    for at in (0..n).step_by(8) {
        let mask = first_lanes(n - at);
        let v = _mm256_maskload_ps(ptr.add(at), mask);
        let e = _mm256_and_ps(exp8(_mm256_sub_ps(v, max)), _mm256_castsi256_ps(mask));
        sum = _mm256_add_ps(sum, e);
        _mm256_maskstore_ps(ptr.add(at), mask, e);
    }
    let inverse = _mm256_set1_ps(1.0 / sum8(sum));
    for at in (0..n).step_by(8) {
        let mask = first_lanes(n - at);
        let e = _mm256_maskload_ps(ptr.add(at), mask);
        _mm256_maskstore_ps(ptr.add(at), mask, _mm256_mul_ps(e, inverse));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::avx512::column_windows;
    use crate::kernels::blocks::quantized;
    use crate::kernels::portable;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Tensor};
    use std::mem::MaybeUninit;

    const KINDS: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0];

    /// Whether the tests can run here (else they say so and pass: the CPU runs no AVX2 code).
    fn here() -> bool {
        let yes = available();
        if !yes {
            eprintln!("no AVX2/FMA/F16C on this CPU: the avx2 kernels are not tested here");
        }
        yes
    }

    /// Inputs with values of both signs and several sizes, no two rows alike.
    fn inputs(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.1).collect()
    }

    #[test]
    fn dot_rows_equals_its_portable_twin() {
        if !here() {
            return;
        }
        // 1 block, 19 blocks (scales gathered 8 at a time, a partial group), 24 blocks.
        for kind in KINDS {
            for (rows, cols) in [(37, 608), (5, 32), (17, 768)] {
                let (_, w) = quantized(kind, rows, cols);
                for m in 1..=8 {
                    let x = inputs(m * cols);
                    let lane_sums = portable::lane_sums(&x, m, cols);
                    let sums = block_sums(&x, cols);
                    let (mut ours, mut twin) = (vec![0f32; rows * m], vec![0f32; rows * m]);
                    dot_rows(&w, &x, &sums, m, 0, &mut ours);
                    portable::dot_rows(&w, &x, &lane_sums, m, 0, &mut twin);
                    for (a, b) in ours.iter().zip(&twin) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{kind:?} m={m}: {a} vs {b}"
                        );
                    }
                    // A slice of rows from the middle (the tasks of a parallel product).
                    let mut part = vec![0f32; 3 * m];
                    dot_rows(&w, &x, &sums, m, 2, &mut part);
                    assert_eq!(part, ours[2 * m..5 * m], "{kind:?} m={m}, rows 2..5");
                }
            }
        }
    }

    #[test]
    fn dequantized_rows_are_bit_identical_to_the_scalar_code() {
        if !here() {
            return;
        }
        for kind in KINDS {
            let (rows, cols) = (7, 608);
            let (_, w) = quantized(kind, rows, cols);
            let scalar: Vec<f32> =
                w.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let mut scales = RowScales::new(cols / BLOCK);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                // SAFETY: here() said the CPU has the kernels' features.
                unsafe {
                    match kind_id(w.kind) {
                        Q4_0 => dequantize_row::<Q4_0>(&w, r, &mut scales, &mut row),
                        Q4_1 => dequantize_row::<Q4_1>(&w, r, &mut scales, &mut row),
                        _ => dequantize_row::<Q8_0>(&w, r, &mut scales, &mut row),
                    }
                }
                let expected = &scalar[r * cols..(r + 1) * cols];
                let same = row.iter().zip(expected).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kind:?} row {r}");
            }
        }
    }

    #[test]
    fn panel_rows_equals_dequantize_then_matmul_and_writes_every_value() {
        if !here() {
            return;
        }
        for kind in KINDS {
            // Rows that do not fill a panel; groups of inputs full, with 8 or fewer, or more.
            for (rows, cols) in [(37, 96), (5, 608), (13, 32)] {
                let (_, w) = quantized(kind, rows, cols);
                let dense = w.dequantize(&Device::Cpu).unwrap();
                for m in [1, 8, 9, 16, 17, 25, 33] {
                    let x = inputs(m * cols);
                    let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
                    let twin: Vec<f32> = xt
                        .matmul(&dense.t().unwrap())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let packed = Packed::new(&x, m, cols);
                    // NaN everywhere first: a value the kernel does not write stays NaN.
                    let mut out = vec![MaybeUninit::new(f32::NAN); m * rows];
                    for mut window in column_windows(&mut out, m, rows, 12) {
                        panel_rows(&w, &packed, &mut window, None);
                    }
                    for (i, (a, b)) in out.iter().zip(&twin).enumerate() {
                        // SAFETY: initialised above (NaN, then the kernel's values).
                        let a = unsafe { a.assume_init() };
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{kind:?} {rows}x{cols}, {m} inputs, value {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_and_keeps_the_edges() {
        if !here() {
            return;
        }
        let exp = |x: [f32; 8]| {
            let mut out = [0f32; 8];
            // SAFETY: here() said the CPU has AVX2 and FMA.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr()))) };
            out
        };
        let mut worst = 0f64;
        let xs: Vec<f32> = (0..200_000).map(|i| -87.0 + i as f32 * (175.5 / 200_000.0)).collect();
        for chunk in xs.chunks_exact(8) {
            let got = exp(chunk.try_into().unwrap());
            for (&x, &y) in chunk.iter().zip(&got) {
                let exact = (x as f64).exp();
                let ulp = (exact as f32).next_up() as f64 - exact as f32 as f64;
                worst = worst.max((y as f64 - exact).abs() / ulp);
            }
        }
        assert!(worst <= 2.0, "{worst} ulp");
        let edges = [-1000.0, -87.33, 0.0, 88.72, 1000.0, f32::NEG_INFINITY, 1e-8, -1e-8];
        let got = exp(edges);
        for (i, (&x, &y)) in edges.iter().zip(&got).enumerate() {
            let e = if x < -87.33 { 0.0 } else { (x as f64).exp() };
            assert!(y as f64 == e || (y as f64 - e).abs() <= 1e-6 * e, "{i}: e^{x} = {y}, not {e}");
        }
        assert!(got[3].is_finite() && got[4] == f32::INFINITY, "{got:?}");
        assert!(exp([f32::NAN; 8]).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn silu_mul_and_softmax_equal_their_portable_twins() {
        if !here() {
            return;
        }
        for n in [1, 7, 8, 9, 37, 64] {
            let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 18.0) * 0.7).collect();
            let up: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.1).collect();
            let (mut ours, mut twin) = (vec![0f32; n], vec![0f32; n]);
            silu_mul(&gate, &up, &mut ours);
            portable::silu_mul(&gate, &up, &mut twin);
            for (i, (a, b)) in ours.iter().zip(&twin).enumerate() {
                assert!((a - b).abs() <= 4e-7 * b.abs().max(1e-3), "silu n={n} {i}: {a} vs {b}");
            }
            let mut row = gate.clone();
            if n > 1 {
                row[n / 2] = f32::NEG_INFINITY; // a masked position (not the only one)
            }
            let mut twin = row.clone();
            softmax(&mut row);
            portable::softmax(&mut twin);
            assert!(n == 1 || row[n / 2] == 0.0, "a masked position has a probability");
            for (i, (a, b)) in row.iter().zip(&twin).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.max(1e-6), "softmax n={n} {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn rms_norm_row_is_bit_identical_to_its_portable_twin() {
        if !here() {
            return;
        }
        for c in [1, 7, 8, 15, 16, 17, 37, 576] {
            let x = inputs(c);
            let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.01).collect();
            let (mut ours, mut twin) = (vec![0f32; c], vec![0f32; c]);
            rms_norm_row(&x, &w, 1e-5, &mut ours);
            portable::rms_norm_row(&x, &w, 1e-5, &mut twin);
            let same = ours.iter().zip(&twin).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "c={c}: {ours:?} vs {twin:?}");
        }
    }

    #[test]
    fn rounded_attention_rows_round_to_their_dtype_and_equal_their_portable_twin() {
        if here() {
            portable::check_rounded_attention_rows(
                attention_rows_rounded::<true>,
                attention_rows_rounded::<false>,
            );
        }
    }

    #[test]
    fn attention_rows_equal_their_portable_twin() {
        if !here() {
            return;
        }
        let scale = 0.125;
        // Head sizes with and without a partial step; key counts below, at and past a step.
        for d in [64, 37, 8] {
            for s in [1, 7, 16, 23, 70] {
                for rows in 1..=ATTENTION_ROWS {
                    let queries = inputs(rows * d);
                    let keys_t: Vec<f32> = inputs(d * s + 5)[5..].to_vec();
                    let values: Vec<f32> = inputs(s * d + 11)[11..].to_vec();
                    // Causal: query r sees keys 0..=s - rows + r (at least key 0); None: every key.
                    let sees =
                        |r: usize, j: usize| j as i64 <= (s as i64 - rows as i64 + r as i64).max(0);
                    let causal: Vec<f32> = (0..rows * s)
                        .map(|i| if sees(i / s, i % s) { 0.0 } else { f32::NEG_INFINITY })
                        .collect();
                    for masks in [None, Some(causal.as_slice())] {
                        let mut probs = vec![0f32; rows * s];
                        let mut out = vec![0f32; rows * d];
                        attention_rows(
                            rows, &queries, &keys_t, &values, masks, scale, &mut probs, &mut out,
                        );
                        for r in 0..rows {
                            let mut p = vec![0f32; s];
                            let mut o = vec![0f32; d];
                            let mask = masks.map(|m| &m[r * s..(r + 1) * s]);
                            let q = &queries[r * d..(r + 1) * d];
                            portable::attention_row(
                                q, &keys_t, &values, mask, scale, &mut p, &mut o,
                            );
                            let what =
                                format!("d={d} s={s} rows={rows} r={r} mask={}", masks.is_some());
                            for (a, b) in probs[r * s..(r + 1) * s].iter().zip(&p) {
                                assert!((a - b).abs() <= 1e-6, "{what} probs: {a} vs {b}");
                            }
                            for (a, b) in out[r * d..(r + 1) * d].iter().zip(&o) {
                                assert!(
                                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                                    "{what} out: {a} vs {b}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
