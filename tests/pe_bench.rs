//! Timing of the LoRA / BitFit bench rows ([`primer::prime::bench_pe`]) on a MiniLM-shaped
//! random BERT, batch 16 × seq 64, at the thread count rayon is given. Ignored by default (it
//! measures, it does not check); run with
//! `RAYON_NUM_THREADS=2 cargo test --test pe_bench -- --ignored --nocapture` beside
//! `tools/bench_pe.py`. The unit tests of `bench_pe` run the same code on a tiny model.

use candle_core::Device;
use primer::bench::SizeName;
use primer::model::init::random_encoder;
use primer::model::{PeSpec, Tagger};
use primer::prime::bench::MetaBenchSpec;
use primer::prime::bench_pe::{
    FinetuneBenchSpec, lora_bench_spec, time_pe_finetune_steps, time_pe_meta_steps,
};

fn minilm_shaped() -> Tagger {
    // `primer bench`'s minilm size: MiniLM's shape without dropout (torch_ref.py --minilm).
    let cfg = SizeName::Minilm.workload().config;
    let dev = Device::Cpu;
    let enc = random_encoder(&cfg, 0, &dev).unwrap().to_params().unwrap();
    Tagger::new(cfg, enc, dev)
}

#[test]
#[ignore = "measurement: run explicitly with --ignored --nocapture"]
fn time_lora_and_bitfit_steps_on_a_minilm_shaped_model() {
    let only = std::env::var("PE_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|w| w == name);
    for (name, pe) in [("lora", lora_bench_spec()), ("bitfit", PeSpec::BitFit)] {
        if wanted(&format!("{name}-ft")) {
            let r = time_pe_finetune_steps(minilm_shaped(), &pe, &FinetuneBenchSpec::default())
                .unwrap();
            println!(
                "{name} fine-tuning step: median {:.0} ms, min {:.0}, max {:.0} over {} steps (loss {:.4} → {:.4})",
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.times_ms.len(),
                r.first_loss,
                r.last_loss
            );
        }
        if wanted(&format!("{name}-meta")) {
            let spec = MetaBenchSpec {
                steps: 5,
                ..MetaBenchSpec::meta_pe()
            };
            let r = time_pe_meta_steps(minilm_shaped(), &pe, &spec).unwrap();
            println!(
                "{name} meta-PE outer step (2 tasks, S=5, same support): median {:.0} ms, min {:.0}, max {:.0} over {} steps",
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.times_ms.len()
            );
        }
    }
}
