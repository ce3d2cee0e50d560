//! Where the time goes: named spans recorded while a command runs, printed by `--timings`.
//!
//! Recording is always on and costs one clock read and one lock per span (a few per command).

use std::sync::Mutex;
use std::time::{Duration, Instant};

static SPANS: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());
/// The decoding steps of `generate` and `argmax --steps` (each a forward pass over one new
/// token, the cache holding the rest): how many, and their total time.
static STEPS: Mutex<(u64, Duration)> = Mutex::new((0, Duration::ZERO));

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

/// Counts one decoding step that took `elapsed` (part of the `forward` span).
pub fn decode_step(elapsed: Duration) {
    if let Ok(mut steps) = STEPS.lock() {
        steps.0 += 1;
        steps.1 += elapsed;
    }
}

/// The decoding steps recorded: how many, and their total time.
pub fn decode_steps() -> (u64, Duration) {
    STEPS.lock().map(|s| *s).unwrap_or_default()
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
    if let Ok(mut steps) = STEPS.lock() {
        *steps = (0, Duration::ZERO);
    }
}

/// `--timings`' line: each stage's total, then `total`. After `forward`, when tokens were
/// generated, the decoding steps' share of it and their rate: the figure `cargo bench --bench
/// inprocess` calls decode (one-token steps after the first new token).
pub fn summary(total: Duration) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = String::from("timings:");
    let (steps, stepping) = decode_steps();
    for (name, d) in totals() {
        line += &format!(" {name} {:.1} ms", ms(d));
        if name == "forward" && steps > 0 {
            let rate = steps as f64 / stepping.as_secs_f64().max(1e-9);
            line += &format!(
                " (decode: {}, {:.1} ms, {rate:.1} tokens/s)",
                crate::text::count(steps as usize, "step"),
                ms(stepping)
            );
        }
        line += ",";
    }
    format!("{line} total {:.1} ms (kernels: {})", ms(total), crate::kernels::backend())
}
