//! Progress on standard error for work that takes a while: a forward pass over a long prompt
//! (the prefill), generating tokens, downloading a model file.
//!
//! A line is drawn only when standard error is a terminal and the output is not `--json`
//! ([`enable`]), never on standard output, and only once the work has taken longer than a delay
//! (`LMSCOPE_PROGRESS_DELAY` seconds, default 1), so a quick command prints nothing extra. One
//! line at a time: while one is up, another piece of work (the forward passes of a step the
//! generation counter counts) draws none. The line is cleared when the work ends.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The environment variable that sets the delay, in seconds (0: at once).
pub const DELAY_ENV: &str = "LMSCOPE_PROGRESS_DELAY";

static ENABLED: AtomicBool = AtomicBool::new(false);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turns progress lines on or off for the commands that follow (`app::run` calls it for each).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether progress would be drawn: standard error is a terminal and the output is not JSON.
pub fn wanted(json: bool) -> bool {
    !json && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// How long work runs before its progress line appears.
pub fn delay() -> Duration {
    std::env::var(DELAY_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(1), Duration::from_secs_f64)
}

/// A progress line for one piece of work; cleared when dropped.
pub struct Progress {
    bar: ProgressBar,
    /// Dropping it tells the thread that shows the line after the delay that the work is done.
    done: Option<mpsc::Sender<()>>,
    shower: Option<std::thread::JoinHandle<()>>,
}

/// A spinner with the elapsed time, for work that reports no steps (one forward pass).
pub fn spinner(message: String) -> Option<Progress> {
    start(None, "{spinner} {msg} ({elapsed})", message)
}

/// A counter of `total` steps (tokens generated).
pub fn counter(message: String, total: u64) -> Option<Progress> {
    start(Some(total), "{msg} [{bar:30}] {pos}/{len} ({elapsed}, {eta} left)", message)
}

/// A byte counter (a download), starting at `have`.
pub fn bytes(message: String, total: u64, have: u64) -> Option<Progress> {
    let p = start(
        Some(total),
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        message,
    )?;
    p.set_position(have);
    Some(p)
}

fn start(total: Option<u64>, template: &str, message: String) -> Option<Progress> {
    if !ENABLED.load(Ordering::Relaxed) || ACTIVE.swap(true, Ordering::AcqRel) {
        return None;
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    let delay = delay();
    if delay.is_zero() {
        // At once, before the work starts (tests set the delay to 0 to see the line for sure).
        show(&bar);
        return Some(Progress { bar, done: None, shower: None });
    }
    let (done, wait) = mpsc::channel::<()>();
    let shown = bar.clone();
    // Shows the line once the delay has passed without the work ending (it never sends: the
    // channel closes when the work ends).
    let shower = std::thread::Builder::new()
        .name("lmscope-progress".into())
        .spawn(move || {
            if wait.recv_timeout(delay) == Err(mpsc::RecvTimeoutError::Timeout) {
                show(&shown);
                let _ = wait.recv();
            }
        })
        .ok();
    Some(Progress { bar, done: Some(done), shower })
}

fn show(bar: &ProgressBar) {
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.tick();
}

impl Progress {
    /// How far the work is (steps or bytes).
    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.shower.take() {
            let _ = t.join();
        }
        self.bar.disable_steady_tick();
        self.bar.finish_and_clear();
        ACTIVE.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // (Turning progress on here would race the forward passes of other tests; tests/progress.rs
    // runs the binary in a pseudo-terminal and in a pipe.)
    #[test]
    fn nothing_is_drawn_unless_enabled() {
        enable(false);
        assert!(spinner("x".into()).is_none());
        assert!(counter("x".into(), 3).is_none());
    }
}
