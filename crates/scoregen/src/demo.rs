//! Demonstrations of the seed's figures, on exact scores (no training):
//! Langevin dynamics on a mixture, and the low-density pitfall.

use crate::data::{toy, Points};
use crate::error::{Error, Result};
use crate::metrics::{self, ModeStats};
use crate::oracle::{GaussianMixture, MixtureScore, OracleScore};
use crate::rng::Rng;
use crate::samplers::{self, AnnealedOptions, LangevinOptions, Start};
use crate::sde::NoiseLadder;
use crate::viz::{self, Bounds};
use crate::{fsutil, progress};
use candle_core::DType;
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn plot_err(e: viz::PlotError) -> Error {
    Error::Invalid(e.to_string())
}

fn log_density(mix: &GaussianMixture) -> impl Fn(f64, f64) -> f64 + '_ {
    move |x, y| mix.log_prob(&Points::new(1, 2, vec![x, y]))[0]
}

/// What `demo langevin` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct LangevinDemo {
    pub gif: PathBuf,
    pub final_png: PathBuf,
    pub modes: ModeStats,
}

/// Particles from U(−8, 8)² moving under Langevin dynamics with the exact
/// score of `gmm8`, drawn over its density: `langevin.gif` and `langevin_final.png`.
pub fn langevin(out: &Path, quiet: bool) -> Result<LangevinDemo> {
    fsutil::create_dir(out)?;
    let mix = toy::named_mixture("gmm8").expect("gmm8 is a mixture");
    let mut rng = Rng::new(0, 0);
    let x0 = Start::Uniform { lo: -8.0, hi: 8.0 }.sample((1000, 2), &mut rng, DType::F64)?;
    let opts = LangevinOptions { steps: 300, eps: 0.01, t: 0.0, record_every: Some(5) };
    let run =
        samplers::langevin(&MixtureScore(mix.clone()), x0, &opts, &mut rng, &progress::bar(300, "langevin", quiet))?;
    let frames = run
        .trajectory
        .iter()
        .enumerate()
        .map(|(k, (_, x))| Ok((format!("Langevin dynamics, step {}", k * 5), Points::from_tensor(x)?)))
        .collect::<Result<Vec<_>>>()?;
    let bounds = Bounds { x: (-8.0, 8.0), y: (-8.0, 8.0) };
    let density = log_density(&mix);
    let gif = out.join("langevin.gif");
    viz::scatter_gif(&gif, &frames, Some(&density), &bounds, 8).map_err(plot_err)?;
    let last = Points::from_tensor(&run.x)?;
    let final_png = out.join("langevin_final.png");
    viz::scatter_over_density(&final_png, &last, Some(&density), &bounds, "Langevin dynamics: 300 steps, ε = 0.01")
        .map_err(plot_err)?;
    Ok(LangevinDemo { gif, final_png, modes: metrics::mode_stats(&last, &mix) })
}

/// The pitfall in numbers: recovered weight of the 0.8 mode of `unbalanced`.
#[derive(Debug, Clone, Serialize)]
pub struct PitfallDemo {
    pub png: PathBuf,
    pub true_weight: f64,
    /// Plain Langevin with the exact clean score.
    pub langevin_weight: f64,
    /// Annealed Langevin with the exact perturbed scores.
    pub annealed_weight: f64,
    pub langevin_steps: usize,
    pub annealed_steps: usize,
}

/// Plain Langevin with the exact score of `unbalanced` vs annealed Langevin on the
/// exact perturbed scores (σ from 0.1 to 20, L = 20, T = 100, ε_i = 0.1·σ_i²),
/// the same number of score evaluations each.
pub fn pitfall_numbers(n: usize, seed: u64) -> Result<(Points, Points, PitfallDemo)> {
    pitfall_with(n, seed, 20, 100, 0.1)
}

/// [`pitfall_numbers`] with L levels, T steps per level and ε/σ_1² = `alpha`.
pub fn pitfall_with(
    n: usize,
    seed: u64,
    levels: usize,
    per_level: usize,
    alpha: f64,
) -> Result<(Points, Points, PitfallDemo)> {
    let mix = toy::named_mixture("unbalanced").expect("unbalanced is a mixture");
    let start = Start::Uniform { lo: -10.0, hi: 10.0 };
    let ladder = NoiseLadder::geometric(0.1, 20.0, levels);
    let total = per_level * ladder.levels();
    let hidden = ProgressBar::hidden();
    let mut rng = Rng::new(seed, 0);
    let x0 = start.sample((n, 2), &mut rng, DType::F64)?;
    let opts = LangevinOptions { steps: total, eps: alpha, t: 0.0, record_every: None };
    let plain =
        Points::from_tensor(&samplers::langevin(&MixtureScore(mix.clone()), x0.clone(), &opts, &mut rng, &hidden)?.x)?;
    let oracle = OracleScore::new(mix.clone(), Arc::new(ladder.sde()));
    // ε_i = ε σ_i²/σ_1² with ε/σ_1² = α: each level's chain contracts by a fraction α a step.
    let aopts =
        AnnealedOptions { steps_per_level: per_level, eps: alpha * 0.1 * 0.1, denoise: true, record_every: None };
    let annealed =
        Points::from_tensor(&samplers::annealed_langevin(&oracle, &ladder, x0, &aopts, &mut rng, &hidden)?.x)?;
    let w = |p: &Points| metrics::mode_stats(p, &mix).weights[0];
    let demo = PitfallDemo {
        png: PathBuf::new(),
        true_weight: mix.weights()[0],
        langevin_weight: w(&plain),
        annealed_weight: w(&annealed),
        langevin_steps: total,
        annealed_steps: total,
    };
    Ok((plain, annealed, demo))
}

/// `pitfall.png`: plain and annealed Langevin samples side by side over the density.
pub fn pitfall(out: &Path) -> Result<PitfallDemo> {
    fsutil::create_dir(out)?;
    let (plain, annealed, mut demo) = pitfall_numbers(2000, 0)?;
    let mix = toy::named_mixture("unbalanced").expect("unbalanced is a mixture");
    let density = log_density(&mix);
    let bounds = Bounds { x: (-10.0, 10.0), y: (-10.0, 10.0) };
    let png = out.join("pitfall.png");
    let ta = format!("Langevin, exact score: weight {:.2} (true 0.80)", demo.langevin_weight);
    let tb = format!("annealed Langevin: weight {:.2}", demo.annealed_weight);
    viz::scatter_panels(&png, &[(&ta, &plain), (&tb, &annealed)], Some(&density), &bounds).map_err(plot_err)?;
    demo.png = png;
    Ok(demo)
}
