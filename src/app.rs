//! One command, run: from parsed arguments to a report written to a writer. The binary calls
//! [`run`] once; a session that keeps the model loaded calls it for every line.

use crate::cli::{
    Cli, ColorArgs, ColorWhen, Command, Dims, Dtype, GlobalArgs, PoolArg, Rows, SpaceArg,
    SpaceArgs, WordArgs,
};
use crate::input::{InputArgs, Prompt, Stdin};
use crate::load;
use crate::render::{self, Format};
use crate::sampling::Strategy;
use crate::source::{self, ModelSpec};
use crate::stages::{
    attention, embed, generate, kv_check, lens, logits, model_info, sample, score, similarity,
    space, tokenize, trace,
};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::io::Write;

/// What stays loaded between commands: every model a command needed, keyed by the options that
/// chose it (a repl that goes back and forth between two models loads each once). Models are never
/// dropped: freeing the tokenizer's hundred thousand small allocations and the weights' maps at
/// exit would take 10-20 ms of a command that otherwise takes about 130, and the operating system
/// reclaims it all anyway.
#[derive(Default)]
pub struct Session {
    loaded: Vec<(ModelKey, &'static load::LoadedModel)>,
    tokenizer: Option<(ModelKey, &'static Tokenizer)>,
    /// The candidates of the last command that ranked next tokens, for the repl's `:pick`.
    ranking: Option<Ranking>,
    /// Counts the rankings set, so a caller can tell whether a command set one.
    rankings_set: u64,
    /// Whether `-` may read standard input (not in the repl, whose lines come from there).
    stdin: Stdin,
    /// The command line of the command being run, where it is not the process's own (a repl
    /// line, as the one-shot command that prints the same): the trace page records it.
    command_line: Option<Vec<String>>,
}

/// The next-token candidates of the last command that ranked them (`logits`: its top-k;
/// `argmax`: the chosen token and the runner-up of the first step).
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// The text whose next token is ranked.
    pub text: String,
    /// Its token ids.
    pub ids: Vec<u32>,
    /// The position whose next token is ranked: the last one (`ids.len() - 1`) unless
    /// `logits --position` chose another.
    pub position: usize,
    /// Best first.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: u32,
    /// The vocabulary string (`ĠHelsinki`).
    pub token: String,
    /// The exact bytes of the token (` Helsinki`).
    pub bytes: Vec<u8>,
}

/// The global options that decide which model is loaded and how.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelKey {
    model: String,
    revision: Option<String>,
    dtype: Dtype,
    quantized: bool,
}

impl ModelKey {
    fn of(g: &GlobalArgs) -> Result<Self> {
        Ok(ModelKey {
            model: g.model_name()?,
            revision: g.revision.clone(),
            dtype: g.dtype,
            quantized: g.quantized,
        })
    }
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Standard input holds the session's own lines (the repl): a text cannot come from there.
    pub fn take_stdin(&mut self) {
        self.stdin = Stdin::Taken;
    }

    /// The prompt a command's input options give; with `--chat`, the text as a user message in
    /// the model's own chat template ([`crate::chat::prompt`]).
    pub fn prompt(&mut self, input: &InputArgs, g: &GlobalArgs) -> Result<Prompt> {
        let prompt = input.resolve(self.stdin)?;
        match prompt {
            Prompt::Text(text) if input.chat.chat => {
                let tokenizer = self.tokenizer(g)?;
                let model = g.model_name()?;
                let system = input.chat.system.as_deref();
                Ok(Prompt::Text(crate::chat::prompt(tokenizer, &model, system, &text)?))
            }
            prompt => Ok(prompt),
        }
    }

    /// The model the global options name, loaded once per session.
    pub fn model(&mut self, g: &GlobalArgs) -> Result<&'static load::LoadedModel> {
        let key = ModelKey::of(g)?;
        if let Some((_, m)) = self.loaded.iter().find(|(k, _)| *k == key) {
            return Ok(m);
        }
        let m = load_model(g)?;
        self.loaded.push((key, m));
        Ok(m)
    }

    /// The tokenizer alone, without reading the weights (the loaded model's, if it is the one
    /// the options name).
    pub fn tokenizer(&mut self, g: &GlobalArgs) -> Result<&'static Tokenizer> {
        let key = ModelKey::of(g)?;
        if let Some((_, m)) = self.loaded.iter().find(|(k, _)| *k == key) {
            return Ok(&m.tokenizer);
        }
        if let Some((k, t)) = &self.tokenizer {
            if *k == key {
                return Ok(t);
            }
        }
        let t: &'static Tokenizer = Box::leak(Box::new(load_tokenizer(g)?));
        self.tokenizer = Some((key, t));
        Ok(t)
    }

    /// The last ranking a command made, if any.
    pub fn ranking(&self) -> Option<&Ranking> {
        self.ranking.as_ref()
    }

    /// The command line the next command records as its own (the repl sets each line's, with
    /// the session's text and settings added, so that a saved trace page says how to run it
    /// again without the repl).
    pub fn set_command_line(&mut self, argv: Vec<String>) {
        self.command_line = Some(argv);
    }

    /// The command line of the command being run: the one [`Session::set_command_line`] set, or
    /// the process's own.
    fn command_line(&self) -> String {
        match &self.command_line {
            Some(argv) => quoted(argv),
            None => {
                let mut args: Vec<String> = std::env::args().collect();
                if let Some(first) = args.first_mut() {
                    // The program's name, not the path it was run from.
                    if let Some(name) = std::path::Path::new(first.as_str()).file_name() {
                        *first = name.to_string_lossy().into_owned();
                    }
                }
                quoted(&args)
            }
        }
    }

    /// How many rankings commands have made: it changes when a command makes one.
    pub fn rankings_set(&self) -> u64 {
        self.rankings_set
    }

    /// Replaces the last ranking (a command that ranks next tokens calls this; the repl's `:back`
    /// puts an earlier one back).
    pub fn set_ranking(&mut self, ranking: Option<Ranking>) {
        self.ranking = ranking;
        self.rankings_set += 1;
    }
}

/// Runs one command and writes its report to `out`.
pub fn run(cli: &Cli, session: &mut Session, out: &mut dyn Write) -> Result<()> {
    crate::kernels::from_env().map_err(anyhow::Error::msg)?;
    let g = &cli.global;
    let format = if g.json { Format::Json } else { Format::Human };
    crate::progress::enable(crate::progress::wanted(g.json));
    anyhow::ensure!(
        !(g.quantized && g.dtype != Dtype::F32),
        "--quantized computes in f32 from the GGUF blocks: drop --dtype"
    );
    if matches!(
        cli.command,
        Command::Logits(_)
            | Command::Argmax(_)
            | Command::Generate(_)
            | Command::Score(_)
            | Command::Sample(_)
            | Command::Lens(_)
            | Command::Attention(_)
            | Command::KvCheck(_)
            | Command::Trace(_)
    ) {
        note_quantized(g);
    }
    match &cli.command {
        Command::Tokenize(args) => {
            let prompt = session.prompt(&args.input, g)?;
            let tokenizer = session.tokenizer(g)?;
            let r = tokenize::from_prompt(tokenizer, &prompt)?;
            render::tokenize(out, format, &r)?;
        }
        Command::Logits(args) => {
            anyhow::ensure!(
                g.json || !args.full,
                "--full puts the whole logit row into the JSON output: add --json (the table shows \
                 each row's first and last three values; `lmscope logits --json --full TEXT | jq \
                 .logits` prints the row)"
            );
            let prompt = session.prompt(&args.input, g)?;
            let m = session.model(g)?;
            let req = logits::LogitsRequest {
                prompt: &prompt,
                top_k: args.top_k,
                position: args.position,
                full: args.full,
                temperature: args.temperature,
            };
            let r = logits::run(m, &req)?;
            session.set_ranking(Some(Ranking {
                text: r.input.clone(),
                ids: r.ids.clone(),
                position: r.position,
                candidates: r
                    .top
                    .iter()
                    .map(|t| Candidate { id: t.id, token: t.token.clone(), bytes: t.bytes.clone() })
                    .collect(),
            }));
            render::logits(out, format, &r)?;
        }
        Command::Argmax(args) => {
            let prompt = session.prompt(&args.input, g)?;
            let m = session.model(g)?;
            let r = generate::argmax_steps(m, &prompt, args.steps)?;
            let first = &r.steps[0];
            session.set_ranking(Some(Ranking {
                text: prompt.text(&m.tokenizer)?,
                ids: r.prompt_ids.clone(),
                position: r.prompt_ids.len() - 1,
                candidates: vec![
                    Candidate {
                        id: first.id,
                        token: first.token.clone(),
                        bytes: first.bytes.clone(),
                    },
                    Candidate {
                        id: first.runner_up_id,
                        token: first.runner_up_token.clone(),
                        bytes: m.tokenizer.describe(first.runner_up_id)?.bytes,
                    },
                ],
            }));
            render::argmax(out, format, &r)?;
        }
        Command::Embed(args) => {
            let m = session.model(g)?;
            let req = embed::EmbedRequest {
                words: &args.words,
                exact: args.lookup.exact,
                pool: pool(&args.lookup),
                dims: match args.dims {
                    Dims::All => None,
                    Dims::First(n) => Some(n),
                },
            };
            render::embed(out, format, &embed::run(m, &req)?)?;
        }
        Command::Similarity(args) => {
            let m = session.model(g)?;
            let r = similarity::run(m, &args.words, args.lookup.exact, pool(&args.lookup))?;
            render::similarity(out, format, &r)?;
        }
        Command::Model => {
            let m = session.model(g)?;
            render::model(out, format, &model_info::run(m)?)?;
        }
        Command::Generate(args) => {
            let prompt = session.prompt(&args.input, g)?;
            let m = session.model(g)?;
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
                prompt: &prompt,
                max_new_tokens: args.max_new_tokens,
                strategy,
                stop_at_eos: !args.ignore_eos,
                limit_flag: "--max-new-tokens",
                // Streamed onto a terminal, the text itself shows how far it is.
                progress: g.json || !std::io::IsTerminal::is_terminal(&std::io::stdout()),
            };
            match format {
                Format::Json => render::generate(out, &generate::run(m, &req, &mut |_| Ok(()))?)?,
                Format::Human => {
                    // The prompt is printed with the first token: an error comes out alone.
                    let shown = generate::echo(&m.tokenizer, &prompt)?;
                    let mut stream = render::TextStream::new(out, &shown);
                    let r = generate::run(m, &req, &mut |step| stream.push(step))?;
                    stream.finish(&r, args.show_steps)?;
                }
            }
        }
        Command::Score(args) => {
            let texts =
                crate::input::candidates(&args.texts, &args.file, &args.ids, session.stdin)?;
            // --chat: the prompt as the user's message, the texts as the assistant's answer.
            let prompt = match (&args.prompt, args.chat.chat) {
                (Some(question), true) => {
                    let tokenizer = session.tokenizer(g)?;
                    let system = args.chat.system.as_deref();
                    Some(crate::chat::prompt(tokenizer, &g.model_name()?, system, question)?)
                }
                (None, true) => bail!(
                    "score --chat wraps the --prompt in the model's chat template: give the question \
                     as --prompt and the answers to score as the texts"
                ),
                (prompt, false) => prompt.clone(),
            };
            let m = session.model(g)?;
            let req = score::ScoreRequest { texts: &texts, prompt: prompt.as_deref() };
            render::score(out, format, &score::run(m, &req)?)?;
        }
        Command::Sample(args) => {
            let prompt = session.prompt(&args.input, g)?;
            let m = session.model(g)?;
            let req = sample::SampleRequest {
                prompt: &prompt,
                settings: crate::sampling::Settings {
                    temperature: args.temperature,
                    top_k: args.top_k,
                    top_p: args.top_p,
                },
                seed: args.seed.unwrap_or_else(clock_seed),
                steps: args.steps,
                rows: match args.rows {
                    Rows::All => None,
                    Rows::First(n) => Some(n),
                },
                stop_at_eos: !args.ignore_eos,
            };
            render::sample(out, format, &sample::run(m, &req)?)?;
        }
        Command::Neighbours(args) => {
            let m = session.model(g)?;
            let words = [args.word.clone()];
            let r = space::neighbours(m, &space_request(&words, &args.space))?;
            render::neighbours(out, format, &r)?;
        }
        Command::Analogy(args) => {
            let m = session.model(g)?;
            let r = space::analogy(m, &space_request(&args.words, &args.space))?;
            render::analogy(out, format, &r)?;
        }
        Command::Lens(args) => {
            let prompt = session.prompt(&args.input, g)?;
            let m = session.model(g)?;
            let req = lens::LensRequest {
                prompt: &prompt,
                position: args.position,
                top_k: args.top_k,
                track: args.track.as_deref(),
                exact: args.exact,
            };
            render::lens(out, format, &lens::run(m, &req)?, shade(&args.color))?;
        }
        Command::Attention(args) => {
            let prompt = session.prompt(&args.input, g)?;
            let m = session.model(g)?;
            let req = attention::AttentionRequest {
                prompt: &prompt,
                layer: args.layer,
                head: args.head,
                summary: args.summary,
                induction: args.induction,
            };
            render::attention(out, format, &attention::run(m, &req)?, shade(&args.color))?;
        }
        Command::KvCheck(args) => {
            let prompt = session.prompt(&args.input, g)?;
            let m = session.model(g)?;
            render::kv_check(out, format, &kv_check::run(m, &prompt, args.steps)?)?;
        }
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "lmscope", out);
            out.flush()?;
        }
        Command::Man(args) => man_page(out, args.command.as_deref())?,
        Command::Repl => crate::repl::run(cli, session, out)?,
        Command::Trace(args) => {
            let prompt = session.prompt(&args.input, g)?;
            // Open the page's file first: a bad path fails before the model runs.
            let mut page = match &args.html {
                Some(path) => Some((
                    path,
                    std::fs::File::create(path).with_context(|| {
                        format!("cannot write the HTML page {}", path.display())
                    })?,
                )),
                None => None,
            };
            let m = session.model(g)?;
            let model = g.model_name()?;
            let req = trace::TraceRequest {
                prompt: &prompt,
                model: &model,
                command: session.command_line(),
                sample: args.sample.then(|| {
                    (
                        crate::sampling::Settings {
                            temperature: args.temperature.unwrap_or(1.0),
                            top_k: args.top_k,
                            top_p: args.top_p,
                        },
                        args.seed.unwrap_or_else(clock_seed),
                    )
                }),
                steps: args.steps,
            };
            let r = match trace::run(m, &req) {
                Ok(r) => r,
                Err(e) => {
                    // No empty page is left behind.
                    if let Some((path, _)) = &page {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            };
            match page.as_mut() {
                Some((path, file)) => {
                    let html = render::trace_html(&r)?;
                    file.write_all(html.as_bytes()).with_context(|| {
                        format!("cannot write the HTML page {}", path.display())
                    })?;
                    match format {
                        Format::Json => render::trace(out, format, &r, shade(&args.color))?,
                        Format::Human => writeln!(
                            out,
                            "wrote {} ({} KB): the trace of {} as one page; open it in a browser",
                            path.display(),
                            html.len().div_ceil(1024),
                            crate::text::count(r.tokenize.report.ids.len(), "token")
                        )?,
                    }
                }
                None => render::trace(out, format, &r, shade(&args.color))?,
            }
        }
    }
    Ok(())
}

/// How shaded tables are drawn: colour on a terminal (--color auto) unless NO_COLOR is set.
fn shade(args: &ColorArgs) -> render::shade::Shade {
    use std::io::IsTerminal;
    let forced = match args.color {
        ColorWhen::Auto => None,
        ColorWhen::Always => Some(true),
        ColorWhen::Never => Some(false),
    };
    let color = render::shade::use_color(
        forced,
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    );
    render::shade::Shade::new(color)
}

/// `lmscope man [COMMAND]`: the manual page in roff, from the same definitions as --help.
fn man_page(out: &mut dyn Write, command: Option<&str>) -> Result<()> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let page = match command {
        None => cmd,
        Some(name) => {
            let names: Vec<String> = cmd
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .filter(|n| n != "help")
                .collect();
            let sub = cmd.find_subcommand(name).cloned().with_context(|| {
                format!("lmscope has no command {name:?} (commands: {})", names.join(", "))
            })?;
            // As `man lmscope-generate` names it, and the way clap_mangen's own generator does.
            let full = format!("lmscope-{}", sub.get_name());
            sub.name(full.clone()).bin_name(full.replace('-', " "))
        }
    };
    clap_mangen::Man::new(page).render(out).context("cannot write the manual page")?;
    out.flush()?;
    Ok(())
}

fn pool(args: &WordArgs) -> embed::Pool {
    match args.pool {
        PoolArg::Single => embed::Pool::Single,
        PoolArg::Mean => embed::Pool::Mean,
    }
}

fn space_request<'a>(words: &'a [String], args: &SpaceArgs) -> space::SpaceRequest<'a> {
    space::SpaceRequest {
        words,
        k: args.top_k,
        exact: args.lookup.exact,
        pool: pool(&args.lookup),
        space: match args.space {
            SpaceArg::Input => space::Space::Input,
            SpaceArg::Output => space::Space::Output,
        },
    }
}

/// A command line, quoted so a shell runs it again (for the trace page).
fn quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A seed for --sample without --seed; printed with the output so the run can be repeated.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn spec(g: &GlobalArgs) -> Result<ModelSpec> {
    ModelSpec::parse(&g.model_name()?, g.revision.as_deref())
}

fn resolve(g: &GlobalArgs) -> Result<source::Resolved> {
    let _t = crate::timings::span("resolve");
    spec(g)?.resolve()
}

/// The tokenizer alone: no weight file is looked for, read or downloaded.
fn load_tokenizer(g: &GlobalArgs) -> Result<Tokenizer> {
    let files = {
        let _t = crate::timings::span("resolve");
        spec(g)?.resolve_tokenizer()?
    };
    let _t = crate::timings::span("load");
    Tokenizer::load_alone(&files)
}

/// Loads the model for the rest of the process (see [`Session`]).
fn load_model(g: &GlobalArgs) -> Result<&'static load::LoadedModel> {
    let dtype = match g.dtype {
        Dtype::F32 => candle_core::DType::F32,
        Dtype::Bf16 => candle_core::DType::BF16,
        Dtype::F16 => candle_core::DType::F16,
    };
    let resolved = resolve(g)?;
    let _t = crate::timings::span("load");
    let m = if g.quantized {
        load::load_as(&resolved, load::MatrixForm::Quantized)?
    } else {
        load::load(&resolved, dtype)?
    };
    Ok(Box::leak(Box::new(m)))
}

/// Says, on stderr, that the numbers of a forward pass come from the --quantized path.
fn note_quantized(g: &GlobalArgs) {
    if g.quantized {
        eprintln!("note: --quantized: ggml's quantized matmul (activations rounded to 8 bits); the numbers differ from the exact path");
    }
}
