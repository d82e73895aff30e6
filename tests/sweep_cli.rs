//! The sweep commands from the outside, without training anything: plan output, validation
//! errors, up-front refusals (missing inputs, CUDA, a locked store), and failing runs
//! (retries, error and log reported, dependents of a failed priming run not runnable).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_primer");

fn primer(cwd: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run primer");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// A store, a "model" whose config.json is not a BERT config, and one-sentence language
/// folders: enough to pass the up-front checks (inputs exist, the data reads) and then fail
/// inside every run.
fn broken_setup(t: &Path) {
    std::fs::create_dir_all(t.join("model")).unwrap();
    std::fs::write(t.join("model/config.json"), "{\"not\": \"a bert config\"}").unwrap();
    for l in ["en", "es", "hi"] {
        let dir = t.join("data").join(l);
        std::fs::create_dir_all(&dir).unwrap();
        for split in ["train", "dev", "test"] {
            std::fs::write(
                dir.join(format!("{split}-{l}.tsv")),
                "Jan\tB-PER\nSmuts\tI-PER\n",
            )
            .unwrap();
        }
    }
    std::fs::write(
        t.join("s.toml"),
        r#"name = "broken"
store = "store"
targets = ["hi"]
[base.finetune]
model = "model"
data = { root = "data" }
[settings.primed]
priming = "meta"
[settings.plain]
"finetune.method" = "head"
"#,
    )
    .unwrap();
}

#[test]
fn plan_json_lists_runs_with_dependencies_and_status() {
    let tmp = tempfile::tempdir().unwrap();
    broken_setup(tmp.path());
    let (ok, out) = primer(tmp.path(), &["plan", "--json", "s.toml"]);
    assert!(ok, "{out}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "1 priming + 2 fine-tuning: {out}");
    assert_eq!(rows[0]["kind"], "prime");
    assert_eq!(rows[0]["language"], "en+es");
    let primed = rows
        .iter()
        .find(|r| r["setting"] == "primed" && r["kind"] == "finetune")
        .unwrap();
    assert_eq!(primed["dependencies"], serde_json::json!([rows[0]["id"]]));
    assert_eq!(primed["config"]["lang"], "hi");
    assert_eq!(primed["seed"], 0);
    assert!(rows.iter().all(|r| r["status"] == "pending"));
    let (ok, table) = primer(tmp.path(), &["plan", "s.toml"]);
    assert!(
        ok && table.contains("3 runs (1 priming, 2 fine-tuning"),
        "{table}"
    );
}

#[test]
fn invalid_sweeps_fail_with_file_line_and_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("bad.toml"),
        "name = \"x\"\n[grid]\n\"finetune.lerning_rate\" = [1]\n\"finetune.lr\" = [0.1]\n",
    )
    .unwrap();
    let (ok, out) = primer(tmp.path(), &["plan", "bad.toml"]);
    assert!(!ok);
    assert!(
        out.contains("bad.toml:3:1:") && out.contains("did you mean finetune.lr?"),
        "{out}"
    );
    let (ok, out) = primer(tmp.path(), &["run", "missing.toml"]);
    assert!(!ok && out.contains("missing.toml"), "{out}");
}

#[test]
fn missing_inputs_are_reported_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("s.toml"), "name = \"x\"\nstore = \"store\"\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \"nowhere\"\n").unwrap();
    let (ok, out) = primer(tmp.path(), &["run", "s.toml"]);
    assert!(!ok);
    assert!(
        out.contains("nowhere") && out.contains("the data root data/wikiann does not exist"),
        "{out}"
    );
    assert!(!tmp.path().join("store").exists(), "nothing was started");
}

#[test]
fn a_misspelt_language_is_reported_with_the_languages_the_data_root_holds() {
    let tmp = tempfile::tempdir().unwrap();
    broken_setup(tmp.path());
    let sweep = std::fs::read_to_string(tmp.path().join("s.toml")).unwrap();
    // `primer run` on a copy of the sweep with `from` replaced by `to`, which must fail.
    let run_edited = |file: &str, from: &str, to: &str| {
        std::fs::write(tmp.path().join(file), sweep.replace(from, to)).unwrap();
        let (ok, out) = primer(tmp.path(), &["run", file]);
        assert!(!ok, "{out}");
        out
    };
    let out = run_edited("typo.toml", "targets = [\"hi\"]", "targets = [\"hx\"]");
    assert!(
        out.contains("language hx") && out.contains("did you mean hi?"),
        "{out}"
    );
    assert!(
        out.contains("holds en, es, hi: fix the language code or data.root"),
        "{out}"
    );
    assert!(!tmp.path().join("store").exists(), "nothing was started");

    // A data root that does not exist is named as such, not as one folder per language.
    let out = run_edited("noroot.toml", "root = \"data\"", "root = \"dta\"");
    assert_eq!(
        out.matches("the data root dta does not exist").count(),
        1,
        "{out}"
    );
}

#[test]
fn malformed_data_is_reported_with_file_and_line_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    broken_setup(tmp.path());
    // A target-language line whose columns a space separates, and a source-language tag
    // without its B-/I- prefix.
    std::fs::write(
        tmp.path().join("data/hi/test-hi.tsv"),
        "Jan\tB-PER\n\nमें O\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("data/es/dev-es.tsv"),
        "Jan\tB-PER\nKaapstad\tLOC\n",
    )
    .unwrap();
    let (ok, out) = primer(tmp.path(), &["run", "s.toml", "--plain"]);
    assert!(!ok);
    assert!(
        out.contains("s.toml: input data cannot be used")
            && out.contains("test-hi.tsv:3:")
            && out.contains("put one tab between the token and its tag"),
        "{out}"
    );
    assert!(
        out.contains("dev-es.tsv:2:") && out.contains("unknown tag \"LOC\""),
        "{out}"
    );
    assert!(!tmp.path().join("store").exists(), "nothing was started");
}

#[cfg(not(feature = "cuda"))]
/// Up-front refusals of what used to fail inside the runs: a store that is a file, and a
/// max_len beyond the model's position table (found after training, at the first long test
/// sentence).
#[test]
fn a_store_file_and_a_too_long_max_len_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    broken_setup(t);
    std::fs::write(t.join("store"), "not a folder").unwrap();
    let (ok, out) = primer(t, &["run", "s.toml"]);
    assert!(
        !ok && out.contains("s.toml: store store is a file") && out.contains("store = "),
        "{out}"
    );
    std::fs::remove_file(t.join("store")).unwrap();
    std::fs::write(
        t.join("model/config.json"),
        r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 100}"#,
    )
    .unwrap();
    let text = std::fs::read_to_string(t.join("s.toml"))
        .unwrap()
        .replace("root = \"data\"", "root = \"data\", max_len = 128");
    std::fs::write(t.join("s.toml"), text).unwrap();
    // `primer plan` warns of it, `primer run` refuses.
    let (ok, out) = primer(t, &["plan", "s.toml"]);
    assert!(
        ok && out.contains("warning: `primer run` will refuse to start")
            && out.contains("data.max_len is 128"),
        "{out}"
    );
    let (ok, out) = primer(t, &["run", "s.toml"]);
    assert!(
        !ok && out.contains("data.max_len is 128")
            && out.contains("max_position_embeddings 100")
            && out.contains("at most 100"),
        "{out}"
    );
    assert!(!t.join("store").exists(), "nothing was started");
}

#[test]
fn cuda_devices_fail_up_front_without_cuda() {
    let tmp = tempfile::tempdir().unwrap();
    broken_setup(tmp.path());
    let (ok, out) = primer(tmp.path(), &["run", "s.toml", "--devices", "cuda:0"]);
    assert!(!ok && out.contains("--features cuda"), "{out}");
    assert!(!tmp.path().join("store").exists());
}

#[test]
fn a_second_orchestrator_on_the_same_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    broken_setup(tmp.path());
    let store = primer::sweep::Store::new(tmp.path().join("store"));
    let _held = store.lock("the test").unwrap();
    let (ok, out) = primer(tmp.path(), &["run", "s.toml"]);
    assert!(
        !ok && out.contains("in use") && out.contains("the test"),
        "{out}"
    );
}

#[test]
fn failed_runs_are_retried_reported_and_block_their_dependents() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    broken_setup(t);
    let (ok, out) = primer(
        t,
        &["run", "s.toml", "--retries", "1", "--plain", "--no-report"],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("2 failed, 1 not runnable"), "{out}");
    assert!(out.contains("log:") && out.contains("log.txt"), "{out}");
    assert!(
        out.contains("NOT RUNNABLE") && out.contains("priming run prime-"),
        "{out}"
    );
    let dirs: Vec<_> = std::fs::read_dir(t.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let prime = dirs
        .iter()
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("prime-")
        })
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prime.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "failed");
    assert_eq!(status["attempts"], 2, "one try and one retry");
    assert!(status["error"].as_str().is_some_and(|e| !e.is_empty()));
    let log = std::fs::read_to_string(prime.join("log.txt")).unwrap();
    assert_eq!(log.matches("=== primer: attempt").count(), 2, "{log}");
    assert!(
        log.contains("error:"),
        "the child's error is in the log: {log}"
    );

    let (ok, out) = primer(t, &["status", "s.toml"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("failed   2") && out.contains("blocked  1"),
        "{out}"
    );
    assert!(!out.contains("not created yet"), "{out}");
}

#[test]
fn status_before_the_first_run_says_the_store_is_not_there_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    broken_setup(t);
    let (ok, out) = primer(t, &["status", "s.toml"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("3 runs; store store (not created yet") && out.contains("pending  3"),
        "{out}"
    );
    assert!(!t.join("store").exists(), "status creates nothing");
}

#[test]
fn cancel_explains_that_only_slurm_has_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = primer(tmp.path(), &["cancel", "s.toml"]);
    assert!(!ok && out.contains("Slurm"), "{out}");
}

/// Every sweep shipped under sweeps/ parses, validates and expands into a plan, so a change to
/// a rule or a key name cannot leave a shipped sweep unusable (inputs may be missing: `plan`
/// only warns about them).
#[test]
fn every_shipped_sweep_plans() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sweeps: Vec<_> = std::fs::read_dir(root.join("sweeps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    sweeps.sort();
    assert!(sweeps.len() >= 5, "sweeps/ lost its sweeps: {sweeps:?}");
    for sweep in sweeps {
        let rel = sweep.strip_prefix(root).unwrap().to_str().unwrap();
        let (ok, out) = primer(root, &["plan", rel]);
        assert!(ok, "primer plan {rel} failed:\n{out}");
        assert!(
            out.contains(" runs ("),
            "primer plan {rel}: no run count\n{out}"
        );
    }
}
