//! The console examples of docs/walkthrough.md and docs/json.md, run against the current binary:
//! an example whose output the page shows in full must print exactly that, so the pages cannot
//! drift from the tool. The few examples that cannot be reproduced byte for byte are skipped by
//! name below, each with its reason.

mod common;

use common::{real_model, repo_path};
use std::path::Path;
use std::process::Command;

/// One `$ command` of a console block and the output the page shows for it.
struct Example {
    file: &'static str,
    line: usize,
    command: String,
    output: String,
}

/// Every `$ ` line of every ```console block of `file`, with the lines that follow it.
fn examples(file: &'static str) -> Vec<Example> {
    let text = std::fs::read_to_string(repo_path(file)).expect("the page exists");
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    for (i, line) in text.lines().enumerate() {
        if line == "```console" {
            in_block = true;
        } else if line == "```" {
            in_block = false;
        } else if in_block {
            if let Some(command) = line.strip_prefix("$ ") {
                let command = command.to_string();
                out.push(Example { file, line: i + 1, command, output: String::new() });
            } else if let Some(last) = out.last_mut() {
                last.output.push_str(line);
                last.output.push('\n');
            }
        }
    }
    out
}

/// Why an example cannot be compared byte for byte, if it cannot.
fn skip_reason(e: &Example) -> Option<&'static str> {
    if e.output.contains('…') {
        Some("the page elides part of the output")
    } else if e.command.contains("--timings") {
        Some("timings differ from run to run")
    } else if e.command.starts_with("lmscope kv-check") {
        Some("kv-check's table times each step, and times differ from run to run")
    } else if e.command.contains("env -u LMSCOPE_MODEL") {
        Some("reaches for the Hugging Face Hub")
    } else if e.command == "lmscope embed dog --dims 100" {
        Some("the page shows the table wrapped to a terminal's width")
    } else if e.command.contains("| jq ") && !have_jq() {
        Some("jq is not installed")
    } else {
        None
    }
}

fn have_jq() -> bool {
    Command::new("jq").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn documented_examples_print_what_the_pages_show() {
    real_model(); // fails, never skips, when scripts/fetch-model.sh has not run
    let same_kernels = lmscope::kernels::backend() == lmscope::kernels::Backend::Amx;
    let bin = Path::new(env!("CARGO_BIN_EXE_lmscope")).parent().expect("a directory");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    let mut failures = Vec::new();
    for file in ["docs/walkthrough.md", "docs/json.md"] {
        for e in examples(file) {
            if let Some(reason) = skip_reason(&e) {
                eprintln!("skipped {}:{} `{}`: {reason}", e.file, e.line, e.command);
                continue;
            }
            // As the pages say: from the repository root, with LMSCOPE_MODEL set to the GGUF.
            let mut cmd = Command::new("bash");
            cmd.arg("-c").arg(format!("{{ {}; }} 2>&1", e.command));
            cmd.current_dir(repo_path("")).env("PATH", &path);
            cmd.env("LMSCOPE_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
            for var in ["HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN"] {
                cmd.env_remove(var);
            }
            let out = cmd.output().expect("bash runs");
            let got = String::from_utf8_lossy(&out.stdout);
            ran += 1;
            if got != e.output {
                let (n, expected, actual) = e
                    .output
                    .lines()
                    .zip(got.lines())
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map(|(n, (a, b))| (n + 1, a.to_string(), b.to_string()))
                    .unwrap_or((
                        0,
                        format!("{} lines", e.output.lines().count()),
                        format!("{} lines", got.lines().count()),
                    ));
                failures.push(format!(
                    "{}:{} `{}`\n  output line {n}: the page shows\n    {expected}\n  lmscope prints\n    {actual}",
                    e.file, e.line, e.command
                ));
            }
        }
    }
    assert!(ran >= 50, "only {ran} examples ran: is the parser still finding the console blocks?");
    if !same_kernels {
        // The pages were made with the AMX and AVX-512 kernels; other kernels sum in another
        // order and can move the last printed digit, so only the running is checked here.
        let kernels = lmscope::kernels::backend();
        eprintln!("{kernels} kernels: {} examples differ in digits, not compared", failures.len());
        return;
    }
    assert!(failures.is_empty(), "the docs and lmscope disagree:\n{}", failures.join("\n"));
}
