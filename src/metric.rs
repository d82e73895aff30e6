//! Entity-level micro precision / recall / F1, identical to seqeval 1.2.2.
//!
//! Two modes, matching seqeval's two code paths exactly (including their odd corners):
//!
//! * [`Mode::Default`] — seqeval's default, conlleval-compatible `get_entities`: sentences are
//!   joined with an `O` separator and scanned once; an `I-` after `O` starts a chunk, a type switch
//!   inside a chunk ends the old chunk and starts a new one, `B-B` gives two chunks.
//! * [`Mode::Strict`] — seqeval's `mode='strict', scheme=IOB2`: an entity must start with `B-`
//!   and continue with `I-` of the same type; stray `I-` tags are ignored. Prefixes other than
//!   `B`, `I`, `O` are an error (seqeval raises).
//!
//! Scores follow seqeval's arithmetic: precision = correct / predicted, recall = correct / gold
//! (0 when the denominator is 0, seqeval's `zero_division` default), F1 = 2·P·R / (P + R) (0 when
//! P + R = 0). Micro averages pool the counts of all types. Per-type support is the number of
//! gold entities; types that occur only in predictions are listed with support 0.
//!
//! Entry points: [`evaluate`] (scores, counts, per-sentence counts for bootstrap), [`score`]
//! (just the [`Scores`]), [`entities`] (the chunks of one tag sequence), [`prf`].

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Scores of one entity type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TypeScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of gold entities of this type.
    pub support: usize,
}

/// Entity-level scores of a whole split. Fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub per_type: BTreeMap<String, TypeScores>,
}

/// Which seqeval chunking to use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// seqeval's default, conlleval-compatible chunking (`get_entities`).
    #[default]
    Default,
    /// seqeval's `mode='strict', scheme=IOB2`.
    Strict,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Default => "default",
            Mode::Strict => "strict",
        })
    }
}

/// Why a pair of tag sequences cannot be scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("gold has {gold} sentences but predictions have {pred}")]
    SentenceCount { gold: usize, pred: usize },
    #[error("sentence {sentence}: gold has {gold} tags but predictions have {pred}")]
    SentenceLength {
        sentence: usize,
        gold: usize,
        pred: usize,
    },
    #[error("sentence {sentence}, token {token}: empty tag")]
    EmptyTag { sentence: usize, token: usize },
    #[error(
        "sentence {sentence}, token {token}: tag {tag:?} is not valid in strict IOB2 mode \
         (allowed prefixes: B, I, O); use the default mode for other schemes"
    )]
    InvalidStrictTag {
        sentence: usize,
        token: usize,
        tag: String,
    },
}

/// One entity: its type and token span `[start, end)` within its sentence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity {
    pub sentence: usize,
    pub kind: String,
    pub start: usize,
    /// Exclusive.
    pub end: usize,
}

/// Entity counts: correctly predicted, predicted, gold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub correct: usize,
    pub predicted: usize,
    pub gold: usize,
}

impl Counts {
    /// (precision, recall, F1) of these counts, seqeval's arithmetic.
    pub fn prf(&self) -> (f64, f64, f64) {
        prf(self.correct, self.predicted, self.gold)
    }

    fn add(&mut self, other: Counts) {
        self.correct += other.correct;
        self.predicted += other.predicted;
        self.gold += other.gold;
    }
}

/// Everything [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub scores: Scores,
    /// Pooled counts over all types (the micro average's sufficient statistics).
    pub total: Counts,
    /// Counts per entity type (types in gold or predictions).
    pub per_type: BTreeMap<String, Counts>,
    /// Per sentence `[correct, predicted, gold]` (see `train::metrics::SentenceCounts`).
    pub sentences: Vec<[u32; 3]>,
    /// Tokens scored and tokens whose predicted tag equals the gold tag (conlleval "accuracy").
    pub tokens: usize,
    pub tokens_correct: usize,
}

/// Precision, recall and F1 from counts exactly as seqeval computes them (0/0 → 0).
pub fn prf(correct: usize, predicted: usize, gold: usize) -> (f64, f64, f64) {
    let div = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let p = div(correct, predicted);
    let r = div(correct, gold);
    let denom = p + r;
    // seqeval: (1 + β²)·P·R / (β²·P + R) with the denominator replaced by 1 when it is 0.
    let f = if denom == 0.0 {
        0.0
    } else {
        2.0 * p * r / denom
    };
    (p, r, f)
}

/// Splits a tag like seqeval's `get_entities`: the first character is the chunk tag, the type
/// is what follows the first `-` after it (`'_'` when empty).
fn default_split(tag: &str) -> (char, &str) {
    let mut chars = tag.chars();
    let head = chars.next().unwrap_or('O');
    let rest = chars.as_str();
    // Python: chunk[1:].split('-', maxsplit=1)[-1] or '_'
    let ty = match rest.split_once('-') {
        Some((_, after)) => after,
        None => rest,
    };
    (head, if ty.is_empty() { "_" } else { ty })
}

fn end_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(prev_tag, 'E' | 'S')
        || (prev_tag == 'B' && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag == 'I' && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag != 'O' && prev_tag != '.' && prev_type != ty)
}

fn start_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (prev_tag == 'E' && matches!(tag, 'E' | 'I'))
        || (prev_tag == 'S' && matches!(tag, 'E' | 'I'))
        || (prev_tag == 'O' && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// seqeval's `get_entities` over the sentences joined with `O` separators (so chunks end at
/// sentence boundaries for well-formed tags). Entities are reported per sentence; an entity is
/// assigned to the sentence holding its first token.
fn default_entities<S: AsRef<str>, T: AsRef<[S]>>(sentences: &[T]) -> Vec<Entity> {
    // Offsets of each sentence in the flattened sequence (each sentence + one separator).
    let mut flat: Vec<&str> = Vec::new();
    let mut starts = Vec::with_capacity(sentences.len());
    for s in sentences {
        starts.push(flat.len());
        flat.extend(s.as_ref().iter().map(|t| t.as_ref()));
        flat.push("O");
    }
    let mut out = Vec::new();
    let mut prev_tag = 'O';
    let mut prev_type = "";
    let mut begin = 0usize;
    // Python iterates over `seq + ['O']`.
    for (i, chunk) in flat.iter().copied().chain(std::iter::once("O")).enumerate() {
        let (tag, ty) = default_split(chunk);
        if end_of_chunk(prev_tag, tag, prev_type, ty) {
            let (first, last) = (begin, i - 1);
            let sent = starts.partition_point(|&s| s <= first).saturating_sub(1);
            out.push(Entity {
                sentence: sent,
                kind: prev_type.to_string(),
                start: first - starts.get(sent).copied().unwrap_or(0),
                end: last + 1 - starts.get(sent).copied().unwrap_or(0),
            });
        }
        if start_of_chunk(prev_tag, tag, prev_type, ty) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = ty;
    }
    out
}

/// A token of seqeval's strict IOB2 scheme: prefix and type (`token[1:].strip('-') or '_'`).
#[derive(Clone, Copy)]
struct StrictToken<'a> {
    prefix: char,
    ty: &'a str,
}

impl<'a> StrictToken<'a> {
    fn parse(tag: &'a str) -> Option<Self> {
        let mut chars = tag.chars();
        let prefix = chars.next()?;
        if !matches!(prefix, 'B' | 'I' | 'O') {
            return None;
        }
        let ty = chars.as_str().trim_matches('-');
        Some(Self {
            prefix,
            ty: if ty.is_empty() { "_" } else { ty },
        })
    }

    const OUTSIDE: StrictToken<'static> = StrictToken {
        prefix: 'O',
        ty: "_",
    };

    /// IOB2 inside patterns: (B|I) → I of the same type.
    fn is_inside(&self, prev: &StrictToken) -> bool {
        self.prefix == 'I' && matches!(prev.prefix, 'B' | 'I') && prev.ty == self.ty
    }

    /// IOB2 end patterns (is `self` the token right after the end of a chunk ending at `prev`).
    fn is_end(&self, prev: &StrictToken) -> bool {
        match (prev.prefix, self.prefix) {
            ('I', 'O') | ('I', 'B') | ('B', 'O') | ('B', 'B') => true,
            ('I', 'I') | ('B', 'I') => prev.ty != self.ty,
            _ => false,
        }
    }
}

/// seqeval's `Tokens(..., scheme=IOB2).entities` for one sentence (tags already validated).
fn strict_sentence_entities(sentence: usize, toks: &[StrictToken], out: &mut Vec<Entity>) {
    let n = toks.len();
    let ext = |i: usize| if i < n { toks[i] } else { StrictToken::OUTSIDE };
    let mut i = 0;
    while i <= n {
        let token = ext(i);
        // Start pattern: any previous token, current B.
        if token.prefix == 'B' {
            let mut end = i + 1;
            let mut prev = token;
            while end <= n && ext(end).is_inside(&prev) {
                prev = ext(end);
                end += 1;
            }
            // The extended sequence ends with O, which is never inside, so end <= n here.
            if ext(end).is_end(&ext(end - 1)) {
                out.push(Entity {
                    sentence,
                    kind: token.ty.to_string(),
                    start: i,
                    end,
                });
            }
            i = end;
        } else {
            i += 1;
        }
    }
}

fn check_shapes<S: AsRef<str>, T: AsRef<[S]>>(gold: &[T], pred: &[T]) -> Result<(), MetricError> {
    if gold.len() != pred.len() {
        return Err(MetricError::SentenceCount {
            gold: gold.len(),
            pred: pred.len(),
        });
    }
    for (k, (g, p)) in gold.iter().zip(pred).enumerate() {
        let (g, p) = (g.as_ref(), p.as_ref());
        if g.len() != p.len() {
            return Err(MetricError::SentenceLength {
                sentence: k,
                gold: g.len(),
                pred: p.len(),
            });
        }
    }
    Ok(())
}

/// The entities of a list of tag sequences (one per sentence) in the given mode.
pub fn entities<S: AsRef<str>, T: AsRef<[S]>>(
    sentences: &[T],
    mode: Mode,
) -> Result<Vec<Entity>, MetricError> {
    for (k, s) in sentences.iter().enumerate() {
        for (t, tag) in s.as_ref().iter().enumerate() {
            let tag = tag.as_ref();
            if tag.is_empty() {
                return Err(MetricError::EmptyTag {
                    sentence: k,
                    token: t,
                });
            }
            if mode == Mode::Strict && StrictToken::parse(tag).is_none() {
                return Err(MetricError::InvalidStrictTag {
                    sentence: k,
                    token: t,
                    tag: tag.to_string(),
                });
            }
        }
    }
    Ok(match mode {
        Mode::Default => default_entities(sentences),
        Mode::Strict => {
            let mut out = Vec::new();
            for (k, s) in sentences.iter().enumerate() {
                let toks: Vec<StrictToken> = s
                    .as_ref()
                    .iter()
                    .map(|t| StrictToken::parse(t.as_ref()).expect("validated above"))
                    .collect();
                strict_sentence_entities(k, &toks, &mut out);
            }
            out
        }
    })
}

/// Scores predictions against gold tags (one tag sequence per sentence, equal lengths).
pub fn evaluate<S: AsRef<str>, T: AsRef<[S]>>(
    gold: &[T],
    pred: &[T],
    mode: Mode,
) -> Result<Evaluation, MetricError> {
    check_shapes(gold, pred)?;
    let gold_e = entities(gold, mode)?;
    let pred_e = entities(pred, mode)?;
    // seqeval compares sets of entities (duplicates cannot occur, but sets make it explicit).
    let gold_set: HashSet<&Entity> = gold_e.iter().collect();
    let pred_set: HashSet<&Entity> = pred_e.iter().collect();

    let mut per_type: BTreeMap<String, Counts> = BTreeMap::new();
    let mut sentences = vec![[0u32; 3]; gold.len()];
    for e in &gold_set {
        per_type.entry(e.kind.clone()).or_default().gold += 1;
        sentences[e.sentence][2] += 1;
    }
    for e in &pred_set {
        let c = per_type.entry(e.kind.clone()).or_default();
        c.predicted += 1;
        sentences[e.sentence][1] += 1;
        if gold_set.contains(e) {
            c.correct += 1;
            sentences[e.sentence][0] += 1;
        }
    }
    let mut total = Counts::default();
    let mut per_type_scores = BTreeMap::new();
    for (kind, c) in &per_type {
        total.add(*c);
        let (precision, recall, f1) = c.prf();
        per_type_scores.insert(
            kind.clone(),
            TypeScores {
                precision,
                recall,
                f1,
                support: c.gold,
            },
        );
    }
    let (precision, recall, f1) = total.prf();
    let mut tokens = 0;
    let mut tokens_correct = 0;
    for (g, p) in gold.iter().zip(pred) {
        for (a, b) in g.as_ref().iter().zip(p.as_ref()) {
            tokens += 1;
            tokens_correct += usize::from(a.as_ref() == b.as_ref());
        }
    }
    Ok(Evaluation {
        scores: Scores {
            precision,
            recall,
            f1,
            per_type: per_type_scores,
        },
        total,
        per_type,
        sentences,
        tokens,
        tokens_correct,
    })
}

/// Scores predictions against gold tags; see [`evaluate`] for the counts as well.
pub fn score<S: AsRef<str>, T: AsRef<[S]>>(
    gold: &[T],
    pred: &[T],
    mode: Mode,
) -> Result<Scores, MetricError> {
    Ok(evaluate(gold, pred, mode)?.scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sents(s: &[&str]) -> Vec<Vec<String>> {
        s.iter()
            .map(|x| x.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    fn spans(s: &[&str], mode: Mode) -> Vec<(usize, String, usize, usize)> {
        let mut v: Vec<_> = entities(&sents(s), mode)
            .unwrap()
            .into_iter()
            .map(|e| (e.sentence, e.kind, e.start, e.end))
            .collect();
        v.sort();
        v
    }

    fn e(s: usize, k: &str, a: usize, b: usize) -> (usize, String, usize, usize) {
        (s, k.to_string(), a, b)
    }

    #[test]
    fn default_mode_i_after_o_starts_a_chunk_strict_ignores_it() {
        assert_eq!(
            spans(&["O I-PER I-PER O"], Mode::Default),
            vec![e(0, "PER", 1, 3)]
        );
        assert_eq!(spans(&["O I-PER I-PER O"], Mode::Strict), vec![]);
    }

    #[test]
    fn type_switch_inside_a_chunk_splits_it_in_default_mode() {
        assert_eq!(
            spans(&["B-PER I-LOC I-LOC"], Mode::Default),
            vec![e(0, "LOC", 1, 3), e(0, "PER", 0, 1)]
        );
        // Strict: B-PER alone is an entity (B then I of another type ends it); I-LOC I-LOC is not.
        assert_eq!(
            spans(&["B-PER I-LOC I-LOC"], Mode::Strict),
            vec![e(0, "PER", 0, 1)]
        );
    }

    #[test]
    fn b_b_gives_two_chunks_in_both_modes() {
        for mode in [Mode::Default, Mode::Strict] {
            assert_eq!(
                spans(&["B-PER B-PER I-PER"], mode),
                vec![e(0, "PER", 0, 1), e(0, "PER", 1, 3)]
            );
        }
    }

    #[test]
    fn chunks_do_not_cross_sentence_boundaries() {
        for mode in [Mode::Default, Mode::Strict] {
            assert_eq!(
                spans(&["O B-LOC", "I-LOC O"], mode).first().cloned(),
                Some(e(0, "LOC", 1, 2))
            );
        }
        // In default mode the I-LOC opening the second sentence is a chunk of its own.
        assert_eq!(
            spans(&["O B-LOC", "I-LOC O"], Mode::Default),
            vec![e(0, "LOC", 1, 2), e(1, "LOC", 0, 1)]
        );
    }

    #[test]
    fn zero_over_zero_is_zero() {
        let s = score(&sents(&["O O"]), &sents(&["O O"]), Mode::Default).unwrap();
        assert_eq!((s.precision, s.recall, s.f1), (0.0, 0.0, 0.0));
        assert!(s.per_type.is_empty());
        // Predictions only: precision 0 (0 correct of 1), recall 0/0 → 0.
        let s = score(&sents(&["O O"]), &sents(&["B-PER O"]), Mode::Default).unwrap();
        assert_eq!((s.precision, s.recall, s.f1), (0.0, 0.0, 0.0));
        assert_eq!(s.per_type["PER"].support, 0);
    }

    #[test]
    fn seqeval_docstring_example() {
        // From seqeval's precision_recall_fscore_support docstring: micro (0.5, 0.5, 0.5).
        let gold = sents(&["O O O B-MISC I-MISC I-MISC O", "B-PER I-PER O"]);
        let pred = sents(&["O O B-MISC I-MISC I-MISC I-MISC O", "B-PER I-PER O"]);
        let ev = evaluate(&gold, &pred, Mode::Default).unwrap();
        assert_eq!(
            (ev.scores.precision, ev.scores.recall, ev.scores.f1),
            (0.5, 0.5, 0.5)
        );
        assert_eq!(ev.scores.per_type["MISC"].f1, 0.0);
        assert_eq!(ev.scores.per_type["PER"].f1, 1.0);
        assert_eq!(ev.sentences, vec![[0, 1, 1], [1, 1, 1]]);
        assert_eq!((ev.tokens, ev.tokens_correct), (10, 8));
    }

    #[test]
    fn f1_uses_precision_and_recall() {
        let (p, r, f) = prf(1, 3, 2);
        assert_eq!((p, r), (1.0 / 3.0, 0.5));
        assert!((f - 0.4).abs() < 1e-15);
    }

    #[test]
    fn type_parsing_matches_seqeval_corners() {
        // Default: type = text after the first '-' following the prefix; '_' when empty.
        assert_eq!(default_split("B-LOC-X"), ('B', "LOC-X"));
        assert_eq!(default_split("B-"), ('B', "_"));
        assert_eq!(default_split("O"), ('O', "_"));
        // Strict strips every leading/trailing '-'.
        assert_eq!(StrictToken::parse("B--PER-").unwrap().ty, "PER");
    }

    #[test]
    fn strict_mode_rejects_other_prefixes_and_lengths_must_match() {
        let err = score(&sents(&["S-PER"]), &sents(&["O"]), Mode::Strict).unwrap_err();
        assert!(matches!(err, MetricError::InvalidStrictTag { .. }), "{err}");
        // The default mode accepts IOBES tags like seqeval does.
        assert_eq!(spans(&["S-PER O"], Mode::Default), vec![e(0, "PER", 0, 1)]);
        let err = score(&sents(&["O O"]), &sents(&["O"]), Mode::Default).unwrap_err();
        assert!(matches!(err, MetricError::SentenceLength { .. }));
        let err = score(&sents(&["O"]), &sents(&["O", "O"]), Mode::Default).unwrap_err();
        assert!(matches!(err, MetricError::SentenceCount { .. }));
    }

    /// The committed cross-check against seqeval 1.2.2 (tools/gen_seqeval_cases.py).
    #[test]
    fn metric_matches_seqeval_cases() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/seqeval_cases.json");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 100);
        let tags = |v: &serde_json::Value| -> Vec<Vec<String>> {
            serde_json::from_value(v.clone()).unwrap()
        };
        let close = |a: f64, b: &serde_json::Value, what: &str, id: &serde_json::Value| {
            let b = b.as_f64().unwrap();
            assert!(
                (a - b).abs() < 1e-9,
                "case {id} {what}: primer {a} vs seqeval {b}"
            );
        };
        for case in cases {
            let (gold, pred, id) = (tags(&case["gold"]), tags(&case["pred"]), &case["id"]);
            for (mode, key) in [(Mode::Default, "default"), (Mode::Strict, "strict")] {
                let want = &case[key];
                let got = score(&gold, &pred, mode).unwrap();
                close(got.precision, &want["precision"], "precision", id);
                close(got.recall, &want["recall"], "recall", id);
                close(got.f1, &want["f1"], "f1", id);
                let want_types = want["per_type"].as_object().unwrap();
                let got_types: Vec<&String> = got.per_type.keys().collect();
                let want_names: Vec<&String> = want_types.keys().collect();
                assert_eq!(got_types, want_names, "case {id} {key} types");
                for (name, w) in want_types {
                    let g = &got.per_type[name];
                    close(g.precision, &w["precision"], "type precision", id);
                    close(g.recall, &w["recall"], "type recall", id);
                    close(g.f1, &w["f1"], "type f1", id);
                    assert_eq!(
                        g.support as u64,
                        w["support"].as_u64().unwrap(),
                        "case {id} support"
                    );
                }
            }
        }
    }
}
