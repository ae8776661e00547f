//! Denoising score matching at one noise level σ (Vincent 2011):
//! J(θ) = ½ E_{x, z} ‖s_θ(x + σz) + z/σ‖², minimized by the score of p_σ = p ∗ N(0, σ²I).
//! Reported multiplied by σ² (so its scale does not depend on σ), i.e. ½ E‖σ s_θ + z‖².

use super::{sq_norm, Objective};
use crate::rng::Rng;
use crate::score::ScoreFn;
use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct DenoisingAtSigma {
    pub sigma: f64,
}

impl DenoisingAtSigma {
    /// Per-example ½‖σ s_θ(x + σz) + z‖², evaluated at t = 0.
    pub fn per_example(&self, score: &dyn ScoreFn, x0: &Tensor, z: &Tensor) -> Result<Tensor> {
        let xt = (x0 + z.affine(self.sigma, 0.0)?)?;
        let s = score.score_at(&xt, 0.0)?;
        sq_norm(&(s.affine(self.sigma, 0.0)? + z)?)?.affine(0.5, 0.0)
    }
}

impl Objective for DenoisingAtSigma {
    fn loss(&self, score: &dyn ScoreFn, x0: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let z = rng.randn(x0.shape(), x0.dtype(), x0.device())?;
        self.per_example(score, x0, &z)?.mean_all()
    }
}
