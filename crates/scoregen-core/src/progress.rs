//! Progress bars on stderr for every loop a person waits for. indicatif hides
//! them by itself when stderr is not a terminal; `quiet` hides them always.

use crate::error::Error;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A bar of `len` steps labelled `what`, showing rate, elapsed time and ETA.
/// While a [`Watch`] is alive on this thread the bar is drawn by the watcher
/// instead (hidden here, counting, `quiet` or not).
pub fn bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    if let Some(bars) = WATCHED.with(|w| w.borrow().clone()) {
        let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::hidden());
        pb.set_prefix(what.to_string());
        bars.0.lock().expect("not poisoned").push(pb.clone());
        return pb;
    }
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

thread_local! {
    static WATCHED: RefCell<Option<Bars>> = const { RefCell::new(None) };
}

/// The bars made on a thread while its [`Watch`] lives, in order, shared with
/// whoever draws them (Python's tqdm, polling `position()` and `length()` from
/// another thread).
#[derive(Clone, Default)]
pub struct Bars(Arc<Mutex<Vec<ProgressBar>>>);

impl Bars {
    /// The bars made so far (clones sharing their state).
    pub fn list(&self) -> Vec<ProgressBar> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// While alive, every [`bar`] made on this thread is handed to its [`Bars`]
/// instead of drawing itself: a front end with its own bars (a notebook's)
/// shows the library's loops without the library knowing it.
pub struct Watch {
    previous: Option<Bars>,
}

impl Watch {
    pub fn enter() -> (Self, Bars) {
        let bars = Bars::default();
        let previous = WATCHED.with(|w| w.borrow_mut().replace(bars.clone()));
        (Self { previous }, bars)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHED.with(|w| *w.borrow_mut() = self.previous.take());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_receives_the_bars_made_on_its_thread_and_counts_them() {
        let (watch, bars) = Watch::enter();
        let pb = bar(7, "sample", true);
        pb.inc(3);
        std::thread::spawn(|| bar(5, "elsewhere", false).inc(1)).join().unwrap();
        let seen = bars.list();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].position(), seen[0].length(), seen[0].prefix()), (3, Some(7), "sample".to_string()));
        drop(watch);
        bar(2, "after", true);
        assert_eq!(bars.list().len(), 1);
    }
}
