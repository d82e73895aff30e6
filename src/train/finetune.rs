//! The fine-tuning loop (being written).

use crate::config::FinetuneConfig;
use crate::progress::ProgressSink;
use crate::train::metrics::FinetuneMetrics;
use std::path::Path;

/// Fine-tunes per `config`, writing `metrics.json` (atomically) into `out_dir`.
pub fn run_finetune(
    config: &FinetuneConfig,
    out_dir: &Path,
    progress: &dyn ProgressSink,
) -> anyhow::Result<FinetuneMetrics> {
    let _ = (config, out_dir, progress);
    anyhow::bail!("fine-tuning is not implemented yet")
}
