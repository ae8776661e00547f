//! The exact oracle: Gaussian mixtures and their perturbed scores.
//!
//! For p(x) = Σ_k w_k N(μ_k, Σ_k) and a perturbation kernel N(m·x(0), s²·I),
//! the perturbed density is again a mixture, p_t = Σ_k w_k N(m μ_k, m² Σ_k + s² I),
//! so log p_t and ∇ log p_t are known in closed form at every t and every σ.
//! Every sampler and likelihood in scoregen is tested against it.

mod conditional;
mod hessian;
mod mixture;
mod named;

pub use mixture::{GaussianMixture, MixtureError};
pub use named::{named_mixture, NamedMixture, NAMED_MIXTURES};

use crate::points::Points;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// The exact score ∇ log p_t of a Gaussian mixture under an SDE, as a [`ScoreFn`].
#[derive(Clone)]
pub struct OracleScore {
    pub mixture: GaussianMixture,
    pub sde: Arc<dyn Sde>,
}

impl OracleScore {
    pub fn new(mixture: GaussianMixture, sde: Arc<dyn Sde>) -> Self {
        Self { mixture, sde }
    }

    /// The exact perturbed mixture p_t.
    pub fn at(&self, t: f64) -> GaussianMixture {
        self.mixture.perturbed(self.sde.as_ref(), t)
    }

    /// ∇ₓ log p_t(y | x), the exact gradient of the class posterior of component y.
    pub fn class_posterior_grad(&self, x: &Tensor, t: &Tensor, y: usize) -> Result<Tensor> {
        self.check_class(y)?;
        let (n, out) = self.by_time(x, t, |mix, block| mix.class_posterior_grad(block, y).data)?;
        Tensor::from_vec(out, (n, x.dim(1)?), x.device())?.to_dtype(x.dtype())
    }

    /// log p_t(y | x) for every class, [N, K].
    pub fn class_log_posteriors(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (n, out) = self.by_time(x, t, |mix, block| mix.responsibilities(block).iter().map(|r| r.ln()).collect())?;
        Tensor::from_vec(out, (n, self.mixture.n_components()), x.device())?.to_dtype(x.dtype())
    }

    /// ∇ₓ log p_t(x | y): the exact score of component y alone.
    pub fn class_score(&self, x: &Tensor, t: &Tensor, y: usize) -> Result<Tensor> {
        self.check_class(y)?;
        let (n, out) = self.by_time(x, t, |mix, block| mix.component(y).score(block).data)?;
        Tensor::from_vec(out, (n, x.dim(1)?), x.device())?.to_dtype(x.dtype())
    }

    fn check_class(&self, y: usize) -> Result<()> {
        let k = self.mixture.n_components();
        if y >= k {
            candle_core::bail!("class {y} is out of range: the mixture has {k} components (classes 0..{})", k - 1);
        }
        Ok(())
    }
}

impl ScoreFn for OracleScore {
    /// Δₓ log p_t in closed form ([`GaussianMixture::score_divergence`]).
    fn divergence(&self, x: &Tensor, t: &Tensor) -> Result<Option<Tensor>> {
        let per_block = |mix: &GaussianMixture, block: &Points| mix.score_divergence(block);
        let (n, out) = self.by_time(x, t, per_block)?;
        Ok(Some(Tensor::from_vec(out, n, x.device())?.to_dtype(x.dtype())?))
    }

    /// ∇ₓ² log p_t · v in closed form ([`GaussianMixture::hessian_vector`]).
    fn jacobian_vector(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
        let vp = Points::from_tensor(v)?;
        let (n, d) = (vp.n, vp.d);
        let mut offset = 0;
        let (_, out) = self.by_time(x, t, |mix, block| {
            let vb = Points::new(block.n, d, vp.data[offset * d..(offset + block.n) * d].to_vec());
            offset += block.n;
            mix.hessian_vector(block, &vb).data
        })?;
        Ok(Some(Tensor::from_vec(out, (n, d), x.device())?.to_dtype(x.dtype())?))
    }

    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (n, out) = self.by_time(x, t, |mix, block| mix.score(block).data)?;
        Tensor::from_vec(out, (n, x.dim(1)?), x.device())?.to_dtype(x.dtype())
    }
}

/// The exact clean score ∇ log p and log-density of a mixture, ignoring t
/// (for plain Langevin dynamics and MALA on the data density itself).
#[derive(Debug, Clone)]
pub struct MixtureScore(pub GaussianMixture);

impl ScoreFn for MixtureScore {
    fn score(&self, x: &Tensor, _t: &Tensor) -> Result<Tensor> {
        let pts = Points::from_tensor(x)?;
        Tensor::from_vec(self.0.score(&pts).data, (pts.n, pts.d), x.device())?.to_dtype(x.dtype())
    }
}

impl crate::score::LogDensity for MixtureScore {
    fn log_density(&self, x: &Tensor, _t: &Tensor) -> Result<Tensor> {
        let pts = Points::from_tensor(x)?;
        Tensor::from_vec(self.0.log_prob(&pts), pts.n, x.device())?.to_dtype(x.dtype())
    }
}

#[cfg(test)]
mod score_tests {
    //! The score ↔ ε ↔ v ↔ x₀ conversions of [`crate::score`], checked on the oracle's exact score.
    use crate::oracle::named_mixture;
    use crate::oracle::OracleScore;
    use crate::rng::Rng;
    use crate::score::*;
    use crate::sde::{self, Sde};
    use crate::sde::{DiscreteVp, VeSde, VpSde};
    use candle_core::Tensor;
    use candle_core::{DType, Device};
    use std::sync::Arc;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// score → ε → score and the v and x₀ parameterizations of the same ε all
    /// give back the oracle's score, at mixed times in one batch, to 1e-9
    /// (f64 round-off, amplified by 1/s(t) ≤ 1/s(0.01) at the smallest t).
    #[test]
    fn eps_score_round_trip_is_exact() {
        let mix = named_mixture("gmm8").unwrap();
        let sdes: Vec<Arc<dyn Sde>> =
            vec![Arc::new(VpSde::default()), Arc::new(DiscreteVp::ddpm()), Arc::new(VeSde::new(0.01, 10.0))];
        for sde in sdes {
            let oracle = OracleScore::new(mix.clone(), sde.clone());
            let x = Rng::new(3, 0).randn((6, 2), DType::F64, &Device::Cpu).unwrap().affine(3.0, 0.0).unwrap();
            let t = Tensor::new(&[0.01f64, 0.01, 0.2, 0.5, 0.9, 1.0], &Device::Cpu).unwrap();
            let s = oracle.score(&x, &t).unwrap();
            let eps = ScoreEps { score: &oracle, sde: sde.clone() }.eps(&x, &t).unwrap();
            let back = EpsScore { eps: ScoreEps { score: &oracle, sde: sde.clone() }, sde: sde.clone() };
            assert!(max_abs_diff(&back.score(&x, &t).unwrap(), &s) < 1e-9, "{}", sde.name());
            // v = m·ε − s·x̂₀ and x̂₀ = (x − s·ε)/m, built by hand from ε
            let ms: Vec<(f64, f64)> = sde::times(&t).unwrap().iter().map(|&t| sde.marginal(t)).collect();
            let col = |f: &dyn Fn(f64, f64) -> f64| {
                sde::per_example(&ms.iter().map(|&(m, s)| f(m, s)).collect::<Vec<_>>(), &x).unwrap()
            };
            let x0 = (&x - eps.broadcast_mul(&col(&|_, s| s)).unwrap())
                .unwrap()
                .broadcast_mul(&col(&|m, _| 1.0 / m))
                .unwrap();
            let v = (eps.broadcast_mul(&col(&|m, _| m)).unwrap() - x0.broadcast_mul(&col(&|_, s| s)).unwrap()).unwrap();
            for (kind, out) in [(Output::Epsilon, &eps), (Output::V, &v), (Output::X0, &x0)] {
                let e = eps_from_output(kind, out, &x, &t, sde.as_ref()).unwrap();
                let got = score_from_eps(&e, &t, sde.as_ref()).unwrap();
                assert!(max_abs_diff(&got, &s) < 1e-9, "{} {kind:?}", sde.name());
            }
            // and the sign: s = −ε/s(t), so ε points away from the data
            let dot = (&eps * &s).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(dot < 0.0);
        }
    }

    /// EDM's coefficients have the properties that define them (Karras et al.
    /// 2022, App. B.6): for data of std σ_d the network input c_in·(x + σn) and
    /// the target (x − c_skip·(x + σn))/c_out both have unit variance, and
    /// c_noise = ¼ ln σ; closed forms, so to round-off.
    #[test]
    fn edm_coefficients_give_unit_variance_inputs_and_targets() {
        for sd in [0.5, 1.3] {
            let edm = Edm { sigma_data: sd };
            for sigma in [0.002, 0.1, 0.5, 3.0, 80.0] {
                let (c_skip, c_out, c_in, c_noise) = edm.coefficients(sigma);
                assert!((c_in * c_in * (sd * sd + sigma * sigma) - 1.0).abs() < 1e-12);
                let target_var = ((1.0 - c_skip).powi(2) * sd * sd + c_skip * c_skip * sigma * sigma) / (c_out * c_out);
                assert!((target_var - 1.0).abs() < 1e-12, "σ = {sigma}: {target_var}");
                assert!((c_noise - sigma.ln() / 4.0).abs() < 1e-15);
                // and the minimizer of E‖c_skip·x̃ + c_out·F − x‖² over c_skip is this one
                assert!((c_skip - sd * sd / (sd * sd + sigma * sigma)).abs() < 1e-15);
            }
        }
    }

    /// A "network" that returns EDM's exact target for a mixture, F = (D − c_skip·x̃)/c_out
    /// with D the oracle's denoiser and the coefficients written out here from
    /// the paper (recovering σ = e^{4·c_noise} and x̃ = input/c_in), gives the
    /// oracle's score through `Head::Edm` at mixed times, to 1e-7 relative
    /// (f64, through the σ → t bisection).
    #[test]
    fn edm_head_of_the_exact_target_is_the_exact_score() {
        let mix = named_mixture("gmm8").unwrap();
        let sd = 0.5;
        for sde in [Arc::new(VpSde::default()) as Arc<dyn Sde>, Arc::new(VeSde::new(0.01, 10.0))] {
            let oracle = OracleScore::new(mix.clone(), sde.clone());
            let f = |input: &Tensor, t_in: &Tensor| -> candle_core::Result<Tensor> {
                let sig: Vec<f64> = sde::times(t_in)?.iter().map(|c| (4.0 * c).exp()).collect();
                let mut rows = Vec::new();
                for (i, &sigma) in sig.iter().enumerate() {
                    let c_in = 1.0 / (sigma * sigma + sd * sd).sqrt();
                    let c_skip = sd * sd / (sigma * sigma + sd * sd);
                    let c_out = sigma * sd / (sigma * sigma + sd * sd).sqrt();
                    let xt = input.narrow(0, i, 1)?.affine(1.0 / c_in, 0.0)?;
                    let t = crate::sde::time_of_sigma(sde.as_ref(), sigma);
                    let (m, s) = sde.marginal(t);
                    let score = oracle.score_at(&xt.affine(m, 0.0)?, t)?;
                    let d = (xt.affine(m, 0.0)? + score.affine(s * s, 0.0)?)?.affine(1.0 / m, 0.0)?;
                    rows.push((d - xt.affine(c_skip, 0.0)?)?.affine(1.0 / c_out, 0.0)?);
                }
                Tensor::cat(&rows, 0)
            };
            let x = Rng::new(5, 0).randn((5, 2), DType::F64, &Device::Cpu).unwrap().affine(3.0, 0.0).unwrap();
            let t = Tensor::new(&[0.01f64, 0.1, 0.3, 0.6, 0.95], &Device::Cpu).unwrap();
            let got = Head::Edm(Edm { sigma_data: sd }).score(&f, &x, &t, sde.as_ref()).unwrap();
            let want = oracle.score(&x, &t).unwrap();
            let err = max_abs_diff(&got, &want);
            let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
            assert!(err < 1e-7 * scale.max(1.0), "{}: {err}", sde.name());
        }
    }
}
