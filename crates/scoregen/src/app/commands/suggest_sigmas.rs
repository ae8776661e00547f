//! `scoregen suggest-sigmas`: a noise ladder for a data set by the NCSNv2 rules.

use crate::data;
use crate::error::{Error, Result};
use crate::rng::{streams, Rng};
use crate::sde::ladder::{self, Suggestion};

/// σ_max, γ, L and the Langevin step size for `source` (a toy set, a mixture
/// spec or an [N, D] `.npy`; `n` points drawn from a toy set or mixture) by
/// Song & Ermon's (2020) rules, from the largest pairwise distance.
pub fn suggest_sigmas(source: &str, n: usize, sigma_min: f64, steps_per_level: usize) -> Result<Suggestion> {
    if !(sigma_min.is_finite() && sigma_min > 0.0) || steps_per_level == 0 || n < 2 {
        return Err(Error::Invalid("--sigma-min must be > 0, --steps-per-level ≥ 1 and --n ≥ 2".into()));
    }
    let ds = data::load(source, n, &mut Rng::new(0, streams::SUGGEST_SIGMAS_DATA))?;
    let dmax = ladder::max_pairwise_distance(&ds.points);
    Ok(ladder::suggest(dmax, ds.points.d, sigma_min, steps_per_level))
}
