//! `primer bench`: training-step speed side by side with the PyTorch reference
//! (`../shared/reference/torch_ref.py`), printed as ratios primer / PyTorch.
//!
//! Both sides time the same work on a MiniLM-sized random BERT (H384, L6, 12 heads, vocab 30522),
//! batch 16 × seq 64, the same thread count, in one invocation: the reference first, then
//! primer. Speed targets live here, never in timed tests.

use anyhow::Context;
use candle_core::Device;
use primer::config::FinetuneMethod;
use primer::config::InnerDropout;
use primer::config::SupportMode;
use primer::data::{Batch, Batcher, EncodedSentence};
use primer::model::IGNORE_INDEX;
use primer::model::init::random_encoder;
use primer::model::{BertConfig, ParamGroup, Tagger, masked_cross_entropy};
use primer::prime::bench::{MetaBenchSpec, time_meta_steps};
use primer::rng::SeededRng;
use primer::train::optim::{AdamW, AdamWConfig};
use primer::train::{EncoderCache, inputs_of};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Python with torch + transformers + safetensors (default: $TORCH_PYTHON, else /tmp/torchref/bin/python, else python3).
    #[arg(long)]
    torch_python: Option<PathBuf>,
    /// The reference script (default: ../shared/reference/torch_ref.py).
    #[arg(long)]
    torch_ref: Option<PathBuf>,
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
}

const BATCH: usize = 16;
const SEQ: usize = 64;

fn minilm_config() -> BertConfig {
    let mut c = BertConfig::new(30522, 384, 6, 12, 1536);
    c.hidden_dropout_prob = 0.0;
    c.attention_probs_dropout_prob = 0.0;
    c
}

/// Synthetic NER sentences like the reference's: random lengths in [SEQ/2, SEQ], [CLS] ... [SEP],
/// mostly-`O` labels with ~15% ignored positions.
fn synthetic_sentences(n: usize, vocab: u32, rng: &mut SeededRng) -> Vec<EncodedSentence> {
    (0..n)
        .map(|_| {
            let len = SEQ / 2 + rng.below(SEQ / 2 + 1);
            let mut ids = vec![101u32];
            let mut labels = vec![IGNORE_INDEX];
            for _ in 1..len - 1 {
                ids.push(103 + rng.below((vocab - 103) as usize) as u32);
                labels.push(if rng.uniform() < 0.15 {
                    IGNORE_INDEX
                } else if rng.uniform() < 0.55 {
                    0
                } else {
                    1 + rng.below(6) as i64
                });
            }
            ids.push(102);
            labels.push(IGNORE_INDEX);
            let word_ids = (0..len as i64)
                .map(|t| {
                    if t == 0 || t == len as i64 - 1 {
                        -1
                    } else {
                        t - 1
                    }
                })
                .collect();
            EncodedSentence {
                input_ids: ids,
                word_ids,
                labels,
                n_words: len - 2,
                truncated_words: 0,
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    v[v.len() / 2]
}

struct Bench {
    device: Device,
    tagger: Tagger,
    batches: Vec<Batch>,
    sentences: Vec<EncodedSentence>,
}

impl Bench {
    fn new(run_batches: usize) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let cfg = minilm_config();
        let enc = random_encoder(&cfg, 0, &device)?.to_params()?;
        let mut tagger = Tagger::new(cfg.clone(), enc, device.clone());
        tagger.ensure_adapter(64, &mut SeededRng::derive(1, "init.adapter"))?;
        tagger.add_head("x", 7, &mut SeededRng::derive(1, "init.head"))?;
        let mut rng = SeededRng::derive(2, "bench.data");
        let sentences =
            synthetic_sentences(run_batches.max(8) * BATCH, cfg.vocab_size as u32, &mut rng);
        let batcher = Batcher::new(BATCH, 0);
        let batches = batcher.sequential_batches(&sentences, &device)?;
        Ok(Self {
            device,
            tagger,
            batches,
            sentences,
        })
    }

    /// Median milliseconds of one optimiser step of `method` (encoder run every step).
    fn step_ms(&mut self, method: FinetuneMethod, steps: usize) -> anyhow::Result<f64> {
        let groups = self.tagger.groups_for(method, "x");
        self.tagger.set_trainable(&groups)?;
        let mut opt = AdamW::new(
            self.tagger.trainable_vars(),
            AdamWConfig {
                lr: 5e-5,
                ..AdamWConfig::default()
            },
        )?;
        let mut times = Vec::new();
        for k in 0..steps + 2 {
            let batch = &self.batches[k % self.batches.len()];
            let t0 = Instant::now();
            let logits = self.tagger.logits(&inputs_of(batch), "x", None)?;
            let loss = masked_cross_entropy(&logits, &batch.labels)?;
            let grads = primer::model::backward(&loss)?;
            opt.step(&grads)?;
            if k >= 2 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(median(times))
    }

    /// A whole adapter-tuning run over `n` batches × `epochs` with the encoder cache.
    fn adapter_run(&mut self, n: usize, epochs: usize) -> anyhow::Result<AdapterRunTimes> {
        self.tagger
            .set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("x".into())])?;
        let sentences = &self.sentences[..n * BATCH];
        let t0 = Instant::now();
        let cache = EncoderCache::labelled_rows(
            &self.tagger,
            sentences,
            &Batcher::for_inference(&self.device, 0),
            &self.device,
        )?;
        let cache_ms = t0.elapsed().as_secs_f64() * 1e3;
        let cache_flops = cache.encoder_flops();
        let t1 = Instant::now();
        let mut opt = AdamW::new(
            self.tagger.trainable_vars(),
            AdamWConfig {
                lr: 5e-3,
                ..AdamWConfig::default()
            },
        )?;
        for _ in 0..epochs {
            for batch in &self.batches[..n] {
                let rows = cache.rows_of(&batch.indices)?;
                let logits = self.tagger.logits_from_hidden(&rows.hidden, "x")?;
                let loss = masked_cross_entropy(&logits, &rows.labels)?;
                let grads = primer::model::backward(&loss)?;
                opt.step(&grads)?;
            }
        }
        Ok(AdapterRunTimes {
            cache_ms,
            cache_flops,
            train_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Where a whole adapter-tuning run spends its time.
struct AdapterRunTimes {
    /// Encoding every training sentence once (graph-free, length-sorted batches of 512 tokens,
    /// one batch per thread) and keeping its labelled tokens' rows.
    cache_ms: f64,
    /// The matrix-product FLOPs of that pass ([`EncoderCache::encoder_flops`]).
    cache_flops: f64,
    /// Every optimiser step of every epoch on the batch's cached labelled rows.
    train_ms: f64,
}

/// This machine's fp32 FMA peak in GFLOP/s at `threads` threads: each thread runs twelve
/// independent chains of 8-wide fused multiply-adds, so only the FMA units limit it. The
/// ceiling any GEMM-bound pass works under. `None` without AVX2 + FMA.
fn fma_peak_gflops(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return None;
        }
        const ITERS: usize = 20_000_000;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .ok()?;
        let once = || {
            let t0 = Instant::now();
            // SAFETY: AVX2 and FMA were detected above.
            std::hint::black_box(pool.broadcast(|_| unsafe { fma_chains(ITERS) }));
            t0.elapsed().as_secs_f64()
        };
        once(); // lets the clock ramp up
        let best = (0..3).map(|_| once()).fold(f64::INFINITY, f64::min);
        Some((threads * ITERS * FMA_CHAINS * 16) as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

#[cfg(target_arch = "x86_64")]
const FMA_CHAINS: usize = 12;

/// `iters` rounds of one FMA on each of [`FMA_CHAINS`] accumulators (16 FLOPs each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); FMA_CHAINS];
    for _ in 0..iters {
        for r in &mut acc {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &r| _mm256_add_ps(s, r));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds the 8 floats the store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// Runs the reference and returns median ms per (mode, variant, support).
fn torch_medians(args: &BenchArgs) -> anyhow::Result<BTreeMap<String, f64>> {
    let python = args
        .torch_python
        .clone()
        .or_else(|| std::env::var_os("TORCH_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| {
            let p = PathBuf::from("/tmp/torchref/bin/python");
            if p.exists() {
                p
            } else {
                PathBuf::from("python3")
            }
        });
    let script = args
        .torch_ref
        .clone()
        .unwrap_or_else(|| PathBuf::from("../shared/reference/torch_ref.py"));
    anyhow::ensure!(
        script.exists(),
        "the PyTorch reference {} is missing (pass --torch-ref, or --no-torch for primer's numbers alone)",
        script.display()
    );
    let mut out = BTreeMap::new();
    let runs: [&[&str]; 3] = [
        &["--mode", "full,adapter"],
        &["--mode", "meta-pe", "--variant", "naive,cached"],
        &[
            "--mode",
            "meta-pe,meta-full",
            "--support",
            "distinct",
            "--variant",
            "cached",
        ],
    ];
    for extra in runs {
        eprintln!(
            "running the PyTorch reference: {} {}",
            script.display(),
            extra.join(" ")
        );
        let output = Command::new(&python)
            .arg(&script)
            .args([
                "--minilm",
                "--threads",
                &args.threads.to_string(),
                "--steps",
                &args.steps.to_string(),
            ])
            .args(extra)
            .output()
            .with_context(|| {
                format!(
                    "cannot run {} (set --torch-python or TORCH_PYTHON)",
                    python.display()
                )
            })?;
        anyhow::ensure!(
            output.status.success(),
            "the PyTorch reference failed (install torch, transformers, safetensors into a venv and set TORCH_PYTHON):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(mode), Some(ms)) = (v["mode"].as_str(), v["median_ms"].as_f64()) else {
                continue;
            };
            let variant = v["variant"].as_str().unwrap_or("");
            let support = v["support"].as_str().unwrap_or("");
            let key = [mode, variant, support]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("/");
            out.insert(key, ms);
        }
    }
    Ok(out)
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: set before any thread pool starts (first thing this command does).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    let torch = if args.no_torch {
        None
    } else {
        match torch_medians(&args) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("PyTorch side skipped: {e:#}");
                None
            }
        }
    };

    eprintln!(
        "timing primer (MiniLM size, batch {BATCH}, seq {SEQ}, {} threads)",
        args.threads
    );
    let mut bench = Bench::new(args.run_batches)?;
    let full = bench.step_ms(FinetuneMethod::Full, args.steps)?;
    let adapter = bench.step_ms(FinetuneMethod::Adapter, args.steps)?;
    let run = bench.adapter_run(args.run_batches, args.run_epochs)?;
    let run_steps = args.run_batches * args.run_epochs;

    let mut rows: Vec<(String, f64, Option<f64>)> = vec![
        (
            "full-FT step".into(),
            full,
            torch.as_ref().and_then(|t| t.get("full").copied()),
        ),
        (
            "adapter step".into(),
            adapter,
            torch.as_ref().and_then(|t| t.get("adapter").copied()),
        ),
        (
            format!(
                "adapter-tuning run ({} batches × {} epochs; PyTorch = straightforward loop)",
                args.run_batches, args.run_epochs
            ),
            run.cache_ms + run.train_ms,
            torch
                .as_ref()
                .and_then(|t| t.get("adapter"))
                .map(|ms| ms * run_steps as f64),
        ),
        (
            "  of which: encoder cache (every sentence encoded once)".into(),
            run.cache_ms,
            None,
        ),
        (
            format!("  of which: {run_steps} steps on cached encoder outputs"),
            run.train_ms,
            None,
        ),
    ];
    let meta = |spec: MetaBenchSpec| -> anyhow::Result<f64> {
        let spec = MetaBenchSpec {
            steps: args.steps,
            ..spec
        };
        Ok(time_meta_steps(bench.tagger.clone(), &spec)?.median_ms)
    };
    let meta_pe = meta(MetaBenchSpec::meta_pe())?;
    let meta_pe_distinct = meta(MetaBenchSpec {
        support: SupportMode::Distinct,
        ..MetaBenchSpec::meta_pe()
    })?;
    let meta_full = meta(MetaBenchSpec::meta_full_distinct())?;
    // What the faithful inner dropout costs (the reference runs without dropout, so these are
    // primer's own rows): MiniLM's 0.1, per-step masks (the default) against one per batch.
    let with_inner_dropout = |mode: InnerDropout| {
        meta(MetaBenchSpec {
            dropout: Some(0.1),
            inner_dropout: mode,
            ..MetaBenchSpec::meta_pe()
        })
    };
    let per_step = with_inner_dropout(InnerDropout::PerStep)?;
    let shared = with_inner_dropout(InnerDropout::Shared)?;
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
        rows.push((
            label.to_string(),
            ours,
            torch.as_ref().and_then(|t| t.get(key)).copied(),
        ));
    }
    println!(
        "{:<78} {:>11} {:>11} {:>8}",
        "measurement (median ms)", "primer", "PyTorch", "ratio"
    );
    for (label, ours, theirs) in rows {
        let ours_s = if ours.is_nan() {
            "-".to_string()
        } else {
            format!("{ours:.1}")
        };
        let (theirs_s, ratio) = match theirs {
            Some(t) if !ours.is_nan() => (format!("{t:.1}"), format!("{:.2}", ours / t)),
            Some(t) => (format!("{t:.1}"), "-".into()),
            None => ("-".into(), "-".into()),
        };
        println!("{label:<78} {ours_s:>11} {theirs_s:>11} {ratio:>8}");
    }
    println!("ratio = primer / PyTorch (below 1 means primer is faster)");
    print_run_ceiling(&RunWork {
        torch_step_flops: bench
            .tagger
            .config
            .encoder_forward_flops(BATCH, SEQ, BATCH * SEQ),
        run_steps,
        cache_flops: run.cache_flops,
        cache_ms: run.cache_ms,
        torch_step_ms: torch.as_ref().and_then(|t| t.get("adapter")).copied(),
        fma_peak_gflops: fma_peak_gflops(args.threads),
        threads: args.threads,
    });
    Ok(ExitCode::SUCCESS)
}

/// The encoder work of the whole adapter-tuning run on both sides, and the times it took.
struct RunWork {
    /// One PyTorch adapter step's encoder forward (batch × seq, padded, every row).
    torch_step_flops: f64,
    run_steps: usize,
    /// primer's one cache pass (length-sorted batches, last layer at the labelled rows).
    cache_flops: f64,
    cache_ms: f64,
    torch_step_ms: Option<f64>,
    fma_peak_gflops: Option<f64>,
    threads: usize,
}

impl RunWork {
    /// Speed-up ceilings of the run over PyTorch's loop if training on cached outputs were
    /// free: at PyTorch's own FLOP rate (the work ratio), and with the cache pass at the FMA
    /// peak (nothing computes faster on this machine).
    fn ceilings(&self) -> (f64, Option<f64>) {
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

/// How close the adapter-tuning run is to what skipping encoder work can buy on this machine.
fn print_run_ceiling(w: &RunWork) {
    let gflops = |flops: f64, ms: f64| flops / (ms * 1e6);
    println!();
    println!(
        "adapter-tuning run, encoder work in matrix products: PyTorch {:.1} GFLOP per step \
         ({BATCH} × {SEQ} padded), {:.0} over its {} steps; primer's cache {:.0} GFLOP once \
         (length-sorted batches, last layer at the labelled rows)",
        w.torch_step_flops / 1e9,
        w.torch_step_flops * w.run_steps as f64 / 1e9,
        w.run_steps,
        w.cache_flops / 1e9
    );
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
    println!("rates: {}", rates.join(" · "));
    let (at_equal_rate, at_peak) = w.ceilings();
    let at_peak = at_peak.map_or(String::new(), |c| {
        format!(", {c:.1}× with the cache pass at the FMA peak")
    });
    println!(
        "the run's speed-up ceiling if cached training steps were free: {at_equal_rate:.1}× at \
         PyTorch's FLOP rate{at_peak}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn fma_peak_is_positive_where_measured() {
        if let Some(p) = fma_peak_gflops(1) {
            assert!(p.is_finite() && p > 1.0, "{p}");
        }
    }
}
