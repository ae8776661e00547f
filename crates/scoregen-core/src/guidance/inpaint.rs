//! Inpainting and imputation for any coordinate mask (Song et al. 2021, App. I.2;
//! score_sde's `controllable_generation.get_pc_inpainter`).
//!
//! With Ω the known coordinates and y their observed values, every step of the
//! sampler is followed by x_Ω ← m(t)·y + s(t)·z, z ~ N(0, I): the known part is
//! the observation perturbed to the current noise level, so the unknown part
//! follows the reverse process of p_t(x_Ω̄ | x_Ω(t)), an approximation of the
//! conditional p_t(x_Ω̄ | y) that becomes exact as t → 0. The final sample
//! carries y itself on Ω.

use crate::error::{Error, Result};
use crate::io::npy;
use crate::points::Points;
use crate::rng::Rng;
use crate::samplers::Constraint;
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// The inpainting constraint: observations and a mask (1 = known, 0 = to fill),
/// each [N, D] or one row [1, D] shared by the batch.
#[derive(Debug, Clone)]
pub struct Inpaint {
    pub observed: Tensor,
    pub mask: Tensor,
}

impl Inpaint {
    /// Checks that observation and mask are [N or 1, D] of the same D.
    pub fn new(observed: Tensor, mask: Tensor) -> Result<Self> {
        let (_, d) = observed.dims2()?;
        let (_, dm) = mask.dims2()?;
        if d != dm {
            return Err(Error::Invalid(format!("the mask has {dm} coordinates, the observation {d}")));
        }
        Ok(Self { observed, mask })
    }
}

impl Constraint for Inpaint {
    fn apply(&self, x: Tensor, m: f64, s: f64, rng: &mut Rng) -> candle_core::Result<Tensor> {
        let (obs, mask) = (self.observed.to_dtype(x.dtype())?, self.mask.to_dtype(x.dtype())?);
        let mut known = obs.affine(m, 0.0)?.broadcast_as(x.shape())?.contiguous()?;
        if s > 0.0 {
            known = (known + rng.randn(x.shape(), x.dtype(), x.device())?.affine(s, 0.0)?)?;
        }
        let keep = mask.broadcast_as(x.shape())?;
        (&x - x.broadcast_mul(&keep)?)? + known.broadcast_mul(&keep)?
    }
}

/// Which coordinates are known (`--mask`): for images of shape (C, H, W), or
/// for points in R^D.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSpec {
    /// Images: the top half of the rows is known, the bottom half is filled in.
    /// Points: the first ⌊D/2⌋ coordinates (at least one) are known.
    Half,
    /// Images: a centred box of half the height and width is filled in.
    Box,
    /// Each coordinate is missing with probability p (one mask for the batch).
    Random(f64),
    /// A file of D values, 1 = known and 0 = missing: `.npy`, or a grayscale PNG
    /// of H×W pixels (white = known) for single-channel images.
    File(PathBuf),
    /// D values given in memory (Python's `mask=` array), 1 = known and 0 = missing.
    Values(Vec<f64>),
}

impl MaskSpec {
    pub const HELP: &'static str =
        "half, box, random:P (P = fraction missing) or a FILE (.npy of 0/1, or a PNG, white = known)";

    /// Parses `half`, `box`, `random:0.5` or a path.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "half" => Ok(Self::Half),
            "box" => Ok(Self::Box),
            _ => match s.strip_prefix("random:") {
                Some(p) => match p.parse::<f64>() {
                    Ok(p) if p > 0.0 && p < 1.0 => Ok(Self::Random(p)),
                    _ => Err(Error::Invalid(format!("--mask random:P needs 0 < P < 1, found `{p}`"))),
                },
                None if s.ends_with(".npy") || s.ends_with(".png") => Ok(Self::File(PathBuf::from(s))),
                None => Err(Error::Invalid(format!("--mask: expected {}, found `{s}`", Self::HELP))),
            },
        }
    }

    /// The mask over D coordinates (1.0 = known), for images of `shape` when
    /// given. Random masks draw from `rng`.
    pub fn build(&self, d: usize, shape: Option<(usize, usize, usize)>, rng: &mut Rng) -> Result<Vec<f64>> {
        let mask = match (self, shape) {
            (Self::Half, Some((c, h, w))) => pixel_mask(c, h, w, |r, _| r < h / 2),
            (Self::Half, None) => (0..d).map(|i| f64::from(u8::from(i < (d / 2).max(1)))).collect(),
            (Self::Box, Some((c, h, w))) => pixel_mask(c, h, w, |r, col| {
                !((h / 4..h / 4 + h / 2).contains(&r) && (w / 4..w / 4 + w / 2).contains(&col))
            }),
            (Self::Box, None) => {
                return Err(Error::Invalid("--mask box needs images; for points use half, random:P or a file".into()))
            }
            (Self::Random(p), _) => (0..d).map(|_| f64::from(u8::from(rng.uniform() >= *p))).collect(),
            (Self::File(path), _) => read_mask(path, d, shape)?,
            (Self::Values(v), _) => {
                if v.len() != d {
                    return Err(Error::Invalid(format!("mask: has {} values, the data has {d} coordinates", v.len())));
                }
                if v.iter().any(|&x| x != 0.0 && x != 1.0) {
                    return Err(Error::Invalid("mask: values must be 0 (missing) or 1 (known)".into()));
                }
                v.clone()
            }
        };
        if mask.iter().all(|&v| v == 1.0) {
            return Err(Error::Invalid("the mask leaves nothing to fill in (every coordinate is known)".into()));
        }
        Ok(mask)
    }
}

/// A (C, H, W) mask, row-major, known where `keep(row, col)`.
fn pixel_mask(c: usize, h: usize, w: usize, keep: impl Fn(usize, usize) -> bool) -> Vec<f64> {
    (0..c)
        .flat_map(|_| (0..h).flat_map(|r| (0..w).map(move |col| (r, col))))
        .map(|(r, col)| f64::from(u8::from(keep(r, col))))
        .collect()
}

fn read_mask(path: &Path, d: usize, shape: Option<(usize, usize, usize)>) -> Result<Vec<f64>> {
    let values: Vec<f64> = if path.extension().is_some_and(|e| e == "png") {
        let img = image::open(path).map_err(|e| Error::data(path, e.to_string()))?.to_luma8();
        let (w, h) = img.dimensions();
        match shape {
            Some((1, hh, ww)) if (hh, ww) == (h as usize, w as usize) => {}
            _ => {
                return Err(Error::data(
                    path,
                    format!(
                        "a PNG mask is for single-channel images of the data's size; it is {w}×{h}, the data {shape:?}"
                    ),
                ))
            }
        }
        img.pixels().map(|p| f64::from(u8::from(p.0[0] >= 128))).collect()
    } else {
        npy::read_points(path)?.data
    };
    if values.len() != d {
        return Err(Error::data(path, format!("the mask has {} values, the data has {d} coordinates", values.len())));
    }
    if values.iter().any(|&v| v != 0.0 && v != 1.0) {
        return Err(Error::data(path, "mask values must be 0 (missing) or 1 (known)"));
    }
    Ok(values)
}

/// The mask as a [1, D] row of `Points` (for writing and tensors).
pub fn mask_points(mask: &[f64]) -> Points {
    Points::new(1, mask.len(), mask.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// After the last step (m, s) = (1, 0) the known coordinates are the
    /// observation and the others untouched; at (m, s) the known part is
    /// m·y + s·z: its mean and std over 20,000 draws are within 5 standard errors.
    #[test]
    fn constraint_holds_the_known_part_to_the_perturbed_observation() {
        let obs = Tensor::new(&[[2.0f64, 0.0, -1.0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1.0f64, 0.0, 1.0]], &Device::Cpu).unwrap();
        let c = Inpaint::new(obs, mask).unwrap();
        let mut rng = Rng::new(0, 0);
        let x = rng.randn((20_000, 3), DType::F64, &Device::Cpu).unwrap().affine(5.0, 1.0).unwrap();
        let end = Points::from_tensor(&c.apply(x.clone(), 1.0, 0.0, &mut rng).unwrap()).unwrap();
        let before = Points::from_tensor(&x).unwrap();
        assert!(end.rows().zip(before.rows()).all(|(a, b)| a[0] == 2.0 && a[2] == -1.0 && a[1] == b[1]));
        let (m, s) = (0.6, 0.8);
        let mid = Points::from_tensor(&c.apply(x, m, s, &mut rng).unwrap()).unwrap();
        for (j, y) in [(0, 2.0), (2, -1.0)] {
            let v: Vec<f64> = mid.rows().map(|r| r[j]).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let std = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            let se = s / (v.len() as f64).sqrt();
            assert!((mean - m * y).abs() < 5.0 * se, "coordinate {j}: mean {mean}");
            assert!((std - s).abs() < 5.0 * s / (2.0 * v.len() as f64).sqrt(), "coordinate {j}: std {std}");
        }
    }

    /// The image masks keep what their names say on an 8×8 image, and bad
    /// specifications and files are errors that name the problem.
    #[test]
    fn masks_have_the_named_shapes_and_bad_ones_are_errors() {
        let mut rng = Rng::new(1, 0);
        let shape = Some((1, 8, 8));
        let half = MaskSpec::parse("half").unwrap().build(64, shape, &mut rng).unwrap();
        assert_eq!(half.iter().sum::<f64>(), 32.0);
        assert!(half[..32].iter().all(|&v| v == 1.0), "the top half is known");
        let boxed = MaskSpec::parse("box").unwrap().build(64, shape, &mut rng).unwrap();
        assert_eq!(boxed.iter().filter(|&&v| v == 0.0).count(), 16, "a 4×4 box is missing");
        assert_eq!((boxed[0], boxed[2 * 8 + 2], boxed[5 * 8 + 5], boxed[6 * 8 + 6]), (1.0, 0.0, 0.0, 1.0));
        let random = MaskSpec::parse("random:0.5").unwrap().build(10_000, None, &mut rng).unwrap();
        let missing = random.iter().filter(|&&v| v == 0.0).count() as f64 / 1e4;
        assert!((missing - 0.5).abs() < 0.025, "{missing}"); // 5 binomial sds
        assert_eq!(MaskSpec::parse("half").unwrap().build(2, None, &mut rng).unwrap(), vec![1.0, 0.0]);
        assert!(MaskSpec::parse("random:1.5").is_err());
        assert!(MaskSpec::parse("stripes").unwrap_err().to_string().contains("half, box, random:P"));
        assert!(MaskSpec::parse("box").unwrap().build(2, None, &mut rng).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.npy");
        npy::write_points(&f, &Points::new(1, 3, vec![1.0, 0.5, 0.0])).unwrap();
        let e = MaskSpec::File(f.clone()).build(3, None, &mut rng).unwrap_err().to_string();
        assert!(e.contains("m.npy") && e.contains("0 (missing) or 1"), "{e}");
        let e = MaskSpec::File(f).build(4, None, &mut rng).unwrap_err().to_string();
        assert!(e.contains("3 values") && e.contains("4 coordinates"), "{e}");
    }
}
