//! `primer compare SWEEP A B [--lang L]... [--json]`: is setting A better than setting B, and by
//! how much? The seed-aware comparison of any two settings from the store, without editing the
//! sweep file (the same numbers as `comparison.md` gives for a declared pair). With
//! `--key KEY`, A and B are two values of a swept key, compared within every setting that
//! sweeps it (or `--setting S`).

use anyhow::Context;
use primer::report::compare::{
    Comparison, DEFAULT_BOOTSTRAP_SAMPLES, LangDelta, PairComparison, compare_key_values,
    compare_settings,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The sweep file (TOML) whose runs to compare.
    pub sweep: PathBuf,
    /// Setting a (the difference is a − b); with --key, a value of the key. A setting that a
    /// figure splits into rows per value is compared row by row with b's rows of the same value.
    pub a: String,
    /// Setting b; with --key, a value of the key.
    pub b: String,
    /// Compare two values of this swept key (e.g. prime.inner_steps) instead of two settings.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// With --key: only within this setting (default: every setting that sweeps the key).
    #[arg(long, value_name = "SETTING", requires = "key")]
    pub setting: Option<String>,
    /// Only these target languages (repeatable; default: every language of the sweep).
    #[arg(long = "lang", value_name = "LANG")]
    pub langs: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Bootstrap resamples (default: the sweep's `[report] bootstrap_samples`, else 1000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: Option<u64>,
    /// Seed of the bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    pub bootstrap_seed: u64,
}

fn row_json(d: &LangDelta) -> serde_json::Value {
    let interval = |e: &primer::report::bootstrap::DeltaEstimate| [e.ci_low, e.ci_high];
    serde_json::json!({
        "lang": d.lang,
        "seeds": d.seeds(),
        "per_seed": d.per_seed.iter().map(|(s, v)| serde_json::json!({"seed": s, "delta": v})).collect::<Vec<_>>(),
        "delta": d.delta(),
        "ci95": d.seed_aware.as_ref().map(interval),
        // More than --samples where the interval's end came within resampling noise of 0.
        "ci95_samples": d.seed_aware.as_ref().map(|e| e.samples),
        "verdict": d.verdict.to_string(),
        // With several pairs compared at once, the headline row's family-wise interval.
        "family_wise": d.family_wise.as_ref().map(|f| serde_json::json!({
            "family": f.family,
            "ci95": interval(&f.estimate),
            "verdict": f.verdict.to_string(),
        })),
        "scoring_noise_ci95": interval(&d.scoring_noise),
        "sentences": d.sentences,
    })
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let input = primer::sweep::report_input(&args.sweep)
        .with_context(|| format!("reading the runs of sweep {}", args.sweep.display()))?;
    let samples = args.samples.map_or(
        input
            .spec
            .bootstrap_samples
            .unwrap_or(DEFAULT_BOOTSTRAP_SAMPLES),
        |n| n as usize,
    );
    let pairs: Vec<PairComparison> = match &args.key {
        Some(key) => compare_key_values(
            &input,
            key,
            &args.a,
            &args.b,
            args.setting.as_deref(),
            &args.langs,
            samples,
            args.bootstrap_seed,
        )
        .with_context(|| format!("comparing {key} in sweep {}", args.sweep.display()))?,
        None => compare_settings(
            &input,
            &args.a,
            &args.b,
            &args.langs,
            samples,
            args.bootstrap_seed,
        )
        .with_context(|| format!("comparing in sweep {}", args.sweep.display()))?,
    };
    // Naming two rows (or unsplit settings) gives one comparison, printed as one object; a
    // setting split into rows per value gives one per row, listed as --key's are.
    let one_pair =
        args.key.is_none() && pairs.len() == 1 && pairs[0].a == args.a && pairs[0].b == args.b;
    if args.json {
        let pair_json = |pair: &PairComparison| {
            serde_json::json!({
                "a": pair.a,
                "b": pair.b,
                "samples": samples,
                "languages": pair.per_lang.iter().map(row_json).collect::<Vec<_>>(),
                "average": pair.average.as_ref().map(row_json),
                "notes": pair.notes,
            })
        };
        let out = match &args.key {
            // One object per setting that sweeps the key.
            Some(key) => serde_json::json!({
                "key": key,
                "pairs": pairs.iter().map(pair_json).collect::<Vec<_>>(),
            }),
            None if one_pair => pair_json(&pairs[0]),
            None => serde_json::json!({
                "pairs": pairs.iter().map(pair_json).collect::<Vec<_>>(),
            }),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let shown = Comparison {
            languages: Vec::new(),
            paper_rows: Vec::new(),
            figure4: Vec::new(),
            pairs,
            evaluation_sets: Vec::new(),
        };
        print!("{}", shown.pairs_markdown(samples));
    }
    Ok(ExitCode::SUCCESS)
}
