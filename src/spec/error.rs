//! The errors of reading and expanding a sweep file. They always name the file, and where
//! they can the line and the key involved.

use std::path::PathBuf;

/// Everything that can go wrong while reading or expanding a sweep file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The sweep file is syntactically or semantically invalid at a known place.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read sweep file {path}: {source}")]
    ReadSweep {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sweep expands to no runs at all.
    #[error("{file}: the sweep expands to no runs ({reason})")]
    Empty { file: PathBuf, reason: String },
}
