//! Signals, in one place. Each handler only stores into an atomic flag (all a signal handler
//! may safely do) and the code that cares polls the flag:
//!
//! * **interrupt** (SIGINT, SIGTERM): the orchestrator (`primer run`) stops scheduling, stops
//!   its children and marks their runs pending; a second one while stopping exits at once;
//! * **stop** (SIGUSR2): a run's training loops (fine-tuning, priming) end between steps with
//!   an `Interrupted` error. Slurm sends it before preempting a task or at its time limit
//!   (`--signal=B:USR2@90`, forwarded by the batch script), and the task then requeues itself
//!   (`crate::slurm::requeue`); the loops themselves know nothing of Slurm.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // A second Ctrl-C while stopping exits at once (children die with us: PDEATHSIG).
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

extern "C" fn on_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handlers; returns the flag they set (for the scheduler's
/// `RunOptions::interrupt`).
/// Restores the default SIGPIPE action (Rust's runtime ignores it), so that `primer compare …
/// | head` ends quietly when the reader goes away instead of panicking on a broken pipe, as
/// command-line tools do.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL has no handler to run.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn install_interrupt_handler() -> &'static AtomicBool {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    &INTERRUPTED
}

/// Installs the SIGUSR2 handler (idempotent). Blocking system calls interrupted by the signal
/// are restarted (`SA_RESTART`), so file I/O in progress is not disturbed. Elsewhere SIGUSR2
/// keeps its default action.
pub fn install_stop_handler() -> std::io::Result<()> {
    // SAFETY: `sigaction` with a zeroed struct, an empty mask and a handler that only performs
    // an atomic store (async-signal-safe).
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::other(format!(
            "cannot install the SIGUSR2 (stop) handler: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// True once the stop signal has arrived (stays true): training loops end between steps.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usr2_sets_the_stop_flag() {
        assert!(!stop_requested());
        install_stop_handler().unwrap();
        install_stop_handler().unwrap();
        // SAFETY: raising a signal whose handler was just installed.
        unsafe {
            libc::raise(libc::SIGUSR2);
        }
        assert!(stop_requested());
    }
}
