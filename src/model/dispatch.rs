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
//! thread that builds it; the kernels' internal rayon workers make no choice.
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

use candle_core::{DType, Tensor};
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
}

/// Whether ops built on this thread may take primer's fused CPU kernels.
pub fn cpu_kernels_on() -> bool {
    PROCESS_KERNELS.load(Ordering::Relaxed) && COMPOSITE_DEPTH.with(|d| d.get() == 0)
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
