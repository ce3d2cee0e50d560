//! The lmscope binary: parse arguments, run one stage, print its report, exit.

use clap::Parser;
use lmscope::app::{self, Session};
use lmscope::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    lmscope::keep_freed_memory();
    let cli = Cli::parse();
    let show_timings = cli.global.timings;
    if let Some(n) = cli.global.threads {
        // candle reads RAYON_NUM_THREADS for its GEMM; lmscope's kernels run on kernels::team,
        // which takes its size from rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n as usize).build_global();
    }
    let stdout = std::io::stdout();
    let result = app::run(&cli, &mut Session::new(), &mut stdout.lock());
    if show_timings {
        print_timings(start.elapsed());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if is_broken_pipe(&err) {
                // `lmscope ... | head`: the reader left; that is not an error.
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--timings`: one line per stage on stderr.
fn print_timings(total: std::time::Duration) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let mut line = String::from("timings:");
    for (name, d) in lmscope::timings::totals() {
        line += &format!(" {name} {:.1} ms,", ms(d));
    }
    eprintln!("{line} total {:.1} ms (kernels: {})", ms(total), lmscope::kernels::backend());
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
