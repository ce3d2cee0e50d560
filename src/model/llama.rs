//! The Llama forward pass, top to bottom, as transformers' `modeling_llama.py` writes it:
//!
//! ```text
//! ids -> embed_tokens -> [ x = x + self_attn(input_layernorm(x))            (attention.rs)
//!                          x = x + mlp(post_attention_layernorm(x)) ] x layers
//!     -> norm -> lm_head -> logits
//! ```
//!
//! Each step names the line of `modeling_llama.py` it corresponds to. Every op is a formula in
//! `ops.rs`; the fast kernels behind them are in `src/kernels/` and never change this page.
//! Shapes: b = batch, t = new tokens, s = all tokens so far (cache + new), c = hidden size,
//! h = query heads, kv = key/value heads, d = head_dim, f = intermediate size, v = vocab.

use super::attention::{self_attention, KvCache};
use super::capture::Capture;
use super::ops::{add, causal_mask, linear, linears, rms_norm, silu_mul, RopeTables};
use super::weights::{LayerWeights, Weights};
use crate::config::Config;
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};

/// A Llama-family decoder with its weights loaded.
pub struct Llama {
    pub cfg: Config,
    pub weights: Weights,
    /// The dtype the forward pass computes in (f32 unless asked otherwise).
    pub dtype: DType,
    pub device: Device,
    /// cos/sin tables for every position up to max_position_embeddings.
    rope: RopeTables,
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logits {
    /// Every position's: (b, t, v).
    All,
    /// The last position's only: (b, 1, v), for the next token.
    Last,
}

impl Llama {
    pub fn new(cfg: Config, weights: Weights, dtype: DType, device: Device) -> Result<Self> {
        let rope =
            RopeTables::new(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings, &device)?;
        Ok(Llama { cfg, weights, dtype, device, rope })
    }

    /// Runs the model on `ids` (b, t) and returns logits for every position, (b, t, v).
    ///
    /// With a cache, `ids` continue the cached tokens and the cache is extended; the logits equal
    /// those of a full pass over all tokens. With a capture, intermediates are recorded into it.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        capture: Option<&mut Capture>,
    ) -> Result<Tensor> {
        self.timed(ids, cache, capture, Logits::All)
    }

    /// Logits for a token sequence, (1, t, v): the common case of one sequence, no cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // (1, t)
        self.forward(&input, None, None)
    }

    /// Logits of the next token after the cached ones plus `ids`, (v), extending the cache.
    /// Only the last position goes through lm_head (transformers' generate does the same with
    /// `logits_to_keep=1`); the other positions' logits are never looked at.
    pub fn next_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // (1, t)
        let logits = self.timed(&input, Some(cache), None, Logits::Last)?; // (1, 1, v)
        Ok(logits.squeeze(0)?.squeeze(0)?) // (v)
    }

    /// What the model predicts from a residual-stream state x (b, t, c): the final RMSNorm and
    /// lm_head, (b, t, v) in f32. On the last layer's output these are the model's own logits;
    /// on an earlier layer's, the logit lens.
    pub fn final_logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = rms_norm(&x.to_dtype(self.dtype)?, &self.weights.norm, self.cfg.rms_norm_eps)?;
        Ok(linear(&h, &self.weights.lm_head)?.to_dtype(DType::F32)?)
    }

    /// The embedding row of each id, (n, c), in f32: the values the forward pass starts from
    /// (rounded to the compute dtype, as transformers' embedding in bf16 holds them).
    pub fn embeddings(&self, ids: &[u32]) -> Result<Tensor> {
        let rows = self.weights.embed_tokens.rows(ids)?; // (n, c) f32
        Ok(rows.to_dtype(self.dtype)?.to_dtype(DType::F32)?)
    }

    /// The forward pass, timed (the `forward` span of `--timings`). Where candle does products
    /// (dense weights, its quantized matmul), the pass runs on one of rayon's threads: a candle
    /// product started from there shares its work with the other threads directly, while one
    /// started elsewhere is handed over to the pool and waited for (a wake-up for each of the
    /// ~200 products of a token). lmscope's own kernels run on the calling thread's team.
    fn timed(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        capture: Option<&mut Capture>,
        logits: Logits,
    ) -> Result<Tensor> {
        let _t = crate::timings::span("forward");
        // A line on a terminal's stderr if a pass over a long prompt takes a while.
        let (_, t) = ids.dims2()?;
        let _p = (t > 1).then(|| crate::progress::spinner(format!("forward pass over {t} tokens")));
        if self.weights.uses_candle_products() {
            rayon::scope(|_| self.run(ids, cache, capture, logits))
        } else {
            self.run(ids, cache, capture, logits)
        }
    }

    /// LlamaModel.forward and LlamaForCausalLM's lm_head.
    fn run(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        mut capture: Option<&mut Capture>,
        logits: Logits,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let mut fresh = KvCache::new();
        let cache = cache.unwrap_or(&mut fresh); // the keys and values of this call at least
        let offset = cache.len();
        ensure!(t > 0, "the input has no tokens");
        ensure!(
            offset + t <= self.cfg.max_position_embeddings,
            "{} tokens exceed the model's context of {} positions",
            offset + t,
            self.cfg.max_position_embeddings
        );
        let (w, eps) = (&self.weights, self.cfg.rms_norm_eps);

        // inputs_embeds = self.embed_tokens(input_ids)
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let x = w.embed_tokens.rows(&flat)?.to_dtype(self.dtype)?; // (b*t, c)
        let mut x = x.reshape((b, t, self.cfg.hidden_size))?; // (b, t, c)
        if let Some(cap) = capture.as_deref_mut() {
            cap.record_residual(&x);
        }

        // position_embeddings = self.rotary_emb(hidden_states, position_ids)
        let (cos, sin) = self.rope.at(offset, t, self.dtype)?; // (t, d/2) each

        // causal_mask: only for more than one query (transformers skips it for one token)
        let mask = (t > 1).then(|| causal_mask(t, offset, &self.device)).transpose()?; // (t, s)
        let mask = mask.map(|m| m.to_dtype(self.dtype)).transpose()?;
        let keep_probs = capture.as_ref().is_some_and(|c| c.attentions);

        // for decoder_layer in self.layers: hidden_states = decoder_layer(hidden_states, ...)
        let layers = w.layers.len();
        for (i, layer) in w.layers.iter().enumerate() {
            // residual = hidden_states; hidden_states = self.input_layernorm(hidden_states)
            let h = rms_norm(&x, &layer.input_layernorm, eps)?; // (b, t, c)
                                                                // hidden_states, _ = self.self_attn(hidden_states, ...)
            let kv = cache.layer(i, layers);
            let (mut attn, probs) =
                self_attention(&self.cfg, layer, &h, (&cos, &sin), mask.as_ref(), kv, keep_probs)?;

            // Only the next token's logits wanted, nothing recorded: the rest of the last layer
            // at the last position only (its keys and values are cached already), as llama.cpp
            // does with inp_out_ids; transformers computes every position and keeps the last.
            if i + 1 == layers && logits == Logits::Last && capture.is_none() && t > 1 {
                x = x.narrow(1, t - 1, 1)?; // (b, 1, c)
                attn = attn.narrow(1, t - 1, 1)?; // (b, 1, c)
            }

            // hidden_states = residual + hidden_states
            x = add(&x, &attn)?; // (b, t, c)

            // residual = hidden_states; hidden_states = self.post_attention_layernorm(hidden_states)
            let h = rms_norm(&x, &layer.post_attention_layernorm, eps)?; // (b, t, c)
                                                                         // hidden_states = residual + self.mlp(hidden_states)
            x = add(&x, &self.mlp(layer, &h)?)?; // (b, t, c)

            if let Some(cap) = capture.as_deref_mut() {
                cap.record_residual(&x);
                cap.record_attention(probs);
            }
        }
        cache.advance(t);

        // hidden_states = self.norm(hidden_states)
        let x = rms_norm(&x, &w.norm, eps)?; // (b, t, c)
        if let Some(cap) = capture {
            cap.record_final_norm(&x);
        }
        // logits = self.lm_head(hidden_states[:, slice_indices, :])
        let x = match logits {
            Logits::All => x,
            Logits::Last => x.narrow(1, x.dim(1)? - 1, 1)?, // (b, 1, c)
        };
        let logits = linear(&x, &w.lm_head)?; // (b, t or 1, v)
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// LlamaMLP, SwiGLU: `down_proj(act_fn(gate_proj(x)) * up_proj(x))`. x: (b, t, c) -> (b, t, c).
    fn mlp(&self, layer: &LayerWeights, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = linears(x, [&layer.gate_proj, &layer.up_proj])?; // (b, t, f) each
        Ok(linear(&silu_mul(&gate, &up)?, &layer.down_proj)?) // (b, t, c)
    }
}

/// Softmax of a logit row in f64 (exact enough to print probabilities to many digits).
pub fn softmax_f64(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
