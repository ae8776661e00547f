//! A k×k "same" convolution (stride 1 or 2) with a per-image bias, as one
//! fused CPU op with a hand-written first-order backward.
//!
//! For image b, with P_b = im2col(x_b) [C_in·k², Ho·Wo] (see [`super::fused::im2col`]),
//!
//!   y_b = W P_b + c_b 1ᵀ,
//!
//! W [C_out, C_in·k²] and c [N, C_out] (the layer's bias plus, in a residual
//! block, the projected time embedding). y_b [C_out, Ho·Wo] is image b of the
//! output in [N, C, H, W] order already, so nothing is transposed. The backward,
//! again per image:
//!
//!   dc_b = dy_b 1,   dW = Σ_b dy_b P_bᵀ,   dx_b = col2im(Wᵀ dy_b).
//!
//! The images are split across threads; each thread builds one image's P_b
//! at a time in a small buffer (rebuilt in the backward rather than kept), so
//! the patch matrices of the whole batch never exist at once.
//!
//! **First order only**, like [`super::dense`]: the gradients come from an op
//! that refuses to be differentiated again. Inside
//! [`crate::autodiff::exact_higher_order`], and for f64, the U-Net takes the
//! im2col + matmul path in candle ops instead.
//!
//! Written by hand because candle's CPU convolution backward is a transposed
//! convolution an order of magnitude slower on small images; the GEMMs are
//! the `gemm` crate's.

use super::dense::{gemm_serial, Mat};
use super::fused::{col2im_add, im2col_into, Patches};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The geometry of one call: N images C_in×H×W, C_out filters k×k, stride s.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    patches: Patches,
    cin: usize,
    cout: usize,
    k: usize,
    /// Input pixels per image (C_in·H·W) and output positions per channel (Ho·Wo).
    x_len: usize,
    hw_out: usize,
}

impl Geometry {
    fn new(x: &[usize], cout: usize, k: usize, stride: usize) -> Self {
        let (cin, h, w) = (x[1], x[2], x[3]);
        let patches = Patches::new(1, (cin, h, w), k, stride);
        let (ho, wo) = patches.out_hw();
        Self { patches, cin, cout, k, x_len: cin * h * w, hw_out: ho * wo }
    }

    /// Rows of P_b (C_in·k²).
    fn rows(&self) -> usize {
        self.cin * self.k * self.k
    }

    /// Images per parallel task: a few tasks per thread, so uneven images balance.
    fn images_per_task(&self, n: usize) -> usize {
        let threads = candle_core::utils::get_num_threads().max(1);
        if threads == 1 {
            n.max(1)
        } else {
            n.div_ceil(4 * threads).max(1)
        }
    }
}

/// The contiguous f32 slice of an input.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((from, to)) => Ok(&s.as_slice::<f32>()?[from..to]),
        None => candle_core::bail!("fused conv: input is not contiguous"),
    }
}

/// y [N, C_out, Ho, Wo] from x, W and c.
fn forward(g: &Geometry, x: &[f32], w: &[f32], c: &[f32], n: usize) -> Vec<f32> {
    let (rows, hw) = (g.rows(), g.hw_out);
    let mut y = vec![0f32; n * g.cout * hw];
    let per = g.images_per_task(n);
    y.par_chunks_mut(per * g.cout * hw).zip(x.par_chunks(per * g.x_len)).zip(c.par_chunks(per * g.cout)).for_each(
        |((y, x), c)| {
            let mut p = vec![0f32; rows * hw];
            for ((y, x), c) in y.chunks_exact_mut(g.cout * hw).zip(x.chunks_exact(g.x_len)).zip(c.chunks_exact(g.cout)) {
                im2col_into(x, &g.patches, &mut p);
                for (row, &b) in y.chunks_exact_mut(hw).zip(c) {
                    row.fill(b);
                }
                // SAFETY: y is [C_out, hw], W is [C_out, rows], P is [rows, hw].
                unsafe { gemm_serial(g.cout, hw, rows, y.as_mut_ptr(), hw, true, Mat::rows(w, rows), Mat::rows(&p, hw)) };
            }
        },
    );
    y
}

/// [dx (N·C_in·H·W, zeros unless `want_x`), dW (C_out·C_in·k²), dc (N·C_out)]
/// from x, W and dy.
fn backward(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32], n: usize, want_x: bool) -> Vec<f32> {
    let (rows, hw, cout) = (g.rows(), g.hw_out, g.cout);
    let mut out = vec![0f32; n * g.x_len + cout * rows + n * cout];
    let (dx, rest) = out.split_at_mut(n * g.x_len);
    let (dw, dc) = rest.split_at_mut(cout * rows);
    let per = g.images_per_task(n);
    let dw_parts = dx
        .par_chunks_mut(per * g.x_len)
        .zip(dc.par_chunks_mut(per * cout))
        .zip(x.par_chunks(per * g.x_len))
        .zip(dy.par_chunks(per * cout * hw))
        .map(|(((dx, dc), x), dy)| {
            let mut p = vec![0f32; rows * hw];
            let mut dp = vec![0f32; if want_x { rows * hw } else { 0 }];
            let mut dw = vec![0f32; cout * rows];
            let images = dx.chunks_exact_mut(g.x_len).zip(dc.chunks_exact_mut(cout));
            for ((dx, dc), (x, dy)) in images.zip(x.chunks_exact(g.x_len).zip(dy.chunks_exact(cout * hw))) {
                for (d, row) in dc.iter_mut().zip(dy.chunks_exact(hw)) {
                    *d = sum(row);
                }
                im2col_into(x, &g.patches, &mut p);
                // SAFETY (both GEMMs): dW is [C_out, rows], dy_b [C_out, hw], P [rows, hw], W [C_out, rows].
                unsafe {
                    gemm_serial(cout, rows, hw, dw.as_mut_ptr(), rows, true, Mat::rows(dy, hw), Mat::t(&p, hw));
                    if want_x {
                        gemm_serial(rows, hw, cout, dp.as_mut_ptr(), hw, false, Mat::t(w, rows), Mat::rows(dy, hw));
                    }
                }
                if want_x {
                    col2im_add(&dp, &g.patches, dx);
                }
            }
            dw
        })
        .collect::<Vec<_>>();
    for part in dw_parts {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
    out
}

/// Σ v in eight lanes, so the loop vectorizes (a plain sum is one serial chain).
fn sum(v: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// y = conv(x; W) + c, see the module docs.
struct Forward(usize, usize);

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "fused-conv"
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
        let (k, stride) = (self.0, self.1);
        let g = Geometry::new(l1.dims(), l2.dims()[0], k, stride);
        let n = l1.dims()[0];
        let y = forward(&g, f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?, n);
        let (ho, wo) = g.patches.out_hw();
        Ok((CpuStorage::F32(y), Shape::from((n, g.cout, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_x = x.track_op();
        let all = x.apply_op3(w, &dy.contiguous()?, Backward { k: self.0, stride: self.1, want_x })?;
        let (xn, wn) = (x.elem_count(), w.elem_count());
        let dx = want_x.then(|| all.narrow(0, 0, xn)?.reshape(x.shape())).transpose()?;
        let dw = all.narrow(0, xn, wn)?.reshape(w.shape())?;
        let dc = all.narrow(0, xn + wn, c.elem_count())?.reshape(c.shape())?;
        Ok((dx, Some(dw), Some(dc)))
    }
}

/// [dx, dW, dc] from (x, W, dy): the backward of [`Forward`].
struct Backward {
    k: usize,
    stride: usize,
    want_x: bool,
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
        let g = Geometry::new(l1.dims(), l2.dims()[0], self.k, self.stride);
        let n = l1.dims()[0];
        let all = backward(&g, f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?, n, self.want_x);
        let len = all.len();
        Ok((CpuStorage::F32(all), Shape::from(len)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _dy: &Tensor,
        _res: &Tensor,
        _grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        candle_core::bail!(
            "second derivatives through the fused convolution: run the code that differentiates the score twice \
             inside autodiff::exact_higher_order (implicit and sliced score matching and energy models do)"
        )
    }
}

/// conv(x; W) + c for x [N, C_in, H, W], W [C_out, C_in·k²] (a conv weight
/// [C_out, C_in, k, k] flattened) and c [N, C_out]: f32 on the CPU, k odd,
/// stride 1 or 2 dividing H and W.
pub fn conv2d(x: &Tensor, w: &Tensor, c: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 || c.dtype() != DType::F32 || !x.device().is_cpu() {
        candle_core::bail!("fused conv: f32 on the CPU only, got {:?} on {:?}", x.dtype(), x.device());
    }
    if k.is_multiple_of(2) || !(stride == 1 || stride == 2) || !h.is_multiple_of(stride) || !wd.is_multiple_of(stride) {
        candle_core::bail!("fused conv: needs odd k, stride 1 or 2 dividing H×W, got k={k} stride={stride} on {h}×{wd}");
    }
    if w.dims() != [cout, cin * k * k] || c.dims() != [n, cout] {
        candle_core::bail!(
            "fused conv: expected W [C_out, {}] and c [{n}, C_out], got {:?} and {:?}",
            cin * k * k,
            w.shape(),
            c.shape()
        );
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &c.contiguous()?, Forward(k, stride))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The fused op equals candle's conv2d plus the per-image bias, and its
    /// three gradients equal candle's (through conv2d's own backward), for a
    /// random weighting of the output as the loss; stride 1 and 2, k = 1 and 3,
    /// and a batch that does not split evenly across tasks. f32 sums of up to
    /// C_in·k² = 27 (forward) and N·H·W = 320 (dW) terms of size ~1: 1e-4
    /// relative to the largest entry is many times their rounding.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(11, 0);
        let (n, cin, cout, h, w) = (5, 3, 4, 8, 8);
        let x = Var::from_tensor(&rng.randn((n, cin, h, w), DType::F32, &dev).unwrap()).unwrap();
        for (k, stride) in [(3, 1), (3, 2), (1, 1)] {
            let wt = Var::from_tensor(&rng.randn((cout, cin, k, k), DType::F32, &dev).unwrap()).unwrap();
            let c = Var::from_tensor(&rng.randn((n, cout), DType::F32, &dev).unwrap()).unwrap();
            let flat = wt.as_tensor().reshape((cout, cin * k * k)).unwrap();
            let ours = conv2d(x.as_tensor(), &flat, c.as_tensor(), k, stride).unwrap();
            let theirs = x
                .as_tensor()
                .conv2d(wt.as_tensor(), k / 2, stride, 1, 1)
                .unwrap()
                .broadcast_add(&c.as_tensor().unsqueeze(2).unwrap().unsqueeze(3).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-4, "k={k} s={stride}: forward {}", max_diff(&ours, &theirs));
            let weights = rng.randn(ours.shape(), DType::F32, &dev).unwrap();
            let g1 = crate::autodiff::backward(&(ours * &weights).unwrap().sum_all().unwrap()).unwrap();
            let g2 = crate::autodiff::backward(&(theirs * &weights).unwrap().sum_all().unwrap()).unwrap();
            for (name, v) in [("x", x.as_tensor()), ("W", wt.as_tensor()), ("c", c.as_tensor())] {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(max_diff(a, b) < 1e-4 * scale, "k={k} s={stride}: d{name} differs by {}", max_diff(a, b));
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
        let y = conv2d(x.as_tensor(), w.as_tensor(), &c, 3, 1).unwrap();
        let gx = crate::autodiff::grad(&y.sqr().unwrap(), &x).unwrap();
        let err = crate::autodiff::backward(&gx.sqr().unwrap().sum_all().unwrap()).unwrap_err().to_string();
        assert!(err.contains("exact_higher_order"), "{err}");
    }
}
