//! Winograd's minimal filtering F(4×4, 3×3) for the 3×3, stride-1 "same"
//! convolution (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
//! Networks", interpolation points 0, ±1, ±2, ∞).
//!
//! For a 6×6 input tile d and a 3×3 filter g, the 4×4 output tile
//!
//!   Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A
//!
//! is the correlation Y[a, b] = Σ_{u,v} g[u, v] d[a + u, b + v], a
//! convolution layer's product. Over channels the elementwise product is a
//! sum, so for each of the 36 positions ξ of the tile
//!
//!   M_ξ [tiles, C_out] = V_ξ [tiles, C_in] · U_ξ [C_in, C_out],
//!   U_ξ[i, o] = (G g_{o,i} Gᵀ)_ξ,   V_ξ[t, i] = (Bᵀ d_{t,i} B)_ξ,
//!
//! and Y_{t,o} = Aᵀ M_{t,o} A: 36 GEMMs with 36·C_in·C_out multiply–adds
//! per 4×4 output tile where the direct convolution has 9·16·C_in·C_out,
//! a quarter. The transforms cost O((C_in + C_out)·tiles) and run on
//! vectors of [`L`] channels: the input is first copied channel-last into a
//! zero-bordered buffer (so a tile's 36 pixels are 36 contiguous loads of L
//! channels), and an image's output tiles are gathered channel-last and
//! transposed back into the channel-major result, both by 16×16 register
//! transposes ([`transpose16`]).
//!
//! The price is accuracy: the transforms' coefficients (up to 8 in A, 5 in
//! B, 1/24 in G) amplify f32 rounding. Measured: at most 2.6e-6 of Σ|g||d|
//! per output (the tests bound it by 2e-5), and against diffusers'
//! `UNet2DModel` at batch 16 a largest relative error of 1.5–1.8e-6 where
//! the direct product has 0.7–0.8e-6. It serves the forward pass and the
//! input gradient (the adjoint of a stride-1 "same" convolution is one, with
//! the filters turned and their channels swapped: [`Of::adjoint`]), in
//! training as in sampling and likelihoods; the weight gradient keeps the
//! direct product. Where it is used, and where not, see
//! `super::conv::WINOGRAD_MIN_TILES`; `SCOREGEN_WINOGRAD=0` turns it off.
//!
//! Written by hand: candle has no Winograd convolution. The 36 products run
//! on the `gemm` crate's microkernels, on U kept in their panel layout
//! ([`Product`]; the crate's whole GEMM where neither AVX-512 nor AVX2 + FMA
//! is present, or with `SCOREGEN_WINOGRAD_GEMM=crate`).

use super::dense::{gemm_serial, Mat};
use super::fused::{par_ranges, simd, simd_builds, SharedMut, Simd};

/// Channels per vector: one AVX-512 register, two AVX2 ones.
pub(crate) const L: usize = 16;
/// Positions ξ of a 6×6 tile.
const XI: usize = 36;
/// Output tile side (m of F(m×m, 3×3)).
const M: usize = 4;

type V = [f32; L];

/// Whether F(4×4, 3×3) serves a k×k convolution of stride `stride` from
/// C_in to C_out channels on h×w images: 3×3 stride 1, both channel counts
/// multiples of [`L`], and images of at least 4×4 (smaller ones would be
/// mostly tile padding).
pub(crate) fn applies(k: usize, stride: usize, cin: usize, cout: usize, h: usize, w: usize) -> bool {
    k == 3 && stride == 1 && cin.is_multiple_of(L) && cout.is_multiple_of(L) && cin > 0 && cout > 0 && h >= M && w >= M
}

/// The transformed filters U [36, C_in, C_out] of w [C_out, C_in, 3, 3]
/// (blocks [`xi_stride`] apart), each block stored in the panels that
/// `product` reads ([`panel_at`]). A frozen layer keeps its own
/// (`conv::TransformCache`).
pub(crate) struct Filters {
    u: Vec<f32>,
    cin: usize,
    cout: usize,
    product: Product,
}

/// How the 36 products M_ξᵀ [C_out, tiles] = U_ξᵀ V_ξᵀ run, chosen once at
/// run time from the CPU's features.
///
/// The `gemm` crate's driver copies its left operand (U_ξᵀ, C_out × C_in)
/// into panels of MR rows on every call: 8 % of a CIFAR-size forward + VJP,
/// and more than the product itself where the batch has few tiles (the
/// 8×8 and 4×4 levels), since U_ξ is read once per group of 64 tiles. Here
/// U is *written* in those panels by the filter transform, and the crate's
/// microkernels (public in `gemm-f32`; the same ones its driver calls) run
/// on them directly: an MR × 6 block of M per call, the whole of C_in in
/// registers. Written by hand because the crate has no entry point for a
/// pre-packed operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Product {
    /// The AVX-512 microkernels: panels of 64 output channels (4 × 16 lanes).
    Avx512,
    /// The AVX2 + FMA microkernels: panels of 16 output channels (2 × 8 lanes).
    Fma,
    /// The crate's whole GEMM on one panel of all C_out channels (other
    /// CPUs, or `SCOREGEN_WINOGRAD_GEMM=crate` for A/B timings).
    Crate,
}

thread_local! {
    /// A [`Product`] the tests force on this thread (None: the CPU's).
    static FORCE_PRODUCT: std::cell::Cell<Option<Product>> = const { std::cell::Cell::new(None) };
}

/// Makes [`Product::current`] return `product` on this thread (None: the CPU's again).
#[cfg(test)]
pub(crate) fn force_product(product: Option<Product>) {
    FORCE_PRODUCT.with(|f| f.set(product));
}

impl Product {
    /// The microkernels of the CPU's vector level ([`simd`]), unless
    /// `SCOREGEN_WINOGRAD_GEMM=crate` (read once) or a test forces another.
    pub(crate) fn current() -> Self {
        static CRATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        FORCE_PRODUCT.with(|f| f.get()).unwrap_or_else(|| {
            if *CRATE.get_or_init(|| std::env::var("SCOREGEN_WINOGRAD_GEMM").is_ok_and(|v| v.trim() == "crate")) {
                return Product::Crate;
            }
            Self::of(simd())
        })
    }

    /// The microkernels of a vector level (the crate's whole GEMM for the baseline).
    fn of(level: Simd) -> Self {
        match level {
            Simd::Avx512 => Product::Avx512,
            Simd::Avx2 => Product::Fma,
            Simd::Base => Product::Crate,
        }
    }

    /// Output channels per panel of U for C_out = `cout` (the last panel may be narrower).
    fn panel(self, cout: usize) -> usize {
        match self {
            Product::Avx512 => 64,
            Product::Fma => 16,
            Product::Crate => cout,
        }
    }
}

/// Where U_ξ[i, o] lies in its block when the block holds panels of `pw`
/// output channels, each stored [C_in, width] (the microkernels' packed
/// left operand, read with column stride `width`): with `pw` = C_out it is
/// the plain [C_in, C_out] layout.
fn panel_at(i: usize, o: usize, cin: usize, cout: usize, pw: usize) -> usize {
    let o0 = o / pw * pw;
    o0 * cin + i * pw.min(cout - o0) + (o - o0)
}

/// G g for lanes-wide 3-vectors (a column or a row of L filters): G's six rows.
#[inline(always)]
fn filter_1d(g: &[V; 3]) -> [V; 6] {
    let mut o = [[0f32; L]; 6];
    for l in 0..L {
        let [g0, g1, g2] = [g[0][l], g[1][l], g[2][l]];
        let (even, odd) = (g0 + g2, g1);
        o[0][l] = g0 * 0.25;
        o[1][l] = (even + odd) * (-1.0 / 6.0);
        o[2][l] = (even - odd) * (-1.0 / 6.0);
        o[3][l] = g0 * (1.0 / 24.0) + g1 * (1.0 / 12.0) + g2 * (1.0 / 6.0);
        o[4][l] = g0 * (1.0 / 24.0) - g1 * (1.0 / 12.0) + g2 * (1.0 / 6.0);
        o[5][l] = g2;
    }
    o
}

/// Rows i0..i1 of U [36, C_in, C_out] (blocks [`xi_stride`] apart) from w
/// [C_out, C_in, 3, 3], L output channels at a time.
///
/// # Safety
/// `u` must hold 36 blocks; no other thread may touch rows i0..i1 of them.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // g[a][b][l] is filled lane by lane, index by index
unsafe fn filters_body(w: &[f32], cout: usize, cin: usize, rows: std::ops::Range<usize>, u: SharedMut, t: Target) {
    let (us, pw, of) = (xi_stride(cin, cout), t.panel, t.of);
    for i in rows {
        for o0 in (0..cout).step_by(L) {
            // g[a][b][l] = s·w[o0 + l, i, a, b], or s·w[i, o0 + l, 2 − a, 2 − b] for the adjoint
            // (explicit loops: std::array::from_fn's closures are not
            // inlined into these target-feature builds, 6 % of a step)
            let mut g = [[[0f32; L]; 3]; 3];
            for l in 0..L {
                let o = o0 + l;
                let kernel = if of.adjoint { &w[(i * cout + o) * 9..][..9] } else { &w[(o * cin + i) * 9..][..9] };
                for a in 0..3 {
                    for b in 0..3 {
                        let ab = if of.adjoint { 8 - 3 * a - b } else { 3 * a + b };
                        g[a][b][l] = of.scale * kernel[ab];
                    }
                }
            }
            // columns first: G g[·][b] (6 of each column), then the rows of that times Gᵀ
            let mut cols = [[[0f32; L]; 6]; 3];
            for (b, col) in cols.iter_mut().enumerate() {
                *col = filter_1d(&[g[0][b], g[1][b], g[2][b]]);
            }
            for a in 0..6 {
                for (b, out) in filter_1d(&[cols[0][a], cols[1][a], cols[2][a]]).iter().enumerate() {
                    // SAFETY: row i of block ξ = 6a + b, within u and this caller's rows
                    // (the L channels from o0 lie in one panel: widths are multiples of L).
                    unsafe {
                        let at = (a * 6 + b) * us + panel_at(i, o0, cin, cout, pw);
                        std::ptr::copy_nonoverlapping(out.as_ptr(), u.ptr().add(at), L)
                    };
                }
            }
        }
    }
}

/// The safe face of [`filters_body`] for [`simd_builds`]: rows i0..i1.
#[inline(always)]
fn filter_rows(w: &[f32], cout: usize, cin: usize, rows: std::ops::Range<usize>, u: SharedMut, of: Target) {
    // SAFETY: Filters::new hands each thread its own rows of a buffer of 36 blocks.
    unsafe { filters_body(w, cout, cin, rows, u, of) }
}

simd_builds! {
    fn filters(w: &[f32], cout: usize, cin: usize, rows: std::ops::Range<usize>, u: SharedMut, of: Target) = filter_rows;
}

/// Which filters [`Filters::new`] transforms: s·g of the convolution whose
/// weights it is given, or of its adjoint (input and output channels
/// swapped, the kernel turned by 180°: the convolution whose product is dx).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Of {
    pub scale: f32,
    pub adjoint: bool,
}

/// [`Of`] and the panel width the transform writes (set by [`Filters::new`]).
#[derive(Clone, Copy, Debug)]
struct Target {
    of: Of,
    panel: usize,
}

thread_local! {
    /// The buffer of the last [`Filters`] this thread dropped: U is remade
    /// for every call (the weights change each training step), and at 256
    /// channels it is 9 MiB whose fresh pages cost more than the transform.
    static SPARE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Filters {
    /// U_ξ[i, o] = (G g_{o,i} Gᵀ)_ξ for the filters g `of` w [C_out, C_in, 3, 3]
    /// (for the adjoint, w is [C_in, C_out, 3, 3]: the forward's weights), the
    /// rows i split across candle's threads.
    pub(crate) fn new(w: &[f32], cout: usize, cin: usize, of: Of) -> Self {
        Self::made(w, cout, cin, of, SPARE.with(|s| std::mem::take(&mut *s.borrow_mut())))
    }

    /// [`Filters::new`] in a buffer of its own size, for a cache to keep
    /// (the spare buffer may be a larger layer's).
    pub(crate) fn kept(w: &[f32], cout: usize, cin: usize, of: Of) -> Self {
        Self::made(w, cout, cin, of, Vec::new())
    }

    fn made(w: &[f32], cout: usize, cin: usize, of: Of, mut u: Vec<f32>) -> Self {
        assert!(
            cout.is_multiple_of(L) && w.len() == cout * cin * 9,
            "winograd: w holds C_out × C_in 3×3 filters, C_out a multiple of {L}"
        );
        let len = XI * xi_stride(cin, cout);
        // every entry that is read is written below (the gaps between blocks,
        // and the spare's entries past `len`, are never read)
        at_least(&mut u, len);
        let out = SharedMut::new(&mut u);
        let product = Product::current();
        let target = Target { of, panel: product.panel(cout) };
        par_ranges(cin, |rows| filters(w, cout, cin, rows, out, target));
        Self { u, cin, cout, product }
    }

    /// Entries U's buffer holds (36·C_in·C_out, the gaps between blocks, and
    /// any spare room).
    pub(crate) fn capacity(&self) -> usize {
        self.u.capacity()
    }
}

impl Drop for Filters {
    fn drop(&mut self) {
        let u = std::mem::take(&mut self.u);
        SPARE.with(|s| {
            let mut spare = s.borrow_mut();
            if u.capacity() > spare.capacity() {
                *spare = u;
            }
        });
    }
}

/// Bᵀ d for six lanes-wide values (a row or a column of an input tile).
#[inline(always)]
fn input_1d(d: &[V; 6]) -> [V; 6] {
    let mut o = [[0f32; L]; 6];
    for l in 0..L {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][l] = (d3 + d4) - 4.0 * (d1 + d2);
        o[2][l] = (d4 - d3) + 4.0 * (d1 - d2);
        o[3][l] = (d4 - d2) + 2.0 * (d3 - d1);
        o[4][l] = (d4 - d2) + 2.0 * (d1 - d3);
        o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// Aᵀ m for six lanes-wide values (a row or a column of a product tile).
#[inline(always)]
fn output_1d(m: &[V; 6]) -> [V; M] {
    let mut o = [[0f32; L]; M];
    for l in 0..L {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        o[0][l] = m0 + s12 + s34;
        o[1][l] = d12 + 2.0 * d34;
        o[2][l] = s12 + 4.0 * s34;
        o[3][l] = d12 + 8.0 * d34 + m5;
    }
    o
}

/// The tiling of h×w images: th×tw tiles of 4×4 outputs, read from a
/// channel-last copy hp×wp (a one-pixel zero border, and zeros past the
/// last tile).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plane {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    hp: usize,
    wp: usize,
}

impl Plane {
    fn new(h: usize, w: usize) -> Self {
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        Self { h, w, th, tw, hp: M * th + 2, wp: M * tw + 2 }
    }

    fn tiles(&self) -> usize {
        self.th * self.tw
    }
}

/// Output tiles per image of an h×w convolution.
pub(crate) fn tiles_per_image(h: usize, w: usize) -> usize {
    Plane::new(h, w).tiles()
}

/// xpad [n, hp, wp, C]'s interior from x [n, C, h, w] (the border is left
/// alone): 16 channels × 16 pixels at a time by [`transpose16`] (the 16
/// pixels in image order, across rows: 8×8 and 7×7 images have rows
/// shorter than a block), the last hw mod 16 pixels one by one.
fn pad(x: &[f32], n: usize, c: usize, p: Plane, xpad: &mut [f32]) {
    let hw = p.h * p.w;
    // where pixel q of image b starts in xpad, for every q (no division per pixel)
    let at: Vec<usize> = (0..hw).map(|q| ((q / p.w + 1) * p.wp + q % p.w + 1) * c).collect();
    let mut block = [[0f32; L]; L];
    for b in 0..n {
        let image = &x[b * c * hw..][..c * hw];
        let xpad = &mut xpad[b * p.hp * p.wp * c..][..p.hp * p.wp * c];
        for c0 in (0..c).step_by(L) {
            let planes = &image[c0 * hw..][..L * hw];
            let full = hw - hw % L;
            for q0 in (0..full).step_by(L) {
                // SAFETY: 16 channel planes from pixel q0 (hw apart), into the 16×16 block.
                unsafe { transpose16(planes[q0..].as_ptr(), hw, block.as_mut_ptr().cast(), L, false) };
                for (px, &at) in block.iter().zip(&at[q0..q0 + L]) {
                    xpad[at + c0..][..L].copy_from_slice(px);
                }
            }
            for q in full..hw {
                for l in 0..L {
                    xpad[at[q] + c0 + l] = planes[l * hw + q];
                }
            }
        }
    }
}

/// The stride between the 36 blocks [n·tiles, C] of V or M: one vector
/// more than a block, so that the 36 streams a tile reads or writes fall in
/// different cache sets (at 16×16 with 256 channels a block is 64 KiB, and
/// blocks a power of two apart would all map to one set).
fn xi_stride(nt: usize, c: usize) -> usize {
    nt * c + L
}

/// V [36, n·tiles, C] (blocks [`xi_stride`] apart) from xpad [n, hp, wp, C].
#[inline(always)]
fn input_body(xpad: &[f32], n: usize, c: usize, p: Plane, v: &mut [f32]) {
    let vs = xi_stride(n * p.tiles(), c);
    // written whole for every tile; zeroed once here, not per tile (the
    // compiler zero-fills a 2.3 KiB array with a call to memset: 4 % of a
    // CIFAR forward + VJP when it sat in the loop)
    let mut rows = [[[0f32; L]; 6]; 6];
    for b in 0..n {
        for ty in 0..p.th {
            for tx in 0..p.tw {
                let t = (b * p.th + ty) * p.tw + tx;
                for c0 in (0..c).step_by(L) {
                    for (i, row) in rows.iter_mut().enumerate() {
                        let base = ((b * p.hp + M * ty + i) * p.wp + M * tx) * c + c0;
                        let mut d = [[0f32; L]; 6];
                        for (k, d) in d.iter_mut().enumerate() {
                            d.copy_from_slice(&xpad[base + k * c..][..L]);
                        }
                        *row = input_1d(&d);
                    }
                    for j in 0..6 {
                        let col = [rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j], rows[5][j]];
                        for (a, out) in input_1d(&col).iter().enumerate() {
                            v[(a * 6 + j) * vs + t * c + c0..][..L].copy_from_slice(out);
                        }
                    }
                }
            }
        }
    }
}

/// img [h·w + 1, L] (channel-last, see [`output_transform`]) for image b
/// and channels o0..o0 + L: Aᵀ M A of each tile, from M [36, n·tiles, C]
/// (blocks [`xi_stride`] apart); the pixels of partial tiles past the image
/// go to the spare last row.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // z[i][bc] for the six i
fn output_body(m: &[f32], n: usize, c: usize, p: Plane, (b, o0): (usize, usize), img: &mut [f32]) {
    let (ms, hw) = (xi_stride(n * p.tiles(), c), p.h * p.w);
    // written whole for every tile (zeroed once, as in `input_body`)
    let mut z = [[[0f32; L]; M]; 6];
    for ty in 0..p.th {
        for tx in 0..p.tw {
            let t = (b * p.th + ty) * p.tw + tx;
            for (i, zi) in z.iter_mut().enumerate() {
                let mut r = [[0f32; L]; 6];
                for (j, r) in r.iter_mut().enumerate() {
                    r.copy_from_slice(&m[(i * 6 + j) * ms + t * c + o0..][..L]);
                }
                *zi = output_1d(&r);
            }
            for bc in 0..M {
                let col = [z[0][bc], z[1][bc], z[2][bc], z[3][bc], z[4][bc], z[5][bc]];
                let px = M * tx + bc;
                for (a, out) in output_1d(&col).iter().enumerate() {
                    let py = M * ty + a;
                    let q = if py < p.h && px < p.w { py * p.w + px } else { hw };
                    img[q * L..][..L].copy_from_slice(out);
                }
            }
        }
    }
}

/// y [n, C, h, w] += Aᵀ M A of every tile (y := with `add` false), from M
/// [36, n·tiles, C]. An image's tiles of L channels go channel-last into
/// `img` [h·w + 1, L] (whole-vector stores), then into y by [`transpose16`],
/// 16 pixels in image order at a time.
#[allow(clippy::too_many_arguments)]
fn output_transform(m: &[f32], n: usize, c: usize, p: Plane, y: &mut [f32], img: &mut [f32], add: bool) {
    let hw = p.h * p.w;
    assert!(y.len() >= n * c * hw && img.len() > hw * L);
    let full = hw - hw % L;
    for b in 0..n {
        for o0 in (0..c).step_by(L) {
            let planes = &mut y[(b * c + o0) * hw..][..L * hw];
            output_rows(m, n, c, p, (b, o0), img);
            for q0 in (0..full).step_by(L) {
                // SAFETY: 16 pixels of 16 channels, and 16 channel planes (hw apart) from pixel q0.
                unsafe { transpose16(img[q0 * L..].as_ptr(), L, planes[q0..].as_mut_ptr(), hw, add) };
            }
            for q in full..hw {
                for l in 0..L {
                    let (d, v) = (&mut planes[l * hw + q], img[q * L + l]);
                    *d = if add { *d + v } else { v };
                }
            }
        }
    }
}

simd_builds! {
    fn input_transform(xpad: &[f32], n: usize, c: usize, p: Plane, v: &mut [f32]) = input_body;
}

simd_builds! {
    fn output_rows(m: &[f32], n: usize, c: usize, p: Plane, at: (usize, usize), img: &mut [f32]) = output_body;
}

/// Transposes a 16×16 block of f32: row i of the source (16 values at
/// `src + i·ss`) becomes entry i of every destination row (16 values at
/// `dst + j·ds`), added to the destination with `add`. In registers on
/// AVX-512 (64 shuffles) and AVX2 (four 8×8 blocks of 24); the baseline
/// copies element by element. Exact: nothing is computed but the sum with
/// `add`, in the same order on every build.
///
/// # Safety
/// Both blocks must be valid for 16 rows of their strides, and not overlap.
#[inline]
unsafe fn transpose16(src: *const f32, ss: usize, dst: *mut f32, ds: usize, add: bool) {
    // SAFETY (all): the caller's blocks; each build only where the CPU has its features.
    #[cfg(target_arch = "x86_64")]
    match super::fused::simd() {
        super::fused::Simd::Avx512 => return unsafe { t16::avx512(src, ss, dst, ds, add) },
        super::fused::Simd::Avx2 => return unsafe { t16::avx2(src, ss, dst, ds, add) },
        super::fused::Simd::Base => {}
    }
    unsafe { t16::base(src, ss, dst, ds, add) }
}

mod t16 {
    /// The element-by-element transpose (any CPU).
    pub(super) unsafe fn base(src: *const f32, ss: usize, dst: *mut f32, ds: usize, add: bool) {
        for i in 0..16 {
            for j in 0..16 {
                // SAFETY: within the caller's blocks.
                unsafe {
                    let (v, d) = (*src.add(i * ss + j), dst.add(j * ds + i));
                    *d = if add { *d + v } else { v };
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(src: *const f32, ss: usize, dst: *mut f32, ds: usize, add: bool) {
        use std::arch::x86_64::*;
        // SAFETY: loads and stores within the caller's blocks.
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * ss)));
            // rows 2i, 2i + 1 interleaved: per 128-bit block k, (a_{2i,4k}, a_{2i+1,4k}, …)
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // s[4g + c], block k: column 4k + c of rows 4g..4g + 3
            let mut s = [_mm512_setzero_ps(); 16];
            for g in 0..4 {
                let pd = |v| _mm512_castps_pd(v);
                let [a0, a1, b0, b1] = [pd(t[4 * g]), pd(t[4 * g + 2]), pd(t[4 * g + 1]), pd(t[4 * g + 3])];
                s[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a1));
                s[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a1));
                s[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b0, b1));
                s[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b0, b1));
            }
            // column 4k + c: blocks k of s[c], s[4 + c], s[8 + c], s[12 + c]
            for c in 0..4 {
                let x0 = _mm512_shuffle_f32x4::<0x44>(s[c], s[4 + c]);
                let x1 = _mm512_shuffle_f32x4::<0xEE>(s[c], s[4 + c]);
                let y0 = _mm512_shuffle_f32x4::<0x44>(s[8 + c], s[12 + c]);
                let y1 = _mm512_shuffle_f32x4::<0xEE>(s[8 + c], s[12 + c]);
                let cols = [
                    _mm512_shuffle_f32x4::<0x88>(x0, y0),
                    _mm512_shuffle_f32x4::<0xDD>(x0, y0),
                    _mm512_shuffle_f32x4::<0x88>(x1, y1),
                    _mm512_shuffle_f32x4::<0xDD>(x1, y1),
                ];
                for (k, v) in cols.into_iter().enumerate() {
                    let d = dst.add((4 * k + c) * ds);
                    _mm512_storeu_ps(d, if add { _mm512_add_ps(_mm512_loadu_ps(d), v) } else { v });
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(src: *const f32, ss: usize, dst: *mut f32, ds: usize, add: bool) {
        use std::arch::x86_64::*;
        // four 8×8 blocks: (bi, bj) of the source to (bj, bi) of the destination
        for (bi, bj) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
            // SAFETY: loads and stores within the caller's blocks.
            unsafe {
                let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add((bi + i) * ss + bj)));
                let mut t = [_mm256_setzero_ps(); 8];
                for i in 0..4 {
                    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
                }
                // s[4g + c], lane k: column 4k + c of rows 4g..4g + 3
                let mut s = [_mm256_setzero_ps(); 8];
                for g in 0..2 {
                    let pd = |v| _mm256_castps_pd(v);
                    let [a0, a1, b0, b1] = [pd(t[4 * g]), pd(t[4 * g + 2]), pd(t[4 * g + 1]), pd(t[4 * g + 3])];
                    s[4 * g] = _mm256_castpd_ps(_mm256_unpacklo_pd(a0, a1));
                    s[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a0, a1));
                    s[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b0, b1));
                    s[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b0, b1));
                }
                for c in 0..4 {
                    let cols = [
                        _mm256_permute2f128_ps::<0x20>(s[c], s[4 + c]),
                        _mm256_permute2f128_ps::<0x31>(s[c], s[4 + c]),
                    ];
                    for (k, v) in cols.into_iter().enumerate() {
                        let d = dst.add((bj + 4 * k + c) * ds + bi);
                        _mm256_storeu_ps(d, if add { _mm256_add_ps(_mm256_loadu_ps(d), v) } else { v });
                    }
                }
            }
        }
    }
}

/// One thread's buffers, kept between calls (see [`with_scratch`]).
#[derive(Default)]
pub(crate) struct Scratch {
    xpad: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    img: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's [`Scratch`]: the buffers live as long as the
/// thread (candle's pool keeps its workers), so a sampling loop's calls
/// do not map and fault in fresh pages for them each time (7 % of a CIFAR
/// sampling step when they were per call).
pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// y [n, C_out, h, w] += conv(x [n, C_in, h, w]; g) for the filters g that
/// `f` holds (y := with `add` false: y may hold anything before), on this
/// thread (the caller splits the batch).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    f: &Filters,
    x: &[f32],
    n: usize,
    (h, w): (usize, usize),
    y: &mut [f32],
    add: bool,
    s: &mut Scratch,
) {
    let (cin, cout, p) = (f.cin, f.cout, Plane::new(h, w));
    assert!(applies(3, 1, cin, cout, h, w), "winograd: {cin} → {cout} channels on {h}×{w}");
    assert_eq!(x.len(), n * cin * h * w, "winograd: x");
    assert_eq!(y.len(), n * cout * h * w, "winograd: y");
    let xpad = at_least(&mut s.xpad, n * p.hp * p.wp * cin);
    // the border only: the layers before may have left anything there
    zero_border(xpad, n, cin, p);
    pad(x, n, cin, p, xpad);
    let nt = n * p.tiles();
    let (vs, ms) = (xi_stride(nt, cin), xi_stride(nt, cout));
    let (v, m) = (at_least(&mut s.v, XI * vs), at_least(&mut s.m, XI * ms));
    input_transform(xpad, n, cin, p, v);
    for xi in 0..XI {
        let (u, v) = (&f.u[xi * xi_stride(cin, cout)..][..cin * cout], &v[xi * vs..][..nt * cin]);
        products(f.product, u, v, &mut m[xi * ms..][..nt * cout], (nt, cin, cout));
    }
    output_transform(m, n, cout, p, y, at_least(&mut s.img, (p.h * p.w + 1) * L), add);
}

/// The microkernels' signature (`gemm_common::microkernel::MicroKernelFn<f32>`):
/// m, n, k, dst, lhs, rhs, dst_cs, dst_rs, lhs_cs, rhs_rs, rhs_cs, α, β,
/// α's status (0: dst := β·acc), three conjugation flags, the next lhs.
type MicroKernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

/// Tiles per microkernel call (the crate's NR on both levels).
const NR: usize = 6;

/// M_ξ [nt, C_out] = V_ξ [nt, C_in] U_ξ [C_in, C_out] for one ξ, computed as
/// M_ξᵀ = U_ξᵀ V_ξᵀ so that the product's rows (C_out) are contiguous in
/// the output and in U's panels (see [`Product`]).
fn products(product: Product, u: &[f32], v: &[f32], m: &mut [f32], (nt, cin, cout): (usize, usize, usize)) {
    match product {
        // SAFETY: m is [nt, C_out]; U_ξ [C_in, C_out] and V_ξ [nt, C_in], read transposed.
        Product::Crate => unsafe {
            gemm_serial(cout, nt, cin, m.as_mut_ptr(), (1, cout as isize), false, Mat::t(u, cout), Mat::t(v, cin))
        },
        // SAFETY (both): Product::current chose the level only where the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Product::Avx512 => unsafe {
            by_panels(&gemm_f32::microkernel::avx512f::f32::UKR, 16, u, v, m, (nt, cin, cout))
        },
        #[cfg(target_arch = "x86_64")]
        Product::Fma => unsafe { by_panels(&gemm_f32::microkernel::fma::f32::UKR, 8, u, v, m, (nt, cin, cout)) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("winograd: only the crate's GEMM off x86-64"),
    }
}

/// [`products`] on the microkernels `ukr[r − 1][c − 1]` (r vectors of
/// `lanes` rows by c columns): for each panel of U_ξ (R·lanes output
/// channels, or fewer for the last), the tiles six at a time.
///
/// # Safety
/// The CPU must have the features `ukr` was compiled for; u holds C_out/pw
/// panels as [`panel_at`] lays them out with pw = R·lanes.
#[cfg(target_arch = "x86_64")]
unsafe fn by_panels<const R: usize>(
    ukr: &[[MicroKernel; NR]; R],
    lanes: usize,
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    (nt, cin, cout): (usize, usize, usize),
) {
    let pw = R * lanes;
    assert!(u.len() == cin * cout && v.len() == nt * cin && m.len() == nt * cout, "winograd: product shapes");
    for o0 in (0..cout).step_by(pw) {
        let width = pw.min(cout - o0);
        let (rows, lhs) = (&ukr[width / lanes - 1], u[o0 * cin..][..width * cin].as_ptr());
        for t0 in (0..nt).step_by(NR) {
            let cols = NR.min(nt - t0);
            // SAFETY: dst M_ξᵀ[o0.., t0..] (row stride 1, column stride C_out), lhs the
            // panel [C_in, width], rhs V_ξᵀ[.., t0..] (row stride 1, column stride C_in):
            // width × cols × C_in within the three slices (checked above).
            unsafe {
                let (dst, rhs) = (m.as_mut_ptr().add(t0 * cout + o0), v.as_ptr().add(t0 * cin));
                let (cs, rcs) = (cout as isize, cin as isize);
                rows[cols - 1](
                    width,
                    cols,
                    cin,
                    dst,
                    lhs,
                    rhs,
                    cs,
                    1,
                    width as isize,
                    1,
                    rcs,
                    0.0,
                    1.0,
                    0,
                    false,
                    false,
                    false,
                    lhs,
                )
            };
        }
    }
}

/// buf's first `len` entries, the buffer grown (zero-filled) only where it
/// is shorter: a U-Net's layers alternate sizes, and `Vec::resize` down and
/// up again would zero-fill the regrown part on every call (3 % of a CIFAR
/// forward + VJP went to that and to re-zeroing xpad whole).
fn at_least(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Zeroes xpad [n, hp, wp, C] outside the interior [`pad`] writes: the top
/// row, the rows below the image, the left column and the columns right of it.
fn zero_border(xpad: &mut [f32], n: usize, c: usize, p: Plane) {
    let row = p.wp * c;
    for image in xpad.chunks_exact_mut(p.hp * row).take(n) {
        for (r, line) in image.chunks_exact_mut(row).enumerate() {
            if r == 0 || r > p.h {
                line.fill(0.0);
            } else {
                line[..c].fill(0.0);
                line[(p.w + 1) * c..].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoregen_core::rng::Rng;

    fn uniform(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect()
    }

    /// The direct correlation with zero padding, in f64: y[b, o] = Σ_i w[o, i] ⋆ x[b, i].
    fn direct(w: &[f32], x: &[f32], n: usize, cin: usize, cout: usize, h: usize, wd: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut y, mut mag) = (vec![0f64; n * cout * h * wd], vec![0f64; n * cout * h * wd]);
        for b in 0..n {
            for o in 0..cout {
                for py in 0..h {
                    for px in 0..wd {
                        let (mut s, mut a) = (0f64, 0f64);
                        for i in 0..cin {
                            for u in 0..3 {
                                for v in 0..3 {
                                    let (yy, xx) = (py as isize + u as isize - 1, px as isize + v as isize - 1);
                                    if yy < 0 || xx < 0 || yy >= h as isize || xx >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((b * cin + i) * h + yy as usize) * wd + xx as usize] as f64;
                                    let wv = w[((o * cin + i) * 3 + u) * 3 + v] as f64;
                                    s += xv * wv;
                                    a += (xv * wv).abs();
                                }
                            }
                        }
                        y[((b * cout + o) * h + py) * wd + px] = s;
                        mag[((b * cout + o) * h + py) * wd + px] = a;
                    }
                }
            }
        }
        (y, mag)
    }

    /// The largest error of F(4×4, 3×3) against the f64 correlation, relative
    /// to Σ|w||x| of each output (the scale of the direct product's own rounding).
    fn worst_error(n: usize, cin: usize, cout: usize, h: usize, w: usize, seed: u64) -> f64 {
        products_here().into_iter().map(|product| worst_error_of(product, n, cin, cout, h, w, seed)).fold(0.0, f64::max)
    }

    /// Every [`Product`] this CPU runs: the crate's GEMM always, the
    /// microkernels where it has their features.
    fn products_here() -> Vec<Product> {
        // each level runs the ones below it too (AVX-512 here implies AVX2 + FMA)
        let levels = match simd() {
            Simd::Base => &[Simd::Base][..],
            Simd::Avx2 => &[Simd::Base, Simd::Avx2],
            Simd::Avx512 => &[Simd::Base, Simd::Avx2, Simd::Avx512],
        };
        levels.iter().map(|&l| Product::of(l)).collect()
    }

    fn worst_error_of(product: Product, n: usize, cin: usize, cout: usize, h: usize, w: usize, seed: u64) -> f64 {
        FORCE_PRODUCT.with(|f| f.set(Some(product)));
        let mut rng = Rng::new(seed, 0);
        let (x, wt, bias) = (
            uniform(&mut rng, n * cin * h * w),
            uniform(&mut rng, cout * cin * 9),
            uniform(&mut rng, n * cout * h * w),
        );
        let mut y = bias.clone();
        conv(
            &Filters::new(&wt, cout, cin, Of { scale: 1.0, adjoint: false }),
            &x,
            n,
            (h, w),
            &mut y,
            true,
            &mut Scratch::default(),
        );
        FORCE_PRODUCT.with(|f| f.set(None));
        let (exact, mag) = direct(&wt, &x, n, cin, cout, h, w);
        let mut worst = 0f64;
        for ((&y, &b), (&e, &a)) in y.iter().zip(&bias).zip(exact.iter().zip(&mag)) {
            worst = worst.max(((y as f64 - b as f64) - e).abs() / a);
        }
        worst
    }

    #[test]
    fn matches_the_direct_convolution_on_every_image_shape() {
        // the tiles: exact fits (4×4, 8×8, 16×16), partial last tiles (5×9, 7×7, 14×14), several images
        for (n, cin, cout, h, w) in [
            (1, 16, 16, 4, 4),
            (2, 16, 32, 8, 8),
            (3, 32, 16, 7, 7),
            (1, 16, 16, 5, 9),
            (2, 16, 16, 14, 14),
            (1, 32, 32, 16, 16),
            // panels of U: 80 = 64 + 16 output channels (a narrower last panel
            // for AVX-512, five for AVX2), and 9 tiles (a last block of 3 columns)
            (1, 16, 80, 12, 12),
            (2, 48, 144, 8, 8),
        ] {
            let err = worst_error(n, cin, cout, h, w, 7 + h as u64);
            // f32 rounding (2⁻²⁴ ≈ 6e-8) amplified by the transforms' coefficients:
            // measured 1–3e-6 relative to Σ|w||x|; a wrong coefficient or tile offset is O(1)
            assert!(err < 2e-5, "{n}×{cin}→{cout} on {h}×{w}: relative error {err:e}");
        }
    }

    /// The transforms' AVX2 and AVX-512 builds give the baseline's bits (the
    /// lanes are explicit, nothing is reordered), and so does the channel
    /// transpose on each level; 7×9 images leave a partial last tile both ways
    /// and a row tail past the 16-pixel blocks at 9 < 16 (and 21 = 16 + 5 below).
    #[test]
    fn every_simd_build_gives_the_baseline_bits() {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::nets::kernels::fused::{simd, Simd};
            let (n, c, h, w) = (2, 32, 7, 9);
            let p = Plane::new(h, w);
            let x = uniform(&mut Rng::new(3, 0), n * c * h * w);
            let mut xpad = vec![0f32; n * p.hp * p.wp * c];
            pad(&x, n, c, p, &mut xpad);
            let run = |level: Simd| {
                let mut v = vec![0f32; XI * xi_stride(n * p.tiles(), c)];
                let mut rows = vec![0f32; (h * w + 1) * L];
                let mut all = Vec::new();
                // SAFETY: each build only where the CPU has its features.
                unsafe {
                    match level {
                        Simd::Avx512 => input_transform::avx512(&xpad, n, c, p, &mut v),
                        Simd::Avx2 => input_transform::avx2(&xpad, n, c, p, &mut v),
                        Simd::Base => input_body(&xpad, n, c, p, &mut v),
                    }
                    for at in (0..n).flat_map(|b| (0..c).step_by(L).map(move |o| (b, o))) {
                        match level {
                            Simd::Avx512 => output_rows::avx512(&v, n, c, p, at, &mut rows),
                            Simd::Avx2 => output_rows::avx2(&v, n, c, p, at, &mut rows),
                            Simd::Base => output_body(&v, n, c, p, at, &mut rows),
                        }
                        all.extend_from_slice(&rows);
                    }
                }
                (v, all)
            };
            let base = run(Simd::Base);
            for level in [Simd::Avx2, Simd::Avx512] {
                if simd() == Simd::Avx512 || (level == Simd::Avx2 && simd() == Simd::Avx2) {
                    assert!(run(level) == base, "{level:?}");
                }
            }
        }
    }

    /// transpose16 on every level is the transpose (and the transpose added
    /// in), bit for bit, with strides other than 16 on both sides.
    #[test]
    fn the_channel_transpose_is_exact_on_every_level() {
        let (ss, ds) = (21, 37);
        let src = uniform(&mut Rng::new(4, 0), 16 * ss);
        let before = uniform(&mut Rng::new(5, 0), 16 * ds);
        for add in [false, true] {
            let mut want = before.clone();
            for i in 0..16 {
                for j in 0..16 {
                    let d = &mut want[j * ds + i];
                    *d = if add { *d + src[i * ss + j] } else { src[i * ss + j] };
                }
            }
            type Transpose = unsafe fn(*const f32, usize, *mut f32, usize, bool);
            let levels: &[(&str, Transpose)] = &[
                ("base", t16::base),
                #[cfg(target_arch = "x86_64")]
                ("avx2", t16::avx2),
                #[cfg(target_arch = "x86_64")]
                ("avx512", t16::avx512),
            ];
            for (name, f) in levels {
                #[cfg(target_arch = "x86_64")]
                {
                    use crate::nets::kernels::fused::{simd, Simd};
                    if (*name == "avx512" && simd() != Simd::Avx512) || (*name == "avx2" && simd() == Simd::Base) {
                        continue;
                    }
                }
                let mut got = before.clone();
                // SAFETY: 16 rows of both strides; the level only where the CPU has it.
                unsafe { f(src.as_ptr(), ss, got.as_mut_ptr(), ds, add) };
                assert!(got == want, "{name}, add = {add}");
            }
        }
    }

    /// A row longer than one 16-pixel block with a tail (21 = 16 + 5) and 16
    /// channels, through pad and the output transform: conv against the f64
    /// correlation as above.
    #[test]
    fn rows_of_blocks_and_tails_match_the_direct_convolution() {
        let err = worst_error(2, 16, 16, 6, 21, 9);
        assert!(err < 2e-5, "relative error {err:e}");
    }
}
