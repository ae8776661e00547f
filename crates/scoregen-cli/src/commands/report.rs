//! `scoregen report`: write a run's report page.

use super::Globals;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Write RUN/report.html: config, loss curve, metrics, samples, score field, density, reverse process.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen report --run runs/quickstart\n  scoregen report --run runs/gmm8-vp --json\n\nThe figures go to RUN/report/; the page links them by relative paths, so the folder can be moved or served as is."
)]
pub struct Args {
    #[arg(long)]
    run: PathBuf,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let run = &args.run;
    let r = scoregen::app::commands::report::write_report(run, g.quiet, &g.open_device()?)
        .with_context(|| format!("report of run {}", run.display()))?;
    g.print(&r, |r| {
        println!("wrote {} ({} figures in {:.1} s)", r.html.display(), r.figures.len(), r.seconds);
        for s in &r.skipped {
            println!("  not shown: {s}");
        }
    });
    Ok(())
}
