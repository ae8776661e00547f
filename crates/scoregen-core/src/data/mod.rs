//! Data: toy 2-D sets, Gaussian-mixture specs, image sets, batching.
//! `Points` and `.npy` io live in the foundation ([`crate::points`],
//! [`crate::io::npy`]) and are re-exported here for users of the data API.

pub mod cifar;
pub mod images;
pub mod spec;
pub mod toy;

pub use crate::io::npy;
pub use crate::points::Points;
pub use images::{ImageSet, PixelScale};

use crate::error::{Error, Result};
use crate::oracle::GaussianMixture;
use crate::rng::Rng;
use std::path::Path;

/// A training set, and its exact density when it is a Gaussian mixture.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// What the user named: a toy set name or a file path.
    pub name: String,
    pub points: Points,
    pub oracle: Option<GaussianMixture>,
    /// (C, H, W) when the points are flattened images.
    pub image_shape: Option<(usize, usize, usize)>,
    /// Class labels, one per point, when the source has them (images; the
    /// component of each point of a Gaussian mixture).
    pub labels: Option<Vec<u8>>,
}

/// How image sources are read: pixel scaling and the held-out fraction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageOptions {
    pub scale: PixelScale,
    /// Fraction of a set without its own test split (`digits`, `mnist5k`, PNG
    /// folders) held out, by a permutation seeded with `split_seed`.
    pub test_fraction: f64,
    pub split_seed: u64,
}

impl Default for ImageOptions {
    fn default() -> Self {
        Self { scale: PixelScale::Symmetric, test_fraction: 0.1, split_seed: 0 }
    }
}

/// True when `source` names image data (a named set, `cifar10:DIR`,
/// `cifar100:DIR`, an IDX file or a folder).
pub fn is_image_source(source: &str) -> bool {
    images::named(source).is_some()
        || cifar::cifar10_dir(source).is_some()
        || cifar::cifar100_dir(source).is_some()
        || images::idx_labels_path(Path::new(source)).is_some()
        || Path::new(source).is_dir()
}

/// The (C, H, W) of a named image set, without reading it.
pub fn image_shape_of(source: &str) -> Option<(usize, usize, usize)> {
    if cifar::cifar10_dir(source).is_some() || cifar::cifar100_dir(source).is_some() {
        return Some((3, 32, 32));
    }
    images::named(source).map(|s| s.shape)
}

/// The training or test part of an image source. `fashion-mnist`, IDX files
/// (`train-…` / `t10k-…`) and CIFAR folders (`cifar10:DIR`: the five data
/// batches / `test_batch`; `cifar100:DIR`: `train.bin` / `test.bin`) use their
/// own files; the others are split.
pub fn load_images(source: &str, train: bool, opts: &ImageOptions) -> Result<ImageSet> {
    let path = Path::new(source);
    let (set, pre_split) = if let Some(named) = images::named(source) {
        ((named.load)(train)?, named.ships_split)
    } else if let Some(dir) = cifar::cifar10_dir(source) {
        (cifar::read_cifar10_dir(dir, train)?, true)
    } else if let Some(dir) = cifar::cifar100_dir(source) {
        (cifar::read_cifar100_dir(dir, train)?, true)
    } else if let Some(labels) = images::idx_labels_path(path) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let pre = name.starts_with("train-") || name.starts_with("t10k-");
        let (ip, lp) = if pre && !train {
            let swap =
                |p: &Path| p.with_file_name(p.file_name().unwrap().to_str().unwrap().replacen("train-", "t10k-", 1));
            (swap(path), swap(&labels))
        } else {
            (path.to_path_buf(), labels)
        };
        (images::read_idx(&ip, &lp)?, pre)
    } else if path.is_dir() {
        (images::read_png_dir(path)?, false)
    } else {
        return Err(Error::Invalid(format!(
            "unknown image source `{source}`: expected one of {}, `cifar10:DIR`, `cifar100:DIR`, an IDX `*-images-idx3-ubyte[.gz]` file or a folder of PNGs",
            images::names().join(", ")
        )));
    };
    if pre_split {
        return Ok(set);
    }
    let (tr, te) = set.split(opts.test_fraction, opts.split_seed);
    Ok(if train { tr } else { te })
}

/// Where training data comes from: a toy set by name, a mixture spec (`.toml`),
/// a `.npy` file, or images (read with default [`ImageOptions`]).
pub fn load(source: &str, n: usize, rng: &mut Rng) -> Result<Dataset> {
    load_with(source, n, rng, &ImageOptions::default())
}

/// [`load`] with explicit image options. Images: the training part, at most
/// `n` of them, flattened to points in R^{C·H·W}.
pub fn load_with(source: &str, n: usize, rng: &mut Rng, opts: &ImageOptions) -> Result<Dataset> {
    if is_image_source(source) {
        let mut set = load_images(source, true, opts)?;
        if set.len() > n {
            set = set.select(&(0..n).collect::<Vec<_>>());
        }
        if set.is_empty() {
            return Err(Error::data(source, "the data set is empty"));
        }
        return Ok(Dataset {
            name: source.to_string(),
            points: set.to_points(opts.scale),
            oracle: None,
            image_shape: Some(set.shape()),
            labels: Some(set.labels),
        });
    }
    let path = Path::new(source);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    // a mixture's points are labeled by their component (the classes of guidance)
    let mut image_shape = None;
    let (points, oracle, labels) = match ext {
        "npy" => {
            let (points, shape) = npy::read_points_shaped(path)?;
            if let [_, c, h, w] = shape[..] {
                image_shape = Some((c, h, w));
            }
            let labels = npy_labels(path, points.n)?;
            (points, None, labels)
        }
        "toml" => {
            let mix = spec::read_mixture(path)?;
            let (pts, labels) = mix.sample_labeled(n, rng);
            (pts, Some(mix), Some(labels))
        }
        _ => {
            let toy = toy::Toy::by_name(source).ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown data set `{source}`: expected one of {}, {}, a path ending in .npy or .toml, `cifar10:DIR`, `cifar100:DIR`, an IDX file or a folder of PNGs",
                    toy::names().join(", "),
                    images::names().join(", ")
                ))
            })?;
            match toy.mixture() {
                Some(mix) => {
                    let (pts, labels) = mix.sample_labeled(n, rng);
                    (pts, Some(mix), Some(labels))
                }
                None => (toy.sample(n, rng), None, None),
            }
        }
    };
    if points.n == 0 {
        return Err(Error::data(source, "the data set is empty"));
    }
    Ok(Dataset { name: source.to_string(), points, oracle, image_shape, labels })
}

/// The class labels of a `.npy` data set, when `X.labels.npy` lies beside
/// `X.npy`: one integer 0…255 per row ([N] or [N, 1], float32 or float64, as
/// `scoregen inpaint` writes them and `scoregen.train(data=…, labels=…)` saves them).
fn npy_labels(path: &Path, n: usize) -> Result<Option<Vec<u8>>> {
    let file = path.with_extension("labels.npy");
    if !file.exists() {
        return Ok(None);
    }
    let l = npy::read_points(&file)?;
    if l.n != n || l.d != 1 {
        return Err(Error::data(
            &file,
            format!("expected {n} labels (one per row of the data), found [{}, {}]", l.n, l.d),
        ));
    }
    if let Some(bad) = l.data.iter().find(|&&v| !(0.0..=255.0).contains(&v) || v.fract() != 0.0) {
        return Err(Error::data(&file, format!("labels must be integers 0…255, found {bad}")));
    }
    Ok(Some(l.data.iter().map(|&v| v as u8).collect()))
}
