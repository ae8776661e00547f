//! The [`super::Mlp`] forward and backward as one fused CPU op.
//!
//! Through candle's graph a hidden layer is about eight nodes, each a pass
//! over memory and an allocation, and candle's backward zero-fills an
//! accumulator for every edge. Here the whole network is one op. A layer is
//!
//!   Z_l = H_{l−1} W_lᵀ + E U_lᵀ + b_l,   H_l = silu(Z_l)
//!
//! (H₋₁ = A = [x, e], no U on the input layer; out = H W_oᵀ + b_o), computed
//! as GEMMs (the `gemm` crate candle itself uses, on all of candle's threads)
//! accumulating into Z initialised with the bias row, then one SiLU pass. The
//! backward is the textbook chain, again GEMMs plus one fused pass per layer:
//!
//!   dZ_l = dH_l ⊙ silu′(Z_l),  db_l = 1ᵀ dZ_l,  dW_l = dZ_lᵀ H_{l−1},
//!   dU_l = dZ_lᵀ E,  dH_{l−1} = dZ_l W_l,  dE += dZ_l U_l.
//!
//! When every row of E is the same (a sampler evaluates one t for the whole
//! batch), E U_lᵀ is a single row, folded into the bias: the same numbers,
//! about a quarter fewer FLOPs.
//!
//! **First order only.** The gradients come from an op that refuses to be
//! differentiated again: a clear error, never a silently missing term. Code
//! that differentiates a score with respect to x and then the result with
//! respect to θ (implicit and sliced score matching, energy models) runs inside
//! [`scoregen_core::autodiff::exact_higher_order`], where `Mlp` takes candle's path,
//! exact to every order.
//!
//! Written by hand because no crate fuses an MLP's backward for candle; the
//! GEMM kernel is the `gemm` crate's.

use super::fused::{dot8, par_ranges, refuse_second_order, slice, SharedMut};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

/// The sizes of a fused MLP: input a = [x, e] with x ∈ R^d and e ∈ R^E (E = 0:
/// no conditioning), `hidden` hidden-to-hidden layers of width W after the
/// input layer, and `out` outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub d: usize,
    pub e: usize,
    pub width: usize,
    pub hidden: usize,
    pub out: usize,
}

/// Where a layer's parameters sit in the flat parameter vector θ.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    /// W [rows, cols], row-major.
    w: usize,
    /// U [W, E] (hidden layers of a conditioned net only).
    u: Option<usize>,
    /// b [rows].
    b: usize,
}

impl Dims {
    /// Columns of the input a = [x, e].
    pub fn input(&self) -> usize {
        self.d + self.e
    }

    /// θ, in order: W₀ [W, d+E], b₀; then per hidden layer W_l [W, W], U_l
    /// [W, E] (when E > 0), b_l; then W_o [out, W], b_o. The order
    /// [`super::Mlp`] concatenates its parameters in.
    fn offsets(&self) -> (Vec<Offsets>, Offsets) {
        let (w, mut at) = (self.width, 0);
        let mut layers = Vec::with_capacity(self.hidden + 1);
        for l in 0..=self.hidden {
            let (cols, u) = if l == 0 { (self.input(), false) } else { (w, self.e > 0) };
            let wo = at;
            at += w * cols;
            let uo = u.then(|| {
                at += w * self.e;
                at - w * self.e
            });
            layers.push(Offsets { w: wo, u: uo, b: at });
            at += w;
        }
        (layers, Offsets { w: at, u: None, b: at + self.out * w })
    }

    /// The number of parameters.
    pub fn params(&self) -> usize {
        let (_, o) = self.offsets();
        o.b + self.out
    }
}

/// A row-major matrix operand: pointer, row stride, column stride.
#[derive(Clone, Copy)]
pub(crate) struct Mat(*const f32, isize, isize);
// SAFETY: only read, by the threads of one GEMM or pass, while the caller's borrow lives.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// A row-major [rows, ld] block.
    pub(crate) fn rows(p: &[f32], ld: usize) -> Self {
        Mat(p.as_ptr(), ld as isize, 1)
    }

    /// The transpose of a row-major [rows, ld] block.
    pub(crate) fn t(p: &[f32], ld: usize) -> Self {
        Mat(p.as_ptr(), 1, ld as isize)
    }

    /// The same matrix read transposed.
    pub(crate) fn transposed(self) -> Self {
        Mat(self.0, self.2, self.1)
    }
}

/// C [m, n] (row stride `ldc`) := (C if `acc`, else 0) + A [m, k] · B [k, n].
///
/// On several threads the larger of C's two sides is split in one block per
/// thread, each a single-threaded GEMM: the `gemm` crate's own threading does
/// not split these skinny shapes (W ≤ 512 columns), and leaves the second core idle.
///
/// # Safety
/// `c` must hold m rows of stride `ldc` with n columns; A and B must be valid
/// for their strides and shapes.
#[allow(clippy::too_many_arguments)] // BLAS's own argument list, less the scalars
unsafe fn gemm_into(m: usize, n: usize, k: usize, c: *mut f32, ldc: usize, acc: bool, a: Mat, b: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller; blocks of C are disjoint.
    let one = |m: usize, n: usize, c: *mut f32, a: Mat, b: Mat| unsafe {
        gemm_serial(m, n, k, c, (ldc as isize, 1), acc, a, b)
    };
    let threads = candle_core::utils::get_num_threads();
    if threads <= 1 || m * n * k < 1 << 16 {
        return one(m, n, c, a, b);
    }
    let split = if m >= n { m } else { n };
    let per = split.div_ceil(threads);
    let c = SharedMut::from_ptr(c);
    par_ranges(threads, |blocks| {
        for i in blocks {
            let (from, to) = (i * per, ((i + 1) * per).min(split));
            if from >= to {
                continue;
            }
            let c = c.ptr();
            // SAFETY: row (or column) block [from, to) of C, A's matching rows (or B's columns).
            unsafe {
                if m >= n {
                    one(to - from, n, c.add(from * ldc), Mat(a.0.offset(from as isize * a.1), a.1, a.2), b)
                } else {
                    one(m, to - from, c.add(from), a, Mat(b.0.offset(from as isize * b.2), b.1, b.2))
                }
            }
        }
    });
}

/// C [m, n] (row stride `c_rs`, column stride `c_cs`) := (C if `acc`, else
/// 0) + A [m, k] · B [k, n], on the calling thread only (for callers that
/// already split their work across threads).
///
/// # Safety
/// As for [`gemm_into`], with C's strides.
#[allow(clippy::too_many_arguments)] // BLAS's own argument list, less the scalars
pub(crate) unsafe fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    (c_rs, c_cs): (isize, isize),
    acc: bool,
    a: Mat,
    b: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        let (one, par) = (1.0f32, Parallelism::None);
        gemm::gemm(m, n, k, c, c_cs, c_rs, acc, a.0, a.2, a.1, b.0, b.2, b.1, one, one, false, false, false, par)
    }
}

/// The kernels of the two elementwise passes, compiled twice: for AVX2 + FMA
/// (chosen at run time; the build targets plain x86-64) and for the baseline.
mod elementwise {
    use super::super::fused::{exp_f32_fma, simd_builds};
    use std::mem::MaybeUninit;

    /// Entries per step of [`bias_silu_body`]: four AVX2 vectors (two
    /// AVX-512) whose exponentials are independent chains, written out one
    /// stage at a time so the instructions of the four interleave. One vector
    /// at a time, the chain's latency bounds the rate (0.88 → 0.75 ns per
    /// entry on an AVX2 machine).
    const SILU_STEP: usize = 32;

    /// With z = z + b row by row (rows of b's length): h = silu(z) = z·σ(z),
    /// written once into uninitialised memory, and σ(z) in place of z (all
    /// the backward needs besides h). Each entry's arithmetic is the same
    /// whether it falls in a step of [`SILU_STEP`] or in a row's remainder.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // three arrays in step, one stage at a time
    fn bias_silu_body(z: &mut [f32], b: &[f32], h: &mut [MaybeUninit<f32>]) {
        let sigmoid = |x: f32| 1.0 / (1.0 + exp_f32_fma(-x));
        for (zr, hr) in z.chunks_exact_mut(b.len()).zip(h.chunks_exact_mut(b.len())) {
            let (mut zs, mut hs, mut bs) =
                (zr.chunks_exact_mut(SILU_STEP), hr.chunks_exact_mut(SILU_STEP), b.chunks_exact(SILU_STEP));
            for ((zc, hc), bc) in (&mut zs).zip(&mut hs).zip(&mut bs) {
                let mut x = [0f32; SILU_STEP];
                for i in 0..SILU_STEP {
                    x[i] = zc[i] + bc[i];
                }
                let mut s = [0f32; SILU_STEP];
                for i in 0..SILU_STEP {
                    s[i] = sigmoid(x[i]);
                }
                for i in 0..SILU_STEP {
                    hc[i].write(x[i] * s[i]);
                    zc[i] = s[i];
                }
            }
            for ((z, h), &b) in zs.into_remainder().iter_mut().zip(hs.into_remainder()).zip(bs.remainder()) {
                let x = *z + b;
                let s = sigmoid(x);
                h.write(x * s);
                *z = s;
            }
        }
    }

    /// dz = dh·silu′(z) in place with silu′(z) = σ(1 + z(1 − σ)) = σ + h(1 − σ)
    /// (no exponential: σ and h were kept), and db += the column sums of dz
    /// (rows of `width`).
    #[inline(always)]
    fn silu_grad_body(sigma: &[f32], h: &[f32], dh: &mut [f32], db: &mut [f32]) {
        let w = db.len();
        for ((sr, hr), gr) in sigma.chunks_exact(w).zip(h.chunks_exact(w)).zip(dh.chunks_exact_mut(w)) {
            for (((g, &s), &h), b) in gr.iter_mut().zip(sr).zip(hr).zip(db.iter_mut()) {
                *g *= s + h * (1.0 - s);
                *b += *g;
            }
        }
    }

    // The wide builds: the exponential's polynomial and the division are
    // latency chains per vector, so 16 lanes are about twice the rate of 8
    // (0.60 → 0.32 ns per SiLU in cache on Zen 4, which runs 512-bit
    // operations as two 256-bit halves, before the fused multiply–adds and
    // the interleaved steps).
    simd_builds! {
        pub fn bias_silu(z: &mut [f32], b: &[f32], h: &mut [MaybeUninit<f32>]) = bias_silu_body;
    }

    simd_builds! {
        pub fn silu_grad(sigma: &[f32], h: &[f32], dh: &mut [f32], db: &mut [f32]) = silu_grad_body;
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    mod tests {
        use super::*;

        /// The AVX2 and AVX-512 builds of both passes give the baseline's
        /// bits (element-wise arithmetic in one order, db summed row by row),
        /// where the CPU has them; the baseline runs everywhere.
        #[test]
        fn every_simd_build_gives_the_baseline_bits() {
            let (rows, w) = (37, 75); // two steps of SILU_STEP and a remainder per row
            let z0: Vec<f32> = (0..rows * w).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..w).map(|i| i as f32 * 0.3 - 3.0).collect();
            type Build = unsafe fn(&mut [f32], &[f32], &mut [MaybeUninit<f32>]);
            type GradBuild = unsafe fn(&[f32], &[f32], &mut [f32], &mut [f32]);
            let run = |f: Build| {
                let (mut z, mut h) = (z0.clone(), vec![MaybeUninit::new(0f32); rows * w]);
                // SAFETY: only called with a build the CPU has (below).
                unsafe { f(&mut z, &b, &mut h) };
                let h: Vec<f32> = h.iter().map(|v| unsafe { v.assume_init() }).collect();
                let (mut dh, mut db) = (z0.clone(), vec![0f32; w]);
                silu_grad_body(&z, &h, &mut dh, &mut db);
                (z, h, dh, db)
            };
            let grad = |sigma: &[f32], h: &[f32], f: GradBuild| {
                let (mut dh, mut db) = (z0.clone(), vec![0f32; w]);
                // SAFETY: as above.
                unsafe { f(sigma, h, &mut dh, &mut db) };
                (dh, db)
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let base = run(bias_silu_body);
            let mut builds: Vec<(&str, Build, GradBuild)> = Vec::new();
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                builds.push(("avx2", bias_silu::avx2, silu_grad::avx2));
            }
            if is_x86_feature_detected!("avx512f") {
                builds.push(("avx512", bias_silu::avx512, silu_grad::avx512));
            }
            for (name, fwd, bwd) in builds {
                let ours = run(fwd);
                assert_eq!(bits(&ours.0), bits(&base.0), "{name}: σ(z)");
                assert_eq!(bits(&ours.1), bits(&base.1), "{name}: silu(z)");
                let (dh, db) = grad(&base.0, &base.1, bwd);
                assert_eq!((bits(&dh), bits(&db)), (bits(&base.2), bits(&base.3)), "{name}: dz, db");
            }
        }
    }
}

/// What the forward keeps for the backward: σ(Z_l) and H_l = silu(Z_l) for
/// every hidden layer, each [N, W].
struct Saved {
    sigma: Vec<Vec<f32>>,
    h: Vec<Vec<f32>>,
}

/// True when all N rows of E (columns d.. of a [N, ld] block) are equal.
fn same_rows(a: &[f32], n: usize, ld: usize, d: usize) -> bool {
    let first = &a[d..ld];
    (1..n).all(|i| &a[i * ld + d..(i + 1) * ld] == first)
}

/// Each layer's bias row, and whether E's terms are in it: when every row
/// of E is the same (one t for the whole batch), E U_lᵀ (and E's part of W₀)
/// are one row, added to b_l, and the GEMMs skip E.
fn layer_biases(dims: &Dims, a: &[f32], theta: &[f32], n: usize) -> (bool, Vec<Vec<f32>>) {
    let (w, ld, e, d) = (dims.width, dims.input(), dims.e, dims.d);
    let (layers, _) = dims.offsets();
    let shared_e = e > 0 && n > 1 && same_rows(a, n, ld, d);
    let biases: Vec<Vec<f32>> = layers
        .iter()
        .enumerate()
        .map(|(l, off)| {
            let mut bias = theta[off.b..off.b + w].to_vec();
            // E's term: E's columns of W₀ (input layer) or U_l, as [w, u_ld]
            let u = match (l, off.u) {
                (0, _) => Some((&theta[off.w + d..], ld)),
                (_, Some(u)) => Some((&theta[u..], e)),
                _ => None,
            };
            if let (true, Some((u, u_ld))) = (shared_e, u) {
                let e_row = &a[d..ld];
                for (j, b) in bias.iter_mut().enumerate() {
                    *b += e_row.iter().zip(&u[j * u_ld..j * u_ld + e]).map(|(x, y)| x * y).sum::<f32>();
                }
            }
            bias
        })
        .collect();
    (shared_e, biases)
}

/// The forward pass on a [N, d+E] and θ: out [N, out] and the activations.
///
/// Row blocks run through every layer before the next block starts, one
/// block per task on candle's threads: a block's Z and H stay in cache
/// between a layer's GEMM, its SiLU pass and the next layer's GEMM, and the
/// threads meet once per forward, not once per layer.
///
/// Without `keep` (nothing will be differentiated: sampling) a block's σ(Z)
/// and H live in a scratch of three [rows, W] slots and are never written out.
fn forward(dims: &Dims, a: &[f32], theta: &[f32], n: usize, keep: bool) -> (Vec<f32>, Option<Saved>) {
    let (w, ld, e, d) = (dims.width, dims.input(), dims.e, dims.d);
    let (layers, output) = dims.offsets();
    let (shared_e, biases) = layer_biases(dims, a, theta, n);
    let kept = if keep { n * w } else { 0 };
    let mut z: Vec<Vec<f32>> = layers.iter().map(|_| Vec::with_capacity(kept)).collect();
    let mut h: Vec<Vec<f32>> = layers.iter().map(|_| Vec::with_capacity(kept)).collect();
    let mut out: Vec<f32> = Vec::with_capacity(n * dims.out);
    let (zp, hp): (Vec<_>, Vec<_>) = z
        .iter_mut()
        .zip(h.iter_mut())
        .map(|(z, h)| (SharedMut::from_ptr(z.as_mut_ptr()), SharedMut::from_ptr(h.as_mut_ptr())))
        .unzip();
    let outp = SharedMut::from_ptr(out.as_mut_ptr());
    let rows = forward_block_rows(n, w);
    par_ranges(n.div_ceil(rows), |blocks| {
        blocks.for_each(|block| {
            let (r0, m) = (block * rows, rows.min(n - block * rows));
            let mut scratch: Vec<f32> = Vec::with_capacity(if keep { 0 } else { 3 * m * w });
            let sp = scratch.as_mut_ptr();
            // SAFETY: this task alone writes rows r0..r0+m of every buffer (each
            // allocated for n rows) or its own scratch (slot 0: Z, slots 1 and 2:
            // H of even and odd layers); it reads only what it wrote and a, θ.
            unsafe {
                let z_at = |l: usize| if keep { zp[l].ptr().add(r0 * w) } else { sp };
                let h_at = |l: usize| if keep { hp[l].ptr().add(r0 * w) } else { sp.add((1 + l % 2) * m * w) };
                let a_rows = a.as_ptr().add(r0 * ld);
                for (l, off) in layers.iter().enumerate() {
                    let zb = z_at(l);
                    let (prev, k) = if l == 0 {
                        (Mat(a_rows, ld as isize, 1), if shared_e { d } else { ld })
                    } else {
                        (Mat(h_at(l - 1), w as isize, 1), w)
                    };
                    gemm_serial(
                        m,
                        w,
                        k,
                        zb,
                        (w as isize, 1),
                        false,
                        prev,
                        Mat::t(&theta[off.w..], if l == 0 { ld } else { w }),
                    );
                    if let (Some(u), false) = (off.u, shared_e) {
                        gemm_serial(
                            m,
                            w,
                            e,
                            zb,
                            (w as isize, 1),
                            true,
                            Mat(a_rows.add(d), ld as isize, 1),
                            Mat::t(&theta[u..], e),
                        );
                    }
                    let zs = std::slice::from_raw_parts_mut(zb, m * w);
                    let hs = std::slice::from_raw_parts_mut(h_at(l).cast::<MaybeUninit<f32>>(), m * w);
                    elementwise::bias_silu(zs, &biases[l], hs);
                }
                let ob = outp.ptr().add(r0 * dims.out);
                let last = Mat(h_at(layers.len() - 1), w as isize, 1);
                gemm_serial(m, dims.out, w, ob, (dims.out as isize, 1), false, last, Mat::t(&theta[output.w..], w));
                for row in std::slice::from_raw_parts_mut(ob, m * dims.out).chunks_exact_mut(dims.out) {
                    for (o, &b) in row.iter_mut().zip(&theta[output.b..output.b + dims.out]) {
                        *o += b;
                    }
                }
            }
        })
    });
    // SAFETY: the blocks cover all n rows, and each wrote every value of its
    // rows (of the activations too when kept).
    unsafe {
        for v in z.iter_mut().chain(h.iter_mut()) {
            v.set_len(kept);
        }
        out.set_len(n * dims.out);
    }
    (out, keep.then_some(Saved { sigma: z, h }))
}

/// Rows per block of [`forward`]: a block's [rows, W] activations about
/// 256 KiB (several fit in a core's L2), and at least one block per thread.
fn forward_block_rows(n: usize, width: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().max(1);
    (65_536 / width.max(1)).clamp(16, 1024).min(n.div_ceil(threads)).max(1)
}

/// The backward pass from dOut [N, out]: [dA (N·(d+E)), dθ (P)] in one
/// vector, or dA alone when `want_theta` is false (θ a constant).
///
/// The chain dH → dZ → dH₋₁ → … → dA is row-local, so it runs by row blocks
/// through every layer, like [`forward`], keeping dZ_l for the parameter
/// gradients, which then sum over all rows: dW_l = dZ_lᵀ H_{l−1} as one GEMM per
/// layer split across the threads.
fn backward(dims: &Dims, a: &[f32], theta: &[f32], saved: &Saved, g: &[f32], n: usize, want_theta: bool) -> Vec<f32> {
    let (w, ld, e, d, out) = (dims.width, dims.input(), dims.e, dims.d, dims.out);
    let (layers, output) = dims.offsets();
    let mut grads = vec![0f32; n * ld + if want_theta { dims.params() } else { 0 }];
    let mut dz: Vec<Vec<f32>> = layers.iter().map(|_| Vec::with_capacity(n * w)).collect();
    let dzp: Vec<SharedMut> = dz.iter_mut().map(|v| SharedMut::from_ptr(v.as_mut_ptr())).collect();
    let dap = SharedMut::from_ptr(grads.as_mut_ptr());
    let rows = forward_block_rows(n, w);
    // per block: the column sums of its dZ_l, every layer's after another,
    // kept in block order (summed below in that order, whatever the threads)
    let mut db_blocks: Vec<Vec<f32>> = vec![Vec::new(); n.div_ceil(rows)];
    let db_slots = SharedMut::new(&mut db_blocks);
    par_ranges(db_blocks.len(), |range| {
        for block in range {
            let (r0, m) = (block * rows, rows.min(n - block * rows));
            let mut db = vec![0f32; layers.len() * w];
            // SAFETY: this task alone writes rows r0..r0+m of dA and of every
            // dZ_l (allocated for n rows), and reads only those and a, θ, Z.
            unsafe {
                let (da_rows, last) = (dap.ptr().add(r0 * ld), layers.len() - 1);
                // dH_last = dOut W_o, written where dZ_last will be
                let g_rows = Mat(g.as_ptr().add(r0 * out), out as isize, 1);
                gemm_serial(
                    m,
                    w,
                    out,
                    dzp[last].ptr().add(r0 * w),
                    (w as isize, 1),
                    false,
                    g_rows,
                    Mat::rows(&theta[output.w..], w),
                );
                for (l, off) in layers.iter().enumerate().rev() {
                    // dZ = dH ⊙ silu′(Z) in place, with its column sums
                    let dzb = dzp[l].ptr().add(r0 * w);
                    let rows = r0 * w..(r0 + m) * w;
                    elementwise::silu_grad(
                        &saved.sigma[l][rows.clone()],
                        &saved.h[l][rows],
                        std::slice::from_raw_parts_mut(dzb, m * w),
                        &mut db[l * w..(l + 1) * w],
                    );
                    let dz_rows = Mat(dzb, w as isize, 1);
                    if let Some(u) = off.u {
                        // dE += dZ U
                        gemm_serial(
                            m,
                            e,
                            w,
                            da_rows.add(d),
                            (ld as isize, 1),
                            true,
                            dz_rows,
                            Mat::rows(&theta[u..], e),
                        );
                    }
                    if l == 0 {
                        // dA += dZ W₀
                        gemm_serial(m, ld, w, da_rows, (ld as isize, 1), true, dz_rows, Mat::rows(&theta[off.w..], ld));
                    } else {
                        // dH_{l−1} = dZ W_l, written where dZ_{l−1} will be
                        let next = dzp[l - 1].ptr().add(r0 * w);
                        gemm_serial(m, w, w, next, (w as isize, 1), false, dz_rows, Mat::rows(&theta[off.w..], w));
                    }
                }
            }
            // SAFETY: block's slot, written by this task only.
            unsafe { db_slots.slice(block, 1)[0] = db };
        }
    });
    // SAFETY: the blocks cover all n rows and each wrote every value of its rows.
    unsafe {
        for v in &mut dz {
            v.set_len(n * w);
        }
    }
    if !want_theta {
        return grads;
    }
    let dtheta = &mut grads[n * ld..];
    let last = saved.h.last().expect("at least the input layer");
    // SAFETY (all GEMMs below): every block has the shape and strides given.
    unsafe {
        // dW_o = dOutᵀ H, db_o = 1ᵀ dOut
        gemm_into(out, w, n, dtheta[output.w..].as_mut_ptr(), w, false, Mat::t(g, out), Mat::rows(last, w));
    }
    for row in g.chunks_exact(out) {
        for (b, &x) in dtheta[output.b..output.b + out].iter_mut().zip(row) {
            *b += x;
        }
    }
    for (l, off) in layers.iter().enumerate() {
        for db in &db_blocks {
            for (b, &x) in dtheta[off.b..off.b + w].iter_mut().zip(&db[l * w..(l + 1) * w]) {
                *b += x;
            }
        }
        let (prev, cols) = if l == 0 { (a, ld) } else { (&saved.h[l - 1][..], w) };
        unsafe {
            // dW_l = dZ_lᵀ H_{l−1} (A for the input layer), dU_l = dZ_lᵀ E
            let dw = dtheta[off.w..].as_mut_ptr();
            gemm_into(w, cols, n, dw, cols, false, Mat::t(&dz[l], w), Mat::rows(prev, cols));
            if let Some(u) = off.u {
                let du = dtheta[u..].as_mut_ptr();
                gemm_into(w, e, n, du, e, false, Mat::t(&dz[l], w), Mat::rows(&a[d..], ld));
            }
        }
    }
    grads
}

/// out = MLP_θ(a), a [N, d+E], θ [P] (see [`Dims`] for its order).
struct Forward {
    dims: Dims,
    /// Keep the activations for a backward (false when no input is tracked).
    keep: bool,
    saved: Mutex<Option<Arc<Saved>>>,
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "fused-mlp"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l1.dims()[0];
        let (out, saved) = forward(&self.dims, slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, n, self.keep);
        *self.saved.lock().expect("fused MLP lock") = saved.map(Arc::new);
        Ok((CpuStorage::F32(out), Shape::from((n, self.dims.out))))
    }

    fn bwd(&self, a: &Tensor, theta: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().expect("fused MLP lock").clone();
        let Some(saved) = saved else { candle_core::bail!("fused MLP: backward before forward") };
        let (n, want_theta) = (a.dim(0)?, theta.track_op());
        let both = a.apply_op3(theta, &g.contiguous()?, Backward { dims: self.dims, saved, want_theta })?;
        let da = both.narrow(0, 0, n * self.dims.input())?.reshape(a.shape())?;
        let dtheta = want_theta.then(|| both.narrow(0, n * self.dims.input(), self.dims.params())).transpose()?;
        Ok((Some(da), dtheta))
    }
}

/// [dA, dθ] from (a, θ, dOut): the backward of [`Forward`] (dA alone when
/// θ is a constant).
struct Backward {
    dims: Dims,
    saved: Arc<Saved>,
    want_theta: bool,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "fused-mlp-backward"
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
        let n = l1.dims()[0];
        let (a, theta, g) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, slice::<f32>(s3, l3)?);
        let grads = backward(&self.dims, a, theta, &self.saved, g, n, self.want_theta);
        let len = grads.len();
        Ok((CpuStorage::F32(grads), Shape::from(len)))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _theta: &Tensor,
        _g: &Tensor,
        _res: &Tensor,
        _grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        refuse_second_order("MLP kernel")
    }
}

/// The forward pass with the trace of its Jacobian: [out, Tr ∂out/∂x] per
/// row, [N, out + 1], for out = d (a score network on R^d).
///
/// Forward-mode differentiation by row blocks, like [`forward`]: with
/// silu′(z) = σ + h(1 − σ), the tangents T^i = ∂H/∂x_i [m, W] of a block are
///
///   T₀^i = silu′(Z₀) ⊙ W₀[:, i],  T_l^i = silu′(Z_l) ⊙ (T_{l−1}^i W_lᵀ),
///   Tr ∂out/∂x = Σ_i T_last^i · W_o[i, :],
///
/// the d tangents stacked as one [d·m, W] GEMM operand per layer. The same
/// products as d vector–Jacobian products, but one pass and no graph: the
/// likelihood's exact divergence ([`crate::nets::Network::forward_with_trace`]).
fn forward_trace(dims: &Dims, a: &[f32], theta: &[f32], n: usize) -> Vec<f32> {
    let (w, ld, e, d, width_out) = (dims.width, dims.input(), dims.e, dims.d, dims.out + 1);
    let (layers, output) = dims.offsets();
    let (shared_e, biases) = layer_biases(dims, a, theta, n);
    let mut out: Vec<f32> = vec![0f32; n * width_out];
    let outp = SharedMut::new(&mut out);
    // blocks of at most 128 rows (the tangents make a block (3 + 2d)·W wide),
    // several per thread so the shared cursor evens them out
    let threads = candle_core::utils::get_num_threads().max(1);
    let rows = n.div_ceil(4 * threads).clamp(16, 128).min(n.max(1));
    par_ranges(n.div_ceil(rows), |blocks| {
        blocks.for_each(|block| {
            let (r0, m) = (block * rows, rows.min(n - block * rows));
            // H of even and odd layers (initialised, so readable as f32 after any layer)
            let mut z = vec![0f32; m * w];
            let mut hs = [vec![MaybeUninit::new(0f32); m * w], vec![MaybeUninit::new(0f32); m * w]];
            let (mut tan, mut next) = (vec![0f32; d * m * w], vec![0f32; d * m * w]);
            // SAFETY (all GEMMs): the block's rows of a [N, ld], H and the tangents
            // [·, W] it owns, θ's layers [W, ·] read transposed; every MaybeUninit is initialised.
            unsafe {
                let a_rows = a.as_ptr().add(r0 * ld);
                for (l, off) in layers.iter().enumerate() {
                    // layer l writes hs[l % 2] and reads the previous layer's H from the other
                    let (first, second) = hs.split_at_mut(1);
                    let (h, h_prev) =
                        if l % 2 == 0 { (&mut first[0], &second[0]) } else { (&mut second[0], &first[0]) };
                    let (prev, k, w_ld) = if l == 0 {
                        (Mat(a_rows, ld as isize, 1), if shared_e { d } else { ld }, ld)
                    } else {
                        (Mat(h_prev.as_ptr().cast::<f32>(), w as isize, 1), w, w)
                    };
                    gemm_serial(m, w, k, z.as_mut_ptr(), (w as isize, 1), false, prev, Mat::t(&theta[off.w..], w_ld));
                    if let (Some(u), false) = (off.u, shared_e) {
                        let e_rows = Mat(a_rows.add(d), ld as isize, 1);
                        gemm_serial(m, w, e, z.as_mut_ptr(), (w as isize, 1), true, e_rows, Mat::t(&theta[u..], e));
                    }
                    elementwise::bias_silu(&mut z, &biases[l], h);
                    let h: &[f32] = std::slice::from_raw_parts(h.as_ptr().cast::<f32>(), m * w);
                    // the layer's linear tangent: W₀[:, i] in every row, or T_{l−1} W_lᵀ
                    if l == 0 {
                        for i in 0..d {
                            for row in next[i * m * w..(i + 1) * m * w].chunks_exact_mut(w) {
                                for (j, v) in row.iter_mut().enumerate() {
                                    *v = theta[off.w + j * ld + i];
                                }
                            }
                        }
                    } else {
                        let t = Mat(tan.as_ptr(), w as isize, 1);
                        gemm_serial(
                            d * m,
                            w,
                            w,
                            next.as_mut_ptr(),
                            (w as isize, 1),
                            false,
                            t,
                            Mat::t(&theta[off.w..], w),
                        );
                    }
                    // ⊙ silu′(Z) = σ + h(1 − σ), the same for every direction i
                    for block in next.chunks_exact_mut(m * w) {
                        for ((v, &sig), &h) in block.iter_mut().zip(&z).zip(h) {
                            *v *= sig + h * (1.0 - sig);
                        }
                    }
                    std::mem::swap(&mut tan, &mut next);
                }
                let last = std::slice::from_raw_parts(hs[(layers.len() - 1) % 2].as_ptr().cast::<f32>(), m * w);
                // out = H W_oᵀ + b_o by the GEMM [`forward`] uses, into
                // rows of out + 1 entries; the last entry Σ_i T_last^i · W_o[i, :]
                let ob = outp.ptr().add(r0 * width_out);
                let last = Mat(last.as_ptr(), w as isize, 1);
                gemm_serial(m, dims.out, w, ob, (width_out as isize, 1), false, last, Mat::t(&theta[output.w..], w));
                let w_o = &theta[output.w..output.w + dims.out * w];
                let b_o = &theta[output.b..output.b + dims.out];
                for (r, row) in outp.slice(r0 * width_out, m * width_out).chunks_exact_mut(width_out).enumerate() {
                    for (o, &b) in row[..dims.out].iter_mut().zip(b_o) {
                        *o += b;
                    }
                    row[dims.out] =
                        (0..d).map(|i| dot8(&tan[(i * m + r) * w..][..w], &w_o[i * w..][..w], |x, y| x * y)).sum();
                }
            }
        })
    });
    out
}

/// [out, Tr ∂out/∂x] from (a, θ): [`forward_trace`] as an op with no backward
/// (the likelihood only evaluates it).
struct Trace {
    dims: Dims,
}

impl CustomOp2 for Trace {
    fn name(&self) -> &'static str {
        "fused-mlp-trace"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l1.dims()[0];
        let out = forward_trace(&self.dims, slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, n);
        Ok((CpuStorage::F32(out), Shape::from((n, self.dims.out + 1))))
    }
}

/// (MLP_θ(a) [N, out], Tr ∂MLP_θ/∂x [N]) for a = [x, e] [N, d+E] with out = d,
/// in one forward-mode pass ([`forward_trace`]); neither is differentiable.
pub fn mlp_with_trace(a: &Tensor, theta: &Tensor, dims: Dims) -> Result<(Tensor, Tensor)> {
    if dims.out != dims.d {
        candle_core::bail!("fused MLP trace: needs as many outputs as inputs x, got {} and {}", dims.out, dims.d);
    }
    check(a, theta, dims)?;
    let both = a.contiguous()?.apply_op2_no_bwd(&theta.contiguous()?, &Trace { dims })?;
    Ok((both.narrow(1, 0, dims.out)?, both.narrow(1, dims.out, 1)?.squeeze(1)?))
}

/// f32 on the CPU, a [N, d+E] and θ [P].
fn check(a: &Tensor, theta: &Tensor, dims: Dims) -> Result<()> {
    if a.dtype() != DType::F32 || theta.dtype() != DType::F32 || !a.device().is_cpu() {
        candle_core::bail!("fused MLP: f32 on the CPU only, got {:?} on {:?}", a.dtype(), a.device());
    }
    if a.dims() != [a.dim(0)?, dims.input()] || theta.dims() != [dims.params()] {
        candle_core::bail!(
            "fused MLP: expected a [N, {}] and θ [{}], got {:?} and {:?}",
            dims.input(),
            dims.params(),
            a.shape(),
            theta.shape()
        );
    }
    Ok(())
}

/// MLP_θ(a) for a [N, d+E] (f32, CPU) and the flat parameters θ (see [`Dims`]).
pub fn mlp(a: &Tensor, theta: &Tensor, dims: Dims) -> Result<Tensor> {
    check(a, theta, dims)?;
    let keep = a.track_op() || theta.track_op();
    super::tape::apply2(&a.contiguous()?, &theta.contiguous()?, Forward { dims, keep, saved: Mutex::new(None) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{assert_same_gradients, max_diff};
    use candle_core::{Device, Var};

    #[test]
    fn parameter_count_matches_the_layout() {
        let dims = Dims { d: 2, e: 4, width: 8, hidden: 2, out: 2 };
        // W₀ 8×6 + 8; 2 × (8×8 + 8×4 + 8); W_o 2×8 + 2
        assert_eq!(dims.params(), 56 + 2 * 104 + 18);
        let plain = Dims { e: 0, ..dims };
        assert_eq!(plain.params(), (16 + 8) + 2 * 72 + 18);
    }

    /// The fused forward and both gradients match the same network written
    /// in candle ops (f32 rounding only), with and without a shared e.
    #[test]
    fn matches_candle_ops() {
        let dev = Device::Cpu;
        let dims = Dims { d: 3, e: 4, width: 16, hidden: 2, out: 3 };
        let n = 37;
        let mut rng = scoregen_core::rng::Rng::new(5, 0);
        let theta =
            Var::from_tensor(&rng.randn(dims.params(), DType::F32, &dev).unwrap().affine(0.4, 0.0).unwrap()).unwrap();
        for shared in [false, true] {
            let x = rng.randn((n, dims.d), DType::F32, &dev).unwrap();
            let e = if shared {
                rng.randn((1, dims.e), DType::F32, &dev).unwrap().repeat((n, 1)).unwrap()
            } else {
                rng.randn((n, dims.e), DType::F32, &dev).unwrap()
            };
            let a = Var::from_tensor(&Tensor::cat(&[&x, &e], 1).unwrap()).unwrap();
            let reference = |a: &Tensor, theta: &Tensor| -> Tensor {
                let (layers, output) = dims.offsets();
                let e = a.narrow(1, dims.d, dims.e).unwrap();
                let mut h = a.clone();
                for (l, off) in layers.iter().enumerate() {
                    let cols = if l == 0 { dims.input() } else { dims.width };
                    let wl = theta.narrow(0, off.w, dims.width * cols).unwrap().reshape((dims.width, cols)).unwrap();
                    let b = theta.narrow(0, off.b, dims.width).unwrap();
                    let mut z = h.matmul(&wl.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
                    if let Some(u) = off.u {
                        let ul =
                            theta.narrow(0, u, dims.width * dims.e).unwrap().reshape((dims.width, dims.e)).unwrap();
                        z = (z + e.matmul(&ul.t().unwrap()).unwrap()).unwrap();
                    }
                    h = z.silu().unwrap();
                }
                let wo = theta.narrow(0, output.w, dims.out * dims.width).unwrap().reshape((dims.out, dims.width));
                let bo = theta.narrow(0, output.b, dims.out).unwrap();
                h.matmul(&wo.unwrap().t().unwrap()).unwrap().broadcast_add(&bo).unwrap()
            };
            let weights = rng.randn((n, dims.out), DType::F32, &dev).unwrap();
            let ours = mlp(a.as_tensor(), theta.as_tensor(), dims).unwrap();
            let theirs = reference(a.as_tensor(), theta.as_tensor());
            assert!(max_diff(&ours, &theirs) < 1e-4, "forward differs by {}", max_diff(&ours, &theirs));
            let vars = [("a", a.as_tensor()), ("θ", theta.as_tensor())];
            assert_same_gradients(&ours, &theirs, &weights, &vars, (1e-4, 1.0), &format!("shared e: {shared}"));
        }
    }

    /// With θ a constant (a likelihood's ∇ₓ) the backward skips ∂/∂θ and
    /// gives the same ∂/∂a as with θ tracked; with nothing tracked the forward
    /// keeps no activations and gives the same output.
    #[test]
    fn constant_parameters_give_the_same_input_gradient() {
        let dev = Device::Cpu;
        let dims = Dims { d: 2, e: 6, width: 12, hidden: 2, out: 2 };
        let mut rng = scoregen_core::rng::Rng::new(9, 0);
        let theta = Var::from_tensor(&rng.randn(dims.params(), DType::F32, &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&rng.randn((20, dims.input()), DType::F32, &dev).unwrap()).unwrap();
        let tracked = scoregen_core::autodiff::grad(&mlp(a.as_tensor(), theta.as_tensor(), dims).unwrap(), &a).unwrap();
        let constant =
            scoregen_core::autodiff::grad(&mlp(a.as_tensor(), &theta.as_tensor().detach(), dims).unwrap(), &a);
        let diff = (tracked - constant.unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // nothing tracked (sampling): the activations stay in scratch, same outputs
        let kept = mlp(a.as_tensor(), theta.as_tensor(), dims).unwrap();
        let scratch = mlp(&a.as_tensor().detach(), &theta.as_tensor().detach(), dims).unwrap();
        let diff = (kept - scratch).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// Differentiating the fused gradient again is refused, naming the way out.
    #[test]
    fn second_derivative_is_an_error() {
        let dev = Device::Cpu;
        let dims = Dims { d: 2, e: 0, width: 4, hidden: 1, out: 2 };
        let theta = Var::from_tensor(&Tensor::ones(dims.params(), DType::F32, &dev).unwrap()).unwrap();
        let x = Var::from_tensor(&Tensor::ones((3, 2), DType::F32, &dev).unwrap()).unwrap();
        let s = mlp(x.as_tensor(), theta.as_tensor(), dims).unwrap();
        let gx = scoregen_core::autodiff::grad(&s, &x).unwrap();
        let err = scoregen_core::autodiff::backward(&gx.sqr().unwrap().sum_all().unwrap()).unwrap_err().to_string();
        assert!(err.contains("exact_higher_order"), "{err}");
    }
}
