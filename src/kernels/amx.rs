//! The long-prompt product on Intel AMX (Sapphire Rapids and later), still the exact path.
//!
//! AMX multiplies bf16 tiles (16 x 32 values, 8 significant bits each) and adds the products in
//! f32, 16 x 16 x 32 multiply-adds per instruction: about 15 times the f32 throughput of AVX-512
//! on this kind of CPU. Two facts keep the results at f32 precision:
//!
//! * A block's weights are `d * q + m` with small integers q (0..15 for Q4_1, -8..7 for Q4_0,
//!   -128..127 for Q8_0), and every such integer *is* a bf16 value. So a block's products are
//!   `w . x = d * (q . x) + m * sum(x)`, with q as it is in the file and d applied in f32
//!   afterwards, once per block (the formula of the decode kernel in `simd.rs`, and of ggml).
//! * Every f32 input is split *exactly* into three bf16 parts, `x = hi + mid + lo` (hi is x
//!   rounded to 8 bits, mid the remainder rounded to 8 bits, lo what is left, at most 8 bits).
//!   Then `q . x = q . x_hi + q . x_mid + q . x_lo` with nothing dropped: each product of two
//!   bf16 values is exact in f32, and AMX adds them in f32.
//!
//! Q4_1's offsets m (one f16 per block, so exactly two bf16 parts) are weights of their own,
//! taken with the inputs' block sums (f32, three parts) as extra "columns": `sum over blocks of
//! m * sum(x)` is one more tile product per 32 blocks, of five part products (the sixth, lo times
//! m's second part, is below 2^-25 of each term, half of f32's unit roundoff, and left out: lo is
//! at most 2^-17 of the sum, m's second part at most 2^-8 of m).
//!
//! The result is an f32 dot product of the dequantized weights with the f32 inputs, the terms
//! grouped per block and added in another order (tested against f64 sums within a few f32
//! roundings of the terms' size); with three bf16 products per f32 product, AMX still has about
//! five times AVX-512's f32 peak. One caveat: AMX treats values below 2^-126 as zero, so the lo
//! part of an input smaller than about 2^-110 is lost (RMS-normed activations are nowhere near).
//!
//! Layout: the weights' integers are the A operand (16 weight rows x one block of 32 columns per
//! tile, row-major) and the inputs the B operand (16 pairs of columns x 16 inputs, "VNNI" pairs,
//! see [`Packed`]), so C (16 weight rows x 16 inputs) is a piece of the transposed output. A step
//! takes 32 weight rows x 32 inputs: the offsets' products start its f32 results; then per block,
//! 2 x 2 C tiles from three products each, stored and added times d to the results (two blocks
//! per pass over them); at the end the results are transposed into the output.
//!
//! Measured on this kind of CPU (see docs/performance.md): the tile unit does one `tdpbf16ps` in
//! about 16 cycles, but AVX-512 loads and shuffles barely overlap with it, so the time is close to
//! the sum of the tile work and the AVX-512 work around it; the design keeps the latter small.

use super::avx512::{self as simd, Columns, RowScales, Q4_0, Q4_1, Q8_0};
use super::blocks::{BlockMatrix, BLOCK};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Blocks whose products are stored before they are scaled and added to the results in one pass.
const EPILOGUE_BLOCKS: usize = 2;
/// bf16 parts each f32 is split into.
const PARTS: usize = 3;
/// Weight rows per step: two tiles of 16.
pub const NR: usize = 32;
/// Inputs per step: two tiles of 16.
const MR: usize = 32;
/// Bytes of one tile: 16 rows of 64 bytes.
const TILE_BYTES: usize = 1024;
/// Tiles per k-tile (32 columns: a block, or 32 block sums) of a group of inputs: PARTS parts x 2
/// tiles of 16 inputs.
const GROUP_TILES: usize = PARTS * 2;

/// Whether the AMX kernel runs here: a CPU with AMX-TILE and AMX-BF16 (and the AVX-512 that
/// packs for it), and a kernel that lets this process use the tile registers.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        simd::available()
            && is_x86_feature_detected!("avx512bf16")
            && cpu_has_amx()
            && request_permission()
    })
}

fn cpu_has_amx() -> bool {
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 is AMX-BF16, bit 24 AMX-TILE.
    let max_leaf = __cpuid(0).eax;
    let edx = if max_leaf >= 7 { __cpuid_count(7, 0).edx } else { 0 };
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Linux hands out the tile registers' 8 KiB of state only to processes that ask (once, for all
/// their threads).
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request about this process's permissions; no memory is passed.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// One tile's bytes: 16 rows of 64, 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([u8; TILE_BYTES]);

const ZERO_TILE: Tile = Tile([0; TILE_BYTES]);

/// The tile registers configured for this kernel (all eight 16 rows x 64 bytes) on this thread,
/// released again when dropped.
pub struct TileRegisters;

impl TileRegisters {
    /// # Safety
    /// [`available`] must have returned true.
    pub unsafe fn configure() -> Self {
        #[repr(C, align(64))]
        struct Config {
            palette: u8,
            start_row: u8,
            reserved: [u8; 14],
            bytes_per_row: [u16; 16],
            rows: [u8; 16],
        }
        let mut config = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        config.bytes_per_row[..8].fill(64);
        config.rows[..8].fill(16);
        // SAFETY: the CPU has AMX and the process may use it (the caller's promise); the
        // configuration is 64 valid bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
        TileRegisters
    }
}

impl Drop for TileRegisters {
    fn drop(&mut self) {
        // SAFETY: only made by configure(), so AMX is usable here.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Splits 32 f32 values (`a` the first 16, `b` the next) into three bf16 parts, each 32 values
/// in order in one register, with hi + mid + lo = v exactly: hi is v rounded to bf16 (to
/// nearest, ties to even), mid the remainder rounded, lo what is left (at most 8 bits). Values
/// too large to round without reaching infinity are cut to bf16 instead, so they split exactly
/// too.
#[inline(always)]
unsafe fn split(a: __m512, b: __m512) -> [__m512i; PARTS] {
    let hi = bf16(below_bf16_max(a), below_bf16_max(b));
    let (hi_a, hi_b) = widen(hi);
    let (rest_a, rest_b) = (_mm512_sub_ps(a, hi_a), _mm512_sub_ps(b, hi_b)); // exact
    let mid = bf16(rest_a, rest_b);
    let (mid_a, mid_b) = widen(mid);
    let lo = bf16(_mm512_sub_ps(rest_a, mid_a), _mm512_sub_ps(rest_b, mid_b)); // exact
    [hi, mid, lo]
}

/// v, with the values that round to infinity in bf16 cut to bf16 (their low 16 bits cleared).
#[inline(always)]
unsafe fn below_bf16_max(v: __m512) -> __m512 {
    let bits = _mm512_castps_si512(v);
    let magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFF_FFFF));
    let huge = _mm512_cmpge_epu32_mask(magnitude, _mm512_set1_epi32(0x7F7F_8000));
    let cut = _mm512_mask_and_epi32(bits, huge, bits, _mm512_set1_epi32(0xFFFF_0000_u32 as i32));
    _mm512_castsi512_ps(cut)
}

/// 32 f32 values rounded to bf16 (to nearest, ties to even), in order.
#[inline(always)]
unsafe fn bf16(a: __m512, b: __m512) -> __m512i {
    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a))
}

/// 32 bf16 values back as f32, 16 and 16 (exact).
#[inline(always)]
unsafe fn widen(v: __m512i) -> (__m512, __m512) {
    let a = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v));
    let b = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1));
    (_mm512_castsi512_ps(_mm512_slli_epi32(a, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)))
}

/// The inputs split into bf16 parts in AMX's B layout, in groups of `MR` = 32 inputs (zeros past
/// the last). A row of inputs is extended by its sums over each block of 32 columns (Q4_1's
/// offsets m multiply them), zero-padded to a multiple of 32: `k / 32 + blocks.div_ceil(32)`
/// "k-tiles" of 32 columns. For group g, k-tile kc, part p and half t of the group, tile
/// `((g * ktiles + kc) * PARTS + p) * 2 + t` has in row r the pairs
/// `(x[i][32kc + 2r], x[i][32kc + 2r + 1])` of inputs `i = 32g + 16t + 0..16` ("VNNI" pairs).
pub struct Packed {
    tiles: Vec<Tile>,
    m: usize,
    k: usize,
}

impl Packed {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert!(available() && k.is_multiple_of(BLOCK) && x.len() == m * k);
        let group_tiles = input_ktiles(k) * GROUP_TILES;
        let len = m.div_ceil(MR) * group_tiles;
        let mut tiles = Vec::with_capacity(len);
        let spare = &mut tiles.spare_capacity_mut()[..len];
        super::team::for_each_chunk(spare, group_tiles, |g, group| {
            for t in 0..2 {
                let first = (g * MR + 16 * t).min(m);
                let inputs = &x[first * k..(first + 16).min(m) * k];
                // SAFETY: the CPU has AVX-512 and its BF16 extension (asserted above).
                unsafe { pack_inputs(inputs, k, t, group) };
            }
        });
        // SAFETY: pack_inputs wrote every tile of both halves of every group.
        unsafe { tiles.set_len(len) };
        Packed { tiles, m, k }
    }

    fn group(&self, g: usize) -> *const u8 {
        let group_tiles = input_ktiles(self.k) * GROUP_TILES;
        self.tiles[g * group_tiles..(g + 1) * group_tiles].as_ptr() as *const u8
    }
}

/// k-tiles of an input row of k values: its k / 32 blocks, then its block sums.
fn input_ktiles(k: usize) -> usize {
    k / BLOCK + sum_ktiles(k / BLOCK)
}

/// k-tiles that hold one value per block (the block sums of x, the offsets m of Q4_1).
fn sum_ktiles(blocks: usize) -> usize {
    blocks.div_ceil(BLOCK)
}

/// Writes up to 16 inputs (`x`, rows of k values; zeros for the missing ones) as half t of a
/// group's tiles: k-tile by k-tile, each input's 16 pairs per part, transposed so that tile row
/// r holds pair r of every input; then the same for the inputs' block sums.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_inputs(x: &[f32], k: usize, t: usize, group: &mut [MaybeUninit<Tile>]) {
    let (inputs, blocks) = (x.len() / k, k / BLOCK);
    let ktiles = input_ktiles(k);
    assert!(inputs <= 16 && group.len() == ktiles * GROUP_TILES);
    // Each input's block sums, zero-padded to whole k-tiles.
    let mut sums = vec![0f32; 16 * sum_ktiles(blocks) * BLOCK];
    let sums_row = sum_ktiles(blocks) * BLOCK;
    let mut parts = [[_mm512_setzero_si512(); 16]; PARTS];
    for kc in 0..ktiles {
        #[allow(clippy::needless_range_loop)] // i indexes the second dimension of parts
        for i in 0..inputs {
            let values = if kc < blocks {
                x.as_ptr().add(i * k + kc * BLOCK)
            } else {
                sums.as_ptr().add(i * sums_row + (kc - blocks) * BLOCK)
            };
            let (lo, hi) = (_mm512_loadu_ps(values), _mm512_loadu_ps(values.add(16)));
            if kc < blocks {
                sums[i * sums_row + kc] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
            }
            let split = split(lo, hi);
            for p in 0..PARTS {
                parts[p][i] = split[p];
            }
        }
        for (p, part) in parts.iter().enumerate() {
            let tile = group[(kc * PARTS + p) * 2 + t].as_mut_ptr() as *mut __m512i;
            for (r, line) in transpose(part).into_iter().enumerate() {
                _mm512_store_si512(tile.add(r), line);
            }
        }
    }
}

/// The transpose of a 16 x 16 matrix of 32-bit values held as 16 rows.
#[inline(always)]
unsafe fn transpose(rows: &[__m512i; 16]) -> [__m512i; 16] {
    // 32-bit, then 64-bit interleaves within each 128-bit lane L: afterwards lane L of
    // quads[4q + c] holds column 4L + c of rows 4q..4q + 4. (Loops, not closures: a closure
    // does not inherit its caller's target features, so each intrinsic in it can become a call.)
    let mut pairs = [_mm512_setzero_si512(); 16];
    for i in (0..16).step_by(2) {
        pairs[i] = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
        pairs[i + 1] = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
    }
    let mut quads = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        for h in 0..2 {
            let (a, b) = (pairs[4 * q + h], pairs[4 * q + h + 2]);
            quads[4 * q + 2 * h] = _mm512_unpacklo_epi64(a, b);
            quads[4 * q + 2 * h + 1] = _mm512_unpackhi_epi64(a, b);
        }
    }
    // Then gather the lanes: column 4L + c is lane L of quads[c], quads[4 + c], quads[8 + c],
    // quads[12 + c].
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let even_lanes_01 = _mm512_shuffle_i32x4::<0x88>(quads[c], quads[4 + c]);
        let odd_lanes_01 = _mm512_shuffle_i32x4::<0xDD>(quads[c], quads[4 + c]);
        let even_lanes_23 = _mm512_shuffle_i32x4::<0x88>(quads[8 + c], quads[12 + c]);
        let odd_lanes_23 = _mm512_shuffle_i32x4::<0xDD>(quads[8 + c], quads[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(even_lanes_01, even_lanes_23);
        out[8 + c] = _mm512_shuffle_i32x4::<0xDD>(even_lanes_01, even_lanes_23);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(odd_lanes_01, odd_lanes_23);
        out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(odd_lanes_01, odd_lanes_23);
    }
    out
}

/// `out[i][j] = W[j] . x[i]` for the columns j of the window and every input row i < m
/// (`packed` holds x). The window's width is best a multiple of [`NR`].
pub fn panel_rows(w: &BlockMatrix, packed: &Packed, out: &mut Columns) {
    assert!(available(), "the AMX kernel needs AMX");
    // SAFETY: the CPU has AMX and AVX-512, and the process may use AMX (checked above).
    unsafe {
        match simd::kind_id(w.kind) {
            Q4_0 => panel_rows_k::<Q4_0>(w, packed, out),
            Q4_1 => panel_rows_k::<Q4_1>(w, packed, out),
            _ => panel_rows_k::<Q8_0>(w, packed, out),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16,fma,f16c")]
unsafe fn panel_rows_k<const K: u8>(w: &BlockMatrix, packed: &Packed, out: &mut Columns) {
    let (k, m) = (w.cols, out.rows());
    let blocks = k / BLOCK;
    assert!(packed.k == k && packed.m == m && out.matrix_columns() == w.rows);
    let (first, width) = out.window();
    let data = w.bytes.as_slice();
    let bb = w.kind.block_bytes();
    let rb = blocks * bb;
    assert!((first + width) * rb <= data.len());
    // Q4_1's offsets m, one per block, are weights of their own (see the module's notes).
    let offset_tiles = if K == Q4_1 { sum_ktiles(blocks) } else { 0 };
    // NR weight rows' integers as bf16, 2 tiles per block (rows 0..16, 16..32), then Q4_1's
    // offsets in two bf16 parts, 4 tiles per k-tile (part p, half t at 2p + t): a buffer of this
    // thread's, kept between calls (every tile is written before it is read).
    thread_local! {
        static STEP: RefCell<Vec<Tile>> = const { RefCell::new(Vec::new()) };
    }
    let step_tiles = blocks * 2 + offset_tiles * 4;
    let mut step = STEP.take();
    if step.len() < step_tiles {
        step.resize(step_tiles, ZERO_TILE);
    }
    let mut scales = RowScales::new(blocks);
    let mut d = vec![0f32; blocks * NR]; // the step's scales, block-major: d[kc * NR + r]
    let groups = m.div_ceil(MR);
    let mut acc = vec![0f32; NR * MR]; // one group's results, weight rows x inputs
    let mut c = [[[0f32; 256]; 4]; EPILOGUE_BLOCKS]; // the C tiles of a few blocks, stored
    let _registers = TileRegisters::configure();
    for p0 in (0..width).step_by(NR) {
        let nr = NR.min(width - p0);
        super::blocks::prefetch(data, (first + p0 + NR) * rb, NR * rb);
        let tiles = step.as_mut_ptr();
        for r in 0..NR {
            // Row r of tile `tile` + r / 16 (inside `step`: its length was checked above).
            let line = |tile: usize| (tiles.add(tile + r / 16) as *mut u8).add((r % 16) * 64);
            let line = |tile: usize| line(tile) as *mut __m512i;
            if r >= nr {
                for kc in 0..blocks {
                    _mm512_store_si512(line(kc * 2), _mm512_setzero_si512());
                    d[kc * NR + r] = 0.0;
                }
                for t in 0..offset_tiles * 2 {
                    _mm512_store_si512(line(blocks * 2 + t * 2), _mm512_setzero_si512());
                }
                continue;
            }
            let row = data.as_ptr().add((first + p0 + r) * rb);
            scales.read::<K>(row, blocks, bb);
            for kc in 0..blocks {
                let (lo, hi) = simd::integers::<K>(row.add(kc * bb));
                _mm512_store_si512(line(kc * 2), bf16(lo, hi)); // exact: |q| <= 128
                d[kc * NR + r] = scales.d[kc];
            }
            for j in 0..offset_tiles {
                // Q4_1's m: an f16 value, so its first two parts are all of it.
                let at = j * BLOCK;
                let mask = |from: usize| ((1u32 << blocks.saturating_sub(from).min(16)) - 1) as u16;
                let m = scales.m.as_ptr();
                let parts = split(
                    _mm512_maskz_loadu_ps(mask(at), m.wrapping_add(at)),
                    _mm512_maskz_loadu_ps(mask(at + 16), m.wrapping_add(at + 16)),
                );
                for (p, &part) in parts[..2].iter().enumerate() {
                    _mm512_store_si512(line(blocks * 2 + (j * 2 + p) * 2), part);
                }
            }
        }
        for g in 0..groups {
            let inputs = packed.group(g);
            let b = |kc: usize| inputs.add(kc * GROUP_TILES * TILE_BYTES);
            // acc starts as Q4_1's m . sums(x) (tile products, 5 per k-tile), or zeros.
            zero_sums();
            for j in 0..offset_tiles {
                let a = (step.as_ptr() as *const u8).add((blocks * 2 + j * 4) * TILE_BYTES);
                offset_products(a, b(blocks + j));
            }
            store_sums_strided(acc.as_mut_ptr());
            // EPILOGUE_BLOCKS blocks at a time: acc[n][i] += d[n] * (q_n . x_i over each block).
            for kc in (0..blocks).step_by(EPILOGUE_BLOCKS) {
                let count = (blocks - kc).min(EPILOGUE_BLOCKS);
                for (h, c) in c.iter_mut().enumerate().take(count) {
                    let a = (step.as_ptr() as *const u8).add((kc + h) * 2 * TILE_BYTES);
                    block_products(a, b(kc + h), c);
                }
                for n in 0..NR {
                    for t in 0..2 {
                        let tile = 2 * (n / 16) + t;
                        let at = acc.as_mut_ptr().add(n * MR + 16 * t);
                        let mut v = _mm512_loadu_ps(at);
                        for (h, c) in c.iter().enumerate().take(count) {
                            let scale = _mm512_set1_ps(*d.get_unchecked((kc + h) * NR + n));
                            let dots = _mm512_loadu_ps(c[tile].as_ptr().add(16 * (n % 16)));
                            v = _mm512_fmadd_ps(dots, scale, v);
                        }
                        _mm512_storeu_ps(at, v);
                    }
                }
            }
            // acc[n][i]: an input's 32 results are a column of acc; transposed in 16 x 16 blocks.
            for t in 0..2 {
                let block = |half: usize| {
                    let mut rows = [_mm512_setzero_si512(); 16];
                    for (r, row) in rows.iter_mut().enumerate() {
                        let at = acc.as_ptr().add((16 * half + r) * MR + 16 * t);
                        *row = _mm512_loadu_si512(at as *const _);
                    }
                    transpose(&rows)
                };
                let (low, high) = (block(0), block(1));
                for i in 0..16.min(m.saturating_sub(g * MR + 16 * t)) {
                    let (a, b) = (_mm512_castsi512_ps(low[i]), _mm512_castsi512_ps(high[i]));
                    out.store_run32(g * MR + 16 * t + i, p0, a, b, nr);
                }
            }
        }
    }
    STEP.set(step);
}

/// The four tile products of a 2 x 2 step, as asm text: C tiles tmm0..tmm3 += the weights'
/// tiles tmm4, tmm5 times the inputs' tiles tmm6, tmm7 (tmm0 = tmm4 . tmm6, tmm1 = tmm4 . tmm7,
/// tmm2 = tmm5 . tmm6, tmm3 = tmm5 . tmm7).
macro_rules! products_2x2 {
    () => {
        concat!(
            "tdpbf16ps tmm0, tmm4, tmm6\n",
            "tdpbf16ps tmm1, tmm4, tmm7\n",
            "tdpbf16ps tmm2, tmm5, tmm6\n",
            "tdpbf16ps tmm3, tmm5, tmm7",
        )
    };
}

/// Clears the sums tmm0..tmm3: (weight rows, inputs) = (0..16, 0..16), (0..16, 16..32),
/// (16..32, 0..16), (16..32, 16..32).
#[inline(always)]
unsafe fn zero_sums() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Stores tmm0..tmm3 into `acc`, a group's results (NR weight rows x MR inputs, row-major).
#[inline(always)]
unsafe fn store_sums_strided(acc: *mut f32) {
    asm!(
        "tilestored [{c} + {s}*1], tmm0",
        "tilestored [{c} + {s}*1 + 64], tmm1",
        "tilestored [{c} + {s}*1 + 2048], tmm2",
        "tilestored [{c} + {s}*1 + 2112], tmm3",
        c = in(reg) acc,
        s = in(reg) MR * 4,
        options(nostack),
    );
}

/// Adds one k-tile of Q4_1's offsets times the inputs' block sums to tmm0..tmm3: `a` the
/// offsets' tiles (part p, half t at `(2p + t) * 1024`), `b` a group's sums tiles (the same,
/// three parts). With s = s0 + s1 + s2 and m = m0 + m1, the five products s_i . m_j with
/// i + j <= 2: s2 . m1 is below 2^-25 of |s| |m| per term (|s2| <= 2^-17 |s|, |m1| <= 2^-8 |m|),
/// half of f32's unit roundoff, and left out. The order reuses the loaded tiles (roughly the
/// smallest first).
#[inline(always)]
unsafe fn offset_products(a: *const u8, b: *const u8) {
    asm!(
        "tileloadd tmm4, [{a} + {s}*1]",
        "tileloadd tmm5, [{a} + {s}*1 + 1024]",
        // x2 . w0
        "tileloadd tmm6, [{b} + {s}*1 + 4096]",
        "tileloadd tmm7, [{b} + {s}*1 + 5120]",
        products_2x2!(),
        // x1 . w0
        "tileloadd tmm6, [{b} + {s}*1 + 2048]",
        "tileloadd tmm7, [{b} + {s}*1 + 3072]",
        products_2x2!(),
        // x1 . w1
        "tileloadd tmm4, [{a} + {s}*1 + 2048]",
        "tileloadd tmm5, [{a} + {s}*1 + 3072]",
        products_2x2!(),
        // x0 . w1
        "tileloadd tmm6, [{b} + {s}*1]",
        "tileloadd tmm7, [{b} + {s}*1 + 1024]",
        products_2x2!(),
        // x0 . w0
        "tileloadd tmm4, [{a} + {s}*1]",
        "tileloadd tmm5, [{a} + {s}*1 + 1024]",
        products_2x2!(),
        a = in(reg) a,
        b = in(reg) b,
        s = in(reg) 64usize,
        options(nostack, readonly),
    );
}

/// The products of one block for one step: `a` the two tiles of the weights' integers (rows
/// 0..16, 16..32), `b` a group's six tiles of inputs (hi, mid, lo for inputs 0..16 and 16..32);
/// the three parts are summed into four C tiles, stored to `c`: (w rows, inputs) = (0..16,
/// 0..16), (0..16, 16..32), (16..32, 0..16), (16..32, 16..32).
#[inline(always)]
unsafe fn block_products(a: *const u8, b: *const u8, c: &mut [[f32; 256]; 4]) {
    zero_sums();
    asm!(
        "tileloadd tmm4, [{a} + {s}*1]",
        "tileloadd tmm5, [{a} + {s}*1 + 1024]",
        // q . x_hi
        "tileloadd tmm6, [{b} + {s}*1]",
        "tileloadd tmm7, [{b} + {s}*1 + 1024]",
        products_2x2!(),
        // q . x_mid
        "tileloadd tmm6, [{b} + {s}*1 + 2048]",
        "tileloadd tmm7, [{b} + {s}*1 + 3072]",
        products_2x2!(),
        // q . x_lo
        "tileloadd tmm6, [{b} + {s}*1 + 4096]",
        "tileloadd tmm7, [{b} + {s}*1 + 5120]",
        products_2x2!(),
        "tilestored [{c} + {s}*1], tmm0",
        "tilestored [{c} + {s}*1 + 1024], tmm1",
        "tilestored [{c} + {s}*1 + 2048], tmm2",
        "tilestored [{c} + {s}*1 + 3072], tmm3",
        a = in(reg) a,
        b = in(reg) b,
        c = in(reg) c.as_mut_ptr(),
        s = in(reg) 64usize,
        options(nostack),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::avx512::column_windows;
    use crate::kernels::blocks::quantized;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // A small xorshift: values over many binades, both signs.
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mantissa = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let scale = 2f32.powi((s % 24) as i32 - 12);
                mantissa * scale
            })
            .collect()
    }

    #[test]
    fn the_three_parts_add_up_to_the_value_exactly() {
        if !available() {
            eprintln!("no AMX here: the AMX kernel is not used on this machine");
            return;
        }
        let mut x = values(4096, 7);
        x.extend([f32::MAX, f32::MIN_POSITIVE, -1e-30, 0.0, -0.0, 1.0, 3.0000002, 65504.0]);
        x.resize(x.len().next_multiple_of(32), 0.5);
        for chunk in x.chunks_exact(32) {
            // SAFETY: the CPU has AVX-512 with BF16 (checked above).
            let parts = unsafe { split_values(chunk) };
            for (i, &v) in chunk.iter().enumerate() {
                let f = |b: u16| f32::from_bits((b as u32) << 16) as f64;
                let sum = f(parts[0][i]) + f(parts[1][i]) + f(parts[2][i]);
                assert_eq!(sum, v as f64, "{v:e}");
                // Rounded to nearest, except the few values cut to stay finite.
                let cut = v.abs() > 3.38e38;
                let (mid, lo) = if cut { (128.0, 32768.0) } else { (256.0, 65536.0) };
                assert!(f(parts[1][i]).abs() <= v.abs() as f64 / mid, "{v:e}");
                assert!(f(parts[2][i]).abs() <= v.abs() as f64 / lo, "{v:e}");
            }
        }
    }

    #[test]
    fn transpose_of_16_by_16() {
        if !simd::available() {
            return;
        }
        let m: [[i32; 16]; 16] =
            std::array::from_fn(|i| std::array::from_fn(|j| (i * 16 + j) as i32));
        // SAFETY: the CPU has AVX-512 (checked above).
        let t = unsafe {
            let rows = m.map(|r| std::mem::transmute::<[i32; 16], __m512i>(r));
            transpose(&rows).map(|r| std::mem::transmute::<__m512i, [i32; 16]>(r))
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(t[j][i], m[i][j], "[{j}][{i}]");
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn split_values(v: &[f32]) -> [[u16; 32]; PARTS] {
        let parts = split(_mm512_loadu_ps(v.as_ptr()), _mm512_loadu_ps(v.as_ptr().add(16)));
        parts.map(|p| std::mem::transmute::<__m512i, [u16; 32]>(p))
    }

    /// The AMX products against f64 sums over the dequantized weights, for every block type, in
    /// shapes with partial steps (rows and inputs not multiples of 32) and several windows.
    #[test]
    fn products_equal_f64_dot_products_within_f32_rounding() {
        if !available() {
            eprintln!("no AMX here: the AMX kernel is not used on this machine");
            return;
        }
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // Blocks: 2, 19, 3, 1 and 34 (two k-tiles of Q4_1 offsets, the second partial).
            let shapes = [(45, 64, 9), (32, 608, 33), (70, 96, 128), (16, 32, 1), (40, 1088, 20)];
            for ((rows, k, m), width) in shapes.into_iter().flat_map(|s| [(s, NR), (s, 2 * NR)]) {
                let (_, w) = quantized(kind, rows, k);
                let dense: Vec<f32> =
                    w.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let x = values(m * k, rows as u64 * 31 + k as u64);
                let packed = Packed::new(&x, m, k);
                let mut out = vec![MaybeUninit::new(f32::NAN); m * rows];
                // Windows of one step, and of two (the step buffer used again).
                for mut window in column_windows(&mut out, m, rows, width) {
                    panel_rows(&w, &packed, &mut window);
                }
                // SAFETY: initialized above (and then overwritten by the kernel).
                let out: Vec<f32> = out.into_iter().map(|v| unsafe { v.assume_init() }).collect();
                // Q4_1's offset m of each block (the kernel adds m * sum(x) and d * (q . x)).
                let bytes = w.bytes.as_slice();
                let offset = |j: usize, c: usize| -> f64 {
                    if w.kind != crate::kernels::blocks::BlockType::Q4_1 {
                        return 0.0;
                    }
                    let at = (j * k / BLOCK + c / BLOCK) * 20 + 2;
                    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f64()
                };
                for i in 0..m {
                    for j in 0..rows {
                        let (mut exact, mut size) = (0.0, 0.0);
                        for c in 0..k {
                            let (xv, wv, mv) =
                                (x[i * k + c] as f64, dense[j * k + c] as f64, offset(j, c));
                            exact += xv * wv;
                            // The size of the terms the kernel adds: x d q and x m.
                            size += (xv * (wv - mv)).abs() + (xv * mv).abs();
                        }
                        let got = out[i * rows + j] as f64;
                        let allowed = size * 2f64.powi(-24) * 8.0;
                        assert!(
                            (got - exact).abs() <= allowed,
                            "{kind:?} {rows}x{k} m={m} width {width} [{i}][{j}]: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}
