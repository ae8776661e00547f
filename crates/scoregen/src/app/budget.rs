//! What a request will allocate, estimated from its sizes before anything is
//! allocated and checked against the machine ([`crate::io::memory::check`]).
//! The estimates are deliberately generous (a factor of a few above what
//! is measured): their job is to refuse the absurd (`--n 10^11`, a batch of
//! 10⁶ through a 16384-wide net) at once, not to pack memory tightly.

use crate::app::config::{ModelConfig, ModelKind, RunConfig};
use crate::error::Result;
use crate::io::memory;

/// f32 activations one point carries through one forward pass of the model.
fn activations_per_point(model: &ModelConfig, dim: usize) -> f64 {
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

/// Bytes to train `cfg` on data of dimension `dim`: the training points (f64),
/// one batch through the network with second-order autodiff graphs kept
/// (×8 the forward activations), and the parameters five times over
/// (weights, EMA, Adam's two moments, gradients).
pub fn training(cfg: &RunConfig, dim: usize) -> f64 {
    let t = &cfg.training;
    let data = cfg.data.n_train as f64 * dim as f64 * 8.0;
    let batch = t.batch_size as f64 * (dim as f64 * 4.0 * 16.0 + activations_per_point(&cfg.model, dim) * 4.0 * 8.0);
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

#[cfg(test)]
mod tests {
    use super::*;

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
