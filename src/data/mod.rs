//! WikiAnn data: readers, label sets, tokenisation with first-subword alignment, batching.
//!
//! The pipeline, and the public API each step offers:
//!
//! 1. **Read** ([`reader`]): [`load_language`]`(&DataConfig, lang, seed)` → [`LanguageData`]
//!    (`train`/`dev`/`test`: `Vec<`[`Sentence`]`>`, a [`LabelSet`], the [`Layout`] detected and
//!    the source files), limits applied (`DataConfig::{train,dev,test}_limit`, first N or a seeded
//!    sample). Single files: [`read_xtreme`], [`read_rahimi`], [`read_parquet`]; [`write_xtreme`].
//! 2. **Tokenise** ([`tokenize`]): [`WordTokenizer::from_model_dir`] loads `tokenizer.json`
//!    (or builds a BERT WordPiece from `vocab.txt`), then [`WordTokenizer::encode_split`] turns
//!    sentences into [`EncodedSentence`]s exactly like Hugging Face's fast tokenizer with
//!    `is_split_into_words=True, truncation=True, max_length` (first subword labelled, the rest
//!    and specials `-100`). [`EncodedSentence::word_predictions`] maps per-token predicted label
//!    ids back to one tag per word (`O` for words cut by truncation).
//! 3. **Batch** ([`batch`]): [`Batcher`] groups encoded sentences into [`Batch`]es of candle
//!    tensors: length-bucketed and shuffled for training ([`Batcher::train_batches`]), in order
//!    for evaluation ([`Batcher::eval_batches`]).
//!
//! Errors are [`DataError`]s; each names the file (and line, or parquet row) and the fix.

pub mod batch;
pub mod labels;
pub mod reader;
pub mod tokenize;

pub use batch::{Batch, Batcher};
pub use labels::{LabelSet, TagScheme, WIKIANN_TAGS};
pub use reader::{
    LanguageData, Layout, Sentence, Split, SplitSources, detect_layout, fingerprint, load_language,
    read_parquet, read_rahimi, read_split, read_xtreme, split_files, subsample, write_xtreme,
};
pub use tokenize::{EncodedSentence, EncodedSplit, WordTokenizer};

use std::path::PathBuf;

/// Why data could not be read, tokenised or batched.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(crate::fsutil::FsError),
    #[error("{location}: {message}")]
    Parse { location: String, message: String },
    #[error("{path}: the file holds no sentences (expected `token<TAB>TAG` lines)")]
    Empty { path: PathBuf },
    #[error("{location}: unknown tag {tag:?}; known: {known}")]
    UnknownTag {
        location: String,
        tag: String,
        known: String,
    },
    #[error("{location}: invalid IOB2: {message}")]
    Iob2 { location: String, message: String },
    #[error("no data directory for language {lang:?}: {dir} does not exist; {hint}")]
    NoLanguageDir {
        dir: PathBuf,
        lang: String,
        /// [`reader::missing_language_hint`]: the languages the root holds, or that it is missing.
        hint: String,
    },
    #[error(
        "{dir}: no WikiAnn files for {lang:?}; expected `train-{lang}.tsv`/`dev-{lang}.tsv`/`test-{lang}.tsv` \
         (XTREME), `train`/`dev`/`test` (Rahimi) or `train-*.parquet`/`validation-*.parquet`/`test-*.parquet` \
         (Hugging Face)"
    )]
    UnknownLayout { dir: PathBuf, lang: String },
    #[error("{dir}: missing the {split} split (expected {expected})")]
    MissingSplit {
        dir: PathBuf,
        split: Split,
        expected: String,
    },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tensor construction failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
