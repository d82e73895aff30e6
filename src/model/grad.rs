//! Gradients of a loss: candle's backward pass plus the parameter gradients that fused
//! operations deliver directly.
//!
//! A candle custom op can hand gradients back to at most three graph inputs, but the fused
//! encoder layer ([`super::layer`]) reads sixteen parameters. Its backward therefore returns
//! the gradient of its input through candle and delivers the parameters' gradients here;
//! [`backward`] runs candle's pass and merges them into the [`GradStore`]. Call
//! [`backward`], never `Tensor::backward`, on any loss of the model (clippy enforces it, see
//! `clippy.toml`): otherwise the encoder weights would silently get no gradient.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let w = Var::new(&[1f32, 2.0], &Device::Cpu)?;
//! let loss = (w.as_tensor() * 3.0)?.sum_all()?;
//! let grads = primer::model::backward(&loss)?;
//! assert_eq!(grads.get(&w).unwrap().to_vec1::<f32>()?, [3.0, 3.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use std::cell::RefCell;

thread_local! {
    /// One frame per [`backward`] in progress on this thread, innermost last: the gradients
    /// fused ops delivered during it. (candle runs a backward pass, custom ops' `bwd`
    /// included, on the thread that called it. A stack, not one list, because a thread
    /// waiting inside a rayon loop of one pass may steal and run another whole pass.)
    static DELIVERED: RefCell<Vec<Vec<(Tensor, Tensor)>>> = const { RefCell::new(Vec::new()) };
}

/// Adds `grad` to the gradient of the variable `param` in the [`backward`] in progress.
pub(crate) fn deliver(param: &Tensor, grad: Tensor) {
    DELIVERED.with(|d| match d.borrow_mut().last_mut() {
        Some(frame) => frame.push((param.clone(), grad)),
        // A bare `Tensor::backward` (clippy forbids it): the gradient has nowhere to go.
        None => debug_assert!(
            false,
            "a fused op's gradient was delivered outside primer::model::backward"
        ),
    });
}

/// [`deliver`]s the CPU values `grad` (in `param`'s shape) when `param` is a variable; a
/// constant's gradient is dropped.
pub(crate) fn deliver_values(param: &Tensor, grad: Vec<f32>) -> candle_core::Result<()> {
    if param.is_variable() {
        deliver(param, Tensor::from_vec(grad, param.shape(), &Device::Cpu)?);
    }
    Ok(())
}

/// The gradients of `loss` with respect to every variable it depends on: candle's
/// `Tensor::backward` plus what fused operations delivered (summed where a variable got
/// several contributions).
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    DELIVERED.with(|d| d.borrow_mut().push(Vec::new()));
    #[allow(clippy::disallowed_methods)]
    let candle_grads = loss.backward();
    // Popped before `?`, so a failed pass leaves no frame behind.
    let delivered = DELIVERED.with(|d| d.borrow_mut().pop()).unwrap_or_default();
    let mut grads = candle_grads?;
    for (param, grad) in delivered {
        let sum = match grads.remove(&param) {
            Some(prev) => (prev + grad)?,
            None => grad,
        };
        grads.insert(&param, sum);
    }
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::embeddings::{EMBEDDING_PARAM_NAMES, EmbeddingInputs, embed};
    use candle_core::{DType, Var};

    /// A variable that gets a delivered gradient (the fused embedding op) and a gradient
    /// through candle's graph in the same pass receives their sum; a second pass starts
    /// from nothing.
    #[test]
    fn delivered_and_graph_gradients_add_up() {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 5] = [&[4, 3], &[2, 3], &[1, 3], &[3], &[3]];
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: usize = s.iter().product();
                let v: Vec<f32> = (0..n).map(|j| ((i * 7 + j * 3) % 5) as f32 - 2.0).collect();
                Var::from_tensor(&Tensor::from_vec(v, *s, &dev).unwrap()).unwrap()
            })
            .collect();
        let params: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        assert_eq!(params.len(), EMBEDDING_PARAM_NAMES.len());
        let words = params[0];
        let loss_of = |extra: f64| {
            let inputs = EmbeddingInputs {
                batch: 1,
                len: 2,
                ids: vec![1, 3],
                token_types: None,
            };
            let y = embed(inputs, &params, 1e-5, None).unwrap();
            // Only the layer norm's bias reaches a plain sum: d/dβ = 1 per row.
            let fused = y.sum_all().unwrap();
            (fused + (words * extra).unwrap().sum_all().unwrap()).unwrap()
        };
        let g_fused = backward(&loss_of(0.0)).unwrap();
        let g_both = backward(&loss_of(2.0)).unwrap();
        let a = g_fused.get(words).unwrap();
        let b = g_both.get(words).unwrap();
        let diff = (b - a)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(diff.iter().all(|d| (d - 2.0).abs() < 1e-5), "{diff:?}");
        let beta = g_both.get(params[4]).unwrap().to_vec1::<f32>().unwrap();
        assert!(beta.iter().all(|d| (d - 2.0).abs() < 1e-5), "{beta:?}");
        // Nothing is left over for a pass without fused ops.
        let plain = (words * 1.0).unwrap().sum_all().unwrap();
        let g = backward(&plain).unwrap();
        let ones = g.get(words).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(ones.sum_all().unwrap().to_scalar::<f32>().unwrap(), 12.0);
        assert!(g.get(params[4]).is_none());
    }
}
