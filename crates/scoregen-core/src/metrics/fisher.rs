//! Fisher divergence of a score against the exact oracle:
//! F(t) = E_{x ~ p_t} ‖s_θ(x, t) − ∇ log p_t(x)‖².

use crate::oracle::OracleScore;
use crate::points::Points;
use crate::rng::Rng;
use crate::score::ScoreFn;
use candle_core::{DType, Device, Result};

/// F(t) on each time of `times`, estimated with `n` exact samples of p_t per
/// time (drawn on the CPU, evaluated by `score` on `device`, its device).
pub fn fisher_divergence(
    score: &dyn ScoreFn,
    oracle: &OracleScore,
    times: &[f64],
    n: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<(f64, f64)>> {
    times
        .iter()
        .map(|&t| {
            let pt = oracle.at(t);
            let x = pt.sample(n, rng);
            let s = Points::from_tensor(&score.score_at(&x.to_tensor(DType::F32, device)?, t)?)?;
            let exact = pt.score(&x);
            let f = s.data.iter().zip(&exact.data).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n as f64;
            Ok((t, f))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::named_mixture;
    use crate::sde::{Sde, VpSde};
    use candle_core::Tensor;
    use std::sync::Arc;

    #[test]
    fn oracle_has_zero_divergence_and_a_biased_score_does_not() {
        let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
        let oracle = OracleScore::new(named_mixture("gmm8").unwrap(), sde);
        let mut rng = Rng::new(4, 0);
        let f = fisher_divergence(&oracle, &oracle, &[0.1, 0.5], 500, &mut rng, &Device::Cpu).unwrap();
        assert!(f.iter().all(|(_, v)| *v < 1e-8), "{f:?}");
        struct Shifted<'a>(&'a OracleScore);
        impl ScoreFn for Shifted<'_> {
            fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
                self.0.score(x, t)? + 1.0
            }
        }
        // a constant offset of 1 in each of 2 coordinates adds exactly 2
        let f = fisher_divergence(&Shifted(&oracle), &oracle, &[0.5], 500, &mut rng, &Device::Cpu).unwrap();
        assert!((f[0].1 - 2.0).abs() < 1e-3, "{f:?}");
    }
}
