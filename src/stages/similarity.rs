//! `lmscope similarity`: cosine similarity of words' input embeddings, the notebook's
//! `cosine_similarity(emb1.unsqueeze(0), emb2.unsqueeze(0))`.

use super::embed::{lookup, word_vector, Pool, WordLookup};
use crate::load::LoadedModel;
use anyhow::{ensure, Result};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct SimilarityReport {
    pub words: Vec<WordLookup>,
    /// Every unordered pair, in input order.
    pub pairs: Vec<Pair>,
    /// `matrix[i][j] = cosine(words[i], words[j])`.
    pub matrix: Vec<Vec<f64>>,
}

#[derive(Debug, Serialize)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub cosine: f64,
}

/// cos(a, b) = a·b / (|a| |b|), accumulated in f64. transformers clamps each norm at 1e-8.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt().max(1e-8);
    let nb = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt().max(1e-8);
    dot / (na * nb)
}

pub fn run(m: &LoadedModel, words: &[String], exact: bool, pool: Pool) -> Result<SimilarityReport> {
    ensure!(words.len() >= 2, "give at least two words to compare");
    let lookups =
        words.iter().map(|w| lookup(&m.tokenizer, w, exact, pool)).collect::<Result<Vec<_>>>()?;
    let vectors = lookups.iter().map(|l| word_vector(m, l)).collect::<Result<Vec<_>>>()?;
    let matrix: Vec<Vec<f64>> =
        vectors.iter().map(|a| vectors.iter().map(|b| cosine(a, b)).collect()).collect();
    let mut pairs = Vec::new();
    for i in 0..words.len() {
        for j in i + 1..words.len() {
            pairs.push(Pair { a: words[i].clone(), b: words[j].clone(), cosine: matrix[i][j] });
        }
    }
    Ok(SimilarityReport { words: lookups, pairs, matrix })
}

#[cfg(test)]
mod tests {
    use super::cosine;

    #[test]
    fn cosine_by_hand() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12); // 45 degrees
        assert_eq!(cosine(&[1.0, 2.0], &[-2.0, 1.0]), 0.0); // orthogonal
        assert!((cosine(&[3.0, 4.0], &[6.0, 8.0]) - 1.0).abs() < 1e-12); // same direction
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0); // zero vector: no NaN
    }
}
