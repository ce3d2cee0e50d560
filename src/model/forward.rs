//! The Llama forward pass, top to bottom:
//!
//! ```text
//! ids -> embed_tokens -> [ RMSNorm -> attention (RoPE, GQA, causal) -> + residual
//!                          RMSNorm -> SwiGLU MLP                     -> + residual ] x layers
//!     -> final RMSNorm -> lm_head -> logits
//! ```
//!
//! Each step names the line of transformers' `modeling_llama.py` it corresponds to.
//! Shapes: b = batch, t = new tokens, s = all tokens so far (cache + new), c = hidden size,
//! h = query heads, kv = key/value heads, d = head_dim, f = intermediate size, v = vocab.

use super::ops::{
    add_rms_norm, attention, attention_output, causal_mask, rms_norm, rope_heads, silu_mul,
    split_heads, RopeTables,
};
use super::weights::{LayerWeights, Matrix, Weights};
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

/// Keys and values of the tokens seen so far, per layer, so the next token costs one position of
/// work instead of the whole prefix.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// Number of positions cached.
    len: usize,
}

/// One layer's keys and values (after RoPE): buffers of (b, kv, capacity, d) whose first `len`
/// positions are filled. The capacity doubles when it runs out, so appending a token writes one
/// position instead of copying the whole cache.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerCache {
    /// Appends k and v (b, kv, t, d) to the layer's cache in `slot` and returns all cached keys
    /// and values, (b, kv, s, d) each.
    fn append(slot: &mut Option<LayerCache>, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kv, t, d) = k.dims4()?;
        let (len, capacity) = match slot {
            Some(c) => (c.len, c.k.dim(2)?),
            None => (0, 0),
        };
        if slot.is_none() && t.is_multiple_of(64) && k.is_contiguous() && v.is_contiguous() {
            // A first chunk that fills the capacity exactly: k and v are the buffers.
            *slot = Some(LayerCache { k: k.clone(), v: v.clone(), len: t });
            return Ok((k.clone(), v.clone()));
        }
        if len + t > capacity {
            let capacity = (len + t).max(2 * capacity).next_multiple_of(64);
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buffer = Tensor::zeros((b, kv, capacity, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    buffer.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buffer)
            };
            let (k_old, v_old) = (slot.as_ref().map(|c| &c.k), slot.as_ref().map(|c| &c.v));
            *slot = Some(LayerCache { k: grow(k_old)?, v: grow(v_old)?, len });
        }
        let c = slot.as_mut().expect("the cache was just made");
        c.k.slice_set(&k.contiguous()?, 2, len)?;
        c.v.slice_set(&v.contiguous()?, 2, len)?;
        c.len = len + t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tokens already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What to record during a forward pass, and where it is put.
#[derive(Debug, Default)]
pub struct Capture {
    /// Record the residual stream: the embeddings, then each layer's output.
    pub hidden_states: bool,
    /// Record each layer's attention probabilities.
    pub attentions: bool,
    /// (b, t, c) per entry: index 0 = embeddings, index i = output of layer i (before the final
    /// norm). transformers' `output_hidden_states` is the same except that its last entry has the
    /// final norm applied; that normed tensor is `final_norm`.
    pub hidden: Vec<Tensor>,
    /// (b, t, c): the final RMSNorm's output, the input to lm_head.
    pub final_norm: Option<Tensor>,
    /// (b, h, t, s) per layer: softmax(q k^T / sqrt(d) + mask).
    pub attention: Vec<Tensor>,
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
        self.run(ids, cache, capture, Logits::All)
    }

    /// A timed forward pass (the `forward` span of `--timings`). lmscope's parallel loops run on
    /// the calling thread and its team (`team.rs`). Where candle does products (dense weights,
    /// its quantized matmul), the pass runs on one of rayon's threads instead: a candle product
    /// started from there shares its work with the other threads directly, while one started
    /// from any other thread is handed over to the pool and waited for (a wake-up and a context
    /// switch for each of the ~200 products of a token). Handing the pass itself over costs one
    /// of each, which the first case saves.
    fn run(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        capture: Option<&mut Capture>,
        logits_for: Logits,
    ) -> Result<Tensor> {
        let _t = crate::timings::span("forward");
        if self.weights.uses_candle_products() {
            rayon::scope(|_| self.forward_in_pool(ids, cache, capture, logits_for))
        } else {
            self.forward_in_pool(ids, cache, capture, logits_for)
        }
    }

    fn forward_in_pool(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut capture: Option<&mut Capture>,
        logits_for: Logits,
    ) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        ensure!(t > 0, "the input has no tokens");
        ensure!(
            offset + t <= self.cfg.max_position_embeddings,
            "{} tokens exceed the model's context of {} positions",
            offset + t,
            self.cfg.max_position_embeddings
        );
        let w = &self.weights;

        // inputs_embeds = self.embed_tokens(input_ids)
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let mut x = w.embed_tokens.rows(&flat)?.to_dtype(self.dtype)?; // (b*t, c)
        x = x.reshape((ids.dim(0)?, t, self.cfg.hidden_size))?; // (b, t, c)
        if let Some(cap) = capture.as_deref_mut().filter(|c| c.hidden_states) {
            cap.hidden.push(x.clone());
        }

        // position_embeddings = self.rotary_emb(hidden_states, position_ids)
        let (cos, sin) = self.rope.at(offset, t, self.dtype)?; // (t, d/2) each

        // causal_mask: only for more than one query, as transformers skips it for one token
        let mask = (t > 1).then(|| causal_mask(t, offset, &self.device)).transpose()?; // (t, s)
        let mask = mask.map(|m| m.to_dtype(self.dtype)).transpose()?;

        // With only the next token's logits wanted (and nothing captured), the last layer needs
        // keys and values at every position but the rest at the last one only (llama.cpp does
        // the same; transformers computes every position and keeps the last).
        let last_only = matches!(logits_for, Logits::Last) && capture.is_none() && t > 1;
        let keep_probs = capture.as_ref().is_some_and(|c| c.attentions);
        let eps = self.cfg.rms_norm_eps;
        // Each residual add comes with the RMSNorm that follows it (one pass): the first layer's
        // input_layernorm here, every later one (and the final norm) at the end of a layer.
        let first_norm = w.layers.first().map_or(&w.norm, |l| &l.input_layernorm);
        let mut h = rms_norm(&x, first_norm, eps)?; // (b, t, c)
        for (i, layer) in w.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| {
                if c.layers.len() < w.layers.len() {
                    c.layers.resize_with(w.layers.len(), || None);
                }
                &mut c.layers[i]
            });
            let rows = if last_only && i + 1 == w.layers.len() { Rows::Last } else { Rows::All };
            let next_norm = w.layers.get(i + 1).map_or(&w.norm, |l| &l.input_layernorm);
            let wanted = Wanted { rows, probs: keep_probs };
            let (out, normed, probs) = self.decoder_layer(
                layer,
                &x,
                &h,
                next_norm,
                &cos,
                &sin,
                mask.as_ref(),
                kv,
                wanted,
            )?;
            (x, h) = (out, normed); // (b, t, c) each
            if let Some(cap) = capture.as_deref_mut() {
                if cap.hidden_states {
                    cap.hidden.push(x.clone());
                }
                if let Some(probs) = probs {
                    cap.attention.push(probs);
                }
            }
        }
        if let Some(c) = cache {
            c.len += t;
        }

        // hidden_states = self.norm(hidden_states): done with the last residual add
        let x = h; // (b, t, c)
        if let Some(cap) = capture.filter(|c| c.hidden_states) {
            cap.final_norm = Some(x.clone());
        }
        // logits = self.lm_head(hidden_states[:, slice_indices, :])
        let x = match logits_for {
            Logits::All => x,
            Logits::Last => x.narrow(1, x.dim(1)? - 1, 1)?, // (b, 1, c)
        };
        let logits = w.lm_head.forward(&x)?; // (b, t or 1, v)
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// One LlamaDecoderLayer, given its input x and `h`, x's input_layernorm. Returns its output
    /// (b, t, c), that output normed with `next_norm` (the next layer's input_layernorm, or the
    /// model's final norm), and the attention probabilities (b, h, t, s) if `wanted`; with
    /// `Rows::Last`, all of the last position only (t = 1), the keys and values of every
    /// position still going to the cache.
    #[allow(clippy::too_many_arguments)] // the layer's inputs, as transformers passes them
    fn decoder_layer(
        &self,
        layer: &LayerWeights,
        x: &Tensor,
        h: &Tensor,
        next_norm: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<LayerCache>>,
        wanted: Wanted,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let eps = self.cfg.rms_norm_eps;
        // hidden_states, attn_weights = self.self_attn(self.input_layernorm(hidden_states), ...)
        let (attn, probs) = self.attention(layer, h, cos, sin, mask, cache, wanted)?; // (b, t, c)
        let x = match wanted.rows {
            Rows::All => x.clone(),
            Rows::Last => x.narrow(1, x.dim(1)? - 1, 1)?, // (b, 1, c)
        };

        // hidden_states = residual + hidden_states; self.post_attention_layernorm(hidden_states)
        let (x, h) = add_rms_norm(&x, &attn, &layer.post_attention_layernorm, eps)?; // (b, t, c)

        // SwiGLU: down_proj(act_fn(gate_proj(x)) * up_proj(x))
        let [gate, up] = products(&[&layer.gate_proj, &layer.up_proj], &h)?; // (b, t, f) each
        let mlp = layer.down_proj.forward(&silu_mul(&gate, &up)?)?; // (b, t, c)

        // hidden_states = residual + hidden_states, and the next norm of it
        let (x, normed) = add_rms_norm(&x, &mlp, next_norm, eps)?; // (b, t, c) each
        Ok((x, normed, probs))
    }

    /// LlamaAttention: grouped-query self-attention with rotary embeddings and a causal mask;
    /// the probabilities too if `wanted`. With `Rows::Last`, only the last position's query
    /// (keys and values of all).
    #[allow(clippy::too_many_arguments)] // the layer's inputs, as transformers passes them
    fn attention(
        &self,
        layer: &LayerWeights,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<LayerCache>>,
        wanted: Wanted,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let cfg = &self.cfg;
        let (b, t, _c) = x.dims3()?;
        let (h, kv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);

        // query_states = q_proj(x).view(b, t, h, d).transpose(1, 2), likewise k and v
        // ... with apply_rotary_pos_emb(q, k, cos, sin) in the same pass for q and k
        let (q, k, v, mask, t) = match wanted.rows {
            Rows::All => {
                let [q, k, v] = products(&[&layer.q_proj, &layer.k_proj, &layer.v_proj], x)?;
                (rope_heads(&q, h, cos, sin)?, k, v, mask, t) // q: (b, h, t, d)
            }
            Rows::Last => {
                let [k, v] = products(&[&layer.k_proj, &layer.v_proj], x)?;
                let q = layer.q_proj.forward(&x.narrow(1, t - 1, 1)?)?; // (b, 1, h*d)
                let (cos, sin) = (cos.narrow(0, t - 1, 1)?, sin.narrow(0, t - 1, 1)?);
                // The last query sees every key: no mask, as for a single token.
                (rope_heads(&q, h, &cos, &sin)?, k, v, None, 1) // q: (b, h, 1, d)
            }
        };
        let k = rope_heads(&k, kv, cos, sin)?; // (b, kv, t, d)
        let v = split_heads(&v, kv)?; // (b, kv, t, d)

        // past_key_value.update(k, v): append to the cache
        let (k, v) = match cache {
            Some(slot) => LayerCache::append(slot, &k, &v)?, // (b, kv, s, d) each
            None => (k, v),
        };

        // softmax(q k^T / sqrt(d) + mask) v, each KV head serving h / kv query heads (repeat_kv)
        let (out, probs) = match wanted.probs {
            true => attention(&q, &k, &v, mask).map(|(out, p)| (out, Some(p)))?, // (b, h, t, s)
            false => (attention_output(&q, &k, &v, mask)?, None),
        }; // out: (b, h, t, d)

        // attn_output.transpose(1, 2).reshape(b, t, h * d); o_proj(attn_output)
        let out = out.transpose(1, 2)?.reshape((b, t, h * d))?; // (b, t, h*d)
        Ok((layer.o_proj.forward(&out)?, probs)) // (b, t, c)
    }

    /// Logits for a token sequence, (1, t, v) — the common case of one sequence, no cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // (1, t)
        self.forward(&input, None, None)
    }

    /// Logits of the next token after the cached ones plus `ids`, (v), extending the cache.
    /// Only the last position goes through lm_head (transformers' generate does the same with
    /// `logits_to_keep=1`); the other positions' logits are never looked at.
    pub fn next_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // (1, t)
        let logits = self.run(&input, Some(cache), None, Logits::Last)?; // (1, 1, v)
        Ok(logits.squeeze(0)?.squeeze(0)?) // (v)
    }

    /// What the model predicts from a residual-stream state x (b, t, c): the final RMSNorm and
    /// lm_head, (b, t, v) in f32. On the last layer's output these are the model's own logits;
    /// on an earlier layer's, the logit lens.
    pub fn final_logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = rms_norm(&x.to_dtype(self.dtype)?, &self.weights.norm, self.cfg.rms_norm_eps)?;
        Ok(self.weights.lm_head.forward(&h)?.to_dtype(DType::F32)?)
    }

    /// The embedding row of each id, (n, c), in f32.
    pub fn embeddings(&self, ids: &[u32]) -> Result<Tensor> {
        self.weights.embed_tokens.rows(ids)
    }
}

/// x @ W.T for N matrices of the same input x, computed together (see `Matrix::forward_many`).
fn products<const N: usize>(ms: &[&Matrix; N], x: &Tensor) -> Result<[Tensor; N]> {
    let ys = Matrix::forward_many(ms, x)?;
    ys.try_into().map_err(|_| anyhow::anyhow!("expected {N} products"))
}

/// Which positions go through lm_head.
#[derive(Debug, Clone, Copy)]
enum Logits {
    All,
    Last,
}

/// What a decoder layer computes besides its output.
#[derive(Clone, Copy)]
struct Wanted {
    /// The positions it computes its output for.
    rows: Rows,
    /// Whether it keeps the attention probabilities (for a capture).
    probs: bool,
}

/// The positions a decoder layer computes its output for.
#[derive(Clone, Copy)]
enum Rows {
    All,
    /// The last one only (keys and values still of all).
    Last,
}

/// Softmax of a logit row in f64 (exact enough to print probabilities to many digits).
pub fn softmax_f64(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
