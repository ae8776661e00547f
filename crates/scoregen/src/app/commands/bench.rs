//! Speed benchmarks (`scoregen bench train|sample|likelihood|gemm`, driven by
//! `bench/run` beside the PyTorch reference `bench/torch_ref.py`).
//!
//! Every case builds the model of a preset config (the MLP of
//! `configs/gmm8-vp.toml`, the U-Net of `configs/digits-vp.toml`) with the
//! width, batch and image size asked for, runs a few warm-up repetitions,
//! then times `reps` repetitions and reports the median. Benchmarks, not
//! tests: nothing here is asserted.

use crate::app::budget;
use crate::app::config::RunConfig;
use crate::app::factory;
use crate::error::{Error, Result};
use crate::likelihood::{self, LikelihoodOptions, TraceEstimator};
use crate::rng::{streams, Rng};
use crate::samplers;
use crate::samplers::{EulerMaruyama, OdeMethod, ReverseOptions, SamplerKind};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::time::Instant;
/// The MLP preset every MLP case starts from.
pub const MLP_PRESET: &str = include_str!("../../../../../configs/gmm8-vp.toml");
/// The U-Net preset every image case starts from.
pub const UNET_PRESET: &str = include_str!("../../../../../configs/digits-vp.toml");
/// The 28×28 class-conditional U-Net with attention of `configs/mnist5k-vp.toml`
/// (`configs/fashion-vp.toml` has the same network): the `bench step --model mnist5k` cases.
pub const MNIST5K_PRESET: &str = include_str!("../../../../../configs/mnist5k-vp.toml");
/// google/ddpm-cifar10-32's UNet2DModel (35.7 M parameters, bench/pretrained.py's
/// config) trained for ε on the VP SDE (time input 999·t): the `bench step --model cifar` cases.
pub const CIFAR_PRESET: &str = r#"
name = "bench-ddpm-cifar10"
seed = 0
[data]
source = "none"
scale = "symmetric"
[sde]
kind = "vp"
beta_min = 0.1
beta_max = 20.0
[model]
kind = "unet2d"
output = "epsilon"
image_channels = 3
[model.unet2d]
sample_size = 32
in_channels = 3
out_channels = 3
act_fn = "silu"
block_out_channels = [128, 256, 256, 256]
attention_head_dim = "none"  # diffusers' null: one head per attention layer, as in google/ddpm-cifar10-32
center_input_sample = false
down_block_types = ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
up_block_types = ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
downsample_padding = 0
flip_sin_to_cos = false
freq_shift = 1.0
layers_per_block = 2
mid_block_scale_factor = 1.0
norm_eps = 1e-6
norm_num_groups = 32
time_embedding_type = "positional"
[objective]
kind = "dsm"
reduction = "mean"
t_eps = 1e-5
[training]
steps = 1000
batch_size = 8
lr = 2e-4
grad_clip = 1.0
ema = 0.9999
"#;

/// One timed case.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub case: String,
    /// Median wall time of one repetition, milliseconds.
    pub median_ms: f64,
    /// All repetitions, milliseconds.
    pub reps_ms: Vec<f64>,
    /// The untimed warm-up calls before them, milliseconds: the first is
    /// what a short command pays (fresh memory, kept transforms made).
    pub warmup_ms: Vec<f64>,
    /// Median CPU time of the process (all threads) per repetition, milliseconds:
    /// robust to other processes sharing the cores, unlike wall time.
    pub cpu_ms: f64,
    /// Items (training examples or samples) per second at the median.
    pub items_per_s: f64,
    /// Floating-point operations of one repetition (matmuls only), when known.
    pub gflop: Option<f64>,
    /// Peak resident set size of the process so far, MiB (Linux; 0 elsewhere).
    pub peak_rss_mib: f64,
    /// The GEMM microkernels this CPU gets (the `gemm` case only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

/// The median of `f`'s wall time over `reps` runs after `warmup` untimed ones.
/// Each run ends by waiting for `device` (a GPU runs its kernels asynchronously).
fn time_it(
    case: String,
    items: usize,
    warmup: usize,
    reps: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    // one call: its wall and process CPU time, ms
    let mut call = || -> Result<(f64, f64)> {
        let (start, cpu_start) = (Instant::now(), process_cpu_ms());
        f()?;
        device.synchronize()?;
        Ok((start.elapsed().as_secs_f64() * 1e3, process_cpu_ms() - cpu_start))
    };
    let warmup_ms = (0..warmup).map(|_| call().map(|(ms, _)| ms)).collect::<Result<Vec<_>>>()?;
    let (ms, cpu): (Vec<f64>, Vec<f64>) =
        (0..reps.max(1)).map(|_| call()).collect::<Result<Vec<_>>>()?.into_iter().unzip();
    let median = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let median_ms = median(&ms);
    Ok(Timing {
        case,
        median_ms,
        cpu_ms: median(&cpu),
        reps_ms: ms,
        warmup_ms,
        items_per_s: items as f64 / (median_ms / 1e3),
        gflop: None,
        peak_rss_mib: peak_rss_mib(),
        kernel: None,
    })
}

/// CPU time used so far by every thread of this process, milliseconds.
pub fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec that we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// VmHWM from /proc/self/status, in MiB (0 when unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The MLP preset with hidden width `width` and batch `batch`.
pub fn mlp_config(width: usize, batch: usize) -> Result<RunConfig> {
    RunConfig::parse(
        MLP_PRESET,
        "configs/gmm8-vp.toml",
        &[format!("model.width={width}"), format!("training.batch_size={batch}")],
    )
}

/// The U-Net preset on `side`×`side` single-channel images (random pixels in
/// [0, 1] written to a .npy in the system's temporary folder, so no data set
/// is needed) with batch `batch`.
pub fn unet_config(side: usize, batch: usize) -> Result<RunConfig> {
    let scratch = std::env::temp_dir().join("scoregen-bench");
    crate::io::fs::create_dir(&scratch)?;
    let n = 256;
    let mut rng = Rng::new(0, streams::BENCH_INPUTS);
    let pixels: Vec<f32> = (0..n * side * side).map(|_| rng.uniform() as f32).collect();
    let path = scratch.join(format!("bench-images-{side}.npy"));
    crate::io::npy::write_f32(&path, &[n, 1, side, side], &pixels)?;
    RunConfig::parse(
        UNET_PRESET,
        "configs/digits-vp.toml",
        &[
            format!("data.source={}", path.display()),
            format!("data.n_train={n}"),
            format!("training.batch_size={batch}"),
        ],
    )
}

/// The model of a [`field_step`] case: the field's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldModel {
    /// configs/mnist5k-vp.toml's U-Net on its own data (labels for guidance).
    Mnist5k,
    /// google/ddpm-cifar10-32's UNet2DModel on random 3×32×32 images.
    Cifar,
}

/// What a [`field_step`] case times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldPhase {
    /// One training step: forward, backward, clipping, Adam, EMA (FLOPs: 3× forward).
    Train,
    /// One Euler–Maruyama step of the reverse SDE with the frozen EMA copy; with
    /// classifier-free guidance (the preset's w) where the model is class-conditional,
    /// which is two network evaluations (FLOPs: 1× or 2× forward).
    Sample,
    /// The likelihood's integrand: s(x, t) and one vector–Jacobian product with
    /// respect to x (a Rademacher probe), frozen EMA copy (FLOPs: 2× forward; ∇ₓ
    /// only, no weight gradients).
    Vjp,
}

impl FieldModel {
    pub fn name(self) -> &'static str {
        match self {
            FieldModel::Mnist5k => "mnist5k",
            FieldModel::Cifar => "ddpm-cifar10",
        }
    }
}

impl FieldPhase {
    pub fn name(self) -> &'static str {
        match self {
            FieldPhase::Train => "train",
            FieldPhase::Sample => "sample",
            FieldPhase::Vjp => "vjp",
        }
    }
}

/// The config of a field-size case with batch `batch`.
pub fn field_config(model: FieldModel, batch: usize) -> Result<RunConfig> {
    match model {
        FieldModel::Mnist5k => {
            RunConfig::parse(MNIST5K_PRESET, "configs/mnist5k-vp.toml", &[format!("training.batch_size={batch}")])
        }
        FieldModel::Cifar => {
            let scratch = std::env::temp_dir().join("scoregen-bench");
            crate::io::fs::create_dir(&scratch)?;
            let n = 64;
            let mut rng = Rng::new(0, streams::BENCH_INPUTS);
            let pixels: Vec<f32> = (0..n * 3 * 32 * 32).map(|_| rng.uniform() as f32).collect();
            let path = scratch.join("bench-images-3x32.npy");
            crate::io::npy::write_f32(&path, &[n, 3, 32, 32], &pixels)?;
            RunConfig::parse(
                CIFAR_PRESET,
                "bench ddpm-cifar10",
                &[
                    format!("data.source={}", path.display()),
                    format!("data.n_train={n}"),
                    format!("training.batch_size={batch}"),
                ],
            )
        }
    }
}

/// FLOPs of one forward pass of the config's U-Net over `batch` images (see
/// `UNetConfig::forward_flops`, `UNet2DConfig::forward_flops`); `None` for other models.
pub fn forward_gflop(cfg: &RunConfig, dim: usize, batch: usize) -> Result<Option<f64>> {
    use crate::app::config::ModelKind;
    Ok(match cfg.model.kind {
        ModelKind::Unet => Some(cfg.model.unet(dim)?.forward_flops(batch) / 1e9),
        ModelKind::Unet2d => cfg.model.unet2d.as_ref().and_then(|u| {
            let (_, h, w) = u.image()?;
            u.forward_flops(batch, h, w).map(|f| f / 1e9)
        }),
        _ => None,
    })
}

/// One step of a field-size case (`phase` on `model` at batch `batch`), median
/// of `reps` after `warmup`, with its FLOPs (the forward pass's analytic count
/// times 3 for training, 2 for a guided sampling step or a forward + VJP).
pub fn field_step(cfg: &RunConfig, model: FieldModel, phase: FieldPhase, warmup: usize, reps: usize) -> Result<Timing> {
    use crate::guidance::{ClassifierFree, Labels};
    use crate::likelihood::trace;
    let batch = cfg.training.batch_size;
    let case = format!("{} {} B={batch}", model.name(), phase.name());
    let mut trainer = factory::trainer(cfg)?;
    let dim = trainer.dataset.points.d;
    let device = trainer.device.clone();
    let fwd = forward_gflop(cfg, dim, batch)?;
    let sde = cfg.sde();
    let guided = trainer.classes > 0 && cfg.sampling.guidance > 0.0;
    let (mut timing, evals) = match phase {
        FieldPhase::Train => {
            let t = time_it(case, batch, warmup, reps, &device, || trainer.train_step("none").map(|_| ()))?;
            (t, 3.0)
        }
        FieldPhase::Sample => {
            let (ema, _vars) = trainer.ema_model()?;
            let cond = crate::nets::ModelConditional { model: &ema, sde: sde.clone() };
            let k = trainer.classes;
            let labels = Labels::Rows((0..batch).map(|i| i % k.max(1)).collect());
            let plain = ema.score(sde.clone());
            let cfg_score = ClassifierFree { model: &cond, labels, w: cfg.sampling.guidance };
            let score: &dyn crate::score::ScoreFn = if guided { &cfg_score } else { plain.as_ref() };
            let opts = ReverseOptions { steps: 1, eps: None, denoise: false, record_every: None, x_init: None };
            let mut rng = Rng::new(cfg.seed, streams::SAMPLING);
            let pb = indicatif::ProgressBar::hidden();
            let t = time_it(case, batch, warmup, reps, &device, || {
                samplers::sample_reverse(
                    score,
                    sde.as_ref(),
                    &EulerMaruyama,
                    (batch, dim),
                    &opts,
                    &mut rng,
                    DType::F32,
                    &device,
                    &pb,
                )?;
                Ok(())
            })?;
            (t, if guided { 2.0 } else { 1.0 })
        }
        FieldPhase::Vjp => {
            let (ema, _vars) = trainer.ema_model()?;
            let score = ema.score(sde.clone());
            let mut rng = Rng::new(cfg.seed, streams::EVAL);
            let x = rng.randn((batch, dim), DType::F32, &device)?;
            let t = Tensor::full(0.5f32, batch, &device)?;
            let estimator = TraceEstimator::Hutchinson { probes: 1, noise: trace::ProbeNoise::Rademacher };
            let probes = trace::draw_probes(&x, 1, trace::ProbeNoise::Rademacher, &mut rng)?;
            let t = time_it(case, batch, warmup, reps, &device, || {
                trace::score_and_divergence(score.as_ref(), &x, &t, estimator, &probes)?;
                Ok(())
            })?;
            (t, 2.0)
        }
    };
    timing.gflop = fwd.map(|f| evals * f);
    Ok(timing)
}

/// FLOPs of one MLP training step: forward 2·B·Σ(in·out) per layer, backward twice that.
fn mlp_step_gflop(cfg: &RunConfig, dim: usize) -> f64 {
    let m = cfg.model.mlp();
    let (w, e, b) = (m.width as f64, m.embed_dim as f64, cfg.training.batch_size as f64);
    let hidden = m.depth.saturating_sub(1) as f64;
    let macs = (dim as f64 + e) * w + hidden * (w * w + e * w) + w * dim as f64;
    3.0 * 2.0 * b * macs / 1e9
}

/// One training step (forward, backward, clipping, Adam, EMA) of the config's
/// model, on the config's `run.device`.
pub fn train_step(cfg: &RunConfig, case: &str, warmup: usize, reps: usize) -> Result<Timing> {
    let mut trainer = factory::trainer(cfg)?;
    let dim = trainer.dataset.points.d;
    let device = trainer.device.clone();
    let mut timing = time_it(case.into(), cfg.training.batch_size, warmup, reps, &device, || {
        trainer.train_step("none").map(|_| ())
    })?;
    if matches!(cfg.model.kind, crate::app::config::ModelKind::TimeMlp) {
        timing.gflop = Some(mlp_step_gflop(cfg, dim));
    }
    Ok(timing)
}

/// `which` if [`sample`] can time it (em or ode), else the error naming the setting.
pub fn timed_sampler(which: SamplerKind) -> Result<SamplerKind> {
    match which {
        SamplerKind::Em | SamplerKind::Ode => Ok(which),
        _ => Err(Error::Setting {
            key: "sampling.sampler",
            message: format!("bench sample times em or ode, not `{which}`"),
        }),
    }
}

/// Draws `n` samples of the config's (untrained) model in `steps` steps with
/// `em` (Euler–Maruyama on the reverse SDE) or `ode` (the probability-flow ODE,
/// here with Heun's method in `steps` fixed steps, 2 NFE each, so both sides of
/// the PyTorch comparison do the same work);
/// `label` names the model in the case ("" for the MLP, "unet 28x28 "); on `run.device`.
pub fn sample(cfg: &RunConfig, which: SamplerKind, n: usize, steps: usize, reps: usize, label: &str) -> Result<Timing> {
    timed_sampler(which)?;
    let trainer = factory::trainer(cfg)?;
    let sde = cfg.sde();
    // the model sampling and likelihoods use: the EMA copy, frozen
    let (model, _vars) = trainer.ema_model()?;
    let score = model.score(sde.clone());
    let dim = trainer.dataset.points.d;
    budget::check_sampling(cfg, n, dim, 0, "bench sample:")?;
    let evals = if which == SamplerKind::Ode { 2.0 } else { 1.0 };
    budget::check_evaluations("bench sample", evals * (steps * reps) as f64, "lower --steps or --reps")?;
    let opts = ReverseOptions { steps, eps: None, denoise: false, record_every: None, x_init: None };
    let mut rng = Rng::new(cfg.seed, streams::SAMPLING);
    let name = match which {
        SamplerKind::Ode => "ode-heun".to_string(),
        k => k.to_string(),
    };
    let pb = indicatif::ProgressBar::hidden();
    let device = trainer.device.clone();
    time_it(format!("sample {label}{name} n={n} steps={steps}"), n, 0, reps, &device, || {
        match which {
            SamplerKind::Em => samplers::sample_reverse(
                score.as_ref(),
                sde.as_ref(),
                &EulerMaruyama,
                (n, dim),
                &opts,
                &mut rng,
                DType::F32,
                &device,
                &pb,
            )?,
            _ => samplers::sample_ode(
                score.as_ref(),
                sde.as_ref(),
                (n, dim),
                OdeMethod::Heun { steps },
                &opts,
                &mut rng,
                DType::F32,
                &device,
            )?,
        };
        Ok(())
    })
}

/// Log-likelihood of `n` data points by the probability-flow ODE with Heun's
/// method in `steps` steps, score in f32, the divergence as `likelihood`
/// computes it by default: exact by autodiff for D ≤ 16 (the MLP), one
/// Rademacher probe (Hutchinson) for images. `label` as in [`sample`]; on `run.device`.
pub fn likelihood(cfg: &RunConfig, n: usize, steps: usize, reps: usize, label: &str) -> Result<Timing> {
    let trainer = factory::trainer(cfg)?;
    let sde = cfg.sde();
    // the model sampling and likelihoods use: the EMA copy, frozen
    let (model, _vars) = trainer.ema_model()?;
    let score = model.score(sde.clone());
    let pts = &trainer.dataset.points;
    let n = n.min(pts.n);
    budget::check_sampling(cfg, 2 * n, pts.d, 0, "bench likelihood:")?;
    budget::check_evaluations("bench likelihood", 2.0 * (steps * reps) as f64, "lower --steps or --reps")?;
    let rows: Vec<f32> = (0..n).flat_map(|i| pts.row(i).iter().map(|&v| v as f32)).collect();
    let device = trainer.device.clone();
    let x = Tensor::from_vec(rows, (n, pts.d), &device)?;
    let opts = LikelihoodOptions {
        trace: Some(TraceEstimator::default_for(pts.d)),
        method: OdeMethod::Heun { steps },
        score_dtype: DType::F32,
        ..LikelihoodOptions::default()
    };
    let mut rng = Rng::new(cfg.seed, streams::EVAL);
    time_it(format!("likelihood {label}n={n} steps={steps}"), n, 0, reps, &device, || {
        likelihood::log_likelihood(score.as_ref(), sde.as_ref(), &x, &opts, &mut rng).map(|_| ())
    })
}

/// This device's f32 GEMM rate through candle's matmul: an n×n by n×n
/// product (2n³ FLOPs), median of `reps`.
pub fn gemm_peak(n: usize, reps: usize, device: &Device) -> Result<Timing> {
    crate::io::memory::check(&format!("bench gemm of {n}×{n} matrices"), budget::gemm(n), "lower --n")?;
    budget::check_evaluations("bench gemm", reps as f64, "lower --reps")?;
    let mut rng = Rng::new(0, streams::BENCH_INPUTS);
    let a = rng.randn((n, n), DType::F32, device)?;
    let b = rng.randn((n, n), DType::F32, device)?;
    let mut t = time_it(format!("gemm {n}x{n}"), 1, 2, reps, device, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    t.gflop = Some(2.0 * (n as f64).powi(3) / 1e9);
    t.kernel = Some(gemm_kernel().into());
    Ok(t)
}

/// The microkernels the `gemm` crate chooses at run time on this CPU (built
/// with its `x86-v4` feature): AVX-512 where the CPU has it, else AVX2 + FMA.
pub fn gemm_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "scalar"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field cases' FLOPs: the DDPM CIFAR-10 preset counts torch.utils.flop_counter's
    /// 12.4437 GFLOP per image (the same as diffusers' UNet2DModel), mnist5k its 6.9954
    /// GFLOP per 64 images, linear in the batch.
    #[test]
    fn field_presets_count_the_forward_flops_of_their_networks() {
        let cifar = field_config(FieldModel::Cifar, 8).unwrap();
        let per_image = forward_gflop(&cifar, 3 * 32 * 32, 1).unwrap().unwrap();
        assert!((per_image - 12.443713536).abs() < 1e-9, "{per_image}");
        assert!((forward_gflop(&cifar, 3 * 32 * 32, 8).unwrap().unwrap() - 8.0 * per_image).abs() < 1e-9);
        let mnist = field_config(FieldModel::Mnist5k, 64).unwrap();
        assert_eq!(mnist.training.batch_size, 64);
        let g = forward_gflop(&mnist, 28 * 28, 64).unwrap().unwrap();
        assert!((g - 6.99539456).abs() < 1e-9, "{g}");
        // models without a count give none rather than a wrong one
        assert_eq!(forward_gflop(&mlp_config(128, 512).unwrap(), 2, 512).unwrap(), None);
    }
}
