//! LlamaAttention: grouped-query self-attention with rotary position embeddings, a causal mask
//! and a KV cache.
//!
//! ```text
//! x -> q_proj, k_proj, v_proj -> split into heads -> RoPE on q and k -> append k, v to the cache
//!   -> softmax(q k^T / sqrt(d) + mask) v  (each KV head serving h / kv query heads)
//!   -> merge the heads -> o_proj
//! ```
//!
//! Shapes: b = batch, t = new tokens, s = all tokens so far (cache + new), c = hidden size,
//! h = query heads, kv = key/value heads, d = head_dim.

use super::ops::{attention, linear, linears, rope, split_heads};
use super::weights::LayerWeights;
use crate::config::Config;
use anyhow::Result;
use candle_core::Tensor;

/// One layer's self-attention on its normed input x (b, t, c), positions given by cos and sin
/// (t, d/2) each: returns the output (b, t, c) and, if `keep_probs`, the probabilities
/// (b, h, t, s).
#[allow(clippy::too_many_arguments)] // the inputs transformers passes to LlamaAttention.forward
pub(super) fn self_attention(
    cfg: &Config,
    layer: &LayerWeights,
    x: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    mask: Option<&Tensor>,
    cache: &mut Option<LayerCache>,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, t, _c) = x.dims3()?;
    let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);

    // query_states = self.q_proj(hidden_states), likewise k and v (one parallel loop)
    let [q, k, v] = linears(x, [&layer.q_proj, &layer.k_proj, &layer.v_proj])?; // (b, t, h*d), (b, t, kv*d) x 2

    // .view(hidden_shape).transpose(1, 2)
    let q = split_heads(&q, h)?; // (b, h, t, d)
    let k = split_heads(&k, kv)?; // (b, kv, t, d)
    let v = split_heads(&v, kv)?; // (b, kv, t, d)

    // query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
    let q = rope(&q, cos, sin)?; // (b, h, t, d)
    let k = rope(&k, cos, sin)?; // (b, kv, t, d)

    // key_states, value_states = past_key_values.update(key_states, value_states, ...)
    let (k, v) = LayerCache::append(cache, &k, &v)?; // (b, kv, s, d) each

    // attn_output, attn_weights = eager_attention_forward(...): softmax(q k^T / sqrt(d) + mask) v
    let (out, probs) = attention(&q, &k, &v, mask, keep_probs)?; // (b, h, t, d), (b, h, t, s)

    // attn_output.transpose(1, 2).reshape(*input_shape, -1); self.o_proj(attn_output)
    let out = out.transpose(1, 2)?.reshape((b, t, h * cfg.head_dim))?; // (b, t, h*d)
    Ok((linear(&out, &layer.o_proj)?, probs)) // (b, t, c)
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
pub(super) struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerCache {
    /// Appends k and v (b, kv, t, d) to the layer's cache in `slot` and returns all cached keys
    /// and values, (b, kv, s, d) each.
    pub(super) fn append(
        slot: &mut Option<LayerCache>,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
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

    /// Layer i's slot (the cache grows a slot per layer on first use).
    pub(super) fn layer(&mut self, i: usize, layers: usize) -> &mut Option<LayerCache> {
        if self.layers.len() < layers {
            self.layers.resize_with(layers, || None);
        }
        &mut self.layers[i]
    }

    /// Counts t more positions, once every layer has appended them.
    pub(super) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// The bytes the cached keys and values take (the filled positions): layers x 2 x kv heads
    /// x positions x head_dim x bytes per value.
    pub fn bytes(&self) -> usize {
        let filled = |c: &LayerCache| {
            let (b, kv, _, d) = c.k.dims4().unwrap_or((0, 0, 0, 0));
            2 * b * kv * c.len * d * c.k.dtype().size_in_bytes()
        };
        self.layers.iter().flatten().map(filled).sum()
    }
}
