//! End-to-end tests of `primer::report::write_report` on a synthetic sweep: every output file,
//! the parquet/CSV round trip through polars, the paper comparison, the paired bootstrap and
//! the figures. Set `PRIMER_KEEP_REPORT=DIR` to keep the report for inspection.

use polars_io::SerReader;
use polars_io::csv::read::CsvReadOptions;
use polars_io::parquet::read::ParquetReader;
use primer::config::{FinetuneMethod, InnerLoop, PrimingMethod};
use primer::metric::{Scores, TypeScores};
use primer::prime::{PrimeCurves, PrimeStepRecord, TaskLosses};
use primer::report::{
    PrimingRunRecord, ReportInput, ReportOptions, RunMeta, RunRecord, write_report,
};
use primer::spec::ReportSpec;
use primer::spec::report::{ComparePair, FigureSeries};
use primer::train::FinetuneMetrics;
use std::path::{Path, PathBuf};

const SENTENCES: u32 = 200;

/// Metrics whose per-sentence counts give exactly `correct / SENTENCES` as micro F1 (one gold
/// and one predicted entity per sentence).
fn metrics(lang: &str, seed: u64, correct: u32, method: FinetuneMethod) -> FinetuneMetrics {
    let f1 = f64::from(correct) / f64::from(SENTENCES);
    let scores = |f: f64| Scores {
        precision: f,
        recall: f,
        f1: f,
        per_type: [("PER", f + 0.02), ("ORG", f - 0.05), ("LOC", f)]
            .into_iter()
            .map(|(t, v)| {
                let ts = TypeScores {
                    precision: v,
                    recall: v,
                    f1: v,
                    support: 50,
                };
                (t.to_string(), ts)
            })
            .collect(),
    };
    FinetuneMetrics {
        lang: lang.into(),
        method,
        seed,
        dev: scores(f1 + 0.01),
        test: scores(f1),
        best_epoch: 2,
        epochs: Vec::new(),
        trained_params: if method == FinetuneMethod::Full {
            1000
        } else {
            4
        },
        total_params: 1000,
        trained_percent: if method == FinetuneMethod::Full {
            100.0
        } else {
            0.4
        },
        steps: 30,
        wall_time_s: 2.0,
        truncated_words_dev: 0,
        truncated_words_test: 0,
        eval_sets: Default::default(),
        test_sentence_counts: (0..SENTENCES)
            .map(|i| {
                if (i * 7 + seed as u32) % SENTENCES < correct {
                    [1, 1, 1]
                } else {
                    [0, 1, 1]
                }
            })
            .collect(),
        loss_curve: (0..120).map(|i| 2.0 / (1.0 + i as f32 * 0.1)).collect(),
        training_noise: None,
        precision: None,
    }
}

struct Setting {
    name: &'static str,
    priming: Option<(PrimingMethod, Option<InnerLoop>)>,
    method: FinetuneMethod,
    /// Correct sentences per language (hi, af, az); None: not done.
    correct: [Option<u32>; 3],
}

const LANGS: [&str; 3] = ["hi", "af", "az"];

fn synthetic(results_dir: &Path) -> ReportInput {
    synthetic_seeds(results_dir, &[1, 2])
}

/// The synthetic sweep with these seeds; seed s is s − 1 sentences better than seed 1.
fn synthetic_seeds(results_dir: &Path, seeds: &[u64]) -> ReportInput {
    use FinetuneMethod::*;
    let pe = Some((PrimingMethod::Meta, Some(InnerLoop::Pe)));
    let maml = Some((PrimingMethod::Meta, Some(InnerLoop::Full)));
    let settings = [
        Setting {
            name: "1/Full FT",
            priming: None,
            method: Full,
            correct: [Some(174), Some(182), Some(176)],
        },
        Setting {
            name: "3/AT",
            priming: None,
            method: Adapter,
            correct: [Some(156), Some(168), Some(162)],
        },
        Setting {
            name: "4/Meta Priming→AT",
            priming: pe,
            method: Adapter,
            correct: [Some(170), Some(176), Some(166)],
        },
        Setting {
            name: "6/MP [MAML Loop]→AT",
            priming: maml,
            method: Adapter,
            correct: [Some(160), None, None],
        },
        Setting {
            name: "PE inner→Full FT",
            priming: pe,
            method: Full,
            correct: [Some(178), Some(184), Some(180)],
        },
        Setting {
            name: "Full inner→Full FT",
            priming: maml,
            method: Full,
            correct: [Some(180), Some(186), Some(178)],
        },
    ];
    let mut runs = Vec::new();
    for (si, s) in settings.iter().enumerate() {
        for (li, lang) in LANGS.iter().enumerate() {
            for &seed in seeds {
                // Seed 2 is one sentence better, so sds are non-zero.
                let correct = s.correct[li].map(|c| c + seed as u32 - 1);
                runs.push(RunRecord {
                    meta: RunMeta {
                        run_id: format!("ft-{si}-{lang}-{seed}"),
                        setting: s.name.into(),
                        priming: s.priming.map(|p| p.0),
                        priming_run: None,
                        inner_loop: s.priming.and_then(|p| p.1),
                        pe_method: None,
                        inner_steps: s.priming.map(|_| 5),
                        inner_lr: s.priming.map(|_| 0.03),
                        outer_lr: s.priming.map(|_| 5e-5),
                        ft_method: s.method,
                        ft_lr: s.method.default_lr(),
                        lang: lang.to_string(),
                        seed,
                        run_dir: results_dir.join("store"),
                        evaluation: Vec::new(),
                        axes: Vec::new(),
                    },
                    metrics: correct.map(|c| metrics(lang, seed, c, s.method)),
                });
            }
        }
    }
    // One finished priming run (curves.json) and one not finished.
    let ckpt = results_dir.join("prime-ckpt");
    let curves = PrimeCurves {
        steps: (0..20)
            .map(|step| PrimeStepRecord {
                step,
                lr: 5e-5,
                tasks: ["en", "es"]
                    .iter()
                    .map(|l| TaskLosses {
                        lang: l.to_string(),
                        inner_before: Some(1.5 - step as f64 * 0.02),
                        inner_after: Some(1.0 - step as f64 * 0.02),
                        query: 1.2 - step as f64 * 0.03,
                    })
                    .collect(),
            })
            .collect(),
        dev: Vec::new(),
    };
    primer::fsutil::write_json_atomic(&ckpt.join("curves.json"), &curves).unwrap();
    let priming_runs = vec![
        PrimingRunRecord {
            run_id: "prime-pe".into(),
            setting: "4/Meta Priming→AT".into(),
            checkpoint_dir: ckpt.clone(),
            done: true,
        },
        PrimingRunRecord {
            run_id: "prime-pe".into(),
            setting: "PE inner→Full FT".into(),
            checkpoint_dir: ckpt,
            done: true,
        },
        PrimingRunRecord {
            run_id: "prime-maml".into(),
            setting: "6/MP [MAML Loop]→AT".into(),
            checkpoint_dir: results_dir.join("absent"),
            done: false,
        },
    ];
    let spec = ReportSpec {
        table1_rows: settings[..4].iter().map(|s| s.name.to_string()).collect(),
        table1_groups: vec![
            vec!["1/Full FT".into(), "3/AT".into()],
            vec!["4/Meta Priming→AT".into(), "6/MP [MAML Loop]→AT".into()],
        ],
        paper_rows: [
            ("1/Full FT", "1/Full FT"),
            ("3/AT", "3/AT"),
            ("4/Meta Priming→AT", "4/Meta Priming → AT"),
            ("6/MP [MAML Loop]→AT", "6/MP [MAML Loop] → AT"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect(),
        figure3: vec![
            FigureSeries {
                label: "PE inner loop".into(),
                setting: "PE inner→Full FT".into(),
            },
            FigureSeries {
                label: "Full (MAML) inner loop".into(),
                setting: "Full inner→Full FT".into(),
            },
            FigureSeries {
                label: "No priming".into(),
                setting: "1/Full FT".into(),
            },
        ],
        figure4: Some([
            ["4/Meta Priming→AT".into(), "PE inner→Full FT".into()],
            ["6/MP [MAML Loop]→AT".into(), "Full inner→Full FT".into()],
        ]),
        compare: vec![
            ComparePair::new("4/Meta Priming→AT", "3/AT"),
            ComparePair {
                why: Some("the inner loops before full FT".into()),
                ..ComparePair::new("Full inner→Full FT", "PE inner→Full FT")
            },
        ],
        bootstrap_samples: Some(400),
        select: None,
        figure: Vec::new(),
    };
    ReportInput {
        sweep_name: "synthetic".into(),
        spec,
        settings: settings.iter().map(|s| s.name.to_string()).collect(),
        languages: LANGS.iter().map(|s| s.to_string()).collect(),
        runs,
        priming_runs,
        results_dir: results_dir.to_path_buf(),
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[1..4], b"PNG", "{} is not a PNG", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("PRIMER_KEEP_REPORT") {
        Some(d) => (None, PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().join("results");
            (Some(t), p)
        }
    }
}

#[test]
fn full_report_on_a_synthetic_sweep() {
    let (_keep, dir) = out_dir();
    let input = synthetic(&dir);
    let opts = ReportOptions {
        curves: true,
        bootstrap_seed: 7,
        ..ReportOptions::default()
    };
    let summary = write_report(&input, &opts).unwrap();
    assert_eq!((summary.runs_done, summary.runs_total), (32, 36));
    for f in [
        "scores.parquet",
        "scores.csv",
        "table1.md",
        "table1.csv",
        "comparison.md",
        "comparison.csv",
        "figure3.svg",
        "figure3.png",
        "figure4.svg",
        "figure4.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
        assert!(summary.files.contains(&dir.join(f)), "{f} not listed");
    }
    assert!(
        summary.skipped.is_empty() || summary.skipped.iter().all(|s| !s.contains("figure")),
        "{:?}",
        summary.skipped
    );
    for f in ["figure3.png", "figure4.png"] {
        let (w, h) = png_size(&dir.join(f));
        assert!(w >= 800 && h >= 500, "{f} is {w}x{h}");
    }
    // Every file written is readable by others (the PNGs were once left at tempfile's 0600,
    // unreadable to the rest of a group sharing the results).
    #[cfg(unix)]
    for f in &summary.files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "{} has mode {mode:o}", f.display());
    }
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Learning curves: one per finished fine-tuning run, one for the shared priming run.
    let curves: Vec<String> = std::fs::read_dir(dir.join("curves"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        curves
            .iter()
            .filter(|n| n.starts_with("prime-") && n.ends_with(".svg"))
            .count(),
        1
    );
    assert!(
        curves
            .iter()
            .filter(|n| n.starts_with("ft-") && n.ends_with(".png"))
            .count()
            >= 1
    );
    let prime_svg = std::fs::read_to_string(dir.join("curves/prime-prime-pe.svg")).unwrap();
    assert!(
        prime_svg.contains("query loss")
            && prime_svg.contains("4/Meta Priming→AT, PE inner→Full FT")
    );

    // Terminal text: the table and the comparison, and where things went.
    assert!(summary.text.contains("## Table 1") && summary.text.contains("32 of 36"));
    assert!(summary.text.contains("paper (Gheini et al. 2022)"));
    assert!(summary.text.contains("figure3.svg") && summary.text.contains("curves/ ("));

    // Table 1: 1/Full FT on hi = mean(87.0, 87.5) = 87.25 ± 0.35, best of its group.
    let md = std::fs::read_to_string(dir.join("table1.md")).unwrap();
    let full = md.lines().find(|l| l.contains("1/Full FT")).unwrap();
    assert!(full.contains("**87.25 ± 0.35**"), "{md}");
    assert!(full.contains(" 100 |"), "{full}");
    let maml = md.lines().find(|l| l.contains("MAML")).unwrap();
    assert_eq!(maml.matches('–').count(), 2, "{maml}");
    assert!(maml.contains('†'), "{maml}");
    let t1 = CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(dir.join("table1.csv")))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(t1.height(), 4);
    let hi = t1.column("hi_mean").unwrap().f64().unwrap();
    assert!((hi.get(0).unwrap() - 87.25).abs() < 1e-9);
}

#[test]
fn scores_round_trip_through_parquet_and_csv() {
    let (_keep, dir) = out_dir();
    let dir = dir.join("roundtrip");
    let mut input = synthetic(&dir);
    input.spec.figure3.clear();
    input.spec.figure4 = None;
    input.spec.compare.clear();
    write_report(&input, &ReportOptions::default()).unwrap();
    let file = std::fs::File::open(dir.join("scores.parquet")).unwrap();
    let pq = ParquetReader::new(file).finish().unwrap();
    let csv = CsvReadOptions::default()
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(dir.join("scores.csv")))
        .unwrap()
        .finish()
        .unwrap();
    for df in [&pq, &csv] {
        assert_eq!(df.height(), input.runs.len());
        for c in [
            "setting",
            "priming",
            "inner_loop",
            "inner_steps",
            "inner_lr",
            "outer_lr",
            "ft_method",
            "ft_lr",
            "trained_percent",
            "lang",
            "seed",
            "dev_precision",
            "dev_recall",
            "dev_f1",
            "test_precision",
            "test_recall",
            "test_f1",
            "test_f1_PER",
            "test_f1_ORG",
            "test_f1_LOC",
            "steps",
            "wall_time_s",
            "run_id",
        ] {
            assert!(df.column(c).is_ok(), "column {c} missing");
        }
        // Runs not done are null, never zero.
        let f1 = df.column("test_f1").unwrap().f64().unwrap();
        assert_eq!(f1.null_count(), 4);
        assert!((0..df.height()).filter_map(|i| f1.get(i)).all(|v| v > 0.5));
        let settings = df.column("setting").unwrap().str().unwrap();
        let langs = df.column("lang").unwrap().str().unwrap();
        for i in 0..df.height() {
            let missing =
                settings.get(i) == Some("6/MP [MAML Loop]→AT") && langs.get(i) != Some("hi");
            assert_eq!(f1.get(i).is_none(), missing, "row {i}");
        }
        let first = &input.runs[0];
        let m = first.metrics.as_ref().unwrap();
        assert_eq!(f1.get(0), Some(m.test.f1));
        assert_eq!(
            df.column("test_f1_ORG").unwrap().f64().unwrap().get(0),
            Some(m.test.per_type["ORG"].f1)
        );
        assert_eq!(settings.get(0), Some("1/Full FT"));
        assert_eq!(df.column("priming").unwrap().str().unwrap().get(0), None);
        let inner = df.column("inner_loop").unwrap().str().unwrap();
        let idx = (0..df.height())
            .find(|&i| settings.get(i) == Some("6/MP [MAML Loop]→AT"))
            .unwrap();
        assert_eq!(inner.get(idx), Some("full"));
    }
}

#[test]
fn comparison_with_the_paper_and_bootstrap() {
    let (_keep, dir) = out_dir();
    let dir = dir.join("compare");
    let input = synthetic(&dir);
    let summary = write_report(&input, &ReportOptions::default()).unwrap();
    let cmp = &summary.comparison;
    // Paper rows: ours vs the paper per language, averaged over languages where both exist.
    let at = cmp.paper_rows.iter().find(|r| r.setting == "3/AT").unwrap();
    assert_eq!(at.paper_label, "3/AT");
    assert_eq!(at.paper, vec![Some(77.76), Some(84.10), Some(81.08)]);
    assert!((at.ours[0].unwrap() - 78.25).abs() < 1e-9);
    let maml = cmp
        .paper_rows
        .iter()
        .find(|r| r.setting.contains("MAML"))
        .unwrap();
    assert_eq!(maml.avg_languages, 1);
    assert_eq!(maml.paper_avg, Some(80.18));
    let md = std::fs::read_to_string(dir.join("comparison.md")).unwrap();
    assert!(md.contains("paper (Gheini et al. 2022)") && md.contains("Δ ours − paper"));
    assert!(md.contains("+0.49"), "3/AT hi: 78.25 − 77.76\n{md}");
    assert!(md.contains("## Figure 4") && md.contains("90.79"));

    // 4/Meta (≈ 85 %) vs 3/AT (≈ 81 %) on 2 seeds: the scoring-noise interval excludes 0
    // everywhere, but two seeds cannot tell a setting from its run-to-run variance.
    let p = &cmp.pairs[0];
    assert_eq!(p.why, "[report] compare");
    assert_eq!(cmp.pairs[1].why, "the inner loops before full FT");
    assert_eq!(p.per_lang.len(), 3);
    for d in &p.per_lang {
        assert!(d.scoring_noise.ci_low > 0.0, "{d:?}");
        assert_eq!((d.seeds(), d.sentences), (2, Some(200)));
        assert_eq!(d.scoring_noise.samples, 400);
        assert_eq!(d.verdict.to_string(), "inconclusive (2 seeds)");
        assert!(d.seed_aware.is_some());
    }
    let avg = p.average.as_ref().unwrap();
    assert!(
        avg.scoring_noise.ci_low > 0.0 && avg.delta() > 3.0,
        "{avg:?}"
    );
    assert_eq!(avg.verdict.to_string(), "inconclusive (2 seeds)");
    // Full-inner vs PE-inner full FT differ by one sentence or so: the CI contains 0.
    let q = &cmp.pairs[1];
    let avg = q.average.as_ref().unwrap();
    assert!(
        avg.scoring_noise.ci_low < 0.0 && avg.scoring_noise.ci_high > 0.0,
        "{avg:?}"
    );
    // Same seed → same intervals.
    let again = write_report(&input, &ReportOptions::default()).unwrap();
    assert_eq!(again.comparison.pairs, cmp.pairs);
    assert!(md.contains("inconclusive (2 seeds)") && md.contains("scoring noise only"));

    let csv = CsvReadOptions::default()
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(dir.join("comparison.csv")))
        .unwrap()
        .finish()
        .unwrap();
    let section = csv.column("section").unwrap().str().unwrap();
    let n = |s: &str| {
        (0..csv.height())
            .filter(|&i| section.get(i) == Some(s))
            .count()
    };
    // 4 mapped rows × (3 languages + avg), 4 figure-4 cells, 2 pairs × (3 languages + avg).
    assert_eq!(
        (
            n("paper"),
            n("figure4"),
            n("comparison"),
            n("trained_percent")
        ),
        (16, 4, 8, 4)
    );
    let verdicts = csv.column("verdict").unwrap().str().unwrap();
    assert!(
        (0..csv.height())
            .filter(|&i| section.get(i) == Some("comparison"))
            .all(|i| verdicts.get(i) == Some("inconclusive (2 seeds)"))
    );
    assert!((at.ours_percent.unwrap() - 0.4).abs() < 1e-12);
    assert!(md.contains("% params"), "{md}");
}

#[test]
fn verdicts_with_five_seeds_and_the_default_pairs() {
    let (_keep, dir) = out_dir();
    let dir = dir.join("verdicts");
    let mut input = synthetic_seeds(&dir, &[1, 2, 3, 4, 5]);
    input.spec.compare.clear();
    let summary = write_report(&input, &ReportOptions::default()).unwrap();
    let pairs: Vec<(&str, &str, &str)> = summary
        .comparison
        .pairs
        .iter()
        .map(|p| (p.a.as_str(), p.b.as_str(), p.why.as_str()))
        .collect();
    // Primed rows vs their unprimed counterparts, row 4 vs 6 (via paper_rows), and Figure 4's
    // two columns (4 vs 6 is already there).
    assert_eq!(
        pairs,
        vec![
            (
                "4/Meta Priming→AT",
                "3/AT",
                "primed vs unprimed, adapter fine-tuning"
            ),
            (
                "6/MP [MAML Loop]→AT",
                "3/AT",
                "primed vs unprimed, adapter fine-tuning"
            ),
            (
                "PE inner→Full FT",
                "1/Full FT",
                "primed vs unprimed, full fine-tuning"
            ),
            (
                "Full inner→Full FT",
                "1/Full FT",
                "primed vs unprimed, full fine-tuning"
            ),
            (
                "4/Meta Priming→AT",
                "6/MP [MAML Loop]→AT",
                "Table 1: row 4 vs row 6"
            ),
            (
                "Full inner→Full FT",
                "PE inner→Full FT",
                "Figure 4: MAML loop vs PE inner loop before full fine-tuning"
            ),
        ]
    );
    let by = |a: &str, b: &str| {
        summary
            .comparison
            .pairs
            .iter()
            .find(|p| p.a == a && p.b == b)
            .unwrap()
    };
    // A 7-point gain that every seed shows: better, in every language and on average.
    let p = by("4/Meta Priming→AT", "3/AT");
    for d in p.per_lang.iter().chain(&p.average) {
        assert_eq!(d.verdict.to_string(), "better", "{d:?}");
        assert_eq!(d.seeds(), 5);
    }
    // One sentence either way, the same on every seed: no detectable difference.
    let q = by("Full inner→Full FT", "PE inner→Full FT");
    let avg = q.average.as_ref().unwrap();
    assert_eq!(avg.verdict.to_string(), "no detectable difference");
    // 6/MP finished hi only: its pairs have one language and say why the others are missing.
    let r = by("6/MP [MAML Loop]→AT", "3/AT");
    assert_eq!(r.per_lang.len(), 1);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("af, az: no seed with both settings finished")),
        "{:?}",
        r.notes
    );
    let md = std::fs::read_to_string(dir.join("comparison.md")).unwrap();
    assert!(
        md.contains("### 4/Meta Priming→AT − 3/AT (primed vs unprimed, adapter fine-tuning)")
            && md.contains("| better ")
            && md.contains("### Full inner→Full FT − PE inner→Full FT"),
        "{md}"
    );
}

#[test]
fn compare_settings_agrees_with_the_report_for_the_same_pair() {
    let (_keep, dir) = out_dir();
    let dir = dir.join("agree");
    let input = synthetic_seeds(&dir, &[1, 2, 3]);
    let summary = write_report(&input, &ReportOptions::default()).unwrap();
    for declared in &summary.comparison.pairs {
        let mut alone = primer::report::compare::compare_settings(
            &input,
            &declared.a,
            &declared.b,
            &[],
            input.spec.bootstrap_samples.unwrap(),
            ReportOptions::default().bootstrap_seed,
        )
        .unwrap()
        .pop()
        .unwrap();
        assert_eq!(alone.why, "primer compare");
        alone.why = declared.why.clone();
        // The same numbers, except the family-wise interval: the report compares several
        // pairs together, `primer compare` this one alone.
        let mut declared = declared.clone();
        for d in declared
            .per_lang
            .iter_mut()
            .chain(declared.average.as_mut())
        {
            d.family_wise = None;
        }
        assert_eq!(alone, declared);
    }
}

#[test]
fn runs_scored_on_other_sentences_are_not_compared() {
    let (_keep, dir) = out_dir();
    let dir = dir.join("fingerprints");
    let mut input = synthetic(&dir);
    for r in &mut input.runs {
        if let Some(m) = r.metrics.as_mut() {
            let odd = r.meta.setting == "3/AT" && r.meta.lang == "hi" && r.meta.seed == 2;
            m.eval_sets.test_fingerprint = if odd { "bbbb" } else { "aaaa" }.to_string();
        }
    }
    let summary = write_report(&input, &ReportOptions::default()).unwrap();
    let p = &summary.comparison.pairs[0];
    assert_eq!((p.a.as_str(), p.b.as_str()), ("4/Meta Priming→AT", "3/AT"));
    assert!(p.per_lang.iter().all(|d| d.lang != "hi"), "{p:?}");
    assert!(
        p.notes.iter().any(|n| n.starts_with(
            "hi: seed 2 scored different test sentences (test-set fingerprints aaaa vs bbbb)"
        )),
        "{:?}",
        p.notes
    );
    let md = std::fs::read_to_string(dir.join("comparison.md")).unwrap();
    assert!(
        md.contains("- hi: **runs were scored on 2 different test sets** (200 sentences, fingerprint aaaa; 200 sentences, fingerprint bbbb)")
            && md.contains("- af: 200 sentences, fingerprint aaaa"),
        "{md}"
    );
}

#[test]
fn nothing_done_skips_figures_and_shows_dashes() {
    let (_keep, dir) = out_dir();
    let dir = dir.join("empty");
    let mut input = synthetic(&dir);
    for r in &mut input.runs {
        r.metrics = None;
    }
    let summary = write_report(&input, &ReportOptions::default()).unwrap();
    assert_eq!(summary.runs_done, 0);
    assert!(!dir.join("figure3.svg").exists() && !dir.join("figure4.png").exists());
    assert!(
        summary
            .skipped
            .iter()
            .any(|s| s.starts_with("figure 3 skipped")),
        "{:?}",
        summary.skipped
    );
    assert!(
        summary
            .skipped
            .iter()
            .any(|s| s.starts_with("figure 4 skipped"))
    );
    assert!(summary.text.contains("Not drawn"));
    let md = std::fs::read_to_string(dir.join("table1.md")).unwrap();
    let table_rows: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table_rows.len(), 2 + 4);
    assert!(
        table_rows.iter().all(|l| !l.contains("**")),
        "nothing to bold\n{md}"
    );
    assert!(
        summary
            .comparison
            .pairs
            .iter()
            .all(|p| p.per_lang.is_empty() && !p.notes.is_empty())
    );
}

#[test]
fn unknown_settings_in_report_section_are_errors() {
    let (_keep, dir) = out_dir();
    let mut input = synthetic(&dir.join("bad"));
    input.spec.compare.push(ComparePair::new("3/AT", "7/Nope"));
    let err = write_report(&input, &ReportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("compare") && err.contains("7/Nope"), "{err}");
    let mut input = synthetic(&dir.join("bad2"));
    input
        .spec
        .paper_rows
        .insert("3/AT".into(), "3/Adapters".into());
    let err = write_report(&input, &ReportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3/Adapters") && err.contains("\"2/HT\""),
        "{err}"
    );
}

#[test]
fn a_sweep_without_runs_still_reports() {
    let (_keep, dir) = out_dir();
    let dir = dir.join("norun");
    let mut input = synthetic(&dir);
    input.runs.clear();
    let summary = write_report(
        &input,
        &ReportOptions {
            curves: true,
            bootstrap_seed: 0,
            ..ReportOptions::default()
        },
    )
    .unwrap();
    assert_eq!((summary.runs_done, summary.runs_total), (0, 0));
    assert!(
        summary
            .table1
            .rows
            .iter()
            .all(|r| r.cells.iter().all(Option::is_none))
    );
    let file = std::fs::File::open(dir.join("scores.parquet")).unwrap();
    assert_eq!(ParquetReader::new(file).finish().unwrap().height(), 0);
}

/// A report rewrites its own files only: a folder holding someone else's is refused, with
/// nothing overwritten; an earlier report's folder (its marker) is rewritten.
#[test]
fn a_report_never_overwrites_a_folder_it_did_not_write() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("summary.md"), "my notes\n").unwrap();
    let input = synthetic(&dir);
    let opts = ReportOptions::default();
    let err = write_report(&input, &opts).unwrap_err().to_string();
    assert!(
        err.contains("holds files this command did not write (summary.md)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.md")).unwrap(),
        "my notes\n"
    );
    assert!(!dir.join("index.html").exists() && !dir.join(primer::report::REPORT_MARKER).exists());
    // Files of other names (here the synthetic sweep's checkpoint, a user's notes) stay.
    let dir = t.path().join("report");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine\n").unwrap();
    write_report(&synthetic(&dir), &opts).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine\n"
    );
    assert!(dir.join(primer::report::REPORT_MARKER).is_file());
    write_report(&synthetic(&dir), &opts).unwrap();
    // A report from before the marker (and before index.html) is known by its summary.
    std::fs::remove_file(dir.join(primer::report::REPORT_MARKER)).unwrap();
    std::fs::remove_file(dir.join("index.html")).unwrap();
    write_report(&synthetic(&dir), &opts).unwrap();
    // A file where the folder should be.
    let file = t.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let mut input = synthetic(&dir);
    input.results_dir = file;
    let err = write_report(&input, &opts).unwrap_err().to_string();
    assert!(err.contains("is a file"), "{err}");
}
