//! End to end: `primer run --backend slurm`, `primer status`, `primer cancel` and the
//! preemption path of `primer exec` on a real single-node Slurm (started by
//! `tests/slurm/cluster.sh`, installed with apt-get when missing; skipped with a message only
//! when Slurm cannot be made available at all), with a tiny model and the committed WikiAnn
//! slices (the sizes of tests/sweep_e2e.rs).
//!
//! 1. The same sweep run by the local backend and by Slurm (`--wait`) in two stores gives the
//!    same metrics.json (wall time aside), and the Slurm run writes the report.
//! 2. Faults: one fine-tuning task is cancelled with `scancel`, another's run process is
//!    SIGKILLed, a third gets the preemption signal and is requeued by `primer exec`;
//!    `primer status` reports the first two as failed with Slurm's state and exit code,
//!    `primer cancel` cancels a held resubmission, and a rerun with `--wait` completes them.

mod common;

#[path = "slurm/guard.rs"]
mod guard;

#[path = "support/store.rs"]
mod store;

use guard::{Cluster, wait_for};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use store::{crate_root, json, results, run_dirs, text};

const BIN: &str = env!("CARGO_BIN_EXE_primer");

/// `primer ARGS` in `cwd`, against the test cluster when there is one.
fn primer(cwd: &Path, conf: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        // One thread per run: fast for the tiny model and bit-for-bit repeatable; Slurm tasks
        // inherit it from sbatch's environment.
        .env("RAYON_NUM_THREADS", "1");
    if let Some(c) = conf {
        cmd.env("SLURM_CONF", c);
    }
    cmd.output().expect("run primer")
}

/// A Slurm client command (`scancel`, `scontrol`) against the test cluster; panics on failure.
fn slurm_tool(conf: &Path, tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .env("SLURM_CONF", conf)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The inputs every test needs, or None (after printing SKIP) when the checkout lacks them.
fn inputs() -> Option<(PathBuf, PathBuf)> {
    let root = crate_root();
    let tokenizer = root.join("data/tokenizer/bert-base-multilingual-cased");
    let data = root.join("data/wikiann");
    for needed in [
        data.join("af"),
        data.join("hi"),
        data.join("nl"),
        data.join("en"),
        data.join("es"),
        tokenizer.clone(),
    ] {
        if !needed.exists() {
            println!("SKIP: {} not found", needed.display());
            return None;
        }
    }
    Some((tokenizer, data))
}

/// A tiny random model in `dir/model`.
fn tiny_model(dir: &Path, tokenizer: &Path) -> PathBuf {
    common::init_tiny_model(dir, &dir.join("model"), tokenizer)
}

/// A sweep with one meta-priming setting (adapter tuning from the primed checkpoint) and one
/// full fine-tuning setting without priming, unless `method` fixes one method for all.
fn sweep_text(
    name: &str,
    store: &str,
    model: &Path,
    data: &Path,
    targets: &str,
    epochs: u32,
    plain_setting: bool,
) -> String {
    let mut s = format!(
        r#"
name = "{name}"
store = "{store}"
targets = {targets}
[base.finetune]
model = "{model}"
epochs = {epochs}
batch_size = 8
method = "adapter"
data = {{ root = "{data}", train_limit = 30, dev_limit = 20, test_limit = 20, max_len = 32 }}
[base.prime]
steps = 2
support_batch_size = 4
query_batch_size = 4
data = {{ train_limit = 30, dev_limit = 10, test_limit = 10, max_len = 32 }}
[settings.pe]
priming = "meta"
"prime.inner_loop" = "pe"
"prime.inner_steps" = 2
"#,
        model = model.display(),
        data = data.display(),
    );
    if plain_setting {
        s.push_str("[settings.full]\n\"finetune.method\" = \"full\"\n");
    } else {
        // Full fine-tuning after priming: long enough (seconds) to be caught while running.
        s.push_str("\"finetune.method\" = \"full\"\n");
    }
    s
}

/// `ARRAYJOB_TASK` of the run's latest submission (its slurm.json).
fn task_ref(dir: &Path) -> String {
    let r = json(&dir.join("slurm.json"));
    format!("{}_{}", r["job_id"], r["array_task_id"])
}

/// The pid of the `primer exec ... --run-dir DIR` process, if one runs.
fn exec_pid(dir: &Path) -> Option<u32> {
    let want = dir.to_str().unwrap();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        (args.len() >= 3 && args[1] == b"exec" && args.last() == Some(&want.as_bytes()))
            .then_some(pid)
    })
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log.txt")).unwrap_or_default()
}

/// Slurm's own output files of the store's tasks (what happened before or around the runs'
/// logs), for failure messages.
fn slurm_outputs(store: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(store.join("slurm"))
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "out"));
    files.sort();
    files
        .iter()
        .map(|p| {
            format!(
                "{}:\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The line of `primer status` output about a run directory (`... finetune-<id8> ...`).
fn status_line<'a>(status: &'a str, dir: &Path) -> &'a str {
    let id8 = &dir.file_name().unwrap().to_str().unwrap()["finetune-".len()..][..8];
    status
        .lines()
        .find(|l| l.contains(&format!("finetune-{id8}")))
        .unwrap_or_else(|| panic!("no line about finetune-{id8} in:\n{status}"))
}

#[test]
fn slurm_backend_matches_local_backend() {
    let Some((tokenizer, data)) = inputs() else {
        return;
    };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let conf = cluster.conf();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = tiny_model(t, &tokenizer);
    let targets = r#"["af", "hi"]"#;
    std::fs::write(
        t.join("local.toml"),
        sweep_text("e2e-local", "local", &model, &data, targets, 1, true),
    )
    .unwrap();
    std::fs::write(
        t.join("slurm.toml"),
        sweep_text("e2e-slurm", "slurm", &model, &data, targets, 1, true),
    )
    .unwrap();

    // Impossible requests are refused before anything is submitted.
    let out = primer(
        t,
        Some(&conf),
        &[
            "run",
            "slurm.toml",
            "--backend",
            "slurm",
            "--partition",
            "nosuch",
        ],
    );
    assert!(
        !out.status.success() && text(&out).contains("partition 'nosuch' does not exist"),
        "{}",
        text(&out)
    );
    assert!(run_dirs(&t.join("slurm"), "prime").is_empty());

    let out = primer(t, None, &["run", "local.toml", "--plain", "--no-report"]);
    assert!(out.status.success(), "local run: {}", text(&out));
    let local = results(&t.join("local"));
    assert_eq!(local.len(), 4, "{}", text(&out));

    let out = primer(
        t,
        Some(&conf),
        &[
            "run",
            "slurm.toml",
            "--backend",
            "slurm",
            "--wait",
            "--poll-interval",
            "0.3",
        ],
    );
    let shown = text(&out);
    assert!(out.status.success(), "slurm run: {shown}");
    assert!(shown.contains("5 submitted to Slurm now"), "{shown}");
    assert!(shown.contains("slurm: 5 done"), "{shown}");
    let slurm = results(&t.join("slurm"));
    assert_eq!(
        slurm, local,
        "the Slurm backend gives the local backend's metrics"
    );
    // Each run ran as a Slurm array task (its log says which) and the report was written.
    for d in run_dirs(&t.join("slurm"), "finetune") {
        assert!(
            log_of(&d).contains("primer: Slurm task "),
            "{}",
            d.display()
        );
        assert!(!log_of(&d).contains('\u{1b}'), "no colour codes in log.txt");
    }
    assert!(
        t.join("results/e2e-slurm/table1.md").is_file(),
        "report written: {shown}"
    );

    let out = primer(t, Some(&conf), &["status", "slurm.toml"]);
    let shown = text(&out);
    assert!(
        out.status.success() && shown.contains("(Slurm backend)"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().eq(["done", "5"])),
        "{shown}"
    );

    // Nothing left to do: nothing is submitted.
    let out = primer(
        t,
        Some(&conf),
        &["run", "slurm.toml", "--backend", "slurm", "--no-report"],
    );
    assert!(
        out.status.success() && text(&out).contains("0 submitted to Slurm now, 5 already done"),
        "{}",
        text(&out)
    );
    drop(cluster);
}

#[test]
fn cancelled_killed_and_preempted_runs_are_reported_and_completed_by_a_rerun() {
    let Some((tokenizer, data)) = inputs() else {
        return;
    };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let conf = cluster.conf();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = tiny_model(t, &tokenizer);
    std::fs::write(
        t.join("s.toml"),
        sweep_text(
            "e2e-faults",
            "store",
            &model,
            &data,
            r#"["af", "hi", "nl"]"#,
            10,
            false,
        ),
    )
    .unwrap();
    let store = t.join("store");

    let out = primer(t, Some(&conf), &["run", "s.toml", "--backend", "slurm"]);
    assert!(
        out.status.success() && text(&out).contains("4 submitted to Slurm now"),
        "{}",
        text(&out)
    );
    let by_lang: BTreeMap<String, PathBuf> = run_dirs(&store, "finetune")
        .into_iter()
        .map(|d| {
            let spec = json(&d.join("spec.json"));
            (spec["config"]["lang"].as_str().unwrap().to_string(), d)
        })
        .collect();
    let (cancelled, killed, preempted) = (&by_lang["af"], &by_lang["hi"], &by_lang["nl"]);

    // Act on each run as soon as it executes (two CPUs: two tasks at a time, in any order).
    // Generous: a passing run takes seconds, but on a loaded 2-core machine (other test
    // binaries, a build) 60 s once ran out.
    let long = Duration::from_secs(180);
    let (mut to_cancel, mut to_kill, mut to_preempt) = (true, true, true);
    wait_for("the three fine-tuning runs to execute", long, || {
        if to_cancel && exec_pid(cancelled).is_some() {
            slurm_tool(&conf, "scancel", &[&task_ref(cancelled)]);
            to_cancel = false;
        }
        if to_kill && let Some(pid) = exec_pid(killed) {
            // SAFETY: sending a signal has no memory-safety implications.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            to_kill = false;
        }
        // Once the run has logged its start, its preemption handler is installed.
        if to_preempt && log_of(preempted).contains("fine-tuning nl") {
            // What Slurm does before preemption: the signal goes to the batch shell, which
            // forwards it to the run.
            slurm_tool(
                &conf,
                "scancel",
                &["--batch", "--signal=USR2", &task_ref(preempted)],
            );
            to_preempt = false;
        }
        (!to_cancel && !to_kill && !to_preempt).then_some(())
    });

    // The preempted run stopped between steps, wrote nothing, and asked Slurm to requeue it;
    // Slurm delays a requeued task by two minutes: let it start now.
    wait_for("the preempted run to be requeued", long, || {
        let st = json(&preempted.join("status.json"));
        st["error"]
            .as_str()
            .is_some_and(|e| e.contains("requeued"))
            .then_some(())
    });
    assert!(
        log_of(preempted).contains("interrupted by a preemption signal after"),
        "{}",
        log_of(preempted)
    );
    assert!(!preempted.join("metrics.json").exists());
    wait_for("the requeued task to be pending", long, || {
        let out = primer(t, Some(&conf), &["status", "s.toml"]);
        status_line(&text(&out), preempted)
            .contains("queued")
            .then_some(())
    });
    // slurmd refuses to relaunch a job in the same second its previous execution was killed
    // ("Job credential revoked", second granularity): Slurm's own delay avoids that, and so
    // does a short pause here.
    std::thread::sleep(Duration::from_secs(2));
    slurm_tool(
        &conf,
        "scontrol",
        &[
            "update",
            &format!("JobId={}", task_ref(preempted)),
            "StartTime=now",
        ],
    );

    let status = wait_for("every task to end", long, || {
        let out = primer(t, Some(&conf), &["status", "s.toml"]);
        let s = text(&out);
        (!s.contains("running ") && !s.contains("queued ")).then_some(s)
    });
    // Failure messages show the preempted run's log too.
    let status = format!(
        "{status}\n--- log of the preempted run:\n{}\n--- Slurm's output:\n{}",
        log_of(preempted),
        slurm_outputs(&store)
    );
    assert!(
        status_line(&status, cancelled).contains("failed with Slurm state CANCELLED exit 0:15"),
        "{status}"
    );
    assert!(
        status_line(&status, killed).contains("failed with Slurm state FAILED exit 137:0"),
        "{status}"
    );
    assert!(
        status.contains(&killed.join("log.txt").display().to_string()),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["done", "2"])),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["failed", "2"])),
        "{status}"
    );
    let log = log_of(preempted);
    assert!(
        preempted.join("metrics.json").is_file() && log.contains("restart 1"),
        "the requeued run completed: {log}"
    );

    // A held resubmission of the two failed runs, cancelled with `primer cancel`.
    let out = primer(
        t,
        Some(&conf),
        &["run", "s.toml", "--backend", "slurm", "--sbatch-arg=--hold"],
    );
    assert!(
        out.status.success() && text(&out).contains("2 submitted to Slurm now, 2 already done"),
        "{}",
        text(&out)
    );
    let out = primer(t, Some(&conf), &["cancel", "s.toml"]);
    assert!(
        out.status.success() && text(&out).contains("cancelled 2 queued or running"),
        "{}",
        text(&out)
    );

    // The rerun resubmits exactly the failed runs (no dependency: priming is done).
    let out = primer(
        t,
        Some(&conf),
        &[
            "run",
            "s.toml",
            "--backend",
            "slurm",
            "--wait",
            "--poll-interval",
            "0.3",
            "--no-report",
        ],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("2 submitted to Slurm now, 2 already done"),
        "{shown}"
    );
    assert!(shown.contains("slurm: 4 done"), "{shown}");
    assert_eq!(results(&store).len(), 3);
    let script = json(&cancelled.join("slurm.json"))["script"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !std::fs::read_to_string(script)
            .unwrap()
            .contains("--dependency")
    );
    drop(cluster);
}

#[test]
fn slurm_options_are_checked_before_anything_is_submitted() {
    let Some((tokenizer, data)) = inputs() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = tiny_model(t, &tokenizer);
    std::fs::write(
        t.join("s.toml"),
        sweep_text("opts", "store", &model, &data, r#"["af"]"#, 1, false),
    )
    .unwrap();
    let run = |args: &[&str], path: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(t);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        cmd.output().unwrap()
    };
    // No Slurm tools on PATH: named, with the way out.
    let empty = t.join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let out = run(&["run", "s.toml", "--backend", "slurm"], Some(&empty));
    assert!(
        !out.status.success()
            && text(&out).contains("`sbatch` not found")
            && text(&out).contains("--backend local"),
        "{}",
        text(&out)
    );
    assert!(!t.join("store").exists(), "nothing written");
    // Options of the other backend are refused rather than ignored.
    let out = run(&["run", "s.toml", "--partition", "gpu"], None);
    assert!(
        !out.status.success() && text(&out).contains("only apply to `--backend slurm`"),
        "{}",
        text(&out)
    );
    let out = run(
        &["run", "s.toml", "--backend", "slurm", "--devices", "cuda:0"],
        None,
    );
    assert!(
        !out.status.success() && text(&out).contains("--gpus-per-task"),
        "{}",
        text(&out)
    );
    // Also at their default values: given is given.
    let out = run(
        &[
            "run",
            "s.toml",
            "--backend",
            "slurm",
            "--devices",
            "cpu",
            "--retries",
            "1",
        ],
        None,
    );
    assert!(
        !out.status.success()
            && text(&out).contains("--devices (request GPUs")
            && text(&out).contains("--retries (rerun"),
        "{}",
        text(&out)
    );
    let out = run(&["run", "s.toml", "--poll-interval", "5"], None);
    assert!(
        !out.status.success()
            && text(&out).contains("only apply to `--backend slurm`")
            && text(&out).contains("--poll-interval"),
        "{}",
        text(&out)
    );
    // A bad [slurm] table is reported at its line.
    std::fs::write(
        t.join("bad.toml"),
        format!(
            "{}[slurm]\ntime = \"2h\"\n",
            sweep_text("opts", "store", &model, &data, r#"["af"]"#, 1, true)
        ),
    )
    .unwrap();
    let out = run(&["plan", "bad.toml"], None);
    assert!(
        !out.status.success()
            && text(&out).contains("bad.toml:")
            && text(&out).contains("'2h' is not a Slurm time"),
        "{}",
        text(&out)
    );
    // Without any Slurm submission, `primer cancel` says there is nothing to cancel.
    let out = run(&["cancel", "s.toml"], None);
    assert!(
        !out.status.success() && text(&out).contains("no run of this sweep was submitted to Slurm"),
        "{}",
        text(&out)
    );
}

/// `primer exec` inside a (pretend) Slurm array task: the preemption signal stops the run
/// between steps, nothing is written, and the task is requeued with `scontrol requeue
/// ARRAYJOB_TASK` — unless it has already been restarted 3 times (a time limit, not a
/// preemption), when the run fails with a hint instead. No cluster needed: `scontrol` is a
/// stand-in that records its arguments.
#[test]
fn exec_requeues_a_preempted_task_at_most_three_times() {
    use std::os::unix::fs::PermissionsExt;
    let Some((tokenizer, data)) = inputs() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = tiny_model(t, &tokenizer);
    let sweep = primer::sweep::Sweep::from_text(
        &t.join("s.toml"),
        &sweep_text("exec", "store", &model, &data, r#"["af"]"#, 10, true),
    )
    .unwrap();
    let plan = primer::sweep::Plan::expand(&sweep).unwrap();
    let store = primer::sweep::Store::new(t.join("store"));
    let run = plan
        .runs
        .iter()
        .find(|r| r.deps.is_empty() && r.kind() == primer::sweep::RunKind::Finetune)
        .expect("a fine-tuning run without priming");
    let dir = store.prepare(run).unwrap();
    let bin = t.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = t.join("scontrol.log");
    let fake = bin.join("scontrol");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let preempt = |restarts: &str| {
        let log = t.join(format!("exec-{restarts}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "exec",
                "--device",
                "cpu",
                "--run-dir",
                dir.to_str().unwrap(),
            ])
            .current_dir(t)
            .env("PATH", &bin)
            .env("NO_COLOR", "1")
            .env("RAYON_NUM_THREADS", "1")
            .env("SLURM_JOB_ID", "12")
            .env("SLURM_ARRAY_JOB_ID", "12")
            .env("SLURM_ARRAY_TASK_ID", "2")
            .env("SLURM_RESTART_COUNT", restarts)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        // Once the run has logged its start, its handler is installed.
        wait_for("the run to start", Duration::from_secs(90), || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("fine-tuning af")
                .then_some(())
        });
        // SAFETY: sending a signal has no memory-safety implications.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR2) };
        let status = child.wait().unwrap();
        (status, std::fs::read_to_string(&log).unwrap())
    };

    let (status, log) = preempt("0");
    assert!(status.success(), "{log}");
    assert!(
        log.contains("interrupted by a preemption signal after"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "requeue 12_2\n",
        "the task, not the whole array 12, is requeued"
    );
    assert!(!dir.join("metrics.json").exists(), "nothing written");
    let st = json(&dir.join("status.json"));
    assert_eq!(st["state"], "pending");
    assert!(
        st["error"].as_str().unwrap().contains("task 12_2 requeued"),
        "{st}"
    );

    let (status, log) = preempt("3");
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("not requeued again after 3 restarts") && log.contains("raise --time"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "requeue 12_2\n",
        "no second requeue"
    );
    let st = json(&dir.join("status.json"));
    assert_eq!(st["state"], "failed");
    assert!(!dir.join("metrics.json").exists());
}
