//! The live display of `primer run`: on a terminal, an indicatif MultiProgress with the
//! overall count and ETA and one line per device slot (run, phase, step/total, loss);
//! otherwise plain lines, one per event, with progress at most every few seconds per slot.

use crate::progress::ProgressEvent;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a slot's progress is printed in plain mode.
const PLAIN_EVERY: Duration = Duration::from_secs(15);

struct SlotView {
    run: Option<String>,
    started: Instant,
    last_phase: String,
    last_print: Instant,
}

/// The display of one `primer run`.
pub struct Display {
    total: u64,
    finished: u64,
    failed: u64,
    bars: Option<(MultiProgress, ProgressBar, Vec<ProgressBar>)>,
    slots: Vec<SlotView>,
    slot_labels: Vec<String>,
}

impl Display {
    /// `total`: runs to execute; `slot_labels`: one per slot. Uses bars only when stdout is
    /// a terminal (and `plain` is false).
    pub fn new(total: usize, slot_labels: Vec<String>, plain: bool) -> Self {
        let now = Instant::now();
        let slots = slot_labels
            .iter()
            .map(|_| SlotView {
                run: None,
                started: now,
                last_phase: String::new(),
                last_print: now,
            })
            .collect();
        let bars = (!plain && std::io::stdout().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let overall = multi.add(ProgressBar::new(total as u64));
            overall.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} runs {msg} · elapsed {elapsed} · ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            overall.set_prefix("sweep");
            let style = ProgressStyle::with_template("  {prefix:>10} {wide_msg}").expect("valid template");
            let slot_bars = slot_labels
                .iter()
                .map(|l| {
                    let b = multi.add(ProgressBar::new(1));
                    b.set_style(style.clone());
                    b.set_prefix(l.clone());
                    b.set_message("idle");
                    b
                })
                .collect();
            overall.enable_steady_tick(Duration::from_millis(500));
            (multi, overall, slot_bars)
        });
        Self {
            total: total as u64,
            finished: 0,
            failed: 0,
            bars,
            slots,
            slot_labels,
        }
    }

    /// Prints a line above the bars (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some((multi, ..)) => {
                let _ = multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    fn count(&self) -> String {
        format!("[{}/{}]", self.finished, self.total)
    }

    pub fn started(&mut self, slot: usize, run: &str, attempt: u32) {
        let s = &mut self.slots[slot];
        s.run = Some(run.to_string());
        s.started = Instant::now();
        s.last_phase.clear();
        s.last_print = Instant::now();
        let retry = if attempt > 1 {
            format!(" (attempt {attempt})")
        } else {
            String::new()
        };
        match &self.bars {
            Some((_, _, bars)) => bars[slot].set_message(format!("{run}{retry} | starting")),
            None => println!(
                "{} start {run}{retry} on {}",
                self.count(),
                self.slot_labels[slot]
            ),
        }
    }

    pub fn progress(&mut self, slot: usize, e: &ProgressEvent) {
        let s = &mut self.slots[slot];
        let run = s.run.clone().unwrap_or_default();
        let loss = e.loss.map(|l| format!(" loss {l:.4}")).unwrap_or_default();
        let msg = e
            .message
            .as_ref()
            .map(|m| format!(" {m}"))
            .unwrap_or_default();
        let text = format!("{} {}/{}{loss}{msg}", e.phase, e.step, e.total);
        match &self.bars {
            Some((_, _, bars)) => bars[slot].set_message(format!("{run} | {text}")),
            None => {
                if e.phase != s.last_phase || s.last_print.elapsed() >= PLAIN_EVERY {
                    s.last_phase = e.phase.clone();
                    s.last_print = Instant::now();
                    println!("      {} {run}: {text}", self.slot_labels[slot]);
                }
            }
        }
    }

    /// A run ended: `Ok` or its error; `will_retry` when it goes back to the queue.
    pub fn finished(&mut self, slot: usize, result: Result<(), &str>, will_retry: bool, log: &str) {
        let run = self.slots[slot].run.take().unwrap_or_default();
        let secs = self.slots[slot].started.elapsed().as_secs_f64();
        if !will_retry {
            self.finished += 1;
        }
        let line = match result {
            Ok(()) => format!("{} done {run} ({secs:.1} s)", self.count()),
            Err(e) if will_retry => format!(
                "{} FAILED {run} (will retry): {e} — log: {log}",
                self.count()
            ),
            Err(e) => {
                self.failed += 1;
                format!("{} FAILED {run}: {e} — log: {log}", self.count())
            }
        };
        match &self.bars {
            Some((multi, overall, bars)) => {
                if !will_retry {
                    overall.inc(1);
                }
                if self.failed > 0 {
                    overall.set_message(format!("({} failed)", self.failed));
                }
                bars[slot].set_message("idle");
                if result.is_err() {
                    let _ = multi.println(line);
                }
            }
            None => println!("{line}"),
        }
    }

    /// A run will not execute (its dependency failed).
    pub fn skipped(&mut self, run: &str, reason: &str) {
        self.finished += 1;
        let line = format!("{} NOT RUNNABLE {run}: {reason}", self.count());
        match &self.bars {
            Some((multi, overall, _)) => {
                overall.inc(1);
                let _ = multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    pub fn tick(&self) {
        if let Some((_, _, bars)) = &self.bars {
            for b in bars {
                b.tick();
            }
        }
    }

    /// Removes the bars (before the final summary).
    pub fn finish(&mut self) {
        if let Some((multi, overall, bars)) = self.bars.take() {
            overall.finish();
            for b in bars {
                b.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }
}
