//! Install and help (issue 17): shell completions, the manual page, the global options under
//! their own heading, and one working example in every command's --help.

mod common;

use common::{lmscope, real_model};
use std::process::Command;

/// Every subcommand's name, from `lmscope --help`.
fn commands() -> Vec<String> {
    let out = lmscope().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let list = help.split("Commands:\n").nth(1).expect("a Commands: section");
    let names: Vec<String> = list
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    names
}

fn help_of(command: &str) -> String {
    let out = lmscope().args([command, "--help"]).output().unwrap();
    assert!(out.status.success(), "{command} --help");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_command_lists_the_global_options_under_their_own_heading() {
    for command in commands() {
        let help = help_of(&command);
        let (own, global) = help
            .split_once("\nGlobal options (before or after the command):\n")
            .unwrap_or_else(|| panic!("{command} --help has no global heading:\n{help}"));
        for flag in
            ["--model", "--revision", "--dtype", "--json", "--quantized", "--threads", "--timings"]
        {
            assert!(
                global.contains(&format!("      {flag}")),
                "{command}: {flag} under the heading"
            );
            assert!(!own.contains(&format!("      {flag} ")), "{command}: {flag} among its own");
        }
    }
}

#[test]
fn the_two_top_k_options_say_they_are_different_things() {
    let logits = help_of("logits");
    let generate = help_of("generate");
    let line = |help: &str| help.lines().find(|l| l.contains("--top-k")).unwrap().to_string();
    assert!(line(&logits).contains("to list in the ranking"), "{logits}");
    assert!(line(&logits).contains("not the sampling filter of generate --top-k"), "{logits}");
    assert!(line(&generate).contains("Sampling filter"), "{generate}");
    assert!(
        line(&generate).contains("not how many tokens are listed, as logits --top-k is"),
        "{generate}"
    );
}

/// Every command's --help ends with an example, and the example runs (on the real model, in a
/// scratch directory, as a user would paste it).
#[test]
fn every_command_has_an_example_that_works() {
    let model = real_model();
    let bin = common::bin_dir();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    for command in commands() {
        let help = help_of(&command);
        let examples: Vec<&str> = help
            .split_once("\nExample")
            .unwrap_or_else(|| panic!("{command} --help has no example:\n{help}"))
            .1
            .lines()
            .filter_map(|l| l.strip_prefix("  $ "))
            .collect();
        assert!(!examples.is_empty(), "{command}: {help}");
        for example in examples {
            assert!(example.starts_with(&format!("lmscope {command}")), "{example}");
            let home = tempfile::tempdir().unwrap();
            let dir = home.path().join(".local/share/bash-completion/completions");
            std::fs::create_dir_all(&dir).unwrap();
            let out = Command::new("bash")
                .args(["-c", &format!("set -o pipefail; {example} </dev/null")])
                .current_dir(home.path())
                .env("HOME", home.path())
                .env("PATH", &path)
                .env("LMSCOPE_MODEL", &model)
                .env("MANPAGER", "cat")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "`{example}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _lmscope"),
        ("zsh", "#compdef lmscope"),
        ("fish", "complete -c lmscope"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[lmscope]"),
    ] {
        let out = lmscope().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in ["tokenize", "generate", "max-new-tokens", "model"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    // The bash script is valid bash, and completing "lmscope gen" offers generate.
    let script = lmscope().args(["completions", "bash"]).output().unwrap().stdout;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lmscope.bash");
    std::fs::write(&file, script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let complete = format!(
        "source {}; COMP_WORDS=(lmscope gen); COMP_CWORD=1; _lmscope lmscope gen lmscope; echo \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash").args(["-c", &complete]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "generate");
    let e = common::lmscope_err(&["completions", "tcsh"]);
    assert!(e.contains("invalid value 'tcsh'"), "{e}");
}

#[test]
fn manual_pages_for_lmscope_and_each_command() {
    let page = |args: &[&str]| {
        let out = lmscope().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let main = page(&["man"]);
    assert!(main.contains(".TH lmscope 1"), "{main}");
    for command in commands() {
        assert!(
            main.contains(&format!("lmscope\\-{}(1)", command.replace('-', "\\-"))),
            "{command}"
        );
        let sub = page(&["man", &command]);
        assert!(sub.contains(&format!(".TH lmscope-{command} 1")), "{sub}");
        assert!(sub.contains("\\fBlmscope "), "synopsis of {command}");
    }
    assert!(page(&["man", "generate"]).contains("\\-\\-max\\-new\\-tokens"));
    // groff reads it without a warning.
    let groff = Command::new("sh")
        .args(["-c", "groff -man -Tutf8 -ww -z 2>&1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    if let Ok(mut child) = groff {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(main.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let e = common::lmscope_err(&["man", "nosuch"]);
    assert!(e.starts_with("error: lmscope has no command \"nosuch\" (commands: tokenize, "), "{e}");
}
