//! Arbitrary UTF-8 text through the fixtures' byte-level BPE tokenizers:
//! `decode(encode(text)) == text` must hold, and neither call may fail or panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmscope::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::OnceLock;

fn tokenizers() -> &'static [(&'static str, Tokenizer)] {
    static TOKS: OnceLock<Vec<(&'static str, Tokenizer)>> = OnceLock::new();
    TOKS.get_or_init(|| {
        ["tiny-llama", "smollm2"]
            .into_iter()
            .map(|name| {
                let path = format!(
                    "{}/../fixtures/{name}/tokenizer.json",
                    env!("CARGO_MANIFEST_DIR")
                );
                (name, Tokenizer::from_file(Path::new(&path)).expect("fixture tokenizer"))
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for (name, tok) in tokenizers() {
        let tokens = tok.encode(text).unwrap_or_else(|e| panic!("{name}: encode failed: {e:#}"));
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        let back = tok.decode(&ids).unwrap_or_else(|e| panic!("{name}: decode failed: {e:#}"));
        assert_eq!(back, text, "{name}: decode(encode(text)) differs; ids {ids:?}");
        // The per-token bytes lmscope shows must concatenate to the text as well.
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.bytes.iter().copied()).collect();
        assert_eq!(bytes, text.as_bytes(), "{name}: token bytes differ; ids {ids:?}");
    }
});
