//! LoRA (Hu et al., 2021): a low-rank update `W + (α/r)·B·A` of chosen linear weights in every
//! layer, A `[r, in]` random-normal and B `[out, r]` zero at the start (as the LoRA paper and
//! HF `peft`'s Gaussian initialisation: A ~ N(0, 1/r²)), so a new module leaves the encoder's
//! function unchanged.
//!
//! Applied in weight space ([`PeMethod::encoder_overrides`]): the layers read the merged weight,
//! which equals `x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ` without dropout. `lora_dropout` (dropout on the LoRA
//! branch's input) cannot be merged and is not implemented: the configuration rejects a value
//! above 0. LoRA acts inside the encoder, so while it trains no encoder output can be cached.

use super::{PeMethod, PeModule};
use crate::model::config::BertConfig;
use crate::model::error::{ModelError, Result};
use crate::model::params::{ParamSet, TensorSet, Weights};
use crate::rng::SeededRng;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// File holding A and B inside a primed checkpoint folder (its header metadata carries r, α
/// and the targets).
pub const FILE: &str = "lora.safetensors";

/// A linear layer of every encoder layer that LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// `attention.self.query`.
    Query,
    /// `attention.self.key`.
    Key,
    /// `attention.self.value`.
    Value,
    /// `attention.output.dense` (the attention's output projection).
    AttentionOutput,
    /// `intermediate.dense` (the feed-forward's first linear).
    Intermediate,
    /// `output.dense` (the feed-forward's second linear).
    Output,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 6] = [
        LoraTarget::Query,
        LoraTarget::Key,
        LoraTarget::Value,
        LoraTarget::AttentionOutput,
        LoraTarget::Intermediate,
        LoraTarget::Output,
    ];

    /// The linear's name inside a layer (`<path>.weight` is its weight).
    pub fn path(self) -> &'static str {
        match self {
            LoraTarget::Query => "attention.self.query",
            LoraTarget::Key => "attention.self.key",
            LoraTarget::Value => "attention.self.value",
            LoraTarget::AttentionOutput => "attention.output.dense",
            LoraTarget::Intermediate => "intermediate.dense",
            LoraTarget::Output => "output.dense",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoraTarget::Query => "query",
            LoraTarget::Key => "key",
            LoraTarget::Value => "value",
            LoraTarget::AttentionOutput => "attention_output",
            LoraTarget::Intermediate => "intermediate",
            LoraTarget::Output => "output",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// `[out, in]` of the linear for `model`.
    fn shape(self, model: &BertConfig) -> (usize, usize) {
        let (h, i) = (model.hidden_size, model.intermediate_size);
        match self {
            LoraTarget::Intermediate => (i, h),
            LoraTarget::Output => (h, i),
            _ => (h, h),
        }
    }
}

/// LoRA of rank `r` and scale `alpha / r` on `targets` of every layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub r: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
}

impl Lora {
    /// The merged update's scale α/r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// (weight name in the encoder, A name, B name, target) for every adapted linear.
    fn slots(&self, model: &BertConfig) -> Vec<(String, String, String, LoraTarget)> {
        let mut out = Vec::new();
        for l in 0..model.num_hidden_layers {
            for &t in &self.targets {
                let base = format!("encoder.layer.{l}.{}", t.path());
                out.push((
                    format!("{base}.weight"),
                    format!("{base}.lora_A"),
                    format!("{base}.lora_B"),
                    t,
                ));
            }
        }
        out
    }
}

impl PeMethod for Lora {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn file_name(&self) -> &'static str {
        FILE
    }

    fn param_shapes(&self, model: &BertConfig) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (_, a, b, t) in self.slots(model) {
            let (o, i) = t.shape(model);
            out.push((a, vec![self.r, i]));
            out.push((b, vec![o, self.r]));
        }
        out
    }

    /// A ~ N(0, 1/r²) drawn in [`Self::param_shapes`] order, B = 0.
    fn init(
        &self,
        model: &BertConfig,
        _encoder: &dyn Weights,
        rng: &mut SeededRng,
        device: &Device,
    ) -> Result<ParamSet> {
        let mut out = ParamSet::new();
        for (name, shape) in self.param_shapes(model) {
            let t = if name.ends_with("lora_A") {
                rng.normal_tensor(&shape, 1.0 / self.r as f32, device)?
            } else {
                Tensor::zeros(shape.as_slice(), DType::F32, device)?
            };
            out.insert(name, Var::from_tensor(&t)?)?;
        }
        Ok(out)
    }

    fn file_metadata(&self) -> Vec<(String, String)> {
        metadata(self)
    }

    fn acts_inside_encoder(&self) -> bool {
        true
    }

    fn encoder_overrides(
        &self,
        model: &BertConfig,
        encoder: &dyn Weights,
        own: &dyn Weights,
    ) -> Result<TensorSet> {
        let scale = self.scale();
        let mut out = TensorSet::new();
        for (w, a, b, _) in self.slots(model) {
            let delta = own.weight(&b)?.matmul(own.weight(&a)?)?;
            let merged = (encoder.weight(&w)? + (delta * scale)?)?;
            out.insert(w, merged)?;
        }
        Ok(out)
    }
}

/// Loads LoRA's A and B; r, α and the targets come from the file's header metadata.
pub fn load(path: &Path, model: &BertConfig, device: &Device) -> Result<PeModule> {
    let bad = |message: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let meta = crate::model::params::read_safetensors_metadata(path)?;
    let get = |key: &str| {
        meta.get(key).ok_or_else(|| {
            bad(format!(
                "no '{key}' in the header metadata (not a primer LoRA file)"
            ))
        })
    };
    let r: usize = get("lora_r")?
        .parse()
        .map_err(|e| bad(format!("lora_r: {e}")))?;
    let alpha: f64 = get("lora_alpha")?
        .parse()
        .map_err(|e| bad(format!("lora_alpha: {e}")))?;
    let targets = get("lora_targets")?
        .split(',')
        .map(|t| LoraTarget::from_str(t).ok_or_else(|| bad(format!("unknown LoRA target '{t}'"))))
        .collect::<Result<Vec<_>>>()?;
    let method = Lora { r, alpha, targets };
    let params = ParamSet::load_safetensors(path, &method.param_shapes(model), device)?;
    PeModule::new(Arc::new(method), params, model)
}

/// The header metadata a LoRA file is saved with (read back by [`load`]).
pub fn metadata(lora: &Lora) -> Vec<(String, String)> {
    vec![
        ("lora_r".into(), lora.r.to_string()),
        ("lora_alpha".into(), lora.alpha.to_string()),
        (
            "lora_targets".into(),
            lora.targets
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]
}
