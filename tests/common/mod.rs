//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod compare;

use std::path::PathBuf;

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The tiny random Llama fixture (config.json, tokenizer.json, model.safetensors).
pub fn tiny_dir() -> PathBuf {
    repo_path("fixtures/tiny-llama")
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF. Missing is a failure, never a skip: run
/// scripts/fetch-model.sh (scripts/test.sh does).
pub fn real_model() -> PathBuf {
    let path = repo_path("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "the real model {} is missing: run scripts/fetch-model.sh (scripts/test.sh does it for you)",
        path.display()
    );
    path
}

/// Reads a JSON fixture.
pub fn json(rel: &str) -> serde_json::Value {
    let path = repo_path(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("invalid JSON in {}: {e}", path.display()))
}

/// The emulator that runs the binaries of a cross build, from `LMSCOPE_TEST_RUNNER` (split at
/// spaces; scripts/test-aarch64.sh sets it to `qemu-aarch64 -L /usr/aarch64-linux-gnu`, as
/// cargo's runner), or None: the binary runs itself.
pub fn runner() -> Option<Vec<String>> {
    let words = std::env::var("LMSCOPE_TEST_RUNNER").ok()?;
    let words: Vec<String> = words.split_whitespace().map(String::from).collect();
    (!words.is_empty()).then_some(words)
}

/// The command that starts the lmscope binary of this build (`CARGO_BIN_EXE_lmscope`), through
/// the [`runner`] where there is one.
pub fn lmscope_command() -> std::process::Command {
    let bin = env!("CARGO_BIN_EXE_lmscope");
    match runner() {
        Some(words) => {
            let mut cmd = std::process::Command::new(&words[0]);
            cmd.args(&words[1..]).arg(bin);
            cmd
        }
        None => std::process::Command::new(bin),
    }
}

/// A directory with an `lmscope` a shell finds on its PATH: the binary's own directory, or,
/// under a [`runner`], one with a script that starts the binary through it.
pub fn bin_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lmscope"));
    let Some(words) = runner() else {
        return bin.parent().expect("a directory").to_path_buf();
    };
    let dir = bin.parent().expect("a directory").join("through-runner");
    std::fs::create_dir_all(&dir).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!("#!/bin/sh\nexec {} '{}' \"$@\"\n", quoted.join(" "), bin.display());
    // Written beside and renamed, so a test running in parallel never sees half a script.
    let tmp = dir.join(format!("lmscope.{}.{:?}", std::process::id(), std::thread::current().id()));
    std::fs::write(&tmp, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dir.join("lmscope")).unwrap();
    dir
}

/// The lmscope binary with a clean environment (no LMSCOPE_MODEL, no HF variables).
pub fn lmscope() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::from_std(lmscope_command());
    for var in
        ["LMSCOPE_MODEL", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN"]
    {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs lmscope with `args`, expects success, and parses its stdout as JSON.
pub fn lmscope_json(args: &[&str]) -> serde_json::Value {
    let out = lmscope().args(args).arg("--json").output().expect("lmscope runs");
    assert!(
        out.status.success(),
        "lmscope {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

/// Runs lmscope with `args`, expects failure, and returns stderr.
pub fn lmscope_err(args: &[&str]) -> String {
    let out = lmscope().args(args).output().expect("lmscope runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "lmscope {args:?} succeeded but should fail");
    assert!(!stderr.contains("panicked"), "lmscope {args:?} panicked: {stderr}");
    assert!(out.stdout.is_empty(), "lmscope {args:?} failed but printed to stdout");
    stderr
}

/// How far two numbers may differ that come from the same next-token logits computed two ways:
/// for the last position alone (`sample`, `generate`) and among every position (`logits --full`).
/// lmscope's kernels give both bit for bit; the reference backend's candle products round one row
/// and many rows differently (about 1e-5 in a logit).
pub fn two_paths_tolerance() -> f64 {
    if lmscope::kernels::backend() == lmscope::kernels::Backend::Reference {
        1e-4
    } else {
        1e-9
    }
}
