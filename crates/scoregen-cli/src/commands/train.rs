//! `scoregen train`: train a score model from a config, then write its report.

use super::shared::ConfigArgs;
use super::Globals;
use anyhow::{Context, Result};
use scoregen::train::{ExistingRun, TrainOptions};
use std::path::{Path, PathBuf};

/// Train a score model from a TOML config; ends by writing the run report RUN/report.html.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen train --config configs/gmm8-vp.toml\n  scoregen train --config configs/gmm8-ve.toml --set training.steps=8000 --out runs/long\n  scoregen train --config configs/gmm8-ve.toml --out runs/long --resume\n  scoregen train --config configs/gmm8-ve.toml --out runs/long --overwrite   # the old run goes to runs/long.old-<time>\n  scoregen train --config configs/digits-vp.toml --device cuda   (a build with the cuda feature; docs/gpu.md)\n\nA folder that already holds a run is never replaced silently: give --resume, --overwrite or another --out.\nOne process at a time writes a run (RUN/.lock holds its pid; a lock left by a killed process is taken over)."
)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Run directory (default: runs/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the newest checkpoint in the run directory.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start over in a directory that already holds a run: the old run is first moved to
    /// OUT.old-YYYYMMDD-HHMMSS (UTC), nothing is deleted. Without it (or --resume), such a folder is refused.
    #[arg(long)]
    overwrite: bool,
    /// On a non-finite loss or gradient, name the first non-finite tensor among the batch, the score
    /// network's inputs and outputs, the gradients and the updated parameters (checked every step).
    #[arg(long)]
    detect_anomaly: bool,
    /// Skip the run report (RUN/report.html) written after training.
    #[arg(long)]
    no_report: bool,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let mut cfg = args.config.load()?;
    cfg.run.device = g.device_or(cfg.run.device);
    let device = cfg.run.device.open()?;
    let dir = args.out.clone().unwrap_or_else(|| Path::new("runs").join(&cfg.name));
    let existing = if args.overwrite { ExistingRun::MoveAside } else { ExistingRun::Refuse };
    let opts = TrainOptions {
        resume: args.resume,
        quiet: g.quiet,
        stop_after: None,
        detect_anomaly: args.detect_anomaly,
        existing,
        on_log: None,
    };
    let outcome = scoregen::app::commands::train::train(&cfg, &dir, &opts)
        .with_context(|| format!("training {}", dir.display()))?;
    let report = if args.no_report {
        None
    } else {
        Some(
            scoregen::app::commands::report::write_report(&dir, g.quiet, &device)
                .with_context(|| format!("report of {}", dir.display()))?,
        )
    };
    if g.json {
        super::print_json(&serde_json::json!({
            "run": dir, "step": outcome.step, "final_loss": outcome.final_loss,
            "seconds": outcome.seconds, "steps_per_sec": outcome.steps_per_sec, "checkpoint": outcome.checkpoint,
            "report": report.map(|r| r.html), "moved_aside": outcome.moved_aside}));
    } else {
        if let Some(old) = &outcome.moved_aside {
            println!("the earlier run in {} was moved to {}", dir.display(), old.display());
        }
        println!(
            "trained {} to step {} in {:.1} s ({:.0} steps/s), final loss {:.4}\ncheckpoint: {}",
            dir.display(),
            outcome.step,
            outcome.seconds,
            outcome.steps_per_sec,
            outcome.final_loss,
            outcome.checkpoint.display()
        );
        if let Some(r) = report {
            println!("report: {}", r.html.display());
        }
    }
    Ok(())
}
