//! Autodiff entry point: exact second-order gradients with candle.
//!
//! candle detaches every intermediate gradient during `backward` unless the
//! environment variable `CANDLE_GRAD_DO_NOT_DETACH` is set *before a thread's
//! first backward pass* (it is read once into a thread-local). With the
//! gradients detached, a loss that contains ∇ₓ s_θ (implicit and sliced score
//! matching, energy models) silently gets wrong θ-gradients. Every backward
//! pass in scoregen goes through [`grad`] / [`backward`], which call
//! [`enable_second_order`] first, so it cannot be forgotten.
//!
//! Keeping the graph has a price: every gradient then holds the whole
//! backward graph alive until it is dropped. The passes whose result is not
//! differentiated again — a training step's ∂L/∂θ, a likelihood's
//! vector–Jacobian products — go through [`backward_first_order`] instead,
//! which runs them on one thread where candle detaches as usual.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use std::cell::Cell;
use std::sync::Once;

static INIT: Once = Once::new();

/// The environment variable candle reads to keep the graph of gradients.
pub const DO_NOT_DETACH_VAR: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Makes candle keep the graph of gradients, so gradients can be
/// differentiated again. Idempotent; called by every entry point.
///
/// First it starts the one thread that keeps candle's default, detaching
/// every gradient ([`backward_first_order`]): that thread reads candle's flag
/// in a backward pass of its own before the variable is set.
pub fn enable_second_order() {
    INIT.call_once(|| {
        // Safe in practice: this runs once, before any backward pass, and
        // nothing else in the process writes this variable.
        std::env::remove_var(DO_NOT_DETACH_VAR);
        start_detaching_thread();
        std::env::set_var(DO_NOT_DETACH_VAR, "1");
    });
}

type Job = Box<dyn FnOnce() + Send>;

/// The name of the thread [`backward_first_order`] runs on.
const DETACHING_THREAD: &str = "scoregen-backward";

/// The queue of the detaching thread ([`backward_first_order`]).
static DETACHING: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();

/// Starts the detaching thread and waits until candle's flag is read there
/// (false: the variable is unset while it runs its first backward pass).
fn start_detaching_thread() {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let (ready, wait) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new().name(DETACHING_THREAD.into()).spawn(move || {
        // a one-op backward pass: candle reads its flag into this thread's local
        let _ = Var::new(1f32, &Device::Cpu).and_then(|v| v.as_tensor().sqr()?.backward());
        let _ = ready.send(());
        for job in queue {
            job();
        }
    });
    if spawned.is_ok() && wait.recv().is_ok() {
        let _ = DETACHING.set(std::sync::Mutex::new(jobs));
    }
}

/// `loss.backward()` with every gradient detached from the graph as it is
/// formed (candle's default), for gradients that are not differentiated
/// again: a training step's ∂L/∂θ and a likelihood's vector–Jacobian
/// products. The backward graph is then freed as the pass goes, where
/// [`backward`] keeps all of it alive until the gradients are dropped (the
/// CIFAR-10 U-Net's training step at batch 8 held 16 GB that way, PyTorch
/// 2 GB). Inner gradients inside `loss` that it must differentiate through
/// (an energy's score, implicit and sliced score matching) were formed by
/// [`grad`] with their graphs kept, so the result is exact all the same.
/// Runs on the one thread that reads candle's flag as off; the caller waits
/// for it (if that thread could not start, falls back to [`backward`]).
pub fn backward_first_order(loss: &Tensor) -> candle_core::Result<GradStore> {
    enable_second_order();
    if std::thread::current().name() == Some(DETACHING_THREAD) {
        return loss.backward();
    }
    let Some(queue) = DETACHING.get() else { return backward(loss) };
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let owned = loss.clone();
    let job: Job = Box::new(move || {
        let _ = reply.send(owned.backward());
    });
    match queue.lock().unwrap_or_else(|e| e.into_inner()).send(job) {
        Ok(()) => answer.recv().map_err(|_| candle_core::Error::Msg("the backward thread stopped".into()))?,
        Err(_) => backward(loss),
    }
}

/// True when candle's backward on this thread detaches each gradient as it
/// goes: on [`backward_first_order`]'s thread, or anywhere before
/// [`enable_second_order`]. A reverse pass of one's own
/// (`nets::kernels::tape`) detaches where candle would, so that each
/// gradient does not hold the graph of all the gradients before it.
pub fn backward_detaches() -> bool {
    std::thread::current().name() == Some(DETACHING_THREAD) || !second_order_enabled()
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

    /// The first-order backward gives the same gradients as `backward`, bit
    /// for bit, with no graph behind them (the backward graph is freed as it
    /// goes); through a loss that contains an inner gradient formed by `grad`
    /// (kept), its θ-gradient is the second-order one of `backward`. From
    /// several threads at once it gives each caller its own answer.
    #[test]
    fn first_order_backward_detaches_and_agrees() {
        let dev = Device::Cpu;
        let w = Var::new(&[[0.3f64, -0.7], [1.1, 0.4], [-0.5, 0.9]], &dev).unwrap();
        let b = Tensor::new(&[0.1f64, -0.2, 0.05], &dev).unwrap();
        let v = Tensor::new(&[[0.8f64], [-1.2], [0.6]], &dev).unwrap();
        let x = Var::new(&[[0.5f64, -1.0], [1.5, 0.25]], &dev).unwrap();
        // first order: f summed
        let f = || {
            x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap().tanh().unwrap().sqr().unwrap().sum_all().unwrap()
        };
        let kept = backward(&f()).unwrap();
        let freed = backward_first_order(&f()).unwrap();
        for var in [w.as_tensor(), x.as_tensor()] {
            let (a, c) = (kept.get(var).unwrap(), freed.get(var).unwrap());
            assert_eq!(a.to_vec2::<f64>().unwrap(), c.to_vec2::<f64>().unwrap());
        }
        // the kept ∂f/∂x differentiates again to the true ∂²f/∂x∂W; the first-order
        // one was cut at every step of the chain, so its derivative misses terms
        let again =
            |g: &Tensor| backward(&g.sum_all().unwrap()).unwrap().get(w.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        let (exact, cut) = (again(kept.get(x.as_tensor()).unwrap()), again(freed.get(x.as_tensor()).unwrap()));
        let gap: f64 = exact.iter().flatten().zip(cut.iter().flatten()).map(|(a, b)| (a - b).abs()).sum();
        assert!(gap > 1e-3, "the first-order gradient kept its backward graph ({gap})");
        // second order through an inner gradient
        let l = loss(w.as_tensor(), &b, &v, &x).unwrap();
        let want = backward(&l).unwrap().get(w.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        let l = loss(w.as_tensor(), &b, &v, &x).unwrap();
        let got = backward_first_order(&l).unwrap().get(w.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        assert_eq!(got, want);
        assert!(want.iter().flatten().any(|g| g.abs() > 1e-3), "a non-trivial second-order gradient");
        // callers on several threads
        let answers: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (1..=4)
                .map(|k| {
                    s.spawn(move || {
                        let y = Var::new(k as f64, &Device::Cpu).unwrap();
                        let g = backward_first_order(&y.as_tensor().sqr().unwrap()).unwrap();
                        g.get(y.as_tensor()).unwrap().to_scalar::<f64>().unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(answers, [2.0, 4.0, 6.0, 8.0]);
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
