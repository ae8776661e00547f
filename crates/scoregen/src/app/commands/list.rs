//! `scoregen list`: every data set, SDE, model, objective and sampler a user can name.

use crate::app::config::{ModelKind, ObjectiveKind, SdeKind};
use crate::data;
use crate::named::Named;
use crate::samplers::{CorrectorKind, Grid, SamplerKind};

/// Every value of a [`Named`] kind with its line, in its table's order.
fn rows<T: Named>() -> Vec<(&'static str, &'static str)> {
    T::all().iter().map(|v| (v.name(), v.description())).collect()
}

/// Everything a user can name, by section, with one line each (`scoregen list`).
pub fn catalogue() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "data sets (data.source)",
            data::toy::catalogue()
                .into_iter()
                .chain(data::images::IMAGE_SETS.iter().map(|s| (s.name, s.description)))
                .chain([
                    (
                        "cifar10:DIR",
                        "CIFAR-10, 3×32×32: DIR holds cifar-10-batches-bin (data_batch_1..5.bin, test_batch.bin) or -py; the official train/test split",
                    ),
                    ("cifar100:DIR", "CIFAR-100, 3×32×32, fine labels: DIR holds cifar-100-binary (train.bin, test.bin)"),
                    ("FILE-idx3-ubyte[.gz] | DIR/", "an IDX image file (labels beside it) or a folder of PNGs"),
                    ("FILE.npy", "any [N, D] float32/float64 array"),
                    ("FILE.toml", "a Gaussian mixture: [[component]] weight, mean, std or cov"),
                ])
                .collect(),
        ),
        ("SDEs (sde.kind)", rows::<SdeKind>()),
        ("models (model.kind)", rows::<ModelKind>()),
        ("objectives (objective.kind)", rows::<ObjectiveKind>()),
        ("samplers (sampling.sampler, --sampler)", rows::<SamplerKind>()),
        ("correctors of the reverse-SDE samplers (sampling.corrector, --corrector)", rows::<CorrectorKind>()),
        ("σ grids of the σ-space samplers (sampling.grid, --grid)", rows::<Grid>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    fn parses<T: DeserializeOwned>(name: &str) -> bool {
        toml::Value::String(name.into()).try_into::<T>().is_ok()
    }

    /// Every name `scoregen list` shows is one the config accepts, and every
    /// value of each kind is listed (and the helpfully listed extras, like the
    /// data files, are not enum names).
    #[test]
    fn catalogue_names_parse_as_config_values() {
        let cat = catalogue();
        let section = |prefix: &str| cat.iter().find(|(s, _)| s.starts_with(prefix)).unwrap().1.clone();
        fn complete<T: Named + DeserializeOwned>(rows: &[(&str, &str)]) {
            assert!(rows.iter().all(|(n, _)| parses::<T>(n)), "{rows:?}");
            assert_eq!(rows.len(), T::all().len());
        }
        complete::<SdeKind>(&section("SDEs"));
        complete::<ModelKind>(&section("models"));
        complete::<ObjectiveKind>(&section("objectives"));
        complete::<SamplerKind>(&section("samplers"));
        complete::<CorrectorKind>(&section("correctors"));
        complete::<Grid>(&section("σ grids"));
        assert!(parses::<ModelKind>("score-mlp"), "the old name of `mlp` still parses");
        assert!(section("data")
            .iter()
            .take(data::toy::names().len())
            .all(|(n, _)| data::toy::Toy::by_name(n).is_some()));
        let images = &section("data")[data::toy::names().len()..];
        assert!(data::images::IMAGE_SETS.iter().zip(images).all(|(s, (n, _))| s.name == *n));
    }
}
