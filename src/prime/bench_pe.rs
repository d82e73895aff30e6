//! Timing of parameter-efficient steps other than the paper's adapter — a fine-tuning step and
//! a meta-priming outer step with the method as the inner loop — for `make bench`, against the
//! PyTorch + `peft` equivalents of `tools/bench_pe.py` (the same shapes, batches built the same
//! way as [`super::bench`]'s, the same optimiser settings).
//!
//! LoRA and BitFit act inside the encoder, so neither step can use an encoder cache: both run
//! the encoder forward and backward at every (inner) step, as the PyTorch side does.

use super::bench::{BenchTiming, MetaBenchSpec, synthetic_batch, time_meta_steps_with, timing};
use super::error::{PrimeError, Result};
use crate::config::PeSettings;
use crate::model::{DEFAULT_NUM_LABELS, ParamGroup, PeSpec, Tagger, masked_cross_entropy};
use crate::rng::SeededRng;
use crate::train::inputs_of;
use crate::train::optim::{AdamW, AdamWConfig};
use std::time::Instant;

/// The PE method the LoRA bench rows time: LoRA with primer's defaults (r 8, α 8, query and
/// value of every layer), `lora_dropout` 0 — what `tools/bench_pe.py` gives `peft`.
pub fn lora_bench_spec() -> PeSpec {
    PeSettings::default().spec(crate::config::PeKind::Lora, 0)
}

/// Settings of a fine-tuning-step benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneBenchSpec {
    /// Sentences per batch.
    pub batch: usize,
    /// Padded sequence length.
    pub seq: usize,
    /// AdamW's learning rate (weight decay 0.01, torch's defaults otherwise).
    pub lr: f64,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    pub seed: u64,
}

impl Default for FinetuneBenchSpec {
    /// The reference benchmark's shapes: batch 16, seq 64, 2 warm-up and 5 timed steps.
    fn default() -> Self {
        Self {
            batch: 16,
            seq: 64,
            lr: 5e-4,
            warmup: 2,
            steps: 5,
            seed: 0,
        }
    }
}

/// Times fine-tuning steps of the PE method `pe` (created on `tagger` when it carries none) and
/// a new head: forward through the encoder and the module, loss, backward, one AdamW step on
/// the module and the head. Batches are synthetic ([`synthetic_batch`]) and built before the
/// clock starts; the model runs with the dropout its config says.
pub fn time_pe_finetune_steps(
    mut tagger: Tagger,
    pe: &PeSpec,
    spec: &FinetuneBenchSpec,
) -> Result<BenchTiming> {
    if spec.steps == 0 {
        return Err(PrimeError::Config(
            "a benchmark needs at least one timed step".into(),
        ));
    }
    let device = tagger.device().clone();
    tagger.ensure_pe(pe, &mut SeededRng::derive(spec.seed, "init.pe"))?;
    let lang = "t0";
    tagger.add_head(
        lang,
        DEFAULT_NUM_LABELS,
        &mut SeededRng::derive(spec.seed, "init.head.t0"),
    )?;
    let pe_group = tagger
        .pe_group()
        .ok_or_else(|| PrimeError::Config("the model has no PE module".into()))?;
    tagger.set_trainable(&[pe_group, ParamGroup::Head(lang.into())])?;
    let vocab = tagger.config.vocab_size;
    let mut data_rng = SeededRng::derive(spec.seed, "bench.batches");
    let batches = (0..spec.warmup + spec.steps)
        .map(|_| synthetic_batch(&mut data_rng, spec.batch, spec.seq, vocab, 0, 1, &device))
        .collect::<Result<Vec<_>>>()?;
    let mut opt = AdamW::new(
        tagger.trainable_vars(),
        AdamWConfig {
            lr: spec.lr,
            ..AdamWConfig::default()
        },
    )?;
    let mut times = Vec::with_capacity(spec.steps);
    let mut losses = Vec::with_capacity(spec.steps);
    for (k, batch) in batches.iter().enumerate() {
        let t0 = Instant::now();
        let logits = tagger.logits(&inputs_of(batch), lang, None)?;
        let loss = masked_cross_entropy(&logits, &batch.labels)?;
        let grads = crate::model::backward(&loss)?;
        opt.step(&grads)?;
        // Reading the loss synchronises with the device, so the time is the step's.
        let value = loss.to_scalar::<f32>()? as f64;
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        if k >= spec.warmup {
            times.push(dt);
            losses.push(value);
        }
    }
    timing(times, &losses)
}

/// Times meta-priming outer steps with the PE method `pe` (created on `tagger` when it carries
/// none) as the inner loop's module: [`super::bench::time_meta_steps`] for any method (that
/// one creates the paper's adapter; `spec.adapter_dim` is not read here).
pub fn time_pe_meta_steps(
    tagger: Tagger,
    pe: &PeSpec,
    spec: &MetaBenchSpec,
) -> Result<BenchTiming> {
    time_meta_steps_with(tagger, pe, "init.pe", spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BertConfig;
    use crate::model::init::random_encoder;
    use candle_core::Device;

    #[test]
    fn lora_bench_spec_is_the_default_lora() {
        let PeSpec::Lora {
            r,
            alpha,
            targets,
            dropout,
        } = lora_bench_spec()
        else {
            panic!("not LoRA: {:?}", lora_bench_spec());
        };
        assert_eq!((r, alpha, dropout), (8, 8.0, 0.0));
        assert_eq!(targets.len(), 2);
    }

    /// Both timers run on a tiny random model and train: the loss moves.
    #[test]
    fn pe_timers_run_on_a_tiny_model() {
        let mut cfg = BertConfig::new(200, 16, 2, 2, 32);
        cfg.max_position_embeddings = 16;
        let cfg = cfg.with_dropout(0.0);
        let dev = Device::Cpu;
        let enc = random_encoder(&cfg, 0, &dev).unwrap().to_params().unwrap();
        let tagger = Tagger::new(cfg, enc, dev);
        for pe in [lora_bench_spec(), PeSpec::BitFit] {
            let ft = FinetuneBenchSpec {
                batch: 2,
                seq: 8,
                lr: 1e-2,
                warmup: 1,
                steps: 3,
                seed: 1,
            };
            let t = time_pe_finetune_steps(tagger.clone(), &pe, &ft).unwrap();
            assert_eq!(t.times_ms.len(), 3);
            assert!(
                t.first_loss.is_finite() && t.first_loss != t.last_loss,
                "{t:?}"
            );
            let meta = MetaBenchSpec {
                batch: 2,
                seq: 8,
                inner_steps: 2,
                steps: 2,
                ..MetaBenchSpec::meta_pe()
            };
            let t = time_pe_meta_steps(tagger.clone(), &pe, &meta).unwrap();
            assert_eq!(t.times_ms.len(), 2);
            assert!(t.first_loss.is_finite(), "{t:?}");
        }
        // A tagger already carrying another method is an error, not a silent switch.
        let mut with_adapter = tagger.clone();
        with_adapter
            .ensure_adapter(4, &mut SeededRng::new(0))
            .unwrap();
        assert!(
            time_pe_meta_steps(with_adapter, &lora_bench_spec(), &MetaBenchSpec::meta_pe())
                .is_err()
        );
    }
}
