//! `primer bench`: flags → [`primer::bench::run`] (or [`primer::bench::profile`]) → print.

use anyhow::Context;
use primer::bench::{BenchOptions, SizeName, TorchSide};
use primer::config::PrecisionChoice;
use primer::device::DeviceSpec;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Where both sides run: cpu or cuda:N (CUDA needs a `--features cuda` build: make check-cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceSpec,
    /// The model and batch shape, randomly initialised: minilm (H384, L6, vocab 30522; batch
    /// 16 × seq 64: make bench's), mbert (H768, L12, vocab 119547; batch 32 × seq 128), tiny
    /// (H64, L2, vocab 1000; batch 8 × seq 32: seconds, for tests).
    #[arg(long, value_enum, default_value_t = SizeName::Minilm)]
    size: SizeName,
    /// Sentences per batch (default: the size's).
    #[arg(long)]
    batch: Option<usize>,
    /// Longest sentence in tokens (default: the size's; sentences are drawn in [seq/2, seq]).
    #[arg(long)]
    seq: Option<usize>,
    /// The arithmetic of both sides' matrix products, as `finetune.precision`: fp32, tf32
    /// (CUDA's TF32 tensor cores; fp32 on a CPU), bf16 (primer's products cast to bf16 with
    /// f32 master weights; PyTorch's forward and loss under torch.autocast), auto (a run's
    /// default: bf16 on CUDA, fp32 on a CPU). The report says what each side ran.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Fp32)]
    precision: PrecisionChoice,
    /// Write the report as JSON too: into FILE (the table still goes to stdout), or, with no
    /// FILE, to stdout instead of the table.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-",
          conflicts_with = "profile")]
    json: Option<PathBuf>,
    /// Python with torch + transformers + safetensors (default: $TORCH_PYTHON, else /tmp/torchref/bin/python, else python3).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// The reference script (default: ../shared/reference/torch_ref.py).
    #[arg(long)]
    torch_ref: Option<PathBuf>,
    /// What runs the reference on the device and size (default: tools/torch_device.py).
    #[arg(long)]
    torch_device_runner: Option<PathBuf>,
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
    /// step goes, op by op, on both sides (GEMMs by shape, attention, layer norm, …). CPU and
    /// the minilm size only.
    #[arg(long)]
    profile: bool,
    /// Only primer's full-FT and adapter steps (implies --no-torch; no peak probe, no other
    /// rows): a quick comparison of builds or GEMM backends (PRIMER_BLAS), run by run.
    #[arg(long, conflicts_with_all = ["profile", "json"])]
    steps_only: bool,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: set before any thread pool starts (first thing this command does); candle and
    // the kernels size their pools from it.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    let opts = BenchOptions {
        device: args.device,
        size: args.size.workload().with_overrides(args.batch, args.seq)?,
        precision: args.precision,
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
            if let Some(p) = args.torch_device_runner {
                side.device_runner = p;
            }
            side
        }),
    };
    let mut log = |msg: &str| eprintln!("{msg}");
    if args.steps_only {
        print!("{}", primer::bench::steps_only(&opts, &mut log)?);
        return Ok(ExitCode::SUCCESS);
    } else if args.profile {
        print!("{}", primer::bench::profile(&opts, &mut log)?);
        return Ok(ExitCode::SUCCESS);
    }
    let report = primer::bench::run(&opts, &mut log)?;
    let json = || serde_json::to_string_pretty(&report.to_json());
    match args.json {
        Some(path) if path.as_os_str() == "-" => println!("{}", json()?),
        Some(path) => {
            print!("{report}");
            std::fs::write(&path, json()? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => print!("{report}"),
    }
    Ok(ExitCode::SUCCESS)
}
