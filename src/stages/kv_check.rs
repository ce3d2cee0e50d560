//! `lmscope kv-check`: why the KV cache works. Greedy decoding for N steps, each next token
//! computed twice: with the cache (only the new position goes through the layers; the keys and
//! values of the earlier ones are read from the cache) and by a full forward pass over the whole
//! sequence, as if there were no cache. Both must give the same token; their logits differ only
//! by float rounding (the kernels add in a different order for one row than for many).

use crate::load::LoadedModel;
use crate::model::KvCache;
use anyhow::{ensure, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct KvCheckReport {
    pub input: String,
    pub prompt_ids: Vec<u32>,
    pub steps: Vec<KvStep>,
    /// The largest max_abs_diff of the steps.
    pub max_abs_diff: f32,
    /// Whether the cached and the full pass chose the same token at every step.
    pub identical: bool,
    /// Bytes of keys and values in the cache after the last step:
    /// layers x 2 x kv_heads x positions x head_dim x bytes_per_value.
    pub cache_bytes: usize,
    /// The same with as many KV heads as query heads (no grouped-query attention).
    pub cache_bytes_without_gqa: usize,
    pub cache: CacheShape,
    /// Sums of the steps' times.
    pub ms_cached_total: f64,
    pub ms_full_total: f64,
}

#[derive(Debug, Serialize)]
pub struct KvStep {
    /// 1-based.
    pub step: usize,
    /// The tokens the step's prediction follows (prompt + earlier steps' tokens).
    pub positions: usize,
    /// The greedy token from the cached logits (the one appended to the sequence).
    pub id: u32,
    pub token: String,
    /// The greedy token from the full pass's logits.
    pub id_full: u32,
    pub agree: bool,
    /// max |cached logit - full logit| over the vocabulary.
    pub max_abs_diff: f32,
    /// Wall time of the cached step (step 1: the prompt's prefill into the empty cache).
    pub ms_cached: f64,
    /// Wall time of the full pass over all `positions` tokens.
    pub ms_full: f64,
    /// Bytes in the cache after this step (it holds `positions` positions).
    pub cache_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct CacheShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub heads: usize,
    /// Positions cached after the last step (the last step's token is not yet in it).
    pub positions: usize,
    pub head_dim: usize,
    /// Bytes of one value in the compute dtype (4 for f32).
    pub bytes_per_value: usize,
    pub dtype: String,
}

/// layers x 2 (K and V) x kv_heads x positions x head_dim x bytes.
pub fn cache_bytes(
    layers: usize,
    kv_heads: usize,
    positions: usize,
    head_dim: usize,
    bytes: usize,
) -> usize {
    layers * 2 * kv_heads * positions * head_dim * bytes
}

pub fn run(m: &LoadedModel, prompt: &crate::input::Prompt, steps: usize) -> Result<KvCheckReport> {
    ensure!(!prompt.is_empty(), "the text is empty: give a prompt to run the model on");
    let text = prompt.text(&m.tokenizer)?;
    ensure!(steps >= 1, "--steps must be at least 1, got {steps}");
    let prompt = prompt.ids(&m.tokenizer)?;
    ensure!(!prompt.is_empty(), "the text produced no tokens");
    let cfg = &m.model.cfg;
    let context = cfg.max_position_embeddings;
    ensure!(
        prompt.len() + steps - 1 <= context,
        "{} prompt tokens + {steps} steps do not fit the model's context of {context} positions",
        prompt.len()
    );
    let bytes = m.model.dtype.size_in_bytes();
    let size = |kv: usize, positions: usize| {
        cache_bytes(cfg.num_hidden_layers, kv, positions, cfg.head_dim, bytes)
    };

    // One untimed pass first: the first forward pass of a process also starts its threads and
    // allocates its buffers, which would be charged to step 1.
    m.model.logits(&prompt)?;

    let mut cache = KvCache::new();
    let mut seq = prompt.clone();
    let mut out = Vec::with_capacity(steps);
    let mut counter = None;
    for step in 1..=steps {
        crate::interrupt::check()?;
        // The cached step: the prompt into the empty cache, then one new token at a time.
        let new = if step == 1 { &seq[..] } else { &seq[seq.len() - 1..] };
        let start = Instant::now();
        let cached: Vec<f32> = m.model.next_logits(new, &mut cache)?.to_vec1()?;
        let ms_cached = start.elapsed().as_secs_f64() * 1000.0;
        ensure!(
            cache.len() == seq.len(),
            "the cache holds {} positions, expected {}",
            cache.len(),
            seq.len()
        );

        // The full pass over the whole sequence, no cache.
        let start = Instant::now();
        let logits = m.model.logits(&seq)?.squeeze(0)?; // (t, v)
        let full: Vec<f32> = logits.get(seq.len() - 1)?.to_vec1()?;
        let ms_full = start.elapsed().as_secs_f64() * 1000.0;

        let id = crate::sampling::argmax(&cached) as u32;
        let id_full = crate::sampling::argmax(&full) as u32;
        let max_abs_diff =
            cached.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        out.push(KvStep {
            step,
            positions: seq.len(),
            id,
            token: m.tokenizer.id_to_token(id)?,
            id_full,
            agree: id == id_full,
            max_abs_diff,
            ms_cached,
            ms_full,
            cache_bytes: size(cfg.num_key_value_heads, cache.len()),
        });
        seq.push(id);
        if counter.is_none() && steps > 1 {
            counter = crate::progress::counter("checking the cache".into(), steps as u64);
        }
        if let Some(c) = &counter {
            c.set_position(step as u64);
        }
    }
    let positions = cache.len();
    Ok(KvCheckReport {
        input: text,
        prompt_ids: prompt,
        max_abs_diff: out.iter().map(|s| s.max_abs_diff).fold(0f32, f32::max),
        identical: out.iter().all(|s| s.agree),
        cache_bytes: size(cfg.num_key_value_heads, positions),
        cache_bytes_without_gqa: size(cfg.num_attention_heads, positions),
        cache: CacheShape {
            layers: cfg.num_hidden_layers,
            kv_heads: cfg.num_key_value_heads,
            heads: cfg.num_attention_heads,
            positions,
            head_dim: cfg.head_dim,
            bytes_per_value: bytes,
            dtype: format!("{:?}", m.model.dtype).to_lowercase(),
        },
        ms_cached_total: out.iter().map(|s| s.ms_cached).sum(),
        ms_full_total: out.iter().map(|s| s.ms_full).sum(),
        steps: out,
    })
}

#[cfg(test)]
mod tests {
    use super::cache_bytes;

    #[test]
    fn cache_size_formula() {
        // SmolLM2-135M after 9 positions in f32: 30 x 2 x 3 x 9 x 64 x 4.
        assert_eq!(cache_bytes(30, 3, 9, 64, 4), 414_720);
        assert_eq!(cache_bytes(30, 9, 9, 64, 4), 3 * 414_720);
        assert_eq!(cache_bytes(30, 3, 0, 64, 4), 0);
    }
}
