//! Performance probes of the CPU training step (diagnostics, not checks): every test here is
//! `#[ignore]`d. Run with `cargo test --test perf_probe -- --ignored --nocapture`.
//!
//! Times are reported both as wall time and as CPU time of the process (getrusage), which is
//! robust to other processes sharing the cores.

use candle_core::{Device, Tensor};
use primer::rng::SeededRng;

/// CPU seconds used by this process so far.
fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs `f` once to warm up, then `reps` times; prints wall and CPU ms per call and, when
/// `flops` is given, GFLOP/s per CPU second.
fn time(name: &str, reps: usize, flops: Option<f64>, f: &mut dyn FnMut()) {
    f();
    let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
    for _ in 0..reps {
        f();
    }
    let wall = t0.elapsed().as_secs_f64() / reps as f64;
    let cpu = (cpu_seconds() - c0) / reps as f64;
    match flops {
        Some(fl) => eprintln!(
            "{name:<40} wall {:7.2} ms  cpu {:7.2} ms  {:6.1} GFLOP/cpu-s  {:6.1} GFLOP/wall-s",
            wall * 1e3,
            cpu * 1e3,
            fl / cpu * 1e-9,
            fl / wall * 1e-9
        ),
        None => eprintln!(
            "{name:<40} wall {:7.2} ms  cpu {:7.2} ms",
            wall * 1e3,
            cpu * 1e3
        ),
    }
}

#[test]
#[ignore]
fn probe_gemm_layouts() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(0);
    let (m, k, n) = (1024usize, 384usize, 1536usize);
    let a = rng.normal_tensor(&[m, k], 1.0, &dev).unwrap();
    let b = rng.normal_tensor(&[k, n], 1.0, &dev).unwrap();
    let bt = b.t().unwrap().contiguous().unwrap(); // [n, k]
    let fl = Some(2.0 * (m * k * n) as f64);
    time("a[m,k] . b[k,n] (nn)", 10, fl, &mut || {
        a.matmul(&b).unwrap();
    });
    time("a[m,k] . bt[n,k]^T (nt)", 10, fl, &mut || {
        a.matmul(&bt.t().unwrap()).unwrap();
    });
    let at = a.t().unwrap().contiguous().unwrap(); // [k, m]
    time("at[k,m]^T . b[k,n] (tn)", 10, fl, &mut || {
        at.t().unwrap().matmul(&b).unwrap();
    });
    // Attention-shaped batched products.
    let q = rng.normal_tensor(&[192, 64, 32], 1.0, &dev).unwrap();
    let kk = rng.normal_tensor(&[192, 64, 32], 1.0, &dev).unwrap();
    let fl = Some(2.0 * (192 * 64 * 64 * 32) as f64);
    time("bmm q . k^T [192,64,32]", 10, fl, &mut || {
        q.matmul(&kk.t().unwrap()).unwrap();
    });
    let p = rng.normal_tensor(&[192, 64, 64], 1.0, &dev).unwrap();
    time("bmm p . v [192,64,64]x[64,32]", 10, fl, &mut || {
        p.matmul(&kk).unwrap();
    });
    time("alloc+zero 1024x1536 tensor", 10, None, &mut || {
        Tensor::zeros((m, n), candle_core::DType::F32, &dev).unwrap();
    });
}

/// Fused attention against the composite (head transposes + batched matmuls), forward and
/// forward + backward, at the benchmark's size (batch 16 × seq 64, H384, 12 heads).
#[test]
#[ignore]
fn probe_attention() {
    use primer::model::attention::{attention, attention_composite};
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(1);
    let (b, t, h, nh) = (16usize, 64usize, 384usize, 12usize);
    let mk = |rng: &mut SeededRng| {
        candle_core::Var::from_tensor(&rng.normal_tensor(&[b, t, h], 1.0, &dev).unwrap()).unwrap()
    };
    let (q, k, v) = (mk(&mut rng), mk(&mut rng), mk(&mut rng));
    let bias = Tensor::zeros((b, t), candle_core::DType::F32, &dev).unwrap();
    let fl = Some(4.0 * (b * nh * t * t * (h / nh)) as f64);
    time("attention fused fwd", 10, fl, &mut || {
        attention(&q, &k, &v, &bias, nh, None).unwrap();
    });
    time("attention composite fwd", 10, fl, &mut || {
        attention_composite(&q, &k, &v, &bias, nh, None).unwrap();
    });
    let fl3 = fl.map(|f| 3.0 * f);
    time("attention fused fwd+bwd", 5, fl3, &mut || {
        primer::model::backward(
            &attention(&q, &k, &v, &bias, nh, None)
                .unwrap()
                .sum_all()
                .unwrap(),
        )
        .unwrap();
    });
    time("attention composite fwd+bwd", 5, fl3, &mut || {
        primer::model::backward(
            &attention_composite(&q, &k, &v, &bias, nh, None)
                .unwrap()
                .sum_all()
                .unwrap(),
        )
        .unwrap();
    });
}

/// The element-wise ops of one encoder layer at the benchmark's size.
#[test]
#[ignore]
fn probe_elementwise() {
    use primer::model::ops;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(2);
    let inter = rng.normal_tensor(&[1024, 1536], 1.0, &dev).unwrap();
    let hid = rng.normal_tensor(&[16, 64, 384], 1.0, &dev).unwrap();
    let g = rng.normal_tensor(&[384], 1.0, &dev).unwrap();
    let s = rng.normal_tensor(&[16, 12, 64, 64], 3.0, &dev).unwrap();
    time("gelu 1024x1536", 10, None, &mut || {
        ops::gelu(&inter).unwrap();
    });
    let iv = candle_core::Var::from_tensor(&inter).unwrap();
    time("gelu fwd+bwd 1024x1536", 10, None, &mut || {
        primer::model::backward(&ops::gelu(&iv).unwrap().sum_all().unwrap()).unwrap();
    });
    time("layer_norm 1024x384", 10, None, &mut || {
        ops::layer_norm(&hid, &g, &g, 1e-12).unwrap();
    });
    time("softmax 16x12x64x64", 10, None, &mut || {
        ops::softmax_last_dim(&s).unwrap();
    });
}

/// One random `[b, t]` batch of token ids (no padding) with labels, for [`minilm_tagger`].
struct StepBatch {
    ids: Tensor,
    mask: Tensor,
    types: Tensor,
    labels: Tensor,
    /// Forward GEMM FLOPs of the encoder on this batch.
    fwd_flops: f64,
}

/// A MiniLM-sized random tagger (adapter and head "x") without dropout.
fn minilm_tagger() -> primer::model::Tagger {
    use primer::model::init::random_encoder;
    use primer::model::{BertConfig, Tagger};
    let mut cfg = BertConfig::new(30522, 384, 6, 12, 1536);
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    let enc = random_encoder(&cfg, 0, &Device::Cpu)
        .unwrap()
        .to_params()
        .unwrap();
    let mut tagger = Tagger::new(cfg, enc, Device::Cpu);
    tagger.ensure_adapter(64, &mut SeededRng::new(1)).unwrap();
    tagger.add_head("x", 7, &mut SeededRng::new(2)).unwrap();
    tagger
}

impl StepBatch {
    fn new(b: usize, t: usize) -> Self {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(3);
        let ids: Vec<u32> = (0..b * t).map(|_| 103 + rng.below(30000) as u32).collect();
        let labels: Vec<i64> = (0..b * t).map(|_| rng.below(7) as i64).collect();
        Self {
            ids: Tensor::from_vec(ids, (b, t), &dev).unwrap(),
            mask: Tensor::ones((b, t), candle_core::DType::U32, &dev).unwrap(),
            types: Tensor::zeros((b, t), candle_core::DType::U32, &dev).unwrap(),
            labels: Tensor::from_vec(labels, (b, t), &dev).unwrap(),
            fwd_flops: 2.0 * (b * t) as f64 * 6.0 * (4.0 * 384.0 * 384.0 + 2.0 * 384.0 * 1536.0),
        }
    }

    fn inputs(&self) -> primer::model::EncoderInputs<'_> {
        primer::model::EncoderInputs {
            input_ids: &self.ids,
            attention_mask: &self.mask,
            token_type_ids: Some(&self.types),
        }
    }
}

/// One full-FT training step at the benchmark's size, split into phases: graph-free encoder
/// forward (what head/adapter tuning and the cache run), forward on Vars, backward, AdamW.
#[test]
#[ignore]
fn probe_step_phases() {
    if std::env::var_os("PROBE_DEFAULT_MALLOC").is_none() {
        primer::device::retain_freed_memory();
    }
    use primer::model::{ParamGroup, masked_cross_entropy};
    use primer::train::optim::{AdamW, AdamWConfig};
    let mut tagger = minilm_tagger();
    let batch = StepBatch::new(16, 64);
    let (inputs, labels) = (batch.inputs(), &batch.labels);
    let fwd_flops = Some(batch.fwd_flops);
    tagger
        .set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("x".into())])
        .unwrap();
    time("encode, frozen θp (no graph)", 5, fwd_flops, &mut || {
        tagger.encode(&inputs, None).unwrap();
    });
    time("adapter step (encode + head bwd)", 5, None, &mut || {
        let loss =
            masked_cross_entropy(&tagger.logits(&inputs, "x", None).unwrap(), labels).unwrap();
        primer::model::backward(&loss).unwrap();
    });
    tagger
        .set_trainable(&[
            ParamGroup::Encoder,
            ParamGroup::Pe("adapter"),
            ParamGroup::Head("x".into()),
        ])
        .unwrap();
    time("forward on Vars (graph)", 5, fwd_flops, &mut || {
        masked_cross_entropy(&tagger.logits(&inputs, "x", None).unwrap(), labels).unwrap();
    });
    let loss = masked_cross_entropy(&tagger.logits(&inputs, "x", None).unwrap(), labels).unwrap();
    time("backward", 5, fwd_flops.map(|f| 2.0 * f), &mut || {
        primer::model::backward(&loss).unwrap();
    });
    let grads = primer::model::backward(&loss).unwrap();
    let mut opt = AdamW::new(tagger.trainable_vars(), AdamWConfig::default()).unwrap();
    time("AdamW step (all params)", 5, None, &mut || {
        opt.step(&grads).unwrap();
    });
}

/// The graph-free encoder forward alone, repeated (for `perf record`); batch shape and
/// repetitions from PROBE_B, PROBE_T, PROBE_REPS.
#[test]
#[ignore]
fn probe_encode_loop() {
    primer::device::retain_freed_memory();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (b, t) = (env("PROBE_B", 16), env("PROBE_T", 64));
    let mut tagger = minilm_tagger();
    tagger.set_trainable(&[]).unwrap();
    let batch = StepBatch::new(b, t);
    let inputs = batch.inputs();
    time(
        &format!("encode {b}x{t}, frozen θp (no graph)"),
        env("PROBE_REPS", 20),
        Some(batch.fwd_flops),
        &mut || {
            tagger.encode(&inputs, None).unwrap();
        },
    );
}

/// `n` sentences of random tokens, lengths uniform in [min_len, 64], one word per token,
/// token `t` labelled `label(t)`.
fn random_sentences(
    n: usize,
    min_len: usize,
    label: impl Fn(usize) -> i64,
) -> Vec<primer::data::EncodedSentence> {
    let mut rng = SeededRng::new(4);
    (0..n)
        .map(|_| {
            let len = min_len + rng.below(64 - min_len + 1);
            primer::data::EncodedSentence {
                input_ids: (0..len).map(|_| 103 + rng.below(30000) as u32).collect(),
                word_ids: (0..len as i64).collect(),
                labels: (0..len).map(&label).collect(),
                n_words: len,
                truncated_words: 0,
            }
        })
        .collect()
}

/// The encoder cache's batching: sentences per forward or a token budget, alternated over
/// rounds so that drift on a shared machine hits every setting alike. Lengths uniform in
/// [PROBE_MIN_LEN, 64].
#[test]
#[ignore]
fn probe_cache_batching() {
    use primer::data::Batcher;
    use primer::model::IGNORE_INDEX;
    use primer::train::EncoderCache;
    primer::device::retain_freed_memory();
    let min_len: usize = std::env::var("PROBE_MIN_LEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut tagger = minilm_tagger();
    tagger
        .set_trainable(&[primer::model::ParamGroup::Pe("adapter")])
        .unwrap();
    let sentences = random_sentences(192, min_len, |t| if t % 3 == 0 { IGNORE_INDEX } else { 0 });
    let settings: Vec<(String, Batcher)> = vec![
        ("64 sentences".into(), Batcher::new(64, 0)),
        (
            "256 tokens".into(),
            Batcher::new(64, 0).with_eval_tokens(256),
        ),
        (
            "384 tokens".into(),
            Batcher::new(64, 0).with_eval_tokens(384),
        ),
        ("16 sentences".into(), Batcher::new(16, 0)),
        (
            "512 tokens".into(),
            Batcher::new(64, 0).with_eval_tokens(512),
        ),
        (
            "768 tokens".into(),
            Batcher::new(64, 0).with_eval_tokens(768),
        ),
        (
            "1024 tokens".into(),
            Batcher::new(64, 0).with_eval_tokens(1024),
        ),
    ];
    let mut cpu = vec![Vec::new(); settings.len()];
    let mut wall = vec![Vec::new(); settings.len()];
    for _round in 0..4 {
        for (k, (_, batcher)) in settings.iter().enumerate() {
            let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
            EncoderCache::labelled_rows(&tagger, &sentences, batcher, &Device::Cpu).unwrap();
            wall[k].push(t0.elapsed().as_secs_f64() * 1e3);
            cpu[k].push((cpu_seconds() - c0) * 1e3);
        }
    }
    for (k, (name, _)) in settings.iter().enumerate() {
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        eprintln!(
            "cache, {name:<14} wall {:8.1} ms  cpu {:8.1} ms",
            med(&mut wall[k]),
            med(&mut cpu[k])
        );
    }
}

/// One adapter-tuning step on cached rows (~600 labelled rows of H384), split into its phases.
#[test]
#[ignore]
fn probe_cached_step() {
    use primer::model::{ParamGroup, masked_cross_entropy};
    use primer::train::optim::{AdamW, AdamWConfig};
    primer::device::retain_freed_memory();
    let mut tagger = minilm_tagger();
    tagger
        .set_trainable(&[ParamGroup::Pe("adapter"), ParamGroup::Head("x".into())])
        .unwrap();
    let mut rng = SeededRng::new(3);
    let rows = 620;
    let hidden = rng.normal_tensor(&[rows, 384], 1.0, &Device::Cpu).unwrap();
    let labels: Vec<i64> = (0..rows).map(|i| (i % 7) as i64).collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let mut opt = AdamW::new(tagger.trainable_vars(), AdamWConfig::default()).unwrap();
    let reps = std::env::var("PROBE_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    time("logits (adapter + head)", reps, None, &mut || {
        tagger.logits_from_hidden(&hidden, "x").unwrap();
    });
    let logits = tagger.logits_from_hidden(&hidden, "x").unwrap();
    time("cross-entropy", reps, None, &mut || {
        masked_cross_entropy(&logits, &labels).unwrap();
    });
    time("forward + backward", reps, None, &mut || {
        let l = tagger.logits_from_hidden(&hidden, "x").unwrap();
        primer::model::backward(&masked_cross_entropy(&l, &labels).unwrap()).unwrap();
    });
    time(
        "whole step (forward, backward, AdamW)",
        reps,
        None,
        &mut || {
            let l = tagger.logits_from_hidden(&hidden, "x").unwrap();
            let g = primer::model::backward(&masked_cross_entropy(&l, &labels).unwrap()).unwrap();
            opt.step(&g).unwrap();
        },
    );
}

/// The encoder cache's pass with the last layer computed at the kept rows only
/// (`encode_rows`) against the whole last layer and a row selection, alternated over rounds;
/// 192 sentences of 8-64 tokens, every PROBE_KEEP-th token kept (default 2: half the rows).
#[test]
#[ignore]
fn probe_encode_rows() {
    use primer::data::Batcher;
    use primer::model::IGNORE_INDEX;
    use primer::train::inputs_of;
    primer::device::retain_freed_memory();
    let keep_every: usize = std::env::var("PROBE_KEEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut tagger = minilm_tagger();
    tagger
        .set_trainable(&[primer::model::ParamGroup::Pe("adapter")])
        .unwrap();
    let sentences = random_sentences(192, 8, |_| IGNORE_INDEX);
    let batches = Batcher::for_inference(&Device::Cpu, 0)
        .eval_batches(&sentences, &Device::Cpu)
        .unwrap();
    let rows: Vec<Vec<u32>> = batches
        .iter()
        .map(|b| {
            let t = b.input_ids.dim(1).unwrap();
            b.indices
                .iter()
                .enumerate()
                .flat_map(|(row, &i)| {
                    (0..sentences[i].len())
                        .filter(|p| p % keep_every == 1 % keep_every)
                        .map(move |p| (row * t + p) as u32)
                })
                .collect()
        })
        .collect();
    let encoder = tagger.frozen_encoder().unwrap();
    let mut times = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for _round in 0..4 {
        for (k, slot) in times.iter_mut().enumerate() {
            let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
            for (b, r) in batches.iter().zip(&rows) {
                let inputs = inputs_of(b);
                if k == 0 {
                    let h = encoder.encode(&inputs).unwrap();
                    let (bb, t, hh) = h.dims3().unwrap();
                    let idx = Tensor::new(r.as_slice(), &Device::Cpu).unwrap();
                    h.reshape((bb * t, hh))
                        .unwrap()
                        .index_select(&idx, 0)
                        .unwrap();
                } else {
                    encoder.encode_rows(&inputs, r).unwrap();
                }
            }
            slot.0.push(t0.elapsed().as_secs_f64() * 1e3);
            slot.1.push((cpu_seconds() - c0) * 1e3);
        }
    }
    for (k, (wall, cpu)) in times.iter_mut().enumerate() {
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        eprintln!(
            "{:<44} wall {:8.1} ms  cpu {:8.1} ms",
            if k == 0 {
                "whole last layer + row selection"
            } else {
                "last layer at the kept rows (encode_rows)"
            },
            med(wall),
            med(cpu)
        );
    }
}

/// One inner SGD step over every MiniLM parameter (22.7M values): the CPU kernel against the
/// composite candle ops (a sum for the finiteness check, `g·lr`, `p − …`, `Var::set`).
#[test]
#[ignore]
fn probe_sgd_update() {
    use primer::train::optim::sgd_update;
    primer::device::retain_freed_memory();
    let tagger = minilm_tagger();
    let fast = tagger.encoder.detached_copy().unwrap();
    let mut rng = SeededRng::new(5);
    let grads: Vec<Tensor> = fast
        .iter()
        .map(|(_, v)| rng.normal_tensor(v.dims(), 1e-3, &Device::Cpu).unwrap())
        .collect();
    let mut step = || {
        for ((_, v), g) in fast.iter().zip(&grads) {
            assert!(sgd_update(v, g, 1e-4).unwrap());
        }
    };
    for _round in 0..3 {
        time("sgd, CPU kernel", 5, None, &mut step);
        let _composite = primer::model::dispatch::composite_only();
        time("sgd, composite ops", 5, None, &mut step);
    }
}

/// The encoder cache's pass op-parallel (batch after batch, every op split over the pool)
/// against data-parallel (one batch per thread, as `EncoderCache` runs it), alternated.
#[test]
#[ignore]
fn probe_cache_data_parallel() {
    use primer::data::Batcher;
    use primer::model::IGNORE_INDEX;
    use primer::train::{EncoderCache, inputs_of};
    primer::device::retain_freed_memory();
    let mut tagger = minilm_tagger();
    tagger
        .set_trainable(&[primer::model::ParamGroup::Pe("adapter")])
        .unwrap();
    let sentences = random_sentences(320, 32, |t| if t % 7 == 0 { IGNORE_INDEX } else { 0 });
    let batcher = Batcher::for_inference(&Device::Cpu, 0);
    let flops = EncoderCache::labelled_rows(&tagger, &sentences, &batcher, &Device::Cpu)
        .unwrap()
        .encoder_flops();
    let batches = batcher.eval_batches(&sentences, &Device::Cpu).unwrap();
    let rows: Vec<Vec<u32>> = batches
        .iter()
        .map(|b| {
            let t = b.input_ids.dim(1).unwrap();
            let mut r = Vec::new();
            for (row, &idx) in b.indices.iter().enumerate() {
                let s = &sentences[idx];
                r.extend(
                    (0..s.len())
                        .filter(|&p| s.labels[p] != IGNORE_INDEX)
                        .map(|p| (row * t + p) as u32),
                );
            }
            r
        })
        .collect();
    let encoder = tagger.frozen_encoder().unwrap();
    for _round in 0..3 {
        // PROBE_DATA_PARALLEL_ONLY=1 times only the data-parallel pass (for `perf record`).
        if std::env::var_os("PROBE_DATA_PARALLEL_ONLY").is_none() {
            time("cache pass, op-parallel", 1, Some(flops), &mut || {
                for (b, r) in batches.iter().zip(&rows) {
                    encoder.encode_rows(&inputs_of(b), r).unwrap();
                }
            });
            // The same data-parallel pass reading the checkpoint layout of the weights.
            let detached = tagger
                .group(&primer::model::ParamGroup::Encoder)
                .unwrap()
                .detached_tensors();
            time(
                "cache pass, untransposed weights",
                1,
                Some(flops),
                &mut || {
                    let jobs: Vec<_> = batches.iter().zip(&rows).collect();
                    primer::parallel::map_batches(&Device::Cpu, &jobs, |(b, r)| {
                        primer::model::bert::encode_rows(
                            &tagger.config,
                            &detached,
                            &inputs_of(b),
                            r,
                        )
                    })
                    .unwrap();
                },
            );
        }
        time("cache pass, data-parallel", 1, Some(flops), &mut || {
            EncoderCache::labelled_rows(&tagger, &sentences, &batcher, &Device::Cpu).unwrap();
        });
    }
}

/// Making a frozen encoder (every layer's linear weights transposed) for MiniLM.
#[test]
#[ignore]
fn probe_frozen_encoder() {
    primer::device::retain_freed_memory();
    let tagger = minilm_tagger();
    time("frozen encoder (transposes)", 10, None, &mut || {
        tagger.frozen_encoder().unwrap();
    });
}
