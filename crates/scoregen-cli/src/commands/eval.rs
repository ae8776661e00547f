//! `scoregen eval`: metrics of a sample file against a target.

use super::Globals;
use anyhow::{Context, Result};
use scoregen::app::commands::eval::EvalTarget;
use scoregen::data::npy;
use std::path::PathBuf;

/// Compare a sample file with a target: a mixture (gmm8, gmm25, unbalanced, SPEC.toml) or a reference .npy.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen eval --samples runs/quickstart/samples.npy --target gmm8\n  scoregen eval --samples runs/digits-vp/samples/samples.npy --target digits --classifier classifiers/digits\n  scoregen eval --samples runs/cifar10/samples/samples.npy --target cifar10:data/cifar-10-batches-bin --inception pt_inception.safetensors\n  scoregen eval --samples samples.npy --target fid_stats_cifar10_train.npz --inception pt_inception.safetensors"
)]
pub struct Args {
    #[arg(long)]
    samples: PathBuf,
    /// A mixture (gmm8, gmm25, unbalanced, SPEC.toml), a reference .npy, or an image source
    /// (digits, mnist5k, fashion-mnist, cifar10:DIR, IDX, PNG folder: judged by a classifier,
    /// or with --inception by pytorch-fid's network); with --inception also pytorch-fid's
    /// statistics .npz (`mu`, `sigma`).
    #[arg(long)]
    pub(crate) target: String,
    /// Classifier for image targets (default: classifiers/TARGET), made by `scoregen train-classifier`.
    /// Its Fréchet distance is not comparable to papers' FID.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// pytorch-fid's Inception-v3 weights as safetensors (scripts/convert-inception.py): report FID,
    /// Inception Score and precision/recall as the papers do, instead of the classifier's metrics.
    /// Samples are in data coordinates ([-1, 1]).
    #[arg(long)]
    inception: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let (samples, target) = (&args.samples, &args.target);
    let pts = npy::read_points(samples)?;
    let mut t = EvalTarget::parse(target, args.classifier.as_deref(), args.inception.as_deref())?;
    if let EvalTarget::Inception { shape, .. } = &mut t {
        *shape = npy::image_shape(samples);
    }
    // only image metrics run a network, on --device; an error there names the samples
    let image = matches!(t, EvalTarget::Images { .. } | EvalTarget::Inception { .. });
    let device = if image { g.open_device()? } else { scoregen::device::Device::Cpu };
    let report = t.evaluate(&pts, args.seed, &device);
    let report = if image {
        report.with_context(|| format!("image metrics of {} against `{target}`", samples.display()))?
    } else {
        report?
    };
    g.print(&report, |r| print!("{}", r.table()));
    Ok(())
}
