//! The scheduler: runs a DAG of tasks on device slots (K slots per device), in dependency
//! order, priming first, retrying failures and marking the dependents of a failed run as not
//! runnable. What "running a task" means is behind the [`Executor`] trait: the real executor
//! spawns `primer exec` child processes; tests use a fake one.
//!
//! With a [`Packing`] (`--per-device auto`) a device also has a memory budget and each task an
//! estimate: a task starts on a device while the estimates of what runs there fit the budget
//! (a task alone on a device always starts, whatever its estimate). Ready tasks are taken in
//! order; the first that fits nowhere reserves the device where it would have the most room,
//! so smaller tasks behind it fill only the other devices and it cannot be starved. A task
//! that runs out of memory while sharing its device is retried alone there (nothing else
//! starts beside it) before its failure counts against the retries.

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

/// Why an execution failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecFailure {
    /// A short message for the user.
    pub message: String,
    /// The run ran out of device memory (see `crate::device::is_out_of_memory`).
    pub out_of_memory: bool,
}

impl ExecFailure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            out_of_memory: false,
        }
    }

    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            out_of_memory: true,
        }
    }
}

/// Runs one task to completion on a slot.
pub trait Executor: Sync {
    /// Executes `task` (attempt number `attempt`, from 1) on `slot`, blocking until it ends.
    fn execute(
        &self,
        task: usize,
        attempt: u32,
        slot: &Slot,
        events: &dyn Fn(ExecEvent),
    ) -> Result<(), ExecFailure>;

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

/// A device's memory budget under packing.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceBudget {
    pub device: DeviceSpec,
    /// Bytes the runs on it may hold together.
    pub bytes: u64,
    /// Bytes each run needs besides its estimate (its process's runtime).
    pub per_run_overhead: u64,
    /// Runs at most, whatever their memory (CPU runs: cores; GPUs: a sanity cap).
    pub max_runs: usize,
}

/// Memory-aware admission (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packing {
    /// Devices without a budget are limited by their slots only.
    pub budgets: Vec<DeviceBudget>,
    /// Each task's estimate in bytes (index = task; missing: 0).
    pub need: Vec<u64>,
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
    Finished(usize, usize, Result<(), ExecFailure>),
}

/// What runs on each device, for admission.
struct Devices<'a> {
    slots: &'a [Slot],
    packing: &'a Packing,
    /// Distinct devices, in slot order.
    list: Vec<DeviceSpec>,
    /// Per device: running tasks, and bytes they hold.
    running: Vec<Vec<usize>>,
    used: Vec<u64>,
    /// Per task: must run with nothing beside it, on this device (after running out of memory).
    alone: Vec<Option<usize>>,
}

impl<'a> Devices<'a> {
    fn new(slots: &'a [Slot], packing: &'a Packing, n_tasks: usize) -> Self {
        let mut list: Vec<DeviceSpec> = Vec::new();
        for s in slots {
            if !list.contains(&s.device) {
                list.push(s.device);
            }
        }
        let n = list.len();
        Self {
            slots,
            packing,
            list,
            running: vec![Vec::new(); n],
            used: vec![0; n],
            alone: vec![None; n_tasks],
        }
    }

    fn index(&self, d: DeviceSpec) -> usize {
        self.list
            .iter()
            .position(|x| *x == d)
            .expect("a slot's device")
    }

    fn budget(&self, d: usize) -> Option<&DeviceBudget> {
        self.packing
            .budgets
            .iter()
            .find(|b| b.device == self.list[d])
    }

    /// Bytes task `t` holds on device `d`.
    fn cost(&self, t: usize, d: usize) -> u64 {
        let need = self.packing.need.get(t).copied().unwrap_or(0);
        need + self.budget(d).map_or(0, |b| b.per_run_overhead)
    }

    /// Bytes left on device `d` (unlimited without a budget).
    fn room(&self, d: usize) -> u64 {
        self.budget(d)
            .map_or(u64::MAX, |b| b.bytes.saturating_sub(self.used[d]))
    }

    fn free_slot(&self, d: usize, busy: &[Option<usize>]) -> Option<usize> {
        let max = self.budget(d).map_or(usize::MAX, |b| b.max_runs);
        if self.running[d].len() >= max {
            return None;
        }
        (0..self.slots.len()).find(|&s| busy[s].is_none() && self.slots[s].device == self.list[d])
    }

    /// Whether task `t` may start on device `d` now (slots aside).
    fn fits(&self, t: usize, d: usize) -> bool {
        if let Some(pinned) = self.alone[t] {
            return pinned == d && self.running[d].is_empty();
        }
        let someone_alone = self.running[d].iter().any(|&r| self.alone[r].is_some());
        !someone_alone && (self.running[d].is_empty() || self.cost(t, d) <= self.room(d))
    }
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
    schedule_packed(
        tasks,
        slots,
        &Packing::default(),
        retries,
        executor,
        observer,
        interrupt,
    )
}

/// [`schedule`] with memory-aware admission by `packing`.
pub fn schedule_packed(
    tasks: &[Task],
    slots: &[Slot],
    packing: &Packing,
    retries: u32,
    executor: &dyn Executor,
    observer: &mut dyn Observer,
    interrupt: &AtomicBool,
) -> Outcome {
    assert!(!slots.is_empty(), "at least one slot");
    let n = tasks.len();
    let mut state = vec![State::Waiting; n];
    let mut attempts = vec![0u32; n];
    // Failures that count against `retries` (running out of memory beside others does not).
    let mut failures = vec![0u32; n];
    // Whether another task ran on the same device during the task's current attempt.
    let mut shared = vec![false; n];
    let mut busy: Vec<Option<usize>> = vec![None; slots.len()];
    let mut devices = Devices::new(slots, packing, n);
    let mut outcome = Outcome::default();
    let mut interrupted = false;
    // Waiting tasks in the order they are preferred.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (tasks[i].priority, i));

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<Msg>();
        loop {
            if !interrupted {
                let mut reserved = vec![false; devices.list.len()];
                for &t in &order {
                    if reserved.iter().all(|&r| r) {
                        break;
                    }
                    let ready = state[t] == State::Waiting
                        && tasks[t].deps.iter().all(|&d| state[d] == State::Succeeded);
                    if !ready {
                        continue;
                    }
                    // Among the devices not reserved where it fits, the one with the fewest
                    // runs (spreading runs over devices), then the first.
                    let allowed = |d: usize| {
                        !reserved[d] && devices.alone[t].is_none_or(|pinned| pinned == d)
                    };
                    let best = |cands: &mut dyn Iterator<Item = usize>| {
                        cands.min_by_key(|&d| (devices.running[d].len(), d))
                    };
                    let chosen = best(&mut (0..devices.list.len()).filter(|&d| {
                        allowed(d) && devices.fits(t, d) && devices.free_slot(d, &busy).is_some()
                    }));
                    let Some(d) = chosen else {
                        let most_room = (0..devices.list.len())
                            .filter(|&d| allowed(d))
                            .max_by_key(|&d| (devices.room(d), std::cmp::Reverse(d)));
                        if let Some(d) = most_room {
                            reserved[d] = true;
                        }
                        continue;
                    };
                    let s = devices.free_slot(d, &busy).expect("checked");
                    shared[t] = !devices.running[d].is_empty();
                    for &r in &devices.running[d] {
                        shared[r] = true;
                    }
                    devices.running[d].push(t);
                    devices.used[d] += devices.cost(t, d);
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
                    let d = devices.index(slots[s].device);
                    devices.running[d].retain(|&r| r != t);
                    devices.used[d] -= devices.cost(t, d);
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
                        Err(e) if e.out_of_memory && shared[t] && devices.alone[t].is_none() => {
                            devices.alone[t] = Some(d);
                            state[t] = State::Waiting;
                            let msg = format!(
                                "{} (out of memory beside other runs on {}: retried alone there)",
                                e.message, slots[s].device
                            );
                            observer.failed(t, &slots[s], &msg, true);
                        }
                        Err(e) => {
                            failures[t] += 1;
                            let retry = failures[t] <= retries;
                            observer.failed(t, &slots[s], &e.message, retry);
                            if retry {
                                state[t] = State::Waiting;
                            } else {
                                state[t] = State::Failed;
                                outcome.failed.push((t, e.message));
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
        /// Runs out of memory on this many first calls.
        oom_first: HashMap<usize, u32>,
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
        ) -> Result<(), ExecFailure> {
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
                return Err(ExecFailure::new("killed"));
            }
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(task).or_default();
            *c += 1;
            if *c <= self.oom_first.get(&task).copied().unwrap_or(0) {
                return Err(ExecFailure::out_of_memory(format!(
                    "task {task}: CUDA_ERROR_OUT_OF_MEMORY (call {c})"
                )));
            }
            if *c <= self.fail_first.get(&task).copied().unwrap_or(0) {
                return Err(ExecFailure::new(format!("task {task} failed (call {c})")));
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
        errors: Vec<String>,
        blocked: Vec<usize>,
        interrupted: Vec<usize>,
        /// Running tasks per device, as the scheduler decided.
        running: HashMap<DeviceSpec, Vec<usize>>,
        /// (task, attempt, device, the tasks already running there when it started).
        peers: Vec<(usize, u32, DeviceSpec, Vec<usize>)>,
    }

    impl Rec {
        fn ended(&mut self, task: usize, slot: &Slot) {
            self.running
                .entry(slot.device)
                .or_default()
                .retain(|&t| t != task);
        }

        /// The tasks that ran beside `task`'s attempt `attempt`, started before or after it.
        fn beside(&self, task: usize, attempt: u32) -> Vec<usize> {
            let k = self
                .peers
                .iter()
                .position(|p| p.0 == task && p.1 == attempt)
                .expect("started");
            let mut out = self.peers[k].3.clone();
            // Later starts that saw it running.
            out.extend(
                self.peers[k + 1..]
                    .iter()
                    .filter(|p| p.3.contains(&task))
                    .map(|p| p.0),
            );
            out
        }
    }

    impl Observer for Rec {
        fn started(&mut self, task: usize, slot: &Slot, attempt: u32) {
            self.started.push((task, attempt));
            let running = self.running.entry(slot.device).or_default();
            self.peers
                .push((task, attempt, slot.device, running.clone()));
            running.push(task);
        }
        fn event(&mut self, _task: usize, _slot: &Slot, _event: ExecEvent) {
            self.events += 1;
        }
        fn succeeded(&mut self, task: usize, slot: &Slot) {
            self.ended(task, slot);
        }
        fn failed(&mut self, task: usize, slot: &Slot, error: &str, will_retry: bool) {
            self.ended(task, slot);
            self.failed.push((task, will_retry));
            self.errors.push(error.to_string());
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

    const GB: u64 = 1 << 30;

    fn independent(n: usize) -> Vec<Task> {
        (0..n)
            .map(|_| Task {
                deps: vec![],
                priority: 1,
            })
            .collect()
    }

    fn budget(device: DeviceSpec, bytes: u64, max_runs: usize) -> DeviceBudget {
        DeviceBudget {
            device,
            bytes,
            per_run_overhead: GB / 2,
            max_runs,
        }
    }

    #[test]
    fn small_runs_share_a_device_by_memory_and_a_big_one_runs_alone() {
        let fake = Fake {
            sleep_ms: 20,
            ..Fake::default()
        };
        let gpu = DeviceSpec::Cuda(0);
        let slots = make_slots(&[gpu], 8, |i| i.to_string());
        // A 10 GB budget: four 2 GB runs (+0.5 GB each for their process) fit, a fifth does
        // not; task 4 is bigger than the whole budget; task 5 fits beside two small ones.
        let packing = Packing {
            budgets: vec![budget(gpu, 10 * GB, 8)],
            need: vec![2 * GB, 2 * GB, 2 * GB, 2 * GB, 12 * GB, 6 * GB, 2 * GB],
        };
        let mut rec = Rec::default();
        let out = schedule_packed(
            &independent(7),
            &slots,
            &packing,
            0,
            &fake,
            &mut rec,
            &NEVER,
        );
        assert!(out.all_succeeded(), "{out:?}");
        // The first pass packs the four small runs together.
        let first: Vec<usize> = rec.peers.iter().take(4).map(|p| p.0).collect();
        assert_eq!(first, vec![0, 1, 2, 3]);
        assert_eq!(rec.peers[3].3, vec![0, 1, 2]);
        // The big run waited (reserving the device: task 6 did not slip past it) and ran alone.
        assert!(rec.beside(4, 1).is_empty(), "{:?}", rec.peers);
        let pos = |t: usize| rec.peers.iter().position(|p| p.0 == t).unwrap();
        assert!(pos(4) < pos(5) && pos(4) < pos(6), "{:?}", rec.peers);
        // Whenever runs shared the device, their estimates fitted the budget.
        for (t, _, _, before) in &rec.peers {
            if !before.is_empty() {
                let sum: u64 = before
                    .iter()
                    .chain([t])
                    .map(|&r| packing.need[r] + GB / 2)
                    .sum();
                assert!(sum <= 10 * GB, "task {t} beside {before:?}: {sum} bytes");
            }
        }
    }

    /// The most runs the scheduler had on `device` at once.
    fn most_at_once(rec: &Rec, device: DeviceSpec) -> usize {
        rec.peers
            .iter()
            .filter(|p| p.2 == device)
            .map(|p| p.3.len() + 1)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn packing_spreads_over_devices_and_caps_cpu_runs() {
        let fake = Fake {
            sleep_ms: 20,
            ..Fake::default()
        };
        let (a, b) = (DeviceSpec::Cuda(0), DeviceSpec::Cuda(1));
        let slots = make_slots(&[a, b, DeviceSpec::Cpu], 4, |i| i.to_string());
        let packing = Packing {
            // The CPU has memory to spare but two cores' worth of runs.
            budgets: vec![
                budget(a, 5 * GB, 4),
                budget(b, 5 * GB, 4),
                budget(DeviceSpec::Cpu, 100 * GB, 2),
            ],
            need: vec![GB; 12],
        };
        let mut rec = Rec::default();
        let out = schedule_packed(
            &independent(12),
            &slots,
            &packing,
            0,
            &fake,
            &mut rec,
            &NEVER,
        );
        assert!(out.all_succeeded(), "{out:?}");
        // 5 GB holds three runs of 1 + 0.5 GB; the CPU takes two.
        assert_eq!(most_at_once(&rec, a), 3, "{:?}", rec.peers);
        assert_eq!(most_at_once(&rec, b), 3);
        assert_eq!(most_at_once(&rec, DeviceSpec::Cpu), 2);
        // Consecutive runs go to different devices.
        let first: Vec<DeviceSpec> = rec.peers.iter().take(3).map(|p| p.2).collect();
        assert_eq!(first, vec![a, b, DeviceSpec::Cpu]);
    }

    #[test]
    fn a_run_out_of_memory_beside_others_is_retried_alone_before_it_counts() {
        let fake = Fake {
            sleep_ms: 20,
            oom_first: HashMap::from([(1, 1), (2, 9)]),
            ..Fake::default()
        };
        let gpu = DeviceSpec::Cuda(0);
        let slots = make_slots(&[gpu], 4, |i| i.to_string());
        let packing = Packing {
            budgets: vec![budget(gpu, 100 * GB, 4)],
            need: vec![GB; 4],
        };
        let mut rec = Rec::default();
        // No retries: only the alone retry after running out of memory beside others.
        let out = schedule_packed(
            &independent(4),
            &slots,
            &packing,
            0,
            &fake,
            &mut rec,
            &NEVER,
        );
        let ok: std::collections::BTreeSet<usize> = out.succeeded.iter().copied().collect();
        assert_eq!(ok, [0, 1, 3].into());
        // Task 1 shared the device, ran out of memory, ran again alone and succeeded.
        assert!(!rec.beside(1, 1).is_empty());
        assert!(rec.beside(1, 2).is_empty(), "{:?}", rec.peers);
        assert!(rec.errors.iter().any(|e| e.contains("retried alone")));
        // Task 2 ran out of memory alone as well: that counts, and it failed.
        assert!(rec.beside(2, 2).is_empty());
        assert_eq!(out.failed.len(), 1);
        assert_eq!(out.failed[0].0, 2);
        assert_eq!(fake.calls.lock().unwrap()[&2], 2);

        // Alone from the start (one slot), running out of memory is an ordinary failure.
        let fake = Fake {
            oom_first: HashMap::from([(0, 1)]),
            ..Fake::default()
        };
        let slots = make_slots(&[gpu], 1, |i| i.to_string());
        let out = schedule(&independent(2), &slots, 0, &fake, &mut NoObserver, &NEVER);
        assert_eq!(out.failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0]);
    }
}
