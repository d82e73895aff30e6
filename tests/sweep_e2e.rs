//! End to end: `primer run` on a tiny model and the committed WikiAnn slices. 2 priming
//! configurations × 2 fine-tuning methods × 2 targets; the priming runs execute exactly twice;
//! a second store is filled by an orchestrator that is SIGKILLed halfway and then resumed, and
//! ends up with exactly the results of the uninterrupted run, no finished run executed again.

mod common;

#[path = "support/store.rs"]
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use store::{crate_root, results, run_dirs, text};

const BIN: &str = env!("CARGO_BIN_EXE_primer");

fn primer(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        // One thread per child: fast enough for the tiny model and bit-for-bit repeatable.
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run primer")
}

fn sweep_text(model: &Path, store: &str) -> String {
    let data = crate_root().join("data/wikiann");
    format!(
        r#"
name = "e2e"
store = "{store}"
targets = ["af", "hi"]
[base.finetune]
model = "{model}"
epochs = 1
batch_size = 8
data = {{ root = "{data}", train_limit = 30, dev_limit = 20, test_limit = 20, max_len = 32 }}
[base.prime]
steps = 2
support_batch_size = 4
query_batch_size = 4
data = {{ train_limit = 30, dev_limit = 10, test_limit = 10, max_len = 32 }}
[grid]
"finetune.method" = ["adapter", "full"]
[settings.pe]
priming = "meta"
"prime.inner_loop" = "pe"
"prime.inner_steps" = 2
[settings.full]
priming = "meta"
"prime.inner_loop" = "full"
"prime.inner_steps" = 2
[report]
select = {{ by = "dev_f1", over = ["finetune.method"] }}
"#,
        model = model.display(),
        data = data.display(),
    )
}

fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).unwrap()).unwrap()
}

/// A temporary folder holding a tiny random model (`<tmp>/model`), or None (after printing
/// SKIP) when the checkout lacks the committed data or tokenizer.
fn tiny_model() -> Option<(tempfile::TempDir, PathBuf)> {
    let root = crate_root();
    let tokenizer = root.join("data/tokenizer/bert-base-multilingual-cased");
    for needed in [
        root.join("data/wikiann/af"),
        root.join("data/wikiann/hi"),
        root.join("data/wikiann/en"),
        tokenizer.clone(),
    ] {
        if !needed.exists() {
            eprintln!("SKIP: {} not found", needed.display());
            return None;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = common::init_tiny_model(tmp.path(), &tmp.path().join("model"), &tokenizer);
    Some((tmp, model))
}

#[test]
fn sweep_runs_shares_priming_and_resumes_after_sigkill() {
    let Some((tmp, model)) = tiny_model() else {
        return;
    };
    let t = tmp.path();

    // 1. Uninterrupted: 2 priming + 8 fine-tuning runs; priming executes exactly twice.
    std::fs::write(t.join("a.toml"), sweep_text(&model, "store1")).unwrap();
    let out = primer(
        t,
        &["run", "a.toml", "--plain", "--no-report", "--retries", "0"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let store1 = t.join("store1");
    let primes = run_dirs(&store1, "prime");
    assert_eq!(primes.len(), 2);
    for p in &primes {
        assert!(p.join("checkpoint").is_dir(), "{}", p.display());
        assert_eq!(
            status(p)["attempts"],
            1,
            "priming executed once: {}",
            p.display()
        );
        assert_eq!(
            std::fs::read_to_string(p.join("log.txt"))
                .unwrap()
                .matches("=== primer: attempt")
                .count(),
            1
        );
    }
    let first = results(&store1);
    assert_eq!(first.len(), 8, "{}", text(&out));
    for d in run_dirs(&store1, "finetune") {
        assert_eq!(status(&d)["state"], "done");
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("spec.json")).unwrap()).unwrap();
        assert!(
            spec["priming"].is_string(),
            "fine-tuning refers to its priming run by id"
        );
    }

    // The report input: one record per fine-tuning run with its metrics, and the priming runs.
    let abs = primer::sweep::Sweep::from_text(
        &t.join("a.toml"),
        &sweep_text(&model, store1.to_str().unwrap()),
    )
    .unwrap();
    let input = primer::sweep::report_input_for(&abs).unwrap();
    assert_eq!(input.settings, vec!["pe", "full"]);
    assert_eq!(input.languages, vec!["af", "hi"]);
    assert_eq!(input.runs.len(), 8);
    assert!(input.runs.iter().all(|r| r.metrics.is_some()));
    let pe: Vec<_> = input
        .runs
        .iter()
        .filter(|r| r.meta.setting == "pe")
        .collect();
    assert_eq!(pe.len(), 4);
    assert!(pe.iter().all(|r| {
        r.meta.inner_loop == Some(primer::config::InnerLoop::Pe)
            && r.meta.inner_steps == Some(2)
            && r.meta.inner_lr == Some(0.03)
    }));
    assert_eq!(input.priming_runs.len(), 2);
    assert!(input.priming_runs.iter().all(|p| p.done));

    // A rerun finds everything done and executes nothing.
    let out = primer(t, &["run", "a.toml", "--plain", "--no-report"]);
    assert!(
        out.status.success() && text(&out).contains("0 executed now"),
        "{}",
        text(&out)
    );

    // 2. Same sweep into a second store, SIGKILLed after the first fine-tuning result.
    std::fs::write(t.join("b.toml"), sweep_text(&model, "store2")).unwrap();
    let store2 = t.join("store2");
    let mut child = Command::new(BIN)
        .args(["run", "b.toml", "--plain", "--no-report"])
        .current_dir(t)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    // Kill while a run executes, after at least one fine-tuning result exists.
    let executing = |store: &Path| {
        run_dirs(store, "finetune").into_iter().find(|d| {
            d.join("status.json").is_file()
                && status(d)["state"] == "running"
                && !d.join("metrics.json").exists()
        })
    };
    while results(&store2).is_empty() || executing(&store2).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no result within 2 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the orchestrator ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let interrupted = executing(&store2);
    // Snapshot what was done at the kill, and find the run that was executing.
    let done_at_kill: BTreeMap<String, (Vec<u8>, std::time::SystemTime, serde_json::Value)> =
        run_dirs(&store2, "finetune")
            .into_iter()
            .chain(run_dirs(&store2, "prime"))
            .filter(|d| d.join("metrics.json").is_file() || d.join("checkpoint").is_dir())
            .map(|d| {
                let result = if d.join("metrics.json").is_file() {
                    d.join("metrics.json")
                } else {
                    d.join("checkpoint")
                };
                let bytes = std::fs::read(d.join("metrics.json")).unwrap_or_default();
                let mtime = std::fs::metadata(&result).unwrap().modified().unwrap();
                (
                    d.file_name().unwrap().to_str().unwrap().to_string(),
                    (bytes, mtime, status(&d)["attempts"].clone()),
                )
            })
            .collect();
    assert!(
        done_at_kill.len() < 10,
        "the kill came after the sweep had finished"
    );
    // Children do not outlive the orchestrator.
    for d in run_dirs(&store2, "finetune")
        .into_iter()
        .chain(run_dirs(&store2, "prime"))
    {
        if let Some(pid) = d
            .join("status.json")
            .is_file()
            .then(|| status(&d)["child_pid"].as_u64())
            .flatten()
        {
            let t0 = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid) {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "child {pid} outlived its orchestrator"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // `primer status` reports the interrupted run as stale (the lock died with the orchestrator).
    let out = primer(t, &["status", "b.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    if let Some(d) = &interrupted {
        assert!(
            text(&out).contains("stale    1"),
            "{} ({})",
            text(&out),
            d.display()
        );
    }

    // 3. Resume: the rest runs, nothing done is executed again, results equal the first store's.
    let out = primer(
        t,
        &[
            "run",
            "b.toml",
            "--plain",
            "--no-report",
            "--gc-checkpoints",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("runs: {} already done, ", done_at_kill.len())),
        "{}",
        text(&out)
    );
    if let Some(d) = &interrupted {
        // Rerun (two starts in its log), but the attempt cut short by the kill is not counted.
        let log = std::fs::read_to_string(d.join("log.txt")).unwrap();
        assert_eq!(
            (
                log.matches("=== primer: attempt").count(),
                status(d)["attempts"].clone()
            ),
            (2, serde_json::json!(1)),
            "the stale run was rerun: {}",
            d.display()
        );
    }
    for (name, (bytes, mtime, attempts)) in &done_at_kill {
        let d = store2.join(name);
        assert_eq!(
            &std::fs::read(d.join("metrics.json")).unwrap_or_default(),
            bytes,
            "{name} was rewritten"
        );
        // Priming checkpoints are gone after --gc-checkpoints; their attempts still count.
        if d.join("metrics.json").is_file() {
            assert_eq!(
                &std::fs::metadata(d.join("metrics.json"))
                    .unwrap()
                    .modified()
                    .unwrap(),
                mtime,
                "{name} was executed again"
            );
        }
        let log = std::fs::read_to_string(d.join("log.txt")).unwrap();
        assert_eq!(
            log.matches("=== primer: attempt").count(),
            1,
            "{name} was executed again"
        );
        assert_eq!(
            &status(&d)["attempts"],
            attempts,
            "{name} was executed again"
        );
    }
    assert_eq!(
        results(&store2),
        first,
        "an interrupted and resumed sweep gives the uninterrupted results"
    );

    // --gc-checkpoints removed the primed checkpoints (keeping the curves); nothing reruns.
    for p in run_dirs(&store2, "prime") {
        assert!(
            !p.join("checkpoint").exists() && p.join("curves.json").is_file(),
            "{}",
            p.display()
        );
        assert_eq!(status(&p)["state"], "collected");
    }
    let out = primer(t, &["run", "b.toml", "--plain", "--no-report"]);
    assert!(
        out.status.success() && text(&out).contains("0 executed now"),
        "{}",
        text(&out)
    );
}

/// Whether /proc says the process is a zombie (exited, not yet reaped by its parent).
/// A rebuild replaces the binary while a sweep runs: the runs the orchestrator starts
/// afterwards still execute the binary it was started from, not whatever is at its path.
#[test]
fn runs_started_after_the_binary_is_replaced_run_the_original() {
    let Some((tmp, model)) = tiny_model() else {
        return;
    };
    let t = tmp.path();
    let exe = t.join("bin/primer");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(BIN, &exe).unwrap();
    std::fs::write(t.join("a.toml"), sweep_text(&model, "store")).unwrap();
    let child = Command::new(&exe)
        .args(["run", "a.toml", "--plain", "--no-report", "--retries", "0"])
        .current_dir(t)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // spawn() returns once the orchestrator has exec'd the copy; it has not planned yet, let
    // alone started a run. Replace the file the way a rebuild does (unlink, new file).
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(
        &exe,
        "#!/bin/sh\necho 'not the primer this sweep was started with' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let store = t.join("store");
    assert_eq!(run_dirs(&store, "prime").len(), 2);
    assert_eq!(results(&store).len(), 8, "{}", text(&out));
    for d in run_dirs(&store, "finetune")
        .into_iter()
        .chain(run_dirs(&store, "prime"))
    {
        let log = std::fs::read_to_string(d.join("log.txt")).unwrap();
        assert!(!log.contains("not the primer"), "{}: {log}", d.display());
    }
}

fn zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
