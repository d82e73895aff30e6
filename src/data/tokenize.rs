//! Subword tokenisation of pre-split words with first-subword label alignment, reproducing the
//! Hugging Face fast tokenizer called as `tok(words, is_split_into_words=True, truncation=True,
//! max_length=max_len)`.
//!
//! * The tokenizer comes from a model folder's `tokenizer.json`; when there is none, a BERT
//!   WordPiece tokenizer is built from `vocab.txt` (BERT normaliser, BERT pre-tokeniser,
//!   `[CLS] … [SEP]`).
//! * Like `BertTokenizerFast`, the normaliser follows `tokenizer_config.json` when that file
//!   exists: `do_lower_case` (default true), `strip_accents` (default: follow lowercasing) and
//!   `tokenize_chinese_chars` (default true) override what `tokenizer.json` says. Without
//!   `tokenizer_config.json`, `tokenizer.json` is used as is (and the `vocab.txt` fallback
//!   lowercases, BERT's default).
//! * Truncation and padding stored in `tokenizer.json` are cleared; truncation is then set to
//!   `max_len` tokens, specials included, cutting at the token level (a word may keep only
//!   its first pieces), exactly like HF.
//! * Labels: the first subword of each word carries the word's tag id, every other piece and
//!   the specials carry [`IGNORE_INDEX`]. Words cut off by truncation are counted; at prediction
//!   time they are tagged `O` ([`EncodedSentence::word_predictions`]).

use super::DataError;
use super::labels::LabelSet;
use super::reader::Sentence;
use crate::model::IGNORE_INDEX;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::{BertNormalizer, NormalizerWrapper};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// One tokenised sentence: what the model sees and how it maps back to words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSentence {
    /// Subword ids, `[CLS]` first and `[SEP]` last.
    pub input_ids: Vec<u32>,
    /// Per token: index of the word it belongs to, or -1 for special tokens.
    pub word_ids: Vec<i64>,
    /// Per token: the word's label id on its first subword, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
    /// Number of words in the sentence (including any cut by truncation).
    pub n_words: usize,
    /// Words with no token left after truncation (predicted `O` at scoring time).
    pub truncated_words: usize,
}

impl EncodedSentence {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions of each word's first subword (None: the word has no token, because it was
    /// truncated away or normalised to nothing).
    pub fn first_subwords(&self) -> Vec<Option<usize>> {
        let mut first = vec![None; self.n_words];
        for (t, &w) in self.word_ids.iter().enumerate() {
            if let Ok(w) = usize::try_from(w)
                && first[w].is_none()
            {
                first[w] = Some(t);
            }
        }
        first
    }

    /// Per-word predicted label ids from per-token predicted ids (e.g. the argmax over the
    /// logits of this sentence's row; padding beyond [`Self::len`] is ignored): each word takes
    /// the prediction at its first subword; words without a token get `outside_id`.
    pub fn word_prediction_ids(&self, token_predictions: &[u32], outside_id: u32) -> Vec<u32> {
        self.first_subwords()
            .into_iter()
            .map(|t| match t {
                Some(t) => token_predictions.get(t).copied().unwrap_or(outside_id),
                None => outside_id,
            })
            .collect()
    }

    /// Per-word predicted tags (see [`Self::word_prediction_ids`]); words without a token,
    /// and ids outside the label set, become `O`.
    pub fn word_predictions(&self, token_predictions: &[u32], labels: &LabelSet) -> Vec<String> {
        let outside = labels.outside_id().unwrap_or(0) as u32;
        tags_of(self.word_prediction_ids(token_predictions, outside), labels)
    }

    /// Per-word predicted tags from the predictions at this sentence's first subwords alone,
    /// in word order, one per word that has a token (what an encoder cache of first-subword
    /// rows yields); the same tags as [`Self::word_predictions`] on the full token row.
    /// `None` when the count does not match the words that have a token.
    pub fn word_predictions_from_first_subwords(
        &self,
        first_subword_predictions: &[u32],
        labels: &LabelSet,
    ) -> Option<Vec<String>> {
        let outside = labels.outside_id().unwrap_or(0) as u32;
        let mut next = first_subword_predictions.iter();
        let ids = self
            .first_subwords()
            .into_iter()
            .map(|t| match t {
                Some(_) => next.next().copied(),
                None => Some(outside),
            })
            .collect::<Option<Vec<u32>>>()?;
        next.next().is_none().then(|| tags_of(ids, labels))
    }
}

/// Tags of label ids; ids outside the label set become `O`.
fn tags_of(ids: Vec<u32>, labels: &LabelSet) -> Vec<String> {
    ids.into_iter()
        .map(|id| {
            if (id as usize) < labels.len() {
                labels.tag(id as usize).to_string()
            } else {
                "O".to_string()
            }
        })
        .collect()
}

/// A tokenised split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSplit {
    pub sentences: Vec<EncodedSentence>,
    /// Total words cut by truncation over the split.
    pub truncated_words: usize,
}

/// The settings read from `tokenizer_config.json` that `BertTokenizerFast` applies.
#[derive(Debug, Default, serde::Deserialize)]
struct TokenizerConfig {
    do_lower_case: Option<bool>,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: Option<bool>,
}

/// A subword tokenizer for pre-split words with a fixed maximum length.
#[derive(Clone)]
pub struct WordTokenizer {
    tokenizer: Tokenizer,
    source: PathBuf,
    max_len: usize,
    pad_id: u32,
}

impl std::fmt::Debug for WordTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordTokenizer")
            .field("source", &self.source)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl WordTokenizer {
    /// Loads the tokenizer of a model folder (`tokenizer.json`, else `vocab.txt`), with
    /// truncation at `max_len` tokens (specials included, at least 3) and no padding.
    pub fn from_model_dir(dir: &Path, max_len: usize) -> Result<Self, DataError> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let config = read_tokenizer_config(dir)?;
        let (mut tokenizer, source) = if json.is_file() {
            let mut t = Tokenizer::from_file(&json).map_err(|e| tok_err(&json, e))?;
            if let Some(cfg) = &config
                && let Some(NormalizerWrapper::BertNormalizer(n)) = t.get_normalizer()
            {
                let n = BertNormalizer::new(
                    n.clean_text,
                    cfg.tokenize_chinese_chars.unwrap_or(true),
                    cfg.strip_accents,
                    cfg.do_lower_case.unwrap_or(true),
                );
                t.with_normalizer(Some(n)).map_err(|e| tok_err(&json, e))?;
            }
            (t, json)
        } else if vocab.is_file() {
            let cfg = config.unwrap_or_default();
            (wordpiece_from_vocab(&vocab, &cfg)?, vocab)
        } else {
            return Err(DataError::Tokenizer {
                path: dir.to_path_buf(),
                message: "no tokenizer.json or vocab.txt in this model folder".to_string(),
            });
        };
        Self::configure(&mut tokenizer, &source, max_len)?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        Ok(Self {
            tokenizer,
            source,
            max_len,
            pad_id,
        })
    }

    fn configure(t: &mut Tokenizer, source: &Path, max_len: usize) -> Result<(), DataError> {
        if max_len < 3 {
            return Err(DataError::Tokenizer {
                path: source.to_path_buf(),
                message: format!("max_len {max_len} is too small: [CLS] and [SEP] need 2 tokens"),
            });
        }
        // Built-in padding/truncation (all-MiniLM-L6-v2 pads to 128) must not leak in.
        t.with_padding(None);
        t.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| tok_err(source, e))?;
        Ok(())
    }

    /// The file the tokenizer was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Id of `[PAD]` (0 when the vocabulary has none).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Token ids and word ids (-1 for specials) of pre-split words, plus the number of words
    /// cut by truncation.
    pub fn encode_words<S: AsRef<str> + Sync>(
        &self,
        words: &[S],
    ) -> Result<(Vec<u32>, Vec<i64>, usize), DataError> {
        let words: Vec<&str> = words.iter().map(AsRef::as_ref).collect();
        let enc = self
            .tokenizer
            .encode(words.as_slice(), true)
            .map_err(|e| tok_err(&self.source, e))?;
        let ids = enc.get_ids().to_vec();
        let word_ids: Vec<i64> = enc
            .get_word_ids()
            .iter()
            .map(|w| w.map_or(-1, i64::from))
            .collect();
        let truncated = if enc.get_overflowing().is_empty() {
            0
        } else {
            let kept = word_ids
                .iter()
                .copied()
                .max()
                .map_or(0, |m| (m + 1).max(0) as usize);
            words.len().saturating_sub(kept)
        };
        Ok((ids, word_ids, truncated))
    }

    /// Tokenises one sentence and aligns its tags (first subword labelled).
    pub fn encode(
        &self,
        sentence: &Sentence,
        labels: &LabelSet,
    ) -> Result<EncodedSentence, DataError> {
        let (input_ids, word_ids, truncated_words) = self.encode_words(&sentence.words)?;
        let mut tag_ids = Vec::with_capacity(sentence.tags.len());
        for (w, tag) in sentence.tags.iter().enumerate() {
            match labels.id(tag) {
                Some(id) => tag_ids.push(id as i64),
                None => {
                    return Err(DataError::UnknownTag {
                        location: format!("word {w} ({:?})", sentence.words.get(w)),
                        tag: tag.clone(),
                        known: labels.tags().join(", "),
                    });
                }
            }
        }
        let mut labels_out = vec![IGNORE_INDEX; input_ids.len()];
        let mut prev = -1i64;
        for (t, &w) in word_ids.iter().enumerate() {
            if w >= 0 && w != prev {
                labels_out[t] = tag_ids.get(w as usize).copied().unwrap_or(IGNORE_INDEX);
            }
            prev = w;
        }
        Ok(EncodedSentence {
            input_ids,
            word_ids,
            labels: labels_out,
            n_words: sentence.words.len(),
            truncated_words,
        })
    }

    /// Tokenises a split in parallel (rayon), keeping sentence order.
    pub fn encode_split(
        &self,
        sentences: &[Sentence],
        labels: &LabelSet,
    ) -> Result<EncodedSplit, DataError> {
        let sentences: Vec<EncodedSentence> = sentences
            .par_iter()
            .enumerate()
            .map(|(k, s)| {
                self.encode(s, labels).map_err(|e| match e {
                    DataError::UnknownTag {
                        location,
                        tag,
                        known,
                    } => DataError::UnknownTag {
                        location: format!("sentence {k}, {location}"),
                        tag,
                        known,
                    },
                    other => other,
                })
            })
            .collect::<Result<_, _>>()?;
        let truncated_words = sentences.iter().map(|s| s.truncated_words).sum();
        Ok(EncodedSplit {
            sentences,
            truncated_words,
        })
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<TokenizerConfig>, DataError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io {
        path: path.clone(),
        source,
    })?;
    // Unknown keys are fine (the file carries many); only the three normaliser settings matter.
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DataError::Parse {
            location: format!("{}:{}:{}", path.display(), e.line(), e.column()),
            message: format!("invalid tokenizer_config.json: {e}"),
        })
}

/// A BERT WordPiece tokenizer from `vocab.txt`, as `BertTokenizerFast` builds it from a slow
/// tokenizer: BERT normaliser and pre-tokeniser, `##` continuation, `[CLS] … [SEP]`, and the
/// special tokens registered so that they are never split.
fn wordpiece_from_vocab(vocab: &Path, cfg: &TokenizerConfig) -> Result<Tokenizer, DataError> {
    let path_str = vocab
        .to_str()
        .ok_or_else(|| tok_err(vocab, "path is not valid UTF-8"))?;
    let wp = WordPiece::from_file(path_str)
        .unk_token("[UNK]".to_string())
        .continuing_subword_prefix("##".to_string())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| tok_err(vocab, e))?;
    let mut t = Tokenizer::new(wp);
    let id = |t: &Tokenizer, s: &str| {
        t.token_to_id(s)
            .ok_or_else(|| tok_err(vocab, format!("vocab.txt has no {s} token")))
    };
    let (cls, sep) = (id(&t, "[CLS]")?, id(&t, "[SEP]")?);
    t.with_normalizer(Some(BertNormalizer::new(
        true,
        cfg.tokenize_chinese_chars.unwrap_or(true),
        cfg.strip_accents,
        cfg.do_lower_case.unwrap_or(true),
    )))
    .map_err(|e| tok_err(vocab, e))?;
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".to_string(), sep),
        ("[CLS]".to_string(), cls),
    )));
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .into_iter()
        .filter(|s| t.token_to_id(s).is_some())
        .map(|s| AddedToken::from(s, true))
        .collect::<Vec<_>>();
    t.add_special_tokens(specials)
        .map_err(|e| tok_err(vocab, e))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: &[&str] = &[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "jan", "smuts", "in", "kaap", "##stad",
        "##s", "Jan", ".",
    ];

    /// A model folder with a tiny vocab.txt and the given tokenizer_config.json.
    fn model_dir(config: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vocab.txt"), VOCAB.join("\n") + "\n").unwrap();
        if let Some(c) = config {
            std::fs::write(dir.path().join("tokenizer_config.json"), c).unwrap();
        }
        dir
    }

    fn sentence(words: &[&str], tags: &[&str]) -> Sentence {
        Sentence {
            words: words.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn id(tok: &str) -> u32 {
        VOCAB.iter().position(|v| *v == tok).unwrap() as u32
    }

    #[test]
    fn wordpiece_fallback_aligns_first_subwords() {
        let dir = model_dir(None);
        let tok = WordTokenizer::from_model_dir(dir.path(), 128).unwrap();
        let s = sentence(
            &["Jan", "Smuts", "in", "Kaapstad", "."],
            &["B-PER", "I-PER", "O", "B-LOC", "O"],
        );
        let e = tok.encode(&s, &LabelSet::wikiann()).unwrap();
        // No tokenizer_config.json: lowercase (BERT's default).
        let want: Vec<u32> = [
            "[CLS]", "jan", "smuts", "in", "kaap", "##stad", ".", "[SEP]",
        ]
        .map(id)
        .to_vec();
        assert_eq!(e.input_ids, want);
        assert_eq!(e.word_ids, [-1, 0, 1, 2, 3, 3, 4, -1]);
        assert_eq!(e.labels, [-100, 1, 2, 0, 5, -100, 0, -100]);
        assert_eq!((e.n_words, e.truncated_words), (5, 0));
        assert_eq!(tok.pad_id(), 0);
    }

    #[test]
    fn tokenizer_config_controls_lowercasing() {
        let dir = model_dir(Some(r#"{"do_lower_case": false, "model_max_length": 512}"#));
        let tok = WordTokenizer::from_model_dir(dir.path(), 128).unwrap();
        let (ids, _, _) = tok.encode_words(&["Jan", "Smuts"]).unwrap();
        assert_eq!(ids, [id("[CLS]"), id("Jan"), id("[UNK]"), id("[SEP]")]);
        let bad = model_dir(Some("{not json"));
        let e = WordTokenizer::from_model_dir(bad.path(), 128)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer_config.json:1:"), "{e}");
    }

    #[test]
    fn builtin_padding_and_truncation_of_tokenizer_json_are_cleared() {
        let dir = model_dir(None);
        let mut t =
            wordpiece_from_vocab(&dir.path().join("vocab.txt"), &TokenizerConfig::default())
                .unwrap();
        t.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(16),
            ..Default::default()
        }));
        t.with_truncation(Some(TruncationParams {
            max_length: 4,
            ..Default::default()
        }))
        .unwrap();
        t.save(dir.path().join("tokenizer.json"), false).unwrap();
        let tok = WordTokenizer::from_model_dir(dir.path(), 6).unwrap();
        assert!(tok.source().ends_with("tokenizer.json"));
        let (ids, wids, cut) = tok.encode_words(&["jan", "smuts", "in"]).unwrap();
        assert_eq!(ids.len(), 5, "no padding to 16, no truncation at 4");
        assert_eq!((wids, cut), (vec![-1, 0, 1, 2, -1], 0));
        let (ids, wids, cut) = tok
            .encode_words(&["jan", "kaapstad", "in", "smuts"])
            .unwrap();
        assert_eq!(
            ids,
            [
                id("[CLS]"),
                id("jan"),
                id("kaap"),
                id("##stad"),
                id("in"),
                id("[SEP]")
            ]
        );
        assert_eq!((wids, cut), (vec![-1, 0, 1, 1, 2, -1], 1));
    }

    #[test]
    fn predictions_map_back_to_words() {
        let dir = model_dir(None);
        let tok = WordTokenizer::from_model_dir(dir.path(), 5).unwrap();
        let labels = LabelSet::wikiann();
        let s = sentence(
            &["Kaapstad", "Jan", "Smuts", "in"],
            &["B-LOC", "B-PER", "I-PER", "O"],
        );
        let e = tok.encode(&s, &labels).unwrap();
        // [CLS] kaap ##stad jan [SEP]: smuts and in are cut.
        assert_eq!(e.word_ids, [-1, 0, 0, 1, -1]);
        assert_eq!(e.truncated_words, 2);
        // Per-token argmax (with padding beyond the sentence); the 2nd piece's guess is ignored.
        let preds = [3u32, 5, 6, 1, 4, 2, 2];
        assert_eq!(
            e.word_predictions(&preds, &labels),
            ["B-LOC", "B-PER", "O", "O"]
        );
        assert_eq!(e.word_prediction_ids(&preds, 0), [5, 1, 0, 0]);
        assert_eq!(e.first_subwords(), [Some(1), Some(3), None, None]);
        // The same tags from the predictions at the first subwords alone (an encoder cache's
        // rows); any other count is refused.
        assert_eq!(
            e.word_predictions_from_first_subwords(&[5, 1], &labels)
                .unwrap(),
            ["B-LOC", "B-PER", "O", "O"]
        );
        assert!(
            e.word_predictions_from_first_subwords(&[5], &labels)
                .is_none()
        );
        assert!(
            e.word_predictions_from_first_subwords(&[5, 1, 2], &labels)
                .is_none()
        );
    }

    #[test]
    fn unknown_tags_are_errors_naming_sentence_and_word() {
        let dir = model_dir(None);
        let tok = WordTokenizer::from_model_dir(dir.path(), 128).unwrap();
        let good = sentence(&["jan"], &["B-PER"]);
        let bad = sentence(&["in", "jan"], &["O", "B-MISC"]);
        let e = tok
            .encode_split(&[good.clone(), bad], &LabelSet::wikiann())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sentence 1, word 1") && e.contains("B-MISC"),
            "{e}"
        );
        let ok = tok
            .encode_split(&[good.clone(), good], &LabelSet::wikiann())
            .unwrap();
        assert_eq!((ok.sentences.len(), ok.truncated_words), (2, 0));
        assert!(WordTokenizer::from_model_dir(Path::new("/nonexistent"), 128).is_err());
    }
}
