//! The typed settings of one run. These structs are the single source of truth shared by the
//! CLI (`primer finetune`, `primer prime`), the sweep files (a sweep's base configuration and
//! overrides deserialize into them) and the run store (the resolved struct is hashed into a
//! run's identity). Every field has a documented default, so a TOML or JSON file only names
//! what it changes; unknown fields are rejected. Every range rule is here too
//! ([`FinetuneConfig::value_errors`], [`PrimeConfig::value_errors`]): sweeps, `primer plan` and
//! the runs all ask them, so a value gets one verdict everywhere.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use crate::model::FinetuneMethod;
pub use crate::model::dispatch::Precision;
pub use crate::model::pe::{PeKind, PeSettings};

/// The settings side of [`FinetuneMethod`] (the enum itself lives in `crate::model`, which maps
/// it to parameter groups and knows nothing of configs).
impl FinetuneMethod {
    /// Learning rate used when none is given. Full fine-tuning takes BERT's usual 5e-5; the
    /// parameter-efficient methods train few, freshly initialised weights on a frozen encoder and
    /// need a much larger rate to converge within a few epochs on WikiAnn-sized data (measured
    /// on the committed Afrikaans slice with MiniLM: adapter tuning at 1e-3 reached dev F1 18 after
    /// 3 epochs on 1000 sentences, at 1e-2 dev F1 25 after 4 epochs on 400).
    /// A PE method's rate is its registration's.
    pub fn default_lr(self) -> f64 {
        match (self, self.pe_kind()) {
            (_, Some(pe)) => pe.registration().default_lr,
            (FinetuneMethod::Head, None) => 1e-2,
            _ => 5e-5,
        }
    }
}

/// `finetune.precision` / `prime.precision`: the arithmetic of the run's matrix products
/// ([`Precision`]). Master weights, gradients, AdamW's moments, layer-norm and softmax
/// statistics and the loss stay f32 under every choice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// The device's default: fp32 on the CPU, bf16 on CUDA.
    #[default]
    Auto,
    /// f32 products.
    Fp32,
    /// TF32 tensor-core products on CUDA; a CPU has none and runs fp32.
    Tf32,
    /// bf16 products with f32 accumulation; f32 master weights and optimiser state.
    Bf16,
}

impl PrecisionChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            PrecisionChoice::Auto => "auto",
            PrecisionChoice::Fp32 => "fp32",
            PrecisionChoice::Tf32 => "tf32",
            PrecisionChoice::Bf16 => "bf16",
        }
    }

    /// Whether this is the default, which configurations do not write: runs that leave it
    /// unset keep the ids they had before the key existed, and `"auto"` is the same run.
    pub fn is_auto(&self) -> bool {
        *self == PrecisionChoice::Auto
    }

    /// What runs on `device`.
    pub fn resolve(self, device: &candle_core::Device) -> Precision {
        self.resolve_for(device.is_cuda())
    }

    /// What runs on a CUDA device (`cuda`) or the CPU: `auto` is bf16 on CUDA, where bf16
    /// products run on tensor cores at several times fp32's rate, and fp32 on the CPU, where
    /// bf16 only adds casts (candle's CPU products widen bf16 to f32); `tf32` needs CUDA's
    /// tensor cores and is fp32 on the CPU. An explicit `bf16` runs on the CPU too (the
    /// device-generic path, slower), which is how it is tested without a GPU.
    pub fn resolve_for(self, cuda: bool) -> Precision {
        match self {
            PrecisionChoice::Auto if cuda => Precision::Bf16,
            PrecisionChoice::Tf32 if cuda => Precision::Tf32,
            PrecisionChoice::Auto | PrecisionChoice::Fp32 | PrecisionChoice::Tf32 => {
                Precision::Fp32
            }
            PrecisionChoice::Bf16 => Precision::Bf16,
        }
    }

    /// The record of a run on `device` (what `metrics.json` and `priming.json` keep).
    pub fn in_effect(self, device: &candle_core::Device) -> PrecisionInEffect {
        PrecisionInEffect {
            requested: self,
            effective: self.resolve(device),
        }
    }
}

/// The precision a run asked for and the one it ran with (they differ for `auto`, and for
/// `tf32` on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecisionInEffect {
    pub requested: PrecisionChoice,
    pub effective: Precision,
}

/// How a split is cut down for cheap runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Subsample {
    /// The first N sentences of the file.
    #[default]
    First,
    /// N sentences drawn without replacement (file order preserved): training sentences with
    /// [`DataConfig::train_seed`], dev and test sentences with [`DataConfig::eval_seed`].
    Seeded,
}

/// Which seed draws the training subset when `subsample = "seeded"`: `"run"` (the run's own
/// seed, so seeds of a sweep also vary the training data) or a fixed integer (every seed trains
/// on the same sentences and differs only in initialisation, dropout and batch order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TrainSeed {
    #[default]
    Run,
    Fixed(u64),
}

impl TrainSeed {
    /// The seed of the training draw of a run seeded `run_seed`.
    pub fn resolve(self, run_seed: u64) -> u64 {
        match self {
            TrainSeed::Run => run_seed,
            TrainSeed::Fixed(s) => s,
        }
    }
}

impl Serialize for TrainSeed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TrainSeed::Run => s.serialize_str("run"),
            TrainSeed::Fixed(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for TrainSeed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TrainSeed;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"run\" or a non-negative integer seed")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TrainSeed, E> {
                if v == "run" {
                    Ok(TrainSeed::Run)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TrainSeed, E> {
                Ok(TrainSeed::Fixed(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TrainSeed, E> {
                u64::try_from(v)
                    .map(TrainSeed::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Where a language's WikiAnn data lives and how much of it to use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Root holding one directory per language (`<root>/<lang>/...`), in any of the three
    /// supported layouts (auto-detected per language).
    pub root: PathBuf,
    /// Use at most this many training sentences (None: all).
    pub train_limit: Option<usize>,
    /// Use at most this many dev sentences (None: all).
    pub dev_limit: Option<usize>,
    /// Use at most this many test sentences (None: all).
    pub test_limit: Option<usize>,
    /// How limits pick sentences.
    pub subsample: Subsample,
    /// Seed of the dev and test draws under `subsample = "seeded"`. It is not the run's seed,
    /// so every seed and setting of a sweep is scored on the same sentences (a sweep checks
    /// that its fine-tuning runs agree on every language; see `primer::spec::plan`).
    pub eval_seed: u64,
    /// Seed of the training draw under `subsample = "seeded"`.
    pub train_seed: TrainSeed,
    /// Maximum sequence length in subword tokens, `[CLS]` and `[SEP]` included.
    pub max_len: usize,
    /// Reject I- tags that do not continue a chunk of the same type (strict IOB2 input).
    pub strict_iob2: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("data/wikiann"),
            train_limit: None,
            dev_limit: None,
            test_limit: None,
            subsample: Subsample::First,
            eval_seed: 0,
            train_seed: TrainSeed::Run,
            max_len: 128,
            strict_iob2: false,
        }
    }
}

impl DataConfig {
    /// The keys that decide which dev and test sentences a run is scored on, as
    /// `(key, value)` pairs: two runs on one language with equal lists score the same
    /// sentences. The eval seed counts only where it draws something.
    pub fn evaluation_keys(&self) -> Vec<(&'static str, String)> {
        let limit = |l: Option<usize>| l.map_or("all".to_string(), |n| n.to_string());
        let mut keys = vec![
            ("data.root", self.root.display().to_string()),
            ("data.dev_limit", limit(self.dev_limit)),
            ("data.test_limit", limit(self.test_limit)),
        ];
        let limited = self.dev_limit.is_some() || self.test_limit.is_some();
        if limited {
            let how = match self.subsample {
                Subsample::First => "first",
                Subsample::Seeded => "seeded",
            };
            keys.push(("data.subsample", how.to_string()));
            if self.subsample == Subsample::Seeded {
                keys.push(("data.eval_seed", self.eval_seed.to_string()));
            }
        }
        keys
    }
}

/// What fine-tuning does with the adapter of the folder it starts from (a primed checkpoint's
/// θa*; [`FinetuneConfig::primed_adapter`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum PrimedAdapter {
    /// Keep it: Full FT trains it with everything else (θp* ∪ θa* ∪ θh), adapter tuning
    /// continues from it, head tuning reads it frozen. What the paper's priming → fine-tuning
    /// pipeline does, and the default.
    #[default]
    Train,
    /// Discard it: the run starts from θp* alone, exactly as it would from a pretrained folder
    /// holding those weights. Full FT then has 1/Full FT's shape (θp ∪ θh, no adapter), head
    /// tuning reads no adapter, and adapter tuning starts from a fresh adapter (seeded as in an
    /// unprimed run), which isolates what priming did to θp from what it did to θa.
    Drop,
}

impl PrimedAdapter {
    pub fn as_str(self) -> &'static str {
        match self {
            PrimedAdapter::Train => "train",
            PrimedAdapter::Drop => "drop",
        }
    }
}

/// Settings of one downstream fine-tuning run (`primer finetune`): the unit of work that a
/// sweep schedules. One serialisable struct so that a run is fully described by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json/vocab.txt).
    pub model: PathBuf,
    /// A primed checkpoint folder to start from instead of `model` (θp*, θa*; fresh head).
    pub init: Option<PathBuf>,
    pub data: DataConfig,
    /// Target language (directory name under `data.root`).
    pub lang: String,
    pub method: FinetuneMethod,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate; None: [`FinetuneMethod::default_lr`].
    pub lr: Option<f64>,
    /// Fraction of the total steps spent in linear warm-up.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Apply weight decay to biases and LayerNorm parameters too (torch's default: yes).
    pub decay_bias_and_norm: bool,
    /// Bottleneck dimension of the adapter created when the model has none.
    pub adapter_dim: usize,
    /// `last` (the paper's one adapter after the last layer) or `all` (one after every layer).
    #[serde(skip_serializing_if = "crate::model::pe::AdapterLayers::is_last")]
    pub adapter_layers: crate::model::pe::AdapterLayers,
    /// LoRA rank r (default 8, as `peft`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_r: Option<usize>,
    /// LoRA α: the update is scaled by α/r (default 8, as `peft`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA branch's input in training, in [0, 1) (default 0, as `peft`); above
    /// 0 the branch is computed in activation space, see [`crate::model::pe::lora`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_dropout: Option<f64>,
    /// The linears LoRA adapts in every layer (default query and value, as the LoRA paper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_targets: Option<Vec<crate::model::pe::LoraTarget>>,
    /// Cache encoder outputs of train and dev when θp is frozen (head/adapter tuning; see
    /// `primer::train::cache`). The cache is encoded once without dropout, so with it the
    /// encoder runs dropout-free during head/adapter tuning (a constant encoder output per
    /// sentence); `false` runs the encoder at every training step with its dropout, as a
    /// PyTorch training loop in train mode does. Full FT always runs the encoder with dropout.
    /// `metrics.json` records the encoder dropout in effect (`training_noise`).
    pub cache_encoder: bool,
    /// What happens to the adapter the starting folder carries (a primed checkpoint's θa*,
    /// `init`); see [`PrimedAdapter`]. Without one, both values run the same.
    pub primed_adapter: PrimedAdapter,
    /// Override the dropout probabilities of config.json (None: keep them).
    pub dropout: Option<f64>,
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The arithmetic of the matrix products; see [`PrecisionChoice`].
    #[serde(skip_serializing_if = "PrecisionChoice::is_auto")]
    pub precision: PrecisionChoice,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            init: None,
            data: DataConfig::default(),
            lang: String::new(),
            method: FinetuneMethod::Adapter,
            epochs: 3,
            batch_size: 16,
            lr: None,
            warmup_ratio: 0.0,
            weight_decay: 0.01,
            decay_bias_and_norm: true,
            adapter_dim: 64,
            adapter_layers: Default::default(),
            lora_r: None,
            lora_alpha: None,
            lora_dropout: None,
            lora_targets: None,
            cache_encoder: true,
            primed_adapter: PrimedAdapter::Train,
            dropout: None,
            seed: 0,
            device: "cpu".to_string(),
            precision: PrecisionChoice::Auto,
        }
    }
}

impl FinetuneConfig {
    /// The PE methods' settings of this configuration.
    pub fn pe_settings(&self) -> PeSettings {
        PeSettings {
            adapter_layers: self.adapter_layers,
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            lora_targets: self.lora_targets.clone(),
        }
    }

    /// This configuration with the adapter's shape at its default where the run creates no
    /// adapter (full FT and head tuning keep a primed one as it is; LoRA and BitFit train their
    /// own module), so that two configurations that train identically compare equal. (The
    /// LoRA keys are refused outright under another method: [`PeSettings::check`].)
    pub fn without_unread_values(&self) -> FinetuneConfig {
        let mut c = self.clone();
        if self.pe_kind() != Some(PeKind::Adapter) {
            let default = FinetuneConfig::default();
            c.adapter_dim = default.adapter_dim;
            c.adapter_layers = default.adapter_layers;
        }
        c
    }

    /// The PE method this run trains (None for full FT and head tuning, which create none).
    pub fn pe_kind(&self) -> Option<PeKind> {
        self.method.pe_kind()
    }

    /// The parameter-efficient module this run trains (see [`Self::pe_kind`]).
    pub fn pe_spec(&self) -> Option<crate::model::PeSpec> {
        let kind = self.pe_kind()?;
        Some(self.pe_settings().spec(kind, self.adapter_dim))
    }

    /// The learning rate actually used.
    pub fn effective_lr(&self) -> f64 {
        self.lr.unwrap_or_else(|| self.method.default_lr())
    }
}

/// Which weights a priming run writes as its checkpoint ([`PrimeConfig::select`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointSelection {
    /// The weights after the last outer step.
    #[default]
    Last,
    /// The weights at the dev evaluation point with the best mean dev F1 over the sources
    /// (ties: the earliest); needs [`PrimeConfig::dev_every`] > 0.
    BestDev,
}

impl CheckpointSelection {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointSelection::Last => "last",
            CheckpointSelection::BestDev => "best-dev",
        }
    }
}

impl std::fmt::Display for CheckpointSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which priming stage runs before fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimingMethod {
    /// First-order MAML, Algorithm 1 (the inner loop is set by [`InnerLoop`]).
    Meta,
    /// FT priming: plain multi-task fine-tuning of θp ∪ θa ∪ θh on the same source data.
    Ft,
}

/// Which parameters the meta-learning inner loop updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InnerLoop {
    /// Parameter-efficient: only the fast θa and θh (the paper's method).
    Pe,
    /// Everything, θp included (the "MAML loop" ablation).
    Full,
}

/// The keys of the PE methods' settings, which a configuration leaves out when unset or default
/// (so that adding them changed no stored run's id): the sweep key space lists them beside the
/// serialised defaults' keys.
pub const PE_SETTING_KEYS: &[&str] = &[
    "adapter_layers",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
];

/// [`PrimeConfig`]'s keys left out when unset, besides [`PE_SETTING_KEYS`] and
/// [`RUN_OPTIONAL_KEYS`].
pub const PRIME_OPTIONAL_KEYS: &[&str] = &["inner_params"];

/// Keys of both configurations left out at their default (so that adding them changed no
/// stored run's id).
pub const RUN_OPTIONAL_KEYS: &[&str] = &["precision"];

/// `prime.inner_params`: what the meta-learning inner loop adapts.
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
pub enum InnerParamsChoice {
    /// The bottleneck adapter and θh (the paper's PE loop; `inner_loop = "pe"`).
    Adapter,
    /// LoRA and θh.
    Lora,
    /// The encoder's biases (BitFit) and θh.
    Bitfit,
    /// θp, the adapter and θh (the MAML loop; `inner_loop = "full"`).
    Full,
}

impl InnerParamsChoice {
    /// None or `adapter`: the paper's PE loop, unless `inner_loop` says `full`.
    pub fn means_the_default(choice: &Option<Self>) -> bool {
        matches!(choice, None | Some(InnerParamsChoice::Adapter))
    }

    /// The PE method this choice names, found by its spelling (None: `full`).
    pub fn pe_kind(self) -> Option<PeKind> {
        PeKind::named_by(&self)
    }
}

/// The range rules of the PE settings (the struct lives with the methods, which read it).
impl PeSettings {
    /// Range rules, and keys set for a method other than `kind` (None: no PE module, e.g. full
    /// FT or head tuning).
    fn check(&self, r: &mut Rules, kind: Option<PeKind>) {
        let uses = |k: PeKind| kind == Some(k);
        let foreign = |r: &mut Rules, key: &str, owner: PeKind| {
            r.fail_cross(
                key,
                format!(
                    "is a setting of the {} method, and this configuration's method is {}; \
                     remove it or use method \"{}\"",
                    owner.as_str(),
                    kind.map_or("none (no PE module)", PeKind::as_str),
                    owner.as_str()
                ),
            )
        };
        if !self.adapter_layers.is_last() && !uses(PeKind::Adapter) {
            foreign(r, "adapter_layers", PeKind::Adapter);
        }
        let lora_keys = [
            ("lora_r", self.lora_r.is_some()),
            ("lora_alpha", self.lora_alpha.is_some()),
            ("lora_dropout", self.lora_dropout.is_some()),
            ("lora_targets", self.lora_targets.is_some()),
        ];
        for (key, set) in lora_keys {
            if set && !uses(PeKind::Lora) {
                foreign(r, key, PeKind::Lora);
            }
        }
        if let Some(v) = self.lora_r {
            r.at_least_1("lora_r", v);
        }
        if let Some(v) = self.lora_alpha {
            r.positive("lora_alpha", v);
        }
        if let Some(v) = self.lora_dropout
            && !(0.0..1.0).contains(&v)
        {
            r.fail(
                "lora_dropout",
                format!(
                    "must be in [0, 1) — the probability of zeroing each input of LoRA's branch \
                     in training (0, the default, turns it off) — got {v}"
                ),
            );
        }
        if let Some(t) = &self.lora_targets {
            if t.is_empty() {
                r.fail("lora_targets", "needs at least one target".into());
            }
            let unique: std::collections::BTreeSet<_> = t.iter().collect();
            if unique.len() != t.len() {
                r.fail("lora_targets", "lists a target twice".into());
            }
        }
    }
}

/// Whether the S inner steps reuse one support batch or take S distinct ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupportMode {
    Same,
    Distinct,
}

/// How the meta-learning inner loop draws dropout masks ([`PrimeConfig::inner_dropout`]); the
/// same meaning for the PE and the full (MAML) inner loop. The query pass of the outer step
/// always runs with the model's dropout.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum InnerDropout {
    /// A fresh mask at every inner SGD step: what a PyTorch inner loop in train mode does (the
    /// default). The PE loop then encodes the support batch anew (graph-free) at every step.
    #[default]
    PerStep,
    /// One mask per support batch, reused by all S steps that read it (the PE loop encodes
    /// each support batch once; the full loop replays the batch's masks at each step).
    Shared,
    /// No dropout in the inner loop.
    Off,
}

impl InnerDropout {
    pub fn as_str(self) -> &'static str {
        match self {
            InnerDropout::PerStep => "per-step",
            InnerDropout::Shared => "shared",
            InnerDropout::Off => "off",
        }
    }
}

impl std::fmt::Display for InnerDropout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of one priming run (`primer prime`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimeConfig {
    pub model: PathBuf,
    pub data: DataConfig,
    /// Source languages; each is one task with its own head.
    pub sources: Vec<String>,
    pub method: PrimingMethod,
    pub inner_loop: InnerLoop,
    /// What the inner loop adapts, naming the PE method priming trains: a PE method
    /// (`adapter`, `lora`, `bitfit`: the PE loop over that module) or `full` (the MAML loop
    /// over θp and an adapter). None: `inner_loop` decides, with the adapter (`pe` is the same
    /// as `adapter`).
    // `adapter` is what no value means (a config where it disagrees with `inner_loop` is
    // invalid), so it is not written either: both spellings give the same run id.
    #[serde(skip_serializing_if = "InnerParamsChoice::means_the_default")]
    pub inner_params: Option<InnerParamsChoice>,
    /// S, the number of inner SGD steps.
    pub inner_steps: usize,
    /// Inner SGD learning rate (None: 0.03 for the PE loop, 1e-4 for the full loop).
    pub inner_lr: Option<f64>,
    /// Outer AdamW learning rate (linear decay over `steps`).
    pub outer_lr: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub support: SupportMode,
    /// Number of outer steps.
    pub steps: usize,
    /// Evaluate on the sources' dev sets every this many outer steps, and after the last one
    /// (0: never). At each point copies of what the inner loop adapts (θa and the source's
    /// head; θp too for the MAML loop) take its S steps on support batches drawn once from the
    /// source's training data (FT priming: no adaptation), then score `data.dev_limit` dev
    /// sentences: mean token loss and entity F1, into `curves.json`. Off by default because
    /// it is not free, and a run whose curves nobody reads should not pay for it: every point
    /// costs an inner loop and a dev pass per source — 3-12% of a 40-step MiniLM run at 4
    /// points (README, "Seeing priming"). It draws from its own random streams, so training
    /// is bit-identical with it on or off.
    pub dev_every: usize,
    /// Which weights become the checkpoint: the last ones or those of the best dev point.
    pub select: CheckpointSelection,
    /// Tasks sampled per outer step (None: all sources).
    pub tasks_per_step: Option<usize>,
    /// Sentences per support batch.
    pub support_batch_size: usize,
    /// Sentences per query batch.
    pub query_batch_size: usize,
    /// Learning rate of FT priming (the multi-task fine-tuning baseline).
    pub ft_lr: f64,
    pub adapter_dim: usize,
    /// `last` (the paper's one adapter after the last layer) or `all` (one after every layer).
    #[serde(skip_serializing_if = "crate::model::pe::AdapterLayers::is_last")]
    pub adapter_layers: crate::model::pe::AdapterLayers,
    /// LoRA rank r (default 8, as `peft`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_r: Option<usize>,
    /// LoRA α: the update is scaled by α/r (default 8, as `peft`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA branch's input in training, in [0, 1) (default 0, as `peft`); above
    /// 0 the branch is computed in activation space, see [`crate::model::pe::lora`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_dropout: Option<f64>,
    /// The linears LoRA adapts in every layer (default query and value, as the LoRA paper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_targets: Option<Vec<crate::model::pe::LoraTarget>>,
    /// Override the dropout probabilities of config.json (None: keep them).
    pub dropout: Option<f64>,
    /// Dropout masks of the meta inner loop (FT priming has none, so it ignores this); see
    /// [`InnerDropout`]. `priming.json` records the mode that ran (`off` when the model's
    /// dropout is 0).
    pub inner_dropout: InnerDropout,
    pub seed: u64,
    pub device: String,
    /// The arithmetic of the matrix products; see [`PrecisionChoice`].
    #[serde(skip_serializing_if = "PrecisionChoice::is_auto")]
    pub precision: PrecisionChoice,
}

impl Default for PrimeConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: DataConfig::default(),
            sources: vec!["en".to_string(), "es".to_string()],
            method: PrimingMethod::Meta,
            inner_loop: InnerLoop::Pe,
            inner_params: None,
            inner_steps: 5,
            inner_lr: None,
            outer_lr: 5e-5,
            weight_decay: 0.01,
            warmup_ratio: 0.0,
            support: SupportMode::Same,
            steps: 1000,
            dev_every: 0,
            select: CheckpointSelection::Last,
            tasks_per_step: None,
            support_batch_size: 16,
            query_batch_size: 16,
            ft_lr: 5e-5,
            adapter_dim: 64,
            adapter_layers: Default::default(),
            lora_r: None,
            lora_alpha: None,
            lora_dropout: None,
            lora_targets: None,
            dropout: None,
            inner_dropout: InnerDropout::PerStep,
            seed: 0,
            device: "cpu".to_string(),
            precision: PrecisionChoice::Auto,
        }
    }
}

impl PrimeConfig {
    /// The PE methods' settings of this configuration.
    pub fn pe_settings(&self) -> PeSettings {
        PeSettings {
            adapter_layers: self.adapter_layers,
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            lora_targets: self.lora_targets.clone(),
        }
    }

    /// The parameter-efficient module priming trains beside θp (and adapts in the PE inner
    /// loop).
    pub fn pe_spec(&self) -> crate::model::PeSpec {
        self.pe_settings().spec(self.pe_kind(), self.adapter_dim)
    }

    /// The PE module priming trains: `inner_params`' method, the adapter for the full loop.
    pub fn pe_kind(&self) -> PeKind {
        // The MAML loop (and no choice) carries the paper's adapter.
        self.inner_params
            .and_then(InnerParamsChoice::pe_kind)
            .unwrap_or(PeKind::Adapter)
    }

    /// What the inner loop adapts, for labels: `inner_params` as written, else `pe` / `full`.
    pub fn inner_label(&self) -> &'static str {
        match (self.inner_params, self.inner_loop) {
            (Some(InnerParamsChoice::Full), _) | (None, InnerLoop::Full) => "full",
            (Some(choice), _) => choice.pe_kind().map_or("full", PeKind::as_str),
            (None, InnerLoop::Pe) => "pe",
        }
    }

    /// The inner loop in effect: `inner_params = "full"` is the MAML loop, any PE method the
    /// PE loop; without `inner_params`, `inner_loop` says.
    pub fn effective_inner_loop(&self) -> InnerLoop {
        match self.inner_params {
            Some(InnerParamsChoice::Full) => InnerLoop::Full,
            Some(_) => InnerLoop::Pe,
            None => self.inner_loop,
        }
    }

    /// This configuration with every value its method does not read set to the default, so
    /// that two configurations that prime identically compare equal: FT priming reads
    /// `ft_lr`, not `outer_lr`, `inner_lr` or `inner_dropout`, and `inner_steps` only to size
    /// its batches like `support = "distinct"` meta priming's (S support batches and a query);
    /// meta priming does not read `ft_lr`.
    pub fn without_unread_values(&self) -> PrimeConfig {
        let default = PrimeConfig::default();
        let mut c = self.clone();
        match self.method {
            PrimingMethod::Ft => {
                c.outer_lr = default.outer_lr;
                c.inner_lr = default.inner_lr;
                c.inner_dropout = default.inner_dropout;
                if c.support == SupportMode::Same {
                    c.inner_steps = default.inner_steps;
                }
            }
            PrimingMethod::Meta => c.ft_lr = default.ft_lr,
        }
        c
    }

    /// The inner learning rate actually used (the paper: 0.03 for the PE loop; the full loop
    /// needs the lower 1e-4).
    pub fn effective_inner_lr(&self) -> f64 {
        self.inner_lr.unwrap_or(match self.effective_inner_loop() {
            InnerLoop::Pe => 0.03,
            InnerLoop::Full => 1e-4,
        })
    }
}

/// `primer run --per-device`: how many runs share one device at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerDevice {
    /// At most this many runs (at least 1) on each device.
    Fixed(usize),
    /// As many as fit the device's free memory by each run's estimate
    /// (`crate::cost::memory`), CPU runs also capped by cores (`crate::backend::local::pack`).
    Auto,
}

impl std::str::FromStr for PerDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(PerDevice::Auto);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("must be at least 1 (or auto)".to_string()),
            Ok(n) => Ok(PerDevice::Fixed(n)),
            Err(_) => Err(format!(
                "takes a number of runs (at least 1) or auto, got '{s}'"
            )),
        }
    }
}

impl std::fmt::Display for PerDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PerDevice::Fixed(n) => write!(f, "{n}"),
            PerDevice::Auto => f.write_str("auto"),
        }
    }
}

/// Timed steps of each step kind that `primer plan --estimate` calibrates on (at least 1).
pub fn check_calibration_steps(steps: usize) -> Result<(), ValueError> {
    if steps == 0 {
        return Err(ValueError {
            key: "calibration_steps".to_string(),
            problem: "must be at least 1 timed step per step kind".to_string(),
            cross_field: false,
        });
    }
    Ok(())
}

/// A configuration value outside its valid range: the dotted key, relative to the config
/// (`warmup_ratio`, `data.max_len`), and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ValueError {
    pub key: String,
    pub problem: String,
    /// The rule relates this key to another (a LoRA key under another method, `inner_params`
    /// against `inner_loop`): it cannot be judged from the key alone, so a sweep's per-key
    /// check leaves it to the resolved configuration (`primer plan`).
    pub cross_field: bool,
}

/// Collects [`ValueError`]s: every range rule of the configs is one call here, and these are
/// the only range rules — the sweep's per-key checks, `primer plan`, `primer run` and the
/// runs themselves (`primer finetune`, `primer prime`) all ask [`FinetuneConfig::value_errors`]
/// / [`PrimeConfig::value_errors`], so a value gets the same verdict everywhere.
struct Rules(Vec<ValueError>);

impl Rules {
    fn fail(&mut self, key: &str, problem: String) {
        self.0.push(ValueError {
            key: key.to_string(),
            problem,
            cross_field: false,
        });
    }

    /// A rule that relates `key` to another key (see [`ValueError::cross_field`]).
    fn fail_cross(&mut self, key: &str, problem: String) {
        self.0.push(ValueError {
            key: key.to_string(),
            problem,
            cross_field: true,
        });
    }

    fn at_least_1(&mut self, key: &str, v: usize) {
        if v == 0 {
            self.fail(key, "must be at least 1".to_string());
        }
    }

    fn positive(&mut self, key: &str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.fail(key, format!("a learning rate must be positive, got {v}"));
        }
    }

    fn non_negative(&mut self, key: &str, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            self.fail(key, format!("must be a non-negative number, got {v}"));
        }
    }

    /// In [0, 1): a fraction that cannot be all (warm-up of every step, dropping everything).
    fn fraction(&mut self, key: &str, v: f64) {
        if !(0.0..1.0).contains(&v) {
            self.fail(key, format!("must be in [0, 1), got {v}"));
        }
    }

    fn model(&mut self, key: &str, v: &std::path::Path) {
        if v.as_os_str().is_empty() {
            self.fail(key, "must name a model folder".to_string());
        }
    }

    fn data(&mut self, d: &DataConfig) {
        for (key, limit) in [
            ("data.train_limit", d.train_limit),
            ("data.dev_limit", d.dev_limit),
            ("data.test_limit", d.test_limit),
        ] {
            if let Some(n) = limit {
                self.at_least_1(key, n);
            }
        }
        if d.max_len < 3 {
            self.fail(
                "data.max_len",
                format!(
                    "must be at least 3 ([CLS], one token, [SEP]), got {}",
                    d.max_len
                ),
            );
        }
    }
}

impl FinetuneConfig {
    /// Every value outside its range (presence checks — a target language, an existing model
    /// folder — belong to the run).
    pub fn value_errors(&self) -> Vec<ValueError> {
        let mut r = Rules(Vec::new());
        r.model("model", &self.model);
        r.data(&self.data);
        r.at_least_1("epochs", self.epochs);
        r.at_least_1("batch_size", self.batch_size);
        if let Some(lr) = self.lr {
            r.positive("lr", lr);
        }
        r.fraction("warmup_ratio", self.warmup_ratio);
        r.non_negative("weight_decay", self.weight_decay);
        r.at_least_1("adapter_dim", self.adapter_dim);
        self.pe_settings().check(&mut r, self.pe_kind());
        if let Some(p) = self.dropout {
            r.fraction("dropout", p);
        }
        r.0
    }

    /// The first of [`FinetuneConfig::value_errors`].
    pub fn check_values(&self) -> Result<(), ValueError> {
        self.value_errors().into_iter().next().map_or(Ok(()), Err)
    }
}

impl PrimeConfig {
    /// Every value outside its range, cross-field rules included (`select = "best-dev"` needs
    /// `dev_every`).
    pub fn value_errors(&self) -> Vec<ValueError> {
        let mut r = Rules(Vec::new());
        r.model("model", &self.model);
        r.data(&self.data);
        if self.sources.is_empty() {
            r.fail("sources", "needs at least one source language".to_string());
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.sources {
            if !seen.insert(s) {
                r.fail("sources", format!("'{s}' is listed twice"));
            }
        }
        r.at_least_1("steps", self.steps);
        r.at_least_1("inner_steps", self.inner_steps);
        if let Some(lr) = self.inner_lr {
            r.positive("inner_lr", lr);
        }
        // Zero is allowed: priming that leaves the weights as they were is a control.
        r.non_negative("outer_lr", self.outer_lr);
        r.non_negative("ft_lr", self.ft_lr);
        r.non_negative("weight_decay", self.weight_decay);
        r.fraction("warmup_ratio", self.warmup_ratio);
        if let Some(n) = self.tasks_per_step {
            r.at_least_1("tasks_per_step", n);
            if n > self.sources.len() && !self.sources.is_empty() {
                r.fail_cross(
                    "tasks_per_step",
                    format!(
                        "is {n}, but there are {} sources to sample from ({}); set it to at \
                         most {}",
                        self.sources.len(),
                        self.sources.join(", "),
                        self.sources.len()
                    ),
                );
            }
        }
        r.at_least_1("support_batch_size", self.support_batch_size);
        r.at_least_1("query_batch_size", self.query_batch_size);
        r.at_least_1("adapter_dim", self.adapter_dim);
        self.pe_settings().check(&mut r, Some(self.pe_kind()));
        if let Some(choice) = self.inner_params {
            let full = choice == InnerParamsChoice::Full;
            if (self.inner_loop == InnerLoop::Full) != full {
                r.fail_cross(
                    "inner_params",
                    format!(
                        "{choice:?} disagrees with inner_loop = {:?}; set one of them \
                         (inner_loop = \"pe\" is inner_params = \"adapter\", \"full\" is \"full\")",
                        self.inner_loop
                    )
                    .to_lowercase(),
                );
            }
        }
        if let Some(p) = self.dropout {
            r.fraction("dropout", p);
        }
        if self.select == CheckpointSelection::BestDev && self.dev_every == 0 {
            r.fail(
                "select",
                format!(
                    "\"best-dev\" picks the checkpoint by dev F1, but dev_every = 0 turns dev \
                     evaluation off; set dev_every to a number of outer steps (e.g. {})",
                    self.steps.div_ceil(10)
                ),
            );
        }
        r.0
    }

    /// The first of [`PrimeConfig::value_errors`].
    pub fn check_values(&self) -> Result<(), ValueError> {
        self.value_errors().into_iter().next().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The noise keys default to the paper-faithful choices, read exactly the spellings their
    /// `as_str` (and the command line) use, and reject anything else at deserialisation.
    #[test]
    fn noise_keys_default_faithfully_and_reject_unknown_values() {
        let prime: PrimeConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(prime.inner_dropout, InnerDropout::PerStep);
        let finetune: FinetuneConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(finetune.primed_adapter, PrimedAdapter::Train);
        for mode in [
            InnerDropout::PerStep,
            InnerDropout::Shared,
            InnerDropout::Off,
        ] {
            let c: PrimeConfig =
                serde_json::from_value(json!({ "inner_dropout": mode.as_str() })).unwrap();
            assert_eq!(c.inner_dropout, mode);
            let flag = <InnerDropout as clap::ValueEnum>::from_str(mode.as_str(), false);
            assert_eq!(flag, Ok(mode));
        }
        for choice in [PrimedAdapter::Train, PrimedAdapter::Drop] {
            let c: FinetuneConfig =
                serde_json::from_value(json!({ "primed_adapter": choice.as_str() })).unwrap();
            assert_eq!(c.primed_adapter, choice);
            let flag = <PrimedAdapter as clap::ValueEnum>::from_str(choice.as_str(), false);
            assert_eq!(flag, Ok(choice));
        }
        for bad in ["per_step", "PerStep", "on"] {
            let r = serde_json::from_value::<PrimeConfig>(json!({ "inner_dropout": bad }));
            assert!(r.is_err(), "inner_dropout = {bad} was accepted");
        }
        let r = serde_json::from_value::<FinetuneConfig>(json!({ "primed_adapter": "keep" }));
        assert!(r.is_err());
    }

    /// `precision` reads its four spellings (file and flag alike) and nothing else, is left
    /// out of the serialised config when `auto` (so run ids made before it existed stand), and
    /// resolves per device: `auto` is bf16 on CUDA and fp32 on the CPU, `tf32` fp32 on the CPU.
    #[test]
    fn precision_reads_its_spellings_stays_unwritten_at_auto_and_resolves_per_device() {
        let c: FinetuneConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c.precision, PrecisionChoice::Auto);
        for choice in [
            PrecisionChoice::Auto,
            PrecisionChoice::Fp32,
            PrecisionChoice::Tf32,
            PrecisionChoice::Bf16,
        ] {
            let f: FinetuneConfig =
                serde_json::from_value(json!({ "precision": choice.as_str() })).unwrap();
            let p: PrimeConfig =
                serde_json::from_value(json!({ "precision": choice.as_str() })).unwrap();
            assert_eq!((f.precision, p.precision), (choice, choice));
            let flag = <PrecisionChoice as clap::ValueEnum>::from_str(choice.as_str(), false);
            assert_eq!(flag, Ok(choice));
            let written = serde_json::to_value(&f).unwrap();
            assert_eq!(
                written.get("precision").is_some(),
                choice != PrecisionChoice::Auto,
                "{choice:?}"
            );
            let written = serde_json::to_value(&p).unwrap();
            assert_eq!(written.get("precision").is_some(), !choice.is_auto());
        }
        for bad in ["fp16", "BF16", "float32", ""] {
            let e = serde_json::from_value::<FinetuneConfig>(json!({ "precision": bad }))
                .unwrap_err()
                .to_string();
            assert!(e.contains("auto") && e.contains("bf16"), "{bad}: {e}");
        }
        let resolved = |c: PrecisionChoice| (c.resolve_for(false), c.resolve_for(true));
        use Precision::{Bf16, Fp32, Tf32};
        assert_eq!(resolved(PrecisionChoice::Auto), (Fp32, Bf16));
        assert_eq!(resolved(PrecisionChoice::Fp32), (Fp32, Fp32));
        assert_eq!(resolved(PrecisionChoice::Tf32), (Fp32, Tf32));
        assert_eq!(resolved(PrecisionChoice::Bf16), (Bf16, Bf16));
        let cpu = PrecisionChoice::Tf32.in_effect(&candle_core::Device::Cpu);
        assert_eq!(
            serde_json::to_value(cpu).unwrap(),
            json!({"requested": "tf32", "effective": "fp32"})
        );
    }

    /// `lora_dropout` takes [0, 1) under the LoRA method, refuses anything else by name with
    /// the range, reaches the LoRA spec, and stays out of the serialised config when unset.
    #[test]
    fn lora_dropout_is_a_probability_below_1_carried_to_the_spec() {
        let lora = |v: Option<f64>| FinetuneConfig {
            model: "m".into(),
            lang: "hi".into(),
            method: FinetuneMethod::Lora,
            lora_dropout: v,
            ..Default::default()
        };
        for ok in [None, Some(0.0), Some(0.1), Some(0.99)] {
            assert_eq!(lora(ok).value_errors(), vec![], "{ok:?}");
            let Some(crate::model::PeSpec::Lora { dropout, .. }) = lora(ok).pe_spec() else {
                panic!("not LoRA");
            };
            assert_eq!(dropout, ok.unwrap_or(0.0));
        }
        for bad in [1.0, 1.5, -0.1, f64::NAN] {
            let errors = lora(Some(bad)).value_errors();
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].key, "lora_dropout");
            assert!(
                errors[0].problem.contains("[0, 1)"),
                "{}",
                errors[0].problem
            );
        }
        let written = serde_json::to_value(lora(None)).unwrap();
        assert!(written.get("lora_dropout").is_none());
        let written = serde_json::to_value(lora(Some(0.1))).unwrap();
        assert_eq!(written["lora_dropout"], json!(0.1));
    }

    /// The PE seam's registration holds together: every registered method is named the same
    /// by its registration, its PeMethod impl, `finetune.method` and `prime.inner_params`
    /// (that spelling is how the configs find the method), and finds its own file.
    #[test]
    fn every_registered_pe_method_is_named_alike_everywhere() {
        use crate::model::pe::REGISTRY;
        use clap::ValueEnum;
        for r in REGISTRY {
            assert_eq!(r.kind.registration().name, r.name);
            assert_eq!(PeKind::from_name(r.name), Some(r.kind));
            let method = PeSettings::default().spec(r.kind, 8).method();
            assert_eq!((method.name(), method.file_name()), (r.name, r.file));
        }
        let names: std::collections::BTreeSet<_> = REGISTRY.iter().map(|r| r.name).collect();
        assert_eq!(names.len(), REGISTRY.len(), "two methods share a name");
        // Every value of the config enums: its spelling (serde, clap, as_str) is one, and
        // it names a registered method exactly when it is not full/head tuning.
        for m in FinetuneMethod::value_variants() {
            let serde = serde_json::to_value(m).unwrap();
            assert_eq!(serde, json!(m.as_str()));
            let pe = m.pe_kind();
            let plain = matches!(m, FinetuneMethod::Full | FinetuneMethod::Head);
            assert_eq!(pe.is_none(), plain, "{m:?}");
            assert_eq!(pe.map(PeKind::as_str).unwrap_or(m.as_str()), m.as_str());
        }
        for c in InnerParamsChoice::value_variants() {
            let serde = serde_json::to_value(c).unwrap();
            let pe = c.pe_kind();
            assert_eq!(pe.is_none(), *c == InnerParamsChoice::Full, "{c:?}");
            if let Some(pe) = pe {
                assert_eq!(serde, json!(pe.as_str()));
            }
        }
        for kind in REGISTRY.iter().map(|r| r.kind) {
            assert!(
                FinetuneMethod::value_variants()
                    .iter()
                    .any(|m| m.pe_kind() == Some(kind))
                    && InnerParamsChoice::value_variants()
                        .iter()
                        .any(|c| c.pe_kind() == Some(kind)),
                "{kind:?} cannot be named in a configuration"
            );
        }
    }

    /// A priming step samples tasks_per_step of the sources without replacement: more than
    /// there are is refused before anything runs (it used to fail inside the run).
    #[test]
    fn tasks_per_step_is_at_most_the_number_of_sources() {
        let prime = |n: usize| PrimeConfig {
            model: "m".into(),
            tasks_per_step: Some(n),
            ..Default::default()
        };
        assert_eq!(prime(1).value_errors(), vec![]);
        assert_eq!(prime(2).value_errors(), vec![]);
        let errors = prime(3).value_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "tasks_per_step");
        assert!(
            errors[0]
                .problem
                .contains("2 sources to sample from (en, es)"),
            "{}",
            errors[0].problem
        );
    }

    #[test]
    fn per_device_is_a_positive_count_or_auto() {
        assert_eq!("auto".parse::<PerDevice>(), Ok(PerDevice::Auto));
        assert_eq!(" 3".parse::<PerDevice>(), Ok(PerDevice::Fixed(3)));
        assert!("0".parse::<PerDevice>().unwrap_err().contains("at least 1"));
        assert!("many".parse::<PerDevice>().unwrap_err().contains("'many'"));
        assert_eq!(PerDevice::Auto.to_string(), "auto");
        assert!(check_calibration_steps(0).is_err() && check_calibration_steps(1).is_ok());
    }
}
