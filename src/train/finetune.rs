//! The fine-tuning loop: the paper's settings 1/Full FT (θp ∪ θa ∪ θh), 2/Head tuning (θh) and
//! 3/Adapter tuning (θa ∪ θh), from a pretrained folder or a primed checkpoint.
//!
//! Because θp is frozen in head and adapter tuning, the encoder output of every sentence is
//! fixed: with [`FinetuneConfig::cache_encoder`] (the default) those runs encode the training and
//! dev sentences once (graph-free, encoder dropout off; see [`crate::train::cache`]), every epoch
//! trains adapter + head on the cached outputs of the labelled tokens alone, and every dev
//! evaluation runs adapter + head on the cached first subwords. The batches are the same as
//! without the cache, so with dropout off the cache changes the speed and nothing else (a test
//! checks this). With dropout on, the cache means the encoder runs without dropout in those
//! runs (`cache_encoder = false` runs it with dropout at every step, as a PyTorch loop in
//! train mode does); Full FT always runs it with dropout. `metrics.json` records the encoder
//! dropout in effect and what became of a primed adapter ([`TrainingNoise`]).
//!
//! ```no_run
//! use primer::config::{FinetuneConfig, FinetuneMethod};
//! use primer::progress::NoProgress;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cfg = FinetuneConfig::default();
//! cfg.model = "models/all-MiniLM-L6-v2".into();
//! cfg.data.root = "data/wikiann".into();
//! cfg.lang = "af".into();
//! cfg.method = FinetuneMethod::Adapter;
//! let metrics = primer::train::run_finetune(&cfg, "out/af-adapter".as_ref(), &NoProgress)?;
//! println!("test F1 {:.2}", 100.0 * metrics.test.f1);
//! # Ok(()) }
//! ```

use crate::config::{FinetuneConfig, FinetuneMethod, PrimedAdapter};
use crate::data::{self, Batch, Batcher, EncodedSentence, LabelSet, Sentence, WordTokenizer};
use crate::device::{DeviceError, open_device};
use crate::fsutil::{FsError, write_json_atomic};
use crate::metric::{self, MetricError, Scores};
use crate::model::{ModelError, PeModule, Tagger, TensorSet, masked_cross_entropy};
use crate::progress::{ProgressEvent, ProgressSink};
use crate::rng::SeededRng;
use crate::train::cache::EncoderCache;
use crate::train::inputs_of;
use crate::train::metrics::{
    EpochSummary, EvalSets, FinetuneMetrics, PrimedAdapterUse, SentenceCounts, TrainingNoise,
};
use crate::train::optim::{AdamW, AdamWConfig, LinearSchedule, OptimError};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Name of the metrics file a fine-tuning run writes.
pub const METRICS_FILE: &str = "metrics.json";

/// Why a fine-tuning run failed.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("invalid fine-tuning settings: {0}")]
    Invalid(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Metric(#[from] MetricError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(
        "training diverged: the loss is {loss} at step {step} (epoch {epoch}); lower the learning rate \
         (now {lr}) or check the data"
    )]
    NonFinite {
        loss: f32,
        step: usize,
        epoch: usize,
        lr: f64,
    },
    /// Stopped between optimiser steps because a preemption signal arrived (see
    /// [`crate::signal`]). Nothing is written — no partial `metrics.json`, no optimiser
    /// state — so a resubmitted or requeued run restarts from scratch.
    #[error(
        "interrupted by a preemption signal after {step} optimiser steps (epoch {epoch}); nothing was written, the run restarts from scratch when resubmitted"
    )]
    Interrupted { step: usize, epoch: usize },
}

type Result<T> = std::result::Result<T, FinetuneError>;

pub(crate) fn validate(config: &FinetuneConfig) -> Result<()> {
    let bad = |m: String| Err(FinetuneError::Invalid(m));
    if config.lang.trim().is_empty() {
        return bad("no target language given (set `lang`, e.g. --lang af)".into());
    }
    // The range rules live with the config, shared with sweeps and `primer plan`.
    config
        .check_values()
        .map_err(|e| FinetuneError::Invalid(e.to_string()))?;
    let model_dir = model_dir(config);
    if !model_dir.is_dir() {
        return bad(match &config.init {
            Some(init) => format!(
                "init: primed checkpoint {} does not exist (give the checkpoint folder a \
                 `primer prime --out DIR` run wrote: DIR itself)",
                init.display()
            ),
            None => format!(
                "model folder {} does not exist (give a Hugging Face BERT folder, or make one \
                 with `primer init-model`)",
                model_dir.display()
            ),
        });
    }
    if let Some(problem) =
        crate::model::BertConfig::max_len_problem(&model_dir, config.data.max_len)
    {
        return bad(problem);
    }
    Ok(())
}

/// The folder the run starts from: the primed checkpoint when given, else the pretrained model.
fn model_dir(config: &FinetuneConfig) -> PathBuf {
    config.init.clone().unwrap_or_else(|| config.model.clone())
}

/// The tagger a run trains, and what became of the starting folder's adapter: the folder's
/// weights with the run's dropout, its adapter kept or discarded as `primed_adapter` says, a
/// new adapter for adapter tuning when none is left, a new head for the target language, and
/// the method's groups trainable.
fn build_tagger(
    config: &FinetuneConfig,
    dir: &Path,
    num_labels: usize,
    device: &Device,
) -> Result<(Tagger, PrimedAdapterUse)> {
    let mut tagger = Tagger::from_pretrained(dir, device)?;
    if let Some(p) = config.dropout {
        tagger.config = tagger.config.with_dropout(p);
    }
    let mut primed_adapter = match (tagger.pe.is_some(), config.primed_adapter) {
        (false, _) => PrimedAdapterUse::Absent,
        (true, PrimedAdapter::Drop) => {
            tagger.pe = None;
            PrimedAdapterUse::Dropped
        }
        (true, PrimedAdapter::Train) if config.method == FinetuneMethod::Head => {
            PrimedAdapterUse::Frozen
        }
        (true, PrimedAdapter::Train) => PrimedAdapterUse::Trained,
    };
    if let Some(spec) = config.pe_spec() {
        let wanted = spec.method();
        if let Some(have) = tagger.pe.as_ref().map(|m| m.name())
            && have != wanted.name()
        {
            // One PE module per tagger: a mismatched pair (a LoRA inner loop before adapter
            // tuning) keeps the primed θp and starts the run's own module, and says so.
            tagger.pe = None;
            primed_adapter = PrimedAdapterUse::OtherMethod;
        }
        if let Some(have) = tagger.pe.take() {
            // The primed module is trained as it is: settings that describe another module
            // would be silently ignored, so they are an error. Settings of training alone
            // (LoRA's dropout), which no checkpoint carries, are this run's.
            let checkpointed = spec.as_checkpointed().method();
            let (have_s, want) = (format!("{:?}", have.method()), format!("{checkpointed:?}"));
            if have_s != want {
                return Err(FinetuneError::Invalid(format!(
                    "{}: the primed module is {have_s}, and this run's settings describe {want}; \
                     make the finetune settings match the priming's, or set \
                     finetune.primed_adapter = \"drop\"",
                    dir.display()
                )));
            }
            tagger.pe = Some(PeModule::new(wanted.clone(), have.params, &tagger.config)?);
        }
        tagger.ensure_pe(&spec, &mut SeededRng::derive(config.seed, "init.adapter"))?;
    }
    let lang = config.lang.as_str();
    tagger.add_head(
        lang,
        num_labels,
        &mut SeededRng::derive(config.seed, "init.head"),
    )?;
    let groups = tagger.groups_for(config.method, lang);
    tagger.set_trainable(&groups)?;
    Ok((tagger, primed_adapter))
}

/// The tokenised splits of one language.
struct Splits {
    labels: LabelSet,
    batcher: Batcher,
    train: Vec<EncodedSentence>,
    dev: Vec<EncodedSentence>,
    dev_gold: Vec<Sentence>,
    test: Vec<EncodedSentence>,
    test_gold: Vec<Sentence>,
}

fn prepare_splits(config: &FinetuneConfig, dir: &Path) -> Result<Splits> {
    let lang = data::load_language(&config.data, &config.lang, config.seed)?;
    let tokenizer = WordTokenizer::from_model_dir(dir, config.data.max_len)?;
    let train = tokenizer.encode_split(&lang.train, &lang.labels)?.sentences;
    let dev = tokenizer.encode_split(&lang.dev, &lang.labels)?.sentences;
    let test = tokenizer.encode_split(&lang.test, &lang.labels)?.sentences;
    if train.is_empty() {
        return Err(FinetuneError::Invalid(format!(
            "no training sentences for language '{}' under {}",
            config.lang,
            config.data.root.display()
        )));
    }
    Ok(Splits {
        labels: lang.labels,
        batcher: Batcher::new(config.batch_size, tokenizer.pad_id()),
        train,
        dev,
        dev_gold: lang.dev,
        test,
        test_gold: lang.test,
    })
}

/// Scores of one split plus what the report needs from it.
struct Evaluation {
    scores: Scores,
    sentence_counts: Vec<SentenceCounts>,
}

/// Where a split's predictions come from.
enum Predictor<'a> {
    /// The whole tagger, encoder included, on batches of `batcher` on `device`.
    Tagger {
        batcher: &'a Batcher,
        device: &'a Device,
    },
    /// Adapter and head on the split's cached first-subword encoder outputs.
    Cached(&'a EncoderCache),
}

/// Sentences whose cached rows go through adapter and head at once when scoring.
const CACHED_SCORING_CHUNK: usize = 256;

/// Predicts every sentence of a split on graph-free weights and scores it like seqeval.
fn evaluate(
    tagger: &Tagger,
    lang: &str,
    labels: &LabelSet,
    encoded: &[EncodedSentence],
    gold: &[Sentence],
    predictor: Predictor<'_>,
) -> Result<Evaluation> {
    let mut frozen = tagger.clone();
    frozen.set_trainable(&[])?;
    let mut predicted: Vec<Vec<String>> = vec![Vec::new(); encoded.len()];
    match predictor {
        Predictor::Tagger { batcher, device } => {
            let batches = batcher.eval_batches(encoded, device)?;
            let encoder = frozen.frozen_encoder()?;
            let predict = |batch: &Batch| -> Result<Vec<Vec<u32>>> {
                let hidden = encoder.encode(&inputs_of(batch))?;
                let logits = frozen.logits_from_hidden(&hidden, lang)?;
                Ok(logits.argmax(2)?.to_dtype(DType::U32)?.to_vec2::<u32>()?)
            };
            // On the CPU one batch per thread (see [`crate::parallel`]).
            let ids = crate::parallel::map_batches(device, &batches, predict)?;
            for (batch, ids) in batches.iter().zip(ids) {
                for (row, &idx) in batch.indices.iter().enumerate() {
                    predicted[idx] = encoded[idx].word_predictions(&ids[row], labels);
                }
            }
        }
        Predictor::Cached(cache) => {
            let all: Vec<usize> = (0..encoded.len()).collect();
            for chunk in all.chunks(CACHED_SCORING_CHUNK) {
                let ids = match cache.word_rows(chunk)? {
                    Some(rows) => frozen
                        .logits_from_hidden(&rows, lang)?
                        .argmax(1)?
                        .to_dtype(DType::U32)?
                        .to_vec1::<u32>()?,
                    None => Vec::new(),
                };
                let mut rest = ids.as_slice();
                for &i in chunk {
                    let (mine, after) = rest.split_at(cache.rows_of_sentence(i));
                    rest = after;
                    predicted[i] = encoded[i]
                        .word_predictions_from_first_subwords(mine, labels)
                        .ok_or_else(|| {
                            FinetuneError::Invalid(format!(
                                "the scoring cache does not match sentence {i}"
                            ))
                        })?;
                }
            }
        }
    }
    let gold_tags: Vec<&[String]> = gold.iter().map(|s| s.tags.as_slice()).collect();
    let predicted: Vec<&[String]> = predicted.iter().map(Vec::as_slice).collect();
    let evaluation = metric::evaluate(&gold_tags, &predicted, metric::Mode::Default)?;
    Ok(Evaluation {
        scores: evaluation.scores,
        sentence_counts: evaluation.sentences,
    })
}

fn truncated_words(encoded: &[EncodedSentence]) -> usize {
    encoded.iter().map(|e| e.truncated_words).sum()
}

/// Fine-tunes per `config`, writing `metrics.json` (atomically) into `out_dir`.
pub fn run_finetune(
    config: &FinetuneConfig,
    out_dir: &Path,
    progress: &dyn ProgressSink,
) -> Result<FinetuneMetrics> {
    let started = Instant::now();
    validate(config)?;
    // Found now, not after training when metrics.json cannot be written.
    if out_dir.is_file() {
        return Err(FsError::NotAFolder {
            path: out_dir.to_path_buf(),
        }
        .into());
    }
    let device = open_device(&config.device)?;
    // Every op of the run — training, the encoder cache, scoring — is built under it.
    let precision = config.precision.in_effect(&device);
    let _precision = crate::model::dispatch::precision_scope(precision.effective, &device);
    let dir = model_dir(config);
    let lang = config.lang.as_str();

    progress.report(
        ProgressEvent::new("tokenize", 0, 1)
            .with_message(format!("{lang}: reading and tokenising")),
    );
    let splits = prepare_splits(config, &dir)?;

    let (tagger, primed_adapter) = build_tagger(config, &dir, splits.labels.len(), &device)?;
    let groups = tagger.groups_for(config.method, lang);

    let trained_params = tagger.trainable_params();
    let total_params = tagger.total_params(&[lang]);

    // Nothing that shapes the encoder's outputs trains in head or adapter tuning: encode train
    // and dev once (see `cache`). The tagger's trainable groups decide (a PE method acting
    // inside the encoder rules the cache out; see `crate::model::pe`).
    let use_cache = config.cache_encoder && tagger.encoder_output_is_constant();
    // The cache is encoded without dropout; otherwise every step runs the encoder with it.
    let encoder_dropout = |p: f64| if use_cache { 0.0 } else { p };
    let training_noise = TrainingNoise {
        encoder_hidden_dropout: encoder_dropout(tagger.config.hidden_dropout_prob),
        encoder_attention_dropout: encoder_dropout(tagger.config.attention_probs_dropout_prob),
        primed_adapter,
    };
    // Every graph-free encoder pass (cache, scoring) uses token-budget batches.
    let inference_batcher = Batcher::for_inference(&device, splits.batcher.pad_id);
    let caches = if use_cache {
        progress.report(
            ProgressEvent::new("cache", 0, 2).with_message(format!("{lang}: encoding train once")),
        );
        let train =
            EncoderCache::labelled_rows(&tagger, &splits.train, &inference_batcher, &device)?;
        progress.report(
            ProgressEvent::new("cache", 1, 2).with_message(format!("{lang}: encoding dev once")),
        );
        let dev =
            EncoderCache::first_subword_rows(&tagger, &splits.dev, &inference_batcher, &device)?;
        progress.report(ProgressEvent::new("cache", 2, 2));
        Some((train, dev))
    } else {
        None
    };

    let batches_per_epoch = splits.train.len().div_ceil(config.batch_size);
    let total_steps = batches_per_epoch * config.epochs;
    let lr = config.effective_lr();
    let mut optimizer = AdamW::new(
        tagger.trainable_vars(),
        AdamWConfig {
            lr,
            weight_decay: config.weight_decay,
            decay_bias_and_norm: config.decay_bias_and_norm,
            ..AdamWConfig::default()
        },
    )?
    .with_schedule(LinearSchedule::from_ratio(total_steps, config.warmup_ratio));

    let mut shuffle = SeededRng::derive(config.seed, "shuffle");
    let mut dropout = SeededRng::derive(config.seed, "dropout");
    let mut loss_curve = Vec::with_capacity(total_steps);
    let mut epochs = Vec::with_capacity(config.epochs);
    // Best-dev selection: the trained groups' weights of the best dev epoch are kept (None: the
    // current weights, when the best epoch is the last) and test is scored once, with them.
    let mut best: Option<(usize, Evaluation, Option<Vec<TensorSet>>)> = None;
    let mut step = 0usize;

    for epoch in 1..=config.epochs {
        let batches = splits
            .batcher
            .train_batches(&splits.train, &mut shuffle, &device)?;
        let mut epoch_loss = 0.0f64;
        for batch in &batches {
            // Preemption (Slurm's warning signal): stop before the next step rather than be killed mid-write.
            if crate::signal::stop_requested() {
                return Err(FinetuneError::Interrupted { step, epoch });
            }
            let (logits, labels) = match &caches {
                Some((train, _)) => {
                    let rows = train.rows_of(&batch.indices)?;
                    (tagger.logits_from_hidden(&rows.hidden, lang)?, rows.labels)
                }
                None => (
                    tagger.logits(&inputs_of(batch), lang, Some(&mut dropout))?,
                    batch.labels.clone(),
                ),
            };
            let loss = masked_cross_entropy(&logits, &labels)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(FinetuneError::NonFinite {
                    loss: value,
                    step: step + 1,
                    epoch,
                    lr,
                });
            }
            let grads = crate::model::backward(&loss)?;
            optimizer.step(&grads)?;
            step += 1;
            epoch_loss += f64::from(value);
            loss_curve.push(value);
            if step.is_multiple_of(10) || step == total_steps {
                progress.report(
                    ProgressEvent::new("train", step as u64, total_steps as u64)
                        .with_loss(f64::from(value))
                        .with_message(format!("epoch {epoch}/{}", config.epochs)),
                );
            }
        }
        progress.report(ProgressEvent::new(
            "eval",
            epoch as u64,
            config.epochs as u64,
        ));
        let dev = evaluate(
            &tagger,
            lang,
            &splits.labels,
            &splits.dev,
            &splits.dev_gold,
            match &caches {
                Some((_, dev)) => Predictor::Cached(dev),
                None => Predictor::Tagger {
                    batcher: &inference_batcher,
                    device: &device,
                },
            },
        )?;
        let improved = best
            .as_ref()
            .is_none_or(|(_, d, _)| dev.scores.f1 > d.scores.f1);
        let kept = if improved && epoch < config.epochs {
            Some(
                groups
                    .iter()
                    .map(|g| tagger.group(g).and_then(|p| p.snapshot()))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            )
        } else {
            None
        };
        epochs.push(EpochSummary {
            epoch,
            mean_train_loss: epoch_loss / batches.len().max(1) as f64,
            dev: dev.scores.clone(),
        });
        progress.report(
            ProgressEvent::new("eval", epoch as u64, config.epochs as u64)
                .with_message(format!("epoch {epoch} dev F1 {:.2}", 100.0 * dev.scores.f1)),
        );
        if improved {
            best = Some((epoch, dev, kept));
        }
    }

    let (best_epoch, dev, kept) = best.expect("at least one epoch ran");
    if let Some(snapshots) = kept {
        for (g, snapshot) in groups.iter().zip(&snapshots) {
            tagger.group(g)?.assign_from(snapshot)?;
        }
    }
    progress.report(
        ProgressEvent::new("test", 0, 1).with_message(format!("scoring epoch {best_epoch}")),
    );
    // Test is scored once, so caching it saves nothing; it is scored the way dev was (through
    // cached first-subword rows when caching) so that both splits' numbers come from one path.
    let test_cache = match caches {
        Some(_) => Some(EncoderCache::first_subword_rows(
            &tagger,
            &splits.test,
            &inference_batcher,
            &device,
        )?),
        None => None,
    };
    let test = evaluate(
        &tagger,
        lang,
        &splits.labels,
        &splits.test,
        &splits.test_gold,
        match &test_cache {
            Some(test) => Predictor::Cached(test),
            None => Predictor::Tagger {
                batcher: &inference_batcher,
                device: &device,
            },
        },
    )?;
    let metrics = FinetuneMetrics {
        lang: lang.to_string(),
        method: config.method,
        seed: config.seed,
        dev: dev.scores,
        test: test.scores,
        best_epoch,
        epochs,
        trained_params,
        total_params,
        trained_percent: 100.0 * trained_params as f64 / total_params.max(1) as f64,
        steps: step,
        wall_time_s: started.elapsed().as_secs_f64(),
        truncated_words_dev: truncated_words(&splits.dev),
        truncated_words_test: truncated_words(&splits.test),
        eval_sets: EvalSets {
            dev_sentences: splits.dev_gold.len(),
            dev_fingerprint: data::fingerprint(&splits.dev_gold),
            test_sentences: splits.test_gold.len(),
            test_fingerprint: data::fingerprint(&splits.test_gold),
        },
        test_sentence_counts: test.sentence_counts,
        loss_curve,
        training_noise: Some(training_noise),
        precision: Some(precision),
    };
    write_json_atomic(&out_dir.join(METRICS_FILE), &metrics)?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ParamGroup, RandomBertSpec, write_random_bert};

    /// A tiny random BERT folder `<tmp>/bert`, a primed checkpoint `<tmp>/primed` of the same
    /// θp plus an adapter of dimension 8, and a config for target "af".
    fn model_and_primed_checkpoint(tmp: &Path) -> (PathBuf, PathBuf, FinetuneConfig) {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tokenizer = crate_dir.join("data/tokenizer/bert-base-multilingual-cased");
        let spec = RandomBertSpec {
            hidden: 16,
            layers: 1,
            heads: 2,
            intermediate: 32,
            max_position: 32,
            seed: 4,
        };
        let model = tmp.join("bert");
        let primed = tmp.join("primed");
        write_random_bert(&model, &tokenizer, &spec).unwrap();
        write_random_bert(&primed, &tokenizer, &spec).unwrap();
        let mut tagger = Tagger::from_pretrained(&primed, &Device::Cpu).unwrap();
        tagger.ensure_adapter(8, &mut SeededRng::new(77)).unwrap();
        tagger.save_primed(&primed).unwrap();
        let config = FinetuneConfig {
            model: model.clone(),
            lang: "af".into(),
            adapter_dim: 8,
            ..FinetuneConfig::default()
        };
        (model, primed, config)
    }

    fn adapter_values(tagger: &Tagger) -> Vec<Vec<f32>> {
        let adapter = tagger.pe.as_ref().map(|m| &m.params).expect("an adapter");
        adapter
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    /// The tagger a run builds from `dir` (a 7-label head for "af").
    fn built(
        base: &FinetuneConfig,
        dir: &Path,
        method: FinetuneMethod,
        primed_adapter: PrimedAdapter,
    ) -> (Tagger, PrimedAdapterUse) {
        let config = FinetuneConfig {
            method,
            primed_adapter,
            ..base.clone()
        };
        build_tagger(&config, dir, 7, &Device::Cpu).unwrap()
    }

    /// `drop` gives Full FT from a primed checkpoint 1/Full FT's shape (no adapter, the same
    /// trained parameters); `train` keeps and trains the primed adapter.
    #[test]
    fn primed_adapter_drop_gives_full_ft_the_shape_of_unprimed_full_ft() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, primed, base) = model_and_primed_checkpoint(tmp.path());
        let full = FinetuneMethod::Full;
        let (unprimed, use_unprimed) = built(&base, &model, full, PrimedAdapter::Train);
        let (dropped, use_dropped) = built(&base, &primed, full, PrimedAdapter::Drop);
        let (trained, use_trained) = built(&base, &primed, full, PrimedAdapter::Train);
        assert_eq!(use_unprimed, PrimedAdapterUse::Absent);
        assert_eq!(use_dropped, PrimedAdapterUse::Dropped);
        assert_eq!(use_trained, PrimedAdapterUse::Trained);
        assert!(unprimed.pe.is_none() && dropped.pe.is_none());
        assert_eq!(dropped.trainable_params(), unprimed.trainable_params());
        assert_eq!(
            dropped.total_params(&["af"]),
            unprimed.total_params(&["af"])
        );
        let adapter_params = 2 * 16 * 8 + 8 + 16;
        assert!(trained.is_trainable(&ParamGroup::Pe("adapter")));
        assert_eq!(
            trained.trainable_params(),
            unprimed.trainable_params() + adapter_params
        );
    }

    /// Adapter tuning with `drop` starts from the adapter an unprimed run creates, with
    /// `train` from the primed one; head tuning reads the primed adapter frozen, or none.
    #[test]
    fn primed_adapter_decides_which_adapter_tuning_starts_from() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, primed, base) = model_and_primed_checkpoint(tmp.path());
        let primed_values =
            adapter_values(&Tagger::from_pretrained(&primed, &Device::Cpu).unwrap());
        let adapter = FinetuneMethod::Adapter;
        let (fresh, use_fresh) = built(&base, &model, adapter, PrimedAdapter::Train);
        assert_eq!(use_fresh, PrimedAdapterUse::Absent);
        let (kept, use_kept) = built(&base, &primed, adapter, PrimedAdapter::Train);
        assert_eq!(use_kept, PrimedAdapterUse::Trained);
        assert_eq!(adapter_values(&kept), primed_values);
        let (dropped, use_dropped) = built(&base, &primed, adapter, PrimedAdapter::Drop);
        assert_eq!(use_dropped, PrimedAdapterUse::Dropped);
        assert_eq!(adapter_values(&dropped), adapter_values(&fresh));
        assert_ne!(adapter_values(&dropped), primed_values);

        let head = FinetuneMethod::Head;
        let (frozen, use_frozen) = built(&base, &primed, head, PrimedAdapter::Train);
        assert_eq!(use_frozen, PrimedAdapterUse::Frozen);
        assert_eq!(adapter_values(&frozen), primed_values);
        assert!(!frozen.is_trainable(&ParamGroup::Pe("adapter")));
        let (without, use_without) = built(&base, &primed, head, PrimedAdapter::Drop);
        assert_eq!(use_without, PrimedAdapterUse::Dropped);
        assert!(without.pe.is_none());
    }

    /// A primed LoRA checkpoint starts LoRA tuning exactly: the encoder as saved (LoRA not
    /// merged into it), the module's r, α, targets and values as saved; adapter tuning from it
    /// is refused with the fix named, and `drop` starts it fresh.
    #[test]
    fn a_primed_lora_checkpoint_starts_lora_tuning_from_its_weights() {
        use crate::model::pe::LoraTarget;
        let tmp = tempfile::tempdir().unwrap();
        let (model, primed, base) = model_and_primed_checkpoint(tmp.path());
        std::fs::remove_file(primed.join(crate::model::pe::adapter::FILE)).unwrap();
        let mut tagger = Tagger::from_pretrained(&primed, &Device::Cpu).unwrap();
        let spec = crate::model::PeSpec::Lora {
            r: 2,
            alpha: 6.0,
            targets: vec![LoraTarget::Key, LoraTarget::Intermediate],
            dropout: 0.0,
        };
        tagger.ensure_pe(&spec, &mut SeededRng::new(5)).unwrap();
        // B starts at zero: make it non-zero so that a lost value shows.
        for (n, v) in tagger.pe.as_ref().unwrap().params.iter() {
            if n.ends_with("lora_B") {
                let t = SeededRng::new(9)
                    .normal_tensor(v.dims(), 0.5, &Device::Cpu)
                    .unwrap();
                v.set(&t).unwrap();
            }
        }
        tagger.save_primed(&primed).unwrap();
        let saved = adapter_values(&tagger);
        let lora = FinetuneConfig {
            lora_r: Some(2),
            lora_alpha: Some(6.0),
            lora_targets: Some(vec![LoraTarget::Key, LoraTarget::Intermediate]),
            ..base.clone()
        };
        let (kept, use_kept) = built(&lora, &primed, FinetuneMethod::Lora, PrimedAdapter::Train);
        assert_eq!(use_kept, PrimedAdapterUse::Trained);
        assert_eq!(adapter_values(&kept), saved);
        let m = kept.pe.as_ref().unwrap();
        let names: Vec<&str> = m.params.names().collect();
        assert!(
            names.contains(&"encoder.layer.0.intermediate.dense.lora_B"),
            "{names:?}"
        );
        let layers = kept.config.num_hidden_layers;
        assert_eq!(
            m.params.len(),
            layers * 2 * 2,
            "layers × 2 targets × (A, B)"
        );
        for (n, v) in kept.encoder.iter() {
            let want = tagger.encoder.get(n).unwrap();
            let flat = |v: &candle_core::Var| v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(v), flat(want), "{n}: the encoder is loaded as saved");
        }
        assert!(kept.is_trainable(&ParamGroup::Pe("lora")));
        assert!(
            !kept.encoder_output_is_constant(),
            "LoRA tuning cannot cache"
        );
        // A mismatched pair: adapter tuning from the LoRA-primed θp with a fresh adapter.
        let adapter = FinetuneMethod::Adapter;
        let (other, use_other) = built(&base, &primed, adapter, PrimedAdapter::Train);
        assert_eq!(use_other, PrimedAdapterUse::OtherMethod);
        assert_eq!(other.pe.as_ref().unwrap().name(), "adapter");
        let (fresh_adapter, _) = built(&base, &model, adapter, PrimedAdapter::Train);
        assert_eq!(adapter_values(&other), adapter_values(&fresh_adapter));
        let (fresh, _) = built(&lora, &primed, FinetuneMethod::Lora, PrimedAdapter::Drop);
        assert_ne!(adapter_values(&fresh), saved);
        // LoRA's dropout is the run's own, not the checkpoint's (which carries none): the
        // primed weights are kept and trained with it.
        let with_dropout = FinetuneConfig {
            lora_dropout: Some(0.25),
            ..lora.clone()
        };
        let method = FinetuneMethod::Lora;
        let (dropped_in, use_it) = built(&with_dropout, &primed, method, PrimedAdapter::Train);
        assert_eq!(use_it, PrimedAdapterUse::Trained);
        assert_eq!(adapter_values(&dropped_in), saved);
        let m = format!("{:?}", dropped_in.pe.as_ref().unwrap().method());
        assert!(m.contains("dropout: 0.25"), "{m}");
        // The same method with other settings is an error naming the fix.
        let r4 = FinetuneConfig {
            lora_r: Some(4),
            ..lora.clone()
        };
        let config = FinetuneConfig {
            method: FinetuneMethod::Lora,
            ..r4
        };
        let err = build_tagger(&config, &primed, 7, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("r: 2") && err.contains("r: 4"), "{err}");
        assert!(err.contains("primed_adapter = \"drop\""), "{err}");
    }

    /// Scoring through the cached first-subword rows predicts every word exactly as the whole
    /// tagger does. An untrained head predicts many entities, so the comparison is not one of
    /// all-`O` outputs; truncation to 16 tokens leaves words without a token.
    #[test]
    fn cached_scoring_predicts_what_the_tagger_predicts() {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("bert");
        let spec = RandomBertSpec {
            hidden: 32,
            layers: 1,
            heads: 2,
            intermediate: 64,
            max_position: 64,
            seed: 5,
        };
        write_random_bert(
            &model,
            &crate_dir.join("data/tokenizer/bert-base-multilingual-cased"),
            &spec,
        )
        .unwrap();
        let mut config = FinetuneConfig {
            model: model.clone(),
            lang: "af".into(),
            ..FinetuneConfig::default()
        };
        config.data.root = crate_dir.join("data/wikiann");
        config.data.train_limit = Some(1);
        config.data.dev_limit = Some(60);
        config.data.max_len = 16;
        let splits = prepare_splits(&config, &model).unwrap();
        assert!(truncated_words(&splits.dev) > 0, "some words must be cut");
        let device = Device::Cpu;
        let mut tagger = Tagger::from_pretrained(&model, &device).unwrap();
        let mut rng = SeededRng::new(9);
        tagger.ensure_adapter(8, &mut rng).unwrap();
        tagger
            .add_head("af", splits.labels.len(), &mut rng)
            .unwrap();
        tagger
            .set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("af".into())])
            .unwrap();
        let batcher = Batcher::new(7, splits.batcher.pad_id);
        let cache =
            EncoderCache::first_subword_rows(&tagger, &splits.dev, &batcher, &device).unwrap();
        let score = |predictor| {
            evaluate(
                &tagger,
                "af",
                &splits.labels,
                &splits.dev,
                &splits.dev_gold,
                predictor,
            )
            .unwrap()
        };
        let whole = score(Predictor::Tagger {
            batcher: &batcher,
            device: &device,
        });
        let cached = score(Predictor::Cached(&cache));
        let predicted: u32 = whole.sentence_counts.iter().map(|c| c[1]).sum();
        assert!(predicted > 20, "only {predicted} predicted entities");
        assert_eq!(whole.sentence_counts, cached.sentence_counts);
        assert_eq!(whole.scores, cached.scores);
    }
}
