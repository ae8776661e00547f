//! Class-conditional sampling as a score: classifier guidance (Song et al. 2021,
//! App. I.1; Dhariwal & Nichol 2021) and classifier-free guidance (Ho & Salimans 2022).

use crate::oracle::OracleScore;
use crate::score::ScoreFn;
use candle_core::{Result, Tensor};

/// A (noise-aware) class posterior p_t(y | x): the exact one of a mixture whose
/// components are the classes, or a trained time-conditioned classifier.
pub trait ClassPosterior {
    /// K, the number of classes.
    fn classes(&self) -> usize;
    /// log p_t(y | x) for every class, [N, K], at times t [N].
    fn log_posteriors(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
    /// ∇ₓ log p_t(y | x), shaped like x.
    fn grad_log_posterior(&self, x: &Tensor, t: &Tensor, y: usize) -> Result<Tensor>;
}

impl ClassPosterior for OracleScore {
    fn classes(&self) -> usize {
        self.mixture.n_components()
    }
    fn log_posteriors(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.class_log_posteriors(x, t)
    }
    fn grad_log_posterior(&self, x: &Tensor, t: &Tensor, y: usize) -> Result<Tensor> {
        self.class_posterior_grad(x, t, y)
    }
}

/// Classifier guidance: s(x, t) + w·∇ₓ log p_t(y | x). With w = 1 and exact
/// parts this is the score of p_t(x | y); w > 1 sharpens towards p_t(y | x)^w.
pub struct ClassifierGuided<'a> {
    pub score: &'a dyn ScoreFn,
    pub classifier: &'a dyn ClassPosterior,
    pub class: usize,
    pub scale: f64,
}

impl ScoreFn for ClassifierGuided<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        // no shortcut at scale 0: s + 0·∇ log p_t(y | x) is s, and w = 0 is tested through this formula
        let s = self.score.score(x, t)?;
        s + self.classifier.grad_log_posterior(x, t, self.class)?.affine(self.scale, 0.0)?
    }
}

/// A score that can be asked with or without a class: s(x, t, y) and s(x, t).
pub trait ConditionalScore {
    /// K, the number of classes.
    fn classes(&self) -> usize;
    /// s(x, t, y) for `Some(y)`, the unconditional s(x, t) for `None`.
    fn score_given(&self, x: &Tensor, t: &Tensor, class: Option<usize>) -> Result<Tensor>;
}

impl ConditionalScore for OracleScore {
    fn classes(&self) -> usize {
        self.mixture.n_components()
    }
    fn score_given(&self, x: &Tensor, t: &Tensor, class: Option<usize>) -> Result<Tensor> {
        match class {
            Some(y) => self.class_score(x, t, y),
            None => self.score(x, t),
        }
    }
}

/// Classifier-free guidance: (1 + w)·s(x, t, y) − w·s(x, t). w = 0 is the plain
/// conditional score; w > 0 follows s(x, t, y) + w·∇ₓ log p_t(y | x), the implicit
/// classifier being the difference of the two scores.
pub struct ClassifierFree<'a> {
    pub model: &'a dyn ConditionalScore,
    pub class: usize,
    pub w: f64,
}

impl ScoreFn for ClassifierFree<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        // no shortcut at w = 0: (1 + 0)·s(x, t, y) − 0·s(x, t) is s(x, t, y), and w = 0 is tested through this formula
        let cond = self.model.score_given(x, t, Some(self.class))?;
        cond.affine(1.0 + self.w, 0.0)? - self.model.score_given(x, t, None)?.affine(self.w, 0.0)?
    }
}
