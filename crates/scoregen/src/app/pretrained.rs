//! The field's checkpoints in diffusers' format, read as scoregen runs: a
//! pipeline folder (`model_index.json`, `unet/config.json` and
//! `unet/diffusion_pytorch_model.safetensors`, `scheduler/scheduler_config.json`)
//! or a bare model folder (`config.json`, the weights, and optionally a
//! `scheduler_config.json` beside them). The `UNet2DModel` becomes a `unet2d`
//! model ([`crate::nets::UNet2D`]); the scheduler config becomes the SDE
//! (the discrete DDPM chain, or VE for `ScoreSdeVeScheduler`) and the
//! sampling defaults, so every command that takes `--run DIR` works on it.
//!
//! Weights are read from safetensors only (scoregen never unpickles); a
//! `.bin`-only checkpoint is converted by `scripts/convert-diffusers-bin.py`.

use super::config::*;
use crate::error::{Error, Result};
use crate::nets::UNet2DConfig;
use crate::samplers::{CorrectorKind, Grid, SamplerKind};
use crate::score::Output;
use candle_core::{DType, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const WEIGHTS_BIN: &str = "diffusion_pytorch_model.bin";

/// The files of a diffusers checkpoint.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `unet/config.json` or `config.json`.
    pub model_config: PathBuf,
    /// The safetensors weights beside it.
    pub weights: PathBuf,
    /// The scheduler config, when there is one.
    pub scheduler: Option<PathBuf>,
    /// `pipeline` or `model folder`.
    pub kind: &'static str,
}

/// True when `dir` holds a diffusers checkpoint rather than a scoregen run.
pub fn is_diffusers_dir(dir: &Path) -> bool {
    !dir.join("config.toml").exists()
        && (dir.join("model_index.json").exists()
            || dir.join("unet").join("config.json").exists()
            || dir.join("config.json").exists())
}

/// Finds the files of a diffusers checkpoint in `dir`; an error says what is missing.
pub fn layout(dir: &Path) -> Result<Layout> {
    let (model_dir, kind) = if dir.join("unet").join("config.json").exists() {
        (dir.join("unet"), "pipeline")
    } else if dir.join("config.json").exists() {
        (dir.to_path_buf(), "model folder")
    } else {
        return Err(Error::data(
            dir,
            "not a diffusers checkpoint: no unet/config.json (pipeline) or config.json (model folder), and no config.toml (scoregen run)",
        ));
    };
    let weights = model_dir.join(WEIGHTS);
    if !weights.exists() {
        let hint = if model_dir.join(WEIGHTS_BIN).exists() {
            format!(
                "only {WEIGHTS_BIN} (a PyTorch pickle, which scoregen does not read) is there: convert it with `python scripts/convert-diffusers-bin.py {}`",
                model_dir.display()
            )
        } else {
            "the weights are missing".to_string()
        };
        return Err(Error::data(&weights, hint));
    }
    // diffusers' own layouts first, then the legacy root file of early checkpoints
    let scheduler = [
        dir.join("scheduler").join("scheduler_config.json"),
        model_dir.join("scheduler_config.json"),
        dir.join("scheduler_config.json"),
    ]
    .into_iter()
    .find(|p| p.exists());
    Ok(Layout { model_config: model_dir.join("config.json"), weights, scheduler, kind })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, format!("not JSON: {e}")))
}

/// A diffusers checkpoint read as a scoregen run.
pub struct Imported {
    pub cfg: RunConfig,
    pub layout: Layout,
    /// The scheduler class the SDE came from (or the default that was assumed).
    pub scheduler: String,
}

/// Reads `dir`'s configs into a [`RunConfig`]: `model.kind = "unet2d"` with the
/// UNet2DModel config, the SDE and the sampling defaults from the scheduler.
pub fn read(dir: &Path) -> Result<Imported> {
    let layout = layout(dir)?;
    let file = layout.model_config.display().to_string();
    let text = std::fs::read_to_string(&layout.model_config).map_err(|e| Error::io(&layout.model_config, e))?;
    let unet = UNet2DConfig::from_json(&text, &file)?;
    let Some((c, h, w)) = unet.image() else {
        return Err(Error::config(
            &file,
            "sample_size",
            "is missing; scoregen needs the image size the model was trained at",
        ));
    };
    if h != w {
        return Err(Error::config(&file, "sample_size", format!("{h}×{w}: scoregen's image models are square")));
    }
    if unet.out_channels != c {
        return Err(Error::config(
            &file,
            "out_channels",
            format!("is {}, in_channels {c}: a score or ε-model maps an image to one of its shape", unet.out_channels),
        ));
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "imported".into());
    let mut cfg = RunConfig { name, ..Default::default() };
    cfg.data.source = String::new();
    cfg.model.kind = ModelKind::Unet2d;
    cfg.model.image_channels = c;
    let scheduler = match &layout.scheduler {
        Some(p) => apply_scheduler(&mut cfg, &read_json(p)?, &p.display().to_string(), unet.fourier())?,
        None => {
            let default = if unet.fourier() { "ScoreSdeVeScheduler" } else { "DDPMScheduler" };
            let mut json = serde_json::Map::new();
            json.insert("_class_name".into(), Value::String(default.into()));
            apply_scheduler(&mut cfg, &Value::Object(json), &file, unet.fourier())?;
            format!("{default} (no scheduler config: diffusers' defaults)")
        }
    };
    cfg.model.unet2d = Some(unet);
    cfg.validate(&file)?;
    Ok(Imported { cfg, layout, scheduler })
}

/// Maps a scheduler config onto `[sde]`, `model.output`, `data.scale` and `[sampling]`.
fn apply_scheduler(cfg: &mut RunConfig, json: &Value, file: &str, fourier: bool) -> Result<String> {
    let obj = json.as_object().ok_or_else(|| Error::data(file, "not a JSON object"))?;
    let class = obj.get("_class_name").and_then(Value::as_str).unwrap_or("DDPMScheduler").to_string();
    let num = |key: &str, default: f64| -> Result<f64> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| Error::config(file, key, format!("must be a number (got {v})"))),
        }
    };
    let flag = |key: &str, default: bool| -> Result<bool> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| Error::config(file, key, format!("must be true or false (got {v})"))),
        }
    };
    let word = |key: &str, default: &str| -> Result<String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(v) => Ok(v
                .as_str()
                .ok_or_else(|| Error::config(file, key, format!("must be a string (got {v})")))?
                .to_string()),
        }
    };
    if class == "ScoreSdeVeScheduler" {
        cfg.sde.kind = SdeKind::Ve;
        cfg.sde.sigma_min = num("sigma_min", 0.01)?;
        cfg.sde.sigma_max = num("sigma_max", 1348.0)?;
        cfg.model.output = Output::Score;
        // score_sde's VE models see images in [0, 1] (ScoreSdeVePipeline clamps to [0, 1])
        cfg.data.scale = crate::data::PixelScale::Unit;
        let s = &mut cfg.sampling;
        s.sampler = SamplerKind::Pc;
        s.corrector = Some(CorrectorKind::Langevin);
        s.snr = num("snr", 0.15)?;
        s.steps = num("num_train_timesteps", 2000.0)? as usize;
        s.eps = Some(num("sampling_eps", 1e-5)?);
        s.denoise = true;
        return Ok(class);
    }
    if fourier {
        return Err(Error::config(
            file,
            "_class_name",
            format!("is {class}: a Fourier-embedding (NCSN++) UNet2DModel is a VE score model; scoregen maps it from ScoreSdeVeScheduler"),
        ));
    }
    // every diffusers scheduler of the discrete DDPM chain shares these fields
    const CHAIN: &[&str] = &[
        "DDPMScheduler",
        "DDIMScheduler",
        "GaussianDDPMScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "LMSDiscreteScheduler",
    ];
    if !CHAIN.contains(&class.as_str()) {
        return Err(Error::config(
            file,
            "_class_name",
            format!(
                "{class} is not a scheduler scoregen maps (DDPM-chain schedulers such as {}, or ScoreSdeVeScheduler)",
                CHAIN[..3].join(", ")
            ),
        ));
    }
    if obj.get("trained_betas").is_some_and(|v| !v.is_null()) {
        return Err(Error::config(file, "trained_betas", "explicit betas are not supported (use beta_schedule)"));
    }
    cfg.sde.kind = SdeKind::Ddpm;
    // `timesteps`: the legacy spelling (GaussianDDPMScheduler) of num_train_timesteps
    let n = match obj.get("num_train_timesteps").filter(|v| !v.is_null()) {
        Some(_) => num("num_train_timesteps", 1000.0)?,
        None => num("timesteps", 1000.0)?,
    };
    if n < 2.0 || n.fract() != 0.0 {
        return Err(Error::config(file, "num_train_timesteps", format!("must be an integer ≥ 2 (got {n})")));
    }
    cfg.sde.timesteps = n as usize;
    cfg.sde.beta_start = num("beta_start", 1e-4)?;
    cfg.sde.beta_end = num("beta_end", 0.02)?;
    cfg.sde.beta_schedule = match word("beta_schedule", "linear")?.as_str() {
        "linear" => DdpmSchedule::Linear,
        "scaled_linear" => DdpmSchedule::ScaledLinear,
        "squaredcos_cap_v2" => DdpmSchedule::Cosine,
        other => {
            return Err(Error::config(
                file,
                "beta_schedule",
                format!("{other:?} is not supported (linear, scaled_linear, squaredcos_cap_v2)"),
            ))
        }
    };
    cfg.model.output = match word("prediction_type", "epsilon")?.as_str() {
        "epsilon" => Output::Epsilon,
        "v_prediction" => Output::V,
        "sample" => Output::X0,
        other => {
            return Err(Error::config(
                file,
                "prediction_type",
                format!("{other:?} is not supported (epsilon, v_prediction, sample)"),
            ))
        }
    };
    cfg.data.scale = crate::data::PixelScale::Symmetric;
    let s = &mut cfg.sampling;
    // DDIM, as diffusers' DDIMPipeline samples: x̂₀ limited as the config says,
    // the model's ε̂ kept (use_clipped_model_output=False)
    s.sampler = SamplerKind::Ddim;
    s.steps = 50;
    s.eta = 0.0;
    s.grid = Some(match word("timestep_spacing", "leading")?.as_str() {
        "leading" => Grid::Leading,
        "trailing" => Grid::Trailing,
        "linspace" => Grid::Linspace,
        other => {
            return Err(Error::config(
                file,
                "timestep_spacing",
                format!("{other:?} is not supported (leading, trailing, linspace)"),
            ))
        }
    });
    let legacy_clip = flag("clip_predicted_image", true)?;
    s.clip_denoised = flag("clip_sample", legacy_clip)?;
    s.clip_range = num("clip_sample_range", 1.0)?;
    if flag("thresholding", false)? {
        s.threshold = Some(num("dynamic_thresholding_ratio", 0.995)?);
        s.threshold_max = num("sample_max_value", 1.0)?;
        s.clip_denoised = false;
    }
    s.keep_model_eps = true;
    Ok(class)
}

/// diffusers' renames of the deprecated attention blocks' parameters
/// (`modeling_utils._convert_deprecated_attention_blocks`): query, key, value,
/// proj_attn → to_q, to_k, to_v, to_out.0; and `time_proj.W`, the early name
/// of the Fourier features' weight.
fn current_name(name: &str) -> String {
    for (old, new) in [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]
    {
        if let Some(i) = name.find(old) {
            return format!("{}{}{}", &name[..i], new, &name[i + old.len()..]);
        }
    }
    if name == "time_proj.W" {
        return "time_proj.weight".into();
    }
    name.to_string()
}

/// Reads the weights of `layout` as f32 tensors under the names
/// [`crate::nets::UNet2D`] uses (legacy names renamed).
pub fn read_weights(layout: &Layout) -> Result<HashMap<String, Tensor>> {
    let raw = crate::train::checkpoint::read_tensors(&layout.weights)?;
    let mut out = HashMap::with_capacity(raw.len());
    for (name, t) in raw {
        let t = if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? };
        out.insert(current_name(&name), t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecated_attention_names_map_to_current_ones() {
        assert_eq!(current_name("mid_block.attentions.0.query.weight"), "mid_block.attentions.0.to_q.weight");
        assert_eq!(
            current_name("down_blocks.1.attentions.0.proj_attn.bias"),
            "down_blocks.1.attentions.0.to_out.0.bias"
        );
        assert_eq!(current_name("down_blocks.1.resnets.0.conv1.weight"), "down_blocks.1.resnets.0.conv1.weight");
    }

    /// The legacy scheduler spellings (`GaussianDDPMScheduler`, `timesteps`)
    /// and diffusers' DDIM options become the chain and the sampling defaults.
    #[test]
    fn scheduler_configs_map_to_the_chain_and_defaults() {
        let mut cfg = RunConfig::default();
        let legacy =
            serde_json::json!({"_class_name": "GaussianDDPMScheduler", "timesteps": 500, "beta_schedule": "linear"});
        apply_scheduler(&mut cfg, &legacy, "s.json", false).unwrap();
        assert_eq!((cfg.sde.kind, cfg.sde.timesteps), (SdeKind::Ddpm, 500));
        assert!(cfg.sampling.clip_denoised && cfg.sampling.keep_model_eps);
        let ddim = serde_json::json!({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
            "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": false,
            "timestep_spacing": "trailing", "thresholding": true, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0});
        apply_scheduler(&mut cfg, &ddim, "s.json", false).unwrap();
        assert_eq!(cfg.sde.beta_schedule, DdpmSchedule::ScaledLinear);
        assert_eq!(cfg.model.output, Output::V);
        assert_eq!(cfg.sampling.grid, Some(Grid::Trailing));
        assert_eq!((cfg.sampling.threshold, cfg.sampling.threshold_max), (Some(0.9), 2.0));
        let ve = serde_json::json!({"_class_name": "ScoreSdeVeScheduler", "sigma_max": 348.0, "snr": 0.075});
        apply_scheduler(&mut cfg, &ve, "s.json", true).unwrap();
        assert_eq!((cfg.sde.kind, cfg.sde.sigma_max, cfg.sampling.snr), (SdeKind::Ve, 348.0, 0.075));
        for (bad, field) in [
            (serde_json::json!({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"}), "beta_schedule"),
            (serde_json::json!({"_class_name": "DDPMScheduler", "trained_betas": [0.1, 0.2]}), "trained_betas"),
            (serde_json::json!({"_class_name": "KarrasVeScheduler"}), "_class_name"),
            (serde_json::json!({"_class_name": "DDIMScheduler", "prediction_type": "flow"}), "prediction_type"),
        ] {
            let err = apply_scheduler(&mut cfg, &bad, "s.json", false).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")) && err.contains("s.json"), "{err}");
        }
    }
}
