//! Which implementation an op runs: primer's fused CPU kernels, or the device-generic composite
//! of differentiable candle ops.
//!
//! Every op with a hand-written CPU kernel — linear, layer norm, softmax, GELU, bias add,
//! attention, the whole encoder layer, the embeddings, and AdamW's update — also has a
//! composite built from candle ops, and the composite is what runs on CUDA (and for other
//! dtypes). The kernels are taken for CPU f32 tensors unless they are turned off:
//!
//! * process-wide with [`set_cpu_kernels`] — the CLI does this for `PRIMER_CPU_KERNELS=off`
//!   ([`cpu_kernels_from_env`]), e.g. to tell whether a suspect number comes from a kernel;
//! * on the current thread with [`composite_only`], which is how the golden tests run the
//!   CUDA path's math on the CPU against the PyTorch dumps, beside the kernels' own run.
//!
//! The choice is made when an op is built (and, for AdamW, when the optimiser is made), on the
//! thread that builds it; the kernels' internal rayon workers make no choice. Threads that
//! build ops on another thread's behalf (`crate::parallel::map_batches`) adopt its choices
//! ([`ThreadChoices`]).
//!
//! The same place decides the arithmetic of the model's matrix products ([`Precision`]):
//! a run sets it for its thread with [`precision_scope`], and every product of the model
//! goes through [`matmul`](super::ops::matmul), which reads it. bf16 is autocast-style mixed
//! precision on the device-generic path: under it the fused kernels are off (they compute in
//! f32 and would silently run fp32).
//!
//! ```
//! use primer::model::dispatch::{composite_only, cpu_kernels_on};
//! assert!(cpu_kernels_on());
//! {
//!     let _composite = composite_only();
//!     assert!(!cpu_kernels_on()); // every op built here takes the device-generic path
//! }
//! assert!(cpu_kernels_on());
//! ```

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable the CLI reads at start-up: `off` (or `0`, `false`) runs every op
/// on the device-generic path; `on` (`1`, `true`, unset, empty) uses the CPU kernels.
pub const CPU_KERNELS_ENV: &str = "PRIMER_CPU_KERNELS";

static PROCESS_KERNELS: AtomicBool = AtomicBool::new(true);

thread_local! {
    /// Nesting depth of [`composite_only`] guards alive on this thread.
    static COMPOSITE_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The precision of the ops this thread builds ([`precision_scope`]).
    static PRECISION: Cell<Precision> = const { Cell::new(Precision::Fp32) };
}

/// Whether ops built on this thread may take primer's fused CPU kernels: not when they are
/// off, nor under bf16 (the kernels compute in f32).
pub fn cpu_kernels_on() -> bool {
    PROCESS_KERNELS.load(Ordering::Relaxed)
        && COMPOSITE_DEPTH.with(|d| d.get() == 0)
        && precision() != Precision::Bf16
}

/// Turns the fused CPU kernels on or off for the whole process (threads inside a
/// [`composite_only`] scope stay off either way).
pub fn set_cpu_kernels(on: bool) {
    PROCESS_KERNELS.store(on, Ordering::Relaxed);
}

/// Reads [`CPU_KERNELS_ENV`]: `Ok(None)` when unset, `Ok(Some(on))` for a recognised value,
/// and an error naming the variable and the accepted values otherwise.
pub fn cpu_kernels_from_env() -> Result<Option<bool>, String> {
    match std::env::var(CPU_KERNELS_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "{CPU_KERNELS_ENV} is not valid UTF-8; set it to `on` or `off`"
        )),
        Ok(v) => parse_switch(&v).map(Some).ok_or_else(|| {
            format!("{CPU_KERNELS_ENV}={v:?} is not understood; set it to `on` or `off`")
        }),
    }
}

fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "on" | "1" | "true" | "yes" => Some(true),
        "off" | "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// While the returned guard lives, ops built on this thread take the device-generic composite
/// path. Guards nest; the guard cannot leave its thread.
#[must_use = "the composite path lasts only while the guard lives"]
pub struct CompositeOnly {
    _not_send: PhantomData<*const ()>,
}

/// Runs this thread's ops on the device-generic path until the guard drops (see the module docs).
pub fn composite_only() -> CompositeOnly {
    COMPOSITE_DEPTH.with(|d| d.set(d.get() + 1));
    CompositeOnly {
        _not_send: PhantomData,
    }
}

impl Drop for CompositeOnly {
    fn drop(&mut self) {
        COMPOSITE_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Whether a fused CPU kernel may read or write `t`: kernels on, `t` on the CPU in f32.
pub(crate) fn kernel_ok(t: &Tensor) -> bool {
    cpu_kernels_on() && t.device().is_cpu() && t.dtype() == DType::F32
}

/// The arithmetic a run's matrix products use (what `metrics.json` records as `effective`).
/// Weights, gradients, optimiser state, layer-norm and softmax statistics and the loss are
/// f32 under all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products with f32 accumulation.
    Fp32,
    /// f32 tensors, products on CUDA's TF32 tensor cores (10-bit mantissa inputs, f32
    /// accumulation): candle's `set_gemm_reduced_precision_f32`. CUDA only.
    Tf32,
    /// Autocast-style: each product casts its inputs (activations and the f32 master weight)
    /// to bf16, multiplies with f32 accumulation (cuBLAS' `CUBLAS_COMPUTE_32F`; candle's CPU
    /// backend widens to f32 and rounds the result), and casts the result back to f32 for
    /// the bias, GELU, layer norm, softmax and loss. The casts' backward hands f32 gradients
    /// to the master weights.
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The dtype matrix products cast their f32 inputs to, if any.
    fn product_dtype(self) -> Option<DType> {
        match self {
            Precision::Bf16 => Some(DType::BF16),
            Precision::Fp32 | Precision::Tf32 => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precision of the ops this thread builds (fp32 unless a [`precision_scope`] says).
pub fn precision() -> Precision {
    PRECISION.with(Cell::get)
}

/// The dtype this thread's matrix products cast f32 inputs to (None: they stay f32).
pub(crate) fn product_dtype() -> Option<DType> {
    precision().product_dtype()
}

/// While the returned guard lives, ops built on this thread compute in `precision`. On a
/// CUDA `device` it also sets candle's TF32 switch for f32 products (on for
/// [`Precision::Tf32`], off otherwise). That switch is process-wide: one run per process, as
/// `primer exec` runs them. The guard restores both on drop; it cannot leave its thread.
#[must_use = "the precision lasts only while the guard lives"]
pub struct PrecisionScope {
    previous: Precision,
    /// candle's TF32 switch before the scope, when the scope set it.
    previous_tf32: Option<bool>,
    _not_send: PhantomData<*const ()>,
}

/// Sets this thread's precision (and, on CUDA, candle's TF32 switch) until the guard drops.
pub fn precision_scope(precision: Precision, device: &Device) -> PrecisionScope {
    let previous = PRECISION.with(|p| p.replace(precision));
    // A CPU has no TF32: the switch is candle's CUDA GEMM setting (a no-op without CUDA).
    let previous_tf32 = device.is_cuda().then(|| {
        let before = candle_core::cuda::gemm_reduced_precision_f32();
        candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
        before
    });
    PrecisionScope {
        previous,
        previous_tf32,
        _not_send: PhantomData,
    }
}

impl Drop for PrecisionScope {
    fn drop(&mut self) {
        PRECISION.with(|p| p.set(self.previous));
        if let Some(tf32) = self.previous_tf32 {
            candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
        }
    }
}

/// A thread's dispatch choices ([`composite_only`], [`precision_scope`]), for a worker thread
/// that builds ops on its behalf to adopt: a run's scoring batches must compute like the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadChoices {
    composite: bool,
    precision: Precision,
}

/// This thread's choices.
pub fn thread_choices() -> ThreadChoices {
    ThreadChoices {
        composite: COMPOSITE_DEPTH.with(|d| d.get() > 0),
        precision: precision(),
    }
}

impl ThreadChoices {
    /// Makes them the current thread's until the guard drops. (CUDA's TF32 switch is
    /// process-wide already, so it is not touched.)
    pub fn adopt(self) -> AdoptedChoices {
        AdoptedChoices {
            _composite: self.composite.then(composite_only),
            _precision: precision_scope(self.precision, &Device::Cpu),
        }
    }
}

/// The guard of [`ThreadChoices::adopt`].
#[must_use = "the choices last only while the guard lives"]
pub struct AdoptedChoices {
    _composite: Option<CompositeOnly>,
    _precision: PrecisionScope,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn guards_nest_and_stay_on_their_thread() {
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!(kernel_ok(&t));
        assert!(!kernel_ok(&t.to_dtype(DType::F64).unwrap()));
        let outer = composite_only();
        {
            let _inner = composite_only();
            assert!(!kernel_ok(&t));
        }
        assert!(!kernel_ok(&t), "the outer guard still holds");
        std::thread::spawn(|| assert!(cpu_kernels_on(), "other threads keep the kernels"))
            .join()
            .unwrap();
        drop(outer);
        assert!(kernel_ok(&t));
    }

    /// bf16 turns the f32 kernels off on its thread only, scopes nest and restore, and a
    /// worker that adopts a thread's choices computes like it.
    #[test]
    fn precision_scopes_nest_turn_the_kernels_off_and_travel_to_workers() {
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(precision(), Precision::Fp32);
        assert_eq!(product_dtype(), None);
        {
            let _bf16 = precision_scope(Precision::Bf16, &Device::Cpu);
            assert!(!kernel_ok(&t), "the f32 kernels would silently run fp32");
            assert_eq!(product_dtype(), Some(DType::BF16));
            {
                let _tf32 = precision_scope(Precision::Tf32, &Device::Cpu);
                assert!(
                    kernel_ok(&t),
                    "TF32 is a CUDA GEMM setting: the CPU runs fp32"
                );
                assert_eq!(product_dtype(), None);
            }
            assert_eq!(
                precision(),
                Precision::Bf16,
                "the inner scope restored bf16"
            );
            let choices = thread_choices();
            std::thread::spawn(move || {
                assert_eq!(precision(), Precision::Fp32, "a bare thread keeps fp32");
                let _adopted = choices.adopt();
                assert_eq!(precision(), Precision::Bf16);
                assert!(!cpu_kernels_on());
            })
            .join()
            .unwrap();
        }
        assert_eq!(precision(), Precision::Fp32);
        assert!(kernel_ok(&t));
        let composite = composite_only();
        let choices = thread_choices();
        drop(composite);
        std::thread::spawn(move || {
            let _adopted = choices.adopt();
            assert!(!cpu_kernels_on(), "composite_only travels too");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn switch_values() {
        for v in ["", "on", "1", "TRUE", " yes "] {
            assert_eq!(parse_switch(v), Some(true), "{v:?}");
        }
        for v in ["off", "0", "False", "no"] {
            assert_eq!(parse_switch(v), Some(false), "{v:?}");
        }
        assert_eq!(parse_switch("composite"), None);
    }
}
