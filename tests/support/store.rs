//! Helpers of the end-to-end sweep tests (tests/sweep_e2e.rs, tests/slurm_e2e.rs): reading a
//! run store the way a user would, from the files the runs leave in it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// stdout then stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The store's run directories of one kind (`prime` or `finetune`), sorted.
pub fn run_dirs(store: &Path, kind: &str) -> Vec<PathBuf> {
    let prefix = format!("{kind}-");
    let mut v: Vec<PathBuf> = std::fs::read_dir(store)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with(&prefix)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A JSON file, parsed; panics naming the file.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// metrics.json of every finished fine-tuning run, keyed by directory name, without the wall
/// time (the one field that differs between identical runs).
pub fn results(store: &Path) -> BTreeMap<String, serde_json::Value> {
    run_dirs(store, "finetune")
        .into_iter()
        .filter(|d| d.join("metrics.json").is_file())
        .map(|d| {
            let mut v = json(&d.join("metrics.json"));
            v.as_object_mut().unwrap().remove("wall_time_s");
            (d.file_name().unwrap().to_str().unwrap().to_string(), v)
        })
        .collect()
}
