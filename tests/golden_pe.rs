//! Every parameter-efficient method behind the PE seam against the independent PyTorch (+ HF
//! `peft` for LoRA) dumps of `tools/pe_golden.py`, committed under `tests/fixtures/golden-pe/`,
//! through [`primer::verify`]:
//! * one fine-tuning step (`bitfit`, `lora`, `adapter-all`): loss, the gradient of every trained
//!   tensor, every tensor after one AdamW step (frozen ones unmoved);
//! * one meta-priming outer step with the method as the inner loop's PE module (`meta-bitfit`,
//!   `meta-lora`): inner losses, adapted fast weights, query losses, the first-order gradients
//!   summed over tasks, θp and the module after the outer AdamW step, the adapted heads.
//!
//! Every setting is read from each dump's meta.json.

mod common;

use common::{all_modes_checked, cpu_options, pe_golden_dir, verify_modes};

const MODES: [&str; 5] = ["bitfit", "lora", "adapter-all", "meta-bitfit", "meta-lora"];

fn check_all_dumps(label: &str) {
    let report = verify_modes(&pe_golden_dir(), &cpu_options(None), &|_| true, label);
    all_modes_checked(&report, &MODES);
}

#[test]
fn pe_methods_match_pytorch_for_one_finetuning_step() {
    assert!(primer::model::dispatch::cpu_kernels_on());
    check_all_dumps("CPU kernels");
}

/// The same on the device-generic composite ops, the code CUDA runs.
#[test]
fn pe_methods_match_pytorch_on_the_device_generic_path() {
    let _composite = primer::model::dispatch::composite_only();
    check_all_dumps("device-generic ops");
}
