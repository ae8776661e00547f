//! The divergence Tr ∇ₓ s(x, t) of a score, per example: exactly (closed
//! form when the score has one, else D autodiff passes) or by Hutchinson's
//! estimator E_v[vᵀ ∇ₓs v] with Rademacher or Gaussian probes.

use crate::autodiff;
use crate::rng::Rng;
use crate::score::ScoreFn;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// How the divergence of the drift is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceEstimator {
    /// Tr ∇ₓs exactly: the score's closed form, or D vector-Jacobian products.
    Exact,
    /// (1/K) Σ_k v_kᵀ ∇ₓs v_k with K fixed probes (Hutchinson 1989): unbiased,
    /// one product per probe instead of D.
    Hutchinson { probes: usize, noise: ProbeNoise },
}

/// The distribution of Hutchinson probes (both have E[v vᵀ] = I).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ProbeNoise {
    /// v_i = ±1 with probability ½ (the lower-variance choice).
    Rademacher,
    /// v ~ N(0, I).
    Gaussian,
}

/// Largest dimension for which the exact trace is the default.
pub const EXACT_TRACE_MAX_DIM: usize = 16;

impl TraceEstimator {
    /// Exact for D ≤ 16, else one Rademacher probe (score_sde's default).
    pub fn default_for(dim: usize) -> Self {
        if dim <= EXACT_TRACE_MAX_DIM {
            TraceEstimator::Exact
        } else {
            TraceEstimator::Hutchinson { probes: 1, noise: ProbeNoise::Rademacher }
        }
    }
}

/// K probes of the shape of x, drawn once per likelihood evaluation (they
/// must stay fixed along the ODE so the integrand is a smooth function of t).
pub fn draw_probes(x: &Tensor, k: usize, noise: ProbeNoise, rng: &mut Rng) -> Result<Vec<Tensor>> {
    (0..k.max(1))
        .map(|_| match noise {
            ProbeNoise::Gaussian => rng.randn(x.shape(), x.dtype(), x.device()),
            ProbeNoise::Rademacher => {
                let u = rng.rand_uniform(x.shape(), 0.0, 1.0, DType::F64, x.device())?;
                u.ge(0.5)?.to_dtype(DType::F64)?.affine(2.0, -1.0)?.to_dtype(x.dtype())
            }
        })
        .collect()
}

/// A score evaluated at x, with what is needed to differentiate it.
pub struct Evaluated {
    /// s(x, t), shape of x.
    pub s: Tensor,
    /// The tracked input when the divergence needs autodiff.
    input: Option<Var>,
}

/// s(x, t) and Tr ∇ₓs (Exact) or the probe average of vᵀ∇ₓs v (Hutchinson), per example [N].
pub fn score_and_divergence(
    score: &dyn ScoreFn,
    x: &Tensor,
    t: &Tensor,
    estimator: TraceEstimator,
    probes: &[Tensor],
) -> Result<(Tensor, Tensor)> {
    // closed forms first: no graph needed
    let closed = match estimator {
        TraceEstimator::Exact => {
            if let Some(both) = score.score_with_divergence(x, t)? {
                return Ok(both);
            }
            None
        }
        TraceEstimator::Hutchinson { .. } => {
            let mut acc: Option<Tensor> = None;
            for v in probes {
                match score.jacobian_vector(x, t, v)? {
                    None => {
                        acc = None;
                        break;
                    }
                    Some(jv) => {
                        let q = (jv * v)?.flatten_from(1)?.sum(1)?;
                        acc = Some(match acc {
                            None => q,
                            Some(a) => (a + q)?,
                        });
                    }
                }
            }
            acc.map(|a| a.affine(1.0 / probes.len() as f64, 0.0)).transpose()?
        }
    };
    if let Some(div) = closed {
        return Ok((score.score(x, t)?, div));
    }
    // only ∇ₓ is needed: the network may skip its parameter gradients
    autodiff::input_gradients_only(|| {
        let ev = evaluate_tracked(score, x, t)?;
        let div = match estimator {
            TraceEstimator::Exact => exact_trace_autodiff(&ev)?,
            TraceEstimator::Hutchinson { .. } => hutchinson_autodiff(&ev, probes)?,
        };
        Ok((ev.s.detach(), div))
    })
}

/// s(x, t) with x as a tracked variable.
pub fn evaluate_tracked(score: &dyn ScoreFn, x: &Tensor, t: &Tensor) -> Result<Evaluated> {
    let input = Var::from_tensor(&x.detach())?;
    let s = score.score(input.as_tensor(), t)?;
    Ok(Evaluated { s, input: Some(input) })
}

/// ∇ₓ Σ y for the tracked input; an error when y does not depend on x (a
/// score computed outside the autodiff graph with no closed-form divergence).
fn vjp(y: &Tensor, input: &Var) -> Result<Tensor> {
    let grads = autodiff::backward_first_order(&y.sum_all()?)?;
    grads.get(input.as_tensor()).cloned().ok_or_else(|| {
        candle_core::Error::Msg(
            "the score is not differentiable with respect to x and has no closed-form divergence".into(),
        )
    })
}

/// Tr ∇ₓs = Σ_i ∂s_i/∂x_i by D vector-Jacobian products with the basis
/// vectors (examples are independent, so one pass serves the whole batch).
pub fn exact_trace_autodiff(ev: &Evaluated) -> Result<Tensor> {
    let input = ev.input.as_ref().expect("tracked");
    let s = ev.s.flatten_from(1)?;
    let d = s.dim(1)?;
    let mut cols = Vec::with_capacity(d);
    for i in 0..d {
        let g = vjp(&s.narrow(1, i, 1)?, input)?.flatten_from(1)?;
        cols.push(g.narrow(1, i, 1)?.detach());
    }
    Tensor::cat(&cols, 1)?.sum(1)
}

/// (1/K) Σ_k v_kᵀ (∇ₓs)ᵀ v_k by one vector-Jacobian product per probe
/// (vᵀJᵀv = vᵀJv, so the estimator is the same as with Jacobian-vector products).
pub fn hutchinson_autodiff(ev: &Evaluated, probes: &[Tensor]) -> Result<Tensor> {
    let input = ev.input.as_ref().expect("tracked");
    let mut acc: Option<Tensor> = None;
    for v in probes {
        let jtv = vjp(&(&ev.s * v)?, input)?;
        let q = (jtv * v)?.flatten_from(1)?.sum(1)?.detach();
        acc = Some(match acc {
            None => q,
            Some(a) => (a + q)?,
        });
    }
    acc.expect("at least one probe").affine(1.0 / probes.len() as f64, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// s(x) = tanh(x W): a nonlinear, differentiable score with a non-symmetric Jacobian.
    struct TanhScore(Tensor);
    impl ScoreFn for TanhScore {
        fn score(&self, x: &Tensor, _t: &Tensor) -> Result<Tensor> {
            x.matmul(&self.0)?.tanh()
        }
    }

    fn setup() -> (TanhScore, Tensor, Tensor) {
        let w = Tensor::new(&[[0.7f64, -1.2, 0.3], [0.4, 0.9, -0.8], [-0.5, 0.2, 1.1]], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[0.3f64, -0.4, 0.8], [1.2, 0.1, -0.6]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[0.5f64, 0.5], &Device::Cpu).unwrap();
        (TanhScore(w), x, t)
    }

    /// The exact trace by D autodiff passes equals the central-difference
    /// trace of the Jacobian (h = 1e-6, error O(h²) ≪ 1e-7).
    #[test]
    fn exact_trace_matches_finite_differences() {
        crate::init();
        let (s, x, t) = setup();
        let (_, div) = score_and_divergence(&s, &x, &t, TraceEstimator::Exact, &[]).unwrap();
        let div = div.to_vec1::<f64>().unwrap();
        let xv = x.to_vec2::<f64>().unwrap();
        let h = 1e-6;
        for (n, row) in xv.iter().enumerate() {
            let mut tr = 0.0;
            for i in 0..3 {
                let at = |d: f64| {
                    let mut r = row.clone();
                    r[i] += d;
                    let xt = Tensor::from_vec(r, (1, 3), &Device::Cpu).unwrap();
                    s.score(&xt, &t.narrow(0, 0, 1).unwrap()).unwrap().to_vec2::<f64>().unwrap()[0][i]
                };
                tr += (at(h) - at(-h)) / (2.0 * h);
            }
            assert!((tr - div[n]).abs() < 1e-7, "{tr} vs {}", div[n]);
        }
    }

    /// Averaged over all 2³ Rademacher sign patterns, vᵀJv is exactly Tr J
    /// (the off-diagonal terms cancel): the autodiff Hutchinson path computes vᵀJv.
    #[test]
    fn hutchinson_over_all_sign_patterns_is_exact() {
        crate::init();
        let (s, x, t) = setup();
        let probes: Vec<Tensor> = (0..8)
            .map(|m| {
                let v: Vec<f64> = (0..3).map(|i| if (m >> i) & 1 == 1 { 1.0 } else { -1.0 }).collect();
                Tensor::from_vec([v.clone(), v].concat(), (2, 3), &Device::Cpu).unwrap()
            })
            .collect();
        let est = TraceEstimator::Hutchinson { probes: 8, noise: ProbeNoise::Rademacher };
        let (_, h) = score_and_divergence(&s, &x, &t, est, &probes).unwrap();
        let (_, e) = score_and_divergence(&s, &x, &t, TraceEstimator::Exact, &[]).unwrap();
        let (h, e) = (h.to_vec1::<f64>().unwrap(), e.to_vec1::<f64>().unwrap());
        for (a, b) in h.iter().zip(&e) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // a single probe is not exact for this non-diagonal Jacobian
        let (_, one) = score_and_divergence(&s, &x, &t, est, &probes[..1]).unwrap();
        assert!((one.to_vec1::<f64>().unwrap()[0] - e[0]).abs() > 1e-3);
    }

    #[test]
    fn rademacher_probes_are_signs() {
        let x = Tensor::zeros((50, 4), DType::F64, &Device::Cpu).unwrap();
        let p = draw_probes(&x, 2, ProbeNoise::Rademacher, &mut Rng::new(1, 0)).unwrap();
        let v = p[0].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(v.iter().all(|&a| a == 1.0 || a == -1.0));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.25, "{mean}");
    }
}
