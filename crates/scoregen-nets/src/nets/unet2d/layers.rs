//! The layers of diffusers' `UNet2DModel`, under diffusers' parameter names
//! (`resnets.0.conv1`, `attentions.0.to_q`, `downsamplers.0.conv`, …), so a
//! `diffusion_pytorch_model.safetensors` loads by name: `ResnetBlock2D`,
//! the (deprecated-attention-block) `Attention`, `Downsample2D`/`Upsample2D`
//! and the FIR resampling of NCSN++ (`upsample_2d`/`downsample_2d`, kernel (1, 3, 3, 1)).

use crate::nets::kernels::attention::{attention, linear_parts, Projections};
use crate::nets::kernels::fused::window;
use crate::nets::kernels::groupnorm::{group_norm, GroupNorm};
use crate::nets::unet::Conv;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

/// The same layer with its parameters detached (an evaluated network).
pub(super) fn constant(layer: &Linear, frozen: bool) -> Linear {
    if frozen {
        Linear::new(layer.weight().detach(), layer.bias().map(Tensor::detach))
    } else {
        layer.clone()
    }
}

/// How a residual block resamples its input (NCSN++'s `kernel="fir"` blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resample {
    None,
    FirUp,
    FirDown,
}

/// diffusers' `ResnetBlock2D` (pre-norm, SiLU):
/// h = conv₁(SiLU(GN₁(x))) (+ P SiLU(e) for `default`),
/// h = SiLU(GN₂(h)) (or SiLU(GN₂(h)·(1 + s) + b), (s, b) = P SiLU(e), for `scale_shift`),
/// out = (x̂ + conv₂(h)) / r, with x̂ = x or `conv_shortcut`(x), and the FIR
/// resampling, when there is one, applied to both x and SiLU(GN₁(x)) before conv₁.
pub(super) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Linear,
    scale_shift: bool,
    norm2: GroupNorm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
    resample: Resample,
    /// r, `output_scale_factor`.
    out_scale: f64,
    frozen: bool,
}

/// The options of a [`ResnetBlock`] beyond its channels.
pub(super) struct ResnetOptions {
    pub temb: usize,
    pub groups: usize,
    pub groups_out: usize,
    pub eps: f64,
    pub scale_shift: bool,
    pub out_scale: f64,
    pub resample: Resample,
    /// `use_in_shortcut`: a 1×1 shortcut convolution even when the channels agree.
    pub force_shortcut: bool,
}

impl ResnetBlock {
    pub(super) fn new(cin: usize, cout: usize, o: &ResnetOptions, vb: VarBuilder) -> Result<Self> {
        let shortcut = o.force_shortcut || cin != cout;
        Ok(Self {
            norm1: group_norm(o.groups, cin, o.eps, vb.pp("norm1"))?,
            conv1: Conv::new(cin, cout, 3, 1, vb.pp("conv1"))?,
            time_emb_proj: linear(o.temb, if o.scale_shift { 2 * cout } else { cout }, vb.pp("time_emb_proj"))?,
            scale_shift: o.scale_shift,
            norm2: group_norm(o.groups_out, cout, o.eps, vb.pp("norm2"))?,
            conv2: Conv::new(cout, cout, 3, 1, vb.pp("conv2"))?,
            conv_shortcut: if shortcut { Some(Conv::new(cin, cout, 1, 1, vb.pp("conv_shortcut"))?) } else { None },
            resample: o.resample,
            out_scale: o.out_scale,
            frozen: false,
        })
    }

    pub(super) fn freeze(&mut self) {
        self.frozen = true;
        for n in [&mut self.norm1, &mut self.norm2] {
            n.freeze();
        }
        for c in [&mut self.conv1, &mut self.conv2] {
            c.freeze();
        }
        if let Some(c) = &mut self.conv_shortcut {
            c.freeze();
        }
    }

    /// `emb_act` is SiLU(e), shared by every block.
    pub(super) fn forward(&self, x: &Tensor, emb_act: &Tensor) -> Result<Tensor> {
        let e = constant(&self.time_emb_proj, self.frozen).forward(emb_act)?;
        let shift = (!self.scale_shift).then_some(&e);
        let (h, x) = match self.resample {
            Resample::None => (self.conv1.forward_normed(x, Some(&self.norm1), shift, None)?, x.clone()),
            r => {
                let fir = |t: &Tensor| if r == Resample::FirUp { fir_upsample(t) } else { fir_downsample(t) };
                let h = fir(&self.norm1.forward_silu(x)?)?;
                (self.conv1.forward_with(&h, shift, None)?, fir(x)?)
            }
        };
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(&x)?,
            None => x,
        };
        let residual = Some((&x, 1.0 / self.out_scale));
        if !self.scale_shift {
            return self.conv2.forward_normed(&h, Some(&self.norm2), None, residual);
        }
        let c = h.dim(1)?;
        let (scale, shift) = (e.narrow(1, 0, c)?, e.narrow(1, c, c)?);
        let h = self.norm2.forward(&h)?;
        let h = h.broadcast_mul(&(scale + 1.0)?.unsqueeze(2)?.unsqueeze(3)?)?;
        let h = h.broadcast_add(&shift.unsqueeze(2)?.unsqueeze(3)?)?.silu()?;
        self.conv2.forward_with(&h, None, residual)
    }
}

/// diffusers' `Attention` as the U-Net blocks build it (spatial self-attention,
/// residual, `bias=True`): out = (x + W_o · MHA(GN(x))) / r over the H·W
/// positions, heads = C / `attention_head_dim`, each softmax(q kᵀ/√d) v.
pub(super) struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale: f64,
    frozen: bool,
}

impl Attention {
    /// `groups`: None for no GroupNorm (diffusers' mid block with `scale_shift`).
    pub(super) fn new(
        ch: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f64,
        rescale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let heads = (ch / head_dim).max(1);
        let inner = heads * head_dim;
        Ok(Self {
            group_norm: match groups {
                Some(g) => Some(group_norm(g, ch, eps, vb.pp("group_norm"))?),
                None => None,
            },
            to_q: linear(ch, inner, vb.pp("to_q"))?,
            to_k: linear(ch, inner, vb.pp("to_k"))?,
            to_v: linear(ch, inner, vb.pp("to_v"))?,
            to_out: linear(inner, ch, vb.pp("to_out.0"))?,
            heads,
            rescale,
            frozen: false,
        })
    }

    pub(super) fn freeze(&mut self) {
        self.frozen = true;
        if let Some(n) = &mut self.group_norm {
            n.freeze();
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let normed = match &self.group_norm {
            Some(g) => g.forward(x)?,
            None => x.clone(),
        };
        if scoregen_core::autodiff::fused_kernels_allowed(x.device()) && x.dtype() == DType::F32 {
            // one op: the projections, every head and the residual (kernels::attention)
            let f = self.frozen || scoregen_core::autodiff::parameters_constant();
            let parts: Vec<(Tensor, Tensor)> = [&self.to_q, &self.to_k, &self.to_v, &self.to_out]
                .iter()
                .map(|l| linear_parts(l, f))
                .collect::<Result<_>>()?;
            let w_qkv = Tensor::cat(&[&parts[0].0, &parts[1].0, &parts[2].0], 0)?;
            let b_qkv = Tensor::cat(&[&parts[0].1, &parts[1].1, &parts[2].1], 0)?;
            let p = Projections { w_qkv: &w_qkv, b_qkv: &b_qkv, w_o: &parts[3].0, b_o: &parts[3].1 };
            return attention(&normed, x, p, self.heads, 1.0 / self.rescale);
        }
        let seq = normed.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?; // [N, HW, C]
        let f = self.frozen;
        let split = |t: Tensor| -> Result<Tensor> {
            let d = t.dim(2)? / self.heads;
            t.reshape((n, h * w, self.heads, d))?.transpose(1, 2)?.contiguous() // [N, heads, HW, d]
        };
        let q = split(constant(&self.to_q, f).forward(&seq)?)?;
        let k = split(constant(&self.to_k, f).forward(&seq)?)?;
        let v = split(constant(&self.to_v, f).forward(&seq)?)?;
        let d = q.dim(3)?;
        let att = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? / (d as f64).sqrt())?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((n, h * w, self.heads * d))?;
        let y = constant(&self.to_out, f).forward(&y)?;
        let y = y.transpose(1, 2)?.reshape((n, c, h, w))?;
        (x + y)? / self.rescale
    }
}

/// diffusers' `Downsample2D(use_conv=True)`: a 3×3 stride-2 convolution with
/// `padding` 1 (zeros on every side), or 0 (diffusers pads one zero row and
/// column at the bottom and right only: y_i = Σ_k w_k x_{2i+k}).
pub(super) struct Downsample {
    conv: Conv,
    padding: usize,
}

impl Downsample {
    pub(super) fn new(ch: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: Conv::new(ch, ch, 3, 2, vb.pp("conv"))?, padding })
    }
    pub(super) fn freeze(&mut self) {
        self.conv.freeze();
    }
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.padding == 1 {
            return self.conv.forward(x);
        }
        // With one more zero on each side, the "same"-padded stride-2 outputs at
        // even positions 2(i + 1) of the padded input are Σ_k w_k x_{2i+k}:
        // keep outputs 1..=H/2 (the Conv computes even positions only).
        let (_, _, h, w) = x.dims4()?;
        let padded = window(x, -1, -1, h + 2, w + 2)?;
        window(&self.conv.forward(&padded)?, 1, 1, h / 2, w / 2)
    }
}

/// diffusers' `Upsample2D(use_conv=True)`: nearest-neighbour ×2, then a 3×3 convolution.
pub(super) struct Upsample {
    conv: Conv,
}

impl Upsample {
    pub(super) fn new(ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: Conv::new(ch, ch, 3, 1, vb.pp("conv"))? })
    }
    pub(super) fn freeze(&mut self) {
        self.conv.freeze();
    }
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&crate::nets::kernels::fused::upsample2(x)?)
    }
}

/// The 1-D FIR resampling matrices of NCSN++ (`upfirdn2d` with the kernel
/// (1, 3, 3, 1), zero outside the image). Upsampling by 2 (kernel ×4/64 in 2-D,
/// i.e. [1, 3, 3, 1]/4 per axis, pad (2, 1)): y_{2i} = (x_{i−1} + 3x_i)/4,
/// y_{2i+1} = (3x_i + x_{i+1})/4. Downsampling by 2 ([1, 3, 3, 1]/8 per axis,
/// pad (1, 1)): y_i = (x_{2i−1} + 3x_{2i} + 3x_{2i+1} + x_{2i+2})/8.
/// Separable, so y = A x Bᵀ per channel: two small matmuls, exact to every
/// order of autodiff (written here: no library offers upfirdn2d for candle).
fn fir_matrix(n: usize, up: bool, device: &Device) -> Result<Tensor> {
    let rows = if up { 2 * n } else { n / 2 };
    let mut m = vec![0f32; rows * n];
    let mut put = |r: usize, c: isize, v: f32| {
        if c >= 0 && (c as usize) < n {
            m[r * n + c as usize] += v;
        }
    };
    for r in 0..rows {
        let i = r as isize;
        if up {
            let (k, odd) = (i / 2, i % 2 == 1);
            if odd {
                put(r, k, 0.75);
                put(r, k + 1, 0.25);
            } else {
                put(r, k - 1, 0.25);
                put(r, k, 0.75);
            }
        } else {
            for (off, v) in [(-1, 0.125), (0, 0.375), (1, 0.375), (2, 0.125)] {
                put(r, 2 * i + off, v);
            }
        }
    }
    Tensor::from_vec(m, (rows, n), device)
}

fn fir_apply(x: &Tensor, up: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let a = fir_matrix(h, up, x.device())?.to_dtype(x.dtype())?;
    let b = fir_matrix(w, up, x.device())?.to_dtype(x.dtype())?;
    // [N, C, H, W] · Bᵀ → [N, C, H, W'], then A · → [N, C, H', W']
    let y = x.contiguous()?.broadcast_matmul(&b.t()?.contiguous()?)?;
    a.broadcast_matmul(&y)
}

/// diffusers' `upsample_2d(x, kernel=(1, 3, 3, 1))` / `FirUpsample2D` without a convolution.
pub(super) fn fir_upsample(x: &Tensor) -> Result<Tensor> {
    fir_apply(x, true)
}

/// diffusers' `downsample_2d(x, kernel=(1, 3, 3, 1))` / `FirDownsample2D` without a convolution.
pub(super) fn fir_downsample(x: &Tensor) -> Result<Tensor> {
    fir_apply(x, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FIR resampling equals upfirdn2d computed from its definition (zero
    /// insertion, padding, correlation with the flipped 4×4 kernel, decimation)
    /// on a random image, for both directions.
    #[test]
    fn fir_resampling_matches_upfirdn2d() {
        let (h, w) = (6, 4);
        let x: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let k1 = [1.0f32, 3.0, 3.0, 1.0];
        let upfirdn = |up: usize, down: usize, pad: (usize, usize), gain: f32| -> Vec<f32> {
            // kernel: outer(k1, k1) / 64 · gain
            let (uh, uw) = (h * up + pad.0 + pad.1, w * up + pad.0 + pad.1);
            let mut u = vec![0f32; uh * uw];
            for i in 0..h {
                for j in 0..w {
                    u[(i * up + pad.0) * uw + j * up + pad.0] = x[i * w + j];
                }
            }
            let (oh, ow) = ((uh - 4) / down + 1, (uw - 4) / down + 1);
            let mut out = vec![0f32; oh * ow];
            for a in 0..oh {
                for b in 0..ow {
                    let mut s = 0.0;
                    for p in 0..4 {
                        for q in 0..4 {
                            s += u[(a * down + p) * uw + b * down + q] * k1[3 - p] * k1[3 - q] / 64.0 * gain;
                        }
                    }
                    out[a * ow + b] = s;
                }
            }
            out
        };
        let xt = Tensor::from_vec(x.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
        for (up, want) in [(true, upfirdn(2, 1, (2, 1), 4.0)), (false, upfirdn(1, 2, (1, 1), 1.0))] {
            let got = fir_apply(&xt, up).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got.len(), want.len());
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-6, "up = {up}: max error {err}");
        }
    }
}
