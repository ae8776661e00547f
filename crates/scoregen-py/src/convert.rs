//! NumPy arrays in and out, and the library's errors as Python exceptions.
//!
//! Arrays come in as float32 or float64 with any strides (copied to a
//! row-major `Vec<f64>` once); anything else is a `TypeError` naming the
//! argument and the dtype found. A wrong shape is a `ValueError` naming the
//! argument, the shape expected and the shape found.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    Element, IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use candle_core::{DType, Device, Tensor};

/// A float array read from Python: its shape and its values in row-major order.
pub struct Input {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    /// Whether it came in as float32 (results go back in the same dtype).
    pub f32: bool,
}

fn read_typed<T: Element + Copy + Into<f64>>(arr: &Bound<'_, PyUntypedArray>) -> PyResult<Vec<f64>> {
    let a = arr.downcast::<PyArrayDyn<T>>()?.readonly();
    // `as_slice` also accepts Fortran order (memory order ≠ row-major order),
    // so only a C-contiguous array is read as a slice.
    Ok(match a.as_slice() {
        Ok(s) if arr.is_c_contiguous() => s.iter().map(|&v| v.into()).collect(),
        // Otherwise the logical (row-major) order, one copy.
        _ => a.as_array().iter().map(|&v| v.into()).collect(),
    })
}

/// `obj` as a float32/float64 NumPy array, or a `TypeError` naming `name`.
pub fn array(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Input> {
    let arr = obj.downcast::<PyUntypedArray>().map_err(|_| {
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{name}: expected a numpy array of float32 or float64, found {ty}"))
    })?;
    let py = obj.py();
    let dt = arr.dtype();
    let shape = arr.shape().to_vec();
    if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(Input { shape, data: read_typed::<f64>(arr)?, f32: false })
    } else if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(Input { shape, data: read_typed::<f32>(arr)?, f32: true })
    } else {
        Err(PyTypeError::new_err(format!("{name}: expected dtype float32 or float64, found {dt}")))
    }
}

/// A shape as the error messages write it: `[N, 2]`.
pub fn shape_str(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// `obj` as an [N, D] array (D = `dim` when given), or a `ValueError` naming
/// `name`, the expected and the found shape.
pub fn points(obj: &Bound<'_, PyAny>, name: &str, dim: Option<usize>) -> PyResult<Input> {
    let a = array(obj, name)?;
    let ok = a.shape.len() == 2 && dim.is_none_or(|d| a.shape[1] == d) && a.shape[1] > 0;
    if !ok {
        let want = dim.map_or("[N, D]".to_string(), |d| format!("[N, {d}]"));
        return Err(PyValueError::new_err(format!("{name}: expected shape {want}, found {}", shape_str(&a.shape))));
    }
    if a.data.iter().any(|v| !v.is_finite()) {
        return Err(PyValueError::new_err(format!("{name}: values must be finite (found NaN or ±inf)")));
    }
    Ok(a)
}

/// Times t: one float for every row, or an array of shape [n]; returns n times.
pub fn times(obj: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<f64>> {
    let t: Vec<f64> = if let Ok(v) = obj.extract::<f64>() {
        vec![v; n]
    } else {
        let a = array(obj, "t")?;
        if a.shape != [n] {
            return Err(PyValueError::new_err(format!(
                "t: expected a float or shape [{n}] (one time per row of x), found {}",
                shape_str(&a.shape)
            )));
        }
        a.data
    };
    if t.iter().any(|v| !v.is_finite()) {
        return Err(PyValueError::new_err("t: times must be finite"));
    }
    Ok(t)
}

/// A new NumPy array of `shape` from row-major `data`, in float32 when `f32`.
pub fn to_numpy(py: Python<'_>, shape: &[usize], data: Vec<f64>, f32: bool) -> PyResult<PyObject> {
    if f32 {
        let v: Vec<f32> = data.into_iter().map(|x| x as f32).collect();
        out(py, shape, v)
    } else {
        out(py, shape, data)
    }
}

/// A NumPy array that takes `data` over without copying it.
pub fn out<T: Element>(py: Python<'_>, shape: &[usize], data: Vec<T>) -> PyResult<PyObject> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py).into_any().unbind())
}

/// A serializable outcome (what the command line's `--json` prints) as Python
/// objects, through `json.loads`.
pub fn json<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyResult<PyObject> {
    let text = serde_json::to_string(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// `"float32"` or `"float64"`.
pub fn dtype_is_f32(dtype: &str) -> PyResult<bool> {
    match dtype {
        "float32" => Ok(true),
        "float64" => Ok(false),
        _ => Err(PyValueError::new_err(format!("dtype: expected \"float32\" or \"float64\", found \"{dtype}\""))),
    }
}

/// The library's error as the exception a Python caller expects: a missing
/// file is `FileNotFoundError`, Ctrl-C `KeyboardInterrupt`, everything else
/// `ValueError`, each with the message the command line prints.
pub fn error(e: scoregen::Error) -> PyErr {
    match &e {
        scoregen::Error::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        scoregen::Error::Interrupted(_) => PyKeyboardInterrupt::new_err(e.to_string()),
        // a setting by its keyword: `sampler: …` where the library says `sampling.sampler: …`
        scoregen::Error::Setting { key, message } => PyValueError::new_err(format!("{}: {message}", keyword(key))),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// The keyword argument that sets the config key `key`: its last part or the
/// name the command line's flag has (`eps` for `sampling.step_size`,
/// `app::commands::sample::setting_name`), `class_` for `class` (a reserved word in Python).
pub fn keyword(key: &str) -> &str {
    match scoregen::app::commands::sample::setting_name(key) {
        "class" => "class_",
        "input" => "x",
        k => k,
    }
}

/// A tensor error as a `ValueError`.
pub fn candle_error(e: candle_core::Error) -> PyErr {
    error(e.into())
}

/// Runs `f`, turning a Rust panic (a bug) into a `RuntimeError` instead of
/// letting it unwind into the interpreter.
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!("scoregen internal error (a bug, please report it): {msg}")))
        }
    }
}

/// Makes a value `Send` for [`Python::allow_threads`]. Sound here because
/// `allow_threads` runs its closure on the calling thread, before returning:
/// the value never leaves the thread that owns it.
pub struct AssertSend<T>(pub T);
// SAFETY: see the type's doc: the closure runs synchronously on this thread.
unsafe impl<T> Send for AssertSend<T> {}

/// `a` as a CPU tensor of `dtype`.
pub fn tensor(a: &Input, dtype: DType) -> PyResult<Tensor> {
    Tensor::from_vec(a.data.clone(), a.shape.as_slice(), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(candle_error)
}

/// A tensor's values as f64, row-major.
pub fn tensor_data(t: &Tensor) -> PyResult<Vec<f64>> {
    t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).map_err(candle_error)
}

/// `v` must be a finite number > 0, or a `ValueError` naming `name`.
pub fn positive(name: &str, v: f64) -> PyResult<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!("{name} must be a finite number > 0 (got {v})")))
    }
}
