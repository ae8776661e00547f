//! Exponential moving average of the weights (Polyak averaging), as in score_sde:
//! θ̄ ← d·θ̄ + (1−d)·θ with d = min(rate, (1+n)/(10+n)) after n updates, so
//! early averages are not dominated by the initialization.

use candle_core::{Result, Tensor, Var};

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
            // detached: the average must not keep a graph back to every past step
            *s = (s.affine(d, 0.0)? + p.as_tensor().detach().affine(1.0 - d, 0.0)?)?.detach();
        }
        self.updates += 1;
        Ok(())
    }
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
