//! Command-line arguments: clap types only, no I/O.

use crate::input::{IdList, InputArgs};
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

/// The heading the options every command takes are listed under in each command's --help.
pub const GLOBAL: &str = "Global options (before or after the command)";

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Model: a Hugging Face repo id, a directory (config.json, tokenizer.json, safetensors) or a
    /// .gguf file [env: LMSCOPE_MODEL] [default: HuggingFaceTB/SmolLM-135M]
    // Not clap's `env`: a value from the environment would show in usage lines as if
    // `--model <MODEL>` had been typed, and an empty one would be blamed on --model.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "MODEL")]
    pub model: Option<String>,

    /// Hub revision (branch, tag or commit) when --model is a repo id
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "REV")]
    pub revision: Option<String>,

    /// Compute dtype of the forward pass (weights are converted to it on load)
    #[arg(long, global = true, help_heading = GLOBAL, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,

    /// Print one JSON document instead of tables (schemas in docs/json.md)
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,

    /// GGUF only: ggml's quantized matmul (as llama.cpp and candle compute it) on the GGUF
    /// blocks, which also rounds the activations to 8 bits (the numbers differ from the exact
    /// path; see docs/performance.md)
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub quantized: bool,

    /// Worker threads for the matrix products (default: RAYON_NUM_THREADS, else all cores)
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Print how long each stage took (resolve, load, tokenize, forward, report) on stderr
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub timings: bool,
}

/// The environment variable that names the model when --model is not given.
pub const MODEL_ENV: &str = "LMSCOPE_MODEL";

impl GlobalArgs {
    /// The model to use: --model, else $LMSCOPE_MODEL, else the notebook's model. An empty
    /// value is an error that names where it came from.
    pub fn model_name(&self) -> anyhow::Result<String> {
        if let Some(m) = &self.model {
            anyhow::ensure!(
                !m.trim().is_empty(),
                "--model is empty: give a .gguf file, a model directory or a Hub repo id"
            );
            return Ok(m.clone());
        }
        match std::env::var(MODEL_ENV) {
            Ok(m) if m.trim().is_empty() => anyhow::bail!(
                "{MODEL_ENV} is set but empty: set it to a .gguf file, a model directory or a Hub \
                 repo id, or unset it (`unset {MODEL_ENV}`) to use {}",
                crate::source::DEFAULT_MODEL
            ),
            Ok(m) => Ok(m),
            Err(std::env::VarError::NotPresent) => Ok(crate::source::DEFAULT_MODEL.to_string()),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{MODEL_ENV} is not valid UTF-8")
            }
        }
    }
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
    #[command(after_help = example(&["tokenize \"The capital of Finland is\"", "tokenize --ids 504,3575,282", "tokenize --chat \"Which city is the capital of Finland?\""]))]
    Tokenize(TokenizeArgs),
    /// Run the model and show the logits tensor and the top-k next tokens
    #[command(after_help = example(&["logits \"The capital of Finland is\" --top-k 5", "logits --ids 504,3575,282,17446,314 --top-k 5"]))]
    Logits(LogitsArgs),
    /// The greedy next token (argmax of the last logits), optionally for several steps
    #[command(after_help = example(&["argmax \"The capital of Finland is\" --steps 5"]))]
    Argmax(ArgmaxArgs),
    /// Show the embedding matrix and the embedding vectors of words
    #[command(after_help = example(&["embed dog cat hat"]))]
    Embed(EmbedArgs),
    /// Cosine similarity of words' input embeddings
    #[command(after_help = example(&["similarity dog cat hat"]))]
    Similarity(SimilarityArgs),
    /// The architecture like print(model), the config and parameter counts
    #[command(after_help = example(&["model"]))]
    Model,
    /// Continue a text, token by token (greedy, or sampled with --sample)
    #[command(after_help = example(&["generate \"The capital of Finland is\" --max-new-tokens 20", "generate \"The capital of Finland is\" --sample --seed 42 --top-k 40", "generate --chat \"Which city is the capital of Finland?\""]))]
    Generate(GenerateArgs),
    /// How likely the model finds a text: every token's log-probability, rank and surprisal
    #[command(after_help = example(&["score --prompt \"The capital of Finland is\" \" Helsinki.\" \" Stockholm.\"", "score --chat --prompt \"Which city is the capital of Finland?\" \"Helsinki.\" \"Stockholm.\""]))]
    Score(ScoreArgs),
    /// One sampling step taken apart: temperature, top-k, top-p and the random draw
    #[command(after_help = example(&["sample \"The capital of Finland is\" --temperature 0.7 --top-k 50 --top-p 0.9 --seed 1"]))]
    Sample(SampleArgs),
    /// The nearest tokens to a word by cosine similarity over the whole embedding matrix
    #[command(after_help = example(&["neighbours dog -k 5"]))]
    Neighbours(NeighboursArgs),
    /// Word analogies: A - B + C on unit-length embeddings (king man woman -> queen?)
    #[command(after_help = example(&["analogy king man woman"]))]
    Analogy(AnalogyArgs),
    /// The logit lens: what the residual stream after each layer would predict next
    #[command(after_help = example(&["lens \"The capital of Finland is\" --track Helsinki"]))]
    Lens(LensArgs),
    /// Attention probabilities of each head of a layer, head classes, induction heads
    #[command(after_help = example(&["attention \"The capital of Finland is\" --layer 16 --head 0"]))]
    Attention(AttentionArgs),
    /// The KV cache checked: cached next-token logits against a full forward pass, step by step
    #[command(after_help = example(&["kv-check \"The capital of Finland is\" --steps 3"]))]
    KvCheck(KvCheckArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish) on stdout
    #[command(after_help = example(&["completions bash > ~/.local/share/bash-completion/completions/lmscope"]))]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) of lmscope or of one of its commands on stdout
    #[command(after_help = example(&["man | man -l -", "man generate > lmscope-generate.1"]))]
    Man(ManArgs),
    /// A session that keeps the model loaded: every command as a line, :text, :set, :pick
    /// (reads lines from standard input when it is not a terminal)
    #[command(after_help = example(&["repl <<< 'logits \"The capital of Finland is\" -k 3'"]))]
    Repl,
    /// The whole pipeline for one prompt, condensed: tokens, embeddings, residual stream, logit
    /// lens, attention, logits, next token (--html FILE: one self-contained page of pictures)
    #[command(after_help = example(&["trace \"The capital of Finland is\" --steps 3", "trace \"The capital of Finland is\" --html trace.html"]))]
    Trace(TraceArgs),
}

/// The "Examples:" block of a command's --help.
fn example(commands: &[&str]) -> String {
    let mut s = String::from(if commands.len() == 1 { "Example:" } else { "Examples:" });
    for c in commands {
        s += &format!("\n  $ lmscope {c}");
    }
    s
}

/// `--chat` and `--system`: the text as a user message in the model's own chat template.
#[derive(Debug, Clone, Default, Args)]
pub struct ChatArgs {
    /// Wrap the text as a user message in the model's own chat template (from the model's
    /// files), with the assistant's turn opened, as transformers' apply_chat_template(..,
    /// add_generation_prompt=True) does: for chat models such as SmolLM2-135M-Instruct
    #[arg(long)]
    pub chat: bool,

    /// With --chat: a system message before the user's (without it, the template's own default
    /// system message, if it has one)
    #[arg(long, requires = "chat", value_name = "TEXT")]
    pub system: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub input: InputArgs,
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// How many of the most likely next tokens to list in the ranking (only what is shown: the
    /// probabilities are over the whole vocabulary; not the sampling filter of generate --top-k)
    #[arg(long, short = 'k', default_value_t = 10, value_name = "K")]
    pub top_k: usize,

    /// Which position's logits to rank (0-based; negative counts from the end, -1 = last)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "POS")]
    pub position: i64,

    /// With --json: include the whole logit row of that position (vocab floats)
    #[arg(long)]
    pub full: bool,

    /// Also show the probabilities after dividing the logits by this temperature
    #[arg(long, allow_negative_numbers = true, value_name = "T")]
    pub temperature: Option<f64>,
}

#[derive(Debug, Args)]
pub struct ArgmaxArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// How many tokens to predict, appending each and running again (with the KV cache)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub steps: usize,
}

/// How a word that is several tokens is turned into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolArg {
    /// Refuse words that are more than one token (like the notebook's assert)
    Single,
    /// Average the vectors of the word's tokens
    Mean,
}

#[derive(Debug, Args)]
pub struct WordArgs {
    /// Look words up exactly as given, without the leading space the notebook's get_id adds
    #[arg(long)]
    pub exact: bool,

    /// What to do with a word that is several tokens
    #[arg(long, value_enum, default_value_t = PoolArg::Single)]
    pub pool: PoolArg,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Words to look up (each as " word", as the notebook's get_id does)
    #[arg(required = true)]
    pub words: Vec<String>,

    /// How many leading values of each vector to show: a number, or "all"
    #[arg(long, default_value = "10", value_parser = parse_dims, value_name = "N|all")]
    pub dims: Dims,

    #[command(flatten)]
    pub lookup: WordArgs,
}

/// `--dims N` or `--dims all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dims {
    First(usize),
    All,
}

fn parse_dims(s: &str) -> Result<Dims, String> {
    if s == "all" {
        return Ok(Dims::All);
    }
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(Dims::First(n)),
        Err(_) => Err(format!("expected a number or \"all\", got {s:?}")),
    }
}

#[derive(Debug, Args)]
pub struct SimilarityArgs {
    /// Two or more words to compare
    #[arg(required = true, num_args = 2..)]
    pub words: Vec<String>,

    #[command(flatten)]
    pub lookup: WordArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// The most tokens to add
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_new_tokens: usize,

    /// Sample the next token instead of always taking the most likely one
    #[arg(long)]
    pub sample: bool,

    /// Sampling temperature (below 1 sharpens, above 1 flattens the distribution)
    #[arg(long, requires = "sample", allow_negative_numbers = true, value_name = "T")]
    pub temperature: Option<f64>,

    /// Sampling filter: draw only among the K most likely tokens, renormalised (with --sample;
    /// not how many tokens are listed, as logits --top-k is)
    #[arg(long, requires = "sample", value_name = "K")]
    pub top_k: Option<usize>,

    /// Sample only among the most likely tokens whose probabilities add up to P
    #[arg(long, requires = "sample", allow_negative_numbers = true, value_name = "P")]
    pub top_p: Option<f64>,

    /// Random seed: the same seed gives the same text (default: chosen from the clock and shown)
    #[arg(long, requires = "sample", value_name = "SEED")]
    pub seed: Option<u64>,

    /// For each new token, print its probability and the runner-up
    #[arg(long)]
    pub show_steps: bool,

    /// Keep going past end-of-sequence tokens
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The texts to score, one argument each (quote a text of several words); several texts are
    /// candidates compared after the same --prompt; `-` reads one from standard input
    #[arg(value_name = "TEXTS", required_unless_present_any = ["file", "ids"])]
    pub texts: Vec<String>,

    /// Score the text of a file (`-`: standard input; one final newline is dropped); repeat
    /// for more candidates
    #[arg(long, value_name = "PATH")]
    pub file: Vec<std::path::PathBuf>,

    /// Score token ids (504,3575,282, "504, 3575" or "[504, 3575]": one word, so quote ids
    /// with spaces), used exactly as given; repeat for more candidates
    #[arg(long, value_name = "IDS", value_parser = crate::input::parse_ids)]
    pub ids: Vec<IdList>,

    /// Score only what follows this prompt (its tokens are given, not scored)
    #[arg(long, value_name = "P")]
    pub prompt: Option<String>,

    /// With --chat, the --prompt is the user's message in the model's chat template, and the
    /// texts are scored as the assistant's answer to it
    #[command(flatten)]
    pub chat: ChatArgs,
}

/// `--rows N` or `--rows all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    First(usize),
    All,
}

fn parse_rows(s: &str) -> Result<Rows, String> {
    if s == "all" {
        return Ok(Rows::All);
    }
    s.parse::<usize>()
        .map(Rows::First)
        .map_err(|_| format!("expected a number or \"all\", got {s:?}"))
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Divide the logits by T before the softmax (below 1 sharpens, above 1 flattens)
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_name = "T")]
    pub temperature: f64,

    /// Keep only the K most likely tokens (and any tied with the K-th)
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,

    /// Keep the smallest set of most likely tokens whose probability reaches P
    #[arg(long, allow_negative_numbers = true, value_name = "P")]
    pub top_p: Option<f64>,

    /// Random seed: the same seed draws the same tokens as generate --sample --seed (default:
    /// chosen from the clock and shown)
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,

    /// How many tokens to draw, appending each and sampling again
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub steps: usize,

    /// How many candidates each step lists: a number, or "all" (every kept token)
    #[arg(long, default_value = "10", value_parser = parse_rows, value_name = "N|all")]
    pub rows: Rows,

    /// Keep going past end-of-sequence tokens
    #[arg(long)]
    pub ignore_eos: bool,
}

/// Which matrix's rows are the words' vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpaceArg {
    /// The input embeddings (model.embed_tokens.weight)
    Input,
    /// The output embeddings (lm_head.weight; the same matrix when the model ties them)
    Output,
}

#[derive(Debug, Args)]
pub struct SpaceArgs {
    /// How many nearest tokens to list
    #[arg(long, short = 'k', default_value_t = 10, value_name = "K")]
    pub top_k: usize,

    /// Which embedding matrix to search
    #[arg(long, value_enum, default_value_t = SpaceArg::Input)]
    pub space: SpaceArg,

    #[command(flatten)]
    pub lookup: WordArgs,
}

#[derive(Debug, Args)]
pub struct NeighboursArgs {
    /// The word (looked up as " word", as embed and similarity do)
    pub word: String,

    #[command(flatten)]
    pub space: SpaceArgs,
}

#[derive(Debug, Args)]
pub struct AnalogyArgs {
    /// Three words A B C: the tokens nearest to A - B + C ("king man woman")
    pub words: Vec<String>,

    #[command(flatten)]
    pub space: SpaceArgs,
}

/// When to colour the shaded tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// Only on a terminal, and not when NO_COLOR is set
    Auto,
    /// Also into a pipe or a file (and despite NO_COLOR)
    Always,
    /// Shade characters only
    Never,
}

#[derive(Debug, Args)]
pub struct ColorArgs {
    /// Shade probabilities with a background colour (auto: on a terminal without NO_COLOR);
    /// without colour, shade characters " ░▒▓█" carry the same information
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,
}

#[derive(Debug, Args)]
pub struct LensArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Only this position (0-based; negative counts from the end). Default: every position in
    /// the grid, the last one in the per-layer table
    #[arg(long, allow_negative_numbers = true, value_name = "POS")]
    pub position: Option<i64>,

    /// How many guesses per layer the per-layer table (and the JSON) lists
    #[arg(long, short = 'k', default_value_t = 3, value_name = "K")]
    pub top_k: usize,

    /// Follow one token's rank and probability through the layers (looked up as " WORD")
    #[arg(long, value_name = "WORD")]
    pub track: Option<String>,

    /// Look the --track word up exactly as given, without a leading space
    #[arg(long, requires = "track")]
    pub exact: bool,

    #[command(flatten)]
    pub color: ColorArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["layer", "summary", "induction"])))]
pub struct AttentionArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// The layer whose heads to show (0-based, as print(model) numbers them)
    #[arg(long, value_name = "L")]
    pub layer: Option<usize>,

    /// Only this head of the layer (0-based)
    #[arg(long, requires = "layer", value_name = "H")]
    pub head: Option<usize>,

    /// Every head of every layer, one cell each, with its dominant pattern
    #[arg(long, conflicts_with = "layer")]
    pub summary: bool,

    /// Rank every head by its induction score (on the text if it repeats a token, else on a
    /// repeated random token sequence)
    #[arg(long)]
    pub induction: bool,

    #[command(flatten)]
    pub color: ColorArgs,
}

#[derive(Debug, Args)]
pub struct KvCheckArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// How many greedy steps to check
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub steps: usize,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A command to print the page of (lmscope-COMMAND(1)); without one, lmscope(1)
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Sample the next token (with --temperature, --top-k, --top-p, --seed) instead of the argmax
    #[arg(long)]
    pub sample: bool,

    /// Divide the logits by T before the softmax (with --sample)
    #[arg(long, requires = "sample", allow_negative_numbers = true, value_name = "T")]
    pub temperature: Option<f64>,

    /// Keep only the K most likely tokens (with --sample)
    #[arg(long, requires = "sample", value_name = "K")]
    pub top_k: Option<usize>,

    /// Keep the smallest set of most likely tokens whose probability reaches P (with --sample)
    #[arg(long, requires = "sample", allow_negative_numbers = true, value_name = "P")]
    pub top_p: Option<f64>,

    /// Random seed of --sample (default: chosen from the clock and shown)
    #[arg(long, requires = "sample", value_name = "SEED")]
    pub seed: Option<u64>,

    /// Also generate N tokens after the prompt and show each one's surprisal
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub steps: usize,

    /// Write one self-contained HTML page (no network, inline CSS, script and SVG) to FILE
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub color: ColorArgs,
}
