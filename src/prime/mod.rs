//! Priming: Algorithm 1 (first-order MAML with a parameter-efficient inner loop) and its
//! ablations, as settings of one code path.
//!
//! * [`meta`] — [`meta_step`], one outer step over [`TaskBatches`]: per task an [`inner_loop`]
//!   of plain SGD on fast copies of the groups [`InnerParams`] names ([`InnerParams::PE`]: θa,
//!   θh — support batches encoded once on detached θp; [`InnerParams::FULL`]: θp too, the
//!   MAML-loop ablation), the query loss at the adapted weights, first-order gradients summed
//!   over tasks onto θp and θa, one [`OuterOptimizer`] update, head := adapted head;
//! * [`ft`] — [`ft_step`], FT priming (multi-task fine-tuning of θp ∪ θa ∪ θh);
//! * [`sampler`] — disjoint support/query draws per task and step, the same sentence budget
//!   for FT priming;
//! * [`outer`] — torch-semantics AdamW over named gradient sums;
//! * [`run`] — [`prime`] / [`run_priming`]: a whole run and the primed checkpoint folder;
//! * [`dev`] — dev scores of the sources every `dev_every` outer steps, simulating the
//!   adaptation downstream fine-tuning performs, and the checkpoint `select` writes;
//! * [`bench`](mod@bench) — timing of outer steps on synthetic batches (`make bench`);
//! * [`bench_pe`] — the same for PE methods other than the adapter (LoRA, BitFit): a
//!   fine-tuning step and a meta outer step with the method as the inner loop.

pub mod bench;
pub mod bench_pe;
pub mod dev;
pub mod error;
pub mod ft;
pub mod meta;
pub mod outer;
pub mod run;
pub mod sampler;

pub use dev::{DevRecord, DevTaskScores, SelectedCheckpoint, best_dev_point};
pub use error::PrimeError;
pub use ft::ft_step;
pub use meta::{
    Adapted, InnerParams, MetaStepConfig, MetaStepRecord, OuterOptimizer, PrimingState,
    TaskBatches, TaskOutcome, inner_loop, meta_step,
};
pub use outer::AdamWOuter;
pub use run::{CURVES_FILE, PRIMING_FILE, PrimingInfo, SourceInfo, method_name, prime};
pub use sampler::{DrawSizes, Sampler, SourceTask};

use crate::config::PrimeConfig;
use crate::progress::ProgressSink;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Losses of one task in one outer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLosses {
    pub lang: String,
    /// Support loss before the first inner step (None for FT priming).
    pub inner_before: Option<f64>,
    /// Support loss before the last inner step (None for FT priming).
    pub inner_after: Option<f64>,
    /// Query loss at the adapted weights (FT priming: the training loss of the task's batch).
    pub query: f64,
}

/// One outer step of priming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimeStepRecord {
    pub step: usize,
    pub lr: f64,
    pub tasks: Vec<TaskLosses>,
}

/// The loss curves saved with a primed checkpoint as `curves.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrimeCurves {
    pub steps: Vec<PrimeStepRecord>,
    /// Dev scores at the evaluation points of `dev_every`, in step order (empty when it is 0,
    /// and in files written before dev evaluation existed).
    #[serde(default)]
    pub dev: Vec<DevRecord>,
}

/// Primes per `config` and writes the primed checkpoint folder `out_dir` atomically (see
/// [`run::prime`], which also returns the curves and a typed error).
pub fn run_priming(
    config: &PrimeConfig,
    out_dir: &Path,
    progress: &dyn ProgressSink,
) -> anyhow::Result<()> {
    prime(config, out_dir, progress)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// curves.json files written before dev evaluation existed still load, without points.
    #[test]
    fn curves_without_dev_records_parse() {
        let old = r#"{"steps":[{"step":0,"lr":5e-5,"tasks":[{"lang":"en","inner_before":1.5,"inner_after":1.2,"query":1.3}]}]}"#;
        let curves: PrimeCurves = serde_json::from_str(old).unwrap();
        assert_eq!(curves.steps.len(), 1);
        assert!(curves.dev.is_empty());
    }
}
