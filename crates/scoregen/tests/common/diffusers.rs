//! diffusers checkpoint folders written the way diffusers' `save_pretrained`
//! writes them (config.json with diffusers' field names, safetensors under
//! diffusers' parameter names), with random weights: shared by the tests of
//! imported models (pretrained.rs, host_reads.rs).
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use scoregen::nets::{named_vars, UNet2D, UNet2DConfig};
use std::path::Path;

/// A DDPM-style model (Down/Attn blocks, positional timesteps) on 8×8×3 images.
pub fn ddpm_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DModel", "_diffusers_version": "0.42.1",
        "sample_size": 8, "in_channels": 3, "out_channels": 3,
        "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4, "attention_head_dim": 8, "downsample_padding": 0,
        "flip_sin_to_cos": false, "freq_shift": 1, "norm_eps": 1e-6
    })
}

/// An NCSN++-style model (Skip blocks, FIR resampling, Fourier features of σ).
pub fn ncsnpp_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
        "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["SkipDownBlock2D", "SkipDownBlock2D"],
        "up_block_types": ["SkipUpBlock2D", "SkipUpBlock2D"],
        "norm_num_groups": null, "attention_head_dim": 8, "time_embedding_type": "fourier",
        "mid_block_scale_factor": std::f64::consts::SQRT_2, "norm_eps": 1e-6
    })
}

/// Writes a model folder (or a pipeline folder when `pipeline`) with random
/// weights drawn by scoregen's own initializer and the given scheduler config.
pub fn write_checkpoint(dir: &Path, model: &serde_json::Value, scheduler: &serde_json::Value, pipeline: bool) {
    let cfg = UNet2DConfig::from_json(&model.to_string(), "test").unwrap();
    let vm = VarMap::new();
    UNet2D::build(&vm, &cfg, 7, &Device::Cpu).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> =
        named_vars(&vm).into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
    let (model_dir, sched_dir) = if pipeline {
        std::fs::write(dir.join("model_index.json"), r#"{"_class_name": "DDPMPipeline"}"#).unwrap();
        (dir.join("unet"), dir.join("scheduler"))
    } else {
        (dir.to_path_buf(), dir.to_path_buf())
    };
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::create_dir_all(&sched_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), model.to_string()).unwrap();
    candle_core::safetensors::save(&tensors, model_dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(sched_dir.join("scheduler_config.json"), scheduler.to_string()).unwrap();
}

pub fn ddpm_scheduler() -> serde_json::Value {
    serde_json::json!({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
        "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": true})
}

pub fn ve_scheduler() -> serde_json::Value {
    serde_json::json!({"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0.01, "sigma_max": 20.0, "snr": 0.15})
}
