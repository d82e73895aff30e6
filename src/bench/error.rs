//! Errors of the speed benchmark.

use std::path::PathBuf;

/// Everything that can stop `primer bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Prime(#[from] crate::prime::PrimeError),
    #[error(transparent)]
    Optim(#[from] crate::train::optim::OptimError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// A setting the bench cannot run with.
    #[error("invalid bench setting: {0}")]
    Config(String),
    /// A PyTorch-side script is not where it was looked for.
    #[error(
        "the PyTorch {what} {path} is missing (pass {flag}, or --no-torch for primer's numbers alone)"
    )]
    MissingScript {
        what: &'static str,
        path: PathBuf,
        flag: &'static str,
    },
    /// The Python interpreter could not be started.
    #[error("cannot run {python} (set --torch-python or TORCH_PYTHON): {source}")]
    Spawn {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Python side says torch (or peft, or the device) is not there.
    #[error("{reason} ({script})")]
    TorchUnavailable { script: PathBuf, reason: String },
    /// The Python side ran and failed.
    #[error(
        "{script} failed (install torch, transformers, safetensors into a venv and set TORCH_PYTHON):\n{stderr}"
    )]
    TorchFailed { script: PathBuf, stderr: String },
    /// The Python side's output is not what the bench reads.
    #[error("{script} printed no result the bench can read: {message}")]
    TorchOutput { script: PathBuf, message: String },
    /// The thread pool of the FMA-peak probe.
    #[error("cannot start {threads} threads for the FMA-peak probe: {message}")]
    Threads { threads: usize, message: String },
}
