//! lmscope's in-process figures for the side-by-side benchmark (benches/peers), taken the way the
//! peers' in-process figures are: the model loaded once, then per figure one untimed call and
//! timed repetitions, medians reported. For the exact path and for `--quantized`:
//!
//! * `forward_short`: next-token logits of the prompt (a fresh cache each time);
//! * `prefill_long`: next-token logits of the long text (only the last position through
//!   lm_head, as transformers' generate and llama.cpp's eval do);
//! * `decode`: greedy tokens/s over the single-token steps after the first new token.
//!
//! `--busy S` keeps one core busy with another process (a bounded spin loop of at most S seconds)
//! while measuring: what a student's laptop gives with a browser or a build beside it.
//! `--forms exact` measures the exact path alone (`--forms quantized` the other; both by default):
//! on backends without lmscope's 8-bit kernel, `--quantized` runs on candle's unvectorised Q4_1
//! product and takes minutes.
//!
//! Prints one JSON object. benches/peers/bench_peers.py runs it as
//!
//! ```text
//! cargo bench --bench inprocess -- --model M --threads 2 --reps 5 --decode-reps 3 \
//!     --new-tokens 32 --prompt P --long-text T
//! ```
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs once with one repetition of
//! each figure, as a test that the harness's lmscope side works.

use anyhow::{bail, Context, Result};
use lmscope::load::{self, LoadedModel, MatrixForm};
use lmscope::model::KvCache;
use lmscope::source::ModelSpec;
use serde_json::json;
use std::time::Instant;

struct Args {
    model: String,
    threads: usize,
    reps: usize,
    decode_reps: usize,
    new_tokens: usize,
    prompt: String,
    long_text: String,
    /// Keep one core busy with another process while measuring (seconds it may run at most).
    busy: usize,
    /// The matrix forms measured: the exact path, `--quantized`, or both (the default).
    forms: Vec<String>,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        model: concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf")
            .to_string(),
        threads: 2,
        reps: 1,
        decode_reps: 1,
        new_tokens: 8,
        prompt: "The capital of Finland is".into(),
        long_text: "Finland is a Nordic country in Northern Europe. ".repeat(12),
        busy: 0,
        forms: vec!["exact".into(), "quantized".into()],
    };
    let mut it = std::env::args().skip(1);
    let bench = std::env::args().any(|a| a == "--bench");
    if bench {
        (args.reps, args.decode_reps, args.new_tokens) = (5, 3, 32);
    }
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().with_context(|| format!("{flag} {value}"));
        match flag.as_str() {
            "--model" => args.model = value.clone(),
            "--threads" => args.threads = number()?,
            "--reps" => args.reps = number()?,
            "--decode-reps" => args.decode_reps = number()?,
            "--new-tokens" => args.new_tokens = number()?,
            "--prompt" => args.prompt = value.clone(),
            "--long-text" => args.long_text = value.clone(),
            "--busy" => args.busy = number()?,
            "--forms" => args.forms = value.split(',').map(|f| f.trim().to_string()).collect(),
            "--spin" => spin(number()?),
            _ => bail!("unknown argument {flag}"),
        }
    }
    if args.reps == 0 || args.decode_reps == 0 || args.new_tokens < 2 {
        bail!("--reps and --decode-reps must be positive, --new-tokens at least 2");
    }
    if let Some(f) = args.forms.iter().find(|f| !["exact", "quantized"].contains(&f.as_str())) {
        bail!("--forms {f}: the forms are exact and quantized (comma-separated)");
    }
    Ok(args)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summary(samples: Vec<f64>) -> serde_json::Value {
    let (min, max) = samples.iter().fold((f64::MAX, f64::MIN), |(a, b), &s| (a.min(s), b.max(s)));
    json!({ "median": median(samples.clone()), "min": min, "max": max, "samples": samples })
}

/// One untimed call, then `reps` timed ones: seconds each.
fn timed(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Greedy decoding from `ids`: tokens/s over the `new_tokens - 1` single-token steps after the
/// first new token (the prefill that gives the first token is not counted), and the new ids.
fn decode(m: &LoadedModel, ids: &[u32], new_tokens: usize) -> Result<(f64, Vec<u32>)> {
    let mut cache = KvCache::new();
    let next = |logits: candle_core::Tensor| -> Result<u32> {
        Ok(lmscope::sampling::argmax(&logits.to_vec1::<f32>()?) as u32)
    };
    let mut new = vec![next(m.model.next_logits(ids, &mut cache)?)?];
    let t = Instant::now();
    while new.len() < new_tokens {
        let last = *new.last().expect("one token at least");
        new.push(next(m.model.next_logits(&[last], &mut cache)?)?);
    }
    Ok(((new_tokens - 1) as f64 / t.elapsed().as_secs_f64(), new))
}

/// `--spin S`: the busy process of `--busy`: one core's worth of arithmetic for S seconds at
/// most, then it exits (the benchmark also kills it when it is done).
fn spin(seconds: usize) -> ! {
    let end = Instant::now() + std::time::Duration::from_secs(seconds as u64);
    let mut x = 1u64;
    while Instant::now() < end {
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        }
        std::hint::black_box(x);
    }
    std::process::exit(0)
}

/// Kills the busy process when the benchmark ends.
struct Busy(std::process::Child);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    lmscope::keep_freed_memory();
    let args = parse()?;
    let _busy = match args.busy {
        0 => None,
        seconds => {
            let exe = std::env::current_exe()?;
            let mut child = std::process::Command::new(exe);
            child.args(["--spin", &seconds.to_string()]);
            Some(Busy(child.spawn().context("cannot start the busy process")?))
        }
    };
    rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global()?;
    let resolved = ModelSpec::parse(&args.model, None)?.resolve()?;
    let mut result = json!({
        "threads": args.threads,
        "matrix_kernels": lmscope::kernels::backend().name(),
        "busy_core": args.busy > 0,
    });
    for (name, form) in [
        ("exact", MatrixForm::Exact(candle_core::DType::F32)),
        ("quantized", MatrixForm::Quantized),
    ] {
        if !args.forms.iter().any(|f| f == name) {
            continue;
        }
        let m = load::load_as(&resolved, form)?;
        let short = m.tokenizer.encode_ids(&args.prompt)?;
        let long = m.tokenizer.encode_ids(&args.long_text)?;
        let forward = |ids: &[u32]| -> Result<()> {
            m.model.next_logits(ids, &mut KvCache::new())?;
            Ok(())
        };
        result[format!("forward_short_{name}_s")] = summary(timed(args.reps, || forward(&short))?);
        result[format!("prefill_long_{name}_s")] = summary(timed(args.reps, || forward(&long))?);
        decode(&m, &short, args.new_tokens)?; // warm-up
        let runs: Vec<(f64, Vec<u32>)> = (0..args.decode_reps)
            .map(|_| decode(&m, &short, args.new_tokens))
            .collect::<Result<_>>()?;
        result[format!("decode_{name}")] = json!({
            "tok_s": summary(runs.iter().map(|r| r.0).collect()),
            "new_ids": runs[0].1,
        });
        result[format!("long_tokens_{name}")] = json!(long.len());
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
