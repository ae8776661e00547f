//! Score networks. A [`Network`] maps (x, t) to a tensor shaped like x; how
//! that output becomes a score (directly, or divided by the marginal std) is
//! decided in [`crate::score::NetScore`].

pub mod classifier;
pub mod embedding;
pub mod energy;
pub mod fused;
pub mod init;
pub mod mlp;
pub mod unet;

pub use classifier::{Classifier, ClassifierSpec, SavedClassifier};
pub use embedding::GaussianFourier;
pub use energy::{EnergyMlp, EnergyScore};
pub use init::seeded_var_builder;
pub use mlp::{Conditioning, Mlp, MlpConfig};
pub use unet::{UNet, UNetConfig};

use candle_core::{Result, Tensor};

/// A time-conditioned network: x of shape [N, …], t of shape [N].
pub trait Network: Send + Sync {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}

use crate::config::{ModelConfig, ModelKind};
use crate::score::{NetScore, Output, ScoreFn};
use crate::sde::Sde;
use candle_nn::VarMap;
use std::sync::Arc;

/// A trained or training model: a direct score network or an energy.
pub enum Model {
    /// s_θ(x, t) = net(x, t) (possibly divided by the marginal std).
    Score(Box<dyn Network>, Output),
    /// s_θ(x, t) = −∇ₓ f_θ(x, t).
    Energy(EnergyMlp),
}

impl Model {
    /// The score this model defines under `sde` (used for output scaling only).
    pub fn score<'a>(&'a self, sde: Arc<dyn Sde>) -> Box<dyn ScoreFn + 'a> {
        match self {
            Model::Score(net, output) => Box::new(NetScore { net: net.as_ref(), sde, output: *output }),
            Model::Energy(e) => Box::new(EnergyScore(e)),
        }
    }

    /// The unnormalized log-density, when the model is an energy.
    pub fn energy(&self) -> Option<&EnergyMlp> {
        match self {
            Model::Energy(e) => Some(e),
            Model::Score(..) => None,
        }
    }
}

/// Builds the model a config describes, with parameters in `vm` (new ones
/// drawn from `seed`, existing ones reused). `levels` is the number of noise
/// levels (for level-conditioned networks).
pub fn build(cfg: &ModelConfig, dim: usize, levels: usize, seed: u64, vm: &VarMap) -> Result<Model> {
    let mlp = cfg.mlp();
    Ok(match cfg.kind {
        ModelKind::TimeMlp => {
            Model::Score(Box::new(Mlp::build(vm, dim, dim, &mlp, Conditioning::Fourier, seed)?), cfg.output)
        }
        ModelKind::Mlp => Model::Score(Box::new(Mlp::build(vm, dim, dim, &mlp, Conditioning::None, seed)?), cfg.output),
        ModelKind::NcsnMlp => {
            Model::Score(Box::new(Mlp::build(vm, dim, dim, &mlp, Conditioning::Levels(levels), seed)?), cfg.output)
        }
        ModelKind::EnergyMlp => Model::Energy(EnergyMlp::build(vm, dim, &mlp, Conditioning::None, seed)?),
        ModelKind::Unet => {
            let unet = cfg.unet(dim).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Model::Score(
                Box::new(UNet::build(vm, &unet, seed).map_err(|e| candle_core::Error::Msg(e.to_string()))?),
                cfg.output,
            )
        }
    })
}

/// The variables of a map, sorted by name (a stable order for optimizers and checkpoints).
pub fn named_vars(vm: &VarMap) -> Vec<(String, candle_core::Var)> {
    let mut v: Vec<_> = vm.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
