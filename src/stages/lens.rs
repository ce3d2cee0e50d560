//! `lmscope lens`: the (raw) logit lens. The residual stream after the embeddings and after each
//! decoder layer goes through the model's final RMSNorm and lm_head, as if the model stopped
//! there: what would each layer predict next? No trained translator (a "tuned lens") is applied,
//! so early layers' guesses are often noise. The last row is the model's own prediction, and the
//! report measures how exactly it equals `Llama::logits`.

use super::embed::{lookup, Pool, WordLookup};
use super::logits::resolve_position;
use crate::load::LoadedModel;
use crate::model::Capture;
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct LensReport {
    pub input: String,
    pub ids: Vec<u32>,
    /// The prompt's tokens (vocabulary strings), one per position.
    pub tokens: Vec<String>,
    /// How many guesses each cell lists.
    pub top_k: usize,
    /// The position `--position` chose; absent when every position is in `rows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// The embeddings (layer null), then layers 0 .. L-1, in order.
    pub rows: Vec<LensRow>,
    /// The last row against the model's logits.
    pub check: FinalCheck,
    /// With `--track WORD`: that token's rank and probability at every row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<Track>,
}

#[derive(Debug, Serialize)]
pub struct LensRow {
    /// null for the embeddings, else the decoder layer (0-based, as `print(model)` numbers them).
    pub layer: Option<usize>,
    pub positions: Vec<LensCell>,
}

#[derive(Debug, Serialize)]
pub struct LensCell {
    pub position: usize,
    /// The most likely next tokens, best first.
    pub top: Vec<Guess>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Guess {
    pub id: u32,
    pub token: String,
    /// softmax over the whole vocabulary (f64) of this row's lens logits.
    pub prob: f64,
    pub logit: f32,
}

#[derive(Debug, Serialize)]
pub struct FinalCheck {
    /// The largest |lens logit - model logit| over the last row's positions and the vocabulary.
    pub max_abs_diff: f32,
    /// Whether the last row's top-1 equals the model's argmax at every position it shows.
    pub top1_equal: bool,
}

#[derive(Debug, Serialize)]
pub struct Track {
    pub word: String,
    /// The string looked up (`" Helsinki"`, or the word itself with --exact).
    pub looked_up: String,
    pub id: u32,
    pub token: String,
    /// The position whose prediction is tracked.
    pub position: usize,
    /// One entry per row of the lens, in the same order.
    pub rows: Vec<TrackRow>,
}

#[derive(Debug, Serialize)]
pub struct TrackRow {
    pub layer: Option<usize>,
    /// 1 = the top guess.
    pub rank: usize,
    pub prob: f64,
    pub logit: f32,
}

pub struct LensRequest<'a> {
    pub prompt: &'a crate::input::Prompt,
    /// One position (negative from the end), or None for every position.
    pub position: Option<i64>,
    pub top_k: usize,
    pub track: Option<&'a str>,
    pub exact: bool,
}

pub fn run(m: &LoadedModel, req: &LensRequest) -> Result<LensReport> {
    ensure!(!req.prompt.is_empty(), "the text is empty: give a prompt to run the model on");
    let vocab = m.model.cfg.vocab_size;
    ensure!(
        (1..=vocab).contains(&req.top_k),
        "--top-k must be between 1 and the vocabulary size {vocab}, got {}",
        req.top_k
    );
    let tokens = req.prompt.tokens(&m.tokenizer)?;
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let n = ids.len();
    ensure!(n > 0, "the text produced no tokens");
    // Checked here so that a bad position is reported before a bad --track word.
    let _position = req.position.map(|p| resolve_position(p, n)).transpose()?;
    let tracked = match req.track {
        Some(word) => {
            let w = lookup(&m.tokenizer, word, req.exact, Pool::Mean)?;
            ensure!(
                w.ids.len() == 1,
                "--track {:?}: {:?} is not a single token (it splits into {:?}){}",
                word,
                w.looked_up,
                w.tokens,
                if req.exact { "" } else { "; try --exact to look it up without a leading space" }
            );
            Some(w)
        }
        None => None,
    };
    run_with(m, req, tracked)
}

/// [`run`] with the tracked token already looked up (`req.track` is not read): `lmscope trace`
/// follows the model's own top-1 token by id.
pub fn run_with(
    m: &LoadedModel,
    req: &LensRequest,
    tracked: Option<WordLookup>,
) -> Result<LensReport> {
    ensure!(!req.prompt.is_empty(), "the text is empty: give a prompt to run the model on");
    if let Some(w) = &tracked {
        ensure!(w.ids.len() == 1 && w.tokens.len() == 1, "the tracked word must be one token");
    }
    let vocab = m.model.cfg.vocab_size;
    ensure!(
        (1..=vocab).contains(&req.top_k),
        "--top-k must be between 1 and the vocabulary size {vocab}, got {}",
        req.top_k
    );
    let tokens = req.prompt.tokens(&m.tokenizer)?;
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let n = ids.len();
    ensure!(n > 0, "the text produced no tokens");
    let position = req.position.map(|p| resolve_position(p, n)).transpose()?;

    let input = Tensor::new(ids.as_slice(), &m.model.device)?.unsqueeze(0)?; // (1, n)
    let mut cap = Capture { hidden_states: true, ..Capture::default() };
    m.model.forward(&input, None, Some(&mut cap)).context("the forward pass failed")?;
    let layers = m.model.cfg.num_hidden_layers;
    ensure!(
        cap.hidden.len() == layers + 1,
        "the forward pass recorded {} hidden states, expected {}",
        cap.hidden.len(),
        layers + 1
    );

    // The positions shown, and the one the track follows.
    let shown: Vec<usize> = match position {
        Some(p) => vec![p],
        None => (0..n).collect(),
    };
    let track_at = position.unwrap_or(n - 1);
    let mut rows = Vec::with_capacity(layers + 1);
    let mut track_rows = Vec::new();
    let mut last_logits = Vec::new();
    // The norm and lm_head run on every position, as in an ordinary forward pass (a product over
    // fewer rows may add in another order); only the shown ones are kept (all, or the one of
    // --position, which is also the tracked one): logits[k] is position shown[k].
    let (from, count) = (shown[0], shown.len());
    let track_at_row = track_at - from;
    for (i, hidden) in cap.hidden.iter().enumerate() {
        crate::interrupt::check()?; // a vocabulary-wide product per layer: Ctrl-C stops here
        let layer = i.checked_sub(1);
        let logits = m.model.final_logits(hidden)?.squeeze(0)?; // (n, v)
        let logits = logits.narrow(0, from, count)?; // (shown, v)
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut cells = Vec::with_capacity(shown.len());
        for (k, &p) in shown.iter().enumerate() {
            let row = &logits[k];
            let stats = RowStats::of(row);
            let top = top_ids(row, req.top_k)
                .into_iter()
                .map(|id| {
                    Ok(Guess {
                        id: id as u32,
                        token: m.tokenizer.id_to_token(id as u32)?,
                        prob: stats.prob(row[id]),
                        logit: row[id],
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            cells.push(LensCell { position: p, top });
        }
        if let Some(w) = &tracked {
            let row = &logits[track_at_row];
            let id = w.ids[0] as usize;
            ensure!(id < row.len(), "token id {id} is outside the model's vocabulary");
            track_rows.push(TrackRow {
                layer,
                rank: rank_of(row, id),
                prob: RowStats::of(row).prob(row[id]),
                logit: row[id],
            });
        }
        rows.push(LensRow { layer, positions: cells });
        if i == layers {
            last_logits = logits;
        }
    }

    // The last row against an ordinary forward pass.
    let model_logits = m.model.logits(&ids)?.squeeze(0)?.narrow(0, from, count)?;
    let model_logits: Vec<Vec<f32>> = model_logits.to_vec2()?; // (shown, v)
    let mut max_abs_diff = 0f32;
    for (a, b) in last_logits.iter().zip(&model_logits) {
        for (x, y) in a.iter().zip(b) {
            max_abs_diff = max_abs_diff.max((x - y).abs());
        }
    }
    let top1_equal =
        last_logits.iter().zip(&model_logits).all(|(a, b)| top_ids(a, 1) == top_ids(b, 1));

    let track = match tracked {
        Some(w) => Some(Track {
            word: w.word,
            looked_up: w.looked_up,
            id: w.ids[0],
            token: w.tokens[0].clone(),
            position: track_at,
            rows: track_rows,
        }),
        None => None,
    };
    Ok(LensReport {
        input: req.prompt.text(&m.tokenizer)?,
        ids,
        tokens: tokens.into_iter().map(|t| t.token).collect(),
        top_k: req.top_k,
        position,
        rows,
        check: FinalCheck { max_abs_diff, top1_equal },
        track,
    })
}

/// The max and the softmax denominator of a logit row, in f64: prob(l) = exp(l - max) / sum.
struct RowStats {
    max: f64,
    sum: f64,
}

impl RowStats {
    fn of(row: &[f32]) -> Self {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        RowStats { max, sum }
    }

    fn prob(&self, logit: f32) -> f64 {
        (logit as f64 - self.max).exp() / self.sum
    }
}

/// The ids of the `k` highest logits, best first; ties keep the lower id first (as `logits`).
pub fn top_ids(row: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(row.len());
    let before = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..row.len()).collect();
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, before);
        order.truncate(k);
    }
    order.sort_by(before);
    order.truncate(k);
    order
}

/// The 1-based rank of `id` in the order of [`top_ids`].
pub fn rank_of(row: &[f32], id: usize) -> usize {
    let l = row[id];
    1 + row
        .iter()
        .enumerate()
        .filter(|&(j, &x)| x.total_cmp(&l).is_gt() || (x.total_cmp(&l).is_eq() && j < id))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_ids_and_ranks_agree() {
        let row = [0.5, 2.0, -1.0, 2.0, 1.0];
        assert_eq!(top_ids(&row, 3), vec![1, 3, 4]);
        assert_eq!(top_ids(&row, 9), vec![1, 3, 4, 0, 2]);
        let order = top_ids(&row, row.len());
        for (r, &id) in order.iter().enumerate() {
            assert_eq!(rank_of(&row, id), r + 1);
        }
    }

    #[test]
    fn row_probabilities_sum_to_one() {
        let row = [3.0f32, 1.0, -2.0, 0.0];
        let s = RowStats::of(&row);
        let total: f64 = row.iter().map(|&l| s.prob(l)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!((s.prob(3.0) - crate::model::softmax_f64(&row)[0]).abs() < 1e-15);
    }
}
