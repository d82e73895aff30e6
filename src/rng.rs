//! primer owns its randomness: candle's CPU RNG cannot be seeded, so every random choice
//! (initialisation of new tensors, dropout masks, shuffling, subsampling) draws from a
//! [`SeededRng`] derived from the run's seed and a purpose label. Same seed → same numbers,
//! and adding a new consumer of randomness does not shift the streams of the others.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A deterministic random stream.
#[derive(Debug, Clone)]
pub struct SeededRng {
    inner: ChaCha8Rng,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent stream for one purpose ("dropout", "shuffle", "init.adapter", ...).
    pub fn derive(seed: u64, purpose: &str) -> Self {
        // FNV-1a over the label, mixed with the seed: stable across platforms and releases.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in purpose.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self::new(seed ^ h.rotate_left(17))
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.inner
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.random()
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.inner.random()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        self.inner.random_range(0..n)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// `n` values from N(0, std²).
    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut self.inner);
                z * std
            })
            .collect()
    }

    /// A tensor of the given shape from N(0, std²).
    pub fn normal_tensor(
        &mut self,
        shape: &[usize],
        std: f32,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(self.normal_vec(n, std), shape, device)
    }

    /// An inverted-dropout mask: each entry is 0 with probability `p`, else `1/(1-p)`.
    pub fn dropout_mask(
        &mut self,
        shape: &[usize],
        p: f32,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let v = self.dropout_mask_vec(shape.iter().product(), p);
        Tensor::from_vec(v, shape, device)
    }

    /// The values of [`SeededRng::dropout_mask`] (same draws) as a plain vector of `n`.
    pub fn dropout_mask_vec(&mut self, n: usize, p: f32) -> Vec<f32> {
        let keep = 1.0 / (1.0 - p);
        (0..n)
            .map(|_| if self.uniform() < p { 0.0 } else { keep })
            .collect()
    }

    /// `k` distinct indices from `0..n`, in increasing order.
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + self.below(n - i);
            idx.swap(i, j);
        }
        let mut out = idx[..k].to_vec();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_purposes_are_independent() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SeededRng::derive(7, "x");
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = SeededRng::derive(7, "x");
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = SeededRng::derive(7, "y");
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn sample_indices_are_distinct_sorted_and_bounded() {
        let mut r = SeededRng::new(1);
        let s = r.sample_indices(100, 10);
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().all(|&i| i < 100));
        assert_eq!(r.sample_indices(3, 10), vec![0, 1, 2]);
    }

    #[test]
    fn dropout_mask_keeps_expected_fraction_and_scales() {
        let mut r = SeededRng::new(3);
        let m = r
            .dropout_mask(&[10_000], 0.1, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let zeros = m.iter().filter(|&&x| x == 0.0).count();
        assert!((800..1200).contains(&zeros), "{zeros}");
        assert!(m.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.9).abs() < 1e-6));
    }
}
