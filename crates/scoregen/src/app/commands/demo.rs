//! Demonstrations of the seed's figures, on exact scores: Langevin dynamics
//! on a mixture, the low-density pitfall, and forward/reverse SDE trajectories.

use crate::app::budget;
use crate::app::config::RunConfig;
use crate::app::factory;
use crate::data::toy;
use crate::error::{Error, Result};
use crate::host;
use crate::io::fs;
use crate::metrics;
use crate::metrics::ModeStats;
use crate::oracle::GaussianMixture;
use crate::oracle::{MixtureScore, OracleScore};
use crate::points::Points;
use crate::progress;
use crate::rng::{streams, Rng};
use crate::samplers;
use crate::samplers::{sample_pc, AnnealedOptions};
use crate::samplers::{EulerMaruyama, LangevinOptions, NoneCorrector, ReverseOptions, Start};
use crate::sde::{NoiseLadder, Sde, VpSde};
use crate::viz::{self, Bounds};
use crate::viz::{trajectories_over_density, Panel};
use candle_core::{DType, Device};
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
pub fn langevin(out: &Path, quiet: bool, device: &Device) -> Result<LangevinDemo> {
    fs::create_dir(out)?;
    // 1,000 particles, a frame every 5 of 300 steps: fixed sizes, checked like any request
    budget::check_sampling(&RunConfig::default(), 1000, 2, 61, "the Langevin demo:")?;
    let mix = toy::named_mixture("gmm8").expect("gmm8 is a mixture");
    let mut rng = Rng::new(0, streams::DEMO);
    let x0 = Start::Uniform { lo: -8.0, hi: 8.0 }.sample((1000, 2), &mut rng, DType::F64, device)?;
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
/// the same number of score evaluations each. The chains live on `device`.
pub fn pitfall_numbers(n: usize, seed: u64, device: &Device) -> Result<(Points, Points, PitfallDemo)> {
    pitfall_with(n, seed, 20, 100, 0.1, device)
}

/// [`pitfall_numbers`] with L levels, T steps per level and ε/σ_1² = `alpha`.
pub fn pitfall_with(
    n: usize,
    seed: u64,
    levels: usize,
    per_level: usize,
    alpha: f64,
    device: &Device,
) -> Result<(Points, Points, PitfallDemo)> {
    let mix = toy::named_mixture("unbalanced").expect("unbalanced is a mixture");
    let start = Start::Uniform { lo: -10.0, hi: 10.0 };
    let ladder = NoiseLadder::geometric(0.1, 20.0, levels);
    let total = per_level * ladder.levels();
    budget::check_sampling(&RunConfig::default(), 2 * n, 2, 0, "the pitfall demo:")?;
    budget::check_evaluations("the pitfall demo", 2.0 * total as f64, "fewer levels or steps per level")?;
    let hidden = ProgressBar::hidden();
    let mut rng = Rng::new(seed, streams::DEMO);
    let x0 = start.sample((n, 2), &mut rng, DType::F64, device)?;
    let opts = LangevinOptions { steps: total, eps: alpha, t: 0.0, record_every: None };
    let plain = samplers::langevin(&MixtureScore(mix.clone()), x0.clone(), &opts, &mut rng, &hidden)?;
    let oracle = OracleScore::new(mix.clone(), Arc::new(ladder.sde()));
    // ε_i = ε σ_i²/σ_1² with ε/σ_1² = α: each level's chain contracts by a fraction α a step.
    let aopts =
        AnnealedOptions { steps_per_level: per_level, eps: alpha * 0.1 * 0.1, denoise: true, record_every: None };
    let annealed = samplers::annealed_langevin(&oracle, &ladder, x0, &aopts, &mut rng, &hidden)?;
    // what each sampler reports it spent (the annealed one's final denoising call is not a Langevin step)
    let (langevin_steps, annealed_steps) = (plain.nfe, annealed.nfe - usize::from(aopts.denoise));
    let (plain, annealed) = (Points::from_tensor(&plain.x)?, Points::from_tensor(&annealed.x)?);
    let w = |p: &Points| metrics::mode_stats(p, &mix).weights[0];
    let demo = PitfallDemo {
        png: PathBuf::new(),
        true_weight: mix.weights()[0],
        langevin_weight: w(&plain),
        annealed_weight: w(&annealed),
        langevin_steps,
        annealed_steps,
    };
    Ok((plain, annealed, demo))
}

/// Trains an unconditional score network on `unbalanced` without noise
/// (sliced score matching, 1500 steps) and returns ‖s_θ(x) − ∇log p(x)‖ on the
/// heat-map grid of `bounds`, with the training points. Trains on `device`.
pub fn noise_free_score_error(bounds: &Bounds, quiet: bool, device: &Device) -> Result<(Vec<f64>, Points)> {
    let text = include_str!("../../../../../configs/sliced-unbalanced.toml");
    let mut cfg = crate::app::config::RunConfig::parse(text, "configs/sliced-unbalanced.toml (built in)", &[])?;
    cfg.run.device = crate::device::spec_of(device);
    let mut trainer = factory::trainer(&cfg)?;
    let pb = progress::bar(cfg.training.steps, "train", quiet);
    for _ in 0..cfg.training.steps {
        trainer.train_step("none")?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (model, _vars) = trainer.ema_model()?;
    let centres = viz::grid_centres(bounds);
    let grid = Points::new(centres.len(), 2, centres.iter().flat_map(|&(x, y)| [x, y]).collect());
    let s = Points::from_tensor(&model.score(cfg.sde()).score_at(&grid.to_tensor(DType::F32, device)?, 0.0)?)?;
    let exact = trainer.dataset.oracle.as_ref().expect("unbalanced is a mixture").score(&grid);
    let err = (0..grid.n)
        .map(|i| s.row(i).iter().zip(exact.row(i)).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt())
        .collect();
    Ok((err, trainer.dataset.points.head(1000)))
}

/// `pitfall.png`: (a) the data density and the score error of a model trained
/// without noise, which is large exactly where the data are rare; (b) plain and
/// annealed Langevin samples with exact scores.
pub fn pitfall(out: &Path, quiet: bool, device: &Device) -> Result<PitfallDemo> {
    fs::create_dir(out)?;
    let (plain, annealed, mut demo) = pitfall_numbers(2000, 0, device)?;
    let mix = toy::named_mixture("unbalanced").expect("unbalanced is a mixture");
    let density = log_density(&mix);
    let bounds = Bounds { x: (-10.0, 10.0), y: (-10.0, 10.0) };
    let (err, data) = noise_free_score_error(&bounds, quiet, device)?;
    let log_err = |x: f64, y: f64| viz::grid_lookup(&err, &bounds, x, y).max(1e-12).ln();
    let empty = Points::new(0, 2, Vec::new());
    let ta = format!("Langevin, exact score: weight {:.2} (true 0.80)", demo.langevin_weight);
    let tb = format!("annealed Langevin: weight {:.2}", demo.annealed_weight);
    let panels: [viz::ScatterPanel; 4] = [
        ("data density p(x) and training points", &data, Some(&density)),
        ("score error |s(x) - grad log p(x)|, no noise (log)", &empty, Some(&log_err)),
        (&ta, &plain, Some(&density)),
        (&tb, &annealed, Some(&density)),
    ];
    let png = out.join("pitfall.png");
    viz::scatter_grid(&png, 2, &panels, &bounds).map_err(plot_err)?;
    demo.png = png;
    Ok(demo)
}

/// The 1-D mixture of the figure: 0.4·N(−2, 0.35²) + 0.6·N(1.5, 0.5²).
pub fn forward_reverse_mixture() -> GaussianMixture {
    GaussianMixture::isotropic(vec![0.4, 0.6], vec![vec![-2.0], vec![1.5]], &[0.35, 0.5]).expect("valid mixture")
}

/// `forward_reverse.png`: forward VP-SDE trajectories from data (t = 0) to
/// noise (t = 1), Euler–Maruyama with g(t)√dt·z increments, and reverse-SDE
/// trajectories from the prior back to data with the exact score, each over
/// the exact log p_t(x) of a 1-D two-component mixture. Returns the PNG path.
pub fn forward_reverse(out_dir: &Path, seed: u64, device: &Device) -> Result<PathBuf> {
    fs::create_dir(out_dir)?;
    let mix = forward_reverse_mixture();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let (paths, steps) = (24usize, 500usize);
    let mut rng = Rng::new(seed, streams::DEMO);
    // forward: x(0) ~ data, x ← x + a(t)x dt + g(t)√dt z
    let x0 = mix.sample(paths, &mut rng);
    let forward = crate::sde::forward_paths_1d(sde.as_ref(), &x0.data, steps, &mut rng);
    // reverse: the PC loop with Euler–Maruyama and the oracle, every step recorded
    let oracle = OracleScore::new(mix.clone(), sde.clone());
    let opts = ReverseOptions { steps, eps: None, denoise: false, record_every: Some(1), x_init: None };
    let out = sample_pc(
        &oracle,
        sde.as_ref(),
        &EulerMaruyama,
        &NoneCorrector,
        (paths, 1),
        &opts,
        &mut rng,
        DType::F64,
        device,
        &ProgressBar::hidden(),
    )?;
    let mut reverse = vec![Vec::with_capacity(steps + 1); paths];
    for (t, x) in &out.trajectory {
        let v = host::vec1::<f64>(&x.flatten_all()?)?;
        for (p, xi) in reverse.iter_mut().zip(v) {
            p.push((*t, xi));
        }
    }
    let logp = |t: f64, x: f64| mix.perturbed(sde.as_ref(), t).log_prob(&Points::new(1, 1, vec![x]))[0];
    let path = out_dir.join("forward_reverse.png");
    trajectories_over_density(
        &path,
        &[
            Panel { title: "forward SDE: data → noise", paths: &forward, reverse_time: false },
            Panel { title: "reverse SDE (exact score): noise → data", paths: &reverse, reverse_time: true },
        ],
        &logp,
        sde.t_max(),
        (-4.0, 4.0),
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure is written and is a real image (not an empty canvas).
    #[test]
    fn forward_reverse_figure_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = forward_reverse(dir.path(), 1, &Device::Cpu).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert!(meta.len() > 10_000, "{} bytes", meta.len());
    }
}
