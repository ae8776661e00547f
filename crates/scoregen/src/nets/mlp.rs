//! Time-conditioned MLP for points in R^D.

use super::{GaussianFourier, Network};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// Width, depth and time embedding of a [`TimeMlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Hidden units per layer.
    pub width: usize,
    /// Number of hidden layers.
    pub depth: usize,
    /// Size of the Fourier time embedding (even).
    pub embed_dim: usize,
    /// Standard deviation of the Fourier frequencies.
    pub embed_scale: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            width: 128,
            depth: 3,
            embed_dim: 32,
            embed_scale: 4.0,
        }
    }
}

/// h₀ = [x, γ(t)], h_{l+1} = SiLU(W_l h_l + b_l) for `depth` layers, out = W h + b ∈ R^D.
/// The time embedding also enters every hidden layer additively, so deep
/// layers still see t.
pub struct TimeMlp {
    embed: GaussianFourier,
    input: Linear,
    time: Vec<Linear>,
    hidden: Vec<Linear>,
    output: Linear,
}

impl TimeMlp {
    /// Parameters are created (or loaded) through `vb` under the names
    /// `input`, `time.{l}`, `hidden.{l}`, `output`.
    pub fn new(vb: VarBuilder, dim: usize, cfg: &MlpConfig, seed: u64) -> Result<Self> {
        let embed = GaussianFourier::new(
            cfg.embed_dim,
            cfg.embed_scale,
            seed,
            vb.dtype(),
            vb.device(),
        )?;
        let input = linear(dim + cfg.embed_dim, cfg.width, vb.pp("input"))?;
        let time = (0..cfg.depth.saturating_sub(1))
            .map(|l| linear(cfg.embed_dim, cfg.width, vb.pp(format!("time.{l}"))))
            .collect::<Result<_>>()?;
        let hidden = (0..cfg.depth.saturating_sub(1))
            .map(|l| linear(cfg.width, cfg.width, vb.pp(format!("hidden.{l}"))))
            .collect::<Result<_>>()?;
        let output = linear(cfg.width, dim, vb.pp("output"))?;
        Ok(Self {
            embed,
            input,
            time,
            hidden,
            output,
        })
    }

    /// A network on the CPU in f32 whose parameters live in `vm`: new ones are
    /// drawn from `seed`, ones already in `vm` (a loaded checkpoint) are reused.
    pub fn build(vm: &candle_nn::VarMap, dim: usize, cfg: &MlpConfig, seed: u64) -> Result<Self> {
        let vb = super::seeded_var_builder(vm, seed, DType::F32, &Device::Cpu);
        Self::new(vb, dim, cfg, seed)
    }
}

impl Network for TimeMlp {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let emb = self.embed.forward(t)?.to_dtype(x.dtype())?;
        let mut h = self.input.forward(&Tensor::cat(&[x, &emb], 1)?)?.silu()?;
        for (layer, time) in self.hidden.iter().zip(&self.time) {
            h = (layer.forward(&h)? + time.forward(&emb)?)?.silu()?;
        }
        self.output.forward(&h)
    }
}
