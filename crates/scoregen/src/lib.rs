//! scoregen: score-based generative modeling in Rust.
//!
//! Learn ∇ₓ log p from data by score matching, generate with reverse-SDE
//! samplers, and check everything against an exact Gaussian-mixture oracle.
//! See `docs/architecture.md` for the layers and the data flow, and
//! `docs/guide.md` for the map from formulas to functions.
//!
//! The library is three crates, each able to import only those below it, so
//! Cargo enforces the layering: `scoregen-core` (foundation and math),
//! `scoregen-nets` (networks and training) and this one, the application
//! layer ([`app`]: the config, the factory, run folders, the commands) with
//! the pictures ([`viz`]). The modules of the two lower crates are re-exported
//! here under their own names, so `scoregen::sde::Ve` or
//! `scoregen::nets::Mlp` is the one path a user (the CLI, the Python package,
//! the tests) writes.
//!
//! Call [`init`] before any tensor work (the CLI and every test do); every
//! backward pass in the library also calls it, so second-order gradients are
//! exact whatever the entry point.

pub mod app;
pub mod viz;

pub use scoregen_core::{
    autodiff, data, device, error, guidance, host, init, io, likelihood, metrics, named, objectives, oracle, points,
    progress, rng, samplers, score, sde, Error, Result, CANDLE_SPIN_LIMIT_VAR,
};
pub use scoregen_nets::{nets, train};
