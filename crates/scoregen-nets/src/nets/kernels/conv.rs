//! A k×k "same" convolution (stride 1 or 2) with a per-image bias and an
//! optional scaled residual, as one fused CPU op with a hand-written
//! first-order backward.
//!
//! For image b, with P_b = im2col(x_b) [C_in·k², Ho·Wo] (see [`super::fused::im2col`]),
//!
//!   y_b = s·(W P_b + c_b 1ᵀ + r_b),
//!
//! W [C_out, C_in·k²], c [N, C_out] (the layer's bias plus, in a residual
//! block, the projected time embedding), r an optional residual of y's shape
//! and s its scale (a residual block's (x + h)/√2; s = 1 without r).
//! y_b [C_out, Ho·Wo] is image b of the output in [N, C, H, W] order already,
//! so nothing is transposed. The backward, again per image, with g = s·dy:
//!
//!   dc_b = g_b 1,   dW = Σ_b g_b P_bᵀ,   dr = g,
//!   dx_b = col2im(Wᵀ g_b) = W̃ im2col(g_b)   (stride 1),
//!
//! W̃ [C_in, C_out·k²] the weights with input and output channels swapped and
//! the kernel flipped: the adjoint of a stride-1 "same" convolution is one,
//! so dx needs no scatter and its GEMM has the long inner dimension C_out·k².
//! Stride 2 (a downsampling layer) goes through col2im.
//!
//! **GroupNorm + SiLU folded in** ([`conv2d_normed`]): the op may take the
//! input before its normalization, y_b = s·(W im2col(a_b) + …) with
//! a_b = silu(GN(x_b; γ, β)) computed per image in a small buffer (the
//! kernels of [`super::groupnorm`]), and θ = [W, c, γ, β]. The backward
//! recomputes a_b, and after da_b (the dx above) runs GroupNorm's backward on
//! it, giving dx_b, dγ and dβ. The normalized activations then never exist
//! for the whole batch, and the graph has one node (one gradient accumulation
//! over the batch in candle's backward) where it had two. When x is tracked
//! the forward keeps silu′(z) and the groups' (μ, r) ([`NormKept`]: always
//! with θ frozen, in training where the activations are kept), so that
//! GroupNorm's backward forms dz = dy·silu′(z) without recomputing them.
//!
//! Small images go G at a time ([`group_size`]): the patches of a tile of G
//! images side by side, P = [P_b … P_{b+G−1}] [C_in·k², G·Ho·Wo], make one
//! GEMM y_tile = W P (m = G·Ho·Wo) whose [C_out, G·Ho·Wo] result is scattered
//! back into the images' [G, C_out, Ho·Wo] blocks; likewise dx's W̃ Q, and dW
//! sums over the tile inside one GEMM (inner dimension G·Ho·Wo).
//!
//! The tiles are split across threads; each thread builds one tile's
//! patches at a time in a small buffer (rebuilt in the backward rather than
//! kept), so the patch matrices of the whole batch never exist at once.
//!
//! **Winograd** ([`super::winograd`]): a 3×3 stride-1 convolution between
//! multiples of 16 channels forms no patches for y and dx; both products run
//! as F(4×4, 3×3) (a quarter of the multiply–adds) when the batch has at
//! least [`WINOGRAD_MIN_TILES`] 4×4 output tiles or the filters are small
//! ([`SMALL_FILTERS`]). The weight gradient dW keeps the patches' GEMM. Its
//! tiles of images are [`Geometry::winograd`]'s, the forward's own
//! grouping; `SCOREGEN_WINOGRAD=0` keeps the direct product everywhere.
//!
//! **First order only**, like [`super::dense`]: the gradients come from an op
//! that refuses to be differentiated again. Inside
//! [`scoregen_core::autodiff::exact_higher_order`], and for f64, the U-Net takes the
//! im2col + matmul path in candle ops instead.
//!
//! Written by hand because candle's CPU convolution backward is a transposed
//! convolution an order of magnitude slower on small images; the GEMMs are
//! the `gemm` crate's.

use super::dense::{gemm_serial, Mat};
use super::fused::{
    col2im_add, im2col_into, par_blocks, par_ranges, par_ranges_sum, refuse_second_order, slice, sum8 as sum, Patches,
    SharedMut,
};
use super::groupnorm::{kernels as gn, Dims as NormDims};
use super::winograd;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// The geometry of one call: N images C_in×H×W, C_out filters k×k, stride s.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    /// Input (C_in, H, W) of one image.
    image: (usize, usize, usize),
    /// Input pixels per image (C_in·H·W) and output positions per channel (Ho·Wo).
    x_len: usize,
    hw_out: usize,
    /// silu(GN(x)) folded in: its shape (groups, ε).
    norm: Option<NormDims>,
    /// Images per GEMM (see [`group_size`]).
    group: usize,
    /// Images per Winograd tile group where F(4×4, 3×3) serves this
    /// convolution's forward and input gradient (see [`winograd_group`]).
    winograd: Option<usize>,
}

/// The patch matrices of a tile of `n` consecutive images, side by side.
#[derive(Debug, Clone, Copy)]
struct Tile {
    /// im2col of the tile's input.
    patches: Patches,
    /// im2col of the tile's output gradient (stride 1: the adjoint convolution).
    adjoint: Patches,
    n: usize,
    /// Columns of the stored patch matrices (k > 1): n·Ho·Wo, or the next
    /// multiple of 16 when that adds at most an eighth (14×14: 196 → 208), since
    /// the `gemm` crate copies (packs) a left operand whose m is not a multiple
    /// of its vector width; the GEMM then runs over the padding columns (zero
    /// in P) and the rows are copied back n·Ho·Wo wide.
    ld: usize,
}

/// Columns a tile of small images fills: G = ⌊192 / Ho·Wo⌋ images.
const GROUP_COLS: usize = 192;
/// Output positions per image (Ho·Wo) up to which images are grouped.
const GROUP_MAX_HW: usize = 64;

thread_local! {
    /// ([`GROUP_COLS`], [`GROUP_MAX_HW`]), lowered by the tests to check
    /// tiles that do not divide the batch.
    static GROUPING: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((GROUP_COLS, GROUP_MAX_HW)) };
}

/// Images per GEMM for a convolution with hw output positions per image: as
/// many as fill [`GROUP_COLS`] columns when hw ≤ [`GROUP_MAX_HW`], else one.
///
/// Measured on one thread (a fused conv's forward and backward, batch 128, on
/// AVX-512): 2×2 stride 1 and 4×4 → 2×2 stride 2 take 0.5–0.6× the time of
/// one GEMM per image, 8×8 → 4×4 and 14×14 → 7×7 stride 2 and 7×7 stride 1
/// 0.9×; 4×4 and 8×8 stride 1 stay within the noise (0.97–1.0×: the
/// microkernel on one 16-float register row is already bound by its FMAs
/// there), and larger images are left alone. A pointwise convolution is
/// never grouped: per image its patches are x_b itself, side by side they
/// would be a copy (1.2–1.4× slower).
fn group_size(g: &Geometry) -> usize {
    let (cols, max_hw) = GROUPING.with(|g| g.get());
    if g.pointwise() || g.hw_out > max_hw {
        1
    } else {
        (cols / g.hw_out).max(1)
    }
}

/// G lowered so that the tiles of a batch of n split evenly over `threads`:
/// ⌈n/G⌉ tiles rounded up to a multiple of the threads, then the fewest
/// images per tile that cover the batch in that many. At 4×4, B = 128 and two
/// threads G = 12 made 11 tiles (72 and 56 images per thread); G = 11 makes
/// 12 (66 and 62).
fn balanced_group(group: usize, n: usize, threads: usize) -> usize {
    if threads <= 1 || group <= 1 {
        return group;
    }
    let tiles = n.div_ceil(group).next_multiple_of(threads);
    n.div_ceil(tiles).max(1)
}

/// Winograd tiles (4×4 outputs) per GEMM that a group of small images
/// fills: 64 columns (a 32×32 image alone, 16 images of 8×8).
const WINOGRAD_COLS: usize = 64;

/// The fewest output tiles in a batch (N·⌈H/4⌉·⌈W/4⌉) for which F(4×4, 3×3)
/// is used: the transformed filters U are 4× the weights (36 against 9
/// values per filter), written once per call and read once per tile group,
/// so with few tiles (CIFAR's 4×4 level at batch 8: 8 tiles, 256 → 512
/// channels, 19 MiB of U) the product is bound by that memory traffic, not
/// by its FLOPs, and the direct product is faster.
const WINOGRAD_MIN_TILES: usize = 64;

/// C_in·C_out up to which F(4×4, 3×3) is used whatever the batch: U is then
/// at most 36·64·64 floats (576 KiB), which stays in a core's cache, so
/// the traffic that [`WINOGRAD_MIN_TILES`] guards against never arises.
const SMALL_FILTERS: usize = 64 * 64;

/// [`WINOGRAD_MIN_TILES`] for a frozen layer whose U is kept
/// ([`TransformCache`]) on a CPU whose products run the AVX2 + FMA
/// microkernels ([`winograd::Product::Fma`]). With U made once, a call
/// saves 3/4 of the direct product's 2·9·C_in·C_out FLOPs per pixel and
/// pays one read of U (144·C_in·C_out bytes); at AVX2's GEMM rate (half
/// AVX-512's per core) the saving passes the read from about 6 tiles on,
/// so CIFAR's 8×8 and 4×4 levels take Winograd too. Measured on a 2-core
/// AVX2 EPYC (docs/performance.md, session 15; medians of five interleaved
/// rounds): CIFAR forward + VJP at batch 8 10 % faster on 1 thread and 2 %
/// on 2, the sampling step at batch 16 even on 1 thread and 7 % faster on
/// 2, for up to 530 MiB more of kept U. On AVX-512 (GEMM twice as fast)
/// the same change was within noise (session 14), so the threshold stays
/// [`WINOGRAD_MIN_TILES`] there.
const WINOGRAD_MIN_TILES_KEPT_FMA: usize = 8;

thread_local! {
    /// [`WINOGRAD_MIN_TILES`], lowered by the tests to take the Winograd path on small batches.
    static MIN_TILES: std::cell::Cell<usize> = const { std::cell::Cell::new(WINOGRAD_MIN_TILES) };
}

/// The fewest output tiles for F(4×4, 3×3): [`WINOGRAD_MIN_TILES`], or
/// [`WINOGRAD_MIN_TILES_KEPT_FMA`] for kept filters on AVX2 + FMA.
fn min_tiles(kept: bool) -> usize {
    let least = MIN_TILES.with(|t| t.get());
    if kept && winograd::Product::current() == winograd::Product::Fma {
        least.min(WINOGRAD_MIN_TILES_KEPT_FMA)
    } else {
        least
    }
}

/// Images per Winograd tile group for h×w images: as many as fill [`WINOGRAD_COLS`] tiles.
fn winograd_group(h: usize, w: usize) -> usize {
    (WINOGRAD_COLS / winograd::tiles_per_image(h, w)).max(1)
}

/// Whether 3×3 stride-1 convolutions may take F(4×4, 3×3): not with
/// `SCOREGEN_WINOGRAD=0` (read once), which keeps the direct product
/// everywhere (for A/B timings, and results closer to candle's conv2d).
fn winograd_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SCOREGEN_WINOGRAD").map_or(true, |v| v.trim() != "0"))
}

impl Geometry {
    /// `kept`: the layer is frozen and keeps its transformed filters ([`min_tiles`]).
    fn new(x: &[usize], cout: usize, k: usize, stride: usize, norm: Option<(usize, f64)>, kept: bool) -> Self {
        let (cin, h, w) = (x[1], x[2], x[3]);
        let hw = (h / stride) * (w / stride);
        let norm = norm.map(|(groups, eps)| NormDims::of(x, groups, eps, true));
        let mut g = Self {
            cin,
            cout,
            k,
            stride,
            image: (cin, h, w),
            x_len: cin * h * w,
            hw_out: hw,
            norm,
            group: 1,
            winograd: None,
        };
        let threads = candle_core::utils::get_num_threads();
        g.group = balanced_group(group_size(&g).min(x[0]).max(1), x[0], threads);
        let min_tiles = min_tiles(kept);
        g.winograd = (winograd_enabled()
            && winograd::applies(k, stride, cin, cout, h, w)
            && (x[0] * winograd::tiles_per_image(h, w) >= min_tiles || cin * cout <= SMALL_FILTERS))
            .then(|| balanced_group(winograd_group(h, w).min(x[0]).max(1), x[0], threads));
        g
    }

    /// This geometry with the Winograd path's images per tile (the forward
    /// and a frozen network's input gradient, which form no patches).
    fn for_winograd(&self) -> Self {
        Self { group: self.winograd.unwrap_or(self.group), ..*self }
    }

    /// The tile of images b0..b0 + n.
    fn tile(&self, n: usize) -> Tile {
        let cols = n * self.hw_out;
        let padded = cols.next_multiple_of(16);
        let ld = if self.k > 1 && padded * 8 <= cols * 9 { padded } else { cols };
        let patches = Patches::new(n, self.image, self.k, self.stride).with_ld(ld);
        let (ho, wo) = patches.out_hw();
        let adjoint = Patches::new(n, (self.cout, ho, wo), self.k, 1).with_ld(ld);
        Tile { patches, adjoint, n, ld }
    }

    /// The tiles: images b0..b1, [`Geometry::group`] at a time (the last one fewer).
    fn tiles(&self, n: usize) -> usize {
        n.div_ceil(self.group)
    }

    fn tile_range(&self, t: usize, n: usize) -> std::ops::Range<usize> {
        t * self.group..((t + 1) * self.group).min(n)
    }

    /// θ = [W, c, γ, β] split into its parts (γ, β empty without the norm).
    fn split<'a>(
        &self,
        theta: &'a [f32],
        apart: Option<&'a [f32]>,
        n: usize,
    ) -> (&'a [f32], &'a [f32], &'a [f32], &'a [f32]) {
        let (w, rest) = match apart {
            Some(w) => (w, theta),
            None => theta.split_at(self.cout * self.rows()),
        };
        let (c, gb) = rest.split_at(n * self.cout);
        let (gamma, beta) = gb.split_at(gb.len() / 2);
        (w, c, gamma, beta)
    }

    /// Rows of P_b (C_in·k²).
    fn rows(&self) -> usize {
        self.cin * self.k * self.k
    }

    /// A 1×1 stride-1 convolution: P_b is x_b itself.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1
    }
}

/// The patches of a tile's images side by side: x_b itself for a pointwise
/// convolution on one image, else im2col into `buf`.
fn patches<'a>(x: &'a [f32], g: &Patches, direct: bool, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if direct {
        return x;
    }
    let (rows, cols) = g.cols_shape();
    if buf.len() != (rows - 1) * cols {
        // zeroed once per tile shape: im2col leaves the padding entries alone,
        // and tiles of one stored width share their layout
        buf.clear();
        buf.resize((rows - 1) * cols, 0.0);
    }
    im2col_into(x, g, buf);
    buf
}

/// The convolution's input for a tile's images: x itself, or silu(GN(x_b)) of each written into `a`.
fn conv_input<'a>(g: &Geometry, x: &'a [f32], gamma: &[f32], beta: &[f32], a: &'a mut Vec<f32>) -> &'a [f32] {
    match &g.norm {
        Some(d) => {
            a.resize(x.len(), 0.0);
            normalize(d, x, gamma, beta, a, g.x_len, None);
            a
        }
        None => x,
    }
}

/// a_b = silu(GN(x_b)) for each image (`len` entries) of x; with `keep`
/// (silu′(z) [n·len], (μ, r) [n·G·2] of these images), what GroupNorm's
/// backward reads instead of recomputing it (see [`NormKept`]).
fn normalize(
    d: &NormDims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    a: &mut [f32],
    len: usize,
    keep: Option<(&mut [f32], &mut [f32])>,
) {
    match keep {
        None => {
            for (x, a) in x.chunks_exact(len).zip(a.chunks_exact_mut(len)) {
                gn::forward(d, x, gamma, beta, a);
            }
        }
        Some((slope, stats)) => {
            let images = x.chunks_exact(len).zip(a.chunks_exact_mut(len)).zip(slope.chunks_exact_mut(len));
            for (((x, a), slope), stats) in images.zip(stats.chunks_exact_mut(2 * d.groups())) {
                gn::forward_keeping(d, x, gamma, beta, a, slope, stats);
            }
        }
    }
}

/// What a forward with GroupNorm + SiLU folded in keeps for its backward
/// when x is tracked: silu′(z) of every entry of the batch and (μ, r) of
/// every image's groups. The backward then forms dz = dy·silu′(z) without
/// an exponential or a division and skips the two passes for the moments:
/// GroupNorm's backward was 17–19 % of the digits U-Net's likelihood. One
/// activation-sized buffer per layer, held only until the backward pass:
/// kept whenever θ is frozen (a likelihood's ∇ₓ), and in training only
/// where the normalized activations are kept too ([`KEEP_ACTIVATIONS`]).
struct NormKept {
    slope: Vec<f32>,
    stats: Vec<f32>,
}

impl NormKept {
    /// Image b's (silu′(z), (μ, r)).
    fn image(&self, b: usize, len: usize, groups: usize) -> (&[f32], &[f32]) {
        (&self.slope[b * len..][..len], &self.stats[b * 2 * groups..][..2 * groups])
    }
}

/// out [n, c, hw] from a tile's product wide [c, ld] (image b in columns
/// b·hw..(b + 1)·hw): f(out row (b, o), wide's part of it, b, o).
fn scatter(
    out: &mut [f32],
    c: usize,
    hw: usize,
    wide: &[f32],
    ld: usize,
    mut f: impl FnMut(&mut [f32], &[f32], usize, usize),
) {
    for (b, image) in out.chunks_exact_mut(c * hw).enumerate() {
        for (o, row) in image.chunks_exact_mut(hw).enumerate() {
            f(row, &wide[o * ld + b * hw..][..hw], b, o);
        }
    }
}

/// y [N, C_out, Ho, Wo] from x, θ = [W, c, (γ, β)] (or [c, (γ, β)] with W
/// `apart`) and r; with `acts`
/// (N·C_in·H·W entries, possibly uninitialised) the folded silu(GN(x)) of
/// every image is written there for the backward instead of into a per-image
/// scratch; with `keep_norm` (N·C_in·H·W and N·G·2 entries, possibly
/// uninitialised) GroupNorm's [`NormKept`] is written there.
#[allow(clippy::too_many_arguments)] // the op's inputs, its scale, and where to keep the activations
fn forward(
    g: &Geometry,
    x: &[f32],
    theta: &[f32],
    apart: Option<&[f32]>,
    r: Option<&[f32]>,
    scale: f32,
    n: usize,
    acts: Option<SharedMut>,
    keep_norm: Option<(SharedMut, SharedMut)>,
    cache: Option<&TransformCache>,
) -> Vec<f32> {
    let g = &g.for_winograd();
    let (rows, hw, cout) = (g.rows(), g.hw_out, g.cout);
    let (w, c, gamma, beta) = g.split(theta, apart, n);
    let of = winograd::Of { scale, adjoint: false };
    let filters = g.winograd.map(|_| transformed(cache, w, cout, g.cin, of));
    let w_scaled = scaled(if filters.is_some() { &[] } else { w }, scale);
    // not zeroed: every entry is set to its bias (and residual) below before the GEMM adds to it
    let mut y: Vec<f32> = Vec::with_capacity(n * cout * hw);
    let (out, len) = (SharedMut::from_ptr(y.as_mut_ptr()), cout * hw);
    par_ranges(g.tiles(n), |tiles| {
        let (mut buf, mut a, mut wide) = (Vec::new(), Vec::new(), Vec::new());
        for t in tiles {
            let images = g.tile_range(t, n);
            let (b0, tile) = (images.start, g.tile(images.len()));
            // SAFETY: the tile's block of y, written by this task only.
            let y = unsafe { out.slice(b0 * len, tile.n * len) };
            let (x, c) = (&x[b0 * g.x_len..][..tile.n * g.x_len], &c[b0 * cout..][..tile.n * cout]);
            let r = r.map(|r| &r[b0 * len..][..tile.n * len]);
            let x = match &g.norm {
                Some(d) => {
                    let groups = d.groups();
                    // SAFETY (both): the tile's blocks of what is kept, written by this task only.
                    let keep = keep_norm.as_ref().map(|(slope, stats)| unsafe {
                        (slope.slice(b0 * g.x_len, tile.n * g.x_len), stats.slice(b0 * 2 * groups, tile.n * 2 * groups))
                    });
                    let a: &mut [f32] = match &acts {
                        Some(acts) => unsafe { acts.slice(b0 * g.x_len, tile.n * g.x_len) },
                        None => {
                            a.resize(tile.n * g.x_len, 0.0);
                            &mut a[..]
                        }
                    };
                    normalize(d, x, gamma, beta, a, g.x_len, keep);
                    &*a
                }
                None => x,
            };
            if tile.n > 1 && filters.is_none() {
                let p = patches(x, &tile.patches, false, &mut buf);
                // wide = W P [C_out, ld], then y_b = s·(r_b + c_b) + its columns
                wide.resize(cout * tile.ld, 0.0);
                patch_product(&mut wide, tile.ld, rows, p, &w_scaled, false, &mut Vec::new());
                scatter(y, cout, hw, &wide, tile.ld, |y, w, b, o| {
                    let bias = scale * c[b * cout + o];
                    match r {
                        Some(r) => {
                            let r = &r[(b * cout + o) * hw..][..hw];
                            for ((y, &w), &r) in y.iter_mut().zip(w).zip(r) {
                                *y = scale * r + bias + w;
                            }
                        }
                        None => {
                            for (y, &w) in y.iter_mut().zip(w) {
                                *y = bias + w;
                            }
                        }
                    }
                });
                continue;
            }
            match r {
                Some(r) => {
                    for ((y, r), &b) in y.chunks_exact_mut(hw).zip(r.chunks_exact(hw)).zip(c) {
                        for (y, &r) in y.iter_mut().zip(r) {
                            *y = scale * (r + b);
                        }
                    }
                }
                None => {
                    for (row, &b) in y.chunks_exact_mut(hw).zip(c) {
                        row.fill(scale * b);
                    }
                }
            }
            if let Some(f) = &filters {
                // y += (s·W) ⋆ x by F(4×4, 3×3)
                winograd::with_scratch(|s| winograd::conv(f, x, tile.n, (g.image.1, g.image.2), y, true, s));
                continue;
            }
            // y_b += W P_b (y [C_out, hw], W [C_out, rows], P [rows, ld])
            let p = patches(x, &tile.patches, g.pointwise(), &mut buf);
            patch_product(y, tile.ld, rows, p, &w_scaled, true, &mut wide);
        }
    });
    // SAFETY: the tasks covered all n images, each writing its whole block.
    unsafe { y.set_len(n * cout * hw) };
    y
}

/// out [c, hw] = W P (or += with `accumulate`) for W [c, k] and patches P [k, ld]
/// whose rows are hw entries padded to ld. Computed as outᵀ = Pᵀ Wᵀ, so the
/// GEMM's m is the long side hw, along which out, P and the microkernel's tiles
/// are all contiguous (no packing of P); padded rows go through `wide` [c, ld].
fn patch_product(out: &mut [f32], ld: usize, k: usize, p: &[f32], w: &[f32], accumulate: bool, wide: &mut Vec<f32>) {
    let (c, hw) = (w.len() / k, out.len() / (w.len() / k));
    debug_assert!(w.len() == c * k && out.len() == c * hw && hw <= ld);
    if ld == hw {
        // SAFETY: outᵀ [hw, c] with strides (1, hw) is out [c, hw]; P is [k, hw], W [c, k].
        unsafe { gemm_serial(hw, c, k, out.as_mut_ptr(), (1, hw as isize), accumulate, Mat::t(p, hw), Mat::t(w, k)) };
        return;
    }
    wide.resize(c * ld, 0.0);
    // SAFETY: wide is [c, ld], P [k, ld], W [c, k].
    unsafe { gemm_serial(ld, c, k, wide.as_mut_ptr(), (1, ld as isize), false, Mat::t(p, ld), Mat::t(w, k)) };
    if accumulate {
        add_rows(out, hw, wide, ld);
    } else {
        copy_rows(out, hw, wide, ld);
    }
}

/// y [rows, hw] += the first hw columns of wide [rows, ld].
fn add_rows(y: &mut [f32], hw: usize, wide: &[f32], ld: usize) {
    for (y, w) in y.chunks_exact_mut(hw).zip(wide.chunks_exact(ld)) {
        for (y, &w) in y.iter_mut().zip(w) {
            *y += w;
        }
    }
}

/// y [rows, hw] := the first hw columns of wide [rows, ld].
fn copy_rows(y: &mut [f32], hw: usize, wide: &[f32], ld: usize) {
    for (y, w) in y.chunks_exact_mut(hw).zip(wide.chunks_exact(ld)) {
        y.copy_from_slice(&w[..hw]);
    }
}

/// s·w: w itself when s = 1 (diffusers' blocks), not a copy (one thread's
/// copy of every direct layer's weights per call).
fn scaled(w: &[f32], scale: f32) -> Cow<'_, [f32]> {
    if scale == 1.0 {
        Cow::Borrowed(w)
    } else {
        Cow::Owned(w.iter().map(|v| v * scale).collect())
    }
}

/// U of the filters `of` w: from the frozen layer's cache when it has one.
fn transformed(
    cache: Option<&TransformCache>,
    w: &[f32],
    cout: usize,
    cin: usize,
    of: winograd::Of,
) -> Arc<winograd::Filters> {
    match cache {
        Some(c) => {
            let slot = if of.adjoint { &c.adjoint } else { &c.forward };
            // U's layout is the product's (the tests switch it): part of what U is made of
            let made = Made { layout: Some(winograd::Product::current()), ..Made::of(w, of.scale, of.adjoint) };
            slot.get(made, || winograd::Filters::kept(w, cout, cin, of))
        }
        None => Arc::new(winograd::Filters::new(w, cout, cin, of)),
    }
}

/// The transforms of a frozen layer's weights, made on its first call and
/// reused after: sampling and likelihoods run a frozen network hundreds of
/// times with the same weights, and remaking them on every call was 6–7 %
/// (Winograd's U and the adjoint's, 4× the weights each, written out
/// whole) and 3 % (the direct adjoint W̃ of the layers below Winograd's
/// batch threshold) of a CIFAR-size forward + VJP. The price is memory:
/// U and the adjoint's stay allocated, 8× the weights of the layers that
/// take F(4×4, 3×3).
///
/// Only for layers whose weights are constants
/// ([`crate::nets::Network::freeze`]: loaded or EMA weights, assigned
/// before the first call). As a guard against weights assigned later, each
/// transform is remade when s, the weights' length or any of [`PROBES`]
/// spaced weights differ from what it was made of ([`Made`]).
#[derive(Default)]
pub(crate) struct TransformCache {
    forward: Slot<winograd::Filters>,
    adjoint: Slot<winograd::Filters>,
    direct_adjoint: Slot<Vec<f32>>,
}

/// Weights that [`Made`] compares.
const PROBES: usize = 8;

/// What a cached transform was made of: s, which side, the weights' length
/// and their values at [`PROBES`] evenly spaced places (the first and the
/// last among them), as bits; and for Winograd's U, the product whose
/// panel layout it has.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Made {
    scale: u32,
    adjoint: bool,
    len: usize,
    probe: [u32; PROBES],
    layout: Option<winograd::Product>,
}

impl Made {
    fn of(w: &[f32], scale: f32, adjoint: bool) -> Self {
        let probe = std::array::from_fn(|j| w[j * (w.len() - 1) / (PROBES - 1)].to_bits());
        Self { scale: scale.to_bits(), adjoint, len: w.len(), probe, layout: None }
    }
}

/// Bytes that all [`TransformCache`]s of the process may keep together
/// (1 GiB: google/ddpm-cifar10-32's need about 300 MiB); past it a
/// transform is made for its call and dropped after, as without a cache,
/// so a much larger model costs time, not memory it may not have.
const CACHE_BYTES: usize = 1 << 30;

/// Bytes the [`TransformCache`]s keep now.
static CACHED_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A transform's size in memory, for [`CACHE_BYTES`].
trait Bytes {
    fn bytes(&self) -> usize;
}

impl Bytes for winograd::Filters {
    fn bytes(&self) -> usize {
        self.capacity() * 4
    }
}

impl Bytes for Vec<f32> {
    fn bytes(&self) -> usize {
        self.capacity() * 4
    }
}

/// One transform of [`TransformCache`].
struct Slot<T: Bytes>(Mutex<Option<(Made, Arc<T>)>>);

impl<T: Bytes> Default for Slot<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Bytes> Slot<T> {
    /// The transform made of `made`: the kept one, or `make()`, kept from
    /// now on while the caches stay within [`CACHE_BYTES`].
    fn get(&self, made: Made, make: impl FnOnce() -> T) -> Arc<T> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = slot.as_ref().filter(|(m, _)| *m == made) {
            return t.clone();
        }
        // the old one is dropped before the new one is made (one at a time in memory)
        Self::release(&mut slot);
        let t = Arc::new(make());
        let bytes = t.bytes();
        if CACHED_BYTES.fetch_update(Relaxed, Relaxed, |b| (b + bytes <= CACHE_BYTES).then_some(b + bytes)).is_ok() {
            *slot = Some((made, t.clone()));
        }
        t
    }

    /// Empties the slot, its bytes no longer counted.
    fn release(slot: &mut Option<(Made, Arc<T>)>) {
        if let Some((_, t)) = slot.take() {
            CACHED_BYTES.fetch_sub(t.bytes(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl<T: Bytes> Drop for Slot<T> {
    fn drop(&mut self) {
        Self::release(self.0.get_mut().unwrap_or_else(|e| e.into_inner()));
    }
}

/// W̃ [C_in, C_out·k²], W̃[i, (o·k + a)·k + b] = s·W[o, i, k−1−a, k−1−b]: the
/// weights of the adjoint of a stride-1 convolution (see the module docs).
/// Row i of W̃ is block i, split across candle's threads (one thread's copy
/// was 1 % of a 2-thread CIFAR forward + VJP, the other core idle).
fn adjoint_weights(g: &Geometry, w: &[f32], scale: f32) -> Vec<f32> {
    // the flipped kernel (k−1−a, k−1−b) is the k² block read backwards
    let kk = g.k * g.k;
    par_blocks(g.cin, g.cout * kk, |i, row| {
        for (o, dst) in row.chunks_exact_mut(kk).enumerate() {
            let kernel = &w[(o * g.cin + i) * kk..][..kk];
            for (d, &v) in dst.iter_mut().zip(kernel.iter().rev()) {
                *d = scale * v;
            }
        }
    })
}

/// [dx (N·C_in·H·W), dW (C_out·C_in·k²), dc (N·C_out), (dγ, dβ (C_in each))]
/// from x, θ and dy, for y = s·(…); dx and dW stay zero unless `(want_x,
/// want_w)` ask for them (`want_w`: θ is tracked, so dγ, dβ are wanted too);
/// `acts`: silu(GN(x)) as the forward kept it (else recomputed per image).
#[allow(clippy::too_many_arguments)]
fn backward(
    g: &Geometry,
    x: &[f32],
    theta: &[f32],
    apart: Option<&[f32]>,
    dy: &[f32],
    scale: f32,
    n: usize,
    want: (bool, bool),
    acts: Option<&[f32]>,
    kept_norm: Option<&NormKept>,
    cache: Option<&TransformCache>,
) -> Vec<f32> {
    let (want_x, want_w) = want;
    // with θ frozen no patches are formed: the Winograd path's tiles
    let g = &if want_w { *g } else { g.for_winograd() };
    let (rows, hw, cout, cin) = (g.rows(), g.hw_out, g.cout, g.cin);
    let (w, _, gamma, beta) = g.split(theta, apart, n);
    let norm_len = if g.norm.is_some() { 2 * cin } else { 0 };
    // the gradient with respect to the convolution's input (x, or a = silu(GN(x)))
    let want_input = want_x || (want_w && g.norm.is_some());
    // Not zeroed where written whole below: dW, dc, dγ, dβ always, dx when a
    // GEMM (stride 1) or GroupNorm's backward writes it; col2im adds into it.
    // dθ = [dW, dc, (dγ, dβ)] only when θ is tracked (a training step): a
    // likelihood's ∇ₓ through frozen weights returns dx alone, and neither
    // forms nor sums the per-range dW partials.
    let theta_len = if want_w { cout * rows + n * cout + norm_len } else { 0 };
    // dγ, dβ are summed (and dropped) when θ is frozen too: GroupNorm's
    // backward forms them with dx, and 2·C_in values cost nothing
    let partial_len = (if want_w { cout * rows } else { 0 }) + norm_len;
    let len = n * g.x_len + theta_len;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if !(want_input && (g.stride == 1 || g.norm.is_some())) {
        out.resize(n * g.x_len, 0.0);
    }
    // SAFETY: every entry past the zeroed ones is written before the buffer is returned (above).
    unsafe { out.set_len(len) };
    let (dx, rest) = out.split_at_mut(n * g.x_len);
    let (dw, rest) = rest.split_at_mut(if want_w { cout * rows } else { 0 });
    let (dc, dnorm) = rest.split_at_mut(if want_w { n * cout } else { 0 });
    // dx = W̃ im2col(s·dy) for stride 1, col2im((s·W)ᵀ dy) for stride 2
    // dx = W̃ ⋆ (s·dy) by F(4×4, 3×3) where it serves (W̃ maps C_out to C_in channels)
    let of = winograd::Of { scale, adjoint: true };
    let adjoint = g.winograd.filter(|_| want_input).map(|_| transformed(cache, w, cin, cout, of));
    let held_adjoint: Arc<Vec<f32>>;
    let w_adj = match (&adjoint, g.stride) {
        (Some(_), _) => Cow::Borrowed(&[][..]),
        (None, 1) => match cache {
            Some(c) => {
                held_adjoint = c.direct_adjoint.get(Made::of(w, scale, true), || adjoint_weights(g, w, scale));
                Cow::Borrowed(held_adjoint.as_slice())
            }
            None => Cow::Owned(adjoint_weights(g, w, scale)),
        },
        (None, _) => scaled(w, scale),
    };
    let (dx_out, dc_out) = (SharedMut::new(dx), SharedMut::new(dc));
    // dWᵀ, dγ and dβ: per range of tiles, then summed in the ranges' order
    let totals = par_ranges_sum(g.tiles(n), partial_len, |tiles| {
        let (mut buf, mut dy_buf, mut a, mut dyt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut wide, mut dp, mut da) = (Vec::new(), Vec::new(), Vec::new());
        let mut partial = vec![0f32; partial_len];
        let (dw, dgb) = partial.split_at_mut(if want_w { cout * rows } else { 0 });
        for t in tiles {
            let images = g.tile_range(t, n);
            let (b0, tile) = (images.start, g.tile(images.len()));
            let (cols, ld) = (tile.n * hw, tile.ld);
            // SAFETY: the tile's blocks of dx and dc, written by this task only.
            let dx = unsafe { dx_out.slice(b0 * g.x_len, tile.n * g.x_len) };
            let (x, dy) = (&x[b0 * g.x_len..][..tile.n * g.x_len], &dy[b0 * cout * hw..][..tile.n * cout * hw]);
            if want_w {
                // SAFETY: as dx.
                let dc = unsafe { dc_out.slice(b0 * cout, tile.n * cout) };
                for (d, row) in dc.iter_mut().zip(dy.chunks_exact(hw)) {
                    *d = scale * sum(row);
                }
            }
            // dyᵀ [n·hw, C_out]: image b's transpose in rows b·hw..(b + 1)·hw
            if want_w || (want_input && g.stride != 1 && tile.n > 1) {
                dyt.resize(cols * cout, 0.0);
                for (dy, dyt) in dy.chunks_exact(cout * hw).zip(dyt.chunks_exact_mut(hw * cout)) {
                    transpose_block(dy, hw, 0..hw, 1.0, dyt);
                }
            }
            // SAFETY (all GEMMs): dWᵀ is [rows, C_out], dyᵀ [n·hw, C_out], P [rows, ld],
            // W̃ [C_in, C_out·k²] and Q = im2col(dy) [C_out·k², ld] (stride 1),
            // W [C_out, rows], dy [C_out, n·hw] and dp [rows, ld] (stride 2).
            if want_w {
                let input = match acts {
                    Some(acts) => &acts[b0 * g.x_len..][..tile.n * g.x_len],
                    None => conv_input(g, x, gamma, beta, &mut a),
                };
                let p = patches(input, &tile.patches, g.pointwise() && tile.n == 1, &mut buf);
                // dW += dy Pᵀ over the tile's n·hw columns, kept transposed (dWᵀ
                // [rows, C_out]) with dy transposed first: the GEMM's output and
                // left operand are then both C_out-contiguous. With a row-major
                // output the crate transposes the whole product and packs P one
                // strided scalar at a time (11% of a 28×28 step in a profile).
                unsafe {
                    let dwp = dw.as_mut_ptr();
                    gemm_serial(cout, rows, cols, dwp, (1, cout as isize), true, Mat::t(&dyt, cout), Mat::t(p, ld));
                }
            }
            if !want_input {
                continue;
            }
            // the input's gradient: dx itself, or da (then GroupNorm's backward gives dx)
            if g.norm.is_some() {
                da.resize(tile.n * g.x_len, 0.0);
            }
            let target: &mut [f32] = if g.norm.is_some() { &mut da } else { dx };
            if let Some(f) = &adjoint {
                winograd::with_scratch(|s| winograd::conv(f, dy, tile.n, (g.image.1, g.image.2), target, false, s));
            } else if g.stride == 1 {
                let q = patches(dy, &tile.adjoint, g.k == 1 && tile.n == 1, &mut dy_buf);
                let kk = cout * g.k * g.k;
                if tile.n == 1 {
                    // dx_b = W̃ Q (dx [C_in, hw], W̃ [C_in, C_out·k²], Q [C_out·k², ld])
                    patch_product(target, ld, kk, q, &w_adj, false, &mut wide);
                } else {
                    wide.resize(cin * ld, 0.0);
                    patch_product(&mut wide, ld, kk, q, &w_adj, false, &mut Vec::new());
                    scatter(target, cin, hw, &wide, ld, |dx, w, _, _| dx.copy_from_slice(w));
                }
            } else {
                dp.resize(rows * ld, 0.0);
                let dy = if tile.n == 1 { Mat::rows(dy, hw) } else { Mat::t(&dyt, cout) };
                unsafe {
                    let dpp = dp.as_mut_ptr();
                    gemm_serial(rows, cols, cout, dpp, (ld as isize, 1), false, Mat::t(&w_adj, rows), dy)
                };
                if g.norm.is_some() {
                    // da is reused across tiles (dx starts zeroed)
                    target.fill(0.0);
                }
                col2im_add(&dp, &tile.patches, target);
            }
            if let Some(d) = &g.norm {
                let (dgamma, dbeta) = dgb.split_at_mut(cin);
                for (i, ((x, da), dx)) in
                    x.chunks_exact(g.x_len).zip(da.chunks_exact(g.x_len)).zip(dx.chunks_exact_mut(g.x_len)).enumerate()
                {
                    let kept = kept_norm.map(|k| k.image(b0 + i, g.x_len, d.groups()));
                    gn::backward(d, x, gamma, beta, kept, da, dx, dgamma, dbeta);
                }
            }
        }
        partial
    });
    if want_w {
        let (total_w, total_norm) = totals.split_at(cout * rows);
        // dW = s·(dWᵀ)ᵀ, in blocks of output rows over the threads (one
        // thread's strided pass here was 7 % of a CIFAR step on two threads)
        let dw_out = SharedMut::new(dw);
        par_ranges(cout.div_ceil(TRANSPOSE_BLOCK), |blocks| {
            let (o0, o1) = (blocks.start * TRANSPOSE_BLOCK, (blocks.end * TRANSPOSE_BLOCK).min(cout));
            // SAFETY: rows o0..o1 of dW, written by this task only.
            let dw = unsafe { dw_out.slice(o0 * rows, (o1 - o0) * rows) };
            transpose_block(total_w, cout, o0..o1, scale, dw);
        });
        dnorm.copy_from_slice(total_norm);
    }
    out
}

/// Output rows per block of [`transpose_block`] (one cache line of a row of the source).
const TRANSPOSE_BLOCK: usize = 16;

/// out [o1 − o0, rows] := s·(columns o0..o1 of a [rows, cols])ᵀ, in blocks of
/// [`TRANSPOSE_BLOCK`] columns so that reads and writes both stay within a
/// few cache lines (s = 1: a plain transpose, exact).
fn transpose_block(a: &[f32], cols: usize, cs: std::ops::Range<usize>, s: f32, out: &mut [f32]) {
    let rows = a.len() / cols;
    for c0 in cs.clone().step_by(TRANSPOSE_BLOCK) {
        let c1 = (c0 + TRANSPOSE_BLOCK).min(cs.end);
        for (r, row) in a.chunks_exact(cols).enumerate() {
            for (c, &v) in row[c0..c1].iter().enumerate() {
                out[(c0 - cs.start + c) * rows + r] = s * v;
            }
        }
    }
}

/// y = s·(conv(x; W) + c (+ r)), see the module docs: a [`CustomOp2`] on
/// (x, θ = [W, c]) without the residual, a [`CustomOp3`] on (x, θ, r) with it.
struct Forward {
    k: usize,
    stride: usize,
    cout: usize,
    scale: f64,
    /// silu(GN(x)) folded in: (groups, ε).
    norm: Option<(usize, f64)>,
    /// Keep silu(GN(x)) of the whole batch for the backward's dW (θ is
    /// tracked and the batch is small, see [`KEEP_ACTIVATIONS`]).
    keep: bool,
    /// What the forward kept.
    kept: Mutex<Option<Arc<Vec<f32>>>>,
    /// Keep GroupNorm's [`NormKept`] for the backward (x is tracked; θ is
    /// frozen, or its activations are kept too).
    keep_norm: bool,
    /// What the forward kept of it.
    kept_norm: Mutex<Option<Arc<NormKept>>>,
    /// W itself when every part of θ is constant (sampling, a likelihood's
    /// ∇ₓ): θ is then [c, (γ, β)] and W is read where it lies, instead of
    /// being copied into θ with them on every call (all of a CIFAR U-Net's
    /// 143 MB of weights per forward pass, one thread's memmove).
    frozen: Option<Frozen>,
}

/// W held apart from θ (every part of θ constant), and the layer's cache of
/// its transformed filters when the layer is frozen ([`conv2d_frozen`]).
#[derive(Clone)]
struct Frozen {
    weights: Tensor,
    filters: Option<Arc<TransformCache>>,
}

impl Frozen {
    fn cache(&self) -> Option<&TransformCache> {
        self.filters.as_deref()
    }
}

/// An f32 tensor's values on the CPU, from its storage and layout.
fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &Layout) -> Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) => slice::<f32>(cpu, layout),
        _ => candle_core::bail!("fused conv: the weights must be on the CPU"),
    }
}

/// The most entries (N·C_in·H·W) of normalized activations a folded
/// convolution keeps for its backward: 4 MiB per layer. Below it, the dW
/// product reads them instead of recomputing GroupNorm + SiLU per image (at
/// 8×8 a third of GroupNorm's time in a training step); above it, memory
/// wins (28×28 with batch 128 recomputes, as before).
const KEEP_ACTIVATIONS: usize = 1 << 20;

thread_local! {
    /// [`KEEP_ACTIVATIONS`], lowered by the tests to check the recomputing backward.
    static KEEP_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(KEEP_ACTIVATIONS) };
    /// Whether a frozen network's forward keeps [`NormKept`]; turned off by
    /// the tests to hold the two backward passes to the same bits.
    static KEEP_NORM: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

impl Forward {
    fn new(
        k: usize,
        stride: usize,
        cout: usize,
        scale: f64,
        norm: Option<(usize, f64)>,
        keep: (bool, bool),
        frozen: Option<Frozen>,
    ) -> Self {
        let (keep, keep_norm) = keep;
        let (kept, kept_norm) = (Mutex::new(None), Mutex::new(None));
        Self { k, stride, cout, scale, norm, keep, kept, keep_norm, kept_norm, frozen }
    }

    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        r: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let cache = self.frozen.as_ref().and_then(Frozen::cache);
        let g = Geometry::new(l1.dims(), self.cout, self.k, self.stride, self.norm, cache.is_some());
        let n = l1.dims()[0];
        let mut acts = (self.keep && g.norm.is_some()).then(|| Vec::<f32>::with_capacity(n * g.x_len));
        let at = acts.as_mut().map(|a| SharedMut::from_ptr(a.as_mut_ptr()));
        let held = self.frozen.as_ref().map(|f| f.weights.storage_and_layout());
        let apart = held.as_ref().map(|(s, l)| cpu_f32(s, l)).transpose()?;
        let (x, theta) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?);
        let mut kept_norm = g.norm.filter(|_| self.keep_norm).map(|d| NormKept {
            slope: Vec::with_capacity(n * g.x_len),
            stats: Vec::with_capacity(n * 2 * d.groups()),
        });
        let keep_norm = kept_norm
            .as_mut()
            .map(|k| (SharedMut::from_ptr(k.slope.as_mut_ptr()), SharedMut::from_ptr(k.stats.as_mut_ptr())));
        let y = forward(&g, x, theta, apart, r, self.scale as f32, n, at, keep_norm, cache);
        if let Some(a) = &mut acts {
            // SAFETY: the forward wrote silu(GN(x_b)) of every image whole.
            unsafe { a.set_len(n * g.x_len) };
        }
        if let (Some(k), Some(d)) = (&mut kept_norm, &g.norm) {
            // SAFETY: the forward wrote every image's slopes and moments whole.
            unsafe {
                k.slope.set_len(n * g.x_len);
                k.stats.set_len(n * 2 * d.groups());
            }
        }
        *self.kept.lock().expect("fused conv: kept activations") = acts.map(Arc::new);
        *self.kept_norm.lock().expect("fused conv: kept GroupNorm state") = kept_norm.map(Arc::new);
        let (ho, wo) = (g.image.1 / g.stride, g.image.2 / g.stride);
        Ok((CpuStorage::F32(y), Shape::from((n, g.cout, ho, wo))))
    }

    /// (dx, dθ) through [`Backward`], each only when its input is tracked
    /// (θ is constant for a likelihood's ∇ₓ, x for the network's input).
    fn grads(&self, x: &Tensor, theta: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let want = (x.track_op(), theta.track_op());
        let acts = self.kept.lock().expect("fused conv: kept activations").clone();
        let kept_norm = self.kept_norm.lock().expect("fused conv: kept GroupNorm state").clone();
        let (k, stride, cout, scale, norm) = (self.k, self.stride, self.cout, self.scale, self.norm);
        let op = Backward { k, stride, cout, scale, norm, want, acts, kept_norm, frozen: self.frozen.clone() };
        let all = x.apply_op3(theta, &dy.contiguous()?, op)?;
        let xn = x.elem_count();
        let dx = want.0.then(|| all.narrow(0, 0, xn)?.reshape(x.shape())).transpose()?;
        Ok((dx, want.1.then(|| all.narrow(0, xn, theta.elem_count())).transpose()?))
    }
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "fused-conv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, theta: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, theta, dy)
    }
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "fused-conv-residual"
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
        self.run(s1, l1, s2, l2, Some(slice::<f32>(s3, l3)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        theta: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dtheta) = self.grads(x, theta, dy)?;
        // dr = s·dy; with s = 1 (diffusers' residual blocks) dy itself, not a copy
        let dr = if self.scale == 1.0 { dy.clone() } else { dy.affine(self.scale, 0.0)? };
        Ok((dx, dtheta, Some(dr)))
    }
}

/// [dx, dθ = [dW, dc]] from (x, θ, dy): the backward of [`Forward`].
struct Backward {
    k: usize,
    stride: usize,
    cout: usize,
    scale: f64,
    norm: Option<(usize, f64)>,
    /// (dx, dθ) wanted.
    want: (bool, bool),
    /// silu(GN(x)) as the forward kept it.
    acts: Option<Arc<Vec<f32>>>,
    /// GroupNorm's slopes and moments as the forward kept them.
    kept_norm: Option<Arc<NormKept>>,
    /// W when θ does not hold it, and its filters (see [`Forward::frozen`]).
    frozen: Option<Frozen>,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "fused-conv-backward"
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
        let cache = self.frozen.as_ref().and_then(Frozen::cache);
        let g = Geometry::new(l1.dims(), self.cout, self.k, self.stride, self.norm, cache.is_some());
        let n = l1.dims()[0];
        let theta = slice::<f32>(s2, l2)?;
        let (x, dy, acts) = (slice::<f32>(s1, l1)?, slice::<f32>(s3, l3)?, self.acts.as_deref().map(Vec::as_slice));
        let held = self.frozen.as_ref().map(|f| f.weights.storage_and_layout());
        let apart = held.as_ref().map(|(s, l)| cpu_f32(s, l)).transpose()?;
        let kept_norm = self.kept_norm.as_deref();
        let all = backward(&g, x, theta, apart, dy, self.scale as f32, n, self.want, acts, kept_norm, cache);
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
        refuse_second_order("convolution")
    }
}

/// s·(conv(x; W) + c + r) for x [N, C_in, H, W], W [C_out, C_in·k²] (a conv
/// weight [C_out, C_in, k, k] flattened), c [N, C_out] and `residual` (r, s)
/// with r [N, C_out, H/stride, W/stride] (none: r = 0, s = 1): f32 on the CPU,
/// k odd, stride 1 or 2 dividing H and W.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    c: &Tensor,
    k: usize,
    stride: usize,
    residual: Option<(&Tensor, f64)>,
) -> Result<Tensor> {
    conv2d_normed(x, None, w, c, k, stride, residual)
}

/// A GroupNorm with SiLU folded into [`conv2d_normed`]: γ, β [C_in], G groups, ε.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub groups: usize,
    pub eps: f64,
}

/// [`conv2d`] of silu(GN(x; γ, β)) when `norm` is given (see the module
/// docs), of x itself otherwise: one op, the normalized input never stored.
pub fn conv2d_normed(
    x: &Tensor,
    norm: Option<Norm>,
    w: &Tensor,
    c: &Tensor,
    k: usize,
    stride: usize,
    residual: Option<(&Tensor, f64)>,
) -> Result<Tensor> {
    conv2d_frozen(x, norm, w, c, k, stride, residual, None)
}

/// [`conv2d_normed`] of a frozen layer, with its cache of transformed
/// filters ([`TransformCache`]; used when every part of θ is constant).
#[allow(clippy::too_many_arguments)] // conv2d_normed's, and the cache
pub(crate) fn conv2d_frozen(
    x: &Tensor,
    norm: Option<Norm>,
    w: &Tensor,
    c: &Tensor,
    k: usize,
    stride: usize,
    residual: Option<(&Tensor, f64)>,
    filters: Option<&Arc<TransformCache>>,
) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 || c.dtype() != DType::F32 || !x.device().is_cpu() {
        candle_core::bail!("fused conv: f32 on the CPU only, got {:?} on {:?}", x.dtype(), x.device());
    }
    if k.is_multiple_of(2) || !(stride == 1 || stride == 2) || !h.is_multiple_of(stride) || !wd.is_multiple_of(stride) {
        candle_core::bail!(
            "fused conv: needs odd k, stride 1 or 2 dividing H×W, got k={k} stride={stride} on {h}×{wd}"
        );
    }
    if w.dims() != [cout, cin * k * k] || c.dims() != [n, cout] {
        candle_core::bail!(
            "fused conv: expected W [C_out, {}] and c [{n}, C_out], got {:?} and {:?}",
            cin * k * k,
            w.shape(),
            c.shape()
        );
    }
    let mut parts = vec![w.flatten_all()?, c.flatten_all()?];
    if let Some(nm) = norm {
        if nm.gamma.dims() != [cin] || nm.beta.dims() != [cin] || nm.groups == 0 || !cin.is_multiple_of(nm.groups) {
            candle_core::bail!(
                "fused conv: expected γ, β [{cin}] and groups dividing {cin}, got {:?}, {:?} and {}",
                nm.gamma.shape(),
                nm.beta.shape(),
                nm.groups
            );
        }
        parts.extend([nm.gamma.to_dtype(DType::F32)?, nm.beta.to_dtype(DType::F32)?]);
    }
    // every part of θ constant: W stays where it is (Forward::frozen)
    let frozen = if parts.iter().all(|p| !p.track_op()) {
        Some(Frozen { weights: parts.remove(0).contiguous()?, filters: filters.cloned() })
    } else {
        None
    };
    let theta = Tensor::cat(&parts, 0)?;
    let x = x.contiguous()?;
    let norm = norm.map(|nm| (nm.groups, nm.eps));
    let keep = norm.is_some() && theta.track_op() && x.elem_count() <= KEEP_LIMIT.with(|l| l.get());
    // GroupNorm's slopes and moments (NormKept) for dx: a likelihood's ∇ₓ
    // through frozen weights, or a training step that keeps the activations
    let keep_norm = norm.is_some() && x.track_op() && (keep || !theta.track_op()) && KEEP_NORM.with(|k| k.get());
    let keep = (keep, keep_norm);
    match residual {
        None => super::tape::apply2(&x, &theta, Forward::new(k, stride, cout, 1.0, norm, keep, frozen)),
        Some((r, scale)) => {
            if r.dims() != [n, cout, h / stride, wd / stride] || r.dtype() != DType::F32 {
                candle_core::bail!("fused conv: the residual must be f32 of the output's shape, got {:?}", r.shape());
            }
            super::tape::apply3(&x, &theta, &r.contiguous()?, Forward::new(k, stride, cout, scale, norm, keep, frozen))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{assert_same_gradients, max_diff};
    use candle_core::{Device, Var};

    /// Lowering G evens the tiles out over the threads and never raises G or
    /// the number of tiles past the next multiple of the threads.
    #[test]
    fn balanced_groups_split_evenly_over_the_threads() {
        assert_eq!(balanced_group(12, 128, 2), 11, "4×4, B = 128: 12 tiles of ≤ 11");
        assert_eq!(balanced_group(12, 128, 1), 12, "one thread keeps G");
        assert_eq!(balanced_group(3, 128, 2), 3, "8×8: 43 tiles of ≤ 3 already split 22/21");
        for n in 1..200 {
            for g in 1..=n.min(24) {
                for t in 1..=4 {
                    let b = balanced_group(g, n, t);
                    assert!(b >= 1 && b <= g, "n {n}, G {g}, threads {t}: {b}");
                    assert!(n.div_ceil(b) <= n.div_ceil(g).next_multiple_of(t), "n {n}, G {g}, threads {t}: {b}");
                }
            }
        }
    }

    /// The fused op equals candle's conv2d plus the per-image bias (and the
    /// residual, scaled by 0.7, or by 1 for k = 1), and its gradients equal candle's (through conv2d's own
    /// backward), for a random weighting of the output as the loss; stride 1
    /// and 2, k = 1 and 3, with and without the residual, and a batch that does
    /// not split evenly across tasks; 4×4, 8×8 and 14×14 (the fixed-width
    /// 3×3 patch copies; 14×14 also padded to 208 columns), and 10×10 and
    /// 20×20 whose 10×10 outputs have their patch matrices padded to 112
    /// columns; 2×2 and 6×6 (1×1 and 3×3 at stride 2). Each under the
    /// groupings of [`GROUPINGS`]: by default tiles of all 5 images up to
    /// 4×4, padded from 180 to 192 columns at 6×6, from 45 to 48 at 3×3 and
    /// from 125 to 128 at 5×5, and tiles of 3 + 2 images (147 columns padded
    /// to 160, then 98) at 7×7 and (192, then 128) at 8×8. f32 sums of up to
    /// C_in·k² = 27 (forward) and N·H·W = 2000 (dW) terms of size ~1: 1e-4
    /// relative to the largest entry is many times their rounding.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        for grouping in GROUPINGS {
            with_grouping(grouping, conv2d_case);
        }
    }

    /// Groupings for the tests: the default, (12, 64) (2×2 in tiles of
    /// 3 + 2 images) and (40, 64) (4×4 in tiles of 2 + 2 + 1, 3×3 of 4 + 1).
    const GROUPINGS: [(usize, usize); 3] = [(GROUP_COLS, GROUP_MAX_HW), (12, 64), (40, 64)];

    fn with_grouping(grouping: (usize, usize), f: impl FnOnce((usize, usize))) {
        GROUPING.with(|g| g.set(grouping));
        f(grouping);
        GROUPING.with(|g| g.set((GROUP_COLS, GROUP_MAX_HW)));
    }

    /// candle's ops for the op's value: conv2d(a; W) ("same" padding, the
    /// stride given) plus c per image, and s·(· + r) with the residual.
    fn candle_conv(a: &Tensor, w: &Tensor, c: &Tensor, stride: usize, residual: Option<(&Tensor, f64)>) -> Tensor {
        let k = w.dim(3).unwrap();
        let y = a.conv2d(w, k / 2, stride, 1, 1).unwrap();
        let y = y.broadcast_add(&c.unsqueeze(2).unwrap().unsqueeze(3).unwrap()).unwrap();
        match residual {
            Some((r, s)) => ((y + r).unwrap() * s).unwrap(),
            None => y,
        }
    }

    /// γ, β [C_in] as variables (drawn in that order) and candle-nn's
    /// GroupNorm over them: G groups, ε = 1e-6.
    fn group_norm(rng: &mut scoregen_core::rng::Rng, cin: usize, groups: usize) -> (Var, Var, candle_nn::GroupNorm) {
        let dev = Device::Cpu;
        let gamma = Var::from_tensor(&rng.randn(cin, DType::F32, &dev).unwrap()).unwrap();
        let beta = Var::from_tensor(&rng.randn(cin, DType::F32, &dev).unwrap()).unwrap();
        let gn =
            candle_nn::GroupNorm::new(gamma.as_tensor().clone(), beta.as_tensor().clone(), cin, groups, 1e-6).unwrap();
        (gamma, beta, gn)
    }

    fn conv2d_case(grouping: (usize, usize)) {
        let dev = Device::Cpu;
        let mut rng = scoregen_core::rng::Rng::new(11, 0);
        let (n, cin, cout) = (5, 3, 4);
        let cases = [(3, 1, false), (3, 2, false), (1, 1, false), (3, 1, true), (1, 1, true)];
        for ((k, stride, residual), side) in cases.into_iter().flat_map(|c| [2, 4, 6, 8, 10, 14, 20].map(|s| (c, s))) {
            let (h, w) = (side, side);
            let x = Var::from_tensor(&rng.randn((n, cin, h, w), DType::F32, &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&rng.randn((cout, cin, k, k), DType::F32, &dev).unwrap()).unwrap();
            let c = Var::from_tensor(&rng.randn((n, cout), DType::F32, &dev).unwrap()).unwrap();
            let r = Var::from_tensor(&rng.randn((n, cout, h / stride, w / stride), DType::F32, &dev).unwrap()).unwrap();
            let flat = wt.as_tensor().reshape((cout, cin * k * k)).unwrap();
            // the residual's scale: 1 (diffusers' blocks, dr = dy itself) for k = 1, else 0.7
            let s = if k == 1 { 1.0 } else { 0.7 };
            let ours =
                conv2d(x.as_tensor(), &flat, c.as_tensor(), k, stride, residual.then_some((r.as_tensor(), s))).unwrap();
            let theirs = candle_conv(
                x.as_tensor(),
                wt.as_tensor(),
                c.as_tensor(),
                stride,
                residual.then_some((r.as_tensor(), s)),
            );
            let case = format!("k={k} stride={stride} residual={residual} {side}×{side} grouping={grouping:?}");
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-4, "{case}: forward {}", max_diff(&ours, &theirs));
            let weights = rng.randn(ours.shape(), DType::F32, &dev).unwrap();
            let mut vars = vec![("x", x.as_tensor()), ("W", wt.as_tensor()), ("c", c.as_tensor())];
            if residual {
                vars.push(("r", r.as_tensor()));
            }
            assert_same_gradients(&ours, &theirs, &weights, &vars, (1e-4, 0.0), &case);
        }
    }

    /// With silu(GN(x)) folded in, the op equals candle-nn's GroupNorm, SiLU
    /// and candle's conv2d (plus the per-image bias and the scaled residual),
    /// and so do its gradients for x, W, c, γ, β and r; stride 1 and 2, k = 1
    /// and 3, a batch that does not split evenly across tasks, 8×8 and 20×20
    /// (padded patch matrices at stride 2), inputs of mean 3 (a one-pass
    /// variance fails). Tolerances as in the test above. Both ways of the
    /// backward: with the activations the forward kept, and recomputed.
    #[test]
    fn folded_group_norm_matches_candle_and_its_gradients() {
        for grouping in GROUPINGS {
            with_grouping(grouping, |grouping| {
                folded_group_norm_case(false, grouping);
                KEEP_LIMIT.with(|l| l.set(0));
                folded_group_norm_case(true, grouping);
                KEEP_LIMIT.with(|l| l.set(KEEP_ACTIVATIONS));
            });
        }
    }

    fn folded_group_norm_case(recompute: bool, grouping: (usize, usize)) {
        let dev = Device::Cpu;
        let mut rng = scoregen_core::rng::Rng::new(13, 0);
        let (n, cin, cout, groups) = (5, 4, 3, 2);
        let (gamma, beta, gn) = group_norm(&mut rng, cin, groups);
        let cases = [(3, 1, false), (3, 2, false), (1, 1, false), (3, 1, true)];
        for ((k, stride, residual), side) in cases.into_iter().flat_map(|c| [2, 4, 6, 8, 20].map(|s| (c, s))) {
            let (h, w) = (side, side);
            let x = rng.randn((n, cin, h, w), DType::F32, &dev).unwrap().affine(2.0, 3.0).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let wt = Var::from_tensor(&rng.randn((cout, cin, k, k), DType::F32, &dev).unwrap()).unwrap();
            let c = Var::from_tensor(&rng.randn((n, cout), DType::F32, &dev).unwrap()).unwrap();
            let r = Var::from_tensor(&rng.randn((n, cout, h / stride, w / stride), DType::F32, &dev).unwrap()).unwrap();
            let flat = wt.as_tensor().reshape((cout, cin * k * k)).unwrap();
            let s = 0.7;
            let norm = Norm { gamma: gamma.as_tensor(), beta: beta.as_tensor(), groups, eps: 1e-6 };
            let res = residual.then_some((r.as_tensor(), s));
            let ours = conv2d_normed(x.as_tensor(), Some(norm), &flat, c.as_tensor(), k, stride, res).unwrap();
            let a = candle_core::Module::forward(&gn, x.as_tensor()).unwrap().silu().unwrap();
            let theirs = candle_conv(&a, wt.as_tensor(), c.as_tensor(), stride, res);
            let case = format!(
                "normed k={k} stride={stride} residual={residual} {side}×{side} recompute={recompute} grouping={grouping:?}"
            );
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-4, "{case}: forward {}", max_diff(&ours, &theirs));
            let weights = rng.randn(ours.shape(), DType::F32, &dev).unwrap();
            let mut vars = vec![
                ("x", x.as_tensor()),
                ("W", wt.as_tensor()),
                ("c", c.as_tensor()),
                ("γ", gamma.as_tensor()),
                ("β", beta.as_tensor()),
            ];
            if residual {
                vars.push(("r", r.as_tensor()));
            }
            assert_same_gradients(&ours, &theirs, &weights, &vars, (1e-4, 0.0), &case);
        }
    }

    /// 3×3 stride-1 convolutions between multiples of 16 channels take
    /// F(4×4, 3×3) in the forward and for dx (see [`winograd`]); the op still
    /// equals candle's GroupNorm, SiLU and conv2d and their gradients, with
    /// and without the norm and the residual, with θ tracked (a training step:
    /// dW by the direct product) and frozen (a likelihood's ∇ₓ, on the
    /// Winograd tile groups), on 4×4 (one tile), 7×7 and 10×10 (partial
    /// tiles) and 16×16 images (all under the minimum of tiles lowered to
    /// one; with it, a small batch of small images keeps the direct product).
    /// The sums have C_in·9 = 144 terms; the
    /// transforms' rounding (at most 2e-5 of Σ|w||x| in the kernel's own
    /// test, about 1e-5 of the largest entry here) stays inside the 1e-4
    /// relative tolerance of the tests above.
    #[test]
    fn the_winograd_path_matches_candle_and_its_gradients() {
        MIN_TILES.with(|t| t.set(1));
        let dev = Device::Cpu;
        let mut rng = scoregen_core::rng::Rng::new(15, 0);
        let (n, cin, cout, groups) = (5, 16, 32, 4);
        let (gamma, beta, gn) = group_norm(&mut rng, cin, groups);
        for (side, normed, residual, frozen) in [4, 7, 10, 16]
            .into_iter()
            .flat_map(|s| [(false, false), (true, true), (true, false), (false, true)].map(|(a, b)| (s, a, b)))
            .flat_map(|(s, a, b)| [(s, a, b, false), (s, a, b, true)])
        {
            let geometry = Geometry::new(&[n, cin, side, side], cout, 3, 1, normed.then_some((groups, 1e-6)), false);
            assert!(geometry.winograd.is_some(), "{side}×{side} takes F(4×4, 3×3)");
            let x = rng.randn((n, cin, side, side), DType::F32, &dev).unwrap().affine(2.0, 1.0).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let wt = rng.randn((cout, cin, 3, 3), DType::F32, &dev).unwrap();
            let wt = if frozen { wt } else { Var::from_tensor(&wt).unwrap().as_tensor().clone() };
            let c = Var::from_tensor(&rng.randn((n, cout), DType::F32, &dev).unwrap()).unwrap();
            let r = Var::from_tensor(&rng.randn((n, cout, side, side), DType::F32, &dev).unwrap()).unwrap();
            let c = if frozen { c.as_tensor().detach() } else { c.as_tensor().clone() };
            let flat = wt.reshape((cout, cin * 9)).unwrap();
            let s = 0.7;
            let (gm, bt) = if frozen {
                (gamma.as_tensor().detach(), beta.as_tensor().detach())
            } else {
                (gamma.as_tensor().clone(), beta.as_tensor().clone())
            };
            let norm = normed.then_some(Norm { gamma: &gm, beta: &bt, groups, eps: 1e-6 });
            let res = residual.then_some((r.as_tensor(), s));
            let ours = conv2d_normed(x.as_tensor(), norm, &flat, &c, 3, 1, res).unwrap();
            let a = if normed {
                candle_core::Module::forward(&gn, x.as_tensor()).unwrap().silu().unwrap()
            } else {
                x.as_tensor().clone()
            };
            let theirs = candle_conv(&a, &wt, &c, 1, res);
            let case = format!("{side}×{side} normed={normed} residual={residual} frozen={frozen}");
            let scale = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-4 * scale, "{case}: forward {}", max_diff(&ours, &theirs));
            let weights = rng.randn(ours.shape(), DType::F32, &dev).unwrap();
            let mut vars = vec![("x", x.as_tensor())];
            if !frozen {
                vars.extend([("W", &wt), ("c", &c)]);
                if normed {
                    vars.extend([("γ", gamma.as_tensor()), ("β", beta.as_tensor())]);
                }
            }
            if residual {
                vars.push(("r", r.as_tensor()));
            }
            assert_same_gradients(&ours, &theirs, &weights, &vars, (1e-4, 0.0), &case);
        }
        MIN_TILES.with(|t| t.set(WINOGRAD_MIN_TILES));
        let few = Geometry::new(&[2, 256, 4, 4], 256, 3, 1, None, false);
        assert!(few.winograd.is_none(), "2 images of 4×4 are 2 tiles: the direct product");
        let narrow = Geometry::new(&[2, 32, 4, 4], 64, 3, 1, None, false);
        assert!(narrow.winograd.is_some(), "32 → 64 channels: U stays in cache, F(4×4, 3×3) even for 2 tiles");
    }

    /// Kept filters on AVX2 + FMA take F(4×4, 3×3) from
    /// [`WINOGRAD_MIN_TILES_KEPT_FMA`] tiles on (CIFAR's 4×4 level at batch
    /// 8: 8 tiles), filters made per call and the other products from
    /// [`WINOGRAD_MIN_TILES`] only.
    #[test]
    fn kept_filters_lower_the_tile_threshold_on_fma_only() {
        use winograd::{force_product, Product};
        let takes = |n: usize, kept: bool| Geometry::new(&[n, 256, 4, 4], 256, 3, 1, None, kept).winograd.is_some();
        force_product(Some(Product::Fma));
        let fma = [takes(8, true), takes(7, true), takes(8, false), takes(63, false), takes(64, false)];
        let mut others = vec![];
        for p in [Product::Avx512, Product::Crate] {
            force_product(Some(p));
            others.push((p, takes(8, true), takes(63, true), takes(64, true)));
        }
        force_product(None);
        assert_eq!(fma, [true, false, false, false, true], "AVX2 + FMA: kept from 8 tiles, made per call from 64");
        for (p, eight, below, at) in others {
            assert!(!eight && !below && at, "{p:?}: kept filters from 64 tiles only");
        }
    }

    /// A frozen layer's [`TransformCache`] gives the uncached op's bits for y
    /// and dx on every call (the first call makes the transforms, the next
    /// ones reuse them), with and without GroupNorm, through Winograd
    /// (16 input channels) and the direct product with its adjoint W̃ (12);
    /// and weights assigned in place later (a `Var::set` behind the detached
    /// tensor, the hazard the cache's guard is for) give the new weights'
    /// result, not the old transforms'.
    #[test]
    fn cached_transforms_give_the_uncached_bits_and_follow_new_weights() {
        MIN_TILES.with(|t| t.set(1));
        let dev = Device::Cpu;
        let mut rng = scoregen_core::rng::Rng::new(16, 0);
        for (cin, winograd) in [(16, true), (12, false)] {
            let (n, cout, side, groups) = (3, 32, 8, 4);
            assert_eq!(Geometry::new(&[n, cin, side, side], cout, 3, 1, None, false).winograd.is_some(), winograd);
            let (gamma, beta, _) = group_norm(&mut rng, cin, groups);
            let (gm, bt) = (gamma.as_tensor().detach(), beta.as_tensor().detach());
            let x = Var::from_tensor(&rng.randn((n, cin, side, side), DType::F32, &dev).unwrap()).unwrap();
            let c = rng.randn((n, cout), DType::F32, &dev).unwrap();
            let r = rng.randn((n, cout, side, side), DType::F32, &dev).unwrap();
            let probe = rng.randn((n, cout, side, side), DType::F32, &dev).unwrap();
            let first = rng.randn((cout, cin * 9), DType::F32, &dev).unwrap();
            let weights = Var::from_tensor(&first).unwrap();
            let w = weights.as_tensor().detach();
            for normed in [false, true] {
                let case = format!("C_in = {cin}, normed = {normed}");
                let cache = Arc::new(TransformCache::default());
                let run = |cached: bool| {
                    let norm = normed.then_some(Norm { gamma: &gm, beta: &bt, groups, eps: 1e-6 });
                    let res = Some((&r, 0.7));
                    let y = conv2d_frozen(x.as_tensor(), norm, &w, &c, 3, 1, res, cached.then_some(&cache)).unwrap();
                    let g = scoregen_core::autodiff::backward(&(&y * &probe).unwrap().sum_all().unwrap()).unwrap();
                    let dx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dx)
                };
                weights.set(&first).unwrap();
                let (old, old_uncached) = ((run(true), run(true)), run(false));
                assert!(old.0 == old_uncached && old.1 == old_uncached, "{case}: cached calls differ");
                weights.set(&first.affine(1.5, 0.25).unwrap()).unwrap();
                let (new, new_uncached) = (run(true), run(false));
                assert!(new_uncached != old_uncached, "{case}: the new weights change the result");
                assert!(new == new_uncached, "{case}: the cache kept the old weights' transforms");
            }
        }
        MIN_TILES.with(|t| t.set(WINOGRAD_MIN_TILES));
    }

    /// A slot keeps what fits in [`CACHE_BYTES`] (the same Arc on the next
    /// call, a new one for other weights) and keeps nothing larger (a new
    /// transform on every call).
    #[test]
    fn the_cache_keeps_what_fits_its_budget_only() {
        struct Sized(usize);
        impl Bytes for Sized {
            fn bytes(&self) -> usize {
                self.0
            }
        }
        let (w, other) = ([1.0f32; 16], [2.0f32; 16]);
        let small = Slot::default();
        let a = small.get(Made::of(&w, 1.0, false), || Sized(1024));
        assert!(Arc::ptr_eq(&a, &small.get(Made::of(&w, 1.0, false), || Sized(1024))), "kept");
        assert!(!Arc::ptr_eq(&a, &small.get(Made::of(&other, 1.0, false), || Sized(1024))), "other weights");
        let huge = Slot::default();
        let b = huge.get(Made::of(&w, 1.0, false), || Sized(CACHE_BYTES + 1));
        assert!(!Arc::ptr_eq(&b, &huge.get(Made::of(&w, 1.0, false), || Sized(CACHE_BYTES + 1))), "not kept");
    }

    /// The same inputs give the same gradients, bit for bit, on four threads
    /// (DESIGN.md: a fixed order for parallel sums): dW, dγ and dβ are sums of
    /// per-range partials over the tiles, added in the order of their ranges
    /// whichever thread finishes first. `RUNS` (24) backward passes against
    /// the first, stride 1 and 2 with the GroupNorm folded in, 64 images of
    /// 16×16 (at stride 1 one per tile: 32 ranges on four threads, each long
    /// enough for the threads to overlap; 22 tiles of ≤ 3 at stride 2).
    #[test]
    fn gradients_are_bitwise_reproducible_on_four_threads() {
        let name = "gradients_are_bitwise_reproducible_on_four_threads";
        const RUNS: usize = 24;
        super::super::fused::on_threads(4, module_path!(), name, || {
            let dev = Device::Cpu;
            let mut rng = scoregen_core::rng::Rng::new(14, 0);
            let (n, cin, cout, groups, side) = (64, 16, 16, 4, 16);
            let x = Var::from_tensor(&rng.randn((n, cin, side, side), DType::F32, &dev).unwrap()).unwrap();
            let gamma = Var::from_tensor(&rng.randn(cin, DType::F32, &dev).unwrap()).unwrap();
            let beta = Var::from_tensor(&rng.randn(cin, DType::F32, &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&rng.randn((cout, cin * 9), DType::F32, &dev).unwrap()).unwrap();
            let c = Var::from_tensor(&rng.randn((n, cout), DType::F32, &dev).unwrap()).unwrap();
            for stride in [1, 2] {
                let weights = rng.randn((n, cout, side / stride, side / stride), DType::F32, &dev).unwrap();
                let grads = || {
                    let norm = Norm { gamma: gamma.as_tensor(), beta: beta.as_tensor(), groups, eps: 1e-6 };
                    let y = conv2d_normed(x.as_tensor(), Some(norm), w.as_tensor(), c.as_tensor(), 3, stride, None)
                        .unwrap();
                    let g = scoregen_core::autodiff::backward(&(y * &weights).unwrap().sum_all().unwrap()).unwrap();
                    [&x, &w, &c, &gamma, &beta].map(|v| {
                        let t = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                        t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    })
                };
                let first = grads();
                for run in 1..RUNS {
                    let again = grads();
                    for (i, name) in ["x", "W", "c", "γ", "β"].iter().enumerate() {
                        assert!(again[i] == first[i], "stride {stride}: d{name} of run {run} differs from run 0");
                    }
                }
            }
        });
    }

    /// With W and c constant (a likelihood's ∇ₓ) the backward skips dW and
    /// gives exactly the dx it gives with them tracked (the same arithmetic).
    #[test]
    fn constant_weights_give_the_same_input_gradient() {
        let dev = Device::Cpu;
        let mut rng = scoregen_core::rng::Rng::new(12, 0);
        let x = Var::from_tensor(&rng.randn((3, 2, 6, 6), DType::F32, &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&rng.randn((4, 18), DType::F32, &dev).unwrap()).unwrap();
        let c = rng.randn((3, 4), DType::F32, &dev).unwrap();
        let weights = rng.randn((3, 4, 6, 6), DType::F32, &dev).unwrap();
        let dx = |w: &Tensor| {
            let y = conv2d(x.as_tensor(), w, &c, 3, 1, None).unwrap();
            scoregen_core::autodiff::grad(&(y * &weights).unwrap(), &x).unwrap()
        };
        assert_eq!(max_diff(&dx(w.as_tensor()), &dx(&w.as_tensor().detach())), 0.0);
    }

    /// With x tracked the forward keeps GroupNorm's slopes silu′(z) and
    /// moments (μ, r) ([`NormKept`]) when θ is constant (a likelihood's ∇ₓ)
    /// or its activations are kept (a small training batch), and the
    /// backward reads them: the same products in the same order as
    /// recomputing them, so every gradient is the same bit for bit (dx; and
    /// dW, dc, dγ, dβ with θ tracked). Stride 1 and 2, 3×3 and 1×1, on 8×8
    /// (16 → 16 channels: the Winograd path at stride 1) and 7×7, four
    /// images in eight groups of two channels.
    #[test]
    fn kept_group_norm_state_gives_the_recomputed_gradients() {
        let dev = Device::Cpu;
        let mut rng = scoregen_core::rng::Rng::new(16, 0);
        let (n, cin, cout, groups) = (4, 16, 16, 8);
        let (gamma, beta, _) = group_norm(&mut rng, cin, groups);
        for (k, stride, side, tracked) in [(3, 1, 8), (3, 2, 8), (1, 1, 8), (3, 1, 7), (1, 1, 7)]
            .into_iter()
            .flat_map(|(k, s, side)| [(k, s, side, false), (k, s, side, true)])
        {
            let x = rng.randn((n, cin, side, side), DType::F32, &dev).unwrap().affine(2.0, 1.0).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let w = Var::from_tensor(&rng.randn((cout, cin * k * k), DType::F32, &dev).unwrap()).unwrap();
            let c = Var::from_tensor(&rng.randn((n, cout), DType::F32, &dev).unwrap()).unwrap();
            let weights = rng.randn((n, cout, side / stride, side / stride), DType::F32, &dev).unwrap();
            let theta =
                [&w, &c, &gamma, &beta].map(|v| if tracked { v.as_tensor().clone() } else { v.as_tensor().detach() });
            let grads = |keep: bool| {
                KEEP_NORM.with(|k| k.set(keep));
                let norm = Norm { gamma: &theta[2], beta: &theta[3], groups, eps: 1e-6 };
                let y = conv2d_normed(x.as_tensor(), Some(norm), &theta[0], &theta[1], k, stride, None).unwrap();
                KEEP_NORM.with(|k| k.set(true));
                let g = scoregen_core::autodiff::backward(&(y * &weights).unwrap().sum_all().unwrap()).unwrap();
                let vars = if tracked { vec![&x, &w, &c, &gamma, &beta] } else { vec![&x] };
                vars.iter()
                    .map(|v| {
                        let t = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                        t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            };
            let case = format!("k={k} stride={stride} {side}×{side} θ tracked={tracked}");
            let (kept, recomputed) = (grads(true), grads(false));
            for (i, name) in ["x", "W", "c", "γ", "β"].iter().enumerate().take(kept.len()) {
                assert!(kept[i] == recomputed[i], "{case}: kept and recomputed d{name} differ");
            }
        }
    }

    /// Differentiating the fused gradient again is refused, naming the way out.
    #[test]
    fn second_derivative_is_an_error() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((2, 1, 4, 4), DType::F32, &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::ones((2, 9), DType::F32, &dev).unwrap()).unwrap();
        let c = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
        let y = conv2d(x.as_tensor(), w.as_tensor(), &c, 3, 1, None).unwrap();
        let gx = scoregen_core::autodiff::grad(&y.sqr().unwrap(), &x).unwrap();
        let err = scoregen_core::autodiff::backward(&gx.sqr().unwrap().sum_all().unwrap()).unwrap_err().to_string();
        assert!(err.contains("exact_higher_order"), "{err}");
    }
}
