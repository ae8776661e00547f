//! The NCSN objective (Song & Ermon 2019, eq. 6), a weighted sum of denoising
//! score matching over the noise ladder:
//! L(θ) = E_i λ(σ_i) · ½ E‖s_θ(x + σ_i z, σ_i) + z/σ_i‖²,  λ(σ) = σ^p (p = 2: the seed's λ(i) = σ_i²),
//! with the level i drawn uniformly per example. The network sees level i as
//! the ladder's VE time t_i (see `sde::ladder`).

use super::{Dsm, Objective, Reduction, Weighting};
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::NoiseLadder;
use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
pub struct Ncsn {
    pub ladder: NoiseLadder,
    /// p in λ(σ) = σ^p.
    pub power: f64,
    pub reduction: Reduction,
}

impl Ncsn {
    /// Per-example λ(σ_i)·½‖s_θ(x̃, t_i) + z/σ_i‖² for given levels and noise.
    pub fn per_example(&self, score: &dyn ScoreFn, x0: &Tensor, levels: &[usize], z: &Tensor) -> Result<Tensor> {
        let sde = self.ladder.sde();
        let t: Vec<f64> = levels.iter().map(|&i| self.ladder.time(i)).collect();
        // DSM with λ = σ² on the ladder's VE SDE, then σ^{p−2} on top for λ = σ^p.
        let dsm = Dsm { weighting: Weighting::Sigma2, reduction: self.reduction, t_eps: 0.0, ..Dsm::default() };
        let base = dsm.per_example(score, &sde, x0, &t, z)?;
        let extra: Vec<f64> = levels.iter().map(|&i| self.ladder.sigma(i).powf(self.power - 2.0)).collect();
        base * Tensor::from_vec(extra, levels.len(), x0.device())?.to_dtype(x0.dtype())?
    }
}

impl Objective for Ncsn {
    fn loss(&self, score: &dyn ScoreFn, x0: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let n = x0.dim(0)?;
        let levels: Vec<usize> = (0..n).map(|_| rng.below(self.ladder.levels())).collect();
        let z = rng.randn(x0.shape(), x0.dtype(), x0.device())?;
        self.per_example(score, x0, &levels, &z)?.mean_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{GaussianMixture, OracleScore};
    use candle_core::{DType, Device};
    use std::sync::Arc;

    /// For data N(μ, s₀²I) the exact noise-conditional score leaves, at level σ,
    /// ½·σ^{p−2}·D·s₀²/(s₀² + σ²) per example (sum reduction); averaged
    /// uniformly over the levels this is the analytic minimum of the NCSN loss.
    /// Tolerance: 5 Monte-Carlo standard errors (per-example losses are
    /// scaled χ² variables; the sd is estimated from the sample).
    #[test]
    fn loss_of_exact_score_equals_analytic_minimum() {
        let (d, n, s0) = (2usize, 40_000usize, 0.5);
        let mix = GaussianMixture::isotropic(vec![1.0], vec![vec![1.0, 2.0]], &[s0]).unwrap();
        let ladder = NoiseLadder::geometric(0.05, 5.0, 6);
        for power in [2.0, 1.0] {
            let ncsn = Ncsn { ladder: ladder.clone(), power, reduction: Reduction::Sum };
            let oracle = OracleScore::new(mix.clone(), Arc::new(ladder.sde()));
            let mut rng = Rng::new(3, 0);
            let x0 = mix.sample(n, &mut rng).to_tensor(DType::F64, &Device::Cpu).unwrap();
            let levels: Vec<usize> = (0..n).map(|_| rng.below(ladder.levels())).collect();
            let z = rng.randn((n, d), DType::F64, &Device::Cpu).unwrap();
            let per = ncsn.per_example(&oracle, &x0, &levels, &z).unwrap().to_vec1::<f64>().unwrap();
            let got = per.iter().sum::<f64>() / n as f64;
            let sd = (per.iter().map(|v| (v - got).powi(2)).sum::<f64>() / n as f64).sqrt();
            // λ(σ)·½‖s + z/σ‖² = ½σ^{p−2}‖σs + z‖², and E‖σs + z‖² = D·s₀²/(s₀² + σ²)
            let want = ladder
                .sigmas
                .iter()
                .map(|&s| 0.5 * s.powf(power - 2.0) * d as f64 * s0 * s0 / (s0 * s0 + s * s))
                .sum::<f64>()
                / ladder.levels() as f64;
            assert!((got - want).abs() < 5.0 * sd / (n as f64).sqrt(), "p={power}: {got} vs {want}");
        }
    }
}
