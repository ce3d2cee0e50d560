//! Inside the forward pass: `lens`, `attention` and `kv-check`. Golden tables on the tiny
//! fixture, the key facts on the real SmolLM2 GGUF (the lens' last row is the model's logits,
//! attention rows are distributions, the cache changes nothing), and clean errors.

mod common;

use common::{lmscope, lmscope_err, lmscope_json, real_model, repo_path};
use serde_json::Value;

const PROMPT: &str = "The capital of Finland is";

fn gguf() -> String {
    real_model().to_str().unwrap().to_string()
}

const TINY: &str = "fixtures/tiny-llama";

/// Compares a command's stdout with tests/golden/NAME.txt (UPDATE_GOLDEN=1 rewrites it): byte
/// for byte on the CPU that wrote it, floats by their last digit elsewhere.
fn golden(name: &str, args: &[&str]) {
    let actual = common::compare::golden("inspect", name, &[], args);
    assert_fits_80_columns(&actual, args);
}

/// Every line of a table for people fits in an 80-column terminal.
fn assert_fits_80_columns(text: &str, args: &[&str]) {
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "{args:?}: a line of {}: {line}", line.chars().count());
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u(v: &Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}")) as usize
}

#[test]
fn golden_tables_on_the_tiny_model() {
    golden("lens", &["--model", TINY, "lens", PROMPT, "--track", "dog"]);
    golden("lens_position", &["--model", TINY, "lens", PROMPT, "--position", "-2", "-k", "2"]);
    golden("attention_layer", &["--model", TINY, "attention", PROMPT, "--layer", "1"]);
    golden(
        "attention_summary_induction",
        &["--model", TINY, "attention", PROMPT, "--summary", "--induction"],
    );
    // A text longer than the numeric heatmap fits: shades only, two columns a key.
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen";
    golden("attention_long", &["--model", TINY, "attention", long, "--layer", "0", "--head", "1"]);
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let run = |color: &str, no_color: bool| {
        let mut cmd = lmscope();
        cmd.args(["--model", TINY, "lens", PROMPT, "--color", color]);
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.current_dir(repo_path("")).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    // stdout is a pipe here: auto means no colour, and the shade characters carry the shades.
    let auto = run("auto", false);
    assert!(!auto.contains('\x1b'));
    assert!(auto.contains('█'));
    assert_eq!(run("never", false), auto);
    // --color always wins over NO_COLOR (a flag is more specific than the environment).
    let always = run("always", true);
    assert!(always.contains("\x1b[48;5;"), "{always}");
    let attention = lmscope()
        .current_dir(repo_path(""))
        .args(["--model", TINY, "attention", PROMPT, "--layer", "0", "--color", "always"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&attention.stdout).contains("\x1b[0m"));
}

#[test]
fn bad_input_gives_one_line_errors() {
    let t = repo_path(TINY);
    let t = t.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["lens", ""], "text is empty"),
        (vec!["lens", "hi", "--position", "5"], "--position 5 is out of range"),
        (vec!["lens", "hi", "--position", "-3"], "--position -3 is out of range"),
        (vec!["lens", "hi", "-k", "0"], "--top-k must be between 1"),
        (vec!["lens", "hi", "--track", "hello world"], "is not a single token"),
        (vec!["attention", "", "--layer", "0"], "text is empty"),
        (vec!["attention", "", "--summary"], "text is empty"),
        (
            vec!["attention", "hi", "--layer", "2"],
            "--layer 2 is out of range: the model has 2 layers (0..1)",
        ),
        (vec!["attention", "hi", "--layer", "0", "--head", "4"], "--head 4 is out of range"),
        (vec!["kv-check", ""], "text is empty"),
        (vec!["kv-check", "hi", "--steps", "0"], "--steps must be at least 1"),
        (vec!["kv-check", "hi", "--steps", "1000"], "do not fit"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["--model", t];
        full.extend(args.iter());
        let stderr = lmscope_err(&full);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        let out = lmscope().args(&full).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    // On the real model too: its 30 layers and 9 heads.
    let g = gguf();
    let stderr = lmscope_err(&["--model", &g, "attention", PROMPT, "--layer", "30"]);
    assert!(stderr.contains("the model has 30 layers (0..29)"), "{stderr}");
    let stderr = lmscope_err(&["--model", &g, "attention", PROMPT, "--layer", "0", "--head", "9"]);
    assert!(stderr.contains("a layer has 9 heads (0..8)"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["attention", "hi"], // no --layer, --summary or --induction
        vec!["attention", "hi", "--head", "1"], // --head needs --layer
        vec!["attention", "hi", "--summary", "--layer", "1"],
        vec!["attention", "hi", "--layer", "-1"],
        vec!["lens", "hi", "--exact"], // --exact needs --track
        vec!["lens", "hi", "--color", "sometimes"],
        vec!["kv-check", "hi", "--steps", "-1"],
    ] {
        let out = lmscope().arg("--model").arg(repo_path(TINY)).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

#[test]
fn the_lens_last_row_is_the_models_prediction() {
    let g = gguf();
    let j = lmscope_json(&["--model", &g, "lens", PROMPT, "-k", "5"]);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 31, "the embeddings and 30 layers");
    assert!(rows[0]["layer"].is_null());
    for (i, row) in rows.iter().enumerate().skip(1) {
        assert_eq!(u(&row["layer"]), i - 1);
    }
    assert_eq!(j["tokens"], serde_json::json!(["The", "Ġcapital", "Ġof", "ĠFinland", "Ġis"]));
    assert!(f(&j["check"]["max_abs_diff"]) <= 1e-4, "{}", j["check"]);
    assert_eq!(j["check"]["top1_equal"], true);
    let last = rows.last().unwrap()["positions"].as_array().unwrap();
    assert_eq!(last.len(), 5);
    for (p, cell) in last.iter().enumerate() {
        let logits = lmscope_json(&[
            "--model",
            &g,
            "logits",
            PROMPT,
            "--position",
            &p.to_string(),
            "-k",
            "5",
        ]);
        for (got, want) in
            cell["top"].as_array().unwrap().iter().zip(logits["top"].as_array().unwrap())
        {
            assert_eq!(got["id"], want["id"], "position {p}");
            assert!((f(&got["prob"]) - f(&want["prob"])).abs() <= 1e-4, "position {p}");
            assert!((f(&got["logit"]) - f(&want["logit"])).abs() <= 1e-4, "position {p}");
        }
    }
    // The notebook's answer: " the" first (0.262) and " Helsinki" second, at the last layer.
    assert_eq!(last[4]["top"][0]["id"], 260);
    assert_eq!(last[4]["top"][1]["token"], "ĠHelsinki");
    // The embeddings row is the tied lm_head on the token's own embedding: mostly itself.
    assert_eq!(rows[0]["positions"][4]["top"][0]["token"], "Ġis");
}

#[test]
fn the_lens_tracks_a_word_through_the_layers() {
    let g = gguf();
    let j =
        lmscope_json(&["--model", &g, "lens", PROMPT, "--track", "Helsinki", "--position", "-1"]);
    let track = &j["track"];
    assert_eq!(track["id"], 42398);
    assert_eq!(track["looked_up"], " Helsinki");
    assert_eq!(track["position"], 4);
    let rows = track["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 31);
    let last = rows.last().unwrap();
    assert_eq!(last["rank"], 2);
    assert!((f(&last["prob"]) - 0.112).abs() < 1e-3, "{last}");
    // With --position only that position is in the rows.
    assert_eq!(j["position"], 4);
    assert_eq!(j["rows"][7]["positions"].as_array().unwrap().len(), 1);
    // " Helsinki" is nowhere near the top before the last layers.
    assert!(u(&rows[10]["rank"]) > 100, "{}", rows[10]);
    let stderr = lmscope_err(&["--model", &g, "lens", PROMPT, "--track", "Helsinki", "--exact"]);
    assert!(stderr.contains("is not a single token"), "{stderr}");
}

/// Every head's rows sum to 1 and nothing is above the diagonal.
fn check_distributions(heads: &[Value], t: usize) {
    for h in heads {
        let probs = h["probs"].as_array().unwrap();
        assert_eq!(probs.len(), t);
        for (i, row) in probs.iter().enumerate() {
            let row: Vec<f64> = row.as_array().unwrap().iter().map(f).collect();
            assert_eq!(row.len(), t, "full square");
            let sum: f64 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "head {} row {i} sums to {sum}", h["head"]);
            assert!(
                row[i + 1..].iter().all(|&p| p == 0.0),
                "head {} row {i} sees later keys",
                h["head"]
            );
            assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)));
        }
    }
}

#[test]
fn attention_rows_are_distributions_and_heads_share_kv_heads() {
    let g = gguf();
    for layer in ["0", "17", "29"] {
        let j = lmscope_json(&["--model", &g, "attention", PROMPT, "--layer", layer]);
        assert_eq!(j["layer"], layer.parse::<u64>().unwrap());
        let heads = j["heads"].as_array().unwrap();
        assert_eq!(heads.len(), 9);
        for (h, head) in heads.iter().enumerate() {
            assert_eq!(u(&head["head"]), h);
            assert_eq!(u(&head["kv_head"]), h / 3, "9 query heads on 3 KV heads");
            let s = &head["scores"];
            assert_eq!(s["queries"], 3);
            for key in ["previous", "first", "self", "entropy_normalized"] {
                assert!((0.0..=1.0 + 1e-9).contains(&f(&s[key])), "{key}: {s}");
            }
        }
        check_distributions(heads, 5);
    }
    // --head: one head, the same numbers as in the whole layer.
    let one = lmscope_json(&["--model", &g, "attention", PROMPT, "--layer", "16", "--head", "0"]);
    let all = lmscope_json(&["--model", &g, "attention", PROMPT, "--layer", "16"]);
    assert_eq!(one["heads"].as_array().unwrap().len(), 1);
    assert_eq!(one["heads"][0], all["heads"][0]);
    // A previous-token head: its score is the mean of the subdiagonal over queries 2..4.
    let probs = &all["heads"][0]["probs"];
    let mean = (2..5).map(|i| f(&probs[i][i - 1])).sum::<f64>() / 3.0;
    assert!((f(&all["heads"][0]["scores"]["previous"]) - mean).abs() < 1e-6);
    assert_eq!(all["heads"][0]["scores"]["class"], "previous");
}

#[test]
fn summary_covers_every_head_and_induction_ranks_them() {
    let g = gguf();
    let j = lmscope_json(&["--model", &g, "attention", PROMPT, "--summary", "--induction"]);
    let summary = j["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 270);
    assert!(j.get("heads").is_none() && j.get("layer").is_none());
    let input = &j["induction_input"];
    assert_eq!(input["source"], "random", "the prompt repeats no token");
    assert_eq!(input["seed"], 0);
    let ids = input["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 40);
    assert_eq!(ids[..20], ids[20..]);
    assert_eq!(input["queries"], 20);
    let ranked = j["induction"].as_array().unwrap();
    assert_eq!(ranked.len(), 270);
    let scores: Vec<f64> = ranked.iter().map(|x| f(&x["score"])).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted, highest first");
    // SmolLM2-135M's strongest induction heads are in layers 17 and 18.
    assert!(scores[0] > 0.5, "{}", ranked[0]);
    assert!((17..=18).contains(&u(&ranked[0]["layer"])), "{}", ranked[0]);
    // The same heads lead on a text that repeats itself.
    let text = "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal. Mr and Mrs Dursley";
    let t = lmscope_json(&["--model", &g, "attention", text, "--induction"]);
    assert_eq!(t["induction_input"]["source"], "text");
    assert!(t["induction_input"].get("seed").is_none());
    let top: Vec<(u64, u64)> = t["induction"].as_array().unwrap()[..3]
        .iter()
        .map(|x| (x["layer"].as_u64().unwrap(), x["head"].as_u64().unwrap()))
        .collect();
    let first = (ranked[0]["layer"].as_u64().unwrap(), ranked[0]["head"].as_u64().unwrap());
    assert!(top.contains(&first), "{top:?} vs {first:?}");
}

#[test]
fn kv_check_agrees_with_full_passes() {
    let g = gguf();
    let j = lmscope_json(&["--model", &g, "kv-check", PROMPT, "--steps", "6"]);
    assert_eq!(j["identical"], true);
    assert!(f(&j["max_abs_diff"]) < 1e-3, "{}", j["max_abs_diff"]);
    let steps = j["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6);
    let argmax = lmscope_json(&["--model", &g, "argmax", PROMPT, "--steps", "6"]);
    for (i, (s, a)) in steps.iter().zip(argmax["steps"].as_array().unwrap()).enumerate() {
        assert_eq!(u(&s["step"]), i + 1);
        assert_eq!(s["id"], a["id"], "the same greedy tokens as argmax");
        assert_eq!(s["id"], s["id_full"]);
        assert_eq!(u(&s["positions"]), 5 + i);
        assert!(f(&s["ms_cached"]) > 0.0 && f(&s["ms_full"]) > 0.0);
        assert_eq!(u(&s["cache_bytes"]), 30 * 2 * 3 * (5 + i) * 64 * 4);
    }
    // 10 positions cached after 6 steps (the last token is not yet in it), f32.
    assert_eq!(u(&j["cache"]["positions"]), 10);
    assert_eq!(u(&j["cache_bytes"]), 30 * 2 * 3 * 10 * 64 * 4);
    assert_eq!(u(&j["cache_bytes_without_gqa"]), 3 * u(&j["cache_bytes"]));
    // In bf16 each value takes 2 bytes.
    let bf16 =
        lmscope_json(&["--model", &g, "--dtype", "bf16", "kv-check", PROMPT, "--steps", "1"]);
    assert_eq!(u(&bf16["cache_bytes"]), 30 * 2 * 3 * 5 * 64 * 2);
    assert_eq!(bf16["cache"]["dtype"], "bf16");
}

#[test]
fn real_model_tables_fit_80_columns() {
    let g = gguf();
    for args in [
        vec!["lens", PROMPT, "--track", "Helsinki"],
        // More ranks than fit side by side: tables below each other.
        vec!["lens", PROMPT, "-k", "5", "--track", "Helsinki"],
        vec!["lens", PROMPT, "-k", "10"],
        vec!["attention", PROMPT, "--layer", "16"],
        vec!["attention", PROMPT, "--summary", "--induction"],
        vec!["kv-check", PROMPT],
    ] {
        let mut full = vec!["--model", &g];
        full.extend(args.iter());
        let out = lmscope().env("COLUMNS", "80").args(&full).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert_fits_80_columns(&String::from_utf8(out.stdout).unwrap(), &args);
    }
}
