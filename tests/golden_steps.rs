//! One training step of the tagger against the PyTorch golden dumps (modes full, adapter,
//! head): loss, the gradient of every trained tensor, and the parameters after one AdamW
//! step, through [`primer::verify`]. Every setting is read from each dump's meta.json.

mod common;

use common::{all_modes_checked, cpu_options, golden_dir, verify_modes};

const MODES: [&str; 3] = ["full", "adapter", "head"];

fn check_all_dumps(label: &str) {
    let Some(dir) = golden_dir() else {
        eprintln!(
            "SKIP golden_steps: golden dumps not found (set PRIMER_GOLDEN_DIR or provide ../shared/golden)"
        );
        return;
    };
    let report = verify_modes(&dir, &cpu_options(None), &|m| MODES.contains(&m), label);
    all_modes_checked(&report, &MODES);
}

#[test]
fn std_steps_match_pytorch_golden_dumps() {
    assert!(primer::model::dispatch::cpu_kernels_on());
    check_all_dumps("CPU kernels");
}

/// The same steps on the device-generic composite ops, the code CUDA runs: its math is checked
/// against PyTorch here even where no GPU is at hand.
#[test]
fn std_steps_match_pytorch_golden_dumps_on_the_device_generic_path() {
    let _composite = primer::model::dispatch::composite_only();
    check_all_dumps("device-generic ops");
}
