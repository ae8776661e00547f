//! `scoregen`: the command-line shell over the library. It parses
//! arguments, calls the library and prints; nothing else lives here.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use scoregen::app::commands::classify::Expected;
use scoregen::app::commands::eval::Target;
use scoregen::app::commands::inpaint::InpaintRequest;
use scoregen::app::commands::likelihood::LikelihoodRequest;
use scoregen::app::commands::sample::ClassGuidance;
use scoregen::app::commands::sample::SampleRequest;
use scoregen::app::config::RunConfig;
use scoregen::data::npy;
use scoregen::guidance::MaskSpec;
use scoregen::likelihood::{ProbeNoise, TraceEstimator};
use scoregen::samplers::{CorrectorKind, SamplerKind};
use scoregen::train::TrainOptions;
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
    /// Train a score model from a TOML config; ends by writing the run report RUN/report.html.
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
        /// On a non-finite loss or gradient, name the first non-finite tensor among the batch, the score
        /// network's inputs and outputs, the gradients and the updated parameters (checked every step).
        #[arg(long)]
        detect_anomaly: bool,
        /// Skip the run report (RUN/report.html) written after training.
        #[arg(long)]
        no_report: bool,
    },
    /// Sample a trained run: reverse-SDE predictors, predictor–corrector, the probability-flow ODE, or the Langevin family.
    #[command(
        after_help = "Examples:\n  scoregen sample --run runs/gmm8-ve --n 5000 --steps 500 --out samples.npy\n  scoregen sample --run runs/gmm8-ve --sampler pc --corrector langevin --snr 0.16\n  scoregen sample --run runs/gmm8-ve --sampler ode --rtol 1e-5 --atol 1e-5\n  scoregen sample --run runs/ncsn-gmm8 --sampler annealed-langevin --eps 2.5e-4 --steps-per-level 100\n  scoregen sample --run runs/sliced-energy-gmm8 --sampler langevin --eps 0.005 --steps 1000"
    )]
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
        /// Output .npy (default: RUN/samples/samples.npy); a PNG is written beside it for 2-D data (a scatter) and images (a grid; the .npy is then [N, C, H, W]).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sample with the raw weights instead of the EMA weights.
        #[arg(long)]
        no_ema: bool,
        /// Sampler: em, reverse-diffusion, ancestral, pc, ode, langevin, mala, annealed-langevin,
        /// ddpm, ddim, dpmpp-2m, heun
        /// (default: the config's sampling.sampler).
        #[arg(long)]
        sampler: Option<SamplerKind>,
        /// Corrector before each predictor step: langevin, ald, none (default: langevin for pc, none otherwise).
        #[arg(long)]
        corrector: Option<CorrectorKind>,
        /// Signal-to-noise ratio of the Langevin correctors.
        #[arg(long)]
        snr: Option<f64>,
        /// Relative tolerance of the ODE sampler (RK45).
        #[arg(long)]
        rtol: Option<f64>,
        /// Absolute tolerance of the ODE sampler (RK45).
        #[arg(long)]
        atol: Option<f64>,
        /// Langevin step size ε (annealed: the step at the smallest noise level).
        #[arg(long)]
        eps: Option<f64>,
        /// Annealed Langevin: steps per noise level T.
        #[arg(long)]
        steps_per_level: Option<usize>,
        /// DDIM: stochasticity η ∈ [0, 1].
        #[arg(long)]
        eta: Option<f64>,
        /// Also write OUT.gif: about 40 frames of the reverse process (image grids, or points for 2-D data).
        #[arg(long)]
        gif: bool,
        /// Heun: EDM's S_churn (0: deterministic).
        #[arg(long)]
        churn: Option<f64>,
        /// Generate class K: classifier-free guidance of a class-conditional run (model.classes),
        /// or classifier guidance with --classifier.
        #[arg(long, value_name = "K")]
        class: Option<usize>,
        /// Guidance strength w: (1 + w)·s(x,t,y) − w·s(x,t) without a classifier,
        /// s(x,t) + w·∇ₓ log p_t(y|x) with one.
        #[arg(long, value_name = "W", default_value_t = 1.0, requires = "class")]
        guidance: f64,
        /// A noise-aware classifier (from `train-classifier --noisy --run RUN`) for classifier guidance.
        #[arg(long, value_name = "DIR", requires = "class")]
        classifier: Option<PathBuf>,
    },
    /// Fill in the unknown part of observations (inpainting, imputation): the known coordinates are held
    /// to the observation perturbed to each step's noise level while the rest follows the reverse SDE.
    #[command(
        after_help = "Masks: half (images: top half known; points: first half of the coordinates known), box (a centred box\nmissing), random:P (a fraction P missing), or FILE (.npy of 0/1 or a PNG, 1/white = known).\n\nExamples:\n  scoregen inpaint --run runs/digits-vp --input digits.npy --mask half --per-input 4\n  scoregen inpaint --run runs/digits-vp --input seven.png --mask box\n  scoregen inpaint --run runs/gmm8-vp --input points.npy --mask half --out imputed.npy"
    )]
    Inpaint {
        #[arg(long)]
        run: PathBuf,
        /// Observations: held-out[:N] (the run's held-out images; their labels are written beside the output),
        /// .npy [N, D] or [N, C, H, W] in data space, or a PNG image (pixels).
        #[arg(long)]
        input: PathBuf,
        /// Which coordinates are known: half, box, random:P, or a FILE (.npy/.png).
        #[arg(long)]
        mask: String,
        /// Completions per observation.
        #[arg(long, default_value_t = 1)]
        per_input: usize,
        /// Sampler: em, reverse-diffusion, ancestral, pc, annealed-langevin (default: the run's if one of these, else pc).
        #[arg(long)]
        sampler: Option<SamplerKind>,
        /// Reverse-SDE steps (default: the config's sampling.steps).
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output .npy (default: RUN/samples/inpainted.npy); a PNG beside it (images: rows of masked input and completions).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Use the raw weights instead of the EMA weights.
        #[arg(long)]
        no_ema: bool,
    },
    /// Classify samples with a classifier from `train-classifier`: the class histogram and the fraction
    /// that is the expected class.
    #[command(
        after_help = "Examples:\n  scoregen classify --classifier runs/digits-classifier --samples s.npy --class 3\n  scoregen inpaint --run runs/digits-vp --input held-out:100 --mask half --out in.npy\n  scoregen classify --classifier runs/digits-classifier --samples in.npy --labels in.labels.npy"
    )]
    Classify {
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
    /// Exact log-likelihood (nats and bits/dim) of data under a trained run, via the probability-flow ODE.
    #[command(
        after_help = "Examples:\n  scoregen likelihood --run runs/gmm8-ve --data gmm8 --n 500\n  scoregen likelihood --run runs/digits-vp --data digits --n 100 --dequantize   (held-out digits, 17 levels over [−1, 1])\n  scoregen likelihood --run runs/img --data test.npy --trace hutchinson --probes 4 --dequantize --levels 256 --data-range -1,1\n\nbits/dim = −log p(x)/(D ln 2); with --dequantize the offset log₂(levels) − log₂(hi − lo) is added (8 for [0,1], 7 for [−1,1] at 256 levels): see docs/guide.md."
    )]
    Likelihood {
        #[arg(long)]
        run: PathBuf,
        /// A .npy file [N, D] or a data-set name (fresh held-out points are drawn).
        #[arg(long)]
        data: String,
        /// Points to draw from a named data set.
        #[arg(long, default_value_t = 500)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Divergence: exact (default for D ≤ 16) or hutchinson.
        #[arg(long)]
        trace: Option<String>,
        /// Hutchinson probes per evaluation.
        #[arg(long, default_value_t = 1)]
        probes: usize,
        /// Hutchinson probe distribution: rademacher or gaussian.
        #[arg(long, default_value = "rademacher")]
        noise: String,
        #[arg(long, default_value_t = 1e-5)]
        rtol: f64,
        #[arg(long, default_value_t = 1e-5)]
        atol: f64,
        /// Uniformly dequantize data on a grid lo + (hi − lo)·k/(levels − 1) and report discrete bits/dim.
        #[arg(long)]
        dequantize: bool,
        /// Levels L of the grid (default: the run's image data, 17 for digits and 256 for 8-bit images; else 256).
        #[arg(long)]
        levels: Option<u32>,
        /// The data range lo,hi of the quantized grid (default: the run's pixel scale, [−1, 1] or [0, 1]; else 0,1).
        #[arg(long, value_name = "LO,HI")]
        data_range: Option<String>,
        #[arg(long)]
        no_ema: bool,
    },
    /// Compare a sample file with a target: a mixture (gmm8, gmm25, unbalanced, SPEC.toml) or a reference .npy.
    #[command(
        after_help = "Examples:\n  scoregen eval --samples runs/quickstart/samples.npy --target gmm8\n  scoregen eval --samples runs/digits-vp/samples/samples.npy --target digits --classifier classifiers/digits"
    )]
    Eval {
        #[arg(long)]
        samples: PathBuf,
        /// A mixture (gmm8, gmm25, unbalanced, SPEC.toml), a reference .npy, or an image source
        /// (digits, mnist5k, fashion-mnist, IDX, PNG folder: judged by a classifier).
        #[arg(long)]
        target: String,
        /// Classifier for image targets (default: classifiers/TARGET), made by `scoregen train-classifier`.
        #[arg(long)]
        classifier: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train the classifier behind the image metrics (Fréchet distance, class histogram) or,
    /// with --noisy, a noise-aware classifier p_t(y | x) for classifier guidance.
    #[command(
        after_help = "Examples:\n  scoregen train-classifier --data digits --out classifiers/digits\n  scoregen train-classifier --data mnist5k --steps 3000 --out classifiers/mnist5k\n  scoregen train-classifier --run runs/digits-vp --noisy --out runs/digits-vp/classifier"
    )]
    TrainClassifier {
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
        #[arg(long, default_value_t = 32)]
        width: usize,
        #[arg(long, default_value_t = 1500)]
        steps: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// The seed's figures on exact scores: langevin, pitfall, forward-reverse.
    #[command(
        after_help = "Examples:\n  scoregen demo langevin --out runs/demo\n  scoregen demo pitfall --out runs/demo\n  scoregen demo forward-reverse --out runs/demo"
    )]
    Demo {
        #[command(subcommand)]
        which: Demo,
    },
    /// What scoregen knows: data sets, SDEs, models, objectives, samplers, with one line each.
    #[command(after_help = "Examples:\n  scoregen list\n  scoregen --json list")]
    List,
    /// Benchmarks: `samplers` (quality against NFE for every sampler); `train`, `sample`, `likelihood`, `gemm` (speed; bench/run sets them beside PyTorch).
    #[command(
        after_help = "Examples:\n  scoregen bench samplers\n  scoregen bench samplers --target gmm25 --budgets 10,20,50\n  scoregen bench samplers --run runs/gmm8-vp --json"
    )]
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Write RUN/report.html: config, loss curve, metrics, samples, score field, density, reverse process.
    #[command(
        after_help = "Examples:\n  scoregen report --run runs/quickstart\n  scoregen report --run runs/gmm8-vp --json\n\nThe figures go to RUN/report/; the page links them by relative paths, so the folder can be moved or served as is."
    )]
    Report {
        #[arg(long)]
        run: PathBuf,
    },
    /// Train on gmm8 with the VE SDE, sample 2,000 points, evaluate, draw them and write the report (about a minute).
    #[command(
        after_help = "Examples:\n  scoregen quickstart\n  scoregen quickstart --out runs/qs --set training.steps=1000\n  scoregen --json quickstart"
    )]
    Quickstart {
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// The sampler leaderboard: EM, DDPM, DDIM, DPM-Solver++(2M) and EDM Heun at several NFE budgets,
    /// judged against the exact mixture (oracle score by default, or a trained run's model).
    Samplers {
        /// Mixture to judge against (gmm8, gmm25, unbalanced, SPEC.toml); default: the run's data, else gmm8.
        #[arg(long)]
        target: Option<String>,
        /// A trained run to benchmark instead of the exact oracle score.
        #[arg(long)]
        run: Option<PathBuf>,
        /// NFE budgets, comma-separated.
        #[arg(long, default_value = "10,20,50,100,1000", value_name = "N,N,…")]
        budgets: String,
        /// Samples per sampler and budget.
        #[arg(long, default_value_t = 2000)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where the plot (energy distance against NFE) goes.
        #[arg(long, default_value = "runs/bench/samplers.png")]
        plot: PathBuf,
    },
    /// Speed: median ms of one training step (forward, backward, clip, Adam, EMA), as bench/run compares with PyTorch.
    Train {
        /// mlp (configs/gmm8-vp.toml) or unet (configs/digits-vp.toml on random SIDE×SIDE images).
        #[arg(long, default_value = "mlp")]
        model: String,
        /// Hidden width of the MLP.
        #[arg(long, default_value_t = 128)]
        width: usize,
        /// Image side of the U-Net case.
        #[arg(long, default_value_t = 28)]
        side: usize,
        #[arg(long, default_value_t = 512)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 30)]
        reps: usize,
    },
    /// Speed: sampling the gmm8-vp MLP (untrained) with Euler–Maruyama or the probability-flow ODE (Heun).
    Sample {
        /// em or ode.
        #[arg(long, default_value = "em")]
        sampler: String,
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        #[arg(long, default_value_t = 1000)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Speed: exact ODE log-likelihood (Heun steps, exact divergence) of N points under the gmm8-vp MLP.
    Likelihood {
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 100)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Speed: this machine's f32 GEMM rate through candle (N×N by N×N).
    Gemm {
        #[arg(long, default_value_t = 1024)]
        n: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
}

#[derive(Subcommand)]
enum Demo {
    /// langevin.gif: particles under Langevin dynamics with the exact score of gmm8.
    Langevin {
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
    /// pitfall.png: the score error of a noise-free model, and plain vs annealed Langevin on `unbalanced`.
    Pitfall {
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
    /// forward_reverse.png: forward-SDE paths data → noise and reverse-SDE paths noise → data over p_t, for a 1-D mixture.
    ForwardReverse {
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
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
        Command::Train { config, out, set, resume, detect_anomaly, no_report } => {
            let cfg = RunConfig::load(config, set)?;
            let dir = out.clone().unwrap_or_else(|| Path::new("runs").join(&cfg.name));
            let opts =
                TrainOptions { resume: *resume, quiet: cli.quiet, stop_after: None, detect_anomaly: *detect_anomaly };
            let outcome = scoregen::app::commands::train::train(&cfg, &dir, &opts)
                .with_context(|| format!("training {}", dir.display()))?;
            let report = if *no_report {
                None
            } else {
                Some(
                    scoregen::app::commands::report::write_report(&dir, cli.quiet)
                        .with_context(|| format!("report of {}", dir.display()))?,
                )
            };
            if cli.json {
                print_json(&serde_json::json!({
                    "run": dir, "step": outcome.step, "final_loss": outcome.final_loss,
                    "seconds": outcome.seconds, "steps_per_sec": outcome.steps_per_sec, "checkpoint": outcome.checkpoint,
                    "report": report.map(|r| r.html)}));
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
                if let Some(r) = report {
                    println!("report: {}", r.html.display());
                }
            }
        }
        Command::Report { run } => {
            let r = scoregen::app::commands::report::write_report(run, cli.quiet)
                .with_context(|| format!("report of run {}", run.display()))?;
            if cli.json {
                print_json(&r);
            } else {
                println!("wrote {} ({} figures in {:.1} s)", r.html.display(), r.figures.len(), r.seconds);
                for s in &r.skipped {
                    println!("  not shown: {s}");
                }
            }
        }
        Command::Sample {
            run,
            n,
            steps,
            seed,
            out,
            no_ema,
            sampler,
            corrector,
            snr,
            rtol,
            atol,
            eps,
            steps_per_level,
            eta,
            churn,
            class,
            guidance,
            classifier,
            gif,
        } => {
            let cfg = RunConfig::load(&run.join("config.toml"), &[])
                .with_context(|| format!("reading run {}", run.display()))?;
            let req = SampleRequest {
                n: n.unwrap_or(cfg.sampling.n),
                steps: steps.unwrap_or(cfg.sampling.steps),
                seed: *seed,
                out: out.clone().unwrap_or_else(|| run.join("samples").join("samples.npy")),
                use_ema: !no_ema && cfg.sampling.use_ema,
                quiet: cli.quiet,
                step_size: *eps,
                steps_per_level: *steps_per_level,
                record_every: None,
            };
            let record_every = gif.then(|| (req.steps / 40).max(1));
            let req = SampleRequest { record_every, ..req };
            if eps.is_some_and(|e| !(e > 0.0 && e.is_finite())) || *steps_per_level == Some(0) {
                anyhow::bail!("--eps must be > 0 and --steps-per-level ≥ 1");
            }
            if req.n == 0 || req.steps == 0 {
                anyhow::bail!("--n and --steps must be ≥ 1");
            }
            let mut sc = cfg.sampling.clone();
            if let Some(v) = sampler {
                sc.sampler = *v;
            }
            if let Some(v) = corrector {
                sc.corrector = Some(*v);
            }
            sc.snr = snr.unwrap_or(sc.snr);
            sc.rtol = rtol.unwrap_or(sc.rtol);
            sc.atol = atol.unwrap_or(sc.atol);
            sc.eta = eta.unwrap_or(sc.eta);
            sc.s_churn = churn.unwrap_or(sc.s_churn);
            sc.validate("command line")?;
            let steer = class.map(|class| ClassGuidance { class, scale: *guidance, classifier: classifier.clone() });
            let o = scoregen::app::commands::sample::sample_run_guided(run, &req, Some(sc.spec()), steer.as_ref())?;
            if cli.json {
                print_json(&o);
            } else {
                println!("{} samples ({} score evaluations) in {:.2} s → {}", o.n, o.nfe, o.seconds, o.npy.display());
                if let Some(p) = &o.png {
                    println!("picture (scatter or image grid) → {}", p.display());
                }
                if let Some(g) = &o.gif {
                    println!("reverse process (animation) → {}", g.display());
                }
            }
        }
        Command::Likelihood {
            run,
            data,
            n,
            seed,
            trace,
            probes,
            noise,
            rtol,
            atol,
            dequantize,
            levels,
            data_range,
            no_ema,
        } => {
            let trace = match trace.as_deref() {
                None => None,
                Some("exact") => Some(TraceEstimator::Exact),
                Some("hutchinson") => Some(TraceEstimator::Hutchinson {
                    probes: (*probes).max(1),
                    noise: match noise.as_str() {
                        "rademacher" => ProbeNoise::Rademacher,
                        "gaussian" => ProbeNoise::Gaussian,
                        other => anyhow::bail!("--noise: expected rademacher or gaussian, found `{other}`"),
                    },
                }),
                Some(other) => {
                    anyhow::bail!("--trace: expected exact or hutchinson, found `{other}`")
                }
            };
            let dequantize = if *dequantize {
                let range = match data_range {
                    Some(r) => Some(
                        r.split_once(',')
                            .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
                            .with_context(|| format!("--data-range: expected LO,HI, found `{r}`"))?,
                    ),
                    None => None,
                };
                Some(scoregen::app::commands::likelihood::dequantization_for(run, *levels, range)?)
            } else {
                None
            };
            if !(*rtol > 0.0 && *atol > 0.0) {
                anyhow::bail!("--rtol and --atol must be > 0");
            }
            let req = LikelihoodRequest {
                data: data.clone(),
                n: *n,
                seed: *seed,
                trace,
                rtol: *rtol,
                atol: *atol,
                dequantize,
                use_ema: !no_ema,
                quiet: cli.quiet,
            };
            let r = scoregen::app::commands::likelihood::likelihood_of_run(run, &req)
                .with_context(|| format!("likelihood of `{data}` under run {}", run.display()))?;
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "{} points, D = {}: log p = {:.4} ± {:.4} nats, {:.4} bits/dim (offset {}), {} score evaluations ({:?}), {:.2} s",
                    r.n, r.dim, r.mean_nats, r.stderr_nats, r.mean_bits_per_dim, r.bpd_offset, r.nfe, r.trace, r.seconds
                );
                if let (Some(o), Some(g), Some(a)) = (r.oracle_mean_nats, r.gap_nats, r.mean_abs_gap_nats) {
                    println!("exact log p₀ = {o:.4} nats: gap (model − exact) {g:+.4} nats, mean |gap| {a:.4} nats");
                }
            }
        }
        Command::Inpaint { run, input, mask, per_input, sampler, steps, seed, out, no_ema } => {
            if *per_input == 0 || *steps == Some(0) {
                anyhow::bail!("--per-input and --steps must be ≥ 1");
            }
            let req = InpaintRequest {
                input: input.clone(),
                mask: MaskSpec::parse(mask)?,
                per_input: *per_input,
                sampler: *sampler,
                steps: *steps,
                seed: *seed,
                out: out.clone().unwrap_or_else(|| run.join("samples").join("inpainted.npy")),
                use_ema: !no_ema,
                quiet: cli.quiet,
            };
            let o = scoregen::app::commands::inpaint::inpaint_run(run, &req)
                .with_context(|| format!("inpainting {} with run {}", input.display(), run.display()))?;
            if cli.json {
                print_json(&o);
            } else {
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
            }
        }
        Command::Classify { classifier, samples, class, labels } => {
            let expected = match (class, labels) {
                (Some(k), _) => Some(Expected::Class(*k)),
                (None, Some(p)) => Some(Expected::Labels(p.clone())),
                (None, None) => None,
            };
            let c = scoregen::app::commands::classify::classify(classifier, samples, expected)?;
            if cli.json {
                print_json(&c);
            } else {
                let h: Vec<String> = c.histogram.iter().enumerate().map(|(k, f)| format!("{k}: {f:.3}")).collect();
                println!("{} samples, predicted classes {}", c.n, h.join("  "));
                if let Some(a) = c.accuracy {
                    println!("fraction classified as expected: {a:.3}");
                }
            }
        }
        Command::Eval { samples, target, classifier, seed } => {
            let pts = npy::read_points(samples)?;
            if scoregen::data::is_image_source(target) {
                let dir = classifier.clone().unwrap_or_else(|| Path::new("classifiers").join(target));
                let report = scoregen::app::commands::classify::evaluate_images(&pts, &dir)
                    .with_context(|| format!("image metrics of {} against `{target}`", samples.display()))?;
                if cli.json {
                    print_json(&report);
                } else {
                    print!("{}", report.table());
                }
                return Ok(());
            }
            let t = Target::parse(target)?;
            let ev = scoregen::app::commands::eval::evaluate(&pts, &t, *seed)?;
            if cli.json {
                print_json(&ev);
            } else {
                print!("{}", ev.table());
            }
        }
        Command::TrainClassifier { data, run: run_dir, noisy, out, width, steps, batch_size, lr, seed } => {
            let config = match run_dir {
                Some(dir) => Some(RunConfig::load(&dir.join("config.toml"), &[])?),
                None => None,
            };
            let out = match (out, run_dir, data) {
                (Some(o), _, _) => o.clone(),
                (None, Some(r), _) if *noisy => r.join("classifier-noisy"),
                (None, _, Some(d)) => Path::new("classifiers").join(d),
                (None, Some(_), None) => {
                    Path::new("classifiers").join(config.as_ref().map_or("run", |c| c.data.source.as_str()))
                }
                (None, None, None) => anyhow::bail!("give --data NAME or --run DIR"),
            };
            let req = scoregen::app::commands::classify::ClassifierRequest {
                data: data.clone(),
                config,
                noisy: *noisy,
                out,
                width: *width,
                steps: *steps,
                batch_size: *batch_size,
                lr: *lr,
                seed: *seed,
                quiet: cli.quiet,
            };
            let o = scoregen::app::commands::classify::train_classifier(&req).context("training the classifier")?;
            if cli.json {
                print_json(&o);
            } else {
                println!(
                    "classifier for `{}` ({} training, {} held-out images): held-out accuracy {:.4}{}, {} steps in {:.1} s → {}",
                    o.meta.data,
                    o.train_images,
                    o.test_images,
                    o.meta.test_accuracy,
                    if *noisy { " at t = t_eps" } else { "" },
                    o.meta.steps,
                    o.seconds,
                    o.dir.display()
                );
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
        Command::Demo { which } => match which {
            Demo::Langevin { out } => {
                let d = scoregen::app::commands::demo::langevin(out, cli.quiet)?;
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
            Demo::Pitfall { out } => {
                let d = scoregen::app::commands::demo::pitfall(out, cli.quiet)?;
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
            Demo::ForwardReverse { out, seed } => {
                let p = scoregen::app::commands::demo::forward_reverse(out, *seed)?;
                if cli.json {
                    print_json(&serde_json::json!({ "figure": p }));
                } else {
                    println!("wrote {}", p.display());
                }
            }
        },
        Command::List => {
            let catalogue = scoregen::app::commands::list::catalogue();
            if cli.json {
                print_json(&catalogue);
            } else {
                for (section, entries) in &catalogue {
                    println!("{section}:");
                    let w = entries.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
                    for (name, what) in entries {
                        println!("  {name:<w$}  {what}");
                    }
                }
            }
        }
        Command::Bench { which: Bench::Samplers { target, run: run_dir, budgets, n, seed, plot } } => {
            let budgets = budgets
                .split(',')
                .map(|b| b.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .with_context(|| format!("--budgets: expected comma-separated integers, found `{budgets}`"))?;
            let req = scoregen::app::commands::leaderboard::BenchRequest {
                target: target.clone(),
                run: run_dir.clone(),
                budgets,
                n: *n,
                seed: *seed,
                quiet: cli.quiet,
            };
            let lb = scoregen::app::commands::leaderboard::bench_samplers(&req)?;
            if let Some(dir) = plot.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            lb.plot(plot).map_err(|e| anyhow::anyhow!("{e}"))?;
            if cli.json {
                print_json(&serde_json::json!({ "leaderboard": lb, "plot": plot }));
            } else {
                print!("{}", lb.table());
                println!("\nplot → {}", plot.display());
            }
        }
        Command::Bench { which } => {
            let timing = match which {
                Bench::Samplers { .. } => unreachable!("handled above"),
                Bench::Train { model, width, side, batch, warmup, reps } => {
                    let (cfg, case) = match model.as_str() {
                        "mlp" => (
                            scoregen::app::commands::bench::mlp_config(*width, *batch)?,
                            format!("train mlp W={width} B={batch}"),
                        ),
                        "unet" => (
                            scoregen::app::commands::bench::unet_config(*side, *batch)?,
                            format!("train unet {side}x{side} B={batch}"),
                        ),
                        other => anyhow::bail!("--model: expected mlp or unet, found `{other}`"),
                    };
                    scoregen::app::commands::bench::train_step(&cfg, &case, *warmup, *reps)?
                }
                Bench::Sample { sampler, n, steps, reps } => {
                    let which = match sampler.as_str() {
                        "em" => scoregen::app::commands::bench::SampleCase::EulerMaruyama,
                        "ode" => scoregen::app::commands::bench::SampleCase::FlowHeun,
                        other => anyhow::bail!("--sampler: expected em or ode, found `{other}`"),
                    };
                    scoregen::app::commands::bench::sample(
                        &scoregen::app::commands::bench::mlp_config(128, 512)?,
                        which,
                        *n,
                        *steps,
                        *reps,
                    )?
                }
                Bench::Likelihood { n, steps, reps } => scoregen::app::commands::bench::likelihood(
                    &scoregen::app::commands::bench::mlp_config(128, 512)?,
                    *n,
                    *steps,
                    *reps,
                )?,
                Bench::Gemm { n, reps } => scoregen::app::commands::bench::gemm_peak(*n, *reps)?,
            };
            if cli.json {
                print_json(&timing);
            } else {
                let gflops =
                    timing.gflop.map(|g| format!(", {:.1} GFLOP/s", g / (timing.median_ms / 1e3))).unwrap_or_default();
                println!(
                    "{}: {:.3} ms median of {}, {:.0} items/s{gflops}, peak RSS {:.0} MiB",
                    timing.case,
                    timing.median_ms,
                    timing.reps_ms.len(),
                    timing.items_per_s,
                    timing.peak_rss_mib
                );
            }
        }
        Command::Quickstart { out, set } => {
            let s = scoregen::app::commands::quickstart::quickstart(out, set, cli.quiet)?;
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
                    "\nwrote {}: samples.npy, samples.png, loss.png, metrics.json, checkpoints/\nreport: {}",
                    s.out_dir.display(),
                    s.report.display()
                );
            }
        }
    }
    Ok(())
}
