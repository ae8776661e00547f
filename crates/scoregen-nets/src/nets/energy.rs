//! Energy-based models: p_θ(x) = e^{−f_θ(x)}/Z with score s_θ(x) = −∇ₓ f_θ(x),
//! computed by autodiff with respect to the input (exact, and differentiable
//! again with respect to θ for training).

use super::{Conditioning, Mlp, MlpConfig, Network};
use candle_core::{Result, Tensor, Var};
use scoregen_core::autodiff;
use scoregen_core::score::ScoreFn;

/// f_θ(x): an MLP with one output (unconditional by default).
pub struct EnergyMlp {
    pub mlp: Mlp,
}

impl EnergyMlp {
    pub fn build(
        vm: &candle_nn::VarMap,
        dim: usize,
        cfg: &MlpConfig,
        cond: Conditioning,
        seed: u64,
        device: &candle_core::Device,
    ) -> Result<Self> {
        Ok(Self { mlp: Mlp::build(vm, dim, 1, cfg, cond, seed, device)? })
    }

    /// f_θ(x, t) for each example, shape [N].
    pub fn energy(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.mlp.forward(x, t)?.squeeze(1)
    }

    /// The unnormalized log-density −f_θ(x, t), shape [N] (for MALA and density plots).
    pub fn log_density(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.energy(x, t)?.neg()
    }
}

/// The score −∇ₓ f_θ of an energy model.
pub struct EnergyScore<'a>(pub &'a EnergyMlp);

impl ScoreFn for EnergyScore<'_> {
    /// When `x` is already a tracked variable (inside an objective that
    /// differentiates the score again), the gradient stays connected to it;
    /// otherwise a fresh leaf is made.
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let leaf;
        let xv = if x.is_variable() {
            x.clone()
        } else {
            leaf = Var::from_tensor(&x.detach())?;
            leaf.as_tensor().clone()
        };
        // −∇ₓ f_θ is differentiated again in θ when training: exact second order
        autodiff::exact_higher_order(|| autodiff::grad_wrt(&self.0.energy(&xv, t)?, &xv)?.neg())
    }
}
