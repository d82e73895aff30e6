//! Progress events emitted by long-running work (fine-tuning, priming). The CLI renders them
//! with indicatif; a run executed by the sweep orchestrator prints them as JSON lines on stdout,
//! prefixed with [`PROGRESS_PREFIX`], and the orchestrator parses them for its live display.

use serde::{Deserialize, Serialize};

/// Marks a progress line in a child process's stdout.
pub const PROGRESS_PREFIX: &str = "@@primer-progress ";

/// One progress update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// Phase name: "tokenize", "cache", "train", "eval", "prime", ...
    pub phase: String,
    pub step: u64,
    pub total: u64,
    /// Most recent training (or query) loss, if any.
    pub loss: Option<f64>,
    /// Free-form short message (e.g. "epoch 2/3 dev F1 0.71").
    pub message: Option<String>,
}

impl ProgressEvent {
    pub fn new(phase: &str, step: u64, total: u64) -> Self {
        Self {
            phase: phase.to_string(),
            step,
            total,
            loss: None,
            message: None,
        }
    }

    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = Some(loss);
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The line a child process prints.
    pub fn to_line(&self) -> String {
        format!(
            "{PROGRESS_PREFIX}{}",
            serde_json::to_string(self).expect("serialisable")
        )
    }

    /// Parses a line printed by [`ProgressEvent::to_line`]; None for any other line.
    pub fn parse_line(line: &str) -> Option<Self> {
        serde_json::from_str(line.strip_prefix(PROGRESS_PREFIX)?).ok()
    }
}

/// Receives progress events.
pub trait ProgressSink: Send + Sync {
    fn report(&self, event: ProgressEvent);
}

/// Discards every event.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn report(&self, _event: ProgressEvent) {}
}

/// Prints each event as a JSON line on stdout (used when running under the orchestrator).
pub struct JsonLinesProgress;

impl ProgressSink for JsonLinesProgress {
    fn report(&self, event: ProgressEvent) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", event.to_line());
        let _ = out.flush();
    }
}

/// Logs each event through `tracing` (plain line-by-line output).
pub struct LogProgress;

impl ProgressSink for LogProgress {
    fn report(&self, e: ProgressEvent) {
        match (e.loss, &e.message) {
            (Some(l), Some(m)) => {
                tracing::info!("{} {}/{} loss {l:.4} {m}", e.phase, e.step, e.total)
            }
            (Some(l), None) => tracing::info!("{} {}/{} loss {l:.4}", e.phase, e.step, e.total),
            (None, Some(m)) => tracing::info!("{} {}/{} {m}", e.phase, e.step, e.total),
            (None, None) => tracing::info!("{} {}/{}", e.phase, e.step, e.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trip() {
        let e = ProgressEvent::new("train", 3, 10).with_loss(0.5);
        assert_eq!(ProgressEvent::parse_line(&e.to_line()), Some(e));
        assert_eq!(ProgressEvent::parse_line("hello"), None);
    }
}
