//! aarch64 kernels on NEON (Advanced SIMD: 4 f32 lanes per register, 32 registers), the base
//! vector instructions of every 64-bit ARM CPU (Apple Silicon, Graviton, Raspberry Pi 4/5), so
//! the `neon` backend is the default there. Each kernel has its twin in `portable.rs` and a test
//! against it:
//!
//! * [`dot_rows`], for a few input rows (decoding, short prompts): each block's 32 integers
//!   turned into floats in 8 registers once and multiplied with every input row, the 8-lane
//!   arithmetic of `portable::dot_rows_generic::<true>` (two registers of 4 lanes), so the
//!   results are bit-identical to that twin.
//! * [`panel_rows`], for many input rows (long prompts): a panel of [`NR`] = 8 weight rows
//!   dequantized bit for bit, transposed, times [`MR`] = 12 inputs at a time held in 24
//!   accumulator registers (each k: two loads of weights, three of inputs, 24 fused
//!   multiply-adds by lane), each value summed over k in order: bit-identical to
//!   `portable::panel_rows`.
//! * [`rms_norm_row`] (bit-identical to its twin), [`silu_mul`] and [`softmax`] with a
//!   vectorised exp, and [`attention_rows`]: up to 4 queries of a head sharing each load of keys
//!   and values.
//! * `--dtype bf16|f16`: [`dot_rows_rounded`] (bit-identical to `portable::dot_rows_rounded`),
//!   [`panel_rows`] with a rounding (each dequantized weight rounded to the dtype) and
//!   [`attention_rows_rounded`], rounding where transformers' eager attention rounds
//!   ([`round_as`]: bfloat16 with integer operations, float16 with `fcvtn`/`fcvtl`).
//!
//! Speed on real ARM hardware is not measured by this project (its CI runs these kernels under
//! qemu, an emulator); docs/performance.md says how to measure it.

use super::blocks::{prefetch, BlockMatrix, BlockType, BLOCK, PREFETCH_ROWS};
use super::half_precision::{self, Half};
#[cfg(test)]
use super::portable;
#[cfg(test)]
use super::portable::QUERY_BLOCK;
use std::arch::aarch64::*;
use std::arch::asm;

/// Weight rows per panel of [`panel_rows`] (two registers of a transposed panel column).
pub const NR: usize = 8;
/// Input rows per step of [`panel_rows`]: three registers (NR x 3 = 24 accumulators).
pub const MR: usize = 12;

/// Whether this CPU runs the kernels of this module (every aarch64 CPU that runs Linux or macOS).
pub fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
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

/// What a kernel rounds its values to: nothing (f32), bfloat16 or float16.
const F32: u8 = 0;
const BFLOAT16: u8 = 1;
const FLOAT16: u8 = 2;

/// The const parameter of a kernel's 16-bit mode for `round`.
fn round_id(round: Option<Half>) -> u8 {
    match round {
        None => F32,
        Some(Half::Bf16) => BFLOAT16,
        Some(Half::F16) => FLOAT16,
    }
}

/// 4 values rounded as `H` says (see [`F32`]), as f32: to bfloat16 (to nearest, ties to even,
/// NaN kept and made quiet), the integer operations of `half_precision::round_bf16`; or to
/// float16 and back (`fcvtn`, `fcvtl`: to nearest, ties to even, subnormals kept, from 65520 on
/// infinity), the value of `half_precision::round_f16`.
#[inline(always)]
unsafe fn round_as<const H: u8>(v: float32x4_t) -> float32x4_t {
    match H {
        F32 => v,
        BFLOAT16 => {
            let x = vreinterpretq_u32_f32(v);
            let lsb = vandq_u32(vshrq_n_u32::<16>(x), vdupq_n_u32(1));
            let rounded = vaddq_u32(x, vaddq_u32(lsb, vdupq_n_u32(0x7FFF)));
            let quiet = vorrq_u32(x, vdupq_n_u32(0x0040_0000));
            let number = vceqq_f32(v, v); // all ones but in a NaN's lanes
            let rounded = vbslq_u32(number, rounded, quiet);
            vreinterpretq_f32_u32(vandq_u32(rounded, vdupq_n_u32(0xFFFF_0000)))
        }
        _ => {
            let out: float32x4_t;
            // SAFETY: register-to-register conversions of the base ARMv8 FP/SIMD instructions.
            asm!(
                "fcvtn {h:v}.4h, {v:v}.4s",
                "fcvtl {o:v}.4s, {h:v}.4h",
                v = in(vreg) v,
                h = out(vreg) _,
                o = lateout(vreg) out,
                options(pure, nomem, nostack, preserves_flags),
            );
            out
        }
    }
}

/// One value rounded as `H` says (the tails of the kernels).
#[inline(always)]
fn round_one<const H: u8>(v: f32) -> f32 {
    match H {
        F32 => v,
        BFLOAT16 => half_precision::round_bf16(v),
        _ => half_precision::round_f16(v),
    }
}

/// The f16 at `at` as f32 (one `fcvt`, exact, as every f16 is an f32).
#[inline(always)]
unsafe fn half(at: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*at, *at.add(1)]);
    let out: f32;
    // SAFETY: a register-to-register conversion of the base ARMv8 FP instructions.
    asm!("fcvt {0:s}, {1:h}", out(vreg) out, in(vreg) bits, options(pure, nomem, nostack, preserves_flags));
    out
}

/// 16 signed bytes as 16 floats in 4 registers, in order.
#[inline(always)]
unsafe fn bytes_to_f32(b: int8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(b));
    let hi = vmovl_high_s8(b);
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_high_s16(lo)),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_high_s16(hi)),
    ]
}

/// A block's scale d, its offset m (Q4_1; else 0) and its 32 integers as floats in 8 registers
/// (`q`, or `q - 8` for Q4_0): the weights are `d * q + m`, as `BlockType::integers` says.
#[inline(always)]
unsafe fn block<const K: u8>(block: *const u8) -> (f32, f32, [float32x4_t; 8]) {
    let d = half(block);
    let (m, ints) = if K == Q8_0 {
        (0.0, [vld1q_s8(block.add(2) as *const i8), vld1q_s8(block.add(18) as *const i8)])
    } else {
        // Q4_x: byte j holds value j in its low nibble and value j + 16 in its high nibble.
        let (m, qs) = if K == Q4_1 {
            (half(block.add(2)), vld1q_u8(block.add(4)))
        } else {
            (0.0, vld1q_u8(block.add(2)))
        };
        let lo = vreinterpretq_s8_u8(vandq_u8(qs, vdupq_n_u8(0x0F)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(qs));
        if K == Q4_0 {
            (m, [vsubq_s8(lo, vdupq_n_s8(8)), vsubq_s8(hi, vdupq_n_s8(8))])
        } else {
            (m, [lo, hi])
        }
    };
    let (a, b) = (bytes_to_f32(ints[0]), bytes_to_f32(ints[1]));
    (d, m, [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
}

/// The 8 lanes of two registers added in order, as `[f32; 8]::iter().sum()` adds them.
#[inline(always)]
unsafe fn sum8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let mut lanes = [0f32; 8];
    vst1q_f32(lanes.as_mut_ptr(), lo);
    vst1q_f32(lanes.as_mut_ptr().add(4), hi);
    lanes.iter().sum()
}

/// `out[(j - first) * m + i] = W[j] . x[i]` for the rows j that `out` covers (out.len() / m of
/// them) and the m input rows of x (m * cols values; m <= 8); xs is `portable::lane_sums` of x.
/// Bit-identical to `portable::dot_rows_generic::<true>`.
pub fn dot_rows(w: &BlockMatrix, x: &[f32], xs: &[f32], m: usize, first: usize, out: &mut [f32]) {
    assert!(available(), "the neon kernels need an aarch64 CPU with NEON");
    macro_rules! run {
        ($k:expr, $($m:literal)*) => {
            match m {
                // SAFETY: the CPU has NEON (checked above); the kernel checks its bounds.
                $($m => unsafe { dot_rows_k::<$k, $m>(w, x, xs, first, out) },)*
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

#[target_feature(enable = "neon")]
unsafe fn dot_rows_k<const K: u8, const M: usize>(
    w: &BlockMatrix,
    x: &[f32],
    xs: &[f32],
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
    assert!(x.len() >= M * k && xs.len() >= M * blocks * 8 && (first + rows) * rb <= data.len());
    let (xp, sp) = (x.as_ptr(), xs.as_ptr());
    for (local, outs) in out.chunks_exact_mut(M).enumerate() {
        let row = data.as_ptr().add((first + local) * rb);
        prefetch(data, (first + local + PREFETCH_ROWS) * rb, rb);
        // 8 lanes per input row (lo: lanes 0..4, hi: 4..8), as the portable kernel's 8 lanes.
        let mut acc = [[vdupq_n_f32(0.0); 2]; M];
        for b in 0..blocks {
            let (d, offset, q) = block::<K>(row.add(b * bb));
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = xp.add(i * k + b * BLOCK);
                let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                for g in 0..4 {
                    lo = vfmaq_f32(lo, q[2 * g], vld1q_f32(xb.add(8 * g)));
                    hi = vfmaq_f32(hi, q[2 * g + 1], vld1q_f32(xb.add(8 * g + 4)));
                }
                a[0] = vfmaq_n_f32(a[0], lo, d);
                a[1] = vfmaq_n_f32(a[1], hi, d);
                if K == Q4_1 {
                    let sums = sp.add((i * blocks + b) * 8);
                    a[0] = vfmaq_n_f32(a[0], vld1q_f32(sums), offset);
                    a[1] = vfmaq_n_f32(a[1], vld1q_f32(sums.add(4)), offset);
                }
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = sum8(a[0], a[1]);
        }
    }
}

/// The 16-bit mode of [`dot_rows`] (`--dtype bf16|f16`): each block dequantized bit for bit
/// (`d * q`, plus `m` for Q4_1, a multiply and an add), its 32 weights rounded to bfloat16
/// (`bf16`) or float16, then multiplied with every input row (16-bit values, as f32) and summed
/// in f32 in 8 lanes, each product and sum rounded on its own: bit-identical to
/// `portable::dot_rows_rounded`. Same layout as [`dot_rows`]; the output is f32, for the caller
/// to round once.
pub fn dot_rows_rounded(
    w: &BlockMatrix,
    x: &[f32],
    m: usize,
    first: usize,
    out: &mut [f32],
    bf16: bool,
) {
    assert!(available(), "the neon kernels need an aarch64 CPU with NEON");
    macro_rules! run {
        ($k:expr, $($m:literal)*) => {
            match (m, bf16) {
                // SAFETY: the CPU has NEON (checked above); the kernel checks its bounds.
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

#[target_feature(enable = "neon")]
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
    for (local, outs) in out.chunks_exact_mut(M).enumerate() {
        let row = data.as_ptr().add((first + local) * rb);
        prefetch(data, (first + local + PREFETCH_ROWS) * rb, rb);
        // 8 lanes per input row (lo: lanes 0..4, hi: 4..8), as the portable kernel's 8 lanes.
        let mut acc = [[vdupq_n_f32(0.0); 2]; M];
        for b in 0..blocks {
            let (d, offset, q) = block::<K>(row.add(b * bb));
            let wq = q.map(|q| {
                let v = vmulq_n_f32(q, d);
                round_as::<H>(if K == Q4_1 { vaddq_f32(v, vdupq_n_f32(offset)) } else { v })
            });
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = xp.add(i * k + b * BLOCK);
                for g in 0..4 {
                    a[0] = vaddq_f32(a[0], vmulq_f32(wq[2 * g], vld1q_f32(xb.add(8 * g))));
                    a[1] = vaddq_f32(a[1], vmulq_f32(wq[2 * g + 1], vld1q_f32(xb.add(8 * g + 4))));
                }
            }
        }
        for (o, a) in outs.iter_mut().zip(&acc) {
            *o = sum8(a[0], a[1]);
        }
    }
}

/// The inputs transposed for [`panel_rows`], in groups of [`MR`] rows: value
/// `(g * k + kk) * MR + i` is `x[g * MR + i][kk]` (zeros past row m).
pub struct Packed {
    values: Vec<f32>,
    m: usize,
    k: usize,
}

impl Packed {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(x.len(), m * k);
        let groups = m.div_ceil(MR);
        let mut values = vec![0f32; groups * k * MR];
        super::team::for_each_chunk(&mut values, k * MR, |g, group| {
            let rows = MR.min(m - g * MR);
            let x = &x[g * MR * k..(g * MR + rows) * k];
            for kk in 0..k {
                for i in 0..rows {
                    group[kk * MR + i] = x[i * k + kk];
                }
            }
        });
        Packed { values, m, k }
    }

    /// The input rows.
    pub fn rows(&self) -> usize {
        self.m
    }
}

/// `W[j] . x[i]` for the weight rows `first..first + len` of w and every input row i of
/// `packed`, handed to `store(i, j, run)` as runs of neighbouring columns: `run[c]` is the value
/// of column `j + c` of input row i. Every (i, j) of the window is stored once. Each value is
/// the sum over k in order of fused multiply-adds of the dequantized weights (bit for bit) and
/// the inputs: bit-identical to `portable::panel_rows`. With `round` (`--dtype bf16|f16`), each
/// dequantized weight is rounded to that dtype first (the values stay f32, for the caller to
/// round once), as the x86 panels do.
pub fn panel_rows(
    w: &BlockMatrix,
    packed: &Packed,
    first: usize,
    len: usize,
    round: Option<Half>,
    store: impl FnMut(usize, usize, &[f32]),
) {
    assert!(available(), "the neon kernels need an aarch64 CPU with NEON");
    assert!(packed.k == w.cols && first + len <= w.rows);
    macro_rules! run {
        ($k:expr) => {
            match round_id(round) {
                F32 => panel_rows_k::<$k, F32>(w, packed, first, len, store),
                BFLOAT16 => panel_rows_k::<$k, BFLOAT16>(w, packed, first, len, store),
                _ => panel_rows_k::<$k, FLOAT16>(w, packed, first, len, store),
            }
        };
    }
    // SAFETY: the CPU has NEON (checked above); the kernel checks its bounds.
    unsafe {
        match kind_id(w.kind) {
            Q4_0 => run!(Q4_0),
            Q4_1 => run!(Q4_1),
            _ => run!(Q8_0),
        }
    }
}

#[target_feature(enable = "neon")]
unsafe fn panel_rows_k<const K: u8, const H: u8>(
    w: &BlockMatrix,
    packed: &Packed,
    first: usize,
    len: usize,
    mut store: impl FnMut(usize, usize, &[f32]),
) {
    let k = w.cols;
    let (m, groups) = (packed.m, packed.m.div_ceil(MR));
    assert!(packed.values.len() == groups * k * MR);
    let blocks = k / BLOCK;
    let bb = w.kind.block_bytes();
    let rb = blocks * bb;
    let data = w.bytes.as_slice();
    assert!((first + len) * rb <= data.len());
    // NR dequantized rows, transposed: panel[kk * NR + r] = W[j0 + r][kk] (zeros past the end).
    let mut panel = vec![0f32; k * NR];
    let mut column = [0f32; BLOCK];
    for p0 in (0..len).step_by(NR) {
        let nr = NR.min(len - p0);
        let j0 = first + p0;
        prefetch(data, (j0 + NR) * rb, NR * rb);
        for r in 0..NR {
            if r >= nr {
                (0..k).for_each(|kk| panel[kk * NR + r] = 0.0);
                continue;
            }
            let row = data.as_ptr().add((j0 + r) * rb);
            for b in 0..blocks {
                // d * q, then + m: a multiply and an add, never fused, as `BlockType::dequantize`;
                // then rounded to the dtype in the 16-bit mode.
                let (d, offset, q) = block::<K>(row.add(b * bb));
                for (c, q) in q.iter().enumerate() {
                    let v = vmulq_n_f32(*q, d);
                    let v = if K == Q4_1 { vaddq_f32(v, vdupq_n_f32(offset)) } else { v };
                    vst1q_f32(column.as_mut_ptr().add(4 * c), round_as::<H>(v));
                }
                for (e, &v) in column.iter().enumerate() {
                    panel[(b * BLOCK + e) * NR + r] = v;
                }
            }
        }
        for g in 0..groups {
            let acc = tile(panel.as_ptr(), packed.values.as_ptr().add(g * k * MR), k);
            let mut columns = [[0f32; MR]; NR];
            for (col, a) in columns.iter_mut().zip(&acc) {
                for (v, a) in a.iter().enumerate() {
                    vst1q_f32(col.as_mut_ptr().add(4 * v), *a);
                }
            }
            // One run per input row: its nr results are neighbours in the output.
            #[allow(clippy::needless_range_loop)] // i indexes the second dimension of columns
            for i in 0..MR.min(m - g * MR) {
                let run: [f32; NR] = std::array::from_fn(|r| columns[r][i]);
                store(g * MR + i, j0, &run[..nr]);
            }
        }
    }
}

/// The NR x MR products of a transposed panel `wp` (k x NR) with a group of packed inputs `xp`
/// (k x MR): `acc[r][v]` lane l is `sum over kk of wp[kk][r] * xp[kk][4v + l]`, in order of kk.
#[inline(always)]
unsafe fn tile(wp: *const f32, xp: *const f32, k: usize) -> [[float32x4_t; 3]; NR] {
    let mut acc = [[vdupq_n_f32(0.0); 3]; NR];
    macro_rules! lanes {
        ($w:expr, $x:expr, $r:expr) => {
            for v in 0..3 {
                acc[$r][v] = vfmaq_laneq_f32::<0>(acc[$r][v], $x[v], $w);
                acc[$r + 1][v] = vfmaq_laneq_f32::<1>(acc[$r + 1][v], $x[v], $w);
                acc[$r + 2][v] = vfmaq_laneq_f32::<2>(acc[$r + 2][v], $x[v], $w);
                acc[$r + 3][v] = vfmaq_laneq_f32::<3>(acc[$r + 3][v], $x[v], $w);
            }
        };
    }
    for kk in 0..k {
        let w = wp.add(kk * NR);
        let (w0, w1) = (vld1q_f32(w), vld1q_f32(w.add(4)));
        let xk = xp.add(kk * MR);
        let x = [vld1q_f32(xk), vld1q_f32(xk.add(4)), vld1q_f32(xk.add(8))];
        lanes!(w0, x, 0);
        lanes!(w1, x, 4);
    }
    acc
}

/// RMSNorm of one row: `x / sqrt(mean(x^2) + eps) * w`, the squares summed in 16 running sums
/// (four registers) as `portable::rms_norm_row` sums them: bit-identical to it.
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(available() && weight.len() == x.len() && out.len() == x.len());
    // SAFETY: the CPU has NEON (checked above) and the lengths match (asserted above).
    unsafe { rms_norm_row_k(x, weight, eps, out) }
}

#[target_feature(enable = "neon")]
unsafe fn rms_norm_row_k(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let c = x.len();
    let whole = c / 16 * 16;
    let mut sums = [vdupq_n_f32(0.0); 4];
    for at in (0..whole).step_by(16) {
        for (v, s) in sums.iter_mut().enumerate() {
            let x = vld1q_f32(x.as_ptr().add(at + 4 * v));
            *s = vaddq_f32(*s, vmulq_f32(x, x));
        }
    }
    let mut lanes = [0f32; 16];
    for (v, s) in sums.iter().enumerate() {
        vst1q_f32(lanes.as_mut_ptr().add(4 * v), *s);
    }
    let tail: f32 = x[whole..].iter().map(|v| v * v).sum();
    let m = (lanes.iter().sum::<f32>() + tail) / c as f32 + eps;
    let m = m.sqrt();
    let mv = vdupq_n_f32(m);
    let whole4 = c / 4 * 4;
    for at in (0..whole4).step_by(4) {
        let v = vdivq_f32(vld1q_f32(x.as_ptr().add(at)), mv);
        vst1q_f32(out.as_mut_ptr().add(at), vmulq_f32(v, vld1q_f32(weight.as_ptr().add(at))));
    }
    for ((o, &v), &w) in out[whole4..].iter_mut().zip(&x[whole4..]).zip(&weight[whole4..]) {
        *o = v / m * w;
    }
}

/// e^x for 4 values: Cephes' single-precision exp (x = n ln 2 + r, a degree-7 polynomial for
/// e^r, times 2^n), as `avx512::exp16`: within 2 ulp of the true value (tested against f64).
/// Below -87.33 (where e^x stops being a normal f32) the result is 0, so e^-inf = 0 as a causal
/// mask needs; above 88.72, infinity; NaN gives NaN.
#[inline(always)]
unsafe fn exp4(input: float32x4_t) -> float32x4_t {
    let (low, high) = (vdupq_n_f32(-87.33), vdupq_n_f32(88.72));
    let underflow = vcltq_f32(input, low);
    let overflow = vcgtq_f32(input, high);
    // NEON's min and max return NaN when either operand is NaN: NaN stays NaN.
    let x = vmaxq_f32(low, vminq_f32(high, input));
    let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    // r = x - n ln 2, with ln 2 in two parts so that n * 0.693359375 is exact.
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), vmulq_f32(p, r), r);
    // y * 2^n, n in -126..=128, as two exact scalings by 2^(n/2) and 2^(n - n/2) (each a normal
    // power of two), as AVX-512's scalef computes it.
    let n = vcvtq_s32_f32(n);
    let n1 = vshrq_n_s32::<1>(n);
    let n2 = vsubq_s32(n, n1);
    let pow2 =
        |e: int32x4_t| vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(e, vdupq_n_s32(127))));
    let e = vmulq_f32(vmulq_f32(y, pow2(n1)), pow2(n2));
    let e = vbslq_f32(overflow, vdupq_n_f32(f32::INFINITY), e);
    vbslq_f32(underflow, vdupq_n_f32(0.0), e)
}

/// `out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i]` (SwiGLU's gating; the
/// twin of `portable::silu_mul`).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(available() && gate.len() == up.len() && up.len() == out.len());
    // SAFETY: the CPU has NEON (checked above) and the lengths match (asserted above).
    unsafe { silu_mul_k(gate, up, out) }
}

#[target_feature(enable = "neon")]
unsafe fn silu_mul_k(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len();
    let one = vdupq_n_f32(1.0);
    let mut at = 0;
    while at < n {
        // The last values through a copy padded with zeros (NEON has no masked loads).
        let left = n - at;
        let (mut g4, mut u4) = ([0f32; 4], [0f32; 4]);
        let (gp, up_) = if left >= 4 {
            (gate.as_ptr().add(at), up.as_ptr().add(at))
        } else {
            g4[..left].copy_from_slice(&gate[at..]);
            u4[..left].copy_from_slice(&up[at..]);
            (g4.as_ptr(), u4.as_ptr())
        };
        let (g, u) = (vld1q_f32(gp), vld1q_f32(up_));
        let e = exp4(vnegq_f32(g));
        let y = vmulq_f32(vdivq_f32(g, vaddq_f32(one, e)), u);
        if left >= 4 {
            vst1q_f32(out.as_mut_ptr().add(at), y);
        } else {
            let mut y4 = [0f32; 4];
            vst1q_f32(y4.as_mut_ptr(), y);
            out[at..].copy_from_slice(&y4[..left]);
        }
        at += 4;
    }
}

/// row = softmax(row): e^(v - max) / sum, the sum added in f32, -inf entries giving 0 (the twin
/// of `portable::softmax`).
pub fn softmax(row: &mut [f32]) {
    assert!(available());
    // SAFETY: the CPU has NEON (checked above).
    unsafe { softmax_k(row) }
}

#[target_feature(enable = "neon")]
unsafe fn softmax_k(row: &mut [f32]) {
    let n = row.len();
    let whole = n / 4 * 4;
    let p = row.as_mut_ptr();
    let mut max4 = vdupq_n_f32(f32::NEG_INFINITY);
    for at in (0..whole).step_by(4) {
        max4 = vmaxq_f32(max4, vld1q_f32(p.add(at)));
    }
    let max = row[whole..].iter().fold(vmaxvq_f32(max4), |m, &v| m.max(v));
    let maxv = vdupq_n_f32(max);
    let mut sum4 = vdupq_n_f32(0.0);
    for at in (0..whole).step_by(4) {
        let e = exp4(vsubq_f32(vld1q_f32(p.add(at)), maxv));
        sum4 = vaddq_f32(sum4, e);
        vst1q_f32(p.add(at), e);
    }
    let mut sum = vaddvq_f32(sum4);
    if whole < n {
        let mut tail = [f32::NEG_INFINITY; 4];
        tail[..n - whole].copy_from_slice(&row[whole..]);
        let e = exp4(vsubq_f32(vld1q_f32(tail.as_ptr()), maxv));
        vst1q_f32(tail.as_mut_ptr(), e);
        row[whole..].copy_from_slice(&tail[..n - whole]);
        sum += vaddvq_f32(e); // the padding's e^-inf are 0
    }
    let inverse = vdupq_n_f32(1.0 / sum);
    for at in (0..whole).step_by(4) {
        vst1q_f32(p.add(at), vmulq_f32(vld1q_f32(p.add(at)), inverse));
    }
    row[whole..].iter_mut().for_each(|v| *v *= 1.0 / sum);
}

/// Attention for `rows` (at most `portable::QUERY_BLOCK` = 4) queries of one head (see
/// `attention.rs`): `probs[r][j] = softmax_j(q_r . k_j * scale + mask[r][j])` and
/// `out[r] = sum over j of probs[r][j] v_j`. queries (rows, d), keys_t (d, s) the keys
/// transposed, values (s, d), masks (rows, s), probs (rows, s), out (rows, d; zeros on entry).
/// Scores are summed over d in order with fused multiply-adds, 4 keys per register, 16 at a
/// time; the outputs 16 values at a time over the keys in order. The queries share each load of
/// keys and values. The twin of `portable::attention_row` (which sums in the same order,
/// without fusing).
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
    // SAFETY: the CPU has NEON and the lengths match (both asserted above).
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
/// `portable::attention_row_rounded`): the inputs are 16-bit values held as f32, and each step
/// is rounded where transformers' eager attention rounds in that dtype: the summed scores,
/// their scaling, the mask added, the softmax's probabilities and the weighted sum of the
/// values.
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

type AttentionArgs<'a> = (&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>, f32);

// Index loops with constant bounds over several arrays in step: fully unrolled, registers.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "neon")]
unsafe fn attention_rows_k<const R: usize, const H: u8>(
    (queries, keys_t, values, masks, scale): AttentionArgs,
    s: usize,
    d: usize,
    probs: &mut [f32],
    out: &mut [f32],
) {
    // Scores, 16 keys at a time (4 registers); the last keys one at a time.
    let whole = s / 16 * 16;
    for j0 in (0..whole).step_by(16) {
        // Keys the masks hide from every query (the future, under a causal mask) are not
        // multiplied: their scores are -inf, their probabilities 0.
        let hidden = masks.is_some_and(|m| {
            (0..R).all(|r| m[r * s + j0..r * s + j0 + 16].iter().all(|&v| v == f32::NEG_INFINITY))
        });
        if hidden {
            for r in 0..R {
                probs[r * s + j0..r * s + j0 + 16].fill(f32::NEG_INFINITY);
            }
            continue;
        }
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for e in 0..d {
            let row = keys_t.as_ptr().add(e * s + j0);
            let k = [
                vld1q_f32(row),
                vld1q_f32(row.add(4)),
                vld1q_f32(row.add(8)),
                vld1q_f32(row.add(12)),
            ];
            for r in 0..R {
                let q = vdupq_n_f32(*queries.get_unchecked(r * d + e));
                for v in 0..4 {
                    acc[r][v] = vfmaq_f32(acc[r][v], q, k[v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..4 {
                let at = r * s + j0 + 4 * v;
                let mut score = round_as::<H>(vmulq_n_f32(round_as::<H>(acc[r][v]), scale));
                if let Some(m) = masks {
                    score = round_as::<H>(vaddq_f32(score, vld1q_f32(m.as_ptr().add(at))));
                }
                vst1q_f32(probs.as_mut_ptr().add(at), score);
            }
        }
    }
    for j in whole..s {
        for r in 0..R {
            let mut score = 0f32;
            for e in 0..d {
                score = queries[r * d + e].mul_add(keys_t[e * s + j], score);
            }
            let score = round_one::<H>(round_one::<H>(score) * scale);
            probs[r * s + j] = match masks {
                Some(m) => round_one::<H>(score + m[r * s + j]),
                None => score,
            };
        }
    }
    for r in 0..R {
        let row = &mut probs[r * s..(r + 1) * s];
        softmax_k(row);
        if H != F32 {
            let whole = s / 4 * 4;
            for at in (0..whole).step_by(4) {
                let p = row.as_mut_ptr().add(at);
                vst1q_f32(p, round_as::<H>(vld1q_f32(p)));
            }
            row[whole..].iter_mut().for_each(|p| *p = round_one::<H>(*p));
        }
    }
    // Outputs, 16 values at a time (4 registers), over the keys some query sees; the last
    // values of a head one at a time.
    let whole = d / 16 * 16;
    for e0 in (0..whole).step_by(16) {
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for j in 0..s {
            let p: [f32; R] = std::array::from_fn(|r| *probs.get_unchecked(r * s + j));
            if p.iter().all(|&p| p == 0.0) {
                continue;
            }
            let row = values.as_ptr().add(j * d + e0);
            let v = [
                vld1q_f32(row),
                vld1q_f32(row.add(4)),
                vld1q_f32(row.add(8)),
                vld1q_f32(row.add(12)),
            ];
            for r in 0..R {
                for c in 0..4 {
                    acc[r][c] = vfmaq_n_f32(acc[r][c], v[c], p[r]);
                }
            }
        }
        for r in 0..R {
            for c in 0..4 {
                vst1q_f32(out.as_mut_ptr().add(r * d + e0 + 4 * c), round_as::<H>(acc[r][c]));
            }
        }
    }
    for e in whole..d {
        for r in 0..R {
            let mut o = 0f32;
            for j in 0..s {
                let p = probs[r * s + j];
                if p != 0.0 {
                    o = p.mul_add(values[j * d + e], o);
                }
            }
            out[r * d + e] = round_one::<H>(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::quantized;
    use candle_core::quantized::GgmlDType;

    const KINDS: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0];

    fn inputs(m: usize, k: usize, seed: usize) -> Vec<f32> {
        (0..m * k).map(|i| (((i + seed) * 7919) % 113) as f32 / 50.0 - 1.1).collect()
    }

    #[test]
    fn dot_rows_is_bit_identical_to_its_portable_twin() {
        for kind in KINDS {
            let (_, w) = quantized(kind, 37, 608);
            for m in 1..=8 {
                let x = inputs(m, 608, m);
                let sums = portable::lane_sums(&x, m, 608);
                let (mut ours, mut fused, mut plain) =
                    (vec![0f32; 37 * m], vec![0f32; 37 * m], vec![0f32; 37 * m]);
                dot_rows(&w, &x, &sums, m, 0, &mut ours);
                portable::dot_rows_generic::<true>(&w, &x, &sums, m, 0, &mut fused);
                portable::dot_rows(&w, &x, &sums, m, 0, &mut plain);
                for ((a, b), c) in ours.iter().zip(&fused).zip(&plain) {
                    assert_eq!(a.to_bits(), b.to_bits(), "{kind:?} m={m}: {a} vs {b}");
                    assert!((a - c).abs() <= 1e-4 * (1.0 + c.abs()), "{kind:?} m={m}: {a} vs {c}");
                }
                // A slice of rows from the middle, as the parallel tasks take them.
                let mut part = vec![0f32; 5 * m];
                dot_rows(&w, &x, &sums, m, 30, &mut part);
                assert_eq!(part, ours[30 * m..35 * m], "{kind:?} m={m}, rows 30..35");
            }
        }
    }

    #[test]
    fn panel_rows_is_bit_identical_to_its_portable_twin() {
        // Windows that do not fill a panel, groups of inputs that do not fill MR.
        for kind in KINDS {
            let (rows, k) = (45, 96);
            let (_, w) = quantized(kind, rows, k);
            for m in [1, 9, 12, 13, 40] {
                let x = inputs(m, k, 3 * m);
                let packed = Packed::new(&x, m, k);
                assert_eq!(packed.rows(), m);
                for (first, len) in [(0, rows), (3, 17), (40, 5), (8, 8)] {
                    let mut ours = vec![f32::NAN; m * len];
                    let mut stored = vec![0u32; m * len];
                    panel_rows(&w, &packed, first, len, None, |i, j, run| {
                        for (c, &v) in run.iter().enumerate() {
                            ours[i * len + j - first + c] = v;
                            stored[i * len + j - first + c] += 1;
                        }
                    });
                    assert!(stored.iter().all(|&n| n == 1), "{kind:?} m={m}: {stored:?}");
                    let mut twin = vec![0f32; m * len];
                    portable::panel_rows(&w, &x, m, first, len, &mut twin);
                    for (a, b) in ours.iter().zip(&twin) {
                        assert_eq!(a.to_bits(), b.to_bits(), "{kind:?} m={m}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_equals_the_scalar_rounding() {
        // Ties both ways, subnormals of both formats, the edges of f16's range, infinities.
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -2.5e-6,
            6.0e-8,
            3.0e-8,
            1e-40,
            65504.0,
            65519.0,
            65520.0,
            -1e6,
            3.4e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        values.extend((0..4000).map(|i| ((i * 7919) % 4001) as f32 * 0.37 - 740.0));
        values.extend((0..400).map(|i| f32::from_bits(0x3380_0000 + i * 0x0001_2345)));
        while values.len() % 4 != 0 {
            values.push(1.0);
        }
        let four = |f: unsafe fn(float32x4_t) -> float32x4_t, v: &[f32]| {
            let mut y = [0f32; 4];
            // SAFETY: every aarch64 CPU has NEON.
            unsafe { vst1q_f32(y.as_mut_ptr(), f(vld1q_f32(v.as_ptr()))) };
            y
        };
        for v in values.chunks_exact(4) {
            let (bf, f) = (four(round_as::<BFLOAT16>, v), four(round_as::<FLOAT16>, v));
            for c in 0..4 {
                let (b, h) = (half_precision::round_bf16(v[c]), half_precision::round_f16(v[c]));
                assert_eq!(bf[c].to_bits(), b.to_bits(), "bf16 of {:e}: {} vs {b}", v[c], bf[c]);
                assert_eq!(f[c].to_bits(), h.to_bits(), "f16 of {:e}: {} vs {h}", v[c], f[c]);
                assert_eq!(round_one::<BFLOAT16>(v[c]), b);
            }
            assert_eq!(four(round_as::<F32>, v), v);
        }
        let nan = [f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001), 1.0];
        for f in [round_as::<BFLOAT16>, round_as::<FLOAT16>] {
            let y = four(f, &nan);
            assert!(y[..3].iter().all(|v| v.is_nan()) && y[3] == 1.0, "{y:?}");
        }
    }

    #[test]
    fn rounded_dot_rows_are_bit_identical_to_their_portable_twin() {
        for kind in KINDS {
            let (_, w) = quantized(kind, 37, 608);
            for m in 1..=8 {
                let x: Vec<f32> =
                    inputs(m, 608, m).iter().map(|&v| half_precision::round_bf16(v)).collect();
                for bf16 in [true, false] {
                    let (mut ours, mut twin) = (vec![0f32; 37 * m], vec![0f32; 37 * m]);
                    dot_rows_rounded(&w, &x, m, 0, &mut ours, bf16);
                    if bf16 {
                        portable::dot_rows_rounded::<true>(&w, &x, m, 0, &mut twin);
                    } else {
                        portable::dot_rows_rounded::<false>(&w, &x, m, 0, &mut twin);
                    }
                    for (a, b) in ours.iter().zip(&twin) {
                        assert_eq!(a.to_bits(), b.to_bits(), "{kind:?} m={m} bf16={bf16}");
                    }
                    let mut part = vec![0f32; 5 * m];
                    dot_rows_rounded(&w, &x, m, 30, &mut part, bf16);
                    assert_eq!(part, ours[30 * m..35 * m], "{kind:?} m={m}, rows 30..35");
                }
            }
        }
    }

    #[test]
    fn rounded_panel_rows_round_each_weight_and_sum_in_order() {
        for kind in KINDS {
            let (rows, k) = (21, 64);
            let (_, w) = quantized(kind, rows, k);
            for (half, round) in [(Half::Bf16, true), (Half::F16, false)] {
                let r = |v: f32| {
                    if round {
                        half_precision::round_bf16(v)
                    } else {
                        half_precision::round_f16(v)
                    }
                };
                for m in [9, 13] {
                    let x: Vec<f32> = inputs(m, k, m).iter().map(|&v| r(v)).collect();
                    let packed = Packed::new(&x, m, k);
                    let (first, len) = (2, 17);
                    let mut ours = vec![f32::NAN; m * len];
                    panel_rows(&w, &packed, first, len, Some(half), |i, j, run| {
                        ours[i * len + j - first..][..run.len()].copy_from_slice(run);
                    });
                    let mut row = vec![0f32; k];
                    for c in 0..len {
                        w.dequantize_row(first + c, &mut row);
                        row.iter_mut().for_each(|v| *v = r(*v));
                        for (i, xi) in x.chunks_exact(k).enumerate() {
                            let want = row.iter().zip(xi).fold(0f32, |s, (&a, &b)| a.mul_add(b, s));
                            let got = ours[i * len + c];
                            assert_eq!(got.to_bits(), want.to_bits(), "{kind:?} {half:?} m={m}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rounded_attention_rows_round_to_their_dtype_and_equal_their_portable_twin() {
        portable::check_rounded_attention_rows(
            attention_rows_rounded::<true>,
            attention_rows_rounded::<false>,
        );
    }

    #[test]
    fn rms_norm_row_is_bit_identical_to_its_portable_twin() {
        for c in [1, 3, 4, 16, 37, 576] {
            let x = inputs(1, c, c);
            let weight = inputs(1, c, 2 * c + 1);
            let (mut ours, mut twin) = (vec![0f32; c], vec![0f32; c]);
            rms_norm_row(&x, &weight, 1e-5, &mut ours);
            portable::rms_norm_row(&x, &weight, 1e-5, &mut twin);
            assert_eq!(ours, twin, "{c} values");
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        let xs: Vec<f32> = (0..200_000).map(|i| -87.0 + i as f32 * (175.5 / 200_000.0)).collect();
        let exp = |x: [f32; 4]| {
            let mut y = [0f32; 4];
            // SAFETY: every aarch64 CPU has NEON.
            unsafe { vst1q_f32(y.as_mut_ptr(), exp4(vld1q_f32(x.as_ptr()))) };
            y
        };
        for chunk in xs.chunks_exact(4) {
            let got = exp(chunk.try_into().unwrap());
            for (&x, &y) in chunk.iter().zip(&got) {
                let exact = (x as f64).exp();
                let ulp = (exact as f32).next_up() as f64 - exact as f32 as f64;
                worst = worst.max((y as f64 - exact).abs() / ulp);
            }
        }
        assert!(worst <= 2.0, "{worst} ulp");
        let edges = [-1000.0, -87.33, 0.0, 88.7, 1000.0, f32::NEG_INFINITY, 1e-8, -1e-8];
        for four in edges.chunks_exact(4) {
            let got = exp(four.try_into().unwrap());
            for (&x, &y) in four.iter().zip(&got) {
                let e = if x < -87.33 { 0.0 } else { (x as f64).exp() };
                assert!(y as f64 == e || (y as f64 - e).abs() <= 1e-6 * e, "e^{x}: {y} vs {e}");
            }
        }
        assert!(exp([f32::NAN; 4]).iter().all(|v| v.is_nan()));
        // n = 128 at the top of the range: 2^128 in two steps, still finite.
        assert!(exp([88.72; 4]).iter().all(|v| v.is_finite() && *v > 3.3e38));
    }

    #[test]
    fn silu_mul_and_softmax_equal_their_portable_twins() {
        for n in [1, 3, 4, 37] {
            let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 18.0) * 0.7).collect();
            let up: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.1).collect();
            let (mut ours, mut twin) = (vec![0f32; n], vec![0f32; n]);
            silu_mul(&gate, &up, &mut ours);
            portable::silu_mul(&gate, &up, &mut twin);
            for (i, (a, b)) in ours.iter().zip(&twin).enumerate() {
                assert!((a - b).abs() <= 4e-7 * b.abs().max(1e-3), "silu {n}: {i}: {a} vs {b}");
            }
            let mut row = gate.clone();
            if n > 1 {
                row[n / 2] = f32::NEG_INFINITY; // a masked position
            }
            let mut twin = row.clone();
            softmax(&mut row);
            portable::softmax(&mut twin);
            if n > 1 {
                assert_eq!(
                    row[n / 2],
                    0.0,
                    "{n}: a masked position has probability {}",
                    row[n / 2]
                );
            }
            for (i, (a, b)) in row.iter().zip(&twin).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.max(1e-6), "softmax {n}: {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn attention_rows_equal_their_portable_twin() {
        // Key counts and head sizes with and without a tail past the 16-wide steps; a causal
        // mask hiding whole steps of keys from every query.
        for (s, d) in [(1, 64), (5, 16), (16, 64), (37, 20), (70, 64)] {
            for rows in 1..=QUERY_BLOCK {
                let queries = inputs(rows, d, s);
                let keys_t = inputs(d, s, 7);
                let values = inputs(s, d, 11);
                let causal: Vec<f32> = (0..rows * s)
                    .map(|i| if i % s > i / s + 2 { f32::NEG_INFINITY } else { 0.0 })
                    .collect();
                for masks in [None, Some(causal.as_slice())] {
                    let (mut probs, mut out) = (vec![0f32; rows * s], vec![0f32; rows * d]);
                    attention_rows(
                        rows, &queries, &keys_t, &values, masks, 0.125, &mut probs, &mut out,
                    );
                    for r in 0..rows {
                        let (mut p, mut o) = (vec![0f32; s], vec![0f32; d]);
                        let mask = masks.map(|m| &m[r * s..(r + 1) * s]);
                        let query = &queries[r * d..(r + 1) * d];
                        portable::attention_row(
                            query, &keys_t, &values, mask, 0.125, &mut p, &mut o,
                        );
                        let what = format!("s={s} d={d} rows={rows} mask={}", masks.is_some());
                        for (a, b) in probs[r * s..(r + 1) * s].iter().zip(&p) {
                            assert!((a - b).abs() <= 1e-6, "{what}: probs {a} vs {b}");
                        }
                        for (a, b) in out[r * d..(r + 1) * d].iter().zip(&o) {
                            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}
