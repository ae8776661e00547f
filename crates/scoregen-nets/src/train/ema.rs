//! Exponential moving average of the weights (Polyak averaging), as in score_sde:
//! θ̄ ← d·θ̄ + (1−d)·θ with d = min(rate, (1+n)/(10+n)) after n updates, so
//! early averages are not dominated by the initialization.

use super::adam::{chunk, with_slices, CHUNK};
use crate::nets::kernels::fused::{par_ranges, SharedMut};
use candle_core::{DType, Result, Tensor, Var, WithDType};

#[derive(Debug, Clone)]
pub struct Ema {
    pub rate: f64,
    /// Averaged weights, in the order of the parameter list.
    pub shadow: Vec<Tensor>,
    pub updates: usize,
}

impl Ema {
    pub fn new(rate: f64, params: &[(String, Var)]) -> Result<Self> {
        let shadow = params.iter().map(|(_, p)| p.as_tensor().copy()).collect::<Result<_>>()?;
        Ok(Self { rate, shadow, updates: 0 })
    }

    /// The decay used at the next update.
    pub fn decay(&self) -> f64 {
        let n = self.updates as f64;
        self.rate.min((1.0 + n) / (10.0 + n))
    }

    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        let d = self.decay();
        for (s, (_, p)) in self.shadow.iter_mut().zip(params) {
            // one pass over the values (f64 arithmetic); the result is a fresh,
            // untracked tensor, so no graph reaches back to past steps
            *s = match p.dtype() {
                // off the CPU (a GPU): candle's ops, the same f64 arithmetic
                _ if !p.device().is_cpu() => {
                    let f64 = |t: &Tensor| t.detach().to_dtype(DType::F64);
                    (f64(s)?.affine(d, 0.0)? + f64(p.as_tensor())?.affine(1.0 - d, 0.0)?)?.to_dtype(p.dtype())?
                }
                DType::F32 => average::<f32>(s, p.as_tensor(), d)?,
                DType::F64 => average::<f64>(s, p.as_tensor(), d)?,
                dt => candle_core::bail!("EMA: unsupported dtype {dt:?}"),
            };
        }
        self.updates += 1;
        Ok(())
    }
}

/// d·s + (1−d)·θ elementwise.
fn average<T: WithDType + num_traits::Zero>(s: &Tensor, theta: &Tensor, d: f64) -> Result<Tensor> {
    let mut values = vec![T::zero(); theta.elem_count()];
    with_slices::<T, _>(&[s, theta], |x| {
        let n = values.len();
        let out = SharedMut::new(&mut values);
        par_ranges(n.div_ceil(CHUNK), |chunks| {
            for c in chunks {
                let r = chunk(c, n);
                // SAFETY: chunk c, written by this task only.
                let out = unsafe { out.slice(r.start, r.len()) };
                for ((o, &s), &p) in out.iter_mut().zip(&x[0][r.clone()]).zip(&x[1][r]) {
                    *o = T::from_f64(d * s.to_f64() + (1.0 - d) * p.to_f64());
                }
            }
        })
    })?;
    Tensor::from_vec(values, theta.shape(), theta.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn average_follows_the_formula() {
        let p = Var::new(&[0.0f64], &Device::Cpu).unwrap();
        let params = vec![("p".to_string(), p.clone())];
        let mut ema = Ema::new(0.5, &params).unwrap();
        p.set(&Tensor::new(&[1.0f64], &Device::Cpu).unwrap()).unwrap();
        // first decay: min(0.5, 1/10) = 0.1 → 0.1·0 + 0.9·1
        ema.update(&params).unwrap();
        assert!((ema.shadow[0].to_vec1::<f64>().unwrap()[0] - 0.9).abs() < 1e-12);
        for _ in 0..100 {
            ema.update(&params).unwrap();
        }
        assert_eq!(ema.decay(), 0.5);
        assert!((ema.shadow[0].to_vec1::<f64>().unwrap()[0] - 1.0).abs() < 1e-12);
    }
}
