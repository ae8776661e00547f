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
use crate::rng::{streams, Rng};
use crate::score::ScoreFn;
use crate::train::{checkpoint, TrainState};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The exact mixture behind a config's data, if it has one.
pub fn oracle_of(cfg: &RunConfig) -> Result<Option<GaussianMixture>> {
    let src = &cfg.data.source;
    // an imported checkpoint has no data source
    if src.is_empty() || src.ends_with(".npy") || data::is_image_source(src) {
        return Ok(None);
    }
    Ok(data::load(src, 1, &mut Rng::new(0, streams::ORACLE_PROBE))?.oracle)
}

/// The config of a run folder: its `config.toml`, or for a diffusers
/// checkpoint the config its files map to ([`super::pretrained::read`]).
pub fn config_of(run_dir: &Path) -> Result<RunConfig> {
    if super::pretrained::is_diffusers_dir(run_dir) {
        return Ok(super::pretrained::read(run_dir)?.cfg);
    }
    RunConfig::load(&run_dir.join("config.toml"), &[])
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
    /// A diffusers checkpoint folder ([`super::pretrained`]) loads the same
    /// way: its configs become the run's config, its weights the model's.
    pub fn from_run(run_dir: &Path, use_ema: bool, device: &Device) -> Result<Self> {
        if super::pretrained::is_diffusers_dir(run_dir) {
            return Self::from_diffusers(run_dir, device);
        }
        let mut cfg = RunConfig::load(&run_dir.join("config.toml"), &[])?;
        cfg.run.device = crate::device::spec_of(device);
        let ck_dir = run_dir.join("checkpoints");
        let ck = checkpoint::load_latest(&ck_dir)?;
        let varmap = VarMap::new();
        let mut model =
            factory::build_model(&cfg.model, ck.state.dim, cfg.noise.levels, cfg.seed, &varmap, device, &cfg.sde())?;
        model.freeze();
        let vars = nets::named_vars(&varmap);
        checkpoint::check_model(&ck, &vars)?;
        let (tensors, file) = if use_ema { (&ck.ema, "ema.safetensors") } else { (&ck.model, "model.safetensors") };
        let weights = ck.dir.join(file);
        checkpoint::assign(&vars, tensors, &weights)?;
        Ok(Self { cfg, state: ck.state, model, varmap, device: device.clone(), weights })
    }

    /// A diffusers checkpoint (`UNet2DModel` and its scheduler config) as a run.
    pub fn from_diffusers(dir: &Path, device: &Device) -> Result<Self> {
        Self::from_imported(super::pretrained::read(dir)?, device)
    }

    /// [`LoadedModel::from_diffusers`] from its configs already read.
    pub fn from_imported(imported: super::pretrained::Imported, device: &Device) -> Result<Self> {
        let mut cfg = imported.cfg;
        cfg.run.device = crate::device::spec_of(device);
        let (c, h, w) = cfg.model.unet2d.as_ref().and_then(|u| u.image()).expect("read() checked sample_size");
        let dim = c * h * w;
        let varmap = VarMap::new();
        let mut model = factory::build_model(&cfg.model, dim, cfg.noise.levels, cfg.seed, &varmap, device, &cfg.sde())?;
        model.freeze();
        let vars = nets::named_vars(&varmap);
        let tensors = super::pretrained::read_weights(&imported.layout)?;
        checkpoint::assign(&vars, &tensors, &imported.layout.weights)?;
        let rng = Rng::new(0, streams::DATA).state();
        let state = TrainState {
            format: checkpoint::FORMAT,
            step: 0,
            dim,
            adam_t: 0,
            ema_updates: 0,
            batch_rng: rng.clone(),
            noise_rng: rng,
            config_hash: String::new(),
            last_loss: f64::NAN,
            shards: 1,
            label_counts: None,
        };
        Ok(Self { cfg, state, model, varmap, device: device.clone(), weights: imported.layout.weights })
    }

    /// The model's score (its time input refers to `cfg.sde()`).
    pub fn score(&self) -> Box<dyn ScoreFn + '_> {
        self.model.score(self.cfg.sde())
    }
}

/// Replaces the weights of a run's newest checkpoint, the model's and the EMA
/// copy alike, with `tensors` (e.g. a network fine-tuned in PyTorch), after
/// checking them against the model the run's config builds: every name,
/// shape and dtype. The step, RNG state and optimizer moments are kept; the
/// checkpoint is rewritten whole (new checksums, temporary folder and rename),
/// as training writes one. Returns the checkpoint's folder.
pub fn replace_weights(run_dir: &Path, tensors: HashMap<String, Tensor>) -> Result<PathBuf> {
    let cfg = RunConfig::load(&run_dir.join("config.toml"), &[])?;
    let ck_dir = run_dir.join("checkpoints");
    let ck = checkpoint::load_latest(&ck_dir)?;
    let varmap = VarMap::new();
    factory::build_model(&cfg.model, ck.state.dim, cfg.noise.levels, cfg.seed, &varmap, &Device::Cpu, &cfg.sde())?;
    checkpoint::check_tensors(&nets::named_vars(&varmap), &tensors, Path::new("the new weights"))?;
    let keep = checkpoint::list(&ck_dir).len();
    let new = checkpoint::Checkpoint { model: tensors.clone(), ema: tensors, ..ck };
    checkpoint::save(&ck_dir, &new, keep)
}

/// The training points as used by a run (regenerated from its seed).
pub fn training_points(cfg: &RunConfig) -> Result<Points> {
    let opts = cfg.data.image_options();
    Ok(data::load_with(&cfg.data.source, cfg.data.n_train, &mut Rng::new(cfg.seed, streams::DATA), &opts)?.points)
}
