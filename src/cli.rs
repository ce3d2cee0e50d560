//! Command-line arguments: clap types only, no I/O.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Watch a Llama-family language model generate text, one stage at a time:
/// text -> token ids -> embeddings -> forward pass -> logits -> next token.
#[derive(Debug, Parser)]
#[command(name = "lmscope", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Model: a Hugging Face repo id, a directory (config.json, tokenizer.json, safetensors) or a
    /// .gguf file
    #[arg(
        long,
        global = true,
        env = "LMSCOPE_MODEL",
        default_value = crate::source::DEFAULT_MODEL,
        value_name = "MODEL"
    )]
    pub model: String,

    /// Hub revision (branch, tag or commit) when --model is a repo id
    #[arg(long, global = true, value_name = "REV")]
    pub revision: Option<String>,

    /// Compute dtype of the forward pass (weights are converted to it on load)
    #[arg(long, global = true, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,

    /// Print one JSON document instead of tables (schemas in docs/json.md)
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Split text into tokens: ids, vocabulary strings, byte offsets, and the decoded round trip
    Tokenize(TokenizeArgs),
    /// Run the model and show the logits tensor and the top-k next tokens
    Logits(LogitsArgs),
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The text to tokenize
    #[arg(required_unless_present = "ids", allow_hyphen_values = true)]
    pub text: Option<String>,

    /// Go the other way: comma-separated token ids to show and decode (e.g. 504,3575,282)
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "text",
        value_name = "IDS"
    )]
    pub ids: Option<Vec<u32>>,
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// The prompt to run the model on
    #[arg(allow_hyphen_values = true)]
    pub text: String,

    /// How many of the most likely next tokens to list
    #[arg(long, short = 'k', default_value_t = 10, value_name = "K")]
    pub top_k: usize,

    /// Which position's logits to rank (0-based; negative counts from the end, -1 = last)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "POS")]
    pub position: i64,

    /// Include the whole logit row of that position (vocab floats) in the JSON output
    #[arg(long)]
    pub full: bool,
}
