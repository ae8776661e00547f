//! Gaussian mixtures given in a TOML file:
//!
//! ```toml
//! [[component]]
//! weight = 0.8
//! mean = [-5.0, -5.0]
//! std = 1.0                      # isotropic, or:
//! # cov = [[1.0, 0.0], [0.0, 1.0]]
//! ```

use crate::error::{Error, Result};
use crate::oracle::GaussianMixture;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    component: Vec<Component>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Component {
    weight: f64,
    mean: Vec<f64>,
    std: Option<f64>,
    cov: Option<Vec<Vec<f64>>>,
}

/// The most covariance entries (Σ_k D²) a spec may ask for: 2^26 f64s, 512 MiB.
pub const MAX_COV_ENTRIES: usize = 1 << 26;

/// Parses a mixture spec; errors name the file and the component field.
pub fn parse_mixture(text: &str, file: &str) -> Result<GaussianMixture> {
    let spec: Spec = toml::from_str(text).map_err(|e| Error::config(file, "component", e.message().to_string()))?;
    // Each component holds a dense D×D covariance: bound K·D² before building
    // them, so a long `mean` cannot make us allocate gigabytes.
    let entries =
        spec.component.iter().map(|c| c.mean.len().saturating_mul(c.mean.len())).fold(0usize, usize::saturating_add);
    if entries > MAX_COV_ENTRIES {
        return Err(Error::config(
            file,
            "component",
            format!("the covariances would hold {entries} numbers (K·D²); at most {MAX_COV_ENTRIES} are allowed"),
        ));
    }
    let mut covs = Vec::with_capacity(spec.component.len());
    for (k, c) in spec.component.iter().enumerate() {
        let d = c.mean.len();
        let cov = match (&c.std, &c.cov) {
            (Some(s), None) if s.is_finite() && *s > 0.0 => {
                (0..d).map(|i| (0..d).map(|j| if i == j { s * s } else { 0.0 }).collect()).collect()
            }
            (Some(s), None) => {
                return Err(Error::config(file, format!("component[{k}].std"), format!("must be > 0 (got {s})")))
            }
            (None, Some(cov)) => cov.clone(),
            _ => {
                return Err(Error::config(
                    file,
                    format!("component[{k}]"),
                    "give exactly one of `std` (isotropic) or `cov` (a D×D matrix)",
                ))
            }
        };
        covs.push(cov);
    }
    let weights = spec.component.iter().map(|c| c.weight).collect();
    let means = spec.component.iter().map(|c| c.mean.clone()).collect();
    GaussianMixture::new(weights, means, covs).map_err(|e| Error::config(file, "component", e.to_string()))
}

/// Reads a mixture spec from a `.toml` file.
pub fn read_mixture(path: &Path) -> Result<GaussianMixture> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_mixture(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_isotropic_and_full_components() {
        let m = parse_mixture(
            "[[component]]\nweight = 3\nmean = [0.0, 1.0]\nstd = 0.5\n[[component]]\nweight = 1\nmean = [2.0, 2.0]\ncov = [[1.0, 0.2], [0.2, 1.0]]\n",
            "m.toml",
        )
        .unwrap();
        assert_eq!(m.n_components(), 2);
        assert!((m.weights()[0] - 0.75).abs() < 1e-12);
        assert!((m.cov(0)[(1, 1)] - 0.25).abs() < 1e-12);
    }

    #[test]
    fn errors_name_file_and_component() {
        let e =
            parse_mixture("[[component]]\nweight = 1\nmean = [0.0]\nstd = -1.0\n", "m.toml").unwrap_err().to_string();
        assert!(e.contains("m.toml") && e.contains("component[0].std"), "{e}");
        let e = parse_mixture("[[component]]\nweight = 1\nmean = [0.0]\nstd = 1.0\ncolour = 3\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e =
            parse_mixture("[[component]]\nweight = 1\nmean = [0.0, 0.0]\ncov = [[1.0, 2.0], [2.0, 1.0]]\n", "m.toml")
                .unwrap_err()
                .to_string();
        assert!(e.contains("positive definite"), "{e}");
    }
}
