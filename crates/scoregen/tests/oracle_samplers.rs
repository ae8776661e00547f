//! The reverse-SDE sampler with the exact oracle score reaches the metric
//! floor: this pins the SDE and sampler code to the math with no training.

use candle_core::{DType, Device};
use indicatif::ProgressBar;
use scoregen::data::{toy, Points};
use scoregen::metrics;
use scoregen::oracle::OracleScore;
use scoregen::rng::Rng;
use scoregen::samplers::{sample_reverse, EulerMaruyama, ReverseOptions};
use scoregen::sde::{Sde, SubVpSde, VeSde, VpSde};
use std::sync::Arc;

fn sample_with_oracle(name: &str, sde: Arc<dyn Sde>, n: usize, steps: usize, seed: u64) -> Points {
    scoregen::init();
    let mix = toy::named_mixture(name).unwrap();
    let oracle = OracleScore::new(mix, sde.clone());
    let opts = ReverseOptions { steps, ..Default::default() };
    let out = sample_reverse(
        &oracle,
        sde.as_ref(),
        &EulerMaruyama,
        (n, 2),
        &opts,
        &mut Rng::new(seed, 0),
        DType::F64,
        &Device::Cpu,
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(out.nfe, steps + 1);
    Points::from_tensor(&out.x).unwrap()
}

/// σ_max per data set: about the largest pairwise distance (NCSNv2 technique 1).
fn sdes(sigma_max: f64) -> Vec<Arc<dyn Sde>> {
    vec![Arc::new(VeSde::new(0.01, sigma_max)), Arc::new(VpSde::default()), Arc::new(SubVpSde::default())]
}

/// gmm8: all 8 modes, weights within the floor's spread, and the distances to
/// exact samples within a small multiple of the exact-vs-exact floor.
/// Tolerances: with n = 2000 each weight has binomial sd √(⅛·⅞/2000) ≈ 0.0074,
/// so the L1 error of 8 weights is ≈ 0.047 on average; we allow 0.1. The
/// energy distance between exact sets of 2000 has sd ≈ 0.003 (measured), we allow 0.015.
#[test]
fn euler_maruyama_with_oracle_reaches_floor_on_gmm8() {
    let mix = toy::named_mixture("gmm8").unwrap();
    for (i, sde) in sdes(10.0).into_iter().enumerate() {
        let name = sde.name();
        let x = sample_with_oracle("gmm8", sde, 2000, 500, i as u64);
        let r = metrics::against_mixture(&x, &mix, &mut Rng::new(100 + i as u64, 0));
        assert_eq!(r.modes.covered, 8, "{name}: {r:?}");
        assert!(r.modes.weight_l1 < 0.1, "{name}: {r:?}");
        assert!(r.modes.off_manifold < 0.01, "{name}: {r:?}");
        assert!(r.distances.energy < r.floor.energy.abs() + 0.015, "{name}: {r:?}");
        assert!(r.distances.mmd2 < r.floor.mmd2.abs() + 2e-3, "{name}: {r:?}");
        assert!((r.modes.mean_log_density - r.modes_floor.mean_log_density).abs() < 0.15, "{name}: {r:?}");
    }
}

/// unbalanced: the 0.8/0.2 weights are recovered within 0.03 (3.4 binomial
/// sds at n = 2000), which plain Langevin cannot do (issue: the pitfall).
#[test]
fn euler_maruyama_with_oracle_recovers_unbalanced_weights() {
    let mix = toy::named_mixture("unbalanced").unwrap();
    for (i, sde) in sdes(25.0).into_iter().enumerate() {
        let name = sde.name();
        let x = sample_with_oracle("unbalanced", sde, 2000, 500, 10 + i as u64);
        let r = metrics::against_mixture(&x, &mix, &mut Rng::new(200 + i as u64, 0));
        assert!((r.modes.weights[0] - 0.8).abs() < 0.03, "{name}: {r:?}");
        assert!(r.modes.off_manifold < 0.01, "{name}: {r:?}");
        assert!(r.distances.energy < r.floor.energy.abs() + 0.02, "{name}: {r:?}");
    }
}

/// A sign slip in the reverse drift (score added with the wrong sign) is caught:
/// the samples then fly off instead of reaching the modes.
#[test]
fn a_wrong_score_sign_fails_the_same_checks() {
    use candle_core::{Result, Tensor};
    use scoregen::score::ScoreFn;
    struct Negated(OracleScore);
    impl ScoreFn for Negated {
        fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
            self.0.score(x, t)?.neg()
        }
    }
    scoregen::init();
    let mix = toy::named_mixture("gmm8").unwrap();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let bad = Negated(OracleScore::new(mix.clone(), sde.clone()));
    let opts = ReverseOptions { steps: 200, ..Default::default() };
    let out = sample_reverse(
        &bad,
        sde.as_ref(),
        &EulerMaruyama,
        (500, 2),
        &opts,
        &mut Rng::new(1, 0),
        DType::F64,
        &Device::Cpu,
        &ProgressBar::hidden(),
    )
    .unwrap();
    let x = Points::from_tensor(&out.x).unwrap();
    let stats = metrics::mode_stats(&x, &mix);
    assert!(!x.all_finite() || stats.off_manifold > 0.5, "{stats:?}");
}
