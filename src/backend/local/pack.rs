//! `primer run --per-device auto`: each device's memory budget for the scheduler's packing
//! ([`super::sched::Packing`]), from its free memory when the sweep starts and each run's
//! estimate (`crate::cost::memory`).
//!
//! * A GPU's budget is the driver's free memory less [`SAFETY_MARGIN`]; each run also pays
//!   [`CUDA_RUNTIME_BYTES`] for its own process (context, kernels, cuBLAS workspace), and at
//!   most [`MAX_RUNS_PER_GPU`] share one GPU (beyond that they only queue for its cores).
//! * The CPU's budget is MemAvailable (under a cgroup limit, the room left in it) less the
//!   margin, [`CPU_RUNTIME_BYTES`] per run; and at most one run per
//!   [`MIN_THREADS_PER_CPU_RUN`] cores, each child then given cores / runs threads: more runs
//!   than that would split the cores into threads too few for candle's matrix products to
//!   scale, trading each run's speed for little throughput while multiplying memory.
//!
//! Free memory is read once, before any run starts: what the runs then take is accounted by
//! their estimates, not by asking again.

use super::sched::{DeviceBudget, Packing};
use crate::device::{DeviceError, DeviceSpec, MemoryProbe};

/// Share of the free memory kept back for what the estimates miss (allocator fragmentation,
/// other processes).
pub const SAFETY_MARGIN: f64 = 0.10;
/// What one run's process holds on its GPU besides the run's own tensors.
pub const CUDA_RUNTIME_BYTES: u64 = 768 << 20;
/// What one run's process holds on the CPU besides its tensors (binary, tokenizer, data).
pub const CPU_RUNTIME_BYTES: u64 = 256 << 20;
/// Cores each packed CPU run gets at least.
pub const MIN_THREADS_PER_CPU_RUN: usize = 2;
/// Runs sharing one GPU at most.
pub const MAX_RUNS_PER_GPU: usize = 8;

/// The scheduler's settings for `--per-device auto`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoLayout {
    /// Slots per device (the largest number of runs any device may hold).
    pub per_device: usize,
    pub packing: Packing,
    /// Runs the CPU holds at most (0: the CPU is not used), for the children's thread count.
    pub cpu_runs: usize,
    /// One line per device saying what was decided.
    pub notes: Vec<String>,
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Budgets of `devices` for runs needing `need` bytes each (index = task), read from `probe`.
pub fn auto_layout(
    devices: &[DeviceSpec],
    need: Vec<u64>,
    probe: &dyn MemoryProbe,
) -> Result<AutoLayout, DeviceError> {
    let mut budgets = Vec::new();
    let mut notes = Vec::new();
    let mut cpu_runs = 0;
    let (lo, hi) = (
        need.iter().copied().min().unwrap_or(0),
        need.iter().copied().max().unwrap_or(0),
    );
    for &device in devices {
        let free = probe.free_bytes(device)?;
        let bytes = (free as f64 * (1.0 - SAFETY_MARGIN)) as u64;
        let (per_run_overhead, max_runs, why) = match device {
            DeviceSpec::Cuda(_) => (
                CUDA_RUNTIME_BYTES,
                MAX_RUNS_PER_GPU,
                format!("at most {MAX_RUNS_PER_GPU} run(s)"),
            ),
            DeviceSpec::Cpu => {
                let cores = probe.cpu_cores();
                cpu_runs = (cores / MIN_THREADS_PER_CPU_RUN).max(1);
                (
                    CPU_RUNTIME_BYTES,
                    cpu_runs,
                    format!(
                        "at most {cpu_runs} run(s) for {cores} cores (≥ {MIN_THREADS_PER_CPU_RUN} threads each)"
                    ),
                )
            }
        };
        notes.push(format!(
            "{device}: {:.1} GiB free, runs packed within {:.1} GiB ({:.0}% kept back), \
             {:.2} GiB per run for its process, {why}",
            gib(free),
            gib(bytes),
            100.0 * SAFETY_MARGIN,
            gib(per_run_overhead),
        ));
        budgets.push(DeviceBudget {
            device,
            bytes,
            per_run_overhead,
            max_runs,
        });
    }
    if !need.is_empty() {
        notes.push(format!(
            "runs need {:.2}-{:.2} GiB each by estimate; one that does not fit runs alone, \
             one out of memory beside others is retried alone",
            gib(lo),
            gib(hi)
        ));
    }
    Ok(AutoLayout {
        per_device: budgets.iter().map(|b| b.max_runs).max().unwrap_or(1),
        packing: Packing { budgets, need },
        cpu_runs,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed free memory per device and a core count.
    struct FakeProbe {
        free: Vec<(DeviceSpec, u64)>,
        cores: usize,
    }

    impl MemoryProbe for FakeProbe {
        fn free_bytes(&self, device: DeviceSpec) -> Result<u64, DeviceError> {
            self.free
                .iter()
                .find(|f| f.0 == device)
                .map(|f| f.1)
                .ok_or(DeviceError::Unavailable {
                    device: device.to_string(),
                    message: "no such fake device".into(),
                })
        }
        fn cpu_cores(&self) -> usize {
            self.cores
        }
    }

    const GB: u64 = 1 << 30;

    #[test]
    fn budgets_keep_a_margin_and_cpu_runs_are_capped_by_cores() {
        let probe = FakeProbe {
            free: vec![(DeviceSpec::Cuda(0), 80 * GB), (DeviceSpec::Cpu, 64 * GB)],
            cores: 7,
        };
        let l = auto_layout(
            &[DeviceSpec::Cuda(0), DeviceSpec::Cpu],
            vec![GB, 3 * GB],
            &probe,
        )
        .unwrap();
        let b = &l.packing.budgets;
        assert_eq!(b[0].bytes, 72 * GB);
        assert_eq!(b[0].per_run_overhead, CUDA_RUNTIME_BYTES);
        assert_eq!(b[0].max_runs, MAX_RUNS_PER_GPU);
        assert_eq!(b[1].max_runs, 3, "7 cores, two threads per run at least");
        assert_eq!(l.cpu_runs, 3);
        assert_eq!(l.per_device, MAX_RUNS_PER_GPU);
        assert_eq!(l.packing.need, vec![GB, 3 * GB]);
        assert!(
            l.notes[0].starts_with("cuda:0: 80.0 GiB free"),
            "{:?}",
            l.notes
        );
        assert!(l.notes[2].contains("1.00-3.00 GiB"), "{:?}", l.notes);

        let one_core = FakeProbe {
            free: vec![(DeviceSpec::Cpu, 8 * GB)],
            cores: 1,
        };
        let l = auto_layout(&[DeviceSpec::Cpu], vec![GB], &one_core).unwrap();
        assert_eq!((l.per_device, l.cpu_runs), (1, 1));
        // A device the probe cannot read is an error, not a guess.
        assert!(auto_layout(&[DeviceSpec::Cuda(1)], vec![GB], &one_core).is_err());
    }
}
