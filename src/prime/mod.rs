//! Priming: Algorithm 1 (first-order MAML with a parameter-efficient inner loop) and its
//! ablations.

pub mod error;
pub mod meta;

pub use error::PrimeError;
pub use meta::{
    inner_loop, meta_step, Adapted, Batch, InnerParams, MetaStepConfig, MetaStepRecord, OuterOptimizer,
    PrimingState, TaskBatches, TaskOutcome,
};

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
}

/// Primes per `config` and writes the primed checkpoint folder `out_dir` atomically.
pub fn run_priming(config: &PrimeConfig, out_dir: &Path, progress: &dyn ProgressSink) -> anyhow::Result<()> {
    let _ = (config, out_dir, progress);
    anyhow::bail!("priming is not implemented yet")
}
