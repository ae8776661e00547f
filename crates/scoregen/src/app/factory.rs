//! The one place that builds objects from a config: the SDE, the model, the
//! objective, the noise ladder, the sampler settings. Below the application
//! layer nothing reads the config; these values travel down.

use super::config::*;
use crate::data::{self, ImageOptions};
use crate::error::{Error, Result};
use crate::nets::{
    self, Conditioning, EnergyMlp, ImportedUNet, Mlp, MlpConfig, Model, TimeInput, UNet, UNet2D, UNetConfig,
};
use crate::objectives::{ContinuousDsm, DenoisingAtSigma, Dsm, Implicit, Ncsn, Objective, Sliced};
use crate::rng::{streams, Rng};
use crate::score::{Edm, Head, TimestepTimes};
use crate::sde::{diffusers_betas, BetaSchedule, DiscreteVp, NoiseLadder, Sde, SubVpSde, VeSde, VpSde};
use crate::train::{TrainSetup, Trainer};
use candle_core::Device;
use candle_nn::VarMap;
use std::sync::Arc;

impl SdeConfig {
    /// The SDE this section describes.
    pub fn build(&self) -> Arc<dyn Sde> {
        match self.kind {
            SdeKind::Ve => Arc::new(VeSde::new(self.sigma_min, self.sigma_max)),
            SdeKind::Vp => Arc::new(VpSde::new(self.beta_min, self.beta_max)),
            SdeKind::Subvp => Arc::new(SubVpSde::new(self.beta_min, self.beta_max)),
            SdeKind::Ddpm => {
                let schedule = match self.beta_schedule {
                    DdpmSchedule::Linear => BetaSchedule::Linear,
                    DdpmSchedule::ScaledLinear => BetaSchedule::ScaledLinear,
                    DdpmSchedule::Cosine => BetaSchedule::Cosine,
                };
                let betas = diffusers_betas(schedule, self.beta_start, self.beta_end, self.timesteps);
                Arc::new(DiscreteVp::from_betas(schedule, betas))
            }
        }
    }
}

impl ModelConfig {
    /// How the network's inputs and output relate to the score.
    pub fn head(&self) -> Head {
        match self.preconditioning {
            Preconditioning::None => Head::Plain(self.output),
            Preconditioning::Edm => Head::Edm(Edm { sigma_data: self.sigma_data }),
        }
    }

    pub fn mlp(&self) -> MlpConfig {
        MlpConfig { width: self.width, depth: self.depth, embed_dim: self.embed_dim, embed_scale: self.embed_scale }
    }

    /// The U-Net for flattened square images of dimension `dim`.
    pub fn unet(&self, dim: usize) -> Result<UNetConfig> {
        Ok(UNetConfig {
            image: UNetConfig::square_image(dim, self.image_channels)?,
            channels: self.channels,
            channel_mult: self.channel_mult.clone(),
            groups: self.groups,
            attention: self.attention,
            embed_dim: self.embed_dim,
            embed_scale: self.embed_scale,
        })
    }
}

impl DataConfig {
    /// How image sources are read (the split does not depend on the run's seed,
    /// so every run holds out the same test images).
    pub fn image_options(&self) -> ImageOptions {
        ImageOptions { scale: self.scale, test_fraction: self.test_fraction, split_seed: 0 }
    }
}

impl ObjectiveConfig {
    pub fn dsm(&self) -> Dsm {
        Dsm {
            weighting: self.weighting,
            reduction: self.reduction,
            t_eps: self.t_eps,
            times: self.t_sampling,
            log_sigma: (self.p_mean, self.p_std),
            ..Dsm::default()
        }
    }
}

impl RunConfig {
    /// The noise ladder of `[noise]`.
    pub fn ladder(&self) -> NoiseLadder {
        NoiseLadder::geometric(self.noise.sigma_min, self.noise.sigma_max, self.noise.levels)
    }

    /// (C, H, W) when the data are images: a named set's shape, else square
    /// images of `model.image_channels` channels for a U-Net or an image source.
    pub fn image_shape(&self, dim: usize) -> Option<(usize, usize, usize)> {
        data::image_shape_of(&self.data.source).or_else(|| {
            (matches!(self.model.kind, ModelKind::Unet | ModelKind::Unet2d) || data::is_image_source(&self.data.source))
                .then(|| UNetConfig::square_image(dim, self.model.image_channels).ok())
                .flatten()
        })
    }

    /// The SDE the model's time input refers to: the ladder's VE SDE for NCSN, else `[sde]`.
    pub fn sde(&self) -> Arc<dyn Sde> {
        match self.objective.kind {
            ObjectiveKind::Ncsn => Arc::new(self.ladder().sde()),
            _ => self.sde.build(),
        }
    }

    /// The training objective.
    pub fn objective(&self) -> Box<dyn Objective> {
        let o = &self.objective;
        match o.kind {
            ObjectiveKind::Dsm => match o.sigma {
                Some(sigma) => Box::new(DenoisingAtSigma { sigma }),
                None => Box::new(ContinuousDsm {
                    dsm: Dsm { sigma_data: self.model.sigma_data, ..o.dsm() },
                    sde: self.sde.build(),
                }),
            },
            ObjectiveKind::Ncsn => {
                Box::new(Ncsn { ladder: self.ladder(), power: self.noise.power, reduction: o.reduction })
            }
            ObjectiveKind::Implicit => Box::new(Implicit { max_dim: o.max_dim }),
            ObjectiveKind::Sliced | ObjectiveKind::SlicedVr => Box::new(Sliced {
                projections: o.projections,
                projection: o.projection,
                variance_reduced: o.kind == ObjectiveKind::SlicedVr,
            }),
        }
    }

    /// The time at which a noise-free sampler (Langevin, MALA) evaluates the score:
    /// 0 (the smallest level for NCSN; unconditional models ignore it), or the
    /// SDE's sampling ε where the marginal has no noise at 0 (VP, sub-VP, the
    /// DDPM chain), since a score read from ε̂/s(t) is undefined at s(0) = 0.
    pub fn langevin_time(&self) -> f64 {
        let sde = self.sde();
        if sde.marginal(0.0).1 > 0.0 {
            0.0
        } else {
            sde.sampling_eps()
        }
    }
}

/// Builds the model `[model]` describes on `device`, with parameters in `vm`
/// (new ones drawn from `seed` on the CPU and copied, so every device starts
/// from the same values; existing ones reused). `levels` is the number of
/// noise levels (for level-conditioned networks); `sde` is what the model's
/// time input refers to (for `unet2d`, whose input is a timestep or σ).
pub fn build_model(
    cfg: &ModelConfig,
    dim: usize,
    levels: usize,
    seed: u64,
    vm: &VarMap,
    device: &Device,
    sde: &Arc<dyn Sde>,
) -> candle_core::Result<Model> {
    let mlp = cfg.mlp();
    Ok(match cfg.kind {
        ModelKind::TimeMlp => {
            let mut net = Mlp::build(vm, dim, dim, &mlp, Conditioning::Fourier, seed, device)?;
            if cfg.classes.count() > 0 {
                let vb =
                    nets::seeded_var_builder(vm, streams::class_embedding_seed(seed), candle_core::DType::F32, device);
                net = net.with_classes(vb, cfg.classes.count())?;
            }
            Model::Score(Box::new(net), cfg.head())
        }
        ModelKind::Mlp => {
            Model::Score(Box::new(Mlp::build(vm, dim, dim, &mlp, Conditioning::None, seed, device)?), cfg.head())
        }
        ModelKind::NcsnMlp => Model::Score(
            Box::new(Mlp::build(vm, dim, dim, &mlp, Conditioning::Levels(levels), seed, device)?),
            cfg.head(),
        ),
        ModelKind::EnergyMlp => Model::Energy(EnergyMlp::build(vm, dim, &mlp, Conditioning::None, seed, device)?),
        ModelKind::Unet => {
            let unet = cfg.unet(dim).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let mut net = UNet::build(vm, &unet, seed, device).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            if cfg.classes.count() > 0 {
                let vb =
                    nets::seeded_var_builder(vm, streams::class_embedding_seed(seed), candle_core::DType::F32, device);
                net = net.with_classes(vb, cfg.classes.count())?;
            }
            Model::Score(Box::new(net), cfg.head())
        }
        ModelKind::Unet2d => {
            let msg = |e: Error| candle_core::Error::Msg(e.to_string());
            let u = cfg.unet2d.as_ref().ok_or_else(|| {
                candle_core::Error::Msg("model.kind = \"unet2d\" needs a [model.unet2d] table".into())
            })?;
            let image = UNetConfig::square_image(dim, u.in_channels).map_err(msg)?;
            let net = UNet2D::build(vm, u, seed, device).map_err(msg)?;
            Model::Score(Box::new(ImportedUNet { net, image, time: time_input(sde.as_ref(), sde) }), cfg.head())
        }
    })
}

/// What a `unet2d`'s timestep input is under `sde`: the chain's timestep for
/// `ddpm` (diffusers' DDPM checkpoints), σ(t) for VE (NCSN++'s
/// `ScoreSdeVeScheduler`), and 999·t for the continuous VP and sub-VP SDEs
/// (score_sde's DDPM++ convention).
pub fn time_input(sde: &dyn Sde, shared: &Arc<dyn Sde>) -> TimeInput {
    match (sde.timestep_times(), sde.name()) {
        (Some(times), _) => TimeInput::Timesteps(Arc::new(TimestepTimes::new(times))),
        (None, "ve") => TimeInput::Sigma(shared.clone()),
        _ => TimeInput::Scaled(999.0),
    }
}

/// A fresh [`Trainer`] for `cfg` on `run.device`: its data drawn and its
/// model initialized from the seed. Bad input (data, class labels, model
/// shape, a device this build or machine lacks) fails here, before anything is written.
pub fn trainer(cfg: &RunConfig) -> Result<Trainer> {
    Ok(trainer_and_config(cfg)?.0)
}

/// [`trainer`] and the config it trains: `cfg` with `model.classes = "auto"`
/// resolved from the data's labels and a U-Net's image channels from the data
/// ([`RunConfig::fitted_to_data`]), as the run's config.toml records them.
pub fn trainer_and_config(cfg: &RunConfig) -> Result<(Trainer, RunConfig)> {
    crate::init();
    let device = cfg.run.device.open()?;
    let dataset = data::load_with(
        &cfg.data.source,
        cfg.data.n_train,
        &mut Rng::new(cfg.seed, streams::DATA),
        &cfg.data.image_options(),
    )?;
    // Before the model is built: a 16384-wide net is gigabytes of parameters already.
    crate::app::budget::check_training(cfg, dataset.points.d)?;
    let cfg = &cfg.fitted_to_data(dataset.labels.as_deref(), dataset.image_shape)?;
    if cfg.model.classes.count() > 0 {
        let k = cfg.model.classes.count();
        let labels = dataset.labels.as_ref().ok_or_else(|| {
            Error::config(
                "config",
                "model.classes",
                format!(
                    "data `{}` has no class labels: set model.classes = 0 (and remove sampling.class) for an unconditional model",
                    cfg.data.source
                ),
            )
        })?;
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= k) {
            return Err(Error::config(
                "config",
                "model.classes",
                format!(
                    "is {k}, but the data has label {bad}: set model.classes = {} or more (labels 0..{bad}), or 0 for an unconditional model (then also remove sampling.class)",
                    bad as usize + 1
                ),
            ));
        }
    }
    let (dim, levels, seed, model_cfg) = (dataset.points.d, cfg.noise.levels, cfg.seed, cfg.model.clone());
    let varmap = VarMap::new();
    let sde = cfg.sde();
    let model = build_model(&model_cfg, dim, levels, seed, &varmap, &device, &sde)?;
    let on = device.clone();
    let trainer = Trainer::new(TrainSetup {
        dataset,
        model,
        varmap,
        rebuild: Box::new(move |vm| Ok(build_model(&model_cfg, dim, levels, seed, vm, &on, &sde)?)),
        objective: cfg.objective(),
        sde: cfg.sde(),
        settings: cfg.training.clone(),
        classes: cfg.model.classes.count(),
        label_dropout: cfg.model.label_dropout,
        hflip: cfg.data.hflip,
        seed,
        config_hash: cfg.hash(),
        config_toml: cfg.to_toml(),
        device,
    })?;
    Ok((trainer, cfg.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks only read tensors: with them on, training gives the same bits.
    #[test]
    fn detect_anomaly_does_not_change_training() {
        let text = "[data]\nn_train = 64\n[model]\nwidth = 8\ndepth = 2\n[training]\nbatch_size = 8\n";
        let cfg = RunConfig::parse(text, "t.toml", &[]).unwrap();
        let run = |detect: bool| -> Vec<u32> {
            let mut t = trainer(&cfg).unwrap();
            t.detect_anomaly = detect;
            for _ in 0..5 {
                t.train_step("none").unwrap();
            }
            t.params
                .iter()
                .flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .map(f32::to_bits)
                .collect()
        };
        assert_eq!(run(true), run(false));
    }

    /// `data.hflip`: the batch holds the same rows as without flips, each
    /// either as drawn or mirrored left to right exactly; about half flip
    /// (8 steps × 128 rows: 512 ± 5σ = ±80); the same seed flips the same
    /// rows; another step flips others; and it is off by default.
    #[test]
    fn hflip_mirrors_about_half_the_batch_rows() {
        let text = "[data]\nsource = \"digits\"\nn_train = 200\n[model]\nkind = \"unet\"\nchannels = 8\ngroups = 4\nchannel_mult = [1]\n[training]\nbatch_size = 128\n";
        let off = RunConfig::parse(text, "t.toml", &[]).unwrap();
        assert!(!off.data.hflip);
        let on = RunConfig::parse(text, "t.toml", &["data.hflip=true".into()]).unwrap();
        let (mut plain, mut flip) = (trainer(&off).unwrap(), trainer(&on).unwrap());
        let rows = |t: &Trainer| -> Vec<Vec<f32>> { t.shard_batch(0).unwrap().0.to_vec2::<f32>().unwrap() };
        let (mut flipped, mut total, mut per_step) = (0, 0, Vec::new());
        for step in 0..8 {
            (plain.step, flip.step) = (step, step);
            let (a, b) = (rows(&plain), rows(&flip));
            let mut these = Vec::new();
            for (x, y) in a.iter().zip(&b) {
                let mirrored: Vec<f32> = x.chunks_exact(8).flat_map(|r| r.iter().rev().copied()).collect();
                let f = *y == mirrored && *x != mirrored;
                assert!(f || y == x, "step {step}: a row neither as drawn nor mirrored");
                these.push(f);
            }
            flipped += these.iter().filter(|&&f| f).count();
            total += these.len();
            per_step.push(these);
        }
        assert!((432..=592).contains(&flipped), "{flipped} of {total} rows flipped");
        assert_ne!(per_step[0], per_step[1], "each step draws its own flips");
        let again = trainer(&on).unwrap();
        assert_eq!(rows(&again), {
            flip.step = 0;
            rows(&flip)
        });
    }
}
