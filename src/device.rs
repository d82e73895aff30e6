//! Parsing of `--device` values (`cpu`, `cuda:N`) into candle devices, with an up-front error
//! when CUDA is requested but not compiled in or not present.

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': use 'cpu' or 'cuda:N' (for example cuda:0)")]
    Unknown(String),
    #[error(
        "device '{0}' needs CUDA, but this primer was built without it: rebuild with `cargo build --release --features cuda`"
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
                    message: e.to_string(),
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

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_fails_up_front() {
        let err = open_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
