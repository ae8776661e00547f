//! Bring your own model: any Python callable `score_fn(x, t) -> s` as a
//! [`ScoreFn`], so every sampler and the likelihood run on it unchanged.
//!
//! One call per score evaluation with the whole batch: x goes out as a new
//! NumPy array of shape [N, …] (the sampler's dtype), t as shape [N]; the
//! answer is read back (float32 or float64, any strides) into a tensor. That
//! is one copy each way. The sampler runs with the GIL released; each call
//! takes it back for the time of the call only.
//!
//! The likelihood needs Tr ∇ₓ s, which autodiff cannot see through Python.
//! A `divergence(x, t) -> [N]` callable gives it exactly; without one it is
//! the central difference Σᵢ (sᵢ(x + h eᵢ) − sᵢ(x − h eᵢ))/(2h) (2D calls,
//! error O(h²)), and Hutchinson's vᵀ∇ₓs v uses (s(x + hv) − s(x − hv))/(2h).

use crate::convert::{self, shape_str};
use candle_core::{DType, Result, Tensor};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use scoregen::score::ScoreFn;
use std::cell::{Cell, RefCell};

/// What `score_fn` returned, read once.
enum Answer {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

pub struct PyScore {
    pub f: Py<PyAny>,
    pub divergence: Option<Py<PyAny>>,
    /// The finite-difference step h of the divergence and Jacobian-vector products.
    pub h: f64,
    /// The first Python exception a call raised (re-raised when the sampler returns).
    pub error: RefCell<Option<PyErr>>,
    pub calls: Cell<usize>,
}

impl PyScore {
    pub fn new(f: Py<PyAny>, divergence: Option<Py<PyAny>>, h: f64) -> Self {
        Self { f, divergence, h, error: RefCell::new(None), calls: Cell::new(0) }
    }

    /// The exception a call raised, else `e` as a Python exception.
    pub fn explain(&self, e: scoregen::Error) -> PyErr {
        self.error.borrow_mut().take().unwrap_or_else(|| convert::error(e))
    }

    /// Keeps the Python exception and stops the sampler with a short message.
    fn fail(&self, e: PyErr) -> candle_core::Error {
        let msg = format!("score_fn raised: {e}");
        self.error.borrow_mut().get_or_insert(e);
        candle_core::Error::Msg(msg)
    }

    /// Calls `g(x, t)` and reads back an array of `want` shape.
    fn call(&self, g: &Py<PyAny>, what: &str, x: &Tensor, t: &Tensor, want: &[usize]) -> Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        let dims = x.dims().to_vec();
        let f32 = x.dtype() == DType::F32;
        let r: PyResult<Answer> = Python::with_gil(|py| {
            py.check_signals()?;
            let (xa, ta) = if f32 {
                let xv = x.flatten_all().and_then(|v| v.to_vec1::<f32>()).map_err(convert::candle_error)?;
                let tv = t.to_dtype(DType::F32).and_then(|v| v.to_vec1::<f32>()).map_err(convert::candle_error)?;
                (convert::out(py, &dims, xv)?, convert::out(py, &[tv.len()], tv)?)
            } else {
                let xv = x.flatten_all().and_then(|v| v.to_vec1::<f64>()).map_err(convert::candle_error)?;
                let tv = t.to_dtype(DType::F64).and_then(|v| v.to_vec1::<f64>()).map_err(convert::candle_error)?;
                (convert::out(py, &dims, xv)?, convert::out(py, &[tv.len()], tv)?)
            };
            let res = g.bind(py).call1((xa, ta))?;
            let arr = res.downcast::<PyUntypedArray>().map_err(|_| {
                PyTypeError::new_err(format!("{what} must return a numpy array, returned {}", res.get_type()))
            })?;
            if arr.shape() != want {
                return Err(PyValueError::new_err(format!(
                    "{what} returned shape {}, expected {}",
                    shape_str(arr.shape()),
                    shape_str(want)
                )));
            }
            // The sampler's own dtype, C-contiguous: one copy straight into the tensor's buffer.
            if f32 && arr.is_c_contiguous() {
                if let Ok(a) = res.downcast::<PyArrayDyn<f32>>() {
                    return Ok(Answer::F32(a.readonly().as_slice()?.to_vec()));
                }
            }
            Ok(Answer::F64(convert::array(&res, what)?.data))
        });
        match r.map_err(|e| self.fail(e))? {
            Answer::F32(v) => Tensor::from_vec(v, want, x.device()),
            Answer::F64(v) => Tensor::from_vec(v, want, x.device())?.to_dtype(x.dtype()),
        }
    }

    fn score_at_shift(&self, x: &Tensor, t: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        self.score(&(x + v.affine(scale, 0.0)?)?, t)
    }
}

impl ScoreFn for PyScore {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.call(&self.f, "score_fn", x, t, x.dims())
    }

    fn divergence(&self, x: &Tensor, t: &Tensor) -> Result<Option<Tensor>> {
        if let Some(div) = &self.divergence {
            return self.call(div, "divergence", x, t, &[x.dim(0)?]).map(Some);
        }
        let n = x.dim(0)?;
        let flat = x.flatten_from(1)?;
        let d = flat.dim(1)?;
        let mut total = Tensor::zeros(n, x.dtype(), x.device())?;
        for i in 0..d {
            let mut e = vec![0.0f64; d];
            e[i] = 1.0;
            let e = Tensor::from_vec(e, (1, d), x.device())?.to_dtype(x.dtype())?.broadcast_as(flat.shape())?;
            let e = e.reshape(x.shape())?;
            let plus = self.score_at_shift(x, t, &e, self.h)?.flatten_from(1)?.narrow(1, i, 1)?;
            let minus = self.score_at_shift(x, t, &e, -self.h)?.flatten_from(1)?.narrow(1, i, 1)?;
            total = (total + ((plus - minus)?.squeeze(1)?.affine(0.5 / self.h, 0.0))?)?;
        }
        Ok(Some(total))
    }

    fn jacobian_vector(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
        let plus = self.score_at_shift(x, t, v, self.h)?;
        let minus = self.score_at_shift(x, t, v, -self.h)?;
        Ok(Some((plus - minus)?.affine(0.5 / self.h, 0.0)?))
    }
}
