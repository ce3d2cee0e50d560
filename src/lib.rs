//! lmscope: watch a Llama-family language model generate text one stage at a time.
//!
//! text -> [`tokenizer`] -> token ids -> embeddings -> [`model::forward`] -> logits -> next token.
//! Each subcommand of the binary is one [`stages`] function that returns a serialisable report;
//! [`report`] prints it as a table or as JSON.

pub mod cli;
pub mod config;
pub mod gguf;
pub mod hub;
pub mod model;
pub mod report;
pub mod sampling;
pub mod source;
pub mod stages;
pub mod timings;
pub mod tokenizer;
