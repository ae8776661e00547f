//! Continuous-time denoising score matching (Song et al. 2021, eq. 7):
//!
//! L(θ) = E_t E_{x(0)} E_{x(t)|x(0)} [ ½ λ(t) ‖s_θ(x(t), t) − ∇ log p_{0t}(x(t)|x(0))‖² ],
//!
//! with t ~ U(ε, T), x(t) = m(t)x(0) + s(t)z and ∇ log p_{0t} = −z/s(t).
//! λ(t) = s(t)² ("sigma2", the default) or λ(t) = g(t)² ("likelihood"
//! weighting, which makes the loss an upper bound on the negative log-likelihood),
//! or EDM's λ (Karras et al. 2022, eq. 8 and Table 1): with σ = s/m the loss is
//! λ(σ)‖D − x(0)‖², λ(σ) = (σ² + σ_d²)/(σ·σ_d)², i.e. ½·(σ² + σ_d²)/σ_d² times
//! ‖s·s_θ + z‖² here. The times are uniform on [ε, T], or log-normal in σ
//! (EDM: ln σ ~ N(P_mean, P_std²)), mapped back to t and clamped to [ε, T].

use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::{per_example, Sde};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// λ(t) in the continuous objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// λ(t) = s(t)², the marginal variance.
    Sigma2,
    /// λ(t) = g(t)², likelihood weighting.
    Likelihood,
    /// EDM's λ(σ) = (σ² + σ_d²)/(σ·σ_d)² on ‖D − x(0)‖².
    Edm,
}

/// How training times are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSampling {
    /// t ~ U(ε, T).
    Uniform,
    /// ln σ(t) ~ N(P_mean, P_std²) (EDM's −1.2 and 1.2), t = t(σ) clamped to [ε, T].
    LogNormal,
}

/// How the squared error is reduced over data dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// Mean over dimensions.
    Mean,
    /// Sum over dimensions (score_sde's `reduce_mean = False`).
    Sum,
}

/// The continuous DSM objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dsm {
    pub weighting: Weighting,
    pub reduction: Reduction,
    /// Smallest training time ε (1e-5).
    pub t_eps: f64,
    pub times: TimeSampling,
    /// (P_mean, P_std) of log-normal times.
    pub log_sigma: (f64, f64),
    /// σ_d of EDM's weighting.
    pub sigma_data: f64,
}

impl Default for Dsm {
    fn default() -> Self {
        Self {
            weighting: Weighting::Sigma2,
            reduction: Reduction::Mean,
            t_eps: 1e-5,
            times: TimeSampling::Uniform,
            log_sigma: (-1.2, 1.2),
            sigma_data: 0.5,
        }
    }
}

impl Dsm {
    /// The loss on a batch, with times drawn by [`TimeSampling`] and z ~ N(0, I) from `rng`.
    pub fn loss(&self, score: &dyn ScoreFn, sde: &dyn Sde, x0: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let n = x0.dim(0)?;
        let t = match self.times {
            TimeSampling::Uniform => rng.uniform_vec(n, self.t_eps, sde.t_max()),
            TimeSampling::LogNormal => (0..n)
                .map(|_| {
                    let sigma = (self.log_sigma.0 + self.log_sigma.1 * rng.normal()).exp();
                    crate::sde::time_of_sigma(sde, sigma).clamp(self.t_eps, sde.t_max())
                })
                .collect(),
        };
        let z = rng.randn(x0.shape(), x0.dtype(), x0.device())?;
        self.loss_at(score, sde, x0, &t, &z)
    }

    /// Per-example losses ½ λ(t_i) ‖s_θ(x_i(t), t_i) + z_i/s(t_i)‖² (reduced over
    /// dimensions), for given times and noise: the deterministic core of [`Dsm::loss`].
    pub fn per_example(
        &self,
        score: &dyn ScoreFn,
        sde: &dyn Sde,
        x0: &Tensor,
        t: &[f64],
        z: &Tensor,
    ) -> Result<Tensor> {
        let (mean, std): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| sde.marginal(t)).unzip();
        let xt = (x0.broadcast_mul(&per_example(&mean, x0)?)? + z.broadcast_mul(&per_example(&std, z)?)?)?;
        let t_tensor = Tensor::from_slice(t, t.len(), x0.device())?.to_dtype(x0.dtype())?;
        let s = score.score(&xt, &t_tensor)?;
        // λ‖s_θ + z/s‖² = (λ/s²)‖s·s_θ + z‖², which avoids dividing z by tiny s.
        let residual = (s.broadcast_mul(&per_example(&std, &s)?)? + z)?.flatten_from(1)?;
        let weight: Vec<f64> = t
            .iter()
            .zip(&std)
            .map(|(&t, &s)| match self.weighting {
                Weighting::Sigma2 => 0.5,
                Weighting::Likelihood => 0.5 * sde.diffusion(t).powi(2) / (s * s),
                Weighting::Edm => {
                    let sigma = s / sde.marginal(t).0;
                    let sd2 = self.sigma_data * self.sigma_data;
                    0.5 * (sigma * sigma + sd2) / sd2
                }
            })
            .collect();
        let sq = residual.sqr()?;
        let reduced = match self.reduction {
            Reduction::Sum => sq.sum(1)?,
            Reduction::Mean => sq.mean(1)?,
        };
        reduced * Tensor::from_vec(weight, t.len(), x0.device())?.to_dtype(x0.dtype())?
    }

    /// The batch mean of [`Dsm::per_example`].
    pub fn loss_at(&self, score: &dyn ScoreFn, sde: &dyn Sde, x0: &Tensor, t: &[f64], z: &Tensor) -> Result<Tensor> {
        self.per_example(score, sde, x0, t, z)?.mean_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{GaussianMixture, OracleScore};
    use crate::sde::{SubVpSde, VeSde, VpSde};
    use candle_core::{DType, Device};
    use std::sync::Arc;

    /// For data N(μ, s₀² I) the exact perturbed score is −(x − mμ)/(m²s₀² + s²).
    /// Plugged into the DSM loss it leaves the irreducible conditional-score
    /// variance: E‖s·s_θ + z‖² = D·m²s₀²/(m²s₀² + s²) per example, so the
    /// sigma2 loss (sum reduction) is ½·D·q, the likelihood loss ½·(g²/s²)·D·q and
    /// EDM's ½·((σ² + σ_d²)/σ_d²)·D·q (σ = s/m),
    /// with q = m²s₀²/(m²s₀² + s²). The Monte-Carlo estimate over n examples has
    /// relative standard error √(2/(D n)); we allow 5 of them.
    #[test]
    fn loss_of_exact_score_equals_analytic_minimum() {
        let (d, n, s0) = (2usize, 20_000usize, 0.7);
        let mu = vec![1.0, -2.0];
        let sdes: Vec<Arc<dyn Sde>> =
            vec![Arc::new(VeSde::new(0.01, 10.0)), Arc::new(VpSde::default()), Arc::new(SubVpSde::default())];
        let mix = GaussianMixture::isotropic(vec![1.0], vec![mu], &[s0]).unwrap();
        let mut rng = Rng::new(1, 0);
        for sde in sdes {
            let oracle = OracleScore::new(mix.clone(), sde.clone());
            for &t in &[0.05, 0.5, 0.95] {
                for weighting in [Weighting::Sigma2, Weighting::Likelihood, Weighting::Edm] {
                    let x0 = mix.sample(n, &mut rng).to_tensor(DType::F64, &Device::Cpu).unwrap();
                    let z = rng.randn((n, d), DType::F64, &Device::Cpu).unwrap();
                    let dsm = Dsm { weighting, reduction: Reduction::Sum, t_eps: 1e-5, ..Dsm::default() };
                    let got =
                        dsm.loss_at(&oracle, sde.as_ref(), &x0, &vec![t; n], &z).unwrap().to_scalar::<f64>().unwrap();
                    let (m, s) = sde.marginal(t);
                    let q = m * m * s0 * s0 / (m * m * s0 * s0 + s * s);
                    let lambda_over_s2 = match weighting {
                        Weighting::Sigma2 => 1.0,
                        Weighting::Likelihood => sde.diffusion(t).powi(2) / (s * s),
                        // (σ² + σ_d²)/σ_d² with σ = s/m and the default σ_d = 0.5
                        Weighting::Edm => ((s / m).powi(2) + 0.25) / 0.25,
                    };
                    let want = 0.5 * lambda_over_s2 * d as f64 * q;
                    let tol = 5.0 * want * (2.0 / (d * n) as f64).sqrt();
                    assert!((got - want).abs() < tol, "{} t={t} {weighting:?}: {got} vs {want}", sde.name());
                }
            }
        }
    }

    /// A wrong score (the exact one scaled by 1.5) has a strictly larger loss
    /// than the exact one on the same draws: the minimum is at the true score.
    #[test]
    fn exact_score_minimizes_the_loss() {
        struct Scaled<'a>(&'a OracleScore, f64);
        impl ScoreFn for Scaled<'_> {
            fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
                self.0.score(x, t)? * self.1
            }
        }
        let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
        let mix = crate::oracle::named_mixture("gmm8").unwrap();
        let oracle = OracleScore::new(mix.clone(), sde.clone());
        let mut rng = Rng::new(2, 0);
        let n = 4000;
        let x0 = mix.sample(n, &mut rng).to_tensor(DType::F64, &Device::Cpu).unwrap();
        let z = rng.randn((n, 2), DType::F64, &Device::Cpu).unwrap();
        let dsm = Dsm::default();
        let t = vec![0.3; n];
        let exact = dsm.loss_at(&oracle, sde.as_ref(), &x0, &t, &z).unwrap().to_scalar::<f64>().unwrap();
        for k in [0.5, 0.9, 1.1, 1.5] {
            let wrong =
                dsm.loss_at(&Scaled(&oracle, k), sde.as_ref(), &x0, &t, &z).unwrap().to_scalar::<f64>().unwrap();
            assert!(wrong > exact, "scale {k}: {wrong} <= {exact}");
        }
    }

    /// Log-normal times: ln σ(t) of the drawn t has mean P_mean and std P_std
    /// where σ(t) stays inside [σ(ε), σ(T)] (VP: [0.0105, 152.8] at ε = 1e-3,
    /// so N(−1.2, 1.2²) is clamped on 0.3% of draws). Checked through the loss
    /// with a score that records its times; 20,000 draws give standard errors
    /// of 0.0085 (mean) and 0.006 (std): 5 of them allowed.
    #[test]
    fn log_normal_times_have_the_requested_sigma_distribution() {
        use std::cell::RefCell;
        struct Recorder(RefCell<Vec<f64>>);
        impl ScoreFn for Recorder {
            fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
                self.0.borrow_mut().extend(crate::sde::times(t)?);
                x.zeros_like()
            }
        }
        let sde = VpSde::default();
        let dsm = Dsm { times: TimeSampling::LogNormal, t_eps: 1e-3, ..Dsm::default() };
        let rec = Recorder(RefCell::new(Vec::new()));
        let x0 = Tensor::zeros((20_000, 1), DType::F64, &Device::Cpu).unwrap();
        dsm.loss(&rec, &sde, &x0, &mut Rng::new(4, 0)).unwrap();
        let ln: Vec<f64> = rec.0.borrow().iter().map(|&t| crate::sde::sigma_of(&sde, t).ln()).collect();
        let mean = ln.iter().sum::<f64>() / ln.len() as f64;
        let std = (ln.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / ln.len() as f64).sqrt();
        assert!((mean + 1.2).abs() < 0.045, "mean ln σ {mean}");
        assert!((std - 1.2).abs() < 0.035, "std ln σ {std}");
        assert!(rec.0.borrow().iter().all(|&t| (1e-3..=1.0).contains(&t)));
    }
}
