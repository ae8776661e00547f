//! `scoregen quickstart`: train, sample, evaluate and report on gmm8 in one go.

use super::shared::Overrides;
use super::Globals;
use anyhow::Result;
use scoregen::train::ExistingRun;
use std::path::PathBuf;

/// The quickstart's own folder, replaced by each quickstart.
const DEFAULT_OUT: &str = "runs/quickstart";

/// Train on gmm8 with the VE SDE, sample 2,000 points, evaluate, draw them and write the report (about a minute).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen quickstart\n  scoregen quickstart --out runs/qs --set training.steps=1000\n  scoregen --json quickstart\n  scoregen quickstart --device cuda"
)]
pub struct Args {
    /// Run directory (default: runs/quickstart, the quickstart's own folder, which each
    /// quickstart replaces). Another folder that already holds a run is refused unless --overwrite.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Move a run already in --out aside (to OUT.old-<time>) and start over.
    #[arg(long, requires = "out")]
    overwrite: bool,
    #[command(flatten)]
    overrides: Overrides,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    // --device goes in as the override `run.device`, after any --set
    let mut set = args.overrides.set.clone();
    if let Some(d) = g.device {
        set.push(format!("run.device={d}"));
    }
    let (out, existing) = match &args.out {
        None => (PathBuf::from(DEFAULT_OUT), ExistingRun::Replace),
        Some(out) if args.overwrite => (out.clone(), ExistingRun::MoveAside),
        Some(out) => (out.clone(), ExistingRun::Refuse),
    };
    let s = scoregen::app::commands::quickstart::quickstart(&out, &set, g.quiet, existing)?;
    g.print(&s, |s| {
        println!(
            "scoregen quickstart: gmm8, VE SDE, {} training steps in {:.1} s ({:.0} steps/s), final loss {:.4}",
            s.steps, s.train_seconds, s.steps_per_sec, s.final_loss
        );
        println!("sampled {} points, {} score evaluations, {:.2} s\n", s.sample.n, s.sample.nfe, s.sample.seconds);
        print!("{}", s.evaluation.table());
        println!(
            "\nwrote {}: samples.npy, samples.png, loss.png, metrics.json, checkpoints/\nreport: {}",
            s.out_dir.display(),
            s.report.display()
        );
    });
    Ok(())
}
