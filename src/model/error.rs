//! Errors of the model core: loading, saving and running the tagger.

use std::path::PathBuf;

/// Everything that can go wrong while loading, saving or running a model. File errors name
/// the file and, for tensors, the tensor and the shape that was expected.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid BERT config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: cannot read safetensors: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error(
        "{path}: missing tensor '{name}' (expected shape {expected:?}); the checkpoint does not match \
         its config.json or is not a BERT checkpoint"
    )]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error(
        "{path}: tensor '{name}' has shape {found:?} but the config requires {expected:?}; fix config.json \
         or use the matching checkpoint"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A forward function was given a weight set without a tensor it needs (a programming error:
    /// e.g. adapter weights passed where encoder weights were expected).
    #[error("weight '{0}' is missing from the weight set passed to the forward")]
    MissingWeight(String),
    #[error("duplicate parameter name '{0}'")]
    DuplicateName(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
