//! Downstream fine-tuning: the paper's settings 1/Full FT, 2/Head tuning, 3/Adapter tuning.

pub mod cache;
pub mod finetune;
pub mod metrics;
pub mod optim;

pub use cache::{CachedRows, EncoderCache};
pub use finetune::{FinetuneError, run_finetune};

use crate::data::Batch;
use crate::model::EncoderInputs;

/// The encoder inputs of a batch (here, not in `finetune`, so that the encoder cache and the
/// fine-tuning loop that uses it do not import each other).
pub fn inputs_of(batch: &Batch) -> EncoderInputs<'_> {
    EncoderInputs {
        input_ids: &batch.input_ids,
        attention_mask: &batch.attention_mask,
        token_type_ids: batch.token_type_ids.as_ref(),
    }
}
pub use metrics::{EvalSets, FinetuneMetrics, PrimedAdapterUse, TrainingNoise};
