//! The run store: one directory per run, `<store>/<kind>-<id>/`, holding `spec.json`,
//! `status.json` (state, pid, attempts, error, timestamps), `log.txt`, and the result —
//! `metrics.json` for fine-tuning, `checkpoint/` for priming. A run is done exactly when its
//! result exists (results are written atomically, so a result that exists is complete).
//! One orchestrator at a time owns a store, through an advisory lock on `<store>/.lock`.

mod error;
mod observe;

pub use error::StoreError;
pub use observe::{ObservedRun, observe};

use crate::fsutil::{read_json, write_json_atomic};
use crate::spec::plan::{PlannedRun, RunKind, RunSpec};
use crate::train::FinetuneMetrics;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The names inside a run directory, each written once here (the report and the Slurm backend
/// read the same files).
pub mod layout {
    /// The resolved spec the run's id hashes.
    pub const SPEC: &str = "spec.json";
    /// [`super::RunStatus`].
    pub const STATUS: &str = "status.json";
    /// The child's stdout and stderr, one header per attempt.
    pub const LOG: &str = "log.txt";
    /// A priming run's result: the primed checkpoint folder.
    pub const CHECKPOINT: &str = "checkpoint";
    /// A fine-tuning run's result.
    pub const METRICS: &str = crate::train::finetune::METRICS_FILE;
    /// A primed checkpoint's loss (and dev) curves, kept beside `status.json` when the
    /// checkpoint is collected.
    pub const CURVES: &str = crate::prime::run::CURVES_FILE;
}

/// Lifecycle state recorded in `status.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Pending,
    Running,
    Done,
    Failed,
    /// A priming run whose checkpoint was garbage-collected (its curves are kept).
    Collected,
}

/// Contents of `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub state: RunState,
    /// The orchestrator process responsible for the run while it is running.
    pub pid: Option<u32>,
    /// The child process executing the run.
    #[serde(default)]
    pub child_pid: Option<u32>,
    /// Attempts that ran to an end (success or failure) so far, over all orchestrator
    /// invocations: one stopped by an interrupt, or by its orchestrator's end, is not counted,
    /// so "failed after N attempts" matches `--retries`.
    pub attempts: u32,
    /// The last error (failed runs) or note (e.g. "stale: ...").
    pub error: Option<String>,
    /// The device slot of the last attempt.
    #[serde(default)]
    pub slot: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub updated_at: u64,
}

impl RunStatus {
    pub fn new() -> Self {
        let now = now_s();
        Self {
            state: RunState::Pending,
            pid: None,
            child_pid: None,
            attempts: 0,
            error: None,
            slot: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
        }
    }
}

impl Default for RunStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the store says about a run, as shown by `primer plan` / `primer status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Observed {
    Done,
    Running,
    Failed,
    /// Recorded as running, but its orchestrator is gone: it will be rerun.
    Stale,
    Pending,
}

impl Observed {
    pub fn as_str(self) -> &'static str {
        match self {
            Observed::Done => "done",
            Observed::Running => "running",
            Observed::Failed => "failed",
            Observed::Stale => "stale",
            Observed::Pending => "pending",
        }
    }
}

/// A run store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn run_dir(&self, run: &PlannedRun) -> PathBuf {
        self.root.join(run.dir_name())
    }

    /// The primed checkpoint folder of a priming run with id `id`.
    pub fn checkpoint_dir(&self, prime_id: &str) -> PathBuf {
        self.root
            .join(format!("prime-{prime_id}"))
            .join(layout::CHECKPOINT)
    }

    /// Creates the run directory and writes `spec.json` (once; it never changes).
    pub fn prepare(&self, run: &PlannedRun) -> Result<PathBuf, StoreError> {
        let dir = self.run_dir(run);
        let spec = dir.join(layout::SPEC);
        if !spec.exists() {
            write_json_atomic(&spec, &run.spec)?;
        }
        Ok(dir)
    }

    pub fn read_status(dir: &Path) -> Option<RunStatus> {
        read_json(&dir.join(layout::STATUS)).ok()
    }

    pub fn write_status(dir: &Path, status: &RunStatus) -> Result<(), StoreError> {
        let mut s = status.clone();
        s.updated_at = now_s();
        write_json_atomic(&dir.join(layout::STATUS), &s)?;
        Ok(())
    }

    /// Reads, modifies and writes `status.json` (creating it when absent).
    pub fn update_status(
        dir: &Path,
        f: impl FnOnce(&mut RunStatus),
    ) -> Result<RunStatus, StoreError> {
        let mut s = Self::read_status(dir).unwrap_or_default();
        f(&mut s);
        Self::write_status(dir, &s)?;
        Ok(s)
    }

    /// Whether the run's result exists (and, for fine-tuning, parses).
    pub fn is_done(kind: RunKind, dir: &Path) -> bool {
        match kind {
            RunKind::Finetune => Self::read_metrics(dir).is_some(),
            RunKind::Prime => dir.join(layout::CHECKPOINT).is_dir(),
        }
    }

    pub fn read_metrics(dir: &Path) -> Option<FinetuneMetrics> {
        read_json(&dir.join(layout::METRICS)).ok()
    }

    /// The state of a run as seen from outside. `store_locked`: whether an orchestrator
    /// currently holds the store (a "running" run without one is stale).
    pub fn observe(kind: RunKind, dir: &Path, store_locked: bool) -> Observed {
        if Self::is_done(kind, dir) {
            return Observed::Done;
        }
        match Self::read_status(dir).map(|s| (s.state, s.pid)) {
            Some((RunState::Running, pid)) => {
                if store_locked && pid.is_some_and(process_alive) {
                    Observed::Running
                } else {
                    Observed::Stale
                }
            }
            Some((RunState::Failed, _)) => Observed::Failed,
            // Its checkpoint was collected after every dependent finished.
            Some((RunState::Collected, _)) => Observed::Done,
            _ => Observed::Pending,
        }
    }

    /// Reads a run directory's spec (as written by [`Store::prepare`]) and checks that it
    /// hashes to the id in the directory name, so that a hand-edited spec is not run under
    /// the wrong identity.
    pub fn read_spec(dir: &Path) -> Result<RunSpec, StoreError> {
        let spec: RunSpec = read_json(&dir.join(layout::SPEC))?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name != spec.dir_name() {
            return Err(StoreError::BadRun {
                dir: dir.to_path_buf(),
                message: format!(
                    "spec.json hashes to {} but the directory is {name}: the spec was edited; remove the directory and rerun the sweep",
                    spec.dir_name()
                ),
            });
        }
        Ok(spec)
    }

    /// Takes the store's lock, or fails naming the orchestrator that holds it.
    pub fn lock(&self, what: &str) -> Result<StoreLock, StoreError> {
        StoreLock::acquire(&self.root, what)
    }

    /// Whether some live process holds the store's lock (without taking it).
    pub fn is_locked(&self) -> bool {
        let path = self.root.join(LOCK_FILE);
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            return false;
        };
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc == 0 {
            // We got it: nobody holds it. Closing the file releases it again.
            false
        } else {
            std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
        }
    }
}

use crate::fsutil::process_alive;

const LOCK_FILE: &str = ".lock";

/// An exclusive advisory lock (flock) on `<store>/.lock`, held while the value lives. The
/// kernel releases it when the process dies, so a killed orchestrator never leaves the store
/// locked.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl StoreLock {
    fn acquire(root: &Path, what: &str) -> Result<Self, StoreError> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(root).map_err(StoreError::io(root))?;
        let path = root.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        // SAFETY: flock on a file descriptor we own (Rust opens it close-on-exec, so child
        // processes do not inherit the lock).
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Locked {
                    store: root.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown process".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            return Err(StoreError::Io { path, source: err });
        }
        // The lock file is the lock itself, so it is rewritten in place rather than replaced
        // by an atomic rename (which would create a new, unlocked file). Its text is only a
        // note for the error message above.
        let note = format!("pid {} since {} ({what})", std::process::id(), now_s());
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(note.as_bytes());
        let _ = file.sync_all();
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Records in `status.json` that the run was interrupted and waits to run again.
pub fn mark_interrupted(run_dir: &Path, note: &str) -> Result<(), StoreError> {
    Store::update_status(run_dir, |s| {
        s.state = RunState::Pending;
        s.error = Some(note.to_string());
        s.finished_at = Some(now_s());
    })
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::update_status(dir.path(), |s| {
            s.state = RunState::Failed;
            s.attempts = 2;
            s.error = Some("boom".into());
        })
        .unwrap();
        let back = Store::read_status(dir.path()).unwrap();
        assert_eq!(back.state, RunState::Failed);
        assert_eq!(back.attempts, 2);
        assert_eq!(back.created_at, s.created_at);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("status.json")],
            "no temporary files left"
        );
    }

    #[test]
    fn running_without_a_live_orchestrator_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            Store::observe(RunKind::Finetune, d, false),
            Observed::Pending
        );
        Store::update_status(d, |s| {
            s.state = RunState::Running;
            s.pid = Some(std::process::id());
        })
        .unwrap();
        assert_eq!(
            Store::observe(RunKind::Finetune, d, true),
            Observed::Running
        );
        assert_eq!(
            Store::observe(RunKind::Finetune, d, false),
            Observed::Stale,
            "lock free → stale"
        );
        // A pid that cannot exist (above the kernel's pid_max).
        Store::update_status(d, |s| s.pid = Some(i32::MAX as u32)).unwrap();
        assert_eq!(
            Store::observe(RunKind::Finetune, d, true),
            Observed::Stale,
            "dead pid → stale"
        );
        Store::update_status(d, |s| s.state = RunState::Collected).unwrap();
        assert_eq!(Store::observe(RunKind::Prime, d, false), Observed::Done);
        assert!(
            !Store::is_done(RunKind::Prime, d),
            "but it would have to run again"
        );
        Store::update_status(d, |s| s.state = RunState::Running).unwrap();
        std::fs::create_dir(d.join("checkpoint")).unwrap();
        assert_eq!(
            Store::observe(RunKind::Prime, d, true),
            Observed::Done,
            "the result decides"
        );
        std::fs::write(d.join("metrics.json"), "{truncated").unwrap();
        assert_eq!(
            Store::observe(RunKind::Finetune, d, true),
            Observed::Stale,
            "unparsable metrics are not done"
        );
    }

    #[test]
    fn second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("store"));
        assert!(!store.is_locked());
        let lock = store.lock("sweep a").unwrap();
        assert!(store.is_locked());
        // flock locks belong to open file descriptions, so a second open in the same process
        // conflicts just like another process would.
        let err = store.lock("sweep b").unwrap_err().to_string();
        assert!(
            err.contains("in use")
                && err.contains("sweep a")
                && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(lock);
        assert!(!store.is_locked());
        store.lock("sweep b").unwrap();
    }

    #[test]
    fn lock_is_released_when_the_holder_dies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        std::fs::write(dir.path().join(LOCK_FILE), "").unwrap();
        // Another process holds the lock: a forked child (allocation happens before the fork).
        let path = std::ffi::CString::new(dir.path().join(LOCK_FILE).to_str().unwrap()).unwrap();
        // SAFETY: the child only calls async-signal-safe functions before _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                libc::flock(fd, libc::LOCK_EX);
                libc::sleep(30);
                libc::_exit(0);
            }
        }
        let t0 = std::time::Instant::now();
        while !store.is_locked() && t0.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(store.lock("x").is_err(), "held by the child");
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        store
            .lock("x")
            .expect("released by the kernel when the holder died");
    }
}
