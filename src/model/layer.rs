//! One BERT encoder layer as a single differentiable operation (CPU, f32).
//!
//! Built from candle ops — even fused ones — a layer is ~14 graph nodes, and candle's backward
//! gives every gradient that reaches a node a fresh zero-filled buffer plus an add into yet
//! another buffer (`GradStore::or_insert`): ~35 of them per layer, ~1 GB of memory traffic per
//! MiniLM training step that does no arithmetic. Here the forward keeps the activations the
//! backward needs, and the backward writes each gradient once into its own buffer; where two
//! contributions meet (the residual stream, the three projections of the input) the GEMMs
//! accumulate in place. The input's gradient goes back to candle; the sixteen parameter
//! gradients are delivered through [`super::grad`], since a custom op can return gradients
//! only for its (at most three) graph inputs — except those of parameters computed from
//! variables (LoRA's merged weights), which go back to candle through the op's second graph
//! input ([`FusedParams`]).
//!
//! The math is exactly the composite layer's (`bert::encoder_layer_composite`, used on other
//! devices and dtypes): the unit tests in `bert.rs` compare the two in value and in every
//! gradient, with padding and dropout.

use super::attention::{AttentionCore, Dims};
use super::error::{ModelError, Result};
use super::grad::deliver_values;
use super::kernels;
use super::ops::{
    ELEMENTWISE_BLOCK, LinearWeight, column_sum, cpu_slice, gelu_backward_values, gelu_values,
    layer_norm_backward, layer_norm_rows, linear_rows, map_rows2, storage_slice, transposed,
};
use super::sgemm::{MatRef, gemm};
use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// The parameters of one encoder layer, named inside `encoder.layer.{l}.`, in checkpoint
/// order (the indices below refer to this order).
pub const LAYER_PARAM_NAMES: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

pub(crate) const Q_W: usize = 0;
pub(crate) const Q_B: usize = 1;
pub(crate) const K_W: usize = 2;
pub(crate) const K_B: usize = 3;
pub(crate) const V_W: usize = 4;
pub(crate) const V_B: usize = 5;
pub(crate) const ATT_OUT_W: usize = 6;
pub(crate) const ATT_OUT_B: usize = 7;
pub(crate) const LN1_G: usize = 8;
pub(crate) const LN1_B: usize = 9;
pub(crate) const INTER_W: usize = 10;
pub(crate) const INTER_B: usize = 11;
pub(crate) const OUT_W: usize = 12;
pub(crate) const OUT_B: usize = 13;
pub(crate) const LN2_G: usize = 14;
pub(crate) const LN2_B: usize = 15;

/// Shape of parameter `i` ([`LAYER_PARAM_NAMES`]) for hidden size `h` and intermediate size
/// `inter`.
pub fn layer_param_shape(i: usize, h: usize, inter: usize) -> Vec<usize> {
    match i {
        Q_W | K_W | V_W | ATT_OUT_W => vec![h, h],
        INTER_W => vec![inter, h],
        OUT_W => vec![h, inter],
        INTER_B => vec![inter],
        _ => vec![h],
    }
}

/// The dropout multipliers (0 or `1/(1−p)`) of one layer in training, drawn in the order the
/// composite layer draws them: attention probabilities `[B·nh·T·T]`, attention output and
/// feed-forward output `[B·T·H]` each. `None` where that dropout is off.
#[derive(Debug, Default)]
pub(crate) struct LayerDropout {
    pub attention: Option<Vec<f32>>,
    pub attention_output: Option<Vec<f32>>,
    pub output: Option<Vec<f32>>,
}

/// Static settings of a layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerSpec {
    pub heads: usize,
    pub eps: f32,
}

/// The linear parameters of a layer (indices into [`LAYER_PARAM_NAMES`]).
const LINEAR_WEIGHTS: [usize; 6] = [Q_W, K_W, V_W, ATT_OUT_W, INTER_W, OUT_W];

/// A layer's six linear weights transposed to `in × out` ([`LinearWeight::InByOut`]), made
/// once for an inference pass over fixed weights and read by every batch of it. Only valid
/// with the very parameter values they were made from: the fused layer accepts them only
/// when nothing is tracked (no backward can follow), and [`super::bert::FrozenEncoder`]
/// makes them together with the weights it reads.
pub(crate) struct TransposedLinears {
    weights: [Vec<f32>; 6],
}

impl TransposedLinears {
    /// From a layer's parameters in [`LAYER_PARAM_NAMES`] order (CPU, f32; check
    /// [`fused_params_supported`] first).
    pub(crate) fn new(params: &[&Tensor]) -> Result<Self> {
        if params.len() != LAYER_PARAM_NAMES.len() {
            return Err(ModelError::Invalid(format!(
                "transposed linears: {} parameters, expected {}",
                params.len(),
                LAYER_PARAM_NAMES.len()
            )));
        }
        let mut weights: [Vec<f32>; 6] = Default::default();
        for (slot, &i) in weights.iter_mut().zip(&LINEAR_WEIGHTS) {
            let w = params[i].contiguous()?;
            let (out, k) = w.dims2()?;
            let (s, l) = w.storage_and_layout();
            *slot = transposed(storage_slice(&s, l, LAYER_PARAM_NAMES[i])?, out, k);
        }
        Ok(Self { weights })
    }

    fn get(&self, param: usize) -> Option<&[f32]> {
        let slot = LINEAR_WEIGHTS.iter().position(|&i| i == param)?;
        Some(&self.weights[slot])
    }
}

/// Whether [`encoder_layer`] can run on these tensors: kernels on ([`super::dispatch`]) and
/// everything on the CPU in f32. Any parameter can be read — a constant, a variable, or a tensor
/// computed from variables (LoRA's merged weights) — since [`FusedParams`] routes each one's
/// gradient where it must go.
pub(crate) fn fused_layer_supported(x: &Tensor, params: &[&Tensor]) -> bool {
    super::dispatch::kernel_ok(x)
        && params.len() == LAYER_PARAM_NAMES.len()
        && fused_params_supported(params)
}

/// Whether fused CPU ops may read these parameters: kernels on ([`super::dispatch`]), all on
/// the CPU in f32 (constants, variables or computed tensors alike: see [`FusedParams`]).
pub(crate) fn fused_params_supported(params: &[&Tensor]) -> bool {
    params.iter().all(|p| super::dispatch::kernel_ok(p))
}

/// How one parameter of a fused op receives its gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GradRoute {
    /// A constant: none is computed.
    Skip,
    /// A variable: delivered through [`super::grad`] (a custom op hands gradients back to its
    /// graph inputs only, and the fused ops read more parameters than they have inputs).
    Deliver,
    /// A tensor computed from variables (LoRA's merged `W + s·B·A`): a gradient delivered to it
    /// would stop there, so it is returned to candle instead, as part of the gradient of the
    /// op's packed graph input (from `offset` on), and candle's backward carries it on through
    /// the computation (dB = s·dW·Aᵀ, dA = s·Bᵀ·dW).
    Packed { offset: usize },
}

/// A fused op's parameters with the route of each one's gradient, and the op's second graph
/// input (the "anchor"). This is the one place that decides how parameter gradients leave a
/// fused op, for the encoder layer and the embeddings alike.
///
/// candle records a custom op — and later calls its backward — only when one of its graph
/// inputs is tracked. The anchor is therefore chosen so that the op is recorded whenever any
/// parameter needs a gradient:
/// * the computed parameters, concatenated into one fresh tensor (or the one computed
///   parameter itself), when there are any: their gradients come back through it;
/// * else the first variable parameter (BitFit's biases on a frozen encoder: without it, the
///   embedding op's graph inputs would be constants and candle would never call its backward);
/// * else parameter `fallback` (a constant: nothing to record unless the other input is
///   tracked).
pub(crate) struct FusedParams {
    pub params: Vec<Tensor>,
    pub routes: Vec<GradRoute>,
    pub anchor: Tensor,
    /// The parameter the anchor is, when it is one (candle locks it for the forward, so the
    /// op must read it from there and not lock it again).
    pub anchor_param: Option<usize>,
    packed_len: usize,
}

impl FusedParams {
    /// Routes for `params`; the anchor is never one of `taken` (parameters that already are
    /// the op's other graph input).
    pub(crate) fn new(params: &[&Tensor], fallback: usize, taken: &[usize]) -> Result<Self> {
        let mut packed_len = 0;
        let mut packed = Vec::new();
        let routes: Vec<GradRoute> = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.is_variable() {
                    GradRoute::Deliver
                } else if p.track_op() {
                    let offset = packed_len;
                    packed_len += p.elem_count();
                    packed.push(i);
                    GradRoute::Packed { offset }
                } else {
                    GradRoute::Skip
                }
            })
            .collect();
        let (anchor, anchor_param) = match packed.as_slice() {
            // One computed parameter that is not the other graph input is the anchor itself.
            &[i] if !taken.contains(&i) && params[i].is_contiguous() => {
                (params[i].clone(), Some(i))
            }
            [] => {
                let i = (0..params.len())
                    .find(|&i| routes[i] == GradRoute::Deliver && !taken.contains(&i))
                    .unwrap_or(fallback);
                (params[i].clone(), Some(i))
            }
            many => {
                // Concatenated along the first dimension — row-major, that is their values
                // one after the other, at the routes' offsets — flattened first only where
                // their other dimensions differ: each reshape is one more node whose gradient
                // candle buffers and adds.
                let tail = |i: usize| params[i].dims().get(1..).unwrap_or(&[]).to_vec();
                let same_tail = many.iter().all(|&i| tail(i) == tail(many[0]));
                let parts = many
                    .iter()
                    .map(|&i| {
                        let p = params[i].contiguous()?;
                        if same_tail && p.rank() > 0 {
                            Ok(p)
                        } else {
                            p.flatten_all()
                        }
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                // A fresh tensor (`cat` of one tensor would return that tensor itself), so
                // that candle's lock on the anchor never is a lock on a parameter's storage.
                let anchor = match parts.as_slice() {
                    [one] => one.copy()?,
                    _ => Tensor::cat(&parts, 0)?,
                };
                (anchor, None)
            }
        };
        Ok(Self {
            params: params.iter().map(|&p| p.clone()).collect(),
            routes,
            anchor,
            anchor_param,
            packed_len,
        })
    }

    /// Whether some parameter needs a gradient (a backward can follow).
    pub(crate) fn any_tracked(&self) -> bool {
        self.routes.iter().any(|r| *r != GradRoute::Skip)
    }

    /// The values of the parameters the anchor holds, from the anchor's values `anchor`: what
    /// the forward reads there instead of locking them ([`lock_params`]).
    pub(crate) fn given_by_anchor<'a>(&self, anchor: &'a [f32]) -> Vec<(usize, &'a [f32])> {
        match self.anchor_param {
            Some(i) => vec![(i, anchor)],
            None => self
                .routes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match *r {
                    GradRoute::Packed { offset } => {
                        Some((i, &anchor[offset..offset + self.params[i].elem_count()]))
                    }
                    _ => None,
                })
                .collect(),
        }
    }

    /// A collector of the parameters' gradients for one backward.
    pub(crate) fn grads(&self) -> ParamGrads<'_> {
        ParamGrads {
            fused: self,
            packed: (self.packed_len > 0 && self.anchor_param.is_none())
                .then(|| vec![0f32; self.packed_len]),
        }
    }
}

/// The parameter gradients of one backward of a fused op, each sent its [`GradRoute`].
pub(crate) struct ParamGrads<'a> {
    fused: &'a FusedParams,
    packed: Option<Vec<f32>>,
}

impl ParamGrads<'_> {
    /// Whether parameter `i` needs a gradient (the backward skips computing it otherwise).
    pub(crate) fn wants(&self, i: usize) -> bool {
        self.fused.routes[i] != GradRoute::Skip
    }

    /// Parameter `i`'s gradient (in its shape, row-major).
    pub(crate) fn give(&mut self, i: usize, values: Vec<f32>) -> candle_core::Result<()> {
        match self.fused.routes[i] {
            GradRoute::Skip => Ok(()),
            GradRoute::Deliver => deliver_values(&self.fused.params[i], values),
            // The one computed parameter as the anchor: its gradient is the anchor's.
            GradRoute::Packed { .. } if self.fused.anchor_param == Some(i) => {
                self.packed = Some(values);
                Ok(())
            }
            GradRoute::Packed { offset } => {
                let packed = self.packed.as_mut().expect("a packed route has a buffer");
                packed[offset..offset + values.len()].copy_from_slice(&values);
                Ok(())
            }
        }
    }

    /// A layer norm's `[dγ | dβ]` as the gradients of parameters `gamma` and `beta`.
    pub(crate) fn give_norm(
        &mut self,
        gamma: usize,
        beta: usize,
        dgdb: Vec<f32>,
    ) -> candle_core::Result<()> {
        let d = dgdb.len() / 2;
        self.give(gamma, dgdb[..d].to_vec())?;
        self.give(beta, dgdb[d..].to_vec())
    }

    /// The anchor's gradient for candle: the computed parameters' gradients, packed in the
    /// anchor's shape (None when the anchor is a variable, whose gradient was delivered).
    pub(crate) fn anchor_grad(self) -> candle_core::Result<Option<Tensor>> {
        match self.packed {
            Some(v) => Ok(Some(Tensor::from_vec(
                v,
                self.fused.anchor.shape(),
                &Device::Cpu,
            )?)),
            None => Ok(None),
        }
    }
}

/// One encoder layer on `x` `[B, T, H]`: self-attention (key bias `[B·T]`, 0 or −1e9), output
/// projection, dropout, residual, layer norm, GELU feed-forward, dropout, residual, layer
/// norm. Check [`fused_layer_supported`] first.
pub(crate) fn encoder_layer(
    x: &Tensor,
    params: &[&Tensor],
    key_bias: Arc<Vec<f32>>,
    spec: LayerSpec,
    dropout: LayerDropout,
    transposed: Option<Arc<TransposedLinears>>,
) -> Result<Tensor> {
    let (b, t, h, inter) = check_layer_shapes(x, params, spec)?;
    let (n, tt) = (b * t * h, b * spec.heads * t * t);
    let lengths_ok = key_bias.len() == b * t
        && dropout.attention.as_ref().is_none_or(|m| m.len() == tt)
        && [&dropout.attention_output, &dropout.output]
            .iter()
            .all(|m| m.as_ref().is_none_or(|m| m.len() == n));
    if !lengths_ok {
        return Err(ModelError::Invalid(format!(
            "encoder layer: key bias or dropout masks do not match the input {:?}",
            x.dims()
        )));
    }
    let fused = FusedParams::new(params, Q_W, &[])?;
    let keep_activations = x.track_op() || fused.any_tracked();
    if keep_activations && transposed.is_some() {
        return Err(ModelError::Invalid(
            "encoder layer: transposed weights are for inference only (nothing tracked)".into(),
        ));
    }
    let anchor = fused.anchor.clone();
    let mut op = EncoderLayerOp::new(
        fused,
        key_bias,
        spec,
        (b, t, h, inter),
        dropout,
        keep_activations,
    );
    op.transposed = transposed;
    // The anchor is the op's second graph input so that candle records the op (and calls its
    // backward) whenever a parameter needs a gradient, even if `x` is constant.
    Ok(x.contiguous()?.apply_op2(&anchor, op)?)
}

/// The layer's output at the flat rows `rows` (`b·T + t`) of `x` `[B, T, H]` only, as
/// `[rows.len(), H]`, for inference: no dropout, no graph (`x` and every parameter constant).
///
/// Keys and values need every row, but the queries, the attention output, the feed-forward
/// block and both layer norms act on each row alone, so only the kept rows are computed past
/// the key and value projections — what the encoder cache keeps of the last layer is often
/// half its tokens (first subwords, labelled tokens). `rows` must list the sequences in
/// ascending order (any order of positions within one).
pub(crate) fn encoder_layer_rows(
    x: &Tensor,
    params: &[&Tensor],
    key_bias: Arc<Vec<f32>>,
    spec: LayerSpec,
    rows: &[u32],
    transposed: Option<Arc<TransposedLinears>>,
) -> Result<Tensor> {
    let (b, t, h, inter) = check_layer_shapes(x, params, spec)?;
    if x.track_op() || params.iter().any(|p| p.is_variable() || p.track_op()) {
        return Err(ModelError::Invalid(
            "encoder layer rows: inference only (the input and parameters must be constants)"
                .into(),
        ));
    }
    if key_bias.len() != b * t {
        return Err(ModelError::Invalid(format!(
            "encoder layer rows: key bias of {} values for the input {:?}",
            key_bias.len(),
            x.dims()
        )));
    }
    let groups = sequence_groups(rows, b, t)?;
    let mut op = EncoderLayerOp::new(
        FusedParams::new(params, Q_W, &[])?,
        key_bias,
        spec,
        (b, t, h, inter),
        LayerDropout::default(),
        false,
    );
    op.transposed = transposed;
    let x = x.contiguous()?;
    let y = {
        let (xs, xl) = x.storage_and_layout();
        let xv = storage_slice(&xs, xl, "input")?;
        let guards = lock_params(&op.fused.params, &[]);
        let p = param_values(&guards, &LAYER_PARAM_NAMES, &[])?;
        op.forward_rows(xv, &p, rows, &groups)
    };
    Ok(Tensor::from_vec(y, (rows.len(), h), &Device::Cpu)?)
}

/// `(sequence, first row, end row)` of each run of `rows` (flat `b·T + t` positions) in one
/// sequence; an error unless the sequences ascend and every position is inside `[B, T]`.
pub(crate) fn sequence_groups(
    rows: &[u32],
    b: usize,
    t: usize,
) -> Result<Vec<(usize, usize, usize)>> {
    let mut groups: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        let (seq, r) = (r as usize / t.max(1), r as usize);
        if r >= b * t {
            return Err(ModelError::Invalid(format!(
                "encoder layer rows: row {r} is outside [{b}, {t}]"
            )));
        }
        match groups.last_mut() {
            Some(g) if g.0 == seq => g.2 = i + 1,
            Some(g) if g.0 > seq => {
                return Err(ModelError::Invalid(format!(
                    "encoder layer rows: sequence {seq} after sequence {} (rows must list the sequences in ascending order)",
                    g.0
                )));
            }
            _ => groups.push((seq, i, i + 1)),
        }
    }
    Ok(groups)
}

/// The shapes every fused layer checks: `x` `[B, T, H]`, the sixteen parameters' shapes, and
/// heads dividing H. Returns `(B, T, H, intermediate size)`.
fn check_layer_shapes(
    x: &Tensor,
    params: &[&Tensor],
    spec: LayerSpec,
) -> Result<(usize, usize, usize, usize)> {
    let (b, t, h) = x.dims3()?;
    if params.len() != LAYER_PARAM_NAMES.len() {
        return Err(ModelError::Invalid(format!(
            "encoder layer: {} parameters, expected {}",
            params.len(),
            LAYER_PARAM_NAMES.len()
        )));
    }
    let inter = params[INTER_W].dim(0)?;
    for (i, p) in params.iter().enumerate() {
        let want = layer_param_shape(i, h, inter);
        if p.dims() != want.as_slice() {
            return Err(ModelError::Invalid(format!(
                "encoder layer: {} has shape {:?}, expected {want:?} for hidden size {h}",
                LAYER_PARAM_NAMES[i],
                p.dims()
            )));
        }
    }
    if spec.heads == 0 || h % spec.heads != 0 {
        return Err(ModelError::Invalid(format!(
            "encoder layer: hidden size {h} is not a multiple of {} heads",
            spec.heads
        )));
    }
    Ok((b, t, h, inter))
}

struct EncoderLayerOp {
    fused: FusedParams,
    key_bias: Arc<Vec<f32>>,
    spec: LayerSpec,
    dims: Dims,
    batch: usize,
    inter: usize,
    dropout: LayerDropout,
    /// Whether a backward can follow (some input or parameter is tracked): keep the activations.
    keep_activations: bool,
    saved: Mutex<Option<Activations>>,
    /// The linear weights pre-transposed for an inference pass, if any.
    transposed: Option<Arc<TransposedLinears>>,
}

/// What the backward needs from the forward, all row-major over the B·T rows.
struct Activations {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    post: AfterAttention,
}

/// The intermediate values of [`EncoderLayerOp::after_attention`], row by row.
struct AfterAttention {
    /// The attention core's output.
    ctx: Vec<f32>,
    /// Input of the first layer norm (attention output after dropout, plus `x`).
    s1: Vec<f32>,
    h1: Vec<f32>,
    /// Intermediate projection before and after GELU.
    u: Vec<f32>,
    f: Vec<f32>,
    /// Input of the second layer norm.
    s2: Vec<f32>,
}

type Guard<'a> = (candle_core::StorageRef<'a>, &'a Layout);

/// Read locks on the storage of every parameter but those in `given` (the op's graph inputs,
/// which candle has already locked: locking them again could deadlock).
pub(crate) fn lock_params<'a>(params: &'a [Tensor], given: &[usize]) -> Vec<Option<Guard<'a>>> {
    (0..params.len())
        .map(|i| (!given.contains(&i)).then(|| params[i].storage_and_layout()))
        .collect()
}

/// The values of every parameter: from its lock in `guards`, or from `given` (index, values)
/// for those [`lock_params`] left out. `names` name them in errors.
pub(crate) fn param_values<'g>(
    guards: &'g [Option<Guard<'_>>],
    names: &[&str],
    given: &[(usize, &'g [f32])],
) -> candle_core::Result<Vec<&'g [f32]>> {
    let mut out = Vec::with_capacity(guards.len());
    for (i, g) in guards.iter().enumerate() {
        out.push(match g {
            Some((s, l)) => storage_slice(s, l, names[i])?,
            None => match given.iter().find(|(j, _)| *j == i) {
                Some(&(_, v)) => v,
                None => candle_core::bail!("{}: neither locked nor given", names[i]),
            },
        });
    }
    Ok(out)
}

/// `s = s ⊙ mask + x` (the dropout and residual after a projection), in parallel blocks.
fn dropout_residual(s: &mut [f32], mask: Option<&[f32]>, x: &[f32]) {
    assert_eq!(s.len(), x.len());
    let blk = ELEMENTWISE_BLOCK;
    match mask {
        Some(m) => s
            .par_chunks_mut(blk)
            .zip(x.par_chunks(blk).zip(m.par_chunks(blk)))
            .for_each(|(sc, (xc, mc))| {
                for ((a, &xv), &mv) in sc.iter_mut().zip(xc).zip(mc) {
                    *a = *a * mv + xv;
                }
            }),
        None => s
            .par_chunks_mut(blk)
            .zip(x.par_chunks(blk))
            .for_each(|(sc, xc)| kernels::add_assign(sc, xc)),
    }
}

/// `g ⊙ mask`, or `g` itself without dropout.
pub(crate) fn masked<'a>(g: &'a [f32], mask: Option<&[f32]>) -> Cow<'a, [f32]> {
    match mask {
        Some(m) => Cow::Owned(map_rows2(g, m, ELEMENTWISE_BLOCK, |a, b, y| {
            for ((o, &x), &w) in y.iter_mut().zip(a).zip(b) {
                *o = x * w;
            }
        })),
        None => Cow::Borrowed(g),
    }
}

impl EncoderLayerOp {
    /// The op over `(B, T, H, intermediate size)` as [`check_layer_shapes`] returns them.
    fn new(
        fused: FusedParams,
        key_bias: Arc<Vec<f32>>,
        spec: LayerSpec,
        (b, t, h, inter): (usize, usize, usize, usize),
        dropout: LayerDropout,
        keep_activations: bool,
    ) -> Self {
        EncoderLayerOp {
            fused,
            key_bias,
            spec,
            dims: Dims::new(t, h, spec.heads),
            batch: b,
            inter,
            dropout,
            keep_activations,
            saved: Mutex::new(None),
            transposed: None,
        }
    }

    /// Linear parameter `i` ([`LAYER_PARAM_NAMES`]) as the forward's GEMMs read it: its
    /// transpose when the op has them, else the checkpoint layout `p[i]`.
    fn linear<'a>(&'a self, p: &[&'a [f32]], i: usize) -> LinearWeight<'a> {
        match self.transposed.as_deref().and_then(|t| t.get(i)) {
            Some(wt) => LinearWeight::InByOut(wt),
            None => LinearWeight::OutByIn(p[i]),
        }
    }

    fn rows(&self) -> usize {
        self.batch * self.dims.t
    }

    fn attention(&self) -> AttentionCore<'_> {
        AttentionCore {
            b: self.batch,
            d: self.dims,
            key_bias: &self.key_bias,
            mask: self.dropout.attention.as_deref(),
        }
    }

    /// The forward over plain slices; `p[i]` is parameter `i`.
    fn forward(&self, x: &[f32], p: &[&[f32]]) -> (Vec<f32>, Option<Activations>) {
        let (rows, h) = (self.rows(), self.dims.h);
        let scale = 1.0 / (self.dims.dh as f32).sqrt();
        // Scaling q (B·T·H values) instead of the scores (B·nh·T·T) is cheaper and the same.
        let q = linear_rows(x, self.linear(p, Q_W), p[Q_B], scale, rows, h, h);
        let k = linear_rows(x, self.linear(p, K_W), p[K_B], 1.0, rows, h, h);
        let v = linear_rows(x, self.linear(p, V_W), p[V_B], 1.0, rows, h, h);
        let mut ctx = vec![0f32; rows * h];
        self.attention().forward(&q, &k, &v, &mut ctx);
        let (y, post) = self.after_attention(ctx, x, p);
        let saved = self
            .keep_activations
            .then_some(Activations { q, k, v, post });
        (y, saved)
    }

    /// Everything after the attention core, row by row: output projection, dropout, residual
    /// `x`, layer norm, GELU feed-forward, dropout, residual, layer norm. `ctx` and `x` are
    /// `[rows, H]` for any number of rows (dropout masks, when given, cover all B·T rows).
    /// Returns the layer output and the intermediates.
    fn after_attention(
        &self,
        ctx: Vec<f32>,
        x: &[f32],
        p: &[&[f32]],
    ) -> (Vec<f32>, AfterAttention) {
        let (h, inter, eps) = (self.dims.h, self.inter, self.spec.eps);
        let rows = x.len() / h;
        let mut s1 = linear_rows(
            &ctx,
            self.linear(p, ATT_OUT_W),
            p[ATT_OUT_B],
            1.0,
            rows,
            h,
            h,
        );
        dropout_residual(&mut s1, self.dropout.attention_output.as_deref(), x);
        let h1 = layer_norm_rows(&s1, p[LN1_G], p[LN1_B], eps);
        let u = linear_rows(
            &h1,
            self.linear(p, INTER_W),
            p[INTER_B],
            1.0,
            rows,
            h,
            inter,
        );
        let f = gelu_values(&u);
        let mut s2 = linear_rows(&f, self.linear(p, OUT_W), p[OUT_B], 1.0, rows, inter, h);
        dropout_residual(&mut s2, self.dropout.output.as_deref(), &h1);
        let y = layer_norm_rows(&s2, p[LN2_G], p[LN2_B], eps);
        (
            y,
            AfterAttention {
                ctx,
                s1,
                h1,
                u,
                f,
                s2,
            },
        )
    }

    /// [`Self::forward`] at the flat rows `rows` only (see [`encoder_layer_rows`]); `groups`
    /// are their runs per sequence ([`sequence_groups`]). No dropout, nothing kept.
    fn forward_rows(
        &self,
        x: &[f32],
        p: &[&[f32]],
        rows: &[u32],
        groups: &[(usize, usize, usize)],
    ) -> Vec<f32> {
        let (all, h) = (self.rows(), self.dims.h);
        let scale = 1.0 / (self.dims.dh as f32).sqrt();
        let k = linear_rows(x, self.linear(p, K_W), p[K_B], 1.0, all, h, h);
        let v = linear_rows(x, self.linear(p, V_W), p[V_B], 1.0, all, h, h);
        let mut kept = Vec::with_capacity(rows.len() * h);
        for &r in rows {
            let r = r as usize;
            kept.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        let q = linear_rows(&kept, self.linear(p, Q_W), p[Q_B], scale, rows.len(), h, h);
        let mut ctx = vec![0f32; rows.len() * h];
        self.attention().forward_rows(&q, groups, &k, &v, &mut ctx);
        self.after_attention(ctx, &kept, p).0
    }

    /// The gradients of a linear layer `y = scale·(x·wᵀ + b)` with respect to `w` (`out × k`)
    /// and `b`, given `dy` (`rows × out`), for the parameters that need one.
    #[allow(clippy::too_many_arguments)]
    fn linear_param_grads(
        &self,
        g: &mut ParamGrads<'_>,
        dy: &[f32],
        x: &[f32],
        rows: usize,
        k: usize,
        out: usize,
        scale: f32,
        (w, b): (usize, usize),
    ) -> candle_core::Result<()> {
        if g.wants(w) {
            let mut dw = vec![0f32; out * k];
            gemm(
                &mut dw,
                false,
                MatRef::new(dy, rows, out).t(),
                MatRef::new(x, rows, k),
                scale,
            );
            g.give(w, dw)?;
        }
        if g.wants(b) {
            let mut db = column_sum(dy, out);
            if scale != 1.0 {
                db.iter_mut().for_each(|v| *v *= scale);
            }
            g.give(b, db)?;
        }
        Ok(())
    }

    /// The backward over plain slices: gives the parameter gradients to `g`, returns `dx` when
    /// `want_dx`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        g: &mut ParamGrads<'_>,
        a: &Activations,
        x: &[f32],
        p: &[&[f32]],
        dy: &[f32],
        want_dx: bool,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let (rows, h, inter) = (self.rows(), self.dims.h, self.inter);
        let scale = 1.0 / (self.dims.dh as f32).sqrt();
        let eps = self.spec.eps;
        let nh = rows * h;

        // Second layer norm.
        let mut ds2 = vec![0f32; nh];
        let mut dgdb = vec![0f32; 2 * h];
        layer_norm_backward(&a.post.s2, p[LN2_G], dy, eps, &mut ds2, &mut dgdb);
        g.give_norm(LN2_G, LN2_B, dgdb)?;
        // Feed-forward output projection (after its dropout), then GELU.
        let du = {
            let d_out = masked(&ds2, self.dropout.output.as_deref());
            self.linear_param_grads(g, &d_out, &a.post.f, rows, inter, h, 1.0, (OUT_W, OUT_B))?;
            let mut df = vec![0f32; rows * inter];
            gemm(
                &mut df,
                false,
                MatRef::new(&d_out, rows, h),
                MatRef::new(p[OUT_W], h, inter),
                1.0,
            );
            gelu_backward_values(&a.post.u, &df)
        };
        // Intermediate projection; its input gradient joins the residual's.
        self.linear_param_grads(g, &du, &a.post.h1, rows, h, inter, 1.0, (INTER_W, INTER_B))?;
        let mut dh1 = ds2;
        gemm(
            &mut dh1,
            true,
            MatRef::new(&du, rows, inter),
            MatRef::new(p[INTER_W], inter, h),
            1.0,
        );
        drop(du);
        // First layer norm.
        let mut ds1 = vec![0f32; nh];
        let mut dgdb = vec![0f32; 2 * h];
        layer_norm_backward(&a.post.s1, p[LN1_G], &dh1, eps, &mut ds1, &mut dgdb);
        drop(dh1);
        g.give_norm(LN1_G, LN1_B, dgdb)?;
        // Attention output projection (after its dropout).
        let mut dctx = vec![0f32; nh];
        {
            let d_att = masked(&ds1, self.dropout.attention_output.as_deref());
            self.linear_param_grads(
                g,
                &d_att,
                &a.post.ctx,
                rows,
                h,
                h,
                1.0,
                (ATT_OUT_W, ATT_OUT_B),
            )?;
            gemm(
                &mut dctx,
                false,
                MatRef::new(&d_att, rows, h),
                MatRef::new(p[ATT_OUT_W], h, h),
                1.0,
            );
        }
        // Attention core, then the three projections of x.
        let (mut dq, mut dk, mut dv) = (vec![0f32; nh], vec![0f32; nh], vec![0f32; nh]);
        self.attention()
            .backward(&a.q, &a.k, &a.v, &dctx, &mut dq, &mut dk, &mut dv);
        drop(dctx);
        let projections = [
            (&dq, scale, Q_W, Q_B),
            (&dk, 1.0, K_W, K_B),
            (&dv, 1.0, V_W, V_B),
        ];
        for &(dp, s, w, b) in &projections {
            self.linear_param_grads(g, dp, x, rows, h, h, s, (w, b))?;
        }
        if !want_dx {
            return Ok(None);
        }
        // dx: the residual's ds1 plus the three projections' input gradients.
        let mut dx = ds1;
        for (dp, s, w, _) in projections {
            gemm(
                &mut dx,
                true,
                MatRef::new(dp, rows, h),
                MatRef::new(p[w], h, h),
                s,
            );
        }
        Ok(Some(dx))
    }
}

impl CustomOp2 for EncoderLayerOp {
    fn name(&self) -> &'static str {
        "primer-encoder-layer"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_slice(sx, lx, "input")?;
        let given = self.fused.given_by_anchor(cpu_slice(sa, la, "parameters")?);
        let taken: Vec<usize> = given.iter().map(|&(i, _)| i).collect();
        let guards = lock_params(&self.fused.params, &taken);
        let p = param_values(&guards, &LAYER_PARAM_NAMES, &given)?;
        let (y, saved) = self.forward(x, &p);
        if saved.is_some() {
            *self.saved.lock().expect("no panic while holding the lock") = saved;
        }
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _anchor: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().expect("no panic while holding the lock");
        let Some(a) = saved.as_ref() else {
            candle_core::bail!("fused encoder layer: backward without kept activations")
        };
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let dy = storage_slice(&gs, gl, "output gradient")?;
        let (xs, xl) = x.storage_and_layout();
        let xv = storage_slice(&xs, xl, "input")?;
        let guards = lock_params(&self.fused.params, &[]);
        let p = param_values(&guards, &LAYER_PARAM_NAMES, &[])?;
        if dy.len() != xv.len() {
            candle_core::bail!("fused encoder layer: output gradient {:?}", gl.dims());
        }
        let mut g = self.fused.grads();
        let dx = self.backward(&mut g, a, xv, &p, dy, x.track_op())?;
        let dx = match dx {
            Some(v) => Some(Tensor::from_vec(v, x.shape(), &Device::Cpu)?),
            None => None,
        };
        Ok((dx, g.anchor_grad()?))
    }
}
