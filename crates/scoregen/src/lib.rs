//! scoregen: score-based generative modeling in Rust.
//!
//! Learn ∇ₓ log p from data by score matching, generate with reverse-SDE
//! samplers, and check everything against an exact Gaussian-mixture oracle.
//! See `docs/` and the project DESIGN for the map from formulas to modules.
//!
//! Call [`init`] before any tensor work (the CLI and every test do); every
//! backward pass in the library also calls it, so second-order gradients are
//! exact whatever the entry point.

pub mod autodiff;
pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod fsutil;
pub mod likelihood;
pub mod metrics;
pub mod nets;
pub mod objectives;
pub mod oracle;
pub mod progress;
pub mod rng;
pub mod run;
pub mod samplers;
pub mod score;
pub mod sde;
pub mod train;
pub mod viz;

pub use error::{Error, Result};

/// The library entry point: makes candle keep gradient graphs so that
/// second-order autodiff is exact. Idempotent and cheap.
pub fn init() {
    autodiff::enable_second_order();
}
