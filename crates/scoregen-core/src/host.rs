//! Every read of tensor values back to the host, in one place and counted.
//!
//! On a GPU, reading a tensor (`to_vec1`, `to_scalar`, …) is a device-to-host
//! copy: the CPU waits until the stream has finished everything queued before
//! it. A sampler that read the time or a coefficient back at every step would
//! stall its stream at every step. So the library (this crate and
//! `scoregen-nets`) reads tensors only through the functions here, which count
//! the reads per thread, and `tests/host_reads.rs` checks that the network path
//! of every sampler reads nothing per step (a source scan keeps any other read
//! out of the libraries). What is read on purpose is listed in docs/gpu.md:
//! the results at the end of a run, training's loss once per step, RK45's
//! error norm once per step (its step-size control needs the number), dynamic
//! thresholding's per-row quantile and MALA… none of the networks.
//!
//! [`peek_cpu`] is the one uncounted read: it looks at a tensor only when it
//! already lives in host memory (no copy, no wait) and answers `None` on any
//! other device, so a CPU shortcut built on it is skipped on a GPU.

use candle_core::{Result, Tensor, WithDType};
use std::cell::Cell;

thread_local! {
    static READS: Cell<usize> = const { Cell::new(0) };
}

/// How many tensor reads this thread has made through this module.
pub fn reads() -> usize {
    READS.with(|r| r.get())
}

fn count() {
    READS.with(|r| r.set(r.get() + 1));
}

/// The values of a rank-1 tensor, converted to `T` (one counted read).
pub fn vec1<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count();
    t.to_dtype(T::DTYPE)?.to_vec1::<T>()
}

/// The rows of a rank-2 tensor, converted to `T` (one counted read).
pub fn vec2<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<T>>> {
    count();
    t.to_dtype(T::DTYPE)?.to_vec2::<T>()
}

/// The value of a rank-0 tensor, converted to `T` (one counted read).
pub fn scalar<T: WithDType>(t: &Tensor) -> Result<T> {
    count();
    t.to_dtype(T::DTYPE)?.to_scalar::<T>()
}

/// The values of a tensor (flattened, converted to `T`) when it lives in host
/// memory (no copy, no wait, not counted); `None` on any other device.
pub fn peek_cpu<T: WithDType>(t: &Tensor) -> Result<Option<Vec<T>>> {
    if !t.device().is_cpu() {
        return Ok(None);
    }
    Ok(Some(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?))
}

/// A constant table (a β schedule, a chain's timesteps) as a tensor on the
/// device last asked for: uploaded once per device rather than at every
/// call. Cloning gives an empty cache and all caches compare equal, so a type
/// holding one keeps its derived `Clone` and `PartialEq` meaning.
#[derive(Debug, Default)]
pub struct Uploaded(std::sync::Mutex<Option<Tensor>>);

impl Uploaded {
    /// The cached tensor when it lives on `device`, else `make`'s (cached).
    pub fn get(&self, device: &candle_core::Device, make: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.as_ref().filter(|t| t.device().same_device(device)) {
            return Ok(t.clone());
        }
        let t = make()?;
        *cache = Some(t.clone());
        Ok(t)
    }
}

impl Clone for Uploaded {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Uploaded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn reads_are_counted_and_peeks_are_not() {
        let t = Tensor::new(&[1.5f32, 2.0], &Device::Cpu).unwrap();
        let before = reads();
        assert_eq!(vec1::<f64>(&t).unwrap(), [1.5, 2.0]);
        assert_eq!(scalar::<f32>(&t.sum_all().unwrap()).unwrap(), 3.5);
        assert_eq!(vec2::<f32>(&t.unsqueeze(0).unwrap()).unwrap(), [[1.5, 2.0]]);
        assert_eq!(reads(), before + 3);
        assert_eq!(peek_cpu::<f64>(&t).unwrap(), Some(vec![1.5, 2.0]));
        assert_eq!(reads(), before + 3);
    }
}
