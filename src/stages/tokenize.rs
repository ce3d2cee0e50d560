//! `lmscope tokenize`: text -> token ids (and back), the notebook's `tokenizer(prompt)`,
//! `convert_ids_to_tokens` and `decode`.

use crate::tokenizer::{Token, Tokenizer};
use anyhow::{ensure, Result};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct TokenizeReport {
    /// The text that was tokenized (absent when ids were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    pub ids: Vec<u32>,
    pub tokens: Vec<Token>,
    /// All ones: every token is real input (no padding), as transformers reports it.
    pub attention_mask: Vec<u8>,
    pub count: usize,
    /// `tokenizer.decode(ids)`.
    pub decoded: String,
    /// Whether decoding gives back exactly the input text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_trip: Option<bool>,
}

/// Tokenizes a text.
pub fn from_text(tokenizer: &Tokenizer, text: &str) -> Result<TokenizeReport> {
    ensure!(!text.is_empty(), "the text is empty: give at least one character to tokenize");
    let tokens = tokenizer.encode(text)?;
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let decoded = tokenizer.decode(&ids)?;
    Ok(TokenizeReport {
        input: Some(text.to_string()),
        attention_mask: vec![1; ids.len()],
        count: ids.len(),
        round_trip: Some(decoded == text),
        ids,
        tokens,
        decoded,
    })
}

/// Tokenizes a prompt: [`from_text`] or [`from_ids`].
pub fn from_prompt(tokenizer: &Tokenizer, prompt: &crate::input::Prompt) -> Result<TokenizeReport> {
    match prompt {
        crate::input::Prompt::Text(text) => from_text(tokenizer, text),
        crate::input::Prompt::Ids(ids) => {
            // The same check and message as every command that takes --ids.
            prompt.ids(tokenizer)?;
            from_ids(tokenizer, ids)
        }
    }
}

/// Describes and decodes a list of ids.
pub fn from_ids(tokenizer: &Tokenizer, ids: &[u32]) -> Result<TokenizeReport> {
    ensure!(!ids.is_empty(), "--ids is empty: give at least one token id");
    let tokens = ids.iter().map(|&id| tokenizer.describe(id)).collect::<Result<Vec<_>>>()?;
    let decoded = tokenizer.decode(ids)?;
    Ok(TokenizeReport {
        input: None,
        ids: ids.to_vec(),
        attention_mask: vec![1; ids.len()],
        count: ids.len(),
        tokens,
        decoded,
        round_trip: None,
    })
}
