//! `lmscope model`: the architecture as `print(model)` shows it, the config, and where the
//! parameters are.

use crate::config::Config;
use crate::load::LoadedModel;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ModelReport {
    /// Where the weights came from.
    pub origin: String,
    /// The module tree, formatted like PyTorch's `print(model)`.
    pub tree: String,
    pub config: Config,
    pub parameters: Parameters,
    /// The dtype the forward pass computes in.
    pub dtype: String,
    /// How the weight matrices are held and multiplied (the exact or the --quantized path).
    pub matrices: String,
    /// The kernels the forward pass runs on (`LMSCOPE_KERNELS`; by default the best this CPU runs).
    pub kernels: String,
    /// The backends this CPU runs, slowest first.
    pub kernels_available: Vec<String>,
}

/// Parameter counts per part of the model.
#[derive(Debug, Serialize)]
pub struct Parameters {
    /// embed_tokens: vocab x hidden
    pub embed_tokens: usize,
    /// One decoder layer's attention projections (q, k, v, o).
    pub attention_per_layer: usize,
    /// One decoder layer's MLP (gate, up, down).
    pub mlp_per_layer: usize,
    /// One decoder layer's two RMSNorm weights.
    pub norms_per_layer: usize,
    /// All decoder layers together.
    pub layers: usize,
    /// The final RMSNorm.
    pub norm: usize,
    /// lm_head: 0 extra when tied to embed_tokens.
    pub lm_head: usize,
    pub tied: bool,
    pub total: usize,
}

pub fn run(m: &LoadedModel) -> Result<ModelReport> {
    let cfg = &m.model.cfg;
    let parameters = parameters(cfg);
    debug_assert_eq!(parameters.total, m.model.weights.parameter_count(cfg.tie_word_embeddings));
    Ok(ModelReport {
        origin: m.origin.clone(),
        tree: tree(cfg),
        config: cfg.clone(),
        parameters,
        dtype: format!("{:?}", m.model.dtype).to_lowercase(),
        matrices: describe_matrices(m),
        kernels: crate::kernels::backend().name().to_string(),
        kernels_available: crate::kernels::Backend::all_available()
            .iter()
            .map(|b| b.name().to_string())
            .collect(),
    })
}

/// "exact: ..." or "quantized: ...", from the forms the loaded matrices are in.
fn describe_matrices(m: &LoadedModel) -> String {
    use crate::kernels::Matrix;
    let w = &m.model.weights;
    let mut forms: Vec<String> = Vec::new();
    let mut quantized = false;
    let all = w.layers.iter().flat_map(|l| {
        [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]
    });
    for matrix in all.chain([&w.embed_tokens, &w.lm_head]) {
        let form = match matrix {
            Matrix::Dense(t) => format!("dense {:?}", t.dtype()).to_lowercase(),
            Matrix::Blocks(b) => format!("{:?} blocks", b.kind),
            Matrix::Quantized(..) => {
                quantized = true;
                "candle quantized".to_string()
            }
            Matrix::Int8Blocks(b) => {
                quantized = true;
                format!("{:?} blocks x 8-bit activations", b.kind)
            }
        };
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    if quantized {
        format!("quantized: {} (activations rounded to 8 bits)", forms.join(", "))
    } else {
        format!("exact: {} (f32 activations)", forms.join(", "))
    }
}

fn parameters(cfg: &Config) -> Parameters {
    let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let attention_per_layer = c * q + 2 * c * kv + q * c;
    let mlp_per_layer = 3 * c * f;
    let norms_per_layer = 2 * c;
    let layers = cfg.num_hidden_layers * (attention_per_layer + mlp_per_layer + norms_per_layer);
    let lm_head = if cfg.tie_word_embeddings { 0 } else { v * c };
    Parameters {
        embed_tokens: v * c,
        attention_per_layer,
        mlp_per_layer,
        norms_per_layer,
        layers,
        norm: c,
        lm_head,
        tied: cfg.tie_word_embeddings,
        total: v * c + layers + c + lm_head,
    }
}

/// A float as Python's repr writes it (`1e-05`, `10000.0`), so eps reads as in the notebook.
pub fn python_float(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let s = format!("{x}");
        return if s.contains('.') { s } else { format!("{s}.0") };
    }
    let s = format!("{x:e}"); // "1e-5"
    let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

/// The module tree as PyTorch prints a transformers LlamaForCausalLM.
pub fn tree(cfg: &Config) -> String {
    let c = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let f = cfg.intermediate_size;
    let eps = python_float(cfg.rms_norm_eps);
    let linear =
        |i: usize, o: usize| format!("Linear(in_features={i}, out_features={o}, bias=False)");
    let norm = format!("LlamaRMSNorm(({c},), eps={eps})");
    let n = cfg.num_hidden_layers;
    // PyTorch folds identical repeated children: "(0-29): 30 x LlamaDecoderLayer(".
    let layer_head = if n == 1 {
        "(0): LlamaDecoderLayer(".to_string()
    } else {
        format!("(0-{}): {n} x LlamaDecoderLayer(", n - 1)
    };
    let lines = [
        "LlamaForCausalLM(".to_string(),
        "  (model): LlamaModel(".into(),
        format!("    (embed_tokens): Embedding({}, {c})", cfg.vocab_size),
        "    (layers): ModuleList(".into(),
        format!("      {layer_head}"),
        "        (self_attn): LlamaAttention(".into(),
        format!("          (q_proj): {}", linear(c, q)),
        format!("          (k_proj): {}", linear(c, kv)),
        format!("          (v_proj): {}", linear(c, kv)),
        format!("          (o_proj): {}", linear(q, c)),
        "        )".into(),
        "        (mlp): LlamaMLP(".into(),
        format!("          (gate_proj): {}", linear(c, f)),
        format!("          (up_proj): {}", linear(c, f)),
        format!("          (down_proj): {}", linear(f, c)),
        "          (act_fn): SiLU()".into(),
        "        )".into(),
        format!("        (input_layernorm): {norm}"),
        format!("        (post_attention_layernorm): {norm}"),
        "      )".into(),
        "    )".into(),
        format!("    (norm): {norm}"),
        "    (rotary_emb): LlamaRotaryEmbedding()".into(),
        "  )".into(),
        format!("  (lm_head): {}", linear(c, cfg.vocab_size)),
        ")".into(),
    ];
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1e-6), "1e-06");
        assert_eq!(python_float(9.999999747378752e-06), "9.999999747378752e-06");
        assert_eq!(python_float(10000.0), "10000.0");
        assert_eq!(python_float(0.5), "0.5");
        assert_eq!(python_float(1e20), "1e+20");
    }

    #[test]
    fn smollm_135m_tree_and_count() {
        let cfg = Config::from_json_str(
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
            "tie_word_embeddings": true}"#,
        )
        .unwrap();
        let t = tree(&cfg);
        // Lines copied from the notebook's print(model).
        assert!(t.contains("    (embed_tokens): Embedding(49152, 576)\n"));
        assert!(t.contains("      (0-29): 30 x LlamaDecoderLayer(\n"));
        assert!(t.contains(
            "          (k_proj): Linear(in_features=576, out_features=192, bias=False)\n"
        ));
        assert!(t.contains("        (input_layernorm): LlamaRMSNorm((576,), eps=1e-05)\n"));
        // SmolLM-135M has 134,515,008 parameters (tied lm_head counted once).
        assert_eq!(parameters(&cfg).total, 134_515_008);
    }
}
