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
        attention(&q, &k, &v, &bias, nh, None)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    });
    time("attention composite fwd+bwd", 5, fl3, &mut || {
        attention_composite(&q, &k, &v, &bias, nh, None)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
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
        ops::gelu(&iv)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    });
    time("layer_norm 1024x384", 10, None, &mut || {
        ops::layer_norm(&hid, &g, &g, 1e-12).unwrap();
    });
    time("softmax 16x12x64x64", 10, None, &mut || {
        ops::softmax_last_dim(&s).unwrap();
    });
}
