//! Adam (Kingma & Ba 2015) with global-norm gradient clipping.
//!
//! Written here rather than using candle-nn's `AdamW` because a checkpoint
//! must hold the moment estimates (for exact resume), and candle-nn keeps
//! them private.

use crate::nets::kernels::fused::{par_ranges, SharedMut};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Storage, Tensor, Var, WithDType};
use scoregen_core::host;
use std::mem::MaybeUninit;

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

    /// √(Σ‖g‖²) over all gradients (accumulated in f64).
    pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
        let mut total = 0.0f64;
        for g in grads {
            if !g.device().is_cpu() {
                // on a GPU: candle's ops, one f64 sum per tensor
                total += host::scalar::<f64>(&g.to_dtype(DType::F64)?.sqr()?.sum_all()?)?;
                continue;
            }
            total += match g.dtype() {
                DType::F32 => with_slices::<f32, _>(&[g], |s| sum_squares(s[0]))?,
                _ => with_slices::<f64, _>(&[&g.to_dtype(DType::F64)?], |s| sum_squares(s[0]))?,
            };
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`; gradients are first scaled so their
    /// global norm is at most `clip` (0 disables clipping).
    ///
    /// One fused pass per parameter over its f32/f64 values (scale, m, v, θ),
    /// arithmetic in f64, instead of a dozen tensor ops per parameter.
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
        let k = AdamCoefs {
            scale,
            beta1: self.beta1,
            beta2: self.beta2,
            step: lr / (1.0 - self.beta1.powi(self.t as i32)),
            bc2: 1.0 - self.beta2.powi(self.t as i32),
            eps: self.eps,
        };
        for (i, ((_, p), g)) in params.iter().zip(grads).enumerate() {
            let theta = p.as_tensor();
            if !theta.device().is_cpu() {
                let (m, v, new_theta) = adam_update_candle(theta, &g, &self.m[i], &self.v[i], &k)?;
                p.set(&new_theta)?;
                (self.m[i], self.v[i]) = (m, v);
                continue;
            }
            let (m, v, new_theta) = match theta.dtype() {
                DType::F32 => adam_update::<f32>(theta, &g, &self.m[i], &self.v[i], &k)?,
                DType::F64 => adam_update::<f64>(theta, &g, &self.m[i], &self.v[i], &k)?,
                dt => candle_core::bail!("Adam: unsupported dtype {dt:?}"),
            };
            p.set(&new_theta)?;
            (self.m[i], self.v[i]) = (m, v);
        }
        Ok(StepInfo { grad_norm })
    }
}

/// The constants of one Adam step: gradient scale, β₁, β₂, lr/(1−β₁ᵗ), 1−β₂ᵗ, ε.
struct AdamCoefs {
    scale: f64,
    beta1: f64,
    beta2: f64,
    step: f64,
    bc2: f64,
    eps: f64,
}

/// Runs `f` on the contiguous values of CPU tensors of element type `T`.
pub(crate) fn with_slices<T: WithDType, R>(ts: &[&Tensor], f: impl FnOnce(&[&[T]]) -> R) -> Result<R> {
    let contiguous: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = contiguous.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (storage, layout) in &guards {
        let (a, b) = layout.contiguous_offsets().expect("made contiguous above");
        match &**storage {
            Storage::Cpu(cpu) => slices.push(&cpu.as_slice::<T>()?[a..b]),
            _ => candle_core::bail!("fused update: tensors must be on the CPU"),
        }
    }
    Ok(f(&slices))
}

/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − lr/(1−β₁ᵗ) · m / (√(v/(1−β₂ᵗ)) + ε)
/// with g scaled by the clipping factor: one pass, returns (m, v, θ).
fn adam_update<T: WithDType + num_traits::Float + Send + Sync>(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &AdamCoefs,
) -> Result<(Tensor, Tensor, Tensor)> {
    let n = theta.elem_count();
    // written whole by the chunks below: no zeroing pass first
    let (mut m2, mut v2, mut th2) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    with_slices::<T, _>(&[theta, g, m, v], |s| {
        let (m2, v2, th2) =
            (&mut m2.spare_capacity_mut()[..n], &mut v2.spare_capacity_mut()[..n], &mut th2.spare_capacity_mut()[..n]);
        let (m2, v2, th2) = (SharedMut::new(m2), SharedMut::new(v2), SharedMut::new(th2));
        par_ranges(n.div_ceil(CHUNK), |chunks| {
            for c in chunks {
                let r = chunk(c, n);
                // SAFETY: chunk c of each output, written by this task only.
                let (m2, v2, th2) =
                    unsafe { (m2.slice(r.start, r.len()), v2.slice(r.start, r.len()), th2.slice(r.start, r.len())) };
                let old = [&s[0][r.clone()], &s[1][r.clone()], &s[2][r.clone()], &s[3][r]];
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    unsafe { adam_chunk_avx2(old, [m2, v2, th2], k) };
                    continue;
                }
                adam_chunk(old, [m2, v2, th2], k)
            }
        });
    })?;
    // SAFETY: the chunks cover 0..n and adam_chunk writes every value of its chunk.
    unsafe {
        m2.set_len(n);
        v2.set_len(n);
        th2.set_len(n);
    }
    let (shape, dev) = (theta.shape(), theta.device());
    Ok((Tensor::from_vec(m2, shape, dev)?, Tensor::from_vec(v2, shape, dev)?, Tensor::from_vec(th2, shape, dev)?))
}

/// [`adam_update`] in candle's ops, for parameters off the CPU (a GPU): the
/// same update, arithmetic in f64, results in the parameter's dtype.
fn adam_update_candle(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &AdamCoefs,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dt = theta.dtype();
    let f64 = |t: &Tensor| t.detach().to_dtype(DType::F64);
    let g = f64(g)?.affine(k.scale, 0.0)?;
    let m = (f64(m)?.affine(k.beta1, 0.0)? + g.affine(1.0 - k.beta1, 0.0)?)?;
    let v = (f64(v)?.affine(k.beta2, 0.0)? + g.sqr()?.affine(1.0 - k.beta2, 0.0)?)?;
    let denom = v.affine(1.0 / k.bc2, 0.0)?.sqrt()?.affine(1.0, k.eps)?;
    let theta = (f64(theta)? - (m.affine(k.step, 0.0)? / denom)?)?;
    Ok((m.to_dtype(dt)?, v.to_dtype(dt)?, theta.to_dtype(dt)?))
}

/// One chunk of [`adam_update`]: (θ, g, m, v) → (m′, v′, θ′).
#[inline(always)]
fn adam_chunk<T: WithDType>([th, g, m, v]: [&[T]; 4], [m2, v2, th2]: [&mut [MaybeUninit<T>]; 3], k: &AdamCoefs) {
    let old = th.iter().zip(g).zip(m).zip(v);
    for ((((&th, &g), &m), &v), ((m2, v2), th2)) in old.zip(m2.iter_mut().zip(v2.iter_mut()).zip(th2)) {
        let g = g.to_f64() * k.scale;
        let m = k.beta1 * m.to_f64() + (1.0 - k.beta1) * g;
        let v = k.beta2 * v.to_f64() + (1.0 - k.beta2) * g * g;
        m2.write(T::from_f64(m));
        v2.write(T::from_f64(v));
        th2.write(T::from_f64(th.to_f64() - k.step * m / ((v / k.bc2).sqrt() + k.eps)));
    }
}

/// [`adam_chunk`] compiled for AVX2 (4 f64 lanes for the square root and the
/// division instead of the baseline's 2; the same arithmetic, the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_chunk_avx2<T: WithDType>(old: [&[T]; 4], new: [&mut [MaybeUninit<T>]; 3], k: &AdamCoefs) {
    adam_chunk(old, new, k)
}

/// Values per thread in the optimizer's passes (Adam, the EMA, the norm).
pub(crate) const CHUNK: usize = 1 << 14;

/// Chunk c of 0..n ([`CHUNK`] values; the last one shorter).
pub(crate) fn chunk(c: usize, n: usize) -> std::ops::Range<usize> {
    c * CHUNK..((c + 1) * CHUNK).min(n)
}

/// Σ x² in f64, over chunks on candle's threads, eight partial sums per
/// chunk (a single running sum is one dependent add per value), the chunks'
/// sums then added in chunk order: a parallel iterator's `sum` (rayon's)
/// adds them in an unspecified order (a tree shaped by which tasks were
/// stolen), its bits free to vary run to run.
fn sum_squares<T: WithDType>(x: &[T]) -> f64 {
    let mut sums = vec![0f64; x.len().div_ceil(CHUNK)];
    let out = SharedMut::new(&mut sums);
    par_ranges(sums.len(), |chunks| {
        for i in chunks {
            let c = &x[chunk(i, x.len())];
            let mut acc = [0f64; 8];
            let lanes = c.chunks_exact(8);
            let rest: f64 = lanes.remainder().iter().map(|v| v.to_f64() * v.to_f64()).sum();
            for lane in lanes {
                for (a, v) in acc.iter_mut().zip(lane) {
                    *a += v.to_f64() * v.to_f64();
                }
            }
            // SAFETY: entry i, written by this task only.
            unsafe { out.slice(i, 1)[0] = acc.iter().sum::<f64>() + rest };
        }
    });
    sums.iter().sum()
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
            let g = Adam::gradients(&params, &scoregen_core::autodiff::backward(&loss).unwrap()).unwrap();
            adam.step(&params, g, 0.01, 0.0).unwrap();
            if i == 0 {
                let v = p.as_tensor().to_vec1::<f64>().unwrap();
                assert!((v[0] - 2.99).abs() < 1e-9 && (v[1] + 1.99).abs() < 1e-9, "{v:?}");
            }
        }
        let v = p.as_tensor().to_vec1::<f64>().unwrap();
        assert!((v[0] - 1.0).abs() < 1e-3 && (v[1] - 1.0).abs() < 1e-3, "{v:?}");
    }

    /// Three clipped steps of the fused update equal the textbook formula
    /// evaluated coordinate by coordinate in f64 (f64 parameters: equal to
    /// 1e-14; f32 parameters: equal to f32 rounding of the state, 1e-6).
    #[test]
    fn fused_update_matches_the_formula_with_clipping() {
        let grads = [[3.0f64, -4.0, 0.5], [0.1, 0.2, -0.3], [-2.0, 1.0, 6.0]];
        let (lr, clip, b1, b2, eps) = (0.05, 1.0, 0.9, 0.999, 1e-8);
        let (mut th, mut m, mut v) = ([1.0f64, -1.0, 0.5], [0.0f64; 3], [0.0f64; 3]);
        let mut want = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let scale = if norm > clip { clip / (norm + 1e-6) } else { 1.0 };
            for j in 0..3 {
                let gj = g[j] * scale;
                m[j] = b1 * m[j] + (1.0 - b1) * gj;
                v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                let mhat = m[j] / (1.0 - b1.powi(t as i32 + 1));
                let vhat = v[j] / (1.0 - b2.powi(t as i32 + 1));
                th[j] -= lr * mhat / (vhat.sqrt() + eps);
            }
            want.push(th);
        }
        for (dtype, tol) in [(candle_core::DType::F64, 1e-14), (candle_core::DType::F32, 1e-6)] {
            let p =
                Var::from_tensor(&Tensor::new(&[1.0f64, -1.0, 0.5], &Device::Cpu).unwrap().to_dtype(dtype).unwrap())
                    .unwrap();
            let params = vec![("p".to_string(), p.clone())];
            let mut adam = Adam::new(&params).unwrap();
            for (g, want) in grads.iter().zip(&want) {
                let g = Tensor::new(g, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                adam.step(&params, vec![g], lr, clip).unwrap();
                let got = p.as_tensor().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() < tol, "{dtype:?}: {got:?} vs {want:?}");
                }
            }
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let g = vec![Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap()];
        assert!((Adam::global_norm(&g).unwrap() - 5.0).abs() < 1e-12);
    }
}
