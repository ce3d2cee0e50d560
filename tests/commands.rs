//! Every notebook step as an lmscope command: numbers against transformers on the real
//! SmolLM2 GGUF, golden tables on the tiny fixture, and clean errors for bad input.

mod common;

use common::{json, lmscope, lmscope_err, lmscope_json, real_model, tiny_dir};
use std::io::Read;
use std::process::Stdio;

fn gguf() -> String {
    real_model().to_str().unwrap().to_string()
}

fn tiny() -> String {
    tiny_dir().to_str().unwrap().to_string()
}

/// Compares a command's stdout with tests/golden/NAME.txt (UPDATE_GOLDEN=1 rewrites it).
fn golden(name: &str, args: &[&str]) {
    golden_with(name, &[], args)
}

/// [`golden`] with environment variables set.
fn golden_with(name: &str, env: &[(&str, &str)], args: &[&str]) {
    common::compare::golden("commands", name, env, args);
}

#[test]
fn golden_tables_on_the_tiny_model() {
    let t = "fixtures/tiny-llama".to_string();
    golden("tokenize", &["--model", &t, "tokenize", "The capital of Finland is"]);
    golden("tokenize_ids", &["--model", &t, "tokenize", "--ids", "277,308,1"]);
    golden(
        "logits",
        &["--model", &t, "logits", "The capital of Finland is", "-k", "5", "--temperature", "2"],
    );
    golden("argmax", &["--model", &t, "argmax", "The capital of Finland is", "--steps", "3"]);
    golden("embed", &["--model", &t, "embed", "dog", "cat", "--dims", "4"]);
    golden("similarity_pair", &["--model", &t, "similarity", "dog", "cat"]);
    golden("similarity_matrix", &["--model", &t, "similarity", "dog", "cat", "hat"]);
    // The kernels row names the backend: the portable one runs on every CPU.
    golden_with("model", &[("LMSCOPE_KERNELS", "portable")], &["--model", &t, "model"]);
    golden(
        "generate",
        &["--model", &t, "generate", "The capital", "--max-new-tokens", "8", "--show-steps"],
    );
}

#[test]
fn golden_argmax_on_the_real_model() {
    golden(
        "smollm2_argmax",
        &["--model", &gguf(), "argmax", "The capital of Finland is", "--steps", "3"],
    );
}

#[test]
fn logits_probabilities_match_transformers() {
    let reference = json("fixtures/smollm2/logits.json");
    for case in reference["cases"].as_array().unwrap().iter().take(4) {
        let text = case["text"].as_str().unwrap();
        let j = lmscope_json(&["--model", &gguf(), "logits", text]);
        for (got, want) in j["top"].as_array().unwrap().iter().zip(case["top"].as_array().unwrap())
        {
            assert_eq!(got["id"], want["id"], "{text:?}");
            let (p, q) = (got["prob"].as_f64().unwrap(), want["prob"].as_f64().unwrap());
            assert!((p - q).abs() <= 1e-4, "{text:?} id {}: prob {p} vs {q}", want["id"]);
        }
    }
}

#[test]
fn argmax_is_the_notebook_step() {
    let j = lmscope_json(&["--model", &gguf(), "argmax", "The capital of Finland is"]);
    assert_eq!(j["id"], 260);
    assert_eq!(j["token"], "Ġthe");
    assert_eq!(j["text"], "The capital of Finland is the");
    assert!((j["prob"].as_f64().unwrap() - 0.262_033_532_787_725_73).abs() < 1e-4);
    assert_eq!(j["steps"][0]["runner_up_id"], 42398);
}

#[test]
fn greedy_continuations_match_transformers() {
    let reference = json("fixtures/smollm2/generate.json");
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let j = lmscope_json(&["--model", &gguf(), "generate", text, "--max-new-tokens", "20"]);
        assert_eq!(j["new_ids"], case["new_ids"], "continuation of {text:?}");
        assert_eq!(j["text"], case["generated_text"], "text of {text:?}");
        let stopped =
            if case["stopped_at_eos"].as_bool().unwrap() { "eos" } else { "max_new_tokens" };
        assert_eq!(j["stopped"], stopped, "{text:?}");
        for (got, want) in
            j["steps"].as_array().unwrap().iter().zip(case["steps"].as_array().unwrap())
        {
            let (p, q) = (got["prob"].as_f64().unwrap(), want["prob"].as_f64().unwrap());
            assert!((p - q).abs() <= 1e-4, "{text:?}: step prob {p} vs {q}");
            assert_eq!(got["runner_up_id"], want["runner_up_id"], "{text:?}");
        }
    }
}

#[test]
fn argmax_steps_equal_greedy_generation() {
    let reference = json("fixtures/smollm2/generate.json");
    let case = &reference["cases"][0];
    let j = lmscope_json(&[
        "--model",
        &gguf(),
        "argmax",
        case["text"].as_str().unwrap(),
        "--steps",
        "6",
    ]);
    let ids: Vec<_> = j["steps"].as_array().unwrap().iter().map(|s| s["id"].clone()).collect();
    assert_eq!(ids, case["new_ids"].as_array().unwrap()[..6].to_vec());
}

#[test]
fn embeddings_and_cosines_match_transformers() {
    let reference = json("fixtures/smollm2/embeddings.json");
    let words: Vec<&str> = reference["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["word"].as_str().unwrap())
        .collect();
    let mut args = vec!["--model", &*gguf(), "embed", "--dims", "100"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(words.iter().map(|w| w.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let j = lmscope_json(&args);
    assert_eq!(j["shape"], reference["embedding_shape"]);
    for (got, want) in
        j["words"].as_array().unwrap().iter().zip(reference["words"].as_array().unwrap())
    {
        assert_eq!(got["ids"][0], want["id"]);
        let d = got["vector"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["vector_first_100"].as_array().unwrap())
            .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
            .fold(0.0, f64::max);
        assert!(d <= 1e-6, "{}: vector differs by {d}", want["word"]);
        let (n, m) = (got["norm"].as_f64().unwrap(), want["norm"].as_f64().unwrap());
        assert!((n - m).abs() <= 1e-5, "norm {n} vs {m}");
    }
    let sims =
        lmscope_json(&["--model", &gguf(), "similarity", "dog", "cat", "hat", "king", "queen"]);
    for want in reference["cosine_similarities"].as_array().unwrap() {
        let got = sims["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["a"] == want["a"] && p["b"] == want["b"])
            .unwrap_or_else(|| panic!("pair {want}"));
        let (c, r) = (got["cosine"].as_f64().unwrap(), want["cosine_f64"].as_f64().unwrap());
        assert!((c - r).abs() <= 1e-5, "{} {}: {c} vs {r}", want["a"], want["b"]);
    }
    assert_eq!(sims["matrix"].as_array().unwrap().len(), 5);
}

#[test]
fn model_prints_the_architecture_and_counts_parameters() {
    let j = lmscope_json(&["--model", &gguf(), "model"]);
    let tree = j["tree"].as_str().unwrap();
    assert!(tree.starts_with("LlamaForCausalLM(\n  (model): LlamaModel(\n"));
    assert!(tree.contains("(0-29): 30 x LlamaDecoderLayer("));
    assert!(tree.contains("(embed_tokens): Embedding(49152, 576)"));
    assert_eq!(j["parameters"]["total"], 134_515_008);
    assert_eq!(j["config"]["num_key_value_heads"], 3);
    assert!(j["origin"].as_str().unwrap().contains("GGUF file"));
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let run = |seed: &str| {
        lmscope_json(&[
            "--model",
            &tiny(),
            "generate",
            "hello",
            "--sample",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.5",
        ])["new_ids"]
            .clone()
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
    let j = lmscope_json(&[
        "--model",
        &tiny(),
        "generate",
        "hello",
        "--sample",
        "--seed",
        "3",
        "--top-k",
        "1",
        "--max-new-tokens",
        "5",
    ]);
    let greedy = lmscope_json(&["--model", &tiny(), "generate", "hello", "--max-new-tokens", "5"]);
    assert_eq!(j["new_ids"], greedy["new_ids"], "top-k 1 sampling is greedy");
    assert_eq!(j["seed"], 3);
}

#[test]
fn generation_stops_at_end_of_sequence() {
    let j = lmscope_json(&[
        "--model",
        &gguf(),
        "generate",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "--max-new-tokens",
        "30",
    ]);
    assert_eq!(j["stopped"], "eos");
    assert_eq!(j["new_ids"].as_array().unwrap().last().unwrap(), 2);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let t = tiny();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["argmax", ""], "text is empty"),
        (vec!["argmax", "hi", "--steps", "0"], "--steps must be at least 1"),
        (vec!["generate", "hi", "--max-new-tokens", "0"], "at least 1"),
        (vec!["generate", "", "--max-new-tokens", "3"], "text is empty"),
        (vec!["generate", "hi", "--max-new-tokens", "100000"], "does not fit"),
        (
            vec!["generate", "hi", "--sample", "--temperature", "0"],
            "--temperature must be a positive",
        ),
        (vec!["generate", "hi", "--sample", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (vec!["generate", "hi", "--sample", "--top-k", "0"], "--top-k must be between 1"),
        (vec!["logits", "hi", "--temperature", "-1"], "--temperature must be a positive"),
        (vec!["embed", "hello world"], "is not a single token"),
        (vec!["embed", ""], "empty"),
        (vec!["embed", "dog", "--dims", "65"], "--dims must be between 1"),
        (vec!["tokenize", "--ids", "1,99999"], "out of range"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["--model", &t];
        full.extend(args.iter());
        let stderr = lmscope_err(&full);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    // The multi-token error lists the pieces, like the notebook's assert names the word.
    let stderr = lmscope_err(&["--model", &gguf(), "embed", "Helsinki", "--exact"]);
    assert!(stderr.contains(r#"["H", "els", "inki"]"#), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["generate", "hi", "--temperature", "0.5"], // needs --sample
        vec!["similarity", "dog"],                      // needs two words
        vec!["embed", "dog", "--dims", "zero"],
        vec!["embed", "dog", "--pool", "max"],
        vec!["logits", "hi", "--top-k", "-3"],
        vec!["--threads", "0", "logits", "hi"],
    ] {
        let out = lmscope().arg("--model").arg(tiny()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

#[cfg(unix)]
#[test]
fn non_utf8_arguments_are_refused_cleanly() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = lmscope().arg("--model").arg(tiny()).arg("tokenize").arg(bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("invalid UTF-8"), "{stderr}");
}

#[test]
fn output_piped_into_head_does_not_panic() {
    for args in [
        vec!["generate", "The capital", "--max-new-tokens", "40", "--show-steps"],
        vec!["tokenize", "a b c d e f g h i j k l m n o p q r s t u v w x y z"],
        vec!["model"],
    ] {
        let mut child = common::lmscope_command()
            .arg("--model")
            .arg(tiny())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 8];
        child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
        drop(child.stdout.take()); // the reader goes away, like `| head -c 8`
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(status.success(), "{args:?}: {status} {stderr}");
    }
}
