//! `scoregen info`: describe a run folder or a diffusers checkpoint.

use super::Globals;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Describe what a run folder holds as scoregen loads it: a scoregen run, or a diffusers checkpoint (a pipeline
/// folder with model_index.json, unet/ and scheduler/, or a UNet2DModel folder with config.json): the network
/// and its size, the SDE its time input refers to, and the default sampler (docs/pretrained.md).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen info --run runs/digits-vp\n  scoregen info --run ddpm-cifar10-32\n  scoregen info --run ddpm-cifar10-32 --json"
)]
pub struct Args {
    #[arg(long)]
    run: PathBuf,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let i = scoregen::app::commands::info::describe(&args.run)
        .with_context(|| format!("reading run {}", args.run.display()))?;
    g.print(&i, |i| {
        println!("{} ({})", i.name, i.format);
        println!("  model:      {}", i.model);
        println!("  parameters: {} ({:.2} M)", i.parameters, i.parameters as f64 / 1e6);
        if let Some((c, h, w)) = i.image {
            println!("  images:     {c}×{h}×{w}");
        }
        println!("  SDE:        {}", i.sde);
        if let Some(s) = &i.scheduler {
            println!("  scheduler:  {s}");
        }
        println!("  sampler:    {} ({} steps by default)", i.sampler, i.steps);
        println!("  weights:    {} (step {})", i.weights, i.step);
    });
    Ok(())
}
