//! The console examples of docs/walkthrough.md and docs/json.md, run against the current binary:
//! an example whose output the page shows in full must print exactly that, so the pages cannot
//! drift from the tool. The few examples that cannot be reproduced byte for byte are skipped by
//! name below, each with its reason.

mod common;

use common::compare::{last_place, pieces, same_but_last_digits, within, Piece};
use common::{real_model, repo_path};
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

/// How an example's output may differ from one CPU to another.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cpu {
    /// The output does not depend on the CPU (tokenizer, config, embedding rows, cosines in f64
    /// summed in a fixed order): compared byte for byte on every machine.
    Independent,
    /// The output comes from the forward pass in float32 (exact or --quantized path): the matrix
    /// kernels (AMX, AVX-512, portable) add in different orders, which moves the last printed
    /// digits. Byte for byte on AMX (where the pages were made); elsewhere every word must be the
    /// same and every number within `F32_TOLERANCE`.
    F32,
    /// The forward pass in bfloat16 (`--dtype bf16`/`f16`): each kernel rounds its partial sums to
    /// bfloat16 at different points, so a logit can move by a step of bfloat16's grid (1/16 at
    /// 8-16). Byte for byte on AMX; elsewhere within `BF16_TOLERANCE`.
    Bf16,
}

/// |page - lmscope| allowed for a printed number on a CPU other than the pages' (f32 path).
const F32_TOLERANCE: f64 = 2e-3;
/// The same for the bfloat16 path: logits and log-probabilities a few bfloat16 steps apart (0.31
/// measured between the portable and AMX backends on the walkthrough's log-probabilities).
const BF16_TOLERANCE: f64 = 0.5;

/// The commands that run the forward pass (directly, or as lines of a repl session).
const FORWARD_COMMANDS: [&str; 10] = [
    "logits",
    "argmax",
    "generate",
    "lens",
    "attention",
    "kv-check",
    "score",
    "sample",
    "trace",
    "repl",
];

fn cpu_dependence(command: &str) -> Cpu {
    let runs_forward = FORWARD_COMMANDS.iter().any(|c| command.split_whitespace().any(|w| w == *c));
    if !runs_forward {
        Cpu::Independent
    } else if command.contains("--dtype bf16") || command.contains("--dtype f16") {
        Cpu::Bf16
    } else {
        Cpu::F32
    }
}

#[test]
fn tolerant_comparison() {
    let page = "│ 1 ┆ 260 ┆ Ġthe ┆ \" the\" ┆ 10.0625 ┆ 0.2628 ┆ -1.3365 │";
    let cpu = "│ 1 ┆ 260 ┆ Ġthe ┆ \" the\" ┆  9.9375 ┆ 0.2416 ┆ -1.4205 │";
    assert!(within(page, page, 0.0).is_ok());
    assert!(within(page, cpu, 0.25).is_ok());
    assert!(within(page, cpu, 2e-3).is_err());
    // An integer where the other side prints a float: a float, within the float side's bound.
    assert!(within("\"max_abs_diff\": 0", "\"max_abs_diff\": 2.4795532e-05", 2e-3).is_ok());
    assert!(within("\"max_abs_diff\": 0", "\"max_abs_diff\": 0.01", 2e-3).is_err());
    assert!(same_but_last_digits("diff 0", "diff 2.4795532e-05").is_err());
    // Integers exact, but for a deep rank off the pages' CPU.
    assert!(within("rank 42981", "rank 42982", 2e-3).is_ok());
    assert!(within("rank 42981", "rank 42982", 0.0).is_err());
    assert!(within("rank 981", "rank 982", 2e-3).is_err());
    // A version number is a word, not a float.
    assert!(within("v0.1.0 1.5", "v0.1.0 1.5001", 1e-3).is_ok());
    assert!(within("v0.1.0", "v0.1.1", 1.0).is_err());
    // Words and integers (ids) must be equal whatever the tolerance.
    assert!(within(page, &page.replace("Ġthe", "Ġthen"), 1.0).is_err());
    assert!(within(page, &page.replace("260", "261"), 1.0).is_err());
    assert!(within("a 1.5 b", "a 1.5", 1.0).is_err());
    // Golden files: the last printed digit by one unit and a half, on the same lines.
    assert_eq!(last_place("1331.51"), 0.01);
    assert!((last_place("3.1814e-13") - 1e-17).abs() < 1e-30);
    assert_eq!(last_place("42"), 1.0);
    let golden = "perplexity 1331.51\np = 3.1814e-13, rank 339";
    assert!(same_but_last_digits(golden, "perplexity 1331.52\np = 3.1815e-13, rank 339").is_ok());
    assert!(same_but_last_digits(golden, "perplexity 1331.54\np = 3.1814e-13, rank 339").is_err());
    assert!(same_but_last_digits("ppl 47287.71", "ppl 47287.69").is_ok());
    assert!(same_but_last_digits("ppl 47287.71", "ppl 47289.71").is_err());
    assert!(same_but_last_digits(golden, "perplexity 1331.51\np = 3.1814e-13, rank 340").is_err());
    assert!(same_but_last_digits(golden, "perplexity 1331.51 p = 3.1814e-13, rank 339").is_err());
    assert_eq!(
        pieces("[-1.9108746,2.5e-05] x1"),
        vec![
            Piece::Word("["),
            Piece::Number("-1.9108746"),
            Piece::Word(","),
            Piece::Number("2.5e-05"),
            Piece::Word("]"),
            Piece::Word("x"),
            Piece::Number("1"),
        ]
    );
}

/// The output without the lines that name the kernels in use or the kernels this CPU has
/// (`lmscope model`'s kernels row, its JSON `kernels` and `kernels_available` fields), and with
/// `dense`, how the matrices are held (the reference backend holds them dense, in f32).
fn without_kernel_lines(text: &str, dense: bool) -> String {
    let mut out = String::new();
    let mut in_list = false;
    for line in text.lines() {
        let t = line.trim_start();
        if in_list {
            in_list = !t.starts_with(']');
            continue;
        }
        if t.starts_with("\"kernels_available\": [") {
            in_list = !t.ends_with("],") && !t.ends_with(']');
            continue;
        }
        if line.contains("(LMSCOPE_KERNELS)") || t.starts_with("\"kernels\":") {
            continue;
        }
        if dense && (t.starts_with("\"matrices\":") || t.starts_with("│ matrices ")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn kernel_lines_are_left_out() {
    let page = "a\n  \"kernels\": \"amx\",\n  \"kernels_available\": [\n    \"amx\"\n  ]\n}\n";
    assert_eq!(without_kernel_lines(page, false), "a\n}\n");
    assert_eq!(without_kernel_lines("│ kernels ┆ portable (LMSCOPE_KERNELS) │\nb\n", false), "b\n");
    let matrices =
        "│ matrices                ┆ exact: dense f32 │\n  \"matrices\": \"exact\",\nb\n";
    assert_eq!(without_kernel_lines(matrices, false), matrices);
    assert_eq!(without_kernel_lines(matrices, true), "b\n");
}

#[test]
fn documented_examples_print_what_the_pages_show() {
    real_model(); // fails, never skips, when scripts/fetch-model.sh has not run
    let kernels = lmscope::kernels::backend();
    // The pages were made with the AMX kernels (and AVX-512 for short inputs).
    let pages_kernels = kernels == lmscope::kernels::Backend::Amx;
    let bin = common::bin_dir();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    let mut tolerant = 0;
    let mut failures = Vec::new();
    for file in ["docs/walkthrough.md", "docs/json.md"] {
        for e in examples(file) {
            if let Some(reason) = skip_reason(&e) {
                eprintln!("skipped {}:{} `{}`: {reason}", e.file, e.line, e.command);
                continue;
            }
            if e.command.contains("--quantized") && !lmscope::kernels::has_int8_kernel() {
                // candle's QMatMul instead of lmscope's 8-bit kernel: logits up to 0.6 apart and
                // near-ties ranked differently (tests/reference_smollm2.rs checks this path).
                eprintln!(
                    "skipped {}:{} `{}`: --quantized runs candle's 8-bit products here",
                    e.file, e.line, e.command
                );
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
            let tolerance = match cpu_dependence(&e.command) {
                _ if pages_kernels => None,
                // Exact, but for the tables' widths: the rows left out below may be the widest.
                Cpu::Independent => Some(0.0),
                Cpu::F32 => Some(F32_TOLERANCE),
                Cpu::Bf16 => Some(BF16_TOLERANCE),
            };
            // Which kernels run, and which this CPU has, is what `model` reports: the pages show
            // the AMX machine's.
            let (page, got) = if pages_kernels {
                (e.output.clone(), got.into_owned())
            } else {
                let dense = kernels == lmscope::kernels::Backend::Reference;
                (without_kernel_lines(&e.output, dense), without_kernel_lines(&got, dense))
            };
            let verdict = match tolerance {
                None if got == page => Ok(0.0),
                None => {
                    let (n, expected, actual) = page
                        .lines()
                        .zip(got.lines())
                        .enumerate()
                        .find(|(_, (a, b))| a != b)
                        .map(|(n, (a, b))| (n + 1, a.to_string(), b.to_string()))
                        .unwrap_or((
                            0,
                            format!("{} lines", page.lines().count()),
                            format!("{} lines", got.lines().count()),
                        ));
                    Err(format!(
                        "output line {n}: the page shows\n    {expected}\n  lmscope prints\n    {actual}"
                    ))
                }
                Some(t) => {
                    tolerant += 1;
                    within(&page, &got, t)
                }
            };
            match verdict {
                Ok(d) if d > 0.0 => {
                    eprintln!(
                        "{}:{} `{}`: numbers differ by up to {d:.3e}",
                        e.file, e.line, e.command
                    )
                }
                Ok(_) => {}
                Err(why) => {
                    failures.push(format!("{}:{} `{}`\n  {why}", e.file, e.line, e.command))
                }
            }
        }
    }
    assert!(ran >= 50, "only {ran} examples ran: is the parser still finding the console blocks?");
    eprintln!("{kernels} kernels: {ran} examples ran, {tolerant} compared within a tolerance");
    assert!(failures.is_empty(), "the docs and lmscope disagree:\n{}", failures.join("\n"));
}

/// Numbers the pages' prose quotes that are not lmscope output on the page, and why.
const QUOTED_ELSEWHERE: &[(&str, &str)] = &[
    ("13.4375", "the notebook's bfloat16 logits"),
    ("0.5078", "the notebook's bfloat16 logits"),
    ("0.0339", "the notebook's embedding values"),
    ("0.1357", "the notebook's embedding values"),
    ("0.5703125", "the notebook's cosine"),
    ("0.1640625", "the notebook's cosine"),
    ("9.955242", "transformers' logit, fixtures/smollm2/logits.json"),
    ("9.955234", "lmscope's logit at full precision (the page prints 9.95524 via jq)"),
    ("0.5833075", "transformers' cosine, fixtures/smollm2/embeddings.json"),
    ("0.20060703", "transformers' cosine, fixtures/smollm2/embeddings.json"),
    ("0.0001", "a bound, not a value"),
    ("9.9375", "transformers' bf16 logit, fixtures/smollm2/bf16.json"),
    ("9.8750", "--dtype bf16 on the portable kernels, not this page's machine's"),
    ("0.2620346571714973", "json.md's example of a float64's digits"),
];

/// Every decimal number of three or more decimals in a page's prose (outside code blocks, and
/// not in a quoted `tensor([...])` print of the notebook) appears in one of the page's console
/// outputs, or is listed in [`QUOTED_ELSEWHERE`]: prose that describes an output cannot drift
/// from it (a paragraph once quoted --quantized numbers from an older run).
#[test]
fn numbers_in_the_prose_are_the_outputs_numbers() {
    for file in ["docs/walkthrough.md", "docs/json.md"] {
        let text = std::fs::read_to_string(repo_path(file)).expect("the page exists");
        let outputs: String = examples(file).iter().map(|e| e.output.as_str()).collect();
        let mut in_code = false;
        let mut stray = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code || line.contains("tensor([") {
                continue;
            }
            for piece in pieces(line) {
                let Piece::Number(n) = piece else { continue };
                let n = n.trim_start_matches('-');
                // Decimal digits of a plain decimal number ("0.1.0" is a version, "3.4e-5" a bound).
                let decimals = match n.split_once('.') {
                    Some((_, d)) if d.bytes().all(|b| b.is_ascii_digit()) => d.len(),
                    _ => 0,
                };
                if decimals >= 3
                    && !outputs.contains(n)
                    && !QUOTED_ELSEWHERE.iter().any(|(q, _)| *q == n)
                {
                    stray.push(format!("{file}:{}: {n}", i + 1));
                }
            }
        }
        assert!(
            stray.is_empty(),
            "numbers in the prose that no output shows:\n{}",
            stray.join("\n")
        );
    }
}

/// Every key of every object in the commands' JSON, with the object's path
/// (`top[].bytes`), collected from `value`.
fn keys(value: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push((path.to_string(), k.clone()));
                keys(v, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                keys(v, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// The part of json.md that documents one kind of object: from `marker` to the end of the first
/// table after it, or the marker's line alone when a code block comes before any table.
fn json_md_block<'a>(page: &'a str, marker: &str) -> &'a str {
    let found = page.find(marker).unwrap_or_else(|| panic!("json.md has no {marker:?}"));
    let start = found + marker.len() - marker.trim_start_matches('\n').len();
    let mut end = page[start..].find('\n').map_or(page.len(), |e| start + e);
    let mut in_table = false;
    let mut offset = start;
    for line in page[start..].split_inclusive('\n') {
        if line.starts_with('|') {
            in_table = true;
        } else if in_table || line.starts_with("```") {
            if in_table {
                end = offset;
            }
            break;
        }
        offset += line.len();
    }
    &page[start..end]
}

/// Every field each command prints with --json is named in the json.md table (or line) that
/// documents its object (json.md once said `logits` had no `bytes` while its ranked tokens had
/// one, and its `Ranked` table did not list it).
#[test]
fn every_json_field_is_documented() {
    let page = std::fs::read_to_string(repo_path("docs/json.md")).expect("json.md exists");
    // (command, path of an object in its output) -> where json.md documents that object.
    let tables: &[(&str, &str, &str)] = &[
        ("tokenize", "", "\n## `tokenize`"),
        ("tokenize", ".tokens[]", "\n## Shared object: `Token`"),
        ("logits", "", "\n## `logits`"),
        ("logits", ".top[]", "\n`Ranked`:"),
        ("logits", ".rows[]", "\n`RowPreview`:"),
        ("argmax", "", "\n## `argmax`"),
        ("argmax", ".steps[]", "\n## Shared object: `Step`"),
        ("embed", "", "\n## `embed`"),
        ("embed", ".words[]", "\n`WordEmbedding` **flattens**"),
        ("similarity", "", "\n## `similarity`"),
        ("similarity", ".words[]", "\n## `similarity`"),
        ("similarity", ".pairs[]", "\n`Pair`:"),
        ("model", "", "\n## `model`"),
        ("model", ".config", "\n`config`:"),
        ("model", ".parameters", "\n`parameters`"),
        ("generate", "", "\n## `generate`"),
        ("generate", ".steps[]", "\n## Shared object: `Step`"),
    ];
    let tiny = common::tiny_dir();
    let tiny = tiny.to_str().expect("a UTF-8 path");
    let runs: &[(&str, &[&str])] = &[
        ("tokenize", &["tokenize", "The capital"]),
        ("tokenize", &["tokenize", "--ids", "1,2"]),
        ("logits", &["logits", "The capital", "--temperature", "2", "--full"]),
        ("argmax", &["argmax", "The capital", "--steps", "2"]),
        ("embed", &["embed", "dog", "cat"]),
        ("similarity", &["similarity", "dog", "cat", "hat"]),
        ("model", &["model"]),
        ("generate", &["generate", "The capital", "--max-new-tokens", "2"]),
        (
            "generate",
            &["generate", "The capital", "--max-new-tokens", "2", "--sample", "--seed", "1"],
        ),
    ];
    let mut missing = Vec::new();
    for (command, args) in runs {
        let j = common::lmscope_json(&[&["--model", tiny][..], args].concat());
        let mut found = Vec::new();
        keys(&j, "", &mut found);
        for (path, key) in found {
            let Some((_, _, marker)) = tables.iter().find(|(c, p, _)| c == command && *p == path)
            else {
                missing.push(format!("{command}: no table in this test for objects at {path:?}"));
                continue;
            };
            let what = format!("{command}: {path}.{key}");
            if !json_md_block(&page, marker).contains(&format!("`{key}`"))
                && !missing.contains(&what)
            {
                missing.push(what);
            }
        }
    }
    assert!(missing.is_empty(), "fields docs/json.md does not document:\n{}", missing.join("\n"));
}
