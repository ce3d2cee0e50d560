//! What a parallel loop costs on top of its work, with rayon's pool and with lmscope's team
//! (`src/model/team.rs`), for docs/performance.md ("Threads"). Each round is a serial step of S
//! microseconds on the calling thread, then a loop of one task per thread of P microseconds
//! each (busy-waiting on the clock): a forward pass is a few hundred such rounds. The overhead
//! is the round's time minus S + P.
//!
//! `cargo bench --bench team_probe` prints microseconds per round. Under `cargo test
//! --all-targets` (scripts/test.sh) it runs a few rounds of each (a smoke test of the probe).

use lmscope::kernels::team;
use rayon::prelude::*;
use std::time::Instant;

fn busy(us: f64) {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() * 1e6 < us {
        std::hint::spin_loop();
    }
}

/// Microseconds per round: `serial` us on this thread, then `run` (a loop of `parallel` us tasks).
fn per_round(rounds: usize, serial: f64, parallel: f64, run: &dyn Fn(&(dyn Fn() + Sync))) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        busy(serial);
        run(&|| busy(parallel));
    }
    start.elapsed().as_secs_f64() * 1e6 / rounds as f64
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs bench targets without it.
    let brief = !std::env::args().any(|a| a == "--bench");
    let rounds = if brief { 20 } else { 3000 };
    let threads = team::threads();
    println!("{threads} threads, {rounds} rounds each; microseconds per round (overhead)");
    println!("{:>9} {:>11} {:>16} {:>16}", "serial S", "parallel P", "rayon", "team");
    for (serial, parallel) in [(0.0, 20.0), (5.0, 20.0), (20.0, 20.0), (50.0, 50.0), (100.0, 100.0)]
    {
        // Both called from one of rayon's threads, as lmscope's forward pass is.
        let rayon_us = rayon::scope(|_| {
            per_round(rounds, serial, parallel, &|task| {
                (0..threads).into_par_iter().for_each(|_| task())
            })
        });
        let team_us = rayon::scope(|_| {
            per_round(rounds, serial, parallel, &|task| team::for_each(threads, |_| task()))
        });
        let ideal = serial + parallel;
        println!(
            "{serial:>9} {parallel:>11} {:>16} {:>16}",
            format!("{rayon_us:.1} ({:+.1})", rayon_us - ideal),
            format!("{team_us:.1} ({:+.1})", team_us - ideal)
        );
    }
}
