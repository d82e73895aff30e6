//! The BERT architecture settings read from a Hugging Face `config.json`.

use super::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The subset of a Hugging Face `BertConfig` that the encoder needs. Unknown fields of
/// config.json are ignored on reading (HF files carry many); writing produces a minimal,
/// HF-loadable config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Only the exact-erf `gelu` is supported (what BERT checkpoints use).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Only `absolute` is supported.
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_max_position() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_act() -> String {
    "gelu".to_string()
}
fn default_init_range() -> f64 {
    0.02
}
fn default_pos_type() -> String {
    "absolute".to_string()
}
fn default_model_type() -> String {
    "bert".to_string()
}

impl BertConfig {
    /// A config with BERT defaults for everything but the sizes.
    pub fn new(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        intermediate: usize,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: intermediate,
            max_position_embeddings: default_max_position(),
            type_vocab_size: default_type_vocab(),
            layer_norm_eps: default_eps(),
            hidden_dropout_prob: default_dropout(),
            attention_probs_dropout_prob: default_dropout(),
            hidden_act: default_act(),
            pad_token_id: 0,
            initializer_range: default_init_range(),
            position_embedding_type: default_pos_type(),
            model_type: default_model_type(),
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks the settings this implementation relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act '{}' is not supported: only the exact-erf \"gelu\" of BERT is implemented",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type '{}' is not supported: only \"absolute\" is implemented",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The same architecture with both dropout probabilities replaced (a run's `dropout`
    /// override).
    pub fn with_dropout(&self, p: f64) -> Self {
        Self {
            hidden_dropout_prob: p,
            attention_probs_dropout_prob: p,
            ..self.clone()
        }
    }

    /// The config.json document written next to saved weights (HF-loadable).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config is serialisable");
        v["architectures"] = serde_json::json!(["BertModel"]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_config_with_extra_fields_and_rejects_unsupported_activation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 16, "hidden_act": "gelu", "use_cache": true, "layer_norm_eps": 1e-5}"#,
        )
        .unwrap();
        let c = BertConfig::from_file(&p).unwrap();
        assert_eq!(
            (c.hidden_size, c.head_dim(), c.layer_norm_eps),
            (8, 4, 1e-5)
        );
        assert_eq!(c.hidden_dropout_prob, 0.1);
        std::fs::write(
            &p,
            r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 16, "hidden_act": "relu"}"#,
        )
        .unwrap();
        let err = BertConfig::from_file(&p).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("relu"), "{err}");
    }

    #[test]
    fn json_roundtrip() {
        let c = BertConfig::new(100, 16, 2, 4, 32).with_dropout(0.0);
        let back: BertConfig = serde_json::from_value(c.to_json()).unwrap();
        assert_eq!(back, c);
    }
}
