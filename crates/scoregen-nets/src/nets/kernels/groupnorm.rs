//! Group normalization (Wu & He 2018), optionally followed by SiLU, as one
//! fused CPU op with a hand-written first-order backward.
//!
//! For image n and group g (C/G channels × H·W pixels, D entries, contiguous
//! in [N, C, H, W]):
//!
//!   μ = mean(x),  r = 1/√(var(x) + ε),  x̂ = (x − μ)·r,  z_c = γ_c x̂ + β_c,  y = z or silu(z).
//!
//! Backward, with dz = dy (or dy·silu′(z)) and u = γ_c dz:
//!
//!   dβ_c = Σ dz,  dγ_c = Σ dz·x̂,  dx = r·(u − mean(u) − x̂·mean(u·x̂)),
//!
//! the means over the group. Each direction is one pass for the statistics
//! and one for the values, per image on its own thread; candle-nn's GroupNorm
//! is about ten tensor ops, each a pass and an allocation, and its backward
//! goes through candle's strided reductions.
//!
//! **First order only**, like [`super::dense`]; inside
//! [`scoregen_core::autodiff::exact_higher_order`], and for f64, [`GroupNorm`] is
//! candle-nn's, exact to every order.

use super::fused::{exp_f32_fma, par_blocks, par_ranges_sum, refuse_second_order, slice, SharedMut};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

/// GroupNorm with learned γ (`weight`) and β (`bias`), the names and
/// initialisation (1 and 0) of candle-nn's, so checkpoints are unchanged.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    /// The same layer in candle ops, for the exact higher-order path.
    candle: candle_nn::GroupNorm,
    /// γ and β are constants ([`GroupNorm::freeze`]).
    frozen: bool,
}

/// A [`GroupNorm`] of `groups` groups over `channels` channels.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    let candle = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
    Ok(GroupNorm { weight, bias, groups, eps, candle, frozen: false })
}

impl GroupNorm {
    /// GN(x) for x [N, C, …].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, false)? {
            Some(y) => Ok(y),
            None => self.candle.forward(x),
        }
    }

    /// silu(GN(x)), fused into the same pass when it can be.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, true)? {
            Some(y) => Ok(y),
            None => super::fused::silu(&self.candle.forward(x)?),
        }
    }

    /// Marks γ and β as constants (an evaluated network, [`crate::nets::Network::freeze`]):
    /// the fused op then keeps no activations unless x is tracked, and skips dγ, dβ.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// (γ, β, G, ε) for an op that folds silu(GN(x)) in (see
    /// [`super::conv::conv2d_normed`]): γ and β detached when they are
    /// constants (frozen here, `constant` for the caller).
    pub(crate) fn folded(&self, constant: bool) -> (Tensor, Tensor, usize, f64) {
        let (gamma, beta) = if constant || self.frozen || scoregen_core::autodiff::parameters_constant() {
            (self.weight.detach(), self.bias.detach())
        } else {
            (self.weight.clone(), self.bias.clone())
        };
        (gamma, beta, self.groups, self.eps)
    }

    /// The fused op: f32 on the CPU outside [`scoregen_core::autodiff::exact_higher_order`].
    fn fused(&self, x: &Tensor, silu: bool) -> Result<Option<Tensor>> {
        if !scoregen_core::autodiff::fused_kernels_allowed(x.device()) || x.dtype() != DType::F32 {
            return Ok(None);
        }
        let (mut gamma, mut beta) = (self.weight.clone(), self.bias.clone());
        if self.frozen || scoregen_core::autodiff::parameters_constant() {
            (gamma, beta) = (gamma.detach(), beta.detach());
        }
        group_norm_fused(x, &gamma, &beta, self.groups, self.eps, silu).map(Some)
    }
}

/// The shape of one call: N images, C channels in G groups, `hw` entries per channel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    c: usize,
    groups: usize,
    hw: usize,
    eps: f32,
    silu: bool,
}

impl Dims {
    pub(super) fn of(x: &[usize], groups: usize, eps: f64, silu: bool) -> Self {
        Self { c: x[1], groups, hw: x[2..].iter().product(), eps: eps as f32, silu }
    }

    fn image(&self) -> usize {
        self.c * self.hw
    }

    pub(super) fn groups(&self) -> usize {
        self.groups
    }
}

/// The per-image kernels, compiled for AVX2 + FMA (chosen at run time; the
/// build targets plain x86-64) and for the baseline; [`super::conv`] runs
/// them inside its op when the normalization is folded into a convolution.
pub(super) mod kernels {
    use super::super::fused::simd_builds;
    use super::{exp_f32_fma, Dims};

    /// Σ f(v) over x in eight lanes, so the loop vectorizes.
    #[inline(always)]
    fn lanes(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
        let mut l = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for c in chunks {
            for (l, &v) in l.iter_mut().zip(c) {
                *l += f(v);
            }
        }
        l.iter().sum::<f32>() + tail
    }

    /// (μ, r) of one group's entries, the variance in a second pass (no
    /// cancellation when the mean is far from zero).
    #[inline(always)]
    fn moments(x: &[f32], eps: f32) -> (f32, f32) {
        let d = x.len() as f32;
        let mean = lanes(x, |v| v) / d;
        let var = lanes(x, |v| (v - mean) * (v - mean)) / d;
        (mean, 1.0 / (var + eps).sqrt())
    }

    /// dz = dy·silu′(a x + b) (SILU) or dy into `dz`, returning (Σ dz, Σ dz·x),
    /// in one pass with eight-lane sums.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // four arrays in step, eight lanes
    fn dz_and_sums<const SILU: bool>(x: &[f32], dy: &[f32], dz: &mut [f32], a: f32, b: f32) -> (f32, f32) {
        let slope = |z: f32| silu_slope(z, sigmoid(z));
        sums_of_dz(x, dy, x, dz, |x, dy, _| if SILU { dy * slope(a * x + b) } else { dy })
    }

    /// σ(z) = 1 / (1 + e^−z).
    #[inline(always)]
    fn sigmoid(z: f32) -> f32 {
        1.0 / (1.0 + exp_f32_fma(-z))
    }

    /// silu′(z) = s (1 + z (1 − s)) from s = σ(z).
    #[inline(always)]
    fn silu_slope(z: f32, s: f32) -> f32 {
        s * (1.0 + z * (1.0 - s))
    }

    /// [`dz_and_sums`] with silu′(z) as the forward kept it (`slope`, one
    /// per entry): dz = dy·slope, no exponential. The same products and sums
    /// in the same order as the recomputing path, so the same bits.
    #[inline(always)]
    fn kept_dz_and_sums(x: &[f32], dy: &[f32], slope: &[f32], dz: &mut [f32]) -> (f32, f32) {
        sums_of_dz(x, dy, slope, dz, |_, dy, slope| dy * slope)
    }

    /// dz_i = grad(x_i, dy_i, aux_i) into `dz`, returning (Σ dz, Σ dz·x) in
    /// eight-lane sums; `aux` is a third input per entry (the kept slope), or
    /// x again where `grad` does not read it.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // five arrays in step, eight lanes
    fn sums_of_dz(
        x: &[f32],
        dy: &[f32],
        aux: &[f32],
        dz: &mut [f32],
        grad: impl Fn(f32, f32, f32) -> f32,
    ) -> (f32, f32) {
        let (mut l1, mut l2) = ([0f32; 8], [0f32; 8]);
        let (mut xs, mut ds, mut zs) = (x.chunks_exact(8), dy.chunks_exact(8), dz.chunks_exact_mut(8));
        let mut auxs = aux[..x.len()].chunks_exact(8);
        for (((xc, dc), ac), zc) in (&mut xs).zip(&mut ds).zip(&mut auxs).zip(&mut zs) {
            for j in 0..8 {
                let v = grad(xc[j], dc[j], ac[j]);
                zc[j] = v;
                l1[j] += v;
                l2[j] += v * xc[j];
            }
        }
        let (mut t1, mut t2) = (0f32, 0f32);
        let tails = xs.remainder().iter().zip(ds.remainder()).zip(auxs.remainder()).zip(zs.into_remainder());
        for (((&x, &dy), &aux), z) in tails {
            let v = grad(x, dy, aux);
            *z = v;
            t1 += v;
            t2 += v * x;
        }
        (l1.iter().sum::<f32>() + t1, l2.iter().sum::<f32>() + t2)
    }

    #[inline(always)]
    fn forward_body(d: &Dims, x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32]) {
        let per = d.c / d.groups;
        for (g, (x, y)) in x.chunks_exact(per * d.hw).zip(y.chunks_exact_mut(per * d.hw)).enumerate() {
            let (mean, r) = moments(x, d.eps);
            for (j, (x, y)) in x.chunks_exact(d.hw).zip(y.chunks_exact_mut(d.hw)).enumerate() {
                let a = gamma[g * per + j] * r;
                let b = beta[g * per + j] - mean * a;
                if d.silu {
                    for (y, &x) in y.iter_mut().zip(x) {
                        let z = a * x + b;
                        *y = z * sigmoid(z);
                    }
                } else {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = a * x + b;
                    }
                }
            }
        }
    }

    /// silu(GN(x)) of one image [C, hw] into `y`, keeping for the backward
    /// silu′(z) of every entry in `slope` [C, hw] and (μ, r) of every group
    /// in `stats` [G, 2]: the same y as [`forward_body`] with SiLU.
    #[inline(always)]
    fn forward_keeping_body(
        d: &Dims,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        y: &mut [f32],
        slope: &mut [f32],
        stats: &mut [f32],
    ) {
        let per = d.c / d.groups;
        let blocks =
            x.chunks_exact(per * d.hw).zip(y.chunks_exact_mut(per * d.hw)).zip(slope.chunks_exact_mut(per * d.hw));
        for (g, ((x, y), slope)) in blocks.enumerate() {
            let (mean, r) = moments(x, d.eps);
            stats[2 * g..][..2].copy_from_slice(&[mean, r]);
            let channels = x.chunks_exact(d.hw).zip(y.chunks_exact_mut(d.hw)).zip(slope.chunks_exact_mut(d.hw));
            for (j, ((x, y), slope)) in channels.enumerate() {
                let a = gamma[g * per + j] * r;
                let b = beta[g * per + j] - mean * a;
                for ((y, slope), &x) in y.iter_mut().zip(slope).zip(x) {
                    let z = a * x + b;
                    // y as forward_body forms it, and the slope from the same σ(z)
                    let s = sigmoid(z);
                    *y = z * s;
                    *slope = silu_slope(z, s);
                }
            }
        }
    }

    /// dx of one image into `dx`; dγ, dβ added into `dgamma`, `dbeta`.
    /// `kept`: (silu′(z) [C, hw], (μ, r) [G, 2]) as [`forward_keeping`] kept
    /// them for this image (SiLU only), else both are recomputed from x.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)] // inputs, what the forward kept, the gradient, three outputs
    fn backward_body(
        d: &Dims,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        kept: Option<(&[f32], &[f32])>,
        dy: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let per = d.c / d.groups;
        let len = (per * d.hw) as f32;
        let blocks = x.chunks_exact(per * d.hw).zip(dy.chunks_exact(per * d.hw)).zip(dx.chunks_exact_mut(per * d.hw));
        for (g, ((x, dy), dx)) in blocks.enumerate() {
            let (mean, r) = match kept {
                Some((_, stats)) => (stats[2 * g], stats[2 * g + 1]),
                None => moments(x, d.eps),
            };
            // pass 1: dz into dx, and per channel Σ dz, Σ dz·x
            let (mut sum_u, mut sum_ux) = (0f32, 0f32);
            for (j, ((x, dy), dz)) in
                x.chunks_exact(d.hw).zip(dy.chunks_exact(d.hw)).zip(dx.chunks_exact_mut(d.hw)).enumerate()
            {
                let c = g * per + j;
                let a = gamma[c] * r;
                let b = beta[c] - mean * a;
                let (s_dz, s_dzx) = match kept {
                    Some((slope, _)) => kept_dz_and_sums(x, dy, &slope[c * d.hw..][..d.hw], dz),
                    None if d.silu => dz_and_sums::<true>(x, dy, dz, a, b),
                    None => dz_and_sums::<false>(x, dy, dz, a, b),
                };
                // Σ dz·x̂ = r (Σ dz·x − μ Σ dz)
                let s_dzxhat = r * (s_dzx - mean * s_dz);
                dbeta[c] += s_dz;
                dgamma[c] += s_dzxhat;
                sum_u += gamma[c] * s_dz;
                sum_ux += gamma[c] * s_dzxhat;
            }
            // pass 2: dx = r γ_c dz − r mean(u) − r² (x − μ) mean(u·x̂)
            let (mu_u, mu_ux) = (sum_u / len, sum_ux / len);
            let slope = -r * r * mu_ux;
            let shift = -r * mu_u - slope * mean;
            for (j, (x, dx)) in x.chunks_exact(d.hw).zip(dx.chunks_exact_mut(d.hw)).enumerate() {
                let a = r * gamma[g * per + j];
                for (dx, &x) in dx.iter_mut().zip(x) {
                    *dx = a * *dx + slope * x + shift;
                }
            }
        }
    }

    // (the sums keep their explicit eight lanes in every build, so every
    // build adds in the same order and gives the same bits)
    simd_builds! {
        /// y of one image [C, hw].
        pub fn forward(d: &Dims, x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32]) = forward_body;
    }

    simd_builds! {
        /// silu(GN(x)) of one image [C, hw], keeping silu′(z) and (μ, r) for the backward.
        pub fn forward_keeping(
            d: &Dims,
            x: &[f32],
            gamma: &[f32],
            beta: &[f32],
            y: &mut [f32],
            slope: &mut [f32],
            stats: &mut [f32],
        ) = forward_keeping_body;
    }

    simd_builds! {
        /// dx of one image [C, hw], with its dγ and dβ added in.
        #[allow(clippy::too_many_arguments)]
        pub fn backward(
            d: &Dims,
            x: &[f32],
            gamma: &[f32],
            beta: &[f32],
            kept: Option<(&[f32], &[f32])>,
            dy: &[f32],
            dx: &mut [f32],
            dgamma: &mut [f32],
            dbeta: &mut [f32],
        ) = backward_body;
    }
}

/// y = GN(x) or silu(GN(x)) from (x, γ, β).
struct Forward {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.dims(), self.groups, self.eps, self.silu);
        let (x, gamma, beta) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, slice::<f32>(s3, l3)?);
        let len = d.image();
        let y = par_blocks(l1.dims()[0], len, |b, y| kernels::forward(&d, &x[b * len..][..len], gamma, beta, y));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params = Tensor::cat(&[gamma, beta], 0)?;
        let op = Backward { groups: self.groups, eps: self.eps, silu: self.silu };
        let all = x.apply_op3(&params, &dy.contiguous()?, op)?;
        let (n, c) = (x.elem_count(), gamma.elem_count());
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        Ok((Some(dx), Some(all.narrow(0, n, c)?), Some(all.narrow(0, n + c, c)?)))
    }
}

/// [dx, dγ, dβ] from (x, [γ, β], dy): the backward of [`Forward`].
struct Backward {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "fused-group-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.dims(), self.groups, self.eps, self.silu);
        let (x, params, dy) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, slice::<f32>(s3, l3)?);
        let (gamma, beta) = params.split_at(d.c);
        let mut all = vec![0f32; x.len() + 2 * d.c];
        let (dx, dparams) = all.split_at_mut(x.len());
        let (out, len) = (SharedMut::new(dx), d.image());
        // dγ, dβ: per range of images, then summed in the ranges' order
        let total = par_ranges_sum(l1.dims()[0], 2 * d.c, |images| {
            let mut p = vec![0f32; 2 * d.c];
            let (dgamma, dbeta) = p.split_at_mut(d.c);
            for b in images {
                let (x, dy) = (&x[b * len..][..len], &dy[b * len..][..len]);
                // SAFETY: image b's block of dx, written by this task only.
                kernels::backward(&d, x, gamma, beta, None, dy, unsafe { out.slice(b * len, len) }, dgamma, dbeta);
            }
            p
        });
        dparams.copy_from_slice(&total);
        let len = all.len();
        Ok((CpuStorage::F32(all), Shape::from(len)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _params: &Tensor,
        _dy: &Tensor,
        _res: &Tensor,
        _grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        refuse_second_order("GroupNorm")
    }
}

/// GN(x) (or silu(GN(x))) for x [N, C, …] f32 on the CPU, γ and β [C], G groups dividing C.
pub fn group_norm_fused(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    if x.rank() < 3 || groups == 0 || !x.dim(1)?.is_multiple_of(groups) {
        candle_core::bail!(
            "fused GroupNorm: expected x [N, C, …] with {groups} groups dividing C, got {:?}",
            x.shape()
        );
    }
    let c = x.dim(1)?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        candle_core::bail!("fused GroupNorm: expected γ, β [{c}], got {:?} and {:?}", gamma.shape(), beta.shape());
    }
    if x.dtype() != DType::F32 || gamma.dtype() != DType::F32 || beta.dtype() != DType::F32 || !x.device().is_cpu() {
        candle_core::bail!("fused GroupNorm: f32 on the CPU only, got {:?} on {:?}", x.dtype(), x.device());
    }
    super::tape::apply3(&x.contiguous()?, &gamma.contiguous()?, &beta.contiguous()?, Forward { groups, eps, silu })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{assert_same_gradients, max_diff};
    use candle_core::{Device, Var};

    /// The same inputs give the same gradients, bit for bit, on four threads
    /// (DESIGN.md: a fixed order for parallel sums): dγ and dβ are sums of
    /// per-range partials over the images, added in the order of their
    /// ranges whichever thread finishes first. `RUNS` (24) backward passes
    /// against the first, with and without the SiLU, 64 images (32 ranges on
    /// four threads).
    #[test]
    fn gradients_are_bitwise_reproducible_on_four_threads() {
        let name = "gradients_are_bitwise_reproducible_on_four_threads";
        const RUNS: usize = 24;
        super::super::fused::on_threads(4, module_path!(), name, || {
            let dev = Device::Cpu;
            let mut rng = scoregen_core::rng::Rng::new(15, 0);
            let (n, c, groups, side) = (64, 16, 4, 8);
            let x = Var::from_tensor(&rng.randn((n, c, side, side), DType::F32, &dev).unwrap()).unwrap();
            let gamma = Var::from_tensor(&rng.randn(c, DType::F32, &dev).unwrap()).unwrap();
            let beta = Var::from_tensor(&rng.randn(c, DType::F32, &dev).unwrap()).unwrap();
            let weights = rng.randn((n, c, side, side), DType::F32, &dev).unwrap();
            for silu in [false, true] {
                let grads = || {
                    let y = group_norm_fused(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), groups, 1e-6, silu)
                        .unwrap();
                    let g = scoregen_core::autodiff::backward(&(y * &weights).unwrap().sum_all().unwrap()).unwrap();
                    [&x, &gamma, &beta].map(|v| {
                        let t = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                        t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    })
                };
                let first = grads();
                for run in 1..RUNS {
                    let again = grads();
                    for (i, name) in ["x", "γ", "β"].iter().enumerate() {
                        assert!(again[i] == first[i], "silu {silu}: d{name} of run {run} differs from run 0");
                    }
                }
            }
        });
    }

    /// The fused op equals candle-nn's GroupNorm (then candle's SiLU), and its
    /// gradients for x, γ and β equal candle's, for a random weighting of the
    /// output as the loss, with and without the SiLU. Inputs have a mean far
    /// from zero (3) so a one-pass variance would fail. f32: the statistics are
    /// sums of 2·36 = 72 entries and the gradients of N·36 = 180; 1e-4 relative
    /// to the largest entry is ~100× their rounding.
    #[test]
    fn matches_candle_nn_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = scoregen_core::rng::Rng::new(7, 0);
        let (n, c, h, w, groups) = (5, 4, 6, 6, 2);
        let x =
            Var::from_tensor(&rng.randn((n, c, h, w), DType::F32, &dev).unwrap().affine(2.0, 3.0).unwrap()).unwrap();
        let gamma = Var::from_tensor(&rng.randn(c, DType::F32, &dev).unwrap()).unwrap();
        let beta = Var::from_tensor(&rng.randn(c, DType::F32, &dev).unwrap()).unwrap();
        let reference =
            candle_nn::GroupNorm::new(gamma.as_tensor().clone(), beta.as_tensor().clone(), c, groups, 1e-6).unwrap();
        for silu in [false, true] {
            let ours =
                group_norm_fused(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), groups, 1e-6, silu).unwrap();
            let mut theirs = reference.forward(x.as_tensor()).unwrap();
            if silu {
                theirs = theirs.silu().unwrap();
            }
            assert!(max_diff(&ours, &theirs) < 1e-5, "silu={silu}: forward differs by {}", max_diff(&ours, &theirs));
            let weights = rng.randn(ours.shape(), DType::F32, &dev).unwrap();
            let vars = [("x", x.as_tensor()), ("γ", gamma.as_tensor()), ("β", beta.as_tensor())];
            assert_same_gradients(&ours, &theirs, &weights, &vars, (1e-4, 0.0), &format!("silu={silu}"));
        }
    }

    /// Inside `exact_higher_order` the layer is candle-nn's, so a gradient of
    /// a gradient works; outside, differentiating the fused gradient again is
    /// refused with the way out.
    #[test]
    fn second_derivatives_take_candles_path_or_fail_clearly() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let norm = group_norm(2, 4, 1e-6, vb).unwrap();
        let mut rng = scoregen_core::rng::Rng::new(8, 0);
        let x = Var::from_tensor(&rng.randn((2, 4, 3, 3), DType::F32, &dev).unwrap()).unwrap();
        let loss = |y: Tensor| y.sqr().unwrap().sum_all().unwrap();
        let exact = scoregen_core::autodiff::exact_higher_order(|| {
            let gx = scoregen_core::autodiff::grad(&norm.forward_silu(x.as_tensor()).unwrap(), &x).unwrap();
            scoregen_core::autodiff::backward(&loss(gx)).map(|_| ())
        });
        assert!(exact.is_ok(), "{exact:?}");
        let gx = scoregen_core::autodiff::grad(&norm.forward_silu(x.as_tensor()).unwrap(), &x).unwrap();
        let outside = scoregen_core::autodiff::backward(&loss(gx));
        if scoregen_core::autodiff::fused_kernels_allowed(&dev) {
            let err = outside.unwrap_err().to_string();
            assert!(err.contains("exact_higher_order"), "{err}");
        } else {
            // SCOREGEN_FUSED=0 (the path a GPU takes): candle's ops everywhere, exact to every order
            assert!(outside.is_ok(), "{outside:?}");
        }
    }
}
