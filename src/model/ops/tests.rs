//! The ops' tests: each formula by hand, and each fast kernel against the formula on every
//! backend this CPU runs (`kernels::with_backend`).

use super::*;
use crate::kernels::{self, Backend};

/// `f` on the reference backend (the formula) and on every other backend this CPU runs.
fn on_every_backend(f: impl Fn(Backend) -> Tensor) -> (Tensor, Vec<(Backend, Tensor)>) {
    let reference = kernels::with_backend(Backend::Reference, || f(Backend::Reference));
    let others = Backend::all_available()
        .into_iter()
        .filter(|&b| b != Backend::Reference)
        .map(|b| (b, kernels::with_backend(b, || f(b))))
        .collect();
    (reference, others)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    if diff.elem_count() == 0 {
        return 0.0;
    }
    diff.max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Every backend's result of `f` within `tol` of the formula's.
fn fast_equals_formula(name: &str, tol: f32, f: impl Fn(Backend) -> Tensor) {
    let (reference, others) = on_every_backend(f);
    for (backend, fast) in others {
        assert_eq!(fast.dims(), reference.dims(), "{name} on {backend}");
        let diff = max_diff(&fast, &reference);
        assert!(diff <= tol, "{name} on {backend}: max difference {diff} > {tol}");
    }
}

fn close(a: &Tensor, b: &Tensor, tol: f32) {
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = diff.to_scalar::<f32>().unwrap();
    assert!(diff <= tol, "max difference {diff} > {tol}");
}

#[test]
fn rms_norm_by_hand() {
    // x = [3, 4]: mean(x^2) = 12.5, rms = sqrt(12.5 + 0) = 3.5355; weight [1, 2].
    let x = Tensor::new(&[[3f32, 4.]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
    for backend in Backend::all_available() {
        let y = kernels::with_backend(backend, || rms_norm(&x, &w, 0.0).unwrap());
        let y = y.to_vec2::<f32>().unwrap();
        assert!((y[0][0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
        assert!((y[0][1] - 2.0 * 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
    }
}

#[test]
fn silu_by_hand() {
    // silu(0) = 0, silu(1) = 1 / (1 + e^-1) = 0.7310586
    let x = Tensor::new(&[0f32, 1.], &Device::Cpu).unwrap();
    let y = silu(&x).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y[0], 0.0);
    assert!((y[1] - 0.731_058_6).abs() < 1e-6);
}

#[test]
fn attention_on_an_empty_batch_is_empty() {
    let dev = Device::Cpu;
    let q = Tensor::zeros((0, 4, 3, 8), DType::F32, &dev).unwrap();
    let kv = Tensor::zeros((0, 2, 3, 8), DType::F32, &dev).unwrap();
    let (out, probs) = attention(&q, &kv, &kv, None, true).unwrap();
    let probs = probs.unwrap();
    assert_eq!((out.dims(), probs.dims()), ([0, 4, 3, 8].as_slice(), [0, 4, 3, 3].as_slice()));
    assert_eq!(attention(&q, &kv, &kv, None, false).unwrap().0.dims(), [0, 4, 3, 8]);
}

#[test]
fn split_heads_equals_view_then_transpose() {
    let dev = Device::Cpu;
    let (b, t, heads, d) = (2, 5, 3, 8);
    for dtype in [DType::F32, DType::BF16] {
        let x = Tensor::randn(0f32, 1., (b, t, heads * d), &dev).unwrap().to_dtype(dtype);
        let x = x.unwrap();
        let split = split_heads(&x, heads).unwrap();
        let view = x.reshape((b, t, heads, d)).unwrap().transpose(1, 2).unwrap();
        assert!(split.is_contiguous() && split.dims() == [b, heads, t, d]);
        let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        close(&f32s(&split), &f32s(&view), 0.0);
    }
    assert!(split_heads(&Tensor::zeros((1, 2, 10), DType::F32, &dev).unwrap(), 3).is_err());
}

#[test]
fn rope_at_position_zero_is_identity_and_rotates_pairs() {
    let dev = Device::Cpu;
    let tables = RopeTables::new(4, 10000.0, 4, &dev).unwrap();
    // Position 1, frequency 0 turns the pair (x0, x2) by 1 radian.
    let x = Tensor::new(&[1f32, 0., 0., 0.], &dev).unwrap().reshape((1, 1, 1, 4)).unwrap();
    let rope_ref = |cos: &Tensor, sin: &Tensor| {
        kernels::with_backend(Backend::Reference, || rope(&x, cos, sin).unwrap())
    };
    let (cos, sin) = tables.at(0, 1, DType::F32).unwrap();
    close(&rope_ref(&cos, &sin), &x, 0.0);
    let (cos, sin) = tables.at(1, 1, DType::F32).unwrap();
    let y = rope_ref(&cos, &sin).flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6);
}

#[test]
fn causal_mask_hides_the_future() {
    let m = causal_mask(2, 1, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    // Query 0 is position 1: sees keys 0, 1. Query 1 is position 2: sees all three.
    assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
    assert_eq!(m[1], vec![0.0, 0.0, 0.0]);
}

/// The grouped product equals transformers' formulation: repeat_kv, then one product per
/// query head.
#[test]
fn grouped_attention_equals_repeat_kv() {
    let dev = Device::Cpu;
    // Shapes with partial registers (d = 8, 72), query blocks of 4 and a remainder (t = 7),
    // more keys than one block of 64 (s = 70), a cached prefix (s > t), one query (decode).
    for (b, h, kv, t, s, d, masked) in [
        (1, 6, 2, 3, 5, 8, true),
        (2, 4, 2, 7, 70, 72, true),
        (1, 3, 1, 1, 9, 64, false),
        (1, 2, 2, 5, 5, 16, false),
    ] {
        let q = Tensor::randn(0f32, 1., (b, h, t, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (b, kv, s, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (b, kv, s, d), &dev).unwrap();
        let mask = masked.then(|| causal_mask(t, s - t, &dev).unwrap());
        let (out, probs) = attention(&q, &k, &v, mask.as_ref(), true).unwrap();
        let probs = probs.unwrap();
        // Keys and values at the start of longer buffers, as a KV cache holds them (read
        // in place), and transposed views of (s, d) (copied first): the same numbers.
        let spare = Tensor::randn(0f32, 1., (b, kv, 6, d), &dev).unwrap();
        let in_buffer = |x: &Tensor| Tensor::cat(&[x, &spare], 2).unwrap().narrow(2, 0, s);
        let (kb, vb) = (in_buffer(&k).unwrap(), in_buffer(&v).unwrap());
        let transposed = |x: &Tensor| x.transpose(2, 3).unwrap().contiguous().unwrap();
        let (kt, vt) = (transposed(&k).transpose(2, 3).unwrap(), transposed(&v));
        let vt = vt.transpose(2, 3).unwrap();
        for (k, v) in [(&kb, &vb), (&kt, &vt)] {
            let (o, p) = attention(&q, k, v, mask.as_ref(), true).unwrap();
            close(&o, &out, 0.0);
            close(&p.unwrap(), &probs, 0.0);
        }
        // Without keeping the probabilities (a scratch buffer per thread, reused).
        for _ in 0..2 {
            close(&attention(&q, &k, &v, mask.as_ref(), false).unwrap().0, &out, 0.0);
        }

        let k = repeat_kv(&k, h / kv).unwrap().contiguous().unwrap();
        let v = repeat_kv(&v, h / kv).unwrap().contiguous().unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let scores = match &mask {
            Some(mask) => scores.broadcast_add(mask).unwrap(),
            None => scores,
        };
        let expected_probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let expected = expected_probs.matmul(&v).unwrap();
        close(&probs, &expected_probs, 1e-6);
        close(&out, &expected, 1e-5);
        if masked {
            // The future is hidden exactly: probability 0, not merely tiny.
            let p = probs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (n, &pn) in p.iter().enumerate() {
                let (i, j) = ((n / s) % t, n % s);
                assert!(j <= s - t + i || pn == 0.0, "query {i} sees key {j}: {pn}");
            }
        }
    }
}

#[test]
fn portable_attention_row_equals_the_tensor_formula() {
    // The row kernel used where AVX-512 is missing, called directly.
    let dev = Device::Cpu;
    let (s, d) = (6, 8);
    let q = Tensor::randn(0f32, 1., (1, d), &dev).unwrap();
    let k = Tensor::randn(0f32, 1., (s, d), &dev).unwrap();
    let v = Tensor::randn(0f32, 1., (s, d), &dev).unwrap();
    let hidden = f32::NEG_INFINITY;
    let mask = Tensor::new(&[[0f32, 0., 0., 0., hidden, hidden]], &dev).unwrap(); // (1, s)
    let scale = 1.0 / (d as f32).sqrt();
    let (mut probs, mut out) = (vec![0f32; s], vec![0f32; d]);
    let vec = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (qv, kt, vv, mv) =
        (vec(&q), vec(&k.t().unwrap().contiguous().unwrap()), vec(&v), vec(&mask));
    kernels::portable::attention_row(&qv, &kt, &vv, Some(&mv), scale, &mut probs, &mut out);
    let scores = ((q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap() + &mask).unwrap();
    let expected_probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
    let expected = expected_probs.matmul(&v).unwrap();
    close(
        &Tensor::new(probs.as_slice(), &dev).unwrap(),
        &expected_probs.flatten_all().unwrap(),
        1e-6,
    );
    close(&Tensor::new(out.as_slice(), &dev).unwrap(), &expected.flatten_all().unwrap(), 1e-5);
    assert_eq!(&probs[4..], &[0.0, 0.0]);
}

#[test]
fn repeat_kv_repeats_each_head_in_place() {
    let x = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap().reshape((1, 2, 1, 1)).unwrap();
    let y = repeat_kv(&x, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y, vec![1.0, 1.0, 2.0, 2.0]); // head 0 serves queries 0-1, head 1 queries 2-3
}

#[test]
fn rms_norm_kernels_equal_the_formula() {
    let x = Tensor::randn(0f32, 3., (3, 37, 100), &Device::Cpu).unwrap(); // 100 = 6 x 16 + 4
    let w = Tensor::randn(1f32, 0.1, 100, &Device::Cpu).unwrap();
    fast_equals_formula("rms_norm", 1e-5, |_| rms_norm(&x, &w, 1e-5).unwrap());
}

#[test]
fn add_and_silu_mul_kernels_equal_the_formula() {
    let x = Tensor::randn(0f32, 3., (2, 37, 1000), &Device::Cpu).unwrap(); // several chunks
    let y = Tensor::randn(0f32, 1., (2, 37, 1000), &Device::Cpu).unwrap();
    fast_equals_formula("add", 0.0, |_| add(&x, &y).unwrap());
    fast_equals_formula("silu_mul", 1e-5, |_| silu_mul(&x, &y).unwrap());
    assert!(add(&x, &y.narrow(1, 0, 1).unwrap()).is_err()); // shapes must match, as for candle
}

#[test]
fn rope_and_split_heads_kernels_equal_the_formula() {
    let dev = Device::Cpu;
    let tables = RopeTables::new(8, 10000.0, 16, &dev).unwrap();
    let (b, t, heads, d) = (2, 5, 3, 8);
    let x = Tensor::randn(0f32, 1., (b, t, heads * d), &dev).unwrap();
    let (cos, sin) = tables.at(4, t, DType::F32).unwrap();
    fast_equals_formula("split_heads", 0.0, |_| split_heads(&x, heads).unwrap());
    let split = split_heads(&x, heads).unwrap();
    fast_equals_formula("rope", 1e-6, |_| rope(&split, &cos, &sin).unwrap());
}

#[test]
fn attention_kernels_equal_the_formula_with_and_without_probabilities() {
    let dev = Device::Cpu;
    // Partial registers (d = 8, 72), query blocks of 4 and a remainder (t = 7), more keys than
    // one block of 64 (s = 70), a cached prefix (s > t), one query (decode).
    for (b, h, kv, t, s, d, masked) in
        [(1, 6, 2, 3, 5, 8, true), (2, 4, 2, 7, 70, 72, true), (1, 3, 1, 1, 9, 64, false)]
    {
        let q = Tensor::randn(0f32, 1., (b, h, t, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (b, kv, s, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (b, kv, s, d), &dev).unwrap();
        let mask = masked.then(|| causal_mask(t, s - t, &dev).unwrap());
        let run = |keep| attention(&q, &k, &v, mask.as_ref(), keep).unwrap();
        fast_equals_formula("attention output", 1e-5, |_| run(false).0);
        fast_equals_formula("attention probabilities", 1e-6, |_| run(true).1.unwrap());
    }
}

/// `|fast - formula| <= steps` steps of the dtype's grid at the formula's largest value: the
/// kernels and candle's 16-bit ops round the same values, but sums added in another order can
/// land on the other side of a rounding boundary.
fn half_kernels_equal_the_formula(name: &str, steps: f32, f: impl Fn() -> Tensor) {
    let (reference, others) = on_every_backend(|_| f());
    let dtype = reference.dtype();
    // One step of the grid at `size` is at most size * 2^-7 (bf16's 7 stored fraction bits) or
    // size * 2^-10 (f16's 10): a value just under a power of two steps by that much.
    let eps = if dtype == DType::BF16 { 2f32.powi(-7) } else { 2f32.powi(-10) };
    let size = max_diff(&reference, &reference.zeros_like().unwrap());
    for (backend, fast) in others {
        assert_eq!((fast.dims(), fast.dtype()), (reference.dims(), dtype), "{name} on {backend}");
        let diff = max_diff(&fast, &reference);
        let tol = steps * eps * size.max(1e-3);
        assert!(diff <= tol, "{name} {dtype:?} on {backend}: max difference {diff} > {tol}");
    }
}

#[test]
fn half_precision_row_kernels_equal_the_formula() {
    let dev = Device::Cpu;
    for dtype in [DType::BF16, DType::F16] {
        let x = Tensor::randn(0f32, 3., (2, 37, 1000), &dev).unwrap().to_dtype(dtype).unwrap();
        let y = Tensor::randn(0f32, 1., (2, 37, 1000), &dev).unwrap().to_dtype(dtype).unwrap();
        let w = Tensor::randn(1f32, 0.1, 1000, &dev).unwrap().to_dtype(dtype).unwrap();
        half_kernels_equal_the_formula("rms_norm", 1.0, || rms_norm(&x, &w, 1e-5).unwrap());
        half_kernels_equal_the_formula("add", 0.0, || add(&x, &y).unwrap());
        half_kernels_equal_the_formula("silu_mul", 1.0, || silu_mul(&x, &y).unwrap());

        let tables = RopeTables::new(8, 10000.0, 16, &dev).unwrap();
        let (b, t, heads, d) = (2, 5, 3, 8);
        let x = Tensor::randn(0f32, 1., (b, t, heads * d), &dev).unwrap().to_dtype(dtype);
        let x = x.unwrap();
        let (cos, sin) = tables.at(4, t, dtype).unwrap();
        half_kernels_equal_the_formula("split_heads", 0.0, || split_heads(&x, heads).unwrap());
        let split = split_heads(&x, heads).unwrap();
        half_kernels_equal_the_formula("rope", 0.0, || rope(&split, &cos, &sin).unwrap());
    }
}

#[test]
fn half_precision_attention_kernels_equal_the_formula() {
    let dev = Device::Cpu;
    for dtype in [DType::BF16, DType::F16] {
        for (b, h, kv, t, s, d, masked) in
            [(1, 6, 2, 3, 5, 8, true), (2, 4, 2, 7, 70, 72, true), (1, 3, 1, 1, 9, 64, false)]
        {
            let randn = |shape: (usize, usize, usize, usize)| {
                Tensor::randn(0f32, 1., shape, &dev).unwrap().to_dtype(dtype).unwrap()
            };
            let (q, k, v) = (randn((b, h, t, d)), randn((b, kv, s, d)), randn((b, kv, s, d)));
            let mask = masked.then(|| causal_mask(t, s - t, &dev).unwrap().to_dtype(dtype));
            let mask = mask.transpose().unwrap();
            let run = |keep| attention(&q, &k, &v, mask.as_ref(), keep).unwrap();
            // A score that rounds the other way (a step of 1/64 at 2-4) moves its probability by
            // about 1/64 x scale of itself, a few of the probabilities' steps, and the output by a
            // few more.
            half_kernels_equal_the_formula("attention output", 8.0, || run(false).0);
            half_kernels_equal_the_formula("attention probabilities", 6.0, || run(true).1.unwrap());
        }
    }
}
