//! `scoregen train`: builds the trainer from a config and runs the loop into a
//! run folder, then writes the run report ([`train_and_report`], what the CLI
//! and Python call); with `training.eval_every`, measures image quality as it trains.

use super::classify::{labelled_splits, train_classifier, ClassifierRequest};
use super::eval::{inception_outputs, load_inception};
use super::sample::labels_for;
use crate::app::config::RunConfig;
use crate::app::factory;
use crate::data::PixelScale;
use crate::error::{Error, Result};
use crate::guidance::{count_labels, ClassifierFree, Labels};
use crate::metrics::fid::{frechet_distance, GaussianStats, IS_SPLITS};
use crate::nets::inception::InceptionV3;
use crate::nets::{ModelConditional, SavedClassifier};
use crate::points::Points;
use crate::rng::{streams, Rng};
use crate::samplers::{SampleContext, SamplerKind, SamplerSpec};
use crate::score::ScoreFn;
use crate::train::classifier::{image_report, Labelled};
use crate::train::{self, DataParallel, Evaluator, TrainOptions, TrainOutcome, Trainer};
use indicatif::ProgressBar;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Trains `cfg` in `run_dir` (writing `config.toml`, `metrics.jsonl`,
/// `checkpoints/`); data and model are built first, so bad input fails before
/// anything is written. A folder that already holds a run is refused before
/// the data are read unless `opts` resumes it or says how to replace it
/// ([`train::ExistingRun`]); [`train::train`] checks again under the run's lock.
pub fn train(cfg: &RunConfig, run_dir: &Path, opts: &TrainOptions) -> Result<TrainOutcome> {
    train_parallel(cfg, run_dir, opts, DataParallel::default())
}

/// [`train`] with the global batch spread over `parallel` (its processes and
/// shards, docs/distributed.md): rank 0 checks the folder, writes the run and
/// evaluates; every rank trains.
pub fn train_parallel(
    cfg: &RunConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    parallel: DataParallel,
) -> Result<TrainOutcome> {
    let writer = parallel.collective.rank() == 0;
    if !opts.resume && writer {
        train::check_existing(run_dir, opts.existing)?;
    }
    let (mut trainer, cfg) = factory::trainer_and_config(cfg)?;
    let cfg = &cfg;
    trainer.set_parallel(parallel)?;
    if cfg.training.eval_every == 0 || !writer {
        return train::train(trainer, run_dir, opts);
    }
    let mut evaluator = ImageEvaluator::new(cfg, run_dir, opts.quiet, &trainer.device)?;
    train::train_with(trainer, run_dir, opts, Some(&mut evaluator))
}

/// Whether [`train_and_report`] writes the run report when a front end is not
/// told otherwise: yes, in both (`scoregen train` unless `--no-report`, Python's
/// `scoregen.train(report=True)`).
pub const REPORT_BY_DEFAULT: bool = true;

/// What [`train_and_report`] did: the training and, when asked for, the report.
#[derive(Debug, Clone)]
pub struct TrainedRun {
    pub outcome: TrainOutcome,
    /// `RUN/report.html`; `None` when no report was asked for or on a rank other than 0.
    pub report: Option<PathBuf>,
}

/// Which step of [`train_and_report`] failed; each front end prints the
/// error after [`TrainAndReportError::context`] (`training RUN`, `report of RUN`).
#[derive(Debug)]
pub enum TrainAndReportError {
    Training(Error),
    Report(Error),
}

impl TrainAndReportError {
    /// The line a front end puts before the error: `training RUN` or `report of RUN`.
    pub fn context(&self, run_dir: &Path) -> String {
        match self {
            TrainAndReportError::Training(_) => format!("training {}", run_dir.display()),
            TrainAndReportError::Report(_) => format!("report of {}", run_dir.display()),
        }
    }

    /// The library's error, without the step.
    pub fn into_inner(self) -> Error {
        match self {
            TrainAndReportError::Training(e) | TrainAndReportError::Report(e) => e,
        }
    }
}

/// `scoregen train` and Python's `scoregen.train`: [`train_parallel`] into
/// `run_dir`, then, when `report` is set ([`REPORT_BY_DEFAULT`]: yes), the run
/// report `RUN/report.html` (its figures computed on `device`, progress hidden
/// when `opts.quiet`). Only rank 0 writes the report.
pub fn train_and_report(
    cfg: &RunConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    parallel: DataParallel,
    report: bool,
    device: &candle_core::Device,
) -> std::result::Result<TrainedRun, TrainAndReportError> {
    let writer = parallel.collective.rank() == 0;
    let outcome = train_parallel(cfg, run_dir, opts, parallel).map_err(TrainAndReportError::Training)?;
    let report = if report && writer {
        let r = super::report::write_report(run_dir, opts.quiet, device).map_err(TrainAndReportError::Report)?;
        Some(r.html)
    } else {
        None
    };
    Ok(TrainedRun { outcome, report })
}

/// Training data given in memory (Python's `scoregen.train(data=…)`): points
/// [N, D] or images [N, C, H, W] (`image_shape`), and optionally one class label per row.
#[derive(Debug, Clone)]
pub struct MemoryData {
    pub points: Points,
    pub image_shape: Option<(usize, usize, usize)>,
    pub labels: Option<Vec<u8>>,
}

/// The file a run trained from memory keeps its data in, `RUN/data.npy`
/// (its labels: `RUN/data.labels.npy`), the run's `data.source`.
pub const MEMORY_DATA_FILE: &str = "data.npy";

/// [`train_and_report`] on data in memory: the points (and labels) are first
/// written into the run folder as `data.npy` (and `data.labels.npy`, see
/// [`crate::data::load`]'s `.npy` source) and the config's `data.source`
/// points there, so the run is an ordinary run folder: resumed, sampled,
/// evaluated and reported by the command line as any other.
pub fn train_from_memory(
    cfg: &RunConfig,
    data: &MemoryData,
    run_dir: &Path,
    opts: &TrainOptions,
    report: bool,
    device: &candle_core::Device,
) -> std::result::Result<TrainedRun, TrainAndReportError> {
    let prepare = || -> Result<(RunConfig, TrainOptions)> {
        let p = &data.points;
        if p.n == 0 || p.d == 0 || !p.all_finite() {
            return Err(Error::Invalid("data: expected a non-empty array of finite numbers".into()));
        }
        if data.image_shape.is_some_and(|(c, h, w)| c * h * w != p.d) {
            return Err(Error::Invalid(format!(
                "data: image shape {:?} does not hold {} values",
                data.image_shape, p.d
            )));
        }
        if data.labels.as_ref().is_some_and(|l| l.len() != p.n) {
            return Err(Error::Invalid(format!(
                "labels: expected one label per row of data ({}), found {}",
                p.n,
                data.labels.as_ref().map_or(0, Vec::len)
            )));
        }
        if !opts.resume {
            train::check_existing(run_dir, opts.existing)?;
        }
        let mut opts = opts.clone();
        // the old run moves aside before this run's data is written into the folder
        if opts.existing == train::ExistingRun::MoveAside && crate::io::fs::holds_run(run_dir) && !opts.resume {
            crate::io::fs::move_aside(run_dir)?;
            opts.existing = train::ExistingRun::Refuse;
        }
        crate::io::fs::create_dir(run_dir)?;
        let file = run_dir.join(MEMORY_DATA_FILE);
        let shape = match data.image_shape {
            Some((c, h, w)) => vec![p.n, c, h, w],
            None => vec![p.n, p.d],
        };
        let values: Vec<f32> = p.data.iter().map(|&v| v as f32).collect();
        crate::io::npy::write_f32(&file, &shape, &values)?;
        let labels_file = file.with_extension("labels.npy");
        match &data.labels {
            Some(l) => {
                let l: Vec<f32> = l.iter().map(|&y| f32::from(y)).collect();
                crate::io::npy::write_f32(&labels_file, &[p.n, 1], &l)?;
            }
            None if labels_file.exists() => {
                std::fs::remove_file(&labels_file).map_err(|e| Error::io(&labels_file, e))?;
            }
            None => {}
        }
        let mut cfg = cfg.clone();
        let abs = std::path::absolute(&file).map_err(|e| Error::io(&file, e))?;
        cfg.data.source = abs.display().to_string();
        cfg.data.n_train = p.n;
        Ok((cfg, opts))
    };
    let (cfg, opts) = prepare().map_err(TrainAndReportError::Training)?;
    train_and_report(&cfg, run_dir, &opts, DataParallel::default(), report, device)
}

/// The processes of `mpirun` as one collective, and the device this process
/// computes on: over MPI, or NCCL (bootstrapped over MPI) for CUDA devices in a
/// build with `nccl`; one GPU per process, local rank r taking GPU N + r of
/// `cuda:N` (`OMPI_COMM_WORLD_LOCAL_RANK`). Only in a build with `mpi`
/// (docs/distributed.md).
#[cfg(feature = "mpi")]
pub fn mpi_world(
    device: Option<crate::device::DeviceSpec>,
) -> Result<(std::rc::Rc<dyn train::Collective>, Option<crate::device::DeviceSpec>)> {
    use crate::device::DeviceSpec;
    let mpi = train::mpi::Mpi::init()?;
    let local: usize = std::env::var("OMPI_COMM_WORLD_LOCAL_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let device = match device {
        Some(DeviceSpec::Cuda(n)) => Some(DeviceSpec::Cuda(n + local)),
        other => other,
    };
    #[cfg(feature = "nccl")]
    if let Some(d @ DeviceSpec::Cuda(_)) = device {
        return Ok((std::rc::Rc::new(train::nccl::Nccl::init(mpi, &d.open()?)?), device));
    }
    Ok((std::rc::Rc::new(mpi), device))
}

/// DPM-Solver++(2M) steps of each evaluation's sampling (NFE 25 on the Karras grid).
pub const EVAL_STEPS: usize = 25;

/// At most this many training images are the evaluation's reference (FD, memorization).
pub const EVAL_TRAIN_MAX: usize = 10_000;
/// At most this many held-out images give the floors and the real images' confidence.
pub const EVAL_TEST_MAX: usize = 1_000;

/// Image quality during training: `training.eval_n` samples of the EMA model by
/// DPM-Solver++(2M) ([`EVAL_STEPS`] steps, the same seed each time, so the curve
/// moves with the model alone), scored by the project's clean classifier:
/// Fréchet distance and its held-out floor, mean confidence, class entropy.
/// A class-conditional run with `sampling.class` is sampled as `scoregen sample`
/// would: those labels, classifier-free guidance of weight `sampling.guidance`.
pub struct ImageEvaluator {
    classifier: SavedClassifier,
    train: Labelled,
    test: Labelled,
    n: usize,
    seed: u64,
    /// The labels and guidance weight of a class-conditional run's samples.
    labels: Option<(Labels, f64)>,
    /// `training.inception`: the network and the training images' statistics.
    inception: Option<InceptionEval>,
}

/// The training images embedded once by pytorch-fid's network, for FID and IS at every evaluation.
struct InceptionEval {
    net: InceptionV3,
    reference: GaussianStats,
    scale: PixelScale,
    quiet: bool,
}

/// The most training images `training.inception` embeds as FID's reference (once per run).
pub const INCEPTION_TRAIN_MAX: usize = 10_000;

impl ImageEvaluator {
    /// Loads `training.eval_classifier`, or trains one into `RUN/classifier/`
    /// (the `train-classifier` defaults) when none is named.
    pub fn new(cfg: &RunConfig, run_dir: &Path, quiet: bool, device: &candle_core::Device) -> Result<Self> {
        let (train, test, image_shape) = labelled_splits(&cfg.data.source, &cfg.data.image_options())?;
        let dir = if cfg.training.eval_classifier.is_empty() {
            let out = run_dir.join("classifier");
            if !out.join(crate::nets::classifier::META).exists() {
                train_classifier(&ClassifierRequest {
                    data: None,
                    config: Some(cfg.clone()),
                    noisy: false,
                    out: out.clone(),
                    width: 32,
                    blocks: 2,
                    steps: 1500,
                    batch_size: 64,
                    lr: 2e-3,
                    seed: 0,
                    quiet,
                    device: device.clone(),
                })?;
            }
            out
        } else {
            PathBuf::from(&cfg.training.eval_classifier)
        };
        let classifier = SavedClassifier::load(&dir, device)?;
        if classifier.meta.spec.noise_aware || classifier.meta.spec.dim != train.points.d {
            return Err(Error::config(
                "config",
                "training.eval_classifier",
                format!(
                    "{} is not a clean classifier of this run's data (dimension {})",
                    dir.display(),
                    train.points.d
                ),
            ));
        }
        // The reference sets are capped: each evaluation embeds the training images
        // and searches test × train for nearest neighbours, which on Fashion-MNIST's
        // 60,000 / 10,000 took minutes per evaluation. The first images of each split
        // (sets without their own split are held out by a fixed permutation).
        let n = cfg.training.eval_n;
        let labels = match (cfg.sampling.class, cfg.model.classes.count()) {
            (Some(choice), k) if k > 0 => {
                let labels = labels_for(choice, k, || count_labels(&train.labels, k), n, cfg.seed)?;
                Some((labels, cfg.sampling.guidance))
            }
            _ => None,
        };
        let inception = if cfg.training.inception.is_empty() {
            None
        } else {
            let weights = Path::new(&cfg.training.inception);
            let in_config = |e: Error| Error::config("config", "training.inception", e.to_string());
            let net = load_inception(weights, device).map_err(in_config)?;
            let scale = cfg.data.scale;
            let shape = image_shape
                .ok_or_else(|| Error::config("config", "training.inception", "the data's image shape is unknown"))?;
            let head = train.points.head(INCEPTION_TRAIN_MAX);
            let (f, _) = inception_outputs(&net, &head, shape, scale, "the training images", quiet)?;
            Some(InceptionEval { net, reference: GaussianStats::of(&f), scale, quiet })
        };
        let (train, test) = (train.head(EVAL_TRAIN_MAX), test.head(EVAL_TEST_MAX));
        Ok(Self { classifier, train, test, n, seed: cfg.seed, labels, inception })
    }
}

impl Evaluator for ImageEvaluator {
    fn evaluate(&mut self, trainer: &Trainer) -> Result<Map<String, Value>> {
        let (model, _vars) = trainer.ema_model()?;
        let cond = ModelConditional { model: &model, sde: trainer.sde.clone() };
        let score: Box<dyn ScoreFn + '_> = match &self.labels {
            Some((labels, w)) => Box::new(ClassifierFree { model: &cond, labels: labels.clone(), w: *w }),
            None => model.score(trainer.sde.clone()),
        };
        let spec = SamplerSpec { sampler: SamplerKind::Dpmpp2m, steps: EVAL_STEPS, ..SamplerSpec::default() };
        let hidden = ProgressBar::hidden();
        let ctx = SampleContext {
            device: trainer.device.clone(),
            ..SampleContext::new(score.as_ref(), trainer.sde.as_ref(), &hidden)
        };
        let x = spec.sample(&ctx, (self.n, self.train.points.d), &mut Rng::new(self.seed, streams::EVAL))?.x;
        let samples = Points::from_tensor(&x)?;
        let r = image_report(&samples, &self.train, &self.test, &self.classifier.classifier)?;
        let mut m = Map::new();
        if let (Some(inc), Some(shape)) = (&self.inception, trainer.dataset.image_shape) {
            let (f, logits) = inception_outputs(&inc.net, &samples, shape, inc.scale, "the samples", inc.quiet)?;
            let is = crate::metrics::fid::inception_score(&logits, IS_SPLITS.min(samples.n))?;
            m.insert("fid".into(), serde_json::json!(frechet_distance(&GaussianStats::of(&f), &inc.reference)?));
            m.insert("is".into(), serde_json::json!(is.mean));
            m.insert("is_std".into(), serde_json::json!(is.std));
        }
        for (k, v) in [
            ("fd", r.fd),
            ("fd_floor", r.fd_floor),
            ("confidence", r.mean_confidence),
            ("real_confidence", r.real_confidence),
            ("entropy", r.class_entropy),
            ("max_entropy", r.max_entropy),
            ("memorization", r.memorization_ratio),
        ] {
            m.insert(k.into(), serde_json::json!(v));
        }
        Ok(m)
    }
}
