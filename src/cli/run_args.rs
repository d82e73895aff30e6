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
    /// Fraction of the steps spent in linear learning-rate warm-up, in [0, 1) (default 0).
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// AdamW weight decay (default 0.01).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Bottleneck dimension of the adapter created when the model has none.
    #[arg(long)]
    pub adapter_dim: Option<usize>,
    /// Adapters after the last layer only (the paper's) or after every layer.
    #[arg(long, value_enum)]
    pub adapter_layers: Option<primer::model::pe::AdapterLayers>,
    /// LoRA rank r (LoRA only; default 8).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA α, the update scaled by α/r (LoRA only; default 8).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// The linears LoRA adapts in every layer, comma-separated: query, key, value,
    /// attention_output, intermediate, output (LoRA only; default query,value).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Dropout on LoRA's branch input in training, in [0, 1) (LoRA only; default 0).
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Override the model's dropout probabilities.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Seed of every random draw the run makes (initialisation, shuffling, dropout, sampling;
    /// default 0): the same seed, machine and threads repeat a run bit for bit.
    #[arg(long)]
    pub seed: Option<u64>,
    /// `cpu` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    /// Arithmetic of the matrix products (default auto); metrics.json / priming.json record
    /// the one that ran.
    #[arg(long, value_enum)]
    pub precision: Option<primer::config::PrecisionChoice>,
}

/// The fields of a run configuration that [`SharedRunArgs`] sets (borrowed from a
/// `FinetuneConfig` or a `PrimeConfig`).
pub struct SharedFields<'a> {
    pub model: &'a mut PathBuf,
    pub data: &'a mut DataConfig,
    pub warmup_ratio: &'a mut f64,
    pub weight_decay: &'a mut f64,
    pub adapter_dim: &'a mut usize,
    pub adapter_layers: &'a mut primer::model::pe::AdapterLayers,
    pub lora_r: &'a mut Option<usize>,
    pub lora_alpha: &'a mut Option<f64>,
    pub lora_dropout: &'a mut Option<f64>,
    pub lora_targets: &'a mut Option<Vec<primer::model::pe::LoraTarget>>,
    pub dropout: &'a mut Option<f64>,
    pub seed: &'a mut u64,
    pub device: &'a mut String,
    pub precision: &'a mut primer::config::PrecisionChoice,
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
            adapter_layers: &mut $c.adapter_layers,
            lora_r: &mut $c.lora_r,
            lora_alpha: &mut $c.lora_alpha,
            lora_dropout: &mut $c.lora_dropout,
            lora_targets: &mut $c.lora_targets,
            dropout: &mut $c.dropout,
            seed: &mut $c.seed,
            device: &mut $c.device,
            precision: &mut $c.precision,
        }
    };
}
pub(crate) use shared_fields;

impl SharedRunArgs {
    /// Overrides the fields whose flag was given; the others keep the config file's value.
    /// A LoRA target name that does not exist is an error naming the valid ones.
    pub fn apply(&self, f: SharedFields<'_>) -> anyhow::Result<()> {
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
        if let Some(v) = self.adapter_layers {
            *f.adapter_layers = v;
        }
        if self.lora_r.is_some() {
            *f.lora_r = self.lora_r;
        }
        if self.lora_alpha.is_some() {
            *f.lora_alpha = self.lora_alpha;
        }
        if self.lora_dropout.is_some() {
            *f.lora_dropout = self.lora_dropout;
        }
        if let Some(names) = &self.lora_targets {
            let targets = names
                .iter()
                .map(|n| {
                    serde_json::from_value(serde_json::Value::String(n.trim().to_string())).map_err(
                        |_| {
                            anyhow::anyhow!(
                                "--lora-targets: unknown target '{n}' (valid: query, key, value, \
                                 attention_output, intermediate, output)"
                            )
                        },
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            *f.lora_targets = Some(targets);
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
        if let Some(v) = self.precision {
            *f.precision = v;
        }
        Ok(())
    }
}
