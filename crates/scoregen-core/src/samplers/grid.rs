//! The σ grids of the σ-space samplers (`sampling.grid`, `--grid`): where the
//! N steps from the largest noise level to σ = 0 fall.
//!
//! - `uniform-t`: N times uniform in t from T down to ε ([`time_uniform_sigmas`]).
//! - `karras`: EDM's σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ over
//!   [σ(ε), σ(T)] ([`karras_sigmas`]).
//! - `linspace`, `leading`, `trailing`: diffusers' `timestep_spacing`
//!   (`DDIMScheduler.set_timesteps`; Lin et al. 2024, "Common Diffusion Noise
//!   Schedules and Sample Steps are Flawed", Table 2). On a chain of N_train
//!   integer timesteps (the DDPM chain, [`Sde::timestep_times`]) they are, from
//!   largest to smallest, k = 0, …, N−1:
//!
//!   linspace: round((N_train − 1)·(N−1−k)/(N−1))    (999, 888, …, 0 for 10 of 1000)
//!   leading:  (N−1−k)·⌊N_train/N⌋                   (900, 800, …, 0; `steps_offset` = 0)
//!   trailing: round(N_train − k·N_train/N) − 1      (999, 899, …, 99)
//!
//!   with NumPy's round (half to even). A continuous SDE has no N_train: the
//!   training range [0, N_train − 1] is mapped affinely onto [ε, T] (on the
//!   DDPM chain, whose ε is 1/N_train, that map is exactly t_i = (i+1)/N_train)
//!   and N_train → ∞, which leaves the fractions u of the range,
//!   t = ε + (T − ε)·u:
//!
//!   linspace: u = (N−1−k)/(N−1)   (the same grid as `uniform-t`)
//!   leading:  u = (N−1−k)/N       (ends at ε, but starts below T)
//!   trailing: u = (N−k)/N         (starts at T, but its last level is above ε)
//!
//! Every grid ends with a final σ = 0 (DDIM's `set_alpha_to_one`, the final
//! 0 that k-diffusion and diffusers' Euler schedulers append).

use super::denoiser::{karras_sigmas, time_uniform_sigmas, Denoiser, ScoreDenoiser};
use candle_core::Result;

/// Where a σ-space sampler's steps fall (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grid {
    UniformT,
    Karras,
    Linspace,
    Leading,
    Trailing,
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
        Grid::Linspace,
        "linspace",
        "diffusers: round(linspace(0, N_train − 1, N)) (the DDPM chain's timesteps; on [ε, T] = uniform-t)",
    ),
    (Grid::Leading, "leading", "diffusers: 0, ⌊N_train/N⌋, …: ends at the first step, starts below T"),
    (Grid::Trailing, "trailing", "diffusers: N_train − 1, N_train − 1 − N_train/N, …: starts at T"),
];

crate::named_table!(Grid, "grid", GRIDS);

/// diffusers' integer timesteps for `n` inference steps of a chain of
/// `n_train`, largest first; `None` for `uniform-t` and `karras`, which are
/// not timestep spacings.
pub fn timestep_spacing(grid: Grid, n_train: usize, n: usize) -> Option<Vec<usize>> {
    let (nt, nf) = (n_train as f64, n as f64);
    let idx: Vec<usize> = match grid {
        Grid::Linspace => (0..n)
            .map(|k| if n > 1 { ((nt - 1.0) * (n - 1 - k) as f64 / (nf - 1.0)).round_ties_even() as usize } else { 0 })
            .collect(),
        Grid::Leading => (0..n).map(|k| (n - 1 - k) * (n_train / n.max(1))).collect(),
        Grid::Trailing => {
            (0..n).map(|k| ((nt + k as f64 * -(nt / nf)).round_ties_even() as usize).saturating_sub(1)).collect()
        }
        Grid::UniformT | Grid::Karras => return None,
    };
    Some(idx)
}

/// The continuous limit of a timestep spacing: the fractions u ∈ [0, 1] of
/// [ε, T] for `n` steps, largest first; `None` for `uniform-t` and `karras`.
pub fn spacing_fractions(grid: Grid, n: usize) -> Option<Vec<f64>> {
    let nf = n as f64;
    let u: Vec<f64> = match grid {
        Grid::Linspace => (0..n).map(|k| if n > 1 { (n - 1 - k) as f64 / (nf - 1.0) } else { 0.0 }).collect(),
        Grid::Leading => (0..n).map(|k| (n - 1 - k) as f64 / nf).collect(),
        Grid::Trailing => (0..n).map(|k| (n - k) as f64 / nf).collect(),
        Grid::UniformT | Grid::Karras => return None,
    };
    Some(u)
}

/// The σ's of `grid` with `n` steps for the denoiser's SDE, from largest to
/// smallest, then a final 0 (n + 1 values). On a discrete chain the spacings
/// land on its integer timesteps, and asking for more steps than the chain
/// has is an error (the grid would repeat a level); elsewhere they are taken
/// on [ε, T] (see the module doc). `rho` is used by `karras` only.
pub fn grid_sigmas(grid: Grid, den: &ScoreDenoiser, n: usize, rho: f64) -> Result<Vec<f64>> {
    let n = n.max(1);
    let mut s = match grid {
        Grid::UniformT => return Ok(time_uniform_sigmas(den, n)),
        Grid::Karras => {
            let (lo, hi) = den.sigma_range();
            return Ok(karras_sigmas(n, lo, hi, rho));
        }
        _ => match den.sde.timestep_times() {
            Some(times) => {
                if n > times.len() {
                    candle_core::bail!("grid `{grid}`: {n} steps on a chain of {} timesteps", times.len());
                }
                let idx = timestep_spacing(grid, times.len(), n).unwrap_or_default();
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
        for grid in [Grid::Linspace, Grid::Leading, Grid::Trailing] {
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
    /// ε + (T − ε)/N; every grid decreases and ends at 0; karras spans
    /// [σ(ε), σ(T)].
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
            let (lo, hi) = den.sigma_range();
            let kar = g(Grid::Karras);
            assert!(close(kar[0], hi) && close(kar[n - 1], lo));
            for s in [lin, lead, trail, kar] {
                assert_eq!(s.len(), n + 1);
                assert_eq!(s[n], 0.0);
                assert!(s.windows(2).all(|w| w[1] < w[0]), "{}: {s:?}", sde.name());
            }
        }
    }
}
