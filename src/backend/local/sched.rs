//! The scheduler: runs a DAG of tasks on device slots (K slots per device), in dependency
//! order, priming first, retrying failures and marking the dependents of a failed run as not
//! runnable. What "running a task" means is behind the [`Executor`] trait: the real executor
//! spawns `primer exec` child processes; tests use a fake one.

use crate::device::DeviceSpec;
use crate::progress::ProgressEvent;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// One unit of work. Its index in the task list is its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Indices of tasks that must succeed first.
    pub deps: Vec<usize>,
    /// Lower runs first among ready tasks (priming 0, fine-tuning 1); ties by index.
    pub priority: u32,
}

/// One execution slot: the `ordinal`-th concurrent run on `device`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub device: DeviceSpec,
    pub ordinal: usize,
    /// For CUDA slots: the value of CUDA_VISIBLE_DEVICES that exposes exactly this GPU to
    /// the child (which then uses cuda:0).
    pub visible_devices: Option<String>,
}

impl Slot {
    /// `cpu#0`, `cuda:1#2`.
    pub fn label(&self) -> String {
        format!("{}#{}", self.device, self.ordinal)
    }

    /// The device string the child process is given.
    pub fn child_device(&self) -> &'static str {
        match self.device {
            DeviceSpec::Cpu => "cpu",
            DeviceSpec::Cuda(_) => "cuda:0",
        }
    }
}

/// Builds `per_device` slots for each device, interleaved so that consecutive runs spread
/// over devices. `visible` maps a CUDA ordinal to its CUDA_VISIBLE_DEVICES value.
pub fn make_slots(
    devices: &[DeviceSpec],
    per_device: usize,
    visible: impl Fn(usize) -> String,
) -> Vec<Slot> {
    let mut slots = Vec::new();
    for ordinal in 0..per_device.max(1) {
        for d in devices {
            slots.push(Slot {
                device: *d,
                ordinal,
                visible_devices: match d {
                    DeviceSpec::Cuda(i) => Some(visible(*i)),
                    DeviceSpec::Cpu => None,
                },
            });
        }
    }
    slots
}

/// What an executing task reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// The child process was started.
    Spawned(u32),
    Progress(ProgressEvent),
}

/// Runs one task to completion on a slot.
pub trait Executor: Sync {
    /// Executes `task` (attempt number `attempt`, from 1) on `slot`, blocking until it ends.
    /// The error is a short message for the user.
    fn execute(
        &self,
        task: usize,
        attempt: u32,
        slot: &Slot,
        events: &dyn Fn(ExecEvent),
    ) -> Result<(), String>;

    /// Stops every running execution promptly; their `execute` calls then return.
    fn cancel_all(&self);
}

/// Receives the scheduler's decisions (called on the scheduling thread only).
pub trait Observer {
    fn started(&mut self, _task: usize, _slot: &Slot, _attempt: u32) {}
    fn event(&mut self, _task: usize, _slot: &Slot, _event: ExecEvent) {}
    fn succeeded(&mut self, _task: usize, _slot: &Slot) {}
    /// `will_retry`: the task goes back to the queue.
    fn failed(&mut self, _task: usize, _slot: &Slot, _error: &str, _will_retry: bool) {}
    /// The task cannot run because a task it depends on failed.
    fn blocked(&mut self, _task: usize, _reason: &str) {}
    /// The task was running when the scheduler was interrupted.
    fn interrupted(&mut self, _task: usize) {}
    /// Called about ten times a second (display refresh).
    fn tick(&mut self) {}
}

/// An observer that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {}

/// How a scheduling pass ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub succeeded: Vec<usize>,
    /// Tasks that failed after all retries, with their last error.
    pub failed: Vec<(usize, String)>,
    /// Tasks not run because a dependency failed, with the reason.
    pub blocked: Vec<(usize, String)>,
    /// Tasks never started (interrupted) or stopped while running.
    pub not_run: Vec<usize>,
    /// The pass was interrupted (Ctrl-C).
    pub interrupted: bool,
}

impl Outcome {
    pub fn all_succeeded(&self) -> bool {
        self.failed.is_empty()
            && self.blocked.is_empty()
            && self.not_run.is_empty()
            && !self.interrupted
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Waiting,
    Running,
    Succeeded,
    Failed,
    Blocked,
}

enum Msg {
    Event(usize, usize, ExecEvent),
    Finished(usize, usize, Result<(), String>),
}

/// Runs `tasks` on `slots`. Each failed task is retried up to `retries` more times. Setting
/// `interrupt` stops the pass: running tasks are cancelled through the executor and reported
/// as interrupted, waiting ones as not run.
pub fn schedule(
    tasks: &[Task],
    slots: &[Slot],
    retries: u32,
    executor: &dyn Executor,
    observer: &mut dyn Observer,
    interrupt: &AtomicBool,
) -> Outcome {
    assert!(!slots.is_empty(), "at least one slot");
    let n = tasks.len();
    let mut state = vec![State::Waiting; n];
    let mut attempts = vec![0u32; n];
    let mut busy: Vec<Option<usize>> = vec![None; slots.len()];
    let mut outcome = Outcome::default();
    let mut interrupted = false;
    // Waiting tasks in the order they are preferred.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (tasks[i].priority, i));

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<Msg>();
        loop {
            if !interrupted {
                for s in 0..slots.len() {
                    if busy[s].is_some() {
                        continue;
                    }
                    let ready = order.iter().copied().find(|&i| {
                        state[i] == State::Waiting
                            && tasks[i].deps.iter().all(|&d| state[d] == State::Succeeded)
                    });
                    let Some(t) = ready else { break };
                    state[t] = State::Running;
                    attempts[t] += 1;
                    busy[s] = Some(t);
                    observer.started(t, &slots[s], attempts[t]);
                    let tx = tx.clone();
                    let slot = &slots[s];
                    let attempt = attempts[t];
                    scope.spawn(move || {
                        let send_event = |e: ExecEvent| {
                            let _ = tx.send(Msg::Event(t, s, e));
                        };
                        let result = executor.execute(t, attempt, slot, &send_event);
                        let _ = tx.send(Msg::Finished(t, s, result));
                    });
                }
            }
            if busy.iter().all(Option::is_none) {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Event(t, s, e)) => observer.event(t, &slots[s], e),
                Ok(Msg::Finished(t, s, result)) => {
                    busy[s] = None;
                    if interrupted {
                        state[t] = State::Waiting;
                        observer.interrupted(t);
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            state[t] = State::Succeeded;
                            outcome.succeeded.push(t);
                            observer.succeeded(t, &slots[s]);
                        }
                        Err(e) => {
                            let retry = attempts[t] <= retries;
                            observer.failed(t, &slots[s], &e, retry);
                            if retry {
                                state[t] = State::Waiting;
                            } else {
                                state[t] = State::Failed;
                                outcome.failed.push((t, e));
                                block_dependents(tasks, t, &mut state, &mut outcome, observer);
                            }
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => observer.tick(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    unreachable!("the scheduler holds a sender")
                }
            }
            if !interrupted && interrupt.load(Ordering::SeqCst) {
                interrupted = true;
                executor.cancel_all();
            }
        }
    });
    outcome.interrupted = interrupted;
    outcome.not_run = (0..n).filter(|&i| state[i] == State::Waiting).collect();
    outcome
}

/// Marks every waiting task that (transitively) depends on `failed` as blocked.
fn block_dependents(
    tasks: &[Task],
    failed: usize,
    state: &mut [State],
    outcome: &mut Outcome,
    observer: &mut dyn Observer,
) {
    let mut stack = vec![failed];
    while let Some(f) = stack.pop() {
        for (i, t) in tasks.iter().enumerate() {
            if state[i] == State::Waiting && t.deps.contains(&f) {
                state[i] = State::Blocked;
                let reason = if f == failed {
                    format!("depends on task {failed}, which failed")
                } else {
                    format!("depends on task {f}, which depends on failed task {failed}")
                };
                observer.blocked(i, &reason);
                outcome.blocked.push((i, reason));
                stack.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// Records what ran where and when; fails tasks a configured number of times.
    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<(usize, &'static str, String, Instant)>>,
        fail_first: HashMap<usize, u32>,
        calls: Mutex<HashMap<usize, u32>>,
        running: Mutex<HashMap<String, usize>>,
        max_per_device: Mutex<HashMap<String, usize>>,
        total_running: AtomicUsize,
        max_total: AtomicUsize,
        cancelled: AtomicBool,
        sleep_ms: u64,
        trip_interrupt: Option<(usize, &'static AtomicBool)>,
    }

    impl Executor for Fake {
        fn execute(
            &self,
            task: usize,
            _attempt: u32,
            slot: &Slot,
            events: &dyn Fn(ExecEvent),
        ) -> Result<(), String> {
            let dev = slot.device.to_string();
            {
                let mut r = self.running.lock().unwrap();
                let c = r.entry(dev.clone()).or_default();
                *c += 1;
                let mut m = self.max_per_device.lock().unwrap();
                let e = m.entry(dev.clone()).or_default();
                *e = (*e).max(*c);
            }
            let now = self.total_running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_total.fetch_max(now, Ordering::SeqCst);
            self.log
                .lock()
                .unwrap()
                .push((task, "start", slot.label(), Instant::now()));
            events(ExecEvent::Progress(ProgressEvent::new("train", 1, 2)));
            if let Some((t, flag)) = self.trip_interrupt
                && t == task
            {
                flag.store(true, Ordering::SeqCst);
            }
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(self.sleep_ms)
                && !self.cancelled.load(Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            self.total_running.fetch_sub(1, Ordering::SeqCst);
            *self.running.lock().unwrap().get_mut(&dev).unwrap() -= 1;
            self.log
                .lock()
                .unwrap()
                .push((task, "end", slot.label(), Instant::now()));
            if self.cancelled.load(Ordering::SeqCst) {
                return Err("killed".into());
            }
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(task).or_default();
            *c += 1;
            if *c <= self.fail_first.get(&task).copied().unwrap_or(0) {
                return Err(format!("task {task} failed (call {c})"));
            }
            Ok(())
        }

        fn cancel_all(&self) {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }

    /// Records observer calls.
    #[derive(Default)]
    struct Rec {
        events: usize,
        started: Vec<(usize, u32)>,
        failed: Vec<(usize, bool)>,
        blocked: Vec<usize>,
        interrupted: Vec<usize>,
    }

    impl Observer for Rec {
        fn started(&mut self, task: usize, _slot: &Slot, attempt: u32) {
            self.started.push((task, attempt));
        }
        fn event(&mut self, _task: usize, _slot: &Slot, _event: ExecEvent) {
            self.events += 1;
        }
        fn failed(&mut self, task: usize, _slot: &Slot, _error: &str, will_retry: bool) {
            self.failed.push((task, will_retry));
        }
        fn blocked(&mut self, task: usize, _reason: &str) {
            self.blocked.push(task);
        }
        fn interrupted(&mut self, task: usize) {
            self.interrupted.push(task);
        }
    }

    /// 2 priming tasks (0, 1), each with 3 fine-tuning dependents (2..5, 5..8), plus two
    /// independent fine-tuning tasks (8, 9).
    fn dag() -> Vec<Task> {
        let mut t = vec![
            Task {
                deps: vec![],
                priority: 0,
            },
            Task {
                deps: vec![],
                priority: 0,
            },
        ];
        for i in 0..6 {
            t.push(Task {
                deps: vec![i / 3],
                priority: 1,
            });
        }
        t.push(Task {
            deps: vec![],
            priority: 1,
        });
        t.push(Task {
            deps: vec![],
            priority: 1,
        });
        t
    }

    fn cpu_slots(k: usize) -> Vec<Slot> {
        make_slots(&[DeviceSpec::Cpu], k, |i| i.to_string())
    }

    static NEVER: AtomicBool = AtomicBool::new(false);

    #[test]
    fn dependencies_run_first_and_priming_is_preferred() {
        let fake = Fake {
            sleep_ms: 5,
            ..Fake::default()
        };
        let mut rec = Rec::default();
        let out = schedule(&dag(), &cpu_slots(2), 0, &fake, &mut rec, &NEVER);
        assert!(out.all_succeeded(), "{out:?}");
        assert_eq!(out.succeeded.len(), 10);
        assert_eq!(rec.events, 10, "progress events reach the observer");
        let log = fake.log.lock().unwrap();
        let time =
            |task: usize, what: &str| log.iter().find(|e| e.0 == task && e.1 == what).unwrap().3;
        for (i, t) in dag().iter().enumerate() {
            for &d in &t.deps {
                assert!(
                    time(d, "end") <= time(i, "start"),
                    "task {i} started before its dependency {d} ended"
                );
            }
        }
        // The two priming runs are started first, ahead of the independent tasks 8 and 9.
        let first: Vec<usize> = rec.started.iter().take(2).map(|s| s.0).collect();
        assert_eq!(first, vec![0, 1]);
    }

    #[test]
    fn k_runs_per_device_are_packed() {
        let fake = Fake {
            sleep_ms: 40,
            ..Fake::default()
        };
        let devices = [DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)];
        let slots = make_slots(&devices, 2, |i| format!("{}", i + 4));
        assert_eq!(slots.len(), 4);
        assert_eq!(slots[1].visible_devices.as_deref(), Some("5"));
        assert_eq!(slots[1].child_device(), "cuda:0");
        let tasks: Vec<Task> = (0..12)
            .map(|_| Task {
                deps: vec![],
                priority: 1,
            })
            .collect();
        let out = schedule(&tasks, &slots, 0, &fake, &mut NoObserver, &NEVER);
        assert!(out.all_succeeded());
        let max = fake.max_per_device.lock().unwrap().clone();
        assert_eq!(max.get("cuda:0"), Some(&2), "{max:?}");
        assert_eq!(max.get("cuda:1"), Some(&2), "{max:?}");
        assert_eq!(fake.max_total.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn failures_are_retried_up_to_n_times() {
        let fake = Fake {
            fail_first: HashMap::from([(0, 2), (8, 1)]),
            ..Fake::default()
        };
        let mut rec = Rec::default();
        let out = schedule(&dag(), &cpu_slots(1), 2, &fake, &mut rec, &NEVER);
        assert!(out.all_succeeded(), "{out:?}");
        assert!(
            rec.started.contains(&(0, 3)),
            "third attempt of task 0: {:?}",
            rec.started
        );
        assert_eq!(rec.failed, vec![(0, true), (0, true), (8, true)]);

        let fake = Fake {
            fail_first: HashMap::from([(0, 2)]),
            ..Fake::default()
        };
        let out = schedule(&dag(), &cpu_slots(1), 1, &fake, &mut NoObserver, &NEVER);
        assert_eq!(out.failed.len(), 1);
        assert!(
            out.failed[0].1.contains("call 2"),
            "last error kept: {:?}",
            out.failed
        );
    }

    #[test]
    fn a_failed_priming_run_blocks_only_its_dependents() {
        let fake = Fake {
            fail_first: HashMap::from([(1, 99)]),
            ..Fake::default()
        };
        let mut rec = Rec::default();
        let out = schedule(&dag(), &cpu_slots(2), 1, &fake, &mut rec, &NEVER);
        assert!(!out.all_succeeded());
        assert_eq!(out.failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![1]);
        let mut blocked: Vec<usize> = out.blocked.iter().map(|b| b.0).collect();
        blocked.sort();
        assert_eq!(blocked, vec![5, 6, 7]);
        assert!(out.blocked.iter().all(|b| b.1.contains("failed")));
        let mut ok = out.succeeded.clone();
        ok.sort();
        assert_eq!(ok, vec![0, 2, 3, 4, 8, 9], "the rest continues");
        let calls = fake.calls.lock().unwrap();
        assert_eq!(calls.get(&1), Some(&2), "1 try + 1 retry");
        assert!(!calls.contains_key(&5));
    }

    #[test]
    fn interrupt_cancels_running_tasks_and_leaves_the_rest() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let fake = Fake {
            sleep_ms: 2000,
            trip_interrupt: Some((1, &FLAG)),
            ..Fake::default()
        };
        let mut rec = Rec::default();
        let t0 = Instant::now();
        let out = schedule(&dag(), &cpu_slots(2), 3, &fake, &mut rec, &FLAG);
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "cancelled promptly"
        );
        assert!(out.interrupted && !out.all_succeeded());
        let mut inter = rec.interrupted.clone();
        inter.sort();
        assert_eq!(inter, vec![0, 1]);
        assert!(rec.failed.is_empty(), "an interrupted run is not a failure");
        assert_eq!(out.not_run.len(), 10);
    }
}
