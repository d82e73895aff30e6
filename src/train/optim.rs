//! AdamW with torch semantics and a linear schedule (being written).
