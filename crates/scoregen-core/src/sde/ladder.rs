//! The discrete noise ladder of NCSN (Song & Ermon 2019) and the NCSNv2 rules
//! for choosing it (Song & Ermon 2020, "Improved Techniques for Training
//! Score-Based Generative Models").
//!
//! The docs use the seed notation σ_1 < … < σ_L (smallest first); NCSNv2's
//! paper numbers the other way. A geometric ladder lies exactly on the VE SDE
//! σ(t) = σ_1 (σ_L/σ_1)^t at t_i = (i−1)/(L−1), so a noise-conditional score
//! is a `ScoreFn` evaluated at those times.

use super::VeSde;

/// Noise levels σ_1 < … < σ_L (stored smallest first).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseLadder {
    pub sigmas: Vec<f64>,
}

impl NoiseLadder {
    /// σ_i = σ_min (σ_max/σ_min)^{(i−1)/(L−1)}, i = 1…L (L ≥ 2).
    pub fn geometric(sigma_min: f64, sigma_max: f64, levels: usize) -> Self {
        let l = levels.max(2);
        let sigmas = (0..l).map(|i| sigma_min * (sigma_max / sigma_min).powf(i as f64 / (l - 1) as f64)).collect();
        Self { sigmas }
    }
    pub fn levels(&self) -> usize {
        self.sigmas.len()
    }
    /// σ of level i (0-based, smallest first).
    pub fn sigma(&self, i: usize) -> f64 {
        self.sigmas[i]
    }
    /// t_i = i/(L−1): the VE time whose σ(t) is σ_i.
    pub fn time(&self, i: usize) -> f64 {
        i as f64 / (self.levels() - 1) as f64
    }
    /// The VE SDE through every level.
    pub fn sde(&self) -> VeSde {
        VeSde::new(self.sigmas[0], self.sigmas[self.levels() - 1])
    }
}

/// Standard normal CDF Φ(x) = ½(1 + erf(x/√2)).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// NCSNv2 technique 2: the ratio γ = σ_{i+1}/σ_i > 1 that solves
/// Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = ½ (bisection on γ ∈ (1, 10]).
/// `None` in low dimension, where the left side stays above ½ for every γ
/// (the rule is derived for high-dimensional data).
pub fn ncsnv2_gamma(dim: usize) -> Option<f64> {
    let f = |g: f64| {
        let a = (2.0 * dim as f64).sqrt() * (g - 1.0);
        normal_cdf(a + 3.0 * g) - normal_cdf(a - 3.0 * g) - 0.5
    };
    // f(1⁺) = Φ(3) − Φ(−3) − ½ > 0; a root exists when f turns negative by γ = 10.
    let (mut lo, mut hi) = (1.0 + 1e-12, 10.0);
    if f(hi) > 0.0 {
        return None;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(0.5 * (lo + hi))
}

/// Levels used when technique 2 has no solution (low dimension), as in the NCSN toy experiments.
pub const LOW_DIM_LEVELS: usize = 10;

/// NCSNv2 eq. 4: with step ε at the smallest level σ_1 and T steps per level,
/// (1 − ε/σ_1²)^{2T} (γ² − 2ε/(σ_1² − σ_1²(1 − ε/σ_1²)²)) + 2ε/(σ_1² − σ_1²(1 − ε/σ_1²)²),
/// which technique 4 wants close to 1.
pub fn ncsnv2_eq4(eps: f64, sigma_min: f64, gamma: f64, steps_per_level: usize) -> f64 {
    let s2 = sigma_min * sigma_min;
    let r = 1.0 - eps / s2;
    let c = 2.0 * eps / (s2 - s2 * r * r);
    r.powi(2 * steps_per_level as i32) * (gamma * gamma - c) + c
}

/// The ε in (0, σ_1²) that brings eq. 4 closest to 1 (log-grid search, then
/// golden-section refinement).
pub fn ncsnv2_step_size(sigma_min: f64, gamma: f64, steps_per_level: usize) -> f64 {
    let s2 = sigma_min * sigma_min;
    let obj = |le: f64| (ncsnv2_eq4(le.exp(), sigma_min, gamma, steps_per_level) - 1.0).abs();
    let (lo, hi) = ((s2 * 1e-12).ln(), (s2 * 0.999).ln());
    let grid = 2000;
    let best = (0..=grid)
        .map(|k| lo + (hi - lo) * k as f64 / grid as f64)
        .min_by(|a, b| obj(*a).total_cmp(&obj(*b)))
        .unwrap_or(lo);
    let h = (hi - lo) / grid as f64;
    let (mut a, mut b) = ((best - h).max(lo), (best + h).min(hi));
    let phi = 0.5 * (5f64.sqrt() - 1.0);
    for _ in 0..100 {
        let (c, d) = (b - phi * (b - a), a + phi * (b - a));
        if obj(c) < obj(d) {
            b = d;
        } else {
            a = c;
        }
    }
    (0.5 * (a + b)).exp()
}

/// A noise ladder and Langevin step suggested by the NCSNv2 rules.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Suggestion {
    pub dim: usize,
    pub max_pairwise_distance: f64,
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub gamma: f64,
    /// Whether γ came from technique 2 (false: low-dimension fallback to L = 10).
    pub gamma_from_rule: bool,
    pub levels: usize,
    pub steps_per_level: usize,
    pub eps: f64,
    /// Eq. 4 at the chosen ε (ideally 1).
    pub eq4: f64,
}

/// Technique 1: σ_max = the largest pairwise distance; technique 2: γ from D and
/// L = ⌈log(σ_max/σ_min)/log γ⌉ + 1; technique 4: ε for T steps per level.
pub fn suggest(max_pairwise_distance: f64, dim: usize, sigma_min: f64, steps_per_level: usize) -> Suggestion {
    let rule = ncsnv2_gamma(dim);
    let sigma_max = max_pairwise_distance.max(sigma_min * rule.unwrap_or(2.0));
    let (gamma, levels) = match rule {
        Some(g) => (g, ((sigma_max / sigma_min).ln() / g.ln()).ceil() as usize + 1),
        None => ((sigma_max / sigma_min).powf(1.0 / (LOW_DIM_LEVELS - 1) as f64), LOW_DIM_LEVELS),
    };
    let eps = ncsnv2_step_size(sigma_min, gamma, steps_per_level);
    Suggestion {
        dim,
        max_pairwise_distance,
        sigma_min,
        sigma_max,
        gamma,
        gamma_from_rule: rule.is_some(),
        levels,
        steps_per_level,
        eps,
        eq4: ncsnv2_eq4(eps, sigma_min, gamma, steps_per_level),
    }
}

impl Suggestion {
    /// The reasoning, one line per rule.
    pub fn explain(&self) -> String {
        let technique2 = if self.gamma_from_rule {
            format!(
                "technique 2: γ = σ_(i+1)/σ_i solves Φ(√(2D)(γ−1)+3γ) − Φ(√(2D)(γ−1)−3γ) = 0.5 → γ = {:.5}\n\
                 \x20            L = ⌈ln(σ_max/σ_min)/ln γ⌉ + 1 = {} levels",
                self.gamma, self.levels
            )
        } else {
            format!(
                "technique 2: no γ solves Φ(√(2D)(γ−1)+3γ) − Φ(√(2D)(γ−1)−3γ) = 0.5 in D = {} (the rule is for high dimension);\n\
                 \x20            using L = {} geometric levels instead, γ = {:.5}",
                self.dim, self.levels, self.gamma
            )
        };
        format!(
            "data dimension D = {}\n\
             technique 1: σ_max = largest pairwise distance = {:.4}\n\
             {}, from σ_min = {} to σ_max = {:.4}\n\
             technique 4: T = {} steps per level, ε = {:.3e} brings eq. 4 to {:.6} (target 1)\n\
             config: [noise] sigma_min = {}, sigma_max = {:.4}, levels = {}; [sampling] step_size = {:.3e}, steps_per_level = {}",
            self.dim, self.max_pairwise_distance, technique2, self.sigma_min, self.sigma_max,
            self.steps_per_level, self.eps, self.eq4, self.sigma_min, self.sigma_max, self.levels, self.eps, self.steps_per_level
        )
    }
}

/// The largest Euclidean distance between two rows (exact for n ≤ 5000,
/// otherwise over 5000 evenly spaced rows).
pub fn max_pairwise_distance(points: &crate::points::Points) -> f64 {
    let step = points.n.div_ceil(5000).max(1);
    let idx: Vec<usize> = (0..points.n).step_by(step).collect();
    let mut best: f64 = 0.0;
    for (a, &i) in idx.iter().enumerate() {
        for &j in &idx[a + 1..] {
            let d2: f64 = points.row(i).iter().zip(points.row(j)).map(|(p, q)| (p - q).powi(2)).sum();
            best = best.max(d2);
        }
    }
    best.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sde::Sde;

    #[test]
    fn geometric_ladder_lies_on_the_ve_sde() {
        let l = NoiseLadder::geometric(0.1, 20.0, 10);
        let sde = l.sde();
        for i in 0..10 {
            assert!((sde.marginal(l.time(i)).1 - l.sigma(i)).abs() < 1e-12 * l.sigma(i));
        }
        let ratios: Vec<f64> = l.sigmas.windows(2).map(|w| w[1] / w[0]).collect();
        assert!(ratios.iter().all(|r| (r - ratios[0]).abs() < 1e-12));
    }

    /// γ solves technique 2's equation, L follows from it, and for CIFAR-10
    /// (D = 3072, σ_max = 50, σ_min = 0.01) the exact rule gives L = 220, close
    /// to the L = 232 NCSNv2 used (their γ = 1.0376 makes the left side ≈ 0.57,
    /// not exactly 0.5): within 10 %.
    #[test]
    fn suggestions_reproduce_the_ncsnv2_formulas() {
        assert!(ncsnv2_gamma(2).is_none(), "no root exists for D = 2");
        for d in [8usize, 64, 784, 3072] {
            let g = ncsnv2_gamma(d).unwrap();
            let a = (2.0 * d as f64).sqrt() * (g - 1.0);
            assert!((normal_cdf(a + 3.0 * g) - normal_cdf(a - 3.0 * g) - 0.5).abs() < 1e-9, "D={d}");
        }
        let s = suggest(50.0, 3072, 0.01, 5);
        assert!((s.levels as f64 - 232.0).abs() / 232.0 < 0.1, "{s:?}");
        // a square of side 3: the largest pairwise distance is its diagonal
        let pts = crate::points::Points::from_rows(&[vec![0.0, 0.0], vec![3.0, 0.0], vec![0.0, 3.0], vec![3.0, 3.0]]);
        let m = max_pairwise_distance(&pts);
        assert!((m - 3.0 * 2f64.sqrt()).abs() < 1e-12);
        let s = suggest(m, 64, 0.01, 100);
        assert_eq!(s.sigma_max, m);
        // independently (mpmath, 30 digits): γ(D = 64) = 1.3608497940920527 solves technique 2,
        // ln(3√2/0.01)/ln γ = 19.637, so L = ⌈19.637⌉ + 1 = 21
        assert!((s.gamma - 1.3608497940920527).abs() < 1e-9, "{s:?}");
        assert_eq!(s.levels, 21, "{s:?}");
        // and what the ceiling means: L − 1 ratios γ reach σ_max from σ_min, L − 2 do not
        assert!(0.01 * s.gamma.powi(s.levels as i32 - 1) >= m && 0.01 * s.gamma.powi(s.levels as i32 - 2) < m);
        // technique 4: eq. 4 is ≥ 1 for every ε (it falls from γ² at ε → 0 towards
        // 1/(1 − ε/2σ_1²)); the chosen ε comes close and beats its neighbours
        assert!(s.eq4 >= 1.0 && s.eq4 < 1.05, "{s:?}");
        for k in [0.5, 0.9, 1.1, 2.0] {
            let other = (ncsnv2_eq4(s.eps * k, 0.01, s.gamma, 100) - 1.0).abs();
            assert!(other >= (s.eq4 - 1.0).abs(), "ε×{k} is better");
        }
    }
}
