//! The sampler settings ([`SamplerSpec`]): one struct for `[sampling]` in a
//! config, the command line's overrides, Python's keywords and the
//! dispatcher, with one [`Default`] and one validation.

use super::grid::Grid;
use super::heun::Churn;
use super::langevin::Start;
use super::limits::X0Limit;
use super::registry::{CorrectorKind, SamplerKind, SAMPLERS};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The sampler settings: `[sampling]` in a config (its keys are these
/// fields), what the command line's flags and Python's keywords override, and
/// what [`SamplerSpec::sample`](super::SamplerSpec::sample) runs. One type, one [`Default`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerSpec {
    /// Any row of the sampler table ([`crate::samplers::SAMPLERS`]; `scoregen list`).
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
    /// Steps of the sampler (Langevin: its iterations; the ODE sampler adapts its own).
    pub steps: usize,
    /// Samples a run draws unless asked for another number (`--n`, Python's `n=`);
    /// the dispatcher itself takes the shape it is given.
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
    /// `heun`, `dpmpp-2m-sde`, `euler-ancestral`: the noise scale S_noise.
    pub s_noise: f64,
    /// Every σ-space sampler on the `karras` grid: its ρ.
    pub rho: f64,
    /// σ-space samplers: `uniform-t`, `karras`, `linspace`, `leading` or
    /// `trailing` (default: uniform-t for ddpm and ddim, karras for the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<Grid>,
    /// σ-space samplers: clip the denoised estimate x̂₀ to [−clip_range, clip_range].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clip_denoised: bool,
    /// σ-space samplers: dynamic thresholding of x̂₀ at this quantile of |x̂₀| ∈ (0, 1]
    /// (Saharia et al. 2022; diffusers' dynamic_thresholding_ratio, e.g. 0.995).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The data range [−r, r] of clipping and thresholding (default 1: images in [−1, 1]).
    #[serde(skip_serializing_if = "is_one")]
    pub clip_range: f64,
    /// Thresholding's largest s (diffusers' sample_max_value; default ∞, as Saharia et al.).
    #[serde(skip_serializing_if = "is_infinite")]
    pub threshold_max: f64,
    /// `ddim` with clipping or thresholding: keep the model's ε̂ in the step
    /// and limit only x̂₀ (diffusers' `DDIMScheduler` default,
    /// `use_clipped_model_output=False`); off: ε̂ is recomputed from the limited
    /// x̂₀ (`use_clipped_model_output=True`), see `samplers::limits`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_model_eps: bool,
    /// `dpmpp-3m`: `taylor` (the default, third order: weight 2φ₃ on D₂ and a
    /// DPM-Solver++(2S) first step) or `k-diffusion` (k-diffusion's
    /// `sample_dpmpp_3m_sde` with η = 0, equal to diffusers' 3M with
    /// `solver_type = "heun"`, `lower_order_final = False`: weight φ₃ and a
    /// first-order first step, second order, N model calls for N steps), to
    /// reproduce theirs ([`super::dpm_solver`]).
    #[serde(skip_serializing_if = "Dpmpp3mForm::is_taylor")]
    pub dpmpp_3m_form: Dpmpp3mForm,
    /// σ-space samplers: start at √(1 + σ₀²)·z (the VP prior N(0, I) at σ₀) instead of σ₀·z.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub vp_start: bool,
    /// A class-conditional run (`model.classes = K`): the class `sample` asks for
    /// when no `--class` is given: `"all"` (every class, each sample its own, in the
    /// training labels' proportions) or `"K"`; unset: the unconditional score (null label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassChoice>,
    /// Guidance weight w of `class` (and of `--class` without `--guidance`):
    /// (1 + w)·s(x,t,y) − w·s(x,t); 0 is the plain conditional score.
    #[serde(skip_serializing_if = "is_one")]
    pub guidance: f64,
    /// The time at which the Langevin family evaluates the score (0: the
    /// smallest level for NCSN; unconditional models ignore it). Set by the
    /// caller, never written to a config.
    #[serde(skip)]
    pub langevin_t: f64,
    /// Keep every k-th state (and the first and last), for GIFs of the
    /// reverse process. Set by the caller, never written to a config.
    #[serde(skip)]
    pub record_every: Option<usize>,
}

/// Which DPM-Solver++(3M) `dpmpp-3m` runs (`sampling.dpmpp_3m_form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dpmpp3mForm {
    /// Third order: 2φ₃·D₂, DPM-Solver++(2S) first step ([`super::Dpmpp3mStep::default`]).
    #[default]
    Taylor,
    /// k-diffusion's and diffusers' second-order form ([`super::Dpmpp3mStep::k_diffusion`]).
    KDiffusion,
}

impl Dpmpp3mForm {
    fn is_taylor(&self) -> bool {
        *self == Dpmpp3mForm::Taylor
    }

    /// The name in configs and Python's `dpmpp_3m_form=`.
    pub fn name(self) -> &'static str {
        match self {
            Dpmpp3mForm::Taylor => "taylor",
            Dpmpp3mForm::KDiffusion => "k-diffusion",
        }
    }
}

impl std::str::FromStr for Dpmpp3mForm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "taylor" => Ok(Dpmpp3mForm::Taylor),
            "k-diffusion" => Ok(Dpmpp3mForm::KDiffusion),
            _ => Err(format!("expected `taylor` or `k-diffusion`, got `{s}`")),
        }
    }
}

/// Which class a class-conditional sampling run asks for (`sampling.class`, `--class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ClassChoice {
    /// Every sample is class K.
    One(usize),
    /// Every class, in the proportions of the training labels (counts by largest
    /// remainder, in a seeded order): samples of p(x) = Σ_y p(y)·p(x | y).
    All,
}

impl std::str::FromStr for ClassChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(ClassChoice::All);
        }
        s.parse().map(ClassChoice::One).map_err(|_| format!("expected a class number K or `all`, got `{s}`"))
    }
}

impl TryFrom<String> for ClassChoice {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<ClassChoice> for String {
    fn from(c: ClassChoice) -> String {
        c.to_string()
    }
}

impl std::fmt::Display for ClassChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassChoice::One(k) => write!(f, "{k}"),
            ClassChoice::All => f.write_str("all"),
        }
    }
}

// The scheduler options are left out of a written config at their defaults,
// so the config hash of a run from before they existed does not change.
fn is_one(v: &f64) -> bool {
    *v == 1.0
}
fn is_infinite(v: &f64) -> bool {
    *v == f64::INFINITY
}

impl Default for SamplerSpec {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Em,
            corrector: None,
            snr: super::correctors::DEFAULT_SNR,
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
            grid: None,
            clip_denoised: false,
            threshold: None,
            clip_range: 1.0,
            threshold_max: f64::INFINITY,
            keep_model_eps: false,
            dpmpp_3m_form: Dpmpp3mForm::Taylor,
            vp_start: false,
            class: None,
            guidance: 1.0,
            langevin_t: 0.0,
            record_every: None,
        }
    }
}

impl SamplerSpec {
    /// These settings with another sampler: settings of the config's sampler
    /// that the new one does not take (DDIM's `keep_model_eps`; the σ-space
    /// grid, limits and start, which an imported diffusers config sets) are
    /// dropped rather than refused by [`SamplerSpec::validate`] (and `dpmpp_3m_form`
    /// unless the new sampler is `dpmpp-3m`); a front end
    /// applies the user's own settings after this, so those are still checked.
    pub fn with_sampler(self, sampler: SamplerKind) -> Self {
        let sigma_space = matches!(sampler.method(), super::registry::Method::SigmaSpace { .. });
        let keep_model_eps = self.keep_model_eps && sampler == SamplerKind::Ddim;
        let dpmpp_3m_form = if sampler == SamplerKind::Dpmpp3m { self.dpmpp_3m_form } else { Dpmpp3mForm::Taylor };
        if sigma_space {
            return Self { sampler, keep_model_eps, dpmpp_3m_form, ..self };
        }
        Self {
            sampler,
            keep_model_eps,
            dpmpp_3m_form,
            grid: None,
            clip_denoised: false,
            threshold: None,
            vp_start: false,
            ..self
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
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            return err("sampling.clip_range", format!("must be a finite number > 0 (got {})", self.clip_range));
        }
        if self.threshold_max.is_nan() || self.threshold_max < self.clip_range {
            return err(
                "sampling.threshold_max",
                format!("must be ≥ clip_range = {} (got {})", self.clip_range, self.threshold_max),
            );
        }
        if let Some(p) = self.threshold {
            if !(p > 0.0 && p <= 1.0) {
                return err("sampling.threshold", format!("must be a quantile in (0, 1], e.g. 0.995 (got {p})"));
            }
            if self.clip_denoised {
                return err(
                    "sampling.threshold",
                    "set either clip_denoised or threshold (thresholding already clips)".into(),
                );
            }
        }
        if self.keep_model_eps && (self.sampler != SamplerKind::Ddim || self.limit().is_none()) {
            return err(
                "sampling.keep_model_eps",
                format!(
                    "applies to `ddim` with clip_denoised or threshold (the ε̂ it keeps is the unlimited one), not `{}`{}",
                    self.sampler,
                    if self.limit().is_none() { " without a limit" } else { "" }
                ),
            );
        }
        if self.dpmpp_3m_form != Dpmpp3mForm::Taylor && self.sampler != SamplerKind::Dpmpp3m {
            return err(
                "sampling.dpmpp_3m_form",
                format!("applies to `dpmpp-3m`, not `{}` (leave it out or set it to \"taylor\")", self.sampler),
            );
        }
        if !self.sampler.is_denoiser() {
            let set = [
                ("sampling.grid", self.grid.is_some()),
                ("sampling.clip_denoised", self.clip_denoised),
                ("sampling.threshold", self.threshold.is_some()),
                ("sampling.vp_start", self.vp_start),
            ];
            if let Some((field, _)) = set.iter().find(|(_, on)| *on) {
                return err(
                    field,
                    format!(
                        "applies to the σ-space samplers ({}), not `{}`",
                        SAMPLERS.iter().filter(|s| s.kind.is_denoiser()).map(|s| s.name).collect::<Vec<_>>().join(", "),
                        self.sampler
                    ),
                );
            }
        }
        Ok(())
    }
}

impl SamplerSpec {
    /// Thresholding if `threshold` is set, else clipping if `clip_denoised`.
    pub fn limit(&self) -> Option<X0Limit> {
        let range = self.clip_range;
        match self.threshold {
            Some(ratio) => Some(X0Limit::Threshold { ratio, range, max: self.threshold_max }),
            None => self.clip_denoised.then_some(X0Limit::Clip { range }),
        }
    }

    /// These settings with `limit` as their x̂₀ limit (the inverse of [`Self::limit`]).
    pub fn with_limit(self, limit: Option<X0Limit>) -> Self {
        match limit {
            None => Self { clip_denoised: false, threshold: None, ..self },
            Some(X0Limit::Clip { range }) => Self { clip_denoised: true, threshold: None, clip_range: range, ..self },
            Some(X0Limit::Threshold { ratio, range, max }) => {
                Self { clip_denoised: false, threshold: Some(ratio), clip_range: range, threshold_max: max, ..self }
            }
        }
    }

    /// EDM's churn (S_churn, S_min, S_max, S_noise) of `heun`; `s_noise` also
    /// scales the noise of `dpmpp-2m-sde` and `euler-ancestral`.
    pub fn churn(&self) -> Churn {
        Churn { s_churn: self.s_churn, s_tmin: self.s_tmin, s_tmax: self.s_tmax, s_noise: self.s_noise }
    }
}
