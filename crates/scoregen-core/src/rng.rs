//! Seeded random streams. Every random draw in scoregen comes from an
//! explicit [`Rng`] (ChaCha8), never from a global or thread RNG, so the same
//! seed gives the same numbers and a resumed run continues the same stream.

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
}
