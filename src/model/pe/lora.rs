//! LoRA (Hu et al., 2021): a low-rank update `W + (α/r)·B·A` of chosen linear weights in every
//! layer, A `[r, in]` random-normal and B `[out, r]` zero at the start (as the LoRA paper and
//! HF `peft`'s Gaussian initialisation: A ~ N(0, 1/r²)), so a new module leaves the encoder's
//! function unchanged.
//!
//! Without dropout it acts in weight space ([`PeMethod::encoder_overrides`]): the layers read
//! the merged weight, which equals `x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ`, and keep their fused CPU op.
//! `lora_dropout` p > 0 drops the branch's input, as `peft` does: a training forward computes
//! `x·Wᵀ + (α/r)·(dropout(x)·Aᵀ)·Bᵀ` in activation space ([`PeMethod::linear_branch`], on the
//! encoder's composite layer), each adapted linear drawing its own mask from the forward's
//! dropout stream — a mask per input element, which no merged weight can express. Evaluation
//! (no dropout stream) reads the merged weight, which is then exact. The dropout is a setting of
//! each training run, not of the module: a checkpoint does not carry it.
//!
//! LoRA acts inside the encoder, so while it trains no encoder output can be cached.

use super::{PeMethod, PeModule};
use crate::model::config::BertConfig;
use crate::model::error::{ModelError, Result};
use crate::model::ops::{cpu_slice, dropout, linear, storage_slice};
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

/// The method's registration ([`super::REGISTRY`]).
pub const REGISTRATION: super::Registration = super::Registration {
    kind: super::PeKind::Lora,
    name: "lora",
    file: FILE,
    load,
    // Like adapter tuning's: few weights trained on a frozen encoder need a much larger rate
    // than full fine-tuning's 5e-5; not measured on WikiAnn yet (sweeps select it on dev).
    default_lr: 5e-3,
    tuning_label: "LoRA",
    from_settings,
};

/// Rank r when none is given (as `peft`).
pub const DEFAULT_R: usize = 8;
/// α when none is given (as `peft`): the update is scaled by α/r.
pub const DEFAULT_ALPHA: f64 = 8.0;

/// The spec of the configuration's LoRA: `peft`'s defaults (r 8, α 8, query and value, no
/// dropout) for what it leaves unset.
fn from_settings(settings: &super::PeSettings, _dim: usize) -> super::PeSpec {
    super::PeSpec::Lora {
        r: settings.lora_r.unwrap_or(DEFAULT_R),
        alpha: settings.lora_alpha.unwrap_or(DEFAULT_ALPHA),
        targets: settings
            .lora_targets
            .clone()
            .unwrap_or_else(|| vec![LoraTarget::Query, LoraTarget::Value]),
        dropout: settings.lora_dropout.unwrap_or(0.0),
    }
}

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

/// LoRA of rank `r` and scale `alpha / r` on `targets` of every layer, with dropout of
/// probability `dropout` on the branch's input in training forwards (0: none, weight space
/// throughout).
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub r: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
    pub dropout: f64,
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

    /// Whether training forwards compute the branch in activation space (dropout on).
    fn branch_in_training(&self) -> bool {
        self.dropout > 0.0
    }
}

impl PeMethod for Lora {
    fn name(&self) -> &'static str {
        REGISTRATION.name
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
        training: bool,
    ) -> Result<TensorSet> {
        let scale = self.scale();
        let mut out = TensorSet::new();
        if training && self.branch_in_training() {
            // The branch is added in activation space (`linear_branch`): W stays θp's.
            return Ok(out);
        }
        for (w, a, b, _) in self.slots(model) {
            let merged =
                merged_weight(encoder.weight(&w)?, own.weight(&b)?, own.weight(&a)?, scale)?;
            out.insert(w, merged)?;
        }
        Ok(out)
    }

    fn has_linear_branch(&self) -> bool {
        self.branch_in_training()
    }

    /// The merged weight of every adapted linear, and on the generic (non-CPU-kernel) path
    /// the product B·A and its scaled copy beside it: 3 · out · in each, the high end. None
    /// while the branch acts in activation space instead.
    fn override_floats(&self, model: &BertConfig, training: bool) -> u64 {
        if training && self.branch_in_training() {
            return 0;
        }
        self.slots(model)
            .iter()
            .map(|(_, _, _, t)| {
                let (out, inp) = t.shape(model);
                3 * (out * inp) as u64
            })
            .sum()
    }

    /// Per adapted linear `[out, in]`: the dropped input and its mask (2·in), `x·Aᵀ` (r), and
    /// `·Bᵀ` with its scaled copy (2·out).
    fn branch_floats_per_token(&self, model: &BertConfig) -> u64 {
        if !self.branch_in_training() {
            return 0;
        }
        self.slots(model)
            .iter()
            .map(|(_, _, _, t)| {
                let (out, inp) = t.shape(model);
                (2 * inp + self.r + 2 * out) as u64
            })
            .sum()
    }

    fn linear_branch(
        &self,
        layer: usize,
        weight: &str,
        x: &Tensor,
        own: &dyn Weights,
        rng: &mut SeededRng,
    ) -> Result<Option<Tensor>> {
        let linear_path = weight.strip_suffix(".weight");
        let Some(t) = self.targets.iter().find(|t| Some(t.path()) == linear_path) else {
            return Ok(None);
        };
        let base = format!("encoder.layer.{layer}.{}", t.path());
        let a = own.weight(&format!("{base}.lora_A"))?;
        let b = own.weight(&format!("{base}.lora_B"))?;
        branch(x, a, b, self.scale(), self.dropout, rng).map(Some)
    }
}

/// LoRA's branch in activation space, `s·(dropout(x)·Aᵀ)·Bᵀ` (x `[.., in]`, A `[r, in]`, B
/// `[out, r]`), its mask drawn from `rng` (none at p = 0), differentiable in x, A and B.
fn branch(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    p: f64,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    let dropped = dropout(x, p, rng)?;
    Ok((linear(&linear(&dropped, a, None)?, b, None)? * scale)?)
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
    // The dropout is each training run's own setting (see the module documentation).
    let method = Lora {
        r,
        alpha,
        targets,
        dropout: 0.0,
    };
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
    use crate::model::bert::{EncoderInputs, encode};
    use crate::model::init::random_encoder;
    use crate::model::ops::max_abs;
    use crate::model::pe::{Overlay, PeSpec};
    use crate::model::{FinetuneMethod, Tagger};

    /// A tiny tagger (H16, 2 layers, BERT dropout `bert_dropout`) with LoRA (r 2, α 4, dropout
    /// `p`) on all six linears, trainable, and an `en` head. B is random rather than zero so
    /// that the branch shows in the outputs. The same for every `p`.
    fn lora_tagger(p: f64, bert_dropout: f64) -> Tagger {
        let mut cfg = BertConfig::new(40, 16, 2, 2, 32).with_dropout(bert_dropout);
        cfg.max_position_embeddings = 32;
        let enc = random_encoder(&cfg, 4, &Device::Cpu)
            .unwrap()
            .to_params()
            .unwrap();
        let mut t = Tagger::new(cfg, enc, Device::Cpu);
        let spec = PeSpec::Lora {
            r: 2,
            alpha: 4.0,
            targets: LoraTarget::ALL.to_vec(),
            dropout: p,
        };
        t.ensure_pe(&spec, &mut SeededRng::new(1)).unwrap();
        let mut rng = SeededRng::new(2);
        for (n, v) in t.pe.as_ref().unwrap().params.iter() {
            if n.ends_with("lora_B") {
                v.set(&rng.normal_tensor(v.dims(), 0.3, &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        t.add_head("en", 7, &mut rng).unwrap();
        let groups = t.groups_for(FinetuneMethod::Lora, "en");
        t.set_trainable(&groups).unwrap();
        t
    }

    /// Two padded sentences and their labels.
    fn batch() -> (Tensor, Tensor, Tensor) {
        let d = &Device::Cpu;
        let ids = Tensor::new(&[[1u32, 5, 7, 11, 2, 0], [1, 9, 13, 2, 0, 0]], d).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], d).unwrap();
        let labels = Tensor::new(
            &[
                [-100i64, 1, 2, 0, -100, -100],
                [-100, 5, 6, -100, -100, -100],
            ],
            d,
        )
        .unwrap();
        (ids, mask, labels)
    }

    fn inputs<'a>(ids: &'a Tensor, mask: &'a Tensor) -> EncoderInputs<'a> {
        EncoderInputs {
            input_ids: ids,
            attention_mask: mask,
            token_type_ids: None,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The LoRA Vars of `t` by name.
    fn lora_vars(t: &Tagger) -> Vec<(String, Var)> {
        let pe = &t.pe.as_ref().unwrap().params;
        pe.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()
    }

    /// At `lora_dropout` 0 a training forward is what it was before the dropout existed: the
    /// encoder over the merged weights `W + s·B·A`, bit for bit, drawing nothing more from the
    /// dropout stream (the BERT dropout's masks are the same), with the same gradients.
    #[test]
    fn dropout_zero_is_the_merged_weight_forward_bit_for_bit() {
        let (ids, mask, _) = batch();
        let x = inputs(&ids, &mask);
        let t = lora_tagger(0.0, 0.1);
        let (mut rng, mut rng_ref) = (SeededRng::new(9), SeededRng::new(9));
        let y = t.encode(&x, Some(&mut rng)).unwrap();
        let own = &t.pe.as_ref().unwrap().params;
        let lora = Lora {
            r: 2,
            alpha: 4.0,
            targets: LoraTarget::ALL.to_vec(),
            dropout: 0.0,
        };
        let mut merged = TensorSet::new();
        for (w, a, b, _) in lora.slots(&t.config) {
            let m = merged_weight(
                t.encoder.weight(&w).unwrap(),
                own.weight(&b).unwrap(),
                own.weight(&a).unwrap(),
                lora.scale(),
            )
            .unwrap();
            merged.insert(w, m).unwrap();
        }
        let overlay = Overlay {
            base: &t.encoder,
            overrides: &merged,
        };
        let y_ref = encode(&t.config, &overlay, &x, Some(&mut rng_ref)).unwrap();
        assert_eq!(values(&y), values(&y_ref));
        assert_eq!(rng.next_u64(), rng_ref.next_u64(), "the stream moved apart");
        let probe = SeededRng::new(3)
            .normal_tensor(y.dims(), 1.0, &Device::Cpu)
            .unwrap();
        let g = backward(&(&y * &probe).unwrap().sum_all().unwrap()).unwrap();
        let g_ref = backward(&(&y_ref * &probe).unwrap().sum_all().unwrap()).unwrap();
        for (n, v) in lora_vars(&t) {
            let (a, b) = (
                g.get(v.as_tensor()).unwrap(),
                g_ref.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(values(a), values(b), "{n}");
        }
    }

    /// Evaluation (no dropout stream) reads the merged weight whatever `lora_dropout` is: the
    /// same output as at dropout 0, bit for bit, and as the frozen encoder; a training forward
    /// at dropout 0.3 differs from the one at dropout 0 with the same stream.
    #[test]
    fn evaluation_reads_the_merged_weight_at_any_dropout() {
        let (ids, mask, _) = batch();
        let x = inputs(&ids, &mask);
        let (t, t0) = (lora_tagger(0.3, 0.1), lora_tagger(0.0, 0.1));
        let y = t.encode(&x, None).unwrap();
        assert_eq!(values(&y), values(&t0.encode(&x, None).unwrap()));
        let frozen = t.frozen_encoder().unwrap().encode(&x).unwrap();
        assert!(max_abs(&y, &frozen) < 1e-5);
        let train = |t: &Tagger| t.encode(&x, Some(&mut SeededRng::new(4))).unwrap();
        assert!(max_abs(&train(&t), &train(&t0)) > 1e-3);
    }

    /// With dropout so small that no input is dropped (every mask value 1/(1−p) ≈ 1), the
    /// activation-space forward equals the merged-weight one in value and in A's and B's
    /// gradients: the branch is added to each of the six linears where the merge puts it,
    /// with its scale (the query's softmax scale included).
    #[test]
    fn branch_at_vanishing_dropout_equals_the_merged_weight() {
        let (ids, mask, labels) = batch();
        let x = inputs(&ids, &mask);
        let t = lora_tagger(1e-7, 0.0);
        let branch = t
            .loss(&x, &labels, "en", Some(&mut SeededRng::new(5)))
            .unwrap();
        let merged = t.loss(&x, &labels, "en", None).unwrap();
        let (lb, lm) = (
            branch.to_scalar::<f32>().unwrap(),
            merged.to_scalar::<f32>().unwrap(),
        );
        assert!((lb - lm).abs() < 1e-5, "{lb} vs {lm}");
        let (gb, gm) = (backward(&branch).unwrap(), backward(&merged).unwrap());
        for (n, v) in lora_vars(&t) {
            let d = max_abs(
                gb.get(v.as_tensor()).unwrap(),
                gm.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "{n}: {d}");
        }
    }

    /// One branch term against an independent computation with the same mask (drawn from
    /// the same seed): `s·((x⊙m)·Aᵀ)·Bᵀ`, and the gradients of A, B and x of `Σ term⊙G`
    /// written out as sums. A linear LoRA does not adapt gets no term.
    #[test]
    fn branch_and_its_gradients_match_an_independent_computation() {
        let dev = Device::Cpu;
        let (rows, inp, out, r, p) = (6, 5, 4, 2, 0.4);
        let lora = Lora {
            r,
            alpha: 3.0,
            targets: vec![LoraTarget::AttentionOutput],
            dropout: p,
        };
        let s = lora.scale() as f32;
        let mut rng = SeededRng::new(12);
        let x = Var::from_tensor(&rng.normal_tensor(&[2, 3, inp], 1.0, &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&rng.normal_tensor(&[r, inp], 0.5, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&rng.normal_tensor(&[out, r], 0.5, &dev).unwrap()).unwrap();
        let probe = rng.normal_tensor(&[2, 3, out], 1.0, &dev).unwrap();
        let mut own = ParamSet::new();
        own.insert(
            "encoder.layer.1.attention.output.dense.lora_A".into(),
            a.clone(),
        )
        .unwrap();
        own.insert(
            "encoder.layer.1.attention.output.dense.lora_B".into(),
            b.clone(),
        )
        .unwrap();
        let weight = "attention.output.dense.weight";
        let untouched = lora.linear_branch(1, "attention.self.query.weight", &x, &own, &mut rng);
        assert!(untouched.unwrap().is_none());
        let term = lora
            .linear_branch(1, weight, &x, &own, &mut SeededRng::new(30))
            .unwrap()
            .unwrap();
        assert_eq!(term.dims(), &[2, 3, out]);
        let g = backward(&(&term * &probe).unwrap().sum_all().unwrap()).unwrap();

        let m = SeededRng::new(30).dropout_mask_vec(rows * inp, p as f32);
        assert!(m.contains(&0.0) && m.iter().any(|&v| v > 1.0));
        let (xv, av, bv, gv) = (
            values(x.as_tensor()),
            values(a.as_tensor()),
            values(b.as_tensor()),
            values(&probe),
        );
        let xm: Vec<f32> = xv.iter().zip(&m).map(|(x, m)| x * m).collect();
        // z = xm·Aᵀ [rows, r]; gb = G·B [rows, r].
        let mut z = vec![0f32; rows * r];
        let mut gb = vec![0f32; rows * r];
        for i in 0..rows {
            for j in 0..r {
                z[i * r + j] = (0..inp).map(|k| xm[i * inp + k] * av[j * inp + k]).sum();
                gb[i * r + j] = (0..out).map(|o| gv[i * out + o] * bv[o * r + j]).sum();
            }
        }
        let close = |name: &str, got: &Tensor, want: &[f32]| {
            let got = values(got);
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                    "{name}[{i}]: {g} vs {w}"
                );
            }
        };
        let mut y = vec![0f32; rows * out];
        for i in 0..rows {
            for o in 0..out {
                y[i * out + o] = s * (0..r).map(|j| z[i * r + j] * bv[o * r + j]).sum::<f32>();
            }
        }
        close("term", &term, &y);
        let mut db = vec![0f32; out * r];
        for o in 0..out {
            for j in 0..r {
                db[o * r + j] = s
                    * (0..rows)
                        .map(|i| gv[i * out + o] * z[i * r + j])
                        .sum::<f32>();
            }
        }
        close("dB", g.get(b.as_tensor()).unwrap(), &db);
        let mut da = vec![0f32; r * inp];
        for j in 0..r {
            for k in 0..inp {
                da[j * inp + k] = s
                    * (0..rows)
                        .map(|i| gb[i * r + j] * xm[i * inp + k])
                        .sum::<f32>();
            }
        }
        close("dA", g.get(a.as_tensor()).unwrap(), &da);
        let mut dx = vec![0f32; rows * inp];
        for i in 0..rows {
            for k in 0..inp {
                let through_a: f32 = (0..r).map(|j| gb[i * r + j] * av[j * inp + k]).sum();
                dx[i * inp + k] = s * m[i * inp + k] * through_a;
            }
        }
        close("dx", g.get(x.as_tensor()).unwrap(), &dx);
    }

    /// In a training forward with `lora_dropout` 0.3 (and the BERT dropout on), the gradients of
    /// A and B through the whole tagger match central differences of the loss under the same
    /// masks (the stream re-seeded for every evaluation).
    #[test]
    fn training_gradients_of_a_and_b_match_finite_differences() {
        let (ids, mask, labels) = batch();
        let x = inputs(&ids, &mask);
        let t = lora_tagger(0.3, 0.1);
        let loss = |t: &Tagger| t.loss(&x, &labels, "en", Some(&mut SeededRng::new(11)));
        let grads = backward(&loss(&t).unwrap()).unwrap();
        let pe = &t.pe.as_ref().unwrap().params;
        let h = 1e-2f64;
        for name in [
            "encoder.layer.0.attention.self.query.lora_A",
            "encoder.layer.0.attention.self.value.lora_B",
            "encoder.layer.1.intermediate.dense.lora_A",
            "encoder.layer.1.output.dense.lora_B",
        ] {
            let var = pe.get(name).unwrap();
            let g = values(grads.get(var.as_tensor()).unwrap());
            let base = values(var.as_tensor());
            for i in [0, base.len() / 2, base.len() - 1] {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta as f32;
                    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&t).unwrap().to_scalar::<f32>().unwrap() as f64
                };
                let num = (at(h) - at(-h)) / (2.0 * h);
                var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                let ana = g[i] as f64;
                assert!(
                    (num - ana).abs() < 5e-3 * ana.abs().max(2e-2),
                    "{name}[{i}]: numeric {num} vs analytic {ana}"
                );
            }
        }
    }

    /// A few SGD steps with `lora_dropout` 0.3 from one seed give the same A and B bit for bit
    /// twice; another seed gives others (the masks act on training).
    #[test]
    fn seeded_training_with_dropout_repeats_bit_for_bit() {
        let (ids, mask, labels) = batch();
        let x = inputs(&ids, &mask);
        let train = |seed: u64| {
            let t = lora_tagger(0.3, 0.1);
            let mut rng = SeededRng::new(seed);
            for _ in 0..3 {
                let loss = t.loss(&x, &labels, "en", Some(&mut rng)).unwrap();
                let g = backward(&loss).unwrap();
                for (_, v) in lora_vars(&t) {
                    let step = (g.get(v.as_tensor()).unwrap() * 0.5).unwrap();
                    v.set(&(v.as_tensor() - step).unwrap()).unwrap();
                }
            }
            lora_vars(&t)
                .into_iter()
                .map(|(n, v)| (n, values(v.as_tensor())))
                .collect::<Vec<_>>()
        };
        let (first, again, other) = (train(17), train(17), train(18));
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

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
