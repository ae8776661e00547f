//! Named toy 2-D data sets. The mixtures (`gmm8`, `gmm25`, `unbalanced`) come
//! with their exact density (the oracle); the others are samplers only.

use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::rng::Rng;
use std::f64::consts::PI;

/// A named toy distribution.
#[derive(Debug, Clone)]
pub enum Toy {
    Mixture(GaussianMixture),
    Moons,
    SwissRoll,
    Checkerboard,
}

pub use crate::oracle::named_mixture;

/// A toy set that is a sampler only: (its constructor, name, description).
type SampledToy = (fn() -> Toy, &'static str, &'static str);

/// The toy sets that are samplers only (no exact density).
static SAMPLED: &[SampledToy] = &[
    (|| Toy::Moons, "moons", "two interleaved half-circles with Gaussian noise 0.1, scaled ×2"),
    (|| Toy::SwissRoll, "swiss-roll", "a 2-D Swiss roll with noise 0.25, scaled to about ±3"),
    (|| Toy::Checkerboard, "checkerboard", "uniform on the black squares of a 4×4 checkerboard over [−4, 4]²"),
];

/// Every toy set, (name, description): the named mixtures
/// ([`crate::oracle::NAMED_MIXTURES`]), then the sampled sets.
pub fn catalogue() -> Vec<(&'static str, &'static str)> {
    crate::oracle::NAMED_MIXTURES
        .iter()
        .map(|m| (m.name, m.description))
        .chain(SAMPLED.iter().map(|(_, n, d)| (*n, *d)))
        .collect()
}

/// The names accepted as `data.source`, in [`catalogue`]'s order.
pub fn names() -> Vec<&'static str> {
    catalogue().into_iter().map(|(n, _)| n).collect()
}

impl Toy {
    pub fn by_name(name: &str) -> Option<Self> {
        named_mixture(name)
            .map(Toy::Mixture)
            .or_else(|| SAMPLED.iter().find(|(_, n, _)| *n == name).map(|(make, _, _)| make()))
    }

    /// The exact density, when the set is a Gaussian mixture.
    pub fn mixture(&self) -> Option<GaussianMixture> {
        match self {
            Toy::Mixture(m) => Some(m.clone()),
            _ => None,
        }
    }

    pub fn sample(&self, n: usize, rng: &mut Rng) -> Points {
        let mut data = Vec::with_capacity(2 * n);
        match self {
            Toy::Mixture(m) => return m.sample(n, rng),
            Toy::Moons => {
                for i in 0..n {
                    let a = PI * rng.uniform();
                    let (x, y) = if i % 2 == 0 { (a.cos(), a.sin()) } else { (1.0 - a.cos(), 0.5 - a.sin()) };
                    data.push(2.0 * (x - 0.5 + 0.1 * rng.normal()));
                    data.push(2.0 * (y - 0.25 + 0.1 * rng.normal()));
                }
            }
            Toy::SwissRoll => {
                for _ in 0..n {
                    let r = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
                    data.push((r * r.cos() + 0.25 * rng.normal() * 4.0) / 5.0);
                    data.push((r * r.sin() + 0.25 * rng.normal() * 4.0) / 5.0);
                }
            }
            Toy::Checkerboard => {
                // Rejection-free: pick a black square, then a uniform point in it.
                for _ in 0..n {
                    let (mut i, j) = (rng.below(4), rng.below(4));
                    if (i + j) % 2 == 1 {
                        i ^= 1;
                    }
                    data.push(-4.0 + 2.0 * (i as f64 + rng.uniform()));
                    data.push(-4.0 + 2.0 * (j as f64 + rng.uniform()));
                }
            }
        }
        Points::new(n, 2, data)
    }
}
