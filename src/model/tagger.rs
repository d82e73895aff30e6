//! The tagger: encoder f (θp) → optional bottleneck adapter g (θa) → one linear head h per
//! language (θh), with explicit parameter groups.

use super::bert::{encode, load_encoder, save_encoder, EncoderInputs};
use super::config::BertConfig;
use super::error::{ModelError, Result};
use super::ops::{linear, masked_cross_entropy};
use super::params::{ParamSet, TensorSet, Weights};
use crate::config::FinetuneMethod;
use crate::rng::SeededRng;
use candle_core::{Device, Tensor, Var};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// File holding θa inside a primed checkpoint folder.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// Bottleneck size of a new adapter (the paper's 64).
pub const DEFAULT_ADAPTER_DIM: usize = 64;
/// WikiAnn's label set size (O, B/I-PER, B/I-ORG, B/I-LOC).
pub const DEFAULT_NUM_LABELS: usize = 7;
/// Standard deviation of new adapter and head weights.
pub const INIT_STD: f32 = 0.02;

/// Names and shapes of θa (Linear layout `[out, in]`).
pub fn adapter_param_shapes(hidden: usize, dim: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        ("down.weight".into(), vec![dim, hidden]),
        ("down.bias".into(), vec![dim]),
        ("up.weight".into(), vec![hidden, dim]),
        ("up.bias".into(), vec![hidden]),
    ]
}

/// Names and shapes of one head θh.
pub fn head_param_shapes(hidden: usize, num_labels: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        ("weight".into(), vec![num_labels, hidden]),
        ("bias".into(), vec![num_labels]),
    ]
}

/// The adapter `x + up(relu(down(x)))`.
pub fn adapter_forward(x: &Tensor, a: &dyn Weights) -> Result<Tensor> {
    let d = linear(x, a.weight("down.weight")?, Some(a.weight("down.bias")?))?.relu()?;
    let u = linear(&d, a.weight("up.weight")?, Some(a.weight("up.bias")?))?;
    Ok((x + u)?)
}

/// The head: logits `[..., num_labels]`.
pub fn head_forward(z: &Tensor, h: &dyn Weights) -> Result<Tensor> {
    linear(z, h.weight("weight")?, Some(h.weight("bias")?))
}

/// Logits from encoder outputs: `h(g(hidden))`, or `h(hidden)` without an adapter.
pub fn logits_from_hidden(hidden: &Tensor, adapter: Option<&dyn Weights>, head: &dyn Weights) -> Result<Tensor> {
    match adapter {
        Some(a) => head_forward(&adapter_forward(hidden, a)?, head),
        None => head_forward(hidden, head),
    }
}

/// Full forward `h(g(f(x)))` over explicit weight sets (trainable, fast or detached).
pub fn tagger_logits(
    cfg: &BertConfig,
    enc: &dyn Weights,
    adapter: Option<&dyn Weights>,
    head: &dyn Weights,
    inputs: &EncoderInputs<'_>,
    dropout: Option<&mut SeededRng>,
) -> Result<Tensor> {
    let hidden = encode(cfg, enc, inputs, dropout)?;
    logits_from_hidden(&hidden, adapter, head)
}

fn new_linear_params(names: &[(String, Vec<usize>)], rng: &mut SeededRng, device: &Device) -> Result<ParamSet> {
    // Weights in the order listed (down before up; a head's weight before its bias) from one
    // stream, biases zero: same seed, same parameters.
    let mut out = ParamSet::new();
    for (n, shape) in names {
        let t = if n.ends_with("bias") {
            Tensor::zeros(shape.as_slice(), candle_core::DType::F32, device)?
        } else {
            rng.normal_tensor(shape, INIT_STD, device)?
        };
        out.insert(n.clone(), Var::from_tensor(&t)?)?;
    }
    Ok(out)
}

/// A new adapter: weights N(0, 0.02²) from `rng` (down, then up), biases 0.
pub fn new_adapter(hidden: usize, dim: usize, rng: &mut SeededRng, device: &Device) -> Result<ParamSet> {
    new_linear_params(&adapter_param_shapes(hidden, dim), rng, device)
}

/// A new head: weight N(0, 0.02²) from `rng`, bias 0.
pub fn new_head(hidden: usize, num_labels: usize, rng: &mut SeededRng, device: &Device) -> Result<ParamSet> {
    new_linear_params(&head_param_shapes(hidden, num_labels), rng, device)
}

/// Loads θa from an adapter file; the bottleneck size is read from `down.weight`.
pub fn load_adapter(path: &Path, hidden: usize, device: &Device) -> Result<ParamSet> {
    let raw = super::params::read_safetensors(path, device)?;
    let down = raw.get("down.weight").ok_or_else(|| ModelError::MissingTensor {
        path: path.to_path_buf(),
        name: "down.weight".into(),
        expected: vec![0, hidden],
    })?;
    let dim = down.dim(0)?;
    ParamSet::load_safetensors(path, &adapter_param_shapes(hidden, dim), device)
}

/// One trainable group of parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamGroup {
    /// θp.
    Encoder,
    /// θa.
    Adapter,
    /// θh of one language.
    Head(String),
}

impl ParamGroup {
    /// The prefix of this group's names in [`Tagger::trainable_vars`].
    pub fn prefix(&self) -> String {
        match self {
            ParamGroup::Encoder => "enc.".into(),
            ParamGroup::Adapter => "adapter.".into(),
            ParamGroup::Head(l) => format!("head.{l}."),
        }
    }
}

/// θp, optional θa and per-language θh, and which groups are being trained.
///
/// Forwards run frozen groups on detached tensors, so no autograd graph (and no backward
/// work) is spent on them, and only trainable Vars receive gradients.
#[derive(Debug, Clone)]
pub struct Tagger {
    pub config: BertConfig,
    pub encoder: ParamSet,
    pub adapter: Option<ParamSet>,
    pub heads: BTreeMap<String, ParamSet>,
    trainable: BTreeSet<ParamGroup>,
    device: Device,
}

impl Tagger {
    /// A tagger from an encoder, no adapter, no heads, nothing trainable.
    pub fn new(config: BertConfig, encoder: ParamSet, device: Device) -> Self {
        Self {
            config,
            encoder,
            adapter: None,
            heads: BTreeMap::new(),
            trainable: BTreeSet::new(),
            device,
        }
    }

    /// Loads a Hugging Face BERT folder; when it also holds `adapter.safetensors` (a primed
    /// checkpoint) θa is loaded too.
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, enc) = load_encoder(dir, device)?;
        let mut t = Self::new(cfg, enc, device.clone());
        let ap = dir.join(ADAPTER_FILE);
        if ap.exists() {
            t.adapter = Some(load_adapter(&ap, t.config.hidden_size, device)?);
        }
        Ok(t)
    }

    /// Loads a primed checkpoint folder (HF folder + `adapter.safetensors`, which must exist).
    pub fn load_primed(dir: &Path, device: &Device) -> Result<Self> {
        let ap = dir.join(ADAPTER_FILE);
        if !ap.exists() {
            return Err(ModelError::Io {
                path: ap,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "a primed checkpoint needs adapter.safetensors next to model.safetensors",
                ),
            });
        }
        Self::from_pretrained(dir, device)
    }

    /// Writes θp (config.json, model.safetensors) and θa (adapter.safetensors, when present)
    /// into `dir`, each file atomically. Wrap in [`crate::fsutil::StagedDir`] for an atomic
    /// folder.
    pub fn save_primed(&self, dir: &Path) -> Result<()> {
        save_encoder(dir, &self.config, &self.encoder)?;
        if let Some(a) = &self.adapter {
            a.save_safetensors(&dir.join(ADAPTER_FILE))?;
        }
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Creates an adapter of bottleneck `dim` when there is none; returns whether it did.
    pub fn ensure_adapter(&mut self, dim: usize, rng: &mut SeededRng) -> Result<bool> {
        if self.adapter.is_some() {
            return Ok(false);
        }
        self.adapter = Some(new_adapter(self.config.hidden_size, dim, rng, &self.device)?);
        Ok(true)
    }

    /// Adds (or replaces) the head of `lang` with a freshly initialised one.
    pub fn add_head(&mut self, lang: &str, num_labels: usize, rng: &mut SeededRng) -> Result<()> {
        let h = new_head(self.config.hidden_size, num_labels, rng, &self.device)?;
        self.heads.insert(lang.to_string(), h);
        Ok(())
    }

    /// The groups a fine-tuning method trains for `lang`: Full = θp ∪ θa (when present) ∪ θh,
    /// Head = θh, Adapter = θa ∪ θh.
    pub fn groups_for(&self, method: FinetuneMethod, lang: &str) -> Vec<ParamGroup> {
        let head = ParamGroup::Head(lang.to_string());
        match method {
            FinetuneMethod::Full => {
                let mut g = vec![ParamGroup::Encoder];
                if self.adapter.is_some() {
                    g.push(ParamGroup::Adapter);
                }
                g.push(head);
                g
            }
            FinetuneMethod::Head => vec![head],
            FinetuneMethod::Adapter => vec![ParamGroup::Adapter, head],
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

    /// The parameters of one group.
    pub fn group(&self, g: &ParamGroup) -> Result<&ParamSet> {
        match g {
            ParamGroup::Encoder => Ok(&self.encoder),
            ParamGroup::Adapter => self
                .adapter
                .as_ref()
                .ok_or_else(|| ModelError::Invalid("the model has no adapter".into())),
            ParamGroup::Head(l) => self
                .heads
                .get(l)
                .ok_or_else(|| ModelError::Invalid(format!("the model has no head for language '{l}'"))),
        }
    }

    /// The trainable Vars with group-prefixed names (`enc.…`, `adapter.…`, `head.<lang>.…`),
    /// sharing storage with the model: what the optimiser updates.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for g in &self.trainable {
            if let Ok(p) = self.group(g) {
                out.extend(p.named_vars_with_prefix(&g.prefix()));
            }
        }
        out
    }

    /// Number of trainable scalars.
    pub fn trainable_params(&self) -> usize {
        self.trainable
            .iter()
            .filter_map(|g| self.group(g).ok())
            .map(|p| p.num_params())
            .sum()
    }

    /// Number of scalars in θp, θa (if any) and the heads of `langs` (the paper's "total"
    /// counts one head).
    pub fn total_params(&self, langs: &[&str]) -> usize {
        self.encoder.num_params()
            + self.adapter.as_ref().map_or(0, |a| a.num_params())
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

    /// Encoder outputs `[B, T, H]` (tracked only when θp is trainable). `dropout`: see
    /// [`encode`].
    pub fn encode(&self, inputs: &EncoderInputs<'_>, dropout: Option<&mut SeededRng>) -> Result<Tensor> {
        let enc = self.weights_of(&ParamGroup::Encoder)?;
        encode(&self.config, enc.as_weights(), inputs, dropout)
    }

    /// Logits from (possibly cached) encoder outputs through θa (if present) and θh of `lang`.
    pub fn logits_from_hidden(&self, hidden: &Tensor, lang: &str) -> Result<Tensor> {
        let head = self.weights_of(&ParamGroup::Head(lang.to_string()))?;
        match &self.adapter {
            Some(_) => {
                let a = self.weights_of(&ParamGroup::Adapter)?;
                logits_from_hidden(hidden, Some(a.as_weights()), head.as_weights())
            }
            None => logits_from_hidden(hidden, None, head.as_weights()),
        }
    }

    /// Logits `[B, T, num_labels]` for `lang`.
    pub fn logits(&self, inputs: &EncoderInputs<'_>, lang: &str, dropout: Option<&mut SeededRng>) -> Result<Tensor> {
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
