//! Where a model comes from: a Hugging Face Hub repo id, a local directory, or a GGUF file.
//!
//! `--model` is resolved into local files here and nowhere else. Hub downloads go through hf-hub
//! into the standard Hugging Face cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), so a
//! model Python already downloaded is reused, and a model downloaded here is reused by Python.

use crate::hub::{HubError, HubRepo};
use anyhow::{bail, ensure, Context, Result};
use hf_hub::Cache;
use std::path::{Path, PathBuf};

/// The model lmscope uses when `--model` is not given (the notebook's model).
pub const DEFAULT_MODEL: &str = "HuggingFaceTB/SmolLM-135M";

/// How to get the real model when the Hub cannot be reached.
pub const OFFLINE_HINT: &str = "offline route: run scripts/fetch-model.sh, then pass --model models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// What the user asked for with `--model`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// A Hub repo id such as `HuggingFaceTB/SmolLM-135M`, at a branch, tag or commit.
    Hub { repo_id: String, revision: String },
    /// A directory with config.json, tokenizer.json and safetensors weights.
    Dir(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

/// The local files of a model, ready to load.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    Safetensors { config: PathBuf, tokenizer: PathBuf, weights: Vec<PathBuf> },
    Gguf(PathBuf),
}

/// The files the tokenizer alone needs (`tokenize` reads no weights).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerFiles {
    /// A `tokenizer.json`; its directory may also hold `tokenizer_config.json` (the chat
    /// template, bos and eos tokens) and `chat_template.jinja`.
    Json(PathBuf),
    /// A GGUF file: its metadata holds the tokenizer and the chat template.
    Gguf(PathBuf),
}

/// Optional files beside tokenizer.json that hold the chat template.
pub const CHAT_FILES: [&str; 2] = ["tokenizer_config.json", "chat_template.jinja"];

/// Resolved files plus a one-line description of where they came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub files: ModelFiles,
    pub origin: String,
}

impl ModelSpec {
    /// Interprets a `--model` value. An existing path wins; otherwise it must look like a repo id.
    pub fn parse(model: &str, revision: Option<&str>) -> Result<Self> {
        ensure!(!model.trim().is_empty(), "--model is empty");
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(ModelSpec::Dir(path.to_path_buf()));
        }
        if path.is_file() {
            ensure!(
                is_gguf_file(path)?,
                "{model} is a file but not a GGUF model (pass a .gguf file, or a directory with config.json, tokenizer.json and safetensors)"
            );
            return Ok(ModelSpec::Gguf(path.to_path_buf()));
        }
        let looks_like_path = model.starts_with(['.', '/', '~'])
            || model.ends_with(".gguf")
            || model.matches('/').count() > 1
            || model.contains('\\');
        ensure!(!looks_like_path, "model path {model} does not exist");
        let valid_id = model.split('/').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !part.starts_with(['-', '.'])
        });
        ensure!(
            valid_id,
            "{model:?} is neither an existing path nor a Hugging Face repo id (owner/name)"
        );
        Ok(ModelSpec::Hub {
            repo_id: model.to_string(),
            revision: revision.unwrap_or("main").to_string(),
        })
    }

    /// Finds (and for the Hub, downloads if needed) the model's files.
    pub fn resolve(&self) -> Result<Resolved> {
        match self {
            ModelSpec::Gguf(path) => Ok(Resolved {
                files: ModelFiles::Gguf(path.clone()),
                origin: format!("GGUF file {}", path.display()),
            }),
            ModelSpec::Dir(dir) => Ok(Resolved {
                files: dir_files(dir)?,
                origin: format!("directory {}", dir.display()),
            }),
            ModelSpec::Hub { repo_id, revision } => {
                let files = hub_files(repo_id, revision, Want::Model)?;
                Ok(Resolved {
                    files,
                    origin: format!("Hugging Face Hub {repo_id} (revision {revision})"),
                })
            }
        }
    }

    /// Finds (and for the Hub, downloads if needed) the tokenizer's files only: no weights are
    /// looked for, opened or downloaded.
    pub fn resolve_tokenizer(&self) -> Result<TokenizerFiles> {
        match self {
            ModelSpec::Gguf(path) => Ok(TokenizerFiles::Gguf(path.clone())),
            ModelSpec::Dir(dir) => {
                let tokenizer = dir.join("tokenizer.json");
                ensure!(tokenizer.is_file(), "{} has no tokenizer.json", dir.display());
                Ok(TokenizerFiles::Json(tokenizer))
            }
            ModelSpec::Hub { repo_id, revision } => {
                match hub_files(repo_id, revision, Want::Tokenizer)? {
                    ModelFiles::Safetensors { tokenizer, .. } => {
                        Ok(TokenizerFiles::Json(tokenizer))
                    }
                    ModelFiles::Gguf(path) => Ok(TokenizerFiles::Gguf(path)),
                }
            }
        }
    }
}

/// What to fetch from the Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// config.json, the tokenizer and the weights.
    Model,
    /// The tokenizer (and the optional chat files) alone.
    Tokenizer,
}

/// Whether a file starts with GGUF's magic bytes.
fn is_gguf_file(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = file.read(&mut magic).with_context(|| format!("cannot read {}", path.display()))?;
    let has_magic = n == 4 && &magic == b"GGUF";
    let named_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    ensure!(
        has_magic || !named_gguf,
        "{} is named .gguf but does not start with the GGUF magic bytes (corrupt or not a GGUF file)",
        path.display()
    );
    Ok(has_magic)
}

/// The files of a local model directory.
fn dir_files(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    let tokenizer = dir.join("tokenizer.json");
    ensure!(config.is_file(), "{} has no config.json", dir.display());
    ensure!(tokenizer.is_file(), "{} has no tokenizer.json", dir.display());
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let weights = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_names(&index)?.into_iter().map(|name| dir.join(name)).collect()
    } else {
        let ggufs: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        let hint = match ggufs.first() {
            Some(g) => format!(" (to use the GGUF file there, pass --model {})", g.display()),
            None => String::new(),
        };
        bail!(
            "{} has neither model.safetensors nor model.safetensors.index.json{hint}",
            dir.display()
        );
    };
    for w in &weights {
        ensure!(w.is_file(), "weight shard {} is missing", w.display());
    }
    Ok(ModelFiles::Safetensors { config, tokenizer, weights })
}

/// The shard file names listed in a `model.safetensors.index.json`, in order, without repeats.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("invalid JSON in {}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .with_context(|| format!("{} maps a tensor to a non-string", index.display()))?;
        ensure!(
            !file.contains('/') && !file.contains('\\') && !file.starts_with('.'),
            "{} names a shard outside the model directory: {file:?}",
            index.display()
        );
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    ensure!(!names.is_empty(), "{} lists no shards", index.display());
    Ok(names)
}

/// Whether the user asked hf-hub/huggingface_hub never to touch the network.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The Hugging Face cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

/// The files of a Hub model, from the cache or downloaded into it.
fn hub_files(repo_id: &str, revision: &str, want: Want) -> Result<ModelFiles> {
    let endpoint = std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string());
    let cache = hub_cache();
    let cache_dir = cache.path().display().to_string();
    let repo = HubRepo::new(&endpoint, repo_id, revision, cache);
    if hub_offline() {
        return model_files(repo_id, want, |name, _| repo.cached(name)).with_context(|| {
            format!(
                "{repo_id} (revision {revision}) is not complete in the Hugging Face cache {cache_dir} and HF_HUB_OFFLINE is set; {OFFLINE_HINT}"
            )
        });
    }
    let mut failure = None;
    // The optional chat files are downloaded along with a fresh tokenizer.json only: a cached
    // model without them (a repository that has none) never waits on the network for them.
    let fresh = repo.cached("tokenizer.json").is_none();
    let result = model_files(repo_id, want, |name, optional| {
        if optional {
            return repo.cached(name).or_else(|| fresh.then(|| repo.get(name).ok()).flatten());
        }
        match repo.get(name) {
            Ok(path) => Some(path),
            Err(HubError::NotFound) => None,
            Err(HubError::Failed(e)) => {
                failure.get_or_insert(e);
                None
            }
        }
    });
    match (result, failure) {
        (Ok(files), _) => Ok(files),
        (Err(_), Some(e)) => Err(anyhow::anyhow!(
            "cannot download {repo_id} (revision {revision}) from the Hugging Face Hub at {endpoint}: {e:#}; {OFFLINE_HINT}"
        )),
        (Err(e), None) => Err(e.context(format!(
            "{repo_id} (revision {revision}) on {endpoint} is not a usable model repository"
        ))),
    }
}

/// Collects a model's files through `fetch(name, optional)` (cache lookup or download): config.json,
/// tokenizer.json, the optional chat files, and model.safetensors or the shards its index lists
/// (for [`Want::Tokenizer`], tokenizer.json and the chat files alone, with `config` and
/// `weights` left empty).
fn model_files(
    repo_id: &str,
    want: Want,
    mut fetch: impl FnMut(&str, bool) -> Option<PathBuf>,
) -> Result<ModelFiles> {
    let config = match want {
        Want::Model => {
            fetch("config.json", false).with_context(|| format!("{repo_id} has no config.json"))?
        }
        Want::Tokenizer => PathBuf::new(),
    };
    let tokenizer = fetch("tokenizer.json", false)
        .with_context(|| format!("{repo_id} has no tokenizer.json"))?;
    // Optional: they land beside tokenizer.json in the snapshot, where the tokenizer looks.
    for name in CHAT_FILES {
        let _ = fetch(name, true);
    }
    if want == Want::Tokenizer {
        return Ok(ModelFiles::Safetensors { config, tokenizer, weights: Vec::new() });
    }
    let weights = match fetch("model.safetensors", false) {
        Some(single) => vec![single],
        None => {
            let index = fetch("model.safetensors.index.json", false).with_context(|| {
                format!("{repo_id} has neither model.safetensors nor model.safetensors.index.json")
            })?;
            let mut shards = Vec::new();
            for name in shard_names(&index)? {
                shards.push(
                    fetch(&name, false).with_context(|| format!("{repo_id} lacks shard {name}"))?,
                );
            }
            shards
        }
    };
    Ok(ModelFiles::Safetensors { config, tokenizer, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        assert_eq!(
            ModelSpec::parse("HuggingFaceTB/SmolLM-135M", None).unwrap(),
            ModelSpec::Hub { repo_id: "HuggingFaceTB/SmolLM-135M".into(), revision: "main".into() }
        );
        assert!(matches!(
            ModelSpec::parse("gpt2", Some("v1")).unwrap(),
            ModelSpec::Hub { revision, .. } if revision == "v1"
        ));
        let err = ModelSpec::parse("./no/such/model.gguf", None).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(ModelSpec::parse("not a repo", None).is_err());
        assert!(ModelSpec::parse("", None).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ModelSpec::parse(dir.path().to_str().unwrap(), None).unwrap(),
            ModelSpec::Dir(dir.path().to_path_buf())
        );
    }

    #[test]
    fn a_fake_gguf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("model.gguf");
        std::fs::write(&fake, b"not a gguf").unwrap();
        let err = ModelSpec::parse(fake.to_str().unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("GGUF magic"), "{err}");
    }

    #[test]
    fn shard_names_refuse_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
        assert!(shard_names(&index).is_err());
        std::fs::write(&index, r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}"#).unwrap();
        assert_eq!(shard_names(&index).unwrap(), vec!["m-1.safetensors", "m-2.safetensors"]);
    }
}
