//! Encoder outputs computed once on a frozen encoder, kept only where the adapter and head are
//! ever read.
//!
//! In head and adapter tuning θp is frozen, so each sentence's encoder output is a constant.
//! The adapter `x + up(relu(down(x)))` and the head act on every token alone, and the loss is a
//! mean over the labelled tokens, so a training step needs the encoder output at exactly those
//! tokens; scoring needs it at each word's first subword. [`EncoderCache`] encodes every
//! sentence once (graph-free, encoder dropout off) and keeps only those rows, packed into one
//! `[rows, H]` tensor (on the CPU the last layer computes only those rows past its key and
//! value projections: [`crate::model::FrozenEncoder::encode_rows`]). A step then runs the
//! adapter and head on the batch's labelled rows alone — no padding, no special tokens, no
//! continuation subwords — and computes the same loss and gradients as the padded batch would
//! (up to the order of float sums).
//!
//! ```no_run
//! # use primer::model::Tagger;
//! # use primer::data::{Batcher, EncodedSentence};
//! # use primer::train::EncoderCache;
//! # fn demo(tagger: &Tagger, train: &[EncodedSentence], batch: &[usize]) -> Result<(), Box<dyn std::error::Error>> {
//! let device = candle_core::Device::Cpu;
//! let cache = EncoderCache::labelled_rows(tagger, train, &Batcher::for_inference(&device, 0), &device)?;
//! let rows = cache.rows_of(batch)?;
//! let logits = tagger.logits_from_hidden(&rows.hidden, "af")?;
//! let loss = primer::model::masked_cross_entropy(&logits, &rows.labels)?;
//! # Ok(()) }
//! ```

use super::inputs_of;
use crate::data::{Batch, Batcher, EncodedSentence};
use crate::model::IGNORE_INDEX;
use crate::model::{ModelError, ParamGroup, Tagger};
use candle_core::{DType, Device, Tensor};

/// Which token rows of each sentence a cache keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeptRows {
    /// Tokens whose label is not [`IGNORE_INDEX`] (what the loss reads), in token order.
    Labelled,
    /// Each word's first subword, in word order; words without a token keep no row.
    FirstSubwords,
}

impl KeptRows {
    fn positions(self, s: &EncodedSentence) -> Vec<usize> {
        match self {
            KeptRows::Labelled => (0..s.len())
                .filter(|&t| s.labels[t] != IGNORE_INDEX)
                .collect(),
            KeptRows::FirstSubwords => s.first_subwords().into_iter().flatten().collect(),
        }
    }
}

/// The encoder outputs of a batch's kept rows.
#[derive(Debug, Clone)]
pub struct CachedRows {
    /// `[n, H]`: the kept rows of the batch's sentences, sentence after sentence.
    pub hidden: Tensor,
    /// `[n]` i64: the label of each row ([`IGNORE_INDEX`] only in the one placeholder row of
    /// a batch that has no labelled token).
    pub labels: Tensor,
}

impl CachedRows {
    /// The one zero row labelled [`IGNORE_INDEX`] that stands for a batch without any labelled
    /// token: its loss is 0 and every gradient zero, like those of the padded batch.
    fn placeholder(h: usize, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        Ok(Self {
            hidden: Tensor::zeros((1, h), dtype, device)?,
            labels: Tensor::new(&[IGNORE_INDEX], device)?,
        })
    }

    /// The rows of `hidden` `[B, T, H]` whose label in `labels` `[B, T]` is not ignored, with
    /// those labels: all that the adapter, head and loss of a frozen-encoder step read.
    pub fn labelled(hidden: &Tensor, labels: &Tensor) -> Result<Self, ModelError> {
        let (b, t, h) = hidden.dims3()?;
        if labels.dims() != [b, t] {
            return Err(ModelError::Invalid(format!(
                "labelled rows: labels {:?} do not match the hidden states {:?}",
                labels.dims(),
                hidden.dims()
            )));
        }
        let all: Vec<i64> = labels.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
        let (index, kept): (Vec<u32>, Vec<i64>) = all
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l != IGNORE_INDEX)
            .map(|(i, &l)| (i as u32, l))
            .unzip();
        let device = hidden.device();
        if index.is_empty() {
            return Self::placeholder(h, hidden.dtype(), device);
        }
        Ok(Self {
            hidden: hidden
                .reshape((b * t, h))?
                .index_select(&Tensor::new(index.as_slice(), device)?, 0)?,
            labels: Tensor::new(kept.as_slice(), device)?,
        })
    }
}

/// Encoder outputs of a split on a frozen encoder, at the rows the adapter and head read (see
/// the module docs). Valid only while θp is frozen and encoder dropout is off.
pub struct EncoderCache {
    /// `[total rows, H]`, sentences in encoding order.
    hidden: Tensor,
    /// Per sentence: its first row in `hidden` and its number of rows.
    spans: Vec<(usize, usize)>,
    /// Per row: the label of its token.
    labels: Vec<i64>,
    kept: KeptRows,
    /// Matrix-product FLOPs of the encoding pass that built it
    /// ([`crate::model::BertConfig::encoder_forward_flops`] of each batch encoded).
    encoder_flops: f64,
}

impl EncoderCache {
    /// For training: keeps each sentence's labelled tokens (see [`Self::rows_of`]).
    pub fn labelled_rows(
        tagger: &Tagger,
        sentences: &[EncodedSentence],
        batcher: &Batcher,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::build(tagger, sentences, batcher, device, KeptRows::Labelled)
    }

    /// For scoring: keeps each word's first subword (see [`Self::word_rows`]).
    pub fn first_subword_rows(
        tagger: &Tagger,
        sentences: &[EncodedSentence],
        batcher: &Batcher,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::build(tagger, sentences, batcher, device, KeptRows::FirstSubwords)
    }

    fn build(
        tagger: &Tagger,
        sentences: &[EncodedSentence],
        batcher: &Batcher,
        device: &Device,
        kept: KeptRows,
    ) -> Result<Self, ModelError> {
        if tagger.is_trainable(&ParamGroup::Encoder) {
            return Err(ModelError::Invalid(
                "encoder cache: the encoder is trainable, so its outputs are not constants (cache only in head or adapter tuning)".into(),
            ));
        }
        let mut spans = vec![(0, 0); sentences.len()];
        let mut labels = Vec::new();
        let mut rows = 0usize;
        let mut encoder_flops = 0.0;
        let batches = batcher
            .eval_batches(sentences, device)
            .map_err(|e| ModelError::Invalid(format!("encoder cache: {e}")))?;
        // The bookkeeping in encoding order; then the batches with a kept row are encoded
        // (a batch without any is not), on the CPU one batch per thread.
        let mut jobs = Vec::with_capacity(batches.len());
        for batch in &batches {
            let t = batch.input_ids.dim(1)?;
            let mut flat_positions = Vec::new();
            for (row, &idx) in batch.indices.iter().enumerate() {
                let s = &sentences[idx];
                let positions = kept.positions(s);
                spans[idx] = (rows, positions.len());
                rows += positions.len();
                labels.extend(positions.iter().map(|&p| s.labels[p]));
                flat_positions.extend(positions.iter().map(|&p| (row * t + p) as u32));
            }
            if !flat_positions.is_empty() {
                encoder_flops += tagger.config.encoder_forward_flops(
                    batch.indices.len(),
                    t,
                    flat_positions.len(),
                );
                jobs.push((batch, flat_positions));
            }
        }
        // The last layer computes only the kept rows.
        let encoder = tagger.frozen_encoder()?;
        let encode = |(batch, flat_positions): &(&Batch, Vec<u32>)| {
            encoder.encode_rows(&inputs_of(batch), flat_positions)
        };
        let parts = crate::parallel::map_batches(device, &jobs, encode)?;
        let h = tagger.config.hidden_size;
        let hidden = if parts.is_empty() {
            Tensor::zeros((0, h), DType::F32, device)?
        } else {
            Tensor::cat(&parts, 0)?
        };
        Ok(Self {
            hidden,
            spans,
            labels,
            kept,
            encoder_flops,
        })
    }

    /// Matrix-product FLOPs of the encoding pass that built this cache (batches without a
    /// kept row were not encoded and count nothing): puts the pass's time in GFLOP/s.
    pub fn encoder_flops(&self) -> f64 {
        self.encoder_flops
    }

    /// Number of kept rows over all sentences.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    fn row_index(&self, sentences: &[usize]) -> Result<Vec<u32>, ModelError> {
        let mut index = Vec::new();
        for &i in sentences {
            let &(start, n) = self.spans.get(i).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "encoder cache: sentence {i} is not cached ({} sentences)",
                    self.spans.len()
                ))
            })?;
            index.extend((start..start + n).map(|r| r as u32));
        }
        Ok(index)
    }

    /// The labelled rows of `sentences` (indices into the cached slice) with their labels:
    /// a training step's adapter and head input. A batch without any labelled token gets one
    /// zero row labelled [`IGNORE_INDEX`], whose loss is 0 like that of the padded batch.
    pub fn rows_of(&self, sentences: &[usize]) -> Result<CachedRows, ModelError> {
        if self.kept != KeptRows::Labelled {
            return Err(ModelError::Invalid(
                "encoder cache: rows_of needs the labelled rows (build with labelled_rows)".into(),
            ));
        }
        let index = self.row_index(sentences)?;
        let device = self.hidden.device();
        if index.is_empty() {
            return CachedRows::placeholder(self.hidden.dim(1)?, self.hidden.dtype(), device);
        }
        let labels: Vec<i64> = index.iter().map(|&r| self.labels[r as usize]).collect();
        Ok(CachedRows {
            hidden: self
                .hidden
                .index_select(&Tensor::new(index.as_slice(), device)?, 0)?,
            labels: Tensor::new(labels.as_slice(), device)?,
        })
    }

    /// The first-subword rows of `sentences`, `[n, H]`: row `j` of sentence `i` is the `j`-th
    /// of its words that has a token (see [`EncodedSentence::first_subwords`]). `None` when
    /// none of them has a token.
    pub fn word_rows(&self, sentences: &[usize]) -> Result<Option<Tensor>, ModelError> {
        if self.kept != KeptRows::FirstSubwords {
            return Err(ModelError::Invalid(
                "encoder cache: word_rows needs the first-subword rows (build with first_subword_rows)".into(),
            ));
        }
        let index = self.row_index(sentences)?;
        if index.is_empty() {
            return Ok(None);
        }
        let device = self.hidden.device();
        Ok(Some(self.hidden.index_select(
            &Tensor::new(index.as_slice(), device)?,
            0,
        )?))
    }

    /// Number of rows kept for sentence `i`.
    pub fn rows_of_sentence(&self, i: usize) -> usize {
        self.spans.get(i).map_or(0, |s| s.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::EncodedSentence;
    use crate::model::masked_cross_entropy;

    const I: i64 = IGNORE_INDEX;

    fn tiny_tagger() -> Tagger {
        let mut t = crate::model::tagger::tiny_test_tagger(0.0, &["x"]);
        t.set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("x".into())])
            .unwrap();
        t
    }

    /// A sentence whose last `truncated` words lost their tokens.
    fn encoded(ids: &[u32], word_ids: &[i64], labels: &[i64], truncated: usize) -> EncodedSentence {
        EncodedSentence {
            input_ids: ids.to_vec(),
            word_ids: word_ids.to_vec(),
            labels: labels.to_vec(),
            n_words: (word_ids.iter().copied().max().unwrap_or(-1) + 1) as usize + truncated,
            truncated_words: truncated,
        }
    }

    /// Sentences of different lengths, one without any labelled token.
    fn sentences() -> Vec<EncodedSentence> {
        let s = |ids: &[u32], word_ids: &[i64], labels: &[i64]| encoded(ids, word_ids, labels, 0);
        vec![
            s(&[1, 5, 7, 11, 2], &[-1, 0, 0, 1, -1], &[I, 3, I, 0, I]),
            s(&[1, 9, 2], &[-1, 0, -1], &[I, 6, I]),
            s(&[1, 2], &[-1, -1], &[I, I]),
            s(
                &[1, 13, 17, 19, 23, 29, 2],
                &[-1, 0, 1, 1, 2, 3, -1],
                &[I, 1, 2, I, 0, 5, I],
            ),
        ]
    }

    #[test]
    fn kept_rows_are_labelled_tokens_or_first_subwords_in_order() {
        let i = IGNORE_INDEX;
        // [CLS] w0 w0' w1 w2 w2' [SEP]; w3 was truncated away.
        let s = encoded(&[5; 7], &[-1, 0, 0, 1, 2, 2, -1], &[i, 3, i, 0, i, i, i], 1);
        assert_eq!(KeptRows::Labelled.positions(&s), vec![1, 3]);
        assert_eq!(KeptRows::FirstSubwords.positions(&s), vec![1, 3, 4]);
    }

    /// The cached rows give the loss and gradients of the padded batch through the whole
    /// tagger (frozen encoder), for a batch mixing lengths and one with no labelled token.
    #[test]
    fn cached_rows_give_the_padded_batch_loss_and_gradients() {
        let tagger = tiny_tagger();
        let sents = sentences();
        let batcher = Batcher::new(3, 0);
        let cache = EncoderCache::labelled_rows(&tagger, &sents, &batcher, &Device::Cpu).unwrap();
        // Labelled tokens per sentence: 2, 1, none, 4.
        assert_eq!(cache.rows(), 7);
        for indices in [vec![3, 0, 1], vec![2], vec![1, 2, 3, 0]] {
            let batch = batcher.make_batch(&sents, &indices, &Device::Cpu).unwrap();
            let full = masked_cross_entropy(
                &tagger.logits(&inputs_of(&batch), "x", None).unwrap(),
                &batch.labels,
            )
            .unwrap();
            let rows = cache.rows_of(&indices).unwrap();
            let cached = masked_cross_entropy(
                &tagger.logits_from_hidden(&rows.hidden, "x").unwrap(),
                &rows.labels,
            )
            .unwrap();
            let (a, b) = (
                full.to_scalar::<f32>().unwrap(),
                cached.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "{indices:?}: {a} vs {b}"
            );
            let (ga, gb) = (
                crate::model::backward(&full).unwrap(),
                crate::model::backward(&cached).unwrap(),
            );
            for (name, var) in tagger.trainable_vars() {
                let (x, y) = (ga.get(var.as_tensor()), gb.get(var.as_tensor()));
                let (Some(x), Some(y)) = (x, y) else {
                    panic!("{name}: a gradient is missing ({indices:?})")
                };
                let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
                let m = x.abs().unwrap().max_all().unwrap();
                let (d, m) = (d.to_scalar::<f32>().unwrap(), m.to_scalar::<f32>().unwrap());
                assert!(
                    d <= 1e-5 * m.max(1e-3),
                    "{name} {indices:?}: max diff {d} (scale {m})"
                );
            }
        }
    }

    /// The pass's FLOPs are those of the batches it encoded, at their kept rows; a batch
    /// without any kept row counts nothing.
    #[test]
    fn encoder_flops_count_the_batches_encoded() {
        let tagger = tiny_tagger();
        let sents = sentences();
        let cache = EncoderCache::labelled_rows(&tagger, &sents, &Batcher::new(1, 0), &Device::Cpu)
            .unwrap();
        // One sentence per batch; labelled tokens 2, 1, none, 4.
        let cfg = &tagger.config;
        let want: f64 = [(0, 2), (1, 1), (3, 4)]
            .iter()
            .map(|&(i, kept)| cfg.encoder_forward_flops(1, sents[i].len(), kept))
            .sum();
        assert_eq!(cache.encoder_flops(), want);
    }

    /// Scoring rows are each word's first subword, sentence after sentence, equal to the
    /// encoder output at that position.
    #[test]
    fn word_rows_are_first_subwords_of_the_encoder_output() {
        let tagger = tiny_tagger();
        let sents = sentences();
        let batcher = Batcher::new(2, 0);
        let cache =
            EncoderCache::first_subword_rows(&tagger, &sents, &batcher, &Device::Cpu).unwrap();
        assert!(
            cache.rows_of(&[0]).is_err(),
            "scoring rows are not training rows"
        );
        assert!(cache.word_rows(&[2]).unwrap().is_none());
        assert!(cache.word_rows(&[7]).is_err());
        let got = cache.word_rows(&[3, 0]).unwrap().unwrap();
        let mut want = Vec::new();
        for i in [3usize, 0] {
            let batch = batcher.make_batch(&sents, &[i], &Device::Cpu).unwrap();
            let h = tagger
                .encode(&inputs_of(&batch), None)
                .unwrap()
                .get(0)
                .unwrap();
            for t in sents[i].first_subwords().into_iter().flatten() {
                want.push(h.get(t).unwrap());
            }
        }
        let want = Tensor::stack(&want, 0).unwrap();
        assert_eq!(got.dims(), want.dims());
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        assert_eq!(cache.rows_of_sentence(3), 4);
    }

    #[test]
    fn labelled_rows_of_a_padded_batch_keep_labelled_tokens_in_order() {
        let hidden = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap();
        let labels = Tensor::new(&[[I, 4, 1], [2, I, I]], &Device::Cpu).unwrap();
        let rows = CachedRows::labelled(&hidden, &labels).unwrap();
        assert_eq!(
            rows.hidden.to_vec2::<f32>().unwrap(),
            vec![vec![2.0, 3.0], vec![4.0, 5.0], vec![6.0, 7.0]]
        );
        assert_eq!(rows.labels.to_vec1::<i64>().unwrap(), vec![4, 1, 2]);
        let none = Tensor::new(&[[I, I, I], [I, I, I]], &Device::Cpu).unwrap();
        let rows = CachedRows::labelled(&hidden, &none).unwrap();
        assert_eq!(rows.hidden.dims(), [1, 2]);
        assert_eq!(rows.labels.to_vec1::<i64>().unwrap(), vec![I]);
        assert!(CachedRows::labelled(&hidden, &labels.t().unwrap()).is_err());
    }

    #[test]
    fn a_trainable_encoder_is_refused() {
        let mut tagger = tiny_tagger();
        tagger
            .set_trainable(&[ParamGroup::Encoder, ParamGroup::Head("x".into())])
            .unwrap();
        let err =
            EncoderCache::labelled_rows(&tagger, &sentences(), &Batcher::new(2, 0), &Device::Cpu)
                .err()
                .expect("a trainable encoder cannot be cached");
        assert!(err.to_string().contains("trainable"), "{err}");
    }
}
