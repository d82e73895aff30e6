//! The one place where primer's fused CPU kernels multiply f32 matrices, and the choice of
//! what multiplies them.
//!
//! Every GEMM of the kernels — the linear layers and their gradients ([`super::ops`], the
//! whole encoder layer of [`super::layer`], LoRA's merge) through `gemm`, the per-head
//! attention products ([`super::attention`]) through `gemm_strided` — ends in `run`, which
//! takes the process-wide [`GemmBackend`]:
//!
//! * [`GemmBackend::GemmCrate`], the default: the `gemm` crate (also candle's CPU matmul),
//!   threaded over rayon's pool;
//! * [`GemmBackend::Blas`]: a CBLAS library opened at run time ([`super::blas`]) — the CLI
//!   takes it from `PRIMER_BLAS` ([`backend_from_env`]). Each large GEMM is cut into one
//!   block of output rows (or columns) per rayon thread, and the library runs each block on
//!   that thread alone: rayon stays the only thread pool. A product the library cannot take
//!   (a view with no unit stride, a size beyond a C `int`) and every product with a
//!   dimension below [`BLAS_MIN_DIM`] — the per-head attention products among them — stay on
//!   the gemm crate.
//!
//! candle's own matmul, which only the device-generic composite path runs on the CPU, always
//! uses the gemm crate.
//!
//! ```
//! use primer::model::sgemm::{GemmBackend, gemm_backend};
//! assert!(matches!(gemm_backend(), GemmBackend::GemmCrate)); // unless set_gemm_backend ran
//! ```

use super::blas::{Blas, BlasError};
use crate::op_timing::{OpKind, gemm_flops, timed};
use rayon::prelude::*;
use std::ffi::OsString;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The environment variable the CLI reads at start-up: the path (or file name, looked up by
/// the dynamic loader) of a CBLAS library, or `off` (also empty, `0`, `none`) for the gemm
/// crate.
pub const BLAS_ENV: &str = "PRIMER_BLAS";

/// Products with a dimension (m, n or k) below this stay on the gemm crate even when a BLAS
/// is chosen. Measured on AMD Zen 5 (README, Speed) with the best library there (OpenBLAS with
/// its AVX-512 kernels): the layer projections and their gradients, every dimension ≥ 384,
/// ran as fast or up to 18% faster than on the gemm crate; the adapter's 64-wide bottleneck
/// (15%) and the 7-label head (27%) ran slower, the per-head attention products (head size
/// 32) went either way at 64 tokens (−15% to +6%) and ran 13-24% slower at 256; and routing
/// every product to the BLAS made the steps no faster than this threshold. 128 lies between
/// the two groups; nothing was measured there.
pub const BLAS_MIN_DIM: usize = 128;

/// What multiplies the kernels' matrices.
#[derive(Debug, Clone, Copy)]
pub enum GemmBackend {
    /// The `gemm` crate (default, and the fallback for what a BLAS cannot take).
    GemmCrate,
    /// A CBLAS library (see the module docs).
    Blas(&'static Blas),
}

impl GemmBackend {
    /// One line for logs and the bench.
    pub fn describe(self) -> String {
        match self {
            GemmBackend::GemmCrate => {
                "gemm crate 0.19 (built in; set PRIMER_BLAS to use a BLAS)".to_string()
            }
            GemmBackend::Blas(lib) => format!("BLAS {}", lib.describe()),
        }
    }
}

/// The chosen library, or null for the gemm crate.
static BLAS: AtomicPtr<Blas> = AtomicPtr::new(std::ptr::null_mut());

/// Products the BLAS has run in this process (each counted once, however many blocks).
static BLAS_PRODUCTS: AtomicU64 = AtomicU64::new(0);

/// How many products the BLAS has run in this process: tells a test or a probe that the
/// library was taken, not passed over for the gemm crate.
pub fn blas_products() -> u64 {
    BLAS_PRODUCTS.load(Ordering::Relaxed)
}

/// Chooses the backend for the whole process, from the next GEMM on.
pub fn set_gemm_backend(backend: GemmBackend) {
    let ptr = match backend {
        GemmBackend::GemmCrate => std::ptr::null_mut(),
        GemmBackend::Blas(lib) => lib as *const Blas as *mut Blas,
    };
    BLAS.store(ptr, Ordering::Release);
}

/// The backend in effect.
pub fn gemm_backend() -> GemmBackend {
    let ptr = BLAS.load(Ordering::Acquire);
    // SAFETY: a non-null pointer was stored from a `&'static Blas`.
    match unsafe { ptr.as_ref() } {
        Some(lib) => GemmBackend::Blas(lib),
        None => GemmBackend::GemmCrate,
    }
}

/// What [`BLAS_ENV`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlasChoice {
    /// The gemm crate.
    Off,
    /// This library (path or file name).
    Library(String),
}

/// Why [`backend_from_env`] could not honour [`BLAS_ENV`]; the message names the variable
/// and what to set it to.
#[derive(Debug, thiserror::Error)]
pub enum BlasEnvError {
    #[error("{BLAS_ENV} is not valid UTF-8; {FIX}")]
    NotUnicode,
    #[error("{BLAS_ENV}={value:?}: {source}; {FIX}")]
    Library {
        value: String,
        #[source]
        source: BlasError,
    },
}

const FIX: &str = "set it to the path of a CBLAS library (OpenBLAS's libopenblas.so.0, MKL's \
                   libmkl_rt.so.2 or .so.3, BLIS's libblis.so.4) or to `off` for the built-in \
                   gemm crate";

/// Reads a value of [`BLAS_ENV`] (`None`: unset).
pub fn parse_blas_env(value: Option<OsString>) -> Result<Option<BlasChoice>, BlasEnvError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let value = value.into_string().map_err(|_| BlasEnvError::NotUnicode)?;
    Ok(Some(match value.trim() {
        v if ["", "off", "0", "none", "false", "no"].contains(&v.to_ascii_lowercase().as_str()) => {
            BlasChoice::Off
        }
        v => BlasChoice::Library(v.to_string()),
    }))
}

/// The backend [`BLAS_ENV`] asks for, its library opened: `Ok(None)` when the variable is
/// unset.
pub fn backend_from_env() -> Result<Option<GemmBackend>, BlasEnvError> {
    match parse_blas_env(std::env::var_os(BLAS_ENV))? {
        None => Ok(None),
        Some(BlasChoice::Off) => Ok(Some(GemmBackend::GemmCrate)),
        Some(BlasChoice::Library(name)) => Blas::open(&name)
            .map(|lib| Some(GemmBackend::Blas(lib)))
            .map_err(|source| BlasEnvError::Library {
                value: name,
                source,
            }),
    }
}

/// A read-only view of an f32 matrix for [`fn@gemm`]: row-major, or the transpose of one.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// The row-major `rows × cols` matrix `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "MatRef: {rows}×{cols} over {} values",
            data.len()
        );
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn operand(&self) -> Operand {
        Operand {
            ptr: self.data.as_ptr(),
            rs: self.row_stride,
            cs: self.col_stride,
        }
    }
}

/// `dst = scale · a · b`, or `dst += scale · a · b` when `accumulate`; `dst` is row-major
/// `a.rows × b.cols`. Multi-threaded over rayon's pool.
pub(crate) fn gemm(dst: &mut [f32], accumulate: bool, a: MatRef<'_>, b: MatRef<'_>, scale: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && dst.len() == m * n,
        "gemm: {}×{} · {}×{} into {} values",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        dst.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let _timed = timed(OpKind::Gemm, &[m, k, n], gemm_flops(m, k, n));
    // SAFETY: both views were built over whole row-major matrices (MatRef::new), so every
    // (row, col) they address is in bounds; `dst` is m×n with row stride n and, being a
    // unique borrow, overlaps neither input. Without `accumulate` the GEMM does not read dst.
    unsafe {
        run(
            gemm_backend(),
            (m, n, k),
            (dst.as_mut_ptr(), n),
            accumulate,
            a.operand(),
            b.operand(),
            scale,
            rayon::current_num_threads(),
        )
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)` on strided f32 blocks, on the calling thread alone
/// (the attention kernels call it from inside their own rayon loop over heads). Strides are
/// (row, column) in elements; `dst`'s columns are contiguous.
///
/// # Safety
/// Every pointer must address a block of the given shape and strides inside its allocation,
/// and `dst` must not overlap the inputs.
pub(crate) unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
) {
    if m == 0 || n == 0 || k == 0 {
        // Not reached by attention (T and the head size are at least 1); kept so that the
        // backends never see an empty product.
        return;
    }
    let lhs = Operand {
        ptr: lhs,
        rs: lhs_rs,
        cs: lhs_cs,
    };
    let rhs = Operand {
        ptr: rhs,
        rs: rhs_rs,
        cs: rhs_cs,
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        run(
            gemm_backend(),
            (m, n, k),
            (dst, dst_rs),
            false,
            lhs,
            rhs,
            1.0,
            1,
        )
    }
}

/// A strided f32 matrix: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

// SAFETY: a read-only view that the unsafe caller of [`run`] keeps valid for the call; the
// rayon tasks of [`blas_blocks`] only read through it.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// How CBLAS reads this `rows × cols` operand, row-major: `(leading dimension,
    /// transposed)` — as stored, with unit column stride, or as the transpose of a stored
    /// matrix, with unit row stride. `None` when neither stride is 1 (or a size exceeds a C
    /// `int`): then the gemm crate, which takes any strides, multiplies it.
    fn cblas(&self, rows: usize, cols: usize) -> Option<(usize, bool)> {
        let fits = |v: usize| v <= i32::MAX as usize;
        let layout = if self.cs == 1 && self.rs >= cols.max(1) {
            (self.rs, false)
        } else if self.rs == 1 && self.cs >= rows.max(1) {
            (self.cs, true)
        } else {
            return None;
        };
        (fits(layout.0) && fits(rows) && fits(cols)).then_some(layout)
    }

    /// The operand from row `r` and column `c` on.
    fn at(self, r: usize, c: usize) -> Self {
        Operand {
            // SAFETY (of the caller's later use): a block inside the operand.
            ptr: self.ptr.wrapping_add(r * self.rs + c * self.cs),
            ..self
        }
    }
}

/// `dst = scale·a·b` (or `+=` with `accumulate`) on `backend`, over `threads` threads of the
/// current rayon pool (1: the calling thread).
///
/// # Safety
/// As [`gemm_strided`]; `m`, `n`, `k` are at least 1.
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    backend: GemmBackend,
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    a: Operand,
    b: Operand,
    scale: f32,
    threads: usize,
) {
    if let GemmBackend::Blas(lib) = backend
        && m.min(n).min(k) >= BLAS_MIN_DIM
        && let (Some(la), Some(lb)) = (a.cblas(m, k), b.cblas(k, n))
        && dst_rs <= i32::MAX as usize
    {
        BLAS_PRODUCTS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from the caller; layouts checked above.
        unsafe {
            blas_blocks(
                lib,
                (m, n, k),
                (dst, dst_rs),
                accumulate,
                (a, la),
                (b, lb),
                scale,
                threads,
            )
        };
        return;
    }
    // SAFETY: forwarded from the caller. Without `accumulate` the gemm crate does not read dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.ptr,
            a.cs as isize,
            a.rs as isize,
            b.ptr,
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        )
    }
}

/// Output rows (or columns) per block are a multiple of this: whole 64-byte lines of f32, so
/// two threads never write one cache line, and full register tiles of the libraries' kernels.
const BLOCK_ALIGN: usize = 16;

/// Blocks smaller than this many FLOPs are not worth a rayon task of their own.
const MIN_BLOCK_FLOPS: f64 = 2.0 * 64.0 * 64.0 * 64.0;

/// One BLAS call per block of the output, each on one rayon thread (see the module docs).
/// The product is cut along the longer of m and n: each block then re-reads (packs) the whole
/// of the other, smaller input. The blocks depend only on the sizes and `threads`, so a run
/// with the same thread count repeats its results bit for bit.
///
/// # Safety
/// As [`run`], with `la`/`lb` the operands' CBLAS layouts.
#[allow(clippy::too_many_arguments)]
unsafe fn blas_blocks(
    lib: &'static Blas,
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    (a, (lda, ta)): (Operand, (usize, bool)),
    (b, (ldb, tb)): (Operand, (usize, bool)),
    scale: f32,
    threads: usize,
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    let by_rows = m >= n;
    let long = if by_rows { m } else { n };
    let useful = (gemm_flops(m, k, n) / MIN_BLOCK_FLOPS).max(1.0) as usize;
    let parts = threads.min(useful).min(long.div_ceil(BLOCK_ALIGN)).max(1);
    let block = long.div_ceil(parts).next_multiple_of(BLOCK_ALIGN).min(long);
    // Raw pointers as integers, to cross into the rayon tasks (each writes its own block).
    let dst_addr = dst as usize;
    let call = move |i: usize| {
        let start = i * block;
        if start >= long {
            return;
        }
        let len = block.min(long - start);
        let (mm, nn, a_i, b_i, dst_i) = if by_rows {
            (len, n, a.at(start, 0), b, start * dst_rs)
        } else {
            (m, len, a, b.at(0, start), start)
        };
        // SAFETY: block i of dst and the matching rows of a (or columns of b) lie inside the
        // caller's matrices; blocks are disjoint.
        unsafe {
            lib.sgemm(
                (mm, nn, k),
                scale,
                (a_i.ptr, lda, ta),
                (b_i.ptr, ldb, tb),
                beta,
                ((dst_addr as *mut f32).add(dst_i), dst_rs),
            )
        }
    };
    if parts == 1 {
        call(0);
    } else {
        (0..parts).into_par_iter().for_each(call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        let parse = |v: &str| parse_blas_env(Some(v.into())).unwrap();
        assert_eq!(parse_blas_env(None).unwrap(), None);
        for v in ["", "off", "OFF", " 0 ", "none", "false", "no"] {
            assert_eq!(parse(v), Some(BlasChoice::Off), "{v:?}");
        }
        assert_eq!(
            parse(" /opt/lib/libmkl_rt.so.2 "),
            Some(BlasChoice::Library("/opt/lib/libmkl_rt.so.2".into()))
        );
        assert_eq!(
            parse("libopenblas.so.0"),
            Some(BlasChoice::Library("libopenblas.so.0".into()))
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let bad = OsString::from_vec(vec![0x66, 0xff]);
            let err = parse_blas_env(Some(bad)).unwrap_err();
            assert!(matches!(err, BlasEnvError::NotUnicode));
            assert!(err.to_string().contains(BLAS_ENV), "{err}");
        }
    }

    #[test]
    fn a_library_that_cannot_serve_is_an_error_naming_the_variable_and_the_fix() {
        for name in ["/nonexistent/libopenblas.so.0", "libc.so.6"] {
            let err = match Blas::open(name) {
                Err(source) => BlasEnvError::Library {
                    value: name.into(),
                    source,
                },
                Ok(_) => panic!("{name} opened as a BLAS"),
            };
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("{BLAS_ENV}=\"{name}\"")), "{msg}");
            assert!(
                msg.contains("`off`") && msg.contains("libopenblas.so.0"),
                "{msg}"
            );
        }
    }

    #[test]
    fn cblas_layouts_of_views() {
        let data = vec![0f32; 12];
        // 3×4 row-major: as stored; its transpose: a transposed read of the same storage.
        assert_eq!(
            MatRef::new(&data, 3, 4).operand().cblas(3, 4),
            Some((4, false))
        );
        assert_eq!(
            MatRef::new(&data, 3, 4).t().operand().cblas(4, 3),
            Some((4, true))
        );
        // A column vector and the transpose of a row vector.
        assert_eq!(
            MatRef::new(&data, 12, 1).operand().cblas(12, 1),
            Some((1, false))
        );
        assert_eq!(
            MatRef::new(&data, 1, 12).t().operand().cblas(12, 1),
            Some((12, true))
        );
        // A head block inside [T, H] rows: row stride H, unit columns.
        let head = Operand {
            ptr: data.as_ptr(),
            rs: 6,
            cs: 1,
        };
        assert_eq!(head.cblas(2, 3), Some((6, false)));
        // No unit stride: only the gemm crate can read it.
        let sparse = Operand {
            ptr: data.as_ptr(),
            rs: 4,
            cs: 2,
        };
        assert_eq!(sparse.cblas(3, 2), None);
    }

    /// Diagnostics, not a check (ignored): each backend's time per product at the bench's
    /// shapes (MiniLM, batch 16 × 64 tokens), on the calling thread alone, in CPU time of
    /// that thread (robust to other processes on the cores), backends interleaved round by
    /// round, median of the rounds. Libraries: `PROBE_BLAS`, colon-separated. Run with
    /// `PROBE_BLAS=... cargo test --lib probe_backends_by_shape -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn probe_backends_by_shape() {
        let mut backends = vec![("gemm crate".to_string(), GemmBackend::GemmCrate)];
        for name in std::env::var("PROBE_BLAS").unwrap_or_default().split(':') {
            if !name.is_empty() {
                let lib = Blas::open(name).unwrap();
                backends.push((lib.file(), GemmBackend::Blas(lib)));
            }
        }
        let h = 384;
        // (label, m, k, n, a: (rs, cs), b: (rs, cs), dst row stride, calls per round)
        let shapes = [
            (
                "x·Wqᵀ 1024×384·384×384",
                1024,
                384,
                384,
                (384, 1),
                (1, 384),
                384,
                2,
            ),
            (
                "x·Wiᵀ 1024×384·384×1536",
                1024,
                384,
                1536,
                (384, 1),
                (1, 384),
                1536,
                1,
            ),
            (
                "f·Woᵀ 1024×1536·1536×384",
                1024,
                1536,
                384,
                (1536, 1),
                (1, 1536),
                384,
                1,
            ),
            (
                "dy·W 1024×1536·1536×384",
                1024,
                1536,
                384,
                (1536, 1),
                (384, 1),
                384,
                1,
            ),
            (
                "dyᵀ·x 384×1024·1024×384",
                384,
                1024,
                384,
                (1, 384),
                (384, 1),
                384,
                2,
            ),
            (
                "dyᵀ·x 1536×1024·1024×384",
                1536,
                1024,
                384,
                (1, 1536),
                (384, 1),
                384,
                1,
            ),
            ("q·kᵀ head 64×32·32×64", 64, 32, 64, (h, 1), (1, h), 64, 400),
            ("p·v head 64×64·64×32", 64, 64, 32, (64, 1), (h, 1), h, 400),
            ("pᵀ·g head 64×64·64×32", 64, 64, 32, (1, 64), (h, 1), h, 400),
            (
                "q·kᵀ head 256×32·32×256",
                256,
                32,
                256,
                (h, 1),
                (1, h),
                256,
                40,
            ),
            (
                "p·v head 256×256·256×32",
                256,
                256,
                32,
                (256, 1),
                (h, 1),
                h,
                40,
            ),
            ("head 1024×384·384×7", 1024, 384, 7, (h, 1), (1, h), 7, 40),
            (
                "adapter 1024×384·384×64",
                1024,
                384,
                64,
                (h, 1),
                (1, h),
                64,
                10,
            ),
        ];
        let mut rng = crate::rng::SeededRng::new(5);
        let buf = |rng: &mut crate::rng::SeededRng, n: usize| -> Vec<f32> {
            (0..n).map(|_| rng.uniform() - 0.5).collect()
        };
        let a = buf(&mut rng, 1536 * 1536);
        let b = buf(&mut rng, 1536 * 1536);
        let mut c = vec![0f32; 1536 * 1536];
        // PROBE_THREADS > 1: the products over that many rayon threads, in wall time.
        let threads: usize = std::env::var("PROBE_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let clock = if threads > 1 {
            let t0 = std::time::Instant::now();
            Box::new(move || t0.elapsed().as_secs_f64()) as Box<dyn Fn() -> f64>
        } else {
            Box::new(|| crate::op_timing::thread_cpu_seconds().unwrap_or(f64::NAN))
        };
        for (label, m, k, n, (ars, acs), (brs, bcs), crs, calls) in shapes {
            let mut times = vec![Vec::new(); backends.len()];
            for _round in 0..7 {
                for (i, (_, backend)) in backends.iter().enumerate() {
                    let t0 = clock();
                    for _ in 0..calls {
                        // SAFETY: every operand lies inside its 1536² buffer.
                        unsafe {
                            run(
                                *backend,
                                (m, n, k),
                                (c.as_mut_ptr(), crs),
                                false,
                                Operand {
                                    ptr: a.as_ptr(),
                                    rs: ars,
                                    cs: acs,
                                },
                                Operand {
                                    ptr: b.as_ptr(),
                                    rs: brs,
                                    cs: bcs,
                                },
                                1.0,
                                threads,
                            )
                        }
                    }
                    times[i].push((clock() - t0) / calls as f64);
                }
            }
            for ((name, _), mut t) in backends.iter().zip(times) {
                t.sort_by(f64::total_cmp);
                let med = t[t.len() / 2];
                eprintln!(
                    "{label:<28} {name:<70} {:9.1} µs {:6.1} GFLOP/s",
                    med * 1e6,
                    gemm_flops(m, k, n) / med * 1e-9
                );
            }
        }
    }
}
