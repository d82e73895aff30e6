//! `primer bench`: flags → [`primer::bench::run`] (or [`primer::bench::profile`]) → print.

use primer::bench::{BenchOptions, TorchSide};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Python with torch + transformers + safetensors (default: $TORCH_PYTHON, else /tmp/torchref/bin/python, else python3).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// The reference script (default: ../shared/reference/torch_ref.py).
    #[arg(long)]
    torch_ref: Option<PathBuf>,
    /// The PyTorch op-profiler script of --profile (default: tools/torch_op_profile.py).
    #[arg(long)]
    torch_profiler: Option<PathBuf>,
    /// The PyTorch + peft script of the LoRA rows (default: tools/bench_pe.py; needs `peft`).
    #[arg(long)]
    torch_pe_bench: Option<PathBuf>,
    /// Timed steps per measurement (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Threads for both sides.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Batches in the whole adapter-tuning run.
    #[arg(long, default_value_t = 20)]
    run_batches: usize,
    /// Epochs of the whole adapter-tuning run (default: `primer finetune`'s default, 3).
    ///
    /// The encoder cache turns E encoder passes over the data into one, so the run's speed-up
    /// over PyTorch's straightforward loop grows with E: at most E × (PyTorch forward time /
    /// primer forward time) when training on cached outputs costs nothing.
    #[arg(long, default_value_t = 3)]
    run_epochs: usize,
    /// Skip the PyTorch side (primer's numbers only).
    #[arg(long)]
    no_torch: bool,
    /// Instead of the comparison: where the time of the full-FT step and the meta-PE outer
    /// step goes, op by op, on both sides (GEMMs by shape, attention, layer norm, …).
    #[arg(long)]
    profile: bool,
    /// Only primer's full-FT and adapter steps (implies --no-torch; no peak probe, no other
    /// rows): a quick comparison of builds or GEMM backends (PRIMER_BLAS), run by run.
    #[arg(long, conflicts_with = "profile")]
    steps_only: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: set before any thread pool starts (first thing this command does); candle and
    // the kernels size their pools from it.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    let opts = BenchOptions {
        steps: args.steps,
        threads: args.threads,
        run_batches: args.run_batches,
        run_epochs: args.run_epochs,
        torch: (!args.no_torch && !args.steps_only).then(|| {
            let mut side =
                TorchSide::with_defaults(args.torch_python, args.torch_ref, args.torch_profiler);
            if let Some(p) = args.torch_pe_bench {
                side.pe_bench = p;
            }
            side
        }),
    };
    let mut log = |msg: &str| eprintln!("{msg}");
    if args.steps_only {
        print!("{}", primer::bench::steps_only(&opts, &mut log)?);
    } else if args.profile {
        print!("{}", primer::bench::profile(&opts, &mut log)?);
    } else {
        print!("{}", primer::bench::run(&opts, &mut log)?);
    }
    Ok(ExitCode::SUCCESS)
}
