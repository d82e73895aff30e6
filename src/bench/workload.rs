//! What primer's side of the bench times: a MiniLM-sized random tagger, synthetic NER
//! batches like the reference's, training steps and a whole adapter-tuning run.

use super::error::BenchError;
use crate::config::FinetuneMethod;
use crate::data::{Batch, Batcher, EncodedSentence};
use crate::model::init::random_encoder;
use crate::model::{BertConfig, IGNORE_INDEX, ParamGroup, Tagger, masked_cross_entropy};
use crate::op_timing::{self, OpTable};
use crate::rng::SeededRng;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::{EncoderCache, inputs_of};
use candle_core::Device;
use std::time::Instant;

/// Sentences per batch, as the reference's `--batch` default.
pub const BATCH: usize = 16;
/// Longest sentence (tokens), as the reference's `--seq` default.
pub const SEQ: usize = 64;

/// The reference's `--minilm` preset (H384, L6, 12 heads, vocab 30522), without dropout.
pub fn minilm_config() -> BertConfig {
    let mut c = BertConfig::new(30522, 384, 6, 12, 1536);
    c.hidden_dropout_prob = 0.0;
    c.attention_probs_dropout_prob = 0.0;
    c
}

/// Synthetic NER sentences like the reference's: random lengths in [SEQ/2, SEQ], [CLS] ... [SEP],
/// mostly-`O` labels with ~15% ignored positions.
fn synthetic_sentences(n: usize, vocab: u32, rng: &mut SeededRng) -> Vec<EncodedSentence> {
    (0..n)
        .map(|_| {
            let len = SEQ / 2 + rng.below(SEQ / 2 + 1);
            let mut ids = vec![101u32];
            let mut labels = vec![IGNORE_INDEX];
            for _ in 1..len - 1 {
                ids.push(103 + rng.below((vocab - 103) as usize) as u32);
                labels.push(if rng.uniform() < 0.15 {
                    IGNORE_INDEX
                } else if rng.uniform() < 0.55 {
                    0
                } else {
                    1 + rng.below(6) as i64
                });
            }
            ids.push(102);
            labels.push(IGNORE_INDEX);
            let word_ids = (0..len as i64)
                .map(|t| {
                    if t == 0 || t == len as i64 - 1 {
                        -1
                    } else {
                        t - 1
                    }
                })
                .collect();
            EncodedSentence {
                input_ids: ids,
                word_ids,
                labels,
                n_words: len - 2,
                truncated_words: 0,
            }
        })
        .collect()
}

/// The middle value (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The tagger and data every primer measurement of the bench uses.
pub(crate) struct Workload {
    device: Device,
    pub tagger: Tagger,
    batches: Vec<Batch>,
    sentences: Vec<EncodedSentence>,
}

/// Times of the timed steps of [`Workload::train_steps`], and where they went when asked.
pub(crate) struct StepTimes {
    pub times_ms: Vec<f64>,
    /// CPU time of the whole process (every thread) per timed step: the work a step took,
    /// less sensitive than wall time to other processes on the cores (NaN without the clock).
    pub cpu_ms: Vec<f64>,
    pub ops: Option<OpTable>,
}

impl Workload {
    pub fn new(run_batches: usize) -> Result<Self, BenchError> {
        let device = Device::Cpu;
        let cfg = minilm_config();
        let enc = random_encoder(&cfg, 0, &device)?.to_params()?;
        let mut tagger = Tagger::new(cfg.clone(), enc, device.clone());
        tagger.ensure_adapter(64, &mut SeededRng::derive(1, "init.adapter"))?;
        tagger.add_head("x", 7, &mut SeededRng::derive(1, "init.head"))?;
        let mut rng = SeededRng::derive(2, "bench.data");
        let sentences =
            synthetic_sentences(run_batches.max(8) * BATCH, cfg.vocab_size as u32, &mut rng);
        let batcher = Batcher::new(BATCH, 0);
        let batches = batcher.sequential_batches(&sentences, &device)?;
        Ok(Self {
            device,
            tagger,
            batches,
            sentences,
        })
    }

    /// The bench's encoder (the same random weights) without a PE module or head, for the
    /// rows of methods other than the paper's adapter.
    pub fn encoder_only_tagger(&self) -> Tagger {
        Tagger::new(
            self.tagger.config.clone(),
            self.tagger.encoder.clone(),
            self.device.clone(),
        )
    }

    /// `steps` optimiser steps of `method` (encoder run every step) after two untimed ones;
    /// with `record_ops`, where the timed steps' time went.
    pub fn train_steps(
        &mut self,
        method: FinetuneMethod,
        steps: usize,
        record_ops: bool,
    ) -> Result<StepTimes, BenchError> {
        const WARMUP: usize = 2;
        let groups = self.tagger.groups_for(method, "x");
        self.tagger.set_trainable(&groups)?;
        let mut opt = AdamW::new(
            self.tagger.trainable_vars(),
            AdamWConfig {
                lr: 5e-5,
                ..AdamWConfig::default()
            },
        )?;
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        let cpu_now = || super::peak::process_cpu_seconds().unwrap_or(f64::NAN);
        for k in 0..steps + WARMUP {
            if record_ops && k == WARMUP {
                op_timing::start();
            }
            let batch = &self.batches[k % self.batches.len()];
            let (t0, c0) = (Instant::now(), cpu_now());
            let logits = self.tagger.logits(&inputs_of(batch), "x", None)?;
            let loss = masked_cross_entropy(&logits, &batch.labels)?;
            let grads = crate::model::backward(&loss)?;
            opt.step(&grads)?;
            if k >= WARMUP {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                cpu.push((cpu_now() - c0) * 1e3);
            }
        }
        Ok(StepTimes {
            times_ms: times,
            cpu_ms: cpu,
            ops: record_ops.then(op_timing::finish),
        })
    }

    /// Median milliseconds of one optimiser step of `method` (encoder run every step).
    pub fn step_ms(&mut self, method: FinetuneMethod, steps: usize) -> Result<f64, BenchError> {
        Ok(median(self.train_steps(method, steps, false)?.times_ms))
    }

    /// A whole adapter-tuning run over `n` batches × `epochs` with the encoder cache.
    pub fn adapter_run(&mut self, n: usize, epochs: usize) -> Result<AdapterRunTimes, BenchError> {
        if n * BATCH > self.sentences.len() || n > self.batches.len() {
            return Err(BenchError::Config(format!(
                "an adapter-tuning run of {n} batches needs the workload built for at least as many"
            )));
        }
        self.tagger
            .set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("x".into())])?;
        let sentences = &self.sentences[..n * BATCH];
        let t0 = Instant::now();
        let cache = EncoderCache::labelled_rows(
            &self.tagger,
            sentences,
            &Batcher::for_inference(&self.device, 0),
            &self.device,
        )?;
        let cache_ms = t0.elapsed().as_secs_f64() * 1e3;
        let cache_flops = cache.encoder_flops();
        let t1 = Instant::now();
        let mut opt = AdamW::new(
            self.tagger.trainable_vars(),
            AdamWConfig {
                lr: 5e-3,
                ..AdamWConfig::default()
            },
        )?;
        for _ in 0..epochs {
            for batch in &self.batches[..n] {
                let rows = cache.rows_of(&batch.indices)?;
                let logits = self.tagger.logits_from_hidden(&rows.hidden, "x")?;
                let loss = masked_cross_entropy(&logits, &rows.labels)?;
                let grads = crate::model::backward(&loss)?;
                opt.step(&grads)?;
            }
        }
        Ok(AdapterRunTimes {
            cache_ms,
            cache_flops,
            train_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Where a whole adapter-tuning run spends its time.
pub(crate) struct AdapterRunTimes {
    /// Encoding every training sentence once (graph-free, length-sorted batches of 512 tokens,
    /// one batch per thread) and keeping its labelled tokens' rows.
    pub cache_ms: f64,
    /// The matrix-product FLOPs of that pass ([`EncoderCache::encoder_flops`]).
    pub cache_flops: f64,
    /// Every optimiser step of every epoch on the batch's cached labelled rows.
    pub train_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_sentences_are_framed_and_within_the_length_bounds() {
        let mut rng = SeededRng::new(3);
        for s in synthetic_sentences(50, 30522, &mut rng) {
            let n = s.input_ids.len();
            assert!((SEQ / 2..=SEQ).contains(&n), "{n}");
            assert_eq!((s.input_ids[0], s.input_ids[n - 1]), (101, 102));
            assert_eq!((s.labels[0], s.labels[n - 1]), (IGNORE_INDEX, IGNORE_INDEX));
            assert!(
                s.labels
                    .iter()
                    .all(|&l| l == IGNORE_INDEX || (0..7).contains(&l))
            );
            assert_eq!(s.n_words, n - 2);
        }
    }

    #[test]
    fn median_takes_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
