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

use crate::config::ModelConfig;
use candle_nn::VarMap;

/// Builds the network a config describes, with parameters in `vm` (new ones
/// drawn from `seed`, existing ones reused).
pub fn build(cfg: &ModelConfig, dim: usize, seed: u64, vm: &VarMap) -> Result<Box<dyn Network>> {
    Ok(Box::new(TimeMlp::build(vm, dim, &cfg.mlp(), seed)?))
}

/// The variables of a map, sorted by name (a stable order for optimizers and checkpoints).
pub fn named_vars(vm: &VarMap) -> Vec<(String, candle_core::Var)> {
    let mut v: Vec<_> = vm
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
