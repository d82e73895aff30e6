//! `primer bench`: training-step speed side by side with the PyTorch reference
//! (`../shared/reference/torch_ref.py`), printed as ratios primer / PyTorch, each phase's FLOP
//! rate against this machine's fp32 FMA peak, and (`--profile`) where each side's step time
//! goes, op by op.
//!
//! Both sides time the same work on a MiniLM-sized random BERT (H384, L6, 12 heads, vocab
//! 30522), batch 16 × seq 64, the same thread count, in one invocation: the reference first,
//! then primer. Speed targets live here, never in timed tests.
//!
//! * [`workload`]  — primer's tagger, synthetic batches, training steps, the adapter-tuning run;
//! * [`peak`]      — the FMA-peak probe, the ISA choices, the CPU model;
//! * [`torch`]     — the Python side (reference and op profiler);
//! * [`report`]    — the comparison table, the run's ceilings, phases against the peak;
//! * [`breakdown`] — the per-op tables of `--profile`.
//!
//! Meta-priming steps are timed by [`crate::prime::bench`], which knows the priming internals.

pub mod breakdown;
pub mod error;
pub mod peak;
pub mod report;
pub mod torch;
pub mod workload;

pub use breakdown::ProfileReport;
pub use error::BenchError;
pub use report::{BenchReport, StepsReport};
pub use torch::TorchSide;

use crate::config::{FinetuneMethod, InnerDropout, SupportMode};
use crate::model::matmul::gemm_backend;
use crate::prime::bench::{MetaBenchSpec, time_meta_steps};
use crate::prime::bench_pe::{
    FinetuneBenchSpec, lora_bench_spec, time_pe_finetune_steps, time_pe_meta_steps,
};
use breakdown::{StepBreakdown, StepComparison};
use peak::CpuFeatures;
use report::{Phase, Row, RunWork, StepSamples, work};
use workload::{BATCH, SEQ, Workload};

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
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

/// Runs the whole comparison; `log` hears what is being run (the PyTorch side's failure
/// included: the bench then goes on with primer's numbers alone).
pub fn run(opts: &BenchOptions, log: &mut dyn FnMut(&str)) -> Result<BenchReport, BenchError> {
    opts.check()?;
    let torch =
        opts.torch
            .as_ref()
            .and_then(|side| match side.medians(opts.threads, opts.steps, log) {
                Ok(t) => Some(t),
                Err(e) => {
                    log(&format!("PyTorch side skipped: {e}"));
                    None
                }
            });
    // The LoRA rows' PyTorch side needs `peft` besides torch: its failure skips only those rows.
    let torch_pe = opts
        .torch
        .as_ref()
        .filter(|_| torch.is_some())
        .and_then(
            |side| match side.pe_medians(opts.threads, opts.steps, log) {
                Ok(t) => Some(t),
                Err(e) => {
                    log(&format!("PyTorch + peft side skipped: {e}"));
                    None
                }
            },
        );
    let theirs = |key: &str| {
        [&torch, &torch_pe]
            .into_iter()
            .find_map(|t| t.as_ref().and_then(|t| t.get(key).copied()))
    };

    log(&format!(
        "timing primer (MiniLM size, batch {BATCH}, seq {SEQ}, {} threads)",
        opts.threads
    ));
    let mut bench = Workload::new(opts.run_batches)?;
    let full = bench.step_ms(FinetuneMethod::Full, opts.steps)?;
    let adapter = bench.step_ms(FinetuneMethod::Adapter, opts.steps)?;
    let run = bench.adapter_run(opts.run_batches, opts.run_epochs)?;
    let run_steps = opts.run_batches * opts.run_epochs;

    let mut rows = vec![
        Row {
            label: "full-FT step".into(),
            primer_ms: full,
            torch_ms: theirs("full"),
        },
        Row {
            label: "adapter step".into(),
            primer_ms: adapter,
            torch_ms: theirs("adapter"),
        },
        Row {
            label: format!(
                "adapter-tuning run ({} batches × {} epochs; PyTorch = straightforward loop)",
                opts.run_batches, opts.run_epochs
            ),
            primer_ms: run.cache_ms + run.train_ms,
            torch_ms: theirs("adapter").map(|ms| ms * run_steps as f64),
        },
        Row {
            label: "  of which: encoder cache (every sentence encoded once)".into(),
            primer_ms: run.cache_ms,
            torch_ms: None,
        },
        Row {
            label: format!("  of which: {run_steps} steps on cached encoder outputs"),
            primer_ms: run.train_ms,
            torch_ms: None,
        },
    ];
    let meta = |spec: &MetaBenchSpec| -> Result<f64, BenchError> {
        let spec = MetaBenchSpec {
            steps: opts.steps,
            ..spec.clone()
        };
        Ok(time_meta_steps(bench.tagger.clone(), &spec)?.median_ms)
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
    let lora_ft = time_pe_finetune_steps(
        bench.encoder_only_tagger(),
        &lora,
        &FinetuneBenchSpec {
            steps: opts.steps,
            ..FinetuneBenchSpec::default()
        },
    )?
    .median_ms;
    let lora_meta = time_pe_meta_steps(
        bench.encoder_only_tagger(),
        &lora,
        &MetaBenchSpec {
            steps: opts.steps,
            ..MetaBenchSpec::meta_pe()
        },
    )?
    .median_ms;
    for (label, ours, key) in [
        (
            "meta-PE outer step (2 tasks, S=5, same support) vs PyTorch naive",
            meta_pe,
            "meta-pe/naive/same",
        ),
        (
            "meta-PE outer step (2 tasks, S=5, same support) vs PyTorch cached",
            meta_pe,
            "meta-pe/cached/same",
        ),
        (
            "meta-PE outer step, distinct support vs PyTorch cached",
            meta_pe_distinct,
            "meta-pe/cached/distinct",
        ),
        (
            "meta-full (MAML loop) outer step, distinct support",
            meta_full,
            "meta-full/distinct",
        ),
        (
            "LoRA fine-tuning step (r 8, query + value) vs PyTorch + peft",
            lora_ft,
            "lora",
        ),
        (
            "meta-LoRA outer step (2 tasks, S=5, same support) vs PyTorch + peft",
            lora_meta,
            "meta-lora/same",
        ),
        (
            "meta-PE, same support, dropout 0.1, inner dropout per-step (default)",
            per_step,
            "",
        ),
        (
            "meta-PE, same support, dropout 0.1, inner dropout shared",
            shared,
            "",
        ),
    ] {
        rows.push(Row {
            label: label.to_string(),
            primer_ms: ours,
            torch_ms: theirs(key),
        });
    }

    log(&format!(
        "measuring the fp32 FMA peak at {} threads",
        opts.threads
    ));
    let peak = peak::fma_peak(opts.threads)?;
    let f = bench
        .tagger
        .config
        .encoder_forward_flops(BATCH, SEQ, BATCH * SEQ);
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
            theirs("full"),
        ),
        phase(
            "adapter step (F)",
            work::adapter_step(f),
            Some(adapter),
            theirs("adapter"),
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
            Some(meta_pe),
            theirs("meta-pe/cached/same"),
        ),
        phase(
            "meta-PE outer step, distinct support (2 × (5F + 3F))",
            work::meta_pe_step(f, &pe_distinct),
            Some(meta_pe_distinct),
            theirs("meta-pe/cached/distinct"),
        ),
        phase(
            "meta-full outer step, distinct support (2 × 6 × 3F)",
            work::meta_full_step(f, &full_distinct),
            Some(meta_full),
            theirs("meta-full/distinct"),
        ),
    ];
    Ok(BenchReport {
        threads: opts.threads,
        rows,
        run: RunWork {
            torch_step_flops: f,
            run_steps,
            cache_flops: run.cache_flops,
            cache_ms: run.cache_ms,
            torch_step_ms: theirs("adapter"),
            fma_peak_gflops: Some(peak.gflops),
            threads: opts.threads,
        },
        cpu_model: peak::cpu_model(),
        features: CpuFeatures::detect(),
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
    log(&format!(
        "timing primer's full-FT and adapter steps (MiniLM size, batch {BATCH}, seq {SEQ}, {} \
         threads)",
        opts.threads
    ));
    let mut bench = Workload::new(8)?;
    let full = bench.train_steps(FinetuneMethod::Full, opts.steps, false)?;
    let adapter = bench.train_steps(FinetuneMethod::Adapter, opts.steps, false)?;
    Ok(StepsReport {
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
/// reference's same steps with `torch.profiler` when `opts.torch` is given.
pub fn profile(
    opts: &BenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<ProfileReport, BenchError> {
    opts.check()?;
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
    let mut bench = Workload::new(8)?;
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
