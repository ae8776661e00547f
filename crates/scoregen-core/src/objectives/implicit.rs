//! Implicit score matching (Hyvärinen 2005):
//! J(θ) = E_p[ Tr(∇ₓ s_θ(x)) + ½‖s_θ(x)‖² ],
//! equal to ½ E_p‖s_θ − ∇ log p‖² up to a constant, without knowing ∇ log p.
//! The trace is exact: one autodiff pass per input dimension.

use super::{sq_norm, Objective};
use crate::autodiff;
use crate::rng::Rng;
use crate::score::ScoreFn;
use candle_core::{Result, Tensor, Var};

/// Implicit score matching with the exact Jacobian trace.
#[derive(Debug, Clone, Copy)]
pub struct Implicit {
    /// Refuse data of higher dimension (the cost is D backward passes).
    pub max_dim: usize,
}

impl Implicit {
    /// Per-example Tr(∇ₓ s(x)) + ½‖s(x)‖², differentiable in θ. Evaluated at t = 0.
    pub fn per_example(&self, score: &dyn ScoreFn, x0: &Tensor) -> Result<Tensor> {
        // the loss contains ∇ₓ s_θ and is differentiated in θ: exact second order
        autodiff::exact_higher_order(|| self.per_example_exact(score, x0))
    }

    fn per_example_exact(&self, score: &dyn ScoreFn, x0: &Tensor) -> Result<Tensor> {
        let d = x0.flatten_from(1)?.dim(1)?;
        if d > self.max_dim {
            candle_core::bail!(
                "implicit score matching needs one backward pass per dimension: D = {d} exceeds objective.max_dim = {}; use objective.kind = \"sliced\" instead",
                self.max_dim
            );
        }
        let x = Var::from_tensor(&x0.detach())?;
        let s = score.score_at(x.as_tensor(), 0.0)?;
        let (n, sf) = (x0.dim(0)?, s.flatten_from(1)?);
        let mut trace = Tensor::zeros(n, x0.dtype(), x0.device())?;
        for j in 0..d {
            // ∂s_j/∂x_j for every example: row n of ∇ₓ Σ_n s_j(x_n) is ∇ₓ s_j(x_n).
            let g = autodiff::grad(&sf.narrow(1, j, 1)?, &x)?.flatten_from(1)?;
            trace = (trace + g.narrow(1, j, 1)?.squeeze(1)?)?;
        }
        trace + sq_norm(&s)?.affine(0.5, 0.0)?
    }
}

impl Objective for Implicit {
    fn loss(&self, score: &dyn ScoreFn, x0: &Tensor, _rng: &mut Rng) -> Result<Tensor> {
        self.per_example(score, x0)?.mean_all()
    }
}
