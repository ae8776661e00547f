//! The σ grids of the σ-space samplers (`sampling.grid`, `--grid`): where the
//! N steps from the largest noise level to σ = 0 fall.
//!
//! - `uniform-t`: N times uniform in t from T down to ε ([`time_uniform_sigmas`]).
//! - `karras`: EDM's σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ over
//!   [σ(ε), σ(T)] ([`karras_sigmas`]).
//! - `uniform-lambda`: uniform in λ = −log σ (half the log-SNR) over
//!   [σ(ε), σ(T)], log σ_i = log σ_max + i/(N−1)·(log σ_min − log σ_max)
//!   ([`lambda_uniform_sigmas`]; Lu et al. 2022's "logSNR" steps, diffusers'
//!   `use_lu_lambdas`, k-diffusion's `get_sigmas_exponential`). On VE it is
//!   `uniform-t`. With `karras` it is a grid whose largest λ-step shrinks like
//!   1/N, so the solvers show their order on it (`sampler_order.rs`);
//!   `uniform-t` on VP and the timestep spacings below end with a λ-step
//!   that shrinks only like log N.
//! - `linspace`, `leading`, `trailing`: diffusers' `timestep_spacing` as
//!   `DDIMScheduler.set_timesteps` defines it (Lin et al. 2024, "Common
//!   Diffusion Noise Schedules and Sample Steps are Flawed", Table 2; the
//!   Euler, Heun and DDPM schedulers share `leading` and `trailing`).
//! - `dpm-linspace`, `dpm-leading`: the same two names as
//!   `DPMSolverMultistepScheduler.set_timesteps` (and UniPC's, DEIS's)
//!   defines them: N + 1 points with the last (t = 0) dropped. Its
//!   `trailing` is `trailing`.
//!
//! On a chain of N_train integer timesteps (the DDPM chain,
//! [`Sde::timestep_times`](crate::sde::Sde::timestep_times)) they are, from
//! largest to smallest, k = 0, …, N−1:
//!
//!   linspace:     round((N_train − 1)·(N−1−k)/(N−1))   (999, 888, …, 0 for 10 of 1000)
//!   leading:      (N−1−k)·⌊N_train/N⌋                  (900, 800, …, 0; `steps_offset` = 0)
//!   trailing:     round(N_train − k·N_train/N) − 1     (999, 899, …, 99)
//!   dpm-linspace: round((N−k)·((N_train − 1)/N))       (999, 899, …, 100)
//!   dpm-leading:  (N−k)·⌊N_train/(N+1)⌋                (900, 810, …, 90)
//!
//! with NumPy's round (half to even) of NumPy's `linspace` values (j·step,
//! the last exactly the end point). A continuous SDE has no N_train: the
//! training range [0, N_train − 1] is mapped affinely onto [ε, T] (on the
//! DDPM chain, whose ε is 1/N_train, that map is exactly t_i = (i+1)/N_train)
//! and N_train → ∞, which leaves the fractions u of the range,
//! t = ε + (T − ε)·u:
//!
//!   linspace:     u = (N−1−k)/(N−1)   (the same grid as `uniform-t`)
//!   leading:      u = (N−1−k)/N       (ends at ε, but starts below T)
//!   trailing:     u = (N−k)/N         (starts at T, but its last level is above ε)
//!   dpm-linspace: u = (N−k)/N         (the same grid as `trailing`)
//!   dpm-leading:  u = (N−k)/(N+1)     (starts below T, stops above ε)
//!
//! Every grid ends with a final σ = 0 (DDIM's `set_alpha_to_one`, diffusers'
//! `final_sigmas_type = "zero"`, the final 0 that k-diffusion appends).

use super::denoiser::{karras_sigmas, lambda_uniform_sigmas, time_uniform_sigmas, Denoiser, ScoreDenoiser};
use candle_core::Result;

/// Where a σ-space sampler's steps fall (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grid {
    UniformT,
    Karras,
    UniformLambda,
    Linspace,
    Leading,
    Trailing,
    DpmLinspace,
    DpmLeading,
}

/// Every grid: (grid, name, description).
static GRIDS: &[(Grid, &str, &str)] = &[
    (Grid::UniformT, "uniform-t", "times uniform in t from T to ε (DDPM's and DDIM's default)"),
    (
        Grid::Karras,
        "karras",
        "EDM's σ schedule over [σ(ε), σ(T)], ρ = sampling.rho (the other σ-space samplers' default)",
    ),
    (
        Grid::UniformLambda,
        "uniform-lambda",
        "uniform in λ = −log σ (log-SNR) over [σ(ε), σ(T)] (diffusers' use_lu_lambdas; on VE = uniform-t)",
    ),
    (
        Grid::Linspace,
        "linspace",
        "DDIMScheduler's: round(linspace(0, N_train − 1, N)), 999, 888, …, 0 (on [ε, T] = uniform-t)",
    ),
    (Grid::Leading, "leading", "DDIMScheduler's: (N−1−k)·⌊N_train/N⌋, 900, 800, …, 0: starts below T"),
    (Grid::Trailing, "trailing", "DDIMScheduler's and DPMSolver's: round(N_train − k·N_train/N) − 1, 999, 899, …, 99"),
    (
        Grid::DpmLinspace,
        "dpm-linspace",
        "DPMSolverMultistepScheduler's linspace: round(linspace(0, N_train − 1, N + 1))[1:], 999, 899, …, 100",
    ),
    (Grid::DpmLeading, "dpm-leading", "DPMSolverMultistepScheduler's leading: (N−k)·⌊N_train/(N+1)⌋, 900, 810, …, 90"),
];

crate::named_table!(Grid, "grid", GRIDS);

/// diffusers' integer timesteps for `n` inference steps of a chain of
/// `n_train`, largest first; `None` for `uniform-t`, `karras` and
/// `uniform-lambda`, which are not timestep spacings.
pub fn timestep_spacing(grid: Grid, n_train: usize, n: usize) -> Option<Vec<usize>> {
    let (nt, nf) = (n_train as f64, n as f64);
    // NumPy's linspace(0, stop, num)[j] = j·(stop/(num − 1)), the last exactly stop
    let linspace = |stop: f64, num: usize, j: usize| {
        if j + 1 == num {
            stop
        } else {
            j as f64 * (stop / (num - 1) as f64)
        }
    };
    let idx: Vec<usize> = match grid {
        Grid::Linspace => (0..n)
            .map(|k| if n > 1 { ((nt - 1.0) * (n - 1 - k) as f64 / (nf - 1.0)).round_ties_even() as usize } else { 0 })
            .collect(),
        Grid::Leading => (0..n).map(|k| (n - 1 - k) * (n_train / n.max(1))).collect(),
        Grid::Trailing => {
            (0..n).map(|k| ((nt + k as f64 * -(nt / nf)).round_ties_even() as usize).saturating_sub(1)).collect()
        }
        Grid::DpmLinspace => (0..n).map(|k| linspace(nt - 1.0, n + 1, n - k).round_ties_even() as usize).collect(),
        Grid::DpmLeading => (0..n).map(|k| (n - k) * (n_train / (n + 1))).collect(),
        Grid::UniformT | Grid::Karras | Grid::UniformLambda => return None,
    };
    Some(idx)
}

/// The continuous limit of a timestep spacing: the fractions u ∈ [0, 1] of
/// [ε, T] for `n` steps, largest first; `None` for the grids that are not
/// timestep spacings.
pub fn spacing_fractions(grid: Grid, n: usize) -> Option<Vec<f64>> {
    let nf = n as f64;
    let u: Vec<f64> = match grid {
        Grid::Linspace => (0..n).map(|k| if n > 1 { (n - 1 - k) as f64 / (nf - 1.0) } else { 0.0 }).collect(),
        Grid::Leading => (0..n).map(|k| (n - 1 - k) as f64 / nf).collect(),
        Grid::Trailing | Grid::DpmLinspace => (0..n).map(|k| (n - k) as f64 / nf).collect(),
        Grid::DpmLeading => (0..n).map(|k| (n - k) as f64 / (nf + 1.0)).collect(),
        Grid::UniformT | Grid::Karras | Grid::UniformLambda => return None,
    };
    Some(u)
}

/// The σ's of `grid` with `n` steps for the denoiser's SDE, from largest to
/// smallest, then a final 0 (n + 1 values). On a discrete chain the spacings
/// land on its integer timesteps, and asking for more steps than the spacing
/// can place on the chain is an error (the grid would repeat a level:
/// `dpm-leading` holds at most N_train − 1); elsewhere they are taken
/// on [ε, T] (see the module doc). `rho` is used by `karras` only.
pub fn grid_sigmas(grid: Grid, den: &ScoreDenoiser, n: usize, rho: f64) -> Result<Vec<f64>> {
    let n = n.max(1);
    let mut s = match grid {
        Grid::UniformT => return Ok(time_uniform_sigmas(den, n)),
        Grid::Karras => {
            let (lo, hi) = den.sigma_range();
            return Ok(karras_sigmas(n, lo, hi, rho));
        }
        Grid::UniformLambda => {
            let (lo, hi) = den.sigma_range();
            return Ok(lambda_uniform_sigmas(n, lo, hi));
        }
        _ => match den.sde.timestep_times() {
            Some(times) => {
                let idx = timestep_spacing(grid, times.len(), n).unwrap_or_default();
                let repeats = idx.windows(2).any(|w| w[1] >= w[0]);
                if n > times.len() || repeats || idx.first().is_some_and(|&i| i >= times.len()) {
                    candle_core::bail!("grid `{grid}`: {n} steps on a chain of {} timesteps", times.len());
                }
                idx.iter().map(|&i| den.sigma_of(times[i])).collect::<Vec<f64>>()
            }
            None => {
                let (t_max, eps) = (den.sde.t_max(), den.t_eps);
                let u = spacing_fractions(grid, n).unwrap_or_default();
                u.iter().map(|u| den.sigma_of(eps + (t_max - eps) * u)).collect()
            }
        },
    };
    s.push(0.0);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{named_mixture, OracleScore};
    use crate::sde::{DiscreteVp, Sde, VeSde, VpSde};
    use std::sync::Arc;

    /// The integer timesteps are diffusers' for 1000 training steps: Lin et al.
    /// (2024) Table 2 for 10 steps, and 7 steps, where linspace meets two
    /// halves (166.5 → 166, 832.5 → 832: NumPy rounds half to even) and
    /// trailing's N_train/N is not an integer.
    #[test]
    fn timestep_spacings_are_diffusers() {
        let ts = |g, n| timestep_spacing(g, 1000, n).unwrap();
        assert_eq!(ts(Grid::Linspace, 10), [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]);
        assert_eq!(ts(Grid::Leading, 10), [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
        assert_eq!(ts(Grid::Trailing, 10), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
        assert_eq!(ts(Grid::Linspace, 7), [999, 832, 666, 500, 333, 166, 0]);
        assert_eq!(ts(Grid::Leading, 7), [852, 710, 568, 426, 284, 142, 0]);
        assert_eq!(ts(Grid::Trailing, 7), [999, 856, 713, 570, 428, 285, 142]);
        assert_eq!(ts(Grid::Linspace, 1000), (0..1000).rev().collect::<Vec<_>>());
        assert!(timestep_spacing(Grid::Karras, 1000, 10).is_none());
    }

    /// `dpm-linspace` and `dpm-leading` are `DPMSolverMultistepScheduler.set_timesteps`
    /// for 1000 training steps (`lambda_min_clipped` = −∞, `steps_offset` = 0):
    /// linspace(0, 999, N + 1).round()[::-1][:-1] and
    /// (arange(N + 1)·(1000 // (N + 1)))[::-1][:-1]. By hand: N = 10 is
    /// j·99.9 rounded, 599.4 → 599 and the tie 499.5 → 500 (half to even);
    /// N = 6 meets three ties, 166.5 → 166, 499.5 → 500, 832.5 → 832; N = 7
    /// is j·142.714…, 142.7 → 143; leading's ratios are 1000 // 11 = 90,
    /// 1000 // 8 = 125, 1000 // 7 = 142. `trailing` is the same in both
    /// schedulers. More steps than `dpm-leading` can place (N + 1 > 1000
    /// makes its ratio 0) is an error.
    #[test]
    fn dpm_solver_spacings_are_diffusers() {
        let ts = |g, n| timestep_spacing(g, 1000, n).unwrap();
        assert_eq!(ts(Grid::DpmLinspace, 10), [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]);
        assert_eq!(ts(Grid::DpmLeading, 10), [900, 810, 720, 630, 540, 450, 360, 270, 180, 90]);
        assert_eq!(ts(Grid::DpmLinspace, 6), [999, 832, 666, 500, 333, 166]);
        assert_eq!(ts(Grid::DpmLeading, 6), [852, 710, 568, 426, 284, 142]);
        assert_eq!(ts(Grid::DpmLinspace, 7), [999, 856, 714, 571, 428, 285, 143]);
        assert_eq!(ts(Grid::DpmLeading, 7), [875, 750, 625, 500, 375, 250, 125]);
        assert_eq!(ts(Grid::DpmLinspace, 1), [999]);
        assert_eq!(ts(Grid::DpmLeading, 1), [500]);
        assert_eq!(ts(Grid::DpmLinspace, 999), (1..1000).rev().collect::<Vec<_>>());
        assert_eq!(ts(Grid::DpmLeading, 999), (1..1000).rev().collect::<Vec<_>>());
        assert!(timestep_spacing(Grid::UniformLambda, 1000, 10).is_none());
        let chain: Arc<dyn Sde> = Arc::new(DiscreteVp::ddpm());
        let o = OracleScore::new(named_mixture("gmm8").unwrap(), chain.clone());
        let den = ScoreDenoiser::new(&o, chain.as_ref(), None);
        assert!(grid_sigmas(Grid::DpmLeading, &den, 999, 7.0).is_ok());
        assert!(grid_sigmas(Grid::DpmLeading, &den, 1000, 7.0).is_err());
    }

    /// On the DDPM chain each σ is the chain's own σ_i = √(1/ᾱ_i − 1) at those
    /// timesteps, then 0; `leading` is DDIM's own index grid
    /// ([`DiscreteVp::ddim_sigmas`]) when N divides N_train; more steps than
    /// timesteps is an error.
    #[test]
    fn chain_grids_land_on_the_chain_timesteps() {
        let chain: Arc<dyn Sde> = Arc::new(DiscreteVp::ddpm());
        let d = DiscreteVp::ddpm();
        let o = OracleScore::new(named_mixture("gmm8").unwrap(), chain.clone());
        let den = ScoreDenoiser::new(&o, chain.as_ref(), None);
        for grid in [Grid::Linspace, Grid::Leading, Grid::Trailing, Grid::DpmLinspace, Grid::DpmLeading] {
            for n in [7, 10, 50] {
                let s = grid_sigmas(grid, &den, n, 7.0).unwrap();
                let idx = timestep_spacing(grid, 1000, n).unwrap();
                assert_eq!(s.len(), n + 1);
                assert_eq!(s[n], 0.0);
                for (k, &i) in idx.iter().enumerate() {
                    assert!(
                        (s[k] - d.sigma(i)).abs() < 1e-9 * d.sigma(i),
                        "{grid} n={n} k={k}: {} vs {}",
                        s[k],
                        d.sigma(i)
                    );
                }
            }
        }
        let (lead, ddim) = (grid_sigmas(Grid::Leading, &den, 50, 7.0).unwrap(), d.ddim_sigmas(50));
        assert!(lead.iter().zip(&ddim).all(|(a, b)| (a - b).abs() <= 1e-9 * b), "{lead:?} vs {ddim:?}");
        assert!(grid_sigmas(Grid::Trailing, &den, 1001, 7.0).is_err());
    }

    /// On a continuous SDE: linspace is uniform-t; leading starts at
    /// t = ε + (T − ε)(N−1)/N and ends at ε; trailing starts at T and ends at
    /// ε + (T − ε)/N, and dpm-linspace is trailing; dpm-leading is at
    /// u = (N−k)/(N+1); every grid decreases and ends at 0; karras spans
    /// [σ(ε), σ(T)]; uniform-lambda spans it with equal ratios σ_k/σ_{k+1},
    /// and on VE (σ = σ_min(σ_max/σ_min)^t) it is uniform-t.
    #[test]
    fn continuous_grids_follow_their_definitions() {
        for sde in [Arc::new(VpSde::default()) as Arc<dyn Sde>, Arc::new(VeSde::default())] {
            let o = OracleScore::new(named_mixture("gmm8").unwrap(), sde.clone());
            let den = ScoreDenoiser::new(&o, sde.as_ref(), None);
            let (eps, n) = (den.t_eps, 8usize);
            let at = |u: f64| den.sigma_of(eps + (1.0 - eps) * u);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
            let g = |grid| grid_sigmas(grid, &den, n, 7.0).unwrap();
            let (lin, uni) = (g(Grid::Linspace), g(Grid::UniformT));
            assert!(lin.iter().zip(&uni).all(|(a, b)| close(*a, *b)), "{}: {lin:?} vs {uni:?}", sde.name());
            let (lead, trail) = (g(Grid::Leading), g(Grid::Trailing));
            assert!(close(lead[0], at(7.0 / 8.0)) && close(lead[n - 1], at(0.0)), "{}: {lead:?}", sde.name());
            assert!(close(trail[0], at(1.0)) && close(trail[n - 1], at(1.0 / 8.0)), "{}: {trail:?}", sde.name());
            for k in 0..n {
                assert!(close(lead[k], at((n - 1 - k) as f64 / 8.0)) && close(trail[k], at((n - k) as f64 / 8.0)));
            }
            let (dpm_lin, dpm_lead) = (g(Grid::DpmLinspace), g(Grid::DpmLeading));
            assert!(dpm_lin.iter().zip(&trail).all(|(a, b)| close(*a, *b)), "{}: {dpm_lin:?}", sde.name());
            for k in 0..n {
                assert!(close(dpm_lead[k], at((n - k) as f64 / 9.0)), "{}: {dpm_lead:?}", sde.name());
            }
            let (lo, hi) = den.sigma_range();
            let kar = g(Grid::Karras);
            assert!(close(kar[0], hi) && close(kar[n - 1], lo));
            let lam = g(Grid::UniformLambda);
            let ratio = (hi / lo).powf(1.0 / (n - 1) as f64);
            assert!(close(lam[0], hi) && close(lam[n - 1], lo), "{}: {lam:?}", sde.name());
            assert!(lam[..n].windows(2).all(|w| (w[0] / w[1] / ratio - 1.0).abs() < 1e-12), "{}: {lam:?}", sde.name());
            if sde.name() == "ve" {
                assert!(lam.iter().zip(&uni).all(|(a, b)| (a - b).abs() <= 1e-12 * b), "{lam:?} vs {uni:?}");
            }
            for s in [lin, lead, trail, kar, dpm_lin, dpm_lead, lam] {
                assert_eq!(s.len(), n + 1);
                assert_eq!(s[n], 0.0);
                assert!(s.windows(2).all(|w| w[1] < w[0]), "{}: {s:?}", sde.name());
            }
        }
    }
}
