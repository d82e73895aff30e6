//! End-to-end tests of `primer bench`'s device, size and JSON flags, on the CPU at the tiny
//! size without the PyTorch side (`--no-torch`): they check what the bench reports, never how
//! fast anything is.

use std::process::{Command, Output};

fn primer(args: &[&str]) -> Output {
    primer_with(args, &[])
}

fn primer_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_primer"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run primer")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A tiny bench with the batch shape overridden writes the table to stdout and the JSON to the
/// file: the size, the device, and per row a positive median, tokens/s that is the row's
/// tokens over that median, and a peak memory.
#[test]
fn tiny_bench_on_the_cpu_writes_json_with_times_rates_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let out = primer(&[
        "bench",
        "--device",
        "cpu",
        "--size",
        "tiny",
        "--batch",
        "4",
        "--seq",
        "16",
        "--no-torch",
        "--steps",
        "1",
        "--threads",
        "1",
        "--run-batches",
        "2",
        "--run-epochs",
        "1",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("primer bench on cpu: tiny size (H64, L2, 2 heads, FFN 128, vocab 1000), batch 4 × seq 16"),
        "{stdout}"
    );
    assert!(stdout.contains("PyTorch: not run (--no-torch)"), "{stdout}");
    // fp32 unless asked: make bench's numbers keep their meaning.
    assert!(
        stdout.contains("; precision primer fp32, PyTorch -; "),
        "{stdout}"
    );
    assert!(stdout.contains("fp32 FMA peak at 1 threads"), "{stdout}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["size"]["name"], "tiny");
    assert_eq!(v["size"]["hidden_size"], 64);
    assert_eq!(
        (v["size"]["batch"].as_u64(), v["size"]["seq"].as_u64()),
        (Some(4), Some(16))
    );
    assert_eq!(v["memory_kind"], "process_peak_rss");
    assert_eq!(v["torch"]["ran"], false);
    assert_eq!(v["torch"]["notes"][0], "not run (--no-torch)");
    assert_eq!(v["precision"]["requested"], "fp32");
    assert_eq!(v["precision"]["primer"], "fp32");
    assert!(v["cpu"]["fma_peak_gflops"].as_f64().unwrap() > 0.0, "{v}");

    let rows = v["rows"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    for want in [
        "full_ft",
        "adapter",
        "adapter_on_cache",
        "meta_pe_same",
        "meta_full_distinct",
    ] {
        assert!(keys.contains(&want), "no row {want} in {keys:?}");
    }
    for r in rows {
        let p = &r["primer"];
        let ms = p["median_ms"].as_f64().unwrap();
        let tokens = r["tokens_per_step"].as_u64().unwrap();
        let rate = p["tokens_per_s"].as_f64().unwrap();
        assert!(ms > 0.0 && tokens > 0, "{r}");
        let want = tokens as f64 / (ms / 1e3);
        assert!((rate - want).abs() <= 1e-9 * want, "{r}");
        assert!(p["peak_memory_bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["torch"].is_null() && r["ratio"].is_null(), "{r}");
    }
    let row = |key: &str| rows.iter().find(|r| r["key"] == key).unwrap();
    // A fine-tuning step reads one 4 × 16 batch; a same-support meta step 2 tasks × 2.
    assert_eq!(row("full_ft")["tokens_per_step"], 64);
    assert_eq!(row("meta_pe_same")["tokens_per_step"], 4 * 64);
}

/// The smallest whole bench: the tiny size at batch 2 × seq 8, one step per measurement, one
/// batch in the adapter-tuning run, no PyTorch; `extra` flags after these.
fn smallest_bench(extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "bench",
        "--size",
        "tiny",
        "--seq",
        "8",
        "--batch",
        "2",
        "--no-torch",
        "--steps",
        "1",
        "--threads",
        "1",
        "--run-batches",
        "1",
        "--run-epochs",
        "1",
    ];
    args.extend_from_slice(extra);
    primer_with(&args, env)
}

/// All 14 rows of a bench's JSON, each with a positive primer time.
fn assert_every_row_timed(v: &serde_json::Value) {
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 14, "{v}");
    for r in rows {
        assert!(r["primer"]["median_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// `--json` without a file prints the JSON instead of the table. Run on the device-generic
/// path (CPU kernels off), which is what a GPU runs: every bench row works there too.
#[test]
fn json_without_a_file_goes_to_stdout_and_the_generic_path_runs_every_row() {
    let out = smallest_bench(&["--json"], &[("PRIMER_CPU_KERNELS", "off")]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {}", text(&out));
    });
    assert_eq!(v["size"]["seq"], 8);
    assert_every_row_timed(&v);
}

/// `--precision bf16` on the CPU: every row is timed (on the device-generic path, which bf16
/// takes), and the header and the JSON say primer ran bf16 and PyTorch did not run.
#[test]
fn bf16_bench_on_the_cpu_times_every_row_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let json_path = json_path.to_str().unwrap();
    let out = smallest_bench(&["--precision", "bf16", "--json", json_path], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().unwrap_or("");
    assert!(
        header.contains("; precision primer bf16, PyTorch -; "),
        "{header}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    assert_eq!(
        v["precision"],
        serde_json::json!({"requested": "bf16", "primer": "bf16", "torch": null})
    );
    assert_every_row_timed(&v);
}

/// A GPU on a build without CUDA, an unknown device and a bad batch shape are refused before
/// anything runs, each saying what to do.
#[test]
fn bad_devices_and_shapes_are_refused_up_front() {
    #[cfg(not(feature = "cuda"))]
    {
        let out = primer(&[
            "bench",
            "--device",
            "cuda:0",
            "--size",
            "mbert",
            "--no-torch",
        ]);
        assert!(!out.status.success());
        let msg = text(&out);
        assert!(msg.contains("make check-cuda"), "{msg}");
        assert!(!msg.contains("timing primer"), "{msg}");
    }
    let out = primer(&["bench", "--device", "tpu", "--no-torch"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("use 'cpu' or 'cuda:N'"),
        "{}",
        text(&out)
    );
    let out = primer(&["bench", "--size", "tiny", "--seq", "4", "--no-torch"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--seq must be between 8"),
        "{}",
        text(&out)
    );
}

/// `--steps-only` prints primer's two step lines in the asked precision and nothing of the
/// full comparison (no table, no peak probe); it takes no `--json`.
#[test]
fn steps_only_times_the_two_steps_and_stops() {
    let out = primer(&[
        "bench",
        "--steps-only",
        "--size",
        "tiny",
        "--steps",
        "1",
        "--threads",
        "1",
        "--precision",
        "bf16",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("full-FT step: median "), "{stdout}");
    assert!(stdout.contains("adapter step: median "), "{stdout}");
    assert!(stdout.contains("precision: bf16"), "{stdout}");
    assert!(stdout.contains("primer's GEMM backend: "), "{stdout}");
    let all = text(&out);
    assert!(!all.contains("measurement (median ms)"), "{all}");
    assert!(!all.contains("FMA peak"), "{all}");

    let with_json = primer(&["bench", "--steps-only", "--json", "-"]);
    assert!(!with_json.status.success());
    assert!(text(&with_json).contains("--json"), "{}", text(&with_json));
}
