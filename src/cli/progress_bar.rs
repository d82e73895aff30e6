//! Terminal rendering of library progress events: an indicatif bar when stderr is a terminal,
//! plain tracing lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use primer::progress::{LogProgress, ProgressEvent, ProgressSink};
use std::io::IsTerminal;
use std::sync::Mutex;

/// A [`ProgressSink`] for interactive commands.
pub struct TerminalProgress {
    bar: Option<ProgressBar>,
    phase: Mutex<String>,
}

impl TerminalProgress {
    pub fn new(title: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {msg:<28} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(title.to_string());
            bar
        });
        Self {
            bar,
            phase: Mutex::new(String::new()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl ProgressSink for TerminalProgress {
    fn report(&self, e: ProgressEvent) {
        let Some(bar) = &self.bar else {
            LogProgress.report(e);
            return;
        };
        let mut phase = self.phase.lock().expect("progress lock");
        if *phase != e.phase {
            *phase = e.phase.clone();
            bar.reset_eta();
        }
        bar.set_length(e.total);
        bar.set_position(e.step);
        let mut msg = e.phase.clone();
        if let Some(l) = e.loss {
            msg.push_str(&format!(" loss {l:.4}"));
        }
        if let Some(m) = &e.message {
            msg.push(' ');
            msg.push_str(m);
        }
        bar.set_message(msg);
    }
}
