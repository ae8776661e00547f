//! Checks of every config value that types alone cannot; each message names
//! the file and the field.

use super::*;
use crate::samplers::Offers;

impl RunConfig {
    /// Checks every value that types alone cannot.
    pub fn validate(&self, file: &str) -> Result<()> {
        let err = |field: &str, msg: String| Err(Error::config(file, field, msg));
        let positive = |field: &str, v: f64| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                err(field, format!("must be a finite number > 0 (got {v})"))
            }
        };
        let s = &self.sde;
        match s.kind {
            SdeKind::Ve => {
                positive("sde.sigma_min", s.sigma_min)?;
                positive("sde.sigma_max", s.sigma_max)?;
                if s.sigma_max <= s.sigma_min {
                    return err(
                        "sde.sigma_max",
                        format!("must be > sigma_min = {} (got {})", s.sigma_min, s.sigma_max),
                    );
                }
            }
            SdeKind::Vp | SdeKind::Subvp => {
                positive("sde.beta_min", s.beta_min)?;
                positive("sde.beta_max", s.beta_max)?;
                if s.beta_max <= s.beta_min {
                    return err("sde.beta_max", format!("must be > beta_min = {} (got {})", s.beta_min, s.beta_max));
                }
            }
            SdeKind::Ddpm => {
                if s.timesteps < 2 {
                    return err("sde.timesteps", format!("must be ≥ 2 (got {})", s.timesteps));
                }
                for (field, v) in [("sde.beta_start", s.beta_start), ("sde.beta_end", s.beta_end)] {
                    if !(v.is_finite() && v > 0.0 && v < 1.0) {
                        return err(field, format!("must be in (0, 1) (got {v})"));
                    }
                }
            }
        }
        let noise_free = self.objective.kind.is_noise_free(self.objective.sigma);
        if noise_free && self.model.output != Output::Score {
            return err(
                "model.output",
                format!("`{}` needs a noise-conditional objective (dsm over an SDE, or ncsn); with objective.kind = {:?} use output = \"score\"", serde_json::to_value(self.model.output).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(), self.objective.kind),
            );
        }
        if self.model.kind == ModelKind::EnergyMlp && self.model.output != Output::Score {
            return err("model.output", "an energy model's score is −∇f; use output = \"score\"".into());
        }
        if self.model.kind == ModelKind::NcsnMlp && self.objective.kind != ObjectiveKind::Ncsn {
            return err(
                "model.kind",
                "`ncsn-mlp` is conditioned on the [noise] ladder; use it with objective.kind = \"ncsn\"".into(),
            );
        }
        if !self.model.classes.is_none() && !matches!(self.model.kind, ModelKind::TimeMlp | ModelKind::Unet) {
            return err("model.classes", "class-conditional models are `time-mlp` or `unet`".into());
        }
        if !(0.0..1.0).contains(&self.model.label_dropout) {
            return err("model.label_dropout", format!("must be in [0, 1) (got {})", self.model.label_dropout));
        }
        if let Some(class) = self.sampling.class {
            if self.model.classes.is_none() {
                return err(
                    "sampling.class",
                    format!("`{class}` needs a class-conditional model (model.classes = K or \"auto\")"),
                );
            }
            // "auto" is checked when the data's labels give K (the run refuses an out-of-range class then)
            let k = self.model.classes.count();
            if let super::ClassChoice::One(y) = class {
                if k > 0 && y >= k {
                    return err("sampling.class", format!("class {y} is out of range: classes are 0..{}", k - 1));
                }
            }
        }
        if !(self.sampling.guidance.is_finite() && self.sampling.guidance >= 0.0) {
            return err("sampling.guidance", format!("must be a finite number ≥ 0 (got {})", self.sampling.guidance));
        }
        let over_sde = self.objective.kind == ObjectiveKind::Dsm && self.objective.sigma.is_none();
        if self.data.hflip && !data::is_image_source(&self.data.source) {
            return err("data.hflip", format!("flips images; data `{}` is not an image set", self.data.source));
        }
        if !self.training.inception.is_empty() && self.training.eval_every == 0 {
            return err(
                "training.inception",
                "is the network of the periodic evaluation; set training.eval_every > 0 too".into(),
            );
        }
        if self.training.eval_every > 0 {
            if !data::is_image_source(&self.data.source) {
                return err(
                    "training.eval_every",
                    format!("measures image quality; data `{}` is not an image set", self.data.source),
                );
            }
            if !over_sde {
                return err(
                    "training.eval_every",
                    "samples by the reverse process; needs objective.kind = \"dsm\" over an SDE".into(),
                );
            }
            if self.training.eval_n < 2 {
                return err("training.eval_n", format!("must be ≥ 2 (got {})", self.training.eval_n));
            }
        }
        if self.model.preconditioning == Preconditioning::Edm {
            if !matches!(self.model.kind, ModelKind::TimeMlp | ModelKind::Unet) {
                return err(
                    "model.preconditioning",
                    "`edm` needs a time-conditioned network: `time-mlp` or `unet`".into(),
                );
            }
            if !over_sde {
                return err(
                    "model.preconditioning",
                    "`edm` needs objective.kind = \"dsm\" over an SDE (no objective.sigma)".into(),
                );
            }
        }
        positive("model.sigma_data", self.model.sigma_data)?;
        if self.objective.weighting == Weighting::Edm && !over_sde {
            return err(
                "objective.weighting",
                "`edm` needs objective.kind = \"dsm\" over an SDE (no objective.sigma)".into(),
            );
        }
        if !self.objective.p_mean.is_finite() {
            return err("objective.p_mean", format!("must be a finite number (got {})", self.objective.p_mean));
        }
        positive("objective.p_std", self.objective.p_std)?;
        if self.model.kind == ModelKind::Mlp && !noise_free && self.model.output != Output::ScoreOverStd {
            return err("model.kind", "an unconditional `mlp` cannot tell noise levels apart; use output = \"score-over-std\" (NCSNv2) or a conditioned model".into());
        }
        for (f, v) in [("model.width", self.model.width), ("model.depth", self.model.depth)] {
            if v == 0 {
                return err(f, "must be ≥ 1 (got 0)".into());
            }
        }
        if self.model.embed_dim == 0 || self.model.embed_dim % 2 == 1 {
            return err("model.embed_dim", format!("must be even and ≥ 2 (got {})", self.model.embed_dim));
        }
        positive("model.embed_scale", self.model.embed_scale)?;
        if let Some(sigma) = self.objective.sigma {
            positive("objective.sigma", sigma)?;
        }
        if self.objective.projections == 0 {
            return err("objective.projections", "must be ≥ 1 (got 0)".into());
        }
        let nz = &self.noise;
        if self.objective.kind == ObjectiveKind::Ncsn || self.sampling.sampler == SamplerKind::AnnealedLangevin {
            positive("noise.sigma_min", nz.sigma_min)?;
            if !(nz.sigma_max > nz.sigma_min && nz.sigma_max.is_finite()) {
                return err(
                    "noise.sigma_max",
                    format!("must be > sigma_min = {} (got {})", nz.sigma_min, nz.sigma_max),
                );
            }
            if nz.levels < 2 {
                return err("noise.levels", format!("must be ≥ 2 (got {})", nz.levels));
            }
            if !nz.power.is_finite() {
                return err("noise.power", format!("must be finite (got {})", nz.power));
            }
        }
        if !(self.objective.t_eps > 0.0 && self.objective.t_eps < 1.0) {
            return err("objective.t_eps", format!("must be in (0, 1) (got {})", self.objective.t_eps));
        }
        let t = &self.training;
        for (f, v) in
            [("training.steps", t.steps), ("training.batch_size", t.batch_size), ("training.log_every", t.log_every)]
        {
            if v == 0 {
                return err(f, "must be ≥ 1 (got 0)".into());
            }
        }
        if t.checkpoint_every == 0 || t.keep_checkpoints == 0 {
            return err("training.checkpoint_every", "checkpoint_every and keep_checkpoints must be ≥ 1".into());
        }
        positive("training.lr", t.lr)?;
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return err("training.grad_clip", format!("must be ≥ 0 (got {})", t.grad_clip));
        }
        if !(0.0..1.0).contains(&t.ema) {
            return err("training.ema", format!("must be in [0, 1) (got {})", t.ema));
        }
        let sp = &self.sampling;
        // the sampler table's one check, with what this config's model offers
        let offers = Offers {
            every_level: !noise_free,
            energy: self.model.kind == ModelKind::EnergyMlp,
            ladder: self.objective.kind == ObjectiveKind::Ncsn,
            constraint: false,
        };
        if let Err(e) = sp.sampler.check(&offers) {
            let (key, message) = e.setting().expect("SamplerKind::check names its setting");
            return err(key, message.to_string());
        }
        positive("sampling.step_size", sp.step_size)?;
        if sp.steps_per_level == 0 {
            return err("sampling.steps_per_level", "must be ≥ 1 (got 0)".into());
        }
        match sp.start {
            Start::Uniform { lo, hi } if !(lo < hi && lo.is_finite() && hi.is_finite()) => {
                return err("sampling.start", format!("uniform start needs finite lo < hi (got {lo}, {hi})"))
            }
            Start::Gaussian { std } if !(std > 0.0 && std.is_finite()) => {
                return err("sampling.start", format!("gaussian start needs std > 0 (got {std})"))
            }
            _ => {}
        }
        self.sampling.validate(file)?;
        if self.sampling.steps == 0 || self.sampling.n == 0 {
            return err("sampling.steps", "sampling.steps and sampling.n must be ≥ 1".into());
        }
        if let Some(eps) = self.sampling.eps {
            if !(eps > 0.0 && eps < 1.0) {
                return err("sampling.eps", format!("must be in (0, 1) (got {eps})"));
            }
        }
        if !(0.0..1.0).contains(&self.data.test_fraction) {
            return err("data.test_fraction", format!("must be in [0, 1) (got {})", self.data.test_fraction));
        }
        if self.model.kind == ModelKind::Unet {
            if self.model.image_channels == 0 {
                return err("model.image_channels", "must be ≥ 1 (got 0)".into());
            }
            if let Some((c, h, w)) = data::image_shape_of(&self.data.source) {
                let u = self
                    .model
                    .unet(c * h * w)
                    .map_err(|e| Error::config(file, "model.image_channels", e.to_string()))?;
                u.validate().map_err(|e| {
                    let field = if e.to_string().contains("groups") { "model.groups" } else { "model.channel_mult" };
                    Error::config(file, field, e.to_string())
                })?;
            }
        }
        if self.model.kind == ModelKind::Unet2d {
            let Some(u) = &self.model.unet2d else {
                return err(
                    "model.unet2d",
                    "model.kind = \"unet2d\" needs a [model.unet2d] table (diffusers' UNet2DModel arguments)".into(),
                );
            };
            u.validate().map_err(|e| Error::config(file, "model.unet2d", e.to_string()))?;
            if let Some((c, h, w)) = data::image_shape_of(&self.data.source) {
                if u.in_channels != c || u.out_channels != c || u.image().is_some_and(|(_, uh, uw)| (uh, uw) != (h, w))
                {
                    return err(
                        "model.unet2d",
                        format!(
                            "in/out_channels {}/{} and sample_size {:?} do not fit the data's {c}×{h}×{w} images",
                            u.in_channels, u.out_channels, u.sample_size
                        ),
                    );
                }
            }
        } else if self.model.unet2d.is_some() {
            return err("model.unet2d", format!("is set, but model.kind is `{}`, not `unet2d`", self.model.kind));
        }
        if self.data.n_train == 0 {
            return err("data.n_train", "must be ≥ 1 (got 0)".into());
        }
        // Upper bounds: a mistyped size fails here, by name, instead of as an
        // allocation failure (an abort, not an error) deep inside training.
        for (f, v, max) in [
            ("data.n_train", self.data.n_train, 100_000_000),
            ("training.batch_size", t.batch_size, 1_000_000),
            ("model.width", self.model.width, 16_384),
            ("model.depth", self.model.depth, 1_024),
            ("model.embed_dim", self.model.embed_dim, 16_384),
            ("model.channels", self.model.channels, 16_384),
            ("objective.projections", self.objective.projections, 4_096),
            ("noise.levels", self.noise.levels, 100_000),
            ("sampling.n", self.sampling.n, 100_000_000),
        ] {
            if v > max {
                return err(f, format!("must be ≤ {max} (got {v})"));
            }
        }
        Ok(())
    }
}
