//! The reverse-time SDE, derived from a forward SDE and a score (Anderson 1982;
//! Song et al. 2021, eq. 6 and 13):
//!
//! dx = [f(x,t) − g(t)² ∇ log p_t(x)] dt + g(t) dw̄,
//!
//! and, with `probability_flow`, the ODE with the same marginals
//! dx = [f(x,t) − ½ g(t)² ∇ log p_t(x)] dt. No sampler special-cases VE or VP.

use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{Result, Tensor};

/// The reverse process of `sde` under `score`.
pub struct ReverseSde<'a> {
    pub sde: &'a dyn Sde,
    pub score: &'a dyn ScoreFn,
    pub probability_flow: bool,
}

impl<'a> ReverseSde<'a> {
    pub fn new(sde: &'a dyn Sde, score: &'a dyn ScoreFn, probability_flow: bool) -> Self {
        Self { sde, score, probability_flow }
    }

    /// f(x,t) − c·g(t)² s(x,t), with c = 1 (SDE) or ½ (probability flow).
    pub fn drift(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let c = if self.probability_flow { 0.5 } else { 1.0 };
        let g2 = self.sde.diffusion(t).powi(2);
        self.sde.drift(x, t)? - self.score.score_at(x, t)?.affine(c * g2, 0.0)?
    }

    /// The reverse of the forward discretization ending at t (score_sde's
    /// `RSDE.discretize`): with (f, G) = `sde.discretize(x, t, dt)`,
    /// rev_f = f − c·G²·s(x,t) and rev_G = G (0 for the probability flow).
    pub fn discretize(&self, x: &Tensor, t: f64, dt: f64) -> Result<(Tensor, f64)> {
        let (f, g) = self.sde.discretize(x, t, dt)?;
        let c = if self.probability_flow { 0.5 } else { 1.0 };
        let rev_f = (f - self.score.score_at(x, t)?.affine(c * g * g, 0.0)?)?;
        Ok((rev_f, if self.probability_flow { 0.0 } else { g }))
    }

    /// g(t) for the SDE, 0 for the probability-flow ODE.
    pub fn diffusion(&self, t: f64) -> f64 {
        if self.probability_flow {
            0.0
        } else {
            self.sde.diffusion(t)
        }
    }
}
