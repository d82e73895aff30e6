//! End-to-end tests of `primer score`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn primer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_primer"))
        .args(args)
        .output()
        .expect("run primer")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// I- after O: an entity in the default mode, nothing in strict mode.
const FILE: &str = "-DOCSTART- -X- O O\n\n\
Jan NNP B-PER B-PER\nSmuts NNP I-PER I-PER\nwoon VB O O\nin IN O O\nKaapstad NNP B-LOC I-LOC\n\n\
Die DT O O\nUniversiteit NN B-ORG B-ORG\nStellenbosch NNP I-ORG I-ORG\n";

#[test]
fn json_scores_default_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "pred.txt", FILE);
    let out = primer(&["score", f.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Default: I-LOC after O is a LOC chunk, so all 3 gold entities are found.
    assert_eq!(v["precision"], 1.0);
    assert_eq!(v["recall"], 1.0);
    assert_eq!(v["f1"], 1.0);
    assert_eq!(v["per_type"]["LOC"]["support"], 1);
    assert_eq!(v["per_type"].as_object().unwrap().len(), 3);

    let out = primer(&["score", f.to_str().unwrap(), "--json", "--mode", "strict"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Strict: the stray I-LOC is no entity: P = 2/2, R = 2/3.
    assert_eq!(v["precision"], 1.0);
    assert!((v["recall"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert!((v["f1"].as_f64().unwrap() - 0.8).abs() < 1e-12);
    assert_eq!(v["per_type"]["LOC"]["recall"], 0.0);
    assert_eq!(v["per_type"]["LOC"]["support"], 1);
}

#[test]
fn text_report_is_conlleval_like() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "pred.txt", FILE);
    let out = primer(&["score", f.to_str().unwrap(), "--mode", "strict"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("processed 8 tokens with 3 phrases; found: 2 phrases; correct: 2.\n"),
        "{text}"
    );
    assert!(
        text.contains("accuracy:  87.50%; precision: 100.00%; recall:  66.67%; FB1:  80.00"),
        "{text}"
    );
    assert!(
        text.contains("              PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  1"),
        "{text}"
    );
}

/// The first recorded seqeval case, written as a conlleval file, scores exactly as seqeval did.
#[test]
fn matches_a_recorded_seqeval_case() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seqeval_cases.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for case in doc["cases"].as_array().unwrap().iter().take(5) {
        let mut text = String::new();
        for (g, p) in case["gold"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["pred"].as_array().unwrap())
        {
            for (k, (a, b)) in g
                .as_array()
                .unwrap()
                .iter()
                .zip(p.as_array().unwrap())
                .enumerate()
            {
                text += &format!("w{k} {} {}\n", a.as_str().unwrap(), b.as_str().unwrap());
            }
            text += "\n";
        }
        let f = write(dir.path(), "case.txt", &text);
        for mode in ["default", "strict"] {
            let out = primer(&["score", f.to_str().unwrap(), "--json", "--mode", mode]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let want = &case[mode];
            for key in ["precision", "recall", "f1"] {
                let (a, b) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
                assert!(
                    (a - b).abs() < 1e-9,
                    "case {} {mode} {key}: {a} vs {b}",
                    case["id"]
                );
            }
        }
    }
}

#[test]
fn errors_name_file_and_line_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "bad.txt", "Jan B-PER B-PER\nSmuts I-PER\n");
    let out = primer(&["score", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.txt:2:"), "{err}");

    // IOBES tags are fine in the default mode but not in strict IOB2 mode.
    let f = write(
        dir.path(),
        "iobes.txt",
        "Jan S-PER S-PER\n\nin O O\nKaapstad S-LOC O\n",
    );
    assert!(primer(&["score", f.to_str().unwrap()]).status.success());
    let out = primer(&["score", f.to_str().unwrap(), "--mode", "strict"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("iobes.txt:1:") && err.contains("strict IOB2"),
        "{err}"
    );

    // A tag of no scheme is refused at its line, not scored as an entity.
    let f = write(dir.path(), "q.txt", "Jan B-PER B-PER\nSmuts O Q-PER\n");
    let out = primer(&["score", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("q.txt:2:") && err.contains("`Q-PER`") && err.contains("IOBES"),
        "{err}"
    );

    let out = primer(&["score", dir.path().join("missing.txt").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt"));
}
