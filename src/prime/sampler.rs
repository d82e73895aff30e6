//! Drawing the batches of priming steps from the source languages' training data.
//!
//! Every outer step draws, per sampled task, `support_batches · support_batch_size +
//! query_batch_size` distinct sentences from the task's (limited) training set: support and
//! query are disjoint within a step, and every step draws afresh from the whole set. FT
//! priming draws the same number of sentences as one batch, so both methods consume the same
//! data per step and task.

use super::error::{PrimeError, Result};
use super::meta::TaskBatches;
use crate::config::SupportMode;
use crate::data::{Batch, Batcher, EncodedSentence};
use crate::rng::SeededRng;
use candle_core::Device;
use std::path::PathBuf;

/// One source language's tokenised training data.
#[derive(Debug, Clone)]
pub struct SourceTask {
    pub lang: String,
    pub train: Vec<EncodedSentence>,
    /// The files the sentences came from (for error messages and priming.json).
    pub files: Vec<PathBuf>,
}

/// The batch sizes of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawSizes {
    pub support_batch_size: usize,
    pub query_batch_size: usize,
    /// Support batches per task and step: 1 (`same`) or S (`distinct`).
    pub support_batches: usize,
}

impl DrawSizes {
    pub fn new(
        support: SupportMode,
        inner_steps: usize,
        support_batch_size: usize,
        query_batch_size: usize,
    ) -> Self {
        Self {
            support_batch_size,
            query_batch_size,
            support_batches: match support {
                SupportMode::Same => 1,
                SupportMode::Distinct => inner_steps,
            },
        }
    }

    /// Sentences one task consumes per step (support + query).
    pub fn sentences_per_task(&self) -> usize {
        self.support_batches * self.support_batch_size + self.query_batch_size
    }
}

/// Draws step batches with its own seeded streams.
pub struct Sampler {
    sizes: DrawSizes,
    tasks_per_step: usize,
    task_rng: SeededRng,
    data_rng: SeededRng,
    batcher: Batcher,
    device: Device,
}

impl Sampler {
    /// Checks that every source can feed one step's disjoint draws. The draws of training
    /// (purpose `prime`: streams `prime.tasks` and `prime.batches`).
    pub fn new(
        sources: &[SourceTask],
        sizes: DrawSizes,
        tasks_per_step: usize,
        seed: u64,
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        Self::with_purpose(
            sources,
            sizes,
            tasks_per_step,
            seed,
            "prime",
            pad_id,
            device,
        )
    }

    /// [`Sampler::new`] drawing from the streams `<purpose>.tasks` and `<purpose>.batches`:
    /// another purpose (the dev pass's support draw) never shifts the training draws.
    pub fn with_purpose(
        sources: &[SourceTask],
        sizes: DrawSizes,
        tasks_per_step: usize,
        seed: u64,
        purpose: &str,
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        if sources.is_empty() {
            return Err(PrimeError::Config("no source languages".into()));
        }
        if tasks_per_step == 0 || tasks_per_step > sources.len() {
            return Err(PrimeError::Config(format!(
                "tasks_per_step must be in 1..={} (the number of sources), got {tasks_per_step}",
                sources.len()
            )));
        }
        if sizes.support_batch_size == 0 || sizes.query_batch_size == 0 {
            return Err(PrimeError::Config(
                "support and query batch sizes must be at least 1".into(),
            ));
        }
        let need = sizes.sentences_per_task();
        for s in sources {
            if s.train.len() < need {
                return Err(PrimeError::Data {
                    lang: s.lang.clone(),
                    path: s.files.first().cloned().unwrap_or_default(),
                    message: format!(
                        "{} training sentences, but one step needs {need} distinct ones ({} support batch(es) of {} + a \
                         query batch of {}); raise data.train_limit or lower the batch sizes",
                        s.train.len(),
                        sizes.support_batches,
                        sizes.support_batch_size,
                        sizes.query_batch_size
                    ),
                });
            }
        }
        Ok(Self {
            sizes,
            tasks_per_step,
            task_rng: SeededRng::derive(seed, &format!("{purpose}.tasks")),
            data_rng: SeededRng::derive(seed, &format!("{purpose}.batches")),
            batcher: Batcher::new(sizes.support_batch_size.max(sizes.query_batch_size), pad_id),
            device: device.clone(),
        })
    }

    /// The indices (into `sources`) of the tasks of the next step: all, in order, or a seeded
    /// sample of `tasks_per_step`.
    pub fn next_tasks(&mut self, n_sources: usize) -> Vec<usize> {
        if self.tasks_per_step >= n_sources {
            (0..n_sources).collect()
        } else {
            self.task_rng.sample_indices(n_sources, self.tasks_per_step)
        }
    }

    /// `need` distinct sentence indices of `source`, in random order.
    fn draw(&mut self, source: &SourceTask) -> Vec<usize> {
        let mut idx = self
            .data_rng
            .sample_indices(source.train.len(), self.sizes.sentences_per_task());
        self.data_rng.shuffle(&mut idx);
        idx
    }

    fn batch(&self, source: &SourceTask, idx: &[usize]) -> Result<Batch> {
        self.batcher
            .make_batch(&source.train, idx, &self.device)
            .map_err(|e| PrimeError::Data {
                lang: source.lang.clone(),
                path: source.files.first().cloned().unwrap_or_default(),
                message: e.to_string(),
            })
    }

    /// Support and query batches of one meta step.
    pub fn meta_step(&mut self, sources: &[SourceTask]) -> Result<Vec<TaskBatches>> {
        let mut out = Vec::new();
        for t in self.next_tasks(sources.len()) {
            let src = &sources[t];
            let idx = self.draw(src);
            let (sup, query) =
                idx.split_at(self.sizes.support_batches * self.sizes.support_batch_size);
            let support = sup
                .chunks(self.sizes.support_batch_size)
                .map(|c| self.batch(src, c))
                .collect::<Result<Vec<_>>>()?;
            out.push(TaskBatches {
                lang: src.lang.clone(),
                support,
                query: self.batch(src, query)?,
            });
        }
        Ok(out)
    }

    /// One batch per sampled task for an FT-priming step (as many sentences as a meta step
    /// consumes).
    pub fn ft_step(&mut self, sources: &[SourceTask]) -> Result<Vec<(String, Batch)>> {
        let mut out = Vec::new();
        for t in self.next_tasks(sources.len()) {
            let src = &sources[t];
            let idx = self.draw(src);
            out.push((src.lang.clone(), self.batch(src, &idx)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(lang: &str, n: usize) -> SourceTask {
        SourceTask {
            lang: lang.into(),
            train: (0..n)
                .map(|i| EncodedSentence {
                    input_ids: vec![101, 1000 + i as u32, 102],
                    word_ids: vec![-1, 0, -1],
                    labels: vec![-100, (i % 7) as i64, -100],
                    n_words: 1,
                    truncated_words: 0,
                })
                .collect(),
            files: vec![PathBuf::from(format!("{lang}/train"))],
        }
    }

    fn ids(b: &Batch) -> Vec<u32> {
        b.input_ids
            .narrow(1, 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn support_and_query_are_disjoint_and_sized() {
        let sources = vec![source("en", 40), source("es", 40)];
        let sizes = DrawSizes::new(SupportMode::Distinct, 3, 4, 5);
        assert_eq!(sizes.sentences_per_task(), 17);
        let mut s = Sampler::new(&sources, sizes, 2, 0, 0, &Device::Cpu).unwrap();
        let step = s.meta_step(&sources).unwrap();
        assert_eq!(step.len(), 2);
        assert_eq!(step[1].lang, "es");
        let t = &step[0];
        assert_eq!(t.support.len(), 3);
        let mut all: Vec<u32> = t.support.iter().flat_map(ids).collect();
        assert!(t.support.iter().all(|b| b.size() == 4));
        assert_eq!(t.query.size(), 5);
        all.extend(ids(&t.query));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a sentence was drawn twice in one step");
        // FT priming consumes the same number of sentences per task.
        let ft = s.ft_step(&sources).unwrap();
        assert_eq!(ft[0].1.size(), 17);
    }

    #[test]
    fn same_seed_same_draws_and_task_sampling() {
        let sources = vec![source("en", 30), source("es", 30), source("de", 30)];
        let sizes = DrawSizes::new(SupportMode::Same, 5, 4, 4);
        let run = |seed| {
            let mut s = Sampler::new(&sources, sizes, 1, seed, 0, &Device::Cpu).unwrap();
            (0..6)
                .map(|_| {
                    let st = s.meta_step(&sources).unwrap();
                    assert_eq!(st.len(), 1);
                    (st[0].lang.clone(), ids(&st[0].query))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let langs: std::collections::BTreeSet<String> = run(1).into_iter().map(|x| x.0).collect();
        assert!(
            langs.len() > 1,
            "task sampling never changed task: {langs:?}"
        );
    }

    /// Another purpose draws other sentences; `new` keeps the training streams' labels.
    #[test]
    fn purposes_draw_independently() {
        let sources = vec![source("en", 60)];
        let sizes = DrawSizes::new(SupportMode::Same, 1, 4, 4);
        let query = |mut s: Sampler| ids(&s.meta_step(&sources).unwrap()[0].query);
        let make = |purpose| {
            Sampler::with_purpose(&sources, sizes, 1, 5, purpose, 0, &Device::Cpu).unwrap()
        };
        let training = Sampler::new(&sources, sizes, 1, 5, 0, &Device::Cpu).unwrap();
        assert_eq!(query(training), query(make("prime")));
        assert_ne!(query(make("prime")), query(make("prime.dev")));
    }

    #[test]
    fn too_little_data_names_the_language_and_the_fix() {
        let sources = vec![source("en", 40), source("es", 10)];
        let sizes = DrawSizes::new(SupportMode::Same, 5, 8, 8);
        let err = Sampler::new(&sources, sizes, 2, 0, 0, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("'es'") && err.contains("train_limit") && err.contains("16"),
            "{err}"
        );
        let err = Sampler::new(&sources, sizes, 3, 0, 0, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tasks_per_step"), "{err}");
    }
}
