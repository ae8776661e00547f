//! The run report: `RUN/report.html`, one self-contained page that shows what
//! a run did, with its figures as PNG/GIF files in `RUN/report/`.
//!
//! It gathers what the run directory holds (`config.toml`, `metrics.jsonl`,
//! `metrics.json`, samples, checkpoints) and draws whatever applies: the loss
//! curve; for 2-D data the samples over the density, the learned score
//! s_θ(x, t) as arrows over p_t at three times, the model's density (its energy,
//! or log p₀ by the probability-flow ODE on a coarse grid) beside the exact one,
//! the reverse process as a GIF and its paths against t; for images the sample
//! grid. Plain HTML and CSS, every text escaped.

use super::eval::Target;
use super::sample::{self, SampleRequest};
use crate::app::config::{ObjectiveKind, RunConfig};
use crate::app::figures;
use crate::app::run_dir::{self, LoadedModel};
use crate::error::{Error, Result};
use crate::host;
use crate::io::{fs, npy};
use crate::likelihood::{self, LikelihoodOptions, TraceEstimator};
use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::rng::{streams, Rng};
use crate::samplers;
use crate::samplers::{EulerMaruyama, NoneCorrector, OdeMethod, ReverseOptions};
use crate::sde::Sde;
use crate::train;
use crate::viz::{self, Bounds};
use crate::viz::{trajectories_over_density, Arrow, Panel};
use crate::{progress, sde};
use candle_core::{DType, Device};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Particles drawn for the reverse-process GIF and paths.
const PROCESS_N: usize = 500;
/// At most this many steps for the recorded reverse process (keeps the report fast).
const PROCESS_STEPS: usize = 200;
/// Frames of the GIF.
const GIF_FRAMES: usize = 20;
/// Paths drawn in the forward–reverse figure.
const PATHS: usize = 24;
/// Arrows per axis of the score field.
const ARROWS: usize = 21;
/// Cells per axis of the grid on which the model's log-density is computed by the ODE.
const DENSITY_CELLS: usize = 24;

/// What `scoregen report` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub html: PathBuf,
    /// Every figure the page shows, as files.
    pub figures: Vec<PathBuf>,
    /// Parts of the report that could not be drawn, and why.
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// One block of the page.
enum Block {
    Para(String),
    /// A figure: file (relative to the run directory), caption, and the formula it shows.
    Figure {
        src: String,
        caption: String,
        formula: Option<String>,
    },
    /// Header row and rows; the first column is a label.
    Table(Vec<String>, Vec<Vec<String>>),
    Pre(String),
    /// A line of text ending in a link to a file of the run.
    Link {
        text: String,
        href: String,
    },
}

struct Section {
    title: String,
    blocks: Vec<Block>,
}

/// Writes `run_dir/report.html` and its figures in `run_dir/report/`; the
/// model's figures (reverse process, score field, density) compute on `device`.
pub fn write_report(run_dir: &Path, quiet: bool, device: &Device) -> Result<Report> {
    let start = Instant::now();
    let model = LoadedModel::from_run(run_dir, true, device)?;
    let config_text = if crate::app::pretrained::is_diffusers_dir(run_dir) {
        format!("# imported from diffusers' files (docs/pretrained.md)\n{}", model.cfg.to_toml())
    } else {
        std::fs::read_to_string(run_dir.join("config.toml")).map_err(|e| Error::io(run_dir.join("config.toml"), e))?
    };
    let cfg = model.cfg.clone();
    let fig_dir = run_dir.join("report");
    fs::create_dir(&fig_dir)?;
    let mut b = Builder { run_dir, fig_dir: &fig_dir, figures: Vec::new(), skipped: Vec::new() };

    let mut sections = vec![overview(&cfg, &model, run_dir)?];
    sections.push(b.training(run_dir)?);
    let samples = find_samples(run_dir);
    let oracle = run_dir::oracle_of(&cfg)?;
    if model.state.dim == 2 {
        sections.extend(b.two_d(&model, oracle.as_ref(), samples.as_deref(), quiet)?);
    } else if cfg.image_shape(model.state.dim).is_some() {
        sections.push(b.images(samples.as_deref()));
    } else {
        b.skipped.push(format!("figures: data of dimension {} are neither 2-D points nor images", model.state.dim));
    }
    sections.push(Section {
        title: "Resolved configuration".into(),
        blocks: vec![
            Block::Para("config.toml as the run saved it (every default filled in):".into()),
            Block::Pre(config_text),
        ],
    });
    let html = render(&cfg.name, &sections, &b.skipped);
    let path = run_dir.join("report.html");
    fs::write_atomic(&path, html.as_bytes())?;
    tracing::info!("report: done in {:.2} s", start.elapsed().as_secs_f64());
    Ok(Report { html: path, figures: b.figures, skipped: b.skipped, seconds: start.elapsed().as_secs_f64() })
}

/// The samples file a run holds: `samples.npy` (quickstart) or `samples/samples.npy` (`scoregen sample`).
pub fn find_samples(run_dir: &Path) -> Option<PathBuf> {
    ["samples.npy", "samples/samples.npy"].iter().map(|f| run_dir.join(f)).find(|p| p.is_file())
}

fn overview(cfg: &RunConfig, model: &LoadedModel, run_dir: &Path) -> Result<Section> {
    let ck = std::fs::read_to_string(run_dir.join("checkpoints/latest")).unwrap_or_default();
    let objective = serde_json::to_value(cfg.objective.kind).ok().and_then(|v| v.as_str().map(String::from));
    let model_kind = serde_json::to_value(cfg.model.kind).ok().and_then(|v| v.as_str().map(String::from));
    let rows = vec![
        vec!["data".into(), format!("{} (D = {})", cfg.data.source, model.state.dim)],
        vec![
            "SDE".into(),
            if cfg.objective.kind.is_noise_free(cfg.objective.sigma) {
                "none (a noise-free objective)".into()
            } else if cfg.objective.kind == ObjectiveKind::Ncsn {
                format!("{} form of the [noise] ladder, L = {}", cfg.sde().name(), cfg.noise.levels)
            } else {
                cfg.sde().name().to_string()
            },
        ],
        vec!["model".into(), model_kind.unwrap_or_default()],
        vec!["objective".into(), objective.unwrap_or_default()],
        vec!["sampler".into(), cfg.sampling.sampler.to_string()],
        vec!["trained steps".into(), model.state.step.to_string()],
        vec!["checkpoint".into(), format!("checkpoints/{}", ck.trim())],
    ];
    Ok(Section { title: "Run".into(), blocks: vec![Block::Table(vec!["".into(), "".into()], rows)] })
}

/// Gathers figures; a figure that cannot be drawn becomes a line in `skipped`.
struct Builder<'a> {
    run_dir: &'a Path,
    fig_dir: &'a Path,
    figures: Vec<PathBuf>,
    skipped: Vec<String>,
}

impl Builder<'_> {
    /// `report/NAME` and its link relative to the page.
    fn fig(&mut self, name: &str) -> (PathBuf, String) {
        tracing::info!("report: {name}");
        let p = self.fig_dir.join(name);
        self.figures.push(p.clone());
        (p, format!("report/{name}"))
    }

    fn training(&mut self, run_dir: &Path) -> Result<Section> {
        let log = train::read_log(&run_dir.join("metrics.jsonl")).unwrap_or_default();
        let mut blocks = Vec::new();
        if let (Some(first), Some(last)) = (log.first(), log.last()) {
            let (path, src) = self.fig("loss.png");
            figures::loss_plot(run_dir, &path)?;
            let rate = log.iter().map(|l| l.steps_per_sec).sum::<f64>() / log.len() as f64;
            blocks.push(Block::Table(
                vec!["".into(), "first logged".into(), "last logged".into()],
                vec![
                    vec!["step".into(), first.step.to_string(), last.step.to_string()],
                    vec!["loss".into(), format!("{:.4}", first.loss), format!("{:.4}", last.loss)],
                    vec!["learning rate".into(), format!("{:.2e}", first.lr), format!("{:.2e}", last.lr)],
                    vec!["gradient norm".into(), format!("{:.3}", first.grad_norm), format!("{:.3}", last.grad_norm)],
                ],
            ));
            blocks.push(Block::Para(format!("Mean speed {rate:.0} steps/s over {} log lines.", log.len())));
            blocks.push(Block::Figure {
                src,
                caption: "Training loss per log line (the mean over the steps since the previous line) and its \
                          bias-corrected exponential moving average over log lines, log scale."
                    .into(),
                formula: Some("mₖ = 0.9·mₖ₋₁ + 0.1·ℓₖ,  ℓ̄ₖ = mₖ/(1 − 0.9ᵏ)".into()),
            });
        } else {
            self.skipped.push("loss curve: metrics.jsonl is missing or empty".into());
        }
        let evals = train::read_evals(&run_dir.join("metrics.jsonl")).unwrap_or_default();
        if !evals.is_empty() {
            let get = |e: &train::EvalLine, k: &str| e.eval.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            let fd: Vec<(f64, f64)> = evals.iter().map(|e| (e.step as f64, get(e, "fd"))).collect();
            let floor: Vec<(f64, f64)> = evals.iter().map(|e| (e.step as f64, get(e, "fd_floor"))).collect();
            let fd_min: Vec<(f64, f64)> = evals.iter().map(|e| (e.train_seconds / 60.0, get(e, "fd"))).collect();
            let floor_min: Vec<(f64, f64)> =
                evals.iter().map(|e| (e.train_seconds / 60.0, get(e, "fd_floor"))).collect();
            let (path, src) = self.fig("quality_steps.png");
            viz::line_plot(
                &path,
                &[("FD", &fd), ("held-out floor", &floor)],
                "Fréchet distance during training",
                "step",
                "FD",
                true,
            )
            .map_err(plot_err)?;
            blocks.push(Block::Figure {
                src,
                caption: "Fréchet distance of the EMA model's samples (DPM-Solver++(2M), 25 steps, the same seed at every evaluation) \
                          in the classifier's features, against the training images, beside the held-out images' own distance."
                    .into(),
                formula: None,
            });
            let (path, src) = self.fig("quality_minutes.png");
            viz::line_plot(
                &path,
                &[("FD", &fd_min), ("held-out floor", &floor_min)],
                "Fréchet distance against training time",
                "minutes of training",
                "FD",
                true,
            )
            .map_err(plot_err)?;
            blocks.push(Block::Figure {
                src,
                caption: "The same Fréchet distances against minutes of training (evaluations excluded).".into(),
                formula: None,
            });
            let rows = evals
                .iter()
                .map(|e| {
                    vec![
                        e.step.to_string(),
                        format!("{:.1}", e.train_seconds / 60.0),
                        format!("{:.3} / {:.3}", get(e, "fd"), get(e, "fd_floor")),
                        format!("{:.3}", get(e, "confidence")),
                        format!("{:.3} / {:.3}", get(e, "entropy"), get(e, "max_entropy")),
                    ]
                })
                .collect();
            blocks.push(Block::Table(
                vec![
                    "step".into(),
                    "minutes".into(),
                    "FD / floor".into(),
                    "confidence".into(),
                    "class entropy / ln K".into(),
                ],
                rows,
            ));
        }
        Ok(Section { title: "Training".into(), blocks })
    }

    fn images(&mut self, samples: Option<&Path>) -> Section {
        let grid = samples.map(|s| s.with_extension("png")).filter(|p| p.is_file());
        let blocks = match grid.as_ref().and_then(|p| p.strip_prefix(self.run_dir).ok()) {
            Some(rel) => vec![Block::Figure {
                src: rel.to_string_lossy().into_owned(),
                caption: "Samples from the trained model, in pixel space.".into(),
                formula: None,
            }],
            None => {
                self.skipped.push("sample grid: no samples yet (run `scoregen sample --run RUN`)".into());
                Vec::new()
            }
        };
        Section { title: "Samples".into(), blocks }
    }

    /// Every 2-D figure: samples, metrics, density, score field, reverse process.
    fn two_d(
        &mut self,
        model: &LoadedModel,
        oracle: Option<&GaussianMixture>,
        samples: Option<&Path>,
        quiet: bool,
    ) -> Result<Vec<Section>> {
        let cfg = &model.cfg;
        let score = model.score();
        let sde = cfg.sde();
        let data = run_dir::training_points(cfg)?;
        let bounds = match oracle {
            Some(m) => Bounds::around(&m.sample(4000, &mut Rng::new(0, streams::PLOT_BOUNDS)), 0.15),
            None => Bounds::around(&data.head(4000), 0.15),
        };
        // log p on the heat-map cells, computed once and looked up by every plot and GIF frame
        let cells = oracle.map(|m| {
            let c = viz::grid_centres(&bounds);
            m.log_prob(&Points::new(c.len(), 2, c.iter().flat_map(|&(x, y)| [x, y]).collect()))
        });
        let exact = cells.as_ref().map(|v| move |x: f64, y: f64| viz::grid_lookup(v, &bounds, x, y));
        let exact: Option<&dyn Fn(f64, f64) -> f64> = exact.as_ref().map(|f| f as &dyn Fn(f64, f64) -> f64);

        // The reverse process, recorded: GIF frames, paths, and samples if the run has none.
        tracing::info!("report: reverse process");
        crate::app::budget::check_sampling(
            cfg,
            PROCESS_N,
            model.state.dim,
            PROCESS_STEPS + 1,
            "the report's reverse process:",
        )?;
        let process = self.reverse_process(model, quiet)?;
        let pts = match samples {
            Some(p) => npy::read_points(p)?,
            None => process.last().map(|(_, x)| x.clone()).unwrap_or_else(|| Points::new(0, 2, vec![])),
        };
        // The model's own density: the background of the samples when no exact one exists.
        tracing::info!("report: model density");
        let density = self.model_density(model, &bounds, quiet)?;
        let model_logp = density.as_ref().map(|(v, _, _)| move |x: f64, y: f64| coarse_lookup(v, &bounds, x, y));
        let model_logp: Option<&dyn Fn(f64, f64) -> f64> = model_logp.as_ref().map(|f| f as &dyn Fn(f64, f64) -> f64);

        let mut sample_blocks = Vec::new();
        let (path, src) = self.fig("samples.png");
        let title = format!("{} samples", pts.n);
        if exact.is_some() {
            figures::scatter(&path, &pts, oracle, &format!("{title} over the exact p(x)"))?;
        } else {
            let panels = [("training data", &data.head(2000), model_logp), (title.as_str(), &pts, model_logp)];
            viz::scatter_grid(&path, 2, &panels, &bounds).map_err(plot_err)?;
        }
        let from = match samples {
            Some(p) => format!("{} (written by the run)", p.strip_prefix(self.run_dir).unwrap_or(p).display()),
            None => format!("drawn for this report ({} steps)", process.len().saturating_sub(1)),
        };
        sample_blocks.push(Block::Figure {
            src,
            caption: format!(
                "Samples from the trained model ({from}), {}: viridis on log p, the mode yellow, 8 nats below it dark.",
                match (exact.is_some(), model_logp.is_some()) {
                    (true, _) => "red, over the exact data density",
                    (false, true) => "right, beside the training data, left, both over the model's estimated density",
                    (false, false) => "right, beside the training data, left",
                }
            ),
            formula: None,
        });
        tracing::info!("report: metrics");
        let (target, floor, why) = match oracle {
            Some(m) => (
                Target::Mixture(m.clone()),
                "floor (exact vs exact)",
                "The floor compares two independent exact sample sets of the same size: a perfect sampler scores it, up to noise.",
            ),
            None => (
                Target::Reference(data.clone()),
                "floor (data vs data)",
                "Against the training points (no exact density is known); the floor compares two disjoint halves of them.",
            )};
        let ev = super::eval::evaluate(&pts, &target, cfg.seed)?;
        let rows = ev.rows().into_iter().map(|(a, b, c)| vec![a, b, c]).collect();
        sample_blocks.push(Block::Table(vec!["metric".into(), "samples".into(), floor.into()], rows));
        sample_blocks.push(Block::Para(why.into()));
        if self.run_dir.join("metrics.json").is_file() {
            sample_blocks.push(Block::Link { text: "Raw numbers of the run:".into(), href: "metrics.json".into() });
        }
        let mut sections = vec![Section { title: "Samples and metrics".into(), blocks: sample_blocks }];

        // The score field at three noise levels.
        let mut field_blocks = Vec::new();
        let times = field_times(cfg, sde.as_ref(), &bounds);
        let mut arrows = Vec::new();
        for &t in &times {
            arrows.push(score_arrows(score.as_ref(), t, &bounds, &model.device)?);
        }
        let perturbed: Vec<Option<GaussianMixture>> = times
            .iter()
            .map(|&t| oracle.map(|m| if t > 0.0 { m.perturbed(sde.as_ref(), t) } else { m.clone() }))
            .collect();
        let fields: Vec<_> = perturbed
            .iter()
            .map(|m| m.as_ref().map(|m| move |x: f64, y: f64| m.log_prob(&Points::new(1, 2, vec![x, y]))[0]))
            .collect();
        let titles: Vec<String> = times
            .iter()
            .map(|&t| {
                let (m, s) = sde.marginal(t);
                if model.cfg.objective.kind.is_noise_free(model.cfg.objective.sigma) {
                    "s_θ(x)".to_string()
                } else {
                    format!("s_θ(x, t), t = {t:.3} (σ = {:.3})", s / m)
                }
            })
            .collect();
        let panels: Vec<viz::FieldPanel> = titles
            .iter()
            .zip(&arrows)
            .zip(&fields)
            .map(|((title, a), f)| (title.as_str(), a.as_slice(), f.as_ref().map(|f| f as &dyn Fn(f64, f64) -> f64)))
            .collect();
        let (path, src) = self.fig("score_field.png");
        viz::vector_field(&path, panels.len(), &panels, &bounds).map_err(plot_err)?;
        field_blocks.push(Block::Figure {
            src,
            caption: format!(
                "The learned score as arrows on a {ARROWS}×{ARROWS} grid{}. Arrow length ∝ √‖s‖ (scaled per panel), so both \
                 the strong pull far from the data and the weak one near it show; arrows point uphill, towards the modes.",
                if oracle.is_some() { ", over the exact perturbed density p_t = p₀ ∗ N(0, σ²I) (mean-scaled)" } else { "" }
            ),
            formula: Some("s_θ(x, t) ≈ ∇ₓ log p_t(x)".into())});
        sections.push(Section { title: "Score field".into(), blocks: field_blocks });

        // The model's density beside the exact one.
        let mut density_blocks = Vec::new();
        match &density {
            Some((values, how, nfe)) => {
                let lookup = |x: f64, y: f64| coarse_lookup(values, &bounds, x, y);
                let (path, src) = self.fig("density.png");
                let empty = Points::new(0, 2, vec![]);
                let mut panels: Vec<viz::ScatterPanel> = Vec::new();
                if exact.is_some() {
                    panels.push(("exact log p(x)", &empty, exact));
                }
                let title = format!("model {how}");
                panels.push((&title, &empty, Some(&lookup)));
                viz::scatter_grid(&path, 2, &panels, &bounds).map_err(plot_err)?;
                let gap = oracle.map(|m| density_gap(values, &bounds, m));
                let (formula, text) = if how.starts_with("−f") {
                    (
                        "p_θ(x) = e^{−f_θ(x)}/Z".to_string(),
                        "The energy model's unnormalized log-density −f_θ (Z unknown: only differences matter)."
                            .to_string(),
                    )
                } else {
                    (
                        "log p₀(x) = log π(x(T)) + ∫_ε^T ∇·f̃(x(t), t) dt,  f̃ = f − ½g²s_θ".to_string(),
                        format!(
                            "log p₀ of the model by the probability-flow ODE (RK45, rtol = atol = 10⁻², exact trace) on a \
                             {DENSITY_CELLS}×{DENSITY_CELLS} grid, {nfe} score evaluations."
                        ),
                    )
                };
                let gap = gap.map_or(String::new(), |g| {
                    format!(" Where the exact density is within 8 nats of its maximum, the mean |model − exact| is {g:.3} nats.")
                });
                density_blocks.push(Block::Figure { src, caption: format!("{text}{gap}"), formula: Some(formula) });
            }
            None => self
                .skipped
                .push("density: a model without noise conditioning has no probability-flow ODE and no energy".into()),
        }
        sections.push(Section { title: "Density".into(), blocks: density_blocks });

        // The reverse process.
        let mut process_blocks = Vec::new();
        if process.len() > 1 {
            let (path, src) = self.fig("reverse_process.gif");
            let every = (process.len() - 1).div_ceil(GIF_FRAMES - 1).max(1);
            let reverse = model.cfg.sampling.sampler.is_reverse_time();
            let label = |k: usize, t: f64| {
                if reverse {
                    format!("reverse SDE, step {k}: t = {t:.3}")
                } else {
                    format!("{}, step {k}", model.cfg.sampling.sampler)
                }
            };
            let last = process.len() - 1;
            let mut frames: Vec<(String, Points)> =
                (0..=last).step_by(every).map(|k| (label(k, process[k].0), process[k].1.clone())).collect();
            if last % every != 0 {
                frames.push((label(last, process[last].0), process[last].1.clone()));
            }
            viz::scatter_gif(&path, &frames, exact, &bounds, 12).map_err(plot_err)?;
            process_blocks.push(Block::Figure {
                src,
                caption: format!(
                    "{PROCESS_N} particles carried from the prior to the data by the trained model ({} steps, one frame \
                     every {every}){}.",
                    process.len() - 1,
                    if exact.is_some() { ", over the exact p₀" } else { "" }
                ),
                formula: Some(if model.cfg.sampling.sampler.is_reverse_time() {
                    "dx = [f(x, t) − g(t)² s_θ(x, t)] dt + g(t) dw̄,  from t = T to ε".into()
                } else {
                    "x ← x + ε s_θ(x) + √(2ε) z".into()
                })});
            if model.cfg.sampling.sampler.is_reverse_time() || !cfg.objective.kind.is_noise_free(cfg.objective.sigma) {
                let (path, src) = self.fig("forward_reverse.png");
                forward_reverse(&path, sde.as_ref(), &data, &process, oracle, &bounds, cfg.seed)?;
                process_blocks.push(Block::Figure {
                    src,
                    caption: format!(
                        "The first coordinate x₁ against t: forward-SDE paths from training points to noise (left) and \
                         the model's reverse paths from noise to data (right){}.",
                        if oracle.is_some() { ", over the exact marginal log p_t(x₁), normalized per t" } else { "" }
                    ),
                    formula: Some("forward: dx = f(x, t) dt + g(t) dw;  reverse: dx = [f − g² s_θ] dt + g dw̄".into()),
                });
            }
        }
        sections.push(Section { title: "Generation".into(), blocks: process_blocks });
        Ok(sections)
    }

    /// Runs the model's sampler family on [`PROCESS_N`] points, recording every
    /// step: Euler–Maruyama on the reverse SDE (at most [`PROCESS_STEPS`] steps)
    /// for SDE runs, the run's own Langevin sampler otherwise.
    fn reverse_process(&mut self, model: &LoadedModel, quiet: bool) -> Result<Vec<(f64, Points)>> {
        let cfg = &model.cfg;
        let mut rng = Rng::new(cfg.seed, streams::SAMPLING);
        let steps = cfg.sampling.steps.clamp(1, PROCESS_STEPS);
        let pb = progress::bar(steps, "report", quiet);
        let out = if cfg.sampling.sampler.is_reverse_time() {
            let opts =
                ReverseOptions { steps, eps: cfg.sampling.eps, denoise: false, record_every: Some(1), x_init: None };
            let sde = cfg.sde();
            let score = model.score();
            let shape = (PROCESS_N, model.state.dim);
            samplers::sample_pc(
                score.as_ref(),
                sde.as_ref(),
                &EulerMaruyama,
                &NoneCorrector,
                shape,
                &opts,
                &mut rng,
                DType::F32,
                &model.device,
                &pb,
            )?
        } else {
            let mut req = SampleRequest::new(PROCESS_N, steps, cfg.seed, PathBuf::new());
            req.record_every = Some(1);
            req.device = model.device.clone();
            let spec = req.spec(cfg, None);
            sample::draw(model, model.score().as_ref(), &req, &spec, &mut rng)?
        };
        pb.finish_and_clear();
        out.trajectory.iter().map(|(t, x)| Ok((*t, Points::from_tensor(x)?))).collect()
    }

    /// The model's log-density on a coarse grid: −f_θ for energies, else the
    /// probability-flow ODE. `None` for noise-free score models.
    fn model_density(
        &mut self,
        model: &LoadedModel,
        bounds: &Bounds,
        quiet: bool,
    ) -> Result<Option<(Vec<f64>, String, usize)>> {
        let grid = coarse_grid(bounds);
        let x = grid.to_tensor(DType::F32, &model.device)?;
        if let Some(e) = model.model.energy() {
            let t = sde::time_batch(model.cfg.langevin_time(), &x)?;
            let v = host::vec1::<f64>(&e.log_density(&x, &t)?)?;
            return Ok(Some((v, "−f_θ(x) (unnormalized)".into(), 1)));
        }
        if model.cfg.objective.kind.is_noise_free(model.cfg.objective.sigma) {
            return Ok(None);
        }
        let opts = LikelihoodOptions {
            trace: Some(TraceEstimator::Exact),
            method: OdeMethod::Rk45 { rtol: 1e-2, atol: 1e-2 },
            eps: model.cfg.sampling.eps,
            score_dtype: DType::F32,
            dequantize: None,
        };
        let score = model.score();
        let pb = progress::bar(likelihood::PROGRESS_TICKS, "log p", quiet);
        let ll = likelihood::log_likelihood_with_progress(
            score.as_ref(),
            model.cfg.sde().as_ref(),
            &x,
            &opts,
            &mut Rng::new(0, streams::REPORT_LIKELIHOOD),
            &pb,
        )?;
        Ok(Some((ll.nats, "log p₀(x), probability-flow ODE".into(), ll.nfe)))
    }
}

fn plot_err(e: viz::PlotError) -> Error {
    Error::Invalid(e.to_string())
}

/// Three times for the score field: where the marginal's noise σ(t) = s(t)/m(t)
/// is 1%, 5% and 20% of the plot's width (clamped to [ε, T]); one time for
/// noise-free models, whose score ignores t.
fn field_times(cfg: &RunConfig, sde: &dyn Sde, bounds: &Bounds) -> Vec<f64> {
    if cfg.objective.kind.is_noise_free(cfg.objective.sigma) {
        return vec![cfg.langevin_time()];
    }
    let eps = cfg.sampling.eps.unwrap_or_else(|| sde.sampling_eps());
    let width = bounds.x.1 - bounds.x.0;
    let sigma = |t: f64| {
        let (m, s) = sde.marginal(t);
        s / m
    };
    [0.01, 0.05, 0.2]
        .iter()
        .map(|f| {
            // σ(t) increases with t for every SDE: bisection
            let (mut lo, mut hi) = (eps, sde.t_max());
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if sigma(mid) < f * width {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            0.5 * (lo + hi)
        })
        .collect()
}

/// Arrows of s_θ(x, t) on an [`ARROWS`]² grid over `bounds`: length
/// cell·0.9·√(‖s‖/max‖s‖), so that weak and strong regions both show.
fn score_arrows(score: &dyn crate::score::ScoreFn, t: f64, bounds: &Bounds, device: &Device) -> Result<Vec<Arrow>> {
    let n = ARROWS;
    let (w, h) = (bounds.x.1 - bounds.x.0, bounds.y.1 - bounds.y.0);
    let centres: Vec<(f64, f64)> = (0..n * n)
        .map(|k| {
            (bounds.x.0 + ((k % n) as f64 + 0.5) * w / n as f64, bounds.y.0 + ((k / n) as f64 + 0.5) * h / n as f64)
        })
        .collect();
    let grid = Points::new(centres.len(), 2, centres.iter().flat_map(|&(x, y)| [x, y]).collect());
    let s = Points::from_tensor(&score.score_at(&grid.to_tensor(DType::F32, device)?, t)?)?;
    let norms: Vec<f64> = s.rows().map(|r| r[0].hypot(r[1])).collect();
    let top = norms.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-12);
    let cell = (w / n as f64).min(h / n as f64);
    Ok(centres
        .iter()
        .zip(s.rows())
        .zip(&norms)
        .map(|((&(x, y), r), &norm)| {
            let len = 0.9 * cell * (norm / top).sqrt();
            let k = if norm > 0.0 { len / norm } else { 0.0 };
            ((x, y), (x + k * r[0], y + k * r[1]))
        })
        .collect())
}

/// Cell centres of the [`DENSITY_CELLS`]² grid, row by row.
fn coarse_grid(bounds: &Bounds) -> Points {
    let n = DENSITY_CELLS;
    let (dx, dy) = ((bounds.x.1 - bounds.x.0) / n as f64, (bounds.y.1 - bounds.y.0) / n as f64);
    let data = (0..n * n)
        .flat_map(|k| [bounds.x.0 + ((k % n) as f64 + 0.5) * dx, bounds.y.0 + ((k / n) as f64 + 0.5) * dy])
        .collect();
    Points::new(n * n, 2, data)
}

/// The value on the coarse grid at (x, y), bilinear between cell centres
/// (constant beyond the outer centres), so the heat map is not blocky.
fn coarse_lookup(values: &[f64], bounds: &Bounds, x: f64, y: f64) -> f64 {
    let n = DENSITY_CELLS;
    // position in units of cells, 0 at the first centre
    let pos = |v: f64, (lo, hi): (f64, f64)| ((v - lo) / (hi - lo) * n as f64 - 0.5).clamp(0.0, (n - 1) as f64);
    let (u, v) = (pos(x, bounds.x), pos(y, bounds.y));
    let (i, j) = ((u.floor() as usize).min(n - 2), (v.floor() as usize).min(n - 2));
    let (fu, fv) = (u - i as f64, v - j as f64);
    let at = |i: usize, j: usize| values[j * n + i];
    (1.0 - fv) * ((1.0 - fu) * at(i, j) + fu * at(i + 1, j)) + fv * ((1.0 - fu) * at(i, j + 1) + fu * at(i + 1, j + 1))
}

/// Mean |model − exact| log-density over the coarse cells where the exact one
/// is within 8 nats of its maximum on the grid.
fn density_gap(values: &[f64], bounds: &Bounds, mix: &GaussianMixture) -> f64 {
    let exact = mix.log_prob(&coarse_grid(bounds));
    let top = exact.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (sum, count) = exact
        .iter()
        .zip(values)
        .filter(|(e, _)| **e > top - viz::plots::LOG_DENSITY_RANGE)
        .fold((0.0, 0usize), |(s, c), (e, v)| (s + (v - e).abs(), c + 1));
    sum / count.max(1) as f64
}

/// Forward paths of x₁ simulated from training points (Euler–Maruyama,
/// x ← x + a(t)x dt + g(t)√dt z) beside the first [`PATHS`] recorded reverse paths.
fn forward_reverse(
    path: &Path,
    sde: &dyn Sde,
    data: &Points,
    process: &[(f64, Points)],
    oracle: Option<&GaussianMixture>,
    bounds: &Bounds,
    seed: u64,
) -> Result<()> {
    let mut rng = Rng::new(seed, streams::EVAL);
    let steps = process.len().saturating_sub(1).max(1);
    let starts: Vec<f64> = (0..PATHS.min(data.n)).map(|i| data.row(i)[0]).collect();
    let forward = crate::sde::forward_paths_1d(sde, &starts, steps, &mut rng);
    let reverse: Vec<Vec<(f64, f64)>> =
        (0..PATHS.min(process[0].1.n)).map(|i| process.iter().map(|(t, x)| (*t, x.row(i)[0])).collect()).collect();
    // the marginal of x₁ under the mixture: component means and variances of the first coordinate
    let marginal = oracle.and_then(|m| {
        let means = (0..m.n_components()).map(|k| vec![m.mean(k)[0]]).collect();
        let covs = (0..m.n_components()).map(|k| vec![vec![m.cov(k)[(0, 0)]]]).collect();
        GaussianMixture::new(m.weights().to_vec(), means, covs).ok()
    });
    let logp = |t: f64, x: f64| match &marginal {
        Some(m) => m.perturbed(sde, t).log_prob(&Points::new(1, 1, vec![x]))[0],
        None => 0.0,
    };
    let prior = 2.5 * sde.prior_std();
    let range = (bounds.x.0.min(-prior), bounds.x.1.max(prior));
    trajectories_over_density(
        path,
        &[
            Panel { title: "forward SDE: data → noise", paths: &forward, reverse_time: false },
            Panel { title: "reverse SDE (trained model): noise → data", paths: &reverse, reverse_time: true },
        ],
        &logp,
        sde.t_max(),
        range,
    )
    .map_err(plot_err)
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body { font: 16px/1.55 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #1d2330; background: #f6f7f9; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 32px 28px 64px; background: #fff; box-shadow: 0 0 24px rgba(0,0,0,.06); }
h1 { font-size: 28px; margin: 0 0 4px; } h1 small { color: #667; font-weight: 400; font-size: 16px; }
h2 { font-size: 20px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 2px solid #e3e6ec; }
nav a { margin-right: 14px; color: #2456a6; text-decoration: none; font-size: 14px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 14px; border-bottom: 1px solid #e3e6ec; text-align: right; }
th { background: #f0f2f6; font-weight: 600; } td:first-child, th:first-child { text-align: left; }
tr:hover td { background: #fafbfc; }
figure { margin: 18px 0 28px; } figure img { max-width: 100%; border: 1px solid #e3e6ec; border-radius: 4px; }
figcaption { color: #444; font-size: 14px; margin-top: 6px; max-width: 900px; }
.formula { font-family: 'DejaVu Serif', Georgia, serif; background: #f3f5fa; padding: 2px 8px; border-radius: 3px; display: inline-block; margin-bottom: 4px; }
pre { background: #f6f8fa; border: 1px solid #e3e6ec; padding: 12px 16px; font-size: 13px; overflow-x: auto; }
.skipped { color: #8a5a00; font-size: 14px; }
";

/// The page: a title, a table of contents, the sections, and what was skipped.
fn render(name: &str, sections: &[Section], skipped: &[String]) -> String {
    let mut h = String::new();
    let anchor = |t: &str| t.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{} — scoregen report</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n<h1>{} <small>scoregen run report</small></h1>\n<nav>",
        escape(name),
        escape(name)
    );
    for s in sections {
        let _ = write!(h, "<a href=\"#{}\">{}</a>", anchor(&s.title), escape(&s.title));
    }
    h.push_str("</nav>\n");
    for s in sections {
        let _ = writeln!(h, "<section id=\"{}\">\n<h2>{}</h2>", anchor(&s.title), escape(&s.title));
        for b in &s.blocks {
            match b {
                Block::Para(t) => {
                    let _ = writeln!(h, "<p>{}</p>", escape(t));
                }
                Block::Link { text, href } => {
                    let _ = writeln!(h, "<p>{} <a href=\"{}\">{}</a></p>", escape(text), escape(href), escape(href));
                }
                Block::Pre(t) => {
                    let _ = writeln!(h, "<pre>{}</pre>", escape(t));
                }
                Block::Figure { src, caption, formula } => {
                    let _ =
                        write!(h, "<figure>\n<img src=\"{}\" alt=\"{}\">\n<figcaption>", escape(src), escape(caption));
                    if let Some(f) = formula {
                        let _ = write!(h, "<span class=\"formula\">{}</span><br>", escape(f));
                    }
                    let _ = writeln!(h, "{}</figcaption>\n</figure>", escape(caption));
                }
                Block::Table(head, rows) => {
                    h.push_str("<table>\n");
                    if head.iter().any(|c| !c.is_empty()) {
                        h.push_str("<tr>");
                        for c in head {
                            let _ = write!(h, "<th>{}</th>", escape(c));
                        }
                        h.push_str("</tr>\n");
                    }
                    for r in rows {
                        h.push_str("<tr>");
                        for c in r {
                            let _ = write!(h, "<td>{}</td>", escape(c));
                        }
                        h.push_str("</tr>\n");
                    }
                    h.push_str("</table>\n");
                }
            }
        }
        h.push_str("</section>\n");
    }
    if !skipped.is_empty() {
        h.push_str("<section id=\"not-shown\">\n<h2>Not shown</h2>\n<ul class=\"skipped\">\n");
        for s in skipped {
            let _ = writeln!(h, "<li>{}</li>", escape(s));
        }
        h.push_str("</ul>\n</section>\n");
    }
    h.push_str("</main>\n</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_replaces_every_markup_character() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(escape("σ ∇ log p"), "σ ∇ log p");
    }

    /// The coarse grid and its lookup agree: each centre finds its own value,
    /// and a linear function is reproduced between centres (bilinear is exact on it).
    #[test]
    fn coarse_lookup_interpolates_the_grid() {
        let b = Bounds { x: (-2.0, 3.0), y: (1.0, 5.0) };
        let g = coarse_grid(&b);
        let f = |x: f64, y: f64| 2.0 * x - 3.0 * y + 0.5;
        let values: Vec<f64> = g.rows().map(|r| f(r[0], r[1])).collect();
        for i in 0..g.n {
            assert!((coarse_lookup(&values, &b, g.row(i)[0], g.row(i)[1]) - values[i]).abs() < 1e-9);
        }
        // inside the outer centres (half a cell from the edges), anywhere
        for (x, y) in [(-1.85, 1.1), (0.123, 2.777), (2.85, 4.9), (0.0, 3.0)] {
            assert!((coarse_lookup(&values, &b, x, y) - f(x, y)).abs() < 1e-9, "({x}, {y})");
        }
    }
}
