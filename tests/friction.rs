//! The friction a new user met in the first hour (issue 17): each bug that was found, with the
//! test that would have caught it.

mod common;

use common::{lmscope, lmscope_err, lmscope_json, real_model, tiny_dir};

fn gguf() -> String {
    real_model().to_str().expect("a UTF-8 path").to_string()
}

fn tiny() -> String {
    tiny_dir().to_str().expect("a UTF-8 path").to_string()
}

/// A prompt of more than the real model's 8192 positions ("hi" is one token, " hi" another).
fn long_prompt() -> String {
    "hi ".repeat(8300)
}

#[test]
fn argmax_names_its_own_flag_when_the_steps_do_not_fit() {
    let e = lmscope_err(&["--model", &gguf(), "argmax", "hi", "--steps", "10000"]);
    assert!(e.starts_with("error: --steps 10000 does not fit: the prompt has 1 token "), "{e}");
    assert!(e.contains("at most 8191 new tokens can follow"), "{e}");
    assert!(!e.contains("--max-new-tokens"), "{e}");
    let e = lmscope_err(&["--model", &gguf(), "generate", "hi", "--max-new-tokens", "10000"]);
    assert!(e.starts_with("error: --max-new-tokens 10000 does not fit"), "{e}");
    let e = lmscope_err(&["--model", &gguf(), "argmax", "hi", "--steps", "0"]);
    assert_eq!(e.trim(), "error: --steps must be at least 1");
}

#[test]
fn a_prompt_longer_than_the_context_is_blamed_on_the_prompt() {
    let prompt = long_prompt();
    let model = gguf();
    for command in [&["argmax"][..], &["generate"], &["generate", "--max-new-tokens", "1"]] {
        let args = [&["--model", model.as_str()][..], command, &[prompt.as_str()]].concat();
        let e = lmscope_err(&args);
        assert!(
            e.starts_with(
                "error: the prompt is 8301 tokens long, but the model's context is 8192 positions"
            ),
            "{command:?}: {e}"
        );
        assert!(!e.contains("--max-new-tokens") && !e.contains("--steps"), "{command:?}: {e}");
    }
    let e = lmscope_err(&["--model", &gguf(), "logits", &prompt]);
    assert!(e.contains("8301 tokens exceed the model's context of 8192 positions"), "{e}");
}

#[test]
fn one_token_is_singular() {
    let e = lmscope_err(&["--model", &gguf(), "logits", "hi", "--position", "5"]);
    assert!(e.contains("the text has 1 token (valid: 0..0 or -1..-1)"), "{e}");
}

#[test]
fn logits_full_without_json_is_refused_not_ignored() {
    let e = lmscope_err(&["--model", &tiny(), "logits", "hi", "--full"]);
    assert!(
        e.starts_with("error: --full puts the whole logit row into the JSON output: add --json"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let j = lmscope_json(&["--model", &tiny(), "logits", "hi", "--full"]);
    assert!(j["logits"].as_array().is_some_and(|row| !row.is_empty()));
}

#[test]
fn the_multi_token_hint_suggests_exact_only_where_it_helps() {
    // " Tallinn" is 2 tokens and "Tallinn" 3: --exact cannot help.
    for word in ["Tallinn", "New York"] {
        let e = lmscope_err(&["--model", &gguf(), "embed", word]);
        assert!(e.contains("pass --pool mean to average them"), "{e}");
        assert!(e.contains("--exact would not help"), "{e}");
        assert!(!e.contains("pass --exact"), "{e}");
    }
    // " els" is 2 tokens, "els" one (id 1025): --exact helps.
    let e = lmscope_err(&["--model", &gguf(), "embed", "els"]);
    assert!(
        e.contains(
            "without the leading space, \"els\" is one token (\"els\", id 1025): pass --exact"
        ),
        "{e}"
    );
    let j = lmscope_json(&["--model", &gguf(), "embed", "els", "--exact"]);
    assert_eq!(j["words"][0]["ids"], serde_json::json!([1025]));
    // Already --exact: only --pool mean is left.
    let e = lmscope_err(&["--model", &gguf(), "similarity", "Helsinki", "dog", "--exact"]);
    assert!(e.trim_end().ends_with("pass --pool mean to average them"), "{e}");
}

#[test]
fn an_empty_model_names_where_it_came_from() {
    let out = lmscope().env("LMSCOPE_MODEL", "").args(["tokenize", "hi"]).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(e.starts_with("error: LMSCOPE_MODEL is set but empty"), "{e}");
    assert!(e.contains("unset LMSCOPE_MODEL"), "{e}");
    let e = lmscope_err(&["--model", "", "tokenize", "hi"]);
    assert!(e.starts_with("error: --model is empty"), "{e}");
    // --model wins over the variable, empty or not.
    let out = lmscope()
        .env("LMSCOPE_MODEL", "")
        .args(["--model", &tiny(), "tokenize", "hi"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        lmscope().env("LMSCOPE_MODEL", tiny()).args(["tokenize", "--json", "hi"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn usage_lines_never_show_the_model_as_required() {
    for env in [None, Some(gguf())] {
        let mut cmd = lmscope();
        if let Some(m) = &env {
            cmd.env("LMSCOPE_MODEL", m);
        }
        let out = cmd.args(["logits"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let e = String::from_utf8_lossy(&out.stderr);
        let usage = e.lines().find(|l| l.starts_with("Usage:")).expect("a usage line");
        assert!(!usage.contains("--model"), "LMSCOPE_MODEL={env:?}: {usage}");
    }
    let help = lmscope().env("LMSCOPE_MODEL", gguf()).args(["logits", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let usage = help.lines().find(|l| l.starts_with("Usage:")).expect("a usage line");
    assert!(!usage.contains("--model"), "{usage}");
    assert!(help.contains("[env: LMSCOPE_MODEL]"), "{help}");
}

/// A model directory with the tiny fixture's tokenizer and config and the given weights file
/// content (None: no weights at all).
fn dir_with_weights(weights: Option<&[u8]>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_dir().join(f), dir.path().join(f)).unwrap();
    }
    if let Some(bytes) = weights {
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    }
    dir
}

#[test]
fn tokenize_needs_no_weights_in_a_directory() {
    let want = lmscope_json(&["--model", &tiny(), "tokenize", "The capital of Finland is"]);
    let index =
        br#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}"#;
    for (what, weights) in [
        ("missing", None),
        ("corrupt", Some(&b"\xff\xff\xff\xff\xff\xff\xff\xffnot safetensors"[..])),
        ("empty", Some(&b""[..])),
    ] {
        let dir = dir_with_weights(weights);
        let d = dir.path().to_str().unwrap();
        let got = lmscope_json(&["--model", d, "tokenize", "The capital of Finland is"]);
        assert_eq!(got, want, "weights {what}");
        // The same directory cannot run the model: the weights really are unusable.
        lmscope_err(&["--model", d, "logits", "hi"]);
    }
    // An index naming shards that do not exist.
    let dir = dir_with_weights(None);
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let d = dir.path().to_str().unwrap();
    assert_eq!(lmscope_json(&["--model", d, "tokenize", "The capital of Finland is"]), want);
    let e = lmscope_err(&["--model", d, "logits", "hi"]);
    assert!(e.contains("is missing"), "{e}");
}

#[test]
fn tokenize_reads_a_gguf_header_only() {
    let bytes = std::fs::read(real_model()).unwrap();
    let full = lmscope::gguf::GgufFile::open(&real_model()).unwrap();
    // Where the tensor data start: everything after that (98 % of the file) is weights.
    let data_start = full.tensors.values().map(|t| t.offset).min().unwrap();
    let want = lmscope_json(&["--model", &gguf(), "tokenize", "The capital of Finland is"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    // Cut inside the weights, and corrupt all the weights that are left.
    let mut cut = bytes[..data_start + 4096].to_vec();
    for b in &mut cut[data_start..] {
        *b = 0xff;
    }
    std::fs::write(&path, &cut).unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(lmscope_json(&["--model", p, "tokenize", "The capital of Finland is"]), want);
    let e = lmscope_err(&["--model", p, "logits", "hi"]);
    assert!(e.contains("truncated?"), "{e}");
    assert!(data_start < bytes.len() / 10, "the header is {data_start} of {} bytes", bytes.len());
}
