//! Differentiable building blocks of the tagger.
//!
//! candle's fused `LayerNorm` and `softmax_last_dim` have no backward pass, so gradients would
//! silently stop at them. Here layer norm and softmax are [`candle_core::CustomOp3`] /
//! [`candle_core::CustomOp1`] operations with hand-written CPU kernels for both the forward and
//! the backward pass (one pass over memory each instead of a dozen composite ops), and a
//! composite fallback built from differentiable candle ops on other devices and dtypes. The
//! unit tests check the fused kernels against the composite ones, values and gradients.

use super::dispatch::kernel_ok;
use super::error::{ModelError, Result};
use super::kernels;
use super::sgemm::{MatRef, gemm};
use crate::op_timing::{OpKind, timed};
use crate::rng::SeededRng;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `x · wᵀ + b` over the last dimension of `x` (any leading shape); `w` is `[out, in]` as in
/// torch's Linear.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    scaled_linear(x, w, b, 1.0)
}

/// `scale · (x · wᵀ + b)`. On the CPU (f32, with a bias) one custom op: a single graph node
/// whose backward issues exactly the two gradient matmuls and one column sum, instead of the
/// reshape/transpose/broadcast nodes (each with its own gradient buffer) of the composite.
pub fn scaled_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    if let Some(b) = b
        && kernel_ok(x)
        && kernel_ok(w)
        && kernel_ok(b)
        && w.rank() == 2
        && x.rank() >= 1
    {
        let (out, k) = w.dims2()?;
        if x.dims().last() == Some(&k) && b.dims() == [out] {
            return Ok(x.contiguous()?.apply_op3(
                &w.contiguous()?,
                &b.contiguous()?,
                LinearOp {
                    scale: scale as f32,
                },
            )?);
        }
    }
    let y = linear_composite(x, w, b)?;
    Ok(if scale == 1.0 { y } else { (y * scale)? })
}

/// `a · b` (candle's matmul, batched over leading dimensions) in this thread's
/// [`Precision`](super::dispatch::Precision): every matrix product of the model's
/// device-generic path goes through here. Under bf16 the f32 inputs are cast to bf16, and the
/// product (f32 accumulation) back to f32; the casts are differentiable, so the gradients that
/// reach f32 inputs — the master weights — are f32. Other dtypes multiply as they are.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match super::dispatch::product_dtype() {
        Some(low) if a.dtype() == DType::F32 && b.dtype() == DType::F32 => Ok(a
            .to_dtype(low)?
            .matmul(&b.to_dtype(low)?)?
            .to_dtype(DType::F32)?),
        _ => Ok(a.matmul(b)?),
    }
}

/// [`linear`] from candle's differentiable ops (any device, any float dtype).
pub fn linear_composite(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let k = *dims
        .last()
        .ok_or_else(|| ModelError::Invalid("linear on a scalar".into()))?;
    let rows = x.elem_count() / k.max(1);
    let out = w.dim(0)?;
    // One 2-D matmul (rows × in)·(in × out): cheaper forward and backward than a batched
    // matmul over a broadcast weight, whose gradient needs an extra reduction.
    let y = matmul(&x.reshape((rows, k))?, &w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("non-empty") = out;
    Ok(y.reshape(shape)?)
}

/// Layer normalisation over the last dimension: `(x − mean) / sqrt(var + eps) · γ + β`, with
/// the biased variance (as torch). Differentiable in `x`, `γ` and `β`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if kernel_ok(x) && kernel_ok(gamma) && kernel_ok(beta) {
        Ok(x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            LayerNormOp { eps: eps as f32 },
        )?)
    } else {
        layer_norm_composite(x, gamma, beta, eps)
    }
}

/// [`layer_norm`] from elementary differentiable ops (any device, any float dtype).
pub fn layer_norm_composite(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xhat.broadcast_mul(gamma)?.broadcast_add(beta)?)
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if kernel_ok(x) {
        Ok(x.contiguous()?.apply_op1(SoftmaxOp)?)
    } else {
        softmax_composite(x)
    }
}

/// [`softmax_last_dim`] from elementary differentiable ops.
pub fn softmax_composite(x: &Tensor) -> Result<Tensor> {
    // The max is a constant shift: detaching it keeps the gradient exact and skips a
    // backward through the reduction.
    let max = x.detach().max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// BERT's exact GELU, `x · Φ(x)`. On the CPU a fused op with an exact backward kernel;
/// elsewhere candle's `gelu_erf` (whose backward is composed of ~8 elementwise ops).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if kernel_ok(x) {
        Ok(x.contiguous()?.apply_op1(GeluOp)?)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// `x + b` with `b` broadcast over the last dimension. On the CPU a fused op whose backward
/// passes the gradient through and sums it over rows for `b` in one pass.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if kernel_ok(x) && kernel_ok(b) && x.dims().last() == Some(&b.elem_count()) {
        Ok(x.contiguous()?.apply_op2(&b.contiguous()?, BiasAddOp)?)
    } else {
        Ok(x.broadcast_add(b)?)
    }
}

/// Inverted dropout: zeroes each entry with probability `p` and scales the rest by
/// `1/(1−p)`, with the mask drawn from `rng` (candle's own RNG cannot be seeded).
pub fn dropout(x: &Tensor, p: f64, rng: &mut SeededRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = rng
        .dropout_mask(x.dims(), p as f32, x.device())?
        .to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// Label id ignored by the loss (PyTorch's `CrossEntropyLoss` default): non-first subwords,
/// specials and padding. Defined once, here with the loss, so that the model imports nothing
/// from `crate::data` (the readers and batches use it from here).
pub const IGNORE_INDEX: i64 = -100;

/// Token-level cross-entropy, mean over the positions whose label is not
/// [`IGNORE_INDEX`] (torch's `cross_entropy(ignore_index=-100)`).
///
/// `logits`: `[..., C]` float; `labels`: the same leading shape, any integer dtype (i64 when
/// it holds −100). When every label is ignored the loss is 0 with zero gradients (torch
/// returns NaN), so an all-ignored batch cannot poison training.
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let c = logits.dim(D::Minus1)?;
    let n = logits.elem_count() / c.max(1);
    let _timed = timed(OpKind::Loss, &[n, c], 0.0);
    let labels_v: Vec<i64> = labels.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    if labels_v.len() != n {
        return Err(ModelError::Invalid(format!(
            "cross-entropy: {} labels for {} logit rows (logits {:?}, labels {:?})",
            labels_v.len(),
            n,
            logits.dims(),
            labels.dims()
        )));
    }
    let mut target = vec![0f32; n * c];
    let mut count = 0usize;
    for (i, &l) in labels_v.iter().enumerate() {
        if l == IGNORE_INDEX {
            continue;
        }
        if l < 0 || l as usize >= c {
            return Err(ModelError::Invalid(format!(
                "cross-entropy: label {l} at position {i} is outside 0..{c} (and is not {IGNORE_INDEX})"
            )));
        }
        target[i * c + l as usize] = 1.0;
        count += 1;
    }
    let logits = logits.reshape((n, c))?;
    let max = logits.detach().max_keepdim(1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let target = Tensor::from_vec(target, (n, c), logits.device())?.to_dtype(logits.dtype())?;
    // A one-hot weighting instead of a gather: C is tiny (7 NER labels), and the mask of
    // ignored positions folds into the same tensor.
    let total = (logp * target)?.sum_all()?;
    Ok((total * (-1.0 / count.max(1) as f64))?)
}

// ------------------------------------------------------------------------------ CPU kernels

/// The f32 values of a contiguous CPU tensor (`what` names it in errors).
pub(crate) fn cpu_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// [`cpu_slice`] of a storage that must be on the CPU.
pub(crate) fn storage_slice<'a>(
    s: &'a candle_core::Storage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::Storage::Cpu(s) = s else {
        candle_core::bail!("{what}: not on the CPU")
    };
    cpu_slice(s, l, what)
}

/// Rows per rayon task: big enough to amortise scheduling, small enough to balance.
pub(crate) fn rows_per_task(rows: usize, d: usize) -> usize {
    let target = (16 * 1024 / d.max(1)).max(1);
    let threads = rayon::current_num_threads().max(1);
    target.min(rows.div_ceil(threads)).max(1)
}

/// Element-wise kernels run on blocks of this many values (the last block may be shorter).
pub(crate) const ELEMENTWISE_BLOCK: usize = 1 << 14;

/// `y` with `f(x_row, y_row)` applied to every row of length `d` of `x`, rows in parallel
/// blocks of [`rows_per_task`]: the loop of every row-wise kernel here.
pub(crate) fn map_rows(x: &[f32], d: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    if d == 0 || x.is_empty() {
        return y;
    }
    let chunk = rows_per_task(x.len().div_ceil(d), d) * d;
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                f(xr, yr);
            }
        });
    y
}

/// [`map_rows`] over two inputs of the same length: `f(a_row, b_row, y_row)`.
pub(crate) fn map_rows2(
    a: &[f32],
    b: &[f32],
    d: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map_rows2: inputs of different lengths");
    let mut y = vec![0f32; a.len()];
    if d == 0 || a.is_empty() {
        return y;
    }
    let chunk = rows_per_task(a.len().div_ceil(d), d) * d;
    y.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk).zip(b.par_chunks(chunk)))
        .for_each(|(yc, (ac, bc))| {
            for ((yr, ar), br) in yc.chunks_mut(d).zip(ac.chunks(d)).zip(bc.chunks(d)) {
                f(ar, br, yr);
            }
        });
    y
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "primer-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "layer_norm x")?;
        let g = cpu_slice(s2, l2, "layer_norm gamma")?;
        let b = cpu_slice(s3, l3, "layer_norm beta")?;
        let d = g.len();
        if b.len() != d || l1.dims().last() != Some(&d) {
            candle_core::bail!(
                "layer_norm: gamma/beta of size {d} for input {:?}",
                l1.dims()
            );
        }
        let y = layer_norm_rows(x, g, b, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        let n = x.elem_count();
        let packed = x.apply_op3_no_bwd(
            gamma,
            &grad.contiguous()?,
            &LayerNormBwdOp { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dg = packed.narrow(0, n, d)?.reshape(gamma.shape())?;
        let db = packed.narrow(0, n + d, d)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// Backward of [`LayerNormOp`]: returns `[dx (flattened) | dγ | dβ]` in one buffer.
struct LayerNormBwdOp {
    eps: f32,
}

impl CustomOp3 for LayerNormBwdOp {
    fn name(&self) -> &'static str {
        "primer-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "layer_norm_bwd x")?;
        let g = cpu_slice(s2, l2, "layer_norm_bwd gamma")?;
        let dy = cpu_slice(s3, l3, "layer_norm_bwd grad")?;
        let d = g.len();
        let n = x.len();
        let mut out = vec![0f32; n + 2 * d];
        let (dx, dgdb) = out.split_at_mut(n);
        layer_norm_backward(x, g, dy, self.eps, dx, dgdb);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Layer norm of the rows of length `g.len()` of `x`.
pub(crate) fn layer_norm_rows(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let d = g.len();
    let _timed = timed(OpKind::LayerNorm, &[x.len() / d.max(1), d], 0.0);
    map_rows(x, d, |xr, yr| kernels::layer_norm_row(xr, g, b, eps, yr))
}

/// Backward of layer norm over rows of length `g.len()`: writes `dx` and `[dγ | dβ]`
/// (`dgdb`, overwritten).
pub(crate) fn layer_norm_backward(
    x: &[f32],
    g: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
    dgdb: &mut [f32],
) {
    let d = g.len();
    assert!(
        d > 0 && x.len() == dy.len() && x.len() == dx.len() && dgdb.len() == 2 * d,
        "layer_norm_backward: buffers do not match rows of {d}"
    );
    let _timed = timed(OpKind::LayerNorm, &[x.len() / d, d], 0.0);
    let chunk = rows_per_task(x.len() / d, d) * d;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .map(|(dxc, (xc, dyc))| {
            // Local [dγ | dβ] of this block of rows, summed afterwards.
            let mut acc = vec![0f32; 2 * d];
            let mut xhat = vec![0f32; d];
            let (dg, db) = acc.split_at_mut(d);
            for ((dxr, xr), dyr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(dyc.chunks(d)) {
                kernels::layer_norm_bwd_row(xr, g, dyr, eps, dxr, dg, db, &mut xhat);
            }
            acc
        })
        .collect();
    dgdb.fill(0.0);
    for p in partials {
        kernels::add_assign(dgdb, &p);
    }
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "primer-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "softmax")?;
        let d = *l.dims().last().unwrap_or(&1);
        let _timed = timed(OpKind::Softmax, &[x.len() / d.max(1), d], 0.0);
        let y = map_rows(x, d, kernels::softmax_row);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwdOp)?,
        ))
    }
}

/// Backward of softmax: `dx = y ⊙ (dy − Σ dy ⊙ y)` row-wise.
struct SoftmaxBwdOp;

impl candle_core::CustomOp2 for SoftmaxBwdOp {
    fn name(&self) -> &'static str {
        "primer-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = cpu_slice(s1, l1, "softmax_bwd y")?;
        let dy = cpu_slice(s2, l2, "softmax_bwd grad")?;
        let d = *l1.dims().last().unwrap_or(&1);
        let _timed = timed(OpKind::Softmax, &[y.len() / d.max(1), d], 0.0);
        let dx = map_rows2(y, dy, d, kernels::softmax_bwd_row);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `scale · (x · wᵀ + b)` for `x` of any leading shape (contiguous), `w` `[out, in]`.
struct LinearOp {
    scale: f32,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "primer-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(sx, lx, "linear x")?;
        let w = cpu_slice(sw, lw, "linear weight")?;
        let b = cpu_slice(sb, lb, "linear bias")?;
        let (out, k) = (lw.dims()[0], lw.dims()[1]);
        if w.len() != out * k || b.len() != out || x.len() % k.max(1) != 0 {
            candle_core::bail!(
                "linear: x {:?}, weight {:?}, bias {:?}",
                lx.dims(),
                lw.dims(),
                lb.dims()
            );
        }
        let rows = x.len() / k.max(1);
        let y = linear_rows(x, LinearWeight::OutByIn(w), b, self.scale, rows, k, out);
        let mut shape = lx.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = out;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, k) = w.dims2()?;
        let rows = x.elem_count() / k.max(1);
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let g = storage_slice(&gs, gl, "linear gradient")?;
        if g.len() != rows * out {
            candle_core::bail!("linear backward: gradient {:?}", gl.dims());
        }
        let g = MatRef::new(g, rows, out);
        // Only the gradients of tracked inputs: a frozen weight (head or adapter tuning)
        // needs no dW, an input that is data needs no dx.
        let dx = if x.track_op() {
            let (ws, wl) = w.storage_and_layout();
            let wv = storage_slice(&ws, wl, "linear weight")?;
            let mut dx = vec![0f32; rows * k];
            gemm(&mut dx, false, g, MatRef::new(wv, out, k), self.scale);
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let (xs, xl) = x.storage_and_layout();
            let xv = storage_slice(&xs, xl, "linear x")?;
            let mut dw = vec![0f32; out * k];
            gemm(&mut dw, false, g.t(), MatRef::new(xv, rows, k), self.scale);
            Some(Tensor::from_vec(dw, (out, k), w.device())?)
        } else {
            None
        };
        let db = if b.track_op() {
            let (gs, gl) = grad.storage_and_layout();
            let mut db = column_sum(storage_slice(&gs, gl, "linear gradient")?, out);
            if self.scale != 1.0 {
                db.iter_mut().for_each(|v| *v *= self.scale);
            }
            Some(Tensor::from_vec(db, b.shape(), b.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `scale · (x · wᵀ + b)` for row-major `x` `[rows, k]`, `w` `[out, k]`, `b` `[out]`.
///
/// The output is pre-filled with `scale · b` and the GEMM accumulates `scale · x · wᵀ` onto
/// it, so the bias costs no extra pass over the output (a separate bias pass was ~4% of an
/// encoder forward) and no zero-initialisation is needed.
pub(crate) fn linear_rows(
    x: &[f32],
    w: LinearWeight<'_>,
    b: &[f32],
    scale: f32,
    rows: usize,
    k: usize,
    out: usize,
) -> Vec<f32> {
    let scaled_bias: Vec<f32> = b.iter().map(|&v| v * scale).collect();
    let mut y = Vec::with_capacity(rows * out);
    if out > 0 {
        // The fill is a full pass over the output: in parallel blocks of rows, like the
        // row-wise kernels, writing the uninitialised capacity once.
        let chunk = rows_per_task(rows, out) * out;
        y.spare_capacity_mut()[..rows * out]
            .par_chunks_mut(chunk)
            .for_each(|yc| {
                for row in yc.chunks_mut(out) {
                    row.write_copy_of_slice(&scaled_bias);
                }
            });
    }
    // SAFETY: every one of the rows·out values was written above.
    unsafe { y.set_len(rows * out) };
    let w = match w {
        // wᵀ is the k×out transpose view of the out×k row-major weight.
        LinearWeight::OutByIn(w) => MatRef::new(w, out, k).t(),
        LinearWeight::InByOut(wt) => MatRef::new(wt, k, out),
    };
    gemm(&mut y, true, MatRef::new(x, rows, k), w, scale);
    y
}

/// A linear layer's weight as [`linear_rows`] reads it.
#[derive(Clone, Copy)]
pub(crate) enum LinearWeight<'a> {
    /// `out × k` row-major, as checkpoints store it; read through a transposed view.
    OutByIn(&'a [f32]),
    /// `k × out` row-major ([`transposed`]). Through a transposed view the gemm crate gathers
    /// the weight value by value into its packed panels on every call — 11% of the encoder
    /// cache's pass; stored transposed, its panels are contiguous copies. Worth it where one
    /// transpose serves many calls: inference over fixed weights ([`super::bert::FrozenEncoder`]).
    InByOut(&'a [f32]),
}

/// The `cols × rows` row-major transpose of the `rows × cols` row-major `w`, in parallel
/// strips of eight of its rows ([`kernels::transpose_columns`]).
pub(crate) fn transposed(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        rows * cols,
        "transpose: {rows}×{cols} over {} values",
        w.len()
    );
    const STRIP: usize = 8;
    let mut t = vec![0f32; w.len()];
    if rows == 0 || cols == 0 {
        return t;
    }
    t.par_chunks_mut(STRIP * rows)
        .enumerate()
        .for_each(|(strip, out)| kernels::transpose_columns(w, rows, cols, strip * STRIP, out));
    t
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "primer-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "gelu")?;
        let y = gelu_values(x);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwdOp)?))
    }
}

/// `dx = dy · (Φ(x) + x·φ(x))`.
struct GeluBwdOp;

impl candle_core::CustomOp2 for GeluBwdOp {
    fn name(&self) -> &'static str {
        "primer-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "gelu_bwd x")?;
        let dy = cpu_slice(s2, l2, "gelu_bwd grad")?;
        let dx = gelu_backward_values(x, dy);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// GELU of every value, in parallel blocks.
pub(crate) fn gelu_values(x: &[f32]) -> Vec<f32> {
    let _timed = timed(OpKind::Gelu, &[x.len()], 0.0);
    map_rows(x, ELEMENTWISE_BLOCK, kernels::gelu)
}

/// The gradient of GELU at `x` times `dy`, in parallel blocks.
pub(crate) fn gelu_backward_values(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let _timed = timed(OpKind::Gelu, &[x.len()], 0.0);
    map_rows2(x, dy, ELEMENTWISE_BLOCK, kernels::gelu_bwd)
}

struct BiasAddOp;

impl candle_core::CustomOp2 for BiasAddOp {
    fn name(&self) -> &'static str {
        "primer-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "bias_add x")?;
        let b = cpu_slice(s2, l2, "bias_add b")?;
        let y = map_rows(x, b.len(), |xr, yr| kernels::add_row(xr, b, yr));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = b.elem_count();
        let db = grad
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSumOp)?
            .reshape(b.shape())?;
        debug_assert_eq!(db.elem_count(), d);
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// Sums a `[..., D]` tensor over every dimension but the last: `[D]`.
struct ColumnSumOp;

impl CustomOp1 for ColumnSumOp {
    fn name(&self) -> &'static str {
        "primer-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "column_sum")?;
        let d = *l.dims().last().unwrap_or(&1);
        let out = column_sum(x, d);
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// Column sums of a row-major matrix with rows of length `d`: `[d]`.
pub(crate) fn column_sum(x: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0f32; d];
    if d == 0 || x.is_empty() {
        return out;
    }
    let chunk = rows_per_task(x.len() / d, d) * d;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(chunk)
        .map(|xc| {
            let mut acc = vec![0f32; d];
            for xr in xc.chunks(d) {
                kernels::add_assign(&mut acc, xr);
            }
            acc
        })
        .collect();
    for p in partials {
        kernels::add_assign(&mut out, &p);
    }
    out
}

/// The largest absolute difference of two tensors of one shape (for the tests of the fused
/// ops against their composites).
#[cfg(test)]
pub(crate) fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_layer_norm_matches_composite_in_value_and_gradient() {
        let mut rng = SeededRng::new(5);
        let d = Device::Cpu;
        let x = Var::from_tensor(&rng.normal_tensor(&[3, 5, 8], 2.0, &d).unwrap()).unwrap();
        let g = Var::from_tensor(&rng.normal_tensor(&[8], 1.0, &d).unwrap()).unwrap();
        let b = Var::from_tensor(&rng.normal_tensor(&[8], 1.0, &d).unwrap()).unwrap();
        let w = rng.normal_tensor(&[3, 5, 8], 1.0, &d).unwrap();
        let y1 = layer_norm(&x, &g, &b, 1e-5).unwrap();
        let y2 = layer_norm_composite(&x, &g, &b, 1e-5).unwrap();
        assert!(max_abs(&y1, &y2) < 1e-5);
        let g1 = crate::model::backward(&(y1 * &w).unwrap().sum_all().unwrap()).unwrap();
        let g2 = crate::model::backward(&(y2 * &w).unwrap().sum_all().unwrap()).unwrap();
        for v in [&x, &g, &b] {
            let a = g1.get(v).expect("fused grad");
            let c = g2.get(v).expect("composite grad");
            assert!(max_abs(a, c) < 1e-4, "{}", max_abs(a, c));
            assert!(
                c.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 1e-3
            );
        }
    }

    #[test]
    fn fused_softmax_matches_composite_in_value_and_gradient() {
        let mut rng = SeededRng::new(6);
        let d = Device::Cpu;
        let x = Var::from_tensor(&rng.normal_tensor(&[2, 3, 7], 3.0, &d).unwrap()).unwrap();
        let w = rng.normal_tensor(&[2, 3, 7], 1.0, &d).unwrap();
        let y1 = softmax_last_dim(&x).unwrap();
        let y2 = softmax_composite(&x).unwrap();
        assert!(max_abs(&y1, &y2) < 1e-6);
        let s = y1
            .sum(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
        let g1 = crate::model::backward(&(y1 * &w).unwrap().sum_all().unwrap()).unwrap();
        let g2 = crate::model::backward(&(y2 * &w).unwrap().sum_all().unwrap()).unwrap();
        assert!(max_abs(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn cross_entropy_ignores_minus_100_and_matches_hand_computation() {
        let d = Device::Cpu;
        let logits = Tensor::new(&[[[1f32, 2., 3.], [0., 0., 0.], [5., 1., 1.]]], &d).unwrap();
        let labels = Tensor::new(&[[2i64, -100, 0]], &d).unwrap();
        let loss = masked_cross_entropy(&logits, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lse1 = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let lse3 = (5f32.exp() + 2.0 * 1f32.exp()).ln();
        let expected = ((lse1 - 3.0) + (lse3 - 5.0)) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        let bad = Tensor::new(&[[3i64, -100, 0]], &d).unwrap();
        assert!(masked_cross_entropy(&logits, &bad).is_err());
        let none = Tensor::new(&[[-100i64, -100, -100]], &d).unwrap();
        assert_eq!(
            masked_cross_entropy(&logits, &none)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }

    #[test]
    fn fused_gelu_and_bias_add_match_candle_in_value_and_gradient() {
        let mut rng = SeededRng::new(7);
        let d = Device::Cpu;
        let x = Var::from_tensor(&rng.normal_tensor(&[4, 3, 6], 2.0, &d).unwrap()).unwrap();
        let b = Var::from_tensor(&rng.normal_tensor(&[6], 1.0, &d).unwrap()).unwrap();
        let w = rng.normal_tensor(&[4, 3, 6], 1.0, &d).unwrap();
        let y1 = gelu(&add_bias(&x, &b).unwrap()).unwrap();
        let y2 = x.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        assert!(max_abs(&y1, &y2) < 1e-6);
        let g1 = crate::model::backward(&(y1 * &w).unwrap().sum_all().unwrap()).unwrap();
        let g2 = crate::model::backward(&(y2 * &w).unwrap().sum_all().unwrap()).unwrap();
        for v in [&x, &b] {
            let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert_eq!(a.dims(), c.dims());
            assert!(max_abs(a, c) < 1e-4, "{}", max_abs(a, c));
        }
    }

    #[test]
    fn fused_linear_matches_composite_in_value_and_gradient() {
        let mut rng = SeededRng::new(8);
        let d = Device::Cpu;
        let x = Var::from_tensor(&rng.normal_tensor(&[2, 5, 6], 1.0, &d).unwrap()).unwrap();
        let w = Var::from_tensor(&rng.normal_tensor(&[4, 6], 1.0, &d).unwrap()).unwrap();
        let b = Var::from_tensor(&rng.normal_tensor(&[4], 1.0, &d).unwrap()).unwrap();
        let r = rng.normal_tensor(&[2, 5, 4], 1.0, &d).unwrap();
        let y1 = scaled_linear(&x, &w, Some(&b), 0.5).unwrap();
        let y2 = (linear_composite(&x, &w, Some(&b)).unwrap() * 0.5).unwrap();
        assert_eq!(y1.dims(), &[2, 5, 4]);
        assert!(max_abs(&y1, &y2) < 1e-5);
        let g1 = crate::model::backward(&(y1 * &r).unwrap().sum_all().unwrap()).unwrap();
        let g2 = crate::model::backward(&(y2 * &r).unwrap().sum_all().unwrap()).unwrap();
        for v in [&x, &w, &b] {
            let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert_eq!(a.dims(), c.dims());
            assert!(max_abs(a, c) < 1e-4, "{}", max_abs(a, c));
        }
    }

    #[test]
    fn transposed_weights_give_the_same_linear_rows() {
        let mut rng = SeededRng::new(11);
        // Sizes that are not multiples of the transpose strips or the GEMM panels.
        for (rows, k, out) in [(1, 1, 1), (5, 3, 70), (37, 45, 33), (64, 96, 40)] {
            let x = rng.normal_vec(rows * k, 1.0);
            let w = rng.normal_vec(out * k, 1.0);
            let b = rng.normal_vec(out, 1.0);
            let wt = transposed(&w, out, k);
            for i in 0..out {
                for j in 0..k {
                    assert_eq!(wt[j * out + i], w[i * k + j]);
                }
            }
            let y1 = linear_rows(&x, LinearWeight::OutByIn(&w), &b, 0.5, rows, k, out);
            let y2 = linear_rows(&x, LinearWeight::InByOut(&wt), &b, 0.5, rows, k, out);
            for (r, (a, c)) in y1.chunks(out).zip(y2.chunks(out)).enumerate() {
                for (o, (&a, &c)) in a.iter().zip(c).enumerate() {
                    let want: f32 =
                        0.5 * (b[o] + (0..k).map(|j| x[r * k + j] * w[o * k + j]).sum::<f32>());
                    assert!(
                        (a - want).abs() < 1e-4 && (c - want).abs() < 1e-4,
                        "{a} {c} {want}"
                    );
                }
            }
        }
        assert!(transposed(&[], 0, 4).is_empty());
    }

    #[test]
    fn linear_matches_manual_product() {
        let d = Device::Cpu;
        let x = Tensor::new(&[[[1f32, 2.]], [[3., 4.]]], &d).unwrap(); // [2,1,2]
        let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &d).unwrap(); // [3,2]
        let b = Tensor::new(&[0f32, 10., 100.], &d).unwrap();
        let y = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.dims(), &[2, 1, 3]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1., 12., 103., 3., 14., 107.]
        );
    }
}
