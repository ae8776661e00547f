//! Safetensors files of named tensors (the checkpoint format, readable from
//! Python): reading with every value checked finite, and copying tensors into
//! a model's variables after checking names, shapes and dtypes.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// Reads a safetensors file; every value must be finite.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::data(path, format!("unreadable tensors: {e}")))?;
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let t = &map[name];
        if !t.dtype().is_float() {
            return Err(Error::data(path, format!("tensor `{name}` has dtype {:?}, expected a float", t.dtype())));
        }
        if !crate::host::vec1::<f64>(&t.flatten_all()?)?.iter().all(|v| v.is_finite()) {
            return Err(Error::data(path, format!("tensor `{name}` holds a non-finite value")));
        }
    }
    Ok(map)
}

/// Checks that `tensors` (read from `file`) hold exactly the variables `vars`:
/// every name, shape and dtype; a mismatch is named.
pub fn check_tensors(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>, file: &Path) -> Result<()> {
    for (name, var) in vars {
        let t = tensors.get(name).ok_or_else(|| {
            Error::data(file, format!("tensor `{name}` is missing (the config's model differs from the checkpoint's)"))
        })?;
        if t.shape() != var.shape() {
            return Err(Error::data(
                file,
                format!("tensor `{name}` has shape {:?}, the config's model expects {:?}", t.dims(), var.dims()),
            ));
        }
        if t.dtype() != var.dtype() {
            return Err(Error::data(
                file,
                format!("tensor `{name}` has dtype {:?}, the config's model expects {:?}", t.dtype(), var.dtype()),
            ));
        }
    }
    if let Some(name) = tensors.keys().filter(|k| !vars.iter().any(|(n, _)| n == *k)).min() {
        return Err(Error::data(file, format!("tensor `{name}` is not a parameter of the config's model")));
    }
    Ok(())
}

/// Copies tensors into variables after [`check_tensors`]; `source` names them
/// in errors. Each tensor moves to its variable's device (files are read to the CPU).
pub fn assign(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
    check_tensors(vars, tensors, source)?;
    for (name, var) in vars {
        var.set(&tensors[name].to_device(var.device())?)?;
    }
    Ok(())
}
