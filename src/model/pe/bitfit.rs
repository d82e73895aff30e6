//! BitFit (Ben Zaken et al., 2022): train every bias of the encoder — the linear layers' and the
//! LayerNorms' — and nothing else of it. The module holds its own copies of those biases,
//! initialised from the encoder's, and the encoder's layers read them in place of θp's
//! ([`PeMethod::encoder_overrides`]); θp's own biases are left as they were. It acts inside the
//! encoder, so while it trains no encoder output can be cached.

use super::{PeMethod, PeModule};
use crate::model::bert::encoder_param_shapes;
use crate::model::config::BertConfig;
use crate::model::error::Result;
use crate::model::params::{ParamSet, TensorSet, Weights};
use crate::rng::SeededRng;
use candle_core::{Device, Var};
use std::path::Path;
use std::sync::Arc;

/// File holding the trained biases inside a primed checkpoint folder.
pub const FILE: &str = "bitfit.safetensors";

/// The method's registration ([`super::REGISTRY`]).
pub const REGISTRATION: super::Registration = super::Registration {
    kind: super::PeKind::Bitfit,
    name: "bitfit",
    file: FILE,
    load,
    // Like adapter tuning's: few weights trained on a frozen encoder need a much larger rate
    // than full fine-tuning's 5e-5; not measured on WikiAnn yet (sweeps select it on dev).
    default_lr: 5e-3,
    tuning_label: "BitFit",
    from_settings,
};

/// BitFit has no settings.
fn from_settings(_settings: &super::PeSettings, _dim: usize) -> super::PeSpec {
    super::PeSpec::BitFit
}

/// Every encoder bias trainable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitFit;

impl PeMethod for BitFit {
    fn name(&self) -> &'static str {
        REGISTRATION.name
    }

    fn file_name(&self) -> &'static str {
        FILE
    }

    /// The encoder's biases under their encoder names (`encoder.layer.0.attention.self.query.bias`,
    /// `embeddings.LayerNorm.bias`, …).
    fn param_shapes(&self, model: &BertConfig) -> Vec<(String, Vec<usize>)> {
        encoder_param_shapes(model)
            .into_iter()
            .filter(|(n, _)| n.ends_with("bias"))
            .collect()
    }

    /// Copies of the encoder's current biases (no random draw: `rng` is not read).
    fn init(
        &self,
        model: &BertConfig,
        encoder: &dyn Weights,
        _rng: &mut SeededRng,
        device: &Device,
    ) -> Result<ParamSet> {
        let mut out = ParamSet::new();
        for (name, _) in self.param_shapes(model) {
            let value = encoder.weight(&name)?.detach().copy()?.to_device(device)?;
            out.insert(name, Var::from_tensor(&value)?)?;
        }
        Ok(out)
    }

    fn acts_inside_encoder(&self) -> bool {
        true
    }

    fn encoder_overrides(
        &self,
        model: &BertConfig,
        _encoder: &dyn Weights,
        own: &dyn Weights,
        _training: bool,
    ) -> Result<TensorSet> {
        // The module's tensors (Vars while it trains: the graph reaches them) replace θp's.
        TensorSet::from_pairs(
            self.param_shapes(model)
                .into_iter()
                .map(|(name, _)| Ok((name.clone(), own.weight(&name)?.clone())))
                .collect::<Result<Vec<_>>>()?,
        )
    }
}

/// Loads the trained biases from a BitFit file; every encoder bias must be there.
pub fn load(path: &Path, model: &BertConfig, device: &Device) -> Result<PeModule> {
    let params = ParamSet::load_safetensors(path, &BitFit.param_shapes(model), device)?;
    PeModule::new(Arc::new(BitFit), params, model)
}
