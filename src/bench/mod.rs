//! `primer bench`: training-step speed side by side with the PyTorch reference
//! (`../shared/reference/torch_ref.py`), printed as ratios primer / PyTorch, with tokens/s and
//! peak memory, each phase's FLOP rate (against this machine's fp32 FMA peak on the CPU), and
//! (`--profile`) where each side's step time goes, op by op.
//!
//! Both sides time the same work on a random BERT of one of the bench's sizes
//! ([`workload::SizeName`]: MiniLM's by default, batch 16 × seq 64; mBERT's at batch 32 × seq
//! 128 for a GPU), on the same device (`cpu` or `cuda:N`) and the same thread count, in one
//! invocation: the reference first, then primer. Speed targets live here, never in timed tests.
//!
//! `--precision` (fp32 by default, so `make bench`'s numbers keep their meaning) sets the
//! arithmetic of both sides' matrix products: primer's measurements run inside
//! [`precision_scope`] as a `primer finetune` run does, PyTorch's steps under `torch.autocast`
//! (bf16) or with TF32 allowed (tf32, CUDA only); the report says what each side ran.
//!
//! * [`workload`]  — the sizes, primer's tagger, synthetic batches, training steps, the
//!   adapter-tuning run;
//! * [`memory`]    — peak memory of a measurement (peak RSS on the CPU, the CUDA pool's peak);
//! * [`peak`]      — the FMA-peak probe, the ISA choices, the CPU model;
//! * [`torch`]     — the Python side (reference and op profiler);
//! * [`report`]    — the comparison table, the run's ceilings, phases against the peak, JSON;
//! * [`breakdown`] — the per-op tables of `--profile`.
//!
//! Meta-priming steps are timed by [`crate::prime::bench`], which knows the priming internals.

pub mod breakdown;
pub mod error;
pub mod memory;
pub mod peak;
pub mod report;
pub mod torch;
pub mod workload;

pub use breakdown::ProfileReport;
pub use error::BenchError;
pub use memory::MemoryKind;
pub use report::{BenchReport, PrecisionReport, StepsReport};
pub use torch::{TorchSide, TorchTarget};
pub use workload::{SizeName, WorkloadSize};

use crate::config::{FinetuneMethod, InnerDropout, Precision, PrecisionChoice, SupportMode};
use crate::device::DeviceSpec;
use crate::model::dispatch::precision_scope;
use crate::model::sgemm::gemm_backend;
use crate::prime::bench::{MetaBenchSpec, time_meta_steps};
use crate::prime::bench_pe::{
    FinetuneBenchSpec, lora_bench_spec, time_pe_finetune_steps, time_pe_meta_steps,
};
use breakdown::{StepBreakdown, StepComparison};
use memory::MemoryMeter;
use peak::CpuFeatures;
use report::{Phase, Row, RunWork, StepSamples, work};
use torch::TorchTiming;
use workload::Workload;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Where both sides run.
    pub device: DeviceSpec,
    /// The model and batch shape.
    pub size: WorkloadSize,
    /// The arithmetic of both sides' matrix products, resolved on the device as a run's
    /// `finetune.precision` is.
    pub precision: PrecisionChoice,
    /// Timed steps per measurement (after the warm-up steps).
    pub steps: usize,
    /// Threads for both sides (and the FMA-peak probe).
    pub threads: usize,
    /// Batches in the whole adapter-tuning run.
    pub run_batches: usize,
    /// Epochs of the whole adapter-tuning run.
    pub run_epochs: usize,
    /// The PyTorch side; `None` measures primer alone.
    pub torch: Option<TorchSide>,
}

impl BenchOptions {
    fn check(&self) -> Result<(), BenchError> {
        for (name, v) in [
            ("--steps", self.steps),
            ("--threads", self.threads),
            ("--run-batches", self.run_batches),
            ("--run-epochs", self.run_epochs),
        ] {
            if v == 0 {
                return Err(BenchError::Config(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// What the PyTorch side is asked for: `--precision` as given, `auto` resolved on `device`
/// (the scripts know fp32, tf32 and bf16, and resolve tf32 on a CPU themselves).
fn asked_of_torch(choice: PrecisionChoice, device: DeviceSpec) -> Precision {
    match choice {
        PrecisionChoice::Auto => choice.resolve_for(matches!(device, DeviceSpec::Cuda(_))),
        PrecisionChoice::Fp32 => Precision::Fp32,
        PrecisionChoice::Tf32 => Precision::Tf32,
        PrecisionChoice::Bf16 => Precision::Bf16,
    }
}

/// A PyTorch-side failure as one short note: its first line and, for a Python traceback,
/// its last lines (where the exception is).
fn note_of(what: &str, e: &BenchError) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text.trim().lines().collect();
    let body = if lines.len() > 12 {
        format!("{}\n…\n{}", lines[0], lines[lines.len() - 8..].join("\n"))
    } else {
        lines.join("\n")
    };
    format!("{what} not run: {body}")
}

/// Runs `f` as one measurement: the meter's peak is reset before and read after.
fn measure<T>(
    meter: &MemoryMeter,
    f: impl FnOnce() -> Result<T, BenchError>,
) -> Result<(T, Option<u64>), BenchError> {
    meter.reset();
    let v = f()?;
    Ok((v, meter.peak_bytes()))
}

/// Runs the whole comparison; `log` hears what is being run (the PyTorch side's failure
/// included: the bench then goes on with primer's numbers alone, and the report says why).
pub fn run(opts: &BenchOptions, log: &mut dyn FnMut(&str)) -> Result<BenchReport, BenchError> {
    opts.check()?;
    // Opened first: a CUDA device on a build without CUDA (or a missing GPU) fails here, not
    // after minutes of PyTorch.
    let device = opts.device.open()?;
    let size = &opts.size;
    let precision = opts.precision.in_effect(&device);
    let target = TorchTarget {
        device: opts.device,
        size: size.clone(),
        precision: asked_of_torch(opts.precision, opts.device),
    };
    let mut torch_notes = Vec::new();
    let torch = match &opts.torch {
        None => {
            torch_notes.push("not run (--no-torch)".to_string());
            None
        }
        Some(side) => match side.medians(&target, opts.threads, opts.steps, log) {
            Ok(t) => Some(t),
            Err(e) => {
                let note = note_of("PyTorch side", &e);
                log(&note);
                torch_notes.push(note);
                None
            }
        },
    };
    // The LoRA rows' PyTorch side needs `peft` besides torch: its failure skips only those rows.
    let torch_pe = match opts.torch.as_ref().filter(|_| torch.is_some()) {
        None => None,
        Some(side) => match side.pe_medians(&target, opts.threads, opts.steps, log) {
            Ok(t) => Some(t),
            Err(e) => {
                let note = note_of("PyTorch + peft side (the LoRA rows)", &e);
                log(&note);
                torch_notes.push(note);
                None
            }
        },
    };
    let theirs = |key: &str| -> Option<TorchTiming> {
        [&torch, &torch_pe]
            .into_iter()
            .find_map(|t| t.as_ref().and_then(|t| t.get(key).copied()))
    };
    let theirs_ms = |key: &str| theirs(key).map(|t| t.median_ms);
    let torch_precision = [&torch, &torch_pe]
        .into_iter()
        .flatten()
        .flat_map(|t| t.values())
        .find_map(|t| t.precision);

    log(&format!(
        "timing primer on {}: {}, {} threads, {}",
        opts.device,
        size.describe(),
        opts.threads,
        precision.effective
    ));
    // Every primer measurement from here on computes in the run's precision, as `primer
    // finetune` and `primer prime` do (bf16 also turns the fused CPU kernels off); worker
    // threads that build ops adopt it. The FMA-peak probe below is raw f32 FMAs, untouched.
    let _precision = precision_scope(precision.effective, &device);
    let meter = MemoryMeter::new(&device);
    let mut bench = Workload::new(size.clone(), device.clone(), opts.run_batches)?;
    let (full, full_mem) = measure(&meter, || bench.step_ms(FinetuneMethod::Full, opts.steps))?;
    let (adapter, adapter_mem) = measure(&meter, || {
        bench.step_ms(FinetuneMethod::Adapter, opts.steps)
    })?;
    let run = bench.adapter_run(opts.run_batches, opts.run_epochs, &meter)?;
    let run_steps = opts.run_batches * opts.run_epochs;

    // One batch's tokens; a row's tokens are this times the batches its work reads.
    let tokens = size.batch_tokens();
    let row = |key: &str,
               label: String,
               (primer_ms, primer_peak_bytes): (f64, Option<u64>),
               torch: Option<TorchTiming>,
               batches: usize| Row {
        key: key.into(),
        label,
        primer_ms,
        torch_ms: torch.map(|t| t.median_ms),
        tokens: batches * tokens,
        primer_peak_bytes,
        torch_peak_bytes: torch.and_then(|t| t.peak_memory_bytes),
    };
    let run_mem = run.cache_peak.max(run.train_peak);
    let mut rows = vec![
        row(
            "full_ft",
            "full-FT step".into(),
            (full, full_mem),
            theirs("full"),
            1,
        ),
        row(
            "adapter",
            "adapter step".into(),
            (adapter, adapter_mem),
            theirs("adapter"),
            1,
        ),
        Row {
            torch_ms: theirs_ms("adapter").map(|ms| ms * run_steps as f64),
            ..row(
                "adapter_run",
                format!(
                    "adapter-tuning run ({} batches × {} epochs; PyTorch = straightforward loop)",
                    opts.run_batches, opts.run_epochs
                ),
                (run.cache_ms + run.train_ms, run_mem),
                theirs("adapter"),
                run_steps,
            )
        },
        row(
            "adapter_run_cache",
            "  of which: encoder cache (every sentence encoded once)".into(),
            (run.cache_ms, run.cache_peak),
            None,
            opts.run_batches,
        ),
        row(
            "adapter_run_steps",
            format!("  of which: {run_steps} steps on cached encoder outputs"),
            (run.train_ms, run.train_peak),
            None,
            run_steps,
        ),
        row(
            "adapter_on_cache",
            format!("  adapter step on cached encoder outputs (mean of those {run_steps})"),
            (run.train_ms / run_steps as f64, run.train_peak),
            None,
            1,
        ),
    ];
    let meta = |spec: &MetaBenchSpec| -> Result<(f64, Option<u64>), BenchError> {
        let spec = MetaBenchSpec {
            steps: opts.steps,
            batch: size.batch,
            seq: size.seq,
            ..spec.clone()
        };
        measure(&meter, || {
            Ok(time_meta_steps(bench.tagger.clone(), &spec)?.median_ms)
        })
    };
    let pe_same = MetaBenchSpec::meta_pe();
    let pe_distinct = MetaBenchSpec {
        support: SupportMode::Distinct,
        ..MetaBenchSpec::meta_pe()
    };
    let full_distinct = MetaBenchSpec::meta_full_distinct();
    let meta_pe = meta(&pe_same)?;
    let meta_pe_distinct = meta(&pe_distinct)?;
    let meta_full = meta(&full_distinct)?;
    // What the faithful inner dropout costs (the reference runs without dropout, so these are
    // primer's own rows): MiniLM's 0.1, per-step masks (the default) against one per batch.
    let with_inner_dropout = |mode: InnerDropout| {
        meta(&MetaBenchSpec {
            dropout: Some(0.1),
            inner_dropout: mode,
            ..MetaBenchSpec::meta_pe()
        })
    };
    let per_step = with_inner_dropout(InnerDropout::PerStep)?;
    let shared = with_inner_dropout(InnerDropout::Shared)?;
    // LoRA (r 8, α 8, query and value; issue 18) in both stages, on an adapter-free copy of the
    // same encoder: it acts inside the encoder, so neither side can cache encoder outputs.
    let lora = lora_bench_spec();
    let lora_ft = measure(&meter, || {
        let spec = FinetuneBenchSpec {
            steps: opts.steps,
            batch: size.batch,
            seq: size.seq,
            ..FinetuneBenchSpec::default()
        };
        Ok(time_pe_finetune_steps(bench.encoder_only_tagger(), &lora, &spec)?.median_ms)
    })?;
    let lora_meta = measure(&meter, || {
        let spec = MetaBenchSpec {
            steps: opts.steps,
            batch: size.batch,
            seq: size.seq,
            ..MetaBenchSpec::meta_pe()
        };
        Ok(time_pe_meta_steps(bench.encoder_only_tagger(), &lora, &spec)?.median_ms)
    })?;
    // Batches a meta outer step reads: per task its support batches and its query batch.
    let meta_batches = |spec: &MetaBenchSpec| {
        let support = match spec.support {
            SupportMode::Same => 1,
            SupportMode::Distinct => spec.inner_steps,
        };
        spec.tasks * (support + 1)
    };
    let (same_b, distinct_b) = (meta_batches(&pe_same), meta_batches(&pe_distinct));
    for (key, label, ours, torch_key, batches) in [
        (
            "meta_pe_vs_naive",
            "meta-PE outer step (2 tasks, S=5, same support) vs PyTorch naive",
            meta_pe,
            "meta-pe/naive/same",
            same_b,
        ),
        (
            "meta_pe_same",
            "meta-PE outer step (2 tasks, S=5, same support) vs PyTorch cached",
            meta_pe,
            "meta-pe/cached/same",
            same_b,
        ),
        (
            "meta_pe_distinct",
            "meta-PE outer step, distinct support vs PyTorch cached",
            meta_pe_distinct,
            "meta-pe/cached/distinct",
            distinct_b,
        ),
        (
            "meta_full_distinct",
            "meta-full (MAML loop) outer step, distinct support",
            meta_full,
            "meta-full/distinct",
            meta_batches(&full_distinct),
        ),
        (
            "lora_ft",
            "LoRA fine-tuning step (r 8, query + value) vs PyTorch + peft",
            lora_ft,
            "lora",
            1,
        ),
        (
            "meta_lora_same",
            "meta-LoRA outer step (2 tasks, S=5, same support) vs PyTorch + peft",
            lora_meta,
            "meta-lora/same",
            same_b,
        ),
        (
            "meta_pe_dropout_per_step",
            "meta-PE, same support, dropout 0.1, inner dropout per-step (default)",
            per_step,
            "",
            same_b,
        ),
        (
            "meta_pe_dropout_shared",
            "meta-PE, same support, dropout 0.1, inner dropout shared",
            shared,
            "",
            same_b,
        ),
    ] {
        rows.push(row(
            key,
            label.to_string(),
            ours,
            theirs(torch_key),
            batches,
        ));
    }
    let memory_kind = meter.kind();
    let device_memory = meter.device_memory();
    let device_name = meter.device_name();

    // The FMA peak and the GEMM ISA describe this CPU's kernels: beside GPU steps they would
    // only mislead.
    let (peak, features) = if device.is_cpu() {
        log(&format!(
            "measuring the fp32 FMA peak at {} threads",
            opts.threads
        ));
        (
            Some(peak::fma_peak(opts.threads)?),
            Some(CpuFeatures::detect()),
        )
    } else {
        (None, None)
    };
    let (b, s) = (size.batch, size.seq);
    let f = bench.tagger.config.encoder_forward_flops(b, s, b * s);
    let phase = |label: &str, flops: f64, primer_ms: Option<f64>, torch_ms: Option<f64>| Phase {
        label: label.to_string(),
        flops,
        primer_ms,
        torch_ms,
    };
    let phases = vec![
        phase(
            "full-FT step (3F)",
            work::full_step(f),
            Some(full),
            theirs_ms("full"),
        ),
        phase(
            "adapter step (F)",
            work::adapter_step(f),
            Some(adapter),
            theirs_ms("adapter"),
        ),
        phase(
            "adapter-tuning run: primer's encoder cache pass",
            run.cache_flops,
            Some(run.cache_ms),
            None,
        ),
        phase(
            "meta-PE outer step, same support (2 × (F + 3F))",
            work::meta_pe_step(f, &pe_same),
            Some(meta_pe.0),
            theirs_ms("meta-pe/cached/same"),
        ),
        phase(
            "meta-PE outer step, distinct support (2 × (5F + 3F))",
            work::meta_pe_step(f, &pe_distinct),
            Some(meta_pe_distinct.0),
            theirs_ms("meta-pe/cached/distinct"),
        ),
        phase(
            "meta-full outer step, distinct support (2 × 6 × 3F)",
            work::meta_full_step(f, &full_distinct),
            Some(meta_full.0),
            theirs_ms("meta-full/distinct"),
        ),
    ];
    Ok(BenchReport {
        device: opts.device,
        device_name,
        device_memory,
        size: size.clone(),
        precision: PrecisionReport {
            requested: opts.precision,
            primer: precision.effective,
            torch: torch_precision,
        },
        threads: opts.threads,
        steps: opts.steps,
        rows,
        memory_kind,
        torch_notes,
        run: RunWork {
            torch_step_flops: f,
            run_steps,
            cache_flops: run.cache_flops,
            cache_ms: run.cache_ms,
            torch_step_ms: theirs_ms("adapter"),
            fma_peak_gflops: peak.as_ref().map(|p| p.gflops),
            threads: opts.threads,
            batch: b,
            seq: s,
        },
        cpu_model: peak::cpu_model(),
        features,
        gemm_backend: gemm_backend().describe(),
        peak,
        phases,
    })
}

/// primer's full-FT and adapter steps alone — no PyTorch, no peak probe, no other rows: the
/// two GEMM-bound rows of [`run`], for a quick comparison of builds or GEMM backends
/// (`PRIMER_BLAS`) in separate processes.
pub fn steps_only(
    opts: &BenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<StepsReport, BenchError> {
    opts.check()?;
    if opts.device != DeviceSpec::Cpu {
        return Err(BenchError::Config(
            "--steps-only times CPU steps (process CPU time): leave out --device".into(),
        ));
    }
    log(&format!(
        "timing primer's full-FT and adapter steps ({}, {} threads)",
        opts.size.describe(),
        opts.threads
    ));
    let device = candle_core::Device::Cpu;
    // As in `run`: the steps compute in the asked precision (tf32 is fp32 on the CPU).
    let precision = opts.precision.resolve(&device);
    let _precision = precision_scope(precision, &device);
    let mut bench = Workload::new(opts.size.clone(), device, 8)?;
    let full = bench.train_steps(FinetuneMethod::Full, opts.steps, false)?;
    let adapter = bench.train_steps(FinetuneMethod::Adapter, opts.steps, false)?;
    Ok(StepsReport {
        precision,
        cpu_model: peak::cpu_model(),
        threads: opts.threads,
        gemm_backend: gemm_backend().describe(),
        full: StepSamples {
            wall_ms: full.times_ms,
            cpu_ms: full.cpu_ms,
        },
        adapter: StepSamples {
            wall_ms: adapter.times_ms,
            cpu_ms: adapter.cpu_ms,
        },
    })
}

/// Profiles primer's full-FT step and meta-PE outer step (same support) op by op, and the
/// reference's same steps with `torch.profiler` when `opts.torch` is given. On the CPU at
/// MiniLM's size only: op times are host-side wall times (a GPU queues its ops) and the
/// profiler script knows the reference's default shapes alone.
pub fn profile(
    opts: &BenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<ProfileReport, BenchError> {
    opts.check()?;
    if opts.device != DeviceSpec::Cpu || opts.size != SizeName::Minilm.workload() {
        return Err(BenchError::Config(
            "--profile times ops on the CPU at the minilm size and its batch shape: drop \
             --device, --size, --batch and --seq"
                .into(),
        ));
    }
    // The op profiler script runs the reference as it is, in fp32: primer's side must too.
    if opts.precision.resolve_for(false) != Precision::Fp32 {
        return Err(BenchError::Config(format!(
            "--profile compares fp32 steps: drop --precision {}",
            opts.precision.as_str()
        )));
    }
    let mut torch_info = None;
    let mut torch_step = |step: &str, log: &mut dyn FnMut(&str)| -> Result<StepBreakdown, String> {
        let side = opts.torch.as_ref().ok_or("--no-torch")?;
        log(&format!("profiling the PyTorch reference's {step} step"));
        let v = side
            .op_profile(step, opts.threads, opts.steps)
            .map_err(|e| e.to_string())?;
        torch_info = Some(format!(
            "torch {} · {} threads · CPU capability {} · oneDNN {}",
            v["torch"].as_str().unwrap_or("?"),
            v["threads"],
            v["cpu_capability"].as_str().unwrap_or("?"),
            if v["mkldnn"].as_bool() == Some(true) {
                "available"
            } else {
                "not available"
            }
        ));
        StepBreakdown::from_torch_json(&v)
    };
    let torch_full = torch_step("full", log);
    let torch_meta = torch_step("meta-pe", log);

    log("profiling primer's full-FT step and meta-PE outer step");
    let mut bench = Workload::new(opts.size.clone(), candle_core::Device::Cpu, 8)?;
    let full = bench.train_steps(FinetuneMethod::Full, opts.steps, true)?;
    let full = StepBreakdown::from_table(
        full.ops.as_ref().expect("recorded when asked"),
        &full.times_ms,
    );
    let meta = time_meta_steps(
        bench.tagger.clone(),
        &MetaBenchSpec {
            steps: opts.steps,
            record_ops: true,
            ..MetaBenchSpec::meta_pe()
        },
    )?;
    let meta = StepBreakdown::from_table(
        meta.ops.as_ref().expect("recorded when asked"),
        &meta.times_ms,
    );
    Ok(ProfileReport {
        cpu_model: peak::cpu_model(),
        threads: opts.threads,
        gemm_backend: gemm_backend().describe(),
        torch_info,
        steps: vec![
            StepComparison {
                name: "full-FT step".into(),
                primer: full,
                torch: torch_full,
            },
            StepComparison {
                name: "meta-PE outer step (2 tasks, S=5, same support; PyTorch cached)".into(),
                primer: meta,
                torch: torch_meta,
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(device: DeviceSpec, size: SizeName) -> BenchOptions {
        BenchOptions {
            device,
            size: size.workload(),
            precision: PrecisionChoice::Fp32,
            steps: 1,
            threads: 1,
            run_batches: 1,
            run_epochs: 1,
            torch: Some(TorchSide::with_defaults(None, None, None)),
        }
    }

    /// Before any PyTorch or primer work: the error says how to get a CUDA build.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cuda_device_on_a_cpu_build_fails_first_and_names_make_check_cuda() {
        let mut heard = Vec::new();
        let err = run(&opts(DeviceSpec::Cuda(0), SizeName::Mbert), &mut |m| {
            heard.push(m.to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cuda:0") && err.contains("make check-cuda"),
            "{err}"
        );
        assert!(heard.is_empty(), "ran before the device check: {heard:?}");
    }

    #[test]
    fn profile_runs_on_the_cpu_at_minilm_size_only() {
        for o in [
            opts(DeviceSpec::Cuda(0), SizeName::Minilm),
            opts(DeviceSpec::Cpu, SizeName::Tiny),
        ] {
            let err = profile(&o, &mut |_| {}).unwrap_err().to_string();
            assert!(err.contains("--profile times ops on the CPU"), "{err}");
        }
        let bf16 = BenchOptions {
            precision: PrecisionChoice::Bf16,
            ..opts(DeviceSpec::Cpu, SizeName::Minilm)
        };
        let err = profile(&bf16, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("drop --precision bf16"), "{err}");
    }

    /// `auto` reaches the PyTorch side resolved on the device, like primer's; the others as
    /// given (tf32 on a CPU too: the script resolves it and says so).
    #[test]
    fn the_pytorch_side_is_asked_for_the_precision_as_given_and_auto_resolved() {
        use PrecisionChoice as C;
        let asked = |c, d| asked_of_torch(c, d);
        assert_eq!(asked(C::Auto, DeviceSpec::Cpu), Precision::Fp32);
        assert_eq!(asked(C::Auto, DeviceSpec::Cuda(1)), Precision::Bf16);
        for d in [DeviceSpec::Cpu, DeviceSpec::Cuda(0)] {
            assert_eq!(asked(C::Fp32, d), Precision::Fp32);
            assert_eq!(asked(C::Tf32, d), Precision::Tf32);
            assert_eq!(asked(C::Bf16, d), Precision::Bf16);
        }
    }

    #[test]
    fn a_long_failure_note_keeps_its_first_and_last_lines() {
        let stderr = (0..30).map(|i| format!("line {i}")).collect::<Vec<_>>();
        let e = BenchError::TorchFailed {
            script: "x.py".into(),
            stderr: stderr.join("\n"),
        };
        let note = note_of("PyTorch side", &e);
        assert!(
            note.starts_with("PyTorch side not run: x.py failed"),
            "{note}"
        );
        assert!(
            note.ends_with("line 29") && note.contains("line 22\n"),
            "{note}"
        );
        assert!(!note.contains("line 10\n"), "{note}");
        let short = BenchError::Config("one line".into());
        assert_eq!(
            note_of("PyTorch side", &short),
            "PyTorch side not run: invalid bench setting: one line"
        );
    }
}
