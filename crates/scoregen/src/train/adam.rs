//! Adam (Kingma & Ba 2015) with global-norm gradient clipping.
//!
//! Written here rather than using candle-nn's `AdamW` because a checkpoint
//! must hold the moment estimates (for exact resume), and candle-nn keeps
//! them private.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − lr/(1−β₁ᵗ) · m / (√(v/(1−β₂ᵗ)) + ε).
#[derive(Debug, Clone)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// First and second moments, in the order of the parameter list.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Updates done so far.
    pub t: usize,
}

/// What one optimizer step saw.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Adam {
    pub fn new(params: &[(String, Var)]) -> Result<Self> {
        let zeros = params.iter().map(|(_, p)| p.as_tensor().zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, m: zeros.clone(), v: zeros, t: 0 })
    }

    /// The gradients of `params` (zero where a parameter got none), detached.
    pub fn gradients(params: &[(String, Var)], grads: &GradStore) -> Result<Vec<Tensor>> {
        params
            .iter()
            .map(|(_, p)| match grads.get(p.as_tensor()) {
                Some(g) => Ok(g.detach()),
                None => p.as_tensor().zeros_like(),
            })
            .collect()
    }

    /// √(Σ‖g‖²) over all gradients.
    pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
        let mut total = 0.0;
        for g in grads {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`; gradients are first scaled so their
    /// global norm is at most `clip` (0 disables clipping).
    pub fn step(&mut self, params: &[(String, Var)], grads: Vec<Tensor>, lr: f64, clip: f64) -> Result<StepInfo> {
        let grad_norm = Self::global_norm(&grads)?;
        self.step_with_norm(params, grads, grad_norm, lr, clip)
    }

    /// [`Adam::step`] with the global norm of `grads` already computed (the
    /// trainer checks it for non-finite values before touching the parameters).
    pub fn step_with_norm(
        &mut self,
        params: &[(String, Var)],
        grads: Vec<Tensor>,
        grad_norm: f64,
        lr: f64,
        clip: f64,
    ) -> Result<StepInfo> {
        let scale = if clip > 0.0 && grad_norm > clip { clip / (grad_norm + 1e-6) } else { 1.0 };
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, ((_, p), g)) in params.iter().zip(grads).enumerate() {
            let g = if scale != 1.0 { g.affine(scale, 0.0)? } else { g };
            self.m[i] = (self.m[i].affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?;
            self.v[i] = (self.v[i].affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?;
            let denom = self.v[i].affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, self.eps)?;
            let update = (self.m[i].affine(lr / bc1, 0.0)? / denom)?;
            p.set(&(p.as_tensor() - update)?)?;
        }
        Ok(StepInfo { grad_norm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// On f(θ) = ½‖θ − c‖² Adam's first step moves every coordinate by exactly
    /// lr (m̂/√v̂ = sign(g)), and repeated steps converge to c.
    #[test]
    fn first_step_has_size_lr_and_iterates_converge() {
        let p = Var::new(&[3.0f64, -2.0], &Device::Cpu).unwrap();
        let params = vec![("p".to_string(), p.clone())];
        let c = Tensor::new(&[1.0f64, 1.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(&params).unwrap();
        for i in 0..2000 {
            let loss = (p.as_tensor() - &c).unwrap().sqr().unwrap().sum_all().unwrap().affine(0.5, 0.0).unwrap();
            let g = Adam::gradients(&params, &crate::autodiff::backward(&loss).unwrap()).unwrap();
            adam.step(&params, g, 0.01, 0.0).unwrap();
            if i == 0 {
                let v = p.as_tensor().to_vec1::<f64>().unwrap();
                assert!((v[0] - 2.99).abs() < 1e-9 && (v[1] + 1.99).abs() < 1e-9, "{v:?}");
            }
        }
        let v = p.as_tensor().to_vec1::<f64>().unwrap();
        assert!((v[0] - 1.0).abs() < 1e-3 && (v[1] - 1.0).abs() < 1e-3, "{v:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let g = vec![Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap()];
        assert!((Adam::global_norm(&g).unwrap() - 5.0).abs() < 1e-12);
    }
}
