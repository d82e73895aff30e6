//! One PyTorch reference dump (`<dir>/dump.safetensors` + `meta.json`, see shared/golden/
//! README.md and tools/pe_golden.py), its tensors loaded on the device under test.

use super::VerifyError;
use crate::data::Batch;
use crate::model::ParamSet;
use crate::train::optim::AdamWConfig;
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct GoldenDump {
    pub dir: PathBuf,
    pub meta: Value,
    pub tensors: HashMap<String, Tensor>,
}

impl GoldenDump {
    /// Reads meta.json alone (enough to tell what kind of dump this is).
    pub fn read_meta(dir: &Path) -> Result<Value, VerifyError> {
        let path = dir.join("meta.json");
        let text = std::fs::read_to_string(&path).map_err(|source| VerifyError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| VerifyError::Meta {
            path,
            message: e.to_string(),
        })
    }

    pub fn load(dir: &Path, device: &Device) -> Result<Self, VerifyError> {
        let meta = Self::read_meta(dir)?;
        let path = dir.join("dump.safetensors");
        let tensors =
            candle_core::safetensors::load(&path, device).map_err(|e| VerifyError::Dump {
                path,
                message: e.to_string(),
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            tensors,
        })
    }

    fn meta_error(&self, message: String) -> VerifyError {
        VerifyError::Meta {
            path: self.dir.join("meta.json"),
            message,
        }
    }

    pub fn mode(&self) -> Result<&str, VerifyError> {
        self.meta["mode"]
            .as_str()
            .ok_or_else(|| self.meta_error("no string `mode`".into()))
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor, VerifyError> {
        self.tensors.get(name).ok_or_else(|| VerifyError::Dump {
            path: self.dir.join("dump.safetensors"),
            message: format!("no tensor '{name}'"),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// All tensors named `<prefix><rest>`, as (rest, tensor), sorted by name.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|r| (r.to_string(), t.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// New Vars from the tensors under `prefix` (e.g. "init.adapter.").
    pub fn param_set(&self, prefix: &str) -> Result<ParamSet, VerifyError> {
        let pairs = self.with_prefix(prefix);
        if pairs.is_empty() {
            return Err(VerifyError::Dump {
                path: self.dir.join("dump.safetensors"),
                message: format!("no tensors under '{prefix}'"),
            });
        }
        ParamSet::from_tensors(pairs).map_err(|e| VerifyError::Dump {
            path: self.dir.join("dump.safetensors"),
            message: format!("tensors under '{prefix}': {e}"),
        })
    }

    /// The batch stored under `prefix` (e.g. "batch." or "batch.t0.query.").
    pub fn batch(&self, prefix: &str) -> Result<Batch, VerifyError> {
        let get = |k: &str| self.tensor(&format!("{prefix}{k}")).cloned();
        Batch::from_tensors(
            get("input_ids")?,
            get("attention_mask")?,
            Some(get("token_type_ids")?),
            get("labels")?
                .to_dtype(candle_core::DType::I64)
                .map_err(|e| VerifyError::Dump {
                    path: self.dir.join("dump.safetensors"),
                    message: format!("{prefix}labels: {e}"),
                })?,
        )
        .map_err(|e| VerifyError::Dump {
            path: self.dir.join("dump.safetensors"),
            message: format!("batch '{prefix}': {e}"),
        })
    }

    /// A number from meta.json by JSON pointer (e.g. "/outer_opt/lr").
    pub fn f64_at(&self, pointer: &str) -> Result<f64, VerifyError> {
        self.meta
            .pointer(pointer)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| self.meta_error(format!("no number at {pointer}")))
    }

    /// A count from meta.json by JSON pointer (e.g. "/tasks").
    pub fn usize_at(&self, pointer: &str) -> Result<usize, VerifyError> {
        self.meta
            .pointer(pointer)
            .and_then(|v| v.as_u64())
            .map(|n| n as usize)
            .ok_or_else(|| self.meta_error(format!("no non-negative integer at {pointer}")))
    }

    /// A string from meta.json by JSON pointer.
    pub fn str_at(&self, pointer: &str) -> Result<&str, VerifyError> {
        self.meta
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .ok_or_else(|| self.meta_error(format!("no string at {pointer}")))
    }

    /// The dump's optimiser (`outer_opt` in meta.json: torch AdamW, weight decay on every
    /// trained tensor unless `wd_on_all_params` says otherwise).
    pub fn adamw(&self) -> Result<AdamWConfig, VerifyError> {
        Ok(AdamWConfig {
            lr: self.f64_at("/outer_opt/lr")?,
            beta1: self.f64_at("/outer_opt/betas/0")?,
            beta2: self.f64_at("/outer_opt/betas/1")?,
            eps: self.f64_at("/outer_opt/eps")?,
            weight_decay: self.f64_at("/outer_opt/weight_decay")?,
            decay_bias_and_norm: self.meta["outer_opt"]["wd_on_all_params"]
                .as_bool()
                .unwrap_or(true),
        })
    }

    /// Number of heads the dump carries (`init.head.<i>.weight` for i = 0, 1, …).
    pub fn num_heads(&self) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("init.head.{i}.weight")))
            .count()
    }
}
