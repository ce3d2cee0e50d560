//! `lmscope repl`: a piped session prints exactly what the one-shot commands print, goes on after
//! a failing line (and exits 1 at the end), applies :text and :set, picks and undoes; an
//! interactive session through a pseudo-terminal: the prompt, up-arrow recall, the history file,
//! Ctrl-C during a long generate.

mod common;

use common::{lmscope, real_model, tiny_dir};
use std::process::Output;

fn gguf() -> String {
    real_model().to_str().unwrap().to_string()
}

fn tiny() -> String {
    tiny_dir().to_str().unwrap().to_string()
}

/// Runs `lmscope GLOBAL... repl` with `lines` on standard input (no history file).
fn session(global: &[&str], lines: &[&str]) -> Output {
    let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    lmscope()
        .args(global)
        .arg("repl")
        .env("LMSCOPE_HISTORY", "")
        .write_stdin(input)
        .output()
        .expect("lmscope runs")
}

/// The stdout of a successful one-shot command.
fn oneshot(args: &[&str]) -> String {
    let out = lmscope().args(args).output().expect("lmscope runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A command as a repl line, quoted as a shell would need it.
fn line(args: &[&str]) -> String {
    shlex::try_join(args.iter().copied()).unwrap()
}

/// Runs each command in one session and alone, and compares the bytes.
fn same_as_oneshot(global: &[&str], commands: &[&[&str]]) {
    let lines: Vec<String> = commands.iter().map(|c| line(c)).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let out = session(global, &lines);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the session failed: {stderr}");
    let mut expected = String::new();
    for c in commands {
        let args: Vec<&str> = global.iter().chain(c.iter()).copied().collect();
        expected += &oneshot(&args);
    }
    let got = String::from_utf8(out.stdout).unwrap();
    if got != expected {
        let n = got.lines().zip(expected.lines()).take_while(|(a, b)| a == b).count();
        panic!(
            "the session's output differs from the one-shot commands' at line {}:\n  session:  {:?}\n  one-shot: {:?}",
            n + 1,
            got.lines().nth(n),
            expected.lines().nth(n)
        );
    }
}

#[test]
fn piped_session_prints_the_one_shot_bytes_on_the_tiny_model() {
    let t = tiny();
    same_as_oneshot(
        &["--model", &t],
        &[
            &["tokenize", "The capital of Finland is"],
            &["tokenize", "--ids", "277,308,1"],
            &["logits", "-k", "5", "The capital of Finland is", "--temperature", "2"],
            &["--json", "logits", "-k", "3", "The capital"],
            &["argmax", "The capital of Finland is", "--steps", "3"],
            &["embed", "dog", "cat", "--dims", "4"],
            &["similarity", "dog", "cat", "hat"],
            &["--json", "similarity", "dog", "cat"],
            &["model"],
            &["generate", "The capital", "--max-new-tokens", "8", "--show-steps"],
            &["--json", "generate", "The capital", "--max-new-tokens", "3"],
            &["generate", "The", "--max-new-tokens", "4", "--sample", "--seed", "7"],
            // Text that needs quoting, and one that starts with a dash.
            &["tokenize", "it's \"quoted\"\ttab"],
            &["tokenize", "--", "-5 degrees"],
            // The commands of the other issues.
            &["score", "The capital of Finland is"],
            &["sample", "The capital", "--seed", "3", "--steps", "2"],
            &["neighbours", "dog", "-k", "3"],
            &["analogy", "dog", "cat", "hat"],
            &["lens", "The capital of Finland is"],
            &["attention", "The capital", "--layer", "1"],
        ],
    );
}

#[test]
fn piped_session_prints_the_one_shot_bytes_on_the_real_model() {
    let g = gguf();
    same_as_oneshot(
        &["--model", &g],
        &[
            &["tokenize", "The capital of Finland is"],
            &["logits", "-k", "5", "The capital of Finland is"],
            &["--json", "logits", "-k", "3", "The capital of Finland is", "--temperature", "0.5"],
            &["argmax", "The capital of Finland is", "--steps", "3"],
            &["--json", "argmax", "The capital of Finland is"],
            &["generate", "The capital of Finland is", "--max-new-tokens", "6", "--show-steps"],
            &["--json", "generate", "Once upon a time", "--max-new-tokens", "4"],
            &["embed", "king", "queen", "--dims", "5"],
            &["similarity", "king", "queen", "apple"],
            &["--json", "model"],
            &["lens", "The capital of Finland is", "--top-k", "3"],
            &["score", "The capital of Finland is Helsinki."],
        ],
    );
    // The repl's own --json is every line's default.
    same_as_oneshot(&["--model", &g, "--json"], &[&["tokenize", "Helsinki"], &["argmax", "Hi"]]);
}

#[test]
fn a_line_can_load_another_model_and_come_back() {
    let (t, g) = (tiny(), gguf());
    let out = session(
        &["--model", &t],
        &[
            &line(&["tokenize", "Helsinki"]),
            &line(&["--model", &g, "tokenize", "Helsinki"]),
            &line(&["argmax", "Helsinki"]),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = oneshot(&["--model", &t, "tokenize", "Helsinki"])
        + &oneshot(&["--model", &g, "tokenize", "Helsinki"])
        + &oneshot(&["--model", &t, "argmax", "Helsinki"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn a_failing_line_reports_and_the_session_goes_on() {
    let t = tiny();
    let out = session(
        &["--model", &t],
        &[
            "tokenize hello",
            "logits --bogus x",
            "lgits x",
            "logits -k 0 x",
            "tokenize \"unclosed",
            ":frobnicate",
            "tokenize world",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected = oneshot(&["--model", &t, "tokenize", "hello"])
        + &oneshot(&["--model", &t, "tokenize", "world"]);
    assert_eq!(stdout, expected);
    let stderr = String::from_utf8(out.stderr).unwrap();
    // clap's message, as the one-shot prints it.
    let bogus = lmscope().args(["--model", &t, "logits", "--bogus", "x"]).output().unwrap();
    assert_eq!(bogus.status.code(), Some(2));
    let bogus = String::from_utf8(bogus.stderr).unwrap();
    assert!(bogus.contains("unexpected argument '--bogus'"), "{bogus}");
    assert!(stderr.contains(&bogus), "the repl's stderr lacks clap's message:\n{stderr}");
    // An unknown command suggests the nearest name.
    assert!(stderr.contains("unrecognized subcommand 'lgits'"), "{stderr}");
    assert!(stderr.contains("a similar subcommand exists: 'logits'"), "{stderr}");
    // The command's own error, one line as in the one-shot.
    let k0 = common::lmscope_err(&["--model", &t, "logits", "-k", "0", "x"]);
    assert!(k0.starts_with("error: --top-k must be between 1"), "{k0}");
    assert!(stderr.contains(&k0), "{stderr}");
    assert!(stderr.contains("error: cannot split the line into words"), "{stderr}");
    assert!(stderr.contains("error: unknown repl command :frobnicate"), "{stderr}");
    assert!(stderr.ends_with("error: 5 lines failed (lines 2, 3, 4, 5, 6)\n"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_current_text_goes_to_every_command_that_takes_a_text() {
    let t = tiny();
    let text = "The capital of Finland is";
    let out = session(
        &["--model", &t],
        &[
            ":text",
            &format!(":text {text}"),
            ":text",
            "tokenize",
            "logits -k 3",
            "--json argmax --steps 2",
            "generate --max-new-tokens 4",
            "lens --top-k 2",
            "attention --layer 1",
            "score",
            "sample --seed 3",
            // Commands without a TEXT are left alone; a given text wins.
            "embed dog --dims 3",
            "tokenize Helsinki",
            "tokenize --ids 5,6",
            ":text \" spaced \"",
            "tokenize",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = ["--model", t.as_str()];
    let one = |args: &[&str]| oneshot(&[&m[..], args].concat());
    let expected = String::from("no current text: `:text ...` sets one\n")
        + &format!("text: {text:?}\n")
        + &one(&["tokenize", text])
        + &one(&["logits", "-k", "3", text])
        + &one(&["--json", "argmax", "--steps", "2", text])
        + &one(&["generate", "--max-new-tokens", "4", text])
        + &one(&["lens", "--top-k", "2", text])
        + &one(&["attention", "--layer", "1", text])
        + &one(&["score", text])
        + &one(&["sample", "--seed", "3", text])
        + &one(&["embed", "dog", "--dims", "3"])
        + &one(&["tokenize", "Helsinki"])
        + &one(&["tokenize", "--ids", "5,6"])
        + &one(&["tokenize", " spaced "]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

/// A JSON document without its timings (`ms_*` keys), which differ from run to run.
fn without_times(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter(|(k, _)| !k.starts_with("ms_"))
            .map(|(k, v)| (k, without_times(v)))
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(without_times).collect(),
        other => other,
    }
}

#[test]
fn kv_check_on_the_current_text_equals_the_one_shot_but_for_its_timings() {
    let t = tiny();
    let out = session(&["--model", &t], &[":text The capital", "--json kv-check --steps 2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = common::lmscope_json(&["--model", &t, "kv-check", "--steps", "2", "The capital"]);
    assert!(got["steps"][0]["ms_cached"].is_number(), "{got}");
    assert_eq!(without_times(got), without_times(want));
}

#[test]
fn a_trace_line_records_the_one_shot_command_that_prints_it() {
    let t = tiny();
    let lines = [":text The capital", ":set top-k 5", "--json trace --steps 1 --sample --seed 2"];
    let out = session(&["--model", &t], &lines);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The page's command line is the line's, with the session's text and settings: run alone,
    // it prints the same document, its command line included.
    let command = got["command"].as_str().unwrap();
    let argv = shlex::split(command).unwrap();
    assert_eq!(argv[0], "lmscope", "{command}");
    assert!(argv.contains(&"trace".to_string()) && argv.contains(&"The capital".to_string()));
    assert!(argv.contains(&"--top-k=5".to_string()), "{command}");
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let again: serde_json::Value = serde_json::from_str(&oneshot(&args)).unwrap();
    assert_eq!(got, again);
}

#[test]
fn settings_are_defaults_for_later_lines() {
    let t = tiny();
    let out = session(
        &["--model", &t],
        &[
            ":set top-k 3",
            "logits x",
            ":set temperature 2",
            "logits x",
            // A line's own value wins; generate takes --temperature only with --sample.
            "logits x --temperature 0.5 -k 2",
            "generate x --max-new-tokens 3",
            "generate x --max-new-tokens 3 --sample --seed 7",
            ":set json",
            "tokenize x",
            ":set json off",
            ":unset temperature",
            "logits x",
            ":set",
            ":set temperature abc",
            ":set nosuch 1",
            ":set html page.html",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "the last three lines fail");
    let m = ["--model", t.as_str()];
    let one = |args: &[&str]| oneshot(&[&m[..], args].concat());
    let expected = one(&["logits", "-k", "3", "x"])
        + &one(&["logits", "-k", "3", "--temperature", "2", "x"])
        + &one(&["logits", "-k", "2", "--temperature", "0.5", "x"])
        + &one(&["generate", "x", "--max-new-tokens", "3"])
        + &one(&[
            "generate",
            "x",
            "--max-new-tokens",
            "3",
            "--sample",
            "--seed",
            "7",
            "--temperature",
            "2",
            "--top-k",
            "3",
        ])
        + &one(&["--json", "tokenize", "x"])
        + &one(&["logits", "-k", "3", "x"])
        + &format!("model = {t}\ntop-k = 3\njson = off\n");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .contains("error: invalid value 'abc' for '--temperature <T>': invalid float literal"),
        "{stderr}"
    );
    assert!(stderr.contains("error: there is no setting nosuch"), "{stderr}");
    // Every later trace would overwrite one page.
    assert!(stderr.contains("error: there is no setting html"), "{stderr}");
}

/// The text of the candidates `logits -k K TEXT` ranks, from its JSON.
fn candidates(model: &str, text: &str, k: &str) -> Vec<String> {
    let j = common::lmscope_json(&["--model", model, "logits", "-k", k, text]);
    j["top"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn pick_extends_the_text_and_back_undoes_it() {
    let g = gguf();
    let t0 = "The capital of Finland is";
    let c0 = candidates(&g, t0, "5");
    let t1 = format!("{t0}{}", c0[1]);
    let c1 = candidates(&g, &t1, "5");
    let t2 = format!("{t1}{}", c1[0]);
    let t1b = format!("{t0}{}", c0[2]);
    let out = session(
        &["--model", &g],
        &[
            &format!(":text {t0}"),
            "logits -k 5",
            ":pick 2",
            // By the candidate's text, quoted to keep its leading space.
            &format!(":pick {}", line(&[&c1[0]])),
            ":text",
            ":back",
            ":back",
            ":pick 3",
            ":back",
            // argmax ranks the chosen token and the runner-up.
            &format!("argmax {}", line(&[t0])),
            ":pick 2",
            ":pick 9",
            ":pick \" no such candidate\"",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let logits = |text: &str| oneshot(&["--model", &g, "logits", "-k", "5", text]);
    let runner_up = common::lmscope_json(&["--model", &g, "argmax", t0])["steps"][0]
        ["runner_up_text"]
        .as_str()
        .unwrap()
        .to_string();
    let expected = logits(t0)
        + &logits(&t1)
        + &logits(&t2)
        + &format!("text: {t2:?}\n")
        + &format!("text: {t1:?}\n")
        + &format!("text: {t0:?}\n")
        + &logits(&t1b)
        + &format!("text: {t0:?}\n")
        + &oneshot(&["--model", &g, "argmax", t0])
        + &oneshot(&["--model", &g, "argmax", &format!("{t0}{runner_up}")]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("error: the last ranking has 2 candidates: :pick 1 to :pick 2"),
        "{stderr}"
    );
    assert!(stderr.contains("is not among the last ranking's candidates"), "{stderr}");
    assert!(stderr.ends_with("error: 2 lines failed (lines 12, 13)\n"), "{stderr}");
}

#[test]
fn pick_refuses_a_ranking_inside_the_text() {
    let t = tiny();
    let out = session(
        &["--model", &t],
        &[":pick 1", "logits --position 1 \"The capital of\"", ":pick 1"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("error: nothing to pick from: run logits"), "{stderr}");
    assert!(stderr.contains("not of the end of the text"), "{stderr}");
}

#[cfg(unix)]
mod terminal {
    use super::*;
    use rexpect::session::{spawn_command, PtySession};
    use std::time::Duration;

    fn start(model: &str, history: &std::path::Path) -> PtySession {
        let mut cmd = crate::common::lmscope_command();
        cmd.args(["--model", model, "repl"]);
        cmd.env("LMSCOPE_HISTORY", history).env("TERM", "xterm").env_remove("LMSCOPE_MODEL");
        spawn_command(cmd, Some(60_000)).expect("the repl starts on a pseudo-terminal")
    }

    /// Sends keys as typed (rexpect's writer is line-buffered).
    fn keys(p: &mut PtySession, s: &str) {
        p.send(s).unwrap();
        p.flush().unwrap();
    }

    #[test]
    fn prompt_command_up_arrow_recall_history_and_quit() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("sub").join("history");
        let mut p = start(&tiny(), &history);
        p.exp_string("lmscope> ").unwrap();
        p.send_line("tokenize \"The capital\"").unwrap();
        p.exp_string("input_ids: [").unwrap();
        p.exp_string("decoded:").unwrap();
        p.exp_string("lmscope> ").unwrap();
        // Up arrow recalls the line; Enter runs it again.
        keys(&mut p, "\x1b[A");
        p.exp_string("tokenize \"The capital\"").unwrap();
        keys(&mut p, "\r");
        p.exp_string("input_ids: [").unwrap();
        p.exp_string("lmscope> ").unwrap();
        // Tab completes a command name.
        keys(&mut p, "mod\t");
        p.exp_string("model").unwrap();
        keys(&mut p, "\r");
        p.exp_string("parameters").unwrap();
        p.exp_string("lmscope> ").unwrap();
        p.send_line(":quit").unwrap();
        p.exp_eof().unwrap();
        let saved = std::fs::read_to_string(&history).expect("the history file is written");
        assert!(saved.contains("tokenize \"The capital\""), "{saved}");
        assert!(saved.contains(":quit"), "{saved}");

        // The next session finds the history.
        let mut p = start(&tiny(), &history);
        p.exp_string("lmscope> ").unwrap();
        keys(&mut p, "\x1b[A");
        p.exp_string(":quit").unwrap();
        keys(&mut p, "\r");
        p.exp_eof().unwrap();
    }

    #[test]
    fn ctrl_c_stops_a_long_generate_and_the_session_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = start(&gguf(), &dir.path().join("history"));
        p.exp_string("lmscope> ").unwrap();
        // Ctrl-C at an empty prompt: a new prompt, not the end.
        p.send_control('c').unwrap();
        p.exp_string("lmscope> ").unwrap();
        let started = std::time::Instant::now();
        p.send_line("generate --max-new-tokens 8000 --ignore-eos \"Once upon a time\"").unwrap();
        // The generated text's line (the typed line's echo has no newline before the prompt).
        p.exp_string("\nOnce upon a time").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        p.send_control('c').unwrap();
        p.exp_string("interrupted").unwrap();
        p.exp_string("lmscope> ").unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "8000 tokens would take minutes: the generate was stopped"
        );
        p.send_line("tokenize Helsinki").unwrap();
        p.exp_string("input_ids: [").unwrap();
        p.exp_string("lmscope> ").unwrap();
        // A command that prints only at its end stops as well: kv-check between its steps
        // (1500 steps, each with a full pass over the growing text, would take many minutes).
        let started = std::time::Instant::now();
        p.send_line("kv-check --steps 1500 \"Once upon a time\"").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        p.send_control('c').unwrap();
        p.exp_string("interrupted").unwrap();
        p.exp_string("lmscope> ").unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "the kv-check was stopped");
        // Ctrl-D leaves.
        p.send_control('d').unwrap();
        p.exp_eof().unwrap();
        match p.process().wait().unwrap() {
            rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 0),
            other => panic!("the repl did not exit normally: {other:?}"),
        }
    }
}
