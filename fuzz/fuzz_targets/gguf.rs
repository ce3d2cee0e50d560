//! GGUF bytes -> parser -> config -> tokenizer -> weights (exact and quantized forms).
//!
//! Any panic, abort, timeout or out-of-memory is a bug: every path must end in `Ok` or `Err`.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use lmscope::config::Config;
use lmscope::gguf::GgufFile;
use lmscope::load::weights::GgufSource;
use lmscope::model::Weights;
use lmscope::load::MatrixForm;
use lmscope::tokenizer::Tokenizer;

/// A valid config may legitimately ask for a lot of memory; the fuzzer skips loading weights
/// for configs whose embedding matrix alone would exceed this many elements.
const MAX_EMBED_ELEMS: usize = 10_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };

    if let Ok(tok) = Tokenizer::from_gguf(&gguf) {
        if let Ok(ids) = tok.encode_ids("Hello, world! 123 <|im_start|>user\n héllo 👋") {
            let _ = tok.decode(&ids);
        }
        let n = tok.vocab_size() as u32;
        for id in [0, 1, n.saturating_sub(1), n, u32::MAX] {
            let _ = tok.decode(&[id]);
            let _ = tok.describe(id);
        }
    }

    let Ok(cfg) = Config::from_gguf(&gguf) else { return };
    if cfg.hidden_size.saturating_mul(cfg.vocab_size) > MAX_EMBED_ELEMS {
        return;
    }
    let source = GgufSource { gguf: &gguf, cfg: &cfg, device: Device::Cpu };
    let _ = Weights::load(&source, &cfg, MatrixForm::Exact(DType::F32));
    let _ = Weights::load(&source, &cfg, MatrixForm::Quantized);
});
