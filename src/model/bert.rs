//! The BERT encoder f (θp): parameter names and shapes, the Hugging Face checkpoint loader and
//! saver, and the forward pass as a function over named weights.

use super::attention::attention;
use super::config::BertConfig;
use super::error::{ModelError, Result};
use super::ops::{dropout, gelu, layer_norm, linear, scaled_linear};
use super::params::{ParamSet, Weights, read_safetensors, save_named, take_checked};
use crate::rng::SeededRng;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

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
    let mut v: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}.");
        for (n, s) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            v.push((format!("{p}{n}"), s));
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
    mut dropout_rng: Option<&mut SeededRng>,
) -> Result<Tensor> {
    let (b, t) = inputs.input_ids.dims2()?;
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
    let dh = cfg.head_dim();
    let eps = cfg.layer_norm_eps;
    let p_hidden = cfg.hidden_dropout_prob;
    let p_attn = cfg.attention_probs_dropout_prob;

    let ids = inputs.input_ids.flatten_all()?;
    let words = w
        .weight("embeddings.word_embeddings.weight")?
        .index_select(&ids, 0)?
        .reshape((b, t, h))?;
    let pos = w
        .weight("embeddings.position_embeddings.weight")?
        .narrow(0, 0, t)?;
    let types = w.weight("embeddings.token_type_embeddings.weight")?;
    let emb = match inputs.token_type_ids {
        Some(tt) => {
            let tt = tt.flatten_all()?;
            words.add(&types.index_select(&tt, 0)?.reshape((b, t, h))?)?
        }
        None => words.broadcast_add(&types.narrow(0, 0, 1)?)?,
    };
    let emb = emb.broadcast_add(&pos)?;
    let mut x = layer_norm(
        &emb,
        w.weight("embeddings.LayerNorm.weight")?,
        w.weight("embeddings.LayerNorm.bias")?,
        eps,
    )?;
    if let Some(r) = dropout_rng.as_deref_mut() {
        x = dropout(&x, p_hidden, r)?;
    }
    let bias = attention_bias(inputs.attention_mask)?.to_dtype(x.dtype())?;
    let scale = 1.0 / (dh as f64).sqrt();

    for l in 0..cfg.num_hidden_layers {
        let p = |n: &str| format!("encoder.layer.{l}.{n}");
        let get = |n: &str| w.weight(&p(n));
        // Scaling q (B·T·H values) instead of the scores (B·nh·T·T) is cheaper and the same.
        let q = scaled_linear(
            &x,
            get("attention.self.query.weight")?,
            Some(get("attention.self.query.bias")?),
            scale,
        )?;
        let k = linear(
            &x,
            get("attention.self.key.weight")?,
            Some(get("attention.self.key.bias")?),
        )?;
        let v = linear(
            &x,
            get("attention.self.value.weight")?,
            Some(get("attention.self.value.bias")?),
        )?;
        // The probabilities' dropout mask, drawn where `dropout` would draw it.
        let drop_mask = match dropout_rng.as_deref_mut() {
            Some(r) if p_attn > 0.0 => Some(
                r.dropout_mask(&[b, nh, t, t], p_attn as f32, x.device())?
                    .to_dtype(x.dtype())?,
            ),
            _ => None,
        };
        // One fused op on [B, T, H] (heads read in place) on the CPU.
        let ctx = attention(&q, &k, &v, &bias, nh, drop_mask.as_ref())?;
        let mut a = linear(
            &ctx,
            get("attention.output.dense.weight")?,
            Some(get("attention.output.dense.bias")?),
        )?;
        if let Some(r) = dropout_rng.as_deref_mut() {
            a = dropout(&a, p_hidden, r)?;
        }
        x = layer_norm(
            &(a + &x)?,
            get("attention.output.LayerNorm.weight")?,
            get("attention.output.LayerNorm.bias")?,
            eps,
        )?;
        let inter = gelu(&linear(
            &x,
            get("intermediate.dense.weight")?,
            Some(get("intermediate.dense.bias")?),
        )?)?;
        let mut o = linear(
            &inter,
            get("output.dense.weight")?,
            Some(get("output.dense.bias")?),
        )?;
        if let Some(r) = dropout_rng.as_deref_mut() {
            o = dropout(&o, p_hidden, r)?;
        }
        x = layer_norm(
            &(o + &x)?,
            get("output.LayerNorm.weight")?,
            get("output.LayerNorm.bias")?,
            eps,
        )?;
    }
    Ok(x)
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
