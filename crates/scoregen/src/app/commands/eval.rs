//! `scoregen eval`: metrics of samples against a mixture or reference samples,
//! each beside its floor, or, for an image source, the image metrics through
//! the project's classifier, or, given pytorch-fid's Inception weights, FID,
//! Inception Score and precision/recall as the papers report them.
//! [`EvalTarget`] makes that decision for every front end.

use super::classify::evaluate_images;
use crate::data::{self, PixelScale};
use crate::error::{Error, Result};
use crate::host;
use crate::io::npy;
use crate::metrics::fid::{self, frechet_distance, GaussianStats, InceptionScore, IS_SPLITS};
use crate::metrics::images::ImageReport;
use crate::metrics::precision_recall::{precision_recall, PrecisionRecall, K};
use crate::metrics::{self, Distances, MixtureReport};
use crate::nets::inception::{InceptionV3, CLASSES, FEATURES};
use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::rng::{streams, Rng};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `scoregen eval --target T` (and Python's `scoregen.metrics.evaluate`)
/// judges samples against: an image source (digits, mnist5k, fashion-mnist,
/// IDX, PNG folder) by a clean classifier, anything else as a [`Target`].
pub enum EvalTarget {
    /// Image metrics through the classifier in this folder.
    Images {
        classifier: PathBuf,
    },
    /// FID, IS and precision/recall in pytorch-fid's Inception features.
    Inception {
        weights: PathBuf,
        reference: InceptionReference,
        /// (C, H, W) of the samples when known (a `[N, C, H, W]` `.npy`).
        shape: Option<(usize, usize, usize)>,
        scale: PixelScale,
    },
    Points(Target),
}

/// The reference images `eval --inception` embeds by default: all of CIFAR-10's training set.
pub const INCEPTION_REFERENCE_MAX: usize = 50_000;

impl EvalTarget {
    /// With `inception` (pytorch-fid's weights): an image source or a
    /// statistics `.npz` is the reference of FID, IS and precision/recall.
    /// Without: an image source is judged by `classifier` (default:
    /// `classifiers/TARGET`, as `scoregen train-classifier --data TARGET`
    /// writes it), whose Fréchet distance is not comparable to papers; anything
    /// else is parsed by [`Target::parse`].
    pub fn parse(target: &str, classifier: Option<&Path>, inception: Option<&Path>) -> Result<Self> {
        if let Some(weights) = inception {
            let reference = if target.ends_with(".npz") {
                InceptionReference::Stats(PathBuf::from(target))
            } else if data::is_image_source(target) {
                InceptionReference::Images { source: target.to_string(), n: INCEPTION_REFERENCE_MAX }
            } else {
                return Err(Error::Invalid(format!(
                    "--inception compares images: target `{target}` is neither an image source nor a statistics .npz (pytorch-fid --save-stats)"
                )));
            };
            return Ok(EvalTarget::Inception {
                weights: weights.to_path_buf(),
                reference,
                shape: None,
                scale: PixelScale::Symmetric,
            });
        }
        if data::is_image_source(target) {
            let classifier = classifier.map_or_else(|| Path::new("classifiers").join(target), Path::to_path_buf);
            return Ok(EvalTarget::Images { classifier });
        }
        Ok(EvalTarget::Points(Target::parse(target)?))
    }

    /// The metrics of `samples` against this target; `seed` seeds the
    /// floors of point targets, `device` runs the classifier of image targets.
    pub fn evaluate(&self, samples: &Points, seed: u64, device: &Device) -> Result<EvalReport> {
        match self {
            EvalTarget::Images { classifier } => Ok(EvalReport::Images(evaluate_images(samples, classifier, device)?)),
            EvalTarget::Inception { weights, reference, shape, scale } => Ok(EvalReport::Inception(
                evaluate_inception(samples, *shape, *scale, weights, reference, device, false)?,
            )),
            EvalTarget::Points(t) => Ok(EvalReport::Points(evaluate(samples, t, seed)?)),
        }
    }
}

/// What `scoregen eval` reports: image metrics or point metrics, serialized
/// as the one or the other (`scoregen eval --json`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EvalReport {
    Images(ImageReport),
    Inception(InceptionReport),
    Points(Evaluation),
}

impl EvalReport {
    /// The plain-text table `scoregen eval` prints.
    pub fn table(&self) -> String {
        match self {
            EvalReport::Images(r) => r.table(),
            EvalReport::Inception(r) => r.table(),
            EvalReport::Points(e) => e.table(),
        }
    }
}

/// [`EvalTarget::parse`] then [`EvalTarget::evaluate`]: the metrics of
/// `samples` against `target` (an image source, a mixture name or spec, a
/// reference `.npy`), each beside its floor.
pub fn evaluate_target(
    samples: &Points,
    target: &str,
    classifier: Option<&Path>,
    seed: u64,
    device: &Device,
) -> Result<EvalReport> {
    EvalTarget::parse(target, classifier, None)?.evaluate(samples, seed, device)
}

/// Images per batch through the Inception network (about 30 MB of
/// activations per image at 299×299 in f32).
pub const INCEPTION_BATCH: usize = 16;
/// The most images of each set the precision and recall compare (their cost
/// is n² pairwise distances of 2,048 features); the paper uses 50,000.
pub const PRECISION_RECALL_MAX: usize = 10_000;

/// pytorch-fid's features (pool3, [N, 2048]) and unbiased logits ([N, 1008])
/// of images given as flattened points in data coordinates: each row is
/// mapped back to pixels in [0, 1] by `scale` (clamped), a grey channel is
/// repeated to RGB (as pytorch-fid's loader converts images), and the rows
/// go through the network in batches of [`INCEPTION_BATCH`].
pub fn inception_outputs(
    net: &InceptionV3,
    images: &Points,
    (c, h, w): (usize, usize, usize),
    scale: PixelScale,
    what: &str,
    quiet: bool,
) -> Result<(Points, Points)> {
    if c * h * w != images.d || !(c == 1 || c == 3) {
        return Err(Error::Invalid(format!(
            "{what}: rows of dimension {} are not images of shape {c}×{h}×{w} with 1 or 3 channels",
            images.d
        )));
    }
    let bar = crate::progress::bar(images.n, &format!("Inception features of {what}"), quiet);
    let (mut feats, mut logits) = (Vec::with_capacity(images.n * FEATURES), Vec::with_capacity(images.n * CLASSES));
    for start in (0..images.n).step_by(INCEPTION_BATCH) {
        let len = INCEPTION_BATCH.min(images.n - start);
        let px: Vec<f32> =
            images.data[start * images.d..(start + len) * images.d].iter().map(|&x| scale.to_pixel(x) as f32).collect();
        let mut batch = Tensor::from_vec(px, (len, c, h, w), &Device::Cpu)?;
        if c == 1 {
            batch = batch.repeat((1, 3, 1, 1))?;
        }
        let out = net.forward(&batch)?;
        feats.extend(host::vec1::<f64>(&out.features.flatten_all()?)?);
        logits.extend(host::vec1::<f64>(&out.logits.flatten_all()?)?);
        bar.inc(len as u64);
    }
    bar.finish_and_clear();
    Ok((Points::new(images.n, FEATURES, feats), Points::new(images.n, CLASSES, logits)))
}

/// What samples are compared with in Inception features.
#[derive(Debug, Clone)]
pub enum InceptionReference {
    /// The training images of an image source (at most `n`).
    Images { source: String, n: usize },
    /// Precomputed statistics: pytorch-fid's `--save-stats` `.npz` (`mu`, `sigma`).
    Stats(PathBuf),
}

/// FID, Inception Score and precision/recall in pytorch-fid's Inception-v3 features.
#[derive(Debug, Clone, Serialize)]
pub struct InceptionReport {
    pub n: usize,
    /// Images (or, for `.npz` statistics, nothing: 0) the reference side had.
    pub n_reference: usize,
    pub reference: String,
    pub weights: PathBuf,
    pub fid: f64,
    pub inception_score: InceptionScore,
    /// Against reference images only (statistics hold no features).
    pub precision_recall: Option<PrecisionRecall>,
    /// Wall time of the network per image, resizing included.
    pub seconds_per_image: f64,
}

impl InceptionReport {
    /// The plain-text table `scoregen eval --inception` prints.
    pub fn table(&self) -> String {
        let mut s = format!(
            "FID (Inception-v3 pool3)  {:.4}\nInception Score ({} splits)  {:.4} ± {:.4}\n",
            self.fid, self.inception_score.splits, self.inception_score.mean, self.inception_score.std
        );
        if let Some(pr) = &self.precision_recall {
            s += &format!("precision / recall (k = {})  {:.4} / {:.4}\n", pr.k, pr.precision, pr.recall);
        }
        s += &format!(
            "({} samples against {}; pytorch-fid's network with the weights of {}, {:.3} s per image; \
             comparable to papers with pytorch-fid's published weights and 50,000 samples)\n",
            self.n,
            self.reference,
            self.weights.display(),
            self.seconds_per_image
        );
        s
    }
}

/// Loads pytorch-fid's Inception-v3 from `weights`, an error naming the file otherwise.
pub fn load_inception(weights: &Path, device: &Device) -> Result<InceptionV3> {
    if !weights.is_file() {
        return Err(Error::data(
            weights,
            "no such file: give pytorch-fid's Inception weights as safetensors (scripts/convert-inception.py, docs/cifar10.md)",
        ));
    }
    InceptionV3::load(weights, device)
}

/// The Fréchet distance, Inception Score and precision/recall of `samples`
/// (flattened images of `shape` in data coordinates, `scale`) in the
/// Inception features of `weights`, against `reference`.
pub fn evaluate_inception(
    samples: &Points,
    shape: Option<(usize, usize, usize)>,
    scale: PixelScale,
    weights: &Path,
    reference: &InceptionReference,
    device: &Device,
    quiet: bool,
) -> Result<InceptionReport> {
    let net = load_inception(weights, device)?;
    let (ref_stats, ref_feats, n_reference, described, ref_shape) = match reference {
        InceptionReference::Stats(path) => {
            (GaussianStats::read_npz(path)?, None, 0, format!("the statistics in {}", path.display()), None)
        }
        InceptionReference::Images { source, n } => {
            let opts = data::ImageOptions { scale, ..data::ImageOptions::default() };
            let mut set = data::load_images(source, true, &opts)?;
            if set.len() > *n {
                set = set.select(&(0..*n).collect::<Vec<_>>());
            }
            let (f, _) = inception_outputs(&net, &set.to_points(scale), set.shape(), scale, source, quiet)?;
            let described = format!("{} training images of `{source}`", set.len());
            (GaussianStats::of(&f), Some(f), set.len(), described, Some(set.shape()))
        }
    };
    let shape = shape.or(ref_shape).or_else(|| square_image_shape(samples.d)).ok_or_else(|| {
        Error::Invalid(format!(
            "samples of dimension {} are not square images with 1 or 3 channels; save them as [N, C, H, W]",
            samples.d
        ))
    })?;
    let began = std::time::Instant::now();
    let (feats, logits) = inception_outputs(&net, samples, shape, scale, "the samples", quiet)?;
    let seconds_per_image = began.elapsed().as_secs_f64() / samples.n.max(1) as f64;
    if samples.n < 2 {
        return Err(Error::Invalid("FID needs at least 2 samples".into()));
    }
    let fid = frechet_distance(&GaussianStats::of(&feats), &ref_stats)?;
    let inception_score = fid::inception_score(&logits, IS_SPLITS.min(samples.n))?;
    let precision_recall = match &ref_feats {
        Some(r) if samples.n > K && r.n > K => {
            Some(precision_recall(&r.head(PRECISION_RECALL_MAX), &feats.head(PRECISION_RECALL_MAX), K)?)
        }
        _ => None,
    };
    Ok(InceptionReport {
        n: samples.n,
        n_reference,
        reference: described,
        weights: weights.to_path_buf(),
        fid,
        inception_score,
        precision_recall,
        seconds_per_image,
    })
}

/// (C, H, W) of a flattened square image with 3 or 1 channels: D = 3S² or S².
fn square_image_shape(d: usize) -> Option<(usize, usize, usize)> {
    let side = |n: usize| {
        let s = (n as f64).sqrt().round() as usize;
        (s * s == n && s > 0).then_some(s)
    };
    if d.is_multiple_of(3) {
        if let Some(s) = side(d / 3) {
            return Some((3, s, s));
        }
    }
    side(d).map(|s| (1, s, s))
}

/// What `scoregen eval` compares samples with.
pub enum Target {
    Mixture(GaussianMixture),
    Reference(Points),
}

impl Target {
    /// A toy mixture name, a mixture spec `.toml` or a reference `.npy`.
    pub fn parse(spec: &str) -> Result<Self> {
        if spec.ends_with(".npy") {
            return Ok(Target::Reference(npy::read_points(Path::new(spec))?));
        }
        let ds = data::load(spec, 1, &mut Rng::new(0, streams::ORACLE_PROBE))?;
        ds.oracle.map(Target::Mixture).ok_or_else(|| {
            Error::Invalid(format!("target `{spec}` has no exact density; give a mixture (gmm8, gmm25, unbalanced, *.toml) or a reference .npy"))
        })
    }
}

/// Metrics of a sample set against a target, with floors.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Evaluation {
    Mixture(MixtureReport),
    Reference { n: usize, distances: Distances, floor: Distances },
}

pub fn evaluate(samples: &Points, target: &Target, seed: u64) -> Result<Evaluation> {
    let mut rng = Rng::new(seed, streams::EVAL);
    match target {
        Target::Mixture(m) => {
            if m.dim() != samples.d {
                return Err(Error::Invalid(format!(
                    "samples have dimension {}, the target has {}",
                    samples.d,
                    m.dim()
                )));
            }
            Ok(Evaluation::Mixture(metrics::against_mixture(samples, m, &mut rng)))
        }
        Target::Reference(r) => {
            if r.d != samples.d {
                return Err(Error::Invalid(format!("samples have dimension {}, the reference has {}", samples.d, r.d)));
            }
            let (distances, floor) = metrics::against_reference(samples, r, &mut rng);
            Ok(Evaluation::Reference { n: samples.n.min(r.n / 2), distances, floor })
        }
    }
}

impl Evaluation {
    /// A plain-text table: metric, value, floor.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(6);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(7);
        let mut s = format!("{:<w0$}  {:>w1$}  {}\n", "metric", "samples", "floor (exact vs exact)");
        for (a, b, c) in rows {
            s += &format!("{a:<w0$}  {b:>w1$}  {c}\n");
        }
        s
    }

    /// The rows of [`Evaluation::table`]: (metric, samples, floor), formatted.
    pub fn rows(&self) -> Vec<(String, String, String)> {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let (d, f) = match self {
            Evaluation::Mixture(r) => (&r.distances, &r.floor),
            Evaluation::Reference { distances, floor, .. } => (distances, floor),
        };
        rows.push(("MMD² (RBF, median heuristic)".into(), format!("{:.5}", d.mmd2), format!("{:.5}", f.mmd2)));
        rows.push(("energy distance".into(), format!("{:.5}", d.energy), format!("{:.5}", f.energy)));
        rows.push(("sliced Wasserstein-2".into(), format!("{:.4}", d.sliced_w2), format!("{:.4}", f.sliced_w2)));
        if let Evaluation::Mixture(r) = self {
            let w = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ");
            rows.push((
                "modes covered".into(),
                format!("{}/{}", r.modes.covered, r.modes.n_modes),
                format!("{}/{}", r.modes_floor.covered, r.modes_floor.n_modes),
            ));
            let range = |v: &[f64]| {
                let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                if v.len() <= 2 {
                    w(v)
                } else {
                    format!("{lo:.3}–{hi:.3}")
                }
            };
            rows.push(("mode weights".into(), range(&r.modes.weights), range(&r.modes_floor.weights)));
            rows.push((
                "weight L1 error".into(),
                format!("{:.3}", r.modes.weight_l1),
                format!("{:.3}", r.modes_floor.weight_l1),
            ));
            rows.push((
                "off-manifold fraction".into(),
                format!("{:.4}", r.modes.off_manifold),
                format!("{:.4}", r.modes_floor.off_manifold),
            ));
            rows.push((
                "mean log p(x) (nats)".into(),
                format!("{:.3}", r.modes.mean_log_density),
                format!("{:.3}", r.modes_floor.mean_log_density),
            ));
        }
        rows
    }
}
