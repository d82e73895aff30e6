//! Timing of meta-priming outer steps on synthetic batches, for `make bench`: the same shapes
//! and batch construction as the PyTorch reference's benchmark (`torch_ref.py --mode meta-pe`
//! / `meta-full`), so the two can be run side by side and compared as a ratio.

use super::error::{PrimeError, Result};
use super::meta::{InnerParams, MetaStepConfig, PrimingState, TaskBatches, meta_step};
use super::outer::AdamWOuter;
use crate::config::{InnerDropout, SupportMode};
use crate::data::Batch;
use crate::model::{DEFAULT_NUM_LABELS, PeSpec, Tagger};
use crate::op_timing::{self, OpTable};
use crate::rng::SeededRng;
use crate::train::optim::AdamWConfig;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Shapes and settings of a meta-step benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaBenchSpec {
    /// Sentences per support and per query batch.
    pub batch: usize,
    /// Padded sequence length.
    pub seq: usize,
    pub tasks: usize,
    pub inner_steps: usize,
    pub support: SupportMode,
    pub inner: InnerParams,
    pub inner_lr: f64,
    pub outer_lr: f64,
    pub adapter_dim: usize,
    /// Dropout probability of the model during the steps; None runs without dropout
    /// (evaluation mode), as the reference benchmark does.
    pub dropout: Option<f64>,
    /// How the inner loop draws its masks when `dropout` is given.
    pub inner_dropout: InnerDropout,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    pub seed: u64,
    /// Record where the timed steps' time goes, op by op ([`crate::op_timing`]).
    pub record_ops: bool,
}

impl MetaBenchSpec {
    /// The reference benchmark's meta-pe defaults: batch 16, seq 64, 2 tasks, S = 5.
    pub fn meta_pe() -> Self {
        Self {
            batch: 16,
            seq: 64,
            tasks: 2,
            inner_steps: 5,
            support: SupportMode::Same,
            inner: InnerParams::PE,
            inner_lr: 0.03,
            outer_lr: 5e-5,
            adapter_dim: 64,
            dropout: None,
            inner_dropout: InnerDropout::PerStep,
            warmup: 1,
            steps: 3,
            seed: 0,
            record_ops: false,
        }
    }

    /// The MAML-loop ablation with distinct support batches.
    pub fn meta_full_distinct() -> Self {
        Self {
            support: SupportMode::Distinct,
            inner: InnerParams::FULL,
            inner_lr: 1e-4,
            ..Self::meta_pe()
        }
    }
}

/// Wall-clock times of the timed steps.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchTiming {
    pub times_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Mean query loss of the first and the last step (a sanity check that work was done).
    pub first_loss: f64,
    pub last_loss: f64,
    /// The timed steps' time by op, summed over them, when `record_ops` was asked for.
    pub ops: Option<OpTable>,
}

/// A synthetic NER batch like the reference's `make_batch`: `[CLS] content… [SEP] [PAD]…`
/// with random lengths in `[seq/2, seq]`, task `task` drawing content ids from its own band of
/// the vocabulary, mostly-`O` labels, −100 on specials, padding and ~15% of positions.
pub fn synthetic_batch(
    rng: &mut SeededRng,
    batch: usize,
    seq: usize,
    vocab: usize,
    task: usize,
    n_tasks: usize,
    device: &Device,
) -> Result<Batch> {
    const PAD: u32 = 0;
    const CLS: u32 = 101;
    const SEP: u32 = 102;
    const FIRST: usize = 103;
    if seq < 3 || vocab <= FIRST + n_tasks {
        return Err(PrimeError::Config(format!(
            "synthetic batches need seq ≥ 3 and a vocabulary above {} ids",
            FIRST + n_tasks
        )));
    }
    let band = (vocab - FIRST) / n_tasks.max(1);
    let lo = FIRST + task * band;
    let mut ids = vec![PAD; batch * seq];
    let mut mask = vec![0u32; batch * seq];
    let mut labels = vec![-100i64; batch * seq];
    let probs = [0.55f32, 0.075, 0.075, 0.075, 0.075, 0.075, 0.075];
    let mut lengths = Vec::with_capacity(batch);
    for b in 0..batch {
        let min_len = (seq / 2).max(3);
        let len = min_len + rng.below(seq - min_len + 1);
        lengths.push(len);
        for p in 0..len {
            let i = b * seq + p;
            mask[i] = 1;
            ids[i] = if p == 0 {
                CLS
            } else if p == len - 1 {
                SEP
            } else {
                (lo + rng.below(band)) as u32
            };
            if p > 0 && p < len - 1 && rng.uniform() >= 0.15 {
                let u = rng.uniform();
                let mut acc = 0.0;
                let mut label = probs.len() - 1;
                for (k, pk) in probs.iter().enumerate() {
                    acc += pk;
                    if u < acc {
                        label = k;
                        break;
                    }
                }
                labels[i] = label as i64;
            }
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (batch, seq), device)?,
        attention_mask: Tensor::from_vec(mask, (batch, seq), device)?,
        token_type_ids: None,
        labels: Tensor::from_vec(labels, (batch, seq), device)?,
        indices: (0..batch).collect(),
        lengths,
    })
}

/// One step's synthetic tasks (languages "t0", "t1", …).
pub fn synthetic_tasks(
    spec: &MetaBenchSpec,
    vocab: usize,
    rng: &mut SeededRng,
    device: &Device,
) -> Result<Vec<TaskBatches>> {
    let n_support = match spec.support {
        SupportMode::Same => 1,
        SupportMode::Distinct => spec.inner_steps,
    };
    (0..spec.tasks)
        .map(|t| {
            let support = (0..n_support)
                .map(|_| synthetic_batch(rng, spec.batch, spec.seq, vocab, t, spec.tasks, device))
                .collect::<Result<Vec<_>>>()?;
            Ok(TaskBatches {
                lang: format!("t{t}"),
                support,
                query: synthetic_batch(rng, spec.batch, spec.seq, vocab, t, spec.tasks, device)?,
            })
        })
        .collect()
}

/// Times `spec.steps` meta outer steps (after `spec.warmup` untimed ones) of `tagger` (whose
/// encoder is used as loaded; an adapter and one head per task are created when missing).
/// Batches are built before the clock starts; dropout is off unless `spec.dropout` is given
/// (the reference runs without).
pub fn time_meta_steps(tagger: Tagger, spec: &MetaBenchSpec) -> Result<BenchTiming> {
    time_meta_steps_with(
        tagger,
        &PeSpec::adapter(spec.adapter_dim),
        "init.adapter",
        spec,
    )
}

/// [`time_meta_steps`] with the PE method `pe` as the inner loop's module, created on `tagger`
/// from the seed stream `init_stream` when it carries none (another method is an error).
pub(crate) fn time_meta_steps_with(
    mut tagger: Tagger,
    pe: &PeSpec,
    init_stream: &str,
    spec: &MetaBenchSpec,
) -> Result<BenchTiming> {
    if spec.steps == 0 {
        return Err(PrimeError::Config(
            "a benchmark needs at least one timed step".into(),
        ));
    }
    let device = tagger.device().clone();
    tagger.ensure_pe(pe, &mut SeededRng::derive(spec.seed, init_stream))?;
    for t in 0..spec.tasks {
        let lang = format!("t{t}");
        if !tagger.heads.contains_key(&lang) {
            tagger.add_head(
                &lang,
                DEFAULT_NUM_LABELS,
                &mut SeededRng::derive(spec.seed, &format!("init.head.{lang}")),
            )?;
        }
    }
    let vocab = tagger.config.vocab_size;
    let mut data_rng = SeededRng::derive(spec.seed, "bench.batches");
    let all: Vec<Vec<TaskBatches>> = (0..spec.warmup + spec.steps)
        .map(|_| synthetic_tasks(spec, vocab, &mut data_rng, &device))
        .collect::<Result<_>>()?;
    let vars = tagger.vars_of(&tagger.encoder_and_pe_groups()?)?;
    let mut opt = AdamWOuter::new(
        vars,
        AdamWConfig {
            lr: spec.outer_lr,
            ..AdamWConfig::default()
        },
        None,
    )?;
    let cfg = MetaStepConfig {
        inner: spec.inner,
        inner_steps: spec.inner_steps,
        inner_lr: spec.inner_lr,
        record_adapted_encoder: false,
        inner_dropout: spec.inner_dropout,
    };
    let dropout = spec.dropout.map(|p| {
        tagger.config = tagger.config.with_dropout(p);
        SeededRng::derive(spec.seed, "bench.dropout")
    });
    let mut state = PrimingState::new(tagger, dropout);
    let mut times = Vec::with_capacity(spec.steps);
    let mut losses = Vec::new();
    for (k, tasks) in all.iter().enumerate() {
        if spec.record_ops && k == spec.warmup {
            op_timing::start();
        }
        let t0 = Instant::now();
        let rec = meta_step(&mut state, tasks, &cfg, &mut opt)?;
        // Reading the losses synchronises with the device, so the time is the step's.
        let loss =
            rec.tasks.iter().map(|t| t.query_loss).sum::<f64>() / rec.tasks.len().max(1) as f64;
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        losses.push(loss);
        if k >= spec.warmup {
            times.push(dt);
        }
    }
    let ops = spec.record_ops.then(op_timing::finish);
    Ok(BenchTiming {
        ops,
        ..timing(times, &losses)?
    })
}

/// The median and extremes of timed steps: the one summary every bench timer reports
/// (primer's fine-tuning steps in [`crate::bench`], the meta and PE steps here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// The [`Spread`] of `times_ms`; None when there are none. An even count's median is the mean
/// of the middle two, as Python's `statistics.median`, which the PyTorch side's medians use:
/// the two sides' rows then summarise their steps the same way.
pub(crate) fn spread(times_ms: &[f64]) -> Option<Spread> {
    let mut sorted = times_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median_ms = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some(Spread {
        median_ms,
        min_ms: sorted[0],
        max_ms: sorted[n - 1],
    })
}

/// Median, extremes and first/last loss of timed steps.
pub(crate) fn timing(times_ms: Vec<f64>, losses: &[f64]) -> Result<BenchTiming> {
    let no_step = || PrimeError::Config("a benchmark needs at least one timed step".into());
    let (Some(&first_loss), Some(&last_loss)) = (losses.first(), losses.last()) else {
        return Err(no_step());
    };
    let Spread {
        median_ms,
        min_ms,
        max_ms,
    } = spread(&times_ms).ok_or_else(no_step)?;
    Ok(BenchTiming {
        median_ms,
        min_ms,
        max_ms,
        times_ms,
        first_loss,
        last_loss,
        ops: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_value_and_the_extremes() {
        let s = |v: &[f64]| spread(v).map(|s| (s.median_ms, s.min_ms, s.max_ms));
        assert_eq!(s(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        // Even counts: the mean of the middle two (Python's statistics.median).
        assert_eq!(s(&[3.0, 1.0, 2.0, 10.0]), Some((2.5, 1.0, 10.0)));
        assert_eq!(s(&[7.0]), Some((7.0, 7.0, 7.0)));
        assert_eq!(s(&[]), None);
    }

    #[test]
    fn timing_keeps_the_spread_the_times_and_the_first_and_last_loss() {
        let t = timing(vec![3.0, 1.0, 2.0, 10.0], &[1.0, 0.5]).unwrap();
        assert_eq!((t.median_ms, t.min_ms, t.max_ms), (2.5, 1.0, 10.0));
        assert_eq!(t.times_ms, [3.0, 1.0, 2.0, 10.0]);
        assert_eq!((t.first_loss, t.last_loss), (1.0, 0.5));
        assert!(timing(vec![], &[]).is_err());
        assert!(timing(vec![1.0], &[]).is_err());
    }
}
