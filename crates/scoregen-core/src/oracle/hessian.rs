//! Second derivatives of a Gaussian mixture's log-density in closed form:
//! the Laplacian (the divergence of the score, for exact likelihoods) and
//! Hessian-vector products (for Hutchinson's trace estimator).
//!
//! With r_k(x) = p(k | x) and g_k = −Σ_k⁻¹(x − μ_k), the score is s = Σ_k r_k g_k and
//! ∇ₓ² log p = Σ_k r_k (g_k g_kᵀ − Σ_k⁻¹) − s sᵀ
//! (differentiate s = ∇p/p: ∇²p/p − s sᵀ, with ∇²N_k/N_k = g_k g_kᵀ − Σ_k⁻¹).

use super::GaussianMixture;
use crate::oracle::OracleScore;
use crate::points::Points;
use crate::sde;
use candle_core::{Result, Tensor};

impl GaussianMixture {
    /// Per-point g_k = −Σ_k⁻¹(x − μ_k) for every component, responsibilities and score.
    pub(super) fn parts(&self, row: &[f64], r: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>) {
        let d = self.dim();
        let mut s = vec![0.0; d];
        let g: Vec<Vec<f64>> = (0..self.n_components())
            .map(|k| {
                let (p, mu) = (self.precision(k), self.mean(k));
                let gk: Vec<f64> = (0..d).map(|i| -(0..d).map(|j| p[(i, j)] * (row[j] - mu[j])).sum::<f64>()).collect();
                for i in 0..d {
                    s[i] += r[k] * gk[i];
                }
                gk
            })
            .collect();
        (g, s)
    }

    /// Δₓ log p(x) = Tr ∇ₓ² log p = Σ_k r_k (‖g_k‖² − Tr Σ_k⁻¹) − ‖s‖², for each point.
    pub fn score_divergence(&self, x: &Points) -> Vec<f64> {
        let kk = self.n_components();
        let resp = self.responsibilities(x);
        x.rows()
            .enumerate()
            .map(|(i, row)| {
                let r = &resp[i * kk..(i + 1) * kk];
                let (g, s) = self.parts(row, r);
                let mut lap = 0.0;
                for k in 0..kk {
                    let tr = self.precision(k).trace();
                    lap += r[k] * (g[k].iter().map(|v| v * v).sum::<f64>() - tr);
                }
                lap - s.iter().map(|v| v * v).sum::<f64>()
            })
            .collect()
    }

    /// ∇ₓ² log p(x) · v = Σ_k r_k (g_k (g_k·v) − Σ_k⁻¹ v) − s (s·v), for each point and its v.
    pub fn hessian_vector(&self, x: &Points, v: &Points) -> Points {
        let (kk, d) = (self.n_components(), self.dim());
        let resp = self.responsibilities(x);
        let mut out = Vec::with_capacity(x.n * d);
        for (i, row) in x.rows().enumerate() {
            let r = &resp[i * kk..(i + 1) * kk];
            let vi = v.row(i);
            let (g, s) = self.parts(row, r);
            let dot = |a: &[f64]| a.iter().zip(vi).map(|(a, b)| a * b).sum::<f64>();
            let sv = dot(&s);
            let mut hv = vec![0.0; d];
            for k in 0..kk {
                let gv = dot(&g[k]);
                let p = self.precision(k);
                for a in 0..d {
                    let pv: f64 = (0..d).map(|b| p[(a, b)] * vi[b]).sum();
                    hv[a] += r[k] * (g[k][a] * gv - pv);
                }
            }
            for a in 0..d {
                out.push(hv[a] - s[a] * sv);
            }
        }
        Points::new(x.n, d, out)
    }
}

impl OracleScore {
    /// Applies `f(p_t, block)` to each run of equal times in the batch and
    /// concatenates the results (batches almost always share one t).
    pub(super) fn by_time(
        &self,
        x: &Tensor,
        t: &Tensor,
        mut f: impl FnMut(&GaussianMixture, &Points) -> Vec<f64>,
    ) -> Result<(usize, Vec<f64>)> {
        let pts = Points::from_tensor(x)?;
        let ts = sde::times(t)?;
        let mut out = Vec::with_capacity(pts.data.len());
        let mut start = 0;
        while start < pts.n {
            let mut end = start + 1;
            while end < pts.n && ts[end] == ts[start] {
                end += 1;
            }
            let block = Points::new(end - start, pts.d, pts.data[start * pts.d..end * pts.d].to_vec());
            out.extend(f(&self.at(ts[start]), &block));
            start = end;
        }
        Ok((pts.n, out))
    }
}

#[cfg(test)]
mod tests {
    use crate::oracle::named_mixture;
    use crate::points::Points;
    use crate::rng::Rng;
    use crate::sde::VpSde;

    /// The closed-form Laplacian and Hessian-vector product match central
    /// differences of the exact score (h = 1e-5: error O(h²)·|∂³s| ≪ 1e-5).
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn laplacian_and_hvp_match_finite_differences_of_score() {
        let mut rng = Rng::new(9, 0);
        for name in ["gmm8", "unbalanced"] {
            let base = named_mixture(name).unwrap();
            for mix in [base.clone(), base.perturbed(&VpSde::default(), 0.2)] {
                let x = mix.sample(15, &mut rng);
                let v = Points::new(15, 2, (0..30).map(|_| rng.normal()).collect());
                let lap = mix.score_divergence(&x);
                let hv = mix.hessian_vector(&x, &v);
                let h = 1e-5;
                for i in 0..x.n {
                    let shifted = |dir: &[f64], sign: f64| {
                        let p: Vec<f64> = x.row(i).iter().zip(dir).map(|(a, b)| a + sign * h * b).collect();
                        mix.score(&Points::new(1, 2, p)).data
                    };
                    let mut fd_lap = 0.0;
                    for j in 0..2 {
                        let e: Vec<f64> = (0..2).map(|k| if k == j { 1.0 } else { 0.0 }).collect();
                        fd_lap += (shifted(&e, 1.0)[j] - shifted(&e, -1.0)[j]) / (2.0 * h);
                    }
                    let scale = lap[i].abs().max(1.0);
                    assert!((fd_lap - lap[i]).abs() < 1e-5 * scale, "{name}: {fd_lap} vs {}", lap[i]);
                    let (sp, sm) = (shifted(v.row(i), 1.0), shifted(v.row(i), -1.0));
                    for a in 0..2 {
                        let fd = (sp[a] - sm[a]) / (2.0 * h);
                        let exact = hv.row(i)[a];
                        assert!((fd - exact).abs() < 1e-5 * exact.abs().max(1.0), "{name}: {fd} vs {exact}");
                    }
                }
            }
        }
    }
}
