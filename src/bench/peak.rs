//! This machine's fp32 FMA peak: the ceiling every GEMM-bound phase of the bench works under,
//! and what the bench reports each phase's FLOP rate against.
//!
//! The probe runs a register-blocked loop of fused multiply-adds at the widest vector ISA the
//! CPU has (AVX-512F zmm, else AVX2 + FMA ymm, else plain arithmetic), on every thread of the
//! bench at once, best of a few repetitions, each thread's rate taken over its own CPU time
//! (so that other processes on a shared machine lower the phases' rates, not the peak). [`CHAINS`] independent accumulators per thread
//! cover the FMA latency times the number of FMA units (4 cycles × 2 units on Intel server
//! cores, 8 in flight; AMD Zen 4 splits a zmm FMA over its two 256-bit units), so only the
//! FMA units limit the loop — an honest peak even where two 512-bit units exist.

use super::error::BenchError;
use crate::op_timing::thread_cpu_seconds;
use std::time::Instant;

/// Independent accumulators per thread.
pub const CHAINS: usize = 12;

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 512-bit zmm registers, 16 f32 lanes, `vfmadd` (AVX-512F).
    Avx512f,
    /// 256-bit ymm registers, 8 f32 lanes, `vfmadd` (AVX2 + FMA).
    Avx2Fma,
    /// No vector FMA: separate multiply and add (the compiler may still use SSE).
    Scalar,
}

impl Isa {
    pub fn label(self) -> &'static str {
        match self {
            Isa::Avx512f => "AVX-512F (zmm, 16 f32 lanes)",
            Isa::Avx2Fma => "AVX2 + FMA (ymm, 8 f32 lanes)",
            Isa::Scalar => "scalar (no AVX2/FMA)",
        }
    }

    /// f32 values per register.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512f => 16,
            Isa::Avx2Fma => 8,
            Isa::Scalar => 1,
        }
    }

    /// FLOPs of one iteration of the probe loop: one FMA (a multiply and an add) per lane of
    /// each of the [`CHAINS`] accumulators.
    pub fn flops_per_iteration(self) -> usize {
        CHAINS * self.lanes() * 2
    }
}

/// The x86 features the choices depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    pub avx512f: bool,
    pub avx2: bool,
    pub fma: bool,
}

impl CpuFeatures {
    /// What this CPU has (all false off x86-64).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx512f: std::is_x86_feature_detected!("avx512f"),
                avx2: std::is_x86_feature_detected!("avx2"),
                fma: std::is_x86_feature_detected!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::default()
    }

    /// The widest ISA the probe can run here.
    pub fn probe_isa(self) -> Isa {
        if self.avx512f {
            Isa::Avx512f
        } else if self.avx2 && self.fma {
            Isa::Avx2Fma
        } else {
            Isa::Scalar
        }
    }

    /// The f32 kernels the `gemm` crate (0.19, candle's and primer's GEMMs) picks here. Its
    /// `init_gemm_fn` takes its avx512f kernels when built with the `x86-v4` feature (this
    /// crate's Cargo.toml turns it on) and `avx512f` is detected, else its fma kernels
    /// (256-bit, AVX2 + FMA) when `fma` is, else scalar ones. This mirrors that rule; the
    /// crate offers no way to ask it which one it took.
    pub fn gemm_isa(self) -> Isa {
        if self.avx512f {
            Isa::Avx512f
        } else if self.fma {
            Isa::Avx2Fma
        } else {
            Isa::Scalar
        }
    }
}

/// The probe's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FmaPeak {
    pub isa: Isa,
    pub threads: usize,
    /// The peak: the sum over the threads of each one's FLOPs per second of its own CPU time
    /// (best repetition). On a quiet machine this is the wall-clock rate; on a busy one it is
    /// still what the cores do while they run, where the wall-clock rate also counts the time
    /// other processes held them.
    pub gflops: f64,
    /// All threads' FLOPs over the wall time of the best repetition.
    pub wall_gflops: f64,
}

/// Iterations per thread and repetition: ~8 GFLOP per thread with AVX-512, tens of ms.
const ITERS: usize = 20_000_000;
/// Timed repetitions (the best counts), after one that lets the clocks ramp up.
const REPS: usize = 5;

/// The fp32 FMA peak at `threads` threads, in GFLOP/s, at the widest ISA this CPU has.
pub fn fma_peak(threads: usize) -> Result<FmaPeak, BenchError> {
    let isa = CpuFeatures::detect().probe_isa();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| BenchError::Threads {
            threads,
            message: e.to_string(),
        })?;
    let per_thread = (ITERS * isa.flops_per_iteration()) as f64;
    // (wall-clock rate, sum of the threads' CPU-time rates) of one repetition.
    let once = || {
        let t0 = Instant::now();
        let cpu_seconds = pool.broadcast(|_| {
            let c0 = thread_cpu_seconds();
            std::hint::black_box(fma_chains(isa, ITERS));
            Some(thread_cpu_seconds()? - c0?)
        });
        let wall = per_thread * threads as f64 / t0.elapsed().as_secs_f64();
        let cpu: Option<f64> = cpu_seconds
            .iter()
            .map(|s| s.filter(|&s| s > 0.0).map(|s| per_thread / s))
            .sum();
        (wall, cpu.unwrap_or(wall).max(wall))
    };
    once();
    let (wall, cpu) = (0..REPS)
        .map(|_| once())
        .fold((0f64, 0f64), |(w, c), (w1, c1)| (w.max(w1), c.max(c1)));
    Ok(FmaPeak {
        isa,
        threads,
        gflops: cpu / 1e9,
        wall_gflops: wall / 1e9,
    })
}

/// Runs the probe loop at `isa` for `iters` iterations and returns the sum of every
/// accumulator. Each accumulator starts at 1 and runs `x ← x·½ + 1` (exact in binary, and
/// converging to 2, so the values never overflow or go subnormal). An ISA this CPU lacks
/// falls back to the widest one it has.
pub fn fma_chains(isa: Isa, iters: usize) -> f32 {
    let (a, b) = std::hint::black_box((0.5f32, 1.0f32));
    let iters = std::hint::black_box(iters);
    #[cfg(target_arch = "x86_64")]
    {
        let have = CpuFeatures::detect();
        if isa == Isa::Avx512f && have.avx512f {
            // SAFETY: AVX-512F was detected.
            return unsafe { x86::chains_avx512(iters, a, b) };
        }
        if isa != Isa::Scalar && have.avx2 && have.fma {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { x86::chains_avx2(iters, a, b) };
        }
    }
    let _ = isa;
    chains_scalar(iters, a, b)
}

fn chains_scalar(iters: usize, a: f32, b: f32) -> f32 {
    let mut acc = [1f32; CHAINS];
    for _ in 0..iters {
        for r in &mut acc {
            *r = *r * a + b;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn chains_avx512(iters: usize, a: f32, b: f32) -> f32 {
        let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for r in &mut acc {
                *r = _mm512_fmadd_ps(*r, va, vb);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &r| _mm512_add_ps(s, r));
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds the 16 floats the unaligned store writes.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn chains_avx2(iters: usize, a: f32, b: f32) -> f32 {
        let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for r in &mut acc {
                *r = _mm256_fmadd_ps(*r, va, vb);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &r| _mm256_add_ps(s, r));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds the 8 floats the unaligned store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}

/// The CPU's model name from the text of `/proc/cpuinfo` (its first `model name` line).
pub fn cpu_model_of(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

/// This machine's CPU model, or a note saying why it is not known.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| cpu_model_of(&t))
        .unwrap_or_else(|| "unknown (no model name in /proc/cpuinfo)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_takes_the_widest_isa_and_gemm_follows_its_own_rule() {
        let f = |avx512f, avx2, fma| CpuFeatures { avx512f, avx2, fma };
        assert_eq!(f(true, true, true).probe_isa(), Isa::Avx512f);
        assert_eq!(f(false, true, true).probe_isa(), Isa::Avx2Fma);
        assert_eq!(f(false, true, false).probe_isa(), Isa::Scalar);
        assert_eq!(f(false, false, true).probe_isa(), Isa::Scalar);
        assert_eq!(f(true, true, true).gemm_isa(), Isa::Avx512f);
        // gemm's fma kernels ask for `fma` alone.
        assert_eq!(f(false, false, true).gemm_isa(), Isa::Avx2Fma);
        assert_eq!(f(false, true, false).gemm_isa(), Isa::Scalar);
    }

    #[test]
    fn flops_per_iteration_count_both_halves_of_every_lane_of_every_chain() {
        assert_eq!(Isa::Avx512f.flops_per_iteration(), CHAINS * 16 * 2);
        assert_eq!(Isa::Avx2Fma.flops_per_iteration(), CHAINS * 8 * 2);
        assert_eq!(Isa::Scalar.flops_per_iteration(), CHAINS * 2);
    }

    /// Every kernel this CPU can run computes the recurrence: after n steps each lane holds
    /// 2 − 2⁻ⁿ exactly.
    #[test]
    fn every_kernel_computes_the_recurrence_on_every_lane() {
        let have = CpuFeatures::detect();
        let expected_lane = 2.0 - 2f32.powi(-10);
        for isa in [Isa::Avx512f, Isa::Avx2Fma, Isa::Scalar] {
            let runs = match isa {
                Isa::Avx512f => have.avx512f,
                Isa::Avx2Fma => have.avx2 && have.fma,
                Isa::Scalar => true,
            };
            if !runs {
                continue;
            }
            let sum = fma_chains(isa, 10);
            assert_eq!(
                sum,
                (CHAINS * isa.lanes()) as f32 * expected_lane,
                "{isa:?}"
            );
        }
        assert_eq!(chains_scalar(10, 0.5, 1.0), CHAINS as f32 * expected_lane);
    }

    #[test]
    fn cpu_model_is_read_from_the_first_model_name_line() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: fpu\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_model_of(text).as_deref(),
            Some("AMD EPYC 9R14 96-Core Processor")
        );
        assert_eq!(cpu_model_of("processor : 0\n"), None);
    }
}
