//! Model files are untrusted input: truncated, corrupted and hostile files must give a clean
//! error (never a panic, an abort or a huge allocation), in-process and through the binary.

mod common;

use candle_core::DType;
use common::{lmscope, lmscope_err, repo_path, tiny_dir};
use lmscope::load;
use lmscope::source::ModelSpec;
use serde_json::Value;
use std::path::Path;

/// Loads a model (config, tokenizer, weights) the way every command does.
fn load(path: &Path) -> anyhow::Result<load::LoadedModel> {
    let spec = ModelSpec::parse(path.to_str().unwrap(), None)?;
    load::load(&spec.resolve()?, DType::F32)
}

/// The end of a GGUF file's header: where its tensor data starts.
fn gguf_data_start(bytes: &[u8]) -> usize {
    let g = lmscope::gguf::GgufFile::from_bytes("fixture", bytes.to_vec()).unwrap();
    g.tensors.values().map(|t| t.offset).min().unwrap()
}

/// Every length to cut at: each byte of the header, then every `step`-th byte of the data.
fn cut_points(len: usize, header: usize, step: usize) -> Vec<usize> {
    (0..header).chain((header..len).step_by(step)).collect()
}

#[test]
fn truncated_gguf_files_never_load() {
    for fixture in ["fixtures/tiny-llama-q8_0.gguf", "fixtures/tiny-llama-f32.gguf"] {
        let bytes = std::fs::read(repo_path(fixture)).unwrap();
        let header = gguf_data_start(&bytes);
        // Every byte of the header, in memory: the parser must refuse each cut.
        for len in 0..header {
            let parsed = lmscope::gguf::GgufFile::from_bytes("cut", bytes[..len].to_vec());
            assert!(parsed.is_err(), "{fixture} cut at {len} parsed");
        }
        // A sample through the data, as a file through the whole loader.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.gguf");
        for len in (header..bytes.len()).step_by(997).chain([header, bytes.len() - 1]) {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let err = load(&path).err().unwrap_or_else(|| panic!("{fixture} cut at {len} loaded"));
            let msg = format!("{err:#}");
            assert!(!msg.contains('\n'), "multi-line error at {len}: {msg}");
            assert!(msg.contains("truncated"), "cut at {len}: {msg}");
        }
    }
}

#[test]
fn corrupted_gguf_headers_never_panic() {
    let bytes = std::fs::read(repo_path("fixtures/tiny-llama-q8_0.gguf")).unwrap();
    let header = gguf_data_start(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    // Every 7th header byte set to 0xFF (huge lengths and counts), then to 0x00.
    for at in (0..header).step_by(7) {
        for value in [0xFF, 0x00] {
            let mut bad = bytes.clone();
            bad[at] = value;
            std::fs::write(&path, &bad).unwrap();
            // Loading may succeed (a harmless byte) or fail; it must not panic or abort.
            if let Ok(m) = load(&path) {
                let ids = m.tokenizer.encode_ids("hello world").unwrap_or_default();
                if !ids.is_empty() {
                    let _ = m.model.logits(&ids);
                }
            }
        }
    }
}

#[test]
fn truncated_and_corrupted_safetensors_never_load_or_panic() {
    let bytes = std::fs::read(tiny_dir().join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_dir().join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("model.safetensors");
    for len in cut_points(bytes.len(), header, 991) {
        std::fs::write(&path, &bytes[..len]).unwrap();
        assert!(load(dir.path()).is_err(), "safetensors cut at {len} loaded");
    }
    for at in (0..header).step_by(5) {
        let mut bad = bytes.clone();
        bad[at] ^= 0xFF;
        std::fs::write(&path, &bad).unwrap();
        let _ = load(dir.path());
    }
}

/// A GGUF header that claims absurd sizes, written by hand.
fn gguf_claiming(tensors: u64, metadata: u64, extra: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&metadata.to_le_bytes());
    b.extend_from_slice(extra);
    b
}

#[test]
fn hostile_gguf_headers_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.gguf");
    let p = path.to_str().unwrap();
    // 2^40 tensors.
    std::fs::write(&path, gguf_claiming(1 << 40, 0, &[0; 64])).unwrap();
    assert!(lmscope_err(&["--model", p, "logits", "x"]).contains("more than the file can hold"));
    // tokenize reads the metadata alone, which here lacks the tokenizer.
    assert!(lmscope_err(&["--model", p, "tokenize", "x"]).contains("tokenizer.ggml.model"));
    // A key of 2^62 bytes.
    let mut key = (1u64 << 62).to_le_bytes().to_vec();
    key.extend_from_slice(b"general.architecture");
    std::fs::write(&path, gguf_claiming(0, 1, &key)).unwrap();
    assert!(lmscope_err(&["--model", p, "tokenize", "x"]).contains("runs past the end"));
    // An array of 2^62 u32 values.
    let mut entry = 3u64.to_le_bytes().to_vec();
    entry.extend_from_slice(b"ids");
    entry.extend_from_slice(&9u32.to_le_bytes()); // array
    entry.extend_from_slice(&4u32.to_le_bytes()); // of u32
    entry.extend_from_slice(&(1u64 << 62).to_le_bytes());
    std::fs::write(&path, gguf_claiming(0, 1, &entry)).unwrap();
    assert!(lmscope_err(&["--model", p, "tokenize", "x"]).contains("runs past the end"));
}

/// Writes the tiny model with a changed config.json into a temp dir.
fn tiny_with_config(edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(tiny_dir().join(f), dir.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_dir().join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn configs_that_disagree_with_the_weights_are_refused() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c["num_attention_heads"] = 0.into()), "num_attention_heads is 0"),
        (
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("head_dim");
                c["num_attention_heads"] = 3.into();
                c["num_key_value_heads"] = 3.into();
            }),
            "not divisible by num_attention_heads",
        ),
        (Box::new(|c| c["hidden_size"] = 96.into()), "has shape"),
        (Box::new(|c| c["num_hidden_layers"] = 3.into()), "model.layers.2"),
        (
            Box::new(|c| c["vocab_size"] = 100.into()),
            "has shape [512, 64] but the config implies [100, 64]",
        ),
        (Box::new(|c| c["vocab_size"] = "many".into()), "invalid model config"),
        (Box::new(|c| c["intermediate_size"] = u64::MAX.into()), "intermediate_size"),
    ];
    for (edit, expected) in cases {
        let dir = tiny_with_config(edit);
        let stderr = lmscope_err(&["--model", dir.path().to_str().unwrap(), "logits", "hi"]);
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
        assert!(
            stderr.contains("config.json")
                || stderr.contains("tensor")
                || stderr.contains("tokenizer"),
            "{stderr}"
        );
    }
}

#[test]
fn safetensors_with_overlapping_or_outside_offsets_are_refused() {
    let bytes = std::fs::read(tiny_dir().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let name = header.as_object().unwrap().keys().find(|k| *k != "__metadata__").unwrap().clone();
    for offsets in [serde_json::json!([0, data.len() + 4096]), serde_json::json!([8, 4])] {
        let mut h = header.clone();
        h[&name]["data_offsets"] = offsets.clone();
        let h = serde_json::to_vec(&h).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        let dir = tiny_with_config(|_| {});
        std::fs::write(dir.path().join("model.safetensors"), out).unwrap();
        let stderr = lmscope_err(&["--model", dir.path().to_str().unwrap(), "logits", "hi"]);
        assert!(stderr.contains("safetensors") || stderr.contains(&name), "{offsets}: {stderr}");
    }
}

/// Every GGUF file the fuzzer found a crash with (fuzz/regressions/gguf) now loads into a clean
/// error.
#[test]
fn fuzzer_regressions_are_clean_errors() {
    let dir = repo_path("fuzz/regressions/gguf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gguf") {
            seen += 1;
            let err = load(&path).err().unwrap_or_else(|| panic!("{} loaded", path.display()));
            assert!(!format!("{err:#}").contains('\n'), "{}: {err:#}", path.display());
        }
    }
    assert!(seen >= 5, "only {seen} regression files in {}", dir.display());
}

/// The fuzzer's weight_shapes finds (fuzz/regressions/weight_shapes), rebuilt as files: an
/// embedding that is a scalar or a vector instead of a matrix, and a zero-sized matrix with a
/// 2^40 dimension. Each must be refused by name before anything is allocated.
#[test]
fn malformed_weight_shapes_are_refused() {
    let dev = candle_core::Device::Cpu;
    let shapes: Vec<Vec<usize>> = vec![vec![], vec![512 * 64], vec![1 << 40, 0], vec![0, 1 << 40]];
    for shape in shapes {
        let mut tensors =
            candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &dev).unwrap();
        let bad = if shape.is_empty() {
            candle_core::Tensor::new(1f32, &dev).unwrap()
        } else {
            candle_core::Tensor::zeros(shape.as_slice(), DType::F32, &dev).unwrap()
        };
        tensors.insert("model.embed_tokens.weight".to_string(), bad);
        let dir = tiny_with_config(|_| {});
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let stderr = lmscope_err(&["--model", dir.path().to_str().unwrap(), "logits", "hi"]);
        assert!(stderr.contains("model.embed_tokens.weight has shape"), "{shape:?}: {stderr}");
    }
}

/// A model directory (the tiny tokenizer) whose tokenizer_config.json holds `chat_template`.
fn tokenizer_with_template(template: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(tiny_dir().join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let config = serde_json::json!({"bos_token": "<|endoftext|>", "chat_template": template});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

/// The tiny GGUF with one more metadata entry, `tokenizer.chat_template` = `template` (padded
/// with a Jinja comment so the header keeps its 32-byte alignment and the tensors their offsets).
fn gguf_with_template(template: &str) -> Vec<u8> {
    let bytes = std::fs::read(repo_path("fixtures/tiny-llama-f32.gguf")).unwrap();
    let key = b"tokenizer.chat_template";
    let mut source = template.to_string();
    let entry_len = |s: &str| 8 + key.len() + 4 + 8 + s.len();
    if entry_len(&source) % 32 != 0 {
        source += "{#";
        while entry_len(&source) % 32 != 30 {
            source.push(' ');
        }
        source += "#}";
    }
    let mut entry = (key.len() as u64).to_le_bytes().to_vec();
    entry.extend_from_slice(key);
    entry.extend_from_slice(&8u32.to_le_bytes()); // a string
    entry.extend_from_slice(&(source.len() as u64).to_le_bytes());
    entry.extend_from_slice(source.as_bytes());
    assert_eq!(entry.len() % 32, 0);
    // Header: magic, version, tensor count, metadata count, then the entries.
    let mut out = bytes[..16].to_vec();
    let count = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    out.extend_from_slice(&(count + 1).to_le_bytes());
    out.extend_from_slice(&entry);
    out.extend_from_slice(&bytes[24..]);
    out
}

/// The model's chat template is untrusted code: an endless loop, a huge output, exponential
/// growth, deep recursion, deep nesting, a syntax error, an include, a template that raises, a
/// template that is not a string. Each fails in a moment with one line and exit code 1, never a
/// panic, a hang or a huge allocation; in tokenizer_config.json and in GGUF metadata alike.
#[test]
fn hostile_chat_templates_are_clean_errors() {
    let deep = format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000));
    let cases: Vec<(Value, &str)> = vec![
        (Value::from("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"), "ran out of fuel"),
        (Value::from("{% for i in range(100000) %}{% for j in range(100000) %}{{ bos_token }}{% endfor %}{% endfor %}"), "wrote more than"),
        (Value::from("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"), "ran out of fuel"),
        (Value::from("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}"), "ran out of fuel"),
        (Value::from("{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}"), "wrote more than"),
        (Value::from("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), "recursion"),
        (Value::from(deep), "recursion"),
        (Value::from("{% for m in messages %}{{ m.content }"), "is not a valid template: syntax error"),
        (Value::from("{% include 'chat_template.jinja' %}"), "the chat template (chat_template in"),
        (Value::from("{% extends '/etc/passwd' %}"), "the chat template (chat_template in"),
        (Value::from("{{ raise_exception('Conversation roles must alternate') }}"), "refused the conversation: Conversation roles must alternate"),
        (Value::from(42), "chat_template in"),
        // A list nested in itself 90,000 times, then printed and compared (a stack overflow
        // before the render got its own large stack; found by the fuzz target).
        (Value::from("{% set ns = namespace(a=[]) %}{% for i in range(90000) %}{% set ns.a = [ns.a] %}{% endfor %}{{ ns.a == ns.a }}{{ ns.a }}{{ raise_exception('printed') }}"), "refused the conversation: printed"),
        (Value::from(format!("{{{{ 1{} }}}}", " ~ 1".repeat(20000))), "more than the 64 KiB"),
        (Value::from("{% if false %}{% endif %}"), "rendered nothing"),
    ];
    let user = "x".repeat(2000);
    for (template, expected) in &cases {
        let dir = tokenizer_with_template(template);
        let started = std::time::Instant::now();
        let err =
            lmscope_err(&["--model", dir.path().to_str().unwrap(), "tokenize", "--chat", &user]);
        assert!(err.contains(expected), "{template}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{template}: {err}");
        assert!(started.elapsed().as_secs() < 20, "{template} took {:?}", started.elapsed());
        // Without --chat the template is not used, and the model works.
        lmscope()
            .args(["--model", dir.path().to_str().unwrap(), "tokenize", "hi"])
            .assert()
            .success();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.gguf");
    let m = path.to_str().unwrap();
    for (template, expected) in &cases[..8] {
        std::fs::write(&path, gguf_with_template(template.as_str().unwrap())).unwrap();
        let err = lmscope_err(&["--model", m, "logits", "--chat", &user]);
        assert!(err.contains(expected), "{template}: {err}");
        assert!(err.contains("tokenizer.chat_template in the GGUF metadata"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{template}: {err}");
    }
    // The same file with a harmless template runs, and the template is the one written.
    std::fs::write(&path, gguf_with_template("[{{ messages[0].content }}]")).unwrap();
    let out = lmscope().args(["--model", m, "--json", "logits", "--chat", "hi"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["input"], "[hi]");
}
