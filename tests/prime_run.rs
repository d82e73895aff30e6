//! Small real priming runs on the committed WikiAnn slices (en + es): meta priming's query loss
//! goes down over outer steps, and the primed checkpoint loads for fine-tuning; FT priming and
//! the MAML loop run through the same entry point.

use candle_core::Device;
use primer::config::{InnerDropout, InnerLoop, PrimeConfig, PrimingMethod, SupportMode};
use primer::model::{RandomBertSpec, Tagger};
use primer::prime::{PrimeCurves, PrimingInfo, prime};
use primer::progress::{NoProgress, ProgressEvent, ProgressSink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny random BERT with the committed multilingual tokenizer (seconds-fast runs).
fn tiny_model(dir: &Path) -> Option<PathBuf> {
    let tok = crate_dir().join("data/tokenizer/bert-base-multilingual-cased");
    if !tok.exists() {
        println!("SKIP: tokenizer {} not found", tok.display());
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
    Some(primer::model::write_random_bert(&dir.join("tiny-bert"), &tok, &spec).unwrap())
}

/// MiniLM from ../shared when present, else the tiny random model.
fn model(dir: &Path) -> Option<PathBuf> {
    let minilm = crate_dir().join("../shared/models/all-MiniLM-L6-v2");
    if minilm.join("model.safetensors").exists() {
        return Some(minilm);
    }
    println!(
        "note: {} not found, using a tiny random BERT",
        minilm.display()
    );
    tiny_model(dir)
}

fn data_root() -> Option<PathBuf> {
    let root = crate_dir().join("data/wikiann");
    if root.join("en").exists() && root.join("es").exists() {
        Some(root)
    } else {
        println!("SKIP: WikiAnn slices not found under {}", root.display());
        None
    }
}

fn base_config(model: PathBuf, data: PathBuf) -> PrimeConfig {
    let mut c = PrimeConfig {
        model,
        sources: vec!["en".into(), "es".into()],
        support_batch_size: 8,
        query_batch_size: 8,
        dropout: Some(0.0),
        seed: 3,
        ..PrimeConfig::default()
    };
    c.data.root = data;
    c.data.train_limit = Some(200);
    c.data.max_len = 48;
    c
}

fn mean_query(c: &PrimeCurves, range: std::ops::Range<usize>) -> f64 {
    let v: Vec<f64> = c.steps[range]
        .iter()
        .flat_map(|s| s.tasks.iter().map(|t| t.query))
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[derive(Default)]
struct Collect(Mutex<Vec<ProgressEvent>>);

impl ProgressSink for Collect {
    fn report(&self, e: ProgressEvent) {
        self.0.lock().unwrap().push(e);
    }
}

#[test]
fn meta_priming_lowers_the_query_loss_and_writes_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(model), Some(data)) = (model(tmp.path()), data_root()) else {
        return;
    };
    // Kept to a few seconds with MiniLM: small batches, short sequences, S = 3, and an inner
    // rate high enough that the heads (kept from step to step) learn visibly in 6 steps.
    let steps = 6;
    let mut cfg = base_config(model.clone(), data);
    cfg.steps = steps;
    cfg.outer_lr = 1e-4;
    cfg.inner_steps = 3;
    cfg.inner_lr = Some(0.1);
    cfg.support_batch_size = 4;
    cfg.query_batch_size = 4;
    cfg.data.max_len = 32;
    let out = tmp.path().join("primed");
    let progress = Collect::default();
    let curves = prime(&cfg, &out, &progress).unwrap();
    assert_eq!(curves.steps.len(), steps);
    let events = progress.0.into_inner().unwrap();
    assert_eq!(events.len(), steps);
    assert!(
        events
            .iter()
            .all(|e| e.phase == "prime" && e.total == steps as u64)
    );
    for s in &curves.steps {
        assert_eq!(s.tasks.len(), 2);
        for t in &s.tasks {
            let (b, a) = (t.inner_before.unwrap(), t.inner_after.unwrap());
            assert!(b.is_finite() && a.is_finite() && t.query.is_finite());
        }
    }
    let first = mean_query(&curves, 0..2);
    let last = mean_query(&curves, steps - 2..steps);
    assert!(
        last < first,
        "query loss did not decrease: first steps {first:.4}, last steps {last:.4}"
    );

    for f in [
        "config.json",
        "model.safetensors",
        "adapter.safetensors",
        "priming.json",
        "curves.json",
        "vocab.txt",
    ] {
        assert!(out.join(f).exists(), "checkpoint lacks {f}");
    }
    let saved: PrimeCurves = primer::fsutil::read_json(&out.join("curves.json")).unwrap();
    assert_eq!(saved.steps.len(), steps);
    assert!((saved.steps[5].tasks[1].query - curves.steps[5].tasks[1].query).abs() < 1e-12);
    let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    assert_eq!(info.method, "meta");
    assert_eq!(info.sources.len(), 2);
    assert_eq!(info.sources[0].train_sentences, 200);
    assert_eq!(info.sentences_per_task_step, 8);
    assert!(info.wall_time_s > 0.0);

    let primed = Tagger::load_primed(&out, &Device::Cpu).unwrap();
    let source = Tagger::from_pretrained(&model, &Device::Cpu).unwrap();
    let a = primed
        .pe
        .as_ref()
        .map(|m| &m.params)
        .expect("the checkpoint carries θa");
    assert_eq!(a.get("down.weight").unwrap().dims()[0], cfg.adapter_dim);
    let name = "encoder.layer.0.attention.self.query.weight";
    let moved = (primed.encoder.get(name).unwrap().as_tensor()
        - source.encoder.get(name).unwrap().as_tensor())
    .unwrap()
    .abs()
    .unwrap()
    .max_all()
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!(moved > 0.0, "θp* equals the source model");
    // The checkpoint keeps the model's own dropout, not the priming override.
    assert_eq!(
        primed.config.hidden_dropout_prob,
        source.config.hidden_dropout_prob
    );
}

#[test]
fn ft_priming_and_the_maml_loop_run_and_record_their_method() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(model), Some(data)) = (tiny_model(tmp.path()), data_root()) else {
        return;
    };
    let mut ft = base_config(model.clone(), data.clone());
    ft.method = PrimingMethod::Ft;
    ft.steps = 3;
    ft.ft_lr = 1e-3;
    let out = tmp.path().join("ft");
    let curves = prime(&ft, &out, &NoProgress).unwrap();
    assert!(
        curves
            .steps
            .iter()
            .flat_map(|s| &s.tasks)
            .all(|t| t.inner_before.is_none())
    );
    let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    assert_eq!(info.method, "ft");
    Tagger::load_primed(&out, &Device::Cpu).unwrap();

    let mut maml = base_config(model, data);
    maml.inner_loop = InnerLoop::Full;
    maml.support = SupportMode::Distinct;
    maml.inner_steps = 1;
    maml.steps = 2;
    maml.tasks_per_step = Some(1);
    let out = tmp.path().join("maml");
    let curves = prime(&maml, &out, &NoProgress).unwrap();
    assert!(curves.steps.iter().all(|s| s.tasks.len() == 1));
    let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    assert_eq!((info.method.as_str(), info.inner_lr), ("maml", 1e-4));
    assert_eq!(info.sentences_per_task_step, 16);
}

/// priming.json records the inner-loop dropout that ran: the configured mode when the model
/// has dropout, `off` when it has none, nothing for FT priming (no inner loop).
#[test]
fn priming_json_records_the_inner_dropout_that_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(model), Some(data)) = (tiny_model(tmp.path()), data_root()) else {
        return;
    };
    for (k, (method, dropout, mode, want)) in [
        (
            PrimingMethod::Meta,
            0.1,
            InnerDropout::Shared,
            Some(InnerDropout::Shared),
        ),
        (
            PrimingMethod::Meta,
            0.1,
            InnerDropout::PerStep,
            Some(InnerDropout::PerStep),
        ),
        (
            PrimingMethod::Meta,
            0.0,
            InnerDropout::PerStep,
            Some(InnerDropout::Off),
        ),
        (PrimingMethod::Ft, 0.1, InnerDropout::PerStep, None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = base_config(model.clone(), data.clone());
        c.method = method;
        c.dropout = Some(dropout);
        c.inner_dropout = mode;
        c.steps = 1;
        c.inner_steps = 2;
        c.tasks_per_step = Some(1);
        c.support_batch_size = 2;
        c.query_batch_size = 2;
        let out = tmp.path().join(format!("run{k}"));
        prime(&c, &out, &NoProgress).unwrap();
        let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
        assert_eq!(
            info.inner_dropout, want,
            "{method:?}, dropout {dropout}, {mode}"
        );
        assert_eq!(info.config.inner_dropout, mode);
    }
}

#[test]
fn bad_settings_fail_before_any_output_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(model), Some(data)) = (tiny_model(tmp.path()), data_root()) else {
        return;
    };
    let out = tmp.path().join("never");
    let mut c = base_config(model.clone(), data.clone());
    c.sources = vec!["en".into(), "xx".into()];
    let err = format!("{:#}", prime(&c, &out, &NoProgress).unwrap_err());
    assert!(err.contains("xx"), "{err}");
    let mut c = base_config(model, data);
    c.data.train_limit = Some(10);
    let err = prime(&c, &out, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("'en'") && err.contains("train_limit"), "{err}");
    assert!(!out.exists());
}
