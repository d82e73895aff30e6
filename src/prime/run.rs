//! A whole priming run: load the model and the source languages, take the outer steps, write
//! the primed checkpoint folder atomically.

use super::dev::{
    CheckpointSelector, DevProbe, DevRecord, DevSource, SelectedCheckpoint, is_dev_point,
};
use super::error::{PrimeError, Result};
use super::ft::ft_step;
use super::meta::{InnerParams, MetaStepConfig, PrimingState, inner_dropout_in_effect, meta_step};
use super::outer::AdamWOuter;
use super::sampler::{DrawSizes, Sampler, SourceTask};
use super::{PrimeCurves, PrimeStepRecord};
use crate::config::{InnerDropout, InnerLoop, PrecisionInEffect, PrimeConfig, PrimingMethod};
use crate::data::{WordTokenizer, load_language};
use crate::fsutil::{StagedDir, write_json_atomic};
use crate::model::Tagger;
use crate::model::init::TOKENIZER_FILES;
use crate::progress::{ProgressEvent, ProgressSink};
use crate::rng::SeededRng;
use crate::train::optim::{AdamWConfig, LinearSchedule};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The loss curves of a primed checkpoint.
pub const CURVES_FILE: &str = "curves.json";
/// The description of a primed checkpoint.
pub const PRIMING_FILE: &str = "priming.json";

/// One source language as recorded in `priming.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub lang: String,
    pub train_files: Vec<PathBuf>,
    /// Training sentences available (after `data.train_limit`).
    pub train_sentences: usize,
    pub labels: Vec<String>,
}

/// `priming.json`: what produced a primed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimingInfo {
    /// `meta`, `maml` (meta with the full inner loop) or `ft`.
    pub method: String,
    pub config: PrimeConfig,
    pub inner_lr: f64,
    /// The inner loop's dropout as it ran: `config.inner_dropout`, or `off` when the model's
    /// dropout (after `config.dropout`) is 0; None for FT priming, which has no inner loop
    /// (and in files written before this was recorded).
    #[serde(default)]
    pub inner_dropout: Option<InnerDropout>,
    /// The precision asked for (`prime.precision`) and the one that ran; None in files
    /// written before it was recorded (those ran fp32).
    #[serde(default)]
    pub precision: Option<PrecisionInEffect>,
    pub sources: Vec<SourceInfo>,
    /// Sentences each sampled task consumes per step (support + query).
    pub sentences_per_task_step: usize,
    pub steps: usize,
    pub seed: u64,
    /// Losses of the last step.
    pub final_losses: Option<PrimeStepRecord>,
    /// Mean query (FT: training) loss over the tasks of the first and the last step.
    pub first_query_loss: Option<f64>,
    pub last_query_loss: Option<f64>,
    /// Which weights were written (`config.select`), with their dev scores when `dev_every`
    /// is on. None in files written before this was recorded (always the last weights).
    /// `final_losses` and the query losses above stay those of the last step.
    #[serde(default)]
    pub selected: Option<SelectedCheckpoint>,
    pub wall_time_s: f64,
    pub primer_version: String,
}

/// The method name of a configuration as the CLI spells it.
pub fn method_name(cfg: &PrimeConfig) -> &'static str {
    match (cfg.method, cfg.effective_inner_loop()) {
        (PrimingMethod::Ft, _) => "ft",
        (PrimingMethod::Meta, InnerLoop::Pe) => "meta",
        (PrimingMethod::Meta, InnerLoop::Full) => "maml",
    }
}

pub(crate) fn validate(cfg: &PrimeConfig) -> Result<()> {
    let bad = |m: String| Err(PrimeError::Config(m));
    if cfg.model.as_os_str().is_empty() {
        return bad("no model folder given (--model / model)".into());
    }
    // The range rules live with the config, shared with sweeps and `primer plan`.
    cfg.check_values()
        .map_err(|e| PrimeError::Config(e.to_string()))?;
    match crate::model::BertConfig::max_len_problem(&cfg.model, cfg.data.max_len) {
        Some(problem) => bad(problem),
        None => Ok(()),
    }
}

fn mean_query(r: &PrimeStepRecord) -> f64 {
    r.tasks.iter().map(|t| t.query).sum::<f64>() / r.tasks.len().max(1) as f64
}

fn progress_message(r: &PrimeStepRecord) -> String {
    r.tasks
        .iter()
        .map(|t| match (t.inner_before, t.inner_after) {
            (Some(b), Some(a)) => format!("{} inner {b:.3}→{a:.3} query {:.3}", t.lang, t.query),
            _ => format!("{} loss {:.3}", t.lang, t.query),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn dev_message(point: &DevRecord) -> String {
    let scores = point
        .tasks
        .iter()
        .map(|t| format!("{} F1 {:.3} loss {:.3}", t.lang, t.dev_f1, t.dev_loss))
        .collect::<Vec<_>>()
        .join(", ");
    format!("dev: {scores}")
}

/// Primes per `config` and writes the primed checkpoint folder `out_dir` atomically: the HF
/// BERT folder of θp* (config.json, model.safetensors, tokenizer files of the source model),
/// `adapter.safetensors` (θa*), `priming.json` ([`PrimingInfo`]) and `curves.json`
/// ([`PrimeCurves`]). With `dev_every` > 0 the sources' dev sets are scored along the way
/// (see [`super::dev`]), and θp*, θa* are those `select` picks. An existing `out_dir` is
/// replaced only when it is empty or an earlier primed checkpoint (it holds `priming.json`).
pub fn prime(
    config: &PrimeConfig,
    out_dir: &Path,
    progress: &dyn ProgressSink,
) -> Result<PrimeCurves> {
    let started = Instant::now();
    validate(config)?;
    // Checked before priming starts rather than at the commit, hours later: the commit
    // replaces `out_dir` whole, which is only safe for an earlier primed checkpoint.
    crate::fsutil::ensure_replaceable(out_dir, |names| names.iter().any(|n| n == PRIMING_FILE))?;
    let device = crate::device::open_device(&config.device)?;
    // Every op of the run — inner loops, outer steps, dev scoring — is built under it.
    let precision = config.precision.in_effect(&device);
    let _precision = crate::model::dispatch::precision_scope(precision.effective, &device);
    let mut tagger = Tagger::from_pretrained(&config.model, &device)?;
    let saved_config = tagger.config.clone();
    if let Some(p) = config.dropout {
        tagger.config = tagger.config.with_dropout(p);
    }
    tagger.ensure_pe(
        &config.pe_spec(),
        &mut SeededRng::derive(config.seed, "init.adapter"),
    )?;

    let tokenizer =
        WordTokenizer::from_model_dir(&config.model, config.data.max_len).map_err(|e| {
            PrimeError::Data {
                lang: config.sources.join(","),
                path: config.model.clone(),
                message: e.to_string(),
            }
        })?;
    let mut sources = Vec::new();
    let mut infos = Vec::new();
    let mut dev_sources = Vec::new();
    for lang in &config.sources {
        let data_err = |e: crate::data::DataError| PrimeError::Data {
            lang: lang.clone(),
            path: config.data.root.join(lang),
            message: e.to_string(),
        };
        let data = load_language(&config.data, lang, config.seed).map_err(data_err)?;
        if config.dev_every > 0 {
            dev_sources.push(DevSource::new(&tokenizer, &data)?);
        }
        let enc = tokenizer
            .encode_split(&data.train, &data.labels)
            .map_err(data_err)?;
        let mut head_rng = SeededRng::derive(config.seed, &format!("init.head.{lang}"));
        tagger.add_head(lang, data.labels.len(), &mut head_rng)?;
        infos.push(SourceInfo {
            lang: lang.clone(),
            train_files: data.sources.train.clone(),
            train_sentences: enc.sentences.len(),
            labels: data.labels.tags().to_vec(),
        });
        sources.push(SourceTask {
            lang: lang.clone(),
            train: enc.sentences,
            files: data.sources.train,
        });
    }
    let sizes = DrawSizes::new(
        config.support,
        config.inner_steps,
        config.support_batch_size,
        config.query_batch_size,
    );
    let tasks_per_step = config.tasks_per_step.unwrap_or(sources.len());
    let mut sampler = Sampler::new(
        &sources,
        sizes,
        tasks_per_step,
        config.seed,
        tokenizer.pad_id(),
        &device,
    )?;

    let is_ft = config.method == PrimingMethod::Ft;
    let mut vars = tagger.vars_of(&tagger.encoder_and_pe_groups()?)?;
    if is_ft {
        for (lang, h) in &tagger.heads {
            vars.extend(h.named_vars_with_prefix(&format!("head.{lang}.")));
        }
    }
    let acfg = AdamWConfig {
        lr: if is_ft { config.ft_lr } else { config.outer_lr },
        weight_decay: config.weight_decay,
        ..AdamWConfig::default()
    };
    let schedule = LinearSchedule::from_ratio(config.steps, config.warmup_ratio);
    let mut opt = AdamWOuter::new(vars, acfg, Some(schedule))?;
    let step_cfg = MetaStepConfig {
        inner: InnerParams::of(config.effective_inner_loop()),
        inner_steps: config.inner_steps,
        inner_lr: config.effective_inner_lr(),
        record_adapted_encoder: false,
        inner_dropout: config.inner_dropout,
    };
    let inner_dropout =
        (!is_ft).then(|| inner_dropout_in_effect(config.inner_dropout, &tagger.config));
    let mut state = PrimingState::new(
        tagger,
        Some(SeededRng::derive(config.seed, "prime.dropout")),
    );
    let dev_probe = match config.dev_every {
        0 => None,
        _ => Some(DevProbe::new(
            dev_sources,
            &sources,
            (!is_ft).then_some((&step_cfg, sizes)),
            config.seed,
            tokenizer.pad_id(),
            &device,
        )?),
    };
    let mut selector = CheckpointSelector::new(config.select);
    let mut dev_time = std::time::Duration::ZERO;
    let mut curves = PrimeCurves::default();
    tracing::info!(
        "priming ({}) on {} for {} steps: {} sentences per task and step{}",
        method_name(config),
        config.sources.join(","),
        config.steps,
        sizes.sentences_per_task(),
        inner_dropout.map_or(String::new(), |d| format!(", inner-loop dropout {d}"))
    );
    for step in 0..config.steps {
        // Preemption (Slurm's warning signal): stop before the next step rather than be killed.
        if crate::signal::stop_requested() {
            return Err(PrimeError::Interrupted { step });
        }
        let record = if is_ft {
            let batches = sampler.ft_step(&sources)?;
            ft_step(&mut state, &batches, &mut opt)?
        } else {
            let tasks = sampler.meta_step(&sources)?;
            meta_step(&mut state, &tasks, &step_cfg, &mut opt)?.losses()
        };
        progress.report(
            ProgressEvent::new("prime", (record.step + 1) as u64, config.steps as u64)
                .with_loss(mean_query(&record))
                .with_message(progress_message(&record)),
        );
        curves.steps.push(record);
        let taken = step + 1;
        if let Some(probe) = &dev_probe
            && is_dev_point(config.dev_every, config.steps, taken)
        {
            let dev_started = Instant::now();
            let point = probe.evaluate(&state.tagger, taken)?;
            dev_time += dev_started.elapsed();
            progress.report(
                ProgressEvent::new("prime", taken as u64, config.steps as u64)
                    .with_message(dev_message(&point)),
            );
            selector.offer(&point, &state.tagger, taken == config.steps)?;
            curves.dev.push(point);
        }
    }

    if !curves.dev.is_empty() {
        tracing::info!(
            "dev evaluation: {} points took {:.1} s of {:.1} s",
            curves.dev.len(),
            dev_time.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    let mut tagger = state.tagger;
    let selected = selector.finish(&tagger, config.steps)?;
    tagger.config = saved_config;
    let staged = StagedDir::new(out_dir)?;
    tagger.save_primed(staged.path())?;
    for f in TOKENIZER_FILES {
        let src = config.model.join(f);
        if src.exists() {
            let to = staged.path().join(f);
            std::fs::copy(&src, &to).map_err(|source| PrimeError::Copy {
                from: src,
                to,
                source,
            })?;
        }
    }
    let info = PrimingInfo {
        method: method_name(config).to_string(),
        config: config.clone(),
        inner_lr: config.effective_inner_lr(),
        inner_dropout,
        precision: Some(precision),
        sources: infos,
        sentences_per_task_step: sizes.sentences_per_task(),
        steps: config.steps,
        seed: config.seed,
        final_losses: curves.steps.last().cloned(),
        first_query_loss: curves.steps.first().map(mean_query),
        last_query_loss: curves.steps.last().map(mean_query),
        selected: Some(selected),
        wall_time_s: started.elapsed().as_secs_f64(),
        primer_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_json_atomic(&staged.path().join(PRIMING_FILE), &info)?;
    write_json_atomic(&staged.path().join(CURVES_FILE), &curves)?;
    staged.commit()?;
    Ok(curves)
}
