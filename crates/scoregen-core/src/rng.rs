//! Seeded random streams. Every random draw in scoregen comes from an
//! explicit [`Rng`] (ChaCha8), never from a global or thread RNG, so the same
//! seed gives the same numbers and a resumed run continues the same stream.
//! Every stream id is named once, in [`streams`].

use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// A seeded ChaCha8 stream with tensor helpers.
#[derive(Debug, Clone)]
pub struct Rng {
    inner: ChaCha8Rng,
}

/// The position of a stream, enough to restore it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key, hex-encoded.
    pub key: String,
    pub stream: u64,
    /// Word position in the ChaCha keystream (u128 as a decimal string in JSON).
    #[serde(with = "u128_string")]
    pub word_pos: u128,
}

mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Rng {
    /// Stream `stream` of seed `seed`: independent streams for data, noise, etc.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(seed);
        inner.set_stream(stream);
        Self { inner }
    }

    /// The exact position of this stream (key, stream, word position).
    pub fn state(&self) -> RngState {
        let key: String = self.inner.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        RngState { key, stream: self.inner.get_stream(), word_pos: self.inner.get_word_pos() }
    }

    /// Restores a stream saved with [`Rng::state`]; `None` if the key is malformed.
    pub fn restore(state: &RngState) -> Option<Self> {
        if state.key.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(state.key.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let mut inner = ChaCha8Rng::from_seed(key);
        inner.set_stream(state.stream);
        inner.set_word_pos(state.word_pos);
        Some(Self { inner })
    }

    pub fn uniform(&mut self) -> f64 {
        self.inner.random::<f64>()
    }

    pub fn normal(&mut self) -> f64 {
        StandardNormal.sample(&mut self.inner)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.inner.random_range(0..n)
    }

    /// The underlying `rand` generator, for distributions and shuffles.
    pub fn inner(&mut self) -> &mut ChaCha8Rng {
        &mut self.inner
    }

    /// A tensor of i.i.d. N(0, 1) draws.
    pub fn randn(&mut self, shape: impl Into<Shape>, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count()).map(|_| StandardNormal.sample(&mut self.inner)).collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }

    /// A tensor of i.i.d. U(lo, hi) draws.
    pub fn rand_uniform(
        &mut self,
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count()).map(|_| lo + (hi - lo) * self.inner.random::<f64>()).collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }

    /// A vector of i.i.d. U(lo, hi) draws.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * self.inner.random::<f64>()).collect()
    }
}

/// Every stream id the library draws from, in one table: `Rng::new(seed,
/// streams::X)`. The values are part of the file formats: a checkpoint saves
/// its streams' positions and samples are the bytes these streams give, so a
/// value never changes. A new feature takes a new name; where two names share
/// a value (an alias, kept because the value predates this table) the doc line
/// says so, and `ids_are_distinct_but_for_the_listed_aliases` lists them.
pub mod streams {
    // A run's streams, from the config's `seed`.

    /// The training points drawn from a toy set or mixture spec
    /// (`app::factory::trainer`, `app::run_dir::training_points`).
    pub const DATA: u64 = 1;
    /// The trainer's minibatches (saved in checkpoints; shard 0 of a
    /// data-parallel run), and `train::classifier`'s minibatches from the
    /// classifier's seed.
    pub const BATCH: u64 = 2;
    /// The trainer's objective noise: times, noise levels, ε, trace probes
    /// (saved in checkpoints; shard 0 of a data-parallel run).
    pub const NOISE: u64 = 3;
    /// Sampling a trained run: the prior draw and every step's noise (`sample`,
    /// `inpaint`, the report's samples, `bench sample`, the Python package).
    pub const SAMPLING: u64 = 4;
    /// Evaluation: the reference points and estimators of `eval`, `likelihood`,
    /// training's periodic evaluation, the report's metrics, `bench likelihood`,
    /// the Python package.
    pub const EVAL: u64 = 5;
    /// The class labels of a class-conditional sampling run (`sample --class all`).
    pub const LABELS: u64 = 6;
    /// The random horizontal flips of image training batches (`data.hflip`):
    /// step s of shard k draws from `shard(HFLIP, k, s)` (shard 0's step 0 is
    /// this id itself), a pure function of (seed, k, s). So turning flips on
    /// changes no row a batch draws, a checkpoint needs no new state, and a
    /// resumed or data-parallel run flips the same rows.
    pub const HFLIP: u64 = 7;

    /// The stream of `kind` (BATCH or NOISE) for data-parallel shard `k`
    /// (1 ≤ k < 2²⁴) at step `step` (0-based): kind in the low byte, k in the
    /// next 24 bits, the step in the high 32, so it never meets a named stream
    /// (those have k = 0; `shards_never_meet_a_named_stream`). HFLIP uses it
    /// for every shard, k = 0 too: its low byte is no other stream's, and a
    /// step ≥ 1 puts it above every named id (all < 2³²).
    pub const fn shard(kind: u64, k: usize, step: usize) -> u64 {
        kind | ((k as u64 & 0xff_ffff) << 8) | ((step as u64) << 32)
    }

    // A model's initialization, from the model's seed.

    /// Every new parameter of `nets::seeded_var_builder` (MLPs, U-Nets, the
    /// classifier, class embeddings).
    pub const PARAM_INIT: u64 = 0x1A17;
    /// The fixed random frequencies W of `nets::embedding::GaussianFourier`.
    pub const FOURIER_FEATURES: u64 = 0xF0F0;

    /// The seed of a conditional net's class-embedding table (`app::factory`):
    /// the model's seed XOR 0xC1A55, drawn from [`PARAM_INIT`], so the table
    /// does not repeat the first numbers of the net's own weights. A seed mix,
    /// not a stream id.
    pub const fn class_embedding_seed(seed: u64) -> u64 {
        seed ^ 0xC1A55
    }

    // Data.

    /// The permutation behind an image set's train/test split
    /// (`data::images::ImageSet::split`), from the split's seed.
    pub const IMAGE_SPLIT: u64 = 0x5B1;

    // One-off draws of the application layer and the front ends; mostly seed 0.

    /// The one point drawn when a data source is loaded only for its exact
    /// mixture (`run_dir::oracle_of`, `eval`'s target, `classify`'s labelled
    /// splits); it is thrown away. Alias of the other 0s.
    pub const ORACLE_PROBE: u64 = 0;
    /// The 4,000 mixture points that set a scatter's bounds (`app::figures`,
    /// the report's figures), seed 0. Alias of the other 0s.
    pub const PLOT_BOUNDS: u64 = 0;
    /// The trace probes of the report's log-likelihood, seed 0. Alias of the other 0s.
    pub const REPORT_LIKELIHOOD: u64 = 0;
    /// A stream the deterministic samplers (DPM-Solver++ 2M, 3M) pass on but
    /// never draw from, seed 0. Alias of the other 0s.
    pub const NEVER_DRAWN: u64 = 0;
    /// `demo`'s particles and paths (langevin with seed 0, pitfall and
    /// forward-reverse with the command's seed). Alias of the other 0s.
    pub const DEMO: u64 = 0;
    /// `bench`'s inputs: the synthetic images of `bench train` and the
    /// matrices of `bench gemm`, seed 0. Alias of the other 0s.
    pub const BENCH_INPUTS: u64 = 0;
    /// The Python package's `GaussianMixture.sample(n, seed)`. Alias of the other 0s.
    pub const MIXTURE_SAMPLE: u64 = 0;
    /// The leaderboard's (`bench samplers`) sampling runs, from its seed.
    /// Alias of the other 0s.
    pub const LEADERBOARD_SAMPLING: u64 = 0;
    /// The leaderboard's reference points and distance estimators per entry.
    /// Alias of [`DATA`] and the other 1s.
    pub const LEADERBOARD_METRICS: u64 = 1;
    /// The leaderboard's two exact sample sets that give the metrics' floor.
    /// Alias of [`BATCH`] and the other 2s.
    pub const LEADERBOARD_FLOOR: u64 = 2;
    /// `classify`'s 10,000 labelled training draws from a mixture, seed 0.
    /// Alias of [`DATA`] and the other 1s.
    pub const CLASSIFY_TRAIN: u64 = 1;
    /// `classify`'s 2,000 labelled held-out draws from a mixture, seed 0.
    /// Alias of [`BATCH`] and the other 2s.
    pub const CLASSIFY_HELD_OUT: u64 = 2;
    /// The CLI's `suggest-sigmas` data points, seed 0. Alias of [`DATA`] (the
    /// points a seed-0 run trains on, when n is the same) and the other 1s.
    pub const SUGGEST_SIGMAS_DATA: u64 = 1;

    /// Every named stream id above, by name (not `shard`'s, nor the seed mix).
    pub const ALL: &[(&str, u64)] = &[
        ("DATA", DATA),
        ("BATCH", BATCH),
        ("NOISE", NOISE),
        ("SAMPLING", SAMPLING),
        ("EVAL", EVAL),
        ("LABELS", LABELS),
        ("HFLIP", HFLIP),
        ("PARAM_INIT", PARAM_INIT),
        ("FOURIER_FEATURES", FOURIER_FEATURES),
        ("IMAGE_SPLIT", IMAGE_SPLIT),
        ("ORACLE_PROBE", ORACLE_PROBE),
        ("PLOT_BOUNDS", PLOT_BOUNDS),
        ("REPORT_LIKELIHOOD", REPORT_LIKELIHOOD),
        ("NEVER_DRAWN", NEVER_DRAWN),
        ("DEMO", DEMO),
        ("BENCH_INPUTS", BENCH_INPUTS),
        ("MIXTURE_SAMPLE", MIXTURE_SAMPLE),
        ("LEADERBOARD_SAMPLING", LEADERBOARD_SAMPLING),
        ("LEADERBOARD_METRICS", LEADERBOARD_METRICS),
        ("LEADERBOARD_FLOOR", LEADERBOARD_FLOOR),
        ("CLASSIFY_TRAIN", CLASSIFY_TRAIN),
        ("CLASSIFY_HELD_OUT", CLASSIFY_HELD_OUT),
        ("SUGGEST_SIGMAS_DATA", SUGGEST_SIGMAS_DATA),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_stream_continues_identically() {
        let mut a = Rng::new(7, 3);
        for _ in 0..37 {
            a.normal();
        }
        let st = a.state();
        let mut b = Rng::restore(&st).unwrap();
        let xa: Vec<f64> = (0..10).map(|_| a.normal()).collect();
        let xb: Vec<f64> = (0..10).map(|_| b.normal()).collect();
        assert_eq!(xa, xb);
    }

    #[test]
    fn streams_are_independent() {
        let mut a = Rng::new(7, 0);
        let mut b = Rng::new(7, 1);
        assert_ne!(a.uniform(), b.uniform());
    }

    /// The value-preserving aliases, each group sorted by name: the only
    /// names allowed to share an id.
    const ALIASES: &[&[&str]] = &[
        &[
            "BENCH_INPUTS",
            "DEMO",
            "LEADERBOARD_SAMPLING",
            "MIXTURE_SAMPLE",
            "NEVER_DRAWN",
            "ORACLE_PROBE",
            "PLOT_BOUNDS",
            "REPORT_LIKELIHOOD",
        ],
        &["CLASSIFY_TRAIN", "DATA", "LEADERBOARD_METRICS", "SUGGEST_SIGMAS_DATA"],
        &["BATCH", "CLASSIFY_HELD_OUT", "LEADERBOARD_FLOOR"],
    ];

    #[test]
    fn every_named_stream_is_in_the_table() {
        let src = include_str!("rng.rs");
        let module = &src[src.find("pub mod streams {").unwrap()..src.find("#[cfg(test)]").unwrap()];
        let declared: Vec<&str> = module
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once(": u64 =").map(|(name, _)| name))
            .collect();
        let listed: Vec<&str> = streams::ALL.iter().map(|&(name, _)| name).collect();
        assert_eq!(declared, listed);
    }

    #[test]
    fn ids_are_distinct_but_for_the_listed_aliases() {
        let mut by_id = std::collections::BTreeMap::<u64, Vec<&str>>::new();
        for &(name, id) in streams::ALL {
            by_id.entry(id).or_default().push(name);
        }
        let mut shared: Vec<Vec<&str>> = by_id.into_values().filter(|names| names.len() > 1).collect();
        for names in &mut shared {
            names.sort_unstable();
        }
        shared.sort_unstable();
        let mut expected: Vec<Vec<&str>> = ALIASES.iter().map(|g| g.to_vec()).collect();
        expected.sort_unstable();
        assert_eq!(shared, expected, "names sharing a stream id (an undocumented alias, or a listed one gone)");
    }

    #[test]
    fn shards_never_meet_a_named_stream() {
        use streams::{shard, BATCH, HFLIP, NOISE};
        // shard(kind, k, step) = v only if v's low byte is kind and its next
        // 24 bits are k mod 2²⁴, which is never 0 for 1 ≤ k < 2²⁴.
        for &(name, id) in streams::ALL {
            for kind in [BATCH, NOISE, HFLIP] {
                assert!(id & 0xff != kind || (id >> 8) & 0xff_ffff == 0, "{name} = {id:#x} is a shard stream");
            }
        }
        let steps = [0, 1, 2, 255, 256, 1 << 20, u32::MAX as usize];
        let ks = (1..=300).chain([0xff_ffff]);
        for k in ks {
            for step in steps {
                for kind in [BATCH, NOISE, HFLIP] {
                    let s = shard(kind, k, step);
                    assert!(streams::ALL.iter().all(|&(_, id)| id != s), "shard({kind}, {k}, {step}) = {s:#x}");
                }
            }
        }
        // HFLIP's shard 0: its own id at step 0, above every named id after
        for step in &steps[1..] {
            let s = shard(HFLIP, 0, *step);
            assert!(streams::ALL.iter().all(|&(_, id)| id != s), "shard(HFLIP, 0, {step}) = {s:#x}");
        }
        assert_eq!(shard(HFLIP, 0, 0), HFLIP);
    }
}
