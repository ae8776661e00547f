//! diffusers checkpoints as runs (issue 30): folders in both layouts, written
//! here the way diffusers' `save_pretrained` writes them (config.json with
//! diffusers' field names, safetensors under diffusers' parameter names), load
//! through `--run DIR`; every sampler of the table runs on an imported DDPM
//! and an imported NCSN++ model (only MALA and annealed Langevin, which need
//! an energy or a noise ladder, are refused), the likelihood runs, a given
//! x_T makes DDIM deterministic, legacy names load, and bad folders are
//! refused in one line that names the file and the field or tensor.
//! (Parity with diffusers itself: crates/scoregen-py/tests/test_diffusers_unet.py.)

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use scoregen::app::commands::likelihood::{likelihood_of_run, LikelihoodRequest};
use scoregen::app::commands::sample::{sample_loaded, SampleRequest};
use scoregen::app::run_dir::LoadedModel;
use scoregen::likelihood::TraceEstimator;
use scoregen::nets::{named_vars, UNet2D, UNet2DConfig};
use scoregen::samplers::{SamplerKind, SAMPLERS};
use std::path::Path;

#[path = "common/diffusers.rs"]
mod diffusers;
use diffusers::{ddpm_config, ddpm_scheduler, ncsnpp_config, ve_scheduler, write_checkpoint};

/// Every sampler of the table on `dir`: the ones a score model offers run and
/// give finite samples of the right shape; MALA and annealed Langevin are refused.
fn every_sampler_runs(dir: &Path) {
    let model = LoadedModel::from_run(dir, true, &Device::Cpu).unwrap();
    for info in SAMPLERS {
        let spec = model.cfg.sampling.with_sampler(info.kind);
        let req = SampleRequest::new(2, 4, 0, dir.join("unused.npy"));
        let out = sample_loaded(&model, &req, Some(spec), None);
        match info.kind {
            SamplerKind::Mala | SamplerKind::AnnealedLangevin => {
                assert!(out.is_err(), "{} should be refused on a score network", info.name)
            }
            _ => {
                let x = out.unwrap_or_else(|e| panic!("{} on {}: {e}", info.name, dir.display())).x;
                assert_eq!(x.dims(), [2, 192], "{}", info.name);
                let v = x.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                assert!(v.iter().all(|v| v.is_finite()), "{}: non-finite samples", info.name);
            }
        }
    }
}

#[test]
fn every_sampler_runs_on_an_imported_ddpm_pipeline_and_ncsnpp_model() {
    scoregen::init();
    let ddpm = tempfile::tempdir().unwrap();
    write_checkpoint(ddpm.path(), &ddpm_config(), &ddpm_scheduler(), true);
    every_sampler_runs(ddpm.path());
    let ncsnpp = tempfile::tempdir().unwrap();
    write_checkpoint(ncsnpp.path(), &ncsnpp_config(), &ve_scheduler(), false);
    every_sampler_runs(ncsnpp.path());
    // what was imported: the chain and DDIM with diffusers' defaults; VE with PC
    let m = LoadedModel::from_run(ddpm.path(), true, &Device::Cpu).unwrap();
    assert_eq!(m.cfg.sde().name(), "ddpm");
    assert_eq!(m.cfg.sampling.sampler, SamplerKind::Ddim);
    assert!(m.cfg.sampling.clip_denoised && m.cfg.sampling.keep_model_eps);
    let m = LoadedModel::from_run(ncsnpp.path(), true, &Device::Cpu).unwrap();
    assert_eq!((m.cfg.sde().name(), m.cfg.sampling.sampler), ("ve", SamplerKind::Pc));
    // `scoregen info`: the layout, the scheduler and the parameters loaded
    let i = scoregen::app::commands::info::describe(ddpm.path()).unwrap();
    let vm = VarMap::new();
    UNet2D::build(&vm, &UNet2DConfig::from_json(&ddpm_config().to_string(), "t").unwrap(), 0, &Device::Cpu).unwrap();
    let n: usize = named_vars(&vm).iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(
        (i.format.as_str(), i.scheduler.as_deref(), i.parameters),
        ("diffusers pipeline", Some("DDPMScheduler"), n)
    );
    assert_eq!(i.image, Some((3, 8, 8)));
}

/// The likelihood of two images (Hutchinson, one probe) runs on both kinds and is finite.
#[test]
fn the_likelihood_runs_on_imported_models() {
    scoregen::init();
    for (model, sched) in [(ddpm_config(), ddpm_scheduler()), (ncsnpp_config(), ve_scheduler())] {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &model, &sched, false);
        let x: Vec<f32> = (0..2 * 192).map(|i| ((i * 29 % 17) as f32 / 8.0) - 1.0).collect();
        let data = dir.path().join("x.npy");
        scoregen::data::npy::write_f32(&data, &[2, 3, 8, 8], &x).unwrap();
        let req = LikelihoodRequest {
            data: data.display().to_string(),
            n: 2,
            seed: 0,
            trace: Some(TraceEstimator::Hutchinson { probes: 1, noise: scoregen::likelihood::ProbeNoise::Rademacher }),
            rtol: 1e-3,
            atol: 1e-3,
            dequantize: None,
            use_ema: true,
            quiet: true,
            device: Device::Cpu,
        };
        let r = likelihood_of_run(dir.path(), &req).unwrap();
        assert!(r.nats.iter().all(|v| v.is_finite()) && r.nfe > 0, "{:?}", r.nats);
    }
}

/// With a given x_T, deterministic DDIM gives the same samples whatever the
/// seed, and other samples than the seed's own draw.
#[test]
fn init_noise_fixes_the_start_of_ddim() {
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &ddpm_config(), &ddpm_scheduler(), true);
    let model = LoadedModel::from_run(dir.path(), true, &Device::Cpu).unwrap();
    let x_t = Tensor::from_vec(
        (0..384).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect::<Vec<_>>(),
        (2, 192),
        &Device::Cpu,
    )
    .unwrap();
    let draw = |seed: u64, init: Option<&Tensor>| {
        let mut req = SampleRequest::new(2, 5, seed, dir.path().join("unused.npy"));
        req.x_init = init.cloned();
        sample_loaded(&model, &req, None, None).unwrap().x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let (a, b, c) = (draw(1, Some(&x_t)), draw(2, Some(&x_t)), draw(1, None));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // a start of the wrong shape is refused by its setting's name
    let mut req = SampleRequest::new(3, 5, 0, dir.path().join("unused.npy"));
    req.x_init = Some(x_t);
    let err = sample_loaded(&model, &req, None, None).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("init_noise"), "{err}");
}

/// The deprecated attention names (query, key, value, proj_attn) of early
/// checkpoints load to the same network as the current ones.
#[test]
fn legacy_attention_names_load_to_the_same_network() {
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &ddpm_config(), &ddpm_scheduler(), false);
    let x = Tensor::from_vec((0..192).map(|i| (i as f32 / 50.0).sin()).collect::<Vec<_>>(), (1, 192), &Device::Cpu)
        .unwrap();
    let t = Tensor::new(&[0.3f32], &Device::Cpu).unwrap();
    let output = |dir: &Path| {
        let m = LoadedModel::from_run(dir, true, &Device::Cpu).unwrap();
        let s = m.score().score(&x, &t).unwrap();
        s.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let before = output(dir.path());
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let k = k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.");
            (k.replace(".to_out.0.", ".proj_attn."), v)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.contains(".proj_attn.")));
    candle_core::safetensors::save(&renamed, &file).unwrap();
    assert_eq!(output(dir.path()), before);
}

/// Bad folders: each refusal names the file and what is wrong.
#[test]
fn bad_checkpoints_are_refused_by_name() {
    scoregen::init();
    let load = |dir: &Path| LoadedModel::from_run(dir, true, &Device::Cpu).map(|_| ()).unwrap_err().to_string();
    // weights only as a PyTorch pickle
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &ddpm_config(), &ddpm_scheduler(), false);
    let st = dir.path().join("diffusion_pytorch_model.safetensors");
    std::fs::rename(&st, dir.path().join("diffusion_pytorch_model.bin")).unwrap();
    let err = load(dir.path());
    assert!(err.contains("convert-diffusers-bin.py") && err.contains(".bin"), "{err}");
    // a missing and an extra tensor
    write_checkpoint(dir.path(), &ddpm_config(), &ddpm_scheduler(), false);
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let w = tensors.remove("conv_out.bias").unwrap();
    candle_core::safetensors::save(&tensors, &st).unwrap();
    assert!(load(dir.path()).contains("conv_out.bias"));
    tensors.insert("conv_out.bias".into(), w.clone());
    tensors.insert("conv_out.extra".into(), w);
    candle_core::safetensors::save(&tensors, &st).unwrap();
    assert!(load(dir.path()).contains("conv_out.extra"));
    // config fields: an unsupported block, no sample size, a scheduler this does not map
    for (model, sched, field) in [
        (
            {
                let mut m = ddpm_config();
                m["down_block_types"][1] = "CrossAttnDownBlock2D".into();
                m
            },
            ddpm_scheduler(),
            "down_block_types",
        ),
        (
            {
                let mut m = ddpm_config();
                m.as_object_mut().unwrap().remove("sample_size");
                m
            },
            ddpm_scheduler(),
            "sample_size",
        ),
        (
            ddpm_config(),
            serde_json::json!({"_class_name": "DDPMScheduler", "prediction_type": "flow"}),
            "prediction_type",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &ddpm_config(), &sched, false);
        std::fs::write(dir.path().join("config.json"), model.to_string()).unwrap();
        let err = load(dir.path());
        assert!(err.contains(field) && err.contains(".json"), "{field}: {err}");
    }
}
