//! [`ScoreFn`]: anything that answers s(x, t) ≈ ∇ₓ log p_t(x) for a batch.
//!
//! Samplers, objectives and metrics take a `&dyn ScoreFn`, so they never know
//! whether the score comes from a network, an energy or the exact oracle.

use crate::sde::{self, Sde};
use candle_core::{DType, Result, Tensor};
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

    /// (s(x, t), Tr ∇ₓ s(x, t)) in one evaluation, when the score can give
    /// both without autodiff: by default from [`ScoreFn::divergence`]; a
    /// network that runs forward-mode through itself overrides it.
    fn score_with_divergence(&self, x: &Tensor, t: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        match self.divergence(x, t)? {
            Some(div) => Ok(Some((self.score(x, t)?, div))),
            None => Ok(None),
        }
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
            let (_, s) = sde::marginal_columns(sde, t, &out)?;
            out.broadcast_mul(&s.recip()?.to_dtype(out.dtype())?)
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

    /// (c_skip, c_out, c_in, c_noise) per row of σ [N] (f64, on σ's device).
    pub fn coefficients_of(&self, sigma: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let sd2 = self.sigma_data * self.sigma_data;
        let r2 = sigma.sqr()?.affine(1.0, sd2)?;
        let r = r2.sqrt()?;
        let c_skip = r2.recip()?.affine(sd2, 0.0)?;
        let c_out = sigma.div(&r)?.affine(self.sigma_data, 0.0)?;
        Ok((c_skip, c_out, r.recip()?, sigma.log()?.affine(0.25, 0.0)?))
    }

    /// The score of network `f` under this preconditioning at x_t, times t
    /// (coefficients on t's device: no host read).
    pub fn score(
        &self,
        f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        t: &Tensor,
        sde: &dyn Sde,
    ) -> Result<Tensor> {
        let (m, s) = sde::marginal_columns(sde, t, x)?;
        let sigma = (&s / &m)?;
        let (c_skip, c_out, c_in, c_noise) = self.coefficients_of(&sigma)?;
        // x̃ = x/m; the network's input c_in·x̃ and time c_noise
        let input = x.broadcast_mul(&(c_in / &m)?.to_dtype(x.dtype())?)?;
        let t_in = c_noise.flatten_all()?.to_dtype(t.dtype())?;
        let out = f(&input, &t_in)?;
        // m·D − x = (m·c_skip − 1)·x̃·m/m… written per example as a·x + b·F
        // with a = c_skip − 1 (since m·c_skip·x̃ = c_skip·x) and b = m·c_out, then / s²
        let s2 = s.sqr()?;
        let a = (c_skip.affine(1.0, -1.0)? / &s2)?;
        let b = ((m * c_out)? / s2)?;
        x.broadcast_mul(&a.to_dtype(x.dtype())?)? + out.broadcast_mul(&b.to_dtype(x.dtype())?)?
    }
}

/// A network that gives its output and its own Jacobian trace at (u, τ):
/// (F(u, τ), Tr ∂F/∂u), or `None` when it cannot.
pub type NetWithTrace<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Option<(Tensor, Tensor)>> + 'a;

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

    /// (s(x, t), Tr ∇ₓ s(x, t)) from a network that gives its output and its
    /// own Jacobian trace, g(u, τ) = (F(u, τ), Tr ∂F/∂u), or `None`.
    ///
    /// Every head is affine in x and F: s = a·x + b·F(c·x, τ) per example
    /// (a, b, c and τ functions of t: 0, 1, 1 and t for a plain score; EDM's
    /// (c_skip − 1)/s², m·c_out/s², c_in/m and c_noise), so
    ///
    ///   Tr ∇ₓ s = D·a + b·c·Tr ∂F/∂u.
    ///
    /// a, b, c and τ are read off [`Head::score`] itself on one-column inputs
    /// (x = 1 with F = 0 gives a and hands F its input c and time τ; x = 0
    /// with F = 1 gives b), so no conversion is written twice.
    pub fn score_with_divergence(
        &self,
        g: &NetWithTrace,
        x: &Tensor,
        t: &Tensor,
        sde: &dyn Sde,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let n = x.dim(0)?;
        let dim = x.elem_count() / n.max(1);
        let ones = Tensor::ones((n, 1), x.dtype(), x.device())?;
        let seen = std::cell::RefCell::new(None);
        let a = self.score(
            &|u, tau| {
                *seen.borrow_mut() = Some((u.clone(), tau.clone()));
                u.zeros_like()
            },
            &ones,
            t,
            sde,
        )?;
        let (c, tau) = seen.into_inner().expect("Head::score calls its network once");
        let b = self.score(&|u, _| u.ones_like(), &ones.zeros_like()?, t, sde)?;
        let Some((out, trace)) = g(&x.broadcast_mul(&c)?, &tau)? else { return Ok(None) };
        let score = self.score(&|_, _| Ok(out.clone()), x, t, sde)?;
        let div = ((a.squeeze(1)? * dim as f64)? + ((b * c)?.squeeze(1)? * trace.to_dtype(x.dtype())?)?)?;
        Ok(Some((score, div)))
    }
}

/// The noise a prediction of kind `output` implies, at x_t and times t:
/// ε itself, ε = (m·v + s·x_t)/(m² + s²) for v, or ε = (x_t − m·x̂_0)/s for x₀.
pub fn eps_from_output(output: Output, out: &Tensor, x: &Tensor, t: &Tensor, sde: &dyn Sde) -> Result<Tensor> {
    let columns = || sde::marginal_columns(sde, t, x);
    let like = |c: Tensor| c.to_dtype(x.dtype());
    match output {
        Output::Epsilon => Ok(out.clone()),
        Output::V => {
            let (m, s) = columns()?;
            let norm = (m.sqr()? + s.sqr()?)?;
            let a = out.broadcast_mul(&like((&m / &norm)?)?)?;
            a + x.broadcast_mul(&like((&s / &norm)?)?)?
        }
        Output::X0 => {
            let (m, s) = columns()?;
            (x - out.broadcast_mul(&like(m)?)?)?.broadcast_mul(&like(s.recip()?)?)
        }
        // ε = −s·score, with score = out or out/s
        Output::Score => out.broadcast_mul(&like(columns()?.1.neg()?)?),
        Output::ScoreOverStd => out.neg(),
    }
}

/// s(x, t) = −ε(x, t)/s(t): the score of an ε-prediction (Ho et al. 2020, eq. 11
/// read as Tweedie's formula; Song et al. 2021, App. B).
pub fn score_from_eps(eps: &Tensor, t: &Tensor, sde: &dyn Sde) -> Result<Tensor> {
    let (_, s) = sde::marginal_columns(sde, t, eps)?;
    eps.broadcast_mul(&s.recip()?.neg()?.to_dtype(eps.dtype())?)
}

/// ε(x, t) = −s(t)·s(x, t): the other direction, so a score model can be
/// stepped by the DDPM-family update rules written for ε.
pub fn eps_from_score(score: &Tensor, t: &Tensor, sde: &dyn Sde) -> Result<Tensor> {
    let (_, s) = sde::marginal_columns(sde, t, score)?;
    score.broadcast_mul(&s.neg()?.to_dtype(score.dtype())?)
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
    times: TimestepTimes,
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
        Ok(Self { model, chain, output, times: TimestepTimes::new(times) })
    }

    /// The timestep nearest to t (ties to the smaller).
    pub fn timestep_of(&self, t: f64) -> usize {
        self.times.nearest(t)
    }
}

/// The increasing times t_0 < … < t_{K−1} of a chain's integer timesteps
/// ([`Sde::timestep_times`]), asked for the timestep nearest to a time on the
/// host ([`TimestepTimes::nearest`]) or per row of a time tensor on its own
/// device ([`TimestepTimes::nearest_of`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TimestepTimes {
    pub times: Vec<f64>,
    on_device: crate::host::Uploaded,
}

impl TimestepTimes {
    pub fn new(times: Vec<f64>) -> Self {
        Self { times, on_device: Default::default() }
    }

    /// [`nearest_timestep`] of t.
    pub fn nearest(&self, t: f64) -> usize {
        nearest_timestep(&self.times, t)
    }

    /// [`nearest_timestep`] per row of t [N], as f64 indices on t's device
    /// with no host read: k = #{i : t_i < t}, then the nearer of t_{k−1} and
    /// t_k (ties to the smaller), both clamped to 0, …, K − 1.
    pub fn nearest_of(&self, t: &Tensor) -> Result<Tensor> {
        let last = self.times.len().saturating_sub(1) as f64;
        let table = self.on_device.get(t.device(), || Tensor::from_slice(&self.times, self.times.len(), t.device()))?;
        let t = t.to_dtype(DType::F64)?;
        let k = t.unsqueeze(1)?.broadcast_gt(&table.unsqueeze(0)?)?.to_dtype(DType::F64)?.sum(1)?;
        let lo = (&k - 1.0)?.clamp(0.0, last)?;
        let hi = k.clamp(0.0, last)?;
        let t_lo = table.index_select(&lo.to_dtype(DType::U32)?, 0)?;
        let t_hi = table.index_select(&hi.to_dtype(DType::U32)?, 0)?;
        (&t - t_lo)?.le(&(t_hi - &t)?)?.where_cond(&lo, &hi)
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
    /// Rows with the same timestep go to the model together. The timesteps
    /// are read back to the host (a counted read, [`crate::host`]): the
    /// model takes them as integers. Networks on the device take theirs from
    /// [`TimestepTimes::nearest_of`] instead.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sde::{DiscreteVp, VpSde};
    use candle_core::Device;

    /// The timestep nearest to t on the device is the host's, for t on the
    /// chain's grid, halfway between (ties to the smaller), outside [t_0, t_K−1]
    /// and in between, without a read back; on a non-uniform grid as well.
    #[test]
    fn nearest_timestep_on_the_device_matches_the_host() {
        let chain = DiscreteVp::ddpm();
        let uniform = TimestepTimes::new(chain.timestep_times().unwrap());
        let skewed = TimestepTimes::new((1..=40).map(|i| (i as f64 / 40.0).powi(2)).collect());
        for table in [&uniform, &skewed] {
            let mut ts: Vec<f64> = vec![0.0, -0.5, 1.0, 1.5, 0.3333, 0.123456];
            for w in table.times.windows(2).step_by(7) {
                ts.extend([w[0], 0.5 * (w[0] + w[1]), 0.3 * w[0] + 0.7 * w[1]]);
            }
            let t = Tensor::new(ts.as_slice(), &Device::Cpu).unwrap();
            let before = crate::host::reads();
            let got = table.nearest_of(&t).unwrap();
            assert_eq!(crate::host::reads(), before);
            let got = got.to_vec1::<f64>().unwrap();
            for (i, &ti) in ts.iter().enumerate() {
                assert_eq!(got[i] as usize, table.nearest(ti), "t = {ti}");
            }
        }
    }

    /// Every output kind becomes the same score through the tensor path as
    /// through the scalar marginal, row by row at different times.
    #[test]
    fn score_from_output_uses_the_marginal_per_row() {
        let sde = VpSde::default();
        let ts = [0.01, 0.4, 0.9];
        let t = Tensor::new(&ts, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[0.3f64, -1.0], [2.0, 0.5], [-0.7, 1.1]], &Device::Cpu).unwrap();
        let out = Tensor::new(&[[0.1f64, 0.2], [-0.3, 0.4], [0.5, -0.6]], &Device::Cpu).unwrap();
        let (xv, ov) = (x.to_vec2::<f64>().unwrap(), out.to_vec2::<f64>().unwrap());
        for output in [Output::Score, Output::ScoreOverStd, Output::Epsilon, Output::V, Output::X0] {
            let got = score_from_output(output, out.clone(), &x, &t, &sde).unwrap().to_vec2::<f64>().unwrap();
            for (r, &tr) in ts.iter().enumerate() {
                let (m, s) = sde.marginal(tr);
                for c in 0..2 {
                    let (o, xx) = (ov[r][c], xv[r][c]);
                    let want = match output {
                        Output::Score => o,
                        Output::ScoreOverStd => o / s,
                        Output::Epsilon => -o / s,
                        Output::V => -((m * o + s * xx) / (m * m + s * s)) / s,
                        Output::X0 => (m * o - xx) / (s * s),
                    };
                    assert!((got[r][c] - want).abs() < 1e-12 * (1.0 + want.abs()), "{output:?} row {r}");
                }
            }
        }
    }

    /// EDM's coefficients on a tensor of σ are the scalar ones.
    #[test]
    fn edm_coefficients_of_a_tensor_match() {
        let edm = Edm { sigma_data: 0.5 };
        let sig = [0.002, 0.5, 3.0, 80.0];
        let c = edm.coefficients_of(&Tensor::new(&sig, &Device::Cpu).unwrap()).unwrap();
        let cols = [c.0, c.1, c.2, c.3].map(|t| t.to_vec1::<f64>().unwrap());
        for (i, &s) in sig.iter().enumerate() {
            let (a, b, cc, d) = edm.coefficients(s);
            for (got, want) in [(cols[0][i], a), (cols[1][i], b), (cols[2][i], cc), (cols[3][i], d)] {
                assert!((got - want).abs() <= 1e-14 * want.abs().max(1.0), "σ = {s}");
            }
        }
    }
}
