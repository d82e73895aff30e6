//! The tagger: encoder f (θp) → optional parameter-efficient module (the paper's bottleneck
//! adapter θa, or any [`PeMethod`]) → one linear head h per language (θh), with explicit
//! parameter groups.

use super::bert::{
    EncoderHooks, EncoderInputs, FrozenEncoder, encode_with_hooks, load_encoder, save_encoder,
};
use super::config::BertConfig;
use super::error::{ModelError, Result};
use super::ops::{linear, masked_cross_entropy};
use super::params::{ParamSet, TensorSet, Weights};
use super::pe::{self, PeMethod, PeModule, PeSpec, PeWeights};
use crate::rng::SeededRng;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Which parameters downstream fine-tuning trains (the paper's settings 1-3). Defined here,
/// beside [`Tagger::groups_for`] which maps it to parameter groups, so that the model does not
/// import the run configs; `crate::config` re-exports it and adds its default learning rates.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FinetuneMethod {
    /// Full FT: every parameter present — θp ∪ θh, and θa when the model carries an adapter.
    Full,
    /// Head tuning: θh only.
    Head,
    /// Adapter tuning: θa ∪ θh (an adapter is created when the model has none).
    Adapter,
    /// BitFit: every bias of the encoder ∪ θh (see [`crate::model::pe::bitfit`]).
    Bitfit,
    /// LoRA on the encoder's linears ∪ θh (`lora_*` keys; see [`crate::model::pe::lora`]).
    Lora,
}

impl FinetuneMethod {
    /// The PE method this method trains, found by its spelling (None: full FT, head tuning).
    pub fn pe_kind(self) -> Option<crate::model::pe::PeKind> {
        crate::model::pe::PeKind::named_by(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FinetuneMethod::Full => "full",
            FinetuneMethod::Head => "head",
            FinetuneMethod::Adapter => "adapter",
            FinetuneMethod::Bitfit => "bitfit",
            FinetuneMethod::Lora => "lora",
        }
    }
}

impl std::fmt::Display for FinetuneMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WikiAnn's label set size (O, B/I-PER, B/I-ORG, B/I-LOC).
pub const DEFAULT_NUM_LABELS: usize = 7;

/// Names and shapes of one head θh.
pub fn head_param_shapes(hidden: usize, num_labels: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        ("weight".into(), vec![num_labels, hidden]),
        ("bias".into(), vec![num_labels]),
    ]
}

/// The head: logits `[..., num_labels]`.
pub fn head_forward(z: &Tensor, h: &dyn Weights) -> Result<Tensor> {
    linear(z, h.weight("weight")?, Some(h.weight("bias")?))
}

/// The encoder's last hidden states `[B, T, H]` under encoder weights `enc` and, when given, a
/// PE module acting inside the encoder (its weight changes, per-layer hook and, in training —
/// `dropout` given — its linear branches). A module that acts only after the encoder leaves
/// this the plain encoder.
pub fn encoder_output(
    cfg: &BertConfig,
    enc: &dyn Weights,
    pe: Option<PeWeights<'_>>,
    inputs: &EncoderInputs<'_>,
    dropout: Option<&mut SeededRng>,
) -> Result<Tensor> {
    let Some(pe) = pe.filter(|p| p.method.acts_inside_encoder()) else {
        return encode_with_hooks(cfg, enc, inputs, dropout, EncoderHooks::default());
    };
    let training = dropout.is_some();
    let overrides = pe
        .method
        .encoder_overrides(cfg, enc, pe.weights, training)?;
    let overlay = pe::Overlay {
        base: enc,
        overrides: &overrides,
    };
    let enc_w: &dyn Weights = if overrides.is_empty() { enc } else { &overlay };
    let hook = |l: usize, x: Tensor| pe.method.after_layer(l, x, pe.weights);
    let branch = |l: usize, w: &str, x: &Tensor, rng: &mut SeededRng| {
        pe.method.linear_branch(l, w, x, pe.weights, rng)
    };
    let hooks = EncoderHooks {
        after_layer: pe.method.has_layer_hook().then_some(&hook as _),
        linear_branch: (training && pe.method.has_linear_branch()).then_some(&branch as _),
    };
    encode_with_hooks(cfg, enc_w, inputs, dropout, hooks)
}

/// Logits from encoder outputs: `h(g(hidden))` with the PE module's after-encoder part `g`
/// (identity for methods acting inside the encoder), or `h(hidden)` without a module.
pub fn logits_from_hidden(
    hidden: &Tensor,
    pe: Option<PeWeights<'_>>,
    head: &dyn Weights,
) -> Result<Tensor> {
    match pe {
        Some(p) => head_forward(&p.method.after_encoder(hidden, p.weights)?, head),
        None => head_forward(hidden, head),
    }
}

/// Full forward `h(g(f(x)))` over explicit weight sets (trainable, fast or detached).
pub fn tagger_logits(
    cfg: &BertConfig,
    enc: &dyn Weights,
    pe: Option<PeWeights<'_>>,
    head: &dyn Weights,
    inputs: &EncoderInputs<'_>,
    dropout: Option<&mut SeededRng>,
) -> Result<Tensor> {
    let hidden = encoder_output(cfg, enc, pe, inputs, dropout)?;
    logits_from_hidden(&hidden, pe, head)
}

/// Encoder weights `encoder` (graph-free) fixed for one inference pass, with the part of a PE
/// module (method, graph-free weights) that acts inside the encoder frozen in: see
/// [`FrozenEncoder`]. A module acting only after the encoder is left to
/// [`logits_from_hidden`].
pub fn freeze_encoder(
    config: &BertConfig,
    encoder: TensorSet,
    pe: Option<(Arc<dyn PeMethod>, TensorSet)>,
) -> Result<FrozenEncoder<'_>> {
    let Some((method, own)) = pe.filter(|(m, _)| m.acts_inside_encoder()) else {
        return FrozenEncoder::new(config, encoder);
    };
    // Evaluation only: the merged form of every weight-space change.
    let overrides = method.encoder_overrides(config, &encoder, &own, false)?;
    let frozen = FrozenEncoder::new(config, pe::merge_overrides(encoder, &overrides)?)?;
    if !method.has_layer_hook() {
        return Ok(frozen);
    }
    Ok(frozen.with_layer_hook(Box::new(move |l, x| method.after_layer(l, x, &own))))
}

/// A new head: weight N(0, 0.02²) from `rng`, bias 0.
pub fn new_head(
    hidden: usize,
    num_labels: usize,
    rng: &mut SeededRng,
    device: &Device,
) -> Result<ParamSet> {
    pe::init_normal_weights_zero_biases(&head_param_shapes(hidden, num_labels), rng, device)
}

/// One trainable group of parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamGroup {
    /// θp.
    Encoder,
    /// The PE module's parameters (θa for the paper's adapter), by the method's name.
    Pe(&'static str),
    /// θh of one language.
    Head(String),
}

impl ParamGroup {
    /// The prefix of this group's names in [`Tagger::trainable_vars`], gradient records and
    /// optimiser state (`enc.…`, `adapter.…`, `head.<lang>.…`).
    pub fn prefix(&self) -> String {
        match self {
            ParamGroup::Encoder => "enc.".into(),
            ParamGroup::Pe(name) => format!("{name}."),
            ParamGroup::Head(l) => format!("head.{l}."),
        }
    }
}

/// θp, an optional PE module and per-language θh, and which groups are being trained.
///
/// Forwards run frozen groups on detached tensors, so no autograd graph (and no backward
/// work) is spent on them, and only trainable Vars receive gradients.
#[derive(Debug, Clone)]
pub struct Tagger {
    pub config: BertConfig,
    pub encoder: ParamSet,
    pub pe: Option<PeModule>,
    pub heads: BTreeMap<String, ParamSet>,
    trainable: BTreeSet<ParamGroup>,
    device: Device,
}

impl Tagger {
    /// A tagger from an encoder, no PE module, no heads, nothing trainable.
    pub fn new(config: BertConfig, encoder: ParamSet, device: Device) -> Self {
        Self {
            config,
            encoder,
            pe: None,
            heads: BTreeMap::new(),
            trainable: BTreeSet::new(),
            device,
        }
    }

    /// Loads a Hugging Face BERT folder; when it also holds a PE module's file (a primed
    /// checkpoint: `adapter.safetensors`, …) the module is loaded too.
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, enc) = load_encoder(dir, device)?;
        let mut t = Self::new(cfg, enc, device.clone());
        t.pe = pe::load_from_dir(dir, &t.config, device)?;
        Ok(t)
    }

    /// Loads a primed checkpoint folder (HF folder + a PE module's file, which must exist).
    pub fn load_primed(dir: &Path, device: &Device) -> Result<Self> {
        if !pe::dir_has_module(dir) {
            return Err(ModelError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "a primed checkpoint needs a parameter-efficient module next to \
                         model.safetensors ({})",
                        pe::module_files().join(" or ")
                    ),
                ),
            });
        }
        Self::from_pretrained(dir, device)
    }

    /// Writes θp (config.json, model.safetensors) and the PE module (its file, when present)
    /// into `dir`, each file atomically. Wrap in [`crate::fsutil::StagedDir`] for an atomic
    /// folder.
    pub fn save_primed(&self, dir: &Path) -> Result<()> {
        save_encoder(dir, &self.config, &self.encoder)?;
        if let Some(m) = &self.pe {
            m.save(dir)?;
        }
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Creates a PE module of `spec` when there is none; returns whether it did. A module of
    /// another method is an error (one module per tagger).
    pub fn ensure_pe(&mut self, spec: &PeSpec, rng: &mut SeededRng) -> Result<bool> {
        if let Some(m) = &self.pe {
            let wanted = spec.method();
            if m.name() != wanted.name() {
                return Err(ModelError::Invalid(format!(
                    "the model already carries a {} module; it cannot take a {} module as well",
                    m.name(),
                    wanted.name()
                )));
            }
            return Ok(false);
        }
        let module = PeModule::init(spec, &self.config, &self.encoder, rng, &self.device)?;
        self.pe = Some(module);
        Ok(true)
    }

    /// Creates the paper's adapter (bottleneck `dim`) when there is no PE module.
    pub fn ensure_adapter(&mut self, dim: usize, rng: &mut SeededRng) -> Result<bool> {
        self.ensure_pe(&PeSpec::adapter(dim), rng)
    }

    /// The PE module's group, when the tagger carries one.
    pub fn pe_group(&self) -> Option<ParamGroup> {
        self.pe.as_ref().map(|m| ParamGroup::Pe(m.name()))
    }

    /// The PE module read through its Vars when trainable, detached otherwise (None: no module).
    fn pe_weights<'a>(&'a self, weights: &'a Option<GroupWeights<'a>>) -> Option<PeWeights<'a>> {
        match (&self.pe, weights) {
            (Some(m), Some(w)) => Some(m.with(w.as_weights())),
            _ => None,
        }
    }

    /// Adds (or replaces) the head of `lang` with a freshly initialised one.
    pub fn add_head(&mut self, lang: &str, num_labels: usize, rng: &mut SeededRng) -> Result<()> {
        let h = new_head(self.config.hidden_size, num_labels, rng, &self.device)?;
        self.heads.insert(lang.to_string(), h);
        Ok(())
    }

    /// The groups a fine-tuning method trains for `lang`: Full = θp ∪ the PE module (when
    /// present) ∪ θh, Head = θh, a PE method = its module ∪ θh.
    pub fn groups_for(&self, method: FinetuneMethod, lang: &str) -> Vec<ParamGroup> {
        let head = ParamGroup::Head(lang.to_string());
        match method {
            FinetuneMethod::Full => {
                let mut g = vec![ParamGroup::Encoder];
                g.extend(self.pe_group());
                g.push(head);
                g
            }
            FinetuneMethod::Head => vec![head],
            // A PE method: its module and the head.
            _ => {
                match self.pe_group() {
                    Some(pe) => vec![pe, head],
                    // No module to train: set_trainable names the missing group.
                    None => vec![ParamGroup::Pe(method.as_str()), head],
                }
            }
        }
    }

    /// Selects the trainable groups (all others are frozen). Every group must exist.
    pub fn set_trainable(&mut self, groups: &[ParamGroup]) -> Result<()> {
        for g in groups {
            self.group(g)?;
        }
        self.trainable = groups.iter().cloned().collect();
        Ok(())
    }

    pub fn is_trainable(&self, g: &ParamGroup) -> bool {
        self.trainable.contains(g)
    }

    /// Whether the encoder's outputs stay constant while the trainable groups train: θp
    /// frozen, and no trainable PE module acting inside the encoder. The one answer that
    /// decides whether the encoder can be run once and cached (fine-tuning's encoder cache).
    pub fn encoder_output_is_constant(&self) -> bool {
        let pe_trained = self.pe_group().is_some_and(|g| self.trainable.contains(&g));
        pe::encoder_output_is_constant(
            self.trainable.contains(&ParamGroup::Encoder),
            self.pe.as_ref().map(|m| m.method()),
            pe_trained,
        )
    }

    /// The parameters of one group.
    pub fn group(&self, g: &ParamGroup) -> Result<&ParamSet> {
        match g {
            ParamGroup::Encoder => Ok(&self.encoder),
            ParamGroup::Pe(name) => match &self.pe {
                Some(m) if m.name() == *name => Ok(&m.params),
                Some(m) => Err(ModelError::Invalid(format!(
                    "the model carries a {} module, not a {name} module",
                    m.name()
                ))),
                None => Err(ModelError::Invalid(format!(
                    "the model has no {name} module"
                ))),
            },
            ParamGroup::Head(l) => self.heads.get(l).ok_or_else(|| {
                ModelError::Invalid(format!("the model has no head for language '{l}'"))
            }),
        }
    }

    /// The trainable Vars with group-prefixed names (`enc.…`, `adapter.…`, `head.<lang>.…`),
    /// sharing storage with the model: what the optimiser updates.
    pub fn trainable_vars(&self) -> Vec<(String, candle_core::Var)> {
        let mut out = Vec::new();
        for g in &self.trainable {
            if let Ok(p) = self.group(g) {
                out.extend(p.named_vars_with_prefix(&g.prefix()));
            }
        }
        out
    }

    /// The Vars of `groups` with group-prefixed names, whether trainable or not (what an
    /// optimiser over exactly those groups updates, e.g. priming's θp and θa).
    pub fn vars_of(&self, groups: &[ParamGroup]) -> Result<Vec<(String, candle_core::Var)>> {
        let mut out = Vec::new();
        for g in groups {
            out.extend(self.group(g)?.named_vars_with_prefix(&g.prefix()));
        }
        Ok(out)
    }

    /// θp and the PE module (an error without one): the groups priming's outer step updates.
    pub fn encoder_and_pe_groups(&self) -> Result<Vec<ParamGroup>> {
        let pe = self.pe_group().ok_or_else(|| {
            ModelError::Invalid("the model has no parameter-efficient module".into())
        })?;
        Ok(vec![ParamGroup::Encoder, pe])
    }

    /// Number of trainable scalars.
    pub fn trainable_params(&self) -> usize {
        self.trainable
            .iter()
            .filter_map(|g| self.group(g).ok())
            .map(|p| p.num_params())
            .sum()
    }

    /// Number of scalars in θp, the PE module (if any) and the heads of `langs` (the paper's
    /// "total" counts one head).
    pub fn total_params(&self, langs: &[&str]) -> usize {
        self.encoder.num_params()
            + self.pe.as_ref().map_or(0, |m| m.params.num_params())
            + langs
                .iter()
                .filter_map(|l| self.heads.get(*l))
                .map(|h| h.num_params())
                .sum::<usize>()
    }

    /// A group's weights for a forward: the Vars when trainable, detached tensors otherwise.
    fn weights_of(&self, g: &ParamGroup) -> Result<GroupWeights<'_>> {
        let p = self.group(g)?;
        Ok(if self.trainable.contains(g) {
            GroupWeights::Vars(p)
        } else {
            GroupWeights::Detached(p.detached_tensors())
        })
    }

    /// The PE module's weights for a forward (None without a module).
    fn pe_group_weights(&self) -> Result<Option<GroupWeights<'_>>> {
        self.pe_group().map(|g| self.weights_of(&g)).transpose()
    }

    /// Encoder outputs `[B, T, H]`, with the PE module's part inside the encoder (tracked only
    /// where θp or such a module is trainable). `dropout`: see [`crate::model::encode`].
    pub fn encode(
        &self,
        inputs: &EncoderInputs<'_>,
        dropout: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        let enc = self.weights_of(&ParamGroup::Encoder)?;
        let pe_w = self.pe_group_weights()?;
        encoder_output(
            &self.config,
            enc.as_weights(),
            self.pe_weights(&pe_w),
            inputs,
            dropout,
        )
    }

    /// The encoder's current weights fixed for one inference pass (evaluation mode,
    /// graph-free, faster on the CPU than [`Self::encode`]) — with the PE module's part inside
    /// the encoder, if any, frozen in: see [`FrozenEncoder`], and make a new one after the
    /// weights change.
    pub fn frozen_encoder(&self) -> Result<FrozenEncoder<'_>> {
        let pe = self
            .pe
            .as_ref()
            .map(|m| (m.method_arc(), m.params.detached_tensors()));
        freeze_encoder(&self.config, self.encoder.detached_tensors(), pe)
    }

    /// Logits from (possibly cached) encoder outputs through the PE module's after-encoder
    /// part (if any) and θh of `lang`.
    pub fn logits_from_hidden(&self, hidden: &Tensor, lang: &str) -> Result<Tensor> {
        let head = self.weights_of(&ParamGroup::Head(lang.to_string()))?;
        let pe_w = self.pe_group_weights()?;
        logits_from_hidden(hidden, self.pe_weights(&pe_w), head.as_weights())
    }

    /// Logits `[B, T, num_labels]` for `lang`.
    pub fn logits(
        &self,
        inputs: &EncoderInputs<'_>,
        lang: &str,
        dropout: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        let hidden = self.encode(inputs, dropout)?;
        self.logits_from_hidden(&hidden, lang)
    }

    /// Mean cross-entropy over labels ≠ −100 (`labels`: `[B, T]` i64).
    pub fn loss(
        &self,
        inputs: &EncoderInputs<'_>,
        labels: &Tensor,
        lang: &str,
        dropout: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        masked_cross_entropy(&self.logits(inputs, lang, dropout)?, labels)
    }
}

enum GroupWeights<'a> {
    Vars(&'a ParamSet),
    Detached(TensorSet),
}

impl GroupWeights<'_> {
    fn as_weights(&self) -> &dyn Weights {
        match self {
            GroupWeights::Vars(p) => *p,
            GroupWeights::Detached(t) => t,
        }
    }
}

/// A tiny random tagger for unit tests (vocabulary 40, H16, 2 layers, 32 positions): the given
/// dropout, an adapter of dimension 8 and a 7-label head per language; nothing trainable.
#[cfg(test)]
pub(crate) fn tiny_test_tagger(dropout: f64, langs: &[&str]) -> Tagger {
    let mut cfg = BertConfig::new(40, 16, 2, 2, 32).with_dropout(dropout);
    cfg.max_position_embeddings = 32;
    let enc = crate::model::init::random_encoder(&cfg, 4, &Device::Cpu)
        .unwrap()
        .to_params()
        .unwrap();
    let mut t = Tagger::new(cfg, enc, Device::Cpu);
    let mut rng = SeededRng::new(1);
    t.ensure_adapter(8, &mut rng).unwrap();
    for lang in langs {
        t.add_head(lang, DEFAULT_NUM_LABELS, &mut rng).unwrap();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn tiny_tagger() -> Tagger {
        tiny_test_tagger(0.1, &["en", "sw"])
    }

    fn batch(d: &Device) -> (Tensor, Tensor, Tensor, Tensor) {
        let ids = Tensor::new(&[[1u32, 5, 7, 11, 2, 0], [1, 9, 13, 2, 0, 0]], d).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], d).unwrap();
        let tt = Tensor::zeros((2, 6), DType::U32, d).unwrap();
        let labels = Tensor::new(
            &[
                [-100i64, 1, 2, 0, -100, -100],
                [-100, 5, 6, -100, -100, -100],
            ],
            d,
        )
        .unwrap();
        (ids, mask, tt, labels)
    }

    /// Every trainable tensor gets a non-zero gradient, every frozen one none: fails if an op
    /// without a backward (e.g. candle's fused LayerNorm) cuts the graph. Checked with the CPU
    /// kernels and on the device-generic path that CUDA runs.
    #[test]
    fn trainable_tensors_and_only_they_receive_gradients() {
        let (ids, mask, tt, labels) = batch(&Device::Cpu);
        let inputs = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: Some(&tt),
        };
        let all_layers = PeSpec::Adapter {
            dim: 8,
            layers: pe::AdapterLayers::All,
        };
        let lora = PeSpec::Lora {
            r: 2,
            alpha: 4.0,
            targets: vec![
                pe::LoraTarget::Query,
                pe::LoraTarget::Value,
                pe::LoraTarget::Intermediate,
            ],
            dropout: 0.0,
        };
        // Every PE method with the fine-tuning methods that can run with its module present.
        // (Full FT beside a BitFit module is left out: θp's own biases are read in no forward
        // there, so they get no gradient by design.)
        let cases = [
            (PeSpec::adapter(8), FinetuneMethod::Full),
            (PeSpec::adapter(8), FinetuneMethod::Head),
            (PeSpec::adapter(8), FinetuneMethod::Adapter),
            (PeSpec::BitFit, FinetuneMethod::Head),
            (PeSpec::BitFit, FinetuneMethod::Bitfit),
            (all_layers.clone(), FinetuneMethod::Full),
            (all_layers.clone(), FinetuneMethod::Adapter),
            (lora.clone(), FinetuneMethod::Full),
            (lora.clone(), FinetuneMethod::Head),
            (lora.clone(), FinetuneMethod::Lora),
        ];
        for (composite, (spec, method)) in [false, true]
            .into_iter()
            .flat_map(|c| cases.clone().map(|case| (c, case)))
        {
            let _composite = composite.then(crate::model::dispatch::composite_only);
            let label = format!(
                "{method} with {spec:?}{}",
                if composite { " (composite)" } else { "" }
            );
            let mut t = tiny_tagger();
            t.pe = None;
            t.ensure_pe(&spec, &mut SeededRng::new(1)).unwrap();
            // LoRA's B starts at 0, which would leave A without gradient: move it.
            for (n, v) in t.pe.as_ref().unwrap().params.iter() {
                if n.ends_with("lora_B") {
                    let b = SeededRng::new(2).normal_tensor(v.dims(), 0.1, &Device::Cpu);
                    v.set(&b.unwrap()).unwrap();
                }
            }
            assert!(
                t.encoder_output_is_constant(),
                "{label}: nothing trains yet"
            );
            let groups = t.groups_for(method, "en");
            t.set_trainable(&groups).unwrap();
            let inside = spec.method().acts_inside_encoder() && method != FinetuneMethod::Head;
            assert_eq!(
                t.encoder_output_is_constant(),
                method != FinetuneMethod::Full && !inside,
                "{label}: the cache decision"
            );
            let mut rng = SeededRng::new(3);
            let loss = t.loss(&inputs, &labels, "en", Some(&mut rng)).unwrap();
            let grads = crate::model::backward(&loss).unwrap();
            let trained = t.trainable_vars();
            assert_eq!(
                trained.iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
                t.trainable_params()
            );
            for (n, v) in &trained {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{label}: {n} has no gradient"));
                let s = g
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(s > 0.0, "{label}: {n} has an all-zero gradient");
            }
            let all = [
                t.encoder.named_vars_with_prefix("enc."),
                t.pe.as_ref()
                    .unwrap()
                    .params
                    .named_vars_with_prefix(&t.pe_group().unwrap().prefix()),
                t.heads["en"].named_vars_with_prefix("head.en."),
                t.heads["sw"].named_vars_with_prefix("head.sw."),
            ]
            .concat();
            let n_frozen = all
                .iter()
                .filter(|(n, _)| !trained.iter().any(|(m, _)| m == n))
                .inspect(|(n, v)| {
                    assert!(
                        grads.get(v.as_tensor()).is_none(),
                        "{label}: frozen {n} got a gradient"
                    )
                })
                .count();
            assert_eq!(n_frozen + trained.len(), all.len());
            assert!(n_frozen > 0);
        }
    }

    /// Mixed precision: under bf16 every matrix product runs in bf16 on the device-generic
    /// path (the fused f32 kernels are not taken: the loss differs from both fp32 paths), the
    /// loss stays within bf16's round-off of fp32's, and every trainable (master) weight gets
    /// an f32 gradient close to its fp32 one.
    #[test]
    fn bf16_products_give_fp32_master_gradients_close_to_fp32() {
        use crate::model::dispatch::{Precision, composite_only, precision_scope};
        let (ids, mask, tt, labels) = batch(&Device::Cpu);
        let inputs = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: Some(&tt),
        };
        let lora = PeSpec::Lora {
            r: 2,
            alpha: 4.0,
            targets: vec![pe::LoraTarget::Query, pe::LoraTarget::Output],
            dropout: 0.0,
        };
        // The adapter with everything trainable, and LoRA (its merge is a product too).
        for (spec, method) in [
            (PeSpec::adapter(8), FinetuneMethod::Full),
            (lora, FinetuneMethod::Lora),
        ] {
            let mut t = tiny_test_tagger(0.0, &["en"]);
            t.pe = None;
            t.ensure_pe(&spec, &mut SeededRng::new(1)).unwrap();
            for (n, v) in t.pe.as_ref().unwrap().params.iter() {
                if n.ends_with("lora_B") {
                    let b = SeededRng::new(2).normal_tensor(v.dims(), 0.1, &Device::Cpu);
                    v.set(&b.unwrap()).unwrap();
                }
            }
            let groups = t.groups_for(method, "en");
            t.set_trainable(&groups).unwrap();
            let run = || {
                let loss = t.loss(&inputs, &labels, "en", None).unwrap();
                let grads = crate::model::backward(&loss).unwrap();
                (loss.to_scalar::<f32>().unwrap(), grads)
            };
            let (fused, _) = run();
            let (fp32, fp32_grads) = {
                let _composite = composite_only();
                run()
            };
            let (bf16, bf16_grads) = {
                let _bf16 = precision_scope(Precision::Bf16, &Device::Cpu);
                run()
            };
            let label = format!("{method} with {spec:?}");
            eprintln!("{label}: loss fp32 {fp32} (fused {fused}), bf16 {bf16}");
            assert!(
                bf16 != fp32 && bf16 != fused,
                "{label}: bf16 gave fp32's loss {bf16}: its products did not run in bf16"
            );
            // bf16 keeps 8 significant bits: each cast is off by at most u = 2^-9 ≈ 2e-3
            // relative, and errors of a product's terms partly cancel. Bounds: 5u for the loss
            // (measured: 8e-5), 15u for gradients, which pass through twice the products
            // (measured: at most 6.5e-3).
            let rel = ((bf16 - fp32) / fp32).abs();
            assert!(
                rel < 1e-2,
                "{label}: bf16 loss {bf16} vs fp32 {fp32} ({rel:e})"
            );
            let norm = |x: &Tensor| {
                x.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .sqrt()
            };
            let trained = t.trainable_vars();
            // Tensors whose gradient is zero in exact arithmetic (the key bias shifts all of a
            // query's scores alike, which softmax ignores) hold only round-off: errors are
            // measured against the largest gradient's norm where a tensor's own is below 1%.
            let largest = trained
                .iter()
                .map(|(_, v)| norm(fp32_grads.get(v.as_tensor()).unwrap()))
                .fold(0f32, f32::max);
            for (n, v) in &trained {
                let g = bf16_grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{label}: {n} has no gradient under bf16"));
                let want = fp32_grads.get(v.as_tensor()).unwrap();
                assert_eq!(g.dtype(), DType::F32, "{label}: {n}'s gradient");
                assert_eq!(g.dims(), want.dims(), "{label}: {n}'s gradient");
                let err = norm(&(g - want).unwrap()) / norm(want).max(1e-2 * largest);
                assert!(
                    err < 3e-2,
                    "{label}: {n}'s bf16 gradient is {err:e} off fp32's"
                );
            }
        }
    }

    #[test]
    fn gradient_matches_finite_difference() {
        // d loss / d (one encoder weight), numerically, through every layer type.
        let (ids, mask, tt, labels) = batch(&Device::Cpu);
        let inputs = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: Some(&tt),
        };
        let mut t = tiny_tagger();
        t.config = t.config.with_dropout(0.0);
        let groups = t.groups_for(FinetuneMethod::Full, "en");
        t.set_trainable(&groups).unwrap();
        let name = "encoder.layer.0.attention.self.query.weight";
        let var = t.encoder.get(name).unwrap().clone();
        let loss = t.loss(&inputs, &labels, "en", None).unwrap();
        let g = crate::model::backward(&loss)
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let base = var.as_detached_tensor().copy().unwrap();
        let h = 1e-2f64;
        for &(i, j) in &[(0usize, 0usize), (3, 5), (7, 2)] {
            let f = |delta: f64| {
                let mut v = base.to_vec2::<f32>().unwrap();
                v[i][j] += delta as f32;
                var.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
                t.loss(&inputs, &labels, "en", None)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            };
            let num = (f(h) - f(-h)) / (2.0 * h);
            let ana = g[i][j] as f64;
            assert!(
                (num - ana).abs() < 2e-3 * ana.abs().max(1e-2),
                "[{i},{j}] numeric {num} vs analytic {ana}"
            );
        }
    }

    #[test]
    fn primed_checkpoint_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let t = tiny_tagger();
        t.save_primed(dir.path()).unwrap();
        let back = Tagger::load_primed(dir.path(), &Device::Cpu).unwrap();
        let a = &back.pe.as_ref().unwrap().params;
        assert_eq!(back.pe.as_ref().unwrap().name(), "adapter");
        assert_eq!(a.get("down.weight").unwrap().dims(), &[8, 16]);
        assert_eq!(
            a.get("up.weight").unwrap().to_vec2::<f32>().unwrap(),
            t.pe.as_ref()
                .unwrap()
                .params
                .get("up.weight")
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        assert!(back.heads.is_empty());
        std::fs::remove_file(dir.path().join(pe::adapter::FILE)).unwrap();
        let err = Tagger::load_primed(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("adapter.safetensors"), "{err}");
        let mut t2 = Tagger::from_pretrained(dir.path(), &Device::Cpu).unwrap();
        assert!(t2.pe.is_none());
        assert!(t2.set_trainable(&[ParamGroup::Pe("adapter")]).is_err());
        let err = t2
            .ensure_pe(&PeSpec::adapter(4), &mut SeededRng::new(1))
            .and_then(|_| t2.ensure_pe(&PeSpec::adapter(8), &mut SeededRng::new(1)));
        assert!(!err.unwrap(), "a module of the same method is kept");
    }

    /// BitFit's module replaces θp's biases in every forward: frozen (head tuning over a primed
    /// BitFit module) it is part of the frozen encoder, so the encoder cache sees it; a change
    /// to a module bias changes the output, a change to θp's same bias does not.
    #[test]
    fn a_frozen_bitfit_module_is_part_of_the_frozen_encoder() {
        let (ids, mask, tt, _) = batch(&Device::Cpu);
        let inputs = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: Some(&tt),
        };
        let mut t = tiny_tagger();
        t.pe = None;
        t.ensure_pe(&PeSpec::BitFit, &mut SeededRng::new(1))
            .unwrap();
        let name = "encoder.layer.1.output.dense.bias";
        let plain = t.encode(&inputs, None).unwrap();
        // Not a constant: the layer norm after the bias would cancel a uniform shift.
        let bump = |v: &candle_core::Var| {
            let n = v.elem_count();
            let ramp = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
            v.set(&(v.as_tensor() + (ramp * 0.1).unwrap()).unwrap())
                .unwrap();
        };
        bump(t.encoder.get(name).unwrap());
        let after_theta_p = t.encode(&inputs, None).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(diff(&plain, &after_theta_p), 0.0, "θp's bias is overridden");
        bump(t.pe.as_ref().unwrap().params.get(name).unwrap());
        let moved = t.encode(&inputs, None).unwrap();
        assert!(diff(&plain, &moved) > 1e-3, "the module's bias is read");
        let frozen = t.frozen_encoder().unwrap().encode(&inputs).unwrap();
        assert!(
            diff(&frozen, &moved) < 1e-5,
            "the frozen encoder reads it too"
        );
        let head = t.groups_for(FinetuneMethod::Head, "en");
        t.set_trainable(&head).unwrap();
        assert!(t.encoder_output_is_constant());
    }

    #[test]
    fn a_primed_bitfit_checkpoint_roundtrips_and_refuses_a_second_method() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tiny_tagger();
        t.pe = None;
        t.ensure_pe(&PeSpec::BitFit, &mut SeededRng::new(1))
            .unwrap();
        let name = "embeddings.LayerNorm.bias";
        let m = t.pe.as_ref().unwrap();
        let v = m.params.get(name).unwrap();
        v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
        t.save_primed(dir.path()).unwrap();
        assert!(dir.path().join(pe::bitfit::FILE).exists());
        let mut back = Tagger::load_primed(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.pe.as_ref().unwrap().name(), "bitfit");
        let got = &back.pe.as_ref().unwrap().params;
        let want = &t.pe.as_ref().unwrap().params;
        assert_eq!(got.len(), want.len());
        let flat = |v: &candle_core::Var| v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (n, v) in want.iter() {
            assert_eq!(flat(got.get(n).unwrap()), flat(v), "{n}");
        }
        let err = back
            .ensure_pe(&PeSpec::adapter(4), &mut SeededRng::new(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already carries a bitfit module"), "{err}");
        // Two modules' files in one folder are refused, naming both.
        t.pe = None;
        t.ensure_adapter(4, &mut SeededRng::new(1)).unwrap();
        t.save_primed(dir.path()).unwrap();
        let err = Tagger::load_primed(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("adapter.safetensors") && err.contains("bitfit.safetensors"),
            "{err}"
        );
    }
}
