//! End-to-end tests of `primer verify-golden`: the golden comparisons through the one binary
//! that also travels to a GPU machine (tools/gpu-check.sh), here on the CPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn primer(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_primer"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run primer")
}

fn shared_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("PRIMER_SHARED_DIR") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    p.is_dir().then_some(p)
}

fn pe_dir() -> String {
    format!("{}/tests/fixtures/golden-pe", env!("CARGO_MANIFEST_DIR"))
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every dump passes on both CPU paths, each with comparisons made; the JSON names the device,
/// the path and the fp32 tolerances.
#[test]
fn every_dump_passes_on_the_cpu_on_both_paths() {
    let mut dirs = vec![pe_dir()];
    let mut model = None;
    match shared_dir() {
        Some(s) => {
            dirs.push(s.join("golden").display().to_string());
            model = Some(s.join("models/all-MiniLM-L6-v2").display().to_string());
        }
        None => eprintln!("../shared not found: only the committed PE dumps are checked"),
    }
    for (kernels, path) in [("on", "kernels"), ("off", "device-generic")] {
        let mut args = vec!["verify-golden", "--device", "cpu", "--json"];
        args.extend(dirs.iter().map(String::as_str));
        if let Some(m) = &model {
            args.extend(["--encoder-model", m.as_str()]);
        }
        let out = primer(&args, &[("PRIMER_CPU_KERNELS", kernels)]);
        let v = json_of(&out);
        assert!(
            out.status.success(),
            "{}",
            serde_json::to_string_pretty(&v).unwrap()
        );
        assert_eq!(v["device"], "cpu");
        assert_eq!(v["path"], path);
        assert_eq!(v["tolerances"]["precision"], "fp32");
        let dumps = v["dumps"].as_array().unwrap();
        let want = if model.is_some() { 12 } else { 5 };
        assert!(
            dumps.len() >= want,
            "{} dumps, expected at least {want}",
            dumps.len()
        );
        for d in dumps {
            assert_eq!(d["status"], "pass", "{d}");
            assert!(d["compared"].as_u64().unwrap() > 0, "{d}");
        }
    }
}

/// A perturbed setting fails the run (exit 1) and the table names the failing tensors.
#[test]
fn a_perturbed_dump_fails_with_a_nonzero_exit() {
    let src = Path::new(&pe_dir()).join("tiny_meta-lora");
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("tiny_meta-lora");
    std::fs::create_dir(&dump).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dump.join(p.file_name().unwrap())).unwrap();
    }
    let meta_path = dump.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let lr = meta["inner_lr"].as_f64().unwrap();
    meta["inner_lr"] = serde_json::json!(lr * 1.01);
    std::fs::write(&meta_path, meta.to_string()).unwrap();

    let out = primer(&["verify-golden", dump.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  tiny_meta-lora"), "{text}");
    assert!(text.contains("0 passed, 1 failed"), "{text}");
    // The adapted weights are named among the failures.
    assert!(text.contains("inner.t0."), "{text}");
}

/// Folders without dumps and devices this build lacks are clear errors.
#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = primer(&["verify-golden", tmp.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no golden dumps under"), "{err}");

    let out = primer(&["verify-golden", &pe_dir(), "--device", "tpu:0"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown device 'tpu:0'"), "{err}");
}
