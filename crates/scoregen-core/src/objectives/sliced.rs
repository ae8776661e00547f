//! Sliced score matching (Song et al. 2019):
//! J(θ) = E_p E_v[ vᵀ∇ₓ s_θ(x) v + ½(vᵀ s_θ(x))² ],
//! and its variance-reduced form (SSM-VR), which replaces ½(vᵀs)² by its
//! expectation ½‖s‖² (valid for E[vvᵀ] = I). vᵀ∇ₓs v costs one
//! vector-Jacobian product per projection instead of D passes.

use super::{dot, sq_norm, Objective};
use crate::autodiff;
use crate::rng::Rng;
use crate::score::ScoreFn;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The distribution of the projections v (both have E[vvᵀ] = I).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Projection {
    Gaussian,
    /// ±1 with probability ½ each.
    Rademacher,
}

#[derive(Debug, Clone, Copy)]
pub struct Sliced {
    /// M: projections per example.
    pub projections: usize,
    pub projection: Projection,
    /// SSM-VR: ½‖s‖² in place of ½(vᵀs)².
    pub variance_reduced: bool,
}

impl Sliced {
    /// Draws v for a batch shaped like x.
    pub fn draw(&self, like: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let v = rng.randn(like.shape(), like.dtype(), like.device())?;
        match self.projection {
            Projection::Gaussian => Ok(v),
            Projection::Rademacher => v.ge(0.0)?.to_dtype(like.dtype())?.affine(2.0, -1.0),
        }
    }

    /// Per-example loss averaged over the given projections `vs`, evaluated at t = 0.
    pub fn per_example(&self, score: &dyn ScoreFn, x0: &Tensor, vs: &[Tensor]) -> Result<Tensor> {
        // the loss contains ∇ₓ s_θ and is differentiated in θ: exact second order
        autodiff::exact_higher_order(|| self.per_example_exact(score, x0, vs))
    }

    fn per_example_exact(&self, score: &dyn ScoreFn, x0: &Tensor, vs: &[Tensor]) -> Result<Tensor> {
        let x = Var::from_tensor(&x0.detach())?;
        let s = score.score_at(x.as_tensor(), 0.0)?;
        let mut total = Tensor::zeros(x0.dim(0)?, x0.dtype(), x0.device())?;
        for v in vs {
            let sv = dot(&s, v)?;
            // ∇ₓ(vᵀs) = (∇ₓ s)ᵀ v, so vᵀ(∇ₓ s)v = v · ∇ₓ(vᵀs)
            let jv = autodiff::grad(&sv, &x)?;
            let second = if self.variance_reduced { sq_norm(&s)? } else { sv.sqr()? };
            total = (total + dot(&jv, v)? + second.affine(0.5, 0.0)?)?;
        }
        total.affine(1.0 / vs.len().max(1) as f64, 0.0)
    }
}

impl Objective for Sliced {
    fn loss(&self, score: &dyn ScoreFn, x0: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let vs = (0..self.projections.max(1)).map(|_| self.draw(x0, rng)).collect::<Result<Vec<_>>>()?;
        self.per_example(score, x0, &vs)?.mean_all()
    }
}
