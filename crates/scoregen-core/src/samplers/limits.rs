//! Limits on the denoised estimate x̂₀ = D(x, σ), as a [`Denoiser`] wrapper so
//! that every σ-space sampler gets them (`--clip-denoised`, `--threshold P`).
//!
//! - Clipping (diffusers' DDIM `clip_sample`, `clip_sample_range` = r):
//!   x̂₀ ← clamp(x̂₀, −r, r).
//! - Dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image
//!   Diffusion Models with Deep Language Understanding", §2.3; diffusers'
//!   `_threshold_sample`): per example, s = the P-quantile of |x̂₀| over all its
//!   coordinates (linear interpolation, as `torch.quantile`), s ← clamp(s, r,
//!   s_max), x̂₀ ← clamp(x̂₀, −s, s)·r/s. With r = 1 this is diffusers'
//!   formula (`sample_max_value` = s_max; its default 1 makes it plain
//!   clipping, Saharia's has no s_max: ∞ here).
//!
//! Every σ-space sampler here derives its direction from D
//! ([`super::denoiser::to_d`]): ε̂ = (x_σ − x̂₀)/σ, the t-space
//! ε̂ = (x_t − √ᾱ·x̂₀)/√(1 − ᾱ); so limiting D recomputes ε̂ from the limited
//! x̂₀. That is diffusers' DDIM with `use_clipped_model_output=True`; its
//! default (and `DDIMPipeline`'s) keeps the model's ε̂, an O(1) difference
//! wherever the limit acts (docs/guide.md §13). `ddim` with
//! `sampling.keep_model_eps` (`--keep-model-eps`) is that default: the step
//! reads both D's through [`Denoiser::denoise_and_raw`].

use super::denoiser::Denoiser;
use candle_core::{Result, Tensor};

/// What happens to x̂₀ (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum X0Limit {
    /// Clamp to [−range, range].
    Clip { range: f64 },
    /// Dynamic thresholding at the `ratio`-quantile of |x̂₀|, s ∈ [range, max].
    Threshold { ratio: f64, range: f64, max: f64 },
}

impl X0Limit {
    /// The limited x̂₀, same shape and dtype.
    pub fn apply(&self, x0: &Tensor) -> Result<Tensor> {
        match *self {
            X0Limit::Clip { range } => x0.clamp(-range, range),
            X0Limit::Threshold { ratio, range, max } => {
                let (dtype, shape) = (x0.dtype(), x0.shape().clone());
                let rows = crate::host::vec2::<f64>(&x0.flatten_from(1)?)?;
                let mut out = Vec::with_capacity(rows.len() * rows.first().map_or(0, Vec::len));
                for row in &rows {
                    let s = quantile_abs(row, ratio).clamp(range, max.max(range));
                    out.extend(row.iter().map(|v| v.clamp(-s, s) * range / s));
                }
                Tensor::from_vec(out, shape, x0.device())?.to_dtype(dtype)
            }
        }
    }
}

/// The q-quantile of |v| with linear interpolation between order statistics
/// (`torch.quantile`'s default): position q·(n − 1) in the sorted values.
pub fn quantile_abs(v: &[f64], q: f64) -> f64 {
    let mut a: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    a.sort_by(f64::total_cmp);
    if a.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (a.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    let hi = (lo + 1).min(a.len() - 1);
    a[lo] + frac * (a[hi] - a[lo])
}

/// A denoiser whose x̂₀ is limited by `limit`.
pub struct LimitedDenoiser<'a> {
    pub inner: &'a dyn Denoiser,
    pub limit: X0Limit,
}

impl Denoiser for LimitedDenoiser<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.limit.apply(&self.inner.denoise(x, sigma)?)
    }

    fn denoise_and_raw(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor)> {
        let raw = self.inner.denoise(x, sigma)?;
        Ok((self.limit.apply(&raw)?, raw))
    }

    fn sigma_range(&self) -> (f64, f64) {
        self.inner.sigma_range()
    }

    fn to_time_space(&self, x: &Tensor, sigma: f64) -> Result<(f64, Tensor)> {
        self.inner.to_time_space(x, sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Thresholding by hand: the row (0.5, −3, 2, 1) has |·| sorted (0.5, 1, 2, 3);
    /// the 0.9-quantile sits at position 2.7: s = 2 + 0.7·1 = 2.7; so x̂₀ =
    /// clamp(x, −2.7, 2.7)/2.7. A row inside [−1, 1] has s clamped up to 1 and
    /// is unchanged; s_max = 2 caps s at 2. With range 3 the same row is
    /// scaled into [−3, 3]: s = clamp(2.7, 3, ∞) = 3, unchanged. Clipping clamps.
    #[test]
    fn thresholding_matches_saharia_by_hand() {
        let x = Tensor::new(&[[0.5f64, -3.0, 2.0, 1.0], [0.1, -0.2, 0.3, 0.9]], &Device::Cpu).unwrap();
        let got = |l: X0Limit| l.apply(&x).unwrap().to_vec2::<f64>().unwrap();
        let t = got(X0Limit::Threshold { ratio: 0.9, range: 1.0, max: f64::INFINITY });
        let want = [0.5 / 2.7, -1.0, 2.0 / 2.7, 1.0 / 2.7];
        assert!(t[0].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15), "{t:?}");
        assert_eq!(t[1], [0.1, -0.2, 0.3, 0.9]);
        let capped = got(X0Limit::Threshold { ratio: 0.9, range: 1.0, max: 2.0 });
        assert_eq!(capped[0], [0.25, -1.0, 1.0, 0.5]);
        let wide = got(X0Limit::Threshold { ratio: 0.9, range: 3.0, max: f64::INFINITY });
        assert_eq!(wide[0], [0.5, -3.0, 2.0, 1.0]);
        assert_eq!(got(X0Limit::Clip { range: 1.0 })[0], [0.5, -1.0, 1.0, 1.0]);
        assert!((quantile_abs(&[3.0, -1.0], 0.5) - 2.0).abs() < 1e-15);
    }
}
