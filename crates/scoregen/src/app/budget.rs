//! What a request will allocate, estimated from its sizes before anything is
//! allocated and checked against the machine ([`crate::io::memory::check`]).
//! The estimates are deliberately generous (a factor of a few above what
//! is measured): their job is to refuse the absurd (`--n 10^11`, a batch of
//! 10⁶ through a 16384-wide net) at once, not to pack memory tightly.

use crate::app::config::{ModelConfig, ModelKind, ObjectiveKind, RunConfig};
use crate::error::Result;
use crate::io::memory;

/// f32 activations one point carries through one forward pass of the model.
fn activations_per_point(model: &ModelConfig, dim: usize) -> f64 {
    if let (ModelKind::Unet2d, Some(u)) = (model.kind, &model.unet2d) {
        // each level l at H·W/4^l keeps (2·layers + 4) maps of c_l channels, and
        // an attention level its (H·W/4^l)² weights per head
        let hw = dim as f64 / u.in_channels.max(1) as f64;
        let per_block = (2 * u.layers_per_block + 4) as f64;
        return u
            .block_out_channels
            .iter()
            .enumerate()
            .map(|(l, &c)| {
                let at = hw / 4f64.powi(l as i32);
                // attention weights only where a block attends
                let levels = u.block_out_channels.len();
                let attends = u.down_kinds()[l].attention || u.up_kinds()[levels - 1 - l].attention;
                let heads = u.attention_head_dim.map_or(1.0, |d| (c / d.max(1)).max(1) as f64);
                c as f64 * at * per_block + if attends { heads * at * at } else { 0.0 }
            })
            .sum::<f64>()
            * 2.0;
    }
    match model.kind {
        // Every level keeps a few maps of `channels · mult` channels at ≤ the input's size.
        ModelKind::Unet => {
            let mult: usize = model.channel_mult.iter().sum::<usize>().max(1);
            (dim * model.channels.max(1) * mult) as f64 * 4.0
        }
        _ => (model.width.max(dim) * (model.depth + 2)) as f64 * 2.0,
    }
}

/// Parameters of the model (f32 each), roughly.
fn parameters(model: &ModelConfig, dim: usize) -> f64 {
    if let (ModelKind::Unet2d, Some(u)) = (model.kind, &model.unet2d) {
        // two 3×3 convolutions per residual block, (2·layers + 1) blocks per level down and up
        let blocks = (2 * u.layers_per_block + 1) as f64 * 2.0;
        return u.block_out_channels.iter().map(|&c| 9.0 * (c * c) as f64 * blocks).sum();
    }
    match model.kind {
        ModelKind::Unet => {
            let c = (model.channels * model.channel_mult.iter().max().copied().unwrap_or(1)) as f64;
            c * c * 9.0 * 4.0 * model.channel_mult.len() as f64
        }
        _ => {
            let w = model.width as f64;
            w * w * model.depth as f64 + 2.0 * w * (dim + model.embed_dim) as f64
        }
    }
}

/// Bytes to draw `n` samples of dimension `dim` keeping `frames` states of the
/// reverse process: the sampler's working set (state, noise, score, drift,
/// RK45's stages, f64 copies: 16 f32 copies of the batch), the network's
/// activations (×3 for gradients of energy models and guidance), and each
/// recorded frame as an f32 tensor plus f64 points, and a GIF frame.
pub fn sampling(cfg: &RunConfig, n: usize, dim: usize, frames: usize) -> f64 {
    let (n, d) = (n as f64, dim as f64);
    let state = n * d * 4.0 * 16.0;
    let net = n * activations_per_point(&cfg.model, dim) * 4.0 * 3.0;
    let recorded = frames as f64 * (n * d * 12.0 + 1e6);
    state + net + recorded
}

/// Refuses sampling `n` points when [`sampling`] exceeds the available memory.
pub fn check_sampling(cfg: &RunConfig, n: usize, dim: usize, frames: usize, what: &str) -> Result<()> {
    memory::check(
        &format!(
            "{what} {n} points of dimension {dim}{}",
            if frames > 0 { format!(" with {frames} frames") } else { String::new() }
        ),
        sampling(cfg, n, dim, frames),
        "ask for fewer (--n), or fewer frames",
    )
}

/// Whether training `cfg` differentiates a gradient again (implicit and
/// sliced score matching, energy models), so its inner gradients keep their
/// graphs (`autodiff`); denoising objectives on score networks are first order.
fn second_order(cfg: &RunConfig) -> bool {
    matches!(cfg.objective.kind, ObjectiveKind::Implicit | ObjectiveKind::Sliced | ObjectiveKind::SlicedVr)
        || cfg.model.kind == ModelKind::EnergyMlp
}

/// Bytes to train `cfg` on data of dimension `dim`: the training points (f64),
/// one batch through the network with what its backward keeps, and the
/// parameters five times over (weights, EMA, Adam's two moments, gradients).
/// The batch's share is calibrated on a measurement: the DDPM CIFAR-10
/// U-Net's training step peaks at 1,616 MiB at batch 8 and 3,594 MiB at
/// batch 32 (`bench step --model cifar --phase train`, 1 thread), about
/// 85 MB per image, some 6× the feature maps [`activations_per_point`]
/// counts (the autodiff graph keeps every op's output: each norm, activation
/// and sum). The estimate takes ×16 for a first-order step and ×32 where
/// second-order graphs are kept as well: 2–3× above what was measured.
pub fn training(cfg: &RunConfig, dim: usize) -> f64 {
    let t = &cfg.training;
    let data = cfg.data.n_train as f64 * dim as f64 * 8.0;
    let kept = if second_order(cfg) { 32.0 } else { 16.0 };
    let batch = t.batch_size as f64 * (dim as f64 * 4.0 * 16.0 + activations_per_point(&cfg.model, dim) * 4.0 * kept);
    data + batch + parameters(&cfg.model, dim) * 4.0 * 5.0
}

/// Refuses training when [`training`] exceeds the available memory.
pub fn check_training(cfg: &RunConfig, dim: usize) -> Result<()> {
    memory::check(
        &format!(
            "training a {}-wide model with batches of {} on data of dimension {dim}",
            cfg.model.width, cfg.training.batch_size
        ),
        training(cfg, dim),
        "lower training.batch_size, model.width or data.n_train",
    )
}

/// Bytes to train `train-classifier`'s CNN: the labelled images of both
/// splits (f64), one batch through `blocks` convolutions of `width` channels
/// per resolution at ≤ the input's size with gradients kept (×8 the forward
/// maps, as for [`training`]), and the parameters five times over.
pub fn classifier_training(images: usize, dim: usize, width: usize, blocks: usize, batch: usize) -> f64 {
    let data = images as f64 * dim as f64 * 8.0;
    let maps = dim as f64 * width.max(1) as f64 * (blocks + 2) as f64 * 4.0;
    let params = 9.0 * (width * width) as f64 * (blocks * 3) as f64;
    data + batch as f64 * (dim as f64 * 4.0 * 4.0 + maps * 8.0) + params * 4.0 * 5.0
}

/// Refuses `train-classifier` when [`classifier_training`] exceeds the available memory.
pub fn check_classifier_training(images: usize, dim: usize, width: usize, blocks: usize, batch: usize) -> Result<()> {
    memory::check(
        &format!(
            "training a classifier of width {width} with batches of {batch} on {images} images of dimension {dim}"
        ),
        classifier_training(images, dim, width, blocks, batch),
        "lower the batch size or the width",
    )
}

/// Refuses a fixed amount of work planned as `evaluations` network
/// evaluations (a benchmark's steps × repetitions, say) beyond the bound
/// every sampler has ([`crate::samplers::dispatch::MAX_EVALUATIONS`]),
/// naming `what` and the flag to lower.
pub fn check_evaluations(what: &str, evaluations: f64, hint: &str) -> Result<()> {
    let max = crate::samplers::dispatch::MAX_EVALUATIONS;
    if evaluations > max {
        return Err(crate::error::Error::Invalid(format!(
            "{what} would take about {evaluations:.2e} network evaluations; more than {max:.0e} is refused ({hint})"
        )));
    }
    Ok(())
}

/// Bytes of an n×n by n×n f32 product: the two factors and the result.
pub fn gemm(n: usize) -> f64 {
    3.0 * (n as f64).powi(2) * 4.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classifier's estimate grows with each size and refuses the absurd;
    /// the evaluation bound takes the samplers' own.
    #[test]
    fn classifier_and_work_bounds() {
        let base = classifier_training(1797, 64, 32, 2, 128);
        assert!((1797.0 * 64.0 * 8.0..1e9).contains(&base), "{base}");
        assert!(classifier_training(1797, 64, 64, 2, 128) > base);
        assert!(classifier_training(1797, 64, 32, 2, 256) > base);
        assert!(classifier_training(1797, 64, 32, 2, 1_000_000_000) > 1e12);
        assert!(check_evaluations("x", 1e6, "h").is_ok());
        let e = check_evaluations("bench sample", 2e12, "lower --steps").unwrap_err().to_string();
        assert!(e.contains("bench sample") && e.contains("2.00e12") && e.contains("--steps"), "{e}");
        assert_eq!(gemm(1024), 3.0 * 1024.0 * 1024.0 * 4.0);
    }

    #[test]
    fn estimates_grow_with_the_request_and_cover_the_batch() {
        let cfg = RunConfig::default();
        let small = sampling(&cfg, 1000, 2, 0);
        assert!((1000.0 * 2.0 * 4.0..1e8).contains(&small), "{small}");
        assert!((sampling(&cfg, 2000, 2, 0) / small - 2.0).abs() < 1e-9);
        assert!(sampling(&cfg, 1000, 2, 40) > small + 40.0 * 1000.0 * 2.0 * 12.0);
        assert!(sampling(&cfg, 100_000_000_000, 2, 0) > 1e13);
        assert!(training(&cfg, 2) < 1e9, "the default config trains anywhere");
    }

    /// google/ddpm-cifar10-32's UNet2DModel has 35.7 M parameters; the
    /// estimate is within a factor of 2, and sampling 16 images fits in 4 GiB.
    #[test]
    fn the_ddpm_cifar10_unet2d_is_estimated_at_its_size() {
        let json = r#"{"block_out_channels": [128, 256, 256, 256], "attention_head_dim": null,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "sample_size": 32}"#;
        let mut cfg = RunConfig::default();
        cfg.model.kind = ModelKind::Unet2d;
        cfg.model.unet2d = Some(crate::nets::UNet2DConfig::from_json(json, "t").unwrap());
        let p = parameters(&cfg.model, 3072);
        assert!((35.7e6 / 2.0..35.7e6 * 2.0).contains(&p), "{p}");
        assert!(sampling(&cfg, 16, 3072, 0) < 4.0 * 1024f64.powi(3));
        assert!(sampling(&cfg, 1_000_000, 3072, 0) > 64.0 * 1024f64.powi(3), "a million images is refused");
        // training (DSM, first order): batch 8 and 32 measured 1,616 and 3,594 MiB
        // of peak RSS (`bench step --model cifar --phase train`); the estimate
        // covers both and stays under 24 GiB at batch 32, so a 24 GiB machine
        // is not refused a step it can hold
        cfg.data.n_train = 0;
        cfg.training.batch_size = 8;
        let b8 = training(&cfg, 3072);
        cfg.training.batch_size = 32;
        let b32 = training(&cfg, 3072);
        println!("training estimate: B = 8 {:.1} GiB, B = 32 {:.1} GiB", b8 / 1024f64.powi(3), b32 / 1024f64.powi(3));
        let mib = 1024f64 * 1024.0;
        assert!(b8 > 1616.0 * mib && b32 > 3594.0 * mib && b32 < 24.0 * 1024.0 * mib, "{b8} {b32}");
        cfg.objective.kind = ObjectiveKind::Sliced;
        assert!(training(&cfg, 3072) > 1.5 * b32, "second-order graphs are budgeted larger");
    }
}

#[cfg(test)]
mod presets {
    use super::*;

    /// Every preset trains and samples (its `sampling.n`, with a GIF) within
    /// 4 GiB by these estimates, so no user is refused a shipped config.
    #[test]
    fn every_preset_fits_in_4_gib() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let cfg = RunConfig::load(&path, &[]).unwrap();
            let dim = if cfg.model.kind == ModelKind::Unet { 28 * 28 * cfg.model.image_channels } else { 2 };
            let (train, sample) = (training(&cfg, dim), sampling(&cfg, cfg.sampling.n, dim, 42));
            println!("{}: training {}, sampling {}", path.display(), memory::human(train), memory::human(sample));
            assert!(train.max(sample) < 4.0 * 1024f64.powi(3), "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 10);
    }
}
