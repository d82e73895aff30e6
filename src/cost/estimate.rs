//! `primer plan SWEEP --estimate`: the device time of a sweep, as the step counts its plan
//! implies times the seconds of one step of each kind from a calibration ([`StepTimer`]).
//!
//! Counted: fine-tuning optimiser steps (epochs × batches of the run's training sentences,
//! after its limits) and, for runs on the encoder cache, the graph-free pass that fills it
//! (train and dev once); priming outer steps (meta: each with its S inner steps per task; FT:
//! one batch per task). Not counted: reading and tokenising data, evaluation (dev after each
//! epoch, test, priming's dev points), checkpoints and process start-up. Steps are timed at
//! the padded `data.max_len`, while real batches are length-bucketed and mostly shorter, so on
//! short-sentence data such as WikiAnn the estimate errs high.

use super::CostError;
use super::calibrate::{StepKind, StepShape, StepTimer};
use super::memory::{finetune_uses_cache, primed_pe};
use crate::config::{FinetuneConfig, PrimingMethod};
use crate::prime::DrawSizes;
use crate::spec::plan::{Plan, RunSpec};
use std::collections::HashMap;

/// The steps of one run: (shape, how many).
pub type RunSteps = Vec<(StepShape, u64)>;

/// Training and dev sentences of a fine-tuning run's data (after its limits).
pub trait SentenceCounts {
    fn counts(&mut self, cfg: &FinetuneConfig) -> Result<(u64, u64), CostError>;
}

/// Reads the data, each (data settings, language, training draw) once.
#[derive(Default)]
pub struct DataCounts(HashMap<String, (u64, u64)>);

impl SentenceCounts for DataCounts {
    fn counts(&mut self, cfg: &FinetuneConfig) -> Result<(u64, u64), CostError> {
        let key = format!(
            "{}\u{1f}{}\u{1f}{}",
            serde_json::to_string(&cfg.data).unwrap_or_default(),
            cfg.lang,
            cfg.data.train_seed.resolve(cfg.seed)
        );
        if let Some(c) = self.0.get(&key) {
            return Ok(*c);
        }
        let data = super::load_data(cfg)?;
        let c = (data.train.len() as u64, data.dev.len() as u64);
        self.0.insert(key, c);
        Ok(c)
    }
}

/// The kind of a run, as the estimate groups them: `priming meta (inner pe, S=5)`,
/// `fine-tuning adapter`.
pub fn run_kind_label(spec: &RunSpec) -> String {
    match spec {
        RunSpec::Prime { config } if config.method == PrimingMethod::Ft => "priming ft".to_string(),
        RunSpec::Prime { config } => format!(
            "priming meta (inner {}, S={})",
            config.inner_label(),
            config.inner_steps
        ),
        RunSpec::Finetune { config, .. } => format!("fine-tuning {}", config.method),
    }
}

/// The steps run `r` of `plan` takes.
pub fn run_steps(
    plan: &Plan,
    r: usize,
    data: &mut dyn SentenceCounts,
) -> Result<RunSteps, CostError> {
    match &plan.runs[r].spec {
        RunSpec::Prime { config } => {
            let tasks = config.tasks_per_step.unwrap_or(config.sources.len());
            let kind = match config.method {
                PrimingMethod::Ft => StepKind::FtPrime {
                    pe: config.pe_spec(),
                    tasks,
                    batch: DrawSizes::new(
                        config.support,
                        config.inner_steps,
                        config.support_batch_size,
                        config.query_batch_size,
                    )
                    .sentences_per_task(),
                },
                PrimingMethod::Meta => StepKind::MetaOuter {
                    pe: config.pe_spec(),
                    inner: config.effective_inner_loop(),
                    inner_steps: config.inner_steps,
                    support: config.support,
                    inner_dropout: config.inner_dropout,
                    tasks,
                    support_batch: config.support_batch_size,
                    query_batch: config.query_batch_size,
                },
            };
            let shape = StepShape {
                model: config.model.clone(),
                seq: config.data.max_len,
                kind,
                precision: config.precision,
            };
            Ok(vec![(shape, config.steps as u64)])
        }
        RunSpec::Finetune { config, .. } => {
            let primed = primed_pe(plan, r);
            let cached = finetune_uses_cache(config, primed.as_ref());
            let (train, dev) = data.counts(config)?;
            let b = config.batch_size as u64;
            let shape = |kind| StepShape {
                model: config.model.clone(),
                seq: config.data.max_len,
                kind,
                precision: config.precision,
            };
            // The PE module the run carries: its own method's, else the primed one it keeps.
            let pe = config.pe_spec().or(match config.primed_adapter {
                crate::config::PrimedAdapter::Train => primed,
                crate::config::PrimedAdapter::Drop => None,
            });
            let mut steps = vec![(
                shape(StepKind::Finetune {
                    method: config.method,
                    pe,
                    batch: config.batch_size,
                    cached,
                }),
                config.epochs as u64 * train.div_ceil(b),
            )];
            if cached {
                steps.push((
                    shape(StepKind::Encode {
                        batch: config.batch_size,
                    }),
                    (train + dev).div_ceil(b),
                ));
            }
            Ok(steps)
        }
    }
}

/// The largest memory estimate (bytes, `crate::cost::memory`) among the runs of each kind
/// ([`run_kind_label`]), in plan order of first appearance: what `--per-device auto` packs by.
pub fn memory_by_kind(plan: &Plan) -> Result<Vec<(String, u64)>, CostError> {
    let runs: Vec<usize> = (0..plan.runs.len()).collect();
    let mut out: Vec<(String, u64)> = Vec::new();
    for (r, m) in super::memory::plan_memory(plan, &runs)?.iter().enumerate() {
        let label = run_kind_label(&plan.runs[r].spec);
        match out.iter_mut().find(|(k, _)| *k == label) {
            Some((_, most)) => *most = (*most).max(m.total()),
            None => out.push((label, m.total())),
        }
    }
    Ok(out)
}

/// One group of runs in the estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct KindEstimate {
    /// [`run_kind_label`].
    pub kind: String,
    pub runs: usize,
    /// Steps of every kind summed over the group's runs.
    pub steps: u64,
    pub seconds: f64,
}

/// One calibrated step shape.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTime {
    pub shape: StepShape,
    pub seconds: f64,
    /// Steps of this shape in the whole sweep.
    pub count: u64,
}

/// What a sweep costs on the calibrated device.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepEstimate {
    pub device: String,
    /// Timed steps behind each step time.
    pub timed_steps: usize,
    pub step_times: Vec<StepTime>,
    /// By run kind, in plan order of first appearance.
    pub kinds: Vec<KindEstimate>,
    /// Seconds of each plan run (index = plan run).
    pub run_seconds: Vec<f64>,
    pub total_seconds: f64,
}

/// The estimate of every run of `plan`: each distinct step shape calibrated once by `timer`.
pub fn estimate_plan(
    plan: &Plan,
    timer: &mut dyn StepTimer,
    data: &mut dyn SentenceCounts,
) -> Result<SweepEstimate, CostError> {
    let mut step_times: Vec<StepTime> = Vec::new();
    let mut kinds: Vec<KindEstimate> = Vec::new();
    let mut run_seconds = Vec::with_capacity(plan.runs.len());
    for r in 0..plan.runs.len() {
        let mut seconds = 0.0;
        let mut steps = 0;
        for (shape, count) in run_steps(plan, r, data)? {
            let known = step_times.iter().position(|s| s.shape == shape);
            let i = match known {
                Some(i) => i,
                None => {
                    let seconds = timer.seconds_per_step(&shape)?;
                    step_times.push(StepTime {
                        shape,
                        seconds,
                        count: 0,
                    });
                    step_times.len() - 1
                }
            };
            step_times[i].count += count;
            seconds += step_times[i].seconds * count as f64;
            steps += count;
        }
        let label = run_kind_label(&plan.runs[r].spec);
        let k = match kinds.iter().position(|k| k.kind == label) {
            Some(k) => k,
            None => {
                kinds.push(KindEstimate {
                    kind: label,
                    runs: 0,
                    steps: 0,
                    seconds: 0.0,
                });
                kinds.len() - 1
            }
        };
        kinds[k].runs += 1;
        kinds[k].steps += steps;
        kinds[k].seconds += seconds;
        run_seconds.push(seconds);
    }
    Ok(SweepEstimate {
        device: timer.device(),
        timed_steps: timer.timed_steps(),
        total_seconds: run_seconds.iter().sum(),
        step_times,
        kinds,
        run_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Sweep;
    use std::path::Path;

    /// A device with fixed step times, counting what it was asked to time.
    struct FakeDevice {
        asked: Vec<StepShape>,
    }

    impl StepTimer for FakeDevice {
        fn device(&self) -> String {
            "fake:0".into()
        }
        fn timed_steps(&self) -> usize {
            3
        }
        fn seconds_per_step(&mut self, shape: &StepShape) -> Result<f64, CostError> {
            self.asked.push(shape.clone());
            Ok(match &shape.kind {
                StepKind::MetaOuter { inner_steps, .. } => 1.0 + *inner_steps as f64,
                StepKind::FtPrime { .. } => 0.5,
                StepKind::Finetune { cached: true, .. } => 0.01,
                StepKind::Finetune { .. } => 0.25,
                StepKind::Encode { .. } => 0.125,
            })
        }
    }

    /// 1000 training and 200 dev sentences for every language.
    struct FixedCounts;

    impl SentenceCounts for FixedCounts {
        fn counts(&mut self, _cfg: &FinetuneConfig) -> Result<(u64, u64), CostError> {
            Ok((1000, 200))
        }
    }

    const SWEEP: &str = r#"
name = "cost"
seeds = [1, 2]
targets = ["hi", "af"]

[base.finetune]
model = "m"
epochs = 3
batch_size = 32

[base.prime]
model = "m"
sources = ["en", "es"]
steps = 100

[settings."full"]
"finetune.method" = "full"

[settings."at"]
"finetune.method" = "adapter"

[settings."meta-at"]
priming = "meta"
"prime.inner_steps" = 5
"finetune.method" = "adapter"

[settings."maml-at"]
priming = "meta"
"prime.inner_loop" = "full"
"prime.inner_steps" = 1
"finetune.method" = "adapter"

[settings."ft-at"]
priming = "ft"
"finetune.method" = "adapter"
"#;

    #[test]
    fn totals_are_step_counts_times_calibrated_step_times() {
        let sweep = Sweep::from_text(Path::new("cost.toml"), SWEEP).unwrap();
        let plan = Plan::expand(&sweep).unwrap();
        let mut device = FakeDevice { asked: Vec::new() };
        let est = estimate_plan(&plan, &mut device, &mut FixedCounts).unwrap();
        assert_eq!(est.device, "fake:0");
        assert_eq!(est.timed_steps, 3);
        // Each distinct shape is timed once: three priming kinds, full FT, adapter tuning on the
        // cache and the cache pass.
        assert_eq!(device.asked.len(), 6, "{:?}", device.asked);
        let kind = |label: &str| est.kinds.iter().find(|k| k.kind == label).unwrap();
        // Priming: 2 seeds × 100 outer steps of (1 + S) seconds.
        let meta = kind("priming meta (inner pe, S=5)");
        assert_eq!((meta.runs, meta.steps), (2, 200));
        assert_eq!(meta.seconds, 200.0 * 6.0);
        assert_eq!(kind("priming meta (inner full, S=1)").seconds, 200.0 * 2.0);
        assert_eq!(kind("priming ft").seconds, 200.0 * 0.5);
        // Full FT: 2 targets × 2 seeds × 3 epochs × ⌈1000 / 32⌉ = 32 batches.
        let full = kind("fine-tuning full");
        assert_eq!((full.runs, full.steps), (4, 4 * 96));
        assert_eq!(full.seconds, 4.0 * 96.0 * 0.25);
        // Adapter tuning (unprimed and after each of the three primings): the cached steps
        // plus one cache pass over ⌈1200 / 32⌉ = 38 batches of train and dev.
        let at = kind("fine-tuning adapter");
        assert_eq!(at.runs, 16);
        assert_eq!(at.steps, 16 * (96 + 38));
        assert!((at.seconds - 16.0 * (96.0 * 0.01 + 38.0 * 0.125)).abs() < 1e-9);
        let sum: f64 = est.kinds.iter().map(|k| k.seconds).sum();
        assert!((est.total_seconds - sum).abs() < 1e-9);
        assert!((est.run_seconds.iter().sum::<f64>() - est.total_seconds).abs() < 1e-9);
        let counted: u64 = est.step_times.iter().map(|s| s.count).sum();
        assert_eq!(counted, est.kinds.iter().map(|k| k.steps).sum::<u64>());
    }
}
