//! BERT's embedding layer — word + position + token-type embeddings, layer norm, dropout —
//! as a single differentiable operation (CPU, f32).
//!
//! Composed from candle ops, the backward of the word-embedding lookup alone makes four
//! vocabulary-sized buffers (a zero tensor for `index_add`, its copy, and candle's zero-fill
//! plus add when it stores the gradient): ~0.3 GB of memory traffic per MiniLM step. Here
//! the gradient is one zeroed buffer with the B·T rows added in, delivered through
//! [`super::grad`] like the fused encoder layer's ([`super::layer`]), whose header explains
//! why parameter gradients travel outside candle's graph (and [`FusedParams`] how each one
//! travels).

use super::error::{ModelError, Result};
use super::kernels;
use super::layer::{FusedParams, fused_params_supported, lock_params, masked, param_values};
use super::ops::{cpu_slice, layer_norm_backward, rows_per_task, storage_slice};
use crate::op_timing::{OpKind, timed};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The embedding parameters in checkpoint order (the indices below refer to it).
pub const EMBEDDING_PARAM_NAMES: [&str; 5] = [
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
];

const WORDS: usize = 0;
const POSITIONS: usize = 1;
const TYPES: usize = 2;
const LN_G: usize = 3;
const LN_B: usize = 4;

/// Shape of embedding parameter `i` ([`EMBEDDING_PARAM_NAMES`]) for the given table sizes
/// and hidden size `h`.
pub fn embedding_param_shape(
    i: usize,
    vocab: usize,
    positions: usize,
    types: usize,
    h: usize,
) -> Vec<usize> {
    match i {
        WORDS => vec![vocab, h],
        POSITIONS => vec![positions, h],
        TYPES => vec![types, h],
        _ => vec![h],
    }
}

/// Whether [`embed`] can run on these parameters ([`EMBEDDING_PARAM_NAMES`] order).
pub(crate) fn fused_embeddings_supported(params: &[&Tensor]) -> bool {
    params.len() == EMBEDDING_PARAM_NAMES.len() && fused_params_supported(params)
}

/// The token ids of one batch for [`embed`]: `B·T` word ids and token-type ids (all 0 when
/// `None`), row-major; the position of row `r` is `r % T`.
pub(crate) struct EmbeddingInputs {
    pub batch: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    pub token_types: Option<Vec<u32>>,
}

/// `dropout(LayerNorm(W[id] + P[pos] + Ty[type]))` `[B, T, H]`; `dropout` is the multiplier
/// (0 or `1/(1−p)`) of every output value, in training.
pub(crate) fn embed(
    inputs: EmbeddingInputs,
    params: &[&Tensor],
    eps: f32,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    if params.len() != EMBEDDING_PARAM_NAMES.len() {
        return Err(ModelError::Invalid(format!(
            "embeddings: {} parameters, expected {}",
            params.len(),
            EMBEDDING_PARAM_NAMES.len()
        )));
    }
    let (vocab, h) = params[WORDS].dims2()?;
    let (positions, types) = (params[POSITIONS].dim(0)?, params[TYPES].dim(0)?);
    for (i, p) in params.iter().enumerate() {
        let want = embedding_param_shape(i, vocab, positions, types, h);
        if p.dims() != want.as_slice() {
            return Err(ModelError::Invalid(format!(
                "embeddings: {} has shape {:?}, expected {want:?}",
                EMBEDDING_PARAM_NAMES[i],
                p.dims()
            )));
        }
    }
    let rows = inputs.batch * inputs.len;
    let out_of = |what: &str, ids: &[u32], n: usize| -> Result<()> {
        match ids.iter().position(|&i| i as usize >= n) {
            Some(r) => Err(ModelError::Invalid(format!(
                "embeddings: {what} {} at position {r} is outside 0..{n}",
                ids[r]
            ))),
            None => Ok(()),
        }
    };
    if inputs.ids.len() != rows
        || inputs.token_types.as_ref().is_some_and(|t| t.len() != rows)
        || dropout.as_ref().is_some_and(|m| m.len() != rows * h)
    {
        return Err(ModelError::Invalid(format!(
            "embeddings: ids, token types or dropout mask do not match [{}, {}]",
            inputs.batch, inputs.len
        )));
    }
    if inputs.len > positions {
        return Err(ModelError::Invalid(format!(
            "sequence length {} exceeds max_position_embeddings {positions}",
            inputs.len
        )));
    }
    out_of("token id", &inputs.ids, vocab)?;
    if let Some(tt) = &inputs.token_types {
        out_of("token type", tt, types)?;
    }
    // The word table is the first graph input; the anchor, the second, is never it.
    let fused = FusedParams::new(params, LN_G, &[WORDS])?;
    let keep_activations = fused.any_tracked();
    let anchor = fused.anchor.clone();
    let op = EmbeddingOp {
        fused,
        inputs,
        hidden: h,
        eps,
        dropout,
        keep_activations,
        saved: Mutex::new(None),
    };
    let (b, t) = (op.inputs.batch, op.inputs.len);
    // Both graph inputs are parameters, the anchor tracked whenever a parameter needs a
    // gradient, so candle records the op exactly then.
    let y = params[WORDS].apply_op2(&anchor, op)?;
    Ok(y.reshape((b, t, h))?)
}

struct EmbeddingOp {
    fused: FusedParams,
    inputs: EmbeddingInputs,
    hidden: usize,
    eps: f32,
    dropout: Option<Vec<f32>>,
    keep_activations: bool,
    /// The layer norm's input (the summed embeddings), for the backward.
    saved: Mutex<Option<Vec<f32>>>,
}

impl EmbeddingOp {
    fn token_type(&self, r: usize) -> usize {
        self.inputs
            .token_types
            .as_ref()
            .map_or(0, |t| t[r] as usize)
    }

    /// The gradient of embedding table `table`: output row `r`'s gradient (of `de`) added
    /// into the table row `row_of(r)` it was looked up from.
    fn scatter(&self, de: &[f32], table: usize, row_of: &dyn Fn(usize) -> usize) -> Vec<f32> {
        let h = self.hidden;
        let mut g = vec![0f32; self.fused.params[table].elem_count()];
        for (r, dr) in de.chunks(h).enumerate() {
            let i = row_of(r);
            kernels::add_assign(&mut g[i * h..(i + 1) * h], dr);
        }
        g
    }
}

impl CustomOp2 for EmbeddingOp {
    fn name(&self) -> &'static str {
        "primer-embeddings"
    }

    fn cpu_fwd(
        &self,
        sw: &CpuStorage,
        lw: &Layout,
        sa: &CpuStorage,
        la: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let words = cpu_slice(sw, lw, EMBEDDING_PARAM_NAMES[WORDS])?;
        // The word table from the first input (listed first, so it is the one read), the
        // parameters the anchor holds from there, the rest locked here.
        let mut given = vec![(WORDS, words)];
        given.extend(
            self.fused
                .given_by_anchor(cpu_slice(sa, la, "parameters")?)
                .into_iter()
                .filter(|&(i, _)| i != WORDS),
        );
        let taken: Vec<usize> = given.iter().map(|&(i, _)| i).collect();
        let guards = lock_params(&self.fused.params, &taken);
        let p = param_values(&guards, &EMBEDDING_PARAM_NAMES, &given)?;
        let (pos, types, gamma, beta) = (p[POSITIONS], p[TYPES], p[LN_G], p[LN_B]);
        let h = self.hidden;
        let rows = self.inputs.ids.len();
        let t = self.inputs.len;
        let _timed = timed(OpKind::Embeddings, &[rows, h], 0.0);
        let mut e = vec![0f32; rows * h];
        let mut y = vec![0f32; rows * h];
        let chunk = rows_per_task(rows, h);
        e.par_chunks_mut(chunk * h)
            .zip(y.par_chunks_mut(chunk * h))
            .enumerate()
            .for_each(|(c, (ec, yc))| {
                for (j, (er, yr)) in ec.chunks_mut(h).zip(yc.chunks_mut(h)).enumerate() {
                    let r = c * chunk + j;
                    let id = self.inputs.ids[r] as usize;
                    let tt = self.token_type(r);
                    er.copy_from_slice(&words[id * h..(id + 1) * h]);
                    kernels::add_assign(er, &pos[(r % t) * h..(r % t + 1) * h]);
                    kernels::add_assign(er, &types[tt * h..(tt + 1) * h]);
                    kernels::layer_norm_row(er, gamma, beta, self.eps, yr);
                    if let Some(m) = &self.dropout {
                        for (v, &w) in yr.iter_mut().zip(&m[r * h..(r + 1) * h]) {
                            *v *= w;
                        }
                    }
                }
            });
        if self.keep_activations {
            *self.saved.lock().expect("no panic while holding the lock") = Some(e);
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, h))))
    }

    fn bwd(
        &self,
        _words: &Tensor,
        _anchor: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().expect("no panic while holding the lock");
        let Some(e) = saved.as_ref() else {
            candle_core::bail!("fused embeddings: backward without kept activations")
        };
        let _timed = timed(
            OpKind::Embeddings,
            &[e.len() / self.hidden.max(1), self.hidden],
            0.0,
        );
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let dy = storage_slice(&gs, gl, "output gradient")?;
        let (ls, ll) = self.fused.params[LN_G].storage_and_layout();
        let g = storage_slice(&ls, ll, EMBEDDING_PARAM_NAMES[LN_G])?;
        let h = self.hidden;
        if dy.len() != e.len() {
            candle_core::bail!("fused embeddings: output gradient {:?}", gl.dims());
        }
        let dln = masked(dy, self.dropout.as_deref());
        let mut de = vec![0f32; e.len()];
        let mut dgdb = vec![0f32; 2 * h];
        layer_norm_backward(e, g, &dln, self.eps, &mut de, &mut dgdb);
        let t = self.inputs.len;
        let mut grads = self.fused.grads();
        grads.give_norm(LN_G, LN_B, dgdb)?;
        let tables: [(usize, &dyn Fn(usize) -> usize); 3] = [
            (WORDS, &|r| self.inputs.ids[r] as usize),
            (POSITIONS, &|r| r % t),
            (TYPES, &|r| self.token_type(r)),
        ];
        for (table, row_of) in tables {
            if grads.wants(table) {
                grads.give(table, self.scatter(&de, table, row_of))?;
            }
        }
        // The word table's gradient went to `grads` like every other's.
        Ok((None, grads.anchor_grad()?))
    }
}
