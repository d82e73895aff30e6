//! Multi-head scaled dot-product attention as one differentiable operation.
//!
//! On the CPU (f32) the whole core — `softmax(q·kᵀ + key_bias) ⊙ dropout · v` for every
//! (sequence, head) — is a single custom op over `[B, T, H]` inputs: the per-head blocks are
//! read in place with strided GEMMs (no head transposes, no `[B, nh, T, T]` bias broadcast, no
//! gradient buffers for the intermediate nodes), and the backward recomputes the
//! probabilities instead of keeping them. On other devices and dtypes the same function is
//! composed from candle's differentiable ops.

use super::error::{ModelError, Result};
use super::kernels;
use super::ops::{matmul, softmax_last_dim};
use super::sgemm::gemm_strided;
use crate::op_timing::{OpKind, timed};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Attention context `[B, T, H]` of `nh` heads.
///
/// * `q`, `k`, `v`: `[B, T, H]` projections (q already scaled by `1/sqrt(head_dim)`);
/// * `key_bias`: `[B, T]` added to every score of key `t` (0 on tokens, −1e9 on padding);
/// * `dropout_mask`: `[B, nh, T, T]` multiplier of the probabilities (0 or `1/(1−p)`), in
///   training only.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    nh: usize,
    dropout_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, h) = q.dims3()?;
    if k.dims() != [b, t, h] || v.dims() != [b, t, h] || key_bias.dims() != [b, t] {
        return Err(ModelError::Invalid(format!(
            "attention: q {:?}, k {:?}, v {:?}, key bias {:?}",
            q.dims(),
            k.dims(),
            v.dims(),
            key_bias.dims()
        )));
    }
    if nh == 0 || h % nh != 0 {
        return Err(ModelError::Invalid(format!(
            "attention: hidden size {h} is not a multiple of {nh} heads"
        )));
    }
    if let Some(m) = dropout_mask
        && m.dims() != [b, nh, t, t]
    {
        return Err(ModelError::Invalid(format!(
            "attention: dropout mask {:?}, expected {:?}",
            m.dims(),
            [b, nh, t, t]
        )));
    }
    let kernel_ok = super::dispatch::kernel_ok;
    if [q, k, v].into_iter().all(kernel_ok) && dropout_mask.is_none_or(kernel_ok) {
        let op = AttentionOp {
            nh,
            key_bias: key_bias
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            mask: match dropout_mask {
                Some(m) => Some(m.flatten_all()?.to_vec1::<f32>()?),
                None => None,
            },
        };
        return Ok(q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?);
    }
    attention_composite(q, k, v, key_bias, nh, dropout_mask)
}

/// [`attention`] from candle's differentiable ops (any device, any float dtype).
pub fn attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    nh: usize,
    dropout_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, h) = q.dims3()?;
    let dh = h / nh;
    // [B, T, H] -> [B, nh, T, dh]
    let heads = |y: &Tensor| -> Result<Tensor> {
        Ok(y.reshape((b, t, nh, dh))?.transpose(1, 2)?.contiguous()?)
    };
    let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
    let bias = key_bias.to_dtype(q.dtype())?.reshape((b, 1, 1, t))?;
    // Products in the thread's precision; the bias, softmax and dropout in f32.
    let scores = matmul(&q, &k.t()?)?.broadcast_add(&bias)?;
    let mut probs = softmax_last_dim(&scores)?;
    if let Some(m) = dropout_mask {
        probs = probs.mul(&m.to_dtype(probs.dtype())?)?;
    }
    Ok(matmul(&probs, &v)?.transpose(1, 2)?.reshape((b, t, h))?)
}

/// The fused CPU attention (see the module docs).
struct AttentionOp {
    nh: usize,
    /// `[B·T]` additive key bias.
    key_bias: Vec<f32>,
    /// `[B·nh·T·T]` dropout multiplier, if any.
    mask: Option<Vec<f32>>,
}

/// Shape of one problem: batch, length, hidden, heads, head size.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub t: usize,
    pub h: usize,
    pub nh: usize,
    pub dh: usize,
}

impl Dims {
    /// The shape of `nh` heads over hidden size `h` (a multiple of `nh`) at length `t`.
    pub fn new(t: usize, h: usize, nh: usize) -> Self {
        Dims {
            t,
            h,
            nh,
            dh: h / nh,
        }
    }
}

/// The three products of one (sequence, head) block that attention needs. A "head block" is
/// T rows of `dh` values at row stride H inside a `[B, T, H]` tensor (a pointer to its first
/// value); a "square" is a dense T×T matrix. The first two also take `m` ≤ T query rows: an
/// m-row head block and an m×T "square" (the kept rows of [`AttentionCore::forward_rows`]).
///
/// # Safety (all three)
/// Every pointer must address a whole block of its kind inside its allocation, and `dst`
/// must overlap neither input.
impl Dims {
    /// `dst (m×T) = A · Bᵀ` of an m-row and a T-row head block (scores q·kᵀ, and dctx·vᵀ).
    unsafe fn square_of_blocks(self, m: usize, dst: *mut f32, a: *const f32, b: *const f32) {
        // SAFETY: forwarded from the caller.
        unsafe {
            gemm_strided(
                (m, self.t, self.dh),
                (dst, self.t),
                (a, self.h, 1),
                (b, 1, self.h),
            )
        }
    }

    /// `dst (m-row head block) = P · B` of an m×T square and a head block (probs·v, and dS·k).
    unsafe fn block_of_square(self, m: usize, dst: *mut f32, p: *const f32, b: *const f32) {
        // SAFETY: forwarded from the caller.
        unsafe {
            gemm_strided(
                (m, self.dh, self.t),
                (dst, self.h),
                (p, self.t, 1),
                (b, self.h, 1),
            )
        }
    }

    /// `dst (head block) = Pᵀ · B` of a square and a head block (P'ᵀ·dctx, and dSᵀ·q).
    unsafe fn block_of_square_t(self, dst: *mut f32, p: *const f32, b: *const f32) {
        // SAFETY: forwarded from the caller.
        unsafe {
            gemm_strided(
                (self.t, self.dh, self.t),
                (dst, self.h),
                (p, 1, self.t),
                (b, self.h, 1),
            )
        }
    }
}

impl AttentionOp {
    fn core(&self, b: usize, d: Dims) -> AttentionCore<'_> {
        AttentionCore {
            b,
            d,
            key_bias: &self.key_bias,
            mask: self.mask.as_deref(),
        }
    }
}

/// The fused attention over plain slices: the kernels behind [`attention`]'s custom op, also
/// run by the fused encoder layer ([`super::layer`]).
pub(crate) struct AttentionCore<'a> {
    pub b: usize,
    pub d: Dims,
    /// `[B·T]` additive key bias.
    pub key_bias: &'a [f32],
    /// `[B·nh·T·T]` dropout multiplier of the probabilities, if any.
    pub mask: Option<&'a [f32]>,
}

impl AttentionCore<'_> {
    /// The FLOPs of one T×T-by-head-dim product over every (sequence, head) at `t` tokens.
    fn head_products_flops(&self, t: usize) -> f64 {
        2.0 * (self.b * self.d.nh * t * t * self.d.dh) as f64
    }

    /// Probabilities `P = softmax(q·kᵀ + bias)` of sequence `bi`, head `hi` into `p` (T×T).
    fn probs(&self, q: &[f32], k: &[f32], bi: usize, hi: usize, p: &mut [f32]) {
        let d = self.d;
        let off = bi * d.t * d.h + hi * d.dh;
        self.probs_of_rows(&q[off..], d.t, k, bi, hi, p);
    }

    /// [`Self::probs`] for `m` query rows: `q` starts at the first row's head-`hi` values
    /// (rows at stride H), `p` is m×T; the keys are sequence `bi`'s.
    fn probs_of_rows(&self, q: &[f32], m: usize, k: &[f32], bi: usize, hi: usize, p: &mut [f32]) {
        let d = self.d;
        let k_off = bi * d.t * d.h + hi * d.dh;
        assert!(
            m > 0
                && m <= d.t
                && p.len() == m * d.t
                && q.len() >= (m - 1) * d.h + d.dh
                && k.len() >= k_off + (d.t - 1) * d.h + d.dh,
            "attention probabilities: blocks out of range"
        );
        // SAFETY: the m query rows and the T key rows lie inside q and k (checked above);
        // p is m×T.
        unsafe { d.square_of_blocks(m, p.as_mut_ptr(), q.as_ptr(), k.as_ptr().add(k_off)) };
        let bias = &self.key_bias[bi * d.t..(bi + 1) * d.t];
        for row in p.chunks_mut(d.t) {
            kernels::add_assign(row, bias);
            kernels::softmax_inplace(row);
        }
    }

    fn mask_block(&self, bi: usize, hi: usize) -> Option<&[f32]> {
        let tt = self.d.t * self.d.t;
        let start = (bi * self.d.nh + hi) * tt;
        self.mask.map(|m| &m[start..start + tt])
    }

    fn check(&self, inputs: &[&[f32]], outputs: &[&[f32]]) {
        let d = self.d;
        let n = self.b * d.t * d.h;
        assert!(
            inputs.iter().chain(outputs).all(|x| x.len() == n)
                && self.key_bias.len() == self.b * d.t
                && self
                    .mask
                    .is_none_or(|m| m.len() == self.b * d.nh * d.t * d.t),
            "attention core: buffers do not match [B={}, T={}, H={}]",
            self.b,
            d.t,
            d.h
        );
    }

    /// `out = (P ⊙ mask) · v` for every (sequence, head), `[B, T, H]` buffers.
    pub fn forward(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        self.check(&[q, k, v], &[out]);
        let d = self.d;
        // Two products per (sequence, head): scores and weighting.
        let _timed = timed(
            OpKind::Attention,
            &[self.b, d.nh, d.t, d.t, d.dh],
            2.0 * self.head_products_flops(d.t),
        );
        let dst = SendPtr(out.as_mut_ptr());
        (0..self.b * d.nh).into_par_iter().for_each_init(
            || vec![0f32; d.t * d.t],
            |p, job| {
                let (bi, hi) = (job / d.nh, job % d.nh);
                self.probs(q, k, bi, hi, p);
                if let Some(m) = self.mask_block(bi, hi) {
                    p.iter_mut().zip(m).for_each(|(a, &w)| *a *= w);
                }
                let off = bi * d.t * d.h + hi * d.dh;
                // SAFETY: job (bi, hi) writes only its own head block of `out` (checked to
                // be [B, T, H] above).
                unsafe {
                    d.block_of_square(d.t, dst.get().add(off), p.as_ptr(), v.as_ptr().add(off))
                };
            },
        );
    }

    /// The attention output at some query rows only, without dropout: `q` and `out` are
    /// `[n, H]`, `k` and `v` `[B, T, H]`, and each `(bi, r0, r1)` of `groups` says that rows
    /// `r0..r1` of `q` and `out` are queries of sequence `bi` (groups cover `0..n` in order).
    /// Row for row the same products as [`Self::forward`], on an `m × T` block of scores
    /// instead of `T × T`.
    pub fn forward_rows(
        &self,
        q: &[f32],
        groups: &[(usize, usize, usize)],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) {
        let d = self.d;
        let n = groups.last().map_or(0, |g| g.2);
        assert!(
            self.mask.is_none()
                && q.len() == n * d.h
                && out.len() == q.len()
                && self.key_bias.len() == self.b * d.t
                && [k, v].iter().all(|x| x.len() == self.b * d.t * d.h)
                && groups.iter().zip(0..).all(|(&(bi, r0, r1), i)| {
                    bi < self.b
                        && r0 <= r1
                        && r1 - r0 <= d.t
                        && r0 == if i == 0 { 0 } else { groups[i - 1].2 }
                }),
            "attention rows: buffers or groups do not match [B={}, T={}, H={}]",
            self.b,
            d.t,
            d.h
        );
        // Scores and weighting of the n kept query rows against T keys, per head.
        let _timed = timed(
            OpKind::Attention,
            &[self.b, d.nh, n, d.t, d.dh],
            2.0 * 2.0 * (n * d.nh * d.t * d.dh) as f64,
        );
        let dst = SendPtr(out.as_mut_ptr());
        (0..groups.len() * d.nh).into_par_iter().for_each_init(
            || vec![0f32; d.t * d.t],
            |p, job| {
                let ((bi, r0, r1), hi) = (groups[job / d.nh], job % d.nh);
                let m = r1 - r0;
                if m == 0 {
                    return;
                }
                let p = &mut p[..m * d.t];
                let q_off = r0 * d.h + hi * d.dh;
                self.probs_of_rows(&q[q_off..], m, k, bi, hi, p);
                let v_off = bi * d.t * d.h + hi * d.dh;
                // SAFETY: the T value rows at v_off lie inside v (checked above); p is m×T;
                // job (group, head) writes only its own m×dh block of `out`.
                unsafe {
                    d.block_of_square(m, dst.get().add(q_off), p.as_ptr(), v.as_ptr().add(v_off))
                };
            },
        );
    }

    /// Gradients of q, k and v given the gradient `g` of the output (all `[B, T, H]`); the
    /// probabilities are recomputed rather than kept from the forward.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        self.check(&[q, k, v, g], &[dq, dk, dv]);
        let d = self.d;
        // Five products per (sequence, head): the recomputed scores, dv, dP, dq and dk.
        let _timed = timed(
            OpKind::Attention,
            &[self.b, d.nh, d.t, d.t, d.dh],
            5.0 * self.head_products_flops(d.t),
        );
        let (dq, dk, dv) = (
            SendPtr(dq.as_mut_ptr()),
            SendPtr(dk.as_mut_ptr()),
            SendPtr(dv.as_mut_ptr()),
        );
        let tt = d.t * d.t;
        (0..self.b * d.nh).into_par_iter().for_each_init(
            || (vec![0f32; tt], vec![0f32; tt], vec![0f32; tt]),
            |(p, pd, dp), job| {
                let (bi, hi) = (job / d.nh, job % d.nh);
                let off = bi * d.t * d.h + hi * d.dh;
                self.probs(q, k, bi, hi, p);
                let mask = self.mask_block(bi, hi);
                // P' = P ⊙ mask, the probabilities that multiplied v.
                let pdrop: &[f32] = match mask {
                    Some(m) => {
                        for ((o, &a), &w) in pd.iter_mut().zip(p.iter()).zip(m) {
                            *o = a * w;
                        }
                        pd
                    }
                    None => p,
                };
                // SAFETY: job (bi, hi) writes only its own T×dh blocks of dq, dk and dv;
                // all reads stay inside the [B, T, H] inputs (checked above) and the T×T
                // scratch buffers.
                unsafe {
                    // dv = P'ᵀ · dctx
                    d.block_of_square_t(dv.get().add(off), pdrop.as_ptr(), g.as_ptr().add(off));
                    // dP' = dctx · vᵀ
                    d.square_of_blocks(
                        d.t,
                        dp.as_mut_ptr(),
                        g.as_ptr().add(off),
                        v.as_ptr().add(off),
                    );
                    if let Some(m) = mask {
                        dp.iter_mut().zip(m).for_each(|(a, &w)| *a *= w);
                    }
                    // dS = P ⊙ (dP − Σ dP ⊙ P), row-wise (reusing `pd` for dS).
                    for ((ds, pr), dpr) in pd.chunks_mut(d.t).zip(p.chunks(d.t)).zip(dp.chunks(d.t))
                    {
                        kernels::softmax_bwd_row(pr, dpr, ds);
                    }
                    // dq = dS · k, dk = dSᵀ · q
                    d.block_of_square(d.t, dq.get().add(off), pd.as_ptr(), k.as_ptr().add(off));
                    d.block_of_square_t(dk.get().add(off), pd.as_ptr(), q.as_ptr().add(off));
                }
            },
        );
    }
}

fn dims_of(l: &Layout, nh: usize) -> candle_core::Result<(usize, Dims)> {
    let (b, t, h) = l.shape().dims3()?;
    Ok((
        b,
        Dims {
            t,
            h,
            nh,
            dh: h / nh,
        },
    ))
}

fn slice_of<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("attention {what}: input must be contiguous"),
    }
}

/// A raw pointer that may cross into rayon tasks which write disjoint blocks through it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint set of (sequence, head) blocks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole Send wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "primer-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, d) = dims_of(lq, self.nh)?;
        let (q, k, v) = (
            slice_of(sq, lq, "q")?,
            slice_of(sk, lk, "k")?,
            slice_of(sv, lv, "v")?,
        );
        let mut out = vec![0f32; q.len()];
        self.core(b, d).forward(q, k, v, &mut out);
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = q.elem_count();
        let packed = q.apply_op3_no_bwd(
            k,
            v,
            &AttentionBwdOp {
                fwd: AttentionOp {
                    nh: self.nh,
                    key_bias: self.key_bias.clone(),
                    mask: self.mask.clone(),
                },
                grad: grad.contiguous()?,
            },
        )?;
        let part = |i: usize| packed.narrow(0, i * n, n)?.reshape(q.shape());
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}

/// Backward of [`AttentionOp`]: `[dq | dk | dv]` flattened in one buffer.
struct AttentionBwdOp {
    fwd: AttentionOp,
    grad: Tensor,
}

impl CustomOp3 for AttentionBwdOp {
    fn name(&self) -> &'static str {
        "primer-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, d) = dims_of(lq, self.fwd.nh)?;
        let (q, k, v) = (
            slice_of(sq, lq, "q")?,
            slice_of(sk, lk, "k")?,
            slice_of(sv, lv, "v")?,
        );
        let (gs, gl) = self.grad.storage_and_layout();
        let Storage::Cpu(gs) = &*gs else {
            candle_core::bail!("attention backward: the gradient is not on the CPU")
        };
        let g = slice_of(gs, gl, "grad")?;
        if g.len() != q.len() {
            candle_core::bail!("attention backward: gradient {:?}", gl.dims());
        }
        let n = q.len();
        let mut out = vec![0f32; 3 * n];
        let (dq, rest) = out.split_at_mut(n);
        let (dk, dv) = rest.split_at_mut(n);
        self.fwd.core(b, d).backward(q, k, v, g, dq, dk, dv);
        Ok((CpuStorage::F32(out), Shape::from(3 * n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::max_abs;
    use crate::rng::SeededRng;
    use candle_core::{Device, Var};

    /// The fused op equals the composite in value and in all three gradients, with padding
    /// and with a dropout mask, on a length that is not a multiple of the SIMD width.
    #[test]
    fn fused_attention_matches_composite() {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(11);
        let (b, t, h, nh) = (2usize, 5usize, 12usize, 3usize);
        let mk = |rng: &mut SeededRng| {
            Var::from_tensor(&rng.normal_tensor(&[b, t, h], 1.0, &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (mk(&mut rng), mk(&mut rng), mk(&mut rng));
        let bias = Tensor::new(&[[0f32, 0., 0., 0., 0.], [0., 0., 0., -1e9, -1e9]], &dev).unwrap();
        let r = rng.normal_tensor(&[b, t, h], 1.0, &dev).unwrap();
        let drop = rng.dropout_mask(&[b, nh, t, t], 0.3, &dev).unwrap();
        for mask in [None, Some(&drop)] {
            let y1 = attention(&q, &k, &v, &bias, nh, mask).unwrap();
            let y2 = attention_composite(&q, &k, &v, &bias, nh, mask).unwrap();
            assert_eq!(y1.dims(), &[b, t, h]);
            assert!(max_abs(&y1, &y2) < 1e-5, "{}", max_abs(&y1, &y2));
            let g1 = crate::model::backward(&(y1 * &r).unwrap().sum_all().unwrap()).unwrap();
            let g2 = crate::model::backward(&(y2 * &r).unwrap().sum_all().unwrap()).unwrap();
            for x in [&q, &k, &v] {
                let (a, c) = (g1.get(x).unwrap(), g2.get(x).unwrap());
                assert!(max_abs(a, c) < 1e-4, "{}", max_abs(a, c));
                let norm: f32 = c.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert!(norm > 1e-3);
            }
        }
        assert!(attention(&q, &k, &v, &bias, 5, None).is_err());
    }
}
