//! The named mixtures `gmm8`, `gmm25` and `unbalanced` as exact densities
//! (the data sets of the same names in [`crate::data::toy`] sample them).

use super::GaussianMixture;
use std::f64::consts::PI;

/// The exact mixture behind a named set, if it is one.
pub fn named_mixture(name: &str) -> Option<GaussianMixture> {
    let mix = match name {
        "gmm8" => {
            let means = (0..8)
                .map(|k| {
                    let a = 2.0 * PI * k as f64 / 8.0;
                    vec![4.0 * a.cos(), 4.0 * a.sin()]
                })
                .collect();
            GaussianMixture::isotropic(vec![1.0; 8], means, &[0.3; 8])
        }
        "gmm25" => {
            let means = (0..25).map(|k| vec![-4.0 + 2.0 * (k / 5) as f64, -4.0 + 2.0 * (k % 5) as f64]).collect();
            GaussianMixture::isotropic(vec![1.0; 25], means, &[0.2; 25])
        }
        "unbalanced" => GaussianMixture::isotropic(vec![0.8, 0.2], vec![vec![-5.0, -5.0], vec![5.0, 5.0]], &[1.0, 1.0]),
        _ => return None,
    };
    Some(mix.expect("the named mixtures are valid"))
}
