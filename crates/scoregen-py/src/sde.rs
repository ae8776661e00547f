//! `scoregen.sde`: the forward SDEs VE, VP and sub-VP and the discrete DDPM chain (python/scoregen/sde.py).

use crate::convert::{self, positive};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use scoregen::sde::{self as sdes, Sde};
use std::sync::Arc;

/// A forward SDE dx = f(x, t) dt + g(t) dw with linear drift f = a(t)·x and
/// Gaussian perturbation kernel p_{0t}(x(t) | x(0)) = N(m(t)·x(0), s(t)²·I).
#[pyclass(subclass, frozen, module = "scoregen.sde", name = "Sde")]
pub struct PySde {
    pub inner: Arc<dyn Sde>,
}

#[pymethods]
impl PySde {
    /// "ve", "vp" or "subvp".
    #[getter]
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// Standard deviation s_T of the prior N(0, s_T²·I).
    #[getter]
    fn prior_std(&self) -> f64 {
        self.inner.prior_std()
    }

    /// The smallest time the samplers stop at.
    #[getter]
    fn sampling_eps(&self) -> f64 {
        self.inner.sampling_eps()
    }

    /// (m(t), s(t)) of the perturbation kernel N(m(t)·x(0), s(t)²·I): floats
    /// for a float t, arrays for an array of times.
    fn marginal(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<(PyObject, PyObject)> {
        self.per_time(py, t, |t| self.inner.marginal(t))
    }

    /// A discrete chain's times t_i of its timesteps i = 0, 1, … (float64), or
    /// None for a continuous SDE (what a `unet2d`'s timestep input is read from).
    #[getter]
    fn timestep_times(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        self.inner.timestep_times().map(|v| convert::out(py, &[v.len()], v)).transpose()
    }

    /// g(t), the diffusion coefficient.
    fn diffusion(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        Ok(self.per_time(py, t, |t| (self.inner.diffusion(t), 0.0))?.0)
    }

    /// f(x, t) = a(t)·x for x of shape [N, D] and t a float or shape [N].
    fn drift(&self, py: Python<'_>, x: &Bound<'_, PyAny>, t: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let x = convert::points(x, "x", None)?;
        let (n, d) = (x.shape[0], x.shape[1]);
        let t = convert::times(t, n)?;
        let out: Vec<f64> = (0..n * d).map(|i| self.inner.drift_coef(t[i / d]) * x.data[i]).collect();
        convert::to_numpy(py, &x.shape, out, x.f32)
    }

    fn __repr__(&self) -> String {
        match self.inner.name() {
            "ve" => {
                let (s0, s1) = (sdes::sigma_of(self.inner.as_ref(), 0.0), sdes::sigma_of(self.inner.as_ref(), 1.0));
                format!("VE(sigma_min={s0}, sigma_max={s1})")
            }
            name => format!("Sde({name})"),
        }
    }
}

impl PySde {
    fn per_time(
        &self,
        py: Python<'_>,
        t: &Bound<'_, PyAny>,
        f: impl Fn(f64) -> (f64, f64),
    ) -> PyResult<(PyObject, PyObject)> {
        let check = |t: f64| {
            if t.is_finite() && (0.0..=self.inner.t_max()).contains(&t) {
                Ok(t)
            } else {
                Err(PyValueError::new_err(format!("t: times must lie in [0, {}] (got {t})", self.inner.t_max())))
            }
        };
        if let Ok(v) = t.extract::<f64>() {
            let (a, b) = f(check(v)?);
            return Ok((a.into_pyobject(py)?.into_any().unbind(), b.into_pyobject(py)?.into_any().unbind()));
        }
        let a = convert::array(t, "t")?;
        let (mut xs, mut ys) = (Vec::with_capacity(a.data.len()), Vec::with_capacity(a.data.len()));
        for &v in &a.data {
            let (x, y) = f(check(v)?);
            xs.push(x);
            ys.push(y);
        }
        Ok((convert::to_numpy(py, &a.shape, xs, a.f32)?, convert::to_numpy(py, &a.shape, ys, a.f32)?))
    }
}

/// Variance exploding: σ(t) = σ_min·(σ_max/σ_min)^t, m(t) = 1, s(t) = σ(t)
/// (score_sde's VESDE; the prior is N(0, σ_max²·I)).
#[pyclass(extends = PySde, frozen, module = "scoregen.sde", name = "VE")]
pub struct Ve;

#[pymethods]
impl Ve {
    #[new]
    #[pyo3(signature = (sigma_min = 0.01, sigma_max = 10.0))]
    fn new(sigma_min: f64, sigma_max: f64) -> PyResult<(Self, PySde)> {
        positive("sigma_min", sigma_min)?;
        if !(sigma_max.is_finite() && sigma_max > sigma_min) {
            return Err(PyValueError::new_err(format!("sigma_max must be > sigma_min (got {sigma_max})")));
        }
        Ok((Ve, PySde { inner: Arc::new(sdes::VeSde::new(sigma_min, sigma_max)) }))
    }
}

fn betas(beta_min: f64, beta_max: f64) -> PyResult<()> {
    positive("beta_min", beta_min)?;
    if !(beta_max.is_finite() && beta_max > beta_min) {
        return Err(PyValueError::new_err(format!("beta_max must be > beta_min (got {beta_max})")));
    }
    Ok(())
}

/// Variance preserving: β(t) = β_min + t(β_max − β_min),
/// m(t) = exp(−½∫₀ᵗβ), s(t)² = 1 − m(t)² (DDPM's continuous limit).
#[pyclass(extends = PySde, frozen, module = "scoregen.sde", name = "VP")]
pub struct Vp;

#[pymethods]
impl Vp {
    #[new]
    #[pyo3(signature = (beta_min = 0.1, beta_max = 20.0))]
    fn new(beta_min: f64, beta_max: f64) -> PyResult<(Self, PySde)> {
        betas(beta_min, beta_max)?;
        Ok((Vp, PySde { inner: Arc::new(sdes::VpSde::new(beta_min, beta_max)) }))
    }
}

/// Sub-VP: VP's drift with g(t)² = β(t)(1 − exp(−2∫₀ᵗβ)), so s(t) = 1 − m(t)²
/// (Song et al. 2021, eq. 29).
#[pyclass(extends = PySde, frozen, module = "scoregen.sde", name = "SubVP")]
pub struct SubVp;

#[pymethods]
impl SubVp {
    #[new]
    #[pyo3(signature = (beta_min = 0.1, beta_max = 20.0))]
    fn new(beta_min: f64, beta_max: f64) -> PyResult<(Self, PySde)> {
        betas(beta_min, beta_max)?;
        Ok((SubVp, PySde { inner: Arc::new(sdes::SubVpSde::new(beta_min, beta_max)) }))
    }
}

/// The discrete DDPM chain (Ho et al. 2020): ᾱ_i = Π_{j≤i}(1 − β_j) over
/// `n` timesteps, β linear from 1e-4 to 0.02 (scaled by 1000/n) or the
/// cosine schedule; the SDE whose σ grids land on diffusers' timesteps.
#[pyclass(extends = PySde, frozen, module = "scoregen.sde", name = "DDPM")]
pub struct Ddpm;

#[pymethods]
impl Ddpm {
    #[new]
    #[pyo3(signature = (schedule = "linear", n = 1000))]
    fn new(schedule: &str, n: usize) -> PyResult<(Self, PySde)> {
        let schedule = match schedule {
            "linear" => sdes::BetaSchedule::Linear,
            "cosine" => sdes::BetaSchedule::Cosine,
            other => {
                return Err(PyValueError::new_err(format!("schedule: expected linear or cosine, found `{other}`")))
            }
        };
        if n < 2 {
            return Err(PyValueError::new_err(format!("n: the chain needs at least 2 timesteps (got {n})")));
        }
        Ok((Ddpm, PySde { inner: Arc::new(sdes::DiscreteVp::new(schedule, n)) }))
    }
}
