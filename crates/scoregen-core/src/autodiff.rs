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
use candle_core::{Device, Tensor, Var};
use std::cell::Cell;
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

thread_local! {
    /// Depth of nested [`exact_higher_order`] scopes on this thread.
    static HIGHER_ORDER: Cell<usize> = const { Cell::new(0) };
    /// Depth of nested [`input_gradients_only`] scopes on this thread.
    static INPUT_ONLY: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with the scope counter `depth` raised by one (lowered again on
/// exit, also on a panic).
fn scoped<R>(depth: &'static std::thread::LocalKey<Cell<usize>>, f: impl FnOnce() -> R) -> R {
    struct Exit(&'static std::thread::LocalKey<Cell<usize>>);
    impl Drop for Exit {
        fn drop(&mut self) {
            self.0.with(|d| d.set(d.get() - 1));
        }
    }
    depth.with(|d| d.set(d.get() + 1));
    let _exit = Exit(depth);
    f()
}

/// Runs `f` with every network on candle's own ops, so whatever `f` builds
/// can be differentiated any number of times. Outside such a scope networks
/// may use fused first-order kernels (`scoregen_nets::nets::kernels::dense`, a crate above this one), whose
/// gradients refuse a second differentiation. Objectives that differentiate
/// ∇ₓ s_θ with respect to θ (implicit and sliced score matching) and energy
/// models (s_θ = −∇ₓ f_θ) run their forward passes in here.
pub fn exact_higher_order<R>(f: impl FnOnce() -> R) -> R {
    scoped(&HIGHER_ORDER, f)
}

/// Runs `f` where only gradients with respect to inputs are wanted (the
/// vector-Jacobian products of a likelihood's divergence): networks may then
/// treat their parameters as constants and skip computing ∂/∂θ. Nothing built
/// in here may be used to train.
pub fn input_gradients_only<R>(f: impl FnOnce() -> R) -> R {
    scoped(&INPUT_ONLY, f)
}

/// True inside [`input_gradients_only`].
pub fn parameters_constant() -> bool {
    INPUT_ONLY.with(|d| d.get() > 0)
}

/// The environment variable that, set to `0`, keeps every network on
/// candle's ops (to compare the fused kernels with them, or to rule them out).
/// That is the path a GPU takes: the CPU's own ops are used on the CPU only.
pub const FUSED_VAR: &str = "SCOREGEN_FUSED";

/// False when `SCOREGEN_FUSED=0` (read once).
fn fused_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(FUSED_VAR).map_or(true, |v| v != "0"))
}

/// True when fused first-order kernels may run on tensors of `device`: on the
/// CPU only, outside [`exact_higher_order`], and not with `SCOREGEN_FUSED=0`.
pub fn fused_kernels_allowed(device: &Device) -> bool {
    device.is_cpu() && fused_enabled() && HIGHER_ORDER.with(|d| d.get() == 0)
}

/// True when the CPU's custom ops that are exact to every order (fused SiLU,
/// bias, im2col, ×2 upsampling; `nets::kernels::fused`) may run on tensors
/// of `device`: on the CPU only, and not with `SCOREGEN_FUSED=0`. Elsewhere
/// candle's own ops compute the same functions (a GPU has no CPU kernels).
pub fn cpu_ops_allowed(device: &Device) -> bool {
    device.is_cpu() && fused_enabled()
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
    use candle_core::Tensor;

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
