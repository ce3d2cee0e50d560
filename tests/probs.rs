//! score, sample, neighbours and analogy: golden tables on the tiny fixture, numbers checked
//! against lmscope's own logits rows and an independent re-implementation of transformers'
//! warpers on the real SmolLM2 GGUF, and clean errors for bad input.

mod common;

use common::{lmscope, lmscope_json, real_model, tiny_dir};
use serde_json::Value;

fn gguf() -> String {
    real_model().to_str().unwrap().to_string()
}

fn tiny() -> String {
    tiny_dir().to_str().unwrap().to_string()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Compares a command's stdout with tests/golden/NAME.txt (UPDATE_GOLDEN=1 rewrites it): byte
/// for byte on the CPU that wrote it, floats by their last digit elsewhere.
fn golden(name: &str, args: &[&str]) {
    let actual = common::compare::golden("probs", name, &[], args);
    for line in actual.lines().filter(|l| l.starts_with(['┌', '│', '╞', '└'])) {
        assert!(line.chars().count() <= 80, "{args:?}: a table line is wider than 80: {line}");
    }
}

#[test]
fn golden_tables_on_the_tiny_model() {
    let t = "fixtures/tiny-llama".to_string();
    golden("score", &["--model", &t, "score", "The capital of Finland is"]);
    golden("score_candidates", &["--model", &t, "score", "--prompt", "The capital", " of", " is"]);
    golden(
        "sample",
        &[
            "--model",
            &t,
            "sample",
            "The capital",
            "--temperature",
            "0.7",
            "--top-k",
            "20",
            "--top-p",
            "0.5",
            "--seed",
            "3",
            "--steps",
            "2",
            "--rows",
            "5",
        ],
    );
    golden("neighbours", &["--model", &t, "neighbours", "dog", "-k", "5"]);
    golden("analogy", &["--model", &t, "analogy", "dog", "cat", "hat", "-k", "5"]);
}

/// log_softmax of a row in f64, the entropy, and lmscope's rank of `id` (ties: lower id first).
fn by_hand(row: &[f64], id: usize) -> (f64, f64, usize, usize) {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = row.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    let lp = |l: f64| l - max - log_sum;
    let entropy = -row.iter().map(|&l| lp(l).exp() * lp(l)).sum::<f64>();
    let rank = 1 + row
        .iter()
        .enumerate()
        .filter(|&(j, &x)| x > row[id] || (x == row[id] && j < id))
        .count();
    let top = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
    (lp(row[id]), entropy, rank, top)
}

fn logit_row(model: &str, text: &str, position: usize) -> Vec<f64> {
    let j = lmscope_json(&[
        "--model",
        model,
        "logits",
        text,
        "--full",
        "-k",
        "1",
        "--position",
        &position.to_string(),
    ]);
    // The JSON has each f32 in its shortest form: back to the exact f32 value.
    j["logits"].as_array().unwrap().iter().map(|v| f(v) as f32 as f64).collect()
}

#[test]
fn score_is_log_softmax_of_the_logits_rows() {
    let text = "The capital of Finland is Helsinki.";
    let j = lmscope_json(&["--model", &gguf(), "score", text]);
    let ids: Vec<u64> = j["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids, [504, 3575, 282, 17446, 314, 42398, 30]);
    assert_eq!(j["unscored"][0]["id"], 504, "the first token has no prediction");
    let tokens = j["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), ids.len() - 1);
    let mut total = 0.0;
    for t in tokens {
        let position = t["position"].as_u64().unwrap() as usize;
        let row = logit_row(&gguf(), text, position - 1);
        let (lp, entropy, rank, top) = by_hand(&row, ids[position] as usize);
        let got = f(&t["logprob"]);
        assert!((got - lp).abs() < 1e-9, "position {position}: logprob {got} vs {lp}");
        assert!((f(&t["prob"]) - lp.exp()).abs() < 1e-12);
        assert!((f(&t["surprisal_bits"]) + lp / std::f64::consts::LN_2).abs() < 1e-9);
        assert!((f(&t["entropy"]) - entropy).abs() < 1e-9, "position {position}: entropy");
        assert_eq!(t["rank"].as_u64().unwrap() as usize, rank, "position {position}");
        assert_eq!(t["top_id"].as_u64().unwrap() as usize, top, "position {position}");
        total += got;
    }
    assert!((f(&j["total_logprob"]) - total).abs() < 1e-12);
    let mean = total / tokens.len() as f64;
    assert!((f(&j["mean_logprob"]) - mean).abs() < 1e-12);
    assert!((f(&j["perplexity"]) - (-mean).exp()).abs() < 1e-9);
    // " Helsinki" after the prompt: the logits table's second choice (0.1124).
    assert_eq!(tokens[4]["rank"], 2);
    assert!((f(&tokens[4]["prob"]) - 0.1124).abs() < 1e-4);
}

#[test]
fn score_after_a_prompt_compares_candidates() {
    let prompt = "The capital of Finland is";
    let j = lmscope_json(&[
        "--model",
        &gguf(),
        "score",
        "--prompt",
        prompt,
        " Helsinki.",
        " Stockholm.",
    ]);
    let c = j["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(j["best"], 0, "Helsinki is more likely than Stockholm");
    assert_eq!(j["best_mean"], 0);
    assert!(f(&c[0]["total_logprob"]) > f(&c[1]["total_logprob"]) + 1.0);
    // Only the continuation is scored, with the same numbers as in the whole text.
    let whole = lmscope_json(&["--model", &gguf(), "score", "The capital of Finland is Helsinki."]);
    let cand = c[0]["tokens"].as_array().unwrap();
    assert_eq!(cand.len(), 2);
    assert_eq!(c[0]["unscored"].as_array().unwrap().len(), 5);
    for (a, b) in cand.iter().zip(&whole["tokens"].as_array().unwrap()[4..]) {
        assert_eq!(a["position"], b["position"]);
        assert_eq!(a["id"], b["id"]);
        assert!((f(&a["logprob"]) - f(&b["logprob"])).abs() < 1e-6, "{a} vs {b}");
    }
    // One candidate: the document is that candidate's score itself.
    let one = lmscope_json(&["--model", &gguf(), "score", "--prompt", prompt, " Helsinki."]);
    assert_eq!(one["tokens"], c[0]["tokens"]);
    assert_eq!(one["prompt"], prompt);
}

/// transformers' warpers, re-implemented independently: temperature, TopKLogitsWarper (`scores <
/// k-th largest` removed), TopPLogitsWarper (ascending sort, cumulative softmax, `<= 1 - p`
/// removed, the top token kept), then softmax. Returns the sampled distribution.
fn warpers(logits: &[f64], t: f64, k: Option<usize>, p: Option<f64>) -> Vec<f64> {
    let mut s: Vec<f64> = logits.iter().map(|l| l / t).collect();
    if let Some(k) = k {
        let mut sorted = s.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[k - 1];
        s.iter_mut().filter(|x| **x < kth).for_each(|x| *x = f64::NEG_INFINITY);
    }
    let softmax = |s: &[f64]| {
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.into_iter().map(|x| x / sum).collect::<Vec<f64>>()
    };
    if let Some(p) = p {
        let probs = softmax(&s);
        let mut asc: Vec<usize> = (0..s.len()).collect();
        asc.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(b.cmp(&a)));
        let mut cum = 0.0;
        for &i in &asc[..asc.len() - 1] {
            cum += probs[i];
            if cum <= 1.0 - p {
                s[i] = f64::NEG_INFINITY;
            }
        }
    }
    softmax(&s)
}

#[test]
fn sample_follows_transformers_warpers() {
    let text = "The capital of Finland is";
    let row = logit_row(&gguf(), text, 4);
    let cases: [(f64, Option<usize>, Option<f64>); 6] = [
        (1.0, None, None),
        (0.7, Some(50), Some(0.9)),
        (1.0, None, Some(0.5)),
        (1.3, Some(20), None),
        (0.5, None, Some(0.95)),
        (2.0, Some(100), Some(0.8)),
    ];
    for (t, k, p) in cases {
        let mut args = vec!["--model".to_string(), gguf(), "sample".into(), text.into()];
        args.extend(["--temperature".into(), t.to_string(), "--rows".into(), "all".into()]);
        args.extend(["--seed".into(), "5".into()]);
        if let Some(k) = k {
            args.extend(["--top-k".into(), k.to_string()]);
        }
        if let Some(p) = p {
            args.extend(["--top-p".into(), p.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let j = lmscope_json(&args);
        let step = &j["steps"][0];
        let want = warpers(&row, t, k, p);
        let tol = common::two_paths_tolerance();
        let kept = want.iter().filter(|&&q| q > 0.0).count();
        let case = format!("T {t} k {k:?} p {p:?}");
        assert_eq!(step["kept"].as_u64().unwrap() as usize, kept, "{case}");
        let fin = step["final"].as_array().unwrap();
        assert_eq!(fin.len(), kept, "{case}: --rows all lists every kept token");
        let mut sum = 0.0;
        for (i, x) in fin.iter().enumerate() {
            let id = x["id"].as_u64().unwrap() as usize;
            assert!((f(&x["prob"]) - want[id]).abs() < tol, "{case}: id {id}");
            if i > 0 {
                assert!(f(&x["prob"]) <= f(&fin[i - 1]["prob"]), "{case}: most likely first");
            }
            sum += f(&x["prob"]);
        }
        assert!((sum - 1.0).abs() < 1e-9, "{case}: sum {sum}");
        // The stages: temperature keeps all; each filter's kept count and mass add up.
        let stages = step["stages"].as_array().unwrap();
        assert_eq!(stages[0]["kept"], 49152);
        assert_eq!(stages[2]["kept"].as_u64().unwrap() as usize, kept, "{case}");
        for s in stages {
            assert!((f(&s["mass"]) + f(&s["cut"]) - 1.0).abs() < 1e-9, "{case}: {s}");
        }
        // u lies in the drawn token's interval, whose width is its probability.
        let (u, lo, hi) = (f(&step["u"]), f(&step["interval"][0]), f(&step["interval"][1]));
        let drawn = step["id"].as_u64().unwrap() as usize;
        assert!(lo <= u && u < hi, "{case}: {u} not in [{lo}, {hi})");
        assert!((hi - lo - want[drawn]).abs() < tol || hi == 1.0, "{case}");
        let below: f64 = (0..drawn).map(|i| want[i]).sum();
        assert!((lo - below).abs() < tol, "{case}: the interval starts after the lower ids");
    }
}

#[test]
fn sample_draws_the_same_tokens_as_generate() {
    let settings: [&[&str]; 4] = [
        &["--temperature", "1.5"],
        &["--temperature", "0.8", "--top-k", "40"],
        &["--top-p", "0.9"],
        &["--temperature", "1.2", "--top-k", "100", "--top-p", "0.95"],
    ];
    for (model, text, n) in [(tiny(), "hello", "12"), (gguf(), "The capital of Finland is", "8")] {
        for s in settings {
            for seed in ["7", "42"] {
                let common = ["--model", &model];
                let mut a: Vec<&str> = common.to_vec();
                a.extend(["sample", text, "--seed", seed, "--steps", n, "--rows", "1"]);
                a.extend(s);
                let mut b: Vec<&str> = common.to_vec();
                b.extend(["generate", text, "--sample", "--seed", seed, "--max-new-tokens", n]);
                b.extend(s);
                let (sj, gj) = (lmscope_json(&a), lmscope_json(&b));
                assert_eq!(sj["new_ids"], gj["new_ids"], "{model} {s:?} seed {seed}");
                assert_eq!(sj["text"], gj["text"]);
                for (x, y) in
                    sj["steps"].as_array().unwrap().iter().zip(gj["steps"].as_array().unwrap())
                {
                    let p = x["candidates"].as_array().unwrap().iter().find(|c| c["drawn"] == true);
                    assert_eq!(p.unwrap()["prob_final"], y["sample_prob"]);
                }
                assert_eq!(lmscope_json(&a)["new_ids"], sj["new_ids"], "the same seed again");
            }
        }
    }
}

#[test]
fn tiny_temperatures_give_finite_numbers() {
    let text = "The capital of Finland is";
    for t in ["1e-38", "1e-300", "5e-324"] {
        let j = lmscope_json(&["--model", &gguf(), "logits", text, "-k", "3", "--temperature", t]);
        let probs: Vec<f64> =
            j["top"].as_array().unwrap().iter().map(|r| f(&r["prob_at_temperature"])).collect();
        assert_eq!(probs, [1.0, 0.0, 0.0], "T = {t}: all on the top token, no NaN");
        // generate --sample at such a temperature is greedy decoding.
        let g = lmscope_json(&[
            "--model",
            &gguf(),
            "generate",
            text,
            "--sample",
            "--temperature",
            t,
            "--seed",
            "1",
            "--max-new-tokens",
            "5",
        ]);
        let greedy = lmscope_json(&["--model", &gguf(), "argmax", text, "--steps", "5"]);
        let ids: Vec<Value> =
            greedy["steps"].as_array().unwrap().iter().map(|s| s["id"].clone()).collect();
        assert_eq!(g["new_ids"].as_array().unwrap(), &ids, "T = {t}");
        for s in g["steps"].as_array().unwrap() {
            assert_eq!(f(&s["sample_prob"]), 1.0);
        }
        let s = lmscope_json(&[
            "--model",
            &gguf(),
            "sample",
            text,
            "--temperature",
            t,
            "--top-p",
            "0.5",
        ]);
        assert_eq!(s["steps"][0]["id"], 260);
        assert_eq!(s["steps"][0]["kept"], 1);
    }
}

#[test]
fn neighbours_are_the_highest_cosines() {
    let j = lmscope_json(&["--model", &gguf(), "neighbours", "dog", "-k", "8"]);
    assert_eq!(j["id"], 2767);
    assert_eq!(j["rows"], 49152);
    assert_eq!(j["excluded"], serde_json::json!([2767]));
    let n = j["neighbours"].as_array().unwrap();
    assert_eq!(n.len(), 8);
    assert_eq!(n[0]["token"], "ĠDog");
    assert!(n.iter().any(|x| x["token"] == "Ġcat"));
    for (i, x) in n.iter().enumerate() {
        assert_eq!(x["rank"].as_u64().unwrap() as usize, i + 1);
        assert_ne!(x["id"], 2767, "the word itself is left out");
        if i > 0 {
            assert!(f(&x["cosine"]) <= f(&n[i - 1]["cosine"]));
        }
    }
    // Each cosine is similarity's cosine of the same two rows.
    for x in &n[..3] {
        let other = x["text"].as_str().unwrap();
        let s = lmscope_json(&["--model", &gguf(), "similarity", "--exact", " dog", other]);
        let c = f(&s["pairs"][0]["cosine"]);
        assert!((f(&x["cosine"]) - c).abs() < 1e-9, "{other:?}: {} vs {c}", x["cosine"]);
    }
    // SmolLM2 ties lm_head to embed_tokens: the output space is the same rows.
    let out =
        lmscope_json(&["--model", &gguf(), "neighbours", "dog", "-k", "8", "--space", "output"]);
    assert_eq!(out["tied"], true);
    assert_eq!(out["matrix"], "lm_head.weight");
    assert_eq!(out["neighbours"], j["neighbours"]);
}

/// A copy of the tiny fixture whose lm_head is its own matrix (the embedding rows in another
/// order, so every row is a real vector but the neighbours differ), with tie_word_embeddings off.
fn untied_tiny() -> (tempfile::TempDir, Vec<Vec<f32>>) {
    use candle_core::{Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(tiny_dir().join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let embed: Vec<Vec<f32>> = tensors["model.embed_tokens.weight"].to_vec2().unwrap();
    let n = embed.len();
    let lm_head: Vec<Vec<f32>> = (0..n).map(|i| embed[(i * 7 + 3) % n].clone()).collect();
    let flat: Vec<f32> = lm_head.iter().flatten().copied().collect();
    let shape = (n, embed[0].len());
    tensors.insert("lm_head.weight".into(), Tensor::from_vec(flat, shape, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_dir().join("config.json")).unwrap())
            .unwrap();
    config["tie_word_embeddings"] = false.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    (dir, lm_head)
}

#[test]
fn untied_output_space_uses_lm_head_rows() {
    let (dir, lm_head) = untied_tiny();
    let model = dir.path().to_str().unwrap();
    let input = lmscope_json(&["--model", model, "neighbours", "dog", "-k", "5"]);
    let out =
        lmscope_json(&["--model", model, "neighbours", "dog", "-k", "5", "--space", "output"]);
    assert_eq!(input["tied"], false);
    assert_eq!(out["tied"], false);
    assert_eq!(out["matrix"], "lm_head.weight");
    assert_ne!(out["neighbours"], input["neighbours"], "another matrix, other neighbours");
    // The cosines by hand, in f64, over lm_head's rows.
    let id = out["id"].as_u64().unwrap() as usize;
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    };
    let mut by_hand: Vec<(usize, f64)> = (0..lm_head.len())
        .filter(|&j| j != id)
        .map(|j| (j, cos(&lm_head[id], &lm_head[j])))
        .collect();
    by_hand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for (x, (j, c)) in out["neighbours"].as_array().unwrap().iter().zip(&by_hand) {
        assert_eq!(x["id"].as_u64().unwrap() as usize, *j, "{x}");
        assert!((f(&x["cosine"]) - c).abs() < 1e-5, "{x}: by hand {c}");
    }
}

#[test]
fn king_minus_man_plus_woman_is_queen() {
    let j = lmscope_json(&["--model", &gguf(), "analogy", "king", "man", "woman", "-k", "5"]);
    assert_eq!(j["query"], "king - man + woman");
    assert_eq!(j["results"][0]["token"], "Ġqueen");
    assert_eq!(j["results"][0]["id"], 15731);
    let inputs = j["inputs"].as_array().unwrap();
    let ids: Vec<&Value> = inputs.iter().map(|i| &i["id"]).collect();
    assert_eq!(ids, [&Value::from(4197), &Value::from(555), &Value::from(4166)]);
    for r in j["results"].as_array().unwrap() {
        assert!(!ids.contains(&&r["id"]), "the inputs are left out: {r}");
    }
    // " king" itself comes right after " queen" (rank 2): the inputs are often the nearest
    // vectors to the query, which is why gensim leaves them out of the ranking.
    assert_eq!(inputs[0]["rank"], 2);
    assert!(f(&inputs[0]["cosine"]) < f(&j["results"][0]["cosine"]));
    assert!(inputs[1]["rank"].as_u64().unwrap() > 40_000, " man is subtracted: far down");
}

#[test]
fn bad_input_gives_one_line_errors_and_exit_1() {
    let t = tiny();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["score", ""], "empty"),
        (vec!["score", "--prompt", "", "x"], "--prompt is empty"),
        (vec!["score", "The"], "first token has no prediction"),
        (vec!["score", "hi", ""], "empty"),
        (vec!["sample", ""], "text is empty"),
        (vec!["sample", "hi", "--temperature", "0"], "--temperature must be a positive"),
        (vec!["sample", "hi", "--temperature", "-0.5"], "--temperature must be a positive"),
        (vec!["sample", "hi", "--temperature", "inf"], "--temperature must be a positive"),
        (vec!["sample", "hi", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (vec!["sample", "hi", "--top-p", "1.01"], "--top-p must be in (0, 1]"),
        (vec!["sample", "hi", "--top-k", "0"], "--top-k must be between 1"),
        (vec!["sample", "hi", "--steps", "0"], "--steps must be at least 1"),
        (vec!["sample", "hi", "--rows", "0"], "--rows must be at least 1"),
        (vec!["sample", "hi", "--steps", "100000"], "does not fit"),
        (vec!["neighbours", "dog", "-k", "0"], "-k must be between 1"),
        (vec!["neighbours", ""], "empty"),
        (vec!["neighbours", "hello world"], "is not a single token"),
        (vec!["analogy", "dog", "cat"], "exactly three words"),
        (vec!["analogy"], "exactly three words"),
        (vec!["analogy", "a", "b", "c", "d"], "exactly three words"),
        (vec!["analogy", "dog", "cat", "hello world"], "is not a single token"),
        (vec!["analogy", "dog", "cat", "hat", "-k", "0"], "-k must be between 1"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["--model", &t];
        full.extend(args.iter());
        let out = lmscope().args(&full).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    // The multi-token error lists the pieces, as embed's does.
    let out =
        lmscope().args(["--model", &gguf(), "neighbours", "Helsinki", "--exact"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"["H", "els", "inki"]"#));
    // --pool mean averages them instead; a pooled word has no row, so nothing is left out.
    let j =
        lmscope_json(&["--model", &gguf(), "neighbours", "Helsinki", "--exact", "--pool", "mean"]);
    assert_eq!(j["id"], Value::Null);
    assert_eq!(j["excluded"], serde_json::json!([]));
    assert_eq!(j["neighbours"].as_array().unwrap().len(), 10);
}

mod properties {
    use super::tiny_dir;
    use candle_core::DType;
    use lmscope::load::{self, LoadedModel};
    use lmscope::sampling::Settings;
    use lmscope::source::ModelSpec;
    use lmscope::stages::{embed::Pool, sample, score, space};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn tiny() -> &'static LoadedModel {
        static M: OnceLock<LoadedModel> = OnceLock::new();
        M.get_or_init(|| {
            let spec = ModelSpec::parse(tiny_dir().to_str().unwrap(), None).unwrap();
            load::load(&spec.resolve().unwrap(), DType::F32).unwrap()
        })
    }

    fn clean(err: anyhow::Error) -> Result<(), TestCaseError> {
        let msg = format!("{err:#}");
        prop_assert!(!msg.is_empty() && !msg.contains('\n'), "unclean error: {msg:?}");
        Ok(())
    }

    fn finite(x: f64) -> Result<(), TestCaseError> {
        prop_assert!(x.is_finite(), "not finite: {x}");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn any_sampling_settings_give_finite_numbers_or_a_clean_error(
            // 10^e for e in -330..310: subnormal, tiny, ordinary and huge temperatures, and 0.
            exponent in -330.0f64..310.0,
            sign in prop_oneof![Just(1.0), Just(-1.0), Just(0.0)],
            top_k in proptest::option::of(0usize..600),
            top_p in proptest::option::of(-0.5f64..1.5),
            steps in 0usize..3,
            seed in any::<u64>(),
        ) {
            let temperature = sign * 10f64.powf(exponent);
            let prompt = lmscope::input::Prompt::Text("hi".into());
            let req = sample::SampleRequest {
                prompt: &prompt,
                settings: Settings { temperature, top_k, top_p },
                seed,
                steps,
                rows: Some(5),
                stop_at_eos: true,
            };
            match sample::run(tiny(), &req) {
                Ok(r) => {
                    for st in &r.steps {
                        prop_assert!(st.interval[0] <= st.u && st.u < st.interval[1]);
                        let sum: f64 = st.final_dist.iter().map(|t| t.prob).sum();
                        finite(sum)?;
                        prop_assert!(sum <= 1.0 + 1e-9);
                        for s in &st.stages {
                            finite(s.mass)?;
                            finite(s.cut)?;
                        }
                        for c in &st.candidates {
                            finite(c.prob_temperature)?;
                            finite(c.cumulative)?;
                            if let Some(p) = c.prob_final { finite(p)?; }
                        }
                    }
                }
                Err(e) => clean(e)?,
            }
        }

        #[test]
        fn any_text_scores_or_is_refused(text in "\\PC{0,12}", prompt in proptest::option::of("\\PC{0,6}")) {
            let texts = vec![lmscope::input::Prompt::Text(text)];
            let req = score::ScoreRequest { texts: &texts, prompt: prompt.as_deref() };
            match score::run(tiny(), &req) {
                Ok(score::ScoreReport::One(s)) => {
                    finite(s.total_logprob)?;
                    finite(s.perplexity)?;
                    for t in &s.tokens {
                        finite(t.logprob)?;
                        finite(t.entropy)?;
                    }
                }
                Ok(_) => prop_assert!(false, "one text gives one score"),
                Err(e) => clean(e)?,
            }
        }

        #[test]
        fn any_words_find_neighbours_or_are_refused(
            words in proptest::collection::vec("[a-z ]{0,6}", 0..5),
            k in 0usize..600,
            mean in any::<bool>(),
        ) {
            let pool = if mean { Pool::Mean } else { Pool::Single };
            let req = space::SpaceRequest { words: &words, k, exact: false, pool, space: space::Space::Input };
            match space::analogy(tiny(), &req) {
                Ok(r) => {
                    prop_assert_eq!(r.results.len(), k);
                    for n in &r.results { finite(n.cosine)?; }
                }
                Err(e) => clean(e)?,
            }
            match space::neighbours(tiny(), &req) {
                Ok(r) => for n in &r.neighbours { finite(n.cosine)?; },
                Err(e) => clean(e)?,
            }
        }
    }
}
