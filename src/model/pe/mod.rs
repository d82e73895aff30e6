//! The seam for parameter-efficient (PE) modules: the one place a PE method is defined.
//!
//! A PE method is a value implementing [`PeMethod`]. It says which parameters it adds (names,
//! shapes, initialisation), where it acts on the forward, and under which file a primed
//! checkpoint carries it. Everything else — the tagger's parameter groups, fine-tuning, the
//! encoder cache, priming's inner loop and outer step, checkpoints — reads the method through
//! this trait and never names one.
//!
//! Where a method can act, in the order of the forward:
//! * [`PeMethod::encoder_overrides`] — encoder weights the layers read in place of θp's (a weight-space method
//!   such as LoRA's `W + s·B·A` or BitFit's trained biases);
//! * [`PeMethod::linear_branch`] — in training forwards only, a term added to some linears'
//!   outputs in activation space (LoRA with dropout on its branch's input, which no merged
//!   weight can express);
//! * [`PeMethod::after_layer`] — each layer's output (adapters in every layer);
//! * [`PeMethod::after_encoder`] — the last hidden states (the paper's one bottleneck adapter).
//!
//! A method that acts inside the encoder (the first two) changes the encoder's outputs while it
//! trains, so the encoder-output cache of head/adapter tuning and of the PE inner loop cannot be
//! used then: [`PeMethod::acts_inside_encoder`] is the one answer both consult (through
//! [`crate::model::Tagger::encoder_output_is_constant`] and the inner loop's support encoding).
//!
//! To add a method: one new file here implementing [`PeMethod`], with a `load` function for its
//! checkpoint file and its [`Registration`] (name, checkpoint file, default learning rate,
//! label); then register it — its row in [`REGISTRY`], a [`PeKind`] variant, a [`PeSpec`]
//! variant with its arm in [`PeSpec::method`], and the variants that name it in
//! configurations (`FinetuneMethod`, `config::InnerParamsChoice`, spelled as the
//! registration's name, which is how they find their [`PeKind`]); keys of its own go into
//! [`PeSettings`] and the configs.

pub mod adapter;
pub mod bitfit;
pub mod lora;

use super::config::BertConfig;
use super::error::{ModelError, Result};
use super::params::{ParamSet, TensorSet, Weights};
use crate::rng::SeededRng;
use candle_core::{DType, Device, Tensor, Var};
use std::path::Path;
use std::sync::Arc;

pub use adapter::{AdapterLayers, BottleneckAdapter};
pub use bitfit::BitFit;
pub use lora::{Lora, LoraTarget};

/// Standard deviation of new PE and head weights (biases start at 0).
pub const INIT_STD: f32 = 0.02;

/// A PE method with its settings, as a configuration names it.
#[derive(Debug, Clone, PartialEq)]
pub enum PeSpec {
    /// Bottleneck adapters of dimension `dim` after the last layer (the paper's θa) or after
    /// every layer.
    Adapter { dim: usize, layers: AdapterLayers },
    /// Every bias of the encoder.
    BitFit,
    /// LoRA of rank `r`, scale `alpha / r`, on `targets` of every layer, with dropout of
    /// probability `dropout` on the branch's input in training (0: none).
    Lora {
        r: usize,
        alpha: f64,
        targets: Vec<LoraTarget>,
        dropout: f64,
    },
}

impl PeSpec {
    /// The paper's adapter: bottleneck `dim` after the last layer.
    pub fn adapter(dim: usize) -> Self {
        PeSpec::Adapter {
            dim,
            layers: AdapterLayers::Last,
        }
    }
}

impl PeSpec {
    /// The method this spec describes.
    pub fn method(&self) -> Arc<dyn PeMethod> {
        match self {
            PeSpec::Adapter { dim, layers } => Arc::new(BottleneckAdapter {
                dim: *dim,
                layers: *layers,
            }),
            PeSpec::BitFit => Arc::new(BitFit),
            PeSpec::Lora {
                r,
                alpha,
                targets,
                dropout,
            } => Arc::new(Lora {
                r: *r,
                alpha: *alpha,
                targets: targets.clone(),
                dropout: *dropout,
            }),
        }
    }

    /// The spec as its module reads back from a checkpoint: settings that shape only training
    /// (LoRA's dropout), which no checkpoint carries since each run that trains the module
    /// sets its own, at their defaults. A primed module is compared with a run's spec in this
    /// form.
    pub fn as_checkpointed(&self) -> PeSpec {
        let mut spec = self.clone();
        if let PeSpec::Lora { dropout, .. } = &mut spec {
            *dropout = 0.0;
        }
        spec
    }
}

/// Reads a method's parameters from its file in a checkpoint folder; the file's tensors say
/// the method's settings (e.g. the adapter's dimension).
pub type LoadFn = fn(path: &Path, model: &BertConfig, device: &Device) -> Result<PeModule>;

/// A parameter-efficient method as configurations name it (`finetune.method`,
/// `prime.inner_params`); what the rest of primer knows of it is its [`Registration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeKind {
    Adapter,
    Lora,
    Bitfit,
}

/// The PE methods' settings besides `adapter_dim`: the same keys (`adapter_layers`, `lora_*`)
/// in `[finetune]` and `[prime]`, read through the configs' `pe_settings()`. A key of a
/// method the configuration does not use is an error (the range rules: `config`). The keys
/// are skipped when unset or default, so they leave the stored configurations of other
/// methods — and their run ids — unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeSettings {
    pub adapter_layers: AdapterLayers,
    pub lora_r: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub lora_targets: Option<Vec<LoraTarget>>,
}

impl PeSettings {
    /// The module of method `kind` these settings describe (its
    /// [`Registration::from_settings`]).
    pub fn spec(&self, kind: PeKind, adapter_dim: usize) -> PeSpec {
        (kind.registration().from_settings)(self, adapter_dim)
    }
}

/// What primer knows of a registered method besides its [`PeMethod`] impl, declared in the
/// method's own file.
#[derive(Debug)]
pub struct Registration {
    pub kind: PeKind,
    /// Its name in configurations, reports and parameter names (`adapter.down.weight`): the
    /// spelling of its `finetune.method` and `prime.inner_params` values.
    pub name: &'static str,
    /// The file holding its parameters inside a primed checkpoint folder.
    pub file: &'static str,
    pub load: LoadFn,
    /// The fine-tuning learning rate when none is given.
    pub default_lr: f64,
    /// Fine-tuning with it, in messages ("adapter tuning", "LoRA").
    pub tuning_label: &'static str,
    /// Its spec from a configuration's settings (and `adapter_dim`), defaults filled in.
    pub from_settings: fn(&PeSettings, usize) -> PeSpec,
}

/// Every registered method.
pub const REGISTRY: [&Registration; 3] = [
    &adapter::REGISTRATION,
    &bitfit::REGISTRATION,
    &lora::REGISTRATION,
];

impl PeKind {
    /// The method's registration.
    pub fn registration(self) -> &'static Registration {
        REGISTRY
            .iter()
            .find(|r| r.kind == self)
            .expect("every PeKind has its row in REGISTRY (checked by a test)")
    }

    /// The method's name ([`Registration::name`]).
    pub fn as_str(self) -> &'static str {
        self.registration().name
    }

    /// The method named `name` (a `finetune.method` or `prime.inner_params` spelling); None
    /// for a name no method registers (`full`, `head`).
    pub fn from_name(name: &str) -> Option<PeKind> {
        REGISTRY.iter().find(|r| r.name == name).map(|r| r.kind)
    }

    /// The method a configuration's choice names by its spelling (its clap value name, the
    /// same as its serde name): how `FinetuneMethod` and `InnerParamsChoice` find theirs.
    pub fn named_by(choice: &impl clap::ValueEnum) -> Option<PeKind> {
        choice
            .to_possible_value()
            .and_then(|v| Self::from_name(v.get_name()))
    }
}

/// What a parameter-efficient method adds to the tagger, and where it acts.
pub trait PeMethod: std::fmt::Debug + Send + Sync {
    /// The method's name in configurations, reports and parameter names (`adapter.down.weight`).
    fn name(&self) -> &'static str;

    /// The file holding its parameters inside a primed checkpoint folder.
    fn file_name(&self) -> &'static str;

    /// Names and shapes of its parameters (Linear layout `[out, in]`), in initialisation order.
    fn param_shapes(&self, model: &BertConfig) -> Vec<(String, Vec<usize>)>;

    /// New parameters for the encoder `encoder`: by default every weight N(0, [`INIT_STD`]²)
    /// drawn from `rng` in [`Self::param_shapes`] order and every bias 0, so the same seed
    /// gives the same module (a method that starts from encoder values, like BitFit's biases,
    /// reads them from `encoder`).
    fn init(
        &self,
        model: &BertConfig,
        _encoder: &dyn Weights,
        rng: &mut SeededRng,
        device: &Device,
    ) -> Result<ParamSet> {
        init_normal_weights_zero_biases(&self.param_shapes(model), rng, device)
    }

    /// Settings the checkpoint file carries in its header metadata, for the method's loader
    /// (e.g. LoRA's r and α, which no tensor shape tells). None by default.
    fn file_metadata(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Whether the encoder's outputs depend on the module's parameters. Such a method, while it
    /// trains, rules out every encoder-output cache.
    fn acts_inside_encoder(&self) -> bool {
        false
    }

    /// The encoder weights the method replaces, by their encoder names (empty: none), computed
    /// from the encoder's own (`encoder`) and the method's (`own`); the layers read these in
    /// their place ([`Overlay`]). The result keeps the graph to `own` where `own` is tracked.
    /// `training`: the forward draws dropout masks, so [`Self::linear_branch`] is in effect —
    /// a method acting there leaves out what it would merge for evaluation.
    fn encoder_overrides(
        &self,
        _model: &BertConfig,
        _encoder: &dyn Weights,
        _own: &dyn Weights,
        _training: bool,
    ) -> Result<TensorSet> {
        Ok(TensorSet::new())
    }

    /// Whether training forwards add [`Self::linear_branch`] terms. The encoder runs such
    /// forwards on its composite layer, the one that can add a term inside a layer; `false`
    /// (the default) keeps every forward on the fused layer.
    fn has_linear_branch(&self) -> bool {
        false
    }

    /// In a training forward, the term `[B, T, out]` added to the output of linear `weight`
    /// (its name in [`crate::model::layer::LAYER_PARAM_NAMES`], e.g.
    /// `attention.self.query.weight`) of layer `layer`, given the linear's input `x`
    /// `[B, T, in]`, with any dropout mask drawn from `rng` (the forward's dropout stream);
    /// None where the method does not act on that linear. Called only when
    /// [`Self::has_linear_branch`]; the result keeps the graph to `own` and `x`.
    fn linear_branch(
        &self,
        _layer: usize,
        _weight: &str,
        _x: &Tensor,
        _own: &dyn Weights,
        _rng: &mut SeededRng,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Floats per token, summed over the encoder's layers, that the [`Self::linear_branch`]
    /// terms of a training forward keep for the backward pass (0 by default, and whenever
    /// [`Self::has_linear_branch`] is false). The memory estimate adds them to the layers'
    /// own activations (`crate::cost::memory`).
    fn branch_floats_per_token(&self, _model: &BertConfig) -> u64 {
        0
    }

    /// Floats of the tensors [`Self::encoder_overrides`] makes (and a training forward keeps
    /// for the backward pass) besides the method's own parameters, summed over the layers; 0
    /// by default (a method that overrides nothing, or whose overrides are its own tensors).
    /// The memory estimate charges them once per run (`crate::cost::memory`).
    fn override_floats(&self, _model: &BertConfig, _training: bool) -> u64 {
        0
    }

    /// A layer's output `[B, T, H]` after the method acts on it (identity by default).
    fn after_layer(&self, _layer: usize, x: Tensor, _own: &dyn Weights) -> Result<Tensor> {
        Ok(x)
    }

    /// Whether [`Self::after_layer`] is the identity, so that the encoder can skip calling it
    /// and keep its row-selecting shortcut for the last layer.
    fn has_layer_hook(&self) -> bool {
        false
    }

    /// The encoder's last hidden states after the method acts on them (identity by default).
    /// Must act on each token alone: the encoder cache keeps only some tokens' rows.
    fn after_encoder(&self, hidden: &Tensor, _own: &dyn Weights) -> Result<Tensor> {
        Ok(hidden.clone())
    }
}

/// A method's parameters, read by a forward as [`Weights`]: the method and which weights it
/// reads (trainable Vars, fast copies or detached tensors).
#[derive(Clone, Copy)]
pub struct PeWeights<'a> {
    pub method: &'a dyn PeMethod,
    pub weights: &'a dyn Weights,
}

/// A PE method with its parameters: what a tagger carries as its PE group.
#[derive(Debug, Clone)]
pub struct PeModule {
    method: Arc<dyn PeMethod>,
    pub params: ParamSet,
}

impl PeModule {
    /// A module of `method` over `params`, which must have the method's names and shapes.
    pub fn new(method: Arc<dyn PeMethod>, params: ParamSet, model: &BertConfig) -> Result<Self> {
        let expected = method.param_shapes(model);
        let names_match = expected.len() == params.len()
            && expected
                .iter()
                .all(|(n, shape)| params.get(n).is_some_and(|v| v.dims() == shape.as_slice()));
        if !names_match {
            return Err(ModelError::Invalid(format!(
                "{} parameters do not match the model: expected {:?}, got {:?}",
                method.name(),
                expected,
                params
                    .iter()
                    .map(|(n, v)| (n, v.dims().to_vec()))
                    .collect::<Vec<_>>()
            )));
        }
        Ok(Self { method, params })
    }

    /// A freshly initialised module of `spec` for `encoder` (see [`PeMethod::init`]).
    pub fn init(
        spec: &PeSpec,
        model: &BertConfig,
        encoder: &dyn Weights,
        rng: &mut SeededRng,
        device: &Device,
    ) -> Result<Self> {
        let method = spec.method();
        let params = method.init(model, encoder, rng, device)?;
        Self::new(method, params, model)
    }

    pub fn method(&self) -> &dyn PeMethod {
        self.method.as_ref()
    }

    /// The method shared, for a module over other weights (fast copies) of the same method.
    pub fn method_arc(&self) -> Arc<dyn PeMethod> {
        self.method.clone()
    }

    pub fn name(&self) -> &'static str {
        self.method.name()
    }

    /// Writes the parameters to the method's file in `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.params.save_safetensors_with_metadata(
            &dir.join(self.method.file_name()),
            &self.method.file_metadata(),
        )
    }

    /// The module read through `weights` (e.g. a detached view or fast copy of its params).
    pub fn with<'a>(&'a self, weights: &'a dyn Weights) -> PeWeights<'a> {
        PeWeights {
            method: self.method.as_ref(),
            weights,
        }
    }
}

/// The PE module a checkpoint folder carries: None when it holds no registered method's file,
/// an error when it holds more than one.
pub fn load_from_dir(dir: &Path, model: &BertConfig, device: &Device) -> Result<Option<PeModule>> {
    let present: Vec<&&Registration> = REGISTRY
        .iter()
        .filter(|r| dir.join(r.file).exists())
        .collect();
    match present.as_slice() {
        [] => Ok(None),
        [r] => (r.load)(&dir.join(r.file), model, device).map(Some),
        many => Err(ModelError::Invalid(format!(
            "{}: holds the files of {} parameter-efficient modules ({}); a checkpoint carries one — \
             remove the others",
            dir.display(),
            many.len(),
            many.iter().map(|r| r.file).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Whether `dir` holds any registered method's file (what makes a folder a primed checkpoint).
pub fn dir_has_module(dir: &Path) -> bool {
    REGISTRY.iter().any(|r| dir.join(r.file).exists())
}

/// The checkpoint files of every registered method (for messages).
pub fn module_files() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.file).collect()
}

/// Parameters in the listed order: names ending in `bias` zero, every other weight
/// N(0, [`INIT_STD`]²) from one stream, so the same seed gives the same parameters.
pub fn init_normal_weights_zero_biases(
    names: &[(String, Vec<usize>)],
    rng: &mut SeededRng,
    device: &Device,
) -> Result<ParamSet> {
    let mut out = ParamSet::new();
    for (n, shape) in names {
        let t = if n.ends_with("bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, device)?
        } else {
            rng.normal_tensor(shape, INIT_STD, device)?
        };
        out.insert(n.clone(), Var::from_tensor(&t)?)?;
    }
    Ok(out)
}

/// Whether the encoder's outputs stay constant while some groups train: θp not trained, and no
/// trained PE module acting inside the encoder. The one rule that every encoder-output cache
/// follows — fine-tuning's ([`crate::model::Tagger::encoder_output_is_constant`]) and the
/// inner loop's support encoding; a method acting inside the encoder backpropagates through
/// the encoder instead.
pub fn encoder_output_is_constant(
    encoder_trained: bool,
    pe: Option<&dyn PeMethod>,
    pe_trained: bool,
) -> bool {
    let pe_inside = pe_trained && pe.is_some_and(|m| m.acts_inside_encoder());
    !(encoder_trained || pe_inside)
}

/// Encoder weights with some replaced: what the layers read under a method with
/// [`PeMethod::encoder_overrides`].
pub struct Overlay<'a> {
    pub base: &'a dyn Weights,
    pub overrides: &'a TensorSet,
}

impl Weights for Overlay<'_> {
    fn lookup(&self, name: &str) -> Option<&Tensor> {
        self.overrides.get(name).or_else(|| self.base.lookup(name))
    }
}

/// `encoder` with `overrides` put in place of the same-named tensors, as one owned set (for a
/// [`crate::model::FrozenEncoder`], which owns its weights).
pub fn merge_overrides(encoder: TensorSet, overrides: &TensorSet) -> Result<TensorSet> {
    if overrides.is_empty() {
        return Ok(encoder);
    }
    TensorSet::from_pairs(encoder.iter().map(|(n, t)| {
        let t = overrides.get(n).unwrap_or(t);
        (n.to_string(), t.clone())
    }))
}
