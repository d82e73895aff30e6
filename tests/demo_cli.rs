//! `primer demo --quick` end to end, offline, in a fresh directory: the tiny model is created,
//! every Table 1 setting primes and fine-tunes on the committed slices, and the report (Table 1,
//! scores, Figures 3 and 4 as SVG and PNG, the page) lands in results/demo-quick/. A second
//! invocation finds everything done and executes nothing. The page is then loaded in headless
//! Chromium (skipped, saying so, where no Chromium is installed; CI installs it).

use scraper::{Html, Selector};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// The quick demo, run once for the tests of this file: its folder and its first output.
fn quick_demo() -> &'static (PathBuf, String) {
    static DEMO: OnceLock<(PathBuf, String)> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo_cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The demo reads the committed slices and tokenizer relative to the working directory.
        std::os::unix::fs::symlink(crate_dir().join("data"), dir.join("data")).unwrap();
        let first = run_demo(&dir);
        (dir, first)
    })
}

#[test]
fn quick_demo_produces_tables_and_figures_and_resumes_as_done() {
    let (dir, first) = quick_demo();
    let results = dir.join("results/demo-quick");
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
        "index.html",
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
    let second = run_demo(dir);
    assert!(
        second.contains("0 to run")
            || second.contains("nothing to run")
            || second.contains("already done"),
        "a second demo should execute nothing:\n{second}"
    );
}

/// A Chromium to drive headless: $PRIMER_CHROMIUM, or the first of the usual names that runs.
fn chromium() -> Option<String> {
    let candidates = std::env::var("PRIMER_CHROMIUM")
        .map(|c| vec![c])
        .unwrap_or_else(|_| {
            vec![
                "chromium".into(),
                "chromium-browser".into(),
                "google-chrome".into(),
            ]
        });
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Loads `url` in headless Chromium with JavaScript on and returns the DOM after the page's
/// scripts ran, and every console line the page wrote (an uncaught error is one).
fn load(browser: &str, url: &str, extra: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed on {url}:\n{stderr}");
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The run table's rows in a dumped DOM: (shown, every row's data-lang).
fn run_rows(dom: &str) -> (Vec<String>, usize) {
    let doc = Html::parse_document(dom);
    let ready = Selector::parse("html[data-ready=yes]").unwrap();
    assert!(
        doc.select(&ready).next().is_some(),
        "the page's script did not finish"
    );
    let rows = Selector::parse("#run-table tbody tr").unwrap();
    let all: Vec<_> = doc.select(&rows).collect();
    let shown = all
        .iter()
        .filter(|r| r.attr("hidden").is_none())
        .map(|r| r.attr("data-lang").unwrap_or_default().to_string())
        .collect();
    (shown, all.len())
}

#[test]
fn demo_page_runs_in_chromium_and_its_filter_reduces_the_runs() {
    let Some(browser) = chromium() else {
        println!(
            "SKIP: no chromium on PATH (apt-get install chromium); the page was not loaded in a browser"
        );
        return;
    };
    let (dir, _) = quick_demo();
    let page = dir.join("results/demo-quick/index.html");
    let url = format!("file://{}", page.display());

    let shot = dir.join("page.png");
    let (dom, console) = load(
        &browser,
        &url,
        &[
            "--dump-dom",
            "--window-size=1280,1600",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(
        console.is_empty(),
        "console output:\n{}",
        console.join("\n")
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let (shown, total) = run_rows(&dom);
    assert_eq!(total, 9 * 2, "every run of the quick demo has a row");
    assert_eq!(shown.len(), total, "no filter: every row shown");

    // A filter from the address, as the language select sets it: only hi's runs stay.
    let (dom, console) = load(&browser, &format!("{url}?lang=hi"), &["--dump-dom"]);
    assert!(
        console.is_empty(),
        "console output:\n{}",
        console.join("\n")
    );
    let (shown, _) = run_rows(&dom);
    assert_eq!(shown.len(), 9, "{shown:?}");
    assert!(shown.iter().all(|l| l == "hi"), "{shown:?}");
    // A value no run has shows no runs and says so (it used to be dropped: every run shown).
    let (dom, _) = load(&browser, &format!("{url}?lang=xx"), &["--dump-dom"]);
    let (shown, _) = run_rows(&dom);
    assert!(shown.is_empty(), "{shown:?}");
    assert!(
        dom.contains("no run has lang \u{201c}xx\u{201d}"),
        "no notice"
    );

    // The runs behind a number of Table 1, as its link shows them.
    let doc = Html::parse_document(&dom);
    let link = Selector::parse("#table1-table a[data-runs]").unwrap();
    let runs = doc
        .select(&link)
        .next()
        .and_then(|a| a.attr("data-runs"))
        .expect("Table 1 links its numbers to runs")
        .to_string();
    let (dom, _) = load(
        &browser,
        &format!("{url}?runs={}", runs.replace(' ', "+")),
        &["--dump-dom"],
    );
    let (shown, _) = run_rows(&dom);
    assert_eq!(shown.len(), runs.split(' ').count(), "{runs}");
}
