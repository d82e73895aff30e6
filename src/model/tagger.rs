//! The tagger: encoder f (θp) → optional bottleneck adapter g (θa) → one linear head h per
//! language (θh), with explicit parameter groups.

use super::bert::{EncoderInputs, FrozenEncoder, encode, load_encoder, save_encoder};
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
pub fn logits_from_hidden(
    hidden: &Tensor,
    adapter: Option<&dyn Weights>,
    head: &dyn Weights,
) -> Result<Tensor> {
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

fn new_linear_params(
    names: &[(String, Vec<usize>)],
    rng: &mut SeededRng,
    device: &Device,
) -> Result<ParamSet> {
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
pub fn new_adapter(
    hidden: usize,
    dim: usize,
    rng: &mut SeededRng,
    device: &Device,
) -> Result<ParamSet> {
    new_linear_params(&adapter_param_shapes(hidden, dim), rng, device)
}

/// A new head: weight N(0, 0.02²) from `rng`, bias 0.
pub fn new_head(
    hidden: usize,
    num_labels: usize,
    rng: &mut SeededRng,
    device: &Device,
) -> Result<ParamSet> {
    new_linear_params(&head_param_shapes(hidden, num_labels), rng, device)
}

/// Loads θa from an adapter file; the bottleneck size is read from `down.weight`.
pub fn load_adapter(path: &Path, hidden: usize, device: &Device) -> Result<ParamSet> {
    let raw = super::params::read_safetensors(path, device)?;
    let down = raw
        .get("down.weight")
        .ok_or_else(|| ModelError::MissingTensor {
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
        self.adapter = Some(new_adapter(
            self.config.hidden_size,
            dim,
            rng,
            &self.device,
        )?);
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
            ParamGroup::Head(l) => self.heads.get(l).ok_or_else(|| {
                ModelError::Invalid(format!("the model has no head for language '{l}'"))
            }),
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
    pub fn encode(
        &self,
        inputs: &EncoderInputs<'_>,
        dropout: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        let enc = self.weights_of(&ParamGroup::Encoder)?;
        encode(&self.config, enc.as_weights(), inputs, dropout)
    }

    /// The encoder's current weights fixed for one inference pass (evaluation mode,
    /// graph-free, faster on the CPU than [`Self::encode`]): see [`FrozenEncoder`], and make
    /// a new one after the weights change.
    pub fn frozen_encoder(&self) -> Result<FrozenEncoder<'_>> {
        let enc = self.group(&ParamGroup::Encoder)?;
        FrozenEncoder::new(&self.config, enc.detached_tensors())
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
        for (composite, method) in [false, true].into_iter().flat_map(|c| {
            [
                FinetuneMethod::Full,
                FinetuneMethod::Head,
                FinetuneMethod::Adapter,
            ]
            .map(|m| (c, m))
        }) {
            let _composite = composite.then(crate::model::dispatch::composite_only);
            let label = format!("{method}{}", if composite { " (composite)" } else { "" });
            let mut t = tiny_tagger();
            let groups = t.groups_for(method, "en");
            t.set_trainable(&groups).unwrap();
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
                t.adapter
                    .as_ref()
                    .unwrap()
                    .named_vars_with_prefix("adapter."),
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
        let a = back.adapter.as_ref().unwrap();
        assert_eq!(a.get("down.weight").unwrap().dims(), &[8, 16]);
        assert_eq!(
            a.get("up.weight").unwrap().to_vec2::<f32>().unwrap(),
            t.adapter
                .as_ref()
                .unwrap()
                .get("up.weight")
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        assert!(back.heads.is_empty());
        std::fs::remove_file(dir.path().join(ADAPTER_FILE)).unwrap();
        let err = Tagger::load_primed(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("adapter.safetensors"), "{err}");
        let mut t2 = Tagger::from_pretrained(dir.path(), &Device::Cpu).unwrap();
        assert!(t2.adapter.is_none());
        assert!(t2.set_trainable(&[ParamGroup::Adapter]).is_err());
    }

    #[test]
    fn new_adapter_is_seeded_small_with_zero_bias() {
        let a = new_adapter(32, 64, &mut SeededRng::new(5), &Device::Cpu).unwrap();
        let b = new_adapter(32, 64, &mut SeededRng::new(5), &Device::Cpu).unwrap();
        let wa = a.get("down.weight").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(wa, b.get("down.weight").unwrap().to_vec2::<f32>().unwrap());
        let n = (64 * 32) as f32;
        let std = (wa.iter().flatten().map(|v| v * v).sum::<f32>() / n).sqrt();
        assert!((std - 0.02).abs() < 0.002, "{std}");
        assert!(
            a.get("up.bias")
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 0.0)
        );
    }
}
