//! Inpainting and imputation for any coordinate mask (Song et al. 2021, App. I.2;
//! score_sde's `controllable_generation.get_pc_inpainter`).
//!
//! With Ω the known coordinates and y their observed values, every step of the
//! sampler is followed by x_Ω ← m(t)·y + s(t)·z, z ~ N(0, I): the known part is
//! the observation perturbed to the current noise level, so the unknown part
//! follows the reverse process of p_t(x_Ω̄ | x_Ω(t)), an approximation of the
//! conditional p_t(x_Ω̄ | y) that becomes exact as t → 0. The final sample
//! carries y itself on Ω.

use crate::data::{npy, Points};
use crate::error::{Error, Result};
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
    let values: Vec<f64> =
        if path.extension().is_some_and(|e| e == "png") {
            let img = image::open(path).map_err(|e| Error::data(path, e.to_string()))?.to_luma8();
            let (w, h) = img.dimensions();
            match shape {
                Some((1, hh, ww)) if (hh, ww) == (h as usize, w as usize) => {}
                _ => return Err(Error::data(
                    path,
                    format!(
                        "a PNG mask is for single-channel images of the data's size; it is {w}×{h}, the data {shape:?}"
                    ),
                )),
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
