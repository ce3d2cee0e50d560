//! `lmscope attention`: the attention probabilities softmax(q k^T / sqrt(d) + mask) of each head,
//! the scores that classify a head (previous-token, first-token "sink", self, entropy), which KV
//! head each query head shares (grouped-query attention), and the induction test.
//!
//! Every score is an average over query rows of one head's (t, t) probability matrix `A` (row i =
//! query position i, column j = key position j, zero above the diagonal). The positional scores
//! average over the queries i = 2 .. t-1, the first where the first, the previous and the current
//! token are three different keys: query 0 can only attend to itself and query 1's previous token
//! is the first token, so counting them would make every head look like a sink.

use crate::load::LoadedModel;
use crate::model::Capture;
use crate::sampling::Rng;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// The seed of the random sequence of the induction test.
pub const INDUCTION_SEED: u64 = 0;
/// How many random tokens the induction test repeats (the sequence is twice as long).
pub const INDUCTION_TOKENS: usize = 20;

#[derive(Debug, Serialize)]
pub struct AttentionReport {
    pub input: String,
    pub ids: Vec<u32>,
    /// The prompt's tokens (vocabulary strings), one per position.
    pub tokens: Vec<String>,
    /// Query heads per layer.
    pub num_heads: usize,
    /// Key/value heads per layer: each serves num_heads / num_kv_heads query heads.
    pub num_kv_heads: usize,
    /// With --layer: the layer shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// With --layer: its heads (one with --head).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<HeadAttention>>,
    /// With --summary: every head of every layer, layer by layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Vec<HeadSummary>>,
    /// With --induction: the sequence the induction test ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub induction_input: Option<InductionInput>,
    /// With --induction: every head's induction score, highest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub induction: Option<Vec<InductionScore>>,
}

#[derive(Debug, Serialize)]
pub struct HeadAttention {
    pub head: usize,
    /// The KV head whose keys and values this query head uses: head / (num_heads / num_kv_heads).
    pub kv_head: usize,
    /// probs\[i\]\[j\]: how much query position i attends to key position j (rows sum to 1; zero
    /// above the diagonal, where the causal mask hides later keys).
    pub probs: Vec<Vec<f32>>,
    pub scores: Scores,
}

#[derive(Debug, Serialize)]
pub struct HeadSummary {
    pub layer: usize,
    pub head: usize,
    pub kv_head: usize,
    pub scores: Scores,
}

/// A head's scores; each is null when the text has fewer than 3 tokens (no query to average).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// How many query rows the scores average (t - 2, or 0).
    pub queries: usize,
    /// Mean of A\[i\]\[i-1\]: attention to the previous token.
    pub previous: Option<f64>,
    /// Mean of A\[i\]\[0\]: attention to the first token (an "attention sink").
    pub first: Option<f64>,
    /// Mean of A\[i\]\[i\]: attention to the token itself.
    #[serde(rename = "self")]
    pub self_: Option<f64>,
    /// Mean of -sum_j A\[i\]\[j\] ln A\[i\]\[j\], in nats.
    pub entropy: Option<f64>,
    /// Mean of that entropy divided by ln(i + 1), its largest possible value for query i (i + 1
    /// keys): 0 = all on one key, 1 = spread evenly over every visible key.
    pub entropy_normalized: Option<f64>,
    /// The dominant pattern: "previous", "first" or "self" when that score is at least 0.5 (the
    /// largest of the three), else "broad" when entropy_normalized is at least 0.6, else
    /// "other"; "none" without queries.
    pub class: &'static str,
}

#[derive(Debug, Serialize)]
pub struct InductionInput {
    /// "text": the given text has a repeated token; "random": it has none, so the test ran on
    /// INDUCTION_TOKENS random tokens followed by the same tokens again.
    pub source: &'static str,
    /// The random sequence's seed (only for "random").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
    /// How many query positions the score averages (those with an earlier occurrence).
    pub queries: usize,
}

#[derive(Debug, Serialize)]
pub struct InductionScore {
    pub layer: usize,
    pub head: usize,
    pub kv_head: usize,
    /// Mean over the scored queries of A[i][j + 1], j the previous occurrence of token i.
    pub score: f64,
}

pub struct AttentionRequest<'a> {
    pub prompt: &'a crate::input::Prompt,
    pub layer: Option<usize>,
    pub head: Option<usize>,
    pub summary: bool,
    pub induction: bool,
}

pub fn run(m: &LoadedModel, req: &AttentionRequest) -> Result<AttentionReport> {
    ensure!(!req.prompt.is_empty(), "the text is empty: give a prompt to run the model on");
    let cfg = &m.model.cfg;
    let (layers, heads, kv_heads) =
        (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads);
    if let Some(l) = req.layer {
        ensure!(
            l < layers,
            "--layer {l} is out of range: the model has {layers} layers (0..{})",
            layers - 1
        );
    }
    if let Some(h) = req.head {
        ensure!(
            h < heads,
            "--head {h} is out of range: a layer has {heads} heads (0..{})",
            heads - 1
        );
    }
    ensure!(
        req.layer.is_some() || req.summary || req.induction,
        "give --layer L, --summary or --induction"
    );
    let tokens = req.prompt.tokens(&m.tokenizer)?;
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    ensure!(!ids.is_empty(), "the text produced no tokens");
    let t = ids.len();

    let group = heads / kv_heads.max(1);
    let kv_of = |h: usize| h / group.max(1);
    let mut report = AttentionReport {
        input: req.prompt.text(&m.tokenizer)?,
        ids: ids.clone(),
        tokens: tokens.into_iter().map(|t| t.token).collect(),
        num_heads: heads,
        num_kv_heads: kv_heads,
        layer: req.layer,
        heads: None,
        summary: None,
        induction_input: None,
        induction: None,
    };
    if req.layer.is_some() || req.summary {
        let probs = attention_probs(m, &ids)?; // per layer, per head, t*t
        if let Some(l) = req.layer {
            let shown: Vec<usize> = match req.head {
                Some(h) => vec![h],
                None => (0..heads).collect(),
            };
            report.heads = Some(
                shown
                    .into_iter()
                    .map(|h| {
                        let a = &probs[l][h];
                        HeadAttention {
                            head: h,
                            kv_head: kv_of(h),
                            probs: a.chunks(t).map(<[f32]>::to_vec).collect(),
                            scores: scores(a, t),
                        }
                    })
                    .collect(),
            );
        }
        if req.summary {
            let mut all = Vec::with_capacity(layers * heads);
            for (l, layer) in probs.iter().enumerate() {
                for (h, a) in layer.iter().enumerate() {
                    all.push(HeadSummary {
                        layer: l,
                        head: h,
                        kv_head: kv_of(h),
                        scores: scores(a, t),
                    });
                }
            }
            report.summary = Some(all);
        }
    }
    if req.induction {
        let (source, seed, seq) = if induction_targets(&ids).is_empty() {
            ("random", Some(INDUCTION_SEED), repeated_random(m, INDUCTION_TOKENS, INDUCTION_SEED)?)
        } else {
            ("text", None, ids.clone())
        };
        let probs = attention_probs(m, &seq)?;
        let mut ranked = Vec::with_capacity(layers * heads);
        for (l, layer) in probs.iter().enumerate() {
            for (h, a) in layer.iter().enumerate() {
                let score = induction_score(a, &seq).context("no query to score")?;
                ranked.push(InductionScore { layer: l, head: h, kv_head: kv_of(h), score });
            }
        }
        // Highest first; ties in layer and head order.
        ranked.sort_by(|a, b| {
            b.score.total_cmp(&a.score).then(a.layer.cmp(&b.layer)).then(a.head.cmp(&b.head))
        });
        let names =
            seq.iter().map(|&id| m.tokenizer.id_to_token(id)).collect::<Result<Vec<_>>>()?;
        report.induction_input = Some(InductionInput {
            source,
            seed,
            queries: induction_targets(&seq).len(),
            ids: seq,
            tokens: names,
        });
        report.induction = Some(ranked);
    }
    Ok(report)
}

/// Every head of every layer on `ids`: \[layer\] = its heads, each with its probability matrix and
/// scores (what `attention --layer L` shows, for all layers at once, from one forward pass).
pub fn all_layers(m: &LoadedModel, ids: &[u32]) -> Result<Vec<Vec<HeadAttention>>> {
    ensure!(!ids.is_empty(), "no tokens to attend over");
    let cfg = &m.model.cfg;
    let group = cfg.num_attention_heads / cfg.num_key_value_heads.max(1);
    let t = ids.len();
    let probs = attention_probs(m, ids)?;
    Ok(probs
        .into_iter()
        .map(|layer| {
            layer
                .into_iter()
                .enumerate()
                .map(|(h, a)| HeadAttention {
                    head: h,
                    kv_head: h / group.max(1),
                    probs: a.chunks(t).map(<[f32]>::to_vec).collect(),
                    scores: scores(&a, t),
                })
                .collect()
        })
        .collect())
}

/// Every layer's attention probabilities on `ids`: \[layer\]\[head\] = the (t, t) matrix, row-major.
fn attention_probs(m: &LoadedModel, ids: &[u32]) -> Result<Vec<Vec<Vec<f32>>>> {
    let input = Tensor::new(ids, &m.model.device)?.unsqueeze(0)?; // (1, t)
    let mut cap = Capture { attentions: true, ..Capture::default() };
    m.model.forward(&input, None, Some(&mut cap)).context("the forward pass failed")?;
    let layers = m.model.cfg.num_hidden_layers;
    ensure!(
        cap.attention.len() == layers,
        "the forward pass recorded {} attention maps, expected {layers}",
        cap.attention.len()
    );
    let t = ids.len();
    cap.attention
        .iter()
        .map(|a| {
            let (_b, h, q, s) = a.dims4()?; // (1, h, t, t)
            ensure!(q == t && s == t, "attention map of shape ({q}, {s}), expected ({t}, {t})");
            let flat: Vec<f32> = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            Ok(flat.chunks(t * t).take(h).map(<[f32]>::to_vec).collect())
        })
        .collect()
}

/// The scores of one head's (t, t) probability matrix `a` (row-major). See [`Scores`].
pub fn scores(a: &[f32], t: usize) -> Scores {
    let queries: Vec<usize> = (2..t).collect();
    if queries.is_empty() {
        return Scores {
            queries: 0,
            previous: None,
            first: None,
            self_: None,
            entropy: None,
            entropy_normalized: None,
            class: "none",
        };
    }
    let at = |i: usize, j: usize| a[i * t + j] as f64;
    let mean = |f: &dyn Fn(usize) -> f64| {
        queries.iter().map(|&i| f(i)).sum::<f64>() / queries.len() as f64
    };
    let entropy_of = |i: usize| -> f64 {
        (0..=i).map(|j| at(i, j)).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum()
    };
    let previous = mean(&|i| at(i, i - 1));
    let first = mean(&|i| at(i, 0));
    let self_ = mean(&|i| at(i, i));
    let entropy = mean(&entropy_of);
    let entropy_normalized = mean(&|i| entropy_of(i) / ((i + 1) as f64).ln());
    let class = classify(previous, first, self_, entropy_normalized);
    Scores {
        queries: queries.len(),
        previous: Some(previous),
        first: Some(first),
        self_: Some(self_),
        entropy: Some(entropy),
        entropy_normalized: Some(entropy_normalized),
        class,
    }
}

/// A head's dominant pattern (see [`Scores::class`]).
fn classify(previous: f64, first: f64, self_: f64, entropy_normalized: f64) -> &'static str {
    // The largest positional score; ties in this order.
    let (name, best) = [("previous", previous), ("first", first), ("self", self_)]
        .into_iter()
        .fold(("", f64::NEG_INFINITY), |acc, x| if x.1 > acc.1 { x } else { acc });
    if best >= 0.5 {
        name
    } else if entropy_normalized >= 0.6 {
        "broad"
    } else {
        "other"
    }
}

/// The (query, key) pairs of the induction test: for each position i whose token occurred
/// before, j = its most recent earlier occurrence, and the key is j + 1, the token that followed
/// it. Queries whose key would be i itself (the token repeated right away) are left out.
pub fn induction_targets(ids: &[u32]) -> Vec<(usize, usize)> {
    let mut last_seen = std::collections::HashMap::new();
    let mut pairs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if let Some(&j) = last_seen.get(id) {
            if j + 1 < i {
                pairs.push((i, j + 1));
            }
        }
        last_seen.insert(id, i);
    }
    pairs
}

/// A head's induction score on `ids`: the mean of A\[i\]\[key\] over [`induction_targets`]; None
/// when there is no such query.
pub fn induction_score(a: &[f32], ids: &[u32]) -> Option<f64> {
    let t = ids.len();
    let pairs = induction_targets(ids);
    if pairs.is_empty() {
        return None;
    }
    Some(pairs.iter().map(|&(i, k)| a[i * t + k] as f64).sum::<f64>() / pairs.len() as f64)
}

/// `n` different random ordinary (not special) tokens, then the same `n` again.
fn repeated_random(m: &LoadedModel, n: usize, seed: u64) -> Result<Vec<u32>> {
    let vocab = m.tokenizer.vocab_size().min(m.model.cfg.vocab_size) as u64;
    let mut rng = Rng::new(seed);
    let mut half: Vec<u32> = Vec::with_capacity(n);
    let mut tries = 0;
    while half.len() < n {
        tries += 1;
        ensure!(
            tries < 100 * n + 1000,
            "cannot draw {n} different ordinary tokens from the vocabulary"
        );
        let id = (rng.next_u64() % vocab) as u32;
        if half.contains(&id) || m.tokenizer.describe(id)?.special {
            continue;
        }
        half.push(id);
    }
    let mut seq = half.clone();
    seq.extend(half);
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A (t, t) causal matrix from its rows (each row i has i + 1 entries).
    fn matrix(rows: &[&[f32]]) -> (Vec<f32>, usize) {
        let t = rows.len();
        let mut a = vec![0.0; t * t];
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.len(), i + 1);
            a[i * t..i * t + i + 1].copy_from_slice(r);
        }
        (a, t)
    }

    #[test]
    fn a_previous_token_head() {
        let (a, t) = matrix(&[&[1.0], &[1.0, 0.0], &[0.0, 1.0, 0.0], &[0.1, 0.0, 0.8, 0.1]]);
        let s = scores(&a, t);
        assert_eq!(s.queries, 2);
        assert!((s.previous.unwrap() - 0.9).abs() < 1e-6); // (1.0 + 0.8) / 2
        assert!((s.first.unwrap() - 0.05).abs() < 1e-6); // (0 + 0.1) / 2
        assert!((s.self_.unwrap() - 0.05).abs() < 1e-6); // (0 + 0.1) / 2
                                                         // Row 2 has entropy 0; row 3: -(0.1 ln 0.1 + 0.8 ln 0.8 + 0.1 ln 0.1).
        let h3 = -(0.1f64 * 0.1f64.ln() * 2.0 + 0.8 * 0.8f64.ln());
        assert!((s.entropy.unwrap() - h3 / 2.0).abs() < 1e-6);
        assert!((s.entropy_normalized.unwrap() - h3 / 4f64.ln() / 2.0).abs() < 1e-6);
        assert_eq!(s.class, "previous");
    }

    #[test]
    fn a_sink_a_self_and_a_uniform_head() {
        let sink = matrix(&[&[1.0], &[1.0, 0.0], &[0.9, 0.05, 0.05], &[0.7, 0.1, 0.1, 0.1]]);
        let s = scores(&sink.0, sink.1);
        assert!((s.first.unwrap() - 0.8).abs() < 1e-6);
        assert_eq!(s.class, "first");

        let own = matrix(&[&[1.0], &[0.0, 1.0], &[0.0, 0.0, 1.0], &[0.0, 0.0, 0.4, 0.6]]);
        let s = scores(&own.0, own.1);
        assert!((s.self_.unwrap() - 0.8).abs() < 1e-6);
        assert!((s.previous.unwrap() - 0.2).abs() < 1e-6);
        assert_eq!(s.class, "self");

        let third = 1.0 / 3.0;
        let uniform = matrix(&[&[1.0], &[0.5, 0.5], &[third; 3], &[0.25; 4]]);
        let s = scores(&uniform.0, uniform.1);
        assert!((s.entropy_normalized.unwrap() - 1.0).abs() < 1e-6);
        assert!((s.entropy.unwrap() - (3f64.ln() + 4f64.ln()) / 2.0).abs() < 1e-6);
        assert_eq!(s.class, "broad");

        // Concentrated, but on no fixed position: neither of the above.
        let other = matrix(&[
            &[1.0],
            &[0.5, 0.5],
            &[0.3, 0.3, 0.4],
            &[0.0, 0.9, 0.0, 0.1],
            &[0.0, 0.1, 0.8, 0.0, 0.1],
        ]);
        assert_eq!(scores(&other.0, other.1).class, "other");
    }

    #[test]
    fn too_short_for_scores() {
        for rows in [&[&[1.0f32][..]][..], &[&[1.0], &[0.3, 0.7]]] {
            let (a, t) = matrix(rows);
            let s = scores(&a, t);
            assert_eq!((s.queries, s.previous, s.entropy, s.class), (0, None, None, "none"));
        }
    }

    #[test]
    fn induction_pairs_and_score() {
        // a b c a b c: queries 3, 4, 5 should attend to 1, 2, 3 (the token after the last a, b, c)
        let ids = [7, 8, 9, 7, 8, 9];
        assert_eq!(induction_targets(&ids), vec![(3, 1), (4, 2), (5, 3)]);
        // An immediate repeat has no target other than itself; a triple uses the latest copy.
        assert_eq!(induction_targets(&[5, 5, 6]), vec![]);
        assert_eq!(induction_targets(&[5, 6, 5, 6, 5]), vec![(2, 1), (3, 2), (4, 3)]);
        assert_eq!(induction_targets(&[1, 2, 3]), vec![]);

        let t = ids.len();
        let mut a = vec![0.0f32; t * t];
        for i in 0..t {
            a[i * t] = 1.0; // a sink ...
        }
        // ... except that query 3 gives half of its attention to key 1 and query 5 all to key 3.
        a[3 * t] = 0.5;
        a[3 * t + 1] = 0.5;
        a[5 * t] = 0.0;
        a[5 * t + 3] = 1.0;
        assert!((induction_score(&a, &ids).unwrap() - 0.5).abs() < 1e-9); // (0.5 + 0 + 1) / 3
        assert_eq!(induction_score(&a[..9], &[1, 2, 3]), None);
    }
}
