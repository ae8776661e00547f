//! One module per subcommand: its clap arguments and a `run` that calls the
//! library and prints. Argument groups that several commands share live in
//! [`shared`].

pub mod bench;
pub mod classify;
pub mod demo;
pub mod eval;
pub mod info;
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

use scoregen::device::{Device, DeviceSpec};
use serde::Serialize;

/// The global flags every command sees (`-v` is spent on the log level in `main`).
#[derive(Debug, Clone, Copy)]
pub struct Globals {
    /// `--quiet`: hide progress bars.
    pub quiet: bool,
    /// `--json`: print results as JSON instead of text.
    pub json: bool,
    /// `--device`: where tensors live (none given: the config's `run.device`, else the CPU).
    pub device: Option<DeviceSpec>,
}

impl Globals {
    /// `--device` if given, else `fallback` (a config's `run.device`).
    pub fn device_or(&self, fallback: DeviceSpec) -> DeviceSpec {
        self.device.unwrap_or(fallback)
    }

    /// `--device` opened (the CPU without it): an error names a missing `cuda` feature or GPU.
    pub fn open_device(&self) -> anyhow::Result<Device> {
        Ok(self.device_or(DeviceSpec::Cpu).open()?)
    }

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
