//! The BERT encoder f (θp): parameter names and shapes, the Hugging Face checkpoint loader and
//! saver, and the forward pass as a function over named weights.

use super::attention::attention;
use super::config::BertConfig;
use super::embeddings::{
    EMBEDDING_PARAM_NAMES, EmbeddingInputs, embed, embedding_param_shape,
    fused_embeddings_supported,
};
use super::error::{ModelError, Result};
use super::layer::{
    LAYER_PARAM_NAMES, LayerDropout, LayerSpec, TransposedLinears, encoder_layer,
    encoder_layer_rows, fused_layer_supported, fused_params_supported, layer_param_shape,
    sequence_groups,
};
use super::ops::{dropout, gelu, layer_norm, linear, scaled_linear};
use super::params::{ParamSet, TensorSet, Weights, read_safetensors, save_named, take_checked};
use crate::rng::SeededRng;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Name of the weights file of a Hugging Face model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the config file of a Hugging Face model folder.
pub const CONFIG_FILE: &str = "config.json";

/// The encoder inputs of one batch.
///
/// * `input_ids`: `[B, T]`, u32 or i64 token ids;
/// * `attention_mask`: `[B, T]`, any numeric dtype, 1 = real token, 0 = padding (padded keys
///   get −1e9 added to their attention scores);
/// * `token_type_ids`: `[B, T]` integer segment ids, or `None` for all zeros.
#[derive(Debug, Clone, Copy)]
pub struct EncoderInputs<'a> {
    pub input_ids: &'a Tensor,
    pub attention_mask: &'a Tensor,
    pub token_type_ids: Option<&'a Tensor>,
}

/// The HF names and shapes of every encoder parameter (no `bert.` prefix, no pooler), in
/// checkpoint order.
pub fn encoder_param_shapes(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let mut v: Vec<(String, Vec<usize>)> = EMBEDDING_PARAM_NAMES
        .iter()
        .enumerate()
        .map(|(j, n)| {
            let shape = embedding_param_shape(
                j,
                cfg.vocab_size,
                cfg.max_position_embeddings,
                cfg.type_vocab_size,
                h,
            );
            (n.to_string(), shape)
        })
        .collect();
    for l in 0..cfg.num_hidden_layers {
        for (j, n) in LAYER_PARAM_NAMES.iter().enumerate() {
            v.push((format!("encoder.layer.{l}.{n}"), layer_param_shape(j, h, i)));
        }
    }
    v
}

/// Maps a checkpoint tensor name to primer's encoder name: strips a `bert.` prefix, renames
/// legacy LayerNorm `gamma`/`beta` to `weight`/`bias`. None for tensors that are not part of
/// θp (position_ids buffers, pooler, MLM/NSP heads).
pub fn normalise_name(name: &str) -> Option<String> {
    let n = name.strip_prefix("bert.").unwrap_or(name);
    if !(n.starts_with("embeddings.") || n.starts_with("encoder.")) || n.ends_with("position_ids") {
        return None;
    }
    let n = if let Some(s) = n.strip_suffix(".gamma") {
        format!("{s}.weight")
    } else if let Some(s) = n.strip_suffix(".beta") {
        format!("{s}.bias")
    } else {
        n.to_string()
    };
    Some(n)
}

/// Loads θp from a Hugging Face BERT folder (`config.json` + `model.safetensors`) into new
/// Vars. Every tensor the config implies must be present with the right shape.
pub fn load_encoder(dir: &Path, device: &Device) -> Result<(BertConfig, ParamSet)> {
    let cfg = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
    let params = load_encoder_weights(&cfg, &dir.join(WEIGHTS_FILE), device)?;
    Ok((cfg, params))
}

/// Loads θp for `cfg` from one safetensors file (names normalised by [`normalise_name`]).
pub fn load_encoder_weights(cfg: &BertConfig, path: &Path, device: &Device) -> Result<ParamSet> {
    let raw = read_safetensors(path, device)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::with_capacity(raw.len());
    for (name, t) in raw {
        if let Some(n) = normalise_name(&name) {
            tensors.insert(n, t);
        }
    }
    let mut out = ParamSet::new();
    for (name, shape) in encoder_param_shapes(cfg) {
        let t = take_checked(&tensors, path, &name, &shape)?;
        out.insert(name, candle_core::Var::from_tensor(&t)?)?;
    }
    Ok(out)
}

/// Writes θp as a Hugging Face folder: `config.json` and `model.safetensors` with HF names,
/// each file atomically, into the existing or new directory `dir`.
pub fn save_encoder(dir: &Path, cfg: &BertConfig, weights: &dyn Weights) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let shapes = encoder_param_shapes(cfg);
    let mut items = Vec::with_capacity(shapes.len());
    for (name, _) in &shapes {
        items.push((name.as_str(), weights.weight(name)?));
    }
    save_named(&dir.join(WEIGHTS_FILE), items.into_iter())?;
    crate::fsutil::write_json_atomic(&dir.join(CONFIG_FILE), &cfg.to_json())?;
    Ok(())
}

/// The additive attention bias of every key `[B, T]`: 0 on tokens, −1e9 on padding.
fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?;
    Ok(((m - 1.0)? * 1e9)?)
}

/// BERT forward: last hidden states `[B, T, H]`.
///
/// `w` holds the encoder weights under their HF names (a [`ParamSet`] of trainable Vars, fast
/// weights, or a detached `TensorSet` for graph-free inference). Dropout (hidden and
/// attention probabilities, rates from `cfg`) is applied only when `dropout` is given, with
/// masks drawn from that stream; `None` is evaluation mode.
pub fn encode(
    cfg: &BertConfig,
    w: &dyn Weights,
    inputs: &EncoderInputs<'_>,
    dropout_rng: Option<&mut SeededRng>,
) -> Result<Tensor> {
    encode_impl(
        cfg,
        w,
        inputs,
        dropout_rng,
        None,
        &[],
        EncoderHooks::default(),
    )
}

/// A layer's output `[B, T, H]` → the next layer's input: a PE method acting after every layer
/// ([`crate::model::pe::PeMethod::after_layer`]).
pub type LayerHook<'a> = &'a dyn Fn(usize, Tensor) -> Result<Tensor>;

/// An owned [`LayerHook`] that a [`FrozenEncoder`] keeps for its passes.
pub type BoxedLayerHook<'a> = Box<dyn Fn(usize, Tensor) -> Result<Tensor> + Send + Sync + 'a>;

/// A term added to an encoder linear's output in a training forward: (layer, the linear's
/// weight name in [`LAYER_PARAM_NAMES`], the linear's input `[B, T, in]`, the forward's
/// dropout stream) → the term `[B, T, out]`, or None for a linear it leaves alone
/// ([`crate::model::pe::PeMethod::linear_branch`]).
pub type LinearBranch<'a> =
    &'a dyn Fn(usize, &str, &Tensor, &mut SeededRng) -> Result<Option<Tensor>>;

/// Where a PE method acting inside the encoder joins a forward.
#[derive(Clone, Copy, Default)]
pub struct EncoderHooks<'a> {
    /// Applied to every layer's output.
    pub after_layer: Option<LayerHook<'a>>,
    /// Consulted for every linear of every layer, in training forwards only (with a dropout
    /// stream); those run on the composite layer, the one that can add a term inside a layer.
    pub linear_branch: Option<LinearBranch<'a>>,
}

/// [`encode`] with a PE method's `hooks`.
pub fn encode_with_hooks(
    cfg: &BertConfig,
    w: &dyn Weights,
    inputs: &EncoderInputs<'_>,
    dropout_rng: Option<&mut SeededRng>,
    hooks: EncoderHooks<'_>,
) -> Result<Tensor> {
    encode_impl(cfg, w, inputs, dropout_rng, None, &[], hooks)
}

/// The last hidden states at some token rows only, in evaluation mode: `[rows.len(), H]`,
/// equal to [`encode`]'s output `[B, T, H]` viewed as `[B·T, H]` at the flat positions
/// `rows` (`b·T + t`; sequences in ascending order, as a batch's kept rows are listed).
///
/// Graph-free on the CPU, the last layer computes only those rows past its key and value
/// projections ([`super::layer`]): what the encoder cache of head and adapter tuning keeps is
/// each sentence's labelled tokens or first subwords, often half the tokens. Elsewhere (other
/// devices, a graph) the whole output is computed and the rows selected.
pub fn encode_rows(
    cfg: &BertConfig,
    w: &dyn Weights,
    inputs: &EncoderInputs<'_>,
    rows: &[u32],
) -> Result<Tensor> {
    encode_impl(
        cfg,
        w,
        inputs,
        None,
        Some(rows),
        &[],
        EncoderHooks::default(),
    )
}

/// The encoder's weights held fixed for one inference pass — scoring a split, building the
/// encoder cache — with every layer's linear weights also transposed once for the pass
/// (for the layers that run as fused CPU ops: [`super::ops::LinearWeight::InByOut`]; the
/// cache pass of 320 sentences took 3-15% less time). [`Tagger::frozen_encoder`] makes one.
///
/// It shares the weights' storage but owns the transposes, which would go stale if the
/// weights were trained afterwards: make one per pass, after training, and drop it with the
/// pass. The transposes cost one more copy of the layers' linear weights (MiniLM 42 MB,
/// mBERT 340 MB) while it lives.
///
/// [`Tagger::frozen_encoder`]: super::Tagger::frozen_encoder
pub struct FrozenEncoder<'a> {
    config: &'a BertConfig,
    weights: TensorSet,
    /// Per layer; `None` for a layer off the fused CPU path, which reads `weights` as they are.
    transposed: Vec<Option<Arc<TransposedLinears>>>,
    /// A frozen PE method acting after every layer ([`Self::with_layer_hook`]).
    after_layer: Option<BoxedLayerHook<'a>>,
}

impl<'a> FrozenEncoder<'a> {
    /// Fixes `weights` (graph-free, e.g. [`ParamSet::detached_tensors`]) for a pass.
    pub fn new(config: &'a BertConfig, weights: TensorSet) -> Result<Self> {
        let mut transposed = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let params = LAYER_PARAM_NAMES
                .iter()
                .map(|n| weights.weight(&format!("encoder.layer.{l}.{n}")))
                .collect::<Result<Vec<&Tensor>>>()?;
            if params.iter().any(|p| p.is_variable() || p.track_op()) {
                return Err(ModelError::Invalid(
                    "frozen encoder: the weights must be graph-free tensors".into(),
                ));
            }
            transposed.push(if fused_params_supported(&params) {
                Some(Arc::new(TransposedLinears::new(&params)?))
            } else {
                None
            });
        }
        Ok(Self {
            config,
            weights,
            transposed,
            after_layer: None,
        })
    }

    /// Applies `after_layer` to every layer's output in this encoder's passes (a frozen PE
    /// method that acts after every layer).
    pub fn with_layer_hook(mut self, after_layer: BoxedLayerHook<'a>) -> Self {
        self.after_layer = Some(after_layer);
        self
    }

    /// [`encode`] in evaluation mode: the last hidden states `[B, T, H]`.
    pub fn encode(&self, inputs: &EncoderInputs<'_>) -> Result<Tensor> {
        encode_impl(
            self.config,
            &self.weights,
            inputs,
            None,
            None,
            &self.transposed,
            self.hooks(),
        )
    }

    /// [`encode_rows`]: the last hidden states at the flat token rows `rows` only.
    pub fn encode_rows(&self, inputs: &EncoderInputs<'_>, rows: &[u32]) -> Result<Tensor> {
        let t = &self.transposed;
        encode_impl(
            self.config,
            &self.weights,
            inputs,
            None,
            Some(rows),
            t,
            self.hooks(),
        )
    }

    /// The frozen PE method's layer hook; evaluation passes never add linear branches.
    fn hooks(&self) -> EncoderHooks<'_> {
        EncoderHooks {
            after_layer: self.after_layer.as_deref().map(|h| h as LayerHook<'_>),
            linear_branch: None,
        }
    }
}

fn encode_impl(
    cfg: &BertConfig,
    w: &dyn Weights,
    inputs: &EncoderInputs<'_>,
    mut dropout_rng: Option<&mut SeededRng>,
    rows: Option<&[u32]>,
    // Per layer, possibly empty: see `FrozenEncoder::transposed`.
    transposed: &[Option<Arc<TransposedLinears>>],
    hooks: EncoderHooks<'_>,
) -> Result<Tensor> {
    let after_layer = hooks.after_layer;
    // Only training forwards add branches, so evaluation keeps the fused layer.
    let linear_branch = hooks.linear_branch.filter(|_| dropout_rng.is_some());
    let (b, t) = inputs.input_ids.dims2()?;
    if let Some(rows) = rows {
        // The same errors whichever path runs (the fused rows layer needs these too).
        sequence_groups(rows, b, t)?;
    }
    if inputs.attention_mask.dims() != [b, t] {
        return Err(ModelError::Invalid(format!(
            "attention_mask has shape {:?}, input_ids {:?}",
            inputs.attention_mask.dims(),
            [b, t]
        )));
    }
    if t > cfg.max_position_embeddings {
        return Err(ModelError::Invalid(format!(
            "sequence length {t} exceeds max_position_embeddings {}",
            cfg.max_position_embeddings
        )));
    }
    let h = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    let eps = cfg.layer_norm_eps;
    let p_hidden = cfg.hidden_dropout_prob;
    let p_attn = cfg.attention_probs_dropout_prob;

    let emb_params = EMBEDDING_PARAM_NAMES
        .iter()
        .map(|n| w.weight(n))
        .collect::<Result<Vec<&Tensor>>>()?;
    let mut x = if fused_embeddings_supported(&emb_params) {
        let ids_of = |x: &Tensor| -> Result<Vec<u32>> {
            Ok(x.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?)
        };
        let fused_inputs = EmbeddingInputs {
            batch: b,
            len: t,
            ids: ids_of(inputs.input_ids)?,
            token_types: inputs.token_type_ids.map(ids_of).transpose()?,
        };
        let drop = match dropout_rng.as_deref_mut() {
            Some(r) if p_hidden > 0.0 => Some(r.dropout_mask_vec(b * t * h, p_hidden as f32)),
            _ => None,
        };
        embed(fused_inputs, &emb_params, eps as f32, drop)?
    } else {
        embeddings_composite(
            inputs,
            &emb_params,
            eps,
            p_hidden,
            dropout_rng.as_deref_mut(),
        )?
    };
    let bias = attention_bias(inputs.attention_mask)?.to_dtype(x.dtype())?;
    let spec = LayerSpec {
        heads: nh,
        eps: eps as f32,
    };
    // The key bias as the fused layers read it, made on first use and shared by all layers.
    let mut fused_bias: Option<Arc<Vec<f32>>> = None;
    for l in 0..cfg.num_hidden_layers {
        let params = LAYER_PARAM_NAMES
            .iter()
            .map(|n| w.weight(&format!("encoder.layer.{l}.{n}")))
            .collect::<Result<Vec<&Tensor>>>()?;
        if linear_branch.is_none() && fused_layer_supported(&x, &params) {
            let key_bias = match &fused_bias {
                Some(kb) => kb.clone(),
                None => fused_bias
                    .insert(Arc::new(bias.flatten_all()?.to_vec1::<f32>()?))
                    .clone(),
            };
            let last = l + 1 == cfg.num_hidden_layers;
            let graph_free =
                !x.track_op() && params.iter().all(|p| !p.is_variable() && !p.track_op());
            // Transposes are read only where nothing is tracked: no backward can follow.
            let layer_t = if graph_free {
                transposed.get(l).cloned().flatten()
            } else {
                None
            };
            // The rows shortcut computes only some tokens of the last layer; a layer hook
            // sees whole outputs, so with one the rows are selected afterwards.
            if let Some(rows) = rows
                && last
                && graph_free
                && dropout_rng.is_none()
                && after_layer.is_none()
            {
                return encoder_layer_rows(&x, &params, key_bias, spec, rows, layer_t);
            }
            let drop = match dropout_rng.as_deref_mut() {
                Some(r) => draw_layer_dropout(r, [b, t, h, nh], p_attn, p_hidden),
                None => LayerDropout::default(),
            };
            x = encoder_layer(&x, &params, key_bias, spec, drop, layer_t)?;
        } else {
            let branch = linear_branch.map(|f| (l, f));
            x = encoder_layer_composite(
                &x,
                &params,
                &bias,
                spec,
                (p_attn, p_hidden),
                dropout_rng.as_deref_mut(),
                branch,
            )?;
        }
        if let Some(hook) = after_layer {
            x = hook(l, x)?;
        }
    }
    match rows {
        None => Ok(x),
        Some(rows) => {
            let index = Tensor::new(rows, x.device())?;
            Ok(x.reshape((b * t, h))?.index_select(&index, 0)?)
        }
    }
}

/// The embedding layer from differentiable candle ops (any device and dtype); `params` in
/// [`EMBEDDING_PARAM_NAMES`] order. The fused CPU op ([`embed`]) computes the same function.
fn embeddings_composite(
    inputs: &EncoderInputs<'_>,
    params: &[&Tensor],
    eps: f64,
    p_hidden: f64,
    dropout_rng: Option<&mut SeededRng>,
) -> Result<Tensor> {
    let (b, t) = inputs.input_ids.dims2()?;
    let [words, pos, types, gamma, beta] = params else {
        return Err(ModelError::Invalid(format!(
            "embeddings: {} parameters, expected 5",
            params.len()
        )));
    };
    let h = words.dim(1)?;
    let ids = inputs.input_ids.flatten_all()?;
    let words = words.index_select(&ids, 0)?.reshape((b, t, h))?;
    let pos = pos.narrow(0, 0, t)?;
    let emb = match inputs.token_type_ids {
        Some(tt) => {
            let tt = tt.flatten_all()?;
            words.add(&types.index_select(&tt, 0)?.reshape((b, t, h))?)?
        }
        None => words.broadcast_add(&types.narrow(0, 0, 1)?)?,
    };
    let x = layer_norm(&emb.broadcast_add(&pos)?, gamma, beta, eps)?;
    Ok(match dropout_rng {
        Some(r) => dropout(&x, p_hidden, r)?,
        None => x,
    })
}

/// The dropout masks of one training layer, drawn in [`encoder_layer_composite`]'s order.
fn draw_layer_dropout(
    r: &mut SeededRng,
    [b, t, h, nh]: [usize; 4],
    p_attn: f64,
    p_hidden: f64,
) -> LayerDropout {
    let mut draw = |n: usize, p: f64| (p > 0.0).then(|| r.dropout_mask_vec(n, p as f32));
    let attention = draw(b * nh * t * t, p_attn);
    let attention_output = draw(b * t * h, p_hidden);
    let output = draw(b * t * h, p_hidden);
    LayerDropout {
        attention,
        attention_output,
        output,
    }
}

/// One encoder layer from differentiable candle ops (any device and dtype, and weights that
/// are computed tensors); `params` in [`LAYER_PARAM_NAMES`] order, `bias` the `[B, T]` key
/// bias, dropout `(attention, hidden)` rates applied when `dropout_rng` is given. The fused
/// CPU layer ([`encoder_layer`]) computes the same function. `branch` (this layer's index and
/// a PE method's [`LinearBranch`], only with `dropout_rng`) adds its terms to the linears'
/// outputs, each drawing from the stream right after its linear.
fn encoder_layer_composite(
    x: &Tensor,
    params: &[&Tensor],
    bias: &Tensor,
    spec: LayerSpec,
    (p_attn, p_hidden): (f64, f64),
    mut dropout_rng: Option<&mut SeededRng>,
    branch: Option<(usize, LinearBranch<'_>)>,
) -> Result<Tensor> {
    use super::layer::*;
    let (b, t, _) = x.dims3()?;
    let nh = spec.heads;
    let eps = spec.eps as f64;
    let scale = 1.0 / ((x.dim(2)? / nh) as f64).sqrt();
    // Scaling q (B·T·H values) instead of the scores (B·nh·T·T) is cheaper and the same.
    let q = scaled_linear(x, params[Q_W], Some(params[Q_B]), scale)?;
    let q = add_branch(q, (Q_W, scale), x, branch, dropout_rng.as_deref_mut())?;
    let k = linear(x, params[K_W], Some(params[K_B]))?;
    let k = add_branch(k, (K_W, 1.0), x, branch, dropout_rng.as_deref_mut())?;
    let v = linear(x, params[V_W], Some(params[V_B]))?;
    let v = add_branch(v, (V_W, 1.0), x, branch, dropout_rng.as_deref_mut())?;
    // The probabilities' dropout mask, drawn where `dropout` would draw it.
    let drop_mask = match dropout_rng.as_deref_mut() {
        Some(r) if p_attn > 0.0 => Some(
            r.dropout_mask(&[b, nh, t, t], p_attn as f32, x.device())?
                .to_dtype(x.dtype())?,
        ),
        _ => None,
    };
    // One fused op on [B, T, H] (heads read in place) on the CPU.
    let ctx = attention(&q, &k, &v, bias, nh, drop_mask.as_ref())?;
    let a = linear(&ctx, params[ATT_OUT_W], Some(params[ATT_OUT_B]))?;
    let mut a = add_branch(
        a,
        (ATT_OUT_W, 1.0),
        &ctx,
        branch,
        dropout_rng.as_deref_mut(),
    )?;
    if let Some(r) = dropout_rng.as_deref_mut() {
        a = dropout(&a, p_hidden, r)?;
    }
    let x = layer_norm(&(a + x)?, params[LN1_G], params[LN1_B], eps)?;
    let u = linear(&x, params[INTER_W], Some(params[INTER_B]))?;
    let inter = gelu(&add_branch(
        u,
        (INTER_W, 1.0),
        &x,
        branch,
        dropout_rng.as_deref_mut(),
    )?)?;
    let o = linear(&inter, params[OUT_W], Some(params[OUT_B]))?;
    let mut o = add_branch(o, (OUT_W, 1.0), &inter, branch, dropout_rng.as_deref_mut())?;
    if let Some(r) = dropout_rng {
        o = dropout(&o, p_hidden, r)?;
    }
    layer_norm(&(o + &x)?, params[LN2_G], params[LN2_B], eps)
}

/// `y`, the output of a layer's linear `(weight index, output scale s)` on `input`, plus
/// `branch`'s term for it scaled by `s` too (the term drawing its masks from `rng`). `y` itself
/// without a branch or a stream.
fn add_branch(
    y: Tensor,
    (weight, s): (usize, f64),
    input: &Tensor,
    branch: Option<(usize, LinearBranch<'_>)>,
    rng: Option<&mut SeededRng>,
) -> Result<Tensor> {
    let (Some((layer, f)), Some(rng)) = (branch, rng) else {
        return Ok(y);
    };
    Ok(match f(layer, LAYER_PARAM_NAMES[weight], input, rng)? {
        Some(term) if s == 1.0 => (y + term)?,
        Some(term) => (y + (term * s)?)?,
        None => y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::random_encoder;

    fn tiny() -> BertConfig {
        let mut c = BertConfig::new(30, 8, 2, 2, 16);
        c.max_position_embeddings = 16;
        c
    }

    fn write_checkpoint(dir: &Path, cfg: &BertConfig, rename: impl Fn(&str) -> Option<String>) {
        let w = random_encoder(cfg, 1, &Device::Cpu).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let mut items: Vec<(String, Tensor)> = w
            .iter()
            .filter_map(|(n, t)| rename(n).map(|n| (n, t.clone())))
            .collect();
        // Extras a real HF checkpoint carries, which the loader must ignore.
        items.push((
            "bert.embeddings.position_ids".into(),
            Tensor::arange(0i64, 16, &Device::Cpu).unwrap(),
        ));
        items.push((
            "bert.pooler.dense.bias".into(),
            Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
        ));
        items.push((
            "cls.predictions.bias".into(),
            Tensor::zeros(30, DType::F32, &Device::Cpu).unwrap(),
        ));
        save_named(
            &dir.join(WEIGHTS_FILE),
            items.iter().map(|(n, t)| (n.as_str(), t)),
        )
        .unwrap();
        crate::fsutil::write_json_atomic(&dir.join(CONFIG_FILE), &cfg.to_json()).unwrap();
    }

    #[test]
    fn loader_accepts_bert_prefix_and_gamma_beta() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny();
        write_checkpoint(dir.path(), &cfg, |n| {
            let n = n
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            Some(format!("bert.{n}"))
        });
        let (c, p) = load_encoder(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(c, cfg);
        assert_eq!(p.len(), encoder_param_shapes(&cfg).len());
        let expected = random_encoder(&cfg, 1, &Device::Cpu).unwrap();
        let a = p
            .get("encoder.layer.1.output.LayerNorm.weight")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            a,
            expected
                .get("encoder.layer.1.output.LayerNorm.weight")
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        // Saving writes HF names that load back identically.
        let out = dir.path().join("saved");
        save_encoder(&out, &c, &p).unwrap();
        let (_, q) = load_encoder(&out, &Device::Cpu).unwrap();
        let wq = q
            .get("embeddings.word_embeddings.weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(
            wq,
            p.get("embeddings.word_embeddings.weight")
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn loader_names_missing_and_misshaped_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny();
        write_checkpoint(dir.path(), &cfg, |n| {
            (n != "encoder.layer.1.intermediate.dense.bias").then(|| n.to_string())
        });
        let err = load_encoder(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("encoder.layer.1.intermediate.dense.bias")
                && err.contains("model.safetensors"),
            "{err}"
        );

        // A config that disagrees with the weights: every shape is checked.
        let mut wrong = cfg.clone();
        wrong.intermediate_size = 12;
        write_checkpoint(dir.path(), &cfg, |n| Some(n.to_string()));
        crate::fsutil::write_json_atomic(&dir.path().join(CONFIG_FILE), &wrong.to_json()).unwrap();
        let err = load_encoder(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("intermediate.dense.weight")
                && err.contains("[16, 8]")
                && err.contains("[12, 8]"),
            "{err}"
        );
    }

    /// Variables holding the named weights plus seeded noise: non-trivial layer-norm
    /// parameters and biases, so that every gradient path shows.
    fn perturbed_vars(
        weights: &crate::model::TensorSet,
        names: &[impl AsRef<str>],
    ) -> Vec<candle_core::Var> {
        let mut noise = SeededRng::new(5);
        names
            .iter()
            .map(|n| {
                let w = weights.get(n.as_ref()).unwrap();
                let w = (w + noise.normal_tensor(w.dims(), 0.3, w.device()).unwrap()).unwrap();
                candle_core::Var::from_tensor(&w).unwrap()
            })
            .collect()
    }

    /// The fused CPU layer computes the composite layer's function: same output, same
    /// gradient for the input and for every one of the sixteen parameters, with a padded
    /// sequence, with and without dropout (same masks from the same seed), and for a
    /// constant input (the parameters still get their gradients).
    #[test]
    fn fused_layer_matches_composite_in_value_and_every_gradient() {
        use crate::model::backward;
        use crate::model::ops::max_abs;
        let dev = Device::Cpu;
        let (b, t, h, nh, inter) = (2usize, 5usize, 12usize, 3usize, 20usize);
        let cfg = BertConfig::new(30, h, 1, nh, inter);
        let weights = random_encoder(&cfg, 4, &dev).unwrap();
        let names = LAYER_PARAM_NAMES.map(|n| format!("encoder.layer.0.{n}"));
        let vars = perturbed_vars(&weights, &names);
        let params: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let mut rng = SeededRng::new(6);
        let x0 = rng.normal_tensor(&[b, t, h], 1.0, &dev).unwrap();
        let r = rng.normal_tensor(&[b, t, h], 1.0, &dev).unwrap();
        let bias = Tensor::new(&[[0f32, 0., 0., 0., 0.], [0., 0., 0., -1e9, -1e9]], &dev).unwrap();
        let key_bias = Arc::new(bias.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let spec = LayerSpec {
            heads: nh,
            eps: 1e-12,
        };
        let x_var = candle_core::Var::from_tensor(&x0).unwrap();
        for (p, x) in [
            (0.0, x_var.as_tensor()),
            (0.3, x_var.as_tensor()),
            (0.3, &x0),
        ] {
            assert!(fused_layer_supported(x, &params));
            let drop = |seed| {
                let mut r = SeededRng::new(seed);
                draw_layer_dropout(&mut r, [b, t, h, nh], p, p)
            };
            let y1 = encoder_layer(x, &params, key_bias.clone(), spec, drop(8), None).unwrap();
            let mut r2 = SeededRng::new(8);
            let y2 = encoder_layer_composite(x, &params, &bias, spec, (p, p), Some(&mut r2), None)
                .unwrap();
            assert!(max_abs(&y1, &y2) < 1e-5, "p={p}: {}", max_abs(&y1, &y2));
            let g1 = backward(&(&y1 * &r).unwrap().sum_all().unwrap()).unwrap();
            let g2 = backward(&(&y2 * &r).unwrap().sum_all().unwrap()).unwrap();
            let mut checked: Vec<&Tensor> = params.clone();
            if x.is_variable() {
                checked.push(x);
            } else {
                assert!(g1.get(x).is_none());
            }
            for (i, w) in checked.into_iter().enumerate() {
                let name = LAYER_PARAM_NAMES.get(i).copied().unwrap_or("x");
                let (a, c) = (g1.get(w).unwrap(), g2.get(w).unwrap());
                let scale = c
                    .abs()
                    .unwrap()
                    .max_keepdim(0)
                    .unwrap()
                    .flatten_all()
                    .unwrap();
                let scale: f32 = scale.max(0).unwrap().to_scalar().unwrap();
                // The key bias shifts every score of a query row equally: softmax cancels
                // it, so its gradient is zero (up to rounding) on both paths.
                if i != crate::model::layer::K_B {
                    assert!(scale > 1e-4, "p={p}: {name} has no gradient");
                }
                assert!(
                    max_abs(a, c) < 1e-4 * scale.max(1.0),
                    "p={p}: {name} gradient differs by {} (scale {scale})",
                    max_abs(a, c)
                );
            }
        }
    }

    /// The last layer at some rows only equals the whole layer at those rows — directly and
    /// through `encode_rows`, with the CPU kernels and on the device-generic path — for rows
    /// in several sequences (one without any, one with all, padding included, positions out
    /// of order within a sequence); rows out of range or with descending sequences are errors.
    #[test]
    fn rows_of_the_last_layer_equal_the_whole_output_at_those_rows() {
        use crate::model::ops::max_abs;
        let dev = Device::Cpu;
        let (b, t, h, nh, inter) = (3usize, 7usize, 12usize, 3usize, 20usize);
        let cfg = BertConfig::new(30, h, 2, nh, inter);
        let weights = random_encoder(&cfg, 5, &dev).unwrap();
        let mut rng = SeededRng::new(9);
        let ids: Vec<u32> = (0..b * t).map(|_| rng.below(30) as u32).collect();
        let ids = Tensor::from_vec(ids, (b, t), &dev).unwrap();
        let lens = [7usize, 4, 5];
        let mask: Vec<u32> = (0..b * t).map(|i| (i % t < lens[i / t]) as u32).collect();
        let mask = Tensor::from_vec(mask, (b, t), &dev).unwrap();
        let inputs = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: None,
        };
        // Sequence 0: three rows out of order; sequence 1: none; sequence 2: all seven.
        let rows: Vec<u32> = [5u32, 1, 3].into_iter().chain(14..21).collect();
        let whole = encode(&cfg, &weights, &inputs, None).unwrap();
        let want = whole
            .reshape((b * t, h))
            .unwrap()
            .index_select(&Tensor::new(rows.as_slice(), &dev).unwrap(), 0)
            .unwrap();

        // The layer itself, on the output of the first layer.
        let names = LAYER_PARAM_NAMES.map(|n| format!("encoder.layer.1.{n}"));
        let params: Vec<&Tensor> = names.iter().map(|n| weights.weight(n).unwrap()).collect();
        let x = rng.normal_tensor(&[b, t, h], 1.0, &dev).unwrap();
        let bias = attention_bias(&mask).unwrap();
        let key_bias = Arc::new(bias.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let spec = LayerSpec {
            heads: nh,
            eps: cfg.layer_norm_eps as f32,
        };
        let layer_whole = encoder_layer(
            &x,
            &params,
            key_bias.clone(),
            spec,
            LayerDropout::default(),
            None,
        )
        .unwrap()
        .reshape((b * t, h))
        .unwrap()
        .index_select(&Tensor::new(rows.as_slice(), &dev).unwrap(), 0)
        .unwrap();
        let layer_rows =
            encoder_layer_rows(&x, &params, key_bias.clone(), spec, &rows, None).unwrap();
        assert!(max_abs(&layer_rows, &layer_whole) < 1e-5);

        for composite in [false, true] {
            let _composite = composite.then(crate::model::dispatch::composite_only);
            let got = encode_rows(&cfg, &weights, &inputs, &rows).unwrap();
            assert_eq!(got.dims(), [rows.len(), h]);
            assert!(
                max_abs(&got, &want) < 1e-5,
                "composite={composite}: {}",
                max_abs(&got, &want)
            );
            assert!(encode_rows(&cfg, &weights, &inputs, &[3, 21]).is_err());
            assert!(encode_rows(&cfg, &weights, &inputs, &[15, 2]).is_err());

            // A frozen encoder (transposed linear weights on the CPU kernels only) computes
            // the same.
            let frozen = FrozenEncoder::new(&cfg, weights.clone()).unwrap();
            assert!(frozen.transposed.iter().all(|t| t.is_some() != composite));
            let got = frozen.encode_rows(&inputs, &rows).unwrap();
            assert!(max_abs(&got, &want) < 1e-5, "{}", max_abs(&got, &want));
            let got_whole = frozen.encode(&inputs).unwrap();
            assert!(max_abs(&got_whole, &whole) < 1e-5);
            assert!(frozen.encode_rows(&inputs, &[15, 2]).is_err());
        }
        // Transposes serve inference only: never a tracked layer, never trainable weights.
        let x_var = candle_core::Var::from_tensor(&x).unwrap();
        let frozen_t = Arc::new(TransposedLinears::new(&params).unwrap());
        let tracked = encoder_layer(
            x_var.as_tensor(),
            &params,
            key_bias.clone(),
            spec,
            LayerDropout::default(),
            Some(frozen_t),
        );
        assert!(tracked.is_err());
        let vars = weights.to_params().unwrap();
        let var_set = TensorSet::from_pairs(
            vars.iter()
                .map(|(n, v)| (n.to_string(), v.as_tensor().clone())),
        )
        .unwrap();
        assert!(FrozenEncoder::new(&cfg, var_set).is_err());
        let none = encode_rows(&cfg, &weights, &inputs, &[]).unwrap();
        assert_eq!(none.dims(), [0, h]);
    }

    /// The fused embedding op equals the composite embeddings in value and in all five
    /// parameters' gradients, with and without token types and dropout.
    #[test]
    fn fused_embeddings_match_composite() {
        use crate::model::backward;
        use crate::model::ops::max_abs;
        let dev = Device::Cpu;
        let mut cfg = tiny();
        cfg.type_vocab_size = 2;
        let weights = random_encoder(&cfg, 4, &dev).unwrap();
        let vars = perturbed_vars(&weights, &EMBEDDING_PARAM_NAMES);
        let params: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        assert!(fused_embeddings_supported(&params));
        let ids = Tensor::new(&[[1u32, 5, 7, 5, 0], [1, 9, 2, 0, 0]], &dev).unwrap();
        let types = Tensor::new(&[[0u32, 0, 1, 1, 1], [0, 0, 0, 1, 1]], &dev).unwrap();
        let mask = Tensor::ones((2, 5), DType::U32, &dev).unwrap();
        let r = SeededRng::new(6)
            .normal_tensor(&[2, 5, 8], 1.0, &dev)
            .unwrap();
        for (p, tt) in [(0.0, None), (0.3, Some(&types)), (0.0, Some(&types))] {
            let inputs = EncoderInputs {
                input_ids: &ids,
                attention_mask: &mask,
                token_type_ids: tt,
            };
            let fused_inputs = EmbeddingInputs {
                batch: 2,
                len: 5,
                ids: ids.flatten_all().unwrap().to_vec1().unwrap(),
                token_types: tt.map(|t| t.flatten_all().unwrap().to_vec1().unwrap()),
            };
            let drop = (p > 0.0).then(|| SeededRng::new(8).dropout_mask_vec(80, p as f32));
            let y1 = embed(fused_inputs, &params, 1e-12, drop).unwrap();
            let mut r2 = SeededRng::new(8);
            let y2 = embeddings_composite(&inputs, &params, 1e-12, p, Some(&mut r2)).unwrap();
            assert!(max_abs(&y1, &y2) < 1e-5, "p={p}: {}", max_abs(&y1, &y2));
            let g1 = backward(&(&y1 * &r).unwrap().sum_all().unwrap()).unwrap();
            let g2 = backward(&(&y2 * &r).unwrap().sum_all().unwrap()).unwrap();
            for (i, w) in params.iter().enumerate() {
                let (a, c) = (g1.get(w).unwrap(), g2.get(w).unwrap());
                let d = max_abs(a, c);
                assert!(
                    d < 1e-4,
                    "p={p}: {} differs by {d}",
                    EMBEDDING_PARAM_NAMES[i]
                );
            }
        }
        let bad = EmbeddingInputs {
            batch: 1,
            len: 1,
            ids: vec![30],
            token_types: None,
        };
        let err = embed(bad, &params, 1e-12, None).unwrap_err().to_string();
        assert!(
            err.contains("token id 30") && err.contains("0..30"),
            "{err}"
        );
    }

    /// The largest difference between the gradients two passes gave each of `vars`, against
    /// the largest gradient entry; panics when a variable got no gradient on either pass.
    fn gradient_gap(
        g1: &candle_core::backprop::GradStore,
        g2: &candle_core::backprop::GradStore,
        vars: &[(&str, &candle_core::Var)],
        what: &str,
    ) {
        use crate::model::ops::max_abs;
        for (name, v) in vars {
            let (Some(a), Some(c)) = (g1.get(v.as_tensor()), g2.get(v.as_tensor())) else {
                panic!("{what}: {name} got no gradient on one of the paths");
            };
            let scale: f32 = c
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(scale > 1e-6, "{what}: {name} has a zero gradient");
            let d = max_abs(a, c);
            assert!(
                d < 1e-4 * scale.max(1.0),
                "{what}: {name} gradient differs by {d} (scale {scale})"
            );
        }
    }

    /// Parameters computed from variables (LoRA's merged `W + s·B·A`, on a constant and on a
    /// variable `W`, and a computed bias) and a lone variable bias on otherwise constant
    /// weights with a constant input (BitFit on a frozen encoder) take the fused layer, which
    /// gives the same output and the same gradient to every variable behind them as the
    /// composite layer.
    #[test]
    fn fused_layer_takes_computed_and_lone_variable_parameters() {
        use crate::model::backward;
        use crate::model::layer::{LN2_B, Q_B, Q_W, V_W};
        use crate::model::ops::max_abs;
        let dev = Device::Cpu;
        let (b, t, h, nh, inter, r) = (2usize, 5usize, 12usize, 3usize, 20usize, 2usize);
        let cfg = BertConfig::new(30, h, 1, nh, inter);
        let weights = random_encoder(&cfg, 4, &dev).unwrap();
        let names = LAYER_PARAM_NAMES.map(|n| format!("encoder.layer.0.{n}"));
        let base = perturbed_vars(&weights, &names);
        let consts: Vec<Tensor> = base.iter().map(|v| v.as_tensor().detach()).collect();
        let mut rng = SeededRng::new(11);
        let mut var = |shape: &[usize]| {
            candle_core::Var::from_tensor(&rng.normal_tensor(shape, 0.3, &dev).unwrap()).unwrap()
        };
        let (a_q, b_q, a_v, b_v) = (var(&[r, h]), var(&[h, r]), var(&[r, h]), var(&[h, r]));
        let ln2_b = var(&[h]);
        let s = 1.5;
        let merge = |w: &Tensor, a: &candle_core::Var, bm: &candle_core::Var| {
            (w + (bm.matmul(a).unwrap() * s).unwrap()).unwrap()
        };
        let q_merged = merge(&consts[Q_W], &a_q, &b_q);
        let v_merged = merge(base[V_W].as_tensor(), &a_v, &b_v);
        let ln2_b_computed = (ln2_b.as_tensor() * 2.0).unwrap();
        let x = SeededRng::new(6)
            .normal_tensor(&[b, t, h], 1.0, &dev)
            .unwrap();
        let rw = SeededRng::new(7)
            .normal_tensor(&[b, t, h], 1.0, &dev)
            .unwrap();
        let bias = Tensor::new(&[[0f32, 0., 0., 0., 0.], [0., 0., 0., -1e9, -1e9]], &dev).unwrap();
        let key_bias = Arc::new(bias.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let spec = LayerSpec {
            heads: nh,
            eps: 1e-12,
        };
        let lora: Vec<(&str, &candle_core::Var)> = vec![
            ("query lora_A", &a_q),
            ("query lora_B", &b_q),
            ("value lora_A", &a_v),
            ("value lora_B", &b_v),
            ("value weight", &base[V_W]),
            ("query bias", &base[Q_B]),
            ("output LayerNorm bias", &ln2_b),
        ];
        let query_value = lora[..6].to_vec();
        let query = vec![lora[0], lora[1], lora[5]];
        let bitfit: Vec<(&str, &candle_core::Var)> = vec![("query bias", &base[Q_B])];
        // Computed parameters of different shapes (packed flat), of one shape (packed as
        // they are), one alone (the op's graph input itself), and none.
        for (what, checked) in [
            ("lora+bias", lora),
            ("lora", query_value),
            ("lora query", query),
            ("bitfit", bitfit),
        ] {
            let mut params: Vec<&Tensor> = consts.iter().collect();
            params[Q_B] = base[Q_B].as_tensor();
            if what.starts_with("lora") {
                params[Q_W] = &q_merged;
            }
            if what == "lora" || what == "lora+bias" {
                params[V_W] = &v_merged;
            }
            if what == "lora+bias" {
                params[LN2_B] = &ln2_b_computed;
            }
            assert!(fused_layer_supported(&x, &params), "{what}");
            let y1 = encoder_layer(
                &x,
                &params,
                key_bias.clone(),
                spec,
                LayerDropout::default(),
                None,
            )
            .unwrap();
            let y2 =
                encoder_layer_composite(&x, &params, &bias, spec, (0.0, 0.0), None, None).unwrap();
            assert!(max_abs(&y1, &y2) < 1e-5, "{what}: {}", max_abs(&y1, &y2));
            let g1 = backward(&(&y1 * &rw).unwrap().sum_all().unwrap()).unwrap();
            let g2 = backward(&(&y2 * &rw).unwrap().sum_all().unwrap()).unwrap();
            gradient_gap(&g1, &g2, &checked, what);
        }
    }

    /// The embeddings with a lone variable LayerNorm bias on constant tables (BitFit on a
    /// frozen encoder) and with a computed LayerNorm weight take the fused op, which gives
    /// the variables behind them the composite's gradients.
    #[test]
    fn fused_embeddings_take_computed_and_lone_variable_parameters() {
        use crate::model::backward;
        use crate::model::ops::max_abs;
        let dev = Device::Cpu;
        let cfg = tiny();
        let weights = random_encoder(&cfg, 4, &dev).unwrap();
        let base = perturbed_vars(&weights, &EMBEDDING_PARAM_NAMES);
        let consts: Vec<Tensor> = base.iter().map(|v| v.as_tensor().detach()).collect();
        let gamma_scaled = (base[3].as_tensor() * 0.5).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 7, 5, 0], [1, 9, 2, 0, 0]], &dev).unwrap();
        let mask = Tensor::ones((2, 5), DType::U32, &dev).unwrap();
        let inputs = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: None,
        };
        let rw = SeededRng::new(6)
            .normal_tensor(&[2, 5, 8], 1.0, &dev)
            .unwrap();
        for computed_gamma in [false, true] {
            let mut params: Vec<&Tensor> = consts.iter().collect();
            params[4] = base[4].as_tensor();
            let mut checked = vec![("LayerNorm bias", &base[4])];
            if computed_gamma {
                params[3] = &gamma_scaled;
                checked.push(("LayerNorm weight", &base[3]));
            }
            assert!(fused_embeddings_supported(&params));
            let fused_inputs = EmbeddingInputs {
                batch: 2,
                len: 5,
                ids: ids.flatten_all().unwrap().to_vec1().unwrap(),
                token_types: None,
            };
            let y1 = embed(fused_inputs, &params, 1e-12, None).unwrap();
            let y2 = embeddings_composite(&inputs, &params, 1e-12, 0.0, None).unwrap();
            assert!(max_abs(&y1, &y2) < 1e-5);
            let g1 = backward(&(&y1 * &rw).unwrap().sum_all().unwrap()).unwrap();
            let g2 = backward(&(&y2 * &rw).unwrap().sum_all().unwrap()).unwrap();
            gradient_gap(&g1, &g2, &checked, "embeddings");
        }
    }

    #[test]
    fn dropout_is_off_in_eval_and_seeded_in_train() {
        let cfg = tiny().with_dropout(0.3);
        let w = random_encoder(&cfg, 2, &Device::Cpu).unwrap();
        let d = Device::Cpu;
        let ids = Tensor::new(&[[1u32, 5, 7, 2, 0], [1, 9, 2, 0, 0]], &d).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 0], [1, 1, 1, 0, 0]], &d).unwrap();
        let inp = EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: None,
        };
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e1 = flat(encode(&cfg, &w, &inp, None).unwrap());
        let e2 = flat(encode(&cfg, &w, &inp, None).unwrap());
        assert_eq!(e1, e2);
        let t1 = flat(encode(&cfg, &w, &inp, Some(&mut SeededRng::new(9))).unwrap());
        let t2 = flat(encode(&cfg, &w, &inp, Some(&mut SeededRng::new(9))).unwrap());
        let t3 = flat(encode(&cfg, &w, &inp, Some(&mut SeededRng::new(10))).unwrap());
        assert_eq!(t1, t2);
        assert_ne!(t1, e1);
        assert_ne!(t1, t3);
        // With p = 0 the training forward equals evaluation.
        let cfg0 = cfg.with_dropout(0.0);
        let z = flat(encode(&cfg0, &w, &inp, Some(&mut SeededRng::new(9))).unwrap());
        assert_eq!(z, e1);
    }
}
