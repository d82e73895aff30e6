//! Where a training step's time goes: process-wide wall-time accounting per (op kind, shape),
//! for `primer bench --profile`.
//!
//! The model's op layer opens a [`timed`] scope around each of its leaf computations (the
//! GEMMs, the fused attention core, layer norm, GELU, …). Outside a recording ([`start`] … [`finish`]), a scope
//! costs one relaxed atomic load and opens nothing. While recording, only the outermost scope
//! open anywhere in the process counts: the CPU kernels parallelise inside an op and run
//! synchronously, so the outermost scope's wall time is the op's, and nested scopes (an op
//! built from other instrumented ops, or one running on a worker of another) are neither
//! counted twice nor counted in parallel. Concurrent callers (e.g. `parallel::map_batches`)
//! would therefore see only one of their ops at a time counted; the profiled steps run their
//! ops from one thread.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What an op computes, for grouping the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// A matrix product; shape `[m, k, n]` (`m×k · k×n`).
    Gemm,
    /// The fused attention core (scores, softmax, weighting; forward or backward), with its
    /// per-head products inside; shape `[batch, heads, query rows, keys, head dim]`.
    Attention,
    LayerNorm,
    Gelu,
    /// A stand-alone softmax (the attention core's is inside [`OpKind::Attention`]).
    Softmax,
    /// The masked cross-entropy's forward (log-softmax and the weighted sum).
    Loss,
    /// Word + position + token-type embeddings and their layer norm.
    Embeddings,
    /// The outer optimiser's (AdamW) update of every parameter.
    Optimiser,
    /// The inner loop's SGD update of the fast weights.
    InnerSgd,
}

impl OpKind {
    /// A short lower-case name for tables.
    pub fn label(self) -> &'static str {
        match self {
            OpKind::Gemm => "GEMM",
            OpKind::Attention => "attention core",
            OpKind::LayerNorm => "layer norm",
            OpKind::Gelu => "GELU",
            OpKind::Softmax => "softmax",
            OpKind::Loss => "cross-entropy loss",
            OpKind::Embeddings => "embeddings",
            OpKind::Optimiser => "optimiser (AdamW)",
            OpKind::InnerSgd => "inner SGD update",
        }
    }
}

/// The totals of one (kind, shape).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OpTotal {
    pub calls: u64,
    pub time: Duration,
    /// Floating-point operations the calls did, where the op states them (0 otherwise).
    pub flops: f64,
}

/// Everything recorded, by (kind, shape).
pub type OpTable = BTreeMap<(OpKind, Vec<usize>), OpTotal>;

/// One accounting: the switch, the open-scope count and the table. The process has one
/// ([`GLOBAL`]); the unit tests make their own so that other tests' ops cannot mix in.
pub(crate) struct OpClock {
    on: AtomicBool,
    open: AtomicUsize,
    table: Mutex<OpTable>,
}

static GLOBAL: OpClock = OpClock::new();

impl OpClock {
    pub(crate) const fn new() -> Self {
        OpClock {
            on: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            table: Mutex::new(BTreeMap::new()),
        }
    }

    #[inline]
    pub(crate) fn timed(&self, kind: OpKind, shape: &[usize], flops: f64) -> Option<OpScope<'_>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        let outermost = self.open.fetch_add(1, Ordering::AcqRel) == 0;
        Some(OpScope {
            clock: self,
            key: outermost.then(|| (kind, shape.to_vec())),
            flops,
            start: Instant::now(),
        })
    }

    pub(crate) fn start(&self) {
        self.table
            .lock()
            .expect("no panic while holding it")
            .clear();
        self.on.store(true, Ordering::Relaxed);
    }

    pub(crate) fn finish(&self) -> OpTable {
        self.on.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.table.lock().expect("no panic while holding it"))
    }
}

/// An open scope; its time is added when it drops.
#[must_use = "the op is timed until the scope drops"]
pub struct OpScope<'c> {
    clock: &'c OpClock,
    /// `None` when nested inside another open scope (not counted).
    key: Option<(OpKind, Vec<usize>)>,
    flops: f64,
    start: Instant,
}

impl Drop for OpScope<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let dt = self.start.elapsed();
            let mut table = self.clock.table.lock().expect("no panic while holding it");
            let e = table.entry(key).or_default();
            e.calls += 1;
            e.time += dt;
            e.flops += self.flops;
        }
        self.clock.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Times the op of `kind` on `shape` doing `flops` until the returned scope drops — only while
/// recording ([`start`]); otherwise one relaxed atomic load and `None`.
#[inline]
pub fn timed(kind: OpKind, shape: &[usize], flops: f64) -> Option<OpScope<'static>> {
    GLOBAL.timed(kind, shape, flops)
}

/// The FLOPs of an `m×k · k×n` product (one multiply and one add per term).
pub fn gemm_flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * m as f64 * k as f64 * n as f64
}

/// Starts recording (from an empty table). One recording at a time in a process: the
/// bench's, around the steps it profiles.
pub fn start() {
    GLOBAL.start()
}

/// Stops recording and returns what the ops took since [`start`].
pub fn finish() -> OpTable {
    GLOBAL.finish()
}

/// The CPU time this thread has used, in seconds (`None` where the clock cannot be read): the
/// clock of the bench's peak probe and of per-product timings, which count a thread's work
/// whatever else shares its core.
pub(crate) fn thread_cpu_seconds() -> Option<f64> {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU time all of this process's threads have used, in seconds (`None` where the clock
/// cannot be read).
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing_and_on_counts_only_the_outermost_scope() {
        let clock = OpClock::new();
        assert!(clock.timed(OpKind::Gemm, &[1, 2, 3], 12.0).is_none());
        clock.start();
        for _ in 0..2 {
            let _outer = clock.timed(OpKind::Attention, &[1, 2, 4, 4, 8], 100.0);
            let _inner = clock.timed(OpKind::Gemm, &[4, 8, 4], gemm_flops(4, 8, 4));
        }
        drop(clock.timed(OpKind::Gemm, &[4, 8, 4], gemm_flops(4, 8, 4)));
        let table = clock.finish();
        assert_eq!(table.len(), 2, "{table:?}");
        let att = table[&(OpKind::Attention, vec![1, 2, 4, 4, 8])];
        assert_eq!((att.calls, att.flops), (2, 200.0));
        let gemm = table[&(OpKind::Gemm, vec![4, 8, 4])];
        assert_eq!((gemm.calls, gemm.flops), (1, 256.0));
        // Off again, and the next recording starts empty.
        assert!(clock.timed(OpKind::Gemm, &[1], 0.0).is_none());
        clock.start();
        assert!(clock.finish().is_empty());
    }

    #[test]
    fn nested_scopes_on_other_threads_are_not_counted() {
        let clock = OpClock::new();
        clock.start();
        {
            let _outer = clock.timed(OpKind::LayerNorm, &[8, 4], 0.0);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _worker = clock.timed(OpKind::Gemm, &[1, 1, 1], 2.0);
                });
            });
        }
        let table = clock.finish();
        assert_eq!(
            table.keys().map(|k| k.0).collect::<Vec<_>>(),
            [OpKind::LayerNorm]
        );
    }

    #[test]
    fn gemm_flops_count_a_multiply_and_an_add_per_term() {
        assert_eq!(gemm_flops(1024, 384, 1536), 2.0 * 1024.0 * 384.0 * 1536.0);
        assert_eq!(gemm_flops(0, 5, 5), 0.0);
    }
}
