//! The forward pass against Hugging Face transformers on the tiny random Llama in fixtures/
//! (fixtures/make_tiny.py made both the model and the reference numbers).

mod common;

use candle_core::{DType, Tensor};
use common::{json, repo_path, tiny_dir};
use lmscope::load::{self, LoadedModel};
use lmscope::model::{Capture, KvCache};
use lmscope::source::ModelSpec;
use serde_json::Value;

fn load(path: &std::path::Path, dtype: DType) -> LoadedModel {
    let spec = ModelSpec::parse(path.to_str().unwrap(), None).unwrap();
    load::load(&spec.resolve().unwrap(), dtype).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "different sizes");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

#[test]
fn safetensors_logits_match_transformers_at_every_position() {
    let m = load(&tiny_dir(), DType::F32);
    let reference = json("fixtures/tiny-llama/reference.json");
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected_ids = ids(&case["ids"]);
        assert_eq!(m.tokenizer.encode_ids(text).unwrap(), expected_ids, "ids of {text:?}");
        let logits = m.model.logits(&expected_ids).unwrap();
        let d = max_diff(&flat(&logits), &floats(&case["logits"]));
        assert!(d <= 1e-4, "{text:?}: max |logit difference| {d} > 1e-4");
    }
}

#[test]
fn captured_hidden_states_and_attentions_match_transformers() {
    let m = load(&tiny_dir(), DType::F32);
    let reference = json("fixtures/tiny-llama/reference.json");
    let layers = m.model.cfg.num_hidden_layers;
    for case in reference["cases"].as_array().unwrap() {
        let input = Tensor::new(ids(&case["ids"]), &m.model.device).unwrap().unsqueeze(0).unwrap();
        let mut cap = Capture { hidden_states: true, attentions: true, ..Default::default() };
        m.model.forward(&input, None, Some(&mut cap)).unwrap();
        let hidden = case["hidden_states"].as_array().unwrap();
        assert_eq!(hidden.len(), layers + 1);
        assert_eq!(cap.hidden.len(), layers + 1);
        // transformers' entries 0..layers are the embeddings and layer outputs; its last entry
        // has the final norm applied (our final_norm), the raw last layer output is recorded apart.
        for (i, h) in hidden.iter().enumerate().take(layers) {
            let d = max_diff(&flat(&cap.hidden[i]), &floats(h));
            assert!(d <= 1e-4, "hidden state {i}: {d}");
        }
        let d = max_diff(&flat(cap.final_norm.as_ref().unwrap()), &floats(&hidden[layers]));
        assert!(d <= 1e-4, "final norm: {d}");
        let d = max_diff(&flat(&cap.hidden[layers]), &floats(&case["last_layer_output_pre_norm"]));
        assert!(d <= 1e-4, "last layer output: {d}");
        for (i, a) in case["attentions"].as_array().unwrap().iter().enumerate() {
            let d = max_diff(&flat(&cap.attention[i]), &floats(a));
            assert!(d <= 1e-5, "attention probabilities of layer {i}: {d}");
        }
    }
}

#[test]
fn gguf_files_match_transformers_loading_them() {
    let reference = json("fixtures/tiny-llama-gguf-reference.json");
    for (file, r) in reference["files"].as_object().unwrap() {
        let m = load(&repo_path(&format!("fixtures/{file}")), DType::F32);
        for case in r["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let expected_ids = ids(&case["ids"]);
            assert_eq!(m.tokenizer.encode_ids(text).unwrap(), expected_ids, "{file}: {text:?}");
            let logits = m.model.logits(&expected_ids).unwrap();
            let d = max_diff(&flat(&logits), &floats(&case["logits"]));
            assert!(d <= 1e-4, "{file} {text:?}: max |logit difference| {d} > 1e-4");
        }
    }
}

#[test]
fn kv_cache_logits_equal_full_pass_logits() {
    let m = load(&tiny_dir(), DType::F32);
    let ids = m.tokenizer.encode_ids("Hello, world! 123 The capital of Finland is").unwrap();
    let full = m.model.logits(&ids).unwrap().squeeze(0).unwrap(); // (n, v)

    // Prefill 3 tokens, then one token at a time.
    let mut cache = KvCache::new();
    let mut rows = vec![m
        .model
        .forward(
            &Tensor::new(&ids[..3], &m.model.device).unwrap().unsqueeze(0).unwrap(),
            Some(&mut cache),
            None,
        )
        .unwrap()
        .squeeze(0)
        .unwrap()];
    for &id in &ids[3..] {
        let step = m.model.forward(
            &Tensor::new(&[id], &m.model.device).unwrap().unsqueeze(0).unwrap(),
            Some(&mut cache),
            None,
        );
        rows.push(step.unwrap().squeeze(0).unwrap());
    }
    assert_eq!(cache.len(), ids.len());
    let incremental = Tensor::cat(&rows, 0).unwrap();
    let d = max_diff(&flat(&incremental), &flat(&full));
    assert!(d <= 1e-5, "cached vs full: {d}");
}

/// `next_logits` computes the last layer at the last position only (keys and values at all):
/// its logits equal the full pass's last row, and the cache it leaves serves the next tokens.
/// On the safetensors model and on the Q8_0 GGUF (whose 12-token prefill runs the many-row
/// kernels, AMX where the CPU has it, and the last layer's one row the decode kernel).
#[test]
fn next_token_logits_and_their_cache_equal_the_full_pass() {
    for path in [tiny_dir(), repo_path("fixtures/tiny-llama-q8_0.gguf")] {
        let m = load(&path, DType::F32);
        let text = "Hello, world! 123 The capital of Finland is Helsinki, and 4567 more";
        let ids = m.tokenizer.encode_ids(text).unwrap();
        assert!(ids.len() > 16, "{} ids", ids.len());
        let full = m.model.logits(&ids).unwrap().squeeze(0).unwrap(); // (n, v)
        let row = |i: usize| flat(&full.get(i).unwrap());
        let within = |got: &Tensor, i: usize, what: &str| {
            let d = max_diff(&flat(got), &row(i));
            assert!(d <= 1e-5, "{path:?} {what}: {d} from the full pass");
        };

        let mut cache = KvCache::new();
        within(&m.model.next_logits(&ids[..12], &mut cache).unwrap(), 11, "prefill");
        assert_eq!(cache.len(), 12);
        // A second chunk of several tokens, then single tokens, on the same cache.
        within(&m.model.next_logits(&ids[12..15], &mut cache).unwrap(), 14, "second chunk");
        for (i, &id) in ids.iter().enumerate().skip(15) {
            within(&m.model.next_logits(&[id], &mut cache).unwrap(), i, "one token");
        }
        assert_eq!(cache.len(), ids.len());

        // A first chunk of exactly 64 tokens (it becomes the cache's buffers as it is), then
        // single tokens (the cache grows).
        let long: Vec<u32> = ids.iter().cycle().take(67).copied().collect();
        let full = m.model.logits(&long).unwrap().squeeze(0).unwrap();
        let row = |i: usize| flat(&full.get(i).unwrap());
        let mut cache = KvCache::new();
        let check = |got: Tensor, i: usize| {
            let d = max_diff(&flat(&got), &row(i));
            assert!(d <= 1e-5, "{path:?} 64-token prefill, position {i}: {d} from the full pass");
        };
        check(m.model.next_logits(&long[..64], &mut cache).unwrap(), 63);
        for (i, &id) in long.iter().enumerate().skip(64) {
            check(m.model.next_logits(&[id], &mut cache).unwrap(), i);
        }
    }
}

#[test]
fn half_precision_dtypes_run_close_to_f32() {
    let ids = [277u32, 308, 279, 446, 275];
    let f32_logits = flat(&load(&tiny_dir(), DType::F32).model.logits(&ids).unwrap());
    for dtype in [DType::BF16, DType::F16] {
        let m = load(&tiny_dir(), dtype);
        let d = max_diff(&flat(&m.model.logits(&ids).unwrap()), &f32_logits);
        assert!(d < 0.1, "{dtype:?} differs from f32 by {d}");
    }
}

#[test]
fn sharded_safetensors_with_an_index_load_the_same_model() {
    let dev = candle_core::Device::Cpu;
    let tensors =
        candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_dir().join(f), dir.path().join(f)).unwrap();
    }
    // Layer-0 tensors in one shard, everything else in the other.
    let (first, second): (Vec<_>, Vec<_>) =
        tensors.into_iter().partition(|(name, _)| name.contains("layers.0."));
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in
        [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)]
    {
        for (name, _) in &part {
            weight_map.insert(name.clone(), shard.into());
        }
        let part: std::collections::HashMap<String, Tensor> = part.into_iter().collect();
        candle_core::safetensors::save(&part, dir.path().join(shard)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let m = load(dir.path(), DType::F32);
    let reference = json("fixtures/tiny-llama/reference.json");
    let case = &reference["cases"][0];
    let logits = m.model.logits(&ids(&case["ids"])).unwrap();
    let d = max_diff(&flat(&logits), &floats(&case["logits"]));
    assert!(d <= 1e-4, "sharded model differs by {d}");
}
