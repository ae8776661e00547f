//! `scoregen train-classifier` and the image branch of `scoregen eval`: the
//! classifier behind the image metrics (and, noise-aware, behind classifier
//! guidance), trained on an image source's training split.

use crate::app::config::RunConfig;
use crate::data::{self, ImageOptions};
use crate::error::{Error, Result};
use crate::io::npy;
use crate::metrics::images::ImageReport;
use crate::nets::classifier::{ClassifierMeta, ClassifierSpec};
use crate::nets::SavedClassifier;
use crate::points::Points;
use crate::rng::{streams, Rng};
use crate::train::classifier::image_report;
use crate::train::classifier::{train_classifier as fit, ClassifierTraining, Labelled, NoiseAware};
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The defaults of `scoregen train-classifier`'s flags and of
/// `scoregen.train_classifier`'s keywords (one copy for both front ends).
pub mod defaults {
    /// Base channels of the CNN (hidden width of the MLP for points).
    pub const WIDTH: usize = 32;
    /// Convolutions per resolution of the CNN.
    pub const BLOCKS: usize = 2;
    pub const STEPS: usize = 1500;
    pub const BATCH_SIZE: usize = 64;
    pub const LR: f64 = 2e-3;
}

/// Where `scoregen train-classifier` writes unless told (`out`): with `noisy`,
/// `RUN/classifier-noisy`; else `classifiers/DATA`, DATA the data set named or
/// the run's `data.source`. Without data or a run, an [`Error::Setting`] naming `data`.
pub fn default_out(data: Option<&str>, run: Option<(&Path, &RunConfig)>, noisy: bool) -> Result<PathBuf> {
    match (run, data) {
        (Some((dir, _)), _) if noisy => Ok(dir.join("classifier-noisy")),
        (_, Some(d)) => Ok(Path::new("classifiers").join(d)),
        (Some((_, cfg)), None) => Ok(Path::new("classifiers").join(&cfg.data.source)),
        (None, None) => Err(no_data()),
    }
}

fn no_data() -> Error {
    Error::Setting {
        key: "data",
        message: "give labelled data (digits, mnist5k, fashion-mnist, an IDX file, a folder of PNGs, a Gaussian mixture) or a run whose data to use".into(),
    }
}

/// What `scoregen train-classifier` was asked for.
#[derive(Debug, Clone)]
pub struct ClassifierRequest {
    /// An image source (`digits`, `mnist5k`, `fashion-mnist`, an IDX file, a PNG folder).
    pub data: Option<String>,
    /// A run config whose data (source, scale, split) and, with `noisy`, SDE are used.
    pub config: Option<RunConfig>,
    /// Train on x(t) ~ p_{0t}(· | x) under the config's SDE, with t as an input.
    pub noisy: bool,
    pub out: PathBuf,
    pub width: usize,
    /// Convolutions per resolution of the CNN.
    pub blocks: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub quiet: bool,
    /// Where the classifier is trained.
    pub device: Device,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifierOutcome {
    pub dir: PathBuf,
    pub meta: ClassifierMeta,
    pub train_images: usize,
    pub test_images: usize,
    pub final_loss: f64,
    pub seconds: f64,
}

/// (C, H, W) of an image.
pub type ImageShape = (usize, usize, usize);

/// Labelled training and held-out splits of an image source, in `opts.scale`,
/// with the image shape; or of a Gaussian mixture (components as labels:
/// 10,000 training and 2,000 held-out fresh draws), with no shape.
pub fn labelled_splits(source: &str, opts: &ImageOptions) -> Result<(Labelled, Labelled, Option<ImageShape>)> {
    if let Ok(data::Dataset { oracle: Some(mix), .. }) = data::load(source, 1, &mut Rng::new(0, streams::ORACLE_PROBE))
    {
        let (x, y) = mix.sample_labeled(10_000, &mut Rng::new(0, streams::CLASSIFY_TRAIN));
        let (xt, yt) = mix.sample_labeled(2_000, &mut Rng::new(0, streams::CLASSIFY_HELD_OUT));
        return Ok((Labelled::new(x, y)?, Labelled::new(xt, yt)?, None));
    }
    if !data::is_image_source(source) {
        return Err(Error::Invalid(format!(
            "`{source}` has no labels (expected images: digits, mnist5k, fashion-mnist, an IDX file or a folder of PNGs; or a Gaussian mixture, whose components are the classes)"
        )));
    }
    let split = |train: bool| -> Result<Labelled> {
        let set = data::load_images(source, train, opts)?;
        Labelled::new(set.to_points(opts.scale), set.labels)
    };
    let (train, test) = (split(true)?, split(false)?);
    if train.points.n == 0 || test.points.n == 0 {
        return Err(Error::data(source, "the training or the held-out split is empty"));
    }
    let shape = data::load_images(source, false, opts)?.shape();
    Ok((train, test, Some(shape)))
}

/// Trains, evaluates on the held-out split and saves the classifier to `req.out`.
/// Refusals (every front end's, checked before any data is read) are
/// [`Error::Setting`]s named by the flag's stem, which is Python's keyword.
pub fn train_classifier(req: &ClassifierRequest) -> Result<ClassifierOutcome> {
    let source = match (&req.data, &req.config) {
        (Some(d), _) => d.clone(),
        (None, Some(cfg)) => cfg.data.source.clone(),
        (None, None) => return Err(no_data()),
    };
    for (key, v) in [("width", req.width), ("blocks", req.blocks), ("steps", req.steps), ("batch_size", req.batch_size)]
    {
        if v == 0 {
            return Err(Error::Setting { key, message: "must be ≥ 1 (got 0)".into() });
        }
    }
    if !(req.lr > 0.0 && req.lr.is_finite()) {
        return Err(Error::Setting { key: "lr", message: format!("must be a finite number > 0 (got {})", req.lr) });
    }
    let opts = req.config.as_ref().map(|c| c.data.image_options()).unwrap_or_default();
    let noise = if req.noisy {
        let cfg = req.config.as_ref().ok_or_else(|| Error::Setting {
            key: "noisy",
            message: "needs a run (its SDE perturbs the images)".into(),
        })?;
        Some(NoiseAware { sde: cfg.sde(), t_eps: cfg.objective.t_eps })
    } else {
        None
    };
    let (train, test, shape) = labelled_splits(&source, &opts)?;
    crate::app::budget::check_classifier_training(
        train.points.n + test.points.n,
        train.points.d,
        req.width,
        req.blocks,
        req.batch_size,
    )?;
    let max = crate::samplers::dispatch::MAX_EVALUATIONS;
    if req.steps as f64 > max {
        return Err(Error::Setting {
            key: "steps",
            message: format!(
                "{} steps (one batch through the classifier each) is more than the {max:.0e} network evaluations any command runs",
                req.steps
            ),
        });
    }
    let spec = ClassifierSpec {
        classes: train.classes().max(test.classes()),
        dim: train.points.d,
        image_shape: shape,
        width: req.width,
        noise_aware: req.noisy,
        embed_dim: 32,
        embed_scale: 16.0,
        seed: req.seed,
        blocks: req.blocks,
    };
    let training = ClassifierTraining {
        steps: req.steps,
        batch_size: req.batch_size,
        lr: req.lr,
        seed: req.seed,
        noise: noise.clone(),
        quiet: req.quiet,
        device: req.device.clone(),
    };
    let trained = fit(&train, &test, &spec, &training)?;
    let meta = ClassifierMeta {
        spec,
        data: source,
        scale: opts.scale,
        test_fraction: opts.test_fraction,
        steps: req.steps,
        test_accuracy: trained.test_accuracy,
        sde: noise.map(|n| n.sde.name().to_string()),
    };
    let saved = SavedClassifier { classifier: trained.classifier, varmap: trained.varmap, meta: meta.clone() };
    saved.save(&req.out)?;
    Ok(ClassifierOutcome {
        dir: req.out.clone(),
        meta,
        train_images: train.points.n,
        test_images: test.points.n,
        final_loss: trained.final_loss,
        seconds: trained.seconds,
    })
}

/// Image metrics of `samples` against the real images the classifier was
/// trained on (the classifier runs on `device`).
pub fn evaluate_images(samples: &Points, classifier_dir: &Path, device: &Device) -> Result<ImageReport> {
    let saved = SavedClassifier::load(classifier_dir, device)?;
    if saved.meta.spec.noise_aware {
        return Err(Error::data(
            classifier_dir,
            "this classifier is noise-aware (for guidance); image metrics need a clean one (train-classifier without --noisy)",
        ));
    }
    if samples.d != saved.meta.spec.dim {
        return Err(Error::Invalid(format!(
            "samples have dimension {}, the classifier in {} expects {}",
            samples.d,
            classifier_dir.display(),
            saved.meta.spec.dim
        )));
    }
    let opts = ImageOptions { scale: saved.meta.scale, test_fraction: saved.meta.test_fraction, split_seed: 0 };
    let (train, test, _) = labelled_splits(&saved.meta.data, &opts)?;
    image_report(samples, &train, &test, &saved.classifier)
}

/// How a classifier labels a set of samples (`scoregen classify`).
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub n: usize,
    /// Fraction of the samples predicted as each class.
    pub histogram: Vec<f64>,
    /// Fraction predicted as the expected class (`--class` or `--labels`), if one was given.
    pub accuracy: Option<f64>,
}

/// Classifies `samples` (data space, t = 0) and compares with `expected`: one
/// class for all, or one label per sample. The classifier runs on `device`.
pub fn classify(
    classifier: &Path,
    samples: &Path,
    expected: Option<Expected>,
    device: &Device,
) -> Result<Classification> {
    let saved = SavedClassifier::load(classifier, device)?;
    let spec = &saved.meta.spec;
    let x = npy::read_points(samples)?;
    if x.d != spec.dim {
        return Err(Error::data(samples, format!("samples have dimension {}, the classifier takes {}", x.d, spec.dim)));
    }
    // a noise-aware classifier judges clean samples at its smallest training time
    let t = spec.noise_aware.then_some(1e-3);
    let (pred, _) = crate::train::classifier::predict(&saved.classifier, &x, t)?;
    let mut histogram = vec![0.0; spec.classes];
    for &p in &pred {
        histogram[p] += 1.0 / x.n as f64;
    }
    let want: Option<Vec<usize>> = match expected {
        None => None,
        Some(Expected::Class(k)) => Some(vec![k; x.n]),
        Some(Expected::Labels(path)) => {
            let l = npy::read_points(&path)?;
            if l.n * l.d != x.n || l.data.iter().any(|v| *v < 0.0 || v.fract() != 0.0) {
                return Err(Error::data(&path, format!("expected {} integer labels ≥ 0, one per sample", x.n)));
            }
            Some(l.data.iter().map(|&v| v as usize).collect())
        }
    };
    let accuracy = want.map(|w| pred.iter().zip(&w).filter(|(p, w)| p == w).count() as f64 / x.n.max(1) as f64);
    Ok(Classification { n: x.n, histogram, accuracy })
}

/// What the samples of `classify` should be.
#[derive(Debug, Clone)]
pub enum Expected {
    Class(usize),
    Labels(PathBuf),
}
