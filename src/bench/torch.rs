//! The PyTorch side: runs the reference (`../shared/reference/torch_ref.py`, through
//! `tools/torch_device.py`, which puts its model and batches on the bench's device and knows
//! the bench's sizes), the LoRA rows' `tools/bench_pe.py` and the op profiler script
//! (`tools/torch_op_profile.py`) in a Python with torch, and reads what they print (one JSON
//! object per line).

use super::error::BenchError;
use super::workload::WorkloadSize;
use crate::config::Precision;
use crate::device::DeviceSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The exit status of `tools/torch_device.py` and `tools/bench_pe.py` when torch (or peft, or
/// the device) is not there: the bench reports the side as not run, with the reason.
const UNAVAILABLE_EXIT: i32 = 3;

/// What the PyTorch side runs on: the bench's device and workload, and the precision asked.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTarget {
    pub device: DeviceSpec,
    pub size: WorkloadSize,
    /// As asked, not resolved: the scripts resolve `tf32` on a CPU to fp32 themselves and
    /// print what they ran ([`TorchTiming::precision`]).
    pub precision: Precision,
}

impl TorchTarget {
    /// The flags of the device, the model size and the precision.
    fn model_args(&self) -> [String; 6] {
        [
            "--device".into(),
            self.device.to_string(),
            "--size".into(),
            self.size.name.as_str().into(),
            "--precision".into(),
            self.precision.as_str().into(),
        ]
    }

    /// The flags of the batch shape.
    fn batch_args(&self) -> [String; 4] {
        [
            "--batch".into(),
            self.size.batch.to_string(),
            "--seq".into(),
            self.size.seq.to_string(),
        ]
    }
}

/// One PyTorch measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TorchTiming {
    pub median_ms: f64,
    /// The allocator's peak on a GPU, the process's peak RSS on the CPU (`memory_kind`).
    pub peak_memory_bytes: Option<u64>,
    /// The precision the step ran in, as the script says (None when it does not say).
    pub precision: Option<Precision>,
}

/// Where the Python side is.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchSide {
    pub python: PathBuf,
    /// The reference (`torch_ref.py`).
    pub reference: PathBuf,
    /// The op profiler (`tools/torch_op_profile.py`).
    pub profiler: PathBuf,
    /// The PyTorch + `peft` side of the LoRA rows (`tools/bench_pe.py`).
    pub pe_bench: PathBuf,
    /// What runs the reference on a device and size (`tools/torch_device.py`).
    pub device_runner: PathBuf,
}

impl TorchSide {
    /// The given paths, else the defaults: `$TORCH_PYTHON`, else `/tmp/torchref/bin/python`
    /// when it exists, else `python3`; the reference and the profiler at their places seen
    /// from the repository root.
    pub fn with_defaults(
        python: Option<PathBuf>,
        reference: Option<PathBuf>,
        profiler: Option<PathBuf>,
    ) -> Self {
        let python = python
            .or_else(|| std::env::var_os("TORCH_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| {
                let p = PathBuf::from("/tmp/torchref/bin/python");
                if p.exists() {
                    p
                } else {
                    PathBuf::from("python3")
                }
            });
        TorchSide {
            python,
            reference: reference
                .unwrap_or_else(|| PathBuf::from("../shared/reference/torch_ref.py")),
            profiler: profiler.unwrap_or_else(|| PathBuf::from("tools/torch_op_profile.py")),
            pe_bench: PathBuf::from("tools/bench_pe.py"),
            device_runner: PathBuf::from("tools/torch_device.py"),
        }
    }

    /// Runs `script` with `args` and returns its standard output.
    fn run(
        &self,
        script: &Path,
        what: &'static str,
        flag: &'static str,
        args: &[String],
    ) -> Result<String, BenchError> {
        if !script.exists() {
            return Err(BenchError::MissingScript {
                what,
                path: script.to_path_buf(),
                flag,
            });
        }
        let output = Command::new(&self.python)
            .arg(script)
            .args(args)
            .output()
            .map_err(|source| BenchError::Spawn {
                python: self.python.clone(),
                source,
            })?;
        if output.status.code() == Some(UNAVAILABLE_EXIT) {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(BenchError::TorchUnavailable {
                script: script.to_path_buf(),
                reason: stderr.trim().lines().last().unwrap_or("").to_string(),
            });
        }
        if !output.status.success() {
            return Err(BenchError::TorchFailed {
                script: script.to_path_buf(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Median ms (and peak memory) of the reference's steps on `target`, keyed
    /// `mode[/variant][/support]` (e.g. `full`, `meta-pe/cached/same`), at `threads` threads
    /// over `steps` timed steps.
    pub fn medians(
        &self,
        target: &TorchTarget,
        threads: usize,
        steps: usize,
        log: &mut dyn FnMut(&str),
    ) -> Result<BTreeMap<String, TorchTiming>, BenchError> {
        if !self.reference.exists() {
            return Err(BenchError::MissingScript {
                what: "reference",
                path: self.reference.clone(),
                flag: "--torch-ref",
            });
        }
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
        let mut out = BTreeMap::new();
        for extra in runs {
            log(&format!(
                "running the PyTorch reference on {} at the {} size: {} {}",
                target.device,
                target.size.name.as_str(),
                self.reference.display(),
                extra.join(" ")
            ));
            // The runner's own flags, then torch_ref.py's after `--`.
            let mut args = vec![
                "--torch-ref".to_string(),
                self.reference.display().to_string(),
            ];
            args.extend(target.model_args());
            args.push("--".into());
            args.extend(target.batch_args());
            args.extend(
                [
                    "--threads",
                    &threads.to_string(),
                    "--steps",
                    &steps.to_string(),
                ]
                .iter()
                .chain(extra)
                .map(|s| s.to_string()),
            );
            let stdout = self.run(
                &self.device_runner,
                "device runner",
                "--torch-device-runner",
                &args,
            )?;
            out.extend(parse_medians(&stdout));
        }
        Ok(out)
    }

    /// Median ms of the PyTorch + `peft` LoRA steps (`tools/bench_pe.py`) on `target`: keys
    /// `lora` (a fine-tuning step) and `meta-lora/same` (a meta outer step with a LoRA inner
    /// loop).
    pub fn pe_medians(
        &self,
        target: &TorchTarget,
        threads: usize,
        steps: usize,
        log: &mut dyn FnMut(&str),
    ) -> Result<BTreeMap<String, TorchTiming>, BenchError> {
        log(&format!(
            "running the PyTorch + peft side on {} at the {} size: {}",
            target.device,
            target.size.name.as_str(),
            self.pe_bench.display()
        ));
        let mut args = vec![
            "--torch-ref".to_string(),
            self.reference.display().to_string(),
            "--threads".into(),
            threads.to_string(),
            "--steps".into(),
            steps.to_string(),
        ];
        args.extend(target.model_args());
        args.extend(target.batch_args());
        let stdout = self.run(
            &self.pe_bench,
            "PyTorch + peft bench",
            "--torch-pe-bench",
            &args,
        )?;
        Ok(parse_medians(&stdout))
    }

    /// `torch.profiler`'s breakdown of the reference's `step` (`full` or `meta-pe`).
    pub fn op_profile(
        &self,
        step: &str,
        threads: usize,
        steps: usize,
    ) -> Result<serde_json::Value, BenchError> {
        let args = [
            "--reference".to_string(),
            self.reference.display().to_string(),
            "--step".into(),
            step.into(),
            "--threads".into(),
            threads.to_string(),
            "--steps".into(),
            steps.to_string(),
        ];
        let stdout = self.run(&self.profiler, "op profiler", "--torch-profiler", &args)?;
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("ops").is_some())
            .ok_or_else(|| BenchError::TorchOutput {
                script: self.profiler.clone(),
                message: "no JSON line with \"ops\"".into(),
            })
    }
}

/// The reference's result lines (`{"mode": …, "variant": …, "support": …, "median_ms": …,
/// "peak_memory_bytes": …, "precision": …}`) keyed `mode[/variant][/support]`; other lines
/// are skipped.
pub(crate) fn parse_medians(stdout: &str) -> BTreeMap<String, TorchTiming> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
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
        let timing = TorchTiming {
            median_ms: ms,
            peak_memory_bytes: v["peak_memory_bytes"].as_u64(),
            precision: serde_json::from_value(v["precision"].clone()).ok(),
        };
        out.insert(key, timing);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_keyed_by_mode_variant_and_support() {
        let stdout = r#"{"torch": "2.15", "threads": 2}
not json
{"mode": "full", "variant": "", "support": "", "median_ms": 419.5, "peak_memory_bytes": 2048, "precision": "bf16"}
{"mode": "meta-pe", "variant": "cached", "support": "distinct", "median_ms": 2279.0}
{"mode": "meta-full", "variant": "", "support": "distinct", "median_ms": 5010.0}"#;
        let m = parse_medians(stdout);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m["full"],
            TorchTiming {
                median_ms: 419.5,
                peak_memory_bytes: Some(2048),
                precision: Some(Precision::Bf16),
            }
        );
        assert_eq!(m["meta-pe/cached/distinct"].median_ms, 2279.0);
        assert_eq!(m["meta-pe/cached/distinct"].peak_memory_bytes, None);
        assert_eq!(m["meta-pe/cached/distinct"].precision, None);
        assert_eq!(m["meta-full/distinct"].median_ms, 5010.0);
    }

    #[test]
    fn a_missing_script_is_named_with_the_flag_that_sets_it() {
        let side = TorchSide::with_defaults(
            Some("python3".into()),
            Some("/nonexistent/torch_ref.py".into()),
            None,
        );
        let target = TorchTarget {
            device: DeviceSpec::Cpu,
            size: super::super::workload::SizeName::Tiny.workload(),
            precision: Precision::Fp32,
        };
        let err = side.medians(&target, 1, 1, &mut |_| {}).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/torch_ref.py") && msg.contains("--torch-ref"),
            "{msg}"
        );
    }

    /// A stand-in for Python: `sh` running a script of `body` in place of every Python
    /// script. (`sh` reads the script: executing a file just written races with other tests'
    /// forks, which can hold it open for writing: "Text file busy".)
    #[cfg(unix)]
    fn fake_side(dir: &Path, body: &str) -> TorchSide {
        let script = dir.join("fake.sh");
        std::fs::write(&script, format!("{body}\n")).unwrap();
        TorchSide {
            python: "sh".into(),
            reference: script.clone(),
            profiler: script.clone(),
            pe_bench: script.clone(),
            device_runner: script,
        }
    }

    /// The device, the size, the precision and the batch shape reach both scripts, and the
    /// precision a script says it ran comes back with its timings.
    #[cfg(unix)]
    #[test]
    fn the_device_size_and_precision_are_passed_to_the_scripts() {
        for (precision, ran) in [(Precision::Bf16, "bf16"), (Precision::Tf32, "tf32")] {
            let dir = tempfile::tempdir().unwrap();
            let side = fake_side(
                dir.path(),
                &format!(
                    "echo \"$@\" >> {}/args\n\
                     echo '{{\"mode\": \"full\", \"median_ms\": 1.5, \"precision\": \"{ran}\"}}'",
                    dir.path().display()
                ),
            );
            let target = TorchTarget {
                device: DeviceSpec::Cuda(3),
                size: super::super::workload::SizeName::Mbert.workload(),
                precision,
            };
            let m = side.medians(&target, 1, 2, &mut |_| {}).unwrap();
            assert_eq!(m["full"].median_ms, 1.5);
            assert_eq!(m["full"].precision, Some(precision));
            let pe = side.pe_medians(&target, 1, 2, &mut |_| {}).unwrap();
            assert_eq!(pe["full"].precision, Some(precision));
            let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
            let lines: Vec<&str> = args.lines().collect();
            assert_eq!(lines.len(), 4, "{args}");
            for l in &lines[..3] {
                let want = format!(
                    " --device cuda:3 --size mbert --precision {ran} -- --batch 32 --seq 128 \
                     --threads 1 --steps 2 --mode "
                );
                assert!(l.contains(&want), "{l}");
            }
            let want =
                format!("--device cuda:3 --size mbert --precision {ran} --batch 32 --seq 128");
            assert!(lines[3].ends_with(&want), "{}", lines[3]);
        }
    }

    /// Exit status 3 is "not there" (torch, peft or the GPU), with the reason it printed last.
    #[cfg(unix)]
    #[test]
    fn a_missing_torch_or_device_is_reported_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let side = fake_side(
            dir.path(),
            "echo 'a warning' >&2\necho 'torch 2.15.0 has no CUDA device' >&2\nexit 3",
        );
        let target = TorchTarget {
            device: DeviceSpec::Cuda(0),
            size: super::super::workload::SizeName::Mbert.workload(),
            precision: Precision::Fp32,
        };
        let err = side.medians(&target, 1, 1, &mut |_| {}).unwrap_err();
        assert!(
            matches!(&err, BenchError::TorchUnavailable { reason, .. }
                if reason == "torch 2.15.0 has no CUDA device"),
            "{err:?}"
        );
    }
}
