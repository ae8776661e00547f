//! Training: Adam on a score-matching objective, EMA of the weights,
//! `metrics.jsonl` logging and crash-safe checkpoints with exact resume.

pub mod adam;
pub mod anomaly;
pub mod checkpoint;
pub mod classifier;
pub mod ema;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(all(feature = "mpi", feature = "nccl"))]
pub mod nccl;
pub mod parallel;

pub use adam::Adam;
pub use checkpoint::{Checkpoint, TrainState};
pub use ema::Ema;
pub use parallel::{Collective, DataParallel, Local};

use crate::nets::{self, Model};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use scoregen_core::data::Dataset;
use scoregen_core::error::{Error, Result};
use scoregen_core::host;
use scoregen_core::io::fs;
use scoregen_core::objectives::Objective;
use scoregen_core::rng::{streams, Rng};
use scoregen_core::score::ScoreFn;
use scoregen_core::sde::Sde;
use scoregen_core::{autodiff, progress};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest checkpoint in the run directory.
    pub resume: bool,
    pub quiet: bool,
    /// Stop (with a checkpoint) after this global step, as if interrupted.
    pub stop_after: Option<usize>,
    /// Check every step's batch, score calls, gradients and updated parameters
    /// for non-finite values and name the first (see [`anomaly`]); slower.
    pub detect_anomaly: bool,
    /// What to do when the folder already holds a run and `resume` is off.
    pub existing: ExistingRun,
    /// In a data-parallel run, compare a hash of every process's parameters,
    /// Adam moments and EMA every K steps (and once at the start or resume); 0: only at the start.
    pub check_sync: usize,
    /// Called with every line written to `metrics.jsonl` (each `training.log_every`
    /// steps and the last); an error it returns stops training with that error
    /// (the newest checkpoint stays). The Python package's progress callback.
    pub on_log: Option<LogHook>,
}

/// What [`LogHook`] calls.
pub type LogFn = dyn Fn(&LogLine) -> Result<()> + Send + Sync;

/// A callback for each logged training line ([`TrainOptions::on_log`]).
#[derive(Clone)]
pub struct LogHook(pub std::sync::Arc<LogFn>);

impl std::fmt::Debug for LogHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHook(..)")
    }
}

/// What [`train`] does with a folder that already holds a run (its
/// `config.toml`, `metrics.jsonl` or `checkpoints/`) when not resuming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExistingRun {
    /// Refuse, naming the folder and the ways forward (the default).
    #[default]
    Refuse,
    /// Move the old run into `DIR.old-YYYYMMDD-HHMMSS` first (`--overwrite`).
    MoveAside,
    /// Delete the old run's checkpoints and log (the quickstart's own folder).
    Replace,
}

/// Fails if `run_dir` holds a run that `existing` does not allow replacing:
/// one line naming the folder, its newest checkpoint and the three ways forward.
pub fn check_existing(run_dir: &Path, existing: ExistingRun) -> Result<()> {
    if existing != ExistingRun::Refuse || !fs::holds_run(run_dir) {
        return Ok(());
    }
    let newest = checkpoint::list(&run_dir.join("checkpoints"))
        .last()
        .and_then(|p| p.file_name().map(|n| format!(" (newest checkpoint {})", n.to_string_lossy())))
        .unwrap_or_default();
    Err(Error::Invalid(format!(
        "{d} already holds a run{newest}; to continue it: --resume; to start over and move the old run to \
         {d}.old-<time>: --overwrite; to keep it: train into another --out",
        d = run_dir.display()
    )))
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub step: usize,
    pub final_loss: f64,
    pub seconds: f64,
    pub steps_per_sec: f64,
    pub checkpoint: PathBuf,
    /// Where an earlier run in the folder was moved ([`ExistingRun::MoveAside`]).
    pub moved_aside: Option<PathBuf>,
}

/// One logged line of `metrics.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub step: usize,
    /// Mean loss over the steps since the previous line.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub steps_per_sec: f64,
}

/// The training loop's settings (`[training]` in a run's config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    pub steps: usize,
    pub batch_size: usize,
    /// Adam learning rate (after warm-up).
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup: usize,
    /// Clip the global gradient norm to this value (0 disables).
    pub grad_clip: f64,
    /// EMA rate of the weights (0 disables).
    pub ema: f64,
    pub log_every: usize,
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// After warm-up: `constant`, or `cosine` decay to 0 at `steps`.
    #[serde(skip_serializing_if = "is_default")]
    pub lr_schedule: LrSchedule,
    /// Every K steps (and at the end) measure sample quality with the run's
    /// evaluator (image runs: FD, confidence and class entropy of a small sample
    /// set) and log it to `metrics.jsonl`; 0: never.
    #[serde(skip_serializing_if = "is_default")]
    pub eval_every: usize,
    /// Samples drawn for each evaluation.
    #[serde(skip_serializing_if = "is_default_eval_n")]
    pub eval_n: usize,
    /// The clean classifier behind the image evaluation (a `train-classifier`
    /// folder); empty: one is trained into `RUN/classifier/` at the start.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub eval_classifier: String,
    /// pytorch-fid's Inception-v3 weights (safetensors, `scripts/convert-inception.py`):
    /// each evaluation also reports `fid` and `is` (with `is_std`) in its features,
    /// against the training images (at most 10,000, embedded once at the start);
    /// empty: the classifier's metrics only.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub inception: String,
}

/// The learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    #[default]
    Constant,
    /// lr·½(1 + cos(π·p)), p = (step − warmup)/(steps − warmup) (Loshchilov & Hutter 2017).
    Cosine,
}

/// The default of `training.eval_n`.
pub const EVAL_N: usize = 256;

// Defaults are left out of the written config.toml, so older runs keep their
// config hash (and resume) after these fields were added.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn is_default_eval_n(v: &usize) -> bool {
    *v == EVAL_N
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: 4000,
            batch_size: 512,
            lr: 2e-3,
            warmup: 100,
            grad_clip: 1.0,
            ema: 0.999,
            log_every: 50,
            checkpoint_every: 1000,
            keep_checkpoints: 2,
            lr_schedule: LrSchedule::Constant,
            eval_every: 0,
            eval_n: EVAL_N,
            eval_classifier: String::new(),
            inception: String::new(),
        }
    }
}

impl TrainSettings {
    /// Learning rate at `step` (0-based): linear warm-up to `lr` over `warmup`
    /// steps, then constant or cosine decay ([`LrSchedule`]).
    pub fn learning_rate(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * ((step + 1) as f64 / self.warmup as f64);
        }
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let p = (step - self.warmup) as f64 / (self.steps.saturating_sub(self.warmup)).max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos())
            }
        }
    }
}

/// Builds a model's parameters into a `VarMap` (the same architecture each call).
pub type ModelBuilder = Box<dyn Fn(&VarMap) -> Result<Model>>;

/// Everything a [`Trainer`] is made of, built by the application layer from
/// a config: data, a fresh model, its objective and SDE, and the settings.
pub struct TrainSetup {
    pub dataset: Dataset,
    pub model: Model,
    pub varmap: VarMap,
    /// Builds the same model again into a new `VarMap` (for the EMA copy).
    pub rebuild: ModelBuilder,
    pub objective: Box<dyn Objective>,
    /// The SDE the model's time input refers to.
    pub sde: Arc<dyn Sde>,
    pub settings: TrainSettings,
    /// K for a class-conditional model (0: unconditional).
    pub classes: usize,
    /// Probability that a training label is replaced by the null label K.
    pub label_dropout: f64,
    /// Random horizontal flips of the training batches (`data.hflip`; images only).
    pub hflip: bool,
    pub seed: u64,
    /// Identifies the run's settings in checkpoints (a resume must match it).
    pub config_hash: String,
    /// The resolved config, written to `RUN/config.toml` by [`train`].
    pub config_toml: String,
    /// Where the model's parameters live; batches are copied there.
    pub device: Device,
}

/// A model in training: its parameters, optimizer, EMA and RNG streams.
pub struct Trainer {
    pub dataset: Dataset,
    pub model: Model,
    pub varmap: VarMap,
    rebuild: ModelBuilder,
    pub objective: Box<dyn Objective>,
    pub sde: Arc<dyn Sde>,
    pub settings: TrainSettings,
    pub classes: usize,
    pub label_dropout: f64,
    /// See [`TrainSetup::hflip`].
    pub hflip: bool,
    pub config_hash: String,
    pub config_toml: String,
    pub params: Vec<(String, Var)>,
    pub adam: Adam,
    pub ema: Ema,
    pub step: usize,
    pub batch_rng: Rng,
    pub noise_rng: Rng,
    pub last_loss: f64,
    /// See [`TrainOptions::detect_anomaly`].
    pub detect_anomaly: bool,
    /// Where the model's parameters live; batches are copied there.
    pub device: Device,
    /// The run's seed (the streams of data-parallel shards k ≥ 1 derive from it).
    pub seed: u64,
    /// The processes and shards of the global batch ([`parallel`]); one process, one shard by default.
    pub parallel: DataParallel,
    /// Set by a data-parallel step when some process was interrupted (Ctrl-C):
    /// every process stops after the same step.
    pub stop_requested: bool,
    /// Seconds spent in the all-reduce (copies, waiting for the slowest process, the sum).
    pub reduce_seconds: f64,
}

impl Trainer {
    /// A trainer over a fresh model (parameters as initialized in `setup`).
    pub fn new(setup: TrainSetup) -> Result<Self> {
        scoregen_core::init();
        if setup.hflip && setup.dataset.image_shape.is_none() {
            return Err(Error::Invalid(format!(
                "horizontal flips (data.hflip) need image data; `{}` is not an image set",
                setup.dataset.name
            )));
        }
        let params = nets::named_vars(&setup.varmap);
        Ok(Self {
            adam: Adam::new(&params)?,
            ema: Ema::new(setup.settings.ema, &params)?,
            dataset: setup.dataset,
            model: setup.model,
            varmap: setup.varmap,
            rebuild: setup.rebuild,
            objective: setup.objective,
            sde: setup.sde,
            settings: setup.settings,
            classes: setup.classes,
            label_dropout: setup.label_dropout,
            hflip: setup.hflip,
            config_hash: setup.config_hash,
            config_toml: setup.config_toml,
            params,
            step: 0,
            batch_rng: Rng::new(setup.seed, streams::BATCH),
            noise_rng: Rng::new(setup.seed, streams::NOISE),
            last_loss: f64::NAN,
            detect_anomaly: false,
            device: setup.device,
            seed: setup.seed,
            parallel: DataParallel::default(),
            stop_requested: false,
            reduce_seconds: 0.0,
        })
    }

    /// Spreads the global batch over `parallel` (checked against the batch size).
    pub fn set_parallel(&mut self, parallel: DataParallel) -> Result<()> {
        self.parallel = DataParallel::new(parallel.collective, parallel.shards, self.settings.batch_size)?;
        Ok(())
    }

    /// Whether this process writes the run's files (rank 0, or a single process).
    pub fn is_writer(&self) -> bool {
        self.parallel.collective.rank() == 0
    }

    /// A random minibatch of shard `k` (indices with replacement) as an f32
    /// tensor, with its labels for a class-conditional model (each replaced by
    /// the null label K with probability `model.label_dropout`). With
    /// `data.hflip`, rows are then mirrored by the step's own stream
    /// ([`streams::HFLIP`]), so the rows drawn are the same with flips or without.
    fn batch(&self, rng: &mut Rng, k_shard: usize, bs: usize) -> Result<(Tensor, Option<Tensor>)> {
        let pts = &self.dataset.points;
        let (k, dropout) = (self.classes, self.label_dropout);
        let mut v = Vec::with_capacity(bs * pts.d);
        let mut labels = Vec::with_capacity(if k > 0 { bs } else { 0 });
        for _ in 0..bs {
            let i = rng.below(pts.n);
            v.extend(pts.row(i).iter().map(|&x| x as f32));
            if let (true, Some(l)) = (k > 0, &self.dataset.labels) {
                labels.push(if rng.uniform() < dropout { k as u32 } else { l[i] as u32 });
            }
        }
        if let (true, Some(shape)) = (self.hflip, self.dataset.image_shape) {
            let mut flips = Rng::new(self.seed, streams::shard(streams::HFLIP, k_shard, self.step));
            scoregen_core::data::images::mirror_rows(&mut v, shape, &mut flips);
        }
        let labels = if k > 0 { Some(Tensor::from_vec(labels, bs, &self.device)?) } else { None };
        Ok((Tensor::from_vec(v, (bs, pts.d), &self.device)?, labels))
    }

    /// The batch shard `k` trains on at the current step (points and labels),
    /// leaving the trainer as it is: what [`Trainer::shard_gradient`] feeds the objective.
    pub fn shard_batch(&self, k: usize) -> Result<(Tensor, Option<Tensor>)> {
        let mut b = if k == 0 { self.batch_rng.clone() } else { parallel::shard_rngs(self.seed, k, self.step).0 };
        self.batch(&mut b, k, self.settings.batch_size / self.parallel.shards)
    }

    /// The loss of one shard and its parameter gradients; `Err(name)` names
    /// the first non-finite tensor when the loss is not finite.
    fn shard_gradients(
        &self,
        batch_rng: &mut Rng,
        noise_rng: &mut Rng,
        k: usize,
        bs: usize,
    ) -> Result<std::result::Result<(f64, Vec<Tensor>), String>> {
        let (x0, labels) = self.batch(batch_rng, k, bs)?;
        let labeled = labels.and_then(|l| self.model.score_labeled(self.sde.clone(), l));
        let score: Box<dyn ScoreFn + '_> = match labeled {
            Some(s) => Box::new(s),
            None => self.model.score(self.sde.clone()),
        };
        let watched = anomaly::Watched::new(score.as_ref());
        let score: &dyn ScoreFn = if self.detect_anomaly { &watched } else { score.as_ref() };
        let loss = self.objective.loss(score, &x0, noise_rng)?;
        let l = host::scalar::<f64>(&loss)?;
        if !l.is_finite() {
            return Ok(Err(watched.first().unwrap_or_else(|| "loss".into())));
        }
        Ok(Ok((l, Adam::gradients(&self.params, &autodiff::backward_first_order(&loss)?)?)))
    }

    /// Shard `k`'s loss and gradient at the current step (its B/S points and
    /// noise), leaving the trainer as it is: what one process contributes to
    /// a data-parallel step before the reduction. `Err(name)`: a non-finite loss.
    pub fn shard_gradient(&self, k: usize) -> Result<std::result::Result<(f64, Vec<Tensor>), String>> {
        let (mut b, mut n) = if k == 0 {
            (self.batch_rng.clone(), self.noise_rng.clone())
        } else {
            parallel::shard_rngs(self.seed, k, self.step)
        };
        self.shard_gradients(&mut b, &mut n, k, self.settings.batch_size / self.parallel.shards)
    }

    /// The mean loss and the mean gradient over the global batch: this
    /// process's shards, then (several processes) one all-reduce of the
    /// gradient sums with the loss sum, a non-finite count and the stop flag.
    /// `Err(name)`: a non-finite loss, named where this process saw it.
    fn global_gradients(&mut self) -> Result<std::result::Result<(f64, Vec<Tensor>), String>> {
        let par = self.parallel.clone();
        let shards = par.shards;
        let bs = self.settings.batch_size / shards;
        if shards == 1 && par.is_single() {
            // the single-process path of earlier versions, bit for bit
            let (mut b, mut n) = (self.batch_rng.clone(), self.noise_rng.clone());
            let out = self.shard_gradients(&mut b, &mut n, 0, bs)?;
            (self.batch_rng, self.noise_rng) = (b, n);
            return Ok(out);
        }
        let (mut loss_sum, mut sum, mut bad): (f64, Option<Vec<Tensor>>, Option<String>) = (0.0, None, None);
        for k in par.my_shards() {
            let (mut b, mut n) = if k == 0 {
                (self.batch_rng.clone(), self.noise_rng.clone())
            } else {
                parallel::shard_rngs(self.seed, k, self.step)
            };
            let mut out = self.shard_gradients(&mut b, &mut n, k, bs)?;
            if parallel::nan_injected(self.step + 1, par.collective.rank()) {
                out = Err("loss (injected by SCOREGEN_TEST_NAN_AT)".into());
            }
            if k == 0 {
                (self.batch_rng, self.noise_rng) = (b, n);
            }
            match out {
                Err(name) => {
                    bad = Some(if shards > 1 { format!("{name} (shard {k} of {shards})") } else { name });
                    break;
                }
                Ok((l, g)) => {
                    loss_sum += l;
                    sum = Some(match sum {
                        None => g,
                        Some(s) => s.iter().zip(&g).map(|(a, b)| a + b).collect::<candle_core::Result<_>>()?,
                    });
                }
            }
        }
        let mut grads = match sum {
            Some(s) if bad.is_none() => s,
            _ => self.params.iter().map(|(_, p)| p.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?,
        };
        let mut bad_count = usize::from(bad.is_some());
        if !par.is_single() {
            let interrupted = scoregen_core::progress::interrupted();
            let extra =
                Tensor::new(&[loss_sum as f32, bad_count as f32, f32::from(u8::from(interrupted))], &self.device)?;
            grads.push(extra);
            let began = Instant::now();
            let mut reduced = par.collective.all_reduce_sum(&grads)?;
            self.reduce_seconds += began.elapsed().as_secs_f64();
            let extra = host::vec1::<f64>(&reduced.pop().expect("the scalars were pushed"))?;
            grads = reduced;
            loss_sum = extra[0];
            bad_count = extra[1].round() as usize;
            self.stop_requested = extra[2] > 0.0;
        }
        if bad_count > 0 {
            let p = par.collective.size();
            return Ok(Err(bad.unwrap_or_else(|| format!("loss on {bad_count} other process(es) of {p}"))));
        }
        let inv = 1.0 / shards as f64;
        let mean = grads.iter().map(|g| g.affine(inv, 0.0)).collect::<candle_core::Result<_>>()?;
        Ok(Ok((loss_sum * inv, mean)))
    }

    /// One optimizer step. Returns the loss and the gradient norm. A non-finite
    /// loss or gradient leaves the parameters untouched and is an error naming
    /// the tensor: the loss, or the first parameter whose gradient is
    /// non-finite (with `detect_anomaly`, the earlier boundaries of [`anomaly`]).
    pub fn train_step(&mut self, last_checkpoint: &str) -> Result<(f64, f64)> {
        let step = self.step + 1;
        let non_finite = |what: String| Error::NonFinite { what, step, checkpoint: last_checkpoint.into() };
        let (l, grads) = self.global_gradients()?.map_err(non_finite)?;
        let grad_norm = Adam::global_norm(&grads)?;
        if !grad_norm.is_finite() {
            let name = anomaly::first_bad_param(&self.params, &grads)?;
            return Err(non_finite(name.map_or("gradient".into(), |n| format!("gradient of `{n}`"))));
        }
        let lr = self.settings.learning_rate(self.step);
        let info = self.adam.step_with_norm(&self.params, grads, grad_norm, lr, self.settings.grad_clip)?;
        if self.detect_anomaly {
            let now: Vec<Tensor> = self.params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
            if let Some(n) = anomaly::first_bad_param(&self.params, &now)? {
                return Err(non_finite(format!("parameter `{n}` after the update")));
            }
        }
        self.ema.update(&self.params)?;
        self.step += 1;
        self.last_loss = l;
        Ok((l, info.grad_norm))
    }

    /// Compares a hash of the parameters, Adam moments and EMA over the
    /// processes ([`parallel::check_in_sync`]); a no-op for one process.
    pub fn check_sync(&self) -> Result<()> {
        if self.parallel.is_single() {
            return Ok(());
        }
        let params: Vec<Tensor> = self.params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        let all = params.iter().chain(&self.adam.m).chain(&self.adam.v).chain(&self.ema.shadow);
        parallel::check_in_sync(self.parallel.collective.as_ref(), parallel::state_hash(all)?, self.step)
    }

    /// A frozen copy of the model carrying the EMA weights (what sampling
    /// uses by default), for evaluation only ([`Model::freeze`]).
    pub fn ema_model(&self) -> Result<(Model, VarMap)> {
        let varmap = VarMap::new();
        let mut model = (self.rebuild)(&varmap)?;
        model.freeze();
        for ((_, var), avg) in nets::named_vars(&varmap).iter().zip(&self.ema.shadow) {
            var.set(avg)?;
        }
        Ok((model, varmap))
    }

    /// Training examples per label 0..K−1 of a class-conditional model (labels
    /// beyond K were refused when the trainer was built).
    fn label_counts(&self) -> Option<Vec<u64>> {
        let labels = self.dataset.labels.as_ref().filter(|_| self.classes > 0)?;
        scoregen_core::guidance::count_labels(labels, self.classes).ok()
    }

    /// The current state as a checkpoint.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let named = |ts: &[Tensor], prefix: &str| -> HashMap<String, Tensor> {
            self.params.iter().zip(ts).map(|((n, _), t)| (format!("{prefix}{n}"), t.clone())).collect()
        };
        let model: Vec<Tensor> = self.params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        let mut optimizer = named(&self.adam.m, "m.");
        optimizer.extend(named(&self.adam.v, "v."));
        Ok(Checkpoint {
            state: TrainState {
                format: checkpoint::FORMAT,
                step: self.step,
                dim: self.dataset.points.d,
                adam_t: self.adam.t,
                ema_updates: self.ema.updates,
                batch_rng: self.batch_rng.state(),
                noise_rng: self.noise_rng.state(),
                config_hash: self.config_hash.clone(),
                last_loss: self.last_loss,
                shards: self.parallel.shards,
                label_counts: self.label_counts(),
            },
            model: named(&model, ""),
            ema: named(&self.ema.shadow, ""),
            optimizer,
            dir: PathBuf::new(),
        })
    }

    /// Restores parameters, optimizer, EMA, RNG streams and step from a
    /// checkpoint, after checking it against the model built from the config.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let source = &ck.dir;
        if ck.state.config_hash != self.config_hash {
            return Err(Error::data(
                source.join("state.json"),
                "the checkpoint was written with a different config (only training.steps may change on resume)",
            ));
        }
        if ck.state.dim != self.dataset.points.d {
            return Err(Error::data(
                source.join("state.json"),
                format!(
                    "the checkpoint is for data of dimension {}, the config's data has {}",
                    ck.state.dim, self.dataset.points.d
                ),
            ));
        }
        if ck.state.shards != self.parallel.shards {
            let (was, now, p) = (ck.state.shards, self.parallel.shards, self.parallel.collective.size());
            return Err(Error::data(
                source.join("state.json"),
                format!(
                    "the checkpoint's run split each batch into {was} shard(s) (data-parallel processes), this one \
                     into {now} ({p} process(es)); a resume must keep the shards, so that it continues the same \
                     random streams: resume with `mpirun -np {was} scoregen train --distributed …`, or with \
                     `--shards {was}` on any number of processes that divides {was} (docs/distributed.md)"
                ),
            ));
        }
        checkpoint::check_model(ck, &self.params)?;
        checkpoint::assign(&self.params, &ck.model, &ck.dir.join("model.safetensors"))?;
        // read to the CPU, moved to the parameters' device
        let pick = |map: &HashMap<String, Tensor>, prefix: &str| -> Result<Vec<Tensor>> {
            self.params
                .iter()
                .map(|(n, p)| {
                    let t = map
                        .get(&format!("{prefix}{n}"))
                        .ok_or_else(|| Error::data(source, format!("tensor `{prefix}{n}` is missing")))?;
                    Ok(t.to_device(p.device())?)
                })
                .collect()
        };
        self.adam.m = pick(&ck.optimizer, "m.")?;
        self.adam.v = pick(&ck.optimizer, "v.")?;
        self.adam.t = ck.state.adam_t;
        self.ema.shadow = pick(&ck.ema, "")?;
        self.ema.updates = ck.state.ema_updates;
        let bad_rng = || Error::data(source.join("state.json"), "malformed RNG state");
        self.batch_rng = Rng::restore(&ck.state.batch_rng).ok_or_else(bad_rng)?;
        self.noise_rng = Rng::restore(&ck.state.noise_rng).ok_or_else(bad_rng)?;
        self.step = ck.state.step;
        self.last_loss = ck.state.last_loss;
        Ok(())
    }
}

/// Measures sample quality during training (`training.eval_every`): the
/// application layer's image evaluation samples the EMA model and scores it.
pub trait Evaluator {
    /// Named numbers (e.g. `fd`, `fd_floor`, `confidence`, `entropy`) for the trainer's current state.
    fn evaluate(&mut self, trainer: &Trainer) -> Result<serde_json::Map<String, serde_json::Value>>;
}

/// One evaluation line of `metrics.jsonl`: `{"step", "train_seconds", "eval": {…}}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalLine {
    pub step: usize,
    /// Seconds of training (evaluations excluded) since this process started
    /// or resumed the run.
    pub train_seconds: f64,
    pub eval: serde_json::Map<String, serde_json::Value>,
}

/// Trains in `run_dir` (writing `config.toml`, `metrics.jsonl`, `checkpoints/`).
/// The trainer is built first, so bad input fails before anything is written.
pub fn train(trainer: Trainer, run_dir: &Path, opts: &TrainOptions) -> Result<TrainOutcome> {
    train_with(trainer, run_dir, opts, None)
}

/// [`train`], calling `evaluator` every `training.eval_every` steps and at the end.
///
/// In a data-parallel run ([`Trainer::set_parallel`]) every process trains,
/// and rank 0 alone writes: it takes the run's lock and writes `config.toml`,
/// `metrics.jsonl`, the checkpoints and runs `evaluator`; the other ranks only
/// read the checkpoint they resume from (the run folder must be the same
/// on every host then). All processes stop at the same step: a non-finite
/// loss on any of them, a Ctrl-C on any of them, the end.
pub fn train_with(
    mut trainer: Trainer,
    run_dir: &Path,
    opts: &TrainOptions,
    mut evaluator: Option<&mut dyn Evaluator>,
) -> Result<TrainOutcome> {
    trainer.detect_anomaly = opts.detect_anomaly;
    let writer = trainer.is_writer();
    let single = trainer.parallel.is_single();
    // A read-only or missing output location fails now, naming the path, not at the first checkpoint.
    if writer {
        fs::ensure_writable_dir(run_dir)?;
    }
    // Held until this function returns, on success or error; a killed process's lock is stale.
    let _lock = if writer { Some(fs::RunLock::acquire(run_dir)?) } else { None };
    let ck_dir = run_dir.join("checkpoints");
    let log_path = run_dir.join("metrics.jsonl");
    let mut last_ck = String::from("none");
    let mut moved_aside = None;
    if opts.resume {
        if checkpoint::list(&ck_dir).is_empty() && !ck_dir.join("latest").exists() {
            return Err(Error::data(
                &ck_dir,
                "no checkpoint to resume from (the run stopped before its first one); start over with --overwrite",
            ));
        }
        let ck = checkpoint::load_latest(&ck_dir)?;
        trainer.restore(&ck)?;
        last_ck = ck.dir.display().to_string();
        if writer {
            truncate_log(&log_path, trainer.step)?;
        }
        tracing::info!("resuming from step {}", trainer.step);
    } else if writer {
        check_existing(run_dir, opts.existing)?;
        if opts.existing == ExistingRun::MoveAside && fs::holds_run(run_dir) {
            let old = fs::move_aside(run_dir)?;
            tracing::info!("moved the earlier run in {} to {}", run_dir.display(), old.display());
            moved_aside = Some(old);
        }
        if ck_dir.exists() {
            std::fs::remove_dir_all(&ck_dir).map_err(|e| Error::io(&ck_dir, e))?;
        }
        fs::write_atomic(&log_path, b"")?;
    }
    if !single {
        // Every process starts from the same state (fresh from the seed, or the checkpoint each read).
        trainer.check_sync()?;
        tracing::info!("data-parallel: {}, {} shards", trainer.parallel.collective.describe(), trainer.parallel.shards);
    }
    let mut log = if writer {
        fs::ensure_writable_dir(&ck_dir)?;
        fs::write_atomic(&run_dir.join("config.toml"), trainer.config_toml.as_bytes())?;
        Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log_path)
                .map_err(|e| Error::io(&log_path, e))?,
        )
    } else {
        None
    };

    let t = trainer.settings.clone();
    let end = opts.stop_after.map_or(t.steps, |s| s.min(t.steps));
    let pb = progress::bar(t.steps, "train", opts.quiet || !writer);
    pb.set_position(trainer.step as u64);
    let start = Instant::now();
    let first_step = trainer.step;
    let (mut acc, mut count, mut window) = (0.0, 0usize, Instant::now());
    let mut final_dir = PathBuf::from(&last_ck);
    let mut eval_seconds = 0.0;
    // Ctrl-C stops after the current step, with a checkpoint of it.
    let stop = progress::Interruptible::enter();
    let mut saved = trainer.step;
    while trainer.step < end {
        // Several processes agree on stopping inside the step's all-reduce.
        if if single { progress::interrupted() } else { trainer.stop_requested } {
            pb.finish_and_clear();
            if saved != trainer.step {
                final_dir = if writer {
                    checkpoint::save(&ck_dir, &trainer.checkpoint()?, t.keep_checkpoints)?
                } else {
                    ck_dir.join(checkpoint::dir_name(trainer.step))
                };
            }
            let kept = if trainer.step == 0 { "no checkpoint".into() } else { final_dir.display().to_string() };
            drop(stop);
            return Err(Error::Interrupted(format!(
                "training stopped at step {}; checkpoint: {kept}; continue with --resume",
                trainer.step
            )));
        }
        // A full disk or another write error stops training naming the last good checkpoint.
        let io_stop = |e: Error| {
            Error::Invalid(format!(
                "{e}; last good checkpoint: {last_ck}; once the disk has room, continue with --resume"
            ))
        };
        let (loss, grad_norm) = trainer.train_step(&last_ck)?;
        // The crash tests' kill between two checkpoints (`fs::kill_point`).
        fs::kill_point(trainer.step, "step");
        acc += loss;
        count += 1;
        pb.inc(1);
        if opts.check_sync > 0 && !single && trainer.step.is_multiple_of(opts.check_sync) {
            trainer.check_sync()?;
        }
        if let (Some(log), true) = (log.as_mut(), trainer.step.is_multiple_of(t.log_every) || trainer.step == end) {
            let line = LogLine {
                step: trainer.step,
                loss: acc / count as f64,
                lr: t.learning_rate(trainer.step - 1),
                grad_norm,
                steps_per_sec: count as f64 / window.elapsed().as_secs_f64().max(1e-9),
            };
            pb.set_message(format!("loss {:.4}", line.loss));
            writeln!(log, "{}", serde_json::to_string(&line).expect("log line serializes"))
                .map_err(|e| io_stop(Error::io(&log_path, e)))?;
            if let Some(hook) = &opts.on_log {
                (hook.0)(&line)?;
            }
            (acc, count, window) = (0.0, 0, Instant::now());
        }
        if let (Some(ev), Some(log), true) = (
            evaluator.as_deref_mut(),
            log.as_mut(),
            t.eval_every > 0 && (trainer.step.is_multiple_of(t.eval_every) || trainer.step == end),
        ) {
            let began = Instant::now();
            let eval = ev.evaluate(&trainer)?;
            let train_seconds = start.elapsed().as_secs_f64() - eval_seconds;
            let line = EvalLine { step: trainer.step, train_seconds, eval };
            writeln!(log, "{}", serde_json::to_string(&line).expect("eval line serializes"))
                .map_err(|e| Error::io(&log_path, e))?;
            eval_seconds += began.elapsed().as_secs_f64();
        }
        if trainer.step.is_multiple_of(t.checkpoint_every) || trainer.step == end {
            if writer {
                final_dir = checkpoint::save(&ck_dir, &trainer.checkpoint()?, t.keep_checkpoints).map_err(io_stop)?;
            } else {
                final_dir = ck_dir.join(checkpoint::dir_name(trainer.step));
            }
            last_ck = final_dir.display().to_string();
            saved = trainer.step;
        }
    }
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    if !single {
        let n: usize = trainer.params.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
        tracing::info!(
            "rank {}: {:.2} of {seconds:.2} s in the all-reduce of {n} parameters ({:.3} ms a step)",
            trainer.parallel.collective.rank(),
            trainer.reduce_seconds,
            1e3 * trainer.reduce_seconds / (trainer.step - first_step).max(1) as f64
        );
    }
    Ok(TrainOutcome {
        step: trainer.step,
        final_loss: trainer.last_loss,
        seconds,
        steps_per_sec: (trainer.step - first_step) as f64 / seconds.max(1e-9),
        checkpoint: final_dir,
        moved_aside,
    })
}

/// Drops log lines past `step` (they belong to work the resume will redo).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Ok(()),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s as usize <= step))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write_atomic(path, kept.as_bytes())
}

/// Reads the loss lines of `metrics.jsonl` (evaluation lines are skipped: [`read_evals`]).
pub fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    Ok(read_lines(path)?.into_iter().filter_map(|(_, l)| l.ok()).collect())
}

/// Reads the evaluation lines of `metrics.jsonl` ([`EvalLine`]).
pub fn read_evals(path: &Path) -> Result<Vec<EvalLine>> {
    Ok(read_lines(path)?.into_iter().filter_map(|(_, l)| l.err()).collect())
}

/// Every non-empty line of `metrics.jsonl` as a loss line (Ok) or an evaluation line (Err).
fn read_lines(path: &Path) -> Result<Vec<(usize, std::result::Result<LogLine, EvalLine>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let bad = |e: serde_json::Error| Error::data(path, format!("line {}: {e}", i + 1));
            if l.contains("\"eval\"") {
                Ok((i, Err(serde_json::from_str::<EvalLine>(l).map_err(bad)?)))
            } else {
                Ok((i, Ok(serde_json::from_str::<LogLine>(l).map_err(bad)?)))
            }
        })
        .collect()
}
