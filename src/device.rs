//! Parsing of `--device` values (`cpu`, `cuda:N`) into candle devices, with an up-front error
//! when CUDA is requested but not compiled in or not present.

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': use 'cpu' or 'cuda:N' (for example cuda:0)")]
    Unknown(String),
    #[error(
        "device '{0}' needs CUDA, but this primer was built without it: rebuild with `make check-cuda` (a `--features cuda` build linked the way the GPU machine needs; README, Building)"
    )]
    NotCompiled(String),
    #[error("device '{device}' is not available: {message}")]
    Unavailable { device: String, message: String },
}

/// Makes glibc keep freed memory for reuse instead of handing it back to the kernel.
///
/// A CPU training step allocates and frees tensors of a few MB hundreds of times (activations,
/// gradients, candle's zero-initialised gradient accumulators). With glibc's defaults such
/// blocks are `mmap`ed and unmapped or trimmed on every free, so each step pays page faults
/// and kernel zeroing for memory it just released: measured at ~15% of a MiniLM-size full
/// fine-tuning step. Raising the mmap threshold to its maximum (32 MiB on 64-bit) and never
/// trimming keeps those blocks in the heap; the cost is that the process's resident size stays
/// at its high-water mark. Call once, first thing, before any thread starts. A no-op elsewhere.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 << 20;
        // SAFETY: mallopt only changes allocator tunables; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}

/// A parsed device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self, DeviceError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(DeviceSpec::Cpu);
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            return n
                .parse()
                .map(DeviceSpec::Cuda)
                .map_err(|_| DeviceError::Unknown(s.to_string()));
        }
        if s == "cuda" {
            return Ok(DeviceSpec::Cuda(0));
        }
        Err(DeviceError::Unknown(s.to_string()))
    }

    /// Opens the device (fails clearly when CUDA is missing).
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(DeviceError::NotCompiled(format!("cuda:{i}")));
                }
                Device::new_cuda(i).map_err(|e| DeviceError::Unavailable {
                    device: format!("cuda:{i}"),
                    message: cuda_init_message(&e),
                })
            }
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Parses and opens a device string in one go.
pub fn open_device(s: &str) -> Result<Device, DeviceError> {
    DeviceSpec::parse(s)?.open()
}

/// The exit status of `primer exec` when the run ran out of memory (see [`is_out_of_memory`]):
/// the local scheduler then retries the run alone on its device before counting a failure.
pub const OUT_OF_MEMORY_EXIT_STATUS: u8 = 3;

/// Whether an error message says a device ran out of memory: the CUDA driver's and cuBLAS's
/// allocation failures as candle reports them, and Rust's own failed allocation.
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "cuda_error_out_of_memory",
        "cublas_status_alloc_failed",
        "out of memory",
    ]
    .iter()
    .any(|k| m.contains(k))
        || (m.contains("memory allocation of") && m.contains("failed"))
}

/// The memory of the devices runs are packed on (`primer run --per-device auto`), behind a
/// trait so that the packing is tested with fake devices.
pub trait MemoryProbe {
    /// Bytes that runs started now may use on `device`.
    fn free_bytes(&self, device: DeviceSpec) -> Result<u64, DeviceError>;
    /// CPU cores this process may use.
    fn cpu_cores(&self) -> usize;
}

/// This machine: MemAvailable of /proc/meminfo (lowered to the room left under a cgroup v2
/// memory limit) for the CPU; the driver's free memory for a CUDA GPU (`--features cuda`).
pub struct SystemProbe;

impl MemoryProbe for SystemProbe {
    fn free_bytes(&self, device: DeviceSpec) -> Result<u64, DeviceError> {
        match device {
            DeviceSpec::Cpu => cpu_available_bytes(),
            DeviceSpec::Cuda(i) => cuda_free_bytes(i),
        }
    }

    fn cpu_cores(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// What went wrong when a CUDA device would not open, for a user: candle's message without the
/// backtrace candle attaches under `RUST_BACKTRACE` (frames of the driver call say nothing
/// here), and the fix for the one failure this project's own build can cause.
fn cuda_init_message(e: &candle_core::Error) -> String {
    let inner = match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.as_ref(),
        other => other,
    };
    let message = inner.to_string();
    if message.contains("CUDA_ERROR_STUB_LIBRARY") {
        format!(
            "{message}; the libcuda.so.1 loaded is the link stub `make check-cuda` builds \
             (target/cuda/cuda-link): take it off LD_LIBRARY_PATH so the NVIDIA driver's is loaded"
        )
    } else {
        message
    }
}

fn cpu_available_bytes() -> Result<u64, DeviceError> {
    let unavailable = |message: String| DeviceError::Unavailable {
        device: "cpu".into(),
        message,
    };
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| unavailable(format!("cannot read /proc/meminfo: {e}")))?;
    let available = parse_mem_available(&text)
        .ok_or_else(|| unavailable("/proc/meminfo has no MemAvailable line".into()))?;
    // A container's limit is not in /proc/meminfo; the kernel kills at the cgroup's limit.
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let cgroup_room = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) => match (max.trim().parse::<u64>(), cur.trim().parse::<u64>()) {
            (Ok(max), Ok(cur)) => Some(max.saturating_sub(cur)),
            _ => None, // "max": no limit
        },
        _ => None,
    };
    Ok(cgroup_room.map_or(available, |room| room.min(available)))
}

/// The `MemAvailable` of a /proc/meminfo text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line["MemAvailable:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(n * 1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(feature = "cuda")]
fn cuda_free_bytes(i: usize) -> Result<u64, DeviceError> {
    let device = DeviceSpec::Cuda(i).open()?;
    let Device::Cuda(cuda) = &device else {
        unreachable!("a CUDA spec opens a CUDA device")
    };
    // The primary context is shared with candle's; freed again when `device` is dropped.
    let (free, _total) =
        cuda.cuda_stream()
            .context()
            .mem_get_info()
            .map_err(|e| DeviceError::Unavailable {
                device: format!("cuda:{i}"),
                message: format!("cannot read its free memory: {e}"),
            })?;
    Ok(free as u64)
}

#[cfg(not(feature = "cuda"))]
fn cuda_free_bytes(i: usize) -> Result<u64, DeviceError> {
    Err(DeviceError::NotCompiled(format!("cuda:{i}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        assert!(DeviceSpec::parse("tpu").is_err());
        assert!(DeviceSpec::parse("cuda:x").is_err());
    }

    #[test]
    fn cuda_init_message_drops_the_backtrace_and_names_the_stub_fix() {
        let stub = candle_core::Error::Msg("DriverError(CUDA_ERROR_STUB_LIBRARY, \"stub\")".into());
        let with_bt = candle_core::Error::WithBacktrace {
            inner: Box::new(stub),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let m = cuda_init_message(&with_bt);
        assert!(!m.contains('\n'), "no backtrace frames: {m}");
        assert!(
            m.contains("CUDA_ERROR_STUB_LIBRARY") && m.contains("LD_LIBRARY_PATH"),
            "{m}"
        );
        let other = candle_core::Error::Msg("no CUDA-capable device is detected".into());
        assert_eq!(
            cuda_init_message(&other),
            "no CUDA-capable device is detected"
        );
    }

    #[test]
    fn mem_available_and_out_of_memory_messages() {
        let meminfo =
            "MemTotal:       16303412 kB\nMemFree:  1000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(8_000_000 * 1024));
        assert_eq!(parse_mem_available("MemFree: 1 kB\n"), None);
        assert!(SystemProbe.free_bytes(DeviceSpec::Cpu).unwrap() > 0);
        for oom in [
            "training step: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "cublas: CUBLAS_STATUS_ALLOC_FAILED",
            "memory allocation of 34359738368 bytes failed",
        ] {
            assert!(is_out_of_memory(oom), "{oom}");
        }
        assert!(!is_out_of_memory("non-finite loss at step 3"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_fails_up_front() {
        let err = open_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
