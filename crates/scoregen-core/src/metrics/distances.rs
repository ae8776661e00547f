//! Distances between two sample sets X = {x_1..x_n} and Y = {y_1..y_m} in R^D.
//!
//! These compare a generated sample with a reference sample (or with exact
//! draws from the target). All arithmetic is f64. The O(n·m) pairwise sums
//! stream over a column-major copy of one set in blocks, with no allocation
//! per pair, in loops the compiler vectorizes (including the exponential, see
//! `exp_nonpositive`), and large sums are spread over scoped threads with a
//! result that does not depend on the thread count.

use crate::points::Points;
use rand::Rng;
use rand_distr::StandardNormal;
use std::sync::atomic::{AtomicUsize, Ordering};

/// At most this many pooled points enter [`median_bandwidth`].
const MEDIAN_MAX_POINTS: usize = 1000;

/// Median heuristic for the kernel bandwidth:
///
/// h = median { ‖z_i − z_j‖ : i < j } over the pooled set Z = X ∪ Y.
///
/// When Z has more than 1000 points, the 1000 evenly spaced pooled indices
/// ⌊k·|Z|/1000⌋, k = 0..999, are used instead (deterministic; bounds the cost
/// to ~5·10⁵ distances). For an even number of distances the median is the
/// mean of the two middle ones.
///
/// Returns NaN if any coordinate is not finite. Panics if the pooled set has
/// fewer than 2 points or X and Y differ in D.
pub fn median_bandwidth(x: &Points, y: &Points) -> f64 {
    check_same_dim(x, y);
    let total = x.n + y.n;
    assert!(total >= 2, "median_bandwidth: need at least 2 pooled points");
    if !(x.all_finite() && y.all_finite()) {
        return f64::NAN;
    }
    let k = total.min(MEDIAN_MAX_POINTS);
    let d = x.d;
    let mut pooled = Vec::with_capacity(k * d);
    for idx in (0..k).map(|t| t * total / k) {
        let row = if idx < x.n { x.row(idx) } else { y.row(idx - x.n) };
        pooled.extend_from_slice(row);
    }
    let z = Points::new(k, d, pooled);

    let mut dists = Vec::with_capacity(k * (k - 1) / 2);
    for (i, zi) in z.rows().enumerate() {
        for zj in z.rows().take(i) {
            dists.push(sq_dist(zi, zj).sqrt());
        }
    }
    median(&mut dists)
}

/// Unbiased multi-scale RBF estimate of the squared maximum mean discrepancy:
///
/// MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j)
///          − 2/(nm) Σ_{i,j} k(x_i, y_j),
///
/// with the kernel k(a, b) = Σ_s exp(−‖a − b‖² / (2 s²)) summed over the
/// given `bandwidths` s. The diagonal terms (i = j) are excluded from the
/// within-set sums, so the estimate is unbiased and may be slightly negative
/// when X and Y come from the same distribution.
///
/// Scales whose ratios are powers of two (like [h/2, h, 2h]) share one
/// exponential per pair (see `kernel_plan`). Returns NaN if any coordinate is
/// not finite. Panics if n < 2, m < 2, D differs, `bandwidths` is empty, or a
/// bandwidth is not finite and positive.
pub fn mmd2_rbf(x: &Points, y: &Points, bandwidths: &[f64]) -> f64 {
    check_two_samples(x, y);
    assert!(!bandwidths.is_empty(), "mmd2_rbf: no bandwidths");
    assert!(
        bandwidths.iter().all(|s| s.is_finite() && *s > 0.0),
        "mmd2_rbf: bandwidths must be finite and positive, got {bandwidths:?}"
    );
    if !(x.all_finite() && y.all_finite()) {
        return f64::NAN;
    }
    let plan = kernel_plan(bandwidths);
    let kernel = |r2: &mut [f64]| -> f64 {
        let mut buf = [0.0; BLOCK];
        let e = &mut buf[..r2.len()];
        let mut sum = 0.0;
        for (c, powers) in &plan {
            for (o, &t) in e.iter_mut().zip(r2.iter()) {
                *o = exp_nonpositive(c * t);
            }
            let mut done = 0;
            for &p in powers {
                for _ in done..p {
                    e.iter_mut().for_each(|v| *v *= *v);
                }
                done = p;
                sum += sum_lanes(e);
            }
        }
        sum
    };
    let (n, m) = (x.n as f64, y.n as f64);
    pairwise_sum(x, x, true, kernel) / (n * (n - 1.0)) + pairwise_sum(y, y, true, kernel) / (m * (m - 1.0))
        - 2.0 * pairwise_sum(x, y, false, kernel) / (n * m)
}

/// Groups the RBF terms exp(c r²), c = −1/(2s²), so that each group needs a
/// single exponential: a member whose c is exactly 2^p times the group's base
/// c is exp(base · r²)^(2^p), i.e. p squarings (scales s and s/2 differ by
/// p = 2). Returns (base c, ascending p of the members) per group. Other
/// scales get their own group, so the result is the same kernel either way.
fn kernel_plan(bandwidths: &[f64]) -> Vec<(f64, Vec<u32>)> {
    let mut coeffs: Vec<f64> = bandwidths.iter().map(|s| -0.5 / (s * s)).collect();
    // Widest scale (c closest to 0) first, so bases come before their powers.
    coeffs.sort_by(|a, b| b.total_cmp(a));
    let mut plan: Vec<(f64, Vec<u32>)> = Vec::new();
    for c in coeffs {
        let power = |base: f64| (0..=16u32).find(|&p| base * f64::from(1u32 << p) == c);
        match plan.iter_mut().find_map(|(base, ps)| power(*base).map(|p| (ps, p))) {
            Some((ps, p)) => ps.push(p),
            None => plan.push((c, vec![0])),
        }
    }
    plan
}

/// [`mmd2_rbf`] at the scales [h/2, h, 2h] with h = [`median_bandwidth`]`(x, y)`.
///
/// If h is 0 (more than half of the pooled pairs coincide) h = 1 is used.
pub fn mmd2_median(x: &Points, y: &Points) -> f64 {
    let h = median_bandwidth(x, y);
    let h = if h > 0.0 && h.is_finite() { h } else { 1.0 };
    mmd2_rbf(x, y, &[0.5 * h, h, 2.0 * h])
}

/// Energy distance (Székely–Rizzo), U-statistic form:
///
/// E = 2/(nm) Σ_{i,j} ‖x_i − y_j‖ − 1/(n(n−1)) Σ_{i≠j} ‖x_i − x_j‖
///     − 1/(m(m−1)) Σ_{i≠j} ‖y_i − y_j‖,
///
/// an unbiased estimate of 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (which is ≥ 0
/// and 0 iff the distributions agree). Returns NaN if any coordinate is not
/// finite. Panics if n < 2, m < 2 or D differs.
pub fn energy_distance(x: &Points, y: &Points) -> f64 {
    check_two_samples(x, y);
    if !(x.all_finite() && y.all_finite()) {
        return f64::NAN;
    }
    let (n, m) = (x.n as f64, y.n as f64);
    let dist = |r2: &mut [f64]| {
        r2.iter_mut().for_each(|v| *v = v.sqrt());
        sum_lanes(r2)
    };
    2.0 * pairwise_sum(x, y, false, dist) / (n * m)
        - pairwise_sum(x, x, true, dist) / (n * (n - 1.0))
        - pairwise_sum(y, y, true, dist) / (m * (m - 1.0))
}

/// Sliced 2-Wasserstein distance with `projections` random directions:
///
/// SW₂ = ( (1/L) Σ_{l=1..L} W₂²(θ_lᵀX, θ_lᵀY) )^{1/2},
///
/// θ_l uniform on the unit sphere S^{D−1} (a normalized standard Gaussian
/// vector drawn from `rng`). The 1-D W₂² compares empirical quantile
/// functions on the grid q_k = (k + 0.5)/K, k = 0..K−1, K = max(n, m):
///
/// W₂²(u, v) = (1/K) Σ_k (u_(⌊q_k n⌋) − v_(⌊q_k m⌋))²,
///
/// where u_(i) is the i-th smallest projection (0-based). For n = m this is the
/// usual sorted matching (1/n) Σ_i (u_(i) − v_(i))².
///
/// Non-finite coordinates propagate into a non-finite result. Panics if n or
/// m is 0, D differs, D is 0, or `projections` is 0.
pub fn sliced_wasserstein2(x: &Points, y: &Points, projections: usize, rng: &mut impl Rng) -> f64 {
    check_same_dim(x, y);
    assert!(x.n > 0 && y.n > 0, "sliced_wasserstein2: empty point set");
    assert!(projections > 0, "sliced_wasserstein2: projections must be > 0");
    let d = x.d;
    let k = x.n.max(y.n);
    let mut theta = vec![0.0; d];
    let mut px = vec![0.0; x.n];
    let mut py = vec![0.0; y.n];
    let mut total = 0.0;
    for _ in 0..projections {
        random_unit_vector(&mut theta, rng);
        project_sorted(x, &theta, &mut px);
        project_sorted(y, &theta, &mut py);
        // ⌊q_k n⌋ = ⌊(2k + 1) n / (2K)⌋, computed exactly in integers.
        let w2: f64 = (0..k)
            .map(|t| {
                let u = px[(2 * t + 1) * x.n / (2 * k)];
                let v = py[(2 * t + 1) * y.n / (2 * k)];
                (u - v) * (u - v)
            })
            .sum();
        total += w2 / k as f64;
    }
    (total / projections as f64).sqrt()
}

/// Squared distances are produced in blocks of this many pairs.
const BLOCK: usize = 256;
/// Independent accumulators in [`sum_lanes`] (lets the compiler vectorize).
const LANES: usize = 8;
/// Rows of A per unit of work in [`pairwise_sum`].
const ROW_CHUNK: usize = 32;
/// Below this many pairs [`pairwise_sum`] stays on the calling thread.
const PARALLEL_MIN_PAIRS: usize = 4_000_000;

/// Σ over pairs (i, j) of the per-pair terms, where `block_sum` maps a block of
/// squared distances ‖a_i − b_j‖² (consecutive j, fixed i; it may overwrite
/// them) to the sum of its terms. With `within` (b is a itself) the pairs are
/// i ≠ j, computed as twice the sum over j < i.
///
/// B is copied once into column-major order so the distance loop over j is a
/// plain vectorizable stream. Large sums are split over
/// `std::thread::available_parallelism()` scoped threads by chunks of
/// [`ROW_CHUNK`] rows; chunk sums are combined in chunk order, so the result
/// is bitwise the same for any thread count.
fn pairwise_sum(a: &Points, b: &Points, within: bool, block_sum: impl Fn(&mut [f64]) -> f64 + Sync) -> f64 {
    let (d, m) = (b.d, b.n);
    let mut cols = vec![0.0; d * m];
    for (j, row) in b.rows().enumerate() {
        for (k, &v) in row.iter().enumerate() {
            cols[k * m + j] = v;
        }
    }
    let chunk_sum = |chunk: usize| -> f64 {
        let mut buf = [0.0; BLOCK];
        let mut sum = 0.0;
        for i in chunk * ROW_CHUNK..((chunk + 1) * ROW_CHUNK).min(a.n) {
            let ai = a.row(i);
            let len = if within { i } else { m };
            for start in (0..len).step_by(BLOCK) {
                let r2 = &mut buf[..BLOCK.min(len - start)];
                r2.fill(0.0);
                for (k, &c) in ai.iter().enumerate() {
                    let col = &cols[k * m + start..k * m + start + r2.len()];
                    for (acc, &v) in r2.iter_mut().zip(col) {
                        let t = c - v;
                        *acc += t * t;
                    }
                }
                sum += block_sum(r2);
            }
        }
        sum
    };

    let chunks = a.n.div_ceil(ROW_CHUNK);
    let pairs = if within { a.n * a.n / 2 } else { a.n * m };
    let workers = if pairs < PARALLEL_MIN_PAIRS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |w| w.get()).min(chunks)
    };
    let mut sums = vec![0.0; chunks];
    if workers <= 1 {
        sums.iter_mut().enumerate().for_each(|(c, s)| *s = chunk_sum(c));
    } else {
        let next = AtomicUsize::new(0);
        let work = || {
            let mut done = Vec::new();
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    return done;
                }
                done.push((c, chunk_sum(c)));
            }
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(work)).collect();
            for handle in handles {
                for (c, s) in handle.join().expect("pairwise_sum: worker panicked") {
                    sums[c] = s;
                }
            }
        });
    }
    let total: f64 = sums.iter().sum();
    if within {
        2.0 * total
    } else {
        total
    }
}

/// Σ_j v_j in [`LANES`] interleaved partial sums (vectorizable; fixed order).
#[inline(always)]
fn sum_lanes(v: &[f64]) -> f64 {
    let mut acc = [0.0; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, &t) in acc.iter_mut().zip(chunk) {
            *a += t;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// e^x for x ≤ 0, branch-free so that it vectorizes (`f64::exp` is an opaque
/// libm call). Cody–Waite reduction x = k ln2 + r, |r| ≤ ln2/2, then a
/// degree-12 Taylor polynomial (truncation < 3e-16 relative) and 2^k built
/// from bits. Relative error ≲ 1e-15 for x ≥ −708; exactly 0 below.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52: adding it rounds to an integer
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // ln2 with 21 trailing zero bits
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // ln2 − LN2_HI
    let xc = x.max(-708.0);
    let t = xc * std::f64::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    // Σ_{i=0..12} r^i / i!, in Estrin's scheme (short dependency chains).
    let r2 = r * r;
    let r4 = r2 * r2;
    let q0 = 1.0 + r;
    let q1 = 1.0 / 2.0 + r * (1.0 / 6.0);
    let q2 = 1.0 / 24.0 + r * (1.0 / 120.0);
    let q3 = 1.0 / 720.0 + r * (1.0 / 5_040.0);
    let q4 = 1.0 / 40_320.0 + r * (1.0 / 362_880.0);
    let q5 = 1.0 / 3_628_800.0 + r * (1.0 / 39_916_800.0);
    let s0 = q0 + q1 * r2;
    let s1 = q2 + q3 * r2;
    let s2 = q4 + q5 * r2;
    let p = (s0 + s1 * r4) + (s2 + r4 * (1.0 / 479_001_600.0)) * (r4 * r4);
    // The low bits of t hold k (two's complement); 2^k = bits((k + 1023) << 52).
    let kbits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f64::from_bits(kbits.wrapping_add(1023) << 52);
    if x < -708.0 {
        0.0
    } else {
        p * scale
    }
}

#[inline(always)]
fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

/// Writes a direction uniform on the unit sphere into `theta`.
fn random_unit_vector(theta: &mut [f64], rng: &mut impl Rng) {
    loop {
        for t in theta.iter_mut() {
            *t = rng.sample(StandardNormal);
        }
        let norm = theta.iter().map(|t| t * t).sum::<f64>().sqrt();
        if norm > 1e-12 {
            theta.iter_mut().for_each(|t| *t /= norm);
            return;
        }
    }
}

/// out_i = θᵀp_i, sorted ascending.
fn project_sorted(p: &Points, theta: &[f64], out: &mut [f64]) {
    for (o, row) in out.iter_mut().zip(p.rows()) {
        *o = row.iter().zip(theta).map(|(a, b)| a * b).sum();
    }
    out.sort_unstable_by(f64::total_cmp);
}

fn median(v: &mut [f64]) -> f64 {
    let len = v.len();
    let mid = len / 2;
    let (lower, upper, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if len % 2 == 1 {
        upper
    } else {
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (below + upper)
    }
}

fn check_same_dim(x: &Points, y: &Points) {
    assert_eq!(x.d, y.d, "sample sets differ in dimension");
    assert!(x.d > 0, "points must have dimension ≥ 1");
}

fn check_two_samples(x: &Points, y: &Points) {
    check_same_dim(x, y);
    assert!(x.n >= 2 && y.n >= 2, "need at least 2 points in each set");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gaussian(n: usize, mean: &[f64], rng: &mut ChaCha8Rng) -> Points {
        let d = mean.len();
        let data = (0..n * d).map(|k| mean[k % d] + rng.sample::<f64, _>(StandardNormal)).collect();
        Points::new(n, d, data)
    }

    /// Standard normal CDF via erfc (Numerical Recipes `erfcc`, |rel. err| < 1.2e-7).
    fn phi(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = -z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
        let erfc = t * poly.exp();
        if x >= 0.0 {
            1.0 - 0.5 * erfc
        } else {
            0.5 * erfc
        }
    }

    /// E|N(mu, s²)| = s √(2/π) exp(−μ²/(2s²)) + μ (1 − 2Φ(−μ/s)).
    fn mean_abs_normal(mu: f64, s: f64) -> f64 {
        s * (2.0 / std::f64::consts::PI).sqrt() * (-mu * mu / (2.0 * s * s)).exp() + mu * (1.0 - 2.0 * phi(-mu / s))
    }

    #[test]
    fn phi_matches_known_values() {
        assert!((phi(0.0) - 0.5).abs() < 1e-7);
        assert!((phi(1.0) - 0.841_344_746).abs() < 1e-7);
        assert!((phi(-1.959_963_985) - 0.025).abs() < 1e-7);
    }

    #[test]
    fn pairwise_estimators_match_naive_double_loops() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x = gaussian(7, &[0.0, 0.0, 0.0], &mut rng);
        let y = gaussian(5, &[0.5, 0.0, -0.5], &mut rng);
        let dist = |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum::<f64>().sqrt() };
        // Mean of g over pairs, excluding i == j when `within`.
        let mean = |a: &Points, b: &Points, within: bool, g: &dyn Fn(f64) -> f64| {
            let (mut s, mut c) = (0.0, 0.0);
            for i in 0..a.n {
                for j in 0..b.n {
                    if !(within && i == j) {
                        s += g(dist(a.row(i), b.row(j)));
                        c += 1.0;
                    }
                }
            }
            s / c
        };
        // Scales 0.35, 0.7, 1.4 share one exponential; 1.0 gets its own.
        let bw = [0.7, 1.0, 0.35, 1.4];
        let k = |r: f64| bw.iter().map(|s| (-r * r / (2.0 * s * s)).exp()).sum::<f64>();
        let mmd_naive = mean(&x, &x, true, &k) + mean(&y, &y, true, &k) - 2.0 * mean(&x, &y, false, &k);
        let id = |r: f64| r;
        let energy_naive = 2.0 * mean(&x, &y, false, &id) - mean(&x, &x, true, &id) - mean(&y, &y, true, &id);
        assert!((mmd2_rbf(&x, &y, &bw) - mmd_naive).abs() < 1e-12);
        assert!((energy_distance(&x, &y) - energy_naive).abs() < 1e-12);
        assert!(mmd_naive.abs() > 1e-3 && energy_naive.abs() > 1e-3);
    }

    #[test]
    fn large_pairwise_sums_match_naive_sums() {
        // Above PARALLEL_MIN_PAIRS, so the threaded path runs (on > 1 core).
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let x = gaussian(3000, &[0.0, 0.0], &mut rng);
        let y = gaussian(2100, &[0.3, -0.2], &mut rng);
        let naive = |a: &Points, b: &Points, within: bool| -> f64 {
            let mut s = 0.0;
            for (i, ai) in a.rows().enumerate() {
                for (j, bj) in b.rows().enumerate() {
                    if !(within && i == j) {
                        s += sq_dist(ai, bj).sqrt();
                    }
                }
            }
            s
        };
        let dist = |r2: &mut [f64]| r2.iter().map(|v| v.sqrt()).sum::<f64>();
        for (a, b, within) in [(&x, &x, true), (&x, &y, false)] {
            let (fast, slow) = (pairwise_sum(a, b, within, dist), naive(a, b, within));
            assert!(((fast - slow) / slow).abs() < 1e-12, "{fast} vs {slow}");
        }
    }

    #[test]
    fn mmd2_and_energy_near_zero_for_same_distribution_and_positive_for_shift() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 2000;
        let x = gaussian(n, &[0.0, 0.0], &mut rng);
        let y_same = gaussian(n, &[0.0, 0.0], &mut rng);
        let y_shift = gaussian(n, &[1.0, 0.0], &mut rng);

        let mmd_same = mmd2_median(&x, &y_same);
        let mmd_shift = mmd2_median(&x, &y_shift);
        let e_same = energy_distance(&x, &y_same);
        let e_shift = energy_distance(&x, &y_shift);

        assert!(mmd_shift > 0.05, "mmd2 shifted = {mmd_shift}");
        assert!(e_shift > 0.1, "energy shifted = {e_shift}");
        assert!(mmd_same.abs() < 0.05 * mmd_shift, "mmd2 same = {mmd_same} vs {mmd_shift}");
        assert!(e_same.abs() < 0.05 * e_shift, "energy same = {e_same} vs {e_shift}");
    }

    #[test]
    fn energy_distance_matches_closed_form_for_shifted_1d_gaussians() {
        // X ~ N(0,1), Y ~ N(δ,1): X−Y ~ N(−δ, 2), X−X' ~ N(0, 2), so
        // E = 2 E|N(δ, 2)| − 2 E|N(0, 2)|.
        let delta = 1.0;
        let s = std::f64::consts::SQRT_2;
        let exact = 2.0 * mean_abs_normal(delta, s) - 2.0 * mean_abs_normal(0.0, s);
        assert!((exact - 0.541_8).abs() < 1e-3, "closed form = {exact}");

        // Mean of 4 independent estimates at n = m = 4000. One estimate has a
        // Monte-Carlo sd of 0.025 (measured over 40 seeds; mean 0.5423), so the
        // mean has standard error ≈ 0.0126 and 0.05 is ≈ 4 standard errors.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let n = 4000;
        let reps = 4;
        let est = (0..reps)
            .map(|_| {
                let x = gaussian(n, &[0.0], &mut rng);
                let y = gaussian(n, &[delta], &mut rng);
                energy_distance(&x, &y)
            })
            .sum::<f64>()
            / reps as f64;
        assert!((est - exact).abs() < 0.05, "estimate {est} vs closed form {exact}");
    }

    #[test]
    fn sliced_w2_of_translated_copy_is_shift_over_sqrt_dim() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (d, delta) in [(2usize, vec![0.6, -0.8]), (5, vec![1.0, 2.0, 0.0, -2.0, 0.5])] {
            let x = gaussian(500, &vec![0.0; d], &mut rng);
            let mut y = x.clone();
            for row in y.data.chunks_exact_mut(d) {
                row.iter_mut().zip(&delta).for_each(|(v, s)| *v += s);
            }
            let norm = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
            let expected = norm / (d as f64).sqrt();
            // Each projection gives W2² = (θ·δ)² exactly; the mean of 2000 of
            // them has relative sd ≈ 1.1/√2000 = 2.4% in D = 5 (0.7/√2000 in
            // D = 2), halved by the square root: 4% is > 3 sd.
            let sw = sliced_wasserstein2(&x, &y, 2000, &mut rng);
            assert!((sw / expected - 1.0).abs() < 0.04, "D = {d}: SW2 = {sw}, expected ≈ {expected}");
        }
    }

    #[test]
    fn sliced_w2_of_set_with_itself_is_exactly_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = gaussian(300, &[1.0, -2.0, 0.5], &mut rng);
        assert_eq!(sliced_wasserstein2(&x, &x, 50, &mut rng), 0.0);
    }

    #[test]
    fn sliced_w2_unequal_sizes_uses_common_quantile_grid() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let col = |v: &[f64]| Points::new(v.len(), 1, v.to_vec());
        // Same empirical distribution with each point doubled: distance 0.
        let x = col(&[3.0, 0.0, 2.0, 1.0]);
        let y = col(&[0.0, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.0]);
        assert_eq!(sliced_wasserstein2(&x, &y, 3, &mut rng), 0.0);
        // δ_0 vs ½(δ_0 + δ_2): W2² = ½ · 2² = 2 (θ = ±1 in 1-D).
        let sw = sliced_wasserstein2(&col(&[0.0]), &col(&[0.0, 2.0]), 3, &mut rng);
        assert!((sw - 2f64.sqrt()).abs() < 1e-12, "SW2 = {sw}");
        // n = 3, m = 2, K = 3, q = 1/6, 1/2, 5/6: X indices 0,1,2 and Y indices
        // 0,1,1 pair (0,0), (1,3), (2,3): W2² = (0 + 4 + 1)/3.
        let sw = sliced_wasserstein2(&col(&[2.0, 0.0, 1.0]), &col(&[3.0, 0.0]), 3, &mut rng);
        assert!((sw * sw - 5.0 / 3.0).abs() < 1e-12, "SW2² = {}", sw * sw);
    }

    #[test]
    fn median_bandwidth_of_known_configurations() {
        // Unit-square corners split across X and Y: distances 1,1,1,1,√2,√2.
        let x = Points::from_rows(&[vec![0.0, 0.0], vec![1.0, 0.0]]);
        let y = Points::from_rows(&[vec![0.0, 1.0], vec![1.0, 1.0]]);
        assert_eq!(median_bandwidth(&x, &y), 1.0);
        // 1-D points {0, 1, 3, 7}: distances 1,2,3,4,6,7 → median (3 + 4)/2.
        let x = Points::new(2, 1, vec![0.0, 7.0]);
        let y = Points::new(2, 1, vec![3.0, 1.0]);
        assert_eq!(median_bandwidth(&x, &y), 3.5);
        // Odd count: {0, 1, 3} → distances 1,2,3 → 2.
        let y = Points::new(1, 1, vec![3.0]);
        assert_eq!(median_bandwidth(&Points::new(2, 1, vec![0.0, 1.0]), &y), 2.0);
    }

    #[test]
    fn median_bandwidth_subsamples_large_sets_deterministically() {
        // 3000 pooled points on a line (X holds pooled indices i < 1000, Y the
        // rest): v_i = i when 3 | i, else 10⁴ + i. The subsample is exactly the
        // pooled indices 3t, t = 0..999, i.e. {0, 3, ..., 2997}, whose median
        // distance (3 · 293 = 879) is far from the full-set median.
        let v = |i: usize| {
            if i.is_multiple_of(3) {
                i as f64
            } else {
                1e4 + i as f64
            }
        };
        let x = Points::new(1000, 1, (0..1000).map(v).collect());
        let y = Points::new(2000, 1, (1000..3000).map(v).collect());
        let h = median_bandwidth(&x, &y);
        let sub: Vec<f64> = (0..1000).map(|t| v(3 * t)).collect();
        let full: Vec<f64> = (0..3000).map(v).collect();
        assert_eq!(h, naive_median_distance(&sub));
        assert_eq!(h, 879.0);
        assert!((h - naive_median_distance(&full)).abs() > 100.0);
    }

    /// Median of |a_i − a_j| over i < j, by full sort.
    fn naive_median_distance(a: &[f64]) -> f64 {
        let mut v: Vec<f64> = (0..a.len()).flat_map(|i| (0..i).map(move |j| (a[i] - a[j]).abs())).collect();
        v.sort_by(f64::total_cmp);
        let l = v.len();
        if l % 2 == 1 {
            v[l / 2]
        } else {
            0.5 * (v[l / 2 - 1] + v[l / 2])
        }
    }

    #[test]
    fn exp_nonpositive_matches_std_exp() {
        let mut worst: f64 = 0.0;
        for k in 0..=200_000 {
            let x = -708.0 * f64::from(k) / 200_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        for x in [-0.0, -1e-300, -1e-9, -0.5 * std::f64::consts::LN_2, -1.0] {
            worst = worst.max(((exp_nonpositive(x) - x.exp()) / x.exp()).abs());
        }
        assert!(worst < 2e-15, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(-708.5), 0.0);
        assert_eq!(exp_nonpositive(-1e6), 0.0);
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn kernel_plan_shares_exponentials_only_for_power_of_two_ratios() {
        // Scales h/2, h, 2h: c = −2/h², −1/(2h²), −1/(8h²) = base · {16, 4, 1}.
        let h = 0.37;
        let plan = kernel_plan(&[h, 0.5 * h, 2.0 * h]);
        assert_eq!(plan, vec![(-0.5 / (4.0 * h * h), vec![0, 2, 4])]);
        // A scale with a non-power-of-two ratio gets its own exponential.
        let plan = kernel_plan(&[1.0, 3.0, 0.5]);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan.iter().map(|(_, ps)| ps.len()).sum::<usize>(), 3);
    }

    #[test]
    fn non_finite_input_gives_nan() {
        let x = Points::new(3, 1, vec![0.0, f64::NAN, 1.0]);
        let y = Points::new(2, 1, vec![0.5, 2.0]);
        assert!(mmd2_rbf(&x, &y, &[1.0]).is_nan());
        assert!(mmd2_median(&y, &x).is_nan());
        assert!(energy_distance(&x, &y).is_nan());
        assert!(median_bandwidth(&x, &y).is_nan());
    }
}
