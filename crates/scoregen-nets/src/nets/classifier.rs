//! A classifier p_φ(y | x) — or, noise-aware, p_φ(y | x(t), t) — over flattened
//! points or images.
//!
//! Two uses: image metrics (its penultimate features define the space of the
//! Fréchet distance, its predictions the class histogram and confidence), and
//! classifier guidance (a noise-aware classifier supplies ∇ₓ log p_t(y | x)).
//! One network serves both; the time input is present only when
//! `noise_aware` is set.
//!
//! Images whose sides are multiples of 4 get a small CNN over three
//! resolutions H, H/2, H/4 with `blocks` convolutions at each, every one
//! followed by GN, SiLU:
//!
//!   conv3 (C → w) [→ conv3 (w → w)]^(b−1) → conv3/2 (w → 2w) [→ conv3 (2w → 2w)]^(b−1)
//!   → conv3/2 (2w → 2w) [→ conv3 (2w → 2w)]^(b−1) → global mean over pixels
//!
//! giving features of 2·width (`blocks = 1` is the original three-layer net,
//! and the names of its weights are unchanged). Each GN, SiLU runs inside the
//! next convolution's fused op. Other data get an MLP with two SiLU layers of
//! `width`. The time embedding (Gaussian Fourier features of t, then a linear
//! map) is added after the first layer (after its norm, for the CNN).

use super::kernels::groupnorm::{group_norm, GroupNorm};
use super::unet::Conv;
use super::{seeded_var_builder, GaussianFourier};
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use scoregen_core::error::{Error, Result as CrateResult};
use scoregen_core::guidance::ClassPosterior;
use scoregen_core::io::fs;
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
    /// Convolutions per resolution of the CNN (records without it: 1, the
    /// original three-layer net).
    #[serde(default = "one_block")]
    pub blocks: usize,
}

fn one_block() -> usize {
    1
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
    /// The convolutions in order, each with the norm applied to its output.
    Cnn(Vec<(Conv, GroupNorm)>),
    Mlp {
        l1: Linear,
        l2: Linear,
    },
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
        if spec.classes < 2 || spec.width == 0 || spec.dim == 0 || spec.blocks == 0 {
            return Err(Error::Invalid(format!(
                "classifier needs ≥ 2 classes, width ≥ 1, blocks ≥ 1 and a non-empty input (got {} classes, width {}, blocks {}, dim {})",
                spec.classes, spec.width, spec.blocks, spec.dim
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
            let mut layers = Vec::with_capacity(3 * spec.blocks);
            // (level, input channels, output channels, stride of the level's first convolution)
            for (level, cin, cout, stride) in [(1, c, w, 1), (2, w, 2 * w, 2), (3, 2 * w, 2 * w, 2)] {
                for j in 0..spec.blocks {
                    // the original names for the first of each level: conv1/norm1, conv2/norm2, conv3/norm3
                    let name = if j == 0 { format!("{level}") } else { format!("{level}_{j}") };
                    let (cin, stride) = if j == 0 { (cin, stride) } else { (cout, 1) };
                    layers.push((
                        Conv::new(cin, cout, 3, stride, vb.pp(format!("conv{name}")))?,
                        group_norm(ClassifierSpec::groups(cout), cout, 1e-6, vb.pp(format!("norm{name}")))?,
                    ));
                }
            }
            (Body::Cnn(layers), w)
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
            Body::Cnn(layers) => {
                let (c, h, w) = self.spec.image_shape.expect("convolutional() checked the shape");
                let mut h = layers[0].0.forward(&x.reshape((n, c, h, w))?)?;
                let mut first = 1;
                if let Some(e) = temb {
                    // The embedding is added after the norm: GroupNorm would remove a per-channel constant.
                    let h1 = layers[0].1.forward(&h)?.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?;
                    h = layers[1].0.forward(&h1.silu()?)?;
                    first = 2;
                }
                // layer i's convolution takes silu(GN(h)) with the norm of layer i − 1, fused
                for i in first..layers.len() {
                    h = layers[i].0.forward_normed(&h, Some(&layers[i - 1].1), None, None)?;
                }
                layers[layers.len() - 1].1.forward_silu(&h)?.mean((2, 3))
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
    pub scale: scoregen_core::data::PixelScale,
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
        let tensors = scoregen_core::io::safetensors::read_tensors(&path)?;
        scoregen_core::io::safetensors::assign(&super::named_vars(&varmap), &tensors, &path)?;
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
        Ok(scoregen_core::autodiff::grad_wrt(&logp, leaf.as_tensor())?.detach())
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
            blocks: 1,
        }
    }

    #[test]
    fn shapes_of_features_and_logits() {
        for (image, blocks, feat) in
            [(Some((1, 8, 8)), 1, 16), (Some((1, 8, 8)), 3, 16), (Some((1, 7, 7)), 1, 8), (None, 1, 8)]
        {
            let s = ClassifierSpec { blocks, ..spec(image, true) };
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

    /// blocks = 1 is the original three-layer net, written out in candle ops:
    /// conv → GN → SiLU → conv/2 → GN → SiLU → conv/2 → GN → SiLU → mean; and
    /// a record without `blocks` (written before it existed) reads as 1.
    #[test]
    fn one_block_is_the_original_three_layer_net() {
        let s = spec(Some((1, 8, 8)), false);
        let vm = VarMap::new();
        let c = Classifier::build(&vm, &s, &Device::Cpu).unwrap();
        let vars: std::collections::HashMap<_, _> = super::super::named_vars(&vm).into_iter().collect();
        let names: Vec<_> = {
            let mut k: Vec<_> = vars.keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(names.len(), 14, "{names:?}");
        let x = Tensor::randn(0f32, 1.0, (3, 64), &Device::Cpu).unwrap();
        let v = |n: &str| vars[n].as_tensor().clone();
        let layer = |h: &Tensor, i: usize, stride: usize| -> Tensor {
            let y = h.conv2d(&v(&format!("conv{i}.weight")), 1, stride, 1, 1).unwrap();
            let y = y.broadcast_add(&v(&format!("conv{i}.bias")).reshape((1, (), 1, 1)).unwrap()).unwrap();
            let gn = candle_nn::GroupNorm::new(
                v(&format!("norm{i}.weight")),
                v(&format!("norm{i}.bias")),
                y.dim(1).unwrap(),
                8,
                1e-6,
            )
            .unwrap();
            gn.forward(&y).unwrap().silu().unwrap()
        };
        let h = layer(&x.reshape((3, 1, 8, 8)).unwrap(), 1, 1);
        let want = layer(&layer(&h, 2, 2), 3, 2).mean((2, 3)).unwrap();
        let got = c.features(&x, None).unwrap();
        let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4, "features differ from the three-layer net by {err}");

        let mut json = serde_json::to_value(&s).unwrap();
        json.as_object_mut().unwrap().remove("blocks");
        assert_eq!(serde_json::from_value::<ClassifierSpec>(json).unwrap().blocks, 1);
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
            scale: scoregen_core::data::PixelScale::Symmetric,
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
