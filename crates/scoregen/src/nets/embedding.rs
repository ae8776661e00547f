//! Gaussian Fourier features of time (Tancik et al. 2020; score_sde's
//! `GaussianFourierProjection`).

use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor};
use std::f64::consts::PI;

/// γ(t) = [sin(2π W t), cos(2π W t)] with fixed W_j ~ N(0, scale²).
///
/// W is not trained (as in score_sde); it is a pure function of
/// (dim, scale, seed), so a checkpoint need not store it.
#[derive(Debug, Clone)]
pub struct GaussianFourier {
    /// 2π·W as a [1, dim/2] row.
    freqs: Tensor,
}

impl GaussianFourier {
    /// `dim` must be even: half sines, half cosines.
    pub fn new(dim: usize, scale: f64, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let mut rng = Rng::new(seed, 0xF0F0);
        let w: Vec<f64> = (0..dim / 2).map(|_| 2.0 * PI * scale * rng.normal()).collect();
        Ok(Self { freqs: Tensor::from_vec(w, (1, dim / 2), device)?.to_dtype(dtype)? })
    }

    /// t [N] → features [N, dim].
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let arg = t.unsqueeze(1)?.to_dtype(self.freqs.dtype())?.broadcast_mul(&self.freqs)?;
        Tensor::cat(&[arg.sin()?, arg.cos()?], 1)
    }
}
