//! The sampler leaderboard (`scoregen bench samplers`): sample quality against
//! the number of score evaluations (NFE) for every sampler, judged by the
//! exact mixture (energy distance and mode-weight L1 error beside their
//! exact-vs-exact floors), with Euler–Maruyama at 1000 NFE as the baseline.
//! The σ-space samplers can be run on several grids, so that a row is a
//! solver × grid and the effect of the grid is separated from the solver's.
//!
//! Beside it, where the order ends ([`order_errors`]): the error of every
//! deterministic σ-space solver × grid against the exact probability-flow
//! solution of a one-dimensional Gaussian, at the same NFE budgets, so that
//! the budget from which a higher-order solver pays can be read off.

use super::eval::Target;
use crate::app::run_dir::{oracle_of, LoadedModel};
use crate::error::{Error, Result};
use crate::host;
use crate::metrics;
use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::progress;
use crate::rng::{streams, Rng};
use crate::samplers::{
    grid_sigmas, sample_sigma_steps, Grid, Method, Offers, SampleContext, SamplerKind, SamplerSpec, ScoreDenoiser,
    SAMPLERS,
};
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The samplers of the leaderboard: Euler–Maruyama, the baseline, then
/// every σ-space solver of the sampler table, in its order.
pub fn leaderboard_samplers() -> Vec<SamplerKind> {
    std::iter::once(SamplerKind::Em).chain(SAMPLERS.iter().filter(|s| s.kind.is_denoiser()).map(|s| s.kind)).collect()
}

/// The grids `bench samplers` runs every σ-space sampler on by default: the
/// two defaults (DDIM's uniform-t, DPM-Solver++'s karras), crossed.
pub const LEADERBOARD_GRIDS: [Grid; 2] = [Grid::UniformT, Grid::Karras];

/// The NFE budgets of the leaderboard.
pub const LEADERBOARD_BUDGETS: [usize; 5] = [10, 20, 50, 100, 1000];

/// One sampler at one budget.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub sampler: String,
    /// The σ-space samplers' grid; "—" for the others.
    pub grid: String,
    pub budget: usize,
    pub steps: usize,
    /// Score evaluations actually spent (≤ budget, Heun: 2N − 1).
    pub nfe: usize,
    pub energy: f64,
    pub weight_l1: f64,
    pub off_manifold: f64,
    pub seconds: f64,
}

/// Every sampler at every budget, with the floors and the EM-1000 baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Leaderboard {
    pub n: usize,
    pub sde: String,
    pub floor_energy: f64,
    pub floor_weight_l1: f64,
    pub baseline: Entry,
    pub entries: Vec<Entry>,
    /// The deterministic solvers' error against the exact Gaussian flow
    /// ([`order_errors`]); empty unless asked for.
    pub order: Vec<OrderEntry>,
}

/// One deterministic σ-space solver × grid at one budget: its error against
/// the exact probability-flow solution of a Gaussian ([`order_errors`]).
#[derive(Debug, Clone, Serialize)]
pub struct OrderEntry {
    pub sampler: String,
    pub grid: String,
    pub budget: usize,
    pub steps: usize,
    pub nfe: usize,
    /// max |x_N − x(σ_N)| over the starting points.
    pub error: f64,
}

/// The Gaussian of [`order_errors`], N(μ, S²) in one dimension, and its
/// starting points in units of the starting std (those of `sampler_order.rs`).
const ORDER_MU: f64 = 1.5;
const ORDER_S: f64 = 0.5;
const ORDER_Z: [f64; 3] = [-1.3, 0.4, 2.1];

/// Where the order ends: every deterministic σ-space sampler of `kinds`, on
/// each of `grids` (empty: its own), at each NFE budget, against the exact
/// solution of the probability-flow ODE of N(μ, S²) = N(1.5, 0.5²) under
/// `sde`, in float64. In σ-space that solution is
/// x(σ) = μ + √((S² + σ²)/(S² + σ_0²))·(x(σ_0) − μ); the solver runs the
/// grid's N = `steps_for_nfe(budget)` steps down to its last level σ_N and
/// stops there, before the final step to σ = 0 (x = D, whose error
/// O(σ_N²/S²) does not shrink with N and would hide the order). A sampler
/// is deterministic here when two runs with different seeds agree bit for
/// bit (DDIM with η = 0, DPM-Solver++(2M) and (3M), Heun without churn,
/// UniPC); a grid a chain cannot hold at that budget is skipped. Heun
/// spends 2N, one over its budget's 2N − 1, as its last step (Euler's, to 0)
/// is not taken. Costs
/// about Σ budgets steps on three scalars per row: well under a second.
pub fn order_errors(
    sde: Arc<dyn Sde>,
    eps: Option<f64>,
    base: &SamplerSpec,
    kinds: &[SamplerKind],
    grids: &[Grid],
    budgets: &[usize],
) -> Result<Vec<OrderEntry>> {
    let mix = GaussianMixture::isotropic(vec![1.0], vec![vec![ORDER_MU]], &[ORDER_S])
        .map_err(|e| Error::Invalid(format!("order_errors: {e}")))?;
    let oracle = crate::oracle::OracleScore::new(mix, sde.clone());
    let den = ScoreDenoiser::new(&oracle, sde.as_ref(), eps);
    let hidden = ProgressBar::hidden();
    let s2 = ORDER_S * ORDER_S;
    let mut out = Vec::new();
    for &kind in kinds {
        let (Method::SigmaSpace { step, grid: own }, true) = (kind.method(), kind.is_denoiser()) else { continue };
        let kind_grids = if grids.is_empty() { vec![base.grid.unwrap_or(own)] } else { grids.to_vec() };
        for grid in kind_grids {
            let mut rows = Vec::new();
            for &budget in budgets {
                let steps = kind.steps_for_nfe(budget);
                // steps + 1 levels, without the final 0: N steps down to σ_N
                let Ok(mut sigmas) = grid_sigmas(grid, &den, steps + 1, base.rho) else { continue };
                sigmas.pop();
                let (s0, s_n) = (sigmas[0], sigmas[sigmas.len() - 1]);
                let x0: Vec<f64> = ORDER_Z.iter().map(|z| ORDER_MU + (s2 + s0 * s0).sqrt() * z).collect();
                let spec = SamplerSpec { sampler: kind, grid: Some(grid), steps, ..*base };
                let start = Tensor::from_slice(&x0, (x0.len(), 1), &Device::Cpu)?;
                let run = |seed: u64| {
                    let mut rng = Rng::new(seed, streams::LEADERBOARD_SAMPLING);
                    sample_sigma_steps(&den, step(&spec).as_mut(), start.clone(), &sigmas, &mut rng, None, &hidden)
                };
                let (a, b) = (run(0)?, run(1)?);
                let xs = host::vec1::<f64>(&a.x.flatten_all()?)?;
                if xs != host::vec1::<f64>(&b.x.flatten_all()?)? {
                    rows.clear();
                    break;
                }
                let ratio = ((s2 + s_n * s_n) / (s2 + s0 * s0)).sqrt();
                let error = xs
                    .iter()
                    .zip(&x0)
                    .map(|(x, x0)| (x - (ORDER_MU + ratio * (x0 - ORDER_MU))).abs())
                    .fold(0.0, f64::max);
                rows.push(OrderEntry {
                    sampler: kind.to_string(),
                    grid: grid.to_string(),
                    budget,
                    steps,
                    nfe: a.nfe,
                    error,
                });
            }
            out.extend(rows);
        }
    }
    Ok(out)
}

/// What every entry of a leaderboard shares.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Samples per entry.
    pub n: usize,
    /// Final time ε of the samplers (`None`: the SDE's).
    pub eps: Option<f64>,
    pub seed: u64,
    /// F64 for the oracle, F32 for trained networks.
    pub dtype: DType,
    /// Where the samplers run (the score's device).
    pub device: Device,
}

impl Default for BenchSettings {
    fn default() -> Self {
        Self { n: 2000, eps: None, seed: 0, dtype: DType::F64, device: Device::Cpu }
    }
}

/// Samples `set.n` points with `spec` at about `budget` NFE and scores them against `mix`.
pub fn evaluate_sampler(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    mix: &GaussianMixture,
    spec: &SamplerSpec,
    budget: usize,
    set: &BenchSettings,
) -> Result<(Entry, Points)> {
    let (n, eps, seed) = (set.n, set.eps, set.seed);
    let steps = spec.sampler.steps_for_nfe(budget);
    let spec = SamplerSpec { steps, eps, denoise: true, ..*spec };
    let start = Instant::now();
    let mut rng = Rng::new(seed, streams::LEADERBOARD_SAMPLING);
    let hidden = ProgressBar::hidden();
    let ctx = SampleContext { dtype: set.dtype, device: set.device.clone(), ..SampleContext::new(score, sde, &hidden) };
    let out = spec.sample(&ctx, (n, mix.dim()), &mut rng)?;
    let seconds = start.elapsed().as_secs_f64();
    let pts = Points::from_tensor(&out.x)?;
    let r = metrics::against_mixture(&pts, mix, &mut Rng::new(seed, streams::LEADERBOARD_METRICS));
    let grid = spec.grid.or(spec.sampler.default_grid()).filter(|_| spec.sampler.is_denoiser());
    let entry = Entry {
        sampler: spec.sampler.to_string(),
        grid: grid.map_or("—".into(), |g| g.to_string()),
        budget,
        steps,
        nfe: out.nfe,
        energy: r.distances.energy,
        weight_l1: r.modes.weight_l1,
        off_manifold: r.modes.off_manifold,
        seconds,
    };
    Ok((entry, pts))
}

/// Runs every sampler of `kinds` (settings from `base`, so on `base.grid` or
/// each sampler's default grid) at every budget.
#[allow(clippy::too_many_arguments)]
pub fn leaderboard(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    mix: &GaussianMixture,
    base: &SamplerSpec,
    kinds: &[SamplerKind],
    budgets: &[usize],
    set: &BenchSettings,
    progress: &ProgressBar,
) -> Result<Leaderboard> {
    leaderboard_on_grids(score, sde, mix, base, kinds, &[], budgets, set, progress)
}

/// [`leaderboard`] with every σ-space sampler run on each of `grids` (one row
/// per solver × grid); empty `grids`: each on its own grid, as `leaderboard`.
#[allow(clippy::too_many_arguments)]
pub fn leaderboard_on_grids(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    mix: &GaussianMixture,
    base: &SamplerSpec,
    kinds: &[SamplerKind],
    grids: &[Grid],
    budgets: &[usize],
    set: &BenchSettings,
    progress: &ProgressBar,
) -> Result<Leaderboard> {
    let (n, seed) = (set.n, set.seed);
    let rows: Vec<SamplerSpec> = kinds
        .iter()
        .flat_map(|&kind| {
            let own = SamplerSpec { sampler: kind, ..*base };
            if kind.is_denoiser() && !grids.is_empty() {
                grids.iter().map(|&g| SamplerSpec { grid: Some(g), ..own }).collect()
            } else {
                vec![own]
            }
        })
        .collect();
    progress.set_length((rows.len() * budgets.len() + 1) as u64);
    let em = SamplerSpec { sampler: SamplerKind::Em, ..*base };
    let (baseline, _) = evaluate_sampler(score, sde, mix, &em, 1000, set)?;
    progress.inc(1);
    let mut entries = Vec::new();
    for spec in &rows {
        for &budget in budgets {
            entries.push(evaluate_sampler(score, sde, mix, spec, budget, set)?.0);
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    let mut rng = Rng::new(seed, streams::LEADERBOARD_FLOOR);
    let (a, b) = (mix.sample(n, &mut rng), mix.sample(n, &mut rng));
    Ok(Leaderboard {
        n,
        sde: sde.name().into(),
        floor_energy: metrics::energy_distance(&a, &b),
        floor_weight_l1: metrics::mode_stats(&a, mix).weight_l1,
        baseline,
        entries,
        order: Vec::new(),
    })
}

impl Leaderboard {
    /// The rows (sampler, grid) in table order.
    fn rows(&self) -> Vec<(&str, &str)> {
        let mut rows: Vec<(&str, &str)> = Vec::new();
        for e in &self.entries {
            if !rows.contains(&(e.sampler.as_str(), e.grid.as_str())) {
                rows.push((&e.sampler, &e.grid));
            }
        }
        rows
    }

    fn budgets(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self.entries.iter().map(|e| e.budget).collect();
        b.sort_unstable();
        b.dedup();
        b
    }

    /// Two blocks (energy distance, weight L1 error): one row per sampler, one
    /// column per NFE budget, then the EM-1000 baseline and the floors.
    pub fn table(&self) -> String {
        let budgets = self.budgets();
        let mut s =
            format!("sampler leaderboard: {} samples, {} SDE (NFE actually spent in brackets)\n", self.n, self.sde);
        for (title, get) in [
            ("energy distance", (|e: &Entry| e.energy) as fn(&Entry) -> f64),
            ("mode-weight L1 error", |e: &Entry| e.weight_l1),
        ] {
            s += &format!("\n{title}\n{:<16}{:<11}", "NFE", "grid");
            for b in &budgets {
                s += &format!("{b:>16}");
            }
            s += "\n";
            for (name, grid) in self.rows() {
                s += &format!("{name:<16}{grid:<11}");
                for b in &budgets {
                    match self.entries.iter().find(|e| e.sampler == name && e.grid == grid && e.budget == *b) {
                        Some(e) => s += &format!("{:>16}", format!("{:.4} [{}]", get(e), e.nfe)),
                        None => s += &format!("{:>16}", "—"),
                    }
                }
                s += "\n";
            }
            let floor = if title.starts_with("energy") { self.floor_energy } else { self.floor_weight_l1 };
            s += &format!("baseline em-1000: {:.4}   floor (exact vs exact): {floor:.4}\n", get(&self.baseline));
        }
        if !self.order.is_empty() {
            s += &format!(
                "\nerror against the exact flow of N({ORDER_MU}, {ORDER_S}²), {} SDE, float64, at the grid's last level before 0\n{:<16}{:<15}",
                self.sde, "NFE", "grid"
            );
            for b in &budgets {
                s += &format!("{b:>16}");
            }
            s += "\n";
            let mut rows: Vec<(&str, &str)> = Vec::new();
            for e in &self.order {
                if !rows.contains(&(e.sampler.as_str(), e.grid.as_str())) {
                    rows.push((&e.sampler, &e.grid));
                }
            }
            for (name, grid) in rows {
                s += &format!("{name:<16}{grid:<15}");
                for b in &budgets {
                    match self.order.iter().find(|e| e.sampler == name && e.grid == grid && e.budget == *b) {
                        Some(e) => s += &format!("{:>16}", format!("{:.2e} [{}]", e.error, e.nfe)),
                        None => s += &format!("{:>16}", "—"),
                    }
                }
                s += "\n";
            }
        }
        s
    }

    /// Energy distance against log₁₀ NFE, one line per sampler, with the
    /// baseline and the floor as flat lines. The y axis is linear: the energy
    /// distance estimate is unbiased, so near the floor it can be negative.
    /// Values are clipped at 0.1 so that a sampler far off at the smallest
    /// budget does not flatten the others (the table has the exact numbers).
    pub fn plot(&self, path: &std::path::Path) -> std::result::Result<(), crate::viz::PlotError> {
        let budgets = self.budgets();
        let lg = |n: usize| (n.max(1) as f64).log10();
        let (lo, hi) = (lg(*budgets.first().unwrap_or(&1)), lg(*budgets.last().unwrap_or(&1000)));
        let mut owned: Vec<(String, Vec<(f64, f64)>)> = self
            .rows()
            .into_iter()
            .map(|(name, grid)| {
                let pts = self
                    .entries
                    .iter()
                    .filter(|e| e.sampler == name && e.grid == grid)
                    .map(|e| (lg(e.nfe), e.energy.min(0.1)))
                    .collect();
                let label = if grid == "—" { name.to_string() } else { format!("{name} {grid}") };
                (label, pts)
            })
            .collect();
        owned.push(("em-1000 baseline".into(), vec![(lo, self.baseline.energy), (hi, self.baseline.energy)]));
        owned.push(("floor".into(), vec![(lo, self.floor_energy), (hi, self.floor_energy)]));
        let series: Vec<(&str, &[(f64, f64)])> = owned.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect();
        crate::viz::line_plot(
            path,
            &series,
            "sampler leaderboard (clipped at 0.1)",
            "log10 NFE",
            "energy distance to the data",
            false,
        )
    }
}

/// What `scoregen bench samplers` was asked for.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// A mixture to judge against (gmm8, gmm25, unbalanced, SPEC.toml); default:
    /// the run's data, or gmm8 without a run.
    pub target: Option<String>,
    /// A trained run whose model is benchmarked; `None`: the exact oracle
    /// score of the target under the VP SDE.
    pub run: Option<PathBuf>,
    pub budgets: Vec<usize>,
    /// The grids every σ-space sampler runs on (empty: each its own default).
    pub grids: Vec<Grid>,
    pub n: usize,
    pub seed: u64,
    pub quiet: bool,
    /// Where a run's model is loaded and the samplers run (the oracle computes on the CPU).
    pub device: Device,
}

/// The sampler leaderboard ([`leaderboard_on_grids`]): EM and every σ-space
/// sampler (on each of `req.grids`) at each NFE budget, against the exact mixture.
pub fn bench_samplers(req: &BenchRequest) -> Result<Leaderboard> {
    if req.budgets.is_empty() || req.budgets.contains(&0) || req.n < 2 {
        return Err(Error::Invalid("bench samplers: budgets must be ≥ 1 and --n ≥ 2".into()));
    }
    // at most every sampler of the table on every grid at every budget: Σ budgets × samplers × grids evaluations
    let work = req.budgets.iter().map(|&b| b as f64).sum::<f64>()
        * crate::samplers::SAMPLERS.len() as f64
        * req.grids.len().max(1) as f64;
    crate::app::budget::check_evaluations("bench samplers", work, "lower the NFE budgets (--budgets)")?;
    crate::app::budget::check_sampling(&crate::app::config::RunConfig::default(), req.n, 2, 0, "bench samplers:")?;
    let mixture_of = |spec: &str| match Target::parse(spec)? {
        Target::Mixture(m) => Ok(m),
        Target::Reference(_) => {
            Err(Error::Invalid(format!("bench samplers: target `{spec}` must be a mixture with an exact density")))
        }
    };
    let samplers = leaderboard_samplers();
    let pb = progress::bar(samplers.len() * req.budgets.len() + 1, "bench", req.quiet);
    let grids = &req.grids;
    match &req.run {
        Some(dir) => {
            let model = LoadedModel::from_run(dir, true, &req.device)?;
            let cfg = &model.cfg;
            let mix = match &req.target {
                Some(t) => mixture_of(t)?,
                None => oracle_of(cfg)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "bench samplers: run {} has no exact mixture (data `{}`); image metrics are not wired into the leaderboard yet",
                        dir.display(),
                        cfg.data.source
                    ))
                })?};
            // the sampler table's rule, before any of them runs
            let offers = Offers {
                every_level: !cfg.objective.kind.is_noise_free(cfg.objective.sigma),
                energy: false,
                ladder: false,
                constraint: false,
            };
            for kind in &samplers {
                // the leaderboard runs every sampler itself: no `--sampler` to name
                kind.check(&offers).map_err(|e| match e.setting() {
                    Some((_, message)) => Error::Invalid(format!("bench samplers: {message}")),
                    None => e,
                })?;
            }
            let score = model.score();
            let set = BenchSettings {
                n: req.n,
                eps: cfg.sampling.eps,
                seed: req.seed,
                dtype: DType::F32,
                device: model.device.clone(),
            };
            let sde = cfg.sde();
            let base = cfg.sampling;
            let mut lb = leaderboard_on_grids(
                score.as_ref(),
                sde.as_ref(),
                &mix,
                &base,
                &samplers,
                grids,
                &req.budgets,
                &set,
                &pb,
            )?;
            lb.order = order_errors(sde, cfg.sampling.eps, &base, &samplers, grids, &req.budgets)?;
            Ok(lb)
        }
        None => {
            let mix = mixture_of(req.target.as_deref().unwrap_or("gmm8"))?;
            let sde: std::sync::Arc<dyn crate::sde::Sde> = std::sync::Arc::new(crate::sde::VpSde::default());
            let oracle = crate::oracle::OracleScore::new(mix.clone(), sde.clone());
            let set = BenchSettings { n: req.n, eps: None, seed: req.seed, dtype: DType::F64, device: Device::Cpu };
            let base = SamplerSpec::default();
            let mut lb =
                leaderboard_on_grids(&oracle, sde.as_ref(), &mix, &base, &samplers, grids, &req.budgets, &set, &pb)?;
            lb.order = order_errors(sde, None, &base, &samplers, grids, &req.budgets)?;
            Ok(lb)
        }
    }
}
