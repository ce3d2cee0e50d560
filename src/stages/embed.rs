//! `lmscope embed`: the embedding matrix and the (context-free) vectors of words, the notebook's
//! `get_id(word)` and `get_embedding(id)`.

use crate::load::LoadedModel;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Result};
use candle_core::Tensor;
use serde::Serialize;

/// How a word that is several tokens becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Refuse words that are more than one token (the notebook's assert).
    Single,
    /// Average the tokens' embedding vectors.
    Mean,
}

/// A word and the token(s) it was looked up as.
#[derive(Debug, Clone, Serialize)]
pub struct WordLookup {
    pub word: String,
    /// The string actually tokenized: `" dog"` (a space in front, as the notebook's get_id) or
    /// the word itself with --exact.
    pub looked_up: String,
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
}

/// Tokenizes a word the way the notebook's `get_id` does (a leading space unless `exact`).
pub fn lookup(tokenizer: &Tokenizer, word: &str, exact: bool, pool: Pool) -> Result<WordLookup> {
    ensure!(!word.is_empty(), "a word is empty: give words with at least one character");
    let looked_up = if exact { word.to_string() } else { format!(" {word}") };
    let tokens = tokenizer.encode(&looked_up)?;
    ensure!(!tokens.is_empty(), "{looked_up:?} produced no tokens");
    if tokens.len() > 1 && pool == Pool::Single {
        let pieces: Vec<String> = tokens.iter().map(|t| t.token.clone()).collect();
        bail!(
            "{looked_up:?} is not a single token: it splits into {} tokens {pieces:?} (ids {:?}); {}",
            tokens.len(),
            tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
            multi_token_hint(tokenizer, word, exact)?
        );
    }
    Ok(WordLookup {
        word: word.to_string(),
        looked_up,
        ids: tokens.iter().map(|t| t.id).collect(),
        tokens: tokens.into_iter().map(|t| t.token).collect(),
    })
}

/// What to suggest for a word that is several tokens: `--exact` only where it helps (the word
/// without the leading space is one token), else `--pool mean`.
fn multi_token_hint(tokenizer: &Tokenizer, word: &str, exact: bool) -> Result<String> {
    let mean = "pass --pool mean to average them";
    if exact {
        return Ok(mean.to_string());
    }
    let bare = tokenizer.encode(word)?;
    Ok(match bare.as_slice() {
        [one] => format!(
            "without the leading space, {word:?} is one token ({:?}, id {}): pass --exact to look it up that way, or --pool mean to average these",
            one.token, one.id
        ),
        _ => format!("{mean} (--exact would not help: {word:?} is {} without the space too)", crate::text::count(bare.len(), "token")),
    })
}

/// A word's input embedding: one row of `embed_tokens`, or the mean of several.
pub fn word_vector(m: &LoadedModel, w: &WordLookup) -> Result<Vec<f32>> {
    let rows = m.model.embeddings(&w.ids)?; // (n, c)
    let v: Tensor = rows.mean(0)?; // (c)
    Ok(v.to_vec1()?)
}

#[derive(Debug, Serialize)]
pub struct EmbedReport {
    /// `embedding.weight.shape`: [vocabulary, hidden].
    pub shape: [usize; 2],
    /// Whether words were looked up with a leading space (false with --exact).
    pub leading_space: bool,
    /// How many leading values of each vector are included (the hidden size for all).
    pub dims: usize,
    pub words: Vec<WordEmbedding>,
}

#[derive(Debug, Serialize)]
pub struct WordEmbedding {
    #[serde(flatten)]
    pub lookup: WordLookup,
    /// Whether the vector is the mean of several token vectors.
    pub pooled: bool,
    /// The first `dims` values of the vector.
    pub vector: Vec<f32>,
    /// Euclidean length of the whole vector.
    pub norm: f64,
}

pub struct EmbedRequest<'a> {
    pub words: &'a [String],
    pub exact: bool,
    pub pool: Pool,
    /// Leading values to show; None for all.
    pub dims: Option<usize>,
}

pub fn run(m: &LoadedModel, req: &EmbedRequest) -> Result<EmbedReport> {
    ensure!(!req.words.is_empty(), "give at least one word");
    let hidden = m.model.cfg.hidden_size;
    let dims = req.dims.unwrap_or(hidden);
    ensure!(
        (1..=hidden).contains(&dims),
        "--dims must be between 1 and the hidden size {hidden} (or \"all\"), got {dims}"
    );
    let mut words = Vec::new();
    for word in req.words {
        let lookup = lookup(&m.tokenizer, word, req.exact, req.pool)?;
        let vector = word_vector(m, &lookup)?;
        let norm = vector.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        words.push(WordEmbedding {
            pooled: lookup.ids.len() > 1,
            lookup,
            vector: vector[..dims].to_vec(),
            norm,
        });
    }
    Ok(EmbedReport {
        shape: [m.model.cfg.vocab_size, hidden],
        leading_space: !req.exact,
        dims,
        words,
    })
}
