//! `scoregen quickstart`: the whole path on `gmm8` (train, sample, evaluate, report).

use super::eval::{evaluate, Evaluation, Target};
use super::sample::{sample_run, SampleOutcome, SampleRequest};
use crate::app::config::RunConfig;
use crate::app::figures::loss_plot;
use crate::app::run_dir::oracle_of;
use crate::error::Result;
use crate::io::{fs, npy};
use crate::train::{ExistingRun, TrainOptions, TrainOutcome};
use serde::Serialize;
use std::path::{Path, PathBuf};
/// The quickstart experiment: VE SDE on `gmm8`, tuned to train in well under a minute.
pub const QUICKSTART_CONFIG: &str = include_str!("../../../../../configs/gmm8-ve.toml");

/// What the quickstart did and where it put it.
#[derive(Debug, Clone, Serialize)]
pub struct QuickstartSummary {
    pub out_dir: PathBuf,
    pub train_seconds: f64,
    pub steps: usize,
    pub steps_per_sec: f64,
    pub final_loss: f64,
    pub sample: SampleOutcome,
    pub evaluation: Evaluation,
    /// The run report, `report.html`.
    pub report: PathBuf,
}

/// Trains the quickstart config, samples 2,000 points, evaluates them against
/// the exact mixture and writes `samples.npy`, `samples.png`, `loss.png`, `metrics.json`
/// and the run report `report.html` (figures in `report/`). Everything runs on
/// `run.device` (`--set run.device=cuda`; the CPU by default). `existing` says
/// what to do with a run already in `out_dir` (the CLI replaces its own
/// default folder, `runs/quickstart`, and refuses elsewhere unless `--overwrite`).
pub fn quickstart(
    out_dir: &Path,
    overrides: &[String],
    quiet: bool,
    existing: ExistingRun,
) -> Result<QuickstartSummary> {
    let cfg = RunConfig::parse(QUICKSTART_CONFIG, "configs/gmm8-ve.toml (built in)", overrides)?;
    let device = cfg.run.device.open()?;
    let trained: TrainOutcome =
        super::train::train(&cfg, out_dir, &TrainOptions { quiet, existing, ..Default::default() })?;
    let req = SampleRequest {
        n: cfg.sampling.n,
        steps: cfg.sampling.steps,
        step_size: None,
        steps_per_level: None,
        record_every: None,
        seed: cfg.seed,
        out: out_dir.join("samples.npy"),
        overwrite: true,
        use_ema: cfg.sampling.use_ema,
        quiet,
        device: device.clone(),
        x_init: None,
    };
    let sample = sample_run(out_dir, &req)?;
    loss_plot(out_dir, &out_dir.join("loss.png"))?;
    let pts = npy::read_points(&sample.npy)?;
    let target = Target::Mixture(oracle_of(&cfg)?.expect("gmm8 is a mixture"));
    let evaluation = evaluate(&pts, &target, cfg.seed)?;
    let mut summary = QuickstartSummary {
        out_dir: out_dir.to_path_buf(),
        train_seconds: trained.seconds,
        steps: trained.step,
        steps_per_sec: trained.steps_per_sec,
        final_loss: trained.final_loss,
        sample,
        evaluation,
        report: out_dir.join("report.html"),
    };
    fs::write_atomic(
        &out_dir.join("metrics.json"),
        serde_json::to_string_pretty(&summary).expect("serializes").as_bytes(),
    )?;
    summary.report = super::report::write_report(out_dir, quiet, &device)?.html;
    Ok(summary)
}
