//! The lmscope binary: parse arguments, run one stage, print its report, exit.

use anyhow::Result;
use clap::Parser;
use lmscope::cli::{Cli, Command, Dtype, GlobalArgs};
use lmscope::report::{self, Format};
use lmscope::source::ModelSpec;
use lmscope::stages::{logits, tokenize};
use lmscope::tokenizer::Tokenizer;
use lmscope::{model, source};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                // `lmscope ... | head`: the reader left; that is not an error.
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    let format = if g.json { Format::Json } else { Format::Human };
    match &cli.command {
        Command::Tokenize(args) => {
            let tokenizer = load_tokenizer(g)?;
            let r = match (&args.ids, &args.text) {
                (Some(ids), _) => tokenize::from_ids(&tokenizer, ids)?,
                (None, Some(text)) => tokenize::from_text(&tokenizer, text)?,
                (None, None) => anyhow::bail!("give a TEXT to tokenize or --ids"),
            };
            report::tokenize(format, &r)?;
        }
        Command::Logits(args) => {
            let m = load_model(g)?;
            let req = logits::LogitsRequest {
                text: &args.text,
                top_k: args.top_k,
                position: args.position,
                full: args.full,
            };
            report::logits(format, &logits::run(&m, &req)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve(g: &GlobalArgs) -> Result<source::Resolved> {
    ModelSpec::parse(&g.model, g.revision.as_deref())?.resolve()
}

fn load_tokenizer(g: &GlobalArgs) -> Result<Tokenizer> {
    Tokenizer::load(&resolve(g)?.files)
}

fn load_model(g: &GlobalArgs) -> Result<model::LoadedModel> {
    let dtype = match g.dtype {
        Dtype::F32 => candle_core::DType::F32,
        Dtype::Bf16 => candle_core::DType::BF16,
        Dtype::F16 => candle_core::DType::F16,
    };
    model::load(&resolve(g)?, dtype)
}
