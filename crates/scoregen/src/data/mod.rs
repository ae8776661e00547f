//! Data: toy 2-D sets, Gaussian-mixture specs, `.npy` io.

pub mod npy;
pub mod points;
pub mod spec;
pub mod toy;

pub use points::Points;

use crate::error::{Error, Result};
use crate::oracle::GaussianMixture;
use crate::rng::Rng;
use std::path::Path;

/// A training set, and its exact density when it is a Gaussian mixture.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// What the user named: a toy set name or a file path.
    pub name: String,
    pub points: Points,
    pub oracle: Option<GaussianMixture>,
}

/// Where training data comes from: a toy set by name, a mixture spec (`.toml`) or a `.npy` file.
pub fn load(source: &str, n: usize, rng: &mut Rng) -> Result<Dataset> {
    let path = Path::new(source);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (points, oracle) = match ext {
        "npy" => (npy::read_points(path)?, None),
        "toml" => {
            let mix = spec::read_mixture(path)?;
            (mix.sample(n, rng), Some(mix))
        }
        _ => {
            let toy = toy::Toy::by_name(source).ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown data set `{source}`: expected one of {} or a path ending in .npy or .toml",
                    toy::NAMES.join(", ")
                ))
            })?;
            (toy.sample(n, rng), toy.mixture())
        }
    };
    if points.n == 0 {
        return Err(Error::data(source, "the data set is empty"));
    }
    Ok(Dataset { name: source.to_string(), points, oracle })
}
