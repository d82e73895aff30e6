//! Small, seeded, randomly initialised BERT folders (`primer init-model`): the demo and the
//! tests train these instead of downloading a real checkpoint.

use super::bert::{encoder_param_shapes, save_encoder};
use super::config::BertConfig;
use super::error::{ModelError, Result};
use super::params::TensorSet;
use crate::fsutil::StagedDir;
use crate::rng::SeededRng;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// Tokenizer files copied from the source folder when present.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The file that marks a folder as `primer init-model`'s output, recording what it was made
/// from. Only a folder carrying it is replaced by a later `init-model`: a pretrained model's
/// folder holds the same config, weights and tokenizer file names.
pub const INIT_MARKER: &str = "init-model.json";

/// Sizes and seed of a random BERT.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RandomBertSpec {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_position: usize,
    pub seed: u64,
}

impl Default for RandomBertSpec {
    fn default() -> Self {
        Self {
            hidden: 128,
            layers: 2,
            heads: 2,
            intermediate: 256,
            max_position: 512,
            seed: 0,
        }
    }
}

/// Vocabulary size of the tokenizer in `dir` (tokenizer.json, else the lines of vocab.txt).
pub fn tokenizer_vocab_size(dir: &Path) -> Result<usize> {
    let tj = dir.join("tokenizer.json");
    if tj.exists() {
        let tok = tokenizers::Tokenizer::from_file(&tj).map_err(|e| ModelError::Config {
            path: tj.clone(),
            message: format!("cannot load tokenizer: {e}"),
        })?;
        return Ok(tok.get_vocab_size(true));
    }
    let vt = dir.join("vocab.txt");
    let text = std::fs::read_to_string(&vt).map_err(|source| ModelError::Io {
        path: vt.clone(),
        source: std::io::Error::new(
            source.kind(),
            format!("{source} (the tokenizer folder needs tokenizer.json or vocab.txt)"),
        ),
    })?;
    Ok(text.lines().count())
}

/// HF's BERT initialisation: every weight matrix and embedding N(0, range²) (the padding
/// row of the word embeddings zero), LayerNorm weight 1 / bias 0, other biases 0.
pub fn random_encoder(cfg: &BertConfig, seed: u64, device: &Device) -> Result<TensorSet> {
    let mut rng = SeededRng::derive(seed, "init.encoder");
    let std = cfg.initializer_range as f32;
    let mut out = TensorSet::new();
    for (name, shape) in encoder_param_shapes(cfg) {
        let t = if name.contains("LayerNorm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else if name.ends_with("bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, device)?
        } else if name == "embeddings.word_embeddings.weight" {
            let mut v = rng.normal_vec(shape.iter().product(), std);
            let h = shape[1];
            if cfg.pad_token_id < shape[0] {
                v[cfg.pad_token_id * h..(cfg.pad_token_id + 1) * h].fill(0.0);
            }
            Tensor::from_vec(v, shape.as_slice(), device)?
        } else {
            rng.normal_tensor(&shape, std, device)?
        };
        out.insert(name, t)?;
    }
    Ok(out)
}

/// Writes a random BERT folder at `out` (config.json, model.safetensors, the tokenizer
/// files of `tokenizer_from` and [`INIT_MARKER`]) atomically: the folder appears complete or
/// not at all. An existing `out` is replaced only when it is empty or an earlier output (it
/// carries the marker and nothing but those files).
pub fn write_random_bert(
    out: &Path,
    tokenizer_from: &Path,
    spec: &RandomBertSpec,
) -> Result<PathBuf> {
    // Checked before anything is computed: the commit replaces `out` whole, so a folder
    // holding anything but an earlier random BERT (a pretrained model, a user's files) is
    // refused rather than deleted.
    crate::fsutil::ensure_replaceable(out, |names| {
        names.iter().any(|n| n == INIT_MARKER)
            && names.iter().all(|n| {
                n == INIT_MARKER
                    || n == super::bert::CONFIG_FILE
                    || n == super::bert::WEIGHTS_FILE
                    || TOKENIZER_FILES.contains(&n.as_str())
            })
    })?;
    let vocab = tokenizer_vocab_size(tokenizer_from)?;
    let mut cfg = BertConfig::new(
        vocab,
        spec.hidden,
        spec.layers,
        spec.heads,
        spec.intermediate,
    );
    cfg.max_position_embeddings = spec.max_position;
    cfg.validate().map_err(|message| ModelError::Config {
        path: out.join("config.json"),
        message,
    })?;
    let weights = random_encoder(&cfg, spec.seed, &Device::Cpu)?;
    let staged = StagedDir::new(out)?;
    save_encoder(staged.path(), &cfg, &weights)?;
    let marker = serde_json::json!({
        "written_by": "primer init-model",
        "spec": spec,
        "tokenizer_from": tokenizer_from,
    });
    crate::fsutil::write_json_atomic(&staged.path().join(INIT_MARKER), &marker)?;
    for f in TOKENIZER_FILES {
        let src = tokenizer_from.join(f);
        if src.exists() {
            // Read + write rather than fs::copy, which would also copy a read-only mode from
            // a shared model folder.
            let bytes =
                std::fs::read(&src).map_err(|source| ModelError::Io { path: src, source })?;
            crate::fsutil::write_atomic(&staged.path().join(f), &bytes)?;
        }
    }
    Ok(staged.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert::load_encoder;

    #[test]
    fn random_bert_folder_roundtrips_and_is_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        std::fs::create_dir_all(&tok).unwrap();
        let vocab: String = (0..40).map(|i| format!("w{i}\n")).collect();
        std::fs::write(tok.join("vocab.txt"), vocab).unwrap();
        let spec = RandomBertSpec {
            hidden: 16,
            layers: 1,
            heads: 2,
            intermediate: 32,
            max_position: 64,
            seed: 3,
        };
        let a = write_random_bert(&dir.path().join("a"), &tok, &spec).unwrap();
        let b = write_random_bert(&dir.path().join("b"), &tok, &spec).unwrap();
        assert!(a.join("vocab.txt").exists());
        let (ca, pa) = load_encoder(&a, &Device::Cpu).unwrap();
        let (_, pb) = load_encoder(&b, &Device::Cpu).unwrap();
        assert_eq!(ca.vocab_size, 40);
        let wa = pa
            .get("embeddings.word_embeddings.weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let wb = pb
            .get("embeddings.word_embeddings.weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(wa, wb);
        assert!(wa[0].iter().all(|&v| v == 0.0), "padding row is zero");
        let std = (wa[1..].iter().flatten().map(|v| v * v).sum::<f32>() / (39.0 * 16.0)).sqrt();
        assert!((std - 0.02).abs() < 0.004, "{std}");
        let ln = pa
            .get("encoder.layer.0.output.LayerNorm.weight")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(ln.iter().all(|&v| v == 1.0));
        let c = write_random_bert(
            &dir.path().join("c"),
            &tok,
            &RandomBertSpec { seed: 4, ..spec },
        )
        .unwrap();
        let (_, pc) = load_encoder(&c, &Device::Cpu).unwrap();
        assert_ne!(
            pc.get("embeddings.word_embeddings.weight")
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            wa
        );
    }
}
