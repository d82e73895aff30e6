//! Timing of meta-priming outer steps at the reference benchmark's shapes (MiniLM, batch 16,
//! seq 64, 2 tasks, S = 5): meta-PE with one support batch, and the MAML loop with distinct
//! support batches. Ignored by default (it measures, it does not check); run with
//! `cargo test --test prime_bench -- --ignored --nocapture`. A quick smoke version of the same
//! code path on a tiny random model always runs.

use candle_core::Device;
use primer::model::Tagger;
use primer::prime::bench::{MetaBenchSpec, time_meta_steps};
use std::path::Path;

fn minilm() -> Option<Tagger> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").exists() {
        println!("SKIP: {} not found", dir.display());
        return None;
    }
    let mut t = Tagger::from_pretrained(&dir, &Device::Cpu).unwrap();
    // The reference benchmark runs without dropout.
    t.config = t.config.with_dropout(0.0);
    Some(t)
}

#[test]
#[ignore = "measurement: run explicitly with --ignored --nocapture"]
fn time_meta_pe_and_meta_full_distinct_on_minilm() {
    if minilm().is_none() {
        return;
    }
    for (name, spec) in [
        ("meta-pe (support same)", MetaBenchSpec::meta_pe()),
        (
            "meta-full (support distinct)",
            MetaBenchSpec::meta_full_distinct(),
        ),
    ] {
        // A fresh copy per setting: the steps update the weights in place.
        let r = time_meta_steps(minilm().unwrap(), &spec).unwrap();
        println!(
            "{name}: median {:.0} ms, min {:.0} ms, max {:.0} ms over {} steps (loss {:.4} → {:.4})",
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.times_ms.len(),
            r.first_loss,
            r.last_loss
        );
    }
}

/// What the paper-faithful per-step inner dropout costs against one mask per support batch
/// (and no inner dropout) in meta-PE outer steps on MiniLM with dropout 0.1: per-step encodes
/// the support batch S times per task instead of once.
#[test]
#[ignore = "measurement: run explicitly with --ignored --nocapture"]
fn time_meta_pe_inner_dropout_modes_on_minilm() {
    use primer::config::{InnerDropout, SupportMode};
    if minilm().is_none() {
        return;
    }
    for support in [SupportMode::Same, SupportMode::Distinct] {
        for mode in [
            InnerDropout::PerStep,
            InnerDropout::Shared,
            InnerDropout::Off,
        ] {
            let spec = MetaBenchSpec {
                dropout: Some(0.1),
                inner_dropout: mode,
                support,
                steps: 5,
                ..MetaBenchSpec::meta_pe()
            };
            let r = time_meta_steps(minilm().unwrap(), &spec).unwrap();
            println!(
                "meta-pe, support {support:?}, dropout 0.1, inner dropout {mode}: median {:.0} ms, min {:.0} ms, max {:.0} ms over {} steps",
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.times_ms.len()
            );
        }
    }
}

#[test]
fn bench_code_path_runs_on_a_tiny_model() {
    use primer::model::{BertConfig, init::random_encoder};
    let cfg = BertConfig::new(300, 16, 1, 2, 32).with_dropout(0.0);
    let enc = random_encoder(&cfg, 0, &Device::Cpu)
        .unwrap()
        .to_params()
        .unwrap();
    let spec = MetaBenchSpec {
        batch: 4,
        seq: 12,
        warmup: 1,
        steps: 2,
        adapter_dim: 8,
        ..MetaBenchSpec::meta_full_distinct()
    };
    let r = time_meta_steps(Tagger::new(cfg, enc, Device::Cpu), &spec).unwrap();
    assert_eq!(r.times_ms.len(), 2);
    assert!(r.min_ms > 0.0 && r.min_ms <= r.median_ms && r.median_ms <= r.max_ms);
    assert!(r.first_loss.is_finite() && r.last_loss.is_finite());
}
