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

    /// Floating-point operations in the matrix products of one encoder forward over a padded
    /// `[batch, seq]` input whose last layer computes `last_layer_rows` query rows (`batch·seq`
    /// for the whole output; fewer where only some rows are kept, as the encoder cache does).
    ///
    /// A multiply-add counts 2. Element-wise work (layer norms, softmax, GELU, embeddings) is
    /// left out: a few per cent of the time at BERT sizes. The attention products are counted
    /// over the padded `seq × seq` blocks. Used to put benchmark times in GFLOP/s and to bound
    /// what skipping work can gain.
    ///
    /// ```
    /// use primer::model::BertConfig;
    /// let cfg = BertConfig::new(30522, 384, 6, 12, 1536);
    /// let whole = cfg.encoder_forward_flops(16, 64, 16 * 64);
    /// assert!(cfg.encoder_forward_flops(16, 64, 0) < whole);
    /// assert!((whole / 1e9 - 22.3).abs() < 0.1); // MiniLM, batch 16 × seq 64
    /// ```
    pub fn encoder_forward_flops(&self, batch: usize, seq: usize, last_layer_rows: usize) -> f64 {
        let (h, i) = (self.hidden_size as f64, self.intermediate_size as f64);
        let (n, t) = ((batch * seq) as f64, seq as f64);
        // Per query row: the Q and output projections, the feed-forward pair, and the
        // scores and weighting against `t` keys. Per token: the K and V projections.
        let per_query_row = 2.0 * (2.0 * h * h + 2.0 * h * i + 2.0 * t * h);
        let per_key_row = 2.0 * 2.0 * h * h;
        let layers = self.num_hidden_layers as f64;
        if layers == 0.0 {
            return 0.0;
        }
        let m = last_layer_rows as f64;
        layers * n * per_key_row + ((layers - 1.0) * n + m) * per_query_row
    }

    /// Why a run over `max_len` tokens cannot use the model folder `dir`: its position
    /// table is shorter (found at the first sentence that long, after training, otherwise).
    /// None when it fits, or when `dir` has no readable config.json (reported elsewhere).
    pub fn max_len_problem(dir: &Path, max_len: usize) -> Option<String> {
        let cfg = Self::from_file(&dir.join("config.json")).ok()?;
        (max_len > cfg.max_position_embeddings).then(|| {
            format!(
                "data.max_len is {max_len}, but the model {} has max_position_embeddings {} \
                 (config.json): set data.max_len to at most {}",
                dir.display(),
                cfg.max_position_embeddings,
                cfg.max_position_embeddings
            )
        })
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

    /// Whether a training pass draws any dropout mask (either probability above 0).
    pub fn has_dropout(&self) -> bool {
        self.hidden_dropout_prob > 0.0 || self.attention_probs_dropout_prob > 0.0
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

    /// A max_len beyond the position table is found before a run starts (it used to fail at
    /// the first long test sentence, after training).
    #[test]
    fn a_max_len_beyond_the_position_table_is_a_problem_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 16, "max_position_embeddings": 64}"#,
        )
        .unwrap();
        assert_eq!(BertConfig::max_len_problem(dir.path(), 64), None);
        let problem = BertConfig::max_len_problem(dir.path(), 65).unwrap();
        assert!(
            problem.contains("data.max_len is 65")
                && problem.contains("max_position_embeddings 64")
                && problem.contains("at most 64"),
            "{problem}"
        );
        // No config.json: left to the check that says the model is missing.
        assert_eq!(
            BertConfig::max_len_problem(&dir.path().join("x"), 1000),
            None
        );
    }

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

    #[test]
    fn has_dropout_when_either_probability_is_positive() {
        let c = BertConfig::new(100, 16, 2, 4, 32).with_dropout(0.0);
        assert!(!c.has_dropout());
        assert!(c.with_dropout(0.1).has_dropout());
        let attention_only = BertConfig {
            attention_probs_dropout_prob: 0.1,
            ..c.clone()
        };
        assert!(attention_only.has_dropout());
        let hidden_only = BertConfig {
            hidden_dropout_prob: 0.1,
            ..c
        };
        assert!(hidden_only.has_dropout());
    }

    #[test]
    fn encoder_flops_count_each_product_once() {
        // H 4, I 8, 2 layers, one sequence of 3 tokens, counted by hand per product:
        // Q, K, V, O 3·4·4 each; FFN 3·4·8 twice; scores and weighting 3·3·4 each; ×2 per MAC.
        let cfg = BertConfig::new(10, 4, 2, 2, 8);
        let layer = 2.0 * (4.0 * 48.0 + 2.0 * 96.0 + 2.0 * 36.0);
        assert_eq!(cfg.encoder_forward_flops(1, 3, 3), 2.0 * layer);
        // One kept row in the last layer: K and V still over the 3 tokens, the rest over 1.
        let last = 2.0 * (2.0 * 48.0 + 2.0 * 16.0 + 2.0 * 32.0 + 2.0 * 12.0);
        assert_eq!(cfg.encoder_forward_flops(1, 3, 1), layer + last);
        assert_eq!(
            cfg.encoder_forward_flops(2, 3, 6),
            2.0 * cfg.encoder_forward_flops(1, 3, 3)
        );
    }
}
