//! What `primer bench` found, and how it reads as text.

use super::peak::{CHAINS, CpuFeatures, FmaPeak};
use super::workload::{BATCH, SEQ};
use crate::config::SupportMode;
use crate::prime::bench::MetaBenchSpec;
use std::fmt;

/// One line of the comparison table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    /// Median ms (NaN when not measured).
    pub primer_ms: f64,
    pub torch_ms: Option<f64>,
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

/// Everything `primer bench` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub threads: usize,
    pub rows: Vec<Row>,
    pub run: RunWork,
    pub cpu_model: String,
    pub features: CpuFeatures,
    /// What ran primer's GEMMs ([`crate::model::matmul::GemmBackend::describe`]).
    pub gemm_backend: String,
    pub peak: FmaPeak,
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
        let range = |times: &[f64]| {
            times
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &t| {
                    (lo.min(t), hi.max(t))
                })
        };
        for (label, s) in [
            ("full-FT step", &self.full),
            ("adapter step", &self.adapter),
        ] {
            let (lo, hi) = range(&s.wall_ms);
            writeln!(
                out,
                "{label}: median {:.1} ms (min {lo:.1}, max {hi:.1}, {} steps); process CPU \
                 time median {:.1} ms",
                super::workload::median(s.wall_ms.clone()),
                s.wall_ms.len(),
                super::workload::median(s.cpu_ms.clone()),
            )?;
        }
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

impl fmt::Display for BenchReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        write_run_ceiling(out, &self.run)?;
        self.write_machine_and_phases(out)
    }
}

/// How close the adapter-tuning run is to what skipping encoder work can buy on this machine.
fn write_run_ceiling(out: &mut fmt::Formatter<'_>, w: &RunWork) -> fmt::Result {
    writeln!(out)?;
    writeln!(
        out,
        "adapter-tuning run, encoder work in matrix products: PyTorch {:.1} GFLOP per step \
         ({BATCH} × {SEQ} padded), {:.0} over its {} steps; primer's cache {:.0} GFLOP once \
         (length-sorted batches, last layer at the labelled rows)",
        w.torch_step_flops / 1e9,
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
        writeln!(out, "CPU: {} · {} threads", self.cpu_model, self.threads)?;
        writeln!(
            out,
            "FMA-peak probe: {}, {CHAINS} independent FMA chains per thread on all {} threads, \
             best of 5 repetitions",
            self.peak.isa.label(),
            self.peak.threads
        )?;
        writeln!(
            out,
            "gemm crate kernels (candle's, and primer's without a BLAS): {} — gemm 0.19 built \
             with x86-v4 takes its AVX-512F kernels when the CPU has avx512f, else its AVX2+FMA \
             ones",
            self.features.gemm_isa().label()
        )?;
        writeln!(out, "primer's GEMM backend: {}", self.gemm_backend)?;
        writeln!(
            out,
            "fp32 FMA peak at {} threads: {:.0} GFLOP/s (each thread's FLOPs per second of its \
             own CPU time, summed; over wall time {:.0} GFLOP/s — lower when other processes \
             share the cores)",
            self.peak.threads, self.peak.gflops, self.peak.wall_gflops
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:<62} {:>7} {:>15} {:>15}",
            "phase (nominal matrix-product work, F = one encoder forward)",
            "GFLOP",
            "primer GFLOP/s",
            "PyTorch GFLOP/s"
        )?;
        let cell = |ms: Option<f64>, flops: f64| match ms {
            Some(ms) if ms.is_finite() => {
                let g = gflops(flops, ms);
                format!("{g:.0} ({:.0}%)", 100.0 * g / self.peak.gflops)
            }
            _ => "-".into(),
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
        writeln!(out, "(%) = fraction of the fp32 FMA peak")?;
        if let Some((g, label, side)) = self.best_phase() {
            let verdict = if g <= self.peak.gflops {
                "below the peak"
            } else {
                "ABOVE the probe's peak: the probe underestimates it, or the machine's load \
                 changed between the measurements"
            };
            writeln!(
                out,
                "fastest phase: {side}'s {label}, {g:.0} GFLOP/s = {:.0}% of the peak ({verdict})",
                100.0 * g / self.peak.gflops
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::peak::Isa;

    #[test]
    fn run_ceilings_follow_from_work_and_rates() {
        let w = RunWork {
            torch_step_flops: 20e9,
            run_steps: 60,
            cache_flops: 300e9,
            cache_ms: 2000.0,
            torch_step_ms: Some(150.0),
            fma_peak_gflops: Some(200.0),
            threads: 2,
        };
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

    #[test]
    fn the_fastest_phase_of_either_side_is_found_and_judged_against_the_peak() {
        let report = BenchReport {
            threads: 2,
            rows: vec![Row {
                label: "full-FT step".into(),
                primer_ms: 500.0,
                torch_ms: Some(400.0),
            }],
            run: RunWork {
                torch_step_flops: 20e9,
                run_steps: 60,
                cache_flops: 300e9,
                cache_ms: 2000.0,
                torch_step_ms: Some(150.0),
                fma_peak_gflops: Some(200.0),
                threads: 2,
            },
            cpu_model: "Test CPU".into(),
            gemm_backend: "test backend".into(),
            features: CpuFeatures {
                avx512f: true,
                avx2: true,
                fma: true,
            },
            peak: FmaPeak {
                isa: Isa::Avx512f,
                threads: 2,
                gflops: 200.0,
                wall_gflops: 150.0,
            },
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
        };
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
    }
}
