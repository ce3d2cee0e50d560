//! The two rooms stay apart: the student's room (src/model) holds no unsafe code and nothing
//! specific to a processor, and the engine room (src/kernels) never reaches back into the model,
//! the loaders, the stages or the printers.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn src(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir)
}

/// Lines of `dir`'s files that contain any of `words` as a whole word (or path); comment lines
/// too unless `code_only`.
fn offending(dir: &str, words: &[&str], code_only: bool) -> Vec<String> {
    let mut found = Vec::new();
    let files = rust_files(&src(dir));
    assert!(!files.is_empty(), "no Rust files under src/{dir}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if code_only && line.trim_start().starts_with("//") {
                continue;
            }
            let hit = words.iter().any(|w| {
                line.match_indices(w).any(|(at, _)| {
                    let before = line[..at].chars().next_back();
                    let after = line[at + w.len()..].chars().next();
                    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    !word(before) && !word(after)
                })
            });
            if hit {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_students_room_has_no_unsafe_and_no_processor_specific_code() {
    let found = offending(
        "model",
        &["unsafe", "std::arch", "target_arch", "target_feature", "asm!"],
        false,
    );
    assert!(found.is_empty(), "src/model must read as a textbook:\n{}", found.join("\n"));
}

#[test]
fn the_engine_room_depends_on_candle_and_std_only() {
    let words = [
        "crate::model",
        "crate::stages",
        "crate::load",
        "crate::render",
        "crate::app",
        "crate::cli",
        "crate::tokenizer",
        "crate::config",
        "lmscope::",
    ];
    let found = offending("kernels", &words, true);
    assert!(
        found.is_empty(),
        "src/kernels must not import the rest of lmscope:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    // The tests above would pass on an empty match: the engine room has unsafe code and
    // std::arch, and the student's room imports the kernels.
    assert!(!offending("kernels", &["unsafe"], true).is_empty());
    assert!(!offending("kernels", &["std::arch"], true).is_empty());
    assert!(!offending("model", &["crate::kernels"], true).is_empty());
}
