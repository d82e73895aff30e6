//! Golden test of priming's outer step: every `*/dump.safetensors` of mode `meta-pe` and
//! `meta-full` under `$PRIMER_GOLDEN_DIR` (default `../shared/golden`), made by the PyTorch
//! reference (`shared/reference/torch_ref.py`), is replayed through `primer::prime::meta_step`
//! with the settings of its `meta.json`; inner losses, query losses, adapted fast weights,
//! summed outer gradients and the weights after the AdamW step must match.

mod common;

use candle_core::{DType, Device, Tensor};
use primer::config::InnerDropout;
use primer::data::Batch;
use primer::model::{ParamSet, Tagger};
use primer::prime::{
    AdamWOuter, InnerParams, MetaStepConfig, MetaStepRecord, PrimingState, TaskBatches, meta_step,
};
use primer::train::optim::AdamWConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    match std::env::var_os("PRIMER_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"),
    }
}

/// The meta-mode dump folders under `root`, sorted.
fn meta_dumps(root: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.join("dump.safetensors").exists() {
            continue;
        }
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path)
            .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display()));
        let meta: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", meta_path.display()));
        if matches!(meta["mode"].as_str(), Some("meta-pe" | "meta-full")) {
            out.push((dir, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn f64_of(meta: &Value, path: &[&str]) -> f64 {
    let mut v = meta;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("meta.json: {path:?} is not a number"))
}

fn usize_of(meta: &Value, key: &str) -> usize {
    meta[key]
        .as_u64()
        .unwrap_or_else(|| panic!("meta.json: {key} is not an integer")) as usize
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Relative closeness at the scale of the tensor: every |got−want| ≤ rtol·(|want| +
/// max|want|·0.01 + floor/rtol). The second term keeps near-zero entries of a large tensor from
/// demanding exactness; `floor` does the same for tensors that are zero up to rounding noise
/// (e.g. attention key biases, whose exact gradient is 0).
fn assert_rel(what: &str, got: &Tensor, want: &Tensor, rtol: f64, floor: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs())) * 0.01 + floor / rtol + 1e-30;
    let mut worst = (0f64, 0usize);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let r = (a - b).abs() / (b.abs() + scale);
        if r.is_nan() || r > worst.0 {
            worst = (r, i);
        }
    }
    assert!(
        worst.0 <= rtol,
        "{what}: relative error {:.3e} at index {} (got {}, want {})",
        worst.0,
        worst.1,
        g[worst.1],
        w[worst.1]
    );
}

fn batch(t: &HashMap<String, Tensor>, prefix: &str) -> Batch {
    let get = |k: &str| {
        t.get(&format!("{prefix}.{k}"))
            .unwrap_or_else(|| panic!("dump lacks {prefix}.{k}"))
            .clone()
    };
    Batch::from_tensors(
        get("input_ids"),
        get("attention_mask"),
        Some(get("token_type_ids")),
        get("labels").to_dtype(DType::I64).unwrap(),
    )
    .unwrap()
}

/// The ParamSet of all tensors named `prefix<name>`, as `<name>`.
fn params_with_prefix(t: &HashMap<String, Tensor>, prefix: &str) -> ParamSet {
    let mut pairs: Vec<(String, Tensor)> = t
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!pairs.is_empty(), "dump has no tensors named {prefix}*");
    ParamSet::from_tensors(pairs).unwrap()
}

struct Replay {
    tagger_final: Tagger,
    record: MetaStepRecord,
}

fn replay(
    dir: &Path,
    meta: &Value,
    tensors: &HashMap<String, Tensor>,
    inner_lr_scale: f64,
) -> Replay {
    let dev = Device::Cpu;
    let tasks = usize_of(meta, "tasks");
    let s = usize_of(meta, "inner_steps");
    let support_n = match meta["support"].as_str() {
        Some("same") => 1,
        Some("distinct") => s,
        other => panic!("{}: unknown support {other:?}", dir.display()),
    };
    assert_eq!(
        f64_of(meta, &["dropout"]),
        0.0,
        "{}: dumps with dropout cannot be replayed",
        dir.display()
    );
    let mut tagger = Tagger::from_pretrained(dir, &dev).unwrap();
    // The dump's own start values, not the folder's weights, define the step.
    let init_enc = params_with_prefix(tensors, "init.enc.");
    tagger.encoder.assign_from(&init_enc).unwrap();
    let adapter = params_with_prefix(tensors, "init.adapter.");
    assert_eq!(
        adapter.get("down.weight").unwrap().dim(0).unwrap() as u64,
        meta["adapter"]["dim"].as_u64().unwrap()
    );
    tagger.pe = Some(primer::model::pe::adapter::module(adapter, &tagger.config).unwrap());
    let mut batches = Vec::new();
    for i in 0..tasks {
        tagger.heads.insert(
            i.to_string(),
            params_with_prefix(tensors, &format!("init.head.{i}.")),
        );
        batches.push(TaskBatches {
            lang: i.to_string(),
            support: (0..support_n)
                .map(|j| batch(tensors, &format!("batch.t{i}.support.{j}")))
                .collect(),
            query: batch(tensors, &format!("batch.t{i}.query")),
        });
    }
    let inner = match meta["mode"].as_str().unwrap() {
        "meta-pe" => InnerParams::PE,
        _ => InnerParams::FULL,
    };
    let cfg = MetaStepConfig {
        inner,
        inner_steps: s,
        inner_lr: f64_of(meta, &["inner_lr"]) * inner_lr_scale,
        record_adapted_encoder: true,
        // The dumps run without dropout (no stream is given below), so no mode draws a mask.
        inner_dropout: InnerDropout::PerStep,
    };
    let betas = meta["outer_opt"]["betas"].as_array().unwrap();
    let acfg = AdamWConfig {
        lr: f64_of(meta, &["outer_opt", "lr"]),
        beta1: betas[0].as_f64().unwrap(),
        beta2: betas[1].as_f64().unwrap(),
        eps: f64_of(meta, &["outer_opt", "eps"]),
        weight_decay: f64_of(meta, &["outer_opt", "weight_decay"]),
        decay_bias_and_norm: meta["outer_opt"]["wd_on_all_params"]
            .as_bool()
            .unwrap_or(true),
    };
    let mut vars = tagger.encoder.named_vars_with_prefix("enc.");
    vars.extend(
        tagger
            .pe
            .as_ref()
            .map(|m| &m.params)
            .unwrap()
            .named_vars_with_prefix("adapter."),
    );
    let mut opt = AdamWOuter::new(vars, acfg, None).unwrap();
    let mut state = PrimingState::new(tagger, None);
    let record = meta_step(&mut state, &batches, &cfg, &mut opt).unwrap();
    Replay {
        tagger_final: state.tagger,
        record,
    }
}

/// Compares a replay with the dump; returns the number of tensors compared.
fn compare(dir: &Path, meta: &Value, tensors: &HashMap<String, Tensor>, r: &Replay) -> usize {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let rtol = 1e-4;
    let lr = f64_of(meta, &["outer_opt", "lr"]);
    // Rounding noise of the summed gradients: fp32 epsilon at the largest gradient of the step.
    let grad_floor = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .flat_map(|(_, t)| values(t))
        .fold(0f64, |m, x| m.max(x.abs()))
        * 1e-6;
    let mut n = 0;
    for (i, t) in r.record.tasks.iter().enumerate() {
        let want_inner = values(&tensors[&format!("loss.t{i}.inner")]);
        assert_eq!(
            t.inner_losses.len(),
            want_inner.len(),
            "{name}: task {i} inner steps"
        );
        let got = Tensor::new(t.inner_losses.as_slice(), &Device::Cpu).unwrap();
        assert_rel(
            &format!("{name}: loss.t{i}.inner"),
            &got,
            &tensors[&format!("loss.t{i}.inner")],
            rtol,
            0.0,
        );
        let got = Tensor::new(&[t.query_loss], &Device::Cpu).unwrap();
        assert_rel(
            &format!("{name}: loss.t{i}.query"),
            &got,
            &tensors[&format!("loss.t{i}.query")],
            rtol,
            0.0,
        );
        n += 2;
    }
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let want = &tensors[key];
        if let Some(rest) = key.strip_prefix("inner.t") {
            let (i, param) = rest.split_once('.').unwrap();
            let i: usize = i.parse().unwrap();
            let got = r.record.tasks[i]
                .adapted
                .get(param)
                .unwrap_or_else(|| panic!("{name}: no adapted weight {param} for task {i}"));
            assert_rel(&format!("{name}: {key}"), got, want, rtol, 0.0);
            n += 1;
        } else if let Some(param) = key.strip_prefix("grad.") {
            let got = r
                .record
                .grads
                .get(param)
                .unwrap_or_else(|| panic!("{name}: no outer gradient {param}"));
            assert_rel(&format!("{name}: {key}"), got, want, rtol, grad_floor);
            n += 1;
        } else if let Some(param) = key.strip_prefix("final.") {
            let t = &r.tagger_final;
            // θp and θa take the outer AdamW step on the summed first-order gradient.
            let stepped = match param.split_once('.') {
                Some(("enc", p)) => Some(t.encoder.get(p).unwrap().as_tensor()),
                Some(("adapter", p)) => Some(
                    t.pe.as_ref()
                        .map(|m| &m.params)
                        .unwrap()
                        .get(p)
                        .unwrap()
                        .as_tensor(),
                ),
                _ => None,
            };
            if let Some(got) = stepped {
                let grad = tensors
                    .get(&format!("grad.{param}"))
                    .unwrap_or_else(|| panic!("{name}: {key} has no grad.{param}"));
                if let Err(e) =
                    common::check_first_adamw_step(&format!("{name}: {key}"), got, want, grad, lr)
                {
                    panic!("{e}");
                }
            } else if let Some(p) = param.strip_prefix("head.") {
                // final.head.<i> is the adapted head: an inner-loop result, compared as such.
                let (i, p) = p.split_once('.').unwrap();
                let h = t.heads[i].get(p).unwrap();
                assert_rel(&format!("{name}: {key}"), h.as_tensor(), want, rtol, 0.0);
            } else {
                panic!("{name}: unexpected tensor {key}");
            }
            n += 1;
        }
    }
    // Every outer gradient primer computed must be in the dump too.
    for g in r.record.grads.names() {
        assert!(
            tensors.contains_key(&format!("grad.{g}")),
            "{name}: extra outer gradient {g}"
        );
    }
    n
}

fn load_dump(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("dump.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

/// Replays and compares every meta dump; `path` names the implementation in messages.
fn check_all_meta_dumps(path: &str) {
    let root = golden_dir();
    let dumps = meta_dumps(&root);
    if dumps.is_empty() {
        println!(
            "SKIP: no meta-pe / meta-full golden dumps found under {} (set PRIMER_GOLDEN_DIR)",
            root.display()
        );
        return;
    }
    for (dir, meta) in &dumps {
        let tensors = load_dump(dir);
        let r = replay(dir, meta, &tensors, 1.0);
        let n = compare(dir, meta, &tensors, &r);
        println!("{} ({path}): {n} tensors match", dir.display());
    }
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

/// The comparison can fail: a 1% change of the inner learning rate is detected.
#[test]
fn a_perturbed_inner_lr_is_detected() {
    let root = golden_dir();
    let Some((dir, meta)) = meta_dumps(&root)
        .into_iter()
        .find(|(_, m)| m["mode"] == "meta-pe")
    else {
        println!(
            "SKIP: no meta-pe golden dump found under {}",
            root.display()
        );
        return;
    };
    let tensors = load_dump(&dir);
    let r = replay(&dir, &meta, &tensors, 1.01);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compare(&dir, &meta, &tensors, &r)
    }));
    assert!(
        caught.is_err(),
        "a 1% inner learning-rate error went unnoticed"
    );
}
