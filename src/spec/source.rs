//! A sweep file's text parsed into a small tree that keeps the byte span of every key and
//! value, so that semantic checks made after parsing can still say "file:line:column: key".

use super::error::SpecError;
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// The text of a sweep file and its name (used in every error message).
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::ReadSweep {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    pub fn from_text(path: &Path, text: &str) -> Self {
        Self {
            path: path.to_path_buf(),
            text: text.to_string(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    /// An error located at `span`.
    pub fn error(&self, span: &Range<usize>, message: impl Into<String>) -> SpecError {
        let (line, column) = self.line_col(span.start);
        SpecError::Invalid {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Parses the text into a spanned tree.
    pub fn parse(&self) -> Result<Node, SpecError> {
        let table = DeTable::parse(&self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            self.error(&span, format!("invalid TOML: {}", e.message()))
        })?;
        let span = table.span();
        convert_table(self, table.get_ref(), span)
    }
}

/// One value of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Range<usize>,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Node>),
    /// Entries in the order they appear in the file.
    Table(Vec<Entry>),
}

/// Flattens nested tables into dotted leaf keys (`finetune = { lr = 1 }` and
/// `"finetune.lr" = 1` are the same key). The span is the leaf key's.
pub fn flatten<'a>(
    prefix: &str,
    entries: &'a [Entry],
    out: &mut Vec<(String, Range<usize>, &'a Node)>,
) {
    for e in entries {
        let key = if prefix.is_empty() {
            e.key.clone()
        } else {
            format!("{prefix}.{}", e.key)
        };
        match &e.value.kind {
            NodeKind::Table(t) => flatten(&key, t, out),
            _ => out.push((key, e.key_span.clone(), &e.value)),
        }
    }
}

/// A key of a table with its span and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub value: Node,
}

impl Node {
    pub fn as_table(&self) -> Option<&[Entry]> {
        match &self.kind {
            NodeKind::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The TOML type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Str(_) => "string",
            NodeKind::Int(_) => "integer",
            NodeKind::Float(_) => "float",
            NodeKind::Bool(_) => "boolean",
            NodeKind::Array(_) => "array",
            NodeKind::Table(_) => "table",
        }
    }

    /// The value as JSON (tables keep their keys; the order does not matter to serde).
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Int(i) => Value::from(*i),
            // Non-finite floats were rejected while converting.
            NodeKind::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Array(a) => Value::Array(a.iter().map(Node::to_json).collect()),
            NodeKind::Table(t) => Value::Object(
                t.iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

fn convert_table(src: &Source, table: &DeTable<'_>, span: Range<usize>) -> Result<Node, SpecError> {
    let mut entries = Vec::with_capacity(table.len());
    for (k, v) in table.iter() {
        entries.push(Entry {
            key: k.get_ref().to_string(),
            key_span: k.span(),
            value: convert_value(src, v.get_ref(), v.span())?,
        });
    }
    // toml's map is sorted by key; the declaration order matters (settings, axes).
    entries.sort_by_key(|e| e.key_span.start);
    Ok(Node {
        span,
        kind: NodeKind::Table(entries),
    })
}

fn convert_value(src: &Source, value: &DeValue<'_>, span: Range<usize>) -> Result<Node, SpecError> {
    let kind = match value {
        DeValue::String(s) => NodeKind::Str(s.to_string()),
        DeValue::Integer(i) => NodeKind::Int(
            i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| src.error(&span, format!("integer {i} does not fit in 64 bits")))?,
        ),
        DeValue::Float(f) => {
            let x: f64 = f
                .as_str()
                .parse()
                .map_err(|_| src.error(&span, format!("invalid float {f}")))?;
            if !x.is_finite() {
                return Err(src.error(&span, format!("{f} is not a finite number")));
            }
            NodeKind::Float(x)
        }
        DeValue::Boolean(b) => NodeKind::Bool(*b),
        DeValue::Datetime(_) => {
            return Err(src.error(&span, "dates and times are not valid in a sweep file"));
        }
        DeValue::Array(a) => NodeKind::Array(
            a.iter()
                .map(|v| convert_value(src, v.get_ref(), v.span()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => return convert_table(src, t, span),
    };
    Ok(Node { span, kind })
}

/// Levenshtein distance (for "did you mean" suggestions).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate nearest to `key`, if it is plausibly a typo of it.
pub fn nearest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let best = candidates
        .into_iter()
        .map(|c| (edit_distance(key, c), c))
        .min_by_key(|(d, _)| *d)?;
    (best.0 <= (key.chars().count() / 2).max(2)).then_some(best.1)
}

/// Values equal for the purposes of exclude rules, zip filtering and report selections (here,
/// not in `file`, so that `report` can use it without `file` and `report` importing each other): numbers compare as
/// numbers (1 == 1.0), everything else structurally.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_give_lines_and_declaration_order() {
        let src = Source::from_text(
            Path::new("x.toml"),
            "b = 1\n\n[t]\nz = \"s\"\na = [1.5, 2]\n",
        );
        let root = src.parse().unwrap();
        let t = root.as_table().unwrap();
        assert_eq!(t[0].key, "b");
        assert_eq!(t[1].key, "t");
        let inner = t[1].value.as_table().unwrap();
        assert_eq!(inner[0].key, "z", "declaration order, not sorted");
        assert_eq!(src.line_col(inner[1].key_span.start), (5, 1));
        assert_eq!(inner[1].value.to_json(), serde_json::json!([1.5, 2]));
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let src = Source::from_text(Path::new("bad.toml"), "a = 1\nb = = 2\n");
        let err = src.parse().unwrap_err().to_string();
        assert!(err.starts_with("bad.toml:2:"), "{err}");
    }

    #[test]
    fn nearest_suggests_typos_only() {
        let c = ["finetune.lr", "finetune.epochs", "prime.inner_steps"];
        assert_eq!(nearest("finetune.lrr", c), Some("finetune.lr"));
        assert_eq!(nearest("prime.inner_step", c), Some("prime.inner_steps"));
        assert_eq!(nearest("completely.different", c), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
