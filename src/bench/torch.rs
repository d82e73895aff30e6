//! The PyTorch side: runs the reference (`../shared/reference/torch_ref.py`) and the op
//! profiler script (`tools/torch_op_profile.py`) in a Python with torch, and reads what they
//! print (one JSON object per line).

use super::error::BenchError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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
        if !output.status.success() {
            return Err(BenchError::TorchFailed {
                script: script.to_path_buf(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Median ms of the reference's steps, keyed `mode[/variant][/support]` (e.g. `full`,
    /// `meta-pe/cached/same`), at `threads` threads over `steps` timed steps.
    pub fn medians(
        &self,
        threads: usize,
        steps: usize,
        log: &mut dyn FnMut(&str),
    ) -> Result<BTreeMap<String, f64>, BenchError> {
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
                "running the PyTorch reference: {} {}",
                self.reference.display(),
                extra.join(" ")
            ));
            let mut args: Vec<String> = [
                "--minilm",
                "--threads",
                &threads.to_string(),
                "--steps",
                &steps.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let stdout = self.run(&self.reference, "reference", "--torch-ref", &args)?;
            out.extend(parse_medians(&stdout));
        }
        Ok(out)
    }

    /// Median ms of the PyTorch + `peft` LoRA steps (`tools/bench_pe.py`): keys `lora` (a
    /// fine-tuning step) and `meta-lora/same` (a meta outer step with a LoRA inner loop).
    pub fn pe_medians(
        &self,
        threads: usize,
        steps: usize,
        log: &mut dyn FnMut(&str),
    ) -> Result<BTreeMap<String, f64>, BenchError> {
        log(&format!(
            "running the PyTorch + peft side: {}",
            self.pe_bench.display()
        ));
        let args = [
            "--minilm".to_string(),
            "--torch-ref".into(),
            self.reference.display().to_string(),
            "--threads".into(),
            threads.to_string(),
            "--steps".into(),
            steps.to_string(),
        ];
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

/// The reference's result lines (`{"mode": …, "variant": …, "support": …, "median_ms": …}`)
/// keyed `mode[/variant][/support]`; other lines are skipped.
pub(crate) fn parse_medians(stdout: &str) -> BTreeMap<String, f64> {
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
        out.insert(key, ms);
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
{"mode": "full", "variant": "", "support": "", "median_ms": 419.5}
{"mode": "meta-pe", "variant": "cached", "support": "distinct", "median_ms": 2279.0}
{"mode": "meta-full", "variant": "", "support": "distinct", "median_ms": 5010.0}"#;
        let m = parse_medians(stdout);
        assert_eq!(m.len(), 3);
        assert_eq!(m["full"], 419.5);
        assert_eq!(m["meta-pe/cached/distinct"], 2279.0);
        assert_eq!(m["meta-full/distinct"], 5010.0);
    }

    #[test]
    fn a_missing_script_is_named_with_the_flag_that_sets_it() {
        let side = TorchSide::with_defaults(
            Some("python3".into()),
            Some("/nonexistent/torch_ref.py".into()),
            None,
        );
        let err = side.medians(1, 1, &mut |_| {}).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/torch_ref.py") && msg.contains("--torch-ref"),
            "{msg}"
        );
    }
}
