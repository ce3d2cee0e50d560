//! The lmscope binary: parse arguments, run one stage, print its report, exit.

use anyhow::Result;
use clap::Parser;
use lmscope::cli::{Cli, Command, Dims, Dtype, GlobalArgs, PoolArg, WordArgs};
use lmscope::report::{self, Format};
use lmscope::sampling::Strategy;
use lmscope::source::ModelSpec;
use lmscope::stages::{embed, generate, logits, model_info, similarity, tokenize};
use lmscope::tokenizer::Tokenizer;
use lmscope::{model, source};
use std::process::ExitCode;

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    lmscope::keep_freed_memory();
    let cli = Cli::parse();
    let show_timings = cli.global.timings;
    if let Some(n) = cli.global.threads {
        // candle reads RAYON_NUM_THREADS for its GEMM; lmscope's kernels run on model::team,
        // which takes its size from rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n as usize).build_global();
    }
    let result = run(cli);
    if show_timings {
        print_timings(start.elapsed());
    }
    match result {
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

/// `--timings`: one line per stage on stderr.
fn print_timings(total: std::time::Duration) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let mut line = String::from("timings:");
    for (name, d) in lmscope::timings::totals() {
        line += &format!(" {name} {:.1} ms,", ms(d));
    }
    eprintln!("{line} total {:.1} ms", ms(total));
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
    anyhow::ensure!(
        !(g.quantized && g.dtype != Dtype::F32),
        "--quantized computes in f32 from the GGUF blocks: drop --dtype"
    );
    if matches!(cli.command, Command::Logits(_) | Command::Argmax(_) | Command::Generate(_)) {
        note_quantized(g);
    }
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
                temperature: args.temperature,
            };
            report::logits(format, &logits::run(m, &req)?)?;
        }
        Command::Argmax(args) => {
            let m = load_model(g)?;
            report::argmax(format, &generate::argmax_steps(m, &args.text, args.steps)?)?;
        }
        Command::Embed(args) => {
            let m = load_model(g)?;
            let req = embed::EmbedRequest {
                words: &args.words,
                exact: args.lookup.exact,
                pool: pool(&args.lookup),
                dims: match args.dims {
                    Dims::All => None,
                    Dims::First(n) => Some(n),
                },
            };
            report::embed(format, &embed::run(m, &req)?)?;
        }
        Command::Similarity(args) => {
            let m = load_model(g)?;
            let r = similarity::run(m, &args.words, args.lookup.exact, pool(&args.lookup))?;
            report::similarity(format, &r)?;
        }
        Command::Model => {
            let m = load_model(g)?;
            report::model(format, &model_info::run(m)?)?;
        }
        Command::Generate(args) => {
            let m = load_model(g)?;
            let strategy = if args.sample {
                Strategy::Sample {
                    temperature: args.temperature.unwrap_or(1.0),
                    top_k: args.top_k,
                    top_p: args.top_p,
                    seed: args.seed.unwrap_or_else(clock_seed),
                }
            } else {
                Strategy::Greedy
            };
            let req = generate::GenerateRequest {
                text: &args.text,
                max_new_tokens: args.max_new_tokens,
                strategy,
                stop_at_eos: !args.ignore_eos,
            };
            match format {
                Format::Json => report::generate(&generate::run(m, &req, &mut |_| Ok(()))?)?,
                Format::Human => {
                    // The prompt is printed with the first token: an error comes out alone.
                    let mut stream = report::TextStream::new(&args.text);
                    let r = generate::run(m, &req, &mut |step| stream.push(step))?;
                    stream.finish(&r, args.show_steps)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn pool(args: &WordArgs) -> embed::Pool {
    match args.pool {
        PoolArg::Single => embed::Pool::Single,
        PoolArg::Mean => embed::Pool::Mean,
    }
}

/// A seed for --sample without --seed; printed with the output so the run can be repeated.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn resolve(g: &GlobalArgs) -> Result<source::Resolved> {
    let _t = lmscope::timings::span("resolve");
    ModelSpec::parse(&g.model, g.revision.as_deref())?.resolve()
}

fn load_tokenizer(g: &GlobalArgs) -> Result<Tokenizer> {
    let resolved = resolve(g)?;
    let _t = lmscope::timings::span("load");
    Tokenizer::load(&resolved.files)
}

/// Loads the model for the rest of the process. It is never dropped: freeing the tokenizer's
/// hundred thousand small allocations and the weights' maps at exit would take 10-20 ms of a
/// command that otherwise takes about 130, and the operating system reclaims it all anyway.
fn load_model(g: &GlobalArgs) -> Result<&'static model::LoadedModel> {
    let dtype = match g.dtype {
        Dtype::F32 => candle_core::DType::F32,
        Dtype::Bf16 => candle_core::DType::BF16,
        Dtype::F16 => candle_core::DType::F16,
    };
    let resolved = resolve(g)?;
    let _t = lmscope::timings::span("load");
    let m = if g.quantized {
        model::load_as(&resolved, model::MatrixForm::Quantized)?
    } else {
        model::load(&resolved, dtype)?
    };
    Ok(Box::leak(Box::new(m)))
}

/// Says, on stderr, that the numbers of a forward pass come from the --quantized path.
fn note_quantized(g: &GlobalArgs) {
    if g.quantized {
        eprintln!("note: --quantized: ggml's quantized matmul (activations rounded to 8 bits); the numbers differ from the exact path");
    }
}
