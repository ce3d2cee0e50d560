//! A tiny HTTP server that serves a model directory in the Hugging Face Hub's URL layout:
//! `GET /{repo_id}/resolve/{revision}/{file}` with the headers the Hub sends (`X-Repo-Commit`,
//! `ETag`, `Content-Range` for range requests). Files it does not have answer 404. Faults can
//! be injected per file: an HTTP error, a body cut short, or a connection that never answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The commit hash the server reports for every file.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What goes wrong with a file's download (its body request, not the 1-byte metadata probe).
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer with this HTTP status, for every request of the file.
    Status(u16),
    /// Announce the whole body, send this many bytes, close (once).
    CutAfter(usize),
    /// Accept the connection and never answer (every time).
    Hang,
}

pub struct HubServer {
    pub endpoint: String,
    /// Number of requests answered so far.
    pub requests: Arc<AtomicUsize>,
    /// Every request line, Range and Authorization header seen, in order.
    pub log: Arc<Mutex<Vec<String>>>,
    faults: Arc<Mutex<Vec<(String, Fault)>>>,
}

impl HubServer {
    /// Serves `dir` as repo `repo_id`, at any revision, on a free loopback port.
    pub fn start(repo_id: &str, dir: PathBuf) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Vec::new()));
        let prefix = format!("/{repo_id}/resolve/");
        let (counter, seen, injected) = (requests.clone(), log.clone(), faults.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let (prefix, dir, seen, injected) =
                    (prefix.clone(), dir.clone(), seen.clone(), injected.clone());
                thread::spawn(move || {
                    let _ = answer(stream, &prefix, &dir, &seen, &injected);
                });
            }
        });
        HubServer { endpoint, requests, log, faults }
    }

    /// Makes downloads of `file` go wrong.
    pub fn inject(&self, file: &str, fault: Fault) {
        self.faults.lock().unwrap().push((file.to_string(), fault));
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn answer(
    mut stream: TcpStream,
    prefix: &str,
    dir: &Path,
    log: &Mutex<Vec<String>>,
    faults: &Mutex<Vec<(String, Fault)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    log.lock().unwrap().push(request_line.trim().to_string());
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                log.lock().unwrap().push(format!("range: {}", value.trim()));
                range = parse_range(value.trim());
            }
            if name.eq_ignore_ascii_case("authorization") {
                log.lock().unwrap().push(format!("authorization: {}", value.trim()));
            }
        }
    }
    // {prefix}{revision}/{file}
    let name = path
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once('/'))
        .map(|(_revision, file)| file.to_string())
        .filter(|f| !f.contains(".."))
        .unwrap_or_default();
    let probe = matches!(range, Some((0, Some(0))));
    let fault = {
        let mut faults = faults.lock().unwrap();
        match faults.iter().position(|(f, _)| *f == name) {
            Some(i) => match faults[i].1 {
                Fault::Status(code) => Some(Fault::Status(code)),
                Fault::Hang => Some(Fault::Hang),
                Fault::CutAfter(n) if !probe => {
                    faults.remove(i); // once: the next request succeeds
                    Some(Fault::CutAfter(n))
                }
                Fault::CutAfter(_) => None,
            },
            None => None,
        }
    };
    match fault {
        Some(Fault::Status(code)) => {
            write!(
                stream,
                "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some(Fault::Hang) => {
            thread::sleep(Duration::from_secs(120));
            return Ok(());
        }
        _ => {}
    }
    let file = Some(dir.join(&name)).filter(|p| !name.is_empty() && p.is_file());
    let Some(file) = file else {
        let body = b"Entry not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return stream.write_all(body);
    };
    let data = std::fs::read(&file)?;
    let etag = format!("{:016x}", fnv1a(&data));
    let size = data.len();
    let (status, body, content_range) = match range {
        Some((start, end)) if start < size => {
            let end = end.unwrap_or(size - 1).min(size - 1);
            ("206 Partial Content", &data[start..=end], Some(format!("bytes {start}-{end}/{size}")))
        }
        _ => ("200 OK", &data[..], None),
    };
    write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len())?;
    write!(stream, "X-Repo-Commit: {COMMIT}\r\nETag: \"{etag}\"\r\n")?;
    if let Some(cr) = content_range {
        write!(stream, "Content-Range: {cr}\r\n")?;
    }
    write!(stream, "Connection: close\r\n\r\n")?;
    match fault {
        Some(Fault::CutAfter(n)) => {
            stream.write_all(&body[..n.min(body.len())])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)
        }
        _ => stream.write_all(body),
    }
}

/// `bytes=START-` or `bytes=START-END`.
fn parse_range(value: &str) -> Option<(usize, Option<usize>)> {
    let spec = value.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()))
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}
