//! `primer prime`: priming on source languages (meta priming, FT priming, MAML loop), writing a
//! primed checkpoint folder that `primer finetune --init` starts from.

use super::progress_bar::TerminalProgress;
use super::run_args::{SharedRunArgs, shared_fields};
use anyhow::Context;
use primer::config::{InnerDropout, InnerLoop, PrimeConfig, PrimingMethod, SupportMode};
use std::path::PathBuf;
use std::process::ExitCode;

/// The priming method as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// Meta priming: first-order MAML with the parameter-efficient inner loop (the paper's).
    Meta,
    /// FT priming: multi-task fine-tuning of everything on the source languages.
    Ft,
    /// The MAML-loop ablation: meta priming whose inner loop also updates the encoder.
    Maml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SupportArg {
    /// One support batch reused for all inner steps.
    Same,
    /// A fresh support batch for each inner step.
    Distinct,
}

/// Prime a model on source languages and write the primed checkpoint into `--out`.
///
/// Settings come from `--config FILE` (a JSON or TOML PrimeConfig) when given; flags override it.
#[derive(Debug, clap::Args)]
pub struct PrimeArgs {
    /// A JSON or TOML file holding a whole PrimeConfig (flags below override its fields).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    shared: SharedRunArgs,
    /// Source languages, comma-separated (each is one task with its own head).
    #[arg(long, value_delimiter = ',')]
    sources: Option<Vec<String>>,
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// What the inner loop adapts: a PE method (adapter, lora, bitfit: the PE module priming
    /// trains) or full (the MAML loop). Default: as --method says, with the adapter.
    #[arg(long, value_enum)]
    inner_params: Option<primer::config::InnerParamsChoice>,
    /// S, the number of inner SGD steps.
    #[arg(long)]
    inner_steps: Option<usize>,
    /// Inner SGD learning rate (default 0.03 for meta, 1e-4 for maml).
    #[arg(long)]
    inner_lr: Option<f64>,
    /// Outer AdamW learning rate.
    #[arg(long)]
    outer_lr: Option<f64>,
    /// AdamW learning rate of FT priming.
    #[arg(long)]
    ft_lr: Option<f64>,
    #[arg(long, value_enum)]
    support: Option<SupportArg>,
    /// Dropout masks of the inner loop (default per-step).
    #[arg(long, value_enum)]
    inner_dropout: Option<InnerDropout>,
    /// Number of outer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Tasks sampled per outer step (default: all sources).
    #[arg(long)]
    tasks_per_step: Option<usize>,
    /// Sentences per support batch of the inner loop (default 16).
    #[arg(long)]
    support_batch_size: Option<usize>,
    /// Sentences per query batch (default 16).
    #[arg(long)]
    query_batch_size: Option<usize>,
    /// Score the sources' dev sets every N outer steps and after the last (0: never).
    #[arg(long)]
    dev_every: Option<usize>,
    /// Dev sentences per source scored at each dev point (default: the whole dev split).
    #[arg(long)]
    dev_limit: Option<usize>,
    /// Which weights to write: the last ones or those of the best mean dev F1.
    #[arg(long, value_enum)]
    select: Option<primer::config::CheckpointSelection>,
    /// Output folder of the primed checkpoint (an earlier checkpoint there is replaced
    /// atomically; a folder holding other files is refused).
    #[arg(long)]
    out: PathBuf,
}

impl PrimeArgs {
    /// The run's settings: the config file (if any) with the flags applied on top.
    pub fn to_config(&self) -> anyhow::Result<PrimeConfig> {
        let mut c = match &self.config {
            Some(path) => super::read_config_file::<PrimeConfig>(path)?,
            None => PrimeConfig::default(),
        };
        self.shared.apply(shared_fields!(c))?;
        if let Some(v) = &self.sources {
            c.sources = v
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(m) = self.method {
            (c.method, c.inner_loop) = match m {
                MethodArg::Meta => (PrimingMethod::Meta, InnerLoop::Pe),
                MethodArg::Ft => (PrimingMethod::Ft, InnerLoop::Pe),
                MethodArg::Maml => (PrimingMethod::Meta, InnerLoop::Full),
            };
        }
        if self.inner_params.is_some() {
            c.inner_params = self.inner_params;
        }
        if let Some(v) = self.inner_steps {
            c.inner_steps = v;
        }
        if self.inner_lr.is_some() {
            c.inner_lr = self.inner_lr;
        }
        if let Some(v) = self.outer_lr {
            c.outer_lr = v;
        }
        if let Some(v) = self.ft_lr {
            c.ft_lr = v;
        }
        if let Some(s) = self.support {
            c.support = match s {
                SupportArg::Same => SupportMode::Same,
                SupportArg::Distinct => SupportMode::Distinct,
            };
        }
        if let Some(v) = self.inner_dropout {
            c.inner_dropout = v;
        }
        if let Some(v) = self.steps {
            c.steps = v;
        }
        if self.tasks_per_step.is_some() {
            c.tasks_per_step = self.tasks_per_step;
        }
        if let Some(v) = self.support_batch_size {
            c.support_batch_size = v;
        }
        if let Some(v) = self.query_batch_size {
            c.query_batch_size = v;
        }
        if let Some(v) = self.dev_every {
            c.dev_every = v;
        }
        if self.dev_limit.is_some() {
            c.data.dev_limit = self.dev_limit;
        }
        if let Some(v) = self.select {
            c.select = v;
        }
        if c.model.as_os_str().is_empty() {
            anyhow::bail!(
                "no model given: pass --model DIR (a Hugging Face BERT folder) or set `model` in --config"
            );
        }
        Ok(c)
    }
}

pub fn run(args: PrimeArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let config = args.to_config()?;
    super::refuse_bad_values(
        &config.value_errors(),
        args.config.as_deref(),
        PrimeConfig::value_errors,
    )?;
    let method = primer::prime::method_name(&config);
    let progress = TerminalProgress::new(&format!("prime {method} {}", config.sources.join(",")));
    let curves = primer::prime::prime(&config, &args.out, &progress)
        .with_context(|| format!("priming ({method}) on {} failed", config.sources.join(",")))?;
    progress.finish();
    let mean = |i: usize| {
        let s = &curves.steps[i];
        s.tasks.iter().map(|t| t.query).sum::<f64>() / s.tasks.len().max(1) as f64
    };
    if let Some(last) = curves.steps.len().checked_sub(1) {
        let what = if config.method == PrimingMethod::Ft {
            "training"
        } else {
            "query"
        };
        println!(
            "{method} priming on {}: {} steps, mean {what} loss {:.4} → {:.4}",
            config.sources.join(","),
            curves.steps.len(),
            mean(0),
            mean(last)
        );
    }
    if let (Some(last), Some(best)) = (
        curves.dev.last(),
        primer::prime::best_dev_point(&curves.dev),
    ) {
        println!(
            "mean dev F1 over the sources: {:.4} after the last step, best {:.4} after step {}; \
             written: the {} weights",
            last.mean_f1(),
            best.mean_f1(),
            best.step,
            config.select
        );
    }
    println!("primed checkpoint written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
