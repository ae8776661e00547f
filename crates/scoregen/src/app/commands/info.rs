//! `scoregen info`: what a run folder holds — a scoregen run or a diffusers
//! checkpoint — as loaded: the network, its size, the SDE its time refers to
//! and the default sampler.

use crate::app::config::{ModelKind, SdeKind};
use crate::app::pretrained;
use crate::app::run_dir::LoadedModel;
use crate::error::Result;
use candle_core::Device;
use serde::Serialize;
use std::path::Path;

/// The description of a loaded run.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub name: String,
    /// `scoregen run`, or `diffusers pipeline` / `diffusers model folder`.
    pub format: String,
    pub model: String,
    pub parameters: usize,
    /// (C, H, W) for image models.
    pub image: Option<(usize, usize, usize)>,
    pub sde: String,
    pub sampler: String,
    pub steps: usize,
    pub step: usize,
    pub weights: String,
    /// The scheduler an imported checkpoint's SDE and defaults came from.
    pub scheduler: Option<String>,
}

/// Loads `dir` (on the CPU) and describes it.
pub fn describe(dir: &Path) -> Result<RunInfo> {
    let (model, format, scheduler) = if pretrained::is_diffusers_dir(dir) {
        let imported = pretrained::read(dir)?;
        let (format, scheduler) = (format!("diffusers {}", imported.layout.kind), imported.scheduler.clone());
        (LoadedModel::from_imported(imported, &Device::Cpu)?, format, Some(scheduler))
    } else {
        (LoadedModel::from_run(dir, true, &Device::Cpu)?, "scoregen run".to_string(), None)
    };
    let cfg = &model.cfg;
    let parameters = crate::nets::named_vars(&model.varmap).iter().map(|(_, v)| v.elem_count()).sum();
    let model_name = match (cfg.model.kind, &cfg.model.unet2d) {
        (ModelKind::Unet2d, Some(u)) => format!(
            "UNet2DModel: channels {:?}, {} residual blocks per level, down {:?}, up {:?}, {} time embedding, output {:?}",
            u.block_out_channels,
            u.layers_per_block,
            u.down_block_types,
            u.up_block_types,
            u.time_embedding_type,
            cfg.model.output
        ),
        (kind, _) => format!("{kind}, output {:?}", cfg.model.output),
    };
    let s = &cfg.sde;
    let sde = match s.kind {
        SdeKind::Ve => format!("VE, σ from {} to {}", s.sigma_min, s.sigma_max),
        SdeKind::Vp | SdeKind::Subvp => format!("{}, β from {} to {}", s.kind, s.beta_min, s.beta_max),
        SdeKind::Ddpm => format!(
            "the discrete DDPM chain: N = {}, {:?} β from {} to {}",
            s.timesteps, s.beta_schedule, s.beta_start, s.beta_end
        ),
    };
    Ok(RunInfo {
        name: cfg.name.clone(),
        format,
        model: model_name,
        parameters,
        image: cfg.image_shape(model.state.dim),
        sde,
        sampler: cfg.sampling.sampler.to_string(),
        steps: cfg.sampling.steps,
        step: model.state.step,
        weights: model.weights.display().to_string(),
        scheduler,
    })
}
