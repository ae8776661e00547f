//! Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): Langevin at
//! every noise level, from the largest to the smallest, each level's chain
//! starting where the previous one ended.

use super::langevin::langevin_step;
use super::{Constraint, Sampled, Unconstrained};
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::NoiseLadder;
use candle_core::{Result, Tensor};
use indicatif::ProgressBar;

/// Settings of annealed Langevin dynamics.
#[derive(Debug, Clone)]
pub struct AnnealedOptions {
    /// T: steps per noise level.
    pub steps_per_level: usize,
    /// ε: the step at the smallest level; level i uses ε_i = ε·σ_i²/σ_1².
    pub eps: f64,
    /// Finish with x + σ_1² s(x, σ_1) (NCSNv2's denoising step, Tweedie at σ_1).
    pub denoise: bool,
    /// Record the state every k steps (plus the first and last).
    pub record_every: Option<usize>,
}

/// For i = L, …, 1 (largest σ first): T steps of x ← x + ε_i s(x, σ_i) + √(2ε_i) z.
/// The score of level i is evaluated at the ladder's VE time t_i.
pub fn annealed_langevin(
    score: &dyn ScoreFn,
    ladder: &NoiseLadder,
    x: Tensor,
    opts: &AnnealedOptions,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> Result<Sampled> {
    annealed_langevin_constrained(score, ladder, x, &Unconstrained, opts, rng, progress)
}

/// [`annealed_langevin`] with a [`Constraint`] applied after every step at the
/// level's kernel N(x₀, σ_i² I), and at (1, 0) to the final sample (inpainting
/// with annealed Langevin, score_sde's `get_pc_inpainter` with the ALD corrector).
pub fn annealed_langevin_constrained(
    score: &dyn ScoreFn,
    ladder: &NoiseLadder,
    x: Tensor,
    constraint: &dyn Constraint,
    opts: &AnnealedOptions,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> Result<Sampled> {
    let mut x = constraint.apply(x, 1.0, ladder.sigma(ladder.levels() - 1), rng)?;
    let total = ladder.levels() * opts.steps_per_level;
    let record = |k: usize| opts.record_every.is_some_and(|e| k.is_multiple_of(e.max(1)) || k == total);
    let mut trajectory = Vec::new();
    if record(0) {
        trajectory.push((1.0, x.clone()));
    }
    progress.set_length(total as u64);
    let sigma_1 = ladder.sigma(0);
    let mut k = 0;
    for i in (0..ladder.levels()).rev() {
        let eps_i = opts.eps * (ladder.sigma(i) / sigma_1).powi(2);
        for _ in 0..opts.steps_per_level {
            x = langevin_step(score, &x, ladder.time(i), eps_i, rng)?;
            x = constraint.apply(x, 1.0, ladder.sigma(i), rng)?;
            k += 1;
            if record(k) {
                trajectory.push((ladder.time(i), x.clone()));
            }
            progress.inc(1);
            crate::progress::stop_if_interrupted()?;
        }
    }
    let mut nfe = total;
    if opts.denoise {
        x = (&x + score.score_at(&x, ladder.time(0))?.affine(sigma_1 * sigma_1, 0.0)?)?.detach();
        nfe += 1;
    }
    x = constraint.apply(x, 1.0, 0.0, rng)?;
    progress.finish_and_clear();
    Ok(Sampled { x, trajectory, nfe })
}
