//! The Fréchet Inception Distance and the Inception Score on any features,
//! computed as the reference implementations compute them:
//!
//! - FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule
//!   converge to a local Nash equilibrium"): the Fréchet distance between the
//!   Gaussians N(μ₁, Σ₁), N(μ₂, Σ₂) fitted to two feature sets,
//!   d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{½},
//!   with Σ = the unbiased sample covariance (1/(n−1), `np.cov`), in f64, as
//!   pytorch-fid's `calculate_frechet_distance`;
//! - IS (Salimans et al. 2016, "Improved techniques for training GANs"):
//!   exp E_x KL(p(y|x) ‖ p(y)) on each of 10 consecutive splits, mean and
//!   standard deviation over the splits, as the original code
//!   (openai/improved-gan `inception_score`) and torch-fidelity compute it.
//!
//! The network that gives the features (pytorch-fid's Inception-v3) lives in
//! `scoregen_nets::nets::inception`; this module is the math only.

use crate::error::{Error, Result};
use crate::io::npz;
use crate::points::Points;
use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use std::path::Path;

/// The Gaussian fitted to a feature set: mean μ and covariance Σ (1/(n−1)),
/// what pytorch-fid saves with `--save-stats` (`mu`, `sigma`).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    pub mu: DVector<f64>,
    pub sigma: DMatrix<f64>,
}

impl GaussianStats {
    /// μ = the mean row, Σ = XᵀX/(n−1) with X the centered rows (`np.mean`,
    /// `np.cov(rowvar=False)`), in f64. XᵀX is one GEMM of candle's (the
    /// `gemm` crate, every core): 10,000 features of 2,048 are 4·10¹⁰
    /// multiply-adds, seconds, where nalgebra's single-threaded product takes a minute.
    pub fn of(features: &Points) -> Self {
        let (n, d) = (features.n, features.d);
        let mut mu = DVector::<f64>::zeros(d);
        for row in features.rows() {
            for (m, v) in mu.iter_mut().zip(row) {
                *m += v;
            }
        }
        mu /= n.max(1) as f64;
        let centered: Vec<f64> =
            features.rows().flat_map(|row| row.iter().zip(mu.iter()).map(|(v, m)| v - m)).collect();
        let gram = (|| -> candle_core::Result<Vec<f64>> {
            let x = candle_core::Tensor::from_vec(centered, (n, d), &candle_core::Device::Cpu)?;
            crate::host::vec1::<f64>(&x.t()?.matmul(&x)?.flatten_all()?)
        })()
        .expect("a CPU matmul of matching shapes");
        let sigma = DMatrix::from_row_slice(d, d, &gram) / (n.max(2) - 1) as f64;
        Self { mu, sigma }
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Reads pytorch-fid's statistics file (`--save-stats`): an `.npz` with
    /// `mu` [d] and `sigma` [d, d], float32 or float64, every value finite.
    /// Other members are ignored; a missing or mis-shaped one is named.
    pub fn read_npz(path: &Path) -> Result<Self> {
        let arrays = npz::read(path)?;
        let get = |name: &str| {
            arrays.get(name).ok_or_else(|| {
                let found: Vec<&str> = arrays.keys().map(String::as_str).collect();
                Error::data(
                    path,
                    format!("no array `{name}` (found {found:?}); expected pytorch-fid's `mu` and `sigma`"),
                )
            })
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let d = match mu.shape.as_slice() {
            [d] => *d,
            s => return Err(Error::data(path, format!("`mu` has shape {s:?}, expected [d]"))),
        };
        if sigma.shape != [d, d] {
            return Err(Error::data(
                path,
                format!("`sigma` has shape {:?}, expected [{d}, {d}] for `mu` of {d}", sigma.shape),
            ));
        }
        for (name, a) in [("mu", mu), ("sigma", sigma)] {
            if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::data(path, format!("`{name}` holds a non-finite value at flat index {i}")));
            }
        }
        Ok(Self { mu: DVector::from_column_slice(&mu.data), sigma: DMatrix::from_row_slice(d, d, &sigma.data) })
    }

    /// Writes `mu` and `sigma` (float64) as pytorch-fid's statistics file reads them (`np.load`).
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        let d = self.dim();
        let mu = npz::Array { shape: vec![d], data: self.mu.as_slice().to_vec() };
        let sigma = npz::Array { shape: vec![d, d], data: self.sigma.transpose().as_slice().to_vec() };
        npz::write(path, &[("mu", &mu), ("sigma", &sigma)])
    }
}

/// The ε of pytorch-fid's retry: when the square root is not finite, it is
/// taken again of (Σ₁ + εI)(Σ₂ + εI).
pub const SQRTM_EPS: f64 = 1e-6;

/// tr (Σ₁Σ₂)^{½} for symmetric positive semi-definite Σ₁, Σ₂: the sum of
/// √λᵢ over the eigenvalues λᵢ of Σ₁Σ₂.
///
/// Why not a general matrix square root (scipy's `sqrtm`, a Schur
/// decomposition of the non-symmetric Σ₁Σ₂, as pytorch-fid takes)? Only the
/// trace is needed, and Σ₁Σ₂ = B Bᵀ Σ₂ with B = V Λ^{½} (Σ₁ = V Λ Vᵀ) has the
/// eigenvalues of the symmetric PSD matrix Bᵀ Σ₂ B = Σ₁^{½} Σ₂ Σ₁^{½} (up to the
/// rotation V): two symmetric eigendecompositions, the second without
/// vectors, real by construction. The principal square root's trace is the
/// same number (its eigenvalues are the √λᵢ), so pytorch-fid's `.real` of a
/// complex result and its check of the imaginary part have nothing to do
/// here; round-off that makes an eigenvalue slightly negative (a singular
/// covariance: fewer samples than features) is clamped to 0, where scipy
/// returns a tiny imaginary part that pytorch-fid drops.
pub fn trace_sqrt_product(s1: &DMatrix<f64>, s2: &DMatrix<f64>) -> f64 {
    let e1 = s1.clone().symmetric_eigen();
    let root = e1.eigenvalues.map(|l| l.max(0.0).sqrt());
    let b = e1.eigenvectors * DMatrix::from_diagonal(&root);
    let mut middle = gemm(&b.transpose(), &gemm(s2, &b));
    // exactly symmetric, as the eigensolver assumes (it reads one triangle)
    middle = (&middle + middle.transpose()) * 0.5;
    middle.symmetric_eigenvalues().iter().map(|l| l.max(0.0).sqrt()).sum()
}

/// A·B by candle's multi-threaded GEMM (nalgebra's is single-threaded:
/// 2,048³ takes seconds). nalgebra stores columns first, so a matrix's slice
/// read row-major is its transpose, and (AB)ᵀ = BᵀAᵀ.
fn gemm(a: &DMatrix<f64>, b: &DMatrix<f64>) -> DMatrix<f64> {
    use candle_core::{Device, Tensor};
    let out = (|| -> candle_core::Result<Vec<f64>> {
        let at = Tensor::from_slice(a.as_slice(), (a.ncols(), a.nrows()), &Device::Cpu)?;
        let bt = Tensor::from_slice(b.as_slice(), (b.ncols(), b.nrows()), &Device::Cpu)?;
        crate::host::vec1::<f64>(&bt.matmul(&at)?.flatten_all()?)
    })()
    .expect("a CPU matmul of matching shapes");
    DMatrix::from_vec(a.nrows(), b.ncols(), out)
}

/// The Fréchet distance d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{½}
/// between two fitted Gaussians, as pytorch-fid's `calculate_frechet_distance`:
/// when the square root's trace is not finite it retries with ε = 10⁻⁶ added
/// to both diagonals (and, like pytorch-fid, keeps the traces of the
/// originals). The symmetric route is finite for any finite input short of
/// overflow, so the retry is pytorch-fid's guard rather than its common case:
/// where scipy's Schur route fails on a singular product and pytorch-fid
/// retries, its number is lower than this one by about 2ε·(the null space's
/// dimension), ≤ 4·10⁻³ at 2,048 features, 10⁻⁴ of a typical FID.
/// Errors name the mismatch (different dimensions, non-finite statistics).
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    let d = a.dim();
    if b.dim() != d || a.sigma.shape() != (d, d) || b.sigma.shape() != (d, d) {
        return Err(Error::Invalid(format!(
            "the two statistics differ in dimension: μ {} with Σ {:?} against μ {} with Σ {:?}",
            d,
            a.sigma.shape(),
            b.dim(),
            b.sigma.shape()
        )));
    }
    let finite = |s: &GaussianStats| s.mu.iter().chain(s.sigma.iter()).all(|v| v.is_finite());
    if !finite(a) || !finite(b) {
        return Err(Error::Invalid("the statistics hold a non-finite value".into()));
    }
    let mut tr_covmean = trace_sqrt_product(&a.sigma, &b.sigma);
    if !tr_covmean.is_finite() {
        tracing::warn!("FID: the matrix square root is not finite; adding {SQRTM_EPS} to the covariances' diagonals");
        let offset = DMatrix::<f64>::identity(d, d) * SQRTM_EPS;
        tr_covmean = trace_sqrt_product(&(&a.sigma + &offset), &(&b.sigma + &offset));
        if !tr_covmean.is_finite() {
            return Err(Error::Invalid("FID: the matrix square root is not finite, with the ε offset too".into()));
        }
    }
    Ok((&a.mu - &b.mu).norm_squared() + a.sigma.trace() + b.sigma.trace() - 2.0 * tr_covmean)
}

/// The number of splits of the Inception Score in the papers.
pub const IS_SPLITS: usize = 10;

/// The Inception Score of a sample set: its mean and standard deviation over the splits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InceptionScore {
    pub mean: f64,
    pub std: f64,
    pub splits: usize,
}

/// IS = exp(E_x KL(p(y|x) ‖ p(y))) with p(y|x) = softmax of the logits
/// (rows of `logits`, computed in f64 with a log-softmax) and p(y) the mean of
/// p(y|x) over the split; the n rows are cut in order into `splits` parts,
/// part i being rows ⌊i·n/s⌋..⌊(i+1)·n/s⌋ (no shuffle: the original code's
/// parts; torch-fidelity shuffles with a fixed seed first), and the result is
/// the mean and the population standard deviation (`np.std`) of the parts' scores.
pub fn inception_score(logits: &Points, splits: usize) -> Result<InceptionScore> {
    let (n, k) = (logits.n, logits.d);
    if splits == 0 || n < splits {
        return Err(Error::Invalid(format!(
            "the Inception Score over {splits} splits needs at least {splits} samples (got {n})"
        )));
    }
    if let Some(v) = logits.data.iter().find(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("a logit is not finite ({v})")));
    }
    let log_p: Vec<Vec<f64>> = logits
        .rows()
        .map(|row| {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            row.iter().map(|v| v - lse).collect()
        })
        .collect();
    let scores: Vec<f64> = (0..splits)
        .map(|i| {
            let part = &log_p[i * n / splits..(i + 1) * n / splits];
            let mut q = vec![0.0; k];
            for row in part {
                for (qj, lp) in q.iter_mut().zip(row) {
                    *qj += lp.exp() / part.len() as f64;
                }
            }
            let log_q: Vec<f64> = q.iter().map(|v| v.ln()).collect();
            let kl: f64 = part
                .iter()
                .map(|row| row.iter().zip(&log_q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum::<f64>())
                .sum::<f64>()
                / part.len() as f64;
            kl.exp()
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let std = (scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / splits as f64).sqrt();
    Ok(InceptionScore { mean, std, splits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn sym(d: usize, v: &[f64]) -> DMatrix<f64> {
        DMatrix::from_row_slice(d, d, v)
    }

    /// Non-commuting 2×2 covariances: Σ₁Σ₂ has eigenvalues λ₁, λ₂ with
    /// λ₁ + λ₂ = tr Σ₁Σ₂ and λ₁λ₂ = det Σ₁ det Σ₂, so
    /// tr (Σ₁Σ₂)^{½} = √λ₁ + √λ₂ = √(tr Σ₁Σ₂ + 2 √(det Σ₁ det Σ₂)) exactly.
    #[test]
    fn trace_sqrt_matches_the_2x2_closed_form() {
        let s1 = sym(2, &[2.0, 0.7, 0.7, 1.0]);
        let s2 = sym(2, &[0.5, -0.3, -0.3, 3.0]);
        assert!((&s1 * &s2 - &s2 * &s1).norm() > 1.0, "the two must not commute");
        let exact = ((&s1 * &s2).trace() + 2.0 * (s1.determinant() * s2.determinant()).sqrt()).sqrt();
        let got = trace_sqrt_product(&s1, &s2);
        assert!((got - exact).abs() < 1e-12, "{got} vs {exact}");
        // and a singular Σ₁ (rank 1, u uᵀ): tr (u uᵀ Σ₂)^{½} = √(uᵀ Σ₂ u)
        let u = DVector::from_vec(vec![0.6, -1.2]);
        let rank1 = &u * u.transpose();
        let exact1 = (u.transpose() * &s2 * &u)[(0, 0)].sqrt();
        assert!((trace_sqrt_product(&rank1, &s2) - exact1).abs() < 1e-12);
    }

    /// Commuting (diagonal, then jointly rotated) covariances: the distance is
    /// Σ (μ₁ᵢ − μ₂ᵢ)² + Σ (σ₁ᵢ − σ₂ᵢ)² (Dowson & Landau 1982), in 64 dimensions,
    /// where the rotation makes every matrix dense.
    #[test]
    fn frechet_of_commuting_gaussians_is_the_closed_form() {
        let d = 64;
        let mut rng = Rng::new(11, 0);
        let sd1: Vec<f64> = (0..d).map(|_| 0.1 + rng.uniform() * 2.0).collect();
        let sd2: Vec<f64> = (0..d).map(|i| if i < 5 { 0.0 } else { 0.1 + rng.uniform() * 2.0 }).collect();
        let mu1 = DVector::from_fn(d, |_, _| rng.normal());
        let mu2 = DVector::from_fn(d, |_, _| rng.normal());
        // a random rotation: Q of the QR decomposition of a Gaussian matrix
        let q = DMatrix::from_fn(d, d, |_, _| rng.normal()).qr().q();
        let cov = |sd: &[f64]| {
            &q * DMatrix::from_diagonal(&DVector::from_iterator(d, sd.iter().map(|s| s * s))) * q.transpose()
        };
        let a = GaussianStats { mu: mu1.clone(), sigma: cov(&sd1) };
        let b = GaussianStats { mu: mu2.clone(), sigma: cov(&sd2) };
        let exact = (&mu1 - &mu2).norm_squared() + sd1.iter().zip(&sd2).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
        let got = frechet_distance(&a, &b).unwrap();
        // round-off of the dense products: ~d·ε·‖Σ‖ ≈ 1e-13, a singular Σ₂ included (5 zero variances)
        assert!((got - exact).abs() < 1e-9 * exact, "{got} vs {exact}");
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
        let e =
            frechet_distance(&a, &GaussianStats { mu: DVector::zeros(3), sigma: DMatrix::zeros(3, 3) }).unwrap_err();
        assert!(e.to_string().contains("dimension"), "{e}");
    }

    /// Fewer samples than features (pytorch-fid's usual small-batch case): the
    /// covariances are singular, and the trace term equals the one computed
    /// in the samples' own n-dimensional span, Σ √eig(A₁ᵀ Σ₂ A₁) with
    /// Σ₁ = A₁A₁ᵀ, A₁ the centered rows / √(n−1).
    #[test]
    fn singular_covariances_give_the_low_rank_trace() {
        let (n, d) = (6, 40);
        let mut rng = Rng::new(4, 0);
        let draw = |rng: &mut Rng| Points::new(n, d, (0..n * d).map(|_| rng.normal()).collect());
        let (x, y) = (draw(&mut rng), draw(&mut rng));
        let (a, b) = (GaussianStats::of(&x), GaussianStats::of(&y));
        let xm = DMatrix::from_row_slice(n, d, &x.data);
        let a1 = DMatrix::from_fn(d, n, |j, i| (xm[(i, j)] - a.mu[j]) / ((n - 1) as f64).sqrt());
        let small = a1.tr_mul(&(&b.sigma * &a1));
        let exact: f64 = small.symmetric_eigen().eigenvalues.iter().map(|l| l.max(0.0).sqrt()).sum();
        let got = trace_sqrt_product(&a.sigma, &b.sigma);
        assert!((got - exact).abs() < 1e-10 * exact, "{got} vs {exact}");
    }

    /// Statistics survive an `.npz` round trip exactly (a non-symmetric Σ
    /// shows the row order), and a wrong file names the array.
    #[test]
    fn stats_round_trip_through_npz() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let s = GaussianStats { mu: DVector::from_vec(vec![1.0, -0.5]), sigma: sym(2, &[2.0, 0.25, 0.5, 3.0]) };
        s.write_npz(&p).unwrap();
        assert_eq!(GaussianStats::read_npz(&p).unwrap(), s);
        npz::write(&p, &[("mu", &npz::Array { shape: vec![2], data: vec![0.0; 2] })]).unwrap();
        let e = GaussianStats::read_npz(&p).unwrap_err().to_string();
        assert!(e.contains("s.npz") && e.contains("no array `sigma`"), "{e}");
        let sq = npz::Array { shape: vec![3, 3], data: vec![0.0; 9] };
        npz::write(&p, &[("mu", &npz::Array { shape: vec![2], data: vec![0.0; 2] }), ("sigma", &sq)]).unwrap();
        let e = GaussianStats::read_npz(&p).unwrap_err().to_string();
        assert!(e.contains("`sigma` has shape [3, 3], expected [2, 2]"), "{e}");
    }

    /// μ and Σ are `np.mean` and `np.cov(rowvar=False)` (1/(n−1)), worked by hand.
    #[test]
    fn stats_are_the_mean_and_unbiased_covariance() {
        let s = GaussianStats::of(&Points::new(3, 2, vec![1.0, 2.0, 3.0, 2.0, 5.0, 8.0]));
        assert_eq!(s.mu.as_slice(), &[3.0, 4.0]);
        assert_eq!(s.sigma.as_slice(), &[4.0, 6.0, 6.0, 12.0]);
    }

    /// Known answers: identical rows score 1 (p(y|x) = p(y)); one-hot-like
    /// rows spread evenly over K classes score K (KL = ln K); with 2 splits
    /// of different class counts the mean and population std of the splits.
    #[test]
    fn inception_score_known_answers() {
        let flat = Points::new(20, 5, vec![0.3; 100]);
        let s = inception_score(&flat, 10).unwrap();
        assert!((s.mean - 1.0).abs() < 1e-12 && s.std < 1e-12, "{s:?}");
        // logits 0 except 60 at the row's class: p(y|x) is one-hot to 1e-26
        let onehot = |n: usize, k: usize, classes: usize| {
            Points::new(n, k, (0..n * k).map(|i| if i % k == (i / k) % classes { 60.0 } else { 0.0 }).collect())
        };
        let s = inception_score(&onehot(40, 8, 8), 10).unwrap();
        // 4 rows per split cover 4 of the 8 classes evenly: exp(ln 4) = 4
        assert!((s.mean - 4.0).abs() < 1e-9 && s.std < 1e-9, "{s:?}");
        let s = inception_score(&onehot(40, 8, 8), 1).unwrap();
        assert!((s.mean - 8.0).abs() < 1e-9, "{s:?}");
        // 2 splits: rows 0..3 (classes 0,1,2) and 3..6 (classes 0,1,2 again for 3 classes)… use 4 classes
        let mut two = onehot(6, 4, 4).data; // classes 0 1 2 3 0 1
        two[4 * 4..].copy_from_slice(&[60.0, 0.0, 0.0, 0.0, 60.0, 0.0, 0.0, 0.0]); // rows 4, 5 → class 0
        let s = inception_score(&Points::new(6, 4, two), 2).unwrap();
        // split 1: classes {0,1,2}: 3; split 2: classes {3,0,0}: exp(H(1/3, 2/3))
        let h = -(1.0f64 / 3.0 * (1.0f64 / 3.0).ln() + 2.0 / 3.0 * (2.0f64 / 3.0).ln());
        let (m, sd) = ((3.0 + h.exp()) / 2.0, (3.0 - h.exp()).abs() / 2.0);
        assert!((s.mean - m).abs() < 1e-9 && (s.std - sd).abs() < 1e-9, "{s:?} vs {m} ± {sd}");
        assert!(inception_score(&flat, 21).unwrap_err().to_string().contains("at least 21"));
    }
}
