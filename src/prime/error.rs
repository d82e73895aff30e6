//! Errors of priming.

use std::path::PathBuf;

/// Everything that can stop a priming run. Numerical failures name the outer step and the task.
#[derive(Debug, thiserror::Error)]
pub enum PrimeError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Optim(#[from] crate::train::optim::OptimError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Metric(#[from] crate::metric::MetricError),
    /// A loss or gradient became NaN or infinite.
    #[error(
        "outer step {step}, task '{task}': {what} is not finite ({value}); lower the learning rates \
         (inner_lr, outer_lr / ft_lr) or check the data"
    )]
    NonFinite {
        step: usize,
        task: String,
        what: String,
        value: f64,
    },
    /// The settings cannot be run.
    #[error("invalid priming settings: {0}")]
    Config(String),
    /// A source language's data cannot feed the requested batches.
    #[error("source language '{lang}' ({path}): {message}")]
    Data {
        lang: String,
        path: PathBuf,
        message: String,
    },
    /// Stopped between outer steps because a preemption signal arrived (see
    /// [`crate::signal`]). Nothing is written — no partial checkpoint — so a resubmitted
    /// or requeued run restarts from scratch.
    #[error(
        "interrupted by a preemption signal after {step} outer steps; nothing was written, the run restarts from scratch when resubmitted"
    )]
    Interrupted { step: usize },
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = PrimeError> = std::result::Result<T, E>;
