//! One module per subcommand: its clap arguments and a `run` that calls the
//! library and prints. Argument groups that several commands share live in
//! [`shared`].

pub mod bench;
pub mod classify;
pub mod demo;
pub mod eval;
pub mod inpaint;
pub mod likelihood;
pub mod list;
pub mod quickstart;
pub mod report;
pub mod sample;
pub mod shared;
pub mod suggest_sigmas;
pub mod train;
pub mod train_classifier;

use serde::Serialize;

/// The global flags every command sees (`-v` is spent on the log level in `main`).
#[derive(Debug, Clone, Copy)]
pub struct Globals {
    /// `--quiet`: hide progress bars.
    pub quiet: bool,
    /// `--json`: print results as JSON instead of text.
    pub json: bool,
}

impl Globals {
    /// Prints `value` as pretty JSON with `--json`, else as `text` writes it.
    pub fn print<T: Serialize>(&self, value: &T, text: impl FnOnce(&T)) {
        if self.json {
            print_json(value);
        } else {
            text(value);
        }
    }
}

pub fn print_json(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("results serialize"));
}
