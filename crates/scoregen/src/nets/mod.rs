//! Score networks. A [`Network`] maps (x, t) to a tensor shaped like x; how
//! that output becomes a score (directly, or divided by the marginal std) is
//! decided in [`crate::score::NetScore`].

pub mod embedding;
pub mod init;
pub mod mlp;

pub use embedding::GaussianFourier;
pub use init::seeded_var_builder;
pub use mlp::{MlpConfig, TimeMlp};

use candle_core::{Result, Tensor};

/// A time-conditioned network: x of shape [N, …], t of shape [N].
pub trait Network: Send + Sync {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}
