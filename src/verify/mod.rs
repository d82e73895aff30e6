//! The golden comparisons: primer's training steps, meta-priming outer steps, PE methods and
//! encoder forward, replayed on a chosen device against the PyTorch reference dumps
//! (shared/golden, made by `shared/reference/torch_ref.py`; tests/fixtures/golden-pe, made by
//! `tools/pe_golden.py`). Every setting is read from each dump's meta.json.
//!
//! This is library code so that one `primer` binary can check a GPU (`primer verify-golden DIR
//! --device cuda:0`, what `tools/gpu-check.sh` runs) where no test executable travels; the
//! test suite runs the same code on the CPU, through the binary and through [`verify`].
//!
//! A dump folder holds `meta.json` + `dump.safetensors` (+ the HF model it starts from); its
//! `mode` says what is replayed:
//!
//! | mode | replay |
//! | --- | --- |
//! | `full`, `adapter`, `head` | one fine-tuning step ([`step`]) |
//! | `bitfit`, `lora`, `adapter-all` | one fine-tuning step of a PE method |
//! | `meta-pe`, `meta-full` | one meta-priming outer step ([`meta`]) |
//! | `meta-bitfit`, `meta-lora` | one outer step with the PE method as the inner loop's module |
//!
//! A folder holding `forward.safetensors` is the encoder dump, checked when a MiniLM checkpoint
//! is given ([`VerifyOptions::encoder_model`]).
//!
//! Which implementation runs is the calling thread's choice ([`crate::model::dispatch`]): on the
//! CPU the fused kernels unless `composite_only` (or `PRIMER_CPU_KERNELS=off`) is in effect; on
//! CUDA always the device-generic composite ops.

pub mod compare;
mod dump;
mod encoder;
mod meta;
mod step;

pub use compare::{Checks, Tolerances};
pub use dump::GoldenDump;

use candle_core::Device;
use serde::Serialize;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Meta { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Dump { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Replay { what: String, message: String },
    #[error(
        "no golden dumps under {0}: give folders holding meta.json + dump.safetensors (or folders of them, e.g. shared/golden, tests/fixtures/golden-pe)"
    )]
    NoDumps(String),
}

/// Turns another module's error (or a missing value) into a [`VerifyError::Replay`] naming the
/// step that failed.
pub(crate) trait OrReplay<T> {
    fn or_replay(self, what: &str) -> Result<T, VerifyError>;
}

impl<T, E: Display> OrReplay<T> for Result<T, E> {
    fn or_replay(self, what: &str) -> Result<T, VerifyError> {
        self.map_err(|e| VerifyError::Replay {
            what: what.to_string(),
            message: e.to_string(),
        })
    }
}

impl<T> OrReplay<T> for Option<T> {
    fn or_replay(self, what: &str) -> Result<T, VerifyError> {
        self.ok_or_else(|| VerifyError::Replay {
            what: what.to_string(),
            message: "missing".into(),
        })
    }
}

/// What a found dump is replayed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpKind {
    /// A step dump (`meta.json` + `dump.safetensors`); its mode says which replay.
    Step,
    /// `forward.safetensors`: MiniLM hidden states.
    Encoder,
}

/// One dump found under the folders given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDump {
    pub name: String,
    pub path: PathBuf,
    pub kind: DumpKind,
}

fn found_in(dir: &Path) -> Option<FoundDump> {
    let name = dir.file_name()?.to_string_lossy().into_owned();
    if dir.join("meta.json").is_file() && dir.join("dump.safetensors").is_file() {
        Some(FoundDump {
            name,
            path: dir.to_path_buf(),
            kind: DumpKind::Step,
        })
    } else if dir.join("forward.safetensors").is_file() {
        Some(FoundDump {
            name,
            path: dir.join("forward.safetensors"),
            kind: DumpKind::Encoder,
        })
    } else {
        None
    }
}

/// The dumps in `dirs`: each is a dump folder itself or a folder of dump folders (sorted).
pub fn find_dumps(dirs: &[PathBuf]) -> Result<Vec<FoundDump>, VerifyError> {
    let mut out = Vec::new();
    for dir in dirs {
        if let Some(f) = found_in(dir) {
            out.push(f);
            continue;
        }
        let entries = std::fs::read_dir(dir).map_err(|source| VerifyError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        out.extend(children.iter().filter_map(|c| found_in(c)));
    }
    if out.is_empty() {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(VerifyError::NoDumps(names.join(", ")));
    }
    Ok(out)
}

/// Where and how to replay.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub device: Device,
    /// How the report names the device (`cpu`, `cuda:0`).
    pub device_name: String,
    /// The all-MiniLM-L6-v2 folder the encoder dump was made from; without it that dump is
    /// reported as skipped.
    pub encoder_model: Option<PathBuf>,
    pub tolerances: Tolerances,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every comparison within tolerance.
    Pass,
    /// At least one comparison out of tolerance.
    Fail,
    /// The replay could not run (a missing tensor, an unknown mode, a device error).
    Error,
    /// Not replayed (the reason is in `error`).
    Skipped,
}

/// The result for one dump.
#[derive(Debug, Clone, Serialize)]
pub struct DumpOutcome {
    pub name: String,
    pub path: PathBuf,
    /// The dump's mode (`full`, `meta-pe`, …) or `encoder`.
    pub mode: String,
    pub status: Status,
    /// Comparisons made (tensors, losses, name sets).
    pub compared: usize,
    /// One message per failed comparison, naming the worst element.
    pub failures: Vec<String>,
    /// Why the replay could not run, or why it was skipped.
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub device: String,
    /// `kernels` (primer's fused CPU kernels) or `device-generic` (the composite ops CUDA runs).
    pub path: &'static str,
    pub tolerances: Tolerances,
    pub dumps: Vec<DumpOutcome>,
}

impl VerifyReport {
    /// No dump failed or errored (skipped ones are listed but do not fail).
    pub fn passed(&self) -> bool {
        self.dumps
            .iter()
            .all(|d| matches!(d.status, Status::Pass | Status::Skipped))
    }

    pub fn count(&self, status: Status) -> usize {
        self.dumps.iter().filter(|d| d.status == status).count()
    }
}

/// Replays one dump.
fn replay(found: &FoundDump, opts: &VerifyOptions) -> (String, Result<Checks, VerifyError>) {
    let dev = &opts.device;
    let tol = &opts.tolerances;
    if found.kind == DumpKind::Encoder {
        let r = match &opts.encoder_model {
            Some(model) => encoder::check_encoder(&found.path, model, dev, tol),
            None => Err(VerifyError::Replay {
                what: "skipped".into(),
                message:
                    "the encoder dump needs the all-MiniLM-L6-v2 checkpoint (--encoder-model DIR)"
                        .into(),
            }),
        };
        return ("encoder".into(), r);
    }
    let d = match GoldenDump::load(&found.path, dev) {
        Ok(d) => d,
        Err(e) => return ("?".into(), Err(e)),
    };
    let mode = match d.mode() {
        Ok(m) => m.to_string(),
        Err(e) => return ("?".into(), Err(e)),
    };
    if let Some(method) = step::std_method(&mode) {
        let r = step::check_std_step(&d, method, dev, tol);
        return (mode, r);
    }
    let r = match mode.as_str() {
        "bitfit" | "lora" | "adapter-all" => step::check_pe_step(&d, dev, tol),
        "meta-pe" | "meta-full" => meta::check_std_meta(&d, dev, tol),
        "meta-bitfit" | "meta-lora" => meta::check_pe_meta(&d, dev, tol),
        other => Err(VerifyError::Meta {
            path: found.path.join("meta.json"),
            message: format!(
                "unknown mode '{other}' (full, adapter, head, bitfit, lora, adapter-all, meta-pe, meta-full, meta-bitfit, meta-lora)"
            ),
        }),
    };
    (mode, r)
}

/// Replays every dump found in `dirs` on `opts.device`; `progress` sees each outcome as it
/// is made. Errors only when no dump is found; a dump that cannot be replayed is an outcome.
pub fn verify(
    dirs: &[PathBuf],
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(&DumpOutcome),
) -> Result<VerifyReport, VerifyError> {
    let found = find_dumps(dirs)?;
    let mut dumps = Vec::with_capacity(found.len());
    for f in &found {
        let t0 = Instant::now();
        let (mode, result) = replay(f, opts);
        let seconds = t0.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(c) => DumpOutcome {
                name: f.name.clone(),
                path: f.path.clone(),
                mode,
                status: if c.failures.is_empty() {
                    Status::Pass
                } else {
                    Status::Fail
                },
                compared: c.compared,
                failures: c.failures,
                error: None,
                seconds,
            },
            Err(e) => DumpOutcome {
                name: f.name.clone(),
                path: f.path.clone(),
                status: match &e {
                    VerifyError::Replay { what, .. } if what == "skipped" => Status::Skipped,
                    _ => Status::Error,
                },
                mode,
                compared: 0,
                failures: Vec::new(),
                error: Some(e.to_string()),
                seconds,
            },
        };
        progress(&outcome);
        dumps.push(outcome);
    }
    Ok(VerifyReport {
        device: opts.device_name.clone(),
        path: if opts.device.is_cpu() && crate::model::dispatch::cpu_kernels_on() {
            "kernels"
        } else {
            "device-generic"
        },
        tolerances: opts.tolerances,
        dumps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_dumps_takes_dump_folders_and_folders_of_them() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("meta.json"), "{}").unwrap();
        std::fs::write(a.join("dump.safetensors"), "").unwrap();
        let enc = root.path().join("encoder");
        std::fs::create_dir(&enc).unwrap();
        std::fs::write(enc.join("forward.safetensors"), "").unwrap();
        std::fs::create_dir(root.path().join("not-a-dump")).unwrap();
        let found = find_dumps(&[root.path().to_path_buf()]).unwrap();
        let names: Vec<(&str, DumpKind)> =
            found.iter().map(|f| (f.name.as_str(), f.kind)).collect();
        assert_eq!(
            names,
            [("a", DumpKind::Step), ("encoder", DumpKind::Encoder)]
        );
        assert_eq!(find_dumps(std::slice::from_ref(&a)).unwrap().len(), 1);
        let empty = root.path().join("not-a-dump");
        let e = find_dumps(&[empty]).unwrap_err().to_string();
        assert!(e.contains("no golden dumps under"), "{e}");
        assert!(find_dumps(&[root.path().join("missing")]).is_err());
    }

    #[test]
    fn an_unknown_mode_is_an_error_outcome_not_a_pass() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("odd");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("meta.json"), r#"{"mode": "sideways"}"#).unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(
                "x".to_string(),
                candle_core::Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
            )]),
            d.join("dump.safetensors"),
        )
        .unwrap();
        let opts = VerifyOptions {
            device: Device::Cpu,
            device_name: "cpu".into(),
            encoder_model: None,
            tolerances: Tolerances::FP32,
        };
        let report = verify(&[d], &opts, &mut |_| {}).unwrap();
        assert_eq!(report.dumps[0].status, Status::Error);
        assert!(
            report.dumps[0]
                .error
                .as_deref()
                .unwrap()
                .contains("unknown mode 'sideways'")
        );
        assert!(!report.passed());
    }
}
