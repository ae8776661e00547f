//! The run configuration (TOML), parsed once into typed structs and
//! validated on load. Unknown keys are errors that list the valid ones;
//! every error names the file and the field.

use crate::data::{self, ImageOptions, PixelScale};
use crate::error::{Error, Result};
use crate::nets::{MlpConfig, UNetConfig};
use crate::objectives::{
    ContinuousDsm, DenoisingAtSigma, Dsm, Implicit, Ncsn, Objective, Projection, Reduction, Sliced, Weighting,
};
use crate::samplers::{Churn, CorrectorKind, SamplerKind, SamplerSpec, Start};
use crate::score::Output;
use crate::sde::{NoiseLadder, Sde, SubVpSde, VeSde, VpSde};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// A whole experiment: data, SDE, model, objective, training and sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run name; the default output directory is `runs/NAME`.
    pub name: String,
    /// Master seed: data, initialization, noise and sampling streams derive from it.
    pub seed: u64,
    pub data: DataConfig,
    pub sde: SdeConfig,
    pub model: ModelConfig,
    pub objective: ObjectiveConfig,
    pub noise: NoiseConfig,
    pub training: TrainingConfig,
    pub sampling: SamplingConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A toy set name (`gmm8`, `gmm25`, `unbalanced`, `moons`, `swiss-roll`,
    /// `checkerboard`), a mixture spec `*.toml`, or an `[N, D]` `*.npy` file.
    pub source: String,
    /// Training points drawn from a toy set or mixture spec (ignored for `.npy`);
    /// for images, the most training images used.
    pub n_train: usize,
    /// Images: pixels p ∈ [0, 1] become `symmetric` 2p − 1 or `unit` p.
    pub scale: PixelScale,
    /// Images: the fraction held out as a test set (sets without their own split).
    pub test_fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SdeKind {
    Ve,
    Vp,
    Subvp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdeConfig {
    pub kind: SdeKind,
    /// VE: σ_min and σ_max.
    pub sigma_min: f64,
    pub sigma_max: f64,
    /// VP and sub-VP: β_min and β_max.
    pub beta_min: f64,
    pub beta_max: f64,
}

/// Which network models the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// MLP with Gaussian Fourier time features: s_θ(x, t).
    TimeMlp,
    /// Unconditional MLP s_θ(x) (noise-free objectives; with `score-over-std`, NCSNv2's s_θ(x)/σ).
    #[serde(alias = "score-mlp")]
    Mlp,
    /// MLP with a learned embedding of the noise level (NCSN).
    NcsnMlp,
    /// Energy f_θ(x); the score is −∇ₓ f_θ.
    EnergyMlp,
    /// U-Net over square images (DDPM++ / NCSN++ style) with Fourier time features.
    Unet,
}

/// Which loss trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectiveKind {
    /// Denoising score matching: continuous-time over the SDE, or at one σ when `objective.sigma` is set.
    Dsm,
    /// NCSN: DSM summed over the `[noise]` ladder with λ(σ) = σ^power.
    Ncsn,
    /// Implicit score matching (exact Jacobian trace).
    Implicit,
    /// Sliced score matching.
    Sliced,
    /// Sliced score matching, variance-reduced.
    SlicedVr,
}

impl ObjectiveKind {
    /// True for objectives that learn one score, not a family over noise levels.
    pub fn is_noise_free(self, sigma: Option<f64>) -> bool {
        match self {
            ObjectiveKind::Dsm => sigma.is_some(),
            ObjectiveKind::Ncsn => false,
            _ => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `time-mlp`, `mlp` (alias `score-mlp`), `ncsn-mlp` or `energy-mlp`.
    pub kind: ModelKind,
    /// `score-over-std` (net predicts −z; score = net / s(t)), `score`, or the DDPM
    /// parameterizations `epsilon` (score = −net/s(t)), `v` and `x0` (see `score::Output`).
    pub output: Output,
    pub width: usize,
    pub depth: usize,
    pub embed_dim: usize,
    pub embed_scale: f64,
    /// `unet`: base channels; level l has `channels · channel_mult[l]`.
    pub channels: usize,
    /// `unet`: one multiplier per resolution (each level after the first halves H and W).
    pub channel_mult: Vec<usize>,
    /// `unet`: GroupNorm groups.
    pub groups: usize,
    /// `unet`: self-attention at the lowest resolution.
    pub attention: bool,
    /// `unet`: image channels C (H = W = √(D/C)).
    pub image_channels: usize,
    /// K > 0: a class-conditional score s_θ(x, t, y) (`time-mlp` or `unet`), trained
    /// on the data's labels for classifier-free guidance. 0: unconditional.
    #[serde(skip_serializing_if = "is_zero")]
    pub classes: usize,
    /// Probability that a training label is replaced by "no label" (the
    /// classifier-free guidance dropout), so the same net learns s_θ(x, t, ∅).
    #[serde(skip_serializing_if = "is_default_dropout")]
    pub label_dropout: f64,
}

/// The default of `model.label_dropout` (Ho & Salimans 2022 use 0.1–0.2).
pub const LABEL_DROPOUT: f64 = 0.2;

// Defaults are left out of the written config.toml, so runs without classes
// keep the config hash (and resume) they had before the fields existed.
fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn is_default_dropout(v: &f64) -> bool {
    *v == LABEL_DROPOUT
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    /// `dsm`, `ncsn`, `implicit`, `sliced` or `sliced-vr`.
    pub kind: ObjectiveKind,
    /// λ(t): `sigma2` or `likelihood`.
    pub weighting: Weighting,
    /// `mean` or `sum` over data dimensions.
    pub reduction: Reduction,
    /// t ~ U(t_eps, 1).
    pub t_eps: f64,
    /// `dsm` only: train at this single noise level instead of over the SDE.
    pub sigma: Option<f64>,
    /// `sliced`: projections per example.
    pub projections: usize,
    /// `sliced`: `gaussian` or `rademacher`.
    pub projection: Projection,
    /// `implicit`: the largest data dimension accepted (D backward passes per step).
    pub max_dim: usize,
}

/// The NCSN noise ladder σ_1 < … < σ_L (`objective.kind = "ncsn"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseConfig {
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub levels: usize,
    /// p in λ(σ) = σ^p.
    pub power: f64,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self { sigma_min: 0.01, sigma_max: 10.0, levels: 10, power: 2.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Adam learning rate (after warm-up).
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup: usize,
    /// Clip the global gradient norm to this value (0 disables).
    pub grad_clip: f64,
    /// EMA rate of the weights (0 disables).
    pub ema: f64,
    pub log_every: usize,
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// `em` (Euler–Maruyama), `reverse-diffusion`, `ancestral`, `pc` (reverse diffusion +
    /// corrector), `ode` (probability flow, RK45), `langevin`, `mala` or `annealed-langevin`.
    pub sampler: SamplerKind,
    /// Corrector before each predictor step: `langevin`, `ald` or `none`
    /// (default: `langevin` for `pc`, `none` otherwise).
    pub corrector: Option<CorrectorKind>,
    /// Signal-to-noise ratio r of the Langevin correctors, ε = 2α(r‖z‖/‖s‖)².
    pub snr: f64,
    /// Corrector steps per time step.
    pub corrector_steps: usize,
    /// Relative and absolute tolerances of the adaptive ODE solver.
    pub rtol: f64,
    pub atol: f64,
    pub steps: usize,
    pub n: usize,
    /// Final time ε; default: the SDE's (1e-5 VE, 1e-3 VP/sub-VP).
    pub eps: Option<f64>,
    /// Tweedie denoising step at the end.
    pub denoise: bool,
    /// Sample with the EMA weights.
    pub use_ema: bool,
    /// Langevin step size ε (annealed: the step at the smallest level).
    pub step_size: f64,
    /// Annealed Langevin: steps per noise level T.
    pub steps_per_level: usize,
    /// Where Langevin chains start.
    pub start: Start,
    /// `ddim`: stochasticity η ∈ [0, 1] (0 deterministic, 1 = DDPM).
    pub eta: f64,
    /// `heun`: EDM churn S_churn (0: deterministic), applied for S_min ≤ σ ≤ S_max, noise scale S_noise.
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
    /// `dpmpp-2m`, `heun`: ρ of the Karras σ schedule.
    pub rho: f64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 0,
            data: DataConfig::default(),
            sde: SdeConfig::default(),
            model: ModelConfig::default(),
            objective: ObjectiveConfig::default(),
            noise: NoiseConfig::default(),
            training: TrainingConfig::default(),
            sampling: SamplingConfig::default(),
        }
    }
}
impl Default for DataConfig {
    fn default() -> Self {
        Self { source: "gmm8".into(), n_train: 10_000, scale: PixelScale::Symmetric, test_fraction: 0.1 }
    }
}
impl Default for SdeConfig {
    fn default() -> Self {
        Self { kind: SdeKind::Ve, sigma_min: 0.01, sigma_max: 50.0, beta_min: 0.1, beta_max: 20.0 }
    }
}
impl Default for ModelConfig {
    fn default() -> Self {
        let m = MlpConfig::default();
        Self {
            kind: ModelKind::TimeMlp,
            output: Output::ScoreOverStd,
            width: m.width,
            depth: m.depth,
            embed_dim: m.embed_dim,
            embed_scale: m.embed_scale,
            channels: 32,
            channel_mult: vec![1, 2],
            groups: 8,
            attention: false,
            image_channels: 1,
            classes: 0,
            label_dropout: LABEL_DROPOUT,
        }
    }
}
impl Default for ObjectiveConfig {
    fn default() -> Self {
        let d = Dsm::default();
        Self {
            kind: ObjectiveKind::Dsm,
            weighting: d.weighting,
            reduction: d.reduction,
            t_eps: d.t_eps,
            sigma: None,
            projections: 1,
            projection: Projection::Rademacher,
            max_dim: 16,
        }
    }
}
impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            steps: 4000,
            batch_size: 512,
            lr: 2e-3,
            warmup: 100,
            grad_clip: 1.0,
            ema: 0.999,
            log_every: 50,
            checkpoint_every: 1000,
            keep_checkpoints: 2,
        }
    }
}
impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Em,
            corrector: None,
            snr: 0.16,
            corrector_steps: 1,
            rtol: 1e-5,
            atol: 1e-5,
            steps: 1000,
            n: 2000,
            eps: None,
            denoise: true,
            use_ema: true,
            step_size: 0.01,
            steps_per_level: 100,
            start: Start::Uniform { lo: -8.0, hi: 8.0 },
            eta: 0.0,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
            rho: 7.0,
        }
    }
}

impl SdeConfig {
    /// The SDE this section describes.
    pub fn build(&self) -> Arc<dyn Sde> {
        match self.kind {
            SdeKind::Ve => Arc::new(VeSde::new(self.sigma_min, self.sigma_max)),
            SdeKind::Vp => Arc::new(VpSde::new(self.beta_min, self.beta_max)),
            SdeKind::Subvp => Arc::new(SubVpSde::new(self.beta_min, self.beta_max)),
        }
    }
}

impl ModelConfig {
    pub fn mlp(&self) -> MlpConfig {
        MlpConfig { width: self.width, depth: self.depth, embed_dim: self.embed_dim, embed_scale: self.embed_scale }
    }

    /// The U-Net for flattened square images of dimension `dim`.
    pub fn unet(&self, dim: usize) -> Result<UNetConfig> {
        Ok(UNetConfig {
            image: UNetConfig::square_image(dim, self.image_channels)?,
            channels: self.channels,
            channel_mult: self.channel_mult.clone(),
            groups: self.groups,
            attention: self.attention,
            embed_dim: self.embed_dim,
            embed_scale: self.embed_scale,
        })
    }
}

impl DataConfig {
    /// How image sources are read (the split does not depend on the run's seed,
    /// so every run holds out the same test images).
    pub fn image_options(&self) -> ImageOptions {
        ImageOptions { scale: self.scale, test_fraction: self.test_fraction, split_seed: 0 }
    }
}

impl ObjectiveConfig {
    pub fn dsm(&self) -> Dsm {
        Dsm { weighting: self.weighting, reduction: self.reduction, t_eps: self.t_eps }
    }
}

impl SamplingConfig {
    /// The sampler, corrector, snr and tolerances.
    pub fn spec(&self) -> SamplerSpec {
        SamplerSpec {
            kind: self.sampler,
            corrector: self.corrector,
            snr: self.snr,
            corrector_steps: self.corrector_steps,
            steps: self.steps,
            rtol: self.rtol,
            atol: self.atol,
            eta: self.eta,
            churn: Churn { s_churn: self.s_churn, s_tmin: self.s_tmin, s_tmax: self.s_tmax, s_noise: self.s_noise },
            rho: self.rho,
            record_every: None,
        }
    }

    /// Checks the sampler settings that types alone cannot; messages name the field.
    pub fn validate(&self, file: &str) -> Result<()> {
        let err = |field: &str, msg: String| Err(Error::config(file, field, msg));
        for (field, v) in [("sampling.snr", self.snr), ("sampling.rtol", self.rtol), ("sampling.atol", self.atol)] {
            if !(v.is_finite() && v > 0.0) {
                return err(field, format!("must be a finite number > 0 (got {v})"));
            }
        }
        if self.corrector_steps == 0 {
            return err("sampling.corrector_steps", "must be ≥ 1 (got 0)".into());
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return err("sampling.eta", format!("must be in [0, 1] (got {})", self.eta));
        }
        for (field, v) in [("sampling.rho", self.rho), ("sampling.s_noise", self.s_noise)] {
            if !(v.is_finite() && v > 0.0) {
                return err(field, format!("must be a finite number > 0 (got {v})"));
            }
        }
        if !(self.s_churn.is_finite() && self.s_churn >= 0.0) {
            return err("sampling.s_churn", format!("must be a finite number ≥ 0 (got {})", self.s_churn));
        }
        if self.s_tmin.is_nan() || self.s_tmax.is_nan() || self.s_tmax < self.s_tmin {
            return err("sampling.s_tmax", format!("must be ≥ s_tmin = {} (got {})", self.s_tmin, self.s_tmax));
        }
        Ok(())
    }
}

impl RunConfig {
    /// The noise ladder of `[noise]`.
    pub fn ladder(&self) -> NoiseLadder {
        NoiseLadder::geometric(self.noise.sigma_min, self.noise.sigma_max, self.noise.levels)
    }

    /// (C, H, W) when the data are images: a named set's shape, else square
    /// images of `model.image_channels` channels for a U-Net or an image source.
    pub fn image_shape(&self, dim: usize) -> Option<(usize, usize, usize)> {
        data::image_shape_of(&self.data.source).or_else(|| {
            (self.model.kind == ModelKind::Unet || data::is_image_source(&self.data.source))
                .then(|| UNetConfig::square_image(dim, self.model.image_channels).ok())
                .flatten()
        })
    }

    /// The SDE the model's time input refers to: the ladder's VE SDE for NCSN, else `[sde]`.
    pub fn sde(&self) -> Arc<dyn Sde> {
        match self.objective.kind {
            ObjectiveKind::Ncsn => Arc::new(self.ladder().sde()),
            _ => self.sde.build(),
        }
    }

    /// The training objective.
    pub fn objective(&self) -> Box<dyn Objective> {
        let o = &self.objective;
        match o.kind {
            ObjectiveKind::Dsm => match o.sigma {
                Some(sigma) => Box::new(DenoisingAtSigma { sigma }),
                None => Box::new(ContinuousDsm { dsm: o.dsm(), sde: self.sde.build() }),
            },
            ObjectiveKind::Ncsn => {
                Box::new(Ncsn { ladder: self.ladder(), power: self.noise.power, reduction: o.reduction })
            }
            ObjectiveKind::Implicit => Box::new(Implicit { max_dim: o.max_dim }),
            ObjectiveKind::Sliced | ObjectiveKind::SlicedVr => Box::new(Sliced {
                projections: o.projections,
                projection: o.projection,
                variance_reduced: o.kind == ObjectiveKind::SlicedVr,
            }),
        }
    }

    /// The time at which a noise-free sampler (Langevin, MALA) evaluates the score:
    /// 0 (the smallest level for NCSN; unconditional models ignore it).
    pub fn langevin_time(&self) -> f64 {
        0.0
    }

    /// Reads, overrides (`key.path=value`) and validates a config file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses TOML text; `file` names the source in error messages.
    pub fn parse(text: &str, file: &str, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| Error::config(file, syntax_at(text, e.span()), e.message().trim().replace('\n', "; ")))?;
        for o in overrides {
            apply_override(&mut value, o).map_err(|m| Error::config(file, o.clone(), m))?;
        }
        let cfg: RunConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            // toml appends "\nin `table`"; the field path already says where.
            let msg = e.into_inner().to_string();
            Error::config(file, field, msg.lines().next().unwrap_or_default().to_string())
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// The resolved config as TOML (what a run saves as `config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serializes")
    }

    /// Checks every value that types alone cannot.
    pub fn validate(&self, file: &str) -> Result<()> {
        let err = |field: &str, msg: String| Err(Error::config(file, field, msg));
        let positive = |field: &str, v: f64| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                err(field, format!("must be a finite number > 0 (got {v})"))
            }
        };
        let s = &self.sde;
        match s.kind {
            SdeKind::Ve => {
                positive("sde.sigma_min", s.sigma_min)?;
                positive("sde.sigma_max", s.sigma_max)?;
                if s.sigma_max <= s.sigma_min {
                    return err(
                        "sde.sigma_max",
                        format!("must be > sigma_min = {} (got {})", s.sigma_min, s.sigma_max),
                    );
                }
            }
            SdeKind::Vp | SdeKind::Subvp => {
                positive("sde.beta_min", s.beta_min)?;
                positive("sde.beta_max", s.beta_max)?;
                if s.beta_max <= s.beta_min {
                    return err("sde.beta_max", format!("must be > beta_min = {} (got {})", s.beta_min, s.beta_max));
                }
            }
        }
        let noise_free = self.objective.kind.is_noise_free(self.objective.sigma);
        if noise_free && self.model.output != Output::Score {
            return err(
                "model.output",
                format!("`{}` needs a noise-conditional objective (dsm over an SDE, or ncsn); with objective.kind = {:?} use output = \"score\"", serde_json::to_value(self.model.output).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(), self.objective.kind),
            );
        }
        if self.model.kind == ModelKind::EnergyMlp && self.model.output != Output::Score {
            return err("model.output", "an energy model's score is −∇f; use output = \"score\"".into());
        }
        if self.model.kind == ModelKind::NcsnMlp && self.objective.kind != ObjectiveKind::Ncsn {
            return err(
                "model.kind",
                "`ncsn-mlp` is conditioned on the [noise] ladder; use it with objective.kind = \"ncsn\"".into(),
            );
        }
        if self.model.classes > 0 && !matches!(self.model.kind, ModelKind::TimeMlp | ModelKind::Unet) {
            return err("model.classes", "class-conditional models are `time-mlp` or `unet`".into());
        }
        if !(0.0..1.0).contains(&self.model.label_dropout) {
            return err("model.label_dropout", format!("must be in [0, 1) (got {})", self.model.label_dropout));
        }
        if self.model.kind == ModelKind::Mlp && !noise_free && self.model.output != Output::ScoreOverStd {
            return err("model.kind", "an unconditional `mlp` cannot tell noise levels apart; use output = \"score-over-std\" (NCSNv2) or a conditioned model".into());
        }
        for (f, v) in [("model.width", self.model.width), ("model.depth", self.model.depth)] {
            if v == 0 {
                return err(f, "must be ≥ 1 (got 0)".into());
            }
        }
        if self.model.embed_dim == 0 || self.model.embed_dim % 2 == 1 {
            return err("model.embed_dim", format!("must be even and ≥ 2 (got {})", self.model.embed_dim));
        }
        positive("model.embed_scale", self.model.embed_scale)?;
        if let Some(sigma) = self.objective.sigma {
            positive("objective.sigma", sigma)?;
        }
        if self.objective.projections == 0 {
            return err("objective.projections", "must be ≥ 1 (got 0)".into());
        }
        let nz = &self.noise;
        if self.objective.kind == ObjectiveKind::Ncsn || self.sampling.sampler == SamplerKind::AnnealedLangevin {
            positive("noise.sigma_min", nz.sigma_min)?;
            if !(nz.sigma_max > nz.sigma_min && nz.sigma_max.is_finite()) {
                return err(
                    "noise.sigma_max",
                    format!("must be > sigma_min = {} (got {})", nz.sigma_min, nz.sigma_max),
                );
            }
            if nz.levels < 2 {
                return err("noise.levels", format!("must be ≥ 2 (got {})", nz.levels));
            }
            if !nz.power.is_finite() {
                return err("noise.power", format!("must be finite (got {})", nz.power));
            }
        }
        if !(self.objective.t_eps > 0.0 && self.objective.t_eps < 1.0) {
            return err("objective.t_eps", format!("must be in (0, 1) (got {})", self.objective.t_eps));
        }
        let t = &self.training;
        for (f, v) in
            [("training.steps", t.steps), ("training.batch_size", t.batch_size), ("training.log_every", t.log_every)]
        {
            if v == 0 {
                return err(f, "must be ≥ 1 (got 0)".into());
            }
        }
        if t.checkpoint_every == 0 || t.keep_checkpoints == 0 {
            return err("training.checkpoint_every", "checkpoint_every and keep_checkpoints must be ≥ 1".into());
        }
        positive("training.lr", t.lr)?;
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return err("training.grad_clip", format!("must be ≥ 0 (got {})", t.grad_clip));
        }
        if !(0.0..1.0).contains(&t.ema) {
            return err("training.ema", format!("must be in [0, 1) (got {})", t.ema));
        }
        let sp = &self.sampling;
        match sp.sampler {
            k if k.is_reverse_time() && noise_free => {
                return err("sampling.sampler", format!("`{k}` needs a model of every noise level; a noise-free objective samples with `langevin` (or `mala` for energies)"))
            }
            SamplerKind::Mala if self.model.kind != ModelKind::EnergyMlp => {
                return err("sampling.sampler", "`mala` needs an unnormalized density: use model.kind = \"energy-mlp\"".into())
            }
            SamplerKind::AnnealedLangevin if self.objective.kind != ObjectiveKind::Ncsn => {
                return err("sampling.sampler", "`annealed-langevin` needs a model of the [noise] ladder: use objective.kind = \"ncsn\"".into())
            }
            _ => {}
        }
        positive("sampling.step_size", sp.step_size)?;
        if sp.steps_per_level == 0 {
            return err("sampling.steps_per_level", "must be ≥ 1 (got 0)".into());
        }
        match sp.start {
            Start::Uniform { lo, hi } if !(lo < hi && lo.is_finite() && hi.is_finite()) => {
                return err("sampling.start", format!("uniform start needs finite lo < hi (got {lo}, {hi})"))
            }
            Start::Gaussian { std } if !(std > 0.0 && std.is_finite()) => {
                return err("sampling.start", format!("gaussian start needs std > 0 (got {std})"))
            }
            _ => {}
        }
        self.sampling.validate(file)?;
        if self.sampling.steps == 0 || self.sampling.n == 0 {
            return err("sampling.steps", "sampling.steps and sampling.n must be ≥ 1".into());
        }
        if let Some(eps) = self.sampling.eps {
            if !(eps > 0.0 && eps < 1.0) {
                return err("sampling.eps", format!("must be in (0, 1) (got {eps})"));
            }
        }
        if !(0.0..1.0).contains(&self.data.test_fraction) {
            return err("data.test_fraction", format!("must be in [0, 1) (got {})", self.data.test_fraction));
        }
        if self.model.kind == ModelKind::Unet {
            if self.model.image_channels == 0 {
                return err("model.image_channels", "must be ≥ 1 (got 0)".into());
            }
            if let Some((c, h, w)) = data::image_shape_of(&self.data.source) {
                let u = self
                    .model
                    .unet(c * h * w)
                    .map_err(|e| Error::config(file, "model.image_channels", e.to_string()))?;
                u.validate().map_err(|e| {
                    let field = if e.to_string().contains("groups") { "model.groups" } else { "model.channel_mult" };
                    Error::config(file, field, e.to_string())
                })?;
            }
        }
        if self.data.n_train == 0 {
            return err("data.n_train", "must be ≥ 1 (got 0)".into());
        }
        // Upper bounds: a mistyped size fails here, by name, instead of as an
        // allocation failure (an abort, not an error) deep inside training.
        for (f, v, max) in [
            ("data.n_train", self.data.n_train, 100_000_000),
            ("training.batch_size", t.batch_size, 1_000_000),
            ("model.width", self.model.width, 16_384),
            ("model.depth", self.model.depth, 1_024),
            ("model.embed_dim", self.model.embed_dim, 16_384),
            ("model.channels", self.model.channels, 16_384),
            ("objective.projections", self.objective.projections, 4_096),
            ("noise.levels", self.noise.levels, 100_000),
            ("sampling.n", self.sampling.n, 100_000_000),
        ] {
            if v > max {
                return err(f, format!("must be ≤ {max} (got {v})"));
            }
        }
        Ok(())
    }
}

/// "(syntax, line L)": where a TOML syntax error starts, 1-based.
fn syntax_at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => format!("(syntax, line {})", text[..r.start.min(text.len())].matches('\n').count() + 1),
        None => "(syntax)".into(),
    }
}

/// Applies `a.b.c=value`; the value is parsed as TOML (number, bool, array…)
/// and taken as a plain string when it is not valid TOML.
fn apply_override(root: &mut toml::Value, spec: &str) -> std::result::Result<(), String> {
    let (key, raw) = spec.split_once('=').ok_or("expected key=value")?;
    let key = key.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key path"));
    }
    let mut node = root;
    for p in &parts[..parts.len() - 1] {
        let table = node.as_table_mut().ok_or_else(|| format!("`{p}` is not a table"))?;
        node = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node.as_table_mut().ok_or_else(|| format!("parent of `{key}` is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class conditioning is validated by name, and a config without classes
    /// writes no new keys (its hash, and so resume, are unchanged).
    #[test]
    fn class_fields_are_validated_by_name_and_hidden_when_unused() {
        let parse = |set: &[&str]| {
            let sets: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            RunConfig::parse("name = \"c\"", "c.toml", &sets)
        };
        let e = parse(&["model.kind=\"energy-mlp\"", "model.output=\"score\"", "model.classes=3"]).unwrap_err();
        assert!(e.to_string().starts_with("c.toml: field `model.classes`"), "{e}");
        let e = parse(&["model.classes=3", "model.label_dropout=1.0"]).unwrap_err();
        assert!(e.to_string().starts_with("c.toml: field `model.label_dropout`"), "{e}");
        assert!(!parse(&[]).unwrap().to_toml().contains("classes"));
        assert!(parse(&["model.classes=3"]).unwrap().to_toml().contains("classes = 3"));
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let c = RunConfig::default();
        assert_eq!(RunConfig::parse(&c.to_toml(), "x.toml", &[]).unwrap(), c);
    }

    #[test]
    fn unknown_key_names_field_and_lists_valid_ones() {
        let e = RunConfig::parse("[sde]\nsigma_maxx = 3\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: field `sde"), "{e}");
        assert!(e.contains("sigma_maxx") && e.contains("sigma_max"), "{e}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = RunConfig::parse("name = \"x\"\n\n[sde\nkind = \"ve\"\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: field `(syntax, line 3)`: "), "{e}");
    }

    #[test]
    fn negative_sigma_is_rejected_by_name() {
        let e = RunConfig::parse("[sde]\nkind = \"ve\"\nsigma_min = -0.1\n", "c.toml", &[]).unwrap_err().to_string();
        assert_eq!(e, "c.toml: field `sde.sigma_min`: must be a finite number > 0 (got -0.1)");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = RunConfig::parse("[training]\nsteps = \"many\"\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("field `training.steps`"), "{e}");
    }

    #[test]
    fn sampler_fields_are_validated_by_name() {
        let e = RunConfig::parse("[sampling]\nsampler = \"rk4\"\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.starts_with("c.toml: field `sampling.sampler`: unknown variant `rk4`, expected one of `em`"), "{e}");
        let e = RunConfig::parse("[sampling]\ncorrector = \"mala\"\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("`sampling.corrector`") && e.contains("langevin"), "{e}");
        let e = RunConfig::parse("[sampling]\nrtol = 0\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("`sampling.rtol`"), "{e}");
        let c =
            RunConfig::parse("[sampling]\nsampler = \"pc\"\ncorrector = \"ald\"\nsnr = 0.1\n", "c.toml", &[]).unwrap();
        let spec = c.sampling.spec();
        assert_eq!(spec.kind, SamplerKind::Pc);
        assert_eq!(spec.corrector, Some(CorrectorKind::Ald));
        assert_eq!(spec.snr, 0.1);
    }

    #[test]
    fn diffusion_sampler_fields_are_validated_by_name() {
        let e = RunConfig::parse("[sampling]\nsampler = \"ddim\"\neta = 1.5\n", "c.toml", &[]).unwrap_err().to_string();
        assert_eq!(e, "c.toml: field `sampling.eta`: must be in [0, 1] (got 1.5)");
        let e = RunConfig::parse("[sampling]\nrho = 0\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("`sampling.rho`"), "{e}");
        let e = RunConfig::parse("[sampling]\ns_tmin = 2\ns_tmax = 1\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("`sampling.s_tmax`"), "{e}");
        let text =
            "[model]\noutput = \"epsilon\"\n[sampling]\nsampler = \"heun\"\ns_churn = 40\ns_tmin = 0.05\ns_tmax = 50\n";
        let c = RunConfig::parse(text, "c.toml", &[]).unwrap();
        let spec = c.sampling.spec();
        assert_eq!(spec.kind, SamplerKind::Heun);
        assert_eq!(
            (spec.churn.s_churn, spec.churn.s_tmin, spec.churn.s_tmax, spec.churn.s_noise),
            (40.0, 0.05, 50.0, 1.0)
        );
        assert_eq!(spec.rho, 7.0);
        // an ε-model needs a noise-conditional objective, like score-over-std
        let e = RunConfig::parse("[model]\noutput = \"epsilon\"\n[objective]\nkind = \"sliced\"\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`model.output`") && e.contains("`epsilon`"), "{e}");
    }

    #[test]
    fn overrides_set_nested_values() {
        let c = RunConfig::parse(
            "[sde]\nkind = \"vp\"\n",
            "c.toml",
            &["training.steps=7".into(), "sde.beta_max=10".into(), "data.source=moons".into()],
        )
        .unwrap();
        assert_eq!(c.training.steps, 7);
        assert_eq!(c.sde.beta_max, 10.0);
        assert_eq!(c.data.source, "moons");
        assert!(RunConfig::parse("", "c.toml", &["training.nope=1".into()]).is_err());
    }
}

#[cfg(test)]
mod preset_tests {
    use super::*;

    /// Every preset in `configs/` parses and validates.
    #[test]
    fn every_preset_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3);
    }
}
