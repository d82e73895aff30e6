//! Batching of [`EncodedSentence`]s into candle tensors.
//!
//! Training batches are length-bucketed: the sentences are shuffled, cut into chunks of
//! `bucket_batches` batches, each chunk is sorted by length and split into batches, and the
//! batch order is shuffled — little padding, yet every epoch mixes lengths. Everything is drawn
//! from the caller's [`SeededRng`], so the same seed gives the same batches. Evaluation batches
//! are deterministic and carry the indices of their sentences, so results map back to sentence
//! order.

use super::DataError;
use super::tokenize::EncodedSentence;
use crate::model::IGNORE_INDEX;
use crate::rng::SeededRng;
use candle_core::{Device, Tensor};

/// One padded batch. `B` sentences, `T` = the longest sentence of the batch in tokens.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, T]` u32 token ids, padded with the tokenizer's `[PAD]` id.
    pub input_ids: Tensor,
    /// `[B, T]` u32: 1 for real tokens, 0 for padding (convert with `to_dtype` as needed).
    pub attention_mask: Tensor,
    /// `[B, T]` segment ids: u32 zeros from the [`Batcher`] (single-segment input); `None`
    /// means all zeros without a tensor (synthetic batches).
    pub token_type_ids: Option<Tensor>,
    /// `[B, T]` i64 label ids, [`IGNORE_INDEX`] on ignored tokens and padding.
    pub labels: Tensor,
    /// Row `b` holds sentence `indices[b]` of the slice the batch was made from.
    pub indices: Vec<usize>,
    /// Token count of each row before padding.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// A batch of tensors made elsewhere (a reference dump, a synthetic benchmark): rows are
    /// sentences `0..B` and each row's length is its attention-mask sum.
    pub fn from_tensors(
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Option<Tensor>,
        labels: Tensor,
    ) -> candle_core::Result<Self> {
        let lengths: Vec<usize> = attention_mask
            .to_dtype(candle_core::DType::F64)?
            .sum(1)?
            .to_vec1::<f64>()?
            .into_iter()
            .map(|n| n as usize)
            .collect();
        Ok(Self {
            input_ids,
            attention_mask,
            token_type_ids,
            labels,
            indices: (0..lengths.len()).collect(),
            lengths,
        })
    }

    pub fn size(&self) -> usize {
        self.indices.len()
    }

    /// Padded length `T`.
    pub fn seq_len(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// Number of tokens whose label is not ignored.
    pub fn labelled_tokens(&self, sentences: &[EncodedSentence]) -> usize {
        self.indices
            .iter()
            .map(|&i| {
                sentences[i]
                    .labels
                    .iter()
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count()
            })
            .sum()
    }
}

/// Makes batches of a fixed number of sentences (or, for evaluation, of a token budget).
#[derive(Debug, Clone)]
pub struct Batcher {
    pub batch_size: usize,
    pub pad_id: u32,
    /// Batches per length-sorting chunk in training order.
    pub bucket_batches: usize,
    /// When set, evaluation batches hold as many length-sorted sentences as fit in this many
    /// padded tokens (at least one) instead of `batch_size` sentences.
    pub eval_tokens: Option<usize>,
}

impl Batcher {
    /// A batcher padding with `pad_id` (see `WordTokenizer::pad_id`); 50 batches per bucket.
    pub fn new(batch_size: usize, pad_id: u32) -> Self {
        Self {
            batch_size: batch_size.max(1),
            pad_id,
            bucket_batches: 50,
            eval_tokens: None,
        }
    }

    /// The batcher for graph-free encoder passes (scoring, the encoder cache) on `device`:
    /// length-sorted batches of a token budget. On the CPU, 512 padded tokens per forward:
    /// measured on 2 cores (`probe_cache_batching` in tests/perf_probe.rs), it takes 18-28%
    /// less time than batches of 64 sentences of up to 64 tokens (presumably their activations
    /// no longer fit the CPU caches). Other devices take 8192 (more work per kernel launch;
    /// not measured).
    pub fn for_inference(device: &Device, pad_id: u32) -> Self {
        let tokens = if device.is_cpu() { 512 } else { 8192 };
        Self::new(64, pad_id).with_eval_tokens(tokens)
    }

    /// Evaluation batches of at most `tokens` padded tokens each (see [`Self::eval_order`]):
    /// a steady amount of work per forward whatever the sentence lengths. Training batches
    /// keep `batch_size` sentences.
    pub fn with_eval_tokens(mut self, tokens: usize) -> Self {
        self.eval_tokens = Some(tokens.max(1));
        self
    }

    /// The padding token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Sentences per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn with_bucket_batches(mut self, n: usize) -> Self {
        self.bucket_batches = n.max(1);
        self
    }

    /// The sentence indices of each training batch: shuffled, length-bucketed, batch order
    /// shuffled. `lengths[i]` is sentence `i`'s token count.
    pub fn train_order(&self, lengths: &[usize], rng: &mut SeededRng) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..lengths.len()).collect();
        rng.shuffle(&mut idx);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for chunk in idx.chunks_mut(self.batch_size * self.bucket_batches) {
            // Stable sort: equal lengths keep their shuffled order.
            chunk.sort_by_key(|&i| lengths[i]);
            batches.extend(chunk.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        batches
    }

    /// The sentence indices of each evaluation batch: sorted by length (stable) to reduce
    /// padding, no randomness; `batch_size` sentences each, or with
    /// [`Self::with_eval_tokens`] as many as fit the token budget once padded. Use
    /// [`Batch::indices`] to map rows back.
    pub fn eval_order(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..lengths.len()).collect();
        idx.sort_by_key(|&i| lengths[i]);
        let Some(budget) = self.eval_tokens else {
            return idx.chunks(self.batch_size).map(<[usize]>::to_vec).collect();
        };
        let mut batches = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        for i in idx {
            // Sorted ascending, so sentence i is the longest: it sets the padded length.
            if !current.is_empty() && (current.len() + 1) * lengths[i] > budget {
                batches.push(std::mem::take(&mut current));
            }
            current.push(i);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }

    /// The sentence indices of batches in file order: `[0..B), [B..2B), ...`.
    pub fn sequential_order(&self, n: usize) -> Vec<Vec<usize>> {
        (0..n)
            .collect::<Vec<_>>()
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Pads the given sentences into one batch on `device`.
    pub fn make_batch(
        &self,
        sentences: &[EncodedSentence],
        indices: &[usize],
        device: &Device,
    ) -> Result<Batch, DataError> {
        let b = indices.len();
        let lengths: Vec<usize> = indices.iter().map(|&i| sentences[i].len()).collect();
        let t = lengths.iter().copied().max().unwrap_or(0);
        let mut ids = vec![self.pad_id; b * t];
        let mut mask = vec![0u32; b * t];
        let mut labels = vec![IGNORE_INDEX; b * t];
        for (row, &i) in indices.iter().enumerate() {
            let s = &sentences[i];
            let off = row * t;
            ids[off..off + s.len()].copy_from_slice(&s.input_ids);
            mask[off..off + s.len()].fill(1);
            labels[off..off + s.len()].copy_from_slice(&s.labels);
        }
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
            token_type_ids: Some(Tensor::zeros((b, t), candle_core::DType::U32, device)?),
            labels: Tensor::from_vec(labels, (b, t), device)?,
            indices: indices.to_vec(),
            lengths,
        })
    }

    /// Training batches for one epoch (see [`Batcher::train_order`]).
    pub fn train_batches(
        &self,
        sentences: &[EncodedSentence],
        rng: &mut SeededRng,
        device: &Device,
    ) -> Result<Vec<Batch>, DataError> {
        let lengths: Vec<usize> = sentences.iter().map(EncodedSentence::len).collect();
        self.train_order(&lengths, rng)
            .iter()
            .map(|ix| self.make_batch(sentences, ix, device))
            .collect()
    }

    /// Evaluation batches (see [`Batcher::eval_order`]).
    pub fn eval_batches(
        &self,
        sentences: &[EncodedSentence],
        device: &Device,
    ) -> Result<Vec<Batch>, DataError> {
        let lengths: Vec<usize> = sentences.iter().map(EncodedSentence::len).collect();
        self.eval_order(&lengths)
            .iter()
            .map(|ix| self.make_batch(sentences, ix, device))
            .collect()
    }

    /// Batches in file order (see [`Batcher::sequential_order`]).
    pub fn sequential_batches(
        &self,
        sentences: &[EncodedSentence],
        device: &Device,
    ) -> Result<Vec<Batch>, DataError> {
        self.sequential_order(sentences.len())
            .iter()
            .map(|ix| self.make_batch(sentences, ix, device))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(len: usize, tag: u32) -> EncodedSentence {
        let n_words = len - 2;
        let mut word_ids = vec![-1i64];
        word_ids.extend((0..n_words as i64).collect::<Vec<_>>());
        word_ids.push(-1);
        let mut labels = vec![IGNORE_INDEX];
        labels.extend(std::iter::repeat_n(i64::from(tag), n_words));
        labels.push(IGNORE_INDEX);
        EncodedSentence {
            input_ids: (0..len as u32).map(|i| 1000 + tag * 100 + i).collect(),
            word_ids,
            labels,
            n_words,
            truncated_words: 0,
        }
    }

    fn corpus() -> Vec<EncodedSentence> {
        (0..23).map(|i| enc(3 + (i * 7) % 11, i as u32)).collect()
    }

    #[test]
    fn padding_mask_labels_and_types() {
        let s = vec![enc(5, 1), enc(3, 2)];
        let b = Batcher::new(2, 0)
            .make_batch(&s, &[0, 1], &Device::Cpu)
            .unwrap();
        assert_eq!(b.input_ids.dims(), [2, 5]);
        assert_eq!(b.input_ids.dtype(), candle_core::DType::U32);
        assert_eq!(b.labels.dtype(), candle_core::DType::I64);
        assert_eq!(
            b.input_ids.to_vec2::<u32>().unwrap()[1],
            [1200, 1201, 1202, 0, 0]
        );
        assert_eq!(
            b.attention_mask.to_vec2::<u32>().unwrap(),
            [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
        );
        assert_eq!(
            b.token_type_ids.as_ref().unwrap().to_vec2::<u32>().unwrap(),
            [[0; 5], [0; 5]]
        );
        assert_eq!(
            b.labels.to_vec2::<i64>().unwrap()[1],
            [-100, 2, -100, -100, -100]
        );
        assert_eq!(
            (b.size(), b.seq_len(), b.lengths.clone()),
            (2, 5, vec![5, 3])
        );
        assert_eq!(b.labelled_tokens(&s), 4);
    }

    #[test]
    fn training_order_is_a_deterministic_partition() {
        let s = corpus();
        let lengths: Vec<usize> = s.iter().map(EncodedSentence::len).collect();
        let batcher = Batcher::new(4, 0).with_bucket_batches(2);
        let a = batcher.train_order(&lengths, &mut SeededRng::new(5));
        let b = batcher.train_order(&lengths, &mut SeededRng::new(5));
        let c = batcher.train_order(&lengths, &mut SeededRng::new(6));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        assert!(a.iter().all(|x| !x.is_empty() && x.len() <= 4));
        // Within a batch, lengths are sorted (bucketing).
        for batch in &a {
            assert!(
                batch.windows(2).all(|w| lengths[w[0]] <= lengths[w[1]]),
                "{batch:?}"
            );
        }
        // The tensors follow the order.
        let batches = batcher
            .train_batches(&s, &mut SeededRng::new(5), &Device::Cpu)
            .unwrap();
        let idx: Vec<Vec<usize>> = batches.iter().map(|b| b.indices.clone()).collect();
        assert_eq!(idx, a);
    }

    #[test]
    fn bucketing_reduces_padding() {
        let s: Vec<EncodedSentence> = (0..400).map(|i| enc(3 + (i * 37) % 60, 0)).collect();
        let lengths: Vec<usize> = s.iter().map(EncodedSentence::len).collect();
        let pad = |order: &[Vec<usize>]| -> usize {
            order
                .iter()
                .map(|b| {
                    let m = b.iter().map(|&i| lengths[i]).max().unwrap();
                    b.iter().map(|&i| m - lengths[i]).sum::<usize>()
                })
                .sum()
        };
        let bucketed = Batcher::new(8, 0).train_order(&lengths, &mut SeededRng::new(1));
        let unbucketed = Batcher::new(8, 0).with_bucket_batches(1);
        let plain = {
            // bucket of one batch = sorting within a batch only: the padding of a random order.
            unbucketed.train_order(&lengths, &mut SeededRng::new(1))
        };
        assert!(
            pad(&bucketed) * 3 < pad(&plain),
            "{} vs {}",
            pad(&bucketed),
            pad(&plain)
        );
    }

    #[test]
    fn token_budget_batches_fill_the_budget_once_padded() {
        let s = corpus();
        let lengths: Vec<usize> = s.iter().map(EncodedSentence::len).collect();
        let budget = 40;
        let order = Batcher::new(2, 0)
            .with_eval_tokens(budget)
            .eval_order(&lengths);
        let mut all: Vec<usize> = order.concat();
        all.sort_unstable();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        let padded = |b: &[usize]| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap();
        for (k, b) in order.iter().enumerate() {
            assert!(padded(b) <= budget, "batch {k} {b:?} is over the budget");
            // Full: the next sentence (the following batch's first) would not have fit.
            if let Some(next) = order.get(k + 1) {
                assert!(
                    (b.len() + 1) * lengths[next[0]] > budget,
                    "batch {k} not full"
                );
            }
        }
        assert!(
            order.len() < 23usize.div_ceil(2),
            "more sentences per batch than 2"
        );
        // A sentence longer than the budget still gets a batch of its own.
        assert_eq!(
            Batcher::new(2, 0).with_eval_tokens(4).eval_order(&[9, 3]),
            vec![vec![1], vec![0]]
        );
    }

    #[test]
    fn eval_and_sequential_orders_map_back() {
        let s = corpus();
        let batcher = Batcher::new(5, 0);
        let ev = batcher.eval_batches(&s, &Device::Cpu).unwrap();
        let mut seen: Vec<usize> = ev.iter().flat_map(|b| b.indices.clone()).collect();
        let lens: Vec<usize> = seen.iter().map(|&i| s[i].len()).collect();
        assert!(lens.windows(2).all(|w| w[0] <= w[1]));
        seen.sort_unstable();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        // Row r of a batch holds the tokens of sentence indices[r].
        for b in &ev {
            let ids = b.input_ids.to_vec2::<u32>().unwrap();
            for (r, &i) in b.indices.iter().enumerate() {
                assert_eq!(ids[r][..s[i].len()], s[i].input_ids[..]);
            }
        }
        let seq = batcher.sequential_order(23);
        assert_eq!(seq.len(), 5);
        assert_eq!(seq[4], vec![20, 21, 22]);
        assert_eq!(seq.concat(), (0..23).collect::<Vec<_>>());
    }
}
