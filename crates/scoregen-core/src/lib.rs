//! scoregen-core: the foundation and the math of score-based generative
//! modeling, the lowest of scoregen's three crates (docs/architecture.md).
//!
//! Foundation: [`error`], [`device`], [`host`], [`points`], [`rng`], [`progress`], [`io`],
//! [`autodiff`]. Math: [`sde`], [`score`], [`oracle`], [`data`],
//! [`objectives`], [`samplers`], [`likelihood`], [`guidance`], [`metrics`].
//! Nothing here knows a network, a config or a command: the networks and
//! training live in `scoregen-nets`, the application layer in `scoregen`, and
//! Cargo refuses an import from either (neither is a dependency of this crate).
//!
//! Call [`init`] before any tensor work (the CLI and every test do); every
//! backward pass in the library also calls it, so second-order gradients are
//! exact whatever the entry point.

pub mod autodiff;
pub mod data;
pub mod device;
pub mod error;
pub mod guidance;
pub mod host;
pub mod io;
pub mod likelihood;
pub mod metrics;
pub mod named;
pub mod objectives;
pub mod oracle;
pub mod points;
pub mod progress;
pub mod rng;
pub mod samplers;
pub mod score;
pub mod sde;

pub use error::{Error, Result};

/// The library entry point: makes candle keep gradient graphs so that
/// second-order autodiff is exact, and stops candle's thread pool from
/// spinning between its tasks. Idempotent and cheap; call it before any work.
pub fn init() {
    autodiff::enable_second_order();
    static POOL: std::sync::Once = std::sync::Once::new();
    POOL.call_once(|| {
        // candle's elementwise pool spins 25,000 times after every task before
        // it parks, taking a core from the fused kernels' threads (scoregen-nets'
        // kernels) between the few candle ops left in a step; unless the user
        // chose a limit, spin briefly (read once, when candle's pool starts).
        if std::env::var_os(CANDLE_SPIN_LIMIT_VAR).is_none() {
            // Safe in practice: runs once at start-up, before candle's pool
            // exists, and nothing else in the process writes this variable.
            std::env::set_var(CANDLE_SPIN_LIMIT_VAR, "1000");
        }
    });
}

/// The environment variable candle reads for its pool's spin limit.
pub const CANDLE_SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
