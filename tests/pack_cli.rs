//! `primer run --per-device auto` and `primer plan --estimate` from the outside, on a tiny
//! random model and the committed WikiAnn slices: the packing decision is printed and the
//! sweep completes; the estimate calibrates every step kind and prices every run kind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_primer");

fn primer(cwd: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        // One thread per child: fast enough for the tiny model.
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run primer");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny random model in `t/model`, or None (after printing SKIP) without the committed data.
fn tiny_setup(t: &Path) -> Option<()> {
    let root = crate_root();
    let tokenizer = root.join("data/tokenizer/bert-base-multilingual-cased");
    for needed in [root.join("data/wikiann/af"), tokenizer.clone()] {
        if !needed.exists() {
            eprintln!("SKIP: {} not found", needed.display());
            return None;
        }
    }
    common::init_tiny_model(t, &t.join("model"), &tokenizer);
    std::fs::write(
        t.join("s.toml"),
        format!(
            r#"name = "pack"
store = "store"
targets = ["af"]
[base.finetune]
model = "model"
epochs = 1
batch_size = 8
data = {{ root = "{data}", train_limit = 24, dev_limit = 10, test_limit = 10, max_len = 32 }}
[base.prime]
steps = 2
support_batch_size = 4
query_batch_size = 4
data = {{ train_limit = 24, max_len = 32 }}
[settings.primed]
priming = "meta"
"prime.inner_steps" = 2
"finetune.method" = "adapter"
[settings.full]
"finetune.method" = "full"
"#,
            data = root.join("data/wikiann").display()
        ),
    )
    .unwrap();
    Some(())
}

#[test]
fn per_device_auto_packs_a_sweep_and_the_estimate_prices_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    if tiny_setup(t).is_none() {
        return;
    }
    let (ok, out) = primer(t, &["run", "s.toml", "--per-device", "0"]);
    assert!(!ok && out.contains("at least 1 (or auto)"), "{out}");

    let (ok, out) = primer(
        t,
        &[
            "run",
            "s.toml",
            "--per-device",
            "auto",
            "--plain",
            "--no-report",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("cpu: ") && out.contains("GiB free"), "{out}");
    assert!(out.contains("by estimate"), "{out}");
    assert!(out.contains("3 executed now, 0 failed"), "{out}");

    let (ok, out) = primer(
        t,
        &["plan", "s.toml", "--estimate", "--calibration-steps", "1"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("estimate on cpu: 4 step kind(s)"), "{out}");
    for kind in [
        "priming meta (inner pe, S=2)",
        "fine-tuning adapter",
        "fine-tuning full",
    ] {
        assert!(out.contains(kind), "{kind}: {out}");
    }
    assert!(
        out.contains("whole sweep:") && out.contains("for 3 runs"),
        "{out}"
    );
    assert!(out.contains("for the 0 not done yet"), "{out}");
    // Fine-tuning counts its batches from the data: 1 epoch × ⌈24 / 8⌉ = 3 steps.
    let full: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("fine-tuning full"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(full[2..4], ["1", "3"], "{out}");

    let (ok, out) = primer(
        t,
        &["plan", "s.toml", "--estimate", "--calibration-steps", "0"],
    );
    assert!(!ok && out.contains("at least 1 timed step"), "{out}");
}
