//! The lmscope binary end to end on the fixtures: output contracts and clean errors.

mod common;

use common::{lmscope, lmscope_err, lmscope_json, real_model, repo_path, tiny_dir};

fn tiny() -> String {
    tiny_dir().to_str().unwrap().to_string()
}

#[test]
fn tokenize_json_has_ids_tokens_offsets_and_decoded() {
    let gguf = real_model();
    let j =
        lmscope_json(&["--model", gguf.to_str().unwrap(), "tokenize", "The capital of Finland is"]);
    assert_eq!(j["ids"], serde_json::json!([504, 3575, 282, 17446, 314]));
    assert_eq!(j["decoded"], "The capital of Finland is");
    let t = &j["tokens"][3];
    assert_eq!(t["id"], 17446);
    assert_eq!(t["token"], "ĠFinland");
    assert_eq!(t["text"], " Finland");
    assert_eq!((t["start"].as_u64(), t["end"].as_u64()), (Some(14), Some(22)));
}

#[test]
fn tokenize_ids_goes_back_to_text() {
    let gguf = real_model();
    let j = lmscope_json(&[
        "--model",
        gguf.to_str().unwrap(),
        "tokenize",
        "--ids",
        "504,3575,282,17446,314",
    ]);
    assert_eq!(j["decoded"], "The capital of Finland is");
    assert_eq!(j["tokens"][1]["token"], "Ġcapital");
}

#[test]
fn tokenize_table_explains_the_g() {
    let out = lmscope()
        .args(["--model", &tiny(), "tokenize", "The capital of Finland is"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("input_ids: ["), "{stdout}");
    assert!(stdout.contains("Ġ in a token stands for a space"), "{stdout}");
}

#[test]
fn logits_json_shape_position_and_top() {
    let gguf = real_model();
    let j = lmscope_json(&[
        "--model",
        gguf.to_str().unwrap(),
        "logits",
        "The capital of Finland is",
        "--top-k",
        "3",
        "--full",
    ]);
    assert_eq!(j["shape"], serde_json::json!([1, 5, 49152]));
    assert_eq!(j["position"], 4);
    let top = j["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["token"], "Ġthe");
    assert_eq!(top[1]["id"], 42398);
    assert_eq!(top[1]["rank"], 2);
    let p = top[0]["prob"].as_f64().unwrap();
    assert!((p - 0.262_033_5).abs() < 1e-4, "prob {p}");
    assert_eq!(j["logits"].as_array().unwrap().len(), 49152);
}

#[test]
fn logits_without_full_has_no_row() {
    let j = lmscope_json(&["--model", &tiny(), "logits", "hello", "--position", "0"]);
    assert!(j.get("logits").is_none());
    assert_eq!(j["position"], 0);
    assert_eq!(j["top"].as_array().unwrap().len(), 10);
}

#[test]
fn bad_input_is_one_clear_line_and_a_nonzero_exit() {
    let t = tiny();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", "./missing-model.gguf", "tokenize", "x"], "does not exist"),
        (vec!["--model", &t, "tokenize", ""], "text is empty"),
        (vec!["--model", &t, "logits", ""], "text is empty"),
        (vec!["--model", &t, "logits", "hi", "--top-k", "0"], "--top-k must be between 1"),
        (vec!["--model", &t, "logits", "hi", "--top-k", "513"], "--top-k must be between 1"),
        (vec!["--model", &t, "logits", "hi", "--position", "7"], "out of range"),
        (vec!["--model", &t, "tokenize", "--ids", "5000"], "out of range"),
    ];
    for (args, expected) in cases {
        let stderr = lmscope_err(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}

#[test]
fn usage_errors_exit_with_2() {
    let out = lmscope().args(["logits", "hi", "--top-k", "many"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = lmscope().args(["--dtype", "f8", "tokenize", "hi"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn corrupt_and_truncated_gguf_files_are_clean_errors() {
    let bytes = std::fs::read(repo_path("fixtures/tiny-llama-f32.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    for len in [0, 3, 4, 10, 24, 100, 1000, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let stderr = lmscope_err(&["--model", path.to_str().unwrap(), "logits", "hi"]);
        assert!(stderr.starts_with("error: "), "truncated at {len}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "truncated at {len}: {stderr}");
    }
}

#[test]
fn unsupported_architectures_are_named() {
    // A GGUF whose architecture is not llama.
    let mut bytes = std::fs::read(repo_path("fixtures/tiny-llama-f32.gguf")).unwrap();
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8;
    assert_eq!(&bytes[at..at + 5], b"llama");
    bytes[at..at + 5].copy_from_slice(b"mamba");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let stderr = lmscope_err(&["--model", path.to_str().unwrap(), "logits", "hi"]);
    assert!(stderr.contains("architecture \"mamba\" is not supported"), "{stderr}");

    // A directory whose config.json is another architecture.
    let model = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(tiny_dir().join(f), model.path().join(f)).unwrap();
    }
    let config = std::fs::read_to_string(tiny_dir().join("config.json")).unwrap();
    let config = config.replace("\"llama\"", "\"gpt2\"");
    std::fs::write(model.path().join("config.json"), config).unwrap();
    let stderr = lmscope_err(&["--model", model.path().to_str().unwrap(), "logits", "hi"]);
    assert!(stderr.contains("unsupported architecture"), "{stderr}");
}

#[test]
fn a_directory_without_weights_is_reported() {
    let model = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_dir().join(f), model.path().join(f)).unwrap();
    }
    let stderr = lmscope_err(&["--model", model.path().to_str().unwrap(), "logits", "hi"]);
    assert!(stderr.contains("neither model.safetensors"), "{stderr}");
}

#[test]
fn quantized_needs_a_gguf_and_says_which_path_ran() {
    let stderr = lmscope_err(&["--model", &tiny(), "--quantized", "logits", "hi"]);
    assert!(stderr.contains("--quantized needs a GGUF model"), "{stderr}");
    let out = lmscope()
        .args(["--model", "fixtures/tiny-llama-q8_0.gguf", "--quantized", "--threads", "1"])
        .args(["logits", "hi", "--json"])
        .current_dir(repo_path(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: --quantized"));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["top"].as_array().unwrap().len(), 10);
}

#[test]
fn timings_go_to_stderr() {
    let out = lmscope().args(["--model", &tiny(), "--timings", "argmax", "hi"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for stage in ["resolve", "load", "tokenize", "forward", "report", "total"] {
        assert!(stderr.contains(stage), "{stage} missing from {stderr}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("timings"));
}

/// `generate --timings` reports its decoding steps (every new token after the first is one
/// step over the cache) inside the `forward` span, and a one-token generate reports none.
#[test]
fn generate_timings_report_the_decoding_steps_and_their_rate() {
    let timings = |new: &str| {
        let args = ["--model", &tiny(), "--timings", "generate", "--ignore-eos"];
        let out = lmscope().args(args).args(["--max-new-tokens", new, "hi"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.lines().find(|l| l.starts_with("timings:")).expect("a timings line").to_string()
    };
    let line = timings("21");
    let decode = line.split("(decode: ").nth(1).unwrap_or_else(|| panic!("no decode in {line}"));
    let (figure, _) = decode.split_once(')').unwrap();
    // "20 steps, 1.2 ms, 16666.7 tokens/s"
    let parts: Vec<&str> = figure.split(", ").collect();
    assert_eq!(parts.len(), 3, "{figure}");
    assert_eq!(parts[0], "20 steps", "{line}");
    let ms: f64 = parts[1].strip_suffix(" ms").unwrap().parse().unwrap();
    let rate: f64 = parts[2].strip_suffix(" tokens/s").unwrap().parse().unwrap();
    assert!(ms >= 0.0 && rate.is_finite() && rate > 0.0, "{figure}");
    // The rate is the steps over their time (printed to 0.1 ms).
    assert!((20_000.0 / rate - ms).abs() <= 0.051, "{figure}");
    let forward: f64 =
        line.split(" forward ").nth(1).unwrap().split(" ms").next().unwrap().parse().unwrap();
    assert!(ms <= forward, "the steps lie inside the forward span: {line}");
    assert!(line.find(" forward ").unwrap() < line.find("(decode:").unwrap(), "{line}");
    assert!(!timings("1").contains("decode:"), "one new token is no decoding step");
}

#[test]
fn model_comes_from_the_environment_variable() {
    let out =
        lmscope().env("LMSCOPE_MODEL", tiny()).args(["tokenize", "hi", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
