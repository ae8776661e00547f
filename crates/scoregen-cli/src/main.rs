//! `scoregen`: the command-line shell over the library. It parses
//! arguments, calls the library and prints; nothing else lives here.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use scoregen::config::{RunConfig, SamplerKind};
use scoregen::data::npy;
use scoregen::run::{self, SampleRequest, Target};
use scoregen::train::{self, TrainOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// Candle allocates a fresh buffer for every tensor op; with glibc malloc the
// large ones are mmap-ed and unmapped each time, and page faults dominated
// the run time (measured: 19 ms per sampling step, most of it in the kernel).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2). −1 keeps freed pages
/// instead of returning them to the OS, so the same buffers are reused step
/// after step without page faults (measured: 2× faster sampling).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "scoregen",
    version,
    about = "Score-based generative modeling: train score models, sample the reverse SDE, check against exact answers"
)]
#[command(
    after_help = "Exit codes: 0 success, 1 error (the message names the file and field), 2 bad command-line usage."
)]
struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More log output (-v info, -vv debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a score model from a TOML config.
    #[command(
        after_help = "Examples:\n  scoregen train --config configs/gmm8-vp.toml\n  scoregen train --config configs/gmm8-ve.toml --set training.steps=8000 --out runs/long\n  scoregen train --config configs/gmm8-ve.toml --out runs/long --resume"
    )]
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Run directory (default: runs/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override a config value, e.g. --set sde.sigma_max=20 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue from the newest checkpoint in the run directory.
        #[arg(long)]
        resume: bool,
    },
    /// Sample a trained run with the reverse SDE (Euler–Maruyama).
    #[command(after_help = "Example:\n  scoregen sample --run runs/gmm8-ve --n 5000 --steps 500 --out samples.npy")]
    Sample {
        #[arg(long)]
        run: PathBuf,
        /// Number of samples (default: the config's sampling.n).
        #[arg(long)]
        n: Option<usize>,
        /// Reverse-SDE steps (default: the config's sampling.steps).
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output .npy (default: RUN/samples/samples.npy); a PNG is written beside it for 2-D data.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sample with the raw weights instead of the EMA weights.
        #[arg(long)]
        no_ema: bool,
        /// Sampler: em, langevin, mala, annealed-langevin (default: the config's sampling.sampler).
        #[arg(long)]
        sampler: Option<SamplerKind>,
        /// Langevin step size ε (annealed: the step at the smallest noise level).
        #[arg(long)]
        eps: Option<f64>,
        /// Annealed Langevin: steps per noise level T.
        #[arg(long)]
        steps_per_level: Option<usize>,
    },
    /// Suggest a noise ladder and Langevin step size by the NCSNv2 rules.
    #[command(
        after_help = "Examples:\n  scoregen suggest-sigmas --data gmm8\n  scoregen suggest-sigmas --data x.npy --sigma-min 0.01 --steps-per-level 5"
    )]
    SuggestSigmas {
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
    },
    /// The seed's figures on exact scores: `langevin` (langevin.gif) or `pitfall` (pitfall.png).
    #[command(
        after_help = "Examples:\n  scoregen demo langevin --out runs/demo\n  scoregen demo pitfall --out runs/demo"
    )]
    Demo {
        /// langevin | pitfall
        which: String,
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
    /// Compare a sample file with a target: a mixture (gmm8, gmm25, unbalanced, SPEC.toml) or a reference .npy.
    #[command(after_help = "Example:\n  scoregen eval --samples runs/quickstart/samples.npy --target gmm8")]
    Eval {
        #[arg(long)]
        samples: PathBuf,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train on gmm8 with the VE SDE, sample 2,000 points, evaluate and draw them (about a minute).
    Quickstart {
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`scoregen … | head`) like other Unix tools,
    // instead of panicking in println!.
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    keep_freed_memory();
    let cli = Cli::parse();
    scoregen::init();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    match run_command(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("results serialize"));
}

fn run_command(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Train { config, out, set, resume } => {
            let cfg = RunConfig::load(config, set)?;
            let dir = out.clone().unwrap_or_else(|| Path::new("runs").join(&cfg.name));
            let outcome =
                train::train(&cfg, &dir, &TrainOptions { resume: *resume, quiet: cli.quiet, stop_after: None })
                    .with_context(|| format!("training {}", dir.display()))?;
            if cli.json {
                print_json(&serde_json::json!({
                    "run": dir, "step": outcome.step, "final_loss": outcome.final_loss,
                    "seconds": outcome.seconds, "steps_per_sec": outcome.steps_per_sec, "checkpoint": outcome.checkpoint,
                }));
            } else {
                println!(
                    "trained {} to step {} in {:.1} s ({:.0} steps/s), final loss {:.4}\ncheckpoint: {}",
                    dir.display(),
                    outcome.step,
                    outcome.seconds,
                    outcome.steps_per_sec,
                    outcome.final_loss,
                    outcome.checkpoint.display()
                );
            }
        }
        Command::Sample { run, n, steps, seed, out, no_ema, sampler, eps, steps_per_level } => {
            let cfg = RunConfig::load(&run.join("config.toml"), &[])
                .with_context(|| format!("reading run {}", run.display()))?;
            let req = SampleRequest {
                n: n.unwrap_or(cfg.sampling.n),
                steps: steps.unwrap_or(cfg.sampling.steps),
                seed: *seed,
                out: out.clone().unwrap_or_else(|| run.join("samples").join("samples.npy")),
                use_ema: !no_ema && cfg.sampling.use_ema,
                quiet: cli.quiet,
                sampler: *sampler,
                step_size: *eps,
                steps_per_level: *steps_per_level,
                record_every: None,
            };
            if eps.is_some_and(|e| !(e > 0.0 && e.is_finite())) || *steps_per_level == Some(0) {
                anyhow::bail!("--eps must be > 0 and --steps-per-level ≥ 1");
            }
            if req.n == 0 || req.steps == 0 {
                anyhow::bail!("--n and --steps must be ≥ 1");
            }
            let o = run::sample_run(run, &req)?;
            if cli.json {
                print_json(&o);
            } else {
                println!("{} samples ({} score evaluations) in {:.2} s → {}", o.n, o.nfe, o.seconds, o.npy.display());
                if let Some(p) = &o.png {
                    println!("scatter plot → {}", p.display());
                }
            }
        }
        Command::Eval { samples, target, seed } => {
            let pts = npy::read_points(samples)?;
            let t = Target::parse(target)?;
            let ev = run::evaluate(&pts, &t, *seed)?;
            if cli.json {
                print_json(&ev);
            } else {
                print!("{}", ev.table());
            }
        }
        Command::SuggestSigmas { data, sigma_min, steps_per_level, n } => {
            if !(sigma_min.is_finite() && *sigma_min > 0.0) || *steps_per_level == 0 || *n < 2 {
                anyhow::bail!("--sigma-min must be > 0, --steps-per-level ≥ 1 and --n ≥ 2");
            }
            let ds = scoregen::data::load(data, *n, &mut scoregen::rng::Rng::new(0, 1))?;
            let dmax = scoregen::sde::ladder::max_pairwise_distance(&ds.points);
            let s = scoregen::sde::ladder::suggest(dmax, ds.points.d, *sigma_min, *steps_per_level);
            if cli.json {
                print_json(&s);
            } else {
                println!("{}", s.explain());
            }
        }
        Command::Demo { which, out } => match which.as_str() {
            "langevin" => {
                let d = scoregen::demo::langevin(out, cli.quiet)?;
                if cli.json {
                    print_json(&d);
                } else {
                    println!(
                        "Langevin dynamics on gmm8 (exact score): {}/{} modes covered, weights {:.3}–{:.3}\nwrote {} and {}",
                        d.modes.covered,
                        d.modes.n_modes,
                        d.modes.weights.iter().cloned().fold(f64::INFINITY, f64::min),
                        d.modes.weights.iter().cloned().fold(0.0, f64::max),
                        d.gif.display(),
                        d.final_png.display()
                    );
                }
            }
            "pitfall" => {
                let d = scoregen::demo::pitfall(out, cli.quiet)?;
                if cli.json {
                    print_json(&d);
                } else {
                    println!(
                        "weight of the 0.8 mode of `unbalanced`, exact scores, {} score evaluations each:",
                        d.langevin_steps
                    );
                    println!("  true                    {:.3}", d.true_weight);
                    println!("  Langevin                {:.3}", d.langevin_weight);
                    println!("  annealed Langevin       {:.3}", d.annealed_weight);
                    println!("wrote {}", d.png.display());
                }
            }
            other => anyhow::bail!("unknown demo `{other}`: expected langevin or pitfall"),
        },
        Command::Quickstart { out, set } => {
            let s = run::quickstart(out, set, cli.quiet)?;
            if cli.json {
                print_json(&s);
            } else {
                println!(
                    "scoregen quickstart: gmm8, VE SDE, {} training steps in {:.1} s ({:.0} steps/s), final loss {:.4}",
                    s.steps, s.train_seconds, s.steps_per_sec, s.final_loss
                );
                println!(
                    "sampled {} points, {} score evaluations, {:.2} s\n",
                    s.sample.n, s.sample.nfe, s.sample.seconds
                );
                print!("{}", s.evaluation.table());
                println!(
                    "\nwrote {}: samples.npy, samples.png, loss.png, metrics.json, checkpoints/",
                    s.out_dir.display()
                );
            }
        }
    }
    Ok(())
}
