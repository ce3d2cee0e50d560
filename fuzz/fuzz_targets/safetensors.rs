//! config.json text + safetensors bytes -> Config::from_json_str, SafetensorsSource, Weights::load.
//!
//! Input layout: `<config.json>` SEPARATOR `<safetensors file>`. Without the separator the whole
//! input is the safetensors file. The config part is always parsed (fuzzing
//! `Config::from_json_str`); the weights are loaded against it when it is valid and small,
//! otherwise against the tiny fixture's config (fixtures/tiny-llama/config.json), so that
//! mutations of the safetensors part keep reaching the shape checks of `Weights::load`.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use lmscope::config::Config;
use lmscope::load::weights::SafetensorsSource;
use lmscope::model::Weights;
use lmscope::load::MatrixForm;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

const SEPARATOR: &[u8] = b"\n--lmscope-fuzz-safetensors--\n";
const MAX_EMBED_ELEMS: usize = 10_000_000;

fn fixture_config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tiny-llama/config.json");
        Config::from_config_json(std::path::Path::new(path)).expect("fixture config")
    })
}

fn scratch_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("lmscope-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let (config_part, weights_part) = match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR)
    {
        Some(at) => (Some(&data[..at]), &data[at + SEPARATOR.len()..]),
        None => (None, data),
    };

    let fuzzed_cfg = config_part
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|text| Config::from_json_str(text).ok())
        .filter(|c| c.hidden_size.saturating_mul(c.vocab_size) <= MAX_EMBED_ELEMS);
    let cfg = fuzzed_cfg.as_ref().unwrap_or_else(|| fixture_config());

    let path = scratch_path();
    {
        let mut f = std::fs::File::create(path).expect("create scratch file");
        f.write_all(weights_part).expect("write scratch file");
    }
    if let Ok(source) = SafetensorsSource::open(std::slice::from_ref(path), &Device::Cpu) {
        let _ = Weights::load(&source, cfg, MatrixForm::Exact(DType::F32));
    }
});
