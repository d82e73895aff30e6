//! One fine-tuning step of every parameter-efficient method behind the PE seam against the
//! independent PyTorch dumps of `tools/pe_golden.py` (committed under
//! `tests/fixtures/golden-pe/`): loss, the gradient of every trained tensor, and every tensor
//! after one AdamW step (frozen ones unmoved). Every setting is read from each dump's meta.json.

mod common;

use candle_core::Device;
use common::{Failures, GoldenDump, check_first_adamw_step, check_rel};
use primer::config::FinetuneMethod;
use primer::model::pe::{AdapterLayers, LoraTarget};
use primer::model::{PeSpec, Tagger};
use primer::rng::SeededRng;
use primer::train::optim::{AdamW, AdamWConfig};
use std::path::PathBuf;

fn dumps() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-pe");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("meta.json").is_file())
        .collect();
    v.sort();
    v
}

/// The fine-tuning method and PE module a dump's `mode` names, with its settings from meta.json.
fn method_of(d: &GoldenDump) -> (FinetuneMethod, PeSpec) {
    match d.mode() {
        "bitfit" => (FinetuneMethod::Bitfit, PeSpec::BitFit),
        "lora" => {
            let targets = d.meta["lora"]["targets"]
                .as_array()
                .expect("meta.json: lora.targets")
                .iter()
                .map(|t| serde_json::from_value::<LoraTarget>(t.clone()).unwrap())
                .collect();
            let spec = PeSpec::Lora {
                r: d.f64_at("/lora/r") as usize,
                alpha: d.f64_at("/lora/alpha"),
                targets,
            };
            (FinetuneMethod::Lora, spec)
        }
        "adapter-all" => (
            FinetuneMethod::Adapter,
            PeSpec::Adapter {
                dim: d.f64_at("/adapter/dim") as usize,
                layers: AdapterLayers::All,
            },
        ),
        other => panic!("{}: unknown mode {other}", d.name()),
    }
}

fn check_dump(d: &GoldenDump) -> Failures {
    let mut f = Failures::default();
    let (method, spec) = method_of(d);
    let mut tagger = Tagger::from_pretrained(&d.dir, &Device::Cpu).unwrap();
    assert!(
        tagger.pe.is_none(),
        "the dump's folder is an unprimed model"
    );
    tagger.ensure_pe(&spec, &mut SeededRng::new(0)).unwrap();
    // The module starts from the dump's values (BitFit's are the encoder's own biases).
    let module = tagger.pe.as_ref().unwrap();
    let prefix = format!("init.{}.", module.name());
    let init = d.param_set(&prefix);
    assert_eq!(init.len(), module.params.len(), "{}: {prefix}*", d.name());
    module.params.assign_from(&init).unwrap();
    tagger.heads.insert("0".into(), d.param_set("init.head.0."));
    let groups = tagger.groups_for(method, "0");
    tagger.set_trainable(&groups).unwrap();
    assert!(
        !tagger.encoder_output_is_constant() || !spec.method().acts_inside_encoder(),
        "a method acting inside the encoder rules out the cache"
    );

    let batch = d.batch("batch.");
    let loss = tagger
        .loss(&batch.inputs(), &batch.labels, "0", None)
        .unwrap();
    let want = d.f64_at("/losses/loss");
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    if (got - want).abs() > 1e-4 * want.abs() + 1e-6 {
        f.push(format!("loss {got} vs {want}"));
    }
    let grads = primer::model::backward(&loss).unwrap();
    let vars = tagger.trainable_vars();
    let mut ours: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    ours.sort();
    let mut expected: Vec<String> = d.with_prefix("grad.").into_iter().map(|(n, _)| n).collect();
    expected.sort();
    if ours != expected {
        f.push(format!(
            "trained tensors differ from the dump's grad.* set: ours {ours:?} vs dump {expected:?}"
        ));
    }
    for (n, v) in &vars {
        let key = format!("grad.{n}");
        match grads.get(v.as_tensor()) {
            None => f.push(format!("{n}: no gradient")),
            Some(g) if d.has(&key) => f.check(check_rel(&key, g, d.tensor(&key), 1e-4, 1e-6)),
            Some(_) => {}
        }
    }
    for (n, v) in tagger.encoder.iter() {
        if grads.get(v.as_tensor()).is_some() {
            f.push(format!("frozen encoder tensor {n} got a gradient"));
        }
    }

    let lr = d.f64_at("/outer_opt/lr");
    let cfg = AdamWConfig {
        lr,
        beta1: d.f64_at("/outer_opt/betas/0"),
        beta2: d.f64_at("/outer_opt/betas/1"),
        eps: d.f64_at("/outer_opt/eps"),
        weight_decay: d.f64_at("/outer_opt/weight_decay"),
        decay_bias_and_norm: d.meta["outer_opt"]["wd_on_all_params"]
            .as_bool()
            .unwrap_or(true),
    };
    let before: Vec<(String, candle_core::Tensor)> = tagger
        .encoder
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_detached_tensor().copy().unwrap()))
        .collect();
    let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
    opt.step(&grads).unwrap();
    for (n, v) in &vars {
        let key = format!("final.{n}");
        let gkey = format!("grad.{n}");
        if d.has(&key) && d.has(&gkey) {
            f.check(check_first_adamw_step(
                &key,
                &v.as_detached_tensor(),
                d.tensor(&key),
                d.tensor(&gkey),
                lr,
            ));
        }
    }
    // θp itself never moves under a PE method.
    for (n, t) in &before {
        let now = tagger.encoder.get(n).unwrap().as_detached_tensor();
        f.check(check_rel(&format!("frozen enc.{n}"), &now, t, 0.0, 0.0));
    }
    f
}

fn check_all_dumps(path: &str) {
    let dirs = dumps();
    assert!(!dirs.is_empty(), "no PE golden dumps committed");
    for dir in dirs {
        let d = GoldenDump::load(&dir);
        check_dump(&d).assert_none(&format!("{} ({path})", d.name()));
    }
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
