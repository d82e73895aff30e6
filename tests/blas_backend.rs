//! The optional BLAS backend of the fused CPU kernels (`PRIMER_BLAS`, src/model/sgemm.rs)
//! against the default gemm crate: the same products within fp32 round-off, and seeded
//! training that repeats itself bit for bit.
//!
//! The library is `$PRIMER_BLAS` when set (and not `off`), else Debian's OpenBLAS at its
//! standard path; with neither, every test here prints why it skips and passes.
//!
//! The backend is a process-wide choice, so the tests take turns ([`LOCK`]); this file is its
//! own test binary, which no other test shares.

use candle_core::{Device, Tensor, Var};
use primer::model::blas::Blas;
use primer::model::sgemm::{
    BlasChoice, GemmBackend, blas_products, parse_blas_env, set_gemm_backend,
};
use primer::rng::SeededRng;
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

const DEBIAN_OPENBLAS: &str = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0";

/// The library to test, or why there is none.
fn library() -> Result<&'static Blas, String> {
    let name = match parse_blas_env(std::env::var_os("PRIMER_BLAS")).map_err(|e| e.to_string())? {
        Some(BlasChoice::Library(name)) => name,
        Some(BlasChoice::Off) => return Err("PRIMER_BLAS=off".into()),
        None if std::path::Path::new(DEBIAN_OPENBLAS).exists() => DEBIAN_OPENBLAS.into(),
        None => {
            return Err(format!(
                "PRIMER_BLAS is unset and there is no {DEBIAN_OPENBLAS} (apt-get install \
                 libopenblas0-pthread)"
            ));
        }
    };
    // A library that is named but cannot be opened is a failure, not a skip.
    Ok(Blas::open(&name).unwrap_or_else(|e| panic!("{name}: {e}")))
}

macro_rules! library_or_skip {
    () => {
        match library() {
            Ok(lib) => lib,
            Err(why) => {
                eprintln!("SKIP: no BLAS to test: {why}");
                return;
            }
        }
    };
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// y, dx, dW and db of one fused linear layer (every product ≥ 128 in each dimension, so
/// that the BLAS takes all three) on the backend in effect.
fn linear_forward_backward(
    x: &Var,
    w: &Var,
    b: &Var,
    r: &Tensor,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let y = primer::model::ops::linear(x, w, Some(b)).unwrap();
    let grads = primer::model::backward(&(&y * r).unwrap().sum_all().unwrap()).unwrap();
    let g = |v: &Var| grads.get(v).unwrap().clone();
    (y, g(x), g(w), g(b))
}

#[test]
fn fused_linear_through_blas_matches_the_gemm_crate() {
    let lib = library_or_skip!();
    let _turn = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("BLAS: {}", lib.describe());
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(21);
    // x [2, 100, 256] · Wᵀ [256 → 160]: y 200×256·256×160, dx 200×160·160×256,
    // dW 160×200·200×256.
    let x = Var::from_tensor(&rng.normal_tensor(&[2, 100, 256], 1.0, &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&rng.normal_tensor(&[160, 256], 0.05, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&rng.normal_tensor(&[160], 0.1, &dev).unwrap()).unwrap();
    let r = rng.normal_tensor(&[2, 100, 160], 1.0, &dev).unwrap();

    set_gemm_backend(GemmBackend::GemmCrate);
    let before = blas_products();
    let reference = linear_forward_backward(&x, &w, &b, &r);
    assert_eq!(blas_products(), before, "the gemm crate ran everything");

    set_gemm_backend(GemmBackend::Blas(lib));
    let on_blas = linear_forward_backward(&x, &w, &b, &r);
    set_gemm_backend(GemmBackend::GemmCrate);
    assert_eq!(
        blas_products() - before,
        3,
        "y, dx and dW each one product on the BLAS"
    );

    let names = ["y", "dx", "dW", "db"];
    let pairs = [
        (&reference.0, &on_blas.0),
        (&reference.1, &on_blas.1),
        (&reference.2, &on_blas.2),
        (&reference.3, &on_blas.3),
    ];
    for (name, (a, c)) in names.iter().zip(pairs) {
        // fp32 sums of 160 to 256 terms in another order: relative round-off of ~1e-6 of
        // the largest values; 1e-5 leaves room without hiding a wrong transpose or stride,
        // which is off by the values themselves.
        let scale = max_abs(a).max(1.0);
        let diff = max_abs_diff(a, c);
        assert!(
            diff <= 1e-5 * scale,
            "{name}: BLAS and gemm crate differ by {diff} (largest value {scale})"
        );
    }
}

/// A small BERT tagger whose every linear product is at least 128 wide (hidden 128,
/// intermediate 512, batch 4 × 40 tokens = 160 rows), so that the BLAS takes them.
fn small_tagger() -> primer::model::Tagger {
    use primer::model::init::random_encoder;
    use primer::model::{BertConfig, ParamGroup, Tagger};
    let cfg = BertConfig::new(1000, 128, 2, 4, 512);
    let enc = random_encoder(&cfg, 3, &Device::Cpu)
        .unwrap()
        .to_params()
        .unwrap();
    let mut tagger = Tagger::new(cfg, enc, Device::Cpu);
    tagger.add_head("x", 7, &mut SeededRng::new(4)).unwrap();
    tagger
        .set_trainable(&[ParamGroup::Encoder, ParamGroup::Head("x".into())])
        .unwrap();
    tagger
}

/// The losses of four seeded full fine-tuning steps with dropout on the backend in effect,
/// and the bits of every trained parameter after them. The losses alone would not tell two
/// backends apart: a mean over 160 tokens hides round-off below its last bit, and AdamW's
/// normalised steps hardly pass gradient round-off on; the weights carry every last bit.
fn seeded_run() -> (Vec<f32>, Vec<u32>) {
    use primer::model::EncoderInputs;
    use primer::train::optim::{AdamW, AdamWConfig};
    let dev = Device::Cpu;
    let tagger = small_tagger();
    let mut data = SeededRng::new(5);
    let (b, t) = (4usize, 40usize);
    let ids: Vec<u32> = (0..b * t).map(|_| 5 + data.below(990) as u32).collect();
    let labels: Vec<i64> = (0..b * t).map(|_| data.below(7) as i64).collect();
    let ids = Tensor::from_vec(ids, (b, t), &dev).unwrap();
    let mask = Tensor::ones((b, t), candle_core::DType::U32, &dev).unwrap();
    let labels = Tensor::from_vec(labels, (b, t), &dev).unwrap();
    let inputs = EncoderInputs {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
    };
    let mut opt = AdamW::new(
        tagger.trainable_vars(),
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let mut dropout = SeededRng::derive(6, "dropout");
    let losses = (0..4)
        .map(|_| {
            let loss = tagger
                .loss(&inputs, &labels, "x", Some(&mut dropout))
                .unwrap();
            opt.step(&primer::model::backward(&loss).unwrap()).unwrap();
            loss.to_scalar::<f32>().unwrap()
        })
        .collect();
    let weights = tagger
        .trainable_vars()
        .iter()
        .flat_map(|(_, v)| {
            v.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
        })
        .collect();
    (losses, weights)
}

/// FNV-1a of the weights' bits, to compare runs across processes by eye.
fn fingerprint(bits: &[u32]) -> u64 {
    bits.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn seeded_training_on_blas_repeats_bit_for_bit_and_tracks_the_gemm_crate() {
    let lib = library_or_skip!();
    let _turn = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_gemm_backend(GemmBackend::Blas(lib));
    let before = blas_products();
    let (first, first_weights) = seeded_run();
    let used = blas_products() - before;
    let (second, second_weights) = seeded_run();
    set_gemm_backend(GemmBackend::GemmCrate);
    let (reference, reference_weights) = seeded_run();
    assert!(used > 0, "no product went to the BLAS");
    // For comparing runs across processes (another allocation layout) by eye.
    eprintln!(
        "{}: {used} products on the BLAS; losses {first:?}, weights {:016x} (gemm crate: {:016x})",
        lib.file(),
        fingerprint(&first_weights),
        fingerprint(&reference_weights)
    );
    assert_eq!(
        first.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        second.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        "two identical runs on {}: {first:?} vs {second:?}",
        lib.describe()
    );
    let differing = first_weights
        .iter()
        .zip(&second_weights)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing,
        0,
        "two identical runs on {} trained {differing} of {} weights differently",
        lib.describe(),
        first_weights.len()
    );
    // Four steps of AdamW at lr 1e-3 amplify round-off only a little.
    for (a, r) in first.iter().zip(&reference) {
        assert!(
            (a - r).abs() <= 1e-3 * r.abs().max(1.0),
            "BLAS {first:?} vs gemm crate {reference:?}"
        );
    }
}
