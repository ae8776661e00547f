//! `scoregen.oracle`: the exact Gaussian-mixture oracle (python/scoregen/oracle.py).

use crate::convert::{self, tensor, tensor_data};
use crate::sde::PySde;
use candle_core::{DType, Device, Tensor};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use scoregen::oracle::{GaussianMixture, OracleScore};
use scoregen::points::Points;
use scoregen::rng::{streams, Rng};
use scoregen::score::ScoreFn;

/// A Gaussian mixture p(x) = Σ_k w_k N(x; μ_k, Σ_k): exact samples, log-density
/// and score, also of the perturbed p_t = Σ_k w_k N(m(t)μ_k, m(t)²Σ_k + s(t)²I).
#[pyclass(frozen, module = "scoregen.oracle", name = "GaussianMixture")]
pub struct PyMixture {
    pub inner: GaussianMixture,
}

#[pymethods]
impl PyMixture {
    #[new]
    fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, covs: Vec<Vec<Vec<f64>>>) -> PyResult<Self> {
        if weights.len() != means.len() || weights.len() != covs.len() {
            return Err(PyValueError::new_err(format!(
                "weights, means and covs must have one entry per component (got {}, {} and {})",
                weights.len(),
                means.len(),
                covs.len()
            )));
        }
        let sum: f64 = weights.iter().sum();
        let weights = weights.iter().map(|w| w / sum).collect();
        GaussianMixture::new(weights, means, covs)
            .map(|inner| Self { inner })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// A named mixture of the project: "gmm8", "gmm25" or "unbalanced".
    #[staticmethod]
    fn named(name: &str) -> PyResult<Self> {
        scoregen::oracle::named_mixture(name).map(|inner| Self { inner }).ok_or_else(|| {
            let names: Vec<&str> = scoregen::oracle::NAMED_MIXTURES.iter().map(|m| m.name).collect();
            PyValueError::new_err(format!("unknown mixture `{name}`: expected {}", names.join(", ")))
        })
    }

    /// The dimension D.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The normalized weights w_k.
    #[getter]
    fn weights(&self) -> Vec<f64> {
        self.inner.weights().to_vec()
    }

    /// The means μ_k, [K, D].
    #[getter]
    fn means(&self, py: Python<'_>) -> PyResult<PyObject> {
        let k = self.inner.n_components();
        let data: Vec<f64> = (0..k).flat_map(|i| self.inner.mean(i).to_vec()).collect();
        convert::out(py, &[k, self.inner.dim()], data)
    }

    /// The covariances Σ_k, [K, D, D].
    #[getter]
    fn covs(&self, py: Python<'_>) -> PyResult<PyObject> {
        let (k, d) = (self.inner.n_components(), self.inner.dim());
        let data: Vec<f64> = (0..k)
            .flat_map(|i| (0..d * d).map(move |j| (i, j)))
            .map(|(i, j)| self.inner.cov(i)[(j / d, j % d)])
            .collect();
        convert::out(py, &[k, d, d], data)
    }

    /// n exact samples, [n, D] float64, from the seeded stream `seed`.
    #[pyo3(signature = (n, seed = 0))]
    fn sample(&self, py: Python<'_>, n: usize, seed: u64) -> PyResult<PyObject> {
        let p = self.inner.sample(n, &mut Rng::new(seed, streams::MIXTURE_SAMPLE));
        convert::out(py, &[p.n, p.d], p.data)
    }

    /// log p(x) per row of x [N, D]: log Σ_k w_k N(x; μ_k, Σ_k).
    fn log_prob(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let x = convert::points(x, "x", Some(self.inner.dim()))?;
        let lp = self.inner.log_prob(&Points::new(x.shape[0], x.shape[1], x.data));
        convert::to_numpy(py, &[lp.len()], lp, x.f32)
    }

    /// The score ∇ₓ log p(x) (sde None: t is ignored), or, with an SDE, the
    /// score of the perturbed density ∇ₓ log p_t(x) at time t (a float or one
    /// per row): Σ_k γ_k(x) C_k⁻¹(m μ_k − x), C_k = m²Σ_k + s²I,
    /// γ_k the responsibilities under p_t.
    #[pyo3(signature = (x, t = None, sde = None))]
    fn score(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        t: Option<&Bound<'_, PyAny>>,
        sde: Option<PyRef<'_, PySde>>,
    ) -> PyResult<PyObject> {
        let x = convert::points(x, "x", Some(self.inner.dim()))?;
        let (n, d) = (x.shape[0], x.shape[1]);
        let out = match (sde, t) {
            (None, _) => self.inner.score(&Points::new(n, d, x.data.clone())).data,
            (Some(_), None) => return Err(PyValueError::new_err("score: an sde needs a time t")),
            (Some(sde), Some(t)) => {
                let times = convert::times(t, n)?;
                if let Some(bad) = times.iter().find(|&&v| !(0.0..=sde.inner.t_max()).contains(&v)) {
                    return Err(PyValueError::new_err(format!("t: times must lie in [0, 1] (got {bad})")));
                }
                let oracle = OracleScore::new(self.inner.clone(), sde.inner.clone());
                let xt = tensor(&x, DType::F64)?;
                let tt = Tensor::from_vec(times, n, &Device::Cpu).map_err(convert::candle_error)?;
                tensor_data(&oracle.score(&xt, &tt).map_err(convert::candle_error)?)?
            }
        };
        convert::to_numpy(py, &[n, d], out, x.f32)
    }

    fn __repr__(&self) -> String {
        format!("GaussianMixture({} components in {} dimensions)", self.inner.n_components(), self.inner.dim())
    }
}
