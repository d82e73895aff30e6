//! Tokenisation and first-subword alignment must match the Hugging Face fast tokenizer exactly:
//! `input_ids` and `word_ids` of the golden dump (`golden/encoder/forward.safetensors`, made by
//! `reference/encoder_golden.py`) for both tokenizers, from `tokenizer.json` and from the
//! `vocab.txt` fallback.
//!
//! Shared material: `$PRIMER_SHARED_DIR` (default `../shared` next to the crate).

use candle_core::{Device, Tensor};
use primer::data::{LabelSet, Sentence, WordTokenizer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PRIMER_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let needed = dir.join("golden/encoder/forward.safetensors");
    if needed.is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} not found (set PRIMER_SHARED_DIR)",
            needed.display()
        );
        None
    }
}

#[derive(serde::Deserialize)]
struct GoldenSentence {
    id: usize,
    words: Vec<String>,
    tags: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Golden {
    sentences: Vec<GoldenSentence>,
}

fn load(shared: &Path) -> (Vec<GoldenSentence>, HashMap<String, Tensor>) {
    let enc = shared.join("golden/encoder");
    let g: Golden =
        serde_json::from_str(&std::fs::read_to_string(enc.join("sentences.json")).unwrap())
            .unwrap();
    let t = candle_core::safetensors::load(enc.join("forward.safetensors"), &Device::Cpu).unwrap();
    (g.sentences, t)
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_vec1::<i64>().unwrap()
}

/// Compares every golden sentence; returns how many were checked.
fn check(
    tok: &WordTokenizer,
    name: &str,
    sentences: &[GoldenSentence],
    tensors: &HashMap<String, Tensor>,
) -> usize {
    let labels = LabelSet::wikiann();
    let mut checked = 0;
    for s in sentences {
        let want_ids = ints(&tensors[&format!("{name}.s{}.input_ids", s.id)]);
        let want_wids = ints(&tensors[&format!("{name}.s{}.word_ids", s.id)]);
        let sent = Sentence {
            words: s.words.clone(),
            tags: s.tags.clone(),
        };
        let enc = tok.encode(&sent, &labels).unwrap();
        let got_ids: Vec<i64> = enc.input_ids.iter().map(|&i| i64::from(i)).collect();
        assert_eq!(
            got_ids, want_ids,
            "{name} sentence {} input_ids ({:?})",
            s.id, s.words
        );
        assert_eq!(enc.word_ids, want_wids, "{name} sentence {} word_ids", s.id);
        // First-subword labelling: exactly one label per word that has a token.
        for (w, tag) in s.tags.iter().enumerate() {
            let firsts: Vec<usize> = (0..enc.len())
                .filter(|&t| enc.word_ids[t] == w as i64)
                .collect();
            if let Some(&first) = firsts.first() {
                assert_eq!(enc.labels[first], labels.id(tag).unwrap() as i64);
                assert!(firsts[1..].iter().all(|&t| enc.labels[t] == -100));
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn tokenizer_json_matches_hf_for_both_tokenizers() {
    let Some(shared) = shared_dir() else { return };
    let (sentences, tensors) = load(&shared);
    assert!(!sentences.is_empty());
    for name in ["all-MiniLM-L6-v2", "bert-base-multilingual-cased"] {
        let tok = WordTokenizer::from_model_dir(&shared.join("models").join(name), 128).unwrap();
        assert!(tok.source().ends_with("tokenizer.json"));
        assert_eq!(check(&tok, name, &sentences, &tensors), sentences.len());
    }
}

#[test]
fn vocab_txt_fallback_matches_hf_for_both_tokenizers() {
    let Some(shared) = shared_dir() else { return };
    let (sentences, tensors) = load(&shared);
    for name in ["all-MiniLM-L6-v2", "bert-base-multilingual-cased"] {
        let src = shared.join("models").join(name);
        let dir = tempfile::tempdir().unwrap();
        for f in ["vocab.txt", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let tok = WordTokenizer::from_model_dir(dir.path(), 128).unwrap();
        assert!(tok.source().ends_with("vocab.txt"));
        assert_eq!(check(&tok, name, &sentences, &tensors), sentences.len());
    }
}

/// Truncation is token-level like HF: the first `max_len - 2` content tokens are kept (a word
/// may lose its later pieces), `[SEP]` closes the sequence, and words with no token left are
/// counted and predicted `O`.
#[test]
fn truncation_keeps_a_prefix_and_counts_lost_words() {
    let Some(shared) = shared_dir() else { return };
    let dir = shared.join("models/bert-base-multilingual-cased");
    let full = WordTokenizer::from_model_dir(&dir, 512).unwrap();
    let words: Vec<String> = (0..60).map(|i| format!("Wortverbindung{i}")).collect();
    let sent = Sentence {
        tags: vec!["O".to_string(); words.len()],
        words,
    };
    let labels = LabelSet::wikiann();
    let long = full.encode(&sent, &labels).unwrap();
    assert_eq!(long.truncated_words, 0);
    assert!(long.len() > 40);
    let mut prev_kept = 0;
    for max_len in [3, 10, 17, 40] {
        let tok = WordTokenizer::from_model_dir(&dir, max_len).unwrap();
        let short = tok.encode(&sent, &labels).unwrap();
        assert_eq!(short.len(), max_len);
        assert_eq!(
            short.input_ids[..max_len - 1],
            long.input_ids[..max_len - 1]
        );
        assert_eq!(short.word_ids[..max_len - 1], long.word_ids[..max_len - 1]);
        assert_eq!(
            short.input_ids.last(),
            long.input_ids.last(),
            "ends with [SEP]"
        );
        let kept = short.word_ids.iter().copied().max().unwrap().max(-1) + 1;
        assert_eq!(short.truncated_words, 60 - kept as usize);
        // max_len 3 keeps one piece of word 0; longer limits keep more words, never all 60.
        assert!((1..60).contains(&kept), "{kept}");
        assert!(
            kept > prev_kept || max_len == 3,
            "{max_len}: {kept} <= {prev_kept}"
        );
        prev_kept = kept;
        // Every word past the cut is predicted O even if the model says otherwise.
        let preds = short.word_predictions(&vec![1u32; short.len()], &labels);
        assert_eq!(preds.len(), 60);
        assert!(preds[..kept as usize].iter().all(|t| t == "B-PER"));
        assert!(preds[kept as usize..].iter().all(|t| t == "O"));
    }
    assert!(WordTokenizer::from_model_dir(&dir, 2).is_err());
}
