//! Arbitrary UTF-8 text through the fixtures' byte-level BPE tokenizers:
//! `decode(encode(text)) == text` must hold, and neither call may fail or panic.
//!
//! One expected exception: a byte-level BPE vocabulary need not hold all 256 byte symbols.
//! SmolLM2's lacks 21 (U+0004, U+0006, U+0013, U+0014, U+0016, U+001D and the UTF-8 lead bytes
//! 0xC0, 0xC1, 0xF1, 0xF2, 0xF5..=0xFF), and a BPE model without an unknown token drops such
//! bytes, exactly as Hugging Face `tokenizers` does. For a text with such bytes the target checks
//! the precise weaker property: the tokens hold exactly the text's bytes minus the
//! unrepresentable ones, and decode gives those bytes (lossily as UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmscope::tokenizer::{bytes_to_unicode, Tokenizer};
use std::path::Path;
use std::sync::OnceLock;

struct Case {
    name: &'static str,
    tok: Tokenizer,
    /// `representable[b]`: the vocabulary has the byte-level symbol of byte b.
    representable: [bool; 256],
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        ["tiny-llama", "smollm2"]
            .into_iter()
            .map(|name| {
                let path =
                    format!("{}/../fixtures/{name}/tokenizer.json", env!("CARGO_MANIFEST_DIR"));
                let tok = Tokenizer::from_file(Path::new(&path)).expect("fixture tokenizer");
                let mut representable = [false; 256];
                for (b, c) in bytes_to_unicode() {
                    representable[b as usize] = tok.token_to_id(&c.to_string()).is_some();
                }
                Case { name, tok, representable }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for Case { name, tok, representable } in cases() {
        let tokens = tok.encode(text).unwrap_or_else(|e| panic!("{name}: encode failed: {e:#}"));
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        let back = tok.decode(&ids).unwrap_or_else(|e| panic!("{name}: decode failed: {e:#}"));
        // The bytes a byte-level BPE without an unknown token can keep.
        let kept: Vec<u8> = text.bytes().filter(|&b| representable[b as usize]).collect();
        if kept.len() == text.len() {
            assert_eq!(back, text, "{name}: decode(encode(text)) differs; ids {ids:?}");
        } else {
            let expected = String::from_utf8_lossy(&kept);
            assert_eq!(back, expected, "{name}: unrepresentable bytes: decode differs; ids {ids:?}");
        }
        // The per-token bytes lmscope shows must concatenate to the (kept) text as well.
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.bytes.iter().copied()).collect();
        assert_eq!(bytes, kept, "{name}: token bytes differ; ids {ids:?}");
        // Offsets lie inside the text, in order.
        let mut last = 0;
        for t in &tokens {
            if let (Some(s), Some(e)) = (t.start, t.end) {
                assert!(s <= e && e <= text.len() && s >= last, "{name}: bad offsets {s}..{e}");
                last = s;
            }
        }
    }
});
