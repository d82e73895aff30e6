//! End-to-end test of the Slurm backend on a real single-node Slurm started by
//! `tests/slurm/cluster.sh` (installed with apt-get when missing). Skips with a message only
//! when Slurm cannot be made available at all (no apt, not root).
//!
//! Environment: `PRIMER_SLURM_CLUSTER_DIR` reuses (or keeps) a cluster directory instead of a
//! temporary one; a cluster that was already running there is left running.

#[path = "slurm/guard.rs"]
mod guard;

use guard::{Cluster, wait_for};
use primer::backend::slurm::{SlurmRunState, slurm_status, submit_sweep, wait_sweep};
use primer::config::{FinetuneConfig, PrimeConfig};
use primer::slurm::client::Submission;
use primer::slurm::{ArrayJob, JobRef, Slurm, SlurmOptions, SlurmRecord, SlurmState, TaskStatus};
use primer::spec::plan::{Plan, RunSpec};
use primer::sweep::Store;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A run directory whose task runs `body` under `sh` with the run directory as `$1`.
fn run_dir(store: &Path, name: &str, body: &str) -> PathBuf {
    let d = store.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("task.sh"), body).unwrap();
    d
}

fn task_command() -> Vec<String> {
    ["sh", "-c", ". \"$1\"/task.sh", "sh"]
        .map(String::from)
        .to_vec()
}

fn status(slurm: &Slurm, dir: &Path) -> Option<TaskStatus> {
    let rec = SlurmRecord::read(dir)
        .unwrap()
        .expect("slurm.json written at submission");
    slurm.status_of(&[rec]).unwrap().pop().unwrap()
}

fn ended(slurm: &Slurm, dir: &Path) -> Option<TaskStatus> {
    status(slurm, dir).filter(|t| t.state.is_terminal() && t.exit_code.is_some())
}

#[test]
fn job_arrays_on_a_real_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let slurm = cluster.slurm();
    let store_tmp = tempfile::tempdir().unwrap();
    let store = store_tmp.path();
    let opts = SlurmOptions::default();

    // Up-front validation against the live cluster.
    let info = slurm.validate(&opts, store).unwrap();
    let e = slurm
        .validate(
            &SlurmOptions {
                partition: Some("nosuch".into()),
                ..Default::default()
            },
            store,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'nosuch' does not exist") && e.contains(&info.partition.name),
        "{e}"
    );
    let e = slurm
        .validate(
            &SlurmOptions {
                cpus_per_task: Some(100_000),
                ..Default::default()
            },
            store,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("no node has 100000 CPUs"), "{e}");

    // Array A: five runs — success, failure, long (cancelled), success, preemption signal.
    let runs = vec![
        run_dir(store, "a0", "echo ok > \"$1\"/result\n"),
        run_dir(store, "a1", "echo boom >&2\nexit 3\n"),
        run_dir(store, "a2", "touch \"$1\"/started\nsleep 120\n"),
        run_dir(store, "a3", "echo ok > \"$1\"/result\n"),
        run_dir(
            store,
            "a4",
            "trap 'echo preempted > \"$1\"/result; exit 0' USR2\ntouch \"$1\"/ready\nwhile :; do sleep 0.1; done\n",
        ),
    ];
    let mut sub = Submission::new(store, "itest");
    let job_a = ArrayJob::new("primer-itest", runs.clone(), task_command());
    let a = slurm
        .submit_array(&mut sub, &job_a, &opts, info.max_array_size)
        .unwrap();
    let expected_chunks = 5_usize.div_ceil(info.max_array_size as usize);
    assert_eq!(
        a.chunks.len(),
        expected_chunks,
        "chunked at MaxArraySize {}",
        info.max_array_size
    );
    let refs: Vec<JobRef> = a.tasks.iter().map(|t| t.job).collect();

    // Array B depends on a0 and a3 (possibly in different chunks); array C on the failing a1.
    let b_dir = run_dir(
        store,
        "b0",
        &format!(
            "test -f {0}/result && test -f {1}/result || exit 9\necho after > \"$1\"/result\n",
            runs[0].display(),
            runs[3].display()
        ),
    );
    let mut job_b = ArrayJob::new("primer-itest", vec![b_dir.clone()], task_command());
    job_b.after_ok = vec![refs[0].to_string(), refs[3].to_string()];
    slurm
        .submit_array(&mut sub, &job_b, &opts, info.max_array_size)
        .unwrap();
    let c_dir = run_dir(store, "c0", "echo never > \"$1\"/result\n");
    let mut job_c = ArrayJob::new("primer-itest", vec![c_dir.clone()], task_command());
    job_c.after_ok = vec![refs[1].to_string()];
    slurm
        .submit_array(&mut sub, &job_c, &opts, info.max_array_size)
        .unwrap();

    // Cancel a2 once it runs; send the preemption signal to a4 once its trap is set.
    let long = Duration::from_secs(60);
    wait_for("a2 to start", long, || {
        runs[2].join("started").exists().then_some(())
    });
    slurm.cancel(&[refs[2]]).unwrap();
    wait_for("a4 to be ready", long, || {
        runs[4].join("ready").exists().then_some(())
    });
    slurm.signal_tasks(&[refs[4]], "USR2").unwrap();

    let s0 = wait_for("a0 to end", long, || ended(&slurm, &runs[0]));
    assert_eq!(s0.state, SlurmState::Completed);
    assert_eq!(
        std::fs::read_to_string(runs[0].join("result")).unwrap(),
        "ok\n"
    );
    let out = std::fs::read_to_string(runs[0].join("slurm.out")).unwrap();
    assert!(
        out.contains(&format!("Slurm task {}", refs[0])) && out.contains("exit status 0"),
        "{out}"
    );

    let s1 = wait_for("a1 to end", long, || ended(&slurm, &runs[1]));
    assert_eq!(
        s1.describe(),
        "failed with Slurm state FAILED exit 3:0 (NonZeroExitCode)"
    );
    assert_eq!(
        std::fs::read_to_string(runs[1].join("slurm.err")).unwrap(),
        "boom\n"
    );

    let s2 = wait_for("a2 to end", long, || ended(&slurm, &runs[2]));
    assert_eq!(s2.state, SlurmState::Cancelled);
    assert!(
        s2.describe()
            .starts_with("failed with Slurm state CANCELLED exit 0:15"),
        "{}",
        s2.describe()
    );

    let s4 = wait_for("a4 to end", long, || ended(&slurm, &runs[4]));
    assert_eq!(
        s4.state,
        SlurmState::Completed,
        "the wrapper forwarded USR2 and the run exited 0"
    );
    assert_eq!(
        std::fs::read_to_string(runs[4].join("result")).unwrap(),
        "preempted\n"
    );

    let sb = wait_for("b0 to end", long, || ended(&slurm, &b_dir));
    assert_eq!(
        sb.state,
        SlurmState::Completed,
        "b0 ran after a0 and a3 ({})",
        sb.describe()
    );
    assert_eq!(
        std::fs::read_to_string(b_dir.join("result")).unwrap(),
        "after\n"
    );
    let a0_end = std::fs::metadata(runs[0].join("result"))
        .unwrap()
        .modified()
        .unwrap();
    let b_end = std::fs::metadata(b_dir.join("result"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(b_end >= a0_end);

    // A failed dependency cancels the dependent task rather than leaving it pending forever;
    // it never ran, wrote nothing, and is still reported as failed.
    let sc = wait_for("c0 to be cancelled", long, || ended(&slurm, &c_dir));
    assert_eq!(sc.state, SlurmState::Cancelled, "{}", sc.describe());
    assert!(!c_dir.join("result").exists() && !c_dir.join("slurm.out").exists());

    // Scripts and task lists stay in the store.
    let kept: Vec<String> = std::fs::read_dir(store.join("slurm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        kept.iter().filter(|n| n.ends_with(".sbatch")).count(),
        expected_chunks + 2,
        "{kept:?}"
    );
    assert_eq!(
        kept.iter().filter(|n| n.ends_with(".tasks")).count(),
        3,
        "{kept:?}"
    );
    drop(cluster);
}

/// A stand-in for `primer exec --device D --run-dir DIR`: priming makes `checkpoint/`,
/// fine-tuning checks that its priming checkpoint exists (dependency order) and writes a valid
/// `metrics.json`; the target language "fail" fails (exit 5) on its first attempt only.
fn fake_primer(dir: &Path, metrics_template: &Path) -> PathBuf {
    let exe = dir.join("fake-primer");
    let script = format!(
        r#"#!/bin/sh
[ "$1" = exec ] && [ "$2" = --device ] && [ "$4" = --run-dir ] || {{ echo "bad arguments: $*" >&2; exit 2; }}
dir="$5"
case "$(basename "$dir")" in
prime-*) sleep 1; mkdir "$dir/checkpoint"; exit 0;;
esac
id=$(sed -n 's/.*"priming": *"\([0-9a-f]*\)".*/\1/p' "$dir/spec.json")
if [ -n "$id" ] && [ ! -d "$(dirname "$dir")/prime-$id/checkpoint" ]; then echo "no checkpoint of $id" >&2; exit 4; fi
if grep -q '"lang": "fail"' "$dir/spec.json" && [ ! -e "$dir/attempted" ]; then touch "$dir/attempted"; echo "failing on purpose" >&2; exit 5; fi
cp '{}' "$dir/metrics.json"
"#,
        metrics_template.display()
    );
    std::fs::write(&exe, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

fn metrics_template(path: &Path) {
    let m = primer::train::FinetuneMetrics {
        lang: "hi".into(),
        method: primer::config::FinetuneMethod::Adapter,
        seed: 0,
        dev: Default::default(),
        test: Default::default(),
        best_epoch: 1,
        epochs: vec![],
        trained_params: 1,
        total_params: 2,
        trained_percent: 50.0,
        steps: 1,
        wall_time_s: 0.0,
        truncated_words_dev: 0,
        truncated_words_test: 0,
        eval_sets: Default::default(),
        test_sentence_counts: vec![],
        loss_curve: vec![],
        training_noise: None,
        precision: None,
    };
    std::fs::write(path, serde_json::to_vec(&m).unwrap()).unwrap();
}

/// Two priming runs and five fine-tuning runs (two per priming run, one of which fails once,
/// and one from the plain model).
fn demo_plan(store: &Path) -> Plan {
    let prime = |seed| RunSpec::Prime {
        config: PrimeConfig {
            seed,
            ..Default::default()
        },
    };
    let p = [prime(0), prime(1)];
    let ft = |lang: &str, priming: Option<&RunSpec>| RunSpec::Finetune {
        config: FinetuneConfig {
            lang: lang.into(),
            ..Default::default()
        },
        priming: priming.map(RunSpec::id),
    };
    let specs = [
        (p[0].clone(), vec![]),
        (p[1].clone(), vec![]),
        (ft("hi", Some(&p[0])), vec![0]),
        (ft("ta", Some(&p[0])), vec![0]),
        (ft("hi", Some(&p[1])), vec![1]),
        (ft("fail", Some(&p[1])), vec![1]),
        (ft("hi", None), vec![]),
    ];
    Plan::from_runs("itest", store, "s", Vec::from(specs), vec!["hi".into()])
}

#[test]
fn sweep_adapters_on_a_real_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let slurm = cluster.slurm();
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("metrics-template.json");
    metrics_template(&template);
    let exe = fake_primer(tmp.path(), &template);
    let store = Store::new(tmp.path().join("store"));
    let plan = demo_plan(&store.root);
    let opts = SlurmOptions::default();
    let poll = Duration::from_millis(300);
    let deadline = Instant::now() + Duration::from_secs(120);
    let guard = |_: &[primer::backend::slurm::SlurmRunView]| {
        assert!(Instant::now() < deadline, "sweep did not finish in time");
    };

    let first = submit_sweep(&plan, &store, &slurm, &opts, &exe).unwrap();
    assert_eq!(first.submitted.len(), 7);
    let views = wait_sweep(&plan, &store, &slurm, poll, guard).unwrap();
    let states: Vec<SlurmRunState> = views.iter().map(|v| v.state).collect();
    use SlurmRunState::*;
    assert_eq!(
        states,
        vec![Done, Done, Done, Done, Done, Failed, Done],
        "{views:#?}"
    );
    assert!(
        views[5]
            .detail
            .starts_with("failed with Slurm state FAILED exit 5:0"),
        "{}",
        views[5].detail
    );
    let log = std::fs::read_to_string(views[5].dir.join("log.txt")).unwrap();
    assert!(log.contains("failing on purpose"), "{log}");

    // A rerun submits only the failed run, without a dependency (its priming run is done).
    let second = submit_sweep(&plan, &store, &slurm, &opts, &exe).unwrap();
    assert_eq!(
        second.submitted.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![5]
    );
    assert_eq!(second.done.len(), 6);
    let script = std::fs::read_to_string(&second.arrays[0].chunks[0].script).unwrap();
    assert!(!script.contains("--dependency"), "{script}");
    let views = wait_sweep(&plan, &store, &slurm, poll, guard).unwrap();
    assert!(views.iter().all(|v| v.state == Done), "{views:#?}");
    assert!(
        slurm_status(&plan, &store, &slurm)
            .unwrap()
            .iter()
            .all(|v| v.state == Done)
    );
    drop(cluster);
}
