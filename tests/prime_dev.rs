//! Dev evaluation during priming (`prime.dev_every`) and checkpoint selection (`prime.select`)
//! on the committed WikiAnn slices (en + es) with a tiny random BERT: the dev pass leaves
//! training bit-identical, its points come where configured with sane scores, `best-dev`
//! writes the weights of the best point, and the settings are checked before anything runs.

use primer::config::{CheckpointSelection, InnerLoop, PrimeConfig, PrimingMethod, SupportMode};
use primer::model::RandomBertSpec;
use primer::prime::{DevRecord, PrimeCurves, PrimingInfo, prime};
use primer::progress::{NoProgress, ProgressEvent, ProgressSink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny random BERT and the data root, or None (with a SKIP line) when inputs are missing.
fn setup(tmp: &Path) -> Option<(PathBuf, PathBuf)> {
    let tok = crate_dir().join("data/tokenizer/bert-base-multilingual-cased");
    let data = crate_dir().join("data/wikiann");
    if !tok.exists() || !data.join("en").exists() || !data.join("es").exists() {
        println!(
            "SKIP: tokenizer or WikiAnn slices (en, es) not found under {}",
            crate_dir().display()
        );
        return None;
    }
    let spec = RandomBertSpec {
        hidden: 32,
        layers: 1,
        heads: 2,
        intermediate: 64,
        max_position: 128,
        seed: 1,
    };
    let model = primer::model::write_random_bert(&tmp.join("tiny-bert"), &tok, &spec).unwrap();
    Some((model, data))
}

fn base_config(model: &Path, data: &Path) -> PrimeConfig {
    let mut c = PrimeConfig {
        model: model.to_path_buf(),
        sources: vec!["en".into(), "es".into()],
        inner_steps: 3,
        inner_lr: Some(0.1),
        outer_lr: 1e-3,
        ft_lr: 1e-3,
        support_batch_size: 8,
        query_batch_size: 8,
        dropout: Some(0.0),
        seed: 3,
        ..PrimeConfig::default()
    };
    c.data.root = data.to_path_buf();
    c.data.train_limit = Some(200);
    c.data.dev_limit = Some(50);
    c.data.max_len = 48;
    c
}

fn read_bytes(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

/// The written weights of a checkpoint: θp and θa, byte for byte.
fn weights(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        read_bytes(dir, "model.safetensors"),
        read_bytes(dir, "adapter.safetensors"),
    )
}

/// Whether two dev points agree up to JSON's float round trip (serde_json reads floats to
/// within an ulp or so, not exactly).
fn same_point(a: &DevRecord, b: &DevRecord) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(1.0);
    a.step == b.step
        && a.tasks.len() == b.tasks.len()
        && a.tasks.iter().zip(&b.tasks).all(|(s, t)| {
            s.lang == t.lang && close(s.dev_loss, t.dev_loss) && close(s.dev_f1, t.dev_f1)
        })
}

#[derive(Default)]
struct Collect(Mutex<Vec<ProgressEvent>>);

impl ProgressSink for Collect {
    fn report(&self, e: ProgressEvent) {
        self.0.lock().unwrap().push(e);
    }
}

/// The dev pass adapts copies, draws no dropout masks and uses its own sampling streams, so
/// every loss and every written weight is the same with it on or off — checked with dropout
/// on (a pass that drew masks from the run's stream would shift every later mask) for meta
/// priming, FT priming and the MAML loop.
#[test]
fn dev_evaluation_leaves_training_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    for (name, method, inner_loop) in [
        ("meta", PrimingMethod::Meta, InnerLoop::Pe),
        ("ft", PrimingMethod::Ft, InnerLoop::Pe),
        ("maml", PrimingMethod::Meta, InnerLoop::Full),
    ] {
        let mut c = base_config(&model, &data);
        c.method = method;
        c.inner_loop = inner_loop;
        c.dropout = Some(0.1);
        c.steps = 4;
        if inner_loop == InnerLoop::Full {
            c.support = SupportMode::Distinct;
            c.inner_steps = 2;
            c.inner_lr = Some(1e-3);
        }
        let run = |dev_every: usize| {
            let out = tmp.path().join(format!("{name}-dev{dev_every}"));
            let curves = prime(
                &PrimeConfig {
                    dev_every,
                    ..c.clone()
                },
                &out,
                &NoProgress,
            )
            .unwrap();
            (curves, weights(&out))
        };
        let (off, off_weights) = run(0);
        let (on, on_weights) = run(2);
        assert!(off.dev.is_empty(), "{name}: dev points with dev_every = 0");
        assert_eq!(on.dev.len(), 2, "{name}: points after steps 2 and 4");
        assert_eq!(on.steps, off.steps, "{name}: the losses changed");
        assert!(
            on_weights == off_weights,
            "{name}: the written weights changed"
        );
    }
}

/// `dev_every = 2` over 5 steps scores after steps 2, 4 and 5 (the last always counts), every
/// source with a finite loss and an F1 in [0, 1]; the points follow the weights, are saved in
/// curves.json, reported as progress, and priming.json records the scores of the written
/// (last) weights.
#[test]
fn dev_points_come_every_k_steps_and_after_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let mut c = base_config(&model, &data);
    c.steps = 5;
    c.dev_every = 2;
    c.outer_lr = 1e-2;
    let out = tmp.path().join("primed");
    let progress = Collect::default();
    let curves = prime(&c, &out, &progress).unwrap();
    let steps: Vec<usize> = curves.dev.iter().map(|p| p.step).collect();
    assert_eq!(steps, vec![2, 4, 5]);
    for p in &curves.dev {
        let langs: Vec<&str> = p.tasks.iter().map(|t| t.lang.as_str()).collect();
        assert_eq!(langs, ["en", "es"]);
        for t in &p.tasks {
            assert!(
                t.dev_loss.is_finite() && t.dev_loss > 0.0,
                "step {}: {t:?}",
                p.step
            );
            assert!((0.0..=1.0).contains(&t.dev_f1), "step {}: {t:?}", p.step);
        }
    }
    assert_ne!(
        curves.dev[0].tasks[0].dev_loss, curves.dev[2].tasks[0].dev_loss,
        "the dev loss does not follow the weights"
    );

    let saved: PrimeCurves = primer::fsutil::read_json(&out.join("curves.json")).unwrap();
    assert_eq!(saved.dev.len(), 3);
    assert!(
        saved
            .dev
            .iter()
            .zip(&curves.dev)
            .all(|(a, b)| same_point(a, b))
    );
    let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    let selected = info
        .selected
        .expect("priming.json records the written weights");
    assert_eq!(selected.select, CheckpointSelection::Last);
    assert_eq!(selected.step, 5);
    assert!(same_point(&selected.dev.unwrap(), &curves.dev[2]));

    let events = progress.0.into_inner().unwrap();
    let dev_events: Vec<u64> = events
        .iter()
        .filter(|e| e.message.as_deref().is_some_and(|m| m.starts_with("dev: ")))
        .map(|e| e.step)
        .collect();
    assert_eq!(dev_events, vec![2, 4, 5]);
    assert_eq!(events.len(), 5 + 3);
}

/// The mean dev F1 of every point, and the index of the best one (the earliest of equal ones),
/// computed here independently of the library's rule.
fn best_index(points: &[DevRecord]) -> usize {
    let means: Vec<f64> = points
        .iter()
        .map(|p| p.tasks.iter().map(|t| t.dev_f1).sum::<f64>() / p.tasks.len() as f64)
        .collect();
    let mut best = 0;
    for (i, m) in means.iter().enumerate() {
        if *m > means[best] {
            best = i;
        }
    }
    best
}

/// `select = "best-dev"` records the step with the best mean dev F1 and writes other weights
/// than `last` when that step is not the last; training itself is the same.
#[test]
fn best_dev_writes_the_weights_of_the_best_point() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    // Meta priming at a high outer rate on this tiny model: the mean dev F1 rises to about
    // 0.08 half-way and falls back to about 0.04 by step 12, a margin of several entities,
    // so the best point is not the last one.
    let mut c = base_config(&model, &data);
    c.steps = 12;
    c.dev_every = 1;
    c.outer_lr = 1e-2;
    c.inner_lr = Some(0.3);
    let run = |select: CheckpointSelection| {
        let out = tmp.path().join(select.as_str());
        let config = PrimeConfig {
            select,
            ..c.clone()
        };
        let curves = prime(&config, &out, &NoProgress).unwrap();
        let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
        (curves, info, weights(&out))
    };
    let (curves, info, best_weights) = run(CheckpointSelection::BestDev);
    let (last_curves, last_info, last_weights) = run(CheckpointSelection::Last);
    assert_eq!(curves, last_curves, "select changed the training");

    let best = &curves.dev[best_index(&curves.dev)];
    let selected = info.selected.unwrap();
    assert_eq!(selected.select, CheckpointSelection::BestDev);
    assert_eq!(selected.step, best.step);
    assert!(same_point(&selected.dev.unwrap(), best));
    assert!(
        best.step < c.steps,
        "this case should peak before the end: {:?}",
        curves.dev
    );
    assert_eq!(last_info.selected.unwrap().step, c.steps);
    assert!(
        best_weights.0 != last_weights.0 && best_weights.1 != last_weights.1,
        "best-dev wrote the last weights although step {} was best",
        best.step
    );
    // Both are primed weights, not the initial ones.
    let source = read_bytes(&model, "model.safetensors");
    assert!(best_weights.0 != source);
}

/// `best-dev` without dev points is refused before anything is written, naming the fix, and
/// so is dev evaluation of a source without dev sentences (a limit of 0, an empty dev file).
#[test]
fn best_dev_needs_dev_every_and_dev_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("never");
    let mut c = base_config(&model, &data);
    c.select = CheckpointSelection::BestDev;
    let err = prime(&c, &out, &NoProgress).unwrap_err().to_string();
    assert!(
        err.contains("best-dev") && err.contains("set dev_every"),
        "{err}"
    );
    c.dev_every = 2;
    // A dev limit of 0 is out of range (the shared rule of every limit)…
    c.data.dev_limit = Some(0);
    let err = prime(&c, &out, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("data.dev_limit: must be at least 1"), "{err}");
    // …and a source whose dev split is empty is refused when it is read, naming the file.
    c.data.dev_limit = None;
    let sparse = tmp.path().join("no-en-dev");
    for lang in ["en", "es"] {
        let dir = sparse.join(lang);
        std::fs::create_dir_all(&dir).unwrap();
        for split in ["train", "dev", "test"] {
            let name = format!("{split}-{lang}.tsv");
            let text = if (lang, split) == ("en", "dev") {
                String::new()
            } else {
                std::fs::read_to_string(data.join(lang).join(&name)).unwrap()
            };
            std::fs::write(dir.join(&name), text).unwrap();
        }
    }
    c.data.root = sparse;
    let err = prime(&c, &out, &NoProgress).unwrap_err().to_string();
    assert!(
        err.contains("'en'") && err.contains("dev-en.tsv") && err.contains("holds no sentences"),
        "{err}"
    );
    assert!(!out.exists());
}

/// The command line takes --dev-every, --dev-limit and --select, prints the dev summary, and
/// refuses --select best-dev alone.
#[test]
fn cli_flags_turn_dev_evaluation_and_selection_on() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let primer = |extra: &[&str], out: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_primer"));
        cmd.env("RUST_LOG", "warn")
            .arg("prime")
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .args([
                "--sources",
                "en,es",
                "--train-limit",
                "40",
                "--support-batch-size",
                "4",
                "--query-batch-size",
                "4",
                "--max-len",
                "32",
                "--steps",
                "3",
            ])
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let out = tmp.path().join("primed");
    let o = primer(
        &[
            "--dev-every",
            "2",
            "--dev-limit",
            "20",
            "--select",
            "best-dev",
        ],
        &out,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("mean dev F1 over the sources") && stdout.contains("the best-dev weights"),
        "{stdout}"
    );
    let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    assert_eq!(
        (
            info.config.dev_every,
            info.config.data.dev_limit,
            info.config.select
        ),
        (2, Some(20), CheckpointSelection::BestDev)
    );
    let curves: PrimeCurves = primer::fsutil::read_json(&out.join("curves.json")).unwrap();
    assert_eq!(
        curves.dev.iter().map(|p| p.step).collect::<Vec<_>>(),
        vec![2, 3]
    );

    let never = tmp.path().join("never");
    let o = primer(&["--select", "best-dev"], &never);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("dev_every"),
        "{stderr}"
    );
    assert!(!never.exists());
}

/// priming.json files written before the selection was recorded still load.
#[test]
fn priming_json_without_selection_parses() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let mut c = base_config(&model, &data);
    c.steps = 1;
    let out = tmp.path().join("primed");
    prime(&c, &out, &NoProgress).unwrap();
    let mut doc: serde_json::Value = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    let selected = doc.as_object_mut().unwrap().remove("selected").unwrap();
    assert_eq!(selected["step"], 1);
    assert!(selected["dev"].is_null());
    let old: PrimingInfo = serde_json::from_value(doc).unwrap();
    assert_eq!(old.selected, None);
}
