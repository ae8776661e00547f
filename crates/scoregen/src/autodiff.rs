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
    let grads = backward(&y.sum_all()?)?;
    match grads.get(x.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => x.as_tensor().zeros_like(),
    }
}
