//! bfloat16 and float16 (`--dtype bf16|f16`) as PyTorch computes them on the CPU: f32
//! arithmetic on 16-bit values, each op's output rounded to the dtype (round to nearest, ties
//! to even). The kernels of the other files take a [`Half`] where they have a 16-bit mode: the
//! products round each dequantized weight to the dtype before multiplying it (transformers loads
//! a GGUF by dequantizing to f32 and casting), accumulate in f32 and round the output once.

use candle_core::{DType, Device, Result, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A 16-bit floating-point dtype the kernels compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Bf16,
    F16,
}

impl Half {
    /// The 16-bit dtype, or None for another.
    pub fn of(dtype: DType) -> Option<Half> {
        match dtype {
            DType::BF16 => Some(Half::Bf16),
            DType::F16 => Some(Half::F16),
            _ => None,
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Half::Bf16 => DType::BF16,
            Half::F16 => DType::F16,
        }
    }

    /// v rounded to the dtype, as an f32 (exact).
    #[inline(always)]
    pub fn round(self, v: f32) -> f32 {
        match self {
            Half::Bf16 => round_bf16(v),
            Half::F16 => round_f16(v),
        }
    }

    /// Whether this is bfloat16: the const parameter of the kernels compiled once per dtype.
    pub fn is_bf16(self) -> bool {
        self == Half::Bf16
    }
}

/// v rounded to bfloat16 (`BF16`) or float16, as an f32: the rounding of the kernels that are
/// compiled once per dtype.
#[inline(always)]
pub fn round_as<const BF16: bool>(v: f32) -> f32 {
    if BF16 {
        round_bf16(v)
    } else {
        round_f16(v)
    }
}

/// v rounded to bfloat16 (to nearest, ties to even; NaN stays NaN), as an f32: the value of
/// `half::bf16::from_f32(v).to_f32()`, with integer operations a compiler vectorises.
#[inline(always)]
pub fn round_bf16(v: f32) -> f32 {
    let x = v.to_bits();
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        return f32::from_bits((x | 0x0040_0000) & 0xFFFF_0000); // NaN, quiet
    }
    let lsb = (x >> 16) & 1;
    f32::from_bits(x.wrapping_add(0x7FFF + lsb) & 0xFFFF_0000)
}

/// v rounded to float16 (to nearest, ties to even; from 65520 on infinity), as an f32: the
/// value of `half::f16::from_f32(v).to_f32()`; in f16's normal range with the integer operations
/// of [`round_bf16`] at f16's 10 mantissa bits.
#[inline(always)]
pub fn round_f16(v: f32) -> f32 {
    let a = v.abs();
    if (6.103_515_6e-5..65504.0).contains(&a) {
        let x = v.to_bits();
        let lsb = (x >> 13) & 1;
        return f32::from_bits(x.wrapping_add(0x0FFF + lsb) & 0xFFFF_E000);
    }
    f16::from_f32(v).to_f32() // subnormal, zero, beyond 65504 (maybe rounding to inf), NaN
}

/// Values converted in parallel pieces of this many.
const PIECE: usize = 1 << 14;

/// The values of a 16-bit CPU tensor as f32 (exact), in its logical order; None for any other
/// tensor or a layout that is not contiguous.
pub fn values_f32(t: &Tensor) -> Option<Vec<f32>> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    let widen = |src: &(dyn Fn(usize, &mut [f32]) + Sync)| {
        super::team::chunks_f32(end - start, PIECE, |c, out| src(start + c * PIECE, out))
    };
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) => {
            Some(widen(&|at, out| v[at..at + out.len()].convert_to_f32_slice(out)))
        }
        candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => {
            Some(widen(&|at, out| v[at..at + out.len()].convert_to_f32_slice(out)))
        }
        _ => None,
    }
}

/// A 16-bit CPU tensor (b, heads, s, d) whose heads each hold their s x d values contiguously
/// with one stride between heads (a contiguous tensor, or a KV cache's buffers cut to their
/// first s positions) as a contiguous f32 tensor, the heads widened in parallel (exact); None
/// for any other tensor. Candle's `to_dtype` walks such a strided view value by value on one
/// thread: for the whole cache at every decoding step, that was a tenth of a bf16 decode.
pub fn heads_f32(t: &Tensor) -> Option<Tensor> {
    let super::rows::HeadsLayout { heads, start, head_stride, end } =
        super::rows::HeadsLayout::of(t)?;
    let head = t.elem_count() / heads;
    let widen = |src: &(dyn Fn(usize, &mut [f32]) + Sync)| {
        super::team::chunks_f32(heads * head, head, |i, out| src(start + i * head_stride, out))
    };
    let (storage, _) = t.storage_and_layout();
    let values = match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) if end <= v.len() => {
            widen(&|at, out| v[at..at + out.len()].convert_to_f32_slice(out))
        }
        candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) if end <= v.len() => {
            widen(&|at, out| v[at..at + out.len()].convert_to_f32_slice(out))
        }
        _ => return None,
    };
    Tensor::from_vec(values, t.dims(), t.device()).ok()
}

/// A tensor of the dtype from values already on its grid (each narrowed exactly; a value that is
/// not is rounded to nearest, ties to even).
pub fn tensor(
    half: Half,
    values: Vec<f32>,
    shape: impl Into<candle_core::Shape>,
    device: &Device,
) -> Result<Tensor> {
    fn narrow<T: Copy + Send + Default>(
        values: &[f32],
        convert: impl Fn(&[f32], &mut [T]) + Sync,
    ) -> Vec<T> {
        let mut out = vec![T::default(); values.len()];
        super::team::for_each_chunk(&mut out, PIECE, |c, piece| {
            convert(&values[c * PIECE..][..piece.len()], piece)
        });
        out
    }
    match half {
        Half::Bf16 => {
            let v: Vec<bf16> =
                narrow(&values, |src, dst: &mut [bf16]| dst.convert_from_f32_slice(src));
            Tensor::from_vec(v, shape, device)
        }
        Half::F16 => {
            let v: Vec<f16> =
                narrow(&values, |src, dst: &mut [f16]| dst.convert_from_f32_slice(src));
            Tensor::from_vec(v, shape, device)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_of_a_strided_cache_view_widen_to_the_values_of_to_dtype() {
        let dev = Device::Cpu;
        for dtype in [DType::BF16, DType::F16] {
            // A cache's buffer of 9 positions cut to its first 5, batches of 2 with 3 heads.
            let buffer = Tensor::randn(0f32, 1.0, (2, 3, 9, 8), &dev).unwrap().to_dtype(dtype);
            let buffer = buffer.unwrap();
            let view = buffer.narrow(2, 0, 5).unwrap();
            for t in [&view, &buffer, &buffer.narrow(2, 0, 1).unwrap()] {
                let ours = heads_f32(t).expect("heads contiguous");
                let theirs = t.to_dtype(DType::F32).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                let (a, b) = (ours.flatten_all().unwrap(), theirs.flatten_all().unwrap());
                assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "{dtype:?}");
            }
            // Heads whose rows are not contiguous (a transposed view): not this function's.
            assert!(heads_f32(&view.transpose(2, 3).unwrap()).is_none());
            assert!(heads_f32(&view.to_dtype(DType::F32).unwrap()).is_none());
        }
    }

    #[test]
    fn rounding_equals_the_half_crates() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        let special = [0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 6.1e-5, 6.2e-5, 1e-8];
        let special = special.into_iter().chain([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        let ties = [f32::from_bits(0x3F80_8000), f32::from_bits(0x3F81_8000)];
        // Random bit patterns, and values near 1 and near f16's smallest normal 2^-14.
        let near = |scale: f32| move |r: u32| scale * (1.0 + (r >> 9) as f32 / 8_388_608.0);
        let (one, small) = (near(1.0), near(6.103_515_6e-5));
        let mut random = Vec::new();
        for _ in 0..100_000 {
            random.extend([f32::from_bits(next()), one(next()), small(next()), -small(next())]);
        }
        let values = random.into_iter().chain(special).chain(ties);
        for v in values {
            let (b, h) = (bf16::from_f32(v).to_f32(), f16::from_f32(v).to_f32());
            let (ours_b, ours_h) = (round_bf16(v), round_f16(v));
            assert!(b.to_bits() == ours_b.to_bits() || (b.is_nan() && ours_b.is_nan()), "{v:e}");
            assert!(h.to_bits() == ours_h.to_bits() || (h.is_nan() && ours_h.is_nan()), "{v:e}");
        }
    }
}
