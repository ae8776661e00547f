//! Data-parallel training: the global batch split into shards, and the
//! [`Collective`] that sums gradients over the processes holding them.
//!
//! The global batch of `training.batch_size` B is cut into S shards of B/S
//! points. Shard k of step s draws its points and its noise from streams that
//! depend on (seed, k, s) only ([`shard_rngs`]), so the global batch of a step
//! is the same however the shards are spread over processes: P processes
//! (P divides S) each compute S/P consecutive shards, sum their gradients,
//! and one all-reduce sums over the processes. Every process then holds
//! Σₖ ∇Lₖ, divides by S (the gradient of the mean loss over the global
//! batch) and applies the same global norm, clipping, Adam and EMA to the
//! same parameters, so parameters, Adam moments and EMA stay identical
//! everywhere (checked by [`state_hash`] with `--check-sync K`).
//!
//! Shard 0 is the trainer's own persistent streams (`streams::BATCH`,
//! `streams::NOISE`, saved in checkpoints): with S = 1 a run is exactly the
//! single-process run of earlier versions, bit for bit. Shards k ≥ 1 are
//! fresh ChaCha streams numbered [`streams::shard`], nothing to save.
//! One process with `--shards S` computes the same global batch as S
//! processes (gradient accumulation), to float round-off.

use candle_core::{DType, Tensor};
use scoregen_core::error::{Error, Result};
use scoregen_core::host;
use scoregen_core::rng::{streams, Rng};
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// Collective operations over the processes of a data-parallel run.
/// Every process calls each method in the same order (MPI semantics).
pub trait Collective {
    /// This process's index, 0 ≤ rank < size.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Element-wise sums of f32 tensors over all processes, in place of the
    /// inputs (same shapes and devices), in one operation.
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>>;
    /// Every process's `value`, indexed by rank.
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>>;
    /// Ends every process of the job at once (after an error only some saw).
    fn abort(&self, code: i32) -> !;
    /// One line for logs: "MPI, 2 processes on host1, host2".
    fn describe(&self) -> String;
}

/// A single process: rank 0 of 1, every reduction the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(tensors.to_vec())
    }
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

/// How a [`Trainer`](super::Trainer) spreads its global batch: the processes
/// (a [`Collective`]) and the number of shards S (a multiple of their number).
#[derive(Clone)]
pub struct DataParallel {
    pub collective: Rc<dyn Collective>,
    pub shards: usize,
}

impl Default for DataParallel {
    fn default() -> Self {
        Self { collective: Rc::new(Local), shards: 1 }
    }
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataParallel({}, {} shards)", self.collective.describe(), self.shards)
    }
}

impl DataParallel {
    /// `shards` (0: one per process) over `collective`, checked against the batch size.
    pub fn new(collective: Rc<dyn Collective>, shards: usize, batch_size: usize) -> Result<Self> {
        let p = collective.size();
        let shards = if shards == 0 { p } else { shards };
        if !shards.is_multiple_of(p) {
            return Err(Error::Invalid(format!(
                "--shards {shards} is not a multiple of the {p} processes (each process computes shards/processes shards)"
            )));
        }
        if !batch_size.is_multiple_of(shards) || batch_size < shards {
            return Err(Error::config(
                "config",
                "training.batch_size",
                format!(
                    "{batch_size} does not split into {shards} equal shards ({}); choose a multiple of {shards}",
                    if shards == p { format!("one per process of {p}") } else { format!("--shards {shards}") }
                ),
            ));
        }
        Ok(Self { collective, shards })
    }

    /// Whether this process computes the whole batch alone (no reduction).
    pub fn is_single(&self) -> bool {
        self.collective.size() == 1
    }

    /// The shards this process computes: S/P consecutive ones from rank·S/P.
    pub fn my_shards(&self) -> std::ops::Range<usize> {
        let per = self.shards / self.collective.size();
        let r = self.collective.rank();
        r * per..(r + 1) * per
    }
}

/// The batch and noise streams of shard `k ≥ 1` at step `step` (0-based):
/// ChaCha streams of the run's seed numbered [`streams::shard`], independent
/// of each other, of the trainer's own streams and of the number of processes.
pub fn shard_rngs(seed: u64, k: usize, step: usize) -> (Rng, Rng) {
    (Rng::new(seed, streams::shard(streams::BATCH, k, step)), Rng::new(seed, streams::shard(streams::NOISE, k, step)))
}

/// The environment variable of [`nan_injected`]: `STEP:RANK`.
pub const NAN_AT_VAR: &str = "SCOREGEN_TEST_NAN_AT";

/// Fault injection for the tests of a data-parallel run: when
/// `SCOREGEN_TEST_NAN_AT` is `STEP:RANK`, that rank's loss of that step
/// (1-based) counts as non-finite, as if only it had met an overflow. Unset
/// (always, outside those tests), it costs one cached lookup.
pub fn nan_injected(step: usize, rank: usize) -> bool {
    static AT: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var(NAN_AT_VAR).ok()?;
        let (s, r) = v.split_once(':')?;
        Some((s.parse().ok()?, r.parse().ok()?))
    });
    *at == Some((step, rank))
}

/// SHA-256 (first 8 bytes) of the bits of every tensor, in order: equal on
/// two processes exactly when their training states are bit-identical.
pub fn state_hash<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<u64> {
    let mut h = Sha256::new();
    for t in tensors {
        let t = t.flatten_all()?;
        match t.dtype() {
            DType::F64 => host::vec1::<f64>(&t)?.iter().for_each(|x| h.update(x.to_bits().to_le_bytes())),
            _ => host::vec1::<f32>(&t)?.iter().for_each(|x| h.update(x.to_bits().to_le_bytes())),
        }
    }
    let d = h.finalize();
    Ok(u64::from_le_bytes(d[..8].try_into().expect("8 bytes")))
}

/// Compares the processes' [`state_hash`]es: an error naming the ranks
/// whose state differs from rank 0's (every process sees the same answer).
pub fn check_in_sync(collective: &dyn Collective, hash: u64, step: usize) -> Result<()> {
    let all = collective.all_gather_u64(hash)?;
    let differ: Vec<String> =
        all.iter().enumerate().filter(|(_, &h)| h != all[0]).map(|(r, _)| r.to_string()).collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "out of sync at step {step}: the parameters, Adam moments or EMA of rank(s) {} differ from rank 0's \
         (hashes {all:016x?}); this is a bug, or the processes read different checkpoints",
        differ.join(", ")
    )))
}

/// Packs f32 tensors into one host buffer (in order), for a reduction in one call.
pub fn flatten_f32(tensors: &[Tensor]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(tensors.iter().map(|t| t.elem_count()).sum());
    for t in tensors {
        out.extend(host::vec1::<f32>(&t.flatten_all()?)?);
    }
    Ok(out)
}

/// The inverse of [`flatten_f32`]: tensors shaped, typed and placed like `like`.
pub fn unflatten_f32(buf: &[f32], like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let v = Tensor::from_slice(&buf[at..at + n], t.shape(), t.device())?.to_dtype(t.dtype())?;
            at += n;
            Ok(v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn flatten_round_trips_shapes_and_values() {
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[5f32], &Device::Cpu).unwrap();
        let buf = flatten_f32(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(buf, vec![1., 2., 3., 4., 5.]);
        let back = unflatten_f32(&buf, &[a, b]).unwrap();
        assert_eq!(back[0].to_vec2::<f32>().unwrap(), vec![vec![1., 2.], vec![3., 4.]]);
        assert_eq!(back[1].dims(), &[1]);
    }

    #[test]
    fn shard_streams_differ_by_shard_and_step_and_from_the_trainers() {
        let draw = |mut r: Rng| r.below(1 << 30);
        let base = draw(Rng::new(7, streams::BATCH));
        let s10 = draw(shard_rngs(7, 1, 0).0);
        let s11 = draw(shard_rngs(7, 1, 1).0);
        let s20 = draw(shard_rngs(7, 2, 0).0);
        let n10 = draw(shard_rngs(7, 1, 0).1);
        let all = [base, s10, s11, s20, n10];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j], "streams {i} and {j} coincide");
            }
        }
        assert_eq!(s10, draw(shard_rngs(7, 1, 0).0), "a shard's stream is a function of (seed, shard, step)");
    }

    #[test]
    fn shards_must_divide_the_batch_and_be_a_multiple_of_the_processes() {
        let local: Rc<dyn Collective> = Rc::new(Local);
        assert_eq!(DataParallel::new(local.clone(), 0, 64).unwrap().shards, 1);
        assert_eq!(DataParallel::new(local.clone(), 4, 64).unwrap().my_shards(), 0..4);
        let e = DataParallel::new(local, 3, 64).unwrap_err().to_string();
        assert!(e.contains("training.batch_size") && e.contains("3 equal shards"), "{e}");
    }

    #[test]
    fn state_hash_sees_one_bit() {
        let a = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, f32::from_bits(2f32.to_bits() + 1)], &Device::Cpu).unwrap();
        assert_ne!(state_hash([&a]).unwrap(), state_hash([&b]).unwrap());
        assert_eq!(state_hash([&a]).unwrap(), state_hash([&a.clone()]).unwrap());
    }
}
