//! The NER label set: an ordered list of tags with tag ↔ id maps.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The 7 WikiAnn tags in the order of the HF `wikiann` dataset's `ner_tags` ids.
pub const WIKIANN_TAGS: [&str; 7] = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"];

/// The tag schemes primer reads, the one place their rules live: IOB2 (`O`, `B-X`, `I-X`:
/// WikiAnn's, and all the data readers take) and IOBES (IOB2 plus `E-X` and `S-X`, which
/// `primer score` also takes, as seqeval's default mode scores them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagScheme {
    Iob2,
    Iobes,
}

impl TagScheme {
    /// Whether `tag` is `O` or a prefix of the scheme, a dash and a non-empty type.
    pub fn accepts(self, tag: &str) -> bool {
        let prefixes: &[&str] = match self {
            TagScheme::Iob2 => &["B-", "I-"],
            TagScheme::Iobes => &["B-", "I-", "E-", "S-"],
        };
        tag == "O"
            || prefixes
                .iter()
                .any(|p| tag.strip_prefix(p).is_some_and(|ty| !ty.is_empty()))
    }

    /// The scheme's tags, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            TagScheme::Iob2 => "IOB2 tags: O, B-TYPE, I-TYPE",
            TagScheme::Iobes => "IOB2/IOBES tags: O, B-TYPE, I-TYPE, E-TYPE, S-TYPE",
        }
    }
}

/// An ordered set of tags; a tag's id is its position. Serialises as the list of tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    tags: Vec<String>,
    ids: HashMap<String, usize>,
}

impl Default for LabelSet {
    /// The WikiAnn tags ([`WIKIANN_TAGS`]).
    fn default() -> Self {
        Self::wikiann()
    }
}

impl LabelSet {
    /// The WikiAnn tags ([`WIKIANN_TAGS`]): O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC.
    pub fn wikiann() -> Self {
        Self::new(WIKIANN_TAGS.iter().map(|t| t.to_string())).expect("distinct tags")
    }

    /// A label set with the given tags in this order; None when a tag repeats.
    pub fn new(tags: impl IntoIterator<Item = String>) -> Option<Self> {
        let tags: Vec<String> = tags.into_iter().collect();
        let mut ids = HashMap::with_capacity(tags.len());
        for (i, t) in tags.iter().enumerate() {
            if ids.insert(t.clone(), i).is_some() {
                return None;
            }
        }
        Some(Self { tags, ids })
    }

    /// The tags seen in `tags`: the WikiAnn tags when they cover them all (so the usual case
    /// keeps the standard ids); otherwise `O` first, then the others sorted by entity type and
    /// with `B-` before `I-` (a deterministic order independent of file order).
    pub fn from_tags<'a>(tags: impl IntoIterator<Item = &'a str>) -> Self {
        let wikiann = Self::wikiann();
        let mut seen: Vec<&str> = tags.into_iter().collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.iter().all(|t| wikiann.contains(t)) {
            return wikiann;
        }
        let key = |t: &str| -> (u8, String, String) {
            if t == "O" {
                return (0, String::new(), String::new());
            }
            match t.split_once('-') {
                Some((p, ty)) => (1, ty.to_string(), p.to_string()),
                None => (1, t.to_string(), String::new()),
            }
        };
        let mut all: Vec<String> = seen.iter().map(|t| t.to_string()).collect();
        if !all.iter().any(|t| t == "O") {
            all.push("O".to_string());
        }
        all.sort_by_key(|t| key(t));
        Self::new(all).expect("deduplicated")
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The tags in id order.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    pub fn id(&self, tag: &str) -> Option<usize> {
        self.ids.get(tag).copied()
    }

    /// The tag of an id; panics when out of range (ids come from this set).
    pub fn tag(&self, id: usize) -> &str {
        &self.tags[id]
    }

    pub fn contains(&self, tag: &str) -> bool {
        self.ids.contains_key(tag)
    }

    /// The id of `O` (the tag given to words the model never saw).
    pub fn outside_id(&self) -> Option<usize> {
        self.id("O")
    }
}

impl Serialize for LabelSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.tags.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tags = Vec::<String>::deserialize(d)?;
        Self::new(tags).ok_or_else(|| serde::de::Error::custom("label set has a repeated tag"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_schemes_accept_their_prefixes_only() {
        for tag in ["O", "B-PER", "I-LOC", "B-MISC_X"] {
            assert!(
                TagScheme::Iob2.accepts(tag) && TagScheme::Iobes.accepts(tag),
                "{tag}"
            );
        }
        for tag in ["E-PER", "S-LOC"] {
            assert!(
                !TagScheme::Iob2.accepts(tag) && TagScheme::Iobes.accepts(tag),
                "{tag}"
            );
        }
        for tag in ["Q-PER", "B-", "PER", "o", "B_PER", ""] {
            assert!(
                !TagScheme::Iob2.accepts(tag) && !TagScheme::Iobes.accepts(tag),
                "{tag}"
            );
        }
    }

    #[test]
    fn wikiann_order_and_ids() {
        let l = LabelSet::default();
        assert_eq!(l.len(), 7);
        assert_eq!(l.id("B-ORG"), Some(3));
        assert_eq!(l.tag(6), "I-LOC");
        assert_eq!(l.outside_id(), Some(0));
        assert_eq!(l.id("B-MISC"), None);
    }

    #[test]
    fn from_tags_keeps_wikiann_ids_or_orders_deterministically() {
        assert_eq!(LabelSet::from_tags(["B-LOC", "O"]), LabelSet::wikiann());
        let l = LabelSet::from_tags(["I-MISC", "B-PER", "B-MISC", "O", "I-PER"]);
        assert_eq!(l.tags(), ["O", "B-MISC", "I-MISC", "B-PER", "I-PER"]);
        let l = LabelSet::from_tags(["B-X"]);
        assert_eq!(l.tags(), ["O", "B-X"]);
    }

    #[test]
    fn serde_round_trip_and_duplicates_rejected() {
        let l = LabelSet::wikiann();
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<LabelSet>(&s).unwrap(), l);
        assert!(serde_json::from_str::<LabelSet>(r#"["O","O"]"#).is_err());
    }
}
