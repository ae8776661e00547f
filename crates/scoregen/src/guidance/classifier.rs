//! A classifier p(y | x) over points or flattened images: an MLP to K logits,
//! optionally time-conditioned (Gaussian Fourier features of t) and then
//! trained on data perturbed by an SDE, x(t) = m(t)·x(0) + s(t)·z with
//! t ~ U(ε, T): the noise-aware classifier p_t(y | x(t)) of classifier guidance
//! (Song et al. 2021, App. I.1). Without the time input it is a plain
//! classifier of clean data (for image metrics).

use super::ClassPosterior;
use crate::config::SdeConfig;
use crate::data::Points;
use crate::error::{Error, Result};
use crate::nets::{named_vars, Conditioning, Mlp, MlpConfig, Network};
use crate::rng::Rng;
use crate::sde::{per_example, Sde};
use crate::train::{checkpoint, Adam};
use crate::{autodiff, fsutil};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a classifier is: its input size, classes, network and noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub dim: usize,
    pub classes: usize,
    pub width: usize,
    pub depth: usize,
    pub embed_dim: usize,
    pub embed_scale: f64,
    /// The SDE whose perturbed data the classifier was trained on (time-conditioned),
    /// or `None` for a classifier of clean data.
    pub noise: Option<SdeConfig>,
    pub seed: u64,
}

/// How a classifier is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierTraining {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Smallest training time ε.
    pub t_eps: f64,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        Self { steps: 2000, batch_size: 128, lr: 2e-3, t_eps: 1e-3 }
    }
}

/// A trained (or training) classifier.
pub struct Classifier {
    pub cfg: ClassifierConfig,
    net: Mlp,
    varmap: VarMap,
    sde: Option<std::sync::Arc<dyn Sde>>,
}

impl Classifier {
    /// A fresh classifier (parameters drawn from `cfg.seed`).
    pub fn new(cfg: ClassifierConfig) -> Result<Self> {
        if cfg.classes < 2 || cfg.dim == 0 {
            return Err(Error::Invalid(format!("a classifier needs ≥ 2 classes and dim ≥ 1 (got {cfg:?})")));
        }
        let varmap = VarMap::new();
        let mlp =
            MlpConfig { width: cfg.width, depth: cfg.depth, embed_dim: cfg.embed_dim, embed_scale: cfg.embed_scale };
        let cond = if cfg.noise.is_some() { Conditioning::Fourier } else { Conditioning::None };
        let net = Mlp::build(&varmap, cfg.dim, cfg.classes, &mlp, cond, cfg.seed)?;
        let sde = cfg.noise.as_ref().map(|s| s.build());
        Ok(Self { cfg, net, varmap, sde })
    }

    /// Logits [N, K] of x [N, D] at times t [N] (ignored by a clean classifier).
    pub fn logits(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self.net.forward(&x.to_dtype(DType::F32)?, t)?.to_dtype(x.dtype())
    }

    /// The most probable class of each example, at time t (0 for clean data).
    pub fn predict(&self, x: &Points, t: f64) -> Result<Vec<usize>> {
        let xt = x.to_tensor(DType::F32, &Device::Cpu)?;
        let logits = self.logits(&xt, &Tensor::full(t as f32, x.n, &Device::Cpu)?)?;
        Ok(logits.argmax(1)?.to_vec1::<u32>()?.into_iter().map(|y| y as usize).collect())
    }

    /// Minimizes the cross-entropy −log p_t(y | x(t)) with Adam on (x, labels),
    /// perturbing each batch by the classifier's SDE when it has one. Returns the
    /// mean loss of the last 10 % of the steps.
    pub fn train(
        &mut self,
        x: &Points,
        labels: &[u8],
        opts: &ClassifierTraining,
        rng: &mut Rng,
        progress: &indicatif::ProgressBar,
    ) -> Result<f64> {
        if labels.len() != x.n || x.d != self.cfg.dim {
            return Err(Error::Invalid(format!(
                "classifier: {} points of dimension {} with {} labels, expected dimension {}",
                x.n,
                x.d,
                labels.len(),
                self.cfg.dim
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= self.cfg.classes) {
            return Err(Error::Invalid(format!("label {bad} is out of range for {} classes", self.cfg.classes)));
        }
        let params = named_vars(&self.varmap);
        let mut adam = Adam::new(&params)?;
        let (bs, d) = (opts.batch_size.max(1), x.d);
        let tail = (opts.steps / 10).max(1);
        let (mut acc, mut count) = (0.0, 0);
        progress.set_length(opts.steps as u64);
        for step in 0..opts.steps {
            let mut v = Vec::with_capacity(bs * d);
            let mut y = Vec::with_capacity(bs);
            for _ in 0..bs {
                let i = rng.below(x.n);
                v.extend(x.row(i).iter().map(|&c| c as f32));
                y.push(labels[i] as u32);
            }
            let x0 = Tensor::from_vec(v, (bs, d), &Device::Cpu)?;
            let (xt, t) = match &self.sde {
                Some(sde) => {
                    let t = rng.uniform_vec(bs, opts.t_eps, sde.t_max());
                    let (m, s): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| sde.marginal(t)).unzip();
                    let z = rng.randn((bs, d), DType::F32, &Device::Cpu)?;
                    let xt = (x0.broadcast_mul(&per_example(&m, &x0)?)? + z.broadcast_mul(&per_example(&s, &z)?)?)?;
                    (xt, Tensor::from_vec(t, bs, &Device::Cpu)?.to_dtype(DType::F32)?)
                }
                None => (x0, Tensor::zeros(bs, DType::F32, &Device::Cpu)?),
            };
            let y = Tensor::from_vec(y, bs, &Device::Cpu)?;
            let loss = candle_nn::loss::cross_entropy(&self.logits(&xt, &t)?, &y)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(Error::NonFinite {
                    what: "classifier loss".into(),
                    step: step + 1,
                    checkpoint: "none".into(),
                });
            }
            let grads = Adam::gradients(&params, &autodiff::backward(&loss)?)?;
            adam.step(&params, grads, opts.lr, 1.0)?;
            if step + tail >= opts.steps {
                acc += l;
                count += 1;
            }
            progress.inc(1);
        }
        progress.finish_and_clear();
        Ok(acc / count.max(1) as f64)
    }

    /// Writes `classifier.safetensors` and `classifier.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fsutil::create_dir(dir)?;
        let map: std::collections::HashMap<String, Tensor> =
            named_vars(&self.varmap).into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let path = dir.join("classifier.safetensors");
        let tmp = dir.join(".classifier.safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| Error::data(&tmp, format!("writing safetensors: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        let meta = serde_json::to_vec_pretty(&self.cfg).expect("classifier config serializes");
        fsutil::write_atomic(&dir.join("classifier.json"), &meta)
    }

    /// Reads a classifier written by [`Classifier::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let meta = dir.join("classifier.json");
        let text = std::fs::read_to_string(&meta).map_err(|e| Error::io(&meta, e))?;
        let cfg: ClassifierConfig = serde_json::from_str(&text).map_err(|e| Error::data(&meta, e.to_string()))?;
        let c = Self::new(cfg)?;
        let path = dir.join("classifier.safetensors");
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::data(&path, format!("reading safetensors: {e}")))?;
        checkpoint::assign(&named_vars(&c.varmap), &tensors, &path)?;
        Ok(c)
    }

    /// Fraction of `x` classified as `labels` at time t.
    pub fn accuracy(&self, x: &Points, labels: &[u8], t: f64) -> Result<f64> {
        let pred = self.predict(x, t)?;
        Ok(pred.iter().zip(labels).filter(|(p, &y)| **p == y as usize).count() as f64 / x.n.max(1) as f64)
    }
}

impl ClassPosterior for Classifier {
    fn classes(&self) -> usize {
        self.cfg.classes
    }

    /// log-softmax of the logits.
    fn log_posteriors(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.logits(x, t)?, D::Minus1)
    }

    /// ∇ₓ log p_t(y | x) by autodiff through the network.
    fn grad_log_posterior(&self, x: &Tensor, t: &Tensor, y: usize) -> candle_core::Result<Tensor> {
        if y >= self.cfg.classes {
            candle_core::bail!("class {y} is out of range: the classifier knows classes 0..{}", self.cfg.classes - 1);
        }
        let leaf = Var::from_tensor(&x.detach())?;
        let logp = self.log_posteriors(leaf.as_tensor(), t)?.narrow(1, y, 1)?;
        Ok(autodiff::grad_wrt(&logp, leaf.as_tensor())?.detach())
    }
}
