//! The lmscope binary: parse arguments, run one stage, print its report, exit.

use clap::Parser;
use lmscope::app::{self, Session};
use lmscope::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    lmscope::keep_freed_memory();
    let cli = Cli::parse();
    // The repl prints --timings for each line.
    let show_timings = cli.global.timings && !matches!(cli.command, Command::Repl);
    if let Some(n) = cli.global.threads {
        // candle reads RAYON_NUM_THREADS for its GEMM; lmscope's kernels run on kernels::team,
        // which takes its size from rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n as usize).build_global();
    }
    let stdout = std::io::stdout();
    let result = app::run(&cli, &mut Session::new(), &mut stdout.lock());
    if show_timings {
        eprintln!("{}", lmscope::timings::summary(start.elapsed()));
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

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
