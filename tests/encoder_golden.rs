//! The encoder forward on the real all-MiniLM-L6-v2 checkpoint against PyTorch's last hidden
//! states (shared/golden/encoder/forward.safetensors), within 1e-4 absolute.

mod common;

use candle_core::{Device, Tensor};
use common::{cpu_options, golden_dir, shared_dir, verify_modes};
use primer::model::{EncoderInputs, encode, load_encoder};
use primer::verify::compare::check_rel;

/// Encodes every golden sentence and compares ([`primer::verify`]); `label` names the
/// implementation in messages.
fn check_minilm_hidden_states(label: &str) {
    let (Some(shared), Some(golden)) = (shared_dir(), golden_dir()) else {
        eprintln!(
            "SKIP encoder_golden: ../shared (or PRIMER_SHARED_DIR / PRIMER_GOLDEN_DIR) not found"
        );
        return;
    };
    let model = shared.join("models/all-MiniLM-L6-v2");
    if !model.join("model.safetensors").is_file() || !golden.join("encoder").is_dir() {
        eprintln!(
            "SKIP encoder_golden: {} or {}/encoder not found",
            model.display(),
            golden.display()
        );
        return;
    }
    let report = verify_modes(
        &golden.join("encoder"),
        &cpu_options(Some(model)),
        &|m| m == "encoder",
        label,
    );
    assert_eq!(report.dumps.len(), 1);
}

#[test]
fn minilm_last_hidden_states_match_pytorch() {
    assert!(primer::model::dispatch::cpu_kernels_on());
    check_minilm_hidden_states("CPU kernels");
}

/// The same forward on the device-generic composite ops, the code CUDA runs.
#[test]
fn minilm_last_hidden_states_match_pytorch_on_the_device_generic_path() {
    let _composite = primer::model::dispatch::composite_only();
    check_minilm_hidden_states("device-generic ops");
}

#[test]
fn padding_does_not_change_real_token_states() {
    // A padded batch must give the same states on real tokens as the unpadded sentence:
    // checks the attention mask on the real checkpoint.
    let Some(shared) = shared_dir() else {
        eprintln!("SKIP encoder_golden padding: ../shared not found");
        return;
    };
    let model = shared.join("models/all-MiniLM-L6-v2");
    if !model.join("model.safetensors").is_file() {
        eprintln!("SKIP encoder_golden padding: {} not found", model.display());
        return;
    }
    let dev = Device::Cpu;
    let (cfg, enc) = load_encoder(&model, &dev).unwrap();
    let w = enc.detached_tensors();
    let ids = Tensor::new(&[[101u32, 7592, 2088, 102]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1]], &dev).unwrap();
    let alone = encode(
        &cfg,
        &w,
        &EncoderInputs {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: None,
        },
        None,
    )
    .unwrap();
    let ids_p = Tensor::new(
        &[[101u32, 7592, 2088, 102, 0, 0], [101, 2088, 102, 0, 0, 0]],
        &dev,
    )
    .unwrap();
    let mask_p = Tensor::new(&[[1u32, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], &dev).unwrap();
    let padded = encode(
        &cfg,
        &w,
        &EncoderInputs {
            input_ids: &ids_p,
            attention_mask: &mask_p,
            token_type_ids: None,
        },
        None,
    )
    .unwrap();
    let real = padded.narrow(0, 0, 1).unwrap().narrow(1, 0, 4).unwrap();
    check_rel("padded", &real, &alone, 0.0, 1e-5).unwrap();
}

/// Timing of one full fine-tuning step on MiniLM (batch 16 × seq 64), the setting of the
/// PyTorch reference benchmark. Not a check: run with
/// `cargo test --test encoder_golden -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_minilm_full_step() {
    use primer::config::FinetuneMethod;
    use primer::model::Tagger;
    use primer::rng::SeededRng;
    use primer::train::optim::{AdamW, AdamWConfig};
    let Some(shared) = shared_dir() else {
        eprintln!("SKIP bench: ../shared not found");
        return;
    };
    let dev = Device::Cpu;
    let mut t = Tagger::from_pretrained(&shared.join("models/all-MiniLM-L6-v2"), &dev).unwrap();
    t.config = t.config.with_dropout(0.0);
    let mut rng = SeededRng::new(0);
    t.ensure_adapter(64, &mut rng).unwrap();
    t.add_head("x", 7, &mut rng).unwrap();
    let (b, s) = (16usize, 64usize);
    let ids: Vec<u32> = (0..b * s).map(|_| 1000 + rng.below(20000) as u32).collect();
    let ids = Tensor::from_vec(ids, (b, s), &dev).unwrap();
    let mask = Tensor::ones((b, s), candle_core::DType::U32, &dev).unwrap();
    let labels: Vec<i64> = (0..b * s).map(|_| rng.below(7) as i64).collect();
    let labels = Tensor::from_vec(labels, (b, s), &dev).unwrap();
    let inputs = EncoderInputs {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
    };
    for method in [FinetuneMethod::Full, FinetuneMethod::Adapter] {
        let groups = t.groups_for(method, "x");
        t.set_trainable(&groups).unwrap();
        let mut opt = AdamW::new(
            t.trainable_vars(),
            AdamWConfig {
                lr: 1e-5,
                ..Default::default()
            },
        )
        .unwrap();
        let mut times = Vec::new();
        for _ in 0..4 {
            let c0 = cpu_seconds();
            let t0 = std::time::Instant::now();
            let loss = t.loss(&inputs, &labels, "x", None).unwrap();
            let t1 = t0.elapsed().as_secs_f64();
            let grads = primer::model::backward(&loss).unwrap();
            let t2 = t0.elapsed().as_secs_f64();
            opt.step(&grads).unwrap();
            let t3 = t0.elapsed().as_secs_f64();
            times.push((t1, t2 - t1, t3 - t2, t3, cpu_seconds() - c0));
        }
        eprintln!("{method}: (fwd, bwd, adamw, total wall, total cpu) s per step: {times:.3?}");
    }
}

/// CPU seconds used by this process so far (robust to other processes sharing the cores).
fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Micro-timings of the encoder's building blocks (diagnostics for the benchmark above), in
/// wall and CPU milliseconds.
#[test]
#[ignore]
fn bench_ops() {
    use primer::model::ops;
    use primer::rng::SeededRng;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(0);
    let x = candle_core::Var::from_tensor(&rng.normal_tensor(&[16, 64, 384], 1.0, &dev).unwrap())
        .unwrap();
    let w = candle_core::Var::from_tensor(&rng.normal_tensor(&[1536, 384], 0.02, &dev).unwrap())
        .unwrap();
    let b =
        candle_core::Var::from_tensor(&rng.normal_tensor(&[1536], 0.02, &dev).unwrap()).unwrap();
    let time = |name: &str, f: &dyn Fn()| {
        f();
        let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
        for _ in 0..5 {
            f();
        }
        eprintln!(
            "{name}: wall {:.1} ms, cpu {:.1} ms",
            t0.elapsed().as_secs_f64() * 200.0,
            (cpu_seconds() - c0) * 200.0
        );
    };
    time("matmul 1024x384x1536", &|| {
        x.as_detached_tensor()
            .reshape((1024, 384))
            .unwrap()
            .matmul(&w.as_detached_tensor().t().unwrap())
            .unwrap();
    });
    time("linear fused fwd", &|| {
        ops::linear(
            &x.as_detached_tensor(),
            &w.as_detached_tensor(),
            Some(&b.as_detached_tensor()),
        )
        .unwrap();
    });
    time("linear composite fwd", &|| {
        ops::linear_composite(
            &x.as_detached_tensor(),
            &w.as_detached_tensor(),
            Some(&b.as_detached_tensor()),
        )
        .unwrap();
    });
    time("linear fused fwd+bwd", &|| {
        primer::model::backward(&ops::linear(&x, &w, Some(&b)).unwrap().sum_all().unwrap())
            .unwrap();
    });
    time("linear composite fwd+bwd", &|| {
        primer::model::backward(
            &ops::linear_composite(&x, &w, Some(&b))
                .unwrap()
                .sum_all()
                .unwrap(),
        )
        .unwrap();
    });
    let h = rng.normal_tensor(&[1024, 1536], 1.0, &dev).unwrap();
    time("gelu 1024x1536", &|| {
        ops::gelu(&h).unwrap();
    });
    time("gelu_erf (candle) 1024x1536", &|| {
        h.gelu_erf().unwrap();
    });
}
