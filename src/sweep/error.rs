//! The errors of the sweep commands: those of the spec, the store, the backend and the report,
//! and the orchestrator's own. Errors about a sweep file always name the file, the line and
//! the key involved; errors about the store name the directory or file.

use std::path::PathBuf;

/// Everything that can go wrong while reading, planning or executing a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The sweep file cannot be read, is invalid, or expands to nothing.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The run store (run directories, status files, the lock).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Inputs named by the sweep do not exist (checked before anything runs).
    #[error("{file}: inputs not found (relative paths are resolved against the current directory {cwd}):\n  {}", .missing.join("\n  "))]
    MissingInputs {
        file: PathBuf,
        cwd: PathBuf,
        missing: Vec<String>,
    },
    /// The sweep's `store` names a file.
    #[error(
        "{file}: store {path} is a file, but `store` names the folder that holds the runs: set `store = \"...\"` to a folder"
    )]
    StoreIsAFile { file: PathBuf, path: PathBuf },
    /// Data files named by the sweep exist but cannot be used (checked before anything runs).
    #[error("{file}: input data cannot be used (fix these files, then run again; nothing was started):\n  {}", .problems.join("\n  "))]
    UnreadableInputs {
        file: PathBuf,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Runs of the sweep are still queued or running on the backend they were submitted to:
    /// running them elsewhere would execute them twice.
    #[error(
        "{live} run(s) of sweep '{sweep}' are queued or running in {backend}: wait for them (`primer status`) or cancel them (`primer cancel`) before running {elsewhere}"
    )]
    InFlight {
        live: usize,
        sweep: String,
        backend: &'static str,
        elsewhere: String,
    },
    /// The backend failed to execute, queue, follow or cancel runs.
    #[error(transparent)]
    Backend(Box<crate::backend::BackendError>),
    #[error("the runs finished but writing the report failed")]
    Report(#[source] crate::report::ReportError),
}

impl From<crate::backend::BackendError> for SweepError {
    fn from(e: crate::backend::BackendError) -> Self {
        SweepError::Backend(Box::new(e))
    }
}

impl SweepError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SweepError {
        let path = path.into();
        move |source| SweepError::Io { path, source }
    }
}
