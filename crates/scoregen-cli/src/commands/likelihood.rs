//! `scoregen likelihood`: exact log-likelihood of data under a trained run.

use super::shared::RunArgs;
use super::Globals;
use anyhow::{Context, Result};
use scoregen::app::commands::likelihood::LikelihoodRequest;
use scoregen::likelihood::{ProbeNoise, TraceEstimator};

/// Exact log-likelihood (nats and bits/dim) of data under a trained run, via the probability-flow ODE.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen likelihood --run runs/gmm8-ve --data gmm8 --n 500\n  scoregen likelihood --run runs/digits-vp --data digits --n 100 --dequantize   (held-out digits, 17 levels over [−1, 1])\n  scoregen likelihood --run runs/img --data test.npy --trace hutchinson --probes 4 --dequantize --levels 256 --data-range -1,1\n\nbits/dim = −log p(x)/(D ln 2); with --dequantize the offset log₂(levels) − log₂(hi − lo) is added (8 for [0,1], 7 for [−1,1] at 256 levels): see docs/guide.md."
)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// A .npy file [N, D] or a data-set name (fresh held-out points are drawn).
    #[arg(long)]
    data: String,
    /// Points to draw from a named data set.
    #[arg(long, default_value_t = 500)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    trace: TraceArgs,
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    #[command(flatten)]
    dequantize: DequantizeArgs,
}

// How the divergence Tr ∇ₓ s is computed.
#[derive(Debug, clap::Args)]
struct TraceArgs {
    /// Divergence: exact (default for D ≤ 16) or hutchinson.
    #[arg(long)]
    trace: Option<Trace>,
    /// Hutchinson probes per evaluation.
    #[arg(long, default_value_t = 1)]
    probes: usize,
    /// Hutchinson probe distribution: rademacher or gaussian.
    #[arg(long, default_value = "rademacher")]
    noise: ProbeNoise,
}

/// `--trace`: the name of a [`TraceEstimator`]; the Hutchinson probes come from `--probes` and `--noise`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Trace {
    /// Tr ∇ₓs exactly (D vector-Jacobian products, or the closed form).
    Exact,
    /// Hutchinson's unbiased estimate with --probes probes.
    Hutchinson,
}

impl TraceArgs {
    /// `None`: the library's default for the data's dimension.
    fn estimator(&self) -> Option<TraceEstimator> {
        self.trace.map(|t| match t {
            Trace::Exact => TraceEstimator::Exact,
            Trace::Hutchinson => TraceEstimator::Hutchinson { probes: self.probes.max(1), noise: self.noise },
        })
    }
}

// Discrete bits/dim of quantized data.
#[derive(Debug, clap::Args)]
struct DequantizeArgs {
    /// Uniformly dequantize data on a grid lo + (hi − lo)·k/(levels − 1) and report discrete bits/dim.
    #[arg(long)]
    dequantize: bool,
    /// Levels L of the grid (default: the run's image data, 17 for digits and 256 for 8-bit images; else 256).
    #[arg(long)]
    levels: Option<u32>,
    /// The data range lo,hi of the quantized grid (default: the run's pixel scale, [−1, 1] or [0, 1]; else 0,1).
    #[arg(long, value_name = "LO,HI")]
    data_range: Option<String>,
}

impl DequantizeArgs {
    /// Parses `LO,HI`.
    fn range(&self) -> Result<Option<(f64, f64)>> {
        let Some(r) = &self.data_range else { return Ok(None) };
        let parsed = r
            .split_once(',')
            .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
            .with_context(|| format!("--data-range: expected LO,HI, found `{r}`"))?;
        Ok(Some(parsed))
    }
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let (run, data) = (&args.run.run, &args.data);
    let dequantize = if args.dequantize.dequantize {
        Some(scoregen::app::commands::likelihood::dequantization_for(
            run,
            args.dequantize.levels,
            args.dequantize.range()?,
        )?)
    } else {
        None
    };
    if !(args.rtol > 0.0 && args.atol > 0.0) {
        anyhow::bail!("--rtol and --atol must be > 0");
    }
    let req = LikelihoodRequest {
        data: data.clone(),
        n: args.n,
        seed: args.seed,
        trace: args.trace.estimator(),
        rtol: args.rtol,
        atol: args.atol,
        dequantize,
        use_ema: !args.run.no_ema,
        quiet: g.quiet,
        device: g.open_device()?,
    };
    let r = scoregen::app::commands::likelihood::likelihood_of_run(run, &req)
        .with_context(|| format!("likelihood of `{data}` under run {}", run.display()))?;
    g.print(&r, |r| {
        println!(
            "{} points, D = {}: log p = {:.4} ± {:.4} nats, {:.4} bits/dim (offset {}), {} score evaluations ({:?}), {:.2} s",
            r.n, r.dim, r.mean_nats, r.stderr_nats, r.mean_bits_per_dim, r.bpd_offset, r.nfe, r.trace, r.seconds
        );
        if let (Some(o), Some(g), Some(a)) = (r.oracle_mean_nats, r.gap_nats, r.mean_abs_gap_nats) {
            println!("exact log p₀ = {o:.4} nats: gap (model − exact) {g:+.4} nats, mean |gap| {a:.4} nats");
        }
    });
    Ok(())
}
