//! One outer step of Algorithm 1 (first-order MAML) and of its ablations, as a single function
//! shared by the golden tests, the benchmark and the real priming loop.
//!
//! Per task `l` of the step: fast copies of the adapted groups (the PE module θa and θh_l for
//! the paper's PE inner loop; θp too for the MAML-loop ablation) take S plain SGD steps on
//! support batches; the query loss is taken at (θp or its fast copy, fast θa, fast θh_l); its
//! first-order gradients w.r.t. the encoder and PE weights used there are summed over tasks onto
//! θp and θa; one outer optimiser step follows; θh_l := its adapted head. The PE module is any
//! [`crate::model::pe`] method: the loop reads it only through that seam.
//!
//! Dropout: the query pass draws masks from the run's dropout stream like any training pass;
//! the inner loop draws them as [`MetaStepConfig::inner_dropout`] says (fresh at every inner
//! step, one per support batch, or none), identically for the PE and the full inner loop.

use super::error::{PrimeError, Result};
use crate::config::{InnerDropout, InnerLoop};
use crate::data::Batch;
use crate::model::{
    BertConfig, ParamGroup, ParamSet, PeModule, Tagger, TensorSet, Weights, encoder_output,
    logits_from_hidden, masked_cross_entropy,
};
use crate::rng::SeededRng;
use crate::train::{CachedRows, inputs_of};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// The batches of one task (source language) in one outer step.
#[derive(Debug, Clone)]
pub struct TaskBatches {
    /// The task's language: the key of its head in [`Tagger::heads`].
    pub lang: String,
    /// One batch reused for every inner step (support `same`) or one per inner step
    /// (`distinct`); inner step `s` uses `support[s % support.len()]`.
    pub support: Vec<Batch>,
    pub query: Batch,
}

/// Which parameter groups the inner loop adapts as fast weights; the others keep their outer
/// values during the inner loop. A value rather than a code path, so that other
/// parameter-efficient inner loops are a new constant, not a new function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InnerParams {
    pub encoder: bool,
    /// The PE module (whichever method the tagger carries).
    pub pe: bool,
    pub head: bool,
}

impl InnerParams {
    /// The paper's PE inner loop: θa and θh.
    pub const PE: Self = Self {
        encoder: false,
        pe: true,
        head: true,
    };
    /// The MAML-loop ablation: θp, θa and θh.
    pub const FULL: Self = Self {
        encoder: true,
        pe: true,
        head: true,
    };

    pub fn of(inner_loop: InnerLoop) -> Self {
        match inner_loop {
            InnerLoop::Pe => Self::PE,
            InnerLoop::Full => Self::FULL,
        }
    }
}

/// Settings of [`meta_step`].
#[derive(Debug, Clone, PartialEq)]
pub struct MetaStepConfig {
    pub inner: InnerParams,
    /// S ≥ 1.
    pub inner_steps: usize,
    /// Plain SGD learning rate of the inner loop.
    pub inner_lr: f64,
    /// Keep the adapted fast encoder in the record (MAML loop only; costs a copy of θp per
    /// task until the record is dropped, so only tests ask for it).
    pub record_adapted_encoder: bool,
    /// How the inner loop draws dropout masks when the run has a dropout stream and the model
    /// a dropout above 0 ([`inner_dropout_in_effect`]).
    pub inner_dropout: InnerDropout,
}

/// The inner-loop dropout that actually runs for a configured `mode` on a model with
/// `model`'s dropout probabilities: [`InnerDropout::Off`] when both are 0 (no mask is drawn
/// whatever the mode), else `mode`.
pub fn inner_dropout_in_effect(mode: InnerDropout, model: &BertConfig) -> InnerDropout {
    if model.has_dropout() {
        mode
    } else {
        InnerDropout::Off
    }
}

/// The mutable state of a priming run: θp, θa, the per-task heads, the dropout stream and the
/// number of outer steps taken.
#[derive(Debug)]
pub struct PrimingState {
    /// Must carry an adapter and one head per task language.
    pub tagger: Tagger,
    /// Dropout masks are drawn from here; None runs without dropout (evaluation mode).
    pub dropout: Option<SeededRng>,
    /// Outer steps taken so far (the next step's index).
    pub step: usize,
}

impl PrimingState {
    pub fn new(tagger: Tagger, dropout: Option<SeededRng>) -> Self {
        Self {
            tagger,
            dropout,
            step: 0,
        }
    }
}

/// The outer optimiser as [`meta_step`] and [`super::ft::ft_step`] see it: one update from
/// gradients named like [`Tagger::trainable_vars`] (`enc.…`, `adapter.…`, `head.<lang>.…`).
pub trait OuterOptimizer {
    /// Applies one update; returns the learning rate it used.
    fn apply(&mut self, grads: &TensorSet) -> Result<f64>;
}

/// What one task did in one outer step.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    pub lang: String,
    /// Support loss before each inner step (S values).
    pub inner_losses: Vec<f64>,
    /// Query loss at the adapted weights.
    pub query_loss: f64,
    /// The adapted fast weights after the S inner steps, named `adapter.…`, `head.…` (and
    /// `enc.…` with [`MetaStepConfig::record_adapted_encoder`]).
    pub adapted: TensorSet,
}

/// What one outer step did.
#[derive(Debug, Clone)]
pub struct MetaStepRecord {
    /// Index of the step (0-based).
    pub step: usize,
    /// Outer learning rate used.
    pub lr: f64,
    pub tasks: Vec<TaskOutcome>,
    /// The first-order query gradients summed over tasks (`enc.…`, `adapter.…`), as given to
    /// the optimiser.
    pub grads: TensorSet,
}

impl MetaStepRecord {
    /// The losses as saved in `curves.json`.
    pub fn losses(&self) -> super::PrimeStepRecord {
        super::PrimeStepRecord {
            step: self.step,
            lr: self.lr,
            tasks: self
                .tasks
                .iter()
                .map(|t| super::TaskLosses {
                    lang: t.lang.clone(),
                    inner_before: t.inner_losses.first().copied(),
                    inner_after: t.inner_losses.last().copied(),
                    query: t.query_loss,
                })
                .collect(),
        }
    }
}

/// The outcome of one task's inner loop.
#[derive(Debug)]
pub struct Adapted {
    /// Fast encoder (MAML loop) or None (θp was not adapted).
    pub encoder: Option<ParamSet>,
    /// Fast PE parameters, or None (not adapted).
    pub pe: Option<ParamSet>,
    pub head: Option<ParamSet>,
    /// Support loss before each inner step.
    pub losses: Vec<f64>,
    /// The gradient store of the last inner step (what its backward pass computed).
    pub last_grads: Option<GradStore>,
}

/// Scalar value of a loss tensor.
fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Errors with [`PrimeError::NonFinite`] when `value` is NaN or infinite.
pub(crate) fn check_finite(
    value: f64,
    step: usize,
    task: &str,
    what: impl FnOnce() -> String,
) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(PrimeError::NonFinite {
            step,
            task: task.to_string(),
            what: what(),
            value,
        })
    }
}

/// Sum of every entry (NaN or ±inf when any entry is).
fn tensor_sum(t: &Tensor) -> Result<f64> {
    scalar(&t.sum_all()?)
}

/// `p ← p − lr·g` for every Var of `fast` that received a gradient; gradients are checked.
fn sgd_step(
    fast: &ParamSet,
    grads: &GradStore,
    lr: f64,
    step: usize,
    task: &str,
    inner: usize,
) -> Result<()> {
    for (name, var) in fast.iter() {
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        // One check-and-update pass on the CPU; the finiteness check reads the whole gradient.
        if !crate::train::optim::sgd_update(var, g, lr)? {
            // The sum is what the error reports (NaN or ±inf, as some entry is).
            let sum = tensor_sum(g)?;
            let value = if sum.is_finite() { f64::NAN } else { sum };
            check_finite(value, step, task, || {
                format!("inner-step {inner} gradient of '{name}'")
            })?;
        }
    }
    Ok(())
}

fn head_of<'a>(tagger: &'a Tagger, lang: &str) -> Result<&'a ParamSet> {
    tagger
        .heads
        .get(lang)
        .ok_or_else(|| PrimeError::Config(format!("the model has no head for task '{lang}'")))
}

fn pe_of(tagger: &Tagger) -> Result<&PeModule> {
    tagger.pe.as_ref().ok_or_else(|| {
        PrimeError::Config("meta priming needs a model with a parameter-efficient module".into())
    })
}

fn copy_if(adapt: bool, p: &ParamSet) -> Result<Option<ParamSet>> {
    Ok(if adapt {
        Some(p.detached_copy()?)
    } else {
        None
    })
}

/// Where each inner step reads the encoder output of its support batch from.
enum SupportHidden {
    /// Each support batch encoded once on the frozen encoder, graph-free, labelled rows only
    /// (PE loop with shared masks or without dropout).
    Cached(Vec<CachedRows>),
    /// The step's support batch encoded on the frozen encoder at every step, graph-free, with
    /// fresh masks (PE loop, per-step dropout).
    FrozenEachStep,
    /// Encoded through the fast encoder at every step (full loop). With shared masks,
    /// `replay` holds per support batch the start of its own mask stream, cloned at each step
    /// so the batch's masks come out again: a fixed input shape draws its masks in a fixed
    /// order.
    Tracked { replay: Option<Vec<SeededRng>> },
}

/// Runs one task's inner loop: S plain SGD steps on fast copies of the groups `cfg.inner`
/// names. θp, θa and the head themselves are not modified.
///
/// When the encoder is not adapted its weights are constant for the whole loop: unless
/// per-step dropout needs fresh masks, each support batch is encoded once on detached weights
/// (no autograd graph), and the S steps run only the adapter and the head forward and
/// backward; with per-step dropout the support batch is encoded graph-free at every step.
/// Masks are drawn from `dropout` as [`MetaStepConfig::inner_dropout`] says; with `None`
/// (evaluation mode) or a model without dropout none are drawn.
pub fn inner_loop(
    tagger: &Tagger,
    task: &TaskBatches,
    cfg: &MetaStepConfig,
    dropout: Option<&mut SeededRng>,
    step: usize,
) -> Result<Adapted> {
    if cfg.inner_steps == 0 {
        return Err(PrimeError::Config("inner_steps must be at least 1".into()));
    }
    if task.support.is_empty() {
        return Err(PrimeError::Config(format!(
            "task '{}' has no support batch",
            task.lang
        )));
    }
    let pe = pe_of(tagger)?;
    let head = head_of(tagger, &task.lang)?;
    let fast_enc = copy_if(cfg.inner.encoder, &tagger.encoder)?;
    let fast_pe = copy_if(cfg.inner.pe, &pe.params)?;
    let fast_head = copy_if(cfg.inner.head, head)?;
    // Groups that are not adapted are read as detached tensors: no graph, no gradient.
    let enc_frozen = tagger.encoder.detached_tensors();
    let pe_frozen = pe.params.detached_tensors();
    let head_frozen = head.detached_tensors();
    let enc_w: &dyn Weights = match &fast_enc {
        Some(p) => p,
        None => &enc_frozen,
    };
    let pe_w = pe.with(match &fast_pe {
        Some(p) => p,
        None => &pe_frozen,
    });
    let head_w: &dyn Weights = match &fast_head {
        Some(p) => p,
        None => &head_frozen,
    };
    let mode = match dropout {
        Some(_) => inner_dropout_in_effect(cfg.inner_dropout, &tagger.config),
        None => InnerDropout::Off,
    };
    // Off: the stream is not even read, so the masks of later passes do not depend on S.
    let mut dropout = dropout.filter(|_| mode != InnerDropout::Off);
    // The encoder's outputs are constant through the loop unless θp or a PE module acting
    // inside the encoder (LoRA, BitFit, adapters in every layer) is adapted: then every step
    // runs, and backpropagates through, the encoder.
    let constant = crate::model::pe::encoder_output_is_constant(
        cfg.inner.encoder,
        Some(pe.method()),
        cfg.inner.pe,
    );
    let support = match (constant, mode) {
        (false, InnerDropout::Shared) => SupportHidden::Tracked {
            // One independent stream per support batch, seeded from the run's stream.
            replay: dropout.as_deref_mut().map(|rng| {
                task.support
                    .iter()
                    .map(|_| SeededRng::new(rng.next_u64()))
                    .collect()
            }),
        },
        (false, _) => SupportHidden::Tracked { replay: None },
        (true, InnerDropout::PerStep) => SupportHidden::FrozenEachStep,
        (true, _) => {
            // One mask per cached support encoding for all S steps (what encoding once
            // means), or none. Only the labelled rows are kept: the PE module's after-encoder
            // part and the head act on each token alone.
            let mut c = Vec::with_capacity(task.support.len());
            for b in &task.support {
                let hidden = encoder_output(
                    &tagger.config,
                    &enc_frozen,
                    Some(pe.with(&pe_frozen)),
                    &inputs_of(b),
                    dropout.as_deref_mut(),
                )?;
                c.push(CachedRows::labelled(&hidden, &b.labels)?);
            }
            SupportHidden::Cached(c)
        }
    };
    let fast: Vec<&ParamSet> = [&fast_enc, &fast_pe, &fast_head]
        .into_iter()
        .flatten()
        .collect();
    let mut losses = Vec::with_capacity(cfg.inner_steps);
    let mut last_grads = None;
    for s in 0..cfg.inner_steps {
        let j = s % task.support.len();
        let batch = &task.support[j];
        let encoded_now;
        let (hidden, labels) = match &support {
            SupportHidden::Cached(c) => (c[j].hidden.clone(), &c[j].labels),
            SupportHidden::FrozenEachStep => {
                let hidden = encoder_output(
                    &tagger.config,
                    &enc_frozen,
                    Some(pe.with(&pe_frozen)),
                    &inputs_of(batch),
                    dropout.as_deref_mut(),
                )?;
                encoded_now = CachedRows::labelled(&hidden, &batch.labels)?;
                (encoded_now.hidden.clone(), &encoded_now.labels)
            }
            SupportHidden::Tracked { replay } => {
                let mut replayed = replay.as_ref().map(|r| r[j].clone());
                let rng = match replayed.as_mut() {
                    Some(r) => Some(r),
                    None => dropout.as_deref_mut(),
                };
                (
                    encoder_output(&tagger.config, enc_w, Some(pe_w), &inputs_of(batch), rng)?,
                    &batch.labels,
                )
            }
        };
        let loss = masked_cross_entropy(&logits_from_hidden(&hidden, Some(pe_w), head_w)?, labels)?;
        let value = scalar(&loss)?;
        check_finite(value, step, &task.lang, || {
            format!("inner loss (inner step {})", s + 1)
        })?;
        losses.push(value);
        let grads = crate::model::backward(&loss)?;
        for p in &fast {
            sgd_step(p, &grads, cfg.inner_lr, step, &task.lang, s + 1)?;
        }
        last_grads = Some(grads);
    }
    Ok(Adapted {
        encoder: fast_enc,
        pe: fast_pe,
        head: fast_head,
        losses,
        last_grads,
    })
}

/// Named gradient sums (insertion order kept, so the optimiser sees θp before θa).
#[derive(Default)]
pub(crate) struct GradSum {
    order: Vec<String>,
    sums: BTreeMap<String, Tensor>,
}

impl GradSum {
    /// Adds the gradients `grads` holds for the Vars of `params` under `prefix` + name,
    /// checking each task's contribution for NaN/inf.
    pub(crate) fn add(
        &mut self,
        prefix: &str,
        params: &ParamSet,
        grads: &GradStore,
        step: usize,
        task: &str,
    ) -> Result<()> {
        for (name, var) in params.iter() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let key = format!("{prefix}{name}");
            check_finite(tensor_sum(g)?, step, task, || {
                format!("gradient of '{key}'")
            })?;
            match self.sums.get_mut(&key) {
                Some(acc) => *acc = (&*acc + g)?,
                None => {
                    self.order.push(key.clone());
                    self.sums.insert(key, g.detach());
                }
            }
        }
        Ok(())
    }

    pub(crate) fn into_set(mut self) -> Result<TensorSet> {
        let mut out = TensorSet::new();
        for k in self.order {
            let t = self.sums.remove(&k).expect("every ordered key has a sum");
            out.insert(k, t)?;
        }
        Ok(out)
    }
}

/// One outer step of first-order meta priming (Algorithm 1) over `tasks`; see the module
/// documentation. Heads of the tasks become their adapted heads; θp and θa get one update
/// from `optimizer`. NaN/inf losses or gradients stop the step with an error naming it and
/// the task.
pub fn meta_step(
    state: &mut PrimingState,
    tasks: &[TaskBatches],
    cfg: &MetaStepConfig,
    optimizer: &mut dyn OuterOptimizer,
) -> Result<MetaStepRecord> {
    let step = state.step;
    let enc_prefix = ParamGroup::Encoder.prefix();
    let mut sum = GradSum::default();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        let tagger = &state.tagger;
        let adapted = inner_loop(tagger, task, cfg, state.dropout.as_mut(), step)?;
        let pe = pe_of(tagger)?;
        let pe_prefix = ParamGroup::Pe(pe.name()).prefix();
        let head = head_of(tagger, &task.lang)?;
        drop(adapted.last_grads);
        // The query pass: gradients flow to the encoder and PE weights in use (θp / θa, or
        // their fast copies, whose gradient is applied to θp / θa: first order). The head
        // receives no outer update, so it is read detached.
        let enc_q = adapted.encoder.as_ref().unwrap_or(&tagger.encoder);
        let pe_q = adapted.pe.as_ref().unwrap_or(&pe.params);
        let head_q = adapted.head.as_ref().unwrap_or(head).detached_tensors();
        let hidden = encoder_output(
            &tagger.config,
            enc_q,
            Some(pe.with(pe_q)),
            &inputs_of(&task.query),
            state.dropout.as_mut(),
        )?;
        let loss = masked_cross_entropy(
            &logits_from_hidden(&hidden, Some(pe.with(pe_q)), &head_q)?,
            &task.query.labels,
        )?;
        let query_loss = scalar(&loss)?;
        check_finite(query_loss, step, &task.lang, || "query loss".to_string())?;
        let grads = crate::model::backward(&loss)?;
        sum.add(&enc_prefix, enc_q, &grads, step, &task.lang)?;
        sum.add(&pe_prefix, pe_q, &grads, step, &task.lang)?;
        drop(grads);
        if let Some(h) = &adapted.head {
            head.assign_from(h)?;
        }
        let mut rec = TensorSet::new();
        if cfg.record_adapted_encoder
            && let Some(e) = &adapted.encoder
        {
            for (n, t) in e.detached_tensors().iter() {
                rec.insert(format!("enc.{n}"), t.clone())?;
            }
        }
        for (prefix, p) in [(pe_prefix.as_str(), &adapted.pe), ("head.", &adapted.head)] {
            if let Some(p) = p {
                for (n, t) in p.detached_tensors().iter() {
                    rec.insert(format!("{prefix}{n}"), t.clone())?;
                }
            }
        }
        outcomes.push(TaskOutcome {
            lang: task.lang.clone(),
            inner_losses: adapted.losses,
            query_loss,
            adapted: rec,
        });
    }
    let grads = sum.into_set()?;
    let lr = optimizer.apply(&grads)?;
    state.step += 1;
    Ok(MetaStepRecord {
        step,
        lr,
        tasks: outcomes,
        grads,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::BertConfig;
    use crate::model::init::random_encoder;
    use candle_core::Device;

    /// A tiny random tagger with an adapter and heads "a" and "b".
    pub(crate) fn tiny_tagger(seed: u64) -> Tagger {
        let dev = Device::Cpu;
        let cfg = BertConfig::new(200, 16, 2, 2, 32).with_dropout(0.0);
        let enc = random_encoder(&cfg, seed, &dev)
            .unwrap()
            .to_params()
            .unwrap();
        let mut t = Tagger::new(cfg, enc, dev);
        t.ensure_adapter(8, &mut SeededRng::derive(seed, "a"))
            .unwrap();
        for l in ["a", "b"] {
            t.add_head(l, 7, &mut SeededRng::derive(seed, l)).unwrap();
        }
        t
    }

    pub(crate) fn tiny_batch(rng: &mut SeededRng, n: usize) -> Batch {
        super::super::bench::synthetic_batch(rng, n, 10, 200, 0, 1, &Device::Cpu).unwrap()
    }

    fn task(lang: &str, rng: &mut SeededRng, support: usize) -> TaskBatches {
        TaskBatches {
            lang: lang.to_string(),
            support: (0..support).map(|_| tiny_batch(rng, 4)).collect(),
            query: tiny_batch(rng, 4),
        }
    }

    /// Every tensor of `p` as plain values.
    pub(crate) fn values(p: &ParamSet) -> Vec<Vec<f32>> {
        p.iter()
            .map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    fn cfg(inner: InnerParams, s: usize, lr: f64) -> MetaStepConfig {
        MetaStepConfig {
            inner,
            inner_steps: s,
            inner_lr: lr,
            record_adapted_encoder: false,
            inner_dropout: InnerDropout::PerStep,
        }
    }

    /// Keeps the gradients it is given and changes nothing.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<TensorSet>,
    }

    impl OuterOptimizer for Recorder {
        fn apply(&mut self, grads: &TensorSet) -> Result<f64> {
            self.seen.push(grads.clone());
            Ok(0.0)
        }
    }

    #[test]
    fn pe_inner_loop_keeps_theta_p_bitwise_and_records_no_encoder_graph() {
        let tagger = tiny_tagger(1);
        let mut rng = SeededRng::new(2);
        let t = task("a", &mut rng, 1);
        let enc_before = values(&tagger.encoder);
        let ad_before = values(tagger.pe.as_ref().map(|m| &m.params).unwrap());
        let out = inner_loop(&tagger, &t, &cfg(InnerParams::PE, 3, 0.5), None, 0).unwrap();
        assert_eq!(
            values(&tagger.encoder),
            enc_before,
            "θp changed in the PE inner loop"
        );
        assert_eq!(
            values(tagger.pe.as_ref().map(|m| &m.params).unwrap()),
            ad_before,
            "θa itself changed"
        );
        assert!(out.encoder.is_none());
        let fast_ad = out.pe.as_ref().unwrap();
        assert_ne!(values(fast_ad), ad_before, "the fast adapter did not move");
        assert_eq!(out.losses.len(), 3);
        assert!(out.losses[2] < out.losses[0], "{:?}", out.losses);
        let grads = out.last_grads.as_ref().unwrap();
        for (n, v) in tagger.encoder.iter() {
            assert!(
                grads.get(v.as_tensor()).is_none(),
                "inner backward reached encoder weight {n}"
            );
        }
        for (n, v) in fast_ad.iter().chain(out.head.as_ref().unwrap().iter()) {
            assert!(
                grads.get(v.as_tensor()).is_some(),
                "no inner gradient for fast {n}"
            );
        }
        // The inner backward covered only adapter + head: a handful of tensors, not the
        // dozens an encoder graph holds.
        assert!(
            grads.get_ids().count() < 30,
            "{} gradient entries",
            grads.get_ids().count()
        );
    }

    #[test]
    fn full_inner_loop_adapts_a_copy_of_theta_p_and_the_step_changes_theta_p() {
        let tagger = tiny_tagger(1);
        let mut rng = SeededRng::new(3);
        let t = task("a", &mut rng, 2);
        let enc_before = values(&tagger.encoder);
        let out = inner_loop(&tagger, &t, &cfg(InnerParams::FULL, 2, 0.5), None, 0).unwrap();
        assert_eq!(
            values(&tagger.encoder),
            enc_before,
            "θp itself must only change in the outer step"
        );
        let fast = out.encoder.as_ref().unwrap();
        assert_ne!(
            values(fast),
            enc_before,
            "the MAML inner loop did not update the encoder copy"
        );
        let grads = out.last_grads.as_ref().unwrap();
        let w = fast
            .get("encoder.layer.0.attention.self.query.weight")
            .unwrap();
        assert!(grads.get(w.as_tensor()).is_some());

        let mut state = PrimingState::new(tagger, None);
        let mut vars = state.tagger.encoder.named_vars_with_prefix("enc.");
        vars.extend(
            state
                .tagger
                .pe
                .as_ref()
                .map(|m| &m.params)
                .unwrap()
                .named_vars_with_prefix("adapter."),
        );
        let mut opt = AdamWOuter::new(
            vars,
            crate::train::optim::AdamWConfig {
                lr: 1e-3,
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let rec = meta_step(&mut state, &[t], &cfg(InnerParams::FULL, 2, 0.5), &mut opt).unwrap();
        assert_ne!(values(&state.tagger.encoder), enc_before);
        assert!(
            rec.grads
                .names()
                .any(|n| n == "enc.embeddings.word_embeddings.weight")
        );
        assert!(rec.grads.names().any(|n| n == "adapter.up.weight"));
    }

    use super::super::outer::AdamWOuter;

    #[test]
    fn outer_gradients_are_summed_over_tasks_and_heads_become_adapted_heads() {
        let mut rng = SeededRng::new(4);
        let ta = task("a", &mut rng, 1);
        let tb = task("b", &mut rng, 1);
        let c = cfg(InnerParams::PE, 1, 0.1);
        let run = |tasks: &[TaskBatches]| {
            let mut state = PrimingState::new(tiny_tagger(5), None);
            let mut opt = Recorder::default();
            let rec = meta_step(&mut state, tasks, &c, &mut opt).unwrap();
            (state, rec, opt.seen.pop().unwrap())
        };
        let (_, _, ga) = run(std::slice::from_ref(&ta));
        let (_, _, gb) = run(std::slice::from_ref(&tb));
        let (state, rec, gab) = run(&[ta.clone(), tb.clone()]);
        assert_eq!(gab.len(), ga.len());
        for (n, g) in gab.iter() {
            let want = (ga.get(n).unwrap() + gb.get(n).unwrap()).unwrap();
            let d = (g - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let s = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-5 * s.max(1e-6), "{n}: {d} vs scale {s}");
        }
        // head_l := adapted head_l, and the record holds it.
        for (k, lang) in ["a", "b"].iter().enumerate() {
            let head = state.tagger.heads.get(*lang).unwrap();
            let adapted = rec.tasks[k].adapted.get("head.weight").unwrap();
            let got = head
                .get("weight")
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(
                got,
                adapted.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            let fresh = tiny_tagger(5);
            let before = fresh.heads[*lang]
                .get("weight")
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_ne!(got, before, "head {lang} was not adapted");
        }
        assert_eq!(rec.losses().tasks.len(), 2);
        assert_eq!(state.step, 1);
    }

    #[test]
    fn distinct_support_uses_one_batch_per_inner_step() {
        let tagger = tiny_tagger(6);
        let mut rng = SeededRng::new(7);
        let t = task("a", &mut rng, 3);
        let out = inner_loop(&tagger, &t, &cfg(InnerParams::PE, 3, 0.0), None, 0).unwrap();
        // With lr 0 the weights stay put, so the losses are those of three different batches.
        assert!(
            out.losses[0] != out.losses[1] && out.losses[1] != out.losses[2],
            "{:?}",
            out.losses
        );
        let same = TaskBatches {
            support: vec![t.support[0].clone()],
            ..t.clone()
        };
        let out = inner_loop(&tagger, &same, &cfg(InnerParams::PE, 3, 0.0), None, 0).unwrap();
        assert_eq!(out.losses[0], out.losses[2]);
    }

    /// The support losses of `s` inner steps at lr 0 on `supports` support batches of a tiny
    /// model with dropout `p`, masks drawn as `mode` says from a stream seeded with 21; and the
    /// stream afterwards. At lr 0 every step sees the same weights, so the losses of steps on
    /// the same batch can differ only through their dropout masks.
    fn losses_at_lr0(
        inner: InnerParams,
        mode: InnerDropout,
        p: f64,
        supports: usize,
        s: usize,
    ) -> (Vec<f64>, SeededRng) {
        let mut tagger = tiny_tagger(10);
        tagger.config = tagger.config.with_dropout(p);
        let t = task("a", &mut SeededRng::new(11), supports);
        let mut stream = SeededRng::new(21);
        let c = MetaStepConfig {
            inner_dropout: mode,
            ..cfg(inner, s, 0.0)
        };
        let out = inner_loop(&tagger, &t, &c, Some(&mut stream), 0).unwrap();
        (out.losses, stream)
    }

    #[test]
    fn inner_dropout_modes_draw_what_they_say_in_both_inner_loops() {
        let untouched = SeededRng::new(21).next_u64();
        for inner in [InnerParams::PE, InnerParams::FULL] {
            let (clean, mut after) = losses_at_lr0(inner, InnerDropout::PerStep, 0.0, 1, 3);
            assert!(clean.iter().all(|l| *l == clean[0]), "{inner:?}: {clean:?}");
            assert_eq!(
                after.next_u64(),
                untouched,
                "{inner:?}: a model without dropout drew masks"
            );

            let (per_step, _) = losses_at_lr0(inner, InnerDropout::PerStep, 0.3, 1, 3);
            assert!(
                per_step[0] != per_step[1]
                    && per_step[1] != per_step[2]
                    && per_step[0] != per_step[2],
                "{inner:?}: per-step dropout repeated a mask: {per_step:?}"
            );

            let (shared, _) = losses_at_lr0(inner, InnerDropout::Shared, 0.3, 1, 3);
            assert!(
                shared.iter().all(|l| *l == shared[0]) && shared[0] != clean[0],
                "{inner:?}: shared dropout must reuse one (real) mask: {shared:?} vs {clean:?}"
            );
            // Two support batches, each read twice: each batch keeps its own mask.
            let (two, _) = losses_at_lr0(inner, InnerDropout::Shared, 0.3, 2, 4);
            assert!(
                two[0] == two[2] && two[1] == two[3] && two[0] != two[1],
                "{inner:?}: {two:?}"
            );

            let (off, mut after) = losses_at_lr0(inner, InnerDropout::Off, 0.3, 1, 3);
            assert_eq!(off, clean, "{inner:?}: off must run without dropout");
            assert_eq!(after.next_u64(), untouched, "{inner:?}: off drew masks");
        }
    }

    #[test]
    fn inner_dropout_in_effect_is_off_without_model_dropout() {
        let with = BertConfig::new(10, 4, 1, 2, 8).with_dropout(0.1);
        let without = with.with_dropout(0.0);
        for mode in [
            InnerDropout::PerStep,
            InnerDropout::Shared,
            InnerDropout::Off,
        ] {
            assert_eq!(inner_dropout_in_effect(mode, &with), mode);
            assert_eq!(inner_dropout_in_effect(mode, &without), InnerDropout::Off);
        }
    }

    /// An inner step whose gradient has a NaN or infinite entry is an error naming the tensor
    /// and leaves the fast weights as they were; a finite one takes `p − lr·g`.
    #[test]
    fn sgd_steps_refuse_non_finite_gradients() {
        let tagger = tiny_tagger(8);
        let fast = tagger.heads["a"].detached_copy().unwrap();
        let loss = fast
            .iter()
            .map(|(_, v)| v.as_tensor().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let mut grads = crate::model::backward(&loss).unwrap();
        let before = values(&fast);
        sgd_step(&fast, &grads, 0.5, 3, "a", 1).unwrap();
        // d(sum)/dp = 1 everywhere.
        for (b, a) in before.iter().zip(values(&fast)) {
            for (x, y) in b.iter().zip(&a) {
                assert!((y - (x - 0.5)).abs() < 1e-6);
            }
        }
        let after_ok = values(&fast);
        let (name, var) = fast.iter().next().unwrap();
        let mut bad: Vec<f32> = vec![1.0; var.elem_count()];
        bad[0] = f32::INFINITY;
        let bad = Tensor::from_vec(bad, var.as_tensor().shape(), &Device::Cpu).unwrap();
        grads.insert(var.as_tensor(), bad);
        let err = sgd_step(&fast, &grads, 0.5, 3, "a", 2).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, PrimeError::NonFinite { step: 3, .. })
                && msg.contains(&format!("inner-step 2 gradient of '{name}'")),
            "{msg}"
        );
        assert_eq!(values(&fast)[0], after_ok[0], "the bad tensor is unchanged");
    }

    #[test]
    fn non_finite_values_stop_the_step_naming_step_and_task() {
        let tagger = tiny_tagger(8);
        let nan = Tensor::full(f32::NAN, (7,), &Device::Cpu).unwrap();
        tagger.heads["b"].get("bias").unwrap().set(&nan).unwrap();
        let mut rng = SeededRng::new(9);
        let tasks = vec![task("a", &mut rng, 1), task("b", &mut rng, 1)];
        let mut state = PrimingState::new(tagger, None);
        state.step = 41;
        let enc_before = values(&state.tagger.encoder);
        let err = meta_step(
            &mut state,
            &tasks,
            &cfg(InnerParams::PE, 2, 0.1),
            &mut Recorder::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, PrimeError::NonFinite { step: 41, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("step 41") && msg.contains("'b'") && msg.contains("inner loss"),
            "{msg}"
        );
        assert_eq!(values(&state.tagger.encoder), enc_before);
        let zero_steps = inner_loop(
            &state.tagger,
            &tasks[0],
            &cfg(InnerParams::PE, 0, 0.1),
            None,
            0,
        );
        assert!(zero_steps.is_err());
    }
}
