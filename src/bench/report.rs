//! What `primer bench` found, and how it reads as text and as JSON.

use super::memory::MemoryKind;
use super::peak::{CHAINS, CpuFeatures, FmaPeak};
use super::workload::WorkloadSize;
use crate::config::{Precision, PrecisionChoice, SupportMode};
use crate::device::DeviceSpec;
use crate::prime::bench::MetaBenchSpec;
use serde_json::{Value, json};
use std::fmt;

/// One line of the comparison table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// A stable name for the JSON output (`full_ft`, `meta_pe_same`, ...).
    pub key: String,
    pub label: String,
    /// Median ms (NaN when not measured).
    pub primer_ms: f64,
    pub torch_ms: Option<f64>,
    /// The input tokens the measured work reads: batch × seq for every batch it reads (one for
    /// a fine-tuning step; tasks × (support batches + query) for a meta outer step).
    pub tokens: usize,
    /// Peak memory of primer's measurement ([`BenchReport::memory_kind`]).
    pub primer_peak_bytes: Option<u64>,
    /// Peak memory of PyTorch's (its allocator's peak on a GPU, its process's peak RSS on
    /// the CPU).
    pub torch_peak_bytes: Option<u64>,
}

impl Row {
    /// Tokens per second at `ms` per measured unit of work.
    pub fn tokens_per_s(&self, ms: f64) -> f64 {
        self.tokens as f64 / (ms / 1e3)
    }
}

/// The encoder work of the whole adapter-tuning run on both sides, and the times it took.
#[derive(Debug, Clone, PartialEq)]
pub struct RunWork {
    /// One PyTorch adapter step's encoder forward (batch × seq, padded, every row).
    pub torch_step_flops: f64,
    pub run_steps: usize,
    /// primer's one cache pass (length-sorted batches, last layer at the labelled rows).
    pub cache_flops: f64,
    pub cache_ms: f64,
    pub torch_step_ms: Option<f64>,
    pub fma_peak_gflops: Option<f64>,
    pub threads: usize,
    /// The padded batch shape of a PyTorch step.
    pub batch: usize,
    pub seq: usize,
}

impl RunWork {
    /// Speed-up ceilings of the run over PyTorch's loop if training on cached outputs were
    /// free: at PyTorch's own FLOP rate (the work ratio), and with the cache pass at the FMA
    /// peak (nothing computes faster on this machine).
    pub fn ceilings(&self) -> (f64, Option<f64>) {
        let torch_run_flops = self.torch_step_flops * self.run_steps as f64;
        let at_equal_rate = torch_run_flops / self.cache_flops;
        let at_peak = match (self.torch_step_ms, self.fma_peak_gflops) {
            (Some(step), Some(peak)) => {
                let cache_ms_at_peak = self.cache_flops / (peak * 1e6);
                Some(step * self.run_steps as f64 / cache_ms_at_peak)
            }
            _ => None,
        };
        (at_equal_rate, at_peak)
    }
}

/// A measured phase and the matrix-product work it does (the same on both sides).
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub label: String,
    pub flops: f64,
    pub primer_ms: Option<f64>,
    pub torch_ms: Option<f64>,
}

/// GFLOP/s of `flops` done in `ms`.
pub fn gflops(flops: f64, ms: f64) -> f64 {
    flops / (ms * 1e6)
}

/// Nominal matrix-product FLOPs of the bench's steps, in units of one encoder forward `f`
/// over a padded batch: a backward costs two forwards (input and weight gradients).
pub mod work {
    use super::*;

    /// Full fine-tuning: forward and backward through the encoder.
    pub fn full_step(f: f64) -> f64 {
        3.0 * f
    }

    /// Adapter tuning: the frozen encoder's forward only (the adapter and head are tiny).
    pub fn adapter_step(f: f64) -> f64 {
        f
    }

    /// A meta-PE outer step: per task, the support batches encoded once each without a graph
    /// (one batch reused, or one per inner step) and the query batch forward and backward.
    pub fn meta_pe_step(f: f64, spec: &MetaBenchSpec) -> f64 {
        let support = match spec.support {
            SupportMode::Same => 1.0,
            SupportMode::Distinct => spec.inner_steps as f64,
        };
        spec.tasks as f64 * (support * f + 3.0 * f)
    }

    /// A MAML-loop outer step: per task, every inner step and the query forward and backward
    /// through the whole encoder.
    pub fn meta_full_step(f: f64, spec: &MetaBenchSpec) -> f64 {
        spec.tasks as f64 * (spec.inner_steps as f64 + 1.0) * 3.0 * f
    }
}

/// The arithmetic of each side's matrix products (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionReport {
    /// `--precision` as given.
    pub requested: PrecisionChoice,
    /// What primer's measurements ran in (`tf32` on a CPU runs fp32, `auto` resolves by the
    /// device), as a `primer finetune` run would.
    pub primer: Precision,
    /// What the PyTorch side says it ran in; None when it did not run (or did not say).
    pub torch: Option<Precision>,
}

impl fmt::Display for PrecisionReport {
    /// E.g. "precision primer bf16, PyTorch bf16", with "(tf32 asked)" where a side's differs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let torch = self.torch.map_or("-", Precision::as_str);
        write!(f, "precision primer {}, PyTorch {torch}", self.primer)?;
        let asked = self.requested.as_str();
        if asked != self.primer.as_str() || self.torch.is_some_and(|t| t.as_str() != asked) {
            write!(f, " ({asked} asked)")?;
        }
        Ok(())
    }
}

/// Everything `primer bench` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub device: DeviceSpec,
    /// The GPU's name (on a GPU).
    pub device_name: Option<String>,
    /// The GPU's (total, in use at the end) bytes.
    pub device_memory: Option<(u64, u64)>,
    pub size: WorkloadSize,
    pub precision: PrecisionReport,
    pub threads: usize,
    /// Timed steps per measurement.
    pub steps: usize,
    pub rows: Vec<Row>,
    /// What the rows' primer memory figures are.
    pub memory_kind: MemoryKind,
    /// Why the PyTorch side, or part of it, did not run (empty when it all ran).
    pub torch_notes: Vec<String>,
    pub run: RunWork,
    /// The host's CPU model.
    pub cpu_model: String,
    /// The CPU's ISA features and fp32 FMA peak: measured only when the steps ran on the CPU.
    pub features: Option<CpuFeatures>,
    /// What ran primer's GEMMs ([`crate::model::sgemm::GemmBackend::describe`]).
    pub gemm_backend: String,
    pub peak: Option<FmaPeak>,
    pub phases: Vec<Phase>,
}

impl BenchReport {
    /// The fastest rate any measured phase of either side reached: (GFLOP/s, phase, side).
    pub fn best_phase(&self) -> Option<(f64, &str, &'static str)> {
        self.phases
            .iter()
            .flat_map(|p| {
                [(p.primer_ms, "primer"), (p.torch_ms, "PyTorch")]
                    .into_iter()
                    .filter_map(move |(ms, side)| {
                        ms.map(|ms| (gflops(p.flops, ms), p.label.as_str(), side))
                    })
            })
            .filter(|(g, _, _)| g.is_finite())
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// What [`super::steps_only`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepsReport {
    /// What the steps computed in.
    pub precision: Precision,
    pub cpu_model: String,
    pub threads: usize,
    pub gemm_backend: String,
    /// Wall and process CPU milliseconds of each timed full-FT step, in order.
    pub full: StepSamples,
    /// The same for the adapter step.
    pub adapter: StepSamples,
}

/// Wall and CPU times of a series of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSamples {
    pub wall_ms: Vec<f64>,
    /// CPU time of every thread of the process during the step.
    pub cpu_ms: Vec<f64>,
}

impl fmt::Display for StepsReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nan = crate::prime::bench::Spread {
            median_ms: f64::NAN,
            min_ms: f64::NAN,
            max_ms: f64::NAN,
        };
        for (label, s) in [
            ("full-FT step", &self.full),
            ("adapter step", &self.adapter),
        ] {
            let wall = crate::prime::bench::spread(&s.wall_ms).unwrap_or(nan);
            let cpu = crate::prime::bench::spread(&s.cpu_ms).unwrap_or(nan);
            writeln!(
                out,
                "{label}: median {:.1} ms (min {:.1}, max {:.1}, {} steps); process CPU time \
                 median {:.1} ms",
                wall.median_ms,
                wall.min_ms,
                wall.max_ms,
                s.wall_ms.len(),
                cpu.median_ms,
            )?;
        }
        writeln!(out, "precision: {}", self.precision.as_str())?;
        writeln!(out, "CPU: {} · {} threads", self.cpu_model, self.threads)?;
        writeln!(out, "primer's GEMM backend: {}", self.gemm_backend)?;
        writeln!(
            out,
            "(CPU time counts every thread, idle spinning included: the work of a step when \
             other processes share the cores and wall times scatter)"
        )
    }
}

fn ms_cell(ms: Option<f64>) -> String {
    match ms {
        Some(v) if !v.is_nan() => format!("{v:.1}"),
        _ => "-".into(),
    }
}

fn mib_cell(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| {
        format!("{:.0}", b as f64 / (1u64 << 20) as f64)
    })
}

/// The measured ms, when it was measured (not NaN).
fn measured(ms: Option<f64>) -> Option<f64> {
    ms.filter(|v| v.is_finite())
}

impl BenchReport {
    /// Where the steps ran, e.g. "cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)".
    pub fn device_label(&self) -> String {
        let mut s = self.device.to_string();
        match (&self.device_name, self.device_memory) {
            (Some(name), Some((total, _))) => s.push_str(&format!(
                " ({name}, {:.1} GiB)",
                total as f64 / 2f64.powi(30)
            )),
            (Some(name), None) => s.push_str(&format!(" ({name})")),
            _ => {}
        }
        s
    }

    /// The machine-readable report (`primer bench --json`).
    pub fn to_json(&self) -> Value {
        let c = &self.size.config;
        let side = |ms: Option<f64>, peak: Option<u64>, r: &Row| {
            measured(ms).map(|ms| {
                json!({"median_ms": ms, "tokens_per_s": r.tokens_per_s(ms),
                       "peak_memory_bytes": peak})
            })
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let primer = side(Some(r.primer_ms), r.primer_peak_bytes, r);
                let torch = side(r.torch_ms, r.torch_peak_bytes, r);
                let ratio = match (measured(Some(r.primer_ms)), measured(r.torch_ms)) {
                    (Some(p), Some(t)) => Some(p / t),
                    _ => None,
                };
                json!({"key": r.key, "label": r.label, "tokens_per_step": r.tokens,
                       "primer": primer, "torch": torch, "ratio": ratio})
            })
            .collect();
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|p| {
                let rate = |ms: Option<f64>| measured(ms).map(|ms| gflops(p.flops, ms));
                json!({"label": p.label, "gflop": p.flops / 1e9,
                       "primer_gflops": rate(p.primer_ms), "torch_gflops": rate(p.torch_ms)})
            })
            .collect();
        let torch_memory = match self.device {
            DeviceSpec::Cpu => "process_peak_rss",
            DeviceSpec::Cuda(_) => "cuda_allocator_peak",
        };
        json!({
            "device": self.device.to_string(),
            "device_name": self.device_name,
            "device_memory": self.device_memory.map(|(total, used)| json!({
                "total_bytes": total, "in_use_bytes_at_end": used})),
            "size": {
                "name": self.size.name, "init": "random",
                "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads,
                "intermediate_size": c.intermediate_size,
                "batch": self.size.batch, "seq": self.size.seq,
            },
            "precision": {
                "requested": self.precision.requested,
                "primer": self.precision.primer,
                "torch": self.precision.torch,
            },
            "threads": self.threads,
            "steps": self.steps,
            "memory_kind": self.memory_kind,
            "memory_note": self.memory_kind.describe(),
            "torch": {
                "ran": self.rows.iter().any(|r| measured(r.torch_ms).is_some()),
                "notes": self.torch_notes,
                "memory_kind": torch_memory,
            },
            "rows": rows,
            "phases": phases,
            "cpu": {
                "model": self.cpu_model,
                "fma_peak_gflops": self.peak.as_ref().map(|p| p.gflops),
                "fma_peak_wall_gflops": self.peak.as_ref().map(|p| p.wall_gflops),
                "fma_probe_isa": self.peak.as_ref().map(|p| p.isa.label()),
                "gemm_isa": self.features.map(|f| f.gemm_isa().label()),
                // Only CPU steps run primer's fused kernels, the GEMM backend's users.
                "gemm_backend": self.features.is_some().then_some(&self.gemm_backend),
            },
        })
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            out,
            "primer bench on {}: {}, random init; {}; {} timed steps per measurement, {} threads",
            self.device_label(),
            self.size.describe(),
            self.precision,
            self.steps,
            self.threads
        )?;
        writeln!(
            out,
            "{:<78} {:>11} {:>11} {:>8}",
            "measurement (median ms)", "primer", "PyTorch", "ratio"
        )?;
        for r in &self.rows {
            let ratio = match r.torch_ms {
                Some(t) if !r.primer_ms.is_nan() => format!("{:.2}", r.primer_ms / t),
                _ => "-".into(),
            };
            writeln!(
                out,
                "{:<78} {:>11} {:>11} {ratio:>8}",
                r.label,
                ms_cell(Some(r.primer_ms)),
                ms_cell(r.torch_ms)
            )?;
        }
        writeln!(
            out,
            "ratio = primer / PyTorch (below 1 means primer is faster)"
        )?;
        for note in &self.torch_notes {
            writeln!(out, "PyTorch: {note}")?;
        }
        self.write_throughput_and_memory(out)?;
        write_run_ceiling(out, &self.run)?;
        self.write_machine_and_phases(out)
    }
}

impl BenchReport {
    fn write_throughput_and_memory(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out)?;
        writeln!(
            out,
            "{:<78} {:>8} {:>13} {:>13} {:>10} {:>10}",
            "throughput and peak memory (MiB)",
            "tokens",
            "primer tok/s",
            "PyTorch tok/s",
            "primer",
            "PyTorch"
        )?;
        let rate = |r: &Row, ms: Option<f64>| {
            measured(ms).map_or("-".into(), |ms| format!("{:.0}", r.tokens_per_s(ms)))
        };
        for r in &self.rows {
            writeln!(
                out,
                "{:<78} {:>8} {:>13} {:>13} {:>10} {:>10}",
                r.label,
                r.tokens,
                rate(r, Some(r.primer_ms)),
                rate(r, r.torch_ms),
                mib_cell(r.primer_peak_bytes),
                mib_cell(r.torch_peak_bytes)
            )?;
        }
        let torch_memory = match self.device {
            DeviceSpec::Cpu => "its process's peak RSS so far",
            DeviceSpec::Cuda(_) => "torch.cuda.max_memory_allocated over the measurement",
        };
        writeln!(
            out,
            "tokens = batch × seq for every batch the measured work reads; memory: primer's = \
             {}; PyTorch's = {torch_memory}",
            self.memory_kind.describe()
        )
    }
}

/// How close the adapter-tuning run is to what skipping encoder work can buy on this machine.
fn write_run_ceiling(out: &mut fmt::Formatter<'_>, w: &RunWork) -> fmt::Result {
    writeln!(out)?;
    writeln!(
        out,
        "adapter-tuning run, encoder work in matrix products: PyTorch {:.1} GFLOP per step \
         ({} × {} padded), {:.0} over its {} steps; primer's cache {:.0} GFLOP once \
         (length-sorted batches, last layer at the labelled rows)",
        w.torch_step_flops / 1e9,
        w.batch,
        w.seq,
        w.torch_step_flops * w.run_steps as f64 / 1e9,
        w.run_steps,
        w.cache_flops / 1e9
    )?;
    let mut rates = Vec::new();
    if let Some(step) = w.torch_step_ms {
        rates.push(format!(
            "PyTorch adapter step {:.0} GFLOP/s",
            gflops(w.torch_step_flops, step)
        ));
    }
    rates.push(format!(
        "primer's encoder cache {:.0} GFLOP/s",
        gflops(w.cache_flops, w.cache_ms)
    ));
    if let Some(peak) = w.fma_peak_gflops {
        rates.push(format!(
            "this machine's fp32 FMA peak at {} threads {peak:.0} GFLOP/s",
            w.threads
        ));
    }
    writeln!(out, "rates: {}", rates.join(" · "))?;
    let (at_equal_rate, at_peak) = w.ceilings();
    let at_peak = at_peak.map_or(String::new(), |c| {
        format!(", {c:.1}× with the cache pass at the FMA peak")
    });
    writeln!(
        out,
        "the run's speed-up ceiling if cached training steps were free: {at_equal_rate:.1}× at \
         PyTorch's FLOP rate{at_peak}"
    )
}

impl BenchReport {
    fn write_machine_and_phases(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out)?;
        match (&self.peak, &self.features) {
            (Some(peak), Some(features)) => {
                writeln!(out, "CPU: {} · {} threads", self.cpu_model, self.threads)?;
                writeln!(
                    out,
                    "FMA-peak probe: {}, {CHAINS} independent FMA chains per thread on all {} \
                     threads, best of 5 repetitions",
                    peak.isa.label(),
                    peak.threads
                )?;
                writeln!(
                    out,
                    "gemm crate kernels (candle's, and primer's without a BLAS): {} — gemm 0.19 \
                     built with x86-v4 takes its AVX-512F kernels when the CPU has avx512f, else \
                     its AVX2+FMA ones",
                    features.gemm_isa().label()
                )?;
                writeln!(out, "primer's GEMM backend: {}", self.gemm_backend)?;
                writeln!(
                    out,
                    "fp32 FMA peak at {} threads: {:.0} GFLOP/s (each thread's FLOPs per second \
                     of its own CPU time, summed; over wall time {:.0} GFLOP/s — lower when \
                     other processes share the cores)",
                    peak.threads, peak.gflops, peak.wall_gflops
                )?;
            }
            _ => {
                writeln!(
                    out,
                    "device: {} · host CPU: {} · {} threads",
                    self.device_label(),
                    self.cpu_model,
                    self.threads
                )?;
                writeln!(
                    out,
                    "the CPU's FMA-peak probe and GEMM-kernel lines are skipped: the steps ran on \
                     {}, not on this CPU",
                    self.device
                )?;
            }
        }
        writeln!(out)?;
        writeln!(
            out,
            "{:<62} {:>7} {:>15} {:>15}",
            "phase (nominal matrix-product work, F = one encoder forward)",
            "GFLOP",
            "primer GFLOP/s",
            "PyTorch GFLOP/s"
        )?;
        let peak = self.peak.as_ref().map(|p| p.gflops);
        let cell = |ms: Option<f64>, flops: f64| match measured(ms) {
            Some(ms) => {
                let g = gflops(flops, ms);
                match peak {
                    Some(peak) => format!("{g:.0} ({:.0}%)", 100.0 * g / peak),
                    None => format!("{g:.0}"),
                }
            }
            None => "-".into(),
        };
        for p in &self.phases {
            writeln!(
                out,
                "{:<62} {:>7.1} {:>15} {:>15}",
                p.label,
                p.flops / 1e9,
                cell(p.primer_ms, p.flops),
                cell(p.torch_ms, p.flops)
            )?;
        }
        if peak.is_some() {
            writeln!(out, "(%) = fraction of the fp32 FMA peak")?;
        }
        match (peak, self.best_phase()) {
            (Some(peak), Some((g, label, side))) => {
                let verdict = if g <= peak {
                    "below the peak"
                } else {
                    "ABOVE the probe's peak: the probe underestimates it, or the machine's load \
                     changed between the measurements"
                };
                writeln!(
                    out,
                    "fastest phase: {side}'s {label}, {g:.0} GFLOP/s = {:.0}% of the peak \
                     ({verdict})",
                    100.0 * g / peak
                )?;
            }
            (None, Some((g, label, side))) => {
                writeln!(out, "fastest phase: {side}'s {label}, {g:.0} GFLOP/s")?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::peak::Isa;
    use crate::bench::workload::SizeName;

    fn run_work() -> RunWork {
        RunWork {
            torch_step_flops: 20e9,
            run_steps: 60,
            cache_flops: 300e9,
            cache_ms: 2000.0,
            torch_step_ms: Some(150.0),
            fma_peak_gflops: Some(200.0),
            threads: 2,
            batch: 16,
            seq: 64,
        }
    }

    #[test]
    fn run_ceilings_follow_from_work_and_rates() {
        let w = run_work();
        let (equal, peak) = w.ceilings();
        // 60 × 20 GFLOP against 300 GFLOP; 9 s of PyTorch against 300 GFLOP at 200 GFLOP/s.
        assert!((equal - 4.0).abs() < 1e-12);
        assert!((peak.unwrap() - 6.0).abs() < 1e-12);
        let w = RunWork {
            fma_peak_gflops: None,
            ..w
        };
        assert_eq!(w.ceilings().1, None);
    }

    #[test]
    fn step_work_counts_forwards_and_backwards() {
        let f = 10.0;
        assert_eq!(work::full_step(f), 30.0);
        assert_eq!(work::adapter_step(f), 10.0);
        // 2 tasks × (1 support encode + query forward and backward).
        assert_eq!(
            work::meta_pe_step(f, &MetaBenchSpec::meta_pe()),
            2.0 * (10.0 + 30.0)
        );
        let distinct = MetaBenchSpec {
            support: SupportMode::Distinct,
            ..MetaBenchSpec::meta_pe()
        };
        // 2 tasks × (5 support encodes + query forward and backward).
        assert_eq!(work::meta_pe_step(f, &distinct), 2.0 * (50.0 + 30.0));
        // 2 tasks × (5 inner steps + query), each forward and backward.
        assert_eq!(
            work::meta_full_step(f, &MetaBenchSpec::meta_full_distinct()),
            2.0 * 6.0 * 30.0
        );
    }

    fn report() -> BenchReport {
        BenchReport {
            device: DeviceSpec::Cpu,
            device_name: None,
            device_memory: None,
            size: SizeName::Minilm.workload(),
            precision: PrecisionReport {
                requested: PrecisionChoice::Fp32,
                primer: Precision::Fp32,
                torch: Some(Precision::Fp32),
            },
            threads: 2,
            steps: 5,
            rows: vec![Row {
                key: "full_ft".into(),
                label: "full-FT step".into(),
                primer_ms: 500.0,
                torch_ms: Some(400.0),
                tokens: 1024,
                primer_peak_bytes: Some(3 << 20),
                torch_peak_bytes: None,
            }],
            memory_kind: MemoryKind::ProcessPeakRss,
            torch_notes: vec![],
            run: run_work(),
            cpu_model: "Test CPU".into(),
            gemm_backend: "test backend".into(),
            features: Some(CpuFeatures {
                avx512f: true,
                avx2: true,
                fma: true,
            }),
            peak: Some(FmaPeak {
                isa: Isa::Avx512f,
                threads: 2,
                gflops: 200.0,
                wall_gflops: 150.0,
            }),
            phases: vec![
                Phase {
                    label: "a".into(),
                    flops: 60e9,
                    primer_ms: Some(500.0),
                    torch_ms: Some(400.0),
                },
                Phase {
                    label: "b".into(),
                    flops: 20e9,
                    primer_ms: Some(200.0),
                    torch_ms: None,
                },
            ],
        }
    }

    #[test]
    fn the_fastest_phase_of_either_side_is_found_and_judged_against_the_peak() {
        let report = report();
        assert_eq!(report.best_phase(), Some((150.0, "a", "PyTorch")));
        let text = report.to_string();
        assert!(
            text.contains("fp32 FMA peak at 2 threads: 200 GFLOP/s"),
            "{text}"
        );
        assert!(text.contains("150 (75%)"), "{text}");
        assert!(text.contains("below the peak"), "{text}");
        assert!(text.contains("CPU: Test CPU"), "{text}");
        assert!(
            text.contains("primer's GEMM backend: test backend"),
            "{text}"
        );
        assert!(text.contains("minilm size (H384, L6"), "{text}");
        assert!(
            text.contains("random init; precision primer fp32, PyTorch fp32; 5 timed steps"),
            "{text}"
        );
    }

    /// The header and the JSON say what each side ran in, and what was asked where that
    /// differs (tf32 on a CPU, auto, a PyTorch side that did not run).
    #[test]
    fn the_precision_of_each_side_is_reported() {
        let with = |requested, primer, torch| BenchReport {
            precision: PrecisionReport {
                requested,
                primer,
                torch,
            },
            ..report()
        };
        use {Precision as P, PrecisionChoice as C};
        let header = |r: BenchReport| r.to_string().lines().next().unwrap().to_string();
        for (r, want) in [
            (
                with(C::Bf16, P::Bf16, Some(P::Bf16)),
                "; precision primer bf16, PyTorch bf16; ",
            ),
            (
                with(C::Tf32, P::Fp32, Some(P::Fp32)),
                "; precision primer fp32, PyTorch fp32 (tf32 asked); ",
            ),
            (
                with(C::Auto, P::Bf16, Some(P::Bf16)),
                "; precision primer bf16, PyTorch bf16 (auto asked); ",
            ),
            (
                with(C::Bf16, P::Bf16, None),
                "; precision primer bf16, PyTorch -; ",
            ),
        ] {
            assert!(header(r.clone()).contains(want), "{}", header(r));
        }
        let v = with(C::Tf32, P::Fp32, None).to_json();
        assert_eq!(
            v["precision"],
            json!({"requested": "tf32", "primer": "fp32", "torch": null})
        );
    }

    /// On a GPU the CPU's probe lines give way to the device, rates have no peak to be a
    /// fraction of, and a PyTorch side that did not run says why.
    #[test]
    fn a_gpu_report_names_the_device_and_leaves_out_the_cpu_peak() {
        let report = BenchReport {
            device: DeviceSpec::Cuda(0),
            device_name: Some("Test GPU".into()),
            device_memory: Some((80 << 30, 3 << 30)),
            memory_kind: MemoryKind::CudaPoolPeak,
            features: None,
            peak: None,
            torch_notes: vec!["not run: torch has no CUDA device".into()],
            rows: vec![Row {
                torch_ms: None,
                ..report().rows[0].clone()
            }],
            phases: vec![Phase {
                torch_ms: None,
                ..report().phases[0].clone()
            }],
            ..report()
        };
        let text = report.to_string();
        assert!(text.contains("cuda:0 (Test GPU, 80.0 GiB)"), "{text}");
        assert!(text.contains("FMA-peak probe and GEMM-kernel lines are skipped"));
        assert!(!text.contains("(%)"), "{text}");
        assert!(
            text.contains("fastest phase: primer's a, 120 GFLOP/s\n"),
            "{text}"
        );
        assert!(text.contains("PyTorch: not run: torch has no CUDA device"));
        let v = report.to_json();
        assert_eq!(v["device"], "cuda:0");
        assert_eq!(v["memory_kind"], "cuda_pool_peak");
        assert_eq!(v["torch"]["ran"], false);
        assert_eq!(v["rows"][0]["torch"], Value::Null);
        assert_eq!(v["cpu"]["fma_peak_gflops"], Value::Null);
    }

    /// tokens/s is the row's tokens over its median time, on both sides; the ratio is
    /// primer / PyTorch; the size is spelled out.
    #[test]
    fn json_rows_carry_times_rates_and_memory() {
        let v = report().to_json();
        let row = &v["rows"][0];
        assert_eq!(row["key"], "full_ft");
        assert_eq!(row["tokens_per_step"], 1024);
        assert_eq!(row["primer"]["median_ms"], 500.0);
        assert_eq!(row["primer"]["tokens_per_s"], 2048.0);
        assert_eq!(row["primer"]["peak_memory_bytes"], 3 << 20);
        assert_eq!(row["torch"]["tokens_per_s"], 2560.0);
        assert_eq!(row["torch"]["peak_memory_bytes"], Value::Null);
        assert_eq!(row["ratio"], 1.25);
        assert_eq!(v["size"]["name"], "minilm");
        assert_eq!(v["size"]["hidden_size"], 384);
        assert_eq!(
            (v["size"]["batch"].as_u64(), v["size"]["seq"].as_u64()),
            (Some(16), Some(64))
        );
        assert_eq!(v["memory_kind"], "process_peak_rss");
        assert_eq!(v["torch"]["ran"], true);
        assert_eq!(v["cpu"]["fma_peak_gflops"], 200.0);
        assert_eq!(v["cpu"]["gemm_backend"], "test backend");
        assert_eq!(v["phases"][1]["primer_gflops"], 100.0);
    }
}
