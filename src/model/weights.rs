//! The model's weights, named as in a Hugging Face checkpoint (q_proj, gate_proj,
//! input_layernorm, ...), with the shape of each. Where they come from and how they are read is
//! `src/load/`; how a matrix is multiplied, the engine room's [`Matrix`].

pub use crate::kernels::Matrix;
use candle_core::Tensor;

/// One decoder layer's weights. c = hidden size, h = query heads, kv = KV heads, d = head_dim,
/// f = intermediate size.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm before attention, (c)
    pub input_layernorm: Tensor,
    /// (h * d, c)
    pub q_proj: Matrix,
    /// (kv * d, c)
    pub k_proj: Matrix,
    /// (kv * d, c)
    pub v_proj: Matrix,
    /// (c, h * d)
    pub o_proj: Matrix,
    /// RMSNorm before the MLP, (c)
    pub post_attention_layernorm: Tensor,
    /// (f, c)
    pub gate_proj: Matrix,
    /// (f, c)
    pub up_proj: Matrix,
    /// (c, f)
    pub down_proj: Matrix,
}

/// All of the model's weights.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding matrix, (vocab, c)
    pub embed_tokens: Matrix,
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm, (c)
    pub norm: Tensor,
    /// Output projection, (vocab, c); shares storage with embed_tokens when the weights are tied.
    pub lm_head: Matrix,
}

impl Weights {
    /// Whether some matrix product goes through candle (its GEMM, its quantized matmul), whose
    /// parallel loops run on rayon's pool; lmscope's own kernels run on `team`.
    pub fn uses_candle_products(&self) -> bool {
        let layers = self.layers.iter().flat_map(|l| {
            [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]
        });
        let mut all = layers.chain([&self.lm_head]);
        all.any(Matrix::uses_candle)
    }

    /// Number of parameters, counting a tied lm_head once.
    pub fn parameter_count(&self, tied: bool) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.input_layernorm.elem_count()
                    + l.post_attention_layernorm.elem_count()
                    + [
                        &l.q_proj,
                        &l.k_proj,
                        &l.v_proj,
                        &l.o_proj,
                        &l.gate_proj,
                        &l.up_proj,
                        &l.down_proj,
                    ]
                    .iter()
                    .map(|m| m.elem_count())
                    .sum::<usize>()
            })
            .sum();
        let head = if tied { 0 } else { self.lm_head.elem_count() };
        self.embed_tokens.elem_count() + layer + self.norm.elem_count() + head
    }
}
