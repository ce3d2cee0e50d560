//! `--chat` against transformers (fixtures/chat/reference.json, from
//! fixtures/make_chat_reference.py): the rendered prompt byte for byte, and its ids equal to
//! `apply_chat_template(messages, tokenize=True, add_generation_prompt=True)`.

mod common;

use common::{json, lmscope, lmscope_err, lmscope_json, real_model, repo_path};
use lmscope::chat::{self, ChatTemplate};
use lmscope::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

fn reference() -> Value {
    json("fixtures/chat/reference.json")
}

/// `--system S` for a case, or nothing (the template's default system message).
fn chat_args(case: &Value) -> Vec<String> {
    let mut args = vec!["--chat".to_string()];
    if let Some(system) = case["system"].as_str() {
        args.extend(["--system".to_string(), system.to_string()]);
    }
    args.push(case["user"].as_str().unwrap().to_string());
    args
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap()).collect()
}

/// The GGUF's own template, through the binary: `tokenize --chat` shows transformers' text and
/// ids, each `<|im_start|>` / `<|im_end|>` one special token.
#[test]
fn tokenize_chat_on_the_gguf_is_transformers() {
    let model = real_model();
    let r = reference();
    let cases = r["smollm2"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let mut args = vec!["--model".to_string(), model.display().to_string(), "tokenize".into()];
        args.extend(chat_args(case));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lmscope_json(&args);
        assert_eq!(out["input"], case["text"], "{args:?}");
        assert_eq!(ids(&out["ids"]), ids(&case["ids"]), "{args:?}");
        assert_eq!(out["decoded"], case["text"], "{args:?}");
        for t in out["tokens"].as_array().unwrap() {
            let token = t["token"].as_str().unwrap();
            if token.starts_with("<|im_") {
                assert_eq!(t["special"], true, "{token} is a special token");
            }
        }
    }
    // No system message: the template's own default, as transformers renders it.
    assert!(cases[0]["system"].is_null());
    assert!(cases[0]["text"].as_str().unwrap().starts_with(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\n"
    ));
}

/// The template and special tokens lmscope reads from the GGUF are the ones transformers reads.
#[test]
fn the_gguf_template_and_special_tokens_are_transformers() {
    let r = reference();
    let gguf = lmscope::gguf::GgufFile::open_metadata(&real_model()).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let t = tok.chat_template().unwrap().expect("SmolLM2-Instruct has a chat template");
    assert_eq!(t.source(), r["chat_template"].as_str().unwrap());
    let special: serde_json::Map<String, Value> = t
        .special_tokens()
        .iter()
        .map(|(name, token)| (name.clone(), Value::from(token.clone())))
        .collect();
    assert_eq!(Value::Object(special), r["special_tokens"]);
}

/// The same model as a tokenizer.json directory, with the files transformers' save_pretrained
/// writes beside it (chat_template.jinja), or the template inside tokenizer_config.json.
#[test]
fn a_tokenizer_json_directory_renders_the_same() {
    let r = reference();
    let hf = repo_path("fixtures/chat/hf");
    let layouts = ["chat_template.jinja", "tokenizer_config.json"];
    for layout in layouts {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_path("fixtures/smollm2/tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        let mut config: Value = serde_json::from_str(
            &std::fs::read_to_string(hf.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        if layout == "chat_template.jinja" {
            std::fs::copy(hf.join("chat_template.jinja"), dir.path().join("chat_template.jinja"))
                .unwrap();
        } else {
            config["chat_template"] = r["chat_template"].clone();
        }
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
        for case in r["smollm2"].as_array().unwrap() {
            let text =
                chat::prompt(&tok, "dir", case["system"].as_str(), case["user"].as_str().unwrap())
                    .unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{layout}");
            let got: Vec<u64> = tok.encode_ids(&text).unwrap().into_iter().map(u64::from).collect();
            assert_eq!(got, ids(&case["ids"]), "{layout}: {text:?}");
        }
        // And through the binary.
        let out =
            lmscope_json(&["--model", dir.path().to_str().unwrap(), "tokenize", "--chat", "Hi"]);
        assert!(out["input"]
            .as_str()
            .unwrap()
            .ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }
}

/// Templates in the style of other chat models (Llama 3, Mistral, one that needs jinja2's
/// trim_blocks / lstrip_blocks, loop controls, string methods, tojson and namespaces, one that
/// raises): minijinja renders what jinja2 renders in transformers, byte for byte, and a template
/// that raises fails with its message.
#[test]
fn other_templates_render_as_jinja2_does() {
    let r = reference();
    let templates = r["templates"].as_array().unwrap();
    assert!(templates.len() >= 4);
    let mut raised = 0;
    for t in templates {
        let name = t["name"].as_str().unwrap();
        let special = t["special_tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let template = ChatTemplate::new(t["template"].as_str().unwrap(), name, special);
        for case in t["cases"].as_array().unwrap() {
            let got = template.render(case["system"].as_str(), case["user"].as_str().unwrap());
            match (&case["text"], &case["error"]) {
                (Value::String(text), _) => {
                    assert_eq!(&got.unwrap(), text, "{name}: {case}")
                }
                (_, Value::String(message)) => {
                    let err = got.unwrap_err().to_string();
                    assert!(err.contains(message.as_str()), "{name}: {err}");
                    assert!(err.contains(&format!("the chat template ({name}) refused")), "{err}");
                    raised += 1;
                }
                _ => panic!("{name}: a case with neither text nor error"),
            }
        }
    }
    assert!(raised >= 3, "{raised}");
}

/// `logits`, `argmax` and `generate --chat` run the model on the chat prompt's ids.
#[test]
fn the_model_runs_on_the_chat_prompt() {
    let model = real_model();
    let m = model.to_str().unwrap();
    let r = reference();
    let case = &r["smollm2"][0];
    let want = ids(&case["ids"]);
    let user = case["user"].as_str().unwrap();
    let argmax = lmscope_json(&["--model", m, "argmax", "--chat", user]);
    assert_eq!(ids(&argmax["prompt_ids"]), want);
    let logits = lmscope_json(&["--model", m, "logits", "--chat", user, "-k", "2"]);
    assert_eq!(ids(&logits["ids"]), want);
    assert_eq!(logits["input"], case["text"]);
    let generate =
        lmscope_json(&["--model", m, "generate", "--chat", user, "--max-new-tokens", "2"]);
    assert_eq!(ids(&generate["prompt_ids"]), want);
    // The table shows the whole rendered prompt, then the answer.
    let out = lmscope()
        .args(["--model", m, "generate", "--chat", user, "--max-new-tokens", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(case["text"].as_str().unwrap()), "{text}");
}

/// The inspection commands take --chat too (their input options are the same): they run on the
/// rendered prompt's ids. --chat cannot wrap --ids.
#[test]
fn the_inspection_commands_run_on_the_chat_prompt() {
    let model = real_model();
    let m = model.to_str().unwrap();
    let r = reference();
    let case = &r["smollm2"][0];
    let want = ids(&case["ids"]);
    let user = case["user"].as_str().unwrap();
    let lens = lmscope_json(&["--model", m, "lens", "--chat", user, "-k", "1"]);
    assert_eq!(ids(&lens["ids"]), want);
    let attention = lmscope_json(&["--model", m, "attention", "--chat", user, "--layer", "0"]);
    assert_eq!(ids(&attention["ids"]), want);
    let err = lmscope_err(&["--model", m, "logits", "--chat", "--ids", "1,2"]);
    assert!(err.contains("--chat") && err.contains("--ids"), "{err}");
}

/// `score --chat` scores its texts as the assistant's answer: after the --prompt rendered in the
/// template, exactly as `score --prompt` with the rendered text; without a --prompt it says so.
#[test]
fn score_chat_scores_the_answer_after_the_rendered_question() {
    let model = real_model();
    let m = model.to_str().unwrap();
    let r = reference();
    let case = &r["smollm2"][0];
    let user = case["user"].as_str().unwrap();
    let rendered = case["text"].as_str().unwrap();
    let chat =
        lmscope_json(&["--model", m, "score", "--chat", "--prompt", user, "Helsinki.", "Oslo."]);
    let plain = lmscope_json(&["--model", m, "score", "--prompt", rendered, "Helsinki.", "Oslo."]);
    assert_eq!(chat, plain);
    assert_eq!(chat["prompt"], rendered);
    let want = ids(&case["ids"]);
    let first = &chat["candidates"][0];
    let scored: Vec<u64> = ids(&first["ids"]);
    assert_eq!(&scored[..want.len()], &want[..], "the rendered prompt's ids come first");
    let err = lmscope_err(&["--model", m, "score", "--chat", "Helsinki."]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--prompt") && err.contains("--chat"), "{err}");
}

/// A model without a chat template: one line naming the model, suggesting to drop --chat.
#[test]
fn a_model_without_a_template_says_so() {
    for model in [repo_path("fixtures/tiny-llama"), repo_path("fixtures/tiny-llama-f32.gguf")] {
        let m = model.to_str().unwrap();
        for command in ["tokenize", "logits", "argmax", "generate"] {
            let err = lmscope_err(&["--model", m, command, "--chat", "hi"]);
            assert!(err.contains(&format!("the model {m} has no chat template")), "{err}");
            assert!(err.contains("drop --chat"), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
    }
    // --system without --chat, --chat with --ids: usage errors.
    let out = lmscope().args(["tokenize", "--system", "x", "hi"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = lmscope().args(["tokenize", "--chat", "--ids", "1,2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A tokenizer that adds a BOS token by itself and a template that writes `{{ bos_token }}`:
/// one BOS, as transformers (which tokenizes a rendered chat without adding special tokens) has.
#[test]
fn a_template_bos_is_not_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokenizer: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("fixtures/tiny-llama/tokenizer.json")).unwrap(),
    )
    .unwrap();
    tokenizer["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}
    });
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|endoftext|>", "chat_template": "{{ bos_token }}<|im_start|>{{ messages[0].content }}"}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_file(Path::new(&path)).unwrap();
    let text = chat::prompt(&tok, "x", None, "hi").unwrap();
    assert_eq!(text, "<|im_start|>hi");
    let ids = tok.encode_ids(&text).unwrap();
    assert_eq!(&ids[..2], &[0, 1], "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == 0).count(), 1, "{ids:?}");
}
