//! Spatial self-attention over an image's L = H·W positions, with its
//! projections and residual, as one fused CPU op with a hand-written
//! first-order backward.
//!
//! For image b, with X_b [C, L] its (normalized) input in the [N, C, H, W]
//! layout already (channels × positions), h heads of d = D/h channels:
//!
//!   [Q; K; V] = W_qkv X_b + b_qkv 1ᵀ          ([3D, L], W_qkv [3D, C])
//!   P_h = softmax_rows(Q_hᵀ K_h / √d)           ([L, L], per head)
//!   O_h = V_h P_hᵀ                              ([d, L]; O = [O_1; …; O_h] [D, L])
//!   y_b = s·(r_b + W_o O + b_o 1ᵀ)              ([C, L], W_o [C, D])
//!
//! with r the residual (the block's input before its GroupNorm) and s its
//! scale (1/√2, or 1/`rescale_output_factor`). θ = [W_qkv, b_qkv, W_o, b_o].
//! Everything is in channel-major [·, L] blocks, so no transpose is ever
//! formed: each product is one GEMM with its operands' strides. The backward,
//! again per image, with g = s·dy:
//!
//!   dW_o = Σ_b g Oᵀ,  db_o = g 1,  dO = W_oᵀ g,  dr = g,
//!   dV_h = dO_h P_h,  dP = dO_hᵀ V_h,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),
//!   dQ_h = K_h dSᵀ/√d,  dK_h = Q_h dS/√d,
//!   dW_qkv = Σ_b d[Q; K; V] X_bᵀ,  db_qkv = d[Q; K; V] 1,  dX_b = W_qkvᵀ d[Q; K; V].
//!
//! The forward keeps [Q; K; V] and O of every image when anything is tracked
//! (4·D·L entries per image); P is recomputed per head in the backward (one
//! GEMM of d·L² against the L² it would take to keep).
//!
//! **Folded projections.** With θ constant (a frozen net: sampling, a
//! likelihood's ∇ₓ) and one head, the four projections fold into two C×C
//! matrices. The logits are S = QᵀK/√d = XᵀGX + 1uᵀ + (terms the same along
//! each row, which the softmax cancels), and P's rows sum to one, so
//!
//!   G = W_qᵀW_k/√d,  c = W_kᵀb_q/√d,  u = Xᵀc,  K′ = G X,
//!   P = softmax_rows(XᵀK′ + 1uᵀ),  Z = W_vo X,  y_b = s·r_b + Z Pᵀ + b′1ᵀ,
//!   W_vo = s·W_o W_v,  b′ = s·(W_o b_v + b_o),
//!
//! with [K′; Z] = [G; W_vo] X one GEMM. Its backward, with dS = P ⊙ (dP −
//! rowsum(dP ⊙ P)):
//!
//!   dZ = dy P,  dP = dyᵀ Z,  dK′ = X dS,
//!   dX_b = K′ dSᵀ + [G; W_vo]ᵀ [dK′; dZ] + c (1ᵀ dS).
//!
//! Per image that is 2C²L + 2CL² multiply–adds forward and 2C²L + 4CL²
//! backward, against 4DCL + 2DL² and 4DCL + 4DL² with the projections
//! (D = C = L = 256 in google/ddpm-cifar10-32's attention: a third fewer
//! forward, a quarter fewer backward); used where that saves more than
//! making the matrices for the call costs ([`Dims::folds`]; 2C²D, a few
//! percent of a batch's forward at C = L).
//!
//! Images are split across candle's threads; each image's GEMMs run on its
//! thread. dθ is summed per range of images and the ranges added in their
//! order ([`par_ranges_sum`]), so gradients are bit-reproducible.
//!
//! **First order only**, like [`super::conv`]: inside
//! [`scoregen_core::autodiff::exact_higher_order`], for f64 and off the CPU
//! the U-Nets take their candle-ops path instead.
//!
//! Written by hand because candle's attention is a dozen tensor ops, each a
//! pass and an allocation, with its softmax and the projections' bias and
//! broadcast-weight gradients as single-threaded strided reductions (a third
//! of the CIFAR U-Net's training step on two threads went to its six
//! attention layers); the GEMMs are the `gemm` crate's.

use super::dense::{gemm_serial, Mat};
use super::fused::{
    dot8, exp_f32_fma, par_ranges, par_ranges_sum, refuse_second_order, simd_builds, slice, sum8, SharedMut,
};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// The sizes of one call: N images of C channels at L positions, D = h·d
/// projected channels in h heads.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    l: usize,
    inner: usize,
    heads: usize,
}

impl Dims {
    /// Channels per head.
    fn d(&self) -> usize {
        self.inner / self.heads
    }

    /// θ's parts: (W_qkv, b_qkv, W_o, b_o).
    fn split<'a>(&self, theta: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32], &'a [f32]) {
        let (w_qkv, rest) = theta.split_at(3 * self.inner * self.c);
        let (b_qkv, rest) = rest.split_at(3 * self.inner);
        let (w_o, b_o) = rest.split_at(self.c * self.inner);
        (w_qkv, b_qkv, w_o, b_o)
    }

    fn theta_len(&self) -> usize {
        3 * self.inner * self.c + 3 * self.inner + self.c * self.inner + self.c
    }

    /// Entries of one image's input or output (C·L), of its [Q; K; V] (3D·L) and of O (D·L).
    fn image(&self) -> usize {
        self.c * self.l
    }

    fn qkv(&self) -> usize {
        3 * self.inner * self.l
    }

    fn o(&self) -> usize {
        self.inner * self.l
    }

    /// Whether a constant θ folds ([`Folded`]): one head, and fewer
    /// multiply–adds in the forward with the folded matrices made for the
    /// call, (4D − 2C)·C·L saved per image against the 2C²D it takes to make
    /// them (C < 2D, and N·L > C when D = C).
    fn folds(&self) -> bool {
        let saved = (4 * self.inner).saturating_sub(2 * self.c) * self.c * self.l * self.n;
        self.heads == 1 && saved > 2 * self.c * self.c * self.inner
    }
}

/// A constant θ with one head, folded (see the module docs): [G; W_vo]
/// [2C, C], c [C] and b′ [C], with 1/√d and s inside.
struct Folded {
    gw: Vec<f32>,
    c: Vec<f32>,
    b: Vec<f32>,
}

impl Folded {
    fn new(dims: &Dims, theta: &[f32], s: f32) -> Self {
        let (c, d) = (dims.c, dims.inner);
        let (w_qkv, b_qkv, w_o, b_o) = dims.split(theta);
        let (w_q, w_k, w_v) = (&w_qkv[..d * c], &w_qkv[d * c..2 * d * c], &w_qkv[2 * d * c..]);
        let (b_q, b_v) = (&b_qkv[..d], &b_qkv[2 * d..]);
        let scale = 1.0 / (d as f32).sqrt();
        let mut gw = vec![0f32; 2 * c * c];
        // SAFETY: G = W_qᵀ W_k and W_vo = W_o W_v, [C, C] each: W_q, W_k, W_v [D, C], W_o [C, D].
        unsafe {
            matmul(&mut gw[..c * c], c, d, false, Mat::t(w_q, c), Mat::rows(w_k, c));
            matmul(&mut gw[c * c..], c, d, false, Mat::rows(w_o, d), Mat::rows(w_v, c));
        }
        let (g, w_vo) = gw.split_at_mut(c * c);
        g.iter_mut().for_each(|v| *v *= scale);
        w_vo.iter_mut().for_each(|v| *v *= s);
        // c_i = Σ_e W_k[e, i] b_q[e] / √d
        let mut cv = vec![0f32; c];
        for (row, &bq) in w_k.chunks_exact(c).zip(b_q) {
            cv.iter_mut().zip(row).for_each(|(ci, &w)| *ci += w * bq);
        }
        cv.iter_mut().for_each(|v| *v *= scale);
        // b′_i = s (Σ_e W_o[i, e] b_v[e] + b_o[i])
        let b = w_o.chunks_exact(d).zip(b_o).map(|(row, &bo)| s * (dot8(row, b_v, |w, v| w * v) + bo)).collect();
        Self { gw, c: cv, b }
    }
}

/// out [rows, cols] := (out if `acc`) + A B for A [rows, k] and B [k, cols]
/// given by their strides, computed as outᵀ = Bᵀ Aᵀ so the GEMM's m runs
/// along out's contiguous rows (the `gemm` crate's fast axis).
///
/// # Safety
/// A and B must be valid for their shapes and strides.
unsafe fn matmul(out: &mut [f32], cols: usize, k: usize, acc: bool, a: Mat, b: Mat) {
    let rows = out.len() / cols;
    // SAFETY: outᵀ [cols, rows] with strides (1, cols) is out; forwarded from the caller.
    unsafe { gemm_serial(cols, rows, k, out.as_mut_ptr(), (1, cols as isize), acc, b.transposed(), a.transposed()) }
}

/// Each row of p := softmax(scale·row), in place: the maximum, the
/// exponentials and the scaling each one vectorized pass, the sum in eight
/// lanes ([`dot8`]; a running sum would keep the exponentials scalar).
#[inline(always)]
fn softmax_rows_body(p: &mut [f32], l: usize, scale: f32) {
    for row in p.chunks_exact_mut(l) {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let chunks = row.chunks_exact(8);
        let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for c in chunks {
            for (m, &v) in lanes.iter_mut().zip(c) {
                *m = m.max(v);
            }
        }
        max = lanes.iter().fold(max, |m, &v| m.max(v));
        for v in row.iter_mut() {
            *v = exp_f32_fma(scale * (*v - max));
        }
        let inv = 1.0 / sum8(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Each row of dp := scale·p ⊙ (dp − Σ_j dp_j p_j): the softmax's backward
/// (times the logits' scale), in place.
#[inline(always)]
fn softmax_rows_backward_body(p: &[f32], dp: &mut [f32], l: usize, scale: f32) {
    for (p, dp) in p.chunks_exact(l).zip(dp.chunks_exact_mut(l)) {
        let dot = dot8(p, dp, |p, g| p * g);
        for (g, &p) in dp.iter_mut().zip(p) {
            *g = scale * p * (*g - dot);
        }
    }
}

simd_builds! {
    /// [`softmax_rows_body`] in the CPU's widest build.
    fn softmax_rows(p: &mut [f32], l: usize, scale: f32) = softmax_rows_body;
}

simd_builds! {
    /// [`softmax_rows_backward_body`] in the CPU's widest build.
    fn softmax_rows_backward(p: &[f32], dp: &mut [f32], l: usize, scale: f32) = softmax_rows_backward_body;
}

/// rows [r, len] each filled with v_i.
fn fill_rows(out: &mut [f32], len: usize, v: &[f32]) {
    for (row, &v) in out.chunks_exact_mut(len).zip(v) {
        row.fill(v);
    }
}

/// acc_i += Σ_j m[i, j] for m [acc.len(), len].
fn add_row_sums(acc: &mut [f32], m: &[f32], len: usize) {
    for (a, row) in acc.iter_mut().zip(m.chunks_exact(len)) {
        *a += sum8(row);
    }
}

/// P_h [L, L] = softmax_rows(Q_hᵀ K_h / √d) for head h of an image's [Q; K; V].
fn probabilities(dims: &Dims, qkv: &[f32], h: usize, p: &mut Vec<f32>) {
    let (l, d, inner) = (dims.l, dims.d(), dims.inner);
    let (q, k) = (&qkv[h * d * l..][..d * l], &qkv[(inner + h * d) * l..][..d * l]);
    p.resize(l * l, 0.0);
    // SAFETY: Qᵀ [L, d] (Q [d, L] read transposed), K [d, L].
    unsafe { matmul(p, l, d, false, Mat::t(q, l), Mat::rows(k, l)) };
    softmax_rows(p, l, 1.0 / (d as f32).sqrt());
}

/// Image b's forward: [Q; K; V] and O into `qkv` and `o`, y_b into `y`.
#[allow(clippy::too_many_arguments)]
fn image_forward(
    dims: &Dims,
    x: &[f32],
    theta: &[f32],
    w_o_scaled: &[f32],
    r: &[f32],
    s: f32,
    qkv: &mut [f32],
    o: &mut [f32],
    p: &mut Vec<f32>,
    y: &mut [f32],
) {
    let (l, c, inner, d) = (dims.l, dims.c, dims.inner, dims.d());
    let (w_qkv, b_qkv, _, b_o) = dims.split(theta);
    fill_rows(qkv, l, b_qkv);
    // SAFETY (all products): W_qkv [3D, C], X [C, L], V_h [d, L], P [L, L], W_o [C, D], O [D, L].
    unsafe { matmul(qkv, l, c, true, Mat::rows(w_qkv, c), Mat::rows(x, l)) };
    for h in 0..dims.heads {
        probabilities(dims, qkv, h, p);
        let v = &qkv[(2 * inner + h * d) * l..][..d * l];
        unsafe { matmul(&mut o[h * d * l..][..d * l], l, l, false, Mat::rows(v, l), Mat::t(p, l)) };
    }
    for ((y, r), &b) in y.chunks_exact_mut(l).zip(r.chunks_exact(l)).zip(b_o) {
        for (y, &r) in y.iter_mut().zip(r) {
            *y = s * (r + b);
        }
    }
    unsafe { matmul(y, l, inner, true, Mat::rows(w_o_scaled, inner), Mat::rows(o, l)) };
}

/// P [L, L] = softmax_rows(XᵀK′ + 1uᵀ), u = Xᵀc, for a folded layer's image.
fn folded_probabilities(dims: &Dims, f: &Folded, x: &[f32], k: &[f32], u: &mut Vec<f32>, p: &mut Vec<f32>) {
    let (l, c) = (dims.l, dims.c);
    u.clear();
    u.resize(l, 0.0);
    for (row, &ci) in x.chunks_exact(l).zip(&f.c) {
        u.iter_mut().zip(row).for_each(|(u, &x)| *u += ci * x);
    }
    p.resize(l * l, 0.0);
    // SAFETY: Xᵀ [L, C] (X [C, L] read transposed), K′ [C, L].
    unsafe { matmul(p, l, c, false, Mat::t(x, l), Mat::rows(k, l)) };
    for row in p.chunks_exact_mut(l) {
        row.iter_mut().zip(u.iter()).for_each(|(s, &u)| *s += u);
    }
    softmax_rows(p, l, 1.0);
}

/// A folded layer's image forward: [K′; Z] into `kz`, y_b into `y`.
#[allow(clippy::too_many_arguments)]
fn folded_image_forward(
    dims: &Dims,
    f: &Folded,
    x: &[f32],
    r: &[f32],
    s: f32,
    kz: &mut [f32],
    (u, p): (&mut Vec<f32>, &mut Vec<f32>),
    y: &mut [f32],
) {
    let (l, c) = (dims.l, dims.c);
    // SAFETY (all products): [G; W_vo] [2C, C], X [C, L], Z [C, L], P [L, L].
    unsafe { matmul(kz, l, c, false, Mat::rows(&f.gw, c), Mat::rows(x, l)) };
    let (k, z) = kz.split_at(c * l);
    folded_probabilities(dims, f, x, k, u, p);
    for ((y, r), &b) in y.chunks_exact_mut(l).zip(r.chunks_exact(l)).zip(&f.b) {
        for (y, &r) in y.iter_mut().zip(r) {
            *y = s * r + b;
        }
    }
    unsafe { matmul(y, l, l, true, Mat::rows(z, l), Mat::t(p, l)) };
}

/// y [N, C, L] for x [N, C, L] and r through a folded layer; with `keep`,
/// [K′; Z] [N, 2C, L] for the backward.
fn folded_forward(dims: &Dims, f: &Folded, x: &[f32], r: &[f32], s: f32, keep: bool) -> (Vec<f32>, Vec<f32>) {
    let (n, img, kz_len) = (dims.n, dims.image(), 2 * dims.image());
    let mut y: Vec<f32> = Vec::with_capacity(n * img);
    let mut kz_all: Vec<f32> = Vec::with_capacity(if keep { n * kz_len } else { 0 });
    let (yp, kp) = (SharedMut::from_ptr(y.as_mut_ptr()), SharedMut::from_ptr(kz_all.as_mut_ptr()));
    par_ranges(n, |images| {
        let (mut kz_own, mut u, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for b in images {
            // SAFETY: image b's blocks of y and [K′; Z], written by this task only.
            let kz = if keep {
                unsafe { kp.slice(b * kz_len, kz_len) }
            } else {
                kz_own.resize(kz_len, 0.0);
                &mut kz_own[..]
            };
            let y = unsafe { yp.slice(b * img, img) };
            folded_image_forward(dims, f, &x[b * img..][..img], &r[b * img..][..img], s, kz, (&mut u, &mut p), y);
        }
    });
    // SAFETY: the tasks covered all n images, each writing its whole blocks.
    unsafe {
        y.set_len(n * img);
        if keep {
            kz_all.set_len(n * kz_len);
        }
    }
    (y, kz_all)
}

/// dx [N·C·L] of a folded layer from x, dy and the forward's [K′; Z].
fn folded_backward(dims: &Dims, f: &Folded, x: &[f32], dy: &[f32], kz_all: &[f32]) -> Vec<f32> {
    let (l, c, img) = (dims.l, dims.c, dims.image());
    let mut out = vec![0f32; dims.n * img];
    let dx_out = SharedMut::new(&mut out);
    par_ranges(dims.n, |images| {
        let (mut u, mut p, mut dp, mut dkz, mut colsum) =
            (Vec::new(), Vec::new(), vec![0f32; l * l], vec![0f32; 2 * img], vec![0f32; l]);
        for b in images {
            let (x, dy) = (&x[b * img..][..img], &dy[b * img..][..img]);
            let (k, z) = kz_all[2 * b * img..][..2 * img].split_at(img);
            folded_probabilities(dims, f, x, k, &mut u, &mut p);
            let (dk, dz) = dkz.split_at_mut(img);
            // SAFETY: image b's block of dx, written by this task only.
            let dx = unsafe { dx_out.slice(b * img, img) };
            // SAFETY (all products): dy, X, K′, Z, dK′, dZ [C, L], P and dS [L, L], [G; W_vo] [2C, C].
            unsafe {
                // dZ = dy P, dP = dyᵀ Z, then dS in place
                matmul(dz, l, l, false, Mat::rows(dy, l), Mat::rows(&p, l));
                matmul(&mut dp, l, c, false, Mat::t(dy, l), Mat::rows(z, l));
                softmax_rows_backward(&p, &mut dp, l, 1.0);
                // dK′ = X dS; dX = K′ dSᵀ + [G; W_vo]ᵀ [dK′; dZ]
                matmul(dk, l, l, false, Mat::rows(x, l), Mat::rows(&dp, l));
                matmul(dx, l, l, false, Mat::rows(k, l), Mat::t(&dp, l));
                matmul(dx, l, 2 * c, true, Mat::t(&f.gw, c), Mat::rows(&dkz, l));
            }
            // dX += c (1ᵀ dS): u's term
            colsum.fill(0.0);
            for row in dp.chunks_exact(l) {
                colsum.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            for (row, &ci) in dx.chunks_exact_mut(l).zip(&f.c) {
                row.iter_mut().zip(&colsum).for_each(|(d, &v)| *d += ci * v);
            }
        }
    });
    out
}

/// y [N, C, L] for x [N, C, L], θ and r; with `keep`, [Q; K; V] [N, 3D, L]
/// and O [N, D, L] for the backward.
fn forward(dims: &Dims, x: &[f32], theta: &[f32], r: &[f32], s: f32, keep: bool) -> (Vec<f32>, Option<Arc<Kept>>) {
    let (_, _, w_o, _) = dims.split(theta);
    let w_o_scaled: Vec<f32> = w_o.iter().map(|v| s * v).collect();
    let n = dims.n;
    let mut y: Vec<f32> = Vec::with_capacity(n * dims.image());
    let (mut qkv_all, mut o_all): (Vec<f32>, Vec<f32>) = if keep {
        (Vec::with_capacity(n * dims.qkv()), Vec::with_capacity(n * dims.o()))
    } else {
        (Vec::new(), Vec::new())
    };
    let (yp, qp, op) = (
        SharedMut::from_ptr(y.as_mut_ptr()),
        SharedMut::from_ptr(qkv_all.as_mut_ptr()),
        SharedMut::from_ptr(o_all.as_mut_ptr()),
    );
    par_ranges(n, |images| {
        let (mut qkv_own, mut o_own, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for b in images {
            let (img, len) = (b * dims.image(), dims.image());
            // SAFETY: image b's blocks of y, [Q; K; V] and O, written by this task only.
            let (qkv, o) = if keep {
                unsafe { (qp.slice(b * dims.qkv(), dims.qkv()), op.slice(b * dims.o(), dims.o())) }
            } else {
                qkv_own.resize(dims.qkv(), 0.0);
                o_own.resize(dims.o(), 0.0);
                (&mut qkv_own[..], &mut o_own[..])
            };
            let y = unsafe { yp.slice(img, len) };
            let (x, r) = (&x[img..][..len], &r[img..][..len]);
            image_forward(dims, x, theta, &w_o_scaled, r, s, qkv, o, &mut p, y);
        }
    });
    // SAFETY: the tasks covered all n images, each writing its whole blocks.
    unsafe {
        y.set_len(n * dims.image());
        if keep {
            qkv_all.set_len(n * dims.qkv());
            o_all.set_len(n * dims.o());
        }
    }
    (y, keep.then(|| Arc::new(Kept::Projected(qkv_all, o_all))))
}

/// What the forward keeps for the backward.
enum Kept {
    /// [Q; K; V] and O of every image.
    Projected(Vec<f32>, Vec<f32>),
    /// A folded layer's matrices and [K′; Z] of every image.
    Folded(Folded, Vec<f32>),
}

/// [dx (N·C·L), and with `want_theta` dθ] from x, θ, dy and what the forward
/// kept; dx stays zero unless `want_x`.
#[allow(clippy::too_many_arguments)]
fn backward(
    dims: &Dims,
    x: &[f32],
    theta: &[f32],
    dy: &[f32],
    s: f32,
    want: (bool, bool),
    (qkv_all, o_all): (&[f32], &[f32]),
) -> Vec<f32> {
    let (want_x, want_theta) = want;
    let (l, c, inner, d, n) = (dims.l, dims.c, dims.inner, dims.d(), dims.n);
    let (w_qkv, _, w_o, _) = dims.split(theta);
    let w_o_scaled: Vec<f32> = w_o.iter().map(|v| s * v).collect();
    let theta_len = if want_theta { dims.theta_len() } else { 0 };
    let mut out = vec![0f32; n * dims.image()];
    let dx_out = SharedMut::new(&mut out);
    let total = par_ranges_sum(n, theta_len, |images| {
        let mut partial = vec![0f32; theta_len];
        let (mut d_o, mut dqkv, mut p, mut dp) = (vec![0f32; dims.o()], vec![0f32; dims.qkv()], Vec::new(), Vec::new());
        for b in images {
            let (x, dy) = (&x[b * dims.image()..][..dims.image()], &dy[b * dims.image()..][..dims.image()]);
            let (qkv, o) = (&qkv_all[b * dims.qkv()..][..dims.qkv()], &o_all[b * dims.o()..][..dims.o()]);
            // SAFETY (all products): dy [C, L], O [D, L], W_o [C, D], P and dP [L, L],
            // the heads' [d, L] blocks, W_qkv [3D, C], X [C, L].
            if want_theta {
                // dW_o += dy Oᵀ and db_o += dy 1 (times s at the end)
                let (_, rest) = partial.split_at_mut(3 * inner * c + 3 * inner);
                let (dw_o, db_o) = rest.split_at_mut(c * inner);
                unsafe { matmul(dw_o, inner, l, true, Mat::rows(dy, l), Mat::t(o, l)) };
                add_row_sums(db_o, dy, l);
            }
            // dO = (s W_o)ᵀ dy
            unsafe { matmul(&mut d_o, l, c, false, Mat::t(&w_o_scaled, inner), Mat::rows(dy, l)) };
            for h in 0..dims.heads {
                let at = |part: usize| (part * inner + h * d) * l;
                probabilities(dims, qkv, h, &mut p);
                let (q, k, v) = (&qkv[at(0)..][..d * l], &qkv[at(1)..][..d * l], &qkv[at(2)..][..d * l]);
                let d_oh = &d_o[h * d * l..][..d * l];
                // dV_h = dO_h P
                unsafe { matmul(&mut dqkv[at(2)..][..d * l], l, l, false, Mat::rows(d_oh, l), Mat::rows(&p, l)) };
                // dP = dO_hᵀ V_h, then dS/√d in place
                dp.resize(l * l, 0.0);
                unsafe { matmul(&mut dp, l, d, false, Mat::t(d_oh, l), Mat::rows(v, l)) };
                softmax_rows_backward(&p, &mut dp, l, 1.0 / (d as f32).sqrt());
                // dQ_h = K_h dSᵀ/√d, dK_h = Q_h dS/√d
                unsafe {
                    matmul(&mut dqkv[at(0)..][..d * l], l, l, false, Mat::rows(k, l), Mat::t(&dp, l));
                    matmul(&mut dqkv[at(1)..][..d * l], l, l, false, Mat::rows(q, l), Mat::rows(&dp, l));
                }
            }
            if want_theta {
                // dW_qkv += d[Q; K; V] Xᵀ, db_qkv += d[Q; K; V] 1
                let (dw_qkv, rest) = partial.split_at_mut(3 * inner * c);
                unsafe { matmul(dw_qkv, c, l, true, Mat::rows(&dqkv, l), Mat::t(x, l)) };
                add_row_sums(&mut rest[..3 * inner], &dqkv, l);
            }
            if want_x {
                // SAFETY: image b's block of dx, written by this task only.
                let dx = unsafe { dx_out.slice(b * dims.image(), dims.image()) };
                unsafe { matmul(dx, l, 3 * inner, false, Mat::t(w_qkv, c), Mat::rows(&dqkv, l)) };
            }
        }
        partial
    });
    if want_theta {
        let mut total = total;
        for v in &mut total[3 * inner * c + 3 * inner..] {
            *v *= s;
        }
        out.extend_from_slice(&total);
    }
    out
}

/// y = s·(r + attention(x)) (see the module docs): a [`CustomOp3`] on (x, θ, r).
struct Forward {
    dims: Dims,
    scale: f64,
    keep: bool,
    /// θ is constant and [`Dims::folds`]: run the folded layer.
    fold: bool,
    /// What the forward kept.
    kept: Mutex<Option<Arc<Kept>>>,
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let (x, theta, r) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, slice::<f32>(s3, l3)?);
        let (dims, s) = (&self.dims, self.scale as f32);
        let (y, kept) = if self.fold {
            let f = Folded::new(dims, theta, s);
            let (y, kz) = folded_forward(dims, &f, x, r, s, self.keep);
            (y, self.keep.then(|| Arc::new(Kept::Folded(f, kz))))
        } else {
            forward(dims, x, theta, r, s, self.keep)
        };
        *self.kept.lock().expect("fused attention: kept activations") = kept;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        theta: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = (x.track_op(), theta.track_op());
        let dr = Some(dy.affine(self.scale, 0.0)?);
        if !want.0 && !want.1 {
            return Ok((None, None, dr));
        }
        let Some(kept) = self.kept.lock().expect("fused attention: kept activations").clone() else {
            candle_core::bail!("fused attention: a backward pass without the forward's activations")
        };
        let op = Backward { dims: self.dims, scale: self.scale, want, kept };
        let all = x.apply_op3(theta, &dy.contiguous()?, op)?;
        let xn = x.elem_count();
        let dx = want.0.then(|| all.narrow(0, 0, xn)?.reshape(x.shape())).transpose()?;
        let dtheta = want.1.then(|| all.narrow(0, xn, theta.elem_count())).transpose()?;
        Ok((dx, dtheta, dr))
    }
}

/// [dx, dθ] from (x, θ, dy): the backward of [`Forward`].
struct Backward {
    dims: Dims,
    scale: f64,
    /// (dx, dθ) wanted.
    want: (bool, bool),
    kept: Arc<Kept>,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "fused-attention-backward"
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
        let (x, theta, dy) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, slice::<f32>(s3, l3)?);
        let all = match &*self.kept {
            Kept::Projected(qkv, o) => backward(&self.dims, x, theta, dy, self.scale as f32, self.want, (qkv, o)),
            // θ is constant: dx only
            Kept::Folded(f, kz) => folded_backward(&self.dims, f, x, dy, kz),
        };
        let len = all.len();
        Ok((CpuStorage::F32(all), Shape::from(len)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _theta: &Tensor,
        _dy: &Tensor,
        _res: &Tensor,
        _grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        refuse_second_order("attention")
    }
}

/// The projections of an attention layer: W_qkv [3D, C] (the rows of W_q,
/// W_k, W_v stacked), b_qkv [3D], W_o [C, D], b_o [C].
#[derive(Clone, Copy)]
pub struct Projections<'a> {
    pub w_qkv: &'a Tensor,
    pub b_qkv: &'a Tensor,
    pub w_o: &'a Tensor,
    pub b_o: &'a Tensor,
}

/// A linear layer's (W, b), detached when `frozen`; b = 0 when it has none.
pub fn linear_parts(layer: &candle_nn::Linear, frozen: bool) -> Result<(Tensor, Tensor)> {
    let w = layer.weight();
    let b = match layer.bias() {
        Some(b) => b.clone(),
        None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?,
    };
    Ok(if frozen { (w.detach(), b.detach()) } else { (w.clone(), b) })
}

/// s·(r + W_o MHA(x) + b_o) for x, r [N, C, H, W] (x normalized, r the
/// block's input) with `heads` heads over the H·W positions, see the module
/// docs: f32 on the CPU.
pub fn attention(x: &Tensor, r: &Tensor, p: Projections, heads: usize, scale: f64) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let inner = p.w_o.dim(1)?;
    let all = [x, r, p.w_qkv, p.b_qkv, p.w_o, p.b_o];
    if all.iter().any(|t| t.dtype() != DType::F32 || !t.device().is_cpu()) {
        candle_core::bail!("fused attention: f32 on the CPU only, got {:?} on {:?}", x.dtype(), x.device());
    }
    if heads == 0
        || !inner.is_multiple_of(heads)
        || r.dims() != x.dims()
        || p.w_qkv.dims() != [3 * inner, c]
        || p.b_qkv.dims() != [3 * inner]
        || p.w_o.dims() != [c, inner]
        || p.b_o.dims() != [c]
    {
        candle_core::bail!(
            "fused attention: expected r {:?}, W_qkv [3D, {c}], b_qkv [3D], W_o [{c}, D], b_o [{c}] with {heads} heads \
             dividing D, got {:?}, {:?}, {:?}, {:?}, {:?}",
            x.shape(),
            r.shape(),
            p.w_qkv.shape(),
            p.b_qkv.shape(),
            p.w_o.shape(),
            p.b_o.shape()
        );
    }
    let theta = Tensor::cat(&[p.w_qkv.flatten_all()?, p.b_qkv.clone(), p.w_o.flatten_all()?, p.b_o.clone()], 0)?;
    let x = x.contiguous()?;
    let keep = x.track_op() || theta.track_op();
    let dims = Dims { n, c, l: h * w, inner, heads };
    let fold = !theta.track_op() && dims.folds();
    super::tape::apply3(&x, &theta, &r.contiguous()?, Forward { dims, scale, keep, fold, kept: Mutex::new(None) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{assert_same_gradients, max_diff};
    use candle_core::{Device, Var, D};

    /// The same layer in candle's ops: the definition above, head by head.
    fn reference(x: &Tensor, r: &Tensor, p: Projections, heads: usize, s: f64) -> Tensor {
        let (n, c, h, w) = x.dims4().unwrap();
        let inner = p.w_o.dim(1).unwrap();
        let d = inner / heads;
        let x = x.reshape((n, c, h * w)).unwrap();
        // [N, 3D, L] = W_qkv X + b
        let qkv = p
            .w_qkv
            .unsqueeze(0)
            .unwrap()
            .broadcast_as((n, 3 * inner, c))
            .unwrap()
            .matmul(&x)
            .unwrap()
            .broadcast_add(&p.b_qkv.unsqueeze(1).unwrap())
            .unwrap();
        let mut outs = Vec::new();
        for hd in 0..heads {
            let part = |i: usize| qkv.narrow(1, i * inner + hd * d, d).unwrap().contiguous().unwrap();
            let (q, k, v) = (part(0), part(1), part(2));
            let logits = (q.transpose(1, 2).unwrap().matmul(&k).unwrap() / (d as f64).sqrt()).unwrap();
            let prob = candle_nn::ops::softmax(&logits, D::Minus1).unwrap();
            outs.push(v.matmul(&prob.transpose(1, 2).unwrap()).unwrap());
        }
        let o = Tensor::cat(&outs, 1).unwrap();
        let y = p
            .w_o
            .unsqueeze(0)
            .unwrap()
            .broadcast_as((n, c, inner))
            .unwrap()
            .matmul(&o)
            .unwrap()
            .broadcast_add(&p.b_o.unsqueeze(1).unwrap())
            .unwrap();
        ((y.reshape((n, c, h, w)).unwrap() + r).unwrap() * s).unwrap()
    }

    struct Case {
        x: Var,
        r: Var,
        vars: [Var; 4],
    }

    fn case(rng: &mut scoregen_core::rng::Rng, (n, c, h, w, inner): (usize, usize, usize, usize, usize)) -> Case {
        let dev = Device::Cpu;
        let mut v = |shape: &[usize], sd: f64| {
            Var::from_tensor(&rng.randn(shape, DType::F32, &dev).unwrap().affine(sd, 0.0).unwrap()).unwrap()
        };
        let (x, r) = (v(&[n, c, h, w], 1.0), v(&[n, c, h, w], 1.0));
        // weights of size 1/√C: logits of order one, so the softmax is neither flat nor one-hot
        let sd = 1.0 / (c as f64).sqrt();
        let vars = [v(&[3 * inner, c], 2.0 * sd), v(&[3 * inner], 0.5), v(&[c, inner], sd), v(&[c], 0.5)];
        Case { x, r, vars }
    }

    fn projections(k: &Case) -> Projections<'_> {
        let [w_qkv, b_qkv, w_o, b_o] = &k.vars;
        Projections { w_qkv: w_qkv.as_tensor(), b_qkv: b_qkv.as_tensor(), w_o: w_o.as_tensor(), b_o: b_o.as_tensor() }
    }

    /// The op equals the layer in candle's ops, and so do its gradients for x,
    /// r and each of W_qkv, b_qkv, W_o, b_o: one and several heads, L = 7×7
    /// (the 28×28 U-Net's), 4×4 and 3×5, a batch of 3. f32 sums of up to
    /// max(C, D, L) = 49 terms of size ~1 through two GEMMs and a softmax:
    /// 1e-4 relative to each gradient's largest entry is many times their
    /// rounding, and far below a wrong term (a dropped 1/√d, a transposed P).
    #[test]
    fn matches_candle_ops_and_their_gradients() {
        let mut rng = scoregen_core::rng::Rng::new(21, 0);
        for (shape, heads) in [((3, 8, 7, 7, 8), 1), ((3, 8, 4, 4, 8), 2), ((2, 6, 3, 5, 12), 3), ((3, 5, 4, 4, 4), 4)]
        {
            let k = case(&mut rng, shape);
            let s = 0.7;
            let ours = attention(k.x.as_tensor(), k.r.as_tensor(), projections(&k), heads, s).unwrap();
            let theirs = reference(k.x.as_tensor(), k.r.as_tensor(), projections(&k), heads, s);
            let name = format!("{shape:?} heads {heads}");
            assert!(max_diff(&ours, &theirs) < 1e-5, "{name}: forward {}", max_diff(&ours, &theirs));
            let weights = rng.randn(ours.shape(), DType::F32, &Device::Cpu).unwrap();
            let [a, b, c, d] = &k.vars;
            let vars = [
                ("x", k.x.as_tensor()),
                ("r", k.r.as_tensor()),
                ("W_qkv", a.as_tensor()),
                ("b_qkv", b.as_tensor()),
                ("W_o", c.as_tensor()),
                ("b_o", d.as_tensor()),
            ];
            assert_same_gradients(&ours, &theirs, &weights, &vars, (1e-4, 0.0), &name);
        }
    }

    /// With constant projections (a frozen net, a likelihood's ∇ₓ) the op
    /// gives the same input gradient without forming dθ.
    #[test]
    fn constant_projections_give_the_same_input_gradient() {
        let mut rng = scoregen_core::rng::Rng::new(22, 0);
        let k = case(&mut rng, (2, 8, 4, 4, 8));
        let weights = rng.randn((2, 8, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let dx = |p: Projections| {
            let y = attention(k.x.as_tensor(), k.r.as_tensor(), p, 2, 0.7).unwrap();
            scoregen_core::autodiff::grad(&(y * &weights).unwrap(), &k.x).unwrap()
        };
        let tracked = dx(projections(&k));
        let detached: Vec<Tensor> = k.vars.iter().map(|v| v.as_tensor().detach()).collect();
        let p = Projections { w_qkv: &detached[0], b_qkv: &detached[1], w_o: &detached[2], b_o: &detached[3] };
        assert_eq!(max_diff(&tracked, &dx(p)), 0.0);
    }

    /// Constant projections with one head and C < 2D fold ([`Folded`]): the
    /// op still equals the layer in candle's ops, and so do its gradients for
    /// x and r, at the tolerances of `matches_candle_ops_and_their_gradients`.
    /// Covers C = D, C < D, L = 7×7 and 3×5, and two cases that do not fold
    /// beside them (C = 2D; one image of L = 4 < C); catches a dropped u term
    /// (b_q's part of the logits), W_o b_v left out of b′, or s applied twice.
    #[test]
    fn folded_constant_projections_match_candle_ops() {
        let mut rng = scoregen_core::rng::Rng::new(25, 0);
        for (shape, fold) in
            [((3, 8, 7, 7, 8), true), ((2, 6, 3, 5, 12), true), ((2, 8, 4, 4, 4), false), ((1, 8, 2, 2, 8), false)]
        {
            let k = case(&mut rng, shape);
            let detached: Vec<Tensor> = k.vars.iter().map(|v| v.as_tensor().detach()).collect();
            let p = Projections { w_qkv: &detached[0], b_qkv: &detached[1], w_o: &detached[2], b_o: &detached[3] };
            let s = 0.7;
            let folds = Dims { n: shape.0, c: shape.1, l: shape.2 * shape.3, inner: shape.4, heads: 1 }.folds();
            assert_eq!(folds, fold, "{shape:?}");
            let ours = attention(k.x.as_tensor(), k.r.as_tensor(), p, 1, s).unwrap();
            let theirs = reference(k.x.as_tensor(), k.r.as_tensor(), p, 1, s);
            let name = format!("{shape:?} folded: {folds}");
            assert!(max_diff(&ours, &theirs) < 1e-5, "{name}: forward {}", max_diff(&ours, &theirs));
            let weights = rng.randn(ours.shape(), DType::F32, &Device::Cpu).unwrap();
            let vars = [("x", k.x.as_tensor()), ("r", k.r.as_tensor())];
            assert_same_gradients(&ours, &theirs, &weights, &vars, (1e-4, 0.0), &name);
        }
    }

    /// dθ is a sum over images of per-range partials added in range order:
    /// the same inputs give the same gradients bit for bit on four threads,
    /// 24 backward passes of 32 images against the first.
    #[test]
    fn gradients_are_bitwise_reproducible_on_four_threads() {
        let name = "gradients_are_bitwise_reproducible_on_four_threads";
        super::super::fused::on_threads(4, module_path!(), name, || {
            let mut rng = scoregen_core::rng::Rng::new(23, 0);
            let k = case(&mut rng, (32, 16, 8, 8, 16));
            let weights = rng.randn((32, 16, 8, 8), DType::F32, &Device::Cpu).unwrap();
            let grads = || {
                let y = attention(k.x.as_tensor(), k.r.as_tensor(), projections(&k), 2, 0.7).unwrap();
                let g = scoregen_core::autodiff::backward(&(y * &weights).unwrap().sum_all().unwrap()).unwrap();
                let mut all = vec![&k.x];
                all.extend(k.vars.iter());
                all.iter()
                    .map(|v| {
                        let t = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                        t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            };
            let first = grads();
            for run in 1..24 {
                assert!(grads() == first, "run {run} differs from run 0");
            }
        });
    }

    /// Differentiating the op's gradient again is an error naming the way out.
    #[test]
    fn second_derivative_is_an_error() {
        let mut rng = scoregen_core::rng::Rng::new(24, 0);
        let k = case(&mut rng, (1, 4, 2, 2, 4));
        let y = attention(k.x.as_tensor(), k.r.as_tensor(), projections(&k), 1, 1.0).unwrap();
        let g = scoregen_core::autodiff::grad(&y.sqr().unwrap(), &k.x).unwrap();
        let err = scoregen_core::autodiff::grad(&g.sum_all().unwrap(), &k.x).unwrap_err().to_string();
        assert!(err.contains("exact_higher_order"), "{err}");
    }
}
