//! `scoregen classify`: class histogram of samples under a trained classifier.

use super::Globals;
use anyhow::Result;
use scoregen::app::commands::classify::Expected;
use std::path::PathBuf;

/// Classify samples with a classifier from `train-classifier`: the class histogram and the fraction
/// that is the expected class.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen classify --classifier runs/digits-classifier --samples s.npy --class 3\n  scoregen inpaint --run runs/digits-vp --input held-out:100 --mask half --out in.npy\n  scoregen classify --classifier runs/digits-classifier --samples in.npy --labels in.labels.npy"
)]
pub struct Args {
    #[arg(long)]
    classifier: PathBuf,
    /// Samples in data space (.npy).
    #[arg(long)]
    samples: PathBuf,
    /// The class every sample should be.
    #[arg(long, conflicts_with = "labels")]
    class: Option<usize>,
    /// One expected label per sample (.npy), e.g. the `.labels.npy` written by `inpaint --input held-out`.
    #[arg(long)]
    labels: Option<PathBuf>,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let expected = match (args.class, &args.labels) {
        (Some(k), _) => Some(Expected::Class(k)),
        (None, Some(p)) => Some(Expected::Labels(p.clone())),
        (None, None) => None,
    };
    let c = scoregen::app::commands::classify::classify(&args.classifier, &args.samples, expected, &g.open_device()?)?;
    g.print(&c, |c| {
        let h: Vec<String> = c.histogram.iter().enumerate().map(|(k, f)| format!("{k}: {f:.3}")).collect();
        println!("{} samples, predicted classes {}", c.n, h.join("  "));
        if let Some(a) = c.accuracy {
            println!("fraction classified as expected: {a:.3}");
        }
    });
    Ok(())
}
