//! Where a prompt comes from (issue 17): several words joined with single spaces, `-` for
//! standard input, `--file PATH`, `--ids` in the forms people write them, for every command that
//! runs on a prompt, with the same numbers whichever way the prompt came; the repl refuses `-`.
//! Long prompts: `logits` abbreviates its rows, `argmax` and `generate` shorten the echo.

mod common;

use common::{lmscope, lmscope_err, lmscope_json, real_model, tiny_dir};
use serde_json::Value;

const TEXT: &str = "The capital of Finland is";
/// The tiny fixture's ids of TEXT.
const TINY_IDS: &str = "277,308,279,446,275";

fn tiny() -> String {
    tiny_dir().to_str().unwrap().to_string()
}

fn gguf() -> String {
    real_model().to_str().unwrap().to_string()
}

/// The stdout of a successful command, with `stdin` on its standard input.
fn stdout_with(args: &[&str], stdin: &str) -> String {
    let out = lmscope().args(args).write_stdin(stdin).output().expect("lmscope runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn stdout(args: &[&str]) -> String {
    stdout_with(args, "")
}

/// The ids the model's tokenizer gives a text, comma-separated.
fn ids_of(model: &str, text: &str) -> String {
    let doc = lmscope_json(&["--model", model, "tokenize", text]);
    let ids: Vec<String> =
        doc["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap().to_string()).collect();
    ids.join(",")
}

#[test]
fn several_words_are_one_text_joined_with_single_spaces() {
    let t = tiny();
    let quoted = stdout(&["--model", &t, "tokenize", TEXT]);
    let words: Vec<&str> = TEXT.split(' ').collect();
    let args: Vec<&str> =
        ["--model", t.as_str(), "tokenize"].iter().copied().chain(words).collect();
    assert_eq!(stdout(&args), quoted);
    // Options may come between the words, as with any positional argument.
    let a = stdout(&["--model", &t, "logits", "The", "capital", "-k", "3", "of", "Finland", "is"]);
    assert_eq!(a, stdout(&["--model", &t, "logits", "-k", "3", TEXT]));
    // Quoting keeps the exact spacing: two spaces are not one.
    let doc = lmscope_json(&["--model", &t, "tokenize", "The  capital"]);
    assert_eq!(doc["input"], "The  capital");
    let doc = lmscope_json(&["--model", &t, "tokenize", "The", " capital"]);
    assert_eq!(doc["input"], "The  capital");
}

#[test]
fn standard_input_and_a_file_give_the_same_text() {
    let t = tiny();
    let expected = stdout(&["--model", &t, "tokenize", TEXT]);
    // One final newline (echo's) is dropped.
    assert_eq!(stdout_with(&["--model", &t, "tokenize", "-"], &format!("{TEXT}\n")), expected);
    assert_eq!(stdout_with(&["--model", &t, "tokenize", "--file", "-"], TEXT), expected);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompt.txt");
    std::fs::write(&path, format!("{TEXT}\n")).unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(stdout(&["--model", &t, "tokenize", "--file", p]), expected);
    // Anything else is kept: a second newline, spaces.
    std::fs::write(&path, format!(" {TEXT}\n\n")).unwrap();
    let doc = lmscope_json(&["--model", &t, "tokenize", "--file", p]);
    assert_eq!(doc["input"], format!(" {TEXT}\n"));
    // `-` among other words is a word.
    let doc = lmscope_json(&["--model", &t, "tokenize", "a", "-", "b"]);
    assert_eq!(doc["input"], "a - b");
}

#[test]
fn bad_input_is_one_clear_line() {
    let t = tiny();
    let one_line = |e: &str| {
        assert_eq!(e.lines().count(), 1, "{e}");
        e.to_string()
    };
    let e = lmscope_err(&["--model", &t, "logits", "--ids", "1,600"]);
    assert_eq!(
        one_line(&e),
        "error: --ids: token id 600 is out of range: the vocabulary has ids 0..511\n"
    );
    let e = lmscope_err(&["--model", &t, "tokenize", "--ids", "99999"]);
    assert!(one_line(&e).contains("--ids: token id 99999 is out of range"), "{e}");
    let e = lmscope_err(&["--model", &t, "logits", "--file", "/nonexistent/prompt.txt"]);
    assert!(e.starts_with("error: cannot read --file /nonexistent/prompt.txt: "), "{e}");
    let e = lmscope_err(&["--model", &t, "logits", "--ids", "[]"]);
    assert!(e.contains("--ids is empty"), "{e}");
    let out = lmscope().args(["--model", &t, "tokenize", "-"]).write_stdin(&b"ab\xFF"[..]).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: standard input is not UTF-8 text (byte 2 is not)\n"
    );
    let out = lmscope().args(["--model", &t, "logits", "-"]).write_stdin("\n").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: the text from standard input is empty\n"
    );
    // Usage errors (clap's, exit 2): not a number; a text and --ids at once.
    let out = lmscope().args(["--model", &t, "logits", "--ids", "1,x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"x\" is not a token id"));
    let out = lmscope().args(["--model", &t, "logits", "hi", "--ids", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = lmscope().args(["--model", &t, "logits"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<TEXT>"));
}

#[test]
fn ids_in_every_form_people_write_them() {
    let t = tiny();
    let expected = lmscope_json(&["--model", &t, "logits", TEXT]);
    for form in [
        vec![TINY_IDS],
        vec!["277, 308, 279, 446, 275"],
        vec!["[277, 308, 279, 446, 275]"],
        // Unquoted, as a shell splits `--ids 277, 308, ...` and `--ids [277, 308, ...]`.
        vec!["277,", "308,", "279,", "446,", "275"],
        vec!["[277,", "308,", "279,", "446,", "275]"],
    ] {
        let mut args = vec!["--model", t.as_str(), "logits", "--ids"];
        args.extend(&form);
        assert_eq!(lmscope_json(&args), expected, "{form:?}");
    }
}

/// A JSON document without what differs between runs or ways of giving the prompt by design:
/// timings (`ms_*`), the trace's command line, and token offsets (ids come from no text).
fn comparable(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|k, _| {
                    !k.starts_with("ms_") && !["command", "start", "end"].contains(&k.as_str())
                });
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// Runs a command on the text given four ways (argument, standard input, file, ids) and checks
/// the JSON is the same.
fn same_every_way(model: &str, command: &[&str], text: &str) {
    let ids = ids_of(model, text);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompt.txt");
    std::fs::write(&path, text).unwrap();
    let run = |input: &[&str], stdin: &str| -> Value {
        let mut args = vec!["--model", model, "--json"];
        args.extend(command);
        args.extend(input);
        let out = lmscope().args(&args).write_stdin(stdin).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        comparable(serde_json::from_slice(&out.stdout).unwrap())
    };
    let expected = run(&[text], "");
    assert_eq!(run(&["-"], &format!("{text}\n")), expected, "{command:?} -");
    assert_eq!(run(&["--file", path.to_str().unwrap()], ""), expected, "{command:?} --file");
    let by_ids = run(&["--ids", &ids], "");
    if command[0] == "trace" {
        // The trace's tokenize section is tokenize's: of ids it has no input and no round trip.
        for key in ["logits", "lens", "attention", "next", "residual", "embed", "input"] {
            assert_eq!(by_ids[key], expected[key], "trace --ids: {key}");
        }
    } else {
        assert_eq!(by_ids, expected, "{command:?} --ids");
    }
}

#[test]
fn every_command_that_takes_a_prompt_takes_it_every_way_on_the_tiny_model() {
    let t = tiny();
    for command in [
        &["logits", "-k", "3"][..],
        &["argmax", "--steps", "2"],
        &["generate", "--max-new-tokens", "3"],
        &["sample", "--seed", "7", "--steps", "2"],
        &["lens", "-k", "2"],
        &["attention", "--layer", "1"],
        &["kv-check", "--steps", "2"],
        &["trace"],
        &["score"],
    ] {
        same_every_way(&t, command, TEXT);
    }
}

/// Where the numbers matter: the real model's logits of `--ids` are those of the text, exactly.
#[test]
fn ids_give_exactly_the_logits_of_the_text_on_the_real_model() {
    let g = gguf();
    let ids = ids_of(&g, TEXT);
    assert_eq!(ids, "504,3575,282,17446,314");
    let by_text = stdout(&["--model", &g, "--json", "logits", "--full", TEXT]);
    let by_ids = stdout(&["--model", &g, "--json", "logits", "--full", "--ids", &ids]);
    assert_eq!(by_ids, by_text);
    let by_text = stdout(&["--model", &g, "argmax", "--steps", "3", TEXT]);
    assert_eq!(stdout(&["--model", &g, "argmax", "--steps", "3", "--ids", &ids]), by_text);
}

#[test]
fn score_takes_candidates_from_arguments_files_and_ids() {
    let t = tiny();
    let m = ["--model", t.as_str(), "--json", "score", "--prompt", "The capital of"];
    let run = |extra: &[&str], stdin: &str| -> Value {
        let args: Vec<&str> = m.iter().chain(extra).copied().collect();
        let out = lmscope().args(&args).write_stdin(stdin).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let expected = run(&[" Finland is", " Sweden is"], "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.txt");
    std::fs::write(&path, " Sweden is\n").unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(run(&["-", "--file", p], " Finland is\n"), expected);
    let finland = ids_of(&t, " Finland is");
    let sweden = ids_of(&t, " Sweden is");
    assert_eq!(run(&["--ids", &finland, "--ids", &sweden], ""), expected);
    // Each argument is one candidate: words are not joined.
    let doc = run(&["a", "b"], "");
    assert_eq!(doc["candidates"].as_array().unwrap().len(), 2);
    let e = lmscope_err(&["--model", &t, "score", "-", "--file", "-"]);
    assert!(e.contains("standard input (`-`) can give only one of the texts"), "{e}");
}

#[test]
fn the_repl_refuses_standard_input_and_reads_files() {
    let t = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompt.txt");
    std::fs::write(&path, format!("{TEXT}\n")).unwrap();
    let p = path.to_str().unwrap();
    let lines =
        format!("tokenize -\nlogits --file - -k 2\ntokenize --file {p}\ntokenize The capital\n");
    let out = lmscope()
        .args(["--model", &t, "repl"])
        .env("LMSCOPE_HISTORY", "")
        .write_stdin(lines)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("error: the repl reads its lines from standard input").count(),
        2,
        "{stderr}"
    );
    // The lines after them ran: `-` read nothing of the session's input.
    let expected = stdout(&["--model", &t, "tokenize", TEXT])
        + &stdout(&["--model", &t, "tokenize", "The capital"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn pick_extends_a_text_given_as_words_or_ids() {
    let t = tiny();
    let lines = ":text\nlogits --ids 277,308 -k 2\n:pick 1\nlogits The capital -k 2\n:pick 1\n";
    let out = lmscope()
        .args(["--model", &t, "repl"])
        .env("LMSCOPE_HISTORY", "")
        .write_stdin(lines)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = String::from_utf8(out.stdout).unwrap();
    let first = stdout(&["--model", &t, "logits", "The capital", "-k", "2"]);
    let doc = lmscope_json(&["--model", &t, "logits", "The capital", "-k", "1"]);
    let picked = format!("The capital{}", doc["top"][0]["text"].as_str().unwrap());
    // :pick runs the line again without its --ids or its words, on the longer text.
    let second = stdout(&["--model", &t, "logits", &picked, "-k", "2"]);
    let expected =
        "no current text: `:text ...` sets one\n".to_string() + &first + &second + &first + &second;
    assert_eq!(got, expected);
}

#[test]
fn logits_of_a_long_prompt_shows_the_first_and_last_rows() {
    let t = tiny();
    let long = "one two three four five six seven eight nine ten";
    let out = stdout(&["--model", &t, "logits", long, "-k", "2"]);
    let doc = lmscope_json(&["--model", &t, "logits", long, "-k", "2"]);
    let n = doc["rows"].as_array().unwrap().len();
    assert!(n > 8, "{n} rows");
    let rows: Vec<&str> =
        out.lines().skip(1).take_while(|l| !l.starts_with("next-token")).collect();
    assert_eq!(rows.len(), 7, "{out}");
    assert_eq!(rows[3], format!("  ...  ({} rows left out; --json lists every row)", n - 6));
    assert!(rows[0].starts_with("    0 "), "{}", rows[0]);
    assert!(rows[6].starts_with(&format!("> {:>3} ", n - 1)), "{}", rows[6]);
    // The ranked row is shown wherever it is.
    let out = stdout(&["--model", &t, "logits", long, "-k", "2", "--position", "5"]);
    let rows: Vec<&str> =
        out.lines().skip(1).take_while(|l| !l.starts_with("next-token")).collect();
    assert_eq!(rows.len(), 9, "{out}");
    assert!(rows[4].starts_with(">   5 "), "{out}");
    assert_eq!(rows[3], "  ...  (2 rows left out; --json lists every row)");
    // Six rows or fewer: all of them (the golden logits table has five).
    let out = stdout(&["--model", &t, "logits", "a b c", "-k", "2"]);
    assert!(!out.contains("left out"), "{out}");
}

#[test]
fn argmax_and_generate_shorten_a_long_prompt_they_echo() {
    let t = tiny();
    let long = "one two three four five six seven eight nine ten ".repeat(3);
    let doc = lmscope_json(&["--model", &t, "argmax", &long]);
    let n = doc["prompt_ids"].as_array().unwrap().len();
    assert!(n > 64, "{n}");
    // The JSON keeps the whole prompt.
    assert!(doc["text"].as_str().unwrap().starts_with(&long));
    let out = stdout(&["--model", &t, "argmax", &long]);
    let marker = format!("[... {} tokens left out ...]", n - 16 - 32);
    let text = out.lines().find(|l| l.starts_with("text: ")).unwrap();
    assert!(text.contains(&marker), "{text}");
    assert!(text.len() < long.len(), "{text}");
    assert!(text.starts_with("text: one two three"), "{text}");
    let out = stdout(&["--model", &t, "generate", &long, "--max-new-tokens", "3"]);
    assert!(out.starts_with("one two three"), "{out}");
    assert!(out.lines().next().unwrap().contains(&marker), "{out}");
    let doc = lmscope_json(&["--model", &t, "generate", &long, "--max-new-tokens", "3"]);
    assert_eq!(doc["prompt"], long.as_str());
    // A short prompt is echoed whole.
    let out = stdout(&["--model", &t, "argmax", TEXT]);
    assert!(out.contains(&format!("text: {TEXT}")), "{out}");
    // sample echoes the context of every step, and the text at the end, the same way.
    let sample = ["--model", &t, "sample", &long, "--steps", "2", "--seed", "1", "--rows", "3"];
    let out = stdout(&sample);
    let steps: Vec<&str> = out.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 2, "{out}");
    for line in steps
        .iter()
        .chain(out.lines().filter(|l| l.starts_with("text: ")).take(1).collect::<Vec<_>>().iter())
    {
        assert!(line.contains(&marker) && line.len() < long.len(), "{line}");
    }
    assert!(out.lines().any(|l| l.starts_with("text: one two three")), "{out}");
    let doc = lmscope_json(&sample);
    assert_eq!(doc["prompt"], long.as_str());
    assert!(doc["text"].as_str().unwrap().starts_with(&long));
    let out = stdout(&["--model", &t, "sample", TEXT, "--seed", "1"]);
    assert!(
        out.contains(&format!("step 1: the next token after {TEXT:?}")) || out.contains(TEXT),
        "{out}"
    );
    assert!(!out.contains("left out ..."), "{out}");
}
