//! Every parameter-efficient method behind the PE seam against the independent PyTorch (+ HF
//! `peft` for LoRA) dumps of `tools/pe_golden.py`, committed under `tests/fixtures/golden-pe/`:
//! * one fine-tuning step (`bitfit`, `lora`, `adapter-all`): loss, the gradient of every trained
//!   tensor, every tensor after one AdamW step (frozen ones unmoved);
//! * one meta-priming outer step with the method as the inner loop's PE module (`meta-bitfit`,
//!   `meta-lora`): inner losses, adapted fast weights, query losses, the first-order gradients
//!   summed over tasks, θp and the module after the outer AdamW step, the adapted heads.
//!
//! Every setting is read from each dump's meta.json.

mod common;

use candle_core::Device;
use common::{Failures, GoldenDump, check_first_adamw_step, check_rel};
use primer::config::FinetuneMethod;
use primer::config::InnerDropout;
use primer::data::Batch;
use primer::model::pe::{AdapterLayers, LoraTarget};
use primer::model::{PeSpec, Tagger};
use primer::prime::{
    AdamWOuter, InnerParams, MetaStepConfig, PrimingState, TaskBatches, meta_step,
};
use primer::rng::SeededRng;
use primer::train::optim::AdamW;
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

/// The fine-tuning method and PE module a dump's `mode` names (a `meta-` prefix: the same
/// module as the inner loop's), with its settings from meta.json.
fn method_of(d: &GoldenDump) -> (FinetuneMethod, PeSpec) {
    match d.mode().trim_start_matches("meta-") {
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
    let cfg = d.adamw();
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

fn meta_batch(d: &GoldenDump, prefix: &str) -> Batch {
    let b = d.batch(prefix);
    Batch::from_tensors(
        b.input_ids,
        b.attention_mask,
        Some(b.token_type_ids),
        b.labels,
    )
    .unwrap()
}

fn check_meta_dump(d: &GoldenDump) -> Failures {
    let mut f = Failures::default();
    let (_, spec) = method_of(d);
    let mut tagger = Tagger::from_pretrained(&d.dir, &Device::Cpu).unwrap();
    tagger.ensure_pe(&spec, &mut SeededRng::new(0)).unwrap();
    let module = tagger.pe.as_ref().unwrap();
    let group = module.name();
    module
        .params
        .assign_from(&d.param_set(&format!("init.{group}.")))
        .unwrap();
    let tasks = d.f64_at("/tasks") as usize;
    let mut batches = Vec::new();
    for i in 0..tasks {
        tagger
            .heads
            .insert(i.to_string(), d.param_set(&format!("init.head.{i}.")));
        batches.push(TaskBatches {
            lang: i.to_string(),
            support: vec![meta_batch(d, &format!("batch.t{i}.support.0."))],
            query: meta_batch(d, &format!("batch.t{i}.query.")),
        });
    }
    let cfg = MetaStepConfig {
        inner: InnerParams::PE,
        inner_steps: d.f64_at("/inner_steps") as usize,
        inner_lr: d.f64_at("/inner_lr"),
        record_adapted_encoder: false,
        inner_dropout: InnerDropout::PerStep,
    };
    let lr = d.f64_at("/outer_opt/lr");
    let acfg = d.adamw();
    let vars = tagger
        .vars_of(&tagger.encoder_and_pe_groups().unwrap())
        .unwrap();
    let mut opt = AdamWOuter::new(vars, acfg, None).unwrap();
    let mut state = PrimingState::new(tagger, None);
    let rec = meta_step(&mut state, &batches, &cfg, &mut opt).unwrap();
    let tensor = |v: &[f64]| candle_core::Tensor::new(v, &Device::Cpu).unwrap();
    for (i, t) in rec.tasks.iter().enumerate() {
        let key = format!("loss.t{i}.inner");
        f.check(check_rel(
            &key,
            &tensor(&t.inner_losses),
            d.tensor(&key),
            1e-4,
            0.0,
        ));
        let key = format!("loss.t{i}.query");
        f.check(check_rel(
            &key,
            &tensor(&[t.query_loss]),
            d.tensor(&key),
            1e-4,
            0.0,
        ));
    }
    let grad_keys: Vec<(String, candle_core::Tensor)> = d.with_prefix("grad.");
    if grad_keys.len() != rec.grads.len() {
        f.push(format!(
            "{} summed gradients, the dump has {}",
            rec.grads.len(),
            grad_keys.len()
        ));
    }
    for (name, want) in &grad_keys {
        match rec.grads.get(name) {
            Some(got) => f.check(check_rel(&format!("grad.{name}"), got, want, 1e-4, 1e-7)),
            None => f.push(format!("no summed gradient {name}")),
        }
    }
    for (key, want) in d.with_prefix("inner.t") {
        let (i, param) = key.split_once('.').unwrap();
        let i: usize = i.parse().unwrap();
        match rec.tasks[i].adapted.get(param) {
            Some(got) => f.check(check_rel(&format!("inner.t{key}"), got, &want, 1e-4, 0.0)),
            None => f.push(format!("task {i}: no adapted {param}")),
        }
    }
    let t = &state.tagger;
    for (key, want) in d.with_prefix("final.") {
        let got = match key.split_once('.').unwrap() {
            ("enc", p) => t.encoder.get(p).unwrap().as_detached_tensor(),
            ("head", p) => {
                let (i, p) = p.split_once('.').unwrap();
                // The adapted head, an inner-loop result.
                let h = t.heads[i].get(p).unwrap().as_detached_tensor();
                f.check(check_rel(&format!("final.{key}"), &h, &want, 1e-4, 0.0));
                continue;
            }
            (g, p) if g == group => {
                t.pe.as_ref()
                    .unwrap()
                    .params
                    .get(p)
                    .unwrap()
                    .as_detached_tensor()
            }
            other => panic!("{}: unexpected final tensor {other:?}", d.name()),
        };
        f.check(check_first_adamw_step(
            &format!("final.{key}"),
            &got,
            &want,
            d.tensor(&format!("grad.{key}")),
            lr,
        ));
    }
    f
}

fn check_all_dumps(path: &str) {
    let dirs = dumps();
    assert!(dirs.len() >= 5, "PE golden dumps missing: {dirs:?}");
    for dir in dirs {
        let d = GoldenDump::load(&dir);
        let failures = if d.mode().starts_with("meta-") {
            check_meta_dump(&d)
        } else {
            check_dump(&d)
        };
        failures.assert_none(&format!("{} ({path})", d.name()));
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
