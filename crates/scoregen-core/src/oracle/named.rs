//! The named mixtures `gmm8`, `gmm25` and `unbalanced` as exact densities
//! (the data sets of the same names in [`crate::data::toy`] sample them).

use super::GaussianMixture;
use std::f64::consts::PI;

/// A named mixture: its name (a `data.source`), a line for `scoregen list`, and the mixture.
pub struct NamedMixture {
    pub name: &'static str,
    pub description: &'static str,
    pub mixture: fn() -> GaussianMixture,
}

/// Every named mixture, in the order `scoregen list` shows them.
pub static NAMED_MIXTURES: &[NamedMixture] = &[
    NamedMixture { name: "gmm8", description: "8 equal Gaussians (std 0.3) on a circle of radius 4", mixture: gmm8 },
    NamedMixture {
        name: "gmm25",
        description: "25 equal Gaussians (std 0.2) on a 5×5 grid with spacing 2",
        mixture: gmm25,
    },
    NamedMixture {
        name: "unbalanced",
        description: "two Gaussians (std 1) at (−5,−5) and (5,5) with weights 0.8 / 0.2: the low-density pitfall",
        mixture: unbalanced,
    },
];

/// The exact mixture behind a named set, if it is one.
pub fn named_mixture(name: &str) -> Option<GaussianMixture> {
    NAMED_MIXTURES.iter().find(|m| m.name == name).map(|m| (m.mixture)())
}

fn gmm8() -> GaussianMixture {
    let means = (0..8)
        .map(|k| {
            let a = 2.0 * PI * k as f64 / 8.0;
            vec![4.0 * a.cos(), 4.0 * a.sin()]
        })
        .collect();
    GaussianMixture::isotropic(vec![1.0; 8], means, &[0.3; 8]).expect("a valid mixture")
}

fn gmm25() -> GaussianMixture {
    let means = (0..25).map(|k| vec![-4.0 + 2.0 * (k / 5) as f64, -4.0 + 2.0 * (k % 5) as f64]).collect();
    GaussianMixture::isotropic(vec![1.0; 25], means, &[0.2; 25]).expect("a valid mixture")
}

fn unbalanced() -> GaussianMixture {
    GaussianMixture::isotropic(vec![0.8, 0.2], vec![vec![-5.0, -5.0], vec![5.0, 5.0]], &[1.0, 1.0])
        .expect("a valid mixture")
}
