//! The outer optimiser of priming: torch-semantics AdamW ([`crate::train::optim::AdamW`]) fed
//! with named gradient sums instead of one backward pass's gradient store.

use super::error::{PrimeError, Result};
use super::meta::OuterOptimizer;
use crate::model::TensorSet;
use crate::train::optim::{AdamW, AdamWConfig, LinearSchedule};
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

/// AdamW over named Vars (θp as `enc.…`, θa as `adapter.…`, heads as `head.<lang>.…`), with a
/// linear schedule.
pub struct AdamWOuter {
    opt: AdamW,
    vars: HashMap<String, Var>,
}

impl AdamWOuter {
    pub fn new(
        vars: Vec<(String, Var)>,
        cfg: AdamWConfig,
        schedule: Option<LinearSchedule>,
    ) -> Result<Self> {
        let opt = AdamW::new(vars.clone(), cfg)?;
        let opt = match schedule {
            Some(s) => opt.with_schedule(s),
            None => opt,
        };
        Ok(Self {
            opt,
            vars: vars.into_iter().collect(),
        })
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.opt.current_lr()
    }
}

impl OuterOptimizer for AdamWOuter {
    fn apply(&mut self, grads: &TensorSet) -> Result<f64> {
        let lr = self.opt.current_lr();
        // The optimiser reads a candle GradStore keyed by the Vars. Its constructor is private,
        // so one is taken from the backward pass of a constant (it then holds that constant's
        // own entry, which matches none of the Vars) and filled with the sums.
        let Some(first) = self.vars.values().next() else {
            return Ok(lr);
        };
        let mut store = crate::model::backward(&Tensor::zeros((), DType::F32, first.device())?)?;
        let mut unknown = Vec::new();
        for (name, g) in grads.iter() {
            match self.vars.get(name) {
                Some(v) => {
                    store.insert(v.as_tensor(), g.clone());
                }
                None => unknown.push(name.to_string()),
            }
        }
        if !unknown.is_empty() {
            return Err(PrimeError::Config(format!(
                "gradients for parameters the optimiser does not hold: {}",
                unknown.join(", ")
            )));
        }
        self.opt.step(&store)?;
        Ok(lr)
    }
}
