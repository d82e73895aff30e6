//! What primer's side of the bench times: a random tagger of one of the bench's sizes
//! ([`SizeName`]), synthetic NER batches like the reference's, training steps and a whole
//! adapter-tuning run, on the device the bench was given.

use super::error::BenchError;
use super::memory::MemoryMeter;
use crate::config::FinetuneMethod;
use crate::data::{Batch, Batcher, EncodedSentence};
use crate::model::init::random_encoder;
use crate::model::{BertConfig, IGNORE_INDEX, ParamGroup, Tagger, masked_cross_entropy};
use crate::op_timing::{self, OpTable};
use crate::prime::bench::spread;
use crate::rng::SeededRng;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::{EncoderCache, inputs_of};
use candle_core::Device;
use std::time::Instant;

/// The model shapes the bench can time, all randomly initialised (no weights are read) and
/// without dropout, as the reference runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeName {
    /// The reference's `--tiny` preset (H64, L2, 2 heads, FFN 128, vocab 1000), batch 8 × seq
    /// 32: seconds on a CPU, for tests of the bench itself.
    Tiny,
    /// The reference's `--minilm` preset (H384, L6, 12 heads, FFN 1536, vocab 30522), batch 16 ×
    /// seq 64: `make bench`'s workload, the one its recorded ratios are for.
    Minilm,
    /// bert-base-multilingual-cased's shape (H768, L12, 12 heads, FFN 3072, vocab 119547),
    /// batch 32 × seq 128: the paper's model at a GPU batch (issue 19's GPU check).
    Mbert,
}

impl SizeName {
    /// The name as the CLI and the PyTorch side spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SizeName::Tiny => "tiny",
            SizeName::Minilm => "minilm",
            SizeName::Mbert => "mbert",
        }
    }

    /// The model and the default batch shape of this size.
    pub fn workload(self) -> WorkloadSize {
        let (config, batch, seq) = match self {
            SizeName::Tiny => (BertConfig::new(1000, 64, 2, 2, 128), 8, 32),
            SizeName::Minilm => (BertConfig::new(30522, 384, 6, 12, 1536), 16, 64),
            SizeName::Mbert => (BertConfig::new(119547, 768, 12, 12, 3072), 32, 128),
        };
        WorkloadSize {
            name: self,
            config: config.with_dropout(0.0),
            batch,
            seq,
        }
    }
}

/// A model shape and the batch shape the bench's steps run at.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSize {
    pub name: SizeName,
    /// Without dropout (the reference benchmark runs without).
    pub config: BertConfig,
    /// Sentences per batch.
    pub batch: usize,
    /// Longest sentence (tokens): sentences are drawn with lengths in [seq/2, seq].
    pub seq: usize,
}

/// The shortest `--seq` the synthetic sentences allow: `[CLS]`, `[SEP]` and at least two words
/// in the shortest (seq/2) sentence, so every batch has labelled tokens.
pub const MIN_SEQ: usize = 8;

impl WorkloadSize {
    /// This size with the batch shape overridden where given.
    pub fn with_overrides(
        mut self,
        batch: Option<usize>,
        seq: Option<usize>,
    ) -> Result<Self, BenchError> {
        self.batch = batch.unwrap_or(self.batch);
        self.seq = seq.unwrap_or(self.seq);
        if self.batch == 0 {
            return Err(BenchError::Config("--batch must be at least 1".into()));
        }
        let max = self.config.max_position_embeddings;
        if !(MIN_SEQ..=max).contains(&self.seq) {
            return Err(BenchError::Config(format!(
                "--seq must be between {MIN_SEQ} and the model's {max} positions, not {}",
                self.seq
            )));
        }
        Ok(self)
    }

    /// Tokens of one padded batch (batch × seq): what tokens/s counts per batch a step reads.
    pub fn batch_tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// E.g. "mbert size (H768, L12, 12 heads, FFN 3072, vocab 119547), batch 32 × seq 128".
    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} size (H{}, L{}, {} heads, FFN {}, vocab {}), batch {} × seq {}",
            self.name.as_str(),
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
            c.vocab_size,
            self.batch,
            self.seq
        )
    }
}

/// Synthetic NER sentences like the reference's: random lengths in `[seq/2, seq]`, `[CLS] ... [SEP]`,
/// mostly-`O` labels with ~15% ignored positions.
fn synthetic_sentences(
    n: usize,
    seq: usize,
    vocab: u32,
    rng: &mut SeededRng,
) -> Vec<EncodedSentence> {
    (0..n)
        .map(|_| {
            let len = seq / 2 + rng.below(seq - seq / 2 + 1);
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

/// The tagger and data every primer measurement of the bench uses.
pub(crate) struct Workload {
    device: Device,
    pub size: WorkloadSize,
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
    /// A random tagger of `size` on `device`, with data for an adapter-tuning run of
    /// `run_batches` batches (at least 8 batches, which the steps cycle through).
    pub fn new(size: WorkloadSize, device: Device, run_batches: usize) -> Result<Self, BenchError> {
        let cfg = size.config.clone();
        let enc = random_encoder(&cfg, 0, &device)?.to_params()?;
        let mut tagger = Tagger::new(cfg.clone(), enc, device.clone());
        tagger.ensure_adapter(64, &mut SeededRng::derive(1, "init.adapter"))?;
        tagger.add_head("x", 7, &mut SeededRng::derive(1, "init.head"))?;
        let mut rng = SeededRng::derive(2, "bench.data");
        let sentences = synthetic_sentences(
            run_batches.max(8) * size.batch,
            size.seq,
            cfg.vocab_size as u32,
            &mut rng,
        );
        let batcher = Batcher::new(size.batch, 0);
        let batches = batcher.sequential_batches(&sentences, &device)?;
        Ok(Self {
            device,
            size,
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
        let cpu_now = || crate::op_timing::process_cpu_seconds().unwrap_or(f64::NAN);
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
            // On a GPU the step is only queued so far: wait for it (a no-op on the CPU).
            self.device.synchronize()?;
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
        let times = self.train_steps(method, steps, false)?.times_ms;
        spread(&times)
            .map(|s| s.median_ms)
            .ok_or_else(|| BenchError::Config("--steps must be at least 1".into()))
    }

    /// A whole adapter-tuning run over `n` batches × `epochs` with the encoder cache; `meter`
    /// reads the peak memory of its two parts.
    pub fn adapter_run(
        &mut self,
        n: usize,
        epochs: usize,
        meter: &MemoryMeter,
    ) -> Result<AdapterRunTimes, BenchError> {
        if n * self.size.batch > self.sentences.len() || n > self.batches.len() {
            return Err(BenchError::Config(format!(
                "an adapter-tuning run of {n} batches needs the workload built for at least as many"
            )));
        }
        self.tagger
            .set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("x".into())])?;
        let sentences = &self.sentences[..n * self.size.batch];
        meter.reset();
        let t0 = Instant::now();
        let cache = EncoderCache::labelled_rows(
            &self.tagger,
            sentences,
            &Batcher::for_inference(&self.device, 0),
            &self.device,
        )?;
        self.device.synchronize()?;
        let cache_ms = t0.elapsed().as_secs_f64() * 1e3;
        let cache_peak = meter.peak_bytes();
        let cache_flops = cache.encoder_flops();
        meter.reset();
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
        self.device.synchronize()?;
        Ok(AdapterRunTimes {
            cache_ms,
            cache_flops,
            train_ms: t1.elapsed().as_secs_f64() * 1e3,
            cache_peak,
            train_peak: meter.peak_bytes(),
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
    /// Peak memory of the cache pass and of the steps (the cache held).
    pub cache_peak: Option<u64>,
    pub train_peak: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_sentences_are_framed_and_within_the_length_bounds() {
        let mut rng = SeededRng::new(3);
        for s in synthetic_sentences(50, 63, 30522, &mut rng) {
            let n = s.input_ids.len();
            assert!((31..=63).contains(&n), "{n}");
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
    fn the_sizes_are_the_references_presets_and_mbert() {
        let shape = |w: &WorkloadSize| {
            let c = &w.config;
            (
                c.vocab_size,
                c.hidden_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.intermediate_size,
                w.batch,
                w.seq,
            )
        };
        let mbert = SizeName::Mbert.workload();
        assert_eq!(shape(&mbert), (119547, 768, 12, 12, 3072, 32, 128));
        assert_eq!(mbert.batch_tokens(), 4096);
        // make bench's workload, unchanged: its recorded ratios are for this one.
        assert_eq!(
            shape(&SizeName::Minilm.workload()),
            (30522, 384, 6, 12, 1536, 16, 64)
        );
        assert_eq!(
            shape(&SizeName::Tiny.workload()),
            (1000, 64, 2, 2, 128, 8, 32)
        );
        for name in [SizeName::Tiny, SizeName::Minilm, SizeName::Mbert] {
            assert!(!name.workload().config.has_dropout(), "{name:?}");
        }
        assert!(mbert.describe().starts_with(
            "mbert size (H768, L12, 12 heads, FFN 3072, vocab 119547), batch 32 × seq 128"
        ));
    }

    /// The PyTorch side builds mbert from tools/torch_device.py's table: it must be this one.
    #[test]
    fn the_pytorch_side_knows_mbert_by_the_same_shape() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/torch_device.py");
        let text = std::fs::read_to_string(path).unwrap();
        let needle = "\"mbert\": dict(";
        let start = text.find(needle).expect("an mbert entry") + needle.len();
        let entry = &text[start..start + text[start..].find(')').unwrap()];
        let got: std::collections::BTreeMap<&str, usize> = entry
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().parse().unwrap()))
            .collect();
        let c = SizeName::Mbert.workload().config;
        let want = std::collections::BTreeMap::from([
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("num_hidden_layers", c.num_hidden_layers),
            ("num_attention_heads", c.num_attention_heads),
            ("intermediate_size", c.intermediate_size),
        ]);
        assert_eq!(got, want, "{path}");
    }

    #[test]
    fn batch_and_seq_overrides_are_checked() {
        let w = SizeName::Mbert
            .workload()
            .with_overrides(Some(2), Some(8))
            .unwrap();
        assert_eq!((w.batch, w.seq, w.config.hidden_size), (2, 8, 768));
        let w = SizeName::Tiny
            .workload()
            .with_overrides(None, Some(16))
            .unwrap();
        assert_eq!((w.batch, w.seq), (8, 16));
        for (batch, seq, needle) in [
            (Some(0), None, "--batch must be at least 1"),
            (None, Some(7), "--seq must be between 8 and the model's 512"),
            (None, Some(513), "not 513"),
        ] {
            let err = SizeName::Minilm
                .workload()
                .with_overrides(batch, seq)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
