//! Mode statistics of samples against a known Gaussian mixture.

use crate::oracle::GaussianMixture;
use crate::points::Points;
use serde::Serialize;

/// A point is off the manifold when its Mahalanobis distance to every
/// component exceeds this (for a 2-D Gaussian, P(d > 4) = e^{−8} ≈ 3e-4).
pub const OFF_MANIFOLD_MAHALANOBIS: f64 = 4.0;

/// A mode is covered when it receives at least this fraction of its expected count w_k·N.
pub const COVERED_FRACTION: f64 = 0.1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeStats {
    /// Fraction of samples assigned to each component (nearest in Mahalanobis distance).
    pub weights: Vec<f64>,
    /// Σ_k |ŵ_k − w_k|.
    pub weight_l1: f64,
    /// Components with at least COVERED_FRACTION·w_k·N samples.
    pub covered: usize,
    pub n_modes: usize,
    /// Fraction of samples farther than OFF_MANIFOLD_MAHALANOBIS from every component.
    pub off_manifold: f64,
    /// Mean of log p(x) over the samples (nats).
    pub mean_log_density: f64,
}

/// Squared Mahalanobis distance (x−μ)ᵀΣ⁻¹(x−μ).
fn mahalanobis2(x: &[f64], mix: &GaussianMixture, k: usize) -> f64 {
    let (mu, p) = (mix.mean(k), mix.precision(k));
    let d = x.len();
    let mut q = 0.0;
    for i in 0..d {
        for j in 0..d {
            q += (x[i] - mu[i]) * p[(i, j)] * (x[j] - mu[j]);
        }
    }
    q
}

/// The nearest component (Mahalanobis) of each point.
pub fn assign(x: &Points, mix: &GaussianMixture) -> Vec<usize> {
    x.rows()
        .map(|r| {
            (0..mix.n_components())
                .map(|k| (k, mahalanobis2(r, mix, k)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(k, _)| k)
        })
        .collect()
}

/// Mode weights, L1 weight error, modes covered, off-manifold fraction and mean log-density.
pub fn mode_stats(x: &Points, mix: &GaussianMixture) -> ModeStats {
    let k = mix.n_components();
    let n = x.n.max(1) as f64;
    let mut counts = vec![0usize; k];
    let mut off = 0usize;
    for r in x.rows() {
        let (best, d2) = (0..k)
            .map(|c| (c, mahalanobis2(r, mix, c)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::INFINITY));
        counts[best] += 1;
        if d2.is_nan() || d2 > OFF_MANIFOLD_MAHALANOBIS.powi(2) {
            off += 1;
        }
    }
    let weights: Vec<f64> = counts.iter().map(|&c| c as f64 / n).collect();
    let weight_l1 = weights.iter().zip(mix.weights()).map(|(a, b)| (a - b).abs()).sum();
    let covered =
        counts.iter().zip(mix.weights()).filter(|(&c, &w)| c as f64 >= (COVERED_FRACTION * w * n).max(1.0)).count();
    let lp = mix.log_prob(x);
    ModeStats {
        weights,
        weight_l1,
        covered,
        n_modes: k,
        off_manifold: off as f64 / n,
        mean_log_density: lp.iter().sum::<f64>() / n,
    }
}
