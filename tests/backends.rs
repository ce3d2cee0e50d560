//! Every backend this CPU runs gives the reference backend's numbers (the model's plain formulas
//! on candle tensors): logits within 1e-4 on the tiny fixture (safetensors and GGUF) and on the
//! real SmolLM2 GGUF, for a short prompt (the decode kernels) and a long one (the many-row
//! kernels: AMX, AVX-512 or NEON panels, or candle's GEMM), and the same greedy tokens. On
//! aarch64 (scripts/test-aarch64.sh runs it under qemu) that is the neon backend.

mod common;

use common::{lmscope, real_model, repo_path};
use lmscope::kernels::Backend;

const LONG: &str =
    "Helsinki is the capital and most populous city of Finland. Located on the shore \
    of the Gulf of Finland, it is the seat of the region of Uusimaa in southern Finland.";

fn run(backend: Backend, args: &[&str]) -> serde_json::Value {
    let out = lmscope()
        .env("LMSCOPE_KERNELS", backend.name())
        .args(args)
        .arg("--json")
        .output()
        .expect("lmscope runs");
    assert!(out.status.success(), "{backend} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn logits(backend: Backend, model: &str, text: &str, position: &str) -> Vec<f64> {
    let args = ["--model", model, "logits", text, "--full", "--position", position];
    let r = run(backend, &args);
    r["logits"]
        .as_array()
        .expect("--full gives the row")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn compare_backends(model: &str) {
    let mut backends = Backend::all_available();
    assert!(backends.len() >= 2, "at least reference and portable run everywhere");
    let neon = backends.contains(&Backend::Neon);
    assert_eq!(neon, cfg!(target_arch = "aarch64"), "the neon backend runs on aarch64 (only)");
    if neon {
        // On aarch64 (under qemu in CI, where every process takes minutes) the neon backend
        // against the reference: the portable kernels are the same Rust code as on x86-64, where
        // this test compares them natively, and the library's tests compare each NEON kernel
        // with its portable twin on aarch64.
        backends.retain(|b| matches!(b, Backend::Reference | Backend::Neon));
    }
    for (text, position) in [("The capital of Finland is", "-1"), (LONG, "-1"), (LONG, "3")] {
        let reference = logits(Backend::Reference, model, text, position);
        for &backend in &backends[1..] {
            let fast = logits(backend, model, text, position);
            assert_eq!(fast.len(), reference.len());
            let diff = fast.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            eprintln!(
                "{model}: {backend} vs reference, {} chars, position {position}: {diff:.2e}",
                text.len()
            );
            assert!(diff <= 1e-4, "{model} {backend}: max |logit difference| {diff} > 1e-4");
        }
    }
    let greedy = |backend| {
        let r = run(
            backend,
            &["--model", model, "generate", "The capital of Finland is", "--max-new-tokens", "12"],
        );
        r["new_ids"].clone()
    };
    let reference = greedy(Backend::Reference);
    for &backend in &backends[1..] {
        assert_eq!(greedy(backend), reference, "{model}: greedy tokens on {backend}");
    }
}

#[test]
fn every_backend_equals_the_reference_on_the_tiny_fixture() {
    compare_backends(repo_path("fixtures/tiny-llama").to_str().unwrap());
    compare_backends(repo_path("fixtures/tiny-llama-q8_0.gguf").to_str().unwrap());
}

#[test]
fn every_backend_equals_the_reference_on_the_real_model() {
    compare_backends(real_model().to_str().unwrap());
}

/// `--quantized` runs lmscope's 8-bit kernels on avx2 as on avx512 (VNNI there, where the CPU has
/// it): the same integer sums (the library's tests: bit for bit but Q4_1's offsets). The two
/// backends' other ops (attention, norms, SwiGLU) add in other orders, a difference of about
/// 1e-6 on the exact path; here an activation that lands on the other side of an 8-bit rounding
/// boundary moves by a whole step, which the next layers carry on. So: the same logits for the
/// short prompt, the same top-5 and greedy tokens for the long one, and a logit difference of
/// the size that separates --quantized from the exact path (about 0.5 here, 1.24 at most on the
/// reference prompts).
#[test]
fn quantized_on_avx2_equals_quantized_on_avx512() {
    let backends: Vec<Backend> = Backend::all_available()
        .into_iter()
        .filter(|b| matches!(b, Backend::Avx2 | Backend::Avx512))
        .collect();
    if backends.len() < 2 {
        eprintln!("this CPU runs {backends:?}: nothing to compare");
        return;
    }
    let model = real_model();
    let model = model.to_str().unwrap();
    let quantized = |backend: Backend, text: &str| -> Vec<f64> {
        let args = ["--model", model, "--quantized", "logits", text, "--full"];
        let r = run(backend, &args);
        r["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let top5 = |row: &[f64]| {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        order.truncate(5);
        order
    };
    for (text, bound) in [("The capital of Finland is", 1e-4), (LONG, 1.0)] {
        let (a, b) = (quantized(Backend::Avx2, text), quantized(Backend::Avx512, text));
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        eprintln!("--quantized avx2 vs avx512, {} chars: {diff:.2e}", text.len());
        assert!(diff <= bound, "{} chars: max |logit difference| {diff}", text.len());
        assert_eq!(top5(&a), top5(&b), "{} chars", text.len());
    }
    let greedy = |backend| {
        let args = ["--model", model, "--quantized", "generate", LONG, "--max-new-tokens", "12"];
        run(backend, &args)["new_ids"].clone()
    };
    assert_eq!(greedy(Backend::Avx2), greedy(Backend::Avx512));
}

#[test]
fn an_unknown_or_unavailable_backend_is_a_clear_error() {
    let out = lmscope()
        .env("LMSCOPE_KERNELS", "sse9")
        .args(["--model", "fixtures/tiny-llama", "tokenize", "hi"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.starts_with("error: LMSCOPE_KERNELS=sse9 is not a backend (one of reference, portable, neon, avx2, avx512, amx)"), "{stderr}");
    if let Some(missing) = Backend::ALL.into_iter().find(|b| !b.available()) {
        let out = lmscope()
            .env("LMSCOPE_KERNELS", missing.name())
            .args(["--model", "fixtures/tiny-llama", "tokenize", "hi"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("this CPU does not run"), "{stderr}");
    }
}
