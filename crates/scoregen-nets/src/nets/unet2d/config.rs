//! diffusers' `UNet2DModel` configuration (`config.json`), read by diffusers'
//! own field names and defaults (`diffusers.models.unets.unet_2d.UNet2DModel.__init__`),
//! so a checkpoint's file is the specification. Only what the field's DDPM and
//! NCSN++ checkpoints use is supported; anything else is refused by
//! [`UNet2DConfig::validate`] in one line that names the field.

use scoregen_core::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An `Option<usize>` whose `None` is diffusers' `null` (a head per
/// channel group, no GroupNorm groups, the default groups): written as the
/// string `"none"`, which TOML can hold where it has no null, and read from
/// `null`, `"none"` or a number, so a run's config.toml says what its JSON said.
mod nullable {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n as u64),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Number(n)) => Ok(Some(n)),
            Some(Raw::Text(t)) if t == "none" => Ok(None),
            Some(Raw::Text(t)) => {
                Err(serde::de::Error::custom(format!("expected a number, null or \"none\", found \"{t}\"")))
            }
        }
    }
}

/// `sample_size`: H = W, or (H, W).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

/// A down or up block of the supported kinds, from diffusers' class name
/// `{Attn}{Skip}{Down|Up}Block2D`: `DownBlock2D`/`UpBlock2D` (residual blocks,
/// then a stride-2 convolution or nearest ×2 and a convolution), with `Attn`
/// self-attention after each residual block (after all of them in
/// `AttnSkipUpBlock2D`), with `Skip` NCSN++'s FIR resampling and image-space
/// skip path (down: the FIR-downsampled image added through a 1×1
/// convolution; up: the progressive output, a 3×3 convolution of GN/SiLU(h)
/// at every level added to the FIR-upsampled path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockKind {
    pub attention: bool,
    pub skip: bool,
}

impl BlockKind {
    /// The kind of a `direction` ("Down" or "Up") block class; diffusers'
    /// get_down_block/get_up_block strip a "UNetRes" prefix. `None` for any
    /// other class (cross-attention, encoder, K-diffusion blocks, …).
    fn parse(name: &str, direction: &str) -> Option<Self> {
        let name = name.strip_prefix("UNetRes").unwrap_or(name);
        let rest = name.strip_suffix("Block2D")?.strip_suffix(direction)?;
        let (attention, rest) = match rest.strip_prefix("Attn") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let skip = match rest {
            "" => false,
            "Skip" => true,
            _ => return None,
        };
        Some(Self { attention, skip })
    }
}

/// diffusers' `UNet2DModel` arguments with diffusers' defaults. Keys starting
/// with `_` (`_class_name`, `_diffusers_version`, …) are metadata and ignored;
/// any other key this reader does not know is refused, as is a known option
/// with a value it does not implement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<SampleSize>,
    pub in_channels: usize,
    pub out_channels: usize,
    /// x ← 2x − 1 before the first convolution.
    pub center_input_sample: bool,
    /// `positional` (sinusoidal features of the timestep) or `fourier` (Gaussian
    /// Fourier features of log σ, and the output divided by σ: NCSN++).
    pub time_embedding_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub dropout: f64,
    pub act_fn: String,
    #[serde(with = "nullable")]
    pub attention_head_dim: Option<usize>,
    #[serde(with = "nullable")]
    pub norm_num_groups: Option<usize>,
    #[serde(with = "nullable")]
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    /// `default` (e added before the second GroupNorm) or `scale_shift`
    /// (GN(h)·(1 + s) + b with (s, b) = P e).
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_embed_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_class_embeds: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_train_timesteps: Option<usize>,
    /// Keys not listed above (kept to be refused or ignored, never serialized).
    #[serde(flatten, skip_serializing)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for UNet2DConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: s(&["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: s(&["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Keys some diffusers versions wrote that current diffusers accepts and
/// ignores for this model (no effect on the network).
const IGNORED_KEYS: &[&str] = &["resnet_pre_norm", "upcast_attention", "use_linear_projection"];

impl UNet2DConfig {
    /// Reads `config.json` (an error names the file and the field).
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| Error::Invalid(format!("{file}: not a UNet2DModel config: {e}")))?;
        if let Some(class) = cfg.extra.get("_class_name").and_then(|v| v.as_str()) {
            if class != "UNet2DModel" {
                return Err(Error::Invalid(format!(
                    "{file}: `_class_name` is {class:?}; scoregen imports diffusers' UNet2DModel only"
                )));
            }
        }
        cfg.validate().map_err(|e| Error::Invalid(format!("{file}: {e}")))?;
        Ok(cfg)
    }

    /// The down block kinds (validated).
    pub fn down_kinds(&self) -> Vec<BlockKind> {
        self.down_block_types.iter().filter_map(|s| BlockKind::parse(s, "Down")).collect()
    }

    /// The up block kinds (validated).
    pub fn up_kinds(&self) -> Vec<BlockKind> {
        self.up_block_types.iter().filter_map(|s| BlockKind::parse(s, "Up")).collect()
    }

    /// Width of the time embedding: `time_embedding_dim` or 4·block_out_channels[0].
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(4 * self.block_out_channels[0])
    }

    /// True for NCSN++-style models (Gaussian Fourier features of log σ).
    pub fn fourier(&self) -> bool {
        self.time_embedding_type == "fourier"
    }

    /// (C, H, W) of the images, when `sample_size` is given.
    pub fn image(&self) -> Option<(usize, usize, usize)> {
        self.sample_size.map(|s| match s {
            SampleSize::Square(n) => (self.in_channels, n, n),
            SampleSize::Rect([h, w]) => (self.in_channels, h, w),
        })
    }

    /// Multiply–add FLOPs (2 per multiply–add) of one forward pass over `batch`
    /// images of H×W: every convolution (k²·C_in·C_out per output position),
    /// linear layer (the time and class embeddings, each residual block's time
    /// projection, attention's q, k, v and output projections) and attention's
    /// two matmuls (QKᵀ and AV, (HW)²·C each); normalizations, activations,
    /// softmax and additions are not counted. `None` for the NCSN++ `Skip`
    /// blocks (FIR resampling and the image-space path are not counted here).
    pub fn forward_flops(&self, batch: usize, h: usize, w: usize) -> Option<f64> {
        let (down, up) = (self.down_kinds(), self.up_kinds());
        if down.iter().chain(&up).any(|k| k.skip) || self.fourier() {
            return None;
        }
        let chs = &self.block_out_channels;
        let levels = chs.len();
        let temb = self.time_embed_dim() as f64;
        let conv = |k: usize, cin: usize, cout: usize, pixels: usize| (k * k * cin * cout * pixels) as f64;
        // per image: conv1, the time projection, conv2, and a 1×1 shortcut when the channels change
        let resnet = |cin: usize, cout: usize, pixels: usize| {
            let short = if cin == cout { 0.0 } else { conv(1, cin, cout, pixels) };
            conv(3, cin, cout, pixels) + temb * cout as f64 + conv(3, cout, cout, pixels) + short
        };
        let attention = |c: usize, pixels: usize| (4 * pixels * c * c + 2 * pixels * pixels * c) as f64;
        let pixels = |level: usize| (h >> level) * (w >> level);
        // the time embedding (linear_1, linear_2), once per image
        let mut macs = chs[0] as f64 * temb + temb * temb;
        if self.class_embed_type.as_deref() == Some("timestep") {
            macs += chs[0] as f64 * temb + temb * temb;
        }
        macs += conv(3, self.in_channels, chs[0], pixels(0));
        // the skip stack's channel counts, as the up blocks consume them
        let mut skips = vec![chs[0]];
        let mut prev = chs[0];
        for (i, kind) in down.iter().enumerate() {
            for j in 0..self.layers_per_block {
                let cin = if j == 0 { prev } else { chs[i] };
                macs += resnet(cin, chs[i], pixels(i));
                if kind.attention {
                    macs += attention(chs[i], pixels(i));
                }
                skips.push(chs[i]);
            }
            prev = chs[i];
            if i + 1 < levels {
                macs += conv(3, chs[i], chs[i], pixels(i + 1));
                skips.push(chs[i]);
            }
        }
        if self.mid_block_type.is_some() {
            let c = chs[levels - 1];
            macs += 2.0 * resnet(c, c, pixels(levels - 1));
            if self.add_attention {
                macs += attention(c, pixels(levels - 1));
            }
        }
        for (i, kind) in up.iter().enumerate() {
            let level = levels - 1 - i;
            let c = chs[level];
            for _ in 0..=self.layers_per_block {
                let skip = skips.pop()?;
                macs += resnet(prev + skip, c, pixels(level));
                if kind.attention {
                    macs += attention(c, pixels(level));
                }
                prev = c;
            }
            if i + 1 < levels {
                macs += conv(3, c, c, pixels(level - 1));
            }
        }
        macs += conv(3, chs[0], self.out_channels, pixels(0));
        Some(2.0 * batch as f64 * macs)
    }

    /// Refuses what this implementation does not compute exactly as diffusers does.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::Invalid(format!("`{field}`: {msg}")));
        for key in self.extra.keys() {
            if !key.starts_with('_') && !IGNORED_KEYS.contains(&key.as_str()) {
                return bad(key, "is not a UNet2DModel option scoregen supports".into());
            }
        }
        let levels = self.block_out_channels.len();
        if levels == 0 || self.block_out_channels.contains(&0) {
            return bad("block_out_channels", "needs at least one level, each with ≥ 1 channel".into());
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return bad(
                "down_block_types",
                format!(
                    "{} down and {} up block types for {} levels in block_out_channels (diffusers needs one of each per level)",
                    self.down_block_types.len(),
                    self.up_block_types.len(),
                    levels
                ),
            );
        }
        for t in &self.down_block_types {
            if BlockKind::parse(t, "Down").is_none() {
                return bad(
                    "down_block_types",
                    format!(
                        "{t:?} is not supported (DownBlock2D, AttnDownBlock2D, SkipDownBlock2D, AttnSkipDownBlock2D)"
                    ),
                );
            }
        }
        for t in &self.up_block_types {
            if BlockKind::parse(t, "Up").is_none() {
                return bad(
                    "up_block_types",
                    format!("{t:?} is not supported (UpBlock2D, AttnUpBlock2D, SkipUpBlock2D, AttnSkipUpBlock2D)"),
                );
            }
        }
        let skip = self.down_kinds().iter().any(|k| k.skip) || self.up_kinds().iter().any(|k| k.skip);
        if skip && self.in_channels != 3 {
            // diffusers builds the skip convolutions with 3 image channels whatever in_channels says
            return bad("in_channels", format!("is {}; the Skip blocks of diffusers assume 3", self.in_channels));
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block", "must be ≥ 1".into());
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(other) => {
                return bad("mid_block_type", format!("{other:?} is not supported (UNetMidBlock2D or null)"))
            }
        }
        match self.time_embedding_type.as_str() {
            "positional" | "fourier" => {}
            other => return bad("time_embedding_type", format!("{other:?} is not supported (positional or fourier)")),
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return bad("act_fn", format!("{:?} is not supported (silu)", self.act_fn));
        }
        if !matches!(self.resnet_time_scale_shift.as_str(), "default" | "scale_shift") {
            return bad(
                "resnet_time_scale_shift",
                format!("{:?} is not supported (default or scale_shift)", self.resnet_time_scale_shift),
            );
        }
        if self.downsample_type != "conv" {
            return bad("downsample_type", format!("{:?} is not supported (conv)", self.downsample_type));
        }
        if self.upsample_type != "conv" {
            return bad("upsample_type", format!("{:?} is not supported (conv)", self.upsample_type));
        }
        if self.downsample_padding > 1 {
            return bad("downsample_padding", format!("is {}; 0 or 1 are supported", self.downsample_padding));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("must be in [0, 1) (got {})", self.dropout));
        }
        match (self.class_embed_type.as_deref(), self.num_class_embeds) {
            (None, _) | (Some("timestep"), _) => {}
            (Some(other), _) => {
                return bad(
                    "class_embed_type",
                    format!("{other:?} is not supported (null with num_class_embeds, or timestep)"),
                )
            }
        }
        let plain = self.down_kinds().iter().any(|k| !k.skip) || self.up_kinds().iter().any(|k| !k.skip);
        if plain && self.norm_num_groups.is_none() {
            return bad("norm_num_groups", "is null; DownBlock2D/UpBlock2D and their Attn forms need a number".into());
        }
        for (l, &c) in self.block_out_channels.iter().enumerate() {
            if let Some(g) = self.norm_num_groups {
                if g == 0 || c % g != 0 {
                    return bad("norm_num_groups", format!("{g} does not divide block_out_channels[{l}] = {c}"));
                }
            }
            if let Some(d) = self.attention_head_dim {
                let attn = self.down_kinds()[l].attention
                    || self.up_kinds()[levels - 1 - l].attention
                    || (l + 1 == levels && self.add_attention && self.mid_block_type.is_some());
                if attn && (d == 0 || c % d != 0) {
                    return bad("attention_head_dim", format!("{d} does not divide block_out_channels[{l}] = {c}"));
                }
            }
        }
        if let Some((_, h, w)) = self.image() {
            let f = 1usize << (levels - 1);
            if h % f != 0 || w % f != 0 {
                return bad("sample_size", format!("{h}×{w} is not divisible by 2^{} = {f}", levels - 1));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// google/ddpm-cifar10-32's unet/config.json as diffusers wrote it.
    const DDPM_CIFAR10: &str = r#"{
      "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu",
      "attention_head_dim": null, "block_out_channels": [128, 256, 256, 256],
      "center_input_sample": false,
      "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
      "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3,
      "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
      "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
      "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    }"#;

    #[test]
    fn reads_the_ddpm_cifar10_config_with_diffusers_defaults() {
        let c = UNet2DConfig::from_json(DDPM_CIFAR10, "config.json").unwrap();
        assert_eq!(c.block_out_channels, vec![128, 256, 256, 256]);
        assert_eq!(c.attention_head_dim, None);
        assert_eq!(c.downsample_padding, 0);
        assert_eq!(c.image(), Some((3, 32, 32)));
        assert_eq!(c.time_embed_dim(), 512);
        assert_eq!(c.down_kinds()[1], BlockKind { attention: true, skip: false });
        assert_eq!(BlockKind::parse("UNetResAttnSkipUpBlock2D", "Up"), Some(BlockKind { attention: true, skip: true }));
        for other in ["CrossAttnDownBlock2D", "DownEncoderBlock2D", "KDownBlock2D", "AttnUpBlock2D"] {
            assert_eq!(BlockKind::parse(other, "Down"), None, "{other}");
        }
        // a default not in the file
        assert_eq!(c.resnet_time_scale_shift, "default");
    }

    /// A two-level model counted by hand (every conv, linear and attention matmul, per image):
    /// time 4·16 + 16·16; conv_in 9·1·4·16; down 0 resnet 4→4 at 4×4 (2·9·4·4·16 + 16·4) and its
    /// stride-2 conv 9·4·4·4; down 1 resnet 4→8 at 2×2 (9·4·8·4 + 16·8 + 9·8·8·4 + 4·8·4) with
    /// attention (4·4·8² + 2·4²·8); mid 2 resnets 8→8 + attention; up 0 resnets 16→8 and 12→8
    /// with attention, then the ×2 conv 9·8·8·16; up 1 resnets 12→4 and 8→4 at 4×4; conv_out.
    /// The sum, 65,600 multiply–adds, is also torch.utils.flop_counter's count of diffusers'
    /// UNet2DModel with this config (131,200 FLOPs); google/ddpm-cifar10-32's is 12.4437 GFLOP.
    #[test]
    fn forward_flops_match_a_hand_count_and_diffusers() {
        let tiny = UNet2DConfig {
            sample_size: Some(SampleSize::Square(4)),
            in_channels: 1,
            out_channels: 1,
            block_out_channels: vec![4, 8],
            layers_per_block: 1,
            down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
            up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
            norm_num_groups: Some(4),
            ..UNet2DConfig::default()
        };
        let hand = [
            64 + 256,
            576,
            2 * 2304 + 64,
            576,
            1152 + 128 + 2304 + 128,
            1024 + 256,
            2 * (2 * 2304 + 128) + 1280,
            4608 + 128 + 2304 + 512 + 1280,
            3456 + 128 + 2304 + 384 + 1280,
            9216,
            6912 + 64 + 2304 + 768,
            4608 + 64 + 2304 + 512,
            576,
        ];
        let macs: usize = hand.iter().sum();
        assert_eq!(macs, 65_600);
        assert_eq!(tiny.forward_flops(1, 4, 4), Some(2.0 * macs as f64));
        assert_eq!(tiny.forward_flops(3, 4, 4), Some(6.0 * macs as f64));
        let ddpm = UNet2DConfig::from_json(DDPM_CIFAR10, "config.json").unwrap();
        assert_eq!(ddpm.forward_flops(1, 32, 32), Some(12_443_713_536.0));
        // NCSN++'s FIR resampling is not counted: no number rather than a wrong one
        let skip =
            UNet2DConfig { down_block_types: vec!["SkipDownBlock2D".into(), "AttnSkipDownBlock2D".into()], ..tiny };
        assert_eq!(skip.forward_flops(1, 4, 4), None);
    }

    /// Each refusal names its field.
    #[test]
    fn unsupported_options_are_refused_by_name() {
        for (key, value, field) in [
            (
                "up_block_types",
                r#"["UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]"#,
                "up_block_types",
            ),
            ("time_embedding_type", r#""learned""#, "time_embedding_type"),
            ("act_fn", r#""mish""#, "act_fn"),
            ("cross_attention_dim", "768", "cross_attention_dim"),
            ("norm_num_groups", "48", "norm_num_groups"),
            ("block_out_channels", "[128, 256, 256]", "down_block_types"),
            ("downsample_type", r#""resnet""#, "downsample_type"),
        ] {
            let mut json: serde_json::Value = serde_json::from_str(DDPM_CIFAR10).unwrap();
            json[key] = serde_json::from_str(value).unwrap();
            let err = UNet2DConfig::from_json(&json.to_string(), "m/config.json").map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")) && err.contains("m/config.json"), "{key}: {err}");
        }
    }
}
