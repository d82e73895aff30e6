//! `primer finetune`: one fine-tuning run, the unit of work a sweep schedules.

use super::progress_bar::TerminalProgress;
use super::run_args::{SharedRunArgs, shared_fields};
use anyhow::Context;
use primer::config::{FinetuneConfig, FinetuneMethod, PrimedAdapter};
use std::path::PathBuf;
use std::process::ExitCode;

/// Fine-tune on one target language and write `metrics.json` into `--out`.
///
/// Settings come from `--config FILE` (a JSON or TOML FinetuneConfig) when given; flags override it.
#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {
    /// A JSON or TOML file holding a whole FinetuneConfig (flags below override its fields).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    shared: SharedRunArgs,
    /// A primed checkpoint folder (from `primer prime`) to start from instead of --model.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Keep and train the adapter of --init's checkpoint, or drop it (default train).
    #[arg(long, value_enum)]
    primed_adapter: Option<PrimedAdapter>,
    /// Target language (a folder under --data).
    #[arg(long)]
    lang: Option<String>,
    /// Which parameters to train.
    #[arg(long, value_enum)]
    method: Option<FinetuneMethod>,
    /// Use at most N dev sentences.
    #[arg(long)]
    dev_limit: Option<usize>,
    /// Use at most N test sentences.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Passes over the training sentences (default 3).
    #[arg(long)]
    epochs: Option<usize>,
    /// Sentences per training batch (default 16).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (default per method: full 5e-5, head 1e-2, adapter, bitfit and lora 5e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Do not apply weight decay to biases and LayerNorm parameters.
    #[arg(long)]
    no_decay_bias_and_norm: bool,
    /// Run the encoder at every step even when it is frozen (no output cache).
    #[arg(long)]
    no_cache: bool,
    /// Output folder (metrics.json goes here).
    #[arg(long)]
    out: PathBuf,
}

impl FinetuneArgs {
    /// The run's settings: the config file (if any) with the flags applied on top.
    pub fn to_config(&self) -> anyhow::Result<FinetuneConfig> {
        let mut c = match &self.config {
            Some(path) => super::read_config_file::<FinetuneConfig>(path)?,
            None => FinetuneConfig::default(),
        };
        self.shared.apply(shared_fields!(c))?;
        if let Some(v) = &self.init {
            c.init = Some(v.clone());
        }
        if let Some(v) = self.primed_adapter {
            c.primed_adapter = v;
        }
        if let Some(v) = &self.lang {
            c.lang = v.clone();
        }
        if let Some(v) = self.method {
            c.method = v;
        }
        if self.dev_limit.is_some() {
            c.data.dev_limit = self.dev_limit;
        }
        if self.test_limit.is_some() {
            c.data.test_limit = self.test_limit;
        }
        if let Some(v) = self.epochs {
            c.epochs = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if self.lr.is_some() {
            c.lr = self.lr;
        }
        if self.no_decay_bias_and_norm {
            c.decay_bias_and_norm = false;
        }
        if self.no_cache {
            c.cache_encoder = false;
        }
        if c.model.as_os_str().is_empty() && c.init.is_none() {
            anyhow::bail!(
                "no model given: pass --model DIR (a Hugging Face BERT folder) or --init PRIMED_DIR"
            );
        }
        if c.model.as_os_str().is_empty()
            && let Some(init) = &c.init
        {
            c.model = init.clone();
        }
        Ok(c)
    }
}

pub fn run(args: FinetuneArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let config = args.to_config()?;
    super::refuse_bad_values(
        &config.value_errors(),
        args.config.as_deref(),
        FinetuneConfig::value_errors,
    )?;
    let progress = TerminalProgress::new(&format!("finetune {} {}", config.lang, config.method));
    let metrics = primer::train::run_finetune(&config, &args.out, &progress)
        .with_context(|| format!("fine-tuning {} ({}) failed", config.lang, config.method))?;
    progress.finish();
    println!(
        "{} {}: test F1 {:.2} (P {:.2} R {:.2}), dev F1 {:.2} at epoch {}, {} steps, {:.1}s, {:.3}% of parameters trained, {}",
        metrics.lang,
        metrics.method,
        100.0 * metrics.test.f1,
        100.0 * metrics.test.precision,
        100.0 * metrics.test.recall,
        100.0 * metrics.dev.f1,
        metrics.best_epoch,
        metrics.steps,
        metrics.wall_time_s,
        metrics.trained_percent,
        metrics
            .precision
            .map_or(String::new(), |p| format!("{} products", p.effective))
    );
    println!(
        "metrics written to {}",
        args.out
            .join(primer::train::finetune::METRICS_FILE)
            .display()
    );
    Ok(ExitCode::SUCCESS)
}
