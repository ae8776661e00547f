//! Gaussian Fourier features of time (Tancik et al. 2020; score_sde's
//! `GaussianFourierProjection`).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};
use scoregen_core::host;
use scoregen_core::rng::{streams, Rng};
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
        let mut rng = Rng::new(seed, streams::FOURIER_FEATURES);
        let w: Vec<f64> = (0..dim / 2).map(|_| 2.0 * PI * scale * rng.normal()).collect();
        Ok(Self { freqs: Tensor::from_vec(w, (1, dim / 2), device)?.to_dtype(dtype)? })
    }

    /// 2π·W, the [1, dim/2] row of angular frequencies (for readers of a
    /// checkpoint elsewhere, e.g. the Python package's PyTorch loader).
    pub fn frequencies(&self) -> &Tensor {
        &self.freqs
    }

    /// t [N] → features [N, dim]. On the CPU, when every t is the same (a
    /// sampler's step), one row is computed and repeated; on another device
    /// every row is computed, so t is never read back ([`host::peek_cpu`]).
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let n = t.dim(0)?;
        if n > 1 && !t.track_op() && host::peek_cpu::<f64>(t)?.is_some_and(|ts| ts.iter().all(|&v| v == ts[0])) {
            let row = self.features(&t.narrow(0, 0, 1)?)?;
            return row.broadcast_as((n, row.dim(1)?))?.contiguous();
        }
        self.features(t)
    }

    /// [sin(2π W t), cos(2π W t)] row by row.
    fn features(&self, t: &Tensor) -> Result<Tensor> {
        let arg = t.unsqueeze(1)?.to_dtype(self.freqs.dtype())?.broadcast_mul(&self.freqs)?;
        Tensor::cat(&[arg.sin()?, arg.cos()?], 1)
    }
}

/// A learned embedding c(y) of a class label y ∈ {0, …, K−1}, plus one more row
/// for y = K, "no label": the null token of classifier-free guidance (Ho &
/// Salimans 2022). Added to the time embedding, as in ADM (Dhariwal & Nichol 2021).
pub struct ClassEmbedding {
    table: Embedding,
    classes: usize,
}

impl ClassEmbedding {
    /// K + 1 rows of size `dim`, named `classes.weight`.
    pub fn new(classes: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { table: embedding(classes + 1, dim, vb.pp("classes"))?, classes })
    }

    /// K, the number of real classes (the null token is label K).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// labels [N] (u32, K = no label) → c(y) [N, dim]; a label above K is an
    /// error. The check reads the labels where they already are in host
    /// memory; on another device they are not read back (the front ends check
    /// the labels they are given before any tensor is made).
    pub fn forward(&self, labels: &Tensor) -> Result<Tensor> {
        if let Some(max) = host::peek_cpu::<u32>(labels)?.and_then(|l| l.into_iter().max()) {
            if max as usize > self.classes {
                candle_core::bail!(
                    "class label {max} is out of range: the model knows classes 0..{}",
                    self.classes - 1
                );
            }
        }
        self.table.forward(labels)
    }
}
