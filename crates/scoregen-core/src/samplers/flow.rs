//! The probability-flow ODE dx = [f(x,t) − ½g(t)² s_θ(x,t)] dt (Song et al.
//! 2021, eq. 13) as a sampler and as a deterministic, invertible map between
//! data at t = ε and latents at t = T (encode/decode, latent interpolation).

use super::ode::{self, OdeMethod, OdeSolution};
use super::{tweedie_denoise, ReverseOptions, ReverseSde, Sampled};
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{DType, Device, Result, Shape, Tensor};

/// Integrates the probability-flow ODE from t0 to t1 starting at x.
pub fn flow(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    x: &Tensor,
    t0: f64,
    t1: f64,
    method: OdeMethod,
    record: bool,
) -> Result<OdeSolution> {
    let rev = ReverseSde::new(sde, score, true);
    let mut f = |t: f64, x: &Tensor| {
        crate::progress::stop_if_interrupted()?;
        rev.drift(x, t)
    };
    ode::solve(&mut f, x, t0, t1, method, record)
}

/// Samples with the probability-flow ODE: x_T from the prior, integrated from
/// T to ε with `method` (`opts.steps` is ignored; the method carries its own
/// steps or tolerances), then the Tweedie step when `opts.denoise`.
/// NFE = the solver's evaluations (+1 for denoising). The samples live on
/// `device`; x_T is drawn on the CPU from `rng` and copied there.
#[allow(clippy::too_many_arguments)]
pub fn sample_ode(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    shape: impl Into<Shape>,
    method: OdeMethod,
    opts: &ReverseOptions,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<Sampled> {
    let eps = opts.eps.unwrap_or_else(|| sde.sampling_eps());
    let x = super::pc::start(opts, sde, shape.into(), rng, dtype, device)?;
    let sol = flow(score, sde, &x, sde.t_max(), eps, method, opts.record_every.is_some())?;
    let (mut x, mut nfe) = (sol.y, sol.nfe);
    if opts.denoise {
        x = tweedie_denoise(&x, eps, score, sde)?;
        nfe += 1;
    }
    Ok(Sampled { x, trajectory: sol.trajectory, nfe })
}

/// Encodes data into the latent space: z = x(T) of the probability-flow ODE
/// started at x(ε) = x (ε: the SDE's sampling ε when `None`).
pub fn encode(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    x: &Tensor,
    method: OdeMethod,
    eps: Option<f64>,
) -> Result<OdeSolution> {
    let eps = eps.unwrap_or_else(|| sde.sampling_eps());
    flow(score, sde, x, eps, sde.t_max(), method, false)
}

/// Decodes latents: x(ε) of the probability-flow ODE started at x(T) = z.
pub fn decode(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    z: &Tensor,
    method: OdeMethod,
    eps: Option<f64>,
) -> Result<OdeSolution> {
    let eps = eps.unwrap_or_else(|| sde.sampling_eps());
    flow(score, sde, z, sde.t_max(), eps, method, false)
}

/// Latents on the variance-preserving path between z0 and z1:
/// z(λ) = cos(λπ/2)·z0 + sin(λπ/2)·z1 for λ = 0, 1/(k−1), …, 1. When z0 and z1
/// are independent N(0, σ²I) latents, every z(λ) is again N(0, σ²I) (a straight
/// line would shrink the norm midway and decode to atypical points).
pub fn interpolate(z0: &Tensor, z1: &Tensor, k: usize) -> Result<Vec<Tensor>> {
    let k = k.max(2);
    (0..k)
        .map(|i| {
            let a = std::f64::consts::FRAC_PI_2 * i as f64 / (k - 1) as f64;
            z0.affine(a.cos(), 0.0)? + z1.affine(a.sin(), 0.0)?
        })
        .collect()
}
