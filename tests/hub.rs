//! The Hub code path, offline: hf-hub downloads the tiny fixture from a local server that speaks
//! the Hub's URL layout, and a pre-populated cache is used with HF_HUB_OFFLINE=1.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use common::{lmscope, tiny_dir};
use hub_server::{Fault, HubServer, COMMIT};
use std::path::Path;
use std::sync::atomic::Ordering;

const REPO: &str = "lmscope-test/tiny-llama";

/// The top-5 ids lmscope prints for a prompt with the given extra environment.
fn top_ids(envs: &[(&str, &str)], model: &str) -> Vec<u64> {
    let mut cmd = lmscope();
    cmd.args(["--model", model, "logits", "The capital of Finland is", "--top-k", "5", "--json"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "lmscope failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["top"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect()
}

#[test]
fn downloads_from_a_hub_endpoint_into_the_cache() {
    let server = HubServer::start(REPO, tiny_dir());
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let from_hub = top_ids(&[("HF_ENDPOINT", &server.endpoint), ("HF_HOME", home_str)], REPO);
    let from_dir = top_ids(&[], tiny_dir().to_str().unwrap());
    assert_eq!(from_hub, from_dir, "the same model through the Hub gives the same ranking");
    assert!(server.requests.load(Ordering::SeqCst) > 0);

    // The files landed in the standard cache layout that Python's huggingface_hub also reads.
    let repo_dir = home.path().join("hub/models--lmscope-test--tiny-llama");
    let main_ref = std::fs::read_to_string(repo_dir.join("refs/main")).unwrap();
    assert_eq!(main_ref.trim(), COMMIT);
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(repo_dir.join("snapshots").join(COMMIT).join(file).exists(), "{file} cached");
    }

    // A second run is served from the cache, even with the endpoint gone and offline mode on.
    let again = top_ids(
        &[("HF_ENDPOINT", "http://127.0.0.1:9"), ("HF_HOME", home_str), ("HF_HUB_OFFLINE", "1")],
        REPO,
    );
    assert_eq!(again, from_dir);
}

/// Lays out a Hugging Face cache by hand, as huggingface_hub writes it.
fn populate_cache(hub: &Path) {
    let repo_dir = hub.join("models--lmscope-test--tiny-llama");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(tiny_dir().join(file), snapshot.join(file)).unwrap();
    }
}

#[test]
fn offline_mode_reads_a_prepopulated_cache_without_network() {
    let home = tempfile::tempdir().unwrap();
    populate_cache(&home.path().join("hub"));
    // A server that counts requests: offline mode must not send any.
    let server = HubServer::start(REPO, tiny_dir());
    let ids = top_ids(
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", &server.endpoint),
        ],
        REPO,
    );
    assert_eq!(ids, top_ids(&[], tiny_dir().to_str().unwrap()));
    assert_eq!(server.requests.load(Ordering::SeqCst), 0, "offline mode touched the network");

    // HF_HUB_CACHE points straight at the hub folder.
    let ids = top_ids(
        &[("HF_HUB_CACHE", home.path().join("hub").to_str().unwrap()), ("HF_HUB_OFFLINE", "1")],
        REPO,
    );
    assert_eq!(ids, top_ids(&[], tiny_dir().to_str().unwrap()));
}

#[test]
fn offline_mode_without_the_model_says_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let out = lmscope()
        .args(["--model", REPO, "tokenize", "hi"])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    assert!(stderr.contains("scripts/fetch-model.sh"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn an_unreachable_hub_is_a_clear_error_naming_the_offline_route() {
    let home = tempfile::tempdir().unwrap();
    let out = lmscope()
        .args(["tokenize", "hi"]) // the default model, HuggingFaceTB/SmolLM-135M
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9") // discard port: nothing listens
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot download HuggingFaceTB/SmolLM-135M"), "{stderr}");
    assert!(stderr.contains("scripts/fetch-model.sh"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn a_repo_without_model_files_is_reported() {
    let empty = tempfile::tempdir().unwrap();
    let server = HubServer::start("someone/empty", empty.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    let out = lmscope()
        .args(["--model", "someone/empty", "logits", "hi"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &server.endpoint)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no config.json"), "{stderr}");

    // tokenize needs the tokenizer alone, and says that is what is missing.
    let out = lmscope()
        .args(["--model", "someone/empty", "tokenize", "hi"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &server.endpoint)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no tokenizer.json"), "{stderr}");
}

#[test]
fn tokenize_downloads_the_tokenizer_alone() {
    let server = HubServer::start(REPO, tiny_dir());
    let home = tempfile::tempdir().unwrap();
    let out = lmscope()
        .args(["--model", REPO, "tokenize", "hi"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &server.endpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = server.log();
    assert!(log.iter().any(|l| l.contains("/resolve/main/tokenizer.json")), "{log:?}");
    for file in ["config.json", "model.safetensors"] {
        assert!(!log.iter().any(|l| l.contains(&format!("/resolve/main/{file}"))), "{log:?}");
    }
}

#[test]
fn revision_and_token_reach_the_hub() {
    let server = HubServer::start(REPO, tiny_dir());
    let home = tempfile::tempdir().unwrap();
    let out = lmscope()
        .args(["--model", REPO, "--revision", "v1.0", "logits", "hi"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &server.endpoint)
        .env("HF_TOKEN", "hf_test_token")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = server.log();
    assert!(
        log.iter().any(|l| l.contains("/lmscope-test/tiny-llama/resolve/v1.0/config.json")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l == "authorization: Bearer hf_test_token"), "{log:?}");
    let repo_dir = home.path().join("hub/models--lmscope-test--tiny-llama");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/v1.0")).unwrap().trim(), COMMIT);
}

/// Runs `lmscope logits` (which needs the whole model) against a server; returns (success,
/// stderr, seconds taken).
fn tokenize_via(server: &HubServer, home: &Path, extra: &[(&str, &str)]) -> (bool, String, f64) {
    let start = std::time::Instant::now();
    let mut cmd = lmscope();
    cmd.args(["--model", REPO, "logits", "hi"])
        .env("HF_HOME", home)
        .env("HF_ENDPOINT", &server.endpoint);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stderr, start.elapsed().as_secs_f64())
}

#[test]
fn an_interrupted_download_is_never_taken_as_complete_and_resumes() {
    let server = HubServer::start(REPO, tiny_dir());
    server.inject("model.safetensors", Fault::CutAfter(100_000));
    let home = tempfile::tempdir().unwrap();
    let (ok, stderr, _) = tokenize_via(&server, home.path(), &[]);
    assert!(!ok, "a cut download must fail");
    assert!(stderr.contains("after 100000 of"), "{stderr}");
    assert!(stderr.contains("run again to resume"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let snapshot = home.path().join("hub/models--lmscope-test--tiny-llama/snapshots").join(COMMIT);
    assert!(!snapshot.join("model.safetensors").exists(), "half a file must not look complete");

    // The next run resumes where the last one stopped and gets a working model.
    let (ok, stderr, _) = tokenize_via(&server, home.path(), &[]);
    assert!(ok, "{stderr}");
    assert!(server.log().iter().any(|l| l == "range: bytes=100000-"), "{:?}", server.log());
    let downloaded = std::fs::read(snapshot.join("model.safetensors")).unwrap();
    assert_eq!(downloaded, std::fs::read(tiny_dir().join("model.safetensors")).unwrap());
}

#[test]
fn server_errors_are_reported_with_their_status() {
    let server = HubServer::start(REPO, tiny_dir());
    server.inject("tokenizer.json", Fault::Status(500));
    let home = tempfile::tempdir().unwrap();
    let (ok, stderr, _) = tokenize_via(&server, home.path(), &[]);
    assert!(!ok);
    assert!(stderr.contains("HTTP 500"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let server = HubServer::start(REPO, tiny_dir());
    server.inject("config.json", Fault::Status(401));
    let home = tempfile::tempdir().unwrap();
    let (ok, stderr, _) = tokenize_via(&server, home.path(), &[]);
    assert!(!ok);
    assert!(stderr.contains("set HF_TOKEN"), "{stderr}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let server = HubServer::start(REPO, tiny_dir());
    server.inject("config.json", Fault::Hang);
    let home = tempfile::tempdir().unwrap();
    let (ok, stderr, seconds) = tokenize_via(&server, home.path(), &[("LMSCOPE_HUB_TIMEOUT", "1")]);
    assert!(!ok);
    assert!(seconds < 10.0, "took {seconds:.1} s");
    assert!(stderr.to_lowercase().contains("timed out"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
