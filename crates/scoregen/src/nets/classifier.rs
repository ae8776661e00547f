//! A classifier p_φ(y | x) — or, noise-aware, p_φ(y | x(t), t) — over flattened
//! points or images.
//!
//! Two uses: image metrics (its penultimate features define the space of the
//! Fréchet distance, its predictions the class histogram and confidence), and
//! classifier guidance (a noise-aware classifier supplies ∇ₓ log p_t(y | x)).
//! One network serves both; the time input is present only when
//! `noise_aware` is set.
//!
//! Images whose sides are multiples of 4 get a small CNN: conv3 → GN, SiLU →
//! conv3/2 → GN, SiLU → conv3/2 → GN, SiLU → global mean over pixels →
//! features (2·width). Other data get an MLP with two SiLU layers of `width`.
//! The time embedding (Gaussian Fourier features of t, then a linear map) is
//! added after the first layer (after its norm, for the CNN).

use super::unet::Conv;
use super::{seeded_var_builder, GaussianFourier};
use crate::error::{Error, Result as CrateResult};
use crate::guidance::ClassPosterior;
use crate::io::fs;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{group_norm, linear, GroupNorm, Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything that fixes a classifier's architecture (stored beside its weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    pub classes: usize,
    /// Input dimension D (C·H·W for images).
    pub dim: usize,
    /// (C, H, W) when the input is a flattened image.
    pub image_shape: Option<(usize, usize, usize)>,
    /// CNN base channels or MLP hidden width.
    pub width: usize,
    /// Takes the diffusion time t as a second input.
    pub noise_aware: bool,
    pub embed_dim: usize,
    pub embed_scale: f64,
    /// Seed of the initial weights and of the Fourier frequencies.
    pub seed: u64,
}

impl ClassifierSpec {
    /// GroupNorm groups for `ch` channels: 8 when they divide, else 1.
    fn groups(ch: usize) -> usize {
        if ch.is_multiple_of(8) {
            8
        } else {
            1
        }
    }

    /// True when the CNN body applies (an image with sides divisible by 4).
    pub fn convolutional(&self) -> bool {
        matches!(self.image_shape, Some((_, h, w)) if h % 4 == 0 && w % 4 == 0 && h >= 4 && w >= 4)
    }

    /// The width of the feature vector the Fréchet distance uses.
    pub fn feature_dim(&self) -> usize {
        if self.convolutional() {
            2 * self.width
        } else {
            self.width
        }
    }
}

// one per classifier, built once: the size of the larger variant costs nothing
#[allow(clippy::large_enum_variant)]
enum Body {
    Cnn { c1: Conv, n1: GroupNorm, c2: Conv, n2: GroupNorm, c3: Conv, n3: GroupNorm },
    Mlp { l1: Linear, l2: Linear },
}

pub struct Classifier {
    pub spec: ClassifierSpec,
    body: Body,
    time: Option<(GaussianFourier, Linear)>,
    head: Linear,
    device: Device,
}

impl Classifier {
    /// Builds the network on `device` with parameters in `vm` (new ones seeded by `spec.seed`).
    pub fn build(vm: &VarMap, spec: &ClassifierSpec, device: &Device) -> CrateResult<Self> {
        if spec.classes < 2 || spec.width == 0 || spec.dim == 0 {
            return Err(Error::Invalid(format!(
                "classifier needs ≥ 2 classes, width ≥ 1 and a non-empty input (got {} classes, width {}, dim {})",
                spec.classes, spec.width, spec.dim
            )));
        }
        if spec.noise_aware && (spec.embed_dim == 0 || !spec.embed_dim.is_multiple_of(2)) {
            return Err(Error::Invalid(format!("classifier embed_dim must be even and > 0 (got {})", spec.embed_dim)));
        }
        let vb = seeded_var_builder(vm, spec.seed, DType::F32, device);
        Ok(Self::new(vb, spec)?)
    }

    fn new(vb: VarBuilder, spec: &ClassifierSpec) -> Result<Self> {
        let w = spec.width;
        let (body, first) = if spec.convolutional() {
            let c = spec.image_shape.map(|s| s.0).unwrap_or(1);
            let g1 = ClassifierSpec::groups(w);
            let g2 = ClassifierSpec::groups(2 * w);
            let body = Body::Cnn {
                c1: Conv::new(c, w, 3, 1, vb.pp("conv1"))?,
                n1: group_norm(g1, w, 1e-6, vb.pp("norm1"))?,
                c2: Conv::new(w, 2 * w, 3, 2, vb.pp("conv2"))?,
                n2: group_norm(g2, 2 * w, 1e-6, vb.pp("norm2"))?,
                c3: Conv::new(2 * w, 2 * w, 3, 2, vb.pp("conv3"))?,
                n3: group_norm(g2, 2 * w, 1e-6, vb.pp("norm3"))?,
            };
            (body, w)
        } else {
            (Body::Mlp { l1: linear(spec.dim, w, vb.pp("l1"))?, l2: linear(w, w, vb.pp("l2"))? }, w)
        };
        let time = if spec.noise_aware {
            let fourier = GaussianFourier::new(spec.embed_dim, spec.embed_scale, spec.seed, DType::F32, vb.device())?;
            Some((fourier, linear(spec.embed_dim, first, vb.pp("time"))?))
        } else {
            None
        };
        let head = linear(spec.feature_dim(), spec.classes, vb.pp("head"))?;
        let device = vb.device().clone();
        Ok(Self { spec: spec.clone(), body, time, head, device })
    }

    /// Features φ(x, t) [N, feature_dim] of flattened inputs x [N, D]; `t` [N]
    /// is used only by a noise-aware classifier (pass `None` otherwise).
    pub fn features(&self, x: &Tensor, t: Option<&Tensor>) -> Result<Tensor> {
        let n = x.dim(0)?;
        let temb = match (&self.time, t) {
            (Some((fourier, lin)), Some(t)) => Some(lin.forward(&fourier.forward(t)?)?),
            (Some(_), None) => candle_core::bail!("a noise-aware classifier needs the time t"),
            (None, _) => None,
        };
        match &self.body {
            Body::Cnn { c1, n1, c2, n2, c3, n3 } => {
                let (c, h, w) = self.spec.image_shape.expect("convolutional() checked the shape");
                // The embedding is added after the norm: GroupNorm would remove a per-channel constant.
                let mut h1 = n1.forward(&c1.forward(&x.reshape((n, c, h, w))?)?)?;
                if let Some(e) = temb {
                    h1 = h1.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?;
                }
                let h2 = c2.forward(&h1.silu()?)?;
                let h3 = c3.forward(&n2.forward(&h2)?.silu()?)?;
                n3.forward(&h3)?.silu()?.mean((2, 3))
            }
            Body::Mlp { l1, l2 } => {
                let mut h1 = l1.forward(x)?;
                if let Some(e) = temb {
                    h1 = h1.broadcast_add(&e)?;
                }
                l2.forward(&h1.silu()?)?.silu()
            }
        }
    }

    /// The device its parameters live on (inputs go there).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits [N, K].
    pub fn logits(&self, x: &Tensor, t: Option<&Tensor>) -> Result<Tensor> {
        self.head.forward(&self.features(x, t)?)
    }

    /// log p_φ(y | x, t) for every class, [N, K].
    pub fn log_probs(&self, x: &Tensor, t: Option<&Tensor>) -> Result<Tensor> {
        candle_nn::ops::log_softmax(&self.logits(x, t)?, 1)
    }
}

/// A classifier with its weights and what it was trained on.
pub struct SavedClassifier {
    pub classifier: Classifier,
    pub varmap: VarMap,
    pub meta: ClassifierMeta,
}

/// `classifier.json`: the spec and the training record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierMeta {
    pub spec: ClassifierSpec,
    /// The data source it was trained on and its pixel scale (`symmetric` or `unit`).
    pub data: String,
    pub scale: crate::data::PixelScale,
    /// The held-out fraction of sources without their own test split.
    pub test_fraction: f64,
    pub steps: usize,
    /// Accuracy on the held-out split (at t = t_eps for a noise-aware one).
    pub test_accuracy: f64,
    /// The SDE a noise-aware classifier was trained under (`ve`, `vp`, `subvp`).
    pub sde: Option<String>,
}

pub const WEIGHTS: &str = "classifier.safetensors";
pub const META: &str = "classifier.json";

impl SavedClassifier {
    /// Writes `classifier.safetensors` and `classifier.json` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> CrateResult<()> {
        fs::create_dir(dir)?;
        // copied to the CPU: the file does not depend on the device it was trained on
        let tensors: std::collections::HashMap<String, Tensor> = super::named_vars(&self.varmap)
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        let (path, tmp) = (dir.join(WEIGHTS), dir.join(format!(".{WEIGHTS}.tmp")));
        candle_core::safetensors::save(&tensors, &tmp)
            .and_then(|_| Ok(std::fs::File::open(&tmp)?.sync_all()?))
            .map_err(|e| Error::data(&tmp, format!("writing safetensors: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        let json = serde_json::to_vec_pretty(&self.meta).expect("meta serializes");
        fs::write_atomic(&dir.join(META), &json)
    }

    /// Reads a classifier written by [`SavedClassifier::save`] onto `device`;
    /// names and shapes of the weights are checked against the spec.
    pub fn load(dir: &Path, device: &Device) -> CrateResult<Self> {
        let meta_path = dir.join(META);
        let text = std::fs::read_to_string(&meta_path).map_err(|e| {
            Error::data(&meta_path, format!("{e} (train one with `scoregen train-classifier --data NAME --out DIR`)"))
        })?;
        let meta: ClassifierMeta = serde_json::from_str(&text)
            .map_err(|e| Error::data(&meta_path, format!("not a classifier record: {e}")))?;
        let varmap = VarMap::new();
        let classifier = Classifier::build(&varmap, &meta.spec, device)?;
        let path = dir.join(WEIGHTS);
        // Parsed, float-only and finite-checked like a checkpoint's tensors.
        let tensors = crate::io::safetensors::read_tensors(&path)?;
        crate::io::safetensors::assign(&super::named_vars(&varmap), &tensors, &path)?;
        Ok(Self { classifier, varmap, meta })
    }
}

/// The project's classifier, noise-aware (trained on x(t) with its time input):
/// p_φ(y | x(t), t), its gradient by autodiff through the network.
impl ClassPosterior for Classifier {
    fn classes(&self) -> usize {
        self.spec.classes
    }
    fn log_posteriors(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let t = self.spec.noise_aware.then(|| t.to_dtype(DType::F32)).transpose()?;
        self.log_probs(&x.to_dtype(DType::F32)?, t.as_ref())?.to_dtype(x.dtype())
    }
    fn grad_log_posterior(&self, x: &Tensor, t: &Tensor, y: usize) -> Result<Tensor> {
        if y >= self.spec.classes {
            candle_core::bail!("class {y} is out of range: the classifier knows classes 0..{}", self.spec.classes - 1);
        }
        let leaf = Var::from_tensor(&x.detach())?;
        let logp = self.log_posteriors(leaf.as_tensor(), t)?.narrow(1, y, 1)?;
        Ok(crate::autodiff::grad_wrt(&logp, leaf.as_tensor())?.detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: Option<(usize, usize, usize)>, noise_aware: bool) -> ClassifierSpec {
        let dim = image.map(|(c, h, w)| c * h * w).unwrap_or(2);
        ClassifierSpec {
            classes: 3,
            dim,
            image_shape: image,
            width: 8,
            noise_aware,
            embed_dim: 8,
            embed_scale: 4.0,
            seed: 1,
        }
    }

    #[test]
    fn shapes_of_features_and_logits() {
        for (image, feat) in [(Some((1, 8, 8)), 16), (Some((1, 7, 7)), 8), (None, 8)] {
            let s = spec(image, true);
            let vm = VarMap::new();
            let c = Classifier::build(&vm, &s, &Device::Cpu).unwrap();
            let x = Tensor::randn(0f32, 1.0, (5, s.dim), &Device::Cpu).unwrap();
            let t = Tensor::full(0.3f32, 5, &Device::Cpu).unwrap();
            assert_eq!(c.features(&x, Some(&t)).unwrap().dims(), &[5, feat]);
            let lp = c.log_probs(&x, Some(&t)).unwrap();
            assert_eq!(lp.dims(), &[5, 3]);
            // log-probabilities: each row's exponentials sum to one.
            let sums = lp.exp().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
            assert!(c.features(&x, None).is_err(), "a noise-aware classifier must refuse a missing t");
        }
    }

    #[test]
    fn time_changes_the_prediction_of_a_noise_aware_classifier() {
        let s = spec(Some((1, 8, 8)), true);
        let c = Classifier::build(&VarMap::new(), &s, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).unwrap();
        let at = |t: f32| c.logits(&x, Some(&Tensor::full(t, 4, &Device::Cpu).unwrap())).unwrap();
        let diff = (at(0.1) - at(0.9)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff > 1e-4, "logits ignore t (max change {diff})");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(Some((1, 8, 8)), false);
        let varmap = VarMap::new();
        let classifier = Classifier::build(&varmap, &s, &Device::Cpu).unwrap();
        let meta = ClassifierMeta {
            spec: s.clone(),
            data: "digits".into(),
            scale: crate::data::PixelScale::Symmetric,
            test_fraction: 0.1,
            steps: 0,
            test_accuracy: 0.0,
            sde: None,
        };
        let x = Tensor::randn(0f32, 1.0, (3, 64), &Device::Cpu).unwrap();
        let before = classifier.logits(&x, None).unwrap().to_vec2::<f32>().unwrap();
        SavedClassifier { classifier, varmap, meta }.save(dir.path()).unwrap();
        let loaded = SavedClassifier::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.meta.spec, s);
        assert_eq!(loaded.classifier.logits(&x, None).unwrap().to_vec2::<f32>().unwrap(), before);
        let missing = SavedClassifier::load(&dir.path().join("nope"), &Device::Cpu).err().unwrap().to_string();
        assert!(missing.contains("classifier.json") && missing.contains("train-classifier"), "{missing}");
    }
}
