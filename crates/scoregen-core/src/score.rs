//! [`ScoreFn`]: anything that answers s(x, t) ≈ ∇ₓ log p_t(x) for a batch.
//!
//! Samplers, objectives and metrics take a `&dyn ScoreFn`, so they never know
//! whether the score comes from a network, an energy or the exact oracle.

use crate::sde::{self, Sde};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// A (possibly learned) score of the perturbed data distribution.
pub trait ScoreFn {
    /// s(x, t) for x of shape [N, …] and times t of shape [N]; same shape as x.
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;

    /// s(x, t) with one time for the whole batch.
    fn score_at(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.score(x, &sde::time_batch(t, x)?)
    }

    /// Tr ∇ₓ s(x, t) per example, shape [N], when the score knows it in closed
    /// form (the oracle: the Laplacian of log p_t). `None` (the default) means
    /// "differentiate me": the likelihood then uses autodiff through `score`.
    fn divergence(&self, _x: &Tensor, _t: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The Jacobian-vector product (∇ₓ s(x, t))·v per example, shape of x, when
    /// known in closed form (the oracle: the Hessian of log p_t times v).
    /// `None` (the default): autodiff through `score` (a vector-Jacobian product).
    fn jacobian_vector(&self, _x: &Tensor, _t: &Tensor, _v: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// How a network's output becomes a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    /// s = net(x, t).
    Score,
    /// s = net(x, t) / s(t), with s(t) the marginal std (score_sde's `scale_by_sigma`):
    /// the net then predicts −z, which has unit scale at every t.
    ScoreOverStd,
    /// ε-prediction (DDPM, Ho et al. 2020): the net predicts the noise ε of
    /// x_t = m(t)·x_0 + s(t)·ε, and s = −ε/s(t). Trained by DSM with λ = s(t)²,
    /// whose loss is then ½‖ε_θ − ε‖², DDPM's "simple" loss.
    Epsilon,
    /// v-prediction (Salimans & Ho 2022): v = m·ε − s·x_0, so
    /// ε = (m·v + s·x_t)/(m² + s²) and s = −ε/s(t).
    V,
    /// x₀-prediction: ε = (x_t − m·x̂_0)/s(t), so s = (m·x̂_0 − x_t)/s(t)².
    X0,
}

/// The score a network output of kind `output` means at x_t and times t:
/// out itself, out/s(t), or −ε/s(t) with ε from [`eps_from_output`].
pub fn score_from_output(output: Output, out: Tensor, x: &Tensor, t: &Tensor, sde: &dyn Sde) -> Result<Tensor> {
    match output {
        Output::Score => Ok(out),
        Output::ScoreOverStd => {
            let inv_std: Vec<f64> = sde::times(t)?.iter().map(|&t| 1.0 / sde.marginal(t).1).collect();
            out.broadcast_mul(&sde::per_example(&inv_std, &out)?)
        }
        Output::Epsilon | Output::V | Output::X0 => {
            let eps = eps_from_output(output, &out, x, t, sde)?;
            score_from_eps(&eps, t, sde)
        }
    }
}

/// EDM's preconditioning (Karras et al. 2022, Table 1, "Ours"). With
/// σ = s(t)/m(t) and x̃ = x_t/m(t) (so x̃ = x(0) + σ·z), the denoiser is
///
/// D(x̃; σ) = c_skip(σ)·x̃ + c_out(σ)·F_θ(c_in(σ)·x̃; c_noise(σ)),
///
/// c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²),
/// c_noise = ¼·ln σ: the network sees unit-variance inputs and has a
/// unit-variance target at every σ. Tweedie's formula gives the score,
/// ∇ log p_t(x_t) = (m·D − x_t)/s².
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edm {
    /// σ_d, the data's standard deviation (0.5 for images in [−1, 1]).
    pub sigma_data: f64,
}

impl Edm {
    /// (c_skip, c_out, c_in, c_noise) at σ.
    pub fn coefficients(&self, sigma: f64) -> (f64, f64, f64, f64) {
        let sd2 = self.sigma_data * self.sigma_data;
        let r = (sigma * sigma + sd2).sqrt();
        (sd2 / (r * r), sigma * self.sigma_data / r, 1.0 / r, 0.25 * sigma.ln())
    }

    /// The score of network `f` under this preconditioning at x_t, times t.
    pub fn score(
        &self,
        f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        t: &Tensor,
        sde: &dyn Sde,
    ) -> Result<Tensor> {
        let ms: Vec<(f64, f64)> = sde::times(t)?.iter().map(|&t| sde.marginal(t)).collect();
        let coef: Vec<(f64, f64, f64, f64)> = ms.iter().map(|&(m, s)| self.coefficients(s / m)).collect();
        let col = |f: &dyn Fn(usize) -> f64| sde::per_example(&(0..ms.len()).map(f).collect::<Vec<_>>(), x);
        // x̃ = x/m; the network's input c_in·x̃ and time c_noise
        let input = x.broadcast_mul(&col(&|i| coef[i].2 / ms[i].0)?)?;
        let noise: Vec<f64> = coef.iter().map(|c| c.3).collect();
        let t_in = Tensor::from_vec(noise, ms.len(), x.device())?.to_dtype(t.dtype())?;
        let out = f(&input, &t_in)?;
        // m·D − x = (m·c_skip − 1)·x̃·m/m… written per example as a·x + b·F
        // with a = c_skip − 1 (since m·c_skip·x̃ = c_skip·x) and b = m·c_out, then / s²
        let a = col(&|i| (coef[i].0 - 1.0) / (ms[i].1 * ms[i].1))?;
        let b = col(&|i| ms[i].0 * coef[i].1 / (ms[i].1 * ms[i].1))?;
        x.broadcast_mul(&a)? + out.broadcast_mul(&b)?
    }
}

/// How a network's inputs and output relate to the score: its output kind
/// alone ([`Output`], inputs (x_t, t) as they are), or EDM's preconditioning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head {
    Plain(Output),
    Edm(Edm),
}

impl From<Output> for Head {
    fn from(o: Output) -> Self {
        Head::Plain(o)
    }
}

impl Head {
    /// The score of the network `f` (called as f(input, time input)) at x_t, t.
    pub fn score(
        &self,
        f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        t: &Tensor,
        sde: &dyn Sde,
    ) -> Result<Tensor> {
        match self {
            Head::Plain(output) => score_from_output(*output, f(x, t)?, x, t, sde),
            Head::Edm(edm) => edm.score(f, x, t, sde),
        }
    }
}

/// The noise a prediction of kind `output` implies, at x_t and times t:
/// ε itself, ε = (m·v + s·x_t)/(m² + s²) for v, or ε = (x_t − m·x̂_0)/s for x₀.
pub fn eps_from_output(output: Output, out: &Tensor, x: &Tensor, t: &Tensor, sde: &dyn Sde) -> Result<Tensor> {
    let ms: Vec<(f64, f64)> = sde::times(t)?.iter().map(|&t| sde.marginal(t)).collect();
    let col = |f: &dyn Fn(f64, f64) -> f64| sde::per_example(&ms.iter().map(|&(m, s)| f(m, s)).collect::<Vec<_>>(), x);
    match output {
        Output::Epsilon => Ok(out.clone()),
        Output::V => {
            let a = out.broadcast_mul(&col(&|m, s| m / (m * m + s * s))?)?;
            a + x.broadcast_mul(&col(&|m, s| s / (m * m + s * s))?)?
        }
        Output::X0 => (x - out.broadcast_mul(&col(&|m, _| m)?)?)?.broadcast_mul(&col(&|_, s| 1.0 / s)?),
        Output::Score | Output::ScoreOverStd => {
            let score = out.broadcast_mul(&col(&|_, s| if output == Output::ScoreOverStd { 1.0 / s } else { 1.0 })?)?;
            eps_from_score(&score, t, sde)
        }
    }
}

/// s(x, t) = −ε(x, t)/s(t): the score of an ε-prediction (Ho et al. 2020, eq. 11
/// read as Tweedie's formula; Song et al. 2021, App. B).
pub fn score_from_eps(eps: &Tensor, t: &Tensor, sde: &dyn Sde) -> Result<Tensor> {
    let inv: Vec<f64> = sde::times(t)?.iter().map(|&t| -1.0 / sde.marginal(t).1).collect();
    eps.broadcast_mul(&sde::per_example(&inv, eps)?)
}

/// ε(x, t) = −s(t)·s(x, t): the other direction, so a score model can be
/// stepped by the DDPM-family update rules written for ε.
pub fn eps_from_score(score: &Tensor, t: &Tensor, sde: &dyn Sde) -> Result<Tensor> {
    let neg_std: Vec<f64> = sde::times(t)?.iter().map(|&t| -sde.marginal(t).1).collect();
    score.broadcast_mul(&sde::per_example(&neg_std, score)?)
}

/// Anything that predicts the noise ε(x_t, t) of a VP-style perturbation.
pub trait EpsFn {
    fn eps(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}

/// An ε-model as a [`ScoreFn`]: s = −ε/s(t).
pub struct EpsScore<E> {
    pub eps: E,
    pub sde: Arc<dyn Sde>,
}

impl<E: EpsFn> ScoreFn for EpsScore<E> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        score_from_eps(&self.eps.eps(x, t)?, t, self.sde.as_ref())
    }
}

/// A score as an ε-model: ε = −s(t)·s(x, t).
pub struct ScoreEps<S> {
    pub score: S,
    pub sde: Arc<dyn Sde>,
}

impl<S: ScoreFn> EpsFn for ScoreEps<S> {
    fn eps(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        eps_from_score(&self.score.score(x, t)?, t, self.sde.as_ref())
    }
}

/// A model defined on the integer timesteps 0, …, N−1 of a discrete chain
/// (what a diffusers `UNet2DModel(sample, timestep)` is): its raw output,
/// read as an [`Output`], at x_t and timestep i.
pub trait TimestepModel {
    fn predict(&self, x: &Tensor, timestep: usize) -> Result<Tensor>;
}

impl<F: Fn(&Tensor, usize) -> Result<Tensor>> TimestepModel for F {
    fn predict(&self, x: &Tensor, timestep: usize) -> Result<Tensor> {
        self(x, timestep)
    }
}

/// A discrete-time ε- or v-model (or any [`Output`]) as a [`ScoreFn`] on its
/// chain's continuous time, so every sampler runs it (k-diffusion's
/// `DiscreteEpsDDPMDenoiser` with `quantize = True`): the chain's timestep i
/// sits at t_i ([`Sde::timestep_times`]; t_i = (i + 1)/N for the DDPM chain),
/// a time t is evaluated at the nearest timestep, i = argmin |t − t_i|, and the
/// output becomes a score with the marginal at t itself
/// ([`score_from_output`]; for ε: s = −ε_θ(x_t, i)/s(t)). On the timesteps —
/// the `linspace`, `leading` and `trailing` grids — it is exact; between them
/// the model is asked about the nearest level it knows.
pub struct DiscreteTimeModel<M> {
    pub model: M,
    pub chain: Arc<dyn Sde>,
    pub output: Output,
    times: Vec<f64>,
}

impl<M: TimestepModel> DiscreteTimeModel<M> {
    /// An error when `chain` has no integer timesteps (a continuous SDE).
    pub fn new(model: M, chain: Arc<dyn Sde>, output: Output) -> Result<Self> {
        let Some(times) = chain.timestep_times() else {
            candle_core::bail!(
                "a discrete-time model needs a chain with integer timesteps (sde `{}` has none)",
                chain.name()
            )
        };
        Ok(Self { model, chain, output, times })
    }

    /// The timestep nearest to t (ties to the smaller).
    pub fn timestep_of(&self, t: f64) -> usize {
        nearest_timestep(&self.times, t)
    }
}

/// The index i of the timestep nearest to t among increasing times t_i
/// (ties to the smaller): where a discrete-time model is asked about time t.
pub fn nearest_timestep(times: &[f64], t: f64) -> usize {
    let k = times.partition_point(|&ti| ti < t);
    match k {
        0 => 0,
        k if k == times.len() => k - 1,
        k => {
            if t - times[k - 1] <= times[k] - t {
                k - 1
            } else {
                k
            }
        }
    }
}

impl<M: TimestepModel> ScoreFn for DiscreteTimeModel<M> {
    /// Rows with the same timestep go to the model together.
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let steps: Vec<usize> = sde::times(t)?.iter().map(|&t| self.timestep_of(t)).collect();
        let out = if steps.iter().all(|&i| i == steps[0]) {
            self.model.predict(x, steps.first().copied().unwrap_or(0))?
        } else {
            let rows = (0..steps.len())
                .map(|r| self.model.predict(&x.narrow(0, r, 1)?, steps[r]))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&rows, 0)?
        };
        score_from_output(self.output, out, x, t, self.chain.as_ref())
    }
}

impl<T: ScoreFn + ?Sized> ScoreFn for &T {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        (**self).score(x, t)
    }
}

/// An unnormalized log-density log p̃(x, t) = log p(x, t) + const, per example [N]
/// (energies and the oracle have one; MALA needs it for its accept step).
pub trait LogDensity {
    fn log_density(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}
