//! What one fine-tuning run reports (`metrics.json`). The report stage reads these files.

use crate::config::{FinetuneMethod, PrecisionInEffect};
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

/// What a fine-tuning run did with the adapter of the folder it started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrimedAdapterUse {
    /// The folder carried none (a pretrained model).
    Absent,
    /// Trained with the rest (Full FT, adapter tuning).
    Trained,
    /// Read but not trained (head tuning).
    Frozen,
    /// Discarded (`primed_adapter = "drop"`); adapter tuning then trained a fresh one.
    Dropped,
    /// Discarded because it is another PE method's than the run trains (e.g. a LoRA-primed
    /// checkpoint before adapter tuning): the primed θp is kept, the run's method starts a
    /// fresh module.
    OtherMethod,
}

/// The noise and parameter choices a fine-tuning run actually ran with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingNoise {
    /// Dropout probability on the encoder's hidden states during training steps: 0 when the
    /// encoder cache stood in for the encoder (head/adapter tuning with `cache_encoder`), else
    /// the model's (after the run's `dropout` override).
    pub encoder_hidden_dropout: f64,
    /// The same for the attention probabilities.
    pub encoder_attention_dropout: f64,
    /// What became of the adapter the starting folder carried (the `primed_adapter` setting).
    pub primed_adapter: PrimedAdapterUse,
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
    /// None in files written before it was recorded.
    #[serde(default)]
    pub training_noise: Option<TrainingNoise>,
    /// The precision asked for (`finetune.precision`) and the one that ran; None in files
    /// written before it was recorded (those ran fp32).
    #[serde(default)]
    pub precision: Option<PrecisionInEffect>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics.json written before `training_noise` and `precision` existed still parses
    /// (as None), and a new one round-trips.
    #[test]
    fn metrics_without_training_noise_still_parse() {
        let scores =
            serde_json::json!({"precision": 0.5, "recall": 0.5, "f1": 0.5, "per_type": {}});
        let mut old = serde_json::json!({
            "lang": "af", "method": "full", "seed": 1, "dev": scores, "test": scores,
            "best_epoch": 1, "epochs": [], "trained_params": 10, "total_params": 10,
            "trained_percent": 100.0, "steps": 3, "wall_time_s": 1.0,
            "truncated_words_dev": 0, "truncated_words_test": 0,
            "test_sentence_counts": [[1, 1, 1]], "loss_curve": [1.0, 0.5, 0.25]
        });
        let m: FinetuneMetrics = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(m.training_noise, None);
        assert_eq!(m.precision, None);
        old["training_noise"] = serde_json::json!({
            "encoder_hidden_dropout": 0.1,
            "encoder_attention_dropout": 0.1,
            "primed_adapter": "dropped"
        });
        old["precision"] = serde_json::json!({"requested": "auto", "effective": "bf16"});
        let m: FinetuneMetrics = serde_json::from_value(old).unwrap();
        let noise = m.training_noise.clone().unwrap();
        assert_eq!(noise.primed_adapter, PrimedAdapterUse::Dropped);
        let precision = m.precision.unwrap();
        assert_eq!(
            (precision.requested.as_str(), precision.effective.as_str()),
            ("auto", "bf16")
        );
        let back: FinetuneMetrics =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
