//! `lmscope score`: how likely the model finds a given text, token by token. One forward pass
//! over the whole text gives, at every position, the distribution of the next token; teacher
//! forcing reads off the probability of the token that actually comes next.

use crate::load::LoadedModel;
use crate::tokenizer::Token;
use anyhow::{ensure, Context, Result};
use serde::Serialize;

/// One scored token: what the model gave it, predicting it from everything before it.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredToken {
    /// Its position in `ids` (0-based); the distribution comes from the row of position - 1.
    pub position: usize,
    pub id: u32,
    pub token: String,
    /// The readable text of the token (` Helsinki`).
    pub text: String,
    /// The exact bytes (for the table: part of a character shows as `\xF0`).
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// ln p(token | everything before it), natural log, computed in f64 over the whole row.
    pub logprob: f64,
    pub prob: f64,
    /// -log2 p: the surprisal in bits.
    pub surprisal_bits: f64,
    /// 1 = the model's most likely token there (ties: the lower id ranks first).
    pub rank: usize,
    /// The model's own top choice at this position.
    pub top_id: u32,
    pub top_token: String,
    /// The readable text of the top choice.
    pub top_text: String,
    #[serde(skip)]
    pub top_bytes: Vec<u8>,
    pub top_prob: f64,
    /// Entropy of the whole next-token distribution there, in nats (-Σ p ln p).
    pub entropy: f64,
}

/// A token that is part of the text but is not scored.
#[derive(Debug, Clone, Serialize)]
pub struct Unscored {
    pub position: usize,
    pub id: u32,
    pub token: String,
    pub text: String,
}

/// The score of one text (after the prompt, if there is one).
#[derive(Debug, Clone, Serialize)]
pub struct TextScore {
    /// The text that is scored (the candidate, without the prompt).
    pub text: String,
    /// The prompt it is scored after, if any.
    pub prompt: Option<String>,
    /// Every id the model ran on: the prompt's, then the text's.
    pub ids: Vec<u32>,
    /// The tokens that are not scored: the first token of a text without a prompt (nothing
    /// precedes it and no BOS token is added), or the prompt's tokens.
    pub unscored: Vec<Unscored>,
    pub tokens: Vec<ScoredToken>,
    /// Σ logprob: ln p(text | prompt) (ln p(rest | first token) without a prompt).
    pub total_logprob: f64,
    /// total_logprob / number of scored tokens.
    pub mean_logprob: f64,
    /// exp(-mean_logprob).
    pub perplexity: f64,
}

/// One text gives its score; several are compared after the same prompt.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ScoreReport {
    One(TextScore),
    Many {
        prompt: Option<String>,
        candidates: Vec<TextScore>,
        /// Index into `candidates` of the highest total_logprob.
        best: usize,
        /// Index into `candidates` of the highest mean_logprob (length-normalised).
        best_mean: usize,
    },
}

pub struct ScoreRequest<'a> {
    /// The texts to score (text or ids).
    pub texts: &'a [crate::input::Prompt],
    pub prompt: Option<&'a str>,
}

pub fn run(m: &LoadedModel, req: &ScoreRequest) -> Result<ScoreReport> {
    ensure!(!req.texts.is_empty(), "give a text to score");
    let prompt_tokens = match req.prompt {
        Some(p) => {
            ensure!(!p.is_empty(), "--prompt is empty: leave it out to score the whole text");
            let t = m.tokenizer.encode(p)?;
            ensure!(!t.is_empty(), "--prompt {p:?} produced no tokens");
            t
        }
        None => Vec::new(),
    };
    let mut scores = Vec::new();
    for text in req.texts {
        crate::interrupt::check()?;
        scores.push(score_one(m, req.prompt, &prompt_tokens, text)?);
    }
    if scores.len() == 1 {
        return Ok(ScoreReport::One(scores.remove(0)));
    }
    let best_by = |f: fn(&TextScore) -> f64| {
        (0..scores.len()).fold(0, |b, i| if f(&scores[i]) > f(&scores[b]) { i } else { b })
    };
    let best = best_by(|s| s.total_logprob);
    let best_mean = best_by(|s| s.mean_logprob);
    Ok(ScoreReport::Many {
        prompt: req.prompt.map(str::to_string),
        candidates: scores,
        best,
        best_mean,
    })
}

fn score_one(
    m: &LoadedModel,
    prompt: Option<&str>,
    prompt_tokens: &[Token],
    candidate: &crate::input::Prompt,
) -> Result<TextScore> {
    ensure!(!candidate.is_empty(), "a text to score is empty: give at least one character");
    let text = &candidate.text(&m.tokenizer)?;
    let mut own = candidate.tokens(&m.tokenizer)?;
    ensure!(!own.is_empty(), "{text:?} produced no tokens");
    // A tokenizer that adds a BOS token adds it to the prompt already, not again mid-sequence.
    if let (Some(first), Some(p)) = (own.first(), prompt_tokens.first()) {
        if first.special && first.id == p.id && own.len() > 1 {
            own.remove(0);
        }
    }
    // The prompt and the text are tokenized separately and joined, so every candidate is scored
    // after the same prompt tokens.
    let all: Vec<&Token> = prompt_tokens.iter().chain(&own).collect();
    let ids: Vec<u32> = all.iter().map(|t| t.id).collect();
    let start = if prompt_tokens.is_empty() { 1 } else { prompt_tokens.len() };
    ensure!(
        ids.len() > start,
        "{text:?} is a single token ({}): the first token has no prediction (nothing precedes it and no BOS token is added), so nothing is left to score; give a longer text or a --prompt to score it after",
        own[0].token
    );
    let context = m.model.cfg.max_position_embeddings;
    ensure!(
        ids.len() <= context,
        "{} do not fit the model's context of {context}",
        crate::text::count(ids.len(), "token")
    );

    let logits = m.model.logits(&ids).context("the forward pass failed")?.squeeze(0)?; // (n, v)
    let rows: Vec<Vec<f32>> = logits.to_vec2()?;
    let mut tokens = Vec::with_capacity(ids.len() - start);
    for position in start..ids.len() {
        let row = &rows[position - 1];
        let id = ids[position] as usize;
        let d = Distribution::of(row);
        let (top, rank) = (d.top, rank_of(row, id));
        let top_token = m.tokenizer.describe(top as u32)?;
        let logprob = d.logprob(row[id]);
        tokens.push(ScoredToken {
            position,
            id: id as u32,
            token: all[position].token.clone(),
            text: all[position].text.clone(),
            bytes: all[position].bytes.clone(),
            logprob,
            prob: logprob.exp(),
            surprisal_bits: -logprob / std::f64::consts::LN_2,
            rank,
            top_id: top as u32,
            top_token: top_token.token,
            top_text: top_token.text,
            top_bytes: top_token.bytes,
            top_prob: d.logprob(row[top]).exp(),
            entropy: d.entropy,
        });
    }
    let total_logprob: f64 = tokens.iter().map(|t| t.logprob).sum();
    let mean_logprob = total_logprob / tokens.len() as f64;
    let unscored = all[..start]
        .iter()
        .enumerate()
        .map(|(position, t)| Unscored {
            position,
            id: t.id,
            token: t.token.clone(),
            text: t.text.clone(),
        })
        .collect();
    Ok(TextScore {
        text: text.to_string(),
        prompt: prompt.map(str::to_string),
        ids,
        unscored,
        tokens,
        total_logprob,
        mean_logprob,
        perplexity: (-mean_logprob).exp(),
    })
}

/// log_softmax of one logit row in f64: the log-normaliser, the top token and the entropy.
struct Distribution {
    max: f64,
    /// ln Σ exp(l - max)
    log_sum: f64,
    top: usize,
    entropy: f64,
}

impl Distribution {
    fn of(row: &[f32]) -> Self {
        let top = crate::sampling::argmax(row);
        let max = row[top] as f64;
        let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        let log_sum = sum.ln();
        // H = -Σ p ln p with ln p = l - max - log_sum; p = 0 contributes nothing.
        let entropy = -row
            .iter()
            .map(|&l| {
                let lp = l as f64 - max - log_sum;
                let p = lp.exp();
                if p > 0.0 {
                    p * lp
                } else {
                    0.0
                }
            })
            .sum::<f64>();
        Distribution { max, log_sum, top, entropy }
    }

    fn logprob(&self, logit: f32) -> f64 {
        logit as f64 - self.max - self.log_sum
    }
}

/// 1 + the tokens ranked above `id`: a higher logit, or an equal one and a lower id.
fn rank_of(row: &[f32], id: usize) -> usize {
    let l = row[id];
    1 + row.iter().enumerate().filter(|&(j, &x)| x > l || (x == l && j < id)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_entropy_and_rank_by_hand() {
        // Logits ln [0.5, 0.25, 0.25]: entropy 1.5 ln 2 nats (1.5 bits).
        let row: Vec<f32> = [0.5f32, 0.25, 0.25].iter().map(|p| p.ln()).collect();
        let d = Distribution::of(&row);
        assert_eq!(d.top, 0);
        assert!((d.logprob(row[1]) - 0.25f64.ln()).abs() < 1e-6);
        assert!((d.entropy - 1.5 * std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!(rank_of(&row, 0), 1);
        assert_eq!(rank_of(&row, 1), 2); // tied with id 2, lower id first
        assert_eq!(rank_of(&row, 2), 3);
        // A certain distribution: entropy 0, never NaN for the tokens at probability 0.
        let d = Distribution::of(&[0.0, -1e30, f32::NEG_INFINITY]);
        assert_eq!(d.entropy, 0.0);
        assert_eq!(d.logprob(0.0), 0.0);
    }
}
