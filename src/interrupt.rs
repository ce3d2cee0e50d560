//! Ctrl-C in the repl: the signal handler sets a flag, long loops check it between steps and stop
//! with [`Interrupted`], and the repl goes back to its prompt. Outside the repl nothing sets the
//! flag (Ctrl-C ends the process as usual).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The error a loop stops with when Ctrl-C was pressed.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Asks the running command to stop (called from the signal handler: only an atomic store).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Forgets an earlier request (before each command).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// `Err(Interrupted)` once Ctrl-C was pressed: for loops between their steps.
pub fn check() -> anyhow::Result<()> {
    if REQUESTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Whether an error is (or was caused by) an interruption.
pub fn is_interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Interrupted>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stops_the_next_check_until_cleared() {
        clear();
        assert!(check().is_ok());
        request();
        let err = check().unwrap_err();
        assert!(is_interrupted(&err));
        assert!(is_interrupted(&err.context("while generating")));
        assert_eq!(format!("{}", check().unwrap_err()), "interrupted");
        clear();
        assert!(check().is_ok());
        assert!(!is_interrupted(&anyhow::anyhow!("other")));
    }
}
