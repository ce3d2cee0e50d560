//! `lmscope trace`: golden terminal output on the tiny fixture, the real GGUF's key numbers, the
//! HTML page's embedded data against `--json`, and clean errors.

mod common;

use common::{lmscope, lmscope_err, lmscope_json, real_model, repo_path};
use serde_json::Value;

fn gguf() -> String {
    real_model().to_str().unwrap().to_string()
}

const TINY: &str = "fixtures/tiny-llama";
const TEXT: &str = "The capital of Finland is";

/// Compares a command's stdout with tests/golden/NAME.txt (UPDATE_GOLDEN=1 rewrites it): byte
/// for byte on the CPU that wrote it, floats by their last digit elsewhere.
fn golden(name: &str, args: &[&str]) {
    let actual = common::compare::golden("trace", name, &[], args);
    for line in actual.lines() {
        assert!(line.chars().count() <= 80, "wider than 80 columns: {line:?}");
    }
}

#[test]
fn golden_trace_on_the_tiny_model() {
    golden("trace", &["--model", TINY, "trace", TEXT, "--steps", "3", "--color", "never"]);
    golden(
        "trace_sample",
        &[
            "--model",
            TINY,
            "trace",
            TEXT,
            "--sample",
            "--seed",
            "3",
            "--temperature",
            "0.7",
            "--top-k",
            "20",
            "--top-p",
            "0.5",
            "--color",
            "never",
        ],
    );
}

/// The ids of a list of objects' "id" fields.
fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x["id"].as_u64().unwrap()).collect()
}

#[test]
fn real_model_trace_key_numbers() {
    let j = lmscope_json(&["--model", &gguf(), "trace", TEXT, "--steps", "2"]);
    let want: Vec<u64> = vec![504, 3575, 282, 17446, 314];
    let got: Vec<u64> =
        j["tokenize"]["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(j["tokenize"]["bos_added"], false);
    // The same as the single commands give.
    let logits = lmscope_json(&["--model", &gguf(), "logits", TEXT, "-k", "10"]);
    assert_eq!(ids(&j["logits"]["top"]), ids(&logits["top"]));
    assert_eq!(j["logits"]["top"][0]["token"], "Ġthe");
    assert_eq!(j["next"]["strategy"], "greedy");
    assert_eq!(j["next"]["id"], logits["top"][0]["id"]);
    let p = j["next"]["prob"].as_f64().unwrap();
    assert!((p - logits["top"][0]["prob"].as_f64().unwrap()).abs() < 1e-12);
    // The lens' last row is the model's logits: same top-1 at the last position, exactly.
    let rows = j["lens"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 31);
    let last = &rows[30]["positions"][4]["top"];
    assert_eq!(last[0]["id"], logits["top"][0]["id"]);
    for k in 0..3 {
        let (a, b) =
            (last[k]["prob"].as_f64().unwrap(), logits["top"][k]["prob"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "lens final row {k}: {a} vs logits {b}");
    }
    assert_eq!(j["lens"]["check"]["max_abs_diff"], 0.0);
    assert_eq!(j["lens"]["check"]["top1_equal"], true);
    // The tracked answer is the final top-1, and its last probability is the logits' one.
    let track = &j["lens"]["track"];
    assert_eq!(track["id"], logits["top"][0]["id"]);
    let tp = track["rows"][30]["prob"].as_f64().unwrap();
    assert!((tp - p).abs() < 1e-9);
    // Embeddings, residual, attention shapes.
    assert_eq!(j["embed"]["shape"], serde_json::json!([49152, 576]));
    assert_eq!(j["residual"]["layers"].as_array().unwrap().len(), 31);
    assert_eq!(j["attention"]["layers"].as_array().unwrap().len(), 30);
    assert_eq!(j["attention"]["layers"][0].as_array().unwrap().len(), 9);
    assert_eq!(j["attention"]["summary"].as_array().unwrap().len(), 270);
    // The generated tokens are argmax's, with surprisal -log2 p.
    let argmax = lmscope_json(&["--model", &gguf(), "argmax", TEXT, "--steps", "2"]);
    assert_eq!(ids(&j["generate"]["steps"]), ids(&argmax["steps"]));
    let s0 = j["generate"]["surprisal_bits"][0].as_f64().unwrap();
    assert!((s0 + p.log2()).abs() < common::two_paths_tolerance());
}

/// The JSON block of a trace page, unescaped.
fn embedded(html: &str) -> Value {
    let open = "<script type=\"application/json\" id=\"trace-data\">";
    let start = html.find(open).expect("the page embeds its data") + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).expect("the embedded data parse")
}

#[test]
fn html_page_embeds_the_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("trace.html");
    let args = ["--model", TINY, "trace", TEXT, "--sample", "--seed", "5", "--steps", "2"];
    let out = lmscope().args(args).arg("--html").arg(&page).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    let mut from_page = embedded(&html);
    let mut from_json = lmscope_json(&args);
    // The command line differs (--html, --json); everything else is the same document.
    let command = from_page["command"].as_str().unwrap().to_string();
    assert!(command.contains("--html") && command.contains("trace"), "{command}");
    from_page["command"] = Value::Null;
    from_json["command"] = Value::Null;
    assert_eq!(from_page, from_json);
    // Self-contained: no external resources.
    // The only http:// is the SVG namespace the script creates elements in.
    assert_eq!(html.matches("http://").count(), html.matches("http://www.w3.org/2000/svg").count());
    for bad in ["https://", "src=", "<link", "@import", "url("] {
        assert_eq!(html.matches(bad).count(), 0, "the page refers to something outside it: {bad}");
    }
    assert!(html.contains(env!("CARGO_PKG_VERSION")));
    assert!(html.len() < 400_000, "the page is {} bytes", html.len());
}

#[test]
fn html_escapes_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("x.html");
    let text = "</script><b>&'\"";
    let out =
        lmscope().args(["--model", TINY, "trace", text, "--html"]).arg(&page).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<b>"), "unescaped markup from the text");
    assert_eq!(html.matches("</script>").count(), 2, "the text closed a script");
    assert_eq!(embedded(&html)["input"], text);
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let cases: &[&[&str]] = &[
        &["--model", TINY, "trace", ""],
        &["--model", TINY, "trace", "hi", "--sample", "--temperature", "0"],
        &["--model", TINY, "trace", "hi", "--sample", "--top-p", "1.5"],
        &["--model", TINY, "trace", "hi", "--sample", "--top-k", "0"],
        &["--model", TINY, "trace", "hi", "--html", "/nonexistent-dir/trace.html"],
    ];
    // A page is not left behind when the trace fails.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("t.html");
    let err = lmscope_err(&[
        "--model",
        TINY,
        "trace",
        "hi",
        "--sample",
        "--top-p",
        "2",
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(err.contains("top-p"), "{err}");
    assert!(!page.exists());
    for args in cases {
        let out = lmscope().args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = lmscope_err(args);
        assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

/// The real browser renders the page (scripts/browser-test.sh; under CI=true a browser that
/// cannot be installed fails it).
#[test]
fn the_page_renders_in_a_real_browser() {
    let out = std::process::Command::new(repo_path("scripts/browser-test.sh"))
        .env("LMSCOPE_BIN", env!("CARGO_BIN_EXE_lmscope"))
        .output()
        .unwrap();
    let log =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/browser-test.sh failed:\n{log}");
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(log.contains("browser-test: ok"), "{log}");
    }
}
