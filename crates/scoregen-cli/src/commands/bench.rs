//! `scoregen bench`: the sampler leaderboard (quality against NFE) and the
//! speed cases that bench/run sets beside PyTorch.

use super::Globals;
use anyhow::{Context, Result};
use clap::Subcommand;
use scoregen::samplers::SamplerKind;
use std::path::{Path, PathBuf};

/// Benchmarks: `samplers` (quality against NFE for every sampler); `train`, `sample`, `likelihood`, `gemm` (speed; bench/run sets them beside PyTorch).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen bench samplers\n  scoregen bench samplers --target gmm25 --budgets 10,20,50\n  scoregen bench samplers --grids uniform-t,karras,linspace,leading,trailing --budgets 10,20\n  scoregen bench samplers --run runs/gmm8-vp --json"
)]
pub struct Args {
    #[command(subcommand)]
    which: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The sampler leaderboard: EM and the σ-space samplers (DDPM, Euler-ancestral, DPM-Solver++(2M) SDE, DDIM,
    /// DPM-Solver++(2M) and (3M), EDM Heun, UniPC), each on every grid of --grids, at several NFE budgets,
    /// judged against the exact mixture (oracle score by default, or a trained run's model); then, at the
    /// same budgets, each deterministic solver's error against the exact probability-flow solution of a
    /// Gaussian (where higher order pays).
    Samplers {
        /// Mixture to judge against (gmm8, gmm25, unbalanced, SPEC.toml); default: the run's data, else gmm8.
        #[arg(long)]
        target: Option<String>,
        /// A trained run to benchmark instead of the exact oracle score.
        #[arg(long)]
        run: Option<PathBuf>,
        /// NFE budgets, comma-separated.
        #[arg(long, default_value = "10,20,50,100,1000", value_name = "N,N,…")]
        budgets: String,
        /// Grids of the σ-space samplers, comma-separated (uniform-t, karras, uniform-lambda, linspace, leading,
        /// trailing, dpm-linspace, dpm-leading),
        /// one row per solver × grid; `default`: each sampler on its own grid only.
        #[arg(long, default_value = "uniform-t,karras", value_name = "GRID,…")]
        grids: String,
        /// Samples per sampler and budget.
        #[arg(long, default_value_t = 2000)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where the plot (energy distance against NFE) goes.
        #[arg(long, default_value = "runs/bench/samplers.png")]
        plot: PathBuf,
    },
    /// Speed: median ms of one training step (forward, backward, clip, Adam, EMA), as bench/run compares with PyTorch.
    Train {
        /// mlp (configs/gmm8-vp.toml) or unet (configs/digits-vp.toml on random SIDE×SIDE images).
        #[arg(long, default_value = "mlp")]
        model: Model,
        /// Hidden width of the MLP.
        #[arg(long, default_value_t = 128)]
        width: usize,
        /// Image side of the U-Net case.
        #[arg(long, default_value_t = 28)]
        side: usize,
        #[arg(long, default_value_t = 512)]
        batch: usize,
        /// Untimed calls before the timed ones (each is timed apart: `warmup_ms` under --json,
        /// and the first printed as the warm-up call).
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 30)]
        reps: usize,
    },
    /// Speed: sampling the gmm8-vp MLP or the digits-vp U-Net (untrained, the frozen EMA copy) with
    /// Euler–Maruyama or the probability-flow ODE (Heun).
    Sample {
        /// mlp (configs/gmm8-vp.toml) or unet (configs/digits-vp.toml on SIDE×SIDE images).
        #[arg(long, default_value = "mlp")]
        model: Model,
        /// Image side of the U-Net case.
        #[arg(long, default_value_t = 28)]
        side: usize,
        /// The sampler timed: em, or ode (the probability-flow ODE with Heun's method in --steps fixed steps).
        #[arg(long, default_value_t = SamplerKind::Em, value_parser = timed_sampler, hide_possible_values = true)]
        sampler: SamplerKind,
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        #[arg(long, default_value_t = 1000)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Speed: ODE log-likelihood (Heun steps; exact divergence for the MLP, one Hutchinson probe for
    /// images) of N points under the gmm8-vp MLP or the digits-vp U-Net.
    Likelihood {
        /// mlp (configs/gmm8-vp.toml) or unet (configs/digits-vp.toml on SIDE×SIDE images).
        #[arg(long, default_value = "mlp")]
        model: Model,
        /// Image side of the U-Net case.
        #[arg(long, default_value_t = 28)]
        side: usize,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 100)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Speed at the field's model sizes (`bench/run field`): one step of the mnist5k-vp U-Net (28×28,
    /// class-conditional, attention) or of google/ddpm-cifar10-32's UNet2DModel (35.7 M parameters,
    /// random weights), with its FLOPs: a training step, a reverse-SDE sampling step (classifier-free
    /// guidance for mnist5k) or the likelihood's forward + one VJP with respect to x.
    Step {
        #[arg(long, value_enum)]
        model: FieldModelArg,
        #[arg(long, value_enum)]
        phase: FieldPhaseArg,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Untimed calls before the timed ones (each is timed apart: `warmup_ms` under --json,
        /// and the first printed as the warm-up call).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Speed: this machine's f32 GEMM rate through candle (N×N by N×N).
    Gemm {
        #[arg(long, default_value_t = 1024)]
        n: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
}

/// The model of `bench step`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FieldModelArg {
    /// configs/mnist5k-vp.toml's U-Net (16 → 32 → 64 channels, attention at 7×7, 10 classes).
    Mnist5k,
    /// google/ddpm-cifar10-32's UNet2DModel (128 channels ×1-2-2-2, attention at 16×16).
    Cifar,
}

/// What `bench step` times.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FieldPhaseArg {
    /// Forward, backward, clipping, Adam, EMA.
    Train,
    /// One Euler–Maruyama step of the reverse SDE (frozen EMA copy; guided where class-conditional).
    Sample,
    /// s(x, t) and one vector–Jacobian product with respect to x (the likelihood's integrand).
    Vjp,
}

/// The model of `bench train`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Model {
    /// The MLP of configs/gmm8-vp.toml, --width wide.
    Mlp,
    /// The U-Net of configs/digits-vp.toml on random --side × --side images.
    Unet,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let timing = match &args.which {
        Bench::Samplers { target, run: run_dir, budgets, grids, n, seed, plot } => {
            let budgets = budgets
                .split(',')
                .map(|b| b.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .with_context(|| format!("--budgets: expected comma-separated integers, found `{budgets}`"))?;
            let grids = if grids.trim() == "default" {
                Vec::new()
            } else {
                grids
                    .split(',')
                    .map(|g| g.trim().parse::<scoregen::samplers::Grid>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("--grids: {e}"))?
            };
            let req = scoregen::app::commands::leaderboard::BenchRequest {
                target: target.clone(),
                run: run_dir.clone(),
                budgets,
                grids,
                n: *n,
                seed: *seed,
                quiet: g.quiet,
                device: g.open_device()?,
            };
            return leaderboard(&req, plot, g);
        }
        Bench::Train { model, width, side, batch, warmup, reps } => {
            let (cfg, case) = match model {
                Model::Mlp => (
                    scoregen::app::commands::bench::mlp_config(*width, *batch)?,
                    format!("train mlp W={width} B={batch}"),
                ),
                Model::Unet => (
                    scoregen::app::commands::bench::unet_config(*side, *batch)?,
                    format!("train unet {side}x{side} B={batch}"),
                ),
            };
            scoregen::app::commands::bench::train_step(&on_device(cfg, g), &case, *warmup, *reps)?
        }
        Bench::Sample { model, side, sampler, n, steps, reps } => {
            let (cfg, label) = eval_model(*model, *side, *n)?;
            scoregen::app::commands::bench::sample(&on_device(cfg, g), *sampler, *n, *steps, *reps, &label)?
        }
        Bench::Likelihood { model, side, n, steps, reps } => {
            let (cfg, label) = eval_model(*model, *side, *n)?;
            scoregen::app::commands::bench::likelihood(&on_device(cfg, g), *n, *steps, *reps, &label)?
        }
        Bench::Step { model, phase, batch, warmup, reps } => {
            use scoregen::app::commands::bench::{field_config, field_step, FieldModel, FieldPhase};
            let model = match model {
                FieldModelArg::Mnist5k => FieldModel::Mnist5k,
                FieldModelArg::Cifar => FieldModel::Cifar,
            };
            let phase = match phase {
                FieldPhaseArg::Train => FieldPhase::Train,
                FieldPhaseArg::Sample => FieldPhase::Sample,
                FieldPhaseArg::Vjp => FieldPhase::Vjp,
            };
            field_step(&on_device(field_config(model, *batch)?, g), model, phase, *warmup, *reps)?
        }
        Bench::Gemm { n, reps } => scoregen::app::commands::bench::gemm_peak(*n, *reps, &g.open_device()?)?,
    };
    g.print(&timing, |t| {
        let gflops = t.gflop.map(|g| format!(", {:.1} GFLOP/s", g / (t.median_ms / 1e3))).unwrap_or_default();
        let first = t.warmup_ms.first().map(|ms| format!(" (first, warm-up call {ms:.0} ms)")).unwrap_or_default();
        println!(
            "{}: {:.3} ms median of {}{first}, {:.0} items/s{gflops}, peak RSS {:.0} MiB",
            t.case,
            t.median_ms,
            t.reps_ms.len(),
            t.items_per_s,
            t.peak_rss_mib
        );
    });
    Ok(())
}

/// A bench config on `--device` (the CPU without it).
fn on_device(mut cfg: scoregen::app::config::RunConfig, g: &Globals) -> scoregen::app::config::RunConfig {
    cfg.run.device = g.device_or(cfg.run.device);
    cfg
}

/// The config of a sampling or likelihood case and the model's label in its name.
fn eval_model(model: Model, side: usize, n: usize) -> Result<(scoregen::app::config::RunConfig, String)> {
    Ok(match model {
        Model::Mlp => (scoregen::app::commands::bench::mlp_config(128, 512)?, String::new()),
        Model::Unet => (scoregen::app::commands::bench::unet_config(side, n)?, format!("unet {side}x{side} ")),
    })
}

/// `bench samplers`: the leaderboard's plot, then its table.
fn leaderboard(req: &scoregen::app::commands::leaderboard::BenchRequest, plot: &Path, g: &Globals) -> Result<()> {
    let lb = scoregen::app::commands::leaderboard::bench_samplers(req)?;
    if let Some(dir) = plot.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    lb.plot(plot).map_err(|e| anyhow::anyhow!("{e}"))?;
    if g.json {
        super::print_json(&serde_json::json!({ "leaderboard": lb, "plot": plot }));
    } else {
        print!("{}", lb.table());
        println!("\nplot → {}", plot.display());
    }
    Ok(())
}

/// `bench sample --sampler`: a sampler of the table that the speed case can time (the app's rule).
fn timed_sampler(s: &str) -> Result<SamplerKind, String> {
    let kind: SamplerKind = s.parse()?;
    scoregen::app::commands::bench::timed_sampler(kind)
        .map_err(|e| e.setting().map_or(e.to_string(), |(_, m)| m.into()))
}
