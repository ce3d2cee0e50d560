//! The inspection commands (`lens`, `attention`, `score`, `sample`, `neighbours`, `analogy`)
//! against Hugging Face transformers and numpy, through the binary's `--json` output. The
//! reference numbers come from fixtures/make_inspect_reference.py: fixtures/smollm2/*.json for the
//! real SmolLM2-135M-Instruct Q4_1 GGUF (these tests fail when the model is missing: run
//! scripts/fetch-model.sh) and fixtures/tiny-inspect/*.json for the tiny random Llama.
//!
//! Tolerances, and why (measured on both models, first with lmscope's library, then through the
//! binary with the inspect and probs branches merged):
//! - attention probabilities: 1e-5 absolute on both models. Measured max |difference|: tiny
//!   8.8e-7, SmolLM2 1.9e-6 (layer 15; 4.8e-7 at layer 0, 1.5e-6 at layer 29), so 1e-5 leaves a
//!   5x margin on the real model and would still catch a wrong mask, scale or head order (those
//!   move probabilities by 1e-2 and more). The head scores (previous, first, self, entropy,
//!   entropy_normalized: means over queries 2..t-1) to the same 1e-5 (entropy measured 1.2e-6).
//! - lens: equal top-1 ids at every layer and position (no cell of either reference is a near
//!   tie: the smallest top1-top2 logit gap is checked below); probabilities 1e-5 (tiny, measured
//!   1.9e-7) and 1e-4 (SmolLM2, measured 5.8e-6).
//! - induction scores 1e-5 (measured 7e-8 tiny, 4.7e-7 SmolLM2), the same top-10 heads.
//! - score: log-probs and entropies 1e-4 (measured 3e-6 tiny, 2.9e-5 SmolLM2), equal ranks and
//!   top ids.
//! - sample: equal kept counts after every stage; final probabilities to 1e-6 relative plus what
//!   the forward pass allows: a renormalised probability moves by at most 2 * D / T relative when
//!   every logit moves by at most D, so the bound is 1e-6 + 2 * D / T with D the max |logit
//!   difference| of this very row, measured in the test with `logits --full` (and itself required
//!   to be at most 1e-4). A flat 1e-6 cannot hold: through the binary (inspect and probs branches
//!   merged) the prompt's logits differ from transformers' by 3.9e-6 (tiny) and 3.6e-5 (SmolLM2),
//!   and the final probabilities by up to 5.7e-6 and 1.7e-5 relative, inside the bound every time
//!   (at most 1.6e-5 and 1.5e-4). `--rows all` makes `final` list every kept token.
//! - neighbours and analogies: equal ids in order, cosines 1e-5 (the embeddings are exactly the
//!   same dequantized numbers; only the f64 summation order differs).

mod common;

use base64::Engine;
use common::{json, lmscope_json, real_model, tiny_dir};
use serde_json::Value;

const TINY_REF: &str = "fixtures/tiny-inspect";
const SMOLLM2_REF: &str = "fixtures/smollm2";

fn tiny() -> String {
    tiny_dir().to_str().unwrap().to_string()
}

fn smollm2() -> String {
    real_model().to_str().unwrap().to_string()
}

/// Runs `lmscope --model MODEL ARGS... --json`.
fn run(model: &str, args: &[&str]) -> Value {
    let mut all = vec!["--model", model];
    all.extend_from_slice(args);
    lmscope_json(&all)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

fn ids(v: &Value) -> Vec<u64> {
    arr(v).iter().map(u).collect()
}

fn f32_le_base64(text: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// `got` and `want` are (id, value) lists, best first. They must hold the same ids in the same
/// order, except that two ids may trade places where the reference's values are within `2 * tol`
/// of each other (a tie that two float implementations may break either way); every value within
/// `tol` of the reference's value for that id.
fn assert_same_ranking(what: &str, got: &[(u64, f64)], want: &[(u64, f64)], tol: f64) {
    assert!(
        got.len() >= want.len(),
        "{what}: {} entries, the reference has {}",
        got.len(),
        want.len()
    );
    for (i, &(id, value)) in got.iter().take(want.len()).enumerate() {
        let Some(j) = want.iter().position(|&(w, _)| w == id) else {
            panic!("{what}: #{} is id {id}, which is not in the reference's list {want:?}", i + 1)
        };
        if i != j {
            assert!(
                (want[i].1 - want[j].1).abs() <= 2.0 * tol,
                "{what}: #{} is id {id} (value {value}), the reference has id {} ({}) there and id {id} at #{} ({})",
                i + 1,
                want[i].0,
                want[i].1,
                j + 1,
                want[j].1
            );
        }
        assert!(
            (value - want[j].1).abs() <= tol,
            "{what}: id {id}: {value} vs the reference's {} (tolerance {tol})",
            want[j].1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// lens

fn check_lens(model: &str, dir: &str, prob_tol: f64) {
    let reference = json(&format!("{dir}/lens.json"));
    let layers = u(&reference["num_layers"]) as usize;
    let cases = arr(&reference["cases"]);
    assert_eq!(cases.len(), 2);
    for case in cases {
        let text = s(&case["text"]);
        // Every top-1 is decided by more than the logits' disagreement (1e-3 on the real model).
        assert!(
            f(&case["min_gap"]) > 1e-3,
            "{text:?}: the reference has a near tie; choose another prompt"
        );
        let j = run(model, &["lens", text]);
        assert_eq!(ids(&j["ids"]), ids(&case["ids"]), "ids of {text:?}");
        let rows = arr(&j["rows"]);
        assert_eq!(rows.len(), layers + 1, "{text:?}: rows = embeddings + {layers} layers");
        for (r, (row, want_row)) in rows.iter().zip(arr(&case["rows"])).enumerate() {
            assert_eq!(row["layer"], want_row["layer"], "{text:?}: row {r}'s layer");
            if r == 0 {
                assert!(row["layer"].is_null(), "the first row is the embeddings (layer null)");
            }
            let positions = arr(&row["positions"]);
            let want_positions = arr(&want_row["positions"]);
            assert_eq!(positions.len(), want_positions.len(), "{text:?} row {r}: positions");
            for (cell, want) in positions.iter().zip(want_positions) {
                let p = u(&want["position"]);
                assert_eq!(u(&cell["position"]), p);
                let top = &arr(&cell["top"])[0];
                assert_eq!(
                    u(&top["id"]),
                    u(&want["id"]),
                    "{text:?} layer {} position {p}: top-1 {:?}, transformers {:?}",
                    want_row["layer"],
                    top["token"],
                    want["token"]
                );
                let d = (f(&top["prob"]) - f(&want["prob"])).abs();
                assert!(
                    d <= prob_tol,
                    "{text:?} layer {} position {p}: prob differs by {d}",
                    want_row["layer"]
                );
                let dl = (f(&top["logit"]) - f(&want["logit"])).abs();
                assert!(
                    dl <= 1e-3,
                    "{text:?} layer {} position {p}: logit differs by {dl}",
                    want_row["layer"]
                );
            }
        }
        // The last row is the model's own prediction: the same token and probability as
        // `logits --position P` at every position.
        let last = arr(&rows[layers]["positions"]);
        for cell in last {
            let p = u(&cell["position"]).to_string();
            let logits = run(model, &["logits", text, "--position", &p, "-k", "1"]);
            let want = &arr(&logits["top"])[0];
            let top = &arr(&cell["top"])[0];
            assert_eq!(
                u(&top["id"]),
                u(&want["id"]),
                "{text:?} position {p}: lens' last row vs logits"
            );
            let d = (f(&top["prob"]) - f(&want["prob"])).abs();
            assert!(
                d <= 1e-9,
                "{text:?} position {p}: lens' last row prob vs logits differ by {d}"
            );
        }
    }
}

#[test]
fn lens_top1_matches_transformers_on_the_tiny_model() {
    check_lens(&tiny(), TINY_REF, 1e-5);
}

#[test]
fn lens_top1_matches_transformers_on_smollm2() {
    check_lens(&smollm2(), SMOLLM2_REF, 1e-4);
}

// ---------------------------------------------------------------------------------------------
// attention

fn check_attention(model: &str, dir: &str, tol: f64) {
    let reference = json(&format!("{dir}/attention.json"));
    let n_heads = u(&reference["num_heads"]) as usize;
    let cases = arr(&reference["cases"]);
    assert_eq!(cases.len(), 2);
    for case in cases {
        let text = s(&case["text"]);
        let t = arr(&case["ids"]).len();
        for want_layer in arr(&case["layers"]) {
            let layer = u(&want_layer["layer"]);
            let j = run(model, &["attention", text, "--layer", &layer.to_string()]);
            assert_eq!(u(&j["layer"]), layer);
            assert_eq!(arr(&j["tokens"]).len(), t, "{text:?}: tokens");
            let heads = arr(&j["heads"]);
            assert_eq!(heads.len(), n_heads, "{text:?} layer {layer}: every head");
            let mut worst = 0f64;
            for (head, want) in heads.iter().zip(arr(&want_layer["heads"])) {
                let h = u(&want["head"]);
                assert_eq!(u(&head["head"]), h);
                assert_eq!(
                    u(&head["kv_head"]),
                    u(&want["kv_head"]),
                    "layer {layer} head {h}: kv head"
                );
                let probs = arr(&head["probs"]);
                assert_eq!(probs.len(), t, "layer {layer} head {h}: one row per query");
                for (q, (row, want_row)) in probs.iter().zip(arr(&want["probs"])).enumerate() {
                    let row = arr(row);
                    assert_eq!(row.len(), t, "layer {layer} head {h} query {q}: a full square row");
                    for (k, (x, w)) in row.iter().zip(arr(want_row)).enumerate() {
                        let (x, w) = (f(x), f(w));
                        if k > q {
                            assert_eq!(
                                x, 0.0,
                                "layer {layer} head {h}: above the diagonal [{q}][{k}]"
                            );
                        }
                        let d = (x - w).abs();
                        worst = worst.max(d);
                        assert!(d <= tol, "{text:?} layer {layer} head {h} [{q}][{k}]: {x} vs {w}");
                    }
                }
            }
            eprintln!("{text:?} layer {layer}: max |attention difference| {worst:.1e}");
            // The scores that classify each head, from the same probabilities.
            let want_scores = arr(&arr(&case["head_scores"])[layer as usize]["heads"]);
            let mut worst_entropy = 0f64;
            for (head, want) in heads.iter().zip(want_scores) {
                let h = u(&want["head"]);
                let sc = &head["scores"];
                assert_eq!(
                    u(&sc["queries"]),
                    u(&want["queries"]),
                    "layer {layer} head {h}: queries"
                );
                for key in ["previous", "first", "self", "entropy", "entropy_normalized"] {
                    let (x, w) = (f(&sc[key]), f(&want[key]));
                    let d = (x - w).abs();
                    if key.starts_with("entropy") {
                        worst_entropy = worst_entropy.max(d);
                    }
                    assert!(d <= tol, "{text:?} layer {layer} head {h}: {key} {x} vs {w}");
                }
            }
            eprintln!("{text:?} layer {layer}: max |entropy difference| {worst_entropy:.1e}");
        }
    }
}

#[test]
fn attention_probabilities_match_transformers_on_the_tiny_model() {
    check_attention(&tiny(), TINY_REF, 1e-5);
}

#[test]
fn attention_probabilities_match_transformers_on_smollm2() {
    check_attention(&smollm2(), SMOLLM2_REF, 1e-5);
}

fn check_induction(model: &str, dir: &str, tol: f64) {
    let reference = json(&format!("{dir}/attention.json"));
    let ind = &reference["induction"];
    let text = s(&ind["text"]);
    let want: Vec<(u64, u64, f64)> = arr(&ind["heads"])
        .iter()
        .map(|h| (u(&h["layer"]), u(&h["head"]), f(&h["score"])))
        .collect();
    let n = 10.min(want.len());
    // The top 10 is a set that two implementations can agree on: the 10th is clear of the 11th.
    if want.len() > n {
        assert!(
            want[n - 1].2 - want[n].2 > 2.0 * tol,
            "the reference's 10th and 11th heads nearly tie"
        );
    }
    let j = run(model, &["attention", text, "--induction"]);
    let got: Vec<(u64, u64, f64)> = arr(&j["induction"])
        .iter()
        .map(|h| (u(&h["layer"]), u(&h["head"]), f(&h["score"])))
        .collect();
    assert!(got.len() >= n, "induction: {} heads listed, want at least {n}", got.len());
    assert!(got.windows(2).all(|w| w[0].2 >= w[1].2), "induction is not sorted by score: {got:?}");
    for &(l, h, score) in &got {
        let w = want.iter().find(|w| (w.0, w.1) == (l, h)).expect("a head of the model");
        assert!(
            (score - w.2).abs() <= tol,
            "layer {l} head {h}: induction score {score} vs {}",
            w.2
        );
    }
    let key = |v: &[(u64, u64, f64)]| {
        let mut k: Vec<(u64, u64)> = v[..n].iter().map(|x| (x.0, x.1)).collect();
        k.sort();
        k
    };
    assert_eq!(key(&got), key(&want), "the top {n} induction heads");
    let as_ids = |v: &[(u64, u64, f64)]| -> Vec<(u64, f64)> {
        v.iter().map(|x| (x.0 * 1000 + x.1, x.2)).collect()
    };
    assert_same_ranking("induction ranking", &as_ids(&got[..n]), &as_ids(&want[..n]), tol);
}

#[test]
fn induction_ranking_matches_transformers_on_the_tiny_model() {
    check_induction(&tiny(), TINY_REF, 1e-5);
}

#[test]
fn induction_ranking_matches_transformers_on_smollm2() {
    check_induction(&smollm2(), SMOLLM2_REF, 1e-5);
}

// ---------------------------------------------------------------------------------------------
// score

/// lmscope's scored tokens by position (entries without a log-prob, if any, are position 0's).
fn scored(j: &Value) -> Vec<&Value> {
    arr(&j["tokens"]).iter().filter(|t| !t["logprob"].is_null()).collect()
}

fn check_scored_tokens(what: &str, got: &[&Value], want: &[Value], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: scored tokens");
    for (g, w) in got.iter().zip(want) {
        let p = u(&w["position"]);
        assert_eq!(u(&g["position"]), p, "{what}: positions");
        assert_eq!(u(&g["id"]), u(&w["id"]), "{what} position {p}: id");
        let d = (f(&g["logprob"]) - f(&w["logprob"])).abs();
        assert!(
            d <= tol,
            "{what} position {p}: logprob {} vs {} (diff {d})",
            g["logprob"],
            w["logprob"]
        );
        let want_prob = f(&w["prob"]);
        let dp = (f(&g["prob"]) - want_prob).abs();
        assert!(
            dp <= tol * want_prob.max(1e-300) * 1.01 + 1e-12,
            "{what} position {p}: prob {} vs {want_prob}",
            g["prob"]
        );
        assert_eq!(u(&g["rank"]), u(&w["rank"]), "{what} position {p}: rank");
        assert_eq!(u(&g["top_id"]), u(&w["top_id"]), "{what} position {p}: top id");
        let de = (f(&g["entropy"]) - f(&w["entropy"])).abs();
        assert!(de <= tol, "{what} position {p}: entropy {} vs {}", g["entropy"], w["entropy"]);
    }
}

fn check_score(model: &str, dir: &str, tol: f64) {
    let reference = json(&format!("{dir}/score.json"));
    let cases = arr(&reference["cases"]);
    assert!(cases.len() >= 4);
    for case in cases {
        let text = s(&case["text"]);
        let j = run(model, &["score", text]);
        assert_eq!(ids(&j["ids"]), ids(&case["ids"]), "ids of {text:?}");
        let got = scored(&j);
        let want = arr(&case["tokens"]);
        check_scored_tokens(text, &got, want, tol);
        let count = want.len() as f64;
        let d = (f(&j["total_logprob"]) - f(&case["total_logprob"])).abs();
        assert!(
            d <= tol * count,
            "{text:?}: total_logprob {} vs {}",
            j["total_logprob"],
            case["total_logprob"]
        );
        let d = (f(&j["mean_logprob"]) - f(&case["mean_logprob"])).abs();
        assert!(
            d <= tol,
            "{text:?}: mean_logprob {} vs {}",
            j["mean_logprob"],
            case["mean_logprob"]
        );
        let (pp, want_pp) = (f(&j["perplexity"]), f(&case["perplexity"]));
        assert!(
            (pp - want_pp).abs() <= 1.01 * tol * want_pp,
            "{text:?}: perplexity {pp} vs {want_pp}"
        );
    }
    // --prompt: only the continuation is scored.
    let conts = &reference["continuations"];
    let prompt = s(&conts["prompt"]);
    for cand in arr(&conts["candidates"]) {
        let cont = s(&cand["continuation"]);
        assert!(cand["prompt_plus_continuation_tokenizes_the_same"].as_bool().unwrap());
        let j = run(model, &["score", "--prompt", prompt, cont]);
        let what = format!("--prompt {prompt:?} {cont:?}");
        check_scored_tokens(&what, &scored(&j), arr(&cand["tokens"]), tol);
        let d = (f(&j["total_logprob"]) - f(&cand["total_logprob"])).abs();
        assert!(
            d <= tol * arr(&cand["tokens"]).len() as f64,
            "{what}: total_logprob {}",
            j["total_logprob"]
        );
    }
}

#[test]
fn score_matches_transformers_on_the_tiny_model() {
    check_score(&tiny(), TINY_REF, 1e-4);
}

#[test]
fn score_matches_transformers_on_smollm2() {
    check_score(&smollm2(), SMOLLM2_REF, 1e-4);
}

#[test]
fn helsinki_scores_higher_than_stockholm_on_smollm2() {
    let model = smollm2();
    let total = |text: &str| f(&run(&model, &["score", text])["total_logprob"]);
    let (h, s) = (
        total("The capital of Finland is Helsinki."),
        total("The capital of Finland is Stockholm."),
    );
    assert!(h > s + 1.0, "Helsinki {h} vs Stockholm {s}");
}

// ---------------------------------------------------------------------------------------------
// sample

/// A stage's name without case, '-', '_' and spaces: "top-k", "top_k" and "Top K" are "topk".
fn stage<'a>(stages: &'a [Value], name: &str) -> &'a Value {
    let norm = |x: &str| x.to_lowercase().replace(['-', '_', ' '], "");
    stages
        .iter()
        .find(|st| norm(s(&st["stage"])) == norm(name))
        .unwrap_or_else(|| panic!("no stage {name:?} in {stages:?}"))
}

fn check_sample(model: &str, dir: &str) {
    let reference = json(&format!("{dir}/sample.json"));
    let prompt = s(&reference["prompt"]);
    // How far this row's logits are from transformers': what the final probabilities can allow.
    let logits = run(model, &["logits", prompt, "--full", "-k", "1"]);
    let row: Vec<f64> = arr(&logits["logits"]).iter().map(f).collect();
    let want_row = f32_le_base64(s(&reference["last_logits_f32le_b64"]));
    assert_eq!(row.len(), want_row.len());
    let logit_diff =
        row.iter().zip(&want_row).map(|(a, &b)| (a - b as f64).abs()).fold(0.0, f64::max);
    eprintln!("sample: max |logit difference| of the prompt's last row {logit_diff:.1e}");
    assert!(
        logit_diff <= 1e-4,
        "the prompt's last logits differ from transformers' by {logit_diff}"
    );

    let settings = arr(&reference["settings"]);
    assert!(settings.len() >= 4);
    for set in settings {
        let (t, k, p) = (f(&set["temperature"]), u(&set["top_k"]), f(&set["top_p"]));
        let what = format!("T={t} k={k} p={p}");
        let args = [t.to_string(), k.to_string(), p.to_string()];
        let j = run(
            model,
            &[
                "sample",
                prompt,
                "--temperature",
                &args[0],
                "--top-k",
                &args[1],
                "--top-p",
                &args[2],
                "--seed",
                "1",
                // every kept token in `final`, not just the first 10
                "--rows",
                "all",
            ],
        );
        let step = &arr(&j["steps"])[0];
        let stages = arr(&step["stages"]);
        for want in arr(&set["stages"]) {
            let name = s(&want["stage"]);
            let got = stage(stages, name);
            assert_eq!(u(&got["kept"]), u(&want["kept"]), "{what}: kept after {name}");
            // The mass the stage kept, in the distribution it was given.
            let d = (f(&got["mass"]) - f(&want["mass_kept_of_input"])).abs();
            assert!(
                d <= 1e-6 + 2.0 * logit_diff / t,
                "{what}: {name} kept mass {} vs {}",
                got["mass"],
                want["mass_kept_of_input"]
            );
        }
        assert_eq!(u(&step["kept"]), u(&set["final_count"]), "{what}: kept");
        let fin = arr(&step["final"]);
        assert_eq!(
            fin.len() as u64,
            u(&set["final_count"]),
            "{what}: final lists every kept token"
        );
        let total: f64 = fin.iter().map(|x| f(&x["prob"])).sum();
        assert!((total - 1.0).abs() <= 1e-9, "{what}: final sums to {total}");
        let rel = 1e-6 + 2.0 * logit_diff / t;
        let got: Vec<(u64, f64)> = fin.iter().map(|x| (u(&x["id"]), f(&x["prob"]))).collect();
        let want: Vec<(u64, f64)> =
            arr(&set["final"]).iter().map(|x| (u(&x["id"]), f(&x["prob"]))).collect();
        let mut worst = 0f64;
        for (id, prob) in &got[..want.len()] {
            let w = want.iter().find(|x| x.0 == *id).map(|x| x.1).unwrap_or_else(|| {
                panic!(
                    "{what}: id {id} is in lmscope's first {} but not in transformers'",
                    want.len()
                )
            });
            let r = (prob - w).abs() / w;
            worst = worst.max(r);
            assert!(r <= rel, "{what}: id {id}: prob {prob} vs {w} (relative {r:.1e} > {rel:.1e})");
        }
        eprintln!("{what}: final probabilities within {worst:.1e} relative (bound {rel:.1e})");
        // The order: most likely first (exact ties aside, which the bound covers).
        let tol = want.iter().map(|x| x.1 * rel).fold(0.0, f64::max);
        assert_same_ranking(&format!("{what}: final"), &got, &want, tol);
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "{what}: final is not most likely first");
    }
}

#[test]
fn sample_stages_match_transformers_warpers_on_the_tiny_model() {
    check_sample(&tiny(), TINY_REF);
}

#[test]
fn sample_stages_match_transformers_warpers_on_smollm2() {
    check_sample(&smollm2(), SMOLLM2_REF);
}

// ---------------------------------------------------------------------------------------------
// neighbours and analogy

fn check_neighbours(model: &str, dir: &str, tol: f64) {
    let reference = json(&format!("{dir}/neighbours.json"));
    for w in arr(&reference["words"]) {
        let word = s(&w["word"]);
        let want_list = arr(&w["neighbours"]);
        let k = want_list.len().to_string();
        let j = run(model, &["neighbours", word, "-k", &k]);
        assert_eq!(u(&j["id"]), u(&w["id"]), "{word:?}: id");
        let got_list = arr(&j["neighbours"]);
        assert_eq!(got_list.len(), want_list.len(), "{word:?}: -k {k}");
        for (n, g) in got_list.iter().enumerate() {
            assert_eq!(u(&g["rank"]), n as u64 + 1, "{word:?}: ranks");
            assert_ne!(u(&g["id"]), u(&w["id"]), "{word:?}: the word itself is excluded");
        }
        let got: Vec<(u64, f64)> =
            got_list.iter().map(|x| (u(&x["id"]), f(&x["cosine"]))).collect();
        let want: Vec<(u64, f64)> =
            want_list.iter().map(|x| (u(&x["id"]), f(&x["cosine"]))).collect();
        assert!(
            f(&w["gap_after_last"]) > 2.0 * tol,
            "{word:?}: the reference's top-{k} ends in a near tie"
        );
        assert_same_ranking(&format!("neighbours of {word:?}"), &got, &want, tol);
    }
}

#[test]
fn neighbours_match_numpy_on_the_tiny_model() {
    check_neighbours(&tiny(), TINY_REF, 1e-5);
}

#[test]
fn neighbours_match_numpy_on_smollm2() {
    check_neighbours(&smollm2(), SMOLLM2_REF, 1e-5);
}

fn check_analogies(model: &str, dir: &str, tol: f64) {
    let reference = json(&format!("{dir}/neighbours.json"));
    for a in arr(&reference["analogies"]) {
        let (wa, wb, wc) = (s(&a["a"]), s(&a["b"]), s(&a["c"]));
        let what = s(&a["query"]);
        let j = run(model, &["analogy", wa, wb, wc]);
        let results = arr(&j["results"]);
        let n = 5;
        assert!(results.len() >= n, "{what}: {} results", results.len());
        assert!(
            f(&a["gap_after_5"]) > 2.0 * tol,
            "{what}: the reference's top 5 ends in a near tie"
        );
        let got: Vec<(u64, f64)> =
            results[..n].iter().map(|x| (u(&x["id"]), f(&x["cosine"]))).collect();
        let want: Vec<(u64, f64)> =
            arr(&a["results"])[..n].iter().map(|x| (u(&x["id"]), f(&x["cosine"]))).collect();
        assert_same_ranking(what, &got, &want, tol);
        for (r, x) in results.iter().enumerate() {
            assert_eq!(u(&x["rank"]), r as u64 + 1, "{what}: ranks");
        }
        let inputs = arr(&j["inputs"]);
        assert_eq!(inputs.len(), 3, "{what}: three inputs");
        for (g, w) in inputs.iter().zip(arr(&a["inputs"])) {
            assert_eq!(u(&g["id"]), u(&w["id"]), "{what}: input {:?}", w["word"]);
            assert_eq!(u(&g["rank"]), u(&w["rank"]), "{what}: rank of input {:?}", w["word"]);
            assert!(
                results.iter().all(|x| u(&x["id"]) != u(&w["id"])),
                "{what}: inputs are excluded"
            );
        }
    }
}

#[test]
fn analogies_match_numpy_on_the_tiny_model() {
    check_analogies(&tiny(), TINY_REF, 1e-5);
}

#[test]
fn analogies_match_numpy_on_smollm2() {
    check_analogies(&smollm2(), SMOLLM2_REF, 1e-5);
}

#[test]
fn king_minus_man_plus_woman_is_queen_on_smollm2() {
    let j = run(&smollm2(), &["analogy", "king", "man", "woman"]);
    let first = &arr(&j["results"])[0];
    assert_eq!(u(&first["id"]), 15731, "king - man + woman: {first}"); // " queen"
}
