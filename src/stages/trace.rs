//! `lmscope trace`: the whole journey of one prompt, each stage computed by its own command's
//! code (tokenize, embed, lens, attention, logits, sample, generate) and gathered in one report
//! whose sections carry those commands' field names.

use super::attention::{self, AttentionReport, HeadAttention};
use super::embed::{self, WordLookup};
use super::generate::{self, GenerateReport};
use super::lens::{self, LensReport};
use super::logits::{self, LogitsReport};
use super::sample::{self, SampleReport};
use super::tokenize::{self, TokenizeReport};
use crate::input::Prompt;
use crate::load::LoadedModel;
use crate::model::Capture;
use crate::sampling::{Settings, Strategy};
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use serde::Serialize;

/// How many next tokens the logits section (and the lens cells) list.
pub const TOP_K: usize = 10;
/// How many guesses each lens cell keeps.
pub const LENS_TOP_K: usize = 3;

#[derive(Debug, Serialize)]
pub struct TraceReport {
    /// The lmscope version that made the report.
    pub version: String,
    /// The model as --model named it.
    pub model: String,
    /// The command line that made the report, so it can be run again.
    pub command: String,
    pub input: String,
    pub tokenize: TraceTokens,
    pub embed: TraceEmbed,
    pub residual: Residual,
    pub lens: LensReport,
    pub attention: TraceAttention,
    pub logits: LogitsReport,
    pub next: NextToken,
    /// With --sample: that step's pipeline (temperature, top-k, top-p), as `sample` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleReport>,
    /// With --steps N: the tokens generated after the prompt (greedy or sampled as chosen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate: Option<TraceGenerate>,
}

#[derive(Debug, Serialize)]
pub struct TraceTokens {
    #[serde(flatten)]
    pub report: TokenizeReport,
    /// Whether the tokenizer put a BOS token in front of the text.
    pub bos_added: bool,
}

#[derive(Debug, Serialize)]
pub struct TraceEmbed {
    /// `embedding.weight.shape`: [vocabulary, hidden].
    pub shape: [usize; 2],
    /// Each token's embedding vector (one row of the matrix), by its Euclidean length.
    pub tokens: Vec<TokenNorm>,
}

#[derive(Debug, Serialize)]
pub struct TokenNorm {
    pub position: usize,
    pub id: u32,
    pub token: String,
    pub norm: f64,
}

#[derive(Debug, Serialize)]
pub struct Residual {
    /// The embeddings (layer null), then the output of each layer, before the final norm.
    pub layers: Vec<ResidualLayer>,
}

#[derive(Debug, Serialize)]
pub struct ResidualLayer {
    pub layer: Option<usize>,
    /// The Euclidean length of the last position's residual vector.
    pub norm_last: f64,
    /// The mean over positions of each position's length.
    pub norm_mean: f64,
}

#[derive(Debug, Serialize)]
pub struct TraceAttention {
    /// `attention --summary --induction`: every head's scores and class, and the induction ranking.
    #[serde(flatten)]
    pub report: AttentionReport,
    /// Per layer: how many of its heads have each class.
    pub class_counts: Vec<ClassCount>,
    /// The heads with the highest previous-token score, highest first.
    pub strongest_previous: Vec<HeadRank>,
    /// The heads with the highest induction score, highest first.
    pub strongest_induction: Vec<HeadRank>,
    /// `attention --layer L` for every layer: `layers[l]` = the heads of layer l, with their
    /// probabilities.
    pub layers: Vec<Vec<HeadAttention>>,
}

#[derive(Debug, Serialize)]
pub struct ClassCount {
    pub layer: usize,
    pub previous: usize,
    pub first: usize,
    #[serde(rename = "self")]
    pub self_: usize,
    pub broad: usize,
    pub other: usize,
    pub none: usize,
}

#[derive(Debug, Serialize)]
pub struct HeadRank {
    pub layer: usize,
    pub head: usize,
    pub score: f64,
}

#[derive(Debug, Serialize)]
pub struct NextToken {
    /// "greedy" (the argmax) or "sample".
    pub strategy: &'static str,
    pub id: u32,
    pub token: String,
    pub text: String,
    /// softmax(logits)\[id\], temperature 1.
    pub prob: f64,
    /// 1 = the model's most likely token.
    pub rank: usize,
}

#[derive(Debug, Serialize)]
pub struct TraceGenerate {
    #[serde(flatten)]
    pub report: GenerateReport,
    /// -log2 prob of each generated token (in the model's own distribution, temperature 1).
    pub surprisal_bits: Vec<f64>,
}

pub struct TraceRequest<'a> {
    pub prompt: &'a Prompt,
    pub model: &'a str,
    pub command: String,
    /// None: greedy; Some: sampled with these settings and seed.
    pub sample: Option<(Settings, u64)>,
    /// Tokens to generate after the prompt (0: none).
    pub steps: usize,
}

pub fn run(m: &LoadedModel, req: &TraceRequest) -> Result<TraceReport> {
    ensure!(!req.prompt.is_empty(), "the text is empty: give a prompt to trace");
    let cfg = &m.model.cfg;
    if let Some((s, _)) = &req.sample {
        s.validate(cfg.vocab_size)?;
    }

    // Tokens.
    let tok = tokenize::from_prompt(&m.tokenizer, req.prompt)?;
    ensure!(!tok.ids.is_empty(), "the text produced no tokens");
    let bos_added =
        tok.tokens.first().is_some_and(|t| t.special && t.start.is_none_or(|s| Some(s) == t.end));
    let ids = tok.ids.clone();

    // Embedding lookup: each token's row, as `embed` looks a word up.
    let mut norms = Vec::with_capacity(ids.len());
    for (position, t) in tok.tokens.iter().enumerate() {
        let w = WordLookup {
            word: t.text.clone(),
            looked_up: t.text.clone(),
            ids: vec![t.id],
            tokens: vec![t.token.clone()],
        };
        let v = embed::word_vector(m, &w)?;
        norms.push(TokenNorm { position, id: t.id, token: t.token.clone(), norm: norm(&v) });
    }
    let embed = TraceEmbed { shape: [cfg.vocab_size, cfg.hidden_size], tokens: norms };

    let residual = residual(m, &ids)?;
    crate::interrupt::check()?; // Ctrl-C (in the repl) stops between the stages

    // The final logits first: the lens follows their top-1 through the layers.
    let lreq = logits::LogitsRequest {
        prompt: req.prompt,
        top_k: TOP_K.min(cfg.vocab_size),
        position: -1,
        full: false,
        temperature: req.sample.map(|(s, _)| s.temperature),
    };
    let logits = logits::run(m, &lreq)?;
    crate::interrupt::check()?;
    let top = logits.top.first().context("the logits have no top token")?;
    let tracked = WordLookup {
        word: top.text.clone(),
        looked_up: top.text.clone(),
        ids: vec![top.id],
        tokens: vec![top.token.clone()],
    };
    let lens_req = lens::LensRequest {
        prompt: req.prompt,
        position: None,
        top_k: LENS_TOP_K.min(cfg.vocab_size),
        track: None,
        exact: true,
    };
    let lens = lens::run_with(m, &lens_req, Some(tracked))?;
    crate::interrupt::check()?;

    let attention = trace_attention(m, req.prompt, &ids)?;
    crate::interrupt::check()?;

    // The next token: the argmax, or one sampled step.
    let (next, sample) = match &req.sample {
        None => {
            let t = m.tokenizer.describe(top.id)?;
            let next = NextToken {
                strategy: "greedy",
                id: top.id,
                token: t.token,
                text: t.text,
                prob: top.prob,
                rank: 1,
            };
            (next, None)
        }
        Some((settings, seed)) => {
            let sreq = sample::SampleRequest {
                prompt: req.prompt,
                settings: *settings,
                seed: *seed,
                steps: 1,
                rows: Some(TOP_K),
                stop_at_eos: false,
            };
            let r = sample::run(m, &sreq)?;
            let st = r.steps.first().context("the sample step is missing")?;
            let drawn = st.candidates.iter().find(|c| c.drawn).context("no drawn candidate")?;
            let next = NextToken {
                strategy: "sample",
                id: st.id,
                token: st.token.clone(),
                text: st.text.clone(),
                prob: drawn.prob,
                rank: st.rank,
            };
            (next, Some(r))
        }
    };

    let generate = if req.steps > 0 {
        let strategy = match req.sample {
            None => Strategy::Greedy,
            Some((s, seed)) => Strategy::Sample {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed,
            },
        };
        let greq = generate::GenerateRequest {
            prompt: req.prompt,
            max_new_tokens: req.steps,
            strategy,
            stop_at_eos: true,
            limit_flag: "--steps",
            progress: true,
        };
        let report = generate::run(m, &greq, &mut |_| Ok(()))?;
        let surprisal_bits = report.steps.iter().map(|s| -s.prob.log2()).collect();
        Some(TraceGenerate { report, surprisal_bits })
    } else {
        None
    };

    Ok(TraceReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        model: req.model.to_string(),
        command: req.command.clone(),
        input: req.prompt.text(&m.tokenizer)?,
        tokenize: TraceTokens { report: tok, bos_added },
        embed,
        residual,
        lens,
        attention,
        logits,
        next,
        sample,
        generate,
    })
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

/// The residual stream's length after the embeddings and after each layer.
fn residual(m: &LoadedModel, ids: &[u32]) -> Result<Residual> {
    let input = Tensor::new(ids, &m.model.device)?.unsqueeze(0)?; // (1, t)
    let mut cap = Capture { hidden_states: true, ..Capture::default() };
    m.model.forward(&input, None, Some(&mut cap)).context("the forward pass failed")?;
    let mut layers = Vec::with_capacity(cap.hidden.len());
    for (i, h) in cap.hidden.iter().enumerate() {
        let rows: Vec<Vec<f32>> = h.squeeze(0)?.to_dtype(candle_core::DType::F32)?.to_vec2()?; // (t, c)
        let n: Vec<f64> = rows.iter().map(|r| norm(r)).collect();
        let last = *n.last().context("no positions")?;
        layers.push(ResidualLayer {
            layer: i.checked_sub(1),
            norm_last: last,
            norm_mean: n.iter().sum::<f64>() / n.len() as f64,
        });
    }
    Ok(Residual { layers })
}

/// How many heads of each layer a trace lists as the strongest.
const STRONGEST: usize = 3;

fn trace_attention(m: &LoadedModel, prompt: &Prompt, ids: &[u32]) -> Result<TraceAttention> {
    let areq = attention::AttentionRequest {
        prompt,
        layer: None,
        head: None,
        summary: true,
        induction: true,
    };
    let report = attention::run(m, &areq)?;
    let layers = attention::all_layers(m, ids)?;
    let summary = report.summary.as_deref().unwrap_or(&[]);
    let mut class_counts: Vec<ClassCount> = (0..m.model.cfg.num_hidden_layers)
        .map(|layer| ClassCount {
            layer,
            previous: 0,
            first: 0,
            self_: 0,
            broad: 0,
            other: 0,
            none: 0,
        })
        .collect();
    for h in summary {
        if let Some(c) = class_counts.get_mut(h.layer) {
            match h.scores.class {
                "previous" => c.previous += 1,
                "first" => c.first += 1,
                "self" => c.self_ += 1,
                "broad" => c.broad += 1,
                "other" => c.other += 1,
                _ => c.none += 1,
            }
        }
    }
    let mut previous: Vec<HeadRank> = summary
        .iter()
        .filter_map(|h| {
            h.scores.previous.map(|s| HeadRank { layer: h.layer, head: h.head, score: s })
        })
        .collect();
    previous.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then(a.layer.cmp(&b.layer)).then(a.head.cmp(&b.head))
    });
    previous.truncate(STRONGEST);
    let strongest_induction = report
        .induction
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .take(STRONGEST)
        .map(|s| HeadRank { layer: s.layer, head: s.head, score: s.score })
        .collect();
    Ok(TraceAttention {
        report,
        class_counts,
        strongest_previous: previous,
        strongest_induction,
        layers,
    })
}
