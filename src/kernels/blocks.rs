//! GGUF weight matrices kept in their quantized blocks and dequantized *inside* the matrix
//! product, with f32 activations.
//!
//! The weights are those of dequantizing the whole file (`d * q + m` for Q4_1, as gguf-py,
//! transformers and candle compute it) and the activations stay f32: the result is the dot
//! product with the dequantized matrix, with the rounding of another summation order (as with
//! any other matrix library; see `portable::dot_rows_generic`). Embedding rows and the AVX-512
//! long-prompt path are dequantized bit for bit; the AMX path and the short-input kernels add
//! `d * (q . x) + m * sum(x)` per block (`amx.rs`, `avx512.rs`). What changes is the memory
//! traffic: 0.6 bytes per weight (Q4_1) instead of 4 (f32), and no dequantization at load time.
//! This is lmscope's exact path;
//! `--quantized` (`vnni.rs`, or candle's quantized matmul) also rounds the activations to 8 bits
//! and is not.
//!
//! The products themselves are in `products.rs`; the kernels in the files of each instruction
//! set, `portable.rs` for plain Rust.

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
    pub fn integers(self, block: &[u8], q: &mut [f32; BLOCK]) -> (f32, Option<f32>) {
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
    pub fn dequantize(self, block: &[u8], out: &mut [f32; BLOCK]) {
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

    pub fn row_bytes(&self) -> usize {
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

    /// Dequantizes one row into `out` (cols values), bit for bit as the whole file.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
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
}

/// How many rows ahead the kernel asks the memory system for weights.
pub const PREFETCH_ROWS: usize = 4;

/// Asks for `len` bytes at `start` to be brought into cache (a hint; no effect past the end).
#[inline(always)]
pub fn prefetch(data: &[u8], start: usize, len: usize) {
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
    #[cfg(target_arch = "aarch64")]
    {
        let end = (start + len).min(data.len());
        let mut at = start;
        while at < end {
            // SAFETY: a prefetch is only a hint (it never faults) and the address lies inside
            // `data`.
            unsafe {
                std::arch::asm!(
                    "prfm pldl1keep, [{0}]",
                    in(reg) data.as_ptr().add(at),
                    options(nostack, preserves_flags, readonly)
                )
            };
            at += 64;
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = (data, start, len);
}

/// A random (rows, cols) matrix quantized by candle, as candle's QTensor and as lmscope's blocks
/// (for the tests of the kernels).
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

    #[test]
    fn row_reordering_moves_whole_rows() {
        let (_, m) = quantized(GgmlDType::Q8_0, 4, 32);
        let r = m.with_row_order(&[2, 0, 3, 1]);
        let a = m.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let b = r.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(b, vec![a[2].clone(), a[0].clone(), a[3].clone(), a[1].clone()]);
    }
}
