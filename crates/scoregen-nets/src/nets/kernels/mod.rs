//! The fused CPU kernels under the models: dense layers with SiLU
//! ([`dense`]), stride-1/2 convolutions ([`conv`], with Winograd F(4×4, 3×3)
//! products for 3×3 stride-1 layers: [`winograd`]), spatial self-attention
//! ([`attention`]), GroupNorm with SiLU
//! ([`groupnorm`]), and what they share ([`fused`]: im2col, upsampling,
//! the threading and slice helpers). Each is a candle custom op with a
//! first-order backward, tested against candle's own ops on every gradient;
//! `SCOREGEN_FUSED=0` keeps every network on candle's ops instead. A frozen
//! U-Net's input gradient (a likelihood's vector–Jacobian products) runs
//! these ops' backward passes from a [`tape`] of its own instead of candle's
//! `backward`, which zero-fills and adds every gradient.

pub mod attention;
pub mod conv;
pub mod dense;
pub mod fused;
pub mod groupnorm;
pub(crate) mod tape;
pub mod winograd;
