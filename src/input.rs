//! Where a prompt comes from: the words of the command line, standard input (`-`), a file
//! (`--file PATH`) or token ids (`--ids 504,3575`). [`InputArgs`] is the one set of options every
//! command that runs on a prompt flattens into its arguments, and [`InputArgs::resolve`] turns
//! them into the [`Prompt`] the stages take, so every command reads its input the same way.

use crate::tokenizer::{Token, Tokenizer};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The most bytes a text read from standard input or a file may have (a model's context holds
/// some tens of kilobytes of text; this only stops a wrong file from filling the memory).
pub const MAX_TEXT_BYTES: u64 = 16 << 20;

/// The options that give a command its prompt.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// The text: several words are joined with single spaces, as echo does (quote the text to
    /// keep its exact spacing); `-` alone reads it from standard input
    #[arg(value_name = "TEXT", required_unless_present_any = ["file", "ids"])]
    pub text: Vec<String>,

    /// Read the text from a file (`-`: standard input); one final newline is dropped
    #[arg(long, value_name = "PATH", conflicts_with_all = ["text", "ids"])]
    pub file: Option<PathBuf>,

    /// Token ids instead of a text, as tokenize prints them: 504,3575,282 (also "504, 3575" or
    /// "[504, 3575]"); used exactly as given (no BOS token is added)
    #[arg(long, value_name = "IDS", num_args = 1.., value_parser = parse_ids, conflicts_with_all = ["text", "chat"])]
    pub ids: Option<Vec<IdList>>,

    #[command(flatten)]
    pub chat: crate::cli::ChatArgs,
}

/// The ids of one `--ids` word (`504,3575`, `[504,`, `3575]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdList(pub Vec<u32>);

/// Parses one word of `--ids`: ids separated by commas or spaces, in optional brackets.
pub fn parse_ids(s: &str) -> Result<IdList, String> {
    let inner = s.trim();
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let inner = inner.strip_suffix(']').unwrap_or(inner);
    inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| format!("{p:?} is not a token id (ids are whole numbers, 0 or more)"))
        })
        .collect::<Result<Vec<u32>, String>>()
        .map(IdList)
}

/// What a command runs on: a text, or token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A text, tokenized as `tokenizer(text)` does in transformers.
    Text(String),
    /// Token ids, used as they are (`--ids`).
    Ids(Vec<u32>),
}

impl Prompt {
    /// Whether there is nothing to run on (an empty text; ids are never empty).
    pub fn is_empty(&self) -> bool {
        match self {
            Prompt::Text(t) => t.is_empty(),
            Prompt::Ids(ids) => ids.is_empty(),
        }
    }

    /// The tokens: the text encoded, or each id described (ids outside the vocabulary are an
    /// error that names --ids). Tokens of ids have no offsets: they did not come from a text.
    pub fn tokens(&self, tokenizer: &Tokenizer) -> Result<Vec<Token>> {
        match self {
            Prompt::Text(t) => tokenizer.encode(t),
            Prompt::Ids(ids) => {
                check_ids(tokenizer, ids)?;
                ids.iter().map(|&id| tokenizer.describe(id)).collect()
            }
        }
    }

    /// The token ids.
    pub fn ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        match self {
            Prompt::Text(t) => tokenizer.encode_ids(t),
            Prompt::Ids(ids) => {
                check_ids(tokenizer, ids)?;
                Ok(ids.clone())
            }
        }
    }

    /// The text, as reports show it: the one given, or the ids decoded (`tokenizer.decode`).
    pub fn text(&self, tokenizer: &Tokenizer) -> Result<String> {
        match self {
            Prompt::Text(t) => Ok(t.clone()),
            Prompt::Ids(ids) => {
                check_ids(tokenizer, ids)?;
                tokenizer.decode(ids)
            }
        }
    }
}

/// Refuses ids the vocabulary does not have, in one line that names the option.
fn check_ids(tokenizer: &Tokenizer, ids: &[u32]) -> Result<()> {
    ensure!(!ids.is_empty(), "--ids is empty: give at least one token id");
    let limit = tokenizer.vocab_size();
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= limit) {
        bail!(
            "--ids: token id {bad} is out of range: the vocabulary has ids 0..{}",
            limit.saturating_sub(1)
        );
    }
    Ok(())
}

/// Whether a command may read its text from standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdin {
    /// A one-shot command: `-` reads standard input to its end.
    #[default]
    Readable,
    /// The repl: standard input holds the session's own lines.
    Taken,
}

impl InputArgs {
    /// The prompt these options give: the words joined with single spaces, standard input,
    /// a file's text, or the ids.
    pub fn resolve(&self, stdin: Stdin) -> Result<Prompt> {
        if let Some(lists) = &self.ids {
            let ids: Vec<u32> = lists.iter().flat_map(|l| l.0.iter().copied()).collect();
            ensure!(!ids.is_empty(), "--ids is empty: give at least one token id");
            return Ok(Prompt::Ids(ids));
        }
        if let Some(path) = &self.file {
            return read_text(path, stdin).map(Prompt::Text);
        }
        if self.text.len() == 1 && self.text[0] == "-" {
            return read_text(Path::new("-"), stdin).map(Prompt::Text);
        }
        ensure!(!self.text.is_empty(), "give a TEXT, --file PATH or --ids");
        Ok(Prompt::Text(self.text.join(" ")))
    }
}

/// `score`'s candidates: each TEXT argument (`-`: standard input), each `--file`'s text, then each
/// `--ids` (one word each), in that order. Standard input is read at most once.
pub fn candidates(
    texts: &[String],
    files: &[PathBuf],
    ids: &[IdList],
    stdin: Stdin,
) -> Result<Vec<Prompt>> {
    let dash = Path::new("-");
    let from_stdin =
        texts.iter().filter(|t| *t == "-").count() + files.iter().filter(|f| *f == dash).count();
    ensure!(from_stdin <= 1, "standard input (`-`) can give only one of the texts to score");
    let mut out = Vec::new();
    for t in texts {
        out.push(Prompt::Text(if t == "-" { read_text(dash, stdin)? } else { t.clone() }));
    }
    for f in files {
        out.push(Prompt::Text(read_text(f, stdin)?));
    }
    for list in ids {
        ensure!(!list.0.is_empty(), "--ids is empty: give at least one token id");
        out.push(Prompt::Ids(list.0.clone()));
    }
    ensure!(!out.is_empty(), "give a text to score (TEXTS, --file PATH or --ids)");
    Ok(out)
}

/// The text of a file, or of standard input for `-`: UTF-8, at most [`MAX_TEXT_BYTES`], one final
/// newline (`\n` or `\r\n`, the one `echo` and editors add) dropped.
pub fn read_text(path: &Path, stdin: Stdin) -> Result<String> {
    let from_stdin = path == Path::new("-");
    let name = if from_stdin { "standard input".to_string() } else { path.display().to_string() };
    let mut bytes = Vec::new();
    if from_stdin {
        ensure!(
            stdin == Stdin::Readable,
            "the repl reads its lines from standard input, so a text cannot come from there: give \
             the text on the line, set it with :text, or read it with --file PATH"
        );
        let stdin = std::io::stdin();
        if std::io::IsTerminal::is_terminal(&stdin) {
            eprintln!("reading the text from standard input (end it with Ctrl-D)");
        }
        stdin
            .lock()
            .take(MAX_TEXT_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read --file {name}"))?;
        ensure!(!file.metadata().is_ok_and(|m| m.is_dir()), "--file {name} is a directory");
        file.take(MAX_TEXT_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read --file {name}"))?;
    }
    ensure!(
        bytes.len() as u64 <= MAX_TEXT_BYTES,
        "{name} holds more than {} MiB: lmscope reads texts of at most that size",
        MAX_TEXT_BYTES >> 20
    );
    let mut text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{name} is not UTF-8 text (byte {} is not)", e.utf8_error().valid_up_to())
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    ensure!(!text.is_empty(), "the text from {name} is empty");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_the_forms_people_write_them() {
        assert_eq!(parse_ids("504,3575,282"), Ok(IdList(vec![504, 3575, 282])));
        assert_eq!(parse_ids("[504, 3575]"), Ok(IdList(vec![504, 3575])));
        assert_eq!(parse_ids("[504,"), Ok(IdList(vec![504])));
        assert_eq!(parse_ids("3575]"), Ok(IdList(vec![3575])));
        assert_eq!(parse_ids("504 3575"), Ok(IdList(vec![504, 3575])));
        assert_eq!(parse_ids("[]"), Ok(IdList(vec![])));
        assert!(parse_ids("5x").unwrap_err().contains("\"5x\" is not a token id"));
        assert!(parse_ids("-1").is_err());
        assert!(parse_ids("1]2").is_err());
        assert!(parse_ids("99999999999").is_err());
    }

    proptest::proptest! {
        #[test]
        fn ids_round_trip_in_every_form(ids in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..20)) {
            let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            for form in [list.join(","), list.join(", "), format!("[{}]", list.join(", ")), format!("{ids:?}")] {
                proptest::prop_assert_eq!(parse_ids(&form), Ok(IdList(ids.clone())));
            }
        }

        #[test]
        fn any_word_parses_or_is_refused(word in "\\PC{0,16}") {
            let _ = parse_ids(&word);
        }
    }

    fn args(text: &[&str], ids: Option<&[&str]>) -> InputArgs {
        InputArgs {
            text: text.iter().map(|s| s.to_string()).collect(),
            file: None,
            ids: ids.map(|w| w.iter().map(|s| parse_ids(s).unwrap()).collect()),
            chat: Default::default(),
        }
    }

    #[test]
    fn words_are_joined_with_single_spaces_and_ids_are_joined_in_order() {
        let p = args(&["The", "capital"], None).resolve(Stdin::Readable).unwrap();
        assert_eq!(p, Prompt::Text("The capital".into()));
        let p = args(&["  The  capital "], None).resolve(Stdin::Readable).unwrap();
        assert_eq!(p, Prompt::Text("  The  capital ".into()));
        // `-` among other words is a word.
        let p = args(&["a", "-", "b"], None).resolve(Stdin::Readable).unwrap();
        assert_eq!(p, Prompt::Text("a - b".into()));
        let p = args(&[], Some(&["[504,", "3575]"])).resolve(Stdin::Readable).unwrap();
        assert_eq!(p, Prompt::Ids(vec![504, 3575]));
        let e = args(&[], Some(&["[]"])).resolve(Stdin::Readable).unwrap_err();
        assert_eq!(e.to_string(), "--ids is empty: give at least one token id");
    }

    #[test]
    fn the_repl_refuses_standard_input_without_reading_it() {
        let e = args(&["-"], None).resolve(Stdin::Taken).unwrap_err().to_string();
        assert!(e.starts_with("the repl reads its lines from standard input"), "{e}");
    }

    #[test]
    fn files_lose_one_final_newline_and_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "The capital\n\n").unwrap();
        assert_eq!(read_text(&path, Stdin::Taken).unwrap(), "The capital\n");
        std::fs::write(&path, "The capital\r\n").unwrap();
        assert_eq!(read_text(&path, Stdin::Taken).unwrap(), "The capital");
        std::fs::write(&path, b"ab\xFF").unwrap();
        let e = read_text(&path, Stdin::Taken).unwrap_err().to_string();
        assert!(e.ends_with("is not UTF-8 text (byte 2 is not)"), "{e}");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_text(&path, Stdin::Taken).unwrap_err().to_string().contains("is empty"));
        let e = read_text(&dir.path().join("missing"), Stdin::Taken).unwrap_err();
        assert!(format!("{e:#}").starts_with("cannot read --file "), "{e:#}");
        let e = read_text(dir.path(), Stdin::Taken).unwrap_err();
        assert!(format!("{e:#}").ends_with("is a directory"), "{e:#}");
    }
}
