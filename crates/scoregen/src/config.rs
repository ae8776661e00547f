//! The run configuration (TOML), parsed once into typed structs and
//! validated on load. Unknown keys are errors that list the valid ones;
//! every error names the file and the field.

use crate::error::{Error, Result};
use crate::nets::MlpConfig;
use crate::objectives::{Dsm, Reduction, Weighting};
use crate::samplers::{CorrectorKind, SamplerKind, SamplerSpec};
use crate::score::Output;
use crate::sde::{Sde, SubVpSde, VeSde, VpSde};
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
    pub training: TrainingConfig,
    pub sampling: SamplingConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A toy set name (`gmm8`, `gmm25`, `unbalanced`, `moons`, `swiss-roll`,
    /// `checkerboard`), a mixture spec `*.toml`, or an `[N, D]` `*.npy` file.
    pub source: String,
    /// Training points drawn from a toy set or mixture spec (ignored for `.npy`).
    pub n_train: usize,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Network: `time-mlp`.
    pub kind: String,
    /// `score-over-std` (net predicts −z; score = net / s(t)) or `score`.
    pub output: Output,
    pub width: usize,
    pub depth: usize,
    pub embed_dim: usize,
    pub embed_scale: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    /// `dsm`: continuous denoising score matching.
    pub kind: String,
    /// λ(t): `sigma2` or `likelihood`.
    pub weighting: Weighting,
    /// `mean` or `sum` over data dimensions.
    pub reduction: Reduction,
    /// t ~ U(t_eps, 1).
    pub t_eps: f64,
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
    /// `em` (Euler–Maruyama on the reverse SDE), `reverse-diffusion`,
    /// `ancestral`, `pc` (reverse diffusion + corrector) or `ode` (probability flow, RK45).
    pub sampler: String,
    /// Corrector before each predictor step: `langevin`, `ald` or `none`
    /// (default: `langevin` for `pc`, `none` otherwise).
    pub corrector: Option<String>,
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
            training: TrainingConfig::default(),
            sampling: SamplingConfig::default(),
        }
    }
}
impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: "gmm8".into(),
            n_train: 10_000,
        }
    }
}
impl Default for SdeConfig {
    fn default() -> Self {
        Self {
            kind: SdeKind::Ve,
            sigma_min: 0.01,
            sigma_max: 50.0,
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}
impl Default for ModelConfig {
    fn default() -> Self {
        let m = MlpConfig::default();
        Self {
            kind: "time-mlp".into(),
            output: Output::ScoreOverStd,
            width: m.width,
            depth: m.depth,
            embed_dim: m.embed_dim,
            embed_scale: m.embed_scale,
        }
    }
}
impl Default for ObjectiveConfig {
    fn default() -> Self {
        let d = Dsm::default();
        Self {
            kind: "dsm".into(),
            weighting: d.weighting,
            reduction: d.reduction,
            t_eps: d.t_eps,
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
            sampler: "em".into(),
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
        MlpConfig {
            width: self.width,
            depth: self.depth,
            embed_dim: self.embed_dim,
            embed_scale: self.embed_scale,
        }
    }
}

impl ObjectiveConfig {
    pub fn dsm(&self) -> Dsm {
        Dsm {
            weighting: self.weighting,
            reduction: self.reduction,
            t_eps: self.t_eps,
        }
    }
}

impl SamplingConfig {
    /// The sampler, corrector, snr and tolerances (call after validation).
    pub fn spec(&self) -> SamplerSpec {
        let d = SamplerSpec::default();
        SamplerSpec {
            kind: SamplerKind::parse(&self.sampler).unwrap_or(d.kind),
            corrector: self.corrector.as_deref().and_then(CorrectorKind::parse),
            snr: self.snr,
            corrector_steps: self.corrector_steps,
            steps: self.steps,
            rtol: self.rtol,
            atol: self.atol,
        }
    }

    /// Checks the sampler choice fields; messages name the field.
    pub fn validate(&self, file: &str) -> Result<()> {
        let err = |field: &str, msg: String| Err(Error::config(file, field, msg));
        if SamplerKind::parse(&self.sampler).is_none() {
            return err(
                "sampling.sampler",
                format!(
                    "expected one of {}, found `{}`",
                    SamplerKind::NAMES,
                    self.sampler
                ),
            );
        }
        if let Some(c) = &self.corrector {
            if CorrectorKind::parse(c).is_none() {
                return err(
                    "sampling.corrector",
                    format!("expected one of {}, found `{c}`", CorrectorKind::NAMES),
                );
            }
        }
        for (field, v) in [
            ("sampling.snr", self.snr),
            ("sampling.rtol", self.rtol),
            ("sampling.atol", self.atol),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return err(field, format!("must be a finite number > 0 (got {v})"));
            }
        }
        if self.corrector_steps == 0 {
            return err("sampling.corrector_steps", "must be ≥ 1 (got 0)".into());
        }
        Ok(())
    }
}

impl RunConfig {
    /// Reads, overrides (`key.path=value`) and validates a config file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses TOML text; `file` names the source in error messages.
    pub fn parse(text: &str, file: &str, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| Error::config(file, "(syntax)", e.message().trim().to_string()))?;
        for o in overrides {
            apply_override(&mut value, o).map_err(|m| Error::config(file, o.clone(), m))?;
        }
        let cfg: RunConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            // toml appends "\nin `table`"; the field path already says where.
            let msg = e.into_inner().to_string();
            Error::config(
                file,
                field,
                msg.lines().next().unwrap_or_default().to_string(),
            )
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
                        format!(
                            "must be > sigma_min = {} (got {})",
                            s.sigma_min, s.sigma_max
                        ),
                    );
                }
            }
            SdeKind::Vp | SdeKind::Subvp => {
                positive("sde.beta_min", s.beta_min)?;
                positive("sde.beta_max", s.beta_max)?;
                if s.beta_max <= s.beta_min {
                    return err(
                        "sde.beta_max",
                        format!("must be > beta_min = {} (got {})", s.beta_min, s.beta_max),
                    );
                }
            }
        }
        if self.model.kind != "time-mlp" {
            return err(
                "model.kind",
                format!("expected `time-mlp`, found `{}`", self.model.kind),
            );
        }
        for (f, v) in [
            ("model.width", self.model.width),
            ("model.depth", self.model.depth),
        ] {
            if v == 0 {
                return err(f, "must be ≥ 1 (got 0)".into());
            }
        }
        if self.model.embed_dim == 0 || self.model.embed_dim % 2 == 1 {
            return err(
                "model.embed_dim",
                format!("must be even and ≥ 2 (got {})", self.model.embed_dim),
            );
        }
        positive("model.embed_scale", self.model.embed_scale)?;
        if self.objective.kind != "dsm" {
            return err(
                "objective.kind",
                format!("expected `dsm`, found `{}`", self.objective.kind),
            );
        }
        if !(self.objective.t_eps > 0.0 && self.objective.t_eps < 1.0) {
            return err(
                "objective.t_eps",
                format!("must be in (0, 1) (got {})", self.objective.t_eps),
            );
        }
        let t = &self.training;
        for (f, v) in [
            ("training.steps", t.steps),
            ("training.batch_size", t.batch_size),
            ("training.log_every", t.log_every),
        ] {
            if v == 0 {
                return err(f, "must be ≥ 1 (got 0)".into());
            }
        }
        if t.checkpoint_every == 0 || t.keep_checkpoints == 0 {
            return err(
                "training.checkpoint_every",
                "checkpoint_every and keep_checkpoints must be ≥ 1".into(),
            );
        }
        positive("training.lr", t.lr)?;
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return err(
                "training.grad_clip",
                format!("must be ≥ 0 (got {})", t.grad_clip),
            );
        }
        if !(0.0..1.0).contains(&t.ema) {
            return err("training.ema", format!("must be in [0, 1) (got {})", t.ema));
        }
        self.sampling.validate(file)?;
        if self.sampling.steps == 0 || self.sampling.n == 0 {
            return err(
                "sampling.steps",
                "sampling.steps and sampling.n must be ≥ 1".into(),
            );
        }
        if let Some(eps) = self.sampling.eps {
            if !(eps > 0.0 && eps < 1.0) {
                return err("sampling.eps", format!("must be in (0, 1) (got {eps})"));
            }
        }
        if self.data.n_train == 0 {
            return err("data.n_train", "must be ≥ 1 (got 0)".into());
        }
        Ok(())
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
        let table = node
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
        node = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| format!("parent of `{key}` is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let c = RunConfig::default();
        assert_eq!(RunConfig::parse(&c.to_toml(), "x.toml", &[]).unwrap(), c);
    }

    #[test]
    fn unknown_key_names_field_and_lists_valid_ones() {
        let e = RunConfig::parse("[sde]\nsigma_maxx = 3\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml: field `sde"), "{e}");
        assert!(e.contains("sigma_maxx") && e.contains("sigma_max"), "{e}");
    }

    #[test]
    fn negative_sigma_is_rejected_by_name() {
        let e = RunConfig::parse("[sde]\nkind = \"ve\"\nsigma_min = -0.1\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "c.toml: field `sde.sigma_min`: must be a finite number > 0 (got -0.1)"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = RunConfig::parse("[training]\nsteps = \"many\"\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `training.steps`"), "{e}");
    }

    #[test]
    fn sampler_fields_are_validated_by_name() {
        let e = RunConfig::parse("[sampling]\nsampler = \"rk4\"\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml: field `sampling.sampler`: expected one of em,"),
            "{e}"
        );
        let e = RunConfig::parse("[sampling]\ncorrector = \"mala\"\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sampling.corrector`") && e.contains("langevin"),
            "{e}"
        );
        let e = RunConfig::parse("[sampling]\nrtol = 0\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sampling.rtol`"), "{e}");
        let c = RunConfig::parse(
            "[sampling]\nsampler = \"pc\"\ncorrector = \"ald\"\nsnr = 0.1\n",
            "c.toml",
            &[],
        )
        .unwrap();
        let spec = c.sampling.spec();
        assert_eq!(spec.kind, SamplerKind::Pc);
        assert_eq!(spec.corrector, Some(CorrectorKind::Ald));
        assert_eq!(spec.snr, 0.1);
    }

    #[test]
    fn overrides_set_nested_values() {
        let c = RunConfig::parse(
            "[sde]\nkind = \"vp\"\n",
            "c.toml",
            &[
                "training.steps=7".into(),
                "sde.beta_max=10".into(),
                "data.source=moons".into(),
            ],
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
