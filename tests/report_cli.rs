//! `primer report` end to end: a sweep file whose store holds hand-written `metrics.json` files
//! (no training), reported through the binary.

use primer::config::FinetuneMethod;
use primer::metric::Scores;
use primer::train::FinetuneMetrics;
use std::path::Path;
use std::process::Command;

fn metrics(lang: &str, seed: u64, method: FinetuneMethod, correct: u32) -> FinetuneMetrics {
    let n = 100u32;
    let f1 = f64::from(correct) / f64::from(n);
    let scores = Scores {
        precision: f1,
        recall: f1,
        f1,
        per_type: Default::default(),
    };
    FinetuneMetrics {
        lang: lang.into(),
        method,
        seed,
        dev: scores.clone(),
        test: scores,
        best_epoch: 1,
        epochs: Vec::new(),
        trained_params: 10,
        total_params: 1000,
        trained_percent: 1.0,
        steps: 5,
        wall_time_s: 0.5,
        truncated_words_dev: 0,
        truncated_words_test: 0,
        eval_sets: Default::default(),
        test_sentence_counts: (0..n)
            .map(|i| if i < correct { [1, 1, 1] } else { [0, 1, 1] })
            .collect(),
        loss_curve: vec![1.0, 0.8, 0.6],
        training_noise: None,
        precision: None,
    }
}

fn write_sweep(dir: &Path) -> std::path::PathBuf {
    let sweep = dir.join("cli.toml");
    let text = format!(
        r#"name = "clitest"
store = "{store}"
seeds = [0, 1]
targets = ["hi", "af"]

[base.finetune]
model = "m"

[settings."1/Full FT"]
"finetune.method" = "full"

[settings."3/AT"]
"finetune.method" = "adapter"

[report]
compare = [{{ a = "1/Full FT", b = "3/AT" }}]
bootstrap_samples = 200

[report.paper_rows]
"1/Full FT" = "1/Full FT"
"3/AT" = "3/AT"
"#,
        store = dir.join("store").display()
    );
    std::fs::write(&sweep, text).unwrap();
    sweep
}

#[test]
fn report_command_prints_table_and_writes_files() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = write_sweep(tmp.path());
    let input = primer::sweep::report_input(&sweep).unwrap();
    assert_eq!(input.runs.len(), 8);
    // Every run but 3/AT af seed 1 finished: 1/Full FT gets 90 % of sentences right, 3/AT 80 %.
    let skipped = |r: &primer::report::RunRecord| {
        r.meta.setting == "3/AT" && r.meta.lang == "af" && r.meta.seed == 1
    };
    assert_eq!(input.runs.iter().filter(|r| skipped(r)).count(), 1);
    for r in input.runs.iter().filter(|r| !skipped(r)) {
        let correct = if r.meta.setting == "1/Full FT" {
            90
        } else {
            80
        };
        let m = metrics(&r.meta.lang, r.meta.seed, r.meta.ft_method, correct);
        primer::fsutil::write_json_atomic(&r.meta.run_dir.join("metrics.json"), &m).unwrap();
    }
    let out = tmp.path().join("report");
    let res = Command::new(env!("CARGO_BIN_EXE_primer"))
        .current_dir(tmp.path())
        .args([
            "report",
            sweep.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("7 of 8 fine-tuning runs done"), "{stdout}");
    assert!(stdout.contains("## Table 1"), "{stdout}");
    let full = stdout
        .lines()
        .find(|l| l.starts_with("| 1/Full FT"))
        .unwrap();
    assert!(full.contains("**90.00 ± 0.00**"), "{full}");
    let at = stdout.lines().find(|l| l.starts_with("| 3/AT")).unwrap();
    assert!(
        at.contains("80.00 (n=1)"),
        "the unfinished run leaves one seed: {at}"
    );
    assert!(stdout.contains("paper (Gheini et al. 2022)") && stdout.contains("86.73"));
    assert!(stdout.contains("figure 3 not drawn"), "{stdout}");
    for f in [
        "scores.parquet",
        "scores.csv",
        "table1.md",
        "table1.csv",
        "comparison.md",
        "comparison.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cmp = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(
        cmp.contains("Is a better than b?")
            && cmp.contains("+10.00")
            && cmp.contains("inconclusive (2 seeds)"),
        "{cmp}"
    );
}

#[test]
fn compare_command_prints_the_seed_aware_comparison_of_any_two_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = write_sweep(tmp.path());
    let input = primer::sweep::report_input(&sweep).unwrap();
    for r in &input.runs {
        let correct = if r.meta.setting == "1/Full FT" {
            90
        } else {
            80
        };
        let m = metrics(&r.meta.lang, r.meta.seed, r.meta.ft_method, correct);
        primer::fsutil::write_json_atomic(&r.meta.run_dir.join("metrics.json"), &m).unwrap();
    }
    let compare = |extra: &[&str]| {
        let mut args = vec!["compare", sweep.to_str().unwrap(), "1/Full FT", "3/AT"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_primer"))
            .current_dir(tmp.path())
            .args(&args)
            .output()
            .unwrap()
    };
    let out = compare(&["--lang", "hi"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| hi ") && !stdout.contains("| af ") && stdout.contains("+10.00"),
        "{stdout}"
    );
    assert!(stdout.contains("inconclusive (2 seeds)"), "{stdout}");
    let out = compare(&["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["languages"].as_array().unwrap().len(), 2);
    assert_eq!(json["average"]["verdict"], "inconclusive (2 seeds)");
    assert!((json["average"]["delta"].as_f64().unwrap() - 10.0).abs() < 1e-9);
    // Names that are not settings or languages of the sweep are errors that list the valid ones.
    let out = compare(&["--lang", "xx"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"xx\"") && err.contains("hi, af"), "{err}");
    // A misspelt setting gets the nearest one.
    let out = Command::new(env!("CARGO_BIN_EXE_primer"))
        .current_dir(tmp.path())
        .args(["compare", sweep.to_str().unwrap(), "1/Full-FT", "3/AT"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean \"1/Full FT\"?"), "{err}");
}

#[test]
fn report_command_names_a_missing_sweep_file() {
    let tmp = tempfile::tempdir().unwrap();
    let res = Command::new(env!("CARGO_BIN_EXE_primer"))
        .current_dir(tmp.path())
        .args(["report", "nope.toml"])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("nope.toml"), "{stderr}");
}

/// A sweep over two training sizes that a declared figure plots (no `select` needed for it).
fn write_size_sweep(dir: &Path, figure_x: &str) -> std::path::PathBuf {
    let sweep = dir.join("sizes.toml");
    let text = format!(
        r#"name = "sizes"
store = "{store}"
seeds = [0, 1]
targets = ["hi", "af"]

[base.finetune]
model = "m"

[grid]
"finetune.data.train_limit" = [50, 100]

[settings."3/AT"]
"finetune.method" = "adapter"

[report]
bootstrap_samples = 200

[[report.figure]]
name = "sizes"
kind = "line"
x = "{figure_x}"
facet = "lang"
"#,
        store = dir.join("store").display()
    );
    std::fs::write(&sweep, text).unwrap();
    sweep
}

#[test]
fn declared_figures_and_key_comparisons_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = write_size_sweep(tmp.path(), "finetune.data.train_limit");
    let input = primer::sweep::report_input(&sweep).unwrap();
    assert_eq!(input.runs.len(), 8);
    for r in &input.runs {
        let size = &r
            .meta
            .axes
            .iter()
            .find(|(k, _)| k == "finetune.data.train_limit");
        let correct = if size.unwrap().1 == "50" { 70 } else { 85 };
        let m = metrics(&r.meta.lang, r.meta.seed, r.meta.ft_method, correct);
        primer::fsutil::write_json_atomic(&r.meta.run_dir.join("metrics.json"), &m).unwrap();
    }
    let primer = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_primer"))
            .current_dir(tmp.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = tmp.path().join("report");
    let res = primer(&[
        "report",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&res.stderr)
    );
    // One Table 1 row per size, and the figure with its points: one per language and size.
    assert!(
        stdout.contains("| 3/AT · finetune.data.train_limit=50 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("| 3/AT · finetune.data.train_limit=100 "),
        "{stdout}"
    );
    for f in ["sizes.svg", "sizes.png", "sizes.csv"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("sizes.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(
        rows[0].starts_with("sizes,hi,3/AT,50,test_f1,70.0"),
        "{csv}"
    );
    // `primer compare ... --json`, which must succeed.
    let compare_json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["compare", sweep.to_str().unwrap()];
        all.extend(args);
        all.push("--json");
        let res = primer(&all);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        serde_json::from_slice(&res.stdout).unwrap()
    };
    // Two values of the key, compared: +15 points everywhere.
    let json = compare_json(&["--key", "finetune.data.train_limit", "100", "50"]);
    let pair = &json["pairs"][0];
    assert_eq!(pair["a"], "3/AT · finetune.data.train_limit=100");
    assert!((pair["average"]["delta"].as_f64().unwrap() - 15.0).abs() < 1e-9);
    // A setting split into rows, named whole: its rows against the other side's row of the
    // same size (here only 50), listed as pairs.
    let json = compare_json(&["3/AT", "3/AT · finetune.data.train_limit=50"]);
    let pairs = json["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{json}");
    assert_eq!(pairs[0]["a"], "3/AT · finetune.data.train_limit=50");
    let res = primer(&[
        "compare",
        sweep.to_str().unwrap(),
        "--key",
        "finetune.lr",
        "1",
        "2",
    ]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("not a key this sweep varies"), "{err}");
}

#[test]
fn a_figure_over_a_key_the_sweep_does_not_vary_is_rejected_when_planned() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = write_size_sweep(tmp.path(), "finetune.epochs");
    let res = Command::new(env!("CARGO_BIN_EXE_primer"))
        .current_dir(tmp.path())
        .args(["plan", sweep.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("sizes.toml:21:") && err.contains("not a key this sweep varies"),
        "{err}"
    );
}

#[test]
fn report_open_prints_the_page_and_status_ends_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sweep = write_sweep(tmp.path());
    let primer = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_primer"))
            .current_dir(tmp.path())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let sweep = sweep.to_str().unwrap();
    let before = primer(&["status", sweep]);
    assert!(!before.contains("report page"), "{before}");

    let report = primer(&["report", sweep, "--open"]);
    let page = Path::new("results/clitest/index.html");
    assert_eq!(
        report.lines().last(),
        Some(format!("page: {}", page.display()).as_str()),
        "{report}"
    );
    let html = std::fs::read_to_string(tmp.path().join(page)).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains(sweep));

    let after = primer(&["status", sweep]);
    assert_eq!(
        after.lines().last(),
        Some(format!("report page: {}", page.display()).as_str()),
        "{after}"
    );
}
