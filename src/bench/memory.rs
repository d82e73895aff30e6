//! Peak memory of the bench's measurements: on the CPU the process's peak resident set
//! (VmHWM), on a CUDA GPU the high-water mark of the memory pool candle allocates from.

use candle_core::Device;

/// What a measurement's memory figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// The process's peak resident set so far (VmHWM of /proc/self/status). Not reset between
    /// measurements: freed memory stays in the heap (`device::retain_freed_memory`), so a
    /// row's figure includes the rows before it.
    ProcessPeakRss,
    /// The high-water mark of the CUDA memory pool candle allocates from (cudarc allocates
    /// with `cuMemAllocAsync`), reset before each measurement: the weights, optimiser state
    /// and activations of that measurement; not cuBLAS's workspace or the CUDA context.
    CudaPoolPeak,
    /// The device's memory in use (total − free, `cuMemGetInfo`) at the end of the
    /// measurement, where the context has no memory pool to read a peak from: a lower bound.
    CudaInUseAtEnd,
    /// Nothing readable here (not Linux, or the driver refused).
    Unavailable,
}

impl MemoryKind {
    pub fn describe(self) -> &'static str {
        match self {
            MemoryKind::ProcessPeakRss => {
                "process peak RSS so far (VmHWM; includes the measurements before)"
            }
            MemoryKind::CudaPoolPeak => {
                "CUDA memory-pool high-water mark during the measurement (weights, optimiser \
                 state, activations; not cuBLAS workspace or the context)"
            }
            MemoryKind::CudaInUseAtEnd => {
                "device memory in use at the end of the measurement (total - free; no pool to \
                 read a peak from)"
            }
            MemoryKind::Unavailable => "not measured",
        }
    }
}

/// Reads the peak memory of measurements on one device.
pub(crate) struct MemoryMeter {
    inner: Meter,
}

enum Meter {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(cuda::CudaMeter),
}

impl MemoryMeter {
    pub fn new(device: &Device) -> Self {
        let inner = match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Meter::Cuda(cuda::CudaMeter::new(d)),
            _ => Meter::Cpu,
        };
        MemoryMeter { inner }
    }

    pub fn kind(&self) -> MemoryKind {
        match &self.inner {
            Meter::Cpu if process_peak_rss().is_some() => MemoryKind::ProcessPeakRss,
            Meter::Cpu => MemoryKind::Unavailable,
            #[cfg(feature = "cuda")]
            Meter::Cuda(m) => m.kind(),
        }
    }

    /// Starts a measurement (resets the high-water mark where there is one to reset).
    pub fn reset(&self) {
        match &self.inner {
            Meter::Cpu => {}
            #[cfg(feature = "cuda")]
            Meter::Cuda(m) => m.reset(),
        }
    }

    /// The measurement's figure (see [`Self::kind`]); `None` when it cannot be read.
    pub fn peak_bytes(&self) -> Option<u64> {
        match &self.inner {
            Meter::Cpu => process_peak_rss(),
            #[cfg(feature = "cuda")]
            Meter::Cuda(m) => m.peak_bytes(),
        }
    }

    /// The device's (total, in use) bytes now, for a GPU; `None` on the CPU.
    pub fn device_memory(&self) -> Option<(u64, u64)> {
        match &self.inner {
            Meter::Cpu => None,
            #[cfg(feature = "cuda")]
            Meter::Cuda(m) => m.device_memory(),
        }
    }

    /// The GPU's name, for a GPU.
    pub fn device_name(&self) -> Option<String> {
        match &self.inner {
            Meter::Cpu => None,
            #[cfg(feature = "cuda")]
            Meter::Cuda(m) => m.name(),
        }
    }
}

/// VmHWM of /proc/self/status in bytes.
fn process_peak_rss() -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The `VmHWM` line of a /proc/PID/status text, in bytes.
pub(crate) fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(n * 1024)
}

#[cfg(feature = "cuda")]
mod cuda {
    //! cudarc's driver calls behind candle's CUDA device. Every call here is best effort: a
    //! failure makes the figure `None`, never the bench fail.
    use super::MemoryKind;
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::cuda_backend::cudarc::driver::{CudaContext, result, sys};
    use std::sync::Arc;

    pub(super) struct CudaMeter {
        ctx: Arc<CudaContext>,
        /// The device's current memory pool, which `cuMemAllocAsync` on candle's stream
        /// allocates from; `None` when the context allocates synchronously.
        pool: Option<sys::CUmemoryPool>,
    }

    impl CudaMeter {
        pub fn new(device: &CudaDevice) -> Self {
            let ctx = device.cuda_stream().context().clone();
            let pool = (ctx.has_async_alloc() && ctx.bind_to_thread().is_ok())
                .then(|| {
                    // SAFETY: the device handle comes from a live context.
                    unsafe { result::device::get_mem_pool(ctx.cu_device()) }.ok()
                })
                .flatten();
            CudaMeter { ctx, pool }
        }

        pub fn kind(&self) -> MemoryKind {
            if self.pool.is_some() {
                MemoryKind::CudaPoolPeak
            } else {
                MemoryKind::CudaInUseAtEnd
            }
        }

        fn used_high(&self) -> Option<u64> {
            let pool = self.pool?;
            let mut v: u64 = 0;
            // SAFETY: the pool is the device's; USED_MEM_HIGH is a cuuint64_t.
            unsafe {
                result::mem_pool::get_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    (&mut v as *mut u64).cast(),
                )
            }
            .ok()?;
            Some(v)
        }

        pub fn reset(&self) {
            let Some(pool) = self.pool else { return };
            // The watermark can only be set to zero; the driver restarts it from there.
            let mut zero: u64 = 0;
            // SAFETY: as in used_high.
            let _ = unsafe {
                result::mem_pool::set_attribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    (&mut zero as *mut u64).cast(),
                )
            };
        }

        pub fn peak_bytes(&self) -> Option<u64> {
            if self.pool.is_some() {
                self.used_high()
            } else {
                self.device_memory().map(|(_, used)| used)
            }
        }

        pub fn device_memory(&self) -> Option<(u64, u64)> {
            let (free, total) = self.ctx.mem_get_info().ok()?;
            Some((total as u64, total.saturating_sub(free) as u64))
        }

        pub fn name(&self) -> Option<String> {
            self.ctx.name().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tprimer\nVmPeak:\t  900 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS:\t 1000 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12 MB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_cpu_meter_reads_this_process() {
        let m = MemoryMeter::new(&Device::Cpu);
        assert_eq!(m.kind(), MemoryKind::ProcessPeakRss);
        m.reset();
        assert!(m.peak_bytes().unwrap() > 0);
        assert_eq!(m.device_memory(), None);
    }
}
