//! One training step of the tagger against the PyTorch golden dumps (modes full, adapter,
//! head): loss, the gradient of every trained tensor, and the parameters after one AdamW
//! step. Every setting is read from each dump's meta.json.

mod common;

use candle_core::Device;
use common::{Failures, GoldenDump, all_dumps, check_first_adamw_step, check_rel};
use primer::config::FinetuneMethod;
use primer::model::{ParamGroup, Tagger, load_encoder};
use primer::train::optim::AdamW;

fn method_of(mode: &str) -> Option<FinetuneMethod> {
    match mode {
        "full" => Some(FinetuneMethod::Full),
        "adapter" => Some(FinetuneMethod::Adapter),
        "head" => Some(FinetuneMethod::Head),
        _ => None,
    }
}

fn check_dump(d: &GoldenDump, method: FinetuneMethod) -> Failures {
    let mut f = Failures::default();
    let dev = Device::Cpu;
    // The encoder comes through the HF loader (config.json + model.safetensors) and must
    // equal the dump's init.enc.* values.
    let (cfg, enc) = load_encoder(&d.dir, &dev).unwrap();
    for (n, t) in d.with_prefix("init.enc.") {
        f.check(check_rel(
            &format!("loaded {n}"),
            enc.get(&n).expect("loaded"),
            &t,
            0.0,
            0.0,
        ));
    }
    let mut tagger = Tagger::new(cfg, enc, dev.clone());
    tagger.pe = Some(
        primer::model::pe::adapter::module(d.param_set("init.adapter."), &tagger.config).unwrap(),
    );
    // Heads keep the dump's index as their language name, so names line up with grad.head.<i>.
    for i in 0..d.num_heads() {
        tagger
            .heads
            .insert(i.to_string(), d.param_set(&format!("init.head.{i}.")));
    }
    let groups = tagger.groups_for(method, "0");
    if method == FinetuneMethod::Full {
        assert!(
            groups.contains(&ParamGroup::Pe("adapter")),
            "full FT trains the adapter too"
        );
    }
    tagger.set_trainable(&groups).unwrap();

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
    let mut expected_grads: Vec<String> =
        d.with_prefix("grad.").into_iter().map(|(n, _)| n).collect();
    expected_grads.sort();
    // Trainable names (`enc.…`, `adapter.…`, `head.<lang>.…`) are the dump's grad.* suffixes.
    let mut ours: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    ours.sort();
    if ours != expected_grads {
        f.push(format!(
            "trained tensors differ from the dump's grad.* set: ours {} vs dump {}",
            ours.len(),
            expected_grads.len()
        ));
    }
    for (n, v) in &vars {
        let key = format!("grad.{n}");
        let Some(g) = grads.get(v.as_tensor()) else {
            f.push(format!("{n}: no gradient"));
            continue;
        };
        if d.has(&key) {
            f.check(check_rel(&key, g, d.tensor(&key), 1e-4, 1e-6));
        }
    }

    let lr = d.f64_at("/outer_opt/lr");
    let cfg = d.adamw();
    let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
    opt.step(&grads).unwrap();

    // After the step: every tensor (trained or frozen) against final.*.
    let mut after: Vec<(String, candle_core::Tensor)> = Vec::new();
    for (n, v) in tagger.encoder.iter() {
        after.push((format!("enc.{n}"), v.as_detached_tensor()));
    }
    for (n, v) in tagger.pe.as_ref().map(|m| &m.params).unwrap().iter() {
        after.push((format!("adapter.{n}"), v.as_detached_tensor()));
    }
    for (lang, h) in &tagger.heads {
        for (n, v) in h.iter() {
            after.push((format!("head.{lang}.{n}"), v.as_detached_tensor()));
        }
    }
    for (n, t) in &after {
        let want = d.tensor(&format!("final.{n}"));
        let gkey = format!("grad.{n}");
        if !d.has(&gkey) {
            // Frozen: must not move at all.
            f.check(check_rel(&format!("frozen {n}"), t, want, 0.0, 0.0));
            continue;
        }
        f.check(check_first_adamw_step(
            &format!("final.{n}"),
            t,
            want,
            d.tensor(&gkey),
            lr,
        ));
    }
    f
}

/// Checks every full / adapter / head dump; `path` names the implementation in messages.
fn check_all_dumps(path: &str) {
    let Some(dirs) = all_dumps("golden_steps") else {
        return;
    };
    let mut checked = 0;
    for dir in dirs {
        let d = GoldenDump::load(&dir);
        let Some(method) = method_of(d.mode()) else {
            continue; // meta-* modes are checked by the priming tests
        };
        let t0 = std::time::Instant::now();
        check_dump(&d, method).assert_none(&format!("{} ({path})", d.name()));
        eprintln!(
            "{} ({path}): ok ({:.2}s)",
            d.name(),
            t0.elapsed().as_secs_f64()
        );
        checked += 1;
    }
    assert!(checked > 0, "no full/adapter/head dumps found");
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
