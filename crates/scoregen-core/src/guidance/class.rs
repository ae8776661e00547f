//! Class-conditional sampling as a score: classifier guidance (Song et al. 2021,
//! App. I.1; Dhariwal & Nichol 2021) and classifier-free guidance (Ho & Salimans 2022).

use crate::oracle::OracleScore;
use crate::score::ScoreFn;
use candle_core::{Device, Result, Tensor};

/// The class y asked of each row: one class for the whole batch, or one per row
/// (a balanced set of every class in one sampling run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Labels {
    /// Every row is class y.
    All(usize),
    /// Row i is class yᵢ (as many labels as rows).
    Rows(Vec<usize>),
}

impl Labels {
    /// The largest class asked.
    pub fn max(&self) -> usize {
        match self {
            Labels::All(y) => *y,
            Labels::Rows(ys) => ys.iter().copied().max().unwrap_or(0),
        }
    }

    /// The labels as u32 [1] (one class) or [N] (one per row).
    pub fn tensor(&self, device: &Device) -> Result<Tensor> {
        match self {
            Labels::All(y) => Tensor::new(&[*y as u32], device),
            Labels::Rows(ys) => Tensor::from_vec(ys.iter().map(|&y| y as u32).collect::<Vec<_>>(), ys.len(), device),
        }
    }

    /// Row-wise f(yᵢ) for a batch of n rows: f(y) itself for one class, else
    /// Σ_y 1[yᵢ = y]·f(y)ᵢ over the classes present (f is evaluated once per
    /// distinct class, on the whole batch, for the parts that take a single y).
    pub fn per_row(&self, n: usize, f: impl Fn(usize) -> Result<Tensor>) -> Result<Tensor> {
        let ys = match self {
            Labels::All(y) => return f(*y),
            Labels::Rows(ys) => ys,
        };
        if ys.len() != n {
            candle_core::bail!("{} labels for a batch of {n} rows", ys.len());
        }
        let mut classes = ys.clone();
        classes.sort_unstable();
        classes.dedup();
        let mut out: Option<Tensor> = None;
        for &y in &classes {
            let fy = f(y)?;
            let mask: Vec<f32> = ys.iter().map(|&l| f32::from(u8::from(l == y))).collect();
            let mut shape = vec![1; fy.rank()];
            shape[0] = n;
            let mask = Tensor::from_vec(mask, shape, fy.device())?.to_dtype(fy.dtype())?;
            let part = fy.broadcast_mul(&mask)?;
            out = Some(match out {
                None => part,
                Some(o) => (o + part)?,
            });
        }
        out.ok_or_else(|| candle_core::Error::Msg("no labels".into()))
    }
}

impl From<usize> for Labels {
    fn from(y: usize) -> Self {
        Labels::All(y)
    }
}

/// Examples per class 0..K−1 among `labels` (the weights of
/// [`proportional_labels`] for a training set); a label ≥ K is refused.
pub fn count_labels(labels: &[u8], k: usize) -> crate::error::Result<Vec<u64>> {
    let mut counts = vec![0u64; k];
    for &y in labels {
        let y = y as usize;
        if y >= k {
            return Err(crate::error::Error::Invalid(format!(
                "a training label is {y}, but the model knows classes 0..{}",
                k.max(1) - 1
            )));
        }
        counts[y] += 1;
    }
    Ok(counts)
}

/// n labels in the proportions `weights` (unnormalized, one per class): class
/// counts by largest remainder, so each class gets ⌊n·pₖ⌋ or one more, in an
/// order shuffled by `rng` (a balanced set, not n independent draws).
pub fn proportional_labels(weights: &[f64], n: usize, rng: &mut crate::rng::Rng) -> Labels {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // the largest remainders get the rows left over (ties: the lower class)
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let missing = n - counts.iter().sum::<usize>();
    for &k in order.iter().take(missing) {
        counts[k] += 1;
    }
    let mut ys: Vec<usize> = counts.iter().enumerate().flat_map(|(k, &c)| std::iter::repeat_n(k, c)).collect();
    // Fisher–Yates with the run's sampling stream
    for i in (1..ys.len()).rev() {
        let j = (rng.uniform() * (i + 1) as f64) as usize;
        ys.swap(i, j.min(i));
    }
    Labels::Rows(ys)
}

/// A (noise-aware) class posterior p_t(y | x): the exact one of a mixture whose
/// components are the classes, or a trained time-conditioned classifier.
pub trait ClassPosterior {
    /// K, the number of classes.
    fn classes(&self) -> usize;
    /// log p_t(y | x) for every class, [N, K], at times t [N].
    fn log_posteriors(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
    /// ∇ₓ log p_t(y | x) for one class y, shaped like x.
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
    pub labels: Labels,
    pub scale: f64,
}

impl ScoreFn for ClassifierGuided<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        // no shortcut at scale 0: s + 0·∇ log p_t(y | x) is s, and w = 0 is tested through this formula
        let s = self.score.score(x, t)?;
        let grad = self.labels.per_row(x.dim(0)?, |y| self.classifier.grad_log_posterior(x, t, y))?;
        s + grad.affine(self.scale, 0.0)?
    }
}

/// A score that can be asked with or without a class: s(x, t, y) and s(x, t).
pub trait ConditionalScore {
    /// K, the number of classes.
    fn classes(&self) -> usize;
    /// s(x, t, y) for `Some(labels)` (row i given yᵢ), the unconditional s(x, t) for `None`.
    fn score_given(&self, x: &Tensor, t: &Tensor, labels: Option<&Labels>) -> Result<Tensor>;
}

impl ConditionalScore for OracleScore {
    fn classes(&self) -> usize {
        self.mixture.n_components()
    }
    fn score_given(&self, x: &Tensor, t: &Tensor, labels: Option<&Labels>) -> Result<Tensor> {
        match labels {
            Some(ys) => ys.per_row(x.dim(0)?, |y| self.class_score(x, t, y)),
            None => self.score(x, t),
        }
    }
}

/// Classifier-free guidance: (1 + w)·s(x, t, y) − w·s(x, t). w = 0 is the plain
/// conditional score; w > 0 follows s(x, t, y) + w·∇ₓ log p_t(y | x), the implicit
/// classifier being the difference of the two scores.
pub struct ClassifierFree<'a> {
    pub model: &'a dyn ConditionalScore,
    pub labels: Labels,
    pub w: f64,
}

impl ScoreFn for ClassifierFree<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let cond = self.model.score_given(x, t, Some(&self.labels))?;
        if self.w == 0.0 {
            // (1 + 0)·s(x, t, y) − 0·s(x, t) is s(x, t, y) exactly: skip the unconditional evaluation
            return Ok(cond);
        }
        cond.affine(1.0 + self.w, 0.0)? - self.model.score_given(x, t, None)?.affine(self.w, 0.0)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn counts(l: &Labels, k: usize) -> Vec<usize> {
        let Labels::Rows(ys) = l else { panic!("expected one label per row") };
        (0..k).map(|c| ys.iter().filter(|&&y| y == c).count()).collect()
    }

    /// Largest remainder: n·pₖ rounded so the counts sum to n, each within one of n·pₖ.
    #[test]
    fn label_counts_per_class_and_labels_beyond_k_refused() {
        assert_eq!(count_labels(&[2, 0, 2, 2], 4).unwrap(), vec![1, 0, 3, 0]);
        let e = count_labels(&[0, 3], 3).unwrap_err().to_string();
        assert!(e.contains("label is 3") && e.contains("0..2"), "{e}");
    }

    #[test]
    fn proportional_labels_have_the_exact_counts() {
        let mut rng = Rng::new(0, 6);
        assert_eq!(counts(&proportional_labels(&[1.0, 2.0, 7.0], 10, &mut rng), 3), [1, 2, 7]);
        assert_eq!(counts(&proportional_labels(&[50.0, 30.0, 20.0], 500, &mut rng), 3), [250, 150, 100]);
        // 7 · (1/3) = 2.33 each: one class gets the leftover row
        let c = counts(&proportional_labels(&[1.0, 1.0, 1.0], 7, &mut rng), 3);
        assert_eq!(c.iter().sum::<usize>(), 7);
        assert!(c.iter().all(|&k| k == 2 || k == 3), "{c:?}");
        // 0.6·3 = 1.8, 0.4·3 = 1.2: largest remainder gives 2 and 1
        assert_eq!(counts(&proportional_labels(&[0.6, 0.4], 3, &mut rng), 2), [2, 1]);
        // an absent class gets no rows
        assert_eq!(counts(&proportional_labels(&[0.0, 1.0], 4, &mut rng), 2), [0, 4]);
    }

    /// The order is shuffled by the stream (not sorted by class), reproducibly.
    #[test]
    fn proportional_labels_are_shuffled_by_the_seed() {
        let w = [1.0; 10];
        let a = proportional_labels(&w, 100, &mut Rng::new(1, 6));
        assert_eq!(a, proportional_labels(&w, 100, &mut Rng::new(1, 6)));
        assert_ne!(a, proportional_labels(&w, 100, &mut Rng::new(2, 6)));
        let Labels::Rows(ys) = &a else { unreachable!() };
        assert!(ys.windows(2).any(|p| p[1] < p[0]), "not shuffled: {ys:?}");
    }

    /// per_row keeps row i of f(yᵢ), and refuses a label count that is not the batch's.
    #[test]
    fn per_row_selects_each_rows_class() {
        let dev = candle_core::Device::Cpu;
        let f = |y: usize| Tensor::full(y as f32 + 0.5, (4, 2), &dev);
        let out = Labels::Rows(vec![2, 0, 2, 1]).per_row(4, f).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(out, [[2.5, 2.5], [0.5, 0.5], [2.5, 2.5], [1.5, 1.5]]);
        assert_eq!(Labels::All(1).per_row(4, f).unwrap().to_vec2::<f32>().unwrap(), [[1.5; 2]; 4]);
        assert!(Labels::Rows(vec![0, 1]).per_row(4, f).is_err());
    }
}
