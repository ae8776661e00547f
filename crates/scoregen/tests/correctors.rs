//! The PC correctors checked against their formulas (Song et al. 2021, Alg. 4
//! and score_sde's `AnnealedLangevinDynamics`) and against the invariance of
//! a Gaussian, with the exact oracle score.

use candle_core::{DType, Device, Tensor};
use scoregen::oracle::{GaussianMixture, OracleScore};
use scoregen::rng::Rng;
use scoregen::samplers::{AnnealedLangevin, Corrector, LangevinCorrector, ReverseSde};
use scoregen::score::ScoreFn;
use scoregen::sde::{Sde, VeSde, VpSde};
use std::sync::Arc;

const MU: [f64; 2] = [1.0, -0.5];
const S: f64 = 0.6;

fn gaussian(sde: &Arc<dyn Sde>) -> OracleScore {
    OracleScore::new(GaussianMixture::isotropic(vec![1.0], vec![MU.to_vec()], &[S]).unwrap(), sde.clone())
}

fn rows(x: &Tensor) -> Vec<Vec<f64>> {
    x.to_vec2::<f64>().unwrap()
}

/// Mean over rows of the Euclidean norm of each row.
fn mean_row_norm(x: &Tensor) -> f64 {
    let r = rows(x);
    r.iter().map(|v| v.iter().map(|a| a * a).sum::<f64>().sqrt()).sum::<f64>() / r.len() as f64
}

/// (t, h) ↦ (α, s(t)).
type ByHand = Box<dyn Fn(f64, f64) -> (f64, f64)>;

/// VE (σ_min, σ_max) = (0.01, 50) and VP (β_min, β_max) = (0.1, 20), with
/// α_t (the squared signal scale of the step t − h → t) and the marginal
/// std s(t) written out by hand from each SDE's definition, not from `Sde`:
/// VE: α = 1, s(t) = σ_min (σ_max/σ_min)^t; VP: α = exp(−∫_{t−h}^t β),
/// s(t) = √(1 − exp(−∫_0^t β)), with ∫_a^b β = β_min(b − a) + ½(β_max − β_min)(b² − a²).
fn cases() -> Vec<(Arc<dyn Sde>, ByHand)> {
    let int_beta = |a: f64, b: f64| 0.1 * (b - a) + 0.5 * 19.9 * (b * b - a * a);
    vec![
        (Arc::new(VeSde::new(0.01, 50.0)), Box::new(|t: f64, _h: f64| (1.0, 0.01 * 5000f64.powf(t)))),
        (
            Arc::new(VpSde::new(0.1, 20.0)),
            Box::new(move |t: f64, h: f64| ((-int_beta(t - h, t)).exp(), (1.0 - (-int_beta(0.0, t)).exp()).sqrt())),
        ),
    ]
}

/// One corrector step on a fixed batch equals x + ε·s(x, t) + √(2ε)·z with
/// the z the RNG draws and ε from the step rule: Langevin ε = 2α(snr·‖z‖/‖s‖)²
/// (norms averaged over the batch), annealed Langevin ε = 2α(snr·s(t))².
/// To 1e-12 relative: the same f64 arithmetic in another order. A factor 2
/// in ε moves x' by ≥ 0.4·ε·|s| + 0.4·√(2ε)·|z|, ≥ 1e-4 here.
#[test]
fn corrector_steps_equal_their_formulas() {
    scoregen::init();
    let x = Tensor::new(&[[0.3f64, -1.2], [2.5, 0.4], [-1.0, -2.0], [0.0, 1.7]], &Device::Cpu).unwrap();
    let (t, dt, snr) = (0.4, -0.01, 0.16);
    for (sde, by_hand) in cases() {
        let o = gaussian(&sde);
        let rev = ReverseSde::new(sde.as_ref(), &o, false);
        let (alpha, std) = by_hand(t, -dt);
        let s = o.score_at(&x, t).unwrap();
        let z = Rng::new(8, 0).randn((4, 2), DType::F64, &Device::Cpu).unwrap();
        let langevin = 2.0 * alpha * (snr * mean_row_norm(&z) / mean_row_norm(&s)).powi(2);
        let annealed = 2.0 * alpha * (snr * std).powi(2);
        let correctors: [(&str, &dyn Corrector, f64); 2] = [
            ("langevin", &LangevinCorrector { snr, n_steps: 1 }, langevin),
            ("ald", &AnnealedLangevin { snr, n_steps: 1 }, annealed),
        ];
        for (name, c, eps) in correctors {
            let (got, mean) = c.step(&rev, &x, t, dt, &mut Rng::new(8, 0)).unwrap();
            let (x0, s0, z0) = (rows(&x), rows(&s), rows(&z));
            for (i, (g, m)) in rows(&got).iter().zip(rows(&mean)).enumerate() {
                for j in 0..2 {
                    let want_mean = x0[i][j] + eps * s0[i][j];
                    let want = want_mean + (2.0 * eps).sqrt() * z0[i][j];
                    let tol = 1e-12 * (1.0 + want.abs());
                    assert!(
                        (g[j] - want).abs() < tol,
                        "{name} {}: x'[{i}][{j}] = {} vs {want} (ε = {eps})",
                        sde.name(),
                        g[j]
                    );
                    assert!((m[j] - want_mean).abs() < tol, "{name} {}: mean {} vs {want_mean}", sde.name(), m[j]);
                }
            }
        }
    }
}

/// Started from exact samples of p_t = N(m(t)μ, v I), v = m²S² + s(t)², 200
/// corrector steps at fixed t leave the mean and variance of the 20,000 × 2
/// coordinates within 4 standard errors of p_t's (SE of the variance:
/// v·√(2/40,000) = 0.7 % of v; of the mean: √(v/40,000)). snr = 0.05 keeps the
/// unadjusted-Langevin bias of the variance, v/(1 − ε/2v) − v ≈ ε/2 with
/// ε ≈ 2·snr²·v, at 0.25 % of v, well inside the margin; 200 steps move the
/// chain by 1 − (1 − ε/v)^400 ≈ 0.87 of the way to its own stationary
/// variance, so a corrector with the wrong noise (√ε for √(2ε): stationary
/// variance v/2) or the wrong sign is far outside it.
#[test]
fn corrector_alone_keeps_a_gaussian_invariant() {
    scoregen::init();
    let (n, t, dt, snr) = (20_000usize, 0.3, -1e-3, 0.05);
    for (sde, _) in cases() {
        let o = gaussian(&sde);
        let rev = ReverseSde::new(sde.as_ref(), &o, false);
        let (m, s) = sde.marginal(t);
        let v = m * m * S * S + s * s;
        let mut rng = Rng::new(21, 0);
        let start = rng.randn((n, 2), DType::F64, &Device::Cpu).unwrap().affine(v.sqrt(), 0.0).unwrap();
        let start = start.broadcast_add(&Tensor::new(&[[m * MU[0], m * MU[1]]], &Device::Cpu).unwrap()).unwrap();
        let correctors: [(&str, &dyn Corrector); 2] =
            [("langevin", &LangevinCorrector { snr, n_steps: 1 }), ("ald", &AnnealedLangevin { snr, n_steps: 1 })];
        for (name, c) in correctors {
            let mut x = start.clone();
            for _ in 0..200 {
                x = c.step(&rev, &x, t, dt, &mut rng).unwrap().0;
            }
            let r = rows(&x);
            let k = (2 * n) as f64;
            let centred: Vec<f64> = r.iter().flat_map(|p| [p[0] - m * MU[0], p[1] - m * MU[1]]).collect();
            let mean = centred.iter().sum::<f64>() / k;
            let var = centred.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (k - 1.0);
            println!("{name} {}: variance {var:.5} vs {v:.5}, mean offset {mean:.2e}", sde.name());
            assert!((var - v).abs() < 4.0 * v * (2.0 / k).sqrt(), "{name} {}: variance {var} vs {v}", sde.name());
            assert!(mean.abs() < 4.0 * (v / k).sqrt(), "{name} {}: mean offset {mean}", sde.name());
        }
    }
}
