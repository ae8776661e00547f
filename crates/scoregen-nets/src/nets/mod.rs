//! Score networks. A [`Network`] maps (x, t) to a tensor shaped like x; how
//! that output becomes a score (directly, or divided by the marginal std) is
//! decided in [`NetScore`] by its [`scoregen_core::score::Head`].

pub mod classifier;
pub mod embedding;
pub mod energy;
pub mod inception;
pub mod init;
pub mod kernels;
pub mod mlp;
pub mod unet;
pub mod unet2d;

pub use classifier::{Classifier, ClassifierSpec, SavedClassifier};
pub use embedding::{ClassEmbedding, GaussianFourier};
pub use energy::{EnergyMlp, EnergyScore};
pub use inception::InceptionV3;
pub use init::seeded_var_builder;
pub use mlp::{Conditioning, Mlp, MlpConfig};
pub use unet::{UNet, UNetConfig};
pub use unet2d::{ImportedUNet, TimeInput, UNet2D, UNet2DConfig};

use candle_core::{Result, Tensor};

/// A time-conditioned network: x of shape [N, …], t of shape [N].
pub trait Network: Send + Sync {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;

    /// net(x, t, y) for class labels y [N] (u32; y = K means "no label"), for
    /// class-conditional networks; `forward` is then net(x, t, ∅). Default: an
    /// error, the network is unconditional.
    fn forward_labeled(&self, _x: &Tensor, _t: &Tensor, _labels: &Tensor) -> Result<Tensor> {
        candle_core::bail!("this network is not class-conditional (train it with model.classes = K)")
    }

    /// K for a class-conditional network, 0 otherwise.
    fn classes(&self) -> usize {
        0
    }

    /// (net(x, t), Tr ∂net/∂x per row) in one pass, for a network on R^d with
    /// d outputs that can run forward-mode through itself (the fused MLP);
    /// `None` (the default): the likelihood differentiates `forward` instead.
    /// Neither tensor is differentiable.
    fn forward_with_trace(&self, _x: &Tensor, _t: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }

    /// Marks the parameters as constants: from now on the network is only
    /// evaluated (sampling, likelihoods, metrics), never trained through, so
    /// it may skip keeping activations and computing ∂/∂θ. Default: nothing.
    fn freeze(&mut self) {}
}

/// A class-conditional network with its labels fixed: net(x, t, y) as a plain
/// [`Network`] (so every objective and sampler runs unchanged). One label is
/// broadcast to the whole batch.
pub struct Labeled<'a> {
    pub net: &'a dyn Network,
    /// u32 labels [N] or [1]; K is the null label.
    pub labels: Tensor,
}

impl Network for Labeled<'_> {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let labels = if self.labels.dim(0)? == 1 && n != 1 { self.labels.repeat(n)? } else { self.labels.clone() };
        self.net.forward_labeled(x, t, &labels)
    }
}

use candle_nn::VarMap;
use scoregen_core::guidance::{ConditionalScore, Labels};
use scoregen_core::score::{Head, LogDensity, ScoreFn};
use scoregen_core::sde::Sde;
use std::sync::Arc;

/// A trained or training model: a direct score network or an energy.
pub enum Model {
    /// s_θ(x, t) from net's output by its [`Head`] (output kind, or EDM's preconditioning).
    Score(Box<dyn Network>, Head),
    /// s_θ(x, t) = −∇ₓ f_θ(x, t).
    Energy(EnergyMlp),
}

impl Model {
    /// The score this model defines under `sde` (used for output scaling only).
    pub fn score<'a>(&'a self, sde: Arc<dyn Sde>) -> Box<dyn ScoreFn + 'a> {
        match self {
            Model::Score(net, head) => Box::new(NetScore { net: net.as_ref(), sde, head: *head }),
            Model::Energy(e) => Box::new(EnergyScore(e)),
        }
    }

    /// The score of a class-conditional model with its labels fixed,
    /// s_θ(x, t, y) (y = K: the unconditional s_θ(x, t, ∅)); `None` when the model
    /// is not class-conditional.
    pub fn score_labeled<'a>(&'a self, sde: Arc<dyn Sde>, labels: Tensor) -> Option<LabeledScore<'a>> {
        match self {
            Model::Score(net, head) if net.classes() > 0 => {
                Some(LabeledScore { net: Labeled { net: net.as_ref(), labels }, sde, head: *head })
            }
            _ => None,
        }
    }

    /// Marks the parameters as constants ([`Network::freeze`]): for models
    /// that are only evaluated (a loaded run, the EMA copy).
    pub fn freeze(&mut self) {
        if let Model::Score(net, _) = self {
            net.freeze();
        }
    }

    /// K when the model is class-conditional, 0 otherwise.
    pub fn classes(&self) -> usize {
        match self {
            Model::Score(net, _) => net.classes(),
            Model::Energy(_) => 0,
        }
    }

    /// The unnormalized log-density, when the model is an energy.
    pub fn energy(&self) -> Option<&EnergyMlp> {
        match self {
            Model::Energy(e) => Some(e),
            Model::Score(..) => None,
        }
    }
}

/// A network turned into a score for a given SDE ([`Head`] says how).
pub struct NetScore<'a> {
    pub net: &'a dyn Network,
    pub sde: Arc<dyn Sde>,
    pub head: Head,
}

impl ScoreFn for NetScore<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.head.score(&|x, t| self.net.forward(x, t), x, t, self.sde.as_ref())
    }

    /// The network's own Jacobian trace through the head's affine map, when it has one.
    fn score_with_divergence(&self, x: &Tensor, t: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        self.head.score_with_divergence(&|u, tau| self.net.forward_with_trace(u, tau), x, t, self.sde.as_ref())
    }
}

impl LogDensity for EnergyMlp {
    fn log_density(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        EnergyMlp::log_density(self, x, t)
    }
}

/// A class-conditional network's score with its labels fixed.
pub struct LabeledScore<'a> {
    pub net: Labeled<'a>,
    pub sde: Arc<dyn Sde>,
    pub head: Head,
}

impl ScoreFn for LabeledScore<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        NetScore { net: &self.net, sde: self.sde.clone(), head: self.head }.score(x, t)
    }
}

/// A class-conditional network (trained with label dropout) as a [`ConditionalScore`]:
/// `None` asks it with the null label.
pub struct ModelConditional<'a> {
    pub model: &'a Model,
    pub sde: Arc<dyn Sde>,
}

impl ConditionalScore for ModelConditional<'_> {
    fn classes(&self) -> usize {
        self.model.classes()
    }
    fn score_given(&self, x: &Tensor, t: &Tensor, labels: Option<&Labels>) -> Result<Tensor> {
        let k = self.classes();
        if let Some(ys) = labels {
            if ys.max() >= k {
                candle_core::bail!("class {} is out of range: the model knows classes 0..{}", ys.max(), k.max(1) - 1);
            }
        }
        let labels = match labels {
            Some(ys) => ys.tensor(x.device())?,
            None => Tensor::new(&[k as u32], x.device())?,
        };
        match self.model.score_labeled(self.sde.clone(), labels) {
            Some(s) => s.score(x, t),
            None => candle_core::bail!("the model is not class-conditional (train it with model.classes = K)"),
        }
    }
}

/// max |a − b| over all entries, in f32 (for the fused ops' tests).
#[cfg(test)]
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts that the gradients of Σ w ⊙ ours and Σ w ⊙ theirs agree for every
/// named tensor: max |Δ| < rel · max(max |∂theirs|, floor) (for the fused ops'
/// tests against candle's own ops; `case` names the failure).
#[cfg(test)]
pub(crate) fn assert_same_gradients(
    ours: &Tensor,
    theirs: &Tensor,
    w: &Tensor,
    vars: &[(&str, &Tensor)],
    (rel, floor): (f32, f32),
    case: &str,
) {
    let g1 = scoregen_core::autodiff::backward(&(ours * w).unwrap().sum_all().unwrap()).unwrap();
    let g2 = scoregen_core::autodiff::backward(&(theirs * w).unwrap().sum_all().unwrap()).unwrap();
    for (name, v) in vars {
        let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max_diff(a, b) < rel * scale.max(floor), "{case}: d{name} differs by {}", max_diff(a, b));
    }
}

/// The variables of a map, sorted by name (a stable order for optimizers and checkpoints).
pub fn named_vars(vm: &VarMap) -> Vec<(String, candle_core::Var)> {
    let mut v: Vec<_> = vm.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
