//! Where the time goes: named spans recorded while a command runs, printed by `--timings`.
//!
//! Recording is always on and costs one clock read and one lock per span (a few per command).

use std::sync::Mutex;
use std::time::{Duration, Instant};

static SPANS: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Measures from now until the guard is dropped, under `name`.
pub fn span(name: &'static str) -> Span {
    Span { name, start: Instant::now() }
}

pub struct Span {
    name: &'static str,
    start: Instant,
}

impl Drop for Span {
    fn drop(&mut self) {
        record(self.name, self.start.elapsed());
    }
}

/// Adds `elapsed` to the total of `name`.
pub fn record(name: &'static str, elapsed: Duration) {
    if let Ok(mut spans) = SPANS.lock() {
        match spans.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += elapsed,
            None => spans.push((name, elapsed)),
        }
    }
}

/// The recorded totals, in the order the names first appeared.
pub fn totals() -> Vec<(&'static str, Duration)> {
    SPANS.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Forgets the recorded spans (the repl times each line on its own).
pub fn reset() {
    if let Ok(mut spans) = SPANS.lock() {
        spans.clear();
    }
}

/// `--timings`' line: each stage's total, then `total`.
pub fn summary(total: Duration) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = String::from("timings:");
    for (name, d) in totals() {
        line += &format!(" {name} {:.1} ms,", ms(d));
    }
    format!("{line} total {:.1} ms (kernels: {})", ms(total), crate::kernels::backend())
}
