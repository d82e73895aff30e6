//! Downstream fine-tuning: the paper's settings 1/Full FT, 2/Head tuning, 3/Adapter tuning.

pub mod cache;
pub mod finetune;
pub mod metrics;
pub mod optim;

pub use cache::{CachedRows, EncoderCache};
pub use finetune::{FinetuneError, inputs_of, run_finetune};
pub use metrics::{EvalSets, FinetuneMetrics, PrimedAdapterUse, TrainingNoise};
