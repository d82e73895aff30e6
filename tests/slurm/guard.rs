//! The real single-node Slurm of the tests: started by `tests/slurm/cluster.sh`, shared by
//! `tests/slurm_cluster.rs` and `tests/slurm_e2e.rs` (included with `#[path]`).
//!
//! Environment: `PRIMER_SLURM_CLUSTER_DIR` reuses (or keeps) a cluster directory instead of a
//! temporary one; a cluster that was already running there is left running.
#![allow(dead_code)]

use primer::slurm::Slurm;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh")
}

/// Holds an exclusive lock so that concurrent tests on one machine (ports 6817/6818 are fixed)
/// take turns, and stops the cluster it started when dropped — also when an assertion fails —
/// by the pids the script recorded.
pub struct Cluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    started_here: bool,
    _lock: std::fs::File,
}

impl Cluster {
    /// None (after printing why) when Slurm cannot be installed here.
    pub fn start() -> Option<Cluster> {
        let lock =
            std::fs::File::create(std::env::temp_dir().join("primer-slurm-test.lock")).unwrap();
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on an open file descriptor we own.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        }
        let (dir, tmp) = match std::env::var_os("PRIMER_SLURM_CLUSTER_DIR") {
            Some(d) => (PathBuf::from(d), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("primer-slurm-")
                    .tempdir()
                    .unwrap();
                (t.path().to_path_buf(), Some(t))
            }
        };
        let running = Command::new("bash")
            .arg(cluster_script())
            .args(["status".as_ref(), dir.as_os_str()])
            .output()
            .unwrap()
            .status
            .success();
        // The guard exists before `start` so that a half-started cluster is stopped too.
        let cluster = Cluster {
            dir: dir.clone(),
            _tmp: tmp,
            started_here: !running,
            _lock: lock,
        };
        if !running {
            let out = Command::new("bash")
                .arg(cluster_script())
                .args(["start".as_ref(), dir.as_os_str()])
                // Small arrays then exercise chunking at MaxArraySize for real.
                .env("PRIMER_SLURM_MAX_ARRAY_SIZE", "3")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => {}
                Some(3) => {
                    println!("SKIP: Slurm not available here: {stderr}");
                    return None;
                }
                _ => panic!("cluster.sh start failed ({}):\n{stderr}", out.status),
            }
        }
        Some(cluster)
    }

    /// The cluster's configuration file (`SLURM_CONF` of every client).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    pub fn slurm(&self) -> Slurm {
        Slurm::from_env().with_env("SLURM_CONF", self.conf().to_str().unwrap())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started_here {
            let out = Command::new("bash")
                .arg(cluster_script())
                .args(["stop".as_ref(), self.dir.as_os_str()])
                .output();
            if let Ok(o) = out
                && !o.status.success()
            {
                eprintln!(
                    "cluster.sh stop failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

/// Polls `f` every 100 ms until it gives a value; panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
