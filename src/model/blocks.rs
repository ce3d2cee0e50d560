//! GGUF weight matrices kept in their quantized blocks and dequantized *inside* the matrix
//! product, with f32 activations.
//!
//! The weights are those of dequantizing the whole file (`d * q + m` for Q4_1, as gguf-py,
//! transformers and candle compute it) and the activations stay f32: the result is the dot
//! product with the dequantized matrix, with the rounding of another summation order (as with
//! any other matrix library; see `dot_rows_generic`). Embedding rows and the AVX-512
//! long-prompt path are dequantized bit for bit; the AMX path and the short-input kernels add
//! `d * (q . x) + m * sum(x)` per block (`amx.rs`, `simd.rs`). What changes is the memory
//! traffic: 0.6 bytes per weight (Q4_1) instead of 4 (f32), and no dequantization at load time.
//! This is lmscope's exact path;
//! `--quantized` (`int8.rs`, or candle's quantized matmul) also rounds the activations to 8 bits
//! and is not.
//!
//! The kernels: `simd.rs` on CPUs with AVX-512, the portable `dot_rows_generic` below elsewhere
//! (with candle's GEMM on the dequantized matrix for long inputs).

use super::team;
use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use half::f16;
use std::sync::Arc;

/// Values per block for the types handled here.
pub const BLOCK: usize = 32;

/// The block encodings lmscope multiplies directly. Other GGUF types are dequantized on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    /// `{f16 d, u8 qs[16]}`: w = d * (q - 8), q a 4-bit nibble.
    Q4_0,
    /// `{f16 d, f16 m, u8 qs[16]}`: w = d * q + m.
    Q4_1,
    /// `{f16 d, i8 qs[32]}`: w = d * q.
    Q8_0,
}

impl BlockType {
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(BlockType::Q4_0),
            GgmlDType::Q4_1 => Some(BlockType::Q4_1),
            GgmlDType::Q8_0 => Some(BlockType::Q8_0),
            _ => None,
        }
    }

    /// Bytes per block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q8_0 => 34,
        }
    }

    /// The block's integers as floats (`q`, or `q - 8` for Q4_0), its scale d and, for Q4_1, its
    /// offset m: the weights are `d * q (+ m)`.
    #[inline(always)]
    fn integers(self, block: &[u8], q: &mut [f32; BLOCK]) -> (f32, Option<f32>) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32_const();
        match self {
            BlockType::Q4_0 => {
                let qs = &block[2..18];
                for j in 0..16 {
                    q[j] = ((qs[j] & 0x0F) as i32 - 8) as f32;
                    q[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32;
                }
                (d, None)
            }
            BlockType::Q4_1 => {
                let m = f16::from_le_bytes([block[2], block[3]]).to_f32_const();
                let qs = &block[4..20];
                for j in 0..16 {
                    q[j] = (qs[j] & 0x0F) as f32;
                    q[j + 16] = (qs[j] >> 4) as f32;
                }
                (d, Some(m))
            }
            BlockType::Q8_0 => {
                for (qj, &b) in q.iter_mut().zip(&block[2..34]) {
                    *qj = b as i8 as f32;
                }
                (d, None)
            }
        }
    }

    /// Dequantizes one block into 32 f32 values: `d * q (+ m)`, a plain multiply and add (no
    /// fused multiply-add), so every value is bit-identical to a full-file dequantization.
    #[inline(always)]
    fn dequantize(self, block: &[u8], out: &mut [f32; BLOCK]) {
        let (d, offset) = self.integers(block, out);
        for w in out.iter_mut() {
            *w = match offset {
                Some(m) => *w * d + m,
                None => *w * d,
            };
        }
    }
}

/// Where a matrix's bytes live: the memory-mapped file, or a reordered copy (Q/K projections).
#[derive(Clone)]
pub enum BlockBytes {
    Mapped { map: Arc<crate::gguf::FileBytes>, start: usize, len: usize },
    Owned(Arc<Vec<u8>>),
}

impl BlockBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            BlockBytes::Mapped { map, start, len } => &map[*start..*start + *len],
            BlockBytes::Owned(v) => v,
        }
    }
}

/// A (rows, cols) weight matrix stored as quantized blocks, row by row.
#[derive(Clone)]
pub struct BlockMatrix {
    pub kind: BlockType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: BlockBytes,
}

impl std::fmt::Debug for BlockMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockMatrix({:?}, {}x{})", self.kind, self.rows, self.cols)
    }
}

/// Above this many input rows, the products switch from the row-by-row kernel (which reads each
/// block once for all inputs) to the register-blocked panel kernel (`simd::panel_rows`), or,
/// without AVX-512, to candle's GEMM on the dequantized matrix.
const GEMM_ROWS: usize = 8;

/// Products with fewer multiply-adds than this run on the calling thread.
const SERIAL_WORK: usize = 1 << 18;

impl BlockMatrix {
    pub fn new(kind: BlockType, rows: usize, cols: usize, bytes: BlockBytes) -> Result<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            bail!("a {kind:?} matrix needs a positive multiple of {BLOCK} columns, not {cols}");
        }
        let expected = rows
            .checked_mul(cols / BLOCK)
            .and_then(|blocks| blocks.checked_mul(kind.block_bytes()))
            .with_context(|| format!("a {rows}x{cols} {kind:?} matrix is too large"))?;
        let got = bytes.as_slice().len();
        if got != expected {
            bail!("a {rows}x{cols} {kind:?} matrix takes {expected} bytes, not {got}");
        }
        Ok(BlockMatrix { kind, rows, cols, bytes })
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.kind.block_bytes()
    }

    /// Reorders rows: row i of the result is row `order[i]` of self (for un-permuting Q/K).
    pub fn with_row_order(&self, order: &[usize]) -> Self {
        let rb = self.row_bytes();
        let src = self.bytes.as_slice();
        let mut out = Vec::with_capacity(src.len());
        for &r in order {
            out.extend_from_slice(&src[r * rb..(r + 1) * rb]);
        }
        BlockMatrix { bytes: BlockBytes::Owned(Arc::new(out)), ..self.clone() }
    }

    /// Dequantizes one row into `out` (cols values).
    fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let bb = self.kind.block_bytes();
        let data = &self.bytes.as_slice()[row * rb..(row + 1) * rb];
        let mut block = [0f32; BLOCK];
        for (b, chunk) in out.chunks_exact_mut(BLOCK).enumerate() {
            self.kind.dequantize(&data[b * bb..(b + 1) * bb], &mut block);
            chunk.copy_from_slice(&block);
        }
    }

    /// The given rows as an f32 tensor (rows.len(), cols): an embedding lookup.
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.rows {
                bail!("token id {id} is outside the embedding matrix ({} rows)", self.rows);
            }
            self.dequantize_row(id, &mut out[i * self.cols..(i + 1) * self.cols]);
        }
        Ok(Tensor::from_vec(out, (ids.len(), self.cols), device)?)
    }

    /// The whole matrix as an f32 tensor (rows, cols), dequantized on all cores.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        let rows = self.rows.div_ceil(4 * team::threads()).max(1);
        team::for_each_chunk(&mut out, rows * self.cols, |i, chunk| {
            for (r, row) in chunk.chunks_exact_mut(self.cols).enumerate() {
                self.dequantize_row(i * rows + r, row);
            }
        });
        Ok(Tensor::from_vec(out, (self.rows, self.cols), device)?)
    }

    /// y = x @ W.T for x: (m, cols) f32 -> (m, rows).
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Self::matmul_t_many(&[self], x)?.pop().expect("one product"))
    }

    /// y_i = x @ W_i.T for several matrices of the same input (q, k and v; gate and up): one
    /// parallel region instead of one per matrix, which saves thread wake-ups when decoding.
    /// x: (m, cols) f32 -> (m, rows_i) each.
    pub fn matmul_t_many(ws: &[&BlockMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
        if x.dims2()?.0 > GEMM_ROWS && !simd_available() {
            check_input(ws, x)?;
            return dequantized_products(ws, x);
        }
        products(ws, x, |x, m, _| {
            if m <= GEMM_ROWS {
                dot_products(ws, x, m)
            } else {
                panel_products(ws, x, m)
            }
        })
    }

    /// y_i = x @ W_i.T in ggml's quantized arithmetic (activations rounded to 8 bits per block;
    /// see `int8.rs`), for `--quantized`. x: (m, cols) f32 -> (m, rows_i) each.
    #[cfg(target_arch = "x86_64")]
    pub fn matmul_t_int8_many(ws: &[&BlockMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
        products(ws, x, |x, m, k| {
            let q = super::int8::Q8Rows::quantize(x, m, k);
            by_rows(ws, m, |w, first, out| super::int8::dot_rows(w, &q, first, out))
        })
    }
}

/// (m, k) of the input x, which must have as many columns as every matrix.
fn check_input(ws: &[&BlockMatrix], x: &Tensor) -> Result<(usize, usize)> {
    let (m, k) = x.dims2()?;
    if let Some(w) = ws.iter().find(|w| w.cols != k) {
        bail!("input has {k} features, the matrix {}", w.cols);
    }
    Ok((m, k))
}

/// Checks x and runs `compute(x's values, m, k)`, which returns each product as (m, rows_i)
/// values, row-major; returns them as tensors. With no matrices or no input rows there is nothing
/// to compute.
fn products(
    ws: &[&BlockMatrix],
    x: &Tensor,
    compute: impl FnOnce(&[f32], usize, usize) -> Vec<Vec<f32>>,
) -> Result<Vec<Tensor>> {
    let (m, k) = check_input(ws, x)?;
    let outs = if ws.is_empty() || m == 0 {
        ws.iter().map(|_| Vec::new()).collect()
    } else {
        // The input's own values (to_dtype and contiguous copy only when they must).
        let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
        super::ops::with_f32(&x, |values| compute(values, m, k))
            .context("block-matrix products need the input on the CPU")?
    };
    ws.iter()
        .zip(outs)
        .map(|(w, out)| Ok(Tensor::from_vec(out, (m, w.rows), &Device::Cpu)?))
        .collect()
}

/// x @ W_i.T for many input rows, a panel of weight rows at a time: on AMX (`amx.rs`) where the
/// CPU has it, else dequantized panels on AVX-512 (`simd.rs`). (m, rows_i) each, row-major.
#[cfg(target_arch = "x86_64")]
fn panel_products(ws: &[&BlockMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let k = x.len() / m;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if super::amx::available() {
        use super::amx::{panel_rows, Packed, NR};
        let packed = Packed::new(x, m, k); // once for all the matrices
                                           // SAFETY: amx::panel_rows writes every value of its window (its tests check them all).
        return unsafe { by_windows(ws, m, NR, |w, window| panel_rows(w, &packed, window)) };
    }
    use super::simd::{panel_rows, Packed, NR};
    let packed = Packed::new(x, m, k);
    // SAFETY: simd::panel_rows writes every value of its window (its tests check them all).
    unsafe { by_windows(ws, m, NR, |w, window| panel_rows(w, &packed, window)) }
}

/// Runs `kernel(w, window)` over windows of columns of every product (from large to small, each
/// a multiple of `step` wide but a matrix's last, all in one parallel loop) and returns the products,
/// (m, rows_i) each, row-major. The outputs start uninitialized (zeroing them cost about as
/// much as packing the inputs).
///
/// # Safety
/// `kernel` must write every value of the window it is given.
#[cfg(target_arch = "x86_64")]
unsafe fn by_windows(
    ws: &[&BlockMatrix],
    m: usize,
    step: usize,
    kernel: impl Fn(&BlockMatrix, &mut super::simd::Columns) + Sync,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.rows)).collect();
    // Windows from large to small ("guided" scheduling): each takes 1 / (2 x threads) of the
    // steps left, so the threads start on big pieces and end on small ones, and the last to
    // finish waits little for the others.
    let threads = team::threads();
    let mut left: usize = ws.iter().map(|w| w.rows.div_ceil(step)).sum();
    let mut windows = Vec::new();
    for (w, out) in ws.iter().zip(&mut outs) {
        let mut widths = Vec::new();
        let mut here = w.rows.div_ceil(step);
        while here > 0 {
            let steps = left.div_ceil(2 * threads).min(here);
            widths.push(steps * step);
            (here, left) = (here - steps, left - steps);
        }
        let spare = &mut out.spare_capacity_mut()[..m * w.rows];
        let columns = super::simd::column_windows_sized(spare, m, w.rows, &widths);
        windows.extend(columns.into_iter().map(|c| (*w, c)));
    }
    team::for_each_item(&mut windows, |(w, window)| kernel(w, window));
    for (w, out) in ws.iter().zip(&mut outs) {
        // SAFETY: the windows cover every column of every row, and the kernel writes each value
        // of its window (the caller's promise).
        unsafe { out.set_len(m * w.rows) };
    }
    outs
}

#[cfg(not(target_arch = "x86_64"))]
fn panel_products(_ws: &[&BlockMatrix], _x: &[f32], _m: usize) -> Vec<Vec<f32>> {
    unreachable!("the panel kernel exists only on x86-64")
}

/// x @ W_i.T for many input rows where the AVX-512 kernels do not run: each matrix dequantized
/// (bit for bit) and multiplied with candle's GEMM. x: (m, cols) -> (m, rows_i) each.
fn dequantized_products(ws: &[&BlockMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
    ws.iter().map(|w| Ok(x.matmul(&w.dequantize(&Device::Cpu)?.t()?)?)).collect()
}

/// x @ W_i.T for a few input rows, read straight from the blocks: (m, rows_i) each, row-major.
fn dot_products(ws: &[&BlockMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let k = x.len() / m;
    let simd = simd_available();
    let sums = if simd { simd_block_sums(x, k) } else { lane_sums(x, m, k) };
    by_rows(ws, m, |w, first, out| {
        if simd {
            #[cfg(target_arch = "x86_64")]
            super::simd::dot_rows(w, x, &sums, m, first, out);
        } else {
            dot_rows(w, x, &sums, m, first, out);
        }
    })
}

/// Runs `kernel(w, first, out_t)` over the rows of every matrix, in tasks of whole rows (all of
/// them in one parallel region), where out_t is (rows of the task, m); returns each matrix's
/// results as (m, rows), row-major.
fn by_rows(
    ws: &[&BlockMatrix],
    m: usize,
    kernel: impl Fn(&BlockMatrix, usize, &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows * m]).collect();
    let work: usize = ws.iter().map(|w| w.rows * w.cols * m).sum();
    if work < SERIAL_WORK {
        // Waking the other threads would cost more than the work.
        for (w, out) in ws.iter().zip(&mut outs) {
            kernel(w, 0, out);
        }
    } else {
        // Tasks from large to small, as in `by_windows`: 1 / (2 x threads) of the rows left,
        // 16 to 1024 rows.
        let threads = team::threads();
        let mut left: usize = ws.iter().map(|w| w.rows).sum();
        let mut tasks = Vec::new();
        for (w, out) in ws.iter().zip(&mut outs) {
            let (mut first, mut rest) = (0, out.as_mut_slice());
            while first < w.rows {
                let rows = left.div_ceil(2 * threads).clamp(16, 1024).min(w.rows - first);
                let (chunk, tail) = rest.split_at_mut(rows * m);
                tasks.push((*w, first, chunk));
                (first, rest, left) = (first + rows, tail, left.saturating_sub(rows));
            }
        }
        team::for_each_item(&mut tasks, |(w, first, out)| kernel(w, *first, out));
    }
    if m == 1 {
        return outs;
    }
    ws.iter()
        .zip(outs)
        .map(|(w, out_t)| {
            let mut out = vec![0f32; m * w.rows];
            for (j, row) in out_t.chunks_exact(m).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    out[i * w.rows + j] = v;
                }
            }
            out
        })
        .collect()
}

/// Whether products of many input rows run on lmscope's kernels here (else candle's GEMM, on
/// the dequantized matrix).
pub(super) fn own_kernels_for_many_rows() -> bool {
    simd_available()
}

/// Whether the AVX-512 kernels of `simd.rs` run on this CPU.
fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn simd_block_sums(x: &[f32], k: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::block_sums(x, k)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("only called where simd_available() ({x:?}, {k})")
    }
}

/// How many rows ahead the kernel asks the memory system for weights.
pub(super) const PREFETCH_ROWS: usize = 4;

/// Asks for `len` bytes at `start` to be brought into cache (a hint; no effect past the end).
#[inline(always)]
pub(super) fn prefetch(data: &[u8], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let end = (start + len).min(data.len());
        let mut at = start;
        while at < end {
            // SAFETY: a prefetch is only a hint and the address lies inside `data`.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    data.as_ptr().add(at) as *const i8,
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
            at += 64;
        }
    }
}

/// Per input row and block, the 8 lane sums of x: `xs[(i * blocks + b) * 8 + e]` =
/// sum over g of `x[i][32b + 8g + e]`. Q4_1's offset m multiplies these.
fn lane_sums(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let blocks = k / BLOCK;
    let mut sums = vec![0f32; m * blocks * 8];
    for (xb, s) in x.chunks_exact(BLOCK).zip(sums.chunks_exact_mut(8)) {
        for e in 0..8 {
            s[e] = (xb[e] + xb[8 + e]) + (xb[16 + e] + xb[24 + e]);
        }
    }
    sums
}

/// Computes `out[(j - first) * m + i] = W[j] · x[i]` for the rows j this slice covers.
fn dot_rows(w: &BlockMatrix, x: &[f32], xs: &[f32], m: usize, first: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, which the function is compiled for (8-lane
            // vectors and fused multiply-adds instead of the baseline's 4 lanes).
            unsafe { dot_rows_avx2(w, x, xs, m, first, out) };
            return;
        }
    }
    dot_rows_generic::<false>(w, x, xs, m, first, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(
    w: &BlockMatrix,
    x: &[f32],
    xs: &[f32],
    m: usize,
    first: usize,
    out: &mut [f32],
) {
    dot_rows_generic::<true>(w, x, xs, m, first, out);
}

/// The kernel. A block's weights are `d * q + m`, so its dot product with x is
/// `d * (q . x) + m * sum(x)`: per block, the 32 small integers q are turned into floats and
/// multiplied with x in 8 lanes (one SIMD register), then scaled by d, and the precomputed lane
/// sums of x are scaled by m. This is the dot product with the dequantized weights, rounded in
/// another order (as any other matrix library would).
#[inline(always)]
fn dot_rows_generic<const FMA: bool>(
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

/// A random (rows, cols) matrix quantized by candle, as candle's QTensor and as lmscope's blocks
/// (for the tests of this module, `simd.rs` and `int8.rs`).
#[cfg(test)]
pub(crate) fn quantized(
    kind: GgmlDType,
    rows: usize,
    cols: usize,
) -> (candle_core::quantized::QTensor, BlockMatrix) {
    let src = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
    let q = candle_core::quantized::QTensor::quantize(&src, kind).unwrap();
    let bytes = q.data().unwrap().to_vec();
    let kind = BlockType::from_ggml(kind).unwrap();
    let m = BlockMatrix::new(kind, rows, cols, BlockBytes::Owned(Arc::new(bytes))).unwrap();
    (q, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantization_is_bit_identical_to_candles() {
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (q, m) = quantized(kind, 5, 64);
            let ours = m.dequantize(&Device::Cpu).unwrap();
            let theirs = q.dequantize(&Device::Cpu).unwrap();
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{kind:?}");
            let rows = m.rows(&[4, 0], &Device::Cpu).unwrap();
            let expected = Tensor::cat(&[theirs.get(4).unwrap(), theirs.get(0).unwrap()], 0)
                .unwrap()
                .reshape((2, 64))
                .unwrap();
            let diff = (&rows - &expected).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{kind:?} rows");
        }
    }

    /// Max |a - b| over two tensors of the same shape.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    // Shapes that hit every edge of the kernels: rows that do not fill a panel, more than 16
    // blocks per row (scales converted in groups of 16), 1..=8 inputs (one kernel each) and
    // longer inputs that do not fill the panel kernel's 32-row step.
    const SHAPES: [(usize, usize); 3] = [(300, 96), (37, 608), (5, 32)];
    const INPUTS: [usize; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 33, 40];

    #[test]
    fn fused_product_equals_dequantize_then_matmul() {
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols) in SHAPES {
                let (q, m) = quantized(kind, rows, cols);
                let w = q.dequantize(&Device::Cpu).unwrap();
                for inputs in INPUTS {
                    let x = Tensor::randn(0f32, 1.0, (inputs, cols), &Device::Cpu).unwrap();
                    let ours = m.matmul_t(&x).unwrap();
                    let reference = x.matmul(&w.t().unwrap()).unwrap();
                    // f32 rounding grows with the size of the summed terms, |x| . |w|: allowed
                    // 16 roundings of it (a random-walk sum of 608 terms stays near 4).
                    let size = x.abs().unwrap().matmul(&w.abs().unwrap().t().unwrap()).unwrap();
                    let excess = ((&ours - &reference).unwrap().abs().unwrap()
                        - (size * (16.0 * f32::EPSILON as f64)).unwrap())
                    .unwrap();
                    let worst = excess.max_all().unwrap().to_scalar::<f32>().unwrap();
                    let diff = max_diff(&ours, &reference);
                    assert!(worst <= 0.0, "{kind:?} {rows}x{cols}, {inputs} inputs: {diff}");
                }
            }
        }
    }

    /// The portable kernel, which machines without AVX-512 run, checked on every machine.
    #[test]
    fn generic_kernel_equals_dequantize_then_matmul() {
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols) in SHAPES {
                let (q, m) = quantized(kind, rows, cols);
                let w = q.dequantize(&Device::Cpu).unwrap();
                for inputs in 1..=GEMM_ROWS {
                    let x = Tensor::randn(0f32, 1.0, (inputs, cols), &Device::Cpu).unwrap();
                    let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                    let sums = lane_sums(&xs, inputs, cols);
                    let mut out_t = vec![0f32; rows * inputs];
                    dot_rows_generic::<false>(&m, &xs, &sums, inputs, 0, &mut out_t);
                    let ours = Tensor::from_vec(out_t, (rows, inputs), &Device::Cpu).unwrap();
                    let reference = w.matmul(&x.t().unwrap()).unwrap();
                    let diff = max_diff(&ours, &reference);
                    assert!(diff < 1e-4, "{kind:?} {rows}x{cols}, {inputs} inputs: {diff}");
                }
            }
        }
    }

    /// The long-input path of CPUs without AVX-512, checked on every machine.
    #[test]
    fn dequantized_products_equal_dequantize_then_matmul() {
        let (q, m) = quantized(GgmlDType::Q4_1, 37, 608);
        let w = q.dequantize(&Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (20, 608), &Device::Cpu).unwrap();
        let ours = dequantized_products(&[&m], &x).unwrap().pop().unwrap();
        let reference = x.matmul(&w.t().unwrap()).unwrap();
        assert_eq!(max_diff(&ours, &reference), 0.0);
    }

    #[test]
    fn no_input_rows_give_an_empty_product() {
        let (_, m) = quantized(GgmlDType::Q4_1, 37, 64);
        let x = Tensor::zeros((0, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = m.matmul_t(&x).unwrap();
        assert_eq!(y.dims(), [0, 37]);
        #[cfg(target_arch = "x86_64")]
        if super::super::int8::available() {
            let y = BlockMatrix::matmul_t_int8_many(&[&m], &x).unwrap().pop().unwrap();
            assert_eq!(y.dims(), [0, 37]);
        }
    }

    #[test]
    fn a_matrix_without_rows_gives_empty_products_and_one_without_columns_is_refused() {
        let empty =
            BlockMatrix::new(BlockType::Q4_1, 0, 64, BlockBytes::Owned(Arc::new(Vec::new())))
                .unwrap();
        for inputs in [1, 20] {
            let x = Tensor::randn(0f32, 1.0, (inputs, 64), &Device::Cpu).unwrap();
            assert_eq!(empty.matmul_t(&x).unwrap().dims(), [inputs, 0]);
        }
        let no_columns =
            BlockMatrix::new(BlockType::Q8_0, 3, 0, BlockBytes::Owned(Arc::new(Vec::new())));
        assert!(no_columns.is_err());
    }

    #[test]
    fn row_reordering_moves_whole_rows() {
        let (_, m) = quantized(GgmlDType::Q8_0, 4, 32);
        let r = m.with_row_order(&[2, 0, 3, 1]);
        let a = m.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let b = r.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(b, vec![a[2].clone(), a[0].clone(), a[3].clone(), a[1].clone()]);
    }
}
