//! AdamW with torch semantics and a linear learning-rate schedule.
//!
//! One step, for every parameter p with gradient g (t = that parameter's step count):
//!
//! ```text
//! p ← p − lr·wd·p                      (decoupled weight decay, when p decays)
//! m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
//! p ← p − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)
//! ```
//!
//! as `torch.optim.AdamW`. The learning rate is `lr · schedule(k)` where k counts the
//! optimiser steps taken before this one (HF `get_linear_schedule_with_warmup`: the scheduler
//! steps after the optimiser). Parameters without a gradient in the [`GradStore`] are
//! skipped (their moments and step count stay as they are, as in torch).
//!
//! On the CPU each parameter is updated in place in one fused pass over (p, g, m, v) with
//! the moments held as plain vectors; on other devices the same update is composed from
//! candle ops.
//!
//! ```no_run
//! # use primer::train::optim::{AdamW, AdamWConfig, LinearSchedule};
//! # fn demo(vars: Vec<(String, candle_core::Var)>, loss: candle_core::Tensor) -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = AdamWConfig { lr: 5e-5, weight_decay: 0.01, ..AdamWConfig::default() };
//! let mut opt = AdamW::new(vars, cfg)?.with_schedule(LinearSchedule::from_ratio(1000, 0.1));
//! let grads = primer::model::backward(&loss)?;
//! opt.step(&grads)?;
//! # Ok(()) }
//! ```

use crate::op_timing::{OpKind, timed};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use std::cell::RefCell;

/// Errors of the optimiser.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("invalid AdamW setting: {0}")]
    Invalid(String),
}

/// AdamW hyper-parameters (torch defaults but the learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay biases and LayerNorm weights too (torch's default); false excludes them, as
    /// BERT fine-tuning recipes usually do.
    pub decay_bias_and_norm: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decay_bias_and_norm: true,
        }
    }
}

/// Whether a parameter name denotes a bias or a LayerNorm parameter (the usual no-decay set).
pub fn is_bias_or_norm(name: &str) -> bool {
    name.ends_with("bias") || name.contains("LayerNorm") || name.contains("layer_norm")
}

/// Linear warm-up to the peak rate, then linear decay to 0 at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearSchedule {
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LinearSchedule {
    /// `ceil(ratio · total)` warm-up steps (HF Trainer's rounding).
    pub fn from_ratio(total_steps: usize, warmup_ratio: f64) -> Self {
        Self {
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as usize,
            total_steps,
        }
    }

    /// The learning-rate multiplier after `step` optimiser steps:
    /// `step/warmup` during warm-up, then `max(0, (total−step)/(total−warmup))`.
    pub fn multiplier(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let rest = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        (self.total_steps.saturating_sub(step) as f64 / rest as f64).max(0.0)
    }
}

enum Moments {
    /// CPU f32 parameters: the moments as plain vectors, updated in the fused kernel.
    Cpu { m: Vec<f32>, v: Vec<f32> },
    /// Anything else: moments as tensors on the parameter's device.
    Tensor { m: Tensor, v: Tensor },
}

struct ParamState {
    name: String,
    var: Var,
    decay: bool,
    steps: u64,
    moments: Moments,
}

/// AdamW over a list of named Vars, updating them in place.
pub struct AdamW {
    cfg: AdamWConfig,
    schedule: Option<LinearSchedule>,
    params: Vec<ParamState>,
    steps: usize,
}

impl AdamW {
    /// An optimiser over `params`; which of them decay follows `cfg.decay_bias_and_norm`.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self, OptimError> {
        // Written positively so that NaN settings are rejected too.
        let valid = cfg.lr >= 0.0
            && cfg.eps > 0.0
            && cfg.weight_decay >= 0.0
            && (0.0..1.0).contains(&cfg.beta1)
            && (0.0..1.0).contains(&cfg.beta2);
        if !valid {
            return Err(OptimError::Invalid(format!("{cfg:?}")));
        }
        let mut states = Vec::with_capacity(params.len());
        for (name, var) in params {
            let decay = cfg.decay_bias_and_norm || !is_bias_or_norm(&name);
            let t = var.as_tensor();
            // The kernel choice is made here, once per parameter (see `model::dispatch`).
            let moments = if crate::model::dispatch::kernel_ok(t) {
                let n = t.elem_count();
                Moments::Cpu {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            } else {
                Moments::Tensor {
                    m: t.zeros_like()?.detach(),
                    v: t.zeros_like()?.detach(),
                }
            };
            states.push(ParamState {
                name,
                var,
                decay,
                steps: 0,
                moments,
            });
        }
        Ok(Self {
            cfg,
            schedule: None,
            params: states,
            steps: 0,
        })
    }

    /// Applies a learning-rate schedule.
    pub fn with_schedule(mut self, schedule: LinearSchedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Overrides per-parameter decay with a predicate on the name.
    pub fn with_decay_filter(mut self, decays: impl Fn(&str) -> bool) -> Self {
        for p in &mut self.params {
            p.decay = decays(&p.name);
        }
        self
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.cfg.lr * self.schedule.map_or(1.0, |s| s.multiplier(self.steps))
    }

    /// Optimiser steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.steps
    }

    /// Names of the parameters and whether each one decays.
    pub fn param_decay(&self) -> Vec<(&str, bool)> {
        self.params
            .iter()
            .map(|p| (p.name.as_str(), p.decay))
            .collect()
    }

    /// One AdamW step with the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), OptimError> {
        let values = self
            .params
            .iter()
            .map(|p| p.var.elem_count())
            .sum::<usize>();
        let _timed = timed(OpKind::Optimiser, &[values], 0.0);
        let lr = self.current_lr();
        let cfg = self.cfg;
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            p.steps += 1;
            let t = p.steps as i32;
            let hp = StepParams {
                lr,
                decay: if p.decay { lr * cfg.weight_decay } else { 0.0 },
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                step_size: lr / (1.0 - cfg.beta1.powi(t)),
                bc2_sqrt: (1.0 - cfg.beta2.powi(t)).sqrt(),
            };
            match &mut p.moments {
                Moments::Cpu { m, v } => {
                    let g = g.to_dtype(DType::F32)?.contiguous()?;
                    let op = FusedAdamW {
                        hp,
                        state: RefCell::new((m.as_mut_slice(), v.as_mut_slice())),
                    };
                    p.var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::Tensor { m, v } => {
                    let g = g.detach();
                    let w = p.var.as_detached_tensor();
                    let w = if hp.decay > 0.0 {
                        (w * (1.0 - hp.decay))?
                    } else {
                        w
                    };
                    *m = ((&*m * hp.beta1)? + (&g * (1.0 - hp.beta1))?)?;
                    *v = ((&*v * hp.beta2)? + (g.sqr()? * (1.0 - hp.beta2))?)?;
                    let denom = ((v.sqrt()? / hp.bc2_sqrt)? + hp.eps)?;
                    let w = (w - (m.div(&denom)? * hp.step_size)?)?;
                    p.var.set(&w)?;
                }
            }
        }
        self.steps += 1;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct StepParams {
    lr: f64,
    decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step_size: f64,
    bc2_sqrt: f64,
}

/// Values per parallel task in the optimiser kernels (AdamW and SGD split alike).
const KERNEL_CHUNK: usize = 1 << 14;

/// The parameter (written in place) and gradient values of an optimiser kernel: both
/// contiguous f32 of the same size.
fn param_and_grad<'a>(
    what: &str,
    dst: &'a mut CpuStorage,
    dst_l: &Layout,
    gs: &'a CpuStorage,
    gl: &Layout,
) -> candle_core::Result<(&'a mut [f32], &'a [f32])> {
    let g = match gl.contiguous_offsets() {
        Some((a, b)) => &gs.as_slice::<f32>()?[a..b],
        None => candle_core::bail!("{what}: gradient must be contiguous"),
    };
    let p = match (dst, dst_l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => &mut v[a..b],
        _ => candle_core::bail!("{what}: parameter must be contiguous f32"),
    };
    if p.len() != g.len() {
        candle_core::bail!("{what}: parameter and gradient sizes differ");
    }
    Ok((p, g))
}

/// The whole AdamW update of one CPU parameter in one pass (in place on the parameter).
struct FusedAdamW<'a> {
    hp: StepParams,
    state: RefCell<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "primer-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (p, g) = param_and_grad("adamw", dst, dst_l, gs, gl)?;
        let mut st = self.state.borrow_mut();
        let (m, v) = &mut *st;
        if m.len() != p.len() {
            candle_core::bail!("adamw: parameter and state sizes differ");
        }
        let hp = self.hp;
        let keep = (1.0 - hp.decay) as f32;
        let (b1, b2) = (hp.beta1 as f32, hp.beta2 as f32);
        let (c1, c2) = (1.0 - b1, 1.0 - b2);
        let step_size = hp.step_size as f32;
        let inv_bc2 = (1.0 / hp.bc2_sqrt) as f32;
        let eps = hp.eps as f32;
        let _ = hp.lr;
        p.par_chunks_mut(KERNEL_CHUNK)
            .zip(g.par_chunks(KERNEL_CHUNK))
            .zip(
                m.par_chunks_mut(KERNEL_CHUNK)
                    .zip(v.par_chunks_mut(KERNEL_CHUNK)),
            )
            .for_each(|((pc, gc), (mc, vc))| {
                for i in 0..pc.len() {
                    let gi = gc[i];
                    let mi = b1 * mc[i] + c1 * gi;
                    let vi = b2 * vc[i] + c2 * gi * gi;
                    mc[i] = mi;
                    vc[i] = vi;
                    let denom = vi.sqrt() * inv_bc2 + eps;
                    pc[i] = pc[i] * keep - step_size * mi / denom;
                }
            });
        Ok(())
    }
}

/// Plain SGD `p ← p − lr·g` on one Var (no momentum, no weight decay: priming's inner loop),
/// unless some gradient value is NaN or infinite: then `var` is left as it was and the result
/// is `false`.
///
/// On the CPU (f32, kernels on) one read of `g` for the check and one in-place pass over `p`;
/// elsewhere composed from candle ops (a sum for the check, then `p − lr·g` into `var`).
pub fn sgd_update(var: &Var, grad: &Tensor, lr: f64) -> Result<bool, OptimError> {
    let p = var.as_tensor();
    if p.dims() != grad.dims() {
        return Err(OptimError::Invalid(format!(
            "sgd: gradient {:?} for a parameter {:?}",
            grad.dims(),
            p.dims()
        )));
    }
    let _timed = timed(OpKind::InnerSgd, &[p.elem_count()], 0.0);
    if crate::model::dispatch::kernel_ok(p) && crate::model::dispatch::kernel_ok(grad) {
        let op = FusedSgd {
            lr: lr as f32,
            finite: std::cell::Cell::new(false),
        };
        p.inplace_op2(&grad.contiguous()?, &op)?;
        return Ok(op.finite.get());
    }
    let sum = grad.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !sum.is_finite() {
        return Ok(false);
    }
    var.set(&(var.as_detached_tensor() - (grad.detach() * lr)?)?)?;
    Ok(true)
}

/// [`sgd_update`]'s CPU kernel: checks `g`, then updates `p` in place.
struct FusedSgd {
    lr: f32,
    finite: std::cell::Cell<bool>,
}

impl InplaceOp2 for FusedSgd {
    fn name(&self) -> &'static str {
        "primer-sgd"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (p, g) = param_and_grad("sgd", dst, dst_l, gs, gl)?;
        let finite = g
            .par_chunks(KERNEL_CHUNK)
            .all(|c| c.iter().all(|v| v.is_finite()));
        self.finite.set(finite);
        if finite {
            let lr = self.lr;
            p.par_chunks_mut(KERNEL_CHUNK)
                .zip(g.par_chunks(KERNEL_CHUNK))
                .for_each(|(pc, gc)| {
                    for (x, &d) in pc.iter_mut().zip(gc) {
                        *x -= lr * d;
                    }
                });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The kernel and the composite give `p − lr·g`; a NaN or infinite gradient leaves the
    /// parameter as it was on both paths.
    #[test]
    fn sgd_update_on_both_paths() {
        let dev = Device::Cpu;
        let n = 40_000; // several kernel chunks
        let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        for composite in [false, true] {
            let _composite = composite.then(crate::model::dispatch::composite_only);
            let var = Var::from_tensor(&Tensor::new(p0.as_slice(), &dev).unwrap()).unwrap();
            let grad = Tensor::new(g.as_slice(), &dev).unwrap();
            assert!(sgd_update(&var, &grad, 0.03).unwrap());
            let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
            for i in 0..n {
                assert!(
                    (got[i] - (p0[i] - 0.03 * g[i])).abs() < 1e-6,
                    "composite={composite} at {i}"
                );
            }
            for bad in [f32::NAN, f32::INFINITY] {
                let mut gb = g.clone();
                gb[n - 3] = bad;
                let before: Vec<f32> = var.as_tensor().to_vec1().unwrap();
                let gb = Tensor::new(gb.as_slice(), &dev).unwrap();
                assert!(
                    !sgd_update(&var, &gb, 0.03).unwrap(),
                    "composite={composite}"
                );
                assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), before);
            }
            let wrong = Tensor::new(&[1f32, 2.], &dev).unwrap();
            assert!(sgd_update(&var, &wrong, 0.03).is_err());
        }
    }

    /// A plain scalar AdamW in f64, written from the torch documentation.
    fn reference(p0: f64, grads: &[f64], lr: f64, wd: f64) -> f64 {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (k, &g) in grads.iter().enumerate() {
            let t = (k + 1) as i32;
            p -= lr * wd * p;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mhat = m / (1.0 - b1.powi(t));
            let vhat = v / (1.0 - b2.powi(t));
            p -= lr * mhat / (vhat.sqrt() + eps);
        }
        p
    }

    fn run(device_tensor_path: bool) {
        // loss = Σ c_i · p_i  → gradient c_i, constant across steps.
        let d = Device::Cpu;
        let w = Var::from_slice(&[1.0f32, -2.0, 0.5], 3, &d).unwrap();
        let b = Var::from_slice(&[0.3f32], 1, &d).unwrap();
        let c = Tensor::new(&[0.1f32, -0.4, 2.0], &d).unwrap();
        let cfg = AdamWConfig {
            lr: 0.01,
            weight_decay: 0.1,
            decay_bias_and_norm: false,
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("layer.bias".into(), b.clone())],
            cfg,
        )
        .unwrap();
        if device_tensor_path {
            for p in &mut opt.params {
                p.moments = Moments::Tensor {
                    m: p.var.zeros_like().unwrap(),
                    v: p.var.zeros_like().unwrap(),
                };
            }
        }
        for _ in 0..3 {
            let loss = ((w.as_tensor() * &c).unwrap().sum_all().unwrap()
                + (b.as_tensor() * 3.0).unwrap().sum_all().unwrap())
            .unwrap();
            let grads = crate::model::backward(&loss).unwrap();
            opt.step(&grads).unwrap();
        }
        let got = w.to_vec1::<f32>().unwrap();
        for (i, (&p0, &g)) in [1.0f64, -2.0, 0.5]
            .iter()
            .zip(&[0.1f64, -0.4, 2.0])
            .enumerate()
        {
            let want = reference(p0, &[g; 3], 0.01, 0.1);
            assert!(
                (got[i] as f64 - want).abs() < 1e-6,
                "w[{i}]: {} vs {want}",
                got[i]
            );
        }
        // The bias is excluded from decay.
        let want_b = reference(0.3, &[3.0; 3], 0.01, 0.0);
        assert!((b.to_vec1::<f32>().unwrap()[0] as f64 - want_b).abs() < 1e-6);
        assert_ne!(want_b, reference(0.3, &[3.0; 3], 0.01, 0.1));
    }

    #[test]
    fn fused_cpu_step_matches_reference() {
        run(false);
    }

    #[test]
    fn composite_step_matches_reference() {
        run(true);
    }

    #[test]
    fn first_step_moves_by_about_lr_and_params_without_grad_are_skipped() {
        let d = Device::Cpu;
        let a = Var::from_slice(&[1.0f32], 1, &d).unwrap();
        let unused = Var::from_slice(&[5.0f32], 1, &d).unwrap();
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![("a".into(), a.clone()), ("u".into(), unused.clone())],
            cfg,
        )
        .unwrap();
        let grads =
            crate::model::backward(&(a.as_tensor() * 1e-3).unwrap().sum_all().unwrap()).unwrap();
        opt.step(&grads).unwrap();
        assert!((a.to_vec1::<f32>().unwrap()[0] - 0.9).abs() < 1e-4);
        assert_eq!(unused.to_vec1::<f32>().unwrap()[0], 5.0);
        assert_eq!(opt.params[1].steps, 0);
    }

    #[test]
    fn linear_schedule_matches_hf() {
        let s = LinearSchedule {
            warmup_steps: 2,
            total_steps: 10,
        };
        let m: Vec<f64> = (0..12).map(|k| s.multiplier(k)).collect();
        assert_eq!(&m[..4], &[0.0, 0.5, 1.0, 0.875]);
        assert_eq!(m[10], 0.0);
        assert_eq!(m[11], 0.0);
        let no_warm = LinearSchedule::from_ratio(4, 0.0);
        assert_eq!(no_warm.multiplier(0), 1.0);
        assert_eq!(no_warm.multiplier(2), 0.5);
        assert_eq!(LinearSchedule::from_ratio(10, 0.15).warmup_steps, 2);
        let d = Device::Cpu;
        let a = Var::from_slice(&[1.0f32], 1, &d).unwrap();
        let mut opt = AdamW::new(
            vec![("a".into(), a.clone())],
            AdamWConfig {
                lr: 1.0,
                ..Default::default()
            },
        )
        .unwrap()
        .with_schedule(s);
        assert_eq!(opt.current_lr(), 0.0);
        let grads = crate::model::backward(&a.as_tensor().sum_all().unwrap()).unwrap();
        opt.step(&grads).unwrap();
        // Warm-up step 0 has lr 0: nothing moves.
        assert_eq!(a.to_vec1::<f32>().unwrap()[0], 1.0);
        assert_eq!(opt.current_lr(), 0.5);
    }

    #[test]
    fn no_decay_names() {
        assert!(is_bias_or_norm(
            "enc.encoder.layer.0.output.LayerNorm.weight"
        ));
        assert!(is_bias_or_norm("head.en.bias"));
        assert!(!is_bias_or_norm("adapter.down.weight"));
    }
}
