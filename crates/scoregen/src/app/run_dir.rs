//! Run folders: what a trained run holds (`config.toml`, `checkpoints/`) read
//! back as a model ready to be a score, the run's training points and the
//! exact mixture behind its data.

use super::config::RunConfig;
use super::factory;
use crate::data;
use crate::error::Result;
use crate::nets::{self, Model};
use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::train::{checkpoint, streams, TrainState};
use candle_core::Device;
use candle_nn::VarMap;
use sha2::{Digest, Sha256};
use std::path::Path;

/// SHA-256 of the resolved config, with `training.steps` blanked so a run can
/// be extended. `run.device` is never part of it (nor of `config.toml`): a
/// run resumes on any device.
pub fn config_hash(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.training.steps = 0;
    c.run = Default::default();
    Sha256::digest(c.to_toml().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The exact mixture behind a config's data, if it has one.
pub fn oracle_of(cfg: &RunConfig) -> Result<Option<GaussianMixture>> {
    let src = &cfg.data.source;
    if src.ends_with(".npy") || data::is_image_source(src) {
        return Ok(None);
    }
    Ok(data::load(src, 1, &mut Rng::new(0, 0))?.oracle)
}

/// A trained model loaded from a run directory, ready to be a score.
pub struct LoadedModel {
    pub cfg: RunConfig,
    pub state: TrainState,
    pub model: Model,
    pub varmap: VarMap,
    /// Where its parameters live (inputs go there).
    pub device: Device,
    /// The safetensors file the parameters were read from.
    pub weights: std::path::PathBuf,
}

impl LoadedModel {
    /// Loads `config.toml` and the newest checkpoint (EMA weights when
    /// `use_ema`) onto `device` (checkpoints are read to the CPU and moved).
    pub fn from_run(run_dir: &Path, use_ema: bool, device: &Device) -> Result<Self> {
        let mut cfg = RunConfig::load(&run_dir.join("config.toml"), &[])?;
        cfg.run.device = crate::device::spec_of(device);
        let ck_dir = run_dir.join("checkpoints");
        let ck = checkpoint::load_latest(&ck_dir)?;
        let varmap = VarMap::new();
        let mut model = factory::build_model(&cfg.model, ck.state.dim, cfg.noise.levels, cfg.seed, &varmap, device)?;
        model.freeze();
        let vars = nets::named_vars(&varmap);
        checkpoint::check_model(&ck, &vars)?;
        let (tensors, file) = if use_ema { (&ck.ema, "ema.safetensors") } else { (&ck.model, "model.safetensors") };
        let weights = ck.dir.join(file);
        checkpoint::assign(&vars, tensors, &weights)?;
        Ok(Self { cfg, state: ck.state, model, varmap, device: device.clone(), weights })
    }

    /// The model's score (its time input refers to `cfg.sde()`).
    pub fn score(&self) -> Box<dyn ScoreFn + '_> {
        self.model.score(self.cfg.sde())
    }
}

/// The training points as used by a run (regenerated from its seed).
pub fn training_points(cfg: &RunConfig) -> Result<Points> {
    let opts = cfg.data.image_options();
    Ok(data::load_with(&cfg.data.source, cfg.data.n_train, &mut Rng::new(cfg.seed, streams::DATA), &opts)?.points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceSpec;

    /// The device, from the config file or `--set`, leaves the config hash
    /// (what a resume checks) unchanged: a run resumes on any device.
    #[test]
    fn device_does_not_change_the_config_hash() {
        let text = "name = \"h\"\n[training]\nsteps = 10\n";
        let cpu = RunConfig::parse(text, "h.toml", &[]).unwrap();
        let gpu = RunConfig::parse(&format!("{text}[run]\ndevice = \"cuda:1\"\n"), "h.toml", &[]).unwrap();
        let set = RunConfig::parse(text, "h.toml", &["run.device=cuda".into()]).unwrap();
        assert_eq!((gpu.run.device, set.run.device), (DeviceSpec::Cuda(1), DeviceSpec::Cuda(0)));
        assert_eq!(config_hash(&cpu), config_hash(&gpu));
        assert_eq!(config_hash(&cpu), config_hash(&set));
        // and the hash still sees the experiment
        let other = RunConfig::parse(text, "h.toml", &["seed=1".into()]).unwrap();
        assert_ne!(config_hash(&cpu), config_hash(&other));
    }
}
