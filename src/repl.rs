//! `lmscope repl`: a session that keeps the model loaded and takes one command per line.
//!
//! Every line is parsed by clap exactly as the command line would be (with `lmscope` in front),
//! after POSIX-shell splitting, and runs through [`app::run`] with the session's loaded model, so
//! it prints the same bytes as the one-shot command. The repl adds a notebook's state:
//! - the current text (`:text ...`): a line whose command takes a `TEXT` positional and was given
//!   none gets it;
//! - settings (`:set KEY VALUE`): defaults for the long option `--KEY` of later lines, for every
//!   command that takes that option and accepts it on that line (generate's `--temperature` only
//!   with `--sample`); the repl's own global flags (`lmscope --json repl`) start as settings;
//! - the last ranking of next tokens (logits, argmax), from which `:pick` appends a candidate to
//!   the text and ranks again; `:back` undoes a `:text` or a `:pick`.
//!
//! Both the current text and the settings are generic over clap's arguments: they are added to a
//! line's words as the user could have typed them, so no command needs to know about the repl.
//!
//! `:pick` runs the ranking command again on the longer text from scratch: no KV cache is reused
//! between lines, so its numbers are those of a fresh run by construction.

use crate::app::{self, Ranking, Session};
use crate::cli::{Cli, Command as Cmd, Dtype, GlobalArgs};
use crate::interrupt;
use anyhow::{anyhow, bail, Context as _, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, ValueEnum};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// What the interactive repl prints before each line.
pub const PROMPT: &str = "lmscope> ";

/// Options that cannot be settings: clap's own, --threads (the thread pool is made once, when
/// the process starts), the input options (the current text is `:text`), and trace's --html (every
/// later trace would overwrite the one page).
const NOT_SETTABLE: &[&str] = &["help", "version", "threads", "file", "ids", "html"];

/// The id of the positional argument that `:text` fills in (every command's `text: String`).
const TEXT: &str = "text";

/// The ids of the positionals the current text goes to: `text`, and `score`'s `texts`.
const TEXT_IDS: &[&str] = &[TEXT, "texts"];

/// The repl's commands, for `:help`, completion and suggestions.
const META: &[(&str, &str)] = &[
    (":text TEXT", "set the current text: a command given no TEXT uses it"),
    (":text", "show the current text"),
    (":pick N", "append candidate N of the last ranking, rank again"),
    (":pick \" Helsinki\"", "the same, by the candidate's text"),
    (":back", "undo the last :text or :pick"),
    (":set KEY VALUE", "a default for --KEY in later lines (flags: on or off)"),
    (":set", "list the settings"),
    (":unset KEY", "remove a setting"),
    (":help", "this help"),
    (":quit", "leave (also Ctrl-D); Ctrl-C stops a running command"),
];

/// Runs the repl: interactive with line editing when standard input is a terminal, otherwise
/// line by line from standard input, without a prompt.
pub fn run(cli: &Cli, session: &mut Session, out: &mut dyn Write) -> Result<()> {
    let mut repl = Repl::new(&cli.global);
    // The lines come from standard input: `-` cannot read a text from there too.
    session.take_stdin();
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        interactive(&mut repl, &cli.global, session, out)
    } else {
        piped(&mut repl, session, out, &mut stdin.lock())
    }
}

/// The state of a session between lines.
pub struct Repl {
    /// The current text (`:text`), given to commands that were given none.
    text: Option<String>,
    /// `:set`'s defaults, in the order they were set: a long option's name and its value ("on"
    /// for a flag that is set, "off" for one that is not).
    settings: Vec<(String, String)>,
    /// What `:back` restores.
    undo: Vec<Snapshot>,
    /// The words of the line that made the session's last ranking, without its text: `:pick` runs
    /// them again on the longer text.
    ranking_line: Option<Vec<String>>,
    /// The ranking serial that `ranking_line` belongs to.
    ranking_serial: u64,
    /// `--threads` of the repl itself: fixed for the process.
    threads: Option<u16>,
}

/// The state before a `:text` or a `:pick`.
struct Snapshot {
    text: Option<String>,
    /// The ranking to restore (`:pick` changes it; `:text` does not).
    ranking: Option<(Option<Ranking>, Option<Vec<String>>)>,
}

/// How a line went.
pub enum Outcome {
    Done,
    Failed(Failure),
    Quit,
}

/// Why a line failed.
pub enum Failure {
    /// It did not parse: clap's message, and perhaps a tip of the repl's.
    Usage(Box<clap::Error>, Option<&'static str>),
    /// The command (or a repl command) failed: `error: ...`.
    Error(anyhow::Error),
    /// Ctrl-C stopped it.
    Interrupted,
}

impl Failure {
    fn is_broken_pipe(&self) -> bool {
        match self {
            Failure::Error(err) => err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }),
            _ => false,
        }
    }

    /// Prints the failure on stderr, as the one-shot command would.
    fn report(&self) {
        match self {
            Failure::Usage(err, tip) => {
                let _ = err.print();
                if let Some(tip) = tip {
                    eprintln!("{tip}");
                }
            }
            Failure::Error(err) => eprintln!("error: {err:#}"),
            Failure::Interrupted => eprintln!("interrupted"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        if interrupt::is_interrupted(&err) {
            Failure::Interrupted
        } else {
            Failure::Error(err)
        }
    }
}

impl Repl {
    /// A session whose settings start as the repl's own global options.
    pub fn new(g: &GlobalArgs) -> Self {
        Repl {
            text: None,
            settings: global_settings(g),
            undo: Vec::new(),
            ranking_line: None,
            ranking_serial: 0,
            threads: g.threads,
        }
    }

    /// The current text.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Runs one line.
    pub fn line(&mut self, line: &str, session: &mut Session, out: &mut dyn Write) -> Outcome {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Outcome::Done;
        }
        let result = if line.starts_with(':') {
            self.meta(line, session, out)
        } else {
            match shlex::split(line) {
                Some(words) if words.is_empty() => Ok(Outcome::Done),
                Some(words) => Ok(self.command(&words, session, out)),
                None => Err(anyhow!(
                    "cannot split the line into words: a quote is not closed (or it ends in a backslash)"
                )),
            }
        };
        result.unwrap_or_else(|e| Outcome::Failed(e.into()))
    }

    /// A line that is an lmscope command.
    fn command(&mut self, words: &[String], session: &mut Session, out: &mut dyn Write) -> Outcome {
        let cli = match self.parse_with_argv(words) {
            Ok((cli, argv)) => {
                session.set_command_line(argv);
                cli
            }
            Err(err) => {
                use clap::error::ErrorKind;
                if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    // `help logits`, `logits --help`: printed on stdout, as the one-shot does.
                    return match write!(out, "{}", err.render()).and_then(|()| out.flush()) {
                        Ok(()) => Outcome::Done,
                        Err(e) => Outcome::Failed(Failure::Error(e.into())),
                    };
                }
                let tip = (err.kind() == ErrorKind::MissingRequiredArgument && self.text.is_none())
                    .then_some("tip: `:text ...` sets a text for the commands given none");
                return Outcome::Failed(Failure::Usage(Box::new(err), tip));
            }
        };
        if matches!(cli.command, Cmd::Repl) {
            return Outcome::Failed(Failure::Error(anyhow!("this is the repl already")));
        }
        if cli.global.threads.is_some() && cli.global.threads != self.threads {
            return Outcome::Failed(Failure::Error(anyhow!(
                "--threads is fixed for the session (the thread pool starts with the process): give it to `lmscope repl`"
            )));
        }
        let serial = session.rankings_set();
        interrupt::clear();
        crate::timings::reset();
        let start = std::time::Instant::now();
        let result = app::run(&cli, session, out);
        if cli.global.timings {
            eprintln!("{}", crate::timings::summary(start.elapsed()));
        }
        if session.rankings_set() != serial {
            self.ranking_line = Some(without_chat(&without_text(words)));
            self.ranking_serial = session.rankings_set();
        }
        match result {
            Ok(()) => Outcome::Done,
            Err(err) => Outcome::Failed(err.into()),
        }
    }

    /// Parses a line's words as `lmscope WORDS`, with the current text and the settings added
    /// where the line's command takes them and the line did not give them.
    pub fn parse(&self, words: &[String]) -> Result<Cli, clap::Error> {
        self.parse_with_argv(words).map(|(cli, _)| cli)
    }

    /// [`Repl::parse`], with the argv that parsed: the one-shot command line of the line.
    fn parse_with_argv(&self, words: &[String]) -> Result<(Cli, Vec<String>), clap::Error> {
        let parsed = |argv: Vec<String>| parse_argv(&argv).map(|cli| (cli, argv));
        let extras = self.extras(words);
        if let Ok(done) = parsed(assemble(words, &extras)) {
            return Ok(done);
        }
        // Some addition does not fit this line (generate's --temperature without --sample,
        // tokenize's text with --ids): keep those that do, in order.
        let mut kept: Vec<Extra> = Vec::new();
        for x in &extras {
            kept.push(x.clone());
            if parse_argv(&assemble(words, &kept)).is_err() {
                kept.pop();
            }
        }
        if let Ok(done) = parsed(assemble(words, &kept)) {
            return Ok(done);
        }
        // The line itself is wrong: clap's message for it (with the current text, so that the
        // message is not about a missing TEXT the repl would have given).
        let text: Vec<Extra> = extras.into_iter().filter(|x| matches!(x, Extra::Text(_))).collect();
        parsed(assemble(words, &text))
    }

    /// What the repl would add to a line: the current text, then the settings that the line's
    /// command takes and the line did not give.
    fn extras(&self, words: &[String]) -> Vec<Extra> {
        let Some((sub, matches)) = probe(words) else {
            return Vec::new();
        };
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let mut extras = Vec::new();
        if let Some(text) = &self.text {
            let positional = sub
                .get_arguments()
                .find(|a| a.is_positional() && TEXT_IDS.contains(&a.get_id().as_str()));
            if positional.is_some_and(|a| !given(a.get_id().as_str())) {
                extras.push(Extra::Text(text.clone()));
            }
        }
        for (key, value) in &self.settings {
            let Some(arg) = sub.get_arguments().find(|a| a.get_long() == Some(key.as_str())) else {
                continue;
            };
            if given(arg.get_id().as_str()) {
                continue;
            }
            if arg.get_action().takes_values() {
                extras.push(Extra::Option(format!("--{key}={value}")));
            } else if value == "on" {
                extras.push(Extra::Option(format!("--{key}")));
            }
        }
        extras
    }

    /// A line that starts with `:`.
    fn meta(&mut self, line: &str, session: &mut Session, out: &mut dyn Write) -> Result<Outcome> {
        let (name, rest) = match line.find(char::is_whitespace) {
            Some(i) => (&line[..i], line[i..].trim()),
            None => (line, ""),
        };
        match name {
            ":q" | ":quit" | ":exit" => return Ok(Outcome::Quit),
            ":h" | ":help" | ":?" => write!(out, "{}", help())?,
            ":text" => self.text_command(rest, out)?,
            ":set" => self.set(rest, out)?,
            ":unset" => self.unset(rest)?,
            ":pick" => return self.pick(rest, session, out),
            ":back" => self.back(session, out)?,
            _ => {
                let names: Vec<&str> =
                    META.iter().map(|(m, _)| m.split(' ').next().unwrap_or(m)).collect();
                match nearest(name, names.iter().copied()) {
                    Some(s) => {
                        bail!("unknown repl command {name}: did you mean {s}? (:help lists them)")
                    }
                    None => bail!("unknown repl command {name} (:help lists them)"),
                }
            }
        }
        out.flush()?;
        Ok(Outcome::Done)
    }

    /// `:text` shows the current text; `:text TEXT` sets it (`:text "..."` keeps spaces at the
    /// ends; `:text ""` clears it).
    fn text_command(&mut self, rest: &str, out: &mut dyn Write) -> Result<()> {
        if rest.is_empty() {
            return self.show_text(out);
        }
        let text = if rest.starts_with(['"', '\'']) {
            match shlex::split(rest).as_deref() {
                Some([one]) => one.clone(),
                _ => bail!(
                    "a quoted :text must be one quoted string (:text \" Helsinki\"); without quotes the rest of the line is the text"
                ),
            }
        } else {
            rest.to_string()
        };
        self.undo.push(Snapshot { text: self.text.take(), ranking: None });
        self.text = (!text.is_empty()).then_some(text);
        Ok(())
    }

    fn show_text(&self, out: &mut dyn Write) -> Result<()> {
        match &self.text {
            Some(t) => writeln!(out, "text: {}", crate::text::visible(t))?,
            None => writeln!(out, "no current text: `:text ...` sets one")?,
        }
        Ok(())
    }

    /// `:set` lists the settings, `:set KEY` shows one (or turns a flag on), `:set KEY VALUE`
    /// sets one after checking the value as the commands that take --KEY would.
    fn set(&mut self, rest: &str, out: &mut dyn Write) -> Result<()> {
        let words =
            shlex::split(rest).context("cannot split :set's words: a quote is not closed")?;
        let (key, value) = match words.as_slice() {
            [] => {
                if self.settings.is_empty() {
                    writeln!(out, "no settings: `:set KEY VALUE` sets one (:help lists the keys)")?;
                }
                for (k, v) in &self.settings {
                    writeln!(out, "{k} = {v}")?;
                }
                return Ok(());
            }
            [key] => (key.trim_start_matches("--"), None),
            [key, value] => (key.trim_start_matches("--"), Some(value.as_str())),
            _ => bail!(":set takes a key and one value (quote a value with spaces)"),
        };
        let args = settable(key)?;
        let flag = !args[0].1.get_action().takes_values();
        let value = match (flag, value) {
            (true, None | Some("on" | "true" | "yes")) => "on".to_string(),
            (true, Some("off" | "false" | "no")) => "off".to_string(),
            (true, Some(v)) => {
                bail!("--{key} is a flag: :set {key} on, or :set {key} off (not {v:?})")
            }
            (false, None) => {
                match self.settings.iter().find(|(k, _)| k == key) {
                    Some((k, v)) => writeln!(out, "{k} = {v}")?,
                    None => writeln!(out, "{key} is not set")?,
                }
                return Ok(());
            }
            (false, Some(v)) => {
                // The value as each command that takes --KEY parses it (the line's other
                // errors, a missing TEXT, are not the value's).
                use clap::error::ErrorKind;
                for (cmd, _) in &args {
                    let argv = ["lmscope", cmd.get_name(), &format!("--{key}={v}")];
                    if let Err(e) = Cli::command().try_get_matches_from(argv) {
                        if matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation)
                        {
                            let msg = e.render().to_string();
                            let msg = msg.lines().next().unwrap_or_default();
                            return Err(anyhow!("{}", msg.strip_prefix("error: ").unwrap_or(msg)));
                        }
                    }
                }
                v.to_string()
            }
        };
        match self.settings.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.settings.push((key.to_string(), value)),
        }
        Ok(())
    }

    fn unset(&mut self, rest: &str) -> Result<()> {
        let key = rest.trim_start_matches("--");
        anyhow::ensure!(!key.is_empty(), ":unset takes a key (:set lists them)");
        let before = self.settings.len();
        self.settings.retain(|(k, _)| k != key);
        if self.settings.len() == before {
            settable(key)?;
            bail!("{key} is not set");
        }
        Ok(())
    }

    /// `:pick N` or `:pick "TEXT"`: appends a candidate of the last ranking to the text it ranked
    /// and runs the ranking command again on the result.
    fn pick(&mut self, rest: &str, session: &mut Session, out: &mut dyn Write) -> Result<Outcome> {
        let r = session.ranking().cloned().context(
            "nothing to pick from: run logits (or argmax) first, then :pick a candidate",
        )?;
        let line = match &self.ranking_line {
            Some(l) if self.ranking_serial == session.rankings_set() => l.clone(),
            _ => {
                bail!("nothing to pick from: run logits (or argmax) first, then :pick a candidate")
            }
        };
        anyhow::ensure!(
            r.position + 1 == r.ids.len(),
            "the last ranking is of position {} of {}, not of the end of the text: :pick appends to the end (rank without --position)",
            r.position,
            crate::text::count(r.ids.len(), "token")
        );
        let choice = pick_choice(rest, &r)?;
        let c = &r.candidates[choice];
        let piece = std::str::from_utf8(&c.bytes).map_err(|_| {
            anyhow!(
                "candidate {} ({}) is part of a character, not text that can be appended (its bytes are {})",
                choice + 1,
                c.token,
                crate::text::visible_bytes(&c.bytes)
            )
        })?;
        let text = format!("{}{piece}", r.text);
        self.undo.push(Snapshot {
            text: self.text.take(),
            ranking: Some((Some(r.clone()), self.ranking_line.clone())),
        });
        self.text = Some(text);
        let outcome = self.command(&line, session, out);
        if let (Outcome::Done, Some(new)) = (&outcome, session.ranking()) {
            let expected: Vec<u32> = r.ids.iter().copied().chain([c.id]).collect();
            if new.text == self.text.as_deref().unwrap_or_default() && new.ids != expected {
                eprintln!(
                    "note: the new text is {}, not the {} before it plus the one picked: the tokenizer splits the joined text differently",
                    crate::text::count(new.ids.len(), "token"),
                    crate::text::count(r.ids.len(), "token")
                );
            }
        }
        Ok(outcome)
    }

    /// `:back`: the text (and ranking) before the last `:text` or `:pick`.
    fn back(&mut self, session: &mut Session, out: &mut dyn Write) -> Result<()> {
        let s = self.undo.pop().context("nothing to undo: :back undoes :text and :pick")?;
        self.text = s.text;
        if let Some((ranking, line)) = s.ranking {
            session.set_ranking(ranking);
            self.ranking_line = line;
            self.ranking_serial = session.rankings_set();
        }
        self.show_text(out)
    }
}

/// Which candidate `:pick`'s argument names (0-based): a rank, or a candidate's text or
/// vocabulary string (quote it to keep its spaces: `:pick " Helsinki"`).
fn pick_choice(rest: &str, r: &Ranking) -> Result<usize> {
    anyhow::ensure!(
        !rest.is_empty(),
        "give a rank (:pick 1) or a candidate's text (:pick \" Helsinki\")"
    );
    let quoted = rest.starts_with(['"', '\'']);
    let word = match shlex::split(rest).as_deref() {
        Some([one]) => one.clone(),
        _ => bail!("give one rank or one quoted text (:pick \" Helsinki\")"),
    };
    let n = r.candidates.len();
    if !quoted {
        if let Ok(rank) = word.parse::<usize>() {
            anyhow::ensure!(
                (1..=n).contains(&rank),
                "the last ranking has {}: :pick 1 to :pick {n}",
                crate::text::count(n, "candidate")
            );
            return Ok(rank - 1);
        }
    }
    r.candidates
        .iter()
        .position(|c| c.bytes == word.as_bytes())
        .or_else(|| r.candidates.iter().position(|c| c.token == word))
        .with_context(|| {
            let shown: Vec<String> =
                r.candidates.iter().map(|c| crate::text::visible_bytes(&c.bytes)).collect();
            format!(
                "{} is not among the last ranking's candidates: {}",
                crate::text::visible(&word),
                shown.join(", ")
            )
        })
}

/// Something the repl adds to a line.
#[derive(Debug, Clone, PartialEq)]
enum Extra {
    /// The current text, as the TEXT positional.
    Text(String),
    /// A setting, as `--key=value` or `--flag`.
    Option(String),
}

/// `lmscope` + the line's words + the additions: options before a `--` of the line (or at the
/// end), the text at the very end after a `--` (so a text that starts with `-` stays a text).
fn assemble(words: &[String], extras: &[Extra]) -> Vec<String> {
    let split = words.iter().position(|w| w == "--").unwrap_or(words.len());
    let mut argv = vec!["lmscope".to_string()];
    argv.extend_from_slice(&words[..split]);
    for x in extras {
        if let Extra::Option(o) = x {
            argv.push(o.clone());
        }
    }
    argv.extend_from_slice(&words[split..]);
    for x in extras {
        if let Extra::Text(t) = x {
            if split == words.len() {
                argv.push("--".to_string());
            }
            argv.push(t.clone());
        }
    }
    argv
}

fn parse_argv(argv: &[String]) -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}

/// The clap command tree with the global options copied into every subcommand.
fn built() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// The subcommand a line names and what the line gave, ignoring errors (a missing TEXT).
fn probe(words: &[String]) -> Option<(clap::Command, ArgMatches)> {
    let argv = std::iter::once("lmscope".to_string()).chain(words.iter().cloned());
    let matches = Cli::command().ignore_errors(true).try_get_matches_from(argv).ok()?;
    let (name, sub_matches) = matches.subcommand()?;
    let sub = built().find_subcommand(name)?.clone();
    Some((sub, sub_matches.clone()))
}

/// A line's words without the input it gave, if it gave one (`logits -k 5 "The capital"` ->
/// `logits -k 5`; the words of a TEXT of several, `--ids ...`, `--file PATH`): what `:pick` runs
/// again with the longer text.
fn without_text(words: &[String]) -> Vec<String> {
    let Some((sub, matches)) = probe(words) else {
        return words.to_vec();
    };
    // (Asking clap's matches about an id the command does not have panics in debug builds.)
    let given = |m: &ArgMatches, id: &str| {
        sub.get_arguments().any(|a| a.get_id() == id)
            && m.value_source(id) == Some(ValueSource::CommandLine)
    };
    let raw = |id: &str| -> Vec<String> {
        matches
            .get_raw(id)
            .map(|v| v.map(|w| w.to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let mut rest = words.to_vec();
    for option in ["ids", "file"] {
        if !given(&matches, option) {
            continue;
        }
        let values = raw(option);
        let flag = format!("--{option}");
        let Some(first) = values.first() else { continue };
        let inline = format!("{flag}={first}");
        let found = (0..rest.len()).find_map(|i| {
            let tail = |from: usize, vals: &[String]| {
                rest.get(from..from + vals.len()).is_some_and(|w| w == vals)
            };
            if rest[i] == flag && tail(i + 1, &values) {
                Some(i..i + 1 + values.len())
            } else if rest[i] == inline && tail(i + 1, &values[1..]) {
                Some(i..i + values.len())
            } else {
                None
            }
        });
        match found {
            Some(range) => drop(rest.drain(range)),
            None => return words.to_vec(),
        }
    }
    if given(&matches, TEXT) {
        // The TEXT's words, from the last: each is the last matching word before the one after it.
        let mut end = rest.len();
        for value in raw(TEXT).iter().rev() {
            match (0..end).rev().find(|&i| rest[i] == *value) {
                Some(i) => {
                    rest.remove(i);
                    end = i;
                }
                None => return words.to_vec(),
            }
        }
    }
    match probe(&rest) {
        Some((_, m)) if ["ids", "file", TEXT].iter().all(|id| !given(&m, id)) => rest,
        _ => words.to_vec(),
    }
}

/// A line without `--chat` and `--system TEXT`: a ranking's text made with --chat is already the
/// rendered prompt, so `:pick` runs the line again on it as it is (not wrapped a second time).
fn without_chat(words: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut skip_value = false;
    for w in words {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match w.as_str() {
            "--chat" => {}
            "--system" => skip_value = true,
            w if w.starts_with("--system=") => {}
            _ => out.push(w.clone()),
        }
    }
    out
}

/// The settings the repl's own global options start: `lmscope --json repl` prints every line as
/// JSON until `:set json off`.
fn global_settings(g: &GlobalArgs) -> Vec<(String, String)> {
    let GlobalArgs { model, revision, dtype, json, quantized, threads: _, timings } = g;
    let mut s = Vec::new();
    if let Some(model) = model {
        s.push(("model".to_string(), model.clone()));
    }
    if let Some(rev) = revision {
        s.push(("revision".into(), rev.clone()));
    }
    if *dtype != Dtype::F32 {
        if let Some(v) = dtype.to_possible_value() {
            s.push(("dtype".into(), v.get_name().to_string()));
        }
    }
    for (key, on) in [("json", json), ("quantized", quantized), ("timings", timings)] {
        if *on {
            s.push((key.into(), "on".into()));
        }
    }
    s
}

/// The commands (and the global level) that take the long option `--key`, with its argument.
fn settable(key: &str) -> Result<Vec<(clap::Command, clap::Arg)>> {
    let cmd = built();
    let keys = setting_keys(&cmd);
    if NOT_SETTABLE.contains(&key) || !keys.iter().any(|(k, _)| k == key) {
        let names = keys.iter().map(|(k, _)| k.as_str());
        match nearest(key, names) {
            Some(s) => bail!("there is no setting {key}: did you mean {s}? (:help lists them)"),
            None => bail!("there is no setting {key} (:help lists them)"),
        }
    }
    Ok(cmd
        .get_subcommands()
        .filter_map(|sub| {
            let arg = sub.get_arguments().find(|a| a.get_long() == Some(key))?;
            Some((sub.clone(), arg.clone()))
        })
        .collect())
}

/// Every key `:set` takes, each with the commands that take it ("every command" for a global
/// option), in clap's order.
fn setting_keys(cmd: &clap::Command) -> Vec<(String, Vec<String>)> {
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| !NOT_SETTABLE.contains(l)) {
            keys.push((long.to_string(), vec!["every command".to_string()]));
        }
    }
    let global: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "repl") {
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long().filter(|l| !NOT_SETTABLE.contains(l)) else {
                continue;
            };
            if global.iter().any(|g| g == long) {
                continue;
            }
            match keys.iter_mut().find(|(k, _)| k == long) {
                Some((_, cmds)) => cmds.push(sub.get_name().to_string()),
                None => keys.push((long.to_string(), vec![sub.get_name().to_string()])),
            }
        }
    }
    keys
}

/// `:help`.
fn help() -> String {
    let cmd = built();
    let mut s = String::from(
        "Every lmscope command works as a line, as on the command line without `lmscope`\n\
         (quoting as in a shell; `help COMMAND` or `COMMAND --help` shows its options):\n",
    );
    let names: Vec<&str> =
        cmd.get_subcommands().map(|c| c.get_name()).filter(|n| *n != "repl").collect();
    s += &wrap("", &names.join(" "));
    s += "\nRepl commands:\n";
    for (m, what) in META {
        s += &format!("  {m:<18} {what}\n");
    }
    s += "\nKeys of :set, by the commands whose options they are:\n";
    let keys = setting_keys(&cmd);
    let global: Vec<&str> = keys
        .iter()
        .filter(|(_, c)| c.iter().any(|c| c == "every command"))
        .map(|(k, _)| k.as_str())
        .collect();
    s += &wrap("every command:", &global.join(" "));
    for sub in cmd.get_subcommands() {
        let own: Vec<&str> = keys
            .iter()
            .filter(|(_, c)| c.iter().any(|c| c == sub.get_name()))
            .map(|(k, _)| k.as_str())
            .collect();
        if !own.is_empty() {
            s += &wrap(&format!("{}:", sub.get_name()), &own.join(" "));
        }
    }
    s
}

/// `words` after a label, wrapped at 80 columns under the first word.
fn wrap(label: &str, words: &str) -> String {
    let indent = if label.is_empty() { 2 } else { 2 + label.len().max(14) + 1 };
    let mut out = String::new();
    let mut line = if label.is_empty() { "  ".to_string() } else { format!("  {label:<14} ") };
    let mut first = true;
    for word in words.split(' ') {
        if !first && line.len() + 1 + word.len() > 80 {
            out += &line;
            out.push('\n');
            line = " ".repeat(indent);
            first = true;
        }
        if !first {
            line.push(' ');
        }
        line += word;
        first = false;
    }
    out + &line + "\n"
}

/// The name closest to `word` by edit distance, if it is close (at most a third of its letters).
fn nearest<'a>(word: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|n| (edit_distance(word, n), n))
        .filter(|(d, n)| *d <= n.chars().count().div_ceil(3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Lines from a pipe or a file: no prompt, no editing, each command's output exactly as the
/// one-shot command's. Fails at the end if any line failed.
pub fn piped(
    repl: &mut Repl,
    session: &mut Session,
    out: &mut dyn Write,
    input: &mut dyn BufRead,
) -> Result<()> {
    let mut failed = Vec::new();
    let mut number = 0;
    loop {
        let mut bytes = Vec::new();
        if input.read_until(b'\n', &mut bytes).context("cannot read standard input")? == 0 {
            break;
        }
        number += 1;
        let outcome = match String::from_utf8(bytes) {
            Ok(line) => repl.line(&line, session, out),
            Err(_) => Outcome::Failed(Failure::Error(anyhow!("line {number} is not UTF-8 text"))),
        };
        match outcome {
            Outcome::Done => {}
            Outcome::Quit => break,
            Outcome::Failed(f) if f.is_broken_pipe() => return Ok(()),
            Outcome::Failed(f) => {
                f.report();
                failed.push(number);
            }
        }
    }
    match failed.as_slice() {
        [] => Ok(()),
        [one] => bail!("1 line failed (line {one})"),
        many => {
            let list: Vec<String> = many.iter().map(|n| n.to_string()).collect();
            bail!("{} lines failed (lines {})", many.len(), list.join(", "))
        }
    }
}

/// Where the history is kept: $LMSCOPE_HISTORY (empty: nowhere), else the user's data directory
/// ($XDG_DATA_HOME/lmscope/history, ~/.local/share/lmscope/history).
pub fn history_path() -> Option<PathBuf> {
    match std::env::var_os("LMSCOPE_HISTORY") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => dirs::data_dir().map(|d| d.join("lmscope").join("history")),
    }
}

/// A writer that remembers whether the last byte it wrote ended a line.
struct Tracked<'a> {
    inner: &'a mut dyn Write,
    at_line_start: bool,
}

impl Write for Tracked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The terminal session: rustyline's line editing, history and completion; Ctrl-C stops a
/// running command, Ctrl-D or :quit leaves.
fn interactive(
    repl: &mut Repl,
    g: &GlobalArgs,
    session: &mut Session,
    out: &mut dyn Write,
) -> Result<()> {
    use rustyline::error::ReadlineError;
    let config = rustyline::Config::builder()
        .max_history_size(1000)
        .context("rustyline's history size")?
        .auto_add_history(false)
        .build();
    let mut editor: rustyline::Editor<Completion, rustyline::history::DefaultHistory> =
        rustyline::Editor::with_config(config).context("cannot start line editing")?;
    editor.set_helper(Some(Completion::new()));
    let history = history_path();
    if let Some(path) = &history {
        // A first session has no history file yet.
        let _ = editor.load_history(path);
    }
    let mut out = Tracked { inner: out, at_line_start: true };
    eprintln!("lmscope repl: loading {} ...", g.model_name().unwrap_or_default());
    match session.model(g) {
        Ok(_) => eprintln!("ready. :help lists the commands; :quit or Ctrl-D leaves."),
        Err(e) => eprintln!(
            "error: {e:#}\n(the session goes on: choose another model with --model or :set model)"
        ),
    }
    // While a command runs the terminal is in its usual mode and Ctrl-C is a signal; while
    // rustyline reads a line it is a key (ReadlineError::Interrupted). Installed after the first
    // load, so that Ctrl-C while loading still ends the process.
    if let Err(e) = ctrlc::set_handler(interrupt::request) {
        eprintln!("warning: Ctrl-C will end the session, not just the command: {e}");
    }
    let mut history_warned = false;
    loop {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            // Ctrl-C at the prompt drops the line being typed.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read a line"),
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
            if let Some(path) = &history {
                if let Err(e) = save_history(&mut editor, path) {
                    if !history_warned {
                        eprintln!("warning: cannot save the history in {}: {e:#}", path.display());
                        history_warned = true;
                    }
                }
            }
        }
        let outcome = repl.line(&line, session, &mut out);
        if !out.at_line_start {
            // An interrupted `generate` stops in the middle of its line.
            let _ = writeln!(out);
            out.at_line_start = true;
        }
        match outcome {
            Outcome::Done => {}
            Outcome::Quit => break,
            Outcome::Failed(f) if f.is_broken_pipe() => return Ok(()),
            Outcome::Failed(f) => f.report(),
        }
    }
    Ok(())
}

fn save_history(
    editor: &mut rustyline::Editor<Completion, rustyline::history::DefaultHistory>,
    path: &std::path::Path,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    editor.save_history(path)?;
    Ok(())
}

/// Tab completion of command names, option names, option values and `:set` keys, all taken from
/// clap's command tree.
pub struct Completion {
    cmd: clap::Command,
}

impl Default for Completion {
    fn default() -> Self {
        Self::new()
    }
}

impl Completion {
    pub fn new() -> Self {
        Completion { cmd: built() }
    }

    /// Where the word being completed starts in `before` (the line up to the cursor), and the
    /// words it can become.
    pub fn candidates(&self, before: &str) -> (usize, Vec<String>) {
        let start = before
            .char_indices()
            .rfind(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before[start..];
        let Some(prior) = shlex::split(&before[..start]) else {
            return (start, Vec::new());
        };
        let all = self.all_candidates(&prior, word);
        (start, all.into_iter().filter(|c| c.starts_with(word)).collect())
    }

    fn all_candidates(&self, prior: &[String], word: &str) -> Vec<String> {
        let longs = |c: &clap::Command| -> Vec<String> {
            c.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect()
        };
        let metas = || -> Vec<String> {
            let mut m: Vec<String> =
                META.iter().map(|(m, _)| m.split(' ').next().unwrap_or(m).to_string()).collect();
            m.dedup();
            m
        };
        match prior.first().map(String::as_str) {
            Some(":set" | ":unset") => {
                let keys = setting_keys(&self.cmd);
                match prior.len() {
                    1 => keys.into_iter().map(|(k, _)| k).collect(),
                    2 if prior[0] == ":set" => {
                        let key = prior[1].trim_start_matches("--");
                        let arg = std::iter::once(&self.cmd)
                            .chain(self.cmd.get_subcommands())
                            .find_map(|c| c.get_arguments().find(|a| a.get_long() == Some(key)));
                        match arg {
                            Some(a) if !a.get_action().takes_values() => {
                                vec!["on".into(), "off".into()]
                            }
                            Some(a) => a
                                .get_possible_values()
                                .iter()
                                .map(|v| v.get_name().to_string())
                                .collect(),
                            None => Vec::new(),
                        }
                    }
                    _ => Vec::new(),
                }
            }
            Some(m) if m.starts_with(':') => Vec::new(),
            _ => {
                // The subcommand: the first word that is neither an option nor an option's value.
                let mut sub = None;
                let mut i = 0;
                while i < prior.len() {
                    let w = &prior[i];
                    if let Some(long) = w.strip_prefix("--") {
                        let takes = self
                            .cmd
                            .get_arguments()
                            .any(|a| a.get_long() == Some(long) && a.get_action().takes_values());
                        if takes {
                            i += 1;
                        }
                    } else if !w.starts_with('-') {
                        sub = self.cmd.find_subcommand(w);
                        break;
                    }
                    i += 1;
                }
                let Some(sub) = sub else {
                    if word.starts_with('-') {
                        return longs(&self.cmd);
                    }
                    let mut names: Vec<String> = self
                        .cmd
                        .get_subcommands()
                        .map(|c| c.get_name().to_string())
                        .filter(|n| n != "repl")
                        .collect();
                    if prior.is_empty() {
                        names.extend(metas());
                    }
                    return names;
                };
                // The values of the option before the cursor (--dtype <TAB>).
                if let Some(long) = prior.last().and_then(|w| w.strip_prefix("--")) {
                    if let Some(a) = sub.get_arguments().find(|a| a.get_long() == Some(long)) {
                        if a.get_action().takes_values() {
                            return a
                                .get_possible_values()
                                .iter()
                                .map(|v| v.get_name().to_string())
                                .collect();
                        }
                    }
                }
                if word.starts_with('-') {
                    let mut l = longs(sub);
                    l.push("--help".into());
                    l.dedup();
                    return l;
                }
                Vec::new()
            }
        }
    }
}

impl rustyline::completion::Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.candidates(&line[..pos]))
    }
}

impl rustyline::hint::Hinter for Completion {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for Completion {}

impl rustyline::validate::Validator for Completion {}

impl rustyline::Helper for Completion {}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        shlex::split(line).unwrap()
    }

    fn repl() -> Repl {
        let cli = Cli::try_parse_from(["lmscope", "--model", "M", "repl"]).unwrap();
        Repl::new(&cli.global)
    }

    fn argv(r: &Repl, line: &str) -> Vec<String> {
        let w = words(line);
        assemble(&w, &r.extras(&w))
    }

    use clap::Parser;

    #[test]
    fn a_line_without_text_gets_the_current_text_after_a_double_dash() {
        let mut r = repl();
        r.text = Some("-The capital".into());
        assert_eq!(
            argv(&r, "logits -k 5"),
            ["lmscope", "logits", "-k", "5", "--model=M", "--", "-The capital"]
        );
        // Given on the line: no current text, and the repl's --model gives way to the line's.
        assert_eq!(
            argv(&r, "logits \"x y\" --model N"),
            ["lmscope", "logits", "x y", "--model", "N"]
        );
        let cli = r.parse(&words("logits -k 5")).unwrap();
        match cli.command {
            Cmd::Logits(a) => {
                assert_eq!(a.input.text, ["-The capital"]);
                assert_eq!(a.top_k, 5);
            }
            other => panic!("{other:?}"),
        }
        // A command with no TEXT positional is left alone.
        assert_eq!(argv(&r, "embed dog"), ["lmscope", "embed", "dog", "--model=M"]);
        // Every command with a TEXT positional gets it, score's TEXTS too.
        for line in ["lens", "attention --layer 1", "sample --steps 2", "kv-check", "score"] {
            let a = argv(&r, line);
            assert_eq!(a[a.len() - 2..], ["--", "-The capital"], "{line}");
            assert!(r.parse(&words(line)).is_ok(), "{line}");
        }
        // An existing `--` keeps the options before it.
        assert_eq!(
            argv(&r, "logits -k 5 --"),
            ["lmscope", "logits", "-k", "5", "--model=M", "--", "-The capital"]
        );
    }

    #[test]
    fn additions_that_do_not_fit_a_line_are_left_out() {
        let mut r = repl();
        r.text = Some("hello".into());
        r.set("temperature 0.5", &mut Vec::new()).unwrap();
        // tokenize --ids conflicts with a text; generate's --temperature needs --sample.
        let cli = r.parse(&words("tokenize --ids 1,2")).unwrap();
        assert!(matches!(cli.command, Cmd::Tokenize(ref a) if a.input.text.is_empty()));
        let cli = r.parse(&words("generate")).unwrap();
        assert!(
            matches!(cli.command, Cmd::Generate(ref a) if a.temperature.is_none() && a.input.text == ["hello"])
        );
        let cli = r.parse(&words("generate --sample")).unwrap();
        assert!(matches!(cli.command, Cmd::Generate(ref a) if a.temperature == Some(0.5)));
        let cli = r.parse(&words("logits")).unwrap();
        assert!(matches!(cli.command, Cmd::Logits(ref a) if a.temperature == Some(0.5)));
        // The line's own value wins.
        let cli = r.parse(&words("logits --temperature 2")).unwrap();
        assert!(matches!(cli.command, Cmd::Logits(ref a) if a.temperature == Some(2.0)));
        // A line that is wrong gets clap's error for what it says.
        let err = r.parse(&words("logits --bogus")).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let err = r.parse(&words("lgits")).unwrap_err();
        assert!(err.to_string().contains("logits"), "{err}");
    }

    #[test]
    fn settings_are_checked_and_flags_turn_on_and_off() {
        let mut r = repl();
        let mut out = Vec::new();
        assert!(r.set("temperature abc", &mut out).is_err());
        let err = r.set("tmperature 1", &mut out).unwrap_err();
        assert!(err.to_string().contains("did you mean temperature"), "{err}");
        assert!(r.set("threads 2", &mut out).is_err());
        assert!(r.set("json maybe", &mut out).is_err());
        assert!(r.set("dtype f8", &mut out).is_err());
        r.set("dtype bf16", &mut out).unwrap();
        r.set("json", &mut out).unwrap();
        let cli = r.parse(&words("model")).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.dtype, Dtype::Bf16);
        r.set("json off", &mut out).unwrap();
        assert!(!r.parse(&words("model")).unwrap().global.json);
        r.unset("dtype").unwrap();
        assert_eq!(r.parse(&words("model")).unwrap().global.dtype, Dtype::F32);
        assert!(r.unset("dtype").is_err());
        r.set("", &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "model = M\njson = off\n");
    }

    #[test]
    fn the_repls_own_global_options_start_as_settings() {
        let cli = Cli::try_parse_from(["lmscope", "--json", "--dtype", "f16", "repl"]).unwrap();
        let r = Repl::new(&cli.global);
        let parsed = r.parse(&words("model")).unwrap();
        assert!(parsed.global.json);
        assert_eq!(parsed.global.dtype, Dtype::F16);
        // Every global option is either a setting global_settings knows or not settable.
        let known = ["model", "revision", "dtype", "json", "quantized", "timings"];
        for arg in Cli::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    known.contains(&long) || NOT_SETTABLE.contains(&long),
                    "the global option --{long} is not carried into the repl's lines"
                );
            }
        }
    }

    #[test]
    fn without_text_removes_the_typed_text_only() {
        assert_eq!(without_text(&words("logits -k 5 \"The capital\"")), words("logits -k 5"));
        assert_eq!(without_text(&words("logits -k 5")), words("logits -k 5"));
        // The text equal to an option's value: the positional one goes.
        assert_eq!(without_text(&words("--model x logits x")), words("--model x logits"));
        assert_eq!(without_text(&words("argmax --steps 2 -- -x")), words("argmax --steps 2 --"));
        assert_eq!(without_text(&words("embed dog")), words("embed dog"));
        // A TEXT of several words, and the other inputs.
        assert_eq!(without_text(&words("logits The capital -k 5 of")), words("logits -k 5"));
        assert_eq!(without_text(&words("logits The -k 5 The")), words("logits -k 5"));
        assert_eq!(without_text(&words("logits --ids 1, 2 -k 5")), words("logits -k 5"));
        assert_eq!(without_text(&words("logits -k 5 --ids=[1, 2]")), words("logits -k 5"));
        assert_eq!(
            without_text(&words("argmax --file t.txt --steps 2")),
            words("argmax --steps 2")
        );
    }

    #[test]
    fn pick_runs_a_chat_line_without_wrapping_again() {
        assert_eq!(
            without_chat(&without_text(&words("logits --chat --system \"Be brief.\" -k 3 Hi"))),
            words("logits -k 3")
        );
        assert_eq!(
            without_chat(&words("argmax --system=x --chat --steps 2")),
            words("argmax --steps 2")
        );
        assert_eq!(without_chat(&words("logits -k 3")), words("logits -k 3"));
    }

    #[test]
    fn pick_choice_by_rank_text_or_token() {
        let c = |id, token: &str, text: &str| app::Candidate {
            id,
            token: token.into(),
            bytes: text.as_bytes().to_vec(),
        };
        let r = Ranking {
            text: "The capital of Finland is".into(),
            ids: vec![1, 2],
            position: 1,
            candidates: vec![c(5, "Ġthe", " the"), c(6, "ĠHelsinki", " Helsinki"), c(7, "2", "2")],
        };
        assert_eq!(pick_choice("1", &r).unwrap(), 0);
        assert_eq!(pick_choice("\" Helsinki\"", &r).unwrap(), 1);
        assert_eq!(pick_choice("ĠHelsinki", &r).unwrap(), 1);
        assert_eq!(pick_choice("'2'", &r).unwrap(), 2);
        assert_eq!(pick_choice("2", &r).unwrap(), 1);
        assert!(pick_choice("0", &r).is_err());
        assert!(pick_choice("4", &r).is_err());
        let err = pick_choice("\" Paris\"", &r).unwrap_err().to_string();
        assert!(err.contains("\" Helsinki\""), "{err}");
        assert!(pick_choice("", &r).is_err());
    }

    #[test]
    fn completion_comes_from_clap() {
        let c = Completion::new();
        assert_eq!(c.candidates("lo"), (0, vec!["logits".to_string()]));
        assert_eq!(c.candidates(":p"), (0, vec![":pick".to_string()]));
        let (start, got) = c.candidates("logits --te");
        assert_eq!((start, got), (7, vec!["--temperature".to_string()]));
        assert!(c.candidates("generate --").1.contains(&"--max-new-tokens".to_string()));
        assert!(c.candidates("generate --").1.contains(&"--json".to_string()));
        assert_eq!(
            c.candidates("model --dtype "),
            (14, vec!["f32".to_string(), "bf16".to_string(), "f16".to_string()])
        );
        assert_eq!(c.candidates("--model x lo").1, vec!["logits".to_string()]);
        assert_eq!(c.candidates(":set tem").1, vec!["temperature".to_string()]);
        assert_eq!(c.candidates(":set json o").1, vec!["on".to_string(), "off".to_string()]);
        assert!(c.candidates("logits \"The cap").1.is_empty());
        assert!(!c.candidates("").1.contains(&"repl".to_string()));
    }

    #[test]
    fn nearest_names() {
        assert_eq!(nearest(":pik", [":pick", ":back"].into_iter()), Some(":pick"));
        assert_eq!(nearest(":zzzzzz", [":pick", ":back"].into_iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn help_fits_80_columns_and_lists_the_keys() {
        let h = help();
        for line in h.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line}");
        }
        for key in ["temperature", "top-k", "json", "max-new-tokens", "ignore-eos"] {
            assert!(h.contains(&format!(" {key}")), "{key} missing from:\n{h}");
        }
    }

    #[test]
    fn text_command_sets_shows_and_undoes() {
        let mut r = repl();
        let mut session = Session::new();
        let mut out = Vec::new();
        assert!(matches!(r.line(":text", &mut session, &mut out), Outcome::Done));
        assert!(matches!(r.line(":text The capital of", &mut session, &mut out), Outcome::Done));
        assert_eq!(r.text(), Some("The capital of"));
        assert!(matches!(r.line(":text \" Helsinki \"", &mut session, &mut out), Outcome::Done));
        assert_eq!(r.text(), Some(" Helsinki "));
        assert!(matches!(r.line(":back", &mut session, &mut out), Outcome::Done));
        assert_eq!(r.text(), Some("The capital of"));
        assert!(matches!(r.line(":back", &mut session, &mut out), Outcome::Done));
        assert!(matches!(r.line(":back", &mut session, &mut out), Outcome::Failed(_)));
        assert!(matches!(r.line(":pick 1", &mut session, &mut out), Outcome::Failed(_)));
        assert!(matches!(r.line(":quit", &mut session, &mut out), Outcome::Quit));
        assert!(matches!(r.line("# a comment", &mut session, &mut out), Outcome::Done));
        assert!(matches!(r.line("tokenize \"open", &mut session, &mut out), Outcome::Failed(_)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "no current text: `:text ...` sets one\ntext: \"The capital of\"\nno current text: `:text ...` sets one\n"
        );
    }
}
