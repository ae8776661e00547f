//! `scoregen._scoregen`: the native half of the Python package `scoregen`
//! (the Python half, `python/scoregen/`, re-exports it with docstrings,
//! stubs and the optional PyTorch loader).
//!
//! Everything here calls the library's own functions: a run is loaded by
//! `app::run_dir::LoadedModel` and sampled through
//! `app::commands::sample::sample_loaded` (the path `scoregen sample` takes),
//! likelihoods by `app::commands::likelihood::likelihood_of_points`, metrics
//! by `app::commands::eval::evaluate`, training by `app::commands::train::train_and_report`,
//! and any sampler by the one dispatcher `SamplerSpec::sample`. Long Rust work
//! runs with the GIL released.

// Python's keyword arguments are the Rust functions' parameters.
#![allow(clippy::too_many_arguments)]

mod convert;
mod metrics;
mod oracle;
mod progress;
mod pyscore;
mod run;
mod sampling;
mod sde;
mod train;

use pyo3::prelude::*;

#[pymodule]
fn _scoregen(m: &Bound<'_, PyModule>) -> PyResult<()> {
    scoregen::init();
    m.add_class::<sde::PySde>()?;
    m.add_class::<sde::Ve>()?;
    m.add_class::<sde::Vp>()?;
    m.add_class::<sde::SubVp>()?;
    m.add_class::<sde::Ddpm>()?;
    m.add_class::<oracle::PyMixture>()?;
    m.add_class::<run::Run>()?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_function(wrap_pyfunction!(train::train_classifier, m)?)?;
    m.add_function(wrap_pyfunction!(run::_save_weights, m)?)?;
    m.add_function(wrap_pyfunction!(sampling::sample, m)?)?;
    m.add_function(wrap_pyfunction!(sampling::log_likelihood, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::evaluate_json, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::inception, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::frechet_distance, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::inception_score, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::precision_recall, m)?)?;
    m.add_function(wrap_pyfunction!(sampling::sampler_names, m)?)?;
    m.add_function(wrap_pyfunction!(sampling::sampling_noise, m)?)?;
    Ok(())
}
