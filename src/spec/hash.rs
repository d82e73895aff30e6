//! Content addressing of runs: a run's identity is the SHA-256 of the canonical JSON of its
//! fully resolved spec (object keys sorted, no whitespace), so equal specs get equal ids in
//! every sweep and every program run, and any changed setting gives a different id.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Length of a run id in hex digits (64 bits: collisions are not a concern at sweep sizes).
pub const ID_LEN: usize = 16;

/// Canonical JSON text of `value`: keys sorted at every level, compact separators, numbers
/// as serde_json prints them (shortest round-trip form for floats).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            // Sort explicitly: serde_json keeps insertion order when its `preserve_order`
            // feature is enabled by any crate in the build.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The id of a value: the first [`ID_LEN`] hex digits of SHA-256 of its canonical JSON.
pub fn content_id(value: &Value) -> String {
    let digest = Sha256::digest(canonical_json(value).as_bytes());
    let mut id = hex::encode(digest);
    id.truncate(ID_LEN);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, 2.5, "x"], "x": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,2.5,"x"]},"b":1}"#
        );
    }

    #[test]
    fn content_id_is_pinned() {
        // sha256 of the canonical bytes {"a":1,"b":[0.03,"x"]}; pinned so that ids stay
        // stable across releases (a changed id would orphan every stored run).
        assert_eq!(
            content_id(&json!({"b": [0.03, "x"], "a": 1})),
            "abf713084853cefc"
        );
    }
}
