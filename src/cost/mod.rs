//! What runs cost before they run: device memory, to pack runs on a device
//! (`primer run --per-device auto`, [`memory`]), and device time, to price a sweep
//! (`primer plan --estimate`: [`calibrate`] times a few steps of each kind, [`estimate`]
//! multiplies them by the step counts the plan implies).

pub mod calibrate;
pub mod estimate;
pub mod memory;

use std::path::PathBuf;

/// Everything that can go wrong pricing runs.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("cannot read the data of language '{lang}' under {}: {source}", root.display())]
    Data {
        lang: String,
        root: PathBuf,
        #[source]
        source: Box<crate::data::DataError>,
    },
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Value(#[from] crate::config::ValueError),
    #[error("calibrating {what}: {source}")]
    Calibration {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A fine-tuning run's language data after its limits (what the run itself reads).
fn load_data(cfg: &crate::config::FinetuneConfig) -> Result<crate::data::LanguageData, CostError> {
    crate::data::load_language(&cfg.data, &cfg.lang, cfg.seed).map_err(|source| CostError::Data {
        lang: cfg.lang.clone(),
        root: cfg.data.root.clone(),
        source: Box::new(source),
    })
}
