//! Calibration for `primer plan --estimate`: the time of one step of each kind a sweep runs,
//! measured on a device by [`DeviceTimer`] (a randomly initialised model of the run's
//! `config.json`, the run's batch sizes, sequences padded to `data.max_len`), behind the
//! [`StepTimer`] trait so that the estimate is tested with a fake device.

use super::CostError;
use super::memory::ModelConfigs;
use crate::config::{FinetuneMethod, InnerDropout, InnerLoop, PrecisionChoice, SupportMode};
use crate::data::Batch;
use crate::device::DeviceSpec;
use crate::model::dispatch::precision_scope;
use crate::model::init::random_encoder;
use crate::model::{BertConfig, DEFAULT_NUM_LABELS, PeSpec, Tagger, masked_cross_entropy};
use crate::prime::meta::{InnerParams, MetaStepConfig, PrimingState, TaskBatches, meta_step};
use crate::prime::{AdamWOuter, ft_step};
use crate::rng::SeededRng;
use crate::train::optim::{AdamW, AdamWConfig};
use candle_core::{Device, Tensor};
use std::path::PathBuf;
use std::time::Instant;

/// What one timed step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// One fine-tuning optimiser step of `method` on `batch` sentences: the encoder runs with
    /// dropout, or, `cached`, the PE module's after-encoder part and the head read cached rows.
    Finetune {
        method: FinetuneMethod,
        pe: Option<PeSpec>,
        batch: usize,
        cached: bool,
    },
    /// A graph-free encoder forward over `batch` sentences (filling the encoder cache).
    Encode { batch: usize },
    /// One meta-priming outer step: `tasks` tasks, each S inner steps and a query pass.
    MetaOuter {
        pe: PeSpec,
        inner: InnerLoop,
        inner_steps: usize,
        support: SupportMode,
        inner_dropout: InnerDropout,
        tasks: usize,
        support_batch: usize,
        query_batch: usize,
    },
    /// One FT-priming step: one batch of `batch` sentences per task.
    FtPrime {
        pe: PeSpec,
        tasks: usize,
        batch: usize,
    },
}

/// A step kind on a model at a padded length: the unit that step counts multiply.
#[derive(Debug, Clone, PartialEq)]
pub struct StepShape {
    /// The model folder (its config.json).
    pub model: PathBuf,
    /// Padded sequence length (the run's `data.max_len`).
    pub seq: usize,
    pub kind: StepKind,
    /// The run's `precision`, resolved on the device that times it (bf16 steps on a GPU take
    /// a fraction of fp32's).
    pub precision: PrecisionChoice,
}

impl StepShape {
    /// One line for the user: `fine-tuning step, adapter, batch 32 on cached encoder rows,
    /// length 128 (models/mbert)`.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            StepKind::Finetune {
                method,
                pe,
                batch,
                cached,
            } => {
                // A module the method does not train itself: a primed one it carries.
                let carried = match (method, pe) {
                    (FinetuneMethod::Full | FinetuneMethod::Head, Some(pe)) => {
                        format!(" with the primed {}", pe.method().name())
                    }
                    _ => String::new(),
                };
                let rows = if *cached {
                    " on cached encoder rows"
                } else {
                    ""
                };
                format!("fine-tuning step, {method}{carried}, batch {batch}{rows}")
            }
            StepKind::Encode { batch } => format!("graph-free encoder pass, batch {batch}"),
            StepKind::MetaOuter {
                pe,
                inner,
                inner_steps,
                support,
                tasks,
                support_batch,
                query_batch,
                ..
            } => format!(
                "meta outer step, {} loop over {}, S={inner_steps} ({} support), \
                 {tasks} tasks × {support_batch}+{query_batch} sentences",
                format!("{inner:?}").to_lowercase(),
                pe.method().name(),
                format!("{support:?}").to_lowercase(),
            ),
            StepKind::FtPrime { tasks, batch, .. } => {
                format!("FT-priming step, {tasks} tasks × {batch} sentences")
            }
        };
        let precision = match self.precision {
            PrecisionChoice::Auto => String::new(),
            p => format!(", {}", p.as_str()),
        };
        format!(
            "{what}, length {}{precision} ({})",
            self.seq,
            self.model.display()
        )
    }
}

/// Measures steps on a device.
pub trait StepTimer {
    /// The device it measures, for the user (`cpu`, `cuda:0`).
    fn device(&self) -> String;
    /// How many timed steps each measurement averages.
    fn timed_steps(&self) -> usize;
    /// Mean seconds of one step of `shape`.
    fn seconds_per_step(&mut self, shape: &StepShape) -> Result<f64, CostError>;
}

/// Times real steps on a device: for each shape, a random model of its config.json, one
/// untimed warm-up step, then the mean of `steps` timed ones (the device synchronised after
/// each). Data loading, evaluation and checkpoints are not part of a step.
pub struct DeviceTimer {
    spec: DeviceSpec,
    device: Device,
    steps: usize,
    models: ModelConfigs,
    /// Told before and after each measurement (it can take minutes on a CPU).
    notice: Box<dyn FnMut(&str)>,
}

impl DeviceTimer {
    pub fn new(
        spec: DeviceSpec,
        steps: usize,
        notice: Box<dyn FnMut(&str)>,
    ) -> Result<Self, CostError> {
        crate::config::check_calibration_steps(steps)?;
        Ok(Self {
            device: spec.open()?,
            spec,
            steps,
            models: ModelConfigs::default(),
            notice,
        })
    }
}

/// A batch of `batch` sentences of exactly `seq` tokens (`[CLS] … [SEP]`, random ids above the
/// special ones, random WikiAnn labels on the words): the padded length every step is timed at.
fn synthetic_batch(
    batch: usize,
    seq: usize,
    vocab: usize,
    rng: &mut SeededRng,
    device: &Device,
) -> candle_core::Result<Batch> {
    const FIRST_WORD_ID: usize = 103;
    let words = vocab.saturating_sub(FIRST_WORD_ID).max(1);
    let mut ids = Vec::with_capacity(batch * seq);
    let mut labels = Vec::with_capacity(batch * seq);
    for _ in 0..batch {
        for p in 0..seq {
            let special = p == 0 || p + 1 == seq;
            ids.push(match p {
                0 => 101u32.min(vocab as u32 - 1),
                _ if special => 102u32.min(vocab as u32 - 1),
                _ => ((FIRST_WORD_ID + rng.below(words)) % vocab) as u32,
            });
            labels.push(if special {
                crate::model::IGNORE_INDEX
            } else {
                rng.below(DEFAULT_NUM_LABELS) as i64
            });
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (batch, seq), device)?,
        attention_mask: Tensor::ones((batch, seq), candle_core::DType::U32, device)?,
        token_type_ids: None,
        labels: Tensor::from_vec(labels, (batch, seq), device)?,
        indices: (0..batch).collect(),
        lengths: vec![seq; batch],
    })
}

/// Runs `step` once untimed, then `n` times timed; the mean seconds.
fn mean_seconds(
    n: usize,
    device: &Device,
    mut step: impl FnMut() -> Result<(), BoxError>,
) -> Result<f64, BoxError> {
    step()?;
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..n {
        step()?;
        device.synchronize()?;
    }
    Ok(t0.elapsed().as_secs_f64() / n as f64)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl StepTimer for DeviceTimer {
    fn device(&self) -> String {
        self.spec.to_string()
    }

    fn timed_steps(&self) -> usize {
        self.steps
    }

    fn seconds_per_step(&mut self, shape: &StepShape) -> Result<f64, CostError> {
        (self.notice)(&format!("{} ...", shape.describe()));
        let config = self.models.get(&shape.model)?.clone();
        let seconds = time_shape(&config, shape, self.steps, &self.device).map_err(|source| {
            CostError::Calibration {
                what: shape.describe(),
                source,
            }
        })?;
        (self.notice)(&format!("{}: {seconds:.3} s/step", shape.describe()));
        Ok(seconds)
    }
}

fn time_shape(
    config: &BertConfig,
    shape: &StepShape,
    steps: usize,
    device: &Device,
) -> Result<f64, BoxError> {
    // Every op of the timed steps is built under the run's precision, as in the run.
    let _precision = precision_scope(shape.precision.resolve(device), device);
    let mut rng = SeededRng::derive(0, "calibrate");
    let encoder = random_encoder(config, 0, device)?.to_params()?;
    let mut tagger = Tagger::new(config.clone(), encoder, device.clone());
    let (vocab, seq) = (config.vocab_size, shape.seq);
    let batch = |n: usize, rng: &mut SeededRng| synthetic_batch(n, seq, vocab, rng, device);
    match &shape.kind {
        StepKind::Finetune {
            method,
            pe,
            batch: b,
            cached,
        } => {
            if let Some(pe) = pe {
                tagger.ensure_pe(pe, &mut rng)?;
            }
            tagger.add_head("x", DEFAULT_NUM_LABELS, &mut rng)?;
            let groups = tagger.groups_for(*method, "x");
            tagger.set_trainable(&groups)?;
            let mut opt = AdamW::new(tagger.trainable_vars(), AdamWConfig::default())?;
            let data = batch(*b, &mut rng)?;
            // The cache keeps one row per labelled word: at most every non-special token.
            let rows = *b * seq.saturating_sub(2).max(1);
            let hidden = Tensor::randn(0f32, 1.0, (rows, config.hidden_size), device)?;
            let labels = Tensor::zeros(rows, candle_core::DType::I64, device)?;
            let mut dropout = SeededRng::derive(0, "calibrate.dropout");
            mean_seconds(steps, device, || {
                let (logits, labels) = if *cached {
                    (tagger.logits_from_hidden(&hidden, "x")?, labels.clone())
                } else {
                    let inputs = crate::train::inputs_of(&data);
                    (
                        tagger.logits(&inputs, "x", Some(&mut dropout))?,
                        data.labels.clone(),
                    )
                };
                let loss = masked_cross_entropy(&logits, &labels)?;
                let grads = crate::model::backward(&loss)?;
                opt.step(&grads)?;
                Ok(())
            })
        }
        StepKind::Encode { batch: b } => {
            let data = batch(*b, &mut rng)?;
            let frozen = tagger.frozen_encoder()?;
            mean_seconds(steps, device, || {
                frozen.encode(&crate::train::inputs_of(&data))?;
                Ok(())
            })
        }
        StepKind::MetaOuter {
            pe,
            inner,
            inner_steps,
            support,
            inner_dropout,
            tasks,
            support_batch,
            query_batch,
        } => {
            tagger.ensure_pe(pe, &mut rng)?;
            let langs: Vec<String> = (0..*tasks).map(|t| format!("t{t}")).collect();
            for l in &langs {
                tagger.add_head(l, DEFAULT_NUM_LABELS, &mut rng)?;
            }
            let vars = tagger.vars_of(&tagger.encoder_and_pe_groups()?)?;
            let mut opt = AdamWOuter::new(vars, AdamWConfig::default(), None)?;
            let n_support = match support {
                SupportMode::Same => 1,
                SupportMode::Distinct => *inner_steps,
            };
            let task_batches = langs
                .iter()
                .map(|l| {
                    Ok(TaskBatches {
                        lang: l.clone(),
                        support: (0..n_support)
                            .map(|_| batch(*support_batch, &mut rng))
                            .collect::<candle_core::Result<_>>()?,
                        query: batch(*query_batch, &mut rng)?,
                    })
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let cfg = MetaStepConfig {
                inner: InnerParams::of(*inner),
                inner_steps: *inner_steps,
                // The paper's rates: the time does not depend on them.
                inner_lr: match inner {
                    InnerLoop::Pe => 0.03,
                    InnerLoop::Full => 1e-4,
                },
                record_adapted_encoder: false,
                inner_dropout: *inner_dropout,
            };
            let mut state =
                PrimingState::new(tagger, Some(SeededRng::derive(0, "calibrate.dropout")));
            mean_seconds(steps, device, || {
                meta_step(&mut state, &task_batches, &cfg, &mut opt)?;
                Ok(())
            })
        }
        StepKind::FtPrime {
            pe,
            tasks,
            batch: b,
        } => {
            tagger.ensure_pe(pe, &mut rng)?;
            let langs: Vec<String> = (0..*tasks).map(|t| format!("t{t}")).collect();
            for l in &langs {
                tagger.add_head(l, DEFAULT_NUM_LABELS, &mut rng)?;
            }
            let mut vars = tagger.vars_of(&tagger.encoder_and_pe_groups()?)?;
            for (lang, h) in &tagger.heads {
                vars.extend(h.named_vars_with_prefix(&format!("head.{lang}.")));
            }
            let mut opt = AdamWOuter::new(vars, AdamWConfig::default(), None)?;
            let batches = langs
                .iter()
                .map(|l| Ok((l.clone(), batch(*b, &mut rng)?)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let mut state =
                PrimingState::new(tagger, Some(SeededRng::derive(0, "calibrate.dropout")));
            mean_seconds(steps, device, || {
                ft_step(&mut state, &batches, &mut opt)?;
                Ok(())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step kind runs on a tiny random model (the times themselves are not checked:
    /// no test asserts on wall-clock speed).
    #[test]
    fn every_step_kind_runs_on_a_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BertConfig::new(200, 16, 2, 2, 32);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&cfg.to_json()).unwrap(),
        )
        .unwrap();
        let mut timer = DeviceTimer::new(DeviceSpec::Cpu, 1, Box::new(|_| {})).unwrap();
        assert_eq!(timer.device(), "cpu");
        let adapter = PeSpec::adapter(4);
        let lora = crate::config::FinetuneConfig {
            method: FinetuneMethod::Lora,
            ..Default::default()
        }
        .pe_spec();
        let kinds = [
            StepKind::Finetune {
                method: FinetuneMethod::Full,
                pe: None,
                batch: 2,
                cached: false,
            },
            StepKind::Finetune {
                method: FinetuneMethod::Adapter,
                pe: Some(adapter.clone()),
                batch: 2,
                cached: true,
            },
            StepKind::Finetune {
                method: FinetuneMethod::Lora,
                pe: lora,
                batch: 2,
                cached: false,
            },
            StepKind::Encode { batch: 2 },
            StepKind::MetaOuter {
                pe: adapter.clone(),
                inner: InnerLoop::Full,
                inner_steps: 2,
                support: SupportMode::Distinct,
                inner_dropout: InnerDropout::PerStep,
                tasks: 2,
                support_batch: 2,
                query_batch: 2,
            },
            StepKind::FtPrime {
                pe: adapter,
                tasks: 2,
                batch: 3,
            },
        ];
        // The first kind also in bf16 (the device-generic path, bf16 products).
        let bf16 = (kinds[0].clone(), PrecisionChoice::Bf16);
        let all = kinds.into_iter().map(|k| (k, PrecisionChoice::Auto));
        for (kind, precision) in all.chain([bf16]) {
            let shape = StepShape {
                model: dir.path().to_path_buf(),
                seq: 6,
                kind,
                precision,
            };
            let s = timer.seconds_per_step(&shape).unwrap();
            assert!(s.is_finite() && s >= 0.0, "{}: {s}", shape.describe());
            assert_eq!(shape.describe().contains(", bf16 ("), !precision.is_auto());
        }
        assert!(DeviceTimer::new(DeviceSpec::Cpu, 0, Box::new(|_| {})).is_err());
    }
}
