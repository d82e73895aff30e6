//! The flags `primer finetune` and `primer prime` share, declared once and flattened into
//! both: what to load, how much data to read, the model-side settings, the seed and the device.

use primer::config::{DataConfig, Subsample};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct SharedRunArgs {
    /// Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json or vocab.txt).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Data root holding one folder per language.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Use at most N training sentences (per language).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Pick limited sentences at random (seeded) instead of the first N.
    #[arg(long)]
    pub sample: bool,
    /// Maximum sequence length in subword tokens.
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Bottleneck dimension of the adapter created when the model has none.
    #[arg(long)]
    pub adapter_dim: Option<usize>,
    /// Override the model's dropout probabilities.
    #[arg(long)]
    pub dropout: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// `cpu` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
}

/// The fields of a run configuration that [`SharedRunArgs`] sets (borrowed from a
/// `FinetuneConfig` or a `PrimeConfig`).
pub struct SharedFields<'a> {
    pub model: &'a mut PathBuf,
    pub data: &'a mut DataConfig,
    pub warmup_ratio: &'a mut f64,
    pub weight_decay: &'a mut f64,
    pub adapter_dim: &'a mut usize,
    pub dropout: &'a mut Option<f64>,
    pub seed: &'a mut u64,
    pub device: &'a mut String,
}

/// [`SharedFields`] of a config value: `FinetuneConfig` and `PrimeConfig` name these fields
/// alike, so one borrow list serves both.
macro_rules! shared_fields {
    ($c:expr) => {
        $crate::cli::run_args::SharedFields {
            model: &mut $c.model,
            data: &mut $c.data,
            warmup_ratio: &mut $c.warmup_ratio,
            weight_decay: &mut $c.weight_decay,
            adapter_dim: &mut $c.adapter_dim,
            dropout: &mut $c.dropout,
            seed: &mut $c.seed,
            device: &mut $c.device,
        }
    };
}
pub(crate) use shared_fields;

impl SharedRunArgs {
    /// Overrides the fields whose flag was given; the others keep the config file's value.
    pub fn apply(&self, f: SharedFields<'_>) {
        if let Some(v) = &self.model {
            *f.model = v.clone();
        }
        if let Some(v) = &self.data {
            f.data.root = v.clone();
        }
        if self.train_limit.is_some() {
            f.data.train_limit = self.train_limit;
        }
        if self.sample {
            f.data.subsample = Subsample::Seeded;
        }
        if let Some(v) = self.max_len {
            f.data.max_len = v;
        }
        if let Some(v) = self.warmup_ratio {
            *f.warmup_ratio = v;
        }
        if let Some(v) = self.weight_decay {
            *f.weight_decay = v;
        }
        if let Some(v) = self.adapter_dim {
            *f.adapter_dim = v;
        }
        if self.dropout.is_some() {
            *f.dropout = self.dropout;
        }
        if let Some(v) = self.seed {
            *f.seed = v;
        }
        if let Some(v) = &self.device {
            *f.device = v.clone();
        }
    }
}
