//! The Inception-v3 of FID and the Inception Score: pytorch-fid's port
//! (mseitzer/pytorch-fid, `inception.py`: `fid_inception_v3`) of the
//! TensorFlow graph `inception-2015-12-05` that Heusel et al. (2017) and
//! Salimans et al. (2016) computed their numbers with, natively in candle.
//!
//! The network is torchvision's `Inception3` with four patched blocks:
//! `FIDInceptionA`, `FIDInceptionC` and `FIDInceptionE_1` average-pool their
//! pool branch without counting the zero padding (`count_include_pad=False`,
//! as TensorFlow does), and `FIDInceptionE_2` max-pools it. Every convolution
//! is torchvision's `BasicConv2d`: conv (no bias) → BatchNorm (ε = 0.001, its
//! running statistics) → ReLU, here folded into one conv with a bias,
//! w' = w·γ/√(var + ε), b' = β − mean·γ/√(var + ε).
//!
//! Input as pytorch-fid's `InceptionV3`: images in [0, 1], resized to 299×299
//! by bilinear interpolation (`F.interpolate(mode="bilinear",
//! align_corners=False)`), then mapped to [−1, 1] by 2x − 1. Outputs: the
//! 2,048 pool3 features (the global average of `Mixed_7c`, FID's features)
//! and the 1,008 logits pool3·Wᵀ of the `fc` layer without its bias (the
//! original Inception Score code's `softmax/logits/MatMul`, torch-fidelity's
//! `logits_unbiased`; 1,008 = ImageNet's 1,000 classes and 8 unused ones, all
//! kept in the softmax as the original code does).
//!
//! Weights: a safetensors file with the PyTorch state-dict names of
//! `Inception3` (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`,
//! …, `fc.weight`, `fc.bias`), as `scripts/convert-inception.py` writes from
//! pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`. A missing, extra or
//! mis-shaped tensor is refused by name (`num_batches_tracked` counters, which
//! inference does not use, are ignored).

use candle_core::{DType, Device, Tensor, D};
use scoregen_core::error::{Error, Result};
use scoregen_core::rng::Rng;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The network's input side, after resizing.
pub const INPUT_SIZE: usize = 299;
/// pool3 features (FID).
pub const FEATURES: usize = 2048;
/// Logits of the `fc` layer (IS).
pub const CLASSES: usize = 1008;
/// BatchNorm's ε in torchvision's `BasicConv2d`.
const BN_EPS: f64 = 0.001;

/// Where a [`Loader`] takes tensors from: a state dict, or fresh random ones
/// (tests and the parity check's weight file), kept as they were made.
enum Source {
    File { tensors: HashMap<String, Tensor>, path: PathBuf },
    Random { rng: Box<Rng>, made: HashMap<String, Tensor> },
}

/// Hands out the state dict's tensors by name and shape, remembering which
/// were asked for, so what is left over can be refused.
struct Loader {
    source: Source,
    used: BTreeSet<String>,
    device: Device,
}

impl Loader {
    fn take(&mut self, name: String, shape: &[usize], init: impl Fn(&mut Rng, usize) -> f32) -> Result<Tensor> {
        self.used.insert(name.clone());
        let t = match &mut self.source {
            Source::File { tensors, path } => {
                let t = tensors.get(&name).ok_or_else(|| {
                    Error::data(&*path, format!("tensor `{name}` of pytorch-fid's Inception-v3 is missing"))
                })?;
                if t.dims() != shape {
                    return Err(Error::data(
                        &*path,
                        format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.dims()),
                    ));
                }
                t.to_dtype(DType::F32)?
            }
            Source::Random { rng, made } => {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| init(rng, shape.iter().skip(1).product())).collect();
                let t = Tensor::from_vec(v, shape, &Device::Cpu)?;
                made.insert(name, t.clone());
                t
            }
        };
        Ok(t)
    }

    /// torchvision's `BasicConv2d(cin, cout, kernel_size=k, stride, padding)`
    /// at `prefix`, its BatchNorm folded into the convolution.
    fn conv(
        &mut self,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Conv> {
        // random weights: He-scaled convolutions and BatchNorm statistics away
        // from the identity, so a test sees every term of the fold
        let w = self.take(format!("{prefix}.conv.weight"), &[cout, cin, k.0, k.1], |r, fan_in| {
            (r.normal() * (2.0 / fan_in as f64).sqrt()) as f32
        })?;
        let gamma = self.take(format!("{prefix}.bn.weight"), &[cout], |r, _| (0.5 + r.uniform()) as f32)?;
        let beta = self.take(format!("{prefix}.bn.bias"), &[cout], |r, _| (0.1 * r.normal()) as f32)?;
        let mean = self.take(format!("{prefix}.bn.running_mean"), &[cout], |r, _| (0.1 * r.normal()) as f32)?;
        let var = self.take(format!("{prefix}.bn.running_var"), &[cout], |r, _| (0.5 + r.uniform()) as f32)?;
        let scale = gamma.to_dtype(DType::F64)?.broadcast_div(&(var.to_dtype(DType::F64)? + BN_EPS)?.sqrt()?)?;
        let weight = w.to_dtype(DType::F64)?.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bias = (beta.to_dtype(DType::F64)? - mean.to_dtype(DType::F64)?.mul(&scale)?)?;
        Ok(Conv {
            weight: weight.to_dtype(DType::F32)?.to_device(&self.device)?,
            bias: bias.to_dtype(DType::F32)?.reshape((1, cout, 1, 1))?.to_device(&self.device)?,
            stride,
            pad,
        })
    }
}

/// A `BasicConv2d` with its BatchNorm folded: ReLU(conv(x) + b).
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    /// (rows, columns) of zero padding on each side.
    pad: (usize, usize),
}

impl Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.pad;
        // candle pads both axes alike; the 1×7 / 7×1 kernels pad one axis
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?.conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        y.broadcast_add(&self.bias)?.relu()
    }
}

/// 3×3 pooling, stride 1, padding 1, of an Inception block's pool branch.
#[derive(Clone, Copy)]
enum Pool3 {
    /// `F.avg_pool2d(count_include_pad=False)`: each output divided by the
    /// number of in-image pixels of its window (9 inside, 6 on an edge, 4 at a corner).
    AvgValid,
    /// `F.max_pool2d` (padding with −∞ ≡ repeating the edge: the repeated
    /// value is in the window already).
    Max,
}

fn pool3(x: &Tensor, kind: Pool3) -> candle_core::Result<Tensor> {
    match kind {
        Pool3::Max => x.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?.max_pool2d_with_stride((3, 3), (1, 1)),
        Pool3::AvgValid => {
            let (_, _, h, w) = x.dims4()?;
            let sums =
                (x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride((3, 3), (1, 1))? * 9.0)?;
            let span = |i: usize, n: usize| (1 + usize::from(i > 0) + usize::from(i + 1 < n)) as f32;
            let counts: Vec<f32> = (0..h).flat_map(|i| (0..w).map(move |j| span(i, h) * span(j, w))).collect();
            sums.broadcast_div(&Tensor::from_vec(counts, (1, 1, h, w), x.device())?)
        }
    }
}

/// `FIDInceptionA` (Mixed_5b/c/d): 1×1, 5×5, double 3×3 and pool branches.
struct BlockA {
    b1: Conv,
    b5: [Conv; 2],
    b3: [Conv; 3],
    pool: Conv,
}

/// `InceptionB` (Mixed_6a): stride-2 3×3, double 3×3, max pool.
struct BlockB {
    b3: Conv,
    b3dbl: [Conv; 3],
}

/// `FIDInceptionC` (Mixed_6b–e): factorized 7×7 branches.
struct BlockC {
    b1: Conv,
    b7: [Conv; 3],
    b7dbl: [Conv; 5],
    pool: Conv,
}

/// `InceptionD` (Mixed_7a): stride-2 reduction.
struct BlockD {
    b3: [Conv; 2],
    b7x3: [Conv; 4],
}

/// `FIDInceptionE_1` (Mixed_7b, average pool) and `FIDInceptionE_2` (Mixed_7c, max pool).
struct BlockE {
    b1: Conv,
    b3_1: Conv,
    b3_2: [Conv; 2],
    b3dbl_1: [Conv; 2],
    b3dbl_3: [Conv; 2],
    pool: Conv,
    pool_kind: Pool3,
}

fn chain(x: &Tensor, convs: &[Conv]) -> candle_core::Result<Tensor> {
    convs.iter().try_fold(x.clone(), |h, c| c.forward(&h))
}

impl BlockA {
    fn new(l: &mut Loader, p: &str, cin: usize, pool_features: usize) -> Result<Self> {
        Ok(Self {
            b1: l.conv(&format!("{p}.branch1x1"), cin, 64, (1, 1), 1, (0, 0))?,
            b5: [
                l.conv(&format!("{p}.branch5x5_1"), cin, 48, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch5x5_2"), 48, 64, (5, 5), 1, (2, 2))?,
            ],
            b3: [
                l.conv(&format!("{p}.branch3x3dbl_1"), cin, 64, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
                l.conv(&format!("{p}.branch3x3dbl_3"), 96, 96, (3, 3), 1, (1, 1))?,
            ],
            pool: l.conv(&format!("{p}.branch_pool"), cin, pool_features, (1, 1), 1, (0, 0))?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pool = self.pool.forward(&pool3(x, Pool3::AvgValid)?)?;
        Tensor::cat(&[self.b1.forward(x)?, chain(x, &self.b5)?, chain(x, &self.b3)?, pool], 1)
    }
}

impl BlockB {
    fn new(l: &mut Loader, p: &str, cin: usize) -> Result<Self> {
        Ok(Self {
            b3: l.conv(&format!("{p}.branch3x3"), cin, 384, (3, 3), 2, (0, 0))?,
            b3dbl: [
                l.conv(&format!("{p}.branch3x3dbl_1"), cin, 64, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch3x3dbl_2"), 64, 96, (3, 3), 1, (1, 1))?,
                l.conv(&format!("{p}.branch3x3dbl_3"), 96, 96, (3, 3), 2, (0, 0))?,
            ],
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pool = x.max_pool2d_with_stride((3, 3), (2, 2))?;
        Tensor::cat(&[self.b3.forward(x)?, chain(x, &self.b3dbl)?, pool], 1)
    }
}

impl BlockC {
    fn new(l: &mut Loader, p: &str, cin: usize, c7: usize) -> Result<Self> {
        let (row, col) = ((1, 7), (7, 1));
        let (prow, pcol) = ((0, 3), (3, 0));
        Ok(Self {
            b1: l.conv(&format!("{p}.branch1x1"), cin, 192, (1, 1), 1, (0, 0))?,
            b7: [
                l.conv(&format!("{p}.branch7x7_1"), cin, c7, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch7x7_2"), c7, c7, row, 1, prow)?,
                l.conv(&format!("{p}.branch7x7_3"), c7, 192, col, 1, pcol)?,
            ],
            b7dbl: [
                l.conv(&format!("{p}.branch7x7dbl_1"), cin, c7, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch7x7dbl_2"), c7, c7, col, 1, pcol)?,
                l.conv(&format!("{p}.branch7x7dbl_3"), c7, c7, row, 1, prow)?,
                l.conv(&format!("{p}.branch7x7dbl_4"), c7, c7, col, 1, pcol)?,
                l.conv(&format!("{p}.branch7x7dbl_5"), c7, 192, row, 1, prow)?,
            ],
            pool: l.conv(&format!("{p}.branch_pool"), cin, 192, (1, 1), 1, (0, 0))?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pool = self.pool.forward(&pool3(x, Pool3::AvgValid)?)?;
        Tensor::cat(&[self.b1.forward(x)?, chain(x, &self.b7)?, chain(x, &self.b7dbl)?, pool], 1)
    }
}

impl BlockD {
    fn new(l: &mut Loader, p: &str, cin: usize) -> Result<Self> {
        Ok(Self {
            b3: [
                l.conv(&format!("{p}.branch3x3_1"), cin, 192, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch3x3_2"), 192, 320, (3, 3), 2, (0, 0))?,
            ],
            b7x3: [
                l.conv(&format!("{p}.branch7x7x3_1"), cin, 192, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3))?,
                l.conv(&format!("{p}.branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0))?,
                l.conv(&format!("{p}.branch7x7x3_4"), 192, 192, (3, 3), 2, (0, 0))?,
            ],
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pool = x.max_pool2d_with_stride((3, 3), (2, 2))?;
        Tensor::cat(&[chain(x, &self.b3)?, chain(x, &self.b7x3)?, pool], 1)
    }
}

impl BlockE {
    fn new(l: &mut Loader, p: &str, cin: usize, pool_kind: Pool3) -> Result<Self> {
        Ok(Self {
            b1: l.conv(&format!("{p}.branch1x1"), cin, 320, (1, 1), 1, (0, 0))?,
            b3_1: l.conv(&format!("{p}.branch3x3_1"), cin, 384, (1, 1), 1, (0, 0))?,
            b3_2: [
                l.conv(&format!("{p}.branch3x3_2a"), 384, 384, (1, 3), 1, (0, 1))?,
                l.conv(&format!("{p}.branch3x3_2b"), 384, 384, (3, 1), 1, (1, 0))?,
            ],
            b3dbl_1: [
                l.conv(&format!("{p}.branch3x3dbl_1"), cin, 448, (1, 1), 1, (0, 0))?,
                l.conv(&format!("{p}.branch3x3dbl_2"), 448, 384, (3, 3), 1, (1, 1))?,
            ],
            b3dbl_3: [
                l.conv(&format!("{p}.branch3x3dbl_3a"), 384, 384, (1, 3), 1, (0, 1))?,
                l.conv(&format!("{p}.branch3x3dbl_3b"), 384, 384, (3, 1), 1, (1, 0))?,
            ],
            pool: l.conv(&format!("{p}.branch_pool"), cin, 192, (1, 1), 1, (0, 0))?,
            pool_kind,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h3 = self.b3_1.forward(x)?;
        let b3 = Tensor::cat(&[self.b3_2[0].forward(&h3)?, self.b3_2[1].forward(&h3)?], 1)?;
        let hd = chain(x, &self.b3dbl_1)?;
        let bd = Tensor::cat(&[self.b3dbl_3[0].forward(&hd)?, self.b3dbl_3[1].forward(&hd)?], 1)?;
        let pool = self.pool.forward(&pool3(x, self.pool_kind)?)?;
        Tensor::cat(&[self.b1.forward(x)?, b3, bd, pool], 1)
    }
}

/// pytorch-fid's Inception-v3, weights loaded, ready for [`InceptionV3::forward`].
pub struct InceptionV3 {
    stem1: [Conv; 3],
    stem2: [Conv; 2],
    mixed5: [BlockA; 3],
    mixed6a: BlockB,
    mixed6: [BlockC; 4],
    mixed7a: BlockD,
    mixed7: [BlockE; 2],
    /// `fc.weight`ᵀ [2048, 1008].
    fc_t: Tensor,
    device: Device,
}

/// What the network gives for a batch: pool3 features [N, 2048] and the
/// unbiased logits [N, 1008], f32.
pub struct InceptionOutput {
    pub features: Tensor,
    pub logits: Tensor,
}

impl InceptionV3 {
    fn build(l: &mut Loader) -> Result<Self> {
        let none = (0, 0);
        let net = Self {
            stem1: [
                l.conv("Conv2d_1a_3x3", 3, 32, (3, 3), 2, none)?,
                l.conv("Conv2d_2a_3x3", 32, 32, (3, 3), 1, none)?,
                l.conv("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1))?,
            ],
            stem2: [
                l.conv("Conv2d_3b_1x1", 64, 80, (1, 1), 1, none)?,
                l.conv("Conv2d_4a_3x3", 80, 192, (3, 3), 1, none)?,
            ],
            mixed5: [
                BlockA::new(l, "Mixed_5b", 192, 32)?,
                BlockA::new(l, "Mixed_5c", 256, 64)?,
                BlockA::new(l, "Mixed_5d", 288, 64)?,
            ],
            mixed6a: BlockB::new(l, "Mixed_6a", 288)?,
            mixed6: [
                BlockC::new(l, "Mixed_6b", 768, 128)?,
                BlockC::new(l, "Mixed_6c", 768, 160)?,
                BlockC::new(l, "Mixed_6d", 768, 160)?,
                BlockC::new(l, "Mixed_6e", 768, 192)?,
            ],
            mixed7a: BlockD::new(l, "Mixed_7a", 768)?,
            mixed7: [BlockE::new(l, "Mixed_7b", 1280, Pool3::AvgValid)?, BlockE::new(l, "Mixed_7c", 2048, Pool3::Max)?],
            // random fc: logits of a few units, so a random network's softmax is not flat
            fc_t: l
                .take("fc.weight".into(), &[CLASSES, FEATURES], |r, _| (0.3 * r.normal()) as f32)?
                .t()?
                .to_device(&l.device)?,
            device: l.device.clone(),
        };
        // read for the shape check only: the Inception Score uses the logits without it
        l.take("fc.bias".into(), &[CLASSES], |r, _| (0.1 * r.normal()) as f32)?;
        Ok(net)
    }

    /// Loads the weights of a safetensors file (the state-dict names of
    /// torchvision's `Inception3`, as `scripts/convert-inception.py` writes
    /// pytorch-fid's), any float dtype, onto `device`. A tensor missing,
    /// mis-shaped or not part of the network is refused by name.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::data(path, format!("unreadable safetensors file: {e}")))?;
        Self::from_tensors(tensors, path, device)
    }

    /// [`InceptionV3::load`] from tensors already read; `path` names them in errors.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, path: &Path, device: &Device) -> Result<Self> {
        let mut l = Loader {
            source: Source::File { tensors, path: path.to_path_buf() },
            used: BTreeSet::new(),
            device: device.clone(),
        };
        let net = Self::build(&mut l)?;
        let Source::File { tensors, .. } = &l.source else { unreachable!("built from a file") };
        let extra = tensors.keys().filter(|k| !l.used.contains(*k) && !k.ends_with(".num_batches_tracked")).min();
        if let Some(name) = extra {
            return Err(Error::data(path, format!("tensor `{name}` is not a weight of pytorch-fid's Inception-v3")));
        }
        Ok(net)
    }

    /// A network with random weights from `seed` (He-scaled convolutions,
    /// BatchNorm statistics away from the identity), and its state dict, for
    /// tests: what a weight file of the right shapes gives.
    pub fn random(seed: u64, device: &Device) -> Result<(Self, HashMap<String, Tensor>)> {
        let source = Source::Random { rng: Box::new(Rng::new(seed, 0)), made: HashMap::new() };
        let mut l = Loader { source, used: BTreeSet::new(), device: device.clone() };
        let net = Self::build(&mut l)?;
        let Source::Random { made, .. } = l.source else { unreachable!("built at random") };
        Ok((net, made))
    }

    /// pool3 features and unbiased logits of images [N, 3, H, W] in [0, 1]
    /// (any H, W): resized to 299×299, mapped to [−1, 1], then the network.
    pub fn forward(&self, images: &Tensor) -> Result<InceptionOutput> {
        let (_, c, _, _) = images.dims4()?;
        if c != 3 {
            return Err(Error::Invalid(format!("the Inception network takes RGB images, got {c} channel(s)")));
        }
        let x = resize_bilinear(&images.to_device(&self.device)?.to_dtype(DType::F32)?, INPUT_SIZE, INPUT_SIZE)?;
        let x = x.affine(2.0, -1.0)?;
        let x = chain(&x, &self.stem1)?.max_pool2d_with_stride((3, 3), (2, 2))?;
        let mut x = chain(&x, &self.stem2)?.max_pool2d_with_stride((3, 3), (2, 2))?;
        for b in &self.mixed5 {
            x = b.forward(&x)?;
        }
        x = self.mixed6a.forward(&x)?;
        for b in &self.mixed6 {
            x = b.forward(&x)?;
        }
        x = self.mixed7a.forward(&x)?;
        for b in &self.mixed7 {
            x = b.forward(&x)?;
        }
        let features = x.mean(D::Minus1)?.mean(D::Minus1)?;
        let logits = features.matmul(&self.fc_t)?;
        Ok(InceptionOutput { features, logits })
    }
}

/// Bilinear resizing of [N, C, H, W] to [N, C, oh, ow] as PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)` without a scale
/// factor: output pixel i samples the input at s = (i + ½)·(in/out) − ½,
/// clamped below at 0, between ⌊s⌋ and ⌊s⌋ + 1 (the last pixel at the edge)
/// with weights 1 − (s − ⌊s⌋) and s − ⌊s⌋. Separable, so it is two matmuls
/// with sparse interpolation matrices: x·Aᵀ along the width, B·(…) along the height.
pub fn resize_bilinear(x: &Tensor, oh: usize, ow: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let matrix = |out: usize, inp: usize| -> Vec<f32> {
        let scale = inp as f32 / out as f32;
        let mut m = vec![0f32; out * inp];
        for i in 0..out {
            let s = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (s as usize).min(inp - 1);
            let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
            let l1 = s - i0 as f32;
            m[i * inp + i0] += 1.0 - l1;
            m[i * inp + i1] += l1;
        }
        m
    };
    let a_t = Tensor::from_vec(matrix(ow, w), (ow, w), x.device())?.t()?.contiguous()?; // [w, ow]
    let b = Tensor::from_vec(matrix(oh, h), (1, oh, h), x.device())?; // [1, oh, h]
    let along_w = x.reshape((n * c * h, w))?.matmul(&a_t)?.reshape((n * c, h, ow))?;
    b.broadcast_matmul(&along_w)?.reshape((n, c, oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's documented example of `align_corners=False`: [[1, 2], [3, 4]]
    /// to 4×4 gives rows 1 1.25 1.75 2 / 1.5 1.75 2.25 2.5 / 2.5 … / 3 3.25 3.75 4
    /// (weights ¼, ¾ and the clamped edges); and to 3×3 from 2×2 the centre is
    /// the mean (s = ½ exactly).
    #[test]
    fn bilinear_resize_matches_pytorch() {
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let y = resize_bilinear(&x, 4, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [1., 1.25, 1.75, 2., 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3., 3.25, 3.75, 4.];
        assert_eq!(y, want);
        let y = resize_bilinear(&x, 3, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y[4], 2.5);
        // the identity at the same size
        let r = Tensor::arange(0f32, 30., &Device::Cpu).unwrap().reshape((1, 1, 5, 6)).unwrap();
        let same = resize_bilinear(&r, 5, 6).unwrap();
        assert_eq!(
            same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (0..30).map(|v| v as f32).collect::<Vec<_>>()
        );
    }

    /// The pool branches by hand on a 3×3 input 1..9: the average without
    /// the padding (corner (1+2+4+5)/4 = 3, edge (1+2+3+4+5+6)/6 = 3.5, centre
    /// 5), and the max over the window (corner 5, top centre 6, centre 9).
    #[test]
    fn pool_branches_match_pytorch_by_hand() {
        let x = Tensor::arange(1f32, 10., &Device::Cpu).unwrap().reshape((1, 1, 3, 3)).unwrap();
        let avg = pool3(&x, Pool3::AvgValid).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(avg, [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]);
        let max = pool3(&x, Pool3::Max).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(max, [5.0, 6.0, 6.0, 8.0, 9.0, 9.0, 8.0, 9.0, 9.0]);
    }

    /// A random weight file of the right shapes: the network loads it, gives
    /// [N, 2048] features and [N, 1008] logits for any image size, the same
    /// numbers as the network it was saved from; a file with a tensor missing,
    /// mis-shaped or extra is refused in one line naming it.
    #[test]
    fn random_weights_load_and_give_the_shapes() {
        let dev = Device::Cpu;
        let (net, state) = InceptionV3::random(3, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inception.safetensors");
        candle_core::safetensors::save(&state, &path).unwrap();
        let loaded = InceptionV3::load(&path, &dev).unwrap();
        let images = Tensor::rand(0f32, 1., (2, 3, 32, 32), &dev).unwrap();
        let began = std::time::Instant::now();
        let out = loaded.forward(&images).unwrap();
        eprintln!("inception forward: {:.2} s per image", began.elapsed().as_secs_f64() / 2.0);
        assert_eq!((out.features.dims(), out.logits.dims()), (&[2, FEATURES][..], &[2, CLASSES][..]));
        let again = net.forward(&images).unwrap();
        assert_eq!(out.features.to_vec2::<f32>().unwrap(), again.features.to_vec2::<f32>().unwrap());
        let f = out.features.to_vec2::<f32>().unwrap();
        assert!(f.iter().flatten().all(|v| v.is_finite() && *v >= 0.0), "pool3 of ReLUs is ≥ 0");
        assert!(f[0].iter().filter(|v| **v > 0.0).count() > FEATURES / 4, "the random net passes signal");

        let refused = |edit: &dyn Fn(&mut HashMap<String, Tensor>)| {
            let mut s = state.clone();
            edit(&mut s);
            InceptionV3::from_tensors(s, &path, &dev).err().expect("refused").to_string()
        };
        let e = refused(&|s| {
            s.remove("Mixed_6c.branch7x7dbl_4.bn.running_var");
        });
        assert!(
            e.contains("inception.safetensors")
                && e.contains("`Mixed_6c.branch7x7dbl_4.bn.running_var` of pytorch-fid's Inception-v3 is missing"),
            "{e}"
        );
        let e = refused(&|s| {
            s.insert(
                "Mixed_7c.branch3x3_2a.conv.weight".into(),
                Tensor::zeros((384, 384, 3, 1), DType::F32, &dev).unwrap(),
            );
        });
        assert!(
            e.contains("`Mixed_7c.branch3x3_2a.conv.weight` has shape [384, 384, 3, 1], expected [384, 384, 1, 3]"),
            "{e}"
        );
        let e = refused(&|s| {
            s.insert("AuxLogits.fc.weight".into(), Tensor::zeros(3, DType::F32, &dev).unwrap());
        });
        assert!(e.contains("`AuxLogits.fc.weight` is not a weight of pytorch-fid's Inception-v3"), "{e}");
        assert!(!e.contains('\n'));
        // counters PyTorch saves beside the BatchNorm statistics are ignored
        let mut s = state.clone();
        s.insert("Conv2d_1a_3x3.bn.num_batches_tracked".into(), Tensor::zeros(1, DType::F32, &dev).unwrap());
        assert!(InceptionV3::from_tensors(s, &path, &dev).is_ok());
    }
}
