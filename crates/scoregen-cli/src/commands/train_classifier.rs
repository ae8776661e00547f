//! `scoregen train-classifier`: the classifier behind the image metrics, or a
//! noise-aware one for classifier guidance.

use super::Globals;
use anyhow::{Context, Result};
use scoregen::app::commands::classify::{default_out, defaults};
use std::path::PathBuf;

/// Train the classifier behind the image metrics (Fréchet distance, class histogram) or,
/// with --noisy, a noise-aware classifier p_t(y | x) for classifier guidance.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen train-classifier --data digits --out classifiers/digits\n  scoregen train-classifier --data mnist5k --steps 3000 --out classifiers/mnist5k\n  scoregen train-classifier --run runs/digits-vp --noisy --out runs/digits-vp/classifier"
)]
pub struct Args {
    /// Labelled data: digits, mnist5k, fashion-mnist, an IDX file, a folder of PNGs, or a Gaussian
    /// mixture (gmm8, gmm25, unbalanced, SPEC.toml; components are the classes).
    #[arg(long)]
    data: Option<String>,
    /// Take data, pixel scale, split and (with --noisy) the SDE from this run's config.toml.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Train on images perturbed by the run's forward SDE, with t as an input.
    #[arg(long)]
    noisy: bool,
    /// Output directory (default: classifiers/DATA, or RUN/classifier-noisy with --noisy).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Base channels of the CNN (hidden width of the MLP for points).
    #[arg(long, default_value_t = defaults::WIDTH)]
    width: usize,
    /// Convolutions per resolution of the CNN (1: three layers in all).
    #[arg(long, default_value_t = defaults::BLOCKS)]
    blocks: usize,
    #[arg(long, default_value_t = defaults::STEPS)]
    steps: usize,
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    batch_size: usize,
    #[arg(long, default_value_t = defaults::LR)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let config = match &args.run {
        Some(dir) => Some(scoregen::app::run_dir::config_of(dir)?),
        None => None,
    };
    let out = match &args.out {
        Some(o) => o.clone(),
        None => default_out(args.data.as_deref(), args.run.as_deref().zip(config.as_ref()), args.noisy)?,
    };
    let req = scoregen::app::commands::classify::ClassifierRequest {
        data: args.data.clone(),
        config,
        noisy: args.noisy,
        out,
        width: args.width,
        blocks: args.blocks,
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        quiet: g.quiet,
        device: g.open_device()?,
    };
    let o = scoregen::app::commands::classify::train_classifier(&req).context("training the classifier")?;
    g.print(&o, |o| {
        println!(
            "classifier for `{}` ({} training, {} held-out images): held-out accuracy {:.4}{}, {} steps in {:.1} s → {}",
            o.meta.data,
            o.train_images,
            o.test_images,
            o.meta.test_accuracy,
            if args.noisy { " at t = t_eps" } else { "" },
            o.meta.steps,
            o.seconds,
            o.dir.display()
        );
    });
    Ok(())
}
