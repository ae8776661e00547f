//! `scoregen inpaint`: complete observations whose mask leaves part unknown.

use super::shared::RunArgs;
use super::Globals;
use anyhow::{Context, Result};
use scoregen::app::commands::inpaint::InpaintRequest;
use scoregen::guidance::MaskSpec;
use scoregen::samplers::SamplerKind;
use std::path::PathBuf;

/// Fill in the unknown part of observations (inpainting, imputation): the known coordinates are held
/// to the observation perturbed to each step's noise level (y + σ·z; y itself at the end) while the rest follows
/// the reverse process.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Masks: half (images: top half known; points: first half of the coordinates known), box (a centred box\nmissing), random:P (a fraction P missing), or FILE (.npy of 0/1 or a PNG, 1/white = known).\n\nExamples:\n  scoregen inpaint --run runs/digits-vp --input digits.npy --mask half --per-input 4\n  scoregen inpaint --run runs/digits-vp --input seven.png --mask box\n  scoregen inpaint --run runs/gmm8-vp --input points.npy --mask half --out imputed.npy"
)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Observations: held-out[:N] (the run's held-out images; their labels are written beside the output),
    /// .npy [N, D] or [N, C, H, W] in data space, or a PNG image (pixels).
    #[arg(long)]
    input: PathBuf,
    /// Which coordinates are known: half, box, random:P, or a FILE (.npy/.png).
    #[arg(long)]
    pub(crate) mask: String,
    /// Completions per observation.
    #[arg(long, default_value_t = 1)]
    per_input: usize,
    /// Sampler: any but ode, langevin and mala (default: the run's sampling.sampler with its steps when it is
    /// stochastic, e.g. the presets' dpmpp-2m-sde; a deterministic σ-space solver is replaced by dpmpp-2m-sde at
    /// the same number of model calls, ode and the Langevin samplers by dpmpp-2m-sde).
    #[arg(long)]
    sampler: Option<SamplerKind>,
    /// Steps (default: the default sampler's, else the config's sampling.steps).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output .npy (default: RUN/samples/inpainted.npy, replaced each time); a PNG beside it (images: rows of
    /// masked input and completions). An existing --out file is refused unless --overwrite.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the --out file if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let (run, input) = (&args.run.run, &args.input);
    let req = InpaintRequest {
        input: input.clone(),
        mask: MaskSpec::parse(&args.mask)?,
        per_input: args.per_input,
        sampler: args.sampler,
        steps: args.steps,
        seed: args.seed,
        out: args.out.clone().unwrap_or_else(|| run.join("samples").join("inpainted.npy")),
        overwrite: args.overwrite || args.out.is_none(),
        use_ema: !args.run.no_ema,
        quiet: g.quiet,
        device: g.open_device()?,
    };
    let o = scoregen::app::commands::inpaint::inpaint_run(run, &req)
        .with_context(|| format!("inpainting {} with run {}", input.display(), run.display()))?;
    g.print(&o, |o| {
        println!(
            "{} completions ({:.0} % of each known, {} score evaluations) in {:.2} s → {}",
            o.n,
            100.0 * o.known_fraction,
            o.nfe,
            o.seconds,
            o.npy.display()
        );
        if let Some(p) = &o.png {
            println!("picture → {}", p.display());
        }
        if let Some(p) = &o.labels {
            println!("labels of the observations → {}", p.display());
        }
    });
    Ok(())
}
