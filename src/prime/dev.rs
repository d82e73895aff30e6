//! Dev evaluation during priming (`prime.dev_every`) and the choice of the checkpoint it
//! allows (`prime.select`).
//!
//! An evaluation point scores every source the way the downstream fine-tuning that priming
//! prepares for would start from the current weights. Meta priming: fast copies of the groups
//! the configured inner loop adapts (θa and the source's head; θp too for the MAML loop) take
//! the inner loop's S SGD steps on support batches from the source's *training* data, then the
//! adapted model scores the source's *dev* sentences. FT priming trains its heads directly, so
//! its current weights are scored as they are. Scores: the mean cross-entropy over the dev
//! set's labelled tokens (the loss training minimises) and the entity-level F1 of
//! [`crate::metric`] (what fine-tuning's dev evaluation reports).
//!
//! The pass must not change training: it draws no dropout masks, modifies no weight of the
//! run (the inner loop adapts copies), and never reads the training streams. Its support
//! batches are drawn once, when the run starts, from streams of their own (`prime.dev.*`),
//! so that every point adapts on the same sentences and the dev curve moves with the weights
//! rather than with a fresh draw.

use super::error::{PrimeError, Result};
use super::meta::{MetaStepConfig, TaskBatches, inner_loop};
use super::sampler::{DrawSizes, Sampler, SourceTask};
use crate::config::CheckpointSelection;
use crate::data::{self, Batcher, EncodedSentence, LabelSet, LanguageData, WordTokenizer};
use crate::metric;
use crate::model::{
    ParamSet, PeModule, Tagger, TensorSet, freeze_encoder, logits_from_hidden, masked_cross_entropy,
};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One source's dev scores at one evaluation point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevTaskScores {
    pub lang: String,
    /// Mean cross-entropy over the dev set's labelled tokens (first subwords).
    pub dev_loss: f64,
    /// Entity-level micro F1 in [0, 1] (seqeval's default mode).
    pub dev_f1: f64,
}

/// The dev scores of every source after `step` outer steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevRecord {
    /// Outer steps taken (1 ..= steps): the weights after that many updates, which are also
    /// the weights the loss record with index `step` is measured on.
    pub step: usize,
    /// In source order.
    pub tasks: Vec<DevTaskScores>,
}

impl DevRecord {
    /// Mean dev F1 over the sources: what `select = "best-dev"` maximises.
    pub fn mean_f1(&self) -> f64 {
        self.tasks.iter().map(|t| t.dev_f1).sum::<f64>() / self.tasks.len().max(1) as f64
    }

    /// Whether this point beats `best` for `select = "best-dev"`: a strictly higher mean F1,
    /// so that of equal points the earliest stays chosen.
    pub fn beats(&self, best: &DevRecord) -> bool {
        self.mean_f1() > best.mean_f1()
    }
}

/// The point `select = "best-dev"` picks among `points` (in step order).
pub fn best_dev_point(points: &[DevRecord]) -> Option<&DevRecord> {
    points
        .iter()
        .reduce(|best, p| if p.beats(best) { p } else { best })
}

/// Whether the weights after `taken` of `steps` outer steps are evaluated: every `dev_every`
/// steps, and always after the last one so that the written weights of `select = "last"` have
/// scores too (never when `dev_every` is 0).
pub fn is_dev_point(dev_every: usize, steps: usize, taken: usize) -> bool {
    dev_every > 0 && taken > 0 && (taken.is_multiple_of(dev_every) || taken == steps)
}

/// One source's tokenised dev split.
#[derive(Debug, Clone)]
pub struct DevSource {
    pub lang: String,
    pub labels: LabelSet,
    pub encoded: Vec<EncodedSentence>,
    /// Gold tags per word, one entry per encoded sentence.
    pub gold: Vec<data::Sentence>,
    /// The dev files (for error messages).
    pub files: Vec<PathBuf>,
}

impl DevSource {
    /// Tokenises the dev split of `data` (already cut by `data.dev_limit`); an empty split is
    /// an error naming the language, since a point without dev sentences scores nothing.
    pub fn new(tokenizer: &WordTokenizer, data: &LanguageData) -> Result<Self> {
        let err = |message: String| PrimeError::Data {
            lang: data.lang.clone(),
            path: data.sources.dev.first().cloned().unwrap_or_default(),
            message,
        };
        if data.dev.is_empty() {
            return Err(err(
                "no dev sentences, but dev_every asks for dev evaluation; raise data.dev_limit \
                 or set dev_every = 0"
                    .into(),
            ));
        }
        let encoded = tokenizer
            .encode_split(&data.dev, &data.labels)
            .map_err(|e| err(e.to_string()))?
            .sentences;
        Ok(Self {
            lang: data.lang.clone(),
            labels: data.labels.clone(),
            encoded,
            gold: data.dev.clone(),
            files: data.sources.dev.clone(),
        })
    }
}

/// A source ready to be scored at every point.
struct Prepared {
    dev: DevSource,
    batches: Vec<data::Batch>,
    /// The fixed support draw (meta priming only).
    support: Option<TaskBatches>,
}

/// Scores the sources' dev sets at evaluation points (see the module documentation).
pub struct DevProbe {
    sources: Vec<Prepared>,
    /// The inner loop the points simulate; None for FT priming (scored as is).
    inner: Option<MetaStepConfig>,
    device: Device,
}

impl DevProbe {
    /// `dev` and `train` in the same source order. `adapt`: the run's inner loop and draw
    /// sizes (meta priming), or None (FT priming).
    pub fn new(
        dev: Vec<DevSource>,
        train: &[SourceTask],
        adapt: Option<(&MetaStepConfig, DrawSizes)>,
        seed: u64,
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        if dev
            .iter()
            .map(|d| &d.lang)
            .ne(train.iter().map(|t| &t.lang))
        {
            return Err(PrimeError::Config(
                "dev evaluation: the dev and training sources differ".into(),
            ));
        }
        let support: Vec<Option<TaskBatches>> = match adapt {
            Some((_, sizes)) => {
                // Every source, in order, once: a sampler over all of them takes one step.
                let mut sampler = Sampler::with_purpose(
                    train,
                    sizes,
                    train.len(),
                    seed,
                    "prime.dev",
                    pad_id,
                    device,
                )?;
                // The query batch of each draw is left unused: the dev sentences replace it.
                sampler.meta_step(train)?.into_iter().map(Some).collect()
            }
            None => vec![None; train.len()],
        };
        let batcher = Batcher::for_inference(device, pad_id);
        let sources =
            dev.into_iter()
                .zip(support)
                .map(|(dev, support)| {
                    let batches = batcher.eval_batches(&dev.encoded, device).map_err(|e| {
                        PrimeError::Data {
                            lang: dev.lang.clone(),
                            path: dev.files.first().cloned().unwrap_or_default(),
                            message: e.to_string(),
                        }
                    })?;
                    Ok(Prepared {
                        dev,
                        batches,
                        support,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            sources,
            inner: adapt.map(|(c, _)| c.clone()),
            device: device.clone(),
        })
    }

    /// Scores `tagger`'s current weights after `taken` outer steps. Leaves every weight of
    /// `tagger` as it was.
    pub fn evaluate(&self, tagger: &Tagger, taken: usize) -> Result<DevRecord> {
        let pe = tagger.pe.as_ref().ok_or_else(|| {
            PrimeError::Config(
                "dev evaluation needs a model with a parameter-efficient module".into(),
            )
        })?;
        let mut tasks = Vec::with_capacity(self.sources.len());
        for src in &self.sources {
            let lang = &src.dev.lang;
            let head = tagger.heads.get(lang).ok_or_else(|| {
                PrimeError::Config(format!("the model has no head for task '{lang}'"))
            })?;
            let scores = match (&self.inner, &src.support) {
                (Some(cfg), Some(support)) => {
                    // No dropout stream: the adaptation runs in evaluation mode.
                    let adapted = inner_loop(tagger, support, cfg, None, taken)?;
                    let pick = |fast: &Option<ParamSet>, own: &ParamSet| {
                        fast.as_ref().unwrap_or(own).detached_tensors()
                    };
                    self.score(
                        src,
                        tagger,
                        pe,
                        pick(&adapted.encoder, &tagger.encoder),
                        pick(&adapted.pe, &pe.params),
                        &pick(&adapted.head, head),
                    )?
                }
                _ => self.score(
                    src,
                    tagger,
                    pe,
                    tagger.encoder.detached_tensors(),
                    pe.params.detached_tensors(),
                    &head.detached_tensors(),
                )?,
            };
            tasks.push(scores);
        }
        Ok(DevRecord { step: taken, tasks })
    }

    /// Mean token loss and entity F1 of one source's dev set under the given weights
    /// (graph-free tensors; `pe_weights` read as `pe`'s method).
    fn score(
        &self,
        src: &Prepared,
        tagger: &Tagger,
        pe: &PeModule,
        encoder: TensorSet,
        pe_weights: TensorSet,
        head: &TensorSet,
    ) -> Result<DevTaskScores> {
        let encoder = freeze_encoder(
            &tagger.config,
            encoder,
            Some((pe.method_arc(), pe_weights.clone())),
        )?;
        let encoded = &src.dev.encoded;
        let predict = |batch: &data::Batch| -> Result<(f64, Vec<Vec<u32>>)> {
            let hidden = encoder.encode(&crate::train::inputs_of(batch))?;
            let logits = logits_from_hidden(&hidden, Some(pe.with(&pe_weights)), head)?;
            let loss = masked_cross_entropy(&logits, &batch.labels)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            let ids = logits.argmax(2)?.to_dtype(DType::U32)?.to_vec2::<u32>()?;
            Ok((loss, ids))
        };
        // On the CPU one batch per thread (see [`crate::parallel`]).
        let outputs = crate::parallel::map_batches(&self.device, &src.batches, predict)?;
        let mut predicted: Vec<Vec<String>> = vec![Vec::new(); encoded.len()];
        let (mut loss_sum, mut labelled) = (0.0, 0usize);
        for (batch, (loss, ids)) in src.batches.iter().zip(outputs) {
            // Batch means weighted by their labelled tokens: the mean over the whole set.
            let n = batch.labelled_tokens(encoded);
            loss_sum += loss * n as f64;
            labelled += n;
            for (row, &idx) in batch.indices.iter().enumerate() {
                predicted[idx] = encoded[idx].word_predictions(&ids[row], &src.dev.labels);
            }
        }
        let gold: Vec<&[String]> = src.dev.gold.iter().map(|s| s.tags.as_slice()).collect();
        let predicted: Vec<&[String]> = predicted.iter().map(Vec::as_slice).collect();
        let evaluation = metric::evaluate(&gold, &predicted, metric::Mode::Default)?;
        Ok(DevTaskScores {
            lang: src.dev.lang.clone(),
            dev_loss: loss_sum / labelled.max(1) as f64,
            dev_f1: evaluation.scores.f1,
        })
    }
}

/// What `priming.json` records about the written weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectedCheckpoint {
    /// The rule that chose them (`prime.select`).
    pub select: CheckpointSelection,
    /// Outer steps taken at the written weights (`steps` for `last`).
    pub step: usize,
    /// Their dev scores (None when dev evaluation was off).
    pub dev: Option<DevRecord>,
}

/// The written weights of the checkpoint: θp and the PE module's (heads are not saved).
struct Snapshot {
    encoder: TensorSet,
    adapter: Option<TensorSet>,
}

/// Follows the evaluation points and keeps what `select` will write.
pub struct CheckpointSelector {
    select: CheckpointSelection,
    /// The chosen point so far and, unless it is the current weights, a copy of them.
    chosen: Option<(DevRecord, Option<Snapshot>)>,
}

impl CheckpointSelector {
    pub fn new(select: CheckpointSelection) -> Self {
        Self {
            select,
            chosen: None,
        }
    }

    /// Takes the point just evaluated on `tagger`'s current weights into account. `last`: no
    /// outer step follows, so the current weights are the ones written without a copy.
    pub fn offer(&mut self, point: &DevRecord, tagger: &Tagger, last: bool) -> Result<()> {
        let better = match (self.select, &self.chosen) {
            (CheckpointSelection::Last, _) | (_, None) => true,
            (CheckpointSelection::BestDev, Some((best, _))) => point.beats(best),
        };
        if !better {
            return Ok(());
        }
        let snapshot = match (self.select, last) {
            (CheckpointSelection::BestDev, false) => Some(Snapshot {
                encoder: tagger.encoder.snapshot()?,
                adapter: tagger
                    .pe
                    .as_ref()
                    .map(|m| &m.params)
                    .map(ParamSet::snapshot)
                    .transpose()?,
            }),
            _ => None,
        };
        self.chosen = Some((point.clone(), snapshot));
        Ok(())
    }

    /// Puts the chosen weights into `tagger` (after the run's `steps` outer steps) and says
    /// which they are.
    pub fn finish(self, tagger: &Tagger, steps: usize) -> Result<SelectedCheckpoint> {
        let Some((point, snapshot)) = self.chosen else {
            return Ok(SelectedCheckpoint {
                select: self.select,
                step: steps,
                dev: None,
            });
        };
        if let Some(s) = snapshot {
            tagger.encoder.assign_from(&s.encoder)?;
            if let (Some(m), Some(saved)) = (&tagger.pe, &s.adapter) {
                m.params.assign_from(saved)?;
            }
        }
        Ok(SelectedCheckpoint {
            select: self.select,
            step: point.step,
            dev: Some(point),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::meta::tests::{tiny_tagger, values};
    use super::*;

    fn record(step: usize, f1: [f64; 2]) -> DevRecord {
        DevRecord {
            step,
            tasks: ["a", "b"]
                .iter()
                .zip(f1)
                .map(|(l, f)| DevTaskScores {
                    lang: l.to_string(),
                    dev_loss: 1.0,
                    dev_f1: f,
                })
                .collect(),
        }
    }

    /// Moves every weight of θp and θa by `by`, as an outer step would.
    fn step_weights(t: &Tagger, by: f64) {
        for p in [&t.encoder, t.pe.as_ref().map(|m| &m.params).unwrap()] {
            for (_, v) in p.iter() {
                v.set(&(v.as_tensor() + by).unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn dev_points_every_k_steps_and_after_the_last() {
        let points = |every, steps| {
            (0..=steps)
                .filter(|&t| is_dev_point(every, steps, t))
                .collect::<Vec<_>>()
        };
        assert_eq!(points(2, 5), vec![2, 4, 5]);
        assert_eq!(points(5, 10), vec![5, 10]);
        assert_eq!(points(20, 6), vec![6]);
        assert_eq!(points(0, 6), Vec::<usize>::new());
    }

    /// best-dev writes the weights of the point with the best mean F1 (the earliest of equal
    /// ones), restored from its copy; last writes the last weights.
    #[test]
    fn best_dev_restores_the_weights_of_the_best_point() {
        let tagger = tiny_tagger(3);
        let mut best = CheckpointSelector::new(CheckpointSelection::BestDev);
        let mut last = CheckpointSelector::new(CheckpointSelection::Last);
        let mut at_step = Vec::new();
        let mut offered = Vec::new();
        // Mean F1 0.3, 0.5, 0.5 (a tie: the earlier stays), 0.4 at the last point.
        let points = [
            (1, [0.2, 0.4]),
            (2, [0.6, 0.4]),
            (3, [0.4, 0.6]),
            (4, [0.4, 0.4]),
        ];
        for (k, (step, f1)) in points.into_iter().enumerate() {
            step_weights(&tagger, 0.25);
            at_step.push((
                values(&tagger.encoder),
                values(tagger.pe.as_ref().map(|m| &m.params).unwrap()),
            ));
            let point = record(step, f1);
            let is_last = k == points.len() - 1;
            best.offer(&point, &tagger, is_last).unwrap();
            last.offer(&point, &tagger, is_last).unwrap();
            offered.push(point);
        }
        assert_eq!(best_dev_point(&offered).unwrap().step, 2);
        let final_weights = at_step.last().unwrap().clone();
        let kept = last.finish(&tagger, 4).unwrap();
        assert_eq!((kept.step, kept.dev.unwrap().step), (4, 4));
        assert_eq!(values(&tagger.encoder), final_weights.0);

        let chosen = best.finish(&tagger, 4).unwrap();
        assert_eq!(chosen.select, CheckpointSelection::BestDev);
        assert_eq!(chosen.step, 2);
        assert_eq!(chosen.dev.as_ref().unwrap().mean_f1(), 0.5);
        assert_eq!(values(&tagger.encoder), at_step[1].0);
        assert_eq!(
            values(tagger.pe.as_ref().map(|m| &m.params).unwrap()),
            at_step[1].1
        );
        assert_ne!(at_step[1].0, final_weights.0);
    }

    #[test]
    fn best_dev_at_the_last_point_keeps_the_current_weights() {
        let tagger = tiny_tagger(4);
        let mut best = CheckpointSelector::new(CheckpointSelection::BestDev);
        best.offer(&record(5, [0.1, 0.1]), &tagger, false).unwrap();
        step_weights(&tagger, 0.5);
        let now = values(&tagger.encoder);
        best.offer(&record(10, [0.3, 0.3]), &tagger, true).unwrap();
        let chosen = best.finish(&tagger, 10).unwrap();
        assert_eq!(chosen.step, 10);
        assert_eq!(values(&tagger.encoder), now);
        // Without any point (dev evaluation off) the last weights are written, unscored.
        let none = CheckpointSelector::new(CheckpointSelection::Last)
            .finish(&tagger, 7)
            .unwrap();
        assert_eq!((none.step, none.dev), (7, None));
    }
}
