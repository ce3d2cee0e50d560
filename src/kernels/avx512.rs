//! AVX-512 kernels for products with GGUF block matrices, used when the CPU has AVX-512F/BW.
//!
//! Two shapes of work, both the dot products of the *dequantized* weights with f32 inputs (the
//! exact path; only the order of the additions differs from `portable::dot_rows`):
//!
//! * [`dot_rows`], for a few input rows (decoding, short prompts): each weight block is turned
//!   into 32 floats in two registers once and multiplied with every input row, as
//!   `d * (q . x) + m * sum(x)`. Memory traffic is the quantized bytes, about 0.6 bytes a weight.
//! * [`panel_rows`], for many input rows (long prompts): a panel of [`NR`] = 6 weight rows is
//!   dequantized bit for bit into a small buffer, then multiplied with 32 input rows at a time by
//!   a register-blocked kernel: for each k, each weight (broadcast) times the 32 inputs' values
//!   (two registers, from the inputs transposed once per product into [`Packed`]) is added to
//!   6 x 32 results held in 12 registers: one fused multiply-add per weight and input, and the
//!   dequantization is paid once per panel, not once per input row.

use super::blocks::{BlockMatrix, BlockType, BLOCK};
use super::half_precision::Half;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Weight rows per panel of [`panel_rows`].
pub const NR: usize = 6;
/// Input rows per step of [`panel_rows`]: two 16-lane registers (NR x 2 = 12 accumulators).
pub const MR: usize = 32;

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

// The block types as const generic parameters, so that each kernel is compiled once per type.
pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q8_0: u8 = 2;

pub(super) fn kind_id(kind: BlockType) -> u8 {
    match kind {
        BlockType::Q4_0 => Q4_0,
        BlockType::Q4_1 => Q4_1,
        BlockType::Q8_0 => Q8_0,
    }
}

/// Converts the f16 at the start of each of the `blocks` blocks of `row` into `d` and, with
/// `m`, the f16 after it into `m`: 16 blocks at a time with one gather of both (converting one
/// f16 per block on its own costs more than the block's arithmetic).
#[inline(always)]
unsafe fn block_halves(
    row: *const u8,
    blocks: usize,
    bb: usize,
    d: &mut [f32],
    m: Option<&mut [f32]>,
) {
    assert!(d.len() >= blocks.next_multiple_of(16));
    assert!(m.as_ref().is_none_or(|m| m.len() >= blocks.next_multiple_of(16)));
    let m = m.map(|m| m.as_mut_ptr());
    let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    let stride = _mm512_set1_epi32(bb as i32);
    for g in (0..blocks).step_by(16) {
        // Lanes past the last block read nothing (masked off) and give 0.
        let mask: __mmask16 = if blocks - g >= 16 { 0xFFFF } else { (1u16 << (blocks - g)) - 1 };
        let offsets = _mm512_mullo_epi32(lanes, stride);
        let base = row.add(g * bb);
        // 32-bit loads: d is the low half of each (little-endian), Q4_1's m the high half. A
        // block is at least 18 bytes long, so a 4-byte load stays inside its block.
        let words = _mm512_mask_i32gather_epi32::<1>(
            _mm512_setzero_si512(),
            mask,
            offsets,
            base as *const i32,
        );
        let low = _mm512_cvtepi32_epi16(words);
        _mm512_storeu_ps(d.as_mut_ptr().add(g), _mm512_cvtph_ps(low));
        if let Some(m) = m {
            let high = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(words));
            _mm512_storeu_ps(m.add(g), _mm512_cvtph_ps(high));
        }
    }
}

/// A block's 32 integers as floats in two registers (values 0..16 and 16..32): the weights are
/// `d * q + m` (m = 0 for Q4_0 and Q8_0).
#[inline(always)]
pub(super) unsafe fn integers<const K: u8>(block: *const u8) -> (__m512, __m512) {
    if K == Q8_0 {
        let lo = _mm_loadu_si128(block.add(2) as *const __m128i);
        let hi = _mm_loadu_si128(block.add(18) as *const __m128i);
        return (
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
        );
    }
    // Q4_x: byte j holds value j in its low nibble and value j + 16 in its high nibble.
    let qs = _mm_loadu_si128(block.add(if K == Q4_1 { 4 } else { 2 }) as *const __m128i);
    let nibble = _mm_set1_epi8(0x0F);
    let mut lo = _mm512_cvtepu8_epi32(_mm_and_si128(qs, nibble));
    let mut hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16::<4>(qs), nibble));
    if K == Q4_0 {
        let eight = _mm512_set1_epi32(8);
        lo = _mm512_sub_epi32(lo, eight);
        hi = _mm512_sub_epi32(hi, eight);
    }
    (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi))
}

/// A 4-bit block's 32 nibbles as 32-bit integers in two registers (values 0..16 and 16..32),
/// as they are (0..=15): indexes into the block's 16 weights (see [`nibble_values`]).
#[inline(always)]
unsafe fn nibbles<const K: u8>(block: *const u8) -> (__m512i, __m512i) {
    let qs = _mm_loadu_si128(block.add(if K == Q4_1 { 4 } else { 2 }) as *const __m128i);
    let nibble = _mm_set1_epi8(0x0F);
    (
        _mm512_cvtepu8_epi32(_mm_and_si128(qs, nibble)),
        _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16::<4>(qs), nibble)),
    )
}

/// The integer each nibble value 0..16 stands for, as floats: itself for Q4_1, itself minus 8
/// for Q4_0 (what [`integers`] gives for that nibble).
#[inline(always)]
unsafe fn nibble_values<const K: u8>() -> __m512 {
    let v = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let off = _mm512_set1_epi32(if K == Q4_0 { 8 } else { 0 });
    _mm512_cvtepi32_ps(_mm512_sub_epi32(v, off))
}

/// Scratch space for one row's scales and offsets as f32.
pub(super) struct RowScales {
    pub d: Vec<f32>,
    pub m: Vec<f32>,
}

impl RowScales {
    pub fn new(blocks: usize) -> Self {
        let len = blocks.next_multiple_of(16);
        RowScales { d: vec![0.0; len], m: vec![0.0; len] }
    }

    /// Reads row `row`'s d (and, for Q4_1, m) of every block.
    #[inline(always)]
    pub unsafe fn read<const K: u8>(&mut self, row: *const u8, blocks: usize, bb: usize) {
        // A block starts with its scale d (f16), then (Q4_1) its offset m (f16).
        let m = (K == Q4_1).then_some(self.m.as_mut_slice());
        block_halves(row, blocks, bb, &mut self.d, m);
    }
}

/// Dequantizes row `row` of `w` into `out` (cols values) exactly as the scalar code does:
/// a multiply, then an add (never fused), so the values are bit-identical.
#[inline(always)]
pub(super) unsafe fn dequantize_row<const K: u8>(
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
        let (lo, hi) = integers::<K>(src.add(b * bb));
        let d = _mm512_set1_ps(scales.d[b]);
        let (lo, hi) = (_mm512_mul_ps(lo, d), _mm512_mul_ps(hi, d));
        let (lo, hi) = if K == Q4_1 {
            let m = _mm512_set1_ps(scales.m[b]);
            (_mm512_add_ps(lo, m), _mm512_add_ps(hi, m))
        } else {
            (lo, hi)
        };
        _mm512_storeu_ps(dst.add(b * BLOCK), lo);
        _mm512_storeu_ps(dst.add(b * BLOCK + 16), hi);
    }
}

/// Per input row, the sum of x over each block, which Q4_1's offset m multiplies:
/// `sums[i * stride + b]` = sum of x[i][32b..32b + 32], zero-padded to stride = blocks rounded up
/// to 16.
pub fn block_sums(x: &[f32], k: usize) -> Vec<f32> {
    let blocks = k / BLOCK;
    let stride = blocks.next_multiple_of(16);
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
pub fn dot_rows(w: &BlockMatrix, x: &[f32], sums: &[f32], m: usize, first: usize, out: &mut [f32]) {
    assert!(available(), "dot_rows needs AVX-512");
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

#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
unsafe fn dot_rows_k<const K: u8, const M: usize>(
    w: &BlockMatrix,
    x: &[f32],
    sums: &[f32],
    first: usize,
    out: &mut [f32],
) {
    let k = w.cols;
    let blocks = k / BLOCK;
    let stride = blocks.next_multiple_of(16);
    let bb = w.kind.block_bytes();
    let rb = blocks * bb;
    let data = w.bytes.as_slice();
    let rows = out.len() / M;
    // Every pointer below stays inside these bounds.
    assert!(x.len() >= M * k && sums.len() >= M * stride && (first + rows) * rb <= data.len());
    let (xp, sp) = (x.as_ptr(), sums.as_ptr());
    let mut scales = RowScales::new(blocks);
    for (local, outs) in out.chunks_exact_mut(M).enumerate() {
        let row = data.as_ptr().add((first + local) * rb);
        super::blocks::prefetch(data, (first + local + super::blocks::PREFETCH_ROWS) * rb, rb);
        scales.read::<K>(row, blocks, bb);
        // sum over blocks of d * (q . x): 16 lanes per input row
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..blocks {
            let (lo, hi) = integers::<K>(row.add(b * bb));
            let d = _mm512_set1_ps(scales.d[b]);
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = xp.add(i * k + b * BLOCK);
                let p = _mm512_mul_ps(lo, _mm512_loadu_ps(xb));
                let p = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb.add(16)), p);
                *a = _mm512_fmadd_ps(d, p, *a);
            }
        }
        // Q4_1: plus sum over blocks of m * sum(x), 16 blocks at a time
        if K == Q4_1 {
            for (i, a) in acc.iter_mut().enumerate() {
                for g in (0..blocks).step_by(16) {
                    let m = _mm512_loadu_ps(scales.m.as_ptr().add(g));
                    *a = _mm512_fmadd_ps(m, _mm512_loadu_ps(sp.add(i * stride + g)), *a);
                }
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = _mm512_reduce_add_ps(*a);
        }
    }
}

/// 16 values rounded to bfloat16 (`BF16`; to nearest, ties to even, NaN kept) or float16, as
/// f32: `half_precision::round_as` for a register.
#[inline(always)]
pub(super) unsafe fn round16<const BF16: bool>(v: __m512) -> __m512 {
    if BF16 {
        let x = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let rounded = _mm512_mask_or_epi32(rounded, nan, x, _mm512_set1_epi32(0x0040_0000));
        let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        _mm512_castsi512_ps(_mm512_and_si512(rounded, high))
    } else {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_NO_EXC>(v))
    }
}

/// The 16-bit mode of [`dot_rows`] (`--dtype bf16|f16`, the twin of
/// `portable::dot_rows_rounded`): each block dequantized bit for bit, its 32 weights rounded
/// to bfloat16 (`bf16`) or float16, then multiplied with every input row (16-bit values, as
/// f32) and summed in f32. Same layout as [`dot_rows`]; the output is f32, for the caller to
/// round once.
pub fn dot_rows_rounded(
    w: &BlockMatrix,
    x: &[f32],
    m: usize,
    first: usize,
    out: &mut [f32],
    bf16: bool,
) {
    assert!(available(), "dot_rows_rounded needs AVX-512");
    macro_rules! run {
        ($k:expr, $($m:literal)*) => {
            match (m, bf16) {
                // SAFETY: the CPU has the features the kernel is compiled for (checked above).
                $(($m, true) => unsafe { dot_rows_rounded_k::<$k, $m, true>(w, x, first, out) },
                ($m, false) => unsafe { dot_rows_rounded_k::<$k, $m, false>(w, x, first, out) },)*
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

#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
unsafe fn dot_rows_rounded_k<const K: u8, const M: usize, const BF16: bool>(
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
        let mut acc = [_mm512_setzero_ps(); M];
        for b in 0..blocks {
            let d = _mm512_set1_ps(scales.d[b]);
            let (lo, hi) = if K == Q8_0 {
                // d * q, rounded
                let (lo, hi) = integers::<K>(row.add(b * bb));
                (round16::<BF16>(_mm512_mul_ps(lo, d)), round16::<BF16>(_mm512_mul_ps(hi, d)))
            } else {
                // A 4-bit block's weights take 16 values: d * q (+ m) for q = 0..16 (minus 8
                // for Q4_0), a multiply then an add as in dequantize_row, rounded once in one
                // register, and each weight looked up by its nibble: the same bits as rounding
                // each of the 32 weights, for half the arithmetic.
                let mut table = _mm512_mul_ps(nibble_values::<K>(), d);
                if K == Q4_1 {
                    table = _mm512_add_ps(table, _mm512_set1_ps(scales.m[b]));
                }
                let table = round16::<BF16>(table);
                let (lo, hi) = nibbles::<K>(row.add(b * bb));
                (_mm512_permutexvar_ps(lo, table), _mm512_permutexvar_ps(hi, table))
            };
            // The block's products summed apart from the running sum, which then takes one add
            // per block (as in `dot_rows`), instead of two fused multiply-adds in a row on it.
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = xp.add(i * k + b * BLOCK);
                let p = _mm512_mul_ps(lo, _mm512_loadu_ps(xb));
                *a = _mm512_add_ps(*a, _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb.add(16)), p));
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = _mm512_reduce_add_ps(*a);
        }
    }
}

/// Rounds every value of `row` (a multiple of 16 long) to bfloat16 (`BF16`) or float16.
#[inline(always)]
unsafe fn round_row<const BF16: bool>(row: &mut [f32]) {
    for chunk in row.chunks_exact_mut(16) {
        let v = round16::<BF16>(_mm512_loadu_ps(chunk.as_ptr()));
        _mm512_storeu_ps(chunk.as_mut_ptr(), v);
    }
}

/// 16 floats on a 64-byte boundary: one register, loaded without splitting a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// The inputs transposed for [`panel_rows`], in groups of MR rows, 64-byte aligned: value
/// `(g * k + kk) * MR + i` of the buffer is `x[g * MR + i][kk]` (zeros past row m).
pub struct Packed {
    lines: Vec<Line>,
    m: usize,
    k: usize,
}

impl Packed {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        let groups = m.div_ceil(MR);
        let mut lines = vec![Line([0.0; 16]); groups * k * MR / 16];
        super::team::for_each_chunk(&mut lines, k * MR / 16, |g, group| {
            let rows = MR.min(m - g * MR);
            let x = &x[g * MR * k..(g * MR + rows) * k];
            // kk outside, rows inside: reads walk 32 rows in step (their cache lines stay in
            // L1 for 16 values of kk) and writes are sequential.
            for kk in 0..k {
                for i in 0..rows {
                    group[(kk * MR + i) / 16].0[i % 16] = x[i * k + kk];
                }
            }
        });
        Packed { lines, m, k }
    }

    fn as_ptr(&self) -> *const f32 {
        self.lines.as_ptr() as *const f32
    }
}

/// A window of columns `first..first + len` of a row-major (m, n) output matrix, which one task
/// fills while other tasks fill other columns. Windows made by [`column_windows`] never overlap.
pub struct Columns<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    // Private: a window's columns are fixed by column_windows, so no two windows overlap.
    first: usize,
    len: usize,
    _out: std::marker::PhantomData<&'a mut [MaybeUninit<f32>]>,
}

// SAFETY: a window only writes its own columns, which no other window covers.
unsafe impl Send for Columns<'_> {}

impl Columns<'_> {
    /// m: the output's rows (one per input).
    pub(super) fn rows(&self) -> usize {
        self.m
    }

    /// n: the output's columns (one per weight row), of which this window covers some.
    pub(super) fn matrix_columns(&self) -> usize {
        self.n
    }

    /// The window's columns: (first, width).
    pub(super) fn window(&self) -> (usize, usize) {
        (self.first, self.len)
    }

    /// out[i][first + c..first + c + len] = the first len (at most 32) of the values in a, b.
    #[inline(always)]
    pub(super) unsafe fn store_run32(
        &mut self,
        i: usize,
        c: usize,
        a: __m512,
        b: __m512,
        len: usize,
    ) {
        assert!(i < self.m && len <= 32 && c + len <= self.len);
        let mask = |n: usize| if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
        // SAFETY: the lanes written are in bounds of the (m, n) matrix and in this window's
        // columns (checked above); masked-off lanes touch no memory.
        let dst = self.ptr.add(i * self.n + self.first + c);
        _mm512_mask_storeu_ps(dst, mask(len), a);
        _mm512_mask_storeu_ps(dst.wrapping_add(16), mask(len.saturating_sub(16)), b);
    }

    /// out[i][first + c + r] = value(r) for r < len (at most N): one store per value, straight
    /// from where `value` reads it. Gathering a run into an array first and copying that costs
    /// a failed store-to-load forward per row (the copy's wide loads span several of the
    /// array's narrow stores).
    #[inline(always)]
    pub(super) fn set_each<const N: usize>(
        &mut self,
        i: usize,
        c: usize,
        len: usize,
        value: impl Fn(usize) -> f32,
    ) {
        assert!(i < self.m && len <= N && c + len <= self.len);
        // SAFETY: in bounds of the (m, n) matrix (checked above and in column_windows), and in
        // this window's columns, which no other window writes.
        unsafe {
            let dst = self.ptr.add(i * self.n + self.first + c);
            for r in 0..N {
                if r < len {
                    *dst.add(r) = value(r);
                }
            }
        }
    }
}

/// Splits a row-major (m, n) matrix into windows of `width` columns (the last one narrower).
/// The matrix may be uninitialized memory: the windows only write to it.
pub fn column_windows(
    out: &mut [MaybeUninit<f32>],
    m: usize,
    n: usize,
    width: usize,
) -> Vec<Columns<'_>> {
    assert!(width > 0);
    column_windows_sized(out, m, n, &vec![width; n.div_ceil(width)])
}

/// Splits a row-major (m, n) matrix into windows of the given widths, left to right (the last
/// one cut at column n; the widths must reach it). The matrix may be uninitialized memory: the
/// windows only write to it.
pub fn column_windows_sized<'a>(
    out: &'a mut [MaybeUninit<f32>],
    m: usize,
    n: usize,
    widths: &[usize],
) -> Vec<Columns<'a>> {
    assert!(out.len() == m * n && widths.iter().sum::<usize>() >= n);
    let ptr = out.as_mut_ptr() as *mut f32;
    let mut first = 0;
    let mut windows = Vec::with_capacity(widths.len());
    for &width in widths {
        if first >= n {
            break;
        }
        assert!(width > 0, "a window of no columns");
        let len = width.min(n - first);
        windows.push(Columns { ptr, m, n, first, len, _out: std::marker::PhantomData });
        first += len;
    }
    windows
}

/// `out[i][j] = W[j] . x[i]` for the columns j of the window and every input row i < m
/// (`packed` holds x). With `round` (`--dtype bf16|f16`), each dequantized weight is rounded to
/// that dtype first (the output stays f32, for the caller to round once).
pub fn panel_rows(w: &BlockMatrix, packed: &Packed, out: &mut Columns, round: Option<Half>) {
    assert!(available(), "panel_rows needs AVX-512");
    macro_rules! run {
        ($k:expr) => {
            match round {
                None => panel_rows_k::<$k, NO_ROUNDING>(w, packed, out),
                Some(Half::Bf16) => panel_rows_k::<$k, TO_BF16>(w, packed, out),
                Some(Half::F16) => panel_rows_k::<$k, TO_F16>(w, packed, out),
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

// What `panel_rows_k` rounds the dequantized weights to.
const NO_ROUNDING: u8 = 0;
const TO_BF16: u8 = 1;
const TO_F16: u8 = 2;

#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
unsafe fn panel_rows_k<const K: u8, const R: u8>(
    w: &BlockMatrix,
    packed: &Packed,
    out: &mut Columns,
) {
    let k = w.cols;
    let groups = out.m.div_ceil(MR);
    assert!(packed.k == k && packed.m == out.m && packed.lines.len() * 16 == groups * k * MR);
    assert!(out.first + out.len <= w.rows && out.n == w.rows);
    let data = w.bytes.as_slice();
    let rb = k / BLOCK * w.kind.block_bytes();
    let mut panel = vec![0f32; NR * k]; // NR dequantized rows, row-major
    let mut scales = RowScales::new(k / BLOCK);
    for p0 in (0..out.len).step_by(NR) {
        let nr = NR.min(out.len - p0);
        let j0 = out.first + p0;
        // The next panel's bytes are fetched while this one is multiplied.
        super::blocks::prefetch(data, (j0 + NR) * rb, NR * rb);
        for (r, row) in panel.chunks_exact_mut(k).enumerate() {
            if r < nr {
                dequantize_row::<K>(w, j0 + r, &mut scales, row);
                match R {
                    TO_BF16 => round_row::<true>(row),
                    TO_F16 => round_row::<false>(row),
                    _ => {}
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
            let rows = MR.min(out.m - g * MR);
            // acc[r] holds W[j0 + r] . x[32g..32g + 32]: a piece of a column of the output.
            let acc = if rows > 16 { tile::<2>(wp, xp, k) } else { tile::<1>(wp, xp, k) };
            let mut columns = [[0f32; MR]; NR];
            for (column, a) in columns.iter_mut().zip(&acc) {
                _mm512_storeu_ps(column.as_mut_ptr(), a[0]);
                _mm512_storeu_ps(column.as_mut_ptr().add(16), a[1]);
            }
            // Written row by row: each input's nr results are neighbours in the output (one
            // short run per row instead of nr scattered writes).
            #[allow(clippy::needless_range_loop)] // i indexes the second dimension of columns
            for i in 0..rows {
                out.set_each::<NR>(g * MR + i, p0, nr, |r| columns[r][i]);
            }
        }
    }
}

/// The NR x 32 products of the panel rows `wp` with a group of packed inputs `xp`; with V = 1
/// only the first 16 inputs are computed (the last group of a product, when it has 16 or fewer).
#[inline(always)]
unsafe fn tile<const V: usize>(
    wp: [*const f32; NR],
    xp: *const f32,
    k: usize,
) -> [[__m512; 2]; NR] {
    let mut acc = [[_mm512_setzero_ps(); 2]; NR];
    // Plain index loops with constant bounds: fully unrolled, so acc lives in registers.
    #[allow(clippy::needless_range_loop)]
    for kk in 0..k {
        let mut x = [_mm512_setzero_ps(); V];
        for v in 0..V {
            x[v] = _mm512_load_ps(xp.add(kk * MR + 16 * v));
        }
        for r in 0..NR {
            let wv = _mm512_set1_ps(*wp[r].add(kk));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(wv, x[v], acc[r][v]);
            }
        }
    }
    acc
}

/// e^x for 16 values: Cephes' single-precision exp (x = n ln 2 + r, a degree-7 polynomial for
/// e^r, times 2^n), within 2 ulp of the true value over the whole range (tested against f64);
/// PyTorch's own vectorised exp is likewise a polynomial (SLEEF's, 1 ulp), not libm's. Below
/// -87.33 (where e^x stops being a normal f32) the result is 0, so e^-inf = 0 as a causal mask
/// needs; above 88.72, infinity; NaN gives NaN.
#[inline(always)]
pub(super) unsafe fn exp16(input: __m512) -> __m512 {
    let (low, high) = (_mm512_set1_ps(-87.33), _mm512_set1_ps(88.72));
    let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(input, low);
    let overflow = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(input, high);
    // min and max return their second operand when one is NaN: NaN stays NaN.
    let x = _mm512_max_ps(low, _mm512_min_ps(high, input));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // r = x - n ln 2, with ln 2 in two parts so that n * 0.693359375 is exact.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let e = _mm512_scalef_ps(y, n);
    let e = _mm512_mask_mov_ps(e, overflow, _mm512_set1_ps(f32::INFINITY));
    _mm512_mask_mov_ps(e, underflow, _mm512_setzero_ps())
}

/// `out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i]` (SwiGLU's gating).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(available() && gate.len() == up.len() && up.len() == out.len());
    // SAFETY: the CPU has AVX-512 (checked above); lanes past the end are masked off.
    unsafe { silu_mul_k(gate, up, out) }
}

#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
unsafe fn silu_mul_k(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let one = _mm512_set1_ps(1.0);
    for at in (0..gate.len()).step_by(16) {
        let mask: __mmask16 =
            if gate.len() - at >= 16 { 0xFFFF } else { (1 << (gate.len() - at)) - 1 };
        let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(at));
        let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(at));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), mask, _mm512_mul_ps(silu, u));
    }
}

/// Attention for `rows` (at most `portable::QUERY_BLOCK` = 4) queries of one head (see
/// `attention.rs`): `probs[r][j] = softmax_j(q_r . k_j * scale + mask[r][j])` and
/// `out[r] = sum over j of probs[r][j] v_j`. queries (rows, d), keys_t (d, s) the keys
/// transposed, values (s, d), masks (rows, s), probs (rows, s), out (rows, d). Scores are summed
/// over d in order with fused multiply-adds, 16 keys per register; the outputs 64 values at a
/// time over the keys in order. The queries share each load of keys and values (which come from
/// L2 and would otherwise bound the speed).
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
    // SAFETY: the CPU has AVX-512 (checked above) and the lengths match (asserted above).
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
/// `portable::attention_row_rounded`): the inputs are 16-bit values held as f32, and each step is
/// rounded where transformers' eager attention rounds in that dtype: the summed scores, their
/// scaling, the mask added, the softmax's probabilities and the weighted sum of the values.
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

/// `v` rounded as `H` says (see [`F32`]).
#[inline(always)]
unsafe fn round_as<const H: u8>(v: __m512) -> __m512 {
    match H {
        F32 => v,
        BFLOAT16 => round16::<true>(v),
        _ => round16::<false>(v),
    }
}

/// Four runs of 16 values from `row` on, each loaded where its mask says (zeros elsewhere; no
/// memory touched under a clear mask).
#[inline(always)]
unsafe fn masked_loads(live: &[__mmask16; 4], row: *const f32) -> [__m512; 4] {
    let mut v = [_mm512_setzero_ps(); 4];
    for (c, v) in v.iter_mut().enumerate() {
        *v = _mm512_maskz_loadu_ps(live[c], row.wrapping_add(16 * c));
    }
    v
}

type AttentionArgs<'a> = (&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>, f32);

// Index loops with constant bounds over several arrays in step: fully unrolled, registers.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
unsafe fn attention_rows_k<const R: usize, const H: u8>(
    (queries, keys_t, values, masks, scale): AttentionArgs,
    s: usize,
    d: usize,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let lanes = |n: usize, at: usize| -> __mmask16 {
        match n.saturating_sub(at) {
            0 => 0,
            left if left >= 16 => 0xFFFF,
            left => (1 << left) - 1,
        }
    };
    let hidden_key = _mm512_set1_ps(f32::NEG_INFINITY);
    // Scores, 4 registers of 16 keys at a time.
    for j0 in (0..s).step_by(64) {
        let mut live: [__mmask16; 4] = std::array::from_fn(|v| lanes(s, j0 + 16 * v));
        // Keys the masks hide from every query (the future, under a causal mask) are not
        // multiplied: their scores are -inf, their probabilities 0.
        if let Some(m) = masks {
            for (v, lanes) in live.iter_mut().enumerate() {
                let at = j0 + 16 * v;
                let hidden_from_all = (0..R).all(|r| {
                    let values =
                        _mm512_maskz_loadu_ps(*lanes, m.as_ptr().add(r * s).wrapping_add(at));
                    _mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(*lanes, values, hidden_key) == *lanes
                });
                if *lanes != 0 && hidden_from_all {
                    for r in 0..R {
                        _mm512_mask_storeu_ps(
                            probs.as_mut_ptr().add(r * s + at),
                            *lanes,
                            hidden_key,
                        );
                    }
                    *lanes = 0;
                }
            }
        }
        if live == [0; 4] {
            continue;
        }
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for e in 0..d {
            let row = keys_t.as_ptr().add(e * s + j0);
            let k = masked_loads(&live, row);
            for r in 0..R {
                let q = _mm512_set1_ps(*queries.get_unchecked(r * d + e));
                for v in 0..4 {
                    acc[r][v] = _mm512_fmadd_ps(q, k[v], acc[r][v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..4 {
                let at = j0 + 16 * v;
                if live[v] == 0 {
                    continue;
                }
                let scores = round_as::<H>(acc[r][v]);
                let mut score = round_as::<H>(_mm512_mul_ps(scores, _mm512_set1_ps(scale)));
                if let Some(m) = masks {
                    let m = _mm512_maskz_loadu_ps(live[v], m.as_ptr().add(r * s + at));
                    score = round_as::<H>(_mm512_add_ps(score, m));
                }
                _mm512_mask_storeu_ps(probs.as_mut_ptr().add(r * s + at), live[v], score);
            }
        }
    }
    for r in 0..R {
        softmax_k(&mut probs[r * s..(r + 1) * s]);
        if H != F32 {
            for at in (r * s..(r + 1) * s).step_by(16) {
                let lanes = lanes((r + 1) * s, at);
                let p = _mm512_maskz_loadu_ps(lanes, probs.as_ptr().add(at));
                _mm512_mask_storeu_ps(probs.as_mut_ptr().add(at), lanes, round_as::<H>(p));
            }
        }
    }
    // Outputs, 64 values at a time, over the keys some query sees.
    for e0 in (0..d).step_by(64) {
        let live: [__mmask16; 4] = std::array::from_fn(|v| lanes(d, e0 + 16 * v));
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for j in 0..s {
            let p: [f32; R] = std::array::from_fn(|r| *probs.get_unchecked(r * s + j));
            if p.iter().all(|&p| p == 0.0) {
                continue;
            }
            let row = values.as_ptr().add(j * d + e0);
            let v = masked_loads(&live, row);
            for r in 0..R {
                let p = _mm512_set1_ps(p[r]);
                for c in 0..4 {
                    acc[r][c] = _mm512_fmadd_ps(p, v[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..4 {
                if live[c] == 0 {
                    continue; // past head_dim: no address is formed there
                }
                _mm512_mask_storeu_ps(
                    out.as_mut_ptr().add(r * d + e0 + 16 * c),
                    live[c],
                    round_as::<H>(acc[r][c]),
                );
            }
        }
    }
}

/// row = softmax(row): e^(v - max) / sum, the sum added in f32 (as PyTorch does).
pub fn softmax(row: &mut [f32]) {
    assert!(available());
    // SAFETY: the CPU has AVX-512 (checked above); lanes past the end are masked off.
    unsafe { softmax_k(row) }
}

#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
unsafe fn softmax_k(row: &mut [f32]) {
    let n = row.len();
    let mask = |at: usize| -> __mmask16 {
        if n - at >= 16 {
            0xFFFF
        } else {
            (1 << (n - at)) - 1
        }
    };
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for at in (0..n).step_by(16) {
        max = _mm512_mask_max_ps(
            max,
            mask(at),
            max,
            _mm512_maskz_loadu_ps(mask(at), row.as_ptr().add(at)),
        );
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for at in (0..n).step_by(16) {
        let v = _mm512_maskz_loadu_ps(mask(at), row.as_ptr().add(at));
        let e = _mm512_maskz_mov_ps(mask(at), exp16(_mm512_sub_ps(v, max)));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(row.as_mut_ptr().add(at), mask(at), e);
    }
    let inverse = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for at in (0..n).step_by(16) {
        let e = _mm512_maskz_loadu_ps(mask(at), row.as_ptr().add(at));
        _mm512_mask_storeu_ps(row.as_mut_ptr().add(at), mask(at), _mm512_mul_ps(e, inverse));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::quantized;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    #[test]
    fn rounded_attention_rows_round_to_their_dtype_and_equal_their_portable_twin() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: its 16-bit attention is not tested here");
            return;
        }
        super::super::portable::check_rounded_attention_rows(
            attention_rows_rounded::<true>,
            attention_rows_rounded::<false>,
        );
    }

    #[test]
    fn dequantized_rows_are_bit_identical_to_the_scalar_code() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: the kernels of simd.rs are not used here");
            return;
        }
        for (kind, id) in
            [(GgmlDType::Q4_0, Q4_0), (GgmlDType::Q4_1, Q4_1), (GgmlDType::Q8_0, Q8_0)]
        {
            let (rows, cols) = (7, 608);
            let (_, m) = quantized(kind, rows, cols);
            let kind = m.kind;
            let scalar: Vec<f32> =
                m.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let mut scales = RowScales::new(cols / BLOCK);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                // SAFETY: available() said the CPU has the kernels' features.
                unsafe {
                    match id {
                        Q4_0 => dequantize_row::<Q4_0>(&m, r, &mut scales, &mut row),
                        Q4_1 => dequantize_row::<Q4_1>(&m, r, &mut scales, &mut row),
                        _ => dequantize_row::<Q8_0>(&m, r, &mut scales, &mut row),
                    }
                }
                let expected = &scalar[r * cols..(r + 1) * cols];
                let same = row.iter().zip(expected).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kind:?} row {r}");
            }
        }
    }

    #[test]
    fn sized_windows_cover_the_columns_once() {
        let mut out = vec![MaybeUninit::new(0f32); 3 * 100];
        for widths in [&[100][..], &[64, 64], &[40, 30, 20, 10], &[32, 32, 32, 32, 32]] {
            let windows = column_windows_sized(&mut out, 3, 100, widths);
            let spans: Vec<_> = windows.iter().map(|w| w.window()).collect();
            let mut next = 0;
            for &(first, len) in &spans {
                assert!(first == next && len > 0, "{widths:?}: {spans:?}");
                next += len;
            }
            assert_eq!(next, 100, "{widths:?}: {spans:?}");
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        if !available() {
            return;
        }
        let mut worst = 0f64;
        let xs: Vec<f32> = (0..200_000).map(|i| -87.0 + i as f32 * (175.5 / 200_000.0)).collect();
        for chunk in xs.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: the CPU has AVX-512 (checked above).
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &y) in chunk.iter().zip(&got) {
                let exact = (x as f64).exp();
                let ulp = (exact as f32).next_up() as f64 - exact as f32 as f64;
                worst = worst.max((y as f64 - exact).abs() / ulp);
            }
        }
        assert!(worst <= 2.0, "{worst} ulp");
        let mut out = [0f32; 16];
        let edges = [-1000.0, -87.33, 0.0, 88.7, 1000.0, f32::NEG_INFINITY, 1e-8, -1e-8];
        let x: [f32; 16] = std::array::from_fn(|i| edges[i % edges.len()]);
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr()))) };
        let expected = edges.map(|x| if x < -87.33 { 0.0 } else { (x as f64).exp() });
        let mut nan = [0f32; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(nan.as_mut_ptr(), exp16(_mm512_set1_ps(f32::NAN))) };
        assert!(nan.iter().all(|v| v.is_nan()), "{nan:?}");
        for (i, (&got, &e)) in out.iter().zip(expected.iter().cycle()).enumerate() {
            assert!(got as f64 == e || (got as f64 - e).abs() <= 1e-6 * e, "{i}: {got} vs {e}");
        }
    }

    #[test]
    fn silu_mul_and_softmax_equal_the_scalar_formulas() {
        if !available() {
            return;
        }
        let n = 37; // two full vectors and a partial one
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 18.0) * 0.7).collect();
        let up: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.1).collect();
        let mut out = vec![0f32; n];
        silu_mul(&gate, &up, &mut out);
        for i in 0..n {
            let expected = gate[i] / (1.0 + (-gate[i]).exp()) * up[i];
            assert!((out[i] - expected).abs() <= 4e-7 * expected.abs().max(1e-3), "{i}");
        }
        let mut row: Vec<f32> = gate.clone();
        row[3] = f32::NEG_INFINITY; // a masked position
        softmax(&mut row);
        let max = gate.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = gate
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, &v)| (v as f64 - max).exp())
            .sum();
        for (i, &p) in row.iter().enumerate() {
            let expected = if i == 3 { 0.0 } else { (gate[i] as f64 - max).exp() / sum };
            assert!(i != 3 || p == 0.0, "a masked position has probability {p}");
            assert!(
                (p as f64 - expected).abs() <= 1e-6 * expected.max(1e-6),
                "{i}: {p} vs {expected}"
            );
        }
    }
}
