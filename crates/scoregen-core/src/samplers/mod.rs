//! Samplers: the reverse SDE derived from any forward SDE and any score,
//! the predictors and correctors that step it (one PC loop), and the
//! probability-flow ODE with its solvers.

pub mod annealed_langevin;
pub mod correctors;
pub mod ddim;
pub mod ddpm;
pub mod denoiser;
pub mod dispatch;
pub mod dpm_solver;
pub mod flow;
pub mod grid;
pub mod heun;
pub mod langevin;
pub mod limits;
pub mod ode;
pub mod pc;
pub mod predictors;
pub mod registry;
pub mod reverse;
pub mod settings;
pub mod unipc;

pub use annealed_langevin::{annealed_langevin, annealed_langevin_constrained, AnnealedOptions};
pub use correctors::{AnnealedLangevin, Corrector, LangevinCorrector, NoneCorrector};
pub use ddim::sample_ddim;
pub use ddpm::sample_ddpm;
pub use denoiser::{
    karras_sigmas, lambda_uniform_sigmas, sample_sigma_steps, sample_sigma_steps_constrained, time_uniform_sigmas,
    Denoiser, ScoreDenoiser, SigmaStep,
};
pub use dispatch::SampleContext;
pub use dpm_solver::{sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m};
pub use flow::{decode, encode, interpolate, sample_ode};
pub use grid::{grid_sigmas, Grid};
pub use heun::{sample_heun, Churn};
pub use langevin::{langevin, mala, LangevinOptions, Start};
pub use limits::{LimitedDenoiser, X0Limit};
pub use ode::{OdeMethod, OdeSolution};
pub use pc::{sample_pc, sample_pc_constrained};
pub use predictors::{Ancestral, NonePredictor, ReverseDiffusion};
pub use predictors::{EulerMaruyama, Predictor};
pub use registry::{CorrectorKind, Method, Offers, SamplerInfo, SamplerKind, SAMPLERS};
pub use reverse::ReverseSde;
pub use settings::{ClassChoice, Dpmpp3mForm, SamplerSpec};
pub use unipc::{UniPcStep, UniPcVariant};

use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{DType, Device, Result, Shape, Tensor};
use indicatif::ProgressBar;

/// A given starting point x_T as the sampler's state: its shape must be the
/// requested one (an error names `sampling.init_noise`); moved to `dtype` on `device`.
pub(crate) fn checked_init(x: &Tensor, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
    if x.shape() != shape {
        return Err(candle_core::Error::Msg(format!(
            "the starting noise has shape {:?}, the samples {:?}",
            x.dims(),
            shape.dims()
        )));
    }
    x.to_dtype(dtype)?.to_device(device)
}

/// Settings shared by the reverse-time samplers.
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    /// Number of steps from T down to ε.
    pub steps: usize,
    /// Final time ε (default: the SDE's sampling ε).
    pub eps: Option<f64>,
    /// Apply the Tweedie denoising step x₀ = (x + s(ε)² s_θ(x, ε)) / m(ε) at the end.
    pub denoise: bool,
    /// Record the state every k steps (plus the first and last), for GIFs and figures.
    pub record_every: Option<usize>,
    /// x_T to start from instead of a draw from the prior (to reproduce another
    /// implementation's run from the same noise).
    pub x_init: Option<Tensor>,
}

impl Default for ReverseOptions {
    fn default() -> Self {
        Self { steps: 1000, eps: None, denoise: true, record_every: None, x_init: None }
    }
}

/// Samples and what it took to get them.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub x: Tensor,
    /// (t, x_t) snapshots, from t = T down to ε, when recording was asked for.
    pub trajectory: Vec<(f64, Tensor)>,
    /// Number of score evaluations.
    pub nfe: usize,
}

/// What a sampler does to its state after every step. Unconstrained sampling
/// leaves it alone; inpainting ([`crate::guidance::Inpaint`]) holds the known
/// coordinates to the observation perturbed to the current noise level.
pub trait Constraint {
    /// x, whose perturbation kernel at this step is N(m·x₀, s²·I), constrained.
    /// (m, s) = (1, 0) after the final step: the clean observation.
    fn apply(&self, x: Tensor, m: f64, s: f64, rng: &mut Rng) -> Result<Tensor>;

    /// True for [`Unconstrained`], so samplers that cannot hold a constraint
    /// can refuse a real one.
    fn is_none(&self) -> bool {
        false
    }
}

/// No constraint (draws nothing from the stream).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unconstrained;

impl Constraint for Unconstrained {
    fn apply(&self, x: Tensor, _m: f64, _s: f64, _rng: &mut Rng) -> Result<Tensor> {
        Ok(x)
    }

    fn is_none(&self) -> bool {
        true
    }
}

/// Tweedie's formula E[x(0) | x(t)] = (x + s(t)² ∇ log p_t(x)) / m(t).
pub fn tweedie_denoise(x: &Tensor, t: f64, score: &dyn ScoreFn, sde: &dyn Sde) -> Result<Tensor> {
    let (m, s) = sde.marginal(t);
    ((x + score.score_at(x, t)?.affine(s * s, 0.0)?)?).affine(1.0 / m, 0.0)
}

/// Draws `shape` samples by integrating the reverse SDE from the prior at T to ε
/// on a uniform grid with `predictor`, for any SDE and any score: the PC
/// sampler ([`sample_pc`]) with no corrector.
#[allow(clippy::too_many_arguments)]
pub fn sample_reverse(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    predictor: &dyn Predictor,
    shape: impl Into<Shape>,
    opts: &ReverseOptions,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
    progress: &ProgressBar,
) -> Result<Sampled> {
    sample_pc(score, sde, predictor, &NoneCorrector, shape, opts, rng, dtype, device, progress)
}
