//! FT priming: ordinary multi-task fine-tuning of θp ∪ θa ∪ θh_l on the source languages,
//! the baseline that meta priming is compared with. One step = one batch per sampled task,
//! their loss gradients summed, one optimiser update (heads included).

use super::error::{PrimeError, Result};
use super::meta::{GradSum, OuterOptimizer, PrimingState, check_finite};
use crate::data::Batch;
use crate::model::{ParamGroup, encoder_output, logits_from_hidden, masked_cross_entropy};

/// One FT-priming step over `(lang, batch)` pairs: θp, θa and each task's head receive the
/// summed gradients of the tasks' losses. Returns the per-task training losses.
pub fn ft_step(
    state: &mut PrimingState,
    tasks: &[(String, Batch)],
    optimizer: &mut dyn OuterOptimizer,
) -> Result<super::PrimeStepRecord> {
    let step = state.step;
    let mut sum = GradSum::default();
    let mut losses = Vec::with_capacity(tasks.len());
    let tagger = &state.tagger;
    let pe = tagger.pe.as_ref().ok_or_else(|| {
        PrimeError::Config("FT priming needs a model with a parameter-efficient module".into())
    })?;
    for (lang, batch) in tasks {
        let head = tagger.heads.get(lang).ok_or_else(|| {
            PrimeError::Config(format!("the model has no head for task '{lang}'"))
        })?;
        let hidden = encoder_output(
            &tagger.config,
            &tagger.encoder,
            Some(pe.with(&pe.params)),
            &crate::train::inputs_of(batch),
            state.dropout.as_mut(),
        )?;
        let loss = masked_cross_entropy(
            &logits_from_hidden(&hidden, Some(pe.with(&pe.params)), head)?,
            &batch.labels,
        )?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        check_finite(value, step, lang, || "training loss".to_string())?;
        let grads = crate::model::backward(&loss)?;
        sum.add(
            &ParamGroup::Encoder.prefix(),
            &tagger.encoder,
            &grads,
            step,
            lang,
        )?;
        sum.add(
            &ParamGroup::Pe(pe.name()).prefix(),
            &pe.params,
            &grads,
            step,
            lang,
        )?;
        sum.add(
            &ParamGroup::Head(lang.clone()).prefix(),
            head,
            &grads,
            step,
            lang,
        )?;
        losses.push(super::TaskLosses {
            lang: lang.clone(),
            inner_before: None,
            inner_after: None,
            query: value,
        });
    }
    let lr = optimizer.apply(&sum.into_set()?)?;
    state.step += 1;
    Ok(super::PrimeStepRecord {
        step,
        lr,
        tasks: losses,
    })
}
