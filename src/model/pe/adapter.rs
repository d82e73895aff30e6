//! The paper's PE module θa: one bottleneck adapter `x + up(relu(down(x)))` after the encoder's
//! last layer. It acts on each token's last hidden state alone, after the encoder, so the
//! encoder's outputs stay constant while it trains and every encoder cache applies.
//!
//! `layers = all` places one adapter after every layer's output instead (Houlsby/Pfeiffer-style
//! placement, the same bottleneck), named `layer.<l>.down.weight`, …: those act inside the
//! encoder, so while they train no encoder output can be cached.

use super::{PeMethod, PeModule};
use crate::model::config::BertConfig;
use crate::model::error::{ModelError, Result};
use crate::model::ops::linear;
use crate::model::params::{ParamSet, Weights};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// File holding θa inside a primed checkpoint folder.
pub const FILE: &str = "adapter.safetensors";

/// The method's registration ([`super::REGISTRY`]).
pub const REGISTRATION: super::Registration = super::Registration {
    kind: super::PeKind::Adapter,
    name: "adapter",
    file: FILE,
    load,
    // Few, freshly initialised weights on a frozen encoder need a much larger rate than full
    // fine-tuning's 5e-5.
    default_lr: 5e-3,
    tuning_label: "adapter tuning",
    from_settings,
};

/// The spec of the configuration's adapter.
fn from_settings(settings: &super::PeSettings, dim: usize) -> super::PeSpec {
    super::PeSpec::Adapter {
        dim,
        layers: settings.adapter_layers,
    }
}
/// Bottleneck size of a new adapter (the paper's 64).
pub const DEFAULT_DIM: usize = 64;

/// Where the adapters sit.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
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
pub enum AdapterLayers {
    /// One adapter after the last layer (the paper's).
    #[default]
    Last,
    /// One adapter after every layer's output.
    All,
}

impl AdapterLayers {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterLayers::Last => "last",
            AdapterLayers::All => "all",
        }
    }

    pub fn is_last(&self) -> bool {
        *self == AdapterLayers::Last
    }
}

/// A bottleneck adapter of dimension `dim` after the last layer, or after every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BottleneckAdapter {
    pub dim: usize,
    pub layers: AdapterLayers,
}

impl BottleneckAdapter {
    /// The paper's: one adapter after the last layer.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            layers: AdapterLayers::Last,
        }
    }

    /// The name prefix of layer `l`'s adapter under `layers = all`.
    fn layer_prefix(l: usize) -> String {
        format!("layer.{l}.")
    }
}

/// Names and shapes of θa for a model of width `hidden` (Linear layout `[out, in]`; down is
/// drawn before up).
pub fn param_shapes(hidden: usize, dim: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        ("down.weight".into(), vec![dim, hidden]),
        ("down.bias".into(), vec![dim]),
        ("up.weight".into(), vec![hidden, dim]),
        ("up.bias".into(), vec![hidden]),
    ]
}

/// The adapter `x + up(relu(down(x)))` over weights `a`.
pub fn forward(x: &Tensor, a: &dyn Weights) -> Result<Tensor> {
    let d = linear(x, a.weight("down.weight")?, Some(a.weight("down.bias")?))?.relu()?;
    let u = linear(&d, a.weight("up.weight")?, Some(a.weight("up.bias")?))?;
    Ok((x + u)?)
}

/// One adapter's weights read under a name prefix.
struct Prefixed<'a> {
    prefix: String,
    inner: &'a dyn Weights,
}

impl Weights for Prefixed<'_> {
    fn lookup(&self, name: &str) -> Option<&Tensor> {
        self.inner.lookup(&format!("{}{name}", self.prefix))
    }
}

impl PeMethod for BottleneckAdapter {
    fn name(&self) -> &'static str {
        REGISTRATION.name
    }

    fn file_name(&self) -> &'static str {
        FILE
    }

    fn param_shapes(&self, model: &BertConfig) -> Vec<(String, Vec<usize>)> {
        let one = param_shapes(model.hidden_size, self.dim);
        match self.layers {
            AdapterLayers::Last => one,
            AdapterLayers::All => (0..model.num_hidden_layers)
                .flat_map(|l| {
                    one.iter()
                        .map(move |(n, s)| (format!("{}{n}", Self::layer_prefix(l)), s.clone()))
                })
                .collect(),
        }
    }

    fn acts_inside_encoder(&self) -> bool {
        self.layers == AdapterLayers::All
    }

    fn has_layer_hook(&self) -> bool {
        self.layers == AdapterLayers::All
    }

    fn after_layer(&self, layer: usize, x: Tensor, own: &dyn Weights) -> Result<Tensor> {
        match self.layers {
            AdapterLayers::Last => Ok(x),
            AdapterLayers::All => forward(
                &x,
                &Prefixed {
                    prefix: Self::layer_prefix(layer),
                    inner: own,
                },
            ),
        }
    }

    fn after_encoder(&self, hidden: &Tensor, own: &dyn Weights) -> Result<Tensor> {
        match self.layers {
            AdapterLayers::Last => forward(hidden, own),
            AdapterLayers::All => Ok(hidden.clone()),
        }
    }
}

/// An adapter module over given θa (e.g. a golden dump's values): the placement is read from
/// the names (`layer.<l>.…` for every layer), the bottleneck size from a `down.weight`.
pub fn module(params: ParamSet, model: &BertConfig) -> Result<PeModule> {
    let method = read_method(|n| params.get(n).map(|v| v.dims().to_vec()))?;
    PeModule::new(Arc::new(method), params, model)
}

/// The adapter a set of names describes, through a name → shape lookup.
fn read_method(shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<BottleneckAdapter> {
    let (layers, down) = match shape_of("down.weight") {
        Some(s) => (AdapterLayers::Last, s),
        None => match shape_of("layer.0.down.weight") {
            Some(s) => (AdapterLayers::All, s),
            None => {
                return Err(ModelError::MissingWeight(
                    "down.weight (or layer.0.down.weight)".into(),
                ));
            }
        },
    };
    Ok(BottleneckAdapter {
        dim: down[0],
        layers,
    })
}

/// Loads θa from an adapter file: the placement from its names, the bottleneck size from
/// `down.weight`.
pub fn load(path: &Path, model: &BertConfig, device: &Device) -> Result<PeModule> {
    let raw = crate::model::params::read_safetensors(path, device)?;
    let method = read_method(|n| raw.get(n).map(|t| t.dims().to_vec())).map_err(|_| {
        ModelError::MissingTensor {
            path: path.to_path_buf(),
            name: "down.weight".into(),
            expected: vec![0, model.hidden_size],
        }
    })?;
    let params = ParamSet::load_safetensors(path, &method.param_shapes(model), device)?;
    PeModule::new(Arc::new(method), params, model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pe::PeSpec;
    use crate::rng::SeededRng;

    #[test]
    fn new_adapter_is_seeded_small_with_zero_bias() {
        let model = BertConfig::new(30, 32, 1, 2, 64);
        let spec = PeSpec::adapter(64);
        let enc = crate::model::TensorSet::new();
        let init =
            |seed| PeModule::init(&spec, &model, &enc, &mut SeededRng::new(seed), &Device::Cpu);
        let (a, b) = (init(5).unwrap(), init(5).unwrap());
        let wa = a
            .params
            .get("down.weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let wb = b
            .params
            .get("down.weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(wa, wb);
        let n = (64 * 32) as f32;
        let std = (wa.iter().flatten().map(|v| v * v).sum::<f32>() / n).sqrt();
        assert!((std - 0.02).abs() < 0.002, "{std}");
        let up_bias = a.params.get("up.bias").unwrap().to_vec1::<f32>().unwrap();
        assert!(up_bias.iter().all(|&v| v == 0.0));
        assert_ne!(
            wa,
            init(6)
                .unwrap()
                .params
                .get("down.weight")
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn a_module_over_the_wrong_shapes_is_refused() {
        let model = BertConfig::new(30, 32, 1, 2, 64);
        let mut rng = SeededRng::new(1);
        let params = BottleneckAdapter::new(8)
            .init(
                &BertConfig::new(30, 16, 1, 2, 64),
                &crate::model::TensorSet::new(),
                &mut rng,
                &Device::Cpu,
            )
            .unwrap();
        let err = PeModule::new(Arc::new(BottleneckAdapter::new(8)), params, &model)
            .unwrap_err()
            .to_string();
        assert!(err.contains("adapter parameters do not match"), "{err}");
    }
}
