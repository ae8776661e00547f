//! The sampler table: every sampler a user can name, once. Each row gives
//! its name, a one-line description, how it runs ([`Method`]: which predictor,
//! which σ-space step, which grid by default) and what it costs in score
//! evaluations. Config parsing, `--sampler` and its help, `scoregen list`, the
//! leaderboard, Python's `sampler_names()` and the capability checks
//! ([`SamplerKind::check`]) all read this table; [`super::SamplerSpec::sample`]
//! runs a row. Adding a sampler: its own file with the step, a variant here
//! and its row.

use super::correctors::{AnnealedLangevin, Corrector, LangevinCorrector, NoneCorrector};
use super::ddim::DdimStep;
use super::denoiser::SigmaStep;
use super::dpm_solver::{Dpmpp2mSdeStep, Dpmpp2mStep, Dpmpp3mStep};
use super::grid::Grid;
use super::heun::HeunStep;
use super::predictors::{Ancestral, EulerMaruyama, Predictor, ReverseDiffusion};
use super::settings::{Dpmpp3mForm, SamplerSpec};
use super::unipc::{UniPcStep, UniPcVariant};
use crate::error::{Error, Result};
use crate::named::Named;

/// Which sampler runs (`sampling.sampler`, `--sampler`); its name, description
/// and method are its row in [`SAMPLERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    Em,
    ReverseDiffusion,
    Ancestral,
    Pc,
    Ode,
    Langevin,
    Mala,
    AnnealedLangevin,
    Ddpm,
    Ddim,
    Dpmpp2m,
    Heun,
    Dpmpp3m,
    Dpmpp2mSde,
    EulerAncestral,
    UniPcBh1,
    UniPcBh2,
}

/// How a sampler runs.
#[derive(Clone, Copy)]
pub enum Method {
    /// A predictor of the reverse SDE on a uniform time grid from T to ε,
    /// with a corrector before each step (`sampling.corrector`, else this
    /// default), ending with Tweedie's denoising step.
    ReverseSde { predictor: fn() -> Box<dyn Predictor>, corrector: CorrectorKind },
    /// The probability-flow ODE from T to ε with adaptive RK45.
    ProbabilityFlow,
    /// A step of the shared σ-space loop ([`super::sample_sigma_steps`]) over
    /// a denoiser, on `sampling.grid` or this default grid.
    SigmaSpace { step: fn(&SamplerSpec) -> Box<dyn SigmaStep>, grid: Grid },
    /// Langevin dynamics at one noise level; with `metropolis`, MALA's accept
    /// step (needs the unnormalized density of an energy model).
    Langevin { metropolis: bool },
    /// Annealed Langevin dynamics down the NCSN noise ladder.
    AnnealedLangevin,
}

/// One row of the sampler table.
#[derive(Clone, Copy)]
pub struct SamplerInfo {
    pub kind: SamplerKind,
    /// The name in configs, on the command line and in Python.
    pub name: &'static str,
    /// One line for `scoregen list` and `--help`.
    pub description: &'static str,
    pub method: Method,
    /// Score evaluations per step, and once per run on top of those: the
    /// reverse-SDE samplers' final denoising step, `dpmpp-3m`'s second-order
    /// first step. A run of N steps costs N·evals_per_step + final_evals
    /// (Heun: one less, its last step is Euler's).
    pub evals_per_step: usize,
    pub final_evals: usize,
}

const fn reverse_sde(predictor: fn() -> Box<dyn Predictor>, corrector: CorrectorKind) -> Method {
    Method::ReverseSde { predictor, corrector }
}

const fn sigma_space(step: fn(&SamplerSpec) -> Box<dyn SigmaStep>, grid: Grid) -> Method {
    Method::SigmaSpace { step, grid }
}

/// Every sampler, in the order `scoregen list` and `--help` show them: the
/// reverse-SDE and ODE samplers, the Langevin family, then the σ-space solvers,
/// stochastic before deterministic (the leaderboard's order).
pub static SAMPLERS: &[SamplerInfo] = &[
    SamplerInfo {
        kind: SamplerKind::Em,
        name: "em",
        description: "Euler–Maruyama on the reverse SDE",
        method: reverse_sde(|| Box::new(EulerMaruyama), CorrectorKind::None),
        evals_per_step: 1,
        final_evals: 1,
    },
    SamplerInfo {
        kind: SamplerKind::ReverseDiffusion,
        name: "reverse-diffusion",
        description: "reverse-diffusion predictor",
        method: reverse_sde(|| Box::new(ReverseDiffusion), CorrectorKind::None),
        evals_per_step: 1,
        final_evals: 1,
    },
    SamplerInfo {
        kind: SamplerKind::Ancestral,
        name: "ancestral",
        description: "ancestral sampling predictor (VE and VP forms)",
        method: reverse_sde(|| Box::new(Ancestral), CorrectorKind::None),
        evals_per_step: 1,
        final_evals: 1,
    },
    SamplerInfo {
        kind: SamplerKind::Pc,
        name: "pc",
        description: "predictor–corrector: reverse diffusion + Langevin (snr rule) or ALD corrector",
        method: reverse_sde(|| Box::new(ReverseDiffusion), CorrectorKind::Langevin),
        evals_per_step: 2,
        final_evals: 1,
    },
    SamplerInfo {
        kind: SamplerKind::Ode,
        name: "ode",
        description: "probability-flow ODE, adaptive Dormand–Prince RK45",
        method: Method::ProbabilityFlow,
        evals_per_step: 6,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::Langevin,
        name: "langevin",
        description: "Langevin dynamics x ← x + ε s(x) + √(2ε) z",
        method: Method::Langevin { metropolis: false },
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::Mala,
        name: "mala",
        description: "Metropolis-adjusted Langevin (energy models)",
        method: Method::Langevin { metropolis: true },
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::AnnealedLangevin,
        name: "annealed-langevin",
        description: "annealed Langevin over the NCSN noise ladder",
        method: Method::AnnealedLangevin,
        evals_per_step: 1,
        final_evals: 1,
    },
    SamplerInfo {
        kind: SamplerKind::Ddpm,
        name: "ddpm",
        description: "DDPM ancestral sampling (DDIM with η = 1), uniform-t grid by default",
        method: sigma_space(|_| Box::new(DdimStep { eta: 1.0, s_noise: 1.0, keep_model_eps: false }), Grid::UniformT),
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::EulerAncestral,
        name: "euler-ancestral",
        description: "Euler-ancestral (k-diffusion; DDPM's step with sampling.s_noise), Karras grid by default",
        method: sigma_space(
            |s| Box::new(DdimStep { eta: 1.0, s_noise: s.churn().s_noise, keep_model_eps: false }),
            Grid::Karras,
        ),
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::Dpmpp2mSde,
        name: "dpmpp-2m-sde",
        description: "DPM-Solver++(2M) SDE (η = 1, sampling.s_noise), Karras grid by default",
        method: sigma_space(|s| Box::new(Dpmpp2mSdeStep::new(1.0, s.churn().s_noise)), Grid::Karras),
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::Ddim,
        name: "ddim",
        description: "DDIM with stochasticity η (sampling.eta), uniform-t grid by default",
        method: sigma_space(
            |s| Box::new(DdimStep { eta: s.eta, s_noise: 1.0, keep_model_eps: s.keep_model_eps }),
            Grid::UniformT,
        ),
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::Dpmpp2m,
        name: "dpmpp-2m",
        description: "DPM-Solver++(2M), Karras grid by default",
        method: sigma_space(|_| Box::new(Dpmpp2mStep::default()), Grid::Karras),
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::Dpmpp3m,
        name: "dpmpp-3m",
        description: "DPM-Solver++(3M), third order (2S first step: N + 1 NFE), Karras grid by default",
        method: sigma_space(
            |s| match s.dpmpp_3m_form {
                Dpmpp3mForm::Taylor => Box::new(Dpmpp3mStep::default()),
                Dpmpp3mForm::KDiffusion => Box::new(Dpmpp3mStep::k_diffusion()),
            },
            Grid::Karras,
        ),
        // N + 1 for N ≥ 2 steps: the first step is DPM-Solver++(2S) (N with
        // sampling.dpmpp_3m_form = "k-diffusion")
        evals_per_step: 1,
        final_evals: 1,
    },
    SamplerInfo {
        kind: SamplerKind::Heun,
        name: "heun",
        description: "EDM's Heun sampler, optional churn, Karras grid by default",
        method: sigma_space(|s| Box::new(HeunStep { churn: s.churn() }), Grid::Karras),
        // 2N − 1 for N steps: the last step to σ = 0 is Euler's
        evals_per_step: 2,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::UniPcBh1,
        name: "unipc-bh1",
        description: "UniPC-3 (Zhao et al. 2023), B₁(h) = h (diffusers' solver_type bh1), Karras grid by default",
        method: sigma_space(|_| Box::new(UniPcStep::new(UniPcVariant::Bh1, 3)), Grid::Karras),
        evals_per_step: 1,
        final_evals: 0,
    },
    SamplerInfo {
        kind: SamplerKind::UniPcBh2,
        name: "unipc-bh2",
        description: "UniPC-3, B₂(h) = e^h − 1 (diffusers' default bh2), Karras grid by default",
        method: sigma_space(|_| Box::new(UniPcStep::new(UniPcVariant::Bh2, 3)), Grid::Karras),
        evals_per_step: 1,
        final_evals: 0,
    },
];

/// What a score, and the run behind it, offer a sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offers {
    /// The score covers every noise level (false: a noise-free objective,
    /// one level only: only the Langevin family applies).
    pub every_level: bool,
    /// An unnormalized log-density is at hand (an energy model).
    pub energy: bool,
    /// The score was learned on the NCSN noise ladder.
    pub ladder: bool,
    /// A constraint is asked for (inpainting, imputation).
    pub constraint: bool,
}

impl SamplerKind {
    /// This sampler's row in [`SAMPLERS`].
    pub fn info(self) -> &'static SamplerInfo {
        SAMPLERS.iter().find(|i| i.kind == self).expect("every SamplerKind has a row in SAMPLERS")
    }
    pub fn method(self) -> Method {
        self.info().method
    }
    /// True for the samplers that integrate the reverse SDE / ODE from T to ε.
    pub fn is_reverse_time(self) -> bool {
        !matches!(self.method(), Method::Langevin { .. } | Method::AnnealedLangevin)
    }
    /// True for the σ-space samplers behind the [`Denoiser`](super::Denoiser) interface.
    pub fn is_denoiser(self) -> bool {
        self.default_grid().is_some()
    }
    /// The grid a σ-space sampler steps on unless `sampling.grid` says
    /// otherwise (`None` for the other samplers).
    pub fn default_grid(self) -> Option<Grid> {
        match self.method() {
            Method::SigmaSpace { grid, .. } => Some(grid),
            _ => None,
        }
    }
    /// True for the samplers that can hold a constraint after every step: the
    /// reverse-SDE samplers, annealed Langevin and the σ-space solvers (not
    /// the adaptive ODE solver, nor plain Langevin at one level).
    pub fn takes_constraint(self) -> bool {
        matches!(self.method(), Method::ReverseSde { .. } | Method::AnnealedLangevin | Method::SigmaSpace { .. })
    }
    /// Steps that cost about `nfe` score evaluations (Heun: 2N − 1 for N steps).
    pub fn steps_for_nfe(self, nfe: usize) -> usize {
        let i = self.info();
        nfe.saturating_sub(i.final_evals).div_ceil(i.evals_per_step).max(1)
    }
    /// The one check of whether this sampler can run on what `offers`
    /// describes; the error names the setting and says what would work.
    pub fn check(self, offers: &Offers) -> Result<()> {
        let refuse = |message: String| Err(Error::Setting { key: "sampling.sampler", message });
        let name = self.name();
        if self.is_reverse_time() && !offers.every_level {
            return refuse(format!(
                "`{name}` needs a model of every noise level; this one learned a single level (a noise-free objective): use `langevin` (or `mala` for energy models)"
            ));
        }
        match self.method() {
            Method::Langevin { metropolis: true } if !offers.energy => {
                return refuse(format!(
                    "`{name}` needs an energy model (model.kind = \"energy-mlp\"): its accept step uses the unnormalized density"
                ))
            }
            Method::AnnealedLangevin if !offers.ladder => {
                return refuse(format!(
                    "`{name}` needs a model of the noise ladder: a run trained with objective.kind = \"ncsn\""
                ))
            }
            _ => {}
        }
        if offers.constraint && !self.takes_constraint() {
            let takes: Vec<&str> = SAMPLERS.iter().filter(|i| i.kind.takes_constraint()).map(|i| i.name).collect();
            return refuse(format!(
                "`{name}` does not take a constraint (inpainting, imputation): use {}",
                takes.join(", ")
            ));
        }
        Ok(())
    }
}

impl Named for SamplerKind {
    const WHAT: &'static str = "sampler";
    fn all() -> &'static [Self] {
        static ALL: std::sync::LazyLock<Vec<SamplerKind>> =
            std::sync::LazyLock::new(|| SAMPLERS.iter().map(|i| i.kind).collect());
        &ALL
    }
    fn name(self) -> &'static str {
        self.info().name
    }
    fn description(self) -> &'static str {
        self.info().description
    }
}
crate::impl_named_traits!(SamplerKind);

/// Which corrector runs before each predictor step of a reverse-SDE sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CorrectorKind {
    Langevin,
    Ald,
    None,
}

/// Every corrector: (kind, name, description).
static CORRECTORS: &[(CorrectorKind, &str, &str)] = &[
    (CorrectorKind::Langevin, "langevin", "Langevin with the signal-to-noise step rule ε = 2α(r‖z‖/‖s‖)²"),
    (CorrectorKind::Ald, "ald", "annealed Langevin dynamics (ε ∝ s(t)²)"),
    (CorrectorKind::None, "none", "no corrector"),
];

impl CorrectorKind {
    /// The corrector with signal-to-noise ratio `snr` and `n_steps` steps.
    pub fn build(self, snr: f64, n_steps: usize) -> Box<dyn Corrector> {
        match self {
            CorrectorKind::Langevin => Box::new(LangevinCorrector { snr, n_steps }),
            CorrectorKind::Ald => Box::new(AnnealedLangevin { snr, n_steps }),
            CorrectorKind::None => Box::new(NoneCorrector),
        }
    }
}
crate::named_table!(CorrectorKind, "corrector", CORRECTORS);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant has exactly one row and every name is distinct, so a
    /// name parses back to its sampler.
    #[test]
    fn every_sampler_has_one_row_and_a_distinct_name() {
        for (i, row) in SAMPLERS.iter().enumerate() {
            assert_eq!(SamplerKind::parse(row.name), Some(row.kind));
            assert_eq!(SAMPLERS.iter().filter(|r| r.kind == row.kind).count(), 1, "{}", row.name);
            assert!(SAMPLERS[..i].iter().all(|r| r.name != row.name), "{} twice", row.name);
            assert_eq!(row.kind.to_string(), row.name);
        }
        for k in CorrectorKind::all() {
            assert_eq!(CorrectorKind::parse(k.name()), Some(*k));
        }
    }

    /// The evaluation counts invert as before: Heun 2N − 1 ≤ nfe, the SDE
    /// samplers N + 1 (the denoising step), DPM-Solver++(3M) N + 1 (its 2S
    /// first step), the other multistep solvers N.
    #[test]
    fn steps_for_nfe_inverts_the_evaluation_count() {
        assert_eq!(SamplerKind::Heun.steps_for_nfe(20), 10);
        assert_eq!(SamplerKind::Heun.steps_for_nfe(19), 10);
        assert_eq!(SamplerKind::Em.steps_for_nfe(20), 19);
        assert_eq!(SamplerKind::Dpmpp3m.steps_for_nfe(20), 19);
        assert_eq!(SamplerKind::Dpmpp2m.steps_for_nfe(20), 20);
        assert_eq!(SamplerKind::Ddim.steps_for_nfe(0), 1);
    }

    /// Each capability is asked for by the samplers that need it and only those.
    #[test]
    fn check_refuses_what_a_score_cannot_offer() {
        let all = Offers { every_level: true, energy: true, ladder: true, constraint: false };
        for k in SamplerKind::all() {
            k.check(&all).unwrap();
        }
        let e = SamplerKind::Mala.check(&Offers { energy: false, ..all }).unwrap_err().to_string();
        assert!(e.contains("needs an energy model"), "{e}");
        let e = SamplerKind::AnnealedLangevin.check(&Offers { ladder: false, ..all }).unwrap_err().to_string();
        assert!(e.contains("objective.kind = \"ncsn\""), "{e}");
        let one_level = Offers { every_level: false, ..all };
        assert!(SamplerKind::Langevin.check(&one_level).is_ok());
        assert!(SamplerKind::Ode.check(&one_level).is_err());
        let constrained = Offers { constraint: true, ..all };
        assert!(SamplerKind::Pc.check(&constrained).is_ok());
        assert!(SamplerKind::AnnealedLangevin.check(&constrained).is_ok());
        assert!(SamplerKind::Dpmpp2mSde.check(&constrained).is_ok());
        let e = SamplerKind::Ode.check(&constrained).unwrap_err().to_string();
        assert!(e.contains("does not take a constraint") && e.contains("pc") && e.contains("heun"), "{e}");
    }
}
