//! Autodiff entry point: exact second-order gradients with candle.
//!
//! candle detaches every intermediate gradient during `backward` unless the
//! environment variable `CANDLE_GRAD_DO_NOT_DETACH` is set *before a thread's
//! first backward pass* (it is read once into a thread-local). With the
//! gradients detached, a loss that contains ∇ₓ s_θ (implicit and sliced score
//! matching, energy models) silently gets wrong θ-gradients. Every backward
//! pass in scoregen goes through [`grad`] / [`backward`], which call
//! [`enable_second_order`] first, so it cannot be forgotten.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::sync::Once;

static INIT: Once = Once::new();

/// The environment variable candle reads to keep the graph of gradients.
pub const DO_NOT_DETACH_VAR: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Makes candle keep the graph of gradients, so gradients can be
/// differentiated again. Idempotent; called by every entry point.
pub fn enable_second_order() {
    INIT.call_once(|| {
        // Safe in practice: this runs once, before any backward pass, and
        // nothing else in the process writes this variable.
        std::env::set_var(DO_NOT_DETACH_VAR, "1");
    });
}

/// True when candle, on this thread, keeps the gradient graph.
pub fn second_order_enabled() -> bool {
    std::env::var(DO_NOT_DETACH_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Runs `loss.backward()` with second-order gradients enabled.
pub fn backward(loss: &Tensor) -> candle_core::Result<GradStore> {
    enable_second_order();
    loss.backward()
}

/// ∂(Σ y)/∂x for a tracked input `x`; the result stays differentiable
/// (with respect to the parameters that produced `y`).
pub fn grad(y: &Tensor, x: &Var) -> candle_core::Result<Tensor> {
    grad_wrt(y, x.as_tensor())
}

/// ∂(Σ y)/∂x where `x` is the tensor of a variable (`x.is_variable()`);
/// zero when y does not depend on x.
pub fn grad_wrt(y: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
    let grads = backward(&y.sum_all()?)?;
    match grads.get(x) {
        Some(g) => Ok(g.clone()),
        None => x.zeros_like(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// f_θ(x) = vᵀ tanh(W x + b) summed over a batch; L(θ) = ‖∇ₓ f_θ(x)‖².
    fn loss(w: &Tensor, b: &Tensor, v: &Tensor, x: &Var) -> candle_core::Result<Tensor> {
        let h = x.as_tensor().matmul(&w.t()?)?.broadcast_add(b)?.tanh()?;
        let f = h.matmul(v)?;
        grad(&f, x)?.sqr()?.sum_all()
    }

    /// The θ-gradient of a loss that contains ∇ₓ f_θ (second order) matches
    /// central finite differences (f64, h = 1e-6, error O(h²) ≪ 1e-6). This
    /// fails when candle detaches gradients (CANDLE_GRAD_DO_NOT_DETACH unset):
    /// the inner gradient is then a constant and ∂L/∂W comes out zero.
    #[test]
    fn second_order_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let w = Var::new(&[[0.3f64, -0.7], [1.1, 0.4], [-0.5, 0.9]], &dev).unwrap();
        let b = Tensor::new(&[0.1f64, -0.2, 0.05], &dev).unwrap();
        let v = Tensor::new(&[[0.8f64], [-1.2], [0.6]], &dev).unwrap();
        let x = Var::new(&[[0.5f64, -1.0], [1.5, 0.25]], &dev).unwrap();
        let l = loss(w.as_tensor(), &b, &v, &x).unwrap();
        let gw = backward(&l).unwrap().get(w.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        assert!(second_order_enabled());
        let w0 = w.as_tensor().to_vec2::<f64>().unwrap();
        let h = 1e-6;
        for i in 0..3 {
            for j in 0..2 {
                let at = |delta: f64| {
                    let mut ww = w0.clone();
                    ww[i][j] += delta;
                    let wt = Tensor::new(ww, &dev).unwrap();
                    loss(&wt, &b, &v, &x).unwrap().to_scalar::<f64>().unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (fd - gw[i][j]).abs() < 1e-6 * fd.abs().max(1.0),
                    "W[{i}][{j}]: fd {fd} vs autodiff {}",
                    gw[i][j]
                );
            }
        }
    }
}
