//! Score-matching objectives. Each takes a [`crate::score::ScoreFn`] and never
//! knows which network or SDE is behind it beyond the `Sde` trait.

pub mod continuous;

pub use continuous::{Dsm, Reduction, Weighting};
