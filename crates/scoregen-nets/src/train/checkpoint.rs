//! Checkpoints: model, EMA and optimizer tensors as safetensors plus
//! `state.json` (step, RNG streams, config hash).
//!
//! Layout: `checkpoints/step-000001000/{model,ema,optimizer}.safetensors`,
//! `state.json`, and `checkpoints/latest` naming the newest directory. A
//! checkpoint is written into a temporary directory, fsynced and renamed, so a
//! crash leaves either the complete new checkpoint or none; loading falls back
//! to an older complete checkpoint when the newest is damaged.
//!
//! `SHA256SUMS` (the format of `sha256sum -c`) holds the digest of every other
//! file, so a checkpoint damaged after it was written (a bad disk, a stray
//! edit) is detected on load instead of resuming from wrong numbers.

use candle_core::{Tensor, Var};
use scoregen_core::error::{Error, Result};
use scoregen_core::io::fs;
pub use scoregen_core::io::safetensors::{assign, check_tensors, read_tensors};
use scoregen_core::rng::RngState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The checkpoint format this version writes and reads. Bump it when a change
/// makes old checkpoints unreadable as they are, and keep reading the old one
/// (`tests/fixtures/run-format-1` is a run in format 1 that must keep loading).
pub const FORMAT: u32 = 1;

/// Checkpoints written before `state.json` had a `format` field are format 1.
fn format_1() -> u32 {
    1
}

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The checkpoint format ([`FORMAT`]).
    #[serde(default = "format_1")]
    pub format: u32,
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
    /// Data-parallel shards of the global batch (`train::parallel`); 1, the
    /// default, is left out of `state.json`, so single-process checkpoints
    /// are written as before.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub shards: usize,
    /// A class-conditional run's training examples per label 0..K−1, so that
    /// `sample --class all` draws the training proportions without reading
    /// the data again (checkpoints written before it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_counts: Option<Vec<u64>>,
}

fn one() -> usize {
    1
}
fn is_one(v: &usize) -> bool {
    *v == 1
}

/// A full training checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub ema: HashMap<String, Tensor>,
    /// Adam moments under `m.NAME` and `v.NAME`.
    pub optimizer: HashMap<String, Tensor>,
    /// The directory it was loaded from (empty for a checkpoint not yet saved).
    pub dir: PathBuf,
}

const FILES: [&str; 3] = ["model.safetensors", "ema.safetensors", "optimizer.safetensors"];
const STATE: &str = "state.json";
const SUMS: &str = "SHA256SUMS";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Checks every file named in `dir/SHA256SUMS` against its digest. Every
/// checkpoint file must be listed; a checkpoint without the file (written
/// before checksums existed) is accepted as it is.
fn verify_sums(dir: &Path) -> Result<()> {
    let path = dir.join(SUMS);
    let text = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(|e| Error::io(&path, e))?,
    };
    let text = String::from_utf8(text).map_err(|_| Error::data(&path, "not UTF-8 text"))?;
    let mut listed = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |m: String| Error::data(&path, format!("line {}: {m}", i + 1));
        let (digest, name) = line.split_once("  ").ok_or_else(|| bad("expected `DIGEST  NAME`".into()))?;
        if !FILES.contains(&name) && name != STATE {
            return Err(bad(format!("`{name}` is not a checkpoint file")));
        }
        let file = dir.join(name);
        if sha256_hex(&read(&file)?) != digest {
            return Err(Error::data(&file, "checksum mismatch: the file changed after it was written"));
        }
        listed.push(name);
    }
    if let Some(missing) = FILES.iter().chain([&STATE]).find(|f| !listed.contains(f)) {
        return Err(Error::data(&path, format!("`{missing}` is not listed")));
    }
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// Writes tensors (copied to the CPU first: a checkpoint does not depend on the
/// device it was trained on), fsyncs them and returns the digest of what is on disk.
fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<String> {
    let cpu = |t: &Tensor| t.to_device(&candle_core::Device::Cpu);
    let map = map.iter().map(|(k, t)| Ok((k.clone(), cpu(t)?))).collect::<Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&map, path).map_err(|e| Error::data(path, format!("writing safetensors: {e}")))?;
    sync_file(path)?;
    Ok(sha256_hex(&read(path)?))
}

/// The folder name of step `step`'s checkpoint: `step-000001000`.
pub fn dir_name(step: usize) -> String {
    format!("step-{step:09}")
}

/// Writes `ck` under `dir` and keeps the newest `keep` checkpoints. Returns its directory.
pub fn save(dir: &Path, ck: &Checkpoint, keep: usize) -> Result<PathBuf> {
    // The crash tests' kill points (`fs::kill_point`): after each file, the rename, `latest`, pruning.
    let kill = |point: &str| fs::kill_point(ck.state.step, point);
    fs::create_dir(dir)?;
    let name = dir_name(ck.state.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> Result<()> {
        fs::create_dir(&tmp)?;
        kill("start");
        let mut sums = String::new();
        for (file, map) in FILES.iter().zip([&ck.model, &ck.ema, &ck.optimizer]) {
            sums += &format!("{}  {file}\n", save_tensors(map, &tmp.join(file))?);
            kill(file);
        }
        let state = serde_json::to_vec_pretty(&ck.state).expect("state serializes");
        fs::write_atomic(&tmp.join(STATE), &state)?;
        kill(STATE);
        sums += &format!("{}  {STATE}\n", sha256_hex(&state));
        fs::write_atomic(&tmp.join(SUMS), sums.as_bytes())?;
        kill(SUMS);
        Ok(())
    };
    // A failed write (disk full, read-only) leaves the older checkpoints as they were.
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let final_dir = dir.join(&name);
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    kill("renamed");
    sync_file(dir)?;
    fs::write_atomic(&dir.join("latest"), name.as_bytes())?;
    kill("latest");
    for old in list(dir).into_iter().rev().skip(keep.max(1)) {
        let _ = std::fs::remove_dir_all(old);
        kill("pruned");
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

/// Loads one checkpoint directory, checking its checksums and that the model,
/// EMA and optimizer tensors agree with each other (names, shapes, dtypes).
pub fn load(path: &Path) -> Result<Checkpoint> {
    verify_sums(path)?;
    let state_path = path.join(STATE);
    let bytes = read(&state_path)?;
    // The version first, so a newer format is named rather than reported as a parse error.
    #[derive(Deserialize)]
    struct Version {
        #[serde(default = "format_1")]
        format: u32,
    }
    if let Ok(Version { format }) = serde_json::from_slice::<Version>(&bytes) {
        if format != FORMAT {
            return Err(Error::data(
                &state_path,
                format!(
                    "checkpoint format {format} is not one this scoregen reads (format {FORMAT}); \
                     use the scoregen that wrote it, or a newer one"
                ),
            ));
        }
    }
    let state: TrainState = serde_json::from_slice(&bytes)
        .map_err(|e| Error::data(&state_path, format!("invalid checkpoint state: {e}")))?;
    let mut maps = Vec::with_capacity(3);
    for file in FILES {
        maps.push(read_tensors(&path.join(file))?);
    }
    let optimizer = maps.pop().expect("3 maps");
    let ema = maps.pop().expect("2 maps");
    let model = maps.pop().expect("1 map");
    // The EMA holds a copy of every parameter, the optimizer two moments (`m.`, `v.`).
    for (file, map, prefixes) in [(FILES[1], &ema, &[""][..]), (FILES[2], &optimizer, &["m.", "v."][..])] {
        let file = path.join(file);
        let mut expected = Vec::new();
        for (name, t) in &model {
            for p in prefixes {
                expected.push((format!("{p}{name}"), t));
            }
        }
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in &expected {
            let got = map.get(name).ok_or_else(|| Error::data(&file, format!("tensor `{name}` is missing")))?;
            if got.dims() != t.dims() || got.dtype() != t.dtype() {
                return Err(Error::data(
                    &file,
                    format!(
                        "tensor `{name}` is {:?} {:?}, its parameter in model.safetensors is {:?} {:?}",
                        got.dtype(),
                        got.dims(),
                        t.dtype(),
                        t.dims()
                    ),
                ));
            }
        }
        if let Some(extra) = map.keys().filter(|k| !expected.iter().any(|(n, _)| n == *k)).min() {
            return Err(Error::data(&file, format!("tensor `{extra}` has no parameter in model.safetensors")));
        }
    }
    let n_params: usize = model.values().map(|t| t.elem_count()).sum();
    if state.dim == 0 || state.dim > n_params {
        return Err(Error::data(
            &state_path,
            format!("dim {} is impossible for a model of {n_params} parameters", state.dim),
        ));
    }
    Ok(Checkpoint { state, model, ema, optimizer, dir: path.to_path_buf() })
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

/// Checks a checkpoint against the model built from the config (`vars`); see
/// [`check_tensors`]. Its EMA and optimizer tensors were checked against its
/// model tensors on [`load`].
pub fn check_model(ck: &Checkpoint, vars: &[(String, Var)]) -> Result<()> {
    check_tensors(vars, &ck.model, &ck.dir.join(FILES[0]))
}
