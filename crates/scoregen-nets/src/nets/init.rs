//! Seeded parameter initialization.
//!
//! candle's `Init` draws from a thread RNG, so two runs with the same seed
//! would start from different weights. [`seeded_var_builder`] gives a
//! `VarBuilder` that honours the same `Init` hints (Kaiming, uniform, …) but
//! draws from our seeded [`Rng`], in construction order, and registers every
//! variable in a `VarMap` (whose names become the safetensors names).

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use scoregen_core::rng::{streams, Rng};
use std::sync::Mutex;

struct SeededBackend {
    varmap: VarMap,
    rng: Mutex<Rng>,
}

/// Draws a tensor for an `Init` hint from our RNG (same distributions as candle's `Init::var`).
fn draw(init: &Init, shape: &Shape, rng: &mut Rng, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n = shape.elem_count();
    let values: Vec<f64> = match *init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => rng.uniform_vec(n, lo, up),
        Init::Randn { mean, stdev } => (0..n).map(|_| mean + stdev * rng.normal()).collect(),
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => rng.uniform_vec(n, -(3f64.sqrt()) * std, 3f64.sqrt() * std),
                NormalOrUniform::Normal => (0..n).map(|_| std * rng.normal()).collect(),
            }
        }
    };
    Tensor::from_vec(values, shape.clone(), dev)?.to_dtype(dtype)
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("variable `{name}` has shape {:?}, expected {s:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = self.rng.lock().expect("rng lock");
        let var = Var::from_tensor(&draw(&h, &s, &mut rng, dtype, dev)?)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("variable `{name}` must be created with a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("varmap lock").contains_key(name)
    }
}

/// A `VarBuilder` whose new variables are drawn from `Rng::new(seed, streams::PARAM_INIT)`
/// and stored in `varmap`. Variables already in `varmap` are reused.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    let backend = SeededBackend { varmap: varmap.clone(), rng: Mutex::new(Rng::new(seed, streams::PARAM_INIT)) };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}
