//! Sample-quality metrics: distances between sample sets, mode statistics
//! against a known mixture, the Fisher divergence of a score against the
//! oracle, and the feature-space metrics of the image papers (FID, Inception
//! Score, improved precision and recall). Every metric comes with its noise floor: the same metric between
//! two independent exact sample sets of the same size. Image metrics use the
//! project's classifier and compare with held-out real images.

pub mod distances;
pub mod fid;
pub mod fisher;
pub mod images;
pub mod modes;
pub mod precision_recall;

pub use distances::{energy_distance, median_bandwidth, mmd2_median, mmd2_rbf, sliced_wasserstein2};
pub use fisher::fisher_divergence;
pub use modes::{mode_stats, ModeStats};

use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::rng::Rng;
use serde::Serialize;

/// Random projections used for sliced Wasserstein-2 in reports.
pub const SW_PROJECTIONS: usize = 256;

/// Distances between a sample set and a reference set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distances {
    /// Unbiased MMD² with RBF kernels at [h/2, h, 2h], h the median distance.
    pub mmd2: f64,
    pub energy: f64,
    pub sliced_w2: f64,
}

impl Distances {
    pub fn between(x: &Points, y: &Points, rng: &mut Rng) -> Self {
        Self {
            mmd2: mmd2_median(x, y),
            energy: energy_distance(x, y),
            sliced_w2: sliced_wasserstein2(x, y, SW_PROJECTIONS, rng.inner()),
        }
    }
}

/// Samples judged against an exact mixture, each number beside its floor.
#[derive(Debug, Clone, Serialize)]
pub struct MixtureReport {
    pub n: usize,
    pub distances: Distances,
    /// The same distances between two independent exact sets of size n.
    pub floor: Distances,
    pub modes: ModeStats,
    /// Mode statistics of an exact sample set of size n (their floor).
    pub modes_floor: ModeStats,
}

/// Compares `samples` with the mixture: distances to fresh exact samples,
/// mode statistics, and the floors of both.
pub fn against_mixture(samples: &Points, mix: &GaussianMixture, rng: &mut Rng) -> MixtureReport {
    let n = samples.n;
    let reference = mix.sample(n, rng);
    let other = mix.sample(n, rng);
    MixtureReport {
        n,
        distances: Distances::between(samples, &reference, rng),
        floor: Distances::between(&other, &reference, rng),
        modes: mode_stats(samples, mix),
        modes_floor: mode_stats(&other, mix),
    }
}

/// Compares `samples` with a reference set; the floor splits the reference in two halves.
pub fn against_reference(samples: &Points, reference: &Points, rng: &mut Rng) -> (Distances, Distances) {
    let half = reference.n / 2;
    let a = reference.head(half);
    let b = Points::new(reference.n - half, reference.d, reference.data[half * reference.d..].to_vec());
    let n = samples.n.min(half);
    (Distances::between(&samples.head(n), &a.head(n), rng), Distances::between(&b.head(n), &a.head(n), rng))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::named_mixture;

    fn collapse(x: &Points, keep: usize, mix: &GaussianMixture) -> Points {
        // keep only points whose nearest mode is < keep, resampled to size n by repetition
        let stats_modes = modes::assign(x, mix);
        let rows: Vec<Vec<f64>> = (0..x.n).filter(|&i| stats_modes[i] < keep).map(|i| x.row(i).to_vec()).collect();
        let rep: Vec<Vec<f64>> = (0..x.n).map(|i| rows[i % rows.len()].clone()).collect();
        Points::from_rows(&rep)
    }

    /// Metrics detect what they exist to detect: a mode-collapsed set, wrong
    /// weights and a blurred set all score clearly worse than the floor.
    #[test]
    fn metrics_separate_defects_from_the_floor() {
        let mut rng = Rng::new(9, 0);
        let n = 2000;
        let gmm8 = named_mixture("gmm8").unwrap();
        let good = gmm8.sample(n, &mut rng);
        let r = against_mixture(&good, &gmm8, &mut rng);
        // true vs true: at the floor (within 3× of the floor's own scale)
        assert!(r.distances.mmd2 < 3.0 * r.floor.mmd2.abs() + 2e-3, "{r:?}");
        assert!(r.modes.weight_l1 < 0.1 && r.modes.covered == 8);

        let collapsed = collapse(&good, 4, &gmm8);
        let rc = against_mixture(&collapsed, &gmm8, &mut rng);
        assert!(rc.distances.mmd2 > 10.0 * rc.floor.mmd2.abs().max(1e-3), "{rc:?}");
        assert!(rc.distances.energy > 10.0 * rc.floor.energy.abs().max(1e-3));
        assert_eq!(rc.modes.covered, 4);
        assert!(rc.modes.weight_l1 > 0.9);

        // wrong weights: 0.5/0.5 instead of 0.8/0.2
        let unb = named_mixture("unbalanced").unwrap();
        let even =
            GaussianMixture::isotropic(vec![0.5, 0.5], vec![unb.mean(0).to_vec(), unb.mean(1).to_vec()], &[1.0, 1.0])
                .unwrap();
        let rw = against_mixture(&even.sample(n, &mut rng), &unb, &mut rng);
        assert!((rw.modes.weights[0] - 0.5).abs() < 0.05 && rw.modes.weight_l1 > 0.5, "{rw:?}");
        assert!(rw.distances.mmd2 > 10.0 * rw.floor.mmd2.abs().max(1e-4), "{rw:?}");

        // blurred: every point jittered by N(0, 0.5²)
        let mut blurred = gmm8.sample(n, &mut rng);
        for v in blurred.data.iter_mut() {
            *v += 0.5 * rng.normal();
        }
        let rb = against_mixture(&blurred, &gmm8, &mut rng);
        // sliced W2 barely sees a blur that is small next to the ring's spread; energy and MMD do
        assert!(rb.distances.energy > 10.0 * rb.floor.energy.abs().max(1e-4), "{rb:?}");
        assert!(rb.modes.off_manifold > 10.0 * rb.modes_floor.off_manifold.max(1e-3), "{rb:?}");
        assert!(rb.modes.mean_log_density < rb.modes_floor.mean_log_density - 0.5);
    }
}
