//! Score-matching objectives. Each takes a [`ScoreFn`] and never knows which
//! network or SDE is behind it beyond the `Sde` trait: the same objective
//! trains a direct score network and an energy model.

pub mod continuous;
pub mod ddpm;
pub mod denoising;
pub mod implicit;
pub mod ncsn;
pub mod sliced;

pub use continuous::{Dsm, Reduction, TimeSampling, Weighting};
pub use ddpm::{elbo_terms, elbo_weights, ElboTerms};
pub use denoising::DenoisingAtSigma;
pub use implicit::Implicit;
pub use ncsn::Ncsn;
pub use sliced::{Projection, Sliced};

use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// A training loss on a batch of data; random draws come from `rng`.
pub trait Objective {
    fn loss(&self, score: &dyn ScoreFn, x0: &Tensor, rng: &mut Rng) -> Result<Tensor>;
}

/// Continuous DSM bound to its SDE.
pub struct ContinuousDsm {
    pub dsm: Dsm,
    pub sde: Arc<dyn Sde>,
}

impl Objective for ContinuousDsm {
    fn loss(&self, score: &dyn ScoreFn, x0: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        self.dsm.loss(score, self.sde.as_ref(), x0, rng)
    }
}

/// Per-example squared norms Σ_d v², shape [N].
pub(crate) fn sq_norm(v: &Tensor) -> Result<Tensor> {
    v.flatten_from(1)?.sqr()?.sum(1)
}

/// Per-example dot products Σ_d a·b, shape [N].
pub(crate) fn dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a * b)?.flatten_from(1)?.sum(1)
}
