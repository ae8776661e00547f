//! Progress bars on stderr for every loop a person waits for. indicatif hides
//! them by itself when stderr is not a terminal; `quiet` hides them always.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what`, showing rate and ETA.
pub fn bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
