//! Property tests: any text survives tokenization, and any numeric or word argument either works
//! or gives a clean one-line error (no panic).

mod common;

use candle_core::DType;
use common::{repo_path, tiny_dir};
use lmscope::load::{self, LoadedModel};
use lmscope::source::ModelSpec;
use lmscope::stages::{embed, generate, logits, similarity, tokenize};
use lmscope::tokenizer::Tokenizer;
use proptest::prelude::*;
use std::sync::OnceLock;

fn tiny() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let spec = ModelSpec::parse(tiny_dir().to_str().unwrap(), None).unwrap();
        load::load(&spec.resolve().unwrap(), DType::F32).unwrap()
    })
}

/// SmolLM2's tokenizer as transformers builds it (fixtures/smollm2/tokenizer.json): the same
/// vocabulary, merges and pre-tokenizer lmscope builds from the GGUF.
fn smollm2_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(&repo_path("fixtures/smollm2/tokenizer.json")).unwrap())
}

/// Whether every byte of `text` has a token of its own. Byte-level BPE can spell any text only if
/// all 256 byte tokens exist; SmolLM2's vocabulary lacks a few control bytes (0x14 is one: the
/// fuzzer found it), which the tokenizer then drops, exactly as transformers does.
fn spellable(tok: &Tokenizer, text: &str) -> bool {
    let table: std::collections::HashMap<u8, char> =
        lmscope::tokenizer::bytes_to_unicode().into_iter().collect();
    text.bytes().all(|b| tok.token_to_id(&table[&b].to_string()).is_some())
}

/// An error must be one readable line.
fn clean(err: anyhow::Error) -> Result<(), TestCaseError> {
    let msg = format!("{err:#}");
    prop_assert!(!msg.is_empty() && !msg.contains('\n'), "unclean error: {msg:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_text_round_trips(text in any::<String>()) {
        for tok in [&tiny().tokenizer, smollm2_tokenizer()] {
            if !spellable(tok, &text) {
                continue;
            }
            let tokens = tok.encode(&text).unwrap();
            let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            prop_assert_eq!(tok.decode(&ids).unwrap(), text.clone());
            let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.bytes.clone()).collect();
            prop_assert_eq!(bytes, text.as_bytes().to_vec());
        }
    }

    #[test]
    fn any_ids_are_described_or_refused(ids in proptest::collection::vec(any::<u32>(), 0..6)) {
        match tokenize::from_ids(&tiny().tokenizer, &ids) {
            Ok(r) => prop_assert_eq!(r.ids, ids),
            Err(e) => clean(e)?,
        }
    }

    #[test]
    fn any_k_and_position_work_or_are_refused(
        text in "[a-z ]{0,12}",
        top_k in 0usize..600,
        position in -20i64..20,
        temperature in proptest::option::of(-2.0f64..3.0),
    ) {
        let prompt = lmscope::input::Prompt::Text(text);
        let req = logits::LogitsRequest { prompt: &prompt, top_k, position, full: false, temperature };
        match logits::run(tiny(), &req) {
            Ok(r) => {
                prop_assert_eq!(r.top.len(), top_k);
                prop_assert!(r.position < r.shape[1]);
            }
            Err(e) => clean(e)?,
        }
    }

    #[test]
    fn any_words_embed_or_are_refused(
        words in proptest::collection::vec("\\PC{0,6}", 1..4),
        exact in any::<bool>(),
        mean in any::<bool>(),
        dims in proptest::option::of(0usize..100),
    ) {
        let pool = if mean { embed::Pool::Mean } else { embed::Pool::Single };
        let req = embed::EmbedRequest { words: &words, exact, pool, dims };
        match embed::run(tiny(), &req) {
            Ok(r) => prop_assert_eq!(r.words.len(), words.len()),
            Err(e) => clean(e)?,
        }
        match similarity::run(tiny(), &words, exact, pool) {
            Ok(r) => {
                for row in &r.matrix {
                    for c in row {
                        prop_assert!(c.is_finite() && (-1.0001..=1.0001).contains(c));
                    }
                }
            }
            Err(e) => clean(e)?,
        }
    }

    #[test]
    fn any_sampling_settings_generate_or_are_refused(
        temperature in -1.0f64..3.0,
        top_k in proptest::option::of(0usize..600),
        top_p in proptest::option::of(-0.5f64..1.5),
        max_new_tokens in 0usize..4,
        seed in any::<u64>(),
    ) {
        let strategy = lmscope::sampling::Strategy::Sample { temperature, top_k, top_p, seed };
        let prompt = lmscope::input::Prompt::Text("hi".into());
        let req = generate::GenerateRequest {
            prompt: &prompt,
            max_new_tokens,
            strategy,
            stop_at_eos: true,
            limit_flag: "--max-new-tokens",
            progress: false,
        };
        match generate::run(tiny(), &req, &mut |_| Ok(())) {
            Ok(r) => prop_assert!(!r.new_ids.is_empty() && r.new_ids.len() <= max_new_tokens),
            Err(e) => clean(e)?,
        }
    }
}

/// A byte the vocabulary cannot spell is dropped (as in transformers), and lmscope says the
/// round trip failed instead of pretending it worked.
#[test]
fn unspellable_bytes_are_reported() {
    let tok = smollm2_tokenizer();
    assert!(!spellable(tok, "a\u{14}b"));
    let r = tokenize::from_text(tok, "a\u{14}b").unwrap();
    assert_eq!(r.decoded, "ab");
    assert_eq!(r.round_trip, Some(false));
    // Every printable ASCII character and the usual whitespace is spellable.
    let everyday: String = (b' '..=b'~').map(char::from).chain(['\n', '\t', '\r']).collect();
    assert!(spellable(tok, &everyday));
    assert!(spellable(&tiny().tokenizer, &everyday));
}
