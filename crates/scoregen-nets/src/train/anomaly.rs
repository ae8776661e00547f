//! Where a non-finite value first appeared in a training step (`--detect-anomaly`).
//!
//! candle 0.11 has no anomaly mode and no forward or backward hooks, so unlike
//! PyTorch's `torch.autograd.detect_anomaly` we cannot name the individual op.
//! What we can check are the tensors at the boundaries the trainer owns, in the
//! order they are computed: the data batch, every input and output of the score
//! network, the loss, each parameter's gradient and each parameter after the
//! update. The first non-finite one is named.

use candle_core::{Result, Tensor, Var};
use scoregen_core::host;
use scoregen_core::score::ScoreFn;
use std::cell::{Cell, RefCell};

/// True when every entry of `t` is finite: x − x is 0 for finite x and NaN
/// for ±∞ or NaN, and a sum of zeros cannot overflow (a plain sum of large
/// finite values could).
pub fn is_finite(t: &Tensor) -> Result<bool> {
    let s = host::scalar::<f64>(&t.sub(t)?.abs()?.sum_all()?)?;
    Ok(s == 0.0)
}

/// The name of the first tensor of `named` that holds a non-finite value.
pub fn first_non_finite<'a>(named: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<Option<String>> {
    for (name, t) in named {
        if !is_finite(t)? {
            return Ok(Some(name.to_string()));
        }
    }
    Ok(None)
}

/// The first parameter (in the order of `params`) whose tensor is non-finite.
pub fn first_bad_param<'a>(params: &'a [(String, Var)], tensors: &'a [Tensor]) -> Result<Option<String>> {
    first_non_finite(params.iter().zip(tensors).map(|((n, _), t)| (n.as_str(), t)))
}

/// A score function that records the first call whose input x or output
/// s(x, t) is non-finite.
pub struct Watched<'a> {
    inner: &'a dyn ScoreFn,
    calls: Cell<usize>,
    first: RefCell<Option<String>>,
}

impl<'a> Watched<'a> {
    pub fn new(inner: &'a dyn ScoreFn) -> Self {
        Self { inner, calls: Cell::new(0), first: RefCell::new(None) }
    }

    /// What was seen first to be non-finite, if anything.
    pub fn first(&self) -> Option<String> {
        self.first.borrow().clone()
    }

    fn note(&self, what: &str, t: &Tensor) -> Result<()> {
        if self.first.borrow().is_none() && !is_finite(t)? {
            *self.first.borrow_mut() = Some(format!("{what} (score call {} of this step)", self.calls.get()));
        }
        Ok(())
    }
}

impl ScoreFn for Watched<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        self.note("score network input x(t)", x)?;
        let out = self.inner.score(x, t)?;
        self.note("score network output", &out)?;
        Ok(out)
    }

    fn divergence(&self, x: &Tensor, t: &Tensor) -> Result<Option<Tensor>> {
        self.inner.divergence(x, t)
    }

    fn jacobian_vector(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
        self.inner.jacobian_vector(x, t, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn finiteness_check_finds_nan_and_infinities_but_not_large_values() {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        assert!(is_finite(&t(&[3e38, 3e38, -3e38])).unwrap());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(!is_finite(&t(&[1.0, bad])).unwrap());
        }
        let (a, b) = (t(&[1.0]), t(&[f32::NAN]));
        assert_eq!(first_non_finite([("a", &a), ("b", &b), ("c", &b)]).unwrap().as_deref(), Some("b"));
        assert_eq!(first_non_finite([("a", &a)]).unwrap(), None);
    }
}
