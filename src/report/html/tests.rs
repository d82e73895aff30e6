//! The page of a synthetic sweep whose store holds done, failed, pending and blocked runs
//! (and a setting named with markup and quotes), checked with an HTML parser.

use super::render::{anchor, svg_data_url};
use super::*;
use crate::fsutil::write_json_atomic;
use crate::prime::{PrimeCurves, PrimeStepRecord, TaskLosses};
use crate::report::testutil::{input, run};
use crate::report::{PrimingRunRecord, ReportOptions, write_report};
use crate::spec::ReportSpec;
use crate::spec::report::{ComparePair, FigureSeries};
use crate::train::metrics::EpochSummary;
use scraper::{Html, Selector};
use std::collections::HashSet;

/// A setting name that would run a script if it reached the page unescaped.
const HOSTILE: &str = "A <script>alert(\"x\")</script> 'q' & <b>bold</b>";
const ERROR: &str = "out of memory <img src=x onerror=alert(1)>";
const LOG_LINE: &str = "panicked at <script>steal()</script>";

fn status(state: RunState, start: u64, end: Option<u64>, error: Option<&str>) -> RunStatus {
    RunStatus {
        state,
        attempts: 1,
        slot: Some("cpu#1".into()),
        started_at: Some(start),
        finished_at: end,
        error: error.map(str::to_string),
        ..RunStatus::new()
    }
}

fn spec_json(dir: &Path, lang: &str, priming: Option<&str>) {
    let spec = serde_json::json!({
        "kind": "finetune",
        "config": { "lang": lang, "method": "adapter", "lr": 1e-3, "data": { "root": "<data>" } },
        "priming": priming,
    });
    write_json_atomic(&dir.join(layout::SPEC), &spec).unwrap();
}

struct Synthetic {
    _tmp: tempfile::TempDir,
    input: ReportInput,
}

/// Settings HOSTILE and "B" on hi and af, seeds 1-3; every run of B starts from the priming
/// run `p-ok`, HOSTILE's from `p-bad` (which failed). On disk: HOSTILE-af-3 failed with a log,
/// B-af-3 was never started (pending), HOSTILE-hi-3 is blocked; the others are done.
fn synthetic() -> Synthetic {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut runs = Vec::new();
    for setting in [HOSTILE, "B"] {
        for lang in ["hi", "af"] {
            for seed in 1..=3u64 {
                let f1 = 0.4 + 0.05 * seed as f64 + if setting == "B" { 0.1 } else { 0.0 };
                let mut r = run(setting, lang, seed, Some(f1));
                let prime = if setting == "B" { "p-ok" } else { "p-bad" };
                r.meta.run_id = format!("ft-{}-{lang}-{seed}", setting.len());
                r.meta.run_dir = store.join(&r.meta.run_id);
                r.meta.priming_run = Some(prime.to_string());
                let dir = r.meta.run_dir.clone();
                std::fs::create_dir_all(&dir).unwrap();
                let t = seed * 100;
                match (setting == "B", lang, seed) {
                    (false, "af", 3) => {
                        r.metrics = None;
                        spec_json(&dir, lang, Some(prime));
                        write_json_atomic(
                            &dir.join(layout::STATUS),
                            &status(RunState::Failed, t, Some(t + 5), Some(ERROR)),
                        )
                        .unwrap();
                        let log: String = (0..50).map(|i| format!("step {i}\n")).collect();
                        std::fs::write(dir.join(layout::LOG), format!("{log}{LOG_LINE}\n"))
                            .unwrap();
                    }
                    (true, "af", 3) | (false, "hi", 3) => r.metrics = None,
                    _ => {
                        let m = r.metrics.as_mut().unwrap();
                        m.epochs = (1..=3)
                            .map(|epoch| EpochSummary {
                                epoch,
                                mean_train_loss: 1.0 / epoch as f64,
                                dev: m.dev.clone(),
                            })
                            .collect();
                        m.best_epoch = 2;
                        spec_json(&dir, lang, Some(prime));
                        write_json_atomic(
                            &dir.join(layout::STATUS),
                            &status(RunState::Done, t, Some(t + 60), None),
                        )
                        .unwrap();
                    }
                }
                runs.push(r);
            }
        }
    }
    // The done priming run keeps its curves in its checkpoint; the failed one has a log.
    let ok_dir = store.join("prime-ok");
    let curves = PrimeCurves {
        steps: (0..30)
            .map(|step| PrimeStepRecord {
                step,
                lr: 1e-4,
                tasks: vec![TaskLosses {
                    lang: "en".into(),
                    inner_before: Some(2.0 - step as f64 * 0.03),
                    inner_after: Some(1.5 - step as f64 * 0.03),
                    query: 1.8 - step as f64 * 0.02,
                }],
            })
            .collect(),
        dev: Vec::new(),
    };
    write_json_atomic(&ok_dir.join("checkpoint").join(layout::CURVES), &curves).unwrap();
    write_json_atomic(
        &ok_dir.join(layout::STATUS),
        &status(RunState::Done, 10, Some(50), None),
    )
    .unwrap();
    let bad_dir = store.join("prime-bad");
    write_json_atomic(
        &bad_dir.join(layout::STATUS),
        &status(RunState::Failed, 10, Some(20), Some("priming diverged")),
    )
    .unwrap();
    std::fs::write(bad_dir.join(layout::LOG), "loss is NaN\n").unwrap();

    let spec = ReportSpec {
        figure3: vec![
            FigureSeries {
                label: HOSTILE.into(),
                setting: HOSTILE.into(),
            },
            FigureSeries {
                label: "B".into(),
                setting: "B".into(),
            },
        ],
        compare: vec![ComparePair::new("B", HOSTILE)],
        bootstrap_samples: Some(50),
        ..ReportSpec::default()
    };
    let mut inp = input(&[HOSTILE, "B"], &["hi", "af"], runs, spec);
    inp.results_dir = tmp.path().join("results");
    inp.priming_runs = vec![
        PrimingRunRecord {
            run_id: "p-ok".into(),
            setting: "B".into(),
            checkpoint_dir: ok_dir.join("checkpoint"),
            done: true,
        },
        PrimingRunRecord {
            run_id: "p-bad".into(),
            setting: HOSTILE.into(),
            checkpoint_dir: bad_dir.join("checkpoint"),
            done: false,
        },
    ];
    Synthetic {
        _tmp: tmp,
        input: inp,
    }
}

fn select(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn page_of(input: &ReportInput) -> (String, Html) {
    let summary = write_report(
        input,
        &ReportOptions {
            sweep_file: Some(PathBuf::from("sweeps/<odd> \"name\".toml")),
            ..ReportOptions::default()
        },
    )
    .unwrap();
    assert_eq!(summary.page, input.results_dir.join(PAGE_FILE));
    assert!(summary.files.contains(&summary.page));
    let text = std::fs::read_to_string(&summary.page).unwrap();
    let doc = Html::parse_document(&text);
    (text, doc)
}

#[test]
fn the_page_has_every_table_and_run_and_every_link_resolves() {
    let s = synthetic();
    let (_, doc) = page_of(&s.input);
    for id in [
        "table1-table",
        "pairs-table",
        "run-table",
        "priming-table",
        "run-counts",
    ] {
        assert!(
            doc.select(&select(&format!("#{id}"))).next().is_some(),
            "no #{id}"
        );
    }
    // Every run has its row, in input order, with its setting read back exactly.
    let rows: Vec<_> = doc.select(&select("#run-table tbody tr")).collect();
    assert_eq!(rows.len(), s.input.runs.len());
    for (row, r) in rows.iter().zip(&s.input.runs) {
        assert_eq!(row.attr("data-setting"), Some(r.meta.setting.as_str()));
        assert_eq!(row.attr("data-lang"), Some(r.meta.lang.as_str()));
    }
    let states: Vec<&str> = rows.iter().filter_map(|r| r.attr("data-status")).collect();
    for state in ["done", "failed", "pending", "blocked"] {
        assert!(states.contains(&state), "no {state} row: {states:?}");
    }

    // Every in-page link lands on an element; every run list names existing rows.
    let ids: HashSet<&str> = doc
        .select(&select("[id]"))
        .filter_map(|e| e.attr("id"))
        .collect();
    let links: Vec<&str> = doc
        .select(&select("a[href]"))
        .filter_map(|a| a.attr("href"))
        .collect();
    assert!(links.len() > s.input.runs.len(), "{links:?}");
    for href in &links {
        let target = href.strip_prefix('#').unwrap_or_else(|| {
            panic!("{href}: the page links outside itself");
        });
        assert!(ids.contains(target), "link {href} has no target");
    }
    let keys: HashSet<&str> = rows.iter().filter_map(|r| r.attr("data-key")).collect();
    let run_lists: Vec<&str> = doc
        .select(&select("a[data-runs]"))
        .filter_map(|a| a.attr("data-runs"))
        .collect();
    assert!(!run_lists.is_empty());
    for list in &run_lists {
        for k in list.split(' ') {
            assert!(keys.contains(k), "data-runs {list:?} names no row {k}");
        }
    }
    // Table 1's B · hi cell averages B's three finished hi runs.
    let b_hi = doc
        .select(&select("#table1-table a[data-runs]"))
        .find(|a| a.attr("data-label") == Some("B · hi"))
        .expect("a link on B · hi");
    let behind: Vec<usize> = b_hi
        .attr("data-runs")
        .unwrap()
        .split(' ')
        .map(|k| k.parse().unwrap())
        .collect();
    assert_eq!(behind.len(), 3);
    for k in behind {
        let m = &s.input.runs[k].meta;
        assert_eq!((m.setting.as_str(), m.lang.as_str()), ("B", "hi"));
    }

    // The header counts runs (9 done, 1 failed, 1 pending, 1 blocked fine-tuning runs; one
    // done and one failed priming run) and the span from the first start to the last end.
    let counts: String = doc
        .select(&select("#run-counts"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert_eq!(counts, "10 done · 2 failed · 1 pending · 1 blocked");
    let header: String = doc
        .select(&select("header"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert!(header.contains("5 min 50 s"), "{header}");
    assert!(header.contains("sweeps/<odd> \"name\".toml"), "{header}");
    assert!(header.contains("cpu"), "{header}");
}

#[test]
fn nothing_from_the_store_or_the_sweep_becomes_markup() {
    let s = synthetic();
    let (text, doc) = page_of(&s.input);
    // The page's own script is the only one, and no element comes from a name or a log.
    assert_eq!(doc.select(&select("script")).count(), 1);
    assert_eq!(doc.select(&select("body b, body img[onerror]")).count(), 0);
    assert!(!text.contains("<script>alert") && !text.contains("<script>steal"));
    assert!(!text.contains("<img src=x"));
    // … and they read back as the text they are.
    let body: String = doc.select(&select("body")).next().unwrap().text().collect();
    for s in [HOSTILE, ERROR, LOG_LINE, "priming diverged", "loss is NaN"] {
        assert!(body.contains(s), "the page does not show {s:?}");
    }
    // The figure is an image of the SVG file, which cannot run scripts either.
    let imgs: Vec<&str> = doc
        .select(&select("#figures img"))
        .filter_map(|i| i.attr("src"))
        .collect();
    assert_eq!(imgs.len(), 1, "figure 3 only");
    assert!(imgs[0].starts_with("data:image/svg+xml;"));
}

#[test]
fn run_details_hold_curves_scores_errors_and_primed_runs() {
    let s = synthetic();
    let (_, doc) = page_of(&s.input);
    let detail = |id: &str| {
        doc.select(&select(&format!("details#{}", render::run_anchor(id))))
            .next()
            .unwrap_or_else(|| panic!("no detail of {id}"))
    };
    let done = detail(&s.input.runs[0].meta.run_id);
    assert_eq!(done.select(&select("svg.chart polyline")).count(), 2);
    assert_eq!(done.select(&select("svg.chart circle.mark")).count(), 1);
    let types: Vec<String> = done
        .select(&select("table.types tbody td:first-child"))
        .map(|t| t.text().collect())
        .collect();
    assert_eq!(types, ["LOC", "ORG", "PER", "all"]);
    // The run's own configuration keys; those every run shares are shown once.
    let text_of = |e: scraper::ElementRef<'_>| e.text().collect::<String>();
    let own = text_of(done.select(&select("details.config pre")).next().unwrap());
    assert!(
        own.contains("lang = \"hi\"") && !own.contains("data.root"),
        "{own}"
    );
    let shared = text_of(doc.select(&select("#shared-config pre")).next().unwrap());
    assert!(
        shared.contains("data.root = \"<data>\"") && !shared.contains("lang"),
        "{shared}"
    );

    let failed = s
        .input
        .runs
        .iter()
        .find(|r| r.meta.setting == HOSTILE && r.meta.lang == "af" && r.meta.seed == 3)
        .unwrap();
    let failed = detail(&failed.meta.run_id);
    let log: String = failed
        .select(&select("pre.log"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert_eq!(log.lines().count(), LOG_TAIL_LINES);
    assert!(log.ends_with(LOG_LINE), "{log}");
    assert!(failed.text().any(|t| t.contains(ERROR)));

    let primed = doc
        .select(&select(&format!(
            "details#{}",
            render::priming_anchor("p-ok")
        )))
        .next()
        .unwrap();
    assert_eq!(primed.select(&select("svg.chart polyline")).count(), 3);
    // B's five started or finished runs and its pending one start from p-ok.
    assert_eq!(primed.select(&select("ul.dependents a")).count(), 6);
}

#[test]
fn anchors_keep_safe_names_and_tell_others_apart() {
    assert_eq!(anchor("run-", "0123abcd"), "run-0123abcd");
    assert_eq!(anchor("run-", "a b"), "run-a-20b");
    assert_ne!(anchor("x", "a-b"), anchor("x", "a_b"));
    assert!(
        anchor("x", HOSTILE)
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
}

#[test]
fn svg_data_urls_encode_what_would_end_the_url() {
    assert_eq!(
        svg_data_url("<svg>\n<text fill=\"#000\">100%</text>"),
        "data:image/svg+xml;charset=utf-8,<svg>%0A<text fill=\"%23000\">100%25</text>"
    );
}

#[test]
fn log_tail_reads_the_last_lines_of_a_long_log() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log.txt");
    let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&path, &text).unwrap();
    let tail = log_tail(&path, 3);
    assert_eq!(tail, ["line 4997", "line 4998", "line 4999"]);
    assert!(log_tail(&tmp.path().join("absent"), 3).is_empty());
}

/// Where a figure plots a key a setting varies, Table 1 has a row per value
/// (`AT · key=50`): its numbers link to the runs of that value (the page once matched runs
/// to rows by the setting's own name, so the few-shot page had no links at all).
#[test]
fn the_rows_of_a_split_setting_link_to_their_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "finetune.data.train_limit";
    let mut runs = Vec::new();
    for n in ["50", "100"] {
        for seed in 1..=2u64 {
            let mut r = run("AT", "hi", seed, Some(0.4 + seed as f64 / 10.0));
            r.meta.axes.push((key.to_string(), n.to_string()));
            r.meta.run_id = format!("at-{n}-{seed}");
            runs.push(r);
        }
    }
    let spec = ReportSpec {
        figure: vec![crate::spec::report::FigureSpec {
            name: "sizes".into(),
            kind: crate::spec::report::FigureKind::Line,
            x: key.into(),
            series: "setting".into(),
            y: Default::default(),
            facet: Default::default(),
            filter: None,
            title: None,
        }],
        bootstrap_samples: Some(50),
        ..ReportSpec::default()
    };
    let mut inp = input(&["AT"], &["hi"], runs, spec);
    inp.results_dir = tmp.path().join("results");
    let (_, doc) = page_of(&inp);
    for n in ["50", "100"] {
        let label = format!("AT · {key}={n} · hi");
        let link = doc
            .select(&select("#table1-table a[data-runs]"))
            .find(|a| a.attr("data-label") == Some(label.as_str()))
            .unwrap_or_else(|| panic!("no link on {label}"));
        let behind: Vec<&str> = link
            .attr("data-runs")
            .unwrap()
            .split(' ')
            .map(|k| inp.runs[k.parse::<usize>().unwrap()].meta.run_id.as_str())
            .collect();
        assert_eq!(
            behind,
            [format!("at-{n}-1"), format!("at-{n}-2")],
            "{label}"
        );
    }
}
