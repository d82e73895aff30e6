//! What one fine-tuning run reports (`metrics.json`). The report stage reads these files.

use crate::config::FinetuneMethod;
use crate::metric::Scores;
use serde::{Deserialize, Serialize};

/// Summary of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub mean_train_loss: f64,
    pub dev: Scores,
}

/// Per test sentence: entities correctly predicted, predicted, and gold — the sufficient
/// statistics of micro F1, so reports can bootstrap over sentences without the predictions.
pub type SentenceCounts = [u32; 3];

/// Which dev and test sentences a run was scored on (see `primer::data::fingerprint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSets {
    pub dev_sentences: usize,
    pub dev_fingerprint: String,
    pub test_sentences: usize,
    pub test_fingerprint: String,
}

/// Everything a fine-tuning run measured. Written as `metrics.json`; a run is done only when
/// this file exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneMetrics {
    pub lang: String,
    pub method: FinetuneMethod,
    pub seed: u64,
    /// Dev scores of the selected (best-dev) epoch.
    pub dev: Scores,
    /// Test scores of the selected epoch.
    pub test: Scores,
    /// 1-based epoch selected by dev F1.
    pub best_epoch: usize,
    pub epochs: Vec<EpochSummary>,
    pub trained_params: usize,
    pub total_params: usize,
    /// 100 * trained / total (the paper's "% params" column).
    pub trained_percent: f64,
    pub steps: usize,
    pub wall_time_s: f64,
    /// Words beyond the maximum sequence length (scored as predicted `O`).
    pub truncated_words_dev: usize,
    pub truncated_words_test: usize,
    /// The dev and test sentences scored (empty fingerprints in files written before primer
    /// recorded them).
    #[serde(default)]
    pub eval_sets: EvalSets,
    /// One entry per test sentence, for paired bootstrap confidence intervals.
    pub test_sentence_counts: Vec<SentenceCounts>,
    /// Training loss at every optimiser step.
    pub loss_curve: Vec<f32>,
}
