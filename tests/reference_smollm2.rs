//! lmscope against Hugging Face transformers on the real SmolLM2-135M-Instruct Q4_1 GGUF
//! (reference numbers made by fixtures/make_smollm2_reference.py). The model is fetched by
//! scripts/fetch-model.sh; these tests fail when it is missing.

mod common;

use base64::Engine;
use candle_core::DType;
use common::{json, real_model};
use lmscope::load::{self, LoadedModel};
use lmscope::model::KvCache;
use lmscope::source::ModelSpec;
use std::sync::OnceLock;

/// The model, loaded once for all tests in this file.
fn smollm2() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let spec = ModelSpec::parse(real_model().to_str().unwrap(), None).unwrap();
        load::load(&spec.resolve().unwrap(), DType::F32).unwrap()
    })
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn f32_le_base64(s: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn the_reference_file_is_for_this_model() {
    let reference = json("fixtures/smollm2/logits.json");
    let len = std::fs::metadata(real_model()).unwrap().len();
    assert_eq!(len, 98_362_432, "size of SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(reference["model_file"], "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn top10_and_last_position_logits_match_transformers() {
    let m = smollm2();
    let reference = json("fixtures/smollm2/logits.json");
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected_ids = ids(&case["ids"]);
        assert_eq!(m.tokenizer.encode_ids(text).unwrap(), expected_ids, "ids of {text:?}");
        let logits = m.model.logits(&expected_ids).unwrap().squeeze(0).unwrap();
        let last: Vec<f32> = logits.get(expected_ids.len() - 1).unwrap().to_vec1().unwrap();
        let reference_last = f32_le_base64(case["last_logits_f32le_b64"].as_str().unwrap());
        let max_diff =
            last.iter().zip(&reference_last).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        eprintln!("{:>3} tokens: max |logit difference| {max_diff:.1e}", expected_ids.len());
        assert!(max_diff <= 1e-3, "{text:?}: max |logit difference| {max_diff} > 1e-3");

        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let top10: Vec<u32> = order[..10].iter().map(|&i| i as u32).collect();
        let expected_top10: Vec<u32> = case["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as u32)
            .collect();
        assert_eq!(top10, expected_top10, "top-10 of {text:?}");
    }
}

#[test]
fn the_notebook_prompt_ranks_the_first_and_helsinki_second() {
    let m = smollm2();
    let ids = m.tokenizer.encode_ids("The capital of Finland is").unwrap();
    assert_eq!(ids, vec![504, 3575, 282, 17446, 314]);
    let logits = m.model.logits(&ids).unwrap().squeeze(0).unwrap().get(4).unwrap();
    let row: Vec<f32> = logits.to_vec1().unwrap();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    assert_eq!(m.tokenizer.id_to_token(order[0] as u32).unwrap(), "Ġthe");
    assert_eq!(order[1], 42398);
    assert_eq!(m.tokenizer.id_to_token(42398).unwrap(), "ĠHelsinki");
}

#[test]
fn the_notebook_word_ids() {
    let m = smollm2();
    for (word, id) in [(" dog", 2767), (" cat", 2644), (" hat", 9968)] {
        assert_eq!(m.tokenizer.encode_ids(word).unwrap(), vec![id], "{word:?}");
    }
}

#[test]
fn tokenizer_matches_the_reference_on_the_corpus() {
    let m = smollm2();
    let corpus = json("fixtures/smollm2/tokenizer_corpus.json");
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let tokens = m.tokenizer.encode(text).unwrap();
        let got: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(got, ids(&case["ids"]), "ids of {text:?}");
        let pieces: Vec<&str> = tokens.iter().map(|t| t.token.as_str()).collect();
        let expected: Vec<&str> =
            case["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(pieces, expected, "tokens of {text:?}");
        let decoded = m.tokenizer.decode(&got).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap(), "decode of {text:?}");
        assert_eq!(decoded, text, "decode(encode(s)) == s for {text:?}");
        // The token texts concatenate back to the input bytes.
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.bytes.clone()).collect();
        assert_eq!(bytes, text.as_bytes(), "token bytes of {text:?}");
    }
}

#[test]
fn special_token_literals_are_recognised() {
    let m = smollm2();
    let tokens = m.tokenizer.encode("<|im_start|>user").unwrap();
    assert_eq!(tokens[0].token, "<|im_start|>");
    assert!(tokens[0].special);
    assert_eq!(tokens[0].id, 1);
}

#[test]
fn kv_cache_decoding_equals_full_passes_on_the_real_model() {
    let m = smollm2();
    let mut ids = m.tokenizer.encode_ids("The capital of Finland is").unwrap();
    let mut cache = KvCache::new();
    let mut next = m.model.next_logits(&ids, &mut cache).unwrap();
    for _ in 0..5 {
        let full = m.model.logits(&ids).unwrap().squeeze(0).unwrap().get(ids.len() - 1).unwrap();
        let d = (&next - &full).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        // Not bit-identical: the cached pass multiplies (1, c) rows where the full pass multiplies
        // (n, c) blocks, so f32 sums are added in another order (~1e-5 relative on logits ~10).
        assert!(d <= 5e-4, "cached vs full logits differ by {d} after {} tokens", ids.len());
        let id = next.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        ids.push(id);
        next = m.model.next_logits(&[id], &mut cache).unwrap();
    }
}

/// The --quantized fast path (ggml's quantized arithmetic, 8-bit activations) against the exact
/// path on the reference prompts. docs/performance.md reports these numbers.
#[test]
fn quantized_path_stays_close_to_the_exact_path() {
    let exact = smollm2();
    let spec = ModelSpec::parse(real_model().to_str().unwrap(), None).unwrap();
    let quantized = load::load_as(&spec.resolve().unwrap(), load::MatrixForm::Quantized).unwrap();
    let reference = json("fixtures/smollm2/logits.json");
    let (mut same_top1, mut top10_overlap, mut worst) = (0, 0, 0f32);
    let cases = reference["cases"].as_array().unwrap();
    for case in cases {
        let ids = ids(&case["ids"]);
        let last = |m: &LoadedModel| -> Vec<f32> {
            m.model
                .logits(&ids)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .get(ids.len() - 1)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (a, b) = (last(exact), last(&quantized));
        let top = |row: &[f32]| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
            order.truncate(10);
            order
        };
        let (ta, tb) = (top(&a), top(&b));
        same_top1 += usize::from(ta[0] == tb[0]);
        top10_overlap += ta.iter().filter(|i| tb.contains(i)).count();
        worst = worst.max(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max));
    }
    println!(
        "quantized vs exact on {} prompts: top-1 equal {same_top1}, top-10 overlap {top10_overlap}/{}, max |logit difference| {worst:.4}",
        cases.len(),
        10 * cases.len()
    );
    assert!(same_top1 * 10 >= cases.len() * 8, "top-1 agrees on only {same_top1} prompts");
    assert!(top10_overlap * 10 >= cases.len() * 10 * 7, "top-10 overlap {top10_overlap}");
    assert!(worst < 2.0, "max logit difference {worst}");
}
