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
use candle_nn::VarMap;
use sha2::{Digest, Sha256};
use std::path::Path;

/// SHA-256 of the resolved config, with `training.steps` blanked so a run can be extended.
pub fn config_hash(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.training.steps = 0;
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
}

impl LoadedModel {
    /// Loads `config.toml` and the newest checkpoint (EMA weights when `use_ema`).
    pub fn from_run(run_dir: &Path, use_ema: bool) -> Result<Self> {
        let cfg = RunConfig::load(&run_dir.join("config.toml"), &[])?;
        let ck_dir = run_dir.join("checkpoints");
        let ck = checkpoint::load_latest(&ck_dir)?;
        let varmap = VarMap::new();
        let mut model = factory::build_model(&cfg.model, ck.state.dim, cfg.noise.levels, cfg.seed, &varmap)?;
        model.freeze();
        let vars = nets::named_vars(&varmap);
        checkpoint::check_model(&ck, &vars)?;
        let (tensors, file) = if use_ema { (&ck.ema, "ema.safetensors") } else { (&ck.model, "model.safetensors") };
        checkpoint::assign(&vars, tensors, &ck.dir.join(file))?;
        Ok(Self { cfg, state: ck.state, model, varmap })
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
