//! `lmscope neighbours` and `lmscope analogy`: words in the space of the embedding matrix. Every
//! row of the matrix is a token's vector; cosine similarity against all of them (49,152 for
//! SmolLM2) finds the nearest tokens, and 3CosAdd (A - B + C on unit-length rows, as gensim's
//! `most_similar(positive=[A, C], negative=[B])`) answers "A is to B as ? is to C".

use super::embed::{lookup, Pool, WordLookup};
use crate::load::LoadedModel;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

/// Which matrix's rows are the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// `model.embed_tokens.weight`: the vectors the model reads.
    Input,
    /// `lm_head.weight`: the vectors the last hidden state is compared with to get the logits.
    Output,
}

/// The rows of one matrix as f32, with their lengths computed once.
struct Rows {
    data: Vec<f32>,
    cols: usize,
    norms: Vec<f64>,
}

impl Rows {
    fn load(m: &LoadedModel, space: Space) -> Result<(Rows, &'static str, bool)> {
        let cfg = &m.model.cfg;
        let tied = cfg.tie_word_embeddings;
        let all: Vec<u32> = (0..cfg.vocab_size as u32).collect();
        let (matrix, name) = match space {
            // A tied lm_head is embed_tokens itself: the same rows.
            Space::Input => (&m.model.weights.embed_tokens, "model.embed_tokens.weight"),
            Space::Output if tied => (&m.model.weights.embed_tokens, "lm_head.weight"),
            Space::Output => (&m.model.weights.lm_head, "lm_head.weight"),
        };
        let rows = matrix.rows(&all).with_context(|| {
            format!("cannot read the rows of {name} (with --quantized lm_head is kept as ggml blocks: drop --quantized)")
        })?; // (vocab, c)
        let (n, cols) = rows.dims2()?;
        ensure!(n == all.len(), "{name} has {n} rows, the vocabulary {}", all.len());
        let data: Vec<f32> = rows.flatten_all()?.to_vec1()?;
        let norms = data.chunks(cols).map(|r| dot(r, r).sqrt()).collect();
        Ok((Rows { data, cols, norms }, name, tied))
    }

    fn row(&self, id: usize) -> &[f32] {
        &self.data[id * self.cols..(id + 1) * self.cols]
    }

    /// A word's vector: its row, or the mean of its tokens' rows (--pool mean).
    fn word(&self, w: &WordLookup) -> Vec<f64> {
        let mut v = vec![0.0; self.cols];
        for &id in &w.ids {
            for (x, &y) in v.iter_mut().zip(self.row(id as usize)) {
                *x += y as f64;
            }
        }
        v.iter_mut().for_each(|x| *x /= w.ids.len() as f64);
        v
    }

    /// cos(row, q) for every row; a zero-length row or query gives 0, never NaN (the lengths
    /// are clamped at 1e-8 as torch's cosine_similarity does).
    fn cosines(&self, q: &[f64]) -> Vec<f64> {
        let qn = q.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-8);
        self.data
            .chunks(self.cols)
            .zip(&self.norms)
            .map(|(r, &n)| {
                let d: f64 = r.iter().zip(q).map(|(&a, &b)| a as f64 * b).sum();
                d / (n.max(1e-8) * qn)
            })
            .collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Ids from the highest cosine to the lowest (ties: lower id first).
fn ranking(cosines: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cosines.len()).collect();
    order.sort_by(|&a, &b| cosines[b].total_cmp(&cosines[a]).then(a.cmp(&b)));
    order
}

#[derive(Debug, Serialize)]
pub struct Neighbour {
    pub rank: usize,
    pub id: u32,
    pub token: String,
    /// The readable text of the token (` dogs`).
    pub text: String,
    /// The exact bytes (for the table: part of a character shows as `\xF0`).
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub cosine: f64,
}

#[derive(Debug, Serialize)]
pub struct NeighboursReport {
    /// The word, what was looked up, its ids and tokens.
    #[serde(flatten)]
    pub lookup: WordLookup,
    /// The word's id; null for a word of several tokens averaged with --pool mean.
    pub id: Option<u32>,
    /// "input" or "output".
    pub space: &'static str,
    /// The matrix whose rows were compared.
    pub matrix: &'static str,
    /// Whether lm_head is tied to embed_tokens (then both spaces are the same rows).
    pub tied: bool,
    /// How many rows were compared.
    pub rows: usize,
    /// Ids left out of the ranking: the word itself (nothing for a pooled word, which is no row).
    pub excluded: Vec<u32>,
    pub neighbours: Vec<Neighbour>,
}

pub struct SpaceRequest<'a> {
    pub words: &'a [String],
    pub k: usize,
    pub exact: bool,
    pub pool: Pool,
    pub space: Space,
}

/// `-k` between 1 and the rows left once the inputs are left out.
fn check_k(k: usize, available: usize) -> Result<()> {
    ensure!(
        (1..=available).contains(&k),
        "-k must be between 1 and {available} (the rows other than the input words), got {k}"
    );
    Ok(())
}

fn space_name(space: Space) -> &'static str {
    match space {
        Space::Input => "input",
        Space::Output => "output",
    }
}

pub fn neighbours(m: &LoadedModel, req: &SpaceRequest) -> Result<NeighboursReport> {
    let [word] = req.words else {
        bail!("neighbours takes one word, got {}", req.words.len());
    };
    check_k(req.k, m.model.cfg.vocab_size - 1)?;
    let w = lookup(&m.tokenizer, word, req.exact, req.pool)?;
    let (rows, matrix, tied) = Rows::load(m, req.space)?;
    let id = (w.ids.len() == 1).then(|| w.ids[0]);
    let excluded: Vec<u32> = id.into_iter().collect();
    let cosines = rows.cosines(&rows.word(&w));
    let neighbours = top(m, &cosines, &excluded, req.k)?;
    Ok(NeighboursReport {
        id,
        lookup: w,
        space: space_name(req.space),
        matrix,
        tied,
        rows: cosines.len(),
        excluded,
        neighbours,
    })
}

/// The `k` best rows by cosine, leaving out `excluded`, ranked 1.. among the rest.
fn top(m: &LoadedModel, cosines: &[f64], excluded: &[u32], k: usize) -> Result<Vec<Neighbour>> {
    ranking(cosines)
        .into_iter()
        .filter(|&i| !excluded.contains(&(i as u32)))
        .take(k)
        .enumerate()
        .map(|(r, i)| {
            let t = m.tokenizer.describe(i as u32)?;
            Ok(Neighbour {
                rank: r + 1,
                id: i as u32,
                token: t.token,
                text: t.text,
                bytes: t.bytes,
                cosine: cosines[i],
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct AnalogyInput {
    #[serde(flatten)]
    pub lookup: WordLookup,
    /// Its id; null for a pooled word (no row of its own).
    pub id: Option<u32>,
    /// +1 for A and C, -1 for B.
    pub sign: i32,
    /// Its own rank among all rows, inputs included (null for a pooled word).
    pub rank: Option<usize>,
    /// Its cosine with the query vector (null for a pooled word).
    pub cosine: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct AnalogyReport {
    /// "king - man + woman".
    pub query: String,
    pub space: &'static str,
    pub matrix: &'static str,
    pub tied: bool,
    pub rows: usize,
    /// The nearest rows to the query, the inputs left out (as gensim's most_similar).
    pub results: Vec<Neighbour>,
    pub inputs: Vec<AnalogyInput>,
}

/// A - B + C on unit-length rows; the nearest rows by cosine, the inputs left out.
pub fn analogy(m: &LoadedModel, req: &SpaceRequest) -> Result<AnalogyReport> {
    let [a, b, c] = req.words else {
        bail!(
            "analogy takes exactly three words A B C (A - B + C, as in \"king man woman\"), got {}",
            req.words.len()
        );
    };
    check_k(req.k, m.model.cfg.vocab_size.saturating_sub(3))?;
    let words = [(a, 1), (b, -1), (c, 1)];
    let lookups = words
        .iter()
        .map(|(w, _)| lookup(&m.tokenizer, w, req.exact, req.pool))
        .collect::<Result<Vec<_>>>()?;
    let (rows, matrix, tied) = Rows::load(m, req.space)?;
    // gensim: the mean of the unit vectors with their signs, made unit length (the mean's 1/3
    // and the final length do not change any cosine).
    let mut q = vec![0.0; rows.cols];
    for (l, (_, sign)) in lookups.iter().zip(&words) {
        let v = rows.word(l);
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-8);
        for (x, y) in q.iter_mut().zip(&v) {
            *x += *sign as f64 * y / n;
        }
    }
    let cosines = rows.cosines(&q);
    let order = ranking(&cosines);
    let excluded: Vec<u32> =
        lookups.iter().filter(|l| l.ids.len() == 1).map(|l| l.ids[0]).collect();
    let results = top(m, &cosines, &excluded, req.k)?;
    let inputs = lookups
        .into_iter()
        .zip(words)
        .map(|(l, (_, sign))| {
            let id = (l.ids.len() == 1).then(|| l.ids[0]);
            AnalogyInput {
                id,
                rank: id.and_then(|id| order.iter().position(|&i| i == id as usize)).map(|r| r + 1),
                cosine: id.map(|id| cosines[id as usize]),
                lookup: l,
                sign,
            }
        })
        .collect();
    Ok(AnalogyReport {
        query: format!("{a} - {b} + {c}"),
        space: space_name(req.space),
        matrix,
        tied,
        rows: cosines.len(),
        results,
        inputs,
    })
}
