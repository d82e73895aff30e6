//! Golden test of priming's outer step: every dump of mode `meta-pe` and `meta-full` under
//! `$PRIMER_GOLDEN_DIR` (default `../shared/golden`), made by the PyTorch reference
//! (`shared/reference/torch_ref.py`), is replayed through `primer::prime::meta_step` with the
//! settings of its `meta.json` ([`primer::verify`]); inner losses, query losses, adapted fast
//! weights, summed outer gradients and the weights after the AdamW step must match.

mod common;

use common::{all_modes_checked, cpu_options, golden_dir, verify_modes};
use primer::verify::{Status, verify};

const MODES: [&str; 2] = ["meta-pe", "meta-full"];

fn check_all_meta_dumps(label: &str) {
    let Some(dir) = golden_dir() else {
        println!("SKIP: no golden dumps found (set PRIMER_GOLDEN_DIR)");
        return;
    };
    let report = verify_modes(&dir, &cpu_options(None), &|m| MODES.contains(&m), label);
    all_modes_checked(&report, &MODES);
}

#[test]
fn meta_steps_match_the_pytorch_reference() {
    assert!(primer::model::dispatch::cpu_kernels_on());
    check_all_meta_dumps("CPU kernels");
}

/// The same outer steps on the device-generic composite ops, the code CUDA runs.
#[test]
fn meta_steps_match_the_pytorch_reference_on_the_device_generic_path() {
    let _composite = primer::model::dispatch::composite_only();
    check_all_meta_dumps("device-generic ops");
}

/// The comparison can fail: a copy of a meta-pe dump whose meta.json says a 1% larger inner
/// learning rate no longer matches.
#[test]
fn a_perturbed_inner_lr_is_detected() {
    let Some(src) = golden_dir().map(|d| d.join("tiny_meta-pe")) else {
        println!("SKIP: no golden dumps found (set PRIMER_GOLDEN_DIR)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("tiny_meta-pe");
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

    let report = verify(&[dump], &cpu_options(None), &mut |_| {}).unwrap();
    let d = &report.dumps[0];
    assert_eq!(
        d.status,
        Status::Fail,
        "a 1% inner learning-rate error went unnoticed"
    );
    // Every adapted weight, query loss and outer gradient moves, not one stray value.
    assert!(
        d.failures.len() >= 10,
        "only {} comparisons failed: {:?}",
        d.failures.len(),
        d.failures
    );
    println!(
        "{} of {} comparisons failed with inner_lr x 1.01",
        d.failures.len(),
        d.compared
    );
}
