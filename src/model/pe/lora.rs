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
use crate::model::ops::{cpu_slice, storage_slice};
use crate::model::params::{ParamSet, TensorSet, Weights};
use crate::model::sgemm::{MatRef, gemm};
use crate::rng::SeededRng;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, Var};
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
        _training: bool,
    ) -> Result<TensorSet> {
        let scale = self.scale();
        let mut out = TensorSet::new();
        for (w, a, b, _) in self.slots(model) {
            let merged =
                merged_weight(encoder.weight(&w)?, own.weight(&b)?, own.weight(&a)?, scale)?;
            out.insert(w, merged)?;
        }
        Ok(out)
    }
}

/// `W + s·B·A` (W `[out, in]`, B `[out, r]`, A `[r, in]`), differentiable in all three.
///
/// On the CPU kernels it is one op ([`LoraMerge`]) rather than candle's matmul, scale and add:
/// candle runs every elementwise op over 64K values or more on its spinning thread pool, and
/// the merge's three ops plus their backward (a gradient buffer and an add per node) were
/// about a quarter of a LoRA training step's CPU time on a busy 2-core machine.
fn merged_weight(w: &Tensor, b: &Tensor, a: &Tensor, scale: f64) -> Result<Tensor> {
    if [w, b, a]
        .iter()
        .all(|t| crate::model::dispatch::kernel_ok(t))
    {
        let op = LoraMerge {
            scale: scale as f32,
        };
        Ok(w.contiguous()?
            .apply_op3(&b.contiguous()?, &a.contiguous()?, op)?)
    } else {
        Ok((w + (crate::model::ops::matmul(b, a)? * scale)?)?)
    }
}

/// [`merged_weight`] on the CPU (f32): the forward copies W and adds `s·B·A` in place; the
/// backward gives W the output's gradient G itself, B `s·G·Aᵀ` and A `s·Bᵀ·G`, each only when
/// that input is tracked.
struct LoraMerge {
    scale: f32,
}

impl LoraMerge {
    /// `(out, in, r)` from the shapes of W, B and A.
    fn dims(w: &Layout, b: &Layout, a: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (out, inp) = w.shape().dims2()?;
        let r = a.shape().dims2()?.0;
        if b.shape().dims() != [out, r] || a.shape().dims() != [r, inp] {
            candle_core::bail!(
                "LoRA merge: W {:?}, B {:?}, A {:?} do not fit W + B·A",
                w.dims(),
                b.dims(),
                a.dims()
            );
        }
        Ok((out, inp, r))
    }
}

impl CustomOp3 for LoraMerge {
    fn name(&self) -> &'static str {
        "primer-lora-merge"
    }

    fn cpu_fwd(
        &self,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
        sa: &CpuStorage,
        la: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, inp, r) = Self::dims(lw, lb, la)?;
        let mut y = cpu_slice(sw, lw, "LoRA base weight")?.to_vec();
        let b = cpu_slice(sb, lb, "lora_B")?;
        let a = cpu_slice(sa, la, "lora_A")?;
        gemm(
            &mut y,
            true,
            MatRef::new(b, out, r),
            MatRef::new(a, r, inp),
            self.scale,
        );
        Ok((CpuStorage::F32(y), lw.shape().clone()))
    }

    fn bwd(
        &self,
        w: &Tensor,
        b: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, inp, r) = Self::dims(w.layout(), b.layout(), a.layout())?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let g = storage_slice(&gs, gl, "LoRA merge gradient")?;
        let (bs, bl) = b.storage_and_layout();
        let bv = storage_slice(&bs, bl, "lora_B")?;
        let (as_, al) = a.storage_and_layout();
        let av = storage_slice(&as_, al, "lora_A")?;
        let db = if b.track_op() {
            let mut db = vec![0f32; out * r];
            gemm(
                &mut db,
                false,
                MatRef::new(g, out, inp),
                MatRef::new(av, r, inp).t(),
                self.scale,
            );
            Some(Tensor::from_vec(db, (out, r), &Device::Cpu)?)
        } else {
            None
        };
        let da = if a.track_op() {
            let mut da = vec![0f32; r * inp];
            gemm(
                &mut da,
                false,
                MatRef::new(bv, out, r).t(),
                MatRef::new(g, out, inp),
                self.scale,
            );
            Some(Tensor::from_vec(da, (r, inp), &Device::Cpu)?)
        } else {
            None
        };
        let dw = w.track_op().then(|| grad.clone());
        Ok((dw, db, da))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backward;
    use crate::model::ops::max_abs;

    /// The CPU merge op equals candle's `W + s·B·A` in value and in the gradients of W, B
    /// and A (and leaves a constant W without one).
    #[test]
    fn merge_op_matches_the_composite_merge() {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(3);
        let mut var = |shape: &[usize]| {
            Var::from_tensor(&rng.normal_tensor(shape, 0.5, &dev).unwrap()).unwrap()
        };
        let (w, b, a) = (var(&[5, 7]), var(&[5, 2]), var(&[2, 7]));
        let probe = SeededRng::new(4).normal_tensor(&[5, 7], 1.0, &dev).unwrap();
        let loss_grads = |y: &Tensor| backward(&(y * &probe).unwrap().sum_all().unwrap()).unwrap();
        let fused = merged_weight(&w, &b, &a, 1.5).unwrap();
        let composite = {
            let _c = crate::model::dispatch::composite_only();
            merged_weight(&w, &b, &a, 1.5).unwrap()
        };
        assert!(max_abs(&fused, &composite) < 1e-5);
        let (g1, g2) = (loss_grads(&fused), loss_grads(&composite));
        for (name, v) in [("W", &w), ("B", &b), ("A", &a)] {
            let d = max_abs(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-5, "{name}: {d}");
        }
        let constant_w = w.as_tensor().detach();
        let g = loss_grads(&merged_weight(&constant_w, &b, &a, 1.5).unwrap());
        assert!(g.get(&constant_w).is_none() && g.get(&b).is_some());
    }
}
