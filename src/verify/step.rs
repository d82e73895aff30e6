//! One fine-tuning step against a dump: the loss, the gradient of every trained tensor, and
//! every tensor after one AdamW step (frozen ones unmoved).
//!
//! * `full` / `adapter` / `head` (shared/golden, torch_ref.py): the encoder comes through the
//!   HF loader and must equal the dump's start values; one adapter after the last layer.
//! * `bitfit` / `lora` / `adapter-all` (tests/fixtures/golden-pe, pe_golden.py with HF `peft`
//!   for LoRA): the method behind the PE seam, θp frozen.

use super::compare::{Checks, Tolerances, check_first_adamw_step, check_rel};
use super::dump::GoldenDump;
use super::{OrReplay, VerifyError};
use crate::config::FinetuneMethod;
use crate::data::Batch;
use crate::model::pe::{AdapterLayers, LoraTarget};
use crate::model::{EncoderInputs, ParamGroup, PeSpec, Tagger, load_encoder};
use crate::rng::SeededRng;
use crate::train::optim::AdamW;
use candle_core::{Device, Tensor};

pub(super) fn inputs(b: &Batch) -> EncoderInputs<'_> {
    EncoderInputs {
        input_ids: &b.input_ids,
        attention_mask: &b.attention_mask,
        token_type_ids: b.token_type_ids.as_ref(),
    }
}

/// The fine-tuning method of a torch_ref.py step dump's mode.
pub(super) fn std_method(mode: &str) -> Option<FinetuneMethod> {
    match mode {
        "full" => Some(FinetuneMethod::Full),
        "adapter" => Some(FinetuneMethod::Adapter),
        "head" => Some(FinetuneMethod::Head),
        _ => None,
    }
}

/// The fine-tuning method and PE module a pe_golden.py dump's `mode` names (a `meta-` prefix:
/// the same module as the inner loop's), with its settings from meta.json.
pub(super) fn pe_method(d: &GoldenDump) -> Result<(FinetuneMethod, PeSpec), VerifyError> {
    let mode = d.mode()?;
    match mode.trim_start_matches("meta-") {
        "bitfit" => Ok((FinetuneMethod::Bitfit, PeSpec::BitFit)),
        "lora" => {
            let targets = d.meta["lora"]["targets"]
                .as_array()
                .ok_or_else(|| VerifyError::Meta {
                    path: d.dir.join("meta.json"),
                    message: "no array lora.targets".into(),
                })?
                .iter()
                .map(|t| serde_json::from_value::<LoraTarget>(t.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| VerifyError::Meta {
                    path: d.dir.join("meta.json"),
                    message: format!("lora.targets: {e}"),
                })?;
            let spec = PeSpec::Lora {
                r: d.usize_at("/lora/r")?,
                alpha: d.f64_at("/lora/alpha")?,
                targets,
                // pe_golden.py's peft modules have none: the dumps are deterministic.
                dropout: 0.0,
            };
            Ok((FinetuneMethod::Lora, spec))
        }
        "adapter-all" => Ok((
            FinetuneMethod::Adapter,
            PeSpec::Adapter {
                dim: d.usize_at("/adapter/dim")?,
                layers: AdapterLayers::All,
            },
        )),
        other => Err(VerifyError::Meta {
            path: d.dir.join("meta.json"),
            message: format!("unknown mode '{other}'"),
        }),
    }
}

/// The loss of the dump's batch against `/losses/loss`.
fn check_loss(
    c: &mut Checks,
    d: &GoldenDump,
    loss: &Tensor,
    tol: &Tolerances,
) -> Result<(), VerifyError> {
    let want = d.f64_at("/losses/loss")?;
    let got = loss.to_scalar::<f32>().or_replay("reading the loss")? as f64;
    c.check(if (got - want).abs() > tol.rel * want.abs() + 1e-6 {
        Err(format!("loss {got} vs {want}"))
    } else {
        Ok(())
    });
    Ok(())
}

/// The trained tensors must be exactly the dump's `grad.*` set.
fn check_trained_set(c: &mut Checks, d: &GoldenDump, vars: &[(String, candle_core::Var)]) {
    let mut ours: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    ours.sort();
    let expected: Vec<String> = d.with_prefix("grad.").into_iter().map(|(n, _)| n).collect();
    c.check(if ours != expected {
        Err(format!(
            "trained tensors differ from the dump's grad.* set: ours {ours:?} vs dump {expected:?}"
        ))
    } else {
        Ok(())
    });
}

/// A full / adapter / head step dump of torch_ref.py.
pub(super) fn check_std_step(
    d: &GoldenDump,
    method: FinetuneMethod,
    device: &Device,
    tol: &Tolerances,
) -> Result<Checks, VerifyError> {
    let mut c = Checks::default();
    // The encoder comes through the HF loader (config.json + model.safetensors) and must
    // equal the dump's init.enc.* values.
    let (cfg, enc) = load_encoder(&d.dir, device).or_replay("loading the encoder")?;
    for (n, t) in d.with_prefix("init.enc.") {
        match enc.get(&n) {
            Some(v) => c.check(check_rel(&format!("loaded {n}"), v, &t, 0.0, 0.0)),
            None => c.fail(format!("the loader has no tensor {n}")),
        }
    }
    let mut tagger = Tagger::new(cfg, enc, device.clone());
    tagger.pe = Some(
        crate::model::pe::adapter::module(d.param_set("init.adapter.")?, &tagger.config)
            .or_replay("building the adapter")?,
    );
    // Heads keep the dump's index as their language name, so names line up with grad.head.<i>.
    for i in 0..d.num_heads() {
        tagger
            .heads
            .insert(i.to_string(), d.param_set(&format!("init.head.{i}."))?);
    }
    let groups = tagger.groups_for(method, "0");
    if method == FinetuneMethod::Full && !groups.contains(&ParamGroup::Pe("adapter")) {
        c.fail("full FT does not train the adapter".into());
    }
    tagger
        .set_trainable(&groups)
        .or_replay("setting trainable groups")?;

    let batch = d.batch("batch.")?;
    let loss = tagger
        .loss(&inputs(&batch), &batch.labels, "0", None)
        .or_replay("the forward pass")?;
    check_loss(&mut c, d, &loss, tol)?;

    let grads = crate::model::backward(&loss).or_replay("the backward pass")?;
    let vars = tagger.trainable_vars();
    // Trainable names (`enc.…`, `adapter.…`, `head.<lang>.…`) are the dump's grad.* suffixes.
    check_trained_set(&mut c, d, &vars);
    for (n, v) in &vars {
        let key = format!("grad.{n}");
        let Some(g) = grads.get(v.as_tensor()) else {
            c.fail(format!("{n}: no gradient"));
            continue;
        };
        if d.has(&key) {
            c.check(check_rel(&key, g, d.tensor(&key)?, tol.rel, tol.grad_abs));
        }
    }

    let lr = d.f64_at("/outer_opt/lr")?;
    let mut opt = AdamW::new(vars.clone(), d.adamw()?).or_replay("making AdamW")?;
    opt.step(&grads).or_replay("the AdamW step")?;

    // After the step: every tensor (trained or frozen) against final.*.
    let mut after: Vec<(String, Tensor)> = Vec::new();
    for (n, v) in tagger.encoder.iter() {
        after.push((format!("enc.{n}"), v.as_detached_tensor()));
    }
    if let Some(m) = tagger.pe.as_ref() {
        for (n, v) in m.params.iter() {
            after.push((format!("adapter.{n}"), v.as_detached_tensor()));
        }
    }
    for (lang, h) in &tagger.heads {
        for (n, v) in h.iter() {
            after.push((format!("head.{lang}.{n}"), v.as_detached_tensor()));
        }
    }
    for (n, t) in &after {
        let want = d.tensor(&format!("final.{n}"))?;
        let gkey = format!("grad.{n}");
        if !d.has(&gkey) {
            // Frozen: must not move at all.
            c.check(check_rel(&format!("frozen {n}"), t, want, 0.0, 0.0));
            continue;
        }
        c.check(check_first_adamw_step(
            &format!("final.{n}"),
            t,
            want,
            d.tensor(&gkey)?,
            lr,
            tol.adamw_step_frac,
        ));
    }
    Ok(c)
}

/// A bitfit / lora / adapter-all step dump of pe_golden.py.
pub(super) fn check_pe_step(
    d: &GoldenDump,
    device: &Device,
    tol: &Tolerances,
) -> Result<Checks, VerifyError> {
    let mut c = Checks::default();
    let (method, spec) = pe_method(d)?;
    let mut tagger = Tagger::from_pretrained(&d.dir, device).or_replay("loading the model")?;
    if tagger.pe.is_some() {
        return Err(VerifyError::Dump {
            path: d.dir.clone(),
            message: "the dump's folder must be an unprimed model (it holds a PE module)".into(),
        });
    }
    tagger
        .ensure_pe(&spec, &mut SeededRng::new(0))
        .or_replay("adding the PE module")?;
    // The module starts from the dump's values (BitFit's are the encoder's own biases).
    let module = tagger.pe.as_ref().or_replay("the PE module")?;
    let prefix = format!("init.{}.", module.name());
    let init = d.param_set(&prefix)?;
    if init.len() != module.params.len() {
        c.fail(format!(
            "{} tensors under {prefix}*, the module has {}",
            init.len(),
            module.params.len()
        ));
    }
    module
        .params
        .assign_from(&init)
        .or_replay("assigning the module's start values")?;
    tagger
        .heads
        .insert("0".into(), d.param_set("init.head.0.")?);
    let groups = tagger.groups_for(method, "0");
    tagger
        .set_trainable(&groups)
        .or_replay("setting trainable groups")?;
    if tagger.encoder_output_is_constant() && spec.method().acts_inside_encoder() {
        c.fail("a method acting inside the encoder must rule out the encoder cache".into());
    }

    let batch = d.batch("batch.")?;
    let loss = tagger
        .loss(&inputs(&batch), &batch.labels, "0", None)
        .or_replay("the forward pass")?;
    check_loss(&mut c, d, &loss, tol)?;
    let grads = crate::model::backward(&loss).or_replay("the backward pass")?;
    let vars = tagger.trainable_vars();
    check_trained_set(&mut c, d, &vars);
    for (n, v) in &vars {
        let key = format!("grad.{n}");
        match grads.get(v.as_tensor()) {
            None => c.fail(format!("{n}: no gradient")),
            Some(g) if d.has(&key) => {
                c.check(check_rel(&key, g, d.tensor(&key)?, tol.rel, tol.grad_abs))
            }
            Some(_) => {}
        }
    }
    for (n, v) in tagger.encoder.iter() {
        if grads.get(v.as_tensor()).is_some() {
            c.fail(format!("frozen encoder tensor {n} got a gradient"));
        }
    }

    let lr = d.f64_at("/outer_opt/lr")?;
    let before: Vec<(String, Tensor)> = tagger
        .encoder
        .iter()
        .map(|(n, v)| Ok((n.to_string(), v.as_detached_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()
        .or_replay("copying the encoder")?;
    let mut opt = AdamW::new(vars.clone(), d.adamw()?).or_replay("making AdamW")?;
    opt.step(&grads).or_replay("the AdamW step")?;
    for (n, v) in &vars {
        let key = format!("final.{n}");
        let gkey = format!("grad.{n}");
        if d.has(&key) && d.has(&gkey) {
            c.check(check_first_adamw_step(
                &key,
                &v.as_detached_tensor(),
                d.tensor(&key)?,
                d.tensor(&gkey)?,
                lr,
                tol.adamw_step_frac,
            ));
        }
    }
    // θp itself never moves under a PE method.
    for (n, t) in &before {
        match tagger.encoder.get(n) {
            Some(now) => c.check(check_rel(
                &format!("frozen enc.{n}"),
                &now.as_detached_tensor(),
                t,
                0.0,
                0.0,
            )),
            None => c.fail(format!("encoder tensor {n} disappeared")),
        }
    }
    Ok(c)
}
