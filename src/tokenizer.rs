//! Text <-> token ids, with every intermediate visible.
//!
//! lmscope wraps Hugging Face's `tokenizers` crate, so a `tokenizer.json` behaves exactly as it does
//! in Python. For a GGUF file the same kind of tokenizer is rebuilt from the file's
//! `tokenizer.ggml.*` metadata (byte-level BPE from its tokens and merges).

use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

/// One token of an encoded text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Token {
    /// Row of the embedding matrix.
    pub id: u32,
    /// The vocabulary entry, as the tokenizer stores it (`ĠHelsinki`: `Ġ` stands for a space).
    pub token: String,
    /// The text this token stands for (` Helsinki`). A token holding only part of a multi-byte
    /// character shows U+FFFD here; `bytes` has its exact bytes.
    pub text: String,
    /// The exact bytes this token decodes to.
    pub bytes: Vec<u8>,
    /// Byte offsets of the token in the input text (`start..end`); absent for a token that did
    /// not come from a text (`tokenize --ids`, generated tokens) or that the tokenizer added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<usize>,
    /// Whether this is a special token such as `<|im_start|>`.
    pub special: bool,
}

/// A tokenizer plus what lmscope needs to explain its output.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Whether tokens are byte-level BPE strings (GPT-2's `Ġ` convention).
    byte_level: bool,
    /// GPT-2's byte <-> printable character table, inverted: `Ġ` -> b' '.
    char_to_byte: HashMap<char, u8>,
    /// Whether `encode` adds a BOS token in front (as the checkpoint's config asks).
    add_bos: Option<u32>,
    /// One more than the largest id (computed once: `tokenizers` rebuilds its vocabulary to
    /// count it).
    id_limit: usize,
    /// Ids of special tokens (`<|im_start|>`, ...).
    specials: std::collections::HashSet<u32>,
    /// The model's chat template, if it has one (an error found reading it is kept for
    /// `--chat`: other commands do not need the template).
    chat_template: std::result::Result<Option<ChatTemplate>, String>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot load tokenizer {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("invalid tokenizer {}", path.display()))?;
        let byte_level =
            json.get("decoder").map(|d| d.to_string().contains("\"ByteLevel\"")).unwrap_or(false);
        let chat = ChatTemplate::beside_tokenizer(path).map_err(|e| format!("{e:#}"));
        Ok(Self::wrap(inner, byte_level, None, chat))
    }

    /// Builds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        ensure!(
            model == "gpt2",
            "tokenizer model {model:?} is not supported (lmscope builds byte-level BPE tokenizers, \"gpt2\" in GGUF)"
        );
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let merges = string_array(gguf, "tokenizer.ggml.merges")?;
        let token_types: Vec<u64> = match gguf.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .context("tokenizer.ggml.token_type is not an array")?
                .iter()
                .map(|t| t.as_u64().context("tokenizer.ggml.token_type holds a non-integer"))
                .collect::<Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        ensure!(
            token_types.len() == tokens.len(),
            "tokenizer.ggml.token_type has {} entries but there are {} tokens",
            token_types.len(),
            tokens.len()
        );

        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (id, token) in tokens.iter().enumerate() {
            // A duplicated token keeps its first id, as llama.cpp does.
            vocab.entry(token.to_string()).or_insert(id as u32);
        }
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("merge {m:?} is not two tokens separated by a space"))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("cannot build the BPE model from the GGUF vocabulary: {e}"))?;

        // The pre-tokenizer decides where BPE may merge. llama.cpp names it in tokenizer.ggml.pre.
        let pre = gguf.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            // SmolLM's tokenizer.json: every digit on its own, then GPT-2's byte-level split.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "default" | "gpt-2" | "gpt2" => byte_level.into(),
            other => bail!(
                "GGUF pre-tokenizer {other:?} is not supported (supported: smollm, gpt-2, default)"
            ),
        };

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(ByteLevel::new(true, false, true)));
        // token_type 3 is a control token (`<|im_start|>`): matched in text as one special token.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, &t)| t == 3)
            .map(|(token, _)| AddedToken::from(token.to_string(), true))
            .collect();
        inner.add_special_tokens(&specials);

        let bos = crate::config::token_id(gguf, "tokenizer.ggml.bos_token_id")?;
        let add_bos =
            gguf.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let chat = ChatTemplate::from_gguf(gguf, &tokens).map_err(|e| format!("{e:#}"));
        Ok(Self::wrap(inner, true, bos.filter(|_| add_bos), chat))
    }

    fn wrap(
        inner: tokenizers::Tokenizer,
        byte_level: bool,
        add_bos: Option<u32>,
        chat_template: std::result::Result<Option<ChatTemplate>, String>,
    ) -> Self {
        let char_to_byte = bytes_to_unicode().into_iter().map(|(b, c)| (c, b)).collect();
        let id_limit = inner.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1);
        let specials = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Tokenizer { inner, byte_level, char_to_byte, add_bos, id_limit, specials, chat_template }
    }

    /// The model's chat template ([`crate::chat`]), if it has one.
    pub fn chat_template(&self) -> Result<Option<&ChatTemplate>> {
        self.chat_template.as_ref().map(Option::as_ref).map_err(|e| anyhow!("{e}"))
    }

    /// The vocabulary string of the special token `encode` puts in front of every text by
    /// itself (a BOS token), if it puts one there.
    pub fn added_bos(&self) -> Result<Option<String>> {
        match self.encode("")?.first() {
            Some(t) if t.special => Ok(Some(t.token.clone())),
            _ => Ok(None),
        }
    }

    /// Number of ids the tokenizer can produce (vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.id_limit
    }

    /// Whether tokens use GPT-2's byte-level convention (`Ġ` for a space).
    pub fn is_byte_level(&self) -> bool {
        self.byte_level
    }

    /// Splits a text into tokens, as `tokenizer(text)` does in transformers.
    pub fn encode(&self, text: &str) -> Result<Vec<Token>> {
        let _t = crate::timings::span("tokenize");
        let encoding =
            self.inner.encode(text, true).map_err(|e| anyhow!("cannot tokenize the text: {e}"))?;
        let mut tokens = Vec::with_capacity(encoding.len() + 1);
        if let Some(bos) = self.add_bos {
            tokens.push(self.token(bos, None)?);
        }
        for (&id, &(start, end)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
            tokens.push(self.token(id, Some((start, end)))?);
        }
        Ok(tokens)
    }

    /// The ids of a text.
    pub fn encode_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(text)?.into_iter().map(|t| t.id).collect())
    }

    /// Turns ids back into text, as `tokenizer.decode(ids)` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner.decode(ids, false).map_err(|e| anyhow!("cannot decode ids: {e}"))
    }

    /// Describes one id (no offsets: it did not come from a text).
    pub fn describe(&self, id: u32) -> Result<Token> {
        self.token(id, None)
    }

    /// The vocabulary string of an id (`ĠHelsinki`).
    pub fn id_to_token(&self, id: u32) -> Result<String> {
        self.check_id(id)?;
        self.inner.id_to_token(id).with_context(|| format!("token id {id} has no vocabulary entry"))
    }

    /// The id of a vocabulary string, if it is one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn check_id(&self, id: u32) -> Result<()> {
        ensure!(
            (id as usize) < self.vocab_size(),
            "token id {id} is out of range (the vocabulary has ids 0..{})",
            self.vocab_size().saturating_sub(1)
        );
        Ok(())
    }

    fn token(&self, id: u32, offsets: Option<(usize, usize)>) -> Result<Token> {
        let token = self.id_to_token(id)?;
        let special = self.specials.contains(&id);
        let bytes = if special {
            token.as_bytes().to_vec()
        } else if self.byte_level {
            // Undo GPT-2's byte -> printable character mapping (`Ġ` -> space).
            token
                .chars()
                .flat_map(|c| {
                    self.char_to_byte
                        .get(&c)
                        .copied()
                        .map_or_else(|| c.to_string().into_bytes(), |b| vec![b])
                })
                .collect()
        } else {
            self.decode(&[id])?.into_bytes()
        };
        Ok(Token {
            id,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            token,
            bytes,
            start: offsets.map(|o| o.0),
            end: offsets.map(|o| o.1),
            special,
        })
    }
}

/// A GGUF metadata array of strings.
fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    gguf.get(key)
        .with_context(|| format!("metadata key {key} is missing"))?
        .as_array()
        .with_context(|| format!("metadata key {key} is not an array"))?
        .iter()
        .map(|v| v.as_str().with_context(|| format!("{key} holds a non-string")))
        .collect()
}

/// GPT-2's table from each byte to a printable character: printable ASCII and Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100 onwards (so the space 0x20 becomes `Ġ`, U+0120, and the
/// newline 0x0A becomes `Ċ`, U+010A).
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b, b as char)
            } else {
                let c = char::from_u32(next).expect("U+0100..U+0143 are valid characters");
                next += 1;
                (b, c)
            }
        })
        .collect()
}

impl Tokenizer {
    /// Loads the tokenizer of a resolved model, without touching its weights.
    pub fn load(files: &crate::source::ModelFiles) -> Result<Self> {
        match files {
            crate::source::ModelFiles::Safetensors { tokenizer, .. } => Self::from_file(tokenizer),
            crate::source::ModelFiles::Gguf(path) => {
                Self::from_gguf(&GgufFile::open_metadata(path)?)
            }
        }
    }

    /// Loads a tokenizer from its own files ([`crate::source::ModelSpec::resolve_tokenizer`]):
    /// a GGUF file's metadata alone, its tensors neither parsed nor read.
    pub fn load_alone(files: &crate::source::TokenizerFiles) -> Result<Self> {
        match files {
            crate::source::TokenizerFiles::Json(path) => Self::from_file(path),
            crate::source::TokenizerFiles::Gguf(path) => {
                Self::from_gguf(&GgufFile::open_metadata(path)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_byte_table() {
        let table: HashMap<u8, char> = bytes_to_unicode().into_iter().collect();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&b' '], 'Ġ'); // U+0120: the 33rd unprintable byte (0x00..=0x20)
        assert_eq!(table[&b'\n'], 'Ċ'); // U+010A: the 11th (0x0A)
        assert_eq!(table[&b'A'], 'A');
        let distinct: std::collections::HashSet<char> = table.values().copied().collect();
        assert_eq!(distinct.len(), 256, "the table must be one-to-one");
    }
}
