//! Element-wise comparisons of primer's tensors with a reference dump, and the tolerances they
//! use. Every comparison is counted, and a failed one is kept as a message naming the worst
//! element, so a report lists every mismatching tensor at once.

use candle_core::{DType, Tensor};
use serde::Serialize;

/// How far primer may be from the PyTorch reference, for one compute precision.
///
/// Only fp32 is checked today (the dumps are fp32, and candle's CUDA matmuls stay fp32 unless
/// `set_gemm_reduced_precision_f32` is turned on). The numbers are the golden README's: both
/// sides compute in fp32 with a different summation order, so values agree to ~1e-4 relative.
///
/// Where a run computes in lower precision the same checks need looser bounds, scaled by the
/// unit round-off of the format the matmuls accumulate in: TF32 keeps 10 mantissa bits
/// (round-off ~4.9e-4, ~1e-2 relative after a layer's sums), bf16 keeps 7 (~3.9e-3, ~5e-2
/// relative), and the AdamW sign check then holds only where the gradient is well above that
/// noise. Such tolerances belong here, next to these, when a precision setting exists.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    /// The precision these bounds are for.
    pub precision: &'static str,
    /// Losses, inner-loop results, gradients: `|got − want| ≤ rel·max|want| + abs`.
    pub rel: f64,
    /// The absolute floor added to `rel` for gradients (rounding noise of values that are ~0).
    pub grad_abs: f64,
    /// Hidden states of the real checkpoint: absolute.
    pub hidden_abs: f64,
    /// After the first AdamW step, where the gradient is clearly non-zero the step is ~lr·sign(g)
    /// and must agree to this fraction of lr (everywhere else to 2·lr).
    pub adamw_step_frac: f64,
}

impl Tolerances {
    /// fp32 on both sides (the only precision the dumps are checked at).
    pub const FP32: Tolerances = Tolerances {
        precision: "fp32",
        rel: 1e-4,
        grad_abs: 1e-6,
        hidden_abs: 1e-4,
        adamw_step_frac: 0.02,
    };
}

/// The comparisons made for one dump and the ones that failed.
#[derive(Debug, Default, Clone)]
pub struct Checks {
    pub compared: usize,
    pub failures: Vec<String>,
}

impl Checks {
    /// Counts one comparison; keeps its message when it failed.
    pub fn check(&mut self, r: Result<(), String>) {
        self.compared += 1;
        if let Err(e) = r {
            self.failures.push(e);
        }
    }

    /// A comparison that failed before any values could be compared (a missing tensor, a
    /// different set of names).
    pub fn fail(&mut self, e: String) {
        self.compared += 1;
        self.failures.push(e);
    }
}

/// The values of a tensor (on any device) as f64, in row-major order.
pub fn values(t: &Tensor) -> Result<Vec<f64>, String> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(|e| format!("reading tensor values: {e}"))
}

/// Checks `|got − want| ≤ rel·max|want| + abs` element-wise; Err describes the worst element.
pub fn check_rel(
    name: &str,
    got: &Tensor,
    want: &Tensor,
    rel: f64,
    abs: f64,
) -> Result<(), String> {
    if got.dims() != want.dims() {
        return Err(format!(
            "{name}: shape {:?} vs expected {:?}",
            got.dims(),
            want.dims()
        ));
    }
    let g = values(got)?;
    let w = values(want)?;
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = rel * scale + abs;
    let (i, d) = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f64), |acc, (i, d)| {
            if d > acc.1 || d.is_nan() { (i, d) } else { acc }
        });
    if d > tol || d.is_nan() {
        return Err(format!(
            "{name}: max |diff| {d:.3e} at {i} (got {}, want {}) > tol {tol:.3e} (max|want| {scale:.3e})",
            g[i], w[i]
        ));
    }
    Ok(())
}

/// Relative closeness at the scale of the tensor: every |got−want| ≤ rtol·(|want| +
/// max|want|·0.01 + floor/rtol). The second term keeps near-zero entries of a large tensor from
/// demanding exactness; `floor` does the same for tensors that are zero up to rounding noise
/// (e.g. attention key biases, whose exact gradient is 0).
pub fn check_rel_at_scale(
    name: &str,
    got: &Tensor,
    want: &Tensor,
    rtol: f64,
    floor: f64,
) -> Result<(), String> {
    if got.dims() != want.dims() {
        return Err(format!(
            "{name}: shape {:?} vs expected {:?}",
            got.dims(),
            want.dims()
        ));
    }
    let (g, w) = (values(got)?, values(want)?);
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs())) * 0.01 + floor / rtol + 1e-30;
    let mut worst = (0f64, 0usize);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let r = (a - b).abs() / (b.abs() + scale);
        if r.is_nan() || r > worst.0 {
            worst = (r, i);
        }
    }
    if worst.0 > rtol || worst.0.is_nan() {
        return Err(format!(
            "{name}: relative error {:.3e} at index {} (got {}, want {}) > {rtol:e}",
            worst.0, worst.1, g[worst.1], w[worst.1]
        ));
    }
    Ok(())
}

/// A tensor after the first AdamW step from the dump's start, against the dump's `final.*`.
///
/// golden/README.md: the first step is about `lr·g/(|g|+eps)`, so where `g` is ~0 rounding
/// can move a value by up to ±lr — every value must agree to 2·lr. Where the gradient is
/// clearly non-zero (≥ 1e-3 of the tensor's largest and > 1e-6) the step is ~lr·sign(g) and
/// must agree to `frac` of lr, so that a wrong learning rate, schedule or moment update shows.
pub fn check_first_adamw_step(
    name: &str,
    got: &Tensor,
    want: &Tensor,
    grad: &Tensor,
    lr: f64,
    frac: f64,
) -> Result<(), String> {
    check_rel(name, got, want, 0.0, 2.0 * lr + 1e-7)?;
    let g = values(grad)?;
    let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (a, b) = (values(got)?, values(want)?);
    let bad = (0..g.len()).find(|&i| {
        g[i].abs() >= 1e-3 * gmax
            && g[i].abs() > 1e-6
            && (a[i] - b[i]).abs() > frac * lr + 1e-6 * b[i].abs()
    });
    match bad {
        Some(i) => Err(format!(
            "{name}[{i}]: {} vs {} after the step (grad {}): more than {}% of lr {lr:e} apart",
            a[i],
            b[i],
            g[i],
            frac * 100.0
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn check_rel_scales_with_the_largest_reference_value() {
        assert!(check_rel("x", &t(&[1.0, 100.0]), &t(&[1.005, 100.0]), 1e-4, 0.0).is_ok());
        let e = check_rel("x", &t(&[1.0, 100.0]), &t(&[1.02, 100.0]), 1e-4, 0.0).unwrap_err();
        assert!(e.contains("at 0"), "{e}");
        assert!(check_rel("x", &t(&[1.0]), &t(&[1.0, 2.0]), 1.0, 1.0).is_err());
        assert!(check_rel("x", &t(&[f32::NAN]), &t(&[0.0]), 1.0, 1.0).is_err());
    }

    #[test]
    fn check_rel_at_scale_is_relative_per_element() {
        assert!(check_rel_at_scale("x", &t(&[1.0001]), &t(&[1.0]), 1e-3, 0.0).is_ok());
        assert!(check_rel_at_scale("x", &t(&[1.01]), &t(&[1.0]), 1e-3, 0.0).is_err());
    }

    #[test]
    fn a_wrong_step_size_is_caught_where_the_gradient_is_clear() {
        let lr = 1e-3;
        let grad = t(&[1.0, 1e-9]);
        let want = t(&[1.0 - lr as f32, 2.0]);
        // Within 2·lr everywhere but 3% of lr off where the gradient is clear.
        let got = t(&[1.0 - 1.03 * lr as f32, 2.0 + 1.5 * lr as f32]);
        assert!(check_first_adamw_step("w", &got, &want, &grad, lr, 0.02).is_err());
        let got = t(&[1.0 - lr as f32, 2.0 + 1.5 * lr as f32]);
        assert!(check_first_adamw_step("w", &got, &want, &grad, lr, 0.02).is_ok());
    }

    #[test]
    fn checks_count_every_comparison() {
        let mut c = Checks::default();
        c.check(Ok(()));
        c.check(Err("bad".into()));
        c.fail("missing".into());
        assert_eq!(c.compared, 3);
        assert_eq!(c.failures, vec!["bad", "missing"]);
    }
}
