//! `scoregen suggest-sigmas`: a noise ladder for a data set by the NCSNv2 rules.

use super::Globals;
use anyhow::Result;
use scoregen::rng::{streams, Rng};
use scoregen::sde::ladder;

/// Suggest a noise ladder and Langevin step size by the NCSNv2 rules.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen suggest-sigmas --data gmm8\n  scoregen suggest-sigmas --data x.npy --sigma-min 0.01 --steps-per-level 5"
)]
pub struct Args {
    /// A toy set name, a mixture spec .toml, or an [N, D] .npy file.
    #[arg(long)]
    data: String,
    #[arg(long, default_value_t = 0.01)]
    sigma_min: f64,
    #[arg(long, default_value_t = 100)]
    steps_per_level: usize,
    /// Points drawn from a toy set or mixture spec.
    #[arg(long, default_value_t = 5000)]
    n: usize,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let Args { data, sigma_min, steps_per_level, n } = args;
    if !(sigma_min.is_finite() && *sigma_min > 0.0) || *steps_per_level == 0 || *n < 2 {
        anyhow::bail!("--sigma-min must be > 0, --steps-per-level ≥ 1 and --n ≥ 2");
    }
    let ds = scoregen::data::load(data, *n, &mut Rng::new(0, streams::SUGGEST_SIGMAS_DATA))?;
    let dmax = ladder::max_pairwise_distance(&ds.points);
    let s = ladder::suggest(dmax, ds.points.d, *sigma_min, *steps_per_level);
    g.print(&s, |s| println!("{}", s.explain()));
    Ok(())
}
