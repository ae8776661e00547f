//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
//! for Fast Sampling of Diffusion Models", multistep UniPC-p with B(h)), in
//! σ-space with data prediction (diffusers' `UniPCMultistepScheduler` with
//! `predict_x0 = True`). With λ = −log σ, a step from σ_s to σ_t has
//! h = λ_t − λ_s = log(σ_s/σ_t), and with the model outputs D_j = D(x_j, σ_j)
//! kept from earlier steps,
//!
//! x_t = (σ_t/σ_s)·x_s + (1 − e^{−h})·D_s − B(h)·Σ_k ρ_k·D1_k,
//! D1_k = (D_{s_k} − D_s)/r_k,  r_k = (λ_{s_k} − λ_s)/h  (s_k the k-th earlier step),
//!
//! B(h) = −h (`bh1`) or e^{−h} − 1 (`bh2`). The weights solve the order
//! conditions Σ_k ρ_k·r_k^{n−1} = b_n, n = 1, 2, …, with
//! b_n = n!·ψ_n(−h)/B(h), ψ_n(z) = (e^z − Σ_{j≤n} z^j/j!)/z^n.
//!
//! - **UniP-p** (the predictor, x_i → x_{i+1}) uses the p − 1 earlier outputs,
//!   so its system is (p−1)×(p−1); for p = 2 it is replaced by ρ = ½, as the
//!   paper's code and diffusers do (½ = b_1 + O(h), enough for order 2).
//! - **UniC-p** (the corrector of x_i, once D_i is known) redoes the step
//!   x_{i−1} → x_i with the same p − 1 earlier outputs plus D_i itself at
//!   r = 1 (its D1 is D_i − D_{i−1}), a p×p system; for p = 1, ρ = ½.
//!   It costs no model call: D_i is the output the next predictor needs anyway.
//!
//! The schedule is diffusers': at step i of N the order is
//! min(p, i + 1, N − i) (warm-up, then `lower_order_final`, which diffusers'
//! UniPC applies at every N, not only below 15 steps as its DPM-Solver does);
//! step i first corrects x_i with the order of the predictor that produced
//! it, then predicts x_{i+1} from the corrected x_i. The history keeps D at
//! the *uncorrected* x_i (the model is not called again after correcting),
//! and the last state is not corrected: the sample is the last predictor's
//! output. A step to σ = 0 (h = ∞, always of order 1) is x = D_s, which is
//! diffusers' `bh2`; its `bh1` gives NaN there (B = −∞ times an empty sum).
//!
//! The warm-up's first step (UniP-1 corrected by UniC-1) errs by O(h³), so
//! it bounds UniPC-3 (order p + 1 = 4 without `lower_order_final`) by order
//! 3 for large N, as DPM-Solver++(3M)'s first-order start bounded it by 2.
//! Unlike that one it is left as diffusers has it: its constant (∝ D″ at
//! σ_max) is too small to show up to N = 2560 on the grids of
//! `sampler_order.rs` (UniPC-3 fits 4.00 there), and with
//! `lower_order_final`, as the sampler table runs it, the last steps cap the
//! order lower anyway.
//!
//! ψ_n is evaluated by its series for |z| < 1, where the closed form loses
//! ~n digits to cancellation at small h (diffusers uses the closed-form
//! recurrence in float32); the values are the same to round-off.

use super::denoiser::{Denoiser, SigmaStep};
use crate::rng::Rng;
use candle_core::{Result, Tensor};

/// The two choices of B(h) in the UniPC update (the paper's B₁ and B₂).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcVariant {
    /// B(h) = −h (the paper's B₁(h) = h at its data-prediction step −h).
    Bh1,
    /// B(h) = e^{−h} − 1 (diffusers' default).
    Bh2,
}

impl UniPcVariant {
    /// B(h) for a step of length h > 0 in λ.
    fn b_of(self, h: f64) -> f64 {
        match self {
            Self::Bh1 => -h,
            Self::Bh2 => (-h).exp_m1(),
        }
    }
}

/// The UniPC step (UniP-p predictor with UniC-p corrector, data prediction).
/// Keeps the last p model outputs with their σ, and the corrected state the
/// last predictor started from with that predictor's order.
pub struct UniPcStep {
    variant: UniPcVariant,
    order: usize,
    lower_order_final: bool,
    /// (D(x_j, σ_j), σ_j) at the uncorrected x_j, oldest first, at most `order`.
    history: Vec<(Tensor, f64)>,
    /// (x_{i−1} after correction, the order of the predictor from it).
    last: Option<(Tensor, usize)>,
}

impl UniPcStep {
    /// UniPC-`order` with B(h) of `variant`; `order` in 1..=3 (diffusers'
    /// default for unconditional sampling is 3, `bh2`).
    ///
    /// # Panics
    /// If `order` is not 1, 2 or 3 (a constant of the sampler table, not user input).
    pub fn new(variant: UniPcVariant, order: usize) -> Self {
        assert!((1..=3).contains(&order), "UniPC order must be 1, 2 or 3 (got {order})");
        Self { variant, order, lower_order_final: true, history: Vec::new(), last: None }
    }

    /// Whether the last steps drop to order N − i (diffusers' `lower_order_final`,
    /// on by default). Off, every step after the warm-up has order p, which is
    /// what shows UniPC's own order on a grid ending at σ_min > 0, where the
    /// final uncorrected step of order 1 would otherwise cap it at 2.
    pub fn with_lower_order_final(mut self, on: bool) -> Self {
        self.lower_order_final = on;
        self
    }

    /// The UniP (`model_t = None`) or UniC (`model_t = Some(D_t)`) update of
    /// `order` from x_s to σ_t, where D_s is the newest entry of `history`.
    fn update(
        &self,
        x: &Tensor,
        sigma_t: f64,
        history: &[(Tensor, f64)],
        order: usize,
        model_t: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (m0, sigma_s) = history.last().expect("UniPC: a model output before any update");
        let h = (sigma_s / sigma_t).ln();
        let b_h = self.variant.b_of(h);
        let base = (x.affine(sigma_t / sigma_s, 0.0)? + m0.affine(-(-h).exp_m1(), 0.0)?)?;
        let mut nodes = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for (m_k, sigma_k) in history.iter().rev().skip(1).take(order - 1) {
            let r = (sigma_s / sigma_k).ln() / h;
            nodes.push(r);
            d1s.push((m_k - m0)?.affine(1.0 / r, 0.0)?);
        }
        let rhos = match model_t {
            None if order == 1 => return Ok(base),
            None if order == 2 => vec![0.5],
            None => solve_order_conditions(self.variant, h, &nodes),
            Some(_) if order == 1 => vec![0.5],
            Some(_) => {
                nodes.push(1.0);
                solve_order_conditions(self.variant, h, &nodes)
            }
        };
        if let Some(m_t) = model_t {
            d1s.push((m_t - m0)?);
        }
        let mut sum = d1s[0].affine(rhos[0], 0.0)?;
        for (d1, rho) in d1s.iter().zip(&rhos).skip(1) {
            sum = (sum + d1.affine(*rho, 0.0)?)?;
        }
        base - sum.affine(b_h, 0.0)?
    }
}

impl SigmaStep for UniPcStep {
    fn step(
        &mut self,
        den: &dyn Denoiser,
        x: &Tensor,
        sigmas: &[f64],
        i: usize,
        _rng: &mut Rng,
    ) -> Result<(Tensor, usize)> {
        if i == 0 {
            self.history.clear();
            self.last = None;
        }
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = den.denoise(x, s)?;
        let x = match self.last.take() {
            Some((x_prev, order)) => self.update(&x_prev, s, &self.history, order, Some(&denoised))?,
            None => x.clone(),
        };
        self.history.push((denoised.clone(), s));
        if self.history.len() > self.order {
            self.history.remove(0);
        }
        let steps_left = if self.lower_order_final { sigmas.len() - 1 - i } else { self.order };
        let order = self.order.min(steps_left).min(self.history.len());
        let next = if s_next == 0.0 { denoised } else { self.update(&x, s_next, &self.history, order, None)? };
        self.last = Some((x, order));
        Ok((next, 1))
    }
}

/// ψ_n(z) = (e^z − Σ_{j≤n} z^j/j!)/z^n = Σ_{m≥1} z^m/(n+m)!.
fn psi(n: usize, z: f64) -> f64 {
    if z.abs() < 1.0 {
        // 30 terms: the next is below |z|^31/31! < 1e-33
        let mut term = (1..=n).map(|j| 1.0 / j as f64).product::<f64>();
        let mut sum = 0.0;
        for m in 1..=30 {
            term *= z / (n + m) as f64;
            sum += term;
        }
        sum
    } else {
        let (mut partial, mut term) = (1.0, 1.0);
        for j in 1..=n {
            term *= z / j as f64;
            partial += term;
        }
        (z.exp() - partial) / z.powi(n as i32)
    }
}

/// ρ with Σ_k ρ_k·r_k^{n−1} = b_n for n = 1, …, len(nodes) (a Vandermonde
/// system of at most 3×3, solved by elimination with partial pivoting).
fn solve_order_conditions(variant: UniPcVariant, h: f64, nodes: &[f64]) -> Vec<f64> {
    let k = nodes.len();
    let b_h = variant.b_of(h);
    let mut factorial = 1.0;
    let mut a: Vec<Vec<f64>> = (1..=k)
        .map(|n| {
            factorial *= n as f64;
            let mut row: Vec<f64> = nodes.iter().map(|r| r.powi(n as i32 - 1)).collect();
            row.push(factorial * psi(n, -h) / b_h);
            row
        })
        .collect();
    for col in 0..k {
        let pivot = (col..k).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in a.iter_mut().skip(col + 1) {
            let f = row[col] / pivot_row[col];
            for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
        }
    }
    let mut rho = vec![0.0; k];
    for row in (0..k).rev() {
        let known: f64 = (row + 1..k).map(|c| a[row][c] * rho[c]).sum();
        rho[row] = (a[row][k] - known) / a[row][row];
    }
    rho
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::sample_sigma_steps;
    use candle_core::Device;
    use indicatif::ProgressBar;

    const VARIANTS: [UniPcVariant; 2] = [UniPcVariant::Bh1, UniPcVariant::Bh2];

    fn scalar(v: f64) -> Tensor {
        Tensor::new(&[v], &Device::Cpu).unwrap()
    }

    fn value(x: &Tensor) -> f64 {
        x.to_vec1::<f64>().unwrap()[0]
    }

    /// The exact denoiser of N(μ, τ²): D(x, σ) = (τ²x + σ²μ)/(τ² + σ²).
    struct Gaussian {
        mu: f64,
        tau: f64,
    }

    impl Gaussian {
        fn d(&self, x: f64, sigma: f64) -> f64 {
            let t2 = self.tau * self.tau;
            (t2 * x + sigma * sigma * self.mu) / (t2 + sigma * sigma)
        }
    }

    impl Denoiser for Gaussian {
        fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
            let t2 = self.tau * self.tau;
            x.affine(t2 / (t2 + sigma * sigma), sigma * sigma * self.mu / (t2 + sigma * sigma))
        }

        fn sigma_range(&self) -> (f64, f64) {
            (0.01, 10.0)
        }
    }

    /// UniPC-2 over σ = (10, 2, 0.5, 0) on a scalar Gaussian, step by step
    /// against the formulas written out by hand: step 0 is UniP-1 (DDIM);
    /// step 1 corrects x_1 by UniC-1 (ρ = ½) with D at the uncorrected x_1,
    /// then UniP-2 (ρ = ½) from the corrected x_1; step 2 ends at σ = 0 with
    /// D at the uncorrected x_2. To 1e-14 (f64, a handful of operations).
    #[test]
    fn first_steps_match_the_updates_written_out() {
        let g = Gaussian { mu: 1.5, tau: 0.5 };
        let sigmas: [f64; 4] = [10.0, 2.0, 0.5, 0.0];
        let x0 = 7.0;
        for variant in VARIANTS {
            let b = |h: f64| variant.b_of(h);
            let (h0, h1) = ((sigmas[0] / sigmas[1]).ln(), (sigmas[1] / sigmas[2]).ln());
            let d0 = g.d(x0, sigmas[0]);
            let x1 = sigmas[1] / sigmas[0] * x0 + (1.0 - (-h0).exp()) * d0;
            let d1 = g.d(x1, sigmas[1]);
            let x1c = sigmas[1] / sigmas[0] * x0 + (1.0 - (-h0).exp()) * d0 - b(h0) * 0.5 * (d1 - d0);
            let r = -h0 / h1;
            let x2 = sigmas[2] / sigmas[1] * x1c + (1.0 - (-h1).exp()) * d1 - b(h1) * 0.5 * (d0 - d1) / r;
            let want = [x1, x2, g.d(x2, sigmas[2])];

            let mut step = UniPcStep::new(variant, 2);
            let mut x = scalar(x0);
            let mut rng = Rng::new(0, 0);
            for (i, w) in want.iter().enumerate() {
                let (next, nfe) = step.step(&g, &x, &sigmas, i, &mut rng).unwrap();
                assert_eq!(nfe, 1);
                let got = value(&next);
                assert!((got - w).abs() < 1e-14 * (1.0 + w.abs()), "{variant:?} step {i}: {got} vs {w}");
                x = next;
            }
            // the shared loop gives the same, and a reused stepper starts afresh
            let run = sample_sigma_steps(&g, &mut step, scalar(x0), &sigmas, &mut rng, None, &ProgressBar::hidden());
            let run = run.unwrap();
            assert_eq!(run.nfe, 3);
            assert!((value(&run.x) - want[2]).abs() < 1e-14, "{variant:?}: {} vs {}", value(&run.x), want[2]);
        }
    }

    /// P(λ) = Σ c_j λ^j and ∫ e^λ P(λ) dλ = e^λ Σ_j (−1)^j P^{(j)}(λ).
    fn poly(c: &[f64], l: f64) -> f64 {
        c.iter().rev().fold(0.0, |acc, cj| acc * l + cj)
    }

    fn exp_poly_antiderivative(c: &[f64], l: f64) -> f64 {
        let (mut deriv, mut sum, mut sign) = (c.to_vec(), 0.0, 1.0);
        while !deriv.is_empty() {
            sum += sign * poly(&deriv, l);
            deriv = deriv.iter().enumerate().skip(1).map(|(j, cj)| j as f64 * cj).collect();
            sign = -sign;
        }
        l.exp() * sum
    }

    /// With D a polynomial in λ = −log σ the step has the closed form
    /// x_t = (σ_t/σ_s)·x_s + σ_t ∫_{λ_s}^{λ_t} e^λ D dλ, and an update whose
    /// weights satisfy the order conditions for n = 1, …, K is exact for
    /// degree ≤ K: UniP-3 (K = 2) for quadratics, UniC-2 (K = 2) for
    /// quadratics, UniC-3 (K = 3) for cubics, UniP-1 for constants. Checked
    /// for both B(h), with step lengths h below and above 1 (the two branches
    /// of ψ_n) and unequal earlier steps, to 1e-12. Dropping the D1 terms or
    /// b_n's n! fails this by > 1e-3.
    #[test]
    fn updates_are_exact_for_polynomial_denoisers() {
        let lambda = |s: f64| -s.ln();
        let cubic = [0.3, -1.2, 0.7, 0.25];
        // (σ's oldest first; the update goes from the last one to sigma_t)
        let cases: [(&[f64], f64); 3] = [(&[9.0, 4.0, 2.5], 1.9), (&[30.0, 5.0, 2.0], 0.3), (&[1.2, 1.0, 0.9], 0.85)];
        for variant in VARIANTS {
            let step = UniPcStep::new(variant, 3);
            for (past, sigma_t) in cases {
                for (order, corrector, degree) in [(1, false, 0), (3, false, 2), (2, true, 2), (3, true, 3)] {
                    let c = &cubic[..=degree];
                    let history: Vec<(Tensor, f64)> = past.iter().map(|&s| (scalar(poly(c, lambda(s))), s)).collect();
                    let sigma_s = past[past.len() - 1];
                    let x_s = 0.8;
                    let model_t = scalar(poly(c, lambda(sigma_t)));
                    let got = value(
                        &step.update(&scalar(x_s), sigma_t, &history, order, corrector.then_some(&model_t)).unwrap(),
                    );
                    let integral =
                        exp_poly_antiderivative(c, lambda(sigma_t)) - exp_poly_antiderivative(c, lambda(sigma_s));
                    let want = sigma_t / sigma_s * x_s + sigma_t * integral;
                    let what = if corrector { "UniC" } else { "UniP" };
                    assert!(
                        (got - want).abs() < 1e-12 * (1.0 + want.abs()),
                        "{variant:?} {what}-{order}, degree {degree}, σ {past:?} → {sigma_t}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
