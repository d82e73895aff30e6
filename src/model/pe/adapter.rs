//! The paper's PE module θa: one bottleneck adapter `x + up(relu(down(x)))` after the encoder's
//! last layer. It acts on each token's last hidden state alone, after the encoder, so the
//! encoder's outputs stay constant while it trains and every encoder cache applies.

use super::{PeMethod, PeModule};
use crate::model::config::BertConfig;
use crate::model::error::{ModelError, Result};
use crate::model::ops::linear;
use crate::model::params::{ParamSet, Weights};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::sync::Arc;

/// File holding θa inside a primed checkpoint folder.
pub const FILE: &str = "adapter.safetensors";
/// Bottleneck size of a new adapter (the paper's 64).
pub const DEFAULT_DIM: usize = 64;

/// A bottleneck adapter of dimension `dim` after the last layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BottleneckAdapter {
    pub dim: usize,
}

impl BottleneckAdapter {
    pub fn new(dim: usize) -> Self {
        Self { dim }
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

impl PeMethod for BottleneckAdapter {
    fn name(&self) -> &'static str {
        "adapter"
    }

    fn file_name(&self) -> &'static str {
        FILE
    }

    fn param_shapes(&self, model: &BertConfig) -> Vec<(String, Vec<usize>)> {
        param_shapes(model.hidden_size, self.dim)
    }

    fn after_encoder(&self, hidden: &Tensor, own: &dyn Weights) -> Result<Tensor> {
        forward(hidden, own)
    }
}

/// An adapter module over given θa (e.g. a golden dump's values); the bottleneck size is read
/// from `down.weight`.
pub fn module(params: ParamSet, model: &BertConfig) -> Result<PeModule> {
    let dim = params
        .get("down.weight")
        .ok_or_else(|| ModelError::MissingWeight("down.weight".into()))?
        .dim(0)?;
    PeModule::new(Arc::new(BottleneckAdapter::new(dim)), params, model)
}

/// Loads θa from an adapter file; the bottleneck size is read from `down.weight`.
pub fn load(path: &Path, model: &BertConfig, device: &Device) -> Result<PeModule> {
    let hidden = model.hidden_size;
    let raw = crate::model::params::read_safetensors(path, device)?;
    let down = raw
        .get("down.weight")
        .ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            name: "down.weight".into(),
            expected: vec![0, hidden],
        })?;
    let method = BottleneckAdapter::new(down.dim(0)?);
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
        let spec = PeSpec::Adapter { dim: 64 };
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
