//! Downloading files from the Hugging Face Hub into the standard Hugging Face cache.
//!
//! hf-hub gives us the cache's layout (`hf_hub::Cache`, `Repo::folder_name`, the token file); the
//! transfer itself is done here because hf-hub 0.4's blocking client sets no timeouts (a server
//! that stops answering hangs it forever) and renames a download into place without checking
//! that every byte arrived. Here:
//!
//! - every connection and every read has a timeout (`LMSCOPE_HUB_TIMEOUT` seconds, default 30);
//! - a file is written to `blobs/<etag>.incomplete`, resumed from there by the next run, and only
//!   renamed to `blobs/<etag>` once its size matches what the server announced;
//! - the snapshot entry (`snapshots/<commit>/<file>`, a relative symlink to the blob) and the ref
//!   (`refs/<revision>`) are written last, so an interrupted run never leaves a half file that
//!   looks complete. This is the layout Python's huggingface_hub writes and reads.

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a file could not be fetched.
#[derive(Debug)]
pub enum HubError {
    /// The repository has no such file (HTTP 404).
    NotFound,
    /// Anything else: the Hub is unreachable, refused, failed or timed out.
    Failed(anyhow::Error),
}

/// A repository at a revision, in a cache, on an endpoint.
pub struct HubRepo {
    pub endpoint: String,
    pub repo_id: String,
    pub revision: String,
    cache: Cache,
    token: Option<String>,
    timeout: Duration,
}

impl HubRepo {
    pub fn new(endpoint: &str, repo_id: &str, revision: &str, cache: Cache) -> Self {
        let token =
            std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
        let seconds = std::env::var("LMSCOPE_HUB_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(30.0);
        HubRepo {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            cache,
            token,
            timeout: Duration::from_secs_f64(seconds),
        }
    }

    /// `<cache>/models--owner--name`
    fn dir(&self) -> PathBuf {
        let repo =
            Repo::with_revision(self.repo_id.clone(), RepoType::Model, self.revision.clone());
        self.cache.path().join(repo.folder_name())
    }

    /// The cached copy of `file` at this revision, if a complete one is there. Never touches the
    /// network.
    pub fn cached(&self, file: &str) -> Option<PathBuf> {
        let dir = self.dir();
        let commit = match std::fs::read_to_string(dir.join("refs").join(&self.revision)) {
            Ok(commit) => commit.trim().to_string(),
            // A revision that is itself a commit hash needs no ref.
            Err(_) if is_commit_hash(&self.revision) => self.revision.clone(),
            Err(_) => return None,
        };
        let path = dir.join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    /// The cached copy of `file`, downloading it first if needed.
    pub fn get(&self, file: &str) -> Result<PathBuf, HubError> {
        if let Some(path) = self.cached(file) {
            return Ok(path);
        }
        self.download(file)
    }

    fn url(&self, file: &str) -> String {
        format!("{}/{}/resolve/{}/{}", self.endpoint, self.repo_id, self.revision, file)
    }

    fn agent(&self, redirects: u32) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout_connect(self.timeout)
            .timeout_read(self.timeout)
            .timeout_write(self.timeout)
            .redirects(redirects)
            .try_proxy_from_env(true)
            .user_agent(concat!("lmscope/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    fn request(
        &self,
        agent: &ureq::Agent,
        url: &str,
        range: &str,
    ) -> Result<ureq::Response, HubError> {
        let mut req = agent.get(url).set("Range", range);
        if let Some(token) = &self.token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        match req.call() {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(404, _)) => Err(HubError::NotFound),
            Err(ureq::Error::Status(code @ (401 | 403), _)) => Err(HubError::Failed(anyhow!(
                "{url}: HTTP {code}: the repository is private or gated (set HF_TOKEN to a token with access)"
            ))),
            Err(ureq::Error::Status(code, resp)) => Err(HubError::Failed(anyhow!(
                "{url}: HTTP {code} {}",
                resp.status_text()
            ))),
            // ureq's message names the URL already.
            Err(ureq::Error::Transport(t)) => Err(HubError::Failed(anyhow!("{t}"))),
        }
    }

    /// Asks which commit and blob `file` is, and its size (the first byte only).
    fn metadata(&self, file: &str) -> Result<Metadata, HubError> {
        let url = self.url(file);
        let first = self.request(&self.agent(0), &url, "bytes=0-0")?;
        let header = |name: &str| first.header(name).map(|v| v.trim_matches('"').to_string());
        let commit = header("x-repo-commit")
            .ok_or_else(|| HubError::Failed(anyhow!("{url}: the response has no X-Repo-Commit")))?;
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .ok_or_else(|| HubError::Failed(anyhow!("{url}: the response has no ETag")))?;
        let etag = etag.trim_start_matches("W/").trim_matches('"').to_string();
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
            return Err(HubError::Failed(anyhow!("{url}: unusable ETag {etag:?}")));
        }
        if !is_commit_hash(&commit) {
            return Err(HubError::Failed(anyhow!("{url}: unusable commit {commit:?}")));
        }
        // Large files redirect to a CDN; X-Linked-Size says their size without following.
        let size = match header("x-linked-size").and_then(|s| s.parse().ok()) {
            Some(size) => size,
            None => {
                let resp = if (300..400).contains(&first.status()) {
                    let location = first.header("location").unwrap_or_default().to_string();
                    self.request(&self.agent(5), &location, "bytes=0-0")?
                } else {
                    first
                };
                content_size(&resp).ok_or_else(|| {
                    HubError::Failed(anyhow!("{url}: the response does not say the file's size"))
                })?
            }
        };
        Ok(Metadata { commit, etag, size })
    }

    fn download(&self, file: &str) -> Result<PathBuf, HubError> {
        let meta = self.metadata(file)?;
        let fail = |e: anyhow::Error| HubError::Failed(e);
        let dir = self.dir();
        let blob = dir.join("blobs").join(&meta.etag);
        if !blob.is_file() || std::fs::metadata(&blob).map(|m| m.len()).ok() != Some(meta.size) {
            let partial = dir.join("blobs").join(format!("{}.incomplete", meta.etag));
            std::fs::create_dir_all(dir.join("blobs"))
                .with_context(|| format!("cannot create {}", dir.display()))
                .map_err(fail)?;
            self.fetch_into(file, &partial, meta.size)?;
            std::fs::rename(&partial, &blob)
                .with_context(|| format!("cannot move {} into place", partial.display()))
                .map_err(fail)?;
        }
        // The snapshot entry points at the blob; the ref names the commit. Both come last.
        let pointer = dir.join("snapshots").join(&meta.commit).join(file);
        link_to_blob(&pointer, &blob, file).map_err(fail)?;
        if self.revision != meta.commit {
            let refs = dir.join("refs").join(&self.revision);
            write_atomically(&refs, meta.commit.as_bytes()).map_err(fail)?;
        }
        Ok(pointer)
    }

    /// Downloads `file` into `partial`, resuming from what is already there, until it has
    /// exactly `size` bytes.
    fn fetch_into(&self, file: &str, partial: &Path, size: u64) -> Result<(), HubError> {
        let fail = |e: anyhow::Error| HubError::Failed(e);
        let url = self.url(file);
        let mut have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if have > size {
            // Left over from another version of the file: start again.
            std::fs::remove_file(partial).ok();
            have = 0;
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .with_context(|| format!("cannot write {}", partial.display()))
            .map_err(fail)?;
        if have < size {
            let resp = self.request(&self.agent(5), &url, &format!("bytes={have}-"))?;
            if resp.status() == 200 && have > 0 {
                // The server ignored the range and sends the whole file: start over.
                out.set_len(0).map_err(|e| fail(e.into()))?;
                have = 0;
            }
            let bar = self.progress_bar(file, size, have);
            let mut reader = resp.into_reader().take(size - have);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        return Err(fail(anyhow!(
                            "{url}: the download broke off after {} of {size} bytes ({e}); run again to resume",
                            have
                        )))
                    }
                };
                out.write_all(&buf[..n])
                    .with_context(|| format!("cannot write {}", partial.display()))
                    .map_err(fail)?;
                have += n as u64;
                if let Some(bar) = &bar {
                    bar.set_position(have);
                }
            }
            drop(bar);
        }
        out.sync_all().ok();
        if have != size {
            return Err(fail(anyhow!(
                "{url}: the download ended after {have} of {size} bytes; run again to resume"
            )));
        }
        Ok(())
    }

    /// A download's progress line (on a terminal's stderr, after the delay; see
    /// [`crate::progress`]).
    fn progress_bar(&self, file: &str, size: u64, have: u64) -> Option<crate::progress::Progress> {
        crate::progress::bytes(format!("downloading {file}"), size, have)
    }
}

struct Metadata {
    commit: String,
    etag: String,
    size: u64,
}

/// The total size from `Content-Range: bytes 0-0/SIZE`, or `Content-Length` of a full answer.
fn content_size(resp: &ureq::Response) -> Option<u64> {
    if let Some(range) = resp.header("content-range") {
        return range.rsplit('/').next()?.trim().parse().ok();
    }
    (resp.status() == 200).then(|| resp.header("content-length")?.parse().ok()).flatten()
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Points `snapshots/<commit>/<file>` at the blob with a relative symlink (a copy where
/// symlinks are unavailable).
fn link_to_blob(pointer: &Path, blob: &Path, file: &str) -> Result<()> {
    if file.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        bail!("refusing the file name {file:?}");
    }
    let parent = pointer.parent().context("snapshot path has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    if pointer.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(pointer); // a dangling link from an older run

    // snapshots/<commit>/<a/b/file> -> ../../(../)blobs/<etag>
    let depth = 2 + file.matches('/').count();
    let target =
        PathBuf::from("../".repeat(depth)).join("blobs").join(blob.file_name().unwrap_or_default());
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let linked = std::fs::copy(blob, pointer).map(|_| ());
    linked.with_context(|| format!("cannot create {}", pointer.display()))
}

/// Writes a small file through a temporary name, so readers never see half of it.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let parent = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = path.with_extension("lmscope-tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_hashes() {
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
        assert!(!is_commit_hash("0123456789abcdef0123456789abcdef0123456z"));
    }

    #[test]
    fn links_point_back_to_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blobs/abc");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"data").unwrap();
        let pointer = dir.path().join("snapshots/c0ffee/sub/file.json");
        link_to_blob(&pointer, &blob, "sub/file.json").unwrap();
        assert_eq!(std::fs::read(&pointer).unwrap(), b"data");
        assert!(link_to_blob(&pointer, &blob, "../escape").is_err());
    }
}
