//! The predictor–corrector sampler (Song et al. 2021, Alg. 1): at each time of
//! a uniform grid from T down to ε, a corrector (MCMC at fixed t) then a
//! predictor (one step of the reverse SDE). Any predictor with any corrector.

use super::{tweedie_denoise, Constraint, Corrector, Predictor, ReverseOptions, ReverseSde, Sampled, Unconstrained};
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{DType, Device, Result, Shape, Tensor};
use indicatif::ProgressBar;

/// Draws `shape` samples: x_T from the prior, then for i = 0, …, N−1 at
/// t_i = T − i·(T−ε)/N: x ← corrector(x, t_i), x ← predictor(x, t_i → t_{i+1});
/// finally, when `opts.denoise`, the noise-removal (Tweedie) step
/// x₀ = (x + s(ε)²·s_θ(x, ε))/m(ε). NFE = N·(predictor + corrector) + denoise.
/// The samples live on `device` (the score's); x_T is drawn on the CPU from
/// `rng` and copied there, like every later draw.
#[allow(clippy::too_many_arguments)]
pub fn sample_pc(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    predictor: &dyn Predictor,
    corrector: &dyn Corrector,
    shape: impl Into<Shape>,
    opts: &ReverseOptions,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
    progress: &ProgressBar,
) -> Result<Sampled> {
    sample_pc_constrained(score, sde, predictor, corrector, &Unconstrained, shape, opts, rng, dtype, device, progress)
}

/// [`sample_pc`] with a [`Constraint`] applied to the prior draw and after every
/// corrector and predictor step, at the marginal kernel of the time x has
/// reached, and to the final sample with (m, s) = (1, 0) (score_sde's
/// `get_pc_inpainter` with the known part re-noised to the right time).
#[allow(clippy::too_many_arguments)]
pub fn sample_pc_constrained(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    predictor: &dyn Predictor,
    corrector: &dyn Corrector,
    constraint: &dyn Constraint,
    shape: impl Into<Shape>,
    opts: &ReverseOptions,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
    progress: &ProgressBar,
) -> Result<Sampled> {
    let eps = opts.eps.unwrap_or_else(|| sde.sampling_eps());
    let n = opts.steps.max(1);
    let dt = -(sde.t_max() - eps) / n as f64;
    let reverse = ReverseSde::new(sde, score, false);
    let hold = |x: Tensor, t: f64, rng: &mut Rng| {
        let (m, s) = sde.marginal(t);
        constraint.apply(x, m, s, rng)
    };
    let mut x = start(opts, sde, shape.into(), rng, dtype, device)?;
    x = hold(x, sde.t_max(), rng)?;
    let mut trajectory = Vec::new();
    let record = |i: usize| opts.record_every.is_some_and(|k| i.is_multiple_of(k.max(1)) || i == n);
    if record(0) {
        trajectory.push((sde.t_max(), x.clone()));
    }
    progress.set_length(n as u64);
    for i in 0..n {
        let t = sde.t_max() + i as f64 * dt;
        // detached: a network's parameters are variables, and without this the
        // graph of every past step would stay alive
        x = corrector.step(&reverse, &x, t, dt, rng)?.0.detach();
        x = hold(x, t, rng)?;
        x = predictor.step(&reverse, &x, t, dt, rng)?.0.detach();
        x = hold(x, t + dt, rng)?;
        if record(i + 1) {
            trajectory.push((t + dt, x.clone()));
        }
        progress.inc(1);
        crate::progress::stop_if_interrupted()?;
    }
    let mut nfe = n * (predictor.nfe_per_step() + corrector.nfe_per_step());
    if opts.denoise {
        x = tweedie_denoise(&x, eps, score, sde)?;
        nfe += 1;
    }
    x = constraint.apply(x, 1.0, 0.0, rng)?;
    progress.finish_and_clear();
    Ok(Sampled { x, trajectory, nfe })
}

/// x_T: `opts.x_init` when given (checked against `shape`), else a draw from the SDE's prior.
pub(crate) fn start(
    opts: &ReverseOptions,
    sde: &dyn Sde,
    shape: Shape,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    match &opts.x_init {
        Some(x) => super::checked_init(x, &shape, dtype, device),
        None => sde.prior_sample(shape, rng, dtype, device),
    }
}
