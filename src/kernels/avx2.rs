//! x86-64 kernels for CPUs with AVX2 and FMA (most laptops of the last ten years): for now the
//! portable kernels compiled for those instructions (8-lane vectors and fused multiply-adds
//! instead of the baseline's 4 lanes), with the same results up to the rounding of fused
//! multiply-adds.

use super::blocks::BlockMatrix;
use super::portable;

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `portable::dot_rows` with fused multiply-adds, compiled for AVX2.
pub fn dot_rows(w: &BlockMatrix, x: &[f32], xs: &[f32], m: usize, first: usize, out: &mut [f32]) {
    assert!(available(), "the avx2 kernels need a CPU with AVX2 and FMA");
    // SAFETY: the CPU supports AVX2 and FMA (checked above), which the function is compiled for.
    unsafe { dot_rows_avx2(w, x, xs, m, first, out) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(
    w: &BlockMatrix,
    x: &[f32],
    xs: &[f32],
    m: usize,
    first: usize,
    out: &mut [f32],
) {
    portable::dot_rows_generic::<true>(w, x, xs, m, first, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::quantized;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn dot_rows_equals_its_portable_twin() {
        if !available() {
            eprintln!("no AVX2 on this CPU: the avx2 kernels are not tested here");
            return;
        }
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (_, w) = quantized(kind, 37, 608);
            for m in 1..=8 {
                let x: Vec<f32> =
                    (0..m * 608).map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.1).collect();
                let sums = portable::lane_sums(&x, m, 608);
                let (mut ours, mut twin) = (vec![0f32; 37 * m], vec![0f32; 37 * m]);
                dot_rows(&w, &x, &sums, m, 0, &mut ours);
                portable::dot_rows(&w, &x, &sums, m, 0, &mut twin);
                for (a, b) in ours.iter().zip(&twin) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{kind:?} m={m}: {a} vs {b}");
                }
            }
        }
    }
}
