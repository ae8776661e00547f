//! Progress bars on stderr for every loop a person waits for. indicatif hides
//! them by itself when stderr is not a terminal; `quiet` hides them always.

use crate::error::Error;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A bar of `len` steps labelled `what`, showing rate, elapsed time and ETA.
pub fn bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} {per_sec} {elapsed_precise} elapsed, ETA {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Ctrl-C (SIGINT): the CLI's handler calls [`request_interrupt`]; the loops
/// that stop cleanly poll [`interrupted`] once per step. While none of them
/// runs ([`Interruptible`]), the handler exits at once instead.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INTERRUPTIBLE: AtomicUsize = AtomicUsize::new(0);

/// Asks the running loop to stop after its current step.
pub fn request_interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Whether a loop that stops cleanly on [`interrupted`] is running.
pub fn handles_interrupts() -> bool {
    INTERRUPTIBLE.load(Ordering::SeqCst) > 0
}

/// For the steps of a sampler (which return candle results): an error once
/// Ctrl-C was pressed. The command turns it into [`Error::Interrupted`].
pub fn stop_if_interrupted() -> candle_core::Result<()> {
    if interrupted() {
        return Err(candle_core::Error::Msg("interrupted".into()));
    }
    Ok(())
}

/// Marks a command that polls [`interrupted`] for as long as it lives.
pub struct Interruptible(());

impl Interruptible {
    pub fn enter() -> Self {
        INTERRUPTIBLE.fetch_add(1, Ordering::SeqCst);
        Self(())
    }

    /// `e`, or [`Error::Interrupted`] saying `what` when Ctrl-C caused it.
    pub fn explain(&self, e: Error, what: &str) -> Error {
        if interrupted() {
            Error::Interrupted(what.into())
        } else {
            e
        }
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        INTERRUPTIBLE.fetch_sub(1, Ordering::SeqCst);
    }
}
