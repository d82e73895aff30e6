//! Synthetic report inputs for the unit tests of this module.

use crate::config::FinetuneMethod;
use crate::metric::{Scores, TypeScores};
use crate::report::{ReportInput, RunMeta, RunRecord};
use crate::spec::ReportSpec;
use crate::train::FinetuneMetrics;
use std::path::PathBuf;

/// Metrics of a finished run with test F1 `f1` (a fraction); the per-sentence counts are a
/// fixed pattern (tests of the bootstrap build their own).
pub fn metrics(lang: &str, seed: u64, f1: f64) -> FinetuneMetrics {
    let scores = |f1: f64| Scores {
        precision: f1,
        recall: f1,
        f1,
        per_type: [("PER", 0.9), ("ORG", 0.8), ("LOC", 0.7)]
            .into_iter()
            .map(|(t, v)| {
                (
                    t.to_string(),
                    TypeScores {
                        precision: v,
                        recall: v,
                        f1: v,
                        support: 10,
                    },
                )
            })
            .collect(),
    };
    FinetuneMetrics {
        lang: lang.to_string(),
        method: FinetuneMethod::Adapter,
        seed,
        dev: scores(f1 + 0.01),
        test: scores(f1),
        best_epoch: 1,
        epochs: Vec::new(),
        trained_params: 4,
        total_params: 1000,
        trained_percent: 0.4,
        steps: 10,
        wall_time_s: 1.5,
        truncated_words_dev: 0,
        truncated_words_test: 0,
        eval_sets: Default::default(),
        test_sentence_counts: vec![[1, 1, 1]; 20],
        loss_curve: vec![1.0, 0.5, 0.25],
        training_noise: None,
        precision: None,
    }
}

/// A run record; `f1: None` is a run not done.
pub fn run(setting: &str, lang: &str, seed: u64, f1: Option<f64>) -> RunRecord {
    RunRecord {
        meta: RunMeta {
            run_id: format!("{setting}-{lang}-{seed}"),
            setting: setting.to_string(),
            priming: None,
            priming_run: None,
            inner_loop: None,
            pe_method: None,
            inner_steps: None,
            inner_lr: None,
            outer_lr: None,
            ft_method: FinetuneMethod::Adapter,
            ft_lr: 1e-3,
            lang: lang.to_string(),
            seed,
            run_dir: PathBuf::from("store/x"),
            evaluation: Vec::new(),
            axes: Vec::new(),
        },
        metrics: f1.map(|f| metrics(lang, seed, f)),
    }
}

/// An input with these settings, languages and runs.
pub fn input(
    settings: &[&str],
    languages: &[&str],
    runs: Vec<RunRecord>,
    spec: ReportSpec,
) -> ReportInput {
    ReportInput {
        sweep_name: "synthetic".to_string(),
        spec,
        settings: settings.iter().map(|s| s.to_string()).collect(),
        languages: languages.iter().map(|s| s.to_string()).collect(),
        runs,
        priming_runs: Vec::new(),
        results_dir: PathBuf::from("unused"),
    }
}

/// A finished run whose every test sentence has the entity counts `[correct, predicted, gold]`:
/// its test F1 is the same on any resample of its sentences (200·c / (p + g)), which makes
/// bootstrap intervals computable by hand. `axes` are its swept keys and values (JSON).
pub fn counted_run(
    setting: &str,
    lang: &str,
    seed: u64,
    counts: [u32; 3],
    axes: &[(&str, &str)],
) -> RunRecord {
    let f1 = crate::report::bootstrap::f1_from_sums(
        u64::from(counts[0]),
        u64::from(counts[1]),
        u64::from(counts[2]),
    ) / 100.0;
    let mut r = run(setting, lang, seed, Some(f1));
    let m = r.metrics.as_mut().expect("finished");
    m.test_sentence_counts = vec![counts; 20];
    r.meta.axes = axes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (_, v) in axes {
        r.meta.run_id += &format!("-{v}");
    }
    r
}
