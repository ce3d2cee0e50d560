//! `x @ W.T` for GGUF block matrices: which kernel runs for which input, in which parallel
//! loop. A few input rows (decoding, short prompts) go row by row through the blocks, each block
//! read once for all inputs (`dot_rows`); many input rows (long prompts) a panel of weight rows
//! at a time (`panel_rows`, on AMX tiles, AVX-512, AVX2 or NEON registers), or, on the portable
//! backend, as candle's GEMM on the dequantized matrix. Every kernel computes the dot products of the
//! dequantized weights with the f32 inputs; they differ only in the order of the additions.

use super::blocks::BlockMatrix;
use super::half_precision::{self, Half};
use super::{portable, team, Backend};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// Above this many input rows, the products switch from the row-by-row kernel (which reads each
/// block once for all inputs) to a register-blocked panel kernel (`amx::panel_rows`,
/// `avx512::panel_rows`, `avx2::panel_rows`), or, on the portable backend, to candle's GEMM on
/// the dequantized matrix.
const GEMM_ROWS: usize = 8;

/// Products with fewer multiply-adds than this run on the calling thread.
const SERIAL_WORK: usize = 1 << 18;

/// y = x @ W.T for x: (m, cols) f32 -> (m, rows).
pub fn matmul_t(w: &BlockMatrix, x: &Tensor) -> Result<Tensor> {
    Ok(matmul_t_many(&[w], x)?.pop().expect("one product"))
}

/// y_i = x @ W_i.T for several matrices of the same input (q, k and v; gate and up): one
/// parallel region instead of one per matrix, which saves thread wake-ups when decoding.
/// x: (m, cols) f32 -> (m, rows_i) each.
pub fn matmul_t_many(ws: &[&BlockMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
    matmul_t_many_on(super::backend(), ws, x)
}

/// [`matmul_t_many`] on the given backend's kernels (the tests run each backend's). A bf16 or
/// f16 input gives products in its dtype, as PyTorch's: each weight rounded to the dtype, the
/// products summed in f32 and rounded once (`half_products`).
pub fn matmul_t_many_on(backend: Backend, ws: &[&BlockMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
    if let Some(half) = Half::of(x.dtype()) {
        return half_products(backend, half, ws, x);
    }
    if x.dims2()?.0 > GEMM_ROWS && !own_kernels_for_many_rows(backend) {
        check_input(ws, x)?;
        return dequantized_products(ws, x);
    }
    products(ws, x, |x, m, _| {
        if m <= GEMM_ROWS {
            dot_products(backend, ws, x, m)
        } else {
            panel_products(backend, ws, x, m, None)
        }
    })
}

/// y_i = x @ W_i.T for a bf16 or f16 input x (m, cols), as PyTorch's `nn.Linear` computes it
/// in that dtype on the weights transformers loads from a GGUF (dequantized, then cast): each
/// dequantized weight rounded to the dtype, the products with x's values summed in f32, each
/// result rounded to the dtype once. The kernels are the f32 path's, in their 16-bit mode.
fn half_products(
    backend: Backend,
    half: Half,
    ws: &[&BlockMatrix],
    x: &Tensor,
) -> Result<Vec<Tensor>> {
    let (m, _) = check_input(ws, x)?;
    if m > GEMM_ROWS && !half_panels(backend) {
        // candle's f32 GEMM on the weights rounded to the dtype (as f32), the result rounded.
        let x = x.to_dtype(DType::F32)?;
        let round = |w: Tensor| w.to_dtype(half.dtype())?.to_dtype(DType::F32);
        return ws
            .iter()
            .map(|w| {
                let w = round(w.dequantize(&Device::Cpu)?)?;
                Ok(x.matmul(&w.t()?)?.to_dtype(half.dtype())?)
            })
            .collect();
    }
    let outs = if ws.is_empty() || m == 0 {
        ws.iter().map(|_| Vec::new()).collect()
    } else {
        let x = x.contiguous()?;
        let x = half_precision::values_f32(&x)
            .context("block-matrix products need the input on the CPU")?;
        if m <= GEMM_ROWS {
            rounded_dot_products(backend, half, ws, &x, m)
        } else {
            panel_products(backend, ws, &x, m, Some(half))
        }
    };
    ws.iter()
        .zip(outs)
        .map(|(w, out)| Ok(half_precision::tensor(half, out, (m, w.rows), &Device::Cpu)?))
        .collect()
}

/// The 16-bit mode of [`dot_products`]: (m, rows_i) f32 values each, row-major, not yet rounded.
fn rounded_dot_products(
    backend: Backend,
    half: Half,
    ws: &[&BlockMatrix],
    x: &[f32],
    m: usize,
) -> Vec<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if backend >= Backend::Avx512 {
        let bf16 = half.is_bf16();
        return by_rows(ws, m, |w, first, out| {
            super::avx512::dot_rows_rounded(w, x, m, first, out, bf16)
        });
    }
    #[cfg(target_arch = "x86_64")]
    if backend == Backend::Avx2 {
        let bf16 = half.is_bf16();
        return by_rows(ws, m, |w, first, out| {
            super::avx2::dot_rows_rounded(w, x, m, first, out, bf16)
        });
    }
    #[cfg(target_arch = "aarch64")]
    if backend == Backend::Neon {
        let bf16 = half.is_bf16();
        return by_rows(ws, m, |w, first, out| {
            super::neon::dot_rows_rounded(w, x, m, first, out, bf16)
        });
    }
    let _ = backend; // the portable kernel for every other backend
    match half {
        Half::Bf16 => {
            by_rows(ws, m, |w, first, out| portable::dot_rows_rounded::<true>(w, x, m, first, out))
        }
        Half::F16 => {
            by_rows(ws, m, |w, first, out| portable::dot_rows_rounded::<false>(w, x, m, first, out))
        }
    }
}

/// y_i = x @ W_i.T in ggml's quantized arithmetic (activations rounded to 8 bits per block;
/// see `vnni.rs`), for `--quantized`: with AVX512-VNNI on the avx512 and amx backends, else
/// with AVX2 (`avx2::int8_dot_rows`). x: (m, cols) f32 -> (m, rows_i) each.
#[cfg(target_arch = "x86_64")]
pub fn matmul_t_int8_many(ws: &[&BlockMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
    let vnni = super::uses(Backend::Avx512) && super::vnni::available();
    products(ws, x, |x, m, k| {
        let q = super::vnni::Q8Rows::quantize(x, m, k);
        if vnni {
            by_rows(ws, m, |w, first, out| super::vnni::dot_rows(w, &q, first, out))
        } else {
            by_rows(ws, m, |w, first, out| super::avx2::int8_dot_rows(w, &q, first, out))
        }
    })
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
        super::rows::with_f32(&x, |values| compute(values, m, k))
            .context("block-matrix products need the input on the CPU")?
    };
    ws.iter()
        .zip(outs)
        .map(|(w, out)| Ok(Tensor::from_vec(out, (m, w.rows), &Device::Cpu)?))
        .collect()
}

/// x @ W_i.T for many input rows, a panel of weight rows at a time: on AMX (`amx.rs`) with the
/// `amx` backend, else dequantized panels on AVX-512 (`avx512.rs`) or AVX2 (`avx2.rs`); NEON's
/// below. (m, rows_i) each, row-major. With `round`, the weights are rounded to that dtype (on
/// the AVX-512 and AVX2 panels: the AMX kernel has no 16-bit mode yet, see [`half_panels`]).
#[cfg(target_arch = "x86_64")]
fn panel_products(
    backend: Backend,
    ws: &[&BlockMatrix],
    x: &[f32],
    m: usize,
    round: Option<Half>,
) -> Vec<Vec<f32>> {
    let k = x.len() / m;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if backend >= Backend::Amx && round.is_none() {
        use super::amx::{panel_rows, Packed, NR};
        let packed = Packed::new(x, m, k); // once for all the matrices
                                           // SAFETY: amx::panel_rows writes every value of its window (its tests check them all).
        return unsafe { by_windows(ws, m, NR, |w, window| panel_rows(w, &packed, window)) };
    }
    if backend >= Backend::Avx512 {
        use super::avx512::{panel_rows, Packed, NR};
        let packed = Packed::new(x, m, k);
        // SAFETY: avx512::panel_rows writes every value of its window (its tests check them all).
        return unsafe { by_windows(ws, m, NR, |w, window| panel_rows(w, &packed, window, round)) };
    }
    use super::avx2::{panel_rows, Packed, NR};
    let packed = Packed::new(x, m, k);
    // SAFETY: avx2::panel_rows writes every value of its window (its tests check them all).
    unsafe { by_windows(ws, m, NR, |w, window| panel_rows(w, &packed, window, round)) }
}

/// Whether the 16-bit products of many rows run on lmscope's panels (NEON, AVX2 and up; the
/// AMX backend on the AVX-512 ones), else on candle's GEMM with the weights rounded.
fn half_panels(backend: Backend) -> bool {
    own_kernels_for_many_rows(backend) && (backend >= Backend::Avx2 || backend == Backend::Neon)
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
    kernel: impl Fn(&BlockMatrix, &mut super::avx512::Columns) + Sync,
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
        let columns = super::avx512::column_windows_sized(spare, m, w.rows, &widths);
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

/// x @ W_i.T for many input rows on NEON (`neon.rs`): windows of weight rows, each a multiple
/// of the panel's `NR` rows but a matrix's last, from large to small as in `by_windows`, all in
/// one parallel loop. (m, rows_i) each, row-major. With `round`, the weights are rounded to
/// that dtype.
#[cfg(target_arch = "aarch64")]
fn panel_products(
    _: Backend,
    ws: &[&BlockMatrix],
    x: &[f32],
    m: usize,
    round: Option<Half>,
) -> Vec<Vec<f32>> {
    use super::neon::{panel_rows, Packed, NR};
    let packed = Packed::new(x, m, x.len() / m); // once for all the matrices
    let threads = team::threads();
    let mut left: usize = ws.iter().map(|w| w.rows.div_ceil(NR)).sum();
    let mut windows = Vec::new(); // (matrix, first row, rows)
    for (index, w) in ws.iter().enumerate() {
        let (mut first, mut here) = (0, w.rows.div_ceil(NR));
        while here > 0 {
            let steps = left.div_ceil(2 * threads).min(here);
            let len = (steps * NR).min(w.rows - first);
            windows.push((index, first, len));
            (first, here, left) = (first + len, here - steps, left - steps);
        }
    }
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.rows]).collect();
    let parts: Vec<_> = outs.iter_mut().map(|out| team::Parts::new(out)).collect();
    team::for_each(windows.len(), |t| {
        let (index, first, len) = windows[t];
        let n = ws[index].rows;
        panel_rows(ws[index], &packed, first, len, round, |i, j, run| {
            assert!(i < m && j >= first && j + run.len() <= first + len, "outside the window");
            // SAFETY: the run lies in this task's window of columns (asserted), and the windows
            // of one matrix do not overlap.
            unsafe { parts[index].get(i * n + j..i * n + j + run.len()) }.copy_from_slice(run);
        });
    });
    outs
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn panel_products(
    _: Backend,
    _: &[&BlockMatrix],
    _: &[f32],
    _: usize,
    _: Option<Half>,
) -> Vec<Vec<f32>> {
    unreachable!("the panel kernels exist only on x86-64 and aarch64")
}

/// x @ W_i.T for many input rows on the backends without a panel kernel: each matrix dequantized
/// (bit for bit) and multiplied with candle's GEMM. x: (m, cols) -> (m, rows_i) each.
fn dequantized_products(ws: &[&BlockMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
    ws.iter().map(|w| Ok(x.matmul(&w.dequantize(&Device::Cpu)?.t()?)?)).collect()
}

/// x @ W_i.T for a few input rows, read straight from the blocks: (m, rows_i) each, row-major.
fn dot_products(backend: Backend, ws: &[&BlockMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let k = x.len() / m;
    #[cfg(target_arch = "x86_64")]
    if backend >= Backend::Avx512 {
        let sums = super::avx512::block_sums(x, k);
        return by_rows(ws, m, |w, first, out| super::avx512::dot_rows(w, x, &sums, m, first, out));
    }
    #[cfg(target_arch = "aarch64")]
    if backend == Backend::Neon {
        let sums = portable::lane_sums(x, m, k);
        return by_rows(ws, m, |w, first, out| super::neon::dot_rows(w, x, &sums, m, first, out));
    }
    #[cfg(target_arch = "x86_64")]
    if backend >= Backend::Avx2 {
        let sums = super::avx2::block_sums(x, k);
        return by_rows(ws, m, |w, first, out| super::avx2::dot_rows(w, x, &sums, m, first, out));
    }
    let sums = portable::lane_sums(x, m, k);
    by_rows(ws, m, |w, first, out| portable::dot_rows(w, x, &sums, m, first, out))
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

/// Whether products of many input rows run on lmscope's kernels (else candle's GEMM, on the
/// dequantized matrix).
pub fn own_kernels_for_many_rows(backend: Backend) -> bool {
    (cfg!(target_arch = "x86_64") && backend >= Backend::Avx2)
        || (cfg!(target_arch = "aarch64") && backend == Backend::Neon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::{quantized, BlockBytes, BlockType};
    use candle_core::quantized::GgmlDType;
    use std::sync::Arc;

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
                    let ours = matmul_t(&m, &x).unwrap();
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

    /// The portable kernel, which machines without AVX2 run, checked on every machine.
    #[test]
    fn generic_kernel_equals_dequantize_then_matmul() {
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols) in SHAPES {
                let (q, m) = quantized(kind, rows, cols);
                let w = q.dequantize(&Device::Cpu).unwrap();
                for inputs in 1..=GEMM_ROWS {
                    let x = Tensor::randn(0f32, 1.0, (inputs, cols), &Device::Cpu).unwrap();
                    let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                    let sums = portable::lane_sums(&xs, inputs, cols);
                    let mut out_t = vec![0f32; rows * inputs];
                    portable::dot_rows(&m, &xs, &sums, inputs, 0, &mut out_t);
                    let ours = Tensor::from_vec(out_t, (rows, inputs), &Device::Cpu).unwrap();
                    let reference = w.matmul(&x.t().unwrap()).unwrap();
                    // As above: 16 f32 roundings of |w| . |x| (a fixed 1e-4 failed now and then
                    // on the random inputs of a 608-column row).
                    let size = w.abs().unwrap().matmul(&x.abs().unwrap().t().unwrap()).unwrap();
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

    /// The long-input path of the portable backend, checked on every machine.
    #[test]
    fn dequantized_products_equal_dequantize_then_matmul() {
        let (q, m) = quantized(GgmlDType::Q4_1, 37, 608);
        let w = q.dequantize(&Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (20, 608), &Device::Cpu).unwrap();
        let ours = dequantized_products(&[&m], &x).unwrap().pop().unwrap();
        let reference = x.matmul(&w.t().unwrap()).unwrap();
        assert_eq!(max_diff(&ours, &reference), 0.0);
    }

    /// bf16 and f16 inputs on every backend: the weights rounded to the dtype, the products
    /// summed in f32, the result rounded once (within half a step of the dtype's grid of the
    /// f32 product of the rounded weights, plus f32's summation error).
    #[test]
    fn half_products_round_each_weight_and_the_result() {
        for dtype in [DType::BF16, DType::F16] {
            let eps = if dtype == DType::BF16 { 2f32.powi(-8) } else { 2f32.powi(-11) };
            for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let (q, m) = quantized(kind, 300, 96);
                let w = q.dequantize(&Device::Cpu).unwrap();
                let w = w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                for inputs in [1, 3, 8, 9, 40] {
                    let x = Tensor::randn(0f32, 1.0, (inputs, 96), &Device::Cpu).unwrap();
                    let x = x.to_dtype(dtype).unwrap();
                    let x32 = x.to_dtype(DType::F32).unwrap();
                    let exact = x32.matmul(&w.t().unwrap()).unwrap();
                    let size = x32.abs().unwrap().matmul(&w.abs().unwrap().t().unwrap()).unwrap();
                    let allowed = ((exact.abs().unwrap() * eps as f64).unwrap()
                        + (size * (16.0 * f32::EPSILON as f64)).unwrap())
                    .unwrap();
                    for backend in Backend::all_available() {
                        let ours = matmul_t_many_on(backend, &[&m, &m], &x).unwrap();
                        for y in &ours {
                            assert_eq!(y.dtype(), dtype);
                            let y = y.to_dtype(DType::F32).unwrap();
                            let excess = ((&y - &exact).unwrap().abs().unwrap() - &allowed)
                                .unwrap()
                                .max_all()
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap();
                            let diff = max_diff(&y, &exact);
                            assert!(
                                excess <= 0.0,
                                "{dtype:?} {backend} {kind:?} {inputs} inputs: {diff}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// One-hot inputs read every weight back through the 16-bit products: an input row that is
    /// 1 at column c and 0 elsewhere gives, at output column r, weight (r, c) dequantized and
    /// rounded to the dtype, exactly, on every backend (a few inputs: the row kernels, whose
    /// 4-bit blocks look their rounded weights up in a table of 16; 96: the panels).
    #[test]
    fn half_products_of_one_hot_inputs_are_the_rounded_weights() {
        let (rows, cols) = (37, 96);
        for dtype in [DType::BF16, DType::F16] {
            for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let (q, m) = quantized(kind, rows, cols);
                let w = q.dequantize(&Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let w: Vec<Vec<f32>> = w.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
                for inputs in [1, 5, 8, 96] {
                    let column = |i: usize| if inputs == cols { i } else { (i * 37 + 3) % cols };
                    let x: Vec<f32> = (0..inputs * cols)
                        .map(|at| if at % cols == column(at / cols) { 1.0 } else { 0.0 })
                        .collect();
                    let x = Tensor::from_vec(x, (inputs, cols), &Device::Cpu).unwrap();
                    let x = x.to_dtype(dtype).unwrap();
                    for backend in Backend::all_available() {
                        let y = matmul_t_many_on(backend, &[&m], &x).unwrap().pop().unwrap();
                        let y: Vec<Vec<f32>> = y.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
                        for (i, y) in y.iter().enumerate() {
                            for (r, &v) in y.iter().enumerate() {
                                let want = w[r][column(i)];
                                assert!(
                                    v == want,
                                    "{dtype:?} {backend} {kind:?} {inputs} inputs: ({r}, {}) {v} vs {want}",
                                    column(i)
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn no_input_rows_give_an_empty_product() {
        let (_, m) = quantized(GgmlDType::Q4_1, 37, 64);
        let x = Tensor::zeros((0, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = matmul_t(&m, &x).unwrap();
        assert_eq!(y.dims(), [0, 37]);
        #[cfg(target_arch = "x86_64")]
        if super::super::has_int8_kernel() {
            let y = matmul_t_int8_many(&[&m], &x).unwrap().pop().unwrap();
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
            assert_eq!(matmul_t(&empty, &x).unwrap().dims(), [inputs, 0]);
        }
        let no_columns =
            BlockMatrix::new(BlockType::Q8_0, 3, 0, BlockBytes::Owned(Arc::new(Vec::new())));
        assert!(no_columns.is_err());
    }

    /// Every backend's kernels this CPU runs against the portable backend's, for few and many
    /// input rows (the panel kernels, AMX included, and their twin, candle's GEMM on the
    /// dequantized matrix).
    #[test]
    fn every_backends_products_equal_the_portable_ones() {
        for kind in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (_, m) = quantized(kind, 300, 96);
            for inputs in [1, 3, 8, 9, 40, 130] {
                let x = Tensor::randn(0f32, 1.0, (inputs, 96), &Device::Cpu).unwrap();
                let portable = matmul_t_many_on(Backend::Portable, &[&m], &x).unwrap();
                for backend in Backend::all_available() {
                    let ours = matmul_t_many_on(backend, &[&m, &m], &x).unwrap();
                    for y in &ours {
                        let diff = max_diff(y, &portable[0]);
                        assert!(diff < 1e-4, "{backend} {kind:?} {inputs} inputs: {diff}");
                    }
                }
            }
        }
    }
}
