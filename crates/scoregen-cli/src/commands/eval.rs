//! `scoregen eval`: metrics of a sample file against a target.

use super::Globals;
use anyhow::{Context, Result};
use scoregen::app::commands::eval::Target;
use scoregen::data::npy;
use std::path::{Path, PathBuf};

/// Compare a sample file with a target: a mixture (gmm8, gmm25, unbalanced, SPEC.toml) or a reference .npy.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen eval --samples runs/quickstart/samples.npy --target gmm8\n  scoregen eval --samples runs/digits-vp/samples/samples.npy --target digits --classifier classifiers/digits"
)]
pub struct Args {
    #[arg(long)]
    samples: PathBuf,
    /// A mixture (gmm8, gmm25, unbalanced, SPEC.toml), a reference .npy, or an image source
    /// (digits, mnist5k, fashion-mnist, IDX, PNG folder: judged by a classifier).
    #[arg(long)]
    pub(crate) target: String,
    /// Classifier for image targets (default: classifiers/TARGET), made by `scoregen train-classifier`.
    #[arg(long)]
    classifier: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let (samples, target) = (&args.samples, &args.target);
    let pts = npy::read_points(samples)?;
    if scoregen::data::is_image_source(target) {
        let dir = args.classifier.clone().unwrap_or_else(|| Path::new("classifiers").join(target));
        let report = scoregen::app::commands::classify::evaluate_images(&pts, &dir, &g.open_device()?)
            .with_context(|| format!("image metrics of {} against `{target}`", samples.display()))?;
        g.print(&report, |r| print!("{}", r.table()));
        return Ok(());
    }
    let t = Target::parse(target)?;
    let ev = scoregen::app::commands::eval::evaluate(&pts, &t, args.seed)?;
    g.print(&ev, |ev| print!("{}", ev.table()));
    Ok(())
}
