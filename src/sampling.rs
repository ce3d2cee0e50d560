//! Choosing the next token from a logit row: greedy argmax, or sampling with temperature, top-k
//! and top-p, in the order transformers applies them (temperature, then top-k, then top-p).

use crate::model::softmax_f64;
use anyhow::{ensure, Result};

/// How to choose each next token.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Always the most likely token (`do_sample=False`).
    Greedy,
    /// Draw from the (filtered) distribution.
    Sample {
        /// Divides the logits: below 1 sharpens, above 1 flattens.
        temperature: f64,
        /// Keep only the k most likely tokens (None: all).
        top_k: Option<usize>,
        /// Keep the smallest set of most likely tokens whose probability reaches p (None: all).
        top_p: Option<f64>,
        seed: u64,
    },
}

impl Strategy {
    /// Checks the parameters a user gave.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        if let Strategy::Sample { temperature, top_k, top_p, .. } = self {
            ensure!(
                temperature.is_finite() && *temperature > 0.0,
                "--temperature must be a positive number, got {temperature}"
            );
            if let Some(k) = top_k {
                ensure!(
                    (1..=vocab).contains(k),
                    "--top-k must be between 1 and the vocabulary size {vocab}, got {k}"
                );
            }
            if let Some(p) = top_p {
                ensure!(*p > 0.0 && *p <= 1.0, "--top-p must be in (0, 1], got {p}");
            }
        }
        Ok(())
    }
}

/// The index of the largest value (the lowest index among equal maxima).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// softmax(logits / temperature), in f64.
pub fn probabilities(logits: &[f32], temperature: f64) -> Vec<f64> {
    if temperature == 1.0 {
        return softmax_f64(logits);
    }
    let scaled: Vec<f32> = logits.iter().map(|&l| (l as f64 / temperature) as f32).collect();
    softmax_f64(&scaled)
}

/// The distribution a sampler draws from: temperature applied, then everything outside the top-k
/// and the top-p nucleus set to zero, then renormalised.
pub fn filtered_distribution(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
) -> Vec<f64> {
    let mut probs = probabilities(logits, temperature);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut keep = top_k.unwrap_or(order.len()).min(order.len());
    if let Some(p) = top_p {
        // The nucleus: most likely tokens until their total reaches p (at least one token).
        let mut total = 0.0;
        let mut n = 0;
        for &i in &order[..keep] {
            total += probs[i];
            n += 1;
            if total >= p {
                break;
            }
        }
        keep = n.max(1);
    }
    for &i in &order[keep..] {
        probs[i] = 0.0;
    }
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= sum);
    probs
}

/// SplitMix64: a tiny, well-known pseudo-random generator. Written out here so that the same
/// `--seed` gives the same text in every lmscope version and on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Draws an index with the given probabilities (which sum to 1).
    pub fn choose(&mut self, probs: &[f64]) -> usize {
        let u = self.next_f64();
        let mut total = 0.0;
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                total += p;
                last = i;
                if u < total {
                    return i;
                }
            }
        }
        last // rounding left u above the total: the last possible token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        // logits [0, ln 3]: softmax = [1/4, 3/4]; at T = 0.5 the ratio squares: [1/10, 9/10].
        let l = [0.0f32, 3f32.ln()];
        let p = probabilities(&l, 1.0);
        assert!((p[1] - 0.75).abs() < 1e-7);
        let p = probabilities(&l, 0.5);
        assert!((p[1] - 0.9).abs() < 1e-6);
        let p = probabilities(&l, 1e6);
        assert!((p[1] - 0.5).abs() < 1e-5);
    }

    #[test]
    fn top_k_and_top_p_filter_then_renormalise() {
        // probabilities [0.5, 0.3, 0.2] (from logits ln p)
        let l: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        let p = filtered_distribution(&l, 1.0, Some(2), None);
        assert!((p[0] - 0.625).abs() < 1e-6 && (p[1] - 0.375).abs() < 1e-6 && p[2] == 0.0);
        // top-p 0.7: 0.5 is not enough, 0.5 + 0.3 reaches it.
        let p = filtered_distribution(&l, 1.0, None, Some(0.7));
        assert!((p[0] - 0.625).abs() < 1e-6 && p[2] == 0.0);
        // top-p smaller than the top token still keeps it.
        let p = filtered_distribution(&l, 1.0, None, Some(0.1));
        assert_eq!(p, vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn same_seed_same_draws() {
        let probs = [0.2, 0.3, 0.5];
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..20).map(|_| rng.choose(&probs)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        // SplitMix64's first output for seed 0 (reference value of the published algorithm).
        assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let probs = [0.1, 0.0, 0.9];
        let mut rng = Rng::new(1);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[rng.choose(&probs)] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
    }
}
