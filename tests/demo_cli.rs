//! `primer demo --quick` end to end, offline, in a fresh directory: the tiny model is created,
//! every Table 1 setting primes and fine-tunes on the committed slices, and the report (Table 1,
//! scores, Figures 3 and 4 as SVG and PNG) lands in results/demo-quick/. A second invocation
//! finds everything done and executes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn primer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_primer"))
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_demo(dir: &Path) -> String {
    let out = primer()
        .args(["demo", "--quick", "--plain"])
        .current_dir(dir)
        .output()
        .expect("run primer demo");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "primer demo --quick failed:\n{text}");
    text
}

#[test]
fn quick_demo_produces_tables_and_figures_and_resumes_as_done() {
    let tmp = tempfile::tempdir().unwrap();
    // The demo reads the committed slices and tokenizer relative to the working directory.
    std::os::unix::fs::symlink(crate_dir().join("data"), tmp.path().join("data")).unwrap();

    let first = run_demo(tmp.path());
    let results = tmp.path().join("results/demo-quick");
    for f in [
        "table1.md",
        "table1.csv",
        "scores.csv",
        "scores.parquet",
        "comparison.md",
        "figure3.svg",
        "figure3.png",
        "figure4.svg",
        "figure4.png",
    ] {
        let p = results.join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 0,
            "missing {}\n{first}",
            p.display()
        );
    }
    let table = std::fs::read_to_string(results.join("table1.md")).unwrap();
    for row in [
        "1/Full FT",
        "2/HT",
        "3/AT",
        "4/Meta Priming→AT",
        "5/FT Priming→AT",
        "6/MP [MAML Loop]→AT",
        "7/MP [1 Inner Step]→AT",
    ] {
        assert!(table.contains(row), "Table 1 lacks row {row}:\n{table}");
    }
    // Every fine-tuning run of the quick demo (9 settings × 2 targets) is in the scores.
    let scores = std::fs::read_to_string(results.join("scores.csv")).unwrap();
    assert_eq!(scores.lines().count(), 1 + 9 * 2, "{scores}");
    // One seed of a random tiny model: the comparisons must not read a win into noise.
    let cmp = std::fs::read_to_string(results.join("comparison.md")).unwrap();
    assert!(cmp.contains("inconclusive (1 seed)"), "{cmp}");
    assert!(
        !cmp.contains("| better ") && !cmp.contains("| worse "),
        "a verdict from one seed:\n{cmp}"
    );
    let fig4 = std::fs::read_to_string(results.join("figure4.svg")).unwrap();
    assert!(
        fig4.contains("<svg") && fig4.contains("PE"),
        "figure 4 is not a labelled SVG"
    );

    // Resume: nothing left to do.
    let second = run_demo(tmp.path());
    assert!(
        second.contains("0 to run")
            || second.contains("nothing to run")
            || second.contains("already done"),
        "a second demo should execute nothing:\n{second}"
    );
}
