//! The real executor: each run is a child process `primer exec --run-dir DIR --device D` (the
//! same binary). The child's stdout and stderr go to `DIR/log.txt`; progress lines on its
//! stdout are parsed for the live display. Children run in their own process group (a
//! terminal Ctrl-C reaches only the orchestrator, which stops them itself) and die with the
//! orchestrator (PR_SET_PDEATHSIG), so none outlives a killed orchestrator.

use super::sched::{ExecEvent, ExecFailure, Executor, Slot};
use crate::device::{DeviceSpec, OUT_OF_MEMORY_EXIT_STATUS, is_out_of_memory};
use crate::progress::ProgressEvent;
use crate::store::layout;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs tasks as `primer exec` child processes.
pub struct ProcessExecutor {
    /// The primer binary as the user knows it (`argv[0]` of the children, error messages).
    exe: PathBuf,
    /// What the children execute: [`own_program`] of `exe`.
    program: PathBuf,
    /// Task index → run directory.
    run_dirs: Vec<PathBuf>,
    /// Threads per CPU child (RAYON_NUM_THREADS), unless the user set it.
    cpu_threads: Option<usize>,
    running: Mutex<HashMap<usize, u32>>,
    cancelled: AtomicBool,
}

impl ProcessExecutor {
    /// `exe`: the primer binary (normally `std::env::current_exe()`).
    pub fn new(exe: PathBuf, run_dirs: Vec<PathBuf>, cpu_slots: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_threads = (cpu_slots > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none())
            .then(|| (cores / cpu_slots).max(1));
        Self {
            program: own_program(&exe),
            exe,
            run_dirs,
            cpu_threads,
            running: Mutex::new(HashMap::new()),
            cancelled: AtomicBool::new(false),
        }
    }

    fn kill(pid: u32) {
        // The child leads its own process group: kill the group.
        // SAFETY: sending a signal has no memory-safety implications.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
}

/// The program that runs the primer binary `exe`: on Linux, when `exe` is this process's own
/// executable, `/proc/self/exe` — the very file this process was started from, even after
/// `exe` has been rebuilt, replaced or deleted; otherwise `exe` itself.
///
/// A sweep runs for hours while users rebuild primer; spawning children by path would run
/// whatever sits at the path at that moment (a binary half-written by cargo, a different
/// version, or nothing). `/proc/self/exe` names the inode of the running executable, so every
/// child runs the same code as the orchestrator.
fn own_program(exe: &Path) -> PathBuf {
    let own = Path::new("/proc/self/exe");
    // Once the executable is unlinked, the kernel reads the link as "<path> (deleted)": `exe`,
    // taken from the same link a moment earlier, may still be the plain path.
    let is_self = std::env::current_exe().is_ok_and(|me| {
        me == exe
            || me.as_os_str().to_str() == exe.to_str().map(|e| format!("{e} (deleted)")).as_deref()
    });
    if cfg!(target_os = "linux") && is_self && own.exists() {
        own.to_path_buf()
    } else {
        exe.to_path_buf()
    }
}

impl Executor for ProcessExecutor {
    fn execute(
        &self,
        task: usize,
        attempt: u32,
        slot: &Slot,
        events: &dyn Fn(ExecEvent),
    ) -> Result<(), ExecFailure> {
        let dir = &self.run_dirs[task];
        let log_path = dir.join(layout::LOG);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| ExecFailure::new(format!("cannot open {}: {e}", log_path.display())))?;
        let log_start = log.metadata().map_or(0, |m| m.len());
        let _ = writeln!(
            log,
            // Numbered within this `primer run` (a resumed sweep starts again at 1; status.json
            // counts the attempts over all of them).
            "=== primer: attempt {attempt} of this primer run, on {} at unix time {} ===",
            slot.label(),
            crate::store::now_s()
        );
        let stderr = log
            .try_clone()
            .map_err(|e| ExecFailure::new(format!("cannot open {}: {e}", log_path.display())))?;
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.exe)
            .arg("exec")
            .arg("--run-dir")
            .arg(dir)
            .arg("--device")
            .arg(slot.child_device())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // The log is a file: no terminal colour codes in it.
            .env("NO_COLOR", "1");
        match (&slot.device, &slot.visible_devices) {
            (DeviceSpec::Cuda(_), Some(v)) => {
                cmd.env("CUDA_VISIBLE_DEVICES", v);
            }
            _ => {
                if let Some(n) = self.cpu_threads {
                    cmd.env("RAYON_NUM_THREADS", n.to_string());
                }
            }
        }
        // SAFETY: getpid is async-signal-safe and called before the fork.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls.
        unsafe {
            cmd.pre_exec(move || {
                // Own process group: the terminal's Ctrl-C goes to the orchestrator only.
                libc::setpgid(0, 0);
                // Die with the thread that spawned us (it lives until we exit); if the parent
                // is already gone, exit now rather than run orphaned.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::getppid() != parent
                {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| ExecFailure::new(format!("cannot start {}: {e}", self.exe.display())))?;
        let pid = child.id();
        self.running.lock().expect("lock").insert(task, pid);
        if self.cancelled.load(Ordering::SeqCst) {
            Self::kill(pid);
        }
        events(ExecEvent::Spawned(pid));
        if let Some(out) = child.stdout.take() {
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line);
                match ProgressEvent::parse_line(text.trim_end()) {
                    Some(e) => events(ExecEvent::Progress(e)),
                    None => {
                        let _ = log.write_all(&line);
                    }
                }
                line.clear();
            }
        }
        let status = child.wait();
        self.running.lock().expect("lock").remove(&task);
        let status =
            status.map_err(|e| ExecFailure::new(format!("waiting for the child failed: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let tail = log_tail(&log_path, log_start).unwrap_or_default();
        let message = last_error_line(&tail).unwrap_or_else(|| match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => killed_message(std::os::unix::process::ExitStatusExt::signal(&status)),
        });
        // `primer exec` says so with its exit status; a process that died of a failed
        // allocation (an abort) only in its log.
        let out_of_memory =
            status.code() == Some(i32::from(OUT_OF_MEMORY_EXIT_STATUS)) || is_out_of_memory(&tail);
        Err(ExecFailure {
            message,
            out_of_memory,
        })
    }

    fn cancel_all(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        for &pid in self.running.lock().expect("lock").values() {
            Self::kill(pid);
        }
    }
}

/// What the child wrote to the log in this attempt (from byte `start`), its last 64 KiB at most.
fn log_tail(log: &Path, start: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    // Only the tail matters; long logs are not read whole.
    f.seek(SeekFrom::Start(start.max(len.saturating_sub(64 * 1024))))
        .ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Why a child that a signal ended failed, for its run's error. A SIGKILL that nobody in
/// primer sent is most often the kernel's out-of-memory killer, which the child cannot report
/// itself, so the message says where to look.
fn killed_message(signal: Option<i32>) -> String {
    match signal {
        Some(9) => "killed by signal 9 (SIGKILL): if nobody killed it, the kernel's \
                    out-of-memory killer probably did (see `dmesg`); fewer runs per device \
                    (--per-device) or a smaller batch size need less memory"
            .to_string(),
        Some(sig) => format!("killed by signal {sig}"),
        None => "killed by a signal".to_string(),
    }
}

/// The last `error: ...` line of a log tail, else its last panic line.
fn last_error_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: ").map(str::to_string))
        .or_else(|| {
            text.lines()
                .rev()
                .find(|l| l.contains("panicked at"))
                .map(str::to_string)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_is_taken_from_this_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.txt");
        std::fs::write(&log, "error: old\n").unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"info\nerror: new problem\nmore\n")
            .unwrap();
        let tail = |from: u64| log_tail(&log, from).unwrap();
        assert_eq!(
            last_error_line(&tail(start)).as_deref(),
            Some("new problem")
        );
        assert_eq!(
            last_error_line(&tail(std::fs::metadata(&log).unwrap().len())),
            None
        );
    }

    #[test]
    fn a_child_killed_by_a_signal_is_reported_with_the_signal() {
        let (dir, run, slot) = run_dir_and_cpu_slot();
        for (signal, expected) in [("KILL", "signal 9 (SIGKILL)"), ("TERM", "signal 15")] {
            let exe = fake_script(dir.path(), signal, &format!("kill -{signal} $$"));
            let ex = ProcessExecutor::new(exe, vec![run.clone()], 1);
            let err = ex.execute(0, 1, &slot, &|_| {}).unwrap_err();
            assert!(err.message.contains(expected), "{signal}: {err:?}");
        }
        assert!(killed_message(Some(9)).contains("out-of-memory killer"));
    }

    /// A temporary folder holding an empty run folder `run`, and a CPU slot to run it on.
    fn run_dir_and_cpu_slot() -> (tempfile::TempDir, PathBuf, Slot) {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let slot = Slot {
            device: DeviceSpec::Cpu,
            ordinal: 0,
            visible_devices: None,
        };
        (dir, run, slot)
    }

    /// A stand-in for `primer exec`: a script that prints `stderr_line` and exits `status`.
    fn fake_exec(dir: &Path, stderr_line: &str, status: i32) -> PathBuf {
        fake_script(
            dir,
            &status.to_string(),
            &format!("echo '{stderr_line}' >&2\nexit {status}"),
        )
    }

    /// An executable shell script `fake-primer-<name>` in `dir` running `body`.
    fn fake_script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let exe = dir.join(format!("fake-primer-{name}"));
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    #[test]
    fn running_out_of_memory_is_told_apart_from_other_failures() {
        let (dir, run, slot) = run_dir_and_cpu_slot();
        let cases = [
            // primer exec's own verdict: its exit status.
            (
                "error: training: DriverError(CUDA_ERROR_OUT_OF_MEMORY)",
                3,
                true,
            ),
            // A failed allocation aborts before any verdict: the log says it.
            ("memory allocation of 34359738368 bytes failed", 134, true),
            ("error: non-finite loss at step 3", 1, false),
        ];
        for (line, status, oom) in cases {
            let exe = fake_exec(dir.path(), line, status);
            let ex = ProcessExecutor::new(exe, vec![run.clone()], 1);
            let err = ex.execute(0, 1, &slot, &|_| {}).unwrap_err();
            assert_eq!(err.out_of_memory, oom, "{line}: {err:?}");
        }
    }
}
