//! `lmscope logits`: run the model on a prompt and rank the next token, the notebook's
//! `model(**input_)`, `output.logits[0][-1]` and `logits.argmax()`.

use crate::input::Prompt;
use crate::load::LoadedModel;
use crate::model::softmax_f64;
use anyhow::{ensure, Result};
use serde::Serialize;

/// How many values of each logit row the preview shows at each end, like PyTorch's print.
const PREVIEW: usize = 3;

#[derive(Debug, Serialize)]
pub struct LogitsReport {
    pub input: String,
    pub ids: Vec<u32>,
    /// `output.logits.shape`: [batch, tokens, vocab].
    pub shape: [usize; 3],
    /// The position whose next-token distribution is ranked (0-based).
    pub position: usize,
    /// The token at that position.
    pub position_token: String,
    /// The temperature of `prob_at_temperature`, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The most likely next tokens at that position.
    pub top: Vec<Ranked>,
    /// The first and last values of every row, as `print(output.logits)` shows them.
    pub rows: Vec<RowPreview>,
    /// The whole logit row at `position` (only with --full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
}

#[derive(Debug, Serialize)]
pub struct Ranked {
    pub rank: usize,
    pub id: u32,
    pub token: String,
    /// The readable text of the token (` Helsinki`).
    pub text: String,
    /// The exact bytes of the token.
    pub bytes: Vec<u8>,
    pub logit: f32,
    /// `softmax(logits)[id]`, computed over the whole vocabulary in f64.
    pub prob: f64,
    pub logprob: f64,
    /// `softmax(logits / T)[id]`, with --temperature T.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prob_at_temperature: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct RowPreview {
    pub position: usize,
    /// The text of the token at this position (the row predicts what follows it).
    pub text: String,
    pub first: Vec<f32>,
    pub last: Vec<f32>,
}

pub struct LogitsRequest<'a> {
    pub prompt: &'a Prompt,
    pub top_k: usize,
    /// 0-based, or negative from the end.
    pub position: i64,
    pub full: bool,
    pub temperature: Option<f64>,
}

pub fn run(m: &LoadedModel, req: &LogitsRequest) -> Result<LogitsReport> {
    ensure!(!req.prompt.is_empty(), "the text is empty: give a prompt to run the model on");
    let vocab = m.model.cfg.vocab_size;
    ensure!(
        (1..=vocab).contains(&req.top_k),
        "--top-k must be between 1 and the vocabulary size {vocab}, got {}",
        req.top_k
    );
    if let Some(t) = req.temperature {
        ensure!(t.is_finite() && t > 0.0, "--temperature must be a positive number, got {t}");
    }
    let tokens = req.prompt.tokens(&m.tokenizer)?;
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let n = ids.len();
    ensure!(n > 0, "the text produced no tokens");
    let position = resolve_position(req.position, n)?;

    let logits = m.model.logits(&ids)?.squeeze(0)?; // (n, vocab)
    let rows: Vec<Vec<f32>> = logits.to_vec2()?;
    let row = &rows[position];
    let mut top = rank(m, row, req.top_k)?;
    if let Some(t) = req.temperature {
        let probs = crate::sampling::probabilities(row, t);
        for r in &mut top {
            r.prob_at_temperature = Some(probs[r.id as usize]);
        }
    }
    let previews = rows
        .iter()
        .enumerate()
        .map(|(position, r)| RowPreview {
            position,
            text: tokens[position].text.clone(),
            first: r[..PREVIEW.min(r.len())].to_vec(),
            last: r[r.len().saturating_sub(PREVIEW)..].to_vec(),
        })
        .collect();
    Ok(LogitsReport {
        input: req.prompt.text(&m.tokenizer)?,
        shape: [1, n, vocab],
        position,
        position_token: tokens[position].token.clone(),
        temperature: req.temperature,
        top,
        rows: previews,
        logits: req.full.then(|| row.clone()),
        ids,
    })
}

/// Turns a possibly negative position into an index into `n` tokens.
pub fn resolve_position(position: i64, n: usize) -> Result<usize> {
    let index = if position < 0 { n as i64 + position } else { position };
    ensure!(
        (0..n as i64).contains(&index),
        "--position {position} is out of range: the text has {} (valid: 0..{} or -{n}..-1)",
        crate::text::count(n, "token"),
        n - 1
    );
    Ok(index as usize)
}

/// The `k` highest logits of a row, with probabilities.
pub fn rank(m: &LoadedModel, row: &[f32], k: usize) -> Result<Vec<Ranked>> {
    let probs = softmax_f64(row);
    let mut order: Vec<usize> = (0..row.len()).collect();
    // Highest logit first; ties keep the lower id first.
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| {
            let token = m.tokenizer.describe(id as u32)?;
            Ok(Ranked {
                rank: i + 1,
                id: id as u32,
                token: token.token,
                text: token.text,
                bytes: token.bytes,
                logit: row[id],
                prob: probs[id],
                logprob: probs[id].ln(),
                prob_at_temperature: None,
            })
        })
        .collect()
}
