//! MLPs for points in R^D, with a choice of conditioning on time / noise level.

use super::kernels::{dense, fused};
use super::{ClassEmbedding, GaussianFourier, Network};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, linear, Embedding, Linear, VarBuilder};

/// Width, depth and embedding size of an [`Mlp`].
#[derive(Debug, Clone, PartialEq)]
pub struct MlpConfig {
    /// Hidden units per layer.
    pub width: usize,
    /// Number of hidden layers.
    pub depth: usize,
    /// Size of the time / level embedding (even for Fourier features).
    pub embed_dim: usize,
    /// Standard deviation of the Fourier frequencies.
    pub embed_scale: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { width: 128, depth: 3, embed_dim: 32, embed_scale: 4.0 }
    }
}

/// What the network is told about t.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Conditioning {
    /// Nothing: s_θ(x) (noise-free score matching, energies, NCSNv2's s_θ(x)/σ).
    None,
    /// Gaussian Fourier features of continuous t (score_sde).
    Fourier,
    /// A learned embedding of the noise level i ∈ {0, …, L−1}, recovered from
    /// t on the ladder as i = round(t·(L−1)) (NCSN's conditional network).
    Levels(usize),
}

enum Embed {
    None,
    Fourier(GaussianFourier),
    Levels(Embedding, usize),
}

/// h₀ = [x, e(t)], h_{l+1} = SiLU(W_l h_l + U_l e(t) + b_l), out = W h + b, with
/// e(t) the conditioning embedding (absent for unconditional nets). The
/// embedding enters every hidden layer so deep layers still see t.
pub struct Mlp {
    embed: Embed,
    input: Linear,
    time: Vec<Linear>,
    hidden: Vec<Linear>,
    output: Linear,
    /// Size of e(t) (0 without one).
    embed_dim: usize,
    /// c(y), added to e(t), for a class-conditional network.
    classes: Option<ClassEmbedding>,
    /// Parameters are constants ([`Network::freeze`]).
    frozen: bool,
}

impl Mlp {
    /// Parameters are created (or loaded) through `vb` under the names
    /// `input`, `time.{l}`, `hidden.{l}`, `output` (and `levels` for a level embedding).
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        cfg: &MlpConfig,
        cond: Conditioning,
        seed: u64,
    ) -> Result<Self> {
        let embed = match cond {
            Conditioning::None => Embed::None,
            Conditioning::Fourier => {
                Embed::Fourier(GaussianFourier::new(cfg.embed_dim, cfg.embed_scale, seed, vb.dtype(), vb.device())?)
            }
            Conditioning::Levels(l) => Embed::Levels(embedding(l, cfg.embed_dim, vb.pp("levels"))?, l),
        };
        let e = if matches!(embed, Embed::None) { 0 } else { cfg.embed_dim };
        let input = linear(in_dim + e, cfg.width, vb.pp("input"))?;
        let time = if e == 0 {
            Vec::new()
        } else {
            (0..cfg.depth.saturating_sub(1))
                .map(|l| linear(e, cfg.width, vb.pp(format!("time.{l}"))))
                .collect::<Result<_>>()?
        };
        let hidden = (0..cfg.depth.saturating_sub(1))
            .map(|l| linear(cfg.width, cfg.width, vb.pp(format!("hidden.{l}"))))
            .collect::<Result<_>>()?;
        let output = linear(cfg.width, out_dim, vb.pp("output"))?;
        Ok(Self { embed, input, time, hidden, output, embed_dim: e, classes: None, frozen: false })
    }

    /// A network in f32 on `device` whose parameters live in `vm`: new ones are
    /// drawn from `seed` (on the CPU, then copied: the same values on every
    /// device), ones already in `vm` (a loaded checkpoint) are reused.
    pub fn build(
        vm: &candle_nn::VarMap,
        in_dim: usize,
        out_dim: usize,
        cfg: &MlpConfig,
        cond: Conditioning,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let vb = super::seeded_var_builder(vm, seed, DType::F32, device);
        Self::new(vb, in_dim, out_dim, cfg, cond, seed)
    }

    /// Makes the network class-conditional: e(t) becomes e(t) + c(y), with c a
    /// [`ClassEmbedding`] of K classes (parameters `classes.weight` under `vb`).
    /// Needs a time embedding to add to (Fourier or level conditioning).
    pub fn with_classes(mut self, vb: VarBuilder, classes: usize) -> Result<Self> {
        if self.embed_dim == 0 {
            candle_core::bail!("a class-conditional MLP needs a time embedding (model.kind = time-mlp)");
        }
        self.classes = Some(ClassEmbedding::new(classes, self.embed_dim, vb)?);
        Ok(self)
    }

    fn embedding(&self, t: &Tensor, dtype: DType) -> Result<Option<Tensor>> {
        Ok(match &self.embed {
            Embed::None => None,
            Embed::Fourier(f) => Some(f.forward(t)?.to_dtype(dtype)?),
            Embed::Levels(table, l) => {
                // level round(t·(L − 1)), on t's device
                let top = (*l - 1) as f64;
                let ids = t.to_dtype(DType::F64)?.affine(top, 0.0)?.round()?.clamp(0.0, top)?.to_dtype(DType::U32)?;
                Some(table.forward(&ids)?.to_dtype(dtype)?)
            }
        })
    }
}

impl Network for Mlp {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        match &self.classes {
            // the unconditional score of a conditional net is its null label
            Some(c) => self.forward_labeled(x, t, &Tensor::full(c.classes() as u32, x.dim(0)?, x.device())?),
            None => self.forward_with(x, t, None),
        }
    }

    /// One forward-mode pass of the fused op ([`dense::mlp_with_trace`]) for an
    /// unconditional net whose output has x's size, on its fused path.
    fn forward_with_trace(&self, x: &Tensor, t: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let (d, out) = (x.dim(1)?, self.output.weight().dim(0)?);
        if self.classes.is_some() || x.rank() != 2 || out != d {
            return Ok(None);
        }
        // the parameters first: off the fused path nothing else is computed
        let Some((theta, dims)) = self.fused_parameters(x, d)? else { return Ok(None) };
        let (first, _) = self.input_of(x, t, None)?;
        dense::mlp_with_trace(&first.detach(), &theta.detach(), dims).map(Some)
    }

    fn forward_labeled(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Result<Tensor> {
        match &self.classes {
            Some(c) => self.forward_with(x, t, Some(c.forward(labels)?.to_dtype(x.dtype())?)),
            None => candle_core::bail!("this network is not class-conditional (train it with model.classes = K)"),
        }
    }

    fn classes(&self) -> usize {
        self.classes.as_ref().map_or(0, |c| c.classes())
    }

    fn freeze(&mut self) {
        self.frozen = true;
    }
}

impl Mlp {
    /// The whole network as one fused op ([`dense`]) on a = [x, e]: f32 on
    /// the CPU, outside [`scoregen_core::autodiff::exact_higher_order`]; `None` when
    /// those do not hold (candle's ops then run the same network). θ is the
    /// parameters concatenated in [`dense::Dims`]'s order; the hidden and time
    /// biases enter as their sum.
    fn fused(&self, a: &Tensor, d: usize) -> Result<Option<Tensor>> {
        match self.fused_parameters(a, d)? {
            Some((theta, dims)) => dense::mlp(a, &theta, dims).map(Some),
            None => Ok(None),
        }
    }

    /// θ and the sizes of the fused op for x ∈ R^d (or a = [x, e], on x's
    /// device and in its dtype), when it applies (see [`Mlp::fused`]).
    fn fused_parameters(&self, a: &Tensor, d: usize) -> Result<Option<(Tensor, dense::Dims)>> {
        if !scoregen_core::autodiff::fused_kernels_allowed(a.device()) || a.dtype() != DType::F32 {
            return Ok(None);
        }
        let bias = |layer: &Linear| layer.bias().cloned();
        let Some(mut parts) = bias(&self.input).map(|b| vec![self.input.weight().flatten_all(), Ok(b)]) else {
            return Ok(None);
        };
        for (l, layer) in self.hidden.iter().enumerate() {
            let Some(b) = bias(layer) else { return Ok(None) };
            parts.push(layer.weight().flatten_all());
            match self.time.get(l) {
                Some(time) => {
                    let Some(c) = bias(time) else { return Ok(None) };
                    parts.push(time.weight().flatten_all());
                    parts.push(b + c);
                }
                None => parts.push(Ok(b)),
            }
        }
        let Some(bo) = bias(&self.output) else { return Ok(None) };
        parts.push(self.output.weight().flatten_all());
        parts.push(Ok(bo));
        let mut theta = Tensor::cat(&parts.into_iter().collect::<Result<Vec<_>>>()?, 0)?;
        if self.frozen || scoregen_core::autodiff::parameters_constant() {
            // only evaluated: no activations kept unless x is tracked, and a
            // likelihood's ∇ₓ skips every ∂/∂θ GEMM
            theta = theta.detach();
        }
        let dims = dense::Dims {
            d,
            e: self.embed_dim,
            width: self.input.weight().dim(0)?,
            hidden: self.hidden.len(),
            out: self.output.weight().dim(0)?,
        };
        Ok(Some((theta, dims)))
    }

    /// [x, e(t) (+ c(y))]: the layers' input.
    fn input_of(&self, x: &Tensor, t: &Tensor, class: Option<Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let mut emb = self.embedding(t, x.dtype())?;
        if let (Some(e), Some(c)) = (&emb, class) {
            emb = Some((e + c)?);
        }
        let first = match &emb {
            Some(e) => Tensor::cat(&[x, e], 1)?,
            None => x.clone(),
        };
        Ok((first, emb))
    }

    /// The layers, with the class embedding (when given) added to e(t).
    fn forward_with(&self, x: &Tensor, t: &Tensor, class: Option<Tensor>) -> Result<Tensor> {
        let (first, emb) = self.input_of(x, t, class)?;
        if let Some(fused) = self.fused(&first, x.dim(1)?)? {
            return Ok(fused);
        }
        // fused SiLU and bias (nets::fused): one pass each, exact gradients of every order
        let mut h = fused::silu(&fused::linear(&first, &self.input)?)?;
        for (l, layer) in self.hidden.iter().enumerate() {
            let pre = match (&emb, self.time.get(l)) {
                // W h + U e + (b + c): one bias pass for both layers
                (Some(e), Some(time)) => {
                    let y = (h.matmul(&layer.weight().t()?)? + e.matmul(&time.weight().t()?)?)?;
                    match (layer.bias(), time.bias()) {
                        (Some(b), Some(c)) => fused::add_bias(&y, &(b + c)?)?,
                        _ => y,
                    }
                }
                _ => fused::linear(&h, layer)?,
            };
            h = fused::silu(&pre)?;
        }
        fused::linear(&h, &self.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::max_diff;
    use candle_nn::VarMap;
    use scoregen_core::autodiff;

    /// The forward-mode pass ([`dense::mlp_with_trace`]) through every head
    /// equals the score of the ordinary path and autodiff's exact trace of it
    /// (D vector–Jacobian products), per example: each output kind and EDM's
    /// preconditioning, on VP and VE, D = 2 and 3, with Fourier, level and no
    /// conditioning, one to three hidden layers, a batch that is not a
    /// multiple of the row blocks, one t per row and one t for all (the bias
    /// folding). f32 sums of ≤ 24·3 terms: 1e-4 relative to the largest
    /// entry is many times their rounding and far below a dropped factor
    /// (a missing c_in, the D·a term, one direction's tangent).
    #[test]
    fn forward_mode_trace_equals_autodiff_through_every_head() {
        use scoregen_core::likelihood::trace::{evaluate_tracked, exact_trace_autodiff};
        use scoregen_core::score::{Edm, Head, Output, ScoreFn};
        use scoregen_core::sde::{Sde, VeSde, VpSde};
        use std::sync::Arc;
        let dev = Device::Cpu;
        let heads = [
            Head::Plain(Output::Score),
            Head::Plain(Output::ScoreOverStd),
            Head::Plain(Output::Epsilon),
            Head::Plain(Output::V),
            Head::Plain(Output::X0),
            Head::Edm(Edm { sigma_data: 0.5 }),
        ];
        let sdes: [Arc<dyn Sde>; 2] = [Arc::new(VpSde::default()), Arc::new(VeSde::default())];
        let cases = [(2, 3, Conditioning::Fourier), (3, 2, Conditioning::Levels(4)), (2, 1, Conditioning::None)];
        let mut checked = 0;
        for (i, (dim, depth, cond)) in cases.into_iter().enumerate() {
            let cfg = MlpConfig { width: 24, depth, embed_dim: 8, embed_scale: 2.0 };
            let mut net = Mlp::build(&VarMap::new(), dim, dim, &cfg, cond, 3 + i as u64, &dev).unwrap();
            net.freeze();
            let mut rng = scoregen_core::rng::Rng::new(40 + i as u64, 0);
            let x = rng.randn((37, dim), DType::F32, &dev).unwrap();
            let per_row = rng.rand_uniform(37, 0.05, 1.0, DType::F32, &dev).unwrap();
            let shared = Tensor::full(0.3f32, 37, &dev).unwrap();
            for t in [&per_row, &shared] {
                for sde in &sdes {
                    for head in heads {
                        let score = crate::nets::NetScore { net: &net, sde: sde.clone(), head };
                        let both = score.score_with_divergence(&x, t).unwrap();
                        if !scoregen_core::autodiff::fused_kernels_allowed(&dev) {
                            // SCOREGEN_FUSED=0: no fused op, so no trace; the likelihood differentiates
                            assert!(both.is_none(), "a trace without the fused kernels");
                            checked += 1;
                            continue;
                        }
                        let (s, div) = both.expect("the fused MLP's trace");
                        let want_s = score.score(&x, t).unwrap();
                        let want_div = exact_trace_autodiff(&evaluate_tracked(&score, &x, t).unwrap()).unwrap();
                        let case = format!("D = {dim}, depth {depth}, {cond:?}, {head:?}, {}", sde.name());
                        let scale = |v: &Tensor| v.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                        assert!(max_diff(&s, &want_s) < 1e-4 * scale(&want_s), "{case}: score");
                        assert_eq!(div.dims(), [37], "{case}");
                        let err = max_diff(&div, &want_div.to_dtype(DType::F32).unwrap());
                        assert!(err < 1e-4 * scale(&want_div).max(1.0), "{case}: divergence off by {err}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 3 * 2 * 2 * 6);
    }

    /// The fused op ([`dense`]) and candle's ops run the same network: equal
    /// outputs and equal gradients for every parameter and for x (f32
    /// rounding only), for each conditioning, a class-conditional net and a
    /// one-layer net. Catches a parameter concatenated out of order. Width
    /// 40 runs the fused SiLU pass's 32-entry steps and its remainder.
    #[test]
    fn fused_and_candle_paths_agree() {
        let dev = Device::Cpu;
        let cfg = MlpConfig { width: 40, depth: 3, embed_dim: 8, embed_scale: 2.0 };
        let shallow = MlpConfig { depth: 1, ..cfg.clone() };
        let cases = [
            (cfg.clone(), Conditioning::Fourier, 0),
            (cfg.clone(), Conditioning::Fourier, 3),
            (cfg.clone(), Conditioning::Levels(5), 0),
            (cfg.clone(), Conditioning::None, 0),
            (shallow, Conditioning::Fourier, 0),
        ];
        for (i, (cfg, cond, classes)) in cases.into_iter().enumerate() {
            let vm = VarMap::new();
            let mut net = Mlp::build(&vm, 2, 2, &cfg, cond, 7, &dev).unwrap();
            if classes > 0 {
                net = net.with_classes(crate::nets::seeded_var_builder(&vm, 8, DType::F32, &dev), classes).unwrap();
            }
            let mut rng = scoregen_core::rng::Rng::new(i as u64, 1);
            let x = candle_core::Var::from_tensor(&rng.randn((33, 2), DType::F32, &dev).unwrap()).unwrap();
            let t = rng.rand_uniform(33, 0.0, 1.0, DType::F32, &dev).unwrap();
            let w = rng.randn((33, 2), DType::F32, &dev).unwrap();
            let run = || {
                let out = net.forward(x.as_tensor(), &t).unwrap();
                let grads = autodiff::backward(&(&out * &w).unwrap().sum_all().unwrap()).unwrap();
                let mut all = vec![out, grads.get(x.as_tensor()).unwrap().clone()];
                for (_, v) in crate::nets::named_vars(&vm) {
                    all.push(grads.get(v.as_tensor()).unwrap().clone());
                }
                all
            };
            let fused = run();
            let exact = autodiff::exact_higher_order(run);
            for (k, (a, b)) in fused.iter().zip(&exact).enumerate() {
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                // f32 sums of ≤ 40 products in another order: ≤ 1e-5 relative
                assert!(diff <= 1e-5 * scale, "case {i}, tensor {k}: differs by {diff} (scale {scale})");
            }
        }
    }
}
