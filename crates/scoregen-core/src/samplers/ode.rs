//! ODE solvers over candle tensors: fixed-step Euler and Heun, and the adaptive
//! Dormand–Prince 5(4) pair (RK45) with scipy's step-size control, which
//! score_sde uses (`scipy.integrate.solve_ivp(method="RK45")`) for the
//! probability-flow ODE and the exact likelihood.
//!
//! Why our own solver: the Rust ODE crates (ode_solvers, diffsol, …) integrate
//! nalgebra vectors or their own vector types; ours has to step candle tensors
//! (any shape, any device, any float dtype, with the score network in the loop)
//! without copying the state out and back at every stage. Dormand–Prince is 50
//! lines, and every step is checked below against closed-form solutions.

use candle_core::{DType, Result, Tensor};

/// How to integrate dy/dt = f(t, y).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OdeMethod {
    /// y ← y + h·f(t, y); `steps` uniform steps, NFE = steps.
    Euler { steps: usize },
    /// Heun (explicit trapezoid): k₁ = f(t, y), k₂ = f(t+h, y + h k₁),
    /// y ← y + h(k₁ + k₂)/2; NFE = 2·steps.
    Heun { steps: usize },
    /// Dormand–Prince 5(4) with local error control: a step is accepted when
    /// the RMS norm of err/(atol + rtol·max(|y|, |y_new|)) is ≤ 1 (scipy's rule).
    Rk45 { rtol: f64, atol: f64 },
}

impl Default for OdeMethod {
    fn default() -> Self {
        OdeMethod::Rk45 { rtol: 1e-5, atol: 1e-5 }
    }
}

/// The end state and what it cost.
#[derive(Debug, Clone)]
pub struct OdeSolution {
    pub y: Tensor,
    /// Evaluations of f (score evaluations for the probability flow).
    pub nfe: usize,
    /// Accepted and rejected steps.
    pub accepted: usize,
    pub rejected: usize,
    /// (t, y) after every accepted step, starting at t0, when asked for.
    pub trajectory: Vec<(f64, Tensor)>,
}

/// Most steps an adaptive solve may take before giving up with an error.
pub const MAX_STEPS: usize = 100_000;

// Dormand & Prince (1980), the coefficients of scipy's RK45.
const C: [f64; 6] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0];
const A: [&[f64]; 6] = [
    &[],
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
    &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
];
const B: [f64; 6] = [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0];
/// 5th-order minus embedded 4th-order weights (7 stages, the last is f(t+h, y_new)).
const E: [f64; 7] =
    [-71.0 / 57600.0, 0.0, 71.0 / 16695.0, -71.0 / 1920.0, 17253.0 / 339200.0, -22.0 / 525.0, 1.0 / 40.0];
const SAFETY: f64 = 0.9;
const MIN_FACTOR: f64 = 0.2;
const MAX_FACTOR: f64 = 10.0;

/// y + h·Σ cᵢ kᵢ (zero coefficients skipped).
fn lincomb(y: &Tensor, h: f64, terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for &(c, k) in terms {
        if c == 0.0 {
            continue;
        }
        let term = k.affine(c * h, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    match acc {
        None => Ok(y.clone()),
        Some(a) => y + a,
    }
}

/// √(mean(v²)), the RMS norm of scipy's solvers.
fn rms(v: &Tensor) -> Result<f64> {
    crate::host::scalar::<f64>(&v.to_dtype(DType::F64)?.sqr()?.mean_all()?.sqrt()?)
}

/// Integrates dy/dt = f(t, y) from (t0, y0) to t1 (t1 < t0 integrates backwards).
/// The state is detached after every step so no autodiff graph outlives it.
pub fn solve(
    f: &mut dyn FnMut(f64, &Tensor) -> Result<Tensor>,
    y0: &Tensor,
    t0: f64,
    t1: f64,
    method: OdeMethod,
    record: bool,
) -> Result<OdeSolution> {
    let mut sol = OdeSolution { y: y0.clone(), nfe: 0, accepted: 0, rejected: 0, trajectory: Vec::new() };
    if record {
        sol.trajectory.push((t0, y0.clone()));
    }
    match method {
        OdeMethod::Euler { steps } | OdeMethod::Heun { steps } => {
            let n = steps.max(1);
            let h = (t1 - t0) / n as f64;
            let heun = matches!(method, OdeMethod::Heun { .. });
            let mut y = y0.clone();
            for i in 0..n {
                let t = t0 + i as f64 * h;
                let k1 = f(t, &y)?;
                y = if heun {
                    let k2 = f(t + h, &lincomb(&y, h, &[(1.0, &k1)])?)?;
                    lincomb(&y, h, &[(0.5, &k1), (0.5, &k2)])?
                } else {
                    lincomb(&y, h, &[(1.0, &k1)])?
                }
                .detach();
                sol.nfe += if heun { 2 } else { 1 };
                sol.accepted += 1;
                if record {
                    sol.trajectory.push((t + h, y.clone()));
                }
            }
            sol.y = y;
            Ok(sol)
        }
        OdeMethod::Rk45 { rtol, atol } => dormand_prince(f, y0, t0, t1, rtol, atol, record, sol),
    }
}

/// scipy's `select_initial_step` (Hairer, Nørsett & Wanner, II.4) for order 4.
/// The trial step h0 is at most `span`, as in scipy, so f is never evaluated
/// outside [t0, t1] (a score at t < 0 is undefined: VP's s(t)² < 0 there).
#[allow(clippy::too_many_arguments)]
fn initial_step(
    f: &mut dyn FnMut(f64, &Tensor) -> Result<Tensor>,
    t0: f64,
    y0: &Tensor,
    f0: &Tensor,
    direction: f64,
    span: f64,
    rtol: f64,
    atol: f64,
) -> Result<f64> {
    let scale = y0.abs()?.affine(rtol, atol)?;
    let d0 = rms(&y0.div(&scale)?)?;
    let d1 = rms(&f0.div(&scale)?)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
    let h0 = h0.min(span);
    let y1 = lincomb(y0, h0 * direction, &[(1.0, f0)])?;
    let f1 = f(t0 + h0 * direction, &y1)?;
    let d2 = rms(&(f1 - f0)?.div(&scale)?)? / h0;
    let h1 = if d1 <= 1e-15 && d2 <= 1e-15 { (h0 * 1e-3).max(1e-6) } else { (0.01 / d1.max(d2)).powf(1.0 / 5.0) };
    Ok((100.0 * h0).min(h1))
}

#[allow(clippy::too_many_arguments)]
fn dormand_prince(
    f: &mut dyn FnMut(f64, &Tensor) -> Result<Tensor>,
    y0: &Tensor,
    t0: f64,
    t1: f64,
    rtol: f64,
    atol: f64,
    record: bool,
    mut sol: OdeSolution,
) -> Result<OdeSolution> {
    let direction = if t1 >= t0 { 1.0 } else { -1.0 };
    let span = (t1 - t0).abs();
    let mut t = t0;
    let mut y = y0.clone();
    let mut fy = f(t, &y)?.detach();
    sol.nfe += 1;
    let mut h_abs = initial_step(f, t, &y, &fy, direction, span, rtol, atol)?.min(span);
    sol.nfe += 1;
    while direction * (t1 - t) > 0.0 {
        let min_step = 10.0 * f64::EPSILON * t.abs().max(f64::MIN_POSITIVE);
        let mut rejected_once = false;
        loop {
            if h_abs < min_step {
                candle_core::bail!("RK45: step size fell below {min_step:e} at t = {t}; the ODE is too stiff for rtol = {rtol}, atol = {atol}");
            }
            if sol.accepted + sol.rejected >= MAX_STEPS {
                candle_core::bail!("RK45: more than {MAX_STEPS} steps between t = {t0} and t = {t1}; loosen rtol/atol");
            }
            let mut t_new = t + direction * h_abs;
            if direction * (t_new - t1) > 0.0 {
                t_new = t1;
            }
            let h = t_new - t;
            let mut k: Vec<Tensor> = Vec::with_capacity(7);
            k.push(fy.clone());
            for s in 1..6 {
                let terms: Vec<(f64, &Tensor)> = A[s].iter().copied().zip(k.iter()).collect();
                let ks = f(t + C[s] * h, &lincomb(&y, h, &terms)?)?.detach();
                k.push(ks);
            }
            let terms: Vec<(f64, &Tensor)> = B.iter().copied().zip(k.iter()).collect();
            let y_new = lincomb(&y, h, &terms)?.detach();
            let f_new = f(t_new, &y_new)?.detach();
            sol.nfe += 6;
            k.push(f_new.clone());
            let terms: Vec<(f64, &Tensor)> = E.iter().copied().zip(k.iter()).collect();
            let err = lincomb(&y.zeros_like()?, h, &terms)?;
            let scale = y.abs()?.maximum(&y_new.abs()?)?.affine(rtol, atol)?;
            let err_norm = rms(&err.div(&scale)?)?;
            if !err_norm.is_finite() {
                candle_core::bail!("RK45: the state became non-finite at t = {t}");
            }
            if err_norm < 1.0 {
                let mut factor =
                    if err_norm == 0.0 { MAX_FACTOR } else { MAX_FACTOR.min(SAFETY * err_norm.powf(-0.2)) };
                if rejected_once {
                    factor = factor.min(1.0);
                }
                h_abs *= factor;
                t = t_new;
                y = y_new;
                fy = f_new;
                sol.accepted += 1;
                if record {
                    sol.trajectory.push((t, y.clone()));
                }
                break;
            }
            h_abs *= MIN_FACTOR.max(SAFETY * err_norm.powf(-0.2));
            rejected_once = true;
            sol.rejected += 1;
        }
    }
    sol.y = y;
    Ok(sol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn y0() -> Tensor {
        Tensor::new(&[[1.0f64, -2.0], [0.5, 3.0]], &Device::Cpu).unwrap()
    }

    /// dy/dt = λ(t)·y with λ(t) = −1 + 2t has y(t1) = y0·exp(∫λ): every method
    /// converges at its order. Euler error halves with h (order 1), Heun's
    /// quarters (order 2), and RK45 meets its tolerance.
    #[test]
    fn solvers_converge_at_their_order_on_a_linear_ode() {
        let lam = |t: f64| -1.0 + 2.0 * t;
        let mut f = |t: f64, y: &Tensor| y.affine(lam(t), 0.0);
        let (t0, t1) = (0.0f64, 1.5f64);
        let exact = y0().affine((-t1 + t1 * t1 - (-t0 + t0 * t0)).exp(), 0.0).unwrap();
        let err = |m: OdeMethod, f: &mut dyn FnMut(f64, &Tensor) -> Result<Tensor>| {
            let s = solve(f, &y0(), t0, t1, m, false).unwrap();
            rms(&(s.y - &exact).unwrap()).unwrap()
        };
        let (e1, e2) = (err(OdeMethod::Euler { steps: 100 }, &mut f), err(OdeMethod::Euler { steps: 200 }, &mut f));
        assert!((e1 / e2 - 2.0).abs() < 0.1, "Euler ratio {}", e1 / e2);
        let (h1, h2) = (err(OdeMethod::Heun { steps: 100 }, &mut f), err(OdeMethod::Heun { steps: 200 }, &mut f));
        assert!((h1 / h2 - 4.0).abs() < 0.2, "Heun ratio {}", h1 / h2);
        let r = err(OdeMethod::Rk45 { rtol: 1e-8, atol: 1e-8 }, &mut f);
        assert!(r < 1e-6, "RK45 error {r}");
    }

    /// Backwards integration of a rotation (a non-normal 2-D system) returns
    /// to the start, and tighter tolerances cost more evaluations and give
    /// smaller errors. NFE = 2 + 6·(accepted + rejected).
    #[test]
    fn rk45_is_accurate_backwards_and_counts_nfe() {
        // dy/dt = (y₂, −y₁): y(t) rotates by angle t.
        let mut f = |_t: f64, y: &Tensor| {
            let a = y.narrow(1, 0, 1)?;
            let b = y.narrow(1, 1, 1)?;
            Tensor::cat(&[&b, &a.neg()?], 1)
        };
        let mut prev = (f64::INFINITY, 0usize);
        for tol in [1e-4, 1e-6, 1e-8] {
            let m = OdeMethod::Rk45 { rtol: tol, atol: tol };
            let fwd = solve(&mut f, &y0(), 0.0, 2.0 * std::f64::consts::PI, m, false).unwrap();
            let back = solve(&mut f, &fwd.y, 2.0 * std::f64::consts::PI, 0.0, m, false).unwrap();
            let e = rms(&(fwd.y.clone() - y0()).unwrap()).unwrap() + rms(&(back.y - y0()).unwrap()).unwrap();
            assert!(e < 200.0 * tol, "tol {tol}: error {e}");
            assert_eq!(fwd.nfe, 2 + 6 * (fwd.accepted + fwd.rejected));
            assert!(e < prev.0 && fwd.nfe > prev.1, "tol {tol}: {e} {}", fwd.nfe);
            prev = (e, fwd.nfe);
        }
    }

    /// The solver never evaluates f outside [t1, t0], even when the first
    /// trial step 0.01·‖y‖/‖f‖ is longer than the interval (a slowly varying
    /// state, as the probability-flow ODE of a VP SDE near T): a score at
    /// t < 0 is undefined.
    #[test]
    fn rk45_never_leaves_the_interval() {
        let mut seen = Vec::new();
        let mut f = |t: f64, y: &Tensor| {
            seen.push(t);
            y.affine(1e-3, 0.0)
        };
        let m = OdeMethod::Rk45 { rtol: 1e-5, atol: 1e-5 };
        solve(&mut f, &y0(), 1.0, 1e-3, m, false).unwrap();
        assert!(seen.iter().all(|&t| (1e-3..=1.0).contains(&t)), "{seen:?}");
    }
}
