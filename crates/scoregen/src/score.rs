//! [`ScoreFn`]: anything that answers s(x, t) ≈ ∇ₓ log p_t(x) for a batch.
//!
//! Samplers, objectives and metrics take a `&dyn ScoreFn`, so they never know
//! whether the score comes from a network, an energy or the exact oracle.

use crate::nets::Network;
use crate::sde::{self, Sde};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// A (possibly learned) score of the perturbed data distribution.
pub trait ScoreFn {
    /// s(x, t) for x of shape [N, …] and times t of shape [N]; same shape as x.
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;

    /// s(x, t) with one time for the whole batch.
    fn score_at(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.score(x, &sde::time_batch(t, x)?)
    }

    /// Tr ∇ₓ s(x, t) per example, shape [N], when the score knows it in closed
    /// form (the oracle: the Laplacian of log p_t). `None` (the default) means
    /// "differentiate me": the likelihood then uses autodiff through `score`.
    fn divergence(&self, _x: &Tensor, _t: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The Jacobian-vector product (∇ₓ s(x, t))·v per example, shape of x, when
    /// known in closed form (the oracle: the Hessian of log p_t times v).
    /// `None` (the default): autodiff through `score` (a vector-Jacobian product).
    fn jacobian_vector(&self, _x: &Tensor, _t: &Tensor, _v: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// How a network's output becomes a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    /// s = net(x, t).
    Score,
    /// s = net(x, t) / s(t), with s(t) the marginal std (score_sde's `scale_by_sigma`):
    /// the net then predicts −z, which has unit scale at every t.
    ScoreOverStd,
}

/// A network turned into a score for a given SDE.
pub struct NetScore<'a> {
    pub net: &'a dyn Network,
    pub sde: Arc<dyn Sde>,
    pub output: Output,
}

impl ScoreFn for NetScore<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let out = self.net.forward(x, t)?;
        match self.output {
            Output::Score => Ok(out),
            Output::ScoreOverStd => {
                let inv_std: Vec<f64> = sde::times(t)?.iter().map(|&t| 1.0 / self.sde.marginal(t).1).collect();
                out.broadcast_mul(&sde::per_example(&inv_std, &out)?)
            }
        }
    }
}

/// An unnormalized log-density log p̃(x, t) = log p(x, t) + const, per example [N]
/// (energies and the oracle have one; MALA needs it for its accept step).
pub trait LogDensity {
    fn log_density(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}

impl LogDensity for crate::nets::EnergyMlp {
    fn log_density(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        crate::nets::EnergyMlp::log_density(self, x, t)
    }
}
