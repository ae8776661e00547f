//! A small U-Net score network in the spirit of DDPM++ / NCSN++ (Ho et al.
//! 2020; Song et al. 2021, score_sde's `ddpm.py`), sized for a CPU.
//!
//! Input and output are flattened images [N, C·H·W], so every objective and
//! sampler works on them unchanged; the net reshapes to [N, C, H, W] inside.

use super::kernels::groupnorm::{group_norm, GroupNorm};
use super::{ClassEmbedding, GaussianFourier, Network};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};
use scoregen_core::error::{Error, Result as CrateResult};

/// Channels, depth and embedding of a [`UNet`].
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// (C, H, W) of one image.
    pub image: (usize, usize, usize),
    /// Base channel count; level l has `channels · channel_mult[l]` channels.
    pub channels: usize,
    /// One entry per resolution; each level after the first halves H and W.
    pub channel_mult: Vec<usize>,
    /// Groups of every GroupNorm (must divide every level's channel count).
    pub groups: usize,
    /// Self-attention at the lowest resolution.
    pub attention: bool,
    /// Size of the Fourier time features (even).
    pub embed_dim: usize,
    /// Standard deviation of the Fourier frequencies.
    pub embed_scale: f64,
}

impl UNetConfig {
    /// The (C, H, W) of a flattened square image of dimension `dim` with `c` channels.
    pub fn square_image(dim: usize, c: usize) -> CrateResult<(usize, usize, usize)> {
        let side = ((dim / c.max(1)) as f64).sqrt().round() as usize;
        if c == 0 || c * side * side != dim {
            return Err(Error::Invalid(format!(
                "the U-Net needs square images: data dimension {dim} is not {c}·H·H for model.image_channels = {c}"
            )));
        }
        Ok((c, side, side))
    }

    /// Multiply–add FLOPs (2 per multiply–add) of one forward pass over `batch`
    /// images: every convolution (k²·C_in·C_out per output position; a stride-2
    /// one only at the outputs it computes), linear layer (the time embedding,
    /// each block's time projection, attention's qkv and output projections)
    /// and attention's two matmuls (QKᵀ and AV, (HW)²·C each). Normalizations,
    /// activations, softmax, additions and the class embedding's lookup are not counted.
    pub fn forward_flops(&self, batch: usize) -> f64 {
        let (c_img, h, w) = self.image;
        let chs: Vec<usize> = self.channel_mult.iter().map(|m| self.channels * m).collect();
        let levels = chs.len();
        let temb = 4 * self.channels;
        let pixels = |level: usize| (h >> level) * (w >> level);
        let conv = |k: usize, cin: usize, cout: usize, px: usize| (k * k * cin * cout * px) as f64;
        let block = |cin: usize, cout: usize, px: usize| {
            let skip = if cin == cout { 0.0 } else { conv(1, cin, cout, px) };
            conv(3, cin, cout, px) + (temb * cout) as f64 + conv(3, cout, cout, px) + skip
        };
        let mut macs = (self.embed_dim * temb + temb * temb) as f64 + conv(3, c_img, self.channels, pixels(0));
        let mut prev = self.channels;
        for (l, &c) in chs.iter().enumerate() {
            macs += block(prev, c, pixels(l));
            prev = c;
            if l + 1 < levels {
                macs += conv(3, c, c, pixels(l + 1));
            }
        }
        let low = pixels(levels - 1);
        macs += 2.0 * block(prev, prev, low);
        if self.attention {
            macs += (4 * low * prev * prev + 2 * low * low * prev) as f64;
        }
        for l in (0..levels).rev() {
            if l + 1 < levels {
                macs += conv(3, prev, prev, pixels(l));
            }
            macs += block(prev + chs[l], chs[l], pixels(l));
            prev = chs[l];
        }
        macs += conv(3, self.channels, c_img, pixels(0));
        2.0 * batch as f64 * macs
    }

    /// Checks that the resolutions halve evenly and the groups divide the channels.
    pub fn validate(&self) -> CrateResult<()> {
        let (_, h, w) = self.image;
        let levels = self.channel_mult.len();
        if levels == 0 || self.channels == 0 || self.channel_mult.contains(&0) {
            return Err(Error::Invalid(
                "the U-Net needs model.channels ≥ 1 and a non-empty model.channel_mult of values ≥ 1".into(),
            ));
        }
        let f = 1usize << (levels - 1);
        if h % f != 0 || w % f != 0 {
            return Err(Error::Invalid(format!(
                "a U-Net with {levels} levels halves the image {} times: {h}×{w} is not divisible by {f} (shorten model.channel_mult)",
                levels - 1
            )));
        }
        for &m in &self.channel_mult {
            if self.groups == 0 || !(self.channels * m).is_multiple_of(self.groups) {
                return Err(Error::Invalid(format!(
                    "model.groups = {} must divide every level's channels ({} = {}·{m})",
                    self.groups,
                    self.channels * m,
                    self.channels
                )));
            }
        }
        Ok(())
    }
}

/// A k×k convolution (k = 1 or 3, "same" zero padding, stride 1 or 2) computed
/// as weights × patches: y = [W | b]·[im2col(x); 1].
///
/// Same parameters and names as `candle_nn::Conv` (`weight` [C_out, C_in, k, k],
/// `bias` [C_out]), but its backward pass is a matmul instead of candle's CPU
/// transposed convolution, which is an order of magnitude slower on small images.
/// Stride 2 computes only every other output of the stride-1 convolution (H, W even).
pub(crate) struct Conv {
    weight: Tensor,
    bias: Tensor,
    k: usize,
    stride: usize,
    /// The parameters are constants ([`Conv::freeze`]).
    frozen: bool,
    /// Once frozen: the transforms of the weights (Winograd's U, the adjoints'), made on the first call.
    filters: std::sync::Arc<super::kernels::conv::TransformCache>,
}

impl Conv {
    pub(crate) fn new(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((cout, cin, k, k), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        let bias = vb.get_with_hints(cout, "bias", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
        Ok(Self { weight, bias, k, stride, frozen: false, filters: Default::default() })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, None)
    }

    /// Marks the parameters as constants (an evaluated network): the fused op
    /// then keeps no activations unless x is tracked, skips dW, and keeps the
    /// transforms of the weights from the first call on (the
    /// weights must be assigned before it).
    pub(crate) fn freeze(&mut self) {
        self.frozen = true;
    }

    /// s·(conv(x) + e_n + r): the convolution with a per-image bias e [N, C_out]
    /// (a residual block's time embedding) added to the layer's own, and a
    /// residual r of the output's shape with its scale s (none: r = 0, s = 1).
    ///
    /// f32 on the CPU outside [`scoregen_core::autodiff::exact_higher_order`], one fused
    /// op ([`super::kernels::conv`]); otherwise im2col and a matmul in candle ops, exact to every order.
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        shift: Option<&Tensor>,
        residual: Option<(&Tensor, f64)>,
    ) -> Result<Tensor> {
        self.forward_normed(x, None, shift, residual)
    }

    /// [`Conv::forward_with`] of silu(norm(x)) when `norm` is given: on the
    /// fused path the normalization runs inside the convolution's op
    /// ([`super::kernels::conv::conv2d_normed`]), the normalized input never stored.
    pub(crate) fn forward_normed(
        &self,
        x: &Tensor,
        norm: Option<&GroupNorm>,
        shift: Option<&Tensor>,
        residual: Option<(&Tensor, f64)>,
    ) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let cout = self.weight.dim(0)?;
        if scoregen_core::autodiff::fused_kernels_allowed(x.device()) && x.dtype() == DType::F32 {
            let (mut weight, mut bias) = (self.weight.reshape((cout, c * self.k * self.k))?, self.bias.clone());
            let constant = self.frozen || scoregen_core::autodiff::parameters_constant();
            if constant {
                (weight, bias) = (weight.detach(), bias.detach());
            }
            let bias = match shift {
                // the shift is a function of t and the parameters only: constant with them,
                // so that θ = [W, c] is untracked and the backward skips dW
                Some(e) if constant => e.detach().broadcast_add(&bias)?,
                Some(e) => e.broadcast_add(&bias)?,
                None => bias.unsqueeze(0)?.broadcast_as((n, cout))?,
            };
            let folded = norm.map(|nm| nm.folded(constant));
            let norm = folded.as_ref().map(|(gamma, beta, groups, eps)| super::kernels::conv::Norm {
                gamma,
                beta,
                groups: *groups,
                eps: *eps,
            });
            let filters = self.frozen.then_some(&self.filters);
            return super::kernels::conv::conv2d_frozen(
                x,
                norm,
                &weight,
                &bias,
                self.k,
                self.stride,
                residual,
                filters,
            );
        }
        let normed = match norm {
            Some(nm) => Some(nm.forward_silu(x)?),
            None => None,
        };
        let x = normed.as_ref().unwrap_or(x);
        let (ho, wo) = (h / self.stride, w / self.stride);
        // [C·k² + 1, N·Ho·Wo] with a row of ones, so [W | b] · patches is the
        // convolution with its bias in one GEMM (nets::fused::im2col)
        let patches = super::kernels::fused::im2col(x, self.k, self.stride)?;
        let wb = Tensor::cat(&[&self.weight.reshape((cout, c * self.k * self.k))?, &self.bias.reshape((cout, 1))?], 1)?;
        let y = wb.matmul(&patches)?; // [C_out, N·Ho·Wo]
        let y = y.reshape((cout, n, ho * wo))?.transpose(0, 1)?.contiguous()?.reshape((n, cout, ho, wo))?;
        let y = match shift {
            Some(e) => y.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?,
            None => y,
        };
        match residual {
            Some((r, s)) => (y + r)? * s,
            None => Ok(y),
        }
    }
}

fn conv3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    Conv::new(cin, cout, 3, stride, vb)
}

/// h = x̂ + W₂ SiLU(GN(W₁ SiLU(GN(x)) + P e)), out = h / √2 (score_sde's
/// `skip_rescale`), with x̂ = x or a 1×1 conv of x when the channels change and
/// e the time embedding projected by P to the block's channels.
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv,
    time: Linear,
    norm2: GroupNorm,
    conv2: Conv,
    skip: Option<Conv>,
}

impl ResBlock {
    fn new(cin: usize, cout: usize, temb: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let skip = if cin == cout { None } else { Some(Conv::new(cin, cout, 1, 1, vb.pp("skip"))?) };
        Ok(Self {
            norm1: group_norm(groups, cin, 1e-6, vb.pp("norm1"))?,
            conv1: conv3(cin, cout, 1, vb.pp("conv1"))?,
            time: linear(temb, cout, vb.pp("time"))?,
            norm2: group_norm(groups, cout, 1e-6, vb.pp("norm2"))?,
            conv2: conv3(cout, cout, 1, vb.pp("conv2"))?,
            skip,
        })
    }

    fn freeze(&mut self) {
        self.norm1.freeze();
        self.conv1.freeze();
        self.norm2.freeze();
        self.conv2.freeze();
        if let Some(s) = &mut self.skip {
            s.freeze();
        }
    }

    fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward_normed(x, Some(&self.norm1), Some(&self.time.forward(emb)?), None)?;
        let x = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        // (x̂ + h)/√2 inside conv2's op
        self.conv2.forward_normed(&h, Some(&self.norm2), None, Some((&x, std::f64::consts::FRAC_1_SQRT_2)))
    }
}

/// Single-head self-attention over the H·W positions:
/// out = (x + W_o V softmax(QᵀK/√C)) / √2, with Q, K, V 1×1 projections of GN(x).
struct Attention {
    norm: GroupNorm,
    qkv: Linear,
    out: Linear,
    /// The parameters are constants ([`Network::freeze`]).
    frozen: bool,
}

impl Attention {
    fn new(ch: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(groups, ch, 1e-6, vb.pp("norm"))?,
            qkv: linear(ch, 3 * ch, vb.pp("qkv"))?,
            out: linear(ch, ch, vb.pp("out"))?,
            frozen: false,
        })
    }

    fn freeze(&mut self) {
        self.norm.freeze();
        self.frozen = true;
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if scoregen_core::autodiff::fused_kernels_allowed(x.device()) && x.dtype() == DType::F32 {
            // one op: the projections, the attention and the residual (kernels::attention)
            let f = self.frozen || scoregen_core::autodiff::parameters_constant();
            let (w_qkv, b_qkv) = super::kernels::attention::linear_parts(&self.qkv, f)?;
            let (w_o, b_o) = super::kernels::attention::linear_parts(&self.out, f)?;
            let p = super::kernels::attention::Projections { w_qkv: &w_qkv, b_qkv: &b_qkv, w_o: &w_o, b_o: &b_o };
            return super::kernels::attention::attention(
                &self.norm.forward(x)?,
                x,
                p,
                1,
                std::f64::consts::FRAC_1_SQRT_2,
            );
        }
        // [N, C, H, W] → [N, HW, C]
        let seq = self.norm.forward(x)?.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (qkv, out) =
            if self.frozen { (constant(&self.qkv), constant(&self.out)) } else { (self.qkv.clone(), self.out.clone()) };
        let qkv = qkv.forward(&seq)?;
        let (q, k, v) = (qkv.narrow(2, 0, c)?, qkv.narrow(2, c, c)?, qkv.narrow(2, 2 * c, c)?);
        let att = (q.contiguous()?.matmul(&k.contiguous()?.transpose(1, 2)?)? / (c as f64).sqrt())?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let y = out.forward(&att.matmul(&v.contiguous()?)?)?;
        let y = y.transpose(1, 2)?.reshape((n, c, h, w))?;
        (x + y)? / std::f64::consts::SQRT_2
    }
}

/// The same layer with its parameters detached (the same storage, untracked).
fn constant(layer: &Linear) -> Linear {
    Linear::new(layer.weight().detach(), layer.bias().map(Tensor::detach))
}

/// The U-Net: conv_in → [ResBlock, ↓]ₗ → ResBlock, (attention), ResBlock →
/// [↑, ResBlock(concat skip)]ₗ → GN, SiLU, conv_out.
///
/// The time embedding e(t) = W₂ SiLU(W₁ γ(t)), with γ Gaussian Fourier
/// features of t, enters every residual block. Downsampling is a stride-2 3×3
/// conv, upsampling is nearest-neighbour ×2 followed by a 3×3 conv.
pub struct UNet {
    cfg: UNetConfig,
    fourier: GaussianFourier,
    temb1: Linear,
    temb2: Linear,
    conv_in: Conv,
    down: Vec<ResBlock>,
    downsample: Vec<Conv>,
    mid1: ResBlock,
    attention: Option<Attention>,
    mid2: ResBlock,
    upsample: Vec<Conv>,
    up: Vec<ResBlock>,
    norm_out: GroupNorm,
    conv_out: Conv,
    /// c(y), added to the time embedding, for a class-conditional network.
    classes: Option<ClassEmbedding>,
    /// The parameters are constants ([`Network::freeze`]).
    frozen: bool,
}

impl UNet {
    /// Parameters are created (or loaded) through `vb` under readable names
    /// (`down.{l}.conv1`, `mid1`, `up.{l}`, `attention.qkv`, …).
    pub fn new(vb: VarBuilder, cfg: &UNetConfig, seed: u64) -> CrateResult<Self> {
        cfg.validate()?;
        let (c_img, ..) = cfg.image;
        let ch = cfg.channels;
        let g = cfg.groups;
        let levels = cfg.channel_mult.len();
        let chs: Vec<usize> = cfg.channel_mult.iter().map(|m| ch * m).collect();
        let temb = 4 * ch;
        let fourier = GaussianFourier::new(cfg.embed_dim, cfg.embed_scale, seed, vb.dtype(), vb.device())?;
        let temb1 = linear(cfg.embed_dim, temb, vb.pp("temb1"))?;
        let temb2 = linear(temb, temb, vb.pp("temb2"))?;
        let conv_in = conv3(c_img, ch, 1, vb.pp("conv_in"))?;
        let mut down = Vec::new();
        let mut downsample = Vec::new();
        let mut prev = ch;
        for (l, &c) in chs.iter().enumerate() {
            down.push(ResBlock::new(prev, c, temb, g, vb.pp(format!("down.{l}")))?);
            prev = c;
            if l + 1 < levels {
                downsample.push(conv3(prev, prev, 2, vb.pp(format!("downsample.{l}")))?);
            }
        }
        let mid1 = ResBlock::new(prev, prev, temb, g, vb.pp("mid1"))?;
        let attention = if cfg.attention { Some(Attention::new(prev, g, vb.pp("attention"))?) } else { None };
        let mid2 = ResBlock::new(prev, prev, temb, g, vb.pp("mid2"))?;
        let mut up = Vec::new();
        let mut upsample = Vec::new();
        for l in 0..levels {
            // Level l of the up path sees the output of level l + 1 (or the middle) plus the skip at level l.
            let from = if l + 1 < levels { chs[l + 1] } else { prev };
            up.push(ResBlock::new(from + chs[l], chs[l], temb, g, vb.pp(format!("up.{l}")))?);
            if l + 1 < levels {
                upsample.push(conv3(chs[l + 1], chs[l + 1], 1, vb.pp(format!("upsample.{l}")))?);
            }
        }
        let norm_out = group_norm(g, ch, 1e-6, vb.pp("norm_out"))?;
        let conv_out = conv3(ch, c_img, 1, vb.pp("conv_out"))?;
        Ok(Self {
            cfg: cfg.clone(),
            fourier,
            temb1,
            temb2,
            conv_in,
            down,
            downsample,
            mid1,
            attention,
            mid2,
            upsample,
            up,
            norm_out,
            conv_out,
            classes: None,
            frozen: false,
        })
    }

    /// Makes the network class-conditional: the embedding of every block becomes
    /// e(t) + c(y), with c a [`ClassEmbedding`] of K classes (`classes.weight` under `vb`).
    pub fn with_classes(mut self, vb: VarBuilder, classes: usize) -> Result<Self> {
        self.classes = Some(ClassEmbedding::new(classes, 4 * self.cfg.channels, vb)?);
        Ok(self)
    }

    /// A U-Net in f32 on `device` whose parameters live in `vm` (new ones drawn from `seed`).
    pub fn build(vm: &candle_nn::VarMap, cfg: &UNetConfig, seed: u64, device: &Device) -> CrateResult<Self> {
        let vb = super::seeded_var_builder(vm, seed, DType::F32, device);
        Self::new(vb, cfg, seed)
    }

    /// The network on images [N, C, H, W] → [N, C, H, W].
    pub fn forward_images(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let null = match &self.classes {
            Some(c) => Some(Tensor::full(c.classes() as u32, x.dim(0)?, x.device())?),
            None => None,
        };
        self.forward_images_labeled(x, t, null.as_ref())
    }

    /// [`UNet::forward_images`] with class labels (K = no label) for a class-conditional net.
    ///
    /// A frozen network's input gradient (x tracked, the fused kernels on)
    /// comes from its own reverse pass ([`super::kernels::tape`]), not candle's.
    pub fn forward_images_labeled(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        if self.frozen && super::kernels::tape::wanted(x) {
            return super::kernels::tape::record(x, |x| self.forward_layers(x, t, labels));
        }
        self.forward_layers(x, t, labels)
    }

    /// The layers of [`UNet::forward_images_labeled`].
    fn forward_layers(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let emb = self.fourier.forward(t)?.to_dtype(x.dtype())?;
        let mut emb = self.temb2.forward(&self.temb1.forward(&emb)?.silu()?)?.silu()?;
        match (&self.classes, labels) {
            (Some(c), Some(y)) => emb = (emb + c.forward(y)?.to_dtype(x.dtype())?)?,
            (None, Some(_)) => {
                candle_core::bail!("this network is not class-conditional (train it with model.classes = K)")
            }
            _ => {}
        }
        if self.frozen {
            // e(t) (and c(y)) enter every block as constants: nothing downstream is tracked
            // through the parameters, so no activation is kept unless x is tracked
            emb = emb.detach();
        }
        let levels = self.down.len();
        let mut h = self.conv_in.forward(x)?;
        let mut skips = Vec::with_capacity(levels);
        for l in 0..levels {
            h = self.down[l].forward(&h, &emb)?;
            skips.push(h.clone());
            if let Some(ds) = self.downsample.get(l) {
                h = ds.forward(&h)?;
            }
        }
        h = self.mid1.forward(&h, &emb)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        h = self.mid2.forward(&h, &emb)?;
        for l in (0..levels).rev() {
            if l + 1 < levels {
                h = self.upsample[l].forward(&super::kernels::fused::upsample2(&h)?)?;
            }
            h = self.up[l].forward(&super::kernels::fused::cat_channels(&h, &skips[l])?, &emb)?;
        }
        self.conv_out.forward_normed(&h, Some(&self.norm_out), None, None)
    }
}

impl Network for UNet {
    /// x [N, C·H·W] (or already [N, C, H, W]) → the same shape.
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (c, h, w) = self.cfg.image;
        if x.rank() == 4 {
            return self.forward_images(x, t);
        }
        let n = x.dim(0)?;
        self.forward_images(&x.reshape((n, c, h, w))?, t)?.reshape(x.shape())
    }

    fn forward_labeled(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (c, h, w) = self.cfg.image;
        let n = x.dim(0)?;
        let img = if x.rank() == 4 { x.clone() } else { x.reshape((n, c, h, w))? };
        self.forward_images_labeled(&img, t, Some(labels))?.reshape(x.shape())
    }

    fn classes(&self) -> usize {
        self.classes.as_ref().map_or(0, |c| c.classes())
    }

    /// Every layer's parameters become constants: sampling keeps no
    /// activations, and a likelihood's ∇ₓ skips dW, dγ, dβ in every layer.
    fn freeze(&mut self) {
        self.frozen = true;
        self.conv_in.freeze();
        self.conv_out.freeze();
        self.norm_out.freeze();
        self.mid1.freeze();
        self.mid2.freeze();
        for b in self.down.iter_mut().chain(self.up.iter_mut()) {
            b.freeze();
        }
        for c in self.downsample.iter_mut().chain(self.upsample.iter_mut()) {
            c.freeze();
        }
        if let Some(a) = &mut self.attention {
            a.freeze();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use scoregen_core::autodiff;

    fn small(attention: bool) -> UNetConfig {
        UNetConfig {
            image: (1, 8, 8),
            channels: 8,
            channel_mult: vec![1, 2],
            groups: 4,
            attention,
            embed_dim: 16,
            embed_scale: 4.0,
        }
    }

    fn batch(n: usize, d: usize) -> (Tensor, Tensor) {
        let mut rng = scoregen_core::rng::Rng::new(3, 0);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let t: Vec<f32> = (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect();
        (Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap(), Tensor::from_vec(t, n, &Device::Cpu).unwrap())
    }

    /// small(true) counted by hand, per image: time 16·32 + 32·32; conv_in 9·1·8·64; level 0
    /// block 8→8 at 8×8 (2·9·8·8·64 + 32·8) and its stride-2 conv 9·8·8·16; level 1 block 8→16
    /// at 4×4 (9·8·16·16 + 32·16 + 9·16·16·16 + 8·16·16); two middle blocks 16→16 and attention
    /// (4·16·16² + 2·16²·16); up 1 block 32→16; the ×2 conv 9·16·16·64 and up 0 block 24→8;
    /// conv_out. 751,616 multiply–adds, also torch.utils.flop_counter's count of
    /// bench/field.py's PyTorch twin with these sizes (1,503,232 FLOPs).
    #[test]
    fn forward_flops_match_a_hand_count() {
        let hand = [
            512 + 1024,
            4608,
            2 * 36864 + 256,
            9216,
            18432 + 512 + 36864 + 2048,
            2 * (2 * 36864 + 512),
            16384 + 8192,
            73728 + 512 + 36864 + 8192,
            147456,
            110592 + 256 + 36864 + 12288,
            4608,
        ];
        let macs: usize = hand.iter().sum();
        assert_eq!(macs, 751_616);
        assert_eq!(small(true).forward_flops(1), 2.0 * macs as f64);
        assert_eq!(small(false).forward_flops(2), 4.0 * (macs - 24576) as f64);
    }

    #[test]
    fn output_has_the_input_shape_flat_and_as_images() {
        for cfg in
            [small(false), small(true), UNetConfig { image: (1, 28, 28), channel_mult: vec![1, 2, 2], ..small(true) }]
        {
            let net = UNet::build(&VarMap::new(), &cfg, 0, &Device::Cpu).unwrap();
            let (c, h, w) = cfg.image;
            let (x, t) = batch(3, c * h * w);
            let y = net.forward(&x, &t).unwrap();
            assert_eq!(y.dims(), &[3, c * h * w]);
            let y4 = net.forward(&x.reshape((3, c, h, w)).unwrap(), &t).unwrap();
            assert_eq!(y4.dims(), &[3, c, h, w]);
            let diff = (y4.flatten_from(1).unwrap() - &y).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn output_depends_on_time() {
        let net = UNet::build(&VarMap::new(), &small(false), 0, &Device::Cpu).unwrap();
        let (x, _) = batch(2, 64);
        let a = net.forward(&x, &Tensor::new(&[0.1f32, 0.1], &Device::Cpu).unwrap()).unwrap();
        let b = net.forward(&x, &Tensor::new(&[0.9f32, 0.9], &Device::Cpu).unwrap()).unwrap();
        let d = (a - b).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d > 1e-4, "mean |Δ| = {d}");
    }

    #[test]
    fn gradient_reaches_every_parameter() {
        let vm = VarMap::new();
        let net = UNet::build(&vm, &small(true), 0, &Device::Cpu).unwrap();
        let (x, t) = batch(4, 64);
        let loss = net.forward(&x, &t).unwrap().sqr().unwrap().mean_all().unwrap();
        let grads = autodiff::backward(&loss).unwrap();
        let vars = super::super::named_vars(&vm);
        assert!(vars.len() > 40, "{} parameters", vars.len());
        for (name, v) in vars {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: ‖g‖² = {norm}");
        }
    }

    /// The U-Net on its fused ops (GroupNorm + SiLU folded into each
    /// convolution) equals the same net on candle's ops (inside
    /// `exact_higher_order`): the output, ∂/∂x and every parameter's gradient,
    /// with random γ, β so a dropped or swapped normalization parameter shows.
    /// f32 through ~20 layers: 1e-3 relative to each gradient's largest entry.
    #[test]
    fn fused_path_matches_candles_ops_on_every_gradient() {
        let vm = VarMap::new();
        let net = UNet::build(&vm, &small(true), 0, &Device::Cpu).unwrap();
        let mut rng = scoregen_core::rng::Rng::new(5, 0);
        let vars = super::super::named_vars(&vm);
        for (name, v) in &vars {
            if name.contains("norm") {
                let shape = v.as_tensor().shape().clone();
                v.set(&rng.randn(shape, DType::F32, &Device::Cpu).unwrap().affine(0.5, 1.0).unwrap()).unwrap();
            }
        }
        let (x, t) = batch(3, 64);
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let run = || net.forward(xv.as_tensor(), &t).unwrap();
        let (ours, theirs) = (run(), autodiff::exact_higher_order(run));
        let scale = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(crate::nets::max_diff(&ours, &theirs) < 1e-4 * scale, "forward");
        let weights = rng.randn(ours.shape(), DType::F32, &Device::Cpu).unwrap();
        let mut named: Vec<(&str, &Tensor)> = vec![("x", xv.as_tensor())];
        named.extend(vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())));
        crate::nets::assert_same_gradients(&ours, &theirs, &weights, &named, (1e-3, 0.0), "U-Net");
    }

    /// A frozen U-Net gives the same output without tracking it (no activation
    /// is kept for a backward that never comes), and the same input gradient
    /// (a likelihood's ∇ₓ), computed without dW, dγ, dβ: the same bits, but
    /// for the attention's f32 rounding (its projections fold when frozen).
    #[test]
    fn frozen_net_keeps_no_graph_and_gives_the_same_input_gradient() {
        let mut net = UNet::build(&VarMap::new(), &small(true), 0, &Device::Cpu).unwrap();
        let (x, t) = batch(3, 64);
        let weights = batch(4, 64).0.narrow(0, 1, 3).unwrap();
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let input_grad = |net: &UNet| {
            let y = net.forward(xv.as_tensor(), &t).unwrap();
            autodiff::grad(&(y * &weights).unwrap(), &xv).unwrap()
        };
        let (y, dx) = (net.forward(&x, &t).unwrap(), input_grad(&net));
        assert!(y.track_op(), "a trainable net tracks its output");
        net.freeze();
        let (y_frozen, dx_frozen) = (net.forward(&x, &t).unwrap(), input_grad(&net));
        // Freezing is the fused kernels' saving (no activations, no dW); on
        // candle's ops (SCOREGEN_FUSED=0, a GPU) the graph stays and only the
        // values below must agree.
        if scoregen_core::autodiff::fused_kernels_allowed(&Device::Cpu) {
            assert!(!y_frozen.track_op(), "a frozen net tracks nothing when x is constant");
        }
        // the same bits but for the attention, whose frozen projections fold
        // (kernels::attention's Folded): other sums of the same terms, so f32
        // rounding apart (1e-6 and 3e-6 of the largest entry here; a wrong
        // fold is off by order one, see that module's tests)
        let rel = |a: &Tensor, b: &Tensor| {
            crate::nets::max_diff(a, b) / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(rel(&y_frozen, &y) < 1e-5, "output: {}", rel(&y_frozen, &y));
        assert!(rel(&dx_frozen, &dx) < 1e-5, "input gradient: {}", rel(&dx_frozen, &dx));
    }

    /// A frozen U-Net's input gradient by its own reverse pass
    /// (kernels::tape): every layer recorded (the tape is complete, with
    /// attention and classes), and the bits of candle's backward through the
    /// same ops: each op's backward is the same function, and no tensor here
    /// is read by more than two ops, so each sum adds the same two terms.
    #[test]
    fn frozen_input_gradient_by_the_tape_is_candles() {
        if !scoregen_core::autodiff::fused_kernels_allowed(&Device::Cpu) {
            return; // SCOREGEN_FUSED=0: no tape, candle's backward is all there is
        }
        let vm = VarMap::new();
        let mut net = UNet::build(&vm, &small(true), 0, &Device::Cpu).unwrap();
        net = net
            .with_classes(crate::nets::seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu).pp("classes"), 3)
            .unwrap();
        net.freeze();
        let (x, t) = batch(3, 64);
        let x = x.reshape((3, 1, 8, 8)).unwrap();
        let labels = Tensor::new(&[0u32, 2, 3], &Device::Cpu).unwrap();
        let weights = batch(4, 64).0.narrow(0, 1, 3).unwrap().reshape((3, 1, 8, 8)).unwrap();
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let input_grad = || {
            let y = net.forward_images_labeled(xv.as_tensor(), &t, Some(&labels)).unwrap();
            let dx = autodiff::backward_first_order(&(&y * &weights).unwrap().sum_all().unwrap()).unwrap();
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                dx.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let before = super::super::kernels::tape::made();
        let (y, dx) = input_grad();
        assert_eq!(super::super::kernels::tape::made(), (before.0 + 1, before.1), "every layer is recorded");
        let (y_candle, dx_candle) = super::super::kernels::tape::without_tape(input_grad);
        assert_eq!(super::super::kernels::tape::made(), (before.0 + 1, before.1), "no tape without it");
        assert_eq!(y, y_candle);
        assert!(dx.iter().any(|&g| g != 0.0));
        assert_eq!(dx, dx_candle);
    }

    #[test]
    fn im2col_conv_matches_candle_conv2d() {
        let vm = VarMap::new();
        let vb = crate::nets::seeded_var_builder(&vm, 1, candle_core::DType::F32, &Device::Cpu);
        let (x, _) = batch(2, 3 * 8 * 8);
        let x = x.reshape((2, 3, 8, 8)).unwrap();
        for (k, stride) in [(3, 1), (3, 2), (1, 1)] {
            let conv = Conv::new(3, 5, k, stride, vb.pp(format!("c{k}{stride}"))).unwrap();
            let ours = conv.forward(&x).unwrap();
            let theirs = x
                .conv2d(&conv.weight, k / 2, stride, 1, 1)
                .unwrap()
                .broadcast_add(&conv.bias.reshape((1, 5, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let err = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 1e-5, "k={k} stride={stride}: max error {err}");
        }
    }

    #[test]
    fn bad_shapes_are_rejected_with_the_field() {
        let e = UNetConfig { image: (1, 6, 6), channel_mult: vec![1, 2, 2], ..small(false) }.validate().unwrap_err();
        assert!(e.to_string().contains("not divisible by 4"), "{e}");
        let e = UNetConfig { groups: 3, ..small(false) }.validate().unwrap_err();
        assert!(e.to_string().contains("model.groups = 3"), "{e}");
        assert_eq!(UNetConfig::square_image(784, 1).unwrap(), (1, 28, 28));
        assert!(UNetConfig::square_image(63, 1).is_err());
    }
}
