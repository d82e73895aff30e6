//! Readers for the three WikiAnn layouts and the per-language loader.
//!
//! | layout | files in `<root>/<lang>/` | line format |
//! |---|---|---|
//! | [`Layout::Xtreme`] | `train-<lang>.tsv`, `dev-<lang>.tsv`, `test-<lang>.tsv` | `token<TAB>TAG` |
//! | [`Layout::Rahimi`] | `train`, `dev`, `test` | `<lang>:token<TAB>TAG` |
//! | [`Layout::Parquet`] | `train-*.parquet`, `validation-*.parquet`, `test-*.parquet` | HF `tokens`, `ner_tags` (ids of [`WIKIANN_TAGS`]) |
//!
//! In the text layouts sentences are separated by blank lines (a missing final blank line, CRLF
//! line ends, a UTF-8 BOM and `-DOCSTART-` lines are accepted).

use super::DataError;
use super::labels::{LabelSet, TagScheme, WIKIANN_TAGS};
use crate::config::{DataConfig, Subsample};
use crate::rng::SeededRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One tagged sentence: words and their IOB2 tags (same length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
}

impl Sentence {
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    /// The name in XTREME and Rahimi file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }

    /// The name in Hugging Face parquet file names.
    pub fn hf_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "validation",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a language directory stores its splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// XTREME `panx`: `<split>-<lang>.tsv`.
    Xtreme,
    /// Rahimi et al.'s original files `train`, `dev`, `test` with `<lang>:` word prefixes.
    Rahimi,
    /// Hugging Face hub `wikiann`: `<split>-*.parquet` with splits train/validation/test.
    Parquet,
}

/// Where one sentence came from, for error messages.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Text file: 1-based line of the sentence's first token (one token per line).
    Line(usize),
    /// Parquet: 0-based row.
    Row(usize),
}

fn locate(path: &Path, origin: Origin, token: usize) -> String {
    match origin {
        Origin::Line(l) => format!("{}:{}", path.display(), l + token),
        Origin::Row(r) => format!("{}: row {r}, token {token}", path.display()),
    }
}

/// Sentences of one file with their origins (kept apart so that [`Sentence`] stays plain).
struct Located {
    path: PathBuf,
    sentences: Vec<Sentence>,
    origins: Vec<Origin>,
}

fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Parse {
        location: format!("{}: byte {}", path.display(), e.utf8_error().valid_up_to()),
        message: "not valid UTF-8; convert the file to UTF-8".to_string(),
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(t) => t.to_string(),
        None => text,
    })
}

/// Parses `token<TAB>TAG` lines; `strip_word` maps the raw first column to the word (Rahimi
/// prefixes) or explains why it is wrong.
fn parse_columns(
    path: &Path,
    expected: &str,
    strip_word: impl Fn(&str) -> Result<String, String>,
) -> Result<Located, DataError> {
    let text = read_text(path)?;
    let mut out = Located {
        path: path.to_path_buf(),
        sentences: Vec::new(),
        origins: Vec::new(),
    };
    let mut cur = Sentence {
        words: Vec::new(),
        tags: Vec::new(),
    };
    let mut first_line = 0;
    let flush = |cur: &mut Sentence, first_line: usize, out: &mut Located| {
        if !cur.words.is_empty() {
            out.sentences.push(std::mem::replace(
                cur,
                Sentence {
                    words: Vec::new(),
                    tags: Vec::new(),
                },
            ));
            out.origins.push(Origin::Line(first_line));
        }
    };
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with("-DOCSTART-") {
            flush(&mut cur, first_line, &mut out);
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 2 {
            return Err(DataError::Parse {
                location: format!("{}:{line_no}", path.display()),
                message: column_count_message(line, cols.len(), expected),
            });
        }
        let word = strip_word(cols[0]).map_err(|message| DataError::Parse {
            location: format!("{}:{line_no}", path.display()),
            message,
        })?;
        let tag = cols[1].trim();
        if word.is_empty() || tag.is_empty() {
            return Err(DataError::Parse {
                location: format!("{}:{line_no}", path.display()),
                message: format!("empty token or tag; expected {expected}"),
            });
        }
        if cur.words.is_empty() {
            first_line = line_no;
        }
        cur.words.push(word);
        cur.tags.push(tag.to_string());
    }
    flush(&mut cur, first_line, &mut out);
    if out.sentences.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// The error for a line without exactly one tab. The line is quoted as written (tabs shown
/// as `<TAB>`): Rust's `{:?}` would escape combining marks, which makes Devanagari or
/// Lithuanian lines unreadable. A line that separates its columns by spaces says so.
fn column_count_message(line: &str, columns: usize, expected: &str) -> String {
    let shown = line.replace('\t', "<TAB>");
    let hint = if columns == 1 && line.trim().contains(char::is_whitespace) {
        "; the columns are separated by spaces: put one tab between the token and its tag"
    } else if columns > 2 {
        "; a token cannot contain a tab"
    } else {
        ""
    };
    format!("expected 2 tab-separated columns ({expected}), found {columns}: `{shown}`{hint}")
}

fn read_xtreme_located(path: &Path) -> Result<Located, DataError> {
    parse_columns(path, "token<TAB>TAG", |w| Ok(w.to_string()))
}

fn read_rahimi_located(path: &Path, lang: Option<&str>) -> Result<Located, DataError> {
    parse_columns(path, "lang:token<TAB>TAG", |w| match lang {
        Some(l) => w
            .strip_prefix(l)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::to_string)
            .ok_or_else(|| {
                format!("expected the word to start with `{l}:` (Rahimi format), found `{w}`")
            }),
        None => w
            .split_once(':')
            .map(|(_, r)| r.to_string())
            .ok_or_else(|| {
                format!("expected a `xx:` language prefix (Rahimi format), found `{w}`")
            }),
    })
}

/// Reads an XTREME `token<TAB>TAG` file.
pub fn read_xtreme(path: &Path) -> Result<Vec<Sentence>, DataError> {
    Ok(read_xtreme_located(path)?.sentences)
}

/// Reads a Rahimi `xx:token<TAB>TAG` file; with `lang`, the prefix must be exactly `<lang>:`.
pub fn read_rahimi(path: &Path, lang: Option<&str>) -> Result<Vec<Sentence>, DataError> {
    Ok(read_rahimi_located(path, lang)?.sentences)
}

fn read_parquet_located(path: &Path) -> Result<Located, DataError> {
    use polars::prelude::*;
    use polars_io::SerReader;
    use polars_io::parquet::read::ParquetReader;

    let perr = |message: String| DataError::Parse {
        location: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let df = ParquetReader::new(file)
        .with_columns(Some(vec!["tokens".to_string(), "ner_tags".to_string()]))
        .finish()
        .map_err(|e| {
            perr(format!(
                "cannot read as a Hugging Face wikiann parquet file with `tokens` and `ner_tags` columns: {e}"
            ))
        })?;
    let tokens = df
        .column("tokens")
        .and_then(|c| c.as_materialized_series().list().cloned())
        .map_err(|e| perr(format!("column `tokens` must be a list of strings: {e}")))?;
    let tags = df
        .column("ner_tags")
        .and_then(|c| c.as_materialized_series().list().cloned())
        .map_err(|e| perr(format!("column `ner_tags` must be a list of integers: {e}")))?;
    let mut out = Located {
        path: path.to_path_buf(),
        sentences: Vec::new(),
        origins: Vec::new(),
    };
    for (row, (toks, ids)) in tokens.series_iter().zip(tags.series_iter()).enumerate() {
        let (Some(toks), Some(ids)) = (toks, ids) else {
            return Err(perr(format!("row {row}: null `tokens` or `ner_tags`")));
        };
        let words: Vec<String> = toks
            .str()
            .map_err(|e| perr(format!("row {row}: `tokens` must hold strings: {e}")))?
            .iter()
            .map(|w| w.unwrap_or_default().to_string())
            .collect();
        let ids = ids
            .cast(&DataType::Int64)
            .map_err(|e| perr(format!("row {row}: `ner_tags` must hold integers: {e}")))?;
        let ids: Vec<Option<i64>> = ids
            .i64()
            .map_err(|e| perr(format!("row {row}: {e}")))?
            .iter()
            .collect();
        if words.len() != ids.len() {
            return Err(perr(format!(
                "row {row}: {} tokens but {} ner_tags",
                words.len(),
                ids.len()
            )));
        }
        if words.is_empty() {
            continue;
        }
        let mut tags = Vec::with_capacity(ids.len());
        for (t, id) in ids.into_iter().enumerate() {
            match id
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| WIKIANN_TAGS.get(i))
            {
                Some(tag) => tags.push(tag.to_string()),
                None => {
                    return Err(DataError::UnknownTag {
                        location: locate(path, Origin::Row(row), t),
                        tag: format!("{id:?}"),
                        known: "ner_tags ids 0-6 (O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC)"
                            .to_string(),
                    });
                }
            }
            if words[t].is_empty() {
                return Err(perr(format!("row {row}, token {t}: empty or null token")));
            }
        }
        out.sentences.push(Sentence { words, tags });
        out.origins.push(Origin::Row(row));
    }
    if out.sentences.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Reads a Hugging Face `wikiann` parquet file (`tokens`, `ner_tags` with ids of [`WIKIANN_TAGS`]).
pub fn read_parquet(path: &Path) -> Result<Vec<Sentence>, DataError> {
    Ok(read_parquet_located(path)?.sentences)
}

/// Writes sentences in the XTREME layout (`token<TAB>TAG`, blank line after each sentence),
/// atomically.
pub fn write_xtreme(path: &Path, sentences: &[Sentence]) -> Result<(), DataError> {
    let mut s = String::new();
    for sent in sentences {
        for (w, t) in sent.words.iter().zip(&sent.tags) {
            s.push_str(w);
            s.push('\t');
            s.push_str(t);
            s.push('\n');
        }
        s.push('\n');
    }
    crate::fsutil::write_atomic(path, s.as_bytes()).map_err(DataError::Write)
}

fn files_matching(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .filter(|e| e.file_name().to_str().is_some_and(&pred))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn parquet_files(dir: &Path, split: Split) -> Vec<PathBuf> {
    let prefix = format!("{}-", split.hf_name());
    files_matching(dir, |n| n.starts_with(&prefix) && n.ends_with(".parquet"))
}

/// The language folders under a data root, sorted (empty when the root does not exist).
pub fn language_dirs(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut langs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    langs.sort();
    langs
}

/// What a missing language folder under `root` is likely to mean, for its error: the root
/// itself is missing, or the languages it does hold (a misspelt code is the usual cause).
pub fn missing_language_hint(root: &Path) -> String {
    if !root.is_dir() {
        return format!(
            "the data root {} does not exist: set data.root to the folder holding one directory per language",
            root.display()
        );
    }
    let langs = language_dirs(root);
    if langs.is_empty() {
        return format!(
            "{} holds no language folders: set data.root to the folder holding one directory per language",
            root.display()
        );
    }
    format!(
        "{} holds {}: fix the language code or data.root",
        root.display(),
        langs.join(", ")
    )
}

/// Detects a language directory's layout. When several layouts are present, XTREME wins over
/// parquet, which wins over Rahimi.
pub fn detect_layout(dir: &Path, lang: &str) -> Result<Layout, DataError> {
    if !dir.is_dir() {
        let root = dir.parent().unwrap_or(Path::new("."));
        return Err(DataError::NoLanguageDir {
            dir: dir.to_path_buf(),
            lang: lang.to_string(),
            hint: missing_language_hint(root),
        });
    }
    if Split::ALL
        .iter()
        .any(|s| dir.join(format!("{s}-{lang}.tsv")).is_file())
    {
        return Ok(Layout::Xtreme);
    }
    if Split::ALL
        .iter()
        .any(|&s| !parquet_files(dir, s).is_empty())
    {
        return Ok(Layout::Parquet);
    }
    if Split::ALL.iter().any(|s| dir.join(s.as_str()).is_file()) {
        return Ok(Layout::Rahimi);
    }
    Err(DataError::UnknownLayout {
        dir: dir.to_path_buf(),
        lang: lang.to_string(),
    })
}

/// The file(s) holding one split in a language directory of the given layout.
pub fn split_files(
    dir: &Path,
    lang: &str,
    layout: Layout,
    split: Split,
) -> Result<Vec<PathBuf>, DataError> {
    let missing = |expected: String| DataError::MissingSplit {
        dir: dir.to_path_buf(),
        split,
        expected,
    };
    match layout {
        Layout::Xtreme => {
            let p = dir.join(format!("{split}-{lang}.tsv"));
            if p.is_file() {
                Ok(vec![p])
            } else {
                Err(missing(format!("{split}-{lang}.tsv")))
            }
        }
        Layout::Rahimi => {
            let p = dir.join(split.as_str());
            if p.is_file() {
                Ok(vec![p])
            } else {
                Err(missing(split.as_str().to_string()))
            }
        }
        Layout::Parquet => {
            let v = parquet_files(dir, split);
            if v.is_empty() {
                Err(missing(format!("{}-*.parquet", split.hf_name())))
            } else {
                Ok(v)
            }
        }
    }
}

fn read_split_located(
    dir: &Path,
    lang: &str,
    layout: Layout,
    split: Split,
) -> Result<Vec<Located>, DataError> {
    split_files(dir, lang, layout, split)?
        .iter()
        .map(|p| match layout {
            Layout::Xtreme => read_xtreme_located(p),
            Layout::Rahimi => read_rahimi_located(p, Some(lang)),
            Layout::Parquet => read_parquet_located(p),
        })
        .collect()
}

/// Reads one split of `<root>/<lang>` in whatever layout it has.
pub fn read_split(root: &Path, lang: &str, split: Split) -> Result<Vec<Sentence>, DataError> {
    let dir = root.join(lang);
    let layout = detect_layout(&dir, lang)?;
    Ok(read_split_located(&dir, lang, layout, split)?
        .into_iter()
        .flat_map(|l| l.sentences)
        .collect())
}

/// Is `tag` of the IOB2 form `O`, `B-TYPE` or `I-TYPE`?
/// Checks every tag of a file: known to `labels` (or of IOB2 form when `labels` is None), and,
/// when `strict`, that each `I-X` continues a `B-X`/`I-X`.
fn check_tags(file: &Located, labels: Option<&LabelSet>, strict: bool) -> Result<(), DataError> {
    for (sent, &origin) in file.sentences.iter().zip(&file.origins) {
        if sent.words.len() != sent.tags.len() {
            return Err(DataError::Parse {
                location: locate(&file.path, origin, 0),
                message: format!("{} words but {} tags", sent.words.len(), sent.tags.len()),
            });
        }
        let mut prev = "O";
        for (t, tag) in sent.tags.iter().enumerate() {
            let known = match labels {
                Some(l) => l.contains(tag),
                None => TagScheme::Iob2.accepts(tag),
            };
            if !known {
                return Err(DataError::UnknownTag {
                    location: locate(&file.path, origin, t),
                    tag: tag.clone(),
                    known: match labels {
                        Some(l) => l.tags().join(", "),
                        None => TagScheme::Iob2.describe().to_string(),
                    },
                });
            }
            if strict && let Some(ty) = tag.strip_prefix("I-") {
                let continues =
                    prev.strip_prefix("B-").or_else(|| prev.strip_prefix("I-")) == Some(ty);
                if !continues {
                    return Err(DataError::Iob2 {
                        location: locate(&file.path, origin, t),
                        message: format!(
                            "{tag} follows {prev}; strict IOB2 requires I-{ty} to continue a B-{ty} or I-{ty} \
                             (fix the data or set strict_iob2 = false)"
                        ),
                    });
                }
            }
            prev = tag;
        }
    }
    Ok(())
}

/// The files a [`LanguageData`] was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSources {
    pub train: Vec<PathBuf>,
    pub dev: Vec<PathBuf>,
    pub test: Vec<PathBuf>,
}

/// One language's data after limits: what [`load_language`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageData {
    pub lang: String,
    pub train: Vec<Sentence>,
    pub dev: Vec<Sentence>,
    pub test: Vec<Sentence>,
    /// The WikiAnn tags when the data uses only those, else the tags found (see
    /// [`LabelSet::from_tags`]); built from all three full splits, before limits.
    pub labels: LabelSet,
    pub layout: Layout,
    pub sources: SplitSources,
}

impl LanguageData {
    pub fn split(&self, split: Split) -> &[Sentence] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }
}

/// A short content id of a list of sentences (SHA-256 over words and tags, 16 hex digits):
/// equal ids mean the same sentences in the same order. Runs record the ids of the dev and
/// test sentences they were scored on, so a report can check that compared runs saw the same.
pub fn fingerprint(sentences: &[Sentence]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for s in sentences {
        for (w, t) in s.words.iter().zip(&s.tags) {
            // Unit and record separators cannot occur in a token or tag read from a file.
            h.update(w.as_bytes());
            h.update([0x1f]);
            h.update(t.as_bytes());
            h.update([0x1e]);
        }
        h.update([0x1d]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Applies a sentence limit: the first `limit`, or `limit` drawn without replacement by a stream
/// derived from `seed` and `purpose` (file order preserved).
pub fn subsample<T: Clone>(
    items: &[T],
    limit: Option<usize>,
    how: Subsample,
    seed: u64,
    purpose: &str,
) -> Vec<T> {
    match limit {
        None => items.to_vec(),
        Some(k) if k >= items.len() => items.to_vec(),
        Some(k) => match how {
            Subsample::First => items[..k].to_vec(),
            Subsample::Seeded => SeededRng::derive(seed, purpose)
                .sample_indices(items.len(), k)
                .into_iter()
                .map(|i| items[i].clone())
                .collect(),
        },
    }
}

/// Loads `<cfg.root>/<lang>`: detects the layout, reads and checks the three splits (tags of
/// IOB2 form; strict transitions when `cfg.strict_iob2`), builds the label set and applies the
/// limits (`cfg.subsample`; seeded draws use the purpose `data.<lang>.<split>` with, for the
/// training split, `cfg.train_seed` resolved against `run_seed`, and for dev and test
/// `cfg.eval_seed`, so that runs of different seeds are scored on the same sentences).
pub fn load_language(
    cfg: &DataConfig,
    lang: &str,
    run_seed: u64,
) -> Result<LanguageData, DataError> {
    let dir = cfg.root.join(lang);
    let layout = detect_layout(&dir, lang)?;
    let mut files = Vec::new();
    for split in Split::ALL {
        files.push(read_split_located(&dir, lang, layout, split)?);
    }
    for f in files.iter().flatten() {
        check_tags(f, None, cfg.strict_iob2)?;
    }
    let labels = LabelSet::from_tags(files.iter().flatten().flat_map(|f| {
        f.sentences
            .iter()
            .flat_map(|s| s.tags.iter().map(String::as_str))
    }));
    let mut parts = files.into_iter().map(|fs| {
        let paths: Vec<PathBuf> = fs.iter().map(|f| f.path.clone()).collect();
        let sents: Vec<Sentence> = fs.into_iter().flat_map(|f| f.sentences).collect();
        (paths, sents)
    });
    let (train_p, train) = parts.next().expect("three splits");
    let (dev_p, dev) = parts.next().expect("three splits");
    let (test_p, test) = parts.next().expect("three splits");
    let cut = |s: &[Sentence], limit, split: Split| {
        let seed = match split {
            Split::Train => cfg.train_seed.resolve(run_seed),
            Split::Dev | Split::Test => cfg.eval_seed,
        };
        subsample(
            s,
            limit,
            cfg.subsample,
            seed,
            &format!("data.{lang}.{split}"),
        )
    };
    Ok(LanguageData {
        lang: lang.to_string(),
        train: cut(&train, cfg.train_limit, Split::Train),
        dev: cut(&dev, cfg.dev_limit, Split::Dev),
        test: cut(&test, cfg.test_limit, Split::Test),
        labels,
        layout,
        sources: SplitSources {
            train: train_p,
            dev: dev_p,
            test: test_p,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainSeed;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn committed() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/wikiann")
    }

    fn sent(words: &[&str], tags: &[&str]) -> Sentence {
        Sentence {
            words: words.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A language folder `<tmp>/xx` with the given XTREME files.
    fn xtreme_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("xx")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("xx").join(name), text).unwrap();
        }
        dir
    }

    fn cfg(root: &Path) -> DataConfig {
        DataConfig {
            root: root.to_path_buf(),
            ..DataConfig::default()
        }
    }

    const GOOD: &str = "Jan\tB-PER\nSmuts\tI-PER\n\nKaapstad\tB-LOC\n";

    #[test]
    fn xtreme_round_trip_and_tolerant_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let sents = vec![
            sent(&["Jan", "Smuts"], &["B-PER", "I-PER"]),
            sent(&["in", "Kaapstad"], &["O", "B-LOC"]),
        ];
        let p = dir.path().join("a.tsv");
        write_xtreme(&p, &sents).unwrap();
        assert_eq!(read_xtreme(&p).unwrap(), sents);
        // BOM, CRLF, repeated blank lines, -DOCSTART- and no final newline all read the same.
        let q = dir.path().join("b.tsv");
        std::fs::write(&q, "\u{feff}-DOCSTART-\tO\r\n\r\nJan\tB-PER\r\nSmuts\tI-PER\r\n\n\n\nin\tO\nKaapstad\tB-LOC").unwrap();
        assert_eq!(read_xtreme(&q).unwrap(), sents);
    }

    #[test]
    fn committed_slices_have_the_documented_sizes() {
        for lang in ["en", "es", "hi", "af", "az", "lt", "et", "nl"] {
            let d = load_language(&cfg(&committed()), lang, 0).unwrap();
            assert_eq!(
                (d.train.len(), d.dev.len(), d.test.len()),
                (1000, 300, 300),
                "{lang}"
            );
            assert_eq!(d.layout, Layout::Xtreme);
            assert_eq!(d.labels, LabelSet::wikiann(), "{lang}");
        }
    }

    #[test]
    fn three_layouts_read_the_same_sentences() {
        let rahimi = load_language(&cfg(&fixtures().join("rahimi")), "af", 0).unwrap();
        let parquet = load_language(&cfg(&fixtures().join("parquet")), "af", 0).unwrap();
        let xtreme = load_language(&cfg(&committed()), "af", 0).unwrap();
        assert_eq!(rahimi.layout, Layout::Rahimi);
        assert_eq!(parquet.layout, Layout::Parquet);
        assert_eq!(rahimi.train.len(), 30);
        for split in Split::ALL {
            assert_eq!(rahimi.split(split), parquet.split(split), "{split}");
            assert_eq!(rahimi.split(split), &xtreme.split(split)[..30], "{split}");
        }
        assert_eq!(rahimi.train[0].words[0], "Sy");
        assert!(parquet.sources.dev[0].ends_with("validation-00000-of-00001.parquet"));
    }

    #[test]
    fn limits_first_and_seeded() {
        let mut c = cfg(&committed());
        c.train_limit = Some(10);
        c.dev_limit = Some(5);
        let full = load_language(&cfg(&committed()), "es", 0).unwrap();
        let first = load_language(&c, "es", 0).unwrap();
        assert_eq!(first.train, full.train[..10]);
        assert_eq!(first.dev.len(), 5);
        assert_eq!(first.test.len(), 300);
        c.subsample = Subsample::Seeded;
        let a = load_language(&c, "es", 1).unwrap();
        let b = load_language(&c, "es", 1).unwrap();
        let other = load_language(&c, "es", 2).unwrap();
        assert_eq!(a.train, b.train);
        assert_ne!(a.train, other.train);
        assert_ne!(a.train, first.train);
        // Order preserved: the sample is a subsequence of the file (greedy match; files can
        // hold duplicate sentences).
        let mut rest = full.train.iter();
        for s in &a.train {
            assert!(rest.any(|t| t == s), "sample out of file order");
        }
    }

    #[test]
    fn seeded_dev_and_test_ignore_the_run_seed_and_train_follows_train_seed() {
        let mut c = cfg(&committed());
        c.subsample = Subsample::Seeded;
        c.train_limit = Some(10);
        c.dev_limit = Some(5);
        c.test_limit = Some(20);
        let one = load_language(&c, "es", 1).unwrap();
        let two = load_language(&c, "es", 2).unwrap();
        // Scored on the same sentences whatever the run seed…
        assert_eq!(one.dev, two.dev);
        assert_eq!(one.test, two.test);
        // …trained on the run seed's draw by default…
        assert_ne!(one.train, two.train);
        // …and on one draw for every seed with a fixed train seed.
        c.train_seed = TrainSeed::Fixed(7);
        let fixed_one = load_language(&c, "es", 1).unwrap();
        let fixed_two = load_language(&c, "es", 2).unwrap();
        assert_eq!(fixed_one.train, fixed_two.train);
        assert_eq!(fixed_one.train, load_language(&c, "es", 7).unwrap().train);
        // Another eval seed draws other evaluation sentences.
        c.eval_seed = 3;
        let other_eval = load_language(&c, "es", 1).unwrap();
        assert_ne!(other_eval.test, one.test);
        assert_eq!(other_eval.train, fixed_one.train);
    }

    #[test]
    fn fingerprint_tells_sentences_and_their_order_apart() {
        let s = |w: &str, t: &str| Sentence {
            words: vec![w.to_string()],
            tags: vec![t.to_string()],
        };
        let a = vec![s("Paris", "B-LOC"), s("is", "O")];
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_eq!(fingerprint(&a).len(), 16);
        let reversed: Vec<Sentence> = a.iter().rev().cloned().collect();
        assert_ne!(fingerprint(&a), fingerprint(&reversed));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&[s("Paris", "B-PER"), s("is", "O")])
        );
        // Word boundaries count: "ab" + "c" is not "a" + "bc".
        let split = |x: &str, y: &str| Sentence {
            words: vec![x.to_string(), y.to_string()],
            tags: vec!["O".to_string(), "O".to_string()],
        };
        assert_ne!(
            fingerprint(&[split("ab", "c")]),
            fingerprint(&[split("a", "bc")])
        );
    }

    #[test]
    fn train_seed_reads_run_or_an_integer_and_nothing_else() {
        let parse = |s: &str| serde_json::from_str::<TrainSeed>(s).map_err(|e| e.to_string());
        assert_eq!(parse("\"run\""), Ok(TrainSeed::Run));
        assert_eq!(parse("5"), Ok(TrainSeed::Fixed(5)));
        assert!(
            parse("\"seed\"")
                .unwrap_err()
                .contains("\"run\" or a non-negative")
        );
        assert!(parse("-1").is_err());
        assert_eq!(serde_json::to_string(&TrainSeed::Fixed(4)).unwrap(), "4");
        assert_eq!(serde_json::to_string(&TrainSeed::Run).unwrap(), "\"run\"");
    }

    fn err_of(files: &[(&str, &str)], strict: bool) -> String {
        let dir = xtreme_dir(files);
        let mut c = cfg(dir.path());
        c.strict_iob2 = strict;
        load_language(&c, "xx", 0).unwrap_err().to_string()
    }

    fn with_train(train: &str) -> Vec<(&str, &str)> {
        vec![
            ("train-xx.tsv", train),
            ("dev-xx.tsv", GOOD),
            ("test-xx.tsv", GOOD),
        ]
    }

    #[test]
    fn wrong_column_count_names_file_and_line() {
        let e = err_of(&with_train("Jan\tB-PER\nSmuts I-PER\n"), false);
        assert!(
            e.contains("train-xx.tsv:2:") && e.contains("2 tab-separated columns"),
            "{e}"
        );
        let e = err_of(&with_train("Jan\tB-PER\tX\n"), false);
        assert!(
            e.contains("train-xx.tsv:1:") && e.contains("found 3"),
            "{e}"
        );
    }

    #[test]
    fn wrong_column_count_quotes_the_line_readably_and_says_the_fix() {
        // A Devanagari word with combining marks, separated from its tag by a space.
        let e = err_of(&with_train("Jan\tB-PER\nमें O\n"), false);
        assert!(
            e.contains("train-xx.tsv:2:") && e.contains("`में O`") && !e.contains("\\u{"),
            "{e}"
        );
        assert!(
            e.contains("put one tab between the token and its tag"),
            "{e}"
        );
        let e = err_of(&with_train("Jan\tB-PER\tX\n"), false);
        assert!(e.contains("`Jan<TAB>B-PER<TAB>X`"), "{e}");
    }

    #[test]
    fn unknown_tag_names_file_and_line() {
        let e = err_of(&with_train("Jan\tB-PER\n\nin\tO\nKaapstad\tLOC\n"), false);
        assert!(
            e.contains("train-xx.tsv:4:") && e.contains("unknown tag \"LOC\""),
            "{e}"
        );
    }

    #[test]
    fn bad_iob2_transition_only_when_strict() {
        let files = with_train("in\tO\nKaapstad\tI-LOC\n\nJan\tB-PER\nSmuts\tI-LOC\n");
        assert!(load_language(&cfg(xtreme_dir(&files).path()), "xx", 0).is_ok());
        let e = err_of(&files, true);
        assert!(
            e.contains("train-xx.tsv:2:") && e.contains("invalid IOB2"),
            "{e}"
        );
        let files = with_train("Jan\tB-PER\nSmuts\tI-LOC\n");
        let e = err_of(&files, true);
        assert!(
            e.contains("train-xx.tsv:2:") && e.contains("I-LOC follows B-PER"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_missing_split_and_unknown_layout() {
        let e = err_of(&with_train("\n\n"), false);
        assert!(
            e.contains("train-xx.tsv") && e.contains("no sentences"),
            "{e}"
        );
        let e = err_of(&[("train-xx.tsv", GOOD), ("test-xx.tsv", GOOD)], false);
        assert!(
            e.contains("missing the dev split") && e.contains("dev-xx.tsv"),
            "{e}"
        );
        let e = err_of(&[("notes.txt", GOOD)], false);
        assert!(e.contains("no WikiAnn files"), "{e}");
        let e = load_language(&cfg(Path::new("/nonexistent-root")), "xx", 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn rahimi_prefix_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train");
        std::fs::write(&p, "af:Jan\tB-PER\nnl:Smuts\tI-PER\n").unwrap();
        let e = read_rahimi(&p, Some("af")).unwrap_err().to_string();
        assert!(e.contains("train:2:") && e.contains("af:"), "{e}");
        // Colons inside words survive (only the language prefix is removed).
        std::fs::write(&p, "af::\tO\naf:a:b\tO\n").unwrap();
        assert_eq!(read_rahimi(&p, Some("af")).unwrap()[0].words, [":", "a:b"]);
    }

    #[test]
    fn missing_split_in_rahimi_and_parquet_layouts() {
        for (layout, drop) in [
            ("rahimi", "test"),
            ("parquet", "validation-00000-of-00001.parquet"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let src = fixtures().join(layout).join("af");
            std::fs::create_dir_all(tmp.path().join("af")).unwrap();
            for e in std::fs::read_dir(&src).unwrap() {
                let e = e.unwrap();
                if e.file_name() != drop {
                    std::fs::copy(e.path(), tmp.path().join("af").join(e.file_name())).unwrap();
                }
            }
            let e = load_language(&cfg(tmp.path()), "af", 0)
                .unwrap_err()
                .to_string();
            let want = if layout == "rahimi" {
                "missing the test split (expected test)"
            } else {
                "validation-*.parquet"
            };
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn malformed_parquet_files_are_clear_errors() {
        let m = fixtures().join("malformed");
        let e = read_parquet(&m.join("bad_tag_id.parquet"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad_tag_id.parquet: row 1, token 0") && e.contains("unknown tag"),
            "{e}"
        );
        let e = read_parquet(&m.join("length_mismatch.parquet"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 1") && e.contains("1 tokens but 2 ner_tags"),
            "{e}"
        );
        let e = read_parquet(&m.join("wrong_columns.parquet"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("wrong_columns.parquet") && e.contains("tokens"),
            "{e}"
        );
    }

    /// The full shared copies, when present: each layout reads, and they agree for af.
    #[test]
    fn shared_data_all_layouts_agree() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        if !shared.is_dir() {
            eprintln!("SKIP: {} not found", shared.display());
            return;
        }
        let panx = load_language(&cfg(&shared.join("panx")), "af", 0).unwrap();
        let raw = load_language(&cfg(&shared.join("mmner-raw")), "af", 0).unwrap();
        let pq = load_language(&cfg(&shared.join("wikiann-parquet")), "af", 0).unwrap();
        assert_eq!(panx.train.len(), 5000);
        assert_eq!(panx.train, raw.train);
        assert_eq!(panx.test, pq.test);
        assert_eq!(panx.dev, pq.dev);
        let panx = load_language(&cfg(&shared.join("panx")), "hi", 0).unwrap();
        let pq = load_language(&cfg(&shared.join("wikiann-parquet")), "hi", 0).unwrap();
        assert_eq!(panx.train, pq.train);
    }
}
