//! Fused CPU kernels with exact backward passes, for the layers every score
//! network repeats: SiLU and the bias of an affine layer.
//!
//! candle 0.11 differentiates SiLU with nine tensor ops (each a pass over
//! memory and an allocation), and the bias of `x Wᵀ + b` by a strided sum over
//! the batch, its slowest reduction. Here each forward is one pass, SiLU's
//! backward is one pass too, and the bias gradient is the GEMM 1ᵀG. The
//! backward passes are themselves differentiable (made of these ops and
//! ordinary candle ops), so gradients of gradients, which implicit and sliced
//! score matching and energy models need, stay exact to every order.
//!
//! Written by hand because no crate provides candle custom ops; the arithmetic
//! is elementwise, the GEMMs are candle's.
//!
//! These ops have CPU kernels only. On any other device (a GPU), and on the
//! CPU with `SCOREGEN_FUSED=0` ([`scoregen_core::autodiff::cpu_ops_allowed`]), each
//! public function here computes the same function with candle's own ops,
//! which are exact to every order as well.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// The error of a first-order fused op's backward when it is differentiated
/// again: never a silently missing term. `op` names the layer.
pub(crate) fn refuse_second_order<T>(op: &str) -> Result<T> {
    candle_core::bail!(
        "second derivatives through the fused {op}: run the code that differentiates the score twice \
         inside autodiff::exact_higher_order (implicit and sliced score matching and energy models do)"
    )
}

/// e^x for f32 without a libm call, so loops over slices vectorize:
/// x = k ln 2 + r with |r| ≤ ½ ln 2 (ln 2 split in two for an exact r),
/// e^r by Cephes' `expf` polynomial (error about 1 ulp), 2^k from the exponent
/// bits. x is clamped to [−87, 88], where e^x is a normal f32; beyond, the
/// sigmoid built on it is already 0 or 1 to f32 precision.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    exp_f32_by(x, |a, b, c| a * b + c)
}

/// [`exp_f32`] with every multiply–add fused: the same reduction and
/// polynomial, each step a `mul_add` (one rounding instead of two, and half
/// the dependent operations in the chain that bounds the rate: on an AVX2
/// machine the MLP's SiLU pass went from 1.15 to 0.88 ns per entry, and the
/// SiLU pass was a third of a sampling step there).
///
/// For the bodies of [`simd_builds`] only. Their AVX2 and AVX-512 builds
/// have FMA, so each `mul_add` is one instruction and every build gives the
/// same bits. In the x86-64 baseline build a `mul_add` is a call to libm's
/// `fmaf` (also correctly rounded, so the same bits, but slow): it runs only
/// on CPUs without AVX2, and in tests. Scalar code elsewhere keeps
/// [`exp_f32`].
#[inline(always)]
pub(crate) fn exp_f32_fma(x: f32) -> f32 {
    exp_f32_by(x, f32::mul_add)
}

/// The body of [`exp_f32`] and [`exp_f32_fma`], with each a·b + c as
/// `madd(a, b, c)`.
#[inline(always)]
fn exp_f32_by(x: f32, madd: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // k = round(x/ln 2) by the 1.5·2²³ trick: the sum's low mantissa bits hold
    // k, read as an integer (no float→int conversion, so the loop vectorizes)
    const SHIFT: f32 = 12_582_912.0;
    let shifted = madd(x, std::f32::consts::LOG2_E, SHIFT);
    let k = shifted - SHIFT;
    let ki = shifted.to_bits() as i32 - SHIFT.to_bits() as i32;
    // r = x − k·ln 2, the high part first: k·0.693359375 is exact (k is an
    // integer below 2⁸, the constant has 11 bits)
    let r = madd(k, 2.121_944_4e-4, madd(k, -0.693_359_4, x));
    let p = [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5]
        .into_iter()
        .fold(1.987_569_1e-4, |p, c| madd(p, r, c));
    let er = madd(p * r, r, r) + 1.0;
    er * f32::from_bits(((ki + 127) as u32) << 23)
}

/// The widest vector unit of this CPU that the kernels are compiled for
/// (each hot loop is built three times: the x86-64 baseline, AVX2 + FMA and
/// AVX-512F), detected once at run time: the build targets plain x86-64 so
/// one binary runs on every machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Simd {
    Base,
    Avx2,
    Avx512,
}

pub(crate) fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Base
    })
}

/// `fn name(args)` running `body(args)` in the CPU's widest build
/// ([`simd`]): `body` (an `#[inline(always)]` function) compiled three times,
/// for the baseline, AVX2 + FMA and AVX-512F. The two wide builds are
/// `name::avx2` and `name::avx512` (unsafe: only where the CPU has the
/// features), so tests can hold them against the baseline.
macro_rules! simd_builds {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) = $body:ident;) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            // SAFETY (both): the CPU has the features (simd() detected them).
            #[cfg(target_arch = "x86_64")]
            match $crate::nets::kernels::fused::simd() {
                $crate::nets::kernels::fused::Simd::Avx512 => return unsafe { $name::avx512($($arg),*) },
                $crate::nets::kernels::fused::Simd::Avx2 => return unsafe { $name::avx2($($arg),*) },
                $crate::nets::kernels::fused::Simd::Base => {}
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn avx2($($arg: $ty),*) {
                super::$body($($arg),*)
            }

            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn avx512($($arg: $ty),*) {
                super::$body($($arg),*)
            }
        }
    };
}
pub(crate) use simd_builds;

/// Σ v in eight lanes, so the loop vectorizes (a plain sum is one serial
/// chain); the lanes fix the order, so every SIMD build gives the same bits.
#[inline(always)]
pub(crate) fn sum8(v: &[f32]) -> f32 {
    dot8(v, v, |x, _| x)
}

/// Σ f(a_i, b_i) in eight lanes, as [`sum8`].
#[inline(always)]
pub(crate) fn dot8(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (ca, cb) in ca.zip(cb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *l += f(x, y);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// e^x: [`exp_f32`] for f32, the correctly rounded libm exp otherwise.
trait FastExp: num_traits::Float {
    fn fast_exp(self) -> Self;
}

impl FastExp for f32 {
    fn fast_exp(self) -> f32 {
        exp_f32(self)
    }
}

impl FastExp for f64 {
    fn fast_exp(self) -> f64 {
        self.exp()
    }
}

/// σ(x) = 1/(1 + e^{−x}).
#[inline(always)]
fn sigmoid<T: FastExp>(x: T) -> T {
    T::one() / (T::one() + (-x).fast_exp())
}

/// The contiguous slice of a storage (every fused op's wrapper makes its
/// inputs contiguous).
pub(crate) fn slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused op: input is not contiguous"),
    }
}

/// Applies `f` elementwise to one or two same-shaped inputs, in f32 or f64.
fn map<F32, F64>(
    s1: &CpuStorage,
    l1: &Layout,
    s2: Option<(&CpuStorage, &Layout)>,
    f32: F32,
    f64: F64,
) -> Result<CpuStorage>
where
    F32: Fn(f32, f32) -> f32,
    F64: Fn(f64, f64) -> f64,
{
    fn go<T: candle_core::WithDType>(
        s1: &CpuStorage,
        l1: &Layout,
        s2: Option<(&CpuStorage, &Layout)>,
        f: impl Fn(T, T) -> T,
    ) -> Result<Vec<T>> {
        let a = slice::<T>(s1, l1)?;
        Ok(match s2 {
            None => a.iter().map(|&x| f(x, x)).collect(),
            Some((s2, l2)) => {
                let b = slice::<T>(s2, l2)?;
                a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
            }
        })
    }
    Ok(match s1.dtype() {
        DType::F32 => {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                return Ok(CpuStorage::F32(unsafe { go_avx2(s1, l1, s2, f32)? }));
            }
            CpuStorage::F32(go(s1, l1, s2, f32)?)
        }
        DType::F64 => CpuStorage::F64(go(s1, l1, s2, f64)?),
        dt => candle_core::bail!("fused op: unsupported dtype {dt:?}"),
    })
}

/// The same loop compiled for AVX2 + FMA (8 lanes instead of the baseline's
/// 4), chosen at run time: the build targets plain x86-64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn go_avx2(
    s1: &CpuStorage,
    l1: &Layout,
    s2: Option<(&CpuStorage, &Layout)>,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Vec<f32>> {
    // plain loops, not `map(..).collect()`: collect's loop is generic code
    // compiled without AVX2, and the closure it calls stays scalar
    let a = slice::<f32>(s1, l1)?;
    let mut out = vec![0f32; a.len()];
    match s2 {
        None => {
            for (o, &x) in out.iter_mut().zip(a) {
                *o = f(x, x);
            }
        }
        Some((s2, l2)) => {
            let b = slice::<f32>(s2, l2)?;
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        }
    }
    Ok(out)
}

/// silu(x) = x·σ(x), forward in one pass.
struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "fused-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((map(s, l, None, |x, _| x * sigmoid(x), |x, _| x * sigmoid(x))?, l.shape().clone()))
    }

    /// ∂L/∂x = g·silu′(x), itself a differentiable op.
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(silu_grad(x, g)?))
    }
}

/// g·silu′(x) with silu′(x) = σ(x)(1 + x(1 − σ(x))), in one pass.
struct SiluGrad;

impl CustomOp2 for SiluGrad {
    fn name(&self) -> &'static str {
        "fused-silu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        fn d<T: FastExp>(x: T, g: T) -> T {
            let s = sigmoid(x);
            g * s * (T::one() + x * (T::one() - s))
        }
        Ok((map(s1, l1, Some((s2, l2)), d::<f32>, d::<f64>)?, l1.shape().clone()))
    }

    /// ∂/∂g = silu′(x)·G (this op again); ∂/∂x = G·g·silu″(x) with
    /// silu″(x) = σ(x)(1 − σ(x))(2 + x(1 − 2σ(x))), written in candle ops.
    fn bwd(&self, x: &Tensor, g: &Tensor, _res: &Tensor, big_g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = (x.neg()?.exp()? + 1.0)?.recip()?;
        let one_minus_s = s.affine(-1.0, 1.0)?;
        let second = ((&s * &one_minus_s)? * ((x * s.affine(-2.0, 1.0)?)? + 2.0)?)?;
        let dx = ((big_g * g)? * second)?;
        Ok((Some(dx), Some(silu_grad(x, big_g)?)))
    }
}

/// y + b with b broadcast over the rows of y [N, C] (b has C elements).
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        fn go<T: candle_core::WithDType>(y: &[T], b: &[T]) -> Vec<T> {
            let mut out = Vec::with_capacity(y.len());
            for row in y.chunks_exact(b.len()) {
                out.extend(row.iter().zip(b).map(|(&a, &c)| a + c));
            }
            out
        }
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(go(slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?)),
            DType::F64 => CpuStorage::F64(go(slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?)),
            dt => candle_core::bail!("fused op: unsupported dtype {dt:?}"),
        };
        Ok((storage, l1.shape().clone()))
    }

    /// ∂/∂y = G; ∂/∂b = 1ᵀG, a [1, N]×[N, C] GEMM (differentiable).
    fn bwd(&self, y: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ones = Tensor::ones((1, y.dim(0)?), g.dtype(), g.device())?;
        Ok((Some(g.clone()), Some(ones.matmul(&g.contiguous()?)?.reshape(b.shape())?)))
    }
}

/// The geometry of a k×k "same" convolution with stride 1 or 2 on a batch of
/// N images C×H×W: padding p = k/2, outputs H/s × W/s, output (oy, ox)
/// centred on input (s·oy, s·ox).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patches {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    /// Columns of the patch matrix as stored (≥ N·Ho·Wo; the extra ones are left alone).
    ld: usize,
}

impl Patches {
    /// The geometry of a k×k, stride-s convolution on N images C×H×W.
    pub(crate) fn new(n: usize, (c, h, w): (usize, usize, usize), k: usize, stride: usize) -> Self {
        Self { n, c, h, w, k, stride, ld: n * (h / stride) * (w / stride) }
    }

    /// The same geometry with the patch matrix stored `ld` columns wide (ld ≥ N·Ho·Wo).
    pub(crate) fn with_ld(self, ld: usize) -> Self {
        Self { ld: ld.max(self.ld), ..self }
    }

    pub(crate) fn out_hw(&self) -> (usize, usize) {
        (self.h / self.stride, self.w / self.stride)
    }

    /// Rows of the patch matrix (C·k² plus the bias row) and its stored
    /// columns (N·Ho·Wo unless [`Patches::with_ld`] widened it).
    pub(crate) fn cols_shape(&self) -> (usize, usize) {
        (self.c * self.k * self.k + 1, self.ld)
    }

    /// Calls `f(col, img, len)` for every run of patch entries inside the
    /// image: patch-matrix entries col..col+len (row c·k² + dy·k + dx, column
    /// b·Ho·Wo + oy·Wo + ox) come from image entries img, img + s, …, img + s·(len−1)
    /// (index ((b·C + c)·H + iy)·W + ix with iy = s·oy + dy − p, ix = s·ox + dx − p).
    #[inline(always)]
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (ho, wo) = self.out_hw();
        let (p, s) = (self.k / 2, self.stride);
        let cols = self.ld;
        for c in 0..self.c {
            for dy in 0..self.k {
                for dx in 0..self.k {
                    let row = ((c * self.k + dy) * self.k + dx) * cols;
                    // ox with 0 ≤ s·ox + dx − p < W
                    let lo = p.saturating_sub(dx).div_ceil(s);
                    let hi = ((self.w + p).saturating_sub(dx)).div_ceil(s).min(wo);
                    if lo >= hi {
                        continue;
                    }
                    for b in 0..self.n {
                        for oy in 0..ho {
                            let iy = (s * oy + dy) as isize - p as isize;
                            if iy < 0 || iy >= self.h as isize {
                                continue;
                            }
                            let img = ((b * self.c + c) * self.h + iy as usize) * self.w + s * lo + dx - p;
                            f(row + b * ho * wo + oy * wo + lo, img, hi - lo);
                        }
                    }
                }
            }
        }
    }
}

/// im2col: x [N, C, H, W] → patches [C·k² + 1, N·Ho·Wo] (zeros outside the
/// image), the last row all ones (so the bias joins the GEMM) or all zeros.
struct Im2col {
    g: Patches,
    ones: bool,
}

/// col2im, the adjoint of im2col: patches [C·k² + 1, N·Ho·Wo] → x [N, C, H, W],
/// summing every patch entry back onto the pixel it came from (the last row
/// is constant in im2col, so it is dropped).
struct Col2im(Patches);

/// Writes the in-image entries of the patch matrix of x into `out` (rows
/// 0..C·k²); entries that fall in the zero padding are left untouched, so a
/// buffer zeroed once serves every image of the same geometry.
pub(crate) fn im2col_into<T: candle_core::WithDType>(x: &[T], g: &Patches, out: &mut [T]) {
    if g.stride == 1 {
        return im2col_stride1(x, g, out);
    }
    let s = g.stride;
    g.for_each_run(|col, img, len| {
        let dst = &mut out[col..col + len];
        if s == 1 {
            dst.copy_from_slice(&x[img..img + len]);
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = x[img + s * j];
            }
        }
    });
}

/// [`im2col_into`] for stride 1: patch row (c, dy, dx) of an image is its
/// channel c shifted by (dy − p, dx − p), so the in-image part is one block
/// copy (rows of the image and of the patch row have the same stride W);
/// the entries the copy wraps around into, left and right of the image, are
/// padding and set back to zero. One copy per row instead of one per image row.
fn im2col_stride1<T: candle_core::WithDType>(x: &[T], g: &Patches, out: &mut [T]) {
    if g.k == 3 {
        match g.w {
            4 => return im2col3_narrow::<T, 4>(x, g, out),
            8 => return im2col3_narrow::<T, 8>(x, g, out),
            14 => return im2col3_narrow::<T, 14>(x, g, out),
            16 => return im2col3_narrow::<T, 16>(x, g, out),
            _ => {}
        }
    }
    let (h, w, k, p) = (g.h, g.w, g.k, g.k / 2);
    let (hw, cols) = (h * w, g.ld);
    for b in 0..g.n {
        for c in 0..g.c {
            let src = &x[(b * g.c + c) * hw..][..hw];
            for dy in 0..k {
                // output rows oy with 0 ≤ oy + dy − p < H, columns ox with 0 ≤ ox + dx − p < W
                let (oy0, oy1) = (p.saturating_sub(dy), (h + p).saturating_sub(dy).min(h));
                for dx in 0..k {
                    let (lo, hi) = (p.saturating_sub(dx), (w + p).saturating_sub(dx).min(w));
                    if oy0 >= oy1 || lo >= hi {
                        continue;
                    }
                    let row = ((c * k + dy) * k + dx) * cols + b * hw;
                    let dst = &mut out[row..row + hw];
                    let (start, end) = (oy0 * w + lo, (oy1 - 1) * w + hi);
                    // image index of patch index i: i + (dy − p)·W + dx − p
                    let from = start + dy * w + dx - p * w - p;
                    dst[start..end].copy_from_slice(&src[from..from + end - start]);
                    // the copy wraps from the end of one image row into the next:
                    // columns 0..lo of rows after the first, hi..W of rows before the last
                    for oy in oy0 + 1..oy1 {
                        zero(&mut dst[oy * w..oy * w + lo]);
                    }
                    for oy in oy0..oy1 - 1 {
                        zero(&mut dst[oy * w + hi..(oy + 1) * w]);
                    }
                }
            }
        }
    }
}

/// [`im2col_stride1`] for 3×3 on images W pixels wide (W ≤ 16): one
/// fixed-size copy per image row, which the compiler turns into a few vector
/// moves. At 8×8 the block copy above is a `memmove` call of ~50 entries per
/// patch row plus a scalar zero per wrapped row, and was a fifth of a training
/// step. The patch entries left of ox = 0 (dx = 0), right of ox = W − 1
/// (dx = 2) and in rows outside the image are padding, never written.
/// Compiled for AVX2 too (chosen at run time): a row of 8 is then one 256-bit
/// move instead of two 128-bit ones.
fn im2col3_narrow<T: candle_core::WithDType, const W: usize>(x: &[T], g: &Patches, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { im2col3_narrow_avx2::<T, W>(x, g, out) };
    }
    im2col3_narrow_body::<T, W>(x, g, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn im2col3_narrow_avx2<T: candle_core::WithDType, const W: usize>(x: &[T], g: &Patches, out: &mut [T]) {
    im2col3_narrow_body::<T, W>(x, g, out)
}

#[inline(always)]
fn im2col3_narrow_body<T: candle_core::WithDType, const W: usize>(x: &[T], g: &Patches, out: &mut [T]) {
    let (h, cols) = (g.h, g.ld);
    let hw = h * W;
    for b in 0..g.n {
        for c in 0..g.c {
            let src = &x[(b * g.c + c) * hw..][..hw];
            for dy in 0..3 {
                // output rows oy with 0 ≤ oy + dy − 1 < H
                let (oy0, oy1) = (1usize.saturating_sub(dy), (h + 1 - dy).min(h));
                for dx in 0..3 {
                    let row = &mut out[((c * 3 + dy) * 3 + dx) * cols + b * hw..][..hw];
                    for oy in oy0..oy1 {
                        let s: &[T; W] = src[(oy + dy - 1) * W..][..W].try_into().expect("one image row");
                        let d: &mut [T; W] = (&mut row[oy * W..][..W]).try_into().expect("one patch row");
                        match dx {
                            0 => d[1..].copy_from_slice(&s[..W - 1]),
                            1 => *d = *s,
                            _ => d[..W - 1].copy_from_slice(&s[1..]),
                        }
                    }
                }
            }
        }
    }
}

/// Zeroes a short run inline (a `fill` is a memset call, too dear for one entry).
#[inline(always)]
fn zero<T: candle_core::WithDType>(run: &mut [T]) {
    match run {
        [] => {}
        [a] => *a = T::zero(),
        _ => run.fill(T::zero()),
    }
}

/// x += col2im(p): every patch entry (rows 0..C·k²) added back onto its pixel.
pub(crate) fn col2im_add<T: candle_core::WithDType>(p: &[T], g: &Patches, x: &mut [T]) {
    let s = g.stride;
    g.for_each_run(|col, img, len| {
        let src = &p[col..col + len];
        if s == 1 {
            for (d, &v) in x[img..img + len].iter_mut().zip(src) {
                *d += v;
            }
        } else {
            for (j, &v) in src.iter().enumerate() {
                x[img + s * j] += v;
            }
        }
    });
}

fn im2col_values<T: candle_core::WithDType>(x: &[T], g: &Patches, ones: bool) -> Vec<T> {
    let (rows, cols) = g.cols_shape();
    let mut out = vec![T::zero(); rows * cols];
    im2col_into(x, g, &mut out);
    if ones {
        out[(rows - 1) * cols..].fill(T::one());
    }
    out
}

fn col2im_values<T: candle_core::WithDType>(p: &[T], g: &Patches) -> Vec<T> {
    let mut x = vec![T::zero(); g.n * g.c * g.h * g.w];
    col2im_add(p, g, &mut x);
    x
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "fused-im2col"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let storage = match st.dtype() {
            DType::F32 => CpuStorage::F32(im2col_values(slice::<f32>(st, l)?, &self.g, self.ones)),
            DType::F64 => CpuStorage::F64(im2col_values(slice::<f64>(st, l)?, &self.g, self.ones)),
            dt => candle_core::bail!("im2col: unsupported dtype {dt:?}"),
        };
        Ok((storage, self.g.cols_shape().into()))
    }

    /// The linear part of im2col has col2im as its transpose.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Col2im(self.g))?))
    }
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "fused-col2im"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let storage = match st.dtype() {
            DType::F32 => CpuStorage::F32(col2im_values(slice::<f32>(st, l)?, g)),
            DType::F64 => CpuStorage::F64(col2im_values(slice::<f64>(st, l)?, g)),
            dt => candle_core::bail!("col2im: unsupported dtype {dt:?}"),
        };
        Ok((storage, (g.n, g.c, g.h, g.w).into()))
    }

    /// The transpose of col2im is im2col with a zero last row.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Im2col { g: self.0, ones: false })?))
    }
}

/// The patch matrix of a k×k "same" convolution with stride 1 or 2 (H, W
/// divisible by the stride): x [N, C, H, W] → [C·k² + 1, N·(H/s)·(W/s)], row
/// c·k² + dy·k + dx, column b·(H/s)·(W/s) + oy·(W/s) + ox holding
/// x[b, c, s·oy + dy − k/2, s·ox + dx − k/2] (0 outside the image), and a last
/// row of ones, so that [W | bias] · patches is the whole convolution in one
/// GEMM. One pass forward and backward (col2im), exact to every order.
pub fn im2col(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if k.is_multiple_of(2) || !(stride == 1 || stride == 2) || !h.is_multiple_of(stride) || !w.is_multiple_of(stride) {
        candle_core::bail!("im2col: needs odd k, stride 1 or 2 dividing H×W, got k={k} stride={stride} on {h}×{w}");
    }
    if !scoregen_core::autodiff::cpu_ops_allowed(x.device()) {
        return im2col_candle(x, k, stride);
    }
    super::tape::apply1(&x.contiguous()?, Im2col { g: Patches::new(n, (c, h, w), k, stride), ones: true })
}

/// [`im2col`] in candle's ops (padding, strided slices, a permutation), for
/// devices without the CPU kernel: the same matrix, differentiable to every order.
pub(crate) fn im2col_candle(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (p, ho, wo) = (k / 2, h / stride, w / stride);
    let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut taps = Vec::with_capacity(k * k);
    for dy in 0..k {
        for dx in 0..k {
            // x[b, c, s·oy + dy − p, s·ox + dx − p] for oy < Ho, ox < Wo
            let win = padded.narrow(2, dy, stride * ho)?.narrow(3, dx, stride * wo)?;
            let win = if stride == 1 {
                win
            } else {
                win.reshape((n, c, ho, stride, wo, stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((n, c, ho, wo))?
            };
            taps.push(win);
        }
    }
    // [N, C, k², Ho, Wo] → [C, k², N, Ho, Wo] → [C·k², N·Ho·Wo], then the row of ones
    let cols = Tensor::stack(&taps, 2)?.permute((1, 2, 0, 3, 4))?.contiguous()?.reshape((c * k * k, n * ho * wo))?;
    let ones = Tensor::ones((1, n * ho * wo), x.dtype(), x.device())?;
    Tensor::cat(&[&cols, &ones], 0)
}

/// Nearest-neighbour ×2 upsampling of [N, C, H, W] → [N, C, 2H, 2W]: every
/// pixel repeated on a 2×2 block.
struct Upsample2;

/// The adjoint of [`Upsample2`]: [N, C, 2H, 2W] → [N, C, H, W], each output
/// the sum of its 2×2 block.
struct SumPool2;

/// Image rows [N·C·H, w] → [N·C·2H, 2w], each row's pixels doubled and the
/// row written twice; the rows split across candle's threads (a 28×28
/// U-Net's upsampling writes 13 MB at 128 images, which one thread did
/// while the other waited).
fn upsample2_values<T: candle_core::WithDType>(x: &[T], w: usize) -> Vec<T> {
    par_blocks(x.len() / w, 4 * w, |r, out| {
        // output rows 2r and 2r + 1 from input row r
        let (a, b) = out.split_at_mut(2 * w);
        for (pair, &v) in a.chunks_exact_mut(2).zip(&x[r * w..][..w]) {
            pair.fill(v);
        }
        b.copy_from_slice(a);
    })
}

/// The 2×2 block sums of rows [N·C·2H, 2w] → [N·C·H, w] (w the output
/// width), the output rows split across candle's threads as in [`upsample2_values`].
fn sum_pool2_values<T: candle_core::WithDType>(g: &[T], w: usize) -> Vec<T> {
    par_blocks(g.len() / (4 * w), w, |r, out| {
        let (a, b) = g[4 * w * r..][..4 * w].split_at(2 * w);
        for (j, o) in out.iter_mut().enumerate() {
            *o = a[2 * j] + a[2 * j + 1] + b[2 * j] + b[2 * j + 1];
        }
    })
}

impl CustomOp1 for Upsample2 {
    fn name(&self) -> &'static str {
        "fused-upsample2"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let storage = match st.dtype() {
            DType::F32 => CpuStorage::F32(upsample2_values(slice::<f32>(st, l)?, w)),
            DType::F64 => CpuStorage::F64(upsample2_values(slice::<f64>(st, l)?, w)),
            dt => candle_core::bail!("upsample2: unsupported dtype {dt:?}"),
        };
        Ok((storage, (n, c, 2 * h, 2 * w).into()))
    }

    /// The transpose of upsampling is the 2×2 block sum.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(SumPool2)?))
    }
}

impl CustomOp1 for SumPool2 {
    fn name(&self) -> &'static str {
        "fused-sum-pool2"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let storage = match st.dtype() {
            DType::F32 => CpuStorage::F32(sum_pool2_values(slice::<f32>(st, l)?, w / 2)),
            DType::F64 => CpuStorage::F64(sum_pool2_values(slice::<f64>(st, l)?, w / 2)),
            dt => candle_core::bail!("sum_pool2: unsupported dtype {dt:?}"),
        };
        Ok((storage, (n, c, h / 2, w / 2).into()))
    }

    /// The transpose of the block sum is upsampling.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Upsample2)?))
    }
}

/// Nearest-neighbour ×2 upsampling of images [N, C, H, W], one pass each way
/// (candle differentiates `upsample_nearest2d` with a grouped convolution,
/// one small convolution per channel); linear, so exact to every order.
pub fn upsample2(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    if !scoregen_core::autodiff::cpu_ops_allowed(x.device()) {
        return upsample2_candle(x);
    }
    super::tape::apply1(&x.contiguous()?, Upsample2)
}

/// [`upsample2`] in candle's ops: each pixel broadcast over a 2×2 block (a
/// broadcast and a reshape), exact to every order.
fn upsample2_candle(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let blocks = x.reshape((n, c, h, 1, w, 1))?.broadcast_as((n, c, h, 2, w, 2))?;
    blocks.contiguous()?.reshape((n, c, 2 * h, 2 * w))
}

/// y[n, c, i, j] = x[n, c, i + top, j + left] for i < h, j < w, zero where
/// that is outside x: a crop (offsets ≥ 0) or a zero padding (offsets < 0)
/// of images [N, C, H, W], or both. Its adjoint is the window the other way,
/// [`Window`] { −top, −left, H, W } (a crop's adjoint pads, a padding's
/// crops), so it is linear and exact to every order.
#[derive(Clone, Copy, Debug)]
struct Window {
    top: isize,
    left: isize,
    h: usize,
    w: usize,
}

/// One plane per block, split across candle's threads ([`par_blocks`]).
fn window_values<T: candle_core::WithDType>(x: &[T], (h, w): (usize, usize), win: Window) -> Vec<T> {
    let (top, left) = (win.top, win.left);
    // output columns j whose source j + left lies in 0..w
    let j0 = (-left).clamp(0, win.w as isize) as usize;
    let j1 = (w as isize - left).clamp(j0 as isize, win.w as isize) as usize;
    par_blocks(x.len() / (h * w), win.h * win.w, |p, out| {
        let plane = &x[p * h * w..][..h * w];
        for (i, row) in out.chunks_exact_mut(win.w).enumerate() {
            let src = i as isize + top;
            if src < 0 || src >= h as isize {
                row.fill(T::zero());
                continue;
            }
            let from = &plane[src as usize * w..][..w];
            row[..j0].fill(T::zero());
            row[j1..].fill(T::zero());
            if j1 > j0 {
                let s0 = (j0 as isize + left) as usize;
                row[j0..j1].copy_from_slice(&from[s0..s0 + (j1 - j0)]);
            }
        }
    })
}

impl CustomOp1 for Window {
    fn name(&self) -> &'static str {
        "fused-window"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let storage = match st.dtype() {
            DType::F32 => CpuStorage::F32(window_values(slice::<f32>(st, l)?, (h, w), *self)),
            DType::F64 => CpuStorage::F64(window_values(slice::<f64>(st, l)?, (h, w), *self)),
            dt => candle_core::bail!("window: unsupported dtype {dt:?}"),
        };
        Ok((storage, (n, c, self.h, self.w).into()))
    }

    /// The adjoint: the window back onto x's grid.
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        Ok(Some(window(g, -self.top, -self.left, h, w)?))
    }
}

/// [`Window`]: the h × w window of images x [N, C, H, W] at offset (top,
/// left), zero outside x. `window(x, −1, −1, H + 2, W + 2)` pads one zero on
/// every side, `window(x, 1, 1, H − 2, W − 2)` crops one. One pass each way
/// (candle's `pad_with_zeros` is two concatenations, and a narrowed view is
/// copied by the next op).
pub fn window(x: &Tensor, top: isize, left: isize, h: usize, w: usize) -> Result<Tensor> {
    x.dims4()?;
    if !scoregen_core::autodiff::cpu_ops_allowed(x.device()) {
        return window_candle(x, top, left, h, w);
    }
    super::tape::apply1(&x.contiguous()?, Window { top, left, h, w })
}

/// [`window`] in candle's ops: zero padding where the window leaves x, then a
/// narrow; exact to every order.
fn window_candle(x: &Tensor, top: isize, left: isize, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    let mut t = x.clone();
    for (dim, off, len, size) in [(2, top, h, xh), (3, left, w, xw)] {
        let before = (-off).max(0) as usize;
        let after = (off + len as isize - size as isize).max(0) as usize;
        t = t.pad_with_zeros(dim, before, after)?.narrow(dim, (off + before as isize) as usize, len)?;
    }
    Ok(t)
}

/// [a, b] along the channels: [N, C_a, …] and [N, C_b, …] → [N, C_a + C_b, …],
/// candle's `cat` on dim 1 with the copy split across candle's threads, one
/// image at a time (at 28×28 with 128 images the U-Net's skip concatenation
/// copies 19 MB, which one thread did while the other waited). Its backward
/// is two narrowed views of the gradient, as candle's own, so it is exact to
/// every order.
struct CatChannels;

impl CustomOp2 for CatChannels {
    fn name(&self) -> &'static str {
        "fused-cat-channels"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l1.dims()[0];
        let mut dims = l1.dims().to_vec();
        dims[1] += l2.dims()[1];
        let storage = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(cat_images(slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, n))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(cat_images(slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?, n))
            }
            _ => candle_core::bail!(
                "cat_channels: two f32 or two f64 tensors, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((storage, Shape::from(dims)))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ca, cb) = (a.dim(1)?, b.dim(1)?);
        Ok((Some(g.narrow(1, 0, ca)?), Some(g.narrow(1, ca, cb)?)))
    }
}

/// Image i of the result: image i of a, then image i of b (n images each).
fn cat_images<T: candle_core::WithDType>(a: &[T], b: &[T], n: usize) -> Vec<T> {
    let (la, lb) = (a.len() / n, b.len() / n);
    par_blocks(n, la + lb, |i, out| {
        let (oa, ob) = out.split_at_mut(la);
        oa.copy_from_slice(&a[i * la..][..la]);
        ob.copy_from_slice(&b[i * lb..][..lb]);
    })
}

/// [a, b] along dim 1 (the channels) of two tensors that agree in every
/// other dimension: [`CatChannels`] on the CPU, candle's `cat` elsewhere.
pub fn cat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let same = a.rank() >= 2 && a.rank() == b.rank() && a.dims()[0] == b.dims()[0] && a.dims()[2..] == b.dims()[2..];
    if !same || a.dtype() != b.dtype() || !scoregen_core::autodiff::cpu_ops_allowed(a.device()) {
        return Tensor::cat(&[a, b], 1);
    }
    super::tape::apply2(&a.contiguous()?, &b.contiguous()?, CatChannels)
}

/// Runs `f` on chunks of the range 0..n (a few per thread) on candle's own
/// CPU thread pool, the one its tensor ops use: a second pool (rayon's)
/// would spin against it for the same cores between ops.
pub(crate) fn par_ranges(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if candle_core::utils::get_num_threads() <= 1 || n <= 1 {
        return f(0..n);
    }
    candle_core::utils::barrier_pool().execute_chunked(n, f)
}

/// A vector of n blocks of `len` entries, block i written whole by
/// `f(i, block)`, the blocks split across candle's threads ([`par_ranges`]);
/// nothing is zeroed first, since every entry is written.
pub(crate) fn par_blocks<T: Copy>(n: usize, len: usize, f: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(n * len);
    let dst = SharedMut::from_ptr(out.as_mut_ptr());
    par_ranges(n, |blocks| {
        for i in blocks {
            // SAFETY: block i (len entries from i·len), written by this task only.
            f(i, unsafe { dst.slice(i * len, len) });
        }
    });
    // SAFETY: the tasks covered all n blocks, and `f` writes each whole.
    unsafe { out.set_len(n * len) };
    out
}

/// [`par_ranges`] for tasks that each return a partial sum of `len` values,
/// added up in the order of their ranges, never in the order the threads
/// finish them: a range done before those ahead of it is parked until they
/// have been added. The ranges depend on n and the thread count only, so the
/// total's bits do too (DESIGN.md: parallel sums in a fixed order).
pub(crate) fn par_ranges_sum(n: usize, len: usize, f: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync) -> Vec<f32> {
    struct Sums {
        /// where the next range to add starts
        next: usize,
        total: Vec<f32>,
        /// finished ranges not yet added: start → (end, partial)
        parked: std::collections::BTreeMap<usize, (usize, Vec<f32>)>,
    }
    // the first range's partial becomes the total (no zeroed buffer to add it to)
    let sums = std::sync::Mutex::new(Sums { next: 0, total: Vec::new(), parked: Default::default() });
    par_ranges(n, |range| {
        let partial = f(range.clone());
        let mut guard = sums.lock().expect("par_ranges_sum: lock");
        let s = &mut *guard;
        if range.start != s.next {
            s.parked.insert(range.start, (range.end, partial));
            return;
        }
        let mut ready = Some((range.end, partial));
        while let Some((end, partial)) = ready {
            debug_assert_eq!(partial.len(), len, "par_ranges_sum: a partial's length");
            if s.total.is_empty() {
                s.total = partial;
            } else {
                for (t, v) in s.total.iter_mut().zip(&partial) {
                    *t += v;
                }
            }
            s.next = end;
            ready = s.parked.remove(&end);
        }
    });
    let sums = sums.into_inner().expect("par_ranges_sum: lock");
    debug_assert!(sums.parked.is_empty() && sums.next == n, "par_ranges_sum: ranges left out");
    let mut total = sums.total;
    total.resize(len, 0.0); // n = 0: no range ran
    total
}

/// Runs `body` in a child process of this test binary on `threads` threads:
/// the test `name` of module `module` (its `module_path!()`) runs again
/// there, alone, with `RAYON_NUM_THREADS` set. candle sizes its thread pool
/// once per process, from that variable (else the cores), and another test
/// may have started it already; a child also runs the kernels' threaded
/// paths on a one-core machine.
#[cfg(test)]
pub(crate) fn on_threads(threads: usize, module: &str, name: &str, body: impl FnOnce()) {
    const CHILD: &str = "SCOREGEN_TEST_CHILD";
    let test = format!("{}::{name}", module.split_once("::").map_or(module, |(_, rest)| rest));
    if std::env::var(CHILD).as_deref() == Ok(test.as_str()) {
        assert_eq!(candle_core::utils::get_num_threads(), threads);
        assert_eq!(candle_core::utils::barrier_pool().n_workers() + 1, threads, "candle's pool");
        return body();
    }
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &test)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env_remove("CANDLE_NUM_THREADS")
        .output()
        .expect("running the test binary again");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{test} on {threads} threads:\n{text}");
}

/// A pointer to an output buffer shared by the threads of [`par_ranges`],
/// each writing its own disjoint part (f32 activations and gradients; the
/// optimizer's f32 and f64 values; one result slot per task).
pub(crate) struct SharedMut<T = f32>(*mut T);
// derived Clone/Copy would ask T: Copy; the pointer is Copy whatever T is
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: the threads write disjoint parts and finish before the buffer is read or freed.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(v: &mut [T]) -> Self {
        Self(v.as_mut_ptr())
    }

    /// A buffer given by its start, possibly not yet initialised (a `Vec`'s
    /// spare capacity, written whole before it is read).
    pub(crate) fn from_ptr(p: *mut T) -> Self {
        Self(p)
    }

    /// The start (a method, so closures capture the whole `SharedMut`).
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }

    /// Entries from..from + len.
    ///
    /// # Safety
    /// The range lies inside the buffer, no other thread touches it meanwhile,
    /// and the buffer outlives the slice.
    #[allow(clippy::mut_from_ref)] // disjoint parts of one buffer, one per thread
    pub(crate) unsafe fn slice(&self, from: usize, len: usize) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(from), len) }
    }
}

/// silu(x) = x·σ(x), fused (see the module docs).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !scoregen_core::autodiff::cpu_ops_allowed(x.device()) {
        return x.silu();
    }
    super::tape::apply1(&x.contiguous()?, Silu)
}

/// g·silu′(x), fused: the backward of [`silu`].
pub fn silu_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    if !scoregen_core::autodiff::cpu_ops_allowed(x.device()) {
        return silu_grad_candle(x, g);
    }
    super::tape::apply2(&x.contiguous()?, &g.contiguous()?, SiluGrad)
}

/// [`silu_grad`] in candle's ops: g·σ(x)(1 + x(1 − σ(x))).
fn silu_grad_candle(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let s = (x.neg()?.exp()? + 1.0)?.recip()?;
    g * (&s * ((x * s.affine(-1.0, 1.0)?)? + 1.0)?)?
}

/// y + b for y [N, C] and a bias b [C], with the bias gradient as a GEMM.
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if y.rank() != 2 || b.elem_count() != y.dim(1)? {
        candle_core::bail!("add_bias: expected y [N, C] and b [C], got {:?} and {:?}", y.shape(), b.shape());
    }
    if !scoregen_core::autodiff::cpu_ops_allowed(y.device()) {
        return add_bias_candle(y, b);
    }
    super::tape::apply2(&y.contiguous()?, &b.contiguous()?, AddBias)
}

/// [`add_bias`] in candle's ops: a broadcast add.
fn add_bias_candle(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    y.broadcast_add(&b.reshape((1, y.dim(1)?))?)
}

/// x Wᵀ + b for x [N, in] and a candle-nn `Linear` (weight [out, in]).
pub fn linear(x: &Tensor, layer: &candle_nn::Linear) -> Result<Tensor> {
    let y = x.matmul(&layer.weight().t()?)?;
    match layer.bias() {
        Some(b) => add_bias(&y, b),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use scoregen_core::autodiff;

    fn close(a: &Tensor, b: &Tensor, tol: f64) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < tol, "max |a − b| = {d}");
    }

    fn input() -> Var {
        let v: Vec<f64> = (0..24).map(|i| (i as f64 - 11.5) * 0.37).collect();
        Var::from_tensor(&Tensor::from_vec(v, (4, 6), &Device::Cpu).unwrap()).unwrap()
    }

    /// Forward and first derivative equal candle's own SiLU (f64, so only
    /// rounding differs: 1e-12 is ~10⁴ ulps at these magnitudes).
    #[test]
    fn silu_matches_candle_and_its_gradient() {
        let x = input();
        close(&silu(x.as_tensor()).unwrap(), &x.as_tensor().silu().unwrap(), 1e-12);
        let w =
            Tensor::from_vec((0..24).map(|i| (i % 5) as f64 - 2.0).collect::<Vec<_>>(), (4, 6), &Device::Cpu).unwrap();
        let ours = autodiff::grad(&(silu(x.as_tensor()).unwrap() * &w).unwrap(), &x).unwrap();
        let theirs = autodiff::grad(&(x.as_tensor().silu().unwrap() * &w).unwrap(), &x).unwrap();
        close(&ours, &theirs, 1e-12);
    }

    /// The second derivative (through SiluGrad's backward) and the third
    /// (through its candle-op backward) match central finite differences of
    /// the analytic lower derivative: h = 1e-5 in f64 gives O(h²) ≈ 1e-10
    /// truncation and ~1e-11 rounding, so 1e-8 is ample. The third derivative
    /// is checked against differences of differences: their rounding error is
    /// ~1e-11/h ≈ 1e-6, hence 1e-4.
    #[test]
    fn higher_derivatives_match_finite_differences() {
        let x = input();
        let xs = x.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let d1 = |v: f64| {
            let s = 1.0 / (1.0 + (-v).exp());
            s * (1.0 + v * (1.0 - s))
        };
        let h = 1e-5;
        // d/dx Σ silu′(x) = silu″(x)
        let first = autodiff::grad(&silu(x.as_tensor()).unwrap(), &x).unwrap();
        let second = autodiff::grad(&first, &x).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let d2 = |v: f64| (d1(v + h) - d1(v - h)) / (2.0 * h);
        for (&v, &got) in xs.iter().zip(&second) {
            assert!((got - d2(v)).abs() < 1e-8, "silu″({v}) = {got}, finite differences {}", d2(v));
        }
        // d/dx Σ silu″(x) = silu‴(x)
        let second_t = autodiff::grad(&first, &x).unwrap();
        let third = autodiff::grad(&second_t, &x).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (&v, &got) in xs.iter().zip(&third) {
            let want = (d2(v + h) - d2(v - h)) / (2.0 * h);
            assert!((got - want).abs() < 1e-4, "silu‴({v}) = {got}, finite differences {want}");
        }
    }

    /// exp_f32 and exp_f32_fma are within 2 ulp (relative 2.4e-7) of the
    /// exact exponential over the whole clamped range, and saturate instead
    /// of overflowing.
    #[test]
    fn fast_exp_is_accurate() {
        for exp in [exp_f32, exp_f32_fma] {
            for i in 0..=200_000 {
                let x = -87.0 + 175.0 * i as f32 / 200_000.0;
                let (got, want) = (exp(x) as f64, (x as f64).exp());
                assert!(((got - want) / want).abs() < 2.4e-7, "exp({x}) = {got}, exact {want}");
            }
            assert!(exp(1000.0).is_finite() && exp(-1000.0) >= 0.0);
        }
        // f32 SiLU through it stays within f32 rounding of candle's (libm) SiLU
        let x = Tensor::from_vec((0..1000).map(|i| (i as f32 - 500.0) * 0.05).collect::<Vec<_>>(), 1000, &Device::Cpu)
            .unwrap();
        let (a, b) = (silu(&x).unwrap(), x.silu().unwrap());
        let rel = ((&a - &b).unwrap().abs().unwrap() / (b.abs().unwrap() + 1e-30).unwrap()).unwrap();
        assert!(rel.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    }

    /// im2col equals the patches built from zero padding and narrow/stack plus
    /// a row of ones (pure data movement: exactly equal), and col2im is its adjoint:
    /// ⟨im2col(x), G⟩ = ⟨x, col2im(G)⟩, so the gradient through it is exact;
    /// checked with the gradient of ⟨im2col(x), G⟩ (f64, 1e-12). The widths
    /// 4, 8, 14 and 16 take the fixed-width 3×3 copies, 6 the block copy.
    #[test]
    fn im2col_matches_narrow_and_stack_and_col2im_is_its_adjoint() {
        for (k, stride, (n, c, h, w)) in [(3, 1), (3, 2), (1, 1), (5, 1)].into_iter().flat_map(|ks| {
            [(2, 3, 6, 4), (2, 2, 8, 8), (1, 2, 4, 14), (2, 1, 2, 16), (1, 2, 6, 6)].map(|d| (ks.0, ks.1, d))
        }) {
            let v: Vec<f64> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
            let x = Var::from_tensor(&Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()).unwrap();
            let p = k / 2;
            let xp = x.as_tensor().pad_with_zeros(2, p, p).unwrap().pad_with_zeros(3, p, p).unwrap();
            let mut cols = Vec::new();
            for dy in 0..k {
                for dx in 0..k {
                    let win = xp.narrow(2, dy, h).unwrap().narrow(3, dx, w).unwrap();
                    // stride 2 keeps every other row and column of the stride-1 patches
                    let win = if stride == 2 {
                        win.reshape((n, c, h / 2, 2, w / 2, 2))
                            .unwrap()
                            .narrow(3, 0, 1)
                            .unwrap()
                            .narrow(5, 0, 1)
                            .unwrap()
                    } else {
                        win
                    };
                    cols.push(win.reshape((n, c, h * w / (stride * stride))).unwrap());
                }
            }
            let hw = h * w / (stride * stride);
            // [N, C·k², HW] → [C·k², N·HW], then the row of ones
            let want = Tensor::stack(&cols, 2).unwrap().reshape((n, c * k * k, hw)).unwrap();
            let want = want.transpose(0, 1).unwrap().reshape((c * k * k, n * hw)).unwrap();
            let want = Tensor::cat(&[want, Tensor::ones((1, n * hw), DType::F64, &Device::Cpu).unwrap()], 0).unwrap();
            let got = im2col(x.as_tensor(), k, stride).unwrap();
            close(&got, &want, 1e-300);
            let g_vals: Vec<f64> = (0..got.elem_count()).map(|i| ((i * 13 % 29) as f64 - 14.0) / 3.0).collect();
            let g = Tensor::from_vec(g_vals, got.shape(), &Device::Cpu).unwrap();
            let ours = autodiff::grad(&(got * &g).unwrap(), &x).unwrap();
            let theirs = autodiff::grad(&(want * &g).unwrap(), &x).unwrap();
            close(&ours, &theirs, 1e-12);
        }
    }

    /// The candle-op versions that devices without the CPU kernels use (and
    /// the CPU with SCOREGEN_FUSED=0) compute the same values as the kernels
    /// (f64: data movement exactly, SiLU and its derivative to 1e-14), and the
    /// same first and second derivatives (checked through im2col and SiLU).
    #[test]
    fn candle_fallbacks_match_the_cpu_ops() {
        let (n, c, h, w) = (2, 3, 4, 6);
        let v: Vec<f64> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f64 - 50.0) / 11.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()).unwrap();
        let xt = x.as_tensor();
        for (k, stride) in [(3, 1), (3, 2), (1, 1), (5, 2)] {
            let g = Patches::new(n, (c, h, w), k, stride);
            let kernel = xt.apply_op1(Im2col { g, ones: true }).unwrap();
            let candle = im2col_candle(xt, k, stride).unwrap();
            close(&kernel, &candle, 1e-300);
            let weights = Tensor::from_vec(
                (0..kernel.elem_count()).map(|i| ((i * 13 % 29) as f64 - 14.0) / 3.0).collect::<Vec<_>>(),
                kernel.shape(),
                &Device::Cpu,
            )
            .unwrap();
            let ga = autodiff::grad(&(kernel.sqr().unwrap() * &weights).unwrap(), &x).unwrap();
            let gb = autodiff::grad(&(candle.sqr().unwrap() * &weights).unwrap(), &x).unwrap();
            close(&ga, &gb, 1e-12);
        }
        close(&xt.apply_op1(Upsample2).unwrap(), &upsample2_candle(xt).unwrap(), 1e-300);
        for (top, left, wh, ww) in [(-1, -1, h + 2, w + 2), (1, 1, h - 2, w - 2), (-2, 1, h, w + 3), (1, -3, 2, 1)] {
            let ours = xt.apply_op1(Window { top, left, h: wh, w: ww }).unwrap();
            close(&ours, &window_candle(xt, top, left, wh, ww).unwrap(), 1e-300);
            // the adjoint: ⟨window(x), g⟩ = ⟨x, window_back(g)⟩ for every x, g, through both ops
            let g = ours.affine(0.5, -0.25).unwrap().cos().unwrap();
            let ga =
                autodiff::grad(&(xt.apply_op1(Window { top, left, h: wh, w: ww }).unwrap() * &g).unwrap(), &x).unwrap();
            let gb = autodiff::grad(&(window_candle(xt, top, left, wh, ww).unwrap() * &g).unwrap(), &x).unwrap();
            close(&ga, &gb, 1e-300);
        }
        let flat = xt.reshape((n * c, h * w)).unwrap();
        let b = Tensor::from_vec((0..h * w).map(|i| i as f64 * 0.1 - 1.0).collect::<Vec<_>>(), h * w, &Device::Cpu)
            .unwrap();
        close(&flat.apply_op2(&b, AddBias).unwrap(), &add_bias_candle(&flat, &b).unwrap(), 1e-300);
        close(&xt.apply_op1(Silu).unwrap(), &xt.silu().unwrap(), 1e-14);
        let gin = xt.affine(0.5, 0.25).unwrap();
        close(&xt.apply_op2(&gin, SiluGrad).unwrap(), &silu_grad_candle(xt, &gin).unwrap(), 1e-14);
        // second derivatives of SiLU: the kernel's backward against candle's own
        let d1k = autodiff::grad(&xt.apply_op1(Silu).unwrap(), &x).unwrap();
        let d1c = autodiff::grad(&xt.silu().unwrap(), &x).unwrap();
        close(&d1k, &d1c, 1e-14);
        close(&autodiff::grad(&d1k, &x).unwrap(), &autodiff::grad(&d1c, &x).unwrap(), 1e-13);
    }

    /// upsample2 equals candle's upsample_nearest2d (data movement: exactly),
    /// its gradient equals candle's (the 2×2 block sums, f64 sums of four
    /// terms: 1e-12), and the gradient of that gradient with respect to the
    /// incoming gradient G is upsampling again: the two ops are linear and
    /// each other's adjoint, so exact to every order.
    #[test]
    fn upsample2_matches_candle_and_is_adjoint_to_the_block_sum() {
        let (n, c, h, w) = (2, 3, 3, 4);
        let v: Vec<f64> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()).unwrap();
        let ours = upsample2(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().upsample_nearest2d(2 * h, 2 * w).unwrap();
        close(&ours, &theirs, 1e-300);
        let g_vals: Vec<f64> = (0..ours.elem_count()).map(|i| ((i * 13 % 29) as f64 - 14.0) / 3.0).collect();
        let g = Var::from_tensor(&Tensor::from_vec(g_vals, ours.shape(), &Device::Cpu).unwrap()).unwrap();
        let pooled = autodiff::grad(&(ours * g.as_tensor()).unwrap(), &x).unwrap();
        close(&pooled, &autodiff::grad(&(theirs * g.as_tensor()).unwrap(), &x).unwrap(), 1e-12);
        // Σ sum_pool2(G)·u differentiated in G is upsample2(u)
        let u = x.as_tensor().detach().affine(0.5, 1.0).unwrap();
        let second = autodiff::grad(&(pooled * &u).unwrap(), &g).unwrap();
        close(&second, &upsample2(&u).unwrap(), 1e-12);
    }

    /// add_bias equals candle's broadcast_add, and its gradients (y: G; b: the
    /// column sums of G) equal candle's, for a weighted sum as the loss.
    #[test]
    fn add_bias_matches_broadcast_add() {
        let y = input();
        let b = Var::new(&[0.5f64, -1.0, 2.0, 0.0, 0.25, -0.75], &Device::Cpu).unwrap();
        let w =
            Tensor::from_vec((0..24).map(|i| (i % 7) as f64 * 0.3).collect::<Vec<_>>(), (4, 6), &Device::Cpu).unwrap();
        let ours = add_bias(y.as_tensor(), b.as_tensor()).unwrap();
        let theirs = y.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        close(&ours, &theirs, 0.0 + 1e-15);
        let g1 = autodiff::backward(&(ours * &w).unwrap().sum_all().unwrap()).unwrap();
        let g2 = autodiff::backward(&(theirs * &w).unwrap().sum_all().unwrap()).unwrap();
        close(g1.get(b.as_tensor()).unwrap(), g2.get(b.as_tensor()).unwrap(), 1e-12);
        close(g1.get(y.as_tensor()).unwrap(), g2.get(y.as_tensor()).unwrap(), 1e-12);
    }

    /// cat_channels equals candle's cat on dim 1 (a copy: exactly) for f64
    /// images of 3 and 5 channels, rank-3 tensors and a single image; its
    /// gradients are the two parts of G (exactly), and differentiating them
    /// again in G gives the concatenation of the weights (it is linear, so
    /// exact to every order).
    #[test]
    fn cat_channels_matches_candle_cat_and_its_gradients() {
        let dev = Device::Cpu;
        let vals = |n: usize, k: usize| (0..n).map(|i| ((i * k % 97) as f64 - 48.0) / 5.0).collect::<Vec<_>>();
        for (sa, sb) in
            [(vec![4, 3, 5, 6], vec![4, 5, 5, 6]), (vec![3, 2, 7], vec![3, 4, 7]), (vec![1, 2, 3, 3], vec![1, 1, 3, 3])]
        {
            let ea: usize = sa.iter().product();
            let eb: usize = sb.iter().product();
            let a = Var::from_tensor(&Tensor::from_vec(vals(ea, 37), sa.as_slice(), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::from_vec(vals(eb, 53), sb.as_slice(), &dev).unwrap()).unwrap();
            let ours = cat_channels(a.as_tensor(), b.as_tensor()).unwrap();
            let theirs = Tensor::cat(&[a.as_tensor(), b.as_tensor()], 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            close(&ours, &theirs, 1e-300);
            let g =
                Var::from_tensor(&Tensor::from_vec(vals(ours.elem_count(), 13), ours.shape(), &dev).unwrap()).unwrap();
            let (ca, cb) = (sa[1], sb[1]);
            let da = autodiff::grad(&(ours.clone() * g.as_tensor()).unwrap(), &a).unwrap();
            let db = autodiff::grad(&(ours * g.as_tensor()).unwrap(), &b).unwrap();
            close(&da, &g.as_tensor().narrow(1, 0, ca).unwrap(), 1e-300);
            close(&db, &g.as_tensor().narrow(1, ca, cb).unwrap(), 1e-300);
            // Σ da·u differentiated in G puts u in a's channels and zeros in b's
            let u = a.as_tensor().detach().affine(0.5, 1.0).unwrap();
            let second = autodiff::grad(&(da * &u).unwrap(), &g).unwrap();
            close(&second, &Tensor::cat(&[&u, &b.as_tensor().zeros_like().unwrap()], 1).unwrap(), 1e-300);
        }
    }
}
