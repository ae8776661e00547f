//! diffusers' `UNet2DModel` (the network of the DDPM and NCSN++ checkpoints)
//! in candle, parameter for parameter, so the field's checkpoints load by
//! name and every scoregen sampler, the likelihood and guidance run on them.
//!
//! conv_in → down blocks (residual blocks, attention, stride-2 or FIR
//! downsampling; NCSN++'s image-space skip path) → mid block (residual,
//! attention, residual, scaled by `mid_block_scale_factor`) → up blocks
//! (over [h, skip] concatenations; NCSN++'s progressive output) →
//! GN, SiLU, conv_out (+ the skip path), divided by σ for Fourier (NCSN++)
//! models, as `diffusers.UNet2DModel.forward` computes it.

pub mod config;
mod layers;

pub use config::{BlockKind, SampleSize, UNet2DConfig};

use super::kernels::groupnorm::{group_norm, GroupNorm};
use super::unet::Conv;
use super::Network;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, linear, Embedding, Linear, VarBuilder};
use layers::{
    constant, fir_downsample, fir_upsample, Attention, Downsample, Resample, ResnetBlock, ResnetOptions, Upsample,
};
use scoregen_core::error::{Error, Result as CrateResult};
use scoregen_core::score::TimestepTimes;
use scoregen_core::sde::{self, Sde};
use std::sync::Arc;

/// How a down block ends (one per level: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum DownEnd {
    None,
    /// `downsamplers.0`: a stride-2 convolution.
    Conv(Downsample),
    /// `resnet_down` (FIR) and `skip_conv` (1×1 from the FIR-downsampled image).
    Skip {
        resnet_down: ResnetBlock,
        skip_conv: Conv,
    },
}

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Attention>,
    end: DownEnd,
}

/// How an up block ends (one per level).
#[allow(clippy::large_enum_variant)]
enum UpEnd {
    None,
    /// `upsamplers.0`: nearest ×2 and a convolution.
    Conv(Upsample),
    /// `skip_norm`, `skip_conv` (the progressive output at this level) and `resnet_up` (FIR).
    Skip {
        skip_norm: GroupNorm,
        skip_conv: Conv,
        resnet_up: ResnetBlock,
    },
}

struct UpBlock {
    kind: BlockKind,
    resnets: Vec<ResnetBlock>,
    /// One per residual block (`AttnUpBlock2D`), or one after them all (`AttnSkipUpBlock2D`).
    attentions: Vec<Attention>,
    end: UpEnd,
}

/// The time features: sinusoidal of the timestep, or Gaussian Fourier of log σ.
enum TimeProj {
    /// diffusers' `get_timestep_embedding`: [sin(t ω_k), cos(t ω_k)] (flipped to
    /// [cos, sin] by `flip_sin_to_cos`), ω_k = exp(−ln(10⁴)·k/(half − freq_shift)).
    Positional { dim: usize, flip: bool, shift: f64 },
    /// `GaussianFourierProjection(log=True)`: [sin(2π W log σ), cos(2π W log σ)].
    Fourier { weight: Tensor },
}

/// diffusers' `UNet2DModel` on images [N, C, H, W] with timesteps [N]
/// (the model's own time input: a DDPM timestep, or σ for NCSN++).
pub struct UNet2D {
    cfg: UNet2DConfig,
    conv_in: Conv,
    time_proj: TimeProj,
    linear_1: Linear,
    linear_2: Linear,
    class_embedding: Option<ClassEmbed>,
    down: Vec<DownBlock>,
    mid: Option<(ResnetBlock, Option<Attention>, ResnetBlock)>,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
    frozen: bool,
}

enum ClassEmbed {
    /// `nn.Embedding(num_class_embeds, time_embed_dim)`.
    Table(Embedding),
    /// `class_embed_type = "timestep"`: the time MLP's twin on the label's time features.
    Timestep(Linear, Linear),
}

impl UNet2D {
    /// The network `cfg` describes, its parameters created or read through `vb`
    /// under diffusers' names.
    pub fn new(cfg: &UNet2DConfig, vb: VarBuilder) -> CrateResult<Self> {
        cfg.validate()?;
        Self::build_layers(cfg, vb).map_err(|e| Error::Invalid(format!("building the UNet2DModel: {e}")))
    }

    /// A network in f32 on `device` whose parameters live in `vm` (new ones drawn from `seed`).
    pub fn build(vm: &candle_nn::VarMap, cfg: &UNet2DConfig, seed: u64, device: &Device) -> CrateResult<Self> {
        Self::new(cfg, super::seeded_var_builder(vm, seed, DType::F32, device))
    }

    fn build_layers(cfg: &UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        let chs = &cfg.block_out_channels;
        let levels = chs.len();
        let temb = cfg.time_embed_dim();
        let eps = cfg.norm_eps;
        let scale_shift = cfg.resnet_time_scale_shift == "scale_shift";
        let groups = cfg.norm_num_groups;
        let skip_groups = |c: usize| (c / 4).min(32);
        let head = |c: usize| cfg.attention_head_dim.unwrap_or(c);
        let opts = |g: usize, g_out: usize, out_scale: f64| ResnetOptions {
            temb,
            groups: g,
            groups_out: g_out,
            eps,
            scale_shift,
            out_scale,
            resample: Resample::None,
            force_shortcut: false,
        };
        let sqrt2 = std::f64::consts::SQRT_2;

        let conv_in = Conv::new(cfg.in_channels, chs[0], 3, 1, vb.pp("conv_in"))?;
        let (time_proj, time_in) = if cfg.fourier() {
            let w = vb.get_with_hints(chs[0], "time_proj.weight", candle_nn::Init::Randn { mean: 0.0, stdev: 16.0 })?;
            (TimeProj::Fourier { weight: w }, 2 * chs[0])
        } else {
            (TimeProj::Positional { dim: chs[0], flip: cfg.flip_sin_to_cos, shift: cfg.freq_shift }, chs[0])
        };
        let linear_1 = linear(time_in, temb, vb.pp("time_embedding.linear_1"))?;
        let linear_2 = linear(temb, temb, vb.pp("time_embedding.linear_2"))?;
        let class_embedding = match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
            (None, Some(k)) => Some(ClassEmbed::Table(embedding(k, temb, vb.pp("class_embedding"))?)),
            (Some("timestep"), _) => Some(ClassEmbed::Timestep(
                linear(time_in, temb, vb.pp("class_embedding.linear_1"))?,
                linear(temb, temb, vb.pp("class_embedding.linear_2"))?,
            )),
            _ => None,
        };

        let mut down = Vec::new();
        let mut out_c = chs[0];
        for (i, kind) in cfg.down_kinds().into_iter().enumerate() {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let (in_c, c) = (out_c, chs[i]);
            out_c = c;
            let last = i + 1 == levels;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let cin = if j == 0 { in_c } else { c };
                let o = if kind.skip {
                    opts(skip_groups(cin), skip_groups(c), sqrt2)
                } else {
                    opts(groups.unwrap_or(32), groups.unwrap_or(32), 1.0)
                };
                resnets.push(ResnetBlock::new(cin, c, &o, vb.pp(format!("resnets.{j}")))?);
                if kind.attention {
                    let (g, scale) = if kind.skip { (32, sqrt2) } else { (groups.unwrap_or(32), 1.0) };
                    attentions.push(Attention::new(c, head(c), Some(g), eps, scale, vb.pp(format!("attentions.{j}")))?);
                }
            }
            let end = if last {
                DownEnd::None
            } else if kind.skip {
                let o = ResnetOptions {
                    resample: Resample::FirDown,
                    force_shortcut: true,
                    ..opts(skip_groups(c), skip_groups(c), sqrt2)
                };
                DownEnd::Skip {
                    resnet_down: ResnetBlock::new(c, c, &o, vb.pp("resnet_down"))?,
                    skip_conv: Conv::new(3, c, 1, 1, vb.pp("skip_conv"))?,
                }
            } else {
                DownEnd::Conv(Downsample::new(c, cfg.downsample_padding, vb.pp("downsamplers.0"))?)
            };
            down.push(DownBlock { resnets, attentions, end });
        }

        let mid = match cfg.mid_block_type {
            None => None,
            Some(_) => {
                let c = chs[levels - 1];
                let g = groups.unwrap_or(skip_groups(c));
                let attn_g = cfg.attn_norm_num_groups.or((!scale_shift).then_some(g));
                let o = opts(g, g, cfg.mid_block_scale_factor);
                let vb = vb.pp("mid_block");
                let first = ResnetBlock::new(c, c, &o, vb.pp("resnets.0"))?;
                let attn = if cfg.add_attention {
                    Some(Attention::new(c, head(c), attn_g, eps, cfg.mid_block_scale_factor, vb.pp("attentions.0"))?)
                } else {
                    None
                };
                Some((first, attn, ResnetBlock::new(c, c, &o, vb.pp("resnets.1"))?))
            }
        };

        let mut up = Vec::new();
        let rev: Vec<usize> = chs.iter().rev().copied().collect();
        let mut out_c = rev[0];
        for (i, kind) in cfg.up_kinds().into_iter().enumerate() {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let prev = out_c;
            let c = rev[i];
            out_c = c;
            let in_c = rev[(i + 1).min(levels - 1)];
            let last = i + 1 == levels;
            let layers = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let res_skip = if j + 1 == layers { in_c } else { c };
                let rin = if j == 0 { prev } else { c };
                let o = match (kind.attention, kind.skip) {
                    // diffusers: groups=min(resnet_in_channels + res_skip_channels // 4, 32)
                    // (precedence as written there)
                    (true, true) => opts((rin + res_skip / 4).min(32), skip_groups(c), sqrt2),
                    (false, true) => opts(skip_groups(rin + res_skip), skip_groups(c), sqrt2),
                    _ => opts(groups.unwrap_or(32), groups.unwrap_or(32), 1.0),
                };
                resnets.push(ResnetBlock::new(rin + res_skip, c, &o, vb.pp(format!("resnets.{j}")))?);
                if kind.attention && !kind.skip {
                    let g = groups.unwrap_or(32);
                    attentions.push(Attention::new(c, head(c), Some(g), eps, 1.0, vb.pp(format!("attentions.{j}")))?);
                }
            }
            if kind.attention && kind.skip {
                attentions.push(Attention::new(c, head(c), Some(32), eps, sqrt2, vb.pp("attentions.0"))?);
            }
            let end = if kind.skip {
                if last {
                    UpEnd::None
                } else {
                    let o = ResnetOptions {
                        resample: Resample::FirUp,
                        force_shortcut: true,
                        ..opts(skip_groups(c), skip_groups(c), sqrt2)
                    };
                    UpEnd::Skip {
                        skip_norm: group_norm(skip_groups(c), c, eps, vb.pp("skip_norm"))?,
                        skip_conv: Conv::new(c, 3, 3, 1, vb.pp("skip_conv"))?,
                        resnet_up: ResnetBlock::new(c, c, &o, vb.pp("resnet_up"))?,
                    }
                }
            } else if last {
                UpEnd::None
            } else {
                UpEnd::Conv(Upsample::new(c, vb.pp("upsamplers.0"))?)
            };
            up.push(UpBlock { kind, resnets, attentions, end });
        }

        let g_out = groups.unwrap_or(skip_groups(chs[0]));
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            time_proj,
            linear_1,
            linear_2,
            class_embedding,
            down,
            mid,
            up,
            conv_norm_out: group_norm(g_out, chs[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: Conv::new(chs[0], cfg.out_channels, 3, 1, vb.pp("conv_out"))?,
            frozen: false,
        })
    }

    pub fn config(&self) -> &UNet2DConfig {
        &self.cfg
    }

    /// The time features of timesteps [N] (f32).
    fn time_features(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.to_dtype(DType::F32)?;
        match &self.time_proj {
            TimeProj::Positional { dim, flip, shift } => {
                let half = dim / 2;
                // in f32 step by step, as diffusers computes them
                let freqs: Vec<f32> = (0..half)
                    .map(|k| (-(10000f64.ln() as f32) * k as f32 / (half as f32 - *shift as f32)).exp())
                    .collect();
                let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
                let arg = t.unsqueeze(1)?.broadcast_mul(&freqs)?;
                let (s, c) = (arg.sin()?, arg.cos()?);
                let e = if *flip { Tensor::cat(&[&c, &s], 1)? } else { Tensor::cat(&[&s, &c], 1)? };
                if dim % 2 == 1 {
                    e.pad_with_zeros(1, 0, 1)
                } else {
                    Ok(e)
                }
            }
            TimeProj::Fourier { weight } => {
                let w = weight.detach().to_dtype(DType::F32)?.unsqueeze(0)?;
                let arg = (t.log()?.unsqueeze(1)?.broadcast_mul(&w)? * (2.0 * std::f64::consts::PI))?;
                Tensor::cat(&[&arg.sin()?, &arg.cos()?], 1)
            }
        }
    }

    /// diffusers' `UNet2DModel(sample, timestep, class_labels).sample` for
    /// images [N, C, H, W] and timesteps [N] (any float dtype).
    ///
    /// A frozen model's input gradient (x tracked, the fused kernels on)
    /// comes from its own reverse pass ([`crate::nets::kernels::tape`]), not candle's.
    pub fn forward_images(&self, x: &Tensor, timesteps: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        if self.frozen && crate::nets::kernels::tape::wanted(x) {
            return crate::nets::kernels::tape::record(x, |x| self.forward_layers(x, timesteps, labels));
        }
        self.forward_layers(x, timesteps, labels)
    }

    /// The layers of [`UNet2D::forward_images`].
    fn forward_layers(&self, x: &Tensor, timesteps: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let f = self.frozen;
        let x = if self.cfg.center_input_sample { ((x * 2.0)? - 1.0)? } else { x.clone() };
        let feats = self.time_features(timesteps)?;
        let mut emb = constant(&self.linear_2, f).forward(&constant(&self.linear_1, f).forward(&feats)?.silu()?)?;
        match (&self.class_embedding, labels) {
            (Some(ClassEmbed::Table(e)), Some(y)) => emb = (emb + e.forward(y)?)?,
            (Some(ClassEmbed::Timestep(l1, l2)), Some(y)) => {
                let c = self.time_features(y)?;
                emb = (emb + constant(l2, f).forward(&constant(l1, f).forward(&c)?.silu()?)?)?
            }
            (Some(_), None) => candle_core::bail!("this UNet2DModel is class-conditional: class labels are needed"),
            (None, Some(_)) => candle_core::bail!("this UNet2DModel has no class embedding"),
            (None, None) => {}
        }
        let emb = emb.to_dtype(x.dtype())?;
        let emb_act = if f { emb.silu()?.detach() } else { emb.silu()? };

        let mut skip_sample = x.clone();
        let mut h = self.conv_in.forward(&x)?;
        let mut res = vec![h.clone()];
        for b in &self.down {
            for (j, r) in b.resnets.iter().enumerate() {
                h = r.forward(&h, &emb_act)?;
                if let Some(a) = b.attentions.get(j) {
                    h = a.forward(&h)?;
                }
                res.push(h.clone());
            }
            match &b.end {
                DownEnd::None => {}
                DownEnd::Conv(d) => {
                    h = d.forward(&h)?;
                    res.push(h.clone());
                }
                DownEnd::Skip { resnet_down, skip_conv } => {
                    h = resnet_down.forward(&h, &emb_act)?;
                    skip_sample = fir_downsample(&skip_sample)?;
                    h = (skip_conv.forward(&skip_sample)? + h)?;
                    res.push(h.clone());
                }
            }
        }
        if let Some((r0, attn, r1)) = &self.mid {
            h = r0.forward(&h, &emb_act)?;
            if let Some(a) = attn {
                h = a.forward(&h)?;
            }
            h = r1.forward(&h, &emb_act)?;
        }
        let mut skip: Option<Tensor> = None;
        for b in &self.up {
            for (j, r) in b.resnets.iter().enumerate() {
                let s = res.pop().expect("one saved activation per up-block residual block");
                h = r.forward(&crate::nets::kernels::fused::cat_channels(&h, &s)?, &emb_act)?;
                if b.kind.attention && !b.kind.skip {
                    h = b.attentions[j].forward(&h)?;
                }
            }
            if b.kind.attention && b.kind.skip {
                h = b.attentions[0].forward(&h)?;
            }
            if b.kind.skip {
                skip = match skip {
                    Some(s) => Some(fir_upsample(&s)?),
                    None => None,
                };
            }
            match &b.end {
                UpEnd::None => {}
                UpEnd::Conv(u) => h = u.forward(&h)?,
                UpEnd::Skip { skip_norm, skip_conv, resnet_up } => {
                    let states = skip_conv.forward_normed(&h, Some(skip_norm), None, None)?;
                    skip = Some(match skip {
                        Some(s) => (s + states)?,
                        None => states,
                    });
                    h = resnet_up.forward(&h, &emb_act)?;
                }
            }
        }
        let mut out = self.conv_out.forward_normed(&h, Some(&self.conv_norm_out), None, None)?;
        if let Some(s) = skip {
            out = (out + s)?;
        }
        if self.cfg.fourier() {
            let sigma = timesteps.to_dtype(out.dtype())?.reshape((out.dim(0)?, 1, 1, 1))?;
            out = out.broadcast_div(&sigma)?;
        }
        Ok(out)
    }

    /// Every layer's parameters become constants ([`Network::freeze`]).
    pub fn freeze_all(&mut self) {
        self.frozen = true;
        self.conv_in.freeze();
        self.conv_out.freeze();
        self.conv_norm_out.freeze();
        for b in &mut self.down {
            b.resnets.iter_mut().for_each(ResnetBlock::freeze);
            b.attentions.iter_mut().for_each(Attention::freeze);
            match &mut b.end {
                DownEnd::None => {}
                DownEnd::Conv(d) => d.freeze(),
                DownEnd::Skip { resnet_down, skip_conv } => {
                    resnet_down.freeze();
                    skip_conv.freeze();
                }
            }
        }
        if let Some((r0, attn, r1)) = &mut self.mid {
            r0.freeze();
            r1.freeze();
            if let Some(a) = attn {
                a.freeze();
            }
        }
        for b in &mut self.up {
            b.resnets.iter_mut().for_each(ResnetBlock::freeze);
            b.attentions.iter_mut().for_each(Attention::freeze);
            match &mut b.end {
                UpEnd::None => {}
                UpEnd::Conv(u) => u.freeze(),
                UpEnd::Skip { skip_norm, skip_conv, resnet_up } => {
                    skip_norm.freeze();
                    skip_conv.freeze();
                    resnet_up.freeze();
                }
            }
        }
    }
}

/// What a [`UNet2D`]'s timestep input is, as a function of the SDE's time t.
#[derive(Clone)]
pub enum TimeInput {
    /// A discrete chain's timesteps: the model is asked at the nearest
    /// timestep i = argmin |t − t_i| (t_i from [`Sde::timestep_times`]), as
    /// [`scoregen_core::score::DiscreteTimeModel`] does (DDPM checkpoints).
    Timesteps(Arc<TimestepTimes>),
    /// σ(t) of the SDE (NCSN++ checkpoints with `ScoreSdeVeScheduler`).
    Sigma(Arc<dyn Sde>),
    /// c·t (score_sde's DDPM++ on the continuous VP SDE: c = 999).
    Scaled(f64),
}

impl TimeInput {
    /// The model's inputs (f32) for times t [N], computed on t's device
    /// without reading t back to the host.
    pub fn of(&self, t: &Tensor) -> Result<Tensor> {
        match self {
            TimeInput::Timesteps(times) => times.nearest_of(t)?.to_dtype(DType::F32),
            TimeInput::Sigma(s) => sde::sigma_of_tensor(s.as_ref(), t)?.to_dtype(DType::F32),
            TimeInput::Scaled(c) => t.to_dtype(DType::F64)?.affine(*c, 0.0)?.to_dtype(DType::F32),
        }
    }
}

/// A [`UNet2D`] as a scoregen [`Network`]: flattened images [N, C·H·W] and
/// the SDE's time t, converted to the model's own time input.
pub struct ImportedUNet {
    pub net: UNet2D,
    pub image: (usize, usize, usize),
    pub time: TimeInput,
}

impl ImportedUNet {
    fn images(&self, x: &Tensor) -> Result<Tensor> {
        let (c, h, w) = self.image;
        if x.rank() == 4 {
            Ok(x.clone())
        } else {
            x.reshape((x.dim(0)?, c, h, w))
        }
    }
}

impl Network for ImportedUNet {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.net.forward_images(&self.images(x)?, &self.time.of(t)?, None)?.reshape(x.shape())
    }

    /// Labels in 0..K (diffusers' class-conditional models have no null label).
    fn forward_labeled(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.net.forward_images(&self.images(x)?, &self.time.of(t)?, Some(labels))?.reshape(x.shape())
    }

    fn classes(&self) -> usize {
        self.net.cfg.num_class_embeds.unwrap_or(0)
    }

    fn freeze(&mut self) {
        self.net.freeze_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::kernels::tape;
    use candle_nn::VarMap;

    /// A two-level DDPM-style model: a stride-2 conv with diffusers'
    /// bottom-right padding (`downsample_padding` 0), attention, skips.
    fn tiny(center_input_sample: bool) -> UNet2DConfig {
        UNet2DConfig {
            sample_size: Some(config::SampleSize::Square(8)),
            in_channels: 2,
            out_channels: 2,
            center_input_sample,
            block_out_channels: vec![4, 8],
            layers_per_block: 1,
            down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
            up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
            norm_num_groups: Some(2),
            downsample_padding: 0,
            ..UNet2DConfig::default()
        }
    }

    /// (y, ∇ₓ⟨w, y⟩) of a model at fixed inputs.
    fn input_grad(net: &UNet2D) -> (Vec<f32>, Vec<f32>) {
        let x = Tensor::arange(0f32, 384.0, &Device::Cpu).unwrap().reshape((3, 2, 8, 8)).unwrap();
        let x = (x * 0.7).unwrap().sin().unwrap();
        let w = x.affine(0.5, -0.25).unwrap().cos().unwrap();
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let t = Tensor::new(&[10f32, 500.0, 990.0], &Device::Cpu).unwrap();
        let y = net.forward_images(xv.as_tensor(), &t, None).unwrap();
        let g = scoregen_core::autodiff::backward_first_order(&(&y * &w).unwrap().sum_all().unwrap()).unwrap();
        let dx = g.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dx)
    }

    /// Every layer of a DDPM-style model is recorded (the padding-0
    /// downsampling included: fused::window, not candle's pad and narrow), and
    /// its own reverse pass gives candle's backward's bits. With
    /// `center_input_sample` (2x − 1 in candle's ops) the tape is incomplete
    /// and candle's backward gives the gradient, the same one.
    #[test]
    fn frozen_input_gradient_by_the_tape_is_candles() {
        if !scoregen_core::autodiff::fused_kernels_allowed(&Device::Cpu) {
            return; // SCOREGEN_FUSED=0: no tape, candle's backward is all there is
        }
        for (center, complete) in [(false, true), (true, false)] {
            let mut net = UNet2D::build(&VarMap::new(), &tiny(center), 0, &Device::Cpu).unwrap();
            net.freeze_all();
            let before = tape::made();
            let (y, dx) = input_grad(&net);
            let after = tape::made();
            let expected = if complete { (before.0 + 1, before.1) } else { (before.0, before.1 + 1) };
            assert_eq!(after, expected, "center_input_sample = {center}");
            let (y_candle, dx_candle) = tape::without_tape(|| input_grad(&net));
            assert_eq!(tape::made(), after, "no tape without it");
            assert_eq!(y, y_candle);
            assert!(dx.iter().any(|&g| g != 0.0));
            assert_eq!(dx, dx_candle, "center_input_sample = {center}");
        }
    }
}
