//! The CIFAR-10 presets (issue 32): each trains and samples on a synthetic
//! file in CIFAR-10's binary layout, with its own SDE, objective, block types
//! and sampler and a narrow copy of its network (32 channels, one residual
//! block per level: the full width takes minutes per step on a CPU), and the
//! full-size network has the parameter count the preset's comment states.

use candle_core::Device;
use scoregen::app::commands::sample::{sample_loaded, SampleRequest};
use scoregen::app::config::RunConfig;
use scoregen::app::run_dir::LoadedModel;
use scoregen::nets::UNet2D;
use std::path::Path;

const PRESETS: &[&str] = &["cifar10-ddpmpp-subvp", "cifar10-ncsnpp-ve"];

/// data_batch_1.bin … data_batch_5.bin and test_batch.bin with 3 images each
/// (1 label byte + 3,072 pixel bytes per row), pixels from a fixed pattern.
fn write_cifar_bin(dir: &Path) {
    let names: Vec<String> = (1..=5).map(|k| format!("data_batch_{k}.bin")).chain(["test_batch.bin".into()]).collect();
    for (f, name) in names.iter().enumerate() {
        let mut bytes = Vec::new();
        for r in 0..3usize {
            bytes.push(r as u8);
            bytes.extend((0..3072usize).map(|i| ((i * 31 + r * 97 + f * 13) % 256) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn preset(name: &str, overrides: &[&str]) -> RunConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(format!("{name}.toml"));
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    RunConfig::load(&path, &overrides).unwrap()
}

#[test]
fn cifar10_presets_train_and_sample_on_a_synthetic_cifar_file() {
    scoregen::init();
    let data = tempfile::tempdir().unwrap();
    write_cifar_bin(data.path());
    for name in PRESETS {
        let source = format!("data.source=cifar10:{}", data.path().display());
        let cfg = preset(
            name,
            &[
                &source,
                "training.steps=2",
                "training.batch_size=2",
                "training.checkpoint_every=2",
                "training.log_every=1",
                "training.warmup=1",
                "model.unet2d.block_out_channels=[32, 32, 32]",
                "model.unet2d.layers_per_block=1",
                "sampling.steps=3",
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let opts = scoregen::train::TrainOptions { quiet: true, ..Default::default() };
        let out = scoregen::app::commands::train::train(&cfg, dir.path(), &opts).unwrap();
        assert_eq!(out.step, 2, "{name}");
        let model = LoadedModel::from_run(dir.path(), true, &Device::Cpu).unwrap();
        assert_eq!(model.state.dim, 3 * 32 * 32);
        let x = sample_loaded(&model, &SampleRequest::new(2, 3, 0, dir.path().join("s.npy")), None, None).unwrap().x;
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.len() == 2 * 3072 && v.iter().all(|v| v.is_finite()), "{name}: samples");
    }
}

/// The full networks have the sizes the presets' comments give (104.4 M and
/// 106.3 M parameters), within 1 %.
#[test]
fn cifar10_presets_have_the_stated_sizes() {
    scoregen::init();
    for (name, lo, hi) in [("cifar10-ddpmpp-subvp", 103.4e6, 105.5e6), ("cifar10-ncsnpp-ve", 105.2e6, 107.4e6)] {
        let cfg = preset(name, &["data.source=cifar10:/nonexistent"]);
        let vm = candle_nn::VarMap::new();
        UNet2D::build(&vm, cfg.model.unet2d.as_ref().unwrap(), 0, &Device::Cpu).unwrap();
        let n: usize = scoregen::nets::named_vars(&vm).iter().map(|(_, v)| v.elem_count()).sum();
        println!("{name}: {n} parameters");
        assert!((lo..hi).contains(&(n as f64)), "{name}: {n} parameters");
    }
}

/// diffusers' `null`s (one head per block, the default attention groups)
/// survive a run's config.toml, which has no null: written as "none", read
/// back as `None`, so the network a run's TOML builds is the one its JSON
/// described (q/k/v have the same shapes for any head count, so a wrong
/// default would load silently).
#[test]
fn unet2d_nulls_survive_the_toml_round_trip() {
    let json = r#"{"block_out_channels": [32, 64], "attention_head_dim": null, "attn_norm_num_groups": null,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "sample_size": 8, "norm_num_groups": 8}"#;
    let c = scoregen::nets::UNet2DConfig::from_json(json, "config.json").unwrap();
    assert_eq!((c.attention_head_dim, c.attn_norm_num_groups, c.norm_num_groups), (None, None, Some(8)));
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("attention_head_dim = \"none\""), "{text}");
    let back: scoregen::nets::UNet2DConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, c);
    let bad = toml::from_str::<scoregen::nets::UNet2DConfig>("attention_head_dim = \"eight\"").unwrap_err().to_string();
    assert!(bad.contains("\"none\"") && bad.contains("eight"), "{bad}");
}
