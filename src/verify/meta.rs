//! One meta-priming outer step against a dump, replayed through `prime::meta_step` with the
//! settings of its meta.json: inner losses, adapted fast weights, query losses, the first-order
//! gradients summed over tasks, the weights after the outer AdamW step, the adapted heads.
//!
//! * `meta-pe` / `meta-full` (shared/golden, torch_ref.py): one adapter after the last layer,
//!   support batches `same` or `distinct`, the adapted encoder recorded too (meta-full).
//! * `meta-bitfit` / `meta-lora` (tests/fixtures/golden-pe): the method behind the PE seam as
//!   the inner loop's module.

use super::compare::{
    Checks, Tolerances, check_first_adamw_step, check_rel, check_rel_at_scale, values,
};
use super::dump::GoldenDump;
use super::step::pe_method;
use super::{OrReplay, VerifyError};
use crate::config::InnerDropout;
use crate::model::Tagger;
use crate::prime::{AdamWOuter, InnerParams, MetaStepConfig, PrimingState, TaskBatches, meta_step};
use crate::rng::SeededRng;
use candle_core::{Device, Tensor};

/// A meta-pe / meta-full dump of torch_ref.py.
pub(super) fn check_std_meta(
    d: &GoldenDump,
    device: &Device,
    tol: &Tolerances,
) -> Result<Checks, VerifyError> {
    let mut c = Checks::default();
    let tasks = d.usize_at("/tasks")?;
    let s = d.usize_at("/inner_steps")?;
    let support_n = match d.str_at("/support")? {
        "same" => 1,
        "distinct" => s,
        other => {
            return Err(VerifyError::Meta {
                path: d.dir.join("meta.json"),
                message: format!("unknown support '{other}' (same | distinct)"),
            });
        }
    };
    if d.f64_at("/dropout")? != 0.0 {
        return Err(VerifyError::Meta {
            path: d.dir.join("meta.json"),
            message: "dumps with dropout cannot be replayed".into(),
        });
    }
    let mut tagger = Tagger::from_pretrained(&d.dir, device).or_replay("loading the model")?;
    // The dump's own start values, not the folder's weights, define the step.
    tagger
        .encoder
        .assign_from(&d.param_set("init.enc.")?)
        .or_replay("assigning init.enc.*")?;
    let adapter = d.param_set("init.adapter.")?;
    let dim = adapter
        .get("down.weight")
        .and_then(|w| w.dim(0).ok())
        .or_replay("init.adapter.down.weight")?;
    let want_dim = d.usize_at("/adapter/dim")?;
    c.check(if dim == want_dim {
        Ok(())
    } else {
        Err(format!("adapter dim {dim}, meta.json says {want_dim}"))
    });
    tagger.pe = Some(
        crate::model::pe::adapter::module(adapter, &tagger.config)
            .or_replay("building the adapter")?,
    );
    let mut batches = Vec::new();
    for i in 0..tasks {
        tagger
            .heads
            .insert(i.to_string(), d.param_set(&format!("init.head.{i}."))?);
        batches.push(TaskBatches {
            lang: i.to_string(),
            support: (0..support_n)
                .map(|j| d.batch(&format!("batch.t{i}.support.{j}.")))
                .collect::<Result<_, _>>()?,
            query: d.batch(&format!("batch.t{i}.query."))?,
        });
    }
    let inner = match d.mode()? {
        "meta-pe" => InnerParams::PE,
        _ => InnerParams::FULL,
    };
    let cfg = MetaStepConfig {
        inner,
        inner_steps: s,
        inner_lr: d.f64_at("/inner_lr")?,
        record_adapted_encoder: true,
        // The dumps run without dropout (no stream is given below), so no mode draws a mask.
        inner_dropout: InnerDropout::PerStep,
    };
    let mut vars = tagger.encoder.named_vars_with_prefix("enc.");
    if let Some(m) = tagger.pe.as_ref() {
        vars.extend(m.params.named_vars_with_prefix("adapter."));
    }
    let mut opt = AdamWOuter::new(vars, d.adamw()?, None).or_replay("making AdamW")?;
    let mut state = PrimingState::new(tagger, None);
    let record = meta_step(&mut state, &batches, &cfg, &mut opt).or_replay("the meta step")?;

    let rtol = tol.rel;
    let lr = d.f64_at("/outer_opt/lr")?;
    // Rounding noise of the summed gradients: fp32 epsilon at the largest gradient of the step.
    let mut grad_max = 0f64;
    for (_, t) in d.with_prefix("grad.") {
        grad_max = values(&t)
            .map_err(|message| VerifyError::Dump {
                path: d.dir.join("dump.safetensors"),
                message,
            })?
            .into_iter()
            .fold(grad_max, |m, x| m.max(x.abs()));
    }
    let grad_floor = grad_max * 1e-6;
    let host = |v: &[f64]| Tensor::new(v, &Device::Cpu).or_replay("a host tensor");
    for (i, t) in record.tasks.iter().enumerate() {
        let key = format!("loss.t{i}.inner");
        let want = d.tensor(&key)?;
        if t.inner_losses.len() != want.elem_count() {
            c.fail(format!(
                "{key}: {} inner steps, the dump has {}",
                t.inner_losses.len(),
                want.elem_count()
            ));
        } else {
            c.check(check_rel_at_scale(
                &key,
                &host(&t.inner_losses)?,
                want,
                rtol,
                0.0,
            ));
        }
        let key = format!("loss.t{i}.query");
        c.check(check_rel_at_scale(
            &key,
            &host(&[t.query_loss])?,
            d.tensor(&key)?,
            rtol,
            0.0,
        ));
    }
    let mut keys: Vec<&String> = d.tensors.keys().collect();
    keys.sort();
    let t = &state.tagger;
    for key in keys {
        let want = &d.tensors[key];
        if let Some(rest) = key.strip_prefix("inner.t") {
            let Some((i, param)) = rest.split_once('.') else {
                c.fail(format!("{key}: not inner.t<i>.<name>"));
                continue;
            };
            let got = i
                .parse::<usize>()
                .ok()
                .and_then(|i| record.tasks.get(i))
                .and_then(|task| task.adapted.get(param));
            match got {
                Some(got) => c.check(check_rel_at_scale(key, got, want, rtol, 0.0)),
                None => c.fail(format!("{key}: no adapted weight {param} for task {i}")),
            }
        } else if let Some(param) = key.strip_prefix("grad.") {
            match record.grads.get(param) {
                Some(got) => c.check(check_rel_at_scale(key, got, want, rtol, grad_floor)),
                None => c.fail(format!("{key}: no outer gradient {param}")),
            }
        } else if let Some(param) = key.strip_prefix("final.") {
            // θp and θa take the outer AdamW step on the summed first-order gradient.
            let stepped = match param.split_once('.') {
                Some(("enc", p)) => t.encoder.get(p).map(|v| v.as_detached_tensor()),
                Some(("adapter", p)) => {
                    t.pe.as_ref()
                        .and_then(|m| m.params.get(p))
                        .map(|v| v.as_detached_tensor())
                }
                _ => None,
            };
            if let Some(got) = stepped {
                let grad = d.tensor(&format!("grad.{param}"))?;
                c.check(check_first_adamw_step(
                    key,
                    &got,
                    want,
                    grad,
                    lr,
                    tol.adamw_step_frac,
                ));
            } else if let Some(p) = param.strip_prefix("head.") {
                // final.head.<i> is the adapted head: an inner-loop result, compared as such.
                let h = p
                    .split_once('.')
                    .and_then(|(i, p)| t.heads.get(i).and_then(|h| h.get(p)));
                match h {
                    Some(h) => c.check(check_rel_at_scale(
                        key,
                        &h.as_detached_tensor(),
                        want,
                        rtol,
                        0.0,
                    )),
                    None => c.fail(format!("{key}: no such head tensor")),
                }
            } else {
                c.fail(format!("{key}: unexpected tensor (no such parameter)"));
            }
        }
    }
    // Every outer gradient primer computed must be in the dump too.
    for g in record.grads.names() {
        if !d.has(&format!("grad.{g}")) {
            c.fail(format!("extra outer gradient {g}"));
        }
    }
    Ok(c)
}

/// A meta-bitfit / meta-lora dump of pe_golden.py.
pub(super) fn check_pe_meta(
    d: &GoldenDump,
    device: &Device,
    tol: &Tolerances,
) -> Result<Checks, VerifyError> {
    let mut c = Checks::default();
    let (_, spec) = pe_method(d)?;
    let mut tagger = Tagger::from_pretrained(&d.dir, device).or_replay("loading the model")?;
    tagger
        .ensure_pe(&spec, &mut SeededRng::new(0))
        .or_replay("adding the PE module")?;
    let module = tagger.pe.as_ref().or_replay("the PE module")?;
    let group = module.name().to_string();
    module
        .params
        .assign_from(&d.param_set(&format!("init.{group}."))?)
        .or_replay("assigning the module's start values")?;
    let tasks = d.usize_at("/tasks")?;
    let mut batches = Vec::new();
    for i in 0..tasks {
        tagger
            .heads
            .insert(i.to_string(), d.param_set(&format!("init.head.{i}."))?);
        batches.push(TaskBatches {
            lang: i.to_string(),
            support: vec![d.batch(&format!("batch.t{i}.support.0."))?],
            query: d.batch(&format!("batch.t{i}.query."))?,
        });
    }
    let cfg = MetaStepConfig {
        inner: InnerParams::PE,
        inner_steps: d.usize_at("/inner_steps")?,
        inner_lr: d.f64_at("/inner_lr")?,
        record_adapted_encoder: false,
        inner_dropout: InnerDropout::PerStep,
    };
    let lr = d.f64_at("/outer_opt/lr")?;
    let groups = tagger
        .encoder_and_pe_groups()
        .or_replay("the trained groups")?;
    let vars = tagger.vars_of(&groups).or_replay("the trained tensors")?;
    let mut opt = AdamWOuter::new(vars, d.adamw()?, None).or_replay("making AdamW")?;
    let mut state = PrimingState::new(tagger, None);
    let rec = meta_step(&mut state, &batches, &cfg, &mut opt).or_replay("the meta step")?;
    let host = |v: &[f64]| Tensor::new(v, &Device::Cpu).or_replay("a host tensor");
    for (i, t) in rec.tasks.iter().enumerate() {
        let key = format!("loss.t{i}.inner");
        c.check(check_rel(
            &key,
            &host(&t.inner_losses)?,
            d.tensor(&key)?,
            tol.rel,
            0.0,
        ));
        let key = format!("loss.t{i}.query");
        c.check(check_rel(
            &key,
            &host(&[t.query_loss])?,
            d.tensor(&key)?,
            tol.rel,
            0.0,
        ));
    }
    let grad_keys = d.with_prefix("grad.");
    if grad_keys.len() != rec.grads.len() {
        c.fail(format!(
            "{} summed gradients, the dump has {}",
            rec.grads.len(),
            grad_keys.len()
        ));
    }
    for (name, want) in &grad_keys {
        match rec.grads.get(name) {
            // The summed gradients of these dumps are tiny: a floor of 1e-7 absolute.
            Some(got) => c.check(check_rel(&format!("grad.{name}"), got, want, tol.rel, 1e-7)),
            None => c.fail(format!("no summed gradient {name}")),
        }
    }
    for (key, want) in d.with_prefix("inner.t") {
        let got = key.split_once('.').and_then(|(i, param)| {
            i.parse::<usize>()
                .ok()
                .and_then(|i| rec.tasks.get(i))
                .and_then(|t| t.adapted.get(param))
        });
        match got {
            Some(got) => c.check(check_rel(
                &format!("inner.t{key}"),
                got,
                &want,
                tol.rel,
                0.0,
            )),
            None => c.fail(format!("inner.t{key}: no adapted tensor")),
        }
    }
    let t = &state.tagger;
    for (key, want) in d.with_prefix("final.") {
        let got = match key.split_once('.') {
            Some(("enc", p)) => t.encoder.get(p).map(|v| v.as_detached_tensor()),
            Some(("head", p)) => {
                // The adapted head, an inner-loop result.
                let h = p
                    .split_once('.')
                    .and_then(|(i, p)| t.heads.get(i).and_then(|h| h.get(p)));
                match h {
                    Some(h) => c.check(check_rel(
                        &format!("final.{key}"),
                        &h.as_detached_tensor(),
                        &want,
                        tol.rel,
                        0.0,
                    )),
                    None => c.fail(format!("final.{key}: no such head tensor")),
                }
                continue;
            }
            Some((g, p)) if g == group => {
                t.pe.as_ref()
                    .and_then(|m| m.params.get(p))
                    .map(|v| v.as_detached_tensor())
            }
            _ => None,
        };
        match got {
            Some(got) => c.check(check_first_adamw_step(
                &format!("final.{key}"),
                &got,
                &want,
                d.tensor(&format!("grad.{key}"))?,
                lr,
                tol.adamw_step_frac,
            )),
            None => c.fail(format!(
                "final.{key}: unexpected tensor (no such parameter)"
            )),
        }
    }
    Ok(c)
}
