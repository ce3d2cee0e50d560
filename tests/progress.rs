//! Progress lines (issue 17): on a terminal's stderr once work takes longer than the delay
//! (`LMSCOPE_PROGRESS_DELAY`, 0 here so that the tiny model's quick work shows it for sure), never
//! into a pipe and never with --json.

mod common;
#[path = "common/hub_server.rs"]
#[allow(dead_code)] // the fault injection is for tests/hub.rs
mod hub_server;

use common::{lmscope, tiny_dir};

fn tiny() -> String {
    tiny_dir().to_str().unwrap().to_string()
}

const ARGMAX: &[&str] = &["argmax", "The capital of Finland is", "--steps", "4"];

#[test]
fn no_progress_into_a_pipe() {
    let t = tiny();
    for json in [false, true] {
        let mut cmd = lmscope();
        cmd.args(["--model", &t]).args(ARGMAX).env("LMSCOPE_PROGRESS_DELAY", "0");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("forward pass") && !stdout.contains("generating"), "{stdout}");
    }
}

#[cfg(unix)]
mod terminal {
    use super::*;
    use rexpect::session::spawn_command;

    /// Runs lmscope on a pseudo-terminal (stdout and stderr both on it) and returns all it wrote.
    fn on_terminal(args: &[&str], delay: &str) -> String {
        on_terminal_with(args, delay, &[])
    }

    fn on_terminal_with(args: &[&str], delay: &str, env: &[(&str, &str)]) -> String {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lmscope"));
        cmd.args(args).env("TERM", "xterm").env("LMSCOPE_PROGRESS_DELAY", delay);
        cmd.env_remove("LMSCOPE_MODEL");
        for var in ["HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN"] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let mut p = spawn_command(cmd, Some(60_000)).expect("lmscope starts on a pseudo-terminal");
        p.exp_eof().expect("lmscope ends")
    }

    #[test]
    fn progress_shows_on_a_terminal_after_the_delay() {
        let t = tiny();
        let args: Vec<&str> = ["--model", t.as_str()].iter().chain(ARGMAX).copied().collect();
        let all = on_terminal(&args, "0");
        assert!(all.contains("forward pass over 5 tokens"), "{all:?}");
        assert!(all.contains("generating"), "{all:?}");
        assert!(all.contains("text: The capital of Finland is"), "{all:?}");
        let sample =
            ["--model", t.as_str(), "sample", "The capital", "--steps", "3", "--seed", "1"];
        assert!(on_terminal(&sample, "0").contains("sampling"));
        let check = ["--model", t.as_str(), "kv-check", "The capital", "--steps", "3"];
        assert!(on_terminal(&check, "0").contains("checking the cache"));
        // Quick work under a delay of 5 seconds: nothing.
        let all = on_terminal(&args, "5");
        assert!(!all.contains("forward pass") && !all.contains("generating"), "{all:?}");
    }

    #[test]
    fn no_progress_with_json_and_no_counter_over_streamed_text() {
        let t = tiny();
        let mut args: Vec<&str> = ["--model", t.as_str()].iter().chain(ARGMAX).copied().collect();
        args.push("--json");
        let all = on_terminal(&args, "0");
        assert!(!all.contains("forward pass") && !all.contains("generating"), "{all:?}");
        assert!(all.contains("\"prompt_ids\""), "{all:?}");
        // generate streaming onto the terminal: the prompt's pass, but no token counter.
        let all = on_terminal(
            &["--model", &t, "generate", "The capital of Finland is", "--max-new-tokens", "4"],
            "0",
        );
        assert!(all.contains("forward pass over 5 tokens"), "{all:?}");
        assert!(!all.contains("generating"), "{all:?}");
    }

    #[test]
    fn a_download_shows_its_progress_on_a_terminal() {
        let server = hub_server::HubServer::start("test-org/tiny-llama", tiny_dir());
        let home = tempfile::tempdir().unwrap();
        let env =
            [("HF_ENDPOINT", server.endpoint.as_str()), ("HF_HOME", home.path().to_str().unwrap())];
        let all =
            on_terminal_with(&["--model", "test-org/tiny-llama", "tokenize", "hi"], "0", &env);
        assert!(all.contains("downloading tokenizer.json"), "{all:?}");
        assert!(all.contains("input_ids:"), "{all:?}");
        // From the cache: nothing to download, no line.
        let all =
            on_terminal_with(&["--model", "test-org/tiny-llama", "tokenize", "hi"], "0", &env);
        assert!(!all.contains("downloading"), "{all:?}");
    }
}
