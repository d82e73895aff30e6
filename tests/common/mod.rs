//! Helpers shared by the golden tests: locating /work/shared and running the library's golden
//! comparisons ([`primer::verify`]) on the CPU, on the path the calling thread has chosen.
#![allow(dead_code)]

use candle_core::Device;
use primer::verify::{Status, Tolerances, VerifyOptions, VerifyReport, verify};
use std::path::{Path, PathBuf};

/// The shared read-only material: `$PRIMER_SHARED_DIR`, else `../shared` next to the crate.
pub fn shared_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("PRIMER_SHARED_DIR") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    p.is_dir().then_some(p)
}

/// The golden dumps: `$PRIMER_GOLDEN_DIR`, else `<shared>/golden`.
pub fn golden_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("PRIMER_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => shared_dir()?.join("golden"),
    };
    p.is_dir().then_some(p)
}

/// The committed PE-method dumps of tools/pe_golden.py.
pub fn pe_golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-pe")
}

pub fn cpu_options(encoder_model: Option<PathBuf>) -> VerifyOptions {
    VerifyOptions {
        device: Device::Cpu,
        device_name: "cpu".into(),
        encoder_model,
        tolerances: Tolerances::FP32,
    }
}

/// Replays the dumps of `dir` whose mode `wants` accepts; panics listing every failed
/// comparison. Returns the report (only the selected dumps) for further checks.
pub fn verify_modes(
    dir: &Path,
    opts: &VerifyOptions,
    wants: &dyn Fn(&str) -> bool,
    label: &str,
) -> VerifyReport {
    let mut report = verify(&[dir.to_path_buf()], opts, &mut |_| {}).unwrap();
    report.dumps.retain(|d| wants(&d.mode));
    assert!(
        !report.dumps.is_empty(),
        "{label}: no dumps of the expected modes under {}",
        dir.display()
    );
    let mut problems = Vec::new();
    for d in &report.dumps {
        match d.status {
            Status::Pass => {
                assert!(d.compared > 0, "{}: nothing compared", d.name);
                eprintln!(
                    "{} ({label}, {} path): {} comparisons ok ({:.2}s)",
                    d.name, report.path, d.compared, d.seconds
                );
            }
            _ => problems.push(format!(
                "{} ({:?}): {}{}",
                d.name,
                d.status,
                d.failures.join("\n  "),
                d.error.as_deref().unwrap_or("")
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{label}: {} dump(s) do not match:\n{}",
        problems.len(),
        problems.join("\n")
    );
    report
}

/// Every mode of `modes` was among the dumps checked.
pub fn all_modes_checked(report: &VerifyReport, modes: &[&str]) {
    for m in modes {
        assert!(
            report.dumps.iter().any(|d| d.mode == *m),
            "no dump of mode {m} was checked"
        );
    }
}

/// The shape of the tiny random model the CLI end-to-end tests train: one layer, hidden 32.
pub const TINY_MODEL_SHAPE: [&str; 10] = [
    "--hidden",
    "32",
    "--layers",
    "1",
    "--heads",
    "2",
    "--intermediate",
    "64",
    "--max-position",
    "64",
];

/// Writes the tiny random model to `out` with `primer init-model` (run in `cwd`, the tokenizer
/// copied from `tokenizer`) and returns `out`; panics with primer's output on failure.
pub fn init_tiny_model(cwd: &Path, out: &Path, tokenizer: &Path) -> PathBuf {
    let mut args = vec![
        "init-model",
        "--out",
        out.to_str().expect("UTF-8 path"),
        "--tokenizer-from",
        tokenizer.to_str().expect("UTF-8 path"),
    ];
    args.extend(TINY_MODEL_SHAPE);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_primer"))
        .args(&args)
        .current_dir(cwd)
        .output()
        .expect("run primer init-model");
    assert!(
        o.status.success(),
        "init-model failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_path_buf()
}
