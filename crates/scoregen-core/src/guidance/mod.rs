//! Controllable generation without retraining (Song et al. 2021, §5 and App. I):
//! once the score is known, condition on what you know,
//!
//! ∇ₓ log p_t(x | y) = ∇ₓ log p_t(x) + ∇ₓ log p_t(y | x).
//!
//! - [`inpaint`]: y is part of x (coordinates, pixels under a mask); the known
//!   part is held to the observation perturbed to each step's noise level while
//!   the rest follows the reverse SDE or annealed Langevin (a sampler
//!   [`Constraint`](crate::samplers::Constraint)).
//! - [`class`]: y is a class; classifier guidance adds w·∇ₓ log p_t(y | x) of a
//!   noise-aware classifier to the score, classifier-free guidance mixes the
//!   conditional and unconditional scores of one network. Both are [`ScoreFn`]
//!   wrappers, so every sampler runs them unchanged.
//!   The noise-aware classifier is `scoregen_nets::nets::Classifier` with its time
//!   input, trained by `scoregen_nets::train::classifier` on data perturbed by the SDE.
//!
//! [`ScoreFn`]: crate::score::ScoreFn

pub mod class;
pub mod inpaint;

pub use class::{
    count_labels, proportional_labels, ClassPosterior, ClassifierFree, ClassifierGuided, ConditionalScore, Labels,
};
pub use inpaint::{Inpaint, MaskSpec};
