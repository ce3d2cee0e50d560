//! In-process timings of each stage on the real SmolLM2-135M-Instruct Q4_1 GGUF:
//! tokenizer, load, forward of 5 and 128 tokens, one decode step, lm_head, and the raw matrix
//! kernels. Run with `cargo bench --bench stages` after `scripts/fetch-model.sh`.
//! (Whole-process comparisons with transformers and llama.cpp: benches/peers/run.sh.)

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lmscope::load::{self, LoadedModel, MatrixForm};
use lmscope::model::KvCache;
use lmscope::source::ModelSpec;
use std::hint::black_box;
use std::time::Duration;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const PROMPT: &str = "The capital of Finland is";

fn resolved() -> lmscope::source::Resolved {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    assert!(path.is_file(), "{} is missing: run scripts/fetch-model.sh", path.display());
    ModelSpec::parse(path.to_str().unwrap(), None).unwrap().resolve().unwrap()
}

/// 128 token ids: a fixed English paragraph, repeated and cut.
fn ids_128(m: &LoadedModel) -> Vec<u32> {
    let text = "The quick brown fox jumps over the lazy dog. Students learn how language models \
                turn text into tokens, tokens into vectors, and vectors into predictions. ";
    let mut ids = m.tokenizer.encode_ids(&text.repeat(8)).unwrap();
    ids.truncate(128);
    assert_eq!(ids.len(), 128);
    ids
}

fn stages(c: &mut Criterion) {
    lmscope::keep_freed_memory(); // as the binary does
    let r = resolved();
    let mut g = c.benchmark_group("stages");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("load (exact)", |b| b.iter(|| load::load(&r, DType::F32).unwrap()));
    g.bench_function("load (quantized)", |b| {
        b.iter(|| load::load_as(&r, MatrixForm::Quantized).unwrap())
    });

    for (name, form) in
        [("exact", MatrixForm::Exact(DType::F32)), ("quantized", MatrixForm::Quantized)]
    {
        let m = load::load_as(&r, form).unwrap();
        let prompt = m.tokenizer.encode_ids(PROMPT).unwrap();
        let long = ids_128(&m);
        if name == "exact" {
            g.bench_function("tokenize", |b| {
                b.iter(|| m.tokenizer.encode(black_box(PROMPT)).unwrap())
            });
        }
        g.bench_function(format!("forward 5 tokens ({name})"), |b| {
            b.iter(|| m.model.logits(black_box(&prompt)).unwrap())
        });
        g.bench_function(format!("forward 128 tokens ({name})"), |b| {
            b.iter(|| m.model.logits(black_box(&long)).unwrap())
        });
        g.bench_function(format!("prefill 128 tokens, next-token logits ({name})"), |b| {
            b.iter(|| m.model.next_logits(black_box(&long), &mut KvCache::new()).unwrap())
        });
        g.bench_function(format!("decode step after 5 tokens ({name})"), |b| {
            b.iter_batched(
                || {
                    let mut cache = KvCache::new();
                    m.model.next_logits(&prompt, &mut cache).unwrap();
                    cache
                },
                |mut cache| m.model.next_logits(&[260], &mut cache).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
        let x = Tensor::randn(0f32, 1.0, (1, 1, m.model.cfg.hidden_size), &Device::Cpu).unwrap();
        g.bench_function(format!("lm_head one position ({name})"), |b| {
            b.iter(|| m.model.weights.lm_head.forward(black_box(&x)).unwrap())
        });
        let mlp = &m.model.weights.layers[0].gate_proj;
        g.bench_function(format!("gate_proj one position ({name})"), |b| {
            b.iter(|| mlp.forward(black_box(&x)).unwrap())
        });
        let x128 =
            Tensor::randn(0f32, 1.0, (1, 128, m.model.cfg.hidden_size), &Device::Cpu).unwrap();
        g.bench_function(format!("gate_proj 128 positions ({name})"), |b| {
            b.iter(|| mlp.forward(black_box(&x128)).unwrap())
        });
    }
    g.finish();
}

/// The machine's limit for decoding: how fast one core, and all cores together, stream memory
/// (a sum over 256 MiB, far larger than the caches). Decoding reads every weight once per token,
/// so tokens/s can be at most bandwidth / bytes of weights (about 96 MB for the Q4_1 GGUF's
/// blocks).
fn memory_bandwidth(c: &mut Criterion) {
    use rayon::prelude::*;
    let data = vec![1.0f32; 64 << 20];
    let sum = |part: &[f32]| {
        let mut lanes = [0f32; 16];
        for chunk in part.chunks_exact(16) {
            for (l, x) in lanes.iter_mut().zip(chunk) {
                *l += x;
            }
        }
        lanes.iter().sum::<f32>()
    };
    let mut g = c.benchmark_group("memory");
    g.sample_size(10).throughput(Throughput::Bytes((data.len() * 4) as u64));
    g.bench_function("read 256 MiB (one core)", |b| b.iter(|| sum(black_box(&data))));
    let threads = rayon::current_num_threads();
    g.bench_function(format!("read 256 MiB ({threads} threads)"), |b| {
        b.iter(|| black_box(&data).par_chunks(1 << 20).map(sum).sum::<f32>())
    });
    g.finish();
}

criterion_group!(benches, stages, memory_bandwidth);
criterion_main!(benches);
