//! The encoder forward on a real checkpoint (all-MiniLM-L6-v2) against PyTorch's last hidden
//! states (`encoder/forward.safetensors` of shared/golden, encoder_golden.py).

use super::compare::{Checks, Tolerances, check_rel};
use super::{OrReplay, VerifyError};
use crate::model::{EncoderInputs, encode, load_encoder};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// The tokenizer whose ids the MiniLM states were computed from.
const IDS_PREFIX: &str = "all-MiniLM-L6-v2";

pub(super) fn check_encoder(
    forward: &Path,
    model: &Path,
    device: &Device,
    tol: &Tolerances,
) -> Result<Checks, VerifyError> {
    let (cfg, enc) = load_encoder(model, device).or_replay("loading the checkpoint")?;
    // Inference runs on detached tensors: no graph is recorded.
    let weights = enc.detached_tensors();
    let tensors =
        candle_core::safetensors::load(forward, device).map_err(|e| VerifyError::Dump {
            path: forward.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut c = Checks::default();
    for k in 0.. {
        let Some(want) = tensors.get(&format!("minilm.s{k}.last_hidden_state")) else {
            break;
        };
        let key = format!("{IDS_PREFIX}.s{k}.input_ids");
        let Some(ids) = tensors.get(&key) else {
            c.fail(format!("{key}: missing"));
            continue;
        };
        let ids = ids.unsqueeze(0).or_replay("the input ids")?;
        let mask = Tensor::ones(ids.dims(), DType::U32, device).or_replay("the mask")?;
        let inputs = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: None,
        };
        let got = encode(&cfg, &weights, &inputs, None)
            .and_then(|h| Ok(h.squeeze(0)?))
            .or_replay("the encoder forward")?;
        c.check(check_rel(&format!("s{k}"), &got, want, 0.0, tol.hidden_abs));
    }
    if c.compared == 0 {
        return Err(VerifyError::Dump {
            path: forward.to_path_buf(),
            message: "no minilm.s<k>.last_hidden_state tensors".into(),
        });
    }
    Ok(c)
}
