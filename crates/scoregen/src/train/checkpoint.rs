//! Checkpoints: model, EMA and optimizer tensors as safetensors plus
//! `state.json` (step, RNG streams, config hash).
//!
//! Layout: `checkpoints/step-000001000/{model,ema,optimizer}.safetensors`,
//! `state.json`, and `checkpoints/latest` naming the newest directory. A
//! checkpoint is written into a temporary directory, fsynced and renamed, so a
//! crash leaves either the complete new checkpoint or none; loading falls back
//! to an older complete checkpoint when the newest is damaged.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::rng::RngState;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    /// Data dimension the model was built for.
    pub dim: usize,
    pub adam_t: usize,
    pub ema_updates: usize,
    pub batch_rng: RngState,
    pub noise_rng: RngState,
    /// SHA-256 of the resolved config with `training.steps` blanked.
    pub config_hash: String,
    pub last_loss: f64,
}

/// A full training checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub ema: HashMap<String, Tensor>,
    /// Adam moments under `m.NAME` and `v.NAME`.
    pub optimizer: HashMap<String, Tensor>,
}

const FILES: [&str; 3] = ["model.safetensors", "ema.safetensors", "optimizer.safetensors"];

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(map, path).map_err(|e| Error::data(path, format!("writing safetensors: {e}")))?;
    sync_file(path)
}

/// Writes `ck` under `dir` and keeps the newest `keep` checkpoints. Returns its directory.
pub fn save(dir: &Path, ck: &Checkpoint, keep: usize) -> Result<PathBuf> {
    fsutil::create_dir(dir)?;
    let name = format!("step-{:09}", ck.state.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    fsutil::create_dir(&tmp)?;
    for (file, map) in FILES.iter().zip([&ck.model, &ck.ema, &ck.optimizer]) {
        save_tensors(map, &tmp.join(file))?;
    }
    let state = serde_json::to_vec_pretty(&ck.state).expect("state serializes");
    fsutil::write_atomic(&tmp.join("state.json"), &state)?;
    let final_dir = dir.join(&name);
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    fsutil::write_atomic(&dir.join("latest"), name.as_bytes())?;
    for old in list(dir).into_iter().rev().skip(keep.max(1)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(final_dir)
}

/// Complete checkpoint directories under `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Loads one checkpoint directory.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let state_path = path.join("state.json");
    let text = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainState = serde_json::from_slice(&text)
        .map_err(|e| Error::data(&state_path, format!("invalid checkpoint state: {e}")))?;
    let mut maps = Vec::with_capacity(3);
    for file in FILES {
        let p = path.join(file);
        maps.push(
            candle_core::safetensors::load(&p, &Device::Cpu)
                .map_err(|e| Error::data(&p, format!("unreadable tensors: {e}")))?,
        );
    }
    let optimizer = maps.pop().expect("3 maps");
    let ema = maps.pop().expect("2 maps");
    let model = maps.pop().expect("1 map");
    Ok(Checkpoint { state, model, ema, optimizer })
}

/// Loads the newest checkpoint, falling back (with a warning) to older ones
/// when it is missing or damaged.
pub fn load_latest(dir: &Path) -> Result<Checkpoint> {
    let mut candidates = list(dir);
    if let Ok(name) = std::fs::read_to_string(dir.join("latest")) {
        let p = dir.join(name.trim());
        candidates.retain(|c| c != &p);
        candidates.push(p);
    }
    let mut last_err = None;
    for p in candidates.iter().rev() {
        match load(p) {
            Ok(ck) => return Ok(ck),
            Err(e) => {
                tracing::warn!("checkpoint {} is unusable ({e}); trying an older one", p.display());
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| Error::data(dir, "no checkpoint found")))
}

/// Copies tensors into variables, checking names and shapes; a mismatch is named.
pub fn assign(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
    for (name, var) in vars {
        let t = tensors.get(name).ok_or_else(|| {
            Error::data(
                source,
                format!("tensor `{name}` is missing (the config's model differs from the checkpoint's)"),
            )
        })?;
        if t.shape() != var.shape() {
            return Err(Error::data(
                source,
                format!("tensor `{name}` has shape {:?}, the config's model expects {:?}", t.dims(), var.dims()),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
