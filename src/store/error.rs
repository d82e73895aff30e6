//! The errors of the run store; they name the directory or file involved.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing the run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another orchestrator holds the store's lock.
    #[error(
        "the run store {store} is in use by another `primer run` ({holder}); wait for it to finish or stop it, then retry"
    )]
    Locked { store: PathBuf, holder: String },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A run directory does not hold what it should.
    #[error("run directory {dir}: {message}")]
    BadRun { dir: PathBuf, message: String },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}
