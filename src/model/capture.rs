//! What the inspection commands record during a forward pass: the residual stream after every
//! step that writes it, and the attention probabilities of every layer (as llama.cpp's
//! `cb(cur, "name", il)` names its intermediates, or transformers' `output_hidden_states` and
//! `output_attentions`).

use candle_core::Tensor;

/// What to record during a forward pass, and where it is put.
#[derive(Debug, Default)]
pub struct Capture {
    /// Record the residual stream: the embeddings, then each layer's output.
    pub hidden_states: bool,
    /// Record each layer's attention probabilities.
    pub attentions: bool,
    /// (b, t, c) per entry: index 0 = embeddings, index i = output of layer i - 1 (before the
    /// final norm). transformers' `output_hidden_states` is the same except that its last entry
    /// has the final norm applied; that normed tensor is `final_norm`.
    pub hidden: Vec<Tensor>,
    /// (b, t, c): the final RMSNorm's output, the input to lm_head.
    pub final_norm: Option<Tensor>,
    /// (b, h, t, s) per layer: softmax(q k^T / sqrt(d) + mask).
    pub attention: Vec<Tensor>,
}

impl Capture {
    /// A capture of the residual stream and the attention probabilities.
    pub fn everything() -> Self {
        Capture { hidden_states: true, attentions: true, ..Default::default() }
    }

    /// Records a state of the residual stream (the embeddings or a layer's output).
    pub(super) fn record_residual(&mut self, x: &Tensor) {
        if self.hidden_states {
            self.hidden.push(x.clone());
        }
    }

    /// Records the final norm's output.
    pub(super) fn record_final_norm(&mut self, x: &Tensor) {
        if self.hidden_states {
            self.final_norm = Some(x.clone());
        }
    }

    /// Records a layer's attention probabilities (computed only when [`Capture::attentions`]).
    pub(super) fn record_attention(&mut self, probs: Option<Tensor>) {
        self.attention.extend(probs);
    }
}
